"""vgcore.diagnose: verdicts on the canonical cases, evidence, checked and ranked fixes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import vgcore
from vgcore import GRU, LSTM, MLP, RNN
from vgcore.diagnose import VERDICTS, Diagnosis, Fix, summarize_flow

W, B, T, N = 64, 32, 150, 64


def mlp(act, depth=30, init=None, **kw):
    return MLP.from_sizes([W] * (depth + 1), act, init=init, seed=0, **kw)


def seq(T=T, batch=16, seed=1):
    return np.random.default_rng(seed).standard_normal((T, batch, 32))


def x_mlp(seed=1):
    return np.random.default_rng(seed).standard_normal((B, W))


@pytest.fixture(scope="module")
def sigmoid_diag():
    return vgcore.diagnose(mlp("sigmoid"), x_mlp())


@pytest.fixture(scope="module")
def exploding_rnn_diag():
    rnn = RNN.from_sizes(32, N, init={"name": "gaussian", "sigma_w2": 16.0}, seed=0)
    return vgcore.diagnose(rnn, seq(T=200))


# ------------------------------------------------------------------------------------------
# verdicts on the canonical cases
def test_deep_sigmoid_mlp_vanishes(sigmoid_diag):
    d = sigmoid_diag
    assert d.verdict == "vanishing"
    e = d.evidence
    assert e["vanishing_depth"] is not None and e["vanishing_depth"] < 15
    assert e["log10_gain"] < -15 and e["log10_rate"] < -0.3
    # the reported depth is where the gradient first falls below 1e-6 of its output value
    rel = (d.flow.log_grad_norms - d.flow.log_grad_norms[-1]) / math.log(10)
    vd = e["vanishing_depth"]
    assert rel[::-1][vd] < -6 <= rel[::-1][vd - 1]
    assert e["lyapunov"] < 0 and e["regime"] == "ordered"


def test_relu_he_is_healthy():
    d = vgcore.diagnose(mlp("relu", init="kaiming_normal"), x_mlp())
    assert d.verdict == "healthy"
    assert d.spread < 6 and d.evidence["vanishing_depth"] is None
    assert d.recommended == [] and d.causes == []
    # half the ReLUs are off: inactive, not saturated
    assert 0.3 < d.evidence["inactive_mean"] < 0.7
    assert d.evidence["saturation_mean"] == 0.0


def test_tanh_rnn_with_large_gain_explodes_and_is_chaotic(exploding_rnn_diag):
    d = exploding_rnn_diag
    assert d.verdict == "exploding"
    assert d.evidence["exploding_depth"] is not None
    assert d.evidence["lyapunov"] > 0 and d.evidence["regime"] == "chaotic"


def test_lstm_forget_bias_one_healthier_than_vanilla_rnn_on_long_lags():
    x = seq(T=200)
    rnn = vgcore.diagnose(RNN.from_sizes(32, N, seed=0), x)
    lstm = vgcore.diagnose(
        LSTM.from_sizes(32, N, init={"name": "default", "forget_bias": 1.0}, seed=0), x
    )
    assert rnn.verdict == "vanishing"
    assert lstm.spread < rnn.spread - 10
    assert lstm.evidence["vanishing_depth"] > 2 * rnn.evidence["vanishing_depth"]
    assert lstm.evidence["log10_rate"] > rnn.evidence["log10_rate"]


# ------------------------------------------------------------------------------------------
# the top Lyapunov exponent in the evidence
@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_top_lyapunov_exponent_is_the_batch_mean_of_vgcore_lyapunov(cls):
    model = cls.from_sizes(32, 16, seed=0)
    x = seq(T=80, batch=6)
    d = vgcore.diagnose(model, x, check=False)
    ref = vgcore.lyapunov(model, x, k=1)
    e = d.evidence
    assert e["lyapunov"] == pytest.approx(ref.exponents[:, 0].mean(), rel=1e-12)
    assert e["lyapunov"] != pytest.approx(ref.exponents[0, 0], rel=1e-6)  # not one sample's
    assert e["lyapunov_std"] == pytest.approx(ref.exponents[:, 0].std(), rel=1e-9)
    assert e["lyapunov_source"] == "vgcore.lyapunov (QR method), mean over 6 samples"
    assert e["regime"] == "ordered" and e["lyapunov"] < -0.05
    assert d.lyapunov is not None and d.lyapunov.exponents.shape == (6, 1)
    assert f"top Lyapunov exponent: {e['lyapunov']:+.4f} +/- {e['lyapunov_std']:.4f}" in d.summary()
    doc = json.loads(json.dumps(d.to_dict()))
    assert doc["evidence"]["lyapunov"] == pytest.approx(e["lyapunov"])


def test_top_lyapunov_exponent_of_width_keeping_mlps_and_the_fallback(sigmoid_diag):
    d = sigmoid_diag  # 30 layers of width 64: depth plays the role of time
    ref = vgcore.lyapunov(d.model, x_mlp(), k=1)
    assert d.evidence["lyapunov"] == pytest.approx(ref.exponents[:, 0].mean(), rel=1e-12)
    assert d.evidence["lyapunov_source"].startswith("vgcore.lyapunov")
    # the forward tangent growth matches the backward gradient decay per layer
    assert d.evidence["lyapunov"] == pytest.approx(
        d.evidence["log10_rate"] * math.log(10), rel=0.05
    )
    # widths change: vgcore.lyapunov does not apply, the gradient growth rate is used
    narrow = vgcore.diagnose(MLP.from_sizes([W, 32, 32, 32], "tanh", seed=0), x_mlp(), check=False)
    e = narrow.evidence
    assert narrow.lyapunov is None and e["lyapunov_std"] is None
    assert e["lyapunov_source"] == "backward gradient growth rate"
    assert e["lyapunov"] == pytest.approx(e["log10_rate"] * math.log(10))
    assert not any("lyapunov" in n for n in narrow.notes)  # an expected fallback, not a failure
    # BatchNorm couples the batch: no per-sample Jacobian, same fallback
    bn = vgcore.diagnose(mlp("tanh", depth=5, norm="batchnorm"), x_mlp(), check=False)
    assert bn.lyapunov is None and bn.evidence["lyapunov_source"] == "backward gradient growth rate"


# ------------------------------------------------------------------------------------------
# fixes: mapped from causes, checked, ranked
def _by_fix(d: Diagnosis) -> dict[str, Fix]:
    return {r.fix: r for r in d.fixes}


def test_sigmoid_fixes_are_checked_and_ranked(sigmoid_diag):
    d = sigmoid_diag
    recs = _by_fix(d)
    assert {"ReLU + He init", "residual blocks", "LayerNorm", "BatchNorm"} <= set(recs)
    causes = {r.cause for r in d.recommended}
    assert {"saturating activations", "depth", "covariate shift"} <= causes
    relu = recs["ReLU + He init"]
    assert relu.checked and relu.verdict_after == "healthy"
    assert relu.improvement == pytest.approx(relu.before - relu.after)
    assert relu.before == pytest.approx(d.spread)
    # the measured after-value is the spread of the fixed model's own gradient flow
    redo = vgcore.gradient_flow(relu.model_after, x_mlp())
    assert summarize_flow(redo)["spread"] == pytest.approx(relu.after)
    assert relu.model_after.activations[0].name == "relu"
    # ranked: helpful fixes first, by measured improvement
    helpful = [r.improvement for r in d.recommended if r.helps]
    assert helpful == sorted(helpful, reverse=True)
    assert d.best is d.recommended[0] and d.best.helps


def test_residual_fix_keeps_weights():
    m = mlp("tanh")
    d = vgcore.diagnose(m, x_mlp())
    assert d.verdict == "vanishing"
    res = _by_fix(d)["residual blocks"]
    assert res.checked and set(res.model_after.blocks) == {"residual"}
    assert all(np.array_equal(a, b) for a, b in zip(res.model_after.weights, m.weights))
    init = [r for r in d.recommended if r.cause == "bad init scale"]
    assert "Xavier init" in {r.fix for r in init}
    assert all(r.checked and r.verdict_after == "healthy" for r in init)


def test_relu_default_init_recommends_he():
    d = vgcore.diagnose(mlp("relu"), x_mlp())
    assert d.verdict == "vanishing"
    he = _by_fix(d)["He init"]
    assert he.checked and he.verdict_after == "healthy" and he.improvement > 5
    assert any("too small" in c for c in d.causes)


def test_exploding_recommends_clipping_with_threshold(exploding_rnn_diag):
    d = exploding_rnn_diag
    clip = _by_fix(d)["gradient clipping"]
    tau = clip.params["clip_norm"]
    assert clip.metric == "update norm" and clip.checked
    assert tau > 0 and f"{tau:g}" in clip.action
    # clipped update norm is the threshold (torch.nn.utils.clip_grad_norm_ semantics)
    assert clip.after == pytest.approx(math.log10(tau), abs=1e-3)
    assert clip.improvement > 6
    flow = vgcore.gradient_flow(d.model, seq(T=200), clip_norm=tau)
    assert flow.clip["clipped"]


def test_only_fixes_that_help_are_recommended(exploding_rnn_diag):
    """A fix measured to make things worse (e.g. an orthogonal recurrent init on an exploding
    RNN) is shown apart, never recommended; clipping is a bound on the update norm."""
    worse = RNN.from_sizes(32, N, init={"name": "gaussian", "sigma_w2": 3.0}, seed=0)
    for d in (exploding_rnn_diag, vgcore.diagnose(worse, seq(T=200))):
        assert d.recommended, d.summary()
        for r in d.recommended:
            assert r.helps, f"{r.fix} recommended with {r.measured()}"
        assert all(r.checked and not r.helps for r in d.not_helpful)
        text = d.summary()
        for r in d.not_helpful:
            assert f"- {r.fix} [" in text.split("measured not to help")[1]
        df = d.to_pandas()
        assert list(df["recommended"]) == [True] * len(d.recommended) + [False] * len(d.not_helpful)
        assert d.best is None or not d.best.bounds_update
    clip = _by_fix(exploding_rnn_diag)["gradient clipping"]
    assert "bounds the update norm" in clip.measured() and "decades" not in clip.measured()
    assert clip in exploding_rnn_diag.recommended


def test_vanilla_rnn_recommends_gated_cells():
    d = vgcore.diagnose(RNN.from_sizes(32, N, seed=0), seq())
    recs = _by_fix(d)
    lstm = recs["LSTM (forget bias 1)"]
    assert lstm.checked and lstm.improvement > 5
    assert isinstance(lstm.model_after, LSTM)
    assert lstm.model_after.bias_ih[N : 2 * N] == pytest.approx(1.0)
    assert isinstance(recs["GRU"].model_after, GRU)
    (gain,) = [r for r in d.recommended if r.fix.startswith("recurrent gain")]
    assert gain.checked and gain.improvement > 5
    m = gain.model_after
    assert np.array_equal(m.weight_ih, d.model.weight_ih)
    assert np.allclose(m.weight_hh, d.model.weight_hh * gain.params["scale"])


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_gate_bias_fix_for_gated_cells(cls):
    model = cls.from_sizes(32, N, seed=0)
    d = vgcore.diagnose(model, seq())
    assert d.verdict == "vanishing"
    (rec,) = d.recommended
    key = "forget_bias" if cls is LSTM else "update_bias"
    v = rec.params[key]
    assert v >= 1 and rec.checked and rec.improvement > 5
    fixed = rec.model_after
    total = fixed.bias_ih[N : 2 * N] + fixed.bias_hh[N : 2 * N]
    assert total == pytest.approx(v)
    assert np.array_equal(fixed.weight_hh, model.weight_hh)


def test_dead_relu_layer_recommends_leaky_relu():
    m = MLP.from_sizes([16] * 13, "relu", init="kaiming_normal", seed=0)
    m.biases[5][:] = -50.0  # layer 6 is switched off: its gradient is exactly zero
    m.biases[9][:] = 1.0  # ... while the output stays nonzero
    d = vgcore.diagnose(m, np.random.default_rng(0).standard_normal((8, 16)))
    assert d.verdict == "vanishing" and d.spread == math.inf
    assert d.evidence["lyapunov"] == -math.inf and d.evidence["vanishing_depth"] == 7
    leaky = _by_fix(d)["leaky ReLU"]
    assert leaky.checked and leaky.improvement == math.inf and leaky.verdict_after == "healthy"
    assert np.array_equal(leaky.model_after.weights[0], m.weights[0])  # only the activation changed
    doc = json.loads(json.dumps(d.to_dict()))
    assert doc["evidence"]["spread"] is None  # non-finite numbers become null in JSON


def test_no_checks_lists_unmeasured_fixes():
    d = vgcore.diagnose(mlp("sigmoid"), x_mlp(), check=False)
    assert d.recommended and not any(r.checked for r in d.recommended)
    assert all(r.improvement is None and r.note == "checks disabled" for r in d.recommended)
    assert d.best is None
    assert "not checked" in d.recommended[0].measured()


# ------------------------------------------------------------------------------------------
# result object and errors
def test_summary_dict_and_dataframe(sigmoid_diag):
    d = sigmoid_diag
    text = d.summary()
    assert text.startswith(d.name) and "VANISHING" in text and "measured:" in text
    assert repr(d).startswith("Diagnosis(") and "vanishing" in repr(d)
    doc = json.loads(json.dumps(d.to_dict()))
    assert doc["verdict"] == "vanishing" and doc["verdict"] in VERDICTS
    assert len(doc["evidence"]["log10_grad_norms"]) == 31
    assert len(doc["evidence"]["log10_step_gains"]) == 30
    assert doc["recommended"][0]["checked"] is True
    df = d.to_pandas()
    assert list(df["rank"]) == list(range(1, len(d.recommended) + 1))
    assert df.loc[0, "fix"] == d.recommended[0].fix


def test_default_inputs_and_name():
    d = vgcore.diagnose(mlp("relu", depth=4, init="kaiming_normal"))
    assert d.flow.batch_size == 64 and d.name == "MLP relu L=4"
    r = vgcore.diagnose(GRU.from_sizes(8, 16, seed=0), steps=12, batch=3)
    assert r.flow.log_grad_norms.shape == (13,) and r.flow.batch_size == 3
    assert r.axis == "step"


def test_mean_field_evidence_from_weights():
    m = MLP.from_sizes([W] * 11, "tanh", init={"name": "gaussian", "sigma_w2": 1.5}, seed=0)
    d = vgcore.diagnose(m, x_mlp())
    assert d.evidence["sigma_w2"] == pytest.approx(1.5, rel=0.05)
    assert d.evidence["gaussian_init"] is True
    u = vgcore.diagnose(mlp("tanh", depth=10), x_mlp())
    assert u.evidence["gaussian_init"] is False  # PyTorch's default is uniform
    assert u.evidence["phase"] is None


def test_mean_field_phase_and_critical_init_from_theory():
    from vgcore.theory import critical_sigma_w2, mean_field

    m = MLP.from_sizes([W] * 31, "tanh", init={"name": "gaussian", "sigma_w2": 0.3}, seed=0)
    d = vgcore.diagnose(m, x_mlp())
    e = d.evidence
    ref = mean_field("tanh", e["sigma_w2"], e["sigma_b2"])
    assert e["phase"] == "ordered" and e["chi1"] == pytest.approx(float(ref.chi_1))
    assert e["critical_sigma_w2"] == pytest.approx(critical_sigma_w2("tanh", e["sigma_b2"]))
    assert d.verdict == "vanishing"
    crit = _by_fix(d)["critical init"]
    assert crit.params["sigma_w2"] == pytest.approx(e["critical_sigma_w2"])
    assert crit.checked and crit.verdict_after == "healthy"
    assert "mean-field" in d.summary() and "ordered" in d.summary()
    # measured decades per layer agree with 0.5 log10 chi_1 (finite width: within 10%)
    assert e["log10_rate"] == pytest.approx(e["theory_log10_rate"], rel=0.1)
    assert 0.7 < e["theory_gain_ratio"] < 1.4


def test_errors():
    with pytest.raises(TypeError, match="MLP, RNN, LSTM or GRU"):
        vgcore.diagnose("not a model")
    with pytest.raises(ValueError, match="ratio"):
        vgcore.diagnose(mlp("tanh", depth=3), ratio=2.0)
    zero = MLP([np.zeros((4, 4))], None, "tanh")
    with pytest.raises(ValueError, match="output is zero"):
        vgcore.diagnose(zero, np.ones((2, 4)))


def test_old_names_of_a_fix_warn():
    """One name, "fix": Recommendation and Diagnosis.recommendations are deprecated aliases."""
    import importlib

    for mod in ("vgcore", "vgcore.diagnose", "vgcore.diagnose.result"):
        module = importlib.import_module(mod)
        with pytest.warns(DeprecationWarning, match=rf"{mod}.Recommendation is renamed {mod}.Fix"):
            assert module.Recommendation is Fix is vgcore.Fix
    d = vgcore.diagnose(MLP.from_sizes([8] * 4, "tanh"), check=False)
    with pytest.warns(DeprecationWarning, match="renamed Diagnosis.recommended"):
        assert d.recommendations is d.recommended
    assert "recommended" in d.to_dict() and "recommendations" not in d.to_dict()
    with pytest.raises(AttributeError, match="no attribute 'Recomendation'"):
        vgcore.Recomendation  # noqa: B018

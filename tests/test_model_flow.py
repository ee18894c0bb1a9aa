"""The core's generic BPTT sweep over the layer ops (``_core.model_gradient_flow``).

Every layer kind is analysed by this one sweep from its op's step and VJP; the dense and
RNN / LSTM / GRU stacks also have fused sweeps (the fast paths ``gradient_flow`` runs). Here the
generic sweep is checked against those fused sweeps (themselves checked against autograd in the
conformance battery) on every configuration the battery builds, stacked models included, and
against float64 autograd where it is the only path (state-space layers: tests/oracles/ssm.py);
then its range (rescaling far below float32's), per-step cotangents, and its refusals.

Tolerances: the two sweeps compute the same products in a different order, so they agree to
rounding (float64 1e-12 relative on norms and kept gradients, float32 1e-5).
"""

from __future__ import annotations

import numpy as np
import pytest

import vgcore
from oracles.kinds import KINDS, TIME_MAJOR
from oracles.ssm import ssm_state_flow
from tolerances import assert_rel_close
from vgcore._loader import _core

F64, F32 = np.dtype(np.float64), np.dtype(np.float32)
RTOL = {F64: 1e-12, F32: 1e-5}

# The battery's kinds that have a fused sweep and a per-sample map (train-mode BatchNorm couples
# the batch: the generic sweep, like every Jacobian analysis, refuses it).
FUSED = [
    k
    for k in KINDS
    if k.build().flow_sweep != "generic"
    and k.id != "mlp_batchnorm_train"
    and k.layout != "(B, T, in)"
]


def _log_close(got, want, rtol, what):
    """Equal -inf (exactly zero gradients, e.g. dL/dc_T under a loss on h_T), the rest close."""
    got, want = np.asarray(got), np.asarray(want)
    assert np.array_equal(np.isneginf(got), np.isneginf(want)), f"{what}: -inf at {got}, {want}"
    ok = ~np.isneginf(want)
    assert_rel_close(got[ok], want[ok], rtol, what)


def _generic(model, x, dt, h0=None, cot=None, keep_grads=True, threads=1, rescale=True):
    return _core.model_gradient_flow(
        model.to_spec(dt), x, h0, cot, keep_grads, threads, None, rescale
    )


def _stacked(cls, layers, seed=0):
    N = 4 if cls is vgcore.LSTM else 5
    return cls.from_sizes(3, N, num_layers=layers, seed=seed)


def _compare_recurrent(model, x, dt, cot=None, h0_rows=None, h0=None, threads=1):
    """Generic vs fused: every layer's h (and c) norms, kept gradients and the output."""
    fused = vgcore.gradient_flow(model, x, h0=h0, cotangent=cot, keep_grads=True)
    g = _generic(model, x, dt, h0=h0_rows, cot=cot, threads=threads)
    L, N = model.num_layers, model.hidden_size
    parts = len(model.state_names)
    assert [tuple(s) for s in g["segments"]] == [
        (layer, p, (layer * parts + p) * N, N) for layer in range(L) for p in range(parts)
    ]
    lg = np.asarray(fused.log_grad_norms).reshape(L, -1)
    kept = np.asarray(fused.grads).reshape(L, *np.shape(fused.grads)[-3:])
    for layer in range(L):
        i = layer * parts
        _log_close(g["log_grad_norms"][i], lg[layer], RTOL[dt], f"log ||dL/dh^{layer}||")
        assert_rel_close(
            g["grads"][..., i * N : (i + 1) * N], kept[layer], RTOL[dt], f"dL/dh^{layer}"
        )
        if parts == 2:
            lc = np.asarray(fused.log_cell_grad_norms).reshape(L, -1)[layer]
            _log_close(g["log_grad_norms"][i + 1], lc, RTOL[dt], f"log ||dL/dc^{layer}||")
    assert_rel_close(g["y"], fused.output, RTOL[dt], "output")
    assert not g["nonfinite"].any()


@pytest.mark.parametrize("kind", FUSED, ids=lambda k: k.id)
@pytest.mark.parametrize("dt", [F64, F32], ids=["f64", "f32"])
def test_generic_sweep_equals_the_fused_sweep(kind, dt):
    model = kind.model(dt)
    x, h0 = kind.inputs(model)
    if not kind.recurrent:
        fused = vgcore.gradient_flow(model, x, keep_grads=True)
        g = _generic(model, x, dt, keep_grads=False)
        assert g["segments"] == [(0, 0, 0, 0)]
        assert_rel_close(g["log_grad_norms"][0], fused.log_grad_norms, RTOL[dt], "log norms")
        assert_rel_close(g["act_mean"][0], fused.act_mean, RTOL[dt], "act_mean")
        assert_rel_close(g["act_std"][0], fused.act_std, RTOL[dt], "act_std")
        assert_rel_close(g["y"], fused.output, RTOL[dt], "output")
        return
    rows = kind.state_rows(model, h0)
    _compare_recurrent(model, x, dt, h0_rows=None if rows is None else rows.astype(dt), h0=h0)


@pytest.mark.parametrize("cls", [vgcore.RNN, vgcore.LSTM, vgcore.GRU], ids=lambda c: c.__name__)
@pytest.mark.parametrize("layers", [2, 3])
def test_stacked_models(cls, layers):
    """The total dL/dh^l of a stacked model's every layer (within a step, layer l + 1 reads h^l:
    its VJP adds to h^l's cotangent), on a loss at every step, threaded."""
    model = _stacked(cls, layers, seed=layers)
    rng = np.random.default_rng(layers)
    x = rng.standard_normal((7, 5, 3))
    cot = rng.standard_normal((7, 5, model.hidden_size))
    _compare_recurrent(model, x, F64, cot=cot, threads=2)
    _compare_recurrent(model.astype(np.float32), x.astype(np.float32), F32, threads=2)


@pytest.mark.parametrize(
    "kind", [k for k in KINDS if k.build().flow_sweep == "generic"], ids=lambda k: k.id
)
def test_state_space_layers_against_autograd(torch, kind):
    """Per-step cotangents and a random initial state, 2 threads, float64 autograd."""
    model = kind.model(F64)
    x, h0 = kind.inputs(model, seed=4)
    h0 = np.random.default_rng(5).standard_normal((kind.batch, model.state_dim))
    cot = np.random.default_rng(6).standard_normal((kind.steps, kind.batch, model.hidden_size))
    g = _generic(model, x, F64, h0=h0, cot=cot, threads=2)
    grads, y = ssm_state_flow(torch, model, x, h0=h0, cotangent=cot)
    for t, want in enumerate(grads):
        assert_rel_close(g["grads"][t], want, 1e-10, f"dL/ds_{t}")
    with np.errstate(divide="ignore"):
        want = np.log([np.linalg.norm(a) for a in grads])
    assert_rel_close(g["log_grad_norms"][0], want, 1e-10, "log norms")
    assert_rel_close(g["y"], y, 1e-12, "output (the last state)")


def test_norms_far_below_float32_range_stay_exact():
    """A contracting float32 RNN over 400 steps: ||dL/dh_0|| below 1e-100 is measured
    (rescaled), equal to the float64 sweep to float32 rounding; without rescaling it underflows
    to 0."""
    m = vgcore.RNN.from_sizes(3, 6, seed=0)
    m = vgcore.RNN(0.1 * m.weight_ih, 0.3 * m.weight_hh, m.bias_ih, m.bias_hh)
    x = np.random.default_rng(0).standard_normal((400, 2, 3))
    g64 = _generic(m, x, F64, keep_grads=False)
    g32 = _generic(m.astype(np.float32), x.astype(np.float32), F32, keep_grads=False)
    assert g64["log_grad_norms"][0, 0] < np.log(1e-100)
    np.testing.assert_allclose(g32["log_grad_norms"][0], g64["log_grad_norms"][0], rtol=1e-4)
    plain = _generic(
        m.astype(np.float32), x.astype(np.float32), F32, keep_grads=False, rescale=False
    )
    assert np.isneginf(plain["log_grad_norms"][0, 0])


@pytest.mark.parametrize("dt", [F64, F32], ids=["f64", "f32"])
def test_gradients_beyond_float32_range_closed_form(dt):
    """A ReLU RNN with W_hh = 10 I on positive states: dL/dh_t = 10^(T - t) c exactly, here
    from c ~ 1e30 up to 1e60 (beyond float32's 3.4e38), measured in both dtypes."""
    N, T, B = 3, 30, 2
    m = vgcore.RNN(np.zeros((N, 1)), 10 * np.eye(N), None, None, nonlinearity="relu").astype(dt)
    h0 = np.full((B, N), 1e-30, dt)
    c = np.full((B, N), 1e30, dt)
    g = _generic(m, np.zeros((T, B, 1), dt), dt, h0=h0, cot=c, keep_grads=False)
    want = np.log(np.linalg.norm(c.astype(np.float64))) + np.arange(T, -1, -1) * np.log(10.0)
    assert_rel_close(g["log_grad_norms"][0], want, {F64: 1e-14, F32: 1e-7}[dt], "log norms")


def test_threads_give_the_same_numbers():
    m = _stacked(vgcore.GRU, 2, seed=3)
    x = np.random.default_rng(2).standard_normal((9, 7, 3))
    a = _generic(m, x, F64, threads=1)
    b = _generic(m, x, F64, threads=2)
    for key in ("y", "grads"):  # per sample: bit for bit
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for key in ("log_grad_norms", "act_mean", "act_std"):  # chunk sums combined in another order
        np.testing.assert_allclose(a[key], b[key], rtol=1e-14, err_msg=key)


def test_bad_input_is_refused_by_name():
    m = vgcore.LSTM.from_sizes(3, 4, seed=0)
    x = np.zeros((5, 2, 3))
    with pytest.raises(ValueError, match="x"):
        _generic(m, np.zeros((5, 2, 4)), F64)
    with pytest.raises(ValueError, match="h0"):
        _generic(m, x, F64, h0=np.zeros((2, 4)))  # the state rows are [h, c]: (2, 8)
    with pytest.raises(ValueError, match="cotangent"):
        _generic(m, x, F64, cot=np.zeros((2, 8)))
    with pytest.raises(ValueError, match="cotangent"):
        _generic(m, x, F64, cot=np.zeros((4, 2, 4)))
    mlp = vgcore.MLP.from_sizes([3, 4, 2], "tanh", seed=0)
    with pytest.raises(ValueError, match="h0"):
        _generic(mlp, np.zeros((2, 3)), F64, h0=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="keep_grads"):
        _generic(mlp, np.zeros((2, 3)), F64, keep_grads=True)


def test_progress_can_stop_the_sweep():
    m = vgcore.GRU.from_sizes(3, 8, seed=0)
    x = np.zeros((2000, 64, 3))

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _core.model_gradient_flow(m.to_spec(F64), x, None, None, False, 1, stop, True)


def test_state_space_gradient_flow_refuses_what_it_does_not_measure():
    """gradient_flow of a kind on the generic sweep names the extras it lacks."""
    kind = next(k for k in KINDS if k.id == "ssm_real")
    model = kind.model(F64)
    x, _ = kind.inputs(model)
    flow = vgcore.gradient_flow(model, x)
    assert flow.log_grad_norms.shape == (kind.steps + 1,)
    assert np.isnan(flow.saturation).all() and flow.log_param_grad_norms is None
    assert "step" in repr(flow)
    for kw in (
        {"param_grads": True},
        {"keep_states": True},
        {"clip_norm": 1.0},
        {"input_grads": True},
    ):
        with pytest.raises(ValueError, match=next(iter(kw))):
            vgcore.gradient_flow(model, x, **kw)
    assert kind.layout == TIME_MAJOR


@pytest.mark.parametrize("layers", [1, 2])
def test_gradient_flow_on_the_generic_sweep_matches_the_fused_result(layers):
    """A kind whose class sets ``flow_sweep = "generic"`` (what a new cell does before it has
    fused rows) gets the fused sweep's grid of h and c norms, kept gradients and output."""

    class GenericLSTM(vgcore.LSTM):
        flow_sweep = "generic"

    m = vgcore.LSTM.from_sizes(3, 4, num_layers=layers, seed=7)
    g = GenericLSTM(m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh, num_layers=layers)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 3, 3))
    cot = rng.standard_normal((6, 3, 4))
    want = vgcore.gradient_flow(m, x, cotangent=cot, keep_grads=True)
    got = vgcore.gradient_flow(g, x, cotangent=cot, keep_grads=True)
    _log_close(got.log_grad_norms, want.log_grad_norms, 1e-12, "log ||dL/dh||")
    _log_close(got.log_cell_grad_norms, want.log_cell_grad_norms, 1e-12, "log ||dL/dc||")
    assert_rel_close(got.grads, want.grads, 1e-12, "dL/dh")
    assert_rel_close(got.cell_grads, want.cell_grads, 1e-12, "dL/dc")
    assert_rel_close(got.output, want.output, 1e-12, "output")
    assert got.log_grad_norms.shape == want.log_grad_norms.shape


def test_diagnose_refuses_a_state_space_layer_naming_what_measures_it():
    m = vgcore.SSM.from_sizes(3, 4, seed=0)
    with pytest.raises(NotImplementedError, match="gradient_flow"):
        vgcore.diagnose(m, np.zeros((5, 2, 3)))


@pytest.mark.parametrize(
    "model",
    [
        vgcore.SSM.from_sizes(3, 4, seed=0),
        vgcore.RNN(np.zeros((4, 3)), np.eye(4), None, None),
    ],
    ids=["ssm", "rnn"],
)
def test_a_zero_output_gradient_is_reported_not_divided(model):
    """A zero state under the default loss 0.5 ||y||^2: every gradient is exactly zero. The
    result says so (no 'gain 10^nan', no warning), the gain is NaN and nothing vanishes."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flow = vgcore.gradient_flow(model, np.zeros((5, 2, 3)))
        text = repr(flow)
        assert np.isneginf(flow.log_grad_norms).all()
        assert "exactly zero" in text and "nan" not in text
        assert np.isnan(flow.log_gain) and flow.vanishing_depth() is None

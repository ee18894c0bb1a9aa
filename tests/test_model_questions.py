"""The analyses, diagnosis and fixes ask the model (its axis, layers, activations, weight
scale, mean-field setting), never a chain of class checks; what the fixes rebuild keeps the
model's structure, stacked and bidirectional included."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import vgcore
from vgcore import _fixes
from vgcore._modelspec import spec_from_model
from vgcore.models.base import narrow

PKG = Path(vgcore.__file__).resolve().parent
_CLASS_CHECK = re.compile(r"isinstance\([^)]*\b(MLP|LSTM|GRU|RNN|RecurrentModel)\b")


def test_no_class_checks_outside_models():
    hits = []
    for path in sorted(PKG.rglob("*.py")):
        if path.parent.name == "models" and path.parent.parent == PKG:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _CLASS_CHECK.search(line):
                hits.append(f"{path.relative_to(PKG)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


def _stacked(cls=vgcore.LSTM, bidirectional=True, **kw):
    return cls.from_sizes(5, 4, num_layers=2, bidirectional=bidirectional, seed=3, **kw)


def _same_structure(a, b):
    assert type(a) is type(b)
    assert (a.num_layers, a.bidirectional, a.batch_first) == (
        b.num_layers,
        b.bidirectional,
        b.batch_first,
    )
    assert getattr(a, "nonlinearity", None) == getattr(b, "nonlinearity", None)


@pytest.mark.parametrize("cls", [vgcore.RNN, vgcore.LSTM, vgcore.GRU])
def test_recurrent_scale_scales_every_layer(cls):
    m = _stacked(cls)
    m.batch_first = True
    out = _fixes.with_recurrent_scale(m, 1.5)
    _same_structure(m, out)
    for (wih, whh, bih, bhh), (wih2, whh2, bih2, bhh2) in zip(m.layer_params(), out.layer_params()):
        assert np.array_equal(whh2, 1.5 * whh)
        assert np.array_equal(wih2, wih) and np.array_equal(bih2, bih) and np.array_equal(bhh2, bhh)
        assert not np.shares_memory(wih2, wih)  # a copy: the fix leaves its argument untouched


def test_gate_bias_reads_and_sets_every_layer_and_direction(torch):
    m = _stacked(vgcore.LSTM)
    n = m.hidden_size
    totals = [
        float(np.mean(bih[n : 2 * n])) + float(np.mean(bhh[n : 2 * n]))
        for _, _, bih, bhh in m.layer_params()
    ]
    assert _fixes.gate_bias(m, 1) == pytest.approx(np.mean(totals), rel=1e-12)
    out = _fixes.with_gate_bias(m, 1, 2.0)
    _same_structure(m, out)
    mod = out.to_torch()
    for name in ("l0", "l0_reverse", "l1", "l1_reverse"):
        bih = getattr(mod, f"bias_ih_{name}").detach().numpy()
        bhh = getattr(mod, f"bias_hh_{name}").detach().numpy()
        assert np.all(bih[n : 2 * n] == 2.0) and np.all(bhh[n : 2 * n] == 0.0), name
        assert np.array_equal(
            bih[:n], getattr(m.to_torch(), f"bias_ih_{name}").detach().numpy()[:n]
        )
    assert _fixes.gate_bias(out, 1) == 2.0


def test_gate_bias_creates_missing_biases_of_a_stacked_model():
    m = _stacked(vgcore.GRU, bias=False)
    out = _fixes.with_gate_bias(m, 1, 1.0)
    assert out.bias_ih is not None and len(out.bias_ih) == 4
    assert _fixes.gate_bias(out, 1) == 1.0


def test_recurrent_init_redraws_every_layer():
    m = _stacked(vgcore.RNN, nonlinearity="relu")
    out = _fixes.with_recurrent_init(m, {"name": "default", "recurrent": "orthogonal"}, seed=1)
    _same_structure(m, out)
    for (wih, _, _, _), (wih2, whh2, _, _) in zip(m.layer_params(), out.layer_params()):
        assert np.array_equal(wih2, wih)
        np.testing.assert_allclose(np.linalg.svd(whh2, compute_uv=False), 1.0, rtol=1e-12)
    # a single layer draws as before: one generator, the layer's own input size
    single = vgcore.RNN.from_sizes(5, 4, seed=3)
    a = _fixes.with_recurrent_init(single, "orthogonal", seed=2)
    p = vgcore.init.initialize_recurrent(
        "orthogonal", "rnn", 5, 4, rng=np.random.default_rng(2), dtype=np.float64
    )
    assert np.array_equal(a.weight_hh, p["weight_hh"])


def test_recurrent_as_keeps_layers_and_directions():
    m = _stacked(vgcore.RNN)
    out = _fixes.recurrent_as(m, "gru", seed=0)
    assert isinstance(out, vgcore.GRU)
    assert (out.num_layers, out.bidirectional, out.input_size, out.hidden_size) == (2, True, 5, 4)


def test_weight_scale_of_a_stacked_model_reads_every_layer():
    m = _stacked(vgcore.LSTM, bidirectional=False)
    scale = _fixes.estimate_weight_scale(m)
    whh = [p[1] for p in m.layer_params()]
    sw2 = np.mean([4 * np.mean(w**2) for w in whh])
    sb2 = np.mean([np.mean((bih + bhh) ** 2) for _, _, bih, bhh in m.layer_params()])
    assert scale["sigma_w2"] == pytest.approx(sw2, rel=1e-12)
    assert scale["sigma_b2"] == pytest.approx(sb2, rel=1e-12)


def test_with_layer_params_checks_the_count():
    m = _stacked(vgcore.GRU)
    with pytest.raises(ValueError, match="num_layers \\* num_directions = 4 entries, got 1"):
        m.with_layer_params(m.layer_params()[:1])


def test_flat_spec_and_describe():
    mlp = vgcore.MLP.from_sizes([8, 16, 16], "relu", residual=True)
    assert spec_from_model(mlp) == {
        "model": "mlp",
        "depth": 2,
        "width": 16,
        "input_size": 8,
        "activation": "relu",
        "block": "residual",
        "norm": None,
    }
    assert mlp.describe() == "MLP depth=2 widths=8..16"
    rnn = vgcore.RNN.from_sizes(3, 7, nonlinearity="relu")
    assert spec_from_model(rnn) == {
        "model": "rnn",
        "hidden_size": 7,
        "input_size": 3,
        "nonlinearity": "relu",
    }
    assert rnn.describe() == "RNN N=7"
    st = _stacked(vgcore.GRU)
    assert spec_from_model(st) == {
        "model": "gru",
        "hidden_size": 4,
        "input_size": 5,
        "num_layers": 2,
        "bidirectional": True,
    }
    assert st.describe() == repr(st)


def test_mean_field_setting_and_lyapunov_obstacle():
    assert vgcore.MLP.from_sizes([8] * 4, "tanh").mean_field_setting() == "dense"
    assert vgcore.MLP.from_sizes([8] * 4, "tanh", residual=True).mean_field_setting() is None
    assert vgcore.MLP.from_sizes([8] * 4, "tanh", norm="layernorm").mean_field_setting() is None
    assert vgcore.RNN.from_sizes(3, 4).mean_field_setting() == "recurrent"
    assert vgcore.LSTM.from_sizes(3, 4).mean_field_setting() is None
    assert _stacked(vgcore.RNN, bidirectional=False).mean_field_setting() is None
    assert vgcore.MLP.from_sizes([8] * 4, "tanh").lyapunov_obstacle() is None
    assert "keep the width" in vgcore.MLP.from_sizes([8, 16, 16], "tanh").lyapunov_obstacle()
    assert "bidirectional" in _stacked(vgcore.LSTM).lyapunov_obstacle()
    assert vgcore.LSTM.from_sizes(3, 4).lyapunov_obstacle() is None


def test_unit_preactivations_are_refused_where_undefined():
    x = np.zeros((3, 2, 5))
    with pytest.raises(NotImplementedError, match="vanilla RNN"):
        next(vgcore.LSTM.from_sizes(5, 4).unit_preactivations(x, None, lambda a, z: z))
    with pytest.raises(NotImplementedError, match="single-layer"):
        next(_stacked(vgcore.RNN).unit_preactivations(x, None, lambda a, z: z))


def test_unit_preactivations_follow_the_forward_pass(torch):
    """The RNN's pre-activations against nn.RNN's hidden states: h_t = relu(z_t)."""
    m = vgcore.RNN.from_sizes(5, 4, nonlinearity="relu", seed=2)
    x = np.random.default_rng(0).normal(size=(6, 3, 5))
    relu = lambda a, z: np.maximum(z, 0.0)  # noqa: E731
    zs = [z for _, z in m.unit_preactivations(x, None, relu)]
    out, _ = m.to_torch()(torch.from_numpy(x))
    np.testing.assert_allclose(
        np.maximum(np.stack(zs), 0.0), out.detach().numpy(), rtol=1e-12, atol=1e-15
    )


def test_narrow_names_both_classes():
    with pytest.raises(TypeError, match="takes a MLP model, got a LSTM \\(lstm\\)"):
        narrow(vgcore.LSTM.from_sizes(3, 4), vgcore.MLP)
    m = vgcore.MLP.from_sizes([4, 4])
    assert narrow(m, vgcore.MLP) is m


def test_dead_units_of_an_mlp_against_a_direct_count():
    """Dead units (inactive for every sample) from the model's own forward pass."""
    m = vgcore.MLP.from_sizes([16] * 5, "relu", seed=0, init={"name": "gaussian", "sigma_b2": 1.0})
    x = np.random.default_rng(1).normal(size=(32, 16))
    flow = vgcore.gradient_flow(m, x, dead_units=True)
    h, dead = x, []
    for w, b in zip(m.weights, m.biases):
        z = h @ w.T + b
        dead.append(np.mean((z <= 0).all(axis=0)))
        h = np.maximum(z, 0)
    np.testing.assert_array_equal(flow.dead, dead)

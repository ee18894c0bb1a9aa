"""gradient_flow against PyTorch autograd (float64 oracle) and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

import vgcore
from oracles import torch_mlp_flow, torch_recurrent_flow
from tolerances import assert_rel_close
from vgcore import GRU, LSTM, MLP, RNN

ACTS = [
    ("identity", {}),
    ("sigmoid", {}),
    ("tanh", {}),
    ("relu", {}),
    ("leaky_relu", {"negative_slope": 0.2}),
    ("elu", {"alpha": 0.7}),
    ("selu", {}),
    ("softplus", {"beta": 2.0, "threshold": 5.0}),
    ("silu", {}),
    ("gelu", {}),
    ("gelu_tanh", {}),
]


def random_mlp(sizes, act, dtype, seed=0, gain=1.5, bias=True):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(0, gain / math.sqrt(a), (b, a)) for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [rng.normal(0, 0.3, b) if bias else None for b in sizes[1:]]
    return MLP(ws, bs, act, dtype=dtype)


def random_recurrent(cls, I, N, dtype, seed=0, bias=True, **kw):
    rng = np.random.default_rng(seed)
    G = cls.gates
    s = 1.0 / math.sqrt(N)
    p = [rng.uniform(-s, s, shape) * 1.5 for shape in [(G * N, I), (G * N, N), (G * N,), (G * N,)]]
    return cls(p[0], p[1], p[2] if bias else None, p[3] if bias else None, dtype=dtype, **kw)


# ------------------------------------------------------------------------------------------
# MLP


@pytest.mark.parametrize("name,params", ACTS, ids=[a[0] for a in ACTS])
def test_mlp_every_activation_matches_torch(torch, dtype, rtol, name, params):
    act = vgcore.Activation(name, **params)
    model = random_mlp([7, 9, 6, 8, 5], act, dtype)
    x = np.random.default_rng(1).normal(size=(4, 7))
    flow = vgcore.gradient_flow(model, x, keep_grads=True, param_grads=True)
    grads, y, pn = torch_mlp_flow(torch, model, x.astype(dtype))
    assert_rel_close(flow.output, y, rtol, "y")
    assert_rel_close(flow.grad_norms, [np.linalg.norm(g) for g in grads], rtol, "grad_norms")
    for l, g in enumerate(grads):
        assert_rel_close(flow.grads[l], g, rtol * 10, f"dL/dh_{l}")
    assert_rel_close(flow.param_grad_norms["weight"], pn["weight"], rtol, "weight grads")
    assert_rel_close(flow.param_grad_norms["bias"], pn["bias"], rtol, "bias grads")


def test_mlp_mixed_widths_no_bias_cotangent(torch, dtype, rtol):
    model = random_mlp([3, 17, 2, 11], ["tanh", "relu", "identity"], dtype, bias=False)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 3))
    cot = rng.normal(size=(5, 11))
    flow = vgcore.gradient_flow(model, x, cotangent=cot, keep_grads=True, param_grads=True)
    grads, _, pn = torch_mlp_flow(torch, model, x.astype(dtype), cotangent=cot.astype(dtype))
    assert_rel_close(flow.grad_norms, [np.linalg.norm(g) for g in grads], rtol)
    assert_rel_close(flow.param_grad_norms["weight"], pn["weight"], rtol)
    assert list(flow.param_grad_norms) == ["weight"]  # no biases: no bias entry


@pytest.mark.parametrize("batch", [1, 2, 37])
def test_mlp_batch_sizes_and_threads(torch, batch):
    model = random_mlp([6, 8, 8, 4], "tanh", np.float64)
    x = np.random.default_rng(batch).normal(size=(batch, 6))
    grads, _, _ = torch_mlp_flow(torch, model, x)
    expected = [np.linalg.norm(g) for g in grads]
    for threads in (1, 2, 3):
        flow = vgcore.gradient_flow(model, x, num_threads=threads)
        assert_rel_close(flow.grad_norms, expected, 1e-12, f"threads={threads}")


def test_mlp_from_torch_round_trip(torch):
    nn = torch.nn
    net = nn.Sequential(
        nn.Linear(5, 6),
        nn.LeakyReLU(0.3),
        nn.Linear(6, 6),
        nn.Identity(),
        nn.Linear(6, 4),
        nn.ELU(alpha=0.5),
        nn.Linear(4, 4),
        nn.GELU(approximate="tanh"),
        nn.Linear(4, 3),
        nn.Softplus(beta=3.0, threshold=4.0),
        nn.Dropout(0.0),
        nn.Linear(3, 2),
    ).double()
    model = MLP.from_torch(net)
    assert [str(a) for a in model.activations] == [
        "leaky_relu(negative_slope=0.3)",
        "identity",
        "elu(alpha=0.5)",
        "gelu_tanh",
        "softplus(beta=3, threshold=4)",
        "identity",
    ]
    assert model.dtype == np.float64
    x = np.random.default_rng(0).normal(size=(3, 5))
    flow = vgcore.gradient_flow(model, x, keep_grads=True)
    xt = torch.tensor(x, requires_grad=True)
    y = net(xt)
    (0.5 * (y**2).sum()).backward()
    assert_rel_close(flow.grads[0], xt.grad.numpy(), 1e-10)
    back = model.to_torch()
    assert_rel_close(back(torch.tensor(x)).detach().numpy(), y.detach().numpy(), 1e-12)
    f32 = MLP.from_torch(net.float())
    assert f32.dtype == np.float32


def test_mlp_from_torch_rejects_unsupported(torch):
    nn = torch.nn
    with pytest.raises(NotImplementedError, match="Softmax"):
        MLP.from_torch(nn.Sequential(nn.Linear(2, 2), nn.Softmax(dim=1)))
    with pytest.raises(NotImplementedError, match=r"must directly follow an nn\.Linear"):
        MLP.from_torch(nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.BatchNorm1d(2)))
    with pytest.raises(NotImplementedError, match="before the first"):
        MLP.from_torch(nn.Sequential(nn.Tanh(), nn.Linear(2, 2)))
    with pytest.raises(NotImplementedError, match="follows another activation"):
        MLP.from_torch(nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.ReLU()))


def test_mlp_finite_differences():
    """Central differences of L = 0.5 ||y||^2 with respect to the input (float64)."""
    model = random_mlp([4, 5, 3], ["silu", "softplus"], np.float64)
    x = np.random.default_rng(5).normal(size=(2, 4))
    flow = vgcore.gradient_flow(model, x, keep_grads=True)

    def loss(xv):
        return 0.5 * np.sum(vgcore.gradient_flow(model, xv).output ** 2)

    eps = 1e-6
    fd = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        fd[idx] = (loss(xp) - loss(xm)) / (2 * eps)
    assert_rel_close(flow.grads[0], fd, 1e-7, "finite differences")


def test_default_loss_output_and_repr():
    model = random_mlp([3, 4, 2], "tanh", np.float64)
    x = np.ones((2, 3))
    flow = vgcore.gradient_flow(model, x)
    assert flow.log_grad_norms.shape == (3,)
    assert flow.act_mean.shape == (2,) and flow.saturation.shape == (2,)
    assert math.isclose(flow.grad_norms[-1], np.linalg.norm(flow.output), rel_tol=1e-12)
    text = repr(flow)
    assert "GradientFlow(MLP depth=2" in text and "float64" in text
    df = flow.to_pandas()
    assert list(df.index) == [0, 1, 2] and "grad_norm" in df.columns


def test_saturation_statistic():
    # Large weights drive tanh units into saturation; tiny ones keep them linear.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16))
    big = MLP([rng.normal(0, 50, (16, 16))], None, "tanh")
    small = MLP([rng.normal(0, 1e-3, (16, 16))], None, "tanh")
    fb = vgcore.gradient_flow(big, x)
    fs = vgcore.gradient_flow(small, x)
    z = x @ big.weights[0].T
    expected = np.mean(1 - np.tanh(z) ** 2 < 1e-3)
    assert fb.saturation[0] == pytest.approx(expected, abs=1e-12)
    assert fb.saturation[0] > 0.5 and fs.saturation[0] == 0.0
    h = np.tanh(z)
    assert fb.act_mean[0] == pytest.approx(h.mean(), rel=1e-10)
    assert fb.act_std[0] == pytest.approx(h.std(), rel=1e-8)


# ------------------------------------------------------------------------------------------
# Recurrent cells

CELLS = [
    (RNN, {"nonlinearity": "tanh"}),
    (RNN, {"nonlinearity": "relu"}),
    (LSTM, {}),
    (GRU, {}),
]
CELL_IDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def _check_recurrent(torch, model, x, rtol, h0=None, cotangent=None, **kw):
    flow = vgcore.gradient_flow(
        model, x, h0=h0, cotangent=cotangent, keep_grads=True, param_grads=True, **kw
    )
    grads, cgrads, hT, pn = torch_recurrent_flow(torch, model, x, h0=h0, cotangent=cotangent)
    assert_rel_close(flow.output, hT, rtol, "h_T")
    gn = np.sqrt((grads**2).sum(axis=(1, 2)))
    assert_rel_close(flow.grad_norms, gn, rtol, "grad_norms")
    assert_rel_close(flow.grads, grads, rtol * 10, "dL/dh_t")
    if cgrads is not None:
        cn = np.sqrt((cgrads**2).sum(axis=(1, 2)))
        assert_rel_close(flow.cell_grad_norms, cn, rtol, "cell_grad_norms")
        assert_rel_close(flow.cell_grads, cgrads, rtol * 10, "dL/dc_t")
    for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        if np.isnan(pn[k]):
            assert k not in flow.param_grad_norms
        else:
            assert flow.param_grad_norms[k] == pytest.approx(pn[k], rel=rtol), k
    return flow


@pytest.mark.parametrize("cls,kw", CELLS, ids=CELL_IDS)
def test_recurrent_matches_torch(torch, dtype, rtol, cls, kw):
    model = random_recurrent(cls, 5, 7, dtype, **kw)
    x = np.random.default_rng(2).normal(size=(9, 3, 5)).astype(dtype)
    _check_recurrent(torch, model, x, rtol)


@pytest.mark.parametrize("cls,kw", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("T,B", [(1, 1), (1, 4), (6, 1), (12, 5)])
def test_recurrent_h0_cotangent_shapes(torch, cls, kw, T, B):
    model = random_recurrent(cls, 3, 6, np.float64, seed=T * 10 + B, **kw)
    rng = np.random.default_rng(T + B)
    x = rng.normal(size=(T, B, 3))
    h0 = rng.normal(size=(B, 6)) * 0.5
    if cls is LSTM:
        h0 = (h0, rng.normal(size=(B, 6)))
    _check_recurrent(torch, model, x, 1e-10, h0=h0)
    _check_recurrent(torch, model, x, 1e-10, h0=h0, cotangent=rng.normal(size=(B, 6)))
    _check_recurrent(torch, model, x, 1e-10, cotangent=rng.normal(size=(T, B, 6)))


@pytest.mark.parametrize("cls,kw", CELLS, ids=CELL_IDS)
def test_recurrent_no_bias_and_threads(torch, cls, kw):
    model = random_recurrent(cls, 4, 5, np.float64, bias=False, **kw)
    x = np.random.default_rng(7).normal(size=(8, 7, 4))
    ref = _check_recurrent(torch, model, x, 1e-10, num_threads=1)
    for threads in (2, 3, 7):
        f = vgcore.gradient_flow(model, x, num_threads=threads, param_grads=True)
        assert_rel_close(f.log_grad_norms, ref.log_grad_norms, 1e-12, f"threads={threads}")
        assert f.param_grad_norms["weight_hh"] == pytest.approx(
            ref.param_grad_norms["weight_hh"], rel=1e-12
        )


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
@pytest.mark.parametrize("batch_first", [False, True])
def test_recurrent_from_torch(torch, cls, batch_first):
    mod = getattr(torch.nn, cls.__name__)(4, 6, batch_first=batch_first).double()
    model = cls.from_torch(mod)
    assert model.batch_first is batch_first and model.dtype == np.float64
    # the module's own batch: (B, T, in) when batch_first, else (T, B, in); T = 5, B = 2
    x = np.random.default_rng(0).normal(size=(2, 5, 4) if batch_first else (5, 2, 4))
    flow = vgcore.gradient_flow(model, x, keep_states=True)
    assert len(flow.log_grad_norms) == 6 and flow.batch_size == 2
    xt = torch.tensor(x)
    out, _ = mod(xt)
    states = flow.states[:, 1:] if batch_first else flow.states[1:]
    assert_rel_close(states, out.detach().numpy(), 1e-12)
    last = out[:, -1] if batch_first else out[-1]
    assert_rel_close(flow.output, last.detach().numpy(), 1e-12)
    back = model.to_torch()
    for (n1, p1), (n2, p2) in zip(mod.named_parameters(), back.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert back.batch_first is batch_first


def test_recurrent_from_torch_rejects_the_wrong_class_and_projection(torch):
    with pytest.raises(NotImplementedError, match="proj_size=2"):
        LSTM.from_torch(torch.nn.LSTM(2, 3, proj_size=2))
    with pytest.raises(TypeError, match=r"torch\.nn\.LSTM"):
        LSTM.from_torch(torch.nn.GRU(2, 3))


def test_rnn_relu_from_torch(torch):
    mod = torch.nn.RNN(3, 4, nonlinearity="relu").double()
    model = RNN.from_torch(mod)
    assert model.nonlinearity == "relu" and model.cell == "rnn_relu"


def test_lstm_finite_differences_wrt_c0():
    model = random_recurrent(LSTM, 2, 3, np.float64)
    rng = np.random.default_rng(9)
    x = rng.normal(size=(4, 2, 2))
    h0, c0 = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    flow = vgcore.gradient_flow(model, x, h0=(h0, c0), keep_grads=True)

    def loss(c):
        return 0.5 * np.sum(vgcore.gradient_flow(model, x, h0=(h0, c)).output ** 2)

    eps = 1e-6
    fd = np.zeros_like(c0)
    for idx in np.ndindex(*c0.shape):
        cp, cm = c0.copy(), c0.copy()
        cp[idx] += eps
        cm[idx] -= eps
        fd[idx] = (loss(cp) - loss(cm)) / (2 * eps)
    assert_rel_close(flow.cell_grads[0], fd, 1e-7, "dL/dc_0")


def test_gate_saturation_shapes():
    model = random_recurrent(LSTM, 3, 4, np.float64)
    x = np.random.default_rng(0).normal(size=(6, 2, 3))
    flow = vgcore.gradient_flow(model, x, keep_states=True)
    assert flow.gate_saturation.shape == (6, 4)
    assert np.allclose(flow.saturation, flow.gate_saturation.mean(axis=1))
    assert flow.states.shape == (7, 2, 4) and flow.cell_states.shape == (7, 2, 4)
    df = flow.to_pandas()
    assert {"saturation_i", "saturation_f", "cell_grad_norm"} <= set(df.columns)

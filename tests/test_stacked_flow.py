"""gradient_flow on stacked and bidirectional RNN / LSTM / GRU against PyTorch float64 autograd
(tests/oracles/stacked.py): norms over the (layer, time) grid at 1e-10 relative, full tensors at
1e-9, parameter-gradient norms per layer, the gradient reaching the input sequence."""

from __future__ import annotations

import numpy as np
import pytest

import vgcore
from oracles.stacked import torch_stacked_flow

pytestmark = pytest.mark.usefixtures("torch")

CELLS = [
    ("rnn_tanh", vgcore.RNN, {}),
    ("rnn_relu", vgcore.RNN, {"nonlinearity": "relu"}),
    ("lstm", vgcore.LSTM, {}),
    ("gru", vgcore.GRU, {}),
]
NORM_TOL = 1e-10  # absolute on natural-log norms = relative on the norms
TENSOR_TOL = 1e-9  # relative to the largest entry


def _grid(a: np.ndarray, model) -> np.ndarray:
    """vgcore's grid layout -> the oracle's (D, L, ...)."""
    return a[None] if model.num_directions == 1 else a


def _close_logs(got, want, tol=NORM_TOL) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=0, atol=tol)


def _model(cls, kw, layers, bidirectional, *, bias=True, batch_first=False, seed=3):
    m = cls.from_sizes(
        3, 5, num_layers=layers, bidirectional=bidirectional, bias=bias, seed=seed, **kw
    )
    if batch_first:
        m.batch_first = True
    return m


@pytest.mark.parametrize("name,cls,kw", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_stacked_flow_matches_autograd(name, cls, kw, layers, bidirectional) -> None:
    rng = np.random.default_rng(layers + 10 * bidirectional)
    m = _model(cls, kw, layers, bidirectional)
    D = m.num_directions
    T, B, N = 6, 4, 5
    x = rng.standard_normal((T, B, 3))
    h0 = rng.standard_normal((layers * D, B, N))
    c0 = rng.standard_normal((layers * D, B, N)) if name == "lstm" else None
    want = torch_stacked_flow(m, x, h0=h0, c0=c0)
    init = (h0, c0) if name == "lstm" else h0
    if not m.stacked:  # a single-layer model takes (B, N) initial states
        init = (h0[0], c0[0]) if name == "lstm" else h0[0]
    flow = vgcore.gradient_flow(
        m, x, h0=init, param_grads=True, keep_grads=True, keep_states=True, input_grads=True
    )
    grid = (lambda a: a[None, None]) if not m.stacked else (lambda a: _grid(a, m))
    _close_logs(grid(flow.log_grad_norms), want["log_grad_norms"])
    if name == "lstm":
        _close_logs(grid(flow.log_cell_grad_norms), want["log_cell_grad_norms"])
    _close_logs(flow.log_input_grad_norms, want["log_input_grad_norms"])
    for kind, v in want["log_param_grad_norms"].items():  # (L, D)
        got = np.asarray(flow.log_param_grad_norms[kind], np.float64)
        got = got.reshape(1, 1) if not m.stacked else (got[:, None] if D == 1 else got.T)
        _close_logs(got, v)
    scale = np.max(np.abs(want["grads"]))
    np.testing.assert_allclose(grid(flow.grads), want["grads"], rtol=0, atol=TENSOR_TOL * scale)
    np.testing.assert_allclose(grid(flow.states), want["states"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        flow.output, want["output"][-1] if m.stacked else want["h_n"][0], atol=1e-12
    )


@pytest.mark.parametrize("name,cls,kw", CELLS[2:], ids=[c[0] for c in CELLS[2:]])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_stacked_sequence_cotangent_batch_first_no_bias(name, cls, kw, bidirectional) -> None:
    rng = np.random.default_rng(7)
    m = _model(cls, kw, 2, bidirectional, bias=False, batch_first=True)
    D, T, B = m.num_directions, 5, 3
    x = rng.standard_normal((T, B, 3))
    cot = rng.standard_normal((T, B, D * 5))
    want = torch_stacked_flow(m, x, cotangent=cot)
    flow = vgcore.gradient_flow(
        m, x.swapaxes(0, 1), cotangent=cot.swapaxes(0, 1), param_grads=True, keep_grads=True
    )
    _close_logs(_grid(flow.log_grad_norms, m), want["log_grad_norms"])
    _close_logs(flow.log_input_grad_norms, want["log_input_grad_norms"])
    assert set(flow.log_param_grad_norms) == {"weight_ih", "weight_hh"}
    grads = _grid(flow.grads, m).swapaxes(-3, -2)  # batch_first kept tensors: (..., B, T+1, N)
    scale = np.max(np.abs(want["grads"]))
    np.testing.assert_allclose(grads, want["grads"], rtol=0, atol=TENSOR_TOL * scale)
    # a (B, D*N) cotangent puts the loss on output[T-1]
    last = rng.standard_normal((B, D * 5))
    want = torch_stacked_flow(m, x, cotangent=last)
    flow = vgcore.gradient_flow(m, x.swapaxes(0, 1), cotangent=last)
    _close_logs(_grid(flow.log_grad_norms, m), want["log_grad_norms"])


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_stacked_float32_is_honest(bidirectional) -> None:
    m = vgcore.LSTM.from_sizes(3, 6, num_layers=2, bidirectional=bidirectional, seed=1)
    x = np.random.default_rng(2).standard_normal((8, 4, 3))
    f64 = vgcore.gradient_flow(m, x, param_grads=True)
    f32 = vgcore.gradient_flow(m.astype(np.float32), x.astype(np.float32), param_grads=True)
    finite = np.isfinite(f64.log_grad_norms)
    np.testing.assert_allclose(f32.log_grad_norms[finite], f64.log_grad_norms[finite], atol=1e-4)
    np.testing.assert_allclose(f32.log_input_grad_norms, f64.log_input_grad_norms, atol=1e-4)


def test_stacked_norms_far_below_float_range_reach_the_bottom_layer() -> None:
    """A stack whose top layer passes almost nothing down: the lower layers' gradients are far
    below float32's range (and float64's for the deep case), still measured in log space."""
    m = vgcore.RNN.from_sizes(4, 6, num_layers=3, seed=0)
    params = m.layer_params()
    for w_ih, _, _, _ in params[1:]:
        w_ih *= 1e-30  # each layer boundary divides the gradient by about 1e30
    x = np.random.default_rng(0).standard_normal((5, 3, 4))
    f64 = vgcore.gradient_flow(m, x)
    f32 = vgcore.gradient_flow(m.astype(np.float32), x.astype(np.float32))
    # the exact log norms drop by about 69 (1e-30) per layer boundary
    drop = f64.log_grad_norms[1, -2] - f64.log_grad_norms[0, -2]
    assert 60 < drop < 80
    assert np.all(np.isfinite(f32.log_grad_norms[:, :-1]))
    assert np.max(f32.log_grad_norms[0]) < np.log(1e-45)  # below float32's subnormals
    np.testing.assert_allclose(f32.log_grad_norms[:, :-1], f64.log_grad_norms[:, :-1], atol=1e-3)
    np.testing.assert_allclose(f32.log_input_grad_norms, f64.log_input_grad_norms, atol=1e-3)


def test_stacked_results_views_and_summaries() -> None:
    m = vgcore.GRU.from_sizes(3, 4, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(1).standard_normal((7, 2, 3))
    flow = vgcore.gradient_flow(m, x, param_grads=True)
    assert flow.log_grad_norms.shape == (2, 2, 8)
    assert flow.act_mean.shape == (2, 2, 7) and flow.gate_saturation.shape == (2, 2, 7, 3)
    assert flow.log_param_grad_norms["weight_hh"].shape == (2, 2)
    top = flow.layer(-1)
    assert top.model.input_size == 8 and top.log_grad_norms.shape == (8,)
    np.testing.assert_array_equal(top.log_grad_norms, flow.log_grad_norms[0, 1])
    assert flow.log_gain == pytest.approx(top.log_gain)
    rev = flow.layer(0, 1)
    np.testing.assert_array_equal(rev.log_grad_norms, flow.log_grad_norms[1, 0])
    df = flow.to_pandas()
    assert df.index.names == ["layer", "direction", "step"] and len(df) == 4 * 8
    text = repr(flow)
    assert "layer 1 reverse" in text and "dL/dx_t" in text
    with pytest.raises(IndexError, match="direction"):
        flow.layer(0, 2)


def test_stacked_bad_inputs_are_named() -> None:
    m = vgcore.LSTM.from_sizes(3, 4, num_layers=2, seed=0)
    x = np.zeros((5, 2, 3))
    with pytest.raises(ValueError, match=r"h0\[0\].*\(2, 2, 4\)"):
        vgcore.gradient_flow(m, x, h0=(np.zeros((2, 4)), np.zeros((2, 4))))
    with pytest.raises(TypeError, match="pair"):
        vgcore.gradient_flow(m, x, h0=np.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match="single-layer"):
        vgcore.gradient_flow(m, x, cotangent=(np.zeros((2, 4)), np.zeros((2, 4))))
    with pytest.raises(ValueError, match=r"cotangent.*\(2, 4\)"):
        vgcore.gradient_flow(m, x, cotangent=np.zeros((2, 8)))
    with pytest.raises(ValueError, match="dead_units"):
        vgcore.gradient_flow(m, x, dead_units=True)

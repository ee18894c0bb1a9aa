"""Gradient norms far below (and above) floating-point range are still measured, in logs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import vgcore
from vgcore import MLP


def numpy_log_norms(model: MLP, x: np.ndarray) -> np.ndarray:
    """Independent oracle: float64 numpy backward pass that renormalises every layer and
    accumulates the log of the norms it divides out."""
    hs, ds = [x], []
    for W, b in zip(model.weights, model.biases):
        z = hs[-1] @ W.T + b
        s = 1 / (1 + np.exp(-z))
        hs.append(s)
        ds.append(s * (1 - s))
    g = hs[-1].copy()
    log_scale = 0.0
    out = [math.log(np.linalg.norm(g))]
    for W, d in zip(reversed(model.weights), reversed(ds)):
        g = (g * d) @ W
        n = np.linalg.norm(g)
        out.append(log_scale + math.log(n))
        log_scale += math.log(n)
        g /= n
    return np.array(out[::-1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_2000_layer_sigmoid_underflows_but_logs_are_exact(dtype):
    model = MLP.from_sizes([32] * 2001, "sigmoid", seed=0, dtype=dtype)
    x = np.random.default_rng(0).normal(size=(8, 32)).astype(dtype)
    flow = vgcore.gradient_flow(model, x)
    assert np.all(np.isfinite(flow.log_grad_norms))
    assert flow.log_grad_norms[0] < math.log(1e-308) * 3  # far below float64 range
    assert flow.grad_norms[0] == 0.0  # the plain norm underflows, the log does not
    ref = numpy_log_norms(model.astype(np.float64), x.astype(np.float64))
    # Per-layer sums of log gains agree; float32 accumulates rounding over 2000 layers.
    tol = 1e-9 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(flow.log_grad_norms, ref, rtol=tol, atol=tol)


def test_exploding_gradients_stay_finite_in_logs():
    rng = np.random.default_rng(1)
    L, n = 400, 16
    ws = [np.eye(n) * 8.0 for _ in range(L)]  # gain 8 per layer: 8^400 = 1e361
    model = MLP(ws, None, "identity")
    x = rng.normal(size=(2, n)) * 1e-300
    flow = vgcore.gradient_flow(model, x, cotangent=np.ones((2, n)))
    expected = math.log(math.sqrt(2 * n)) + L * math.log(8.0)
    assert flow.log_grad_norms[0] == pytest.approx(expected, rel=1e-12)
    assert math.isinf(flow.grad_norms[0])


def test_float32_recurrent_norms_below_float32_range_match_float64():
    model = vgcore.LSTM.from_sizes(8, 32, seed=0, dtype=np.float32)
    x = np.random.default_rng(2).normal(size=(1500, 4, 8)).astype(np.float32)
    f32 = vgcore.gradient_flow(model, x)
    f64 = vgcore.gradient_flow(model, x, dtype=np.float64)
    assert f64.log_grad_norms[0] < math.log(1e-60)  # far below float32's 1e-38
    np.testing.assert_allclose(f32.log_grad_norms, f64.log_grad_norms, rtol=1e-4)


def test_rescale_off_is_the_plain_product_that_underflows():
    """rescale=False computes what a framework does: the same curve while it is in range,
    exact zeros (log -inf) once float32 underflows; rescale=True covers all of it."""
    model = vgcore.RNN.from_sizes(8, 32, seed=0, dtype=np.float32)  # contracting
    x = np.random.default_rng(3).normal(size=(800, 4, 8)).astype(np.float32)
    scaled = vgcore.gradient_flow(model, x).log_grad_norms
    plain = vgcore.gradient_flow(model, x, rescale=False).log_grad_norms
    assert np.all(np.isfinite(scaled)) and scaled[0] < math.log(1e-60)
    assert np.isneginf(plain[0]) and np.isfinite(plain[-1])
    # Until the first rescaling (a norm of 2^-40) both are the same computation, bit for bit.
    inrange = scaled > -40 * math.log(2.0)
    assert inrange.sum() > 20
    np.testing.assert_array_equal(plain[inrange], scaled[inrange])
    # Beyond it, down to where denormals set in, the plain product still agrees closely.
    normal = np.isfinite(plain) & (plain > math.log(1e-30))
    np.testing.assert_allclose(plain[normal], scaled[normal], rtol=1e-4)


def test_rescale_off_changes_nothing_in_range():
    model = MLP.from_sizes([16] * 11, "tanh", seed=1, init="orthogonal", dtype=np.float32)
    x = np.random.default_rng(4).normal(size=(8, 16)).astype(np.float32)
    a = vgcore.gradient_flow(model, x).log_grad_norms
    b = vgcore.gradient_flow(model, x, rescale=False).log_grad_norms
    np.testing.assert_array_equal(a, b)


def test_rescale_must_be_a_bool():
    model = MLP.from_sizes([4, 4], "tanh", seed=0)
    with pytest.raises(TypeError, match="rescale"):
        vgcore.gradient_flow(model, np.ones((2, 4)), rescale="no")

"""Bad input gets a clear exception naming the argument, expected and received values."""

from __future__ import annotations

import numpy as np
import pytest

import vgcore
from vgcore import GRU, LSTM, MLP, RNN


@pytest.fixture
def mlp():
    rng = np.random.default_rng(0)
    return MLP([rng.normal(size=(4, 3)), rng.normal(size=(2, 4))], [None, None], "tanh")


@pytest.fixture
def lstm():
    rng = np.random.default_rng(0)
    return LSTM(rng.normal(size=(12, 2)), rng.normal(size=(12, 3)))


def test_mlp_wrong_input_shape(mlp):
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 3\), got \(5, 4\)"):
        vgcore.gradient_flow(mlp, np.zeros((5, 4)))
    with pytest.raises(ValueError, match="x must have 2 dimensions, got 3"):
        vgcore.gradient_flow(mlp, np.zeros((1, 5, 3)))
    with pytest.raises(ValueError, match=r"cotangent must have shape \(5, 2\), got \(5, 3\)"):
        vgcore.gradient_flow(mlp, np.zeros((5, 3)), cotangent=np.zeros((5, 3)))


def test_nan_inf_inputs_and_weights(mlp):
    x = np.zeros((2, 3))
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"x contains NaN \(first at index \(1, 2\)\)"):
        vgcore.gradient_flow(mlp, x)
    x[1, 2] = np.inf
    with pytest.raises(ValueError, match="x contains Inf"):
        vgcore.gradient_flow(mlp, x)
    w = np.ones((4, 3))
    w[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"weights\[0\] contains Inf"):
        MLP([w])


def test_dtype_errors(mlp):
    with pytest.raises(TypeError, match="x must be a real numeric array, got dtype complex128"):
        vgcore.gradient_flow(mlp, np.zeros((2, 3), dtype=complex))
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int64"):
        vgcore.gradient_flow(mlp, np.zeros((2, 3)), dtype=np.int64)
    with pytest.raises(TypeError, match="x must be an array, got None"):
        vgcore.gradient_flow(mlp, None)


def test_integer_and_noncontiguous_inputs_are_converted(mlp):
    xi = np.arange(6).reshape(2, 3)
    xf = xi.astype(np.float64)
    a = vgcore.gradient_flow(mlp, xi)
    b = vgcore.gradient_flow(mlp, xf)
    np.testing.assert_array_equal(a.log_grad_norms, b.log_grad_norms)
    big = np.asfortranarray(np.random.default_rng(0).normal(size=(3, 6)))[:, ::2]
    c = vgcore.gradient_flow(mlp, big)
    d = vgcore.gradient_flow(mlp, np.ascontiguousarray(big))
    np.testing.assert_array_equal(c.log_grad_norms, d.log_grad_norms)


def test_empty_inputs(mlp, lstm):
    with pytest.raises(ValueError, match="x must not be empty"):
        vgcore.gradient_flow(mlp, np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"x is an empty sequence \(T = 0"):
        vgcore.gradient_flow(lstm, np.zeros((0, 2, 2)))
    with pytest.raises(ValueError, match="x must not be empty"):
        vgcore.gradient_flow(lstm, np.zeros((3, 0, 2)))


def test_recurrent_shape_errors(lstm):
    x = np.zeros((4, 2, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(\*, \*, 2\), got \(4, 2, 5\)"):
        vgcore.gradient_flow(lstm, np.zeros((4, 2, 5)))
    with pytest.raises(TypeError, match=r"pair \(h0, c0\)"):
        vgcore.gradient_flow(lstm, x, h0=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"h0\[1\] \(c0\) must have shape \(2, 3\), got \(2, 4\)"):
        vgcore.gradient_flow(lstm, x, h0=(np.zeros((2, 3)), np.zeros((2, 4))))
    with pytest.raises(ValueError, match=r"cotangent must have shape \(4, 2, 3\)"):
        vgcore.gradient_flow(lstm, x, cotangent=np.zeros((5, 2, 3)))


def test_model_construction_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"weight_hh must have shape \(4\*N, N\) = \(12, 3\)"):
        LSTM(rng.normal(size=(12, 2)), rng.normal(size=(9, 3)))
    with pytest.raises(ValueError, match=r"weight_ih must have shape \(9, \*\), got \(12, 2\)"):
        GRU(rng.normal(size=(12, 2)), rng.normal(size=(9, 3)))
    with pytest.raises(ValueError, match=r"weights\[1\] must have shape \(\*, 4\)"):
        MLP([rng.normal(size=(4, 3)), rng.normal(size=(2, 5))])
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        RNN(rng.normal(size=(3, 2)), rng.normal(size=(3, 3)), nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="biases must have 2 entries"):
        MLP([rng.normal(size=(4, 3)), rng.normal(size=(2, 4))], [None])


def test_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'swishy'; expected one of: identity"):
        vgcore.Activation("swishy")
    with pytest.raises(ValueError, match="has no parameter"):
        vgcore.Activation("tanh", alpha=2.0)
    with pytest.raises(ValueError, match="unknown activation"):
        MLP([np.ones((2, 2))], None, "foo")


def test_too_large_for_memory(lstm):
    # Views of a tiny array pretend to be a huge input: the memory check fires before any
    # allocation.
    x = np.broadcast_to(np.zeros((1, 1, 2)), (10**7, 10**4, 2))
    with pytest.raises(vgcore.InsufficientMemoryError, match="GiB"):
        vgcore.gradient_flow(lstm, x)


def test_bad_options(mlp):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="num_threads must be a positive integer"):
        vgcore.gradient_flow(mlp, x, num_threads=0)
    with pytest.raises(ValueError, match="saturation_threshold must be in"):
        vgcore.gradient_flow(mlp, x, saturation_threshold=-1)
    with pytest.raises(TypeError, match="progress must be callable"):
        vgcore.gradient_flow(mlp, x, progress=3)
    with pytest.raises(TypeError, match="model must be a vgcore"):
        vgcore.gradient_flow("net", x)
    with pytest.raises(ValueError, match="h0 is only meaningful for recurrent"):
        vgcore.gradient_flow(mlp, x, h0=np.zeros((2, 3)))


def test_forward_overflow_is_reported():
    m = MLP([np.full((2, 2), 1e200), np.full((2, 2), 1e200)], None, "identity")
    with pytest.raises(FloatingPointError, match="layer 2"):
        vgcore.gradient_flow(m, np.ones((1, 2)))

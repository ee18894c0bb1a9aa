"""Each fix shows its documented effect on a canonical case, measured with vgcore.

"Gain" below is ||dL/dh_0|| / ||dL/dh_L||: below ~1e-10 the first layers receive no signal.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import vgcore
from vgcore import GRU, LSTM, MLP, RNN

DEPTH, WIDTH, BATCH = 50, 128, 32


def gain(flow) -> float:
    return math.exp(flow.log_grad_norms[0] - flow.log_grad_norms[-1])


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(BATCH, WIDTH))


def mlp_gain(x, activation, **kw) -> float:
    model = MLP.from_sizes([WIDTH] * (DEPTH + 1), activation, seed=0, **kw)
    return gain(vgcore.gradient_flow(model, x))


def test_standard_sigmoid_vanishes(x):
    assert mlp_gain(x, "sigmoid") < 1e-10


def test_relu_family_with_he_init_keeps_the_gradient(x):
    for act in ("relu", "leaky_relu"):
        assert 1e-2 < mlp_gain(x, act, init="kaiming_normal") < 1e2, act


def test_xavier_for_tanh_beats_default(x):
    assert mlp_gain(x, "tanh", init="xavier_normal") > 1e3 * mlp_gain(x, "tanh")


def test_orthogonal_linear_network_is_an_isometry(x):
    model = MLP.from_sizes([WIDTH] * (DEPTH + 1), "identity", init="orthogonal", bias=False, seed=1)
    flow = vgcore.gradient_flow(model, x)
    np.testing.assert_allclose(flow.grad_norms, flow.grad_norms[-1], rtol=1e-10)


def test_residual_and_highway_blocks_restore_flow(x):
    assert mlp_gain(x, "sigmoid", residual=0.1) > 1e-2
    assert mlp_gain(x, "sigmoid", highway=True, highway_bias=-2.0) > 1e-4


def test_normalisation_restores_flow(x):
    plain = mlp_gain(x, "tanh")
    assert mlp_gain(x, "tanh", norm="layernorm") > 1e3 * plain
    assert mlp_gain(x, "tanh", norm="batchnorm") > 1e3 * plain


def test_negative_mean_init_for_sigmoid(x):
    assert mlp_gain(x, "sigmoid", init="negative_mean") > 1e6 * mlp_gain(x, "sigmoid")


def test_critical_gaussian_init_sits_between_phases(x):
    # tanh with sigma_b2 = 0: chi_1 = sigma_w2 * E[phi'^2] = 1 at sigma_w2 = 1 (edge of chaos).
    ordered = mlp_gain(x, "tanh", init={"name": "gaussian", "sigma_w2": 0.5, "sigma_b2": 0.0})
    critical = mlp_gain(x, "tanh", init={"name": "gaussian", "sigma_w2": 1.0, "sigma_b2": 0.0})
    chaotic = mlp_gain(x, "tanh", init={"name": "gaussian", "sigma_w2": 4.0, "sigma_b2": 0.0})
    assert ordered < 1e-5 and chaotic > 1e2 and 1e-3 < critical < 1e2


def test_gating_and_forget_bias_carry_gradients_over_long_lags():
    T, N = 300, 64
    xs = np.random.default_rng(1).normal(size=(T, 8, 16))
    rnn = gain(vgcore.gradient_flow(RNN.from_sizes(16, N, seed=0), xs))
    lstm = gain(vgcore.gradient_flow(LSTM.from_sizes(16, N, seed=0), xs))
    lstm_fb = gain(
        vgcore.gradient_flow(
            LSTM.from_sizes(16, N, seed=0, init={"name": "default", "forget_bias": 3.0}), xs
        )
    )
    gru = gain(vgcore.gradient_flow(GRU.from_sizes(16, N, seed=0), xs))
    assert rnn < 1e-30
    assert lstm_fb > 1e10 * lstm
    assert gru > 1e10 * rnn


def test_identity_init_relu_rnn_keeps_the_gradient():
    T, N = 200, 64
    xs = np.random.default_rng(2).normal(size=(T, 4, 8)) * 0.1
    irnn = RNN.from_sizes(
        8, N, nonlinearity="relu", init={"name": "identity", "bias": "zeros"}, seed=0
    )
    assert gain(vgcore.gradient_flow(irnn, xs)) > 1e-2


def test_clipping_bounds_exploding_parameter_gradients():
    T, N = 60, 32
    xs = np.random.default_rng(3).normal(size=(T, 4, 8))
    model = RNN.from_sizes(8, N, init={"name": "gaussian", "sigma_w2": 9.0}, seed=0)
    flow = vgcore.gradient_flow(model, xs, clip_norm=1.0)
    total = math.sqrt(sum(v**2 for v in flow.clipped_param_grad_norms.values()))
    assert flow.clip["clipped"] and flow.clip["total_norm"] > 10
    assert total == pytest.approx(1.0, rel=1e-5)

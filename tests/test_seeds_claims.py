"""The direction of each remedy the seeds name, measured at small sizes (docs/seeds.md has the
full-size numbers from examples/seeds_compare.py).

Each test compares two measured quantities of vgcore's analyses, so it fails if the remedy
stops showing (or if the analyses stop seeing it): gradient norms through time and depth
(vgcore.gradient_flow), top Lyapunov exponents (vgcore.lyapunov), Jacobian singular values
(vgcore.jacobian_singular_values).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import vgcore

LN10 = math.log(10.0)


def _total(flow) -> np.ndarray:
    a = np.asarray(flow.log_grad_norms)
    c = flow.log_cell_grad_norms
    return a if c is None else 0.5 * np.logaddexp(2 * a, 2 * np.asarray(c))


def _x(T: int, B: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((T, B, d))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lstm_forget_bias_one_keeps_the_gradient_longer(seed):
    x = _x(200, 4, 4, seed)
    lstm = {
        fb: vgcore.LSTM.from_sizes(4, 16, init={"name": "default", "forget_bias": fb}, seed=seed)
        for fb in (0.0, 1.0)
    }
    kept = {fb: _total(vgcore.gradient_flow(m, x)) for fb, m in lstm.items()}
    lag = 100
    ratio = {fb: (k[200 - lag] - k[200]) / LN10 for fb, k in kept.items()}
    # forget bias 1: f = s(1 + ...) ~ 0.73 per step instead of ~ 0.5: decades more kept
    assert ratio[1.0] > ratio[0.0] + 5.0
    lam = {fb: float(vgcore.lyapunov(m, x, k=1).exponents[:, 0].mean()) for fb, m in lstm.items()}
    assert lam[1.0] > lam[0.0] + 0.1


def test_lti_ssm_near_one_keeps_the_gradient_longer_than_a_tanh_rnn():
    torch = pytest.importorskip("torch")
    from vgcore.reference import DiagonalSSM

    d, T = 4, 200
    x = _x(T, 4, d, 3)
    ssm = DiagonalSSM(d, 8, init="s4d_lin", seed=0, dtype=torch.float64)  # 8 complex modes
    rnn = vgcore.RNN.from_sizes(d, 16, seed=0)  # the same real state size, 16
    a = ssm.transition()
    assert float(a.abs().max()) > 0.99  # |a| near 1 at S4D's initial steps
    k_ssm = _total(vgcore.gradient_flow(ssm.as_cell(), x))
    k_rnn = _total(vgcore.gradient_flow(rnn, x))
    lag = 100
    r_ssm = (k_ssm[T - lag] - k_ssm[T]) / LN10
    r_rnn = (k_rnn[T - lag] - k_rnn[T]) / LN10
    assert r_ssm > -2.0 and r_rnn < -10.0
    # the exponents say why: log|a| close to 0 against a contracting tanh RNN
    lam_ssm = float(torch.log(a.abs()).max())
    lam_rnn = float(vgcore.lyapunov(rnn, x, k=1).exponents[:, 0].mean())
    assert lam_ssm > -0.01 and lam_rnn < -0.1


def test_dbn_pretraining_improves_the_gradient_spread_of_a_deep_sigmoid_mlp():
    """20 sigmoid layers on digits: DBN pre-training trained long enough (here 300 samples,
    10 epochs at lr 0.5: 300 CD-1 updates per layer) against PyTorch's default init.
    (Under-trained RBMs do worse than the default: their weights start at N(0, 0.01^2).)"""
    datasets = pytest.importorskip("sklearn.datasets")
    X = datasets.load_digits().data / 16.0
    sizes = [64] + [32] * 19 + [10]
    dbn = vgcore.MLP.from_sizes(
        sizes, "sigmoid", init={"name": "dbn", "epochs": 10, "lr": 0.5}, data=X[:300], seed=0
    )
    default = vgcore.MLP.from_sizes(sizes, "sigmoid", seed=0)
    xb = X[300:364]

    def spread(m) -> float:
        ln = np.asarray(vgcore.gradient_flow(m, xb).log_grad_norms) / LN10
        return float(ln.max() - ln.min())

    s_dbn, s_def = spread(dbn), spread(default)
    assert s_dbn < 5.0 and s_def > 12.0
    # the input-output Jacobian's top singular value is no longer vanishing
    top = {
        k: float(np.mean(vgcore.jacobian_singular_values(m, xb[:16]).log10_singular_values[:, 0]))
        for k, m in (("dbn", dbn), ("default", default))
    }
    assert top["dbn"] > top["default"] + 8.0

"""jacobian_singular_values: log singular values of the whole input-output Jacobian.

Oracles: the SVD of the product of torch.func.jacrev Jacobians (well-conditioned cases), the
same product in 50-digit mpmath arithmetic (ill-conditioned ones, where a float64 SVD of the
product loses the small values), and closed forms far outside the float64 range.
"""

from __future__ import annotations

import numpy as np
import pytest

import vgcore
from oracles import product_log_singular_values, torch_trajectory_jacobians


@pytest.mark.parametrize(
    "case",
    [
        ("mlp", lambda: vgcore.MLP.from_sizes([5, 5, 5, 5], "tanh", seed=0, init="orthogonal")),
        ("mlp_widths", lambda: vgcore.MLP.from_sizes([6, 8, 4, 5], "silu", seed=1)),
        (
            "mlp_residual_ln",
            lambda: vgcore.MLP.from_sizes([5, 5, 5], "tanh", residual=True, norm="layernorm"),
        ),
        (
            "rnn",
            lambda: vgcore.RNN.from_sizes(3, 6, seed=2, init={"name": "gaussian", "sigma_w2": 1.5}),
        ),
        ("gru", lambda: vgcore.GRU.from_sizes(3, 5, seed=2)),
    ],
    ids=lambda c: c[0],
)
def test_matches_svd_of_jacrev_product(torch, case):
    _, make = case
    model = make()
    rng = np.random.default_rng(0)
    x = (
        rng.standard_normal((2, model.input_size))
        if model.kind == "mlp"
        else rng.standard_normal((4, 2, 3))
    )
    ref, _ = product_log_singular_values(torch, model, x)
    res = vgcore.jacobian_singular_values(model, x)
    r = res.log_singular_values.shape[1]
    if model.kind == "mlp":  # the rank is bounded by the narrowest layer; the rest are 0
        assert r == min(model.sizes)
        assert (ref[:, r:] < ref[:, :1] - 30).all()
        ref = ref[:, :r]
    assert res.log_singular_values.shape == ref.shape
    # Absolute error on logs = relative error on the values.
    np.testing.assert_allclose(res.log_singular_values, ref, rtol=0, atol=1e-10)
    assert (np.diff(res.log_singular_values, axis=1) <= 0).all()


def test_lstm_graded_product_matches_mpmath(torch):
    """An LSTM's (h, c) Jacobian product has singular values spread over 1e-13..1e-1 after a
    few steps; float64 SVD of the product cannot resolve the small ones, 50 digits can."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    m = vgcore.LSTM.from_sizes(3, 6, seed=1)
    x = np.random.default_rng(3).standard_normal((5, 1, 3))
    Js = torch_trajectory_jacobians(torch, m, x)
    M = mpmath.eye(12)
    for J in Js:
        M = mpmath.matrix(J[0].tolist()) * M
    ref = np.sort([float(mpmath.log(v)) for v in mpmath.svd_r(M, compute_uv=False)])[::-1]
    res = vgcore.jacobian_singular_values(m, x)
    assert ref[0] - ref[-1] > 20  # graded: a float64 SVD of the product would lose the tail
    np.testing.assert_allclose(res.log_singular_values[0], ref, rtol=0, atol=1e-9)


def test_diagonal_network_far_below_float64_range():
    """Linear layers W_l = diag(d_l): the singular values are |prod_l d_l|, sorted; with
    depth 10,000 they reach e^-3000 and e^+700, outside float64 but not outside logs."""
    rng = np.random.default_rng(4)
    L, n = 10_000, 4
    logs = np.array([-0.3, -0.1, 0.0, 0.07]) + rng.normal(0, 0.02, (L, n))
    d = np.exp(logs) * rng.choice([-1.0, 1.0], (L, n))
    mlp = vgcore.MLP([np.diag(r) for r in d], None, "identity")
    res = vgcore.jacobian_singular_values(mlp, rng.standard_normal((1, n)))
    expected = np.sort(logs.sum(axis=0))[::-1]
    assert expected[-1] < -2900 and expected[0] > 600
    np.testing.assert_allclose(res.log_singular_values[0], expected, rtol=1e-12, atol=1e-9)
    assert res.singular_values[0, -1] == 0.0  # underflows as a value, exact as a log


def test_orthogonal_linear_network_is_isometric():
    rng = np.random.default_rng(5)
    n, L = 16, 2000
    Ws = [np.linalg.qr(rng.standard_normal((n, n)))[0] for _ in range(L)]
    res = vgcore.jacobian_singular_values(
        vgcore.MLP(Ws, None, "identity"), rng.standard_normal((3, n))
    )
    np.testing.assert_allclose(res.log_singular_values, 0.0, atol=1e-11)
    iso = res.isometry()
    assert abs(iso["mean_squared"] - 1) < 1e-10 and iso["std_squared"] < 1e-10
    assert "JacobianSingularValues(mlp, depth 2000" in repr(res)


def test_isometry_summary_by_hand():
    W = np.diag([2.0, 0.5, 1.0])
    res = vgcore.jacobian_singular_values(vgcore.MLP([W, W], None, "identity"), np.ones((1, 3)))
    s2 = np.array([16.0, 1.0, 1 / 16])
    np.testing.assert_allclose(res.singular_values[0], [4.0, 1.0, 0.25], rtol=1e-14)
    np.testing.assert_allclose(res.mean_squared, [s2.mean()], rtol=1e-13)
    np.testing.assert_allclose(res.std_squared, [s2.std()], rtol=1e-13)
    np.testing.assert_allclose(res.log_condition_number, [np.log(16.0)], rtol=1e-14)


def test_float32_agrees_with_float64():
    m = vgcore.GRU.from_sizes(3, 8, seed=0)
    x = np.random.default_rng(0).standard_normal((30, 2, 3))
    r64 = vgcore.jacobian_singular_values(m, x)
    r32 = vgcore.jacobian_singular_values(m, x, dtype=np.float32)
    assert r32.log_singular_values.dtype == np.float64  # logs always in float64
    # Per-step rounding of 1e-7 over 30 steps, relative to each singular value.
    np.testing.assert_allclose(r32.log_singular_values, r64.log_singular_values, atol=1e-4)


def test_recurrent_h0_and_long_sequence(torch):
    m = vgcore.LSTM.from_sizes(2, 3, seed=4)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2, 2))
    h0 = (rng.standard_normal((2, 3)), rng.standard_normal((2, 3)))
    ref, _ = product_log_singular_values(torch, m, x, np.concatenate(h0, axis=1))
    res = vgcore.jacobian_singular_values(m, x, h0=h0)
    np.testing.assert_allclose(res.log_singular_values, ref, atol=1e-9)
    long = vgcore.jacobian_singular_values(m, rng.standard_normal((5000, 2, 2)))
    assert np.isfinite(long.log_singular_values).all()
    assert long.log_singular_values.max() < -100  # an LSTM forgets: far below float range


def test_bad_input():
    rnn = vgcore.RNN.from_sizes(2, 4)
    with pytest.raises(ValueError, match="empty sequence"):
        vgcore.jacobian_singular_values(rnn, np.zeros((0, 1, 2)))
    with pytest.raises(ValueError, match="BatchNorm"):
        vgcore.jacobian_singular_values(
            vgcore.MLP.from_sizes([3, 3], norm="batchnorm"), np.zeros((2, 3))
        )
    x = np.zeros((4, 1, 2))
    x[2, 0, 0] = np.inf
    with pytest.raises(ValueError, match="Inf"):
        vgcore.jacobian_singular_values(rnn, x)


_RSS_SCRIPT = r"""
import resource, sys
import numpy as np
import vgcore
T = int(sys.argv[1])
m = vgcore.RNN.from_sizes(4, 64, seed=0)
x = np.random.default_rng(0).standard_normal((T, 1, 4))
vgcore.jacobian_singular_values(m, x[:10])  # load everything, warm the workspace
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
vgcore.jacobian_singular_values(m, x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_memory_does_not_grow_with_the_sequence_length():
    """Input projections are computed block by block: at T = 30,000 (N = 64, float64) one
    projection of the whole sequence would take 15 MB, a block at most 2 MB."""
    import subprocess
    import sys

    def growth_kb(T):
        out = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(T)], capture_output=True, text=True, check=True
        )
        return int(out.stdout.split()[-1])

    small, large = growth_kb(2_000), growth_kb(30_000)
    assert large - small < 6_000, (small, large)


@pytest.mark.parametrize("kind", ["mlp", "gru"])
def test_helper_thread_gives_the_same_numbers(kind):
    """One sample on two threads moves the triangular-factor updates to a helper thread: the
    arithmetic is the same, so the logs are identical to the single-threaded ones."""
    rng = np.random.default_rng(3)
    if kind == "mlp":
        m = vgcore.MLP.from_sizes([48] * 41, "tanh", init="orthogonal", seed=1)
        x = rng.standard_normal((1, 48))
    else:
        m = vgcore.GRU.from_sizes(3, 24, seed=2)
        x = rng.standard_normal((300, 1, 3))
    one = vgcore.jacobian_singular_values(m, x, num_threads=1).log_singular_values
    for _ in range(3):
        two = vgcore.jacobian_singular_values(m, x, num_threads=2).log_singular_values
        np.testing.assert_array_equal(two, one)

"""lyapunov: top-k Lyapunov exponents by the QR method.

Oracles: an independent QR iteration in numpy on torch.func.jacrev Jacobians along each
trajectory (same initial tangent vectors), linear maps (exponents = log|eigenvalues|), and
exact identities of the method (QR every step vs every few steps, streamed vs whole input).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import vgcore
from oracles import qr_lyapunov
from vgcore.analysis.lyapunov import LyapunovSpectrum


def _cases():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((25, 2, 3))
    yield (
        "rnn_chaotic",
        vgcore.RNN.from_sizes(3, 6, seed=1, init={"name": "gaussian", "sigma_w2": 3.0}),
        x,
        6,
    )
    # ReLU units switch off (rank-deficient J): only the top exponents are well defined.
    yield "rnn_relu", vgcore.RNN.from_sizes(3, 6, nonlinearity="relu", seed=1), x, 2
    yield "lstm", vgcore.LSTM.from_sizes(3, 4, seed=1), x, 8
    yield "gru", vgcore.GRU.from_sizes(3, 5, seed=1), x, 3
    mlp = vgcore.MLP.from_sizes(
        [5] * 21, "tanh", seed=2, init={"name": "gaussian", "sigma_w2": 1.7}
    )
    yield "mlp", mlp, rng.standard_normal((2, 5)), 5
    yield (
        "mlp_highway",
        vgcore.MLP.from_sizes([5] * 8, "relu", seed=3, highway=True),
        rng.standard_normal((2, 5)),
        2,
    )


CASES = list(_cases())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_numpy_qr_on_jacrev(torch, case):
    _, model, x, k = case
    res = vgcore.lyapunov(model, x, k=k)
    ref = qr_lyapunov(torch, model, x, k)
    assert res.exponents.shape == (x.shape[-2], k)
    np.testing.assert_allclose(res.exponents, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("qr_every", [3, 7])
def test_qr_every_and_burn_in_match_the_oracle(torch, qr_every):
    _, model, x, _ = CASES[2]  # LSTM
    # k = 4: the 5th exponent is 3 per step below the 1st, so 7 steps without QR leave it
    # ~e^-21 of the block and both computations only resolve it to ~1e-6.
    res = vgcore.lyapunov(model, x, k=4, qr_every=qr_every, burn_in=qr_every * 2)
    ref = qr_lyapunov(torch, model, x, 4, qr_every=qr_every, burn_in=qr_every * 2)
    np.testing.assert_allclose(res.exponents, ref, rtol=0, atol=1e-12)
    assert res.accumulated_steps == 25 - qr_every * 2 and res.steps == 25


def test_qr_every_does_not_change_complete_blocks():
    """|diag R| of a product of triangular factors is the product of their |diag|: QR every
    step or every 5 steps gives the same logs when the length is a multiple of 5."""
    model = vgcore.GRU.from_sizes(2, 6, seed=4)
    x = np.random.default_rng(1).standard_normal((40, 3, 2))
    a = vgcore.lyapunov(model, x, qr_every=1)
    b = vgcore.lyapunov(model, x, qr_every=5)
    np.testing.assert_allclose(a.exponents, b.exponents, rtol=0, atol=1e-12)


def test_linear_map_exponents_are_log_abs_eigenvalues():
    """h -> W h for 3000 layers: exponents -> log|eig(W)| (a complex pair gives two equal
    exponents); the finite-time error decays like 1/L."""
    rng = np.random.default_rng(2)
    n = 6
    S = rng.standard_normal((n, n))
    D = np.diag([0.97, 0.5, -0.8, 0.2, 0.0, 0.0])
    D[4:, 4:] = 0.9 * np.array([[np.cos(1), -np.sin(1)], [np.sin(1), np.cos(1)]])
    W = S @ D @ np.linalg.inv(S)
    L = 3000
    res = vgcore.lyapunov(vgcore.MLP([W] * L, None, "identity"), rng.standard_normal((2, n)))
    expected = np.sort(np.log(np.abs(np.linalg.eigvals(W))))[::-1]
    np.testing.assert_allclose(res.exponents, np.tile(expected, (2, 1)), atol=3e-3)
    # Diagonal by hand: the growth is exactly log|d| per layer once aligned; burn-in aligns.
    d = np.array([2.0, -0.5, 0.25])
    res = vgcore.lyapunov(
        vgcore.MLP([np.diag(d)] * 200, None, "identity"), np.ones((1, 3)), burn_in=100
    )
    np.testing.assert_allclose(res.exponents[0], np.log([2.0, 0.5, 0.25]), atol=1e-12)


def test_orthogonal_linear_network_has_zero_exponents():
    rng = np.random.default_rng(3)
    Ws = [np.linalg.qr(rng.standard_normal((8, 8)))[0] for _ in range(300)]
    res = vgcore.lyapunov(vgcore.MLP(Ws, None, "identity"), rng.standard_normal((2, 8)))
    np.testing.assert_allclose(res.exponents, 0.0, atol=1e-13)


def test_running_estimates_and_block_rates():
    model = vgcore.LSTM.from_sizes(2, 3, seed=0)
    x = np.random.default_rng(0).standard_normal((60, 2, 2))
    res = vgcore.lyapunov(model, x, k=4)
    assert res.running.shape == (60, 2, 4) and res.block_rates.shape == (60, 2, 4)
    np.testing.assert_array_equal(res.record_steps, np.arange(1, 61))
    # The last running estimate is the result (running keeps Gram-Schmidt order).
    np.testing.assert_allclose(np.sort(res.running[-1], axis=1)[:, ::-1], res.exponents, atol=1e-15)
    np.testing.assert_allclose(
        np.sort(res.block_rates.mean(axis=0), axis=1)[:, ::-1], res.exponents, atol=1e-13
    )
    # Each running estimate is the mean of the block rates so far.
    cum = np.cumsum(res.block_rates, axis=0) / np.arange(1, 61)[:, None, None]
    np.testing.assert_allclose(res.running, cum, atol=1e-13)
    # A cap on the records keeps them evenly spaced over the sequence.
    capped = vgcore.lyapunov(model, x, k=4, max_records=8)
    assert 4 <= len(capped.record_steps) <= 8
    steps = np.diff(capped.record_steps)
    assert (steps == steps[0]).all() and capped.record_steps[-1] <= 60
    np.testing.assert_allclose(capped.exponents, res.exponents, atol=1e-15)
    idx = capped.record_steps - 1
    np.testing.assert_allclose(capped.running, res.running[idx], atol=1e-15)


def test_streamed_chunks_equal_the_whole_sequence():
    model = vgcore.GRU.from_sizes(3, 8, seed=5)
    x = np.random.default_rng(4).standard_normal((101, 2, 3))
    whole = vgcore.lyapunov(model, x, k=4)
    calls = []
    streamed = vgcore.lyapunov(
        model,
        (x[i : i + 17] for i in range(0, 101, 17)),
        k=4,
        progress=lambda d, t: calls.append((d, t)),
    )
    np.testing.assert_array_equal(streamed.exponents, whole.exponents)
    np.testing.assert_array_equal(streamed.final_state, whole.final_state)
    # A generator's length is unknown (total 0) until it ends.
    assert streamed.steps == 101 and calls[-1] == (101, 101)
    assert all(t == 0 for _, t in calls[:-1])


def test_defaults_and_result_helpers():
    model = vgcore.LSTM.from_sizes(2, 3, seed=0)
    x = np.random.default_rng(0).standard_normal((20, 2, 2))
    res = vgcore.lyapunov(model, x, h0=(np.ones((2, 3)) * 0.1, np.zeros((2, 3))))
    assert res.k == res.state_dim == 6 and res.exponents.shape == (2, 6)
    assert (np.diff(res.exponents, axis=1) <= 0).all()
    np.testing.assert_array_equal(res.max_exponent, res.exponents[:, 0])
    np.testing.assert_allclose(res.mean_exponents, res.exponents.mean(axis=0))
    assert res.final_state.shape == (2, 6)
    assert len(res.to_pandas()) == 20 * 2 * 6
    assert "LyapunovSpectrum(lstm, top 6 of D=6" in repr(res)


def test_kaplan_yorke_dimension_by_hand():
    r = vgcore.lyapunov(vgcore.GRU.from_sizes(1, 3), np.zeros((2, 3, 1)))
    r.exponents = np.array([[0.5, -0.2, -1.0], [-0.1, -0.2, -0.3], [0.3, 0.2, 0.1]])
    np.testing.assert_allclose(r.kaplan_yorke_dimension(), [2.3, 0.0, 3.0])


def test_float32_matches_float64_on_a_contracting_lstm():
    model = vgcore.LSTM.from_sizes(4, 16, seed=0)
    x = np.random.default_rng(1).standard_normal((500, 2, 4))
    r64 = vgcore.lyapunov(model, x, k=8)
    r32 = vgcore.lyapunov(model, x, k=8, dtype=np.float32)
    assert r32.dtype == np.float32 and r32.exponents.dtype == np.float64
    np.testing.assert_allclose(r32.exponents, r64.exponents, rtol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"k": 7}, ValueError, "exceeds the state dimension 6"),
        ({"k": 0}, ValueError, "k"),
        ({"qr_every": 0}, ValueError, "qr_every"),
        ({"burn_in": -1}, ValueError, "burn_in must be >= 0"),
        ({"burn_in": 10}, ValueError, "burn_in = 10 leaves no steps"),
        ({"burn_in": 1.5}, TypeError, "burn_in must be an integer"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    model = vgcore.GRU.from_sizes(2, 6)
    with pytest.raises(exc, match=match):
        vgcore.lyapunov(model, np.zeros((10, 1, 2)), **kwargs)


def test_bad_inputs():
    gru = vgcore.GRU.from_sizes(2, 4)
    with pytest.raises(ValueError, match="empty sequence"):
        vgcore.lyapunov(gru, np.zeros((0, 1, 2)))
    with pytest.raises(ValueError, match="empty sequence"):
        vgcore.lyapunov(gru, iter([]))
    x = np.zeros((5, 1, 2))
    x[3, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*\(3, 0, 1\)"):
        vgcore.lyapunov(gru, x)
    with pytest.raises(ValueError, match="batch size 2, but earlier chunks had 1"):
        vgcore.lyapunov(gru, [np.zeros((3, 1, 2)), np.zeros((3, 2, 2))])
    with pytest.raises(ValueError, match=r"equal|width|square"):
        vgcore.lyapunov(vgcore.MLP.from_sizes([4, 5, 4]), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="h0"):
        vgcore.lyapunov(vgcore.MLP.from_sizes([4, 4]), np.zeros((2, 4)), h0=np.zeros((2, 4)))


def test_non_finite_state_names_the_step():
    m = vgcore.RNN.from_sizes(1, 3, nonlinearity="relu", bias=False, dtype=np.float32)
    m.weight_hh = np.full((3, 3), 1e12, np.float32)
    m.weight_ih = np.ones((3, 1), np.float32)
    # h_1 = 1, h_2 = 3e12, h_3 = 9e24, h_4 = 2.7e37, h_5 overflows float32.
    with pytest.raises(FloatingPointError, match="step 5"):
        vgcore.lyapunov(m, np.ones((10, 1, 1), np.float32))


def test_ctrl_c_interrupts_a_long_run(sigint_raises):
    import _thread

    model = vgcore.LSTM.from_sizes(4, 64, seed=0)
    x = np.random.default_rng(0).standard_normal((200_000, 1, 4))  # many seconds of work
    sent: list[float] = []

    def ctrl_c() -> None:
        sent.append(time.perf_counter())
        _thread.interrupt_main()

    # measured from the interrupt, not the call's start: a slow set-up (a sanitized build, a
    # loaded machine) is not what this checks
    timer = threading.Timer(0.3, ctrl_c)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            vgcore.lyapunov(model, x, k=16)
    finally:
        timer.cancel()
    assert time.perf_counter() - sent[0] < 1.5


def test_result_type():
    res = vgcore.lyapunov(vgcore.RNN.from_sizes(1, 2), np.zeros((3, 1, 1)))
    assert isinstance(res, LyapunovSpectrum) and res.axis == "step"


_PATH_SCRIPT = r"""
import sys
import numpy as np
import vgcore
out = []
for cls in (vgcore.RNN, vgcore.LSTM, vgcore.GRU):
    m = cls.from_sizes(3, 20, seed=1)
    x = np.random.default_rng(0).standard_normal((40, 2, 3))
    for th in (1, 2):
        out.append(vgcore.lyapunov(m, x, k=9, num_threads=th).exponents)
        out.append(vgcore.lyapunov(m, x[:, :1], k=9, qr_every=3, num_threads=th).exponents)
np.save(sys.argv[1], np.concatenate([o.ravel() for o in out]))
"""


@pytest.mark.parametrize("kernels", ["off", "generic", "avx2"])
def test_every_kernel_path_gives_the_same_exponents(tmp_path, kernels):
    """The fast path is compiled per instruction set and picked at run time; each one (and the
    general path, 'off') must give the default's exponents (float64, 1e-12 relative)."""
    import os
    import subprocess
    import sys

    def run(env_value):
        env = dict(os.environ)
        env.pop("VGCORE_LYAPUNOV_KERNELS", None)
        if env_value:
            env["VGCORE_LYAPUNOV_KERNELS"] = env_value
        path = tmp_path / f"{env_value or 'default'}.npy"
        subprocess.run([sys.executable, "-c", _PATH_SCRIPT, str(path)], env=env, check=True)
        return np.load(path)

    default, other = run(None), run(kernels)
    np.testing.assert_allclose(other, default, rtol=1e-12, atol=1e-14)

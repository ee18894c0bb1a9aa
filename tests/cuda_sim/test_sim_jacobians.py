"""jacobian_singular_values on the CUDA backend in Numba's simulator against the CPU backend
(the compiled core, itself tested against float64 PyTorch): MLPs through depth (plain and
residual blocks, every CUDA activation, a narrowing layer that drops the rank) and single-layer
RNN / LSTM / GRU through time, both dtypes; graded products far outside float64's range; the
refusals. Tolerances (log singular values: an absolute error in a natural log is the relative
error of the singular value): float64 1e-10 on every value; float32 1e-4 relative to the
largest |log sigma| (an LSTM's smallest values, ~e^-50, carry ~1e-3 of float32 rounding on
either backend: the CPU's own float32 values are that far from float64). Tiny sizes: the
simulator runs one Python thread per CUDA thread.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("numba") is None:  # pragma: no cover - the battery's own session
    pytest.skip("numba is not installed (pip install 'vgcore[cuda]')", allow_module_level=True)

import vgcore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_sim_battery import assert_logs_close, assert_rel

DTYPES = [np.float64, np.float32]


def _mixed_mlp() -> Any:
    """Every CUDA activation, plain and residual blocks, a narrowing layer (rank 8 -> 6)."""
    rng = np.random.default_rng(2)
    sizes = [8, 10, 10, 8, 8, 6, 8]
    ws = [rng.standard_normal((b, a)) / np.sqrt(a) for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [0.1 * rng.standard_normal(w.shape[0]) for w in ws]
    acts = ["tanh", "sigmoid", "identity", "leaky_relu", "tanh", "leaky_relu"]
    blocks = ["plain", "residual", "plain", "residual", "plain", "plain"]
    return vgcore.MLP(ws, bs, acts, block=blocks, alpha=[1.0, 0.5, 1.0, 0.7, 1.0, 1.0])


CASES: list[tuple[str, Callable[[], Any]]] = [
    ("mlp-mixed", _mixed_mlp),
    ("rnn-tanh", lambda: vgcore.RNN.from_sizes(3, 6, seed=3)),
    ("lstm", lambda: vgcore.LSTM.from_sizes(3, 4, seed=4)),
    ("gru", lambda: vgcore.GRU.from_sizes(3, 5, seed=5)),
]


def _inputs(m: Any, dt: Any, T: int = 6, B: int = 2) -> np.ndarray:
    rng = np.random.default_rng(11)
    shape = (B, m.input_size) if m.axis == "depth" else (T, B, m.input_size)
    return rng.standard_normal(shape).astype(dt)


def _compare(cpu: Any, gpu: Any, dt: Any) -> None:
    assert type(gpu) is type(cpu)
    assert (gpu.kind, gpu.depth, gpu.dtype) == (cpu.kind, cpu.depth, cpu.dtype)
    assert gpu.jacobi_sweeps.dtype == cpu.jacobi_sweeps.dtype
    assert gpu.log_singular_values.dtype == cpu.log_singular_values.dtype
    if np.dtype(dt) == np.float64:
        assert_logs_close(gpu.log_singular_values, cpu.log_singular_values, 1e-10, "log sigma")
        np.testing.assert_array_equal(gpu.jacobi_sweeps, cpu.jacobi_sweeps)
    else:
        assert_rel(gpu.log_singular_values, cpu.log_singular_values, 1e-4, "log sigma")


@pytest.mark.parametrize("dt", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "build"), CASES, ids=[n for n, _ in CASES])
def test_singular_values_match_cpu(name: str, build: Any, dt: Any) -> None:
    m = build()
    x = _inputs(m, dt)
    h0: Any = None
    if name in ("lstm", "gru"):  # an initial state (an LSTM's pair); the RNN from zeros
        h0 = 0.5 * np.random.default_rng(3).standard_normal((2, m.hidden_size))
        h0 = (h0, -h0) if name == "lstm" else h0
    cpu = vgcore.jacobian_singular_values(m, x, h0=h0, dtype=dt)
    gpu = vgcore.jacobian_singular_values(m, x, h0=h0, dtype=dt, backend="cuda")
    _compare(cpu, gpu, dt)
    assert cpu.log_singular_values.shape[1] == (6 if name == "mlp-mixed" else m.state_dim)


def test_relu_rank_deficient_products() -> None:
    """Switched-off ReLU units drop the rank: the defined values agree, and the tail below
    rounding (sigma / sigma_max under 1e3 eps) is rounding-level or -inf on both backends."""
    dt = np.float64  # float32's rounding-level tail is too near its defined values here
    floor = float(np.log(1e3 * np.finfo(dt).eps))
    for m in (
        vgcore.MLP.from_sizes([8] * 6, seed=2, activation="relu"),
        vgcore.RNN.from_sizes(3, 6, seed=3, nonlinearity="relu"),
    ):
        x = _inputs(m, dt)
        cpu = vgcore.jacobian_singular_values(m, x, dtype=dt).log_singular_values
        gpu = vgcore.jacobian_singular_values(m, x, dtype=dt, backend="cuda").log_singular_values
        for c, g in zip(cpu, gpu):
            keep = c > c[0] + floor
            assert np.array_equal(keep, g > g[0] + floor), (c, g)
            assert_logs_close(g[keep], c[keep], 1e-10, f"{m.kind} defined values")


def test_graded_products_far_outside_the_range() -> None:
    """A linear stack whose layers scale directions by e^{+-75}: after 10 layers the singular
    values span ~1500 e-folds, the extremes beyond float64 (the scales' logs branch of the
    graded update), each still to relative accuracy."""
    rng = np.random.default_rng(5)
    n, L = 4, 10
    s = np.exp(np.linspace(75.0, -75.0, n))
    ws = [s[:, None] * np.linalg.qr(rng.standard_normal((n, n)))[0] for _ in range(L)]
    m = vgcore.MLP(ws, [None] * L, activations="identity")
    x = np.zeros((1, n))  # the state stays 0: the Jacobians do not depend on it
    cpu = vgcore.jacobian_singular_values(m, x)
    gpu = vgcore.jacobian_singular_values(m, x, backend="cuda")
    ls = cpu.log_singular_values[0]
    assert ls[0] > 709 and ls[-1] < -709 and ls[0] - ls[-1] > 600
    _compare(cpu, gpu, np.float64)


def test_progress_and_non_finite_states() -> None:
    m = vgcore.MLP.from_sizes([8] * 6, seed=2, activation="identity")
    x = _inputs(m, np.float64)
    seen: list[tuple[int, int]] = []
    vgcore.jacobian_singular_values(m, x, backend="cuda", progress=lambda d, t: seen.append((d, t)))
    assert seen == [(s, 5) for s in range(1, 6)]
    big = vgcore.MLP([1e200 * np.eye(8)] * 3, [None] * 3, activations="identity")
    for backend in ("cpu", "cuda"):  # the same error, naming the same step
        with pytest.raises(FloatingPointError, match="the state became NaN/Inf at step 2"):
            vgcore.jacobian_singular_values(big, x, backend=backend)


def test_unsupported_options_are_refused() -> None:
    x2 = np.ones((2, 3))
    ln = vgcore.MLP.from_sizes([3, 4, 4], seed=1, norm="layernorm")
    with pytest.raises(ValueError, match="'layernorm' layer, which has no CUDA kernel"):
        vgcore.jacobian_singular_values(ln, x2, backend="cuda")
    hw = vgcore.MLP.from_sizes([4, 4, 4], seed=1, highway=True)
    with pytest.raises(ValueError, match="'highway' layer, which has no CUDA kernel"):
        vgcore.jacobian_singular_values(hw, np.ones((2, 4)), backend="cuda")
    gelu = vgcore.MLP.from_sizes([3, 4, 4], seed=1, activation="gelu")
    with pytest.raises(ValueError, match="activation 'gelu' has no CUDA kernel"):
        vgcore.jacobian_singular_values(gelu, x2, backend="cuda")
    x = _inputs(vgcore.LSTM.from_sizes(3, 4), np.float64)
    stacked = vgcore.LSTM.from_sizes(3, 4, num_layers=2, seed=1)
    with pytest.raises(ValueError, match="single-layer"):
        vgcore.jacobian_singular_values(stacked, x, backend="cuda")
    bi = vgcore.LSTM.from_sizes(3, 4, bidirectional=True, seed=1)
    with pytest.raises(ValueError, match="bidirectional"):
        vgcore.jacobian_singular_values(bi, x, backend="cuda")
    # "auto" leaves what CUDA lacks on the CPU (and never picks the simulator)
    a = vgcore.jacobian_singular_values(ln, x2, backend="auto")
    np.testing.assert_array_equal(
        a.log_singular_values, vgcore.jacobian_singular_values(ln, x2).log_singular_values
    )
    m = vgcore.LSTM.from_sizes(3, 4, seed=1)
    with pytest.raises(ValueError, match="jacobian_spectrum is not on the cuda backend"):
        vgcore.jacobian_spectrum(m, x, backend="cuda")

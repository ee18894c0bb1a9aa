"""Every CUDA kernel in Numba's simulator against the CPU backend (the compiled core, itself
tested against float64 PyTorch autograd): each model kind with CUDA formulas, several
configurations, both dtypes. Tolerances: 1e-10 in float64, 1e-4 in float32, on every log norm
(an absolute error in a natural log is the relative error of the norm) and on the exponents
relative to the largest. Sizes are tiny: the simulator runs one Python thread per CUDA thread.
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
from vgcore.cuda import backends
from vgcore.cuda.layers import cuda_kinds
from vgcore.models import model_kinds

RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
DTYPES = [np.float64, np.float32]


def test_runs_in_the_simulator() -> None:
    cuda = backends()[1]
    assert cuda.available and cuda.simulator, str(cuda)
    assert cuda.label == "cuda (simulator)"


def assert_logs_close(got: Any, want: Any, tol: float, what: str) -> None:
    """Log norms: the same infinities, finite values within ``tol`` (relative, on the norm)."""
    g = np.asarray(got, np.float64)
    w = np.asarray(want, np.float64)
    assert g.shape == w.shape, f"{what}: shape {g.shape} != {w.shape}"
    assert np.array_equal(np.isfinite(g), np.isfinite(w)), f"{what}: {g} vs {w}"
    assert np.array_equal(g[~np.isfinite(g)], w[~np.isfinite(w)]), what
    fin = np.isfinite(w)
    err = np.max(np.abs(g[fin] - w[fin])) if fin.any() else 0.0
    assert err <= tol, f"{what}: error {err:.3e} > {tol:.1e}"


def assert_rel(got: Any, want: Any, tol: float, what: str) -> None:
    g = np.asarray(got, np.float64)
    w = np.asarray(want, np.float64)
    assert g.shape == w.shape, f"{what}: shape {g.shape} != {w.shape}"
    # -inf (an exact collapse: a ReLU unit switched off) must be -inf on both
    assert np.array_equal(np.isfinite(w), np.isfinite(g)), f"{what}: {g} vs {w}"
    assert np.array_equal(g[~np.isfinite(g)], w[~np.isfinite(w)]), what
    g, w = g[np.isfinite(w)], w[np.isfinite(w)]
    scale = max(float(np.max(np.abs(w))) if w.size else 0.0, 1e-300)
    err = float(np.max(np.abs(g - w))) / scale if w.size else 0.0
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


# Configurations per kind: a seeded builder and the inputs' shape. The battery takes the
# registry's kinds that have CUDA formulas; a kind without them must be refused clearly.
def _mlp(**kw: Any) -> Callable[[], Any]:
    return lambda: vgcore.MLP.from_sizes([3, 5, 5, 4], seed=2, **kw)


CONFIGS: dict[str, list[tuple[str, Callable[[], Any]]]] = {
    "mlp": [
        ("tanh", _mlp()),
        ("relu", _mlp(activation="relu")),
        ("leaky_relu-residual", _mlp(activation="leaky_relu", residual=0.5)),
        ("sigmoid", _mlp(activation="sigmoid")),
    ],
    "rnn": [
        ("tanh", lambda: vgcore.RNN.from_sizes(3, 4, seed=3)),
        ("relu", lambda: vgcore.RNN.from_sizes(3, 4, seed=3, nonlinearity="relu")),
    ],
    "lstm": [("default", lambda: vgcore.LSTM.from_sizes(3, 4, seed=4))],
    "gru": [("default", lambda: vgcore.GRU.from_sizes(3, 4, seed=5))],
}
CASES = [(k, name, build) for k in cuda_kinds() for name, build in CONFIGS[k]]


def test_every_registered_kind_is_covered_or_refused() -> None:
    names = [k.name for k in model_kinds()]
    assert set(cuda_kinds()) <= set(names)
    assert set(CONFIGS) == set(cuda_kinds())
    for name in names:
        if name in cuda_kinds():
            continue
        with pytest.raises(ValueError, match="has no CUDA kernels yet"):
            from vgcore.cuda.layers import layer_module

            layer_module(name)


def _inputs(model: Any, dt: Any, T: int = 5, B: int = 2) -> np.ndarray:
    rng = np.random.default_rng(11)
    shape = (B, model.input_size) if model.axis == "depth" else (T, B, model.input_size)
    return rng.standard_normal(shape).astype(dt)


FLOW_KEYS = ("act_mean", "act_std", "saturation", "gate_saturation", "output")


def _compare_flow(m: Any, x: Any, dt: Any, **kw: Any) -> None:
    tol = RTOL[np.dtype(dt)]
    cpu = vgcore.gradient_flow(m, x, dtype=dt, **kw)
    gpu = vgcore.gradient_flow(m, x, dtype=dt, backend="cuda", **kw)
    assert_logs_close(gpu.log_grad_norms, cpu.log_grad_norms, tol, "log_grad_norms")
    if cpu.log_cell_grad_norms is not None:
        assert_logs_close(gpu.log_cell_grad_norms, cpu.log_cell_grad_norms, tol, "cell")
    for key in FLOW_KEYS:
        a, b = getattr(gpu, key), getattr(cpu, key)
        assert (a is None) == (b is None), key
        if b is not None:
            assert_rel(a, b, tol, key)


@pytest.mark.parametrize("dt", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize(("kind", "name", "build"), CASES, ids=[f"{k}-{n}" for k, n, _ in CASES])
def test_gradient_flow_matches_cpu(kind: str, name: str, build: Any, dt: Any) -> None:
    m = build()
    assert m.kind == kind
    x = _inputs(m, dt)
    _compare_flow(m, x, dt)
    # a given cotangent, and (recurrent) an initial state
    rng = np.random.default_rng(1)
    out = m.output_size if m.axis == "depth" else m.hidden_size
    cot = rng.standard_normal((x.shape[-2] if m.axis != "depth" else x.shape[0], out))
    if m.axis == "depth":
        _compare_flow(m, x, dt, cotangent=cot)
        return
    h0 = 0.5 * rng.standard_normal((2, m.hidden_size))
    h0 = (h0, -h0) if kind == "lstm" else h0
    _compare_flow(m, x, dt, cotangent=cot, h0=h0)
    # a sequence loss: dL/dh_t at every step
    seq = rng.standard_normal((x.shape[0], 2, m.hidden_size))
    _compare_flow(m, x, dt, cotangent=seq)


def test_lstm_cotangent_pair() -> None:
    m = vgcore.LSTM.from_sizes(3, 4, seed=6)
    x = _inputs(m, np.float64)
    rng = np.random.default_rng(2)
    pair = (rng.standard_normal((2, 4)), rng.standard_normal((2, 4)))
    _compare_flow(m, x, np.float64, cotangent=pair)


@pytest.mark.parametrize("dt", DTYPES, ids=["f64", "f32"])
def test_rescaling_far_outside_the_range(dt: Any) -> None:
    # gradients falling ~1e-600 over 60 steps: measured only through the power-of-two scales
    rng = np.random.default_rng(7)
    m = vgcore.RNN(rng.standard_normal((3, 2)), 1e-10 * rng.standard_normal((3, 3)))
    x = _inputs(m, dt, T=60, B=1)
    cpu = vgcore.gradient_flow(m, x, dtype=dt)
    assert cpu.log10_grad_norms[0] < -400  # far below float64's range
    gpu = vgcore.gradient_flow(m, x, dtype=dt, backend="cuda")
    assert_logs_close(gpu.log_grad_norms, cpu.log_grad_norms, RTOL[np.dtype(dt)], "far")
    # without rescaling the plain product underflows to zero (-inf logs), as frameworks do
    plain = vgcore.gradient_flow(m, x, dtype=dt, backend="cuda", rescale=False)
    assert np.isneginf(plain.log_grad_norms[0])


def test_gradient_flow_against_torch_autograd() -> None:
    torch = pytest.importorskip("torch")
    m = vgcore.GRU.from_sizes(3, 4, seed=8)
    x = _inputs(m, np.float64, T=4)
    got = vgcore.gradient_flow(m, x, backend="cuda")
    mod = m.to_torch().double()
    hs = []
    h = torch.zeros(1, 2, 4, dtype=torch.float64, requires_grad=True)
    hs.append(h)
    xt = torch.tensor(x)
    for t in range(4):
        _, h = mod(xt[t : t + 1], h)
        h.retain_grad()
        hs.append(h)
    (0.5 * (hs[-1] ** 2).sum()).backward()
    want = np.array([math_log_norm(hh.grad) for hh in hs])
    assert_logs_close(got.log_grad_norms, want, 1e-10, "torch")


def math_log_norm(g: Any) -> float:
    return float(np.log(np.linalg.norm(g.detach().numpy())))


LYAP_CASES = [(k, n, b) for k, n, b in CASES if k != "mlp"]


@pytest.mark.parametrize("dt", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("kind", "name", "build"), LYAP_CASES, ids=[f"{k}-{n}" for k, n, _ in LYAP_CASES]
)
def test_lyapunov_matches_cpu(kind: str, name: str, build: Any, dt: Any) -> None:
    m = build()
    x = _inputs(m, dt, T=9)
    tol = RTOL[np.dtype(dt)]
    # ReLU units switch off: below the top exponent a rank-deficient product has -inf or
    # rounding-level exponents (as in the conformance battery), so only the top one is defined
    k = 1 if name == "relu" else 3
    kw: dict[str, Any] = dict(k=k, qr_every=2, burn_in=1, seed=3, max_records=2, dtype=dt)
    cpu = vgcore.lyapunov(m, x, **kw)
    gpu = vgcore.lyapunov(m, x, backend="cuda", **kw)
    assert_rel(gpu.exponents, cpu.exponents, tol, "exponents")
    assert_rel(gpu.running, cpu.running, tol, "running")
    assert_rel(gpu.block_rates, cpu.block_rates, tol, "block_rates")
    np.testing.assert_array_equal(gpu.record_steps, cpu.record_steps)
    assert (gpu.steps, gpu.accumulated_steps) == (cpu.steps, cpu.accumulated_steps)
    assert_rel(gpu.final_state, cpu.final_state, tol, "final_state")


def test_lyapunov_streamed_chunks_and_h0() -> None:
    m = vgcore.LSTM.from_sizes(3, 4, seed=9)
    x = _inputs(m, np.float64, T=8)
    rng = np.random.default_rng(4)
    h0 = (0.3 * rng.standard_normal((2, 4)), 0.3 * rng.standard_normal((2, 4)))
    cpu = vgcore.lyapunov(m, x, h0=h0, k=8)
    gpu = vgcore.lyapunov(m, iter([x[:3], x[3:]]), h0=h0, k=8, backend="cuda")
    assert_rel(gpu.exponents, cpu.exponents, 1e-10, "exponents")


def test_unsupported_options_are_refused() -> None:
    m = vgcore.LSTM.from_sizes(3, 4, seed=1)
    x = _inputs(m, np.float64)
    for opt in ("param_grads", "keep_grads", "keep_states", "dead_units", "input_grads"):
        with pytest.raises(ValueError, match=f"{opt} is not available on the cuda backend"):
            vgcore.gradient_flow(m, x, backend="cuda", **{opt: True})
    stacked = vgcore.LSTM.from_sizes(3, 4, num_layers=2, seed=1)
    with pytest.raises(ValueError, match="single-layer"):
        vgcore.gradient_flow(stacked, x, backend="cuda")
    with pytest.raises(ValueError, match="single-layer"):
        vgcore.lyapunov(stacked, x, backend="cuda")
    ln = vgcore.MLP.from_sizes([3, 4, 4], seed=1, norm="layernorm")
    with pytest.raises(ValueError, match="no CUDA kernel yet"):
        vgcore.gradient_flow(ln, np.ones((2, 3)), backend="cuda")
    gelu = vgcore.MLP.from_sizes([3, 4, 4], seed=1, activation="gelu")
    with pytest.raises(ValueError, match="activation 'gelu' has no CUDA kernel"):
        vgcore.gradient_flow(gelu, np.ones((2, 3)), backend="cuda")
    with pytest.raises(ValueError, match="jacobian_spectrum is not on the cuda backend"):
        vgcore.jacobian_spectrum(m, x, backend="cuda")


def test_auto_stays_on_the_cpu_in_the_simulator() -> None:
    m = vgcore.RNN.from_sizes(3, 4, seed=1)
    x = _inputs(m, np.float64)
    a = vgcore.gradient_flow(m, x, backend="auto")
    b = vgcore.gradient_flow(m, x)
    np.testing.assert_array_equal(a.log_grad_norms, b.log_grad_norms)  # bit for bit: the core


def test_bench_gpu_simulate(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "bench"))
    try:
        import gpu  # bench/gpu.py
    finally:
        sys.path.pop(0)
    rows = gpu.main(["--simulate"])
    assert rows and all(r["agrees"] for r in rows), rows
    assert "| workload |" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_statistics_reduced_in_chunks_of_steps(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The forward statistics are reduced every K steps: K = 4 over T = 10 (two whole chunks
    and a partial one) gives the CPU's per-step numbers."""
    from vgcore.cuda import flow

    monkeypatch.setattr(flow, "_STATS_EVERY", 4)
    m = CONFIGS[kind][0][1]()
    x = _inputs(m, np.float64, T=10)
    _compare_flow(m, x, np.float64)

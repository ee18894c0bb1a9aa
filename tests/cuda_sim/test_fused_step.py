"""The fused backward step (vgcore.cuda._fused) in the simulator: the kernel against the rules
it replaces (``_logscale.measure`` / ``rescale_exponent`` and the per-step cotangent's shift,
as NumPy operations), whole sweeps that rescale far outside the dtype's range against the CPU
backend, and the host-side calls per step pinned (tests/cuda_sim/_counting.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("numba") is None:  # pragma: no cover - the battery's own session
    pytest.skip("numba is not installed (pip install 'vgcore[cuda]')", allow_module_level=True)

import vgcore
from vgcore.cuda._arrays import arrays
from vgcore.cuda._fused import BackwardScale
from vgcore.cuda._logscale import LIMITS, LN2, measure, rescale_exponent

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _counting

RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
DTYPES = [np.float64, np.float32]


def _reference(
    parts: list[np.ndarray],
    scale: int,
    s: int,
    cseq: np.ndarray | None,
    add: np.ndarray | None,
    rescale: bool,
    hi: int,
    target: int,
) -> tuple[list[np.ndarray], int, list[float]]:
    """The step as the drivers did it before the fusion, in NumPy: (parts, scale, logs)."""
    xp = np
    dt = parts[0].dtype
    rl = LIMITS[dt]
    parts = [p.copy() for p in parts]
    with np.errstate(all="ignore"):
        if add is not None:
            parts[0] = parts[0] + add
        if cseq is not None:
            cmax = xp.abs(cseq).astype(np.float64).max(axis=(1, 2))
            cexp = xp.where(cmax > 0, xp.frexp(cmax)[1].astype(np.int64) - 1, 0)
            _, logs = measure(xp, *parts)
            zero = all(bool(np.isneginf(lg)) for lg in logs)
            sc = 0 if zero else scale
            shift = min(0, (rl.emax - 4) - (int(cexp[s - 1]) + sc))
            parts = [xp.ldexp(p, shift).astype(dt, copy=False) for p in parts]
            scale = sc + shift
            parts[0] = parts[0] + xp.ldexp(cseq[s - 1], scale).astype(dt, copy=False)
        e, logs = measure(xp, *parts)
        out = [float(lg) - scale * LN2 for lg in logs]
        if rescale:
            d = int(rescale_exponent(xp, e, rl.lo, hi, target))
            parts = [xp.ldexp(p, d).astype(dt, copy=False) for p in parts]
            scale += d
    return parts, scale, out


def _vectors(dt: Any, case: str) -> list[np.ndarray]:
    rng = np.random.default_rng(CASES.index(case))
    g = rng.standard_normal((3, 5))
    c = rng.standard_normal((3, 5))
    big = 100 if np.dtype(dt) == np.float32 else 900
    if case == "tiny":
        g, c = np.ldexp(g, -big), np.ldexp(c, -big - 10)
    elif case == "huge":
        g, c = np.ldexp(g, big // 2), np.ldexp(c, big // 3)
    elif case == "zero":
        g, c = 0 * g, 0 * c
    elif case == "zero-g":
        g = 0 * g
    elif case == "nan":
        g[1, 2] = np.nan
    elif case == "inf":
        c[0, 0] = -np.inf
    elif case == "wide":  # entries 2^+-100 apart: the small ones underflow in the sum only
        g[0] = np.ldexp(g[0], -100)
        c[2] = np.ldexp(c[2], 60)
    with np.errstate(all="ignore"):
        return [g.astype(dt), c.astype(dt)]


CASES = ["plain", "tiny", "huge", "zero", "zero-g", "nan", "inf", "wide"]


@pytest.mark.parametrize("dt", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["one", "two", "add", "inject", "inject-two", "no-rescale"])
def test_the_kernel_follows_the_rules(dt: Any, case: str, mode: str) -> None:
    ar = arrays()
    dt = np.dtype(dt)
    g, c = _vectors(dt, case)
    two = mode in ("two", "inject-two")
    inject = mode.startswith("inject")
    rescale = mode != "no-rescale"
    hi, target = (40, 0) if dt == np.float32 else (200, 0)
    rng = np.random.default_rng(3)
    cseq = None
    if inject:
        cseq = rng.standard_normal((4, 3, 5)).astype(dt)
        cseq[1] = np.ldexp(cseq[1], 30)  # a large injected cotangent: the carried one shifts
        cseq[2] = 0.0
    add = rng.standard_normal((3, 5)).astype(dt) if mode == "add" else None
    scale0 = 17 if case != "huge" else -23
    for s in (1, 2, 3):  # with injection: a large, a zero and a plain cotangent
        parts = [g, c] if two else [g]
        want_parts, want_scale, want_logs = _reference(
            parts, scale0, s, cseq, add, rescale, hi, target
        )
        sc = BackwardScale(ar, dt, 4, 2 if two else 1, rescale, hi, target, cseq)
        sc.scale[0] = scale0  # the scale carried in (a NumPy array in the simulator)
        kg, kc = g.copy(), c.copy()
        sc.step(s, kg, kc if two else None, add.copy() if add is not None else None, inject)
        assert int(sc.scale[0]) == want_scale
        got_logs = [sc.lg[s]] + ([sc.lgc[s]] if two else [])
        for got, want in zip(got_logs, want_logs):
            if np.isfinite(want):
                assert abs(got - want) <= 1e-12 * max(1.0, abs(want)), (got, want)
            else:
                np.testing.assert_array_equal(got, want)
        # a sum rounds once in float64 then to float32 here, once in float32 there
        ulps = 1 if (inject or add is not None) and dt == np.float32 else 0
        for got_v, want_v in zip([kg, kc] if two else [kg], want_parts):
            np.testing.assert_array_equal(np.isnan(got_v), np.isnan(want_v))
            fin = np.isfinite(want_v)
            np.testing.assert_array_equal(got_v[np.isinf(want_v)], want_v[np.isinf(want_v)])
            np.testing.assert_array_max_ulp(got_v[fin], want_v[fin], maxulp=ulps)


def assert_logs_equal(got: Any, want: Any, tol: float, what: str) -> None:
    """Log norms: NaN and infinities at the same places, finite values within ``tol``."""
    g = np.asarray(got, np.float64)
    w = np.asarray(want, np.float64)
    assert g.shape == w.shape, what
    np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=what)
    np.testing.assert_array_equal(g[np.isinf(w)], w[np.isinf(w)], err_msg=what)
    fin = np.isfinite(w)
    assert np.array_equal(np.isfinite(g), fin), f"{what}: {g} vs {w}"
    err = float(np.max(np.abs(g[fin] - w[fin]))) if fin.any() else 0.0
    assert err <= tol, f"{what}: error {err:.3e} > {tol:.1e}"


def _compare(m: Any, x: np.ndarray, dt: Any, ref_dt: Any = None, **kw: Any) -> Any:
    """The CUDA sweep in ``dt`` against the CPU's in ``ref_dt`` (default ``dt``)."""
    with np.errstate(all="ignore"):
        cpu = vgcore.gradient_flow(m, x.astype(ref_dt or dt), dtype=ref_dt or dt, **kw)
    gpu = vgcore.gradient_flow(m, x, dtype=dt, backend="cuda", **kw)
    tol = RTOL[np.dtype(dt)]
    assert_logs_equal(gpu.log_grad_norms, cpu.log_grad_norms, tol, "log_grad_norms")
    if cpu.log_cell_grad_norms is not None:
        assert_logs_equal(gpu.log_cell_grad_norms, cpu.log_cell_grad_norms, tol, "cell")
    return cpu


def _lstm(forget_bias: float, scale: float, seed: int = 5) -> Any:
    rng = np.random.default_rng(seed)
    N, I = 3, 2
    b = np.zeros(4 * N)
    b[N : 2 * N] = forget_bias
    return vgcore.LSTM(
        scale * rng.standard_normal((4 * N, I)), scale * rng.standard_normal((4 * N, N)), b
    )


@pytest.mark.parametrize("dt", DTYPES, ids=["f64", "f32"])
def test_lstm_contraction_beyond_the_range_with_per_step_cotangents(dt: Any) -> None:
    # a closed forget gate (f ~ 1e-13) and small weights: both norms fall ~1e-6 per step
    m = _lstm(-30.0, 1e-6)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((60, 2, 2)).astype(dt)
    cpu = _compare(m, x, dt)
    assert cpu.log10_grad_norms[0] < -330  # below float64's range
    seq = rng.standard_normal((60, 2, 3))
    seq[:30] *= 1e-30  # small, then ordinary cotangents
    seq[35:40] = 0.0  # and zero ones
    # where the cotangents restart after the zeros (step 35) dL/dc is ~1e-45 of dL/dh: both
    # backends measure it before the window's rescaling, so it is no float32 subnormal
    _compare(m, x, dt, cotangent=seq)


@pytest.mark.parametrize("dt", DTYPES, ids=["f64", "f32"])
def test_rnn_expansion_beyond_the_range(dt: Any) -> None:
    # h stays 0 (no input, no bias): tanh'(0) = 1, the gradient grows 2^40 per step, to 2^1200
    q = np.linalg.qr(np.random.default_rng(2).standard_normal((3, 3)))[0]
    m = vgcore.RNN(np.ones((3, 1)), 2.0**40 * q)
    x = np.zeros((30, 1, 1), dt)
    cpu = _compare(m, x, dt, cotangent=np.ones((1, 3)))
    assert cpu.log10_grad_norms[0] > 320  # above float64's range
    seq = np.random.default_rng(3).standard_normal((30, 1, 3))
    _compare(m, x, dt, cotangent=seq)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_zero_cotangents(kind: str) -> None:
    cls = {"rnn": vgcore.RNN, "lstm": vgcore.LSTM, "gru": vgcore.GRU}[kind]
    m = cls.from_sizes(2, 3, seed=4)
    x = np.random.default_rng(1).standard_normal((6, 2, 2))
    cpu = _compare(m, x, np.float64, cotangent=np.zeros((2, 3)))
    assert np.all(np.isneginf(cpu.log_grad_norms))
    seq = np.zeros((6, 2, 3))
    seq[2] = 1.0  # zero until step 3, then its gradient: the scale restarts at 0
    _compare(m, x, np.float64, cotangent=seq)


# the simulator's kernel threads compute on NumPy scalars outside the drivers' errstate
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_nonfinite_values_are_refused_as_on_the_cpu(kind: str) -> None:
    # Models refuse NaN weights; inputs of 1e200 overflow the pre-activations to Inf and the
    # states to NaN. Both backends stop with the same error (the NaN a sweep carries is the
    # kernel's "nan" case above).
    G = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    cls = {"rnn": vgcore.RNN, "lstm": vgcore.LSTM, "gru": vgcore.GRU}[kind]
    kw = {"nonlinearity": "relu"} if kind == "rnn" else {}
    whh = np.random.default_rng(0).standard_normal((3 * G, 3))
    m = cls(1e200 * np.ones((3 * G, 1)), whh, **kw)
    x = np.zeros((5, 2, 1))
    x[1, 0], x[1, 1] = 1e200, -1e200
    for backend in ("cpu", "cuda"):
        with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="at step 2"):
            vgcore.gradient_flow(m, x, backend=backend)


def test_dense_residual_rescaling() -> None:
    # 100 residual layers of a large gain: the gradient grows past 2^200, the rescaling window
    m = vgcore.MLP.from_sizes([3] + [4] * 100, seed=2, residual=30.0, activation="identity")
    x = 1e-3 * np.random.default_rng(0).standard_normal((2, 3))
    with np.errstate(all="ignore"):
        cpu = vgcore.gradient_flow(m, x, cotangent=np.ones((2, 4)))
    gpu = vgcore.gradient_flow(m, x, cotangent=np.ones((2, 4)), backend="cuda")
    assert_logs_equal(gpu.log_grad_norms, cpu.log_grad_norms, 1e-10, "dense")


def _per_step(
    monkeypatch: pytest.MonkeyPatch, run: Any, T1: int = 6, T2: int = 10
) -> tuple[float, float]:
    """Host calls per step (forward, backward) of ``run(T)``: the difference of two lengths,
    so what is done once per sequence cancels."""
    from vgcore.cuda import flow

    got = []
    for T in (T1, T2):
        with monkeypatch.context() as mp:
            ar = _counting.install(mp)
            mark = {}
            orig = flow._bptt

            def bptt(*a: Any, orig: Any = orig, mark: Any = mark, ar: Any = ar) -> Any:
                mark["b"] = ar.calls
                return orig(*a)

            mp.setattr(flow, "_bptt", bptt)
            c0 = ar.calls
            run(T)
            got.append((mark.get("b", ar.calls) - c0, ar.calls - mark.get("b", ar.calls)))
    return tuple((b - a) / (T2 - T1) for a, b in zip(got[0], got[1]))  # type: ignore[return-value]


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("cot", ["final", "per-step"])
def test_host_calls_per_step_of_bptt(kind: str, cot: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward: the product against W_hh and the layer's kernel; backward: the fused
    measure-and-rescale kernel, the layer's backward kernel and the product (before the
    fusion: 29-90 per backward step)."""
    cls = {"rnn": vgcore.RNN, "lstm": vgcore.LSTM, "gru": vgcore.GRU}[kind]
    m = cls.from_sizes(2, 3, seed=1)
    rng = np.random.default_rng(0)

    def run(T: int) -> None:
        x = rng.standard_normal((T, 2, 2))
        kw = {"cotangent": rng.standard_normal((T, 2, 3))} if cot == "per-step" else {}
        vgcore.gradient_flow(m, x, backend="cuda", **kw)

    assert _per_step(monkeypatch, run) == (2.0, 3.0)


def test_host_calls_per_step_of_lyapunov(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two products and one kernel per step; the QR, its transposed view and one kernel per
    block (before: 5 per step and 9 per block)."""
    m = vgcore.LSTM.from_sizes(2, 3, seed=1)
    rng = np.random.default_rng(0)

    def count(T: int, qr_every: int) -> int:
        with monkeypatch.context() as mp:
            ar = _counting.install(mp)
            c0 = ar.calls
            vgcore.lyapunov(
                m, rng.standard_normal((T, 2, 2)), k=2, qr_every=qr_every, backend="cuda"
            )
            return ar.calls - c0

    assert (count(16, 100) - count(8, 100)) / 8 == 3.0
    assert (count(16, 1) - count(8, 1)) / 8 == 6.0

"""Log-scale helpers of the CUDA drivers, on device arrays (base/logscale.hpp's rules).

Backpropagated vectors are stored as ``true * 2^scale``; ``scale`` is an int64 device array,
so deciding and applying a rescaling needs no host round trip. Multiplying by a power of two is
exact: in range nothing changes. :func:`measure` and :func:`rescale_exponent` state the rules
as array operations; the drivers run them fused in one kernel (``_fused.measure_rescale``),
which tests/cuda_sim/test_fused_step.py checks against these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Limits:
    """RescaleLimits<T> of base/logscale.hpp."""

    lo: int
    hi: int
    window: int
    emax: int


LIMITS = {
    np.dtype(np.float32): Limits(-40, 40, 64, 127),
    np.dtype(np.float64): Limits(-200, 200, 512, 1023),
}


def measure(xp: Any, *parts: Any) -> tuple[Any, list[Any]]:
    """(joint exponent ``e`` = floor(log2 max|v|) over all parts, 0 where all are zero; the
    natural log of each part's Frobenius norm at its stored scale, -inf for a zero part).

    Sums of squares run in float64 on the entries divided by a power of two near their
    largest, so no value over- or underflows whatever the range."""
    logs = []
    e = None
    for v in parts:
        a = xp.abs(v).astype(np.float64)
        m = a.max()
        _, ex = xp.frexp(m)  # m = mantissa * 2^ex, mantissa in [0.5, 1)
        s = xp.sum(xp.square(xp.ldexp(a, -ex)))
        lg = xp.where(m > 0, 0.5 * xp.log(xp.where(m > 0, s, 1.0)) + ex * LN2, -xp.inf)
        logs.append(xp.where(xp.isnan(m) | xp.isnan(s), xp.nan, lg))
        ei = xp.where(m > 0, ex.astype(np.int64) - 1, xp.iinfo(np.int64).min // 4)
        e = ei if e is None else xp.maximum(e, ei)
    assert e is not None
    e = xp.where(e == xp.iinfo(np.int64).min // 4, 0, e)
    return e, logs


def rescale_window(dt: np.dtype, gain_log2: float) -> tuple[int, int]:
    """(upper bound of the stored norm's exponent, target exponent) when one step can grow the
    norm by at most ``2^gain_log2`` (the set_rescale_window rule of sweeps/recurrent.cpp)."""
    rl = LIMITS[dt]
    hi_w = rl.window
    if math.isfinite(gain_log2):
        cap = rl.emax - 3 - gain_log2
        if not cap >= hi_w:
            hi_w = math.floor(cap) if cap > -2.0 * rl.window else -2 * rl.window
    target = max(min(0, hi_w - 2), -rl.window)
    return min(hi_w, rl.hi), target


def rescale_exponent(xp: Any, e: Any, lo: int, hi: int, target: int) -> Any:
    """The power of two to apply: ``target - e`` when the exponent ``e`` left [lo, hi], else 0."""
    return xp.where((e > hi) | (e < lo), target - e, 0).astype(np.int64)

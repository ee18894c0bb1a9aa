"""Comparison helpers shared by the tests (a plain module: bench/ has a conftest too)."""

from __future__ import annotations

import numpy as np


def assert_rel_close(actual, expected, rtol: float, what: str = "") -> None:
    """Max-norm relative error ||a - e||_inf / max(||e||_inf, tiny) <= rtol."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    scale = max(np.max(np.abs(e)) if e.size else 0.0, 1e-300)
    err = np.max(np.abs(a - e)) / scale if e.size else 0.0
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.1e}"

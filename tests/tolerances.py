"""Comparison helpers shared by the tests (a plain module: bench/ has a conftest too)."""

from __future__ import annotations

import os

import numpy as np

# Under tools/sanitize.sh the compiled core runs instrumented (ASan + UBSan), several times
# slower: a subprocess's hang guard stretches by this factor there, so it still catches hangs
# without failing on a slow but finished run.
SANITIZER_SLOWDOWN = 4.0 if os.environ.get("VGCORE_SANITIZED") == "1" else 1.0


def hang_guard(seconds: float) -> float:
    """A subprocess timeout of ``seconds`` on a plain build, scaled under the sanitizers."""
    return seconds * SANITIZER_SLOWDOWN


def assert_rel_close(actual, expected, rtol: float, what: str = "") -> None:
    """Max-norm relative error ||a - e||_inf / max(||e||_inf, tiny) <= rtol."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    scale = max(np.max(np.abs(e)) if e.size else 0.0, 1e-300)
    err = np.max(np.abs(a - e)) / scale if e.size else 0.0
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.1e}"

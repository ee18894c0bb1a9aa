"""Lyapunov exponents when the tangent block shrinks to extreme magnitudes between
re-orthonormalisations (qr_every > 1): the Householder reflectors of the general path
(householder.hpp, also used by the spectra) stay finite and right for columns whose squares
underflow (float64 below ~1e-162) or that sit near float32's smallest normal number, where
1 / (alpha - beta) overflows float32. The fast path has its own QR; both are checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r"""
import json, sys
import numpy as np
import vgcore
from vgcore import RNN

rng = np.random.default_rng(0)
n = 4
out = {}
for dtype, blocks in (("float64", (60, 100)), ("float32", (15,))):
    m = RNN(1e-3 * rng.standard_normal((n, 1)), 1e-3 * rng.standard_normal((n, n)), None, None)
    m = m.astype(dtype)
    x = rng.standard_normal((120, 2, 1)).astype(dtype)
    ref = vgcore.lyapunov(m, x, k=1).exponents
    for q in blocks:
        try:
            got = vgcore.lyapunov(m, x, k=1, qr_every=q).exponents
            out[f"{dtype}-{q}"] = [ref.tolist(), got.tolist()]
        except FloatingPointError as exc:
            out[f"{dtype}-{q}"] = str(exc)
print(json.dumps(out))
"""


@pytest.mark.parametrize("kernels", ["off", "default"])
def test_top_exponent_with_tiny_tangent_blocks(kernels: str) -> None:
    """k = 1: the exponent does not depend on qr_every in exact arithmetic. The per-step
    contraction is ~e^-6.2, so the tangent column reaches ~1e-162 (float64, 60 steps: its
    squares underflow) and ~1e-40 (float32, 15 steps: subnormal) before each QR."""
    env = dict(os.environ)
    env.pop("VGCORE_LYAPUNOV_KERNELS", None)
    if kernels == "off":  # the general path: TangentModel + householder::qr_replace_by_q
        env["VGCORE_LYAPUNOV_KERNELS"] = "off"
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for key, val in out.items():
        assert not isinstance(val, str), f"{key}: {val}"
        ref, got = (np.array(v) for v in val)
        assert np.all(np.isfinite(got)), f"{key}: {got}"
        # float32: the column before the QR is subnormal (about 10 of 24 bits left)
        tol = 1e-12 if key.startswith("float64") else 1e-5 * np.abs(ref).max()
        assert np.abs(got - ref).max() <= tol, f"{key}: {got} vs qr_every=1: {ref}"

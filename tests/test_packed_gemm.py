"""The packed-panel GEMM behind every recurrent step, against float64 numpy.

Shapes cover the register-block remainders (rows 1..13, 25, 33), partial column panels and
panels wider than one, k = 0, and accumulation into C."""

from __future__ import annotations

import numpy as np
import pytest

from vgcore._loader import _core

SHAPES = [(m, 9, 5) for m in range(1, 14)] + [
    (16, 256, 256),
    (33, 256, 1024),
    (25, 300, 33),
    (3, 17, 100),
    (5, 0, 3),
    (0, 3, 4),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "transposed"])
def test_packed_product_matches_numpy(shape, transposed, dtype):
    m, k, n = shape
    rng = np.random.default_rng(m * 1000 + k + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    bb = np.ascontiguousarray(b.T) if transposed else b
    ref = a.astype(np.float64) @ b.astype(np.float64)
    # Each entry is a k-term sum: the error bound scales with sum |a||b|.
    bound = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)) + np.abs(c)
    eps = np.finfo(dtype).eps * max(k, 1) * 2
    got = _core.testing.packed_product(a, bb, transposed)
    assert got.shape == (m, n) and got.dtype == dtype
    assert (np.abs(got - ref) <= eps * bound).all()
    got_c = _core.testing.packed_product(a, bb, transposed, c)
    assert (np.abs(got_c - (ref + c)) <= eps * bound).all()

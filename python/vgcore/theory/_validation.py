"""Argument checks shared by the theory functions (clear errors naming the argument)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["as_grid_axis", "as_sigma", "check_tol"]


def as_sigma(value: Any, name: str) -> np.ndarray:
    """A float64 array of finite, non-negative variances (a 0-d array for a scalar)."""
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a non-negative number or array, got {value!r}")
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real number or array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr) | (arr < 0.0)
    if bad.any():
        first = arr[bad].flat[0]
        where = "" if arr.ndim == 0 else f" (first at index {np.argwhere(bad)[0].tolist()})"
        what = "NaN" if np.isnan(first) else repr(float(first))
        raise ValueError(f"{name} must be finite and >= 0, got {what}{where}")
    return arr


def as_grid_axis(value: Any, name: str) -> np.ndarray:
    """A non-empty 1-D array of variances (a scalar becomes one point)."""
    arr = np.atleast_1d(as_sigma(value, name))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    return arr


def check_tol(value: Any, name: str = "tol") -> float:
    """A finite, non-negative float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    tol = float(value)
    if not np.isfinite(tol) or tol < 0.0:
        raise ValueError(f"{name} must be finite and >= 0, got {tol}")
    return tol

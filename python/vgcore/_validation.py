"""Input validation shared by models and analyses: clear errors naming the argument."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class InsufficientMemoryError(ValueError, MemoryError):
    """An analysis would need more memory than the machine has available."""


def resolve_dtype(dtype: object, name: str = "dtype") -> np.dtype:
    """float32 / float64 from anything numpy understands; anything else is a TypeError."""
    try:
        dt = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError as exc:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


_FINITE_BLOCK = 1 << 16


def _all_finite(arr: np.ndarray) -> bool:
    """np.isfinite(arr).all() in blocks, so the check of a long sequence needs no temporary
    of its size (the analyses that stream it keep memory independent of its length)."""
    flat = arr.reshape(-1)
    return all(
        np.isfinite(flat[i : i + _FINITE_BLOCK]).all() for i in range(0, flat.size, _FINITE_BLOCK)
    )


def as_float_array(
    value: object,
    name: str,
    dtype: np.dtype,
    *,
    ndim: int | Sequence[int] | None = None,
    shape: Sequence[int | None] | None = None,
    allow_empty: bool = False,
    check_finite: bool = True,
) -> np.ndarray:
    """Convert to a C-contiguous float array of ``dtype`` with clear errors.

    Integer and boolean inputs are converted; complex, object and string inputs are rejected.
    ``shape`` entries of ``None`` match any length.
    """
    if value is None:
        raise TypeError(f"{name} must be an array, got None")
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(
                f"{name} must have {want} dimensions, got {arr.ndim} (shape {arr.shape})"
            )
    if shape is not None:
        if arr.ndim != len(shape) or any(
            s is not None and s != a for s, a in zip(shape, arr.shape)
        ):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape)
            want += ",)" if len(shape) == 1 else ")"
            raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if not (arr.flags.c_contiguous and arr.dtype == dtype):
        check_memory(
            arr.size * np.dtype(dtype).itemsize, f"converting {name} to {np.dtype(dtype).name}"
        )
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if check_finite and arr.size and not _all_finite(arr):
        bad = np.argwhere(~np.isfinite(arr))[0]
        kind = "NaN" if np.isnan(arr[tuple(bad)]) else "Inf"
        raise ValueError(f"{name} contains {kind} (first at index {tuple(int(i) for i in bad)})")
    return arr


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(n_bytes: float, what: str) -> None:
    """Raise InsufficientMemoryError when ``n_bytes`` would not fit in available memory."""
    avail = available_memory_bytes()
    if avail is not None and n_bytes > 0.9 * avail:
        raise InsufficientMemoryError(
            f"{what} needs about {n_bytes / 2**30:.2f} GiB of working memory, "
            f"but only {avail / 2**30:.2f} GiB is available; reduce the batch, "
            "sequence length or width"
        )

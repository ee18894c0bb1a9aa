"""Input validation shared by models and analyses: clear errors naming the argument."""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

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

# Re-validating a model before an analysis may defer its finiteness scan to the failure path
# (a non-finite parameter always shows up as a non-finite result): see Model._checked.
_skip_finite_check: ContextVar[bool] = ContextVar("_skip_finite_check", default=False)


@contextmanager
def deferred_finite_check() -> Iterator[None]:
    """Within this block, :func:`as_float_array` skips its NaN/Inf scan."""
    token = _skip_finite_check.set(True)
    try:
        yield
    finally:
        _skip_finite_check.reset(token)


#: Half-precision dtypes vgcore reads exactly into float32 (one rule for every model kind).
HALF_DTYPES = ("float16", "bfloat16")


def _from_torch_tensor(value: object, name: str) -> np.ndarray | None:
    """A torch tensor as a numpy array (half precision widened to float32); None otherwise."""
    mod = type(value).__module__
    if not (mod == "torch" or mod.startswith("torch.")) or not hasattr(value, "detach"):
        return None
    t = value.detach()  # type: ignore[attr-defined]
    dtype = str(t.dtype).removeprefix("torch.")
    if t.is_complex():
        raise TypeError(f"{name} must be a real numeric array, got torch dtype {dtype}")
    if dtype in HALF_DTYPES:
        t = t.float()  # exact: every float16 / bfloat16 value is a float32
    return np.asarray(t.cpu().numpy())


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
    arr = _from_torch_tensor(value, name)
    if arr is None:
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} must be a real numeric array, got {type(value).__name__} ({exc})"
            ) from None
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
    with np.errstate(over="ignore"):  # values beyond float32's range: reported just below
        arr = np.ascontiguousarray(arr, dtype=dtype)
    if check_finite and not _skip_finite_check.get():
        check_finite_array(arr, name)
    return arr


def first_nonfinite(arr: np.ndarray) -> str | None:
    """``"NaN (first at index (i, j))"`` for the first non-finite entry, or None."""
    if not arr.size or _all_finite(arr):
        return None
    bad = np.argwhere(~np.isfinite(arr))[0]
    kind = "NaN" if np.isnan(arr[tuple(bad)]) else "Inf"
    return f"{kind} (first at index {tuple(int(i) for i in bad)})"


def check_finite_array(arr: np.ndarray, name: str) -> None:
    """ValueError naming ``name`` and the first NaN/Inf entry of ``arr``."""
    bad = first_nonfinite(arr)
    if bad is not None:
        raise ValueError(f"{name} contains {bad}")


def check_seed(value: object, name: str = "seed", *, allow_generator: bool = False) -> object:
    """A seed for ``numpy.random.default_rng``: an integer in [0, 2**63), or None.

    Floats (even integral ones: ``1.5`` must not become 1 silently), bools, negative and
    oversized integers are refused with a message naming ``name``; a numpy Generator is
    passed through where ``allow_generator``.
    """
    if allow_generator and isinstance(value, np.random.Generator):
        return value
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        what = "an integer >= 0, None" + (" or a numpy Generator" if allow_generator else "")
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    v = int(value)
    if not 0 <= v < 2**63:
        raise ValueError(f"{name} must be an integer in [0, 2**63), got {v}")
    return v


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), capped by what an address-space limit
    (``ulimit -v``) still allows this process; None when unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        return None
    left = _address_space_left()
    if left is not None:
        avail = left if avail is None else min(avail, left)
    return avail


def _address_space_left() -> int | None:
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return max(0, limit - int(line.split()[1]) * 1024)
    except (ImportError, OSError, ValueError):
        return None
    return None


def check_memory(
    n_bytes: float, what: str, hint: str = "reduce the batch, sequence length or width"
) -> None:
    """Raise InsufficientMemoryError when ``n_bytes`` would not fit in available memory."""
    avail = available_memory_bytes()
    if avail is not None and n_bytes > 0.9 * avail:
        raise InsufficientMemoryError(
            f"{what} needs about {n_bytes / 2**30:.2f} GiB of working memory, "
            f"but only {avail / 2**30:.2f} GiB is available; {hint}"
        )


def check_int_seed(value: object, name: str = "seed") -> int:
    """An integer seed in [0, 2**63) (None refused: the analysis needs a definite seed)."""
    if value is None:
        raise TypeError(f"{name} must be an integer >= 0, got None")
    seed = check_seed(value, name)
    assert isinstance(seed, int)
    return seed

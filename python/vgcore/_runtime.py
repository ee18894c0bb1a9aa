"""Thread settings shared by every analysis."""

from __future__ import annotations

import numbers
import os

from vgcore._loader import _core

#: Most threads vgcore uses in one analysis; larger counts are refused (ValueError). Far above
#: any useful count for its CPU-bound work, low enough that a typo cannot ask for millions.
MAX_THREADS: int = int(_core.MAX_THREADS)

_num_threads: int | None = None


def _default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_THREADS))


def _check_count(n: object, name: str) -> int:
    """A thread count in [1, MAX_THREADS] (any integer type), else TypeError / ValueError."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer or None, got {type(n).__name__} {n!r}")
    value = int(n)
    if not 1 <= value <= MAX_THREADS:
        raise ValueError(
            f"{name} must be a positive integer (at most {MAX_THREADS}) or None, got {n!r}"
        )
    return value


def set_num_threads(n: int | None) -> None:
    """Set how many threads vgcore uses (batch-parallel workers and its BLAS).

    Parameters
    ----------
    n : int or None
        Number of threads, from 1 to :data:`MAX_THREADS` (1024); ``None`` restores the
        default (the CPUs this process may use). Anything else raises TypeError (not an
        integer) or ValueError (out of range) and leaves the setting as it was.

    Raises
    ------
    TypeError, ValueError
        For an invalid ``n``.

    Notes
    -----
    More threads than CPUs only adds overhead. When the system refuses to start a thread
    (``ulimit -u``, an address-space limit), an analysis raises RuntimeError naming the count
    that could be started; nothing is left running.
    """
    global _num_threads
    value = None if n is None else _check_count(n, "n")
    _core.blas_set_num_threads(value if value is not None else _default_threads())
    _num_threads = value  # only once the core has accepted it


def get_num_threads() -> int:
    """Number of threads vgcore uses for the next analysis."""
    return _num_threads if _num_threads is not None else _default_threads()


def resolve_threads(n: object) -> int:
    """``num_threads`` of an analysis: the setting when None, else a checked count."""
    if n is None:
        return get_num_threads()
    return _check_count(n, "num_threads")


def release_memory() -> int:
    """Free the scratch memory vgcore caches between analyses; returns the bytes freed.

    Kernels keep their large buffers (up to :func:`set_workspace_limit`, 2 GiB by default)
    for the next call, which avoids page faults and zeroing on every run.
    """
    return int(_core.workspace_release())


def set_workspace_limit(n_bytes: int) -> None:
    """Cap the scratch memory cached between analyses (0 disables caching)."""
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, int) or n_bytes < 0:
        raise ValueError(f"n_bytes must be a non-negative integer, got {n_bytes!r}")
    _core.workspace_set_limit(n_bytes)

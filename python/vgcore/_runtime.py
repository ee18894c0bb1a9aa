"""Thread settings shared by every analysis."""

from __future__ import annotations

import os

from vgcore._loader import _core

_num_threads: int | None = None


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n: int | None) -> None:
    """Set how many threads vgcore uses (batch-parallel workers and its BLAS).

    Parameters
    ----------
    n : int or None
        Number of threads; ``None`` restores the default (the CPUs this process may use).
    """
    global _num_threads
    if n is not None:
        if not isinstance(n, (int,)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer or None, got {n!r}")
    _num_threads = n
    _core.blas_set_num_threads(n if n is not None else _default_threads())


def get_num_threads() -> int:
    """Number of threads vgcore uses for the next analysis."""
    return _num_threads if _num_threads is not None else _default_threads()


def resolve_threads(n: int | None) -> int:
    if n is None:
        return get_num_threads()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads must be a positive integer or None, got {n!r}")
    return n


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

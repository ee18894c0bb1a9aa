"""Which backends this machine has, and why one is missing. Imports nothing heavy: numba is
imported only to ask for a device, and only when it is installed."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from dataclasses import dataclass
from importlib import metadata

import numpy as np

__all__ = [
    "AUTO_MIN_WORK",
    "BACKENDS",
    "BackendInfo",
    "CudaUnavailableError",
    "backends",
    "check_backend",
    "cuda_status",
    "resolve_backend",
]

#: The values the analyses' ``backend=`` takes.
BACKENDS = ("cpu", "cuda", "auto")

#: ``backend="auto"`` picks CUDA when a real device is present and the work of one step of the
#: call (a time step, or a layer of a dense stack: about ``batch * state**2`` multiply-adds, see
#: each analysis) reaches this. Measured on an H200 (2026-12, bench/gpu.py --overhead): a CUDA
#: step costs 1.5-2.6 ms however small (about a hundred CuPy operations and Numba launches at
#: 12-38 us each), where a multi-core CPU does ~5e8 multiply-adds in that time: below it the
#: C++ core is faster.
AUTO_MIN_WORK = 2**29

_EXTRA = "pip install 'vgcore[cuda]'"


class CudaUnavailableError(RuntimeError):
    """``backend="cuda"`` was asked for, but this machine cannot run it (the message names what
    is missing: numba / numba-cuda, a device, or CuPy)."""


@dataclass(frozen=True)
class BackendInfo:
    """One backend and whether it can run here.

    Attributes
    ----------
    name : str
        ``"cpu"`` or ``"cuda"``.
    available : bool
        Whether ``backend=name`` runs on this machine.
    reason : str
        What it runs on (available) or what is missing (not available).
    simulator : bool
        CUDA only: the kernels run in Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``),
        with NumPy standing in for cuBLAS / cuSOLVER (for tests; slow).
    """

    name: str
    available: bool
    reason: str
    simulator: bool = False

    @property
    def label(self) -> str:
        """``"cpu"``, ``"cuda"`` or ``"cuda (simulator)"``."""
        return f"{self.name} (simulator)" if self.simulator else self.name

    def __str__(self) -> str:
        state = "available" if self.available else "missing"
        return f"{self.label}: {state} ({self.reason})"


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def simulator_requested() -> bool:
    """Whether Numba's CUDA simulator is (or will be) on: numba reads the variable once, at
    its import."""
    numba = sys.modules.get("numba")
    if numba is not None:
        return bool(getattr(getattr(numba, "config", None), "ENABLE_CUDASIM", False))
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def cuda_status() -> BackendInfo:
    """The CUDA backend's state on this machine (imports numba only when it is installed; the
    answer is kept for the process: a device does not come and go)."""
    return _cuda_status(simulator_requested())


@functools.lru_cache(maxsize=2)
def _cuda_status(simulator: bool) -> BackendInfo:
    if importlib.util.find_spec("numba") is None:
        return BackendInfo("cuda", False, f"numba is not installed ({_EXTRA})")
    if not _installed("numba-cuda"):
        return BackendInfo(
            "cuda", False, f"numba-cuda (the maintained CUDA target) is not installed ({_EXTRA})"
        )
    if simulator:
        return BackendInfo(
            "cuda",
            True,
            "Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), NumPy for the linear algebra",
            simulator=True,
        )
    try:
        from numba import cuda

        present = bool(cuda.is_available()) and len(cuda.gpus) > 0
    except Exception as exc:  # a broken driver or toolkit: say what numba said
        return BackendInfo("cuda", False, f"no usable CUDA device ({type(exc).__name__}: {exc})")
    if not present:
        return BackendInfo("cuda", False, "no CUDA device (numba.cuda.is_available() is False)")
    try:  # the kernels' typing registries: what fails when numba-cuda and NumPy disagree
        importlib.import_module("numba.cuda.cudaimpl")
    except Exception as exc:
        return BackendInfo(
            "cuda",
            False,
            f"numba-cuda cannot compile kernels with this NumPy {np.__version__} "
            f"({type(exc).__name__}: {exc}); numba-cuda 0.30 needs numpy<2.5",
        )
    if importlib.util.find_spec("cupy") is None:
        return BackendInfo(
            "cuda",
            False,
            "CuPy is not installed (cuBLAS / cuSOLVER for the matrix products and QR): "
            f"{_EXTRA}, or pip install cupy-cuda12x / cupy-cuda13x for your CUDA version",
        )
    name = cuda.get_current_device().name
    if isinstance(name, bytes):
        name = name.decode()
    return BackendInfo("cuda", True, f"{name} (Numba kernels, CuPy linear algebra)")


def backends() -> tuple[BackendInfo, ...]:
    """The backends of the analyses on this machine: ``cpu`` (the compiled core, always) and
    ``cuda`` (Numba kernels), each with whether it runs here and why not.

    Returns
    -------
    tuple of BackendInfo
        ``cpu`` first. ``str(info)`` reads e.g. ``"cuda: missing (no CUDA device ...)"``;
        ``info.label`` is ``"cuda (simulator)"`` under ``NUMBA_ENABLE_CUDASIM=1``.
    """
    return (BackendInfo("cpu", True, "the compiled C++ core"), cuda_status())


def check_backend(backend: object) -> str:
    """``backend`` validated: one of :data:`BACKENDS`, else a ValueError naming the argument."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f'backend must be "cpu", "cuda" or "auto", got {backend!r}')
    return backend


def resolve_backend(backend: object, work: float) -> str:
    """``"cpu"`` or ``"cuda"`` for a call of about ``work`` multiply-adds.

    ``"cuda"`` raises :class:`CudaUnavailableError` naming what is missing; ``"auto"`` is CUDA
    only on a real device (never the simulator) and when ``work >= AUTO_MIN_WORK`` (per step).
    """
    b = check_backend(backend)
    if b == "cpu":
        return b
    if b == "auto":
        if work < AUTO_MIN_WORK or simulator_requested():
            return "cpu"
        return "cuda" if cuda_status().available else "cpu"
    info = cuda_status()
    if not info.available:
        raise CudaUnavailableError(f'backend="cuda" cannot run here: {info.reason}')
    return b

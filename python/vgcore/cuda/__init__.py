"""The optional CUDA backend of the native analyses (``backend="cuda"``).

Numba CUDA kernels for each layer kind's per-unit formulas (``vgcore.cuda.layers``), matrix
products and QR through CuPy (cuBLAS / cuSOLVER) on a device, NumPy in Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``). Importing this package imports neither numba nor CuPy: the
drivers (``flow``, ``lyapunov``, ``singular``) and the layer modules do, when a CUDA analysis
runs. See docs/cuda.md.
"""

from __future__ import annotations

from vgcore.cuda._probe import (
    AUTO_MIN_WORK,
    BACKENDS,
    BackendInfo,
    CudaUnavailableError,
    backends,
    check_backend,
    resolve_backend,
)

__all__ = [
    "AUTO_MIN_WORK",
    "BACKENDS",
    "BackendInfo",
    "CudaUnavailableError",
    "backends",
    "check_backend",
    "resolve_backend",
]

"""The array seam of the CUDA backend: one object that holds the array module (CuPy on a
device, NumPy in Numba's simulator) and launches the Numba kernels.

Everything the drivers do between kernels goes through ``Arrays.xp`` with NumPy's API:
matrix products (cuBLAS through CuPy), batched QR (cuSOLVER), reductions. Kernels receive
kernel views made once per buffer (:meth:`Arrays.kernel_view`: a Numba device array sharing
the CuPy array's memory on a device, the NumPy array itself in the simulator), since Numba
converts a CuPy argument anew at every launch. Per-step scalars (norms, scales) stay on the
device: no host round trip inside a sequence.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from vgcore.cuda._probe import CudaUnavailableError, cuda_status

__all__ = ["Arrays", "arrays"]


class Arrays:
    """Array module and kernel launcher of one backend.

    Attributes
    ----------
    xp : module
        ``cupy`` (device) or ``numpy`` (simulator).
    simulator : bool
    threads : int
        Threads per block (the simulator runs one Python thread per CUDA thread: few).
    block_threads : int
        Threads of the single-block reduction kernels (:meth:`launch_block`); a power of two.
    """

    def __init__(self, xp: Any, simulator: bool) -> None:
        self.xp = xp
        self.simulator = simulator
        self.threads = 32 if simulator else 256
        self.max_blocks = 4 if simulator else 65535
        self.block_threads = 4 if simulator else 512
        # kernel[blocks, threads] objects, built once per kernel and grid (numba builds a new
        # launch configuration, with its occupancy check, at every subscript)
        self._launchers: dict[tuple[int, int], tuple[Any, Any]] = {}

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """``a`` on the device (C-contiguous, of ``dtype``)."""
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def to_host(self, a: Any) -> np.ndarray:
        """A NumPy copy of a device array."""
        if isinstance(a, np.ndarray):
            return a.copy()
        return a.get()  # type: ignore[no-any-return]

    def kernel_view(self, a: Any) -> Any:
        """What a kernel is handed for the device array ``a``: made once per buffer, it shares
        ``a``'s memory (writes through either are seen by the other)."""
        if self.simulator or a is None:
            return a
        from numba import cuda

        return cuda.as_cuda_array(a)

    def launch_block(self, kernel: Any, *args: Any) -> None:
        """Run ``kernel(*args)`` as one block of :attr:`block_threads` threads (kernels that
        reduce over a whole buffer and act on the result, without a host round trip)."""
        key = (id(kernel), -1)
        run = self._launchers.get(key)
        if run is None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*under-utilization")
                run = (kernel, kernel[1, self.block_threads])
            self._launchers[key] = run
        run[1](*args)

    def launch(self, kernel: Any, n: int, *args: Any) -> None:
        """Run ``kernel(*args)`` over ``n`` elements (kernels loop with a grid stride)."""
        if n <= 0:
            return
        tpb = self.threads
        blocks = min(self.max_blocks, (n + tpb - 1) // tpb)
        key = (id(kernel), blocks)
        run = self._launchers.get(key)
        if run is None:
            # Small grids are by design here (one launch per layer and step, sized to the
            # state): numba's low-occupancy advice is not for the user of an analysis.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*under-utilization")
                run = kernel[blocks, tpb]
            self._launchers[key] = (kernel, run)  # the kernel kept alive: its id stays unique
        else:
            run = run[1]
        run(*args)


_CACHE: dict[bool, Arrays] = {}


def arrays() -> Arrays:
    """The seam for this machine; :class:`CudaUnavailableError` when CUDA cannot run."""
    info = cuda_status()
    if not info.available:
        raise CudaUnavailableError(f'backend="cuda" cannot run here: {info.reason}')
    got = _CACHE.get(info.simulator)
    if got is None:
        if info.simulator:
            got = Arrays(np, True)
        else:
            import cupy

            got = Arrays(cupy, False)
        _CACHE[info.simulator] = got
    return got

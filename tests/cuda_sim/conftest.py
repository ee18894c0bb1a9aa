"""The CUDA simulator battery: collected only in its own pytest session, started by
tests/test_cuda_backend.py with NUMBA_ENABLE_CUDASIM=1 (numba reads the variable once, when it
is imported, so these tests cannot share a session with the rest of the suite)."""

from __future__ import annotations

import os
import sys
import threading
import traceback
from typing import Any

import numpy as np

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
    collect_ignore_glob = ["test_*.py"]
else:
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    # The simulator runs a block's threads as Python threads and waits on them by polling: at
    # the default switch interval (5 ms) every cuda.syncthreads() of the single-block
    # reduction kernels costs milliseconds. Switching threads every 10 us is ~10x faster.
    sys.setswitchinterval(1e-5)

    _LOCK = threading.Lock()
    _array = kernelapi.FakeCUDAShared.array

    def _shared_array(self: Any, shape: Any, dtype: Any, alignment: Any = None) -> Any:
        """The simulator's cuda.shared.array with its look-up and insertion under a lock: two
        threads of a block arriving at once could otherwise each make their own array (seen
        as wrong block reductions once threads switch often)."""
        if shape == 0 or alignment is not None:
            return _array(self, shape, dtype, alignment)
        if not isinstance(dtype, np.dtype) and not isinstance(dtype, type):
            dtype = numpy_support.as_dtype(dtype)
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]  # as the simulator keys
        with _LOCK:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = _shared_array

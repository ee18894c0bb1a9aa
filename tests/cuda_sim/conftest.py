"""The CUDA simulator battery: collected only in its own pytest session, started by
tests/test_cuda_backend.py with NUMBA_ENABLE_CUDASIM=1 (numba reads the variable once, when it
is imported, so these tests cannot share a session with the rest of the suite)."""

from __future__ import annotations

import os
import sys

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
    collect_ignore_glob = ["test_*.py"]
else:
    # The simulator runs a block's threads as Python threads and waits on them by polling: at
    # the default switch interval (5 ms) every cuda.syncthreads() of the single-block
    # reduction kernels costs milliseconds. Switching threads more often is ~10x faster.
    sys.setswitchinterval(1e-4)

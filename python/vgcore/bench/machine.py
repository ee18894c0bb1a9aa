"""The machine's own limits, measured in the same run as the workloads."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from typing import Any


def machine_info() -> dict[str, Any]:
    """CPU model, cores this process may use, library versions."""
    import numpy as np

    import vgcore

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(),
        "vgcore": vgcore.__version__,
        "numpy": np.__version__,
    }
    for mod in ("torch", "jax"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


def gemm_peak(threads: int, size: int = 1024, repeat: int = 5) -> dict[str, float]:
    """GFLOP/s of a square GEMM through vgcore's own BLAS (scipy-openblas32), float32 and
    float64, at ``threads`` BLAS threads."""
    from vgcore._loader import _core

    saved = _core.blas_get_num_threads()
    _core.blas_set_num_threads(threads)
    try:
        return {
            "float32": _core.blas_gemm_gflops(size, size, size, False, repeat),
            "float64": _core.blas_gemm_gflops(size, size, size, True, repeat),
        }
    finally:
        _core.blas_set_num_threads(saved)


_RSS_SCRIPT = r"""
import json, resource, sys
import numpy as np
import vgcore
spec = json.loads(sys.argv[1])
T, N, chunk = spec["T"], spec["N"], 1000
rng = np.random.default_rng(0)
model = vgcore.LSTM.from_sizes(64, N, seed=0, dtype=np.float32)
def chunks():
    for t0 in range(0, T, chunk):
        yield rng.standard_normal((min(chunk, T - t0), 1, 64)).astype(np.float32)
input_mb = 0.0
if spec["analysis"] == "lyapunov":
    vgcore.lyapunov(model, chunks(), k=spec["k"])
else:  # takes the whole input array: its size is reported apart
    x = rng.standard_normal((T, 1, 64)).astype(np.float32)
    input_mb = x.nbytes / 2**20
    vgcore.jacobian_singular_values(model, x)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_rss_mb": rss, "input_mb": input_mb}))
"""


def peak_rss_mb(analysis: str, T: int, N: int, k: int = 32) -> dict[str, float]:
    """Peak resident memory (MB) of a fresh process running one analysis of an LSTM over T
    steps (lyapunov streams its input in chunks of 1000 steps; singular values take the whole
    input array, whose size is reported as ``input_mb``)."""
    spec = json.dumps({"analysis": analysis, "T": T, "N": N, "k": k})
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, spec], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))

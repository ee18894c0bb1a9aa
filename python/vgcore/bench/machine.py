"""The machine and its own limits, measured in the same run as the workloads: CPU, library
versions, GEMM throughput through vgcore's BLAS, NumPy's BLAS thread count, peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _isa() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln for ln in fh if ln.startswith("flags")), "").split()
    except OSError:
        return ""
    for name in ("avx512f", "avx2", "sse4_2"):
        if name in flags:
            return name
    return ""


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        return version(mod)
    except PackageNotFoundError:
        return None


def _blas_kernels() -> str:
    """OpenBLAS's kernel family in vgcore's copy, and what chose it."""
    from vgcore._loader import blas_corename, requested_coretype

    if requested_coretype:
        why = f"VGCORE_BLAS_CORETYPE={requested_coretype}"
    elif os.environ.get("OPENBLAS_CORETYPE"):
        why = f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} in the environment"
    else:
        why = "OpenBLAS's CPU detection"
    return f"{blas_corename()} ({why})"


def machine_info() -> dict[str, Any]:
    """CPU model, cores this process may use, library versions (without importing the peers)."""
    import numpy as np

    import vgcore

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "isa": _isa(),
        "cores": cores,
        "python": platform.python_version(),
        "vgcore": vgcore.__version__,
        "numpy": np.__version__,
        "numpy_blas": numpy_blas_name(),
        "vgcore_blas": "scipy-openblas32 " + (_version("scipy-openblas32") or "?"),
        "vgcore_blas_kernels": _blas_kernels(),
    }
    for mod in ("torch", "jax", "jaxlib"):
        info[mod] = _version(mod)
    try:
        with open("/proc/loadavg") as fh:
            info["loadavg_at_start"] = float(fh.read().split()[0])
    except OSError:
        pass
    return info


# ---- GEMM through vgcore's own BLAS ---------------------------------------------------------


def gemm_gflops(m: int, n: int, k: int, threads: int, float64: bool = False) -> float:
    """Best GFLOP/s of an ``m x k`` by ``k x n`` GEMM through vgcore's BLAS (the
    scipy-openblas32 it is linked against, via ``_core.blas_gemm_gflops``) at ``threads`` BLAS
    threads. Small shapes are repeated until ~50 ms of work, so the best run is meaningful."""
    from vgcore._loader import _core

    repeat = int(min(2000, max(5, 0.05 * 50e9 / (2.0 * m * n * k))))
    saved = _core.blas_get_num_threads()
    _core.blas_set_num_threads(threads)
    try:
        return float(_core.blas_gemm_gflops(m, n, k, float64, repeat))
    finally:
        _core.blas_set_num_threads(saved)


def gemm_peak(threads: int, size: int = 1024) -> dict[str, float]:
    """GFLOP/s of a square ``size`` GEMM through vgcore's BLAS, float32 and float64."""
    return {
        "float32": gemm_gflops(size, size, size, threads),
        "float64": gemm_gflops(size, size, size, threads, float64=True),
    }


_PEAK_SCRIPT = """
import json, sys
from vgcore._loader import blas_corename
from vgcore.bench.machine import gemm_peak
print(json.dumps({"kernels": blas_corename(),
                  "peak": {th: gemm_peak(th) for th in map(int, sys.argv[1:])}}))
"""


def detected_kernels_peak(threads: Sequence[int]) -> dict[str, Any] | None:
    """The GEMM peak with the kernels OpenBLAS's own CPU detection picks, measured in a child
    process without ``OPENBLAS_CORETYPE`` / ``VGCORE_BLAS_CORETYPE`` (kernels are chosen once
    per process): the machine's limit where the environment forces older kernels. None when
    the child fails."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENBLAS_CORETYPE", "VGCORE_BLAS_CORETYPE")
    }
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_SCRIPT, *map(str, threads)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout
        doc = json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    doc["peak"] = {int(k): v for k, v in doc["peak"].items()}
    return doc


# ---- NumPy's BLAS (a different OpenBLAS build: scipy-openblas64 inside numpy's wheel) -------


@lru_cache(maxsize=1)
def _numpy_blas() -> tuple[Any, Any, str] | None:
    """(set_num_threads, get_num_threads, library path) of the OpenBLAS numpy loaded, found
    among the process's mapped libraries (what threadpoolctl does), or None."""
    import numpy  # noqa: F401  (loads its BLAS)

    try:
        with open("/proc/self/maps") as fh:
            paths = {ln.split()[-1] for ln in fh if "openblas" in ln.lower() and ".so" in ln}
    except OSError:
        return None
    for path in sorted(paths):
        if "scipy_openblas32" in path:  # vgcore's, not numpy's
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
                    return setter, getter, path
    return None


def numpy_blas_name() -> str:
    found = _numpy_blas()
    return os.path.basename(found[2]) if found else "unknown"


def set_numpy_threads(threads: int) -> bool:
    """Set the thread count of numpy's OpenBLAS; False if it cannot be found."""
    found = _numpy_blas()
    if found is None:
        return False
    found[0](int(threads))
    return True


def numpy_threads() -> int | None:
    found = _numpy_blas()
    return int(found[1]()) if found else None


# ---- peak memory ------------------------------------------------------------------------------

_RSS_SCRIPT = r"""
import json, resource, sys
import numpy as np
import vgcore

def hwm_mb():
    # VmHWM of this process (ru_maxrss after fork/exec can report the parent's size)
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass

spec = json.loads(sys.argv[1])
T, N, chunk, I = spec["T"], spec["N"], 1000, spec["input_size"]
cls = {"lstm": vgcore.LSTM, "gru": vgcore.GRU, "rnn": vgcore.RNN,
       "selective_ssm": vgcore.SelectiveSSM}[spec["kind"]]  # (input or d_model, N or d_state)
model = cls.from_sizes(I, N, seed=0, dtype=np.float32)
rng = np.random.default_rng(0)

def chunks():
    for t0 in range(0, T, chunk):
        yield rng.standard_normal((min(chunk, T - t0), 1, I)).astype(np.float32)

# warm the library (thread pool, BLAS buffers) so the baseline holds them
vgcore.lyapunov(model, rng.standard_normal((4, 1, I)).astype(np.float32), k=min(2, N))
input_mb = 0.0
x = None
if spec["analysis"] == "singular":  # takes the whole input array: its size is reported apart
    x = rng.standard_normal((T, 1, I)).astype(np.float32)
    input_mb = x.nbytes / 2**20
reset_hwm()
base = hwm_mb()
if spec["analysis"] == "lyapunov":
    vgcore.lyapunov(model, chunks(), k=spec["k"])
else:
    vgcore.jacobian_singular_values(model, x)
peak = hwm_mb()
print(json.dumps({"baseline_mb": base, "peak_rss_mb": peak, "input_mb": input_mb}))
"""


def peak_rss_mb(
    analysis: str, T: int, N: int, kind: str = "lstm", k: int = 32, input_size: int = 64
) -> dict[str, Any]:
    """Peak resident memory (MB) of a fresh process during one analysis over T steps of a
    recurrent model (float32, B = 1): ``lyapunov`` streams its input in chunks of 1000 steps;
    ``singular`` (jacobian_singular_values) takes the whole input array, whose size is reported
    as ``input_mb``. ``baseline_mb`` is the resident size just before the call (imports, model,
    thread pool); the peak is the VmHWM reset at that point."""
    spec = {"analysis": analysis, "T": T, "N": N, "kind": kind, "k": k, "input_size": input_size}
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
    )
    res: dict[str, Any] = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    res.update(spec)
    res["extra_mb"] = res["peak_rss_mb"] - res["baseline_mb"]
    return res


# ---- the thread trap: another process busy on the machine ---------------------------------


@contextlib.contextmanager
def busy_core(warmup_s: float = 0.3) -> Iterator[None]:
    """A child process spinning on one core for the duration (what a second job on a shared
    2-core machine does); the scheduler places it. Terminated on exit."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(warmup_s)
        yield
    finally:
        proc.kill()
        proc.wait()

"""Load the compiled core, making sure its BLAS (scipy-openblas32) is found first.

OpenBLAS picks its kernels once, when the library loads: by CPU detection, or as the
environment's ``OPENBLAS_CORETYPE`` says. That variable applies to every OpenBLAS in the
process (numpy's too), and some machines set it to an older family than the CPU has: on a
2-core AMD EPYC VM with ``OPENBLAS_CORETYPE=Haswell`` in the environment, float32 GEMM ran at
111 GFLOP/s on one thread (221 on two) against 213 (393) with the AVX-512 "SkylakeX" kernels
its detection picks. ``VGCORE_BLAS_CORETYPE`` sets the kernels of vgcore's own copy alone
(``VGCORE_BLAS_CORETYPE=SKYLAKEX``; unset or ``default``: OpenBLAS's usual choice);
:func:`blas_corename` tells which ones run.
"""

from __future__ import annotations

import ctypes
import os

#: The core type vgcore asked OpenBLAS for ("" when it left the usual choice alone).
requested_coretype = ""


def _coretype() -> str:
    choice = os.environ.get("VGCORE_BLAS_CORETYPE", "").strip()
    return "" if choice.lower() in ("", "default") else choice


def _blas_path() -> str:
    """The scipy-openblas32 library vgcore links (ImportError when the wheel is missing)."""
    import scipy_openblas32

    return os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(True))


def _preload_blas() -> None:
    # _core links libscipy_openblas.so by soname; RPATH points at the wheel's lib folder, and
    # loading it here first makes the lookup independent of where site-packages lives.
    global requested_coretype
    core = _coretype()
    saved = os.environ.get("OPENBLAS_CORETYPE")
    if core:
        # Set only while the library initialises (importing scipy_openblas32 already loads
        # it), so child processes and other OpenBLAS copies (numpy's) see the user's
        # environment unchanged.
        os.environ["OPENBLAS_CORETYPE"] = core
    try:
        path = _blas_path()
        if os.path.exists(path):
            ctypes.CDLL(path)
    except ImportError:  # pragma: no cover - a broken install
        return
    finally:
        if core:
            if saved is None:
                del os.environ["OPENBLAS_CORETYPE"]
            else:
                os.environ["OPENBLAS_CORETYPE"] = saved
    requested_coretype = core


def blas_corename() -> str:
    """The kernel family OpenBLAS runs (e.g. ``"SkylakeX"``, ``"Haswell"``)."""
    try:
        fn = ctypes.CDLL(_blas_path()).scipy_openblas_get_corename
    except (ImportError, OSError, AttributeError):  # pragma: no cover - a broken install
        return "unknown"
    fn.restype = ctypes.c_char_p
    return (fn() or b"unknown").decode()


_preload_blas()

from vgcore import _core  # noqa: E402

__all__ = ["_core", "blas_corename", "requested_coretype"]

"""Load the compiled core, making sure its BLAS (scipy-openblas32) is found first."""

from __future__ import annotations

import ctypes
import os


def _preload_blas() -> None:
    # _core links libscipy_openblas.so by soname; RPATH points at the wheel's lib folder, and
    # loading it here first makes the lookup independent of where site-packages lives.
    try:
        import scipy_openblas32
    except ImportError:  # pragma: no cover - a broken install
        return
    path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(True))
    if os.path.exists(path):
        ctypes.CDLL(path)


_preload_blas()

from vgcore import _core  # noqa: E402

__all__ = ["_core"]

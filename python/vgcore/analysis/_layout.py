"""Sequence layout: the analyses run time-major; a model keeps the layout of its module.

A recurrent model built by vgcore takes ``(T, B, features)``. One imported from a module with
``batch_first=True`` takes ``(B, T, features)``, exactly the batch that module takes, so the
batch a user feeds the module can be fed to the analysis unchanged (never read as ``T = B``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vgcore._validation import as_float_array


def layout(model: Any) -> str:
    """``"(B, T, ...)"`` for a batch-first model, else ``"(T, B, ...)"``."""
    return "(B, T, ...)" if getattr(model, "batch_first", False) else "(T, B, ...)"


def time_major(
    model: Any,
    x: Any,
    name: str,
    dtype: np.dtype,
    features: int,
    *,
    steps: int | None = None,
    batch: int | None = None,
    allow_empty: bool = False,
) -> np.ndarray:
    """``x`` as a C-contiguous ``(T, B, features)`` array of ``dtype``.

    Parameters
    ----------
    model : RecurrentModel
        Its ``batch_first`` decides how ``x`` is read.
    x : array_like of shape (T, B, features), or (B, T, features) for a batch-first model
    name : str
        The argument's name, for errors.
    steps, batch : int, optional
        Required lengths (None: any).
    """
    batch_first = bool(getattr(model, "batch_first", False))
    shape = (batch, steps, features) if batch_first else (steps, batch, features)
    label = f"{name} (batch_first: (B, T, {features}))" if batch_first else name
    arr = as_float_array(x, label, dtype, ndim=3, shape=shape, allow_empty=True)
    t_axis = 1 if batch_first else 0
    if arr.shape[t_axis] == 0 and not allow_empty:
        raise ValueError(
            f"{name} is an empty sequence (T = 0, shape {arr.shape}); at least one step is needed"
        )
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if batch_first:
        arr = np.ascontiguousarray(arr.transpose(1, 0, 2))
    return arr


def output_cotangent(
    model: Any, cotangent: Any, dtype: np.dtype, width: int, steps: int, batch: int
) -> np.ndarray:
    """A loss's cotangent on a sequence model's output, as the core takes it: ``(T, B, width)``
    time-major (a loss on every step, in the model's layout) or ``(B, width)`` (on the last
    output), C-contiguous, of ``dtype``."""
    c = np.asarray(cotangent)
    if c.ndim == 3:
        return time_major(model, c, "cotangent", dtype, width, steps=steps, batch=batch)
    return as_float_array(c, "cotangent", dtype, shape=(batch, width))

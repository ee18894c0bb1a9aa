"""Plumbing shared by the Jacobian analyses: models and inputs in the form the core takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vgcore._validation import as_float_array, resolve_dtype
from vgcore.analysis._layout import time_major
from vgcore.models import Model, is_model, model_kinds

ProgressCallback = Callable[[int, int], Any]
#: The core reports this total while the length of a streamed input is unknown.
_UNKNOWN_TOTAL = 2**63


def check_model(model: Any) -> Model:
    if not is_model(model):
        names = ", ".join(k.cls.__name__ for k in model_kinds())
        raise TypeError(f"model must be a vgcore model ({names}), got {type(model).__name__}")
    model._checked()  # parameters may have been changed in place since construction
    return model


def compute_dtype(model: Model, dtype: Any) -> np.dtype:
    return model.dtype if dtype is None else resolve_dtype(dtype)


def core_model(model: Model, dt: np.dtype) -> dict[str, Any]:
    """The model as the compiled core takes it (arrays in dtype ``dt``), for a Jacobian
    analysis: refused where the per-sample step Jacobians are not defined."""
    spec = model.to_spec(dt)
    obstacle = model.jacobian_obstacle()
    if obstacle:
        raise ValueError(obstacle)
    return spec


@dataclass(frozen=True)
class StepInputs:
    """The inputs of a Jacobian analysis in the core's layout.

    ``x``: ``(B, n0)`` for a depth-axis model (``h_0 = x``), ``(T, B, I)`` time-major for a
    time-axis model; ``h0``: ``(B, state_dim)`` rows or None (zeros); ``steps``: layers or
    time steps.
    """

    x: np.ndarray
    h0: np.ndarray | None
    batch: int
    steps: int


def step_inputs(model: Model, x: Any, h0: Any, dt: np.dtype) -> StepInputs:
    """``x`` (and ``h0``) checked and converted for a Jacobian analysis of ``model``."""
    if model.axis == "depth":
        if h0 is not None:
            raise ValueError("h0 is only meaningful for recurrent models; an MLP takes x alone")
        xa = as_float_array(x, "x", dt, ndim=2, shape=(None, model.state_dim))
        return StepInputs(xa, None, xa.shape[0], model.num_layers)
    xa = sequence(model, x, dt)
    return StepInputs(xa, initial_state(model, h0, xa.shape[1], dt), xa.shape[1], xa.shape[0])


def sequence(model: Any, x: Any, dt: np.dtype, name: str = "x") -> np.ndarray:
    """A (T, B, input_size) array with a clear error for an empty sequence; a batch-first
    model takes (B, T, input_size), as its module does."""
    return time_major(model, x, name, dt, model.input_size)


def initial_state(model: Any, h0: Any, batch: int, dt: np.dtype) -> np.ndarray | None:
    """h0 as (B, D) state rows: the parts of a multi-part state (an LSTM's pair (h0, c0))
    side by side; None means zeros. A stacked model takes PyTorch's (num_layers, B, N) per
    part, and its rows hold the layers one after the other, ``[h^0, (c^0), h^1, ...]``."""
    if h0 is None:
        return None
    N = model.hidden_size
    parts = model.state_names
    L = model.num_layers * model.num_directions
    shape = (L, batch, N) if model.stacked else (batch, N)
    what = "(num_layers, B, N)" if model.stacked else "(B, N)"
    if len(parts) == 1:
        rows = [as_float_array(h0, "h0", dt, shape=shape)]
    else:
        pair = ", ".join(f"{p}0" for p in parts)
        if not (isinstance(h0, (tuple, list)) and len(h0) == len(parts)):
            raise TypeError(
                f"h0 for an {type(model).__name__} must be a tuple ({pair}) of {what} arrays"
            )
        rows = [
            as_float_array(h, f"h0[{i}] ({p}0)", dt, shape=shape)
            for i, (h, p) in enumerate(zip(h0, parts))
        ]
    if not model.stacked:
        return np.ascontiguousarray(np.concatenate(rows, axis=1))
    # (L, B, parts * N) -> (B, L * parts * N): layer-major rows
    per_layer = np.concatenate(rows, axis=2)
    return np.ascontiguousarray(per_layer.transpose(1, 0, 2).reshape(batch, -1))


def check_progress(progress: Any) -> Any:
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable(done, total) or None, got {progress!r}")
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(done, 0 if total >= _UNKNOWN_TOTAL else total)

    return report

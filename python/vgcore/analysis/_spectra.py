"""Plumbing shared by the Jacobian analyses: models and inputs in the form the core takes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vgcore._validation import as_float_array, resolve_dtype
from vgcore.analysis._layout import time_major
from vgcore.models import LSTM, MLP, Model, RecurrentModel

ProgressCallback = Callable[[int, int], Any]
#: The core reports this total while the length of a streamed input is unknown.
_UNKNOWN_TOTAL = 2**63


def check_model(model: Any) -> Model:
    if not isinstance(model, (MLP, RecurrentModel)):
        raise TypeError(f"model must be a vgcore MLP, RNN, LSTM or GRU, got {type(model).__name__}")
    model._checked()  # parameters may have been changed in place since construction
    return model


def compute_dtype(model: Model, dtype: Any) -> np.dtype:
    return model.dtype if dtype is None else resolve_dtype(dtype)


def core_model(model: Model, dt: np.dtype) -> dict[str, Any]:
    """The model as the compiled core takes it (arrays in dtype ``dt``)."""
    if isinstance(model, MLP):
        specs = model._params_as(dt)
        bad = [i for i, s in enumerate(specs) if s["norm"] == "batchnorm"]
        if bad:
            raise ValueError(
                f"layer {bad[0]} uses BatchNorm with batch statistics (train mode), which "
                "couples the samples of a batch: the per-sample Jacobian d h_l / d h_(l-1) is "
                "not defined. Eval-mode BatchNorm (running_means / running_vars given, or an "
                "imported module in eval()) and LayerNorm are supported"
            )
        return {"kind": "mlp", "layers": specs}
    assert isinstance(model, RecurrentModel)
    wih, whh, bih, bhh = model._params_as(dt)
    return {"kind": model.cell, "weight_ih": wih, "weight_hh": whh, "bias_ih": bih, "bias_hh": bhh}


def state_dim(model: Model) -> int:
    """Dimension of the state a step maps (MLP: the input width)."""
    if isinstance(model, MLP):
        return model.input_size
    assert isinstance(model, RecurrentModel)
    return model.state_size


def mlp_input(model: MLP, x: Any, h0: Any, dt: np.dtype) -> np.ndarray:
    if h0 is not None:
        raise ValueError("h0 is only meaningful for recurrent models; an MLP takes x alone")
    return as_float_array(x, "x", dt, ndim=2, shape=(None, model.input_size))


def sequence(model: RecurrentModel, x: Any, dt: np.dtype, name: str = "x") -> np.ndarray:
    """A (T, B, input_size) array with a clear error for an empty sequence; a batch-first
    model takes (B, T, input_size), as its module does."""
    return time_major(model, x, name, dt, model.input_size)


def initial_state(model: RecurrentModel, h0: Any, batch: int, dt: np.dtype) -> np.ndarray | None:
    """h0 as (B, D) state rows: an LSTM's pair (h0, c0) side by side; None means zeros."""
    if h0 is None:
        return None
    N = model.hidden_size
    if isinstance(model, LSTM):
        if not (isinstance(h0, (tuple, list)) and len(h0) == 2):
            raise TypeError("h0 for an LSTM must be a pair (h0, c0) of (B, N) arrays")
        h = as_float_array(h0[0], "h0[0] (h0)", dt, shape=(batch, N))
        c = as_float_array(h0[1], "h0[1] (c0)", dt, shape=(batch, N))
        return np.ascontiguousarray(np.concatenate([h, c], axis=1))
    return as_float_array(h0, "h0", dt, shape=(batch, N))


def check_progress(progress: Any) -> Any:
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable(done, total) or None, got {progress!r}")
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(done, 0 if total >= _UNKNOWN_TOTAL else total)

    return report

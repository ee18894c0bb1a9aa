"""Gradient flow of a model kind without a fused sweep: the core's one generic BPTT sweep over
its layer ops (``_core.model_gradient_flow``).

Any layer kind the core describes is analysed here from its op's step and VJP alone (the
state-space layers today). The dense stacks and the RNN / LSTM / GRU stacks keep their fused
sweeps (more statistics, batched GEMMs) and are checked against this one in the tests.

What the generic sweep measures: ``log ||dL/dh_t||`` of the model's state at every step, the
mean and standard deviation of the state leaving each step, and the output. The loss is on the
output segment of the state (a single layer's whole state, e.g. a state-space layer's ``h``):
``L = 0.5 ||h_T||^2`` by default, or a given ``dL/dh_T`` (B, n_out) or per-step ``dL/dh_t``
(T, B, n_out). Saturation, parameter and input gradients are the fused sweeps' extras.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vgcore._loader import _core
from vgcore._validation import as_float_array, check_memory
from vgcore.analysis._layout import time_major
from vgcore.models import Model

#: gradient_flow options the generic sweep does not measure (name -> what was asked).
_EXTRAS = ("param_grads", "keep_states", "clip_norm", "dead_units", "input_grads")


def generic_flow(
    model: Model,
    m: Model,
    x: Any,
    dt: np.dtype,
    *,
    h0: Any,
    cotangent: Any,
    keep_grads: bool,
    threads: int,
    progress: Any,
    rescale: bool,
    asked: dict[str, bool],
    check_result: Callable[[dict[str, Any], str], None],
) -> Any:
    """:func:`vgcore.gradient_flow` of a time-axis model through the generic sweep.

    Parameters
    ----------
    model, m : Model
        The model as given and its checked copy.
    x : array_like of shape (T, B, input_size)
    h0 : array_like of shape (B, state_dim), or None (zeros)
    cotangent : array_like of shape (B, n_out) or (T, B, n_out), or None
        ``n_out``: the output segment's width (``model.hidden_size``).
    asked : dict of str to bool
        The fused sweeps' extras and whether each was asked for (refused by name).
    """
    from vgcore.analysis.gradient_flow import GradientFlow

    wanted = [k for k in _EXTRAS if asked.get(k)]
    if wanted:
        raise ValueError(
            f"{', '.join(wanted)} {'is' if len(wanted) == 1 else 'are'} not measured for a "
            f"{type(model).__name__} yet: its gradient flow runs the generic sweep (state "
            "gradient norms, state statistics, the output and kept gradients)"
        )
    if m.axis != "time":
        raise ValueError(f"the generic sweep analyses models over time, got a {m.axis} model")
    D, n_out = m.state_dim, int(getattr(m, "hidden_size", m.state_dim))
    xshape = tuple(getattr(x, "shape", ()))
    if len(xshape) == 3:
        T, B = xshape[0], xshape[1]
        per_state = (T + 1) * B * D * (2 if keep_grads else 1)
        check_memory(dt.itemsize * per_state * 4, f"gradient_flow on x of shape {xshape}")
    xa = time_major(m, x, "x", dt, m.input_size)
    T, B, _ = xa.shape
    h0a = None if h0 is None else as_float_array(h0, "h0", dt, shape=(B, D))
    cot = None
    if cotangent is not None:
        c = np.asarray(cotangent)
        if c.ndim == 3:
            cot = time_major(m, c, "cotangent", dt, n_out, steps=T, batch=B)
        else:
            cot = as_float_array(c, "cotangent", dt, shape=(B, n_out))
    stats = _core.model_gradient_flow(
        m.to_spec(dt, check_finite=False),
        xa,
        h0a,
        cot,
        bool(keep_grads),
        threads,
        progress,
        rescale,
    )
    if len(stats["segments"]) != 1:  # a single layer of one part: the models routed here
        raise NotImplementedError(
            f"the generic sweep returned {len(stats['segments'])} state segments; "
            "gradient_flow reports single-layer, single-part models through it"
        )
    row = {
        "log_grad_norms": stats["log_grad_norms"][0],
        "act_mean": stats["act_mean"][0],
        "act_std": stats["act_std"][0],
        "preact_nonfinite": stats["nonfinite"],
        "grads": stats["grads"],
    }
    check_result(row, "step")
    return GradientFlow(
        model=model,
        kind=model.kind,
        dtype=dt,
        batch_size=B,
        log_grad_norms=row["log_grad_norms"],
        act_mean=row["act_mean"],
        act_std=row["act_std"],
        saturation=np.full(T, np.nan),
        output=stats["y"],
        grads=stats["grads"],
        low_derivative=[None] * T,
    )

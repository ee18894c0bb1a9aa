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
from vgcore.analysis._layout import output_cotangent, time_major
from vgcore.models import Model

#: gradient_flow options the generic sweep does not measure (refused by name when asked).
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
        The state rows the core steps: every layer's parts side by side (``[h^0, c^0, h^1,
        ...]``).
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
    cot = None if cotangent is None else output_cotangent(m, cotangent, dt, n_out, T, B)
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
    # Segments (layer, part, offset, width): part 0 is a layer's output state (h), part 1 a
    # second state part (an LSTM-like cell's c); more parts are not reported separately yet.
    segs = [tuple(int(v) for v in g) for g in stats["segments"]]
    layers = 1 + max(g[0] for g in segs)
    if any(g[1] > 1 for g in segs):
        raise NotImplementedError("gradient_flow reports states of at most two parts (h, c)")
    rows = {(g[0], g[1]): i for i, g in enumerate(segs)}

    def grid(a: np.ndarray, part: int) -> np.ndarray | None:
        if (0, part) not in rows:
            return None
        out = np.stack([a[rows[(layer, part)]] for layer in range(layers)])
        return out[0] if layers == 1 else out

    def kept(part: int) -> np.ndarray | None:
        g = stats["grads"]
        if g is None or (0, part) not in rows:
            return None
        cols = [segs[rows[(layer, part)]][2:] for layer in range(layers)]  # (offset, width)
        out = np.stack([g[..., off : off + w] for off, w in cols])
        return out[0] if layers == 1 else out

    row = {
        "log_grad_norms": grid(stats["log_grad_norms"], 0),
        "log_cell_grad_norms": grid(stats["log_grad_norms"], 1),
        "act_mean": grid(stats["act_mean"], 0),
        "act_std": grid(stats["act_std"], 0),
        "preact_nonfinite": stats["nonfinite"],
        "grads": kept(0),
        "cell_grads": kept(1),
    }
    if layers == 1:
        check_result(row, "step")
    else:
        for layer in range(layers):
            per = {
                k: (v[layer] if k != "preact_nonfinite" and v is not None else v)
                for k, v in row.items()
            }
            try:
                check_result(per, "step")
            except FloatingPointError as exc:
                raise FloatingPointError(f"layer {layer}: {exc}") from None
    shape = (T,) if layers == 1 else (layers, T)
    return GradientFlow(
        model=model,
        kind=model.kind,
        dtype=dt,
        batch_size=B,
        log_grad_norms=row["log_grad_norms"],
        log_cell_grad_norms=row["log_cell_grad_norms"],
        act_mean=row["act_mean"],
        act_std=row["act_std"],
        saturation=np.full(shape, np.nan),
        output=stats["y"],
        grads=row["grads"],
        cell_grads=row["cell_grads"],
        low_derivative=[None] * T,
    )

"""Oracles for the state-space layers: the reference torch modules' step (vgcore.reference.ssm)
on the flat state rows the core uses, and the SSM entries for the conformance battery.

State rows: an LTI layer's ``h`` (N real coordinates, or (Re, Im) pairs for complex modes: the
module's ``(N, 2)`` flattened); a selective block's ``(h, conv)``, ``h`` row-major ``(d_inner,
d_state)`` then the convolution's buffer ``(d_inner, d_conv - 1)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import vgcore
from oracles.kinds import JACOBIAN_ANALYSES, TIME_MAJOR, Kind


def _rows(f: Any) -> Any:
    """``f`` on rows (B, D), (B, I) also taking one row (D,), (I,) (as under vmap)."""

    def g(s: Any, x: Any) -> Any:
        if s.dim() == 1:
            return f(s[None], x[None])[0]
        return f(s, x)

    return g


def ssm_step_fn(torch: Any, model: Any) -> Any:
    """The float64 reference module's state update ``f(state, x_t) -> state`` on state rows
    ``(B, D)`` and inputs ``(B, input_size)``, or one row of each (parameters without
    gradients)."""
    module = model.astype(np.float64).to_torch()
    for p in module.parameters():
        p.requires_grad_(False)
    if model.kind == "ssm":
        shape = module.state_shape

        def f(s: Any, x: Any) -> Any:
            return module.step(s.reshape(s.shape[0], *shape), x).reshape(s.shape[0], -1)

        return _rows(f)
    di, n, dc = model.d_inner, model.d_state, model.d_conv

    def g(s: Any, x: Any) -> Any:
        B = s.shape[0]
        h2, c2 = module.step(
            (s[:, : di * n].reshape(B, di, n), s[:, di * n :].reshape(B, di, dc - 1)), x
        )
        return torch.cat((h2.reshape(B, -1), c2.reshape(B, -1)), dim=1)

    return _rows(g)


def ssm_output_fn(torch: Any, model: Any) -> Any:
    """The reference module's output ``y_t`` from the state entering a step and ``x_t``
    (``(B, D)``, ``(B, input_size)`` -> ``(B, d)``): what a layer above reads."""
    module = model.astype(np.float64).to_torch()
    f = ssm_step_fn(torch, model)
    if model.kind == "ssm":
        shape = module.state_shape
        return _rows(lambda s, x: module.output(f(s, x).reshape(s.shape[0], *shape), x))
    di, n, dc = model.d_inner, model.d_state, model.d_conv

    def g(s: Any, x: Any) -> Any:
        B = s.shape[0]
        state = (s[:, : di * n].reshape(B, di, n), s[:, di * n :].reshape(B, di, dc - 1))
        return module.step_output(state, x)[1]

    return _rows(g)


# The battery's entries (tests/oracles/kinds.py): the Jacobian analyses; gradient flow follows
# the generic sweep over Model<T>. The selective block's buffer is a nilpotent shift: only the
# top d_inner * d_state exponents are finite.
SSM_KINDS: list[Kind] = [
    Kind(
        "ssm_complex",
        lambda: vgcore.models.SSM.from_sizes(3, 3, init="s4d_lin", dt_min=0.05, dt_max=0.5, seed=1),
        layout=TIME_MAJOR,
        analyses=frozenset(JACOBIAN_ANALYSES),
    ),
    Kind(
        "ssm_real",
        lambda: vgcore.models.SSM.from_sizes(
            3, 4, init="s4d_real", dt_min=0.05, dt_max=0.5, seed=2
        ),
        layout=TIME_MAJOR,
        analyses=frozenset(JACOBIAN_ANALYSES),
    ),
    Kind(
        "selective_ssm",
        lambda: vgcore.models.SelectiveSSM.from_sizes(3, 2, expand=1, d_conv=2, dt_rank=1, seed=3),
        layout=TIME_MAJOR,
        analyses=frozenset(JACOBIAN_ANALYSES),
        lyapunov_k=6,
    ),
]

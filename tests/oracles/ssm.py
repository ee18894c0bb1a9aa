"""Oracles for the state-space layers: the reference torch modules' step (vgcore.reference.ssm)
on the flat state rows the core uses, and their gradient flow by autograd over the steps.

State rows: an LTI layer's ``h`` (N real coordinates, or (Re, Im) pairs for complex modes: the
module's ``(N, 2)`` flattened); a selective block's ``(h, conv)``, ``h`` row-major ``(d_inner,
d_state)`` then the convolution's buffer ``(d_inner, d_conv - 1)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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
    if model.kind == "ssm_stack":  # the reference stack steps flat state rows itself
        return _rows(module.step)
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
    if model.kind == "ssm_stack":
        return _rows(lambda s, x: module.step_output(s, x)[1])
    if model.kind == "ssm":
        shape = module.state_shape
        return _rows(lambda s, x: module.output(f(s, x).reshape(s.shape[0], *shape), x))
    di, n, dc = model.d_inner, model.d_state, model.d_conv

    def g(s: Any, x: Any) -> Any:
        B = s.shape[0]
        state = (s[:, : di * n].reshape(B, di, n), s[:, di * n :].reshape(B, di, dc - 1))
        return module.step_output(state, x)[1]

    return _rows(g)


def ssm_state_flow(torch, model, x, h0=None, cotangent=None):
    """Gradient flow of a state-space layer by float64 autograd through the reference step:
    ``dL/ds_t`` for every state ``s_0..s_T`` (a list of (B, D) arrays) and the last state, for
    ``L = 0.5 ||s_T||^2``, a given ``dL/ds_T`` (B, D) or per-step ``dL/ds_t`` (T, B, D) added
    at every step's new state (the loss the generic sweep takes on the layer's state).
    ``x``: (T, B, I) time-major; ``h0``: (B, D) state rows or None (zeros)."""
    f = ssm_step_fn(torch, model)
    x = torch.from_numpy(np.asarray(x, np.float64))
    T, B = x.shape[0], x.shape[1]
    D = model.state_dim
    s0 = (
        torch.zeros(B, D, dtype=torch.float64)
        if h0 is None
        else torch.tensor(h0, dtype=torch.float64)
    )
    states = [s0.clone().requires_grad_()]
    for t in range(T):
        s = f(states[-1], x[t])
        s.retain_grad()
        states.append(s)
    if cotangent is None:
        loss = 0.5 * (states[-1] ** 2).sum()
    else:
        c = torch.from_numpy(np.asarray(cotangent, np.float64))
        if c.dim() == 3:
            loss = sum((c[t] * states[t + 1]).sum() for t in range(T))
        else:
            loss = (c * states[-1]).sum()
    loss.backward()
    grads = [np.zeros((B, D)) if s.grad is None else s.grad.numpy().copy() for s in states]
    return grads, states[-1].detach().numpy()

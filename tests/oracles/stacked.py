"""Gradient-flow oracle for stacked and bidirectional RNN / LSTM / GRU: PyTorch autograd in
float64 through explicit cell formulas, checked against the model's own ``nn`` module.

Position convention of the per-state arrays (shape ``(D, L, T+1, ...)``): in the forward
direction position ``t`` is the state after ``t`` steps (``t = 0`` the initial state); in the
reverse direction position ``t`` is the state after it has consumed ``x_{T-1} .. x_t`` (its
output at time ``t``), position ``T`` its initial state. So ``output[t]`` is the forward
state at ``t + 1`` next to the reverse state at ``t``.

``dL/dh`` is the derivative with respect to the hidden state as PyTorch computes it with
``retain_grad``: through every use of ``h^{l,d}`` (the next step of its own direction, the
layer above, the loss). ``dL/dc`` (LSTM) holds ``h`` fixed, as the single-layer oracle does:
the cell state enters only the next step of its own direction.
"""

from __future__ import annotations

import numpy as np

_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _log_norm(g: np.ndarray) -> float:
    """log ||g|| (Frobenius), scaled so tiny and huge gradients neither underflow nor overflow."""
    top = float(np.max(np.abs(g))) if g.size else 0.0
    if top == 0.0:
        return -np.inf
    return float(np.log(top) + np.log(np.linalg.norm(g / top)))


def _rel_err(a, e) -> float:
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    return float(np.max(np.abs(a - e)) / max(float(np.max(np.abs(e))), 1e-300))


def _initial(torch, value, name, L, D, B, N):
    if value is None:
        return torch.zeros(L * D, B, N, dtype=torch.float64)
    v = np.asarray(value, np.float64)
    if v.shape == (B, N) and L * D == 1:
        v = v[None]
    if v.shape != (L * D, B, N):
        raise ValueError(f"{name} must have shape (L*D, B, N) = {(L * D, B, N)}, got {v.shape}")
    return torch.tensor(v)


def _cell(torch, kind, nonlinearity, p, x, h, c):
    """One step of one layer in one direction, PyTorch's formulas: ``(h', c')``."""
    wih, whh, bih, bhh = p
    gx = x @ wih.T
    gh = h @ whh.T
    if bih is not None:
        gx = gx + bih
        gh = gh + bhh
    if kind == "rnn":
        a = gx + gh
        return (torch.tanh(a) if nonlinearity == "tanh" else torch.relu(a)), None
    if kind == "lstm":
        i, f, g, o = (gx + gh).chunk(4, -1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        # c as a state coordinate: h' is read from c_new, the next step from this copy,
        # so its .grad holds h' fixed
        return h_new, c_new * 1.0
    xr, xz, xn = gx.chunk(3, -1)
    hr, hz, hn = gh.chunk(3, -1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h, None


def _check_against_module(torch, model, xt, H0, C0, output, h_n, c_n):
    """The unrolled formulas reproduce ``model.to_torch()`` in float64 to 1e-12 relative."""
    mod = model.astype(np.float64).to_torch().double()
    xin = xt.transpose(0, 1) if model.batch_first else xt
    with torch.no_grad():
        if model.kind == "lstm":
            out, (hn, cn) = mod(xin, (H0, C0))
        else:
            out, hn = mod(xin, H0)
            cn = None
    if model.batch_first:
        out = out.transpose(0, 1)
    checks = [("output", out, output), ("h_n", hn, h_n)]
    if cn is not None:
        checks.append(("c_n", cn, c_n))
    for what, ref, mine in checks:
        err = _rel_err(mine, ref.numpy())
        assert err <= 1e-12, f"oracle {what} differs from nn.{type(mod).__name__}: {err:.3e}"


def torch_stacked_flow(model, x, *, h0=None, c0=None, cotangent=None):
    """Gradient flow of a (stacked, bidirectional) RNN / LSTM / GRU by float64 autograd.

    Parameters
    ----------
    model : vgcore.RNN, LSTM or GRU (any num_layers, bidirectional)
    x : array of shape (T, B, I), time-major whatever the model's ``batch_first``
    h0, c0 : arrays of shape (L*D, B, N), optional (zeros)
    cotangent : array of shape (T, B, D*N) or (B, D*N), optional
        ``dL/doutput`` on every step, or on the last; default ``L = 0.5 ||output[T-1]||^2``.

    Returns
    -------
    dict of numpy arrays
        ``log_grad_norms`` (D, L, T+1), ``log_cell_grad_norms`` (LSTM, else None),
        ``log_input_grad_norms`` (T,), ``log_param_grad_norms`` (kind -> (L, D)),
        ``output`` (T, B, D*N), ``h_n`` / ``c_n`` (L*D, B, N), ``grads`` / ``cell_grads`` /
        ``states`` / ``cell_states`` (D, L, T+1, B, N), ``input_grads`` (T, B, I),
        ``param_grads`` (kind -> list of L*D arrays in PyTorch order) and ``loss``.
    """
    import torch

    m = model.astype(np.float64)
    kind = m.kind
    nonlinearity = getattr(m, "nonlinearity", "tanh")
    lstm = kind == "lstm"
    L, D, N = m.num_layers, m.num_directions, m.hidden_size
    xt = torch.tensor(np.asarray(x, np.float64))
    if xt.ndim != 3 or xt.shape[2] != m.input_size:
        raise ValueError(f"x must have shape (T, B, {m.input_size}), got {tuple(xt.shape)}")
    T, B, _ = xt.shape
    H0 = _initial(torch, h0, "h0", L, D, B, N)
    C0 = _initial(torch, c0, "c0", L, D, B, N) if lstm else None

    def leaf(a):
        return None if a is None else torch.tensor(np.asarray(a, np.float64), requires_grad=True)

    params = [tuple(leaf(a) for a in p) for p in m.layer_params()]
    x_leaf = xt.clone().requires_grad_()
    hs = [[[None] * (T + 1) for _ in range(L)] for _ in range(D)]
    cs = [[[None] * (T + 1) for _ in range(L)] for _ in range(D)]
    inputs = [x_leaf[t] for t in range(T)]
    for layer in range(L):
        for d in range(D):
            k = layer * D + d
            h = H0[k].clone().requires_grad_()
            c = C0[k].clone().requires_grad_() if lstm else None
            first, steps = (0, range(T)) if d == 0 else (T, range(T - 1, -1, -1))
            hs[d][layer][first], cs[d][layer][first] = h, c
            for t in steps:
                h, c = _cell(torch, kind, nonlinearity, params[k], inputs[t], h, c)
                h.retain_grad()
                if c is not None:
                    c.retain_grad()
                pos = t + 1 if d == 0 else t
                hs[d][layer][pos], cs[d][layer][pos] = h, c
        inputs = [
            torch.cat([hs[0][layer][t + 1]] + ([hs[1][layer][t]] if D == 2 else []), -1)
            for t in range(T)
        ]
    output = torch.stack(inputs)
    if cotangent is None:
        loss = 0.5 * (output[T - 1] ** 2).sum()
    else:
        cot = torch.tensor(np.asarray(cotangent, np.float64))
        if cot.shape == (T, B, D * N):
            loss = (output * cot).sum()
        elif cot.shape == (B, D * N):
            loss = (output[T - 1] * cot).sum()
        else:
            raise ValueError(
                f"cotangent must have shape {(T, B, D * N)} or {(B, D * N)}, got {tuple(cot.shape)}"
            )
    loss.backward()

    def final(states):
        return torch.stack([states[k % D][k // D][T if k % D == 0 else 0] for k in range(L * D)])

    h_n = final(hs).detach()
    c_n = final(cs).detach() if lstm else None
    _check_against_module(torch, model, xt, H0, C0, output.detach(), h_n, c_n)

    def grid(states, attr):
        out = np.zeros((D, L, T + 1, B, N))
        for d in range(D):
            for layer in range(L):
                for pos, s in enumerate(states[d][layer]):
                    v = s if attr == "value" else s.grad
                    if v is not None:
                        out[d, layer, pos] = v.detach().numpy()
        return out

    def log_grid(g):
        return np.array(
            [[[_log_norm(g[d, la, t]) for t in range(T + 1)] for la in range(L)] for d in range(D)]
        )

    grads = grid(hs, "grad")
    cell_grads = grid(cs, "grad") if lstm else None
    input_grads = x_leaf.grad.detach().numpy().copy()
    param_grads = {}
    log_param = {}
    for j, name in enumerate(_KINDS):
        if params[0][j] is None:
            continue
        param_grads[name] = [p[j].grad.detach().numpy().copy() for p in params]
        log_param[name] = np.array([_log_norm(g) for g in param_grads[name]]).reshape(L, D)
    return {
        "log_grad_norms": log_grid(grads),
        "log_cell_grad_norms": None if cell_grads is None else log_grid(cell_grads),
        "log_input_grad_norms": np.array([_log_norm(input_grads[t]) for t in range(T)]),
        "log_param_grad_norms": log_param,
        "output": output.detach().numpy().copy(),
        "h_n": h_n.numpy().copy(),
        "c_n": None if c_n is None else c_n.numpy().copy(),
        "grads": grads,
        "cell_grads": cell_grads,
        "states": grid(hs, "value"),
        "cell_states": grid(cs, "value") if lstm else None,
        "input_grads": input_grads,
        "param_grads": param_grads,
        "loss": float(loss.detach()),
    }

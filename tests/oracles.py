"""Independent reference implementations in PyTorch (float64 autograd)."""

from __future__ import annotations

import numpy as np


def torch_mlp_flow(torch, model, x, cotangent=None, dtype=None):
    """Per-layer dL/dh (list, l = 0..L), output y, and parameter-gradient norms."""
    dtype = dtype or torch.float64
    net = model.astype(np.float64).to_torch().to(dtype)
    h = torch.tensor(np.asarray(x, dtype=np.float64), dtype=dtype, requires_grad=True)
    hs = [h]
    cur = h
    for mod in net:
        cur = mod(cur)
        if isinstance(mod, torch.nn.Linear):
            hs.append(cur)
        else:
            hs[-1] = cur
        cur.retain_grad()
    y = hs[-1]
    if cotangent is None:
        (0.5 * (y**2).sum()).backward()
    else:
        y.backward(torch.tensor(np.asarray(cotangent, dtype=np.float64), dtype=dtype))
    grads = [t.grad.detach().double().numpy() for t in hs]
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    wn = np.array([m.weight.grad.double().norm().item() for m in lin])
    bn = np.array([m.bias.grad.double().norm().item() if m.bias is not None else np.nan for m in lin])
    return grads, y.detach().double().numpy(), {"weight": wn, "bias": bn}


def torch_recurrent_flow(torch, model, x, h0=None, cotangent=None, dtype=None):
    """Per-step dL/dh_t (T+1, B, N), dL/dc_t for LSTM, h_T, and parameter-gradient norms.

    Uses the PyTorch *cell* modules in a Python loop with retain_grad, the natural user code.
    """
    dtype = dtype or torch.float64
    kind = model.kind
    m64 = model.astype(np.float64)
    N, I = m64.hidden_size, m64.input_size
    bias = m64.bias_ih is not None
    if kind == "rnn":
        cell = torch.nn.RNNCell(I, N, bias=bias, nonlinearity=m64.nonlinearity, dtype=dtype)
    elif kind == "lstm":
        cell = torch.nn.LSTMCell(I, N, bias=bias, dtype=dtype)
    else:
        cell = torch.nn.GRUCell(I, N, bias=bias, dtype=dtype)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.from_numpy(m64.weight_ih))
        cell.weight_hh.copy_(torch.from_numpy(m64.weight_hh))
        if bias:
            cell.bias_ih.copy_(torch.from_numpy(m64.bias_ih))
            cell.bias_hh.copy_(torch.from_numpy(m64.bias_hh))
    xt = torch.tensor(np.asarray(x, dtype=np.float64), dtype=dtype)
    T, B, _ = xt.shape
    if kind == "lstm":
        if h0 is None:
            h = torch.zeros(B, N, dtype=dtype, requires_grad=True)
            c = torch.zeros(B, N, dtype=dtype, requires_grad=True)
        else:
            h = torch.tensor(np.asarray(h0[0], np.float64), dtype=dtype, requires_grad=True)
            c = torch.tensor(np.asarray(h0[1], np.float64), dtype=dtype, requires_grad=True)
        hs, cs = [h], [c]
        for t in range(T):
            h, c = cell(xt[t], (h, c))
            h.retain_grad()
            c.retain_grad()
            hs.append(h)
            cs.append(c)
    else:
        if h0 is None:
            h = torch.zeros(B, N, dtype=dtype, requires_grad=True)
        else:
            h = torch.tensor(np.asarray(h0, np.float64), dtype=dtype, requires_grad=True)
        hs, cs = [h], []
        for t in range(T):
            h = cell(xt[t], h)
            h.retain_grad()
            hs.append(h)
    if cotangent is None:
        loss = 0.5 * (hs[-1] ** 2).sum()
    else:
        cot = np.asarray(cotangent, dtype=np.float64)
        if cot.ndim == 3:
            loss = sum((hs[t + 1] * torch.from_numpy(cot[t]).to(dtype)).sum() for t in range(T))
        else:
            loss = (hs[-1] * torch.from_numpy(cot).to(dtype)).sum()
    loss.backward()

    def grad_or_zero(t):
        return np.zeros((B, N)) if t.grad is None else t.grad.detach().double().numpy()

    grads = np.stack([grad_or_zero(t) for t in hs])
    cgrads = _lstm_state_partials(torch, cell, xt, hs, cs, cotangent, dtype) if cs else None
    pn = {
        "weight_ih": cell.weight_ih.grad.double().norm().item(),
        "weight_hh": cell.weight_hh.grad.double().norm().item(),
        "bias_ih": cell.bias_ih.grad.double().norm().item() if bias else np.nan,
        "bias_hh": cell.bias_hh.grad.double().norm().item() if bias else np.nan,
    }
    return grads, cgrads, hs[-1].detach().double().numpy(), pn


def _lstm_state_partials(torch, cell, xt, hs, cs, cotangent, dtype):
    """dL/dc_t as a state coordinate: the pair (h_t, c_t) is the state and the derivative holds
    h_t fixed. Each step's cell map (h, c) -> (h', c') is re-run on detached leaf inputs, and
    PyTorch VJPs of those maps are chained backwards."""
    T = len(hs) - 1
    cot = None if cotangent is None else np.asarray(cotangent, dtype=np.float64)
    if cot is None:
        gh = hs[-1].detach().clone()
    elif cot.ndim == 3:
        gh = torch.zeros_like(hs[-1])
    else:
        gh = torch.from_numpy(cot).to(dtype)
    gc = torch.zeros_like(cs[-1])
    out = [gc.detach().double().numpy()]
    for t in range(T, 0, -1):
        if cot is not None and cot.ndim == 3:
            gh = gh + torch.from_numpy(cot[t - 1]).to(dtype)
        h_in = hs[t - 1].detach().requires_grad_()
        c_in = cs[t - 1].detach().requires_grad_()
        h_out, c_out = cell(xt[t - 1], (h_in, c_in))
        gh, gc = torch.autograd.grad((h_out, c_out), (h_in, c_in), (gh, gc))
        out.append(gc.detach().double().numpy())
    return np.stack(out[::-1])

"""Gradient-flow oracles: PyTorch autograd (float64) through modules, cells and the layer
definition, and accurate-derivative variants for inputs far into saturation."""

from __future__ import annotations

import numpy as np

from oracles.jacobians import torch_cell_module


def torch_sequential_flow(torch, net, x, cotangent=None, dtype=None):
    """Run an ``nn.Sequential`` of Linear / norm / activation modules on ``x`` and backpropagate
    ``L = 0.5 ||y||^2`` (or the given ``dL/dy``): the layer outputs ``h_l`` (l = 0..L, a new
    ``h`` after each Linear and its following modules) and their gradients (float64 arrays)."""
    dtype = dtype or torch.float64
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
    return hs, [t.grad.detach().double().numpy() for t in hs]


def torch_mlp_flow(torch, model, x, cotangent=None, dtype=None):
    """Per-layer dL/dh (list, l = 0..L), output y, and parameter-gradient norms."""
    dtype = dtype or torch.float64
    net = model.astype(np.float64).to_torch().to(dtype)
    hs, grads = torch_sequential_flow(torch, net, x, cotangent, dtype)
    y = hs[-1]
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    wn = np.array([m.weight.grad.double().norm().item() for m in lin])
    bn = np.array(
        [m.bias.grad.double().norm().item() if m.bias is not None else np.nan for m in lin]
    )
    return grads, y.detach().double().numpy(), {"weight": wn, "bias": bn}


def torch_block_flow(torch, model, x, cotangent=None):
    """Independent functional implementation of the MLP layer definition in PyTorch (float64):
    per-layer dL/dh (l = 0..L), the output, parameter-gradient norms per kind (NaN where a
    layer lacks the parameter) and the parameter tensors with their ``.grad``. BatchNorm
    layers use batch statistics (train mode)."""
    from vgcore.activations import to_torch_module

    F = torch.nn.functional
    t = lambda a: None if a is None else torch.tensor(np.asarray(a, np.float64), requires_grad=True)  # noqa: E731
    t0 = lambda a: None if a is None else torch.tensor(np.asarray(a, np.float64))  # noqa: E731
    params = []
    h = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    hs = [h]
    for i in range(model.depth):
        W, b = t(model.weights[i]), t(model.biases[i])
        gam, bet = t(model.norm_weights[i]), t(model.norm_biases[i])
        GW, Gb = t(model.gate_weights[i]), t(model.gate_biases[i])
        params.append(
            {
                "weight": W,
                "bias": b,
                "norm_weight": gam,
                "norm_bias": bet,
                "gate_weight": GW,
                "gate_bias": Gb,
            }
        )
        z = F.linear(h, W, b)
        if model.norms[i] == "layernorm":
            z = F.layer_norm(z, (z.shape[1],), gam, bet, eps=model.eps)
        elif model.norms[i] == "batchnorm":  # running statistics given: eval mode
            mu, var = t0(model.running_means[i]), t0(model.running_vars[i])
            z = F.batch_norm(z, mu, var, gam, bet, training=mu is None, eps=model.eps)
        a = to_torch_module(model.activations[i]).double()(z)
        if model.blocks[i] == "residual":
            h = h + model.alphas[i] * a
        elif model.blocks[i] == "highway":
            g = torch.sigmoid(F.linear(h, GW, Gb))
            h = g * a + (1 - g) * h
        else:
            h = a
        h.retain_grad()
        hs.append(h)
    if cotangent is None:
        (0.5 * (h**2).sum()).backward()
    else:
        h.backward(torch.tensor(cotangent))
    grads = [v.grad.numpy() for v in hs]
    pn = {
        k: np.array([p[k].grad.norm().item() if p[k] is not None else np.nan for p in params])
        for k in params[0]
    }
    return grads, h.detach().numpy(), pn, params


def torch_recurrent_flow(torch, model, x, h0=None, cotangent=None, dtype=None):
    """Per-step dL/dh_t (T+1, B, N), dL/dc_t for LSTM, h_T, and parameter-gradient norms.

    Uses the PyTorch *cell* modules in a Python loop with retain_grad, the natural user code.
    """
    dtype = dtype or torch.float64
    kind = model.kind
    N = model.hidden_size
    bias = model.bias_ih is not None
    cell = torch_cell_module(torch, model, dtype)
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


# -- accurate-derivative oracle (for extreme inputs) ---------------------------------------
# torch differentiates tanh and sigmoid through their outputs (1 - y^2, y (1 - y)), which
# cancels to exactly 0 once y rounds to +-1: far into saturation autograd reports a zero
# gradient where the true one is, say, 1e-70. These functions take the derivative from the
# pre-activation instead, so the oracle stays right wherever float64 can hold the values.
def _accurate_activations(torch):
    class Tanh(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return torch.tanh(z)

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            return g / torch.cosh(z) ** 2

    class Sigmoid(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return torch.sigmoid(z)

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            return g * torch.sigmoid(z) * torch.sigmoid(-z)

    return {
        "tanh": Tanh.apply,
        "sigmoid": Sigmoid.apply,
        "relu": torch.relu,
        "identity": lambda z: z,
        "silu": torch.nn.functional.silu,
        "gelu": torch.nn.functional.gelu,
    }


def _log_norms(grads):
    """log ||g|| without under/overflow in the sum of squares (scaled by max |g|)."""
    out = []
    for g in grads:
        top = float(np.max(np.abs(g)))
        out.append(np.log(top) + np.log(np.linalg.norm(g / top)) if top > 0 else -np.inf)
    return np.array(out)


def accurate_mlp_log_grad_norms(torch, model, x):
    """``log ||dL/dh_l||`` (l = 0..L) of a plain MLP, L = 0.5 ||y||^2, float64."""
    acts = _accurate_activations(torch)
    m = model.astype(np.float64)
    h = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    hs = [h]
    for w, b, a in zip(m.weights, m.biases, m.activations):
        z = h @ torch.from_numpy(w).T
        if b is not None:
            z = z + torch.from_numpy(b)
        h = acts[a.name](z)
        h.retain_grad()
        hs.append(h)
    (0.5 * (h**2).sum()).backward()
    return _log_norms([t.grad.numpy() for t in hs])


def accurate_recurrent_log_grad_norms(torch, model, x):
    """``log ||dL/dh_t||`` (t = 0..T) of an RNN / LSTM / GRU, L = 0.5 ||h_T||^2, float64."""
    acts = _accurate_activations(torch)
    sig, tanh = acts["sigmoid"], acts["tanh"]
    m = model.astype(np.float64)
    wih, whh = torch.from_numpy(m.weight_ih), torch.from_numpy(m.weight_hh)
    zero = torch.zeros(whh.shape[0], dtype=torch.float64)
    bih = zero if m.bias_ih is None else torch.from_numpy(m.bias_ih)
    bhh = zero if m.bias_hh is None else torch.from_numpy(m.bias_hh)
    xt = torch.tensor(np.asarray(x, dtype=np.float64))
    T, B, _ = xt.shape
    N = m.hidden_size
    h = torch.zeros(B, N, dtype=torch.float64, requires_grad=True)
    c = torch.zeros(B, N, dtype=torch.float64)
    hs = [h]
    for t in range(T):
        gx, gh = xt[t] @ wih.T + bih, h @ whh.T + bhh
        if m.kind == "rnn":
            h = (tanh if m.nonlinearity == "tanh" else torch.relu)(gx + gh)
        elif m.kind == "lstm":
            i, f, g, o = (gx + gh).chunk(4, 1)
            c = sig(f) * c + sig(i) * tanh(g)
            h = sig(o) * tanh(c)
        else:
            xr, xz, xn = gx.chunk(3, 1)
            hr, hz, hn = gh.chunk(3, 1)
            r, zz = sig(xr + hr), sig(xz + hz)
            n = tanh(xn + r * hn)
            h = sig(-(xz + hz)) * n + zz * h  # 1 - z as s(-a): accurate in saturation
        h.retain_grad()
        hs.append(h)
    (0.5 * (h**2).sum()).backward()
    return _log_norms([t.grad.numpy() if t.grad is not None else np.zeros(1) for t in hs])

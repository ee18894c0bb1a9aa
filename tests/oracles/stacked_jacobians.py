"""Jacobian oracles for stacked unidirectional RNN / LSTM / GRU (float64 PyTorch).

The step map of a stack is ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` with ``num_layers = L`` run for
one time step, as a function of the whole state written layer-major, ``[h^0, (c^0), h^1, (c^1),
...]`` (vgcore's layout); its Jacobians come from ``torch.func.jacrev`` of that module call, so
nothing here shares code or formulas with vgcore. On those: the textbook QR method for Lyapunov
exponents, eigenvalues and norms of each step's Jacobian, the SVD of the whole product.

A stack is given as ``(cell, layers)``: ``cell`` one of ``"rnn_tanh"``, ``"rnn_relu"``,
``"lstm"``, ``"gru"``; ``layers`` a list of ``(weight_ih, weight_hh, bias_ih, bias_hh)`` numpy
arrays (biases all None or all given) in PyTorch's layer order.
"""

from __future__ import annotations

import numpy as np

from oracles.jacobians import qr_exponents


def stacked_module(torch, cell, layers):
    """The float64 ``torch.nn`` module (``num_layers = len(layers)``) holding these layers."""
    L = len(layers)
    I = np.shape(layers[0][0])[1]
    N = np.shape(layers[0][1])[1]
    bias = layers[0][2] is not None
    if cell.startswith("rnn"):
        m = torch.nn.RNN(I, N, num_layers=L, bias=bias, nonlinearity=cell[4:], dtype=torch.float64)
    elif cell == "lstm":
        m = torch.nn.LSTM(I, N, num_layers=L, bias=bias, dtype=torch.float64)
    else:
        m = torch.nn.GRU(I, N, num_layers=L, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        for l, (wih, whh, bih, bhh) in enumerate(layers):
            getattr(m, f"weight_ih_l{l}").copy_(torch.tensor(np.asarray(wih, np.float64)))
            getattr(m, f"weight_hh_l{l}").copy_(torch.tensor(np.asarray(whh, np.float64)))
            if bias:
                getattr(m, f"bias_ih_l{l}").copy_(torch.tensor(np.asarray(bih, np.float64)))
                getattr(m, f"bias_hh_l{l}").copy_(torch.tensor(np.asarray(bhh, np.float64)))
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def stacked_step_fn(torch, cell, layers):
    """``f(state, x_t) -> next state`` for a batch: ``state`` (B, D) layer-major rows of
    ``L * layer_state`` values (a single (D,) row also works), ``x_t`` (B, I); the module runs
    one time step."""
    m = stacked_module(torch, cell, layers)
    L, N = len(layers), np.shape(layers[0][1])[1]
    per = 2 * N if cell == "lstm" else N

    def f(s, x):
        one = s.dim() == 1
        S, X = (s[None], x[None]) if one else (s, x)
        parts = S.reshape(S.shape[0], L, per).transpose(0, 1)  # (L, B, per)
        if cell == "lstm":
            h0, c0 = parts[..., :N].contiguous(), parts[..., N:].contiguous()
            _, (hn, cn) = m(X[None], (h0, c0))
            out = torch.cat([hn, cn], dim=-1)
        else:
            _, out = m(X[None], parts.contiguous())
        out = out.transpose(0, 1).reshape(S.shape[0], L * per)
        return out[0] if one else out

    return f


def stacked_state_rows(cell, h0, c0=None):
    """PyTorch's initial state (``h0``, and for an LSTM ``c0``, each (L, B, N)) as vgcore's
    (B, D) layer-major state rows."""
    h0 = np.asarray(h0, np.float64)
    L, B, N = h0.shape
    if cell == "lstm":
        c0 = np.asarray(c0, np.float64)
        return np.concatenate([h0, c0], axis=2).transpose(1, 0, 2).reshape(B, L * 2 * N)
    return h0.transpose(1, 0, 2).reshape(B, L * N)


def stacked_trajectory_jacobians(torch, cell, layers, x, h0=None):
    """Per-step Jacobians (B, D, D) of the whole stacked step along each sample's trajectory
    (x: (T, B, I); h0: (B, D) layer-major state rows or None for zeros)."""
    from torch.func import jacrev, vmap

    f = stacked_step_fn(torch, cell, layers)
    x = np.asarray(x, np.float64)
    T, B, _ = x.shape
    N = np.shape(layers[0][1])[1]
    D = len(layers) * N * (2 if cell == "lstm" else 1)
    s = (
        torch.zeros(B, D, dtype=torch.float64)
        if h0 is None
        else torch.tensor(np.asarray(h0, np.float64))
    )
    out = []
    for t in range(T):
        xt = torch.from_numpy(x[t])
        out.append(vmap(jacrev(f))(s, xt).numpy())
        s = f(s, xt)
    return out


def stacked_qr_lyapunov(torch, cell, layers, x, k, *, h0=None, burn_in=0, qr_every=1, seed=0):
    """Top-``k`` Lyapunov exponents (B, k), descending, by the QR method on the jacrev
    Jacobians of the full stacked step (the same initial block as ``oracles.qr_lyapunov``:
    ``default_rng(seed).standard_normal((B, k, D))``)."""
    Js = stacked_trajectory_jacobians(torch, cell, layers, x, h0)
    return qr_exponents(Js, k, burn_in=burn_in, qr_every=qr_every, seed=seed)


def stacked_step_spectra(torch, cell, layers, x, h0=None):
    """Spectral radius and largest singular value of every step's Jacobian: two (T, B) arrays."""
    Js = stacked_trajectory_jacobians(torch, cell, layers, x, h0)
    rho = np.array([[np.abs(np.linalg.eigvals(J)).max() for J in Jt] for Jt in Js])
    sig = np.array([[np.linalg.norm(J, 2) for J in Jt] for Jt in Js])
    return rho, sig


def stacked_product_log_singular_values(torch, cell, layers, x, h0=None):
    """Log singular values (B, D), descending, of each sample's product ``J_T ... J_1`` by a
    float64 SVD (well-conditioned products only)."""
    Js = stacked_trajectory_jacobians(torch, cell, layers, x, h0)
    out = []
    for b in range(Js[0].shape[0]):
        M = Js[0][b]
        for J in Js[1:]:
            M = J[b] @ M
        out.append(np.linalg.svd(M, compute_uv=False))
    with np.errstate(divide="ignore"):
        return np.log(np.array(out))

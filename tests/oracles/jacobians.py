"""Jacobian oracles: layer and cell maps written from their definitions (float64 PyTorch),
per-step Jacobians along trajectories by ``torch.func.jacrev``, JVP / VJP by ``torch.func``, and
numpy (LAPACK) on those: the textbook QR method for Lyapunov exponents, eigenvalues and norms of
each step's Jacobian, the SVD of the whole product."""

from __future__ import annotations

import numpy as np


def torch_cell_module(torch, model, dtype=None):
    """A ``torch.nn`` RNNCell / LSTMCell / GRUCell of ``dtype`` (float64 by default) holding the
    vgcore recurrent model's parameters (as float64 values, then cast)."""
    dtype = dtype or torch.float64
    m64 = model.astype(np.float64)
    N, I = m64.hidden_size, m64.input_size
    bias = m64.bias_ih is not None
    if model.kind == "rnn":
        cell = torch.nn.RNNCell(I, N, bias=bias, nonlinearity=m64.nonlinearity, dtype=dtype)
    elif model.kind == "lstm":
        cell = torch.nn.LSTMCell(I, N, bias=bias, dtype=dtype)
    else:
        cell = torch.nn.GRUCell(I, N, bias=bias, dtype=dtype)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.from_numpy(m64.weight_ih))
        cell.weight_hh.copy_(torch.from_numpy(m64.weight_hh))
        if bias:
            cell.bias_ih.copy_(torch.from_numpy(m64.bias_ih))
            cell.bias_hh.copy_(torch.from_numpy(m64.bias_hh))
    return cell


def torch_layer_fn(torch, model, i):
    """Layer ``i`` of a vgcore MLP as a float64 PyTorch function of h (a vector or a batch of
    rows), written from the layer definition independently of vgcore."""
    F = torch.nn.functional

    def t(a):
        return None if a is None else torch.tensor(np.asarray(a, np.float64))

    import vgcore

    W, b = t(model.weights[i]), t(model.biases[i])
    gam, bet = t(model.norm_weights[i]), t(model.norm_biases[i])
    GW, Gb = t(model.gate_weights[i]), t(model.gate_biases[i])
    act = vgcore.activations.to_torch_module(model.activations[i]).double()
    block, alpha, norm, eps = model.blocks[i], model.alphas[i], model.norms[i], model.eps
    mu, var = t(model.running_means[i]), t(model.running_vars[i])
    if norm == "batchnorm" and mu is None:
        raise ValueError("train-mode BatchNorm has no per-sample map")

    def f(h):
        z = F.linear(h, W, b)
        if norm == "layernorm":
            z = F.layer_norm(z, (z.shape[-1],), gam, bet, eps=eps)
        elif norm == "batchnorm":  # eval mode: a per-unit affine map of the running statistics
            z = (z - mu) / torch.sqrt(var + eps)
            z = z if gam is None else z * gam
            z = z if bet is None else z + bet
        a = act(z)
        if block == "residual":
            return h + alpha * a
        if block == "highway":
            g = torch.sigmoid(F.linear(h, GW, Gb))
            return g * a + (1 - g) * h
        return a

    return f


def torch_cell_fn(torch, model):
    """The recurrent cell of a vgcore RNN/LSTM/GRU as a float64 PyTorch function
    ``f(state, x_t) -> next state`` built on torch.nn's cell modules; an LSTM's state is
    ``[h, c]`` concatenated along the last axis. A state-space layer: the reference module's
    step on its state rows (oracles.ssm)."""
    if model.kind in ("ssm", "selective_ssm", "ssm_stack"):
        from oracles.ssm import ssm_step_fn

        return ssm_step_fn(torch, model)
    N = model.hidden_size
    cell = torch_cell_module(torch, model, torch.float64)
    for p in cell.parameters():
        p.requires_grad_(False)

    if model.kind == "lstm":

        def f(s, x):
            h, c = cell(x, (s[..., :N], s[..., N:]))
            return torch.cat([h, c], dim=-1)

        return f
    return lambda s, x: cell(x, s)


def torch_trajectory_jacobians(torch, model, x, h0=None):
    """Per-step state Jacobians along each sample's trajectory, by torch.func.jacrev:
    a list over steps of arrays (B, D_out, D_in). MLP: x is (B, in); recurrent: (T, B, I),
    h0 (B, D) state rows (LSTM: [h, c]) or None for zeros."""
    from torch.func import jacrev, vmap

    x = np.asarray(x, np.float64)
    if model.kind == "mlp":
        h = torch.from_numpy(x)
        out = []
        for i in range(model.depth):
            f = torch_layer_fn(torch, model, i)
            out.append(vmap(jacrev(f))(h).numpy())
            h = f(h)
        return out
    f = torch_cell_fn(torch, model)
    T, B, _ = x.shape
    s = (
        torch.zeros(B, model.state_dim, dtype=torch.float64)
        if h0 is None
        else torch.from_numpy(np.asarray(h0, np.float64))
    )
    out = []
    for t in range(T):
        xt = torch.from_numpy(x[t])
        out.append(vmap(jacrev(f))(s, xt).numpy())
        s = f(s, xt)
    return out


def module_jacobians(torch, net, x):
    """Per-sample input-output Jacobians (B, out, in) of a float64 ``nn.Module`` that takes a
    batch of rows, by ``torch.func.jacrev`` on each one-row batch."""
    x = np.asarray(x, np.float64)
    return np.stack(
        [
            torch.func.jacrev(net)(torch.tensor(x[b : b + 1]))[0, :, 0, :].detach().numpy()
            for b in range(x.shape[0])
        ]
    )


def torch_step_maps(torch, f, states, tangents, cotangents):
    """Per-sample ``f(s)``, ``J V`` (rows) and ``J^T W`` (rows) by torch.func.jvp / vjp:
    ``states`` (B, D_in), ``tangents`` (B, K, D_in), ``cotangents`` (B, K, D_out)."""
    from torch.func import jvp, vjp, vmap

    ys, jv, jtw = [], [], []
    for b in range(states.shape[0]):
        s = torch.from_numpy(states[b])
        y, pull = vjp(f, s)
        ys.append(y.numpy())
        jv.append(vmap(lambda v, s=s: jvp(f, (s,), (v,))[1])(torch.from_numpy(tangents[b])).numpy())
        jtw.append(vmap(lambda w, pull=pull: pull(w)[0])(torch.from_numpy(cotangents[b])).numpy())
    return np.stack(ys), np.stack(jv), np.stack(jtw)


def qr_lyapunov(torch, model, x, k, *, h0=None, burn_in=0, qr_every=1, seed=0):
    """Top-``k`` Lyapunov exponents (B, k), descending, by the textbook QR method in numpy on the
    jacrev Jacobians: ``Q <- J_t Q``, re-orthonormalised every ``qr_every`` steps (and at the
    end), ``log|diag R|`` accumulated after ``burn_in`` steps and divided by the steps counted.
    The initial block is the QR of ``standard_normal((B, k, D))`` from ``default_rng(seed)``."""
    Js = torch_trajectory_jacobians(torch, model, x, h0)
    return qr_exponents(Js, k, burn_in=burn_in, qr_every=qr_every, seed=seed)


def qr_exponents(Js, k, *, burn_in=0, qr_every=1, seed=0):
    """The QR method of :func:`qr_lyapunov` on per-step Jacobians ``Js`` (T arrays (B, D, D))."""
    B, D = Js[0].shape[0], Js[0].shape[2]
    v0 = np.random.default_rng(seed).standard_normal((B, k, D))
    out = np.zeros((B, k))
    for b in range(B):
        Q = np.linalg.qr(v0[b].T)[0]
        acc = np.zeros(k)
        for t, J in enumerate(Js):
            Q = J[b] @ Q
            if (t + 1) % qr_every == 0 or t + 1 == len(Js):
                Q, R = np.linalg.qr(Q)
                if t >= burn_in:
                    with np.errstate(divide="ignore"):  # a switched-off direction: -inf
                        acc += np.log(np.abs(np.diag(R)))
        out[b] = np.sort(acc / (len(Js) - burn_in))[::-1]
    return out


def spectral_radius(J):
    """``max |eig(J)|`` by LAPACK; NaN for a non-square (width-changing) Jacobian."""
    return np.abs(np.linalg.eigvals(J)).max() if J.shape[0] == J.shape[1] else np.nan


def step_spectra(torch, model, x, h0=None):
    """Spectral radius and largest singular value of every step's Jacobian along each sample's
    trajectory: two arrays (steps, B)."""
    Js = torch_trajectory_jacobians(torch, model, x, h0)
    rho = np.array([[spectral_radius(J) for J in Jt] for Jt in Js])
    sig = np.array([[np.linalg.norm(J, 2) for J in Jt] for Jt in Js])
    return rho, sig


def product_log_singular_values(torch, model, x, h0=None):
    """Log singular values (B, min dim), descending, of each sample's whole Jacobian product
    ``J_T ... J_1`` by a float64 SVD (well-conditioned products only: the small values lose
    accuracy as the condition number grows), and the per-step Jacobians."""
    Js = torch_trajectory_jacobians(torch, model, x, h0)
    B = Js[0].shape[0]
    out = []
    for b in range(B):
        M = Js[0][b]
        for J in Js[1:]:
            M = J[b] @ M
        out.append(np.linalg.svd(M, compute_uv=False))
    with np.errstate(divide="ignore"):  # rank-deficient products have exact zeros: -inf
        return np.log(np.array(out)), Js

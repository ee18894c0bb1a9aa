"""The Elman RNN cell on CUDA (layers/rnn.hpp): z = W_ih x + b_ih + W_hh h + b_hh, h' = phi(z).

Cache per unit: the pre-activation z (phi' is recomputed from it in the backward pass).
Tangent: dh' = phi'(z) u, u = dh W_hh^T. Cotangent: dL/dz = phi'(z) g (then g W_hh).
"""

from __future__ import annotations

from numba import cuda

from vgcore.cuda.layers._common import act_fd

GATES = 1
PARTS = 1


@cuda.jit(device=True)
def forward(code, alpha, z):  # type: ignore[no-untyped-def]
    """(h', phi'(z)) of one unit."""
    return act_fd(code, alpha, z)


@cuda.jit(device=True)
def jvp(dphi, u):  # type: ignore[no-untyped-def]
    return dphi * u


@cuda.jit(device=True)
def vjp(dphi, g):  # type: ignore[no-untyped-def]
    return dphi * g


@cuda.jit
def forward_kernel(A, U, H, SAT, t, N, code, alpha, level):  # type: ignore[no-untyped-def]
    """Step t: A[t] (the input projection) += U (= h_t W_hh^T), H[t+1] = phi(A[t]),
    SAT = [|phi'| < level]."""
    B = H.shape[1]
    i = cuda.grid(1)
    while i < B * N:
        b = i // N
        j = i - b * N
        z = A[t, b, j] + U[b, j]
        A[t, b, j] = z
        y, d = forward(code, alpha, z)
        H[t + 1, b, j] = y
        SAT[b, j] = 1.0 if (d < level and d > -level) else 0.0
        i += cuda.gridsize(1)


@cuda.jit
def backward_kernel(A, G, t, N, code, alpha):  # type: ignore[no-untyped-def]
    """dL/dz of step t into A[t] from G = dL/dh_{t+1} (stored scaled)."""
    B = G.shape[0]
    i = cuda.grid(1)
    while i < B * N:
        b = i // N
        j = i - b * N
        _y, d = forward(code, alpha, A[t, b, j])
        A[t, b, j] = vjp(d, G[b, j])
        i += cuda.gridsize(1)


@cuda.jit
def step_tangent_kernel(P, U, H, UV, V, t, N, code, alpha):  # type: ignore[no-untyped-def]
    """Lyapunov step t: H (B, N) becomes h_{t+1} and the tangents V (B, k, N) become J V, from
    U = h_t W_hh^T and UV = V W_hh^T. One thread per unit (b, j), looping over the k tangents:
    phi'(z) stays in a register (one launch per step, no coefficient buffer)."""
    B = H.shape[0]
    k = V.shape[1]
    i = cuda.grid(1)
    while i < B * N:
        b = i // N
        j = i - b * N
        y, d = forward(code, alpha, P[t, b, j] + U[b, j])
        H[b, j] = y
        for q in range(k):
            V[b, q, j] = jvp(d, UV[b, q, j])
        i += cuda.gridsize(1)

"""The GRU cell on CUDA (layers/gru.hpp; gates r, z, n):
q = W_hh h + b_hh, p = W_ih x + b_ih, r = sigmoid(p_r + q_r), z = sigmoid(p_z + q_z),
n = tanh(p_n + r q_n), h' = (1 - z) n + z h.

Cache per step: the pre-activations of r and z and p_n (A), q_n (HN) and h (H); the gates are
recomputed from them in the backward pass.
"""

from __future__ import annotations

from numba import cuda

from vgcore.cuda.layers._common import sigmoid_fd, tanh_fd

GATES = 3
PARTS = 1


@cuda.jit(device=True)
def gates(ar, az, xn, qn):  # type: ignore[no-untyped-def]
    """r, r(1-r), z, 1-z, z(1-z), n, 1-n^2."""
    r, _rc, dr = sigmoid_fd(ar)
    z, zc, dz = sigmoid_fd(az)
    n, nd = tanh_fd(xn + r * qn)
    return r, dr, z, zc, dz, n, nd


@cuda.jit(device=True)
def forward(ar, az, xn, qn, hprev):  # type: ignore[no-untyped-def]
    _r, _dr, z, zc, _dz, n, _nd = gates(ar, az, xn, qn)
    return zc * n + z * hprev


@cuda.jit(device=True)
def vjp(ar, az, xn, qn, hprev, g):  # type: ignore[no-untyped-def]
    """dL/d(a_r, a_z), dL/dq_n, dL/dp_n and the direct part z g of dL/dh (gru_vjp)."""
    r, dr, z, zc, dz, n, nd = gates(ar, az, xn, qn)
    dan = g * zc * nd
    return dan * qn * dr, g * (hprev - n) * dz, dan * r, dan, g * z


@cuda.jit(device=True)
def tangent_coefficients(ar, az, xn, qn, hprev):  # type: ignore[no-untyped-def]
    """h' and the coefficients of dh' = k0 dh + k1 u_r + k2 u_z + k3 u_n."""
    r, dr, z, zc, dz, n, nd = gates(ar, az, xn, qn)
    a = zc * nd
    return zc * n + z * hprev, z, a * qn * dr, (hprev - n) * dz, a * r


@cuda.jit(device=True)
def jvp(k0, k1, k2, k3, ur, uz, un, dh):  # type: ignore[no-untyped-def]
    return k0 * dh + k1 * ur + k2 * uz + k3 * un


@cuda.jit
def forward_kernel(A, U, BHH, H, HN, SAT, t, N, sat_sig, sat_tanh):  # type: ignore[no-untyped-def]
    """Step t from A[t] = p and U = h_t W_hh^T, BHH = b_hh (3N,): h_{t+1}; caches (see the
    module). b_hh is added here, not by an array operation per step."""
    B = H.shape[1]
    n = cuda.grid(1)
    while n < B * N:
        b = n // N
        j = n - b * N
        ar = A[t, b, j] + (U[b, j] + BHH[j])
        az = A[t, b, N + j] + (U[b, N + j] + BHH[N + j])
        xn = A[t, b, 2 * N + j]
        qn = U[b, 2 * N + j] + BHH[2 * N + j]
        A[t, b, j] = ar
        A[t, b, N + j] = az
        HN[t, b, j] = qn
        H[t + 1, b, j] = forward(ar, az, xn, qn, H[t, b, j])
        _r, dr, _z, _zc, dz, _nn, nd = gates(ar, az, xn, qn)
        SAT[b, j] = 1.0 if dr < sat_sig else 0.0
        SAT[b, N + j] = 1.0 if dz < sat_sig else 0.0
        SAT[b, 2 * N + j] = 1.0 if nd < sat_tanh else 0.0
        n += cuda.gridsize(1)


@cuda.jit
def backward_kernel(A, H, HN, G, DP, t, N):  # type: ignore[no-untyped-def]
    """dL/d(a_r, a_z, q_n) of step t into A[t], dL/dp_n into HN[t], z g into DP."""
    B = G.shape[0]
    n = cuda.grid(1)
    while n < B * N:
        b = n // N
        j = n - b * N
        dr, dz, dqn, dpn, direct = vjp(
            A[t, b, j], A[t, b, N + j], A[t, b, 2 * N + j], HN[t, b, j], H[t, b, j], G[b, j]
        )
        A[t, b, j] = dr
        A[t, b, N + j] = dz
        A[t, b, 2 * N + j] = dqn
        HN[t, b, j] = dpn
        DP[b, j] = direct
        n += cuda.gridsize(1)


@cuda.jit
def step_tangent_kernel(P, U, BHH, X, UV, V, t, N):  # type: ignore[no-untyped-def]
    """Lyapunov step t: X (B, N) becomes h_{t+1} and the tangents V (B, k, N) become J V,
    from U = h_t W_hh^T (b_hh = BHH added here) and UV = dh W_hh^T (B, k, 3N). One thread per
    unit (b, j), looping over the k tangents: the coefficients stay in registers."""
    B = X.shape[0]
    k = V.shape[1]
    n = cuda.grid(1)
    while n < B * N:
        b = n // N
        j = n - b * N
        h, k0, k1, k2, k3 = tangent_coefficients(
            P[t, b, j] + (U[b, j] + BHH[j]),
            P[t, b, N + j] + (U[b, N + j] + BHH[N + j]),
            P[t, b, 2 * N + j],
            U[b, 2 * N + j] + BHH[2 * N + j],
            X[b, j],
        )
        X[b, j] = h
        for q in range(k):
            V[b, q, j] = jvp(
                k0, k1, k2, k3, UV[b, q, j], UV[b, q, N + j], UV[b, q, 2 * N + j], V[b, q, j]
            )
        n += cuda.gridsize(1)

"""The LSTM cell on CUDA (layers/lstm.hpp; gates i, f, g, o):
a = W_ih x + b_ih + W_hh h + b_hh,  i, f, o = sigmoid, g = tanh,  c' = f c + i g,  h' = o tanh(c').

Cache per step: the four pre-activations (A) and the cell states (C); the gates are recomputed
from them in the backward pass (to relative accuracy in saturation, as the encoded gates of
the C++ core). State (h, c); a Lyapunov state is [h, c] side by side.
"""

from __future__ import annotations

from numba import cuda

from vgcore.cuda.layers._common import sigmoid_fd, tanh_fd

GATES = 4
PARTS = 2


@cuda.jit(device=True)
def gates(ai, af, ag, ao):  # type: ignore[no-untyped-def]
    """Gates and derivative factors: i, i(1-i), f, f(1-f), g, 1-g^2, o, o(1-o)."""
    i, _ic, di = sigmoid_fd(ai)
    f, _fc, df = sigmoid_fd(af)
    g, gd = tanh_fd(ag)
    o, _oc, do = sigmoid_fd(ao)
    return i, di, f, df, g, gd, o, do


@cuda.jit(device=True)
def forward(ai, af, ag, ao, cprev):  # type: ignore[no-untyped-def]
    """(c', h') of one unit."""
    i, _di, f, _df, g, _gd, o, _do = gates(ai, af, ag, ao)
    c = f * cprev + i * g
    tc, _tcd = tanh_fd(c)
    return c, o * tc


@cuda.jit(device=True)
def vjp(ai, af, ag, ao, cprev, cnext, gh, gc):  # type: ignore[no-untyped-def]
    """dL/d(a_i, a_f, a_g, a_o) and dL/dc from (gh, gc) = dL/d(h', c') (lstm_vjp)."""
    i, di, f, df, g, gd, o, do = gates(ai, af, ag, ao)
    tc, tcd = tanh_fd(cnext)
    dct = gc + gh * o * tcd
    return dct * g * di, dct * cprev * df, dct * i * gd, gh * tc * do, dct * f


@cuda.jit(device=True)
def tangent_coefficients(ai, af, ag, ao, cprev):  # type: ignore[no-untyped-def]
    """(c', h') and the six coefficients of the tangent map (lstm_tangent_coefficients):
    dc' = k0 dc + k1 u_f + k2 u_i + k3 u_g,  dh' = k4 dc' + k5 u_o."""
    i, di, f, df, g, gd, o, do = gates(ai, af, ag, ao)
    c = f * cprev + i * g
    tc, tcd = tanh_fd(c)
    return c, o * tc, f, cprev * df, g * di, i * gd, o * tcd, tc * do


@cuda.jit(device=True)
def jvp(k0, k1, k2, k3, k4, k5, ui, uf, ug, uo, dc):  # type: ignore[no-untyped-def]
    """(dh', dc') from u = dh W_hh^T per gate and dc."""
    dcn = k0 * dc + k1 * uf + k2 * ui + k3 * ug
    return k4 * dcn + k5 * uo, dcn


@cuda.jit
def forward_kernel(A, U, H, C, SAT, t, N, sat_sig, sat_tanh):  # type: ignore[no-untyped-def]
    """Step t: A[t] += U (= h_t W_hh^T), then c_{t+1}, h_{t+1}; SAT (B, 4N) saturated gates."""
    B = H.shape[1]
    n = cuda.grid(1)
    while n < B * N:
        b = n // N
        j = n - b * N
        ai = A[t, b, j] + U[b, j]
        af = A[t, b, N + j] + U[b, N + j]
        ag = A[t, b, 2 * N + j] + U[b, 2 * N + j]
        ao = A[t, b, 3 * N + j] + U[b, 3 * N + j]
        A[t, b, j] = ai
        A[t, b, N + j] = af
        A[t, b, 2 * N + j] = ag
        A[t, b, 3 * N + j] = ao
        c, h = forward(ai, af, ag, ao, C[t, b, j])
        C[t + 1, b, j] = c
        H[t + 1, b, j] = h
        _i, di, _f, df, _g, gd, _o, do = gates(ai, af, ag, ao)
        SAT[b, j] = 1.0 if di < sat_sig else 0.0
        SAT[b, N + j] = 1.0 if df < sat_sig else 0.0
        SAT[b, 2 * N + j] = 1.0 if gd < sat_tanh else 0.0
        SAT[b, 3 * N + j] = 1.0 if do < sat_sig else 0.0
        n += cuda.gridsize(1)


@cuda.jit
def backward_kernel(A, C, G, DC, t, N):  # type: ignore[no-untyped-def]
    """dL/d(pre-activations) of step t into A[t]; DC: dL/dc_{t+1} in, dL/dc_t out."""
    B = G.shape[0]
    n = cuda.grid(1)
    while n < B * N:
        b = n // N
        j = n - b * N
        di, df, dg, do, dcp = vjp(
            A[t, b, j],
            A[t, b, N + j],
            A[t, b, 2 * N + j],
            A[t, b, 3 * N + j],
            C[t, b, j],
            C[t + 1, b, j],
            G[b, j],
            DC[b, j],
        )
        A[t, b, j] = di
        A[t, b, N + j] = df
        A[t, b, 2 * N + j] = dg
        A[t, b, 3 * N + j] = do
        DC[b, j] = dcp
        n += cuda.gridsize(1)


@cuda.jit
def step_tangent_kernel(P, U, X, UV, V, t, N):  # type: ignore[no-untyped-def]
    """Lyapunov step t: X (B, 2N) = [h, c] becomes the next state and the tangents
    V (B, k, 2N) = [dh, dc] become J V, from U = h_t W_hh^T and UV = dh W_hh^T (B, k, 4N).
    One thread per unit (b, j), looping over the k tangents: the six coefficients stay in
    registers (one launch per step, no coefficient buffer)."""
    B = X.shape[0]
    k = V.shape[1]
    n = cuda.grid(1)
    while n < B * N:
        b = n // N
        j = n - b * N
        c, h, k0, k1, k2, k3, k4, k5 = tangent_coefficients(
            P[t, b, j] + U[b, j],
            P[t, b, N + j] + U[b, N + j],
            P[t, b, 2 * N + j] + U[b, 2 * N + j],
            P[t, b, 3 * N + j] + U[b, 3 * N + j],
            X[b, N + j],
        )
        X[b, j] = h
        X[b, N + j] = c
        for q in range(k):
            dh, dc = jvp(
                k0,
                k1,
                k2,
                k3,
                k4,
                k5,
                UV[b, q, j],
                UV[b, q, N + j],
                UV[b, q, 2 * N + j],
                UV[b, q, 3 * N + j],
                V[b, q, N + j],
            )
            V[b, q, j] = dh
            V[b, q, N + j] = dc
        n += cuda.gridsize(1)

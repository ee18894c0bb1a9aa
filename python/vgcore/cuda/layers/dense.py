"""The dense layer on CUDA (layers/dense.hpp, layers/residual.hpp): z = W h + b, then the plain
block h' = phi(z) or the residual block h' = h + alpha phi(z).

Cache per layer: z (phi' is recomputed from it). Tangent: dh' = alpha phi'(z) (W dh) (+ dh);
cotangent: dL/dz = alpha phi'(z) g, then dL/dh = dL/dz W (+ g).
"""

from __future__ import annotations

from numba import cuda

from vgcore.cuda.layers._common import act_fd

GATES = 1
PARTS = 1


@cuda.jit(device=True)
def forward(code, alpha_act, z, h, residual, alpha):  # type: ignore[no-untyped-def]
    """(h', phi'(z)) of one unit."""
    y, d = act_fd(code, alpha_act, z)
    if residual:
        return h + alpha * y, d
    return y, d


@cuda.jit(device=True)
def jvp(dphi, u, dh, residual, alpha):  # type: ignore[no-untyped-def]
    if residual:
        return dh + alpha * dphi * u
    return dphi * u


@cuda.jit(device=True)
def vjp(dphi, g, residual, alpha):  # type: ignore[no-untyped-def]
    if residual:
        return alpha * dphi * g
    return dphi * g


@cuda.jit
def forward_kernel(Z, BIAS, Hin, Hout, SAT, code, alpha_act, residual, alpha, level):  # type: ignore[no-untyped-def]
    """Z = Hin W^T becomes z = Z + BIAS (kept as the cache; BIAS added here rather than by
    an array operation), Hout = block(z, Hin); SAT = [|phi'| < level]."""
    B = Z.shape[0]
    M = Z.shape[1]
    n = cuda.grid(1)
    while n < B * M:
        b = n // M
        j = n - b * M
        z = Z[b, j] + BIAS[j]
        Z[b, j] = z
        h = Hin[b, j] if residual else 0.0
        y, d = forward(code, alpha_act, z, h, residual, alpha)
        Hout[b, j] = y
        SAT[b, j] = 1.0 if (d < level and d > -level) else 0.0
        n += cuda.gridsize(1)


@cuda.jit
def backward_kernel(Z, G, code, alpha_act, residual, alpha):  # type: ignore[no-untyped-def]
    """dL/dz into Z from G = dL/dh' (stored scaled)."""
    B = Z.shape[0]
    M = Z.shape[1]
    n = cuda.grid(1)
    while n < B * M:
        b = n // M
        j = n - b * M
        _y, d = act_fd(code, alpha_act, Z[b, j])
        Z[b, j] = vjp(d, G[b, j], residual, alpha)
        n += cuda.gridsize(1)


@cuda.jit
def step_kernel(Z, X, COEF, code, alpha_act, residual, alpha):  # type: ignore[no-untyped-def]
    """Tangent-sweep state step: X (B, M) becomes h'; COEF[0] = phi'(z)."""
    B = Z.shape[0]
    M = Z.shape[1]
    n = cuda.grid(1)
    while n < B * M:
        b = n // M
        j = n - b * M
        h = X[b, j] if residual else 0.0
        y, d = forward(code, alpha_act, Z[b, j], h, residual, alpha)
        X[b, j] = y
        COEF[0, b, j] = d
        n += cuda.gridsize(1)


@cuda.jit
def tangent_kernel(COEF, UV, VIN, residual, alpha):  # type: ignore[no-untyped-def]
    """UV (B, k, M) = V W^T becomes J V in place; VIN (B, k, M) the block before the layer,
    read by residual blocks only (which keep the width)."""
    B = UV.shape[0]
    k = UV.shape[1]
    M = UV.shape[2]
    n = cuda.grid(1)
    while n < B * k * M:
        b = n // (k * M)
        r = n - b * k * M
        q = r // M
        j = r - q * M
        dh = VIN[b, q, j] if residual else 0.0
        UV[b, q, j] = jvp(COEF[0, b, j], UV[b, q, j], dh, residual, alpha)
        n += cuda.gridsize(1)


@cuda.jit
def step_tangent_kernel(Z, BIAS, X, XOUT, UV, V, code, alpha_act, residual, alpha):  # type: ignore[no-untyped-def]
    """Jacobian-product step of one layer from Z = X W^T (B, M) and UV = V W^T (B, k, M):
    XOUT = h', and UV becomes J V in place (V (B, k, M): the tangent rows before the layer,
    read by residual blocks only, which keep the width). One thread per unit (b, j), looping
    over the k rows: phi'(z) stays in a register (one launch per layer)."""
    B = Z.shape[0]
    M = Z.shape[1]
    k = UV.shape[1]
    n = cuda.grid(1)
    while n < B * M:
        b = n // M
        j = n - b * M
        h = X[b, j] if residual else 0.0
        y, d = forward(code, alpha_act, Z[b, j] + BIAS[j], h, residual, alpha)
        XOUT[b, j] = y
        for q in range(k):
            dh = V[b, q, j] if residual else 0.0
            UV[b, q, j] = jvp(d, UV[b, q, j], dh, residual, alpha)
        n += cuda.gridsize(1)

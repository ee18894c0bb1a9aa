"""Device functions every layer kind shares: gate nonlinearities with their derivatives to
relative accuracy in saturation (as base/gates.hpp), the activations by code, the launch
index. Imports numba: imported only by the CUDA backend."""

from __future__ import annotations

import math

from numba import cuda

from vgcore.cuda.layers import CUDA_ACTIVATIONS

#: Activation codes of the kernels (the names of vgcore.activations).
ACT_CODES = {name: code for code, name in enumerate(CUDA_ACTIVATIONS)}


@cuda.jit(device=True)
def sigmoid_fd(a):  # type: ignore[no-untyped-def]
    """(s, 1 - s, s (1 - s)) of a, each to relative accuracy (base/gates.hpp)."""
    t = math.exp(-abs(a))
    big = 1.0 / (1.0 + t)
    small = t * big
    if a >= 0:
        return big, small, big * small
    return small, big, big * small


@cuda.jit(device=True)
def tanh_fd(a):  # type: ignore[no-untyped-def]
    """(tanh a, 1 - tanh(a)^2), the derivative as 4 e / (1 + e)^2 with e = exp(-2|a|), which
    keeps relative accuracy where 1 - tanh^2 cancels."""
    e = math.exp(-2.0 * abs(a))
    return math.tanh(a), 4.0 * e / ((1.0 + e) * (1.0 + e))


@cuda.jit(device=True)
def act_fd(code, alpha, z):  # type: ignore[no-untyped-def]
    """(phi(z), phi'(z)) of the activation ``code`` (ACT_CODES), torch's conventions at 0."""
    if code == 1:
        return tanh_fd(z)
    if code == 2:
        if z > 0:
            return z, 1.0
        if z != z:
            return z, z
        return 0.0 * z if z < 0 else z, 0.0
    if code == 3:
        s, _sc, d = sigmoid_fd(z)
        return s, d
    if code == 4:
        if z > 0:
            return z, 1.0
        return z * alpha, alpha
    return z, 1.0


@cuda.jit(device=True)
def unit_index(n):  # type: ignore[no-untyped-def]
    """(first index, stride) of a grid-stride loop."""
    return cuda.grid(1), cuda.gridsize(1)

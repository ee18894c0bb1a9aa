"""Vectorised bracketed root finding (Illinois regula falsi with bisection safeguards).

Private to :mod:`vgcore.theory`. Solves many independent scalar equations at once: each
iteration evaluates the function only for the points not yet converged, so a callback that is
itself vectorised (a quadrature, a table lookup) does one batched call per iteration.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["bracket_root"]

Array = np.ndarray


def bracket_root(
    fun: Callable[[Array, Array], Array],
    lo: Array,
    hi: Array,
    f_lo: Array,
    f_hi: Array,
    *,
    rtol: float = 2e-15,
    atol: float = 0.0,
    maxiter: int = 200,
) -> Array:
    """Roots of ``fun`` in the brackets ``[lo, hi]`` (``f_lo * f_hi <= 0``), elementwise.

    Parameters
    ----------
    fun : callable ``fun(x, idx) -> f``
        Evaluates the functions of the points ``idx`` (indices into ``lo``) at ``x``.
    lo, hi, f_lo, f_hi : ndarray of shape (n,)
        Brackets and the function values at their ends.
    rtol, atol : float
        Stop when the bracket is narrower than ``rtol * |x| + atol``.
    maxiter : int
        Iteration cap (a bisection whenever two steps have not halved the bracket guarantees
        at least a halving per three steps).

    Returns
    -------
    ndarray of shape (n,)
        The end of the final bracket with the smaller ``|f|`` (exact where ``f == 0``).
    """
    a, b = np.array(lo, dtype=np.float64), np.array(hi, dtype=np.float64)
    fa, fb = np.array(f_lo, dtype=np.float64), np.array(f_hi, dtype=np.float64)
    if np.any(fa * fb > 0.0):
        raise ValueError("bracket_root needs brackets with a sign change")
    last = np.zeros(a.shape, dtype=np.int8)  # which end moved last: -1 a, +1 b
    done = (fa == 0.0) | (fb == 0.0)
    # Bisect whenever two steps have not halved the bracket (a jump in the function, or
    # a flat end): at worst twice as many steps as plain bisection.
    width_prev = np.full(a.shape, np.inf)
    width_prev2 = np.full(a.shape, np.inf)
    for _ in range(maxiter):
        width = np.abs(b - a)
        done |= width <= rtol * np.maximum(np.abs(a), np.abs(b)) + atol
        idx = np.flatnonzero(~done)
        if idx.size == 0:
            break
        ai, bi, fai, fbi = a[idx], b[idx], fa[idx], fb[idx]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x = bi - fbi * (bi - ai) / (fbi - fai)
        mid = 0.5 * (ai + bi)
        inside = (x > np.minimum(ai, bi)) & (x < np.maximum(ai, bi))
        slow = width[idx] > 0.5 * width_prev2[idx]
        width_prev2[idx], width_prev[idx] = width_prev[idx], width[idx]
        x = np.where(inside & ~slow, x, mid)
        fx = fun(x, idx)
        hit = fx == 0.0
        with_b = (np.sign(fx) == np.sign(fbi)) & ~hit  # x replaces b; the root lies in [a, x]
        with_a = ~with_b & ~hit
        # Illinois: halve the stale end's value when the same end moves twice in a row.
        fai = np.where(with_b & (last[idx] == 1), 0.5 * fai, fai)
        fbi = np.where(with_a & (last[idx] == -1), 0.5 * fbi, fbi)
        a[idx] = np.where(with_a | hit, x, ai)
        fa[idx] = np.where(with_a | hit, fx, fai)
        b[idx] = np.where(with_b | hit, x, bi)
        fb[idx] = np.where(with_b | hit, fx, fbi)
        last[idx] = np.where(with_b, 1, np.where(with_a, -1, 0))
        done[idx] |= hit
    return np.where(np.abs(fa) <= np.abs(fb), a, b)


def bracket_newton(
    fun: Callable[[Array, Array], tuple[Array, Array]],
    lo: Array,
    hi: Array,
    f_lo: Array,
    f_hi: Array,
    *,
    rtol: float = 1e-15,
    maxiter: int = 100,
) -> Array:
    """Safeguarded Newton iteration in the brackets ``[lo, hi]`` (``f_lo * f_hi <= 0``).

    ``fun(x, idx) -> (f, f')``. Steps that leave the current bracket are replaced by
    bisection; the bracket is updated from the sign of ``f`` at every iterate, so the
    iteration cannot diverge. Stops when a Newton step is below ``rtol * |x|``.
    """
    a, b = np.array(lo, dtype=np.float64), np.array(hi, dtype=np.float64)
    fa, fb = np.array(f_lo, dtype=np.float64), np.array(f_hi, dtype=np.float64)
    if np.any(fa * fb > 0.0):
        raise ValueError("bracket_newton needs brackets with a sign change")
    with np.errstate(divide="ignore", invalid="ignore"):
        start = a - fa * (b - a) / (fb - fa)  # regula falsi start
    inside = np.isfinite(start) & (start > np.minimum(a, b)) & (start < np.maximum(a, b))
    x = np.where(fa == 0.0, a, np.where(fb == 0.0, b, np.where(inside, start, 0.5 * (a + b))))
    active = np.flatnonzero((fa != 0.0) & (fb != 0.0))
    for _ in range(maxiter):
        if active.size == 0:
            break
        xi = x[active]
        f, df = fun(xi, active)
        neg_side = np.sign(f) == np.sign(fa[active])  # root lies in [x, b]
        a[active] = np.where(neg_side, xi, a[active])
        fa[active] = np.where(neg_side, f, fa[active])
        b[active] = np.where(neg_side, b[active], xi)
        fb[active] = np.where(neg_side, fb[active], f)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = f / df
        new = xi - step
        lo_i, hi_i = np.minimum(a[active], b[active]), np.maximum(a[active], b[active])
        ok = np.isfinite(new) & (new > lo_i) & (new < hi_i)
        new = np.where(ok, new, 0.5 * (lo_i + hi_i))
        x[active] = np.where(f == 0.0, xi, new)
        converged = (f == 0.0) | (ok & (np.abs(step) <= rtol * np.abs(xi)))
        converged |= hi_i - lo_i <= rtol * hi_i
        active = active[~converged]
    return x

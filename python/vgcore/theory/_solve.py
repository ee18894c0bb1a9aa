"""All mean-field quantities for flat arrays of (sigma_w2, sigma_b2), given a moment provider.

Private to :mod:`vgcore.theory`; :func:`vgcore.theory.mean_field` runs it on quadratures,
:func:`vgcore.theory.phase_diagram` on interpolation tables.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vgcore.theory._fixed_points import (
    Q_BIG,
    Corr,
    Moments,
    asymptotics,
    correlation_fixed_point,
    depth_scale,
    length_fixed_point,
)

__all__ = ["CorrFactory", "classify", "slopes", "solve"]

Array = np.ndarray
#: ``factory(sw, x) -> corr`` for the chaotic points with ``q* = x^2`` (see
#: ``correlation_fixed_point``).
CorrFactory = Callable[[Array, Array], Corr]
_X_BIG = float(np.sqrt(Q_BIG))


def classify(chi_1: Array, tol: float) -> Array:
    """``"ordered"`` / ``"critical"`` / ``"chaotic"`` by ``chi_1`` against ``1 -+ tol``."""
    chi_1 = np.asarray(chi_1)
    return np.where(
        chi_1 < 1.0 - tol, "ordered", np.where(chi_1 > 1.0 + tol, "chaotic", "critical")
    )


def slopes(m: Moments, sw: Array, q: Array, x: Array) -> tuple[Array, Array, Array, Array]:
    """``(chi_1, chi_q, log|chi_1|, log|chi_q|)`` at the fixed points ``q = x^2`` (``x = inf``:
    the length diverges).

    Where the length diverges both are the limits ``sigma_w2 kappa_inf`` of the per-layer
    factors along the iteration (``q^{l+1} / q^l`` and ``E[phi'^2]`` as ``q^l -> inf``).
    Above ``Q_BIG`` they come from the large-q expansions in a form that neither overflows
    nor underflows (``chi_q`` of tanh at ``q = 1e300`` is ~1e-150 while ``dV/dq`` is 1e-450).
    The logarithms are ``log(sigma_w2) + log(moment)``: finite where the product itself
    under- or overflows (they give the depth scales there).
    """
    act = m.act
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        log_sw = np.log(sw)
        if act.homogeneous is not None:
            chi = sw * act.homogeneous
            log_chi = log_sw + np.log(act.homogeneous)
            return chi, chi.copy(), log_chi, log_chi.copy()
        asym = asymptotics(act)
        chi_1 = sw * act.kappa_inf
        chi_q = chi_1.copy()
        log_d = np.full(sw.shape, np.log(act.kappa_inf))
        log_w = log_d.copy()
        big = np.isfinite(x) & (x >= _X_BIG)
        xb = x[big]
        chi_1[big] = asym.chi_1(sw[big], xb)
        chi_q[big] = asym.chi_q(sw[big], xb)
        log_d[big] = np.log(asym.d(xb))
        if act.kappa_inf > 0.0:
            log_w[big] = np.log(np.abs(asym.w(xb)))
        else:  # dV/dq = -G / (2 sqrt(2 pi)) x^-3 may underflow: its log does not
            log_w[big] = np.log(abs(asym.G) / (2.0 * np.sqrt(2.0 * np.pi))) - 3.0 * np.log(xb)
        mid = np.isfinite(x) & ~big
        d_m, w_m = m.DW(q[mid])
        chi_1[mid] = sw[mid] * d_m
        chi_q[mid] = sw[mid] * w_m
        log_d[mid] = np.log(d_m)
        log_w[mid] = np.log(np.abs(w_m))
    return chi_1, chi_q, log_sw + log_d, log_sw + log_w


def _depth(chi: Array, log_chi: Array) -> Array:
    """Depth scale from ``chi`` where it is a normal float, else from ``log|chi|``."""
    normal = np.isfinite(chi) & (np.abs(chi) >= np.finfo(np.float64).tiny)
    with np.errstate(divide="ignore"):
        from_log = -1.0 / log_chi
    return np.where(normal | np.isnan(log_chi), depth_scale(chi), from_log)


def solve(
    m: Moments,
    corr_factory: CorrFactory,
    sw: Array,
    sb: Array,
    tol: float,
    *,
    corr_rtol: float = 1e-13,
    correlation: bool = True,
) -> dict[str, Array]:
    """``q_star, chi_1, chi_q, c_star, chi_c, xi_q, xi_c, phase`` as flat arrays.

    ``corr_rtol`` is the relative accuracy of the correlation moments (the Newton iteration
    for ``c*`` stops once its steps fall below it). ``correlation=False`` skips the
    correlation map (its 2-D moments are most of the cost): ``c_star``, ``chi_c`` and
    ``xi_c`` are then NaN at the chaotic points that need it. Conventions (see :class:`MeanField`):
    where the length diverges, ``c* = 1`` and ``chi_c = 1`` (the correlation map tends to that
    of the activation's linear asymptote, whose slope at ``c = 1`` is 1).
    """
    act = m.act
    lf = length_fixed_point(m, sw, sb)
    q, x = lf.q, lf.x
    chi_1, chi_q, log_1, log_q = slopes(m, sw, q, x)
    phase = classify(chi_1, tol)

    c_star = np.ones(q.shape)
    chi_c = np.where(lf.diverges, 1.0, chi_1)
    log_c = np.where(lf.diverges, 0.0, log_1)
    chaotic = (phase == "chaotic") & ~lf.diverges & (q > 0.0)
    if act.homogeneous is None and not act.bounded:
        # Unbounded activations are chaotic at q* > Q_BIG only within ~1e-15 of chi_1 = 1
        # (sw kappa < 1 for a finite q*): 1 - c* = O(1 / q*) rounds to 0 and, to first order
        # in chi_1 - 1, chi_c = 2 - chi_1.
        marginal = chaotic & (x >= _X_BIG)
        chi_c[marginal] = 2.0 - chi_1[marginal]
        log_c[marginal] = np.log(chi_c[marginal])
        chaotic &= ~marginal
    idx = np.flatnonzero(chaotic)
    if idx.size and not correlation:
        c_star[idx] = chi_c[idx] = log_c[idx] = np.nan
    elif idx.size:
        corr = corr_factory(sw[idx], x[idx])
        d_star, sp_star = correlation_fixed_point(corr, idx.size, rtol=corr_rtol)
        c_star[idx] = 1.0 - d_star
        chi_c[idx] = sp_star
        with np.errstate(divide="ignore"):
            log_c[idx] = np.log(np.abs(sp_star))
    return {
        "q_star": q,
        "chi_1": chi_1,
        "chi_q": chi_q,
        "c_star": c_star,
        "chi_c": chi_c,
        "xi_q": _depth(chi_q, log_q),
        "xi_c": _depth(chi_c, log_c),
        "phase": phase,
    }

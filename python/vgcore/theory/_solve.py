"""All mean-field quantities for flat arrays of (sigma_w2, sigma_b2), given a moment provider.

Private to :mod:`vgcore.theory`; :func:`vgcore.theory.mean_field` runs it on quadratures,
:func:`vgcore.theory.phase_diagram` on interpolation tables.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vgcore.theory._fixed_points import (
    Moments,
    correlation_fixed_point,
    depth_scale,
    length_fixed_point,
)

__all__ = ["CorrFactory", "classify", "solve"]

Array = np.ndarray
Corr = Callable[[Array, Array, Array], tuple[Array, Array]]
#: ``factory(q, sw) -> corr`` for the chaotic points (see ``correlation_fixed_point``).
CorrFactory = Callable[[Array, Array], Corr]


def classify(chi_1: Array, tol: float) -> Array:
    """``"ordered"`` / ``"critical"`` / ``"chaotic"`` by ``chi_1`` against ``1 -+ tol``."""
    chi_1 = np.asarray(chi_1)
    return np.where(
        chi_1 < 1.0 - tol, "ordered", np.where(chi_1 > 1.0 + tol, "chaotic", "critical")
    )


def solve(
    m: Moments,
    corr_factory: CorrFactory,
    sw: Array,
    sb: Array,
    tol: float,
    *,
    corr_rtol: float = 1e-13,
) -> dict[str, Array]:
    """``q_star, chi_1, chi_q, c_star, chi_c, xi_q, xi_c, phase`` as flat arrays.

    ``corr_rtol`` is the relative accuracy of the correlation moments (the Newton iteration
    for ``c*`` stops once its steps fall below it).
    """
    act = m.act
    q = length_fixed_point(m, sw, sb)
    finite = np.isfinite(q)
    d_moment, w_moment = m.DW(np.where(finite, q, 1.0))
    if act.homogeneous is None:
        # q* = inf: the per-layer gradient gain tends to sigma_w2 lim E[phi'^2].
        d_moment = np.where(finite, d_moment, act.kappa_inf)
    chi_1 = sw * d_moment
    chi_q = np.where(finite | np.isnan(q), sw * w_moment, np.nan)
    phase = classify(chi_1, tol)

    c_star = np.where(np.isinf(q), np.nan, 1.0)
    chi_c = np.where(np.isinf(q), np.nan, chi_1)
    chaotic = np.flatnonzero((phase == "chaotic") & finite & (q > 0.0))
    if chaotic.size:
        corr = corr_factory(q[chaotic], sw[chaotic])
        d_star, p_star = correlation_fixed_point(corr, q[chaotic], sw[chaotic], rtol=corr_rtol)
        c_star[chaotic] = 1.0 - d_star
        chi_c[chaotic] = sw[chaotic] * p_star
    return {
        "q_star": q,
        "chi_1": chi_1,
        "chi_q": chi_q,
        "c_star": c_star,
        "chi_c": chi_c,
        "xi_q": depth_scale(chi_q),
        "xi_c": depth_scale(chi_c),
        "phase": phase,
    }

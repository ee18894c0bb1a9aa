"""The edge of chaos: the weight variance at which ``chi_1 = 1``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import brentq

from vgcore.theory._activations import ActivationFns, resolve_activation
from vgcore.theory._fixed_points import ExactMoments, Moments, length_fixed_point
from vgcore.theory._roots import bracket_root
from vgcore.theory._solve import slopes
from vgcore.theory._validation import as_sigma

__all__ = ["critical_line", "critical_sigma_w2"]

#: Largest sigma_w2 searched for a crossing of chi_1 = 1 (the largest float).
SW_MAX = float(np.finfo(np.float64).max)
#: Factor between the trial points of the bracket search.
_STEP = 16.0


def chi_1(m: Moments, sw: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """``chi_1`` at ``q*(sw, sb)`` (its ``q -> inf`` limit where ``q*`` diverges)."""
    lf = length_fixed_point(m, sw, sb)
    return slopes(m, np.asarray(sw, dtype=np.float64), lf.q, lf.x)[0]


def _trials(act: ActivationFns) -> list[float]:
    """Trial ``sigma_w2`` of the bracket search: 1, 16, 256, ... up to the largest float, and
    for unbounded activations a point just below ``1 / kappa_inf``, where ``q*`` starts to
    diverge: ``chi_1`` may exceed 1 just below it and return to exactly 1 there (gelu, elu
    with a bias), and the edge of chaos is the first crossing."""
    out = [1.0]
    while out[-1] < SW_MAX:
        out.append(min(out[-1] * _STEP, SW_MAX))
    if act.homogeneous is None and act.kappa_inf > 0.0:
        out.append(1.0 / act.kappa_inf * (1.0 - 2.0**-40))
    return sorted(set(out))


def bifurcation_point(m: Moments, act: ActivationFns) -> float:
    """``1 / E[phi'(0)^2]``: where ``q* = 0`` loses stability at ``sigma_b2 = 0`` (NaN if n/a).

    Only meaningful when ``phi(0) = 0``; there ``chi_1 = 1`` holds exactly at this point as
    long as ``q* = 0`` there, which :func:`critical_sigma_w2` checks before using it.
    """
    if float(act.phi(np.zeros(1))[0]) != 0.0:
        return math.nan
    d0, _ = m.DW(np.zeros(1))
    return 1.0 / float(d0[0]) if d0[0] > 0.0 else math.nan


def _snap(m: Moments, act: ActivationFns, roots: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """Replace roots at ``sigma_b2 = 0`` by the exact bifurcation point when they are it.

    Beyond the bifurcation of ``q* = 0``, ``chi_1 - 1`` only grows quadratically (tanh:
    ``chi_1 = sw`` for ``sw <= 1``, ``1 + O((sw - 1)^2)`` above), which limits any root
    finder to ~1e-8 there; the bifurcation point itself is exact.
    """
    r0 = bifurcation_point(m, act)
    near = (sb == 0.0) & (np.abs(roots - r0) <= 1e-6 * r0)
    if near.any() and length_fixed_point(m, np.array([r0]), np.zeros(1)).q[0] == 0.0:
        roots = np.where(near, r0, roots)
    return roots


def critical_line(m: Moments, act: ActivationFns, sb: np.ndarray) -> np.ndarray:
    """Vectorised :func:`critical_sigma_w2` for a flat ``sb`` (bracketed Illinois iteration)."""
    sb = np.asarray(sb, dtype=np.float64)
    if act.homogeneous is not None:
        return np.full(sb.shape, 1.0 / act.homogeneous)
    out = np.full(sb.shape, np.nan)
    lo, hi = np.zeros(sb.shape), np.zeros(sb.shape)
    f_lo, f_hi = np.full(sb.shape, -1.0), np.full(sb.shape, -1.0)  # chi_1(0) = 0
    active = np.arange(sb.size)
    for trial in _trials(act):
        if not active.size:
            break
        lo[active], f_lo[active] = hi[active], f_hi[active]
        hi[active] = trial
        f_hi[active] = chi_1(m, hi[active], sb[active]) - 1.0
        active = active[f_hi[active] < 0.0]
    out[f_hi == 0.0] = hi[f_hi == 0.0]
    ok = np.flatnonzero(f_hi > 0.0)
    if ok.size:
        out[ok] = bracket_root(
            lambda x, i: chi_1(m, x, sb[ok[i]]) - 1.0,
            lo[ok],
            hi[ok],
            f_lo[ok],
            f_hi[ok],
            rtol=1e-15,
        )
    return _snap(m, act, out, sb)


def _critical_one(m: Moments, act: ActivationFns, sb: float) -> float:
    def f(sw: float) -> float:
        return float(chi_1(m, np.array([sw]), np.array([sb]))[0]) - 1.0

    lo = 0.0
    for hi in _trials(act):
        f_hi = f(hi)
        if f_hi == 0.0:
            return hi
        if f_hi > 0.0:
            root = float(brentq(f, lo, hi, xtol=1e-15, rtol=1e-15, maxiter=200))
            return float(_snap(m, act, np.array([root]), np.array([sb]))[0])
        lo = hi
    return math.nan


def critical_sigma_w2(activation: Any, sigma_b2: Any = 0.0, **act_params: float) -> Any:
    """The edge of chaos: ``sigma_w2`` with ``chi_1 = sigma_w2 E[phi'(sqrt(q*) z)^2] = 1``.

    Parameters
    ----------
    activation : str
        Activation name (see :func:`mean_field`).
    sigma_b2 : float or array_like
        Bias variance(s), >= 0; the result has the same shape.
    **act_params
        Activation parameters (``negative_slope``, ``alpha``, ``beta``, ``threshold``).

    Returns
    -------
    float or ndarray
        The critical weight variance; NaN where ``chi_1`` stays below 1 for every finite
        ``sigma_w2`` (none of the supported activations). Where ``chi_1`` jumps across 1 instead of crossing it (a
        bistable length map: gelu, silu, gelu_tanh at small ``sigma_b2`` and
        ``sigma_w2 > 2``, where ``q*`` jumps to inf once the unstable fixed point passes
        ``q = 1``), the location of the jump is returned.

    Notes
    -----
    ``chi_1(sigma_w2) - 1`` is bracketed between ``sigma_w2 = 0`` (``chi_1 = 0``) and the
    first power of 16 where it is positive (for bounded activations the critical
    ``sigma_w2`` grows like ``sqrt(sigma_b2)``: about ``1.9 sqrt(sigma_b2)`` for tanh), then solved with :func:`scipy.optimize.brentq`
    (``q*`` recomputed at every trial point; relative accuracy ~1e-14). Closed forms:
    ``1 / E[phi'^2]`` for identity (1), relu (2) and leaky_relu (``2 / (1 + a^2)``) at every
    ``sigma_b2``; at ``sigma_b2 = 0`` and ``phi(0) = 0`` the point ``1 / phi'(0)^2`` where
    ``q* = 0`` loses stability (tanh: 1) is returned exactly when it is the root.

    Examples
    --------
    >>> critical_sigma_w2("tanh", 0.0)
    1.0
    >>> critical_sigma_w2("relu", [0.0, 0.5]).tolist()
    [2.0, 2.0]
    """
    act = resolve_activation(activation, act_params)
    sb = as_sigma(sigma_b2, "sigma_b2")
    if act.homogeneous is not None:
        out = np.full(sb.shape, 1.0 / act.homogeneous)
    else:
        m = ExactMoments(act)
        uniq, inverse = np.unique(sb, return_inverse=True)
        roots = np.array([_critical_one(m, act, float(b)) for b in uniq])
        out = roots[inverse].reshape(sb.shape)
    return float(out) if out.ndim == 0 else out

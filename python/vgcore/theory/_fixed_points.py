"""Fixed points of the mean-field length and correlation maps (vectorised).

Private to :mod:`vgcore.theory`. Works with any provider of the 1-D moments
(:class:`ExactMoments` integrates them, the phase-diagram tables interpolate them).

Length map (Poole et al. 2016): ``q -> M(q) = sigma_w2 V(q) + sigma_b2`` with
``V(q) = E[phi(sqrt(q) z)^2]``. ``q*`` is the limit of ``q^{l+1} = M(q^l)`` from ``q^0 = 1``
(unit pre-activation variance). ``M`` is increasing, so the iterates move monotonically to the
nearest fixed point in the direction of ``M(1) - 1``; it is found by scanning ``q = 2^{+-k}``
for the first sign change of ``M(q) - q`` and refining the bracket. For every activation
where the length map has a single attracting fixed point this is that point; bistable maps
(gelu / silu / softplus for some ``sigma_w2 > 2``) get the one whose basin holds ``q = 1``.

Correlation map (Poole et al. 2016; Schoenholz et al. 2017): ``c -> C(c) = (sigma_w2 R(q*, c) +
sigma_b2) / q*`` with ``R(q, c) = E[phi(u1) phi(u2)]``. ``R`` is a power series in ``c`` with
non-negative coefficients (Mehler), so ``h(c) = C(c) - c`` is convex on ``[0, 1]`` with
``h(0) >= 0`` and ``h(1) = 0``: when ``chi_1 = C'(1) > 1`` there is exactly one other fixed
point ``c*`` in ``[0, 1)``, and Newton's method from ``c = 0`` increases monotonically to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np

from vgcore.theory._activations import ActivationFns
from vgcore.theory._quadrature import expect_1d, expect_2d
from vgcore.theory._roots import bracket_newton

__all__ = [
    "Q_EPS",
    "Q_MAX",
    "ExactMoments",
    "Moments",
    "correlation_fixed_point",
    "length_fixed_point",
]

Array = np.ndarray

#: Scan range of the length map: q = 2^-50 ... 2^100. A fixed point below 2^-50 is reported
#: as 0; a length map still growing at 2^100 is reported as diverging (inf).
_K_DOWN = 50
_K_UP = 100
Q_EPS = 2.0**-_K_DOWN
Q_MAX = 2.0**_K_UP


class Moments(Protocol):
    """Provider of the Gaussian moments of one activation as functions of ``q``."""

    act: ActivationFns

    def Vx(self, q: Array) -> Array:
        """``E[phi(sqrt(q) z)^2] - kappa_inf q`` for ``q >= 0`` (no cancellation at large q)."""

    def DW(self, q: Array) -> tuple[Array, Array]:
        """``(E[phi'^2], dV/dq)`` for ``q >= 0`` (limits ``q -> 0+`` at ``q = 0``)."""

    def VxW(self, q: Array) -> tuple[Array, Array]:
        """``(Vx, dV/dq)`` for ``q > 0`` (what Newton's method on the length map needs)."""


class ExactMoments:
    """Moments by quadrature (closed forms for positively homogeneous activations)."""

    def __init__(self, act: ActivationFns) -> None:
        self.act = act

    def Vx(self, q: Array) -> Array:
        q = np.asarray(q, dtype=np.float64)
        if self.act.homogeneous is not None:
            return np.zeros(q.shape)
        phi0 = float(self.act.phi(np.zeros(1))[0])
        out = np.full(q.shape, phi0 * phi0)
        pos = q > 0.0
        out[pos] = expect_1d(self.act, q[pos], ("Vx",))["Vx"]
        return out

    def VxW(self, q: Array) -> tuple[Array, Array]:
        q = np.asarray(q, dtype=np.float64)
        if self.act.homogeneous is not None:
            return np.zeros(q.shape), np.full(q.shape, self.act.homogeneous)
        out = expect_1d(self.act, q, ("Vx", "W"))
        return out["Vx"], out["W"]

    def DW(self, q: Array) -> tuple[Array, Array]:
        q = np.asarray(q, dtype=np.float64)
        if self.act.homogeneous is not None:
            k = np.full(q.shape, self.act.homogeneous)
            return k, k.copy()
        d0, w0 = limits_at_zero(self.act)
        d_m, w_m = np.full(q.shape, d0), np.full(q.shape, w0)
        pos = q > 0.0
        out = expect_1d(self.act, q[pos], ("D", "W"))
        d_m[pos], w_m[pos] = out["D"], out["W"]
        return d_m, w_m


def limits_at_zero(act: ActivationFns) -> tuple[float, float]:
    """``lim_{q -> 0+}`` of ``E[phi'^2]`` and ``dV/dq = E[phi'^2 + phi phi'']``.

    The Gaussian puts half its mass on either side of 0, so kinks give the mean of the one-sided
    values (jump terms vanish: every supported kink has ``phi(0) = 0``).
    """
    dl, dr = act.one_sided(act.dphi, 0.0)
    sl, sr = act.one_sided(act.d2phi, 0.0)
    phi0 = float(act.phi(np.zeros(1))[0])
    d0 = 0.5 * (dl * dl + dr * dr)
    return d0, d0 + phi0 * 0.5 * (sl + sr)


def _scan_cache(m: Moments) -> dict[int, float]:
    """Per-provider cache of ``Vx(2^k)`` at the scan points (shared by repeated solves)."""
    cache = getattr(m, "_scan_vx", None)
    if cache is None:
        cache = {}
        try:
            m._scan_vx = cache  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover - a provider with __slots__
            pass
    return cache


def length_fixed_point(m: Moments, sw: Array, sb: Array) -> Array:
    """``q*`` for flat arrays ``sw``, ``sb`` (see the module docstring for the definition).

    Returns inf where the length map grows without bound (``q^l -> inf``) and NaN where every
    ``q`` is a fixed point (a positively homogeneous activation exactly at ``sigma_b2 = 0``,
    ``sigma_w2 E[phi'^2] = 1``: the length is preserved at any value).
    """
    act = m.act
    sw = np.asarray(sw, dtype=np.float64)
    sb = np.asarray(sb, dtype=np.float64)
    qs = np.full(sw.shape, np.nan)
    if act.homogeneous is not None:
        den = 1.0 - sw * act.homogeneous
        with np.errstate(divide="ignore", invalid="ignore"):
            qs = np.where(den > 0.0, sb / den, np.inf)
        return np.where((den == 0.0) & (sb == 0.0), np.nan, qs)

    slope = 1.0 - sw * act.kappa_inf
    vx_at = _scan_cache(m)

    def scan_gap(k: int, idx: Array) -> Array:
        """``M(q) - q`` at ``q = 2^k``: one moment for every point (computed once)."""
        if k not in vx_at:
            vx_at[k] = float(m.Vx(np.array([2.0**k]))[0])
        # sw (V - kappa q) + sb - (1 - sw kappa) q: exact in sign even for huge q.
        return sw[idx] * vx_at[k] + sb[idx] - slope[idx] * 2.0**k

    lo = np.full(sw.shape, np.nan)
    hi = np.full(sw.shape, np.nan)
    g_lo = np.full(sw.shape, np.nan)
    g_hi = np.full(sw.shape, np.nan)
    all_idx = np.arange(sw.size)
    g1 = scan_gap(0, all_idx)
    qs[g1 == 0.0] = 1.0

    # Upward: the first q = 2^k with M(q) <= q brackets the fixed point.
    active = np.flatnonzero(g1 > 0.0)
    lo[active], g_lo[active] = 1.0, g1[active]
    for k in range(1, _K_UP + 1):
        if not active.size:
            break
        g = scan_gap(k, active)
        found = g <= 0.0
        hi[active[found]], g_hi[active[found]] = 2.0**k, g[found]
        lo[active[~found]], g_lo[active[~found]] = 2.0**k, g[~found]
        active = active[~found]
    qs[active] = np.inf

    # Downward: the first q = 2^-k with M(q) >= q; none above Q_EPS means q* = 0.
    active = np.flatnonzero(g1 < 0.0)
    hi[active], g_hi[active] = 1.0, g1[active]
    for k in range(1, _K_DOWN + 1):
        if not active.size:
            break
        g = scan_gap(-k, active)
        found = g >= 0.0
        lo[active[found]], g_lo[active[found]] = 2.0**-k, g[found]
        hi[active[~found]], g_hi[active[~found]] = 2.0**-k, g[~found]
        active = active[~found]
    qs[active] = 0.0

    br = np.flatnonzero(np.isfinite(lo) & np.isfinite(hi) & np.isnan(qs))
    if br.size:

        def gap(q: Array, i: Array) -> tuple[Array, Array]:
            j = br[i]
            vx, w = m.VxW(q)
            return sw[j] * vx + sb[j] - slope[j] * q, sw[j] * w - 1.0

        qs[br] = bracket_newton(gap, lo[br], hi[br], g_lo[br], g_hi[br], rtol=1e-15)
    return qs


def correlation_fixed_point(
    corr: Callable[[Array, Array, Array], tuple[Array, Array]],
    q: Array,
    sw: Array,
    *,
    rtol: float = 1e-13,
    maxiter: int = 100,
) -> tuple[Array, Array]:
    """``(d*, P*)`` with ``d* = 1 - c*`` and ``P* = E[phi'(u1) phi'(u2)]`` at ``c*``.

    For chaotic points only (``chi_1 > 1``, ``0 < q* < inf``). ``corr(q, d, idx)`` returns
    ``(Gamma, P)`` with ``Gamma = (V(q) - R(q, 1 - d)) / (q d)``: the fixed point solves
    ``sigma_w2 Gamma = 1`` and Newton's step on ``h(c) = d (1 - sigma_w2 Gamma)`` (slope
    ``sigma_w2 P - 1``) is ``d <- d sigma_w2 (Gamma - P) / (1 - sigma_w2 P)``, which shrinks ``d``
    monotonically.
    """
    q = np.asarray(q, dtype=np.float64)
    sw = np.asarray(sw, dtype=np.float64)
    d = np.ones(q.shape)
    p_star = np.full(q.shape, np.nan)
    active = np.arange(q.size)
    for _ in range(maxiter):
        if active.size == 0:
            break
        gam, p = corr(q[active], d[active], active)
        p_star[active] = p
        s = sw[active]
        with np.errstate(divide="ignore", invalid="ignore"):
            new = d[active] * s * (gam - p) / (1.0 - s * p)
        new = np.where(np.isfinite(new), np.clip(new, 0.0, 1.0), 0.0)
        # Quadratic convergence: once a step is below rtol (the accuracy of corr), stop.
        moved = np.abs(new - d[active]) > rtol * d[active]
        d[active] = new
        active = active[moved & (new > 0.0)]
    if active.size:
        _, p_star[active] = corr(q[active], d[active], active)
    return d, p_star


def exact_corr(act: ActivationFns) -> Callable[[Array, Array, Array], tuple[Array, Array]]:
    """``corr`` for :func:`correlation_fixed_point` by 2-D quadrature."""

    def corr(q: Array, d: Array, idx: Array) -> tuple[Array, Array]:
        d_r, p = expect_2d(act, q, d)
        return d_r / (q * d), p

    return corr


def depth_scale(chi: Array) -> Array:
    """``-1 / log(chi)``: inf at ``chi = 1``, 0 at ``chi = 0``, NaN where ``chi`` is NaN."""
    chi = np.asarray(chi, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = -1.0 / np.log(chi)
    return np.where(chi == 1.0, math.inf, xi)

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

The scan covers every float: between ``Q_TINY = 2^-30`` (times the activation's width
squared) and ``Q_BIG = 2^100`` the moments come from quadrature; below ``Q_TINY`` from the
activation's Taylor series at 0 (:func:`small_q_series`: there the quadrature's rounding,
``1e-16 q``, would exceed ``M(q) - q`` near the bifurcation of ``q* = 0``); above ``Q_BIG``
from their expansions in ``1 / sqrt(q)`` (:class:`Asymptotics`), where the fixed point is
solved in closed form in ``x = sqrt(q)`` so that it stays finite even when ``q*`` itself
exceeds the float range.

Correlation map (Poole et al. 2016; Schoenholz et al. 2017): ``c -> C(c) = (sigma_w2 R(q*, c) +
sigma_b2) / q*`` with ``R(q, c) = E[phi(u1) phi(u2)]``. ``R`` is a power series in ``c`` with
non-negative coefficients (Mehler), so ``h(c) = C(c) - c`` is convex on ``[0, 1]`` with
``h(0) >= 0`` and ``h(1) = 0``: when ``chi_1 = C'(1) > 1`` there is exactly one other fixed
point ``c*`` in ``[0, 1)``, and Newton's method from ``c = 0`` increases monotonically to it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vgcore.theory._activations import ActivationFns
from vgcore.theory._quadrature import _legendre, expect_1d, expect_2d_scaled
from vgcore.theory._roots import bracket_newton

__all__ = [
    "Q_BIG",
    "Asymptotics",
    "ExactMoments",
    "Moments",
    "asymptotics",
    "correlation_fixed_point",
    "exact_corr",
    "length_fixed_point",
    "small_q_series",
]

Array = np.ndarray

#: Above this variance the 1-D moments are their large-q expansions (next terms ~1/q: 1e-30).
Q_BIG = 2.0**100
_K_UP = 100
#: Below ``2^-_K_TINY * scale^2`` the length map is its Taylor series (see small_q_series).
_K_TINY = 30
#: The series scan goes down to the smallest subnormal.
_K_FLOOR = 1074
_SQRT_2PI = math.sqrt(2.0 * math.pi)
#: From this sqrt(q*) on, tanh / sigmoid correlations use the flat-density forms (flat_corr).
_X_FLAT = 2.0**50


class Moments(Protocol):
    """Provider of the Gaussian moments of one activation as functions of ``q``."""

    act: ActivationFns

    def Vx(self, q: Array) -> Array:
        """``E[phi(sqrt(q) z)^2] - kappa_inf q`` for ``q >= 0`` (no cancellation at large q)."""

    def DW(self, q: Array) -> tuple[Array, Array]:
        """``(E[phi'^2], dV/dq)`` for ``q >= 0`` (limits ``q -> 0+`` at ``q = 0``)."""

    def VxW(self, q: Array) -> tuple[Array, Array]:
        """``(Vx, dV/dq)`` for ``q > 0`` (what Newton's method on the length map needs)."""


# ------------------------------------------------------------------------------------------
# large q
@dataclass(frozen=True)
class Asymptotics:
    """Constants of the large-``q`` expansions of a non-homogeneous activation.

    With ``psi(u) = a_+- + m_+- u`` the asymptote (:meth:`ActivationFns.asymptote_full`) and
    ``g = phi^2 - psi^2`` (exponentially localised), ``E[f(sqrt(q) z)] = (int f du) /
    sqrt(2 pi q) (1 + O(1 / q))`` for localised ``f``, so for ``q >= Q_BIG`` (to ~1e-30)::

        V(q)  = kappa q + c0 + G / sqrt(2 pi q)
        D(q)  = kappa + Gd / sqrt(2 pi q)
        dV/dq = kappa - G / (2 sqrt(2 pi) q^1.5)

    with ``c0 = (a_-^2 + a_+^2) / 2``, ``G = int g du`` and ``Gd = int (phi'^2 - m_+-^2) du``
    (``E[(a + m u)^2]`` has no ``sqrt(q)`` term: on every side ``a`` or ``m`` is 0).
    """

    kappa: float
    c0: float
    G: float
    Gd: float

    def vx(self, x: Array) -> Array:
        """``V - kappa q`` at ``q = x^2``."""
        return self.c0 + self.G / _SQRT_2PI / x

    def d(self, x: Array) -> Array:
        """``E[phi'^2]`` at ``q = x^2``."""
        return self.kappa + self.Gd / _SQRT_2PI / x

    def w(self, x: Array) -> Array:
        """``dV/dq`` at ``q = x^2`` (may underflow; see :meth:`chi_q`)."""
        return self.kappa - self.G / (2.0 * _SQRT_2PI) / x / x / x

    def chi_1(self, sw: Array, x: Array) -> Array:
        """``sigma_w2 E[phi'^2]`` without overflow (``sigma_w2 / x`` is at most ~1e293)."""
        return sw * self.kappa + (sw / x) * (self.Gd / _SQRT_2PI)

    def chi_q(self, sw: Array, x: Array) -> Array:
        """``sigma_w2 dV/dq`` without spurious underflow (``dV/dq`` alone may be 1e-450)."""
        return sw * self.kappa - ((sw / x) / x) * (self.G / (2.0 * _SQRT_2PI) / x)


@functools.lru_cache(maxsize=32)
def _asymptotics(key: tuple[str, tuple[tuple[str, float], ...]]) -> Asymptotics:
    from vgcore.theory._activations import resolve_activation

    act = resolve_activation(key[0], dict(key[1]))
    # at q = Q_BIG the Gaussian weight is flat over the localised integrands to 1e-27
    out = expect_1d(act, np.array([Q_BIG]), ("Vg", "Dx"))
    scale = math.sqrt(2.0 * math.pi * Q_BIG)
    a_m, a_p = act.offsets
    return Asymptotics(
        kappa=act.kappa_inf,
        c0=0.5 * (a_m * a_m + a_p * a_p),
        G=float(out["Vg"][0]) * scale,
        Gd=float(out["Dx"][0]) * scale,
    )


def asymptotics(act: ActivationFns) -> Asymptotics:
    """The cached :class:`Asymptotics` of ``act``."""
    return _asymptotics(act.key)


# ------------------------------------------------------------------------------------------
# small q
@functools.lru_cache(maxsize=32)
def _small_q(
    key: tuple[str, tuple[tuple[str, float], ...]],
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    from vgcore.theory._activations import resolve_activation

    act = resolve_activation(key[0], dict(key[1]))
    if act.taylor is None:
        return None
    minus, plus = (np.array(c) for c in act.taylor)
    mom = [1.0, math.sqrt(2.0 / math.pi)]
    for n in range(2, 7):
        mom.append((n - 1) * mom[n - 2])  # E|z|^n

    def series(cm: Array, cp: Array, top: int) -> tuple[float, ...]:
        coef = []
        for n in range(top + 1):
            a_p = sum(cp[j] * cp[n - j] for j in range(n + 1))
            a_m = sum(cm[j] * cm[n - j] for j in range(n + 1))
            coef.append(float(0.5 * mom[n] * (a_p + (-1) ** n * a_m)))
        return tuple(coef)

    deriv = np.arange(1, 7, dtype=np.float64)
    return series(minus, plus, 6), series(minus[1:] * deriv, plus[1:] * deriv, 5)


def small_q_series(act: ActivationFns) -> tuple[float, ...] | None:
    """``v_0 .. v_6`` with ``V(q) = sum_n v_n q^(n/2) + O(q^3.5)`` (None if unavailable).

    From the one-sided Taylor coefficients ``c^+-`` of phi at 0: ``v_n = E|z|^n (A_n^+ +
    (-1)^n A_n^-) / 2`` with ``A_n = sum_{j+k=n} c_j c_k``. Used for ``q <= 2^-30 scale^2``,
    where the dropped terms are ``q^2`` (~1e-18) relative to the first non-linear one.
    """
    out = _small_q(act.key)
    return None if out is None else out[0]


def small_q_d_series(act: ActivationFns) -> tuple[float, ...] | None:
    """``e_0 .. e_5`` with ``E[phi'^2] = sum_n e_n q^(n/2) + O(q^3)`` (as :func:`small_q_series`
    for phi')."""
    out = _small_q(act.key)
    return None if out is None else out[1]


def q_tiny(act: ActivationFns) -> float:
    """Below this variance the moments come from the Taylor series at 0."""
    return 2.0 ** -(_K_TINY + max(0, math.ceil(-2.0 * math.log2(act.scale))))


def _series_gap(v: tuple[float, ...], sw: Array, sb: Array, q: Array) -> tuple[Array, Array]:
    """``M(q) - q`` and its derivative from the series (``sigma_w2 v_2 - 1`` formed first)."""
    r = np.sqrt(q)
    lin = sw * v[2] - 1.0
    rest = v[1] * r + v[3] * q * r + v[4] * q * q + v[5] * q * q * r + v[6] * q * q * q
    d_rest = v[3] * 1.5 * r + v[4] * 2.0 * q + v[5] * 2.5 * q * r + v[6] * 3.0 * q * q
    with np.errstate(divide="ignore", invalid="ignore"):
        d_rest = d_rest + np.where(r > 0.0, 0.5 * v[1] / r, 0.0)
    return sw * v[0] + sb + lin * q + sw * rest, lin + sw * d_rest


# ------------------------------------------------------------------------------------------
class ExactMoments:
    """Moments by quadrature (closed forms for positively homogeneous activations; large-q
    expansions above ``Q_BIG``)."""

    def __init__(self, act: ActivationFns) -> None:
        self.act = act
        self.asym = asymptotics(act) if act.homogeneous is None else None

    def Vx(self, q: Array) -> Array:
        q = np.asarray(q, dtype=np.float64)
        if self.asym is None:
            return np.zeros(q.shape)
        phi0 = float(self.act.phi(np.zeros(1))[0])
        out = np.full(q.shape, phi0 * phi0)
        big = q >= Q_BIG
        out[big] = self.asym.vx(np.sqrt(q[big]))
        mid = (q > 0.0) & ~big
        out[mid] = expect_1d(self.act, q[mid], ("Vx",))["Vx"]
        return out

    def VxW(self, q: Array) -> tuple[Array, Array]:
        q = np.asarray(q, dtype=np.float64)
        if self.asym is None:
            return np.zeros(q.shape), np.full(q.shape, self.act.homogeneous)
        vx, w = np.empty(q.shape), np.empty(q.shape)
        big = q >= Q_BIG
        x = np.sqrt(q[big])
        vx[big], w[big] = self.asym.vx(x), self.asym.w(x)
        out = expect_1d(self.act, q[~big], ("Vx", "W"))
        vx[~big], w[~big] = out["Vx"], out["W"]
        return vx, w

    def DW(self, q: Array) -> tuple[Array, Array]:
        q = np.asarray(q, dtype=np.float64)
        if self.asym is None:
            k = np.full(q.shape, self.act.homogeneous)
            return k, k.copy()
        d0, w0 = limits_at_zero(self.act)
        d_m, w_m = np.full(q.shape, d0), np.full(q.shape, w0)
        big = q >= Q_BIG
        x = np.sqrt(q[big])
        d_m[big], w_m[big] = self.asym.d(x), self.asym.w(x)
        v, e = small_q_series(self.act), small_q_d_series(self.act)
        tiny = (q > 0.0) & (q <= q_tiny(self.act)) if v is not None else np.zeros(q.shape, bool)
        if tiny.any() and v is not None and e is not None:
            r = np.sqrt(q[tiny])
            d_m[tiny] = sum(c * r**n for n, c in enumerate(e))
            with np.errstate(divide="ignore", invalid="ignore"):
                w_m[tiny] = sum(0.5 * n * c * r ** (n - 2) for n, c in enumerate(v) if n and c)
        mid = (q > 0.0) & ~big & ~tiny
        out = expect_1d(self.act, q[mid], ("D", "W"))
        d_m[mid], w_m[mid] = out["D"], out["W"]
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


#: ``Vx(2^k)`` at the scan points, per (provider class, activation); shared by all solves.
_SCAN_CACHE: dict[tuple[str, object], dict[int, float]] = {}


def _scan_vx(m: Moments, ks: range) -> Array:
    """``Vx(2^k)`` for the ``k`` in ``ks`` (computed once per provider kind and activation)."""
    if len(_SCAN_CACHE) > 64:  # many parameter variants: start afresh
        _SCAN_CACHE.clear()
    cache = _SCAN_CACHE.setdefault((type(m).__name__, m.act.key), {})
    missing = [k for k in ks if k not in cache]
    if missing:
        vals = m.Vx(np.exp2(np.array(missing, dtype=np.float64)))
        cache.update(zip(missing, (float(v) for v in vals)))
    return np.array([cache[k] for k in ks])


@dataclass
class LengthFixedPoint:
    """``q*`` and ``x = sqrt(q*)``, flat arrays.

    ``x`` is finite whenever the fixed point is: it stays representable when ``q*`` exceeds
    the float range (``q = inf``, ``x`` finite). ``q = x = inf``: the variance grows without
    bound with depth.
    """

    q: Array
    x: Array

    @property
    def diverges(self) -> Array:
        return np.isinf(self.x)


def length_fixed_point(m: Moments, sw: Array, sb: Array) -> LengthFixedPoint:
    """``q*`` for flat arrays ``sw``, ``sb`` (see the module docstring for the definition).

    Returns ``q = x = inf`` where the length map grows without bound (``q^l -> inf``). A
    positively homogeneous activation exactly at ``sigma_b2 = 0``, ``sigma_w2 E[phi'^2] = 1``
    preserves every length: the iteration from ``q = 1`` stays there, ``q* = 1``.
    """
    act = m.act
    sw = np.asarray(sw, dtype=np.float64)
    sb = np.asarray(sb, dtype=np.float64)
    if act.homogeneous is not None:
        den = 1.0 - sw * act.homogeneous
        pos = den > 0.0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            q = np.where(pos, sb / den, np.inf)
            x = np.where(pos, np.sqrt(sb) / np.sqrt(den), np.inf)
        still = (den == 0.0) & (sb == 0.0)
        return LengthFixedPoint(np.where(still, 1.0, q), np.where(still, 1.0, x))

    qs = np.full(sw.shape, np.nan)
    slope = 1.0 - sw * act.kappa_inf

    def scan_gaps(ks: range, idx: Array) -> Array:
        """``M(q) - q`` at ``q = 2^k`` (rows: points, columns: ks); exact in sign for huge q."""
        vx = _scan_vx(m, ks)
        q = np.exp2(np.array(list(ks), dtype=np.float64))
        with np.errstate(over="ignore", invalid="ignore"):
            # sw (V - kappa q) + sb - (1 - sw kappa) q; overflow only ever to +inf
            g = sw[idx, None] * vx[None, :] + sb[idx, None] - slope[idx, None] * q[None, :]
        return np.where(np.isnan(g), np.inf, g)

    lo = np.full(sw.shape, np.nan)
    hi = np.full(sw.shape, np.nan)
    g_lo = np.full(sw.shape, np.nan)
    g_hi = np.full(sw.shape, np.nan)
    all_idx = np.arange(sw.size)
    g1 = scan_gaps(range(0, 1), all_idx)[:, 0]
    qs[g1 == 0.0] = 1.0

    # Upward: the first q = 2^k with M(q) <= q brackets the fixed point.
    active = np.flatnonzero(g1 > 0.0)
    prev_g = g1[active]
    for start in range(1, _K_UP + 1, 25):
        if not active.size:
            break
        ks = range(start, min(start + 25, _K_UP + 1))
        g = scan_gaps(ks, active)
        found = g <= 0.0
        has = found.any(axis=1)
        j = np.argmax(found, axis=1)
        rows = np.flatnonzero(has)
        pts = active[rows]
        jj = j[rows]
        hi[pts], g_hi[pts] = np.exp2(ks.start + jj), g[rows, jj]
        lo_k = ks.start + jj - 1
        lo_g = np.where(jj > 0, g[rows, np.maximum(jj - 1, 0)], prev_g[rows])
        lo[pts], g_lo[pts] = np.exp2(lo_k), lo_g
        prev_g = g[~has, -1]
        active = active[~has]
    big = active  # M(q) > q up to Q_BIG: solved with the large-q expansion below

    # Downward: the first q = 2^-k with M(q) >= q, by quadrature down to 2^-_K_TINY scale^2.
    k_tiny = -round(math.log2(q_tiny(act)))
    active = np.flatnonzero(g1 < 0.0)
    prev_g = g1[active]
    for start in range(1, k_tiny + 1, 25):
        if not active.size:
            break
        ks = range(-start, -min(start + 25, k_tiny + 1), -1)
        g = scan_gaps(ks, active)
        found = g >= 0.0
        has = found.any(axis=1)
        j = np.argmax(found, axis=1)
        rows = np.flatnonzero(has)
        pts = active[rows]
        jj = j[rows]
        lo[pts], g_lo[pts] = np.exp2(ks.start - jj), g[rows, jj]
        hi_g = np.where(jj > 0, g[rows, np.maximum(jj - 1, 0)], prev_g[rows])
        hi[pts], g_hi[pts] = np.exp2(ks.start - jj + 1), hi_g
        prev_g = g[~has, -1]
        active = active[~has]
    tiny = active

    br = np.flatnonzero(np.isfinite(lo) & np.isfinite(hi) & np.isnan(qs))
    if br.size:

        def gap(q: Array, i: Array) -> tuple[Array, Array]:
            j = br[i]
            vx, w = m.VxW(q)
            return sw[j] * vx + sb[j] - slope[j] * q, sw[j] * w - 1.0

        qs[br] = bracket_newton(gap, lo[br], hi[br], g_lo[br], g_hi[br], rtol=1e-15)
    xs = np.sqrt(qs)
    if tiny.size:
        qs[tiny] = _tiny_fixed_point(m, sw[tiny], sb[tiny], 2.0**-k_tiny)
        xs[tiny] = np.sqrt(qs[tiny])
    if big.size:
        qs[big], xs[big] = _big_fixed_point(m, sw[big], sb[big], slope[big])
    return LengthFixedPoint(qs, xs)


def _tiny_fixed_point(m: Moments, sw: Array, sb: Array, q_tiny: float) -> Array:
    """The largest fixed point below ``q_tiny`` (``M(q_tiny) < q_tiny``), from the series."""
    v = small_q_series(m.act)
    if v is None:  # no series (a softplus threshold next to 0): quadrature, 2^-1000 at most
        phi0 = float(m.act.phi(np.zeros(1))[0])
        _, w0 = limits_at_zero(m.act)
        v = (phi0 * phi0, 0.0, w0, 0.0, 0.0, 0.0, 0.0)
    out = np.zeros(sw.shape)
    ks = np.arange(int(-math.log2(q_tiny)), _K_FLOOR + 1)
    q = np.exp2(-ks.astype(np.float64))
    g, _ = _series_gap(v, sw[:, None], sb[:, None], q[None, :])
    # strictly positive: a gap that underflows to -0 is no fixed point (tanh at sw = 1, sb = 0)
    found = g > 0.0
    has = found.any(axis=1)
    j = np.argmax(found, axis=1)
    rows = np.flatnonzero(has)
    if rows.size:
        jr = j[rows]
        lo, hi = q[jr], np.where(jr > 0, q[np.maximum(jr - 1, 0)], q_tiny)
        g_lo = g[rows, jr]
        g_hi = np.where(jr > 0, g[rows, np.maximum(jr - 1, 0)], -1.0)

        def gap(qq: Array, i: Array) -> tuple[Array, Array]:
            r = rows[i]
            return _series_gap(v, sw[r], sb[r], qq)

        out[rows] = bracket_newton(gap, lo, hi, g_lo, g_hi, rtol=1e-15)
    # no sign change above the smallest subnormal: M(0) = sw v0 + sb is 0 or below 5e-324
    rest = np.flatnonzero(~has)
    if rest.size:
        with np.errstate(divide="ignore", invalid="ignore"):
            lin = (sw[rest] * v[0] + sb[rest]) / (1.0 - sw[rest] * v[2])
        out[rest] = np.where(lin > 0.0, lin, 0.0)
    return out


def _big_fixed_point(m: Moments, sw: Array, sb: Array, slope: Array) -> tuple[Array, Array]:
    """``(q*, sqrt(q*))`` where ``M(q) > q`` up to ``Q_BIG``.

    There ``M(q) - q = A + B / sqrt(q) - slope q`` with ``A = sw c0 + sb``, ``B = sw G /
    sqrt(2 pi)``: no root above when ``slope = 1 - sw kappa <= 0`` (inf), else a unique one,
    ``x = sqrt((A + B / x) / slope)``, which the iteration reaches in a few steps (``B / x``
    is ~1e-15 of ``A`` there). Computed as ``sqrt(M) sqrt(A / M + ...)``, ``M = max(sw, sb)``,
    so that it stays finite when ``q*`` does not fit a float.
    """
    asym = asymptotics(m.act)
    q = np.full(sw.shape, np.inf)
    x = np.full(sw.shape, np.inf)
    ok = np.flatnonzero(slope > 0.0)
    if ok.size:
        s, b, sl = sw[ok], sb[ok], slope[ok]
        big_m = np.maximum(s, b)
        rs, rb = s / big_m, b / big_m
        root_m = np.sqrt(big_m)
        xi = root_m * np.sqrt(rs * asym.c0 + rb) / np.sqrt(sl)
        for _ in range(4):
            corr = (rs / xi) * (asym.G / _SQRT_2PI)
            xi = root_m * np.sqrt(np.maximum(rs * asym.c0 + rb + corr, 0.0)) / np.sqrt(sl)
        x[ok] = xi
        with np.errstate(over="ignore"):
            q[ok] = xi * xi
    return q, x


# ------------------------------------------------------------------------------------------
#: ``corr(d, idx) -> (sigma_w2 Gamma, sigma_w2 P)`` for the points ``idx`` of a solve.
Corr = Callable[[Array, Array], tuple[Array, Array]]


def correlation_fixed_point(
    corr: Corr,
    n: int,
    *,
    rtol: float = 1e-13,
    maxiter: int = 100,
) -> tuple[Array, Array]:
    """``(d*, sigma_w2 P*)`` with ``d* = 1 - c*`` and ``P* = E[phi'(u1) phi'(u2)]`` at ``c*``.

    For ``n`` chaotic points (``chi_1 > 1``, ``0 < q* < inf``). ``corr(d, idx)`` returns
    ``sigma_w2`` times ``(Gamma, P)`` with ``Gamma = (V(q) - R(q, 1 - d)) / (q d)``: the fixed
    point solves ``sigma_w2 Gamma = 1`` and Newton's step on ``h(c) = d (1 - sigma_w2 Gamma)``
    (slope ``sigma_w2 P - 1``) is ``d <- d (sGamma - sP) / (1 - sP)``, which shrinks ``d``
    monotonically.
    """
    d = np.ones(n)
    p_star = np.full(n, np.nan)
    active = np.arange(n)
    for _ in range(maxiter):
        if active.size == 0:
            break
        s_gam, s_p = corr(d[active], active)
        p_star[active] = s_p
        with np.errstate(divide="ignore", invalid="ignore"):
            new = d[active] * (s_gam - s_p) / (1.0 - s_p)
        new = np.where(np.isfinite(new), np.clip(new, 0.0, 1.0), 0.0)
        # Quadratic convergence: once a step is below rtol (the accuracy of corr), stop.
        moved = np.abs(new - d[active]) > rtol * d[active]
        d[active] = new
        active = active[moved & (new > 0.0)]
    if active.size:
        _, p_star[active] = corr(d[active], active)
    return d, p_star


def scaled_corr(sw: Array, x: Array, d: Array, d_r: Array, p_scaled: Array) -> tuple[Array, Array]:
    """``sigma_w2 Gamma = sigma_w2 dR / (q d)`` and ``sigma_w2 P`` from ``dR`` and
    ``P max(q, 1)`` without overflow or underflow (``q = x^2`` may exceed the float range)."""
    g = np.maximum(x, 1.0)
    big = x >= 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        s_gam = np.where(big, (sw / x) / x * (d_r / d), sw * ((d_r / x) / x / d))
    return s_gam, (sw / g) / g * p_scaled


#: Squared Fourier transforms ``|int phi'(t) e^{ikt} dt|^2`` of the bounded activations.
_SPECTRA: dict[str, Callable[[Array], Array]] = {
    "tanh": lambda k: (np.pi * k / np.sinh(0.5 * np.pi * k)) ** 2,  # sech^2
    "sigmoid": lambda k: (np.pi * k / np.sinh(np.pi * k)) ** 2,  # sech^2(t / 2) / 4
}
#: k-panel breaks (the spectra are below 1e-18 of their peak beyond k = 16).
_K_BREAKS = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0])


def _flat_moments(act: ActivationFns, sigma: Array) -> tuple[Array, Array]:
    """``(Phi_R, Phi_P)(sigma)`` for tanh / sigmoid by 1-D Fourier integrals (vectorised).

    ``Phi_R = (1/2) int dt E_xi[(phi(t) - phi(t + sigma xi))^2] = (1/pi) int_0^inf S(k) (1 -
    exp(-sigma^2 k^2 / 2)) / k^2 dk`` and ``Phi_P = int dt phi'(t) E_xi[phi'(t + sigma xi)] =
    (1/pi) int_0^inf S(k) exp(-sigma^2 k^2 / 2) dk`` (Parseval; ``S`` the squared transform
    of phi'). Panels are graded around ``k = 1 / sigma`` where the Gaussian factor bends.
    """
    spec = _SPECTRA[act.name]
    sigma = np.asarray(sigma, dtype=np.float64)
    kw = 1.0 / sigma
    grade = kw[:, None] * np.exp2(np.arange(-6, 7, dtype=np.float64))[None, :]
    brk = np.sort(
        np.concatenate(
            [np.broadcast_to(_K_BREAKS, (sigma.size, _K_BREAKS.size)), np.minimum(grade, 16.0)],
            axis=1,
        ),
        axis=1,
    )
    gl_x, gl_w = _legendre(16)
    lo, hi = brk[:, :-1, None], brk[:, 1:, None]
    half = 0.5 * (hi - lo)
    k = (lo + half * (gl_x + 1.0)).reshape(sigma.size, -1)
    w = (half * gl_w).reshape(sigma.size, -1)
    s_k = spec(np.maximum(k, 1e-300))
    s0 = float(spec(np.array([1e-300]))[0])  # = da^2
    with np.errstate(under="ignore", over="ignore"):
        sk2 = (sigma[:, None] * k) ** 2 / 2.0
        gauss = np.exp(-sk2)
        one_minus = -np.expm1(-sk2)
        # h = (S(k) - S(0) e^{-k^2}) / k^2 is smooth (S is even): the 1/k^2 tail of
        # S(k) (1 - gauss) / k^2 is integrated in closed form, int e^{-k^2} (1 - e^{-s^2 k^2 /
        # 2}) / k^2 dk = sqrt(pi) (sqrt(1 + s^2 / 2) - 1), which grows like s.
        far = k > 1e-6
        kk = np.where(far, k * k, 1.0)
        # below 1e-6 the limit: S(k) = S(0) (1 - pi^2 k^2 / (3 S(0))) + O(k^4) for both
        h = np.where(far, (s_k - s0 * np.exp(-kk)) / kk, s0 - np.pi**2 / 3.0)
        small = sigma < 1.0
        sg = np.where(small, sigma, 1.0)
        sb_ = np.where(small, 1.0, sigma)
        half_s2 = 0.5 * sg * sg
        excess = np.where(
            small, half_s2 / (np.sqrt(1.0 + half_s2) + 1.0), sb_ * np.sqrt(1.0 / sb_**2 + 0.5) - 1.0
        )
        tail = s0 * math.sqrt(math.pi) * excess
    phi_r = (np.einsum("ij,ij->i", w, h * one_minus) + tail) / np.pi
    phi_p = np.einsum("ij,ij->i", w, s_k * gauss) / np.pi
    return phi_r, phi_p


def flat_corr(act: ActivationFns, sw: Array, x: Array) -> Corr:
    """``corr`` for bounded activations at ``x = sqrt(q*) >= 2^50``.

    There the Gaussian density of ``u1`` is flat (to 1e-27) over the ``|u| < 50`` where
    ``phi`` differs from its step asymptote, and ``u2 | u1 = t ~ N(c t, sigma^2)`` with
    ``sigma = x sin(theta)``, ``c = cos(theta)``; ``c t = t`` to 1e-24 wherever ``sigma`` is
    small enough for it to matter. With ``Phi_R, Phi_P`` of :func:`_flat_moments`::

        dR = Phi_R(sigma) / (sqrt(2 pi) x) + da^2 (theta - sin theta) / (2 pi)
        P  = Phi_P(sigma) / (sqrt(2 pi) x)

    (``da = a_+ - a_-``; the second term of ``dR`` completes the step part of ``Phi_R``,
    ``da^2 sin(theta) / (2 pi)``, to the exact ``da^2 theta / (2 pi)``).
    """
    da = act.offsets[1] - act.offsets[0]

    def corr(d: Array, idx: Array) -> tuple[Array, Array]:
        xi, swi = x[idx], sw[idx]
        theta = 2.0 * np.arcsin(np.sqrt(0.5 * d))
        sin_t = np.sin(theta)
        phi_r, phi_p = _flat_moments(act, xi * sin_t)
        # theta - sin(theta) without cancellation for small theta
        t2 = theta * theta
        excess = np.where(
            theta < 1e-2,
            theta * t2 / 6.0 * (1.0 - t2 / 20.0 * (1.0 - t2 / 42.0)),
            theta - sin_t,
        )
        d_r = phi_r / (_SQRT_2PI * xi) + da * da * excess / (2.0 * np.pi)
        s_gam = (swi / xi) / xi * (d_r / d)
        return s_gam, (swi / xi) * phi_p / _SQRT_2PI

    return corr


def exact_corr(act: ActivationFns, sw: Array, x: Array) -> Corr:
    """``corr`` for :func:`correlation_fixed_point` by 2-D quadrature (points with ``q* =
    x^2``, flat arrays); bounded activations at ``x >= 2^50`` use :func:`flat_corr`."""
    flat = np.flatnonzero(x >= _X_FLAT) if act.name in _SPECTRA else np.zeros(0, dtype=int)
    pos = np.empty(x.size, dtype=int)
    pos[flat] = np.arange(flat.size)
    flat_fn = flat_corr(act, sw[flat], x[flat]) if flat.size else None

    def corr(d: Array, idx: Array) -> tuple[Array, Array]:
        s_gam, s_p = np.empty(idx.size), np.empty(idx.size)
        is_flat = x[idx] >= _X_FLAT if flat_fn is not None else np.zeros(idx.size, bool)
        if is_flat.any() and flat_fn is not None:
            s_gam[is_flat], s_p[is_flat] = flat_fn(d[is_flat], pos[idx[is_flat]])
        rest = idx[~is_flat]
        if rest.size:
            d_r, p_scaled = expect_2d_scaled(act, x[rest], d[~is_flat])
            s_gam[~is_flat], s_p[~is_flat] = scaled_corr(
                sw[rest], x[rest], d[~is_flat], d_r, p_scaled
            )
        return s_gam, s_p

    return corr


def depth_scale(chi: Array) -> Array:
    """``-1 / log|chi|``: inf at ``|chi| = 1``, 0 at ``chi = 0``, negative for ``|chi| > 1``
    (growth with e-folding depth ``|xi|``); never NaN for a non-NaN ``chi``."""
    chi = np.abs(np.asarray(chi, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = -1.0 / np.log(chi)
    return np.where(chi == 1.0, math.inf, xi)

"""Chebyshev interpolation tables of the mean-field moments (for whole phase diagrams).

Private to :mod:`vgcore.theory`. Solving the fixed points on a 400 x 400 grid by quadrature
would take minutes, so :func:`vgcore.theory.phase_diagram` interpolates instead:

* 1-D moments as functions of ``s = log q`` on ``[-36, 70]`` (``q`` from 2e-16 to 2.5e30):
  ``Vx / q``, ``log E[phi'^2]`` and ``dV/dq``, each a Chebyshev interpolant on
  every segment ``[2k, 2k + 2]`` (17 points; interpolation error ~1e-13, the functions are
  analytic in ``|Im s| < pi / 2``). Built once per activation and cached.
* 2-D moments ``Gamma(q, theta) = (V - R(q, cos theta)) / (q (1 - cos theta))`` and
  ``P(q, theta) = E[phi'(u1) phi'(u2)]``, divided by ``E[phi'^2]``, on segments
  ``[3k, 3k + 3]`` of ``s`` times ``theta`` in ``[0, pi / 2]`` (``c`` in ``[0, 1]``, where
  chaotic fixed points lie): 9 or 17 points in ``s`` and 17 to 257 in a stretched ``theta``
  variable (see :func:`theta_of`), refined until the trailing coefficients are below 1e-10.
  Only the segments holding chaotic points are built, each once per activation (cached),
  with 8-node panels (entries accurate to ~1e-10) spread over a few threads.

Variances outside the tables (``q < e^-36``, ``q > e^70``) fall back to the exact moments
(:class:`~vgcore.theory._fixed_points.ExactMoments`, whose large-q expansions are closed
forms) and to 2-D quadrature.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vgcore.theory._activations import ActivationFns, resolve_activation
from vgcore.theory._fixed_points import Corr, ExactMoments, exact_corr
from vgcore.theory._quadrature import expect_1d, expect_2d

__all__ = ["S_HI", "S_LO", "TableMoments", "table_corr_factory"]

Array = np.ndarray

S_LO = -36.0
S_HI = 70.0
SEG = 2.0
N_S = 17
N_SEG = int((S_HI - S_LO) / SEG)
#: Segment width of the 2-D tables (their target accuracy, ~1e-10, allows wider ones).
SEG_2D = 3.0
N_SEG_2D = math.ceil((S_HI - S_LO) / SEG_2D)
#: Gauss-Legendre nodes per panel for the 2-D table entries.
NODES_TABLE_2D = 8


@functools.lru_cache(maxsize=8)
def _cheb_matrix(n: int) -> Array:
    """Values at the ``n`` Chebyshev extreme points (ascending) -> coefficients."""
    x = -np.cos(np.pi * np.arange(n) / (n - 1))
    vander = np.polynomial.chebyshev.chebvander(x, n - 1)
    return np.linalg.inv(vander)


def _cheb_points(n: int) -> Array:
    return -np.cos(np.pi * np.arange(n) / (n - 1))


def _clenshaw_segments(coef_t: Array, k: Array, x: Array) -> Array:
    """Chebyshev series ``coef_t[:, k]`` (coefficients along axis 0) at ``x``, per point."""
    b1 = np.zeros(x.shape)
    b2 = np.zeros(x.shape)
    two_x = 2.0 * x
    for j in range(coef_t.shape[0] - 1, 0, -1):
        b1, b2 = coef_t[j].take(k) + two_x * b1 - b2, b1
    return coef_t[0].take(k) + x * b1 - b2


def _segment(s: Array, width: float = SEG, count: int = N_SEG) -> tuple[Array, Array]:
    """Segment index and local coordinate in [-1, 1] for ``s`` (clamped to the table)."""
    s = np.clip(s, S_LO, S_LO + width * count)
    k = np.minimum(((s - S_LO) / width).astype(int), count - 1)
    x = 2.0 * (s - (S_LO + width * k)) / width - 1.0
    return k, x


ActKey = tuple[str, tuple[tuple[str, float], ...]]


def _act_key(act: ActivationFns) -> ActKey:
    """Hashable identity of an activation (name and parameters), for the table caches."""
    return act.name, tuple(sorted(act.params.items()))


def _act(key: ActKey) -> ActivationFns:
    return resolve_activation(key[0], dict(key[1]))


@functools.lru_cache(maxsize=16)
def _table_1d(key: ActKey) -> Array:
    """Coefficients (3, N_S, N_SEG) of ``Vx / q``, ``log D`` and ``W`` per segment."""
    act = _act(key)
    x = _cheb_points(N_S)
    s = S_LO + SEG * (np.arange(N_SEG)[:, None] + 0.5 * (x[None, :] + 1.0))
    q = np.exp(s.ravel())
    out = expect_1d(act, q, ("Vx", "D", "W"))
    vals = np.stack([out["Vx"] / q, np.log(out["D"]), out["W"]])
    vals = vals.reshape(3, N_SEG, N_S)
    return np.ascontiguousarray(np.swapaxes(vals @ _cheb_matrix(N_S).T, 1, 2))


Q_LO = math.exp(S_LO)
Q_HI = math.exp(S_HI)


def _inside(q: Array) -> Array:
    return (q >= Q_LO) & (q <= Q_HI)


class TableMoments:
    """The :class:`~vgcore.theory._fixed_points.Moments` interface by interpolation."""

    def __init__(self, act: ActivationFns) -> None:
        self.act = act
        self._coef = _table_1d(_act_key(act))
        self._exact = ExactMoments(act)

    def _eval(self, which: int, q: Array) -> Array:
        k, x = _segment(np.log(q))
        return _clenshaw_segments(self._coef[which], k, x)

    def Vx(self, q: Array) -> Array:
        q = np.asarray(q, dtype=np.float64)
        ins = _inside(q)
        out = np.empty(q.shape)
        out[~ins] = self._exact.Vx(q[~ins])
        out[ins] = q[ins] * self._eval(0, q[ins])
        return out

    def DW(self, q: Array) -> tuple[Array, Array]:
        q = np.asarray(q, dtype=np.float64)
        ins = _inside(q)
        d_m, w_m = np.empty(q.shape), np.empty(q.shape)
        d_m[~ins], w_m[~ins] = self._exact.DW(q[~ins])
        d_m[ins] = np.exp(self._eval(1, q[ins]))
        w_m[ins] = self._eval(2, q[ins])
        return d_m, w_m

    def VxW(self, q: Array) -> tuple[Array, Array]:
        q = np.asarray(q, dtype=np.float64)
        ins = _inside(q)
        vx, w = np.empty(q.shape), np.empty(q.shape)
        vx[~ins], w[~ins] = self._exact.VxW(q[~ins])
        k, x = _segment(np.log(q[ins]))
        vx[ins] = q[ins] * _clenshaw_segments(self._coef[0], k, x)
        w[ins] = _clenshaw_segments(self._coef[2], k, x)
        return vx, w


#: Resolutions tried in turn (nested Chebyshev extreme points, 2^k + 1): s, then theta.
_N_S_2D = (9, 17)
_N_THETA = (17, 33, 65, 129, 257)
#: Accept a resolution once its last three coefficients are below this (values are O(1)).
_TAIL = 1e-10


def _workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _entries_2d(act: ActivationFns, q: Array, theta: Array, d_1: Array) -> Array:
    """``Gamma / D`` and ``P / D`` at the pairs ``(q_i, theta_i)``, theta > 0: shape (2, n).

    Split over a few threads (numpy releases the GIL in the elementwise work).
    """
    d = 2.0 * np.sin(theta / 2.0) ** 2  # 1 - cos(theta), without cancellation
    n_jobs = min(_workers(), max(1, q.size // 16))
    parts = [np.arange(i, q.size, n_jobs) for i in range(n_jobs)]
    d_r, p = np.empty(q.size), np.empty(q.size)

    def run(idx: Array) -> None:
        d_r[idx], p[idx] = expect_2d(act, q[idx], d[idx], nodes=NODES_TABLE_2D)

    if n_jobs == 1:
        run(parts[0])
    else:
        with ThreadPoolExecutor(n_jobs) as pool:
            list(pool.map(run, parts))
    return np.stack([d_r / (q * d) / d_1, p / d_1])


#: Stretch of the theta variable (see :func:`theta_of`), as a multiple of log(1 + sqrt(q)).
THETA_STRETCH = 1.0


def _stretch(seg: int) -> float:
    """Map parameter ``a`` of a segment: grows with ``sqrt(q)``, the inverse feature width."""
    return THETA_STRETCH * math.log1p(math.exp(0.5 * (S_LO + SEG_2D * (seg + 1))))


def theta_of(t: Array, a: float | Array) -> Array:
    """``theta = (pi / 2) sinh(a (t + 1) / 2) / sinh(a)`` for ``t`` in [-1, 1].

    Clusters the points near ``theta = 0`` (resolution ~ ``pi a / (4 sinh a)``) where the
    correlation map bends over a width ~ ``1 / sqrt(q)``.
    """
    return 0.5 * math.pi * np.sinh(0.5 * a * (t + 1.0)) / np.sinh(a)


def t_of(theta: Array, a: float | Array) -> Array:
    """Inverse of :func:`theta_of`."""
    return 2.0 / a * np.arcsinh(np.sinh(a) * theta / (0.5 * math.pi)) - 1.0


@functools.lru_cache(maxsize=256)
def _table_2d(key: ActKey, seg: int) -> Array:
    """Coefficients (2, n_s, n_theta) of ``Gamma / D`` and ``P / D`` on one segment.

    Starts with 9 x 17 points and refines whichever direction still has trailing Chebyshev
    coefficients above ``_TAIL``, computing only the new (nested) points.
    """
    act = _act(key)
    fine_s, fine_t = _N_S_2D[-1], _N_THETA[-1]
    s_all = S_LO + SEG_2D * (seg + 0.5 * (_cheb_points(fine_s) + 1.0))
    t_all = theta_of(_cheb_points(fine_t), _stretch(seg))
    d_all = expect_1d(act, np.exp(s_all), ("D",))["D"]
    vals = np.full((2, fine_s, fine_t), np.nan)
    vals[:, :, 0] = 1.0  # theta = 0: Gamma = P = E[phi'^2]
    i_s, i_t = 0, 0
    while True:
        rows = np.arange(0, fine_s, (fine_s - 1) // (_N_S_2D[i_s] - 1))
        cols = np.arange(0, fine_t, (fine_t - 1) // (_N_THETA[i_t] - 1))
        block = vals[:, rows][:, :, cols]
        missing = np.argwhere(np.isnan(block[0]))
        if missing.size:
            r, c = rows[missing[:, 0]], cols[missing[:, 1]]
            vals[:, r, c] = _entries_2d(act, np.exp(s_all[r]), t_all[c], d_all[r])
            block = vals[:, rows][:, :, cols]
        coef = _cheb_matrix(rows.size) @ block @ _cheb_matrix(cols.size).T
        scale = max(1.0, float(np.abs(coef).max()))
        s_ok = np.abs(coef[:, -3:, :]).max() <= _TAIL * scale or i_s == len(_N_S_2D) - 1
        t_ok = np.abs(coef[:, :, -3:]).max() <= _TAIL * scale or i_t == len(_N_THETA) - 1
        if s_ok and t_ok:
            return coef
        i_s += 0 if s_ok else 1
        i_t += 0 if t_ok else 1


def table_corr_factory(act: ActivationFns, moments: TableMoments) -> Callable[[Array, Array], Corr]:
    """``factory(sw, x) -> corr`` for :func:`~vgcore.theory._solve.solve` from the 2-D tables.

    The factory contracts the ``s`` direction of the tables once per chaotic point; ``corr``
    then only evaluates a Chebyshev series in ``theta`` per Newton step. Points with ``q* =
    x^2`` outside the tables use 2-D quadrature.
    """
    key = _act_key(act)

    def factory(sw: Array, root: Array) -> Corr:
        with np.errstate(over="ignore"):
            q = root * root  # inf where q* exceeds the float range: outside the tables
        ins = np.flatnonzero(_inside(q))
        out = np.flatnonzero(~_inside(q))
        pos = np.empty(q.size, dtype=int)  # index among the table points
        pos[ins] = np.arange(ins.size)
        exact = exact_corr(act, sw[out], root[out]) if out.size else None
        pos_out = np.empty(q.size, dtype=int)
        pos_out[out] = np.arange(out.size)
        qi = q[ins]
        k, x = _segment(np.log(qi), SEG_2D, N_SEG_2D)
        d_q, _ = moments.DW(qi)
        blocks = []
        stretch = np.empty(qi.size)
        for seg in np.unique(k):
            idx = np.flatnonzero(k == seg)
            stretch[idx] = _stretch(int(seg))
            coef = _table_2d(key, int(seg))  # (2, n_s, n_theta)
            ts = np.polynomial.chebyshev.chebvander(x[idx], coef.shape[1] - 1)  # (P, n_s)
            blocks.append((idx, [ts @ coef[0], ts @ coef[1]]))
        n_max = max((b[1][0].shape[1] for b in blocks), default=1)
        # theta-coefficients per point, laid out (table, coefficient, point) for fast gathers
        theta_coef = np.zeros((2, n_max, qi.size))
        for idx, (c_gam, c_p) in blocks:
            theta_coef[0][: c_gam.shape[1], idx] = c_gam.T
            theta_coef[1][: c_p.shape[1], idx] = c_p.T
        sw_d = sw[ins] * d_q

        def corr(d: Array, idx: Array) -> tuple[Array, Array]:
            s_gam, s_p = np.empty(idx.size), np.empty(idx.size)
            tab = _inside(q[idx])
            if tab.any():
                j = pos[idx[tab]]
                theta = 2.0 * np.arcsin(np.sqrt(0.5 * d[tab]))  # d = 1 - cos(theta)
                t = t_of(theta, stretch[j])
                s_gam[tab] = _clenshaw_segments(theta_coef[0], j, t) * sw_d[j]
                s_p[tab] = _clenshaw_segments(theta_coef[1], j, t) * sw_d[j]
            if exact is not None and not tab.all():
                s_gam[~tab], s_p[~tab] = exact(d[~tab], pos_out[idx[~tab]])
            return s_gam, s_p

        return corr

    return factory

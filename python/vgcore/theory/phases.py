"""Mean-field phase diagram over a grid of (sigma_w2, sigma_b2)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vgcore.theory._activations import resolve_activation
from vgcore.theory._fixed_points import ExactMoments, exact_corr
from vgcore.theory._solve import solve
from vgcore.theory._tables import TableMoments, table_corr_factory
from vgcore.theory._validation import as_grid_axis, check_tol
from vgcore.theory.critical import critical_line
from vgcore.theory.meanfield import DEFAULT_TOL

__all__ = ["PhaseDiagram", "phase_diagram", "phase_diagram_around"]


@dataclass(frozen=True, eq=False, repr=False)
class PhaseDiagram:
    """Result of :func:`phase_diagram`: mean-field quantities on a ``(sigma_b2, sigma_w2)`` grid.

    Grid arrays have shape ``(len(sigma_b2), len(sigma_w2))``: row ``i`` is
    ``sigma_b2[i]``, column ``j`` is ``sigma_w2[j]`` (the layout of
    ``np.meshgrid(sigma_w2, sigma_b2)`` and of ``matplotlib``'s ``pcolormesh(sigma_w2,
    sigma_b2, chi_1)``). Each quantity means what it means in :class:`MeanField`.

    Attributes
    ----------
    activation : str
        Canonical activation name (with non-default parameters).
    sigma_w2 : ndarray of shape (nw,)
    sigma_b2 : ndarray of shape (nb,)
    q_star, chi_1, chi_q, c_star, chi_c, xi_q, xi_c : ndarray of shape (nb, nw)
    phase : ndarray of str, shape (nb, nw)
    critical_line : ndarray of shape (nb,)
        The critical ``sigma_w2`` (``chi_1 = 1``) for each ``sigma_b2`` (NaN if none).
    act_params : dict
    tol : float
        Half-width of the critical band ``|chi_1 - 1| <= tol``.
    method : str
        ``"table"`` (interpolated moments) or ``"quadrature"``.
    seconds : float
        Wall time of the computation.
    correlation : bool
        Whether the correlation map was solved; when False, ``c_star``, ``chi_c`` and
        ``xi_c`` are NaN at the chaotic points (see :func:`phase_diagram`).
    """

    activation: str
    sigma_w2: np.ndarray
    sigma_b2: np.ndarray
    q_star: np.ndarray
    chi_1: np.ndarray
    chi_q: np.ndarray
    c_star: np.ndarray
    chi_c: np.ndarray
    xi_q: np.ndarray
    xi_c: np.ndarray
    phase: np.ndarray
    critical_line: np.ndarray
    act_params: dict[str, float] = field(default_factory=dict)
    tol: float = DEFAULT_TOL
    method: str = "table"
    seconds: float = 0.0
    correlation: bool = True

    @property
    def chi1(self) -> np.ndarray:
        """Alias of :attr:`chi_1` (what :func:`vgcore.plotting.plot_phase_diagram` reads)."""
        return self.chi_1

    @property
    def critical_sigma_w2(self) -> np.ndarray:
        """Alias of :attr:`critical_line`."""
        return self.critical_line

    @property
    def shape(self) -> tuple[int, int]:
        """``(len(sigma_b2), len(sigma_w2))``."""
        return self.chi_1.shape

    def to_dict(self) -> dict[str, Any]:
        """All fields as a dict (arrays as ndarrays)."""
        names = (
            "activation",
            "sigma_w2",
            "sigma_b2",
            "q_star",
            "chi_1",
            "chi_q",
            "c_star",
            "chi_c",
            "xi_q",
            "xi_c",
            "phase",
            "critical_line",
            "act_params",
            "tol",
        )
        return {n: getattr(self, n) for n in names}

    def to_pandas(self) -> Any:
        """One row per grid point (columns ``sigma_w2, sigma_b2, q_star, ...``); needs pandas."""
        import pandas as pd

        sw, sb = np.meshgrid(self.sigma_w2, self.sigma_b2)
        cols = ("q_star", "chi_1", "chi_q", "c_star", "chi_c", "xi_q", "xi_c", "phase")
        data = {"sigma_w2": sw.ravel(), "sigma_b2": sb.ravel()}
        data.update({c: np.asarray(getattr(self, c)).ravel() for c in cols})
        return pd.DataFrame(data)

    def plot(self, **kw: Any) -> Any:
        """Draw it with :func:`vgcore.plotting.plot_phase_diagram` (needs matplotlib)."""
        from vgcore.plotting import plot_phase_diagram

        return plot_phase_diagram(self, **kw)

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{int(np.sum(self.phase == p))} {p}" for p in ("ordered", "critical", "chaotic")
        )
        crit = self.critical_line[np.isfinite(self.critical_line)]
        line = (
            f"critical sigma_w2 in [{crit.min():.4g}, {crit.max():.4g}]"
            if crit.size
            else "no critical point"
        )
        return (
            f"PhaseDiagram({self.activation}, sigma_w2 in [{self.sigma_w2.min():.4g}, "
            f"{self.sigma_w2.max():.4g}] x {self.sigma_w2.size}, sigma_b2 in "
            f"[{self.sigma_b2.min():.4g}, {self.sigma_b2.max():.4g}] x {self.sigma_b2.size}: "
            f"{counts}; {line}; {self.seconds:.3g} s)"
        )


def phase_diagram(
    activation: Any,
    sigma_w2: Any,
    sigma_b2: Any,
    *,
    tol: float = DEFAULT_TOL,
    method: str = "table",
    correlation: bool = True,
    **act_params: float,
) -> PhaseDiagram:
    """Mean-field quantities on the grid ``sigma_w2 x sigma_b2`` and the critical line.

    Parameters
    ----------
    activation : str
        Activation name (see :func:`mean_field`).
    sigma_w2 : array_like of shape (nw,)
        Weight variances (>= 0).
    sigma_b2 : array_like of shape (nb,)
        Bias variances (>= 0).
    tol : float
        Half-width of the critical band ``|chi_1 - 1| <= tol``.
    method : {"table", "quadrature"}
        ``"table"`` (default) interpolates the Gaussian moments from Chebyshev tables built
        once per activation (and per range of ``q*`` in the chaotic phase) and cached: a
        400 x 400 grid takes well under a second. ``"quadrature"`` runs :func:`mean_field`'s
        integrals at every point (reference; milliseconds per point).
    correlation : bool
        Solve the correlation map (``c_star``, ``chi_c``, ``xi_c`` in the chaotic phase). Its
        2-D Gaussian moments take most of the time (seconds per activation for the first
        diagram); ``False`` leaves those three NaN at the chaotic points and keeps every
        other quantity, the phases and the critical line (what a figure of ``chi_1`` needs).
    **act_params
        Activation parameters.

    Returns
    -------
    PhaseDiagram
        Arrays of shape ``(len(sigma_b2), len(sigma_w2))`` plus the critical line.

    Notes
    -----
    With ``"table"``, ``q*``, ``chi_1``, ``chi_q`` agree with :func:`mean_field` to ~1e-12
    relative and ``c*``, ``chi_c`` to ~1e-9 (the depth scales inherit these errors divided by
    ``|log chi|``, so they loosen next to the critical line where they diverge). Variances
    outside the tables (``q* < 2e-16`` or ``> 2.5e30``) use :func:`mean_field`'s methods:
    closed-form expansions, and for tanh / sigmoid at ``q* > 2^100`` 1-D Fourier integrals,
    so grids far out (``sigma_w2 ~ 1e50``) take about a second; 2-D quadrature remains only
    for chaotic points with ``q* < 2e-16`` (near the bifurcation of ``q* = 0``).
    """
    t0 = time.perf_counter()
    act = resolve_activation(activation, act_params)
    sw = as_grid_axis(sigma_w2, "sigma_w2")
    sb = as_grid_axis(sigma_b2, "sigma_b2")
    tol = check_tol(tol)
    if method == "table" and act.homogeneous is None:
        moments: Any = TableMoments(act)
        factory = table_corr_factory(act, moments)
        corr_rtol = 1e-10
    elif method in ("table", "quadrature"):
        moments = ExactMoments(act)
        factory = lambda s, x: exact_corr(act, s, x)  # noqa: E731
        corr_rtol = 1e-13
    else:
        raise ValueError(f"method must be 'table' or 'quadrature', got {method!r}")
    sw_grid, sb_grid = np.meshgrid(sw, sb)
    res = solve(
        moments,
        factory,
        sw_grid.ravel(),
        sb_grid.ravel(),
        tol,
        corr_rtol=corr_rtol,
        correlation=bool(correlation),
    )
    line = critical_line(moments, act, sb)
    shape = sw_grid.shape
    return PhaseDiagram(
        activation=act.label,
        sigma_w2=sw,
        sigma_b2=sb,
        critical_line=line,
        act_params=dict(act.params),
        tol=tol,
        method=method,
        seconds=time.perf_counter() - t0,
        correlation=bool(correlation),
        **{k: v.reshape(shape) for k, v in res.items()},
    )


def phase_diagram_around(
    activation: Any,
    points: Any = (),
    *,
    tol: float = DEFAULT_TOL,
    correlation: bool = True,
    **act_params: float,
) -> PhaseDiagram:
    """A 160 x 80 phase diagram whose grid covers the critical line at ``sigma_b2 = 0`` (three
    times its ``sigma_w2``, at least 4) and every finite ``(sigma_w2, sigma_b2)`` point with a
    margin of half its coordinates (``sigma_b2`` up to at least 0.5, ``sigma_w2`` from at most
    half the smallest positive one); with no points, just the critical region. The grid stops
    at the largest float.

    ``sigma_w2`` is evenly spaced; ``sigma_b2`` is spaced quadratically (``sb_max t^2``, ``t``
    evenly spaced), dense near 0 where the critical line of an activation with ``phi(0) = 0``
    leaves its bifurcation point like a square root (tanh: ``sigma_w2 - 1 ~ sqrt(sigma_b2)``):
    the line, solved at every row, is then smooth when drawn through the rows.

    Parameters
    ----------
    activation : str
        Activation name (see :func:`mean_field`).
    points : sequence of (sigma_w2, sigma_b2), optional
        Points the grid must cover (non-finite ones are ignored).
    tol : float
        Half-width of the critical band.
    correlation : bool
        Solve the correlation map too (see :func:`phase_diagram`; ``False`` for a figure of
        ``chi_1``, which then takes a fraction of the time).
    **act_params
        Activation parameters.

    Returns
    -------
    PhaseDiagram
    """
    from vgcore.theory.critical import critical_sigma_w2

    crit0 = float(critical_sigma_w2(activation, 0.0, **act_params))
    pts = np.asarray(points, float).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    big = np.finfo(np.float64).max
    with np.errstate(over="ignore"):
        reach = np.minimum(1.5 * pts, big)  # margin, capped at the largest float
    sw_max = max(
        3.0 * crit0 if np.isfinite(crit0) else 4.0, 4.0, float(np.max(reach[:, 0], initial=0.0))
    )
    sb_max = max(0.5, float(np.max(reach[:, 1], initial=0.0)))
    # start below the smallest positive point too (a point left of the grid reads as outside)
    pos = pts[:, 0][pts[:, 0] > 0.0]
    sw_min = min(sw_max / 160, 0.5 * float(pos.min())) if pos.size else sw_max / 160
    return phase_diagram(
        activation,
        np.linspace(sw_min, sw_max, 160),
        sb_max * np.linspace(0.0, 1.0, 80) ** 2,
        tol=tol,
        correlation=correlation,
        **act_params,  # type: ignore[arg-type]  # floats, never a `method`
    )

"""Mean-field signal propagation at initialisation: fixed points, slopes and depth scales.

Conventions (Poole et al. 2016, "Exponential expressivity in deep neural networks through
transient chaos"; Schoenholz et al. 2017, "Deep information propagation"): a dense layer
``h^l = W^l phi(h^{l-1}) + b^l`` with ``W_ij ~ N(0, sigma_w2 / fan_in)`` and
``b_i ~ N(0, sigma_b2)``, in the infinite-width limit. With ``z, z1, z2`` independent standard
normals, ``u = sqrt(q) z`` and ``u1 = sqrt(q) z1``, ``u2 = sqrt(q) (c z1 + sqrt(1 - c^2) z2)``:

* length map ``q -> sigma_w2 E[phi(u)^2] + sigma_b2``, fixed point ``q*`` (the limit of its
  iteration from ``q = 1``, i.e. unit pre-activation variance);
* ``chi_1 = sigma_w2 E[phi'(u)^2]`` at ``q*``: the mean factor by which the squared norm of a
  backpropagated gradient grows per layer (Schoenholz et al., Sec. 5), and the slope of the
  correlation map at ``c = 1``;
* correlation map ``c -> (sigma_w2 E[phi(u1) phi(u2)] + sigma_b2) / q*``, fixed point ``c*``
  (1 in the ordered phase ``chi_1 < 1``, below 1 in the chaotic phase ``chi_1 > 1``), slope
  ``chi_c = sigma_w2 E[phi'(u1) phi'(u2)]`` at ``c*`` (``= chi_1`` when ``c* = 1``);
* depth scales (Schoenholz et al., Sec. 3): ``xi_q = -1 / log|chi_q|`` with
  ``chi_q = chi_1 + sigma_w2 E[phi''(u) phi(u)]`` the slope of the length map at ``q*``, and
  ``xi_c = -1 / log|chi_c|``; ``xi_c`` diverges at criticality (``chi_1 = 1``).

Every input from 0 to the largest float is supported and every result is a number or a
documented ``inf``, never NaN. Extreme variances use expansions rather than quadrature: the
Taylor series of phi at 0 for ``q* < 2^-30`` and the large-``q`` expansions in
``1 / sqrt(q)`` for ``q* > 2^100`` (where tanh, for instance, has ``q* ~ sigma_w2 +
sigma_b2`` and ``chi_1 ~ sigma_w2 (4/3) / sqrt(2 pi q*)``: deeply chaotic for huge
``sigma_w2``). Near the bifurcation of ``q* = 0`` (``sigma_b2 -> 0`` at the critical
``sigma_w2``) ``q*`` is ill-conditioned: its relative error is about ``1e-16 / |1 - chi_q|``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vgcore.theory._activations import resolve_activation
from vgcore.theory._fixed_points import ExactMoments, exact_corr
from vgcore.theory._solve import solve
from vgcore.theory._validation import as_sigma, check_tol

__all__ = ["DEFAULT_TOL", "MeanField", "mean_field"]

#: Default half-width of the "critical" band ``|chi_1 - 1| <= tol``.
DEFAULT_TOL = 1e-8

_FIELDS = ("q_star", "chi_1", "chi_q", "c_star", "chi_c", "xi_q", "xi_c", "phase")


@dataclass(frozen=True, eq=False, repr=False)
class MeanField:
    """Result of :func:`mean_field`: fixed points, slopes and depth scales.

    Every numeric field is a float for scalar inputs and an ndarray of the broadcast shape of
    ``sigma_w2`` and ``sigma_b2`` otherwise (``phase`` then is an array of strings).

    Attributes
    ----------
    activation : str
        Canonical activation name, with its parameters where they differ from PyTorch's
        defaults (``"leaky_relu(negative_slope=0.2)"``).
    sigma_w2, sigma_b2 : float or ndarray
        The weight and bias variances (weights ``N(0, sigma_w2 / fan_in)``).
    q_star : float or ndarray
        Fixed point of the length map ``q -> sigma_w2 E[phi(sqrt(q) z)^2] + sigma_b2``,
        reached from ``q = 1``. ``inf`` when the pre-activation variance grows without bound
        with depth (e.g. relu with ``sigma_w2 > 2``, or ``= 2`` with ``sigma_b2 > 0``), and
        also when the fixed point is finite but above the largest float (tanh with
        ``sigma_w2 + sigma_b2 > 1.8e308``): then ``chi_1 < inf`` and every other field is
        that of the finite fixed point. Identity / relu / leaky_relu exactly at criticality
        with ``sigma_b2 = 0`` preserve every length: ``q* = 1``, where the iteration starts.
    chi_1 : float or ndarray
        ``sigma_w2 E[phi'(sqrt(q*) z)^2]``, the per-layer growth factor of squared gradient
        norms in the backward pass; its limit ``sigma_w2 lim_{q->inf} E[phi'^2]`` when the
        variance diverges. ``inf`` only if that product exceeds the largest float.
    chi_q : float or ndarray
        Slope of the length map at ``q*``: ``chi_1 + sigma_w2 E[phi''(u) phi(u)]``; where the
        variance diverges, the limit of its per-layer growth factor ``q^{l+1} / q^l`` (``=
        chi_1``).
    c_star : float or ndarray
        Fixed point of the correlation map: 1 unless the phase is chaotic. Where the variance
        diverges the biases become negligible and the map tends to that of the activation's
        linear asymptote, which has ``c = 1`` as a fixed point of slope 1 (approached
        polynomially, not exponentially): ``c* = 1``.
    chi_c : float or ndarray
        Slope of the correlation map at ``c*``: ``sigma_w2 E[phi'(u1) phi'(u2)]``; equals
        ``chi_1`` when ``c* = 1`` at a finite ``q*``, and 1 where the variance diverges.
    xi_q, xi_c : float or ndarray
        Depth scales ``-1 / log|chi_q|`` and ``-1 / log|chi_c|``: ``inf`` exactly where the
        slope is 1 in float64 (at criticality, or within rounding of it, i.e. beyond ~1e16
        layers), 0 where it is 0, negative where it exceeds 1 (only when the variance
        diverges: ``q`` then grows by ``chi_q`` per layer, e-folding over ``|xi_q|``
        layers). Computed from ``log(sigma_w2) + log(moment)`` where the slope itself under-
        or overflows, so they stay exact there.
    phase : str or ndarray of str
        ``"ordered"`` (``chi_1 < 1 - tol``), ``"critical"`` (``|chi_1 - 1| <= tol``) or
        ``"chaotic"`` (``chi_1 > 1 + tol``: exploding gradients).
    act_params : dict
        Parameters of the activation (PyTorch's defaults filled in).
    tol : float
        Half-width of the critical band.
    """

    activation: str
    sigma_w2: Any
    sigma_b2: Any
    q_star: Any
    chi_1: Any
    chi_q: Any
    c_star: Any
    chi_c: Any
    xi_q: Any
    xi_c: Any
    phase: Any
    act_params: dict[str, float] = field(default_factory=dict)
    tol: float = DEFAULT_TOL

    @property
    def chi1(self) -> Any:
        """Alias of :attr:`chi_1`."""
        return self.chi_1

    @property
    def shape(self) -> tuple[int, ...]:
        """Broadcast shape of the inputs (``()`` for scalars)."""
        return np.shape(self.chi_1)

    def to_dict(self) -> dict[str, Any]:
        """The inputs and results as a dict (floats for scalar inputs, else ndarrays)."""
        return {
            "activation": self.activation,
            "act_params": dict(self.act_params),
            "sigma_w2": self.sigma_w2,
            "sigma_b2": self.sigma_b2,
            **{name: getattr(self, name) for name in _FIELDS},
            "tol": self.tol,
        }

    def plot(self, *, max_points: int = 200, **kw: Any) -> Any:
        """The phase diagram of this activation (chi_1 over sigma_w2 x sigma_b2, the critical
        line) with this result's point(s) marked; the grid covers the critical line at
        ``sigma_b2 = 0`` and every point. At most ``max_points`` points are marked (evenly
        picked). Keywords go to :func:`vgcore.plotting.plot_phase_diagram`; needs matplotlib."""
        from vgcore.plotting import plot_phase_diagram
        from vgcore.theory.phases import phase_diagram_around

        name = self.activation.split("(", 1)[0]
        sw, sb = np.broadcast_arrays(
            np.asarray(self.sigma_w2, float), np.asarray(self.sigma_b2, float)
        )
        pts = np.stack([sw.ravel(), sb.ravel()], axis=1)
        if len(pts) > max_points:
            pts = pts[np.linspace(0, len(pts) - 1, max_points).astype(int)]
        # a figure of chi_1: no correlation map (seconds of 2-D quadrature)
        diagram = phase_diagram_around(
            name,
            pts,
            tol=self.tol,
            correlation=False,
            **self.act_params,  # type: ignore[arg-type]  # floats, never `correlation`
        )
        point = [(float(w), float(b)) for w, b in pts]
        return plot_phase_diagram(diagram, point=point, **kw)

    def __repr__(self) -> str:
        head = f"MeanField({self.activation}"
        if self.shape == ():
            return (
                f"{head}, sigma_w2={self.sigma_w2:.6g}, sigma_b2={self.sigma_b2:.6g}): "
                f"{self.phase}, chi_1={self.chi_1:.6g}, q*={self.q_star:.6g}, "
                f"c*={self.c_star:.6g}, chi_c={self.chi_c:.6g}, "
                f"xi_q={self.xi_q:.4g}, xi_c={self.xi_c:.4g})"
            )
        phases = np.asarray(self.phase)
        counts = ", ".join(
            f"{int(np.sum(phases == p))} {p}" for p in ("ordered", "critical", "chaotic")
        )
        chi = np.asarray(self.chi_1, dtype=np.float64)
        return (
            f"{head}, shape={self.shape}): {counts}; "
            f"chi_1 in [{np.nanmin(chi):.4g}, {np.nanmax(chi):.4g}])"
        )


def _unwrap(arr: np.ndarray, scalar: bool) -> Any:
    if not scalar:
        return arr
    value = arr.reshape(())[()]
    return str(value) if isinstance(value, str) else float(value)


def mean_field(
    activation: Any,
    sigma_w2: Any,
    sigma_b2: Any = 0.0,
    *,
    tol: float = DEFAULT_TOL,
    **act_params: float,
) -> MeanField:
    """Mean-field fixed points, slopes and depth scales of a deep dense network.

    Parameters
    ----------
    activation : str
        One of identity, sigmoid, tanh, relu, leaky_relu, elu, selu, softplus, silu, gelu,
        gelu_tanh (aliases: linear, none, swish, gelu_erf), or an object with ``name`` and
        ``params`` such as :class:`vgcore.Activation`.
    sigma_w2 : float or array_like
        Weight variance times fan-in (weights ``N(0, sigma_w2 / fan_in)``), >= 0.
    sigma_b2 : float or array_like
        Bias variance, >= 0; broadcast against ``sigma_w2``.
    tol : float
        ``|chi_1 - 1| <= tol`` is reported as ``"critical"`` (and then ``c* = 1``). Below
        ~1e-12, the chaotic ``c*`` and ``chi_c`` next to the critical line are limited by the
        accuracy of the correlation moments (~1e-13 relative): ``1 - c*`` then carries an
        error of order ``1e-13 / (chi_1 - 1)`` relative.
    **act_params
        ``negative_slope`` (leaky_relu), ``alpha`` (elu), ``beta``, ``threshold`` (softplus).

    Returns
    -------
    MeanField
        Floats for scalar inputs, arrays of the broadcast shape otherwise.

    Raises
    ------
    ValueError
        Unknown activation or parameter, or a negative / NaN / infinite variance.

    Notes
    -----
    See the module docstring for the definitions (Poole et al. 2016, Schoenholz et al. 2017).
    Gaussian expectations use graded composite Gauss-Legendre rules split at every kink (1-D
    relative error ~1e-15, 2-D ~1e-13); identity, relu and leaky_relu use closed forms. The
    cost is a few milliseconds per point (tens in the chaotic phase, which needs 2-D
    integrals); for whole grids use :func:`phase_diagram`.

    Examples
    --------
    >>> mf = mean_field("tanh", 1.0, 0.0)
    >>> mf.phase, mf.chi_1
    ('critical', 1.0)
    >>> float(mean_field("relu", 2.4, 0.1).chi_1)
    1.2
    """
    act = resolve_activation(activation, act_params)
    sw = as_sigma(sigma_w2, "sigma_w2")
    sb = as_sigma(sigma_b2, "sigma_b2")
    tol = check_tol(tol)
    try:
        sw_b, sb_b = np.broadcast_arrays(sw, sb)
    except ValueError as exc:
        raise ValueError(
            f"sigma_w2 (shape {sw.shape}) and sigma_b2 (shape {sb.shape}) do not broadcast"
        ) from exc
    shape = sw_b.shape
    scalar = shape == ()
    res = solve(
        ExactMoments(act), lambda s, x: exact_corr(act, s, x), sw_b.ravel(), sb_b.ravel(), tol
    )
    values = {k: _unwrap(v.reshape(shape), scalar) for k, v in res.items()}
    return MeanField(
        activation=act.label,
        sigma_w2=_unwrap(np.array(sw_b), scalar),
        sigma_b2=_unwrap(np.array(sb_b), scalar),
        act_params=dict(act.params),
        tol=tol,
        **values,
    )

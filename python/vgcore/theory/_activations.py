"""Activations for the mean-field integrals: phi, phi', phi'' in numpy, as PyTorch defines them.

Private to :mod:`vgcore.theory`. Every function is elementwise, warning-free for any finite
float64 input, and follows PyTorch's forward and backward formulas (including the ``threshold``
of ``Softplus``, above which PyTorch returns ``x`` and a derivative of exactly 1).

Besides the three functions, each :class:`ActivationFns` records what the quadrature needs:
the points where phi or phi' is not smooth (``breaks``), the width of the non-linear region
(``scale``), the asymptotes ``phi(u) ~ offsets[i] + slopes[i] u`` for ``u -> -inf`` (i = 0)
and ``+inf`` (i = 1), which phi approaches exponentially fast (giving the large-``q`` limits
``lim E[phi(u)^2] / q = lim E[phi'(u)^2] = kappa_inf``) and, for the positively homogeneous
ones (identity, relu, leaky_relu), the constant ``E[phi(u)^2] / q = E[phi'(u)^2]`` that makes
every 1-D integral closed-form.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit, ndtr

__all__ = ["ACTIVATION_PARAMS", "ALIASES", "ActivationFns", "resolve_activation"]

Array = np.ndarray
Fn = Callable[[Array], Array]

#: Canonical names and their parameters with PyTorch's defaults.
ACTIVATION_PARAMS: dict[str, dict[str, float]] = {
    "identity": {},
    "sigmoid": {},
    "tanh": {},
    "relu": {},
    "leaky_relu": {"negative_slope": 0.01},
    "elu": {"alpha": 1.0},
    "selu": {},
    "softplus": {"beta": 1.0, "threshold": 20.0},
    "silu": {},
    "gelu": {},
    "gelu_tanh": {},
}
#: Other accepted spellings (the same as :mod:`vgcore.activations`).
ALIASES: dict[str, str] = {
    "linear": "identity",
    "none": "identity",
    "swish": "silu",
    "gelu_erf": "gelu",
}

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_KAPPA = 0.044715


@dataclass(frozen=True)
class ActivationFns:
    """An activation and everything the mean-field integrals need to know about it.

    Attributes
    ----------
    name : str
        Canonical name (aliases resolved).
    params : dict
        Parameters with PyTorch's defaults filled in.
    phi, dphi, d2phi : callable
        ``phi(u)``, ``phi'(u)`` and ``phi''(u)`` elementwise (PyTorch's derivative at kinks;
        ``phi''`` is the classical second derivative away from the ``breaks``).
    breaks : tuple of float
        Points ``u`` (other than 0) where phi or phi' jumps or has a kink; 0 is always treated
        as one (every supported activation is non-linear around 0).
    scale : float
        Width of the non-linear region around 0 (``1 / beta`` for softplus, else 1).
    slopes : tuple of float
        ``(m_minus, m_plus)``: ``phi(u) ~ m_minus u`` as ``u -> -inf`` and ``~ m_plus u`` as
        ``u -> +inf`` (0 for bounded activations).
    offsets : tuple of float
        ``(a_minus, a_plus)``: ``phi(u) - (a + m u)`` decays exponentially on each side
        (tanh: -1, 1; sigmoid: 0, 1; elu: -alpha, 0). On every side either the offset or the
        slope is 0, so ``E[(a + m u)^2]`` has no ``sqrt(q)`` term.
    kappa_inf : float
        ``(m_minus^2 + m_plus^2) / 2 = lim_{q -> inf} E[phi(sqrt(q) z)^2] / q``, which also
        equals ``lim E[phi'(sqrt(q) z)^2]``.
    homogeneous : float or None
        For positively homogeneous activations, the constant ``E[phi(u)^2] / q =
        E[phi'(u)^2]`` (``q``-independent); None otherwise.
    taylor : pair of tuples or None
        One-sided Taylor coefficients ``c_0 .. c_6`` of phi at 0 (``u < 0`` side, then
        ``u > 0``), valid for ``|u| <= 1e-3 * scale``; None where a break lies that close to 0
        (softplus with a tiny threshold) or for the homogeneous activations (not needed).
    """

    name: str
    params: dict[str, float]
    phi: Fn = field(repr=False)
    dphi: Fn = field(repr=False)
    d2phi: Fn = field(repr=False)
    breaks: tuple[float, ...] = ()
    scale: float = 1.0
    slopes: tuple[float, float] = (0.0, 1.0)
    offsets: tuple[float, float] = (0.0, 0.0)
    homogeneous: float | None = None
    phi_dphi: Callable[[Array], tuple[Array, Array]] | None = field(default=None, repr=False)
    taylor: tuple[tuple[float, ...], tuple[float, ...]] | None = field(default=None, repr=False)

    @property
    def kappa_inf(self) -> float:
        """``lim E[phi(u)^2] / q = lim E[phi'(u)^2]`` as ``q -> inf``."""
        return 0.5 * (self.slopes[0] ** 2 + self.slopes[1] ** 2)

    @property
    def key(self) -> tuple[str, tuple[tuple[str, float], ...]]:
        """Hashable identity (name and parameters), for caches."""
        return self.name, tuple(sorted(self.params.items()))

    @property
    def bounded(self) -> bool:
        """True for tanh and sigmoid: phi tends to constants (``kappa_inf = 0``)."""
        return self.slopes == (0.0, 0.0)

    def asymptote(self, u: Array) -> Array:
        """The piecewise-linear asymptote ``psi(u) = m_minus u`` (u < 0), ``m_plus u`` (u > 0)."""
        return u * np.where(u > 0.0, self.slopes[1], self.slopes[0])

    def asymptote_full(self, u: Array) -> Array:
        """``a_minus + m_minus u`` (u < 0), ``a_plus + m_plus u`` (u > 0): phi minus a remainder
        that decays exponentially in both directions."""
        pos = u > 0.0
        return np.where(pos, self.offsets[1], self.offsets[0]) + u * np.where(
            pos, self.slopes[1], self.slopes[0]
        )

    def both(self, u: Array) -> tuple[Array, Array]:
        """``(phi(u), phi'(u))``, sharing work where the activation allows it."""
        if self.phi_dphi is not None:
            return self.phi_dphi(u)
        return self.phi(u), self.dphi(u)

    @property
    def label(self) -> str:
        """``name`` or ``name(param=value, ...)`` when a parameter differs from its default."""
        defaults = ACTIVATION_PARAMS[self.name]
        if not self.params or self.params == defaults:
            return self.name
        args = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.name}({args})"

    def one_sided(self, fn: Fn, u: float) -> tuple[float, float]:
        """Left and right limits of ``fn`` at ``u`` (evaluated one ulp away)."""
        left = float(fn(np.array([np.nextafter(u, -np.inf)]))[0])
        right = float(fn(np.array([np.nextafter(u, np.inf)]))[0])
        return left, right


# ------------------------------------------------------------------------------------------
# the functions (PyTorch's formulas)
def _zeros(u: Array) -> Array:
    return np.zeros_like(u)


def _ones(u: Array) -> Array:
    return np.ones_like(u)


def _tanh_both(u: Array) -> tuple[Array, Array]:
    t = np.tanh(u)
    return t, 1.0 - t * t


def _tanh_d2(u: Array) -> Array:
    t = np.tanh(u)
    return -2.0 * t * (1.0 - t * t)


def _sigmoid_both(u: Array) -> tuple[Array, Array]:
    s = expit(u)
    return s, s * (1.0 - s)


def _sigmoid_d2(u: Array) -> Array:
    s = expit(u)
    return s * (1.0 - s) * (1.0 - 2.0 * s)


def _silu(u: Array) -> Array:
    return u * expit(u)


def _silu_d1(u: Array) -> Array:
    s = expit(u)
    return s * (1.0 + u * (1.0 - s))


def _silu_both(u: Array) -> tuple[Array, Array]:
    s = expit(u)
    return u * s, s * (1.0 + u * (1.0 - s))


def _silu_d2(u: Array) -> Array:
    s = expit(u)
    return s * (1.0 - s) * (2.0 + u * (1.0 - 2.0 * s))


def _gelu(u: Array) -> Array:
    return u * ndtr(u)


def _saturated(u: Array) -> Array:
    """``u`` clipped to +-1e3: where a factor such as ``exp(-u^2 / 2)`` or ``1 - tanh^2`` is
    already exactly 0, so the clip changes nothing but keeps ``u^2`` and ``u^3`` finite."""
    return np.clip(u, -1e3, 1e3)


def _gelu_d1(u: Array) -> Array:
    uc = _saturated(u)
    return ndtr(u) + uc * _INV_SQRT_2PI * np.exp(-0.5 * uc * uc)


def _gelu_both(u: Array) -> tuple[Array, Array]:
    cdf = ndtr(u)
    uc = _saturated(u)
    return u * cdf, cdf + uc * _INV_SQRT_2PI * np.exp(-0.5 * uc * uc)


def _gelu_d2(u: Array) -> Array:
    uc = _saturated(u)
    return _INV_SQRT_2PI * np.exp(-0.5 * uc * uc) * (2.0 - uc * uc)


def _gelu_tanh_parts(u: Array) -> tuple[Array, Array, Array]:
    uc = _saturated(u)
    t = np.tanh(_SQRT_2_OVER_PI * (uc + _GELU_KAPPA * uc * uc * uc))
    g1 = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_KAPPA * uc * uc)
    return t, 1.0 - t * t, g1


def _gelu_tanh(u: Array) -> Array:
    t, _, _ = _gelu_tanh_parts(u)
    return 0.5 * u * (1.0 + t)


def _gelu_tanh_d1(u: Array) -> Array:
    t, sech2, g1 = _gelu_tanh_parts(u)
    return 0.5 * (1.0 + t) + 0.5 * _saturated(u) * sech2 * g1


def _gelu_tanh_both(u: Array) -> tuple[Array, Array]:
    t, sech2, g1 = _gelu_tanh_parts(u)
    return 0.5 * u * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * _saturated(u) * sech2 * g1


def _gelu_tanh_d2(u: Array) -> Array:
    t, sech2, g1 = _gelu_tanh_parts(u)
    uc = _saturated(u)
    g2 = 6.0 * _SQRT_2_OVER_PI * _GELU_KAPPA * uc
    return sech2 * g1 + 0.5 * uc * sech2 * (g2 - 2.0 * t * g1 * g1)


def _relu(u: Array) -> Array:
    return np.maximum(u, 0.0)


def _step(u: Array) -> Array:
    return (u > 0.0).astype(np.float64)


def _leaky(slope: float) -> tuple[Fn, Fn]:
    def phi(u: Array) -> Array:
        return np.where(u > 0.0, u, slope * u)

    def dphi(u: Array) -> Array:
        return np.where(u > 0.0, 1.0, slope)

    return phi, dphi


def _elu(alpha: float, scale: float) -> tuple[Fn, Fn, Fn]:
    def phi(u: Array) -> Array:
        return scale * np.where(u > 0.0, u, alpha * np.expm1(np.minimum(u, 0.0)))

    def dphi(u: Array) -> Array:
        return scale * np.where(u > 0.0, 1.0, alpha * np.exp(np.minimum(u, 0.0)))

    def d2phi(u: Array) -> Array:
        return scale * np.where(u > 0.0, 0.0, alpha * np.exp(np.minimum(u, 0.0)))

    return phi, dphi, d2phi


def _softplus(beta: float, threshold: float) -> tuple[Fn, Fn, Fn]:
    # beta * u may overflow to +-inf; every branch below is exact there
    def phi(u: Array) -> Array:
        with np.errstate(over="ignore"):
            bu = beta * u
        return np.where(bu > threshold, u, np.logaddexp(0.0, bu) / beta)

    def dphi(u: Array) -> Array:
        with np.errstate(over="ignore"):
            bu = beta * u
        return np.where(bu > threshold, 1.0, expit(bu))

    def d2phi(u: Array) -> Array:
        with np.errstate(over="ignore"):
            bu = beta * u
        s = expit(bu)
        return np.where(bu > threshold, 0.0, beta * s * (1.0 - s))

    return phi, dphi, d2phi


# ------------------------------------------------------------------------------------------
# Taylor coefficients c_0 .. c_6 at u = 0 (one side each where phi has a kink there)
_S2PI = math.sqrt(2.0 * math.pi)
_K = _SQRT_2_OVER_PI
_TAYLOR: dict[str, tuple[float, ...]] = {
    "tanh": (0.0, 1.0, 0.0, -1.0 / 3.0, 0.0, 2.0 / 15.0, 0.0),
    "sigmoid": (0.5, 0.25, 0.0, -1.0 / 48.0, 0.0, 1.0 / 480.0, 0.0),
    "silu": (0.0, 0.5, 0.25, 0.0, -1.0 / 48.0, 0.0, 1.0 / 480.0),
    "gelu": (0.0, 0.5, 1.0 / _S2PI, 0.0, -1.0 / (6.0 * _S2PI), 0.0, 1.0 / (40.0 * _S2PI)),
    "gelu_tanh": (
        0.0,
        0.5,
        0.5 * _K,
        0.0,
        0.5 * (_K * _GELU_KAPPA - _K**3 / 3.0),
        0.0,
        0.5 * (2.0 * _K**5 / 15.0 - _K**3 * _GELU_KAPPA),
    ),
}
_LINEAR = (0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _elu_taylor(alpha: float, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    minus = tuple(scale * alpha / math.factorial(k) if k else 0.0 for k in range(7))
    return minus, tuple(scale * c for c in _LINEAR)


def _softplus_taylor(
    beta: float, threshold: float
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    # log(1 + e^x) = ln 2 + x / 2 + x^2 / 8 - x^4 / 192 + x^6 / 2880 + ...
    smooth = (
        math.log(2.0) / beta,
        0.5,
        beta / 8.0,
        0.0,
        -(beta**3) / 192.0,
        0.0,
        beta**5 / 2880.0,
    )
    brk = threshold / beta
    if threshold == 0.0:
        return smooth, _LINEAR  # u > 0 is past the threshold: phi = u
    if abs(brk) < 1e-2 / beta:
        return None  # the threshold is too close to 0 for a series
    return (smooth, smooth) if brk > 0.0 else (_LINEAR, _LINEAR)


def _build(name: str, p: dict[str, float]) -> ActivationFns:
    if name == "identity":
        return ActivationFns(
            name, p, lambda u: u, _ones, _zeros, slopes=(1.0, 1.0), homogeneous=1.0
        )
    if name == "relu":
        return ActivationFns(name, p, _relu, _step, _zeros, homogeneous=0.5)
    if name == "leaky_relu":
        a = p["negative_slope"]
        phi, dphi = _leaky(a)
        k = 0.5 * (1.0 + a * a)
        return ActivationFns(name, p, phi, dphi, _zeros, slopes=(a, 1.0), homogeneous=k)
    if name == "tanh":
        return ActivationFns(
            name,
            p,
            np.tanh,
            lambda u: _tanh_both(u)[1],
            _tanh_d2,
            slopes=(0.0, 0.0),
            offsets=(-1.0, 1.0),
            phi_dphi=_tanh_both,
            taylor=(_TAYLOR["tanh"], _TAYLOR["tanh"]),
        )
    if name == "sigmoid":
        return ActivationFns(
            name,
            p,
            expit,
            lambda u: _sigmoid_both(u)[1],
            _sigmoid_d2,
            slopes=(0.0, 0.0),
            offsets=(0.0, 1.0),
            phi_dphi=_sigmoid_both,
            taylor=(_TAYLOR["sigmoid"], _TAYLOR["sigmoid"]),
        )
    if name in ("elu", "selu"):
        alpha, scale = (p["alpha"], 1.0) if name == "elu" else (SELU_ALPHA, SELU_SCALE)
        phi, dphi, d2phi = _elu(alpha, scale)
        return ActivationFns(
            name,
            p,
            phi,
            dphi,
            d2phi,
            slopes=(0.0, scale),
            offsets=(-alpha * scale, 0.0),
            taylor=_elu_taylor(alpha, scale),
        )
    if name == "softplus":
        beta, thr = p["beta"], p["threshold"]
        phi, dphi, d2phi = _softplus(beta, thr)
        return ActivationFns(
            name,
            p,
            phi,
            dphi,
            d2phi,
            breaks=(thr / beta,),
            scale=1.0 / beta,
            taylor=_softplus_taylor(beta, thr),
        )
    smooth = (_TAYLOR.get(name, _LINEAR), _TAYLOR.get(name, _LINEAR))
    if name == "silu":
        return ActivationFns(name, p, _silu, _silu_d1, _silu_d2, phi_dphi=_silu_both, taylor=smooth)
    if name == "gelu":
        return ActivationFns(name, p, _gelu, _gelu_d1, _gelu_d2, phi_dphi=_gelu_both, taylor=smooth)
    if name == "gelu_tanh":
        return ActivationFns(
            name,
            p,
            _gelu_tanh,
            _gelu_tanh_d1,
            _gelu_tanh_d2,
            phi_dphi=_gelu_tanh_both,
            taylor=smooth,
        )
    raise AssertionError(name)  # pragma: no cover - names are validated before


def _check_params(name: str, params: Mapping[str, Any], argname: str) -> dict[str, float]:
    defaults = ACTIVATION_PARAMS[name]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        takes = ", ".join(sorted(defaults)) or "no parameters"
        raise ValueError(
            f"{argname} {name!r} has no parameter(s) {', '.join(unknown)}; it takes {takes}"
        )
    merged: dict[str, float] = dict(defaults)
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(
                f"{argname} parameter {key} must be a real number, got {type(value).__name__}"
            )
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{argname} parameter {key} must be finite, got {value}")
        merged[key] = value
    if name == "softplus" and merged["beta"] <= 0.0:
        raise ValueError(f"{argname} parameter beta must be > 0, got {merged['beta']}")
    if name == "elu" and merged["alpha"] < 0.0:
        raise ValueError(f"{argname} parameter alpha must be >= 0, got {merged['alpha']}")
    return merged


def resolve_activation(
    activation: Any, params: Mapping[str, Any] | None = None, argname: str = "activation"
) -> ActivationFns:
    """Validate an activation given by name (or any object with ``name`` / ``params``).

    Parameters
    ----------
    activation : str or object
        A name from :data:`ACTIVATION_PARAMS` or :data:`ALIASES` (case-insensitive), or an
        object with a ``name`` attribute and optionally a ``params`` mapping (such as
        :class:`vgcore.Activation`).
    params : mapping, optional
        Activation parameters (``negative_slope``, ``alpha``, ``beta``, ``threshold``); they
        override those carried by ``activation``.
    argname : str
        Name used in error messages.

    Raises
    ------
    ValueError
        Unknown name or parameter, or a parameter out of range.
    TypeError
        ``activation`` is neither a string nor an object with a string ``name``.
    """
    carried: dict[str, Any] = {}
    if isinstance(activation, str):
        raw = activation
    elif isinstance(getattr(activation, "name", None), str):
        raw = activation.name
        carried = dict(getattr(activation, "params", None) or {})
    else:
        raise TypeError(
            f"{argname} must be an activation name (str), got {type(activation).__name__} "
            f"{activation!r}"
        )
    key = raw.strip().lower()
    name = ALIASES.get(key, key)
    if name not in ACTIVATION_PARAMS:
        allowed = ", ".join([*ACTIVATION_PARAMS, *ALIASES])
        raise ValueError(f"{argname} must be one of {allowed}; got {raw!r}")
    merged = _check_params(name, {**carried, **dict(params or {})}, argname)
    return _build(name, merged)

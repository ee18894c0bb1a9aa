"""Measured gradient flow against the mean-field prediction ``chi_1`` per layer."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from vgcore.theory._activations import resolve_activation
from vgcore.theory.meanfield import MeanField, mean_field

__all__ = ["TheoryComparison", "compare_to_theory"]


@dataclass(frozen=True, eq=False, repr=False)
class TheoryComparison:
    """Result of :func:`compare_to_theory`.

    Direction: layer ``l`` (``1..L``) maps ``h_{l-1}`` to ``h_l``; in the backward pass it
    takes ``dL/dh_l`` to ``dL/dh_{l-1}``. Its measured log gain is
    ``log(||dL/dh_{l-1}||^2 / ||dL/dh_l||^2) = 2 (log_grad_norms[l-1] - log_grad_norms[l])``;
    mean-field theory predicts ``log chi_1`` for every layer (> 0: gradients grow towards the
    input, i.e. explode; < 0: they vanish).

    Attributes
    ----------
    activation : str
    sigma_w2, sigma_b2 : float
    theory : MeanField
        The mean-field prediction at ``(sigma_w2, sigma_b2)``.
    layers : ndarray of int, shape (L,)
        ``1..L``.
    measured_log_gain : ndarray of shape (L,)
        Per-layer measured log gain of the squared gradient norm (see above).
    theory_log_gain : float
        ``log chi_1``.
    gain_ratio : ndarray of shape (L,)
        ``exp(measured_log_gain - theory_log_gain)``: measured gain over predicted gain.
    burn_in : int
        Number of layers next to the input left out of the means (the pre-activation variance
        approaches ``q*`` over the first few layers).
    mean_log_gain : float
        Mean of ``measured_log_gain`` over layers ``burn_in + 1 .. L`` (finite values only).
    mean_gain_ratio : float
        ``exp(mean_log_gain - theory_log_gain)``: 1 when theory and measurement agree.
    """

    activation: str
    sigma_w2: float
    sigma_b2: float
    theory: MeanField
    layers: np.ndarray
    measured_log_gain: np.ndarray
    theory_log_gain: float
    gain_ratio: np.ndarray
    burn_in: int
    mean_log_gain: float
    mean_gain_ratio: float

    @property
    def chi_1(self) -> float:
        """The predicted per-layer gain ``chi_1``."""
        return float(self.theory.chi_1)

    @property
    def log10_measured_gain(self) -> np.ndarray:
        """``measured_log_gain`` in decades (of the squared norm) per layer."""
        return self.measured_log_gain / math.log(10.0)

    @property
    def log10_theory_gain(self) -> float:
        """``theory_log_gain`` (``log chi_1``) in decades."""
        return self.theory_log_gain / math.log(10.0)

    @property
    def measured_gain(self) -> float:
        """``exp(mean_log_gain)``: the measured mean per-layer gain."""
        return math.exp(self.mean_log_gain)

    def to_pandas(self) -> Any:
        """One row per layer: ``layer, measured_log_gain, theory_log_gain`` (natural logs),
        ``log10_measured_gain, log10_theory_gain`` (decades), ``gain_ratio, burn_in``.

        Needs pandas (imported here, not at module import).
        """
        import pandas as pd

        return pd.DataFrame(
            {
                "layer": self.layers,
                "measured_log_gain": self.measured_log_gain,
                "theory_log_gain": np.full(self.layers.size, self.theory_log_gain),
                "log10_measured_gain": self.log10_measured_gain,
                "log10_theory_gain": np.full(self.layers.size, self.log10_theory_gain),
                "gain_ratio": self.gain_ratio,
                "burn_in": self.layers <= self.burn_in,
            }
        )

    def plot(self, ax: Any = None, **kw: Any) -> Any:
        """Measured per-layer gain against ``log chi_1`` (needs matplotlib); see
        :func:`vgcore.plotting.plot_theory_comparison`."""
        from vgcore import plotting

        return plotting.plot_theory_comparison(self, ax=ax, **kw)

    def __repr__(self) -> str:
        n_layers = self.layers.size
        return (
            f"TheoryComparison({self.activation}, sigma_w2={self.sigma_w2:.6g}, "
            f"sigma_b2={self.sigma_b2:.6g}, L={n_layers}, burn_in={self.burn_in}): "
            f"measured gain {self.measured_gain:.6g} per layer vs chi_1 = {self.chi_1:.6g} "
            f"({self.theory.phase}); ratio {self.mean_gain_ratio:.4f}"
        )


def _flow_activation(flow: Any) -> Any:
    model = getattr(flow, "model", None)
    acts = getattr(model, "activations", None)
    if acts is None:
        raise ValueError(
            "activation is None and flow.model.activations is missing; pass activation="
        )
    acts = list(acts)
    if not acts:
        raise ValueError("flow.model.activations is empty; pass activation=")
    resolved = [
        resolve_activation(a, argname=f"flow.model.activations[{i}]") for i, a in enumerate(acts)
    ]
    labels = {(r.name, tuple(sorted(r.params.items()))) for r in resolved}
    if len(labels) != 1:
        names = sorted({r.label for r in resolved})
        raise ValueError(
            "compare_to_theory needs one activation in every layer; "
            f"flow.model.activations has {', '.join(names)}"
        )
    return resolved[0]


def compare_to_theory(
    flow: Any,
    sigma_w2: float,
    sigma_b2: float,
    activation: Any = None,
    *,
    burn_in: int = 5,
    **act_params: float,
) -> TheoryComparison:
    """Compare a measured per-layer gradient gain with the mean-field ``chi_1``.

    Parameters
    ----------
    flow : object
        A gradient flow with ``log_grad_norms`` (ndarray of shape (L+1,): natural log of
        ``||dL/dh_l||`` for ``l = 0..L``, index 0 the input) and, when ``activation`` is None,
        ``flow.model.activations`` (one activation per layer, all equal), such as
        :class:`vgcore.GradientFlow` of an :class:`vgcore.MLP`.
    sigma_w2, sigma_b2 : float
        The initialisation's variances (weights ``N(0, sigma_w2 / fan_in)``).
    activation : str, optional
        Overrides ``flow.model.activations``.
    burn_in : int
        Layers next to the input excluded from the mean (default 5); at least one layer must
        remain.
    **act_params
        Activation parameters.

    Returns
    -------
    TheoryComparison

    Notes
    -----
    The prediction assumes Gaussian weights, infinite width, inputs whose pre-activation
    variance is near ``q*`` and gradients independent of the forward weights (Schoenholz et
    al. 2017); with width ``N`` the per-layer gains scatter by ~``sqrt(2 / N)``.
    """
    log_norms = np.asarray(getattr(flow, "log_grad_norms", None), dtype=np.float64)
    if log_norms.ndim != 1 or log_norms.size < 2:
        raise ValueError(
            f"flow.log_grad_norms must have shape (L+1,) with L >= 1, got shape {log_norms.shape}"
        )
    act = _flow_activation(flow) if activation is None else activation
    if isinstance(burn_in, bool) or not isinstance(burn_in, numbers.Integral) or burn_in < 0:
        raise ValueError(f"burn_in must be a non-negative integer, got {burn_in!r}")
    n_layers = log_norms.size - 1
    if burn_in >= n_layers:
        raise ValueError(f"burn_in must be < L = {n_layers} (the number of layers), got {burn_in}")
    for name, value in (("sigma_w2", sigma_w2), ("sigma_b2", sigma_b2)):
        if np.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
    theory = mean_field(act, sigma_w2, sigma_b2, **act_params)
    with np.errstate(invalid="ignore"):
        measured = 2.0 * (log_norms[:-1] - log_norms[1:])
    chi = float(theory.chi_1)
    theory_log = math.log(chi) if chi > 0.0 else -math.inf
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = np.exp(measured - theory_log)
    kept = measured[burn_in:]
    kept = kept[np.isfinite(kept)]
    mean_log = float(np.mean(kept)) if kept.size else math.nan
    return TheoryComparison(
        activation=theory.activation,
        sigma_w2=float(theory.sigma_w2),
        sigma_b2=float(theory.sigma_b2),
        theory=theory,
        layers=np.arange(1, n_layers + 1),
        measured_log_gain=measured,
        theory_log_gain=theory_log,
        gain_ratio=ratio,
        burn_in=int(burn_in),
        mean_log_gain=mean_log,
        mean_gain_ratio=math.exp(mean_log - theory_log) if math.isfinite(theory_log) else math.nan,
    )

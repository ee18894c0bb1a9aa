"""Where mean-field theory applies, and what moves a real network away from it.

Mean-field theory (Poole et al. 2016, Schoenholz et al. 2017) describes wide random MLPs:
Gaussian weights, infinite width, the pre-activation variance at its fixed point ``q*``, and no
input after the first layer (only the biases drive the layers). A vanilla RNN is driven by a new
input at every step; to first order that drive acts like extra bias variance, which raises
``q*``, saturates tanh and can turn a "chaotic" weight scale into an ordered network.
:func:`recurrent_mean_field` gives both readings, so that a phase quoted from the theory is
never left contradicting a measurement without a word.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vgcore.theory.meanfield import MeanField, mean_field

__all__ = ["ASSUMPTIONS", "SCOPE", "RecurrentMeanField", "phase_scope_note", "recurrent_mean_field"]

#: What every mean-field phase is about.
ASSUMPTIONS = (
    "wide random MLPs (Gaussian weights, infinite width) at the fixed point q* of the "
    "pre-activation variance, driven only by their biases (no inputs after the first layer)"
)
#: The assumptions behind every mean-field phase, in one sentence.
SCOPE = f"mean-field theory describes {ASSUMPTIONS}"


def phase_scope_note() -> str:
    """What the phase of ``vgcore phase`` is about, and why a network can measure otherwise."""
    return (
        f"scope: {SCOPE}. A real network can measure otherwise: a recurrent network's inputs "
        "drive every step and act like extra bias variance (they saturate tanh and move it "
        "towards order; `vgcore analyze --model rnn` shows the phase with the inputs counted), "
        "and finite width and depth add fluctuations. Measure the network itself with "
        "`vgcore analyze` or `vgcore lyapunov` (top Lyapunov exponent: > 0 chaotic, < 0 ordered)."
    )


@dataclass(frozen=True, repr=False)
class RecurrentMeanField:
    """Mean-field readings of a vanilla RNN's recurrent weight scale.

    Attributes
    ----------
    activation : str
    sigma_w2 : float
        ``fan_in * Var(W_hh)``.
    sigma_b2 : float
        Variance of the biases.
    drive_var : float
        Mean square of the per-step drive ``W_ih x_t + b_ih + b_hh`` (inputs and biases).
    free : MeanField
        The theory as `vgcore phase` quotes it: ``(sigma_w2, sigma_b2)``, no inputs.
    driven : MeanField
        The inputs' drive counted as bias variance: ``(sigma_w2, drive_var)``.
    """

    activation: str
    sigma_w2: float
    sigma_b2: float
    drive_var: float
    free: MeanField
    driven: MeanField

    @property
    def predicted_lyapunov(self) -> float:
        """``0.5 log chi_1`` of the driven reading: the top Lyapunov exponent (natural log per
        step) it predicts for a wide network (``chi_1`` is the gain of a squared norm)."""
        chi = float(self.driven.chi_1)
        return 0.5 * math.log(chi) if chi > 0 else -math.inf

    def summary(self) -> str:
        """One line: the phase without and with the inputs."""
        return (
            f"mean-field (wide random MLP, no inputs): sigma_w2={self.sigma_w2:.3g}, "
            f"sigma_b2={self.sigma_b2:.3g} -> {self.free.phase} (chi_1={float(self.free.chi_1):.3g});"
            f" with the inputs' drive counted as bias variance (sigma_b2 -> {self.drive_var:.3g}):"
            f" {self.driven.phase} (chi_1={float(self.driven.chi_1):.3g}, top Lyapunov exponent"
            f" ~ 0.5 ln chi_1 = {self.predicted_lyapunov:+.3f} per step)"
        )

    def explain(self, measured: float | None, regime: str | None, hidden_size: int) -> str | None:
        """Why the no-input phase and the measured regime differ (None when they agree)."""
        free = str(self.free.phase)
        if regime is None or measured is None or not _disagree(free, regime):
            return None
        agrees = not _disagree(str(self.driven.phase), regime)
        return (
            f"the mean-field phase '{free}' (what `vgcore phase` reports) is for {ASSUMPTIONS}; this "
            f"RNN is driven by its inputs at every step (drive variance {self.drive_var:.3g} "
            f"against sigma_b2 = {self.sigma_b2:.3g}), which saturates the units"
            + (
                f": counted as bias variance, the theory gives '{self.driven.phase}' "
                f"({self.predicted_lyapunov:+.3f} per step), as measured ({measured:+.3f}, "
                f"{regime}); the remaining difference is finite width (N = {hidden_size})"
                if agrees
                else f"; even counted as bias variance the theory gives '{self.driven.phase}' "
                f"({self.predicted_lyapunov:+.3f} per step) against the measured {measured:+.3f} "
                f"({regime}): finite width (N = {hidden_size}), the inputs' correlations over time "
                "and a short sequence are outside the theory"
            )
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sigma_w2": self.sigma_w2,
            "sigma_b2": self.sigma_b2,
            "drive_var": self.drive_var,
            "phase_no_inputs": str(self.free.phase),
            "chi1_no_inputs": float(self.free.chi_1),
            "phase_with_inputs": str(self.driven.phase),
            "chi1_with_inputs": float(self.driven.chi_1),
            "predicted_lyapunov": self.predicted_lyapunov,
        }

    def __repr__(self) -> str:
        return f"RecurrentMeanField({self.summary()})"


def _disagree(phase: str, regime: str) -> bool:
    """Chaotic against ordered (a critical reading agrees with both)."""
    return {phase, regime} == {"chaotic", "ordered"}


def recurrent_mean_field(
    activation: Any, sigma_w2: float, sigma_b2: float, drive_var: float
) -> RecurrentMeanField:
    """The mean-field phase of a vanilla RNN's recurrent weight scale, without and with its
    inputs' drive counted as bias variance.

    Parameters
    ----------
    activation : str or Activation
        The RNN's nonlinearity (tanh or relu).
    sigma_w2 : float
        ``hidden_size * Var(W_hh)``.
    sigma_b2 : float
        Variance of the summed biases.
    drive_var : float
        Mean square of ``W_ih x_t + b_ih + b_hh`` over steps, samples and units.

    Returns
    -------
    RecurrentMeanField
    """
    if not (isinstance(drive_var, (int, float)) and math.isfinite(drive_var) and drive_var >= 0):
        raise ValueError(f"drive_var must be a finite number >= 0, got {drive_var!r}")
    free = mean_field(activation, sigma_w2, sigma_b2)
    driven = mean_field(activation, sigma_w2, max(float(drive_var), float(sigma_b2)))
    return RecurrentMeanField(
        activation=str(getattr(activation, "name", activation)),
        sigma_w2=float(sigma_w2),
        sigma_b2=float(sigma_b2),
        drive_var=float(drive_var),
        free=free,
        driven=driven,
    )

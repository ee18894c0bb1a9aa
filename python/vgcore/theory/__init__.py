"""Mean-field theory of signal and gradient propagation at initialisation.

Infinite-width predictions for dense networks with Gaussian weights ``N(0, sigma_w2 / fan_in)``
and biases ``N(0, sigma_b2)`` (Poole et al. 2016, "Exponential expressivity in deep neural
networks through transient chaos"; Schoenholz et al. 2017, "Deep information propagation"):

* :func:`mean_field` -- fixed points ``q*``, ``c*``, slopes ``chi_1``, ``chi_c``, depth scales
  ``xi_q``, ``xi_c`` and the phase, for scalars or broadcast arrays;
* :func:`critical_sigma_w2` -- the edge of chaos ``chi_1 = 1``;
* :func:`phase_diagram` -- all of it on a ``(sigma_b2, sigma_w2)`` grid (fast, tabulated);
* :func:`compare_to_theory` -- measured per-layer gradient gains against ``chi_1``.

Pure numpy / scipy: nothing here imports the compiled core or other vgcore modules.
"""

from __future__ import annotations

from vgcore.theory._activations import ACTIVATION_PARAMS
from vgcore.theory.compare import TheoryComparison, compare_to_theory
from vgcore.theory.critical import critical_sigma_w2
from vgcore.theory.meanfield import MeanField, mean_field
from vgcore.theory.phases import PhaseDiagram, phase_diagram

#: Names :func:`mean_field` accepts (aliases: linear, none, swish, gelu_erf).
ACTIVATIONS = tuple(ACTIVATION_PARAMS)

__all__ = [
    "ACTIVATIONS",
    "MeanField",
    "PhaseDiagram",
    "TheoryComparison",
    "compare_to_theory",
    "critical_sigma_w2",
    "mean_field",
    "phase_diagram",
]

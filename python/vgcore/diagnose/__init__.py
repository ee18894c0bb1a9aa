"""Diagnosis: is the gradient vanishing, exploding or healthy, why, and what fixes it.

:func:`diagnose` measures the gradient flow of a model, collects the evidence (gain per layer or
step, the depth or lag at which the gradient falls below ``ratio`` of its output value, unit
saturation, the top Lyapunov exponent, the mean-field phase of the weight scale), maps the
causes it finds to the standard fixes, and **checks** every fix: the fix is applied to a copy of
the model, the gradient flow is measured again on the same inputs, and the measured improvement
is reported next to the fix. The fixes measured to help are recommended, ranked by that
improvement (:class:`Fix`; ``Diagnosis.recommended``).

The health measure is ``spread``: the largest distance, in decades, between the gradient norm
at any layer / step and its value at the output, ``max_i |log10 ||dL/dh_i|| / ||dL/dh_out|| |``.

Verdict thresholds (:func:`verdict_thresholds` states them; every summary prints them): the
gradient vanishes (explodes) when it falls below ``ratio`` (rises above ``1 / ratio``) times its
output value at some layer / step, 6 decades by default, **or** when at the input side it has
fallen (risen) by at least :data:`RATE_MIN_DECADES` decades at an average of at least
:data:`RATE_DECADES` decades per layer / step (10^-4.8 over 20 layers is vanishing: 0.24 per
layer). Healthy otherwise.

Units: decades (``log10``) throughout the evidence and the text, except the Lyapunov exponent
(natural log per layer / step, as is conventional); keys say so (``log10_*``).
"""

from __future__ import annotations

from vgcore.diagnose.core import diagnose
from vgcore.diagnose.evidence import (
    RATE_DECADES,
    RATE_MIN_DECADES,
    VERDICTS,
    lyapunov_regime,
    summarize_flow,
    verdict_thresholds,
)
from vgcore.diagnose.result import Diagnosis, Fix, _jsonable, _renamed_fix
from vgcore.diagnose.text import unit_lines

__all__ = [
    "RATE_DECADES",
    "RATE_MIN_DECADES",
    "VERDICTS",
    "Diagnosis",
    "Fix",
    "_jsonable",
    "diagnose",
    "lyapunov_regime",
    "summarize_flow",
    "unit_lines",
    "verdict_thresholds",
]


def __getattr__(name: str) -> object:
    if name == "Recommendation":  # the old name of Fix, for one release
        return _renamed_fix(__name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

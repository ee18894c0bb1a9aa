"""vgcore: measure how gradients propagate through neural networks.

Where they vanish, where they explode, and why: per-layer and per-time-step gradient norms,
activation saturation, parameter-gradient norms, from one compiled call per analysis.
"""

from __future__ import annotations

from vgcore._loader import _core
from vgcore._runtime import get_num_threads, release_memory, set_num_threads, set_workspace_limit
from vgcore._validation import InsufficientMemoryError
from vgcore.activations import ACTIVATIONS, Activation
from vgcore.analysis import (
    GradientFlow,
    JacobianSingularValues,
    JacobianSpectrum,
    LyapunovSpectrum,
    gradient_flow,
    jacobian_singular_values,
    jacobian_spectrum,
    lyapunov,
)
from vgcore.diagnose import Diagnosis, Recommendation, diagnose
from vgcore.models import GRU, LSTM, MLP, RNN
from vgcore.report import write_report
from vgcore.sweep import sweep
from vgcore.theory import compare_to_theory, critical_sigma_w2, mean_field, phase_diagram

__version__: str = _core.__version__

__all__ = [
    "ACTIVATIONS",
    "GRU",
    "LSTM",
    "MLP",
    "RNN",
    "Activation",
    "Diagnosis",
    "GradientFlow",
    "InsufficientMemoryError",
    "JacobianSingularValues",
    "JacobianSpectrum",
    "LyapunovSpectrum",
    "Recommendation",
    "__version__",
    "compare_to_theory",
    "critical_sigma_w2",
    "diagnose",
    "get_num_threads",
    "gradient_flow",
    "jacobian_singular_values",
    "jacobian_spectrum",
    "lyapunov",
    "mean_field",
    "phase_diagram",
    "release_memory",
    "set_num_threads",
    "set_workspace_limit",
    "sweep",
    "write_report",
]

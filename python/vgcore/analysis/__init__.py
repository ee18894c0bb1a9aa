"""Analyses: each takes a model and inputs, makes one compiled call, returns a result object."""

from vgcore.analysis.gradient_flow import GradientFlow, gradient_flow
from vgcore.analysis.lyapunov import LyapunovSpectrum, lyapunov
from vgcore.analysis.signal_propagation import signal_propagation
from vgcore.analysis.singular_values import JacobianSingularValues, jacobian_singular_values
from vgcore.analysis.spectrum import JacobianSpectrum, jacobian_spectrum

__all__ = [
    "GradientFlow",
    "JacobianSingularValues",
    "JacobianSpectrum",
    "LyapunovSpectrum",
    "gradient_flow",
    "jacobian_singular_values",
    "jacobian_spectrum",
    "lyapunov",
    "signal_propagation",
]

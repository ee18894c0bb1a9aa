"""Analyses: each takes a model and inputs, makes one compiled call, returns a result object."""

from vgcore.analysis.gradient_flow import GradientFlow, gradient_flow

__all__ = ["GradientFlow", "gradient_flow"]

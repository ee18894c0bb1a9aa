"""Network descriptions: numpy weights in PyTorch's layout, built from sizes or imported.

Every model holds float32 or float64 numpy arrays laid out exactly as the matching PyTorch
module stores them (``nn.Linear.weight`` is ``(out, in)``; ``nn.LSTM.weight_ih_l0`` is
``(4N, in)`` with gates i, f, g, o; ``nn.GRU`` gates r, z, n), so weights move between the
two without transposes.
"""

from __future__ import annotations

from vgcore.models.base import Model
from vgcore.models.mlp import MLP
from vgcore.models.recurrent import GRU, LSTM, RNN, RecurrentModel
from vgcore.models.registry import (
    ModelKind,
    is_model,
    model_kind,
    model_kinds,
    register_model_kind,
)
from vgcore.models.ssm import SSM, SelectiveSSM
from vgcore.models.ssm_stack import SSMStack

__all__ = [
    "GRU",
    "LSTM",
    "MLP",
    "RNN",
    "SSM",
    "Model",
    "ModelKind",
    "RecurrentModel",
    "SSMStack",
    "SelectiveSSM",
    "is_model",
    "model_kind",
    "model_kinds",
    "register_model_kind",
]

"""The CUDA formulas of each layer kind: one module per kind (forward, tangent and cotangent
per unit as Numba device functions, and the elementwise kernels that call them), registered
here under the registry's kind names (one place per kind and backend).

Nothing is imported until a kind is asked for: the modules import numba.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["CUDA_ACTIVATIONS", "CUDA_KINDS", "cuda_kinds", "layer_module"]

#: Model kind (``vgcore.models.model_kinds()`` names) -> the module of its CUDA formulas.
CUDA_KINDS: dict[str, str] = {
    "mlp": "vgcore.cuda.layers.dense",
    "rnn": "vgcore.cuda.layers.rnn",
    "lstm": "vgcore.cuda.layers.lstm",
    "gru": "vgcore.cuda.layers.gru",
}

#: The activations the CUDA kernels have (``vgcore.activations`` names), in the order of their
#: kernel codes (``_common.ACT_CODES``); here so that a check needs no numba.
CUDA_ACTIVATIONS: tuple[str, ...] = ("identity", "tanh", "relu", "sigmoid", "leaky_relu")


def cuda_kinds() -> tuple[str, ...]:
    """The model kinds that have CUDA formulas."""
    return tuple(CUDA_KINDS)


def layer_module(kind: str) -> ModuleType:
    """The CUDA formulas of ``kind`` (imports numba); a ValueError names the kinds there are."""
    try:
        name = CUDA_KINDS[kind]
    except KeyError:
        raise ValueError(
            f"model kind {kind!r} has no CUDA kernels yet; the CUDA kinds are "
            f"{', '.join(map(repr, CUDA_KINDS))} (use backend='cpu')"
        ) from None
    return importlib.import_module(name)

"""Reference PyTorch modules that vgcore ships for users and for its tests.

:mod:`vgcore.reference.ssm` holds a diagonal linear time-invariant state-space layer
(:class:`~vgcore.reference.ssm.DiagonalSSM`, S4D / LRU style) and a selective state-space block
(:class:`~vgcore.reference.ssm.SelectiveSSM`, Mamba's block with a sequential scan). Each has a
step form that :class:`vgcore.TorchCell` analyses through time (``layer.as_cell()``).
:mod:`vgcore.reference.nets` holds small networks to try the analyses of any torch module on
(a Transformer encoder, a deep sigmoid network, a plain or residual CNN).

torch is imported when an attribute of this package is first used, not with ``vgcore``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DiagonalSSM",
    "SSMStack",
    "SelectiveSSM",
    "hippo_legs",
    "nets",
    "s4d_init",
    "ssm",
    "zoh",
]

_LAZY = {
    "DiagonalSSM": "vgcore.reference.ssm",
    "SelectiveSSM": "vgcore.reference.ssm",
    "SSMStack": "vgcore.reference.ssm",
    "hippo_legs": "vgcore.reference.ssm",
    "s4d_init": "vgcore.reference.ssm",
    "zoh": "vgcore.reference.ssm",
}


def __getattr__(name: str) -> Any:
    if name in ("ssm", "nets"):
        return importlib.import_module(f"vgcore.reference.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vgcore.reference' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, "ssm", "nets"])

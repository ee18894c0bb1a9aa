"""The registry of model kinds: one entry per kind, one registration line in its family's module.

The analyses, diagnosis, CLI, reports and sweeps ask the registry or the model (its ``axis``,
``state_names``, ``gate_names``, ``to_spec``), never a list of classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vgcore.models.base import Model

__all__ = ["ModelKind", "is_model", "model_kind", "model_kinds", "register_model_kind"]


@dataclass(frozen=True)
class ModelKind:
    """One kind of model vgcore analyses natively.

    Attributes
    ----------
    name : str
        The model's ``kind`` (``"mlp"``, ``"rnn"``, ...), as in configs and ``--model``.
    cls : type
        The :class:`Model` subclass.
    torch_classes : tuple of str
        Names of the ``torch.nn`` modules it is imported from (``from_torch``).
    description : str
        One line for help texts and reports.
    backend : str
        ``"core"``: the compiled core analyses it (built from sizes, described by ``to_spec``);
        ``"torch"``: analysed through torch itself (:class:`vgcore.TorchModel`).
    """

    name: str
    cls: type[Model]
    torch_classes: tuple[str, ...]
    description: str
    backend: str = "core"

    @property
    def axis(self) -> str:
        return self.cls.axis

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.cls.state_names

    @property
    def gate_names(self) -> tuple[str, ...]:
        return self.cls.gate_names


_KINDS: dict[str, ModelKind] = {}


def register_model_kind(
    cls: type[Model], *, torch_classes: Sequence[str], description: str, backend: str = "core"
) -> ModelKind:
    """Add a model class to the registry (one line per kind; the analyses, diagnosis, CLI
    and reports ask the registry or the model, never a list of classes)."""
    if cls.kind in _KINDS:
        raise ValueError(f"model kind {cls.kind!r} is already registered")
    if backend not in ("core", "torch"):
        raise ValueError(f'backend must be "core" or "torch", got {backend!r}')
    entry = ModelKind(cls.kind, cls, tuple(torch_classes), description, backend)
    _KINDS[cls.kind] = entry
    return entry


def model_kinds(backend: str | None = "core") -> tuple[ModelKind, ...]:
    """The registered model kinds of one backend (``"core"``, the default: the kinds the
    compiled core analyses; ``"torch"``; None: all), in registration order."""
    return tuple(k for k in _KINDS.values() if backend is None or k.backend == backend)


def model_kind(name: str) -> ModelKind:
    """The registered kind ``name``; a KeyError names the kinds there are."""
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(
            f"unknown model kind {name!r}; the kinds are {', '.join(map(repr, _KINDS))}"
        ) from None


def is_model(obj: object) -> bool:
    """Whether ``obj`` is a model of a registered kind."""
    return (
        isinstance(obj, Model)
        and _KINDS.get(obj.kind, None) is not None
        and isinstance(obj, _KINDS[obj.kind].cls)
    )

"""Dispatch of torch inputs in the public analyses: a ``torch.nn.Module`` goes to the native
path when a registered kind's ``from_torch`` represents it exactly (a dense
``nn.Sequential``, stock ``nn.RNN``/``nn.LSTM``/``nn.GRU``), otherwise it is wrapped as a
:class:`vgcore.TorchModel`. Torch is only touched when it is already imported (a module
cannot exist otherwise), so ``import vgcore`` stays free of torch.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vgcore.models.registry import model_kinds

__all__ = ["is_torch_cell", "is_torch_model", "resolve", "threads", "unsupported"]


def _is_module(obj: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def resolve(model: Any) -> Any:
    """``model`` itself, or for a ``torch.nn.Module`` the native model its registered kind
    imports exactly, a ``TorchCell`` for a stock recurrent cell (``nn.RNNCell``,
    ``nn.GRUCell``, ``nn.LSTMCell``), else ``TorchModel(model)``."""
    if not _is_module(model):
        return model
    name = type(model).__name__
    for kind in model_kinds():
        if name in kind.torch_classes:
            try:
                return kind.cls.from_torch(model)  # type: ignore[attr-defined]
            except (NotImplementedError, TypeError, ValueError):
                break  # a module the native kind does not represent: through torch
    import vgcore.torchmodel.cell  # noqa: F401  (registers the torch_cell kind)

    for kind in model_kinds(backend="torch"):
        if kind.axis == "time" and name in kind.torch_classes:
            return kind.cls(model)  # type: ignore[call-arg]  # a stock cell: a TorchCell
    from vgcore.torchmodel.model import TorchModel

    return TorchModel(model)


def is_torch_model(model: Any) -> bool:
    return getattr(model, "kind", None) == "torch" and getattr(model, "axis", None) == "depth"


def is_torch_cell(model: Any) -> bool:
    return getattr(model, "kind", None) == "torch_cell"


def unsupported(what: str, **given: Any) -> None:
    """A ValueError naming the arguments that do not apply to a torch module."""
    bad = [k for k, v in given.items() if v is not None and v is not False]
    if bad:
        raise ValueError(
            f"{', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not apply to {what}"
        )


def torch_input(model: Any, x: Any, name: str = "x") -> Any:
    """``x`` (numpy or torch) on the module's device and dtype."""
    return model.as_input(x, name=name)


@contextmanager
def threads(num_threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``num_threads`` for the block (validated as the
    native analyses' ``num_threads``) and restored after; None leaves torch's setting alone."""
    if num_threads is None:
        yield
        return
    from vgcore._runtime import resolve_threads

    n = resolve_threads(num_threads)
    torch = sys.modules["torch"]
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

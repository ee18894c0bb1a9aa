"""TorchModel: any ``torch.nn.Module`` as a chain of blocks, one more kind behind the analyses.

This module imports torch only inside functions, so ``import vgcore`` stays free of torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vgcore.models.base import Model
from vgcore.models.registry import register_model_kind

if TYPE_CHECKING:
    import torch

    from vgcore.torchmodel.blocks import Boundary, Chain, Cut

__all__ = ["BlockChainWarning", "TorchModel"]


class BlockChainWarning(UserWarning):
    """The requested or discovered blocks do not form a chain: vgcore merged blocks (named in
    the message) and analyses the coarser chain that holds."""


class TorchModel(Model):
    """A ``torch.nn.Module`` analysed as a chain of blocks ``h_l = f_l(h_{l-1})``, ``h_0 = x``.

    Parameters
    ----------
    module : torch.nn.Module
        Any module whose forward takes one tensor ``x`` and returns one tensor. It is never
        changed: every analysis restores its parameters, buffers, training modes,
        ``requires_grad`` flags, ``.grad`` fields and hooks (also after an exception).
    blocks : "auto" or sequence of str
        ``"auto"``: the children of an ``nn.Sequential``; otherwise the longest run of
        repeated blocks (children of one class in a ``ModuleList`` / ``Sequential``, such as
        ``TransformerEncoder.layers``, a GPT's ``h``, a ResNet stage), with whatever the
        forward does before and after them as the blocks ``"before"`` and ``"after"``;
        without such a run, the module's direct children. A list of submodule names (as in
        ``module.named_modules()``, in the order the forward calls them) cuts the module at
        each one's input instead: block ``name`` runs from that submodule's input to the next
        named one's input (including whatever the parent's forward does in between, e.g.
        taking the first element of an ``nn.LSTM``'s tuple output), the last one ends at its
        output.

    Notes
    -----
    A recording pass checks that the blocks form a chain: each block's output must depend on
    its own input alone. Where it does not (a residual added in the parent's forward, a skip
    across blocks), the blocks in between are merged with a :class:`BlockChainWarning` naming
    them, down to the whole module as one block: never a wrong chain. Composing the blocks is
    also checked to reproduce the module's output.

    Analyses run in evaluation semantics (``module.eval()`` inside, the module's own modes
    restored after): dropout is off and BatchNorm uses its running statistics, as the native
    models are analysed; a note says so when the module was in ``train()`` mode.
    float16 / bfloat16 modules are analysed in a float32 deep copy (noted).

    The blocks depend on the input (a block that is part of the parent's forward re-runs it on
    the recorded input): :meth:`chain` records them for an input ``x``; :attr:`blocks` is the
    last recorded chain.
    """

    kind: ClassVar[str] = "torch"
    axis: ClassVar[str] = "depth"
    state_names: ClassVar[tuple[str, ...]] = ("h",)

    def __init__(self, module: Any, blocks: str | Sequence[str] = "auto") -> None:
        from torch import nn

        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if isinstance(blocks, str):
            if blocks != "auto":
                raise ValueError(
                    f'blocks must be "auto" or a list of submodule names, got {blocks!r}'
                )
            self._blocks_arg: str | tuple[str, ...] = "auto"
        elif isinstance(blocks, Sequence) and not isinstance(blocks, bytes):
            names = tuple(blocks)
            if not names or not all(isinstance(n, str) for n in names):
                raise TypeError(
                    'blocks must be "auto" or a non-empty list of submodule names (str), '
                    f"got {blocks!r}"
                )
            known = {n for n, _ in module.named_modules() if n}
            bad = [n for n in names if n not in known]
            if bad:
                import difflib

                close = difflib.get_close_matches(bad[0], sorted(known), n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(
                    f"blocks: {bad[0]!r} is not a submodule of this {type(module).__name__}"
                    f"{hint} (names as in module.named_modules())"
                )
            self._blocks_arg = names
        else:
            raise TypeError(
                f'blocks must be "auto" or a list of submodule names, got {type(blocks).__name__}'
            )
        self._module = module
        self._bounds: dict[tuple[Any, ...], tuple[list[Boundary], list[str]]] = {}
        self._chain: Chain | None = None
        self.notes: tuple[str, ...] = ()
        self.dtype = self._np_dtype()

    # -- what the analyses ask ---------------------------------------------------------------
    @property
    def module(self) -> Any:
        """The wrapped ``torch.nn.Module`` (never modified)."""
        return self._module

    @property
    def blocks_arg(self) -> str | tuple[str, ...]:
        """The ``blocks`` argument: ``"auto"`` or the submodule names."""
        return self._blocks_arg

    @property
    def step_name(self) -> str:
        return "block"

    @property
    def blocks(self) -> list[tuple[str, Any]]:
        """``[(name, block), ...]`` of the last recorded chain (see :meth:`chain`): each block
        a module called as ``block(h) -> h``, composing to the module's forward."""
        return self._last().pairs

    @property
    def block_names(self) -> list[str]:
        """Names of the blocks of the last recorded chain."""
        return list(self._last().names)

    @property
    def num_layers(self) -> int:
        """Blocks of the last recorded chain."""
        return len(self._last().blocks)

    @property
    def state_dim(self) -> int:
        """Elements of one sample of the recorded input ``h_0``."""
        x = self._last().inputs[0]
        return int(x[0].numel()) if x.dim() else 1

    @property
    def input_size(self) -> int:
        """The last dimension of the recorded input."""
        x = self._last().inputs[0]
        return int(x.shape[-1]) if x.dim() else 1

    def _last(self) -> Chain:
        if self._chain is None:
            raise RuntimeError(
                "this TorchModel has no recorded chain yet: call model.chain(x) (or run an "
                "analysis) with an input first"
            )
        return self._chain

    def describe(self) -> str:
        name = type(self._module).__name__
        if self._chain is None:
            return f"TorchModel({name})"
        return f"TorchModel({name}, {len(self._chain.blocks)} blocks)"

    def __repr__(self) -> str:
        return self.describe()

    def flat_spec(self) -> dict[str, Any]:
        return {"model": self.kind, "module": type(self._module).__name__}

    def parameters(self) -> dict[str, np.ndarray]:
        """The module's parameters by name, as float numpy copies (half precision widened)."""
        out = {}
        for n, p in self._module.named_parameters():
            t = p.detach()
            if t.dtype in _half():
                t = t.float()
            out[n] = t.cpu().numpy().copy()
        return out

    @property
    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self._module.parameters()))

    def jacobian_obstacle(self) -> str | None:
        return None

    def lyapunov_obstacle(self) -> str | None:
        return (
            "vgcore.lyapunov on a torch module needs a recurrent step: wrap it as "
            "vgcore.TorchCell(step)"
        )

    def to_spec(self, dtype: object = None, *, check_finite: bool = True) -> dict[str, Any]:
        raise NotImplementedError(
            "a TorchModel is analysed through torch, not the compiled core: it has no core "
            "description"
        )

    def _checked(self, *, check_finite: bool = True) -> TorchModel:
        return self

    def validate(self) -> None:
        """Nothing to re-check: every analysis reads the module afresh."""

    def astype(self, dtype: object) -> TorchModel:
        raise NotImplementedError("convert the torch module itself (module.double())")

    # -- inputs and sessions -------------------------------------------------------------------
    def _np_dtype(self) -> np.dtype:
        import torch

        from vgcore.torchmodel._hygiene import module_dtype

        dt, _ = module_dtype(self._module)
        return np.dtype(np.float64) if dt == torch.float64 else np.dtype(np.float32)

    def as_input(self, x: Any, module: Any = None, name: str = "x") -> torch.Tensor:
        """``x`` (numpy or torch) as a tensor on the module's device, in its floating dtype
        (float32 for a half-precision module; integer inputs such as token ids keep their
        dtype)."""
        import torch

        from vgcore.torchmodel._hygiene import HALF_DTYPES, module_dtype

        dt, dev = module_dtype(self._module if module is None else module)
        if dt in HALF_DTYPES:
            dt = torch.float32
        if isinstance(x, torch.Tensor):
            t = x.detach()
        else:
            try:
                a = np.asarray(x)
            except Exception as exc:
                raise TypeError(
                    f"{name} must be a tensor or an array, got {type(x).__name__}"
                ) from exc
            if a.dtype == object or a.dtype.kind not in "biuf":
                raise TypeError(
                    f"{name} must be a real numeric array or tensor, got dtype {a.dtype}"
                )
            t = torch.from_numpy(np.ascontiguousarray(a))
        if t.is_complex():
            raise TypeError(f"{name} must be real, got {t.dtype}")
        if t.is_floating_point():
            return t.to(device=dev, dtype=dt)
        return t.to(device=dev)

    @contextmanager
    def session(self, x: Any, *, param_grads: bool = True, verify: bool = True) -> Iterator[Any]:
        """Record the chain for ``x`` and keep the module in analysis state while inside.

        Yields a :class:`vgcore.torchmodel.blocks.Chain` whose blocks can be called (in
        evaluation semantics, on the module's device and dtype) until the block ends; the
        module is then restored (modes, flags, hooks, values).
        """
        with self._analysis(x, param_grads=param_grads) as (module, xt):
            chain = self._record(module, xt, verify=verify)
            yield chain

    def chain(self, x: Any) -> Chain:
        """Record and return the chain of blocks for the input ``x``.

        The blocks are the module's own submodules (or pieces of its forward): called after
        this returns, they run in the module's current training mode; use :meth:`session` to
        call them in evaluation semantics.
        """
        with self.session(x) as ch:
            return ch  # type: ignore[no-any-return]

    @contextmanager
    def _analysis(self, x: Any, *, param_grads: bool) -> Iterator[tuple[Any, torch.Tensor]]:
        """The module to analyse (a float32 copy of a half-precision one) in eval mode with
        hygiene, and ``x`` on its device and dtype."""
        from vgcore.torchmodel._hygiene import any_training_sensitive, float_copy, preserved

        notes: list[str] = []
        module, note = float_copy(self._module)
        if note:
            notes.append(note)
        train = any_training_sensitive(module)
        if train:
            notes.append(
                "the module is in train() mode: analysed in evaluation semantics (dropout off, "
                f"BatchNorm running statistics) at {', '.join(train[:4])}"
                + (", ..." if len(train) > 4 else "")
                + "; call .eval() to silence this note"
            )
        self.notes = tuple(notes)
        self.dtype = self._np_dtype()
        xt = self.as_input(x, module)
        with preserved(module, grads=param_grads):
            yield module, xt

    def _key(self, module: Any, xt: torch.Tensor) -> tuple[Any, ...]:
        return (id(module), tuple(xt.shape), xt.dtype, str(xt.device))

    def _requested_cuts(self, module: Any, xt: torch.Tensor) -> list[Cut]:
        from vgcore.torchmodel import blocks as B

        if self._blocks_arg == "auto":
            return B.auto_boundaries(module, xt)[0]
        return B.explicit_boundaries(module, xt, self._blocks_arg)

    def _record(self, module: Any, xt: torch.Tensor, *, verify: bool = True) -> Chain:
        """Record the chain for ``xt`` (requested cuts, coarsened until the chain holds);
        the final boundaries are kept for the next analysis of an input of this shape."""
        from vgcore.torchmodel import blocks as B

        chain, _, bounds = B.record(module, xt, self._requested_cuts(module, xt), verify=verify)
        chain.notes = list(self.notes)
        self._bounds[self._key(module, xt)] = (bounds, list(chain.names))
        self._chain = chain
        return chain

    def bounds_for(self, module: Any, xt: torch.Tensor) -> tuple[list[Boundary], list[str]]:
        """The verified boundaries for this input and the names of the blocks they make
        (recorded once per input shape and dtype; a half-precision module's float32 copy is
        recorded every time)."""
        key = self._key(module, xt)
        if key not in self._bounds or module is not self._module:
            self._record(module, xt)
        bounds, names = self._bounds[key]
        return list(bounds), list(names)


def _half() -> tuple[Any, ...]:
    from vgcore.torchmodel._hygiene import HALF_DTYPES

    return HALF_DTYPES


register_model_kind(
    TorchModel,
    torch_classes=("Module",),
    description="any torch.nn.Module, analysed through torch as a chain of blocks",
    backend="torch",
)

"""Forward signal propagation of any torch module, block by block (representation norm, token
similarity, stable rank, attention entropy): the quantities Transformer and CNN studies read
next to the per-block gradient norms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vgcore.analysis import _torch
from vgcore.models.registry import is_model, model_kind

__all__ = ["signal_propagation"]


def signal_propagation(
    model: Any,
    x: Any,
    *,
    blocks: str | Sequence[str] = "auto",
    layout: str = "auto",
    attention: bool = True,
    keep_attention: bool = False,
    grad_norms: bool = False,
) -> Any:
    """Per block: representation norm, mean cosine similarity between tokens, stable rank,
    and the attention entropy per head of every ``nn.MultiheadAttention``.

    Parameters
    ----------
    model : torch.nn.Module or vgcore.TorchModel
        Any module (viewed as a chain of blocks, :class:`vgcore.TorchModel`); a native vgcore
        model is analysed through its PyTorch module (``model.to_torch()``).
    x : array_like or torch.Tensor
        The module's input, e.g. ``(B, S, d)`` for a batch-first Transformer, ``(B, C, H, W)``
        for a CNN; moved to the module's device and dtype.
    blocks : "auto" or sequence of str
        How a module is cut into blocks (:class:`vgcore.TorchModel`); ignored for a
        TorchModel, which has its own.
    layout, attention, keep_attention
        As :func:`vgcore.torchmodel.signal.signal_propagation`: how tensors split into tokens
        and features, whether to record attention entropies, whether to keep the weights.
    grad_norms : bool
        Also run :func:`vgcore.gradient_flow` (default loss) and attach its per-block
        ``log ||dL/dh_l||`` (``log_grad_norms``, shape (L+1,)) to the result.

    Returns
    -------
    vgcore.torchmodel.signal.SignalPropagation
        Indexed by ``"(input)"`` then the block names; ``to_pandas()``, ``plot()``.

    Evaluation semantics (dropout off, BatchNorm running statistics); the module is left
    unchanged (parameters, buffers, modes, flags, hooks).
    """
    from vgcore.torchmodel.model import TorchModel
    from vgcore.torchmodel.signal import signal_propagation as _signal

    if not isinstance(grad_norms, bool):
        raise TypeError(f"grad_norms must be True or False, got {grad_norms!r}")
    if _torch.is_torch_model(model):
        tm = model
    elif is_model(model) and model_kind(model.kind).backend == "core":
        tm = TorchModel(model.to_torch(), blocks=blocks)
    elif _torch._is_module(model):
        tm = TorchModel(model, blocks=blocks)
    else:
        raise TypeError(
            "model must be a torch.nn.Module, a vgcore.TorchModel or a native vgcore model, "
            f"got {type(model).__name__}"
        )
    with tm.session(x, param_grads=False) as chain:
        result = _signal(
            chain.pairs,
            chain.inputs[0],
            layout=layout,
            attention=attention,
            keep_attention=keep_attention,
        )
    if grad_norms:
        from vgcore.analysis.gradient_flow import gradient_flow

        flow = gradient_flow(tm, x)
        if list(flow.block_names or []) == list(result.names[1:]):
            result.log_grad_norms = flow.log_grad_norms
    return result

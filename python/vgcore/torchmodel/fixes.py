"""The standard fixes of vanishing / exploding gradients, applied to a deep copy of a torch module.

Every function returns a **new** module (``copy.deepcopy``) and leaves its argument untouched:
parameters, buffers, training modes, ``requires_grad`` flags and hooks. :func:`vgcore.diagnose`
measures each fixed copy with the same inputs and loss.

What each fix does, exactly:

- :func:`reinit`: every weight layer (:func:`weight_layers`: ``nn.Linear`` including attention
  output projections, ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose*``) gets a fresh weight from one
  scheme (``"xavier_normal"``, ``"kaiming_normal"`` = He, fan-in, or ``"orthogonal"``) and a
  zero bias; everything else (embeddings, attention input projections, norms) is kept. Draws
  come from a seeded CPU generator in float64, so they do not depend on the device.
- :func:`swap_activations`: every activation *module* of the given kinds (``nn.Sigmoid``,
  ``nn.Tanh`` by default) becomes a new ``nn.ReLU`` / ``nn.GELU`` / ``nn.LeakyReLU``.
  Activations called as functions in a ``forward`` (``torch.sigmoid(h)``) cannot be swapped.
- :func:`residual_branch_ends` / :func:`scale_residual_branches`: a block of the module's
  chain is *residual* when, with all of its weight layers and affine norms zeroed, it returns
  its input unchanged (``h + g(h)`` with ``g = 0``). The ends of its branches are the smallest
  set of those layers that still does so, found greedily in call order (for a pre-norm
  Transformer layer: the attention output projection and the second feed-forward Linear; for
  a ResNet basic block: its last BatchNorm). Scaling a branch multiplies the weight and bias
  of each end by ``alpha``: a single branch becomes exactly ``h + alpha * g(h)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vgcore.activations import Activation, from_torch_module, to_torch_module

__all__ = [
    "INIT_SCHEMES",
    "affine_layers",
    "estimate_weight_scale",
    "reinit",
    "residual_branch_ends",
    "scale_residual_branches",
    "swap_activations",
    "swappable_activations",
    "weight_layers",
]

#: The re-initialisation schemes :func:`reinit` applies.
INIT_SCHEMES = ("xavier_normal", "kaiming_normal", "orthogonal")

_WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
_AFFINE_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def weight_layers(module: nn.Module) -> list[tuple[str, Any]]:
    """``(name, layer)`` of every ``nn.Linear`` / convolution in ``module`` (registration
    order; names as in ``module.named_modules()``)."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, _WEIGHT_LAYERS)]


def affine_layers(module: nn.Module) -> list[tuple[str, Any]]:
    """Weight layers and normalisation layers with an affine weight: the layers whose output
    is zero when their weight and bias are."""
    out: list[tuple[str, Any]] = []
    for n, m in module.named_modules():
        if isinstance(m, _WEIGHT_LAYERS):
            out.append((n, m))
        elif isinstance(m, _AFFINE_NORMS) and getattr(m, "weight", None) is not None:
            out.append((n, m))
    return out


def _activations(module: nn.Module) -> list[tuple[str, Activation]]:
    out = []
    for n, m in module.named_modules():
        act = from_torch_module(m)
        if act is not None and not act.is_linear:
            out.append((n, act))
    return out


def swappable_activations(
    module: nn.Module, kinds: Sequence[str] = ("sigmoid", "tanh")
) -> list[str]:
    """Names of the activation modules of ``kinds`` (vgcore activation names) in ``module``."""
    return [n for n, a in _activations(module) if a.name in kinds and n]


def _gain_activation(module: nn.Module) -> tuple[str, float | None]:
    """The nonlinearity ``nn.init.calculate_gain`` should use: the module's one activation
    kind, else ``"linear"`` (gain 1)."""
    names = {a.name for _, a in _activations(module)}
    if len(names) != 1:
        return "linear", None
    (name,) = names
    if name == "leaky_relu":
        slope = next(a for _, a in _activations(module)).params.get("negative_slope", 0.01)
        return "leaky_relu", float(slope)
    if name in ("sigmoid", "tanh", "relu", "selu"):
        return name, None
    return "linear", None


def reinit(module: nn.Module, scheme: str, *, seed: int = 0) -> nn.Module:
    """A deep copy of ``module`` with every weight layer re-initialised by ``scheme``.

    Parameters
    ----------
    module : torch.nn.Module
    scheme : {"xavier_normal", "kaiming_normal", "orthogonal"}
        Xavier (Glorot) normal and orthogonal with ``nn.init.calculate_gain`` of the module's
        activation (when it has one kind of activation module; else gain 1); He (kaiming)
        normal with fan-in and the ReLU gain (leaky ReLU's slope where that is the activation).
        Biases of those layers are set to 0.
    seed : int
        Seed of the CPU generator the weights are drawn from (in float64, then cast).

    Returns
    -------
    torch.nn.Module
        The re-initialised copy.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(INIT_SCHEMES)}, got {scheme!r}")
    out = copy.deepcopy(module)
    act, slope = _gain_activation(out)
    nonlinearity: Any = act
    gain = nn.init.calculate_gain(nonlinearity, slope) if act != "selu" else 3.0 / 4.0
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for _, layer in weight_layers(out):
            w = layer.weight
            fresh = torch.empty(w.shape, dtype=torch.float64)
            if scheme == "xavier_normal":
                nn.init.xavier_normal_(fresh, gain=gain, generator=gen)
            elif scheme == "kaiming_normal":
                neg = slope if act == "leaky_relu" and slope is not None else 0.0
                nl: Any = "leaky_relu" if act == "leaky_relu" else "relu"
                nn.init.kaiming_normal_(fresh, a=neg, nonlinearity=nl, generator=gen)
            else:
                nn.init.orthogonal_(fresh, gain=gain, generator=gen)
            w.copy_(fresh.to(dtype=w.dtype, device=w.device))
            if getattr(layer, "bias", None) is not None:
                layer.bias.zero_()
    return out


def swap_activations(
    module: nn.Module, to: str = "relu", *, kinds: Sequence[str] = ("sigmoid", "tanh")
) -> tuple[nn.Module, list[str]]:
    """A deep copy of ``module`` with its activation modules of ``kinds`` replaced.

    Parameters
    ----------
    module : torch.nn.Module
    to : str
        The new activation (a vgcore activation name: ``"relu"``, ``"gelu"``,
        ``"leaky_relu"``, ...; ``"leaky_relu"`` gets slope 0.1).
    kinds : sequence of str
        The activations replaced (vgcore names of ``nn.Sigmoid``, ``nn.Tanh``, ...).

    Returns
    -------
    (torch.nn.Module, list of str)
        The copy and the names of the modules replaced (empty when there were none).
    """
    act = Activation("leaky_relu", negative_slope=0.1) if to == "leaky_relu" else Activation(to)
    out = copy.deepcopy(module)
    names = swappable_activations(out, kinds)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        new = to_torch_module(act)
        old = parent.get_submodule(child)
        new.train(old.training)
        setattr(parent, child, new)
    return out, names


def _zeroed(layers: Sequence[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    saved = []
    for m in layers:
        for p in (m.weight, getattr(m, "bias", None)):
            if p is not None:
                saved.append((p, p.detach().clone()))
                p.zero_()
    return saved


def _restore(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for p, v in saved:
        p.copy_(v)


def _is_identity(block: nn.Module, h: torch.Tensor, zero: Sequence[Any]) -> bool:
    saved = _zeroed(zero)
    try:
        y = block(h)
    finally:
        _restore(saved)
    if not isinstance(y, torch.Tensor) or y.shape != h.shape or not y.is_floating_point():
        return False
    scale = float(h.abs().amax()) if h.numel() else 0.0
    tol = 16 * torch.finfo(h.dtype).eps * max(scale, 1e-30)
    return bool(torch.all((y - h).abs() <= tol))


def _call_order(block: nn.Module, h: torch.Tensor, layers: Sequence[nn.Module]) -> list[int]:
    """Indices of ``layers`` in the order the block calls them; layers it does not call
    (e.g. an attention output projection used through its weight) come last."""
    order: list[int] = []
    handles = []
    for i, m in enumerate(layers):
        handles.append(m.register_forward_pre_hook(lambda mod, args, i=i: order.append(i)))
    try:
        block(h)
    finally:
        for hd in handles:
            hd.remove()
    first = list(dict.fromkeys(order))
    return first + [i for i in range(len(layers)) if i not in first]


def residual_branch_ends(model: Any, x: Any) -> dict[str, list[str]]:
    """The residual blocks of a :class:`~vgcore.torchmodel.TorchModel`'s chain and the layers
    ending their branches.

    Parameters
    ----------
    model : TorchModel
    x : tensor or array_like
        The input the chain is recorded for.

    Returns
    -------
    dict of str -> list of str
        Block name -> names (in ``model.module.named_modules()``) of the layers whose weight
        and bias scale the block's residual branches (see the module docstring for the test).
        Blocks that are not residual are absent. The work runs on a deep copy.
    """
    from vgcore.torchmodel.blocks import Segment
    from vgcore.torchmodel.model import TorchModel

    work = TorchModel(copy.deepcopy(model.module), blocks=model.blocks_arg)
    names_of = {id(m): n for n, m in work.module.named_modules()}
    out: dict[str, list[str]] = {}
    # The copy is ours: evaluation semantics (before recording, so a float32 copy of a
    # half-precision module inherits it), and the zeroing below writes its parameters in place
    # outside an analysis session (which refuses in-place writes).
    work.module.eval()
    chain = work.chain(x)
    with torch.no_grad():
        for (bname, blk), h in zip(chain.pairs, chain.inputs):
            if isinstance(blk, Segment) or not h.is_floating_point():
                continue  # a piece of the parent's forward: it holds every layer of the module
            cands = [m for _, m in affine_layers(blk) if id(m) in names_of]
            if not cands or not _is_identity(blk, h, cands):
                continue
            keep = list(range(len(cands)))
            for i in _call_order(blk, h, cands):
                trial = [j for j in keep if j != i]
                if trial and _is_identity(blk, h, [cands[j] for j in trial]):
                    keep = trial
            out[bname] = [names_of[id(cands[j])] for j in keep]
    return out


def scale_residual_branches(
    module: nn.Module, ends: dict[str, list[str]] | Sequence[str], alpha: float
) -> nn.Module:
    """A deep copy of ``module`` with the weight and bias of each named branch-end layer
    multiplied by ``alpha`` (see :func:`residual_branch_ends`)."""
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    names = [n for ns in ends.values() for n in ns] if isinstance(ends, dict) else list(ends)
    out = copy.deepcopy(module)
    with torch.no_grad():
        for n in dict.fromkeys(names):
            m: Any = out.get_submodule(n)
            for p in (m.weight, getattr(m, "bias", None)):
                if p is not None:
                    p.mul_(alpha)
    return out


def estimate_weight_scale(module: nn.Module) -> dict[str, Any]:
    """``sigma_w2 = fan_in * E[W^2]`` and ``sigma_b2 = E[b^2]``, averaged over the weight
    layers (fan-in: the product of a weight's dimensions after the first); None without any."""
    ws, bs = [], []
    with torch.no_grad():
        for _, m in weight_layers(module):
            w = m.weight.detach().to(torch.float64)
            fan_in = w[0].numel() if w.dim() > 1 else 1
            ws.append(float(fan_in * w.square().mean()))
            b = getattr(m, "bias", None)
            if b is not None:
                bs.append(float(b.detach().to(torch.float64).square().mean()))
    if not ws:
        return {"sigma_w2": None, "sigma_b2": None, "layers": 0}
    return {
        "sigma_w2": sum(ws) / len(ws),
        "sigma_b2": sum(bs) / len(bs) if bs else 0.0,
        "layers": len(ws),
    }

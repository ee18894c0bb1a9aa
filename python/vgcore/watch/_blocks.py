"""Which submodules the monitor calls blocks, and which block owns each parameter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from vgcore.torchmodel.blocks import longest_runs

__all__ = [
    "OTHER",
    "clean_name",
    "flat_param_parts",
    "owner_by_name",
    "param_owners",
    "unwrap",
    "watch_blocks",
]

#: The block that holds parameters outside every block (a root-level nn.Parameter).
OTHER = "(other)"

# Wrappers whose attribute holds the user's model; their names are dropped from parameter
# names so that a watched DDP / FSDP / compiled model reports the same names as the plain one.
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """``name`` without the wrapper prefixes of FSDP, activation checkpointing and compile."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def unwrap(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The user's module inside DDP / torch.compile wrappers, and what was unwrapped.

    Returns
    -------
    (module, wrappers) : the innermost module and the wrapper kinds ("ddp", "compile") found
    """
    wrappers: list[str] = []
    while True:
        cls = type(model).__name__
        inner: Any = getattr(model, "module", None)
        if cls in ("DistributedDataParallel", "DataParallel") and isinstance(inner, nn.Module):
            wrappers.append("ddp")
            model = inner
            continue
        inner = getattr(model, "_orig_mod", None)
        if cls == "OptimizedModule" and isinstance(inner, nn.Module):
            wrappers.append("compile")
            model = inner
            continue
        return model, wrappers


def _auto_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """An ``nn.Sequential``: its children. Otherwise the longest run of repeated blocks
    (children of one class in a ModuleList / Sequential: ``TransformerEncoder.layers``, a GPT's
    ``h``), each a block, plus the submodules beside the path from the root to that run
    (embeddings, final norm, head), each a block. Without such a run: the root's children.
    A module without children is one block, ``"model"``."""
    kids = list(model.named_children())
    if not kids:
        return [("model", model)]
    if isinstance(model, nn.Sequential):
        return kids
    runs = longest_runs(model)  # the any-model analyses' runs, without a forward pass
    if not runs:
        return kids
    run = runs[0]
    container = run[0].rsplit(".", 1)[0] if "." in run[0] else ""
    mods = dict(model.named_modules())
    out: list[tuple[str, nn.Module]] = []
    path = container.split(".") if container else []
    # siblings of the path at every level above the run's container
    prefix = ""
    node = model
    for part in path:
        for n, c in node.named_children():
            if n != part:
                out.append((prefix + n, c))
        prefix = f"{prefix}{part}."
        node = getattr(node, part)
    in_run = set(run)
    for n, c in node.named_children():
        full = prefix + n
        if full in in_run or not isinstance(c, nn.Module):
            continue
        out.append((full, c))
    out.extend((n, mods[n]) for n in run)
    return out


def watch_blocks(model: nn.Module, blocks: Any) -> list[tuple[str, nn.Module]]:
    """The blocks to watch: ``"auto"`` or a list of submodule names.

    Parameters
    ----------
    model : torch.nn.Module
        The unwrapped model.
    blocks : "auto" or sequence of str
        ``"auto"``: the model's top-level children (through a lone container, with
        ModuleList items as blocks of their own). Names: those submodules, in the given order.

    Returns
    -------
    list of (name, module), in forward order as far as the names tell it
    """
    if isinstance(blocks, str):
        if blocks != "auto":
            raise ValueError(f"blocks must be 'auto' or a list of submodule names, got {blocks!r}")
        return [(clean_name(n), m) for n, m in _auto_blocks(model)]
    if (
        not isinstance(blocks, Sequence)
        or not blocks
        or not all(isinstance(b, str) for b in blocks)
    ):
        raise TypeError(
            f"blocks must be 'auto' or a non-empty list of submodule names, got {blocks!r}"
        )
    out = []
    for name in blocks:
        try:
            out.append((name, model.get_submodule(name)))
        except AttributeError:
            known = [clean_name(n) for n, _ in model.named_modules() if n][:12]
            raise ValueError(
                f"blocks: {name!r} is not a submodule of the model; some of its submodules: {known}"
            ) from None
    return out


def param_owners(blocks: Sequence[tuple[str, nn.Module]]) -> dict[int, int]:
    """``id(parameter) -> block index`` by module membership; a parameter inside nested
    blocks belongs to the innermost (the one with the fewest parameters)."""
    owners: dict[int, int] = {}
    sizes: dict[int, int] = {}
    for i, (_, mod) in enumerate(blocks):
        ps = list(mod.parameters())
        for p in ps:
            if id(p) not in owners or len(ps) < sizes[id(p)]:
                owners[id(p)] = i
                sizes[id(p)] = len(ps)
    return owners


def flat_param_parts(p: Any) -> list[tuple[str, int, int]] | None:
    """The tensors inside a flat parameter of the ``FullyShardedDataParallel`` wrapper
    (``use_orig_params=False``): ``(name relative to the wrapped module, offset, numel)`` of
    each one's part of this rank's shard (numel 0 where the shard holds none of it). None for
    an ordinary parameter."""
    fqns = getattr(p, "_fqns", None)
    infos = getattr(p, "_shard_param_infos", None)
    if fqns is None or infos is None or len(fqns) != len(infos):
        return None
    out = []
    for fqn, info in zip(fqns, infos):
        if getattr(info, "in_shard", False):
            out.append((str(fqn), int(info.offset_in_shard), int(info.numel_in_shard)))
        else:
            out.append((str(fqn), 0, 0))
    return out


def owner_by_name(name: str, blocks: Sequence[str]) -> int:
    """Index of the block whose name is the longest prefix of the parameter ``name`` (the
    innermost), -1 if none."""
    best, size = -1, -1
    for i, b in enumerate(blocks):
        if (name == b or name.startswith(b + ".")) and len(b) > size:
            best, size = i, len(b)
    return best

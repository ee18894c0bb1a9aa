"""Leave a torch module as it was: parameters, buffers, training mode, ``requires_grad`` flags,
``.grad`` fields and hook dictionaries are restored on exit, also when an exception is raised.

Analyses run in evaluation semantics (``module.eval()``: dropout off, BatchNorm with its
running statistics), as the native models do; the module's own modes come back on exit.
Half-precision modules (float16 / bfloat16) are analysed in a float32 deep copy
(:func:`float_copy`), so the original is never touched at all.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["HALF_DTYPES", "float_copy", "module_dtype", "preserved"]

HALF_DTYPES = (torch.float16, torch.bfloat16)

# Every per-module hook dictionary torch keeps (absent ones are skipped on older versions).
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def module_dtype(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the module's first floating-point parameter (or buffer);
    float32 on the CPU for a module without any."""
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.float32, torch.device("cpu")


def float_copy(module: nn.Module) -> tuple[nn.Module, str | None]:
    """``module`` itself, or a float32 deep copy when it holds float16 / bfloat16 tensors
    (with a note saying so)."""
    halves = {
        str(t.dtype).removeprefix("torch.")
        for t in (*module.parameters(), *module.buffers())
        if t.dtype in HALF_DTYPES
    }
    if not halves:
        return module, None
    cp = copy.deepcopy(module)
    cp.float()
    note = (
        f"the module holds {'/'.join(sorted(halves))} tensors: analysed in a float32 copy "
        "(the module itself is unchanged)"
    )
    return cp, note


@contextmanager
def preserved(module: nn.Module, *, eval_mode: bool = True, grads: bool = True) -> Iterator[None]:
    """Run a block of code on ``module`` and restore it afterwards.

    Inside, the module is in ``eval()`` mode (``eval_mode``) and, with ``grads``, every
    floating-point parameter requires grad (so per-block parameter gradients exist for frozen
    modules too). On exit, also after an exception: each submodule's training flag, each
    parameter's ``requires_grad`` and ``.grad`` object, the values of buffers written in place
    (detected by their version counters; restored from a copy taken on entry) and every hook
    dictionary (hooks added inside are removed). Parameters are never written by vgcore; a
    forward that writes one in place in eval mode raises RuntimeError on exit.

    Parameters
    ----------
    module : torch.nn.Module
    eval_mode : bool
        Switch to evaluation semantics inside.
    grads : bool
        Make floating-point parameters require grad inside.
    """
    mods = list(module.modules())
    training = [m.training for m in mods]
    hook_keys = [
        {name: set(getattr(m, name).keys()) for name in _HOOK_DICTS if hasattr(m, name)}
        for m in mods
    ]
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    grads_before = [p.grad for p in params]
    # Buffers (running statistics, counters): copied, written back where their version
    # counter moved (an in-place write inside a forward). Parameters are never written by
    # the analyses; their version counters catch a forward that writes one in place.
    saved = [(t, t._version, t.detach().clone()) for t in module.buffers()]
    versions = [(n, p, p._version) for n, p in module.named_parameters()]
    try:
        if eval_mode:
            module.eval()
        if grads:
            for p in params:
                if p.is_floating_point() or p.is_complex():
                    p.requires_grad_(True)
        yield
    finally:
        for m, keys in zip(mods, hook_keys):
            for name, before in keys.items():
                d = getattr(m, name)
                for k in [k for k in d if k not in before]:
                    del d[k]
        for m, mode in zip(mods, training):
            m.training = mode
        with torch.no_grad():
            for t, version, value in saved:
                if t._version != version:
                    t.copy_(value)
        for p, f, g in zip(params, flags, grads_before):
            p.requires_grad_(f)
            p.grad = g
    written = [n for n, p, v in versions if p._version != v]
    if written:
        raise RuntimeError(
            f"the module's forward wrote its parameter(s) {', '.join(written[:3])} in place "
            "during the analysis (in eval mode); vgcore cannot restore them"
        )


def hook_counts(module: nn.Module) -> dict[str, int]:
    """Number of hooks of each kind over the module's submodules (tests check it is 0)."""
    out: dict[str, int] = {}
    for m in module.modules():
        for name in _HOOK_DICTS:
            if hasattr(m, name):
                out[name] = out.get(name, 0) + len(getattr(m, name))
    return out


def any_training_sensitive(module: nn.Module) -> list[str]:
    """Names of submodules whose train() and eval() behaviours differ and that are in train
    mode (dropout with p > 0, batch normalisation with running statistics)."""
    out = []
    for name, m in module.named_modules():
        if not m.training:
            continue
        p = getattr(m, "p", None)
        if isinstance(m, nn.modules.dropout._DropoutNd) and p:
            out.append(name or type(m).__name__)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            out.append(name or type(m).__name__)
        elif isinstance(m, nn.MultiheadAttention) and m.dropout > 0:
            out.append(name or type(m).__name__)
    return out

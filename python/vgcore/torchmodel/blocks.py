"""A torch module seen as a chain of blocks ``h_l = f_l(h_{l-1})``, ``h_0 = x``.

A chain is cut at *boundaries*: the input of a named submodule (the tensor it is called with,
its first positional argument) or the output of the last named one. Block ``l`` maps one
boundary tensor to the next, whatever the parent's ``forward`` does in between (indexing a
tuple output, a reshape, a final norm), so a block is one tensor in, one tensor out by
construction. A chain holds when every boundary tensor depends on the previous one alone.

One recording pass checks that exactly: each boundary tensor is replaced by a fresh leaf
(forward hooks), and the autograd graph of each block's output is walked back to the leaves it
reaches. A block reaching an earlier leaf than its own input (a residual added in the parent's
``forward``, a skip across blocks, a tensor computed from ``x`` passed to a later block) merges
the blocks in between; the pass is repeated until the chain holds, at worst with the whole
module as one block. A chain is never wrong: where vgcore coarsens, a
:class:`BlockChainWarning` names the blocks and why.

The blocks handed to the analyses are modules called as ``block(h)``: the submodule itself
where the next boundary is its own output (extra arguments recorded in the pass, e.g. masks,
are passed again), otherwise a :class:`Segment` that re-runs the parent's ``forward`` on the
recorded input with the earlier blocks replaced by their recorded outputs, from ``h`` up to
the next boundary. Composing the blocks is checked numerically against the module's output.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vgcore.torchmodel.model import BlockChainWarning

__all__ = [
    "BlockChainWarning",
    "Chain",
    "Segment",
    "auto_boundaries",
    "longest_runs",
    "record",
    "replay_blocks",
]


@dataclass(frozen=True)
class Cut:
    """A requested boundary: the input (``"in"``) or output (``"out"``) of submodule ``name``."""

    name: str
    where: str  # "in" | "out"


@dataclass(frozen=True)
class Boundary:
    """A boundary as cut, starting the block called ``label``: the output of submodule
    ``module`` (``where="out"``: the submodule that returned the tensor, so every use in the
    parent sees the boundary) or, where the parent computed the tensor itself, the input of
    the submodule ``module`` that takes it (``where="in"``)."""

    label: str
    module: str
    where: str = "out"


class _Stop(Exception):
    """Ends a forward pass at a boundary, carrying the boundary tensor."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value


class _Call(nn.Module):
    """``module(h, *args, **kwargs)`` with the extra arguments recorded in the pass."""

    def __init__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.module = module
        self._args = args
        self._kwargs = kwargs

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.module(h, *self._args, **self._kwargs)  # type: ignore[no-any-return]


class Segment(nn.Module):
    """The part of ``root.forward`` from one boundary to the next, as a module ``h -> h'``.

    It re-runs the root's forward on the recorded input ``x`` with the submodules cut before
    the start returning their recorded outputs (so they are not recomputed), the start's
    submodule returning ``h`` (so every later use in the parent sees ``h``) and stops at the
    end boundary (or the root's output). Valid for inputs ``h`` shaped as the recorded
    boundary tensor: the chain check guarantees that nothing after the start depends on
    anything before it but ``h``.
    """

    def __init__(
        self,
        root: nn.Module,
        x: torch.Tensor,
        start: Boundary | None,
        end: Boundary | None,
        stubs: dict[str, Any],
        modules: dict[str, nn.Module],
    ) -> None:
        super().__init__()
        self.root = root
        self._x = x
        self._start = start
        self._end = end
        self._stubs = stubs
        self._by_name = modules
        #: RNG state to restore where the block starts (a recomputation replaying the
        #: recorded pass: the parent's code before the start may draw random numbers too).
        self.rng: RngState | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        handles: list[Any] = []
        patched: list[nn.Module] = []
        try:
            values = dict(self._stubs)
            start, end = self._start, self._end
            if start is not None and start.where == "out":
                values[start.module] = h
            for name, value in values.items():
                m = self._by_name[name]
                rng = self.rng if start is not None and name == start.module else None
                m.forward = _constant(value, rng)  # type: ignore[method-assign]
                patched.append(m)
            if start is not None and start.where == "in":
                handles.append(
                    self._by_name[start.module].register_forward_pre_hook(
                        _replace_first(h, self.rng), with_kwargs=True
                    )
                )
            if end is not None:
                em = self._by_name[end.module]
                if end.where == "out":
                    handles.append(em.register_forward_hook(_stop_out))
                else:
                    handles.append(em.register_forward_pre_hook(_stop_in, with_kwargs=True))
            if start is None and self.rng is not None:
                self.rng.restore()
            try:
                out = self.root(h if start is None else self._x)
            except _Stop as stop:
                return stop.value
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the module returned {type(out).__name__}, expected a tensor")
            return out
        finally:
            for hd in handles:
                hd.remove()
            for m in patched:
                m.__dict__.pop("forward", None)


def _constant(value: torch.Tensor, rng: RngState | None = None) -> Any:
    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        if rng is not None:
            rng.restore()
        return value

    return forward


def _stop_out(mod: nn.Module, args: Any, out: Any) -> Any:
    raise _Stop(out)


def _replace_first(h: torch.Tensor, rng: RngState | None = None) -> Any:
    def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if rng is not None:
            rng.restore()
        return (h, *args[1:]), kwargs

    return hook


def _stop_in(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    raise _Stop(args[0])


@dataclass
class Chain:
    """The chain of blocks of a module for one recorded input.

    Attributes
    ----------
    names : list of str
        Block names, in order (a submodule's name; ``"before"`` / ``"after"`` for what the
        parent's forward does before the first / after the last named block; ``"a..b"`` for
        merged blocks).
    blocks : list of torch.nn.Module
        ``blocks[l](h_l) = h_{l+1}``; composing them gives the module's output.
    inputs : list of torch.Tensor
        ``h_0 = x, h_1, ..., h_{L-1}``: each block's recorded input (detached).
    output : torch.Tensor
        The module's output ``h_L`` (detached).
    bounds : list of Boundary
        The boundaries between blocks.
    notes, coarsened : list of str
        Notes for results; the reasons blocks were merged (also warned).
    """

    names: list[str]
    blocks: list[nn.Module]
    inputs: list[torch.Tensor]
    output: torch.Tensor
    bounds: list[Boundary]
    notes: list[str] = field(default_factory=list)
    coarsened: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Any:
        return iter(zip(self.names, self.blocks))

    def __getitem__(self, i: int) -> tuple[str, nn.Module]:
        return self.names[i], self.blocks[i]

    @property
    def pairs(self) -> list[tuple[str, nn.Module]]:
        """``[(name, block), ...]``: the chain as the analyses take it."""
        return list(zip(self.names, self.blocks))


# -- discovery ---------------------------------------------------------------------------------
def longest_runs(root: nn.Module) -> list[list[str]]:
    """Maximal runs (length >= 2) of consecutive same-class children of every ModuleList /
    Sequential inside ``root``, longest first (ties: outermost first)."""
    runs: list[tuple[int, int, list[str]]] = []
    for order, (name, m) in enumerate(root.named_modules()):
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or m is root:
            continue
        kids = list(m.named_children())
        i = 0
        while i < len(kids):
            j = i
            while j + 1 < len(kids) and type(kids[j + 1][1]) is type(kids[i][1]):
                j += 1
            if j > i:
                prefix = f"{name}." if name else ""
                runs.append((j - i + 1, order, [prefix + k for k, _ in kids[i : j + 1]]))
            i = j + 1
    runs.sort(key=lambda r: (-r[0], r[1]))
    return [r[2] for r in runs]


def _call_order(root: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, int]:
    """Number of calls of each named submodule in one forward (and, by dict order, the order
    of their first calls)."""
    mods = dict(root.named_modules())
    counts: dict[str, int] = {}
    handles = []

    def make(name: str) -> Any:
        def hook(mod: nn.Module, args: Any) -> None:
            counts[name] = counts.get(name, 0) + 1

        return hook

    try:
        for n in names:
            handles.append(mods[n].register_forward_pre_hook(make(n)))
        with torch.no_grad():
            root(x)
    finally:
        for hd in handles:
            hd.remove()
    return counts


def auto_boundaries(root: nn.Module, x: torch.Tensor) -> tuple[list[Cut], list[str]]:
    """The cuts ``blocks="auto"`` chooses, and notes on the choice.

    An ``nn.Sequential``: its children. Otherwise the longest run of repeated blocks (children
    of one class in a ModuleList / Sequential, e.g. ``TransformerEncoder.layers``, a GPT's
    ``h``, a ResNet stage), called once each in order; what comes before and after are a first
    and a last block. Without such a run, the root's direct children called once, in the
    order the forward calls them.
    """
    if isinstance(root, nn.Sequential) and len(root) > 0:
        names = [n for n, _ in root.named_children()]
        return [*(Cut(n, "in") for n in names), Cut(names[-1], "out")], []
    runs = longest_runs(root)
    if runs:
        every = [n for r in runs for n in r]
        counts = _call_order(root, x, every)
        for run in runs:
            called = [n for n in counts if n in set(run) and counts[n] == 1]
            if len(called) >= 2 and called == [n for n in run if n in called]:
                return [*(Cut(n, "in") for n in called), Cut(called[-1], "out")], []
    kids = [n for n, _ in root.named_children()]
    if kids:
        counts = _call_order(root, x, kids)
        called = [n for n in counts if counts[n] == 1]
        if called:
            return [*(Cut(n, "in") for n in called), Cut(called[-1], "out")], []
    return [], ["no submodules to cut at: the whole module is one block"]


def explicit_boundaries(root: nn.Module, x: torch.Tensor, names: Sequence[str]) -> list[Cut]:
    """The cuts of ``blocks=[names]``: each named submodule starts a block; checked to exist,
    to be called exactly once and in the listed order."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise TypeError(
            f'blocks must be "auto" or a list of submodule names, got {type(names).__name__}'
        )
    if not names:
        raise ValueError('blocks must name at least one submodule (or be "auto")')
    mods = dict(root.named_modules())
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"blocks must hold submodule names (str), got {n!r}")
        if n not in mods or n == "":
            close = difflib.get_close_matches(n, [k for k in mods if k], n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"blocks: {n!r} is not a submodule of this {type(root).__name__}{hint} "
                "(names as in module.named_modules())"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"blocks lists a submodule twice: {list(names)}")
    counts = _call_order(root, x, names)
    for n in names:
        c = counts.get(n, 0)
        if c != 1:
            raise ValueError(
                f"blocks: {n!r} is called {c} times in the module's forward; a block must be "
                "a submodule called exactly once (group repeated or unused ones with a "
                "submodule that contains them)"
            )
    order = list(counts)
    if order != list(names):
        raise ValueError(
            f"blocks must be listed in the order the forward calls them: {order}, got {list(names)}"
        )
    return [*(Cut(n, "in") for n in names), Cut(names[-1], "out")]


# -- the recording pass ------------------------------------------------------------------------
def resolve(
    root: nn.Module, x: torch.Tensor, cuts: Sequence[Cut]
) -> tuple[list[Boundary], str, list[str]]:
    """Map requested cuts to boundaries at submodule outputs, in one forward without grad.

    The input of a submodule is cut at the output of the submodule that returned that tensor
    object (the outermost one), so every use of it in the parent (a residual, too) sees the
    boundary. Returns the boundaries, the label of the block that starts at ``x`` and the
    cuts that could not be made (why).
    """
    mods = dict(root.named_modules())
    returned: dict[int, tuple[str, Any]] = {}  # id -> (last module that returned it, tensor)
    producer: dict[str, str | None] = {}
    first_arg: dict[str, Any] = {}
    counts: dict[str, int] = {}
    handles = []

    def post(name: str) -> Any:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            counts[name] = counts.get(name, 0) + 1
            if isinstance(out, torch.Tensor):
                returned[id(out)] = (name, out)  # keeps it alive: ids stay unique

        return hook

    def pre(name: str) -> Any:
        def hook(mod: nn.Module, args: Any) -> None:
            if name not in first_arg:
                t = args[0] if args else None
                first_arg[name] = t
                hit = returned.get(id(t)) if t is not None else None
                producer[name] = hit[0] if hit is not None and hit[1] is t else None

        return hook

    try:
        for name, m in mods.items():
            if m is not root:
                handles.append(m.register_forward_hook(post(name)))
        for c in cuts:
            if c.where == "in":
                handles.append(mods[c.name].register_forward_pre_hook(pre(c.name)))
        with torch.no_grad():
            root(x)
    finally:
        for hd in handles:
            hd.remove()
    bounds: list[Boundary] = []
    problems: list[str] = []
    first_label = "before"
    for c in cuts:
        label = c.name if c.where == "in" else "after"
        n = counts.get(c.name, 0)
        if n != 1:
            problems.append(f"{c.name!r} is called {n} times (a boundary is called once)")
            continue
        if c.where == "out":
            module = c.name
        else:
            t = first_arg.get(c.name)
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                what = type(t).__name__ if not isinstance(t, torch.Tensor) else str(t.dtype)
                problems.append(f"the input of {c.name!r} is a {what}, not a float tensor")
                continue
            if t is x:
                if not bounds:
                    first_label = label
                continue
            prod = producer.get(c.name)
            if prod is None:  # computed by the parent: cut at the input of its consumer
                bounds.append(Boundary(label, c.name, "in"))
                continue
            module = prod
        if bounds and bounds[-1].module == module and bounds[-1].where == "out":
            bounds[-1] = Boundary(label, module)  # the same tensor: no block in between
        else:
            bounds.append(Boundary(label, module))
    return bounds, first_label, problems


@dataclass(frozen=True)
class RngState:
    """The default random generators' states at one point of a forward pass: the CPU's and,
    for a pass on a CUDA device, that device's. Restoring it before re-running a block makes
    the block draw the random numbers it drew in the pass (dropout in a forward that ignores
    ``eval()``, sampling noise), so the re-run reproduces the recorded forward."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None = None
    device: int | None = None

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        if device.type == "cuda":
            idx = device.index if device.index is not None else torch.cuda.current_device()
            return cls(torch.get_rng_state(), torch.cuda.get_rng_state(idx), idx)
        return cls(torch.get_rng_state())

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, 0 if self.device is None else self.device)


@dataclass
class Pass:
    """One forward pass cut at the boundaries (see :func:`run_pass`).

    ``leaves[i]`` is block i's input as a leaf (``leaves[0]``: ``x``), ``entries[i]`` the
    clone of it the forward goes on with, ``outs[i]`` block i's output computed from it
    (``outs[-1]`` the module's output); ``reach[i]`` the leaf indices block i's graph
    reaches, ``params[i]`` its parameters (name, parameter); ``calls[name]`` what a
    boundary's module was called with ``(args, kwargs)``; ``problems`` boundaries that
    cannot be cut (index: why); the RNG states where each block started: ``rng_start[i]``
    when the forward reached block i's input, ``rng_call[i]`` when it called the submodule
    that ends block i. A pass that keeps no graph (``keep_graph=False``) holds ``outs[i]``
    detached (but the last).
    """

    leaves: list[torch.Tensor]
    entries: list[torch.Tensor]
    outs: list[torch.Tensor]
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any], Any]]
    problems: dict[int, str]
    reach: list[set[int]] = field(default_factory=list)
    params: list[list[tuple[str, nn.Parameter]]] = field(default_factory=list)
    rng_start: list[RngState | None] = field(default_factory=list)
    rng_call: list[RngState | None] = field(default_factory=list)


def run_pass(
    root: nn.Module,
    x: torch.Tensor,
    bounds: Sequence[Boundary],
    *,
    walk: bool = True,
    extra_hooks: Sequence[tuple[nn.Module, Any]] = (),
    keep_graph: bool = True,
) -> Pass:
    """One forward pass of ``root`` with grad enabled where each boundary tensor (a
    submodule's output) is replaced by a leaf requiring grad; its clone goes on, so in-place
    operations on it stay legal and every later use sees the boundary.

    ``extra_hooks``: ``(module, fn)``, ``fn(module, args, output, block)`` called after each
    call of ``module`` with the index of the block the forward is in. Boundary ``c`` ends
    block ``c`` and starts block ``c + 1``.

    ``keep_graph=False`` keeps the graph of the last block only: each other block's graph is
    walked (``reach``, ``params``) when the forward leaves the block and then dropped, so the
    pass holds one block's activations at a time beyond the block inputs; the RNG states
    where the blocks start are recorded for re-running them (:func:`replay_blocks`).
    """
    mods = dict(root.named_modules())
    n = len(bounds)
    leaves: list[Any] = [None] * (n + 1)
    entries: list[Any] = [None] * (n + 1)
    outs: list[Any] = [None] * (n + 1)
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any], Any]] = {}
    problems: dict[int, str] = {}
    counts: dict[int, int] = {}
    current = [0]  # the block the forward is in
    handles = []
    named = dict(root.named_parameters())
    pnames = {id(t): k for k, t in named.items()}
    reach_at: dict[int, set[int]] = {}
    params_at: dict[int, list[tuple[str, nn.Parameter]]] = {}
    rng_start: list[RngState | None] = [None] * (n + 1)
    rng_call: list[RngState | None] = [None] * (n + 1)

    def cut(c: int, t: Any, what: str) -> Any:
        counts[c] = counts.get(c, 0) + 1
        if counts[c] > 1:
            problems[c] = f"{bounds[c].module!r} is called more than once"
            return None
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            kind = type(t).__name__ if not isinstance(t, torch.Tensor) else str(t.dtype)
            problems[c] = (
                f"{what} is a {kind}, not one float tensor (name the submodule that takes "
                "the part you want as the next block)"
            )
            return None
        if keep_graph or t is entries[c]:
            outs[c] = t
        else:  # walk block c's graph now, then let it go
            _walk_one(t, leaves, named, pnames, reach_at, params_at, c)
            outs[c] = t.detach()
        current[0] = c + 1
        leaf = t.detach().requires_grad_(True)
        leaves[c + 1] = leaf
        entries[c + 1] = leaf.clone()
        rng_start[c + 1] = RngState.capture(leaf.device)
        return entries[c + 1]

    def pre(c: int, b: Boundary) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if b.module not in calls:
                calls[b.module] = (args, dict(kwargs), None)
            if rng_call[c] is None and b.where == "out" and args:
                if isinstance(args[0], torch.Tensor):  # (a module may end two boundaries)
                    rng_call[c] = RngState.capture(args[0].device)
            if b.where != "in":
                return None
            if not args:
                problems[c] = f"{b.module!r} is called without a positional tensor argument"
                return None
            new = cut(c, args[0], f"the input of {b.module!r}")
            if new is None:
                return None
            calls[b.module] = ((new, *args[1:]), dict(kwargs), None)
            return (new, *args[1:]), kwargs

        return hook

    def post(c: int, b: Boundary) -> Any:
        def hook(mod: nn.Module, args: Any, out: Any) -> Any:
            a, k, _ = calls.get(b.module, ((), {}, None))
            calls[b.module] = (a, k, out if keep_graph else _detached(out))
            if b.where != "out":
                return None
            return cut(c, out, f"the output of {b.module!r}")

        return hook

    try:
        for c, b in enumerate(bounds):
            m = mods[b.module]
            handles.append(m.register_forward_pre_hook(pre(c, b), with_kwargs=True))
            handles.append(m.register_forward_hook(post(c, b)))
        for m, fn in extra_hooks:
            handles.append(m.register_forward_hook(_with_block(fn, current)))
        if x.is_floating_point():
            leaves[0] = x.detach().requires_grad_(True)
            entries[0] = leaves[0].clone()
        else:  # token ids and the like: no gradient at the input
            leaves[0] = entries[0] = x
        rng_start[0] = RngState.capture(x.device)
        with torch.enable_grad():
            y = root(entries[0])
    finally:
        for hd in handles:
            hd.remove()
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"the module's forward returned {type(y).__name__}; vgcore analyses a module that "
            "returns one tensor (wrap it in a module that returns the tensor to analyse)"
        )
    outs[-1] = y
    for c, b in enumerate(bounds):
        if c not in problems and leaves[c + 1] is None:
            problems[c] = f"{b.module!r} is not called by the forward"
    p = Pass(
        leaves=leaves,
        entries=entries,
        outs=outs,
        calls=calls,
        problems=problems,
        rng_start=rng_start,
        rng_call=rng_call,
    )
    if problems:
        return p
    if not keep_graph:  # the blocks left behind were walked on the way; the last one now
        _walk_one(y, leaves, named, pnames, reach_at, params_at, n)
        for c in range(n + 1):
            if c not in reach_at:  # an identity block: it reaches its own input
                _walk_one(outs[c], leaves, named, pnames, reach_at, params_at, c)
        p.reach = [reach_at[c] for c in range(n + 1)]
        p.params = [params_at[c] for c in range(n + 1)]
    elif walk:
        _walk(root, p)
    return p


def _with_block(fn: Any, current: list[int]) -> Any:
    def hook(mod: nn.Module, args: Any, out: Any) -> None:
        fn(mod, args, out, current[0])

    return hook


def _walk(root: nn.Module, p: Pass) -> None:
    """Which leaves (block inputs) and parameters each block's output graph reaches."""
    named = dict(root.named_parameters())
    pnames = {id(t): k for k, t in named.items()}
    reach: dict[int, set[int]] = {}
    params: dict[int, list[tuple[str, nn.Parameter]]] = {}
    for c, out in enumerate(p.outs):
        _walk_one(out, p.leaves, named, pnames, reach, params, c)
    p.reach = [reach[c] for c in range(len(p.outs))]
    p.params = [params[c] for c in range(len(p.outs))]


def _walk_one(
    out: torch.Tensor,
    leaves: list[Any],
    named: dict[str, nn.Parameter],
    pnames: dict[int, str],
    reach_at: dict[int, set[int]],
    params_at: dict[int, list[tuple[str, nn.Parameter]]],
    c: int,
) -> None:
    """The leaves (block inputs) and parameters the graph of block c's output reaches."""
    leaf_ids = {id(t): i for i, t in enumerate(leaves) if t is not None and t.requires_grad}
    reach: set[int] = set()
    params: list[str] = []
    if out.grad_fn is None and id(out) in leaf_ids:
        reach.add(leaf_ids[id(out)])
    stack = [out.grad_fn]
    seen: dict[int, Any] = {}
    while stack:
        f = stack.pop()
        if f is None or id(f) in seen:
            continue
        seen[id(f)] = f  # keeps the node alive: ids stay unique
        var = getattr(f, "variable", None)
        if var is not None:
            if id(var) in leaf_ids:
                reach.add(leaf_ids[id(var)])
            elif id(var) in pnames:
                params.append(pnames[id(var)])
            continue
        stack.extend(nf for nf, _ in f.next_functions)
    reach_at[c] = reach
    params_at[c] = [(k, named[k]) for k in params]


def _merge_plan(p: Pass) -> tuple[set[int], list[str]]:
    """Boundaries to drop so every block reaches no earlier block's input, and why."""
    if p.problems:
        return set(p.problems), [p.problems[c] for c in sorted(p.problems)]
    drop: set[int] = set()
    why: list[str] = []
    for i, reach in enumerate(p.reach):
        earlier = [j for j in reach if j < i]
        if earlier:
            j = min(earlier)
            drop.update(range(j, i))  # boundaries j..i-1 start blocks j+1..i
            why.append(f"block {i} also reads the input of block {j} (a skip across them)")
    return drop, why


def record(
    root: nn.Module,
    x: torch.Tensor,
    cuts: Sequence[Cut],
    *,
    verify: bool = True,
    stacklevel: int = 3,
) -> tuple[Chain, Pass, list[Boundary]]:
    """Cut ``root`` at ``cuts``, coarsen until the chain holds, build the blocks.

    Runs inside :func:`vgcore.torchmodel._hygiene.preserved` (eval mode, hooks cleaned).

    Returns
    -------
    chain : Chain
    pass_ : Pass
        The final recording pass (its graph is what gradient_flow differentiates).
    bounds : list of Boundary
        The final boundaries (reuse them with :func:`run_pass` for the same input shape).
    """
    bounds, first, problems = resolve(root, x, cuts)
    labels = [(first, first)] + [(b.label, b.label) for b in bounds]
    coarsened: list[str] = []
    if problems:
        coarsened.append(
            "some blocks cannot start where requested: " + "; ".join(problems) + ". They are "
            "merged into the block before them"
        )
    while True:
        p = run_pass(root, x, bounds)
        drop, why = _merge_plan(p)
        if not drop:
            break
        merged = [labels[c + 1][0] for c in sorted(drop)]
        coarsened.append(
            f"the blocks do not form a chain: {'; '.join(why)}. Merged {', '.join(map(repr, merged))} "
            "into the block before (group the pieces into one submodule, or pass blocks=[names] "
            "whose forward hands one tensor from block to block)"
        )
        keep_b = [c for c in range(len(bounds)) if c not in drop]
        new_labels: list[tuple[str, str]] = []
        for i in range(len(bounds) + 1):
            if i > 0 and (i - 1) in drop:
                new_labels[-1] = (new_labels[-1][0], labels[i][1])
            else:
                new_labels.append(labels[i])
        labels = new_labels
        bounds = [bounds[c] for c in keep_b]
    for msg in coarsened:
        warnings.warn(msg, BlockChainWarning, stacklevel=stacklevel)
    chain = _build(root, x, bounds, p, labels)
    chain.coarsened = coarsened
    if verify:
        replay = replay_blocks(root, x, bounds, p, last=True)
        bad = _verify(chain, [replay[b] for b in blocks_of_pass(p)])
        if bad is not None:
            msg = (
                f"composing the blocks {chain.names} does not reproduce the module's output "
                f"({bad}); the whole module is analysed as one block"
            )
            warnings.warn(msg, BlockChainWarning, stacklevel=stacklevel)
            bounds = []
            p = run_pass(root, x, bounds)
            chain = _build(root, x, bounds, p, [("module", "module")])
            chain.coarsened = [*coarsened, msg]
    return chain, p, bounds


class _Replay:
    """``block(h)`` with the RNG state the recorded pass had when it called the block."""

    def __init__(self, block: nn.Module, rng: RngState | None) -> None:
        self.block = block
        self.rng = rng

    def __call__(self, h: torch.Tensor) -> Any:
        if self.rng is not None:
            self.rng.restore()
        return self.block(h)


def replay_blocks(
    root: nn.Module, x: torch.Tensor, bounds: list[Boundary], p: Pass, *, last: bool = False
) -> list[Any | None]:
    """Per block of a pass: a callable ``h -> output`` that re-runs the block as the pass ran
    it (its recorded extra arguments, the RNG state where it started), or None for an
    identity block and, unless ``last``, for the last block (whose graph a pass run with
    ``keep_graph=False`` keeps). Built from the pass's records; afterwards the pass's
    ``entries`` and ``calls`` are no longer needed."""
    mods = dict(root.named_modules())
    n = len(p.outs)
    out: list[Any | None] = []
    for b in range(n):
        if (b == n - 1 and not last) or p.outs[b] is p.entries[b]:
            out.append(None)
            continue
        m = _block_module(root, x, bounds, p, b, mods)
        if isinstance(m, Segment):
            m.rng = p.rng_start[b]
            out.append(m)
        else:
            rng = p.rng_call[b] if b < len(bounds) else p.rng_start[b]
            out.append(_Replay(m, rng))
    return out


def blocks_of_pass(p: Pass) -> list[int]:
    """Indices of the blocks of a pass that are not the identity (a submodule that returns
    its input unchanged); at least one."""
    n = len(p.outs)
    idx = [c for c in range(n) if p.outs[c] is not p.entries[c]]
    return idx or [n - 1]


def _build(
    root: nn.Module,
    x: torch.Tensor,
    bounds: list[Boundary],
    p: Pass,
    labels: list[tuple[str, str]],
) -> Chain:
    mods = dict(root.named_modules())
    names: list[str] = []
    blocks: list[nn.Module] = []
    inputs: list[torch.Tensor] = []
    for b in blocks_of_pass(p):
        first, last = labels[b]
        names.append(first if first == last else f"{first}..{last}")
        inputs.append(p.leaves[b].detach())
        blocks.append(_block_module(root, x, bounds, p, b, mods))
    return Chain(
        names=_unique(names),
        blocks=blocks,
        inputs=inputs,
        output=p.outs[-1].detach(),
        bounds=list(bounds),
    )


def _unique(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        k, i = n, 1
        while k in out:
            i += 1
            k = f"{n}#{i}"
        out.append(k)
    return out


def _detached(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach()
    if isinstance(v, tuple):
        return tuple(_detached(a) for a in v)
    if isinstance(v, list):
        return [_detached(a) for a in v]
    if isinstance(v, dict):
        return {k: _detached(a) for k, a in v.items()}
    return v


def _block_module(
    root: nn.Module,
    x: torch.Tensor,
    bounds: list[Boundary],
    p: Pass,
    b: int,
    mods: dict[str, nn.Module],
) -> nn.Module:
    """Block b as a module: the submodule itself when it maps the block's input straight to
    the boundary (extra arguments recorded), else a Segment of the root's forward."""
    n = len(bounds)
    if n == 0:
        return root
    if b < n and bounds[b].where == "out":
        name = bounds[b].module
        args, kwargs, _ = p.calls.get(name, ((), {}, None))
        if args and args[0] is p.entries[b]:
            m = mods[name]
            rest = _detached(tuple(args[1:]))
            kw = _detached(kwargs)
            return m if not rest and not kw else _Call(m, rest, kw)
    # Submodules of the boundaries before the start return their recorded outputs.
    stubs = {}
    for j in range(b - 1 if b > 0 else 0):
        name = bounds[j].module
        out = p.calls.get(name, ((), {}, None))[2]
        if out is not None:
            stubs[name] = _detached(out)
    start = bounds[b - 1] if b > 0 else None
    end = bounds[b] if b < n else None
    return Segment(root, x.detach(), start, end, stubs, mods)


def _verify(chain: Chain, replay: Sequence[Any]) -> str | None:
    """None if composing the blocks reproduces the recorded output, else what differs.
    ``replay``: the blocks as :func:`replay_blocks` re-runs them (random numbers drawn as in
    the recording pass; the generators are restored afterwards)."""
    rng = RngState.capture(chain.inputs[0].device)
    try:
        return _compose_differs(chain, replay)
    finally:
        rng.restore()


def _compose_differs(chain: Chain, replay: Sequence[Any]) -> str | None:
    h = chain.inputs[0]
    with torch.enable_grad():  # the same kernels as the recording pass
        for i, blk in enumerate(replay):
            try:
                h = blk(h)
            except Exception as exc:
                return f"block {chain.names[i]!r} failed when called alone: {exc}"
            if not isinstance(h, torch.Tensor):
                return f"block {chain.names[i]!r} returned {type(h).__name__}"
            if i + 1 < len(chain.blocks):
                ref = chain.inputs[i + 1]
                if h.shape != ref.shape or not _close(h.detach(), ref):
                    return f"block {chain.names[i]!r} gives a different output when called alone"
    y = chain.output
    h = h.detach()
    if h.shape != y.shape or not _close(h, y):
        return "the last block's output differs from the module's"
    return None


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype:
        return False
    eps = torch.finfo(a.dtype).eps
    scale = b.abs().max() if b.numel() else torch.zeros(())
    diff = (a - b).abs().max() if b.numel() else torch.zeros(())
    both_nan = torch.isnan(a) & torch.isnan(b)
    if bool((torch.isnan(a) ^ torch.isnan(b)).any()):
        return False
    if bool(both_nan.all()):
        return True
    return bool(diff <= 1e3 * eps * (scale + 1.0))

"""Per-block gradient flow of a :class:`~vgcore.torchmodel.TorchModel`.

One forward pass with grad enabled in which every block input is a leaf (the recording pass of
:mod:`vgcore.torchmodel.blocks`), then ``torch.autograd.grad`` block by block from the top:
each call returns the block's input cotangent and its parameter gradients at once. With
``memory="blocks"`` (the default) the forward pass keeps only each block's input (its graph is
walked for the chain check and dropped as the forward leaves the block) and the backward pass
re-runs one block at a time, with the random generators' states the forward had there, checked
to reproduce the recorded output bit for bit: the block inputs plus one block's activations, for
about one more forward pass. ``memory="graph"`` keeps the graph of the whole forward pass and
recomputes nothing. Between blocks the cotangent is rescaled by an exact power of two
(``torch.frexp``) and the exponent accumulated, so norms far below (or above) the dtype's range
stay finite and exact. Reductions stay on the device; the host reads the results once at the
end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from vgcore.activations import Activation, from_torch_module
from vgcore.analysis.gradient_flow import GradientFlow, _apply_clip
from vgcore.torchmodel.blocks import RngState, blocks_of_pass, replay_blocks, run_pass
from vgcore.torchmodel.model import TorchModel

__all__ = ["MEMORY_MODES", "gradient_flow"]

_LN2 = math.log(2.0)

#: ``memory=`` of :func:`gradient_flow`: re-run one block at a time, or keep one graph.
MEMORY_MODES = ("blocks", "graph")


class _NotReproduced(Exception):
    """A re-run block gave another output than the recorded pass."""


def _max_derivative(act: Activation) -> float:
    from vgcore._loader import _core

    name, a, b = act.core_args()
    return float(_core.activation_info(name, a, b)["max_derivative"])


def _derivative(act: Activation, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """``phi'(z)`` of an elementwise activation from its input ``z`` and output ``y`` (only
    ``y`` where the module may work in place); None where it cannot be read."""
    p = act.params
    n = act.name
    if n == "sigmoid":
        return y * (1 - y)
    if n == "tanh":
        return 1 - y * y
    if n == "relu":
        return (y > 0).to(y.dtype)
    if n == "leaky_relu":
        return torch.where(y > 0, 1.0, p.get("negative_slope", 0.01)).to(y.dtype)
    if n == "elu":
        return torch.where(y > 0, torch.ones_like(y), y + p.get("alpha", 1.0))
    if n == "selu":
        scale, alpha = 1.0507009873554805, 1.6732632423543772
        return torch.where(y > 0, torch.full_like(y, scale), y + scale * alpha)
    if z is y:  # an in-place module overwrote its input
        return None
    if n == "softplus":
        beta, thr = p.get("beta", 1.0), p.get("threshold", 20.0)
        return torch.where(z * beta > thr, torch.ones_like(z), torch.sigmoid(beta * z))
    if n == "silu":
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    if n == "gelu":
        cdf = 0.5 * (1 + torch.erf(z * (1 / math.sqrt(2))))
        return cdf + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    if n == "gelu_tanh":
        c = math.sqrt(2 / math.pi)
        t = torch.tanh(c * (z + 0.044715 * z**3))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * c * (1 + 3 * 0.044715 * z * z)
    return None


class _Units:
    """Per-block counts of low-derivative units, from forward hooks on recognised activation
    modules (tensor sums: no host synchronisation in the pass)."""

    def __init__(self, module: nn.Module, threshold: float, dead: bool) -> None:
        self.acts: dict[nn.Module, tuple[Activation, float]] = {}
        for m in module.modules():
            act = from_torch_module(m)
            if act is not None and not act.is_linear:
                self.acts[m] = (act, _max_derivative(act))
        self.threshold = threshold
        self.dead = dead
        self.low: dict[int, list[torch.Tensor]] = {}
        self.dead_counts: dict[int, list[torch.Tensor]] = {}
        self.total: dict[int, int] = {}
        self.dead_total: dict[int, int] = {}
        self.kind: dict[int, str] = {}

    def hooks(self) -> list[tuple[nn.Module, Any]]:
        return [(m, self._hook) for m in self.acts]

    def _hook(self, mod: nn.Module, args: Any, out: Any, block: int) -> None:
        if not args or not isinstance(out, torch.Tensor) or not isinstance(args[0], torch.Tensor):
            return
        act, top = self.acts[mod]
        with torch.no_grad():
            y = out.detach()
            if act.name == "relu" or (
                act.name == "leaky_relu"
                and abs(act.params.get("negative_slope", 0.01)) < self.threshold * top
            ):
                off = y <= 0  # one comparison: the derivative is 0 (or below the threshold)
            else:
                d = _derivative(act, args[0].detach(), y)
                if d is None:
                    return
                off = d.abs() < self.threshold * top
            self.low.setdefault(block, []).append(off.sum())
            self.total[block] = self.total.get(block, 0) + off.numel()
            self.kind.setdefault(block, act.low_derivative or "saturated")
            if self.dead and act.low_derivative == "inactive" and off.dim() > 0:
                self.dead_counts.setdefault(block, []).append(off.all(dim=0).sum())
                self.dead_total[block] = self.dead_total.get(block, 0) + off[0].numel()

    def fractions(self, blocks: list[int], merged: dict[int, list[int]]) -> tuple[Any, ...]:
        """Per reported block: low-derivative fraction, its class, dead fraction."""
        sat: list[torch.Tensor] = []
        kinds: list[str | None] = []
        dead: list[torch.Tensor] = []
        for b in blocks:
            parts = merged[b]
            tot = sum(self.total.get(i, 0) for i in parts)
            if tot:
                s = torch.stack([c for i in parts for c in self.low.get(i, [])]).sum()
                sat.append(s.to(torch.float64) / tot)
                kinds.append(next(self.kind[i] for i in parts if i in self.kind))
            else:
                sat.append(torch.zeros((), dtype=torch.float64))
                kinds.append(None)
            dt = sum(self.dead_total.get(i, 0) for i in parts)
            if dt:
                s = torch.stack([c for i in parts for c in self.dead_counts.get(i, [])]).sum()
                dead.append(s.to(torch.float64) / dt)
            else:
                dead.append(torch.zeros((), dtype=torch.float64))
        return sat, kinds, dead


def _kind(name: str) -> str:
    """The parameter kind of a parameter name: its last component without a layer suffix
    (``layers.3.linear1.weight`` -> ``weight``, ``lstm.weight_ih_l1`` -> ``weight_ih``)."""
    last = name.rsplit(".", 1)[-1]
    for suffix in ("_reverse",):
        last = last.removesuffix(suffix)
    head, sep, tail = last.rpartition("_l")
    if sep and tail.isdigit():
        last = head
    return last


def gradient_flow(
    model: TorchModel,
    x: Any,
    *,
    cotangent: Any = None,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    param_grads: bool = False,
    keep_grads: bool = False,
    saturation_threshold: float = 1e-3,
    dead_units: bool = False,
    rescale: bool = True,
    clip_norm: float | None = None,
    memory: str = "blocks",
) -> GradientFlow:
    """Per-block gradient norms of a torch module, exact below and above float range.

    Parameters
    ----------
    model : TorchModel
    x : tensor or array_like
        The module's input (moved to its device and dtype; integer inputs such as token ids
        keep their dtype and have no input gradient: ``log_grad_norms[0]`` is NaN).
    cotangent : tensor or array_like, optional
        ``dL/dy`` for the module output ``y``, replacing the default loss
        ``L = 0.5 * ||y||^2`` (summed over the batch).
    loss_fn : callable(y) -> scalar tensor, optional
        A loss on the output instead (e.g. ``lambda y: F.cross_entropy(y, t)``); its
        gradient is the cotangent. Give ``cotangent`` or ``loss_fn``, not both.
    param_grads : bool
        Also the per-block parameter-gradient norms, by parameter kind (``weight``,
        ``bias``, ``in_proj_weight``, ... the last component of the parameter names), in
        ``log_param_grad_norms`` (arrays of shape (L,), NaN where a block has no such kind).
        A parameter used by several blocks counts in each, with that block's share.
    keep_grads : bool
        Return ``dL/dh_l`` (``grads``: a list of L+1 arrays in the module's dtype; values
        beyond its range become 0 or inf, the logs stay exact).
    saturation_threshold : float
        A unit of a recognised activation module (``nn.Tanh``, ``nn.ReLU``, ``nn.GELU``, ...)
        is saturated / inactive when ``|phi'(z)| < saturation_threshold * max|phi'|``.
    dead_units : bool
        Also the fraction of ReLU-family units inactive for every sample (the first axis).
    rescale : bool
        Power-of-two rescaling between blocks (default). False propagates the plain
        cotangent as autograd does (float32 gradients below ~1e-38 become exact zeros).
    clip_norm : float, optional
        Global-norm clipping as ``torch.nn.utils.clip_grad_norm_`` (implies ``param_grads``).
    memory : {"blocks", "graph"}
        ``"blocks"`` (default): the forward pass keeps each block's input and drops the
        block's graph when it leaves the block; the backward pass re-runs one block at a
        time from the last (with the random generators' states of the recorded pass, so
        the re-run reproduces it bit for bit, checked) and frees its graph before the next.
        Memory: the block inputs plus one block's activations; time: about one more forward
        pass. ``"graph"``: the graph of the whole forward pass is kept (the memory of a plain
        ``loss.backward()``), nothing is recomputed. Both give the same numbers.

    Returns
    -------
    GradientFlow
        Index ``l`` of ``log_grad_norms`` (shape (L+1,)) is ``h_l``: ``h_0 = x``, ``h_l`` the
        output of block ``l``; ``block_names`` names the blocks, ``to_pandas()`` is indexed
        by ``["input", *block_names]``. ``act_mean``, ``act_std``, ``saturation`` (fraction of
        low-derivative units of recognised activation modules in the block; 0 where none),
        ``low_derivative`` and ``dead`` have one entry per block. ``output`` is ``y``.

    Notes
    -----
    Runs in evaluation semantics on the module's device and dtype (float16 / bfloat16
    modules in a float32 copy); the module is left as it was. The first call for an input
    shape discovers and checks the blocks (a few extra forward passes); later calls cost one
    forward and one backward pass (``memory="graph"``) or about two forwards and one
    backward (``memory="blocks"``). Where a re-run block does not reproduce its recorded
    output bit for bit (a forward that keeps state between calls, nondeterministic
    kernels), the call is repeated with ``memory="graph"`` and a note says so.
    """
    if not isinstance(model, TorchModel):
        raise TypeError(f"model must be a TorchModel, got {type(model).__name__}")
    if cotangent is not None and loss_fn is not None:
        raise ValueError("give cotangent or loss_fn, not both")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable(y) -> scalar tensor, got {loss_fn!r}")
    if not (isinstance(saturation_threshold, (int, float)) and 0 <= saturation_threshold <= 1):
        raise ValueError(f"saturation_threshold must be in [0, 1], got {saturation_threshold!r}")
    if clip_norm is not None:
        if not (isinstance(clip_norm, (int, float)) and clip_norm > 0 and math.isfinite(clip_norm)):
            raise ValueError(f"clip_norm must be a positive finite number, got {clip_norm!r}")
        param_grads = True
    for flag, name in ((rescale, "rescale"), (dead_units, "dead_units")):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")

    with model._analysis(x, param_grads=param_grads) as (module, xt):
        keep = memory == "graph"
        while True:
            bounds, names = model.bounds_for(module, xt)
            units = _Units(module, float(saturation_threshold), bool(dead_units))
            p = run_pass(module, xt, bounds, extra_hooks=units.hooks(), keep_graph=keep)
            if p.problems or any(j < i for i, r in enumerate(p.reach) for j in r):
                # This input is cut differently than the one recorded first: record it afresh.
                chain = model._record(module, xt)
                bounds, names = chain.bounds, list(chain.names)
                units = _Units(module, float(saturation_threshold), bool(dead_units))
                p = run_pass(module, xt, bounds, extra_hooks=units.hooks(), keep_graph=keep)
            shown = blocks_of_pass(p)
            replay = None if keep else replay_blocks(module, xt, bounds, p)
            # What the backward pass needs of the pass: its block inputs, outputs, graph.
            identity = [p.outs[c] is p.entries[c] for c in range(len(p.outs))]
            p.entries, p.calls = [], {}
            y = p.outs[-1]
            g = _cotangent(y, cotangent, loss_fn, model)
            try:
                return _backward(
                    model, p, y, g, units, names, shown, identity, replay,
                    param_grads, keep_grads, rescale, clip_norm,
                )  # fmt: skip
            except _NotReproduced as exc:
                keep = True
                del p, replay, y, g
                model.notes = (*model.notes, str(exc))


def _cotangent(y: torch.Tensor, cotangent: Any, loss_fn: Any, model: TorchModel) -> torch.Tensor:
    if loss_fn is not None:
        yl = y.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(yl)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(
                f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
                + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
            )
        (g,) = torch.autograd.grad(loss.reshape(()), yl)
        return g.detach()
    if cotangent is not None:
        c = model.as_input(cotangent, name="cotangent")
        if tuple(c.shape) != tuple(y.shape):
            raise ValueError(
                f"cotangent must have the output's shape {tuple(y.shape)}, got {tuple(c.shape)}"
            )
        return c.to(dtype=y.dtype, device=y.device)
    return y.detach()  # L = 0.5 ||y||^2


def _scaled(g: torch.Tensor, rescale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``g * 2^-e`` with ``e`` the exponent of ``max|g|`` (exact), and ``e``."""
    if not rescale or g.numel() == 0:
        return g, torch.zeros((), dtype=torch.int64, device=g.device)
    m = g.abs().amax()
    e = torch.frexp(m).exponent.to(torch.int64)
    e = torch.where(torch.isfinite(m) & (m > 0), e, torch.zeros_like(e))
    return _ldexp(g, -e), e


def _ldexp(g: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``g * 2^k`` exactly, in two halves so that ``2^k`` itself stays in range."""
    k1 = torch.div(k, 2, rounding_mode="floor")
    return torch.ldexp(torch.ldexp(g, k1.to(g.dtype)), (k - k1).to(g.dtype))


def _var_mean(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Population variance and mean in float64, by two passes (mean, then the norm of the
    deviations): several times faster than ``torch.var_mean`` on the CPU, as accurate."""
    n = max(t.numel(), 1)
    m = t.sum() / n
    v = torch.linalg.vector_norm(t - m, dtype=torch.float64) ** 2 / n
    return v, m.to(torch.float64)


def _lognorm(g: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``log ||g|| + e log 2`` in float64 (natural log)."""
    n = torch.linalg.vector_norm(g).to(torch.float64)
    return torch.log(n) + e.to(torch.float64) * _LN2


def _backward(
    model: TorchModel,
    p: Any,
    y: torch.Tensor,
    cot: torch.Tensor,
    units: _Units,
    names: list[str],
    shown: list[int],
    identity: list[bool],
    replay: list[Any] | None,
    param_grads: bool,
    keep_grads: bool,
    rescale: bool,
    clip_norm: float | None,
) -> GradientFlow:
    nb = len(p.outs)  # blocks of the pass (including identity ones)
    g, E = _scaled(cot, rescale)
    log_at: dict[int, torch.Tensor] = {nb: _lognorm(g, E)}  # nb: the output
    kept: dict[int, torch.Tensor] = {}
    if keep_grads:
        kept[nb] = _ldexp(g.to(torch.float64), E)
    kinds: dict[str, int] = {}
    psq: dict[int, dict[str, torch.Tensor]] = {}
    # memory="blocks": whether every re-run block reproduced its recorded output (one host
    # read at the end); the global RNG state is restored after the re-runs.
    same = torch.ones((), dtype=torch.bool, device=y.device)
    rng = RngState.capture(y.device) if replay is not None else None
    try:
        for i in range(nb - 1, -1, -1):
            leaf = p.leaves[i]
            has_input = leaf.requires_grad
            params = [t for _, t in p.params[i] if t.requires_grad] if param_grads else []
            pnames = [n for n, t in p.params[i] if t.requires_grad] if param_grads else []
            inputs = ([leaf] if has_input else []) + params
            grads: tuple[torch.Tensor | None, ...] = (None,) * len(inputs)
            out = p.outs[i]
            if replay is not None and replay[i] is not None:
                with torch.enable_grad():
                    out = replay[i](leaf.clone() if has_input else leaf)
                ref = p.outs[i]
                if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
                    raise _NotReproduced(_not_reproduced(names, shown, i))
                if out.device.type == "cpu":  # one fused comparison, read at once
                    if not torch.equal(out.detach(), ref):
                        raise _NotReproduced(_not_reproduced(names, shown, i))
                else:  # no host synchronisation per block: read once at the end
                    same = same & torch.eq(out.detach(), ref).all()
            if identity[i]:
                grads = (g,) if has_input else ()
            elif inputs and out.requires_grad:
                grads = torch.autograd.grad(out, inputs, grad_outputs=g, allow_unused=True)
            del out  # frees this block's graph
            if param_grads:
                sq: dict[str, torch.Tensor] = {}
                for n, pg in zip(pnames, grads[1 if has_input else 0 :]):
                    if pg is None:
                        continue
                    k = _kind(n)
                    kinds.setdefault(k, len(kinds))
                    v = torch.linalg.vector_norm(pg).to(torch.float64) ** 2
                    sq[k] = sq[k] + v if k in sq else v
                psq[i] = {k: 0.5 * torch.log(v) + E.to(torch.float64) * _LN2 for k, v in sq.items()}
            if not has_input:
                log_at[i] = torch.full((), math.nan, dtype=torch.float64)
                break
            gi = grads[0] if grads and grads[0] is not None else torch.zeros_like(leaf)
            g, e = _scaled(gi, rescale)
            E = E + e
            log_at[i] = _lognorm(g, E)
            if keep_grads:
                kept[i] = _ldexp(g.to(torch.float64), E)
    finally:
        if rng is not None:
            rng.restore()
    if replay is not None and not bool(same):
        bad = [i for i in range(nb) if replay[i] is not None]
        raise _NotReproduced(_not_reproduced(names, shown, bad[0] if bad else 0))
    # Reported blocks: the non-identity ones; an identity block's output is the next input.
    merged: dict[int, list[int]] = {}
    prev = -1
    for b in shown:
        merged[b] = list(range(prev + 1, b + 1))
        prev = b
    merged[shown[-1]] = list(range(merged[shown[-1]][0], nb))
    states = [shown[0]] + [b + 1 for b in shown]  # leaf index of h_0, then each block's output
    states[-1] = nb
    logs = torch.stack(
        [log_at.get(s, torch.full((), math.nan, dtype=torch.float64)) for s in states]
    )
    outs = [p.outs[b].detach() for b in shown]
    vm = [_var_mean(o) for o in outs]
    means = torch.stack([m for _, m in vm])
    stds = torch.stack([v.sqrt() for v, _ in vm])
    sat, low_kind, dead = units.fractions(shown, merged)
    pg_out = None
    if param_grads:
        rows = []
        for b in shown:
            row = torch.full((len(kinds),), math.nan, dtype=torch.float64)
            vals: dict[str, list[torch.Tensor]] = {}
            for i in merged[b]:
                for k, v in psq.get(i, {}).items():
                    vals.setdefault(k, []).append(v)
            for k, vs in vals.items():
                row[kinds[k]] = torch.logsumexp(torch.stack([2 * v for v in vs]).cpu(), 0) / 2
            rows.append(row)
        pg_out = torch.stack(rows).numpy() if rows else np.zeros((0, 0))
    # One transfer to the host.
    logs_np = logs.cpu().numpy()
    means_np, stds_np = means.cpu().numpy(), stds.cpu().numpy()
    sat_np = torch.stack(sat).cpu().numpy()
    dead_np = torch.stack(dead).cpu().numpy() if units.dead else None
    _check(logs_np, means_np, names)
    grads_out = None
    if keep_grads:
        dt = y.dtype
        grads_out = [kept[s].to(dt).cpu().numpy() if s in kept else None for s in states]
    flow = GradientFlow(
        model=model,
        kind="torch",
        dtype=np.dtype(str(y.dtype).removeprefix("torch.")),
        batch_size=int(y.shape[0]) if y.dim() else 1,
        log_grad_norms=logs_np,
        act_mean=means_np,
        act_std=stds_np,
        saturation=sat_np,
        output=y.detach().cpu().numpy(),
        log_param_grad_norms=(
            {k: pg_out[:, j].copy() for k, j in kinds.items()} if pg_out is not None else None
        ),
        grads=grads_out,
        low_derivative=list(low_kind),
        dead=dead_np,
        block_names=list(names) if len(names) == len(shown) else None,
        notes=tuple(model.notes),
    )
    return _apply_clip(flow, clip_norm)


def _not_reproduced(names: list[str], shown: list[int], i: int) -> str:
    j = next((k for k, b in enumerate(shown) if b >= i), len(shown) - 1)
    where = repr(names[j]) if j < len(names) else f"block {i}"
    return (
        f"memory='blocks': re-running {where} alone did not reproduce the recorded forward bit "
        "for bit (state kept between calls, or nondeterministic kernels); computed with "
        "memory='graph' instead"
    )


def _check(logs: np.ndarray, means: np.ndarray, names: list[str]) -> None:
    bad = np.nonzero(~np.isfinite(means))[0]
    if bad.size:
        i = int(bad[0])
        where = f"block {i + 1}" + (f" ({names[i]!r})" if names and i < len(names) else "")
        raise FloatingPointError(f"the forward pass produced NaN/Inf at {where}")
    wrong = np.nonzero(np.isnan(logs[1:]) | (logs[1:] == np.inf))[0]
    if wrong.size:
        i = int(wrong[-1]) + 1
        raise FloatingPointError(
            f"the backward pass produced a non-finite gradient at h_{i} (log norm {logs[i]})"
        )

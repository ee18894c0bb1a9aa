"""``vgcore.watch``: per-block gradient norms, update ratios and alerts inside a training loop.

How it measures (and why it stays cheap and correct):

- Parameter gradients and weights are read in an optimizer *step pre-hook*, after the loop
  has done whatever it does to the gradients (accumulation over micro-batches, clipping,
  GradScaler's unscaling, DDP's averaging), so the numbers are those of the gradient the
  optimizer uses. The update ``delta theta`` is the difference of the weights across the step
  (pre- and post-hook), so it is the step the optimizer really took (momentum, Adam's
  rescaling, weight decay included).
- The gradient at a block's output comes from a tensor hook registered on the output in a
  forward hook (not a full backward hook, which breaks on in-place operations). It is summed
  over the forward passes of the step (micro-batches). Activation statistics come from
  forward hooks on the recognised activation modules (:func:`vgcore.activations.from_torch_module`).
- Norms are reduced on the device (``torch._foreach_norm``); one logged step's numbers are
  concatenated and moved to the host once.
- Forward passes without gradient (``torch.no_grad``, ``inference_mode``: evaluation) are
  not counted.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vgcore.watch.alerts import Alert, AlertConfig, AlertEngine
from vgcore.watch.history import History, plot_history

__all__ = ["Watch", "WatchWarning", "watch"]

logger = logging.getLogger("vgcore.watch")

_RECURRENT = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")


class WatchWarning(UserWarning):
    """Something the monitor cannot measure in this setting (it says what is missing)."""


def _tensors(obj: Any, out: list[Any]) -> list[Any]:
    """Floating tensors requiring grad inside nested tuples / lists / dicts."""
    import torch

    if isinstance(obj, torch.Tensor):
        if obj.requires_grad and obj.is_floating_point():
            out.append(obj)
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, Mapping):
        for o in obj.values():
            _tensors(o, out)
    return out


class Watch:
    """Monitor of a training run; see :func:`watch` for the parameters.

    Attributes
    ----------
    blocks : list of str
        Block names in the order the forward calls them (known after the first logged
        forward pass; before that, in discovery order).
    alerts : list of Alert
        Alerts raised so far.
    analyses : list of (int, object)
        ``(step, result)`` of the deeper analyses (``analyze_every``).
    step : int
        Optimizer steps seen (backward passes without an optimizer).
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any = None,
        *,
        every: int = 1,
        blocks: Any = "auto",
        analyze_every: int | None = None,
        analyze_input: Any = None,
        analyze: Any = ("gradient_flow",),
        scaler: Any = None,
        per_parameter: bool = True,
        activations: bool = True,
        output_grads: bool = True,
        updates: bool = True,
        saturation_threshold: float = 1e-3,
        alerts: AlertConfig | Mapping[str, Any] | bool = True,
        tensorboard: Any = None,
        distributed: Any = "auto",
    ) -> None:
        try:
            import torch
            from torch import nn
        except ImportError as exc:  # pragma: no cover - torch is an optional dependency
            raise ImportError("vgcore.watch needs PyTorch: pip install 'vgcore[torch]'") from exc
        from vgcore.activations import from_torch_module
        from vgcore.watch import _blocks
        from vgcore.watch.distributed import detect

        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not (
            isinstance(optimizer, torch.optim.Optimizer)
            and hasattr(optimizer, "register_step_pre_hook")
        ):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer (or None), got {type(optimizer).__name__}"
            )
        if not (isinstance(every, int) and not isinstance(every, bool) and every >= 1):
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if analyze_every is not None and not (
            isinstance(analyze_every, int)
            and not isinstance(analyze_every, bool)
            and analyze_every >= 1
        ):
            raise ValueError(
                f"analyze_every must be None or an integer >= 1, got {analyze_every!r}"
            )
        if not (isinstance(saturation_threshold, (int, float)) and 0 <= saturation_threshold <= 1):
            raise ValueError(
                f"saturation_threshold must be in [0, 1], got {saturation_threshold!r}"
            )
        if scaler is not None and not hasattr(scaler, "get_scale"):
            raise TypeError(
                f"scaler must be a torch.amp.GradScaler (or None), got {type(scaler).__name__}"
            )
        if isinstance(alerts, AlertConfig):
            cfg: AlertConfig | None = alerts
        elif alerts is True:
            cfg = AlertConfig()
        elif alerts is False or alerts is None:
            cfg = None
        elif isinstance(alerts, Mapping):
            unknown = set(alerts) - set(AlertConfig.__dataclass_fields__)
            if unknown:
                raise ValueError(
                    f"alerts: unknown setting(s) {sorted(unknown)}; "
                    f"known: {sorted(AlertConfig.__dataclass_fields__)}"
                )
            cfg = AlertConfig(**alerts)
        else:
            raise TypeError(
                f"alerts must be True, False, a dict of thresholds or an AlertConfig, got {alerts!r}"
            )
        if cfg is not None:
            cfg.validate()

        self._torch = torch
        self.model = model
        self.optimizer = optimizer
        self.every = every
        self.analyze_every = analyze_every
        self._analyze_input = analyze_input
        self._analyze_fns = _analysis_functions(analyze)
        self.scaler = scaler
        self.per_parameter = bool(per_parameter)
        self._updates = bool(updates)
        self._bufs: dict[int, Any] = {}
        self.saturation_threshold = float(saturation_threshold)
        inner, self._wrappers = _blocks.unwrap(model)
        self._inner = inner
        found = _blocks.watch_blocks(inner, blocks)
        self._block_mods = [m for _, m in found]
        names = [n for n, _ in found]

        # parameters: (clean name, tensor, block index); shared tensors once
        owners = _blocks.param_owners(found)
        seen: set[int] = set()
        plist: list[tuple[str, Any, int]] = []
        other = False
        for pname, p in inner.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            b = owners.get(id(p), -1)
            if b < 0:
                other = True
                b = len(names)
            plist.append((_blocks.clean_name(pname), p, b))
        if other:
            names.append(_blocks.OTHER)
        self._names = names
        self._params = plist
        self._dist, sharded = detect(model, [p for _, p, _ in plist], distributed)
        self._sharded = sharded
        self._recurrent = [
            any(type(m).__name__ in _RECURRENT for m in mod.modules()) for mod in self._block_mods
        ] + ([False] if other else [])

        # activation modules (innermost owning block, else the block that ran last)
        self._acts: list[tuple[str, Any, Any, int]] = []
        if activations:
            for mname, mod in inner.named_modules():
                act = from_torch_module(mod)
                if act is None or act.is_linear:
                    continue
                owner, size = -1, math.inf
                for i, bm in enumerate(self._block_mods):
                    if any(m is mod for m in bm.modules()):
                        n = sum(1 for _ in bm.modules())
                        if n < size:
                            owner, size = i, n
                self._acts.append((_blocks.clean_name(mname), mod, act, owner))

        self._engine = (
            AlertEngine(
                cfg,
                self._recurrent,
                type(optimizer).__name__ if optimizer is not None else None,
                emit=self._dist.writer,
            )
            if cfg is not None
            else None
        )
        self._history = History()
        self.analyses: list[tuple[int, Any]] = []
        self._analysis_notes: list[str] = []
        self._writer = None
        if tensorboard is not None and self._dist.writer:
            self._writer = _tensorboard_writer(tensorboard)

        # per-step state
        self.step = 0
        self._fwd_step = 0
        self._recording = False
        self._closed = False
        self._paused = False
        self._dirty = False  # accumulators hold something for the current window
        self._out_norms: list[list[Any]] = [[] for _ in self._block_mods]
        self._act_stats: dict[tuple[int, int], Any] = {}
        self._act_calls: list[int] = [0] * len(self._acts)
        self._act_multi: set[int] = set()
        self._act_block: dict[tuple[int, int], int] = {}
        self._last_block = -1
        self._call_order: list[int] | None = None
        self._order_seen: list[int] = []
        self._block_fires = 0
        self._fwd_recorded = 0
        self._tensor_handles: list[Any] = []
        self._pending: dict[str, Any] | None = None
        self._unflushed: dict[str, Any] | None = None
        self._losses: dict[int, dict[str, list[Any]]] = {}
        self._batch: Any = None
        self._warned: set[str] = set()
        self._bw_queued = False

        # hooks; everything we add is in self._handles and goes in close()
        self._handles: list[Any] = []
        try:
            self._handles.append(
                model.register_forward_pre_hook(self._on_forward_start, with_kwargs=True)
            )
            if output_grads:
                for i, mod in enumerate(self._block_mods):
                    self._handles.append(mod.register_forward_hook(self._block_hook(i)))
            else:
                for i, mod in enumerate(self._block_mods):
                    self._handles.append(mod.register_forward_hook(self._order_hook(i)))
            for j, (_, mod, _, _) in enumerate(self._acts):
                self._handles.append(mod.register_forward_hook(self._act_hook(j)))
            if optimizer is not None:
                self._handles.append(optimizer.register_step_pre_hook(self._pre_step))
                self._handles.append(optimizer.register_step_post_hook(self._post_step))
            else:
                for _, p, _ in plist:
                    if p.requires_grad:
                        self._handles.append(p.register_post_accumulate_grad_hook(self._on_grad))
        except BaseException:
            self.close()
            raise

    # -- context manager ----------------------------------------------------------------------
    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Record what is pending, remove every hook, close the TensorBoard writer.
        Idempotent."""
        if self._closed:
            return
        try:
            if self._unflushed is not None:
                self._finalize()
        finally:
            self._closed = True
            for h in self._handles:
                h.remove()
            self._handles.clear()
            self._clear_tensor_handles()
            self._reset_window()
            self._bufs.clear()
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"Watch({type(self._inner).__name__}, blocks={len(self._names)}, every={self.every}, "
            f"step={self.step}, alerts={len(self.alerts)}, {state})"
        )

    # -- results ------------------------------------------------------------------------------
    @property
    def blocks(self) -> list[str]:
        """Block names, in the forward's call order once it is known."""
        order = self._call_order or list(range(len(self._block_mods)))
        rest = [i for i in range(len(self._names)) if i not in order]
        return [self._names[i] for i in (*order, *rest)]

    def _sync(self) -> None:
        # outside distributed runs the last logged step can be completed at any time; with
        # several ranks only at the collective points (a rank alone would wait forever)
        if self._unflushed is not None and not self._dist.active:
            self._finalize()

    @property
    def history(self) -> Any:
        """Tidy ``pandas.DataFrame``: columns ``step`` (optimizer step, 0-based), ``block``,
        ``parameter`` (a parameter tensor's name, an activation module's name for ``act_*``
        metrics, None for block-level rows), ``metric`` and ``value``. Loss rows have block
        None. Metrics: see :data:`vgcore.watch.history.METRICS`."""
        self._sync()
        return self._history.frame()

    @property
    def alerts(self) -> list[Alert]:
        """The alerts raised so far (also logged on the ``vgcore.watch`` logger)."""
        self._sync()
        return [] if self._engine is None else list(self._engine.alerts)

    def observe(self, loss: Any = None, **metrics: Any) -> None:
        """Record the loss (and other scalars) of the current step.

        Parameters
        ----------
        loss : Tensor (0-d) or float, optional
            Kept on the device until the step is logged (no host sync here). Attached to the
            step of the most recent training forward pass, so ``observe`` may come before or
            after ``optimizer.step()``. Several calls in one step (micro-batches) are averaged.
        **metrics : Tensor or float
            Further scalars, recorded under their names.
        """
        if self._closed:
            raise RuntimeError("observe() on a closed Watch")
        vals = dict(metrics)
        if loss is not None:
            vals["loss"] = loss
        step = self._fwd_step
        if step % self.every != 0:
            return
        torch = self._torch
        slot = self._losses.setdefault(step, {})
        for k, v in vals.items():
            if isinstance(v, torch.Tensor):
                if v.numel() != 1:
                    raise ValueError(
                        f"observe: {k} must be a scalar, got a tensor of shape {tuple(v.shape)}"
                    )
                slot.setdefault(k, []).append(v.detach().reshape(()))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                slot.setdefault(k, []).append(float(v))
            else:
                raise TypeError(
                    f"observe: {k} must be a number or a 0-d tensor, got {type(v).__name__}"
                )

    def plot(self, *, title: str | None = None) -> Any:
        """Heat maps of log10 gradient norm over block x step (parameters and block outputs),
        the update ratios per block and the loss. Returns a matplotlib Figure."""
        return plot_history(self.history, self.blocks, title=title)

    def summary(self) -> str:
        """A few lines: blocks, logged steps, the last step's extremes, the alerts."""
        df = self.history
        lines = [
            f"watched {type(self._inner).__name__}: {len(self._names)} blocks, "
            f"{self.step} steps, {len(self._history)} logged (every {self.every})"
        ]
        bl = df[df.parameter.isna() & df.block.notna()]
        if len(bl):
            last = bl[bl.step == bl.step.max()]
            for metric in ("grad_norm", "update_ratio", "output_grad_norm"):
                sel = last[last.metric == metric].set_index("block").value
                sel = sel[np.isfinite(sel) & (sel > 0)]
                if len(sel):
                    lo, hi = sel.idxmin(), sel.idxmax()
                    lines.append(
                        f"step {int(last.step.iloc[0])} {metric}: {sel.min():.3g} ({lo}) .. "
                        f"{sel.max():.3g} ({hi}), spread 10^{math.log10(sel.max() / sel.min()):.1f}"
                    )
        for a in self.alerts:
            lines.append(f"alert: {a.message}")
        if not self.alerts:
            lines.append("no alerts")
        lines.extend(self._analysis_notes)
        return "\n".join(lines)

    # -- hooks: forward -----------------------------------------------------------------------
    def _training_forward(self) -> bool:
        torch = self._torch
        return (
            not self._paused
            and not self._closed
            and torch.is_grad_enabled()
            and torch._C._current_graph_task_id() == -1  # not a recomputation inside backward
        )

    def _on_forward_start(self, mod: Any, args: Any, kwargs: Any) -> None:
        if not self._training_forward():
            return
        if self._unflushed is not None:
            self._finalize()
        # a new accumulation window: the loop zeroed the gradients (set_to_none) since the
        # last backward, so a step the GradScaler skipped leaves nothing behind
        if self._dirty and all(p.grad is None for _, p, _ in self._params if p.requires_grad):
            self._reset_window()
        self._fwd_step = self.step
        self._recording = self.step % self.every == 0
        self._act_calls = [0] * len(self._acts)
        if self._recording:
            self._fwd_recorded += 1
            self._dirty = True
        if self.analyze_every is not None and self.step % self.analyze_every == 0:
            self._batch = (args, kwargs)

    def _order_hook(self, i: int) -> Any:
        def hook(mod: Any, args: Any, out: Any) -> None:
            if self._recording and self._training_forward():
                self._note_block(i)

        return hook

    def _note_block(self, i: int) -> None:
        self._last_block = i
        self._block_fires += 1
        if self._call_order is None and i not in self._order_seen:
            self._order_seen.append(i)

    def _block_hook(self, i: int) -> Any:
        def hook(mod: Any, args: Any, out: Any) -> None:
            if not (self._recording and self._training_forward()):
                return
            self._note_block(i)
            for t in _tensors(out, []):
                self._tensor_handles.append(t.register_hook(self._grad_hook(i)))

        return hook

    def _grad_hook(self, i: int) -> Any:
        def hook(g: Any) -> None:
            if g is not None and not self._paused:
                self._out_norms[i].append(self._torch.linalg.vector_norm(g.detach()))

        return hook

    def _act_hook(self, j: int) -> Any:
        def hook(mod: Any, args: Any, out: Any) -> None:
            if not (self._recording and self._training_forward()):
                return
            torch = self._torch
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                return
            c = self._act_calls[j]
            self._act_calls[j] = c + 1
            if c:
                self._act_multi.add(j)
            key = (j, c)
            st = self._act_stats.get(key)
            if st is None:
                from vgcore.watch.stats import ActivationStats

                act = self._acts[j][2]
                st = ActivationStats(track_dead=act.low_derivative == "inactive")
                self._act_stats[key] = st
                owner = self._acts[j][3]
                self._act_block[key] = owner if owner >= 0 else self._last_block
            z = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if z is not None and (z is out or (z.numel() and z.data_ptr() == out.data_ptr())):
                z = None  # ran in place: the input is gone
            st.add(self._acts[j][2], z, out, self.saturation_threshold)

        return hook

    # -- hooks: optimizer ---------------------------------------------------------------------
    def _pre_step(self, opt: Any, args: Any, kwargs: Any) -> None:
        if self._paused or self._closed:
            return
        if self._unflushed is not None:
            self._finalize()
        if self.step % self.every != 0:
            return
        torch = self._torch
        from vgcore.watch.stats import local, squared_norms

        closure = (kwargs or {}).get("closure")
        # the hook sees step's own arguments, the optimizer first: (opt, closure)
        rest = [a for a in args if a is not opt]
        if closure is None and rest and callable(rest[0]):
            closure = rest[0]
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        scale = None
        if self.scaler is not None and self.scaler.is_enabled():
            s = getattr(self.scaler, "_scale", None)
            scale = s.detach().clone().double() if isinstance(s, torch.Tensor) else None
        with torch.no_grad():
            if closure is not None:
                # step(closure) computes the gradients inside the step (Lightning's automatic
                # optimization, LBFGS): keep the weights now, read the gradients after it
                keys = [
                    k
                    for k, (_, p, _) in enumerate(self._params)
                    if p.requires_grad and id(p) in in_opt
                ]
                snap = self._snapshot(keys)
                self._pending = {"deferred": True, "keys": keys, "snap": snap, "scale": scale}
                return
            entries = [
                (k, p)
                for k, (_, p, _) in enumerate(self._params)
                if p.requires_grad and p.grad is not None
            ]
            upd = [k for k, p in entries if id(p) in in_opt] if self._updates else []
            weights = [local(p) for _, p in entries]
            dev = self._device(weights)
            gsq = squared_norms([local(p.grad) for _, p in entries], dev)
            wsq = squared_norms(weights, dev)
            snap = self._snapshot(upd)
        self._pending = {
            "entries": [k for k, _ in entries],
            "upd": upd,
            "gsq": gsq,
            "wsq": wsq,
            "snap": snap,
            "scale": scale,
            "dev": dev,
        }

    def _post_step(self, opt: Any, args: Any, kwargs: Any) -> None:
        if self._paused or self._closed:
            return
        pend, self._pending = self._pending, None
        step = self.step
        if pend is not None:
            torch = self._torch
            from vgcore.watch.stats import local, squared_norms

            with torch.no_grad():
                if pend.get("deferred"):
                    pend = self._deferred(pend)
                after = [local(self._params[k][1]).detach() for k in pend["upd"]]
                snap = pend["snap"]
                if snap:
                    torch._foreach_sub_(snap, after)  # theta_before - theta_after
                pend["dsq"] = squared_norms(snap, pend["dev"])
                pend["snap"] = None
            self._stage(step, pend)
        self._end_step()
        if pend is not None and self.analyze_every is not None and step % self.analyze_every == 0:
            self._analyze(step)

    def _snapshot(self, keys: list[int]) -> list[Any]:
        """The weights of ``keys`` copied into buffers kept between steps (one copy of the
        trained parameters; no allocation per step). Empty with ``updates=False``."""
        if not self._updates:
            return []
        torch = self._torch
        from vgcore.watch.stats import local

        srcs = [local(self._params[k][1]).detach() for k in keys]
        bufs = []
        for k, t in zip(keys, srcs):
            b = self._bufs.get(k)
            if b is None or b.shape != t.shape or b.dtype != t.dtype or b.device != t.device:
                b = torch.empty_like(t)
                self._bufs[k] = b
            bufs.append(b)
        if bufs:
            torch._foreach_copy_(bufs, srcs)
        return bufs

    def _deferred(self, pend: dict[str, Any]) -> dict[str, Any]:
        """After a step(closure): gradients as they are now (the step does not change them),
        weights from the copy taken before the step."""
        from vgcore.watch.stats import local, squared_norms

        at = {k: i for i, k in enumerate(pend["keys"])}
        entries = [
            k for k, (_, p, _) in enumerate(self._params) if p.requires_grad and p.grad is not None
        ]
        upd = [k for k in entries if k in at] if self._updates else []
        before = [
            pend["snap"][at[k]] if k in at else local(self._params[k][1]).detach() for k in entries
        ]
        dev = self._device(before)
        return {
            "entries": entries,
            "upd": upd,
            "gsq": squared_norms([local(self._params[k][1].grad) for k in entries], dev),
            "wsq": squared_norms(before, dev),
            "snap": [pend["snap"][at[k]] for k in upd],
            "scale": pend["scale"],
            "dev": dev,
        }

    # -- without an optimizer: one step per backward pass -------------------------------------
    def _on_grad(self, p: Any) -> None:
        if self._paused or self._closed or self._bw_queued:
            return
        self._bw_queued = True
        self._torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)

    def _end_backward(self) -> None:
        self._bw_queued = False
        if self._paused or self._closed:
            return
        step = self.step
        if step % self.every == 0:
            torch = self._torch
            from vgcore.watch.stats import local, squared_norms

            with torch.no_grad():
                entries = [
                    (k, p)
                    for k, (_, p, _) in enumerate(self._params)
                    if p.requires_grad and p.grad is not None
                ]
                weights = [local(p) for _, p in entries]
                dev = self._device(weights)
                pend = {
                    "entries": [k for k, _ in entries],
                    "upd": [],
                    "gsq": squared_norms([local(p.grad) for _, p in entries], dev),
                    "wsq": squared_norms(weights, dev),
                    "dsq": None,
                    "scale": None,
                    "dev": dev,
                }
            self._stage(step, pend)
        self._end_step()

    # -- one logged step ----------------------------------------------------------------------
    def _device(self, tensors: Sequence[Any]) -> Any:
        torch = self._torch
        for t in tensors:
            return t.device
        for _, p, _ in self._params:
            return p.device
        return torch.device("cpu")

    def _end_step(self) -> None:
        self.step += 1
        if self._call_order is None and self._order_seen:
            self._call_order = list(self._order_seen)
        self._reset_window()

    def _reset_window(self) -> None:
        self._clear_tensor_handles()
        self._out_norms = [[] for _ in self._block_mods]
        self._act_stats = {}
        self._act_block = {}
        self._dirty = False

    def _clear_tensor_handles(self) -> None:
        for h in self._tensor_handles:
            h.remove()
        self._tensor_handles = []

    def _stage(self, step: int, pend: dict[str, Any]) -> None:
        """Device-side sums of one logged step; the host copy waits for :meth:`_finalize`
        (so that a loss observed after ``optimizer.step()`` still joins its step)."""
        torch = self._torch
        dev = pend["dev"]
        fired = [bool(n) for n in self._out_norms]
        with torch.no_grad():
            out_sq = torch.zeros(len(self._block_mods), dtype=torch.float64, device=dev)
            for i, norms in enumerate(self._out_norms):
                if len(norms) == 1 and norms[0].device == dev:
                    out_sq[i] = norms[0].to(torch.float64) ** 2
                elif norms:
                    v = torch.stack([n.to(device=dev, dtype=torch.float64) for n in norms])
                    out_sq[i] = (v * v).sum()
            if pend["scale"] is not None:
                out_sq = out_sq / (pend["scale"].to(dev) ** 2)
            acts = []
            for key in sorted(self._act_stats):
                vec = self._act_stats[key].vector()
                if vec is not None:
                    acts.append((key, vec.to(dev), self._act_stats[key].alive is not None))
        if self._fwd_recorded and not self._block_fires and self._block_mods:
            self._warn_once(
                "compile",
                "vgcore.watch: the forward hooks on the blocks did not run (a torch.compile'd "
                "model, or a forward that bypasses the submodules): gradient norms at block "
                "outputs and activation statistics are not recorded; parameter gradient norms, "
                "weight norms and update ratios (from the optimizer) are.",
            )
        self._unflushed = {
            "step": step,
            "pend": pend,
            "out_sq": out_sq,
            "fired": fired,
            "acts": acts,
            "act_block": dict(self._act_block),
        }
        self._block_fires = 0
        self._fwd_recorded = 0

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, WatchWarning, stacklevel=4)

    def _finalize(self) -> None:
        """Combine over ranks (one all_reduce), copy to the host once, add the rows, check
        the alerts, write TensorBoard scalars."""
        u, self._unflushed = self._unflushed, None
        if u is None:
            return
        torch = self._torch
        step, pend = u["step"], u["pend"]
        dev = pend["dev"]
        dist = self._dist
        entries, upd = pend["entries"], pend["upd"]
        gsq, wsq, dsq = pend["gsq"], pend["wsq"], pend["dsq"]
        if dsq is None:
            dsq = torch.zeros(0, dtype=torch.float64, device=dev)
        losses = self._losses.pop(step, {})
        for s in [s for s in self._losses if s < step]:
            del self._losses[s]
        loss_keys = sorted(losses)
        with torch.no_grad():
            loss_vals = [
                torch.stack(
                    [
                        v.to(device=dev, dtype=torch.float64)
                        if isinstance(v, torch.Tensor)
                        else torch.tensor(v, dtype=torch.float64, device=dev)
                        for v in losses[k]
                    ]
                ).mean()
                for k in loss_keys
            ]
            lossv = (
                torch.stack(loss_vals)
                if loss_vals
                else torch.zeros(0, dtype=torch.float64, device=dev)
            )
            param_sq = torch.cat([gsq, wsq, dsq])
            act_vecs = [v for _, v, _ in u["acts"]]
            if dist.active:
                # squared sums of sharded tensors add over ranks; replicated ones are equal on
                # every rank and pass through (mask 1 / 0: exact)
                mask_e = torch.tensor(
                    [float(self._sharded[k]) for k in entries], dtype=torch.float64, device=dev
                )
                mask_u = torch.tensor(
                    [float(self._sharded[k]) for k in upd], dtype=torch.float64, device=dev
                )
                mask = torch.cat([mask_e, mask_e, mask_u])
                summed = torch.cat([param_sq * mask, u["out_sq"], lossv, *act_vecs])
                dist.all_reduce_sum(summed)
                n_p = param_sq.numel()
                param_sq = summed[:n_p] + param_sq * (1 - mask)
                rest = summed[n_p:]
                w2 = float(dist.world) ** 2
                out_sq = rest[: len(self._block_mods)] / w2
                rest = rest[len(self._block_mods) :]
                lossv = rest[: lossv.numel()] / dist.world
                rest = rest[lossv.numel() :]
                act_vecs, at = [], 0
                for _, v, _ in u["acts"]:
                    act_vecs.append(rest[at : at + v.numel()])
                    at += v.numel()
            else:
                out_sq = u["out_sq"]
            flat = torch.cat([param_sq, out_sq, lossv, *act_vecs])
        host = flat.detach().cpu().numpy()  # the one copy to the host of this step
        P, Q = len(entries), len(upd)
        g = np.sqrt(host[:P])
        w = np.sqrt(host[P : 2 * P])
        d = np.sqrt(host[2 * P : 2 * P + Q])
        at = 2 * P + Q
        out = np.sqrt(host[at : at + len(self._block_mods)])
        at += len(self._block_mods)
        lv = host[at : at + len(loss_keys)]
        at += len(loss_keys)
        act_host = []
        for _, v, _ in u["acts"]:
            act_host.append(host[at : at + v.numel()])
            at += v.numel()
        self._record(
            step,
            u["act_block"],
            entries,
            upd,
            g,
            w,
            d,
            out,
            u["fired"],
            dict(zip(loss_keys, lv)),
            u["acts"],
            act_host,
        )

    def _record(
        self,
        step: int,
        act_block: dict[tuple[int, int], int],
        entries: list[int],
        upd: list[int],
        g: np.ndarray,
        w: np.ndarray,
        d: np.ndarray,
        out: np.ndarray,
        fired: list[bool],
        losses: dict[str, float],
        acts: list[Any],
        act_host: list[np.ndarray],
    ) -> None:
        from vgcore.watch.stats import activation_metrics

        nb = len(self._names)
        labels: list[tuple[str | None, str | None, str]] = []
        values: list[float] = []
        blk = np.array([self._params[k][2] for k in entries], dtype=np.int64)
        gsq_b = np.bincount(blk, weights=g * g, minlength=nb) if len(blk) else np.zeros(nb)
        wsq_b = np.bincount(blk, weights=w * w, minlength=nb) if len(blk) else np.zeros(nb)
        has_b = np.bincount(blk, minlength=nb) > 0 if len(blk) else np.zeros(nb, bool)
        pos = {k: i for i, k in enumerate(entries)}
        ublk = np.array([self._params[k][2] for k in upd], dtype=np.int64)
        uw = np.array([w[pos[k]] for k in upd])
        dsq_b = np.bincount(ublk, weights=d * d, minlength=nb) if len(upd) else np.zeros(nb)
        uwsq_b = np.bincount(ublk, weights=uw * uw, minlength=nb) if len(upd) else np.zeros(nb)
        has_u = np.bincount(ublk, minlength=nb) > 0 if len(upd) else np.zeros(nb, bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            uratio = np.where(uw > 0, d / np.where(uw > 0, uw, 1.0), np.nan)
            bratio = np.where(
                uwsq_b > 0, np.sqrt(dsq_b) / np.sqrt(np.where(uwsq_b > 0, uwsq_b, 1.0)), np.nan
            )
        grad_b = np.where(has_b, np.sqrt(gsq_b), np.nan)
        upd_b = np.where(has_u, bratio, np.nan)
        out_b = np.full(nb, np.nan)
        out_b[: len(out)] = np.where(fired, out, np.nan)
        if self.per_parameter:
            upos = {k: i for i, k in enumerate(upd)}
            for i, k in enumerate(entries):
                name, _, b = self._params[k]
                bn = self._names[b]
                labels += [(bn, name, "grad_norm"), (bn, name, "weight_norm")]
                values += [g[i], w[i]]
                if k in upos:
                    labels += [(bn, name, "update_norm"), (bn, name, "update_ratio")]
                    values += [d[upos[k]], uratio[upos[k]]]
        for b, bn in enumerate(self._names):
            if has_b[b]:
                labels += [(bn, None, "grad_norm"), (bn, None, "weight_norm")]
                values += [grad_b[b], math.sqrt(wsq_b[b])]
            if has_u[b]:
                labels += [(bn, None, "update_norm"), (bn, None, "update_ratio")]
                values += [math.sqrt(dsq_b[b]), upd_b[b]]
            if b < len(fired) and fired[b]:
                labels.append((bn, None, "output_grad_norm"))
                values.append(out_b[b])
        act_rows: list[tuple[str, str, dict[str, float]]] = []
        for ((j, c), _, has_dead), vec in zip(acts, act_host):
            mname, _, act, _ = self._acts[j]
            label = f"{mname}[{c}]" if j in self._act_multi else mname
            b = act_block.get((j, c), self._acts[j][3])
            bn = self._names[b] if 0 <= b < nb else "(unknown)"
            m = activation_metrics(vec, has_dead)
            low = m.pop("act_low_derivative", math.nan)
            if act.low_derivative == "saturated":
                m["act_saturated"] = low
            elif act.low_derivative == "inactive":
                m["act_inactive"] = low
            for metric, v in m.items():
                labels.append((bn, label, metric))
                values.append(v)
            act_rows.append((bn, label, m))
        for lk, lv in losses.items():
            labels.append((None, None, lk))
            values.append(float(lv))
        self._history.append(step, labels, np.asarray(values, dtype=np.float64))

        order = self._call_order or self._order_seen or list(range(len(self._block_mods)))
        idx = [*order, *(i for i in range(nb) if i not in order)]
        where = {b: r for r, b in enumerate(idx)}
        if self._engine is not None:
            self._engine.check(
                step,
                [self._names[i] for i in idx],
                [float(grad_b[i]) for i in idx],
                [float(upd_b[i]) for i in idx],
                [
                    (self._params[k][0], where[self._params[k][2]], float(g[i]))
                    for i, k in enumerate(entries)
                ],
                act_rows,
                float(losses["loss"]) if "loss" in losses else None,
            )
        if self._writer is not None:
            wr = self._writer
            for b, bn in enumerate(self._names):
                if has_b[b]:
                    wr.add_scalar(f"grad_norm/{bn}", float(grad_b[b]), step)
                if has_u[b]:
                    wr.add_scalar(f"update_ratio/{bn}", float(upd_b[b]), step)
                if b < len(fired) and fired[b]:
                    wr.add_scalar(f"output_grad_norm/{bn}", float(out_b[b]), step)
            for _bn, label, m in act_rows:
                for metric, v in m.items():
                    wr.add_scalar(f"{metric}/{label}", float(v), step)
            for lk, lv in losses.items():
                wr.add_scalar(lk, float(lv), step)

    # -- deeper analysis ----------------------------------------------------------------------
    def _analyze(self, step: int) -> None:
        """The deeper analyses (``analyze``) on a copy of the current weights and the step's
        input, with this monitor's hooks paused and the random state restored (the training
        run does not see them). Results go to ``analyses``; the gradient flow's per-block
        log10 norms also to the history (metric ``flow_log10_grad_norm``)."""
        batch, self._batch = self._batch, None
        if self._dist.mode == "fsdp":
            self._note_once("analysis: skipped under FSDP (the weights are sharded)")
            return
        if not self._dist.writer:
            return
        x = self._analyze_input
        if x is None and batch is not None:
            args, kwargs = batch
            if len(args) == 1 and not kwargs:
                x = args[0]
        if x is None:
            self._note_once(
                "analysis: skipped (the forward takes more than one input; pass analyze_input=)"
            )
            return
        torch = self._torch
        self._paused = True
        try:
            with torch.random.fork_rng(devices=[]):
                # the copy carries this monitor's hook closures; they stay silent (paused)
                cp = copy.deepcopy(self._inner, memo={id(self): self})
                cp.eval()
                xd = x.detach()
                for name, fn in self._analyze_fns:
                    try:
                        result = fn(cp, xd)
                    except (TypeError, NotImplementedError, ValueError, RuntimeError) as exc:
                        self._note_once(f"analysis {name}: cannot run on this module ({exc})")
                        continue
                    self.analyses.append((step, result))
                    self._flow_rows(step, result)
        finally:
            self._paused = False

    def _flow_rows(self, step: int, result: Any) -> None:
        names = getattr(result, "block_names", None)
        logs = getattr(result, "log10_grad_norms", None)
        if names is None or logs is None or len(logs) != len(names) + 1:
            return
        labels = [(str(n), None, "flow_log10_grad_norm") for n in names]
        self._history.append(step, labels, np.asarray(logs[1:], dtype=np.float64))

    def _note_once(self, msg: str) -> None:
        if msg not in self._analysis_notes:
            self._analysis_notes.append(msg)
            logger.info(msg)


_ANALYSES = ("gradient_flow", "jacobian_singular_values", "jacobian_spectrum", "lyapunov")


def _analysis_functions(analyze: Any) -> list[tuple[str, Any]]:
    """``analyze``: names of vgcore analyses or callables ``f(module_copy, x) -> result``."""
    if isinstance(analyze, str) or callable(analyze):
        analyze = (analyze,)
    if not isinstance(analyze, Sequence):
        raise TypeError(
            f"analyze must be a name, a callable or a sequence of them, got {type(analyze).__name__}"
        )
    out: list[tuple[str, Any]] = []
    for a in analyze:
        if callable(a):
            out.append((getattr(a, "__name__", "analysis"), a))
        elif a in _ANALYSES:

            def run(m: Any, x: Any, _name: str = a) -> Any:
                import vgcore

                return getattr(vgcore, _name)(m, x)

            out.append((a, run))
        else:
            raise ValueError(
                f"analyze: unknown analysis {a!r}; expected one of {_ANALYSES} or a callable"
            )
    return out


def _tensorboard_writer(logdir: Any) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            "watch(..., tensorboard=logdir) needs TensorBoard: pip install 'vgcore[tensorboard]' "
            "(or pip install tensorboard)"
        ) from exc
    return SummaryWriter(str(logdir))


def watch(
    model: Any,
    optimizer: Any = None,
    *,
    every: int = 1,
    blocks: Any = "auto",
    analyze_every: int | None = None,
    **options: Any,
) -> Watch:
    """Watch a model train: per-block gradient norms, update ratios, gradients at block
    outputs, activation statistics and alerts, from inside a plain PyTorch loop.

    ::

        with vgcore.watch(model, opt, every=10) as w:
            for x, y in loader:
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                w.observe(loss=loss)
        w.history      # tidy DataFrame: step, block, parameter, metric, value
        w.alerts       # vanishing / exploding / saturated / dead / plateau, with fixes
        w.plot()

    Parameters
    ----------
    model : torch.nn.Module
        The model as trained: plain, ``DistributedDataParallel``, FSDP (``fully_shard`` or the
        wrapper) or ``torch.compile``'d.
    optimizer : torch.optim.Optimizer, optional
        Its step hooks define the steps. Without one, each backward pass is a step and the
        gradients are read when it ends (as accumulated in ``.grad`` at that point; no update
        ratios, single process).
    every : int
        Log every ``every``-th step (0, every, 2 every, ...).
    blocks : "auto" or list of str
        The submodules to treat as blocks (see :func:`vgcore.watch._blocks.watch_blocks`).
    analyze_every : int, optional
        Every that many steps (on a logged step), run the ``analyze`` analyses (default
        :func:`vgcore.gradient_flow`: log-space gradient norms per block) on a copy of the
        current weights, in eval mode, with the step's input (results in ``Watch.analyses``;
        the flow's log10 norms also in the history as ``flow_log10_grad_norm``). The training
        run is unaffected: its module, gradients and random state are left as they were.
    **options
        ``scaler`` (a GradScaler: block-output gradients are reported unscaled; parameter
        gradients are already unscaled when the optimizer steps), ``per_parameter`` (rows per
        tensor, default True), ``activations`` / ``output_grads`` (default True),
        ``updates`` (default True: update norms and ratios, for which the monitor keeps one
        copy of the trained parameters), ``saturation_threshold`` (1e-3, as :func:`vgcore.gradient_flow`), ``alerts`` (True,
        False, a dict of :class:`AlertConfig` thresholds), ``tensorboard`` (a log folder),
        ``distributed`` ("auto", None, "ddp", "fsdp"), ``analyze_input`` (the input for the
        analyses when the forward takes several).

    Returns
    -------
    Watch
        A context manager; ``close()`` removes every hook.
    """
    return Watch(
        model, optimizer, every=every, blocks=blocks, analyze_every=analyze_every, **options
    )

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
- Norms are reduced on the device: dense float32 / float64 CPU parameters in one compiled pass
  per tensor (the gradient's and weight's sums of squares and the weight's copy before the
  step, the difference's sum of squares after it, in float64; the tensors' blocks shared
  among torch's intra-op threads), others by
  ``torch._foreach_norm`` over all tensors at once; one logged step's 0-d results are stacked
  into one vector and moved to the host once (the sums per block and per activation module
  are formed there; under several ranks on the device, before one all_reduce). Steps that are
  not logged cost a few Python calls in the hooks.
- Cost on a logged step, parameters: five passes over the parameters' bytes on the CPU (the
  gradient, the weight and its copy before the step; the weight and the copy after it),
  which on a small, memory-bound step (an MLP of 2M parameters) is still several percent of
  the step; ``update_every`` takes the copy and the difference off the steps in between. The
  weights are read afresh at each logged step rather than reused from the previous step's
  post-hook: ``Tensor._version`` does not see in-place changes made through ``.data``
  (``p.data.clamp_(...)`` weight clipping), so a kept copy or norm could be stale without any
  sign of it.
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
        update_every: int = 1,
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
        from vgcore.watch.stats import local

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
        if not (
            isinstance(update_every, int)
            and not isinstance(update_every, bool)
            and update_every >= 1
        ):
            raise ValueError(f"update_every must be an integer >= 1, got {update_every!r}")
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
        self._local = local
        self.model = model
        self.optimizer = optimizer
        self.every = every
        self.analyze_every = analyze_every
        self._analyze_input = analyze_input
        self._analyze_fns = _analysis_functions(analyze)
        self.scaler = scaler
        self.per_parameter = bool(per_parameter)
        self._updates = bool(updates)
        self.update_every = update_every
        self._bufs: dict[int, Any] = {}
        from vgcore.watch.stats import HostViews

        self._views = HostViews()  # NumPy views of the parameters and of their copies
        self.saturation_threshold = float(saturation_threshold)
        inner, self._wrappers = _blocks.unwrap(model)
        self._inner = inner
        found = _blocks.watch_blocks(inner, blocks)
        self._block_mods = [m for _, m in found]
        names = [n for n, _ in found]

        # parameters: (clean name, tensor, block index); shared tensors once. A flat parameter
        # (the FullyShardedDataParallel wrapper without use_orig_params) holds several
        # tensors: one slot each, its part of the rank's shard in self._slices
        owners = _blocks.param_owners(found)
        seen: set[int] = set()
        plist: list[tuple[str, Any, int]] = []
        self._slices: dict[int, tuple[int, int]] = {}
        other = False
        for pname, p in inner.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            parts = _blocks.flat_param_parts(p)
            if parts is None and pname.rsplit(".", 1)[-1] == "_flat_param":
                warnings.warn(
                    f"vgcore.watch: cannot split the flat parameter {pname!r} into its tensors "
                    "(this torch's FullyShardedDataParallel keeps no shard layout on it); it is "
                    "recorded as one tensor of the block that holds it. Wrap with "
                    "use_orig_params=True for per-tensor rows.",
                    WatchWarning,
                    stacklevel=3,
                )
            slots: list[tuple[str, int, tuple[int, int] | None]] = []
            if parts is None:
                slots.append((_blocks.clean_name(pname), owners.get(id(p), -1), None))
            else:
                prefix = pname[: len(pname) - len(pname.rsplit(".", 1)[-1])]
                for fqn, off, n in parts:
                    name = _blocks.clean_name(prefix + fqn)
                    slots.append((name, _blocks.owner_by_name(name, names), (off, n)))
            for name, b, sl in slots:
                if b < 0:
                    other = True
                    b = len(names)
                if sl is not None:
                    self._slices[len(plist)] = sl
                plist.append((name, p, b))
        if other:
            names.append(_blocks.OTHER)
        self._names = names
        self._params = plist
        self._slot_block = np.array([b for _, _, b in plist], dtype=np.int64)
        self._plans: dict[Any, Any] = {}
        self._dist, sharded = detect(model, [p for _, p, _ in plist], distributed)
        self._sharded = sharded
        # the parameters are whole local tensors (no flat parameter's slices, no shards): a
        # logged step can take the compiled passes without the per-tensor set-up (_pre_fast)
        self._fast_ok = (
            not self._slices
            and not (self._dist.active and self._dist.mode == "fsdp")
            and not any(local(p) is not p for _, p, _ in plist)
        )
        self._cpu = torch.device("cpu")
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
        self._act_calls: list[int] = [0] * len(self._acts)
        self._act_multi: set[int] = set()
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
        self._reset_window()

        # hooks; everything we add is in self._handles and goes in close()
        # The blocks' and activation modules' forward hooks are installed for logged steps only
        # (a module with hooks takes torch's slow call path, about as costly as the hook): the
        # root's pre-hook installs them when a logged step starts, the step's end removes them
        # when the next one is not logged. A compiled model keeps them (dynamo guards on them).
        self._handles: list[Any] = []
        self._mod_handles: list[Any] = []
        hook_of = self._block_hook if output_grads else self._order_hook
        self._mod_hooks: list[tuple[Any, Any]] = [
            (mod, hook_of(i)) for i, mod in enumerate(self._block_mods)
        ] + [(mod, self._act_hook(j)) for j, (_, mod, _, _) in enumerate(self._acts)]
        self._toggle_hooks = "compile" not in self._wrappers and every > 1
        try:
            self._handles.append(
                model.register_forward_pre_hook(self._on_forward_start, with_kwargs=True)
            )
            self._install_module_hooks()
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

    def _install_module_hooks(self) -> None:
        if not self._mod_handles:
            for mod, hook in self._mod_hooks:
                self._mod_handles.append(mod.register_forward_hook(hook))

    def _remove_module_hooks(self) -> None:
        for h in self._mod_handles:
            h.remove()
        self._mod_handles = []

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
            self._remove_module_hooks()
            self._clear_tensor_handles()
            self._reset_window()
            self._bufs.clear()
            self._views.clear()
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
        if self._recording:
            self._install_module_hooks()
            self._act_calls = [0] * len(self._acts)
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
        grad_hook = self._grad_hook(i)

        tensor = self._torch.Tensor

        def hook(mod: Any, args: Any, out: Any) -> None:
            if not (self._recording and self._training_forward()):
                return
            self._note_block(i)
            if type(out) is tensor:  # the common case, without the walk through containers
                if out.requires_grad and out.is_floating_point():
                    self._tensor_handles.append(out.register_hook(grad_hook))
                return
            for t in _tensors(out, []):
                self._tensor_handles.append(t.register_hook(grad_hook))

        return hook

    def _grad_hook(self, i: int) -> Any:
        torch = self._torch
        exact = (torch.float32, torch.float64)

        def hook(g: Any) -> None:
            if g is not None and not self._paused:
                g = g.detach()
                # half-precision norms accumulate and come back in float32 (not rounded to 8 bits)
                dt = None if g.dtype in exact else torch.float32
                self._og_norms.append(torch.linalg.vector_norm(g, dtype=dt))
                self._og_block.append(i)

        return hook

    def _act_hook(self, j: int) -> Any:
        from vgcore.watch.stats import activation_parts

        torch = self._torch
        act = self._acts[j][2]
        rectifier = act.low_derivative == "inactive"

        def hook(mod: Any, args: Any, out: Any) -> None:
            if not (self._recording and self._training_forward()):
                return
            if not isinstance(out, torch.Tensor) or not out.is_floating_point() or not out.numel():
                return
            c = self._act_calls[j]
            self._act_calls[j] = c + 1
            if c:
                self._act_multi.add(j)
            key = (j, c)
            if key not in self._act_block:
                owner = self._acts[j][3]
                self._act_block[key] = owner if owner >= 0 else self._last_block
                self._act_track[key] = rectifier
            z = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if z is not None and (z is out or (z.numel() and z.data_ptr() == out.data_ptr())):
                z = None  # ran in place: the input is gone
            track = self._act_track[key]
            parts, alive = activation_parts(act, z, out, self.saturation_threshold, track)
            self._act_parts += parts
            self._act_meta.append((key, out.numel()))
            if track:
                prev = self._act_alive.get(key)
                if alive is None or (prev is not None and prev.shape != alive.shape):
                    # the per-sample shape changed between calls: no dead fraction
                    self._act_track[key] = False
                    self._act_alive.pop(key, None)
                elif prev is None:
                    self._act_alive[key] = alive
                elif alive.dtype == torch.bool:
                    self._act_alive[key] = prev | alive
                else:
                    self._act_alive[key] = torch.maximum(prev, alive)

        return hook

    # -- parameters ---------------------------------------------------------------------------
    def _data(self, k: int) -> Any:
        """The rank-local values of parameter slot ``k`` (a flat parameter's slice for FSDP's
        flat parameters)."""
        t = self._local(self._params[k][1]).detach()
        sl = self._slices.get(k)
        return t if sl is None else t[sl[0] : sl[0] + sl[1]]

    def _grad(self, k: int) -> Any:
        g = self._params[k][1].grad
        if g is None:
            return None
        g = self._local(g)
        sl = self._slices.get(k)
        return g if sl is None else g[sl[0] : sl[0] + sl[1]]

    def _grads(self) -> tuple[list[int], list[Any]]:
        """Parameter slots with a gradient and their gradients. Under FSDP every trainable slot
        (a rank's shard can be empty, without a gradient: a zero here, its presence counted
        over ranks); elsewhere those whose gradient exists."""
        every = self._dist.active and self._dist.mode == "fsdp"
        entries, grads = [], []
        for k, (_, p, _) in enumerate(self._params):
            if not p.requires_grad:
                continue
            g = self._grad(k)
            if g is None and not every:
                continue
            entries.append(k)
            grads.append(g)
        return entries, grads

    def _updates_at(self, step: int) -> bool:
        return self._updates and step % (self.every * self.update_every) == 0

    # -- hooks: optimizer ---------------------------------------------------------------------
    def _pre_step(self, opt: Any, args: Any, kwargs: Any) -> None:
        if self._paused or self._closed:
            return
        if self._unflushed is not None:
            self._finalize()
        if self.step % self.every != 0:
            return
        torch = self._torch
        from vgcore.watch.stats import snapshot_norms

        closure = (kwargs or {}).get("closure")
        # the hook sees step's own arguments, the optimizer first: (opt, closure)
        rest = [a for a in args if a is not opt]
        if closure is None and rest and callable(rest[0]):
            closure = rest[0]
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        upd_now = self._updates_at(self.step)
        scale = None
        if self.scaler is not None and self.scaler.is_enabled():
            s = getattr(self.scaler, "_scale", None)
            scale = s.detach().clone().double() if isinstance(s, torch.Tensor) else None
        with torch.no_grad():
            if closure is not None:
                # step(closure) computes the gradients inside the step (Lightning's automatic
                # optimization, LBFGS): weights now, the gradients after it
                cand = [k for k, (_, p, _) in enumerate(self._params) if p.requires_grad]
                weights = [self._data(k) for k in cand]
                keys = [k for k in cand if id(self._params[k][1]) in in_opt] if upd_now else []
                bufs = self._buffers(keys)
                copies = [bufs.get(k) for k in cand]
                wn, _ = snapshot_norms(weights, [None] * len(cand), copies, cand, self._views)
                self._pending = {
                    "deferred": True,
                    "cand": cand,
                    "wn": wn,
                    "keys": keys,
                    "snap": [bufs[k] for k in keys],
                    "scale": scale,
                    "dev": self._device(weights),
                }
                return
            fast = self._pre_fast(in_opt, upd_now, scale) if self._fast_ok else None
            if fast is not None:
                self._pending = fast
                return
            entries, grads = self._grads()
            upd = [k for k in entries if id(self._params[k][1]) in in_opt] if upd_now else []
            weights = [self._data(k) for k in entries]
            bufs = self._buffers(upd)
            # one pass per tensor: the gradient's and the weight's norms, the weight's copy
            copies = [bufs.get(k) for k in entries]
            wn, gn = snapshot_norms(weights, grads, copies, entries, self._views)
            self._pending = {
                "entries": entries,
                "upd": upd,
                "gn": gn,
                "present": [g is not None for g in grads],
                "wn": wn,
                "snap": [bufs[k] for k in upd],
                "scale": scale,
                "dev": self._device(weights),
            }

    def _pre_fast(self, in_opt: set[int], upd_now: bool, scale: Any) -> dict[str, Any] | None:
        """The step's pending record when every parameter with a gradient takes the compiled
        pass and its copy buffer is made (stats.fast_snapshot); None: the general path."""
        from vgcore.watch.stats import fast_snapshot

        slots = [
            (k, p)
            for k, (_, p, _) in enumerate(self._params)
            if p.requires_grad and p.grad is not None
        ]
        upd = [k for k, p in slots if id(p) in in_opt] if upd_now else []
        copies = {k: b for k in upd if (b := self._bufs.get(k)) is not None}
        if len(copies) != len(upd):
            return None  # the general path makes the buffers
        got = fast_snapshot(slots, copies, self._views)
        if got is None:
            return None
        keys, wn, gn, snap_views = got
        return {
            "entries": keys,
            "upd": upd,
            "gn": gn,
            "present": [True] * len(keys),
            "wn": wn,
            "snap": [copies[k] for k in upd],
            "snap_views": snap_views,
            "scale": scale,
            "dev": self._cpu,
        }

    def _post_step(self, opt: Any, args: Any, kwargs: Any) -> None:
        if self._paused or self._closed:
            return
        pend, self._pending = self._pending, None
        step = self.step
        if pend is not None:
            torch = self._torch
            from vgcore.watch.stats import difference_norms, fast_differences

            with torch.no_grad():
                if pend.get("deferred"):
                    pend = self._deferred(pend)
                snap = pend["snap"]
                pend["dn"] = []
                if snap:
                    # ||theta_after - theta_before||, elementwise differences: exact for tiny steps
                    upd = pend["upd"]
                    dn = None
                    if pend.get("snap_views") is not None:
                        slots = [(k, self._params[k][1]) for k in upd]
                        dn = fast_differences(slots, pend["snap_views"], self._views)
                    if dn is None:
                        after = [self._data(k) for k in upd]
                        dn = difference_norms(after, snap, upd, self._views)
                    pend["dn"] = dn
                pend["snap"] = pend["snap_views"] = None
            self._stage(step, pend)
        self._end_step()
        if pend is not None and self.analyze_every is not None and step % self.analyze_every == 0:
            self._analyze(step)

    def _buffers(self, keys: list[int]) -> dict[int, Any]:
        """Buffers for the weights of ``keys``, kept between steps (one copy of the trained
        parameters; no allocation per step)."""
        torch = self._torch
        out = {}
        for k in keys:
            t = self._data(k)
            b = self._bufs.get(k)
            if b is None or b.shape != t.shape or b.dtype != t.dtype or b.device != t.device:
                b = torch.empty_like(t, memory_format=torch.contiguous_format)
                self._bufs[k] = b
            out[k] = b
        return out

    def _deferred(self, pend: dict[str, Any]) -> dict[str, Any]:
        """After a step(closure): gradients as they are now (the step does not change them),
        weight norms from before the step."""
        from vgcore.watch.stats import norms, snapshot_norms

        entries, grads = self._grads()
        pos = {k: i for i, k in enumerate(pend["cand"])}
        entries_in = [(k, g) for k, g in zip(entries, grads) if k in pos]
        at = {k: i for i, k in enumerate(pend["keys"])}
        upd = [k for k, _ in entries_in if k in at]
        gs = [g for _, g in entries_in]
        if all(g is not None for g in gs):
            gn, _ = snapshot_norms(gs, [None] * len(gs), [None] * len(gs))
        else:
            gn = norms(gs)
        wn = pend["wn"]
        take = [pos[k] for k, _ in entries_in]
        return {
            "entries": [k for k, _ in entries_in],
            "upd": upd,
            "gn": gn,
            "present": [g is not None for g in gs],
            "wn": wn[take] if isinstance(wn, np.ndarray) else [wn[i] for i in take],
            "snap": [pend["snap"][at[k]] for k in upd],
            "scale": pend["scale"],
            "dev": pend["dev"],
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
            from vgcore.watch.stats import snapshot_norms

            with torch.no_grad():
                entries, grads = self._grads()
                weights = [self._data(k) for k in entries]
                wn, gn = snapshot_norms(weights, grads, [None] * len(entries))
                pend = {
                    "entries": entries,
                    "upd": [],
                    "gn": gn,
                    "present": [g is not None for g in grads],
                    "wn": wn,
                    "dn": [],
                    "scale": None,
                    "dev": self._device(weights),
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
        if self._toggle_hooks and self.step % self.every != 0:
            self._remove_module_hooks()
        if self._call_order is None and self._order_seen:
            self._call_order = list(self._order_seen)
        self._reset_window()

    def _reset_window(self) -> None:
        self._clear_tensor_handles()
        self._og_norms: list[Any] = []
        self._og_block: list[int] = []
        self._act_parts: list[Any] = []
        self._act_meta: list[tuple[tuple[int, int], int]] = []
        self._act_alive: dict[tuple[int, int], Any] = {}
        self._act_track: dict[tuple[int, int], bool] = {}
        self._act_block: dict[tuple[int, int], int] = {}
        self._dirty = False

    def _clear_tensor_handles(self) -> None:
        for h in self._tensor_handles:
            h.remove()
        self._tensor_handles = []

    def _stage(self, step: int, pend: dict[str, Any]) -> None:
        """Keep one logged step's device tensors; the sums and the host copy wait for
        :meth:`_finalize` (so that a loss observed after ``optimizer.step()`` still joins its
        step)."""
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
            "og_norms": self._og_norms,
            "og_block": self._og_block,
            "act_parts": self._act_parts,
            "act_meta": self._act_meta,
            "act_alive": {k: v for k, v in self._act_alive.items() if self._act_track.get(k)},
            "act_block": self._act_block,
        }
        self._block_fires = 0
        self._fwd_recorded = 0

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, WatchWarning, stacklevel=4)

    def _finalize(self) -> None:
        """Sum the step's pieces into one float64 vector (squared norms per parameter, per
        block output, per activation call; sums of activations; losses), combine it over ranks
        (one all_reduce), copy it to the host once, add the rows, check the alerts, write
        TensorBoard scalars.

        Outside distributed runs the device only stacks the 0-d results (one stack, one cast)
        and the host does the sums; with several ranks the sums are formed on the device
        (one ``index_add_`` into a layout every rank shares) before the all_reduce.
        """
        u, self._unflushed = self._unflushed, None
        if u is None:
            return
        torch = self._torch
        from vgcore.watch.stats import stack64

        step, pend = u["step"], u["pend"]
        dev = pend["dev"]
        dist = self._dist
        entries, upd = pend["entries"], pend["upd"]
        P, Q = len(entries), len(upd)
        nbm = len(self._block_mods)
        og_norms, og_block = u["og_norms"], u["og_block"]
        parts, meta = u["act_parts"], u["act_meta"]
        keys = sorted({k for k, _ in meta})
        kpos = {k: i for i, k in enumerate(keys)}
        alive_keys = [k for k in keys if k in u["act_alive"]]
        losses = self._losses.pop(step, {})
        for s in [s for s in self._losses if s < step]:
            del self._losses[s]
        loss_keys = sorted(losses)
        fsdp = dist.active and dist.mode == "fsdp"

        # the layout every rank shares: [g^2 (P) | w^2 (P) | d^2 (Q) | block outputs' g^2 |
        # per activation key (count, sum, sum of squares, low count) | losses | presence (P)]
        o_og = 2 * P + Q
        o_act = o_og + nbm
        o_loss = o_act + 4 * len(keys)
        o_pres = o_loss + len(loss_keys)
        size = o_pres + (P if fsdp else 0)
        kk = np.array([kpos[k] for k, _ in meta], dtype=np.int64)
        loss_t, it_loss, loss_f, if_loss = [], [], [], []
        for i, k in enumerate(loss_keys):
            for v in losses[k]:
                if isinstance(v, torch.Tensor):
                    loss_t.append(v)
                    it_loss.append(o_loss + i)
                else:
                    loss_f.append(float(v))
                    if_loss.append(o_loss + i)
        # the parameters' norms: on the host already where they took the compiled pass
        pnorms = _host_norms(pend["gn"], pend["wn"], pend["dn"])
        if pnorms is None:
            pvals = [t for x in (pend["gn"], pend["wn"], pend["dn"]) for t in _as_scalars(x)]
            p_idx = np.arange(o_og, dtype=np.int64)
            pnorms = np.zeros(0)
        else:
            pvals, p_idx = [], np.zeros(0, dtype=np.int64)
        # activation calls whose parts are on the device (0-d tensors) or on the host (floats)
        on_dev = np.array([isinstance(parts[3 * i], torch.Tensor) for i in range(len(meta))])
        dev_c = np.flatnonzero(on_dev) if len(meta) else np.zeros(0, np.int64)
        host_c = np.flatnonzero(~on_dev) if len(meta) else np.zeros(0, np.int64)
        kd, kh = kk[dev_c], kk[host_c]
        # device values: norms first (squared before summing), then sums
        dvals = [*pvals, *og_norms, *(parts[3 * i + 1] for i in dev_c)]
        n_sq = len(dvals)
        dvals += [*(parts[3 * i] for i in dev_c), *(parts[3 * i + 2] for i in dev_c), *loss_t]
        idx_d = np.concatenate(
            [
                p_idx,
                o_og + np.asarray(og_block, dtype=np.int64),
                o_act + 4 * kd + 2,
                o_act + 4 * kd + 1,
                o_act + 4 * kd + 3,
                np.asarray(it_loss, dtype=np.int64),
            ]
        )
        # host values: the parameters' squared norms and the activations' parts (compiled
        # passes), element counts, float losses, presence of the shards' gradients
        h_act = np.array([parts[3 * i : 3 * i + 3] for i in host_c], dtype=np.float64)
        h_act = h_act.reshape(-1, 3)
        idx_h = np.concatenate(
            [
                np.arange(len(pnorms), dtype=np.int64),
                o_act + 4 * kh + 1,
                o_act + 4 * kh + 2,
                o_act + 4 * kh + 3,
                o_act + 4 * kk,
                np.asarray(if_loss, dtype=np.int64),
                o_pres + np.arange(P if fsdp else 0, dtype=np.int64),
            ]
        )
        pres = [float(x) for x in pend["present"]] if fsdp else []
        hvals = np.concatenate(
            [
                pnorms * pnorms,
                h_act[:, 0],
                h_act[:, 1] * h_act[:, 1],
                h_act[:, 2],
                np.array([c for _, c in meta] + loss_f + pres, dtype=np.float64),
            ]
        )
        scale = pend["scale"]
        with torch.no_grad():
            vec = stack64(dvals, dev)
            alive = [u["act_alive"][k].reshape(-1) for k in alive_keys]
            if alive:
                a0 = alive[0]
                alive_v = (
                    torch.cat(alive).to(torch.float64)
                    if all(a.dtype == a0.dtype and a.device == dev for a in alive)
                    else torch.cat([a.to(device=dev, dtype=torch.float64) for a in alive])
                )
            else:
                alive_v = torch.zeros(0, dtype=torch.float64, device=dev)
            tail = [scale.reshape(1).to(dev)] if scale is not None else []
            if dist.active:
                vec[:n_sq].square_()
                full = torch.cat([vec, torch.as_tensor(hvals, device=dev)])
                idx = torch.as_tensor(np.concatenate([idx_d, idx_h]), device=dev)
                fixed = torch.zeros(size, dtype=torch.float64, device=dev).index_add_(0, idx, full)
                # squared sums of sharded tensors add over ranks; replicated ones are equal on
                # every rank and pass through (mask 1 / 0: exact)
                m = np.ones(size)
                m[: 2 * P] = np.tile([float(self._sharded[k]) for k in entries], 2) if P else 0
                m[2 * P : o_og] = [float(self._sharded[k]) for k in upd]
                mt = torch.as_tensor(m, device=dev)
                red = torch.cat([fixed * mt, alive_v])
                dist.all_reduce_sum(red)
                red[:size] += fixed * (1 - mt)
                flat = torch.cat([red, *tail])
            else:
                flat = torch.cat([vec, alive_v, *tail])
            host = flat.detach().cpu().numpy()  # the one copy to the host of this step
        if dist.active:
            fixed_h = host[:size]
            at = size
        else:
            v = host[: len(dvals)].copy()
            v[:n_sq] *= v[:n_sq]
            # float64 even without device values (bincount of nothing gives integers)
            fixed_h = np.bincount(idx_d, weights=v, minlength=size).astype(np.float64)
            if len(hvals):
                fixed_h += np.bincount(idx_h, weights=hvals, minlength=size)
            at = len(dvals)
        alive_h = host[at : at + alive_v.numel()]
        scale_h = float(host[-1]) if scale is not None else None

        g = np.sqrt(fixed_h[:P])
        w = np.sqrt(fixed_h[P : 2 * P])
        d = np.sqrt(fixed_h[2 * P : o_og])
        out_sq = fixed_h[o_og:o_act]
        if dist.active:
            out_sq = out_sq / float(dist.world) ** 2
        if scale_h is not None:
            out_sq = out_sq / (scale_h * scale_h)
        out = np.sqrt(out_sq)
        fired = [False] * nbm
        for b in og_block:
            fired[b] = True
        if fsdp:
            # a tensor without a gradient on every rank is not recorded
            keep = fixed_h[o_pres : o_pres + P] > 0
            if not keep.all():
                kept = {k for k, ok in zip(entries, keep) if ok}
                uk = np.array([k in kept for k in upd], dtype=bool)
                entries = [k for k in entries if k in kept]
                g, w, d = g[keep], w[keep], d[uk]
                upd = [k for k in upd if k in kept]
        loss_vals = {}
        for i, k in enumerate(loss_keys):
            lv = fixed_h[o_loss + i] / len(losses[k])
            loss_vals[k] = lv / dist.world if dist.active else lv
        acts = []
        a_at = 0
        for k in keys:
            i = o_act + 4 * kpos[k]
            al = None
            if k in u["act_alive"]:
                n_al = u["act_alive"][k].numel()
                al = alive_h[a_at : a_at + n_al]
                a_at += n_al
            sums = fixed_h[i : i + 4]
            if self._acts[k[0]][2].name == "relu":
                sums = sums.copy()
                sums[3] = sums[0] - sums[3]  # active -> inactive elements
            acts.append((k, sums, al))
        self._record(step, u["act_block"], entries, upd, g, w, d, out, fired, loss_vals, acts)

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
        acts: list[tuple[tuple[int, int], np.ndarray, np.ndarray | None]],
    ) -> None:
        from vgcore.watch.stats import activation_metrics

        nb = len(self._names)
        blk = self._slot_block[entries] if entries else np.zeros(0, np.int64)
        gsq_b = np.bincount(blk, weights=g * g, minlength=nb)
        wsq_b = np.bincount(blk, weights=w * w, minlength=nb)
        has_b = np.bincount(blk, minlength=nb) > 0
        pos = {k: i for i, k in enumerate(entries)}
        ublk = self._slot_block[upd] if upd else np.zeros(0, np.int64)
        uw = w[[pos[k] for k in upd]] if upd else np.zeros(0)
        dsq_b = np.bincount(ublk, weights=d * d, minlength=nb)
        uwsq_b = np.bincount(ublk, weights=uw * uw, minlength=nb)
        has_u = np.bincount(ublk, minlength=nb) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            uratio = np.where(uw > 0, d / np.where(uw > 0, uw, 1.0), np.nan)
            bratio = np.where(
                uwsq_b > 0, np.sqrt(dsq_b) / np.sqrt(np.where(uwsq_b > 0, uwsq_b, 1.0)), np.nan
            )
        grad_b = np.where(has_b, np.sqrt(gsq_b), np.nan)
        upd_b = np.where(has_u, bratio, np.nan)
        fired_b = np.zeros(nb, dtype=bool)
        fired_b[: len(fired)] = fired
        out_b = np.full(nb, np.nan)
        out_b[: len(out)] = np.where(fired, out, np.nan)

        # the row labels and where each value comes from, cached per layout (the same every
        # step of an ordinary loop)
        sig = (tuple(entries), tuple(upd), has_b.tobytes(), has_u.tobytes(), fired_b.tobytes())
        plan = self._plans.get(sig)
        if plan is None:
            plan = self._plan(entries, upd, has_b, has_u, fired_b)
            if len(self._plans) > 16:
                self._plans.clear()
            self._plans[sig] = plan
        labels_pb, take = plan
        pool = np.concatenate(
            [
                g,
                w,
                d,
                uratio,
                grad_b,
                np.sqrt(wsq_b),
                np.sqrt(dsq_b),
                upd_b,
                out_b,
            ]
        )
        labels: list[tuple[str | None, str | None, str]] = list(labels_pb)
        values = [pool[take]]
        act_rows: list[tuple[str, str, dict[str, float]]] = []
        act_vals: list[float] = []
        for (j, c), (count, s1, s2, low), alive in acts:
            mname, _, act, _ = self._acts[j]
            label = f"{mname}[{c}]" if j in self._act_multi else mname
            b = act_block.get((j, c), self._acts[j][3])
            bn = self._names[b] if 0 <= b < nb else "(unknown)"
            m = activation_metrics(count, s1, s2, low, alive)
            lowf = m.pop("act_low_derivative", math.nan)
            if act.low_derivative == "saturated":
                m["act_saturated"] = lowf
            elif act.low_derivative == "inactive":
                m["act_inactive"] = lowf
            for metric, v in m.items():
                labels.append((bn, label, metric))
                act_vals.append(v)
            act_rows.append((bn, label, m))
        for lk, lv in losses.items():
            labels.append((None, None, lk))
            act_vals.append(float(lv))
        values.append(np.asarray(act_vals, dtype=np.float64))
        self._history.append(step, labels, np.concatenate(values))

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
                if fired_b[b]:
                    wr.add_scalar(f"output_grad_norm/{bn}", float(out_b[b]), step)
            for _bn, label, m in act_rows:
                for metric, v in m.items():
                    wr.add_scalar(f"{metric}/{label}", float(v), step)
            for lk, lv in losses.items():
                wr.add_scalar(lk, float(lv), step)

    def _plan(
        self,
        entries: list[int],
        upd: list[int],
        has_b: np.ndarray,
        has_u: np.ndarray,
        fired: np.ndarray,
    ) -> tuple[list[tuple[str | None, str | None, str]], np.ndarray]:
        """Row labels of the parameter and block metrics, and the index of each row's value in
        the pool ``[g (P), w (P), d (Q), ratio (Q), then per block (nb each): grad, weight,
        update, ratio, output grad]``."""
        P, Q, nb = len(entries), len(upd), len(self._names)
        labels: list[tuple[str | None, str | None, str]] = []
        take: list[int] = []
        if self.per_parameter:
            upos = {k: i for i, k in enumerate(upd)}
            for i, k in enumerate(entries):
                name, _, b = self._params[k]
                bn = self._names[b]
                labels += [(bn, name, "grad_norm"), (bn, name, "weight_norm")]
                take += [i, P + i]
                if k in upos:
                    labels += [(bn, name, "update_norm"), (bn, name, "update_ratio")]
                    take += [2 * P + upos[k], 2 * P + Q + upos[k]]
        base = 2 * P + 2 * Q
        for b, bn in enumerate(self._names):
            if has_b[b]:
                labels += [(bn, None, "grad_norm"), (bn, None, "weight_norm")]
                take += [base + b, base + nb + b]
            if has_u[b]:
                labels += [(bn, None, "update_norm"), (bn, None, "update_ratio")]
                take += [base + 2 * nb + b, base + 3 * nb + b]
            if fired[b]:
                labels.append((bn, None, "output_grad_norm"))
                take.append(base + 4 * nb + b)
        return labels, np.asarray(take, dtype=np.int64)

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


def _host_norms(*groups: Any) -> np.ndarray | None:
    """The groups' norms as one host float64 array when every group is a host array (or
    empty), else None."""
    if not all(isinstance(g, np.ndarray) or len(g) == 0 for g in groups):
        return None
    return np.concatenate([np.asarray(g, dtype=np.float64).reshape(-1) for g in groups])


def _as_scalars(group: Any) -> list[Any]:
    """A group of norms as 0-d tensors (a host array's entries as views)."""
    if isinstance(group, np.ndarray):
        import torch

        return list(torch.from_numpy(np.ascontiguousarray(group, dtype=np.float64)).unbind(0))
    return list(group)


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
        copy of the trained parameters), ``update_every`` (default 1: the update norms and
        ratios on every logged step; k: on every k-th logged step only, steps divisible by
        ``every * k``, exact there; the other logged steps skip the copy of the weights and
        the difference, the bulk of the cost on small, memory-bound steps),
        ``saturation_threshold`` (1e-3, as :func:`vgcore.gradient_flow`), ``alerts`` (True,
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

"""A Lightning callback that watches training with :func:`vgcore.watch`.

::

    from vgcore.integrations.lightning import WatchCallback

    cb = WatchCallback(every=10)
    trainer = Trainer(callbacks=[cb])
    trainer.fit(module, loader)
    cb.watch.history, cb.watch.alerts, cb.watch.plot()

Importing this module imports Lightning (``lightning.pytorch`` when installed, else
``pytorch_lightning``); ``import vgcore`` never does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:  # the unified package first, the standalone one otherwise
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError as exc:
        raise ImportError(
            "vgcore.integrations.lightning needs Lightning: pip install 'vgcore[lightning]' "
            "(or pip install lightning)"
        ) from exc

__all__ = ["WatchCallback"]


class WatchCallback(Callback):  # type: ignore[misc]
    """Watch a LightningModule's training (:func:`vgcore.watch` on it and its first
    optimizer, from ``on_train_start`` to ``on_train_end``).

    Parameters
    ----------
    every : int
        Log every ``every``-th optimizer step.
    log_metrics : bool
        Also log each block's gradient norm and update ratio through ``LightningModule.log``
        (``vgcore/grad_norm/<block>``, ``vgcore/update_ratio/<block>``), one step late (the
        numbers of a step reach the host when the next one starts).
    **watch_options
        Passed to :func:`vgcore.watch` (``blocks``, ``alerts``, ``analyze_every``, ...). A
        GradScaler of Lightning's mixed-precision plugin is passed as ``scaler``.

    Attributes
    ----------
    watch : vgcore.watch.Watch or None
        The monitor (after training: closed, its history and alerts kept).
    """

    def __init__(self, every: int = 1, log_metrics: bool = False, **watch_options: Any) -> None:
        super().__init__()
        self.every = every
        self.log_metrics = log_metrics
        self.watch_options = watch_options
        self.watch: Any = None
        self._logged = 0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from vgcore.watch import watch

        if not trainer.optimizers:
            raise ValueError("WatchCallback: the trainer has no optimizer to watch")
        opts = dict(self.watch_options)
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        if scaler is not None and "scaler" not in opts:
            opts["scaler"] = scaler
        model = getattr(trainer.strategy, "model", None) or pl_module
        self.watch = watch(model, trainer.optimizers[0], every=self.every, **opts)

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        # training_step may not call the module's forward: start the step's window here
        if self.watch is not None:
            x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
            self.watch._on_forward_start(pl_module, (x,), {})

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        w = self.watch
        if w is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is not None:
            w.observe(loss=loss)
        if self.log_metrics:
            self._log(pl_module)

    def _log(self, pl_module: Any) -> None:
        w = self.watch
        n = len(w._history)
        if n == self._logged:
            return
        self._logged = n
        df = w._history.frame()
        last = df[(df.step == df.step.max()) & df.parameter.isna() & df.block.notna()]
        values = {
            f"vgcore/{m}/{b}": float(v)
            for b, m, v in zip(last.block, last.metric, last.value)
            if m in ("grad_norm", "update_ratio")
        }
        if values:
            pl_module.log_dict(values, on_step=True, on_epoch=False)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.watch is not None:
            self.watch.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.watch is not None:
            self.watch.close()

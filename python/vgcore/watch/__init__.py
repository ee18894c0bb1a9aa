"""Watch a model train: per-block gradient norms, update ratios, gradients at block outputs,
activation statistics and online alerts, inside a plain PyTorch training loop.

``vgcore.watch(model, optimizer, ...)`` calls :func:`watch`: this module is callable, so the
name works whether ``vgcore.watch`` resolves to the function or (after ``import
vgcore.watch``) to the module. ``import vgcore.watch`` does not import torch; :func:`watch`
does.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from vgcore.watch.alerts import FIXES, Alert, AlertConfig
from vgcore.watch.history import METRICS
from vgcore.watch.monitor import Watch, WatchWarning, watch
from vgcore.watch.report import write_watch_report

__all__ = [
    "FIXES",
    "METRICS",
    "Alert",
    "AlertConfig",
    "Watch",
    "WatchWarning",
    "watch",
    "write_watch_report",
]


class _CallableModule(types.ModuleType):
    """``vgcore.watch(...)`` on the module is :func:`watch` (the package and the function share
    the name)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Watch:
        return watch(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

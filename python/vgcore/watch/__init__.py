"""Watch a model train: per-block gradient norms, update ratios, gradients at block outputs,
activation statistics and online alerts, inside a plain PyTorch training loop.

``import vgcore.watch`` does not import torch; :func:`watch` does.
"""

from __future__ import annotations

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

"""What the monitor recorded: a tidy table and its figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["History", "plot_history"]

#: Metrics recorded per block and per parameter tensor / activation module.
METRICS = {
    "grad_norm": "||dL/dtheta|| (per tensor; per block over its tensors)",
    "weight_norm": "||theta|| before the step",
    "update_norm": "||delta theta|| of the step the optimizer took",
    "update_ratio": "||delta theta|| / ||theta|| (theta before the step)",
    "output_grad_norm": "||dL/dh|| at the block's output (over the step's samples)",
    "act_mean": "mean of an activation module's output",
    "act_std": "standard deviation of an activation module's output",
    "act_saturated": "fraction of units with |phi'| < threshold * max|phi'| (saturating)",
    "act_inactive": "fraction of switched-off units (rectifiers)",
    "act_dead": "fraction of units inactive for every sample of the step (rectifiers)",
    "loss": "the observed loss (mean over the step's observe calls)",
    "flow_log10_grad_norm": "analyze_every: log10 ||dL/dh|| at each block output (gradient_flow)",
}


class History:
    """Rows of (step, block, parameter, metric, value), stored per logged step.

    Each logged step adds one label list and one value vector (the single host copy of that
    step); the table is assembled on demand.
    """

    def __init__(self) -> None:
        self._steps: list[int] = []
        self._labels: list[Sequence[tuple[str | None, str | None, str]]] = []
        self._values: list[np.ndarray] = []
        self._frame: Any = None

    def append(
        self, step: int, labels: Sequence[tuple[str | None, str | None, str]], values: np.ndarray
    ) -> None:
        if len(labels) != len(values):
            raise AssertionError("labels and values differ in length")
        self._steps.append(step)
        self._labels.append(labels)
        self._values.append(np.asarray(values, dtype=np.float64))
        self._frame = None

    def __len__(self) -> int:
        return len(self._steps)

    @property
    def steps(self) -> list[int]:
        return list(self._steps)

    def frame(self) -> Any:
        """The tidy DataFrame: columns step (int), block, parameter, metric (str or None),
        value (float)."""
        if self._frame is not None:
            return self._frame
        import pandas as pd

        n = sum(len(v) for v in self._values)
        step = np.empty(n, dtype=np.int64)
        value = np.empty(n, dtype=np.float64)
        block: list[Any] = []
        param: list[Any] = []
        metric: list[str] = []
        at = 0
        for s, labels, vals in zip(self._steps, self._labels, self._values):
            k = len(vals)
            step[at : at + k] = s
            value[at : at + k] = vals
            for b, p, m in labels:
                block.append(b)
                param.append(p)
                metric.append(m)
            at += k
        self._frame = pd.DataFrame(
            {"step": step, "block": block, "parameter": param, "metric": metric, "value": value}
        )
        return self._frame


def _block_matrix(df: Any, metric: str, blocks: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, matrix (len(blocks), len(steps))) of a block-level metric; NaN where absent."""
    sel = df[(df.metric == metric) & df.parameter.isna() & df.block.notna()]
    steps = np.array(sorted(sel.step.unique()), dtype=np.int64)
    mat = np.full((len(blocks), len(steps)), np.nan)
    if len(steps):
        col = {s: j for j, s in enumerate(steps)}
        row = {b: i for i, b in enumerate(blocks)}
        for b, s, v in zip(sel.block, sel.step, sel.value):
            if b in row:
                mat[row[b], col[s]] = v
    return steps, mat


def plot_history(
    df: Any,
    blocks: Sequence[str],
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (11, 7),
) -> Any:
    """Four panels: log10 gradient norm (block x step), log10 gradient norm at the block
    outputs, update ratios per block, and the loss.

    Parameters
    ----------
    df : DataFrame
        ``Watch.history``.
    blocks : sequence of str
        Block names in forward order (rows of the heat maps, first block on top).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from vgcore.plotting import require_matplotlib

    plt = require_matplotlib()
    fig, axes = plt.subplots(2, 2, figsize=figsize, constrained_layout=True)
    blocks = list(blocks)
    cmap = plt.get_cmap("viridis")

    def heat(ax: Any, metric: str, label: str) -> None:
        steps, mat = _block_matrix(df, metric, blocks)
        keep = ~np.all(np.isnan(mat), axis=1) if mat.size else np.zeros(0, bool)
        if not len(steps) or not keep.any():
            ax.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center")
            ax.set_axis_off()
            return
        names = [b for b, k in zip(blocks, keep) if k]
        with np.errstate(divide="ignore", invalid="ignore"):
            logm = np.log10(np.where(mat[keep] > 0, mat[keep], np.nan))
        extent = (steps[0] - 0.5, steps[-1] + 0.5, len(names) - 0.5, -0.5)
        im = ax.imshow(logm, aspect="auto", interpolation="nearest", cmap=cmap, extent=extent)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(
            names if len(names) <= 24 else [n if i % 2 == 0 else "" for i, n in enumerate(names)],
            fontsize=7,
        )
        ax.set_xlabel("step")
        ax.set_title(label)
        fig.colorbar(im, ax=ax, label="log10")

    heat(axes[0, 0], "grad_norm", "parameter gradient norm per block")
    heat(axes[0, 1], "output_grad_norm", "gradient norm at block outputs")

    ax = axes[1, 0]
    steps, mat = _block_matrix(df, "update_ratio", blocks)
    drawn = 0
    for i, b in enumerate(blocks):
        if len(steps) and np.isfinite(mat[i]).any() and np.nanmax(mat[i]) > 0:
            ax.semilogy(steps, mat[i], color=cmap(i / max(len(blocks) - 1, 1)), label=b, lw=1.2)
            drawn += 1
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel("||dtheta|| / ||theta||")
        ax.set_title("update ratio per block (light = last blocks)")
        if drawn <= 12:
            ax.legend(fontsize=6, ncol=2)
    else:
        ax.text(0.5, 0.5, "no update ratios (no optimizer given)", ha="center", va="center")
        ax.set_axis_off()

    ax = axes[1, 1]
    loss = df[(df.metric == "loss") & df.block.isna()]
    if len(loss):
        ax.plot(loss.step, loss.value, color="k", lw=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("loss")
        vals = loss.value.to_numpy()
        if np.all(vals[np.isfinite(vals)] > 0) and np.isfinite(vals).any():
            lo, hi = np.nanmin(vals), np.nanmax(vals)
            if hi / lo > 30 and math.isfinite(hi / lo):
                ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no loss observed (w.observe(loss=...))", ha="center", va="center")
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig

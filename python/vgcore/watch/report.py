"""A report folder for watched training runs (the same layout as :func:`vgcore.write_report`:
``report.md``, ``report.html``, PNG figures and the raw numbers under ``data/``)."""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["compare_runs", "is_watch_input", "write_watch_report"]


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "run"


def is_watch_input(obj: Any) -> bool:
    """Whether ``obj`` is a Watch, or a non-empty list / dict of them (what
    :func:`write_watch_report` takes); imports nothing heavy."""
    from vgcore.watch.monitor import Watch

    if isinstance(obj, Watch):
        return True
    if isinstance(obj, Mapping):
        vals = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        vals = list(obj)
    else:
        return False
    return bool(vals) and all(isinstance(v, Watch) for v in vals)


def _runs(watches: Any) -> list[tuple[str, Any]]:
    from vgcore.watch.monitor import Watch

    if isinstance(watches, Watch):
        return [("run", watches)]
    if isinstance(watches, Mapping):
        items = list(watches.items())
    elif isinstance(watches, Sequence) and not isinstance(watches, (str, bytes)):
        items = [(f"run {i}", w) for i, w in enumerate(watches)]
    else:
        raise TypeError(
            f"watches must be a Watch, a list of them or a dict label -> Watch, got {type(watches).__name__}"
        )
    if not items:
        raise ValueError("watches must hold at least one Watch")
    for label, w in items:
        if not isinstance(w, Watch):
            raise TypeError(f"watches[{label!r}] must be a Watch, got {type(w).__name__}")
    return [(str(k), w) for k, w in items]


def _last_block_values(w: Any, metric: str) -> dict[str, float]:
    df = w.history
    sel = df[(df.metric == metric) & df.parameter.isna() & df.block.notna()]
    if not len(sel):
        return {}
    last = sel[sel.step == sel.step.max()]
    return dict(zip(last.block, last.value))


def _first_last_ratio(w: Any) -> float:
    """log10 of (first block's / last block's gradient norm) at the last logged step."""
    vals = _last_block_values(w, "grad_norm")
    order = [b for b in w.blocks if b in vals and vals[b] > 0 and math.isfinite(vals[b])]
    if len(order) < 2:
        return math.nan
    return math.log10(vals[order[0]] / vals[order[-1]])


def _summary_rows(runs: Sequence[tuple[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    header = [
        "run",
        "steps",
        "first loss",
        "last loss",
        "log10 grad first/last block",
        "smallest update ratio",
        "alerts",
    ]
    rows = []
    for label, w in runs:
        df = w.history
        loss = df[(df.metric == "loss") & df.block.isna()].value.to_numpy()
        upd = _last_block_values(w, "update_ratio")
        upd = {k: v for k, v in upd.items() if math.isfinite(v)}
        small = min(upd, key=lambda k: upd[k]) if upd else None
        kinds = sorted({a.kind for a in w.alerts})
        rows.append(
            [
                label,
                w.step,
                f"{loss[0]:.4g}" if len(loss) else "-",
                f"{loss[-1]:.4g}" if len(loss) else "-",
                f"{_first_last_ratio(w):.2f}",
                f"{upd[small]:.2e} ({small})" if small is not None else "-",
                ", ".join(f"{k} x{sum(a.kind == k for a in w.alerts)}" for k in kinds) or "none",
            ]
        )
    return header, rows


def compare_runs(watches: Any, *, title: str | None = None) -> Any:
    """One figure comparing runs: loss, first-to-last block gradient ratio and the first
    block's update ratio over the steps.

    Parameters
    ----------
    watches : dict label -> Watch (or list of Watch)

    Returns
    -------
    matplotlib.figure.Figure
    """
    from vgcore.plotting import require_matplotlib

    plt = require_matplotlib()
    runs = _runs(watches)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    for label, w in runs:
        df = w.history
        loss = df[(df.metric == "loss") & df.block.isna()]
        if len(loss):
            axes[0].plot(loss.step, loss.value, label=label, lw=1.3)
        bl = df[(df.metric == "grad_norm") & df.parameter.isna() & df.block.notna()]
        order = [b for b in w.blocks if b in set(bl.block)]
        if len(order) >= 2:
            piv = bl.pivot_table(index="step", columns="block", values="value")
            with np.errstate(divide="ignore", invalid="ignore"):
                r = np.log10(piv[order[0]] / piv[order[-1]])
            axes[1].plot(piv.index, r, label=label, lw=1.3)
        up = df[(df.metric == "update_ratio") & df.parameter.isna() & df.block.notna()]
        first = [b for b in w.blocks if b in set(up.block)]
        if first:
            s = up[up.block == first[0]]
            axes[2].semilogy(s.step, s.value, label=label, lw=1.3)
    axes[0].set(xlabel="step", ylabel="loss", title="training loss")
    ys = [y for ln in axes[0].lines for y in ln.get_ydata() if np.isfinite(y)]
    if ys and min(ys) > 0 and max(ys) / min(ys) > 30:
        axes[0].set_yscale("log")
    axes[1].set(
        xlabel="step",
        ylabel="log10 ||g first block|| / ||g last block||",
        title="gradient at the first block vs the last",
    )
    axes[1].axhline(0, color="0.6", lw=0.8)
    axes[2].set(
        xlabel="step", ylabel="||dtheta|| / ||theta||", title="update ratio of the first block"
    )
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def write_watch_report(
    watches: Any,
    out: str | Path,
    *,
    title: str = "vgcore training report",
    data_format: str = "csv",
    figures: bool = True,
    intro: str | None = None,
) -> Any:
    """Write a report folder for one or more watched runs.

    Parameters
    ----------
    watches : Watch, list of Watch or dict label -> Watch
    out : path
        Folder to write (created; existing report files are overwritten).
    title : str
    data_format : {"csv", "parquet"}
        Format of ``data/<run>_history`` (the tidy history) and ``data/alerts``.
    figures : bool
        Draw PNG figures (one per run, and a comparison when there are several).
    intro : str, optional
        A paragraph under the title.

    Returns
    -------
    vgcore.report.Report
    """
    import vgcore
    from vgcore.report import Report
    from vgcore.report._document import Document, write_pages
    from vgcore.report._tables import DATA_FORMATS, write_table

    runs = _runs(watches)
    if data_format not in DATA_FORMATS:
        raise ValueError(
            f"data_format must be one of {', '.join(DATA_FORMATS)}, got {data_format!r}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    notes: list[str] = []
    figs: dict[str, Path] = {}
    if figures:
        try:
            import matplotlib.pyplot as plt

            if len(runs) > 1:
                fig = compare_runs(dict(runs))
                fig.savefig(out / "watch_comparison.png", dpi=110)
                plt.close(fig)
                figs["__compare__"] = Path("watch_comparison.png")
            for label, w in runs:
                fig = w.plot(title=label)
                name = Path(f"watch_{_slug(label)}.png")
                fig.savefig(out / name, dpi=110)
                plt.close(fig)
                figs[label] = name
        except ImportError as exc:
            notes.append(f"no figures: {exc}")
    data: list[Path] = []
    alert_rows: list[dict[str, Any]] = []
    for label, w in runs:
        rows = w.history.to_dict("records")
        data.append(write_table(rows, out / "data" / f"{_slug(label)}_history", data_format))
        alert_rows += [{"run": label, **a.as_dict()} for a in w.alerts]
    if alert_rows:
        data.append(write_table(alert_rows, out / "data" / "alerts", data_format))

    doc = Document(title)
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    doc.add("p", intro or f"Generated by vgcore {vgcore.__version__} on {now}.")
    doc.add(
        "p",
        "Per block: the norm of the parameter gradient the optimizer used, the update ratio "
        "||delta theta|| / ||theta|| of the step it took, and the gradient norm at the block's "
        "output. Vanishing gradients show as a loss that plateaus high, early blocks that "
        "barely move and gradient norms that shrink block by block towards the input.",
    )
    doc.add("h2", "Summary")
    doc.add("table", _summary_rows(runs))
    if "__compare__" in figs:
        doc.add(
            "img",
            (
                figs["__compare__"],
                "runs compared: loss, first/last block gradient, first block's update ratio",
            ),
        )
    for label, w in runs:
        doc.add("h2", label)
        doc.add("ul", w.summary().splitlines())
        if label in figs:
            doc.add(
                "img",
                (figs[label], f"{label}: log10 gradient norms (block x step), update ratios, loss"),
            )
        if w.alerts:
            doc.add(
                "table",
                (
                    ["step", "kind", "block", "metric", "value", "fixes to try"],
                    [
                        [
                            a.step,
                            a.kind,
                            a.block or "-",
                            a.metric,
                            f"{a.value:.3g}",
                            ", ".join(a.fixes),
                        ]
                        for a in w.alerts
                    ],
                ),
            )
    doc.add("h2", "Data")
    doc.add("ul", [str(p.relative_to(out)) for p in data])
    if notes:
        doc.add("h2", "Notes")
        doc.add("ul", notes)
    md, page = write_pages(doc, out)
    return Report(
        out=out,
        markdown=md,
        html=page,
        figures=[out / p for p in figs.values()],
        data=data,
        notes=notes,
    )

"""The figures of a report, saved as PNG files (matplotlib, Agg)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Figure", "make_figures", "slug"]


@dataclass(frozen=True)
class Figure:
    """A saved figure: path relative to the report folder, caption, section it belongs to."""

    path: str
    caption: str
    section: str


#: Longest file stem kept whole; longer texts keep their start and get a digest (unique).
_MAX_STEM = 120


def slug(text: str, taken: set[str] | None = None) -> str:
    """A file-name-safe, unique version of ``text``: every word kept (up to ``_MAX_STEM``
    characters; a longer text keeps its first words and a digest of the whole)."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "figure"
    if len(base) > _MAX_STEM:
        digest = hashlib.sha1(base.encode()).hexdigest()[:8]
        head = base[: _MAX_STEM - 9].rsplit("-", 1)[0]
        base = f"{head}-{digest}"
    name, i = base, 2
    while taken is not None and name in taken:
        name, i = f"{base}-{i}", i + 1
    if taken is not None:
        taken.add(name)
    return name


def _save(fig: Any, root: Path, rel: str, dpi: int) -> str:
    fig.savefig(root / rel, dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return rel


def _frame(
    plt: Any, size: tuple[float, float], *, ncols: int = 1, right: float = 0.25
) -> tuple[Any, Any]:
    """A figure with fixed margins (inches) instead of a layout engine: saving then draws
    once instead of twice plus a layout solve, about half the time of a report's figures."""
    fig, axes = plt.subplots(1, ncols, figsize=size)
    w, h = size
    left, bottom, top, gap = 0.9, 0.6, 0.42, 1.05
    panel = (w - left - right - gap * (ncols - 1)) / ncols
    fig.subplots_adjust(
        left=left / w,
        right=1.0 - right / w,
        bottom=bottom / h,
        top=1.0 - top / h,
        wspace=gap / panel,
    )
    return fig, axes


def _draw_extra(plt: Any, plotting: Any, result: Any) -> Any:
    """The figure of an extra result, on fixed-margin axes where its ``plot`` takes them."""
    inner = getattr(result, "result", result)
    if hasattr(inner, "exponents"):
        two = getattr(inner, "running", None) is not None
        _, axes = _frame(plt, (10.8, 3.9) if two else (6.0, 3.9), ncols=2 if two else 1)
    elif hasattr(inner, "chi1"):
        _, axes = _frame(plt, (7.0, 4.4), right=1.05)
    else:
        _, axes = _frame(plt, (7.0, 4.2))
    try:
        return plotting.plot(result, ax=axes)
    except TypeError:  # a plot() without an ax keyword draws its own figure
        plt.close(np.ravel(axes)[0].figure)
        return plotting.plot(result)


def _fig_of(ret: Any) -> Any:
    ax = np.ravel(np.asarray(ret, dtype=object))[0] if isinstance(ret, (list, np.ndarray)) else ret
    return ax.figure


def _claim(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, ... if a figure of the report already has it."""
    name, i = stem, 2
    while name in taken:
        name, i = f"{stem}-{i}", i + 1
    taken.add(name)
    return name


def _lyapunov_caption(name: str, res: Any, axis: str) -> str:
    k = int(np.shape(getattr(res, "exponents", np.zeros((1, 1))))[-1])
    if k > 1:
        return (
            f"{name}: Lyapunov spectrum (top {k} exponents per {axis}, natural log) over the "
            "batch, and the convergence of the running estimates"
        )
    return (
        f"{name}: top Lyapunov exponent per {axis} over the batch (natural log, one point per "
        "sample), and the convergence of its running estimate"
    )


#: Most block names written under a per-block axis; longer chains get numbered ticks.
_MAX_TICK_NAMES = 40


def _name_margin(names: Sequence[str]) -> float:
    """Extra figure height (inches) for rotated block names under the axis."""
    if len(names) > _MAX_TICK_NAMES:
        return 0.0
    return min(2.0, 0.07 * max(len(n) for n in ["input", *names]))


def _block_ticks(ax: Any, names: Sequence[str]) -> None:
    """Label a per-block axis (``0`` = the input, ``i`` = the output of block ``i``) with
    the block names, rotated; long chains keep numbered ticks."""
    if len(names) > _MAX_TICK_NAMES:
        return
    fig = ax.figure
    extra = _name_margin(names)
    h = fig.get_size_inches()[1]
    fig.subplots_adjust(bottom=(0.6 + extra) / h)
    ax.set_xticks(range(len(names) + 1))
    ax.set_xticklabels(["input", *names], rotation=60, ha="right", fontsize="x-small")
    ax.set_xlabel("block output (input side left)")


def _block_units_figure(plt: Any, d: Any, root: Path, rel: str, dpi: int) -> str:
    """Per block: unit fractions (saturated, inactive, dead) and the output's std."""
    e = d.evidence
    names = e["block_names"]
    extra = _name_margin(names)
    fig, (a0, a1) = _frame(plt, (10.8, 3.9 + extra), ncols=2)
    x = np.arange(1, len(names) + 1)
    for key, label in (
        ("saturation_by_block", "saturated"),
        ("inactive_by_block", "inactive"),
        ("dead_by_block", "dead (whole batch)"),
    ):
        vals = e.get(key)
        if vals is not None:
            a0.plot(x, np.asarray(vals) * 100, "o-", ms=3, lw=1.2, label=label)
    a0.set_ylabel("% of activation units")
    a0.set_ylim(bottom=0)
    a0.legend(fontsize="small")
    a0.grid(True, alpha=0.3)
    a1.semilogy(x, np.maximum(np.asarray(d.flow.act_std, dtype=float), 1e-300), "o-", ms=3)
    a1.set_ylabel("std of the block's output")
    a1.grid(True, alpha=0.3)
    for ax in (a0, a1):
        if len(names) <= _MAX_TICK_NAMES:
            ax.set_xticks(x)
            ax.set_xticklabels(names, rotation=60, ha="right", fontsize="x-small")
        ax.set_xlabel("block")
    fig.subplots_adjust(bottom=(0.6 + extra) / fig.get_size_inches()[1])
    a0.set_title(f"{d.name}: units per block", fontsize="medium")
    return _save(fig, root, rel, dpi)


def make_figures(
    diagnoses: Sequence[Any],
    extras: Mapping[str, Any],
    root: Path,
    *,
    dpi: int = 110,
) -> list[Figure]:
    """Overview, per-model and extra figures under ``root / "figures"``.

    An extra whose value has a ``section`` attribute naming one of the diagnoses is placed
    in that model's section; with ``replaces = "lyapunov"`` it is drawn instead of that
    model's default Lyapunov figure (e.g. a spectrum of several exponents where the
    diagnosis computed only the top one). File names are the whole slug of the model name or
    caption, unique within the report.

    Raises ImportError (with the install hint) when matplotlib is missing.
    """
    from vgcore import plotting

    plt = plotting.require_matplotlib()
    (root / "figures").mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    figs: list[Figure] = []
    names = {d.name for d in diagnoses}
    placed = {
        caption: r
        for caption, r in extras.items()
        if isinstance(getattr(r, "section", None), str) and r.section in names
    }
    replaced = {(r.section, getattr(r, "replaces", None)): c for c, r in placed.items()}
    groups = [
        ("layer", "mlp", "Gradient norm per layer (MLPs), relative to the output"),
        (
            "step",
            "recurrent",
            "Gradient norm per time step (recurrent models), relative to the output",
        ),
        ("block", "torch", "Gradient norm per block (torch modules), relative to the output"),
    ]
    for axis, stem, caption in groups:
        ds = [d for d in diagnoses if d.flow.axis == axis]
        if not ds:
            continue
        fig, ax = _frame(plt, (8, 4.6))
        plotting.plot_gradient_flow(
            [d.flow for d in ds],
            [d.name for d in ds],
            ax=ax,
            relative=True,
            threshold=ds[0].ratio,
            cell=False,
        )
        rel = _save(fig, root, f"figures/{_claim(f'overview-{stem}', taken)}.png", dpi)
        figs.append(Figure(rel, caption, "overview"))
    for d in diagnoses:
        s = _claim(slug(d.name), taken)
        names = d.evidence.get("block_names")
        fig, ax = _frame(plt, (7, 4.2 + (_name_margin(names) if names else 0.0)))
        plotting.plot_diagnosis(d, ax=ax)
        if names:
            _block_ticks(ax, names)
        figs.append(
            Figure(
                _save(fig, root, f"figures/{s}.png", dpi),
                f"{d.name}: measured gradient flow"
                + (" and the flow with each checked fix" if d.fixes else ""),
                d.name,
            )
        )
        if names:
            figs.append(
                Figure(
                    _block_units_figure(
                        plt, d, root, f"figures/{_claim(f'{s}-blocks', taken)}.png", dpi
                    ),
                    f"{d.name}: per block, the fraction of saturated, inactive and dead units of "
                    "recognised activation modules, and the standard deviation of the block's output",
                    d.name,
                )
            )
        lyap = getattr(d, "lyapunov", None)
        alt = replaced.get((d.name, "lyapunov"))
        if alt is not None:
            lyap = getattr(placed[alt], "result", placed[alt])
        if lyap is not None:
            two = getattr(lyap, "running", None) is not None
            _, pair = _frame(plt, (10.8, 3.9) if two else (6.0, 3.9), ncols=2 if two else 1)
            ret = plotting.plot_lyapunov(lyap, ax=pair, title=f"Lyapunov exponents: {d.name}")
            figs.append(
                Figure(
                    _save(_fig_of(ret), root, f"figures/{_claim(f'{s}-lyapunov', taken)}.png", dpi),
                    alt or _lyapunov_caption(d.name, lyap, d.axis),
                    d.name,
                )
            )
        if d.flow.grads is not None:
            fig, ax = _frame(plt, (7, 3.8))
            plotting.plot_grad_histograms(d.flow, ax=ax, title=f"{d.name}: gradient magnitudes")
            figs.append(
                Figure(
                    _save(fig, root, f"figures/{_claim(f'{s}-histograms', taken)}.png", dpi),
                    f"{d.name}: distribution of per-unit gradient magnitudes by {d.axis}",
                    d.name,
                )
            )
        for caption, r in placed.items():
            if r.section == d.name and getattr(r, "replaces", None) is None:
                ret = _draw_extra(plt, plotting, r)
                rel = f"figures/{_claim(slug(caption), taken)}.png"
                figs.append(Figure(_save(_fig_of(ret), root, rel, dpi), caption, d.name))
    for caption, result in extras.items():
        if caption in placed:
            continue
        ret = _draw_extra(plt, plotting, result)
        rel = f"figures/{_claim(slug(caption), taken)}.png"
        figs.append(Figure(_save(_fig_of(ret), root, rel, dpi), caption, "extra"))
    return figs

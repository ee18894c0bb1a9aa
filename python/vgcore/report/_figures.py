"""The figures of a report, saved as PNG files (matplotlib, Agg)."""

from __future__ import annotations

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


def slug(text: str, taken: set[str] | None = None) -> str:
    """A file-name-safe, unique version of ``text``."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "figure"
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


def _fig_of(ret: Any) -> Any:
    ax = np.ravel(np.asarray(ret, dtype=object))[0] if isinstance(ret, (list, np.ndarray)) else ret
    return ax.figure


def make_figures(
    diagnoses: Sequence[Any],
    extras: Mapping[str, Any],
    root: Path,
    *,
    dpi: int = 110,
) -> list[Figure]:
    """Overview, per-model and extra figures under ``root / "figures"``.

    Raises ImportError (with the install hint) when matplotlib is missing.
    """
    from vgcore import plotting

    plt = plotting.require_matplotlib()
    (root / "figures").mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    figs: list[Figure] = []
    groups = [
        ("layer", "Gradient norm per layer (MLPs), relative to the output"),
        ("step", "Gradient norm per time step (recurrent models), relative to the output"),
    ]
    for axis, caption in groups:
        ds = [d for d in diagnoses if d.flow.axis == axis]
        if not ds:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.6), layout="constrained")
        plotting.plot_gradient_flow(
            [d.flow for d in ds],
            [d.name for d in ds],
            ax=ax,
            relative=True,
            threshold=ds[0].ratio,
            cell=False,
        )
        rel = _save(
            fig, root, f"figures/overview-{'mlp' if axis == 'layer' else 'recurrent'}.png", dpi
        )
        figs.append(Figure(rel, caption, "overview"))
    for d in diagnoses:
        s = slug(d.name, taken)
        fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
        plotting.plot_diagnosis(d, ax=ax)
        figs.append(
            Figure(
                _save(fig, root, f"figures/{s}.png", dpi),
                f"{d.name}: measured gradient flow"
                + (" and the flow with each checked fix" if d.fixes else ""),
                d.name,
            )
        )
        lyap = getattr(d, "lyapunov", None)
        if lyap is not None:
            ret = plotting.plot_lyapunov(lyap)
            figs.append(
                Figure(
                    _save(_fig_of(ret), root, f"figures/{s}-lyapunov.png", dpi),
                    f"{d.name}: top Lyapunov exponent per {d.axis} over the batch, and the "
                    f"convergence of its running estimate",
                    d.name,
                )
            )
        if d.flow.grads is not None:
            fig, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
            plotting.plot_grad_histograms(d.flow, ax=ax, title=f"{d.name}: gradient magnitudes")
            figs.append(
                Figure(
                    _save(fig, root, f"figures/{s}-histograms.png", dpi),
                    f"{d.name}: distribution of per-unit gradient magnitudes by {d.axis}",
                    d.name,
                )
            )
    for caption, result in extras.items():
        ret = plotting.plot(result)
        s = slug(caption, taken)
        figs.append(Figure(_save(_fig_of(ret), root, f"figures/{s}.png", dpi), caption, "extra"))
    return figs

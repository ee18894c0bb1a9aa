"""Reports: a folder with PNG figures, ``report.md``, a self-contained ``report.html`` and the
raw numbers (CSV or Parquet).

>>> import vgcore
>>> from vgcore.report import write_report
>>> d = vgcore.diagnose(vgcore.MLP.from_sizes([32] * 21, "sigmoid"))
>>> rep = write_report([d], "my-report")          # doctest: +SKIP
>>> rep.html                                       # doctest: +SKIP
PosixPath('my-report/report.html')
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vgcore.diagnose.evidence import verdict_thresholds
from vgcore.diagnose.text import evidence_lines, thresholds_line
from vgcore.report._document import Document, write_pages
from vgcore.report._figures import Figure, make_figures
from vgcore.report._tables import DATA_FORMATS, report_tables, write_table

__all__ = ["DATA_FORMATS", "Report", "write_report"]


@dataclass
class Report:
    """Where a report was written.

    Attributes
    ----------
    out : Path
        The report folder.
    markdown, html : Path
        ``report.md`` and ``report.html``.
    figures : list of Path
        The PNG files (empty when matplotlib is not installed).
    data : list of Path
        The tables of raw numbers.
    notes : list of str
        What was left out and why.
    """

    out: Path
    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)
    data: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _summary_table(diagnoses: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "model",
        "verdict",
        "gain (decades)",
        "below 1e-6 / above 1e6 at",
        "saturated",
        "inactive",
        "top Lyapunov",
        "best fix (measured)",
    ]
    rows = []
    for d in diagnoses:
        e = d.evidence
        where = e["vanishing_depth"] if e["vanishing_depth"] is not None else e["exploding_depth"]
        best = d.best
        rows.append(
            [
                d.name,
                d.verdict,
                _fmt(e["log10_gain"], "+.1f"),
                "-" if where is None else f"{where} {d.axis}s",
                f"{e['saturation_mean']:.0%}",
                f"{e['inactive_mean']:.0%}" if e.get("inactive_possible") else "-",
                "-" if e.get("lyapunov") is None else f"{e['lyapunov']:+.3f} ({e['regime']})",
                f"{best.fix} ({best.improvement:+.1f} decades)" if best else "-",
            ]
        )
    return header, rows


def _block_table(d: Any) -> tuple[list[str], list[list[str]]]:
    """A torch module's blocks: gradient, units, activations and parameter gradients."""
    e = d.evidence
    f = d.flow
    names = e["block_names"]
    lg = np.asarray(f.log_grad_norms, dtype=float) / math.log(10.0)
    rel = lg - lg[-1]
    pg = f.log10_param_grad_norms or {}
    kinds = [k for k in ("weight", "bias") if k in pg]
    dead = e.get("dead_by_block")
    header = [
        "block",
        "log10 |dL/dh| rel.",
        "saturated",
        "inactive",
        "dead",
        "output mean",
        "output std",
        *[f"log10 |dL/d{k}|" for k in kinds],
    ]
    rows = [["input", _fmt(float(rel[0]), "+.2f"), "-", "-", "-", "-", "-", *["-" for _ in kinds]]]
    for i, n in enumerate(names):
        rows.append(
            [
                n,
                _fmt(float(rel[i + 1]), "+.2f"),
                f"{e['saturation_by_block'][i]:.1%}",
                f"{e['inactive_by_block'][i]:.1%}",
                "-" if dead is None else f"{dead[i]:.1%}",
                _fmt(float(f.act_mean[i]), ".3g"),
                _fmt(float(f.act_std[i]), ".3g"),
                *[_fmt(float(np.asarray(pg[k])[i]), "+.2f") for k in kinds],
            ]
        )
    return header, rows


def _diagnosed(items: Sequence[Any], x: Any, loss_fn: Any) -> list[Any]:
    """Diagnoses as given; a model or torch module is diagnosed first (on ``x``)."""
    from vgcore.diagnose import Diagnosis, diagnose

    out = []
    for item in items:
        if isinstance(item, Diagnosis):
            out.append(item)
        else:
            out.append(diagnose(item, x, **({} if loss_fn is None else {"loss_fn": loss_fn})))
    return out


def _evidence_items(d: Any) -> list[str]:
    """The diagnosis's own evidence lines (the words of ``Diagnosis.summary``)."""
    return [*evidence_lines(d.evidence, d.ratio, plus_minus="±"), thresholds_line(d.evidence)]


def _build_document(
    diagnoses: Sequence[Any],
    figs: Sequence[Figure],
    data: Sequence[Path],
    out: Path,
    title: str,
    notes: Sequence[str],
    intro: str | None,
) -> Document:
    import vgcore

    doc = Document(title)
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    doc.add("p", intro or f"Generated by vgcore {vgcore.__version__} on {now}.")
    doc.add(
        "p",
        "Verdict: "
        + verdict_thresholds(diagnoses[0].ratio if diagnoses else 1e-6, "layer or step")
        + ". Every fix was applied to a copy of the model and measured on the same inputs, "
        "and only fixes measured to help are recommended; 'spread' is the largest distance, "
        "in decades, between the gradient at any layer or step and at the output.",
    )
    doc.add("h2", "Summary")
    doc.add("table", _summary_table(diagnoses))
    overview = [f for f in figs if f.section == "overview"]
    if overview:
        doc.add("h2", "Gradient flow")
        for f in overview:
            doc.add("img", (f.path, f.caption))
    doc.add("h2", "Models")
    for d in diagnoses:
        doc.add("h3", f"{d.name}: {d.verdict}")
        doc.add("ul", _evidence_items(d))
        if d.causes:
            doc.add("p", "Causes: " + "; ".join(d.causes) + ".")
        if d.recommended:
            rows = [
                [i, r.fix, r.cause, r.action, r.measured()] for i, r in enumerate(d.recommended, 1)
            ]
            doc.add("p", "Recommended fixes:")
            doc.add("table", (["rank", "fix", "cause", "what to do", "measured"], rows))
        elif d.verdict == "healthy":
            doc.add("p", "No fix needed.")
        if d.not_helpful:
            doc.add("p", "Measured not to help (not recommended):")
            doc.add(
                "table",
                (
                    ["fix", "cause", "measured"],
                    [[r.fix, r.cause, r.measured()] for r in d.not_helpful],
                ),
            )
        if d.evidence.get("block_names"):
            doc.add(
                "p", "Per block (h_i is the output of block i; gradients relative to the output's):"
            )
            doc.add("table", _block_table(d))
        for f in figs:
            if f.section == d.name:
                doc.add("img", (f.path, f.caption))
        if d.notes:
            doc.add("ul", [f"note: {n}" for n in d.notes])
    extra = [f for f in figs if f.section == "extra"]
    if extra:
        doc.add("h2", "Further analyses")
        for f in extra:
            doc.add("img", (f.path, f.caption))
    doc.add("h2", "Data")
    doc.add("ul", [str(p.relative_to(out)) for p in data])
    if notes:
        doc.add("h2", "Notes")
        doc.add("ul", list(notes))
    return doc


def write_report(
    diagnoses: Sequence[Any],
    out: str | Path,
    *,
    title: str = "vgcore gradient-flow report",
    data_format: str = "csv",
    figures: bool = True,
    extras: Mapping[str, Any] | None = None,
    intro: str | None = None,
    x: Any = None,
    loss_fn: Any = None,
) -> Report:
    """Write a report folder for one or more diagnoses.

    Parameters
    ----------
    diagnoses : sequence of Diagnosis, models or torch modules; or watched runs
        Results of :func:`vgcore.diagnose` (a single Diagnosis is accepted too). A model or a
        ``torch.nn.Module`` is diagnosed first, ``vgcore.diagnose(model, x)``; a torch
        module's report has a table and figures per block. A :func:`vgcore.watch` run (or a
        list / dict of them) gives a training report
        (:func:`vgcore.watch.write_watch_report`).
    out : path
        Folder to write (created; existing report files are overwritten).
    title : str
    data_format : {"csv", "parquet"}
        Format of the raw-number tables in ``out / "data"`` (Parquet needs pyarrow).
    figures : bool
        Draw PNG figures (needs matplotlib; without it the report says so and has none).
    extras : mapping of caption -> result, optional
        Further results to draw (Lyapunov spectra, phase diagrams, ...), one figure each.
    intro : str, optional
        A paragraph under the title.
    x : tensor or array_like, optional
        The input of models and modules given instead of diagnoses (required for a torch
        module).
    loss_fn : callable(y) -> scalar tensor, optional
        The loss of torch modules given instead of diagnoses.

    Returns
    -------
    Report
    """
    from vgcore.watch.report import is_watch_input

    if is_watch_input(diagnoses):  # watched training runs: their own report
        from vgcore.watch.report import write_watch_report

        return write_watch_report(  # type: ignore[no-any-return]
            diagnoses,
            out,
            title="vgcore training report" if title == "vgcore gradient-flow report" else title,
            data_format=data_format,
            figures=figures,
            intro=intro,
        )
    if not isinstance(diagnoses, (list, tuple)):
        diagnoses = [diagnoses]
    if not diagnoses:
        raise ValueError("diagnoses must contain at least one Diagnosis")
    diagnoses = _diagnosed(diagnoses, x, loss_fn)
    if data_format not in DATA_FORMATS:
        raise ValueError(
            f"data_format must be one of {', '.join(DATA_FORMATS)}, got {data_format!r}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    figs: list[Figure] = []
    if figures:
        try:
            figs = make_figures(diagnoses, extras or {}, out)
        except ImportError as exc:
            notes.append(f"no figures: {exc}")
    data_dir = out / "data"
    data_dir.mkdir(exist_ok=True)
    data = [
        write_table(rows, data_dir / name, data_format)
        for name, rows in report_tables(diagnoses).items()
    ]
    doc = _build_document(diagnoses, figs, data, out, title, notes, intro)
    md, page = write_pages(doc, out)
    return Report(
        out=out,
        markdown=md,
        html=page,
        figures=[out / f.path for f in figs],
        data=data,
        notes=notes,
    )

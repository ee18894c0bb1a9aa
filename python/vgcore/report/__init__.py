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

from vgcore.diagnose.evidence import unit_lines, verdict_thresholds
from vgcore.report._document import Document, render_html, render_markdown
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


def _evidence_items(d: Any) -> list[str]:
    e = d.evidence
    per = d.axis
    items = [
        f"gradient at the input side: 10^{e['log10_gain']:+.2f} times its output value over "
        f"{e['length']} {per}s ({e['log10_rate']:+.3f} decades per {per})",
        f"spread (largest distance from the output value): {_fmt(e['spread'], '.2f')} decades",
    ]
    if e["vanishing_depth"] is not None:
        items.append(
            f"falls below {d.ratio:g} of its output value {e['vanishing_depth']} {per}s from the output"
        )
    if e["exploding_depth"] is not None:
        items.append(
            f"exceeds {1 / d.ratio:g} times its output value {e['exploding_depth']} {per}s from the output"
        )
    items += unit_lines(e)
    if e.get("gate_saturation"):
        items.append(
            "gate saturation: " + ", ".join(f"{g} {v:.1%}" for g, v in e["gate_saturation"].items())
        )
    if e.get("lyapunov") is not None:
        sd = e.get("lyapunov_std")
        items.append(
            f"top Lyapunov exponent: {e['lyapunov']:+.4f}"
            + ("" if sd is None else f" ± {sd:.4f} over the batch")
            + f" per {per} ({e['regime']}; {e['lyapunov_source']})"
        )
    if e.get("sigma_w2") is not None:
        line = f"weight scale: sigma_w2 = {e['sigma_w2']:.3g}, sigma_b2 = {e['sigma_b2']:.3g}"
        if e.get("critical_sigma_w2") is not None:
            line += f" (critical sigma_w2 = {e['critical_sigma_w2']:.3g})"
        if e.get("phase") is not None:
            line += f"; mean-field phase: {e['phase']} (chi_1 = {e['chi1']:.3g})"
            line += f", predicting {e['theory_log10_rate']:+.3f} decades per layer"
            if e.get("theory_gain_ratio") is not None:
                line += f" (measured/predicted gain {e['theory_gain_ratio']:.3f})"
        items.append(line)
    if e.get("mean_field_text"):
        items.append(e["mean_field_text"])
    if e.get("mean_field_scope"):
        items.append(f"why theory and measurement differ: {e['mean_field_scope']}")
    items.append(f"verdict thresholds: {e['thresholds']}")
    return items


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
        + ". Every recommendation was applied to a copy of the model and measured on the "
        "same inputs; 'spread' is the largest distance, in decades, between the gradient "
        "at any layer or step and at the output.",
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
        if d.recommendations:
            rows = [
                [i, r.fix, r.cause, r.action, r.measured()]
                for i, r in enumerate(d.recommendations, 1)
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
) -> Report:
    """Write a report folder for one or more diagnoses.

    Parameters
    ----------
    diagnoses : sequence of Diagnosis
        Results of :func:`vgcore.diagnose` (a single Diagnosis is accepted too).
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

    Returns
    -------
    Report
    """
    if not isinstance(diagnoses, (list, tuple)):
        diagnoses = [diagnoses]
    if not diagnoses:
        raise ValueError("diagnoses must contain at least one Diagnosis")
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
    md = out / "report.md"
    md.write_text(render_markdown(doc), encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_html(doc, out), encoding="utf-8")
    return Report(
        out=out,
        markdown=md,
        html=page,
        figures=[out / f.path for f in figs],
        data=data,
        notes=notes,
    )

"""The words of a diagnosis, written once: :meth:`Diagnosis.summary` and the report's
evidence list both take their lines from here, so they cannot disagree."""

from __future__ import annotations

from typing import Any

__all__ = ["block_unit_lines", "evidence_lines", "thresholds_line", "unit_lines"]


def unit_lines(e: dict[str, Any]) -> list[str]:
    """Saturated, inactive and dead units from the evidence, each where the model has them."""
    out = []
    if e.get("saturation_possible", True):
        out.append(
            f"saturated units: mean {e['saturation_mean']:.1%}, max {e['saturation_max']:.1%}"
        )
    if e.get("inactive_possible"):
        out.append(
            f"inactive units (switched off, not saturated): mean {e['inactive_mean']:.1%}, "
            f"max {e['inactive_max']:.1%}"
        )
        if e.get("dead_max") is not None:
            out.append(
                f"dead units (inactive for every sample): mean {e['dead_mean']:.1%}, "
                f"max {e['dead_max']:.1%}"
            )
    return out


def _through(block: str | None) -> str:
    """Where a torch module's gradient crosses a threshold: the block it passes back through."""
    return "" if block is None else f", going back through block {block!r}"


def block_unit_lines(e: dict[str, Any], top: int = 3) -> list[str]:
    """A torch module's blocks with the most saturated / dead units (where it has any)."""
    names = e.get("block_names")
    if not names:
        return []
    out = []
    for key, what in (("saturation_by_block", "saturated"), ("dead_by_block", "dead")):
        vals = e.get(key)
        if not vals or max(vals) <= 0:
            continue
        order = sorted(range(len(vals)), key=lambda i: -vals[i])[:top]
        out.append(
            f"most {what} units by block: "
            + ", ".join(f"{names[i]} {vals[i]:.1%}" for i in order if vals[i] > 0)
        )
    return out


def evidence_lines(e: dict[str, Any], ratio: float, *, plus_minus: str = "+/-") -> list[str]:
    """The evidence of a diagnosis in words, one fact a line (the thresholds apart, see
    :func:`thresholds_line`).

    Parameters
    ----------
    e : dict
        ``Diagnosis.evidence``.
    ratio : float
        ``Diagnosis.ratio``.
    plus_minus : str
        The sign between a mean and its spread (``"±"`` in documents).
    """
    per = e["axis"]
    lines = [
        f"gradient at the input side: 10^{e['log10_gain']:+.2f} times its output value over "
        f"{e['length']} {per}s ({e['log10_rate']:+.3f} decades per {per})",
        f"spread (largest distance from the output value): {e['spread']:.2f} decades",
    ]
    if e["vanishing_depth"] is not None:
        lines.append(
            f"falls below {ratio:g} of its output value {e['vanishing_depth']} {per}s from the "
            "output" + _through(e.get("vanishing_block"))
        )
    if e["exploding_depth"] is not None:
        lines.append(
            f"exceeds {1 / ratio:g} times its output value {e['exploding_depth']} {per}s from "
            "the output" + _through(e.get("exploding_block"))
        )
    lines += unit_lines(e)
    lines += block_unit_lines(e)
    if e.get("gate_saturation"):
        lines.append(
            "gate saturation: " + ", ".join(f"{g} {v:.1%}" for g, v in e["gate_saturation"].items())
        )
    if e.get("lyapunov") is not None:
        sd = e.get("lyapunov_std")
        lines.append(
            f"top Lyapunov exponent: {e['lyapunov']:+.4f}"
            + ("" if sd is None else f" {plus_minus} {sd:.4f} over the batch")
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
        lines.append(line)
    if e.get("mean_field_text"):
        lines.append(e["mean_field_text"])
    if e.get("mean_field_scope"):
        lines.append(f"why theory and measurement differ: {e['mean_field_scope']}")
    return lines


def thresholds_line(e: dict[str, Any]) -> str:
    """The verdict thresholds the diagnosis applied, in words."""
    return f"verdict thresholds: {e['thresholds']}"

"""Access to analyses that live in other parts of vgcore (Lyapunov exponents, Jacobian spectra,
mean-field theory), with a clear ImportError when a part is not in this build."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

__all__ = ["available", "demo_extras", "require", "run_lyapunov", "run_phase", "run_spectrum"]

#: Feature -> (module, attribute).
FEATURES: dict[str, tuple[str, str]] = {
    "lyapunov": ("vgcore.analysis.lyapunov", "lyapunov"),
    "spectrum": ("vgcore.analysis.spectrum", "jacobian_spectrum"),
    "singular_values": ("vgcore.analysis.singular_values", "jacobian_singular_values"),
    "mean_field": ("vgcore.theory", "mean_field"),
    "critical_sigma_w2": ("vgcore.theory", "critical_sigma_w2"),
    "phase_diagram": ("vgcore.theory", "phase_diagram"),
    "compare_to_theory": ("vgcore.theory", "compare_to_theory"),
}


def require(feature: str) -> Any:
    """The function implementing ``feature``, or ImportError saying it is not available."""
    mod_name, attr = FEATURES[feature]
    try:
        mod = importlib.import_module(mod_name)
        return getattr(mod, attr)
    except (ImportError, AttributeError) as exc:
        raise ImportError(
            f"{mod_name}.{attr} is not available in this build of vgcore ({exc})"
        ) from exc


def available(feature: str) -> bool:
    try:
        require(feature)
    except ImportError:
        return False
    return True


def run_lyapunov(model: Any, x: np.ndarray, *, k: int = 8) -> Any:
    fn = require("lyapunov")
    return fn(model, x, k=k)


def run_spectrum(model: Any, x: np.ndarray) -> Any:
    fn = require("spectrum")
    return fn(model, x)


def phase_grid(activation: Any, points: list[tuple[float, float]] | None = None) -> Any:
    """A phase diagram whose grid covers the critical line and the given points."""
    crit0 = float(require("critical_sigma_w2")(activation, 0.0))
    pts = points or []
    sw_max = max([3.0 * crit0 if np.isfinite(crit0) else 4.0, 4.0] + [1.5 * w for w, _ in pts])
    sb_max = max([0.5] + [1.5 * b for _, b in pts])
    return require("phase_diagram")(
        activation, np.linspace(sw_max / 160, sw_max, 160), np.linspace(0.0, sb_max, 80)
    )


def run_phase(activation: str, sigma_w2: float | None, sigma_b2: float) -> dict[str, Any]:
    """Critical line, the phase at a point and the diagram, as text and JSON."""
    crit = float(require("critical_sigma_w2")(activation, sigma_b2))
    doc: dict[str, Any] = {
        "activation": activation,
        "sigma_b2": sigma_b2,
        "critical_sigma_w2": crit,
    }
    lines = [
        f"{activation}: critical sigma_w2 = {crit:.4g} at sigma_b2 = {sigma_b2:g}"
        if np.isfinite(crit)
        else f"{activation}: no critical sigma_w2 at sigma_b2 = {sigma_b2:g} (always ordered)"
    ]
    if sigma_w2 is not None:
        mf = require("mean_field")(activation, sigma_w2, sigma_b2)
        chi1 = float(mf.chi_1)
        doc.update(
            sigma_w2=sigma_w2,
            chi1=chi1,
            phase=str(mf.phase),
            q_star=float(mf.q_star),
            xi_c=float(mf.xi_c),
        )
        trend = "explode" if chi1 > 1 else "vanish"
        lines.append(
            f"sigma_w2 = {sigma_w2:g}: {mf.phase} (chi_1 = {chi1:.4g}: gradients {trend} by a "
            f"factor {chi1**0.5:.4g} per layer; correlation depth scale xi_c = {float(mf.xi_c):.4g})"
        )
    point = [] if sigma_w2 is None else [(sigma_w2, sigma_b2)]
    return {"json": doc, "text": "\n".join(lines), "diagram": phase_grid(activation, point)}


def demo_extras(diagnoses: list[Any]) -> dict[str, Any]:
    """Figures for the demo report from whichever optional analyses are present.

    Mean-field phase diagrams (one per activation of the plain MLPs, their points marked) and,
    for Gaussian-initialised plain MLPs, the measured per-layer gain against theory.
    """
    extras: dict[str, Any] = {}
    if available("phase_diagram"):
        by_act: dict[str, list[Any]] = {}
        for d in diagnoses:
            m = d.model
            if getattr(m, "kind", None) != "mlp" or set(m.blocks) != {"plain"} or any(m.norms):
                continue
            acts = {a.name for a in m.activations}
            if len(acts) == 1:
                by_act.setdefault(acts.pop(), []).append(d)
        for act, ds in by_act.items():
            pts = [(d.evidence["sigma_w2"], d.evidence["sigma_b2"]) for d in ds]
            diagram = phase_grid(act, pts)
            extras[f"Mean-field phase diagram ({act}), with {', '.join(d.name for d in ds)}"] = (
                _Marked(diagram, pts, [d.name for d in ds])
            )
    if available("compare_to_theory"):
        compare = require("compare_to_theory")
        for d in diagnoses:
            e = d.evidence
            if e.get("phase") is None:
                continue
            cmp = compare(d.flow, e["sigma_w2"], e["sigma_b2"], burn_in=min(5, e["length"] - 1))
            extras[f"Measured gradient gain per layer vs mean-field theory ({d.name})"] = cmp
    return extras


class _Marked:
    """A result with the points to mark on its figure (plotted by the report)."""

    def __init__(self, result: Any, points: list[tuple[float, float]], labels: list[str]) -> None:
        self.result, self.points, self.labels = result, points, labels

    def plot(self, **kw: Any) -> Any:
        from vgcore.plotting import plot_phase_diagram

        return plot_phase_diagram(self.result, point=self.points, labels=self.labels, **kw)

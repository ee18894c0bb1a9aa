"""Access to analyses that live in other parts of vgcore (Lyapunov exponents, Jacobian spectra,
mean-field theory), with a clear ImportError when a part is not in this build."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "available",
    "demo_extras",
    "lyapunov_summary",
    "require",
    "run_lyapunov",
    "run_phase",
    "run_singular_values",
    "run_spectrum",
    "singular_values_summary",
    "spectrum_summary",
]

#: Feature -> (module, attribute).
FEATURES: dict[str, tuple[str, str]] = {
    "lyapunov": ("vgcore.analysis.lyapunov", "lyapunov"),
    "spectrum": ("vgcore.analysis.spectrum", "jacobian_spectrum"),
    "singular_values": ("vgcore.analysis.singular_values", "jacobian_singular_values"),
    "mean_field": ("vgcore.theory", "mean_field"),
    "critical_sigma_w2": ("vgcore.theory", "critical_sigma_w2"),
    "phase_diagram": ("vgcore.theory", "phase_diagram"),
    "phase_diagram_around": ("vgcore.theory.phases", "phase_diagram_around"),
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


def run_lyapunov(
    model: Any,
    x: np.ndarray,
    *,
    k: int = 8,
    burn_in: int = 0,
    qr_every: int = 1,
    progress: Callable[[int, int], Any] | None = None,
) -> Any:
    """:func:`vgcore.lyapunov` (a :class:`LyapunovSpectrum`, exponents of shape (B, k))."""
    fn = require("lyapunov")
    return fn(model, x, k=k, burn_in=burn_in, qr_every=qr_every, progress=progress)


def run_spectrum(
    model: Any,
    x: np.ndarray,
    *,
    method: str = "auto",
    progress: Callable[[int, int], Any] | None = None,
) -> Any:
    """:func:`vgcore.jacobian_spectrum` (a :class:`JacobianSpectrum`, arrays of shape (n, B))."""
    fn = require("spectrum")
    return fn(model, x, method=method, progress=progress)


def run_singular_values(
    model: Any, x: np.ndarray, *, progress: Callable[[int, int], Any] | None = None
) -> Any:
    """:func:`vgcore.jacobian_singular_values` (logs of shape (B, r))."""
    fn = require("singular_values")
    return fn(model, x, progress=progress)


def _rows(a: np.ndarray, fn: Callable[..., np.ndarray]) -> np.ndarray:
    """``fn(a, axis=1)`` ignoring NaN; NaN (no warning) for a row without finite values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(fn(a, axis=1), dtype=float)


def lyapunov_summary(res: Any) -> dict[str, Any]:
    """The numbers the CLI reports for a :class:`LyapunovSpectrum`.

    Batch statistics of each exponent (``mean`` is :attr:`LyapunovSpectrum.mean_exponents`),
    the top exponent's mean and spread over the batch, the Kaplan-Yorke dimension and the
    per-sample exponents, shape (B, k).
    """
    exps = np.asarray(res.exponents, dtype=float)
    B, k = exps.shape
    with np.errstate(invalid="ignore"):
        std = exps.std(axis=0) if B > 1 else np.zeros(k)
    top = exps[:, 0]
    ky = np.asarray(res.kaplan_yorke_dimension(), dtype=float)
    return {
        "kind": res.kind,
        "axis": res.axis,
        "k": int(k),
        "state_dim": int(res.state_dim),
        "batch": int(B),
        "steps": int(res.steps),
        "accumulated_steps": int(res.accumulated_steps),
        "burn_in": int(res.burn_in),
        "qr_every": int(res.qr_every),
        "exponents": exps.mean(axis=0),
        "exponents_std": std,
        "exponents_min": exps.min(axis=0),
        "exponents_max": exps.max(axis=0),
        "top": float(top.mean()),
        "top_std": float(std[0]),
        "top_min": float(top.min()),
        "top_max": float(top.max()),
        "kaplan_yorke_dimension": float(ky.mean()),
        "per_sample": exps,
    }


def spectrum_summary(res: Any) -> dict[str, Any]:
    """The numbers the CLI reports for a :class:`JacobianSpectrum`.

    Per step: the median, min and max over the batch of the spectral radius and of
    ``sigma_max`` (arrays of shape (n,)); over the steps: the median and range of those
    per-step medians, how many steps have a median above 1 (of those with a finite value:
    a width-changing layer has no spectral radius) and the mean
    ``log sigma_max`` (a per-step bound on the log growth of any vector). Matrix-free methods
    add their operator applications, largest residual and convergence.
    """
    out: dict[str, Any] = {
        "kind": res.kind,
        "axis": res.axis,
        "method": res.method,
        "steps": np.asarray(res.steps),
        "batch": int(np.shape(res.spectral_radius)[1]),
    }
    for name in ("spectral_radius", "sigma_max"):
        a = np.asarray(getattr(res, name), dtype=float)
        med = _rows(a, np.nanmedian)
        ok = med[np.isfinite(med)]
        out[name] = {"median": med, "min": _rows(a, np.nanmin), "max": _rows(a, np.nanmax)}
        out[name + "_summary"] = (
            {
                "median": float(np.median(ok)),
                "min": float(ok.min()),
                "max": float(ok.max()),
                "fraction_above_1": float(np.mean(ok > 1.0)),
                "above_1": int(np.count_nonzero(ok > 1.0)),
                "count": int(ok.size),
            }
            if ok.size
            else None
        )
    with np.errstate(divide="ignore"):
        log_sig = np.asarray(res.log_sigma_max, dtype=float)
    out["mean_log_sigma_max"] = float(np.mean(log_sig))
    if res.method != "exact":
        out["matrix_free"] = {
            "operator_applications": int(
                np.sum(res.radius_iterations) + np.sum(res.sigma_iterations)
            ),
            "max_residual": float(max(np.max(res.radius_residuals), np.max(res.sigma_residuals))),
            "converged": bool(np.all(res.converged)),
            "not_converged": int(np.size(res.converged) - np.count_nonzero(res.converged)),
        }
    return out


def singular_values_summary(res: Any) -> dict[str, Any]:
    """The numbers the CLI reports for a :class:`JacobianSingularValues`.

    :meth:`~JacobianSingularValues.isometry` and, per sample (shape (B,)), ``log10`` of the
    largest and smallest singular values and of the condition number; the batch medians of
    those, and the ``log10`` singular values themselves, shape (B, r).
    """
    l10 = np.asarray(res.log10_singular_values, dtype=float)
    B, r = l10.shape
    iso = res.isometry()
    with np.errstate(invalid="ignore"):
        cond = l10[:, 0] - l10[:, -1]
    return {
        "kind": res.kind,
        "depth": int(res.depth),
        "batch": int(B),
        "rank": int(r),
        "isometry": iso,
        "log10_mean_squared": iso["log_mean_squared"] / np.log(10.0),
        "log10_std_squared": iso["log_std_squared"] / np.log(10.0),
        "std_log10_singular": iso["std_log_singular"] / np.log(10.0),
        "log10_sigma_max": l10[:, 0],
        "log10_sigma_min": l10[:, -1],
        "log10_condition_number": cond,
        "median_log10_sigma_max": float(np.median(l10[:, 0])),
        "median_log10_sigma_min": float(np.median(l10[:, -1])),
        "median_log10_condition_number": float(np.median(cond)),
        "log10_singular_values": l10,
    }


def phase_grid(activation: Any, points: list[tuple[float, float]] | None = None) -> Any:
    """A phase diagram whose grid covers the critical line and the given points."""
    return require("phase_diagram_around")(activation, points or [])


def run_phase(
    activation: str, sigma_w2: float | None, sigma_b2: float, *, diagram: bool = True
) -> dict[str, Any]:
    """Critical line, the phase at a point and (``diagram``) the diagram, as text and JSON."""
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
    out: dict[str, Any] = {"json": doc, "text": "\n".join(lines)}
    if diagram:  # only a figure needs it (seconds of quadrature)
        out["diagram"] = phase_grid(activation, point)
    return out


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

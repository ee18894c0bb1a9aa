"""What the CLI and the demo report show of the Jacobian analyses and mean-field theory: the
runs with the CLI's defaults, their summaries, phase-diagram grids and the demo's extra figures.
The analyses are imported on first use (mean-field theory pulls in scipy)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "demo_extras",
    "demo_lyapunov",
    "lyapunov_summary",
    "run_lyapunov",
    "run_phase",
    "run_singular_values",
    "run_spectrum",
    "singular_values_summary",
    "spectrum_summary",
]


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
    from vgcore.analysis.lyapunov import lyapunov

    return lyapunov(model, x, k=k, burn_in=burn_in, qr_every=qr_every, progress=progress)


def run_spectrum(
    model: Any,
    x: np.ndarray,
    *,
    method: str = "auto",
    progress: Callable[[int, int], Any] | None = None,
) -> Any:
    """:func:`vgcore.jacobian_spectrum` (a :class:`JacobianSpectrum`, arrays of shape (n, B))."""
    from vgcore.analysis.spectrum import jacobian_spectrum

    return jacobian_spectrum(model, x, method=method, progress=progress)


def run_singular_values(
    model: Any, x: np.ndarray, *, progress: Callable[[int, int], Any] | None = None
) -> Any:
    """:func:`vgcore.jacobian_singular_values` (logs of shape (B, r))."""
    from vgcore.analysis.singular_values import jacobian_singular_values

    return jacobian_singular_values(model, x, progress=progress)


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
        # exponents the working precision resolves in every sample (LyapunovSpectrum.resolved)
        "resolved": np.asarray(res.resolved).all(axis=0),
        "resolution_limit": float(res.resolution_limit),
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


def phase_grid(
    activation: Any, points: list[tuple[float, float]] | None = None, *, correlation: bool = False
) -> Any:
    """A phase diagram whose grid covers the critical line and the given points.

    For a figure of ``chi_1``: the correlation map (``c*``, ``chi_c``, ``xi_c``; seconds of 2-D
    quadrature per activation) is solved only with ``correlation=True``.
    """
    from vgcore.theory.phases import phase_diagram_around

    return phase_diagram_around(activation, points or [], correlation=correlation)


def run_phase(
    activation: str, sigma_w2: float | None, sigma_b2: float, *, diagram: bool = True
) -> dict[str, Any]:
    """Critical line, the phase at a point and (``diagram``) the diagram, as text and JSON."""
    from vgcore.theory import critical_sigma_w2, mean_field

    crit = float(critical_sigma_w2(activation, sigma_b2))
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
        mf = mean_field(activation, sigma_w2, sigma_b2)
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
    if diagram:  # only a figure needs it
        out["diagram"] = phase_grid(activation, point)
    return out


#: Lyapunov exponents drawn per model in the demo report, and the samples they are run on.
DEMO_LYAPUNOV_K = 8
DEMO_LYAPUNOV_BATCH = 8


def demo_lyapunov(diagnoses: list[Any], inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Lyapunov spectra of ``DEMO_LYAPUNOV_K`` exponents (on the first
    ``DEMO_LYAPUNOV_BATCH`` samples) for the diagnoses that computed only the top exponent,
    each to be drawn in its model's section in place of the one-exponent figure."""
    out: dict[str, Any] = {}
    for d in diagnoses:
        lyap, x = getattr(d, "lyapunov", None), inputs.get(d.name)
        if lyap is None or x is None or np.shape(lyap.exponents)[-1] > 1:
            continue
        k = min(DEMO_LYAPUNOV_K, int(lyap.state_dim))
        batch_first = d.axis == "layer" or getattr(d.model, "batch_first", False)
        xb = x[:DEMO_LYAPUNOV_BATCH] if batch_first else x[:, :DEMO_LYAPUNOV_BATCH]
        try:
            res = run_lyapunov(d.model, xb, k=k)
        except (ValueError, MemoryError, RuntimeError):
            continue  # the figure then shows the diagnosis's top exponent
        caption = (
            f"{d.name}: Lyapunov spectrum (top {k} exponents per {d.axis}, natural log; "
            f"{np.shape(res.exponents)[0]} samples), and the convergence of the running estimates"
        )
        out[caption] = _ForModel(res, d.name, "lyapunov")
    return out


def demo_extras(diagnoses: list[Any], inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Figures for the demo report beyond the diagnoses' own.

    Lyapunov spectra of several exponents for each model (drawn in its section; ``inputs``
    maps a diagnosis name to its input),
    mean-field phase diagrams (one per activation of the plain MLPs, their points marked)
    and, for Gaussian-initialised plain MLPs, the measured per-layer gain against theory.
    """
    from vgcore.theory import compare_to_theory

    extras: dict[str, Any] = demo_lyapunov(diagnoses, inputs)
    # mean-field phase diagrams of the plain MLPs, one per activation, their points marked
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
        extras[f"Mean-field phase diagram ({act}), with {', '.join(d.name for d in ds)}"] = _Marked(
            diagram, pts, [d.name for d in ds]
        )
    for d in diagnoses:
        e = d.evidence
        if e.get("phase") is None:
            continue
        cmp = compare_to_theory(
            d.flow, e["sigma_w2"], e["sigma_b2"], burn_in=min(5, e["length"] - 1)
        )
        extras[f"Measured gradient gain per layer vs mean-field theory ({d.name})"] = cmp
    return extras


class _Marked:
    """A result with the points to mark on its figure (plotted by the report)."""

    def __init__(self, result: Any, points: list[tuple[float, float]], labels: list[str]) -> None:
        self.result, self.points, self.labels = result, points, labels

    def plot(self, **kw: Any) -> Any:
        from vgcore.plotting import plot_phase_diagram

        return plot_phase_diagram(self.result, point=self.points, labels=self.labels, **kw)


class _ForModel:
    """A result drawn in one model's section of a report (``section``: its diagnosis name),
    in place of that model's default figure of kind ``replaces`` (or as an extra one)."""

    def __init__(self, result: Any, section: str, replaces: str | None = None) -> None:
        self.result, self.section, self.replaces = result, section, replaces

    def plot(self, **kw: Any) -> Any:
        return self.result.plot(**kw)

"""Figures for every vgcore result (matplotlib, the optional ``plot`` extra).

Each function draws on a given Axes (or makes a new figure) and returns the Axes, so figures
compose::

    ax = vgcore.plotting.plot_gradient_flow([flow_sigmoid, flow_relu], labels=["sigmoid", "relu"])
    ax.figure.savefig("flow.png")

The result classes delegate here: ``flow.plot()``, ``diagnosis.plot()`` and so on. Norms are
drawn as ``log10`` values on a linear axis (a log scale that also shows 1e-500, which no float
can hold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "plot",
    "plot_diagnosis",
    "plot_grad_histograms",
    "plot_gradient_flow",
    "plot_lyapunov",
    "plot_phase_diagram",
    "plot_saturation",
    "plot_singular_values",
    "plot_spectral_radius",
    "plot_sweep",
    "plot_theory_comparison",
    "require_matplotlib",
]

_LOG10 = math.log(10.0)


def require_matplotlib() -> Any:
    """Import ``matplotlib.pyplot`` or raise ImportError saying how to install it."""
    try:
        import matplotlib

        if "matplotlib.pyplot" not in __import__("sys").modules:
            import os

            # Headless by default: an interactive backend only when one was asked for.
            if not os.environ.get("MPLBACKEND") and not os.environ.get("DISPLAY"):
                matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised without matplotlib only
        raise ImportError(
            "plotting needs matplotlib; install it with: pip install 'vgcore[plot]'"
        ) from exc
    return plt


def _axes(ax: Any = None, figsize: tuple[float, float] = (6.4, 4.0)) -> Any:
    if ax is not None:
        return ax
    plt = require_matplotlib()
    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _label_of(obj: Any, i: int) -> str:
    name = getattr(obj, "name", None)
    if isinstance(name, str) and name:
        return name
    model = getattr(obj, "model", None)
    return f"{type(model).__name__} #{i}" if model is not None else f"#{i}"


def _flow_of(obj: Any) -> Any:
    """A GradientFlow from a GradientFlow or a Diagnosis."""
    return getattr(obj, "flow", obj)


# ------------------------------------------------------------------------------------------
# gradient flow
def plot_gradient_flow(
    flows: Any,
    labels: Sequence[str] | None = None,
    *,
    ax: Any = None,
    relative: bool = False,
    cell: bool = False,
    threshold: float | None = 1e-6,
    title: str | None = None,
) -> Any:
    """Gradient norm per layer or time step (log10), several models overlaid.

    Parameters
    ----------
    flows : GradientFlow, Diagnosis, or a sequence of them
        Results of :func:`vgcore.gradient_flow` (or diagnoses, whose flow is drawn).
    labels : sequence of str, optional
        Legend entries (default: the diagnosis name or the model type).
    ax : matplotlib Axes, optional
    relative : bool
        Plot ``||dL/dh_i|| / ||dL/dh_out||`` so curves of different scale share the origin.
    cell : bool
        Also draw the LSTM cell-state gradient ``||dL/dc_t||`` (dashed).
    threshold : float or None
        With ``relative``, a horizontal line at this ratio (the vanishing threshold).
    title : str, optional

    Returns
    -------
    matplotlib Axes
    """
    items = list(flows) if isinstance(flows, (list, tuple)) else [flows]
    if not items:
        raise ValueError("flows must contain at least one result")
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"labels must have {len(items)} entries, got {len(labels)}")
    ax = _axes(ax)
    axes_kinds = set()
    for i, item in enumerate(items):
        flow = _flow_of(item)
        lg = np.asarray(flow.log_grad_norms, dtype=float) / _LOG10
        ref = lg[-1] if relative else 0.0
        x = np.arange(lg.size)
        label = labels[i] if labels is not None else _label_of(item, i)
        (line,) = ax.plot(x, lg - ref, label=label, lw=1.6)
        axes_kinds.add(flow.axis)
        if cell and flow.log_cell_grad_norms is not None:
            lc = np.asarray(flow.log_cell_grad_norms, dtype=float) / _LOG10
            ax.plot(x, lc - ref, ls="--", color=line.get_color(), lw=1.2, label=f"{label} (cell)")
    if relative and threshold is not None:
        ax.axhline(
            math.log10(threshold), color="0.4", ls=":", lw=1, label=f"{threshold:g} of output"
        )
    axis = axes_kinds.pop() if len(axes_kinds) == 1 else "layer / step"
    ax.set_xlabel(f"{axis} i (0 = input side)")
    what = "||dL/dh_i|| / ||dL/dh_out||" if relative else "||dL/dh_i||"
    ax.set_ylabel(f"log10 {what}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    if title:
        ax.set_title(title)
    return ax


def plot_grad_histograms(
    flow: Any,
    *,
    layers: Sequence[int] | None = None,
    bins: int = 60,
    ax: Any = None,
    max_curves: int = 6,
    title: str | None = None,
) -> Any:
    """Histograms of gradient magnitudes ``log10 |dL/dh_i|`` per layer or step.

    Needs the full gradients: run ``gradient_flow(..., keep_grads=True)``.

    Parameters
    ----------
    flow : GradientFlow or Diagnosis
    layers : sequence of int, optional
        Which ``h_i`` to show (default: up to ``max_curves`` evenly spaced, ends included).
    bins : int
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes
    """
    flow = _flow_of(flow)
    grads = flow.grads
    if grads is None:
        raise ValueError(
            "this result holds no per-unit gradients; run gradient_flow(..., keep_grads=True)"
        )
    n = len(grads)
    if layers is None:
        k = min(max_curves, n)
        layers = sorted({round(float(v)) for v in np.linspace(0, n - 1, k)})
    ax = _axes(ax)
    plt = require_matplotlib()
    cmap = plt.get_cmap("viridis")
    for j, i in enumerate(layers):
        if not 0 <= i < n:
            raise ValueError(f"layer index {i} is outside 0..{n - 1}")
        g = np.abs(np.asarray(grads[i], dtype=float)).ravel()
        g = g[g > 0]
        color = cmap(j / max(1, len(layers) - 1))
        if g.size == 0:
            ax.plot([], [], color=color, label=f"{flow.axis} {i}: all zero (underflow)")
            continue
        ax.hist(
            np.log10(g),
            bins=bins,
            histtype="step",
            density=True,
            color=color,
            lw=1.4,
            label=f"{flow.axis} {i}",
        )
    ax.set_xlabel("log10 |dL/dh| (per unit and sample)")
    ax.set_ylabel("density")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return ax


def plot_saturation(flows: Any, labels: Sequence[str] | None = None, *, ax: Any = None) -> Any:
    """Fraction of saturated units per layer or step, several models overlaid."""
    items = list(flows) if isinstance(flows, (list, tuple)) else [flows]
    ax = _axes(ax)
    for i, item in enumerate(items):
        flow = _flow_of(item)
        label = labels[i] if labels is not None else _label_of(item, i)
        ax.plot(np.arange(1, len(flow.saturation) + 1), flow.saturation, label=label)
    ax.set_xlabel("layer / step")
    ax.set_ylabel("saturated fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return ax


# ------------------------------------------------------------------------------------------
# diagnosis
def plot_diagnosis(diagnosis: Any, *, ax: Any = None, title: str | None = None) -> Any:
    """The measured gradient flow next to the flow with each checked fix applied.

    Curves are relative to the output gradient, with the 1e-6 vanishing threshold marked.

    Returns
    -------
    matplotlib Axes
    """
    items = [diagnosis.flow]
    labels = [f"as given ({diagnosis.verdict})"]
    for rec in diagnosis.recommendations:
        if rec.flow_after is not None and rec.flow_after is not diagnosis.flow:
            items.append(rec.flow_after)
            labels.append(f"{rec.fix} ({rec.verdict_after})")
    ax = plot_gradient_flow(items, labels, ax=ax, relative=True, threshold=diagnosis.ratio)
    ax.set_title(title if title is not None else diagnosis.name)
    return ax


# ------------------------------------------------------------------------------------------
# other analyses (duck-typed on the result attributes)
def _first_attr(obj: Any, names: Sequence[str]) -> Any:
    for n in names:
        v = getattr(obj, n, None)
        if v is not None:
            return v
    raise AttributeError(f"{type(obj).__name__} has none of the attributes {list(names)}")


def plot_spectral_radius(result: Any, *, ax: Any = None, title: str | None = None) -> Any:
    """Spectral radius of the per-step (or per-layer) Jacobian over time, log scale.

    Parameters
    ----------
    result : a :func:`vgcore.jacobian_spectrum` result
        Uses its per-step spectral radius (``spectral_radius``) and, when present, the
        largest singular value (``spectral_norm``) for comparison.
    """
    ax = _axes(ax)
    rho = np.asarray(_first_attr(result, ("spectral_radius", "spectral_radii", "radius")), float)
    steps = np.arange(1, rho.shape[-1] + 1)
    if rho.ndim == 2:  # (batch, steps): median and spread
        lo, med, hi = np.percentile(rho, [10, 50, 90], axis=0)
        ax.fill_between(steps, lo, hi, alpha=0.25, label="10-90% over the batch")
        rho = med
    ax.plot(steps, rho, label="spectral radius rho(J_t)")
    sn = getattr(result, "spectral_norm", None)
    if sn is not None:
        sn = np.asarray(sn, float)
        ax.plot(steps, sn if sn.ndim == 1 else np.median(sn, axis=0), ls="--", label="||J_t||_2")
    ax.axhline(1.0, color="0.4", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step / layer")
    ax.set_ylabel("Jacobian spectral radius")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return ax


def plot_lyapunov(result: Any, *, axes: Any = None, title: str | None = None) -> Any:
    """Lyapunov spectrum (left) and the running estimates' convergence (right).

    Parameters
    ----------
    result : a :func:`vgcore.lyapunov` result
        Uses ``exponents`` (k,) and, when present, ``history`` (n_checkpoints, k) with the
        running estimates (and ``history_steps``).
    axes : a pair of Axes, or one Axes (spectrum only), optional

    Returns
    -------
    ndarray of Axes (or the single Axes given)
    """
    exps = np.asarray(_first_attr(result, ("exponents", "spectrum", "lyapunov_exponents")), float)
    hist = None
    for name in ("history", "convergence", "running_exponents"):
        hist = getattr(result, name, None)
        if hist is not None:
            break
    if axes is None:
        plt = require_matplotlib()
        ncols = 2 if hist is not None else 1
        _, axs = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.8), layout="constrained")
        axes = np.atleast_1d(axs)
    single = not isinstance(axes, (list, tuple, np.ndarray))
    axs = [axes] if single else list(axes)
    ax0 = axs[0]
    ax0.plot(np.arange(1, exps.size + 1), exps, "o-", ms=3)
    ax0.axhline(0.0, color="0.4", ls=":", lw=1)
    ax0.set_xlabel("index i")
    ax0.set_ylabel("Lyapunov exponent lambda_i (per step)")
    ax0.grid(True, alpha=0.3)
    ax0.set_title(title or "Lyapunov spectrum")
    if hist is not None and len(axs) > 1:
        h = np.asarray(hist, float)
        if h.ndim == 1:
            h = h[:, None]
        xs = getattr(result, "history_steps", None)
        xs = np.arange(1, h.shape[0] + 1) if xs is None else np.asarray(xs)
        for j in range(min(h.shape[1], 8)):
            axs[1].plot(xs, h[:, j], lw=1.2, label=f"lambda_{j + 1}")
        axs[1].axhline(0.0, color="0.4", ls=":", lw=1)
        axs[1].set_xlabel("steps averaged")
        axs[1].set_ylabel("running estimate")
        axs[1].set_title("convergence")
        axs[1].grid(True, alpha=0.3)
        axs[1].legend(fontsize="x-small")
    return axes if single else np.asarray(axs)


def plot_singular_values(
    result: Any, *, ax: Any = None, bins: int = 60, title: str | None = None
) -> Any:
    """Density of the singular values of the input-output Jacobian (log10 axis).

    Parameters
    ----------
    result : a :func:`vgcore.jacobian_singular_values` result, or an array of singular values
        Uses ``singular_values`` (any shape; pooled) and, when present, a theoretical density
        ``theory_density`` as a pair ``(x, density)`` over ``log10 sigma``.
    """
    ax = _axes(ax)
    sv = np.asarray(
        result
        if isinstance(result, np.ndarray)
        else _first_attr(result, ("singular_values", "sv")),
        float,
    ).ravel()
    sv = sv[sv > 0]
    if sv.size == 0:
        raise ValueError("no positive singular values to plot")
    ax.hist(np.log10(sv), bins=bins, density=True, alpha=0.6, label="measured")
    th = getattr(result, "theory_density", None)
    if th is not None:
        ax.plot(np.asarray(th[0]), np.asarray(th[1]), "k-", lw=1.2, label="theory")
    ax.axvline(0.0, color="0.4", ls=":", lw=1)
    ax.set_xlabel("log10 singular value of the input-output Jacobian")
    ax.set_ylabel("density")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return ax


def plot_phase_diagram(
    result: Any,
    *,
    point: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
    labels: Sequence[str] | None = None,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Mean-field phase diagram: chi_1 over (sigma_w^2, sigma_b^2), the critical line, points.

    Parameters
    ----------
    result : a :func:`vgcore.theory.phase_diagram` result
        Uses ``sigma_w2`` (nw,), ``sigma_b2`` (nb,), ``chi1`` (nb, nw) and, when present, the
        critical line ``critical_sigma_w2`` (nb,).
    point : (sigma_w2, sigma_b2) or a sequence of them, optional
        The user's model(s), marked on the diagram.
    """
    ax = _axes(ax)
    sw = np.asarray(_first_attr(result, ("sigma_w2", "sigma_w2_grid")), float)
    sb = np.asarray(_first_attr(result, ("sigma_b2", "sigma_b2_grid")), float)
    chi = np.asarray(_first_attr(result, ("chi1", "chi_1", "chi")), float)
    if chi.shape == (sw.size, sb.size) and chi.shape != (sb.size, sw.size):
        chi = chi.T
    with np.errstate(divide="ignore"):
        lchi = np.log10(np.clip(chi, 1e-12, None))
    lim = min(1.0, max(0.25, float(np.nanmax(np.abs(lchi)))))
    mesh = ax.pcolormesh(sw, sb, lchi, cmap="RdBu_r", vmin=-lim, vmax=lim, shading="auto")
    cbar = ax.figure.colorbar(mesh, ax=ax)
    cbar.set_label("log10 chi_1")
    style = {"transform": ax.transAxes, "fontsize": "small", "va": "top"}
    ax.text(0.02, 0.55, "ordered:\nvanishing", color="navy", ha="left", **style)
    ax.text(0.98, 0.55, "chaotic:\nexploding", color="darkred", ha="right", **style)
    crit = getattr(result, "critical_sigma_w2", None)
    if crit is not None:
        ax.plot(np.asarray(crit, float), sb, "k-", lw=2, label="critical line chi_1 = 1")
    else:
        ax.contour(sw, sb, lchi, levels=[0.0], colors="k", linewidths=2)
    if point is not None:
        pts = [point] if np.ndim(point) == 1 else list(point)  # type: ignore[arg-type]
        markers = "*oDsv^<>"
        for i, (w, b) in enumerate(pts):
            lab = labels[i] if labels is not None and i < len(labels) else "your model"
            ax.plot(
                [w],
                [b],
                markers[i % len(markers)],
                ms=12 if i == 0 else 8,
                mec="k",
                mfc="gold",
                label=lab,
            )
    act = getattr(result, "activation", None)
    ax.set_xlabel("sigma_w^2")
    ax.set_ylabel("sigma_b^2")
    ax.set_title(
        title or (f"mean-field phase diagram ({act})" if act else "mean-field phase diagram")
    )
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize="small", loc="upper left")
    return ax


def plot_theory_comparison(result: Any, *, ax: Any = None, title: str | None = None) -> Any:
    """Measured per-layer gradient gain against the mean-field prediction ``log chi_1``.

    Parameters
    ----------
    result : a :func:`vgcore.theory.compare_to_theory` result
        Uses ``layers``, ``measured_log_gain`` (log of the squared-norm gain per layer),
        ``theory_log_gain`` and ``burn_in``.
    """
    ax = _axes(ax)
    layers = np.asarray(result.layers)
    measured = np.asarray(result.measured_log_gain, float)
    ax.plot(layers, measured, "o-", ms=3, lw=1.2, label="measured")
    ax.axhline(
        float(result.theory_log_gain), color="k", ls="--", lw=1.5, label="mean field: log chi_1"
    )
    burn = int(getattr(result, "burn_in", 0))
    if burn > 0:
        ax.axvspan(layers[0] - 0.5, burn + 0.5, color="0.85", alpha=0.6, label="burn-in")
    ax.set_xlabel("layer l")
    ax.set_ylabel("log (||dL/dh_{l-1}||^2 / ||dL/dh_l||^2)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    act = getattr(result, "activation", "")
    ax.set_title(title or f"gradient gain per layer vs mean-field theory ({act})")
    return ax


def plot_sweep(
    df: Any,
    x: str,
    y: str,
    *,
    hue: str | None = None,
    ax: Any = None,
    logy: bool = False,
) -> Any:
    """A sweep's metric ``y`` against setting ``x`` (mean and min-max over seeds), per ``hue``.

    Parameters
    ----------
    df : pandas DataFrame from :func:`vgcore.sweep`
    x, y : column names
    hue : column name, optional
        One curve per value.
    """
    ax = _axes(ax)
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    groups = [(None, ok)] if hue is None else list(ok.groupby(hue, sort=True))
    for key, g in groups:
        stats = g.groupby(x, sort=True)[y].agg(["mean", "min", "max"])
        xs = stats.index.to_numpy()
        (line,) = ax.plot(
            xs, stats["mean"], "o-", ms=3, label=None if key is None else f"{hue}={key}"
        )
        ax.fill_between(xs, stats["min"], stats["max"], alpha=0.2, color=line.get_color())
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(True, alpha=0.3)
    if hue is not None:
        ax.legend(fontsize="small")
    return ax


# ------------------------------------------------------------------------------------------
def plot(result: Any, **kw: Any) -> Any:
    """Draw any vgcore result with its default figure (what ``result.plot()`` does)."""
    name = type(result).__name__
    if name == "GradientFlow":
        return plot_gradient_flow(result, **kw)
    if name == "Diagnosis":
        return plot_diagnosis(result, **kw)
    if (
        isinstance(result, (list, tuple))
        and result
        and all(type(r).__name__ in ("GradientFlow", "Diagnosis") for r in result)
    ):
        return plot_gradient_flow(list(result), **kw)
    if hasattr(result, "exponents"):
        return plot_lyapunov(result, **kw)
    if hasattr(result, "theory_log_gain"):
        return plot_theory_comparison(result, **kw)
    if hasattr(result, "chi1") and np.ndim(result.chi1) == 2:
        return plot_phase_diagram(result, **kw)
    if hasattr(result, "spectral_radius"):
        return plot_spectral_radius(result, **kw)
    if hasattr(result, "singular_values"):
        return plot_singular_values(result, **kw)
    if callable(getattr(result, "plot", None)):
        return result.plot(**kw)
    raise TypeError(f"don't know how to plot a {name}")

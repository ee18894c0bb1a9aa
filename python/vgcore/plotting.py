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
    "model_label",
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
            "plotting needs matplotlib, a dependency of vgcore: pip install 'vgcore[plot]'"
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


def model_label(result: Any) -> str | None:
    """A short description of the model behind a result, for figure titles.

    ``"MLP tanh, 50 layers of width 128"``, ``"MLP tanh residual, 50 layers of width 128"``,
    ``"RNN tanh, hidden size 128, 200 steps"``; None when the result holds no model.
    """
    m = getattr(result, "model", None)
    if m is None:
        return None
    kind = getattr(m, "kind", None)
    if kind == "mlp":
        acts = {str(a) for a in getattr(m, "activations", [])}
        act = acts.pop() if len(acts) == 1 else "mixed activations"
        extras = sorted(set(getattr(m, "blocks", [])) - {"plain"})
        extras += sorted({n for n in getattr(m, "norms", []) if n})
        sizes = list(getattr(m, "sizes", []))
        shape = (
            f"width {sizes[0]}"
            if len(set(sizes)) == 1
            else "widths "
            + ", ".join(str(v) for v in sizes[:4])
            + (", ..." if len(sizes) > 4 else "")
        )
        head = " ".join(["MLP", act, *extras])
        return f"{head}, {m.depth} layers of {shape}"
    name = type(m).__name__
    nl = getattr(m, "nonlinearity", None)
    head = f"{name} {nl}" if nl else name
    out = f"{head}, hidden size {getattr(m, 'hidden_size', '?')}"
    steps = getattr(result, "steps", None)
    if isinstance(steps, (int, np.integer)) and getattr(result, "axis", "step") == "step":
        out += f", {int(steps)} steps"
    elif getattr(result, "depth", None) is not None and kind != "mlp":
        out += f", {int(result.depth)} steps"
    return out


def _titled(what: str, result: Any, extra: str = "") -> str:
    label = model_label(result)
    return f"{what}{extra}: {label}" if label else f"{what}{extra}"


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
    # A stacked recurrent result draws one line per layer (and direction).
    curves = []
    for i, item in enumerate(items):
        flow = _flow_of(item)
        label = labels[i] if labels is not None else _label_of(item, i)
        if getattr(flow, "stacked", False):
            curves += [(f"{label}, {name}", flow.layer(k, d)) for name, k, d in flow.layer_names()]
        else:
            curves.append((label, flow))
    for label, flow in curves:
        lg = np.asarray(flow.log_grad_norms, dtype=float) / _LOG10
        ref = lg[-1] if relative else 0.0
        x = np.arange(lg.size)
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

    Needs the full gradients: run ``gradient_flow(..., keep_grads=True)``. The y-axis is set
    by the hidden layers / steps: the output side's gradient is often a narrow spike (the loss
    gradient itself) that would flatten every other curve; when its peak is cut, its legend
    entry says so and gives the peak.

    Parameters
    ----------
    flow : GradientFlow or Diagnosis
    layers : sequence of int, optional
        Which ``h_i`` to show (default: up to ``max_curves`` evenly spaced, ends included).
    bins : int
        Bins per curve (each over its own range).
    ax : matplotlib Axes, optional
    max_curves : int
        Most curves drawn when ``layers`` is not given.
    title : str, optional

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
    for i in layers:
        if not 0 <= i < n:
            raise ValueError(f"layer index {i} is outside 0..{n - 1}")
    logs = {}
    for i in layers:
        g = np.abs(np.asarray(grads[i], dtype=float)).ravel()
        g = g[g > 0]
        logs[i] = np.log10(g) if g.size else None
    n_finite = sum(v is not None for v in logs.values())
    # The output side's gradient is often one spike (e.g. the loss gradient itself); the
    # y-axis is set by the other layers so their shapes stay readable.
    inner_peak, clipped = 0.0, []
    dens, edges = {}, {}
    for i, v in logs.items():
        if v is None:
            continue
        dens[i], edges[i] = np.histogram(v, bins=bins, density=True)
        if i != n - 1 or n_finite == 1:
            inner_peak = max(inner_peak, float(dens[i].max()))
    for j, i in enumerate(layers):
        color = cmap(j / max(1, len(layers) - 1))
        if i not in dens:
            ax.plot([], [], color=color, label=f"{flow.axis} {i}: all zero (underflow)")
            continue
        label = f"{flow.axis} {i}"
        peak = float(dens[i].max())
        if inner_peak > 0 and peak > 1.15 * inner_peak:
            label += f" (peak {peak:.3g}, off the axis)"
            clipped.append(i)
        ax.stairs(dens[i], edges[i], color=color, lw=1.4, label=label)
    if clipped and inner_peak > 0:
        ax.set_ylim(0.0, 1.15 * inner_peak)
    ax.set_xlabel("log10 |dL/dh| (per unit and sample)")
    ax.set_ylabel("density (per unit of log10)")
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
    Fixes measured not to help are labelled so; clipping, which bounds the update norm and
    leaves the flow unchanged, is drawn dashed over the measured curve.

    Returns
    -------
    matplotlib Axes
    """
    items = [diagnosis.flow]
    labels = [f"as given ({diagnosis.verdict})"]
    clip_lines = []
    for rec in diagnosis.fixes:
        if rec.bounds_update and rec.checked:
            clip_lines.append(
                f"{rec.fix}: update norm 10^{rec.before:.1f} -> 10^{rec.after:.1f}, flow unchanged"
            )
        elif rec.flow_after is not None and rec.flow_after is not diagnosis.flow:
            items.append(rec.flow_after)
            tag = rec.verdict_after if rec.helps else "measured not to help"
            labels.append(f"{rec.fix} ({tag})")
    ax = plot_gradient_flow(items, labels, ax=ax, relative=True, threshold=diagnosis.ratio)
    if clip_lines:
        line = ax.get_lines()[0]
        ax.plot(
            line.get_xdata(),
            line.get_ydata(),
            linestyle="--",
            color="black",
            linewidth=1,
            label="; ".join(clip_lines),
        )
        ax.legend(fontsize="small")
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


def _rows_stat(a: np.ndarray, fn: Any, *args: Any) -> np.ndarray:
    """``fn(a, *args, axis=1)`` ignoring NaN; NaN without a warning for an all-NaN row."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(fn(a, *args, axis=1), dtype=float)


def _band_label(band: Any, what: str) -> str:
    if band == "minmax":
        return f"min-max over the {what}"
    lo, hi = band
    return f"{100 * lo:g}-{100 * hi:g}% over the {what}"


def _band_rows(a: np.ndarray, band: Any) -> tuple[np.ndarray, np.ndarray]:
    if band == "minmax":
        return _rows_stat(a, np.nanmin), _rows_stat(a, np.nanmax)
    lo, hi = band
    if not 0 <= lo < hi <= 1:
        raise ValueError(
            f"band must be 'minmax', None or quantiles (lo, hi) in [0, 1], got {band!r}"
        )
    return _rows_stat(a, np.nanquantile, lo), _rows_stat(a, np.nanquantile, hi)


def _finite_or_nan(a: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(a), a, np.nan)


def plot_spectral_radius(
    result: Any,
    *,
    ax: Any = None,
    band: Any = "minmax",
    sigma_max: bool = True,
    title: str | None = None,
) -> Any:
    """Spectral radius (and largest singular value) of each step's / layer's Jacobian.

    The batch median per step on a log axis, with a band over the batch and a reference line at
    1 (above it the Jacobian expands some direction).

    Parameters
    ----------
    result : JacobianSpectrum
        A :func:`vgcore.jacobian_spectrum` result: ``spectral_radius`` and ``sigma_max`` of
        shape (n, B), ``steps`` (n,). (Any object with those attributes; a 1-D
        ``spectral_radius`` is one sample.) MLP rows are drawn at layer ``steps + 1`` (the
        Jacobian of layer l maps ``h_(l-1)`` to ``h_l``), recurrent rows at time step ``steps``.
    ax : matplotlib Axes, optional
    band : "minmax", None or a pair of quantiles, e.g. ``(0.1, 0.9)``
        The spread over the batch drawn around each median.
    sigma_max : bool
        Also draw ``sigma_max`` (dashed), the per-step bound on the gain of any vector.
    title : str, optional

    Returns
    -------
    matplotlib Axes
    """
    ax = _axes(ax)
    rho = np.asarray(_first_attr(result, ("spectral_radius",)), float)
    if rho.ndim == 1:
        rho = rho[:, None]
    n, B = rho.shape
    steps = getattr(result, "steps", None)
    xs = np.arange(n) if steps is None else np.asarray(steps)
    axis = getattr(result, "axis", None)
    if axis == "layer":
        xs = xs + 1
        ax.set_xlabel("layer l (Jacobian d h_l / d h_(l-1))")
    elif axis == "step":
        ax.set_xlabel("time step t (Jacobian d h_(t+1) / d h_t)")
    else:
        ax.set_xlabel("step / layer")
    curves = [("spectral radius", rho, "-")]
    sig = getattr(result, "sigma_max", None) if sigma_max else None
    if sig is not None:
        sig = np.asarray(sig, float)
        curves.append(("sigma_max", sig[:, None] if sig.ndim == 1 else sig, "--"))
    for label, a, ls in curves:
        med = _rows_stat(a, np.nanmedian)
        if not np.isfinite(med).any():  # e.g. no spectral radius for width-changing layers
            continue
        (line,) = ax.plot(
            xs,
            med,
            ls=ls,
            lw=1.6,
            marker="o" if n <= 60 else None,  # isolated finite points stay visible
            ms=3,
            label=f"{label} (batch median)" if B > 1 else label,
        )
        if B > 1 and band is not None:
            lo, hi = _band_rows(a, band)
            ax.fill_between(
                xs,
                lo,
                hi,
                color=line.get_color(),
                alpha=0.2,
                lw=0,
                label=f"{label}: {_band_label(band, f'{B} samples')}",
            )
    ax.axhline(1.0, color="0.3", ls=":", lw=1, label="1 (neutral)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_yscale("log")
    ax.set_ylabel("|eigenvalue|, singular value (log10 scale)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="small")
    method = getattr(result, "method", None)
    ax.set_title(
        title or _titled("Jacobian spectrum", result, f" ({method})" if method else ""),
        fontsize="medium",
    )
    return ax


def plot_lyapunov(
    result: Any, *, ax: Any = None, top: int | None = None, title: str | None = None
) -> Any:
    """Lyapunov spectrum (left) and the convergence of the running estimates (right).

    Left: with several exponents, the batch-mean exponent against its index, each sample's
    exponents as faint dots and a zero line (above it: chaos); with one exponent (``k = 1``),
    each sample's exponent against the sample index, with the batch mean and its spread.
    Right: the batch-mean running estimate of each exponent against the steps taken, with
    its min-max band over the batch, every exponent in the legend.

    Parameters
    ----------
    result : LyapunovSpectrum
        A :func:`vgcore.lyapunov` result: ``exponents`` (B, k) and, when present,
        ``running`` (n_records, B, k) with ``record_steps`` (n_records,). (Any object with
        those attributes; a 1-D ``exponents`` is one sample.)
    ax : a pair of Axes, or one Axes (the spectrum only), optional
    top : int, optional
        How many running estimates to draw (default: all ``k``).
    title : str, optional
        Title of the spectrum panel (default: names the model).

    Returns
    -------
    ndarray of Axes (or the single Axes given)
    """
    exps = np.asarray(_first_attr(result, ("exponents",)), float)
    if exps.ndim == 1:
        exps = exps[None, :]
    B, k = exps.shape
    running = getattr(result, "running", None)
    if ax is None:
        plt = require_matplotlib()
        ncols = 2 if running is not None else 1
        _, axs = plt.subplots(1, ncols, figsize=(5.4 * ncols, 3.9), layout="constrained")
        ax = np.atleast_1d(axs)
    single = not isinstance(ax, (list, tuple, np.ndarray))
    axs = [ax] if single else list(ax)
    per = getattr(result, "axis", "step")
    unit = f"ln growth per {per}"
    ax0 = axs[0]
    if k > 1:
        idx = np.arange(1, k + 1)
        if B > 1:
            ax0.scatter(
                np.broadcast_to(idx, exps.shape).ravel(),
                _finite_or_nan(exps).ravel(),
                s=9,
                color="0.55",
                alpha=0.35,
                lw=0,
                label=f"each of {B} samples",
            )
        ax0.plot(idx, exps.mean(axis=0), "o-", ms=4, lw=1.4, label="batch mean" if B > 1 else None)
        ax0.set_xlabel("index i")
        ax0.set_xticks(idx)
        ax0.set_ylabel(f"lambda_i ({unit})")
        default = f"Lyapunov spectrum ({k} exponents)"
    else:
        # one exponent: its spread over the batch is what there is to see
        top1 = _finite_or_nan(exps[:, 0])
        samples = np.arange(1, B + 1)
        ax0.plot(samples, top1, "o", ms=4, color="C0", label="each sample")
        mean = float(np.nanmean(top1)) if np.isfinite(top1).any() else math.nan
        if np.isfinite(mean):
            sd = float(np.nanstd(top1))
            ax0.axhline(mean, color="C0", lw=1.4, label=f"batch mean {mean:+.3g}")
            if B > 1 and sd > 0:
                ax0.axhspan(mean - sd, mean + sd, color="C0", alpha=0.15, lw=0, label="+-1 std")
        ax0.set_xlabel("sample")
        ax0.xaxis.get_major_locator().set_params(integer=True)
        ax0.set_ylabel(f"lambda_1 ({unit})")
        default = "top Lyapunov exponent per sample"
    ax0.axhline(0.0, color="0.3", ls=":", lw=1)
    ax0.grid(True, alpha=0.3)
    ax0.set_title(title or _titled(default, result), fontsize="medium")
    if B > 1 or k == 1:
        ax0.legend(fontsize="small")
    if running is not None and len(axs) > 1:
        run = np.asarray(running, float)
        if run.ndim == 2:
            run = run[:, None, :]
        rs = getattr(result, "record_steps", None)
        xs = np.arange(1, run.shape[0] + 1) if rs is None else np.asarray(rs)
        ax1 = axs[1]
        n_draw = run.shape[2] if top is None else min(int(top), run.shape[2])
        for j in range(n_draw):
            r = _finite_or_nan(run[:, :, j])
            (line,) = ax1.plot(xs, _rows_stat(r, np.nanmean), lw=1.3, label=f"lambda_{j + 1}")
            if run.shape[1] > 1:
                ax1.fill_between(
                    xs,
                    _rows_stat(r, np.nanmin),
                    _rows_stat(r, np.nanmax),
                    color=line.get_color(),
                    alpha=0.15 if n_draw <= 4 else 0.07,
                    lw=0,
                )
        ax1.axhline(0.0, color="0.3", ls=":", lw=1)
        ax1.set_xlabel(f"{per}s taken")
        ax1.set_ylabel(f"running estimate ({unit})")
        ax1.set_title("convergence (batch mean, min-max band)", fontsize="medium")
        ax1.grid(True, alpha=0.3)
        ax1.legend(fontsize="x-small", ncol=2 if n_draw > 4 else 1)
    return ax if single else np.asarray(axs, dtype=object)


def plot_singular_values(
    result: Any,
    *,
    ax: Any = None,
    bins: int = 60,
    annotate: bool = True,
    title: str | None = None,
) -> Any:
    """Density of ``log10`` of the singular values of the input-output Jacobian.

    The values of all samples are pooled into one histogram, with a line at ``sigma = 1`` and
    (for a result) the dynamical-isometry summary written on the axes.

    Parameters
    ----------
    result : JacobianSingularValues, or an array of singular values
        A :func:`vgcore.jacobian_singular_values` result; its ``log_singular_values`` (B, r)
        are used directly, so values far outside the float64 range are drawn too. An object
        with only ``singular_values``, or a plain array, also works; a ``theory_density``
        attribute ``(log10 sigma, density)`` is drawn as a curve.
    ax : matplotlib Axes, optional
    bins : int
    annotate : bool
        Write :meth:`JacobianSingularValues.isometry` (mean and spread of ``sigma^2``, spread
        of ``log10 sigma``) on the axes.
    title : str, optional

    Returns
    -------
    matplotlib Axes
    """
    ax = _axes(ax)
    iso = None
    raw: np.ndarray | None
    if isinstance(result, (np.ndarray, list, tuple)):
        raw = np.asarray(result, float)
    else:
        ls = getattr(result, "log_singular_values", None)
        raw = (
            None if ls is not None else np.asarray(_first_attr(result, ("singular_values",)), float)
        )
        if annotate and callable(getattr(result, "isometry", None)):
            iso = result.isometry()
    if raw is not None:
        shape = raw.shape
        with np.errstate(divide="ignore", invalid="ignore"):
            l10 = np.log10(np.where(raw > 0, raw, np.nan))
    else:
        l10 = np.asarray(ls, float) / _LOG10
        shape = l10.shape
    vals = l10[np.isfinite(l10)].ravel()
    if vals.size == 0:
        raise ValueError("no positive singular values to plot")
    what = f"{shape[1]} values x {shape[0]} samples" if len(shape) == 2 else f"{vals.size} values"
    ax.hist(vals, bins=bins, density=True, alpha=0.6, label=f"measured ({what})")
    th = getattr(result, "theory_density", None)
    if th is not None:
        ax.plot(np.asarray(th[0]), np.asarray(th[1]), "k-", lw=1.2, label="theory")
    ax.axvline(0.0, color="0.3", ls=":", lw=1, label="sigma = 1")
    if iso is not None:
        text = (
            f"mean sigma^2 = 10^{iso['log_mean_squared'] / _LOG10:+.2f}  (isometry: 1)\n"
            f"std sigma^2 = 10^{iso['log_std_squared'] / _LOG10:+.2f}  (isometry: 0)\n"
            f"std log10 sigma = {iso['std_log_singular'] / _LOG10:.3g}  (isometry: 0)"
        )
        ax.text(
            0.02,
            0.97,
            text,
            transform=ax.transAxes,
            va="top",
            ha="left",
            fontsize="small",
            bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8, "ec": "0.7"},
        )
    depth = getattr(result, "depth", None)
    ax.set_xlabel(
        "log10 singular value of the input-output Jacobian"
        + (
            ""
            if depth is None
            else f" ({depth} {'layers' if getattr(result, 'kind', '') == 'mlp' else 'steps'})"
        )
    )
    ax.set_ylabel("density (per unit of log10 sigma)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper right")
    ax.set_title(
        title or _titled("singular values of the input-output Jacobian", result),
        fontsize="medium",
    )
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

    The colour scale is centred on ``chi_1 = 1`` (white) and stretched separately on each
    side, so the ordered (blue) and chaotic (red) sides both reach full colour however
    unequal their ranges of ``log10 chi_1``. Marked points are always inside the axes.

    Parameters
    ----------
    result : a :func:`vgcore.theory.phase_diagram` result
        Uses ``sigma_w2`` (nw,), ``sigma_b2`` (nb,), ``chi1`` (nb, nw) and, when present, the
        critical line ``critical_sigma_w2`` (nb,).
    point : (sigma_w2, sigma_b2) or a sequence of them, optional
        The user's model(s), marked on the diagram.
    labels : sequence of str, optional
        Legend entries of the points.
    ax : matplotlib Axes, optional
    title : str, optional

    Returns
    -------
    matplotlib Axes
    """
    from matplotlib.colors import TwoSlopeNorm

    ax = _axes(ax)
    sw = np.asarray(_first_attr(result, ("sigma_w2", "sigma_w2_grid")), float)
    sb = np.asarray(_first_attr(result, ("sigma_b2", "sigma_b2_grid")), float)
    chi = np.asarray(_first_attr(result, ("chi1", "chi_1", "chi")), float)
    if chi.shape == (sw.size, sb.size) and chi.shape != (sb.size, sw.size):
        chi = chi.T
    with np.errstate(divide="ignore", invalid="ignore"):
        lchi = np.log10(np.clip(chi, 1e-12, None))
    finite = lchi[np.isfinite(lchi)]
    # each side of chi_1 = 1 gets the full half of the colour map (capped at 10x either way)
    lo = min(-0.05, max(-1.0, float(finite.min(initial=0.0))))
    hi = max(0.05, min(1.0, float(finite.max(initial=0.0))))
    norm = TwoSlopeNorm(vmin=lo, vcenter=0.0, vmax=hi)
    mesh = ax.pcolormesh(sw, sb, lchi, cmap="RdBu_r", norm=norm, shading="auto")
    cbar = ax.figure.colorbar(mesh, ax=ax, extend="both")
    # ticks on both halves (one locator over the whole range would leave the shorter bare)
    from matplotlib.ticker import MaxNLocator

    loc = MaxNLocator(nbins=4)
    ticks = [t for t in loc.tick_values(lo, 0.0) if lo <= t < 0.0]
    ticks += [t for t in loc.tick_values(0.0, hi) if 0.0 <= t <= hi]
    cbar.set_ticks(ticks)
    cbar.set_label("log10 chi_1 (per-layer gradient gain, squared)")
    crit = getattr(result, "critical_sigma_w2", None)
    if crit is not None:
        ax.plot(np.asarray(crit, float), sb, "k-", lw=2, label="critical line chi_1 = 1")
    else:
        ax.contour(sw, sb, lchi, levels=[0.0], colors="k", linewidths=2)
    pts: list[tuple[float, float]] = []
    if point is not None:
        pts = [point] if np.ndim(point) == 1 else list(point)  # type: ignore[list-item,arg-type]
        markers = "*oDsv^<>"
        for i, (w, b) in enumerate(pts):
            lab = labels[i] if labels is not None and i < len(labels) else "your model"
            ax.plot(
                [w],
                [b],
                markers[i % len(markers)],
                ms=14 if i == 0 else 9,
                mec="k",
                mfc="gold",
                label=lab,
                zorder=5,
                clip_on=False,
            )
    # limits with a margin, so markers on an edge (sigma_b^2 = 0 is common) stay whole
    xs = [sw.min(), sw.max(), *(float(p[0]) for p in pts if np.isfinite(p[0]))]
    ys = [sb.min(), sb.max(), *(float(p[1]) for p in pts if np.isfinite(p[1]))]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    mx, my = 0.04 * (x1 - x0 or 1.0), 0.05 * (y1 - y0 or 1.0)
    ax.set_xlim(x0 - mx, x1 + mx)
    ax.set_ylim(y0 - my, y1 + my)
    ax.set_facecolor("0.85")  # outside the computed grid (e.g. sigma_b^2 < 0)
    box = {"boxstyle": "round,pad=0.3", "fc": "white", "ec": "0.6", "alpha": 0.85}
    style = {"transform": ax.transAxes, "fontsize": "small", "va": "center", "bbox": box}
    ax.text(0.03, 0.5, "ordered:\ngradients vanish", color="navy", ha="left", **style)
    ax.text(0.97, 0.5, "chaotic:\ngradients explode", color="darkred", ha="right", **style)
    act = getattr(result, "activation", None)
    ax.set_xlabel("sigma_w^2 (weight variance x fan-in)")
    ax.set_ylabel("sigma_b^2 (bias variance)")
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
        float(result.theory_log_gain), color="k", ls="--", lw=1.5, label="mean field: ln chi_1"
    )
    burn = int(getattr(result, "burn_in", 0))
    if burn > 0:
        ax.axvspan(layers[0] - 0.5, burn + 0.5, color="0.85", alpha=0.6, label="burn-in")
    ax.set_xlabel("layer l")
    ax.set_ylabel("ln (||dL/dh_{l-1}||^2 / ||dL/dh_l||^2)")
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
    ax.set_ylabel(f"{y} (log10 scale)" if logy else y)
    ax.grid(True, alpha=0.3)
    if hue is not None:
        ax.legend(fontsize="small")
    return ax


# ------------------------------------------------------------------------------------------
def plot(result: Any, **kw: Any) -> Any:
    """Draw any vgcore result with its default figure (what ``result.plot()`` does).

    Results with a ``plot`` method (Lyapunov spectra, Jacobian spectra and singular values,
    theory comparisons, phase diagrams) are drawn by it; gradient flows and diagnoses by
    :func:`plot_gradient_flow` / :func:`plot_diagnosis`; other objects by their attributes.
    """
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
    if name in _RESULT_PLOTS and callable(getattr(result, "plot", None)):
        return result.plot(**kw)
    if hasattr(result, "exponents"):
        return plot_lyapunov(result, **kw)
    if hasattr(result, "theory_log_gain"):
        return plot_theory_comparison(result, **kw)
    if hasattr(result, "chi1") and np.ndim(result.chi1) == 2:
        return plot_phase_diagram(result, **kw)
    if hasattr(result, "spectral_radius"):
        return plot_spectral_radius(result, **kw)
    if hasattr(result, "log_singular_values") or hasattr(result, "singular_values"):
        return plot_singular_values(result, **kw)
    if callable(getattr(result, "plot", None)):
        return result.plot(**kw)
    raise TypeError(f"don't know how to plot a {name}")


#: Result classes whose own ``plot`` method :func:`plot` calls.
_RESULT_PLOTS = frozenset(
    {
        "MeanField",
        "LyapunovSpectrum",
        "JacobianSpectrum",
        "JacobianSingularValues",
        "TheoryComparison",
        "PhaseDiagram",
    }
)

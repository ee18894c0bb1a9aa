"""Evidence from a measured gradient flow: the verdict and its thresholds, unit counts, the
Lyapunov regime and the mean-field phase of the weight scale (with its scope)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vgcore import _fixes
from vgcore.activations import Activation
from vgcore.analysis.gradient_flow import GradientFlow
from vgcore.models import MLP, Model, RecurrentModel
from vgcore.models.base import narrow

VERDICTS = ("vanishing", "exploding", "healthy")


#: Average decades per layer / step at or beyond which a total change of at least
#: RATE_MIN_DECADES decades is vanishing / exploding (10x every 10 layers).
RATE_DECADES = 0.1


#: Smallest total change (decades, input side against output) the rate rule applies to (100x).
RATE_MIN_DECADES = 2.0


_LOG10 = math.log(10.0)


#: Critical sigma_w2 at sigma_b2 = 0 where it has a closed form (used without vgcore.theory).
_CRITICAL_SW2 = {"identity": 1.0, "tanh": 1.0, "relu": 2.0, "selu": 1.0}


# measurements
def _rel_log10(flow: GradientFlow) -> np.ndarray:
    """``log10 ||dL/dh_i|| - log10 ||dL/dh_out||`` (i = 0..n)."""
    lg = np.asarray(flow.log_grad_norms, dtype=np.float64) / _LOG10
    if not np.isfinite(lg[-1]):
        raise ValueError(
            "the gradient at the output is zero, so there is nothing to propagate; give inputs "
            "that produce a nonzero output (the default loss is 0.5 * ||y||^2)"
        )
    with np.errstate(invalid="ignore"):
        return lg - lg[-1]


def _spread(flow: GradientFlow) -> float:
    rel = _rel_log10(flow)
    finite = rel[np.isfinite(rel)]
    if finite.size < rel.size:  # an exact zero gradient: vanished beyond any float
        return math.inf
    return float(np.max(np.abs(finite)))


def _crossing(rel: np.ndarray, threshold: float, above: bool) -> int | None:
    """Smallest distance from the output at which rel crosses the threshold (decades)."""
    back = rel[::-1]
    hit = np.nonzero(back > threshold if above else back < threshold)[0]
    return int(hit[0]) if hit.size else None


def verdict_thresholds(ratio: float = 1e-6, axis: str = "layer") -> str:
    """The verdict thresholds in words (printed with every diagnosis)."""
    dec = -math.log10(ratio)
    return (
        f"vanishing (exploding) when the gradient falls below 10^-{dec:g} (rises above "
        f"10^+{dec:g}) x its output value at some {axis}, or ends at least "
        f"{RATE_MIN_DECADES:g} decades below (above) it at the input side at an average of "
        f"{RATE_DECADES:g} decades per {axis} or more; healthy otherwise"
    )


def _verdict(flow: GradientFlow, ratio: float) -> str:
    rel = _rel_log10(flow)
    dec = -math.log10(ratio)
    if _crossing(rel, dec, above=True) is not None:
        return "exploding"
    if _crossing(rel, -dec, above=False) is not None:
        return "vanishing"
    n = rel.size - 1
    gain = float(rel[0])
    if n > 0 and abs(gain) >= RATE_MIN_DECADES and abs(gain) / n >= RATE_DECADES:
        return "exploding" if gain > 0 else "vanishing"
    return "healthy"


def _slope(rel: np.ndarray) -> float:
    """Least-squares growth rate of the gradient with distance from the output (decades)."""
    back = rel[::-1]
    ok = np.isfinite(back)
    if not ok.all():  # the gradient became exactly zero: it vanished faster than any rate
        return -math.inf
    lags = np.arange(back.size)[ok]
    vals = back[ok]
    skip = lags.size // 10  # let the transient from the output settle
    lags, vals = lags[skip:], vals[skip:]
    if lags.size < 2:
        return 0.0
    return float(np.polyfit(lags, vals, 1)[0])


def _diff(rel: np.ndarray) -> np.ndarray:
    """Per-layer / step gain ``log10 ||g_{i-1}|| / ||g_i||`` (NaN past an exact zero)."""
    with np.errstate(invalid="ignore"):
        return rel[:-1] - rel[1:]


def _evidence(flow: GradientFlow, ratio: float) -> dict[str, Any]:
    rel = _rel_log10(flow)
    dec = -math.log10(ratio)
    n = rel.size - 1
    finite = rel[np.isfinite(rel)]
    ev: dict[str, Any] = {
        "axis": flow.axis,
        "length": n,
        "log10_grad_norms": np.asarray(flow.log_grad_norms) / _LOG10,
        "log10_step_gains": _diff(rel),
        "log10_gain": float(rel[0]),
        "log10_rate": _slope(rel),
        "spread": _spread(flow),
        "max_growth": float(np.max(finite)) if finite.size else 0.0,
        "max_decay": float(-np.min(rel)) if rel.size else 0.0,
        "vanishing_depth": _crossing(rel, -dec, above=False),
        "exploding_depth": _crossing(rel, dec, above=True),
        "saturation_mean": float(np.mean(flow.saturated)),
        "saturation_max": float(np.max(flow.saturated)),
        "saturation_possible": "saturated" in flow.low_derivative,
        "inactive_mean": float(np.mean(flow.inactive)),
        "inactive_max": float(np.max(flow.inactive)),
        "inactive_possible": "inactive" in flow.low_derivative,
        "dead_mean": None if flow.dead is None else float(np.mean(flow.dead)),
        "dead_max": None if flow.dead is None else float(np.max(flow.dead)),
        "thresholds": verdict_thresholds(ratio, flow.axis),
        "act_std_first": float(flow.act_std[0]),
        "act_std_last": float(flow.act_std[-1]),
        "act_mean_last": float(flow.act_mean[-1]),
    }
    if flow.gate_saturation is not None:
        ev["gate_saturation"] = {
            g: float(np.mean(flow.gate_saturation[:, j]))
            for j, g in enumerate(flow.model.gate_names)
        }
    return ev


def summarize_flow(flow: GradientFlow, ratio: float = 1e-6) -> dict[str, Any]:
    """The verdict and scalar evidence of a gradient flow, without checks (cheap).

    Returns
    -------
    dict
        ``verdict``, ``length``, ``log10_gain``, ``log10_rate``, ``spread``, ``max_growth``,
        ``max_decay``, ``vanishing_depth``, ``exploding_depth``, ``saturation_mean``,
        ``saturation_max`` (saturated units), ``inactive_mean``, ``inactive_max`` (inactive
        units) (see :class:`Diagnosis`); decades throughout.
    """
    ev = _evidence(flow, ratio)
    keys = (
        "length",
        "log10_gain",
        "log10_rate",
        "spread",
        "max_growth",
        "max_decay",
        "vanishing_depth",
        "exploding_depth",
        "saturation_mean",
        "saturation_max",
        "inactive_mean",
        "inactive_max",
    )
    return {"verdict": _verdict(flow, ratio), **{k: ev[k] for k in keys}}


# optional analyses (other parts of vgcore; absent ones degrade to a note)
def lyapunov_regime(value: float) -> str:
    """ "chaotic" above +0.05 per layer / step, "ordered" below -0.05, else "near-critical"."""
    return "chaotic" if value > 0.05 else ("ordered" if value < -0.05 else "near-critical")


def _lyapunov_applies(model: Model) -> bool:
    """Whether :func:`vgcore.lyapunov` takes this model: recurrent, or an MLP whose layers keep
    the width (depth plays the role of time) without train-mode BatchNorm."""
    return model.lyapunov_obstacle() is None


def _lyapunov(
    model: Model, x: np.ndarray, ev: dict[str, Any], notes: list[str], threads: int | None
) -> Any:
    """Top Lyapunov exponent: the batch mean of :func:`vgcore.lyapunov`'s top exponent (k=1)
    for recurrent models and width-keeping MLPs, else the backward growth rate of the gradient
    (the same limit for a generic cotangent). Returns the Lyapunov result, or None."""
    value, source, spread, res = None, None, None, None
    if _lyapunov_applies(model):
        try:
            from vgcore.analysis.lyapunov import lyapunov
        except ImportError:
            notes.append(
                "vgcore.analysis.lyapunov is not available; the top Lyapunov exponent is "
                "estimated from the gradient's backward growth rate"
            )
        else:
            try:
                res = lyapunov(model, x, k=1, num_threads=threads)
            except Exception as exc:
                notes.append(
                    f"lyapunov() failed ({type(exc).__name__}: {exc}); using the gradient growth rate"
                )
            else:
                top = np.asarray(res.exponents, dtype=np.float64)[:, 0]
                if np.isnan(top).any():
                    notes.append("lyapunov() gave NaN exponents; using the gradient growth rate")
                    res = None
                else:
                    value = float(top.mean())
                    finite = top[np.isfinite(top)]
                    spread = float(finite.std()) if finite.size == top.size else None
                    source = f"vgcore.lyapunov (QR method), mean over {top.size} samples"
    if value is None:
        value = ev["log10_rate"] * _LOG10
        source = "backward gradient growth rate"
    ev["lyapunov"] = value
    ev["lyapunov_std"] = spread
    ev["lyapunov_source"] = source
    ev["regime"] = lyapunov_regime(value)
    return res


def _single_act(model: Model) -> Activation | None:
    """The activation every unit outside gates shares (an RNN's nonlinearity), or None."""
    acts = set(model.unit_activations())
    return acts.pop() if len(acts) == 1 else None


def _critical_sigma_w2(act: Activation | None, sigma_b2: float, notes: list[str]) -> float | None:
    """Critical sigma_w2 (chi_1 = 1): vgcore.theory when present, else the closed forms."""
    if act is None:
        return None
    try:
        from vgcore.theory import critical_sigma_w2
    except ImportError:
        if act.name in _CRITICAL_SW2 and sigma_b2 < 1e-2:
            return _CRITICAL_SW2[act.name]
        notes.append(
            f"vgcore.theory is not available; no critical sigma_w2 for {act} at "
            f"sigma_b2={sigma_b2:.3g} (only closed forms at sigma_b2=0 are known)"
        )
        return None
    try:
        crit = float(critical_sigma_w2(act, sigma_b2))
    except Exception as exc:
        notes.append(f"critical_sigma_w2({act}) failed: {type(exc).__name__}: {exc}")
        return None
    return crit if math.isfinite(crit) else None


def _drive_var(model: RecurrentModel, x: np.ndarray) -> float:
    """Mean square of the per-step drive ``W_ih x_t + b_ih + b_hh`` (at most 64 steps) of a
    single-layer cell."""
    xs = np.asarray(x, dtype=np.float64)
    if model.batch_first:
        xs = np.swapaxes(xs, 0, 1)
    steps = np.unique(np.linspace(0, xs.shape[0] - 1, min(64, xs.shape[0])).astype(int))
    (w_ih, _, b_ih, b_hh), *more = model.layer_params()
    if more:
        raise ValueError(f"the input drive is defined for a single-layer cell, not {model!r}")
    wih = np.asarray(w_ih, np.float64)
    bias = sum(np.asarray(b, np.float64) for b in (b_ih, b_hh) if b is not None)
    return float(np.mean([np.mean((xs[t] @ wih.T + bias) ** 2) for t in steps]))


def _recurrent_mean_field(
    model: RecurrentModel, x: np.ndarray, act: Activation, ev: dict[str, Any], notes: list[str]
) -> None:
    """The mean-field phase of a vanilla RNN's weight scale, without and with its inputs."""
    try:
        from vgcore.theory.scope import recurrent_mean_field
    except ImportError:
        notes.append("vgcore.theory is not available; the mean-field phase is not reported")
        return
    try:
        rmf = recurrent_mean_field(act, ev["sigma_w2"], ev["sigma_b2"], _drive_var(model, x))
    except Exception as exc:
        notes.append(f"mean_field() failed: {type(exc).__name__}: {exc}")
        return
    ev["mean_field"] = rmf.to_dict()
    ev["mean_field_text"] = rmf.summary()
    ev["mean_field_scope"] = rmf.explain(ev.get("lyapunov"), ev.get("regime"), model.hidden_size)


def _mlp_scope(model: MLP, ev: dict[str, Any]) -> str | None:
    """Why an MLP's mean-field phase and its measured regime disagree (None if they agree)."""
    phase, regime = ev.get("phase"), ev.get("regime")
    if {phase, regime} != {"chaotic", "ordered"}:
        return None
    try:
        from vgcore.theory.scope import ASSUMPTIONS
    except ImportError:
        return None
    return (
        f"the mean-field phase '{phase}' is for {ASSUMPTIONS}; this network has width "
        f"{min(model.sizes)} and depth {model.depth}, so the measured exponent "
        f"({ev['lyapunov']:+.3f} per layer, {regime}) carries finite-width fluctuations and the "
        "approach to q* from the input"
    )


def _mean_field(
    model: Model,
    flow: GradientFlow,
    ev: dict[str, Any],
    notes: list[str],
    init: Any,
    x: np.ndarray,
) -> None:
    """Weight scale, critical line and (Gaussian plain MLPs) the mean-field phase."""
    scale = _fixes.estimate_weight_scale(model)
    ev["sigma_w2"] = scale["sigma_w2"]
    ev["sigma_b2"] = scale["sigma_b2"]
    gaussian = scale["gaussian"]
    if init is not None:
        from vgcore.init import resolve_init

        gaussian = resolve_init(init).name == "gaussian"
    ev["gaussian_init"] = gaussian
    act = _single_act(model)
    ev["critical_sigma_w2"] = _critical_sigma_w2(act, scale["sigma_b2"], notes)
    ev["phase"] = ev["chi1"] = ev["xi_c"] = ev["theory_log10_rate"] = None
    ev["theory_gain_ratio"] = None
    ev["mean_field"] = ev["mean_field_text"] = ev["mean_field_scope"] = None
    setting = model.mean_field_setting()
    if setting == "recurrent" and gaussian and act is not None:
        _recurrent_mean_field(narrow(model, RecurrentModel), x, act, ev, notes)
        return
    if not (gaussian and setting == "dense" and act is not None):
        return
    mlp = narrow(model, MLP)
    try:
        from vgcore.theory import mean_field
    except ImportError:
        notes.append("vgcore.theory is not available; the mean-field phase is not reported")
        return
    try:
        # sigma_w2 is estimated from finite matrices: call |chi_1 - 1| < 1% critical
        mf = mean_field(act, scale["sigma_w2"], scale["sigma_b2"], tol=0.01)
    except Exception as exc:
        notes.append(f"mean_field() failed: {type(exc).__name__}: {exc}")
        return
    ev["chi1"] = float(mf.chi_1)
    ev["phase"] = str(mf.phase)
    ev["xi_c"] = float(mf.xi_c)
    # theory's per-layer decades (squared-norm gain chi_1 -> 0.5 log10 chi_1 for the norm)
    ev["theory_log10_rate"] = 0.5 * math.log10(mf.chi_1) if mf.chi_1 > 0 else -math.inf
    try:
        from vgcore.theory import compare_to_theory

        cmp = compare_to_theory(
            flow, scale["sigma_w2"], scale["sigma_b2"], burn_in=min(5, mlp.depth - 1)
        )
        ev["theory_gain_ratio"] = float(cmp.mean_gain_ratio)
    except Exception as exc:
        notes.append(f"compare_to_theory() is not available here ({type(exc).__name__}: {exc})")
    ev["mean_field_scope"] = _mlp_scope(mlp, ev)

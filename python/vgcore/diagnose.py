"""Diagnosis: is the gradient vanishing, exploding or healthy, why, and what fixes it.

:func:`diagnose` measures the gradient flow of a model, collects the evidence (gain per layer or
step, the depth or lag at which the gradient falls below ``ratio`` of its output value, unit
saturation, the top Lyapunov exponent, the mean-field phase of the weight scale), maps the
causes it finds to the standard fixes, and **checks** every fix: the fix is applied to a copy of
the model, the gradient flow is measured again on the same inputs, and the measured improvement
is reported next to the recommendation. Recommendations are ranked by that improvement.

The health measure is ``spread``: the largest distance, in decades, between the gradient norm
at any layer / step and its value at the output, ``max_i |log10 ||dL/dh_i|| / ||dL/dh_out|| |``.

Verdict thresholds (:func:`verdict_thresholds` states them; every summary prints them): the
gradient vanishes (explodes) when it falls below ``ratio`` (rises above ``1 / ratio``) times its
output value at some layer / step, 6 decades by default, **or** when at the input side it has
fallen (risen) by at least :data:`RATE_MIN_DECADES` decades at an average of at least
:data:`RATE_DECADES` decades per layer / step (10^-4.8 over 20 layers is vanishing: 0.24 per
layer). Healthy otherwise.

Units: decades (``log10``) throughout the evidence and the text, except the Lyapunov exponent
(natural log per layer / step, as is conventional); keys say so (``log10_*``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from vgcore import _fixes
from vgcore._validation import check_positive_int, check_seed
from vgcore.activations import Activation
from vgcore.analysis.gradient_flow import GradientFlow, gradient_flow
from vgcore.models import GRU, LSTM, MLP, RNN, Model, RecurrentModel

__all__ = [
    "RATE_DECADES",
    "RATE_MIN_DECADES",
    "VERDICTS",
    "Diagnosis",
    "Recommendation",
    "diagnose",
    "lyapunov_regime",
    "summarize_flow",
    "verdict_thresholds",
]

VERDICTS = ("vanishing", "exploding", "healthy")

#: Average decades per layer / step at or beyond which a total change of at least
#: RATE_MIN_DECADES decades is vanishing / exploding (10x every 10 layers).
RATE_DECADES = 0.1
#: Smallest total change (decades, input side against output) the rate rule applies to (100x).
RATE_MIN_DECADES = 2.0

_LOG10 = math.log(10.0)
#: Critical sigma_w2 at sigma_b2 = 0 where it has a closed form (used without vgcore.theory).
_CRITICAL_SW2 = {"identity": 1.0, "tanh": 1.0, "relu": 2.0, "selu": 1.0}


# ------------------------------------------------------------------------------------------
# results
@dataclass(repr=False)
class Recommendation:
    """One fix for one cause, with its measured effect.

    Attributes
    ----------
    cause : str
        The cause it addresses, e.g. ``"saturating activations"``.
    fix : str
        Short name of the fix, e.g. ``"ReLU + He init"``.
    action : str
        What to change, in one sentence.
    params : dict
        The fix's settings (e.g. ``{"clip_norm": 5.0}`` or ``{"forget_bias": 1.0}``).
    metric : str
        ``"spread"`` (decades between the gradient at any layer/step and at the output) or,
        for clipping, ``"update norm"`` (decades of the parameter-gradient norm).
    before, after : float or None
        The metric without and with the fix (``after`` None when not checked).
    improvement : float or None
        ``before - after`` in decades (positive: better).
    verdict_after : str or None
        The verdict with the fix applied.
    checked : bool
        Whether the fix was applied and measured.
    note : str
        Why it was not checked, or a remark on the measurement.
    """

    cause: str
    fix: str
    action: str
    params: dict[str, Any] = field(default_factory=dict)
    metric: str = "spread"
    before: float | None = None
    after: float | None = None
    improvement: float | None = None
    verdict_after: str | None = None
    checked: bool = False
    note: str = ""
    flow_after: GradientFlow | None = None
    model_after: Model | None = None

    @property
    def helps(self) -> bool:
        """Measured to help: the spread shrinks by at least half a decade, or (clipping) the
        update norm is actually bounded."""
        if not (self.checked and self.improvement is not None):
            return False
        if self.metric == "update norm":
            return self.improvement > 0
        return self.improvement >= 0.5

    @property
    def bounds_update(self) -> bool:
        """A bound on the update norm (gradient clipping), not a change of the gradient flow."""
        return self.metric == "update norm"

    def measured(self) -> str:
        """One line: the measured effect (or why there is none)."""
        if not self.checked:
            return f"not checked: {self.note}" if self.note else "not checked"
        if self.metric == "update norm":
            return (
                f"bounds the update norm: 10^{self.before:.1f} -> 10^{self.after:.1f} "
                "(clipping rescales the update; the dL/dh profile is unchanged)"
            )
        return (
            f"spread {self.before:.1f} -> {self.after:.1f} decades "
            f"({self.improvement:+.1f}), verdict {self.verdict_after}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "cause": self.cause,
            "fix": self.fix,
            "action": self.action,
            "params": _jsonable(self.params),
            "metric": self.metric,
            "before": self.before,
            "after": self.after,
            "improvement": self.improvement,
            "verdict_after": self.verdict_after,
            "checked": self.checked,
            "helps": self.helps,
            "note": self.note,
        }

    def __repr__(self) -> str:
        return f"Recommendation({self.fix!r} for {self.cause!r}: {self.measured()})"


@dataclass(repr=False)
class Diagnosis:
    """Result of :func:`diagnose`.

    Attributes
    ----------
    name : str
        Label of the model (for tables, legends and reports).
    model : Model
    flow : GradientFlow
        The measured gradient flow (with parameter-gradient norms).
    verdict : {"vanishing", "exploding", "healthy"}
    ratio : float
        The threshold: vanishing when the gradient falls below ``ratio`` times its output
        value, exploding when it rises above ``1 / ratio`` times.
    evidence : dict
        What the verdict rests on. ``axis`` ("layer" / "step"), ``length`` (L or T),
        ``log10_grad_norms`` (L+1,), ``log10_step_gains`` (L,): ``log10`` gain of each
        layer / step in the backward pass; ``log10_gain``: input side over output, in decades;
        ``log10_rate``: fitted decades per layer / step; ``spread``, ``max_growth``,
        ``max_decay`` (decades); ``vanishing_depth`` / ``exploding_depth``: distance from the
        output where the gradient first falls below ``ratio`` / rises above ``1 / ratio`` of its
        output value (None if never); ``saturation_mean``, ``saturation_max``: saturated units
        (tanh, sigmoid, elu/selu, gates: a small derivative at a bound); ``inactive_mean``,
        ``inactive_max``: inactive units (ReLU family switched off; not saturated);
        ``dead_mean``, ``dead_max``: units inactive for every sample of the batch (None where
        the activation cannot be inactive); for gated cells, ``gate_saturation``;
        ``thresholds``: the verdict thresholds in words; ``act_std_first``, ``act_std_last``, ``act_mean_last``;
        ``lyapunov``: top Lyapunov exponent per layer / step (natural log): the batch mean of
        ``vgcore.lyapunov(model, x, k=1).exponents[:, 0]`` for recurrent models and MLPs whose
        layers keep the width, else the backward growth rate of the gradient; with
        ``lyapunov_std`` (its standard deviation over the batch; None for the growth rate or
        an infinite exponent), ``lyapunov_source`` and ``regime`` ("chaotic" above +0.05,
        "ordered" below -0.05, else "near-critical"); ``sigma_w2``, ``sigma_b2`` (estimated from the weights),
        ``gaussian_init``, ``critical_sigma_w2``; for Gaussian plain MLPs the mean-field
        ``phase``, ``chi1``, ``xi_c``, ``theory_log10_rate`` and ``theory_gain_ratio``
        (measured over predicted per-layer gain); for a vanilla RNN ``mean_field``: the
        mean-field phase of its recurrent weight scale without inputs and with the inputs'
        drive counted as bias variance, against the measured exponent (see
        :func:`vgcore.theory.scope.recurrent_mean_field`); ``mean_field_scope``: why theory
        and measurement differ, where they do (None otherwise).
    causes : list of str
        The causes found, in the order checked.
    recommendations : list of Recommendation
        The fixes recommended: those measured to help, ranked by measured improvement (a
        bound on the update norm, i.e. clipping, after the fixes of the gradient flow), then
        any that could not be measured.
    not_helpful : list of Recommendation
        Fixes that were applied and measured not to help (shown apart, never recommended).
    notes : list of str
        What could not be measured and why (e.g. an optional analysis missing).
    lyapunov : LyapunovSpectrum or None
        The :func:`vgcore.lyapunov` result (k = 1) behind ``evidence["lyapunov"]``, when that
        analysis was run (recurrent models and MLPs whose layers keep the width).
    """

    name: str
    model: Model
    flow: GradientFlow
    verdict: str
    ratio: float
    evidence: dict[str, Any]
    causes: list[str]
    recommendations: list[Recommendation]
    notes: list[str] = field(default_factory=list)
    lyapunov: Any = None
    not_helpful: list[Recommendation] = field(default_factory=list)

    @property
    def fixes(self) -> list[Recommendation]:
        """Every fix considered: the recommended ones, then those measured not to help."""
        return [*self.recommendations, *self.not_helpful]

    @property
    def axis(self) -> str:
        return self.flow.axis

    @property
    def spread(self) -> float:
        """Decades between the gradient at the worst layer/step and at the output."""
        return float(self.evidence["spread"])

    @property
    def best(self) -> Recommendation | None:
        """The top-ranked fix of the gradient flow that measurably helps, if any (clipping,
        a bound on the update norm, is never the best fix of a flow)."""
        for r in self.recommendations:
            if r.helps and not r.bounds_update:
                return r
        return None

    def summary(self) -> str:
        """Multi-line text: verdict, evidence, ranked recommendations."""
        e = self.evidence
        n_name = "layers" if self.axis == "layer" else "steps"
        lines = [f"{self.name}: {self.verdict.upper()}"]
        lines.append(
            f"  gradient at the input side: 10^{e['log10_gain']:+.1f} x its output value over "
            f"{e['length']} {n_name} ({e['log10_rate']:+.3f} decades per {self.axis})"
        )
        if e["vanishing_depth"] is not None:
            lines.append(
                f"  falls below {self.ratio:g} of its output value {e['vanishing_depth']} {n_name} from the output"
            )
        if e["exploding_depth"] is not None:
            lines.append(
                f"  exceeds {1 / self.ratio:g} x its output value {e['exploding_depth']} {n_name} from the output"
            )
        lines += [f"  {t}" for t in unit_lines(e)]
        if e.get("lyapunov") is not None:
            sd = e.get("lyapunov_std")
            lines.append(
                f"  top Lyapunov exponent: {e['lyapunov']:+.4f}"
                + ("" if sd is None else f" +/- {sd:.4f}")
                + f" per {self.axis} ({e['regime']}; {e['lyapunov_source']})"
            )
        if e.get("phase") is not None:
            crit = e["critical_sigma_w2"]
            lines.append(
                f"  mean-field: sigma_w2={e['sigma_w2']:.3g}, sigma_b2={e['sigma_b2']:.3g} -> "
                f"{e['phase']} (chi_1={e['chi1']:.3g}"
                + ("" if crit is None else f"; critical sigma_w2={crit:.3g}")
                + f"); predicts {e['theory_log10_rate']:+.3f} decades per layer"
                + (
                    ""
                    if e.get("theory_gain_ratio") is None
                    else f", measured/predicted gain {e['theory_gain_ratio']:.3f}"
                )
            )
        if e.get("mean_field_text"):
            lines.append(f"  {e['mean_field_text']}")
        if e.get("mean_field_scope"):
            lines.append(f"  why theory and measurement differ: {e['mean_field_scope']}")
        if self.causes:
            lines.append("  causes: " + "; ".join(self.causes))
        if self.recommendations:
            lines.append("  recommended fixes:")
        for i, r in enumerate(self.recommendations, 1):
            lines.append(f"  {i}. {r.fix} [{r.cause}]: {r.action}")
            lines.append(f"     measured: {r.measured()}")
        if self.not_helpful:
            lines.append("  measured not to help (not recommended):")
        for r in self.not_helpful:
            lines.append(f"  - {r.fix} [{r.cause}]: {r.measured()}")
        lines.append(f"  thresholds: {e['thresholds']}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)

    __str__ = summary

    def __repr__(self) -> str:
        best = self.best
        tail = f", best fix {best.fix!r} ({best.improvement:+.1f} decades)" if best else ""
        return f"Diagnosis({self.name!r}: {self.verdict}, spread {self.spread:.1f} decades{tail})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (no arrays of the model, no flows)."""
        return {
            "name": self.name,
            "verdict": self.verdict,
            "ratio": self.ratio,
            "evidence": _jsonable(self.evidence),
            "causes": list(self.causes),
            "recommendations": [r.to_dict() for r in self.recommendations],
            "not_helpful": [r.to_dict() for r in self.not_helpful],
            "notes": list(self.notes),
        }

    def to_pandas(self) -> Any:
        """Every fix considered as a DataFrame, one row each: the recommended ones ranked
        (``rank`` 1, 2, ...), then those measured not to help (``recommended`` False, no rank)."""
        import pandas as pd

        rows = [
            {"rank": i, "recommended": True, **r.to_dict()}
            for i, r in enumerate(self.recommendations, 1)
        ]
        rows += [{"rank": None, "recommended": False, **r.to_dict()} for r in self.not_helpful]
        cols = [
            "rank",
            "recommended",
            "cause",
            "fix",
            "action",
            "params",
            "metric",
            "before",
            "after",
            "improvement",
            "verdict_after",
            "checked",
            "helps",
            "note",
        ]
        return pd.DataFrame(rows, columns=cols)

    def plot(self, ax: Any = None, **kw: Any) -> Any:
        """The measured gradient flow and the flow with each checked fix (relative, log10)."""
        from vgcore import plotting

        return plotting.plot_diagnosis(self, ax=ax, **kw)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if v is None or isinstance(v, (str, int, bool)):
        return v
    return str(v)


# ------------------------------------------------------------------------------------------
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
        names = "ifgo" if flow.kind == "lstm" else "rzn"
        ev["gate_saturation"] = {
            g: float(np.mean(flow.gate_saturation[:, j])) for j, g in enumerate(names)
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


# ------------------------------------------------------------------------------------------
# optional analyses (other parts of vgcore; absent ones degrade to a note)
def lyapunov_regime(value: float) -> str:
    """ "chaotic" above +0.05 per layer / step, "ordered" below -0.05, else "near-critical"."""
    return "chaotic" if value > 0.05 else ("ordered" if value < -0.05 else "near-critical")


def _lyapunov_applies(model: Model) -> bool:
    """Whether :func:`vgcore.lyapunov` takes this model: recurrent, or an MLP whose layers keep
    the width (depth plays the role of time) without train-mode BatchNorm."""
    if isinstance(model, RecurrentModel):
        return True
    return (
        isinstance(model, MLP)
        and len(set(model.sizes)) == 1
        and "batchnorm" not in [model.norm_mode(i) for i in range(model.depth)]
    )


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
    """The activation every layer shares (an RNN's nonlinearity), or None."""
    if isinstance(model, MLP):
        acts = set(model.activations)
        return acts.pop() if len(acts) == 1 else None
    if isinstance(model, RNN):
        return Activation(model.nonlinearity)
    return None


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


def _drive_var(model: RNN, x: np.ndarray) -> float:
    """Mean square of the per-step drive ``W_ih x_t + b_ih + b_hh`` (at most 64 steps)."""
    xs = np.asarray(x, dtype=np.float64)
    if model.batch_first:
        xs = np.swapaxes(xs, 0, 1)
    steps = np.unique(np.linspace(0, xs.shape[0] - 1, min(64, xs.shape[0])).astype(int))
    wih = np.asarray(model.weight_ih, np.float64)
    bias = sum(np.asarray(b, np.float64) for b in (model.bias_ih, model.bias_hh) if b is not None)
    return float(np.mean([np.mean((xs[t] @ wih.T + bias) ** 2) for t in steps]))


def _recurrent_mean_field(
    model: RNN, x: np.ndarray, act: Activation, ev: dict[str, Any], notes: list[str]
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
    if isinstance(model, RNN) and gaussian and act is not None:
        _recurrent_mean_field(model, x, act, ev, notes)
        return
    plain = isinstance(model, MLP) and set(model.blocks) == {"plain"} and not any(model.norms)
    if not (gaussian and plain and act is not None):
        return
    assert isinstance(model, MLP)
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
            flow, scale["sigma_w2"], scale["sigma_b2"], burn_in=min(5, model.depth - 1)
        )
        ev["theory_gain_ratio"] = float(cmp.mean_gain_ratio)
    except Exception as exc:
        notes.append(f"compare_to_theory() is not available here ({type(exc).__name__}: {exc})")
    ev["mean_field_scope"] = _mlp_scope(model, ev)


# ------------------------------------------------------------------------------------------
# causes -> fixes
@dataclass
class _Ctx:
    model: Model
    x: np.ndarray
    flow: GradientFlow
    verdict: str
    ev: dict[str, Any]
    ratio: float
    seed: int
    threads: int | None
    check: bool = True


def _measure(ctx: _Ctx, rec: Recommendation, build: Callable[[], Model]) -> Recommendation:
    if not ctx.check:
        rec.note = "checks disabled"
        return rec
    try:
        model = build()
        flow = gradient_flow(model, ctx.x, num_threads=ctx.threads)
        rec.after = _spread(flow)
        rec.before = ctx.ev["spread"]
        # an exact zero gradient has an infinite spread; inf - inf counts as no change
        both_inf = math.isinf(rec.before) and math.isinf(rec.after)
        rec.improvement = 0.0 if both_inf else rec.before - rec.after
        rec.verdict_after = _verdict(flow, ctx.ratio)
        rec.checked = True
        rec.flow_after = flow
        rec.model_after = model
    except Exception as exc:
        rec.note = f"{type(exc).__name__}: {exc}"
    return rec


def _round1(v: float) -> float:
    """Round to one significant digit (a threshold worth typing)."""
    if not (v > 0 and math.isfinite(v)):
        return 1.0
    e = math.floor(math.log10(v))
    return round(v / 10**e) * 10**e


def _clip_rec(ctx: _Ctx) -> Recommendation:
    """Global-norm clipping at the norm the gradient would have without the amplification."""
    pg = ctx.flow.log_param_grad_norms or {}
    logs = (
        np.concatenate([np.atleast_1d(np.asarray(v, float)) for v in pg.values()])
        if pg
        else np.array([])
    )
    logs = logs[np.isfinite(logs)]
    rec = Recommendation(
        cause="exploding gradients",
        fix="gradient clipping",
        action="",
        metric="update norm",
    )
    if logs.size == 0:
        rec.note = "no parameter gradients were measured"
        rec.action = "clip the global gradient norm (torch.nn.utils.clip_grad_norm_)"
        return rec
    m = float(np.max(logs))
    log_total = m + 0.5 * math.log(float(np.sum(np.exp(2 * (logs - m)))))
    log10_total = log_total / _LOG10
    tau = _round1(10 ** (log10_total - ctx.ev["max_growth"]))
    rec.params = {"clip_norm": tau}
    rec.action = (
        f"clip the global gradient norm at {tau:g} (torch.nn.utils.clip_grad_norm_(params, {tau:g}));"
        f" that is the measured norm 10^{log10_total:.1f} divided by its 10^{ctx.ev['max_growth']:.1f}"
        " amplification through depth/time"
    )
    if not ctx.check:
        rec.note = "checks disabled"
        return rec
    try:
        flow = gradient_flow(ctx.model, ctx.x, clip_norm=tau, num_threads=ctx.threads)
        clip = flow.clip or {}
        after = math.log10(max(clip.get("total_norm", 0.0) * clip.get("clip_coef", 1.0), 1e-300))
        rec.before, rec.after = log10_total, after
        rec.improvement = log10_total - after
        rec.verdict_after = ctx.verdict
        rec.checked = True
        rec.flow_after = None
    except Exception as exc:
        rec.note = f"{type(exc).__name__}: {exc}"
    return rec


def _init_name_for(act: str) -> str:
    return "kaiming_normal" if act in ("relu", "leaky_relu") else "xavier_normal"


def _mlp_recs(ctx: _Ctx, causes: list[str], notes: list[str]) -> list[Recommendation]:
    m = ctx.model
    assert isinstance(m, MLP)
    ev = ctx.ev
    recs: list[Recommendation] = []
    act_obj = _single_act(m)
    act = None if act_obj is None else act_obj.name
    acts = {a.name for a in m.activations}
    saturating = any(a.family == "saturating" for a in m.activations)
    sw2, crit = ev["sigma_w2"], ev["critical_sigma_w2"]

    # saturating activations -> ReLU family
    if ctx.verdict == "vanishing" and (
        "sigmoid" in acts or (saturating and ev["saturation_mean"] > 0.05)
    ):
        why = (
            "sigmoid's derivative is at most 1/4, so each layer shrinks the gradient"
            if "sigmoid" in acts
            else f"{ev['saturation_mean']:.0%} of the units are saturated"
        )
        causes.append(f"saturating activations ({why})")
        recs.append(
            _measure(
                ctx,
                Recommendation(
                    cause="saturating activations",
                    fix="ReLU + He init",
                    action="replace the activation by ReLU (or leaky ReLU / GELU) with He (kaiming) init",
                    params={"activation": "relu", "init": "kaiming_normal"},
                ),
                lambda: _fixes.mlp_with(m, activation="relu", init="kaiming_normal", seed=ctx.seed),
            )
        )

    # dead units (inactive for every sample) -> leaky ReLU
    dead = ctx.flow.dead
    if ctx.verdict == "vanishing" and "relu" in acts and dead is not None and np.max(dead) > 0.5:
        worst = int(np.argmax(dead)) + 1
        causes.append(
            f"dead units ({np.max(dead):.0%} of layer {worst}'s ReLUs are inactive for every sample)"
        )
        recs.append(
            _measure(
                ctx,
                Recommendation(
                    cause="dead units",
                    fix="leaky ReLU",
                    action="use leaky ReLU (negative slope 0.1) so switched-off units still pass gradient",
                    params={"activation": "leaky_relu", "negative_slope": 0.1},
                ),
                lambda: _fixes.mlp_with(m, activation=("leaky_relu", {"negative_slope": 0.1})),
            )
        )

    # bad init scale -> Xavier/He or the critical sigma_w2
    if ctx.verdict != "healthy" and act is not None:
        assert act_obj is not None
        target = crit if crit is not None else (2.0 if act_obj.family == "rectifier" else 1.0)
        off = sw2 / target
        if act == "sigmoid" or not (0.6 < off < 1.7):
            direction = "small" if off < 1 else "large"
            causes.append(
                f"init scale: sigma_w2 = {sw2:.3g} is too {direction} for {act}"
                + (f" (critical {crit:.3g})" if crit is not None else "")
            )
            scheme = _init_name_for(act)
            label = "He init" if scheme.startswith("kaiming") else "Xavier init"
            recs.append(
                _measure(
                    ctx,
                    Recommendation(
                        cause="bad init scale",
                        fix=label,
                        action=f"initialise the weights with {scheme} (gain for {act})",
                        params={"init": scheme},
                    ),
                    lambda: _fixes.mlp_with(m, init=scheme, seed=ctx.seed),
                )
            )
            if crit is not None:
                sb2 = ev["sigma_b2"]
                init = {"name": "gaussian", "sigma_w2": crit, "sigma_b2": sb2}
                recs.append(
                    _measure(
                        ctx,
                        Recommendation(
                            cause="bad init scale",
                            fix="critical init",
                            action=(
                                f"initialise W ~ N(0, {crit:.3g}/fan_in), b ~ N(0, {sb2:.3g}) "
                                "(mean-field critical line, chi_1 = 1)"
                            ),
                            params=init,
                        ),
                        lambda: _fixes.mlp_with(m, init=init, seed=ctx.seed),
                    )
                )
            elif act == "sigmoid":
                notes.append(
                    "the critical-init fix for sigmoid needs vgcore.theory (not available)"
                )

    # depth -> residual blocks
    square = sum(w.shape[0] == w.shape[1] for w in m.weights)
    if (
        ctx.verdict == "vanishing"
        and m.depth >= 8
        and set(m.blocks) == {"plain"}
        and square >= m.depth // 2
    ):
        causes.append(f"depth ({m.depth} plain layers multiply their Jacobians)")
        recs.append(
            _measure(
                ctx,
                Recommendation(
                    cause="depth",
                    fix="residual blocks",
                    action="make the layers residual, h = h + f(h), so each Jacobian is I + J_f",
                    params={"block": "residual"},
                ),
                lambda: _fixes.mlp_with(m, block="residual"),
            )
        )

    # exploding -> gradient clipping
    if ctx.verdict == "exploding":
        causes.append(f"exploding gradients (grows by 10^{ev['max_growth']:.1f})")
        recs.append(_clip_rec(ctx))

    # covariate shift -> LayerNorm / BatchNorm
    std0, std1 = ev["act_std_first"], ev["act_std_last"]
    drift = std1 / std0 if std0 > 0 else math.inf
    offset = abs(ev["act_mean_last"]) / std1 if std1 > 0 else math.inf
    if ctx.verdict != "healthy" and not any(m.norms) and (not 0.25 < drift < 4 or offset > 3):
        what = (
            f"activation scale drifts x{drift:.2g} from the first to the last layer"
            if not 0.25 < drift < 4
            else f"layer outputs are far from zero mean (mean/std = {offset:.2g})"
        )
        causes.append(f"covariate shift ({what})")
        for norm, label in (("layernorm", "LayerNorm"), ("batchnorm", "BatchNorm")):
            recs.append(
                _measure(
                    ctx,
                    Recommendation(
                        cause="covariate shift",
                        fix=label,
                        action=f"normalise every layer's pre-activation with {label}",
                        params={"norm": norm},
                    ),
                    partial(_fixes.mlp_with, m, norm=norm),
                )
            )
    return recs


def _gate_bias_candidates(current: float) -> list[float]:
    return [v for v in (1.0, 2.0, 3.0) if v > current + 0.25] or [current + 1.0]


def _best_of(
    ctx: _Ctx,
    make: Callable[[float], Recommendation],
    build: Callable[[float], Model],
    values: list[float],
    *,
    first_healthy: bool = True,
) -> Recommendation:
    """Check each value; keep the first that is healthy (``first_healthy``), else the best."""
    best: Recommendation | None = None
    for v in values:
        rec = _measure(ctx, make(v), partial(build, v))
        if first_healthy and rec.checked and rec.verdict_after == "healthy":
            return rec
        if best is None or (
            rec.checked and (not best.checked or (rec.improvement or 0) > (best.improvement or 0))
        ):
            best = rec
    assert best is not None
    return best


def _recurrent_recs(ctx: _Ctx, causes: list[str], notes: list[str]) -> list[Recommendation]:
    m = ctx.model
    assert isinstance(m, RecurrentModel)
    ev = ctx.ev
    recs: list[Recommendation] = []
    T = ev["length"]
    if ctx.verdict == "vanishing":
        causes.append(
            f"long sequence ({T} steps; the gradient falls below {ctx.ratio:g} after "
            f"{ev['vanishing_depth']} steps)"
        )
        if isinstance(m, RNN):
            recs.append(
                _measure(
                    ctx,
                    Recommendation(
                        cause="long sequences",
                        fix="LSTM (forget bias 1)",
                        action="replace the vanilla RNN by an LSTM with forget-gate bias 1",
                        params={"model": "lstm", "forget_bias": 1.0},
                    ),
                    lambda: _fixes.recurrent_as(
                        m, "lstm", init={"name": "default", "forget_bias": 1.0}, seed=ctx.seed
                    ),
                )
            )
            recs.append(
                _measure(
                    ctx,
                    Recommendation(
                        cause="long sequences",
                        fix="GRU",
                        action="replace the vanilla RNN by a GRU",
                        params={"model": "gru"},
                    ),
                    lambda: _fixes.recurrent_as(m, "gru", seed=ctx.seed),
                )
            )
        elif isinstance(m, LSTM):
            cur = _fixes.gate_bias(m, 1)
            recs.append(
                _best_of(
                    ctx,
                    lambda v: Recommendation(
                        cause="long sequences",
                        fix=f"forget-gate bias {v:g}",
                        action=f"set the LSTM forget-gate bias to {v:g} (now {cur:.2g}) so the cell "
                        "state is carried by default (Gers 2000, Jozefowicz 2015)",
                        params={"forget_bias": v},
                    ),
                    lambda v: _fixes.with_gate_bias(m, 1, v),
                    _gate_bias_candidates(cur),
                )
            )
        elif isinstance(m, GRU):
            cur = _fixes.gate_bias(m, 1)
            recs.append(
                _best_of(
                    ctx,
                    lambda v: Recommendation(
                        cause="long sequences",
                        fix=f"update-gate bias {v:g}",
                        action=f"set the GRU update-gate (z) bias to {v:g} (now {cur:.2g}) so the state "
                        "is carried by default (the GRU analogue of the LSTM forget bias)",
                        params={"update_bias": v},
                    ),
                    lambda v: _fixes.with_gate_bias(m, 1, v),
                    _gate_bias_candidates(cur),
                )
            )
    if ctx.verdict != "healthy" and isinstance(m, RNN):
        sw2 = ev["sigma_w2"]
        crit = ev["critical_sigma_w2"] or 1.0
        if not 0.6 < sw2 / crit < 1.7 or ctx.verdict == "exploding":
            causes.append(f"recurrent init scale (sigma_w2 = {sw2:.3g} for weight_hh)")
            grid = [round(2 ** (k / 2), 2) for k in range(8)]  # 1 .. 11.3, factors of sqrt(2)
            targets = [v for v in grid if not 0.8 < v / max(sw2, 1e-12) < 1.25]
            if targets and sw2 > 0:
                recs.append(
                    _best_of(
                        ctx,
                        lambda v: Recommendation(
                            cause="bad init scale",
                            fix=f"recurrent gain sigma_w2={v:g}",
                            action=f"scale weight_hh so that sigma_w2 = fan_in * Var(W_hh) = {v:g} "
                            f"(now {sw2:.3g}); the best of {len(targets)} values from 1 to 11.3 measured",
                            params={"sigma_w2": v, "scale": math.sqrt(v / sw2)},
                        ),
                        lambda v: _fixes.with_recurrent_scale(m, math.sqrt(v / sw2)),
                        targets,
                        first_healthy=False,
                    )
                )
            recs.append(
                _measure(
                    ctx,
                    Recommendation(
                        cause="bad init scale",
                        fix="orthogonal recurrent init",
                        action="initialise weight_hh orthogonal (all singular values 1)",
                        params={"init": {"name": "default", "recurrent": "orthogonal"}},
                    ),
                    lambda: _fixes.with_recurrent_init(
                        m, {"name": "default", "recurrent": "orthogonal"}, seed=ctx.seed
                    ),
                )
            )
    if ctx.verdict == "exploding":
        causes.append(f"exploding gradients (grows by 10^{ev['max_growth']:.1f} over {T} steps)")
        recs.append(_clip_rec(ctx))
        if isinstance(m, RNN):
            recs.append(
                _measure(
                    ctx,
                    Recommendation(
                        cause="exploding gradients",
                        fix="LSTM (forget bias 1)",
                        action="replace the vanilla RNN by an LSTM (gated, bounded state updates)",
                        params={"model": "lstm", "forget_bias": 1.0},
                    ),
                    lambda: _fixes.recurrent_as(
                        m, "lstm", init={"name": "default", "forget_bias": 1.0}, seed=ctx.seed
                    ),
                )
            )
    return recs


def _rank(recs: list[Recommendation]) -> tuple[list[Recommendation], list[Recommendation]]:
    """(recommended, measured not to help): fixes of the flow that help by measured
    improvement, then update-norm bounds that help, then unmeasured fixes."""

    def key(r: Recommendation) -> tuple[int, float]:
        group = (1 if r.bounds_update else 0) if r.helps else (2 if not r.checked else 3)
        return (group, -(r.improvement or 0.0))

    ranked = sorted(recs, key=key)
    return [r for r in ranked if r.helps or not r.checked], [
        r for r in ranked if r.checked and not r.helps
    ]


# ------------------------------------------------------------------------------------------
def _can_be_inactive(model: Model) -> bool:
    """Whether some unit of the model can be inactive (a ReLU-family activation)."""
    if isinstance(model, MLP):
        return any(a.low_derivative == "inactive" for a in model.activations)
    return isinstance(model, RNN) and Activation(model.nonlinearity).low_derivative == "inactive"


def _default_input(model: Model, steps: int, batch: int | None, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    if isinstance(model, MLP):
        return rng.standard_normal((batch or 64, model.input_size)).astype(model.dtype)
    assert isinstance(model, RecurrentModel)
    B = batch or 16
    shape = (B, steps, model.input_size) if model.batch_first else (steps, B, model.input_size)
    return rng.standard_normal(shape).astype(model.dtype)


def _default_name(model: Model) -> str:
    from vgcore._modelspec import spec_from_model

    s = spec_from_model(model)
    if isinstance(model, MLP):
        extra = "" if s["block"] == "plain" else f" {s['block']}"
        extra += f" +{s['norm']}" if s["norm"] else ""
        return f"MLP {s['activation']}{extra} L={s['depth']}"
    return f"{type(model).__name__} N={s['hidden_size']}"


def diagnose(
    model: Model,
    x: Any = None,
    *,
    name: str | None = None,
    ratio: float = 1e-6,
    check: bool = True,
    init: Any = None,
    steps: int = 100,
    batch: int | None = None,
    seed: int = 0,
    keep_grads: bool = False,
    num_threads: int | None = None,
) -> Diagnosis:
    """Diagnose vanishing / exploding gradients in a model and check the standard fixes.

    Parameters
    ----------
    model : MLP, RNN, LSTM or GRU
    x : array_like, optional
        Inputs, ``(B, in)`` for an MLP or ``(T, B, in)`` for a recurrent model; standard
        normal inputs (``batch`` x ``steps``, seeded ``seed + 1``) when omitted.
    name : str, optional
        Label for tables and figures (default: a description of the model).
    ratio : float
        Vanishing when the gradient falls below ``ratio`` times its output value somewhere,
        exploding when it rises above ``1 / ratio`` times; healthy otherwise.
    check : bool
        Apply each recommended fix to a copy of the model and measure it (cheap: one gradient
        flow per fix). Without checks the recommendations are listed unmeasured.
    init : init spec, optional
        How the weights were drawn (see :mod:`vgcore.init`), if known; the mean-field phase is
        reported when it is Gaussian. When omitted, Gaussianity is judged from the weights.
    steps, batch : int
        Shape of the generated inputs when ``x`` is omitted.
    seed : int
        Seed of generated inputs and of the fresh weights some fixes draw.
    keep_grads : bool
        Keep the per-unit gradients (for gradient histograms).
    num_threads : int, optional
        Threads per gradient-flow call.

    Returns
    -------
    Diagnosis

    Examples
    --------
    >>> import vgcore
    >>> d = vgcore.diagnose(vgcore.MLP.from_sizes([64] * 31, "sigmoid"))
    >>> d.verdict
    'vanishing'
    >>> d.best.fix  # doctest: +SKIP
    'ReLU + He init'
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a vgcore MLP, RNN, LSTM or GRU, got {type(model).__name__}")
    if not (isinstance(ratio, (int, float)) and 0 < ratio < 1):
        raise ValueError(f"ratio must be in (0, 1), got {ratio!r}")
    steps = check_positive_int(steps, "steps")
    if batch is not None:
        batch = check_positive_int(batch, "batch")
    if check_seed(seed) is None:
        raise TypeError("seed must be an integer >= 0, got None")
    if not isinstance(check, (bool, np.bool_)):
        raise TypeError(f"check must be True or False, got {check!r}")
    xa = _default_input(model, steps, batch, seed) if x is None else x
    flow = gradient_flow(
        model,
        xa,
        param_grads=True,
        keep_grads=keep_grads,
        num_threads=num_threads,
        dead_units=_can_be_inactive(model),
    )
    verdict = _verdict(flow, ratio)
    ev = _evidence(flow, ratio)
    notes: list[str] = list(model.notes)
    lyap = _lyapunov(model, np.asarray(xa), ev, notes, num_threads)
    _mean_field(model, flow, ev, notes, init, np.asarray(xa))
    ctx = _Ctx(model, np.asarray(xa), flow, verdict, ev, ratio, seed, num_threads, check)
    causes: list[str] = []
    if isinstance(model, MLP):
        recs = _mlp_recs(ctx, causes, notes)
    else:
        recs = _recurrent_recs(ctx, causes, notes)
    recommended, not_helpful = _rank(recs)
    return Diagnosis(
        name=name or _default_name(model),
        model=model,
        flow=flow,
        verdict=verdict,
        ratio=ratio,
        evidence=ev,
        causes=causes,
        recommendations=recommended,
        notes=notes,
        lyapunov=lyap,
        not_helpful=not_helpful,
    )

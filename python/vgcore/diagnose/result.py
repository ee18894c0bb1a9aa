"""The result of a diagnosis: the verdict with its evidence, and the checked fixes."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vgcore.analysis.gradient_flow import GradientFlow
from vgcore.diagnose.text import evidence_lines, thresholds_line
from vgcore.models import Model


# results
@dataclass(repr=False)
class Fix:
    """One fix for one cause, with its measured effect (recommended when measured to help).

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
        return f"Fix({self.fix!r} for {self.cause!r}: {self.measured()})"


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
    recommended : list of Fix
        The fixes recommended: those measured to help, ranked by measured improvement (a
        bound on the update norm, i.e. clipping, after the fixes of the gradient flow), then
        any that could not be measured. (Formerly ``recommendations``, a deprecated alias.)
    not_helpful : list of Fix
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
    recommended: list[Fix]
    notes: list[str] = field(default_factory=list)
    lyapunov: Any = None
    not_helpful: list[Fix] = field(default_factory=list)

    @property
    def fixes(self) -> list[Fix]:
        """Every fix considered: the recommended ones, then those measured not to help."""
        return [*self.recommended, *self.not_helpful]

    @property
    def recommendations(self) -> list[Fix]:
        """Deprecated alias of :attr:`recommended` (one name, "fix", for a fix)."""
        warnings.warn(
            "Diagnosis.recommendations is renamed Diagnosis.recommended (the recommended "
            "fixes); the old name will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.recommended

    @property
    def axis(self) -> str:
        return self.flow.axis

    @property
    def spread(self) -> float:
        """Decades between the gradient at the worst layer/step and at the output."""
        return float(self.evidence["spread"])

    @property
    def best(self) -> Fix | None:
        """The top-ranked fix of the gradient flow that measurably helps, if any (clipping,
        a bound on the update norm, is never the best fix of a flow)."""
        for r in self.recommended:
            if r.helps and not r.bounds_update:
                return r
        return None

    def summary(self) -> str:
        """Multi-line text: verdict, evidence, causes, the fixes (ranked) and the thresholds."""
        lines = [f"{self.name}: {self.verdict.upper()}"]
        lines += [f"  {t}" for t in evidence_lines(self.evidence, self.ratio)]
        if self.causes:
            lines.append("  causes: " + "; ".join(self.causes))
        if self.recommended:
            lines.append("  recommended fixes:")
        for i, r in enumerate(self.recommended, 1):
            lines.append(f"  {i}. {r.fix} [{r.cause}]: {r.action}")
            lines.append(f"     measured: {r.measured()}")
        if self.not_helpful:
            lines.append("  measured not to help (not recommended):")
        for r in self.not_helpful:
            lines.append(f"  - {r.fix} [{r.cause}]: {r.measured()}")
        lines.append(f"  {thresholds_line(self.evidence)}")
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
            "recommended": [r.to_dict() for r in self.recommended],
            "not_helpful": [r.to_dict() for r in self.not_helpful],
            "notes": list(self.notes),
        }

    def to_pandas(self) -> Any:
        """Every fix considered as a DataFrame, one row each: the recommended ones ranked
        (``rank`` 1, 2, ...), then those measured not to help (``recommended`` False, no rank)."""
        import pandas as pd

        rows = [
            {"rank": i, "recommended": True, **r.to_dict()}
            for i, r in enumerate(self.recommended, 1)
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


def __getattr__(name: str) -> Any:
    if name == "Recommendation":
        return _renamed_fix(__name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _renamed_fix(module: str) -> type[Fix]:
    """``Recommendation``, the old name of :class:`Fix`, with a DeprecationWarning."""
    warnings.warn(
        f"{module}.Recommendation is renamed {module}.Fix (one name, 'fix', for a fix); the "
        "old name will be removed in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    return Fix

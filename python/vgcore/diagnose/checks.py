"""Checking a fix: apply it to a copy of the model, measure the gradient flow again on the same
inputs, and rank the fixes by the measured improvement."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from vgcore.analysis.gradient_flow import GradientFlow, gradient_flow
from vgcore.diagnose.evidence import _LOG10, _spread, _verdict
from vgcore.diagnose.result import Fix
from vgcore.models import Model


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
    #: How a model is measured, ``flow_fn(model, **kw)`` (a torch module's flow with the
    #: diagnosis's loss); None: the native ``gradient_flow(model, x)``.
    flow_fn: Callable[..., GradientFlow] | None = None


def _flow(ctx: _Ctx, model: Any, **kw: Any) -> GradientFlow:
    """The gradient flow of ``model`` on the diagnosis's inputs (and loss)."""
    if ctx.flow_fn is not None:
        return ctx.flow_fn(model, **kw)
    return gradient_flow(model, ctx.x, num_threads=ctx.threads, **kw)


def _measure(ctx: _Ctx, fix: Fix, build: Callable[[], Model]) -> Fix:
    if not ctx.check:
        fix.note = "checks disabled"
        return fix
    try:
        model = build()
        flow = _flow(ctx, model)
        fix.after = _spread(flow)
        fix.before = ctx.ev["spread"]
        # an exact zero gradient has an infinite spread; inf - inf counts as no change
        both_inf = math.isinf(fix.before) and math.isinf(fix.after)
        fix.improvement = 0.0 if both_inf else fix.before - fix.after
        fix.verdict_after = _verdict(flow, ctx.ratio)
        fix.checked = True
        fix.flow_after = flow
        fix.model_after = model
    except Exception as exc:
        fix.note = f"{type(exc).__name__}: {exc}"
    return fix


def _round1(v: float) -> float:
    """Round to one significant digit (a threshold worth typing)."""
    if not (v > 0 and math.isfinite(v)):
        return 1.0
    e = math.floor(math.log10(v))
    return round(v / 10**e) * 10**e


def _clip_fix(ctx: _Ctx) -> Fix:
    """Global-norm clipping at the norm the gradient would have without the amplification."""
    pg = ctx.flow.log_param_grad_norms or {}
    logs = (
        np.concatenate([np.atleast_1d(np.asarray(v, float)) for v in pg.values()])
        if pg
        else np.array([])
    )
    logs = logs[np.isfinite(logs)]
    fix = Fix(
        cause="exploding gradients",
        fix="gradient clipping",
        action="",
        metric="update norm",
    )
    if logs.size == 0:
        fix.note = "no parameter gradients were measured"
        fix.action = "clip the global gradient norm (torch.nn.utils.clip_grad_norm_)"
        return fix
    m = float(np.max(logs))
    log_total = m + 0.5 * math.log(float(np.sum(np.exp(2 * (logs - m)))))
    log10_total = log_total / _LOG10
    tau = _round1(10 ** (log10_total - ctx.ev["max_growth"]))
    fix.params = {"clip_norm": tau}
    fix.action = (
        f"clip the global gradient norm at {tau:g} (torch.nn.utils.clip_grad_norm_(params, {tau:g}));"
        f" that is the measured norm 10^{log10_total:.1f} divided by its 10^{ctx.ev['max_growth']:.1f}"
        " amplification through depth/time"
    )
    if not ctx.check:
        fix.note = "checks disabled"
        return fix
    try:
        flow = _flow(ctx, ctx.model, clip_norm=tau)
        clip = flow.clip or {}
        after = math.log10(max(clip.get("total_norm", 0.0) * clip.get("clip_coef", 1.0), 1e-300))
        fix.before, fix.after = log10_total, after
        fix.improvement = log10_total - after
        fix.verdict_after = ctx.verdict
        fix.checked = True
        fix.flow_after = None
    except Exception as exc:
        fix.note = f"{type(exc).__name__}: {exc}"
    return fix


def _init_name_for(act: str) -> str:
    return "kaiming_normal" if act in ("relu", "leaky_relu") else "xavier_normal"


def _gate_bias_candidates(current: float) -> list[float]:
    return [v for v in (1.0, 2.0, 3.0) if v > current + 0.25] or [current + 1.0]


def _best_of(
    ctx: _Ctx,
    make: Callable[[float], Fix],
    build: Callable[[float], Model],
    values: list[float],
    *,
    first_healthy: bool = True,
) -> Fix:
    """Check each value; keep the first that is healthy (``first_healthy``), else the best."""
    best: Fix | None = None
    for v in values:
        fix = _measure(ctx, make(v), partial(build, v))
        if first_healthy and fix.checked and fix.verdict_after == "healthy":
            return fix
        if best is None or (
            fix.checked and (not best.checked or (fix.improvement or 0) > (best.improvement or 0))
        ):
            best = fix
    assert best is not None
    return best


def _rank(fixes: list[Fix]) -> tuple[list[Fix], list[Fix]]:
    """(recommended, measured not to help): fixes of the flow that help by measured
    improvement, then update-norm bounds that help, then unmeasured fixes."""

    def key(r: Fix) -> tuple[int, float]:
        group = (1 if r.bounds_update else 0) if r.helps else (2 if not r.checked else 3)
        return (group, -(r.improvement or 0.0))

    ranked = sorted(fixes, key=key)
    return [r for r in ranked if r.helps or not r.checked], [
        r for r in ranked if r.checked and not r.helps
    ]

"""Causes and fixes for dense stacks (depth axis)."""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from vgcore import _fixes
from vgcore.diagnose.checks import _clip_fix, _Ctx, _init_name_for, _measure
from vgcore.diagnose.evidence import _single_act
from vgcore.diagnose.result import Fix
from vgcore.models import MLP
from vgcore.models.base import narrow


def _mlp_fixes(ctx: _Ctx, causes: list[str], notes: list[str]) -> list[Fix]:
    m = narrow(ctx.model, MLP)  # the rules of depth-axis models
    ev = ctx.ev
    fixes: list[Fix] = []
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
        fixes.append(
            _measure(
                ctx,
                Fix(
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
        fixes.append(
            _measure(
                ctx,
                Fix(
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
            fixes.append(
                _measure(
                    ctx,
                    Fix(
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
                fixes.append(
                    _measure(
                        ctx,
                        Fix(
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
        fixes.append(
            _measure(
                ctx,
                Fix(
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
        fixes.append(_clip_fix(ctx))

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
            fixes.append(
                _measure(
                    ctx,
                    Fix(
                        cause="covariate shift",
                        fix=label,
                        action=f"normalise every layer's pre-activation with {label}",
                        params={"norm": norm},
                    ),
                    partial(_fixes.mlp_with, m, norm=norm),
                )
            )
    return fixes

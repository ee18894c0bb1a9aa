"""Causes and fixes for recurrent cells (time axis): RNN, LSTM, GRU."""

from __future__ import annotations

import math

from vgcore import _fixes
from vgcore.diagnose.checks import _best_of, _clip_fix, _Ctx, _gate_bias_candidates, _measure
from vgcore.diagnose.result import Fix
from vgcore.models import RecurrentModel
from vgcore.models.base import narrow

#: The gate (block 1 in PyTorch's order) whose bias makes a gated cell carry its state by
#: default: (the fix's name, the gate in the text, the fix's parameter, why).
_CARRY_GATES = {
    "lstm": (
        "forget-gate",
        "forget-gate",
        "forget_bias",
        "the cell state is carried by default (Gers 2000, Jozefowicz 2015)",
    ),
    "gru": (
        "update-gate",
        "update-gate (z)",
        "update_bias",
        "the state is carried by default (the GRU analogue of the LSTM forget bias)",
    ),
}


def _recurrent_fixes(ctx: _Ctx, causes: list[str], notes: list[str]) -> list[Fix]:
    m = narrow(ctx.model, RecurrentModel)  # the rules of time-axis models
    ungated = not m.gate_names  # a vanilla RNN
    ev = ctx.ev
    fixes: list[Fix] = []
    T = ev["length"]
    if ctx.verdict == "vanishing":
        causes.append(
            f"long sequence ({T} steps; the gradient falls below {ctx.ratio:g} after "
            f"{ev['vanishing_depth']} steps)"
        )
        if ungated:
            fixes.append(
                _measure(
                    ctx,
                    Fix(
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
            fixes.append(
                _measure(
                    ctx,
                    Fix(
                        cause="long sequences",
                        fix="GRU",
                        action="replace the vanilla RNN by a GRU",
                        params={"model": "gru"},
                    ),
                    lambda: _fixes.recurrent_as(m, "gru", seed=ctx.seed),
                )
            )
        elif m.kind in _CARRY_GATES:
            label, gate, param, what = _CARRY_GATES[m.kind]
            cur = _fixes.gate_bias(m, 1)
            fixes.append(
                _best_of(
                    ctx,
                    lambda v: Fix(
                        cause="long sequences",
                        fix=f"{label} bias {v:g}",
                        action=f"set the {type(m).__name__} {gate} bias to {v:g} (now {cur:.2g}) "
                        f"so {what}",
                        params={param: v},
                    ),
                    lambda v: _fixes.with_gate_bias(m, 1, v),
                    _gate_bias_candidates(cur),
                )
            )
    if ctx.verdict != "healthy" and ungated:
        sw2 = ev["sigma_w2"]
        crit = ev["critical_sigma_w2"] or 1.0
        if not 0.6 < sw2 / crit < 1.7 or ctx.verdict == "exploding":
            causes.append(f"recurrent init scale (sigma_w2 = {sw2:.3g} for weight_hh)")
            grid = [round(2 ** (k / 2), 2) for k in range(8)]  # 1 .. 11.3, factors of sqrt(2)
            targets = [v for v in grid if not 0.8 < v / max(sw2, 1e-12) < 1.25]
            if targets and sw2 > 0:
                fixes.append(
                    _best_of(
                        ctx,
                        lambda v: Fix(
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
            fixes.append(
                _measure(
                    ctx,
                    Fix(
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
        fixes.append(_clip_fix(ctx))
        if ungated:
            fixes.append(
                _measure(
                    ctx,
                    Fix(
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
    return fixes

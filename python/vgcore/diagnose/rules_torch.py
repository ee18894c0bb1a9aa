"""Diagnosis of any torch module (a :class:`~vgcore.torchmodel.TorchModel`): the verdict and
evidence per block, the causes, and the fixes applied to deep copies and measured.

The fixes (:mod:`vgcore.torchmodel.fixes` says exactly what each changes):

- saturating activation modules (``nn.Sigmoid``, ``nn.Tanh``) while the gradient vanishes:
  swap them for ``nn.ReLU`` or ``nn.GELU``, with He re-initialisation of the weight layers;
- ReLU units dead for the whole batch: swap ``nn.ReLU`` for ``nn.LeakyReLU(0.1)`` (weights kept);
- any non-healthy verdict of a module with ``nn.Linear`` / convolution layers: re-initialise
  them with Xavier, He or orthogonal weights (zero biases);
- residual blocks (recognised by test, see :func:`~vgcore.torchmodel.fixes.residual_branch_ends`)
  while the verdict is not healthy: scale the residual branches by ``alpha`` (the largest of
  0.5, ``1/sqrt(n)``, 0.1 that makes the flow healthy, else the best measured);
- exploding: global-norm gradient clipping (bounds the update norm).

Every fix is built on a deep copy of the module and measured with the same inputs and loss; the
user's module is never changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

from vgcore.diagnose.checks import _best_of, _clip_fix, _Ctx, _measure, _rank
from vgcore.diagnose.evidence import _evidence, _lyapunov, _verdict
from vgcore.diagnose.result import Diagnosis, Fix

__all__ = ["diagnose_torch"]

#: Residual-branch scales tried, largest first (``1/sqrt(n)`` for n residual blocks is added).
_ALPHAS = (0.5, 0.1)


def _block_evidence(flow: Any, ev: dict[str, Any]) -> None:
    """Block names, where the gradient crosses the thresholds, units per block."""
    import numpy as np

    names = list(flow.block_names or [f"block {i + 1}" for i in range(ev["length"])])
    n = len(names)
    ev["block_names"] = names
    for key, depth in (
        ("vanishing_block", "vanishing_depth"),
        ("exploding_block", "exploding_depth"),
    ):
        d = ev[depth]
        # the gradient at h_i (the input of block i + 1) first crosses at distance d from the
        # output: block names[i] is the one it crosses through
        ev[key] = names[n - d] if d is not None and 0 <= n - d < n else None
    ev["saturation_by_block"] = [float(v) for v in np.asarray(flow.saturated)]
    ev["inactive_by_block"] = [float(v) for v in np.asarray(flow.inactive)]
    ev["dead_by_block"] = None if flow.dead is None else [float(v) for v in np.asarray(flow.dead)]


def _default_name(model: Any) -> str:
    return f"{type(model.module).__name__} ({model.num_layers} blocks)"


def diagnose_torch(
    model: Any,
    x: Any,
    *,
    name: str | None,
    ratio: float,
    check: bool,
    seed: int,
    keep_grads: bool,
    loss_fn: Callable[[Any], Any] | None = None,
    cotangent: Any = None,
) -> Diagnosis:
    """:func:`vgcore.diagnose` for a TorchModel (arguments checked by the caller)."""
    from vgcore.torchmodel import fixes as F
    from vgcore.torchmodel.flow import gradient_flow

    if x is None:
        raise ValueError(
            "x is required to diagnose a torch module: give an input batch (a tensor or array "
            "of the shape its forward takes)"
        )
    if cotangent is not None and loss_fn is not None:
        raise ValueError("give cotangent or loss_fn, not both")

    def measure(m: Any, **kw: Any) -> Any:
        return gradient_flow(m, x, loss_fn=loss_fn, cotangent=cotangent, **kw)

    flow = measure(model, param_grads=True, keep_grads=keep_grads, dead_units=True)
    verdict = _verdict(flow, ratio)
    ev = _evidence(flow, ratio)
    _block_evidence(flow, ev)
    notes: list[str] = list(dict.fromkeys((*model.notes, *flow.notes)))
    _lyapunov(model, x, ev, notes, None)  # a chain of blocks: the backward growth rate
    scale = F.estimate_weight_scale(model.module)
    ev["sigma_w2"], ev["sigma_b2"] = scale["sigma_w2"], scale["sigma_b2"]
    ev["gaussian_init"] = None
    for k in ("critical_sigma_w2", "phase", "chi1", "xi_c", "theory_log10_rate"):
        ev[k] = None
    ev["theory_gain_ratio"] = ev["mean_field"] = ev["mean_field_text"] = None
    ev["mean_field_scope"] = None
    ctx = _Ctx(model, x, flow, verdict, ev, ratio, seed, None, check, flow_fn=measure)
    causes: list[str] = []
    fixes = _torch_fixes(ctx, causes, notes)
    recommended, not_helpful = _rank(fixes)
    return Diagnosis(
        name=name or _default_name(model),
        model=model,
        flow=flow,
        verdict=verdict,
        ratio=ratio,
        evidence=ev,
        causes=causes,
        recommended=recommended,
        notes=notes,
        lyapunov=None,
        not_helpful=not_helpful,
    )


def _torch_fixes(ctx: _Ctx, causes: list[str], notes: list[str]) -> list[Fix]:
    from vgcore.torchmodel import fixes as F
    from vgcore.torchmodel.model import TorchModel

    tm: Any = ctx.model
    module = tm.module
    ev = ctx.ev
    fixes: list[Fix] = []

    def wrap(m: Any) -> TorchModel:
        return TorchModel(m, blocks=tm.blocks_arg)

    def swapped_he(to: str) -> TorchModel:
        return wrap(F.reinit(F.swap_activations(module, to)[0], "kaiming_normal", seed=ctx.seed))

    def reinitialised(scheme: str) -> TorchModel:
        return wrap(F.reinit(module, scheme, seed=ctx.seed))

    acts = {a.name for _, a in F._activations(module)}
    swappable = F.swappable_activations(module, ("sigmoid", "tanh"))
    layers = F.weight_layers(module)

    # saturating activation modules -> ReLU / GELU with He init
    if ctx.verdict == "vanishing" and (
        "sigmoid" in acts or ("tanh" in acts and ev["saturation_mean"] > 0.05)
    ):
        why = (
            "sigmoid's derivative is at most 1/4, so each block shrinks the gradient"
            if "sigmoid" in acts
            else f"{ev['saturation_mean']:.0%} of the tanh units are saturated"
        )
        causes.append(f"saturating activations ({why})")
        if swappable:
            for to, label in (("relu", "ReLU"), ("gelu", "GELU")):
                fixes.append(
                    _measure(
                        ctx,
                        Fix(
                            cause="saturating activations",
                            fix=f"{label} + He init",
                            action=f"replace the {len(swappable)} Sigmoid/Tanh modules by "
                            f"nn.{label} and re-initialise every Linear/Conv weight with He "
                            "(kaiming_normal_, fan-in) and zero biases",
                            params={
                                "activation": to,
                                "init": "kaiming_normal",
                                "modules": swappable,
                            },
                        ),
                        partial(swapped_he, to),
                    )
                )
        else:
            notes.append(
                "the saturating activations are not modules (called as functions in a "
                "forward), so swapping them cannot be applied and measured automatically"
            )

    # ReLU units dead for the whole batch -> leaky ReLU
    dead = ev.get("dead_max")
    relus = F.swappable_activations(module, ("relu",))
    if ctx.verdict == "vanishing" and relus and dead is not None and dead > 0.5:
        names = ev["block_names"]
        worst = names[int(max(range(len(names)), key=lambda i: ev["dead_by_block"][i]))]
        causes.append(
            f"dead units ({dead:.0%} of block {worst!r}'s ReLUs are inactive for every sample)"
        )
        fixes.append(
            _measure(
                ctx,
                Fix(
                    cause="dead units",
                    fix="leaky ReLU",
                    action=f"replace the {len(relus)} nn.ReLU modules by nn.LeakyReLU(0.1) so "
                    "switched-off units still pass gradient (weights kept)",
                    params={"activation": "leaky_relu", "negative_slope": 0.1, "modules": relus},
                ),
                lambda: wrap(F.swap_activations(module, "leaky_relu", kinds=("relu",))[0]),
            )
        )

    # the weights' scale -> Xavier / He / orthogonal re-initialisation
    if ctx.verdict != "healthy" and layers:
        sw2 = ev["sigma_w2"]
        causes.append(
            f"init scale (sigma_w2 = fan_in x E[W^2] = {sw2:.3g} averaged over {len(layers)} "
            "Linear/Conv layers)"
        )
        labels = {
            "xavier_normal": ("Xavier init", "Xavier (Glorot) normal with the activation's gain"),
            "kaiming_normal": ("He init", "He (kaiming) normal, fan-in, ReLU gain"),
            "orthogonal": ("orthogonal init", "orthogonal weights with the activation's gain"),
        }
        for scheme in F.INIT_SCHEMES:
            label, what = labels[scheme]
            fixes.append(
                _measure(
                    ctx,
                    Fix(
                        cause="bad init scale",
                        fix=label,
                        action=f"re-initialise the {len(layers)} Linear/Conv weights with "
                        f"{what}, biases 0",
                        params={"init": scheme},
                    ),
                    partial(reinitialised, scheme),
                )
            )

    # residual blocks -> scale their branches
    if ctx.verdict != "healthy":
        try:
            ends = F.residual_branch_ends(tm, ctx.x)
        except Exception as exc:  # a block that cannot be called alone: no residual fix
            ends = {}
            notes.append(f"residual blocks were not tested ({type(exc).__name__}: {exc})")
        if ends:
            n = len(ends)
            causes.append(
                f"depth of the residual stream ({n} residual blocks add their branches to it)"
            )
            alphas = sorted({*_ALPHAS, round(1 / math.sqrt(n), 3)} - {1.0}, reverse=True)
            layer_names = [m for ms in ends.values() for m in ms]
            shown = ", ".join(layer_names[:4]) + (", ..." if len(layer_names) > 4 else "")
            tried = ", ".join(f"{a:g}" for a in alphas)

            def residual_fix(v: float) -> Fix:
                return Fix(
                    cause="residual branch scale",
                    fix=f"residual branches x{v:g}",
                    action=f"multiply the weight and bias of the layer(s) ending each of the {n} "
                    f"residual branches ({shown}) by {v:g}, so each branch adds {v:g} g(h) to "
                    f"the stream; the first healthy (else the best) of {tried} measured",
                    params={"alpha": v, "layers": layer_names},
                )

            fixes.append(
                _best_of(
                    ctx,
                    residual_fix,
                    lambda v: wrap(F.scale_residual_branches(module, ends, v)),
                    alphas,
                )
            )
        elif ctx.verdict == "vanishing" and ev["length"] >= 8:
            notes.append(
                f"no residual blocks were recognised among the {ev['length']} blocks; skip "
                "connections (h + f(h)) cannot be added to an arbitrary module automatically"
            )

    # exploding -> gradient clipping
    if ctx.verdict == "exploding":
        causes.append(f"exploding gradients (grows by 10^{ev['max_growth']:.1f})")
        fixes.append(_clip_fix(ctx))
    return fixes

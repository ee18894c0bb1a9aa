"""`diagnose`: measure, collect the evidence, find the causes, check the fixes."""

from __future__ import annotations

from typing import Any

import numpy as np

from vgcore._validation import check_positive_int, check_seed
from vgcore.analysis.gradient_flow import gradient_flow
from vgcore.diagnose.checks import _Ctx, _rank
from vgcore.diagnose.evidence import _evidence, _lyapunov, _mean_field, _verdict
from vgcore.diagnose.result import Diagnosis
from vgcore.diagnose.rules_mlp import _mlp_fixes
from vgcore.diagnose.rules_recurrent import _recurrent_fixes
from vgcore.models import Model

#: The causes and fixes of each family of models, by the axis its steps run along.
_RULES = {"depth": _mlp_fixes, "time": _recurrent_fixes}


def _can_be_inactive(model: Model) -> bool:
    """Whether some unit of the model can be inactive (a ReLU-family activation)."""
    return any(a.low_derivative == "inactive" for a in model.unit_activations())


def _default_input(model: Model, steps: int, batch: int | None, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    if model.axis == "depth":
        return rng.standard_normal((batch or 64, model.input_size)).astype(model.dtype)
    B = batch or 16
    batch_first = getattr(model, "batch_first", False)
    shape = (B, steps, model.input_size) if batch_first else (steps, B, model.input_size)
    return rng.standard_normal(shape).astype(model.dtype)


def _default_name(model: Model) -> str:
    from vgcore._modelspec import spec_from_model

    s = spec_from_model(model)
    if model.axis == "depth":
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
        flow per fix). Without checks the fixes are listed unmeasured.
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
    if model.stacked:
        raise NotImplementedError(
            f"diagnose covers MLPs and single-layer recurrent models, not this {model!r}; "
            "vgcore.gradient_flow(model, x) measures every layer of it (flow.layer(l) is one "
            "layer's result), and diagnose(model.layer(l), x_l) diagnoses one layer on its input"
        )
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
    fixes = _RULES[model.axis](ctx, causes, notes)
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
        lyapunov=lyap,
        not_helpful=not_helpful,
    )

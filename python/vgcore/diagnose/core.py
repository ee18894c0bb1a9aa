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
from vgcore.models import Model, model_kind

#: The causes and fixes of each family of models, by the axis its steps run along.
_RULES = {"depth": _mlp_fixes, "time": _recurrent_fixes}


def _as_model(model: Any, blocks: Any) -> Any:
    """A torch module as the model its analyses take (native kind or TorchModel)."""
    from vgcore.analysis import _torch

    if isinstance(blocks, str) and blocks == "auto":
        return _torch.resolve(model)
    if isinstance(model, Model) and model.kind == "torch":
        raise ValueError("blocks applies to a torch.nn.Module; this TorchModel has its own blocks")
    if not _torch._is_module(model):
        raise ValueError(f"blocks applies to a torch.nn.Module, not a {type(model).__name__}")
    from vgcore.torchmodel.model import TorchModel

    return TorchModel(model, blocks=blocks)


def unsupported(what: str, **given: Any) -> None:
    """A ValueError naming the arguments that do not apply to ``what``."""
    bad = [k for k, v in given.items() if v is not None]
    if bad:
        raise ValueError(
            f"{', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not apply to {what}"
        )


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
    model: Any,
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
    loss_fn: Any = None,
    cotangent: Any = None,
    blocks: Any = "auto",
) -> Diagnosis:
    """Diagnose vanishing / exploding gradients in a model and check the standard fixes.

    Parameters
    ----------
    model : MLP, RNN, LSTM, GRU, TorchModel or torch.nn.Module
        A ``torch.nn.Module`` that a native kind imports exactly (a dense ``nn.Sequential``,
        a single-layer ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``) is diagnosed natively; any other
        module as ``vgcore.TorchModel(module, blocks)``: per block, with the fixes applied to
        deep copies (see :mod:`vgcore.diagnose.rules_torch`); the module itself is never
        changed.
    x : array_like, optional
        Inputs, ``(B, in)`` for an MLP or ``(T, B, in)`` for a recurrent model; standard
        normal inputs (``batch`` x ``steps``, seeded ``seed + 1``) when omitted. Required for
        a torch module (a tensor or array of the shape its forward takes).
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
        Threads per gradient-flow call (native models).
    loss_fn : callable(y) -> scalar tensor, optional
        Torch modules: the loss whose gradient is measured (default ``0.5 * ||y||^2``).
    cotangent : tensor or array_like, optional
        Torch modules: ``dL/dy`` instead of a loss.
    blocks : "auto" or list of str
        Torch modules: how the module is cut into blocks (see :class:`vgcore.TorchModel`).

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
    model = _as_model(model, blocks)
    if not isinstance(model, Model):
        raise TypeError(
            "model must be a vgcore MLP, RNN, LSTM or GRU, a TorchModel or a torch.nn.Module, "
            f"got {type(model).__name__}"
        )
    torch_backed = model_kind(model.kind).backend == "torch"
    if not torch_backed:
        unsupported("a native model", loss_fn=loss_fn, cotangent=cotangent)
    if not torch_backed and model.stacked:
        raise NotImplementedError(
            f"diagnose covers MLPs and single-layer recurrent models, not this {model!r}; "
            "vgcore.gradient_flow(model, x) measures every layer of it (flow.layer(l) is one "
            "layer's result), and diagnose(model.layer(l), x_l) diagnoses one layer on its input"
        )
    if not torch_backed and model.flow_sweep == "generic":
        raise NotImplementedError(
            f"diagnose has no rules for a {type(model).__name__} yet (its causes and fixes are "
            "written for MLPs and RNN / LSTM / GRU cells); vgcore.gradient_flow(model, x) and "
            "vgcore.lyapunov(model, x) measure it"
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
    if torch_backed:
        from vgcore.diagnose.rules_torch import diagnose_torch

        unsupported("a torch module", init=init, batch=batch, num_threads=num_threads)
        return diagnose_torch(
            model,
            x,
            name=name,
            ratio=float(ratio),
            check=bool(check),
            seed=seed,
            keep_grads=bool(keep_grads),
            loss_fn=loss_fn,
            cotangent=cotangent,
        )
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

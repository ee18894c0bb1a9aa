"""Model transforms that apply one standard fix, for :func:`vgcore.diagnose` to re-measure.

Every function returns a new model and leaves its argument untouched. Fixes that change the
weights draw fresh ones from ``seed``; structural fixes (residual blocks, normalisation, gate
biases) keep the weights as they are, so the measured difference is the fix alone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vgcore.models import MLP, Model, RecurrentModel, model_kind

__all__ = [
    "estimate_weight_scale",
    "mlp_with",
    "recurrent_as",
    "with_gate_bias",
    "with_recurrent_init",
    "with_recurrent_scale",
]


def _copy(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else a.copy()


def mlp_with(
    model: MLP,
    *,
    activation: Any = None,
    init: Any = "keep",
    block: str | None = None,
    alpha: float | None = None,
    norm: str | None = "keep",
    seed: int = 0,
) -> MLP:
    """A copy of an MLP with one aspect changed.

    Parameters
    ----------
    activation : activation, optional
        New activation for every layer.
    init : init spec or "keep"
        Redraw every weight and bias with this scheme (:mod:`vgcore.init`), seeded, with the
        gains of the (new) activation; "keep" keeps them.
    block : {"plain", "residual", "highway"}, optional
        Make every square layer this block type (weights kept). Highway gates are drawn with
        the layer's init and a carry bias of -1.
    alpha : float, optional
        Residual branch scale.
    norm : {None, "layernorm", "batchnorm"} or "keep"
        Normalise every layer's pre-activation (gamma = 1, beta = 0).
    """
    from vgcore.init import initialize_dense

    acts = list(model.activations) if activation is None else [activation] * model.depth
    weights = [w.copy() for w in model.weights]
    biases = [_copy(b) for b in model.biases]
    rng = np.random.default_rng(seed)
    from vgcore.activations import as_activation

    acts = [as_activation(a) for a in acts]
    if init != "keep":
        spec = init
        for i, w in enumerate(model.weights):
            a = acts[i]
            nw, nb = initialize_dense(
                spec,
                w.shape[0],
                w.shape[1],
                rng=rng,
                dtype=model.dtype,
                activation=a.name,
                activation_param=a.params.get("negative_slope"),
            )
            weights[i] = nw
            biases[i] = nb if model.biases[i] is not None else None
    blocks = list(model.blocks)
    gate_w = [_copy(g) for g in model.gate_weights]
    gate_b = [_copy(g) for g in model.gate_biases]
    if block is not None:
        for i, w in enumerate(weights):
            if w.shape[0] != w.shape[1]:
                continue
            blocks[i] = block
            if block == "highway" and gate_w[i] is None:
                gate_w[i] = rng.normal(0.0, 1.0 / np.sqrt(w.shape[1]), w.shape).astype(model.dtype)
                gate_b[i] = np.full(w.shape[0], -1.0, dtype=model.dtype)
    norms = list(model.norms) if norm == "keep" else [norm] * model.depth
    nw_ = [_copy(g) for g in model.norm_weights] if norm == "keep" else None
    nb_ = [_copy(g) for g in model.norm_biases] if norm == "keep" else None
    return MLP(
        weights,
        biases,
        acts,
        dtype=model.dtype,
        block=blocks,
        alpha=model.alphas if alpha is None else alpha,
        gate_weights=gate_w,
        gate_biases=gate_b,
        norm=norms,
        norm_weights=nw_,
        norm_biases=nb_,
        eps=model.eps,
        running_means=[_copy(r) for r in model.running_means] if norm == "keep" else None,
        running_vars=[_copy(r) for r in model.running_vars] if norm == "keep" else None,
    )


def recurrent_as(
    model: RecurrentModel, kind: str, *, init: Any = None, seed: int = 0
) -> RecurrentModel:
    """A fresh ``kind`` cell ("rnn", "lstm", "gru") with the same sizes, layers and directions."""
    cls: Any = model_kind(kind).cls
    return cls.from_sizes(  # type: ignore[no-any-return]
        model.input_size,
        model.hidden_size,
        num_layers=model.num_layers,
        bidirectional=model.bidirectional,
        init=init,
        bias=model.bias_ih is not None,
        seed=seed,
        dtype=model.dtype,
    )


def with_recurrent_init(model: RecurrentModel, init: Any, *, seed: int = 0) -> RecurrentModel:
    """The same model with every layer's ``weight_hh`` redrawn from ``init`` (input weights,
    biases kept), the layers drawn in PyTorch's order from one generator."""
    from vgcore.init import initialize_recurrent

    rng = np.random.default_rng(seed)
    layers = []
    for wih, _, bih, bhh in model.layer_params():
        p = initialize_recurrent(
            init,
            model.kind,
            wih.shape[1],
            model.hidden_size,
            rng=rng,
            dtype=model.dtype,
            **model._extra_kwargs(),  # an RNN's nonlinearity shapes its init
        )
        layers.append((wih.copy(), p["weight_hh"], _copy(bih), _copy(bhh)))
    return model.with_layer_params(layers)


def with_recurrent_scale(model: RecurrentModel, factor: float) -> RecurrentModel:
    """The same model with every ``weight_hh`` multiplied by ``factor`` (everything else kept)."""
    return model.with_layer_params(
        [
            (wih.copy(), whh * factor, _copy(bih), _copy(bhh))
            for wih, whh, bih, bhh in model.layer_params()
        ]
    )


def gate_bias(model: RecurrentModel, gate: int) -> float:
    """Mean total bias (``bias_ih + bias_hh``) of gate block ``gate`` (averaged over the layers
    and directions of a stacked model)."""
    n = model.hidden_size
    totals = []
    for _, _, bih, bhh in model.layer_params():
        total = 0.0
        for b in (bih, bhh):
            if b is not None:
                total += float(np.mean(b[gate * n : (gate + 1) * n]))
        totals.append(total)
    return float(np.mean(totals))


def with_gate_bias(model: RecurrentModel, gate: int, value: float) -> RecurrentModel:
    """The same model with the total bias of gate block ``gate`` set to ``value`` in every
    layer and direction.

    ``bias_ih`` of that block becomes ``value`` and ``bias_hh`` 0 (missing biases are
    created), as the forget-bias initialisation of Jozefowicz et al. (2015) does for LSTM
    (gate 1 = f); for GRU gate 1 is the update gate z (positive: carry the state).
    """
    n = model.hidden_size
    size = model.gates * n
    layers = []
    for wih, whh, b_ih, b_hh in model.layer_params():
        bih = np.zeros(size, model.dtype) if b_ih is None else b_ih.copy()
        bhh = np.zeros(size, model.dtype) if b_hh is None else b_hh.copy()
        bih[gate * n : (gate + 1) * n] = value
        bhh[gate * n : (gate + 1) * n] = 0.0
        layers.append((wih.copy(), whh.copy(), bih, bhh))
    return model.with_layer_params(layers)


def estimate_weight_scale(model: Model) -> dict[str, Any]:
    """Mean-field scale of the weights: ``sigma_w2 = fan_in * E[W^2]``, ``sigma_b2 = E[b^2]``.

    Over the arrays the model names (:meth:`~vgcore.models.Model.weight_scale_params`): an
    MLP's layers (all of them), a recurrent model's ``weight_hh`` and total biases.
    ``gaussian`` says whether the weights look normally distributed (pooled kurtosis of the
    per-layer standardised weights within 0.3 of 3, or 4 standard errors ``sqrt(24 / n)`` for
    fewer than 4,267 weights; a uniform law has 1.8).
    """
    ws, bs = model.weight_scale_params()
    sw2 = float(np.mean([w.shape[1] * np.mean(np.square(w, dtype=np.float64)) for w in ws]))
    sb2 = float(np.mean([np.mean(np.square(b, dtype=np.float64)) for b in bs])) if bs else 0.0
    z = np.concatenate([((w - w.mean()) / (w.std() or 1.0)).ravel() for w in ws]).astype(np.float64)
    kurt = float(np.mean(z**4)) if z.size else float("nan")
    mean_ratio = float(np.mean([abs(w.mean()) / (w.std() or 1.0) for w in ws]))
    # 4 standard errors of the sample kurtosis (sqrt(24 / n)), at least 0.3: a 32 x 32 Gaussian
    # matrix is not called uniform by chance (1.8), nor uniform weights Gaussian
    tol = max(0.3, 4.0 * math.sqrt(24.0 / max(z.size, 1)))
    return {
        "sigma_w2": sw2,
        "sigma_b2": sb2,
        "kurtosis": kurt,
        "gaussian": bool(z.size >= 1000 and abs(kurt - 3.0) < tol and mean_ratio < 0.1),
    }

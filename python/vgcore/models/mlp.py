"""Dense stacks (``nn.Sequential`` of ``nn.Linear``, activations, norms, residual / highway blocks)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from vgcore._validation import (
    as_float_array,
    resolve_dtype,
)
from vgcore.activations import Activation, ActivationLike, as_activation, from_torch_module
from vgcore.models.base import (
    ActivationFn,
    Model,
    _checked_sizes,
    _infer_dtype,
    _rng,
    _torch_to_numpy,
)
from vgcore.models.registry import register_model_kind

__all__ = ["MLP"]


_DBN_OPTIONS = ("epochs", "lr", "batch_size")


def _dbn_options(init: Any) -> dict[str, Any] | None:
    """``init="dbn"`` or ``{"name": "dbn", **options}``: the options; None for other inits."""
    if isinstance(init, str) and init.strip().lower() == "dbn":
        return {}
    if isinstance(init, dict) and str(init.get("name", "")).strip().lower() == "dbn":
        opts = {k: v for k, v in init.items() if k != "name"}
        unknown = [k for k in opts if k not in _DBN_OPTIONS]
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(map(repr, unknown))} for init 'dbn'; "
                f"allowed: {', '.join(_DBN_OPTIONS)}"
            )
        return opts
    return None


class _LayerLists:
    """The per-layer lists of an MLP being read from a module or a state_dict: a Linear starts
    a layer, a normalisation directly after it completes the layer."""

    def __init__(self) -> None:
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray | None] = []
        self.norms: list[str | None] = []
        self.norm_weights: list[np.ndarray | None] = []
        self.norm_biases: list[np.ndarray | None] = []
        self.running_means: list[np.ndarray | None] = []
        self.running_vars: list[np.ndarray | None] = []

    def add_linear(self, weight: np.ndarray, bias: np.ndarray | None) -> None:
        self.weights.append(weight)
        self.biases.append(bias)
        for lst in (
            self.norms,
            self.norm_weights,
            self.norm_biases,
            self.running_means,
            self.running_vars,
        ):
            lst.append(None)

    def can_normalise(self) -> bool:
        """Whether a normalisation may come next (right after a Linear, once)."""
        return bool(self.weights) and self.norms[-1] is None

    def set_norm(
        self,
        kind: str,
        weight: np.ndarray | None,
        bias: np.ndarray | None,
        running_mean: np.ndarray | None = None,
        running_var: np.ndarray | None = None,
    ) -> None:
        """The last layer's normalisation (running statistics: BatchNorm in eval mode)."""
        self.norms[-1] = kind
        self.norm_weights[-1], self.norm_biases[-1] = weight, bias
        self.running_means[-1], self.running_vars[-1] = running_mean, running_var

    def norm_kwargs(self) -> dict[str, Any]:
        """The MLP constructor's normalisation arguments."""
        return {
            "norm": self.norms,
            "norm_weights": self.norm_weights,
            "norm_biases": self.norm_biases,
            "running_means": self.running_means,
            "running_vars": self.running_vars,
        }


class MLP(Model):
    """A dense stack ``h_l = phi_l(W_l h_{l-1} + b_l)``, l = 1..L.

    Parameters
    ----------
    weights : sequence of array_like, each of shape (out_l, in_l)
        ``in_l`` must equal ``out_{l-1}`` (nn.Linear layout).
    biases : sequence of (array_like of shape (out_l,) or None), optional
        None (the default) means no biases.
    activations : activation or sequence of activations, default "tanh"
        One per layer, or one for all layers. Names as in :mod:`vgcore.activations`.
    dtype : float32 or float64, optional
        Defaults to float32 if any weight is float32, else float64.
    block : {"plain", "residual", "highway"} or sequence of them
        ``residual``: ``h_l = h_{l-1} + alpha_l * phi(...)``; ``highway``:
        ``h_l = t * phi(...) + (1 - t) * h_{l-1}`` with the carry gate
        ``t = sigmoid(G_l h_{l-1} + c_l)``. Both need square layers.
    alpha : float or sequence of float
        Residual branch scale (default 1).
    gate_weights, gate_biases : sequences of arrays of shape (out, in) / (out,), optional
        Highway gate parameters (``None`` entries for other layers).
    norm : {None, "layernorm", "batchnorm"} or sequence of them
        Normalisation of the pre-activation ``W h + b`` (LayerNorm per sample; BatchNorm with
        training-mode batch statistics, differentiated through the batch mean and variance).
    norm_weights, norm_biases : sequences of arrays of shape (out,), optional
        The affine ``gamma`` / ``beta`` (``None``: 1 / 0).
    running_means, running_vars : sequences of (array of shape (out,) or None), optional
        BatchNorm layers given both use these statistics, as ``nn.BatchNorm1d`` does in
        ``eval()`` mode: ``gamma * (z - mean) / sqrt(var + eps) + beta``, a per-sample
        affine map (so the Jacobian analyses accept it). BatchNorm layers without them use
        the batch's statistics, as in ``train()`` mode, and couple the samples of a batch.
    eps : float
        Normalisation epsilon (PyTorch default 1e-5).
    """

    kind = "mlp"
    flow_sweep = "dense"

    def __init__(
        self,
        weights: Sequence[Any],
        biases: Sequence[Any | None] | None = None,
        activations: ActivationLike | Sequence[ActivationLike] = "tanh",
        *,
        dtype: object = None,
        block: str | Sequence[str] = "plain",
        alpha: float | Sequence[float] = 1.0,
        gate_weights: Sequence[Any | None] | None = None,
        gate_biases: Sequence[Any | None] | None = None,
        norm: str | Sequence[str | None] | None = None,
        norm_weights: Sequence[Any | None] | None = None,
        norm_biases: Sequence[Any | None] | None = None,
        eps: float = 1e-5,
        running_means: Sequence[Any | None] | None = None,
        running_vars: Sequence[Any | None] | None = None,
    ) -> None:
        if isinstance(weights, np.ndarray) and weights.ndim == 2:
            weights = [weights]
        weights = list(weights)
        if not weights:
            raise ValueError("weights must contain at least one layer, got 0")
        self.dtype = _infer_dtype(weights, dtype)
        L = len(weights)
        if biases is None:
            biases = [None] * L
        biases = list(biases)
        if len(biases) != L:
            raise ValueError(f"biases must have {L} entries (one per layer), got {len(biases)}")
        if isinstance(activations, (str, Activation)) or (
            isinstance(activations, tuple)
            and len(activations) == 2
            and isinstance(activations[1], dict)
        ):
            acts = [as_activation(activations, "activations")] * L
        else:
            acts = [as_activation(a, f"activations[{i}]") for i, a in enumerate(activations)]
            if len(acts) != L:
                raise ValueError(
                    f"activations must have {L} entries (one per layer), got {len(acts)}"
                )
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray | None] = []
        prev = None
        for i, (w, b) in enumerate(zip(weights, biases)):
            w = as_float_array(w, f"weights[{i}]", self.dtype, ndim=2)
            if prev is not None and w.shape[1] != prev:
                raise ValueError(
                    f"weights[{i}] must have shape (*, {prev}) to follow layer {i - 1} "
                    f"with {prev} outputs, got {w.shape}"
                )
            prev = w.shape[0]
            self.weights.append(w)
            self.biases.append(
                None
                if b is None
                else as_float_array(b, f"biases[{i}]", self.dtype, shape=(w.shape[0],))
            )
        self.activations: list[Activation] = acts
        self._init_blocks(
            block, alpha, gate_weights, gate_biases, norm, norm_weights, norm_biases, eps
        )
        self._init_running_stats(running_means, running_vars)

    def _init_blocks(
        self,
        block: Any,
        alpha: Any,
        gate_weights: Any,
        gate_biases: Any,
        norm: Any,
        norm_weights: Any,
        norm_biases: Any,
        eps: float,
    ) -> None:
        L = len(self.weights)

        def per_layer(value: Any, name: str, scalar_types: tuple[type, ...]) -> list[Any]:
            if value is None or isinstance(value, scalar_types):
                return [value] * L
            out = list(value)
            if len(out) != L:
                raise ValueError(f"{name} must have {L} entries (one per layer), got {len(out)}")
            return out

        self.blocks: list[str] = per_layer(block, "block", (str,))
        self.alphas: list[float] = [float(a) for a in per_layer(alpha, "alpha", (int, float))]
        norms = per_layer(norm, "norm", (str,))
        self.norms: list[str | None] = [None if n in (None, "none") else n for n in norms]
        for i, (b, n, w) in enumerate(zip(self.blocks, self.norms, self.weights)):
            if b not in ("plain", "residual", "highway"):
                raise ValueError(f"block[{i}] must be 'plain', 'residual' or 'highway', got {b!r}")
            if b != "plain" and w.shape[0] != w.shape[1]:
                raise ValueError(
                    f"block[{i}] is {b!r}, which needs a square layer, but weights[{i}] has shape {w.shape}"
                )
            if n not in (None, "layernorm", "batchnorm"):
                raise ValueError(f"norm[{i}] must be None, 'layernorm' or 'batchnorm', got {n!r}")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        self.eps = float(eps)

        def arrays(values: Any, name: str, shape_of: Any) -> list[np.ndarray | None]:
            vals = [None] * L if values is None else list(values)
            if len(vals) != L:
                raise ValueError(f"{name} must have {L} entries (one per layer), got {len(vals)}")
            return [
                None
                if v is None
                else as_float_array(v, f"{name}[{i}]", self.dtype, shape=shape_of(i))
                for i, v in enumerate(vals)
            ]

        out_of = lambda i: (self.weights[i].shape[0],)  # noqa: E731
        self.gate_weights = arrays(gate_weights, "gate_weights", lambda i: self.weights[i].shape)
        self.gate_biases = arrays(gate_biases, "gate_biases", out_of)
        self.norm_weights = arrays(norm_weights, "norm_weights", out_of)
        self.norm_biases = arrays(norm_biases, "norm_biases", out_of)
        for i, b in enumerate(self.blocks):
            if b == "highway" and self.gate_weights[i] is None:
                raise ValueError(f"block[{i}] is 'highway' but gate_weights[{i}] is None")

    def _init_running_stats(self, means: Any, variances: Any) -> None:
        L = len(self.weights)
        out: dict[str, list[np.ndarray | None]] = {}
        for name, values in (("running_means", means), ("running_vars", variances)):
            vals = [None] * L if values is None else list(values)
            if len(vals) != L:
                raise ValueError(f"{name} must have {L} entries (one per layer), got {len(vals)}")
            out[name] = [
                None
                if v is None
                else as_float_array(
                    v, f"{name}[{i}]", self.dtype, shape=(self.weights[i].shape[0],)
                )
                for i, v in enumerate(vals)
            ]
        for i, (mu, var) in enumerate(zip(out["running_means"], out["running_vars"])):
            if (mu is None) != (var is None):
                raise ValueError(
                    f"running_means[{i}] and running_vars[{i}] must be given together (eval-mode "
                    "BatchNorm) or both be None"
                )
            if mu is not None and self.norms[i] != "batchnorm":
                raise ValueError(
                    f"running_means[{i}] is given, but layer {i} has norm={self.norms[i]!r}; "
                    "running statistics belong to BatchNorm layers"
                )
            if var is not None and (var < 0).any():
                raise ValueError(f"running_vars[{i}] must be >= 0, got min {var.min():g}")
        self.running_means = out["running_means"]
        self.running_vars = out["running_vars"]

    def norm_mode(self, i: int) -> str | None:
        """Layer ``i``'s normalisation as analysed: None, ``"layernorm"``, ``"batchnorm"``
        (batch statistics, train mode) or ``"batchnorm_eval"`` (running statistics)."""
        n = self.norms[i]
        if n == "batchnorm" and self.running_means[i] is not None:
            return "batchnorm_eval"
        return n

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_sizes(
        cls,
        sizes: Sequence[int],
        activation: ActivationLike = "tanh",
        *,
        init: Any = None,
        bias: bool = True,
        seed: int | np.random.Generator | None = 0,
        dtype: object = np.float64,
        output_activation: ActivationLike | None = None,
        residual: bool | float = False,
        highway: bool = False,
        highway_bias: float = -1.0,
        norm: str | None = None,
        data: Any = None,
    ) -> MLP:
        """Build an MLP from layer sizes ``[in, h_1, ..., h_L]`` with a seeded init.

        Parameters
        ----------
        sizes : sequence of int
            Widths of the input and of every layer output (at least two entries).
        activation : activation, default "tanh"
            Applied after every layer (``output_activation`` overrides the last one).
        init : str, dict or vgcore.init.Init, optional
            Initialisation scheme (see :mod:`vgcore.init`); PyTorch's default when None.
        bias : bool
            Whether layers have biases.
        seed : int or numpy Generator
            Seed of the initialisation.
        residual : bool or float
            Make every square layer a residual block (a float sets the branch scale alpha).
        highway : bool
            Make every square layer a highway block; gate weights use the same init and the gate
            bias is ``highway_bias`` (negative: carry by default, Srivastava et al. 2015).
        norm : {None, "layernorm", "batchnorm"}
            Normalise every layer's pre-activation (gamma = 1, beta = 0).
        data : array_like of shape (n_samples, sizes[0]), optional
            Training data in [0, 1] for ``init="dbn"`` (Deep Belief Network pre-training,
            :func:`vgcore.init.dbn_pretrain`: every layer an RBM trained by CD-1 on the
            layer below; ``init={"name": "dbn", "epochs": 10, "lr": 0.1, "batch_size": 10}``
            sets its options). DBN layers are sigmoid, plain blocks; the output layer is
            pre-trained too, whatever ``output_activation``.
        """
        from vgcore.init import initialize_dense

        dbn = _dbn_options(init)
        if dbn is None and data is not None:
            raise ValueError(
                f"data is only used by init='dbn' (DBN pre-training), got init={init!r}"
            )
        if dbn is not None:
            return cls._from_dbn(
                sizes, activation, dbn, data, bias=bias, seed=seed, dtype=dtype,
                output_activation=output_activation, residual=residual, highway=highway,
                norm=norm,
            )  # fmt: skip

        dt = resolve_dtype(dtype)
        sizes = _checked_sizes(sizes, dt, 2 if highway else 1)
        if len(sizes) < 2:
            raise ValueError(f"sizes must have at least 2 entries (input, output), got {sizes}")
        act = as_activation(activation)
        acts = [act] * (len(sizes) - 1)
        if output_activation is not None:
            acts[-1] = as_activation(output_activation, "output_activation")
        rng = _rng(seed)
        ws, bs = [], []
        for i in range(len(sizes) - 1):
            a = acts[i]
            slope = a.params.get("negative_slope")
            w, b = initialize_dense(
                init,
                sizes[i + 1],
                sizes[i],
                rng=rng,
                dtype=dt,
                activation=a.name,
                activation_param=slope,
            )
            ws.append(w)
            bs.append(b if bias else None)
        if residual is not False and highway:
            raise ValueError("choose residual or highway blocks, not both")
        square = [w.shape[0] == w.shape[1] for w in ws]
        blocks = ["plain"] * len(ws)
        alpha = 1.0 if residual is True else float(residual or 1.0)
        gws: list[np.ndarray | None] = [None] * len(ws)
        gbs: list[np.ndarray | None] = [None] * len(ws)
        for i, sq in enumerate(square):
            if sq and residual is not False:
                blocks[i] = "residual"
            elif sq and highway:
                blocks[i] = "highway"
                gw, _ = initialize_dense(
                    init, sizes[i + 1], sizes[i], rng=rng, dtype=dt, activation="sigmoid"
                )
                gws[i], gbs[i] = gw, np.full(sizes[i + 1], highway_bias, dtype=dt)
        return cls(
            ws,
            bs,
            acts,
            dtype=dt,
            block=blocks,
            alpha=alpha,
            gate_weights=gws,
            gate_biases=gbs,
            norm=norm,
            norm_weights=None if norm is None else [np.ones(n, dt) for n in sizes[1:]],
            norm_biases=None if norm is None else [np.zeros(n, dt) for n in sizes[1:]],
        )

    @classmethod
    def _from_dbn(
        cls,
        sizes: Sequence[int],
        activation: ActivationLike,
        options: dict[str, Any],
        data: Any,
        *,
        bias: bool,
        seed: int | np.random.Generator | None,
        dtype: object,
        output_activation: ActivationLike | None,
        residual: bool | float,
        highway: bool,
        norm: str | None,
    ) -> MLP:
        """``from_sizes`` with ``init="dbn"``: the weights of a DBN pre-trained on ``data``."""
        from vgcore.init import dbn_pretrain

        if data is None:
            raise ValueError(
                "init='dbn' pre-trains on data: pass data=X of shape (n_samples, sizes[0])"
            )
        act = as_activation(activation)
        if act.name != "sigmoid":
            raise ValueError(
                f"init='dbn' builds sigmoid layers (RBM hidden units are logistic): "
                f"activation must be 'sigmoid', got {act.name!r}"
            )
        if residual is not False or highway or norm is not None:
            raise ValueError(
                "init='dbn' builds plain layers: residual, highway and norm must be left off"
            )
        dt = resolve_dtype(dtype)
        sizes = _checked_sizes(sizes, dt, 1)
        layers = dbn_pretrain(sizes, data, seed=_rng(seed), dtype=dt, **options)
        acts = [act] * len(layers)
        if output_activation is not None:
            acts[-1] = as_activation(output_activation, "output_activation")
        ws = [w for w, _ in layers]
        bs = [b if bias else None for _, b in layers]
        return cls(ws, bs, acts, dtype=dt)

    @classmethod
    def from_torch(cls, module: Any, *, dtype: object = None) -> MLP:
        """Import an ``nn.Sequential`` of ``nn.Linear`` and activation modules.

        A Linear followed by ``nn.Identity`` or by another Linear is linear; ``nn.Dropout``
        is skipped (evaluation semantics; a note says so when the module is in ``train()``
        mode). ``nn.BatchNorm1d`` follows the module's mode: in ``eval()`` it uses its running
        statistics (a per-sample affine map), in ``train()`` the batch's statistics (noted).
        Other modules raise NotImplementedError.
        """
        from torch import nn

        if isinstance(module, nn.Linear):
            module = nn.Sequential(module)
        if not isinstance(module, nn.Sequential):
            raise TypeError(
                f"module must be an nn.Sequential of nn.Linear and activations, got {type(module).__name__}"
            )
        layers = _LayerLists()
        ws = layers.weights
        acts: list[Activation] = []
        eps = None
        notes: list[str] = []
        for idx, sub in enumerate(module):
            if isinstance(sub, nn.Linear):
                layers.add_linear(
                    _torch_to_numpy(sub.weight, f"module[{idx}].weight"),
                    None if sub.bias is None else _torch_to_numpy(sub.bias, f"module[{idx}].bias"),
                )
                acts.append(Activation("identity"))
                continue
            if isinstance(sub, nn.Dropout):
                if sub.p > 0 and sub.training:
                    notes.append(
                        f"module[{idx}] (Dropout p={sub.p:g}) is in train() mode; analysed with "
                        "evaluation semantics (identity): call .eval() to silence this note"
                    )
                continue
            if isinstance(sub, nn.Flatten):
                continue
            if isinstance(sub, (nn.LayerNorm, nn.BatchNorm1d)):
                kind = "layernorm" if isinstance(sub, nn.LayerNorm) else "batchnorm"
                if not layers.can_normalise() or not acts[-1].is_linear:
                    raise NotImplementedError(
                        f"module[{idx}] ({type(sub).__name__}) must directly follow an nn.Linear "
                        "(normalisation of the pre-activation)"
                    )
                if eps is not None and sub.eps != eps:
                    raise NotImplementedError("normalisation layers with different eps values")
                eps = float(sub.eps)
                rm = rv = None
                if kind == "batchnorm":
                    has_stats = sub.running_mean is not None and sub.running_var is not None
                    if not sub.training and has_stats:
                        rm = _torch_to_numpy(sub.running_mean, f"module[{idx}].running_mean")
                        rv = _torch_to_numpy(sub.running_var, f"module[{idx}].running_var")
                    elif has_stats:
                        notes.append(
                            f"module[{idx}] (BatchNorm1d) is in train() mode: analysed with the "
                            "batch's statistics; call .eval() to use its running statistics"
                        )
                layers.set_norm(
                    kind,
                    None
                    if sub.weight is None
                    else _torch_to_numpy(sub.weight, f"module[{idx}].weight"),
                    None if sub.bias is None else _torch_to_numpy(sub.bias, f"module[{idx}].bias"),
                    rm,
                    rv,
                )
                continue
            act: Activation | None
            if isinstance(sub, nn.PReLU):
                if sub.weight.numel() != 1:
                    raise NotImplementedError(
                        "nn.PReLU with one slope per channel is not supported"
                    )
                act = Activation(
                    "leaky_relu", negative_slope=float(sub.weight.detach().reshape(()))
                )
            else:
                act = from_torch_module(sub)
            if act is None:
                raise NotImplementedError(
                    f"module[{idx}] is {type(sub).__name__}, which vgcore.MLP does not support "
                    "(expected nn.Linear, an activation module, nn.Identity or nn.Dropout)"
                )
            if act.is_linear:
                continue
            if not ws:
                raise NotImplementedError(
                    f"module[{idx}] ({type(sub).__name__}) comes before the first nn.Linear"
                )
            if not acts[-1].is_linear:
                raise NotImplementedError(
                    f"module[{idx}] ({type(sub).__name__}) follows another activation; "
                    "composed activations are not supported"
                )
            acts[-1] = act
        if not ws:
            raise ValueError("module contains no nn.Linear layer")
        if dtype is None:
            dtype = ws[0].dtype  # float32 for float16 / bfloat16 modules (_torch_to_numpy)
        out = cls(
            ws,
            layers.biases,
            acts,
            dtype=dtype,
            eps=1e-5 if eps is None else eps,
            **layers.norm_kwargs(),
        )
        out.notes = tuple(notes)
        return out

    def to_torch(self) -> Any:
        """An equivalent ``nn.Sequential`` (same dtype, copied parameters)."""
        import torch
        from torch import nn

        from vgcore.activations import to_torch_module

        if any(b != "plain" for b in self.blocks):
            raise NotImplementedError(
                "to_torch exports plain layers (with optional LayerNorm/BatchNorm1d) only; "
                "residual and highway blocks have no nn.Sequential equivalent"
            )
        tdtype = torch.float32 if self.dtype == np.float32 else torch.float64
        mods: list[Any] = []
        for i, (w, b, a) in enumerate(zip(self.weights, self.biases, self.activations)):
            lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=tdtype)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                if b is not None:
                    lin.bias.copy_(torch.from_numpy(b))
            mods.append(lin)
            if self.norms[i] is not None:
                gamma, beta = self.norm_weights[i], self.norm_biases[i]
                affine = gamma is not None or beta is not None
                n = w.shape[0]
                norm_mod: Any = (
                    nn.LayerNorm(n, eps=self.eps, elementwise_affine=affine, dtype=tdtype)
                    if self.norms[i] == "layernorm"
                    else nn.BatchNorm1d(n, eps=self.eps, affine=affine, dtype=tdtype)
                )
                if affine:
                    with torch.no_grad():
                        norm_mod.weight.copy_(
                            torch.from_numpy(gamma if gamma is not None else np.ones(n, self.dtype))
                        )
                        norm_mod.bias.copy_(
                            torch.from_numpy(beta if beta is not None else np.zeros(n, self.dtype))
                        )
                if self.norm_mode(i) == "batchnorm_eval":  # running statistics: eval mode
                    with torch.no_grad():
                        norm_mod.running_mean.copy_(torch.from_numpy(self.running_means[i]))
                        norm_mod.running_var.copy_(torch.from_numpy(self.running_vars[i]))
                    norm_mod.eval()
                mods.append(norm_mod)
            if not a.is_linear:
                mods.append(to_torch_module(a))
        return nn.Sequential(*mods)

    # -- properties -------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def state_dim(self) -> int:
        return self.input_size

    @property
    def num_layers(self) -> int:
        return self.depth

    def _spec_of(self, params: Any) -> dict[str, Any]:
        return {"kind": "mlp", "layers": params}

    def unit_activations(self) -> tuple[Activation, ...]:
        return tuple(self.activations)

    def step_jacobian_dims(self) -> list[int]:
        s = self.sizes
        return [max(s[i], s[i + 1]) for i in range(self.depth)]

    def jacobian_obstacle(self) -> str | None:
        bad = [i for i in range(self.depth) if self.norm_mode(i) == "batchnorm"]
        if not bad:
            return None
        return (
            f"layer {bad[0]} uses BatchNorm with batch statistics (train mode), which "
            "couples the samples of a batch: the per-sample Jacobian d h_l / d h_(l-1) is "
            "not defined. Eval-mode BatchNorm (running_means / running_vars given, or an "
            "imported module in eval()) and LayerNorm are supported"
        )

    def lyapunov_obstacle(self) -> str | None:
        if len(set(self.sizes)) > 1:
            return (
                "Lyapunov exponents of a dense stack need every layer to keep the width, "
                f"but the widths are {self.sizes}"
            )
        return self.jacobian_obstacle()

    def describe(self) -> str:
        return f"MLP depth={self.depth} widths={self.sizes[0]}..{self.sizes[-1]}"

    def flat_spec(self) -> dict[str, Any]:
        acts = {str(a) for a in self.activations}
        blocks = set(self.blocks) - {"plain"}
        norms = {n for n in self.norms if n}
        return {
            "model": "mlp",
            "depth": self.depth,
            "width": max(self.sizes[1:]),
            "input_size": self.input_size,
            "activation": acts.pop() if len(acts) == 1 else "mixed",
            "block": blocks.pop() if len(blocks) == 1 else ("mixed" if blocks else "plain"),
            "norm": norms.pop() if len(norms) == 1 else ("mixed" if norms else None),
        }

    def mean_field_setting(self) -> str | None:
        plain = set(self.blocks) == {"plain"} and not any(self.norms)
        return "dense" if plain else None

    def weight_scale_params(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return list(self.weights), [b for b in self.biases if b is not None]

    def unit_preactivations(
        self, x: np.ndarray, h0: np.ndarray | None, phi: ActivationFn
    ) -> Iterator[tuple[Activation, np.ndarray]]:
        if h0 is not None:
            raise ValueError("h0 is only meaningful for recurrent models; an MLP takes x alone")
        h = np.asarray(x, dtype=np.float64)
        for i in range(self.depth):
            act = self.activations[i]
            z = h @ np.asarray(self.weights[i], np.float64).T
            if self.biases[i] is not None:
                z = z + np.asarray(self.biases[i], np.float64)
            mode = self.norm_mode(i)
            if mode:
                if mode == "batchnorm_eval":
                    mu = np.asarray(self.running_means[i], np.float64)
                    var = np.asarray(self.running_vars[i], np.float64)
                else:
                    axis = 1 if mode == "layernorm" else 0
                    mu = z.mean(axis=axis, keepdims=True)
                    var = z.var(axis=axis, keepdims=True)
                z = (z - mu) / np.sqrt(var + self.eps)
                if self.norm_weights[i] is not None:
                    z = z * np.asarray(self.norm_weights[i], np.float64)
                if self.norm_biases[i] is not None:
                    z = z + np.asarray(self.norm_biases[i], np.float64)
            yield act, z
            out = phi(act, z)
            if self.blocks[i] == "residual":
                h = h + self.alphas[i] * out
            elif self.blocks[i] == "highway":
                g = h @ np.asarray(self.gate_weights[i], np.float64).T
                if self.gate_biases[i] is not None:
                    g = g + np.asarray(self.gate_biases[i], np.float64)
                t = 1.0 / (1.0 + np.exp(-g))
                h = t * out + (1.0 - t) * h
            else:
                h = out

    @property
    def sizes(self) -> list[int]:
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]

    @property
    def input_size(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def output_size(self) -> int:
        return int(self.weights[-1].shape[0])

    def parameters(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i in range(self.depth):
            for key, arr in (
                ("weight", self.weights[i]),
                ("bias", self.biases[i]),
                ("norm.weight", self.norm_weights[i]),
                ("norm.bias", self.norm_biases[i]),
                ("gate.weight", self.gate_weights[i]),
                ("gate.bias", self.gate_biases[i]),
            ):
                if arr is not None:
                    out[f"layers.{i}.{key}"] = arr
        return out

    def _rebuild(self, dtype: np.dtype, *, copy: bool) -> MLP:
        def cast(arrs: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
            if not copy:
                return list(arrs)
            return [None if a is None else np.asarray(a).astype(dtype) for a in arrs]

        out = MLP(
            cast(self.weights),
            cast(self.biases),
            self.activations,
            dtype=dtype,
            block=self.blocks,
            alpha=self.alphas,
            gate_weights=cast(self.gate_weights),
            gate_biases=cast(self.gate_biases),
            norm=self.norms,
            norm_weights=cast(self.norm_weights),
            norm_biases=cast(self.norm_biases),
            eps=self.eps,
            running_means=cast(self.running_means),
            running_vars=cast(self.running_vars),
        )
        out.notes = self.notes
        return out

    def _named_arrays(self) -> list[tuple[str, np.ndarray]]:
        out = []
        for attr in (
            "weights",
            "biases",
            "gate_weights",
            "gate_biases",
            "norm_weights",
            "norm_biases",
            "running_means",
            "running_vars",
        ):
            out += [(f"{attr}[{i}]", a) for i, a in enumerate(getattr(self, attr)) if a is not None]
        return out

    def layer_specs(self) -> list[dict[str, Any]]:
        """Per-layer dicts in the form the compiled core takes."""
        return [
            {
                "weight": self.weights[i],
                "bias": self.biases[i],
                "act": self.activations[i].core_args(),
                "block": self.blocks[i],
                "alpha": self.alphas[i],
                "gate_weight": self.gate_weights[i],
                "gate_bias": self.gate_biases[i],
                "norm": self.norm_mode(i) or "none",
                "running_mean": self.running_means[i],
                "running_var": self.running_vars[i],
                "norm_weight": self.norm_weights[i],
                "norm_bias": self.norm_biases[i],
                "eps": self.eps,
            }
            for i in range(self.depth)
        ]

    def _own_params(self) -> list[dict[str, Any]]:
        return self.layer_specs()

    def __repr__(self) -> str:
        acts = {str(a) for a in self.activations}
        act = acts.pop() if len(acts) == 1 else "mixed"
        extra = ""
        kinds = set(self.blocks) - {"plain"}
        if kinds:
            extra += f", block={'/'.join(sorted(kinds))}"
        norms = {n for n in self.norms if n}
        if norms:
            extra += f", norm={'/'.join(sorted(norms))}"
        return f"MLP(sizes={self.sizes}, activation={act}{extra}, dtype={self.dtype.name})"


register_model_kind(
    MLP, torch_classes=("Sequential",), description="dense stack (plain, residual, highway)"
)

"""Network descriptions: numpy weights in PyTorch's layout, built from sizes or imported.

Every model holds float32 or float64 numpy arrays laid out exactly as the matching PyTorch
module stores them (``nn.Linear.weight`` is ``(out, in)``; ``nn.LSTM.weight_ih_l0`` is
``(4N, in)`` with gates i, f, g, o; ``nn.GRU`` gates r, z, n), so weights move between the
two without transposes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vgcore._validation import (
    HALF_DTYPES,
    as_float_array,
    available_memory_bytes,
    check_memory,
    check_positive_int,
    check_seed,
    deferred_finite_check,
    first_nonfinite,
    resolve_dtype,
)
from vgcore.activations import Activation, ActivationLike, as_activation, from_torch_module

__all__ = [
    "GRU",
    "LSTM",
    "MLP",
    "RNN",
    "Model",
    "ModelKind",
    "RecurrentModel",
    "model_kind",
    "model_kinds",
    "register_model_kind",
]


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    checked = check_seed(seed, allow_generator=True)
    if isinstance(checked, np.random.Generator):
        return checked
    return np.random.default_rng(checked)  # type: ignore[arg-type]


def _infer_dtype(arrays: Sequence[Any], dtype: object) -> np.dtype:
    """The model dtype: ``dtype`` if given, else float32 when any parameter is float32 or
    narrower (float16 / bfloat16 are read exactly as float32), else float64."""
    if dtype is not None:
        return resolve_dtype(dtype)
    for a in arrays:
        dt = getattr(a, "dtype", None)
        if dt is None:
            continue
        name = str(dt).removeprefix("torch.")
        if name in HALF_DTYPES or name == "float32":
            return np.dtype(np.float32)
    return np.dtype(np.float64)


def _torch_to_numpy(t: Any, name: str = "parameter") -> np.ndarray:
    """A parameter tensor as numpy (half precision widened exactly to float32)."""
    dtype = str(t.dtype).removeprefix("torch.")
    if t.is_complex() or not t.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor, got torch dtype {dtype}")
    t = t.detach()
    if dtype in HALF_DTYPES:
        t = t.float()
    return np.array(t.cpu().numpy(), copy=True)


def _check_param_memory(shapes: Sequence[tuple[int, ...]], dtype: np.dtype, what: str) -> None:
    n = sum(math.prod(s) for s in shapes)
    check_memory(float(n) * np.dtype(dtype).itemsize, what, "reduce the sizes")


def _checked_sizes(sizes: Sequence[int], dtype: np.dtype, matrices: int) -> list[int]:
    """Validated layer sizes; refuses (InsufficientMemoryError) as soon as the running total
    of parameter memory exceeds what is available, so a huge depth fails fast."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise TypeError(f"sizes must be a sequence of int, got {type(sizes).__name__}")
    avail = available_memory_bytes()
    budget = None if avail is None else 0.9 * avail
    item = np.dtype(dtype).itemsize
    out: list[int] = []
    total = 0.0
    for i, s in enumerate(sizes):
        out.append(check_positive_int(s, f"sizes[{i}]"))
        if i:
            total += item * matrices * (out[i] * out[i - 1] + out[i])
            if budget is not None and total > budget:
                check_memory(
                    total,
                    f"MLP.from_sizes (its first {i} of {len(sizes) - 1} layers)",
                    "reduce the depth or width",
                )
    return out


class Model:
    """Base class: a dtype and the parameters, re-validated before every analysis.

    Parameters are plain numpy arrays that users may update in place (as in a training
    loop) or replace; every analysis re-reads and re-checks them (:meth:`validate`), so no
    analysis ever uses a stale copy.
    """

    kind: ClassVar[str] = "model"
    #: The axis the analyses step along: ``"depth"`` (one step per layer, ``h_0 = x``) or
    #: ``"time"`` (one step per time step, driven by ``x_t``).
    axis: ClassVar[str] = "depth"
    #: The parts of the state a step maps, concatenated in that order (LSTM: ``("h", "c")``).
    state_names: ClassVar[tuple[str, ...]] = ("h",)
    #: Gate blocks of a gated cell in PyTorch's order (LSTM ``i, f, g, o``; GRU ``r, z, n``).
    gate_names: ClassVar[tuple[str, ...]] = ()
    dtype: np.dtype
    #: Notes on how an imported module was mapped (e.g. dropout skipped), shown in results.
    notes: tuple[str, ...] = ()

    @property
    def step_name(self) -> str:
        """What one step is called in results and messages: ``"layer"`` or ``"step"``."""
        return "layer" if self.axis == "depth" else "step"

    @property
    def state_dim(self) -> int:
        """Dimension of the state the first step maps (a dense stack: its input width)."""
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        """Layers: a dense stack's depth (its steps), a recurrent model's stacked layers."""
        raise NotImplementedError

    @property
    def input_size(self) -> int:
        """Features of one input sample (a dense stack's ``x``; a recurrent model's ``x_t``)."""
        raise NotImplementedError

    def to_spec(self, dtype: object = None, *, check_finite: bool = True) -> dict[str, Any]:
        """The model description the compiled core takes, with the parameters in ``dtype``.

        Parameters
        ----------
        dtype : float32 or float64, optional
            Default: the model's dtype.
        check_finite : bool
            Refuse NaN/Inf parameters (naming them) before the description is built.

        Returns
        -------
        dict
            ``{"kind": "mlp", "layers": [per-layer dicts]}`` for a dense stack, or
            ``{"kind": cell, "weight_ih", "weight_hh", "bias_ih", "bias_hh"}`` (arrays of
            shapes ``(G*N, I)``, ``(G*N, N)``, ``(G*N,)`` or None) for a recurrent cell.
            The parameters are read afresh (no cache), so an in-place update is seen.
        """
        dt = self.dtype if dtype is None else resolve_dtype(dtype)
        return self._spec_of(self._params_as(dt, check_finite=check_finite))

    def _spec_of(self, params: Any) -> dict[str, Any]:
        raise NotImplementedError

    def jacobian_obstacle(self) -> str | None:
        """Why the per-sample step Jacobians are not defined for this model, or None."""
        return None

    def step_jacobian_dims(self) -> list[int]:
        """Order of each step's square Jacobian (the larger of its input and output
        widths), one entry per step, or a single entry when every step has it."""
        raise NotImplementedError

    def parameters(self) -> dict[str, np.ndarray]:
        """Parameters by PyTorch name (state_dict style)."""
        raise NotImplementedError

    def astype(self, dtype: object) -> Model:
        """A copy of the model in another float dtype."""
        return self._checked(check_finite=False)._rebuild(resolve_dtype(dtype), copy=True)

    def validate(self) -> None:
        """Re-check every parameter (shapes, dtypes, finiteness, list lengths).

        Raises
        ------
        TypeError, ValueError
            Naming the parameter, when the model was changed after construction into one
            the constructor would refuse.
        """
        self._checked(check_finite=True)

    def _checked(self, *, check_finite: bool = True) -> Model:
        """A model rebuilt from the current attributes through the constructor (arrays that
        are already right are shared, not copied). ``check_finite=False`` defers the NaN/Inf
        scan to the caller (see :meth:`_nonfinite_parameter`)."""
        try:
            if check_finite:
                return self._rebuild(self.dtype, copy=False)
            with deferred_finite_check():
                return self._rebuild(self.dtype, copy=False)
        except (TypeError, ValueError, AttributeError, IndexError) as exc:
            raise type(exc)(
                f"this {type(self).__name__} was changed after construction and is no longer "
                f"valid: {exc}"
            ) from None

    def _rebuild(self, dtype: np.dtype, *, copy: bool) -> Model:
        raise NotImplementedError

    def _params_as(self, dtype: np.dtype, *, check_finite: bool = True) -> Any:
        """The parameters in the form the compiled core takes, in ``dtype``, read afresh."""
        m = self._checked(check_finite=check_finite)
        if dtype != m.dtype:
            try:
                with (
                    np.errstate(over="ignore"),
                    nullcontext() if check_finite else deferred_finite_check(),
                ):
                    m = m._rebuild(dtype, copy=True)
            except ValueError as exc:  # finite values beyond the range of the narrower dtype
                raise ValueError(
                    f"the parameters of this {type(self).__name__} do not fit {dtype.name}: "
                    f"{exc} after conversion; analyse in {self.dtype.name}"
                ) from None
        return m._own_params()

    def _own_params(self) -> Any:
        raise NotImplementedError

    def _nonfinite_parameter(self) -> str | None:
        """``"weights[3] contains NaN (first at index (0, 1))"`` or None."""
        for name, arr in self._named_arrays():
            bad = first_nonfinite(np.asarray(arr))
            if bad is not None:
                return f"{name} contains {bad}"
        return None

    def _named_arrays(self) -> list[tuple[str, np.ndarray]]:
        raise NotImplementedError

    @property
    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters().values()))


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
        """
        from vgcore.init import initialize_dense

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
        ws: list[np.ndarray] = []
        bs: list[np.ndarray | None] = []
        acts: list[Activation] = []
        norms: list[str | None] = []
        nws: list[np.ndarray | None] = []
        nbs: list[np.ndarray | None] = []
        rms: list[np.ndarray | None] = []
        rvs: list[np.ndarray | None] = []
        eps = None
        notes: list[str] = []
        for idx, sub in enumerate(module):
            if isinstance(sub, nn.Linear):
                ws.append(_torch_to_numpy(sub.weight, f"module[{idx}].weight"))
                bs.append(
                    None if sub.bias is None else _torch_to_numpy(sub.bias, f"module[{idx}].bias")
                )
                acts.append(Activation("identity"))
                norms.append(None)
                nws.append(None)
                nbs.append(None)
                rms.append(None)
                rvs.append(None)
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
                if not ws or norms[-1] is not None or not acts[-1].is_linear:
                    raise NotImplementedError(
                        f"module[{idx}] ({type(sub).__name__}) must directly follow an nn.Linear "
                        "(normalisation of the pre-activation)"
                    )
                if eps is not None and sub.eps != eps:
                    raise NotImplementedError("normalisation layers with different eps values")
                eps = float(sub.eps)
                norms[-1] = kind
                nws[-1] = (
                    None
                    if sub.weight is None
                    else _torch_to_numpy(sub.weight, f"module[{idx}].weight")
                )
                nbs[-1] = (
                    None if sub.bias is None else _torch_to_numpy(sub.bias, f"module[{idx}].bias")
                )
                if kind == "batchnorm":
                    has_stats = sub.running_mean is not None and sub.running_var is not None
                    if not sub.training and has_stats:
                        rms[-1] = _torch_to_numpy(sub.running_mean, f"module[{idx}].running_mean")
                        rvs[-1] = _torch_to_numpy(sub.running_var, f"module[{idx}].running_var")
                    elif has_stats:
                        notes.append(
                            f"module[{idx}] (BatchNorm1d) is in train() mode: analysed with the "
                            "batch's statistics; call .eval() to use its running statistics"
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
            bs,
            acts,
            dtype=dtype,
            norm=norms,
            norm_weights=nws,
            norm_biases=nbs,
            eps=1e-5 if eps is None else eps,
            running_means=rms,
            running_vars=rvs,
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


class RecurrentModel(Model):
    """Single-layer recurrent cell with PyTorch's parameters.

    Parameters
    ----------
    weight_ih : array_like of shape (G*N, input_size)
    weight_hh : array_like of shape (G*N, N)
    bias_ih, bias_hh : array_like of shape (G*N,), optional
    dtype : float32 or float64, optional
    batch_first : bool
        Recorded from an imported module (for ``to_torch``); analyses always take
        ``x`` as ``(T, B, input_size)``.

    G is 1 (RNN), 4 (LSTM, gates i, f, g, o) or 3 (GRU, gates r, z, n).
    """

    axis: ClassVar[str] = "time"
    gates: ClassVar[int] = 1
    torch_class: ClassVar[str] = ""

    def __init__(
        self,
        weight_ih: Any,
        weight_hh: Any,
        bias_ih: Any | None = None,
        bias_hh: Any | None = None,
        *,
        dtype: object = None,
        batch_first: bool = False,
    ) -> None:
        self.dtype = _infer_dtype([weight_ih, weight_hh], dtype)
        G = self.gates
        whh = as_float_array(weight_hh, "weight_hh", self.dtype, ndim=2)
        N = whh.shape[1]
        if whh.shape != (G * N, N):
            raise ValueError(
                f"weight_hh must have shape ({G}*N, N) = ({G * N}, {N}) for {type(self).__name__}, "
                f"got {whh.shape}"
            )
        wih = as_float_array(weight_ih, "weight_ih", self.dtype, ndim=2, shape=(G * N, None))
        self.weight_ih = wih
        self.weight_hh = whh
        self.bias_ih = (
            None
            if bias_ih is None
            else as_float_array(bias_ih, "bias_ih", self.dtype, shape=(G * N,))
        )
        self.bias_hh = (
            None
            if bias_hh is None
            else as_float_array(bias_hh, "bias_hh", self.dtype, shape=(G * N,))
        )
        self.batch_first = bool(batch_first)

    @property
    def hidden_size(self) -> int:
        return int(self.weight_hh.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.weight_ih.shape[1])

    @property
    def state_size(self) -> int:
        """Dimension of the recurrent state (2N for LSTM: h and c)."""
        return self.hidden_size

    @property
    def state_dim(self) -> int:
        return self.state_size

    @property
    def num_layers(self) -> int:
        return 1

    @property
    def cell(self) -> str:
        """Name of the compiled kernel."""
        return self.kind

    def step_jacobian_dims(self) -> list[int]:
        return [self.state_size]

    def _spec_of(self, params: Any) -> dict[str, Any]:
        wih, whh, bih, bhh = params
        return {
            "kind": self.cell,
            "weight_ih": wih,
            "weight_hh": whh,
            "bias_ih": bih,
            "bias_hh": bhh,
        }

    def parameters(self) -> dict[str, np.ndarray]:
        out = {"weight_ih": self.weight_ih, "weight_hh": self.weight_hh}
        if self.bias_ih is not None:
            out["bias_ih"] = self.bias_ih
        if self.bias_hh is not None:
            out["bias_hh"] = self.bias_hh
        return out

    def _extra_kwargs(self) -> dict[str, Any]:
        return {}

    def _rebuild(self, dtype: np.dtype, *, copy: bool) -> RecurrentModel:
        def cast(a: Any) -> Any:
            return a if (a is None or not copy) else np.asarray(a).astype(dtype)

        out = type(self)(
            cast(self.weight_ih),
            cast(self.weight_hh),
            cast(self.bias_ih),
            cast(self.bias_hh),
            dtype=dtype,
            batch_first=self.batch_first,
            **self._extra_kwargs(),
        )
        out.notes = self.notes
        return out

    def _named_arrays(self) -> list[tuple[str, np.ndarray]]:
        return list(self.parameters().items())

    def _own_params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    # -- construction -----------------------------------------------------------------
    @classmethod
    def _from_sizes(
        cls,
        input_size: int,
        hidden_size: int,
        *,
        init: Any,
        bias: bool,
        seed: int | np.random.Generator | None,
        dtype: object,
        nonlinearity: str = "tanh",
        **extra: Any,
    ) -> Any:
        from vgcore.init import initialize_recurrent

        input_size = check_positive_int(input_size, "input_size")
        hidden_size = check_positive_int(hidden_size, "hidden_size")
        dt = resolve_dtype(dtype)
        GN = cls.gates * hidden_size
        _check_param_memory(
            [(GN, input_size), (GN, hidden_size), (2 * GN,)], dt, f"{cls.__name__}.from_sizes"
        )
        p = initialize_recurrent(
            init,
            cls.kind,
            input_size,
            hidden_size,
            rng=_rng(seed),
            dtype=dt,
            nonlinearity=nonlinearity,
        )
        if cls.kind == "rnn":  # the nonlinearity shapes the init and is part of the model
            extra["nonlinearity"] = nonlinearity
        return cls(
            p["weight_ih"],
            p["weight_hh"],
            p["bias_ih"] if bias else None,
            p["bias_hh"] if bias else None,
            dtype=dt,
            **extra,
        )

    @classmethod
    def _torch_params(cls, module: Any) -> dict[str, Any]:
        from torch import nn

        expected = getattr(nn, cls.torch_class)
        if not isinstance(module, expected):
            raise TypeError(
                f"module must be a torch.nn.{cls.torch_class}, got {type(module).__name__}"
            )
        if module.num_layers != 1:
            raise NotImplementedError(
                f"stacked {cls.torch_class} (num_layers={module.num_layers}) is not supported yet; "
                "analyse each layer separately"
            )
        if module.bidirectional:
            raise NotImplementedError(f"bidirectional {cls.torch_class} is not supported yet")
        if getattr(module, "proj_size", 0):
            raise NotImplementedError("LSTM with proj_size > 0 is not supported yet")

        def get(name: str) -> Any:
            value = getattr(module, name, None)
            return None if value is None else _torch_to_numpy(value, f"module.{name}")

        return {
            "weight_ih": get("weight_ih_l0"),
            "weight_hh": get("weight_hh_l0"),
            "bias_ih": get("bias_ih_l0") if module.bias else None,
            "bias_hh": get("bias_hh_l0") if module.bias else None,
            "batch_first": bool(module.batch_first),
        }

    def _torch_module(self, cls_name: str, **kw: Any) -> Any:
        import torch
        from torch import nn

        tdtype = torch.float32 if self.dtype == np.float32 else torch.float64
        mod = getattr(nn, cls_name)(
            self.input_size,
            self.hidden_size,
            bias=self.bias_ih is not None,
            batch_first=self.batch_first,
            dtype=tdtype,
            **kw,
        )
        with torch.no_grad():
            mod.weight_ih_l0.copy_(torch.from_numpy(self.weight_ih))
            mod.weight_hh_l0.copy_(torch.from_numpy(self.weight_hh))
            if self.bias_ih is not None:
                mod.bias_ih_l0.copy_(torch.from_numpy(self.bias_ih))
                mod.bias_hh_l0.copy_(torch.from_numpy(self.bias_hh))
        return mod

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self._extra_kwargs().items())
        if self.batch_first:
            extra += ", batch_first=True"
        return (
            f"{type(self).__name__}(input_size={self.input_size}, hidden_size={self.hidden_size}"
            f"{extra}, bias={self.bias_ih is not None}, dtype={self.dtype.name})"
        )


class RNN(RecurrentModel):
    """Elman RNN ``h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, phi tanh or relu."""

    kind = "rnn"
    gates = 1
    torch_class = "RNN"

    def __init__(
        self,
        weight_ih: Any,
        weight_hh: Any,
        bias_ih: Any | None = None,
        bias_hh: Any | None = None,
        *,
        nonlinearity: str = "tanh",
        dtype: object = None,
        batch_first: bool = False,
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(
            weight_ih, weight_hh, bias_ih, bias_hh, dtype=dtype, batch_first=batch_first
        )

    @property
    def cell(self) -> str:
        return f"rnn_{self.nonlinearity}"

    def _extra_kwargs(self) -> dict[str, Any]:
        return {"nonlinearity": self.nonlinearity}

    @classmethod
    def from_sizes(
        cls,
        input_size: int,
        hidden_size: int,
        *,
        nonlinearity: str = "tanh",
        init: Any = None,
        bias: bool = True,
        seed: int | np.random.Generator | None = 0,
        dtype: object = np.float64,
    ) -> RNN:
        """A seeded RNN (PyTorch's default init unless ``init`` says otherwise)."""
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        return cls._from_sizes(
            input_size,
            hidden_size,
            init=init,
            bias=bias,
            seed=seed,
            dtype=dtype,
            nonlinearity=nonlinearity,
        )

    @classmethod
    def from_torch(cls, module: Any, *, dtype: object = None) -> RNN:
        """Import a single-layer ``nn.RNN`` (either ``batch_first``)."""
        p = cls._torch_params(module)
        return cls(**p, nonlinearity=module.nonlinearity, dtype=dtype)

    def to_torch(self) -> Any:
        return self._torch_module("RNN", nonlinearity=self.nonlinearity)


class LSTM(RecurrentModel):
    """LSTM with PyTorch's gates (i, f, g, o) and state (h, c)."""

    kind = "lstm"
    gates = 4
    torch_class = "LSTM"
    state_names = ("h", "c")
    gate_names = ("i", "f", "g", "o")

    @property
    def state_size(self) -> int:
        return 2 * self.hidden_size

    @classmethod
    def from_sizes(
        cls,
        input_size: int,
        hidden_size: int,
        *,
        init: Any = None,
        bias: bool = True,
        seed: int | np.random.Generator | None = 0,
        dtype: object = np.float64,
    ) -> LSTM:
        """A seeded LSTM (PyTorch's default init unless ``init`` says otherwise)."""
        return cls._from_sizes(
            input_size, hidden_size, init=init, bias=bias, seed=seed, dtype=dtype
        )

    @classmethod
    def from_torch(cls, module: Any, *, dtype: object = None) -> LSTM:
        """Import a single-layer ``nn.LSTM`` (either ``batch_first``)."""
        return cls(**cls._torch_params(module), dtype=dtype)

    def to_torch(self) -> Any:
        return self._torch_module("LSTM")


class GRU(RecurrentModel):
    """GRU with PyTorch's gates (r, z, n): ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``."""

    kind = "gru"
    gates = 3
    torch_class = "GRU"
    gate_names = ("r", "z", "n")

    @classmethod
    def from_sizes(
        cls,
        input_size: int,
        hidden_size: int,
        *,
        init: Any = None,
        bias: bool = True,
        seed: int | np.random.Generator | None = 0,
        dtype: object = np.float64,
    ) -> GRU:
        """A seeded GRU (PyTorch's default init unless ``init`` says otherwise)."""
        return cls._from_sizes(
            input_size, hidden_size, init=init, bias=bias, seed=seed, dtype=dtype
        )

    @classmethod
    def from_torch(cls, module: Any, *, dtype: object = None) -> GRU:
        """Import a single-layer ``nn.GRU`` (either ``batch_first``)."""
        return cls(**cls._torch_params(module), dtype=dtype)

    def to_torch(self) -> Any:
        return self._torch_module("GRU")


# -- the registry of model kinds ------------------------------------------------------------


@dataclass(frozen=True)
class ModelKind:
    """One kind of model vgcore analyses natively.

    Attributes
    ----------
    name : str
        The model's ``kind`` (``"mlp"``, ``"rnn"``, ...), as in configs and ``--model``.
    cls : type
        The :class:`Model` subclass.
    torch_classes : tuple of str
        Names of the ``torch.nn`` modules it is imported from (``from_torch``).
    description : str
        One line for help texts and reports.
    """

    name: str
    cls: type[Model]
    torch_classes: tuple[str, ...]
    description: str

    @property
    def axis(self) -> str:
        return self.cls.axis

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.cls.state_names

    @property
    def gate_names(self) -> tuple[str, ...]:
        return self.cls.gate_names


_KINDS: dict[str, ModelKind] = {}


def register_model_kind(
    cls: type[Model], *, torch_classes: Sequence[str], description: str
) -> ModelKind:
    """Add a model class to the registry (one line per kind; the analyses, diagnosis, CLI
    and reports ask the registry or the model, never a list of classes)."""
    if cls.kind in _KINDS:
        raise ValueError(f"model kind {cls.kind!r} is already registered")
    entry = ModelKind(cls.kind, cls, tuple(torch_classes), description)
    _KINDS[cls.kind] = entry
    return entry


def model_kinds() -> tuple[ModelKind, ...]:
    """Every registered model kind, in registration order."""
    return tuple(_KINDS.values())


def model_kind(name: str) -> ModelKind:
    """The registered kind ``name``; a KeyError names the kinds there are."""
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(
            f"unknown model kind {name!r}; the kinds are {', '.join(map(repr, _KINDS))}"
        ) from None


def is_model(obj: object) -> bool:
    """Whether ``obj`` is a model of a registered kind."""
    return (
        isinstance(obj, Model)
        and _KINDS.get(obj.kind, None) is not None
        and isinstance(obj, _KINDS[obj.kind].cls)
    )


register_model_kind(
    MLP, torch_classes=("Sequential",), description="dense stack (plain, residual, highway)"
)
register_model_kind(RNN, torch_classes=("RNN",), description="Elman RNN (tanh or relu)")
register_model_kind(LSTM, torch_classes=("LSTM",), description="LSTM (gates i, f, g, o)")
register_model_kind(GRU, torch_classes=("GRU",), description="GRU (gates r, z, n)")

"""Stacks of state-space blocks over time: Mamba / S4-style networks as one time-axis model.

Each block reads the residual stream ``u`` (``d`` features; ``u = x_t`` below the first)::

    v = LayerNorm(u)           (optional, per block)
    h'  = the layer's step on v  (an :class:`~vgcore.models.ssm.SSM` or
                                  :class:`~vgcore.models.ssm.SelectiveSSM`)
    y   = the layer's output     (``C h' + D v``; ``out_proj((C_t h' + D xc) silu(z))``)
    u   = u + y                  (residual; or ``u = y``)

The state the analyses see is the blocks' states side by side, bottom first; a step's
Jacobian couples each block to the blocks below through their outputs, so the gradient flow
through time and the Lyapunov spectrum are those of the whole network. The reference torch
module is :class:`vgcore.reference.ssm.SSMStack`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import numpy as np

from vgcore._validation import as_float_array, check_positive_int
from vgcore.models.base import Model, _infer_dtype, _rng, _torch_to_numpy
from vgcore.models.registry import register_model_kind
from vgcore.models.ssm import SSM, SelectiveSSM, _check_pos_float

__all__ = ["SSMStack"]

_LAYERS = (SSM, SelectiveSSM)


class SSMStack(Model):
    """State-space layers stacked over depth, the whole stack stepping through time.

    Parameters
    ----------
    layers : sequence of SSM or SelectiveSSM
        The blocks' layers, bottom first, all with the same ``input_size`` (``d``).
    norm : bool
        A LayerNorm on each block's input (Mamba's pre-norm).
    residual : bool
        ``u + y`` (else the block's output replaces the stream).
    norm_weights, norm_biases : sequence of array_like of shape (d,), optional
        The LayerNorms' ``weight`` and ``bias`` per block (ones and zeros when None).
    eps : float
        The LayerNorms' epsilon.
    dtype : float32 or float64, optional
        Default: the first layer's.

    Notes
    -----
    The state is the blocks' states side by side, bottom first: ``state_dim`` is the sum of
    the layers' ``state_dim`` (:meth:`block_slices` gives each block's columns). Inputs are
    ``(T, B, d)``; the stack's output (the stream above the top block) is what the reference
    module's ``forward`` returns.
    """

    kind: ClassVar[str] = "ssm_stack"
    axis: ClassVar[str] = "time"
    state_names: ClassVar[tuple[str, ...]] = ("h",)
    batch_first = False

    def __init__(
        self,
        layers: Sequence[SSM | SelectiveSSM],
        *,
        norm: bool = True,
        residual: bool = True,
        norm_weights: Sequence[Any] | None = None,
        norm_biases: Sequence[Any] | None = None,
        eps: float = 1e-5,
        dtype: object = None,
    ) -> None:
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
            raise TypeError(
                f"layers must be a sequence of SSM / SelectiveSSM models, got {type(layers).__name__}"
            )
        if len(layers) == 0:
            raise ValueError("layers must hold at least one layer, got none")
        for i, ly in enumerate(layers):
            if not isinstance(ly, _LAYERS):
                raise TypeError(
                    f"layers[{i}] must be an SSM or SelectiveSSM, got {type(ly).__name__}"
                )
        for name, flag in (("norm", norm), ("residual", residual)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        eps = _check_pos_float(eps, "eps")
        self.dtype = dt = _infer_dtype([ly.dtype for ly in layers], dtype)
        self.layers: list[SSM | SelectiveSSM] = [
            ly if ly.dtype == dt else cast("SSM | SelectiveSSM", ly.astype(dt)) for ly in layers
        ]
        d = self.layers[0].input_size
        for i, ly in enumerate(self.layers):
            if ly.input_size != d:
                raise ValueError(
                    f"layers[{i}] has input_size {ly.input_size}, layers[0] has {d} (the blocks "
                    "share the stream's width)"
                )
        self.norm, self.residual, self.eps = bool(norm), bool(residual), eps
        L = len(self.layers)

        def per_block(values: Sequence[Any] | None, name: str, fill: float) -> list[np.ndarray]:
            if values is None:
                return [np.full(d, fill, dtype=dt) for _ in range(L)]
            if not isinstance(values, Sequence) or len(values) != L:
                raise ValueError(f"{name} must be a sequence of {L} arrays (one per block)")
            return [as_float_array(v, f"{name}[{i}]", dt, shape=(d,)) for i, v in enumerate(values)]

        self.norm_weights = per_block(norm_weights, "norm_weights", 1.0)
        self.norm_biases = per_block(norm_biases, "norm_biases", 0.0)

    # -- sizes -----------------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        return int(self.layers[0].input_size)

    @property
    def state_dim(self) -> int:
        """The blocks' state coordinates together."""
        return int(sum(ly.state_dim for ly in self.layers))

    hidden_size = state_dim
    num_directions = 1

    @property
    def num_layers(self) -> int:
        """Blocks."""
        return len(self.layers)

    def block_slices(self) -> list[slice]:
        """Each block's columns of the state (and of state gradients), bottom first."""
        out, i = [], 0
        for ly in self.layers:
            out.append(slice(i, i + ly.state_dim))
            i += ly.state_dim
        return out

    def step_jacobian_dims(self) -> list[int]:
        return [self.state_dim]

    def describe(self) -> str:
        kinds = ",".join(ly.kind for ly in self.layers)
        extras = "+".join(n for n, on in (("norm", self.norm), ("residual", self.residual)) if on)
        return f"SSMStack L={self.num_layers} d={self.input_size} [{kinds}]" + (
            f" {extras}" if extras else ""
        )

    def flat_spec(self) -> dict[str, Any]:
        return {
            "model": self.kind,
            "input_size": self.input_size,
            "num_layers": self.num_layers,
            "state_size": self.state_dim,
        }

    # -- parameters ------------------------------------------------------------------------
    def parameters(self) -> dict[str, np.ndarray]:
        """Parameters by the reference module's names (``layers.0.B``, ``norms.0.weight``)."""
        out: dict[str, np.ndarray] = {}
        for i, ly in enumerate(self.layers):
            out.update({f"layers.{i}.{k}": v for k, v in ly.parameters().items()})
        if self.norm:
            for i in range(self.num_layers):
                out[f"norms.{i}.weight"] = self.norm_weights[i]
                out[f"norms.{i}.bias"] = self.norm_biases[i]
        return out

    def _named_arrays(self) -> list[tuple[str, np.ndarray]]:
        return list(self.parameters().items())

    def _own_params(self) -> Any:
        return self.layers, self.norm_weights, self.norm_biases

    def _rebuild(self, dtype: np.dtype, *, copy: bool) -> SSMStack:
        layers: list[SSM | SelectiveSSM] = [ly._rebuild(dtype, copy=copy) for ly in self.layers]

        def cast(vs: list[np.ndarray]) -> list[np.ndarray]:
            return [np.asarray(v).astype(dtype) if copy else v for v in vs]

        out = SSMStack(
            layers,
            norm=self.norm,
            residual=self.residual,
            norm_weights=cast(self.norm_weights),
            norm_biases=cast(self.norm_biases),
            eps=self.eps,
            dtype=dtype,
        )
        out.notes = self.notes
        return out

    def _spec_of(self, params: Any) -> dict[str, Any]:
        layers, weights, biases = params
        dt = layers[0].dtype
        return {
            "kind": self.kind,
            "blocks": [
                {
                    "layer": ly._spec_of(ly._own_params()),
                    "norm": self.norm,
                    "norm_weight": np.ascontiguousarray(w, dtype=dt) if self.norm else None,
                    "norm_bias": np.ascontiguousarray(b, dtype=dt) if self.norm else None,
                    "eps": self.eps,
                    "residual": self.residual,
                }
                for ly, w, b in zip(layers, weights, biases, strict=True)
            ],
        }

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_sizes(
        cls,
        input_size: int,
        state_size: int,
        num_layers: int,
        *,
        layer: str = "selective_ssm",
        norm: bool = True,
        residual: bool = True,
        seed: int | np.random.Generator | None = 0,
        dtype: object = np.float64,
        **layer_kwargs: Any,
    ) -> SSMStack:
        """A seeded stack of ``num_layers`` blocks of one layer kind.

        Parameters
        ----------
        input_size : int
            d, the stream's features (``x_t`` and every block's output).
        state_size : int
            Each layer's ``state_size`` (LTI: modes N; selective: ``d_state``).
        num_layers : int
        layer : {"selective_ssm", "ssm"}
            The blocks' layer kind (:meth:`SSM.from_sizes`, :meth:`SelectiveSSM.from_sizes`).
        norm, residual : bool
            Pre-LayerNorm (weight 1, bias 0) and the residual connection, per block.
        seed : int, Generator or None
            One generator draws every block's layer in turn.
        dtype : float32 or float64
        **layer_kwargs
            Passed to the layer's ``from_sizes`` (``init=...``, ``expand=...``, ...).
        """
        L = check_positive_int(num_layers, "num_layers")
        makers: dict[str, type[SSM] | type[SelectiveSSM]] = {
            "ssm": SSM,
            "selective_ssm": SelectiveSSM,
        }
        if layer not in makers:
            raise ValueError(f"layer must be one of {tuple(makers)}, got {layer!r}")
        rng = _rng(seed)
        layers = [
            makers[layer].from_sizes(input_size, state_size, seed=rng, dtype=dtype, **layer_kwargs)
            for _ in range(L)
        ]
        return cls(layers, norm=norm, residual=residual, dtype=dtype)

    @classmethod
    def from_torch(cls, module: Any, *, dtype: object = None) -> SSMStack:
        """Import a :class:`vgcore.reference.ssm.SSMStack` (parameters copied; the module is
        left unchanged)."""
        from vgcore.reference.ssm import DiagonalSSM
        from vgcore.reference.ssm import SSMStack as Ref

        if not isinstance(module, Ref):
            raise TypeError(
                f"module must be a vgcore.reference.ssm.SSMStack, got {type(module).__name__}"
            )
        layers = [
            (SSM if isinstance(m, DiagonalSSM) else SelectiveSSM).from_torch(m, dtype=dtype)
            for m in module.layers
        ]
        norms = module.norms
        return cls(
            layers,
            norm=norms is not None,
            residual=module.residual,
            norm_weights=None
            if norms is None
            else [
                _torch_to_numpy(n.weight, f"module.norms.{i}.weight") for i, n in enumerate(norms)
            ],
            norm_biases=None
            if norms is None
            else [_torch_to_numpy(n.bias, f"module.norms.{i}.bias") for i, n in enumerate(norms)],
            eps=float(cast(Any, norms[0]).eps) if norms is not None else 1e-5,
            dtype=dtype,
        )

    def to_torch(self) -> Any:
        """A :class:`vgcore.reference.ssm.SSMStack` with these parameters (the model's dtype)."""
        import torch

        from vgcore.reference.ssm import SSMStack as Ref

        mod = Ref(
            [ly.to_torch() for ly in self.layers],
            norm=self.norm,
            residual=self.residual,
            eps=self.eps,
        )
        if mod.norms is not None:
            with torch.no_grad():
                for n, w, b in zip(mod.norms, self.norm_weights, self.norm_biases, strict=True):
                    cast(Any, n).weight.copy_(torch.from_numpy(np.asarray(w)))
                    cast(Any, n).bias.copy_(torch.from_numpy(np.asarray(b)))
        return mod

    def __repr__(self) -> str:
        return (
            f"SSMStack(num_layers={self.num_layers}, input_size={self.input_size}, "
            f"layers=[{', '.join(ly.kind for ly in self.layers)}], norm={self.norm}, "
            f"residual={self.residual}, dtype={self.dtype.name})"
        )


register_model_kind(
    SSMStack,
    torch_classes=("SSMStack",),
    description="state-space blocks (LayerNorm, SSM / selective SSM, residual) stacked",
)

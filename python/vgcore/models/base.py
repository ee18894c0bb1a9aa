"""The model base class: parameters as numpy arrays in PyTorch's layout, re-checked before every
analysis, and the interface the analyses ask (axis, states, gates, the core's description)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any, ClassVar, TypeVar

import numpy as np

from vgcore._validation import (
    HALF_DTYPES,
    available_memory_bytes,
    check_memory,
    check_positive_int,
    check_seed,
    deferred_finite_check,
    first_nonfinite,
    resolve_dtype,
)
from vgcore.activations import Activation

__all__ = ["Model", "narrow"]

_M = TypeVar("_M", bound="Model")

#: Evaluates an activation on float64 pre-activations (the analyses pass the core's).
ActivationFn = Callable[[Activation, np.ndarray], np.ndarray]


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
    #: The core's gradient-flow sweep for this kind: ``"generic"`` (the one BPTT sweep over the
    #: layer ops, any kind) or a fused fast path (``"dense"``, ``"recurrent"``).
    flow_sweep: ClassVar[str] = "generic"
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
    def stacked(self) -> bool:
        """Whether results are (layer, time) grids: a stacked or bidirectional recurrent
        model. False for a dense stack and a single-layer cell."""
        return False

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
            shapes ``(G*N, I)``, ``(G*N, N)``, ``(G*N,)`` or None) for a recurrent cell, or
            ``{"kind": cell, "num_layers", "bidirectional", "layers": [such dicts without
            "kind", one per layer and direction in PyTorch's order]}`` for a stacked or
            bidirectional one.
            The parameters are read afresh (no cache), so an in-place update is seen.
        """
        dt = self.dtype if dtype is None else resolve_dtype(dtype)
        return self._spec_of(self._params_as(dt, check_finite=check_finite))

    def _spec_of(self, params: Any) -> dict[str, Any]:
        raise NotImplementedError

    def unit_activations(self) -> tuple[Activation, ...]:
        """The activations of the model's units outside gates (an MLP's, a vanilla RNN's
        nonlinearity; none for gated cells, whose units are gates and tanh)."""
        return ()

    def jacobian_obstacle(self) -> str | None:
        """Why the per-sample step Jacobians are not defined for this model, or None."""
        return None

    def lyapunov_obstacle(self) -> str | None:
        """Why :func:`vgcore.lyapunov` does not apply (no step Jacobians, or steps that change
        the state's dimension), or None."""
        return self.jacobian_obstacle()

    def describe(self) -> str:
        """A short label for result reprs, e.g. ``"MLP depth=20 widths=64..64"``."""
        return type(self).__name__

    def flat_spec(self) -> dict[str, Any]:
        """The model's shape as a flat mapping of simple values, keyed as the model specs of
        the command line and sweeps (``model``, ``depth``, ``width``, ``hidden_size``, ...)."""
        return {"model": self.kind, "input_size": self.input_size}

    def mean_field_setting(self) -> str | None:
        """Which mean-field theory describes this model's random weights: ``"dense"`` (plain
        dense layers, no blocks or normalisation), ``"recurrent"`` (a single-layer cell with
        one unit activation, i.e. a vanilla RNN), or None."""
        return None

    def weight_scale_params(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The weight matrices and the bias vectors whose scale the mean-field theory reads
        (``sigma_w2 = fan_in * E[W^2]``, ``sigma_b2 = E[b^2]``)."""
        raise NotImplementedError

    def unit_preactivations(
        self, x: np.ndarray, h0: np.ndarray | None, phi: ActivationFn
    ) -> Iterator[tuple[Activation, np.ndarray]]:
        """A float64 forward pass: per layer / step, the units' activation and their
        pre-activations ``z`` of shape ``(B, width)`` (after any normalisation).

        Parameters
        ----------
        x : ndarray
            ``(B, input_size)`` for a depth-axis model, ``(T, B, input_size)`` time-major.
        h0 : ndarray of shape (B, N), optional
            A recurrent model's initial hidden state (zeros when None).
        phi : callable(activation, z) -> ndarray
            Evaluates an activation, so the pass follows the caller's arithmetic.
        """
        raise NotImplementedError

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


def narrow(model: Model, cls: type[_M]) -> _M:
    """``model`` typed as ``cls``, for code that chose its path by asking the model (its axis,
    kind or mean-field setting); a TypeError names both classes otherwise."""
    if not isinstance(model, cls):
        raise TypeError(
            f"this path takes a {cls.__name__} model, got a {type(model).__name__} ({model.kind})"
        )
    return model

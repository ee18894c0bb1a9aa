"""Recurrent networks with PyTorch's semantics and layout: RNN, LSTM, GRU, single-layer,
stacked (``num_layers``) and bidirectional."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Optional, TypeVar

import numpy as np

from vgcore._validation import (
    as_float_array,
    check_positive_int,
    resolve_dtype,
)
from vgcore.activations import Activation
from vgcore.models.base import (
    ActivationFn,
    Model,
    _check_param_memory,
    _infer_dtype,
    _rng,
    _torch_to_numpy,
)
from vgcore.models.registry import register_model_kind

__all__ = ["GRU", "LSTM", "RNN", "RecurrentModel"]

_R = TypeVar("_R", bound="RecurrentModel")

#: One layer's parameters in one direction: ``(weight_ih, weight_hh, bias_ih, bias_hh)``.
LayerParams = tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]

_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _torch_name(kind: str, layer: int, direction: int) -> str:
    """PyTorch's parameter name, e.g. ``weight_ih_l1_reverse``."""
    return f"{kind}_l{layer}" + ("_reverse" if direction else "")


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


class RecurrentModel(Model):
    """A recurrent network with PyTorch's parameters: one cell, or a stack of them.

    Parameters
    ----------
    weight_ih : array_like of shape (G*N, input_size), or a sequence of them
    weight_hh : array_like of shape (G*N, N), or a sequence of them
    bias_ih, bias_hh : array_like of shape (G*N,), a sequence of them, or None
    num_layers : int
        Stacked layers (PyTorch's ``num_layers``); layer ``l > 0`` reads the hidden
        sequence of layer ``l - 1`` (both directions concatenated when bidirectional).
    bidirectional : bool
        Each layer also runs a reverse direction over the time-reversed sequence.
    dtype : float32 or float64, optional
    batch_first : bool
        Recorded from an imported module (for ``to_torch``) and followed by the analyses'
        ``x`` layout.

    Notes
    -----
    G is 1 (RNN), 4 (LSTM, gates i, f, g, o) or 3 (GRU, gates r, z, n). With
    ``num_layers=1`` and ``bidirectional=False`` the four parameters are arrays. Otherwise
    each is a sequence of ``num_layers * D`` arrays (D = 2 if bidirectional else 1) in
    PyTorch's order, entry ``l * D + d`` being ``weight_ih_l{l}`` (d = 0) or
    ``weight_ih_l{l}_reverse`` (d = 1); biases are all given or all None. Layer 0 takes
    ``input_size`` features, layer ``l > 0`` takes ``D * N``; every layer has hidden size N.
    The state of a stacked unidirectional model, as one dynamical system in time, is the
    layers' states concatenated layer by layer (LSTM: ``h`` then ``c`` within a layer).
    Inter-layer dropout is not modelled: analyses use evaluation semantics.
    """

    axis: ClassVar[str] = "time"
    flow_sweep: ClassVar[str] = "recurrent"
    gates: ClassVar[int] = 1
    torch_class: ClassVar[str] = ""
    # single layer: arrays; stacked: lists of arrays in PyTorch order (biases: None or a list)
    weight_ih: Any
    weight_hh: Any
    bias_ih: Any
    bias_hh: Any

    def __init__(
        self,
        weight_ih: Any,
        weight_hh: Any,
        bias_ih: Any | None = None,
        bias_hh: Any | None = None,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        dtype: object = None,
        batch_first: bool = False,
    ) -> None:
        self._num_layers = check_positive_int(num_layers, "num_layers")
        self._bidirectional = _check_bool(bidirectional, "bidirectional")
        self.batch_first = bool(batch_first)
        if self.stacked:
            self._init_stacked(weight_ih, weight_hh, bias_ih, bias_hh, dtype)
            return
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

    def _layer_name(self, kind: str, k: int) -> str:
        """``"weight_ih[3] (weight_ih_l1_reverse)"``: the list entry and its PyTorch name."""
        layer, direction = divmod(k, self.num_directions)
        return f"{kind}[{k}] ({_torch_name(kind, layer, direction)})"

    def _entries(self, value: Any, kind: str, required: bool) -> list[Any] | None:
        """A parameter sequence of a stacked model as a list of num_layers * D entries."""
        L, D = self._num_layers, self.num_directions
        n = L * D
        order = ", ".join(_torch_name(kind, k // D, k % D) for k in range(min(n, 4)))
        what = (
            f"a sequence of num_layers * num_directions = {L} * {D} = {n} arrays in "
            f"PyTorch's order ({order}{', ...' if n > 4 else ''})"
        )
        if value is None:
            if required:
                raise TypeError(f"{kind} must be {what}, got None")
            return None
        is_seq = isinstance(value, (list, tuple)) or (
            isinstance(value, np.ndarray) and value.ndim == (3 if kind[0] == "w" else 2)
        )
        if not is_seq:
            shape = getattr(value, "shape", None)
            got = type(value).__name__ + ("" if shape is None else f" of shape {tuple(shape)}")
            raise TypeError(f"{kind} must be {what}, got {got}")
        entries = list(value)
        if len(entries) != n:
            raise ValueError(f"{kind} must be {what}, got {len(entries)} entries")
        if not required:
            given = [e is not None for e in entries]
            if not any(given):
                return None
            if not all(given):
                missing = self._layer_name(kind, given.index(False))
                raise ValueError(
                    f"{kind} must give every layer and direction a bias or none (PyTorch's "
                    f"bias=True / False), got None for {missing}"
                )
        return entries

    def _init_stacked(
        self, weight_ih: Any, weight_hh: Any, bias_ih: Any, bias_hh: Any, dtype: object
    ) -> None:
        wih = self._entries(weight_ih, "weight_ih", True)
        whh = self._entries(weight_hh, "weight_hh", True)
        bih = self._entries(bias_ih, "bias_ih", False)
        bhh = self._entries(bias_hh, "bias_hh", False)
        assert wih is not None and whh is not None
        if (bih is None) != (bhh is None):
            given, missing = ("bias_ih", "bias_hh") if bhh is None else ("bias_hh", "bias_ih")
            raise ValueError(
                f"{given} is given but {missing} is None; a stacked model has both biases in "
                "every layer and direction (PyTorch's bias=True) or none (bias=False)"
            )
        self.dtype = _infer_dtype([*wih, *whh], dtype)
        G, D = self.gates, self.num_directions
        first = as_float_array(whh[0], self._layer_name("weight_hh", 0), self.dtype, ndim=2)
        N = first.shape[1]
        if first.shape != (G * N, N):
            raise ValueError(
                f"{self._layer_name('weight_hh', 0)} must have shape ({G}*N, N) = "
                f"({G * N}, {N}) for {type(self).__name__}, got {first.shape}"
            )
        in0: int | None = None
        self.weight_ih, self.weight_hh = [], []
        for k in range(len(whh)):
            layer = k // D
            w = as_float_array(
                whh[k], self._layer_name("weight_hh", k), self.dtype, ndim=2, shape=(G * N, N)
            )
            in_size = in0 if layer == 0 else D * N
            name = self._layer_name("weight_ih", k)
            try:
                u = as_float_array(wih[k], name, self.dtype, ndim=2, shape=(G * N, in_size))
            except ValueError as exc:
                if layer == 0 or "shape" not in str(exc) or "dimensions" in str(exc):
                    raise
                src = f"both directions of layer {layer - 1} (2 * {N}" if D == 2 else ""
                src = src or f"layer {layer - 1} ({N}"
                raise ValueError(
                    f"{exc}: layer {layer} reads the hidden sequence of {src} features)"
                ) from None
            in0 = u.shape[1] if in0 is None else in0
            self.weight_ih.append(u)
            self.weight_hh.append(w)
        self.bias_ih = None if bih is None else self._bias_arrays(bih, "bias_ih", G * N)
        self.bias_hh = None if bhh is None else self._bias_arrays(bhh, "bias_hh", G * N)

    def _bias_arrays(self, entries: list[Any], kind: str, size: int) -> list[np.ndarray]:
        return [
            as_float_array(b, self._layer_name(kind, k), self.dtype, shape=(size,))
            for k, b in enumerate(entries)
        ]

    # -- structure ----------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Stacked layers (PyTorch's ``num_layers``)."""
        return self._num_layers

    @property
    def bidirectional(self) -> bool:
        return self._bidirectional

    @property
    def num_directions(self) -> int:
        """2 for a bidirectional model, else 1."""
        return 2 if self._bidirectional else 1

    @property
    def stacked(self) -> bool:
        """Whether the parameters are per-layer lists (``num_layers > 1`` or bidirectional)."""
        return self._num_layers > 1 or self._bidirectional

    @property
    def hidden_size(self) -> int:
        whh = self.weight_hh[0] if self.stacked else self.weight_hh
        return int(whh.shape[1])

    @property
    def input_size(self) -> int:
        """Features of ``x_t`` (layer 0's input size)."""
        wih = self.weight_ih[0] if self.stacked else self.weight_ih
        return int(wih.shape[1])

    @property
    def layer_state_size(self) -> int:
        """State of one layer in one direction: N, or 2N for LSTM (h and c)."""
        return len(self.state_names) * self.hidden_size

    @property
    def state_size(self) -> int:
        """Dimension of the whole recurrent state: ``num_layers * num_directions *
        layer_state_size`` (single layer: N, or 2N for LSTM)."""
        return self._num_layers * self.num_directions * self.layer_state_size

    @property
    def state_dim(self) -> int:
        return self.state_size

    @property
    def cell(self) -> str:
        """Name of the compiled kernel."""
        return self.kind

    def step_jacobian_dims(self) -> list[int]:
        return [self.state_size]

    def describe(self) -> str:
        if self.stacked:
            return repr(self)
        return f"{type(self).__name__} N={self.hidden_size}"

    def flat_spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.kind,
            "hidden_size": self.hidden_size,
            "input_size": self.input_size,
            **self._extra_kwargs(),
        }
        if self.stacked:
            out.update(num_layers=self._num_layers, bidirectional=self._bidirectional)
        return out

    def mean_field_setting(self) -> str | None:
        return "recurrent" if len(self.unit_activations()) == 1 and not self.stacked else None

    def weight_scale_params(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every layer's ``weight_hh`` and its total bias ``bias_ih + bias_hh`` (the one
        given, when only one is)."""
        ws, bs = [], []
        for _, whh, bih, bhh in self.layer_params():
            ws.append(whh)
            given = [b for b in (bih, bhh) if b is not None]
            if given:
                bs.append(given[0] + given[1] if len(given) == 2 else given[0])
        return ws, bs

    def unit_preactivations(
        self, x: np.ndarray, h0: np.ndarray | None, phi: ActivationFn
    ) -> Iterator[tuple[Activation, np.ndarray]]:
        acts = self.unit_activations()
        if len(acts) != 1 or self.stacked:
            raise NotImplementedError(
                "unit pre-activations are defined for a single-layer cell with one unit "
                f"activation (a vanilla RNN), not for this {self!r}"
            )
        (act,) = acts
        w_ih, w_hh, b_ih, b_hh = self.layer_params()[0]
        wih, whh = (np.asarray(w, np.float64) for w in (w_ih, w_hh))
        bias = np.zeros(self.hidden_size)
        for vec in (b_ih, b_hh):
            if vec is not None:
                bias = bias + np.asarray(vec, np.float64)
        T, B, _ = np.shape(x)
        state = np.zeros((B, self.hidden_size)) if h0 is None else np.asarray(h0, np.float64)
        for step in range(T):
            z = np.asarray(x[step], np.float64) @ wih.T + state @ whh.T + bias
            yield act, z
            state = phi(act, z)

    def jacobian_obstacle(self) -> str | None:
        if not self._bidirectional:
            return None
        return (
            f"a bidirectional {type(self).__name__} is not a dynamical system forward in time: "
            "its reverse direction runs backward in time, so the step map of the whole model "
            "is not defined; analyse a unidirectional model, or one direction of one layer on "
            "its own (model.layer(l, direction=0), or direction=1 fed the time-reversed "
            "sequence); gradient_flow covers both directions"
        )

    def layer_params(self) -> list[LayerParams]:
        """Every layer's ``(weight_ih, weight_hh, bias_ih, bias_hh)`` in PyTorch's order
        (entry ``l * num_directions + d``); a single-layer model gives a list of one."""
        if not self.stacked:
            return [(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)]
        n = len(self.weight_hh)
        bih = [None] * n if self.bias_ih is None else self.bias_ih
        bhh = [None] * n if self.bias_hh is None else self.bias_hh
        return list(zip(self.weight_ih, self.weight_hh, bih, bhh))

    def layer(self, index: int, direction: int = 0) -> RecurrentModel:
        """Layer ``index`` in one direction as a single-layer model (its arrays shared).

        Parameters
        ----------
        index : int
            The layer, ``0 <= index < num_layers``.
        direction : int
            0 (forward) or, for a bidirectional model, 1 (reverse).

        Returns
        -------
        RecurrentModel
            A single-layer model of the same class. Its input is the hidden sequence of the
            layer below (both directions concatenated for a bidirectional model); the reverse
            direction is the cell run over the time-reversed sequence.
        """
        index = check_positive_int(index, "index", minimum=0)
        direction = check_positive_int(direction, "direction", minimum=0)
        if index >= self._num_layers:
            raise ValueError(f"index must be < num_layers = {self._num_layers}, got {index}")
        if direction >= self.num_directions:
            raise ValueError(
                f"direction must be < num_directions = {self.num_directions}, got {direction}"
            )
        wih, whh, bih, bhh = self.layer_params()[index * self.num_directions + direction]
        out = type(self)(
            wih,
            whh,
            bih,
            bhh,
            dtype=self.dtype,
            batch_first=self.batch_first,
            **self._extra_kwargs(),
        )
        out.notes = self.notes
        return out

    def with_layer_params(self: _R, params: Sequence[LayerParams]) -> _R:
        """A model of the same class and structure (layers, directions, layout, nonlinearity)
        with these per-layer parameters, in :meth:`layer_params` order (biases all given or
        all None); the arrays are taken as they are."""
        n = self._num_layers * self.num_directions
        if len(params) != n:
            raise ValueError(
                f"params must have num_layers * num_directions = {n} entries, got {len(params)}"
            )
        wih, whh, bih, bhh = (list(p) for p in zip(*params))
        kw: dict[str, Any] = {
            "dtype": self.dtype,
            "batch_first": self.batch_first,
            **self._extra_kwargs(),
        }
        if not self.stacked:
            out = type(self)(wih[0], whh[0], bih[0], bhh[0], **kw)
        else:
            out = type(self)(
                wih,
                whh,
                None if all(b is None for b in bih) else bih,
                None if all(b is None for b in bhh) else bhh,
                num_layers=self._num_layers,
                bidirectional=self._bidirectional,
                **kw,
            )
        out.notes = self.notes
        return out

    def _layer_params_as(self, dtype: np.dtype, *, check_finite: bool = True) -> list[LayerParams]:
        """:meth:`layer_params` re-checked and in ``dtype`` (read afresh, as ``_params_as``)."""
        p = self._params_as(dtype, check_finite=check_finite)
        return list(p) if self.stacked else [p]

    def _spec_of(self, params: Any) -> dict[str, Any]:
        if not self.stacked:
            wih, whh, bih, bhh = params
            return {
                "kind": self.cell,
                "weight_ih": wih,
                "weight_hh": whh,
                "bias_ih": bih,
                "bias_hh": bhh,
            }
        return {
            "kind": self.cell,
            "num_layers": self._num_layers,
            "bidirectional": self._bidirectional,
            "layers": [dict(zip(_KINDS, p)) for p in params],
        }

    def _torch_named(self) -> list[tuple[str, np.ndarray]]:
        """Every parameter under its PyTorch name, in state_dict order."""
        out = []
        D = self.num_directions
        for k, params in enumerate(self.layer_params()):
            for kind, arr in zip(_KINDS, params):
                if arr is not None:
                    out.append((_torch_name(kind, k // D, k % D), arr))
        return out

    def parameters(self) -> dict[str, np.ndarray]:
        """Parameters by name: ``weight_ih``, ... for a single layer; PyTorch's
        ``weight_ih_l0``, ``weight_ih_l0_reverse``, ... (state_dict order) when stacked."""
        if self.stacked:
            return dict(self._torch_named())
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

        def cast_all(a: Any) -> Any:
            if not self.stacked or not isinstance(a, (list, tuple)):
                return cast(a)  # a replaced list is checked by the constructor
            return [cast(e) for e in a]

        out = type(self)(
            cast_all(self.weight_ih),
            cast_all(self.weight_hh),
            cast_all(self.bias_ih),
            cast_all(self.bias_hh),
            num_layers=self._num_layers,
            bidirectional=self._bidirectional,
            dtype=dtype,
            batch_first=self.batch_first,
            **self._extra_kwargs(),
        )
        out.notes = self.notes
        return out

    def _named_arrays(self) -> list[tuple[str, np.ndarray]]:
        return list(self.parameters().items())

    def _own_params(self) -> Any:
        """The 4-tuple of a single layer; the list of :meth:`layer_params` when stacked."""
        if self.stacked:
            return self.layer_params()
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_sizes(
        cls: type[_R],
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        init: Any = None,
        bias: bool = True,
        seed: int | np.random.Generator | None = 0,
        dtype: object = np.float64,
    ) -> _R:
        """A seeded model (PyTorch's default init unless ``init`` says otherwise).

        Parameters
        ----------
        input_size, hidden_size : int
        num_layers : int
            Stacked layers; layer ``l > 0`` takes ``num_directions * hidden_size`` inputs.
        bidirectional : bool
        init : None, str, dict or Init
            Scheme of :func:`vgcore.init.initialize_recurrent`, applied to every layer and
            direction, drawn in PyTorch's parameter order from one generator.
        bias : bool
        seed : int, Generator or None
        dtype : float32 or float64
        """
        return cls._from_sizes(  # type: ignore[no-any-return]
            input_size,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            init=init,
            bias=bias,
            seed=seed,
            dtype=dtype,
        )

    @classmethod
    def from_torch(cls: type[_R], module: Any, *, dtype: object = None) -> _R:
        """Import a module of the cell's ``torch_class``: any ``num_layers``,
        ``bidirectional``, ``batch_first``, ``bias``. LSTM ``proj_size > 0`` is refused.
        Inter-layer dropout is off in the analyses (noted in ``model.notes``)."""
        return cls._from_torch(module, dtype)  # type: ignore[no-any-return]

    def to_torch(self) -> Any:
        """The matching ``torch.nn`` module with these parameters (float32/float64 as the model)."""
        return self._torch_module(self.torch_class)

    @classmethod
    def _from_sizes(
        cls,
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
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
        num_layers = check_positive_int(num_layers, "num_layers")
        D = 2 if _check_bool(bidirectional, "bidirectional") else 1
        dt = resolve_dtype(dtype)
        GN = cls.gates * hidden_size
        shapes: list[tuple[int, ...]] = []
        for layer in range(num_layers):
            fan_in = input_size if layer == 0 else D * hidden_size
            shapes += [(GN, fan_in), (GN, hidden_size), (2 * GN,)] * D
        _check_param_memory(shapes, dt, f"{cls.__name__}.from_sizes")
        rng = _rng(seed)
        ps = [
            initialize_recurrent(
                init,
                cls.kind,
                input_size if k < D else D * hidden_size,
                hidden_size,
                rng=rng,
                dtype=dt,
                nonlinearity=nonlinearity,
            )
            for k in range(num_layers * D)
        ]
        if cls.kind == "rnn":  # the nonlinearity shapes the init and is part of the model
            extra["nonlinearity"] = nonlinearity
        if num_layers == 1 and D == 1:
            (p,) = ps
            return cls(
                p["weight_ih"],
                p["weight_hh"],
                p["bias_ih"] if bias else None,
                p["bias_hh"] if bias else None,
                dtype=dt,
                **extra,
            )
        return cls(
            [p["weight_ih"] for p in ps],
            [p["weight_hh"] for p in ps],
            [p["bias_ih"] for p in ps] if bias else None,
            [p["bias_hh"] for p in ps] if bias else None,
            num_layers=num_layers,
            bidirectional=D == 2,
            dtype=dt,
            **extra,
        )

    @classmethod
    def _from_torch(cls, module: Any, dtype: object, **extra: Any) -> Any:
        from torch import nn

        expected = getattr(nn, cls.torch_class)
        if not isinstance(module, expected):
            raise TypeError(
                f"module must be a torch.nn.{cls.torch_class}, got {type(module).__name__}"
            )
        proj = getattr(module, "proj_size", 0)
        if proj:
            raise NotImplementedError(
                f"LSTM with proj_size={proj} (a projected hidden state) is not supported; "
                "vgcore imports nn.LSTM with proj_size=0 and any num_layers, bidirectional, "
                "batch_first and bias"
            )
        L, D = int(module.num_layers), 2 if module.bidirectional else 1

        def get(kind: str, k: int) -> np.ndarray:
            name = _torch_name(kind, k // D, k % D)
            return _torch_to_numpy(getattr(module, name), f"module.{name}")

        ks = range(L * D)
        wih, whh = [get("weight_ih", k) for k in ks], [get("weight_hh", k) for k in ks]
        bih = [get("bias_ih", k) for k in ks] if module.bias else None
        bhh = [get("bias_hh", k) for k in ks] if module.bias else None
        kw: dict[str, Any] = {"dtype": dtype, "batch_first": bool(module.batch_first), **extra}
        if L == 1 and D == 1:
            out = cls(
                wih[0],
                whh[0],
                None if bih is None else bih[0],
                None if bhh is None else bhh[0],
                **kw,
            )
        else:
            out = cls(wih, whh, bih, bhh, num_layers=L, bidirectional=D == 2, **kw)
        if module.dropout > 0 and L > 1:
            out.notes = (
                f"module.dropout={module.dropout:g} (between stacked layers) is off in the "
                "analyses: evaluation semantics, as after module.eval()",
            )
        return out

    def _torch_module(self, cls_name: str, **kw: Any) -> Any:
        import torch
        from torch import nn

        tdtype = torch.float32 if self.dtype == np.float32 else torch.float64
        has_bias = self.bias_ih is not None or self.bias_hh is not None
        mod = getattr(nn, cls_name)(
            self.input_size,
            self.hidden_size,
            num_layers=self._num_layers,
            bias=has_bias,
            batch_first=self.batch_first,
            bidirectional=self._bidirectional,
            dtype=tdtype,
            **kw,
        )
        with torch.no_grad():
            for param in mod.parameters():
                param.zero_()  # a single-layer model may lack one of its two biases
            for name, arr in self._torch_named():
                getattr(mod, name).copy_(torch.from_numpy(np.asarray(arr)))
        return mod

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self._extra_kwargs().items())
        if self._num_layers != 1:
            extra += f", num_layers={self._num_layers}"
        if self._bidirectional:
            extra += ", bidirectional=True"
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
        num_layers: int = 1,
        bidirectional: bool = False,
        dtype: object = None,
        batch_first: bool = False,
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(
            weight_ih,
            weight_hh,
            bias_ih,
            bias_hh,
            num_layers=num_layers,
            bidirectional=bidirectional,
            dtype=dtype,
            batch_first=batch_first,
        )

    @property
    def cell(self) -> str:
        return f"rnn_{self.nonlinearity}"

    def unit_activations(self) -> tuple[Activation, ...]:
        return (Activation(self.nonlinearity),)

    def _extra_kwargs(self) -> dict[str, Any]:
        return {"nonlinearity": self.nonlinearity}

    @classmethod
    def from_sizes(
        cls,
        input_size: int,
        hidden_size: int,
        *,
        nonlinearity: str = "tanh",
        num_layers: int = 1,
        bidirectional: bool = False,
        init: Any = None,
        bias: bool = True,
        seed: int | np.random.Generator | None = 0,
        dtype: object = np.float64,
    ) -> RNN:
        """A seeded RNN (PyTorch's default init unless ``init`` says otherwise); see
        :meth:`RecurrentModel.from_sizes`."""
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        return cls._from_sizes(  # type: ignore[no-any-return]
            input_size,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            init=init,
            bias=bias,
            seed=seed,
            dtype=dtype,
            nonlinearity=nonlinearity,
        )

    @classmethod
    def from_torch(cls, module: Any, *, dtype: object = None) -> RNN:
        """Import an ``nn.RNN`` (any ``num_layers``, ``bidirectional``, ``batch_first``,
        ``bias``; its nonlinearity)."""
        nonlinearity = getattr(module, "nonlinearity", "tanh")
        return cls._from_torch(module, dtype, nonlinearity=nonlinearity)  # type: ignore[no-any-return]

    def to_torch(self) -> Any:
        return self._torch_module("RNN", nonlinearity=self.nonlinearity)


class LSTM(RecurrentModel):
    """LSTM with PyTorch's gates (i, f, g, o) and state (h, c)."""

    kind = "lstm"
    gates = 4
    torch_class = "LSTM"
    state_names = ("h", "c")
    gate_names = ("i", "f", "g", "o")


class GRU(RecurrentModel):
    """GRU with PyTorch's gates (r, z, n): ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``."""

    kind = "gru"
    gates = 3
    torch_class = "GRU"
    gate_names = ("r", "z", "n")


register_model_kind(RNN, torch_classes=("RNN",), description="Elman RNN (tanh or relu)")
register_model_kind(LSTM, torch_classes=("LSTM",), description="LSTM (gates i, f, g, o)")
register_model_kind(GRU, torch_classes=("GRU",), description="GRU (gates r, z, n)")

"""Single-layer recurrent cells with PyTorch's semantics and layout: RNN, LSTM, GRU."""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np

from vgcore._validation import (
    as_float_array,
    check_positive_int,
    resolve_dtype,
)
from vgcore.activations import Activation
from vgcore.models.base import (
    Model,
    _check_param_memory,
    _infer_dtype,
    _rng,
    _torch_to_numpy,
)
from vgcore.models.registry import register_model_kind

__all__ = ["GRU", "LSTM", "RNN", "RecurrentModel"]

_R = TypeVar("_R", bound="RecurrentModel")


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
    def from_sizes(
        cls: type[_R],
        input_size: int,
        hidden_size: int,
        *,
        init: Any = None,
        bias: bool = True,
        seed: int | np.random.Generator | None = 0,
        dtype: object = np.float64,
    ) -> _R:
        """A seeded cell (PyTorch's default init unless ``init`` says otherwise)."""
        return cls._from_sizes(  # type: ignore[no-any-return]
            input_size, hidden_size, init=init, bias=bias, seed=seed, dtype=dtype
        )

    @classmethod
    def from_torch(cls: type[_R], module: Any, *, dtype: object = None) -> _R:
        """Import a single-layer module of the cell's ``torch_class`` (either ``batch_first``)."""
        return cls(**cls._torch_params(module), dtype=dtype)

    def to_torch(self) -> Any:
        """The matching ``torch.nn`` module with these parameters (float32/float64 as the model)."""
        return self._torch_module(self.torch_class)

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


class GRU(RecurrentModel):
    """GRU with PyTorch's gates (r, z, n): ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``."""

    kind = "gru"
    gates = 3
    torch_class = "GRU"
    gate_names = ("r", "z", "n")


register_model_kind(RNN, torch_classes=("RNN",), description="Elman RNN (tanh or relu)")
register_model_kind(LSTM, torch_classes=("LSTM",), description="LSTM (gates i, f, g, o)")
register_model_kind(GRU, torch_classes=("GRU",), description="GRU (gates r, z, n)")

"""Network descriptions: numpy weights in PyTorch's layout, built from sizes or imported.

Every model holds float32 or float64 numpy arrays laid out exactly as the matching PyTorch
module stores them (``nn.Linear.weight`` is ``(out, in)``; ``nn.LSTM.weight_ih_l0`` is
``(4N, in)`` with gates i, f, g, o; ``nn.GRU`` gates r, z, n), so weights move between the
two without transposes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from vgcore._validation import as_float_array, check_positive_int, resolve_dtype
from vgcore.activations import Activation, ActivationLike, as_activation, from_torch_module

__all__ = ["GRU", "LSTM", "MLP", "RNN", "Model", "RecurrentModel"]


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _infer_dtype(arrays: Sequence[Any], dtype: object) -> np.dtype:
    if dtype is not None:
        return resolve_dtype(dtype)
    for a in arrays:
        dt = getattr(a, "dtype", None)
        if dt is not None and np.dtype(dt) == np.float32:
            return np.dtype(np.float32)
    return np.dtype(np.float64)


def _torch_to_numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


class Model:
    """Base class: a dtype and per-dtype cached copies of the parameters."""

    kind: ClassVar[str] = "model"
    dtype: np.dtype

    def __init__(self) -> None:
        self._cast_cache: dict[np.dtype, Any] = {}

    def parameters(self) -> dict[str, np.ndarray]:
        """Parameters by PyTorch name (state_dict style)."""
        raise NotImplementedError

    def astype(self, dtype: object) -> Model:
        """A copy of the model in another float dtype."""
        raise NotImplementedError

    def _params_as(self, dtype: np.dtype) -> Any:
        if dtype == self.dtype:
            return self._own_params()
        if dtype not in self._cast_cache:
            self._cast_cache[dtype] = self.astype(dtype)._own_params()
        return self._cast_cache[dtype]

    def _own_params(self) -> Any:
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
    """

    kind = "mlp"

    def __init__(
        self,
        weights: Sequence[Any],
        biases: Sequence[Any | None] | None = None,
        activations: ActivationLike | Sequence[ActivationLike] = "tanh",
        *,
        dtype: object = None,
    ) -> None:
        super().__init__()
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
            isinstance(activations, tuple) and len(activations) == 2 and isinstance(activations[1], dict)
        ):
            acts = [as_activation(activations)] * L
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
                None if b is None else as_float_array(b, f"biases[{i}]", self.dtype, shape=(w.shape[0],))
            )
        self.activations: list[Activation] = acts

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
        """
        from vgcore.init import initialize_dense

        sizes = [check_positive_int(s, f"sizes[{i}]") for i, s in enumerate(sizes)]
        if len(sizes) < 2:
            raise ValueError(f"sizes must have at least 2 entries (input, output), got {sizes}")
        dt = resolve_dtype(dtype)
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
                init, sizes[i + 1], sizes[i], rng=rng, dtype=dt,
                activation=a.name, activation_param=slope,
            )
            ws.append(w)
            bs.append(b if bias else None)
        return cls(ws, bs, acts, dtype=dt)

    @classmethod
    def from_torch(cls, module: Any, *, dtype: object = None) -> MLP:
        """Import an ``nn.Sequential`` of ``nn.Linear`` and activation modules.

        A Linear followed by ``nn.Identity`` or by another Linear is linear; ``nn.Dropout``
        is skipped (evaluation semantics). Other modules raise NotImplementedError.
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
        for idx, sub in enumerate(module):
            if isinstance(sub, nn.Linear):
                ws.append(_torch_to_numpy(sub.weight))
                bs.append(None if sub.bias is None else _torch_to_numpy(sub.bias))
                acts.append(Activation("identity"))
                continue
            if isinstance(sub, (nn.Dropout, nn.Flatten)):
                continue
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
            dtype = ws[0].dtype if ws[0].dtype in (np.float32, np.float64) else np.float32
        return cls(ws, bs, acts, dtype=dtype)

    def to_torch(self) -> Any:
        """An equivalent ``nn.Sequential`` (same dtype, copied parameters)."""
        import torch
        from torch import nn

        from vgcore.activations import to_torch_module

        tdtype = torch.float32 if self.dtype == np.float32 else torch.float64
        mods: list[Any] = []
        for w, b, a in zip(self.weights, self.biases, self.activations):
            lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=tdtype)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                if b is not None:
                    lin.bias.copy_(torch.from_numpy(b))
            mods.append(lin)
            if not a.is_linear:
                mods.append(to_torch_module(a))
        return nn.Sequential(*mods)

    # -- properties -------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.weights)

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
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            out[f"layers.{i}.weight"] = w
            if b is not None:
                out[f"layers.{i}.bias"] = b
        return out

    def astype(self, dtype: object) -> MLP:
        dt = resolve_dtype(dtype)
        return MLP(
            [w.astype(dt) for w in self.weights],
            [None if b is None else b.astype(dt) for b in self.biases],
            self.activations,
            dtype=dt,
        )

    def _own_params(self) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        return self.weights, self.biases

    def __repr__(self) -> str:
        acts = {str(a) for a in self.activations}
        act = acts.pop() if len(acts) == 1 else "mixed"
        return f"MLP(sizes={self.sizes}, activation={act}, dtype={self.dtype.name})"


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
        super().__init__()
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
        self.bias_ih = None if bias_ih is None else as_float_array(bias_ih, "bias_ih", self.dtype, shape=(G * N,))
        self.bias_hh = None if bias_hh is None else as_float_array(bias_hh, "bias_hh", self.dtype, shape=(G * N,))
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
    def cell(self) -> str:
        """Name of the compiled kernel."""
        return self.kind

    def parameters(self) -> dict[str, np.ndarray]:
        out = {"weight_ih": self.weight_ih, "weight_hh": self.weight_hh}
        if self.bias_ih is not None:
            out["bias_ih"] = self.bias_ih
        if self.bias_hh is not None:
            out["bias_hh"] = self.bias_hh
        return out

    def _extra_kwargs(self) -> dict[str, Any]:
        return {}

    def astype(self, dtype: object) -> RecurrentModel:
        dt = resolve_dtype(dtype)
        cast = lambda a: None if a is None else a.astype(dt)  # noqa: E731
        return type(self)(
            cast(self.weight_ih), cast(self.weight_hh), cast(self.bias_ih), cast(self.bias_hh),
            dtype=dt, batch_first=self.batch_first, **self._extra_kwargs(),
        )

    def _own_params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    # -- construction -----------------------------------------------------------------
    @classmethod
    def _from_sizes(
        cls, input_size: int, hidden_size: int, *, init: Any, bias: bool,
        seed: int | np.random.Generator | None, dtype: object, nonlinearity: str = "tanh",
        **extra: Any,
    ) -> Any:
        from vgcore.init import initialize_recurrent

        input_size = check_positive_int(input_size, "input_size")
        hidden_size = check_positive_int(hidden_size, "hidden_size")
        dt = resolve_dtype(dtype)
        p = initialize_recurrent(
            init, cls.kind, input_size, hidden_size, rng=_rng(seed), dtype=dt,
            nonlinearity=nonlinearity,
        )
        return cls(
            p["weight_ih"], p["weight_hh"],
            p["bias_ih"] if bias else None, p["bias_hh"] if bias else None,
            dtype=dt, **extra,
        )

    @classmethod
    def _torch_params(cls, module: Any) -> dict[str, Any]:
        from torch import nn

        expected = getattr(nn, cls.torch_class)
        if not isinstance(module, expected):
            raise TypeError(f"module must be a torch.nn.{cls.torch_class}, got {type(module).__name__}")
        if module.num_layers != 1:
            raise NotImplementedError(
                f"stacked {cls.torch_class} (num_layers={module.num_layers}) is not supported yet; "
                "analyse each layer separately"
            )
        if module.bidirectional:
            raise NotImplementedError(f"bidirectional {cls.torch_class} is not supported yet")
        if getattr(module, "proj_size", 0):
            raise NotImplementedError("LSTM with proj_size > 0 is not supported yet")
        get = lambda name: None if getattr(module, name, None) is None else _torch_to_numpy(getattr(module, name))  # noqa: E731
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
            self.input_size, self.hidden_size, bias=self.bias_ih is not None,
            batch_first=self.batch_first, dtype=tdtype, **kw,
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
        self, weight_ih: Any, weight_hh: Any, bias_ih: Any | None = None, bias_hh: Any | None = None,
        *, nonlinearity: str = "tanh", dtype: object = None, batch_first: bool = False,
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(weight_ih, weight_hh, bias_ih, bias_hh, dtype=dtype, batch_first=batch_first)

    @property
    def cell(self) -> str:
        return f"rnn_{self.nonlinearity}"

    def _extra_kwargs(self) -> dict[str, Any]:
        return {"nonlinearity": self.nonlinearity}

    @classmethod
    def from_sizes(
        cls, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh", init: Any = None,
        bias: bool = True, seed: int | np.random.Generator | None = 0, dtype: object = np.float64,
    ) -> RNN:
        """A seeded RNN (PyTorch's default init unless ``init`` says otherwise)."""
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        return cls._from_sizes(
            input_size, hidden_size, init=init, bias=bias, seed=seed, dtype=dtype,
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

    @property
    def state_size(self) -> int:
        return 2 * self.hidden_size

    @classmethod
    def from_sizes(
        cls, input_size: int, hidden_size: int, *, init: Any = None, bias: bool = True,
        seed: int | np.random.Generator | None = 0, dtype: object = np.float64,
    ) -> LSTM:
        """A seeded LSTM (PyTorch's default init unless ``init`` says otherwise)."""
        return cls._from_sizes(input_size, hidden_size, init=init, bias=bias, seed=seed, dtype=dtype)

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

    @classmethod
    def from_sizes(
        cls, input_size: int, hidden_size: int, *, init: Any = None, bias: bool = True,
        seed: int | np.random.Generator | None = 0, dtype: object = np.float64,
    ) -> GRU:
        """A seeded GRU (PyTorch's default init unless ``init`` says otherwise)."""
        return cls._from_sizes(input_size, hidden_size, init=init, bias=bias, seed=seed, dtype=dtype)

    @classmethod
    def from_torch(cls, module: Any, *, dtype: object = None) -> GRU:
        """Import a single-layer ``nn.GRU`` (either ``batch_first``)."""
        return cls(**cls._torch_params(module), dtype=dtype)

    def to_torch(self) -> Any:
        return self._torch_module("GRU")

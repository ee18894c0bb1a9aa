"""Recurrent steps written in PyTorch, analysed through time.

:class:`TorchCell` wraps a recurrent step, a ``torch.nn.Module`` or any callable
``step(state, x_t) -> state`` whose state is a tensor or a tuple of tensors (an LSTM's
``(h, c)``, a state-space model's ``(h, s)``). :func:`lyapunov` measures the top-k Lyapunov
exponents of its tangent dynamics by the QR method, :func:`gradient_flow` the gradient norms
through time by backpropagation with exact power-of-two rescaling. Both return the native
analyses' result classes (:class:`~vgcore.LyapunovSpectrum`, :class:`~vgcore.GradientFlow`).

The step runs where its parameters live (CPU or CUDA) and in their dtype; float16 / bfloat16
modules are analysed in a float32 copy. Per-step Jacobians are never formed: tangents go
through ``torch.func.jvp`` (``vmap`` over the k tangent vectors; by default traced once into a
graph of aten operations, :mod:`vgcore.torchmodel._trace`), cotangents through autograd on the
graph of one step. torch is imported when an analysis runs, not with this module.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vgcore._validation import check_int_seed, check_positive_int
from vgcore.analysis.gradient_flow import GradientFlow
from vgcore.analysis.lyapunov import LyapunovSpectrum
from vgcore.models.base import Model
from vgcore.models.registry import register_model_kind

if TYPE_CHECKING:
    import torch

__all__ = ["SIGNATURES", "TorchCell", "gradient_flow", "lyapunov"]

#: How a step takes its arguments: ``"state_first"`` is ``step(state, x_t)``,
#: ``"input_first"`` is ``step(x_t, state)`` (torch's ``RNNCell``, ``GRUCell``, ``LSTMCell``);
#: ``"auto"`` picks ``"input_first"`` for those stock cells and ``"state_first"`` otherwise.
SIGNATURES = ("auto", "state_first", "input_first")

_LN2 = math.log(2.0)
#: Seconds between progress reports (the hot loops never wait for the device to report).
_PROGRESS_EVERY = 0.1

ProgressCallback = Callable[[int, int], Any]


def _torch() -> Any:
    import torch

    return torch


def _np_dtype(dt: Any) -> np.dtype:
    return np.dtype(str(dt).removeprefix("torch."))


def _torch_dtype(dtype: Any) -> Any:
    """A float32 / float64 torch dtype from a torch or numpy dtype or its name."""
    torch = _torch()
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return getattr(torch, name)


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


# -- exact power-of-two scaling -------------------------------------------------------------


def _pow2(e: torch.Tensor, dtype: Any) -> torch.Tensor:
    """``2**e`` built from its bits (exact), for integer ``e`` within the dtype's normal
    exponent range."""
    torch = _torch()
    if dtype == torch.float64:
        return ((e.to(torch.int64) + 1023) << 52).view(torch.float64)
    return ((e.to(torch.int32) + 127) << 23).view(torch.float32)


def _ldexp(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``x * 2**s`` for an integer tensor ``s``, as two exact multiplications (one rounding at
    most, where the result leaves the normal range; scales beyond twice the exponent range
    saturate, which only matters for results that are 0 or inf in the dtype anyway)."""
    torch = _torch()
    fi = torch.finfo(x.dtype)
    emax, emin = int(math.log2(fi.max)), int(math.log2(fi.tiny))
    s = s.clamp(2 * emin, 2 * emax)
    a = torch.div(s, 2, rounding_mode="floor")
    return x * _pow2(a, x.dtype) * _pow2(s - a, x.dtype)


def _normalise(parts: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Scale the tensors together by the power of two that brings their largest magnitude
    into [0.5, 1): returns the scaled tensors and the exponent e (the originals are
    ``scaled * 2**e``). All zero: e = 0. No host synchronisation."""
    torch = _torch()
    amax = torch.stack([p.detach().abs().amax() for p in parts]).amax()
    e = torch.frexp(amax).exponent.to(torch.int64)
    return [_ldexp(p, -e) for p in parts], e


# -- the wrapper ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Runner:
    """The step as an analysis calls it: ``call(state_tuple, x_t) -> state_tuple``."""

    call: Callable[[tuple[Any, ...], Any], tuple[Any, ...]]
    dtype: Any  # torch dtype
    device: Any  # torch device
    module: Any  # the module that runs (the original or a float copy), or None
    params: dict[str, Any]  # parameter leaves (param_grads) or {}


class TorchCell(Model):
    """A recurrent step written in PyTorch, analysed through time.

    Parameters
    ----------
    step : torch.nn.Module or callable
        One step of the recurrence. ``step(state, x_t) -> state`` with ``x_t`` of shape
        ``(B, input_size)`` and the state a tensor of shape ``(B, *s)`` or a tuple of such
        tensors (e.g. ``(h, c)``), returned in the same structure and shapes. torch's stock
        cells (``nn.RNNCell``, ``nn.GRUCell``, ``nn.LSTMCell``) take ``(x_t, state)`` and are
        recognised (see ``signature``). The step must treat the samples of a batch
        independently (no statistics over the batch) and be deterministic (the analyses run
        it in ``eval()`` mode, restoring the module's modes afterwards).
    state_sizes : int, torch.Size or sequence, optional
        The per-sample state shape, needed unless ``step`` is a stock cell or ``h0`` is
        given: an int ``n`` for a tensor state ``(B, n)``; a ``torch.Size`` ``s`` for a
        tensor state ``(B, *s)``; a list or tuple with one entry per component for a tuple
        state, each an int ``n_i`` (component ``(B, n_i)``) or a tuple of ints (component
        ``(B, *shape)``).
    h0 : tensor or tuple of tensors, optional
        A default initial state, shape ``(B, *s)`` per component (it also gives the state
        shapes). Analyses take their own ``h0``; zeros when neither is given.
    signature : {"auto", "state_first", "input_first"}
        Argument order of ``step``: ``"state_first"`` calls ``step(state, x_t)``,
        ``"input_first"`` calls ``step(x_t, state)``; ``"auto"`` uses ``"input_first"`` for
        ``nn.RNNCellBase`` subclasses (RNNCell, GRUCell, LSTMCell) and ``"state_first"``
        otherwise.
    state_names : sequence of str, optional
        Names of the state's components: default ``("h",)``, ``("h", "c")`` for a pair,
        ``("h", "s1", "s2", ...)`` for longer tuples.
    input_size : int, optional
        Features of ``x_t`` (known for stock cells; otherwise read from the input).
    dtype : float32 or float64, optional
        A module is analysed in its parameters' dtype by default (float16 / bfloat16: a
        float32 copy); another dtype analyses a converted deep copy. A plain callable runs
        in this dtype (default: ``h0``'s, else torch's default dtype).
    device : torch.device or str, optional
        For a plain callable: where states live (default: ``h0``'s device, else the CPU).
        A module runs where its parameters are.
    name : str, optional
        A label for results (default: the class or function name).

    Notes
    -----
    The state the analyses see is the components flattened per sample and concatenated in
    order, ``D = sum(prod(s_i))``; ``lyapunov``'s ``final_state`` is ``(B, D)`` in that order.
    Answers the questions the analyses ask a model: ``kind == "torch_cell"``,
    ``axis == "time"``, ``state_names``, ``state_dim``, ``input_size``, ``describe()``.
    """

    kind: ClassVar[str] = "torch_cell"
    axis: ClassVar[str] = "time"
    gate_names: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        step: Any,
        *,
        state_sizes: Any = None,
        h0: Any = None,
        signature: str = "auto",
        state_names: Sequence[str] | None = None,
        input_size: int | None = None,
        dtype: Any = None,
        device: Any = None,
        name: str | None = None,
    ) -> None:
        torch = _torch()
        nn = torch.nn
        if isinstance(step, TorchCell):
            raise TypeError("step is already a TorchCell; pass it to the analyses directly")
        if not callable(step):
            raise TypeError(
                f"step must be a torch.nn.Module or a callable step(state, x_t) -> state, got "
                f"{type(step).__name__}"
            )
        if signature not in SIGNATURES:
            raise ValueError(f"signature must be one of {SIGNATURES}, got {signature!r}")
        self.step = step
        self.module: Any = step if isinstance(step, nn.Module) else None
        stock = isinstance(step, nn.RNNCellBase)
        if signature == "auto":
            signature = "input_first" if stock else "state_first"
        self.signature = signature
        self.name = name or (type(step).__name__ if self.module is not None else _fn_name(step))
        notes: list[str] = []
        self._module_dtype: Any = None
        # dtype and device
        if self.module is not None:
            from vgcore.torchmodel._hygiene import HALF_DTYPES, module_dtype

            mdt, dev = module_dtype(self.module)
            self._module_dtype = mdt
            if dtype is not None:
                tdt = _torch_dtype(dtype)
                if tdt != mdt:
                    notes.append(
                        f"the module holds {str(mdt).removeprefix('torch.')} parameters: "
                        f"analysed in a {str(tdt).removeprefix('torch.')} copy (the module "
                        "itself is unchanged)"
                    )
            elif mdt in HALF_DTYPES:
                tdt = torch.float32
                notes.append(
                    f"the module holds {str(mdt).removeprefix('torch.')} parameters: analysed "
                    "in a float32 copy (the module itself is unchanged)"
                )
            else:
                tdt = _torch_dtype(mdt)
            if device is not None and torch.device(device) != dev:
                raise ValueError(
                    f"device: a module runs where its parameters are ({dev}), got {device!r}; "
                    "move the module instead"
                )
            self._device = dev
        else:
            first = _first_tensor(h0)
            if dtype is not None:
                tdt = _torch_dtype(dtype)
            elif first is not None and first.is_floating_point():
                tdt = _torch_dtype(first.dtype)
            else:
                tdt = _torch_dtype(torch.get_default_dtype())
            if device is not None:
                self._device = torch.device(device)
            elif first is not None:
                self._device = first.device
            else:
                self._device = torch.device("cpu")
        self._tdtype = tdt
        self.dtype = _np_dtype(tdt)
        self.notes = tuple(notes)
        # state structure
        shapes: tuple[tuple[int, ...], ...] | None = None
        tuple_state = False
        if stock:
            N = int(step.hidden_size)
            tuple_state = isinstance(step, nn.LSTMCell)
            shapes = ((N,), (N,)) if tuple_state else ((N,),)
            if input_size is not None and int(input_size) != int(step.input_size):
                raise ValueError(
                    f"input_size = {input_size} contradicts the cell's input_size {step.input_size}"
                )
            input_size = int(step.input_size)
        if state_sizes is not None:
            given, given_tuple = _parse_state_sizes(state_sizes)
            if shapes is not None and (given != shapes or given_tuple != tuple_state):
                raise ValueError(
                    f"state_sizes = {state_sizes!r} contradicts the cell's state "
                    f"{_describe_shapes(shapes, tuple_state)}"
                )
            shapes, tuple_state = given, given_tuple
        self.h0: Any = None
        if h0 is not None:
            comps, is_tuple = _as_state_tuple(h0, "h0")
            hshapes = tuple(tuple(int(s) for s in c.shape[1:]) for c in comps)
            if shapes is not None and (hshapes != shapes or is_tuple != tuple_state):
                raise ValueError(
                    f"h0 has the state {_describe_shapes(hshapes, is_tuple)} per sample, "
                    f"expected {_describe_shapes(shapes, tuple_state)}"
                )
            shapes, tuple_state = hshapes, is_tuple
            self.h0 = h0
        self._shapes = shapes
        self._tuple = tuple_state
        n = 1 if shapes is None else len(shapes)
        if state_names is None:
            names: tuple[str, ...] = (
                ("h",)
                if n == 1
                else ("h", "c")
                if n == 2
                else ("h", *(f"s{i}" for i in range(1, n)))
            )
        else:
            names = tuple(str(s) for s in state_names)
            if shapes is not None and len(names) != n:
                raise ValueError(
                    f"state_names has {len(names)} names, but the state has {n} component(s)"
                )
        self._state_names = names
        self._input_size = (
            None if input_size is None else check_positive_int(input_size, "input_size")
        )

    # -- the questions analyses ask a model ------------------------------------------------
    @property  # type: ignore[override]
    def state_names(self) -> tuple[str, ...]:  # type: ignore[override]
        """Names of the state's components, in the order they are concatenated."""
        return self._state_names

    @property
    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-sample shape of each state component."""
        if self._shapes is None:
            raise ValueError(
                f"the state shape of this TorchCell ({self.name}) is not known: pass "
                "state_sizes= or h0= to TorchCell, or h0= to the analysis"
            )
        return self._shapes

    @property
    def tuple_state(self) -> bool:
        """Whether the step takes and returns a tuple of tensors."""
        return self._tuple

    @property
    def state_dim(self) -> int:
        """D: the state's components flattened per sample and concatenated."""
        return int(sum(math.prod(s) for s in self.state_shapes))

    @property
    def hidden_size(self) -> int:
        """Features of the first component per sample (``h``; what the default loss reads)."""
        return int(math.prod(self.state_shapes[0]))

    @property
    def input_size(self) -> int:
        if self._input_size is None:
            raise ValueError(
                f"the input_size of this TorchCell ({self.name}) is not known until an input "
                "is given; pass input_size= to TorchCell"
            )
        return self._input_size

    @property
    def num_layers(self) -> int:
        return 1

    @property
    def num_directions(self) -> int:
        return 1

    @property
    def batch_first(self) -> bool:
        """Always False: inputs are time-major ``(T, B, input_size)``."""
        return False

    @property
    def torch_dtype(self) -> Any:
        """The torch dtype the analyses run in."""
        return self._tdtype

    @property
    def device(self) -> Any:
        """The torch device the analyses run on."""
        return self._device

    def step_jacobian_dims(self) -> list[int]:
        return [self.state_dim]

    def describe(self) -> str:
        shapes = "?" if self._shapes is None else _describe_shapes(self._shapes, self._tuple)
        return f"TorchCell {self.name} state={shapes}"

    def flat_spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.kind, "step": self.name}
        if self._input_size is not None:
            out["input_size"] = self._input_size
        if self._shapes is not None:
            out["state_dim"] = self.state_dim
        return out

    def parameters(self) -> dict[str, np.ndarray]:
        """The module's parameters by name, as float numpy copies ({} for a plain callable)."""
        if self.module is None:
            return {}
        out = {}
        for n, p in self.module.named_parameters():
            t = p.detach()
            if t.dtype in (_torch().float16, _torch().bfloat16):
                t = t.float()
            out[n] = np.array(t.cpu().numpy(), copy=True)
        return out

    @property
    def num_parameters(self) -> int:
        if self.module is None:
            return 0
        return int(sum(p.numel() for p in self.module.parameters()))

    def validate(self) -> None:
        """Refuse NaN/Inf parameters, naming the first (one host synchronisation)."""
        if self.module is None:
            return
        torch = _torch()
        named = [(n, p) for n, p in self.module.named_parameters() if p.is_floating_point()]
        if not named:
            return
        ok = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).cpu().numpy()
        if not ok.all():
            bad = named[int(np.argmin(ok))][0]
            raise ValueError(f"parameter {bad!r} of {self.name} contains NaN or Inf")

    def _checked(self, *, check_finite: bool = True) -> TorchCell:
        if check_finite:
            self.validate()
        return self

    def to_spec(self, dtype: object = None, *, check_finite: bool = True) -> dict[str, Any]:
        raise TypeError(
            "a TorchCell has no description for the compiled core; its analyses run through "
            "torch (vgcore.torchmodel.cell.lyapunov / gradient_flow)"
        )

    def astype(self, dtype: object) -> TorchCell:
        """The same step analysed in another dtype (a module: a converted deep copy)."""
        tdt = _torch_dtype(dtype)
        if self.module is not None:
            step = copy.deepcopy(self.module).to(tdt)
            h0 = self.h0
        else:
            step, h0 = self.step, self.h0
        return TorchCell(
            step,
            state_sizes=self._sizes_arg(),
            h0=h0,
            signature=self.signature,
            state_names=self._state_names,
            input_size=self._input_size,
            dtype=tdt,
            device=None if self.module is not None else self._device,
            name=self.name,
        )

    def _sizes_arg(self) -> Any:
        if self._shapes is None:
            return None
        return list(self._shapes) if self._tuple else _torch().Size(self._shapes[0])

    def __repr__(self) -> str:
        shapes = "?" if self._shapes is None else _describe_shapes(self._shapes, self._tuple)
        return (
            f"TorchCell({self.name}, state={shapes} {self._state_names}, "
            f"signature={self.signature!r}, {self.dtype.name}, {self._device})"
        )

    # -- running the step -------------------------------------------------------------------
    @contextmanager
    def _session(self, *, param_leaves: bool = False) -> Iterator[_Runner]:
        """The step ready to run: the module in eval mode (restored with everything else on
        exit, also after an exception), or a converted copy of it. With ``param_leaves``, the
        module is called through ``functional_call`` with detached parameter leaves that
        require grad (the module's own flags are not touched)."""
        torch = _torch()
        with ExitStack() as stack:
            module = self.module
            if module is not None:
                from vgcore.torchmodel._hygiene import preserved

                if self._module_dtype != self._tdtype:
                    module = copy.deepcopy(module).to(self._tdtype)
                stack.enter_context(preserved(self.module, eval_mode=True, grads=False))
                if module is not self.module:
                    module.eval()
            fn: Callable[..., Any] = module if module is not None else self.step
            params: dict[str, Any] = {}
            if param_leaves:
                if module is None:
                    raise ValueError(
                        "param_grads needs a step that is a torch.nn.Module (its parameters "
                        f"are what is measured); {self.name} is a plain callable"
                    )
                params = {
                    n: p.detach().requires_grad_(True)
                    for n, p in module.named_parameters()
                    if p.is_floating_point()
                }
                mod = module

                def functional(*args: Any) -> Any:
                    return torch.func.functional_call(mod, params, args)

                fn = functional

            if not param_leaves and module is not None and self._device.type != "cpu":
                # torch's fused CUDA cell kernels have no forward-mode rule (jvp fails): the
                # same formula in plain operations
                fn = unfused_cell(module) or fn
            tup, first = self._tuple, self.signature == "input_first"

            def call(state: tuple[Any, ...], x: Any) -> tuple[Any, ...]:
                s = state if tup else state[0]
                out = fn(x, s) if first else fn(state if tup else s, x)
                if isinstance(out, (tuple, list)):
                    return tuple(out)
                return (out,)

            yield _Runner(call, self._tdtype, self._device, module, params)


def unfused_cell(cell: Any) -> Callable[..., Any] | None:
    """``cell(x, state)`` of a stock ``nn.RNNCell`` / ``nn.LSTMCell`` / ``nn.GRUCell`` written in
    plain operations (PyTorch's formulas and gate order), which forward-mode AD can go through;
    None for any other module."""
    torch = _torch()
    F = torch.nn.functional
    if not isinstance(cell, (torch.nn.RNNCell, torch.nn.LSTMCell, torch.nn.GRUCell)):
        return None

    def gates(x: Any, h: Any) -> tuple[Any, Any]:
        return F.linear(x, cell.weight_ih, cell.bias_ih), F.linear(h, cell.weight_hh, cell.bias_hh)

    if isinstance(cell, torch.nn.LSTMCell):

        def lstm(x: Any, state: Any) -> Any:
            h, c = state
            gi, gh = gates(x, h)
            i, f, g, o = (gi + gh).chunk(4, dim=-1)
            c2 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c2), c2

        return lstm
    if isinstance(cell, torch.nn.GRUCell):

        def gru(x: Any, h: Any) -> Any:
            gi, gh = gates(x, h)
            ir, iz, in_ = gi.chunk(3, dim=-1)
            hr, hz, hn = gh.chunk(3, dim=-1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(in_ + r * hn)
            return (1 - z) * n + z * h

        return gru
    act = torch.tanh if cell.nonlinearity == "tanh" else torch.relu

    def rnn(x: Any, h: Any) -> Any:
        gi, gh = gates(x, h)
        return act(gi + gh)

    return rnn


def _fn_name(fn: Any) -> str:
    return str(
        getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    )


def _first_tensor(h0: Any) -> Any:
    torch = _torch()
    if isinstance(h0, torch.Tensor):
        return h0
    if isinstance(h0, (tuple, list)) and h0 and isinstance(h0[0], torch.Tensor):
        return h0[0]
    return None


def _describe_shapes(shapes: Sequence[tuple[int, ...]], is_tuple: bool) -> str:
    per = ["(" + ", ".join(["B", *(str(int(d)) for d in s)]) + ")" for s in shapes]
    return f"({', '.join(per)})" if is_tuple else per[0]


def _parse_state_sizes(sizes: Any) -> tuple[tuple[tuple[int, ...], ...], bool]:
    def one(v: Any, name: str) -> tuple[int, ...]:
        if isinstance(v, (tuple, list)):
            if not v:
                raise ValueError(f"{name} is an empty shape")
            return tuple(check_positive_int(s, f"{name}[{i}]") for i, s in enumerate(v))
        return (check_positive_int(v, name),)

    if isinstance(sizes, _torch().Size):  # one tensor of a multi-axis per-sample shape
        return (one(tuple(sizes), "state_sizes"),), False
    if isinstance(sizes, (tuple, list)):
        if not sizes:
            raise ValueError("state_sizes is empty; give an int or one entry per component")
        return tuple(one(v, f"state_sizes[{i}]") for i, v in enumerate(sizes)), True
    return (one(sizes, "state_sizes"),), False


def _as_state_tuple(value: Any, name: str) -> tuple[tuple[Any, ...], bool]:
    """A state (tensor or tuple of tensors, numpy accepted) as a tuple of tensors, checked
    to have a batch axis; no dtype conversion here."""
    torch = _torch()

    def tensor(v: Any, what: str) -> Any:
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{what} must be a tensor (or a numpy array), got {type(v).__name__}")
        if not v.is_floating_point():
            raise TypeError(f"{what} must be floating point, got {v.dtype}")
        if v.ndim < 2:
            raise ValueError(f"{what} must have shape (B, ...), got {tuple(v.shape)}")
        return v

    if isinstance(value, (tuple, list)):
        if not value:
            raise ValueError(f"{name} is an empty tuple")
        return tuple(tensor(v, f"{name}[{i}]") for i, v in enumerate(value)), True
    return (tensor(value, name),), False


def _as_cell(cell: Any, **kw: Any) -> TorchCell:
    if isinstance(cell, TorchCell):
        if kw:
            raise TypeError(f"{', '.join(kw)}: give these to TorchCell, not with a TorchCell")
        return cell
    if callable(cell):
        return TorchCell(cell, **kw)
    raise TypeError(
        f"cell must be a TorchCell, a torch.nn.Module or a callable step(state, x_t), got "
        f"{type(cell).__name__}"
    )


# -- inputs ---------------------------------------------------------------------------------


def _as_input(x: Any, name: str, cell: TorchCell, run: _Runner, input_size: int | None) -> Any:
    """One (T, B, input_size) tensor on the run's device and dtype, checked."""
    torch = _torch()
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a tensor or array of shape (T, B, input_size), got {type(x).__name__}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(
            f"{name} must have shape (T, B, input_size) (time-major), got {tuple(x.shape)}"
        )
    if input_size is not None and x.shape[2] != input_size:
        raise ValueError(
            f"{name} must have shape (T, B, {input_size}) for {cell.name}, got {tuple(x.shape)}"
        )
    if x.shape[1] == 0:
        raise ValueError(f"{name} has an empty batch (B = 0), shape {tuple(x.shape)}")
    return x.detach().to(device=run.device, dtype=run.dtype)


def _chunks(x: Any) -> tuple[Iterable[Any], bool]:
    """(chunks, whole): a tensor or array is one chunk; an iterable is streamed."""
    torch = _torch()
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return [x], True
    if isinstance(x, (str, bytes)) or not isinstance(x, Iterable):
        raise TypeError(
            f"x must be a tensor of shape (T, B, input_size) or an iterable of such chunks, "
            f"got {type(x).__name__}"
        )
    return x, False


def _initial_state(
    cell: TorchCell, h0: Any, batch: int, run: _Runner
) -> tuple[tuple[Any, ...], tuple[tuple[int, ...], ...]]:
    """The initial state as a tuple of (B, *s) tensors (zeros by default) and the shapes."""
    torch = _torch()
    if h0 is None:
        h0 = cell.h0
    if h0 is None:
        shapes = cell.state_shapes
        return tuple(
            torch.zeros((batch, *s), dtype=run.dtype, device=run.device) for s in shapes
        ), shapes
    comps, is_tuple = _as_state_tuple(h0, "h0")
    shapes = tuple(tuple(int(s) for s in c.shape[1:]) for c in comps)
    if cell._shapes is not None and (shapes != cell._shapes or is_tuple != cell._tuple):
        raise ValueError(
            f"h0 must be the state {_describe_shapes(cell._shapes, cell._tuple)}, got "
            f"{_describe_shapes(shapes, is_tuple)} per sample"
        )
    if cell._shapes is None and is_tuple != cell._tuple and len(comps) == 1:
        is_tuple = cell._tuple
    for i, c in enumerate(comps):
        if c.shape[0] != batch:
            what = f"h0[{i}]" if is_tuple else "h0"
            raise ValueError(f"{what} has batch size {c.shape[0]}, but x has {batch}")
    return tuple(c.detach().to(device=run.device, dtype=run.dtype) for c in comps), shapes


class _Layout:
    """Flattening of a state tuple to (B, D) rows and back."""

    def __init__(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        self.shapes = shapes
        self.sizes = [int(math.prod(s)) for s in shapes]
        self.D = sum(self.sizes)
        self.plain = len(shapes) == 1 and len(shapes[0]) == 1

    def flat(self, comps: tuple[Any, ...]) -> Any:
        if self.plain:
            return comps[0]
        torch = _torch()
        return torch.cat([c.reshape(c.shape[0], -1) for c in comps], dim=1)

    def unflat(self, v: Any) -> tuple[Any, ...]:
        if self.plain:
            return (v,)
        parts = v.split(self.sizes, dim=1)
        return tuple(p.reshape(p.shape[0], *s) for p, s in zip(parts, self.shapes))


def _check_step_output(
    out: tuple[Any, ...], state: tuple[Any, ...], cell: TorchCell, run: _Runner
) -> None:
    """A clear error when the step returns another structure, shape, dtype or device than the
    state it was given (checked once, on the first step)."""
    torch = _torch()
    if len(out) != len(state):
        want = f"a tuple of {len(state)} tensors" if len(state) > 1 else "one tensor"
        raise ValueError(
            f"step ({cell.name}) must return the state in the structure it takes ({want}), "
            f"got {len(out)} value(s)"
        )
    for i, (o, s) in enumerate(zip(out, state)):
        what = f"component {i} ({cell.state_names[i] if i < len(cell.state_names) else i})"
        if not isinstance(o, torch.Tensor):
            raise TypeError(f"step ({cell.name}) returned a {type(o).__name__} as {what}")
        if tuple(o.shape) != tuple(s.shape):
            raise ValueError(
                f"step ({cell.name}) must return a state of the shape it is given: {what} "
                f"came back with shape {tuple(o.shape)}, expected {tuple(s.shape)}"
            )
        if o.dtype != s.dtype:
            raise TypeError(
                f"step ({cell.name}) returned {what} in {o.dtype}, the state is {s.dtype}; "
                f"give TorchCell dtype={str(o.dtype)!r} (or make the step keep the dtype)"
            )
        if o.device != s.device:
            raise ValueError(
                f"step ({cell.name}) returned {what} on {o.device}, the state is on {s.device}"
            )


class _Progress:
    """Reports (done, total) at most every 0.1 s; total 0 while a stream's length is unknown."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be callable(done, total) or None, got {progress!r}")
        self.fn = progress
        self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if self.fn is None:
            return
        now = time.monotonic()
        if now - self.last >= _PROGRESS_EVERY:
            self.last = now
            self.fn(done, total)

    def end(self, done: int) -> None:
        if self.fn is not None:
            self.fn(done, done)


# -- Lyapunov exponents ---------------------------------------------------------------------


class _RecordBook:
    """Evenly spaced records over a stream of unknown length, as the native engine keeps them:
    every ``stride`` accumulated QR blocks; when full, every other record is dropped and the
    stride doubles. The decisions are made on the host (step counts); the device keeps the raw
    log sums and block logs, divided by their step counts once at the end."""

    def __init__(self, max_records: int, B: int, k: int, device: Any) -> None:
        torch = _torch()
        self.max, self.stride, self.n = max_records, 1, 0
        self.steps: list[int] = []
        self.acc: list[int] = []  # accumulated steps at each record
        self.lengths: list[int] = []  # its block's length
        self.cap = min(max_records, 64)
        self.logsum = torch.zeros((self.cap, B, k), dtype=torch.float64, device=device)
        self.logs = torch.zeros_like(self.logsum)

    def want(self, block: int) -> bool:
        if block % self.stride:
            return False
        if self.n >= self.max:
            keep = slice(1, self.n, 2)
            m = len(range(*keep.indices(self.n)))
            self.logsum[:m] = self.logsum[keep].clone()
            self.logs[:m] = self.logs[keep].clone()
            self.steps, self.acc = self.steps[keep], self.acc[keep]
            self.lengths = self.lengths[keep]
            self.n = m
            self.stride *= 2
            if block % self.stride:
                return False
        return True

    def add(self, step: int, acc_steps: int, length: int, logsum: Any, logs: Any) -> None:
        torch = _torch()
        if self.n == self.cap:  # grow geometrically up to max_records
            self.cap = min(self.max, 2 * self.cap)
            pad = self.cap - self.logsum.shape[0]
            z = torch.zeros(
                (pad, *self.logsum.shape[1:]), dtype=torch.float64, device=self.logsum.device
            )
            self.logsum = torch.cat([self.logsum, z])
            self.logs = torch.cat([self.logs, z])
        self.logsum[self.n] = logsum
        self.logs[self.n] = logs
        self.steps.append(step)
        self.acc.append(acc_steps)
        self.lengths.append(length)
        self.n += 1

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(running, block_rates, record_steps) as numpy arrays."""
        n = self.n
        acc = np.asarray(self.acc, dtype=np.float64)[:, None, None]
        length = np.asarray(self.lengths, dtype=np.float64)[:, None, None]
        return (
            self.logsum[:n].cpu().numpy() / acc,
            self.logs[:n].cpu().numpy() / length,
            np.asarray(self.steps, dtype=np.int64),
        )


class _FirstBad:
    """The first QR block (1-based) whose check value is NaN or +inf, found without a host
    synchronisation per block: the values are kept as they come and reduced on the device
    every 1024 blocks (so memory does not grow with the stream); read once at the end."""

    _CHUNK = 1024

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.found: list[Any] = []  # per reduced chunk: its first bad block, or a large value
        self.done = 0

    def add(self, chk: Any) -> None:
        self.pending.append(chk)
        if len(self.pending) == self._CHUNK:
            self._reduce()

    def _reduce(self) -> None:
        torch = _torch()
        v = torch.stack(self.pending)
        bad = (v != v) | (v == math.inf)
        idx = torch.arange(1, v.numel() + 1, device=v.device) + self.done
        big = torch.iinfo(torch.int64).max
        self.found.append(torch.where(bad, idx, big).amin())
        self.done += v.numel()
        self.pending = []

    def first(self) -> int:
        """The first bad block, -1 if none."""
        if self.pending:
            self._reduce()
        if not self.found:
            return -1
        first = int(_torch().stack(self.found).amin())
        return -1 if first == _torch().iinfo(_torch().int64).max else first


def lyapunov(
    cell: Any,
    x: Any,
    *,
    h0: Any = None,
    k: int | None = None,
    burn_in: int = 0,
    qr_every: int = 1,
    dtype: Any = None,
    seed: int = 0,
    max_records: int = 10_000,
    num_threads: int | None = None,
    progress: ProgressCallback | None = None,
    compile: bool = False,
    trace: bool = True,
) -> LyapunovSpectrum:
    """Top-k Lyapunov exponents of a recurrent step written in PyTorch, by the QR method.

    Each batch element follows ``h_{t+1} = step(h_t, x_t)`` with k tangent vectors
    ``V_{t+1} = J_t V_t`` (``J_t = d h_{t+1} / d h_t``, the state flattened per sample and a
    tuple state's components concatenated in order). A step pushes the k tangents through
    ``torch.func.jvp`` under ``vmap`` (the Jacobian is never formed); every ``qr_every`` steps
    the tangent block of each sample, ``(D, k)``, is re-orthonormalised by Householder QR
    (``torch.linalg.qr``, batched) and ``log|diag R|`` accumulated in float64 on the device.
    The options and the result are those of :func:`vgcore.lyapunov` (same initial tangents for
    the same ``seed``, same burn-in, block and record rules), so a stock cell gives the native
    model's exponents.

    Parameters
    ----------
    cell : TorchCell, torch.nn.Module or callable
        A module or callable is wrapped as ``TorchCell(cell)``.
    x : tensor or array of shape (T, B, input_size), or an iterable of such chunks
        Time-major inputs; an iterable (e.g. a generator) is fed chunk by chunk so memory
        does not grow with T. Moved to the cell's device and dtype.
    h0 : tensor or tuple of tensors, optional
        Initial state ``(B, *s)`` per component (default: the cell's ``h0``, else zeros).
    k : int, optional
        Number of exponents, 1 <= k <= D (default D).
    burn_in, qr_every, seed, max_records :
        As in :func:`vgcore.lyapunov`: accumulation starts at the first re-orthonormalisation
        at or after step ``burn_in``; the initial tangents are
        ``numpy.random.default_rng(seed).standard_normal((B, k, D))``, orthonormalised.
    dtype : float32 or float64, optional
        Computation dtype (default: the cell's); logs are always accumulated in float64.
    num_threads : int, optional
        Accepted for compatibility with :func:`vgcore.lyapunov`; torch's own thread setting
        applies (``torch.set_num_threads``).
    progress : callable(done, total), optional
        Called at most every 0.1 s from the host loop (which never waits for the device);
        ``total`` is 0 while a stream's length is unknown, a last call ``(steps, steps)``.
    compile : bool
        Run the tangent step and the QR through ``torch.compile`` (``dynamic=False``): it
        removes most of the per-operation overhead of ``jvp`` / ``vmap`` (about 4x on a
        GRUCell of 256 units, CPU), at a one-off compilation of some seconds per cell, dtype
        and shape (reused by later calls on the same module). Worth it for long sequences or
        repeated analyses. The step must be traceable by ``torch.compile``.
    trace : bool
        Without ``compile``: run the tangent step as one graph of aten operations, traced
        once per cell, dtype and shape with ``make_fx`` on fake tensors (about a second;
        reused by later calls, the module's parameters and buffers are its inputs) and
        simplified (no functorch wrappers per operation, no work on the weights' zero
        tangents): about 4x faster on a GRUCell of 256 units (CPU). Checked against the
        eager step on the first step of every call; a step that cannot be traced (control
        flow on tensor values), that changes its modules' attributes while traced, or that
        disagrees runs eagerly. A traced plain callable must be a pure function of its
        inputs and the tensors it reads. False: always eager.

    Returns
    -------
    LyapunovSpectrum
        ``model`` is the TorchCell, ``kind`` ``"torch_cell"``, ``final_state`` ``(B, D)``.

    Raises
    ------
    ValueError, TypeError
        Bad input, naming the argument (``x``, ``h0``, ``k``, ...), or a step that returns a
        state of another structure or shape (``step``).
    FloatingPointError
        When the state or the tangent vectors become NaN/Inf (naming the QR block's step).
    """
    torch = _torch()
    c = _as_cell(cell)
    if dtype is not None and _torch_dtype(dtype) != c.torch_dtype:
        c = c.astype(dtype)
    c.validate()
    qr_every = check_positive_int(qr_every, "qr_every")
    burn_in = _check_nonneg_int(burn_in, "burn_in")
    max_records = check_positive_int(max_records, "max_records", minimum=2)
    rng = np.random.default_rng(check_int_seed(seed))
    report = _Progress(progress)
    chunks, whole = _chunks(x)
    if num_threads is not None:
        check_positive_int(num_threads, "num_threads")
    compile = _check_bool(compile, "compile")
    trace = _check_bool(trace, "trace")
    with c._session() as run, torch.no_grad():
        jvp, vmap = torch.func.jvp, torch.func.vmap
        call = run.call
        input_size = c._input_size
        state: Any = None
        layout: _Layout | None = None
        total = 0
        steps = acc_steps = acc_blocks = since_qr = 0
        V = logsum = book = None
        watch: _FirstBad | None = None
        kk = 0

        push: Callable[[Any, Any, Any], tuple[Any, Any]] | None = None

        def make_push(lay: _Layout) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
            def push(h: Any, xt: Any, V: Any) -> tuple[Any, Any]:
                def F(hf: Any) -> Any:
                    return lay.flat(call(lay.unflat(hf), xt))

                def one(v: Any) -> Any:
                    return jvp(F, (h,), (v,))

                return vmap(one, in_dims=-1, out_dims=(None, -1))(V)  # type: ignore[no-any-return]

            return torch.compile(push, dynamic=False) if compile else push

        def qr_update(V: Any, state: Any, logsum: Any, accumulate: bool) -> tuple[Any, ...]:
            # One QR block on the device: re-orthonormalise, log|diag R| in float64, and a
            # value that is NaN or +inf exactly when a log is NaN or +inf or the state is not
            # finite (a -inf log, an exactly zero diagonal entry, is allowed): no host sync.
            Q, R = torch.linalg.qr(V)
            logs = torch.log(R.diagonal(dim1=-2, dim2=-1).abs().to(torch.float64))
            chk = logs.sum() + state.abs().amax() * 0
            if accumulate:
                logsum = logsum + logs
            return Q, logs, logsum, chk

        qr = torch.compile(qr_update, dynamic=False) if compile else qr_update

        def qr_block(length: int) -> None:
            nonlocal V, logsum, acc_blocks, acc_steps
            assert book is not None and watch is not None
            accumulate = steps - length >= burn_in
            V, logs, logsum, chk = qr(V, state, logsum, accumulate)
            watch.add(chk)
            if not accumulate:
                return
            acc_blocks += 1
            acc_steps += length
            if book.want(acc_blocks):
                book.add(steps, acc_steps, length, logsum, logs)

        for i, chunk in enumerate(chunks):
            name = "x" if whole else f"x chunk {i}"
            xc = _as_input(chunk, name, c, run, input_size)
            if whole:
                total = int(xc.shape[0])
                if total == 0:
                    raise ValueError(
                        f"x is an empty sequence (T = 0, shape {tuple(xc.shape)}); at least one "
                        "step is needed"
                    )
            if state is None:
                input_size = int(xc.shape[2])
                B = int(xc.shape[1])
                comps, shapes = _initial_state(c, h0, B, run)
                layout = _Layout(shapes)
                push = make_push(layout)
                D = layout.D
                kk = D if k is None else check_positive_int(k, "k")
                if kk > D:
                    raise ValueError(f"k = {kk} exceeds the state dimension D = {D} of {c.name}")
                if xc.shape[0] == 0:
                    continue
                _check_step_output(call(comps, xc[0]), comps, c, run)
                state = layout.flat(comps)
                v0 = rng.standard_normal((B, kk, D)).astype(_np_dtype(run.dtype))
                V0 = torch.from_numpy(v0).to(run.device).transpose(1, 2)  # (B, D, k)
                V, R0 = torch.linalg.qr(V0)
                d0 = R0.diagonal(dim1=-2, dim2=-1)
                if not bool((torch.isfinite(d0) & (d0 != 0)).all()):
                    raise ValueError("the initial tangent vectors are linearly dependent")
                if trace and not compile:
                    push = _traced_push(c, run, layout, push, state, xc[0], V)
                logsum = torch.zeros((B, kk), dtype=torch.float64, device=run.device)
                book = _RecordBook(max_records, B, kk, run.device)
                watch = _FirstBad()
            elif xc.shape[1] != state.shape[0]:
                raise ValueError(
                    f"{name} has batch size {xc.shape[1]}, but earlier chunks had {state.shape[0]}"
                )
            for xt in xc.unbind(0):
                state, V = push(state, xt, V)  # type: ignore[misc]
                steps += 1
                since_qr += 1
                if since_qr == qr_every:
                    since_qr = 0
                    qr_block(qr_every)
                report(steps, total)
        if state is None or steps == 0:
            raise ValueError("x is an empty sequence (no steps); at least one step is needed")
        if since_qr:  # a partial block: every step taken is accounted for
            qr_block(since_qr)
        assert book is not None and logsum is not None and watch is not None
        bad_block = watch.first()
        if bad_block >= 0:  # every block has qr_every steps but a last partial one
            bad = min(bad_block * qr_every, steps)
            raise FloatingPointError(
                f"the state or the tangent vectors became NaN/Inf by step {bad}; with "
                "qr_every > 1 they may have over- or underflowed between re-orthonormalisations"
            )
        report.end(steps)
        if acc_steps == 0:
            raise ValueError(
                f"burn_in = {burn_in} leaves no steps to average over: the input has {steps} steps"
            )
        growth = (logsum / acc_steps).cpu().numpy()
        running, block_rates, record_steps = book.result()
        return LyapunovSpectrum(
            model=c,
            kind=c.kind,
            dtype=_np_dtype(run.dtype),
            k=kk,
            state_dim=layout.D if layout else 0,
            burn_in=burn_in,
            qr_every=qr_every,
            steps=steps,
            accumulated_steps=acc_steps,
            exponents=-np.sort(-growth, axis=1),
            running=running,
            block_rates=block_rates,
            record_steps=record_steps,
            final_state=state.cpu().numpy(),
        )


#: Traced tangent steps per step object (module or callable), by dtype, device and shapes.
_TRACED: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


def _traced_push(
    c: TorchCell, run: _Runner, lay: _Layout, eager: Any, h: Any, xt: Any, V: Any
) -> Any:
    """The tangent step ``(h, x_t, V) -> (h', J V)`` as a traced aten graph
    (:mod:`vgcore.torchmodel._trace`), or ``eager`` where the step cannot be traced or the
    graph does not reproduce the eager step on ``(h, xt, V)``."""
    torch = _torch()
    from vgcore.torchmodel import _trace

    mod = run.module
    names: list[str] = []
    tensors: list[Any] = []
    if mod is not None:  # parameters and buffers are inputs of the graph: read every call
        for n, t in (*mod.named_parameters(), *mod.named_buffers()):
            names.append(n)
            tensors.append(t.detach())
    tup, first = c.tuple_state, c.signature == "input_first"
    fn = c.step

    def fpush(ts: list[Any], h: Any, xt: Any, V: Any) -> Any:
        def call(state: tuple[Any, ...], x: Any) -> tuple[Any, ...]:
            s = state if tup else state[0]
            args = (x, s) if first else (s, x)
            if mod is not None:
                out = torch.func.functional_call(mod, dict(zip(names, ts)), args)
            else:
                out = fn(*args)
            return tuple(out) if isinstance(out, (tuple, list)) else (out,)

        def F(hf: Any) -> Any:
            return lay.flat(call(lay.unflat(hf), xt))

        def one(v: Any) -> Any:
            return torch.func.jvp(F, (h,), (v,))

        return torch.func.vmap(one, in_dims=-1, out_dims=(None, -1))(V)

    owner = c.module if c.module is not None else c.step
    key = (
        run.dtype,
        str(run.device),
        tuple(h.shape),
        tuple(xt.shape),
        tuple(V.shape),
        lay.shapes,
        tup,
        first,
        tuple(names),
        tuple((tuple(t.shape), t.dtype) for t in tensors),
    )
    try:
        cache = _TRACED.setdefault(owner, {})
    except TypeError:  # not weakly referenceable: trace every call
        cache = {}
    gm = cache.get(key)
    if gm is None:
        # A step that changes its modules' Python attributes (a call counter, a cache) has
        # effects a graph would run once: it keeps the eager path.
        mods = list(mod.modules()) if mod is not None else []
        before = [dict(vars(m)) for m in mods]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gm = _trace.trace_tangent_step(fpush, tensors, h, xt, V)
                gm.graph._codegen = torch.fx.graph.CodeGen()  # flat arguments: no pytree
                gm.recompile()
        except Exception:
            gm = False  # untraceable: eager from now on
        for m, attrs in zip(mods, before):
            now = vars(m)
            if now.keys() != attrs.keys() or any(now[k] is not v for k, v in attrs.items()):
                gm = False
                for k in [k for k in now if k not in attrs]:
                    del m.__dict__[k]
                m.__dict__.update(attrs)  # what the trace changed, as it was
        cache[key] = gm
    if not isinstance(gm, torch.fx.GraphModule):
        return eager
    run_graph = gm.forward  # (not through nn.Module.__call__: no hooks on a private graph)

    def push(h: Any, xt: Any, V: Any) -> tuple[Any, Any]:
        return run_graph(*tensors, h, xt, V)  # type: ignore[no-any-return]

    try:
        got = push(h, xt, V)
    except Exception:
        cache[key] = False
        return eager
    ref = eager(h, xt, V)
    eps = torch.finfo(run.dtype).eps
    for a, b in zip(got, ref):
        scale = b.abs().amax() if b.numel() else 0
        if a.shape != b.shape or not bool(((a - b).abs() <= 1e3 * eps * (scale + 1e-30)).all()):
            return eager  # the graph no longer matches the step (changed attributes?)
    return push


def _check_nonneg_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


# -- gradient flow through time -------------------------------------------------------------


def gradient_flow(
    cell: Any,
    x: Any,
    *,
    h0: Any = None,
    cotangent: Any = None,
    loss_fn: Callable[[Any], Any] | None = None,
    dtype: Any = None,
    param_grads: bool = False,
    keep_grads: bool = False,
    keep_states: bool = False,
    input_grads: bool = True,
    rescale: bool = True,
    progress: ProgressCallback | None = None,
) -> GradientFlow:
    """Gradient norms through time of a recurrent step written in PyTorch.

    A forward pass records each step's graph on its own (the state entering a step is a fresh
    leaf), then backpropagation runs step by step from ``h_T`` to ``h_0`` with
    ``torch.autograd.grad``. Between steps the cotangent is rescaled by the exact power of two
    that brings its largest entry into [0.5, 1), the exponents being summed in float64 on the
    device, so ``log ||dL/dh_t||`` stays finite and exact where the gradient itself under- or
    overflows the dtype (a float32 gradient of 1e-300 is measured, not rounded to 0).

    Parameters
    ----------
    cell : TorchCell, torch.nn.Module or callable
        A module or callable is wrapped as ``TorchCell(cell)``.
    x : tensor or array of shape (T, B, input_size)
        Time-major inputs.
    h0 : tensor or tuple of tensors, optional
        Initial state (default: the cell's ``h0``, else zeros).
    cotangent : tensor or array, optional
        ``dL/dh_T`` of shape (B, *s_0) for the first state component (``h``), a tuple with
        one entry per component (``(dL/dh_T, dL/dc_T)``), or a sequence loss
        ``(T, B, *s_0)``: ``cotangent[t]`` is ``dL/dh_{t+1}`` (every step's output).
    loss_fn : callable(final_state) -> scalar tensor, optional
        A loss of the final state (a tensor, or the tuple the step returns), e.g.
        ``lambda h: F.cross_entropy(head(h), y)``; its gradient is the cotangent.
        Default (neither given): ``L = 0.5 * ||h_T||^2`` summed over the batch, ``h_T`` the
        first component of the final state.
    dtype : float32 or float64, optional
        Computation dtype (default: the cell's).
    param_grads : bool
        Also ``log ||dL/dtheta||`` per parameter of the module, summed over the steps
        (``log_param_grad_norms``, keyed by parameter name; a stock cell's are
        ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` as for the native models).
        Accumulated in log scale too. Needs a module step.
    keep_grads, keep_states : bool
        Return ``dL/dh_t`` / the states, ``(T+1, B, n_0)`` arrays of the first component
        flattened per sample (``grads``, ``states``) and of the other components
        concatenated (``cell_grads``, ``cell_states``, ``(T+1, B, D - n_0)``). Kept gradients
        are the true values rounded to the dtype (0 below its range); the logs stay exact.
    input_grads : bool
        Also ``log ||dL/dx_t||`` (``log_input_grad_norms``, shape (T,)).
    rescale : bool
        False computes the plain product as autograd does (float32 gradients below 1e-38
        underflow to zeros, whose logs are -inf); for comparisons.
    progress : callable(done, total), optional
        Called at most every 0.1 s; done counts the forward then the backward steps
        (total ``2 T``).

    Returns
    -------
    GradientFlow
        ``log_grad_norms`` (T+1,): ``log ||dL/dh_t||`` of the first component (natural log,
        Frobenius norm over the batch); ``log_cell_grad_norms`` (T+1,), for a tuple state:
        the norm over the other components together (an LSTM's ``c``); ``act_mean``,
        ``act_std`` (T,) of each step's first component; ``output`` ``h_T`` (B, n_0).
        ``saturation`` is NaN and ``low_derivative`` None: the units of an arbitrary step
        are not known. Axis ``"step"``.

    Raises
    ------
    ValueError, TypeError
        Bad input, naming the argument.
    FloatingPointError
        When the forward pass produces NaN/Inf (naming the step) or a gradient norm is NaN.
    """
    torch = _torch()
    c = _as_cell(cell)
    if dtype is not None and _torch_dtype(dtype) != c.torch_dtype:
        c = c.astype(dtype)
    c.validate()
    param_grads = _check_bool(param_grads, "param_grads")
    keep_grads = _check_bool(keep_grads, "keep_grads")
    keep_states = _check_bool(keep_states, "keep_states")
    input_grads = _check_bool(input_grads, "input_grads")
    rescale = _check_bool(rescale, "rescale")
    if cotangent is not None and loss_fn is not None:
        raise ValueError("give cotangent or loss_fn, not both")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable(final_state) -> scalar, got {loss_fn!r}")
    report = _Progress(progress)
    with c._session(param_leaves=param_grads) as run:
        xa = _as_input(x, "x", c, run, c._input_size)
        T, B = int(xa.shape[0]), int(xa.shape[1])
        if T == 0:
            raise ValueError(f"x is an empty sequence (T = 0, shape {tuple(xa.shape)})")
        comps, shapes = _initial_state(c, h0, B, run)
        layout = _Layout(shapes)
        nc = len(comps)
        f64 = torch.float64
        dev = run.device
        seq_cot = _check_cotangent(cotangent, T, B, shapes, run)
        pnames = list(run.params)
        pleaves = [run.params[n] for n in pnames]

        # forward: one graph per step, each entered through fresh leaves
        ins: list[tuple[Any, ...]] = []
        outs: list[tuple[Any, ...]] = []
        xs: list[Any] = []
        act_mean = torch.empty(T, dtype=f64, device=dev)
        act_std = torch.empty(T, dtype=f64, device=dev)
        states = [layout.flat(comps).detach()] if keep_states else None
        s = comps
        with torch.enable_grad():
            for t in range(T):
                leaves = tuple(v.detach().requires_grad_(True) for v in s)
                xt = xa[t].detach().requires_grad_(input_grads)
                out = run.call(leaves, xt)
                if t == 0:
                    _check_step_output(out, leaves, c, run)
                ins.append(leaves)
                outs.append(out)
                xs.append(xt)
                h = out[0].detach()
                sd, mu = torch.std_mean(h.to(f64), correction=0)
                act_mean[t] = mu
                act_std[t] = sd
                if states is not None:
                    states.append(layout.flat(tuple(o.detach() for o in out)))
                s = out
                report(t + 1, 2 * T)
            final = tuple(o.detach() for o in outs[-1])
            # cotangent at h_T
            if loss_fn is not None:
                fl = tuple(v.clone().requires_grad_(True) for v in final)
                L = loss_fn(fl if c.tuple_state else fl[0])
                if not (isinstance(L, torch.Tensor) and L.numel() == 1):
                    raise TypeError(
                        f"loss_fn must return a scalar tensor, got {type(L).__name__}"
                        + (f" of shape {tuple(L.shape)}" if isinstance(L, torch.Tensor) else "")
                    )
                got = torch.autograd.grad(L.reshape(()), fl, allow_unused=True)
                g = tuple(
                    torch.zeros_like(v) if gi is None else gi.detach() for v, gi in zip(final, got)
                )
            elif cotangent is None:
                g = (final[0], *(torch.zeros_like(v) for v in final[1:]))
            elif seq_cot is not None:
                g = (seq_cot[T - 1], *(torch.zeros_like(v) for v in final[1:]))
            else:
                g = _tuple_cotangent(cotangent, final, shapes, run)
        nonfinite = ~torch.isfinite(act_mean)
        zero = torch.zeros((), dtype=torch.int64, device=dev)
        if rescale:
            g_list, E = _normalise(g)
            g = tuple(g_list)
        else:
            E = zero
        log_h = torch.empty(T + 1, dtype=f64, device=dev)
        log_rest = torch.empty(T + 1, dtype=f64, device=dev) if nc > 1 else None
        log_x = torch.empty(T, dtype=f64, device=dev) if input_grads else None
        kept: list[Any] | None = [] if keep_grads else None
        pacc = [torch.zeros_like(p) for p in pleaves]
        pexp = [torch.full((), -(1 << 40), dtype=torch.int64, device=dev) for _ in pleaves]

        def record(i: int, g: tuple[Any, ...], E: Any) -> None:
            shift = E.to(f64) * _LN2
            log_h[i] = torch.log(torch.linalg.vector_norm(g[0], dtype=f64)) + shift
            if log_rest is not None:
                sq = sum(torch.linalg.vector_norm(v, dtype=f64) ** 2 for v in g[1:])
                log_rest[i] = 0.5 * torch.log(sq) + shift
            if kept is not None:
                kept.append(_ldexp(layout.flat(g).detach(), E))

        record(T, g, E)
        for t in range(T, 0, -1):
            inputs = [*ins[t - 1], *([xs[t - 1]] if input_grads else []), *pleaves]
            got = torch.autograd.grad(outs[t - 1], inputs, grad_outputs=g, allow_unused=True)
            ins[t - 1] = outs[t - 1] = ()  # free this step's graph
            gp = tuple(torch.zeros_like(v) if gi is None else gi for v, gi in zip(final, got[:nc]))
            j = nc
            if log_x is not None:
                gx = got[j]
                j += 1
                nx = (
                    torch.zeros((), dtype=f64, device=dev)
                    if gx is None
                    else torch.linalg.vector_norm(gx, dtype=f64)
                )
                log_x[t - 1] = torch.log(nx) + E.to(f64) * _LN2
            for q, gq in enumerate(got[j:]):
                if gq is None:
                    continue
                Eq = torch.maximum(pexp[q], E)
                acc = _ldexp(pacc[q], pexp[q] - Eq) + _ldexp(gq, E - Eq)
                (acc,), e = _normalise([acc])
                pacc[q], pexp[q] = acc, Eq + e
            if seq_cot is not None and t >= 2:  # dL/dh_{t-1} directly from the loss
                extra = seq_cot[t - 2]
                if rescale:
                    (ex,), e2 = _normalise([extra])
                    Eb = torch.maximum(E, e2)
                    gp = (
                        _ldexp(gp[0], E - Eb) + _ldexp(ex, e2 - Eb),
                        *(_ldexp(v, E - Eb) for v in gp[1:]),
                    )
                    E = Eb
                else:
                    gp = (gp[0] + extra, *gp[1:])
            if rescale:
                g_list, e = _normalise(gp)
                g, E = tuple(g_list), E + e
            else:
                g = gp
            record(t - 1, g, E)
            report(2 * T - t + 1, 2 * T)
        # one transfer of everything to the host
        bad_fwd = nonfinite.nonzero()
        first_bad = int(bad_fwd[0, 0]) + 1 if bad_fwd.numel() else 0
        if first_bad:
            raise FloatingPointError(
                f"the forward pass produced NaN/Inf at step {first_bad} (of {T}); the weights or "
                "inputs are too large for the dtype"
            )
        lh = log_h.cpu().numpy()
        lr = None if log_rest is None else log_rest.cpu().numpy()
        for key, arr in (("log_grad_norms", lh), ("log_cell_grad_norms", lr)):
            if arr is None:
                continue
            idx = np.nonzero(np.isnan(arr) | (arr == np.inf))[0]
            if idx.size:
                i = int(idx[-1])
                raise FloatingPointError(
                    f"the backward pass produced a non-finite gradient norm at step {i} "
                    f"({key}[{i}] = {arr[i]}, the first one going backwards from step {T}); the "
                    "weights or inputs are too large for the dtype"
                )
        pg = None
        if param_grads:
            pg = {}
            for n, a, e in zip(pnames, pacc, pexp):
                nrm = torch.linalg.vector_norm(a, dtype=f64)
                pg[n] = float(torch.log(nrm) + e.to(f64) * _LN2) if float(nrm) > 0 else -math.inf
        n0 = layout.sizes[0]
        grads = cell_grads = st = cst = None
        if kept is not None:
            kg = torch.stack(kept[::-1]).cpu().numpy()  # recorded from T down to 0
            grads, cell_grads = kg[..., :n0], (kg[..., n0:] if nc > 1 else None)
        if states is not None:
            ks = torch.stack(states).cpu().numpy()
            st, cst = ks[..., :n0], (ks[..., n0:] if nc > 1 else None)
        report.end(2 * T)
        return GradientFlow(
            model=c,
            kind=c.kind,
            dtype=_np_dtype(run.dtype),
            batch_size=B,
            log_grad_norms=lh,
            act_mean=act_mean.cpu().numpy(),
            act_std=act_std.cpu().numpy(),
            saturation=np.full(T, np.nan),
            output=final[0].reshape(B, -1).cpu().numpy(),
            log_cell_grad_norms=lr,
            log_param_grad_norms=pg,
            grads=grads,
            cell_grads=cell_grads,
            states=st,
            cell_states=cst,
            low_derivative=[None] * T,
            log_input_grad_norms=None if log_x is None else log_x.cpu().numpy(),
        )


def _as_tensor(v: Any, name: str, run: _Runner) -> Any:
    torch = _torch()
    if isinstance(v, np.ndarray):
        v = torch.from_numpy(v)
    if not isinstance(v, torch.Tensor) or not v.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor or array, got {type(v).__name__}")
    return v.detach().to(device=run.device, dtype=run.dtype)


def _check_cotangent(
    cotangent: Any, T: int, B: int, shapes: tuple[tuple[int, ...], ...], run: _Runner
) -> Any:
    """A sequence cotangent (T, B, *s_0) as a tensor, or None (no cotangent or a final one)."""
    if cotangent is None or isinstance(cotangent, (tuple, list)):
        return None
    v = _as_tensor(cotangent, "cotangent", run)
    s0 = shapes[0]
    if tuple(v.shape) == (B, *s0):
        return None
    if tuple(v.shape) != (T, B, *s0):
        raise ValueError(
            f"cotangent must have shape {_shape_str((B, *s0))} (dL/dh_T) or "
            f"{_shape_str((T, B, *s0))} (dL/dh_t for every step), got {tuple(v.shape)}"
        )
    return v


def _tuple_cotangent(
    cotangent: Any, final: tuple[Any, ...], shapes: tuple[tuple[int, ...], ...], run: _Runner
) -> tuple[Any, ...]:
    """``dL/dstate_T``: a tensor for the first component (others zero) or one per component."""
    torch = _torch()
    if isinstance(cotangent, (tuple, list)):
        if len(cotangent) != len(final):
            raise ValueError(
                f"cotangent has {len(cotangent)} entries, the state has {len(final)} components"
            )
        out = []
        for i, (v, f) in enumerate(zip(cotangent, final)):
            a = _as_tensor(v, f"cotangent[{i}]", run)
            if a.shape != f.shape:
                raise ValueError(
                    f"cotangent[{i}] must have shape {tuple(f.shape)}, got {tuple(a.shape)}"
                )
            out.append(a)
        return tuple(out)
    a = _as_tensor(cotangent, "cotangent", run)
    return (a, *(torch.zeros_like(v) for v in final[1:]))


register_model_kind(
    TorchCell,
    torch_classes=("RNNCell", "GRUCell", "LSTMCell"),
    description="a recurrent step written in torch (module or callable), analysed through time",
    backend="torch",
)

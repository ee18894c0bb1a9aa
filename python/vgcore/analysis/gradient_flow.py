"""Per-layer and per-time-step gradient norms (backpropagation through depth or time)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vgcore._loader import _core
from vgcore._runtime import resolve_threads
from vgcore._validation import as_float_array, check_memory, resolve_dtype
from vgcore.activations import Activation
from vgcore.analysis import _torch
from vgcore.analysis._generic_flow import generic_flow
from vgcore.analysis._layout import output_cotangent, time_major
from vgcore.models import MLP, Model, RecurrentModel
from vgcore.models.base import narrow
from vgcore.models.registry import model_kinds

__all__ = ["GradientFlow", "gradient_flow"]

ProgressCallback = Callable[[int, int], Any]
#: Parameter kinds the core reports per MLP layer, in its order; a result keeps the kinds the
#: model has (NaN for the layers of a mixed stack that lack one).
MLP_PARAM_KINDS = ("weight", "bias", "norm_weight", "norm_bias", "gate_weight", "gate_bias")
RECURRENT_PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_LN10 = math.log(10.0)


def param_kinds(model: Model) -> tuple[str, ...]:
    """The parameter kinds ``model`` has, as keys of ``param_grad_norms`` (asks
    ``model.parameters()``: an MLP's ``layers.{i}.norm.weight`` is the kind ``norm_weight``)."""
    names = model.parameters()
    if model.axis == "depth":  # per-layer kinds: layers.{i}.norm.weight -> norm_weight
        have = {k.split(".", 2)[2].replace(".", "_") for k in names}
        return tuple(k for k in MLP_PARAM_KINDS if k in have)
    # torch names: weight_ih, or weight_ih_l0[_reverse] for stacked and bidirectional models
    have = {k.split("_l")[0] for k in names}
    return tuple(k for k in RECURRENT_PARAM_KINDS if k in have)


@dataclass(repr=False)
class GradientFlow:
    """Result of :func:`gradient_flow`.

    Index ``i`` of the state arrays refers to ``h_i``: for an MLP ``h_0 = x`` and ``h_L`` the
    output; for a recurrent model ``h_0`` the initial state and ``h_T`` the last one. Step
    arrays (activation statistics) have one entry per layer / time step, for ``h_1..``.

    Units: every ``log_*`` name is a natural log; every ``log10_*`` name is in decades (the
    unit of the printouts, reports and tables: ``10^x``).

    Attributes
    ----------
    log_grad_norms : ndarray of shape (L+1,) or (T+1,)
        ``log ||dL/dh_i||`` (natural log, Frobenius norm over the batch); finite even when
        the norm itself under- or overflows. ``log10_grad_norms``: the same in decades.
    log_cell_grad_norms : ndarray of shape (T+1,) or None
        LSTM only: ``log ||dL/dc_t||`` (natural log; ``log10_cell_grad_norms`` in decades).
    act_mean, act_std : ndarray of shape (L,) or (T,)
        Mean and standard deviation of each layer's / step's output ``h``.
    saturation : ndarray of shape (L,) or (T,)
        Fraction of units with ``|phi'(z)|`` below ``saturation_threshold`` times its
        maximum (for gated cells: over all gate units), whatever the activation. Split by
        what such a unit is (see ``low_derivative``): ``saturated`` (tanh, sigmoid, gates)
        and ``inactive`` (a ReLU-family unit switched off).
    low_derivative : list of (str or None)
        Per layer / step: "saturated", "inactive" or None (identity), from the activation
        registry (:attr:`vgcore.Activation.low_derivative`); gates are "saturated".
    dead : ndarray of shape (L,) or (T,), or None
        With ``dead_units=True``: fraction of units inactive for every sample in the batch
        (ReLU-family layers; 0 elsewhere).
    gate_saturation : ndarray of shape (T, G) or None
        Gated cells: the same fraction per gate (LSTM i, f, g, o; GRU r, z, n).
    param_grad_norms : dict or None
        With ``param_grads=True``, one entry per parameter kind the model has (see
        :func:`param_kinds`): MLP ``"weight"``, ``"bias"``, ``"norm_weight"``, ``"norm_bias"``,
        ``"gate_weight"``, ``"gate_bias"`` (arrays of shape (L,), NaN for the layers of a mixed
        stack that lack the kind); recurrent ``"weight_ih"``, ``"weight_hh"``, ``"bias_ih"``,
        ``"bias_hh"`` (floats). ``log_param_grad_norms`` (natural log) and
        ``log10_param_grad_norms`` (decades) hold their logs.
    grads : list of ndarray / ndarray or None
        With ``keep_grads=True``: ``dL/dh_i`` (MLP: a list of (B, width_i) arrays;
        recurrent: one (T+1, B, N) array). ``cell_grads`` likewise for LSTM.
    output : ndarray
        ``y`` (MLP, (B, out)) or ``h_T`` (recurrent, (B, N)); stacked or bidirectional:
        ``output[T-1]`` of the top layer, (B, D*N).
    log_input_grad_norms : ndarray of shape (T,) or None
        Recurrent models with ``input_grads`` (default for stacked ones): ``log ||dL/dx_t||``.
    block_names : list of str or None
        A torch module (:class:`vgcore.TorchModel`): the names of its blocks 1..L; they index
        :meth:`to_pandas` (``"input"`` for ``h_0``).
    notes : tuple of str
        Notes on this analysis (e.g. a half-precision module analysed in float32), printed
        with the model's.

    Stacked and bidirectional recurrent models have a (layer, time) grid of each per-state and
    per-step array; see :func:`gradient_flow`.
    """

    model: Model
    kind: str
    dtype: np.dtype
    batch_size: int
    log_grad_norms: np.ndarray
    act_mean: np.ndarray
    act_std: np.ndarray
    saturation: np.ndarray
    output: np.ndarray
    log_cell_grad_norms: np.ndarray | None = None
    gate_saturation: np.ndarray | None = None
    log_param_grad_norms: dict[str, Any] | None = None
    grads: Any = None
    cell_grads: np.ndarray | None = None
    states: np.ndarray | None = None
    cell_states: np.ndarray | None = None
    clip: dict[str, Any] | None = field(default=None)
    log_clipped_param_grad_norms: dict[str, Any] | None = field(default=None)
    low_derivative: list[str | None] = field(default_factory=list)
    dead: np.ndarray | None = None
    log_input_grad_norms: np.ndarray | None = None
    block_names: list[str] | None = None
    notes: tuple[str, ...] = ()

    # -- derived views ------------------------------------------------------------------
    @property
    def axis(self) -> str:
        """ "layer" for an MLP, "step" for a recurrent model, "block" for a torch module."""
        if self.kind == "torch":
            return "block"
        return "layer" if self.kind == "mlp" else "step"

    @property
    def grad_norms(self) -> np.ndarray:
        """``||dL/dh_i||`` (0 or inf where the value leaves the float64 range)."""
        with np.errstate(over="ignore", under="ignore"):
            return np.exp(self.log_grad_norms)

    @property
    def cell_grad_norms(self) -> np.ndarray | None:
        if self.log_cell_grad_norms is None:
            return None
        with np.errstate(over="ignore", under="ignore"):
            return np.exp(self.log_cell_grad_norms)

    @property
    def param_grad_norms(self) -> dict[str, Any] | None:
        if self.log_param_grad_norms is None:
            return None
        with np.errstate(over="ignore", under="ignore"):
            return {
                k: (
                    np.exp(v)
                    if isinstance(v, np.ndarray)
                    else math.exp(v)
                    if math.isfinite(v)
                    else (0.0 if v < 0 else v)
                )
                for k, v in self.log_param_grad_norms.items()
            }

    @property
    def clipped_param_grad_norms(self) -> dict[str, Any] | None:
        """Parameter-gradient norms after ``clip_norm`` clipping (None without clipping)."""
        if self.log_clipped_param_grad_norms is None:
            return None
        with np.errstate(over="ignore", under="ignore"):
            return {k: np.exp(v) for k, v in self.log_clipped_param_grad_norms.items()}

    @property
    def log10_grad_norms(self) -> np.ndarray:
        """``log10 ||dL/dh_i||``: ``log_grad_norms`` in decades."""
        return self.log_grad_norms / _LN10

    @property
    def log10_cell_grad_norms(self) -> np.ndarray | None:
        """``log10 ||dL/dc_t||`` (LSTM): ``log_cell_grad_norms`` in decades."""
        return None if self.log_cell_grad_norms is None else self.log_cell_grad_norms / _LN10

    @property
    def log10_param_grad_norms(self) -> dict[str, Any] | None:
        """``log_param_grad_norms`` in decades."""
        if self.log_param_grad_norms is None:
            return None
        return {
            k: (v / _LN10 if isinstance(v, np.ndarray) else float(v) / _LN10)
            for k, v in self.log_param_grad_norms.items()
        }

    def _split(self, kind: str) -> np.ndarray:
        mask = np.array([c == kind for c in self._classes()], dtype=bool)
        sat = np.asarray(self.saturation, dtype=np.float64)
        # along the last (layer / step) axis; NaN stays NaN (not measured, not "none")
        return np.where(mask | np.isnan(sat), sat, 0.0)

    def _classes(self) -> list[str | None]:
        n = np.shape(self.saturation)[-1]
        if len(self.low_derivative) == n:
            return list(self.low_derivative)
        return ["saturated"] * n  # a result built by hand: the old reading

    # -- stacked recurrent models ------------------------------------------------------
    @property
    def stacked(self) -> bool:
        """Whether the arrays are (layer, time) grids (a stacked or bidirectional model)."""
        return bool(getattr(self.model, "stacked", False))

    def layer(self, index: int, direction: int = 0) -> GradientFlow:
        """One layer (and direction) of a stacked model's result as a single-layer result:
        its rows of every grid, its parameter-gradient norms, the layer as ``model``.

        Parameters
        ----------
        index : int
            Layer, 0 the one reading ``x`` (negative counts from the top).
        direction : int
            0 forward, 1 reverse (bidirectional models).
        """
        if not self.stacked:
            if index in (0, -1) and direction == 0:
                return self
            raise IndexError(
                f"this result has one layer and one direction, got ({index}, {direction})"
            )
        m: Any = self.model
        L, D = m.num_layers, m.num_directions
        if not (-L <= index < L) or direction not in range(D):
            raise IndexError(
                f"layer must be in [-{L}, {L}) and direction in range({D}), got ({index}, {direction})"
            )
        index %= L

        def row(a: Any) -> Any:
            if a is None:
                return None
            a = np.asarray(a)
            return a[index] if D == 1 else a[direction, index]

        pg = None
        if self.log_param_grad_norms is not None:
            pg = {k: float(row(v)) for k, v in self.log_param_grad_norms.items()}
        view = GradientFlow(
            model=m.layer(index, direction),
            kind=self.kind,
            dtype=self.dtype,
            batch_size=self.batch_size,
            log_grad_norms=row(self.log_grad_norms),
            act_mean=row(self.act_mean),
            act_std=row(self.act_std),
            saturation=row(self.saturation),
            output=self.output,
            log_cell_grad_norms=row(self.log_cell_grad_norms),
            gate_saturation=row(self.gate_saturation),
            log_param_grad_norms=pg,
            grads=row(self.grads),
            cell_grads=row(self.cell_grads),
            states=row(self.states),
            cell_states=row(self.cell_states),
            low_derivative=list(self.low_derivative),
        )
        return view

    def layer_names(self) -> list[tuple[str, int, int]]:
        """``(name, layer, direction)`` of every layer of the result, bottom to top."""
        if not self.stacked:
            return [("", 0, 0)]
        m: Any = self.model
        D = m.num_directions
        return [
            (f"layer {i}" + (" reverse" if d else ""), i, d)
            for i in range(m.num_layers)
            for d in range(D)
        ]

    @property
    def _trace(self) -> np.ndarray:
        """The 1-D norms the summaries read: the model's, or a stacked model's top layer
        (forward direction)."""
        lg = np.asarray(self.log_grad_norms)
        return lg if lg.ndim == 1 else lg.reshape(-1, lg.shape[-1])[self._top_row()]

    def _top_row(self) -> int:
        # uni (L, T+1) or bidirectional (2, L, T+1) as (D*L, T+1): the forward grid comes first
        return int(self.model.num_layers) - 1

    @property
    def saturated(self) -> np.ndarray:
        """Per layer / step: fraction of saturated units (tanh, sigmoid, elu/selu, gates):
        ``saturation`` where the activation saturates, 0 elsewhere."""
        return self._split("saturated")

    @property
    def inactive(self) -> np.ndarray:
        """Per layer / step: fraction of inactive units (ReLU family switched off, derivative
        ~0): ``saturation`` where the activation is a rectifier, 0 elsewhere."""
        return self._split("inactive")

    @property
    def log_gain(self) -> float:
        """``log(||dL/dh_0|| / ||dL/dh_last||)``: total log gain of the backward pass
        (stacked models: along the top layer, forward direction)."""
        lg = self._trace
        if np.isneginf(lg[-1]):  # a zero gradient at the output: no gain to measure
            return math.nan
        return float(lg[0] - lg[-1])

    def vanishing_depth(self, ratio: float = 1e-6) -> int | None:
        """Smallest distance from the output (in layers / steps) at which the gradient
        norm falls below ``ratio`` times its value at the output, or None (stacked models:
        along the top layer, forward direction)."""
        lg = self._trace
        if np.isneginf(lg[-1]):  # a zero gradient at the output: nothing propagates
            return None
        rel = lg[::-1] - lg[-1]
        idx = np.nonzero(rel < math.log(ratio))[0]
        return int(idx[0]) if idx.size else None

    # -- export ---------------------------------------------------------------------------
    def to_pandas(self) -> Any:
        """A DataFrame indexed by layer / step (0..L or 0..T) with every per-index quantity.

        Log columns name their base: ``log10_*`` in decades (as printed), ``log_*`` natural
        log. ``saturated`` and ``inactive`` split ``saturation`` by what the units are;
        ``dead`` is there when it was measured.
        """
        import pandas as pd

        if self.stacked:
            frames = {(i, d): self.layer(i, d).to_pandas() for _, i, d in self.layer_names()}
            keys = list(frames)
            if self.model.num_directions == 1:  # type: ignore[attr-defined]
                return pd.concat(
                    [frames[k] for k in keys], keys=[i for i, _ in keys], names=["layer"]
                )
            return pd.concat([frames[k] for k in keys], keys=keys, names=["layer", "direction"])
        n = len(self.log_grad_norms)
        data: dict[str, Any] = {
            "log10_grad_norm": self.log10_grad_norms,
            "log_grad_norm": self.log_grad_norms,
            "grad_norm": self.grad_norms,
        }
        if self.log_cell_grad_norms is not None:
            data["log10_cell_grad_norm"] = self.log10_cell_grad_norms
            data["log_cell_grad_norm"] = self.log_cell_grad_norms
            data["cell_grad_norm"] = self.cell_grad_norms

        def pad(a: np.ndarray) -> np.ndarray:
            return np.concatenate([[np.nan], a])

        data["act_mean"] = pad(self.act_mean)
        data["act_std"] = pad(self.act_std)
        data["saturation"] = pad(self.saturation)
        data["saturated"] = pad(self.saturated)
        data["inactive"] = pad(self.inactive)
        if self.dead is not None:
            data["dead"] = pad(self.dead)
        if self.gate_saturation is not None and self.kind in ("lstm", "gru"):
            names = "ifgo" if self.kind == "lstm" else "rzn"
            for j, g in enumerate(names):
                data[f"saturation_{g}"] = pad(self.gate_saturation[:, j])
        pg = self.log_param_grad_norms
        if pg is not None and self.kind in ("mlp", "torch"):
            for k, v in pg.items():
                data[f"log10_{k}_grad_norm"] = pad(v / _LN10)
                data[f"log_{k}_grad_norm"] = pad(v)
        if self.block_names is not None and len(self.block_names) == n - 1:
            index: Any = pd.Index(["input", *self.block_names], name=self.axis)
        else:
            index = pd.RangeIndex(n, name=self.axis)
        df = pd.DataFrame(data, index=index)
        return df

    def _unit_lines(self) -> list[str]:
        """Saturated and inactive (and dead) units, each only where the model can have them."""
        classes = set(self._classes())
        lines = []
        for kind, what in (("saturated", "saturated units"), ("inactive", "inactive units")):
            if kind in classes:
                v = self._split(kind)
                v = v[~np.isnan(v)]  # the steps where it was measured
                if v.size:
                    lines.append(f"  {what}: mean {np.mean(v):.1%}, max {np.max(v):.1%}")
        if self.dead is not None and "inactive" in classes:
            lines.append(
                f"  dead units (inactive for every sample): mean {np.mean(self.dead):.1%}, "
                f"max {np.max(self.dead):.1%}"
            )
        if not lines and self.saturation.size and np.all(np.isnan(self.saturation)):
            if getattr(self.model, "flow_sweep", None) == "generic":
                return ["  saturation: not measured (the generic sweep over the layer ops)"]
            return ["  saturation: not measured (the units of a step written in torch are unknown)"]
        if not lines and self.kind == "torch":
            return ["  saturation: no activation modules recognised in the blocks"]
        return lines or ["  saturation: none possible (linear units)"]

    def plot(self, ax: Any = None, **kw: Any) -> Any:
        """Gradient norm per layer / step (log10); see :func:`vgcore.plotting.plot_gradient_flow`."""
        from vgcore import plotting

        return plotting.plot_gradient_flow(self, ax=ax, **kw)

    def __repr__(self) -> str:
        m = self.model
        if self.stacked:
            return self._stacked_repr()
        desc = m.describe()
        if m.axis == "time":
            desc += f" T={len(self.log_grad_norms) - 1}"
        lg = self.log10_grad_norms
        last = "L" if self.kind in ("mlp", "torch") else "T"
        if np.isneginf(lg[-1]):
            norms = (
                f"  ||dL/dh_{last}|| = 0: the loss's gradient at the output is exactly zero "
                "(e.g. a zero output under the default loss 0.5 ||y||^2), nothing propagates; "
                "pass a cotangent"
            )
        else:
            norms = (
                f"  ||dL/dh_{last}|| = 10^{lg[-1]:.2f}  ->  ||dL/dh_0|| = 10^{lg[0]:.2f}"
                f"  (gain 10^{lg[0] - lg[-1]:.2f} over {len(lg) - 1} {self.axis}s; "
                "log_* attributes are natural logs)"
            )
        lines = [
            f"GradientFlow({desc}, B={self.batch_size}, {self.dtype.name})",
            norms,
            *self._unit_lines(),
        ]
        vd = self.vanishing_depth()
        if vd is not None:
            lines.append(
                f"  falls below 1e-6 of its output value {vd} {self.axis}s from the output"
            )
        lines += [f"  note: {n}" for n in dict.fromkeys((*m.notes, *self.notes))]
        return "\n".join(lines)

    def _stacked_repr(self) -> str:
        m: Any = self.model
        T = np.shape(self.log_grad_norms)[-1] - 1
        lines = [
            f"GradientFlow({m!r}, T={T}, B={self.batch_size}, {self.dtype.name}; "
            "log_* attributes are natural logs)"
        ]
        for name, i, d in self.layer_names():
            lg = self.layer(i, d).log10_grad_norms
            lines.append(
                f"  {name}: ||dL/dh_T|| = 10^{lg[-1]:.2f} -> ||dL/dh_0|| = 10^{lg[0]:.2f}"
                if d == 0
                else f"  {name}: ||dL/dh_0|| = 10^{lg[0]:.2f} -> ||dL/dh_T|| = 10^{lg[-1]:.2f}"
            )
        if self.log_input_grad_norms is not None:
            li = self.log_input_grad_norms / _LN10
            lines.append(f"  ||dL/dx_t||: 10^{li[-1]:.2f} at t = T-1, 10^{li[0]:.2f} at t = 0")
        lines += self._unit_lines()
        lines += [f"  note: {n}" for n in m.notes]
        return "\n".join(lines)


def _check_progress(progress: Any) -> Any:
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable(done, total) or None, got {progress!r}")
    return progress


def _check_nonfinite(stats: dict[str, Any], axis: str) -> None:
    """Raise FloatingPointError naming the first layer or step where a result is not finite.

    Forward: an activation statistic, or a pre-activation (which a saturating activation can
    hide: tanh(inf) = 1). Backward, in the order it runs: a gradient norm that is NaN or
    +inf, a kept gradient holding NaN (+-inf there is a true value beyond the dtype's range),
    a parameter-gradient norm (NaN marks an absent parameter). ``-inf`` (an exactly zero
    gradient, e.g. behind dead ReLUs) is a legitimate result; NaN never leaves gradient_flow.
    """
    mean = stats["act_mean"]
    n = mean.size
    bad = np.nonzero(~np.isfinite(mean))[0]
    pre = np.asarray(stats.get("preact_nonfinite", np.zeros(0, bool)), bool)
    pbad = np.nonzero(pre)[0]
    if bad.size and (not pbad.size or bad[0] <= pbad[0]):
        raise FloatingPointError(
            f"the forward pass produced NaN/Inf at {axis} {int(bad[0]) + 1} "
            f"(of {n}); the weights or inputs are too large for the dtype"
        )
    if pbad.size:
        raise FloatingPointError(
            f"the forward pass overflowed at {axis} {int(pbad[0]) + 1} (of {n}): a "
            "pre-activation is Inf/NaN although the activation output may be finite "
            "(tanh(inf) = 1); the weights or inputs are too large for the dtype"
        )

    def last_bad(a: Any) -> int:
        a = np.asarray(a, dtype=np.float64)
        idx = np.nonzero(np.isnan(a) | (a == np.inf))[0]
        return int(idx[-1]) if idx.size else -1

    # Backward: states are numbered 0..n (h_0 the input); it runs from n down to 0.
    where = {}
    for key in ("log_grad_norms", "log_cell_grad_norms"):
        v = stats.get(key)
        if v is not None and np.size(v):
            i = last_bad(v)
            if i >= 0:
                where[key] = i
    if where:
        key = max(where, key=lambda k: where[k])
        i = where[key]
        raise FloatingPointError(
            f"the backward pass produced a non-finite gradient norm at {axis} {i} "
            f"({key}[{i}] = {float(np.asarray(stats[key])[i])}, the first one going backwards "
            f"from {axis} {n}); the weights or inputs are too large for the dtype"
        )
    for key in ("grads", "cell_grads"):
        g = stats.get(key)
        if g is None:
            continue
        per_state = list(g) if isinstance(g, list) else [g]
        if not any(np.isnan(gt).any() for gt in per_state):
            continue
        if not isinstance(g, list):
            per_state = list(g)
        i = max(t for t, gt in enumerate(per_state) if np.isnan(gt).any())
        raise FloatingPointError(
            f"the backward pass produced NaN in the kept gradient at {axis} {i} "
            f"({key}[{i}]); the weights or inputs are too large for the dtype"
        )
    lp = np.asarray(stats.get("log_param_grad_norms", np.zeros(0)), dtype=np.float64)
    if lp.size:
        present = np.asarray(stats.get("param_grad_present", np.ones(lp.size, bool)), bool)
        wrong = present & (np.isnan(lp) | (lp == np.inf))
        idx = np.nonzero(wrong)[0]
        if idx.size:
            if axis == "layer":
                kinds = MLP_PARAM_KINDS
                layer, j = divmod(int(idx[-1]), len(kinds))
                what = f"the {kinds[j]} gradient of {axis} {layer + 1}"
            else:
                names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                what = f"the {names[int(idx[0])]} gradient (summed over every {axis})"
            raise FloatingPointError(
                f"the backward pass produced a non-finite norm for {what} "
                f"({float(lp[idx[-1] if axis == 'layer' else idx[0]])}); the weights or "
                "inputs are too large for the dtype"
            )


def gradient_flow(
    model: Model,
    x: Any,
    *,
    h0: Any = None,
    cotangent: Any = None,
    dtype: Any = None,
    param_grads: bool = False,
    keep_grads: bool = False,
    keep_states: bool = False,
    saturation_threshold: float = 1e-3,
    num_threads: int | None = None,
    progress: ProgressCallback | None = None,
    clip_norm: float | None = None,
    rescale: bool = True,
    dead_units: bool = False,
    input_grads: bool | None = None,
    loss_fn: Callable[[Any], Any] | None = None,
    backend: str = "cpu",
) -> GradientFlow:
    """Forward and backward pass in one compiled call; gradient norms per layer or step.

    Parameters
    ----------
    model : MLP, RNN, LSTM, GRU, TorchModel, TorchCell or torch.nn.Module
        Recurrent models may be stacked (``num_layers > 1``) and bidirectional; see Notes.
        A ``torch.nn.Module`` that a native kind imports exactly (a dense ``nn.Sequential``,
        ``nn.RNN``/``nn.LSTM``/``nn.GRU``) is analysed natively, any other as
        ``TorchModel(module)`` (per-block norms, see
        :func:`vgcore.torchmodel.flow.gradient_flow`; ``x`` may then be a tensor on the
        module's device). A ``TorchCell`` goes through time (``torchmodel.cell``).
    x : array_like of shape (B, input_size) (MLP) or (T, B, input_size) (recurrent)
        Recurrent inputs are time-major unless the model is ``batch_first`` (then
        ``(B, T, input_size)``, as its PyTorch module takes them).
    h0 : array_like of shape (B, N), or for LSTM a pair ``(h0, c0)``; zeros by default.
        Stacked or bidirectional models: PyTorch's shape ``(num_layers * D, B, N)``.
    cotangent : array_like, optional
        ``dL/dy`` replacing the default loss ``L = 0.5 * ||y||^2`` (summed over the batch),
        with ``y`` the MLP output (B, out) or the last hidden state ``h_T`` (B, N). For a
        recurrent model a (T, B, N) array gives ``dL/dh_t`` at every step (sequence loss);
        for LSTM a pair ``(dL/dh_T, dL/dc_T)`` is accepted too. Stacked or bidirectional
        models: ``y`` is ``output[T-1]``, the top layer's last output as the PyTorch module
        returns it, of shape (B, D*N); a (T, B, D*N) array puts ``dL/doutput[t]`` on every
        step.
    dtype : float32 or float64, optional
        Computation dtype; the model's when None.
    param_grads : bool
        Also compute parameter-gradient norms (costs extra GEMMs).
    keep_grads, keep_states : bool
        Return the full ``dL/dh`` tensors / hidden states. Kept gradients are the true values
        rounded to the dtype: +-inf where a gradient exceeds its range, 0 (or subnormal)
        below it; never NaN. The log norms stay exact either way.
    saturation_threshold : float
        A unit is saturated when ``|phi'(z)| < saturation_threshold * max|phi'|``.
    num_threads : int, optional
        Worker threads (batch-parallel); :func:`vgcore.get_num_threads` when None.
    progress : callable(done, total), optional
        Called about every 0.1 s from the calling thread; may raise to stop.
    clip_norm : float, optional
        Apply global-norm gradient clipping to the parameter gradients exactly like
        ``torch.nn.utils.clip_grad_norm_(params, clip_norm)`` (implies ``param_grads``);
        the result's ``clip`` and ``clipped_param_grad_norms`` report its effect. Clipping
        rescales parameter gradients only; ``dL/dh`` is unchanged.
    rescale : bool
        Keep the backpropagated vectors in floating-point range by exact power-of-two
        rescaling, so norms far outside the dtype's range are still measured (the default;
        in range it changes nothing, bit for bit). False computes the plain product as
        frameworks do: in float32, gradients below about 1e-38 underflow (through slow
        denormals) to exact zeros, whose log norms are -inf. It exists to measure what the
        rescaling costs (``vgcore bench``).
    dead_units : bool
        Also count dead units: per layer / step, the fraction of ReLU-family units inactive
        (``|phi'(z)|`` below the threshold) for every sample in the batch (``dead`` in the
        result). Costs one extra forward pass in float64 (numpy). Not for stacked models.
    input_grads : bool, optional
        Recurrent models: also measure ``log ||dL/dx_t||``, the gradient reaching the input
        sequence (``log_input_grad_norms``; one more GEMM over all steps). Default: on for
        stacked and bidirectional models, off for single-layer ones.
    loss_fn : callable(y) -> scalar tensor, optional
        Torch modules and cells only: a loss on the output (e.g. cross-entropy with targets)
        whose gradient replaces the default cotangent.
    backend : {"cpu", "cuda", "auto"}
        Native models: the compiled core (``"cpu"``), the CUDA kernels (``"cuda"``: single-layer
        RNN / LSTM / GRU and MLPs of plain or residual blocks without normalisation; the
        norms, statistics and output, not yet ``param_grads``, ``keep_grads``,
        ``keep_states``, ``clip_norm``, ``dead_units``, ``input_grads`` or ``progress``), or
        ``"auto"`` (CUDA on a device when the work is large enough; see docs/cuda.md).
        :func:`vgcore.backends` says what this machine has.

    Returns
    -------
    GradientFlow

    Notes
    -----
    Stacked and bidirectional recurrent models report norms over the (layer, time) grid:
    ``log_grad_norms`` has shape ``(num_layers, T+1)``, row ``l`` holding
    ``log ||dL/dh^l_t||`` for t = 0..T; bidirectional models one such grid per direction,
    ``(2, num_layers, T+1)``, where the reverse direction's position ``t`` is its state after
    reading ``x_{T-1}..x_t`` (its output at time t) and position ``T`` its initial state.
    Per-step arrays (``act_mean``, ``saturation``, ...) are ``(num_layers, T)`` or
    ``(2, num_layers, T)`` indexed by output time; kept tensors add those leading axes;
    ``log_param_grad_norms`` holds one value per layer (and direction). Inter-layer dropout is
    off (eval semantics): analyses measure the network, not one dropout sample.

    Raises
    ------
    FloatingPointError
        Naming the layer or step, if the forward pass overflows (including a pre-activation
        hidden by a saturating activation) or a backward result is NaN or +inf; ``-inf`` in
        the logs marks an exactly zero gradient.
    """
    model = _torch.resolve(model)
    from vgcore.cuda.analyses import flow_backend

    on = flow_backend(backend, model, x)
    if _torch.is_torch_model(model):
        from vgcore.torchmodel import flow as _flow

        _torch.unsupported(
            "a torch module", h0=h0, keep_states=keep_states, input_grads=input_grads
        )
        if dtype is not None and resolve_dtype(dtype) != model.dtype:
            raise ValueError(
                f"dtype {resolve_dtype(dtype).name} differs from the module's "
                f"{model.dtype.name}: convert the module (module.double() / .float())"
            )
        with _torch.threads(num_threads):
            return _flow.gradient_flow(
                model,  # type: ignore[arg-type]
                x,
                cotangent=cotangent,
                loss_fn=loss_fn,
                param_grads=param_grads,
                keep_grads=keep_grads,
                saturation_threshold=saturation_threshold,
                dead_units=dead_units,
                rescale=rescale,
                clip_norm=clip_norm,
            )
    if _torch.is_torch_cell(model):
        from vgcore.torchmodel import cell as _cell

        _torch.unsupported("a TorchCell", clip_norm=clip_norm, dead_units=dead_units)
        with _torch.threads(num_threads):
            return _cell.gradient_flow(  # type: ignore[no-any-return]
                model,
                x,
                h0=h0,
                cotangent=cotangent,
                loss_fn=loss_fn,
                dtype=dtype,
                param_grads=param_grads,
                keep_grads=keep_grads,
                keep_states=keep_states,
                input_grads=True if input_grads is None else input_grads,
                rescale=rescale,
                progress=progress,
            )
    if loss_fn is not None:
        raise ValueError(
            "loss_fn applies to torch modules and cells; for a native model pass cotangent"
        )
    if not isinstance(model, Model):
        raise TypeError(
            f"model must be a vgcore model ({', '.join(k.cls.__name__ for k in model_kinds())}), "
            f"got {type(model).__name__}"
        )
    dt = model.dtype if dtype is None else resolve_dtype(dtype)
    if not (isinstance(saturation_threshold, (int, float)) and 0 <= saturation_threshold <= 1):
        raise ValueError(f"saturation_threshold must be in [0, 1], got {saturation_threshold!r}")
    threads = resolve_threads(num_threads)
    if clip_norm is not None:
        if not (isinstance(clip_norm, (int, float)) and clip_norm > 0 and math.isfinite(clip_norm)):
            raise ValueError(f"clip_norm must be a positive finite number, got {clip_norm!r}")
        param_grads = True
    _check_progress(progress)
    if not isinstance(rescale, (bool, np.bool_)):
        raise TypeError(f"rescale must be True or False, got {rescale!r}")
    if not isinstance(dead_units, (bool, np.bool_)):
        raise TypeError(f"dead_units must be True or False, got {dead_units!r}")
    itemsize = dt.itemsize
    # Re-read and re-check the parameters (they may have been changed in place since the
    # last call). An MLP's NaN/Inf scan is deferred: a non-finite parameter always makes the
    # result non-finite, and the scan would cost a sixth of a large stack's analysis.
    deferred = model.axis == "depth"
    m = model._checked(check_finite=not deferred)

    def check_result(stats: dict[str, Any], axis: str) -> None:
        try:
            _check_nonfinite(stats, axis)
        except FloatingPointError:
            if deferred:  # names the parameter, if one is to blame
                model._params_as(dt, check_finite=True)
            raise

    if on == "cuda":
        from vgcore.cuda import analyses as _cuda

        return _cuda.gradient_flow(  # type: ignore[no-any-return]
            model,
            m,
            x,
            dt,
            h0=h0,
            cotangent=cotangent,
            saturation_threshold=float(saturation_threshold),
            rescale=bool(rescale),
            check_result=check_result,
            unsupported={
                "clip_norm": clip_norm is not None,
                "param_grads": param_grads,
                "keep_grads": keep_grads,
                "keep_states": keep_states,
                "dead_units": dead_units,
                "input_grads": bool(input_grads),
                "progress": progress is not None,
            },
        )
    if m.flow_sweep == "generic":  # a kind without a fused sweep: the core's generic one
        return generic_flow(
            model,
            m,
            x,
            dt,
            h0=h0,
            cotangent=cotangent,
            keep_grads=keep_grads,
            threads=threads,
            progress=progress,
            rescale=bool(rescale),
            asked={
                "param_grads": param_grads,
                "keep_states": keep_states,
                "clip_norm": clip_norm is not None,
                "dead_units": dead_units,
                "input_grads": bool(input_grads),
            },
            check_result=check_result,
        )
    if m.flow_sweep == "dense":  # a dense stack: one pass through the layers, h_0 = x
        m = narrow(m, MLP)
        if h0 is not None:
            raise ValueError("h0 is only meaningful for recurrent models; an MLP takes x alone")
        xa = as_float_array(x, "x", dt, ndim=2, shape=(None, m.input_size))
        B = xa.shape[0]
        check_memory(
            itemsize * B * (2 * sum(m.sizes[1:]) + (sum(m.sizes) if keep_grads else 0)),
            f"gradient_flow on x of shape {xa.shape}",
        )
        cot = None
        if cotangent is not None:
            cot = as_float_array(cotangent, "cotangent", dt, shape=(B, m.output_size))
        stats = _core.dense_gradient_flow(
            m.to_spec(dt, check_finite=False),
            xa,
            cot,
            keep_grads,
            param_grads,
            float(saturation_threshold),
            threads,
            progress,
            bool(rescale),
        )
        check_result(stats, "layer")
        pg = None
        if param_grads:
            lp = stats["log_param_grad_norms"].reshape(m.depth, len(MLP_PARAM_KINDS))
            have = param_kinds(m)
            pg = {k: lp[:, j].copy() for j, k in enumerate(MLP_PARAM_KINDS) if k in have}
        return _apply_clip(
            GradientFlow(
                model=model,
                kind="mlp",
                dtype=dt,
                batch_size=B,
                log_grad_norms=stats["log_grad_norms"],
                act_mean=stats["act_mean"],
                act_std=stats["act_std"],
                saturation=stats["saturation"],
                output=stats["y"],
                log_param_grad_norms=pg,
                grads=stats["grads"],
                low_derivative=[a.low_derivative for a in m.activations],
                dead=_dead_fractions(m, xa, None, float(saturation_threshold), m.depth)
                if dead_units
                else None,
            ),
            clip_norm,
        )

    return _recurrent_flow(
        model,
        narrow(m, RecurrentModel),
        x,
        dt,
        h0=h0,
        cotangent=cotangent,
        param_grads=param_grads,
        keep_grads=keep_grads,
        keep_states=keep_states,
        input_grads=input_grads,
        saturation_threshold=float(saturation_threshold),
        threads=threads,
        progress=progress,
        clip_norm=clip_norm,
        rescale=bool(rescale),
        dead_units=bool(dead_units),
        check_result=check_result,
    )


def _initial_states(
    m: RecurrentModel, h0: Any, dt: np.dtype, B: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``h0`` (and LSTM ``c0``) as the core takes them: ``(L*D, B, N)`` arrays (a single-layer
    model also accepts ``(B, N)``), or None for zeros."""
    if h0 is None:
        return None, None
    N = m.hidden_size
    runs = m.num_layers * m.num_directions
    shape = (runs, B, N) if m.stacked else (B, N)
    what = "(num_layers * num_directions, B, N)" if m.stacked else "(B, N)"
    if len(m.state_names) == 2:  # a cell state c next to h
        if not (isinstance(h0, (tuple, list)) and len(h0) == 2):
            raise TypeError(f"h0 for an LSTM must be a pair (h0, c0) of {what} arrays")
        h = as_float_array(h0[0], "h0[0] (h0)", dt, shape=shape)
        c = as_float_array(h0[1], "h0[1] (c0)", dt, shape=shape)
        return h.reshape(runs, B, N), c.reshape(runs, B, N)
    return as_float_array(h0, "h0", dt, shape=shape).reshape(runs, B, N), None


def _recurrent_flow(
    model: Model,
    m: RecurrentModel,
    x: Any,
    dt: np.dtype,
    *,
    h0: Any,
    cotangent: Any,
    param_grads: bool,
    keep_grads: bool,
    keep_states: bool,
    input_grads: bool | None,
    saturation_threshold: float,
    threads: int,
    progress: Any,
    clip_norm: float | None,
    rescale: bool,
    dead_units: bool,
    check_result: Callable[[dict[str, Any], str], None],
) -> GradientFlow:
    """gradient_flow for RNN / LSTM / GRU, single-layer, stacked or bidirectional: one call of
    the core's recurrent sweep."""
    N = m.hidden_size
    L, D = m.num_layers, m.num_directions
    runs = L * D
    out_width = D * N  # the top layer's output features
    is_lstm = len(m.state_names) == 2  # a cell state c next to h
    if dead_units and m.stacked:
        raise ValueError(
            "dead_units is measured for single-layer models only; for a stacked model, analyse "
            "model.layer(l) on that layer's input"
        )
    if input_grads is None:
        input_grads = m.stacked
    xshape = tuple(getattr(x, "shape", ()))  # arrays (not nested lists) before converting
    if len(xshape) == 3:  # the working-memory check comes before any conversion
        T, B = (xshape[1], xshape[0]) if m.batch_first else (xshape[0], xshape[1])
        per_step = runs * (m.gates + 3) * N * T * B  # A, H, and LSTM C / tanh(C) or GRU HN
        n_kept = runs * (T + 1) * B * N * ((2 if is_lstm else 1) * (keep_grads + keep_states))
        inputs = (T * B * out_width * (D + 1)) if m.stacked else 0  # layer inputs, cotangents
        check_memory(
            dt.itemsize * (per_step + n_kept + inputs), f"gradient_flow on x of shape {xshape}"
        )
    xa = time_major(m, x, "x", dt, m.input_size)
    T, B, _ = xa.shape
    h0a, c0a = _initial_states(m, h0, dt, B)
    cot = ccot = None
    if cotangent is not None:
        if is_lstm and isinstance(cotangent, (tuple, list)):
            if m.stacked:
                raise ValueError(
                    "a (dL/dh_T, dL/dc_T) cotangent pair is for single-layer LSTMs; a stacked "
                    f"model takes dL/doutput of shape (B, {out_width}) or (T, B, {out_width})"
                )
            if len(cotangent) != 2:
                raise ValueError("an LSTM cotangent pair must be (dL/dh_T, dL/dc_T)")
            cot = as_float_array(cotangent[0], "cotangent[0]", dt, shape=(B, N))
            ccot = as_float_array(cotangent[1], "cotangent[1]", dt, shape=(B, N))
        else:
            cot = output_cotangent(m, cotangent, dt, out_width, T, B)
    spec = m.to_spec(dt, check_finite=False)
    stats = _core.stacked_gradient_flow(
        spec,
        xa,
        h0a,
        c0a,
        cot,
        ccot,
        keep_grads,
        keep_states,
        bool(input_grads),
        param_grads,
        saturation_threshold,
        threads,
        progress,
        rescale,
    )
    per_run = stats["layers"]
    for i, run in enumerate(per_run):
        run = dict(run)
        for key in ("grads", "cell_grads"):
            run[key] = None if stats[key] is None else stats[key][i]
        try:
            check_result(run, "step")
        except FloatingPointError as exc:
            if not m.stacked:
                raise
            raise FloatingPointError(f"{_run_name(i, D)}: {exc}") from None

    def grid(values: list[Any]) -> np.ndarray:
        """Per-run arrays in PyTorch order -> (L, ...) or, bidirectional, (2, L, ...)."""
        a = np.stack([np.asarray(v) for v in values])
        if not m.stacked:
            return a[0]
        a = a.reshape(L, D, *a.shape[1:])
        return a[:, 0] if D == 1 else np.swapaxes(a, 0, 1)

    def by_run(key: str) -> np.ndarray:
        return grid([r[key] for r in per_run])

    kept: dict[str, np.ndarray | None] = {}
    for key in ("grads", "cell_grads", "states", "cell_states"):
        v = stats[key]
        if v is not None:
            v = grid(list(v))
            if m.batch_first:  # per-sample sequences follow the model's layout, as x does
                v = np.swapaxes(v, -3, -2)
        kept[key] = v
    pg = None
    if param_grads:
        have = param_kinds(m)
        lp = by_run("log_param_grad_norms")
        pg = {
            k: (float(lp[j]) if not m.stacked else lp[..., j].copy())
            for j, k in enumerate(RECURRENT_PARAM_KINDS)
            if k in have
        }
    output = stats["output_last"] if m.stacked else stats["h_n"][0]
    return _apply_clip(
        GradientFlow(
            model=model,
            kind=model.kind,
            dtype=dt,
            batch_size=B,
            log_grad_norms=by_run("log_grad_norms"),
            act_mean=by_run("act_mean"),
            act_std=by_run("act_std"),
            saturation=by_run("saturation"),
            output=output,
            log_cell_grad_norms=by_run("log_cell_grad_norms") if is_lstm else None,
            gate_saturation=by_run("gate_saturation") if m.gates > 1 else None,
            log_param_grad_norms=pg,
            grads=kept["grads"],
            cell_grads=kept["cell_grads"],
            states=kept["states"],
            cell_states=kept["cell_states"],
            low_derivative=[_cell_low_derivative(m)] * T,
            dead=_dead_fractions(m, xa, None if h0a is None else h0a[0], saturation_threshold, T)
            if dead_units
            else None,
            log_input_grad_norms=stats["log_input_grad_norms"],
        ),
        clip_norm,
    )


def _run_name(i: int, directions: int) -> str:
    """'layer 1' or 'layer 1 (reverse direction)' for run i in PyTorch order."""
    layer, d = divmod(i, directions)
    return f"layer {layer}" + (" (reverse direction)" if d else "")


def _cell_low_derivative(m: RecurrentModel) -> str | None:
    """What a recurrent cell's low-derivative units are: gates saturate."""
    act = _cell_activation(m)
    return "saturated" if act is None else act.low_derivative


def _cell_activation(m: RecurrentModel) -> Activation | None:
    """A vanilla RNN's nonlinearity (None for gated cells)."""
    acts = m.unit_activations()
    return acts[0] if acts else None


def _dead_fractions(
    m: Model, xa: np.ndarray, h0: np.ndarray | None, threshold: float, steps: int
) -> np.ndarray:
    """Per layer / step, the fraction of units whose ``|phi'(z)|`` is below ``threshold`` times
    its maximum for every sample (0 for activations that cannot be inactive). A float64
    forward pass the model runs (:meth:`~vgcore.models.Model.unit_preactivations`), the core's
    activations for ``phi`` and ``phi'``."""
    out = np.zeros(steps)
    if not any(a.low_derivative == "inactive" for a in m.unit_activations()):
        return out  # gated cells and saturating units have no inactive units

    def phi(act: Activation, z: np.ndarray) -> np.ndarray:
        name, a, b = act.core_args()
        return _core.activation(name, a, b, np.ascontiguousarray(z))[0]  # type: ignore[no-any-return]

    def off(act: Activation, z: np.ndarray) -> np.ndarray:
        name, a, b = act.core_args()
        _, d = _core.activation(name, a, b, np.ascontiguousarray(z))
        top = _core.activation_info(name, a, b)["max_derivative"]
        return np.abs(d) < threshold * top

    for i, (act, z) in enumerate(m.unit_preactivations(xa, h0, phi)):
        if act.low_derivative == "inactive":
            out[i] = float(np.mean(off(act, z).all(axis=0)))
    return out


def _apply_clip(flow: GradientFlow, clip_norm: float | None) -> GradientFlow:
    """Global-norm clipping as torch.nn.utils.clip_grad_norm_ (norm_type 2, eps 1e-6)."""
    if clip_norm is None or flow.log_param_grad_norms is None:
        return flow
    logs = np.concatenate(
        [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in flow.log_param_grad_norms.values()]
    )
    logs = logs[~np.isnan(logs)]
    m = np.max(logs) if logs.size else -np.inf
    log_total = m + 0.5 * np.log(np.sum(np.exp(2 * (logs - m)))) if np.isfinite(m) else m
    with np.errstate(over="ignore", under="ignore"):
        total = float(np.exp(log_total))
    coef = min(1.0, clip_norm / (total + 1e-6))
    log_coef = math.log(coef) if coef > 0 else -math.inf
    clipped = {k: v + log_coef for k, v in flow.log_param_grad_norms.items()}
    changed = []
    if coef < 1.0:
        for k, v in flow.log_param_grad_norms.items():
            arr = np.atleast_1d(np.asarray(v, dtype=np.float64))
            if flow.kind == "mlp":
                changed += [f"layers.{i}.{k}" for i, lv in enumerate(arr) if np.isfinite(lv)]
            elif np.isfinite(arr[0]):
                changed.append(k)
    flow.clip = {
        "max_norm": float(clip_norm),
        "total_norm": total,
        "log_total_norm": float(log_total),
        "clip_coef": coef,
        "clipped": coef < 1.0,
        "changed": changed,
    }
    flow.log_clipped_param_grad_norms = clipped
    return flow

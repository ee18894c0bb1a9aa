"""Lyapunov exponents of the tangent dynamics driven by an input sequence (or by depth)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vgcore._loader import _core
from vgcore._runtime import resolve_threads
from vgcore._validation import as_float_array, check_int_seed, check_memory, check_positive_int
from vgcore.analysis import _torch
from vgcore.analysis._layout import time_major
from vgcore.analysis._spectra import (
    ProgressCallback,
    check_model,
    check_progress,
    compute_dtype,
    core_model,
    initial_state,
    step_inputs,
)
from vgcore.analysis.singular_values import step_dims
from vgcore.models import Model

__all__ = ["RESOLVABLE_FRACTION", "LyapunovSpectrum", "lyapunov"]

#: Exponents more than this fraction of ``-ln(eps)`` nats per QR block below the top one are
#: marked unresolved (:attr:`LyapunovSpectrum.resolved`): 28.8 nats in float64, 12.7 in float32.
RESOLVABLE_FRACTION = 0.8


@dataclass(repr=False)
class LyapunovSpectrum:
    """Result of :func:`lyapunov`.

    Units: exponents, running estimates and block rates are natural logs of the growth per
    step (layer); ``log10_exponents`` and the ``log10_*`` columns of :meth:`to_pandas` give
    them in decades per step, the unit of the gradient-flow printouts.

    Attributes
    ----------
    exponents : ndarray of shape (B, k)
        The top-k Lyapunov exponents of each batch element's trajectory, descending, in
        natural log per step (per layer for an MLP): the finite-time estimate over the
        ``accumulated_steps`` steps after the burn-in.
    running : ndarray of shape (n_records, B, k)
        Running (finite-time) estimates after the QR block that ends at ``record_steps[i]``,
        in Gram-Schmidt order: column j converges to the j-th exponent. At most
        ``max_records`` rows, evenly spaced over the sequence.
    block_rates : ndarray of shape (n_records, B, k)
        Log growth rate of each recorded QR block alone: ``log|R_jj| / qr_every``.
    record_steps : ndarray of int, shape (n_records,)
        The step (1-based count) at which each record was taken.
    steps, accumulated_steps : int
        Steps taken, and steps after the burn-in that the exponents average over.
    final_state : ndarray of shape (B, D)
        The state after the last step (for an LSTM ``[h, c]`` side by side; for a stacked
        model every layer's state, layer by layer ``[h^0, (c^0), h^1, ...]``).
    resolved : ndarray of bool, shape (B, k)
        Whether the working precision resolves each exponent (see the property).
    """

    model: Model
    kind: str
    dtype: np.dtype
    k: int
    state_dim: int
    burn_in: int
    qr_every: int
    steps: int
    accumulated_steps: int
    exponents: np.ndarray
    running: np.ndarray
    block_rates: np.ndarray
    record_steps: np.ndarray
    final_state: np.ndarray

    @property
    def axis(self) -> str:
        return "layer" if self.kind == "mlp" else "step"

    @property
    def resolution_limit(self) -> float:
        """Nats per QR block below the top exponent beyond which an exponent is unresolved:
        ``RESOLVABLE_FRACTION * -ln(eps)`` of the dtype (28.8 in float64, 12.7 in float32)."""
        return RESOLVABLE_FRACTION * -math.log(float(np.finfo(self.dtype).eps))

    @property
    def resolved(self) -> np.ndarray:
        """(B, k) bool: the exponents the working precision can resolve.

        Within one QR block a direction ``(lambda_1 - lambda_i) * qr_every`` nats weaker than the
        leading one is computed next to it, and the leading directions' rounding (relative size
        eps) floods it once that gap nears ``-ln(eps)`` (36 nats in float64, 16 in float32): the
        estimate then sits on that noise floor whatever the true exponent is. Exponents whose gap
        reaches :attr:`resolution_limit` are False; ``-inf`` (an exact collapse, e.g. a dead
        ReLU unit) counts as resolved.
        """
        lam = self.exponents
        with np.errstate(invalid="ignore"):
            gap = (lam[:, :1] - lam) * self.qr_every
            return np.isneginf(lam) | (gap < self.resolution_limit)

    @property
    def log10_exponents(self) -> np.ndarray:
        """``exponents`` in decades per step / layer, shape (B, k)."""
        return self.exponents / np.log(10.0)

    @property
    def mean_exponents(self) -> np.ndarray:
        """Exponents averaged over the batch, shape (k,)."""
        return self.exponents.mean(axis=0)

    @property
    def max_exponent(self) -> np.ndarray:
        """Largest exponent of each batch element, shape (B,); positive means chaos."""
        return self.exponents[:, 0]

    def kaplan_yorke_dimension(self) -> np.ndarray:
        """Kaplan-Yorke (Lyapunov) dimension per batch element from the k exponents.

        ``j + sum(lambda_1..j) / |lambda_{j+1}|`` with j the largest index whose partial sum is
        non-negative (0 if the first exponent is negative, k if every partial sum is).
        """
        out = np.zeros(self.exponents.shape[0])
        for b, lam in enumerate(self.exponents):
            cs = np.cumsum(lam)
            nonneg = np.nonzero(cs >= 0)[0]
            if nonneg.size == 0:
                continue
            j = int(nonneg[-1]) + 1
            out[b] = float(j) if j >= lam.size else j + cs[j - 1] / abs(lam[j])
        return out

    def to_pandas(self) -> Any:
        """Running estimates in long format: columns step, sample, index, ``log_estimate``
        and ``log_block_rate`` (natural log per step), ``log10_estimate`` and
        ``log10_block_rate`` (decades per step)."""
        import pandas as pd

        n, B, k = self.running.shape
        ln10 = np.log(10.0)
        return pd.DataFrame(
            {
                "step": np.repeat(self.record_steps, B * k),
                "sample": np.tile(np.repeat(np.arange(B), k), n),
                "index": np.tile(np.arange(k), n * B),
                "log_estimate": self.running.ravel(),
                "log10_estimate": self.running.ravel() / ln10,
                "log_block_rate": self.block_rates.ravel(),
                "log10_block_rate": self.block_rates.ravel() / ln10,
            }
        )

    def plot(self, ax: Any = None, **kw: Any) -> Any:
        """Batch-mean spectrum and the convergence of the running estimates (needs matplotlib).

        See :func:`vgcore.plotting.plot_lyapunov`; ``ax`` is a pair of Axes, or one Axes for
        the spectrum alone. Returns the Axes (an array of them when ``ax`` is None or a pair).
        """
        from vgcore import plotting

        return plotting.plot_lyapunov(self, ax=ax, **kw)

    def __repr__(self) -> str:
        B, k = self.exponents.shape
        top = ", ".join(f"{v:.4g}" for v in self.mean_exponents[: min(k, 4)])
        more = ", ..." if k > 4 else ""
        text = (
            f"LyapunovSpectrum({self.kind}, top {k} of D={self.state_dim}, B={B}, {self.dtype.name})\n"
            f"  exponents (natural log per {self.axis}, batch mean): [{top}{more}]\n"
            f"  over {self.accumulated_steps} {self.axis}s after a burn-in of {self.burn_in}, "
            f"QR every {self.qr_every}"
        )
        bad = np.nonzero(~self.resolved.all(axis=0))[0]
        if bad.size:
            hint = "float64 or " if self.dtype == np.float32 else ""
            text += (
                f"\n  UNRESOLVED in {self.dtype.name}: exponent(s) {', '.join(str(i + 1) for i in bad)}"
                f" lie {self.resolution_limit:.1f}+ nats per QR block below the top one, on the "
                f"rounding-noise floor (true values are lower; use {hint}a smaller qr_every)"
            )
        return text


def _check_nonneg_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _engine_bytes(spec: dict[str, Any], batch: int, k: int, itemsize: int, threads: int) -> int:
    """Memory a LyapunovEngine allocates (lyapunov.cpp) with its initial tangents and a feed's
    buffers, slightly generously; the records come on top (_record_bytes)."""
    D, _, gc, cache, GN = step_dims(spec)
    chunks = min(threads, batch)
    kp = k + 16  # tangent lanes padded to whole vectors (fast path)
    v0 = batch * k * D * (8 + itemsize)  # standard normal draws in float64, then cast
    # [states; tangents] twice (general path), or both tangent blocks (fast path)
    state = 2 * batch * D * kp * itemsize
    scratch = (batch * ((k + 1) * gc + cache) + chunks * (GN + 2 * D) * kp) * itemsize
    proj = max(2**18, batch * GN) * itemsize
    return int(1.1 * (v0 + state + scratch + proj + 16 * batch * k))


def _records(steps: int, burn_in: int, qr_every: int, max_records: int) -> int:
    """Upper bound on the records kept after ``steps`` steps (one per QR block at most)."""
    return 0 if steps <= burn_in else min(max_records, (steps - burn_in) // qr_every + 1)


def _record_bytes(n_records: int, batch: int, k: int) -> int:
    """Running estimates and block rates (float64, n x B x k each): the engine's (with room to
    grow) and the result's arrays."""
    return 5 * 8 * n_records * batch * k


def _chunks(model: Any, x: Any, dt: np.dtype) -> tuple[Iterable[Any], int, int]:
    """(chunks, batch, total steps or 0): an array is one chunk, anything else is iterated."""
    if isinstance(x, np.ndarray) or (
        isinstance(x, (list, tuple)) and len(x) > 0 and not isinstance(x[0], np.ndarray)
    ):
        arr = as_float_array(x, "x", dt, allow_empty=True)
        if arr.ndim == 3:
            arr = time_major(model, arr, "x", dt, model.input_size, allow_empty=True)
        if arr.ndim != 3:
            raise ValueError(
                f"x must have shape (T, B, input_size) or be an iterable of such chunks, got shape {arr.shape}"
            )
        if arr.shape[0] == 0:
            raise ValueError(
                f"x is an empty sequence (T = 0, shape {arr.shape}); at least one step is needed"
            )
        return [arr], arr.shape[1], arr.shape[0]
    if isinstance(x, (str, bytes)) or not isinstance(x, Iterable):
        raise TypeError(
            f"x must be an array of shape (T, B, input_size) or an iterable of chunks, got {type(x).__name__}"
        )
    return x, -1, 0


def lyapunov(
    model: Model,
    x: Any,
    *,
    k: int | None = None,
    h0: Any = None,
    burn_in: int = 0,
    qr_every: int = 1,
    dtype: Any = None,
    seed: int = 0,
    max_records: int = 10_000,
    num_threads: int | None = None,
    progress: ProgressCallback | None = None,
    compile: bool = False,
    backend: str = "cpu",
) -> Any:
    """Top-k Lyapunov exponents of the tangent dynamics driven by the inputs.

    Each batch element follows its own trajectory ``h_{t+1} = F(h_t, x_t)`` with k tangent
    vectors ``V_{t+1} = J_t V_t`` (``J_t = d h_{t+1} / d h_t``; for an LSTM the state is
    ``(h, c)``; a stacked model's state is every layer's, layer by layer ``[h^0, (c^0), h^1,
    ...]``, each layer reading the new state of the layer below; a bidirectional model is
    refused: it is not a dynamical system forward in time). Every ``qr_every`` steps the tangent block is re-orthonormalised by
    Householder QR and ``log|diag R|`` accumulated in float64. For an MLP, depth plays the
    role of time (every layer must keep the width).

    Parameters
    ----------
    model : MLP, RNN, LSTM, GRU, TorchCell or torch.nn.Module
        Stock ``nn.RNN``/``nn.LSTM``/``nn.GRU`` modules are imported natively; a recurrent
        step written in torch goes through ``vgcore.TorchCell(step)``
        (:func:`vgcore.torchmodel.cell.lyapunov`). Other torch modules are refused (wrap
        their step as a TorchCell).
    x : array_like or iterable
        Recurrent: an array of shape (T, B, input_size), or an iterable (e.g. a generator) of
        (T_chunk, B, input_size) arrays, fed chunk by chunk so memory does not grow with T.
        MLP: the input batch (B, input_size) (the initial states).
    k : int, optional
        Number of exponents, 1 <= k <= state dimension (default: the state dimension).
    h0 : array_like of shape (B, N), for an LSTM a pair ``(h0, c0)``; for a stacked model
        PyTorch's ``(num_layers, B, N)`` (LSTM: a pair of them); zeros by default.
    burn_in : int
        Steps run (states and tangents evolve, tangents are re-orthonormalised) before the
        logs start accumulating; lets the tangent vectors align with the dominant directions.
        Accumulation starts at the first re-orthonormalisation at or after step ``burn_in``:
        with ``qr_every > 1`` the burn-in is rounded up to a multiple of ``qr_every`` (the
        result's ``accumulated_steps`` is the number of steps the exponents average over).
    qr_every : int
        Steps between re-orthonormalisations (>= 1). Larger values save QRs but let the
        tangent vectors grow or shrink by ``exp(lambda * qr_every)`` in between.
    dtype : float32 or float64, optional
        Computation dtype (the model's when None); the logs are always accumulated in float64.
    seed : int
        Seed of the random initial tangent vectors.
    max_records : int
        Cap on the recorded running estimates (evenly spaced, see ``running``).
    num_threads : int, optional
    progress : callable(done, total), optional
        ``total`` is 0 while the length of a streamed input is unknown; a last call
        ``(steps, steps)`` marks the end of a stream.
    compile : bool
        TorchCell only: run the tangent step through ``torch.compile`` (compiled once per
        cell, dtype and shape; several times faster on small batches once compiled).
    backend : {"cpu", "cuda", "auto"}
        Native models: the compiled core (``"cpu"``), the CUDA kernels (``"cuda"``:
        single-layer RNN / LSTM / GRU; states and tangents on the device, batched QR), or
        ``"auto"`` (CUDA on a device when the work is large enough; see docs/cuda.md).

    Returns
    -------
    LyapunovSpectrum

    Raises
    ------
    InsufficientMemoryError
        Before anything is allocated, when the engine (about ``2 B D (k + 16)`` values of
        tangents plus the step's buffers) and its records (``5 n B k`` float64, ``n`` at most
        ``max_records``) would not fit in the memory available; for a stream, before a chunk
        whose records would not fit.
    """
    model = _torch.resolve(model)
    from vgcore.cuda.analyses import lyapunov_backend

    on = lyapunov_backend(backend, model, x, k)
    if _torch.is_torch_cell(model):
        from vgcore.torchmodel import cell as _cell

        return _cell.lyapunov(
            model,
            x,
            h0=h0,
            k=k,
            burn_in=burn_in,
            qr_every=qr_every,
            dtype=dtype,
            seed=seed,
            max_records=max_records,
            num_threads=num_threads,
            progress=progress,
            compile=compile,
        )
    if compile:
        raise ValueError("compile=True applies to a TorchCell (a recurrent step written in torch)")
    if _torch.is_torch_model(model):
        raise ValueError(model.lyapunov_obstacle())
    check_model(model)
    dt = compute_dtype(model, dtype)
    D = model.state_dim
    if k is None:
        k = D
    k = check_positive_int(k, "k")
    if k > D:
        raise ValueError(f"k = {k} exceeds the state dimension {D} of this {model.kind}")
    qr_every = check_positive_int(qr_every, "qr_every")
    burn_in = _check_nonneg_int(burn_in, "burn_in")
    max_records = check_positive_int(max_records, "max_records", minimum=2)
    threads = resolve_threads(num_threads)
    report = check_progress(progress)
    spec = core_model(model, dt)
    rng = np.random.default_rng(check_int_seed(seed))

    def records(steps: int) -> int:
        return _records(steps, burn_in, qr_every, max_records)

    def make_engine(h0a: np.ndarray, total: int) -> Any:
        B = h0a.shape[0]
        need = _engine_bytes(spec, B, k, dt.itemsize, threads)
        check_memory(need + _record_bytes(records(total), B, k), "lyapunov")
        v0 = rng.standard_normal((B, k, D)).astype(dt)
        if on == "cuda":
            from vgcore.cuda.analyses import lyapunov_engine

            return lyapunov_engine(model, spec, h0a, v0, burn_in, qr_every, max_records)
        return _core.LyapunovEngine(spec, h0a, v0, burn_in, qr_every, max_records, threads)

    if model.axis == "depth":  # one pass through the layers, h_0 = x
        inp = step_inputs(model, x, h0, dt)
        engine = make_engine(inp.x, inp.steps)
        engine.feed(None, inp.steps, report)
    else:  # driven through time, possibly streamed chunk by chunk
        chunks, batch, total = _chunks(model, x, dt)
        engine = None
        fed = 0
        for i, chunk in enumerate(chunks):
            name = "x" if total else f"x chunk {i}"
            c = (
                chunk
                if total  # the whole array, already converted by _chunks
                else time_major(model, chunk, name, dt, model.input_size, allow_empty=True)
            )
            if engine is None:
                batch = c.shape[1]
                if batch == 0:
                    raise ValueError(f"{name} has an empty batch (B = 0)")
                h0a = initial_state(model, h0, batch, dt)
                if h0a is None:
                    h0a = np.zeros((batch, D), dt)
                engine = make_engine(h0a, total)
            elif c.shape[1] != batch:
                raise ValueError(
                    f"{name} has batch size {c.shape[1]}, but earlier chunks had {batch}"
                )
            if c.shape[0] == 0:
                continue
            if not total:  # a stream: its records grow chunk by chunk
                grow = records(fed + c.shape[0]) - records(fed)
                if grow > 0:
                    check_memory(_record_bytes(grow, batch, k), "lyapunov")
            engine.feed(c, total, report)
            fed += c.shape[0]
        if engine is None or fed == 0:
            raise ValueError("x is an empty sequence (no steps); at least one step is needed")
        if progress is not None and not total:  # the stream has ended: its length is known
            progress(fed, fed)
    out = engine.result()
    if out["accumulated_steps"] == 0:
        raise ValueError(
            f"burn_in = {burn_in} leaves no steps to average over: the input has {out['steps']} steps"
        )
    growth = out["log_growth"] / out["accumulated_steps"]
    return LyapunovSpectrum(
        model=model,
        kind=model.kind,
        dtype=dt,
        k=k,
        state_dim=D,
        burn_in=burn_in,
        qr_every=qr_every,
        steps=int(out["steps"]),
        accumulated_steps=int(out["accumulated_steps"]),
        exponents=-np.sort(-growth, axis=1),
        running=out["running"],
        block_rates=out["block_rates"],
        record_steps=out["record_steps"],
        final_state=out["state"],
    )

"""Per-step cotangents injected into a backpropagated state whose parts are far apart in size.

The backward sweeps carry (dL/dh, dL/dc) with one power-of-two scale. When a per-step term
lands on dL/dh while dL/dc is ~1e-45 (or less) of it, the scale must not push dL/dc into the
subnormals before its norm is measured: the norms (and kept gradients) of a state are taken
from the vector before the window rescaling that only serves the next steps, and the state is
shifted for the term only as far as the term's range needs. Cases: after 5 zero cotangents the
term is ~2^106 above the carried vector (the rescaling path); after 7, ~2^147 (beyond float32's
range: the shift path). Stacked and bidirectional LSTMs receive the layer above's cotangent at
every step, with its own scale. RNN and GRU states have one part and share the code path: the
same cases pin that the shift and the rescaling that follows it stay exact.

Oracle: PyTorch float64 autograd (tests/oracles/stacked.py); every value here is inside
float64's range. Tolerances, absolute on natural-log norms (relative on the norms): float64
1e-10, float32 1e-5 (the float32 weights' own rounding moves the norms by ~1e-7).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import vgcore
from oracles.stacked import torch_stacked_flow
from vgcore._loader import _core

pytestmark = pytest.mark.usefixtures("torch")

F64, F32 = np.dtype(np.float64), np.dtype(np.float32)
TOL = {F64: 1e-10, F32: 1e-5}
T, B, N, I = 60, 2, 3, 2
ZEROS = {"rescale": 35, "shift": 33}  # the zero cotangents run from here to step 39


def _lstm_params(rng: np.random.Generator, inputs: int) -> tuple[np.ndarray, ...]:
    """A closed forget gate (f ~ 1e-13) and small weights: both norms fall fast per step."""
    b = np.zeros(4 * N)
    b[N : 2 * N] = -30.0
    w_ih = 1e-6 * rng.standard_normal((4 * N, inputs))
    return w_ih, 1e-6 * rng.standard_normal((4 * N, N)), b, np.zeros(4 * N)


def _model(kind: str) -> Any:
    rng = np.random.default_rng(5)
    if kind == "lstm":
        return vgcore.LSTM(*_lstm_params(rng, I))
    if kind in ("lstm_stacked", "lstm_bidirectional"):
        stacked = kind == "lstm_stacked"
        ps = [_lstm_params(rng, I), _lstm_params(rng, N if stacked else I)]
        args = [[p[j] for p in ps] for j in range(4)]
        return vgcore.LSTM(*args, num_layers=2 if stacked else 1, bidirectional=not stacked)
    cls, g = {"rnn": (vgcore.RNN, 1), "gru": (vgcore.GRU, 3)}[kind]
    return cls(1e-6 * rng.standard_normal((g * N, I)), 1e-6 * rng.standard_normal((g * N, N)))


def _inputs(model: Any, zeros_from: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((T, B, I))
    seq = rng.standard_normal((T, B, model.num_directions * N))
    seq[:30] *= 1e-30  # small, then ordinary cotangents
    seq[zeros_from:40] = 0.0  # and zero ones: dL/dh falls ~2^-21 a step
    return x, seq


def grid(a: Any, model: Any) -> np.ndarray:
    """vgcore's per-state layout -> the oracle's (D, L, T+1, ...)."""
    a = np.asarray(a)
    if not model.stacked:
        return a[None, None]
    return a[None] if model.num_directions == 1 else a


def _close_logs(got: Any, want: Any, tol: float, what: str) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=what)
    fin = np.isfinite(want)
    assert np.isfinite(got[fin]).all(), f"{what}: {got}"
    err = np.abs(got[fin] - want[fin])
    assert err.max() <= tol, f"{what}: error {err.max():.3e} at {np.argmax(err)} > {tol:.0e}"


KINDS = ["lstm", "lstm_stacked", "lstm_bidirectional", "rnn", "gru"]


@pytest.mark.parametrize("case", list(ZEROS))
@pytest.mark.parametrize("dt", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", KINDS)
def test_fused_sweep_norms_where_a_term_lands_far_above_the_state(kind, dt, case) -> None:
    model = _model(kind)
    x, seq = _inputs(model, ZEROS[case])
    want = torch_stacked_flow(model, x, cotangent=seq)
    with np.errstate(all="ignore"):
        got = vgcore.gradient_flow(
            model.astype(dt), x.astype(dt), cotangent=seq.astype(dt), keep_grads=True
        )
    _close_logs(grid(got.log_grad_norms, model), want["log_grad_norms"], TOL[dt], "log ||dL/dh||")
    if kind.startswith("lstm"):
        lc = grid(got.log_cell_grad_norms, model)
        _close_logs(lc, want["log_cell_grad_norms"], TOL[dt], "log ||dL/dc||")
    if dt == F64:  # the kept gradients: the true values (all inside float64's range)
        kept = grid(got.grads, model)
        scale = np.max(np.abs(want["grads"]), axis=(-2, -1), keepdims=True)
        np.testing.assert_allclose(kept / scale, want["grads"] / scale, rtol=0, atol=1e-9)


@pytest.mark.parametrize("case", list(ZEROS))
@pytest.mark.parametrize("dt", [F64, F32], ids=["f64", "f32"])
def test_generic_sweep_norms_where_a_term_lands_far_above_the_state(dt, case) -> None:
    """The generic sweep (Model ops) on the single-layer LSTM: its state rows hold h and c."""
    model = _model("lstm")
    x, seq = _inputs(model, ZEROS[case])
    want = torch_stacked_flow(model, x, cotangent=seq)
    with np.errstate(all="ignore"):
        got = _core.model_gradient_flow(
            model.to_spec(dt), x.astype(dt), None, seq.astype(dt), True, 1, None, True
        )
    lg = np.asarray(got["log_grad_norms"])  # (segments h, c) x states
    _close_logs(lg[0], want["log_grad_norms"][0, 0], TOL[dt], "log ||dL/dh||")
    _close_logs(lg[1], want["log_cell_grad_norms"][0, 0], TOL[dt], "log ||dL/dc||")

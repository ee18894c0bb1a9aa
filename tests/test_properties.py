"""Property-based tests (hypothesis, bounded and derandomised for CI): from finite weights and
inputs, every analysis returns finite numbers (``-inf`` only for an exactly-zero gradient) that
agree with the PyTorch float64 oracle, or raises a clear FloatingPointError naming the layer
or step. Never NaN, never a silently wrong number. ``tools/fuzz.py`` runs the long version."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import vgcore  # noqa: E402
from oracles import (  # noqa: E402
    accurate_mlp_log_grad_norms,
    accurate_recurrent_log_grad_norms,
)
from vgcore import GRU, LSTM, MLP, RNN  # noqa: E402

BOUNDED = settings(
    max_examples=int(os.environ.get("VGCORE_HYPOTHESIS_EXAMPLES", 60)),
    deadline=None,
    derandomize=True,
    database=None,
)
# gelu's derivative Phi(z) + z phi(z) cancels for z << 0 in the oracle itself; it is fuzzed
# for finiteness in tools/fuzz.py.
ACTIVATIONS = ["tanh", "sigmoid", "relu", "identity", "silu"]


def _log_scale(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0**e)


@st.composite
def mlps(draw: st.DrawFn) -> tuple[MLP, np.ndarray]:
    depth = draw(st.integers(1, 6))
    sizes = [draw(st.integers(1, 6)) for _ in range(depth + 1)]
    act = draw(st.sampled_from(ACTIVATIONS))
    w_scale = draw(_log_scale(1e-3, 1e3))
    x_scale = draw(_log_scale(1e-8, 1e8))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    ws = [w_scale * rng.standard_normal((sizes[i + 1], sizes[i])) for i in range(depth)]
    bs = [rng.standard_normal(sizes[i + 1]) for i in range(depth)]
    x = x_scale * rng.standard_normal((draw(st.integers(1, 4)), sizes[0]))
    return MLP(ws, bs, act), x


@st.composite
def recurrents(draw: st.DrawFn) -> tuple[object, np.ndarray]:
    cls = draw(st.sampled_from([RNN, LSTM, GRU]))
    n, i, t = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 8))
    w_scale = draw(_log_scale(1e-3, 1e2))
    x_scale = draw(_log_scale(1e-8, 1e8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    g = cls.gates
    model = cls(
        w_scale * rng.standard_normal((g * n, i)),
        w_scale * rng.standard_normal((g * n, n)),
        rng.standard_normal(g * n),
        rng.standard_normal(g * n),
    )
    return model, x_scale * rng.standard_normal((t, draw(st.integers(1, 3)), i))


def _assert_finite_or_zero(logs: np.ndarray, what: str) -> None:
    assert not np.isnan(logs).any(), f"{what}: NaN"
    assert not np.isposinf(logs).any(), f"{what}: +inf"


def _assert_matches(got: np.ndarray, want: np.ndarray, rtol: float = 1e-9) -> None:
    """Logs agree to 1e-9 relative in the norm where the float64 oracle holds a normal
    number; where the oracle's gradient is an exact 0, vgcore's is 0 or below its range."""
    ok = np.isfinite(want) & (np.abs(want) < 700)
    err = np.abs(got[ok] - want[ok]) / np.maximum(1.0, np.abs(want[ok]))
    assert np.all(err <= rtol), f"logs {got} vs the oracle's {want}"
    zero = want == -np.inf
    assert np.all(got[zero] < -700), f"{got[zero]} where the oracle's gradient is 0"


@BOUNDED
@given(mlps())
def test_mlp_gradient_flow_is_finite_and_right(torch, case) -> None:
    model, x = case
    flow = vgcore.gradient_flow(model, x, param_grads=True)
    _assert_finite_or_zero(flow.log_grad_norms, "log_grad_norms")
    for k, v in flow.log_param_grad_norms.items():
        if k in ("weight", "bias"):
            _assert_finite_or_zero(np.asarray(v), k)
    _assert_matches(flow.log_grad_norms, accurate_mlp_log_grad_norms(torch, model, x))
    try:
        f32 = vgcore.gradient_flow(model, x, dtype=np.float32, param_grads=True)
    except FloatingPointError as exc:  # only with a named place
        assert "layer" in str(exc)
    else:
        _assert_finite_or_zero(f32.log_grad_norms, "float32 log_grad_norms")


@BOUNDED
@given(recurrents())
def test_recurrent_gradient_flow_is_finite_and_right(torch, case) -> None:
    model, x = case
    flow = vgcore.gradient_flow(model, x, param_grads=True)
    _assert_finite_or_zero(flow.log_grad_norms, "log_grad_norms")
    for k, v in flow.log_param_grad_norms.items():
        if not (isinstance(v, float) and math.isnan(v) and k.startswith("bias")):
            _assert_finite_or_zero(np.atleast_1d(v), k)
    # Gate derivatives stay accurate in saturation (tests/test_saturation.py goes deeper).
    # Gated cells: 1e-7, as GRU gradients through z hold h_{t-1} - n_t, formed from rounded
    # states (in vgcore and in the oracle alike), which cancels where both saturate at +-1.
    rtol = 1e-9 if isinstance(model, RNN) else 1e-7
    _assert_matches(flow.log_grad_norms, accurate_recurrent_log_grad_norms(torch, model, x), rtol)
    try:
        f32 = vgcore.gradient_flow(model, x, dtype=np.float32)
    except FloatingPointError as exc:
        assert "step" in str(exc)
    else:
        _assert_finite_or_zero(f32.log_grad_norms, "float32 log_grad_norms")


@BOUNDED
@given(recurrents(), st.sampled_from([np.float32, np.float64]))
def test_lyapunov_exponents_are_finite(case, dtype) -> None:
    model, x = case
    try:
        ly = vgcore.lyapunov(model, x, k=1, dtype=dtype)
    except FloatingPointError as exc:
        assert "step" in str(exc) or "layer" in str(exc)
        return
    assert not np.isnan(ly.exponents).any() and not np.isposinf(ly.exponents).any()


@BOUNDED
@given(mlps(), st.sampled_from([np.float32, np.float64]))
def test_spectra_of_mlps_never_nan(case, dtype) -> None:
    model, x = case
    if len(set(model.sizes)) != 1:
        return  # Jacobian analyses of an MLP need square layers
    for run in (vgcore.jacobian_spectrum, vgcore.jacobian_singular_values):
        try:
            res = run(model, x, dtype=dtype)
        except FloatingPointError as exc:
            assert "step" in str(exc) or "layer" in str(exc)
            continue
        # the measured values (error estimates and condition numbers are NaN where a method
        # has none, as documented)
        for key in ("log_spectral_radius", "log_sigma_max", "log_singular_values"):
            value = getattr(res, key, None)
            if value is not None:
                assert not np.isnan(np.asarray(value)).any(), f"{run.__name__}.{key}: NaN"

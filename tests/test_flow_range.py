"""Gradient norms at the edges of floating-point range: the loss end, kept gradients,
parameter gradients and single steps whose gain exceeds the dtype's range.

Oracles: PyTorch float64 autograd on scaled copies (a cotangent scaled by 2^k scales every
gradient by 2^k, exactly in binary floating point; a last layer scaled by 2^k scales the
output by 2^k and the gradients below it by 4^k), and float32 against float64 in the extreme
regimes. From finite weights and inputs the result is finite and right, or a
FloatingPointError names the layer or step; never NaN.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import vgcore
from oracles import torch_mlp_flow, torch_recurrent_flow
from vgcore import GRU, LSTM, MLP, RNN

LN2 = math.log(2.0)


def log_norm(g: np.ndarray) -> float:
    """log ||g|| without under/overflow (the largest entry factored out)."""
    g = np.asarray(g, dtype=np.float64)
    m = float(np.max(np.abs(g)))
    if m == 0.0:
        return -math.inf
    return math.log(m) + math.log(float(np.linalg.norm(g / m)))


def log_norms(grads) -> np.ndarray:
    return np.array([log_norm(g) for g in grads])


def assert_logs(got: np.ndarray, want: np.ndarray, rtol: float) -> None:
    """Logs of norms agree to rtol relative in the norm (absolute in the log, scaled by the
    log's size where it is large)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert not np.isnan(got).any(), got
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin], want[~fin])
    err = np.abs(got[fin] - want[fin]) / np.maximum(1.0, np.abs(want[fin]))
    assert np.all(err <= rtol), (got, want, err.max())


def small_mlp(dtype=np.float64, act="tanh", depth=4, width=6, seed=0) -> MLP:
    return MLP.from_sizes([5] + [width] * depth + [3], act, seed=seed, dtype=dtype)


# ---- the loss end: cotangents and outputs outside the range of sums of squares ---------------


@pytest.mark.parametrize("k", [-1060, -700, -540, -500, 500, 540, 1000])
def test_mlp_cotangent_scaled_by_2k_float64(torch, k):
    """Entries below ~1e-154 or above ~1e154 (squares out of range), down to subnormals."""
    model = small_mlp()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5))
    c = np.ldexp(rng.normal(size=(4, 3)), k)  # subnormal for k = -1060: the oracle takes c
    grads, _, pn = torch_mlp_flow(torch, model, x, cotangent=np.ldexp(c, -k))
    flow = vgcore.gradient_flow(model, x, cotangent=c, param_grads=True)
    assert_logs(flow.log_grad_norms, log_norms(grads) + k * LN2, 1e-10)
    assert_logs(flow.log_param_grad_norms["weight"], np.log(pn["weight"]) + k * LN2, 1e-10)
    assert_logs(flow.log_param_grad_norms["bias"], np.log(pn["bias"]) + k * LN2, 1e-10)


@pytest.mark.parametrize("k", [-149, -140, -120, 100, 120])
def test_mlp_cotangent_scaled_by_2k_float32(torch, k):
    """float32, down to a subnormal cotangent: the rescaled pass must not turn it into NaN."""
    model = small_mlp(np.float32)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    c = np.ldexp(rng.normal(size=(4, 3)), k).astype(np.float32)  # rounded as float32 holds it
    grads, _, pn = torch_mlp_flow(torch, model, x, cotangent=np.ldexp(c.astype(np.float64), -k))
    flow = vgcore.gradient_flow(model, x, cotangent=c, param_grads=True)
    assert_logs(flow.log_grad_norms, log_norms(grads) + k * LN2, 1e-5)
    assert_logs(flow.log_param_grad_norms["weight"], np.log(pn["weight"]) + k * LN2, 1e-5)


def scaled_output_mlp(k: int, dtype=np.float64) -> tuple[MLP, MLP]:
    """An MLP with a linear last layer, and the same with that layer times 2^k."""
    base = MLP.from_sizes([5, 6, 6, 3], "tanh", seed=3, output_activation="identity")
    ws = [w.copy() for w in base.weights]
    bs = [b.copy() for b in base.biases]
    ws[-1], bs[-1] = np.ldexp(ws[-1], k), np.ldexp(bs[-1], k)
    acts = ["tanh", "tanh", "identity"]
    return base, MLP(ws, bs, acts, dtype=dtype)


@pytest.mark.parametrize("k", [-600, -530, 530, 600])
def test_mlp_default_loss_with_output_out_of_square_range(torch, k):
    """L = 0.5 ||y||^2 with y ~ 2^k: dL/dy = y scales by 2^k and the gradients below it by
    4^k (the chain passes the scaled last layer once more)."""
    base, model = scaled_output_mlp(k)
    x = np.random.default_rng(4).normal(size=(3, 5))
    grads, _, pn = torch_mlp_flow(torch, base, x)
    flow = vgcore.gradient_flow(model, x, param_grads=True, keep_grads=True)
    shift = np.full(len(grads), 2 * k * LN2)
    shift[-1] = k * LN2
    assert_logs(flow.log_grad_norms, log_norms(grads) + shift, 1e-10)
    pshift = np.array([2 * k, 2 * k, k]) * LN2  # dL/dW' of the last layer W' = 2^k W is 2^k y h^T
    assert_logs(flow.log_param_grad_norms["weight"], np.log(pn["weight"]) + pshift, 1e-10)
    assert_logs(flow.log_param_grad_norms["bias"], np.log(pn["bias"]) + pshift, 1e-10)
    # Kept gradients: the true values rounded to float64 (inf beyond, 0 or subnormal below).
    for g_ref, g, sh in zip(grads, flow.grads, np.round(shift / LN2).astype(int)):
        with np.errstate(over="ignore", under="ignore"):
            want = np.ldexp(g_ref, sh)
        assert not np.isnan(g).any()
        normal = np.abs(want) >= np.finfo(np.float64).tiny
        np.testing.assert_allclose(g[normal], want[normal], rtol=1e-10)
        np.testing.assert_allclose(g[~normal], want[~normal], rtol=0, atol=2.0**-1070)


def test_issue_subnormal_float32_output_is_not_nan_and_not_healthy():
    """The reported case: a 130-layer ReLU stack whose float32 output is subnormal."""
    kw = {"init": {"name": "gaussian", "sigma_w2": 0.5}, "bias": False}
    m32 = MLP.from_sizes([64] * 131, "relu", dtype=np.float32, **kw)
    m64 = MLP.from_sizes([64] * 131, "relu", dtype=np.float64, **kw)
    x = np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32)
    f32 = vgcore.gradient_flow(m32, x)
    f64 = vgcore.gradient_flow(m32, x, dtype=np.float64)
    assert np.all(np.isfinite(f32.log_grad_norms))
    assert f64.log_grad_norms[-1] < math.log(np.finfo(np.float32).tiny)  # y is subnormal
    assert_logs(f32.log_grad_norms, f64.log_grad_norms, 1e-4)
    assert m64.depth == m32.depth
    assert vgcore.diagnose(m32, x, check=False).verdict != "healthy"


# ---- recurrent kernels --------------------------------------------------------------------


def recurrent(cls, dtype=np.float64, bias=True, **kw):
    return cls.from_sizes(3, 5, seed=5, dtype=dtype, bias=bias, **kw)


CELLS = [(RNN, {}), (RNN, {"nonlinearity": "relu"}), (LSTM, {}), (GRU, {})]
CELL_IDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


@pytest.mark.parametrize(("cls", "kw"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("k", [-1060, -560, 560, 1000])
@pytest.mark.parametrize("per_step", [False, True], ids=["final", "sequence"])
def test_recurrent_cotangent_scaled_by_2k_float64(torch, cls, kw, k, per_step):
    model = recurrent(cls, **kw)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(7, 2, 3))
    c = np.ldexp(rng.normal(size=(7, 2, 5) if per_step else (2, 5)), k)
    grads, cgrads, _, pn = torch_recurrent_flow(torch, model, x, cotangent=np.ldexp(c, -k))
    flow = vgcore.gradient_flow(model, x, cotangent=c, param_grads=True)
    assert_logs(flow.log_grad_norms, log_norms(grads) + k * LN2, 1e-10)
    if cgrads is not None:
        assert_logs(flow.log_cell_grad_norms, log_norms(cgrads) + k * LN2, 1e-10)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        assert_logs([flow.log_param_grad_norms[name]], [math.log(pn[name]) + k * LN2], 1e-10)


@pytest.mark.parametrize(("cls", "kw"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("k", [-149, -130, 110, 125])
@pytest.mark.parametrize("per_step", [False, True], ids=["final", "sequence"])
def test_recurrent_cotangent_scaled_by_2k_float32(torch, cls, kw, k, per_step):
    model = recurrent(cls, np.float32, **kw)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(7, 2, 3)).astype(np.float32)
    c = np.ldexp(rng.normal(size=(7, 2, 5) if per_step else (2, 5)), k).astype(np.float32)
    grads, _, _, _ = torch_recurrent_flow(
        torch, model, x, cotangent=np.ldexp(c.astype(np.float64), -k)
    )
    flow = vgcore.gradient_flow(model, x, cotangent=c)
    assert_logs(flow.log_grad_norms, log_norms(grads) + k * LN2, 1e-5)


@pytest.mark.parametrize(("cls", "kw"), CELLS, ids=CELL_IDS)
def test_recurrent_default_loss_with_tiny_final_state(torch, cls, kw):
    """h_T ~ 1e-170 (its squares underflow) from inputs ~1e-170: without biases every cell is
    linear to rounding there (sigmoid = 1/2, tanh(z) = z), so the gradients scale with the
    inputs; the oracle runs at 1e-20, the same linear regime."""
    model = recurrent(cls, bias=False, **kw)
    x0 = np.random.default_rng(8).normal(size=(6, 2, 3))
    k, k_ref = -560, -66
    grads, cgrads, _, pn = torch_recurrent_flow(torch, model, np.ldexp(x0, k_ref))
    flow = vgcore.gradient_flow(model, np.ldexp(x0, k), param_grads=True)
    assert_logs(flow.log_grad_norms, log_norms(grads) + (k - k_ref) * LN2, 1e-10)
    if cgrads is not None:
        assert_logs(flow.log_cell_grad_norms, log_norms(cgrads) + (k - k_ref) * LN2, 1e-10)
    for name in ("weight_ih", "weight_hh"):
        want = math.log(pn[name]) + 2 * (k - k_ref) * LN2
        assert_logs([flow.log_param_grad_norms[name]], [want], 1e-10)


def test_sequence_loss_after_a_long_vanishing_stretch():
    """A loss term on an early step after dL/dh has vanished far below the float32 range: the
    scale it has reached (2^+400) must not overflow the term being added (inf/NaN before)."""
    rng = np.random.default_rng(9)
    N, T = 4, 80
    model = RNN(rng.normal(size=(N, 2)), 0.01 * np.eye(N), None, None)
    x = rng.normal(size=(T, 2, 2))
    cot = np.zeros((T, 2, N))
    cot[-1] = 1.0
    cot[0] = 1.0
    for dt in (np.float64, np.float32):
        flow = vgcore.gradient_flow(model, x, cotangent=cot, dtype=dt)
        assert np.all(np.isfinite(flow.log_grad_norms)), flow.log_grad_norms
    f64 = vgcore.gradient_flow(model, x, cotangent=cot)
    f32 = vgcore.gradient_flow(model, x, cotangent=cot, dtype=np.float32)
    assert f64.log_grad_norms[2] < -300  # far below float32, and the term at step 1 is ~1
    assert_logs(f32.log_grad_norms, f64.log_grad_norms, 1e-4)


# ---- kept gradients outside the dtype's range -------------------------------------------------


def test_kept_gradients_overflow_to_inf_and_underflow_to_zero_never_nan(torch):
    """A float32 linear stack of gain 8 per layer (8^50 = 1.4e45): norms stay finite in logs;
    kept gradients are the true values rounded to float32: +-inf beyond its range, 0 below."""
    n, L = 3, 50
    ws = [8.0 * np.eye(n, dtype=np.float32) for _ in range(L)]
    model = MLP(ws, None, "identity", dtype=np.float32)
    x = np.full((2, n), 1e-30, np.float32)
    cot = np.ones((2, n), np.float32)
    flow = vgcore.gradient_flow(model, x, cotangent=cot, keep_grads=True)
    want = [math.log(math.sqrt(2 * n)) + (L - l) * math.log(8.0) for l in range(L + 1)]
    assert_logs(flow.log_grad_norms, want, 1e-6)
    for l, g in enumerate(flow.grads):
        true = 8.0 ** (L - l)
        assert not np.isnan(g).any()
        if true > float(np.finfo(np.float32).max):
            assert np.all(g == np.inf)
        else:
            np.testing.assert_allclose(g, true, rtol=1e-6)
    small = vgcore.gradient_flow(
        model, x, cotangent=np.full((2, n), 2.0**-149, np.float32), keep_grads=True
    )
    assert np.all(small.grads[L] == 2.0**-149) and not np.isnan(small.grads[0]).any()
    tiny = MLP(
        [np.eye(n, dtype=np.float32) / 8 for _ in range(L)], None, "identity", dtype=np.float32
    )
    low = vgcore.gradient_flow(tiny, x, cotangent=cot, keep_grads=True)
    assert np.all(low.grads[0] == 0.0)  # 8^-50 = 7e-46 rounds to 0 in float32
    assert low.log_grad_norms[0] == pytest.approx(math.log(math.sqrt(2 * n)) - L * math.log(8.0))


# ---- parameter gradients ----------------------------------------------------------------------


@pytest.mark.parametrize(("xscale", "wscale"), [(1e35, 1e-30), (1e-38, 1e33)])
def test_float32_parameter_gradients_of_huge_and_tiny_inputs(torch, xscale, wscale):
    """dW = dz^T x in float32 overflowed (+inf) for x ~ 1e35 and lost its digits to
    subnormals for x ~ 1e-38."""
    rng = np.random.default_rng(10)
    n = 4
    w = (wscale * rng.normal(size=(n, n))).astype(np.float32)
    model = MLP([w], [np.zeros(n, np.float32)], "identity", dtype=np.float32)
    x = (xscale * rng.normal(size=(3, n))).astype(np.float32)
    _, _, pn = torch_mlp_flow(torch, model, x)
    flow = vgcore.gradient_flow(model, x, param_grads=True)
    assert_logs(flow.log_param_grad_norms["weight"], np.log(pn["weight"]), 1e-5)
    assert_logs(flow.log_param_grad_norms["bias"], np.log(pn["bias"]), 1e-5)


@pytest.mark.parametrize(("cls", "kw"), CELLS, ids=CELL_IDS)
def test_float32_recurrent_parameter_gradients_of_huge_inputs(torch, cls, kw):
    """dW_ih = A^T x in float32 overflowed for x ~ 1e37 and a gradient ~ 2^30."""
    model0 = recurrent(cls, **kw)
    wih = model0.weight_ih * 1e-37
    model = cls(wih, model0.weight_hh, model0.bias_ih, model0.bias_hh, dtype=np.float32, **kw)
    x = (1e37 * np.random.default_rng(11).normal(size=(5, 2, 3))).astype(np.float32)
    cot = np.full((2, 5), 2.0**30, np.float32)
    ref = torch_recurrent_flow(torch, model, x, cotangent=cot)
    flow = vgcore.gradient_flow(model, x, cotangent=cot, param_grads=True)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        assert_logs([flow.log_param_grad_norms[name]], [math.log(ref[3][name])], 1e-4)


# ---- one step whose gain exceeds the dtype's range -------------------------------------------


def test_dense_layer_with_gain_beyond_float32_range_is_redone(torch):
    """The product of one layer overflows float32 (gain 1e37 on a gradient of norm 2^22):
    the layer is redone with a smaller input instead of returning inf."""
    n = 3
    model = MLP(
        [np.eye(n, dtype=np.float32) * np.float32(1e37), np.eye(n, dtype=np.float32)],
        None,
        "identity",
        dtype=np.float32,
    )
    x = np.full((2, n), 1e-36, np.float32)
    cot = np.full((2, n), 2.0**20, np.float32)
    grads, _, pn = torch_mlp_flow(torch, model, x, cotangent=cot)
    flow = vgcore.gradient_flow(model, x, cotangent=cot, param_grads=True, keep_grads=True)
    assert_logs(flow.log_grad_norms, log_norms(grads), 1e-6)
    assert_logs(flow.log_param_grad_norms["weight"], np.log(pn["weight"]), 1e-6)
    assert np.all(flow.grads[0] == np.inf)  # 1e37 * 2^20 is beyond float32


def test_recurrent_step_with_gain_beyond_float32_range(torch):
    """A ReLU RNN whose recurrent gain is 2^90 per step, with a cotangent of norm 2^39 (in
    range, so not rescaled by the norm alone): one step would overflow float32."""
    n = 2
    whh = np.eye(n) * 2.0**90
    model = RNN(np.zeros((n, 1)), whh, None, None, nonlinearity="relu", dtype=np.float32)
    x = np.zeros((2, 1, 1), np.float32)
    h0 = np.full((1, n), 2.0**-120, np.float32)
    cot = np.full((1, n), 2.0**38, np.float32)
    flow = vgcore.gradient_flow(model, x, h0=h0, cotangent=cot)
    ref = torch_recurrent_flow(torch, model, x, h0=h0, cotangent=cot)
    assert_logs(flow.log_grad_norms, log_norms(ref[0]), 1e-6)


# ---- errors instead of NaN ------------------------------------------------------------------


def test_overflowed_preactivation_behind_tanh_names_the_layer():
    """z = inf gives tanh(z) = 1 and a finite forward statistic; it is reported."""
    w = np.full((3, 3), 2e38, np.float32)
    model = MLP(
        [np.eye(3, dtype=np.float32), w, np.eye(3, dtype=np.float32)],
        None,
        "tanh",
        dtype=np.float32,
    )
    x = np.full((2, 3), 1e10, np.float32)
    with pytest.raises(FloatingPointError, match=r"layer 2 .*pre-activation"):
        vgcore.gradient_flow(model, x)


def test_overflowed_gru_candidate_names_the_step():
    """W_hn h overflowing to inf would give 0 * inf = NaN in the GRU backward."""
    n = 2
    whh = np.zeros((3 * n, n), np.float32)
    whh[2 * n :] = 3e38  # W_hn h = 6e38 for h = 1: inf, while tanh(b + r inf) = 1 is finite
    model = GRU(np.ones((3 * n, 1), np.float32), whh, None, None, dtype=np.float32)
    x = np.ones((3, 1, 1), np.float32)
    with pytest.raises(FloatingPointError, match=r"step 1 .*pre-activation"):
        vgcore.gradient_flow(model, x, h0=np.ones((1, n), np.float32))


def test_unscaled_overflow_is_an_error_not_inf():
    """rescale=False is the plain product: its float32 overflow is reported, naming where the
    backward pass first left the range."""
    n, L = 3, 50
    model = MLP([8.0 * np.eye(n, dtype=np.float32)] * L, None, "identity", dtype=np.float32)
    x = np.full((2, n), 1e-30, np.float32)
    with pytest.raises(FloatingPointError, match=r"backward pass .* layer 7 "):
        vgcore.gradient_flow(model, x, cotangent=np.ones((2, n), np.float32), rescale=False)


def test_dead_relu_gives_minus_inf_not_an_error():
    model = MLP([np.eye(3), -np.eye(3), np.eye(3)], None, "relu")
    flow = vgcore.gradient_flow(model, np.ones((2, 3)), cotangent=np.ones((2, 3)), param_grads=True)
    assert np.isneginf(flow.log_grad_norms[:3]).all() and np.isfinite(flow.log_grad_norms[3])
    assert np.isneginf(flow.log_param_grad_norms["weight"]).all()


def test_check_nonfinite_reads_every_returned_array():
    """The check behind gradient_flow, on hand-made results: NaN / +inf anywhere is named;
    -inf (a zero gradient) and NaN for an absent parameter are not errors."""
    from vgcore.analysis.gradient_flow import _check_nonfinite

    def stats(**kw):
        base = {
            "act_mean": np.zeros(3),
            "preact_nonfinite": np.zeros(3, bool),
            "log_grad_norms": np.array([-np.inf, 1.0, 2.0, 3.0]),
            "log_cell_grad_norms": np.zeros(0),
            "grads": None,
            "log_param_grad_norms": np.full(18, np.nan),
            "param_grad_present": np.zeros(18, bool),
        }
        base["log_param_grad_norms"][[0, 6, 12]] = [-np.inf, 1.0, 2.0]
        base["param_grad_present"][[0, 6, 12]] = True
        base.update(kw)
        return base

    _check_nonfinite(stats(), "layer")  # -inf and absent parameters are fine
    with pytest.raises(FloatingPointError, match="forward pass overflowed at layer 2"):
        _check_nonfinite(stats(preact_nonfinite=np.array([False, True, True])), "layer")
    with pytest.raises(FloatingPointError, match=r"at layer 2 \(log_grad_norms\[2\] = nan"):
        _check_nonfinite(stats(log_grad_norms=np.array([np.nan, np.nan, np.nan, 1.0])), "layer")
    with pytest.raises(FloatingPointError, match=r"log_cell_grad_norms\[1\] = inf"):
        _check_nonfinite(stats(log_cell_grad_norms=np.array([0.0, np.inf, 0.0, 0.0])), "step")
    grads = [np.zeros((2, 2)), np.full((2, 2), np.inf), np.array([[np.nan, 0], [0, 0]])]
    with pytest.raises(FloatingPointError, match=r"kept gradient at layer 2 \(grads\[2\]\)"):
        _check_nonfinite(stats(grads=grads), "layer")
    lp = stats()["log_param_grad_norms"]
    lp[6] = np.nan
    with pytest.raises(FloatingPointError, match="weight gradient of layer 2"):
        _check_nonfinite(stats(log_param_grad_norms=lp), "layer")
    rec = np.array([1.0, np.inf, -np.inf, 0.0])
    with pytest.raises(FloatingPointError, match="weight_hh gradient"):
        _check_nonfinite(
            stats(log_param_grad_norms=rec, param_grad_present=np.ones(4, bool)), "step"
        )

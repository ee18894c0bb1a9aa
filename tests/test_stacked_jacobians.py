"""Jacobian analyses (Lyapunov exponents, per-step spectra, singular values of the product, the
step's JVP / VJP) on stacked unidirectional RNN / LSTM / GRU, against the float64 oracle:
``torch.nn.RNN/LSTM/GRU(num_layers=L)`` run one time step as a function of the whole state,
layer by layer ``[h^0, (c^0), h^1, ...]``, differentiated by ``torch.func``.

Tolerances (relative, against float64 PyTorch): one step's state, ``J V`` and ``J^T W`` 1e-10
in float64, 2e-5 in float32 (a few roundings of each of the L layers' gates); exponents,
spectra and singular values 1e-10 in float64, 1e-4 in float32 (the conformance battery's).
Exponent i is resolved only to about ``eps * exp(lambda_1 - lambda_i)`` per step, added to the
tolerance as there. Bidirectional models are refused with the model's own explanation.
"""

from __future__ import annotations

import numpy as np
import pytest

import vgcore
from oracles import torch_step_maps
from oracles.stacked_jacobians import (
    stacked_product_log_singular_values,
    stacked_qr_lyapunov,
    stacked_state_rows,
    stacked_step_fn,
    stacked_step_spectra,
)
from tolerances import assert_rel_close
from vgcore._loader import _core
from vgcore.analysis._spectra import core_model

F64, F32 = np.dtype(np.float64), np.dtype(np.float32)
RTOL = {F64: 1e-10, F32: 1e-4}
# Lyapunov exponents in float32: the rounding of the tangent steps depends on how the build
# vectorises them (an -O1 sanitizer build lands at 1.6e-4 on the 2-layer LSTM), so 3e-4 of the
# top exponent, plus the conditioning floor below.
LYAP_RTOL = {F64: 1e-10, F32: 3e-4}
# Weaker exponents carry the rounding of the tangent steps amplified by exp(gap to the top):
# about 30 eps exp(gap) at -O3, up to 60 eps exp(gap) in float32 at -O1 (sanitizer build).
FLOOR = {F64: 30.0, F32: 100.0}
RTOL_STEP = {F64: 1e-10, F32: 2e-5}
I, N, B, T = 3, 4, 2, 6
CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def build(cell, L, *, bias=True, seed=1, dtype=np.float64, scale=1.0):
    """A seeded stack (PyTorch's default init, weights scaled by ``scale``)."""
    if cell.startswith("rnn"):
        m = vgcore.RNN.from_sizes(
            I, N, num_layers=L, nonlinearity=cell[4:], bias=bias, seed=seed, dtype=np.float64
        )
    else:
        cls = {"lstm": vgcore.LSTM, "gru": vgcore.GRU}[cell]
        m = cls.from_sizes(I, N, num_layers=L, bias=bias, seed=seed, dtype=np.float64)
    if scale != 1.0:
        if m.stacked:
            m.weight_hh = [w * scale for w in m.weight_hh]
            m.weight_ih = [w * scale for w in m.weight_ih]
        else:
            m.weight_hh = m.weight_hh * scale
            m.weight_ih = m.weight_ih * scale
    return m.astype(dtype)


def inputs(model, seed=0, steps=T):
    """x (T, B, I) and h0 as the analyses take it: PyTorch's (L, B, N) (an LSTM's pair)."""
    rng = np.random.default_rng(seed)
    dt = model.dtype
    x = rng.standard_normal((steps, B, I)).astype(dt)
    shape = (model.num_layers, B, N) if model.stacked else (B, N)
    h0 = [(0.5 * rng.standard_normal(shape)).astype(dt) for _ in model.state_names]
    return x, (tuple(h0) if len(h0) > 1 else h0[0])


def oracle_rows(model, h0):
    """The oracle's (B, D) layer-major state rows for h0 as the analyses take it."""
    parts = h0 if isinstance(h0, tuple) else (h0,)
    if not model.stacked:
        parts = tuple(p[None] for p in parts)
    return stacked_state_rows(model.cell, *[np.asarray(p, np.float64) for p in parts])


def layers64(model):
    return [
        tuple(None if a is None else np.asarray(a, np.float64) for a in p)
        for p in model.layer_params()
    ]


def assert_log_close(got, ref, rtol, what):
    """Per entry: -inf where the reference is, else within rtol (entries with an infinite
    rtol are not compared)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    rtol = np.broadcast_to(rtol, ref.shape)
    check = np.isfinite(rtol)
    zero = np.isneginf(ref) & check
    assert np.array_equal(np.isneginf(got) & check, zero), f"{what}: -inf at {got} vs {ref}"
    ok = check & ~zero
    rtol = rtol[ok]
    excess = np.max(np.abs(got[ok] - ref[ok]) / rtol, initial=0.0)
    assert excess <= 1, f"{what}: error {excess:.3g} x tolerance (got {got}, want {ref})"


# -- one step: state, J V, J^T W -----------------------------------------------------------
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_step_jvp_vjp_match_torch_func(torch, cell, L, dtype):
    model = build(cell, L, dtype=dtype)
    D = model.state_dim
    assert D == L * N * (2 if cell == "lstm" else 1)
    rng = np.random.default_rng(5)
    states = rng.standard_normal((B, D)).astype(dtype)
    x_t = rng.standard_normal((B, I)).astype(dtype)
    V, W = rng.standard_normal((B, 3, D)), rng.standard_normal((B, 3, D))
    c = lambda a: np.ascontiguousarray(a, dtype)  # noqa: E731
    got = _core.testing.tangent_map(core_model(model, dtype), 0, c(x_t), c(states), c(V), c(W))
    f = stacked_step_fn(torch, cell, layers64(model))
    s64, V64, W64 = (np.asarray(a, np.float64) for a in (states, V, W))
    for b in range(B):
        xb = torch.tensor(x_t[b], dtype=torch.float64)
        ref = torch_step_maps(
            torch, lambda s, xb=xb: f(s, xb), s64[b : b + 1], V64[b : b + 1], W64[b : b + 1]
        )
        for name, key, r in zip(("state", "J V", "J^T W"), ("state", "jvp", "vjp"), ref):
            assert_rel_close(got[key][b : b + 1], r, RTOL_STEP[dtype], f"{name} sample {b}")


def test_no_bias_and_layer_below_coupling(torch):
    """Without biases; and the block below the diagonal is really there: the Jacobian of layer
    1's new h with respect to layer 0's old h is W_ih_1-driven, nonzero."""
    model = build("gru", 2, bias=False)
    rng = np.random.default_rng(2)
    D = model.state_dim
    states = rng.standard_normal((1, D))
    x_t = rng.standard_normal((1, I))
    eye = np.eye(D)[None]
    got = _core.testing.tangent_map(core_model(model, F64), 0, x_t, states, eye, eye)
    J = got["jvp"][0].T  # rows of J e_j -> J
    f = stacked_step_fn(torch, "gru", layers64(model))
    ref = torch.func.jacrev(lambda s: f(s, torch.tensor(x_t[0])))(torch.tensor(states[0]))
    assert_rel_close(J, ref.numpy(), 1e-10, "J")
    assert_rel_close(got["vjp"][0], ref.numpy(), 1e-10, "J^T rows")
    assert np.abs(J[N:, :N]).max() > 1e-3  # d h^1' / d h^0
    assert np.abs(J[:N, N:]).max() == 0.0  # layer 0 does not read layer 1


# -- Lyapunov exponents --------------------------------------------------------------------
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_lyapunov_matches_qr_method_on_jacrev(torch, cell, L, dtype):
    model = build(cell, L, dtype=dtype)
    x, h0 = inputs(model)
    res = vgcore.lyapunov(model, x, h0=h0)
    assert res.exponents.shape == (B, model.state_dim)
    assert res.final_state.shape == (B, model.state_dim)
    ref = stacked_qr_lyapunov(
        torch,
        cell,
        layers64(model),
        x.astype(np.float64),
        model.state_dim,
        h0=oracle_rows(model, h0),
    )
    with np.errstate(invalid="ignore", over="ignore"):
        floor = FLOOR[dtype] * np.finfo(dtype).eps * np.exp(ref[:, :1] - ref)
    # ReLU units that switch off make the product rank-deficient: the exponents beyond its rank
    # are -inf or rounding-level in the oracle too (20+ nats below the top), so not compared
    gap = ref[:, :1] - ref
    tol = np.where(res.resolved & (gap < 15), LYAP_RTOL[dtype] * np.abs(ref[:, :1]) + floor, np.inf)
    assert_log_close(res.exponents, ref, tol, "exponents")
    assert res.resolved[:, :2].all()


def test_two_layer_lstm_lyapunov_burn_in_qr_every_k(torch):
    """The issue's oracle: a 2-layer LSTM's exponents against the QR method on jacrev of the
    full stacked step, with a burn-in, QR every 3 steps and k < D; and the final state against
    the module's h_n, c_n."""
    model = build("lstm", 2, seed=4, scale=2.0)
    x, h0 = inputs(model, seed=1, steps=20)
    res = vgcore.lyapunov(model, x, h0=h0, k=5, burn_in=6, qr_every=3, seed=7)
    rows = oracle_rows(model, h0)
    ref = stacked_qr_lyapunov(
        torch, "lstm", layers64(model), x, 5, h0=rows, burn_in=6, qr_every=3, seed=7
    )
    assert_log_close(res.exponents, ref, 1e-10 * np.abs(ref[:, :1]), "exponents")
    net = model.to_torch().double()
    _, (hn, cn) = net(torch.tensor(x), tuple(torch.tensor(h) for h in h0))
    want = stacked_state_rows("lstm", hn.detach().numpy(), cn.detach().numpy())
    assert_rel_close(res.final_state, want, 1e-12, "final state")


def test_lyapunov_stream_equals_one_array():
    model = build("gru", 2)
    x, h0 = inputs(model, steps=9)
    whole = vgcore.lyapunov(model, x, h0=h0, k=3)
    chunks = vgcore.lyapunov(model, (x[i : i + 4] for i in range(0, 9, 4)), h0=h0, k=3)
    np.testing.assert_array_equal(chunks.exponents, whole.exponents)


# -- spectra of the per-step Jacobians -----------------------------------------------------
@pytest.mark.parametrize("method", ["exact", "arnoldi"])
@pytest.mark.parametrize("L", [2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_jacobian_spectrum(torch, cell, L, method, dtype):
    model = build(cell, L, dtype=dtype)
    x, h0 = inputs(model)
    res = vgcore.jacobian_spectrum(model, x, h0=h0, method=method)
    rho, sig = stacked_step_spectra(torch, cell, layers64(model), x, oracle_rows(model, h0))
    rtol = RTOL[dtype]
    with np.errstate(divide="ignore"):
        assert_log_close(res.log_sigma_max, np.log(sig), rtol, "log sigma_max")
    err = np.abs(res.spectral_radius - rho) / np.maximum(sig, 1e-300)
    assert err.max() <= rtol * 10, f"spectral radius: error {err.max():.2e}"


# -- singular values of the whole Jacobian product -----------------------------------------
@pytest.mark.parametrize("L", [2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_jacobian_singular_values(torch, cell, L, dtype):
    model = build(cell, L, dtype=dtype)
    x, h0 = inputs(model, steps=3)
    res = vgcore.jacobian_singular_values(model, x, h0=h0)
    ref = stacked_product_log_singular_values(
        torch, cell, layers64(model), x, oracle_rows(model, h0)
    )
    assert res.log_singular_values.shape == (B, model.state_dim)
    # a float64 SVD knows each value to about eps * sigma_max: compare on that scale
    with np.errstate(under="ignore"):
        got, want = np.exp(res.log_singular_values), np.exp(ref)
    err = np.abs(got - want) / want[:, :1]
    assert err.max() <= RTOL[dtype], f"singular values: error {err.max():.2e}"


# -- what the core takes, and what it refuses ----------------------------------------------
def test_one_layer_stack_spec_is_the_single_layer_model():
    """A stack description of one layer runs the single-layer code paths: the same bits."""
    model = build("lstm", 1)
    x, h0 = inputs(model)
    spec = core_model(model, F64)
    stack = {"kind": "lstm", "num_layers": 1, "bidirectional": False, "layers": [spec.copy()]}
    del stack["layers"][0]["kind"]
    h0r = oracle_rows(model, h0)
    a = _core.jacobian_log_singular_values(spec, x, h0r, 1, None)
    b = _core.jacobian_log_singular_values(stack, x, h0r, 1, None)
    np.testing.assert_array_equal(a["log_singular_values"], b["log_singular_values"])


@pytest.mark.parametrize(
    "analysis",
    [
        lambda m, x: vgcore.lyapunov(m, x),
        lambda m, x: vgcore.jacobian_spectrum(m, x),
        lambda m, x: vgcore.jacobian_singular_values(m, x),
    ],
    ids=["lyapunov", "jacobian_spectrum", "jacobian_singular_values"],
)
@pytest.mark.parametrize("L", [1, 2])
def test_bidirectional_is_refused_with_the_reason(analysis, L):
    model = vgcore.GRU.from_sizes(I, N, num_layers=L, bidirectional=True)
    x = np.zeros((T, B, I))
    with pytest.raises(ValueError, match="not a dynamical system forward in time") as e:
        analysis(model, x)
    assert str(e.value) == model.jacobian_obstacle()


def test_core_refuses_bidirectional_and_bad_layers():
    model = build("lstm", 2)
    spec = core_model(model, F64)
    x = np.zeros((T, B, I))
    with pytest.raises(ValueError, match="bidirectional model is not a dynamical system"):
        _core.jacobian_log_singular_values({**spec, "bidirectional": True}, x, None, 1, None)
    bad = {**spec, "layers": [dict(ly) for ly in spec["layers"]]}
    bad["layers"][1]["weight_ih"] = np.zeros((16, 3))
    with pytest.raises(ValueError, match=r"layers\[1\]\.weight_ih must have shape \(16, 4\)"):
        _core.jacobian_log_singular_values(bad, x, None, 1, None)
    bad["layers"][1]["weight_ih"] = spec["layers"][1]["weight_ih"]
    bad["layers"][1]["weight_hh"] = np.zeros((20, 5))
    with pytest.raises(ValueError, match=r"layers\[1\]\.weight_hh must have shape \(16, 4\)"):
        _core.jacobian_log_singular_values(bad, x, None, 1, None)
    with pytest.raises(ValueError, match="num_layers = 3 needs as many layers, got 2"):
        _core.jacobian_log_singular_values({**spec, "num_layers": 3}, x, None, 1, None)


def test_stacked_h0_shapes_are_checked():
    model = build("lstm", 2)
    x, (h, c) = inputs(model)
    with pytest.raises(ValueError, match=r"h0\[1\] \(c0\).*\(2, 2, 4\)"):
        vgcore.lyapunov(model, x, h0=(h, c[0]))
    with pytest.raises(TypeError, match=r"tuple \(h0, c0\) of \(num_layers, B, N\) arrays"):
        vgcore.jacobian_singular_values(model, x, h0=h)
    rnn = build("rnn_tanh", 3)
    x, h0 = inputs(rnn)
    with pytest.raises(ValueError, match=r"h0.*\(3, 2, 4\)"):
        vgcore.jacobian_spectrum(rnn, x, h0=h0[0])


def test_threads_and_selected_steps_change_nothing():
    """Batch-parallel chunks share the (read-only) stack; a spectrum of selected steps replays
    the forward pass to them."""
    model = build("lstm", 2)
    x, h0 = inputs(model, steps=8)
    x3 = np.concatenate([x, x[:, :1]], axis=1)
    h3 = tuple(np.concatenate([h, h[:, :1]], axis=1) for h in h0)
    one = vgcore.lyapunov(model, x3, h0=h3, k=4, num_threads=1)
    two = vgcore.lyapunov(model, x3, h0=h3, k=4, num_threads=2)
    np.testing.assert_allclose(two.exponents, one.exponents, rtol=0, atol=1e-13)
    full = vgcore.jacobian_spectrum(model, x, h0=h0, method="exact", num_threads=2)
    sel = vgcore.jacobian_spectrum(model, x, h0=h0, method="exact", which=[2, -1], num_threads=1)
    np.testing.assert_array_equal(sel.steps, [2, 7])
    np.testing.assert_allclose(sel.sigma_max, full.sigma_max[[2, 7]], rtol=1e-13)


def test_imported_batch_first_module(torch):
    """A stock nn.GRU(num_layers=2, batch_first=True): x as the module takes it, (B, T, I); the
    final state is the module's h_n, layer by layer."""
    torch.manual_seed(0)
    net = torch.nn.GRU(I, N, num_layers=2, batch_first=True).double()
    model = vgcore.GRU.from_torch(net)
    assert (model.num_layers, model.batch_first, model.state_dim) == (2, True, 2 * N)
    x = np.random.default_rng(3).standard_normal((B, T, I))
    h0 = 0.5 * np.random.default_rng(4).standard_normal((2, B, N))
    res = vgcore.lyapunov(model, x, h0=h0, k=3)
    _, hn = net(torch.tensor(x), torch.tensor(h0))
    assert_rel_close(res.final_state, stacked_state_rows("gru", hn.detach().numpy()), 1e-12, "h_n")
    ref = stacked_qr_lyapunov(
        torch, "gru", layers64(model), x.transpose(1, 0, 2), 3, h0=stacked_state_rows("gru", h0)
    )
    assert_log_close(res.exponents, ref, 1e-10 * np.abs(ref[:, :1]), "exponents")

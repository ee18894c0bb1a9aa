"""Conformance battery: every model kind of ``oracles.kinds.KINDS`` through every analysis that
applies to it, against PyTorch in float64; analyses that do not apply must refuse the model.

Oracles (tests/oracles): autograd through the layer definition (MLP) or torch's cell modules
(recurrent) for gradient flow; the kind's own torch module for the forward pass and dL/dh;
``torch.func.jvp`` / ``vjp`` for the one-step tangent map; numpy's QR method, eigenvalues and
SVD on ``torch.func.jacrev`` Jacobians for Lyapunov exponents, spectra and singular values.

Tolerances. Both sides see the same numbers: the float32 model and input are rounded once and
the oracle computes with those values in float64. Norms and their logs are compared per entry
(``|log a - log b|`` is their relative error), full tensors by their max-norm relative error.

- float64: 1e-10 relative on norms, exponents (absolute, they are logs / rates) and singular
  values; 1e-9 on full tensors. The models are shallow (4 layers / 6 steps) and well
  conditioned, so rounding is ~1e-14 and the margin is kept for an eigenvalue's conditioning.
- float32: vgcore computes in float32 arithmetic (u = 6e-8). Over <= 6 steps of <= 8-term dot
  products, a value carries about steps * width * u ~ 3e-6 of relative error, times the
  gradient's conditioning (how much it shrinks by cancellation, <= ~10 here): 1e-4 on norms and
  exponents, 1e-3 on full tensors whose small entries carry the error of the large ones, 2e-5
  on one step's tangent map (no accumulation across steps).
- Measured (2 cores, this battery): float64 errors are <= 1e-4 of these tolerances, float32
  errors <= 3 % of them (largest: BatchNorm's and LayerNorm's affine-parameter gradients).
- Lyapunov exponent i also gets ``30 eps exp(lambda_1 - lambda_i)``: rounding in the leading
  direction lands on the weaker ones. Singular values are compared on the sigma_max scale, as
  a float64 SVD of the product knows them (tests/test_singular_values.py covers the small ones
  of ill-conditioned products with mpmath).
"""

from __future__ import annotations

import numpy as np
import pytest

import vgcore
from oracles import (
    product_log_singular_values,
    qr_lyapunov,
    step_spectra,
    torch_block_flow,
    torch_cell_fn,
    torch_layer_fn,
    torch_recurrent_flow,
    torch_sequential_flow,
    torch_step_maps,
)
from oracles.kinds import (
    ANALYSES,
    BATCH_FIRST,
    GRADIENT_FLOW,
    KINDS,
    LYAPUNOV,
    SINGULAR_VALUES,
    SPECTRUM,
    TANGENT_MAP,
    case_id,
    cases,
)
from oracles.ssm import ssm_state_flow
from tolerances import assert_rel_close
from vgcore._loader import _core
from vgcore.analysis._spectra import core_model

F64, F32 = np.dtype(np.float64), np.dtype(np.float32)
RTOL = {F64: 1e-10, F32: 1e-4}  # norms, log norms, exponents, singular values
RTOL_FULL = {F64: 1e-9, F32: 1e-3}  # full tensors (kept gradients, outputs)
RTOL_STEP = {F64: 1e-10, F32: 2e-5}  # one step's state, J V and J^T W


def _params(analysis):
    cs = cases(analysis)
    return pytest.mark.parametrize("kind,dtype", cs, ids=[case_id(c) for c in cs])


def _assert_log_close(got, ref, rtol, what):
    """Per entry: equal where the reference is -inf (an exact zero), else within rtol."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    zero, absent = np.isneginf(ref), np.isnan(ref)
    assert np.array_equal(np.isneginf(got), zero), f"{what}: -inf at {got} vs {ref}"
    assert np.array_equal(np.isnan(got), absent), f"{what}: NaN at {got} vs {ref}"
    ok = ~(zero | absent)
    rtol = np.broadcast_to(rtol, ref.shape)[ok]
    excess = np.max(np.abs(got[ok] - ref[ok]) / rtol, initial=0.0)
    assert excess <= 1, f"{what}: error {excess:.3g} x tolerance (got {got}, want {ref})"


def _log_norms(arrays):
    with np.errstate(divide="ignore"):
        return np.log([np.linalg.norm(a) for a in arrays])


# -- gradient flow -------------------------------------------------------------------------
def _flow_oracle(torch, kind, model, x, h0, cotangent=None):
    """dL/dh per layer / step (time-major), dL/dc_t (LSTM), output and log parameter norms."""
    if model.flow_sweep == "generic":  # the loss on the layer's state (oracles.ssm)
        cot = None if cotangent is None else kind.time_major(cotangent)
        h = kind.state_rows(model, h0)
        grads, y = ssm_state_flow(torch, model, kind.time_major(x), h0=h, cotangent=cot)
        return grads, None, y, {}
    if not kind.recurrent:
        grads, y, pn, _ = torch_block_flow(torch, model, x, cotangent)
        with np.errstate(divide="ignore"):
            return grads, None, y, {k: np.log(v) for k, v in pn.items() if not np.isnan(v).all()}
    cot = None if cotangent is None else kind.time_major(cotangent)
    grads, cgrads, y, pn = torch_recurrent_flow(
        torch, model, kind.time_major(x), h0=h0, cotangent=cot
    )
    return grads, cgrads, y, {k: np.log(v) for k, v in pn.items() if not np.isnan(v)}


def _check_flow(torch, kind, model, x, h0, cotangent, dtype):
    rtol, full = RTOL[dtype], RTOL_FULL[dtype]
    flow = vgcore.gradient_flow(
        model, x, h0=h0, cotangent=cotangent, keep_grads=True, param_grads=kind.param_grads
    )
    grads, cgrads, y, log_pn = _flow_oracle(torch, kind, model, x, h0, cotangent)
    assert_rel_close(flow.output, y, full, "output")
    _assert_log_close(flow.log_grad_norms, _log_norms(grads), rtol, "log ||dL/dh||")
    kept = flow.grads if not kind.recurrent else kind.time_major(flow.grads)
    for i, g in enumerate(grads):
        assert_rel_close(kept[i], g, full, f"kept dL/dh[{i}]")
    assert set(flow.log_param_grad_norms or {}) == set(log_pn), "parameter kinds"
    for k, want in log_pn.items():
        _assert_log_close(flow.log_param_grad_norms[k], want, rtol, f"log ||dL/d{k}||")
    if model.kind == "lstm":
        _assert_log_close(flow.log_cell_grad_norms, _log_norms(cgrads), rtol, "log ||dL/dc||")
        cell = kind.time_major(flow.cell_grads)
        for t, g in enumerate(cgrads):
            assert_rel_close(cell[t], g, full, f"kept dL/dc[{t}]")
    else:
        assert flow.log_cell_grad_norms is None


@_params(GRADIENT_FLOW)
def test_gradient_flow(torch, kind, dtype):
    model = kind.model(dtype)
    x, h0 = kind.inputs(model)
    _check_flow(torch, kind, model, x, h0, None, dtype)


@_params(GRADIENT_FLOW)
def test_gradient_flow_with_cotangent(torch, kind, dtype):
    """A given dL/dy (MLP) or a loss on every step (recurrent, in the kind's layout)."""
    model = kind.model(dtype)
    x, h0 = kind.inputs(model, seed=1)
    rng = np.random.default_rng(2)
    if kind.recurrent:
        shape = (*x.shape[:2], model.hidden_size)
    else:
        shape = (x.shape[0], model.output_size)
    cot = rng.standard_normal(shape).astype(dtype)
    _check_flow(torch, kind, model, x, h0, cot, dtype)


@pytest.mark.parametrize("kind", [k for k in KINDS if k.torch_module], ids=lambda k: k.id)
def test_torch_module_agrees(torch, kind):
    """The kind's own torch module (float64) gives the same output and dL/dh as vgcore."""
    model = kind.model(F64)
    x, h0 = kind.inputs(model)
    net = kind.torch_module(torch, model)
    flow = vgcore.gradient_flow(model, x, h0=h0, keep_grads=True)
    if not kind.recurrent:
        hs, grads = torch_sequential_flow(torch, net, x)
        assert_rel_close(flow.output, hs[-1].detach().numpy(), 1e-12, "output")
        for i, g in enumerate(grads):
            assert_rel_close(flow.grads[i], g, RTOL_FULL[F64], f"dL/dh[{i}]")
        return
    B, N = kind.batch, model.hidden_size
    lstm = model.kind == "lstm"
    h = (
        torch.zeros(B, N, dtype=torch.float64)
        if h0 is None
        else torch.tensor(h0[0] if lstm else h0)
    )
    leaves = [h.clone()[None].requires_grad_()]
    if lstm:
        c = torch.zeros(B, N, dtype=torch.float64) if h0 is None else torch.tensor(h0[1])
        leaves.append(c.clone()[None].requires_grad_())
    out, _ = net(torch.tensor(x), tuple(leaves) if lstm else leaves[0])
    last = out[:, -1] if kind.layout == BATCH_FIRST else out[-1]
    (0.5 * (last**2).sum()).backward()
    assert_rel_close(flow.output, last.detach().numpy(), 1e-12, "output")
    at_0 = np.take(flow.grads, 0, axis=1 if kind.layout == BATCH_FIRST else 0)
    assert_rel_close(at_0, leaves[0].grad[0].numpy(), RTOL_FULL[F64], "dL/dh_0")
    if model.kind == "lstm":
        c_0 = np.take(flow.cell_grads, 0, axis=1 if kind.layout == BATCH_FIRST else 0)
        assert_rel_close(c_0, leaves[1].grad[0].numpy(), RTOL_FULL[F64], "dL/dc_0")


# -- tangent map (one step's JVP / VJP) ----------------------------------------------------
@_params(TANGENT_MAP)
def test_tangent_map(torch, kind, dtype):
    model = kind.model(dtype)
    m64 = model.astype(np.float64)
    x, _ = kind.inputs(model)
    rng = np.random.default_rng(3)
    steps = range(m64.depth) if not kind.recurrent else range(0, kind.steps, 2)
    xtm = kind.time_major(x).astype(np.float64) if kind.recurrent else None
    cellf = torch_cell_fn(torch, m64) if kind.recurrent else None
    for step in steps:
        if kind.recurrent:
            din = dout = m64.state_dim
            x_t = xtm[step]
        else:
            din, dout = m64.weights[step].shape[1], m64.weights[step].shape[0]
            x_t = None
        B = kind.batch
        states = rng.standard_normal((B, din)).astype(dtype).astype(np.float64)
        V = rng.standard_normal((B, 3, din))
        W = rng.standard_normal((B, 3, dout))
        c = lambda a: np.ascontiguousarray(a, dtype)  # noqa: E731
        got = _core.testing.tangent_map(
            core_model(model, dtype), step, None if x_t is None else c(x_t), c(states), c(V), c(W)
        )
        for b in range(B):
            if kind.recurrent:
                xb = torch.from_numpy(x_t[b : b + 1])
                f = lambda s, xb=xb: cellf(s[None], xb)[0]  # noqa: E731
            else:
                layer = torch_layer_fn(torch, m64, step)
                f = lambda s, layer=layer: layer(s[None])[0]  # noqa: E731
            ref = torch_step_maps(torch, f, states[b : b + 1], V[b : b + 1], W[b : b + 1])
            for name, key, r in zip(("state", "J V", "J^T W"), ("state", "jvp", "vjp"), ref):
                assert_rel_close(got[key][b : b + 1], r, RTOL_STEP[dtype], f"{name} step {step}")


# -- Lyapunov exponents --------------------------------------------------------------------
@_params(LYAPUNOV)
def test_lyapunov(torch, kind, dtype):
    model = kind.model(dtype)
    x, h0 = kind.inputs(model)
    m64 = model.astype(np.float64)
    D = m64.state_dim if kind.recurrent else m64.input_size
    k = kind.lyapunov_k or D
    res = vgcore.lyapunov(model, x, h0=h0, k=k)
    xo = kind.time_major(x).astype(np.float64) if kind.recurrent else x.astype(np.float64)
    ref = qr_lyapunov(torch, m64, xo, k, h0=kind.state_rows(model, h0))
    # rounding of the leading direction lands on the others: exponent i is resolved to about
    # u * exp(lambda_1 - lambda_i) per step (float32, LayerNorm's 4th: 6e-8 * e^7.9 = 1.6e-4)
    with np.errstate(invalid="ignore"):
        resolved = 30 * np.finfo(dtype).eps * np.exp(ref[:, :1] - ref)
    _assert_log_close(res.exponents, ref, RTOL[dtype] + resolved, "exponents")


# -- spectra of the per-step Jacobians -----------------------------------------------------
@_params(SPECTRUM)
def test_jacobian_spectrum(torch, kind, dtype):
    model = kind.model(dtype)
    x, h0 = kind.inputs(model)
    m64 = model.astype(np.float64)
    res = vgcore.jacobian_spectrum(model, x, h0=h0, method="exact")
    xo = kind.time_major(x).astype(np.float64) if kind.recurrent else x.astype(np.float64)
    rho, sig = step_spectra(torch, m64, xo, kind.state_rows(model, h0))
    rtol = RTOL[dtype]
    assert res.sigma_max.shape == sig.shape
    with np.errstate(divide="ignore"):  # every ReLU unit off: J = 0
        _assert_log_close(res.log_sigma_max, np.log(sig), rtol, "log sigma_max")
    # an eigenvalue moves by about (its condition) * ||perturbation||: bound the radius's error
    # on the step's sigma_max scale
    square = ~np.isnan(rho)
    assert np.array_equal(np.isnan(res.spectral_radius), ~square), "radius where J is square"
    err = np.abs(res.spectral_radius - rho)[square] / np.maximum(sig[square], 1e-300)
    assert err.max(initial=0.0) <= rtol * 10, f"spectral radius: error {err.max():.2e}"


# -- singular values of the whole Jacobian product -----------------------------------------
@_params(SINGULAR_VALUES)
def test_jacobian_singular_values(torch, kind, dtype):
    model = kind.model(dtype)
    x, h0 = kind.inputs(model)
    m64 = model.astype(np.float64)
    res = vgcore.jacobian_singular_values(model, x, h0=h0)
    xo = kind.time_major(x).astype(np.float64) if kind.recurrent else x.astype(np.float64)
    ref, _ = product_log_singular_values(torch, m64, xo, kind.state_rows(model, h0))
    r = res.log_singular_values.shape[1]
    got = np.exp(res.log_singular_values)
    want = np.exp(ref[:, :r])
    # a float64 SVD knows each value to about eps * sigma_max: compare on that scale
    err = np.abs(got - want) / np.maximum(want[:, :1], 1e-300)
    assert err.max() <= RTOL[dtype], f"singular values: error {err.max():.2e}"
    assert (want[:, r:] <= 1e-12 * want[:, :1]).all(), "values beyond the reported rank"


# -- analyses that do not apply refuse the model -------------------------------------------
_REFUSED = [(k, a) for k in KINDS for a in ANALYSES if a not in k.analyses]


@pytest.mark.parametrize("kind,analysis", _REFUSED, ids=[f"{k.id}-{a}" for k, a in _REFUSED])
def test_analyses_that_do_not_apply_refuse(kind, analysis):
    model = kind.model(F64)
    x, h0 = kind.inputs(model)
    run = {
        TANGENT_MAP: lambda: _core.testing.tangent_map(
            core_model(model, F64),
            0,
            None,
            x,
            np.zeros((len(x), 1, x.shape[1])),
            np.zeros((len(x), 1, model.output_size)),
        ),
        LYAPUNOV: lambda: vgcore.lyapunov(model, x, h0=h0),
        SPECTRUM: lambda: vgcore.jacobian_spectrum(model, x, h0=h0),
        SINGULAR_VALUES: lambda: vgcore.jacobian_singular_values(model, x, h0=h0),
    }[analysis]
    with pytest.raises(ValueError):
        run()


def test_every_kind_is_checked_by_every_analysis_it_claims():
    """The battery is the registry's contract: ids are unique, every kind runs gradient flow,
    and each Jacobian analysis has both dtypes of each kind that claims it."""
    ids = [k.id for k in KINDS]
    assert len(ids) == len(set(ids))
    assert all(GRADIENT_FLOW in k.analyses for k in KINDS)
    for a in ANALYSES:
        claimed = {k.id for k in KINDS if a in k.analyses}
        assert {c[0].id for c in cases(a)} == claimed
        assert len(cases(a)) == 2 * len(claimed)


def test_every_registered_model_kind_is_in_the_battery():
    """A kind added to vgcore's registry fails here until kinds.py builds it."""
    from vgcore.models import model_kinds

    built = {k.build().kind for k in KINDS}
    missing = [mk.name for mk in model_kinds() if mk.name not in built]
    assert not missing, f"add these model kinds to tests/oracles/kinds.py: {missing}"

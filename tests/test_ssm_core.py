"""The state-space layers in the compiled core (vgcore.SSM, vgcore.SelectiveSSM) against the
torch reference modules (vgcore.reference.ssm) in float64 autograd / torch.func, and against
closed forms (the LTI layer's Lyapunov exponents are log|a|)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import vgcore  # noqa: E402
from vgcore import _core  # noqa: E402
from vgcore.models.ssm import SSM, SelectiveSSM, s4d_init  # noqa: E402
from vgcore.reference import ssm as ref  # noqa: E402

LTI_CASES = [("s4d_lin", True), ("s4d_inv", True), ("hippo", True), ("s4d_real", False)]


def test_step_dims_are_the_core_layouts() -> None:
    """The buffer sizes the analyses' memory estimates read (``_core.model_step_dims``) are
    the layouts of model.hpp: LTI: state S, no scratch or cache; selective: state d_inner
    (d_state + d_conv - 1), scratch 2 d_inner + dt_rank + 2 d_state, cache d_inner d_state +
    5 d_inner + 2 d_state, input projection 2 d_inner."""
    lti = _lti()
    S = lti.state_dim
    assert _core.model_step_dims(lti.to_spec()) == (S, S, 0, 0, S)
    sel = _selective()
    di, n, dc, R = sel.d_inner, sel.d_state, sel.d_conv, sel.dt_rank
    D = di * (n + dc - 1)
    assert _core.model_step_dims(sel.to_spec()) == (
        D,
        D,
        2 * di + R + 2 * n,
        di * n + 5 * di + 2 * n,
        2 * di,
    )


def _lti(init: str = "s4d_lin", cplx: bool = True, d: int = 3, N: int = 4) -> SSM:
    # dt up to 0.5 so that the modes' |a| are well apart
    return SSM.from_sizes(d, N, init=init, complex=cplx, dt_min=0.05, dt_max=0.5, seed=3)


def _selective(bias: bool = False, conv_bias: bool = True, d_conv: int = 3) -> SelectiveSSM:
    return SelectiveSSM.from_sizes(
        5, 3, expand=2, d_conv=d_conv, dt_rank=2, bias=bias, conv_bias=conv_bias, seed=4
    )


def _step_fn(model: Any, module: Any) -> Any:
    """The reference module's state update on flat state rows: (S,), (d,) -> (S,)."""
    if isinstance(model, SSM):
        shape = module.state_shape

        def f(s: Any, x: Any) -> Any:
            return module.step(s.reshape(1, *shape), x[None]).reshape(-1)

        return f
    di, n, dc = model.d_inner, model.d_state, model.d_conv

    def g(s: Any, x: Any) -> Any:
        h = s[: di * n].reshape(1, di, n)
        c = s[di * n :].reshape(1, di, dc - 1)
        h2, c2 = module.step((h, c), x[None])
        return torch.cat((h2.reshape(-1), c2.reshape(-1)))

    return g


def _check_tangent_map(model: Any, B: int = 2, k: int = 3, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    S, d = model.state_dim, model.input_size
    state = rng.standard_normal((B, S))
    x = rng.standard_normal((B, d))
    V = rng.standard_normal((B, k, S))
    W = rng.standard_normal((B, k, S))
    out = _core.testing.tangent_map(model.to_spec(np.float64), 0, x, state, V, W)
    f = _step_fn(model, model.to_torch())
    for b in range(B):
        s_t, x_t = torch.tensor(state[b]), torch.tensor(x[b])
        y = f(s_t, x_t).detach().numpy()
        J = torch.func.jacrev(f)(s_t, x_t).detach().numpy()
        scale = np.abs(J).max()
        np.testing.assert_allclose(out["state"][b], y, rtol=1e-10, atol=1e-12 * np.abs(y).max())
        np.testing.assert_allclose(out["jvp"][b], V[b] @ J.T, rtol=1e-10, atol=1e-12 * scale)
        np.testing.assert_allclose(out["vjp"][b], W[b] @ J, rtol=1e-10, atol=1e-12 * scale)


# -- the step, its tangent and cotangent maps ------------------------------------------------


@pytest.mark.parametrize(("init", "cplx"), LTI_CASES)
def test_lti_tangent_map_matches_torch(init: str, cplx: bool) -> None:
    _check_tangent_map(_lti(init, cplx))


@pytest.mark.parametrize(("bias", "conv_bias", "d_conv"), [(False, True, 4), (True, False, 2)])
def test_selective_tangent_map_matches_torch(bias: bool, conv_bias: bool, d_conv: int) -> None:
    _check_tangent_map(_selective(bias, conv_bias, d_conv), B=3, k=4)


def test_selective_jacobian_structure() -> None:
    """diag(a) on h plus the selection's low-rank part: d h'/d h is exactly diagonal, the
    buffer's block is a shift (checked through the core's JVP of the identity)."""
    m = _selective()
    S, Sh = m.state_dim, m.d_inner * m.d_state
    rng = np.random.default_rng(1)
    eye = np.eye(S)[None]
    out = _core.testing.tangent_map(
        m.to_spec(), 0, rng.standard_normal((1, m.d_model)), rng.standard_normal((1, S)), eye, eye
    )
    J = out["jvp"][0].T  # column j = J e_j
    hh = J[:Sh, :Sh]
    np.testing.assert_array_equal(hh - np.diag(np.diag(hh)), 0.0)
    assert np.all(np.diag(hh) > 0) and np.all(np.diag(hh) < 1)
    np.testing.assert_array_equal(J[Sh:, :Sh], 0.0)  # the buffer does not read h
    assert np.abs(J[:Sh, Sh:]).max() > 0  # the selection reads the buffer


@pytest.mark.parametrize("kind", ["lti_complex", "lti_real", "selective", "selective_bias"])
def test_sequence_outputs_match_torch_forward(kind: str) -> None:
    """The core's steps and outputs over a sequence == the reference module's forward."""
    model: Any = {
        "lti_complex": lambda: _lti(),
        "lti_real": lambda: _lti("s4d_real", False),
        "selective": lambda: _selective(),
        "selective_bias": lambda: _selective(True, False, 2),
    }[kind]()
    rng = np.random.default_rng(2)
    T, B = 7, 2
    x = rng.standard_normal((T, B, model.input_size))
    spec = model.to_spec()
    state = np.zeros((B, model.state_dim))
    ys = []
    for t in range(T):
        state, y = _core.testing.ssm_output(spec, x[t], state)
        ys.append(y)
    with torch.no_grad():
        expect = model.to_torch()(torch.tensor(x.transpose(1, 0, 2))).numpy().transpose(1, 0, 2)
    np.testing.assert_allclose(np.stack(ys), expect, rtol=1e-10, atol=1e-12)


def test_float32_tangent_map() -> None:
    """float32 within float32's rounding of the float64 reference (honest tolerance)."""
    for model in (_lti(), _selective()):
        rng = np.random.default_rng(5)
        S = model.state_dim
        st = rng.standard_normal((2, S))
        x = rng.standard_normal((2, model.input_size))
        V = rng.standard_normal((2, 2, S))
        o32 = _core.testing.tangent_map(
            model.to_spec(np.float32), 0, x.astype(np.float32), st.astype(np.float32),
            V.astype(np.float32), V.astype(np.float32),
        )  # fmt: skip
        o64 = _core.testing.tangent_map(model.to_spec(np.float64), 0, x, st, V, V)
        for key in ("state", "jvp", "vjp"):
            assert o32[key].dtype == np.float32
            err = np.abs(o32[key] - o64[key]).max() / np.abs(o64[key]).max()
            assert err < 2e-5, (key, err)


# -- Lyapunov exponents -----------------------------------------------------------------------


def _closed_form(model: SSM) -> np.ndarray:
    la = np.log(np.abs(model.transition()))
    return np.sort(np.repeat(la, 2) if model.is_complex else la)[::-1]


@pytest.mark.parametrize(("init", "cplx"), LTI_CASES)
def test_lti_lyapunov_equals_log_abs_a(init: str, cplx: bool) -> None:
    """From the coordinate axes the QR method is exact: every step's R is |a| per mode."""
    model = _lti(init, cplx)
    D, B, T = model.state_dim, 2, 300
    x = np.random.default_rng(0).standard_normal((T, B, model.input_size))
    v0 = np.ascontiguousarray(np.broadcast_to(np.eye(D), (B, D, D)))
    eng = _core.LyapunovEngine(model.to_spec(), np.zeros((B, D)), v0, 0, 1, 16, 1)
    eng.feed(x, T, None)
    out = eng.result()
    got = np.sort(out["log_growth"] / out["accumulated_steps"], axis=1)[:, ::-1]
    for b in range(B):
        np.testing.assert_allclose(got[b], _closed_form(model), rtol=1e-12, atol=0)


@pytest.mark.parametrize(("init", "cplx"), [("s4d_lin", True), ("s4d_real", False)])
def test_lti_lyapunov_public_api(init: str, cplx: bool) -> None:
    """vgcore.lyapunov from random tangents: the sum of all exponents is log|det J| per step
    exactly; each exponent converges to its log|a| (the gaps decide how fast)."""
    model = _lti(init, cplx)
    x = np.random.default_rng(1).standard_normal((3000, 2, model.input_size))
    res = vgcore.lyapunov(model, x)
    lam = _closed_form(model)
    np.testing.assert_allclose(res.exponents.sum(axis=1), lam.sum(), rtol=1e-12)
    np.testing.assert_allclose(res.exponents, np.broadcast_to(lam, res.exponents.shape), atol=2e-3)


def test_lti_lyapunov_float32() -> None:
    model = _lti().astype(np.float32)
    D, T = model.state_dim, 200
    x = np.random.default_rng(0).standard_normal((T, 1, model.input_size)).astype(np.float32)
    v0 = np.eye(D, dtype=np.float32)[None].copy()
    eng = _core.LyapunovEngine(model.to_spec(), np.zeros((1, D), np.float32), v0, 0, 1, 16, 1)
    eng.feed(x, T, None)
    out = eng.result()
    got = np.sort(out["log_growth"][0] / out["accumulated_steps"])[::-1]
    np.testing.assert_allclose(got, _closed_form(model.astype(np.float64)), rtol=1e-5)


def test_selective_lyapunov_matches_qr_on_jacrev() -> None:
    """The top d_inner * d_state exponents against the QR method on jacrev of the torch step,
    from the same initial tangents, along the same trajectory."""
    model = _selective()
    D, k, T = model.state_dim, model.d_inner * model.d_state, 25
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, 1, model.d_model))
    h0 = 0.1 * rng.standard_normal((1, D))
    v0 = rng.standard_normal((1, k, D))
    eng = _core.LyapunovEngine(model.to_spec(), h0, v0, 0, 1, 16, 1)
    eng.feed(x, T, None)
    got = eng.result()["log_growth"][0]
    f = _step_fn(model, model.to_torch())
    s = torch.tensor(h0[0])
    Q, _ = np.linalg.qr(v0[0].T)
    growth = np.zeros(k)
    for t in range(T):
        xt = torch.tensor(x[t, 0])
        J = torch.func.jacrev(f)(s, xt).detach().numpy()
        Q, R = np.linalg.qr(J @ Q)
        growth += np.log(np.abs(np.diag(R)))
        s = f(s, xt).detach()
    np.testing.assert_allclose(np.sort(got), np.sort(growth), rtol=1e-8)


def test_lti_jacobian_spectrum_is_max_abs_a() -> None:
    """The exact spectrum of the constant step Jacobian: radius and norm are max|a|."""
    model = _lti()
    x = np.random.default_rng(0).standard_normal((3, 2, model.input_size))
    res = vgcore.jacobian_spectrum(model, x, method="exact")
    top = np.abs(model.transition()).max()
    np.testing.assert_allclose(res.spectral_radius, top, rtol=1e-12)
    np.testing.assert_allclose(res.sigma_max, top, rtol=1e-12)


# -- the models ---------------------------------------------------------------------------------


def test_the_reference_modules_share_the_models_inits() -> None:
    """One definition of the S4D initialisations (checked against their formulas and HiPPO-LegS
    in tests/test_ssm_reference.py::test_inits_formulas)."""
    assert ref.s4d_init is s4d_init


@pytest.mark.parametrize(("init", "cplx"), LTI_CASES)
def test_lti_round_trip_and_transition(init: str, cplx: bool) -> None:
    model = _lti(init, cplx)
    mod = model.to_torch()
    assert isinstance(mod, ref.DiagonalSSM)
    before = {k: v.clone() for k, v in mod.state_dict().items()}
    back = SSM.from_torch(mod)
    for name, arr in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], arr)
    for key, val in mod.state_dict().items():  # the module is left as it was
        assert torch.equal(val, before[key])
    a_ref = mod.transition().numpy()
    np.testing.assert_allclose(model.transition(), a_ref, rtol=1e-14)
    assert np.iscomplexobj(model.transition()) == cplx


def test_selective_round_trip() -> None:
    mod = ref.SelectiveSSM(6, d_state=4, d_conv=3, expand=2, bias=True, seed=2, dtype=torch.float64)
    mod.train()
    flags = {n: p.requires_grad for n, p in mod.named_parameters()}
    before = {k: v.clone() for k, v in mod.state_dict().items()}
    model = SelectiveSSM.from_torch(mod)
    assert (model.d_model, model.d_inner, model.d_state, model.d_conv) == (6, 12, 4, 3)
    assert mod.training and flags == {n: p.requires_grad for n, p in mod.named_parameters()}
    for key, val in mod.state_dict().items():
        assert torch.equal(val, before[key])
    back = model.to_torch()
    for key, val in mod.state_dict().items():
        assert torch.equal(back.state_dict()[key], val)
    assert SelectiveSSM.from_torch(back).parameters().keys() == model.parameters().keys()


def test_from_sizes_shapes_and_registry() -> None:
    m = SelectiveSSM.from_sizes(32, 16, seed=0)
    assert (m.d_inner, m.dt_rank, m.d_conv) == (64, 2, 4)
    np.testing.assert_allclose(np.exp(m.A_log[3]), np.arange(1, 17), rtol=1e-15)
    assert m.state_dim == 64 * (16 + 3)
    assert vgcore.models.model_kind("ssm").cls is SSM
    assert vgcore.models.model_kind("selective_ssm").cls is SelectiveSSM
    s = SSM.from_sizes(2, 5, init="s4d_real")
    assert not s.is_complex and s.state_dim == 5
    assert SSM.from_sizes(2, 5).state_dim == 10
    assert s.astype(np.float32).to_spec()["a"].dtype == np.float32


# -- bad input -------------------------------------------------------------------------------


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="init must be one of"):
        SSM.from_sizes(2, 3, init="legs")
    with pytest.raises(ValueError, match="complex=False needs init='s4d_real'"):
        SSM.from_sizes(2, 3, init="s4d_lin", complex=False)
    with pytest.raises(ValueError, match="state_size must be >= 1"):
        SSM.from_sizes(2, 0)
    with pytest.raises(ValueError, match="log_dt"):
        SSM(np.zeros(3), np.zeros(4), np.zeros((3, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="C"):
        SSM(np.zeros(3), np.zeros(3), np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="d_conv must be >= 2"):
        SelectiveSSM.from_sizes(4, 2, d_conv=1)
    with pytest.raises(ValueError, match="dt_rank"):
        SelectiveSSM.from_sizes(4, 2, dt_rank="big")
    m = _selective()
    with pytest.raises(ValueError, match="x_proj_weight"):
        SelectiveSSM(
            m.in_proj_weight, m.conv_weight, m.x_proj_weight[:-1], m.dt_proj_weight,
            m.dt_proj_bias, m.A_log, m.out_proj_weight,
        )  # fmt: skip
    with pytest.raises(TypeError, match="DiagonalSSM"):
        SSM.from_torch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="SelectiveSSM"):
        SelectiveSSM.from_torch(torch.nn.Linear(2, 2))
    # the core's parser names the entry
    spec = _lti().to_spec()
    spec["C"] = spec["C"][:, :-1].copy()
    with pytest.raises(ValueError, match="C"):
        _core.testing.ssm_output(spec, np.zeros((1, 3)), np.zeros((1, 8)))
    spec = m.to_spec()
    del spec["dt_proj_bias"]
    with pytest.raises(KeyError, match="dt_proj_bias"):
        _core.testing.ssm_output(spec, np.zeros((1, 5)), np.zeros((1, m.state_dim)))
    with pytest.raises(ValueError, match="x must have shape"):
        vgcore.lyapunov(_lti(), np.zeros((4, 2, 7)))

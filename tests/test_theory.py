"""Mean-field theory (vgcore.theory): closed forms, Monte Carlo, a real network, grids, errors.

Oracles are independent of the implementation under test: closed forms (relu / leaky_relu
arc-cosine kernels), seeded Monte Carlo, scipy.integrate.quad, PyTorch autograd, and a numpy
MLP whose gradients are backpropagated by hand.
"""

from __future__ import annotations

import ast
import math
import pathlib
import time
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import integrate, special

from vgcore.theory import (
    ACTIVATIONS,
    MeanField,
    PhaseDiagram,
    TheoryComparison,
    compare_to_theory,
    critical_sigma_w2,
    mean_field,
    phase_diagram,
)
from vgcore.theory._activations import SELU_ALPHA, SELU_SCALE, resolve_activation
from vgcore.theory._quadrature import expect_1d, expect_2d

THEORY_DIR = pathlib.Path(__file__).resolve().parents[1] / "python" / "vgcore" / "theory"


# ------------------------------------------------------------------------------------------
# independent reference activations (numpy, written out separately from the module)
def _ref_phi(name: str, u: np.ndarray) -> np.ndarray:
    if name == "tanh":
        return np.tanh(u)
    if name == "sigmoid":
        return special.expit(u)
    if name == "elu":
        return np.where(u > 0, u, np.expm1(np.minimum(u, 0.0)))
    if name == "selu":
        return SELU_SCALE * np.where(u > 0, u, SELU_ALPHA * np.expm1(np.minimum(u, 0.0)))
    if name == "gelu":
        return 0.5 * u * (1.0 + special.erf(u / math.sqrt(2.0)))
    if name == "silu":
        return u * special.expit(u)
    if name == "softplus":
        return np.where(u > 20.0, u, np.logaddexp(0.0, u))
    if name == "gelu_tanh":
        return 0.5 * u * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u**3)))
    raise KeyError(name)


def _ref_dphi(name: str, u: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences, one-sided next to the kink at 0 and the softplus threshold."""
    d = (_ref_phi(name, u + h) - _ref_phi(name, u - h)) / (2 * h)
    right = (_ref_phi(name, u + 2 * h) - _ref_phi(name, u + h)) / h
    left = (_ref_phi(name, u - h) - _ref_phi(name, u - 2 * h)) / h
    near = np.abs(u) < 2 * h
    near_t = np.abs(u - 20.0) < 2 * h
    return np.where(near | near_t, np.where(u > 0, right, left), d)


# ------------------------------------------------------------------------------------------
# closed forms and the edge of chaos
def test_tanh_critical_line_passes_through_1_0() -> None:
    assert critical_sigma_w2("tanh", 0.0) == pytest.approx(1.0, rel=1e-12, abs=0)
    mf = mean_field("tanh", 1.0, 0.0)
    assert mf.phase == "critical"
    assert mf.chi_1 == pytest.approx(1.0, abs=1e-12)
    assert mf.q_star == 0.0
    # Schoenholz et al. (2017) quote sigma_w2 ~ 1.76 at sigma_b2 = 0.05 for tanh.
    assert critical_sigma_w2("tanh", 0.05) == pytest.approx(1.76, abs=0.005)


@pytest.mark.parametrize(
    ("sw", "sb"), [(0.5, 0.0), (1.3, 0.2), (2.0, 0.0), (2.0, 0.7), (3.1, 0.05)]
)
def test_relu_chi1_is_sigma_w2_over_2(sw: float, sb: float) -> None:
    mf = mean_field("relu", sw, sb)
    assert abs(mf.chi_1 - sw / 2) <= 1e-12
    if sw < 2:
        assert mf.q_star == pytest.approx(sb / (1 - sw / 2), rel=1e-12, abs=1e-300)
        assert mf.phase == "ordered" and mf.c_star == 1.0
    elif sb > 0 or sw > 2:
        assert math.isinf(mf.q_star)
    else:  # He initialisation: every length is preserved, so the iteration stays at q = 1
        assert mf.q_star == 1.0 and mf.phase == "critical" and math.isinf(mf.xi_c)


def test_homogeneous_critical_points() -> None:
    assert critical_sigma_w2("relu", 0.0) == 2.0
    np.testing.assert_array_equal(critical_sigma_w2("relu", [0.0, 0.3, 1.0]), [2.0, 2.0, 2.0])
    assert critical_sigma_w2("leaky_relu", 0.1, negative_slope=0.2) == pytest.approx(
        2 / 1.04, rel=1e-15
    )
    assert critical_sigma_w2("linear", 0.0) == 1.0


@pytest.mark.parametrize("act", ["tanh", "elu", "selu", "softplus", "sigmoid"])
def test_critical_sigma_w2_gives_chi1_one(act: str) -> None:
    for sb in (0.05, 0.3):
        sw = critical_sigma_w2(act, sb)
        assert np.isfinite(sw)
        assert mean_field(act, sw, sb).chi_1 == pytest.approx(1.0, abs=1e-12)


def test_critical_sigma_w2_at_a_jump() -> None:
    """gelu at small sigma_b2 is bistable: q* jumps to inf and chi_1 jumps across 1."""
    sw = critical_sigma_w2("gelu", 0.05)
    below, above = (
        mean_field("gelu", sw * (1 - 1e-9), 0.05),
        mean_field("gelu", sw * (1 + 1e-9), 0.05),
    )
    assert below.chi_1 < 1 < above.chi_1
    assert np.isfinite(below.q_star) and math.isinf(above.q_star)


def test_2d_quadrature_matches_arc_cosine_kernels() -> None:
    """relu / leaky_relu correlations in closed form (Cho & Saul 2009), kinks included."""
    theta = np.array([1e-4, 1e-2, 0.3, 1.0, math.pi / 2])
    d = 2 * np.sin(theta / 2) ** 2
    for a in (0.0, 0.2, 1.7):
        act = resolve_activation("leaky_relu", {"negative_slope": a})
        for q in (1e-3, 1.0, 50.0):
            dr, p = expect_2d(act, np.full(theta.size, q), d)
            c = np.cos(theta)
            r_relu = q / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * c)
            v = q * (1 + a * a) / 2
            dr_exact = v - (q * c * a + (1 - a) ** 2 * r_relu)
            p_exact = a + (1 - a) ** 2 * (np.pi - theta) / (2 * np.pi)
            np.testing.assert_allclose(p, p_exact, rtol=1e-12, atol=1e-14)
            big = theta > 0.1  # the closed form itself cancels for small theta
            np.testing.assert_allclose(dr[big], dr_exact[big], rtol=1e-12)
            # small angles: dR ~ q (1 - c) E[phi'^2] to leading order
            np.testing.assert_allclose(dr[0] / (q * d[0]), v / q, rtol=1e-4)


@pytest.mark.parametrize(
    "act", ["tanh", "sigmoid", "elu", "selu", "gelu", "silu", "softplus", "gelu_tanh"]
)
@pytest.mark.parametrize("q", [1e-4, 0.3, 2.0, 40.0])
def test_1d_quadrature_matches_scipy_quad(act: str, q: float) -> None:
    """Gaussian expectations to 1e-10 against adaptive quadrature split at the kinks."""
    fns = resolve_activation(act)
    got = expect_1d(fns, np.array([q]), ("V", "D"))
    root = math.sqrt(q)
    pts = sorted({0.0, 1.0 / root, -1.0 / root, 20.0 / root, 3.0 / root, -3.0 / root})
    pts = [p for p in pts if abs(p) < 12]

    def integral(f: object) -> float:
        def g(z: float) -> float:
            return f(root * np.atleast_1d(z))[0] * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

        return integrate.quad(g, -12, 12, points=pts, limit=400, epsabs=1e-15, epsrel=1e-13)[0]

    v_ref = integral(lambda u: _ref_phi(act, u) ** 2)
    d_ref = integral(lambda u: fns.dphi(u) ** 2)
    assert got["V"][0] == pytest.approx(v_ref, rel=1e-10)
    assert got["D"][0] == pytest.approx(d_ref, rel=1e-10)


def test_activation_derivatives_match_torch() -> None:
    torch = pytest.importorskip("torch")
    u = np.concatenate([np.linspace(-30, 30, 2001), [-1e-9, 1e-9, 19.999, 20.001, 25.0]])
    mods = {
        "tanh": torch.nn.Tanh(),
        "sigmoid": torch.nn.Sigmoid(),
        "relu": torch.nn.ReLU(),
        "leaky_relu": torch.nn.LeakyReLU(0.01),
        "elu": torch.nn.ELU(1.0),
        "selu": torch.nn.SELU(),
        "softplus": torch.nn.Softplus(1.0, 20.0),
        "silu": torch.nn.SiLU(),
        "gelu": torch.nn.GELU(),
        "gelu_tanh": torch.nn.GELU(approximate="tanh"),
    }
    for name, mod in mods.items():
        fns = resolve_activation(name)
        x = torch.tensor(u, dtype=torch.float64, requires_grad=True)
        y = mod(x)
        (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad(g.sum(), x, allow_unused=True) if g.requires_grad else (None,)
        np.testing.assert_allclose(
            fns.phi(u), y.detach().numpy(), rtol=1e-13, atol=1e-15, err_msg=name
        )
        np.testing.assert_allclose(
            fns.dphi(u), g.detach().numpy(), rtol=1e-12, atol=1e-13, err_msg=name
        )
        if g2 is not None:  # (phi'' at a kink is a convention: compare away from u = 0)
            off = u != 0.0
            np.testing.assert_allclose(
                fns.d2phi(u)[off], g2.numpy()[off], rtol=1e-10, atol=1e-12, err_msg=name
            )


# ------------------------------------------------------------------------------------------
# Monte Carlo
_MC_POINTS = [
    ("tanh", 1.7, 0.3),
    ("tanh", 0.8, 0.01),
    ("sigmoid", 6.0, 0.2),
    ("elu", 1.4, 0.1),
    ("selu", 1.0, 0.0),
    ("gelu", 1.8, 0.5),
    ("silu", 1.8, 0.2),
    ("softplus", 1.2, 0.4),
    ("gelu_tanh", 1.5, 0.05),
    ("leaky_relu", 1.9, 0.1),
]


@pytest.mark.parametrize(("act", "sw", "sb"), _MC_POINTS)
def test_q_star_and_chi1_match_monte_carlo(act: str, sw: float, sb: float) -> None:
    mf = mean_field(act, sw, sb)
    assert np.isfinite(mf.q_star) and mf.q_star > 0
    z = np.random.default_rng(1234).standard_normal(4_000_000)
    u = math.sqrt(mf.q_star) * z
    if act == "leaky_relu":
        phi = np.where(u > 0, u, 0.01 * u)
        dphi = np.where(u > 0, 1.0, 0.01)
    else:
        phi, dphi = _ref_phi(act, u), _ref_dphi(act, u)
    # 3 digits: the Monte Carlo standard error is ~5e-4 relative
    assert sw * np.mean(phi**2) + sb == pytest.approx(mf.q_star, rel=3e-3)
    assert sw * np.mean(dphi**2) == pytest.approx(mf.chi_1, rel=3e-3)


@pytest.mark.parametrize(
    ("act", "sw", "sb"),
    [("tanh", 2.0, 0.05), ("tanh", 3.0, 0.3), ("elu", 1.6, 0.02), ("selu", 1.5, 0.3)],
)
def test_correlation_fixed_point_matches_monte_carlo(act: str, sw: float, sb: float) -> None:
    mf = mean_field(act, sw, sb)
    assert mf.phase == "chaotic" and 0 <= mf.c_star < 1
    rng = np.random.default_rng(99)
    z1, z2 = rng.standard_normal((2, 4_000_000))
    c = mf.c_star
    u1 = math.sqrt(mf.q_star) * z1
    u2 = math.sqrt(mf.q_star) * (c * z1 + math.sqrt(1 - c * c) * z2)
    c_map = (sw * np.mean(_ref_phi(act, u1) * _ref_phi(act, u2)) + sb) / mf.q_star
    assert c_map == pytest.approx(c, abs=3e-3)  # c* is a fixed point of the correlation map
    chi_c = sw * np.mean(_ref_dphi(act, u1) * _ref_dphi(act, u2))
    assert chi_c == pytest.approx(mf.chi_c, rel=3e-3)


# ------------------------------------------------------------------------------------------
# depth scales
@pytest.mark.parametrize(
    ("act", "sw", "sb"),
    [("tanh", 0.7, 0.05), ("tanh", 2.0, 0.05), ("elu", 1.2, 0.3), ("selu", 0.9, 0.1)],
)
def test_depth_scales_follow_their_formulas(act: str, sw: float, sb: float) -> None:
    mf = mean_field(act, sw, sb)
    assert mf.xi_c == pytest.approx(-1 / math.log(mf.chi_c), rel=1e-14)
    assert mf.xi_q == pytest.approx(-1 / math.log(mf.chi_q), rel=1e-14)
    if mf.phase == "ordered":
        assert mf.chi_c == mf.chi_1 and mf.c_star == 1.0

    # chi_q = chi_1 + sigma_w2 E[phi'' phi] is the slope of the length map at q*: check it
    # by central differences of an independently integrated length map.
    def length_map(q: float) -> float:
        def f(z: float) -> float:
            return _ref_phi(act, np.array([math.sqrt(q) * z]))[0] ** 2 * math.exp(-z * z / 2)

        val = integrate.quad(f, -12, 12, points=[0.0], epsabs=1e-14, epsrel=1e-13, limit=200)[0]
        return sw * val / math.sqrt(2 * math.pi) + sb

    h = 1e-4 * mf.q_star
    slope = (length_map(mf.q_star + h) - length_map(mf.q_star - h)) / (2 * h)
    assert mf.chi_q == pytest.approx(slope, rel=1e-6)


def test_softplus_threshold_jump_is_integrated_exactly() -> None:
    """PyTorch's softplus jumps at beta u = threshold; q*, chi_1 and chi_q account for it."""
    beta, thr, sw, sb = 5.0, 3.0, 1.0, 0.1

    def phi(u: float) -> float:
        return u if beta * u > thr else math.log1p(math.exp(beta * u)) / beta

    def dphi(u: float) -> float:
        return 1.0 if beta * u > thr else 1.0 / (1.0 + math.exp(-beta * u))

    def expect(f: object, q: float) -> float:
        def g(z: float) -> float:
            return f(math.sqrt(q) * z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

        k = thr / beta / math.sqrt(q)
        opts = {"limit": 200, "epsabs": 1e-15, "epsrel": 1e-13}
        return integrate.quad(g, -12, k, **opts)[0] + integrate.quad(g, k, 12, **opts)[0]

    mf = mean_field("softplus", sw, sb, beta=beta, threshold=thr)
    q = mf.q_star
    assert sw * expect(lambda u: phi(u) ** 2, q) + sb == pytest.approx(q, rel=1e-12)
    assert sw * expect(lambda u: dphi(u) ** 2, q) == pytest.approx(mf.chi_1, rel=1e-12)
    h = 1e-5 * q
    slope = sw * (expect(lambda u: phi(u) ** 2, q + h) - expect(lambda u: phi(u) ** 2, q - h))
    assert mf.chi_q == pytest.approx(slope / (2 * h), rel=1e-8)


def test_xi_c_is_infinite_at_criticality() -> None:
    for act, sw, sb in [("tanh", 1.0, 0.0), ("relu", 2.0, 0.0), ("identity", 1.0, 0.0)]:
        mf = mean_field(act, sw, sb)
        assert mf.phase == "critical"
        assert math.isinf(mf.xi_c) and mf.xi_c > 0
    # and it grows without bound on approaching the critical line
    sw_c = critical_sigma_w2("tanh", 0.1)
    xi = [mean_field("tanh", sw_c * (1 - e), 0.1).xi_c for e in (1e-2, 1e-3, 1e-4)]
    assert xi[0] < xi[1] < xi[2] and xi[2] > 1e3


def test_unbounded_length_map_reports_inf() -> None:
    mf = mean_field("elu", 3.0, 0.1)
    assert math.isinf(mf.q_star) and mf.chi_1 == pytest.approx(1.5)
    # correlations then follow the map of the linear asymptote: c -> 1 with slope 1
    assert mf.c_star == 1.0 and mf.chi_c == 1.0 and math.isinf(mf.xi_c)
    assert mf.chi_q == pytest.approx(1.5) and mf.xi_q == pytest.approx(-1 / math.log(1.5))
    assert mf.phase == "chaotic"
    mf = mean_field("softplus", 2.0, 0.3)  # sigma_w2 kappa = 1 exactly: grows like sqrt(l)
    assert math.isinf(mf.q_star) and mf.phase == "critical"


# ------------------------------------------------------------------------------------------
# a real network
def _numpy_tanh_mlp_log_norms(
    sw: float, sb: float, *, width: int, depth: int, batch: int, seed: int
):
    """Forward and hand-written backward pass of a Gaussian-initialised tanh MLP."""
    rng = np.random.default_rng(seed)
    q_star = mean_field("tanh", sw, sb).q_star
    h = np.tanh(math.sqrt(q_star) * rng.standard_normal((batch, width)))  # input at q*
    weights, pre = [], []
    for _ in range(depth):
        w = rng.standard_normal((width, width)) * math.sqrt(sw / width)
        b = rng.standard_normal(width) * math.sqrt(sb)
        z = h @ w.T + b
        weights.append(w)
        pre.append(z)
        h = np.tanh(z)
    g = rng.standard_normal((batch, width))  # random cotangent dL/dh_L
    log_norms = [math.log(np.linalg.norm(g))]
    for w, z in zip(reversed(weights), reversed(pre)):
        g = (g * (1.0 - np.tanh(z) ** 2)) @ w  # dL/dh_{l-1} = W^T (phi'(z) * dL/dh_l)
        log_norms.append(math.log(np.linalg.norm(g)))
    return np.array(log_norms[::-1]), [float(np.var(z)) for z in pre]


@pytest.mark.parametrize(("sw", "sb", "phase"), [(0.7, 0.05, "ordered"), (2.0, 0.05, "chaotic")])
def test_numpy_network_matches_chi1(sw: float, sb: float, phase: str) -> None:
    depth = 36
    log_norms, variances = _numpy_tanh_mlp_log_norms(
        sw, sb, width=1000, depth=depth, batch=8, seed=7
    )
    mf = mean_field("tanh", sw, sb)
    assert mf.phase == phase
    # the forward pass sits at the fixed point
    assert np.mean(variances) == pytest.approx(mf.q_star, rel=0.03)
    ratios = np.exp(2 * (log_norms[:-1] - log_norms[1:]))  # ||g_{l-1}||^2 / ||g_l||^2
    assert np.mean(ratios[5:]) == pytest.approx(mf.chi_1, rel=0.03)

    flow = SimpleNamespace(
        log_grad_norms=log_norms, model=SimpleNamespace(activations=["tanh"] * depth)
    )
    cmp = compare_to_theory(flow, sw, sb)
    assert isinstance(cmp, TheoryComparison)
    assert cmp.measured_log_gain.shape == (depth,)
    np.testing.assert_allclose(np.exp(cmp.measured_log_gain), ratios, rtol=1e-12)
    assert cmp.theory_log_gain == pytest.approx(math.log(mf.chi_1), rel=1e-14)
    assert cmp.mean_log_gain == pytest.approx(np.mean(np.log(ratios[5:])), rel=1e-12)
    assert cmp.mean_gain_ratio == pytest.approx(1.0, abs=0.03)
    assert "ratio" in repr(cmp) and phase in repr(cmp)


def test_compare_to_theory_options_and_pandas() -> None:
    log_norms = np.log(np.array([8.0, 4.0, 2.0, 1.0]))  # gain (1/2)^-2 = 4 per layer backwards
    flow = SimpleNamespace(log_grad_norms=log_norms)
    cmp = compare_to_theory(flow, 1.5, 0.1, activation="tanh", burn_in=0)
    np.testing.assert_allclose(cmp.measured_log_gain, 2 * math.log(2.0))
    assert cmp.mean_gain_ratio == pytest.approx(4.0 / cmp.chi_1)
    # Activation objects with name / params (vgcore.Activation) are accepted
    act = SimpleNamespace(name="leaky_relu", params={"negative_slope": 0.2})
    flow2 = SimpleNamespace(log_grad_norms=log_norms, model=SimpleNamespace(activations=[act] * 3))
    assert compare_to_theory(flow2, 1.0, 0.0, burn_in=1).chi_1 == pytest.approx(0.52)
    pd = pytest.importorskip("pandas")
    df = cmp.to_pandas()
    assert isinstance(df, pd.DataFrame) and list(df["layer"]) == [1, 2, 3]
    assert set(df.columns) >= {"measured_log_gain", "theory_log_gain", "gain_ratio", "burn_in"}


# ------------------------------------------------------------------------------------------
# vectorisation and the phase diagram
def test_mean_field_broadcasts() -> None:
    sw = np.array([[0.5], [1.5], [2.5]])
    sb = np.array([0.0, 0.1])
    mf = mean_field("tanh", sw, sb)
    assert isinstance(mf, MeanField) and mf.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            one = mean_field("tanh", float(sw[i, 0]), float(sb[j]))
            assert isinstance(one.chi_1, float) and isinstance(one.phase, str)
            assert mf.chi_1[i, j] == pytest.approx(one.chi_1, rel=1e-14)
            assert mf.c_star[i, j] == pytest.approx(one.c_star, rel=1e-12, abs=1e-13)
            assert mf.phase[i, j] == one.phase
    d = mf.to_dict()
    assert set(d) >= {"q_star", "chi_1", "c_star", "chi_c", "xi_q", "xi_c", "phase", "activation"}
    assert "shape=(3, 2)" in repr(mf) and "ordered" in repr(mf)
    assert mf.chi1 is mf.chi_1


def test_phase_diagram_400x400_agrees_with_mean_field() -> None:
    sw = np.linspace(0.5, 4.0, 400)
    sb = np.linspace(0.0, 0.5, 400)
    t0 = time.perf_counter()
    pd = phase_diagram("tanh", sw, sb)
    elapsed = time.perf_counter() - t0
    t0 = time.perf_counter()
    phase_diagram("tanh", sw, sb)
    warm = time.perf_counter() - t0
    print(
        f"\nphase_diagram tanh 400x400: {elapsed:.3f} s (first call), {warm:.3f} s (cached tables)"
    )
    assert isinstance(pd, PhaseDiagram)
    assert pd.chi_1.shape == pd.xi_c.shape == pd.q_star.shape == (400, 400)
    assert pd.critical_line.shape == (400,)
    assert {"ordered", "chaotic"} <= set(np.unique(pd.phase))
    rng = np.random.default_rng(3)
    idx = [(0, 57), (399, 399), *zip(rng.integers(0, 400, 10), rng.integers(0, 400, 10))]
    for i, j in idx:
        mf = mean_field("tanh", sw[j], sb[i])
        assert pd.q_star[i, j] == pytest.approx(mf.q_star, rel=1e-11, abs=1e-300)
        assert pd.chi_1[i, j] == pytest.approx(mf.chi_1, rel=1e-11)
        assert pd.c_star[i, j] == pytest.approx(mf.c_star, rel=1e-8, abs=1e-9)
        assert pd.chi_c[i, j] == pytest.approx(mf.chi_c, rel=1e-8)
        assert pd.xi_c[i, j] == pytest.approx(mf.xi_c, rel=1e-6)
        assert pd.phase[i, j] == mf.phase
    for i in (0, 100, 399):
        assert pd.critical_line[i] == pytest.approx(critical_sigma_w2("tanh", sb[i]), rel=1e-10)
    assert pd.critical_line[0] == 1.0


@pytest.mark.parametrize("act", ["elu", "gelu", "sigmoid", "relu"])
def test_phase_diagram_other_activations(act: str) -> None:
    sw = np.linspace(0.2, 5.0, 23)
    sb = np.array([0.0, 0.05, 0.4])
    pd = phase_diagram(act, sw, sb)
    ref = phase_diagram(act, sw, sb, method="quadrature")
    finite = np.isfinite(ref.q_star)
    np.testing.assert_array_equal(np.isfinite(pd.q_star), finite)
    np.testing.assert_allclose(pd.q_star[finite], ref.q_star[finite], rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(pd.chi_1, ref.chi_1, rtol=1e-10)
    np.testing.assert_allclose(pd.chi_c, ref.chi_c, rtol=1e-8)
    np.testing.assert_array_equal(pd.phase, ref.phase)
    np.testing.assert_allclose(pd.critical_line, ref.critical_line, rtol=1e-9)
    assert pd.chi1 is pd.chi_1 and pd.critical_sigma_w2 is pd.critical_line


def test_phase_diagram_to_pandas() -> None:
    pd_mod = pytest.importorskip("pandas")
    pd = phase_diagram("tanh", [0.5, 1.5, 2.5], [0.0, 0.1])
    df = pd.to_pandas()
    assert isinstance(df, pd_mod.DataFrame) and len(df) == 6
    assert "PhaseDiagram(tanh" in repr(pd)


# ------------------------------------------------------------------------------------------
# inputs
def test_aliases_and_parameters() -> None:
    assert mean_field("swish", 1.5, 0.1).chi_1 == mean_field("silu", 1.5, 0.1).chi_1
    assert mean_field("linear", 0.5, 0.1).q_star == pytest.approx(0.2)
    assert mean_field("leaky_relu", 1.0, 0.0, negative_slope=0.5).chi_1 == pytest.approx(0.625)
    assert mean_field("elu", 1.0, 0.1, alpha=2.0).activation == "elu(alpha=2)"
    assert "tanh" in ACTIVATIONS and len(ACTIVATIONS) == 11


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda: mean_field("tanhh", 1.0, 0.0),
            ValueError,
            r"activation must be one of .*tanh.*got 'tanhh'",
        ),
        (
            lambda: mean_field("tanh", -1.0, 0.0),
            ValueError,
            r"sigma_w2 must be finite and >= 0, got -1.0",
        ),
        (
            lambda: mean_field("tanh", 1.0, float("nan")),
            ValueError,
            r"sigma_b2 must be finite and >= 0, got NaN",
        ),
        (
            lambda: mean_field("tanh", [1.0, -2.0], 0.0),
            ValueError,
            r"sigma_w2 .* got -2.0 \(first at index \[1\]\)",
        ),
        (lambda: mean_field("tanh", np.inf, 0.0), ValueError, r"sigma_w2 must be finite"),
        (lambda: mean_field("tanh", "1", 0.0), TypeError, r"sigma_w2 must be"),
        (
            lambda: mean_field("relu", 1.0, 0.0, alpha=1.0),
            ValueError,
            r"'relu' has no parameter\(s\) alpha",
        ),
        (lambda: mean_field("softplus", 1.0, 0.0, beta=-1.0), ValueError, r"beta must be > 0"),
        (lambda: mean_field("tanh", [1.0, 2.0], [0.0, 0.1, 0.2]), ValueError, r"do not broadcast"),
        (lambda: mean_field("tanh", 1.0, 0.0, tol=-1), ValueError, r"tol must be"),
        (lambda: mean_field(3, 1.0, 0.0), TypeError, r"activation must be an activation name"),
        (lambda: critical_sigma_w2("gelu", -0.1), ValueError, r"sigma_b2 must be finite and >= 0"),
        (lambda: phase_diagram("tanh", [[1.0]], [0.0]), ValueError, r"sigma_w2 must be 1-D"),
        (lambda: phase_diagram("tanh", [1.0], [0.0], method="mc"), ValueError, r"method must be"),
    ],
)
def test_bad_input_raises_clearly(call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_compare_to_theory_bad_input() -> None:
    flow = SimpleNamespace(
        log_grad_norms=np.zeros(4), model=SimpleNamespace(activations=["tanh", "relu", "tanh"])
    )
    with pytest.raises(ValueError, match=r"one activation in every layer; .* relu, tanh"):
        compare_to_theory(flow, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"burn_in must be < L = 3"):
        compare_to_theory(flow, 1.0, 0.0, activation="tanh", burn_in=3)
    with pytest.raises(ValueError, match=r"log_grad_norms must have shape \(L\+1,\)"):
        compare_to_theory(SimpleNamespace(log_grad_norms=np.zeros(1)), 1.0, 0.0, activation="tanh")
    with pytest.raises(ValueError, match=r"flow.model.activations is missing"):
        compare_to_theory(SimpleNamespace(log_grad_norms=np.zeros(3)), 1.0, 0.0)
    with pytest.raises(ValueError, match=r"activations\[1\] must be one of"):
        bad = SimpleNamespace(
            log_grad_norms=np.zeros(3), model=SimpleNamespace(activations=["tanh", "foo"])
        )
        compare_to_theory(bad, 1.0, 0.0)


def test_theory_imports_nothing_else_from_vgcore() -> None:
    """vgcore.theory must work without the compiled core: only vgcore.theory imports."""
    for path in THEORY_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only (lazy imports inside functions are fine)
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for n in names:
                assert not n.startswith("vgcore") or n.startswith("vgcore.theory"), (path.name, n)

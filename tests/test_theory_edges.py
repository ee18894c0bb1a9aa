"""Mean-field theory at the edges of its input range, and the ``vgcore phase`` command.

Oracles are independent of the implementation: scipy.integrate.quad in the pre-activation
variable ``u`` (where the Gaussian density is flat over the region in which phi differs from
its asymptote), closed forms (the sign kernel of tanh at huge variance, odd activations at
``sigma_b2 = 0``, the small-``q`` laws ``q* = sqrt(sigma_b2 / 2)`` of tanh and
``q^1.5`` of elu at the bifurcation), Parseval against 2-D quadrature, finite differences.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, special

from vgcore import cli
from vgcore.theory import ACTIVATIONS, critical_sigma_w2, mean_field, phase_diagram
from vgcore.theory._activations import SELU_ALPHA, SELU_SCALE, resolve_activation
from vgcore.theory._quadrature import expect_1d
from vgcore.theory.phases import phase_diagram_around

FMAX = float(np.finfo(np.float64).max)
_K = math.sqrt(2.0 / math.pi)


# ------------------------------------------------------------------------------------------
# independent reference: phi, phi' and the asymptotes a_+- + m_+- u, written out here
def _phi(name: str, u: float) -> float:
    if name == "tanh":
        return math.tanh(u)
    if name == "sigmoid":
        return float(special.expit(u))
    if name == "elu":
        return u if u > 0 else math.expm1(u)
    if name == "selu":
        return SELU_SCALE * (u if u > 0 else SELU_ALPHA * math.expm1(u))
    if name == "softplus":
        return u if u > 20 else math.log1p(math.exp(u))
    if name == "silu":
        return u * float(special.expit(u))
    if name == "gelu":
        return u * float(special.ndtr(u))
    if name == "gelu_tanh":
        return 0.5 * u * (1.0 + math.tanh(_K * (u + 0.044715 * u**3)))
    raise KeyError(name)


def _dphi(name: str, u: float) -> float:
    if name == "tanh":
        return 1.0 - math.tanh(u) ** 2
    if name == "sigmoid":
        s = float(special.expit(u))
        return s * (1.0 - s)
    if name == "elu":
        return 1.0 if u > 0 else math.exp(u)
    if name == "selu":
        return SELU_SCALE * (1.0 if u > 0 else SELU_ALPHA * math.exp(u))
    if name == "softplus":
        return 1.0 if u > 20 else float(special.expit(u))
    if name == "silu":
        s = float(special.expit(u))
        return s * (1.0 + u * (1.0 - s))
    if name == "gelu":
        return float(special.ndtr(u)) + u * math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    if name == "gelu_tanh":
        t = math.tanh(_K * (u + 0.044715 * u**3))
        return 0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * _K * (1.0 + 3 * 0.044715 * u * u)
    raise KeyError(name)


# (a_minus, a_plus, m_minus, m_plus)
_ASYMPTOTE = {
    "tanh": (-1.0, 1.0, 0.0, 0.0),
    "sigmoid": (0.0, 1.0, 0.0, 0.0),
    "elu": (-1.0, 0.0, 0.0, 1.0),
    "selu": (-SELU_SCALE * SELU_ALPHA, 0.0, 0.0, SELU_SCALE),
    "softplus": (0.0, 0.0, 0.0, 1.0),
    "silu": (0.0, 0.0, 0.0, 1.0),
    "gelu": (0.0, 0.0, 0.0, 1.0),
    "gelu_tanh": (0.0, 0.0, 0.0, 1.0),
}
UNBOUNDED = ("elu", "selu", "softplus", "silu", "gelu", "gelu_tanh")


def _local(f, q: float) -> float:
    """``E[f(u)]``, ``u ~ N(0, q)``, for ``f`` negligible beyond ``|u| = 80``."""
    dens = 1.0 / math.sqrt(2.0 * math.pi * q)

    def g(u: float) -> float:
        return f(u) * math.exp(-u * u / (2.0 * q)) * dens

    pieces = [-80.0, -20.0, -5.0, -1.0, 0.0, 1.0, 5.0, 20.0, 80.0]
    with warnings.catch_warnings():  # QUADPACK flags roundoff at 1e-13: the result stands
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        return sum(
            integrate.quad(g, a, b, limit=400, epsabs=0.0, epsrel=1e-13)[0]
            for a, b in zip(pieces[:-1], pieces[1:])
        )


def _reference(name: str, sw: float, sb: float) -> tuple[float, float, float]:
    """``(q*, chi_1, chi_q)`` for ``q* >~ 1e4`` from u-space quadrature of the localised parts.

    ``V = E[psi^2] + E[phi^2 - psi^2]`` with ``E[psi^2] = c0 + kappa q`` exactly, ``D = kappa
    + E[phi'^2 - m^2]`` and ``dV/dq = kappa + E[(phi^2 - psi^2) (u^2 / q - 1)] / (2 q)``.
    """
    am, ap, mm, mp = _ASYMPTOTE[name]
    c0, kappa = 0.5 * (am * am + ap * ap), 0.5 * (mm * mm + mp * mp)

    def g(u: float) -> float:
        psi = ap + mp * u if u > 0 else am + mm * u
        return _phi(name, u) ** 2 - psi * psi

    def gd(u: float) -> float:
        m = mp if u > 0 else mm
        return _dphi(name, u) ** 2 - m * m

    q = (sw * c0 + sb) / (1.0 - sw * kappa)
    for _ in range(6):  # contraction ~1/sqrt(q)
        q = (sw * (c0 + _local(g, q)) + sb) / (1.0 - sw * kappa)
    chi_1 = sw * (kappa + _local(gd, q))
    w = kappa + _local(lambda u: g(u) * (u * u / q - 1.0), q) / (2.0 * q)
    return q, chi_1, sw * w


# ------------------------------------------------------------------------------------------
# the reported cases
def test_tanh_at_huge_weight_variance_is_deeply_chaotic() -> None:
    """Was q* = inf, chi_1 = 0, "ordered" at 1e50; xi_q NaN at 1e30."""
    for sw in (1e30, 1e50, 1e200, 1e308, FMAX):
        mf = mean_field("tanh", sw)
        assert mf.phase == "chaotic"
        assert mf.q_star == pytest.approx(sw, abs=0.0, rel=1e-14)  # q* = sw E[tanh^2] ~ sw
        # chi_1 = sw E[sech^4] ~ sw (4/3) / sqrt(2 pi q*) (relative corrections 1/q*)
        assert mf.chi_1 == pytest.approx(
            math.sqrt(sw) * (4 / 3) / math.sqrt(2 * math.pi), rel=1e-13
        )
        # odd activation without bias: c* = 0 and chi_c = sw E[sech^2]^2 -> 2 / pi
        assert abs(mf.c_star) < 1e-13 and mf.chi_c == pytest.approx(2 / math.pi, abs=0.0, rel=1e-13)
        for v in (mf.chi_q, mf.xi_q, mf.xi_c):
            assert math.isfinite(v) and v > 0
        # chi_q = sw dV/dq = sw / (sqrt(2 pi) q^1.5) (V ~ 1 - 2 / sqrt(2 pi q))
        log_chi_q = math.log(sw) - 0.5 * math.log(2 * math.pi) - 1.5 * math.log(sw)
        assert mf.xi_q == pytest.approx(-1 / log_chi_q, abs=0.0, rel=1e-12)


@pytest.mark.parametrize(
    ("name", "sw", "sb"),
    [
        ("tanh", 1e8, 0.0),
        ("tanh", 1e40, 3e39),
        ("tanh", 1e15, 1e35),
        ("sigmoid", 1e8, 1e6),
        ("sigmoid", 1e40, 0.0),
        ("sigmoid", 3e38, 1e40),
        *((name, 1.0, 1e40) for name in UNBOUNDED),
        *((name, 1.9 if name != "selu" else 1.5, 1e8) for name in UNBOUNDED),
    ],
)
def test_large_variance_matches_u_space_quadrature(name: str, sw: float, sb: float) -> None:
    q, chi_1, chi_q = _reference(name, sw, sb)
    mf = mean_field(name, sw, sb)
    assert mf.q_star == pytest.approx(q, abs=0.0, rel=1e-12)
    assert mf.chi_1 == pytest.approx(chi_1, abs=0.0, rel=1e-11)
    assert mf.chi_q == pytest.approx(chi_q, abs=0.0, rel=1e-8)
    assert mf.xi_q == pytest.approx(-1 / math.log(chi_q), abs=0.0, rel=1e-8)


def test_constants_of_the_large_q_expansions() -> None:
    """int (phi^2 - psi^2) du and int (phi'^2 - m^2) du against closed forms / scipy."""
    q = 2.0**100
    scale = math.sqrt(2 * math.pi * q)
    closed = {
        "tanh": (-2.0, 4 / 3),
        "sigmoid": (-1.0, 1 / 6),
        "elu": (-1.5, 0.5),
        "selu": (-1.5 * (SELU_SCALE * SELU_ALPHA) ** 2, 0.5 * (SELU_SCALE * SELU_ALPHA) ** 2),
    }
    for name in _ASYMPTOTE:
        out = expect_1d(resolve_activation(name), np.array([q]), ("Vg", "Dx"))
        am, ap, mm, mp = _ASYMPTOTE[name]

        def g(u: float, name: str = name, asym: tuple = (am, ap, mm, mp)) -> float:
            a_m, a_p, m_m, m_p = asym
            psi = a_p + m_p * u if u > 0 else a_m + m_m * u
            return _phi(name, u) ** 2 - psi * psi

        def gd(u: float, name: str = name, slopes: tuple = (mm, mp)) -> float:
            return _dphi(name, u) ** 2 - (slopes[1] if u > 0 else slopes[0]) ** 2

        ref = closed.get(name) or (
            _local(g, 1e300) * 1e150 * math.sqrt(2 * math.pi),
            _local(gd, 1e300) * 1e150 * math.sqrt(2 * math.pi),
        )
        assert out["Vg"][0] * scale == pytest.approx(ref[0], abs=0.0, rel=1e-12), name
        assert out["Dx"][0] * scale == pytest.approx(ref[1], abs=0.0, rel=1e-12), name


def test_sign_kernel_at_huge_variance_with_bias() -> None:
    """tanh at q* ~ 1e300: the correlation map is (sw (2/pi) asin(c) + sb) / q* (to 1e-150)."""
    sw, sb = 1e300, 2e299
    mf = mean_field("tanh", sw, sb)
    q = sw + sb
    c = optimize.brentq(
        lambda c: (sw * 2 / math.pi * math.asin(c) + sb) / q - c, 0, 0.999, xtol=1e-16
    )
    assert mf.c_star == pytest.approx(c, abs=0.0, rel=1e-12)
    assert mf.chi_c == pytest.approx(
        sw / q * 2 / math.pi / math.sqrt(1 - c * c), abs=0.0, rel=1e-12
    )


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_flat_correlation_moments_match_2d_quadrature(name: str) -> None:
    """Parseval (1-D Fourier integrals) against the 2-D Gauss-Legendre rule at sqrt(q) = 2^60."""
    from vgcore.theory._fixed_points import _flat_moments
    from vgcore.theory._quadrature import expect_2d_scaled

    act = resolve_activation(name)
    da = act.offsets[1] - act.offsets[0]
    x = 2.0**60
    sigma = np.array([1e-4, 1e-2, 0.3, 2.0, 40.0, 3e3, 1e7])
    theta = np.arcsin(sigma / x)
    d = 2 * np.sin(theta / 2) ** 2
    phi_r, phi_p = _flat_moments(act, sigma)
    d_r, p_scaled = expect_2d_scaled(act, np.full(d.size, x), d)
    flat_dr = phi_r / (math.sqrt(2 * math.pi) * x) + da**2 * (theta - np.sin(theta)) / (2 * np.pi)
    np.testing.assert_allclose(d_r, flat_dr, rtol=1e-11)
    np.testing.assert_allclose(p_scaled / x, phi_p / math.sqrt(2 * math.pi), rtol=1e-12)
    # limits: Phi_P(0) = int phi'^2, Phi_R ~ da^2 sigma / sqrt(2 pi) for large sigma
    gd = 4 / 3 if name == "tanh" else 1 / 6
    big_r, small_p = _flat_moments(act, np.array([1e200, 1e-200]))
    assert small_p[1] == pytest.approx(gd, abs=0.0, rel=1e-14)
    assert big_r[0] == pytest.approx(da**2 * 1e200 / math.sqrt(2 * math.pi), abs=0.0, rel=1e-14)


def test_correlations_continuous_across_the_large_q_switch() -> None:
    """Flat forms above sqrt(q*) = 2^50, 2-D quadrature below: no step at the seam."""
    for sb_ratio in (0.0, 1e-5, 3e-3):
        sw = np.array([2.0**100 * (1 - 1e-9), 2.0**100 * (1 + 1e-9)])
        mf = mean_field("tanh", sw, sb_ratio * sw)
        np.testing.assert_allclose(mf.chi_c[0], mf.chi_c[1], rtol=1e-8)
        np.testing.assert_allclose(mf.c_star[0], mf.c_star[1], rtol=1e-8, atol=1e-13)


def test_variance_beyond_the_float_range() -> None:
    """q* > 1.8e308: reported inf, every other field that of the finite fixed point."""
    mf = mean_field("tanh", FMAX, FMAX)
    assert math.isinf(mf.q_star) and mf.phase == "chaotic"
    # q* = 2 FMAX: chi_1 = sw (4/3) / sqrt(2 pi q*) = sqrt(FMAX / 2) (4/3) / sqrt(2 pi)
    assert mf.chi_1 == pytest.approx(math.sqrt(FMAX / 2) * (4 / 3) / math.sqrt(2 * math.pi))
    # sign kernel with sw / q* = sb / q* = 1/2
    c = optimize.brentq(lambda c: 0.5 * 2 / math.pi * math.asin(c) + 0.5 - c, 0, 0.999, xtol=1e-16)
    assert mf.c_star == pytest.approx(c, abs=0.0, rel=1e-12)
    mf = mean_field("relu", 1.5, FMAX)  # q* = 4 FMAX: ordered, chi_1 exact
    assert math.isinf(mf.q_star) and mf.chi_1 == 0.75 and mf.c_star == 1.0


# ------------------------------------------------------------------------------------------
# small q
def test_tiny_variances_near_the_bifurcation() -> None:
    # tanh at sw = 1: V = q - 2 q^2 + ..., so q* = sqrt(sb / 2)
    for sb in (1e-300, 1e-100, 1e-40):
        assert mean_field("tanh", 1.0, sb).q_star == pytest.approx(
            math.sqrt(sb / 2), rel=1e-12, abs=0.0
        )
    # elu at sw = 1: V = q - 2 q^1.5 / sqrt(2 pi) + ..., so q* = (sb sqrt(2 pi) / 2)^(2/3)
    for sb in (1e-300, 1e-60):
        want = (sb * math.sqrt(2 * math.pi) / 2) ** (2 / 3)
        assert mean_field("elu", 1.0, sb).q_star == pytest.approx(want, rel=1e-10, abs=0.0)
    # away from it: q* = sb / (1 - sw) (was reported as 0 below 2^-50)
    assert mean_field("tanh", 0.5, 1e-20).q_star == pytest.approx(2e-20, rel=1e-15, abs=0.0)
    assert mean_field("tanh", 0.5, 1e-300).q_star == pytest.approx(2e-300, rel=1e-15, abs=0.0)
    # no bias: exactly 0 (a gap that underflows to -0 is no fixed point)
    for name, sw in (("tanh", 1.0), ("tanh", 0.5), ("elu", 1.0), ("gelu", 2.0)):
        mf = mean_field(name, sw, 0.0)
        assert mf.q_star == 0.0 and mf.phase in ("ordered", "critical"), (name, sw)
    mf = mean_field("tanh", 1.0, 0.0)
    assert mf.phase == "critical" and math.isinf(mf.xi_c) and math.isinf(mf.xi_q)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("tanh", {}),
        ("sigmoid", {}),
        ("elu", {}),
        ("elu", {"alpha": 0.4}),
        ("selu", {}),
        ("softplus", {}),
        ("softplus", {"beta": 3.0}),
        ("softplus", {"threshold": 0.0}),
        ("softplus", {"threshold": -1.0}),
        ("silu", {}),
        ("gelu", {}),
        ("gelu_tanh", {}),
    ],
)
def test_small_q_series_match_quadrature(name: str, params: dict[str, float]) -> None:
    from vgcore.theory._fixed_points import q_tiny, small_q_d_series, small_q_series

    act = resolve_activation(name, params)
    v, e = small_q_series(act), small_q_d_series(act)
    assert act.taylor is not None and v is not None and e is not None
    # Taylor coefficients: remainder O(u^7)
    for side, sign in ((0, -1.0), (1, 1.0)):
        u = sign * 0.02 * act.scale
        series = math.fsum(c * u**k for k, c in enumerate(act.taylor[side]))
        assert abs(float(act.phi(np.array([u]))[0]) - series) <= 1e-10 * act.scale
    # the moments at the switch point, against the quadrature
    q = np.array([q_tiny(act) * 0.999])
    ref = expect_1d(act, q, ("V", "D"))
    r = math.sqrt(q[0])
    v_series = math.fsum(c * r**n for n, c in enumerate(v))
    d_series = math.fsum(c * r**n for n, c in enumerate(e))
    assert v_series == pytest.approx(ref["V"][0], abs=0.0, rel=1e-14)
    assert d_series == pytest.approx(ref["D"][0], abs=0.0, rel=1e-14)


def test_softplus_threshold_zero_slope_of_length_map() -> None:
    """A threshold of 0 puts the jump of phi on the kink at 0: it was counted twice in dV/dq."""
    act = resolve_activation("softplus", {"threshold": 0.0})
    for q in (1e-4, 0.3, 3.0):
        h = 1e-5 * q
        v = expect_1d(act, np.array([q - h, q + h]), ("V",))["V"]
        w = expect_1d(act, np.array([q]), ("W",))["W"][0]
        assert w == pytest.approx((v[1] - v[0]) / (2 * h), abs=0.0, rel=1e-7)


# ------------------------------------------------------------------------------------------
# conventions where the variance diverges, depth scales, critical line
def test_divergent_variance_conventions() -> None:
    for name, sw, sb in (("relu", 3.0, 0.0), ("identity", 2.0, 0.5), ("gelu", 10.0, 0.0)):
        mf = mean_field(name, sw, sb)
        chi = sw * resolve_activation(name).kappa_inf
        assert math.isinf(mf.q_star) and mf.chi_1 == pytest.approx(chi)
        assert mf.chi_q == pytest.approx(chi) and mf.xi_q == pytest.approx(-1 / math.log(chi))
        assert mf.c_star == 1.0 and mf.chi_c == 1.0 and math.isinf(mf.xi_c)
    mf = mean_field("relu", 2.0, 0.0)  # every length preserved: the iteration stays at 1
    assert mf.q_star == 1.0 and math.isinf(mf.xi_q) and math.isinf(mf.xi_c)


def test_depth_scales_where_the_slopes_underflow() -> None:
    """sw * E[phi'^2] below the smallest float: the depth scale comes from the logarithms."""
    mf = mean_field("tanh", 1e-300, 1e300)
    assert mf.chi_1 == 0.0  # 1e-300 * 0.53e-150 underflows...
    log_chi = math.log(1e-300) + math.log((4 / 3) / math.sqrt(2 * math.pi * 1e300))
    assert mf.xi_c == pytest.approx(-1 / log_chi, abs=0.0, rel=1e-13)  # ...its depth scale does not
    assert 0 < mf.xi_q < mf.xi_c


def test_critical_line_is_the_first_crossing() -> None:
    """gelu and elu with a bias cross chi_1 = 1 below 1 / kappa and touch 1 again there."""
    for name, sb in (("gelu", 1.0), ("elu", 0.05)):
        crit = critical_sigma_w2(name, sb)
        assert crit < 2.0 - 1e-3
        assert mean_field(name, crit, sb).chi_1 == pytest.approx(1.0, abs=1e-12)
        assert mean_field(name, crit * (1 - 1e-6), sb).phase == "ordered"
        line = phase_diagram(name, [1.0, 2.0], [sb]).critical_line[0]
        assert line == pytest.approx(crit, abs=0.0, rel=1e-10)
    # bounded activations: the critical sigma_w2 grows like sqrt(sigma_b2)
    crit = critical_sigma_w2("tanh", 1e300)
    assert mean_field("tanh", crit, 1e300).chi_1 == pytest.approx(1.0, abs=0.0, rel=1e-12)


def test_phase_diagram_beyond_the_tables() -> None:
    sw = np.array([1e-300, 0.5, 3.0, 1e40, 1e300])
    sb = np.array([0.0, 1e-250, 1e35, FMAX])
    pd = phase_diagram("tanh", sw, sb)
    for i, b in enumerate(sb):
        mf = mean_field("tanh", sw, b)
        np.testing.assert_allclose(pd.q_star[i], mf.q_star, rtol=1e-11)
        np.testing.assert_allclose(pd.chi_1[i], mf.chi_1, rtol=1e-11)
        np.testing.assert_allclose(pd.chi_c[i], mf.chi_c, rtol=1e-8)
        np.testing.assert_array_equal(pd.phase[i], mf.phase)
    empty = phase_diagram_around("tanh")  # no points: the critical region (was a TypeError)
    assert empty.sigma_w2.max() == 4.0 and empty.sigma_b2.max() == 0.5


# ------------------------------------------------------------------------------------------
# the property
_LOG_SIGMA = st.one_of(
    st.just(0.0),
    st.floats(-300.0, 308.0).map(lambda e: 10.0**e),
    st.just(FMAX),
    st.floats(-3.0, 3.0).map(lambda e: 10.0**e),
)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(ACTIVATIONS), sw=_LOG_SIGMA, sb=_LOG_SIGMA)
def test_every_quantity_is_a_number_and_the_phase_follows_chi_1(
    name: str, sw: float, sb: float
) -> None:
    mf = mean_field(name, sw, sb)
    vals = {
        k: getattr(mf, k) for k in ("q_star", "chi_1", "chi_q", "c_star", "chi_c", "xi_q", "xi_c")
    }
    assert not any(math.isnan(v) for v in vals.values()), vals
    assert mf.q_star >= 0.0 and mf.chi_1 >= 0.0 and mf.chi_c >= 0.0
    assert 0.0 <= mf.c_star <= 1.0
    assert math.isfinite(mf.chi_c) and math.isfinite(mf.c_star)
    if mf.chi_1 > 1.0 + mf.tol:
        assert mf.phase == "chaotic"
    elif mf.chi_1 < 1.0 - mf.tol:
        assert mf.phase == "ordered"
    else:
        assert mf.phase == "critical"
    if mf.phase != "chaotic" and math.isfinite(mf.q_star):
        assert mf.c_star == 1.0 and mf.chi_c == mf.chi_1
    if mf.phase == "chaotic" and math.isfinite(mf.q_star):
        assert mf.chi_c <= 1.0 + 1e-12 and mf.xi_c > 0  # c* attracts
    # the depth scales follow their definition wherever the slopes are normal floats
    for chi, xi in ((mf.chi_q, mf.xi_q), (mf.chi_c, mf.xi_c)):
        if 1e-300 < abs(chi) < 1e300 and abs(chi) != 1.0:
            assert xi == pytest.approx(-1 / math.log(abs(chi)), abs=0.0, rel=1e-12)
        if chi == 1.0:
            assert math.isinf(xi) and xi > 0


# ------------------------------------------------------------------------------------------
# vgcore phase
@pytest.mark.parametrize(
    ("argv", "first"),
    [
        ([], "tanh: critical sigma_w2 = 1 at sigma_b2 = 0"),
        (["--activation", "tanh"], "tanh: critical sigma_w2 = 1 at sigma_b2 = 0"),
        (["--sigma-b2", "0.05"], "tanh: critical sigma_w2 = 1.761 at sigma_b2 = 0.05"),
        (
            ["--activation", "relu", "--sigma-w2", "3"],
            "relu: critical sigma_w2 = 2 at sigma_b2 = 0",
        ),
        (["--sigma-w2", "1e50"], "tanh: critical sigma_w2 = 1 at sigma_b2 = 0"),
    ],
)
def test_phase_command_defaults(argv: list[str], first: str, capsys) -> None:
    assert cli.main(["phase", *argv]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == first
    if "--sigma-w2" in argv:
        assert "chaotic" in out[1]


def test_phase_command_json_and_plot(tmp_path, capsys) -> None:
    import json

    pytest.importorskip("matplotlib")
    png = tmp_path / "phase.png"
    assert cli.main(["phase", "--sigma-w2", "1e50", "--json", "--plot", str(png)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["phase"] == "chaotic" and doc["q_star"] == pytest.approx(1e50)
    assert png.stat().st_size > 0
    # refused before any work
    assert cli.main(["phase", "--plot", str(tmp_path / "missing" / "p.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sigma-w2", "-1"], "--sigma-w2: sigma_w2 must be finite and >= 0, got -1.0"),
        (["--sigma-w2", "nan"], "--sigma-w2: sigma_w2 must be finite and >= 0, got NaN"),
        (["--sigma-b2", "inf"], "--sigma-b2: sigma_b2 must be finite and >= 0, got inf"),
        (["--sigma-b2", "-0.5"], "--sigma-b2: sigma_b2 must be finite and >= 0, got -0.5"),
        (["--activation", "tanhh"], "--activation: activation must be one of"),
        (["--sigma-w2", "abc"], "argument --sigma-w2: invalid float value"),
    ],
)
def test_phase_command_bad_values_exit_2(argv: list[str], message: str, capsys) -> None:
    assert cli.main(["phase", *argv]) == 2
    assert message in capsys.readouterr().err

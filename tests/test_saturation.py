"""Gated cells in deep saturation: gradient norms, per-step Jacobians (spectra, singular values,
Lyapunov exponents) and saturation counts stay right where the gates' pre-activations are far
beyond the point (about 17 in float32, 37 in float64) at which 1 - sigmoid(a) and 1 - tanh(a)^2
round to 0 when formed from the gate value.

Oracle: the same cells in mpmath at 50 digits, derivatives written from the pre-activation
(sigmoid'(a) = s(a) s(-a), 1 - z = s(-a_z), tanh'(a) = sech(a)^2), per-step Jacobians formed
explicitly and all logs taken in mpmath (no under/overflow at any depth)."""

from __future__ import annotations

import numpy as np
import pytest

import vgcore
from vgcore import GRU, LSTM, MLP

mpmath = pytest.importorskip("mpmath")
mp = mpmath.mp

DTYPES = [np.float64, np.float32]
# |pre-activation| of the input-driven gates: past the cancellation point of each dtype, and
# (float32) below 40, where tanh' = 4 e^{-2|a|} would itself be subnormal.
MAGNITUDE = {np.float64: (40.0, 80.0), np.float32: (18.0, 36.0)}


def _sig(a):
    return 1 / (1 + mpmath.exp(-a))


def _dsig(a):
    return _sig(a) * _sig(-a)


def _dtanh(a):
    return 1 / mpmath.cosh(a) ** 2


def _saturated_model(cls, dtype, n=3, seed=0, closed=False):
    """One input, x = +-1: each gate's pre-activation is +-w_ih + b + (W_hh h), with |w_ih| in
    the dtype's saturation band and the recurrent part small. closed: the LSTM forget gate /
    GRU update gate driven by its bias alone, far on the closed (0) side, so that the state
    Jacobian goes only through the other (saturated) gates."""
    lo, hi = MAGNITUDE[dtype]
    rng = np.random.default_rng(seed)
    g = cls.gates
    wih = rng.uniform(lo, hi, (g * n, 1)) * rng.choice([-1.0, 1.0], (g * n, 1))
    whh = 0.5 * rng.standard_normal((g * n, n))
    bih = 0.5 * rng.standard_normal(g * n)
    bhh = 0.5 * rng.standard_normal(g * n)
    if closed:
        wih[n : 2 * n] = 0.0
        bih[n : 2 * n] = -rng.uniform(lo, hi, n) - (hi + 10.0 if cls is GRU else 0.0)
    model = cls(*(a.astype(dtype) for a in (wih, whh, bih, bhh)))
    x = rng.choice([-1.0, 1.0], (6, 2, 1)).astype(dtype)
    return model, x


def _mp_trajectory(model, x, b):
    """Per-step state Jacobians (mpmath matrices), the final state and the per-step gate
    derivatives (scaled by the gate's maximal derivative) of batch element b."""
    mp.dps = 50
    m = model.astype(np.float64)
    n = m.hidden_size
    g = model.gates
    wih = mpmath.matrix(m.weight_ih.tolist())
    whh = mpmath.matrix(m.weight_hh.tolist())
    bias = [mpmath.mpf(float(m.bias_ih[k])) for k in range(g * n)]
    bhh = [mpmath.mpf(float(m.bias_hh[k])) for k in range(g * n)]
    lstm = model.kind == "lstm"
    h = [mpmath.mpf(0)] * n
    c = [mpmath.mpf(0)] * n
    jacs, derivs = [], []
    for t in range(x.shape[0]):
        xt = [mpmath.mpf(float(v)) for v in np.asarray(x[t, b], dtype=np.float64)]
        ax = [sum(wih[k, j] * xt[j] for j in range(len(xt))) + bias[k] for k in range(g * n)]
        q = [sum(whh[k, j] * h[j] for j in range(n)) + bhh[k] for k in range(g * n)]
        if lstm:
            a = [ax[k] + q[k] for k in range(4 * n)]
            ai, af, ag, ao = (a[k * n : (k + 1) * n] for k in range(4))
            i = [_sig(v) for v in ai]
            f = [_sig(v) for v in af]
            gg = [mpmath.tanh(v) for v in ag]
            o = [_sig(v) for v in ao]
            cn = [f[j] * c[j] + i[j] * gg[j] for j in range(n)]
            tc = [mpmath.tanh(v) for v in cn]
            hn = [o[j] * tc[j] for j in range(n)]
            J = mpmath.zeros(2 * n, 2 * n)
            for j in range(n):
                for k in range(n):
                    dcdh = (
                        c[j] * _dsig(af[j]) * whh[n + j, k]
                        + gg[j] * _dsig(ai[j]) * whh[j, k]
                        + i[j] * _dtanh(ag[j]) * whh[2 * n + j, k]
                    )
                    J[n + j, k] = dcdh
                    J[j, k] = o[j] * _dtanh(cn[j]) * dcdh + tc[j] * _dsig(ao[j]) * whh[3 * n + j, k]
                J[n + j, n + j] = f[j]
                J[j, n + j] = o[j] * _dtanh(cn[j]) * f[j]
            d = (
                [_dsig(v) * 4 for v in ai + af]
                + [_dtanh(v) for v in ag]
                + [_dsig(v) * 4 for v in ao]
            )
            h, c = hn, cn
        else:
            ar = [ax[j] + q[j] for j in range(n)]
            az = [ax[n + j] + q[n + j] for j in range(n)]
            r = [_sig(v) for v in ar]
            z = [_sig(v) for v in az]
            zc = [_sig(-v) for v in az]
            an = [ax[2 * n + j] + r[j] * q[2 * n + j] for j in range(n)]
            nn = [mpmath.tanh(v) for v in an]
            hn = [zc[j] * nn[j] + z[j] * h[j] for j in range(n)]
            J = mpmath.zeros(n, n)
            for j in range(n):
                for k in range(n):
                    dn = _dtanh(an[j]) * (
                        r[j] * whh[2 * n + j, k] + q[2 * n + j] * _dsig(ar[j]) * whh[j, k]
                    )
                    J[j, k] = zc[j] * dn + (h[j] - nn[j]) * _dsig(az[j]) * whh[n + j, k]
                J[j, j] += z[j]
            d = [_dsig(v) * 4 for v in ar + az] + [_dtanh(v) for v in an]
            h = hn
        jacs.append(J)
        derivs.append(d)
    return jacs, h, derivs


def _log_norm(v, n):
    return float(mpmath.log(mpmath.sqrt(sum(v[j] ** 2 for j in range(n)))))


def _mp_log_grad_norms(model, x, b):
    """log ||dL/dh_t||, t = 0..T, L = 0.5 ||h_T||^2 (for an LSTM dL/dc_T = 0)."""
    jacs, h, _ = _mp_trajectory(model, x, b)
    n = model.hidden_size
    dim = jacs[0].rows
    g = mpmath.matrix([h[j] if j < n else 0 for j in range(dim)])
    out = [_log_norm(g, n)]
    for J in reversed(jacs):
        g = J.T * g
        out.append(_log_norm(g, n))
    return np.array(out[::-1])


def _tolerance(dtype):
    # float32: the forward states carry relative errors ~1e-7, so pre-activations of ~30 are
    # off by ~3e-6 absolutely, and so is the log of every saturated derivative.
    return (1e-10, 1e-10) if dtype == np.float64 else (1e-4, 2e-5)


def _assert_logs_close(got, want, dtype, what):
    atol, rtol = _tolerance(dtype)
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    err = np.abs(got - want)
    assert np.all(err <= atol + rtol * np.abs(want)), f"{what}: {got} vs the oracle's {want}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_gradient_flow_in_deep_saturation(cls, dtype) -> None:
    model, x = _saturated_model(cls, dtype)
    flow = vgcore.gradient_flow(model, x)
    assert flow.log_grad_norms.shape == (x.shape[0] + 1,)
    # per sample: the oracle's norms of each batch element, combined
    want = np.array([_mp_log_grad_norms(model, x, b) for b in range(x.shape[1])])
    combined = np.log(np.sqrt(np.sum(np.exp(2 * (want - want.max(0))), axis=0))) + want.max(0)
    # the gradient really went through saturated gates: decades below the loss gradient
    assert combined[0] < combined[-1] - 15
    _assert_logs_close(flow.log_grad_norms, combined, dtype, f"{cls.__name__} log_grad_norms")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_gate_saturation_counts_in_deep_saturation(cls, dtype) -> None:
    model, x = _saturated_model(cls, dtype)
    # the level sits between gates that are saturated and gates that are far more so
    thr = 1e-22 if dtype == np.float64 else 1e-12
    flow = vgcore.gradient_flow(model, x, saturation_threshold=thr)
    g, n, B = model.gates, model.hidden_size, x.shape[1]
    want = np.zeros((x.shape[0], g))
    for b in range(B):
        _, _, derivs = _mp_trajectory(model, x, b)
        for t, d in enumerate(derivs):
            below = np.array([float(v) < thr for v in d]).reshape(g, n)
            want[t] += below.sum(axis=1) / (B * n)
    assert 0 < want.mean() < 1, "the threshold must split the gates"
    np.testing.assert_allclose(flow.gate_saturation, want, atol=1e-12)


def _mp_top_rates(model, x, b, burn_in):
    """log ||J_t q_t|| for t >= burn_in, q_t the propagated direction of a generic start (the
    top Lyapunov direction once the burn-in has aligned it: each step's Jacobian here is close
    to rank one), and log sigma_max of the whole product d h_T / d h_0."""
    jacs, _, _ = _mp_trajectory(model, x, b)
    q = mpmath.matrix([1] * jacs[0].rows) / mpmath.sqrt(jacs[0].rows)
    rates = []
    for t, J in enumerate(jacs):
        v = J * q
        nv = mpmath.norm(v)
        if t >= burn_in:
            rates.append(float(mpmath.log(nv)))
        q = v / nv
    prod = jacs[0]
    for J in jacs[1:]:
        prod = J * prod
    top = float(mpmath.log(max(mpmath.svd_r(prod, compute_uv=False))))
    return np.array(rates), top


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_lyapunov_and_singular_values_in_deep_saturation(cls, dtype) -> None:
    """Top Lyapunov exponent (fast path) and top singular value of d h_T / d h_0 (tangent
    model JVPs), one unit: the state is (h, c) for an LSTM, h for a GRU."""
    model, x = _saturated_model(cls, dtype, n=1, seed=3, closed=True)
    B = x.shape[1]
    burn_in = 2
    ly = vgcore.lyapunov(model, x, k=1, burn_in=burn_in)
    sv = vgcore.jacobian_singular_values(model, x)
    for b in range(B):
        rates, top = _mp_top_rates(model, x, b, burn_in)
        assert rates.min() < -20, "some steps go only through saturated gates"
        _assert_logs_close(ly.exponents[b, 0], rates.mean(), dtype, "top exponent")
        _assert_logs_close(sv.log_singular_values[b, 0], top, dtype, "top log singular value")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["exact", "power"])
@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_step_jacobian_spectra_in_deep_saturation(cls, method, dtype) -> None:
    """Largest singular value of each step's Jacobian (the JVP, and with power the VJP)."""
    model, x = _saturated_model(cls, dtype, n=2, seed=5, closed=True)
    spec = vgcore.jacobian_spectrum(model, x, method=method)
    want = np.zeros((x.shape[0], x.shape[1]))
    for b in range(x.shape[1]):
        jacs, _, _ = _mp_trajectory(model, x, b)
        for t, J in enumerate(jacs):
            want[t, b] = float(mpmath.log(max(mpmath.svd_r(J, compute_uv=False))))
    assert np.any(want < -15), "some steps go only through saturated gates"
    # the matrix-free solvers stop at their tolerance (1e-10 / 1e-5 relative)
    atol, rtol = _tolerance(dtype)
    if method == "power":
        atol = max(atol, 1e-9 if dtype == np.float64 else 1e-4)
    got = spec.log_sigma_max
    err = np.abs(got - want)
    assert np.all(err <= atol + rtol * np.abs(want)), f"log sigma_max {got} vs {want}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_highway_gates_in_deep_saturation(dtype) -> None:
    """Width-1 highway MLP, h' = t a + (1 - t) h with a = tanh(w h + b), t = sigmoid(v h + c),
    all pre-activations in the saturation band: dh'/dh = t tanh'(.) w + s(-(v h + c))
    + (a - h) sigmoid'(.) v, each term tiny, the gradient norm their product."""
    lo, hi = MAGNITUDE[dtype]
    rng = np.random.default_rng(2)
    depth = 5
    sign = rng.choice([-1.0, 1.0], depth)
    w = [np.array([[v]]) for v in sign * rng.uniform(lo, hi, depth)]
    b = [np.zeros(1) for _ in range(depth)]
    gw = [np.array([[v]]) for v in rng.uniform(lo, hi, depth)]
    gb = [np.zeros(1) for _ in range(depth)]
    model = MLP(
        [a.astype(dtype) for a in w],
        [a.astype(dtype) for a in b],
        "tanh",
        block="highway",
        gate_weights=[a.astype(dtype) for a in gw],
        gate_biases=[a.astype(dtype) for a in gb],
    )
    x = np.ones((1, 1), dtype=dtype)
    mp.dps = 50
    h = mpmath.mpf(1)
    derivs = []
    for l in range(depth):
        wl, vl = (mpmath.mpf(float(np.float64(a[l][0, 0]))) for a in (w, gw))
        pre, gpre = wl * h, vl * h
        a = mpmath.tanh(pre)
        t = _sig(gpre)
        derivs.append(t * _dtanh(pre) * wl + _sig(-gpre) + (a - h) * _dsig(gpre) * vl)
        h = t * a + _sig(-gpre) * h
    # L = h_L^2 / 2: log |dL/dh_l| = log |h_L| + sum of the later layers' log |derivative|
    logs = [float(mpmath.log(abs(h)))]
    for d in reversed(derivs):
        logs.append(logs[-1] + float(mpmath.log(abs(d))))
    want = np.array(logs[::-1])
    assert want[0] < want[-1] - 30
    flow = vgcore.gradient_flow(model, x)
    _assert_logs_close(flow.log_grad_norms, want, dtype, "highway log_grad_norms")

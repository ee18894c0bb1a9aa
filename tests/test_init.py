"""Initialisation schemes (vgcore.init) against torch.nn.init and their documented effects."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vgcore.init import (
    NEGATIVE_MEAN_CRITICAL_SCALE,
    SCHEMES,
    Init,
    calculate_gain,
    initialize_dense,
    initialize_recurrent,
    resolve_init,
)

stats = pytest.importorskip("scipy.stats")

OUT, IN = 512, 384  # non-square so fan_in and fan_out differ
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
TORCH_CLASS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
ALL_SCHEMES = sorted(SCHEMES)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def dense(init, out=OUT, inp=IN, *, seed=0, dtype=np.float64, **kw):
    return initialize_dense(init, out, inp, rng=rng(seed), dtype=dtype, **kw)


def assert_same_distribution(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    """Two-sample KS test plus mean / variance agreement (fixed seeds: deterministic)."""
    a, b = np.ravel(ours).astype(np.float64), np.ravel(theirs).astype(np.float64)
    ks = stats.ks_2samp(a, b)
    assert ks.pvalue > 1e-4, f"{what}: KS statistic {ks.statistic:.4f}, p={ks.pvalue:.2e}"
    va, vb = a.var(), b.var()
    assert abs(va / vb - 1) < 0.03, f"{what}: variance {va:.4e} vs torch {vb:.4e}"
    tol = 6 * math.sqrt(vb / b.size) + 6 * math.sqrt(va / a.size)
    assert abs(a.mean() - b.mean()) < tol, f"{what}: mean {a.mean():.3e} vs {b.mean():.3e}"


def assert_uniform_bound(ours: np.ndarray, bound: float, what: str) -> None:
    m = float(np.max(np.abs(ours)))
    assert m <= bound, f"{what}: max |w| {m} exceeds bound {bound}"
    assert m > 0.995 * bound, f"{what}: max |w| {m} well inside bound {bound}"


# ----------------------------------------------------------------------------------------
# calculate_gain
# ----------------------------------------------------------------------------------------
TORCH_GAIN_CASES = [
    ("linear", None),
    ("conv1d", None),
    ("conv2d", None),
    ("conv3d", None),
    ("conv_transpose1d", None),
    ("conv_transpose2d", None),
    ("conv_transpose3d", None),
    ("sigmoid", None),
    ("tanh", None),
    ("relu", None),
    ("selu", None),
    ("leaky_relu", None),
    ("leaky_relu", 0.2),
    ("leaky_relu", 0),
    ("leaky_relu", 3),
    ("leaky_relu", -0.5),
]


@pytest.mark.needs_torch
@pytest.mark.parametrize(("name", "param"), TORCH_GAIN_CASES)
def test_calculate_gain_matches_torch(torch, name, param):
    assert calculate_gain(name, param) == pytest.approx(
        torch.nn.init.calculate_gain(name, param), rel=1e-15
    )


def test_calculate_gain_table():
    assert calculate_gain("identity") == 1.0
    assert calculate_gain("tanh") == pytest.approx(5 / 3)
    assert calculate_gain("selu") == 0.75
    assert calculate_gain("leaky_relu", 0.3) == pytest.approx(math.sqrt(2 / 1.09))


@pytest.mark.needs_torch
def test_calculate_gain_rejects_like_torch(torch):
    for bad in ("gelu", "softplus"):
        with pytest.raises(ValueError, match="nonlinearity must be one of"):
            calculate_gain(bad)
        with pytest.raises(ValueError):
            torch.nn.init.calculate_gain(bad)
    with pytest.raises(ValueError, match="negative_slope must be a real number"):
        calculate_gain("leaky_relu", True)
    with pytest.raises(ValueError):
        torch.nn.init.calculate_gain("leaky_relu", True)


# ----------------------------------------------------------------------------------------
# dense schemes vs torch.nn.init
# ----------------------------------------------------------------------------------------
def _torch_weight(torch, fill, out=OUT, inp=IN):
    torch.manual_seed(1234)
    w = torch.empty(out, inp, dtype=torch.float64)
    fill(w)
    return w.numpy()


# (case id, our init, activation, activation_param, torch filler, uniform bound or None)
DENSE_CASES = [
    (
        "xavier_uniform_auto_tanh",
        "xavier_uniform",
        "tanh",
        None,
        lambda t, w: t.nn.init.xavier_uniform_(w, gain=t.nn.init.calculate_gain("tanh")),
        5 / 3 * math.sqrt(6 / (IN + OUT)),
    ),
    (
        "glorot_uniform_gain",
        {"name": "glorot_uniform", "gain": 0.7},
        "relu",
        None,
        lambda t, w: t.nn.init.xavier_uniform_(w, gain=0.7),
        0.7 * math.sqrt(6 / (IN + OUT)),
    ),
    (
        "xavier_normal_gain",
        Init.xavier_normal(gain=0.5),
        "identity",
        None,
        lambda t, w: t.nn.init.xavier_normal_(w, gain=0.5),
        None,
    ),
    (
        "xavier_normal_auto_leaky",
        Init.xavier_normal(),
        "leaky_relu",
        0.2,
        lambda t, w: t.nn.init.xavier_normal_(w, gain=t.nn.init.calculate_gain("leaky_relu", 0.2)),
        None,
    ),
    (
        "kaiming_uniform_auto_relu",
        "kaiming_uniform",
        "relu",
        None,
        lambda t, w: t.nn.init.kaiming_uniform_(w, nonlinearity="relu"),
        math.sqrt(2) * math.sqrt(3 / IN),
    ),
    (
        "he_uniform_fan_out",
        Init.kaiming_uniform(mode="fan_out", nonlinearity="relu"),
        "identity",
        None,
        lambda t, w: t.nn.init.kaiming_uniform_(w, mode="fan_out", nonlinearity="relu"),
        math.sqrt(2) * math.sqrt(3 / OUT),
    ),
    (
        "kaiming_normal_leaky_a",
        {"name": "kaiming_normal", "mode": "fan_out", "nonlinearity": "leaky_relu", "a": 0.2},
        "identity",
        None,
        lambda t, w: t.nn.init.kaiming_normal_(w, a=0.2, mode="fan_out", nonlinearity="leaky_relu"),
        None,
    ),
    (
        "kaiming_normal_torch_default_call",
        Init.kaiming_normal(nonlinearity="leaky_relu"),  # a defaults to 0, as in torch
        "tanh",
        None,
        lambda t, w: t.nn.init.kaiming_normal_(w),
        None,
    ),
    (
        "he_normal_auto_leaky_slope",
        "he_normal",
        "leaky_relu",
        0.1,
        lambda t, w: t.nn.init.kaiming_normal_(w, a=0.1, nonlinearity="leaky_relu"),
        None,
    ),
    (
        "lecun_uniform",
        "lecun_uniform",
        "relu",
        None,
        lambda t, w: t.nn.init.kaiming_uniform_(w, nonlinearity="linear"),
        math.sqrt(3 / IN),
    ),
    (
        "lecun_normal",
        "lecun_normal",
        "relu",
        None,
        lambda t, w: t.nn.init.kaiming_normal_(w, nonlinearity="linear"),
        None,
    ),
    (
        "gaussian",
        Init.gaussian(sigma_w2=2.0, sigma_b2=0.05),
        "tanh",
        None,
        lambda t, w: t.nn.init.normal_(w, 0.0, math.sqrt(2.0 / IN)),
        None,
    ),
    (
        "negative_mean_normal",
        "negative_mean",
        "sigmoid",
        None,
        lambda t, w: t.nn.init.normal_(w, -NEGATIVE_MEAN_CRITICAL_SCALE / IN, math.sqrt(1 / IN)),
        None,
    ),
    (
        "negative_mean_uniform",
        Init.negative_mean(mean_scale=4.0, sigma_w2=0.5, distribution="uniform"),
        "sigmoid",
        None,
        lambda t, w: t.nn.init.uniform_(
            w, -4.0 / IN - math.sqrt(1.5 / IN), -4.0 / IN + math.sqrt(1.5 / IN)
        ),
        None,
    ),
]


@pytest.mark.needs_torch
@pytest.mark.parametrize(
    ("init", "activation", "param", "fill", "bound"),
    [c[1:] for c in DENSE_CASES],
    ids=[c[0] for c in DENSE_CASES],
)
def test_dense_scheme_matches_torch_init(torch, init, activation, param, fill, bound):
    w, _ = dense(init, activation=activation, activation_param=param)
    ref = _torch_weight(torch, lambda t: fill(torch, t))
    assert w.shape == (OUT, IN)
    assert_same_distribution(w, ref, f"{init} weight")
    if bound is not None:
        assert_uniform_bound(w, bound, f"{init} weight")


# Same seed => the same standard draws, so each scheme's weight is an exact multiple of the
# LeCun weight (std 1/sqrt(fan_in)): this pins every gain/fan rule to rounding error.
EXACT_SCALE_CASES = [
    ("kaiming_normal", "relu", None, math.sqrt(2)),
    ("kaiming_normal", "leaky_relu", 0.2, math.sqrt(2 / 1.04)),
    ("kaiming_normal", "leaky_relu", None, math.sqrt(2 / (1 + 0.01**2))),
    ("kaiming_normal", "identity", None, 1.0),
    ("kaiming_normal", "sigmoid", None, 1.0),
    ("kaiming_normal", "tanh", None, 5 / 3),
    ("kaiming_normal", "selu", None, 0.75),
    (Init.kaiming_normal(nonlinearity="leaky_relu"), "tanh", None, math.sqrt(2)),
    (Init.kaiming_normal(nonlinearity="leaky_relu", a=0.5), "relu", None, math.sqrt(2 / 1.25)),
    (Init.kaiming_normal(a=0.5), "leaky_relu", 0.1, math.sqrt(2 / 1.25)),
    (Init.kaiming_normal(a=0.5), "relu", None, math.sqrt(2)),  # a only affects leaky_relu
    (Init.kaiming_normal(mode="fan_out"), "relu", None, math.sqrt(2 * IN / OUT)),
    ("xavier_normal", "tanh", None, 5 / 3 * math.sqrt(2 * IN / (IN + OUT))),
    (Init.xavier_normal(gain=0.3), "tanh", None, 0.3 * math.sqrt(2 * IN / (IN + OUT))),
    (Init.gaussian(sigma_w2=2.5), "tanh", None, math.sqrt(2.5)),
    ("kaiming_uniform", "relu", None, math.sqrt(2)),
    (Init.kaiming_uniform(nonlinearity="leaky_relu"), "tanh", None, math.sqrt(2)),
    ("xavier_uniform", "relu", None, math.sqrt(2) * math.sqrt(2 * IN / (IN + OUT))),
    ("default", "relu", None, 1 / math.sqrt(3)),
]


@pytest.mark.parametrize(("init", "activation", "param", "scale"), EXACT_SCALE_CASES)
def test_scheme_scale_is_exact(init, activation, param, scale):
    w, _ = dense(init, activation=activation, activation_param=param, seed=9)
    uniform = "uniform" in resolve_init(init).name or resolve_init(init).name == "default"
    ref, _ = dense("lecun_uniform" if uniform else "lecun_normal", seed=9)
    np.testing.assert_allclose(w, scale * ref, rtol=1e-12, atol=1e-15)


def test_negative_mean_weight_mean_and_gaussian_bias_variance():
    w, _ = dense("negative_mean", activation="sigmoid")
    mu = -NEGATIVE_MEAN_CRITICAL_SCALE / IN
    assert abs(w.mean() - mu) < 6 * math.sqrt(1 / IN / w.size)
    assert w.mean() < 0
    _, b = dense(Init.gaussian(sigma_w2=1.0, sigma_b2=0.25), out=200_000, inp=1)
    assert b.var() == pytest.approx(0.25, rel=0.02)
    _, b0 = dense("gaussian", out=1000)
    assert np.all(b0 == 0.0)  # sigma_b2 defaults to 0


def test_negative_mean_critical_scale_solves_its_equation():
    c = NEGATIVE_MEAN_CRITICAL_SCALE
    # fixed point m* = s(-c m*) of the mean recursion, and unit gain c s'(z*) = 1 there
    m = 0.5
    for _ in range(2000):
        m = 0.5 * m + 0.5 / (1 + math.exp(c * m))  # damped: the plain map sits at gain -1
    z = -c * m
    assert m == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-9)
    assert c * m * (1 - m) == pytest.approx(1.0, abs=1e-9)
    assert c == pytest.approx(5.8696, abs=1e-4)


# ----------------------------------------------------------------------------------------
# default == PyTorch's own modules
# ----------------------------------------------------------------------------------------
@pytest.mark.needs_torch
def test_default_dense_matches_nn_linear(torch):
    torch.manual_seed(0)
    lin = torch.nn.Linear(IN, OUT, dtype=torch.float64)
    w, b = dense(None)
    _, b2 = dense("default", seed=1)
    bound = 1 / math.sqrt(IN)
    assert_same_distribution(w, lin.weight.detach().numpy(), "default weight")
    assert_uniform_bound(w, bound, "default weight")
    assert np.max(np.abs(lin.weight.detach().numpy())) <= bound
    # biases: 512 per layer is few, so pool several layers for the distribution test
    bs = np.concatenate([b, b2, *(dense(None, seed=s)[1] for s in range(2, 40))])
    tb = np.concatenate([torch.nn.Linear(IN, OUT).bias.detach().numpy() for _ in range(40)])
    assert_same_distribution(bs, tb, "default bias")
    assert_uniform_bound(bs, bound, "default bias")


@pytest.mark.needs_torch
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_default_recurrent_matches_torch_module(torch, cell):
    inp, hid = 96, 256
    torch.manual_seed(0)
    mod = getattr(torch.nn, TORCH_CLASS[cell])(inp, hid, dtype=torch.float64)
    ours = initialize_recurrent(None, cell, inp, hid, rng=rng(), dtype=np.float64)
    bound = 1 / math.sqrt(hid)
    for key in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        ref = getattr(mod, f"{key}_l0").detach().numpy()
        assert ours[key].shape == ref.shape
        assert_uniform_bound(ours[key], bound, f"{cell} {key}")
        assert np.max(np.abs(ref)) <= bound
        if ref.ndim == 2:
            assert_same_distribution(ours[key], ref, f"{cell} {key}")
        else:
            assert ours[key].var() == pytest.approx(bound**2 / 3, rel=0.2)


# ----------------------------------------------------------------------------------------
# orthogonal
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(512, 512), (256, 512), (512, 256)])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_orthogonal_is_orthogonal(shape, gain):
    w, _ = initialize_dense(Init.orthogonal(gain=gain), *shape, rng=rng(3), dtype=np.float64)
    assert w.shape == shape
    gram = w @ w.T if shape[0] <= shape[1] else w.T @ w
    np.testing.assert_allclose(gram, gain**2 * np.eye(min(shape)), rtol=0, atol=1e-10)


@pytest.mark.needs_torch
@pytest.mark.parametrize("shape", [(512, 384), (384, 512)])
def test_orthogonal_entries_match_torch(torch, shape):
    w, _ = initialize_dense(Init.orthogonal(gain=1.5), *shape, rng=rng(), dtype=np.float64)
    ref = _torch_weight(torch, lambda t: torch.nn.init.orthogonal_(t, gain=1.5), *shape)
    assert_same_distribution(w, ref, f"orthogonal {shape}")


def _first_entry_positive_fraction(draw) -> float:
    return float(np.mean([draw(np.random.default_rng(s))[0, 0] > 0 for s in range(400)]))


def test_orthogonal_sign_fix_makes_it_haar():
    # Haar: by symmetry Q[0, 0] is positive half the time. Plain Householder QR without the
    # sign fix always returns Q[0, 0] < 0 (LAPACK makes R[0, 0] = -sign(a00) |a_0|).
    ours = _first_entry_positive_fraction(
        lambda g: initialize_dense("orthogonal", 6, 6, rng=g, dtype=np.float64)[0]
    )
    unfixed = _first_entry_positive_fraction(lambda g: np.linalg.qr(g.standard_normal((6, 6)))[0])
    assert 0.4 < ours < 0.6
    assert unfixed in (0.0, 1.0)
    wide = _first_entry_positive_fraction(
        lambda g: initialize_dense("orthogonal", 4, 7, rng=g, dtype=np.float64)[0]
    )
    assert 0.4 < wide < 0.6


# ----------------------------------------------------------------------------------------
# seeding, dtype, shapes
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_dense_seeding_and_dtype(scheme, dtype):
    a = initialize_dense(scheme, 7, 5, rng=rng(11), dtype=dtype, activation="tanh")
    b = initialize_dense(scheme, 7, 5, rng=rng(11), dtype=dtype, activation="tanh")
    c = initialize_dense(scheme, 7, 5, rng=rng(12), dtype=dtype, activation="tanh")
    f64 = initialize_dense(scheme, 7, 5, rng=rng(11), dtype=np.float64, activation="tanh")
    for x, y, r, shape in zip(a, b, f64, [(7, 5), (7,)]):
        assert x.dtype == dtype and x.shape == shape and x.flags.c_contiguous
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, r.astype(dtype))
    if scheme != "identity":
        assert not np.array_equal(a[0], c[0])


@pytest.mark.needs_torch
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_recurrent_shapes_seeding_dtype(torch, cell, scheme, dtype):
    inp, hid = 5, 7
    mod = getattr(torch.nn, TORCH_CLASS[cell])(inp, hid)
    p = initialize_recurrent(scheme, cell, inp, hid, rng=rng(5), dtype=dtype)
    q = initialize_recurrent(scheme, cell, inp, hid, rng=rng(5), dtype=dtype)
    r = initialize_recurrent(scheme, cell, inp, hid, rng=rng(6), dtype=dtype)
    assert sorted(p) == ["bias_hh", "bias_ih", "weight_hh", "weight_ih"]
    for key, value in p.items():
        assert value.shape == tuple(getattr(mod, f"{key}_l0").shape), key
        assert value.shape[0] == GATES[cell] * hid
        assert value.dtype == dtype
        np.testing.assert_array_equal(value, q[key])
    assert not np.array_equal(p["weight_ih"], r["weight_ih"])


# ----------------------------------------------------------------------------------------
# recurrent specifics
# ----------------------------------------------------------------------------------------
def test_forget_bias_lands_in_second_quarter():
    n = 16
    p = initialize_recurrent(
        {"name": "default", "forget_bias": 1.0}, "lstm", 3, n, rng=rng(), dtype=np.float64
    )
    ref = initialize_recurrent("default", "lstm", 3, n, rng=rng(), dtype=np.float64)
    assert np.all(p["bias_ih"][n : 2 * n] == 1.0)
    assert np.all(p["bias_hh"][n : 2 * n] == 0.0)
    for sl in (slice(0, n), slice(2 * n, 4 * n)):  # gates i, g, o untouched
        np.testing.assert_array_equal(p["bias_ih"][sl], ref["bias_ih"][sl])
        np.testing.assert_array_equal(p["bias_hh"][sl], ref["bias_hh"][sl])
    assert np.all(np.abs(p["bias_ih"][:n]) <= 1 / 4) and np.ptp(p["bias_ih"][:n]) > 0
    z = initialize_recurrent(
        Init.orthogonal(bias="zeros", forget_bias=2.0), "lstm", 3, n, rng=rng(), dtype=np.float32
    )
    expected = np.zeros(4 * n, dtype=np.float32)
    expected[n : 2 * n] = 2.0
    np.testing.assert_array_equal(z["bias_ih"], expected)
    np.testing.assert_array_equal(z["bias_hh"], np.zeros(4 * n))


@pytest.mark.parametrize("gain", [1.0, 0.9])
def test_identity_gives_identity(gain):
    n = 12
    irnn = initialize_recurrent(
        Init.identity(gain=gain), "rnn", 5, n, rng=rng(), dtype=np.float64, nonlinearity="relu"
    )
    np.testing.assert_array_equal(irnn["weight_hh"], gain * np.eye(n))
    # weight_ih falls back to PyTorch's default U(+-1/sqrt(N))
    assert np.max(np.abs(irnn["weight_ih"])) <= 1 / math.sqrt(n)
    assert np.ptp(irnn["weight_ih"]) > 0
    lstm = initialize_recurrent("irnn", "lstm", 5, n, rng=rng(), dtype=np.float64)
    np.testing.assert_array_equal(lstm["weight_hh"], np.tile(np.eye(n), (4, 1)))
    w, _ = initialize_dense(Init.identity(gain=gain), 6, 6, rng=rng(), dtype=np.float32)
    np.testing.assert_array_equal(w, gain * np.eye(6, dtype=np.float32))
    w, _ = initialize_dense("eye", 3, 5, rng=rng(), dtype=np.float64)
    np.testing.assert_array_equal(w, np.eye(3, 5))


def test_identity_with_given_input_scheme():
    p = initialize_recurrent(
        {"name": "identity", "input": {"name": "gaussian", "sigma_w2": 1e-6}},
        "rnn",
        400,
        300,
        rng=rng(),
        dtype=np.float64,
    )
    np.testing.assert_array_equal(p["weight_hh"], np.eye(300))
    assert p["weight_ih"].var() == pytest.approx(1e-6 / 400, rel=0.03)


def test_recurrent_schemes_apply_per_gate_block():
    n, inp = 32, 20
    p = initialize_recurrent(Init.orthogonal(gain=1.3), "lstm", inp, n, rng=rng(), dtype=np.float64)
    hh, ih = p["weight_hh"], p["weight_ih"]
    for g in range(4):
        blk = hh[g * n : (g + 1) * n]
        np.testing.assert_allclose(blk.T @ blk, 1.69 * np.eye(n), atol=1e-10)
        iblk = ih[g * n : (g + 1) * n]  # 32 x 20: orthonormal columns, times gain
        np.testing.assert_allclose(iblk.T @ iblk, 1.69 * np.eye(inp), atol=1e-10)
    # per block, not over the stacked (4N, N) matrix (which would give hh.T @ hh = gain^2 I)
    np.testing.assert_allclose(hh.T @ hh, 4 * 1.69 * np.eye(n), atol=1e-10)
    # xavier per block uses the block's fans (N, in), not (G*N, in)
    x = initialize_recurrent("xavier_uniform", "gru", 300, 200, rng=rng(), dtype=np.float64)
    bound = math.sqrt(6 / (300 + 200))  # gain 1 for GRU gates
    assert_uniform_bound(x["weight_ih"], bound, "gru xavier ih")
    assert_uniform_bound(x["weight_hh"], math.sqrt(6 / 400), "gru xavier hh")
    r = initialize_recurrent(
        "kaiming_normal", "rnn", 300, 400, rng=rng(), dtype=np.float64, nonlinearity="relu"
    )
    assert r["weight_hh"].var() == pytest.approx(2 / 400, rel=0.02)
    assert r["weight_ih"].var() == pytest.approx(2 / 300, rel=0.02)


def test_input_and_recurrent_overrides():
    n, inp = 24, 40
    p = initialize_recurrent(
        {"name": "orthogonal", "input": "xavier_uniform"},
        "gru",
        inp,
        n,
        rng=rng(),
        dtype=np.float64,
    )
    for g in range(3):
        blk = p["weight_hh"][g * n : (g + 1) * n]
        np.testing.assert_allclose(blk @ blk.T, np.eye(n), atol=1e-10)
        iblk = p["weight_ih"][g * n : (g + 1) * n]
        assert np.max(np.abs(iblk @ iblk.T - np.eye(n))) > 0.1  # not orthogonal
    assert np.max(np.abs(p["weight_ih"])) <= math.sqrt(6 / (inp + n))
    q = initialize_recurrent(
        Init.xavier_normal(recurrent=Init.orthogonal()),
        "rnn",
        inp,
        n,
        rng=rng(),
        dtype=np.float64,
    )
    np.testing.assert_allclose(q["weight_hh"] @ q["weight_hh"].T, np.eye(n), atol=1e-10)
    assert np.max(np.abs(q["weight_ih"] @ q["weight_ih"].T - np.eye(n))) > 0.1


def test_recurrent_gaussian_is_mean_field():
    p = initialize_recurrent(
        Init.gaussian(sigma_w2=1.5, sigma_b2=0.1), "rnn", 500, 600, rng=rng(), dtype=np.float64
    )
    assert p["weight_ih"].var() == pytest.approx(1.5 / 500, rel=0.02)
    assert p["weight_hh"].var() == pytest.approx(1.5 / 600, rel=0.02)
    both = np.concatenate([p["bias_ih"], p["bias_hh"]])
    assert both.var() == pytest.approx(0.1, rel=0.2)


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_bias_options_for_every_scheme(scheme):
    _, b = dense({"name": scheme, "bias": "zeros"}, out=9, inp=4)
    np.testing.assert_array_equal(b, np.zeros(9))
    _, b = dense({"name": scheme, "bias": 0.25}, out=9, inp=4, dtype=np.float32)
    np.testing.assert_array_equal(b, np.full(9, 0.25, dtype=np.float32))
    p = initialize_recurrent(
        {"name": scheme, "bias": -0.5}, "gru", 4, 3, rng=rng(), dtype=np.float64
    )
    np.testing.assert_array_equal(p["bias_ih"], np.full(9, -0.5))
    np.testing.assert_array_equal(p["bias_hh"], np.full(9, -0.5))


def test_non_gaussian_default_bias_is_pytorchs():
    _, b = dense(Init.orthogonal(), out=50_000, inp=100)
    assert_uniform_bound(b, 0.1, "orthogonal default bias")
    assert b.var() == pytest.approx(0.01 / 3, rel=0.03)


# ----------------------------------------------------------------------------------------
# Init / resolve_init
# ----------------------------------------------------------------------------------------
def test_resolve_init_forms_agree():
    a = resolve_init({"name": "he_normal", "mode": "fan_out"})
    b = resolve_init(Init.kaiming_normal(mode="fan_out"))
    c = resolve_init(Init("kaiming_normal", {"mode": "fan_out"}))
    assert a == b == c and hash(a) == hash(b)
    assert a.name == "kaiming_normal" and a.params["mode"] == "fan_out"
    assert resolve_init(None) == resolve_init("default") == resolve_init("PyTorch")
    assert resolve_init(a.to_dict()) == a
    nested = resolve_init({"name": "orthogonal", "input": "xavier_uniform"})
    assert nested.params["input"] == Init.xavier_uniform()
    assert resolve_init(nested.to_dict()) == nested
    with pytest.raises(TypeError):
        a.params["mode"] = "fan_in"  # type: ignore[index]
    assert "kaiming_normal" in repr(a)


def test_same_init_object_gives_same_arrays_as_dict_and_string():
    w1, b1 = dense("xavier_uniform", activation="tanh", seed=4)
    w2, _ = dense({"name": "glorot_uniform"}, activation="tanh", seed=4)
    w3, b3 = dense(Init.xavier_uniform(gain=5 / 3), activation="relu", seed=4)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(w1, w3)
    np.testing.assert_array_equal(b1, b3)


# ----------------------------------------------------------------------------------------
# negative_mean: the documented effect on a deep sigmoid MLP
# ----------------------------------------------------------------------------------------
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _deep_sigmoid_mlp(init, depth=50, width=256, batch=64, seed=0):
    """Forward a positive input batch through ``depth`` sigmoid layers, then backprop a
    random cotangent. Returns per-layer pre-activations and the input-gradient ratio."""
    g = rng(seed)
    x = rng(1000 + seed).random((batch, width))  # positive inputs in [0, 1)
    h, zs, layers = x, [], []
    for _ in range(depth):
        w, b = initialize_dense(init, width, width, rng=g, dtype=np.float64, activation="sigmoid")
        z = h @ w.T + b
        h = _sigmoid(z)
        zs.append(z)
        layers.append((w, h * (1 - h)))
    cot = rng(2000 + seed).standard_normal((batch, width))
    grad = cot
    for w, d in reversed(layers):
        grad = (grad * d) @ w
    return zs, float(np.linalg.norm(grad) / np.linalg.norm(cot))


@pytest.mark.parametrize("seed", [0, 1])
def test_negative_mean_keeps_deep_sigmoid_mlp_trainable(seed):
    zs, grad_ratio = _deep_sigmoid_mlp("negative_mean", seed=seed)
    zs_def, grad_ratio_def = _deep_sigmoid_mlp("default", seed=seed)
    c = NEGATIVE_MEAN_CRITICAL_SCALE
    m_star = (1 - math.sqrt(1 - 4 / c)) / 2  # c m (1 - m) = 1, the root below 1/2
    z_star = -c * m_star  # ~ -1.28
    means = np.array([z.mean() for z in zs])
    # mean pre-activation: negative and bounded in every layer; the mean mode is critical
    # (gain -1), so the input's mean 0.5 decays as a slow period-2 oscillation around z*
    assert np.all((means > -3.5) & (means < 0))
    pair_means = (means[-10:-1] + means[-9:]) / 2
    np.testing.assert_allclose(pair_means, z_star, atol=0.3)
    # forward signal not saturated once past the transient: sigmoid'(z) > 0.018 for |z| < 4
    for z in zs[10:]:
        assert np.mean(np.abs(z) > 4) < 0.01
    last = zs[-1]
    # the input still reaches the last layer (the output varies with the input) ...
    assert last.std(axis=0).mean() > 1e-5
    # ... and the backpropagated gradient is still there after 50 layers
    assert grad_ratio > 1e-6
    # PyTorch's default: also unsaturated, but the input is forgotten and the gradient
    # vanishes (ordered phase: every layer contracts by ~1/7)
    assert np.mean(np.abs(zs_def[-1]) > 4) < 0.01
    assert zs_def[-1].std(axis=0).mean() < 1e-10
    assert grad_ratio_def < 1e-25
    assert grad_ratio > 1e15 * grad_ratio_def


def test_negative_mean_sign_matters():
    # the same weights with the sign flipped (mean +5.87 / fan_in) saturate logistic units
    g = rng()
    h = rng(7).random((64, 256))
    for _ in range(20):
        w, _ = initialize_dense("negative_mean", 256, 256, rng=g, dtype=np.float64)
        z = h @ (-w).T
        h = _sigmoid(z)
    assert z.mean() > 4.0
    assert np.mean(h * (1 - h) < 0.05) > 0.9


# ----------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("init", "match"),
    [
        ("xavier", r"init must be one of: default, gaussian.*got 'xavier'"),
        ({"name": "nope"}, r"init\['name'\] must be one of"),
        ({"gain": 1.0}, "needs a 'name' key"),
        ({"name": "orthogonal", "gian": 1.0}, r"unknown parameter\(s\) 'gian'.*allowed: gain"),
        ({"name": "gaussian", "sigma_w2": -1.0}, r"sigma_w2 must be >= 0; got -1.0"),
        ({"name": "gaussian", "sigma_b2": -0.1}, r"sigma_b2 must be >= 0"),
        ({"name": "gaussian", "sigma_w2": float("nan")}, "finite real number"),
        ({"name": "gaussian", "sigma_b2": 0.1, "bias": "zeros"}, "either sigma_b2 or bias"),
        ({"name": "orthogonal", "gain": -2.0}, r"gain must be >= 0; got -2.0"),
        ({"name": "xavier_normal", "gain": "big"}, "gain must be a finite real number"),
        ({"name": "identity", "gain": -1}, "gain must be >= 0"),
        (
            {"name": "kaiming_normal", "mode": "fan_avg"},
            r"mode must be one of 'fan_in', 'fan_out'; got 'fan_avg'",
        ),
        ({"name": "kaiming_uniform", "nonlinearity": "gelu"}, "nonlinearity must be one of"),
        ({"name": "negative_mean", "mean_scale": -1.0}, "mean_scale must be >= 0"),
        ({"name": "negative_mean", "distribution": "cauchy"}, "distribution must be one of"),
        ({"name": "default", "bias": "ones"}, r"bias must be 'default', 'zeros' or a finite"),
        ({"name": "default", "bias": True}, "bias must be"),
        ({"name": "identity", "input": "bogus"}, r"input must be one of"),
        ({"name": "identity", "input": {"name": "default", "bias": "zeros"}}, "weights only"),
        ({"name": "default", "forget_bias": "one"}, "forget_bias must be a finite real"),
    ],
)
def test_bad_init_raises_value_error(init, match):
    with pytest.raises(ValueError, match=match):
        resolve_init(init)


def test_bad_init_constructor_arguments():
    with pytest.raises(ValueError, match="sigma_w2 must be >= 0"):
        Init.gaussian(sigma_w2=-1.0)
    with pytest.raises(ValueError, match="gain must be >= 0"):
        Init.orthogonal(gain=-0.5)
    with pytest.raises(ValueError, match="mode must be one of"):
        Init.kaiming_uniform(mode="avg")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) 'gain' for init 'lecun_normal'"):
        Init.lecun_normal(gain=2.0)


def test_bad_call_arguments():
    g = rng()
    with pytest.raises(ValueError, match="divides by fan_in, which is 0"):
        initialize_dense("lecun_normal", 4, 0, rng=g, dtype=np.float64)
    with pytest.raises(ValueError, match="divides by fan_out, which is 0"):
        initialize_dense(Init.kaiming_normal(mode="fan_out"), 0, 4, rng=g, dtype=np.float64)
    with pytest.raises(ValueError, match="divides by fan_in"):
        initialize_dense("gaussian", 3, 0, rng=g, dtype=np.float64)
    with pytest.raises(ValueError, match="divides by fan_in"):
        initialize_recurrent("negative_mean", "rnn", 0, 3, rng=g, dtype=np.float64)
    # schemes that do not divide by a fan accept empty layers
    w, b = initialize_dense("orthogonal", 3, 0, rng=g, dtype=np.float64)
    assert w.shape == (3, 0) and b.shape == (3,)
    with pytest.raises(ValueError, match="in_features must be a non-negative integer; got -1"):
        initialize_dense("default", 3, -1, rng=g, dtype=np.float64)
    with pytest.raises(ValueError, match="out_features must be a non-negative integer"):
        initialize_dense("default", 2.5, 3, rng=g, dtype=np.float64)
    with pytest.raises(ValueError, match=r"cell must be one of 'rnn', 'lstm', 'gru'; got 'tcn'"):
        initialize_recurrent("default", "tcn", 3, 3, rng=g, dtype=np.float64)
    with pytest.raises(ValueError, match="nonlinearity must be one of 'tanh', 'relu'"):
        initialize_recurrent("default", "rnn", 3, 3, rng=g, dtype=np.float64, nonlinearity="gelu")
    with pytest.raises(ValueError, match="forget_bias applies to LSTM cells only"):
        initialize_recurrent(
            {"name": "default", "forget_bias": 1.0}, "gru", 3, 3, rng=g, dtype=np.float64
        )
    with pytest.raises(ValueError, match="applies to recurrent cells only"):
        initialize_dense({"name": "orthogonal", "input": "default"}, 3, 3, rng=g, dtype=np.float64)
    with pytest.raises(ValueError, match="activation 'gelu' has no recommended gain"):
        initialize_dense("xavier_uniform", 3, 3, rng=g, dtype=np.float64, activation="gelu")
    with pytest.raises(ValueError, match=r"pass gain= .* or nonlinearity="):
        initialize_dense("he_normal", 3, 3, rng=g, dtype=np.float64, activation="silu")
    # explicit gain / nonlinearity lift that restriction
    initialize_dense(
        Init.xavier_uniform(gain=1.0), 3, 3, rng=g, dtype=np.float64, activation="gelu"
    )
    initialize_dense(
        Init.kaiming_normal(nonlinearity="relu"), 3, 3, rng=g, dtype=np.float64, activation="gelu"
    )
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        initialize_dense("default", 3, 3, rng=g, dtype=np.int32)
    with pytest.raises(TypeError, match=r"rng must be a numpy\.random\.Generator"):
        initialize_dense("default", 3, 3, rng=0, dtype=np.float64)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="init must be None, a scheme name"):
        initialize_dense(3, 3, 3, rng=g, dtype=np.float64)  # type: ignore[arg-type]

"""jacobian_spectrum: per-step spectral radius and largest singular value.

Oracles: LAPACK (numpy) on the torch.func.jacrev Jacobian along each trajectory, and closed
forms for linear layers (identity activation: J = W). Matrix-free methods must agree with exact
ones to 1e-6 relative in float64, including non-normal Jacobians and complex dominant pairs.
"""

from __future__ import annotations

import numpy as np
import pytest

import vgcore
from oracles import step_spectra
from tolerances import assert_rel_close

MATRIX_FREE = ["arnoldi", "power"]


def _models():
    rng = np.random.default_rng(0)
    x_mlp = rng.standard_normal((3, 6))
    x_seq = rng.standard_normal((6, 3, 4))
    yield (
        "mlp",
        vgcore.MLP.from_sizes(
            [6, 6, 6, 6], "tanh", seed=1, init={"name": "gaussian", "sigma_w2": 2.0}
        ),
        x_mlp,
    )
    yield (
        "mlp_residual_ln",
        vgcore.MLP.from_sizes([6, 6, 6], "gelu", seed=2, residual=True, norm="layernorm"),
        x_mlp,
    )
    yield "mlp_highway", vgcore.MLP.from_sizes([6, 6, 6], "relu", seed=2, highway=True), x_mlp
    yield (
        "rnn",
        vgcore.RNN.from_sizes(4, 7, seed=1, init={"name": "gaussian", "sigma_w2": 1.5}),
        x_seq,
    )
    yield "lstm", vgcore.LSTM.from_sizes(4, 5, seed=1), x_seq
    yield "gru", vgcore.GRU.from_sizes(4, 6, seed=1), x_seq


MODELS = list(_models())
IDS = [m[0] for m in MODELS]


@pytest.mark.parametrize("case", MODELS, ids=IDS)
def test_exact_matches_lapack_on_jacrev(torch, case):
    _, model, x = case
    rho, sig = step_spectra(torch, model, x)
    res = vgcore.jacobian_spectrum(model, x, method="exact")
    assert res.method == "exact"
    assert res.spectral_radius.shape == sig.shape == (len(res.steps), x.shape[-2])
    assert_rel_close(res.spectral_radius, rho, 1e-10, "spectral radius")
    assert_rel_close(res.sigma_max, sig, 1e-10, "sigma_max")
    assert (res.radius_iterations == 0).all() and res.converged.all()


@pytest.mark.parametrize("method", MATRIX_FREE)
@pytest.mark.parametrize("case", MODELS, ids=IDS)
def test_matrix_free_agrees_with_exact(case, method):
    _, model, x = case
    exact = vgcore.jacobian_spectrum(model, x, method="exact")
    mf = vgcore.jacobian_spectrum(model, x, method=method)
    assert mf.method == method
    assert_rel_close(mf.spectral_radius, exact.spectral_radius, 1e-6, "spectral radius")
    assert_rel_close(mf.sigma_max, exact.sigma_max, 1e-6, "sigma_max")
    assert mf.converged.all() and mf.reliable.all()
    # the matrix-free values themselves, not an exact fallback
    assert not (mf.radius_fallback.any() or mf.sigma_fallback.any())
    assert (mf.radius_iterations > 0).all() and (mf.sigma_iterations > 0).all()
    assert (mf.radius_residuals <= 1e-10).all() and (mf.sigma_residuals <= 1e-10).all()


def _linear(W):
    """A one-layer linear MLP: its Jacobian is W itself."""
    return vgcore.MLP([W], [None], "identity")


def _hard_matrices():
    """(name, W, known spectral radius or None)."""
    rng = np.random.default_rng(3)
    n = 100
    # Strongly non-normal (eigenvector condition ~1e15) with an isolated top eigenvalue 0.9.
    T = np.diag(np.r_[0.9, np.linspace(0.1, 0.6, n - 1)]) + 0.3 * np.triu(
        rng.standard_normal((n, n)), 1
    )
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    yield "non_normal", Q @ T @ Q.T, 0.9
    # Complex dominant pair: a rotation block of modulus 1.2 over a contracting rest.
    D = np.diag(rng.uniform(-0.9, 0.9, n))
    D[:2, :2] = 1.2 * np.array([[np.cos(0.7), -np.sin(0.7)], [np.sin(0.7), np.cos(0.7)]])
    S = rng.standard_normal((n, n))
    yield "complex_pair", S @ D @ np.linalg.inv(S), 1.2
    # Negative real dominant eigenvalue.
    D = np.diag(np.r_[-1.5, rng.uniform(-1.0, 1.0, n - 1)])
    yield "negative_real", S @ D @ np.linalg.inv(S), 1.5
    yield "gaussian", rng.standard_normal((n, n)) / np.sqrt(n), None


HARD = list(_hard_matrices())


@pytest.mark.parametrize("method", ["exact", *MATRIX_FREE])
@pytest.mark.parametrize("case", HARD, ids=[h[0] for h in HARD])
def test_hard_spectra_closed_form(case, method):
    _, W, known = case
    x = np.random.default_rng(0).standard_normal((2, W.shape[0]))
    res = vgcore.jacobian_spectrum(_linear(W), x, method=method)
    rho = np.abs(np.linalg.eigvals(W)).max() if known is None else known
    sig = np.linalg.norm(W, 2)
    assert_rel_close(res.spectral_radius, np.full((1, 2), rho), 1e-6, "spectral radius")
    assert_rel_close(res.sigma_max, np.full((1, 2), sig), 1e-6, "sigma_max")
    assert res.reliable.all() and not (res.radius_fallback.any() or res.sigma_fallback.any())
    if method == "arnoldi":  # a small Krylov space forces restarts
        small = vgcore.jacobian_spectrum(_linear(W), x, method=method, ncv=12)
        assert (small.radius_iterations > 12).all() and not small.radius_fallback.any()
        assert_rel_close(small.spectral_radius, np.full((1, 2), rho), 1e-6, "radius, ncv=12")
        assert_rel_close(small.sigma_max, np.full((1, 2), sig), 1e-6, "sigma_max, ncv=12")


def test_float32_exact_and_matrix_free(torch):
    _, model, x = MODELS[4]  # LSTM
    ref = vgcore.jacobian_spectrum(model, x, method="exact")
    for method in ("exact", "arnoldi", "power"):
        res = vgcore.jacobian_spectrum(model, x, method=method, dtype=np.float32)
        assert res.reliable.all() and not res.radius_fallback.any(), method
        assert_rel_close(res.spectral_radius, ref.spectral_radius, 2e-4, method)
        assert_rel_close(res.sigma_max, ref.sigma_max, 2e-4, method)


def test_width_changing_layers_have_no_radius(torch):
    m = vgcore.MLP.from_sizes([6, 9, 4, 4], "tanh", seed=0)
    x = np.random.default_rng(1).standard_normal((2, 6))
    rho, sig = step_spectra(torch, m, x)
    for method in ("exact", "arnoldi"):
        res = vgcore.jacobian_spectrum(m, x, method=method)
        assert np.isnan(res.spectral_radius[:2]).all() and np.isfinite(res.spectral_radius[2]).all()
        assert_rel_close(
            res.spectral_radius[2], rho[2], 1e-6 if method != "exact" else 1e-10, method
        )
        assert_rel_close(res.sigma_max, sig, 1e-6 if method != "exact" else 1e-10, method)


def test_which_selects_steps_and_h0(torch):
    m = vgcore.LSTM.from_sizes(3, 4, seed=5)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 2, 3))
    h0 = (rng.standard_normal((2, 4)), rng.standard_normal((2, 4)))
    rho, sig = step_spectra(torch, m, x, np.concatenate(h0, axis=1))
    full = vgcore.jacobian_spectrum(m, x, h0=h0)
    assert_rel_close(full.sigma_max, sig, 1e-10, "sigma_max with h0")
    assert_rel_close(full.spectral_radius, rho, 1e-10, "radius with h0")
    for which, idx in [
        ([1, 5], [1, 5]),
        (-1, [7]),
        (slice(2, None, 3), [2, 5]),
        (np.arange(8) % 4 == 0, [0, 4]),
    ]:
        part = vgcore.jacobian_spectrum(m, x, h0=h0, which=which)
        np.testing.assert_array_equal(part.steps, idx)
        np.testing.assert_array_equal(part.sigma_max, full.sigma_max[idx])


def test_auto_picks_exact_for_small_and_arnoldi_for_large():
    x = np.random.default_rng(0).standard_normal((2, 1, 3))
    assert vgcore.jacobian_spectrum(vgcore.RNN.from_sizes(3, 8), x).method == "exact"
    big = vgcore.RNN.from_sizes(3, 600, seed=0)
    res = vgcore.jacobian_spectrum(big, x, which=[1])
    assert res.method == "arnoldi"
    ex = vgcore.jacobian_spectrum(big, x, which=[1], method="exact")
    assert_rel_close(res.spectral_radius, ex.spectral_radius, 1e-6, "N=600 radius")
    assert_rel_close(res.sigma_max, ex.sigma_max, 1e-6, "N=600 sigma")


def test_progress_and_result_helpers():
    m = vgcore.GRU.from_sizes(2, 5, seed=0)
    x = np.random.default_rng(0).standard_normal((10, 3, 2))
    calls = []
    res = vgcore.jacobian_spectrum(m, x, progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1] > 0
    df = res.to_pandas()
    assert len(df) == 30 and set(df.columns) >= {"step", "sample", "spectral_radius", "sigma_max"}
    np.testing.assert_allclose(res.log_sigma_max, np.log(res.sigma_max))
    assert "JacobianSpectrum(gru" in repr(res)
    # sigma_max bounds the spectral radius
    assert (res.spectral_radius <= res.sigma_max * (1 + 1e-12)).all()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"method": "lanczos"}, ValueError, "method must be one of"),
        ({"which": [12]}, ValueError, "out of range"),
        ({"which": [0.5]}, TypeError, "which must be"),
        ({"tol": 2.0}, ValueError, "tol must be"),
        ({"max_iter": 0}, ValueError, "max_iter"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    m = vgcore.RNN.from_sizes(2, 4)
    x = np.zeros((12, 1, 2))
    with pytest.raises(exc, match=match):
        vgcore.jacobian_spectrum(m, x, **kwargs)


def test_bad_inputs():
    rnn = vgcore.RNN.from_sizes(2, 4)
    with pytest.raises(ValueError, match="empty sequence"):
        vgcore.jacobian_spectrum(rnn, np.zeros((0, 1, 2)))
    with pytest.raises(ValueError, match="x"):
        vgcore.jacobian_spectrum(rnn, np.zeros((3, 1, 5)))
    x = np.zeros((5, 1, 2))
    x[3, 0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        vgcore.jacobian_spectrum(rnn, x)
    mlp = vgcore.MLP.from_sizes([4, 4], "tanh", norm="batchnorm")
    with pytest.raises(ValueError, match="BatchNorm"):
        vgcore.jacobian_spectrum(mlp, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="h0"):
        vgcore.jacobian_spectrum(
            vgcore.MLP.from_sizes([4, 4]), np.zeros((2, 4)), h0=np.zeros((2, 4))
        )
    with pytest.raises(TypeError, match="model"):
        vgcore.jacobian_spectrum("rnn", x)


def test_state_overflow_names_the_step():
    # A ReLU RNN with a huge recurrent gain overflows float32 after a few steps.
    m = vgcore.RNN.from_sizes(1, 3, nonlinearity="relu", bias=False, dtype=np.float32)
    m.weight_hh = np.full((3, 3), 1e12, np.float32)
    m.weight_ih = np.ones((3, 1), np.float32)
    with pytest.raises(FloatingPointError, match="step"):
        vgcore.jacobian_spectrum(m, np.ones((10, 1, 1), np.float32))

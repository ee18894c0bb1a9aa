"""jacobian_spectrum on extreme and non-normal Jacobians: no crash, no silent wrong number.

Oracles: closed forms (triangular and shift matrices: identity-activation layers, J = W), NumPy
LAPACK in float64 on the same (float32-rounded) matrix, and torch.func.jacrev in float64.
Values beyond the range of the dtype are compared through ``log_sigma_max`` /
``log_spectral_radius``, which the core computes in scaled form.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import vgcore
from oracles import spectral_radius, torch_trajectory_jacobians

METHODS = ["exact", "arnoldi", "power"]
MATRIX_FREE = ["arnoldi", "power"]
# Absolute tolerance on natural logs (= relative tolerance on the values).
LOG_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-6}


def _linear(W):
    return vgcore.MLP([W], activations="identity")


def _shift(n=64, w=1.5):
    W = np.zeros((n, n))
    W[np.arange(1, n), np.arange(n - 1)] = w
    return W


# Every extreme case below, first in a child process: a regression that aborts the process
# (as the power method did) then fails those tests instead of killing pytest.
_RISKY = """
import warnings
import numpy as np, vgcore
warnings.simplefilter("ignore")
W_shift = np.zeros((64, 64))
W_shift[np.arange(1, 64), np.arange(63)] = 1.5
cases = [
    (np.array([[1.0, 1e20], [0.0, 1.0]], np.float32), "identity", 1.0),
    (np.array([[1.0, 1e160], [0.0, 1.0]]), "identity", 1.0),
    (np.array([[1.0, 1e300], [0.0, 1.0]]), "identity", 1.0),
    (np.full((2, 2), 3.0e38, np.float32), "identity", 0.0),
    (np.full((2, 2), 1.0e308), "identity", 0.0),
    (np.diag([1e-30, 2e-30]).astype(np.float32), "identity", 0.0),
    (np.diag([1e-300, 2e-300]), "identity", 0.0),
    (np.diag([6e-42, 1.2e-41]).astype(np.float32), "identity", 0.0),
    (np.diag([1e-310, 2e-310]), "identity", 0.0),
    (np.full((2, 2), 3.3e38, np.float32), "selu", 0.0),
    (W_shift, "identity", 1.0),
]
for W, act, x in cases:
    m = vgcore.MLP([W], activations=act)
    for method in ("exact", "arnoldi", "power"):
        for kw in ({}, {"fallback_max_dim": 0}):
            try:
                vgcore.jacobian_spectrum(m, np.full((1, W.shape[1]), x), method=method, **kw)
            except Exception:
                pass
print("survived")
"""


@pytest.fixture(scope="module")
def no_crash():
    proc = subprocess.run(
        [sys.executable, "-c", _RISKY], capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode != 0 or "survived" not in proc.stdout:
        pytest.fail(
            f"the extreme cases kill the process ({proc.returncode}): {proc.stderr[-2000:]}"
        )


def test_power_overflow_reproducer_does_not_abort():
    # sigma_max^2 = 1e40 overflows float32: this aborted the process (heap corruption after a
    # non-finite Rayleigh-Ritz matrix reached geev), so it runs in a child process.
    code = textwrap.dedent(
        """
        import numpy as np, vgcore
        m = vgcore.MLP([np.array([[1.0, 1e20], [0.0, 1.0]], np.float32)], activations="identity")
        r = vgcore.jacobian_spectrum(m, np.ones((1, 2)), method="power")
        print(repr(float(r.spectral_radius[0, 0])), repr(float(r.log_sigma_max[0, 0])),
              bool(r.reliable[0, 0]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-2000:]}"
    assert "illegal value" not in proc.stderr  # LAPACK never sees a non-finite matrix
    rho, log_sig, reliable = proc.stdout.split()
    W = np.array([[1.0, 1e20], [0.0, 1.0]], np.float32).astype(np.float64)
    assert reliable == "True"
    assert abs(float(rho) - 1.0) <= 1e-6
    assert abs(float(log_sig) - math.log(np.linalg.norm(W, 2))) <= 1e-6


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("dt", "big"),
    [(np.float32, 1e20), (np.float64, 1e160), (np.float64, 1e300)],
    ids=["f32-sigma2-overflows", "f64-sigma2-overflows", "f64-norm2-overflows"],
)
def test_huge_triangular_jacobian(dt, big, method, no_crash):
    # [[1, big], [0, 1]]: a defective eigenvalue 1 (rho = 1 exactly) under a huge sigma_max.
    W = np.array([[1.0, big], [0.0, 1.0]], dt)
    sig = np.linalg.norm(W.astype(np.float64), 2)
    res = vgcore.jacobian_spectrum(_linear(W), np.ones((1, 2)), method=method)
    tol = LOG_TOL[np.dtype(dt)]
    assert abs(res.log_sigma_max[0, 0] - math.log(sig)) <= tol
    assert abs(res.spectral_radius[0, 0] - 1.0) <= tol
    assert res.reliable.all() and res.converged.all()
    if method != "exact":
        # Matrix-free Ritz values of a defective eigenvalue are unreliable: recomputed exactly.
        assert res.radius_fallback.all() and not res.sigma_fallback.any()
        assert res.radius_condition[0, 0] > 1e4


@pytest.mark.parametrize("method", MATRIX_FREE)
def test_unreliable_radius_is_flagged_without_fallback(method, no_crash):
    W = np.array([[1.0, 1e20], [0.0, 1.0]], np.float32)
    with pytest.warns(RuntimeWarning, match="not reliable"):
        res = vgcore.jacobian_spectrum(
            _linear(W), np.ones((1, 2)), method=method, fallback_max_dim=0
        )
    assert not res.reliable[0, 0]
    assert res.radius_errors[0, 0] > 1e-5 and not res.radius_fallback.any()
    # sigma_max (symmetric J^T J) stays right
    sig = np.linalg.norm(W.astype(np.float64), 2)
    assert abs(res.log_sigma_max[0, 0] - math.log(sig)) <= 1e-6
    assert "UNRELIABLE" in repr(res)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("dt", "scale"),
    [
        (np.float32, 3.0e38),
        (np.float64, 1.0e308),
        (np.float32, 1e-30),
        (np.float64, 1e-300),
        (np.float32, 6e-42),
        (np.float64, 1e-310),
    ],
    ids=["f32-max", "f64-max", "f32-tiny", "f64-tiny", "f32-subnormal", "f64-subnormal"],
)
def test_values_at_the_ends_of_the_range(dt, scale, method, no_crash):
    # scale * [[1, 1], [1, 1]] (rho = sigma_max = 2 scale, beyond the dtype's largest value for
    # the large ones) and scale * diag(1, 2) (sigma_max^2 underflows the dtype for the tiny
    # ones; subnormal entries): the logs are right, nothing is flushed to 0 or Inf silently.
    W = (np.ones((2, 2)) if scale > 1 else np.diag([1.0, 2.0])) * scale
    W = W.astype(dt)
    W64 = W.astype(np.float64)
    want = math.log(float(W64.max())) + (math.log(2.0) if scale > 1 else 0.0)
    res = vgcore.jacobian_spectrum(_linear(W), np.zeros((1, 2)), method=method)
    tol = LOG_TOL[np.dtype(dt)]
    assert abs(res.log_sigma_max[0, 0] - want) <= tol
    assert abs(res.log_spectral_radius[0, 0] - want) <= tol
    assert res.reliable.all()
    if want < math.log(sys.float_info.max):
        np.testing.assert_allclose(res.sigma_max, np.exp(res.log_sigma_max), rtol=1e-12)
    else:
        assert np.isinf(res.sigma_max).all()


@pytest.mark.parametrize("method", METHODS)
def test_jacobian_entries_beyond_the_dtype(torch, method, no_crash):
    # selu'(0) = 1.758 times a weight of 3.3e38 overflows float32 in the materialised Jacobian
    # (the forward pass at x = 0 is finite): the exact method rebuilds it from JVPs of a
    # scaled identity instead of handing LAPACK an Inf.
    m = vgcore.MLP([np.full((2, 2), 3.3e38, np.float32)], activations="selu")
    x = np.zeros((1, 2))
    (J,) = torch_trajectory_jacobians(torch, m.astype(np.float64), x)
    res = vgcore.jacobian_spectrum(m, x, method=method)
    tol = LOG_TOL[np.dtype(np.float32)]
    assert abs(res.log_sigma_max[0, 0] - math.log(np.linalg.norm(J[0], 2))) <= tol
    assert abs(res.log_spectral_radius[0, 0] - math.log(spectral_radius(J[0]))) <= tol
    assert (res.sigma_max > np.finfo(np.float32).max).all() and res.reliable.all()


@pytest.mark.parametrize("method", MATRIX_FREE)
def test_nilpotent_shift_is_not_a_converged_lie(method, no_crash):
    # A 64-unit shift with weight 1.5: rho = 0 exactly, but its pseudospectrum fills a disc of
    # radius ~0.86 at rounding level, so a Ritz value there has a tiny residual.
    W = _shift()
    assert np.abs(np.linalg.eigvals(W)).max() == 0.0
    x = np.ones((1, 64))
    res = vgcore.jacobian_spectrum(_linear(W), x, method=method)
    assert res.spectral_radius[0, 0] <= 1e-12
    assert abs(res.sigma_max[0, 0] - 1.5) <= 1e-10
    assert res.reliable.all()
    # Without the exact fallback a value is either right or flagged, never a confident lie.
    with pytest.warns(RuntimeWarning) if method == "arnoldi" else _maybe_warns():
        bare = vgcore.jacobian_spectrum(_linear(W), x, method=method, fallback_max_dim=0)
    ok = bare.spectral_radius[0, 0] <= 1e-12
    assert ok or not bare.reliable[0, 0]
    if method == "arnoldi":
        assert not bare.reliable[0, 0] and bare.radius_errors[0, 0] > 1e-10


class _maybe_warns:
    """Collects (and tolerates) RuntimeWarnings: the power method may find the exact null
    vector (reliable) or flag its answer (a warning)."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def test_shift_exact_and_reliable_values_agree_with_oracle(torch):
    # Every value reported reliable agrees with the float64 oracle to ~tol.
    rng = np.random.default_rng(7)
    cases = [_shift(24, 1.2), _shift(24, 0.7) + np.diag(np.full(24, 0.3))]
    n = 24
    T = np.diag(np.r_[0.9, np.linspace(0.1, 0.6, n - 1)]) + 0.3 * np.triu(
        rng.standard_normal((n, n)), 1
    )
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    cases.append(Q @ T @ Q.T)
    for W in cases:
        rho = np.abs(np.linalg.eigvals(W)).max()
        sig = np.linalg.norm(W, 2)
        for method in METHODS:
            for fb in (0, 512):
                with _maybe_warns():
                    r = vgcore.jacobian_spectrum(
                        _linear(W), np.ones((1, n)), method=method, ncv=12, fallback_max_dim=fb
                    )
                assert abs(r.sigma_max[0, 0] - sig) <= 1e-9 * sig
                if r.reliable[0, 0]:
                    assert abs(r.spectral_radius[0, 0] - rho) <= 1e-8 * max(rho, 1e-2 * sig), (
                        method,
                        fb,
                        r.spectral_radius,
                        rho,
                    )


def test_max_iter_exhausted_falls_back_or_warns():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((40, 40)) / np.sqrt(40)
    x = np.ones((1, 40))
    exact = vgcore.jacobian_spectrum(_linear(W), x, method="exact")
    res = vgcore.jacobian_spectrum(_linear(W), x, method="power", max_iter=8)
    assert not res.converged.any() and res.reliable.all()
    assert res.radius_fallback.all() and res.sigma_fallback.all()
    np.testing.assert_array_equal(res.spectral_radius, exact.spectral_radius)
    np.testing.assert_array_equal(res.sigma_max, exact.sigma_max)
    assert np.isnan(res.radius_errors).all()  # the value is LAPACK's now
    with pytest.warns(RuntimeWarning, match="not reliable"):
        bare = vgcore.jacobian_spectrum(
            _linear(W), x, method="power", max_iter=8, fallback_max_dim=0
        )
    assert not bare.reliable.any() and not bare.radius_fallback.any()


def test_result_arrays_for_exact_and_width_changes():
    m = vgcore.MLP.from_sizes([6, 9, 4, 4], "tanh", seed=0)
    x = np.random.default_rng(1).standard_normal((2, 6))
    for method in METHODS:
        r = vgcore.jacobian_spectrum(m, x, method=method)
        assert r.reliable.dtype == bool and r.reliable.all()
        assert np.isnan(r.log_spectral_radius[:2]).all()
        np.testing.assert_allclose(r.log_sigma_max, np.log(r.sigma_max), rtol=1e-14)
        np.testing.assert_allclose(
            r.log_spectral_radius[2], np.log(r.spectral_radius[2]), rtol=1e-14
        )
        assert np.isnan(r.radius_condition[:2]).all()
        if method == "exact":
            assert np.isnan(r.radius_errors).all() and np.isnan(r.sigma_errors).all()
        else:
            assert (r.sigma_errors <= 1e-10).all() and (r.radius_errors[2] <= 1e-10).all()
        df = r.to_pandas()
        assert {"reliable", "log_sigma_max", "radius_fallback"} <= set(df.columns)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_fallback_max_dim(bad):
    m = vgcore.RNN.from_sizes(2, 4)
    with pytest.raises((TypeError, ValueError), match="fallback_max_dim"):
        vgcore.jacobian_spectrum(m, np.zeros((3, 1, 2)), fallback_max_dim=bad)


def test_memory_is_checked_before_allocating(monkeypatch):
    # The states and input projections kept at every selected step, and the result arrays,
    # grow with T (T = 1e6 steps of a 64-unit RNN ran to bad_alloc): refused up front, with
    # the size, when they do not fit. Small here (2000 steps, 1 MiB "available") so that a
    # regression runs a cheap computation instead of exhausting the machine.
    import vgcore._validation as validation

    monkeypatch.setattr(validation, "available_memory_bytes", lambda: 2**20)
    m = vgcore.RNN.from_sizes(1, 64, seed=0)
    x = np.zeros((2000, 1, 1))
    with pytest.raises(vgcore.InsufficientMemoryError, match="jacobian_spectrum needs about"):
        vgcore.jacobian_spectrum(m, x, method="exact")
    # A few selected steps need little: they run.
    monkeypatch.setattr(validation, "available_memory_bytes", lambda: 64 * 2**20)
    r = vgcore.jacobian_spectrum(m, x, which=[0, 1999])
    assert r.sigma_max.shape == (2, 1)


@pytest.mark.no_sanitizer(reason="a 256 TB allocation request")
def test_bad_alloc_in_the_core_is_a_memory_error():
    # Bypasses the Python-side memory check: a batch of 2^45 zero-width samples makes the core
    # request ~2^48 bytes (beyond any address space), which must surface as MemoryError.
    from vgcore._loader import _core
    from vgcore.analysis._spectra import core_model

    spec = core_model(vgcore.MLP.from_sizes([1, 2], "identity", bias=False), np.dtype("f8"))
    spec["layers"][0]["weight"] = np.zeros((2, 0))
    x = np.zeros((2**45, 0))
    with pytest.raises(MemoryError, match="out of memory"):
        _core.jacobian_spectrum(spec, x, None, [0], "exact", 1e-10, 10, 4, 4, 0, 1, None, 0)

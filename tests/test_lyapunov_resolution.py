"""Lyapunov exponents below the working precision's reach are marked, never passed off as values.

A linear-regime RNN (tanh at states ~1e-3, so J ~ W) whose recurrent matrix is Q diag(a) Q^T has
the exponents log a exactly (closed form). An exponent more than -ln(eps) nats per QR block below
the top one sits on the rounding-noise floor (about 41.6 nats below in float64, 19 in float32):
`resolved` must say so, and must not flag exponents the precision resolves.
"""

from __future__ import annotations

import numpy as np
import pytest

import vgcore


def _spectrum(
    a3: float, dtype, qr_every: int = 1, mix: bool = True
) -> tuple[vgcore.LyapunovSpectrum, np.ndarray]:
    gains = np.array([0.9, 0.5, a3])
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0] if mix else np.eye(3)
    rnn = vgcore.RNN(np.zeros((3, 1)), Q @ np.diag(gains) @ Q.T, nonlinearity="tanh")
    x = np.zeros((200, 1, 1))
    ly = vgcore.lyapunov(rnn, x, k=3, h0=np.full((1, 3), 1e-3), dtype=dtype, qr_every=qr_every)
    with np.errstate(divide="ignore"):
        return ly, np.log(gains)


@pytest.mark.parametrize(
    "a3, dtype",
    [(1e-5, np.float32), (1e-5, np.float64), (1e-10, np.float64), (1e-12, np.float64)],
)
def test_resolvable_exponents_are_right_and_marked_resolved(a3, dtype):
    ly, true = _spectrum(a3, dtype)
    assert ly.resolved.all()
    # finite-time estimate from a small start: within 1e-2 of the closed form
    np.testing.assert_allclose(ly.exponents[0], true, atol=1e-2)
    assert "UNRESOLVED" not in repr(ly)


@pytest.mark.parametrize(
    "a3, dtype", [(1e-10, np.float32), (1e-20, np.float64), (1e-30, np.float64)]
)
def test_exponents_on_the_noise_floor_are_marked(a3, dtype):
    ly, true = _spectrum(a3, dtype)
    assert ly.resolved[0].tolist() == [True, True, False]
    assert ly.exponents[0, 2] > true[2] + 3  # the value really is off (the noise floor)
    text = repr(ly)
    assert "UNRESOLVED" in text and "exponent(s) 3" in text
    assert ("float64 or a smaller qr_every" in text) == (dtype == np.float32)


def test_qr_block_length_counts():
    """Longer QR blocks need the gap per block to stay in range: qr_every=4 with a 5-nat gap
    per step is 20 nats per block, beyond float32's limit (12.7)."""
    ly, _ = _spectrum(np.exp(-5.0) * 0.9, np.float32, qr_every=4)
    assert ly.resolution_limit == pytest.approx(0.8 * -np.log(np.finfo(np.float32).eps))
    assert not ly.resolved[0, 2]


def test_exact_collapse_counts_as_resolved():
    ly, _ = _spectrum(0.0, np.float64, mix=False)  # an exactly zero row of J
    assert np.isneginf(ly.exponents[0, 2])
    assert ly.resolved.all()

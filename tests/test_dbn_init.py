"""Deep Belief Network pre-training (vgcore.init.dbn_pretrain, MLP.from_sizes(init="dbn")).

Oracles: a CD-1 step computed by hand (a case whose update does not depend on the sample)
and by scalar loops written here from the update rule; the reconstruction error falling
during training; seeded reproducibility; bad input named.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import vgcore
from vgcore.init import RBM, cd1_step, dbn_pretrain, train_rbm


def _data(n: int = 120, d: int = 8, seed: int = 0) -> np.ndarray:
    """Binary data with structure: two prototypes with bit flips."""
    rng = np.random.default_rng(seed)
    proto = np.array([[1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]], float)[:, :d]
    X = proto[rng.integers(0, 2, n)]
    flip = rng.random(X.shape) < 0.05
    return np.where(flip, 1 - X, X)


def test_cd1_step_by_hand():
    """W = 0, biases 0, v0 = (1, 0): p_h0 = 1/2, and whatever the sample h0, h0 W = 0, so
    p_v1 = (1/2, 1/2), p_h1 = 1/2: dW = lr (1/2 (1, 0) - 1/2 (1/2, 1/2)) = lr (1/4, -1/4),
    db = lr (1/2, -1/2), dc = 0."""
    lr = 0.3
    W, b, c = cd1_step(
        np.zeros((1, 2)), np.zeros(2), np.zeros(1), np.array([[1.0, 0.0]]), lr=lr,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    np.testing.assert_allclose(W, [[lr / 4, -lr / 4]], rtol=1e-15, atol=0)
    np.testing.assert_allclose(b, [lr / 2, -lr / 2], rtol=1e-15, atol=0)
    np.testing.assert_allclose(c, [0.0], rtol=0, atol=0)


def test_cd1_step_against_scalar_loops():
    rng = np.random.default_rng(3)
    nh, nv, m, lr = 2, 3, 4, 0.05
    W = rng.normal(0, 1, (nh, nv))
    b, c = rng.normal(0, 1, nv), rng.normal(0, 1, nh)
    v0 = (rng.random((m, nv)) < 0.5).astype(float)
    W2, b2, c2 = cd1_step(W, b, c, v0, lr=lr, rng=np.random.default_rng(9))
    u = np.random.default_rng(9).random((m, nh))  # the draws cd1_step documents

    def s(z: float) -> float:
        return 1.0 / (1.0 + math.exp(-z))

    dW = [[0.0] * nv for _ in range(nh)]
    db, dc = [0.0] * nv, [0.0] * nh
    for r in range(m):
        ph0 = [s(sum(v0[r, i] * W[j, i] for i in range(nv)) + c[j]) for j in range(nh)]
        h0 = [1.0 if u[r, j] < ph0[j] else 0.0 for j in range(nh)]
        pv1 = [s(sum(h0[j] * W[j, i] for j in range(nh)) + b[i]) for i in range(nv)]
        ph1 = [s(sum(pv1[i] * W[j, i] for i in range(nv)) + c[j]) for j in range(nh)]
        for j in range(nh):
            for i in range(nv):
                dW[j][i] += (ph0[j] * v0[r, i] - ph1[j] * pv1[i]) / m
            dc[j] += (ph0[j] - ph1[j]) / m
        for i in range(nv):
            db[i] += (v0[r, i] - pv1[i]) / m
    np.testing.assert_allclose(W2, W + lr * np.array(dW), rtol=1e-13)
    np.testing.assert_allclose(b2, b + lr * np.array(db), rtol=1e-13)
    np.testing.assert_allclose(c2, c + lr * np.array(dc), rtol=1e-13)


def test_reconstruction_error_decreases():
    X = _data()
    rbm = train_rbm(X, 4, epochs=15, lr=0.1, seed=1)
    assert isinstance(rbm, RBM) and rbm.reconstruction_errors.shape == (16,)
    err = rbm.reconstruction_errors
    assert err[-1] < 0.5 * err[0]
    # the recorded error is the mean squared error of the mean-field reconstruction
    assert abs(err[-1] - np.mean((X - rbm.reconstruct(X)) ** 2)) < 1e-15


def test_seeded_reproducibility():
    X = _data()
    a = dbn_pretrain([8, 5, 3], X, epochs=3, seed=4)
    b = dbn_pretrain([8, 5, 3], X, epochs=3, seed=4)
    c = dbn_pretrain([8, 5, 3], X, epochs=3, seed=5)
    assert [w.shape for w, _ in a] == [(5, 8), (3, 5)]
    for (w1, b1), (w2, b2) in zip(a, b):
        assert np.array_equal(w1, w2) and np.array_equal(b1, b2)
    assert not np.array_equal(a[0][0], c[0][0])
    # the layers are the RBMs trained in turn on the hidden probabilities
    rng = np.random.default_rng(4)
    r0 = train_rbm(X, 5, epochs=3, seed=rng)
    r1 = train_rbm(r0.hidden_probs(X), 3, epochs=3, seed=rng)
    assert np.array_equal(a[0][0], r0.weight) and np.array_equal(a[1][1], r1.hidden_bias)
    f32 = dbn_pretrain([8, 5, 3], X, epochs=3, seed=4, dtype=np.float32)
    assert f32[0][0].dtype == np.float32 and np.array_equal(f32[0][0], a[0][0].astype(np.float32))


def test_mlp_from_sizes_dbn():
    X = _data()
    m = vgcore.MLP.from_sizes(
        [8, 5, 3], "sigmoid", init={"name": "dbn", "epochs": 3}, data=X, seed=4
    )
    ref = dbn_pretrain([8, 5, 3], X, epochs=3, seed=4)
    for w, b, (rw, rb) in zip(m.weights, m.biases, ref):
        assert np.array_equal(w, rw) and np.array_equal(b, rb)
    assert all(a.name == "sigmoid" for a in m.activations)
    m2 = vgcore.MLP.from_sizes([8, 5, 3], "sigmoid", init="dbn", data=X, seed=4, bias=False)
    assert m2.biases == [None, None]
    out = vgcore.MLP.from_sizes(
        [8, 5, 3], "sigmoid", init="dbn", data=X, output_activation="identity"
    )
    assert out.activations[-1].name == "identity"
    # other inits are unchanged by the new argument
    a = vgcore.MLP.from_sizes([8, 5, 3], "sigmoid", init="orthogonal", seed=1)
    b = vgcore.MLP.from_sizes([8, 5, 3], "sigmoid", init="orthogonal", seed=1, data=None)
    assert all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights))


def test_bad_input_names_the_argument():
    X = _data()
    with pytest.raises(ValueError, match="X must hold values in"):
        dbn_pretrain([8, 3], X * 2)
    with pytest.raises(ValueError, match=r"X must have shape \(n_samples, 7\)"):
        dbn_pretrain([7, 3], X)
    with pytest.raises(ValueError, match="X must have 2 dimensions"):
        dbn_pretrain([8, 3], X[0])
    with pytest.raises(ValueError, match="sizes must have at least 2"):
        dbn_pretrain([8], X)
    with pytest.raises(ValueError, match=r"sizes\[1\] must be >= 1"):
        dbn_pretrain([8, 0], X)
    with pytest.raises(ValueError, match="lr must be a positive"):
        dbn_pretrain([8, 3], X, lr=-1.0)
    with pytest.raises(TypeError, match="epochs must be an integer"):
        dbn_pretrain([8, 3], X, epochs=2.5)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        dbn_pretrain([8, 3], X, batch_size=0)
    with pytest.raises(TypeError, match="seed"):
        dbn_pretrain([8, 3], X, seed=1.5)
    with pytest.raises(ValueError, match="X must not be empty"):
        train_rbm(np.zeros((0, 3)), 2)
    with pytest.raises(ValueError, match="pass data=X"):
        vgcore.MLP.from_sizes([8, 3], "sigmoid", init="dbn")
    with pytest.raises(ValueError, match="data is only used by init='dbn'"):
        vgcore.MLP.from_sizes([8, 3], "sigmoid", data=X)
    with pytest.raises(ValueError, match="activation must be 'sigmoid'"):
        vgcore.MLP.from_sizes([8, 3], "tanh", init="dbn", data=X)
    with pytest.raises(ValueError, match="residual, highway and norm"):
        vgcore.MLP.from_sizes([8, 8], "sigmoid", init="dbn", data=X, residual=True)
    with pytest.raises(ValueError, match=r"unknown parameter.*'momentum'"):
        vgcore.MLP.from_sizes([8, 3], "sigmoid", init={"name": "dbn", "momentum": 0.9}, data=X)

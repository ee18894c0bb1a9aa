"""Deep Belief Network pre-training: greedy layer-wise RBMs trained by contrastive divergence.

The initialisation of Hinton, Osindero & Teh (2006): a stack of restricted Boltzmann machines
(binary visible and hidden units), each trained by one step of contrastive divergence (CD-1)
on the hidden-unit probabilities of the one below, the first on the data. Their weights and
hidden biases initialise a sigmoid MLP (``vgcore.MLP.from_sizes(..., init="dbn", data=X)``).

Public through :mod:`vgcore.init`: :func:`dbn_pretrain`, :func:`train_rbm`,
:func:`cd1_step`, :class:`RBM`.

References
----------
G. E. Hinton, S. Osindero, Y.-W. Teh, "A fast learning algorithm for deep belief nets",
Neural Computation 18(7):1527-1554, 2006.
G. E. Hinton, "A Practical Guide to Training Restricted Boltzmann Machines", UTML TR 2010-003
(the initial weights ``N(0, 0.01^2)``, visible biases ``log(p / (1 - p))``, and the use of
probabilities rather than samples for the reconstruction and the second hidden layer).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vgcore._validation import as_float_array, check_seed, resolve_dtype

__all__ = ["RBM", "cd1_step", "dbn_pretrain", "train_rbm"]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # 0.5 (1 + tanh(z / 2)): no overflow warning for large |z|
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _check_lr(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    return float(lr)


def _check_count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_data(X: object, name: str, n_visible: int | None = None) -> np.ndarray:
    arr = as_float_array(X, name, np.dtype(np.float64), ndim=2)
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must have at least one sample (row), got shape {arr.shape}")
    if n_visible is not None and arr.shape[1] != n_visible:
        raise ValueError(
            f"{name} must have shape (n_samples, {n_visible}) to match sizes[0] = {n_visible}, "
            f"got {arr.shape}"
        )
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must hold values in [0, 1] (binary units' probabilities; scale the data, "
            f"e.g. X / X.max()), got values in [{lo:g}, {hi:g}]"
        )
    return arr


def _rng(seed: object) -> np.random.Generator:
    s = check_seed(seed, "seed", allow_generator=True)
    return s if isinstance(s, np.random.Generator) else np.random.default_rng(s)  # type: ignore[arg-type]


def cd1_step(
    weight: np.ndarray,
    visible_bias: np.ndarray,
    hidden_bias: np.ndarray,
    v0: np.ndarray,
    *,
    lr: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One CD-1 update of a binary RBM on a mini-batch (float64).

    With ``s`` the logistic function, ``W`` (n_hidden, n_visible), ``b`` visible and ``c``
    hidden biases::

        p_h0 = s(v0 W^T + c);  h0 = [u < p_h0],  u ~ U(0, 1) drawn as rng.random(p_h0.shape)
        p_v1 = s(h0 W + b);    p_h1 = s(p_v1 W^T + c)
        W += lr (p_h0^T v0 - p_h1^T p_v1) / m
        b += lr mean(v0 - p_v1);  c += lr mean(p_h0 - p_h1)

    Parameters
    ----------
    weight : ndarray of shape (n_hidden, n_visible)
    visible_bias : ndarray of shape (n_visible,)
    hidden_bias : ndarray of shape (n_hidden,)
    v0 : ndarray of shape (m, n_visible)
        The mini-batch, values in [0, 1].
    lr : float
        Learning rate.
    rng : numpy.random.Generator
        Draws the hidden sample (one ``rng.random((m, n_hidden))`` call).

    Returns
    -------
    weight, visible_bias, hidden_bias : new arrays (the inputs are not modified)
    """
    W, b, c = weight, visible_bias, hidden_bias
    m = v0.shape[0]
    p_h0 = _sigmoid(v0 @ W.T + c)
    h0 = (rng.random(p_h0.shape) < p_h0).astype(np.float64)
    p_v1 = _sigmoid(h0 @ W + b)
    p_h1 = _sigmoid(p_v1 @ W.T + c)
    W2 = W + lr * (p_h0.T @ v0 - p_h1.T @ p_v1) / m
    b2 = b + lr * (v0 - p_v1).mean(axis=0)
    c2 = c + lr * (p_h0 - p_h1).mean(axis=0)
    return W2, b2, c2


@dataclass(frozen=True)
class RBM:
    """A trained binary restricted Boltzmann machine.

    Attributes
    ----------
    weight : ndarray of shape (n_hidden, n_visible)
        ``nn.Linear`` layout: the hidden units' pre-activation is ``v @ weight.T + hidden_bias``.
    visible_bias : ndarray of shape (n_visible,)
    hidden_bias : ndarray of shape (n_hidden,)
    reconstruction_errors : ndarray of shape (epochs + 1,)
        Mean squared error between the data and its mean-field reconstruction
        ``s(s(X W^T + c) W + b)``, before training and after each epoch.
    """

    weight: np.ndarray
    visible_bias: np.ndarray
    hidden_bias: np.ndarray
    reconstruction_errors: np.ndarray

    def hidden_probs(self, v: np.ndarray) -> np.ndarray:
        """``s(v W^T + c)``, shape (m, n_hidden), for ``v`` of shape (m, n_visible)."""
        return _sigmoid(np.asarray(v, dtype=np.float64) @ self.weight.T + self.hidden_bias)

    def reconstruct(self, v: np.ndarray) -> np.ndarray:
        """The mean-field reconstruction ``s(s(v W^T + c) W + b)``, shape (m, n_visible)."""
        return _sigmoid(self.hidden_probs(v) @ self.weight + self.visible_bias)


def _recon_error(W: np.ndarray, b: np.ndarray, c: np.ndarray, X: np.ndarray) -> float:
    R = _sigmoid(_sigmoid(X @ W.T + c) @ W + b)
    return float(np.mean((X - R) ** 2))


def train_rbm(
    X: Any,
    n_hidden: int,
    *,
    epochs: int = 10,
    lr: float = 0.1,
    batch_size: int = 10,
    seed: int | np.random.Generator | None = 0,
    init_std: float = 0.01,
) -> RBM:
    """Train a binary RBM on ``X`` by CD-1 with mini-batches (float64).

    Initialisation (Hinton's practical guide): ``W ~ N(0, init_std^2)``, hidden biases 0,
    visible biases ``log(p / (1 - p))`` with ``p`` the mean of each visible unit over ``X``
    clipped to [1e-3, 1 - 1e-3]. Each epoch visits the samples in a fresh random order in
    mini-batches of ``batch_size`` (the last one smaller) and applies :func:`cd1_step`.
    Random draws, in order: ``W``, then per epoch the permutation and each batch's sample.

    Parameters
    ----------
    X : array_like of shape (n_samples, n_visible)
        Values in [0, 1] (probabilities of the binary visible units).
    n_hidden : int
    epochs : int
        Passes over the data (>= 0).
    lr : float
        Learning rate of CD-1.
    batch_size : int
    seed : int, numpy Generator or None
    init_std : float
        Standard deviation of the initial weights.

    Returns
    -------
    RBM
    """
    X = _check_data(X, "X")
    n_hidden = _check_count(n_hidden, "n_hidden", 1)
    epochs = _check_count(epochs, "epochs", 0)
    batch_size = _check_count(batch_size, "batch_size", 1)
    lr = _check_lr(lr)
    if isinstance(init_std, bool) or not isinstance(init_std, numbers.Real) or init_std < 0:
        raise ValueError(f"init_std must be a number >= 0, got {init_std!r}")
    rng = _rng(seed)
    n, nv = X.shape
    W = rng.normal(0.0, float(init_std), (n_hidden, nv))
    p = np.clip(X.mean(axis=0), 1e-3, 1.0 - 1e-3)
    b = np.log(p / (1.0 - p))
    c = np.zeros(n_hidden)
    errs = [_recon_error(W, b, c, X)]
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            W, b, c = cd1_step(W, b, c, X[order[start : start + batch_size]], lr=lr, rng=rng)
        errs.append(_recon_error(W, b, c, X))
    return RBM(W, b, c, np.asarray(errs))


def dbn_pretrain(
    sizes: Sequence[int],
    X: Any,
    *,
    epochs: int = 10,
    lr: float = 0.1,
    batch_size: int = 10,
    seed: int | np.random.Generator | None = 0,
    dtype: object = np.float64,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Greedy layer-wise DBN pre-training (Hinton, Osindero & Teh 2006) of a sigmoid MLP.

    Layer ``l`` is an RBM with ``sizes[l]`` visible and ``sizes[l+1]`` hidden units trained
    by :func:`train_rbm` (CD-1) on the hidden probabilities of layer ``l - 1`` (the data for
    ``l = 0``); its weight and hidden bias are the layer's ``(W, b)``. One random generator
    (from ``seed``) serves the layers in order.

    Parameters
    ----------
    sizes : sequence of int
        ``[in, h_1, ..., h_L]``, at least two entries.
    X : array_like of shape (n_samples, sizes[0])
        Training data with values in [0, 1].
    epochs, lr, batch_size :
        CD-1 training of every RBM (:func:`train_rbm`).
    seed : int, numpy Generator or None
    dtype : float32 or float64
        Of the returned arrays (training runs in float64).

    Returns
    -------
    list of (W, b)
        ``W`` of shape (sizes[l+1], sizes[l]) (``nn.Linear`` layout), ``b`` of shape
        (sizes[l+1],).

    Examples
    --------
    >>> X = (np.random.default_rng(0).random((50, 6)) < 0.3).astype(float)
    >>> layers = dbn_pretrain([6, 4, 3], X, epochs=2, seed=0)
    >>> [w.shape for w, _ in layers]
    [(4, 6), (3, 4)]
    """
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise TypeError(f"sizes must be a sequence of positive integers, got {sizes!r}")
    sz = [_check_count(s, f"sizes[{i}]", 1) for i, s in enumerate(sizes)]
    if len(sz) < 2:
        raise ValueError(f"sizes must have at least 2 entries (input, output), got {list(sizes)}")
    H = _check_data(X, "X", sz[0])
    dt = resolve_dtype(dtype)
    rng = _rng(seed)
    out = []
    for i in range(len(sz) - 1):
        rbm = train_rbm(H, sz[i + 1], epochs=epochs, lr=lr, batch_size=batch_size, seed=rng)
        out.append((rbm.weight.astype(dt), rbm.hidden_bias.astype(dt)))
        H = rbm.hidden_probs(H)
    return out

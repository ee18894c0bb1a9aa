"""Benchmark workloads shared by the pytest-benchmark suite and the compare script.

Each workload builds its inputs once and exposes ``vgcore()`` and peer implementations that
return comparable results (gradient-norm curves), so every timing is of a checked answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import vgcore


@dataclass
class LSTMFlow:
    """BPTT gradient norms through an LSTM (N=256, input 64, B=32, T=1000 by default)."""

    N: int = 256
    I: int = 64
    B: int = 32
    T: int = 1000
    dtype: type = np.float32
    seed: int = 0

    def __post_init__(self) -> None:
        self.model = vgcore.LSTM.from_sizes(self.I, self.N, seed=self.seed, dtype=self.dtype)
        rng = np.random.default_rng(self.seed + 1)
        self.x = rng.normal(size=(self.T, self.B, self.I)).astype(self.dtype)

    @property
    def flops(self) -> float:
        # forward and backward recurrent GEMMs plus the input projection
        return 2 * 2 * self.T * self.B * self.N * 4 * self.N + 2 * self.T * self.B * self.I * 4 * self.N

    def vgcore(self, threads: int | None = None) -> np.ndarray:
        return vgcore.gradient_flow(self.model, self.x, num_threads=threads).grad_norms

    def numpy(self) -> np.ndarray:
        """Hand-written NumPy BPTT (stores the gates, one GEMM per step each way)."""
        m, x = self.model, self.x
        N, T, B = self.N, self.T, self.B
        sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
        pre = x.reshape(T * B, -1) @ m.weight_ih.T + (m.bias_ih + m.bias_hh)
        pre = pre.reshape(T, B, 4 * N)
        h = np.zeros((B, N), x.dtype)
        c = np.zeros((B, N), x.dtype)
        gates, cs, tcs = [], [c], []
        for t in range(T):
            a = pre[t] + h @ m.weight_hh.T
            i, f, g, o = sig(a[:, :N]), sig(a[:, N:2 * N]), np.tanh(a[:, 2 * N:3 * N]), sig(a[:, 3 * N:])
            c = f * c + i * g
            tc = np.tanh(c)
            h = o * tc
            gates.append((i, f, g, o))
            cs.append(c)
            tcs.append(tc)
        dh, dc = h.copy(), np.zeros_like(c)
        norms = [np.linalg.norm(dh)]
        for t in range(T - 1, -1, -1):
            i, f, g, o = gates[t]
            tc = tcs[t]
            dct = dc + dh * o * (1 - tc * tc)
            da = np.concatenate(
                [dct * g * i * (1 - i), dct * cs[t] * f * (1 - f), dct * i * (1 - g * g), dh * tc * o * (1 - o)],
                axis=1,
            )
            dc = dct * f
            dh = da @ m.weight_hh
            norms.append(np.linalg.norm(dh))
        return np.array(norms[::-1], dtype=np.float64)

    def torch_eager(self) -> np.ndarray:
        """The natural PyTorch code: an LSTMCell loop with retain_grad on every h_t."""
        import torch

        if not hasattr(self, "_tcell"):
            tdt = torch.float32 if self.dtype == np.float32 else torch.float64
            cell = torch.nn.LSTMCell(self.I, self.N, dtype=tdt)
            with torch.no_grad():
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, name).copy_(torch.from_numpy(getattr(self.model, name)))
            self._tcell, self._tx = cell, torch.from_numpy(self.x)
        cell, x = self._tcell, self._tx
        h = torch.zeros(self.B, self.N, dtype=x.dtype, requires_grad=True)
        c = torch.zeros(self.B, self.N, dtype=x.dtype)
        hs = [h]
        for t in range(self.T):
            h, c = cell(x[t], (h, c))
            h.retain_grad()
            hs.append(h)
        (0.5 * (h**2).sum()).backward()
        return np.array([float(t.grad.norm()) for t in hs])


@dataclass
class MLPFlow:
    """Per-layer gradient norms of a tanh MLP (L=200, N=512, B=128 by default)."""

    L: int = 200
    N: int = 512
    B: int = 128
    dtype: type = np.float32
    seed: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        ws = [rng.normal(0, 1 / math.sqrt(self.N), (self.N, self.N)).astype(self.dtype) for _ in range(self.L)]
        bs = [np.zeros(self.N, self.dtype) for _ in range(self.L)]
        self.model = vgcore.MLP(ws, bs, "tanh")
        self.x = rng.normal(size=(self.B, self.N)).astype(self.dtype)

    @property
    def flops(self) -> float:
        return 2 * 2 * self.L * self.B * self.N * self.N

    def vgcore(self, threads: int | None = None) -> np.ndarray:
        return vgcore.gradient_flow(self.model, self.x, num_threads=threads).grad_norms

    def numpy(self) -> np.ndarray:
        """Hand-written NumPy forward/backward over the layers."""
        hs, ds = [self.x], []
        for w, b in zip(self.model.weights, self.model.biases):
            y = np.tanh(hs[-1] @ w.T + b)
            hs.append(y)
            ds.append(1 - y * y)
        g = hs[-1].copy()
        norms = [np.linalg.norm(g)]
        for w, d in zip(reversed(self.model.weights), reversed(ds)):
            g = (g * d) @ w
            norms.append(np.linalg.norm(g))
        return np.array(norms[::-1], dtype=np.float64)

    def torch_eager(self) -> np.ndarray:
        """A layer loop with retain_grad on every h_l (the natural PyTorch code)."""
        import torch

        if not hasattr(self, "_tnet"):
            self._tnet = self.model.to_torch()
            self._tx = torch.from_numpy(self.x)
        h = self._tx.clone().requires_grad_()
        hs = [h]
        for mod in self._tnet:
            h = mod(h)
            if isinstance(mod, torch.nn.Tanh):
                h.retain_grad()
                hs.append(h)
        (0.5 * (h**2).sum()).backward()
        return np.array([float(t.grad.norm()) for t in hs])


def rel_diff(a: np.ndarray, b: np.ndarray, floor: float = 1e-15) -> float:
    """Max relative difference of two norm curves where the peer's value is above ``floor``.

    Below about 1e-15 a float32 peer's norms come from denormal or flushed intermediates
    (vgcore rescales and keeps them exact); those points are compared by :func:`coverage`.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = (b > floor) & np.isfinite(b)
    return float(np.max(np.abs(a[ok] - b[ok]) / b[ok])) if ok.any() else math.inf


def coverage(norms: np.ndarray, floor: float = 1e-18) -> float:
    """Fraction of a norm curve that is represented (finite and above ``floor``)."""
    norms = np.asarray(norms, np.float64)
    return float(np.mean(np.isfinite(norms) & (norms > floor)))

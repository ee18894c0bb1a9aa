"""Peers: the same work in PyTorch (eager, torch.func), JAX (in a subprocess) and NumPy.

Each peer is measured at every thread setting it offers; the runner keeps the best and says
which. Results come back as float64 arrays comparable with vgcore's.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    """Times of ``repeat`` runs after one untimed warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


@dataclass
class Peer:
    """A peer implementation run in this process; ``settings`` are keyword dicts passed to
    ``configure`` before timing (thread counts, denormal flushing)."""

    name: str
    fn: Callable[[], np.ndarray]
    settings: list[dict[str, Any]] = field(default_factory=lambda: [{"threads": 1}, {"threads": 2}])
    configure: Callable[..., Any] | None = None

    def measure(self, setting: dict[str, Any], repeat: int) -> tuple[list[float], np.ndarray]:
        if self.configure is not None:
            self.configure(**setting)
        try:
            times, out = timed(self.fn, repeat)
        finally:
            if self.configure is not None:
                self.configure(**self.settings[0])
        return times, np.asarray(out, np.float64)


@dataclass
class JaxPeer:
    """A JAX peer run in a fresh process per thread setting (see :mod:`jax_worker`)."""

    name: str
    data: Callable[[], dict[str, np.ndarray]]
    settings: list[dict[str, Any]] = field(default_factory=lambda: [{"threads": 1}, {"threads": 2}])

    def measure(self, setting: dict[str, Any], repeat: int) -> tuple[list[float], np.ndarray]:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
            np.savez(src, threads=setting["threads"], repeat=repeat, **self.data())
            subprocess.run(
                [sys.executable, "-m", "vgcore.bench.jax_worker", str(src), str(dst)],
                check=True,
                capture_output=True,
                text=True,
            )
            out = np.load(dst)
            return list(out["times"]), out["result"]


def jax_available() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def torch_or_none() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_configure(torch: Any) -> Callable[..., None]:
    def configure(threads: int, flush_denormal: bool = False) -> None:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(flush_denormal)

    return configure


def median(times: list[float]) -> float:
    return float(statistics.median(times))


# ---- PyTorch implementations ------------------------------------------------------------


def torch_cell(torch: Any, model: Any) -> Any:
    """torch.nn cell module with the model's weights (no grad on parameters)."""
    dt = torch.float32 if model.dtype == np.float32 else torch.float64
    N, I = model.hidden_size, model.input_size
    cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[model.kind]
    cell = cls(I, N, dtype=dt)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(torch.from_numpy(getattr(model, name)))
    for p in cell.parameters():
        p.requires_grad_(False)
    return cell


def torch_bptt_eager(torch: Any, model: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    """The natural PyTorch code: a cell loop with retain_grad on every h_t."""
    cell, xt = torch_cell(torch, model), torch.from_numpy(x)
    lstm = model.kind == "lstm"
    B, N = x.shape[1], model.hidden_size

    def run() -> np.ndarray:
        h = torch.zeros(B, N, dtype=xt.dtype, requires_grad=True)
        c = torch.zeros(B, N, dtype=xt.dtype)
        hs = [h]
        for t in range(x.shape[0]):
            if lstm:
                h, c = cell(xt[t], (h, c))
            else:
                h = cell(xt[t], h)
            h.retain_grad()
            hs.append(h)
        (0.5 * (h**2).sum()).backward()
        return np.array([float(v.grad.double().norm()) for v in hs])

    return run


def torch_state_fn(torch: Any, model: Any) -> Any:
    """Single-sample step ``f(state, x_t)`` (LSTM state [h, c]) for torch.func."""
    cell = torch_cell(torch, model)
    N = model.hidden_size
    if model.kind == "lstm":

        def f(s: Any, x: Any) -> Any:
            h, c = cell(x, (s[:N], s[N:]))
            return torch.cat([h, c])

        return f
    return lambda s, x: cell(x, s)


def torch_lyapunov(
    torch: Any, model: Any, x: np.ndarray, q0: np.ndarray, mode: str
) -> Callable[[], np.ndarray]:
    """QR method with torch.func: ``vmap(jvp)`` on the tangent block, or ``jacrev`` for the
    whole per-step Jacobian followed by J @ Q."""
    from torch.func import jacrev, jvp, vmap

    f = torch_state_fn(torch, model)
    xt = torch.from_numpy(x[:, 0])
    D = model.state_size

    def run() -> np.ndarray:
        with torch.no_grad():
            s = torch.zeros(D, dtype=xt.dtype)
            Q = torch.from_numpy(q0)
            acc = torch.zeros(Q.shape[1], dtype=torch.float64)
            for t in range(xt.shape[0]):
                xs = xt[t]
                if mode == "vmap_jvp":
                    s2, JQ = vmap(
                        lambda v, xs=xs, s=s: jvp(lambda z: f(z, xs), (s,), (v,)),
                        in_dims=1,
                        out_dims=(None, 1),
                    )(Q)
                else:
                    JQ = jacrev(lambda z, xs=xs: f(z, xs))(s) @ Q
                    s2 = f(s, xs)
                Q, R = torch.linalg.qr(JQ)
                acc += torch.log(torch.abs(torch.diagonal(R))).double()
                s = s2
        return np.sort((acc / xt.shape[0]).numpy())[::-1]

    return run


def torch_spectrum(torch: Any, model: Any, x: np.ndarray, steps: int) -> Callable[[], np.ndarray]:
    """Per-step spectral radius and sigma_max via jacrev + eigvals + svdvals (first ``steps``)."""
    from torch.func import jacrev

    f = torch_state_fn(torch, model)
    xt = torch.from_numpy(x[:, 0])

    def run() -> np.ndarray:
        s = torch.zeros(model.state_size, dtype=xt.dtype)
        out = []
        for t in range(steps):
            J = jacrev(lambda z, t=t: f(z, xt[t]))(s).detach()
            out.append(
                [float(torch.linalg.eigvals(J).abs().max()), float(torch.linalg.svdvals(J)[0])]
            )
            with torch.no_grad():
                s = f(s, xt[t])
        return np.array(out)

    return run


def torch_singular(torch: Any, mlp: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    """log singular values of d h_L / d h_0 by jacrev through the layer loop, then an SVD."""
    from torch.func import jacrev

    Ws = [torch.from_numpy(w) for w in mlp.weights]
    bs = [torch.from_numpy(b) for b in mlp.biases]

    def net(h: Any) -> Any:
        for W, b in zip(Ws, bs):
            h = torch.tanh(W @ h + b)
        return h

    def run() -> np.ndarray:
        J = jacrev(net)(torch.from_numpy(x[0])).detach().double()
        return np.log(torch.linalg.svdvals(J).numpy())

    return run


def torch_mlp_eager(torch: Any, mlp: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    net = mlp.to_torch()
    for p in net.parameters():
        p.requires_grad_(False)
    xt = torch.from_numpy(x)

    def run() -> np.ndarray:
        h = xt.clone().requires_grad_()
        hs = [h]
        for mod in net:
            h = mod(h)
            if isinstance(mod, torch.nn.Tanh):
                h.retain_grad()
                hs.append(h)
        (0.5 * (h**2).sum()).backward()
        return np.array([float(v.grad.double().norm()) for v in hs])

    return run


# ---- NumPy ------------------------------------------------------------------------------


def numpy_mlp(mlp: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    def run() -> np.ndarray:
        hs, ds = [x], []
        for w, b in zip(mlp.weights, mlp.biases):
            y = np.tanh(hs[-1] @ w.T + b)
            hs.append(y)
            ds.append(1 - y * y)
        g = hs[-1].copy()
        norms = [np.linalg.norm(g)]
        for w, d in zip(reversed(mlp.weights), reversed(ds)):
            g = (g * d) @ w
            norms.append(np.linalg.norm(g))
        return np.array(norms[::-1], dtype=np.float64)

    return run


def numpy_bptt_rnn(model: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    """Hand-written NumPy BPTT for a tanh RNN (one GEMM per step each way)."""

    def run() -> np.ndarray:
        T, B, _ = x.shape
        pre = (x.reshape(T * B, -1) @ model.weight_ih.T + (model.bias_ih + model.bias_hh)).reshape(
            T, B, -1
        )
        h = np.zeros((B, model.hidden_size), x.dtype)
        hs = []
        for t in range(T):
            h = np.tanh(pre[t] + h @ model.weight_hh.T)
            hs.append(h)
        g = h.copy()
        norms = [np.linalg.norm(g)]
        for t in range(T - 1, -1, -1):
            g = (g * (1 - hs[t] * hs[t])) @ model.weight_hh
            norms.append(np.linalg.norm(g))
        return np.array(norms[::-1], dtype=np.float64)

    return run

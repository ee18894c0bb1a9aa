"""Peers: the same work in PyTorch (eager, torch.func), JAX (in worker processes) and NumPy.

Each peer is measured at every thread setting it offers; the runner keeps the best and says
which. Results come back as float64 arrays comparable with vgcore's. torch and jax are imported
only when a peer is built (both are optional).
"""

from __future__ import annotations

import atexit
import os
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

from vgcore.bench.machine import set_numpy_threads

DEFAULT_SETTINGS: list[dict[str, Any]] = [{"threads": 1}, {"threads": 2}]


def timed(
    fn: Callable[[], Any], repeat: int, budget_s: float = float("inf")
) -> tuple[list[float], Any]:
    """One untimed warm-up run, then up to ``repeat`` timed runs, stopping early once
    ``budget_s`` seconds have been spent timing (at least one timed run). Returns the times and
    the last result."""
    out = fn()
    times: list[float] = []
    spent = 0.0
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
        if spent >= budget_s:
            break
    return times, out


def timed_pair(
    fa: Callable[[], Any], fb: Callable[[], Any], repeat: int, budget_s: float = float("inf")
) -> tuple[list[float], list[float], Any]:
    """Like :func:`timed` for two functions run alternately (a, b, a, b, ...), so that a slow
    patch of a shared machine hits both. Returns both lists of times and b's last result."""
    fa()
    out = fb()
    ta: list[float] = []
    tb: list[float] = []
    spent = 0.0
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fa()
        t1 = time.perf_counter()
        out = fb()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
        spent += t2 - t0
        if spent >= budget_s:
            break
    return ta, tb, out


def median(times: list[float]) -> float:
    return float(statistics.median(times))


def setting_label(s: dict[str, Any]) -> str:
    label = f"{s['threads']}t" if s.get("threads") else "default"
    if s.get("pinned"):
        label += " pinned"
    return label + (" ftz" if s.get("flush_denormal") else "")


@dataclass
class Peer:
    """A peer implementation run in this process; ``settings`` are keyword dicts passed to
    ``configure`` before timing (thread counts, denormal flushing). ``steps``: the peer runs the
    first ``steps`` steps only (its time is scaled to the whole workload, and its answer checked
    against vgcore's over the same steps)."""

    name: str
    fn: Callable[[], np.ndarray]
    settings: list[dict[str, Any]] = field(default_factory=lambda: list(DEFAULT_SETTINGS))
    configure: Callable[..., Any] | None = None
    steps: int | None = None
    in_process: bool = True

    def measure(
        self, setting: dict[str, Any], repeat: int, budget_s: float = float("inf")
    ) -> tuple[list[float], np.ndarray]:
        if self.configure is not None:
            self.configure(**setting)
        try:
            times, out = timed(self.fn, repeat, budget_s)
        finally:
            if self.configure is not None:
                self.configure(**self.settings[0])
        return times, np.asarray(out, np.float64)


# ---- JAX: worker processes, one per thread setting -----------------------------------------


class _JaxPool:
    """Long-lived ``python -m vgcore.bench.jax_worker --serve THREADS`` processes: XLA reads
    its thread flags once, before ``import jax``, so each setting gets its own process, started
    on first use and reused for every workload."""

    def __init__(self) -> None:
        self.procs: dict[int, tuple[subprocess.Popen[str], Any]] = {}
        self.tmp = tempfile.TemporaryDirectory(prefix="vgcore-bench-")
        self.count = 0

    def _proc(self, threads: int) -> subprocess.Popen[str]:
        if threads in self.procs:
            proc, err = self.procs.pop(threads)
            if proc.poll() is None:
                self.procs[threads] = (proc, err)
                return proc
            err.close()  # died: start a new one
        err = open(Path(self.tmp.name) / f"worker-{threads}.log", "w+")
        proc = subprocess.Popen(
            [sys.executable, "-m", "vgcore.bench.jax_worker", "--serve", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            bufsize=1,
        )
        self.procs[threads] = (proc, err)
        return proc

    def run(
        self, threads: int, data: dict[str, Any], repeat: int, budget_s: float
    ) -> tuple[list[float], np.ndarray]:
        proc = self._proc(threads)
        self.count += 1
        src = Path(self.tmp.name) / f"in-{self.count}.npz"
        dst = Path(self.tmp.name) / f"out-{self.count}.npz"
        np.savez(src, repeat=repeat, budget_s=min(budget_s, 1e9), **data)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{src} {dst}\n")
        proc.stdin.flush()
        reply = proc.stdout.readline().strip()
        src.unlink(missing_ok=True)
        if not reply.startswith("ok"):
            err = self.procs[threads][1]
            err.seek(0)
            tail = err.read()[-2000:]
            raise RuntimeError(f"jax worker: {reply or 'died'} {tail}".strip())
        with np.load(dst) as out:
            times, result = list(out["times"]), np.asarray(out["result"], np.float64)
        dst.unlink(missing_ok=True)
        return times, result

    def close(self) -> None:
        for proc, err in self.procs.values():
            if proc.stdin is not None:
                proc.stdin.close()  # the worker's loop ends at end of input
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            err.close()
        self.procs.clear()
        self.tmp.cleanup()


_POOL: _JaxPool | None = None


def jax_pool() -> _JaxPool:
    global _POOL
    if _POOL is None:
        _POOL = _JaxPool()
        atexit.register(close_jax_pool)
    return _POOL


def close_jax_pool() -> None:
    global _POOL
    if _POOL is not None:
        _POOL.close()
        _POOL = None


@dataclass
class JaxPeer:
    """A JAX peer run in a worker process per thread setting (see :mod:`jax_worker`): ``1t
    pinned`` disables XLA's intra-op pool and pins the worker to one CPU (XLA otherwise ignores
    thread settings); ``2t`` is XLA's default pool over both cores."""

    name: str
    data: Callable[[], dict[str, Any]]
    settings: list[dict[str, Any]] = field(
        default_factory=lambda: [{"threads": 1, "pinned": True}, {"threads": 2}]
    )
    steps: int | None = None
    in_process: bool = False

    def measure(
        self, setting: dict[str, Any], repeat: int, budget_s: float = float("inf")
    ) -> tuple[list[float], np.ndarray]:
        return jax_pool().run(int(setting["threads"]), self.data(), repeat, budget_s)

    def in_process_fn(self) -> Callable[[], np.ndarray]:
        """The same computation in this process (XLA at whatever threads it started with)."""
        from vgcore.bench.jax_worker import build

        run = build(self.data())
        return lambda: np.asarray(run(), np.float64)


def jax_available() -> bool:
    if os.environ.get("VGCORE_BENCH_NO_JAX") == "1":
        return False
    try:
        import importlib.util

        return importlib.util.find_spec("jax") is not None
    except (ImportError, ValueError):
        return False


def torch_or_none() -> Any:
    if os.environ.get("VGCORE_BENCH_NO_TORCH") == "1":
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_configure(torch: Any) -> Callable[..., None]:
    def configure(threads: int, flush_denormal: bool = False, **_: Any) -> None:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(flush_denormal)

    return configure


def numpy_configure(threads: int, **_: Any) -> None:
    set_numpy_threads(threads)


def numpy_peer(name: str, fn: Callable[[], np.ndarray], **kw: Any) -> Peer:
    return Peer(name, fn, configure=numpy_configure, **kw)


# ---- PyTorch implementations ------------------------------------------------------------


def torch_cell(torch: Any, model: Any) -> Any:
    """torch.nn cell module with the model's weights (no grad on parameters)."""
    dt = torch.float32 if model.dtype == np.float32 else torch.float64
    N, I = model.hidden_size, model.input_size
    cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[model.kind]
    kw = {"nonlinearity": model.nonlinearity} if model.kind == "rnn" else {}
    cell = cls(I, N, dtype=dt, **kw)
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


def torch_stacked_bptt_eager(torch: Any, model: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    """The natural PyTorch code for a stacked model's per-(layer, step) norms: layer by layer a
    cell loop with retain_grad on every h (the fused nn.LSTM keeps its inner states to itself)."""
    cells = [torch_cell(torch, model.layer(i)) for i in range(model.num_layers)]
    xt = torch.from_numpy(x)
    lstm = model.kind == "lstm"
    B, N = x.shape[1], model.hidden_size

    def run() -> np.ndarray:
        inputs = list(xt.unbind(0))
        per_layer = []
        for cell in cells:
            h = torch.zeros(B, N, dtype=xt.dtype, requires_grad=True)
            c = torch.zeros(B, N, dtype=xt.dtype)
            hs = [h]
            for x_t in inputs:
                if lstm:
                    h, c = cell(x_t, (h, c))
                else:
                    h = cell(x_t, h)
                h.retain_grad()
                hs.append(h)
            per_layer.append(hs)
            inputs = hs[1:]
        (0.5 * (h**2).sum()).backward()
        return np.array([[float(v.grad.double().norm()) for v in hs] for hs in per_layer]).ravel()

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
                    # out_dims=(None, 1): the state once, the tangents along columns
                    s2, JQ = vmap(  # type: ignore[misc]
                        lambda v, xs=xs, s=s: jvp(lambda z: f(z, xs), (s,), (v,)),
                        in_dims=1,
                        out_dims=(None, 1),  # type: ignore[arg-type]
                    )(Q)
                else:
                    JQ = jacrev(lambda z, xs=xs: f(z, xs))(s) @ Q
                    s2 = f(s, xs)
                Q, R = torch.linalg.qr(JQ)
                acc += torch.log(torch.abs(torch.diagonal(R))).double()
                s = s2
        return np.sort((acc / xt.shape[0]).numpy())[::-1]

    return run


def torch_spectrum(torch: Any, model: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    """Per-step spectral radius and sigma_max: jacrev, then eigvals and svdvals."""
    from torch.func import jacrev

    f = torch_state_fn(torch, model)
    xt = torch.from_numpy(x[:, 0])

    def run() -> np.ndarray:
        s = torch.zeros(model.state_size, dtype=xt.dtype)
        out = []
        for t in range(xt.shape[0]):
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
        J = jacrev(net)(torch.from_numpy(x[0])).detach()
        with np.errstate(divide="ignore"):
            return np.log(torch.linalg.svdvals(J).double().numpy())

    return run


def torch_mlp_eager(torch: Any, mlp: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    """A layer loop with retain_grad on every h_l (the natural PyTorch code)."""
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


def _norm(a: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64, copy=False)))


def numpy_mlp(mlp: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    """Hand-written NumPy forward/backward over the layers."""

    def run() -> np.ndarray:
        hs, ds = [x], []
        for w, b in zip(mlp.weights, mlp.biases):
            y = np.tanh(hs[-1] @ w.T + b)
            hs.append(y)
            ds.append(1 - y * y)
        g = hs[-1].copy()
        norms = [_norm(g)]
        for w, d in zip(reversed(mlp.weights), reversed(ds)):
            g = (g * d) @ w
            norms.append(_norm(g))
        return np.array(norms[::-1], dtype=np.float64)

    return run


def _sig(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


def numpy_bptt(model: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    """Hand-written NumPy BPTT (input projection in one GEMM, one GEMM per step each way,
    gates stored), for tanh RNN, LSTM and GRU."""
    kind, N = model.kind, model.hidden_size
    Wih, Whh, bih, bhh = model.weight_ih, model.weight_hh, model.bias_ih, model.bias_hh
    T, B, _ = x.shape

    def rnn() -> np.ndarray:
        pre = (x.reshape(T * B, -1) @ Wih.T + (bih + bhh)).reshape(T, B, -1)
        h = np.zeros((B, N), x.dtype)
        hs = []
        for t in range(T):
            h = np.tanh(pre[t] + h @ Whh.T)
            hs.append(h)
        g = h.copy()
        norms = [_norm(g)]
        for t in range(T - 1, -1, -1):
            g = (g * (1 - hs[t] * hs[t])) @ Whh
            norms.append(_norm(g))
        return np.array(norms[::-1])

    def lstm() -> np.ndarray:
        pre = (x.reshape(T * B, -1) @ Wih.T + (bih + bhh)).reshape(T, B, 4 * N)
        h = np.zeros((B, N), x.dtype)
        c = np.zeros((B, N), x.dtype)
        gates, cs, tcs = [], [c], []
        for t in range(T):
            a = pre[t] + h @ Whh.T
            i, f = _sig(a[:, :N]), _sig(a[:, N : 2 * N])
            g, o = np.tanh(a[:, 2 * N : 3 * N]), _sig(a[:, 3 * N :])
            c = f * c + i * g
            tc = np.tanh(c)
            h = o * tc
            gates.append((i, f, g, o))
            cs.append(c)
            tcs.append(tc)
        dh, dc = h.copy(), np.zeros_like(c)
        norms = [_norm(dh)]
        for t in range(T - 1, -1, -1):
            i, f, g, o = gates[t]
            tc = tcs[t]
            dct = dc + dh * o * (1 - tc * tc)
            da = np.concatenate(
                [
                    dct * g * i * (1 - i),
                    dct * cs[t] * f * (1 - f),
                    dct * i * (1 - g * g),
                    dh * tc * o * (1 - o),
                ],
                axis=1,
            )
            dc = dct * f
            dh = da @ Whh
            norms.append(_norm(dh))
        return np.array(norms[::-1])

    def gru() -> np.ndarray:
        gi_all = (x.reshape(T * B, -1) @ Wih.T + bih).reshape(T, B, 3 * N)
        h = np.zeros((B, N), x.dtype)
        saved = []
        for t in range(T):
            gi, gh = gi_all[t], h @ Whh.T + bhh
            r = _sig(gi[:, :N] + gh[:, :N])
            z = _sig(gi[:, N : 2 * N] + gh[:, N : 2 * N])
            n = np.tanh(gi[:, 2 * N :] + r * gh[:, 2 * N :])
            saved.append((h, r, z, n, gh[:, 2 * N :]))
            h = (1 - z) * n + z * h
        g = h.copy()
        norms = [_norm(g)]
        for t in range(T - 1, -1, -1):
            hp, r, z, n, ghn = saved[t]
            dn = g * (1 - z) * (1 - n * n)
            dgh = np.concatenate(
                [dn * ghn * r * (1 - r), g * (hp - n) * z * (1 - z), dn * r], axis=1
            )
            g = g * z + dgh @ Whh
            norms.append(_norm(g))
        return np.array(norms[::-1])

    return {"rnn": rnn, "lstm": lstm, "gru": gru}[kind]


def numpy_spectrum(model: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    """Per-step spectral radius and sigma_max of a tanh RNN: J_t = diag(1 - h_{t+1}^2) W_hh
    written out, then LAPACK eigvals and singular values (numpy.linalg)."""
    assert model.kind == "rnn" and model.nonlinearity == "tanh"
    Wih, Whh, b = model.weight_ih, model.weight_hh, model.bias_ih + model.bias_hh

    def run() -> np.ndarray:
        h = np.zeros(model.hidden_size, x.dtype)
        out = []
        for t in range(x.shape[0]):
            h = np.tanh(Wih @ x[t, 0] + Whh @ h + b)
            J = (1 - h * h)[:, None] * Whh
            out.append([np.abs(np.linalg.eigvals(J)).max(), np.linalg.svd(J, compute_uv=False)[0]])
        return np.array(out, dtype=np.float64)

    return run

"""The canonical workloads (issue 6), each with vgcore's computation, its peers, a FLOP count
and how to compare results. ``quick=True`` shrinks every size for a smoke run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import vgcore
from vgcore.bench import peers as P

F32 = np.float32


@dataclass
class Workload:
    name: str
    label: str
    flops: float
    vgcore: Callable[[int], np.ndarray]
    peers: list[Any] = field(default_factory=list)
    compare: str = "curve"  # curve | values | logs
    note: str = ""


def rel_curve(ours: np.ndarray, theirs: np.ndarray, floor: float = 1e-15) -> float:
    """Max relative difference where the peer's value is above ``floor`` (below that a float32
    peer is in denormals or flushed to zero; see :func:`coverage`)."""
    ok = (theirs > floor) & np.isfinite(theirs)
    return float(np.max(np.abs(ours[ok] - theirs[ok]) / theirs[ok])) if ok.any() else float("inf")


def coverage(curve: np.ndarray) -> float:
    """Fraction of a norm curve that is represented (finite and nonzero)."""
    return float(np.mean(np.isfinite(curve) & (curve > 0)))


def agreement(kind: str, ours: np.ndarray, theirs: np.ndarray) -> float:
    if kind == "curve":
        return rel_curve(ours, theirs)
    if kind == "logs":  # log singular values: compare where the peer resolves them
        ok = theirs > theirs.max() + np.log(np.finfo(F32).eps) + 3
        return float(np.max(np.abs(ours[ok] - theirs[ok])))
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(ours)))


def _recurrent(kind: str, N: int, I: int = 64) -> Any:
    cls = {"lstm": vgcore.LSTM, "gru": vgcore.GRU, "rnn": vgcore.RNN}[kind]
    return cls.from_sizes(I, N, seed=0, dtype=F32)


def _weights(model: Any) -> dict[str, np.ndarray]:
    return {n: getattr(model, n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


def mlp_flow(quick: bool) -> Workload:
    L, N, B = (50, 128, 32) if quick else (200, 512, 128)
    rng = np.random.default_rng(0)
    ws = [rng.normal(0, 1 / np.sqrt(N), (N, N)).astype(F32) for _ in range(L)]
    mlp = vgcore.MLP(ws, [np.zeros(N, F32) for _ in range(L)], "tanh")
    x = rng.normal(size=(B, N)).astype(F32)
    w = Workload(
        "mlp-flow",
        f"MLP flow tanh L={L} N={N} B={B}",
        4.0 * L * B * N * N,
        lambda th: vgcore.gradient_flow(mlp, x, num_threads=th).grad_norms,
    )
    torch = P.torch_or_none()
    if torch is not None:
        w.peers.append(
            P.Peer(
                "torch eager", P.torch_mlp_eager(torch, mlp, x), configure=P.torch_configure(torch)
            )
        )
    w.peers.append(P.Peer("numpy", P.numpy_mlp(mlp, x), settings=[{"threads": 0}]))
    return w


def bptt(kind: str, quick: bool, N: int | None = None) -> Workload:
    T, B = (200, 32) if quick else (1000, 32)
    N = N or (64 if quick else 256)
    model = _recurrent(kind, N)
    x = np.random.default_rng(1).normal(size=(T, B, 64)).astype(F32)
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    w = Workload(
        f"bptt-{kind}-N{N}",
        f"BPTT {kind.upper()} N={N} B={B} T={T}",
        2.0 * T * B * G * N * (2 * N + 64),
        # exp of the log-scale norms: the part below float64's range (none here) would read 0
        lambda th: np.exp(vgcore.gradient_flow(model, x, num_threads=th).log_grad_norms),
    )
    torch = P.torch_or_none()
    if torch is not None:
        w.peers.append(
            P.Peer(
                "torch eager",
                P.torch_bptt_eager(torch, model, x),
                configure=P.torch_configure(torch),
                settings=[
                    {"threads": t, "flush_denormal": f} for f in (False, True) for t in (1, 2)
                ],
            )
        )
    if P.jax_available():
        w.peers.append(
            P.JaxPeer("jax jit", lambda: {"task": "bptt", "kind": kind, "x": x, **_weights(model)})
        )
    if kind == "rnn":
        w.peers.append(P.Peer("numpy", P.numpy_bptt_rnn(model, x), settings=[{"threads": 0}]))
    return w


def lyapunov(kind: str, quick: bool, N: int | None = None, jacrev: bool = True) -> Workload:
    T, k = (300, 16) if quick else (2000, 32)
    N = N or (64 if quick else 256)
    model = _recurrent(kind, N)
    D = model.state_size
    k = min(k, D)
    x = np.random.default_rng(2).normal(size=(T, 1, 64)).astype(F32)
    # The initial tangents vgcore.lyapunov(seed=0) draws, so finite-time estimates agree.
    q0 = np.linalg.qr(np.random.default_rng(0).standard_normal((1, k, D))[0].T)[0].astype(F32)
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    w = Workload(
        f"lyapunov-{kind}-N{N}",
        f"Lyapunov top-{k} {kind.upper()} N={N} T={T}",
        T * (2.0 * (k + 1) * G * N * N + 4.0 * D * k * k),
        lambda th: vgcore.lyapunov(model, x, k=k, num_threads=th).exponents[0],
        compare="values",
    )
    torch = P.torch_or_none()
    if torch is not None:
        w.peers.append(
            P.Peer(
                "torch.func vmap(jvp)",
                P.torch_lyapunov(torch, model, x, q0, "vmap_jvp"),
                configure=P.torch_configure(torch),
            )
        )
        if jacrev:
            w.peers.append(
                P.Peer(
                    "torch.func jacrev",
                    P.torch_lyapunov(torch, model, x, q0, "jacrev"),
                    configure=P.torch_configure(torch),
                )
            )
    if P.jax_available():
        w.peers.append(
            P.JaxPeer(
                "jax jit",
                lambda: {"task": "lyapunov", "kind": kind, "x": x, "q0": q0, **_weights(model)},
            )
        )
    return w


def spectral_radius(quick: bool) -> Workload:
    N, T, peer_steps = (256, 10, 3) if quick else (1024, 50, 5)
    model = _recurrent("rnn", N)
    x = np.random.default_rng(4).normal(size=(T, 1, 64)).astype(F32)

    def ours(th: int) -> np.ndarray:
        r = vgcore.jacobian_spectrum(model, x, method="exact", num_threads=th)
        return np.stack([r.spectral_radius[:, 0], r.sigma_max[:, 0]], axis=1)

    w = Workload(
        "spectral-radius",
        f"exact spectral radius RNN N={N}, {T} steps",
        T * 14.0 * N**3,
        ours,
        compare="values",
        note=f"peers run the first {peer_steps} steps; their times are scaled to {T}",
    )
    w.peer_steps = peer_steps  # type: ignore[attr-defined]
    torch = P.torch_or_none()
    if torch is not None:
        w.peers.append(
            P.Peer(
                "torch jacrev+eigvals",
                P.torch_spectrum(torch, model, x, peer_steps),
                configure=P.torch_configure(torch),
            )
        )
    return w


def singular_values(quick: bool) -> Workload:
    L, N = (200, 128) if quick else (1000, 256)
    mlp = vgcore.MLP.from_sizes([N] * (L + 1), "tanh", init="orthogonal", seed=0, dtype=F32)
    x = np.random.default_rng(5).normal(size=(1, N)).astype(F32)
    w = Workload(
        "singular-values",
        f"singular values MLP tanh orthogonal L={L} N={N}",
        L * 6.7 * N**3,
        lambda th: vgcore.jacobian_singular_values(mlp, x, num_threads=th).log_singular_values[0],
        compare="logs",
        note="agreement on the values the float32 peer resolves (within eps of the top)",
    )
    torch = P.torch_or_none()
    if torch is not None:
        w.peers.append(
            P.Peer(
                "torch jacrev+svd",
                P.torch_singular(torch, mlp, x),
                configure=P.torch_configure(torch),
            )
        )
    if P.jax_available():
        w.peers.append(
            P.JaxPeer(
                "jax jit(jacrev)+svd",
                lambda: {
                    "task": "singular",
                    "x": x[0],
                    "weights": np.stack(mlp.weights),
                    "biases": np.stack(mlp.biases),
                },
            )
        )
    return w


def all_workloads(quick: bool = False, sweep: bool = True) -> list[Callable[[], Workload]]:
    """Factories (built lazily: some allocate hundreds of MB) in the issue's order."""
    out: list[Callable[[], Workload]] = [lambda: mlp_flow(quick)]
    for kind in ("lstm", "gru", "rnn"):
        out.append(lambda kind=kind: bptt(kind, quick))
    for kind in ("lstm", "gru", "rnn"):
        out.append(lambda kind=kind: lyapunov(kind, quick))
    out += [lambda: spectral_radius(quick), lambda: singular_values(quick)]
    if sweep and not quick:
        for N in (16, 64, 1024):
            for kind in ("lstm", "gru", "rnn"):
                out.append(lambda kind=kind, N=N: bptt(kind, quick, N=N))
                out.append(lambda kind=kind, N=N: lyapunov(kind, quick, N=N, jacrev=False))
    return out

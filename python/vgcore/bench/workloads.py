"""The canonical workloads (issue 6), each with vgcore's computation, its peers, a FLOP count,
the GEMM shape that dominates it and how results are compared.

``quick=True`` shrinks every size for a smoke run (and for the test run of ``bench/``). All
workloads are float32, as the targets are.

FLOP counts (multiply-add = 2):

- MLP flow: forward and backward GEMMs, ``4 L B N^2``.
- BPTT: recurrent GEMM forward and backward plus the input projection,
  ``2 T B G N (2N + I)`` (G = 4 LSTM, 3 GRU, 1 RNN).
- Lyapunov (B = 1, QR every step): the state and k tangent columns through the recurrent
  weights, the input projection and a Householder QR with Q formed,
  ``T (2 (k+1) G N^2 + 2 G N I + 4 D k^2)`` (D = state dimension; 39 GFLOP for the LSTM case).
- Exact spectral radius: LAPACK eigenvalues (~10 N^3, Golub & Van Loan) plus singular values
  (8/3 N^3) per step.
- Singular values: per layer a GEMM (2 N^3), a Householder QR (4/3 N^3) with Q formed (4/3 N^3)
  and the triangular update (1/3 N^3): ``5 L N^3`` (the graded product vgcore computes; a
  jacrev peer does ``2 L N^3`` but loses every value below float32's eps of the largest).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

import vgcore
from vgcore.bench import peers as P

F32 = np.float32
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
INPUT = 64  # input size of the recurrent workloads


@dataclass
class Workload:
    """One benchmark. ``vgcore(threads)`` returns the answer every peer is checked against
    (log-norm curve, exponents, per-step spectra or log singular values). Peers with ``steps``
    run a prefix of the sequence: ``reference(steps)`` is vgcore's answer on that prefix and
    their times are scaled by ``self.steps / peer.steps``."""

    name: str
    label: str
    flops: float
    vgcore: Callable[[int], np.ndarray]
    family: str
    peers: list[Any] = field(default_factory=list)
    compare: str = "curve"  # curve (vgcore's log norms vs a peer's norms) | values | logs
    tol: float = 2e-3
    note: str = ""
    steps: int = 0
    reference: Callable[[int], np.ndarray] | None = None
    gemm_shape: tuple[int, int, int] | None = None
    cell: str = ""
    N: int = 0
    sweep: bool = False
    # vgcore's answer without the power-of-two rescaling (the log-scale cost): threads -> curve.
    unscaled: Callable[[int], np.ndarray] | None = None


# ---- comparing answers --------------------------------------------------------------------------


def _log(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a > 0, np.log(np.where(a > 0, a, 1.0)), -np.inf)


def rel_curve(ours_log: np.ndarray, theirs: np.ndarray, floor: float = 1e-15) -> float:
    """Max relative difference of a peer's norm curve from vgcore's (given as logs), where the
    peer's value is above ``floor`` (below it a float32 peer computes from denormals or flushed
    zeros; see :func:`coverage`)."""
    theirs = np.asarray(theirs, np.float64)
    ok = (theirs > floor) & np.isfinite(theirs) & np.isfinite(ours_log)
    if not ok.any():
        return float("inf")
    return float(np.max(np.abs(np.expm1(ours_log[ok] - np.log(theirs[ok])))))


def coverage(curve: np.ndarray, logs: bool = False) -> float:
    """Fraction of a norm curve that is represented: finite and nonzero (for vgcore's log
    norms: finite)."""
    curve = np.asarray(curve, np.float64)
    if logs:
        return float(np.mean(np.isfinite(curve)))
    return float(np.mean(np.isfinite(curve) & (curve > 0)))


def accurate_fraction(ours_log: np.ndarray, theirs: np.ndarray, rtol: float = 1e-2) -> float:
    """Fraction of the curve where a peer's norm is within ``rtol`` of vgcore's."""
    theirs = np.asarray(theirs, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        err = np.abs(np.expm1(ours_log - _log(theirs)))
    return float(np.mean(np.isfinite(err) & (err <= rtol)))


def resolved_logs(theirs: np.ndarray, margin: float = 1e3) -> np.ndarray:
    """Mask of the log singular values a float32 peer resolves: above ``margin`` x eps of the
    largest (below that the rounding of the explicit Jacobian dominates them)."""
    theirs = np.asarray(theirs, np.float64)
    top = np.max(theirs[np.isfinite(theirs)])
    return np.isfinite(theirs) & (theirs > top + np.log(np.finfo(F32).eps * margin))


def agreement(kind: str, ours: np.ndarray, theirs: np.ndarray) -> float:
    """The number each peer is judged by: max relative difference (curves, values) or max
    absolute difference of logs (singular values, where the peer resolves them)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        return float("inf")
    if kind == "curve":
        return rel_curve(ours, theirs)
    if kind == "logs":
        ok = resolved_logs(theirs)
        return float(np.max(np.abs(ours[ok] - theirs[ok]))) if ok.any() else float("inf")
    if not (np.isfinite(theirs).all()):
        return float("inf")
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(ours)))


def peer_coverage(kind: str, ours: np.ndarray, theirs: np.ndarray) -> dict[str, float] | None:
    """Range: how much of vgcore's answer a peer represents (None where not meaningful)."""
    if kind == "curve":
        return {
            "vgcore": coverage(ours, logs=True),
            "peer": coverage(theirs),
            "peer_accurate": accurate_fraction(np.asarray(ours, np.float64), theirs),
        }
    if kind == "logs":
        theirs = np.asarray(theirs, np.float64)
        ok = resolved_logs(theirs)
        good = ok & (np.abs(np.asarray(ours, np.float64) - theirs) < 1e-2)
        return {
            "vgcore": float(np.mean(np.isfinite(ours))),
            "peer": float(np.mean(ok)),
            "peer_accurate": float(np.mean(good)),
        }
    return None


# ---- models and data ----------------------------------------------------------------------------


def _biases(mlp: Any) -> list[np.ndarray]:
    """The bench's MLPs have every bias (the peers' stacked layouts need them)."""
    assert all(b is not None for b in mlp.biases)
    return list(mlp.biases)


def _recurrent(kind: str, N: int, seed: int = 0) -> Any:
    cls: Any = {"lstm": vgcore.LSTM, "gru": vgcore.GRU, "rnn": vgcore.RNN}[kind]
    return cls.from_sizes(INPUT, N, seed=seed, dtype=F32)  # PyTorch's init: contracting


def _weights(model: Any) -> dict[str, np.ndarray]:
    return {n: getattr(model, n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


def _torch_peer(name: str, make: Callable[[Any], Callable[[], np.ndarray]], **kw: Any) -> Any:
    torch = P.torch_or_none()
    if torch is None:
        return None
    return P.Peer(name, make(torch), configure=P.torch_configure(torch), **kw)


def _add(w: Workload, *peers: Any) -> None:
    w.peers += [p for p in peers if p is not None]


# ---- 1. MLP gradient flow --------------------------------------------------------------------


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
        lambda th: vgcore.gradient_flow(mlp, x, num_threads=th).log_grad_norms,
        family="mlp-flow",
        steps=L,
        gemm_shape=(B, N, N),
        N=N,
    )
    _add(w, _torch_peer("torch eager", lambda t: P.torch_mlp_eager(t, mlp, x)))
    if P.jax_available():
        data = {"task": "mlp", "x": x, "weights": np.stack(ws), "biases": np.stack(_biases(mlp))}
        _add(w, P.JaxPeer("jax jit", lambda: data))
    _add(w, P.numpy_peer("numpy", P.numpy_mlp(mlp, x)))
    return w


# ---- 2. BPTT gradient norms --------------------------------------------------------------------


def bptt(kind: str, quick: bool, N: int | None = None, sweep: bool = False) -> Workload:
    T, B = (200, 32) if quick else (1000, 32)
    N = N or (64 if quick else 256)
    model = _recurrent(kind, N)
    x = np.random.default_rng(1).normal(size=(T, B, INPUT)).astype(F32)
    G = GATES[kind]
    # Peers at N = 1024 run a prefix (their per-step cost is flat); the answer is checked on it.
    steps = 100 if N >= 1024 else None
    xp = x[:steps] if steps else x

    def ours(th: int, x: np.ndarray = x) -> np.ndarray:
        return vgcore.gradient_flow(model, x, num_threads=th).log_grad_norms

    def unscaled(th: int) -> np.ndarray:
        return vgcore.gradient_flow(model, x, num_threads=th, rescale=False).log_grad_norms

    w = Workload(
        f"bptt-{kind}-N{N}",
        f"BPTT {kind.upper()} N={N} B={B} T={T}",
        2.0 * T * B * G * N * (2 * N + INPUT),
        ours,
        family="bptt",
        steps=T,
        reference=lambda n: ours(1, x[:n]),
        gemm_shape=(B, G * N, N),
        cell=kind,
        N=N,
        sweep=sweep,
        unscaled=None if sweep else unscaled,
    )
    _add(
        w,
        _torch_peer(
            "torch eager",
            lambda t: P.torch_bptt_eager(t, model, xp),
            settings=[{"threads": t, "flush_denormal": f} for f in (False, True) for t in (1, 2)],
            steps=steps,
        ),
    )
    if P.jax_available():
        data = {"task": "bptt", "kind": kind, "x": xp, **_weights(model)}
        _add(w, P.JaxPeer("jax jit", lambda: data, steps=steps))
    _add(w, P.numpy_peer("numpy", P.numpy_bptt(model, xp), steps=steps))
    return w


def stacked_bptt(quick: bool, kind: str = "lstm", layers: int = 2) -> Workload:
    """BPTT through a stacked model (issue 14): per-(layer, step) norms, compared with the
    natural PyTorch code (a cell loop per layer with retain_grad)."""
    T, B = (200, 32) if quick else (1000, 32)
    N = 64 if quick else 256
    cls: Any = {"lstm": vgcore.LSTM, "gru": vgcore.GRU, "rnn": vgcore.RNN}[kind]
    model = cls.from_sizes(INPUT, N, num_layers=layers, seed=0, dtype=F32)
    x = np.random.default_rng(1).normal(size=(T, B, INPUT)).astype(F32)
    G = GATES[kind]

    def ours(th: int, x: np.ndarray = x) -> np.ndarray:
        flow = vgcore.gradient_flow(model, x, num_threads=th, input_grads=False)
        return np.asarray(flow.log_grad_norms).ravel()

    # every layer's recurrent GEMMs and input projection, and dL/dx of the upper layers
    flops = 2.0 * T * B * G * N * (2 * N + INPUT) + (layers - 1) * 2.0 * T * B * G * N * 4 * N
    w = Workload(
        f"bptt-{kind}{layers}-N{N}",
        f"BPTT {layers}-layer {kind.upper()} N={N} B={B} T={T}",
        flops,
        ours,
        family="bptt",
        steps=T,
        gemm_shape=(B, G * N, N),
        cell=kind,
        N=N,
    )
    _add(
        w,
        _torch_peer(
            "torch eager",
            lambda t: P.torch_stacked_bptt_eager(t, model, x),
            settings=[{"threads": t, "flush_denormal": f} for f in (False, True) for t in (1, 2)],
        ),
    )
    return w


# ---- 3. Lyapunov exponents ----------------------------------------------------------------------


def lyapunov(
    kind: str, quick: bool, N: int | None = None, jacrev: bool = True, sweep: bool = False
) -> Workload:
    T, k = (200, 16) if quick else (2000, 32)
    N = N or (64 if quick else 256)
    model = _recurrent(kind, N)
    D = model.state_size
    k = min(k, D)
    x = np.random.default_rng(2).normal(size=(T, 1, INPUT)).astype(F32)
    # The initial tangents vgcore.lyapunov(seed=0) draws, so finite-time estimates agree.
    q0 = np.linalg.qr(np.random.default_rng(0).standard_normal((1, k, D))[0].T)[0].astype(F32)
    G = GATES[kind]
    # Slow peers run a prefix (flat per-step cost), checked against vgcore on that prefix:
    # torch.func costs ~1.5 ms a step even at N = 16 (Python and dispatch), so the sweep rows
    # give it 500 steps (200 at N = 1024).
    func_steps = None if quick or N == 256 else (200 if N >= 1024 else 500)
    jax_steps = None if quick or N < 1024 else 500
    jacrev_steps = None if quick else 400

    def ours(th: int, x: np.ndarray = x) -> np.ndarray:
        return vgcore.lyapunov(model, x, k=k, num_threads=th).exponents[0]

    w = Workload(
        f"lyapunov-{kind}-N{N}",
        f"Lyapunov top-{k} {kind.upper()} N={N} T={T}",
        T * (2.0 * (k + 1) * G * N * N + 2.0 * G * N * INPUT + 4.0 * D * k * k),
        ours,
        family="lyapunov",
        compare="values",
        tol=1e-3,
        steps=T,
        reference=lambda n: ours(1, x[:n]),
        gemm_shape=(k + 1, G * N, N),
        cell=kind,
        N=N,
        sweep=sweep,
    )

    def xs(n: int | None) -> np.ndarray:
        return x[:n] if n else x

    _add(
        w,
        _torch_peer(
            "torch.func vmap(jvp)",
            lambda t: P.torch_lyapunov(t, model, xs(func_steps), q0, "vmap_jvp"),
            steps=func_steps,
        ),
    )
    if jacrev:
        _add(
            w,
            _torch_peer(
                "torch.func jacrev",
                lambda t: P.torch_lyapunov(t, model, xs(jacrev_steps), q0, "jacrev"),
                steps=jacrev_steps,
            ),
        )
    if P.jax_available():
        data = {"task": "lyapunov", "kind": kind, "x": xs(jax_steps), "q0": q0, **_weights(model)}
        _add(w, P.JaxPeer("jax jit", lambda: data, steps=jax_steps))
    return w


# ---- 4. exact per-step spectral radius ------------------------------------------------------------


def spectral_radius(quick: bool) -> Workload:
    N, T, peer_steps = (256, 10, 3) if quick else (1024, 50, 5)
    model = _recurrent("rnn", N)
    x = np.random.default_rng(4).normal(size=(T, 1, INPUT)).astype(F32)

    def ours(th: int, x: np.ndarray = x) -> np.ndarray:
        r = vgcore.jacobian_spectrum(model, x, method="exact", num_threads=th)
        return np.stack([r.spectral_radius[:, 0], r.sigma_max[:, 0]], axis=1)

    w = Workload(
        "spectral-radius",
        f"exact spectral radius RNN N={N}, {T} steps",
        T * (10.0 + 8.0 / 3.0) * N**3,
        ours,
        family="spectral-radius",
        compare="values",
        tol=1e-3,
        note=f"peers run the first {peer_steps} steps; their times are scaled to {T}",
        steps=T,
        reference=lambda n: ours(1, x[:n]),
        gemm_shape=(N, N, N),
        cell="rnn",
        N=N,
    )
    xp = x[:peer_steps]
    _add(
        w,
        _torch_peer(
            "torch jacrev+eigvals", lambda t: P.torch_spectrum(t, model, xp), steps=peer_steps
        ),
    )
    if P.jax_available():
        data = {"task": "spectrum", "kind": "rnn", "x": xp, **_weights(model)}
        _add(w, P.JaxPeer("jax jit(jacfwd)+eigvals", lambda: data, steps=peer_steps))
    _add(w, P.numpy_peer("numpy eigvals", P.numpy_spectrum(model, xp), steps=peer_steps))
    return w


# ---- 5. singular values of the input-output Jacobian ----------------------------------------------


def singular_values(quick: bool) -> Workload:
    L, N = (200, 128) if quick else (1000, 256)
    mlp = vgcore.MLP.from_sizes([N] * (L + 1), "tanh", init="orthogonal", seed=0, dtype=F32)
    x = np.random.default_rng(5).normal(size=(1, N)).astype(F32)
    w = Workload(
        "singular-values",
        f"singular values MLP tanh orthogonal L={L} N={N}",
        5.0 * L * N**3,
        lambda th: vgcore.jacobian_singular_values(mlp, x, num_threads=th).log_singular_values[0],
        family="singular-values",
        compare="logs",
        tol=1e-2,
        note="agreement on the values a float32 peer resolves (above 1e3 eps of the largest)",
        steps=L,
        gemm_shape=(N, N, N),
        N=N,
    )
    _add(w, _torch_peer("torch jacrev+svd", lambda t: P.torch_singular(t, mlp, x)))
    if P.jax_available():
        data = {
            "task": "singular",
            "x": x[0],
            "weights": np.stack(mlp.weights),
            "biases": np.stack(_biases(mlp)),
        }
        _add(w, P.JaxPeer("jax jit(jacrev)+svd", lambda: data))
    return w


# ---- the suite -----------------------------------------------------------------------------------

SWEEP_N = (16, 64, 256, 1024)


def all_workloads(
    quick: bool = False, sweep: bool = True
) -> list[tuple[str, Callable[[], Workload]]]:
    """``(name, factory)`` pairs (built lazily: some allocate hundreds of MB) in the issue's
    order, then the torch modules', the state-space layers' and the training monitor's
    (``torch_workloads``, ``ssm_workloads``, ``watch_workloads``); the size sweep (workloads 2
    and 3 at N = 16, 64, 1024; N = 256 is the main row) comes last. Each name is the ``Workload.name`` its factory builds."""
    n_main = 64 if quick else 256
    out: list[tuple[str, Callable[[], Workload]]] = [("mlp-flow", partial(mlp_flow, quick))]
    for kind in ("lstm", "gru", "rnn"):
        out.append((f"bptt-{kind}-N{n_main}", partial(bptt, kind, quick)))
    out.append((f"bptt-lstm2-N{n_main}", partial(stacked_bptt, quick)))
    for kind in ("lstm", "gru", "rnn"):
        out.append((f"lyapunov-{kind}-N{n_main}", partial(lyapunov, kind, quick)))
    out += [
        ("spectral-radius", partial(spectral_radius, quick)),
        ("singular-values", partial(singular_values, quick)),
    ]
    from vgcore.bench.torch_workloads import torch_workloads  # needs this module's Workload

    out += torch_workloads(quick)
    from vgcore.bench.ssm_workloads import ssm_workloads
    from vgcore.bench.watch_workloads import watch_workloads

    out += ssm_workloads(quick) + watch_workloads(quick)
    if sweep and not quick:
        for N in SWEEP_N:
            if N == 256:
                continue
            for kind in ("lstm", "gru", "rnn"):
                out.append((f"bptt-{kind}-N{N}", partial(bptt, kind, quick, N=N, sweep=True)))
                out.append(
                    (
                        f"lyapunov-{kind}-N{N}",
                        partial(lyapunov, kind, quick, N=N, jacrev=False, sweep=True),
                    )
                )
    return out


class UnknownWorkloadError(ValueError):
    """A name pattern of ``only`` that matches no workload."""


def select_workloads(
    only: Sequence[str] | None, quick: bool = False, sweep: bool = True
) -> list[tuple[str, Callable[[], Workload]]]:
    """The workloads whose names contain one of ``only`` (all of them for None); a pattern
    that matches nothing is an UnknownWorkloadError listing the names."""
    every = all_workloads(quick, sweep=sweep)
    if not only:
        return every
    missing = [o for o in only if not any(o in name for name, _ in every)]
    if missing:
        names = ", ".join(name for name, _ in every)
        raise UnknownWorkloadError(
            f"--only {','.join(missing)} matches no workload; the names are: {names}"
        )
    return [(name, make) for name, make in every if any(o in name for o in only)]

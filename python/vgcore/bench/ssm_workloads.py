"""Workloads of the state-space layers (issue 17), float32:

- Selective SSM BPTT norms (d_model 256, d_state 16, B = 8, T = 4096): ``vgcore.gradient_flow``
  on ``vgcore.SelectiveSSM`` (the generic BPTT sweep, loss ``0.5 ||state_T||^2``) against the
  natural PyTorch code: the reference module's sequential steps with ``retain_grad`` on every
  state and one backward (a prefix of 1024 steps, its time scaled; its per-step cost is flat).
- LTI SSM Lyapunov exponents (complex S4D-Lin modes, k = 8, B = 1, T = 4000) at three state
  sizes D = 256, 1024 and 4096 (the target: the cost per step linear in D) against NumPy's
  QR iteration of the same tangents through the block-diagonal step Jacobian.

``bench/ssm_bench.py`` has the longer study (thread settings, a ``torch.compile``d step, a stack
of selective blocks). FLOP counts, multiply-add = 2:

- selective BPTT: the layer's forward per token (input and output projections ``4 dm di`` and
  ``2 di dm``, convolution ``2 di K``, ``x_proj`` ``2 di (R + 2 n)``, ``dt_proj`` ``2 R di``,
  scan and output ``6 di n``), forward plus backward counted as three forwards;
- LTI Lyapunov: per step the state (``2 D d``), the k tangents through the 2x2 blocks
  (``3 D k``) and a Householder QR with Q formed (``4 D k^2``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

import vgcore
from vgcore.bench import peers as P
from vgcore.bench.workloads import Workload

F32 = np.float32

__all__ = ["LTI_MODES", "lti_lyapunov", "selective_bptt", "ssm_workloads"]

#: Complex modes of the LTI rows (state sizes D = 2 N), full and quick.
LTI_MODES = {False: (128, 512, 2048), True: (32, 128)}


def _torch_selective_norms(torch: Any, module: Any, u: Any) -> Callable[[], np.ndarray]:
    """Norms of dL/d(h_t, conv_t) over the batch, t = 0..T, for L = 0.5 ||(h_T, conv_T)||^2:
    autograd over the reference module's steps, each state kept with ``retain_grad``."""

    def run() -> np.ndarray:
        B, T = u.shape[0], u.shape[1]
        h, buf = (s.requires_grad_() for s in module.initial_state(B))
        states = [(h, buf)]
        for t in range(T):
            (h, buf), _ = module.step_output((h, buf), u[:, t])
            h.retain_grad()
            buf.retain_grad()
            states.append((h, buf))
        (0.5 * ((h**2).sum() + (buf**2).sum())).backward()
        return np.array(
            [float(torch.sqrt((a.grad**2).sum() + (b.grad**2).sum())) for a, b in states]
        )

    return run


def selective_bptt(quick: bool) -> Workload:
    dm, n, B, T = (64, 16, 4, 256) if quick else (256, 16, 8, 4096)
    steps = None if quick else 1024
    model = vgcore.SelectiveSSM.from_sizes(dm, n, seed=0, dtype=F32)
    x = np.random.default_rng(0).standard_normal((T, B, dm)).astype(F32)
    di, R, K = model.d_inner, model.dt_rank, model.d_conv
    per_token = 6.0 * dm * di + 2.0 * di * K + 2.0 * di * (R + 2 * n) + 2.0 * R * di + 6.0 * di * n

    def ours(th: int, x: np.ndarray = x) -> np.ndarray:
        return vgcore.gradient_flow(model, x, num_threads=th).log_grad_norms

    w = Workload(
        "ssm-selective-bptt",
        f"BPTT selective SSM d_model={dm} d_state={n} B={B} T={T}",
        3.0 * per_token * B * T,
        ours,
        family="ssm-bptt",
        steps=T,
        reference=lambda s: ours(1, x[:s]),
        note="peer: the reference module's steps with retain_grad and autograd (target >= 5x)",
        N=model.state_dim,
    )
    torch = P.torch_or_none()
    if torch is not None:
        module = model.to_torch()
        for p in module.parameters():
            p.requires_grad_(False)
        xp = x[:steps] if steps else x
        u = torch.from_numpy(np.ascontiguousarray(xp.transpose(1, 0, 2)))
        w.peers.append(
            P.Peer(
                "torch reference + autograd",
                _torch_selective_norms(torch, module, u),
                configure=P.torch_configure(torch),
                steps=steps,
            )
        )
    return w


def _numpy_lti_lyapunov(a: np.ndarray, q0: np.ndarray, steps: int) -> Callable[[], np.ndarray]:
    """The top-k exponents of ``h_t = a h_{t-1} + ...`` (complex diagonal ``a``, the state
    as (re, im) pairs): the tangents through the 2x2 rotation-scalings, then a QR, each step."""
    ar = a.real.astype(F32)[:, None]
    ai = a.imag.astype(F32)[:, None]

    def run() -> np.ndarray:
        Q = q0.copy()
        logs = np.zeros(Q.shape[1])
        V = np.empty_like(Q)
        for _ in range(steps):
            re, im = Q[0::2], Q[1::2]
            V[0::2] = ar * re - ai * im
            V[1::2] = ai * re + ar * im
            Q, Rm = np.linalg.qr(V)
            logs += np.log(np.abs(np.diagonal(Rm)))
        return np.sort(logs / steps)[::-1].copy()

    return run


def lti_lyapunov(modes: int, quick: bool) -> Workload:
    T, k, d = (500 if quick else 4000), 8, 16
    model = vgcore.SSM.from_sizes(d, modes, init="s4d_lin", complex=True, seed=0, dtype=F32)
    D = model.state_dim
    x = np.random.default_rng(2).standard_normal((T, 1, d)).astype(F32)
    # the initial tangents vgcore.lyapunov(seed=0) draws, so the finite-time estimates agree
    q0 = np.linalg.qr(np.random.default_rng(0).standard_normal((1, k, D))[0].T)[0].astype(F32)
    steps = None if quick else 1000

    def ours(th: int, x: np.ndarray = x) -> np.ndarray:
        return vgcore.lyapunov(model, x, k=k, num_threads=th).exponents[0]

    w = Workload(
        f"ssm-lti-lyapunov-D{D}",
        f"Lyapunov top-{k} LTI SSM D={D} T={T}",
        T * (2.0 * D * d + 3.0 * D * k + 4.0 * D * k * k),
        ours,
        family="ssm-lyapunov",
        compare="values",
        tol=1e-3,
        steps=T,
        reference=lambda s: ours(1, x[:s]),
        note="peer: NumPy's QR iteration through the 2x2 blocks (target: cost per step linear in D)",
        N=D,
    )
    w.peers.append(
        P.numpy_peer("numpy", _numpy_lti_lyapunov(model.transition(), q0, steps or T), steps=steps)
    )
    return w


def ssm_workloads(quick: bool) -> list[tuple[str, Any]]:
    """``(name, factory)`` pairs: the selective BPTT row and one LTI Lyapunov row per size."""
    out: list[tuple[str, Any]] = [("ssm-selective-bptt", partial(selective_bptt, quick))]
    out += [
        (f"ssm-lti-lyapunov-D{2 * m}", partial(lti_lyapunov, m, quick)) for m in LTI_MODES[quick]
    ]
    return out

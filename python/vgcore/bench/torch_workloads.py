"""Workloads of torch modules analysed through ``torch.func`` (the any-model issue): per-block
gradient flow of a Transformer encoder and a ResNet-style CNN against one plain forward and
backward of the same module (their floor), and the Lyapunov exponents of a ``TorchCell``
(``nn.GRUCell``) against a per-step ``jacrev`` + QR loop and the native GRU kernels.

They exist only where torch is installed (vgcore's side runs through torch too). FLOP counts
are those of the floor, forward plus backward counted as three forwards:

- Transformer encoder layer (d, feed-forward 4d, sequence S, batch B): forward
  ``2 B S (4 d^2 + 8 d^2) + 4 B S^2 d`` (projections, feed-forward, scores and values).
- CNN: forward ``2 B H W 9 c^2`` per 3x3 convolution.
- TorchCell Lyapunov (GRU, B = 1): per step the k + 1 tangent and state rows through the
  recurrent weights, ``2 (k + 1) 3 N^2``, plus ``2 3 N I`` input projection and the QR
  ``4 N k^2``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import vgcore
from vgcore.bench import peers as P
from vgcore.bench.workloads import Workload
from vgcore.reference import nets

F32 = np.float32


def _retain_grad_norms(torch: Any, module: Any, blocks: list[Any], x: Any) -> Any:
    """The natural PyTorch code for per-block gradient norms: one forward with ``retain_grad``
    on every block's output (forward hooks), one backward of ``0.5 ||y||^2``."""
    for p in module.parameters():
        p.requires_grad_(False)

    def run() -> np.ndarray:
        outs: list[Any] = []

        def keep(mod: Any, args: Any, out: Any) -> None:
            out.retain_grad()
            outs.append(out)

        hs = [blk.register_forward_hook(keep) for blk in blocks]
        try:
            h = x.clone().requires_grad_()
            y = module(h)
            (0.5 * (y * y).sum()).backward()
        finally:
            for hk in hs:
                hk.remove()
        return np.array([float(v.grad.double().norm()) for v in [h, *outs]])

    return run


def _flow(
    name: str, label: str, flops: float, module: Any, x: Any, blocks: list[Any], note: str
) -> Workload:
    torch = P.torch_or_none()
    assert torch is not None
    tm = vgcore.TorchModel(module)
    w = Workload(
        name,
        label,
        flops,
        lambda th: (torch.set_num_threads(th), vgcore.gradient_flow(tm, x).log_grad_norms)[1],
        family="torch-flow",
        steps=len(blocks),
        note=note,
    )
    w.peers.append(
        P.Peer(
            "torch fwd+bwd (retain_grad)",
            _retain_grad_norms(torch, module, blocks, x),
            configure=P.torch_configure(torch),
        )
    )
    return w


def torch_flow_transformer(quick: bool) -> Workload:
    torch = P.torch_or_none()
    assert torch is not None
    L, d, S, B = (4, 64, 32, 4) if quick else (12, 256, 128, 8)
    torch.manual_seed(0)
    module = nets.transformer(d, L, heads=8)
    x = torch.randn(B, S, d)
    flops = 3.0 * L * (2 * B * S * 12 * d * d + 4 * B * S * S * d)
    return _flow(
        "torch-flow-transformer",
        f"per-block flow TransformerEncoder L={L} d={d} S={S} B={B}",
        flops,
        module,
        x,
        list(module.layers),
        "floor: one forward + backward of the module with retain_grad on each block's output",
    )


def torch_flow_resnet(quick: bool) -> Workload:
    torch = P.torch_or_none()
    assert torch is not None
    nb, c, H, B = (4, 16, 16, 8) if quick else (8, 64, 32, 16)
    torch.manual_seed(0)
    module = nets.resnet(c, nb)
    x = torch.randn(B, 3, H, H)
    flops = 3.0 * 2 * B * H * H * 9 * c * c * (2 * nb)
    return _flow(
        "torch-flow-resnet",
        f"per-block flow ResNet-style CNN {nb} blocks c={c} {H}x{H} B={B}",
        flops,
        module,
        x,
        list(module),
        "floor: one forward + backward of the module with retain_grad on each block's output",
    )


def torch_singular_transformer(quick: bool) -> Workload:
    """Top-32 singular values of a Transformer encoder's input-output Jacobian (one sample, the
    whole (S, d) sequence): vgcore's block Krylov through jvp / vjp against the dense Jacobian
    by jacrev and torch.linalg.svdvals. The issue's size (S = 64, a 16384 x 16384 Jacobian)
    takes the dense peer about 20 minutes here, so the suite runs S = 16 (4096 x 4096);
    bench/torch_jac_bench.py measures S = 16, 32 and 64."""
    torch = P.torch_or_none()
    assert torch is not None
    L, d, S, k = (4, 64, 4, 8) if quick else (12, 256, 16, 32)
    torch.manual_seed(0)
    module = nets.transformer(d, L, heads=8)
    for p in module.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, S, d)
    n = S * d

    def ours(th: int) -> np.ndarray:
        r = vgcore.jacobian_singular_values(module, x, k=k, num_threads=th)
        return np.asarray(r.log_singular_values[0, :k], np.float64)

    def dense() -> np.ndarray:
        J = torch.func.jacrev(lambda v: module(v.reshape(1, S, d)).reshape(-1))(x.reshape(-1))
        return np.log(torch.linalg.svdvals(J).double().numpy()[:k])

    w = Workload(
        "torch-singular-transformer",
        f"top-{k} singular values TransformerEncoder L={L} d={d} S={S} (n={n})",
        # about 8 block-Krylov iterations, each a jvp and a vjp pass of a 16-vector block
        # (about two forwards' work per vector each): an estimate, not a count
        8.0 * 16 * 4 * L * (2 * S * 12 * d * d + 4 * S * S * d),
        ours,
        family="torch-singular",
        compare="logs",
        tol=1e-3,
        note="peer: the dense Jacobian (jacrev) and all its singular values (svdvals)",
        N=n,
    )
    w.peers.append(P.Peer("torch jacrev+svdvals", dense, configure=P.torch_configure(torch)))
    return w


def torch_cell_lyapunov(quick: bool) -> Workload:
    torch = P.torch_or_none()
    assert torch is not None
    from vgcore.torchmodel.cell import TorchCell

    N, k, T = (64, 8, 200) if quick else (256, 32, 2000)
    steps = 20 if quick else 200  # the jacrev loop's prefix (its cost per step is flat)
    torch.manual_seed(0)
    cell = torch.nn.GRUCell(N, N)
    with torch.no_grad():
        cell.weight_hh.mul_(4.0)  # near the edge of chaos: the top exponent close to 0
    gru = torch.nn.GRU(N, N)
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(gru, n + "_l0").copy_(getattr(cell, n))
    native = vgcore.GRU.from_torch(gru)
    x = torch.randn(T, 1, N)
    tc = TorchCell(cell)

    def ours(th: int, n: int = T) -> np.ndarray:
        torch.set_num_threads(th)
        return vgcore.lyapunov(tc, x[:n], k=k).exponents[0]

    def jacrev_qr() -> np.ndarray:
        jac = torch.func.jacrev(lambda h, xt: cell(xt, h))
        v0 = np.random.default_rng(0).standard_normal((k, N)).astype(F32)
        Q, _ = torch.linalg.qr(torch.from_numpy(v0).T)
        h = torch.zeros(1, N)
        logs = torch.zeros(k, dtype=torch.float64)
        with torch.no_grad():
            for t in range(steps):
                J = jac(h[0], x[t, 0])
                h = cell(x[t], h)
                Q, R = torch.linalg.qr(J @ Q)
                logs += R.diagonal().abs().log().double()
        return np.sort((logs / steps).numpy())[::-1].copy()

    w = Workload(
        "torch-cell-lyapunov-gru",
        f"TorchCell(GRUCell) Lyapunov N={N} k={k} T={T}",
        T * (2.0 * (k + 1) * 3 * N * N + 2.0 * 3 * N * N + 4.0 * N * k * k),
        ours,
        family="torch-lyapunov",
        compare="values",
        tol=1e-3,
        steps=T,
        reference=lambda n: ours(1, n),
        note="peers: a per-step jacrev + QR loop (a prefix, time scaled) and vgcore's native GRU",
        N=N,
        cell="gru",
    )
    w.peers.append(
        P.Peer("torch jacrev+QR loop", jacrev_qr, configure=P.torch_configure(torch), steps=steps)
    )
    xn = x.numpy()
    w.peers.append(
        P.Peer(
            "vgcore native GRU",
            lambda: vgcore.lyapunov(native, xn, k=k, num_threads=1).exponents[0],
            configure=P.torch_configure(torch),
        )
    )
    return w


def torch_workloads(quick: bool) -> list[tuple[str, Any]]:
    """``(name, factory)`` pairs, empty without torch."""
    from functools import partial

    if P.torch_or_none() is None:
        return []
    return [
        ("torch-flow-transformer", partial(torch_flow_transformer, quick)),
        ("torch-flow-resnet", partial(torch_flow_resnet, quick)),
        ("torch-singular-transformer", partial(torch_singular_transformer, quick)),
        ("torch-cell-lyapunov-gru", partial(torch_cell_lyapunov, quick)),
    ]

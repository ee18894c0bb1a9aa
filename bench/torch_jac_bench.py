"""Top-k singular values of a Transformer encoder's input-output Jacobian: vgcore vs jacrev + svdvals.

Standalone script (not collected by pytest). A 12-block ``nn.TransformerEncoder`` (d=256, 4 heads,
feed-forward 1024, eval mode, batch 1, float32): the Jacobian of the whole ``(seq, d)`` output with
respect to the whole input is ``seq*d x seq*d`` (16384 x 16384 at seq 64).

    python bench/torch_jac_bench.py                 # seq 64, dense baseline extrapolated
    python bench/torch_jac_bench.py --dense-seq 64  # time the dense baseline at full size too

The dense baseline (``torch.func.jacrev`` then ``torch.linalg.svdvals``) is O(n^3); it is timed
at ``--dense-seq`` (a smaller sequence by default) and, when that is below ``--seq``, its time is
extrapolated (jacrev ~ n^2 for attention models here, svdvals ~ n^3; both printed separately and
said to be extrapolated). Agreement of the top-k values is reported where both were computed at
the same size.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.func import jacrev
from torch.nn.attention import SDPBackend, sdpa_kernel

from vgcore.torchmodel.jacobians import singular_values


def encoder(d: int, layers: int, seed: int = 0) -> nn.TransformerEncoder:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()


def vgcore_topk(model: nn.TransformerEncoder, x: torch.Tensor, k: int, repeats: int):
    blocks = [(f"layers.{i}", m) for i, m in enumerate(model.layers)]
    times, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = singular_values(blocks, x, k=k, per_block=False)
        times.append(time.perf_counter() - t0)
    return res, times


def dense(model: nn.TransformerEncoder, x: torch.Tensor) -> tuple[np.ndarray, float, float]:
    n = x[0].numel()
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        t0 = time.perf_counter()
        J = jacrev(model)(x).reshape(n, n)
        t1 = time.perf_counter()
        s = torch.linalg.svdvals(J)
        t2 = time.perf_counter()
    return s.double().numpy(), t1 - t0, t2 - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dense-seq", type=int, default=16, help="sequence length of the dense run")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = encoder(args.d, args.layers)
    torch.manual_seed(1)
    x = torch.randn(1, args.seq, args.d)
    n = args.seq * args.d
    print(
        f"{args.layers}-block TransformerEncoder, d={args.d}, seq={args.seq}, batch 1, float32: "
        f"Jacobian {n} x {n}; top-{args.k}; torch threads {torch.get_num_threads()}"
    )

    res, times = vgcore_topk(model, x, args.k, args.repeats)
    med = statistics.median(times)
    print(
        f"vgcore top-{args.k}: median {med:.2f} s over {len(times)} runs "
        f"({', '.join(f'{t:.2f}' for t in times)}); {res.iterations} subspace iterations, "
        f"max error estimate {float(res.residuals.max()):.1e}, converged {bool(res.converged.all())}"
    )

    ds = args.dense_seq
    xd = x[:, :ds]
    nd = ds * args.d
    s_dense, t_jac, t_svd = dense(model, xd)
    print(f"dense at seq={ds} ({nd} x {nd}): jacrev {t_jac:.2f} s + svdvals {t_svd:.2f} s")
    if ds == args.seq:
        total = t_jac + t_svd
        top = np.exp(res.log_singular_values[0])
        rel = np.abs(top / s_dense[: args.k] - 1)
        print(
            f"dense total {total:.2f} s; speedup {total / med:.1f}x; top-{args.k} agreement: "
            f"max relative difference {rel.max():.2e}, median {np.median(rel):.2e}"
        )
    else:
        # Agreement at the dense size, then the extrapolated dense time at the full size.
        small, _ = vgcore_topk(model, xd, args.k, 1)
        top = np.exp(small.log_singular_values[0])
        rel = np.abs(top / s_dense[: args.k] - 1)
        f = args.seq / ds
        est = t_jac * f**2 + t_svd * f**3
        print(
            f"top-{args.k} agreement at seq={ds}: max relative difference {rel.max():.2e}, "
            f"median {np.median(rel):.2e}"
        )
        print(
            f"dense at seq={args.seq} EXTRAPOLATED (jacrev x{f:g}^2, svdvals x{f:g}^3): "
            f"{est:.0f} s; speedup about {est / med:.0f}x (extrapolated, not measured)"
        )


if __name__ == "__main__":
    main()

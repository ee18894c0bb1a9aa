"""Top-k singular values of a Transformer encoder's input-output Jacobian: vgcore vs jacrev + svdvals.

Standalone script (not collected by pytest). A 12-block ``nn.TransformerEncoder`` (d=256, 4 heads,
feed-forward 1024, eval mode, batch 1, float32): the Jacobian of the whole ``(seq, d)`` output with
respect to the whole input is ``n x n``, ``n = seq * d`` (16384 x 16384 at seq 64).

    python bench/torch_jac_bench.py                       # seq 64; dense measured at 16 and 32
    python bench/torch_jac_bench.py --dense-seq 16 32 64  # the whole dense baseline at seq 64 too

What is measured, and what is not:

- vgcore (``singular_values(blocks, x, k=32, per_block=False)``) at ``--seq``: median of
  ``--repeats`` runs.
- The dense baseline's Jacobian at ``--seq``: ``jacrev`` is ``vjp`` of the whole model vmapped
  over the ``n`` basis cotangents; its cost is measured on ``--rows`` of them (the same
  ``vmap(vjp)``, each run alternated with a vgcore run, median) and multiplied by
  ``n / rows``: linear in the rows by construction, said to be scaled.
- ``svdvals`` of the ``n x n`` Jacobian: measured where the whole dense Jacobian is built
  (``--dense-seq``), else extrapolated ``~ n^3`` from the largest measured size (said so).
- Agreement: at every ``--dense-seq`` the whole dense Jacobian is built with ``jacrev``
  (``chunk_size=--rows``) and its top-k values compared with vgcore's at the same size.

torch runs on ``--threads`` threads (default 1) for both methods alike: on a shared two-core
machine two OpenMP threads ran vgcore's passes 6x slower than one. The machine load (``uptime``)
is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.func import jacrev, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from vgcore.torchmodel.jacobians import singular_values


def encoder(d: int, layers: int, seed: int = 0) -> nn.TransformerEncoder:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()


def vgcore_topk(model: nn.TransformerEncoder, x: torch.Tensor, k: int) -> tuple[object, float]:
    blocks = [(f"layers.{i}", m) for i, m in enumerate(model.layers)]
    t0 = time.perf_counter()
    res = singular_values(blocks, x, k=k, per_block=False)
    return res, time.perf_counter() - t0


def jacrev_rows(model: nn.TransformerEncoder, x: torch.Tensor, rows: int) -> float:
    """Seconds for ``rows`` rows of the dense Jacobian, computed as ``jacrev`` does."""
    n = x[0].numel()
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        t0 = time.perf_counter()
        out, fn = vjp(model, x)
        basis = torch.eye(rows, n, dtype=x.dtype).reshape(rows, *out.shape)
        vmap(fn)(basis)
        return time.perf_counter() - t0


def dense(
    model: nn.TransformerEncoder, x: torch.Tensor, rows: int
) -> tuple[np.ndarray, float, float]:
    n = x[0].numel()
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        t0 = time.perf_counter()
        J = jacrev(model, chunk_size=rows)(x).reshape(n, n)
        t1 = time.perf_counter()
        s = torch.linalg.svdvals(J)
        t2 = time.perf_counter()
    return s.double().numpy(), t1 - t0, t2 - t1


def load() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:  # pragma: no cover
        return "load average unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1024, help="dense rows timed / jacrev chunk")
    ap.add_argument("--dense-seq", type=int, nargs="*", default=[16, 32])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.mha.set_fastpath_enabled(False)  # the same kernels for both methods
    model = encoder(args.d, args.layers)
    torch.manual_seed(1)
    x = torch.randn(1, args.seq, args.d)
    n = args.seq * args.d
    print(
        f"{args.layers}-block TransformerEncoder, d={args.d}, seq={args.seq}, batch 1, float32: "
        f"Jacobian {n} x {n}; top-{args.k}; torch threads {torch.get_num_threads()}; {load()}"
    )

    # vgcore and the dense rows, alternated, after a small warm-up of both.
    times, rtimes, res = [], [], None
    rows = min(args.rows, n)
    vgcore_topk(model, x[:, :4], min(args.k, 4 * args.d // 3))
    jacrev_rows(model, x[:, :4], 8)
    for _ in range(args.repeats):
        res, t = vgcore_topk(model, x, args.k)
        times.append(t)
        rtimes.append(jacrev_rows(model, x, rows))
    med = statistics.median(times)
    print(
        f"vgcore top-{args.k} at seq {args.seq}: median {med:.2f} s "
        f"({', '.join(f'{t:.2f}' for t in times)}); method {res.method}, {res.iterations} "
        f"iterations, max error estimate {float(res.residuals.max()):.1e}, converged "
        f"{bool(res.converged.all())}; {load()}"
    )
    t_jac = statistics.median(rtimes) * n / rows
    print(
        f"jacrev at seq {args.seq}: {rows} of {n} rows took median "
        f"{statistics.median(rtimes):.2f} s ({', '.join(f'{t:.2f}' for t in rtimes)}) "
        f"-> {t_jac:.0f} s for all rows (SCALED x{n / rows:g}, linear in the rows)"
    )

    # Dense at the smaller sizes: agreement and measured svdvals times.
    svd_at: dict[int, float] = {}
    for ds in args.dense_seq:
        xd = x[:, :ds]
        nd = ds * args.d
        s_dense, tj, ts = dense(model, xd, min(args.rows, nd))
        small, tv = vgcore_topk(model, xd, args.k)
        svd_at[nd] = ts
        top = np.exp(small.log_singular_values[0])
        rel = np.abs(top / s_dense[: args.k] - 1)
        print(
            f"seq {ds} ({nd} x {nd}), all measured: jacrev {tj:.1f} s + svdvals {ts:.1f} s = "
            f"{tj + ts:.1f} s; vgcore {tv:.2f} s ({small.iterations} iterations); ratio "
            f"{(tj + ts) / tv:.0f}x; top-{args.k} agreement: max relative difference "
            f"{rel.max():.1e}, median {np.median(rel):.1e}; {load()}"
        )
    if n in svd_at:
        t_svd, how = svd_at[n], "measured"
    elif svd_at:
        n_ref = max(svd_at)
        t_svd = svd_at[n_ref] * (n / n_ref) ** 3
        how = f"EXTRAPOLATED x{(n / n_ref) ** 3:g} (n^3) from {svd_at[n_ref]:.1f} s at n={n_ref}"
    else:
        print("no dense size measured: no svdvals time, no ratio")
        return
    total = t_jac + t_svd
    print(
        f"dense at seq {args.seq}: jacrev {t_jac:.0f} s (scaled from measured rows) + svdvals "
        f"{t_svd:.0f} s ({how}) = {total:.0f} s; vgcore {med:.2f} s; ratio {total / med:.0f}x "
        f"(jacrev alone: {t_jac / med:.0f}x)"
    )


if __name__ == "__main__":
    main()

"""TorchCell Lyapunov exponents: speed against a per-step jacrev + QR loop and the native GRU.

Standalone (``python bench/torch_cell_bench.py [--steps 2000] [--baseline-steps 200]
[--threads 1]``); every method runs on the same number of threads.
Workload: ``nn.GRUCell`` with N = 256 hidden units (input 256), top k = 32 exponents, T steps,
float32, batch B (default 1). Three methods on the same weights and inputs:

- ``torchcell``: :func:`vgcore.torchmodel.cell.lyapunov` (``vmap`` over k of ``jvp``, batched
  Householder QR, float64 log accumulation on the device): by default the tangent step traced
  once into a simplified aten graph (outside the timer; the tracing time is printed), with
  ``trace=False`` (functorch eagerly every step) and with ``compile=True`` (compiled once
  outside the timer; the compilation time is printed);
- ``jacrev``: the straightforward torch loop, per step a dense Jacobian from
  ``torch.func.jacrev`` (vmapped over the batch), ``Q <- J Q`` and ``torch.linalg.qr``;
- ``native``: :func:`vgcore.lyapunov` on ``vgcore.GRU.from_torch`` of an ``nn.GRU`` holding the
  cell's weights (the compiled kernels).

The jacrev loop is slow, so it is timed over ``--baseline-steps`` steps and its time per step
scaled to T (it costs the same every step); the exponents of all three are compared on a common
prefix of the sequence. Prints the medians of ``--repeats`` rounds (warm-up outside the timer)
and the ratios; the methods alternate within each round (noise on a shared machine hits them
alike).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import vgcore
from vgcore.torchmodel.cell import TorchCell, lyapunov


def jacrev_qr_lyapunov(cell: torch.nn.GRUCell, x: torch.Tensor, k: int, seed: int) -> np.ndarray:
    """The baseline: dense per-step Jacobians by jacrev, then QR; (B, k) exponents."""
    T, B, _ = x.shape
    N = cell.hidden_size
    jac = torch.func.vmap(torch.func.jacrev(lambda h, xt: cell(xt, h)))
    v0 = np.random.default_rng(seed).standard_normal((B, k, N)).astype(np.float32)
    Q, _ = torch.linalg.qr(torch.from_numpy(v0).transpose(1, 2))
    h = torch.zeros(B, N)
    logs = torch.zeros(B, k, dtype=torch.float64)
    with torch.no_grad():
        for t in range(T):
            J = jac(h, x[t])  # (B, N, N)
            h = cell(x[t], h)
            Q, R = torch.linalg.qr(J @ Q)
            logs += R.diagonal(dim1=-2, dim2=-1).abs().log().double()
    return (-np.sort(-(logs / T).numpy(), axis=1)).astype(np.float64)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--input", type=int, default=256)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--baseline-steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and vgcore threads (1 by default: on a shared 2-core machine a second "
        "thread that must wait for a busy core slows small steps down several times)",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    N, I, k, T, B = a.hidden, a.input, a.k, a.steps, a.batch
    Tb = min(a.baseline_steps, T)
    cell = torch.nn.GRUCell(I, N)
    with torch.no_grad():
        cell.weight_hh.mul_(4.0)  # near the edge of chaos: the top exponent close to 0
    gru = torch.nn.GRU(I, N)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(gru, name + "_l0").copy_(getattr(cell, name))
    native = vgcore.GRU.from_torch(gru)
    x = torch.randn(T, B, I)
    xn = x.numpy()
    tc = TorchCell(cell)
    print(
        f"GRUCell N={N} input={I} k={k} T={T} B={B} float32, torch {torch.__version__}, "
        f"{threads} torch thread(s), vgcore {vgcore.__version__}, median of {a.repeats}"
    )

    t0 = time.perf_counter()  # the first trace of the process sets up torch's tracing
    lyapunov(TorchCell(torch.nn.GRUCell(I, N)), x[:2], k=k)
    t_trace_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    lyapunov(tc, x[:2], k=k)  # the traced tangent step (cached for the timed runs)
    t_trace = time.perf_counter() - t0
    t0 = time.perf_counter()
    lyapunov(tc, x[:2], k=k, compile=True)  # compilation (cached for the timed runs)
    t_compile = time.perf_counter() - t0
    # alternated rounds: every method once per round, medians over the rounds
    methods: dict[str, Callable[[], Any]] = {
        "traced": lambda: lyapunov(tc, x, k=k),
        "eager": lambda: lyapunov(tc, x, k=k, trace=False),
        "compiled": lambda: lyapunov(tc, x, k=k, compile=True),
        "native": lambda: vgcore.lyapunov(native, xn, k=k, num_threads=a.threads),
        "jacrev": lambda: jacrev_qr_lyapunov(cell, x[:Tb], k, seed=0),
    }
    out: dict[str, Any] = {}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for fn in methods.values():  # warm-up
        fn()
    for _ in range(a.repeats):
        for m, fn in methods.items():
            t0 = time.perf_counter()
            out[m] = fn()
            times[m].append(time.perf_counter() - t0)
    med = {m: statistics.median(v) for m, v in times.items()}
    t_cell, res = med["traced"], out["traced"]
    t_eager, res_e = med["eager"], out["eager"]
    t_comp, res_c = med["compiled"], out["compiled"]
    t_nat, ref = med["native"], out["native"]
    base = out["jacrev"]
    t_base_T = med["jacrev"] * T / Tb
    # agreement on the common prefix of Tb steps (same initial tangents: seed 0)
    short = lyapunov(tc, x[:Tb], k=k).exponents
    short_nat = vgcore.lyapunov(native, xn[:Tb], k=k).exponents
    agree_base = float(np.max(np.abs(short - base)))
    agree_nat = float(np.max(np.abs(res.exponents - ref.exponents)))
    agree_comp = float(np.max(np.abs(res_c.exponents - res.exponents)))
    agree_eager = float(np.max(np.abs(res_e.exponents - res.exponents)))
    agree_nat_short = float(np.max(np.abs(short - short_nat)))
    assert np.all(np.isfinite(res.exponents)) and max(agree_base, agree_nat, agree_comp) < 1e-3

    rows = [
        ("torchcell (traced tangent graph, default)", t_cell, T),
        ("torchcell, trace=False (jvp + vmap)", t_eager, T),
        ("torchcell, compile=True (compiled once)", t_comp, T),
        (f"jacrev + QR loop (timed over {Tb} steps)", t_base_T, T),
        ("vgcore native GRU", t_nat, T),
    ]
    for name, t, steps in rows:
        print(f"  {name:44s} {t:9.3f} s for {steps} steps  ({1e3 * t / steps:8.3f} ms/step)")
    print(
        f"  tracing (once per cell, dtype and shape): {t_trace:.2f} s ({t_trace_first:.1f} s for "
        f"the first trace of the process); compilation: {t_compile:.1f} s"
    )
    print(
        f"  speed-up over jacrev + QR: traced {t_base_T / t_cell:5.1f}x, trace=False "
        f"{t_base_T / t_eager:5.1f}x, compiled {t_base_T / t_comp:5.1f}x; including the "
        f"one-off work: traced {t_base_T / (t_cell + t_trace):5.1f}x, compiled "
        f"{t_base_T / (t_comp + t_compile):5.1f}x  (target >= 5x)"
    )
    print(
        f"  time ratio to native: traced {t_cell / t_nat:5.1f}x, trace=False "
        f"{t_eager / t_nat:5.1f}x, compiled {t_comp / t_nat:5.1f}x"
    )
    print(
        f"  top exponent {res.exponents[0, 0]:+.5f}; max |diff| torchcell vs native "
        f"{agree_nat:.1e} (T={T}), vs native {agree_nat_short:.1e} and vs jacrev "
        f"{agree_base:.1e} (T={Tb}); compiled vs traced {agree_comp:.1e}, trace=False vs traced "
        f"{agree_eager:.1e}"
    )


if __name__ == "__main__":
    main()

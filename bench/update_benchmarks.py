"""Run the whole benchmark suite and rewrite BENCHMARKS.md, its plot and the raw results.

    python bench/update_benchmarks.py                    # full run (see BENCHMARKS.md for time)
    python bench/update_benchmarks.py --from-json bench/results.json   # re-render only

Run it on a quiet machine: every implementation is timed at 1 and 2 threads, and a second
process on the machine changes which wins.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HEADER = """# Benchmarks

vgcore against the frameworks on the canonical workloads of issue 6, all computed in one run
by `vgcore bench` (float32). Every peer's answer is checked against vgcore's before its time
counts.
{preliminary}
## What is measured

1. MLP gradient flow: tanh, L=200, N=512, B=128 (per-layer `||dL/dh_l||`).
2. BPTT gradient norms through time: LSTM, GRU, tanh RNN, N=256, input 64, B=32, T=1000.
3. Top-32 Lyapunov exponents: LSTM, GRU, tanh RNN, N=256, B=1, T=2000, QR every step.
4. Exact per-step spectral radius (and sigma_max): tanh RNN, N=1024, 50 steps.
5. All singular values of the input-output Jacobian: tanh MLP, orthogonal init, L=1000, N=256.
6. Size sweep N = 16, 64, 256, 1024 for workloads 2 and 3.

Peers, when installed: PyTorch eager (cell or layer loop with `retain_grad`), `torch.func`
(`vmap(jvp)`, `jacrev`), JAX (`jit` + `lax.scan` + `vmap(jvp)`, QR inside the scan), NumPy
(hand-written BPTT; LAPACK eigenvalues). Each is run at 1 and 2 threads (PyTorch also with
`set_flush_denormal`, since its float32 BPTT otherwise crawls through denormals; JAX in worker
processes, `1t pinned` = XLA's intra-op pool off and `sched_setaffinity` to one core, as XLA
ignores thread settings; NumPy's own OpenBLAS set to 1 or 2 threads), and the best setting
counts. Peers too slow for the whole sequence (`jacrev` Lyapunov, N=1024 rows, the spectral
radius) run a prefix, are checked against vgcore on that prefix and their time is scaled (the
per-step cost is flat). Contracting models (PyTorch's default init) keep float32 Lyapunov
exponents comparable over 2000 steps.

FLOP counts are in `python/vgcore/bench/workloads.py`; "% GEMM peak" sets each workload's
GFLOP/s against a 1024^3 float32 GEMM through vgcore's own BLAS (scipy-openblas32) at the same
thread count, the best of that GEMM measured just before and just after the workload (a shared
VM's GEMM throughput moves by up to 2x over minutes; the targets table also gives the fraction
of the best GEMM of the whole run). Where the environment forces older OpenBLAS kernels through
`OPENBLAS_CORETYPE`, the peak is the faster of that and the same GEMM with the kernels
OpenBLAS's CPU detection picks, measured in a child process. "% same-shape GEMM" sets it
against a GEMM of the shape that dominates the workload (e.g. 32x1024x256 for the LSTM BPTT),
measured right after it. NumPy links a different
OpenBLAS (scipy-openblas64), reported below.

## How to reproduce

```bash
pip install ".[bench]"                 # jax, torch==2.13.0 (pinned), pytest-benchmark
vgcore bench                           # everything: the table below ({duration})
vgcore bench --quick                   # small sizes, about a minute
vgcore bench --only bptt,lyapunov --threads 1 --json out.json --markdown out.md --plot out.png
python bench/update_benchmarks.py      # full run, rewrites this file and its plot
VGCORE_BENCH_FULL=1 python -m pytest bench --benchmark-enable   # pytest-benchmark groups
```

## Results
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-json", metavar="FILE", help="render these results instead of running")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results.json"))
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "benchmarks.png"))
    ap.add_argument(
        "--preliminary", metavar="WHY", help="mark the numbers as preliminary, saying why"
    )
    ap.add_argument("--quick", action="store_true", help="quick sizes (to test this script)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    from vgcore.bench import assign_gemm_fractions, format_report, plot_ratios, run_suite

    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
        assign_gemm_fractions(doc)  # as the current code defines them
    else:
        doc = run_suite(quick=args.quick, repeat=args.repeat, log=lambda m: print(m, flush=True))
        Path(args.json).write_text(json.dumps(doc, indent=1, default=float) + "\n")
    doc = json.loads(json.dumps(doc, default=float))  # the same shapes either way
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    plot_ratios(doc, args.plot)
    prelim = ""
    if args.preliminary:
        prelim = f"\n> **Preliminary numbers.** {args.preliminary}\n"
    minutes = doc.get("elapsed_s", 0) / 60
    header = HEADER.format(
        preliminary=prelim,
        duration=f"about {minutes:.0f} minutes on this machine" if minutes else "see below",
    )
    rel = Path(args.plot).resolve()
    try:
        rel_s = str(rel.relative_to(Path(args.out).resolve().parent))
    except ValueError:
        rel_s = str(rel)
    body = format_report(doc)
    Path(args.out).write_text(
        f"{header}\n![peer time / vgcore time]({rel_s})\n\n{body}\n", encoding="utf-8"
    )
    print(f"wrote {args.out}, {args.plot}" + ("" if args.from_json else f", {args.json}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

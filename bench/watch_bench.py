"""Overhead of ``vgcore.watch`` on CPU training loops (a standalone script, not a test).

Three loops (Adam, cross-entropy / MSE): an 8-layer MLP (width 512, batch 128), a 2-layer LSTM
(N=256, T=100, batch 32) and a 6-block Transformer encoder (d=256, sequence 128, batch 8).
Each round times ``--steps`` steps unwatched, watched with ``every=1`` and with ``every=10``,
in a rotating order (paired and alternated, so drifts of a shared machine hit all three);
the overhead is the median over rounds of (watched / unwatched - 1), printed with its spread
over the rounds (the middle half and the extremes). Targets: at most 10% with every=1 and 2%
with every=10.

    python bench/watch_bench.py                 # all three, default rounds
    python bench/watch_bench.py --only mlp --rounds 9 --steps 10 --json out.json
    python bench/watch_bench.py --threads 1 --clock process   # on a shared, busy machine
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any


def _workloads(device: str) -> dict[str, Any]:
    """The loops of ``vgcore bench``'s watch rows (one definition):
    name -> () -> (model, loss_fn)."""
    from vgcore.bench.watch_workloads import LOOPS, training_loop

    def make(name: str) -> Any:
        model, loss_of, _, _ = training_loop(name, device)
        return model, lambda: loss_of(model)

    return {name: (lambda name=name: make(name)) for name in LOOPS}


def _time_steps(
    model: Any,
    opt: Any,
    loss_fn: Any,
    steps: int,
    every: int | None,
    sync: Any,
    clock: Any,
    options: dict[str, Any] | None = None,
) -> float:
    """Seconds per step over ``steps`` steps; ``every=None``: unwatched."""
    import vgcore.watch as vw

    w = vw.watch(model, opt, every=every, **(options or {})) if every is not None else None
    try:
        # a long-lived monitor: buffers allocated, the next step a logged one, so the timed
        # window holds exactly steps / every logged steps
        for _ in range(every or 0):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            opt.step()
            if w is not None:
                w.observe(loss=loss)
        sync()
        t0 = clock()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            opt.step()
            if w is not None:
                w.observe(loss=loss)
        sync()
        return (clock() - t0) / steps
    finally:
        if w is not None:
            w.close()


def run(
    names: list[str],
    rounds: int,
    steps: int,
    device: str = "cpu",
    threads: int | None = None,
    clock_name: str = "wall",
) -> dict[str, Any]:
    import torch

    # "process": CPU time of this process (with --threads 1, robust on a shared machine where
    # other jobs steal the cores; wall time there measures the neighbours)
    clock = time.process_time if clock_name == "process" else time.perf_counter
    if threads:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out: dict[str, Any] = {
        "device": device,
        "threads": torch.get_num_threads(),
        "clock": clock_name,
        "rows": {},
    }
    # (label, every, watch options); "every1_lean": no activation statistics and no gradients
    # at block outputs (parameter norms and update ratios only); "every1_upd10": everything,
    # the update norms and ratios on every 10th logged step
    configs: list[tuple[str, int | None, dict[str, Any]]] = [
        ("plain", None, {}),
        ("every1", 1, {}),
        ("every10", 10, {}),
        ("every1_lean", 1, {"activations": False, "output_grads": False}),
        ("every1_upd10", 1, {"update_every": 10}),
    ]
    for name in names:
        model, loss_fn = _workloads(device)[name]()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        for _, every, o in configs:  # warm-up, outside the timings
            _time_steps(model, opt, loss_fn, 2, every, sync, clock, o)
        times: dict[str, list[float]] = {c[0]: [] for c in configs}
        for r in range(rounds):
            k = r % len(configs)
            for label, every, o in configs[k:] + configs[:k]:
                times[label].append(_time_steps(model, opt, loss_fn, steps, every, sync, clock, o))
        base = times["plain"]
        row: dict[str, Any] = {
            "step_ms": 1e3 * statistics.median(base),
            "rounds": rounds,
            "steps": steps,
        }
        for label, _, _ in configs[1:]:
            # paired: each round's watched time against the same round's unwatched time
            ratios = sorted(t / b - 1.0 for t, b in zip(times[label], base))
            row[f"overhead_{label}"] = statistics.median(ratios)
            # the spread over rounds: the middle half and the extremes
            q = len(ratios) // 4
            row[f"spread_{label}"] = [ratios[0], ratios[q], ratios[-1 - q], ratios[-1]]
        out["rows"][name] = row
        print(
            f"{name:12s} step {row['step_ms']:8.2f} ms   overhead "
            + "   ".join(
                f"{lab} {100 * row[f'overhead_{lab}']:+6.2f}%" for lab, _, _ in configs[1:]
            ),
            flush=True,
        )
        print(
            f"{'':12s} spread over rounds (middle half; min..max) "
            + "   ".join(
                "{} {:+.1f}..{:+.1f} ({:+.1f}..{:+.1f})".format(
                    lab,
                    *(100 * v for v in row[f"spread_{lab}"][1:3]),
                    *(100 * v for v in row[f"spread_{lab}"][::3]),
                )
                for lab, _, _ in configs[1:]
            ),
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=["mlp", "lstm", "transformer"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=["wall", "process"], default="wall")
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    args = ap.parse_args(argv)
    unknown = set(args.only) - {"mlp", "lstm", "transformer"}
    if unknown:
        ap.error(f"--only: unknown workload(s) {sorted(unknown)}")
    res = run(args.only, args.rounds, args.steps, args.device, args.threads, args.clock)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

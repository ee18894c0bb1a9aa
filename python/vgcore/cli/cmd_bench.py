"""`vgcore bench`: vgcore against its peers."""

from __future__ import annotations

import argparse
import json
import sys

from vgcore.cli._common import UsageError


# bench
def _cmd_bench(args: argparse.Namespace) -> int:
    from vgcore.bench import format_report, format_table, plot_ratios, run_suite
    from vgcore.bench.workloads import UnknownWorkloadError

    only = [o for o in (args.only or "").split(",") if o] or None
    try:
        threads = sorted({int(t) for t in args.thread_list.split(",") if t.strip()})
    except ValueError:
        msg = f"--threads takes a comma-separated list of counts, got {args.thread_list!r}"
        raise UsageError(msg) from None
    if not threads or min(threads) < 1:
        raise UsageError(f"--threads takes counts >= 1, got {args.thread_list!r}")
    if args.repeat < 1:
        raise UsageError(f"--repeat must be >= 1, got {args.repeat}")
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else print
    try:  # run_suite selects the workloads before any work
        doc = run_suite(
            quick=args.quick,
            only=only,
            repeat=args.repeat,
            sweep=not args.no_sweep,
            memory=not args.no_memory,
            threads=threads,
            budget_s=args.budget,
            log=log,
            trap=not args.no_trap,
        )
    except UnknownWorkloadError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1, default=float)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(format_report(doc) + "\n")
    if args.plot:
        plot_ratios(doc, args.plot)
    print(format_table(doc))
    return 0

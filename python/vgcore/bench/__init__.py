"""Benchmarks against the frameworks, as a product feature (``vgcore bench``).

Every workload is computed by vgcore and, in the same run, by each installed peer (PyTorch
eager and torch.func, JAX jit in worker processes, NumPy) at each of its thread settings. A
peer's result is checked against vgcore's before its time counts; times are medians, ratios are
peer / vgcore at each one's best setting, and each workload's GFLOP/s is set against the
machine's GEMM throughput through the same BLAS, measured in the same run.

>>> from vgcore.bench import run_suite, format_report
>>> doc = run_suite(quick=True, only=["bptt-lstm"])      # doctest: +SKIP
>>> print(format_report(doc))                             # doctest: +SKIP
"""

from __future__ import annotations

from vgcore.bench.report import format_report, format_table, plot_ratios
from vgcore.bench.suite import (
    assign_gemm_fractions,
    memory_report,
    run_suite,
    run_workload,
    thread_trap_report,
)
from vgcore.bench.targets import check_targets, format_targets
from vgcore.bench.workloads import Workload, all_workloads, select_workloads

__all__ = [
    "Workload",
    "all_workloads",
    "assign_gemm_fractions",
    "check_targets",
    "format_report",
    "format_table",
    "format_targets",
    "memory_report",
    "plot_ratios",
    "run_suite",
    "run_workload",
    "select_workloads",
    "thread_trap_report",
]

"""Running the benchmark suite: each workload timed for vgcore and its peers, the GEMM peaks,
thread traps and memory (``vgcore bench``)."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vgcore.bench.machine import (
    busy_core,
    detected_kernels_peak,
    gemm_gflops,
    gemm_peak,
    machine_info,
    peak_rss_mb,
)
from vgcore.bench.peers import close_jax_pool, median, setting_label, timed, timed_pair
from vgcore.bench.workloads import (
    Workload,
    accurate_fraction,
    agreement,
    coverage,
    peer_coverage,
    select_workloads,
)


def _select(settings: list[dict[str, Any]], threads: Sequence[int]) -> list[dict[str, Any]]:
    return [s for s in settings if s.get("threads", 0) in (0, *threads)]


def run_workload(
    w: Workload,
    repeat: int = 5,
    threads: Sequence[int] = (1, 2),
    budget_s: float = 15.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time vgcore and every peer at each thread setting; check each peer's answer.

    Each setting gets one untimed warm-up run, then up to ``repeat`` timed runs (fewer once
    ``budget_s`` seconds have been spent); the median counts."""
    t_start = time.perf_counter()
    ours: dict[int, float] = {}
    result = None
    for th in threads:
        times, result = timed(functools.partial(w.vgcore, th), repeat, budget_s)
        ours[th] = median(times)
    assert result is not None
    result = np.asarray(result, np.float64)
    best_th = min(ours, key=lambda t: ours[t])
    row: dict[str, Any] = {
        "workload": w.name,
        "label": w.label,
        "family": w.family,
        "cell": w.cell,
        "N": w.N,
        "sweep": w.sweep,
        "flops": w.flops,
        "steps": w.steps,
        "note": w.note,
        "compare": w.compare,
        "tol": w.tol,
        "vgcore_s": ours,
        "vgcore_best_threads": best_th,
        "vgcore_best_s": ours[best_th],
        "gflops": w.flops / ours[best_th] / 1e9,
        "gemm_shape": w.gemm_shape,
        "peers": [],
    }
    if w.compare == "curve":
        row["vgcore_coverage"] = coverage(result, logs=True)
    if w.unscaled is not None:
        row["rescale_cost"] = rescale_cost(w, best_th, repeat, budget_s, result)
        c = row["rescale_cost"]
        log(
            f"  log scale: {c['extra']:+.1%} time against vgcore unscaled "
            f"({c['unscaled_s']:.4g} s, {best_th}t, which covers {c['unscaled_coverage']:.0%})"
        )
    refs: dict[int, np.ndarray] = {}
    for peer in w.peers:
        steps = getattr(peer, "steps", None)
        if steps and steps < w.steps:
            if steps not in refs:
                assert w.reference is not None
                refs[steps] = np.asarray(w.reference(steps), np.float64)
            ref, scale = refs[steps], w.steps / steps
        else:
            ref, scale = result, 1.0
        times_by: dict[str, float] = {}
        t_peer = time.perf_counter()
        agree: float | None = None
        cov_by: dict[str, dict[str, float]] = {}
        for s in _select(peer.settings, threads):
            try:
                times, out = peer.measure(s, repeat, budget_s)
            except Exception as exc:  # a peer that fails is reported, not fatal
                log(f"  {peer.name} [{setting_label(s)}] failed: {type(exc).__name__}: {exc}")
                continue
            a = agreement(w.compare, ref, out)
            agree = a if agree is None else max(agree, a)
            cov = peer_coverage(w.compare, ref, out)
            if cov is not None:
                cov_by[setting_label(s)] = cov
            times_by[setting_label(s)] = median(times) * scale
        if not times_by or agree is None:
            continue
        best = min(times_by, key=lambda k: times_by[k])
        cov = cov_by.get(best)
        ok = bool(agree <= w.tol)
        entry = {
            "peer": peer.name,
            "times_s": times_by,
            "best_setting": best,
            "best_s": times_by[best],
            "ratio": times_by[best] / ours[best_th],
            "agreement": agree,
            "ok": ok,
            "steps": steps,
            "coverage": cov,  # at the best setting
            "coverage_by_setting": cov_by,
            "elapsed_s": time.perf_counter() - t_peer,
        }
        row["peers"].append(entry)
        log(
            f"  {peer.name}: {times_by[best]:.4g} s ({best}"
            + (f", {steps} of {w.steps} steps, scaled" if steps and steps < w.steps else "")
            + f"), ratio {entry['ratio']:.2f}x, agreement {agree:.1e}"
            + ("" if ok else f" > {w.tol:g}: FAILS the check, time not counted")
            + (f", curve covered {cov['peer']:.0%}" if cov and w.compare == "curve" else "")
            + f" [{entry['elapsed_s']:.1f} s]"
        )
    row["elapsed_s"] = time.perf_counter() - t_start
    return row


def rescale_cost(
    w: Workload, threads: int, repeat: int, budget_s: float, result: np.ndarray
) -> dict[str, Any]:
    """What vgcore's power-of-two rescaling (the log-scale norms) costs: vgcore with and without
    it, run alternately at ``threads``; the paired median of the time ratios, minus 1."""
    assert w.unscaled is not None
    unscaled = w.unscaled
    on, off, out = timed_pair(
        lambda: w.vgcore(threads), lambda: unscaled(threads), max(repeat, 5), budget_s
    )
    out = np.asarray(out, np.float64)
    finite = np.isfinite(out)
    return {
        "threads": threads,
        "scaled_s": median(on),
        "unscaled_s": median(off),
        "extra": median([a / b for a, b in zip(on, off)]) - 1.0,
        "unscaled_coverage": float(finite.mean()),
        "unscaled_accurate": accurate_fraction(result, np.exp(out)),
        # Where the unscaled curve is in range (above the peers' floor) it is the same answer.
        "agreement": agreement(w.compare, result, np.exp(out)),
    }


def by_threads(d: dict[Any, Any], th: int) -> Any:
    """d[th] whether the thread counts are ints (in process) or strings (from JSON)."""
    return d[th] if th in d else d[str(th)]


def _best_gemm(
    samples: Sequence[dict[Any, dict[str, float]]], detected: dict[Any, Any] | None = None
) -> dict[Any, dict[str, float]]:
    """Per thread count and precision, the best of the GEMM samples (and of the detected
    kernels' peak, where it was measured)."""
    best = {th: dict(g) for th, g in samples[0].items()}
    for th, g in best.items():
        for prec in g:
            vals = [by_threads(s, th)[prec] for s in samples]
            if detected:
                vals.append(by_threads(detected, th)[prec])
            g[prec] = max(vals)
    return best


def assign_gemm_fractions(doc: dict[str, Any]) -> None:
    """Each row's "% GEMM peak" (``gemm_fraction``): its GFLOP/s against the best 1024^3 GEMM
    measured just before and just after it, the machine's limit in the conditions the workload
    ran in (a shared VM's GEMM throughput moves by 2x over minutes); and against the best GEMM
    of the whole run (``gemm_fraction_run``, the conservative figure). Runs without per-workload
    samples use the run's peak for both."""
    samples = doc.get("gemm_gflops_samples") or []
    detected = doc.get("gemm_gflops_detected") or {}
    rows = doc["rows"]
    for i, row in enumerate(rows):
        th = row["vgcore_best_threads"]
        run_peak = by_threads(doc["gemm_peak"], th)["float32"]
        local = run_peak
        if len(samples) == len(rows) + 1:
            local = by_threads(_best_gemm(samples[i : i + 2], detected), th)["float32"]
        row["gemm_local_peak"] = local
        row["gemm_fraction"] = row["gflops"] / local
        row["gemm_fraction_run"] = row["gflops"] / run_peak


# Workloads timed with the other core busy: the batch-parallel kernels (MLP, BPTT), the
# Lyapunov helper thread and the singular-value helper; NumPy's BPTT shows the trap itself.
TRAP_WORKLOADS = ("mlp-flow", "bptt-lstm", "lyapunov-rnn", "singular-values")


def thread_trap_report(
    quick: bool = False,
    repeat: int = 5,
    budget_s: float = 6.0,
    log: Callable[[str], None] = print,
    names: Sequence[str] = TRAP_WORKLOADS,
) -> list[dict[str, Any]]:
    """The thread trap: with another process spinning on one of the cores, vgcore at 2 threads
    (its default on a 2-core machine) against 1 thread, run alternately; NumPy's peer likewise
    where the workload has one (two-thread BLAS on small matrices is where the trap bites)."""
    out: list[dict[str, Any]] = []
    for _, make in select_workloads(list(names), quick, sweep=False):
        w = make()
        with busy_core():
            one, two = functools.partial(w.vgcore, 1), functools.partial(w.vgcore, 2)
            t1, t2, _ = timed_pair(one, two, repeat, budget_s)
            entry: dict[str, Any] = {
                "workload": w.name,
                "label": w.label,
                "vgcore_s": {1: median(t1), 2: median(t2)},
                "vgcore_ratio": median([b / a for a, b in zip(t1, t2)]),
            }
            numpy_peer = next((p for p in w.peers if p.name == "numpy"), None)
            if numpy_peer is not None:
                times = {
                    th: median(numpy_peer.measure({"threads": th}, repeat, budget_s)[0])
                    for th in (1, 2)
                }
                entry["numpy_s"] = times
                entry["numpy_ratio"] = times[2] / times[1]
        log(
            f"  {w.label}, other core busy: vgcore 2t / 1t = {entry['vgcore_ratio']:.2f}"
            + (f"; numpy 2t / 1t = {entry['numpy_ratio']:.2f}" if "numpy_ratio" in entry else "")
        )
        out.append(entry)
        del w
    return out


def memory_line(m: dict[str, Any]) -> str:
    """One line for a memory_report entry."""
    s = f"peak {m['peak_rss_mb']:.0f} MB, {m['extra_mb']:.1f} MB above the {m['baseline_mb']:.0f} MB baseline"
    return s + (
        f" (which holds the {m['input_mb']:.1f} MB input array)" if m.get("input_mb") else ""
    )


def memory_report(quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Peak resident memory of Lyapunov exponents (LSTM N=256, k=32, input streamed in chunks
    of 1000 steps; a selective SSM, d_model 16, d_state 4, k=16, likewise) and of input-output
    singular values (tanh RNN N=64, whole input array) at
    T = 1e3, 1e4 and 1e5 (1e5 left out when quick), each in a fresh process."""
    Ts = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    out: dict[str, Any] = {}
    for T in Ts:
        key = f"lyapunov LSTM N=256 k=32, input streamed, T={T}"
        out[key] = m = peak_rss_mb("lyapunov", T, 256, kind="lstm", k=32)
        log(f"  lyapunov LSTM N=256 k=32 T={T}: {memory_line(m)}")
    for T in Ts:  # issue 17: a selective SSM's engine holds O(k D) values too
        key = f"selective SSM lyapunov d_model=16 d_state=4 k=16, input streamed, T={T}"
        out[key] = m = peak_rss_mb("lyapunov", T, 4, kind="selective_ssm", k=16, input_size=16)
        log(f"  lyapunov selective SSM d_model=16 d_state=4 k=16 T={T}: {memory_line(m)}")
    for T in Ts:
        key = f"singular values RNN N=64, input array, T={T}"
        out[key] = m = peak_rss_mb("singular", T, 64, kind="rnn")
        log(f"  jacobian_singular_values RNN N=64 T={T}: {memory_line(m)}")
    return out


def run_suite(
    quick: bool = False,
    only: list[str] | None = None,
    repeat: int = 5,
    sweep: bool = True,
    memory: bool = True,
    threads: Sequence[int] = (1, 2),
    budget_s: float | None = None,
    log: Callable[[str], None] = print,
    trap: bool = True,
) -> dict[str, Any]:
    """Run the suite; returns a JSON-able dict (machine, GEMM peaks, rows, memory, and the
    thread trap: vgcore on 2 threads with the other core busy, where the run has 2 threads).

    ``only``: substrings of workload names (``mlp-flow``, ``bptt-lstm-N256``, ``lyapunov``,
    ``spectral-radius``, ``singular-values``, ``N1024`` ...). ``budget_s``: seconds of timed
    runs per setting before fewer than ``repeat`` are taken (default 1 quick, 6 full)."""
    t0 = time.perf_counter()
    selected = select_workloads(only, quick, sweep=sweep)  # bad names fail before any work
    threads = tuple(sorted(set(threads)))
    budget = budget_s if budget_s is not None else (1.0 if quick else 6.0)
    doc: dict[str, Any] = {
        "machine": machine_info(),
        "quick": quick,
        "threads": list(threads),
        "repeat": repeat,
    }
    # The machine's limit is the best GEMM it ran during the suite: measured before every
    # workload and at the end (a shared machine has slow patches; one measurement at the start
    # can land in one and push "% GEMM peak" above 100%).
    samples: list[dict[int, dict[str, float]]] = []

    def sample_peak() -> dict[int, dict[str, float]]:
        samples.append({th: gemm_peak(th) for th in threads})
        return samples[-1]

    # Where the environment forces older kernels (OPENBLAS_CORETYPE), also measure the ones
    # OpenBLAS would pick, and hold every workload to the larger peak.
    if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("VGCORE_BLAS_CORETYPE"):
        best = detected_kernels_peak(threads)
        if best is not None:
            doc["gemm_gflops_detected"] = {"kernels": best["kernels"], **best["peak"]}
    detected = doc.get("gemm_gflops_detected")
    before = sample_peak()
    log(
        "GEMM through vgcore's BLAS, 1024^3 (GFLOP/s): "
        + ", ".join(
            f"{th}t float32 {g['float32']:.0f} float64 {g['float64']:.0f}"
            for th, g in before.items()
        )
    )
    rows: list[dict[str, Any]] = []
    try:
        for name, make in selected:
            if rows:
                before = sample_peak()
            w = make()
            assert w.name == name, (w.name, name)
            log(f"{w.label} ...")
            row = run_workload(w, repeat, threads, budget, log)
            th = row["vgcore_best_threads"]
            peak_before = _best_gemm([before], detected)[th]["float32"]
            if w.gemm_shape:  # the best of the thread counts up to vgcore's
                row["gemm_shape_gflops"] = max(
                    gemm_gflops(*w.gemm_shape, threads=t) for t in threads if t <= th
                )
                row["shape_fraction"] = row["gflops"] / row["gemm_shape_gflops"]
            log(
                f"  vgcore: {row['vgcore_best_s']:.4g} s ({th}t), {row['gflops']:.0f} GFLOP/s = "
                f"{row['gflops'] / peak_before:.0%} of the GEMM peak just before it"
                + (
                    f", {row['shape_fraction']:.0%} of a {'x'.join(map(str, w.gemm_shape))} GEMM"
                    if w.gemm_shape
                    else ""
                )
                + f" [{row['elapsed_s']:.0f} s]"
            )
            rows.append(row)
            del w
    finally:
        close_jax_pool()
    sample_peak()
    doc["gemm_gflops_samples"] = samples
    doc["gemm_gflops"] = _best_gemm(samples)
    doc["gemm_peak"] = _best_gemm(samples, detected)
    doc["rows"] = rows
    assign_gemm_fractions(doc)
    if memory and not only:
        log("peak memory ...")
        doc["memory"] = memory_report(quick, log)
    if trap and not only and 2 in threads and (os.cpu_count() or 1) >= 2:
        log("thread trap: the other core busy ...")
        doc["thread_trap"] = thread_trap_report(quick, repeat, budget, log)
    doc["elapsed_s"] = time.perf_counter() - t0
    return doc


# ---- formatting -----------------------------------------------------------------------------------

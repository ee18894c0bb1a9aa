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

import functools
import math
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
    all_workloads,
    coverage,
    peer_coverage,
    select_workloads,
)

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


def _at(d: dict[Any, Any], th: int) -> Any:
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
            vals = [_at(s, th)[prec] for s in samples]
            if detected:
                vals.append(_at(detected, th)[prec])
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
        run_peak = _at(doc["gemm_peak"], th)["float32"]
        local = run_peak
        if len(samples) == len(rows) + 1:
            local = _at(_best_gemm(samples[i : i + 2], detected), th)["float32"]
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


def memory_report(quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Peak resident memory of Lyapunov exponents (LSTM N=256, k=32, input streamed in chunks
    of 1000 steps) and of input-output singular values (tanh RNN N=64, whole input array) at
    T = 1e3, 1e4 and 1e5 (1e5 left out when quick), each in a fresh process."""
    Ts = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    out: dict[str, Any] = {}
    for T in Ts:
        key = f"lyapunov LSTM N=256 k=32, input streamed, T={T}"
        out[key] = m = peak_rss_mb("lyapunov", T, 256, kind="lstm", k=32)
        log(f"  lyapunov LSTM N=256 k=32 T={T}: {_mem(m)}")
    for T in Ts:
        key = f"singular values RNN N=64, input array, T={T}"
        out[key] = m = peak_rss_mb("singular", T, 64, kind="rnn")
        log(f"  jacobian_singular_values RNN N=64 T={T}: {_mem(m)}")
    return out


def _mem(m: dict[str, Any]) -> str:
    s = f"peak {m['peak_rss_mb']:.0f} MB, {m['extra_mb']:.1f} MB above the {m['baseline_mb']:.0f} MB baseline"
    return s + (
        f" (which holds the {m['input_mb']:.1f} MB input array)" if m.get("input_mb") else ""
    )


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


def _t(s: float) -> str:
    if s >= 10:
        return f"{s:.1f} s"
    if s >= 0.1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def _pct(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.0%}"


def _peer_cells(r: dict[str, Any], p: dict[str, Any]) -> list[str]:
    cov = ""
    if p["coverage"] is not None and r["compare"] == "curve":
        cov = f"{p['coverage']['vgcore']:.0%} / {p['coverage']['peer']:.0%}"
    elif p["coverage"] is not None:
        cov = f"{p['coverage']['vgcore']:.0%} / {p['coverage']['peer']:.0%}"
    ratio = f"**{p['ratio']:.2f}x**" if p["ok"] else "fails check"
    when = p["best_setting"] + (f", {p['steps']} steps scaled" if p.get("steps") else "")
    return [p["peer"], f"{_t(p['best_s'])} ({when})", ratio, f"{p['agreement']:.1e}", cov]


def format_table(doc: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> str:
    """Markdown table: one line per (workload, peer)."""
    head = (
        "| workload | vgcore (threads) | GFLOP/s | % GEMM peak | % same-shape GEMM | peer "
        "| peer time (best setting) | peer / vgcore | agreement | covered (vgcore / peer) |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in doc["rows"] if rows is None else rows:
        first = [
            r["label"],
            f"{_t(r['vgcore_best_s'])} ({r['vgcore_best_threads']}t)",
            f"{r['gflops']:.0f}",
            _pct(r.get("gemm_fraction")),
            _pct(r.get("shape_fraction")),
        ]
        peers = r["peers"] or [None]
        for i, p in enumerate(peers):
            cells = first if i == 0 else [""] * 5
            rest = ["-"] * 5 if p is None else _peer_cells(r, p)
            lines.append("| " + " | ".join(cells + rest) + " |")
    return "\n".join(lines)


def _settings_table(doc: dict[str, Any]) -> str:
    """Every thread setting of every implementation (the winner in bold)."""
    lines = ["| workload | implementation | times by setting |", "|---|---|---|"]
    for r in doc["rows"]:
        vt = r["vgcore_s"]
        best = min(vt.values())
        cells = [f"**{k}t {_t(v)}**" if v == best else f"{k}t {_t(v)}" for k, v in vt.items()]
        lines.append(f"| {r['label']} | vgcore | {', '.join(cells)} |")
        for p in r["peers"]:
            cells = [
                f"**{k} {_t(v)}**" if k == p["best_setting"] else f"{k} {_t(v)}"
                for k, v in p["times_s"].items()
            ]
            lines.append(f"|  | {p['peer']} | {', '.join(cells)} |")
    return "\n".join(lines)


def _sweep_table(doc: dict[str, Any]) -> str:
    """Per-step time of workloads 2 and 3 over N: vgcore and the best of each peer."""
    rows = [r for r in doc["rows"] if r["family"] in ("bptt", "lyapunov")]
    if len({r["N"] for r in rows}) < 2:
        return ""
    peers = sorted({p["peer"] for r in rows for p in r["peers"]})
    lines = [
        "| workload | cell | N | vgcore per step | GFLOP/s | "
        + " | ".join(f"{p} per step (ratio)" for p in peers)
        + " |",
        "|" + "---|" * (5 + len(peers)),
    ]
    for fam in ("bptt", "lyapunov"):
        for cell in ("lstm", "gru", "rnn"):
            for r in sorted(
                (r for r in rows if r["family"] == fam and r["cell"] == cell), key=lambda r: r["N"]
            ):
                cells = [fam, cell.upper(), str(r["N"]), _t(r["vgcore_best_s"] / r["steps"])]
                cells.append(f"{r['gflops']:.0f}")
                by = {p["peer"]: p for p in r["peers"]}
                for name in peers:
                    p = by.get(name)
                    if p is None:
                        cells.append("")
                    elif not p["ok"]:
                        cells.append("fails check")
                    else:
                        cells.append(f"{_t(p['best_s'] / r['steps'])} ({p['ratio']:.1f}x)")
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _trap_table(doc: dict[str, Any]) -> str:
    """vgcore (and NumPy) at 1 and 2 threads while another process spins on one core."""
    entries = doc.get("thread_trap") or []
    if not entries:
        return ""
    lines = [
        "A child process spins on one of the two cores (placed by the scheduler) while each "
        "implementation runs at 1 and 2 threads, alternately; medians.",
        "",
        "| workload | vgcore 1t | vgcore 2t | 2t / 1t | numpy 1t | numpy 2t | 2t / 1t |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        v = e["vgcore_s"]
        cells = [e["label"], _t(_at(v, 1)), _t(_at(v, 2)), f"{e['vgcore_ratio']:.2f}"]
        if "numpy_s" in e:
            n = e["numpy_s"]
            cells += [_t(_at(n, 1)), _t(_at(n, 2)), f"{e['numpy_ratio']:.2f}"]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _range_table(doc: dict[str, Any]) -> str:
    """How much of the BPTT curve (and of the singular values) each peer represents, at each of
    its settings (flushing denormals shortens a curve: it turns them into zeros)."""
    lines = [
        "| workload | peer (setting) | vgcore covers | peer nonzero | peer within 1% of vgcore |",
        "|---|---|---|---|---|",
    ]
    n = 0
    for r in doc["rows"]:
        if r["compare"] not in ("curve", "logs") or r.get("sweep"):
            continue
        for p in r["peers"]:
            by = p.get("coverage_by_setting") or (
                {p["best_setting"]: p["coverage"]} if p.get("coverage") else {}
            )
            groups: dict[tuple[str, str, str], list[str]] = {}
            for setting, c in by.items():
                key = (f"{c['vgcore']:.0%}", f"{c['peer']:.0%}", f"{c['peer_accurate']:.0%}")
                groups.setdefault(key, []).append(setting)
            for (v, q, a), settings in groups.items():
                n += 1
                lines.append(
                    f"| {r['label']} | {p['peer']} ({', '.join(settings)}) | {v} | {q} | {a} |"
                )
        c = r.get("rescale_cost")
        if c:  # the same kernel without its power-of-two rescaling: what the log scale buys
            n += 1
            lines.append(
                f"| {r['label']} | vgcore, rescale=False ({c['threads']}t; the rescaling costs "
                f"{c['extra']:+.1%} time) | {r.get('vgcore_coverage', 1.0):.0%} | "
                f"{c['unscaled_coverage']:.0%} | {c.get('unscaled_accurate', 0.0):.0%} |"
            )
    return "\n".join(lines) if n else ""


def _ok_peers(r: dict[str, Any], match: Callable[[str], bool] = lambda n: True) -> list:
    return [p for p in r["peers"] if p["ok"] and match(p["peer"])]


def check_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The speed targets of issue 6, each with the measured value and whether it is met
    (``met`` is None where this run has nothing to judge it by)."""
    out: list[dict[str, Any]] = []

    def add(target: str, value: str, met: bool | None) -> None:
        out.append({"target": target, "measured": value, "met": met})

    def ratio_line(
        rows: list,
        need: float,
        match: Callable[[str], bool] = lambda n: True,
        what: str = "the best peer",
    ) -> None:
        for r in rows:
            peers = _ok_peers(r, match)
            if not peers:
                add(f"{r['label']}: >= {need:g}x faster than {what}", "no peer", None)
                continue
            best = min(peers, key=lambda p: p["ratio"])
            add(
                f"{r['label']}: >= {need:g}x faster than {what}",
                f"{best['ratio']:.2f}x vs {best['peer']} ({best['best_setting']})",
                best["ratio"] >= need,
            )

    main = [r for r in doc["rows"] if not r.get("sweep")]
    fam = {f: [r for r in main if r["family"] == f] for f in ("mlp-flow", "bptt", "lyapunov")}
    ratio_line(fam["bptt"], 2.0)
    ratio_line(fam["lyapunov"], 10.0, lambda n: n.startswith("torch"), "the fastest PyTorch")
    ratio_line(fam["lyapunov"], 2.0, lambda n: n.startswith("jax"), "JAX jit")
    ratio_line(fam["mlp-flow"], 1.3)
    for r in doc["rows"]:
        if r["family"] in ("bptt", "lyapunov") and r["N"] >= 512:
            add(
                f"{r['label']}: >= 70% of the GEMM peak",
                f"{r['gemm_fraction']:.0%} ({r['gflops']:.0f} GFLOP/s"
                + (
                    f"; {r['gemm_fraction_run']:.0%} of the run's best GEMM)"
                    if "gemm_fraction_run" in r
                    else ")"
                ),
                r["gemm_fraction"] >= 0.7,
            )
    small = [r for r in doc["rows"] if r["family"] in ("bptt", "lyapunov") and r["N"] == 16]
    ratio_line(small, 10.0, lambda n: n.startswith("jax"), "JAX jit")
    mem = doc.get("memory") or {}
    for name in ("lyapunov", "singular"):  # memory keys start with these
        runs = sorted((v for k, v in mem.items() if k.startswith(name)), key=lambda v: v["T"])
        if len(runs) >= 2:  # the last two: past the cap on recorded running estimates
            lo, hi = runs[-2], runs[-1]  # (an input array is in the baseline, not the extra)
            add(
                f"{name}: memory independent of T (T={lo['T']:.0e} -> {hi['T']:.0e})",
                f"{lo['extra_mb']:.1f} -> {hi['extra_mb']:.1f} MB above the baseline",
                hi["extra_mb"] <= 1.1 * lo["extra_mb"] + 2.0,
            )
    for r in fam["bptt"]:
        covs = [p["coverage"]["peer"] for p in r["peers"] if p.get("coverage")]
        if covs and "vgcore_coverage" in r:
            add(
                f"{r['label']}: the whole curve in float32",
                f"vgcore {r['vgcore_coverage']:.0%}, peers {min(covs):.0%}-{max(covs):.0%} nonzero",
                r["vgcore_coverage"] == 1.0,
            )
        c = r.get("rescale_cost")
        if c:
            add(
                f"{r['label']}: log-scale norms at <= 10% extra time",
                f"{c['extra']:+.1%} against vgcore unscaled ({c['threads']}t; unscaled covers "
                f"{c['unscaled_coverage']:.0%}, agreement {c['agreement']:.1e} there)",
                c["extra"] <= 0.10,
            )
    for e in doc.get("thread_trap") or []:
        add(
            f"{e['label']}, the other core busy: 2 threads (the default) at most 1.5x the time "
            "of 1 (no thread trap)",
            f"2t / 1t = {e['vgcore_ratio']:.2f}"
            + (f" (numpy's: {e['numpy_ratio']:.2f})" if "numpy_ratio" in e else ""),
            e["vgcore_ratio"] <= 1.5,
        )
    return out


def format_targets(doc: dict[str, Any]) -> str:
    mark = {True: "met", False: "**missed**", None: "n/a"}
    lines = ["| target | measured | |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {mark[t['met']]} |" for t in check_targets(doc)]
    return "\n".join(lines)


def _format_peaks(peaks: dict[Any, dict[str, float]]) -> str:
    """GEMM peaks by thread count (JSON keys are strings) as one line of text."""
    g = {int(k): v for k, v in peaks.items()}
    return "; ".join(
        f"{th} thread{'s' if th > 1 else ''}: float32 {v['float32']:.0f}, float64 {v['float64']:.0f}"
        for th, v in sorted(g.items())
    )


def _peak_spread(doc: dict[str, Any]) -> str:
    """How the GEMM peak moved over the run (the best counts), where it was sampled."""
    samples = doc.get("gemm_gflops_samples") or []
    if len(samples) < 2:
        return ""
    parts = []
    for th in doc["gemm_gflops"]:
        vals = [s[th]["float32"] for s in samples if th in s]
        parts.append(f"{th}t {min(vals):.0f}-{max(vals):.0f}")
    return (
        f", the best of {len(samples)} measurements from before each workload to the end "
        f"(float32 ranged {', '.join(parts)})"
    )


def _detected_peak_lines(doc: dict[str, Any]) -> list[str]:
    det = doc.get("gemm_gflops_detected")
    if not det:
        return []
    peak = _format_peaks({k: v for k, v in det.items() if k != "kernels"})
    return [
        f"The same GEMM with the kernels OpenBLAS's CPU detection picks ({det['kernels']}, a "
        f'child process without OPENBLAS_CORETYPE): {peak}. "% GEMM peak" and the peak targets '
        "use the larger of the two.",
        "",
    ]


def format_report(doc: dict[str, Any]) -> str:
    """The whole result as markdown: machine, GEMM limit, the tables, range and memory."""
    m = doc["machine"]
    libs = ", ".join(
        f"{k} {m[k]}" for k in ("vgcore", "numpy", "torch", "jax", "jaxlib") if m.get(k)
    )
    peak = _format_peaks(doc["gemm_gflops"])
    main = [r for r in doc["rows"] if not r.get("sweep")]
    out = [
        f"Machine: {m['cpu']} ({m.get('isa', '')}), {m['cores']} cores; Python {m['python']}; "
        f"{libs}. vgcore's BLAS: {m.get('vgcore_blas', '?')}, {m.get('vgcore_blas_kernels', '?')} kernels; numpy's: {m.get('numpy_blas', '?')}."
        + (
            f" Load average at start: {m['loadavg_at_start']:.2f}."
            if "loadavg_at_start" in m
            else ""
        ),
        "",
        f"GEMM through vgcore's BLAS (1024^3, GFLOP/s): {peak}" + _peak_spread(doc) + ".",
        "",
        *_detected_peak_lines(doc),
        "Times are medians; each implementation at its best thread setting (`1t`/`2t`; "
        "`pinned`: one core by sched_setaffinity and XLA's intra-op pool off; `ftz`: "
        "torch.set_flush_denormal). Ratio = peer time / vgcore time; a peer whose answer "
        "disagrees with vgcore's beyond the workload's tolerance is not timed against it.",
        "",
        format_table(doc, main),
    ]
    notes = [f"- {r['label']}: {r['note']}" for r in main if r.get("note")]
    if notes:
        out += ["", *notes]
    out += ["", "### Targets (issue 6)", "", format_targets(doc)]
    sweep = _sweep_table(doc)
    if sweep:
        out += ["", "### Size sweep (workloads 2 and 3)", "", sweep]
    trap = _trap_table(doc)
    if trap:
        out += ["", "### Thread trap (the other core busy)", "", trap]
    rng = _range_table(doc)
    if rng:
        out += ["", "### Range (float32)", "", rng]
    if doc.get("memory"):
        out += ["", "### Peak memory (fresh process each)", ""]
        out += [f"- {k}: {_mem(v)}" for k, v in doc["memory"].items()]
        out += [
            "",
            "`lyapunov` keeps at most `max_records` = 10^4 running estimates, so its memory stops "
            "growing there; `jacobian_singular_values` takes its input as one array (no "
            "iterable), and what it allocates beyond the baseline is measured as is.",
        ]
    out += ["", "### Every thread setting", "", _settings_table(doc)]
    if "elapsed_s" in doc:
        out += ["", f"Whole run: {doc['elapsed_s'] / 60:.1f} min."]
    return "\n".join(out)


def plot_ratios(doc: dict[str, Any], path: str) -> None:
    """Left: peer time / vgcore time per workload (log scale), one bar per peer. Right (when the
    size sweep ran): vgcore's speed-up over JAX jit against N for workloads 2 and 3."""
    from vgcore.plotting import require_matplotlib

    plt = require_matplotlib()
    main = [r for r in doc["rows"] if not r.get("sweep")]
    sweep = _sweep_series(doc)
    fig, axes = plt.subplots(
        1,
        2 if sweep else 1,
        figsize=(11 if sweep else 6.5, 4.0),
        squeeze=False,
        gridspec_kw={"width_ratios": [1.6, 1] if sweep else [1]},
    )
    ax = axes[0][0]
    families = ["PyTorch", "torch.func", "JAX", "NumPy"]
    width = 0.8 / len(families)
    cmap = plt.get_cmap("tab10")
    for j, fam in enumerate(families):
        pts = []
        for i, r in enumerate(main):
            ratios = [p["ratio"] for p in _ok_peers(r) if _library(p["peer"]) == fam]
            if ratios:  # the fastest of the library's variants
                pts.append((i + j * width, min(ratios)))
        if pts:
            xs, ys = zip(*pts)
            ax.bar(xs, ys, width, label=fam, color=cmap(j))
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(main))])
    ax.set_xticklabels([r["workload"] for r in main], rotation=50, ha="right", fontsize=7)
    ax.set_ylabel("peer time / vgcore time (>1: vgcore faster)", fontsize=8)
    ax.set_title("fastest variant of each library, at its best setting", fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    if sweep:
        ax = axes[0][1]
        for (fam, cell), npts in sorted(sweep.items()):
            ns, ys = zip(*npts)
            ax.plot(ns, ys, "o-" if fam == "bptt" else "s--", label=f"{fam} {cell.upper()}", ms=3)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plt.matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(plt.matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel("N (hidden size)", fontsize=8)
        ax.set_ylabel("JAX jit time / vgcore time", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _library(peer: str) -> str:
    if peer.startswith("torch.func"):
        return "torch.func"
    if peer.startswith("torch"):
        return "PyTorch"
    return "JAX" if peer.startswith("jax") else "NumPy"


def _sweep_series(doc: dict[str, Any]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in doc["rows"]:
        if r["family"] not in ("bptt", "lyapunov"):
            continue
        jax = [p for p in _ok_peers(r, lambda n: n.startswith("jax"))]
        if jax:
            series.setdefault((r["family"], r["cell"]), []).append((r["N"], jax[0]["ratio"]))
    series = {k: sorted(v) for k, v in series.items() if len(v) >= 2}
    return series

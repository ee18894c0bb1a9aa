"""Benchmarks against the frameworks, as a product feature (``vgcore bench``).

Every workload is computed by vgcore and, in the same run, by each installed peer (PyTorch
eager and torch.func, JAX jit in a subprocess, NumPy) at each of its thread settings. A peer's
result is checked against vgcore's before its time counts; times are medians, ratios are
peer / vgcore at each one's best setting, and each workload's GFLOP/s is set against the
machine's GEMM throughput through the same BLAS, measured in the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vgcore.bench.machine import gemm_peak, machine_info, peak_rss_mb
from vgcore.bench.peers import median
from vgcore.bench.workloads import Workload, agreement, all_workloads, coverage

__all__ = ["format_report", "format_table", "plot_ratios", "run_suite"]


def _setting_label(s: dict[str, Any]) -> str:
    label = f"{s['threads']}t" if s.get("threads") else "default"
    return label + (" ftz" if s.get("flush_denormal") else "")


def run_workload(w: Workload, repeat: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Time vgcore (1 and 2 threads) and every peer setting; check each peer's result."""
    ours: dict[int, float] = {}
    result = None
    heavy = w.flops > 2e11  # tens of seconds a run: one timed run per setting
    for th in (1, 2):
        w.vgcore(th)
        times = []
        for _ in range(1 if heavy else repeat):
            t0 = time.perf_counter()
            result = w.vgcore(th)
            times.append(time.perf_counter() - t0)
        ours[th] = median(times)
    assert result is not None
    best_th = min(ours, key=lambda t: ours[t])
    row: dict[str, Any] = {
        "workload": w.name,
        "label": w.label,
        "flops": w.flops,
        "note": w.note,
        "vgcore_s": ours,
        "vgcore_best_threads": best_th,
        "gflops": w.flops / ours[best_th] / 1e9,
        "peers": [],
    }
    if w.compare == "curve":
        row["vgcore_coverage"] = coverage(result)
    scale = getattr(w, "peer_steps", None)
    for peer in w.peers:
        times_by: dict[str, float] = {}
        agree, cov = None, None
        for s in peer.settings:
            try:
                times, out = peer.measure(s, 1 if heavy else repeat)
            except Exception as exc:  # a peer that fails is reported, not fatal
                log(f"  {peer.name} [{_setting_label(s)}] failed: {type(exc).__name__}: {exc}")
                continue
            ref = result[: len(out)] if scale else result
            agree = agreement(w.compare, np.asarray(ref, np.float64), out)
            if w.compare == "curve":
                cov = coverage(out)
            t = median(times) * (result.shape[0] / scale if scale else 1.0)
            times_by[_setting_label(s)] = t
        if not times_by:
            continue
        best = min(times_by, key=lambda k: times_by[k])
        row["peers"].append(
            {
                "peer": peer.name,
                "times_s": times_by,
                "best_setting": best,
                "best_s": times_by[best],
                "ratio": times_by[best] / ours[best_th],
                "agreement": agree,
                "coverage": cov,
            }
        )
        log(
            f"  {peer.name}: {times_by[best]:.3f} s ({best}), ratio {times_by[best] / ours[best_th]:.2f}x, "
            f"agreement {agree:.1e}" + (f", coverage {cov:.0%}" if cov is not None else "")
        )
    return row


def run_suite(
    quick: bool = False,
    only: list[str] | None = None,
    repeat: int = 5,
    sweep: bool = True,
    memory: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the suite; returns a JSON-able dict (machine, GEMM peaks, rows, memory)."""
    doc: dict[str, Any] = {"machine": machine_info(), "quick": quick}
    doc["gemm_gflops"] = {th: gemm_peak(th) for th in (1, 2)}
    log(f"GEMM peak (vgcore's BLAS, 1024^3): {doc['gemm_gflops']}")
    rows = []
    for make in all_workloads(quick, sweep=sweep):
        w = make()
        if only and not any(o in w.name for o in only):
            continue
        log(f"{w.label} ...")
        row = run_workload(w, repeat, log)
        peak = doc["gemm_gflops"][row["vgcore_best_threads"]]["float32"]
        row["gemm_fraction"] = row["gflops"] / peak
        log(
            f"  vgcore: {min(row['vgcore_s'].values()):.3f} s ({row['vgcore_best_threads']}t), "
            f"{row['gflops']:.0f} GFLOP/s = {row['gemm_fraction']:.0%} of GEMM peak"
        )
        rows.append(row)
    doc["rows"] = rows
    if memory and not only:
        T_big = 10_000 if quick else 100_000
        doc["memory"] = {
            f"lyapunov T={T}": peak_rss_mb("lyapunov", T, 256) for T in (1_000, T_big)
        } | {f"singular T={T}": peak_rss_mb("singular", T, 64) for T in (1_000, T_big)}
        log(f"peak RSS: {doc['memory']}")
    return doc


def format_table(doc: dict[str, Any]) -> str:
    """Markdown table: one line per (workload, peer)."""
    head = "| workload | vgcore | GFLOP/s (% GEMM peak) | peer | peer time (best setting) | peer / vgcore | agreement | curve covered (vgcore / peer) |"
    lines = [head, "|" + "---|" * 8]
    for r in doc["rows"]:
        v = f"{min(r['vgcore_s'].values()):.3f} s ({r['vgcore_best_threads']}t)"
        g = f"{r['gflops']:.0f} ({r['gemm_fraction']:.0%})"
        peers = r["peers"] or [None]
        for i, p in enumerate(peers):
            first = [r["label"], v, g] if i == 0 else ["", "", ""]
            if p is None:
                lines.append("| " + " | ".join(first + ["-"] * 5) + " |")
                continue
            cov = (
                "" if p["coverage"] is None else f"{r['vgcore_coverage']:.0%} / {p['coverage']:.0%}"
            )
            lines.append(
                "| "
                + " | ".join(
                    [
                        *first,
                        p["peer"],
                        f"{p['best_s']:.3f} s ({p['best_setting']})",
                        f"**{p['ratio']:.2f}x**",
                        f"{p['agreement']:.1e}",
                        cov,
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def format_report(doc: dict[str, Any]) -> str:
    """The whole result as markdown: machine, GEMM limit, the table, memory."""
    m = doc["machine"]
    g = doc["gemm_gflops"]
    g1, g2 = g.get(1, g.get("1")), g.get(2, g.get("2"))
    libs = ", ".join(f"{k} {m[k]}" for k in ("vgcore", "numpy", "torch", "jax") if m.get(k))
    out = [
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}; {libs}.",
        "",
        f"GEMM through vgcore's BLAS (scipy-openblas32, 1024^3): float32 {g1['float32']:.0f} GFLOP/s on "
        f"1 thread, {g2['float32']:.0f} on 2; float64 {g1['float64']:.0f} / {g2['float64']:.0f}.",
        "",
        format_table(doc),
    ]
    notes = [f"- {r['label']}: {r['note']}" for r in doc["rows"] if r.get("note")]
    if notes:
        out += ["", *notes]
    if doc.get("memory"):
        out += ["", "Peak resident memory of a fresh process (MB):", ""]
        out += [
            f"- {k}: {v['peak_rss_mb']:.0f}"
            + (f" (input array {v['input_mb']:.0f})" if v.get("input_mb") else "")
            for k, v in doc["memory"].items()
        ]
    return "\n".join(out)


def plot_ratios(doc: dict[str, Any], path: str) -> None:
    """Bar chart of peer time / vgcore time per workload (log scale), one bar per peer."""
    from vgcore.plotting import require_matplotlib

    plt = require_matplotlib()
    rows = doc["rows"]
    peers = sorted({p["peer"] for r in rows for p in r["peers"]})
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(rows) + 2), 4.2))
    width = 0.8 / max(1, len(peers))
    for j, name in enumerate(peers):
        xs = [i + j * width for i, r in enumerate(rows) for p in r["peers"] if p["peer"] == name]
        ys = [p["ratio"] for r in rows for p in r["peers"] if p["peer"] == name]
        ax.bar(xs, ys, width, label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels([r["workload"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("peer time / vgcore time")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

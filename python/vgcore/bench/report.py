"""Text, Markdown and figure reports of a benchmark suite's results."""

from __future__ import annotations

import math
from typing import Any

from vgcore.bench.suite import by_threads, memory_line
from vgcore.bench.targets import format_targets, ok_peers


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
        cells = [e["label"], _t(by_threads(v, 1)), _t(by_threads(v, 2)), f"{e['vgcore_ratio']:.2f}"]
        if "numpy_s" in e:
            n = e["numpy_s"]
            cells += [_t(by_threads(n, 1)), _t(by_threads(n, 2)), f"{e['numpy_ratio']:.2f}"]
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
        out += [f"- {k}: {memory_line(v)}" for k, v in doc["memory"].items()]
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
            ratios = [p["ratio"] for p in ok_peers(r) if _library(p["peer"]) == fam]
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
        jax = [p for p in ok_peers(r, lambda n: n.startswith("jax"))]
        if jax:
            series.setdefault((r["family"], r["cell"]), []).append((r["N"], jax[0]["ratio"]))
    series = {k: sorted(v) for k, v in series.items() if len(v) >= 2}
    return series

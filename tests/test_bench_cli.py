"""Smoke tests of `vgcore bench` and its machinery (timings are never asserted here)."""

from __future__ import annotations

import json

import pytest

from vgcore.bench import check_targets, format_report
from vgcore.bench.machine import numpy_threads, peak_rss_mb, set_numpy_threads
from vgcore.cli import main


def test_bench_quick_report(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    js, md, png = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    args = ["bench", "--quick", "--repeat", "1", "--threads", "1", "--no-memory"]
    args += ["--only", "bptt-gru", "--json", str(js), "--markdown", str(md), "--plot", str(png)]
    assert main(args) == 0
    table = capsys.readouterr().out
    doc = json.loads(js.read_text())
    assert doc["threads"] == [1] and list(doc["gemm_gflops"]) == ["1"]
    # % of peak is held to the faster of the configured and the CPU-detected kernels
    assert doc["gemm_peak"]["1"]["float32"] >= doc["gemm_gflops"]["1"]["float32"] > 0
    # the peak is the best of the measurements at the start and end (one workload: two)
    samples = doc["gemm_gflops_samples"]
    assert len(samples) == 2
    assert doc["gemm_gflops"]["1"]["float32"] == max(s["1"]["float32"] for s in samples)
    (row,) = doc["rows"]
    # "% GEMM peak": against the best GEMM just before and after the workload (here: all of them)
    assert row["gemm_local_peak"] == doc["gemm_peak"]["1"]["float32"]
    assert row["gemm_fraction"] == pytest.approx(row["gflops"] / row["gemm_local_peak"])
    assert row["gemm_fraction_run"] == pytest.approx(row["gemm_fraction"])
    (row,) = doc["rows"]
    assert row["workload"] == "bptt-gru-N64" and row["vgcore_coverage"] == 1.0
    assert {p["peer"] for p in row["peers"]} >= {"numpy"}
    for p in row["peers"]:
        assert p["ok"] and p["agreement"] < 1e-4
        assert set(p["times_s"]) <= {"1t", "1t ftz", "1t pinned"}
        assert 0 < p["coverage"]["peer"] <= 1 and p["coverage"]["vgcore"] == 1.0
    assert 0 < row["shape_fraction"] and row["gemm_shape"] == [32, 192, 64]
    cost = row["rescale_cost"]  # vgcore with and without its power-of-two rescaling
    assert cost["threads"] == 1 and cost["scaled_s"] > 0 and cost["unscaled_s"] > 0
    assert 0 < cost["unscaled_coverage"] <= 1 and cost["agreement"] < 1e-4
    assert "log-scale norms at <= 10% extra time" in md.read_text()
    assert "| BPTT GRU N=64 B=32 T=200 |" in table
    report = md.read_text()
    assert "### Targets (issue 6)" in report and "### Range (float32)" in report
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("bad", ["0", "x", ","])
def test_bench_bad_threads(bad, capsys):
    assert main(["bench", "--quick", "--threads", bad]) == 2
    assert "--threads" in capsys.readouterr().err


def test_targets_on_a_made_up_run():
    peer = {
        "peer": "jax jit",
        "ratio": 2.5,
        "ok": True,
        "best_setting": "1t pinned",
        "best_s": 0.5,
        "times_s": {"1t pinned": 0.5},
        "agreement": 1e-7,
        "steps": None,
        "coverage": {"vgcore": 1.0, "peer": 0.1, "peer_accurate": 0.1},
    }
    row = {
        "workload": "bptt-lstm-N256",
        "label": "BPTT LSTM",
        "family": "bptt",
        "cell": "lstm",
        "N": 256,
        "sweep": False,
        "compare": "curve",
        "flops": 1e9,
        "steps": 1000,
        "vgcore_s": {"1": 0.2},
        "vgcore_best_threads": 1,
        "vgcore_best_s": 0.2,
        "gflops": 5.0,
        "gemm_fraction": 0.5,
        "vgcore_coverage": 1.0,
        "peers": [peer, dict(peer, peer="numpy", ratio=1.5, ok=False)],
        "rescale_cost": {
            "threads": 1,
            "scaled_s": 0.2,
            "unscaled_s": 0.19,
            "extra": 0.04,
            "unscaled_coverage": 0.2,
            "agreement": 1e-7,
        },
    }
    doc = {
        "machine": {"cpu": "x", "cores": 2, "python": "3"},
        "gemm_gflops": {"1": {"float32": 10.0, "float64": 5.0}},
        "rows": [row],
    }
    targets = check_targets(doc)
    # the peer that failed its check does not count
    assert targets[0]["met"] is True and "jax jit" in targets[0]["measured"]
    assert targets[-2]["met"] is True  # the whole curve
    assert targets[-1]["met"] is True and "+4.0%" in targets[-1]["measured"]  # its cost
    row["rescale_cost"]["extra"] = 0.15
    assert check_targets(doc)[-1]["met"] is False
    row["rescale_cost"]["extra"] = 0.04
    text = format_report(doc)
    assert "fails check" in text and "**2.50x**" in text


def test_numpy_threads_round_trip():
    before = numpy_threads()
    if before is None:
        pytest.skip("numpy's BLAS has no thread control here")
    try:
        assert set_numpy_threads(1) and numpy_threads() == 1
    finally:
        set_numpy_threads(before)


def test_peak_rss_streamed_lyapunov():
    m = peak_rss_mb("lyapunov", 500, 16, kind="gru", k=4, input_size=8)
    assert m["peak_rss_mb"] >= m["baseline_mb"] > 0 and m["extra_mb"] < 64
    m = peak_rss_mb("lyapunov", 500, 4, kind="selective_ssm", k=4, input_size=8)
    assert m["peak_rss_mb"] >= m["baseline_mb"] > 0 and m["extra_mb"] < 64


def test_gemm_fraction_is_held_to_the_gemm_around_each_workload():
    from vgcore.bench import assign_gemm_fractions

    def g(v):
        return {"1": {"float32": v, "float64": v / 2}}

    rows = [{"vgcore_best_threads": 1, "gflops": 80.0} for _ in range(2)]
    # a slow patch around the second workload; the run's best came before the first
    doc = {"rows": rows, "gemm_peak": g(200.0), "gemm_gflops_samples": [g(200.0), g(90), g(100)]}
    assign_gemm_fractions(doc)
    assert rows[0]["gemm_local_peak"] == 200.0 and rows[0]["gemm_fraction"] == 0.4
    assert rows[1]["gemm_local_peak"] == 100.0 and rows[1]["gemm_fraction"] == 0.8
    assert rows[1]["gemm_fraction_run"] == 0.4
    row = dict(rows[1], family="bptt", N=1024, label="x", peers=[])
    (peak,) = [t for t in check_targets(dict(doc, rows=[row])) if "GEMM peak" in t["target"]]
    assert peak["met"] is True and "40% of the run's best GEMM" in peak["measured"]


def test_thread_trap_report_runs_with_a_busy_core():
    from vgcore.bench import thread_trap_report

    (entry,) = thread_trap_report(quick=True, repeat=2, budget_s=0.5, names=["bptt-rnn"])
    assert entry["workload"] == "bptt-rnn-N64"
    assert entry["vgcore_s"][1] > 0 and entry["vgcore_s"][2] > 0 and entry["vgcore_ratio"] > 0
    assert entry["numpy_s"][2] > 0 and entry["numpy_ratio"] > 0  # the peer shows the trap


def test_thread_trap_targets_and_table():
    entry = {
        "workload": "lyapunov-rnn-N256",
        "label": "Lyapunov RNN",
        "vgcore_s": {"1": 0.2, "2": 0.22},
        "vgcore_ratio": 1.1,
    }
    numpy_entry = dict(
        entry, label="BPTT", vgcore_ratio=1.6, numpy_s={"1": 1.0, "2": 2.6}, numpy_ratio=2.6
    )
    doc = {
        "machine": {"cpu": "x", "cores": 2, "python": "3"},
        "gemm_gflops": {"1": {"float32": 10.0, "float64": 5.0}},
        "rows": [],
        "thread_trap": [entry, numpy_entry],
    }
    ok, bad = check_targets(doc)
    assert ok["met"] is True and "1.10" in ok["measured"]
    assert bad["met"] is False and "numpy's: 2.60" in bad["measured"]
    text = format_report(doc)
    assert "### Thread trap (the other core busy)" in text
    assert "| BPTT | 0.20 s | 0.22 s | 1.60 | 1.00 s | 2.60 s | 2.60 |" in text
    assert "| Lyapunov RNN | 0.20 s | 0.22 s | 1.10 | - | - | - |" in text


def _made_up_row(workload, family, N, steps, best_s, peers):
    return {
        "workload": workload,
        "label": workload,
        "family": family,
        "cell": "",
        "N": N,
        "sweep": False,
        "steps": steps,
        "vgcore_best_threads": 1,
        "vgcore_best_s": best_s,
        "peers": [
            {"peer": name, "ratio": ratio, "ok": True, "best_setting": "1t"}
            for name, ratio in peers
        ],
    }


def test_state_space_and_watch_targets_on_a_made_up_run():
    rows = [
        _made_up_row("ssm-selective-bptt", "ssm-bptt", 64, 100, 1.0, [("torch reference", 6.0)]),
        # 250 and 300 ns per step and coordinate: linear within the 1.5x allowed
        _made_up_row("ssm-lti-lyapunov-D256", "ssm-lyapunov", 256, 1000, 256 * 250e-6, []),
        _made_up_row("ssm-lti-lyapunov-D4096", "ssm-lyapunov", 4096, 1000, 4096 * 300e-6, []),
        _made_up_row("torch-watch-mlp-every1", "torch-watch", 0, 10, 1.0, [("loop", 1 / 1.14)]),
        _made_up_row("torch-watch-mlp-every10", "torch-watch", 0, 10, 1.0, [("loop", 1 / 1.01)]),
    ]
    doc = {"rows": rows}
    by = {t["target"]: t for t in check_targets(doc)}
    sel = by["ssm-selective-bptt: >= 5x faster than the torch reference"]
    assert sel["met"] is True and "6.00x" in sel["measured"]
    lti = by["LTI SSM Lyapunov: cost per step linear in the state size (D=256 -> 4096)"]
    assert lti["met"] is True and lti["measured"].startswith("250 -> 300 ns")
    assert by["torch-watch-mlp-every1: overhead <= 10%"]["met"] is False
    assert by["torch-watch-mlp-every1: overhead <= 10%"]["measured"] == "+14.0%"
    assert by["torch-watch-mlp-every10: overhead <= 2%"]["met"] is True
    rows[0]["peers"][0]["ratio"] = 4.0
    rows[2]["vgcore_best_s"] = 4096 * 400e-6  # 1.6x the smallest size's cost per coordinate
    by = {t["target"]: t for t in check_targets(doc)}
    assert by["ssm-selective-bptt: >= 5x faster than the torch reference"]["met"] is False
    assert (
        by["LTI SSM Lyapunov: cost per step linear in the state size (D=256 -> 4096)"]["met"]
        is False
    )


def test_bench_quick_state_space_rows(tmp_path, capsys):
    """The state-space rows of `vgcore bench --quick`: each peer's answer agrees with vgcore's
    (the torch reference's BPTT norms, NumPy's QR iteration of the LTI tangents)."""
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    args = ["bench", "--quick", "--repeat", "1", "--threads", "1", "--only", "ssm-"]
    assert main([*args, "--no-memory", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    names = [r["workload"] for r in doc["rows"]]
    assert names == ["ssm-selective-bptt", "ssm-lti-lyapunov-D64", "ssm-lti-lyapunov-D256"]
    for row in doc["rows"]:
        (peer,) = row["peers"]
        assert peer["ok"] and peer["agreement"] < 1e-4 and peer["ratio"] > 0
    targets = {t["target"] for t in check_targets(doc)}
    sel = (
        "BPTT selective SSM d_model=64 d_state=16 B=4 T=256: >= 5x faster than the torch reference"
    )
    assert sel in targets
    assert "LTI SSM Lyapunov: cost per step linear in the state size (D=64 -> 256)" in targets
    assert "| BPTT selective SSM d_model=64 d_state=16 B=4 T=256 |" in capsys.readouterr().out


def test_bench_quick_watch_row(tmp_path):
    """A training monitor row of `vgcore bench --quick`: the watched loop's losses equal the
    unwatched loop's bit for bit (agreement 0) and its overhead target is judged."""
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--quick",
        "--repeat",
        "1",
        "--threads",
        "1",
        "--only",
        "torch-watch-mlp-every1",
    ]
    assert main([*args, "--no-memory", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    # the pattern also selects every=10
    assert [r["workload"] for r in doc["rows"]] == [f"torch-watch-mlp-every{e}" for e in (1, 10)]
    for row in doc["rows"]:
        (peer,) = row["peers"]
        assert peer["ok"] and peer["agreement"] == 0.0
    overhead = [t for t in check_targets(doc) if "overhead" in t["target"]]
    needs = [t["target"].rsplit(": ", 1)[1] for t in overhead]
    assert needs == ["overhead <= 10%", "overhead <= 2%"]
    assert all(t["met"] in (True, False) for t in overhead)

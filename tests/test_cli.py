"""The vgcore command line, end to end (subprocess) and in-process through main(argv)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tolerances import hang_guard
from vgcore import _summaries
from vgcore.cli import cmd_demo, main


def run(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run(
        [sys.executable, "-m", "vgcore", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=hang_guard(timeout),
    )


# ------------------------------------------------------------------------------------------
# end to end
def test_demo_writes_report(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "rep"
    # the main job: median 67 s (58-68 s) on a 2-core machine at load 5-7, ~38 s of CPU
    r = run("demo", "--out", str(out))
    assert r.returncode == 0, r.stderr
    verdicts = {}
    for name, _ in cmd_demo.DEMO_CASES:
        (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith(name + "  ")]
        verdicts[name] = line[len(name) :].split()[0]
    assert verdicts["MLP sigmoid L=50, default init"] == "vanishing"
    assert verdicts["MLP ReLU L=50, He"] == "healthy"
    assert verdicts["RNN tanh T=200, gain 4"] == "exploding"
    assert f"report: {out / 'report.html'}" in r.stdout
    pngs = list((out / "figures").glob("*.png"))
    assert len(pngs) >= 10
    assert all(p.stat().st_size > 2000 for p in pngs)
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "## Summary" in md and "![" in md
    assert page.count("data:image/png;base64,") == len(pngs)
    assert {p.name for p in (out / "data").iterdir()} == {
        "summary.csv",
        "gradient_norms.csv",
        "fixes.csv",
    }


def test_demo_default_folder_and_json(tmp_path, monkeypatch, capsys):
    small = [
        ("tiny sigmoid", {"model": "mlp", "depth": 20, "width": 16, "activation": "sigmoid"}),
        ("tiny gru", {"model": "gru", "hidden_size": 8, "steps": 30, "batch": 2}),
    ]
    monkeypatch.setattr(cmd_demo, "DEMO_CASES", small)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--json", "--format", "parquet"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # stdout is only the JSON document
    assert [d["name"] for d in doc["diagnoses"]] == ["tiny sigmoid", "tiny gru"]
    assert doc["diagnoses"][0]["verdict"] == "vanishing"
    assert doc["report"] == str(Path("vgcore-report") / "report.html")
    assert (tmp_path / "vgcore-report" / "report.md").exists()
    assert (tmp_path / "vgcore-report" / "data" / "summary.parquet").exists()
    assert "report: vgcore-report" in captured.err  # where it went, on stderr under --json


@pytest.mark.parametrize(
    "args, message",
    [
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["analyze", "--depth", "zero"], "argument --depth: invalid int value: 'zero'"),
        (["analyze", "--depth", "0"], "--depth must be >= 1"),
        (["analyze", "--model", "cnn"], "--model must be one of mlp, rnn, lstm, gru"),
        (["analyze", "--activation", "swoosh"], "unknown activation 'swoosh'"),
        (["analyze", "--config", "missing.toml"], "config file 'missing.toml' does not exist"),
        (["sweep", "--grid", "depth"], "--grid expects KEY=VALUES"),
        (["sweep", "--grid", "depht=1,2", "--serial"], "unknown model setting(s) ['depht']"),
        (["demo", "--format", "xlsx"], "argument --format: invalid choice: 'xlsx'"),
        ([], "a command is required"),
        (["lyapunov", "-k", "0"], "-k must be >= 1, got 0"),
        (["lyapunov", "--burn-in", "-1"], "--burn-in must be >= 0"),
        (["lyapunov", "--qr-every", "0"], "--qr-every must be >= 1"),
        (
            ["lyapunov", "--model", "rnn", "--width", "4", "--steps", "5", "-k", "5"],
            "k = 5 exceeds the state dimension 4",
        ),
        (
            [
                "lyapunov",
                "--model",
                "rnn",
                "--width",
                "4",
                "--steps",
                "5",
                "-k",
                "2",
                "--burn-in",
                "5",
            ],
            "leaves no steps to average over",
        ),
        (
            ["lyapunov", "--model", "mlp", "--input-size", "8", "--width", "16", "-k", "2"],
            "need every layer to keep the width",
        ),
        (["spectrum", "--method", "nonsense"], "argument --method: invalid choice: 'nonsense'"),
        (["singular", "--plot"], "argument --plot: expected one argument"),
        (["phase", "--activation", "nosuch"], "activation must be one of"),
        (["phase", "--sigma-w2", "-1"], "sigma_w2 must be finite and >= 0, got -1.0"),
        (["bench", "--quick", "--only", "nosuch"], "--only nosuch matches no workload"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vgcore: error: ") and message in err[-1]


def test_bad_flags_through_subprocess():
    r = run("analyze", "--depth", "-2")
    assert r.returncode == 2
    assert r.stderr.strip() == "vgcore: error: --depth must be >= 1, got -2"
    assert r.stdout == ""


def test_version_and_help(capsys):
    import vgcore

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == vgcore.__version__
    assert main(["analyze", "--help"]) == 0
    assert "--torch FILE" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# analyze / report
def test_analyze_flags_json(capsys):
    code = main(
        [
            "analyze",
            "--model",
            "mlp",
            "--depth",
            "30",
            "--width",
            "32",
            "--activation",
            "sigmoid",
            "--json",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    (d,) = doc["diagnoses"]
    assert d["verdict"] == "vanishing" and d["name"] == "MLP sigmoid L=30 (default init)"
    assert d["recommended"][0]["checked"]


def test_analyze_text_plot_and_report(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "flow.png"
    code = main(
        [
            "analyze",
            "--model",
            "lstm",
            "--width",
            "16",
            "--steps",
            "40",
            "--batch",
            "4",
            "--forget-bias",
            "1",
            "--plot",
            str(png),
            "--report",
            str(tmp_path / "rep"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("LSTM T=40 (default(forget_bias=1)): ")
    assert png.stat().st_size > 2000 and (tmp_path / "rep" / "report.html").exists()


def test_analyze_toml_config(tmp_path, capsys):
    cfg = tmp_path / "models.toml"
    cfg.write_text(
        '[[models]]\nname = "deep sigmoid"\nmodel = "mlp"\ndepth = 25\nwidth = 32\nactivation = "sigmoid"\n\n'
        '[[models]]\nmodel = "mlp"\ndepth = 25\nwidth = 32\nactivation = "relu"\n'
        'init = {name = "kaiming_normal"}\n'
    )
    assert main(["analyze", "--config", str(cfg), "--no-check", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(d["name"], d["verdict"]) for d in doc["diagnoses"]] == [
        ("deep sigmoid", "vanishing"),
        ("MLP relu L=25 (kaiming_normal)", "healthy"),
    ]
    # flags override the file
    assert main(["analyze", "--config", str(cfg), "--depth", "3", "--no-check", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert all(d["evidence"]["length"] == 3 for d in doc["diagnoses"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    assert main(["analyze", "--config", str(bad)]) == 2
    assert "invalid TOML" in capsys.readouterr().err


def test_report_command(tmp_path, capsys):
    out = tmp_path / "r"
    assert (
        main(
            [
                "report",
                "--model",
                "gru",
                "--width",
                "16",
                "--steps",
                "30",
                "--batch",
                "2",
                "--out",
                str(out),
                "--format",
                "csv",
            ]
        )
        == 0
    )
    assert "report:" in capsys.readouterr().out
    assert (out / "report.md").read_text().startswith("# vgcore gradient-flow report")


def test_analyze_torch_checkpoint(tmp_path, capsys, torch):
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        *[m for _ in range(20) for m in (nn.Linear(32, 32), nn.Sigmoid())], nn.Linear(32, 4)
    )
    ckpt = tmp_path / "mlp.pt"
    torch.save({"model_state_dict": net.state_dict(), "epoch": 3}, ckpt)
    assert (
        main(["analyze", "--torch", str(ckpt), "--activation", "sigmoid", "--json", "--no-check"])
        == 0
    )
    (d,) = json.loads(capsys.readouterr().out)["diagnoses"]
    assert d["verdict"] == "vanishing" and d["evidence"]["length"] == 21
    # the state_dict's weights are used as they are
    from vgcore._checkpoint import load_state_dict, model_from_state_dict

    m = model_from_state_dict(load_state_dict(ckpt), activation="sigmoid")
    assert np.array_equal(m.weights[3], net[6].weight.detach().numpy())
    assert m.activations[-1].name == "identity" and m.activations[0].name == "sigmoid"

    lstm = tmp_path / "lstm.pt"
    torch.save(nn.LSTM(8, 16).state_dict(), lstm)
    assert main(["analyze", "--torch", str(lstm), "--steps", "20", "--batch", "2", "--json"]) == 0
    (d,) = json.loads(capsys.readouterr().out)["diagnoses"]
    assert d["name"] == "lstm.pt (LSTM)"
    ln = tmp_path / "ln.pt"
    torch.save(
        nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2)).state_dict(), ln
    )
    m = model_from_state_dict(load_state_dict(ln), activation="tanh")
    assert m.norms == ["layernorm", None]

    assert main(["analyze", "--torch", str(ckpt)]) == 2  # activations are not in a state_dict
    err = capsys.readouterr().err  # names the flag that supplies what the file lacks
    assert "does not record its activations" in err and "--activation relu" in err
    torch.save(nn.LSTM(4, 4, proj_size=2).state_dict(), tmp_path / "proj.pt")
    assert main(["analyze", "--torch", str(tmp_path / "proj.pt")]) == 2
    assert "proj_size > 0" in capsys.readouterr().err
    torch.save(nn.LSTM(4, 4, num_layers=2).state_dict(), tmp_path / "stacked.pt")
    assert main(["analyze", "--torch", str(tmp_path / "stacked.pt"), "--steps", "5"]) == 2
    assert "stacked or bidirectional" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    assert main(["analyze", "--torch", str(tmp_path / "junk.pt")]) == 2
    assert "cannot read" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# sweep, bench, optional analyses
def test_sweep_command(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    out = tmp_path / "sw"
    args = [
        "sweep",
        "--grid",
        "depth=2:6:2",
        "--grid",
        "activation=tanh,relu",
        "--set",
        "width=8",
        "--seeds",
        "2",
        "--serial",
        "--out",
        str(out),
    ]
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["points"] == 3 * 2 * 2 and doc["errors"] == 0
    assert sorted({r["depth"] for r in doc["rows"]}) == [2, 4, 6]
    assert main(args) == 0  # resumes: nothing to run, same table
    text = capsys.readouterr().out
    assert "12 points (0 failed)" in text and str(out) in text
    assert f"resumed: points already stored in {out}/ were read, not recomputed" in text
    assert "NaN" not in text  # a depth never reached reads '-'


def test_sweep_command_local_processes(tmp_path):
    pytest.importorskip("pyarrow")
    r = run(
        "sweep",
        "--grid",
        "depth=2,3",
        "--set",
        "width=8",
        "--workers",
        "2",
        "--out",
        str(tmp_path / "s"),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["points"] == 2


def test_sweep_command_on_dask_scheduler(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("pyarrow")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        dashboard_address=None,
    ) as cluster:
        addr = cluster.scheduler_address
        assert addr.startswith("tcp://")
        code = main(
            [
                "sweep",
                "--grid",
                "depth=2,3",
                "--set",
                "width=8",
                "--scheduler",
                addr,
                "--out",
                str(tmp_path / "d"),
                "--json",
            ]
        )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["points"] == 2
    assert main(["sweep", "--grid", "depth=2", "--scheduler", "localhost:1"]) == 2


def test_sweep_toml(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        '[sweep]\nanalysis = "gradient_flow"\nseeds = [1, 2]\n[sweep.grid]\ndepth = [2, 4]\n'
        '[sweep.fixed]\nwidth = 8\nactivation = "relu"\n'
    )
    assert (
        main(["sweep", "--config", str(cfg), "--serial", "--out", str(tmp_path / "o"), "--json"])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["depth"], r["seed"]) for r in rows] == [(2, 1), (2, 2), (4, 1), (4, 2)]
    assert all(r["activation"] == "relu" for r in rows)


def test_bench_quick(tmp_path, capsys):
    """A slice of `vgcore bench --quick`: every peer's answer is checked before it is timed."""
    out = tmp_path / "bench.json"
    args = ["bench", "--quick", "--repeat", "1", "--only", "mlp-flow,bptt-rnn", "--no-memory"]
    assert main([*args, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert [r["workload"] for r in doc["rows"]] == ["mlp-flow", "bptt-rnn-N64"]
    assert doc["gemm_gflops"]["1"]["float32"] > 0
    for row in doc["rows"]:
        assert min(row["vgcore_s"].values()) > 0 and row["gflops"] > 0
        assert {p["peer"] for p in row["peers"]} >= {"numpy"}
        assert all(p["agreement"] < 1e-4 and p["ratio"] > 0 for p in row["peers"])
        assert row["vgcore_coverage"] == 1.0
    assert "| MLP flow tanh L=50 N=128 B=32 |" in table


@pytest.mark.parametrize(
    "feature, args",
    [
        ("lyapunov", ["lyapunov", "--model", "rnn", "--width", "16", "--steps", "50", "-k", "3"]),
        ("spectrum", ["spectrum", "--model", "rnn", "--width", "16", "--steps", "20"]),
        ("critical_sigma_w2", ["phase", "--activation", "tanh", "--sigma-w2", "1.5"]),
    ],
)
def test_jacobian_and_theory_commands_print_json(feature, args, capsys):
    code = main([*args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    json.loads(captured.out)


# ------------------------------------------------------------------------------------------
# Jacobian analyses: lyapunov, spectrum, singular
def _same_model(spec):
    from vgcore._modelspec import build

    return build(spec)


def test_lyapunov_command_reports_batch_mean_exponents(capsys):
    import vgcore

    args = ["lyapunov", "--model", "rnn", "--width", "8", "--steps", "60", "--batch", "4"]
    code = main([*args, "-k", "3", "--burn-in", "10", "--qr-every", "2", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    model, x = _same_model({"model": "rnn", "hidden_size": 8, "steps": 60, "batch": 4})
    ref = vgcore.lyapunov(model, x, k=3, burn_in=10, qr_every=2)
    assert doc["k"] == 3 and doc["batch"] == 4 and doc["state_dim"] == 8
    assert doc["accumulated_steps"] == 50 and doc["burn_in"] == 10 and doc["qr_every"] == 2
    assert np.allclose(doc["exponents"], ref.exponents.mean(axis=0), rtol=1e-12)
    assert np.allclose(doc["exponents_std"], ref.exponents.std(axis=0), rtol=1e-12)
    assert np.allclose(doc["per_sample"], ref.exponents, rtol=1e-12)
    assert doc["top"] == pytest.approx(ref.exponents[:, 0].mean(), rel=1e-12)
    assert doc["top_std"] == pytest.approx(ref.exponents[:, 0].std(), rel=1e-12)
    assert doc["regime"] == "ordered" and doc["axis"] == "step"
    assert doc["kaplan_yorke_dimension"] == pytest.approx(ref.kaplan_yorke_dimension().mean())
    # text: one row per exponent (not B x k), the top exponent with its spread
    assert main([*args, "-k", "3"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln[:2] in ("1 ", "2 ", "3 ", "4 ")]
    assert len(rows) == 3
    assert "top 3 Lyapunov exponents per step" in out and "4 trajectories" in out
    assert "top exponent" in out and "+/-" in out


def test_lyapunov_command_plot_through_subprocess(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "lyap.png"
    r = run(
        "lyapunov",
        "--model",
        "lstm",
        "--width",
        "8",
        "--steps",
        "40",
        "--batch",
        "4",
        "-k",
        "4",
        "--plot",
        str(png),
    )
    assert r.returncode == 0, r.stderr
    assert "state dimension 16" in r.stdout  # an LSTM's state is (h, c)
    assert (
        len([ln for ln in r.stdout.splitlines() if ln[:2] in ("1 ", "2 ", "3 ", "4 ", "5 ")]) == 4
    )
    assert f"figure: {png}" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_lyapunov_command_on_a_width_keeping_mlp(capsys):
    code = main(
        ["lyapunov", "--model", "mlp", "--depth", "12", "--width", "8", "-k", "8", "--json"]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["axis"] == "layer" and doc["steps"] == 12 and len(doc["exponents"]) == 8
    assert doc["exponents"] == sorted(doc["exponents"], reverse=True)


def test_spectrum_command_per_step_medians(tmp_path, capsys):
    import vgcore

    pytest.importorskip("matplotlib")
    args = ["spectrum", "--model", "rnn", "--width", "8", "--steps", "30", "--batch", "5"]
    png = tmp_path / "sp.png"
    code = main([*args, "--json", "--plot", str(png)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    model, x = _same_model({"model": "rnn", "hidden_size": 8, "steps": 30, "batch": 5})
    ref = vgcore.jacobian_spectrum(model, x)
    assert doc["method"] == "exact" and doc["batch"] == 5
    assert doc["steps"] == list(range(30))  # one entry per step, not per sample
    med = np.median(ref.spectral_radius, axis=1)
    assert np.allclose(doc["spectral_radius"]["median"], med, rtol=1e-12)
    assert np.allclose(doc["spectral_radius"]["max"], ref.spectral_radius.max(axis=1))
    assert np.allclose(doc["sigma_max"]["median"], np.median(ref.sigma_max, axis=1))
    summ = doc["spectral_radius_summary"]
    assert summ["median"] == pytest.approx(np.median(med))
    assert summ["fraction_above_1"] == pytest.approx(np.mean(med > 1))
    assert doc["mean_log_sigma_max"] == pytest.approx(np.log(ref.sigma_max).mean())
    assert "matrix_free" not in doc and doc["plot"] == str(png)
    assert png.stat().st_size > 5000 and f"figure: {png}" in captured.err
    # text
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "of 30 steps x batch of 5, method exact" in out
    assert "(10 of 30 steps shown; --json for all)" in out


def test_spectrum_command_matrix_free_method(capsys):
    args = ["spectrum", "--model", "gru", "--width", "6", "--steps", "8", "--batch", "2"]
    assert main([*args, "--method", "arnoldi", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["method"] == "arnoldi" and doc["matrix_free"]["converged"] is True
    assert doc["matrix_free"]["operator_applications"] > 0
    assert main([*args, "--method", "exact", "--json"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert np.allclose(
        doc["spectral_radius"]["median"], exact["spectral_radius"]["median"], rtol=1e-6
    )
    assert main([*args, "--method", "power"]) == 0
    assert "matrix-free:" in capsys.readouterr().out


def test_spectrum_command_mlp_with_width_changes(capsys):
    args = ["spectrum", "--model", "mlp", "--depth", "3", "--input-size", "6", "--width", "8"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "of 3 layers x batch of 64" in lines[0]
    (rho,) = [ln for ln in lines if ln.startswith("spectral radius")]
    assert rho.split()[-1] == "0/2"  # layer 1 (6 -> 8) has no spectral radius
    (first,) = [ln for ln in lines if ln.startswith("1 ")]
    assert first.split()[1] == "n/a"
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["spectral_radius"]["median"][0] is None  # NaN -> null
    assert doc["spectral_radius_summary"]["count"] == 2


def test_analysis_warnings_become_warning_lines(monkeypatch, capsys):
    import warnings

    real = _summaries.run_spectrum

    def noisy(*a, **kw):
        warnings.warn("2 of 8 matrix-free solves did not reach tol", RuntimeWarning, stacklevel=1)
        return real(*a, **kw)

    monkeypatch.setattr(_summaries, "run_spectrum", noisy)
    args = ["spectrum", "--model", "rnn", "--width", "4", "--steps", "4", "--batch", "2", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)
    assert "vgcore: warning: 2 of 8 matrix-free solves did not reach tol" in captured.err


def test_singular_command(tmp_path, capsys):
    import vgcore

    pytest.importorskip("matplotlib")
    png = tmp_path / "sv.png"
    spec = ["--model", "mlp", "--depth", "20", "--width", "16", "--batch", "3"]
    code = main(["singular", *spec, "--init", "orthogonal", "--json", "--plot", str(png)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    model, x = _same_model(
        {"model": "mlp", "depth": 20, "width": 16, "batch": 3, "init": "orthogonal"}
    )
    ref = vgcore.jacobian_singular_values(model, x)
    assert doc["depth"] == 20 and doc["batch"] == 3 and doc["rank"] == 16
    assert doc["isometry"] == pytest.approx(ref.isometry())
    assert np.allclose(doc["log10_singular_values"], ref.log10_singular_values)
    assert np.allclose(doc["log10_condition_number"], ref.log_condition_number / np.log(10))
    assert png.stat().st_size > 5000
    assert main(["singular", *spec]) == 0
    out = capsys.readouterr().out
    assert "singular values of the input-output Jacobian over 20 layers" in out
    assert "mean sigma^2 = 10^" in out and "(1 under dynamical isometry)" in out
    assert "  far from isometry: spread (std of log10 sigma)" in out  # the verdict, stated
    # a critical orthogonal network (no bias, small inputs) is called isometric
    iso = ["--init", "orthogonal", "--no-bias", "--input-scale", "0.03"]
    assert main(["singular", "--depth", "50", "--width", "16", "--batch", "2", *iso]) == 0
    assert "  near isometry: spread" in capsys.readouterr().out


def test_progress_bar_helpers():
    from vgcore._progress import progress_bar

    with progress_bar(3, "x", enabled=True) as bar:
        bar.advance()
        bar(2, 3)
        bar.describe("y")
    with progress_bar(3, "x", enabled=False) as bar:
        bar.advance()  # a silent no-op

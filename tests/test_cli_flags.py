"""The command line refuses what it would otherwise ignore or fail at late: flags that do not
apply to the model, output paths it cannot write, a report folder it would clobber; every
command and option is described in --help; checkpoint errors are whole and actionable."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest

import vgcore
from vgcore import _modelspec, cli
from vgcore.cli import _common as cli_common
from vgcore.cli import main, model_flags
from vgcore.cli import parser as cli_parser

MODEL_COMMANDS = ("analyze", "report", "lyapunov", "spectrum", "singular")


def _boom(*_a, **_k):
    raise AssertionError("work started before the arguments were checked")


@pytest.fixture
def no_build(monkeypatch):
    """Building a model fails the test: the refusal must come first."""
    monkeypatch.setattr(_modelspec, "build", _boom)


@pytest.fixture
def no_work(monkeypatch, no_build):
    """Running any command fails the test: the refusal must come before it."""
    for name in cli_parser.COMMANDS:
        monkeypatch.setitem(cli_parser.COMMANDS, name, _boom)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("vgcore: error: "), err
    return err[-1]


# ------------------------------------------------------------------------------------------
# flags that do not apply to the model
@pytest.mark.parametrize("command", MODEL_COMMANDS)
@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--model", "lstm", "--depth", "50"],
            "--depth applies to mlp models only, not to lstm (a recurrent model's length is "
            "--steps)",
        ),
        (
            ["--model", "rnn", "--activation", "relu"],
            "--activation applies to mlp models only, not to rnn (an RNN's is --nonlinearity",
        ),
        (["--steps", "10"], "--steps applies to rnn/lstm/gru models only, not to mlp"),
        (["--model", "mlp", "--hidden-size", "8"], "(an MLP's width is --width)"),
        (["--model", "gru", "--forget-bias", "1"], "--forget-bias applies to lstm models only"),
        (["--model", "lstm", "--nonlinearity", "tanh"], "--nonlinearity applies to rnn models"),
        (["--model", "gru", "--block", "residual"], "--block applies to mlp models only"),
        (["--model", "rnn", "--norm", "layernorm"], "--norm applies to mlp models only"),
        (["--alpha", "0.5"], "--alpha (the residual branch scale) applies to --block residual"),
        (["--block", "highway", "--alpha", "0.5"], "not to highway blocks"),
        (
            ["--model", "gru", "--width", "8", "--hidden-size", "16"],
            "--width and --hidden-size both set a recurrent model's hidden size: give one",
        ),
    ],
)
def test_flags_that_do_not_apply_are_refused(command, flags, message, no_build, capsys):
    assert main([command, *flags]) == 2
    assert message in _error(capsys)


@pytest.mark.parametrize(
    "args, message",
    [
        (["demo", "--no-report", "--out", "x"], "--out applies only when a report is written"),
        (["demo", "--no-report", "--format", "csv"], "--format applies only when a report"),
        (["demo", "--no-report", "--force"], "--force applies only when a report is written"),
        (["analyze", "--format", "parquet"], "--format applies only with --report DIR"),
        (["analyze", "--force"], "--force applies only with --report DIR"),
        (["sweep", "--serial", "--workers", "2", "--grid", "depth=2,3"], "--workers applies"),
        (
            ["sweep", "--serial", "--scheduler", "tcp://h:1", "--grid", "depth=2"],
            "--serial applies only without --scheduler",
        ),
        (["sweep", "--seed", "3", "--grid", "depth=2,3"], "--seed does not apply to sweep"),
    ],
)
def test_options_without_effect_are_refused(args, message, no_work, capsys):
    assert main(args) == 2
    assert message in _error(capsys)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model", "lstm", "--depth", "5", "--grid", "steps=5,6"],
            "sweep setting depth applies to mlp models only, not to lstm",
        ),
        (["--grid", "steps=5,6"], "sweep setting steps applies to rnn/lstm/gru models only"),
        (["--grid", "seed=1,2"], "seed cannot be a sweep setting: give the seeds"),
        (
            ["--analysis", "mean_field", "--grid", "sigma_w2=1,2", "--set", "depth=3"],
            "reads activation, sigma_w2, sigma_b2 only; depth would be ignored",
        ),
    ],
)
def test_sweep_settings_that_do_not_apply_are_refused(args, message, tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", "--serial", "--out", str(out), *args]) == 2
    assert message in _error(capsys)
    assert not out.exists()  # nothing ran


def test_sweep_setting_that_applies_to_some_points_is_kept(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    args = ["sweep", "--serial", "--out", str(tmp_path / "sw"), "--json", "--grid"]
    args += ["model=mlp,lstm", "--set", "depth=3", "--set", "width=4", "--set", "steps=4"]
    assert main([*args, "--set", "batch=2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["points"] == 2 and doc["errors"] == 0


def test_config_settings_are_checked_per_model(tmp_path, capsys):
    one = tmp_path / "one.toml"
    one.write_text('[model]\nmodel = "lstm"\ndepth = 3\n')
    assert main(["analyze", "--config", str(one)]) == 2
    assert f"{one}: depth applies to mlp models only, not to lstm" in _error(capsys)
    two = tmp_path / "two.toml"
    two.write_text('[[models]]\nmodel = "gru"\n\n[[models]]\nmodel = "lstm"\n')
    assert main(["analyze", "--config", str(two), "--depth", "4"]) == 2
    assert f"; {two} describes gru and lstm models" in _error(capsys)
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nmodel = "cnn"\ndepth = 3\n')
    assert main(["analyze", "--config", str(bad)]) == 2
    assert "model must be one of mlp, rnn, lstm, gru, got 'cnn'" in _error(capsys)
    assert main(["analyze", "--config", str(two), "--name", "x"]) == 2
    assert "--name labels one model" in _error(capsys)
    # a flag that applies to one of the models is used for that one
    mixed = tmp_path / "mixed.toml"
    mixed.write_text(
        '[[models]]\nmodel = "mlp"\nwidth = 4\n\n'
        '[[models]]\nmodel = "lstm"\nwidth = 4\nsteps = 4\nbatch = 2\n'
    )
    assert main(["analyze", "--config", str(mixed), "--depth", "2", "--no-check", "--json"]) == 0
    lengths = [d["evidence"]["length"] for d in json.loads(capsys.readouterr().out)["diagnoses"]]
    assert lengths == [2, 4]


# The table of which settings apply to which model kind is checked against what the models
# are: a setting the table calls inapplicable leaves the model and its inputs unchanged (or
# is refused by the model layer itself), and one it calls applicable changes them.
_BASE = {"depth": 3, "width": 4, "steps": 4, "batch": 2, "input_size": 3}
_OTHER = {
    "depth": 4,
    "width": 5,
    "activation": "relu",
    "block": "residual",
    "alpha": 0.5,
    "norm": "layernorm",
    "hidden_size": 6,
    "input_size": 2,
    "steps": 5,
    "nonlinearity": "relu",
    "forget_bias": 2.0,
    "init": "orthogonal",
    "sigma_w2": 2.0,
    "sigma_b2": 0.1,
    "batch": 3,
    "seed": 1,
    "dtype": "float32",
    "input_scale": 2.0,
    "bias": False,
}


def _fingerprint(spec: dict) -> list[np.ndarray] | None:
    try:
        model, x = _modelspec.build(spec)
    except ValueError:
        return None
    flow = vgcore.gradient_flow(model, x)
    return [np.asarray(x, dtype=np.float64), np.asarray(flow.log_grad_norms)]


@pytest.mark.parametrize("kind", _modelspec.MODEL_KINDS)
@pytest.mark.parametrize("key", sorted(_OTHER))
def test_applicability_table_matches_the_models(kind, key):
    base = {"model": kind, **_BASE}
    if key == "alpha" and kind == "mlp":
        base["block"] = "residual"  # alpha applies to residual blocks
    if key == "width" and kind != "mlp":
        base.pop("hidden_size", None)
    changed = {**base, key: _OTHER[key]}
    applies = model_flags._misapplied(key, changed) is None
    a, b = _fingerprint(base), _fingerprint(changed)
    assert a is not None
    if applies:
        assert b is not None
        assert any(u.shape != v.shape or not np.array_equal(u, v) for u, v in zip(a, b)), key
    elif b is not None:
        assert all(u.shape == v.shape and np.array_equal(u, v) for u, v in zip(a, b)), key


def test_help_marks_the_model_kinds_a_flag_applies_to(capsys):
    assert main(["analyze", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--depth N [mlp] number of layers" in out
    assert "--forget-bias X [lstm] forget-gate bias" in out
    assert "--steps T [rnn/lstm/gru] sequence length" in out


# ------------------------------------------------------------------------------------------
# --torch: flags the checkpoint fixes, clean messages
def test_torch_flags_the_checkpoint_fixes_are_refused(tmp_path, torch, capsys):
    nn = torch.nn
    torch.manual_seed(0)  # weights independent of earlier tests (a 4-unit ReLU RNN can go silent)
    mlp, lstm, rnn = tmp_path / "mlp.pt", tmp_path / "lstm.pt", tmp_path / "rnn.pt"
    torch.save(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)).state_dict(), mlp)
    torch.save(nn.LSTM(3, 4).state_dict(), lstm)
    torch.save(nn.RNN(3, 4).state_dict(), rnn)
    assert main(["analyze", "--torch", str(mlp), "--depth", "3"]) == 2
    assert "--depth does not apply to --torch: the checkpoint fixes the model" in _error(capsys)
    assert main(["analyze", "--torch", str(mlp), "--model", "mlp"]) == 2
    assert "--model does not apply to --torch" in _error(capsys)
    assert main(["analyze", "--torch", str(lstm), "--activation", "relu"]) == 2
    msg = _error(capsys)
    assert "--activation applies to mlp models only, not to lstm (an RNN's is --nonlinearity" in msg
    assert msg.endswith(f": {lstm} holds LSTM weights")
    assert main(["analyze", "--torch", str(mlp), "--activation", "tanh", "--steps", "4"]) == 2
    assert "--steps applies to rnn/lstm/gru models only, not to mlp" in _error(capsys)
    # an RNN's nonlinearity is not in its state_dict: the assumption is stated
    assert main(["analyze", "--torch", str(rnn), "--steps", "4", "--batch", "2", "--json"]) == 0
    assert "assuming tanh (nn.RNN's default; give --nonlinearity relu" in capsys.readouterr().err
    args = ["analyze", "--torch", str(rnn), "--nonlinearity", "relu", "--steps", "4"]
    assert main([*args, "--batch", "2", "--json", "--no-check"]) == 0
    captured = capsys.readouterr()
    assert "assuming" not in captured.err
    assert json.loads(captured.out)["diagnoses"][0]["name"] == "rnn.pt (RNN)"


@pytest.mark.parametrize(
    "make, expect",
    [
        (
            lambda nn: nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)),
            "vgcore.MLP.from_torch(module)",
        ),
        (lambda nn: nn.LSTM(3, 4), "vgcore.LSTM.from_torch(module)"),
    ],
)
def test_whole_module_checkpoint_message(tmp_path, torch, capsys, make, expect):
    path = tmp_path / "whole.pt"
    torch.save(make(torch.nn), path)
    assert main(["analyze", "--torch", str(path), "--activation", "tanh"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and len(err.strip().splitlines()) == 1
    msg = err.strip()
    assert "holds a whole pickled module" in msg and "saved with torch.save(module)" in msg
    assert "torch.load(weights_only=True)" in msg
    assert f"torch.save(module.state_dict(), {str(path)!r})" in msg
    assert msg.endswith(expect)  # whole, not cut mid-sentence


def test_other_pickled_objects_and_damaged_files(tmp_path, torch, capsys):
    path = tmp_path / "np.pt"
    torch.save({"w": np.zeros(3)}, path)
    assert main(["analyze", "--torch", str(path)]) == 2
    msg = _error(capsys)
    assert "holds a pickled Python object (numpy." in msg and "\x1b" not in msg
    assert msg.endswith("Save the weights only: torch.save(module.state_dict(), path)")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 not a checkpoint")
    assert main(["analyze", "--torch", str(junk)]) == 2
    msg = _error(capsys)
    assert msg.startswith(f"vgcore: error: cannot read {str(junk)!r} as a PyTorch checkpoint (")
    assert msg.endswith("expected a file written by torch.save(module.state_dict(), path)")


def _state_dicts(torch) -> dict:
    nn = torch.nn
    torch.manual_seed(0)
    big = torch.randn(4, 5)
    return {
        "mlp": nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 2)),
        "bn": nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)),
        "lstm": nn.LSTM(3, 4),
        "f64": nn.GRU(3, 4).double(),
        "f16": nn.Linear(3, 4).half(),
        "bf16": nn.Linear(3, 4).bfloat16(),
        # shared storage, offsets, strides, a scalar and an empty tensor
        "views": {"a": big[1:3], "b": big, "c": big.t(), "d": big[:, 1], "s": big[0, 0]},
        "empty": {"e": torch.zeros(0, 3), "i": torch.arange(5), "m": torch.ones(2) > 0},
        "wrapped": {
            "model_state_dict": nn.Linear(3, 4).state_dict(),
            "epoch": 3,
            "opt": {"lr": 0.1, "betas": (0.9, 0.99), "amsgrad": False, "name": "adam"},
        },
        "param": {"w": nn.Parameter(torch.randn(2, 2))},
    }


def _same(ref, got, torch, where: str) -> None:
    if isinstance(ref, torch.Tensor):
        r = ref.detach()
        r = (r.float() if r.dtype == torch.bfloat16 else r).numpy()
        assert isinstance(got, np.ndarray) and got.dtype == r.dtype, where
        assert got.shape == r.shape and np.array_equal(got, r), where
    elif isinstance(ref, dict):
        assert list(ref) == list(got), where
        for k in ref:
            _same(ref[k], got[k], torch, f"{where}/{k}")
    else:
        assert ref == got and type(ref) is type(got), where


def test_checkpoints_read_without_torch_match_torch_load(tmp_path, torch):
    import zipfile

    from vgcore._checkpoint import _read_without_torch, load_state_dict

    for name, obj in _state_dicts(torch).items():
        obj = obj.state_dict() if isinstance(obj, torch.nn.Module) else obj
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        _same(torch.load(path, weights_only=True), _read_without_torch(path), torch, name)
    # what torch's own reader is still needed for: the legacy format
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(zipfile.BadZipFile):
        _read_without_torch(legacy)
    _same(dict(torch.load(legacy, weights_only=True)), load_state_dict(legacy), torch, "legacy")


def test_reading_a_state_dict_does_not_import_torch(tmp_path, torch):
    import subprocess
    import sys

    path = tmp_path / "lstm.pt"
    torch.save(torch.nn.LSTM(3, 4).state_dict(), path)
    code = (
        "import sys; from vgcore.cli import main; "
        f"assert main(['analyze', '--torch', {str(path)!r}, '--steps', '3', '--batch', '2', "
        "'--no-check', '--json']) == 0; print('torch' in sys.modules, file=sys.stderr)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(r.stdout)["diagnoses"][0]["name"] == "lstm.pt (LSTM)"
    assert r.stderr.strip().splitlines()[-1] == "False"


def test_state_dict_without_torch_installed(tmp_path, torch, monkeypatch, capsys):
    sd, legacy = tmp_path / "sd.pt", tmp_path / "legacy.pt"
    torch.save(torch.nn.GRU(3, 4).state_dict(), sd)
    torch.save(torch.nn.GRU(3, 4).state_dict(), legacy, _use_new_zipfile_serialization=False)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # import torch fails
    args = ["--steps", "3", "--batch", "2", "--no-check", "--json"]
    assert main(["analyze", "--torch", str(sd), *args]) == 0
    assert json.loads(capsys.readouterr().out)["diagnoses"][0]["name"] == "sd.pt (GRU)"
    assert main(["analyze", "--torch", str(legacy), *args]) == 1
    err = capsys.readouterr().err
    assert f"reading {str(legacy)!r} needs torch" in err and "pip install 'vgcore[torch]'" in err


def test_torch_free_reader_runs_no_pickled_code(tmp_path, torch, capsys):
    import pickle
    import zipfile

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
        zf.writestr("evil/byteorder", "little")
        zf.writestr("evil/version", "3\n")
    assert main(["analyze", "--torch", str(path)]) == 2
    assert "pickled Python object (posix.system)" in _error(capsys)
    assert not marker.exists()


def test_broken_pipe_exits_quietly(monkeypatch, capsys):
    class Gone:
        def write(self, _text):
            raise BrokenPipeError

        def flush(self):
            pass

    monkeypatch.setattr("sys.stdout", Gone())
    assert main(["phase"]) == 141
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------
# output paths are checked before any work
PLOT_COMMANDS = [
    ["analyze"],
    ["lyapunov"],
    ["spectrum"],
    ["singular"],
    ["phase", "--sigma-w2", "1"],
    ["bench", "--quick"],
]


@pytest.mark.parametrize("command", PLOT_COMMANDS, ids=lambda c: c[0])
def test_plot_path_checked_before_work(command, tmp_path, no_work, capsys):
    missing = tmp_path / "no" / "such" / "fig.png"
    assert main([*command, "--plot", str(missing)]) == 2
    assert f"--plot {missing}: folder {missing.parent} does not exist" in _error(capsys)
    assert main([*command, "--plot", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in _error(capsys)
    assert main([*command, "--plot", str(tmp_path / "fig.xyz")]) == 2
    assert "the file name must end in a format matplotlib writes" in _error(capsys)
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main([*command, "--plot", str(afile / "fig.png")]) == 2
    assert f"--plot {afile / 'fig.png'}: {afile} is a file, not a folder" in _error(capsys)


def test_plot_into_unwritable_folder(tmp_path, no_work, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: the permission check is what is tested
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != ro)
    else:
        ro.chmod(0o500)
    try:
        assert main(["analyze", "--plot", str(ro / "f.png")]) == 2
        assert f"--plot {ro / 'f.png'}: cannot write in {ro} (permission denied)" in _error(capsys)
        assert main(["report", "--out", str(ro / "rep")]) == 2
        assert f"--out {ro / 'rep'}: cannot write in {ro}" in _error(capsys)
    finally:
        ro.chmod(0o700)


def test_plot_without_matplotlib_fails_before_work(monkeypatch, no_work, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a)
    )
    assert main(["analyze", "--plot", "f.png"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "vgcore: failed: --plot needs matplotlib, a dependency of vgcore: "
        "pip install 'vgcore[plot]'"
    )


def test_bench_output_files_checked_before_work(tmp_path, no_work, capsys):
    for flag in ("--json", "--markdown"):
        assert main(["bench", "--quick", flag, str(tmp_path / "no" / "x")]) == 2
        assert f"{flag} {tmp_path / 'no' / 'x'}: folder" in _error(capsys)


# ------------------------------------------------------------------------------------------
# report folders
def _report(out: Path, name: str, *extra: str) -> list[str]:
    model = ["--model", "gru", "--width", "4", "--steps", "5", "--batch", "2"]
    return ["report", *model, "--name", name, "--out", str(out), "--no-check", *extra]


def test_report_replaces_an_earlier_report_without_stale_files(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("pyarrow")
    out = tmp_path / "rep"
    assert main(_report(out, "first model", "--format", "parquet")) == 0
    first = {p.name for p in (out / "figures").iterdir()}
    assert any("first" in f for f in first)
    capsys.readouterr()
    assert main(_report(out, "second model")) == 0
    err = capsys.readouterr().err
    assert f"vgcore: note: replaced the earlier report in {out} (removed its 2 pages, " in err
    figs = {p.name for p in (out / "figures").iterdir()}
    assert figs and not any("first" in f for f in figs)  # no stale figure
    assert {p.name for p in (out / "data").iterdir()} == {
        "summary.csv",
        "gradient_norms.csv",
        "fixes.csv",
    }  # no stale parquet tables
    assert "first model" not in (out / "report.md").read_text()


def test_report_refuses_a_folder_of_other_files(tmp_path, no_work, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "figures").mkdir()
    (out / "figures" / "plot.png").write_bytes(b"x")
    for args in (_report(out, "m"), ["analyze", "--report", str(out)], ["demo", "--out", str(out)]):
        assert main(args) == 2
        msg = _error(capsys)
        assert f"{out} is not a vgcore report: it holds other files (" in msg
        assert "add --force to write the report there" in msg
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / "figures" / "plot.png").exists()
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(_report(afile, "m")) == 2
    assert f"--out {afile} is a file, not a folder" in _error(capsys)


def test_report_force_keeps_other_files(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(_report(out, "m", "--force")) == 0
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / "report.html").exists()
    # a vgcore report with a file of the user's added is not replaced without --force
    capsys.readouterr()
    assert main(_report(out, "m")) == 2
    assert "holds a vgcore report and other files (notes.txt)" in _error(capsys)


# ------------------------------------------------------------------------------------------
# help
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_and_option_is_described():
    parser = cli.build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {
        "demo",
        "analyze",
        "report",
        "lyapunov",
        "spectrum",
        "singular",
        "phase",
        "sweep",
        "bench",
    }
    for name, p in {"vgcore": parser, **commands}.items():
        assert p.description and len(p.description) > 30, name
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = f"{name} {action.option_strings or action.dest}"
            assert action.help and action.help != argparse.SUPPRESS, what
            assert len(action.help) > 10, what


@pytest.mark.parametrize("command", sorted(_subparsers(cli.build_parser())))
def test_command_help_prints_its_description(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert cli_parser._DESCRIPTIONS[command].split()[0] in out.split("\n\n")[1]


def test_tables_have_no_trailing_blanks():
    text = cli_common._table(["model", "best fix"], [["a", "-"], ["a much longer name", "x"]])
    assert all(line == line.rstrip() for line in text.splitlines())

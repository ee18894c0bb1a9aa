"""vgcore.sweep under trouble: a killed driver leaves no processes behind, corrupt or foreign
files are recomputed (with a warning), infrastructure failures are never stored as results,
an unguarded script works, bad arguments and [sweep] tables are named."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import vgcore
from vgcore import cli
from vgcore.sweep import SweepError, SweepWarning, load_sweep

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TINY = {"model": "mlp", "depth": [2, 3], "width": 4, "activation": "tanh", "batch": 2}
HERE = Path(__file__).parent


# Module-level analyses: importable by worker processes.
def square(i: int, seed: int) -> dict:
    log = os.environ.get("VGCORE_SWEEP_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{i}\n")
    delay = float(os.environ.get("VGCORE_SWEEP_DELAY", "0"))
    if delay:
        time.sleep(delay)
    return {"square": i * i}


def dies_on(i: int, seed: int) -> dict:
    """The worker process itself dies (as if killed or out of memory) for the listed points."""
    if str(i) in os.environ.get("VGCORE_SWEEP_DIE", "").split(","):
        os._exit(7)
    return square(i, seed)


def sometimes_fails(i: int, seed: int) -> dict:
    if str(i) in os.environ.get("VGCORE_SWEEP_FAIL", "2").split(","):
        raise RuntimeError(f"point {i} is broken")
    return square(i, seed)


def _calls(log: Path) -> list[int]:
    return sorted(int(s) for s in log.read_text().split()) if log.exists() else []


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def _point_file(out: Path, i: int) -> Path:
    for f in out.glob("point-*.parquet"):
        if pq.read_table(f).column("i").to_pylist() == [i]:
            return f
    raise AssertionError(f"no point file for i={i}")


# ------------------------------------------------------------------------------------------
# a. a killed driver leaves no worker (or resource tracker) behind
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def _descendants(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:
        kids = _children_map()
        out, todo = [], [pid]
        while todo:
            for c in kids.get(todo.pop(), []):
                out.append(c)
                todo.append(c)
        return out
    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that never comes counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killed_driver_leaves_no_processes(tmp_path):
    out = tmp_path / "sw"
    script = textwrap.dedent(f"""
        import vgcore, test_sweep_robust
        vgcore.sweep(test_sweep_robust.square, {{"i": list(range(60))}}, max_workers=2,
                     out={str(out)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=_env(VGCORE_SWEEP_DELAY="0.2"))
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("point-*.parquet"))) < 3:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.05)
        family = _descendants(proc.pid)
        assert len(family) >= 2  # the workers (and the resource tracker)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    deadline = time.monotonic() + 20  # before the fix they lived on for minutes
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in family if _alive(p)]
    for p in left:  # do not leak them into the rest of the run
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes outlived their driver: {left}"


# ------------------------------------------------------------------------------------------
# b. corrupt, empty, foreign point files and a garbled _sweep.json
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "copied"])
def test_damaged_point_file_is_recomputed_with_a_warning(tmp_path, monkeypatch, damage):
    out, log = tmp_path / "sw", tmp_path / "calls.log"
    grid = {"i": [1, 2, 3]}
    first = vgcore.sweep(square, grid, out=out, executor="serial")
    bad = _point_file(out, 2)
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "garbage":
        bad.write_bytes(b"PAR1 this is not parquet PAR1")
    else:  # another point's file copied over this one
        shutil.copy(_point_file(out, 1), bad)
    monkeypatch.setenv("VGCORE_SWEEP_LOG", str(log))
    with pytest.warns(SweepWarning, match=bad.name) as rec:
        df = vgcore.sweep(square, grid, out=out, executor="serial")
    assert "recomput" in str(rec[0].message)
    assert _calls(log) == [2]  # that point only
    assert df["square"].tolist() == [1, 4, 9] and (df["status"] == "ok").all()
    pd.testing.assert_frame_equal(df.drop(columns="elapsed_s"), first.drop(columns="elapsed_s"))
    assert len(list(out.glob("point-*.parquet"))) == 3
    assert len(list(out.glob("*.corrupt"))) == 1  # set aside, not deleted
    log.write_text("")
    again = vgcore.sweep(square, grid, out=out, executor="serial")  # no warning: healed
    assert _calls(log) == [] and again["square"].tolist() == [1, 4, 9]


def test_point_files_carry_their_identity(tmp_path):
    out = tmp_path / "sw"
    df = vgcore.sweep(square, {"i": [5]}, seeds=[3], out=out, executor="serial")
    (f,) = out.glob("point-*.parquet")
    import json

    ident = json.loads(pq.read_schema(f).metadata[b"vgcore.sweep"])
    assert ident["key"] == df.loc[0, "point_id"] == f.stem[len("point-") :]
    assert ident["params"] == {"i": 5} and ident["seed"] == 3 and ident["status"] == "ok"
    assert ident["analysis"].endswith("test_sweep_robust.square")


def test_load_sweep_skips_damaged_files_with_a_warning(tmp_path):
    out = tmp_path / "sw"
    vgcore.sweep(square, {"i": [1, 2, 3]}, out=out, executor="serial")
    bad = _point_file(out, 2)
    bad.write_bytes(b"")
    shutil.copy(_point_file(out, 1), _point_file(out, 3))
    with pytest.warns(SweepWarning, match="2 damaged") as rec:
        df = load_sweep(out)
    assert bad.name in str(rec[0].message)
    assert df["i"].tolist() == [1]


def test_garbled_metadata_is_rebuilt_from_the_point_files(tmp_path, monkeypatch):
    out, log = tmp_path / "sw", tmp_path / "calls.log"
    vgcore.sweep(square, {"i": [1, 2]}, out=out, executor="serial")
    (out / "_sweep.json").write_text('{"analysis": "test_sw')  # cut short
    _point_file(out, 2).write_bytes(b"")  # a damaged file does not block the rebuild
    monkeypatch.setenv("VGCORE_SWEEP_LOG", str(log))
    with pytest.warns(SweepWarning) as rec:
        df = vgcore.sweep(square, {"i": [1, 2]}, out=out, executor="serial")
    assert "_sweep.json" in str(rec[0].message) and "damaged" in str(rec[1].message)
    assert _calls(log) == [2] and df["square"].tolist() == [1, 4]
    vgcore.sweep(square, {"i": [1, 2]}, out=out, executor="serial")  # healed: no warning


def test_garbled_metadata_of_another_sweep_is_a_clear_error(tmp_path):
    out = tmp_path / "sw"
    vgcore.sweep(square, {"i": [1, 2]}, out=out, executor="serial")
    meta = out / "_sweep.json"
    meta.write_text("")
    with pytest.raises(ValueError, match=r"_sweep\.json.*another folder"):
        vgcore.sweep(sometimes_fails, {"i": [1, 2]}, out=out, executor="serial")
    meta.write_text("[1, 2]")  # valid JSON, wrong shape
    with pytest.raises(ValueError, match=r"_sweep\.json"):
        vgcore.sweep(sometimes_fails, {"i": [1, 2]}, out=out, executor="serial")


def test_cli_names_the_damaged_file_and_recomputes(tmp_path, capsys):
    out = tmp_path / "sw"
    argv = ["sweep", "--grid", "depth=2,3", "--set", "width=4", "--serial", "--out", str(out)]
    assert cli.main(argv) == 0
    bad = sorted(out.glob("point-*.parquet"))[0]
    bad.write_bytes(b"")
    capsys.readouterr()
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "vgcore: warning:" in err and bad.name in err


# ------------------------------------------------------------------------------------------
# d. infrastructure failures are never stored; unguarded scripts work
def test_dead_worker_is_not_stored_as_a_result(tmp_path, monkeypatch):
    out, log = tmp_path / "sw", tmp_path / "calls.log"
    grid = {"i": [0, 1, 2, 3]}
    monkeypatch.setenv("VGCORE_SWEEP_DIE", "2")
    with pytest.raises(SweepError, match=r"not computed.*run the same sweep again") as info:
        vgcore.sweep(dies_on, grid, out=out, max_workers=2)
    assert "BrokenProcessPool" in str(info.value)
    assert not list(out.glob("error-*"))  # a dead worker is not the point's result
    kept = {int(pq.read_table(f).column("i")[0].as_py()) for f in out.glob("point-*.parquet")}
    assert 2 not in kept
    monkeypatch.setenv("VGCORE_SWEEP_DIE", "")
    monkeypatch.setenv("VGCORE_SWEEP_LOG", str(log))
    df = vgcore.sweep(dies_on, grid, out=out, max_workers=2)
    assert _calls(log) == sorted(set(range(4)) - kept)
    assert (df["status"] == "ok").all() and df["square"].tolist() == [0, 1, 4, 9]


def test_cancelled_future_is_not_stored(tmp_path):
    import concurrent.futures as cf

    class Cancelling(cf.ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            fut: cf.Future = cf.Future()
            fut.cancel()
            fut.set_running_or_notify_cancel()  # what a worker does when it meets it
            return fut

    out = tmp_path / "sw"
    with Cancelling(1) as ex, pytest.raises(SweepError, match="CancelledError"):
        vgcore.sweep(square, {"i": [1, 2]}, out=out, executor=ex)
    assert not list(out.glob("*.parquet"))


def test_resume_says_how_many_error_rows_are_skipped(tmp_path, monkeypatch):
    out, log = tmp_path / "sw", tmp_path / "calls.log"
    grid = {"i": [1, 2, 3]}
    vgcore.sweep(sometimes_fails, grid, out=out, executor="serial")
    monkeypatch.setenv("VGCORE_SWEEP_LOG", str(log))
    with pytest.warns(SweepWarning, match=r"1 point.*failed.*retry_failed=True"):
        df = vgcore.sweep(sometimes_fails, grid, out=out, executor="serial")
    assert _calls(log) == [] and df["status"].tolist() == ["ok", "error", "ok"]


def test_infrastructure_error_rows_of_older_versions_are_recomputed(tmp_path, monkeypatch):
    out, log = tmp_path / "sw", tmp_path / "calls.log"
    grid = {"i": [1, 2, 3]}
    vgcore.sweep(sometimes_fails, grid, out=out, executor="serial")
    (err,) = out.glob("error-*.parquet")
    rows = pq.read_table(err).to_pylist()  # rewrite as an older vgcore stored a dead worker
    for r in rows:
        r["error"] = "BrokenProcessPool: A process in the process pool was terminated abruptly"
        r["elapsed_s"] = float("nan")
    pq.write_table(pa.Table.from_pylist(rows), err)
    monkeypatch.setenv("VGCORE_SWEEP_LOG", str(log))
    monkeypatch.setenv("VGCORE_SWEEP_FAIL", "")
    with pytest.warns(SweepWarning, match="BrokenProcessPool"):
        df = vgcore.sweep(sometimes_fails, grid, out=out, executor="serial")
    assert _calls(log) == [2] and df["square"].tolist() == [1, 4, 9]


def _run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "run_sweep.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_readme_call_works_from_a_script_without_main_guard(tmp_path):
    res = _run_script(
        tmp_path,
        """
        import vgcore
        df = vgcore.sweep("gradient_flow", {"activation": ["tanh", "relu"], "depth": [2, 3],
                          "width": 4}, seeds=[0, 1], out="sweep-out", max_workers=2)
        print("STATUS", sorted(set(df["status"])), len(df))
        """,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("STATUS") == 1  # the script ran once: workers did not re-run it
    assert "STATUS ['ok'] 8" in res.stdout
    assert not list((tmp_path / "sweep-out").glob("error-*"))
    assert len(list((tmp_path / "sweep-out").glob("point-*.parquet"))) == 8


@pytest.mark.parametrize(
    "body",
    [
        """
        import vgcore

        def f(i, seed):
            return {"v": i}

        vgcore.sweep(f, {"i": [1, 2]}, out="sweep-out", max_workers=2)
        """,
        """
        import vgcore, test_sweep_robust

        class Setting:  # a grid value of a class the script defines
            pass

        vgcore.sweep(test_sweep_robust.square, [{"i": 1, "s": Setting()}], out="sweep-out",
                     max_workers=2)
        """,
    ],
    ids=["analysis", "grid-value"],
)
def test_script_definitions_without_main_guard_are_a_clear_error(tmp_path, body):
    res = _run_script(tmp_path, body)
    assert res.returncode == 1
    assert 'if __name__ == "__main__":' in res.stderr and "run_sweep.py" in res.stderr
    assert not list((tmp_path / "sweep-out").glob("*.parquet"))


def test_script_analysis_with_main_guard_runs_in_processes(tmp_path):
    res = _run_script(
        tmp_path,
        """
        import vgcore

        def f(i, seed):
            return {"v": i * 10}

        if __name__ == "__main__":
            df = vgcore.sweep(f, {"i": [1, 2]}, out="sweep-out", max_workers=2)
            print("V", df["v"].tolist())
        """,
    )
    assert res.returncode == 0, res.stderr
    assert "V [10, 20]" in res.stdout


# ------------------------------------------------------------------------------------------
# e. bad arguments name themselves
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"analysis": 5}, TypeError, "analysis"),
        ({"analysis": "gradient_flw"}, ValueError, "unknown analysis"),
        ({"grid": 5}, TypeError, "grid must be"),
        ({"grid": None}, TypeError, "grid must be"),
        ({"grid": "depth"}, TypeError, "grid must be"),
        ({"grid": [1, 2]}, TypeError, r"grid\[0\]"),
        ({"grid": {1: [2]}}, TypeError, "grid keys"),
        ({"seeds": 2.5}, TypeError, "seeds"),
        ({"seeds": True}, TypeError, "seeds"),
        ({"seeds": "3"}, TypeError, "seeds"),
        ({"seeds": [1.5]}, TypeError, "seeds"),
        ({"seeds": None}, TypeError, "seeds"),
        ({"seeds": -1}, ValueError, "seeds"),
        ({"max_workers": 0}, ValueError, "max_workers"),
        ({"max_workers": -2}, ValueError, "max_workers"),
        ({"max_workers": 2.5}, TypeError, "max_workers"),
        ({"max_workers": True}, TypeError, "max_workers"),
        ({"executor": 3.5}, TypeError, "executor"),
        ({"executor": 0}, ValueError, "executor"),
        ({"executor": True}, TypeError, "executor"),
        ({"executor": "threads"}, ValueError, "executor"),
        ({"executor": object()}, TypeError, "executor"),
        ({"out": 5}, TypeError, "out"),
        ({"retry_failed": "no"}, TypeError, "retry_failed"),
        ({"progress": "yes"}, TypeError, "progress"),
    ],
)
def test_bad_arguments_are_named(kwargs, exc, match):
    args = {"analysis": "gradient_flow", "grid": TINY, **kwargs}
    with pytest.raises(exc, match=match):
        vgcore.sweep(args.pop("analysis"), args.pop("grid"), **args)


def test_bad_out_paths(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="out must be a folder"):
        vgcore.sweep("gradient_flow", TINY, out=f, executor="serial")
    with pytest.raises(ValueError, match="out: cannot create"):
        vgcore.sweep("gradient_flow", TINY, out=f / "sub", executor="serial")


def test_bad_executor_is_caught_even_when_nothing_is_left_to_run(tmp_path):
    vgcore.sweep(square, {"i": [1]}, out=tmp_path / "sw", executor="serial")
    with pytest.raises(TypeError, match="executor"):
        vgcore.sweep(square, {"i": [1]}, out=tmp_path / "sw", executor=3.5)


def test_unpicklable_analysis_for_processes_is_named():
    with pytest.raises(TypeError, match=r"analysis .* cannot be sent to worker processes"):
        vgcore.sweep(lambda i, seed: {"v": i}, {"i": [1]}, max_workers=1)
    df = vgcore.sweep(lambda i, seed: {"v": i}, {"i": [1]}, executor="serial")
    assert df["v"].tolist() == [1]


# ------------------------------------------------------------------------------------------
# c. [sweep] tables of the wrong shape: exit 2 naming the key
@pytest.mark.parametrize(
    ("toml", "match"),
    [
        ("sweep = 3\n", r"\[sweep\] must be a table in .*, got integer 3"),
        ("[sweep]\nanalysis = 5\n", r"\[sweep\] analysis .* a string, got int"),
        ("[sweep]\ngrid = [1, 2]\n", r"\[sweep\] grid .* a table .* got array"),
        ("[sweep]\nfixed = 5\n", r"\[sweep\] fixed .* a table .* got int"),
        ("[sweep]\nseeds = 2.5\n", r"\[sweep\] seeds .* got float"),
        ('[sweep]\nseeds = "three"\n', r"\[sweep\] seeds .* got string"),
        ("[sweep]\nseeds = [1, 1.5]\n", r"\[sweep\] seeds .* got"),
        ("[sweep]\nseeds = true\n", r"\[sweep\] seeds .* got boolean"),
        ("[sweep.grid]\ndepth = []\n", r"\[sweep\.grid\] depth .* empty"),
        ("[sweep.fixed]\ndepth = [2, 3]\n", r"\[sweep\.fixed\] depth .* one value"),
        ("[sweep]\ngrids = {depth = [2]}\n", r"\[sweep\] .*unknown key 'grids'"),
    ],
)
def test_cli_rejects_wrongly_typed_sweep_tables(tmp_path, capsys, toml, match):
    cfg = tmp_path / "s.toml"
    cfg.write_text(toml)
    code = cli.main(["sweep", "--config", str(cfg), "--serial", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Error" not in err  # no bare TypeError / AttributeError
    import re

    assert re.search(match, err), err
    assert str(cfg) in err


def test_cli_accepts_a_good_sweep_table(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        "[sweep]\nseeds = [0, 1]\n[sweep.grid]\ndepth = [2, 3]\n"
        '[sweep.fixed]\nwidth = 4\nactivation = "relu"\n'
    )
    out = tmp_path / "o"
    assert cli.main(["sweep", "--config", str(cfg), "--serial", "--out", str(out), "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["points"] == 4 and doc["errors"] == 0
    assert np.unique([r["width"] for r in doc["rows"]]).tolist() == [4]

"""vgcore.sweep: grids x seeds, executors (serial, local processes, Dask), Parquet streaming,
resume after a kill, failures recorded without stopping the sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import vgcore
from vgcore.sweep import ANALYSES, SweepWarning, grid_points, load_sweep

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

GRID = {"model": "mlp", "depth": [3, 6], "width": 16, "activation": ["tanh", "relu"], "batch": 8}


# Module-level analyses, importable by worker processes and the killed subprocess.
def square(i: int, seed: int) -> dict:
    log = os.environ.get("VGCORE_SWEEP_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{i} {seed}\n")
    delay = float(os.environ.get("VGCORE_SWEEP_DELAY", "0"))
    if delay:
        time.sleep(delay)
    return {"square": i * i, "seed_plus": i + seed}


def sometimes_fails(i: int, seed: int) -> dict:
    if str(i) in os.environ.get("VGCORE_SWEEP_FAIL", "2").split(","):
        raise RuntimeError(f"point {i} is broken")
    return square(i, seed)


def two_rows(i: int, seed: int) -> list:
    return [{"k": 0, "v": i}, {"k": 1, "v": -i}]


def _drop_time(df):
    return df.drop(columns="elapsed_s")


# ------------------------------------------------------------------------------------------
def test_grid_points():
    pts = grid_points({"a": [1, 2], "b": "x", "c": [True, False]})
    assert pts == [
        {"a": 1, "b": "x", "c": True},
        {"a": 1, "b": "x", "c": False},
        {"a": 2, "b": "x", "c": True},
        {"a": 2, "b": "x", "c": False},
    ]
    assert grid_points([{"a": 1}, {"a": 5, "b": 2}]) == [{"a": 1}, {"a": 5, "b": 2}]
    with pytest.raises(ValueError, match="empty"):
        grid_points({"a": []})


def test_serial_sweep_is_tidy_and_correct():
    df = vgcore.sweep("gradient_flow", GRID, seeds=[0, 3], executor="serial")
    assert len(df) == 2 * 2 * 2
    assert list(df.columns[:6]) == ["model", "depth", "width", "activation", "batch", "seed"]
    assert list(df.columns[-4:]) == ["status", "error", "elapsed_s", "point_id"]
    assert (df["status"] == "ok").all() and df["error"].isna().all()
    assert df["point_id"].is_unique
    # grid order, seeds innermost
    assert df[["depth", "activation", "seed"]].values.tolist() == [
        [3, "tanh", 0],
        [3, "tanh", 3],
        [3, "relu", 0],
        [3, "relu", 3],
        [6, "tanh", 0],
        [6, "tanh", 3],
        [6, "relu", 0],
        [6, "relu", 3],
    ]
    # each row is the analysis of the model its settings describe
    row = df.iloc[5]
    model = vgcore.MLP.from_sizes([16] * 7, "tanh", seed=3)
    x = np.random.default_rng(4).standard_normal((8, 16))
    flow = vgcore.gradient_flow(model, x)
    assert row["log10_gain"] == pytest.approx(flow.log10_grad_norms[0] - flow.log10_grad_norms[-1])
    assert row["length"] == 6


def test_builtin_analyses_validate_settings_up_front():
    with pytest.raises(ValueError, match="unknown model setting"):
        vgcore.sweep("gradient_flow", {"depht": [1, 2]}, executor="serial")
    with pytest.raises(ValueError, match="unknown analysis"):
        vgcore.sweep("nope", GRID, executor="serial")
    with pytest.raises(ValueError, match="seed"):
        vgcore.sweep(square, {"i": [1], "seed": [1]}, executor="serial")
    with pytest.raises(ValueError, match="seeds"):
        vgcore.sweep(square, {"i": [1]}, seeds=0, executor="serial")
    with pytest.raises(TypeError, match="executor"):
        vgcore.sweep(square, {"i": [1]}, executor=3.5)
    assert set(ANALYSES) >= {"gradient_flow", "profile", "diagnose"}


def test_profile_and_diagnose_analyses():
    prof = vgcore.sweep(
        "profile", {"model": "rnn", "hidden_size": 8, "steps": 5, "batch": 2}, executor="serial"
    )
    assert prof["index"].tolist() == list(range(6))
    assert prof["log10_relative"].iloc[-1] == 0.0
    diag = vgcore.sweep(
        "diagnose",
        {"model": "mlp", "depth": 12, "width": 16, "activation": "sigmoid"},
        executor="serial",
    )
    assert diag.loc[0, "verdict"] == "vanishing" and isinstance(diag.loc[0, "best_fix"], str)


def test_mean_field_analysis():
    df = vgcore.sweep(
        "mean_field",
        {"activation": "relu", "sigma_w2": [1.0, 2.0, 3.0], "sigma_b2": 0.0},
        executor="serial",
    )
    assert df["chi_1"].tolist() == pytest.approx([0.5, 1.0, 1.5])
    assert df["phase"].tolist() == ["ordered", "critical", "chaotic"]
    with pytest.raises(ValueError, match="needs sigma_w2"):
        vgcore.sweep("mean_field", {"activation": ["tanh"]}, executor="serial")


def test_failures_are_recorded_and_do_not_stop_the_sweep(tmp_path, monkeypatch):
    log = tmp_path / "calls.log"
    monkeypatch.setenv("VGCORE_SWEEP_LOG", str(log))
    out = tmp_path / "sw"
    df = vgcore.sweep(sometimes_fails, {"i": [1, 2, 3]}, out=out, executor="serial")
    assert df["status"].tolist() == ["ok", "error", "ok"]
    assert df.loc[1, "error"] == "RuntimeError: point 2 is broken"
    assert np.isnan(df.loc[1, "square"]) and df.loc[2, "square"] == 9
    assert len(list(out.glob("error-*.parquet"))) == 1
    # resuming does not run anything again, failures included (and says so)
    log.write_text("")
    with pytest.warns(SweepWarning, match="1 point"):
        again = vgcore.sweep(sometimes_fails, {"i": [1, 2, 3]}, out=out, executor="serial")
    assert log.read_text() == ""
    pd.testing.assert_frame_equal(again, df)


def test_retry_failed(tmp_path, monkeypatch):
    out = tmp_path / "sw"
    vgcore.sweep(sometimes_fails, {"i": [1, 2]}, out=out, executor="serial")
    df = vgcore.sweep(sometimes_fails, {"i": [1, 2]}, out=out, executor="serial", retry_failed=True)
    assert df["status"].tolist() == ["ok", "error"]
    monkeypatch.setenv("VGCORE_SWEEP_FAIL", "")  # the cause is fixed: the retry succeeds
    df = vgcore.sweep(sometimes_fails, {"i": [1, 2]}, out=out, executor="serial", retry_failed=True)
    assert df["status"].tolist() == ["ok", "ok"] and df["square"].tolist() == [1, 4]
    assert not list(out.glob("error-*")) and len(list(out.glob("point-*.parquet"))) == 2


def test_multi_row_results_and_load(tmp_path):
    df = vgcore.sweep(two_rows, {"i": [1, 2]}, seeds=2, out=tmp_path)
    assert len(df) == 8 and df["v"].tolist() == [1, -1, 1, -1, 2, -2, 2, -2]
    loaded = load_sweep(tmp_path)
    assert len(loaded) == 8 and set(loaded["point_id"]) == set(df["point_id"])
    with pytest.raises(ValueError, match="holds a sweep of analysis"):
        vgcore.sweep(square, {"i": [1]}, out=tmp_path, executor="serial")
    with pytest.raises(FileNotFoundError, match="not a vgcore sweep"):
        load_sweep(tmp_path / "missing")


def test_local_processes_equal_serial(tmp_path):
    serial = vgcore.sweep("gradient_flow", GRID, seeds=2, executor="serial")
    par = vgcore.sweep("gradient_flow", GRID, seeds=2, max_workers=2, out=tmp_path / "p")
    pd.testing.assert_frame_equal(_drop_time(par), _drop_time(serial))


def test_dask_local_cluster_equals_serial(tmp_path):
    distributed = pytest.importorskip("distributed")
    serial = vgcore.sweep("gradient_flow", GRID, seeds=2, executor="serial")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        dask = vgcore.sweep("gradient_flow", GRID, seeds=2, executor=client, out=tmp_path / "d")
        failing = vgcore.sweep(sometimes_fails, {"i": [1, 2]}, executor=client)
    pd.testing.assert_frame_equal(_drop_time(dask), _drop_time(serial))
    assert failing["status"].tolist() == ["ok", "error"]


def test_killed_sweep_resumes_without_recomputing_or_duplicating(tmp_path):
    out = tmp_path / "sw"
    n = 30
    env = dict(os.environ, VGCORE_SWEEP_DELAY="0.1", VGCORE_SWEEP_LOG=str(tmp_path / "first.log"))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    script = textwrap.dedent(f"""
        import vgcore, test_sweep
        vgcore.sweep(test_sweep.square, {{"i": list(range({n}))}}, executor="serial", out={str(out)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob("point-*.parquet"))) < 5:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (out / ".tmp-deadbeef-1234").write_bytes(b"half a file")  # as if killed mid-write
    done_before = {
        int(r["i"])
        for f in out.glob("point-*.parquet")
        for r in pd.read_parquet(f).to_dict("records")
    }
    assert 5 <= len(done_before) < n

    log = tmp_path / "second.log"
    os.environ["VGCORE_SWEEP_LOG"] = str(log)
    try:
        df = vgcore.sweep(square, {"i": list(range(n))}, executor="serial", out=out)
    finally:
        del os.environ["VGCORE_SWEEP_LOG"]
    rerun = {int(line.split()[0]) for line in log.read_text().split("\n") if line}
    assert rerun.isdisjoint(done_before)  # no finished point computed again
    assert rerun | done_before == set(range(n))
    assert df["i"].tolist() == list(range(n))  # complete, in order, no duplicates
    assert df["point_id"].is_unique and (df["status"] == "ok").all()
    assert df["square"].tolist() == [i * i for i in range(n)]
    assert not list(out.glob(".tmp-*"))
    assert len(list(out.glob("point-*.parquet"))) == n

"""Sweeps: a cartesian grid of model settings x seeds, each point independent, scaled out on
local processes or a Dask cluster, streamed to a Parquet dataset and resumable.

>>> import vgcore
>>> df = vgcore.sweep("gradient_flow",                                  # doctest: +SKIP
...                   {"model": "mlp", "depth": [10, 20, 40], "activation": ["tanh", "relu"]},
...                   seeds=3, out="depth-sweep")
>>> df.groupby(["activation", "depth"]).spread.mean()                   # doctest: +SKIP

Storage: ``out`` is a folder holding one Parquet file per finished point
(``point-<id>.parquet``; failed points ``error-<id>.parquet``), each written to a temporary name
and renamed into place, so a killed sweep leaves only whole files behind. Running the same sweep
again skips every point already on disk (failed ones too, unless ``retry_failed``) and never
duplicates one; a larger grid over the same folder extends it. ``<id>`` is a hash of the
analysis, the point's settings and the seed.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import json
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ANALYSES", "grid_points", "load_sweep", "sweep"]

_META = "_sweep.json"
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


# ------------------------------------------------------------------------------------------
# built-in analyses: (settings, seed) -> rows; settings are model-spec keys (vgcore._modelspec)
def _spec(params: Mapping[str, Any], seed: int) -> Any:
    from vgcore._modelspec import ModelSpec

    return ModelSpec({**params, "seed": seed})


def _an_gradient_flow(params: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
    from vgcore._modelspec import build
    from vgcore.analysis.gradient_flow import gradient_flow
    from vgcore.diagnose import summarize_flow

    model, x = build(_spec(params, seed))
    flow = gradient_flow(model, x, num_threads=1)
    return [summarize_flow(flow)]


def _an_profile(params: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
    from vgcore._modelspec import build
    from vgcore.analysis.gradient_flow import gradient_flow

    model, x = build(_spec(params, seed))
    flow = gradient_flow(model, x, num_threads=1)
    lg = flow.log_grad_norms / math.log(10.0)
    return [
        {
            "index": i,
            "log10_grad_norm": float(lg[i]),
            "log10_relative": float(lg[i] - lg[-1]),
            "saturation": float(flow.saturation[i - 1]) if i else math.nan,
        }
        for i in range(lg.size)
    ]


def _an_diagnose(params: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
    from vgcore._modelspec import build
    from vgcore.diagnose import diagnose
    from vgcore.report._tables import summary_row

    model, x = build(_spec(params, seed))
    d = diagnose(model, x, seed=seed, num_threads=1)
    row = summary_row(d)
    for k in ("model", "kind", "axis"):
        row.pop(k)
    row["causes"] = "; ".join(d.causes)
    return [row]


def _an_mean_field(params: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
    """Mean-field theory at (activation, sigma_w2, sigma_b2); the seed is not used."""
    from vgcore._optional import require

    mf = require("mean_field")(
        params.get("activation", "tanh"), params["sigma_w2"], params.get("sigma_b2") or 0.0
    )
    keys = ("q_star", "chi_1", "chi_q", "c_star", "chi_c", "xi_q", "xi_c")
    return [{**{k: float(getattr(mf, k)) for k in keys}, "phase": str(mf.phase)}]


#: Built-in analyses by name. Each takes model settings (the keys of
#: ``vgcore._modelspec.SPEC_KEYS``: model, depth, width, activation, init, sigma_w2, ...) and a
#: seed, and returns one or more rows of metrics.
ANALYSES: dict[str, Callable[[Mapping[str, Any], int], list[dict[str, Any]]]] = {
    "gradient_flow": _an_gradient_flow,
    "profile": _an_profile,
    "diagnose": _an_diagnose,
    "mean_field": _an_mean_field,
}
#: Optional parts of vgcore a built-in analysis needs (see vgcore._optional).
_NEEDS = {"mean_field": "mean_field"}


# ------------------------------------------------------------------------------------------
# grid and tasks
def grid_points(grid: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The points of a grid, in order.

    Parameters
    ----------
    grid : mapping or sequence of mappings
        A mapping of setting -> list of values gives the cartesian product (the last key varies
        fastest; a scalar or string value is held fixed). A sequence of mappings lists the
        points explicitly.
    """
    if isinstance(grid, Mapping):
        keys = list(grid)
        values = []
        for k in keys:
            v = grid[k]
            if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, Iterable):
                v = [v]
            v = list(v)
            if not v:
                raise ValueError(f"grid[{k!r}] is empty")
            values.append(v)
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    points = [dict(p) for p in grid]
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise TypeError(f"grid[{i}] must be a mapping of settings, got {type(p).__name__}")
    return points


def _seeds(seeds: int | Iterable[int]) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1 (a count) or a list of seeds, got {seeds}")
        return list(range(int(seeds)))
    out = []
    for s in seeds:  # type: ignore[union-attr]
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"seeds must be non-negative integers, got {s!r}")
        out.append(int(s))
    if not out or len(set(out)) != len(out):
        raise ValueError(f"seeds must be a non-empty list without repeats, got {out}")
    return out


def _plain(v: Any) -> Any:
    """A value Parquet and JSON can hold: scalars as themselves, the rest as JSON text."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, np.ndarray):
        v = v.tolist()
    return json.dumps(v, sort_keys=True, default=str)


@dataclass(frozen=True)
class _Task:
    index: int
    params: dict[str, Any]
    seed: int
    key: str


def _analysis_name(analysis: str | Callable[..., Any]) -> str:
    if isinstance(analysis, str):
        return analysis
    return f"{getattr(analysis, '__module__', '?')}.{getattr(analysis, '__qualname__', repr(analysis))}"


def _key(name: str, params: Mapping[str, Any], seed: int) -> str:
    blob = json.dumps(
        {"a": name, "p": {k: _plain(v) for k, v in params.items()}, "s": seed},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# ------------------------------------------------------------------------------------------
# running one point (in a worker)
def _as_rows(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return [{}]
    if isinstance(value, Mapping):
        return [dict(value)]
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a DataFrame
        return [dict(r) for r in value.to_dict("records")]
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return [{"value": value}]
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        rows = list(value)
        if all(isinstance(r, Mapping) for r in rows):
            return [dict(r) for r in rows] or [{}]
    raise TypeError(
        "an analysis must return a mapping of metrics, a list of mappings, a DataFrame or a "
        f"number, got {type(value).__name__}"
    )


def _pin_threads() -> None:
    """One BLAS / vgcore thread per worker process, so workers do not oversubscribe cores."""
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    with suppress(Exception):
        import vgcore

        vgcore.set_num_threads(1)
    with suppress(Exception):
        from threadpoolctl import threadpool_limits  # type: ignore[import-not-found]

        threadpool_limits(1)


def _run_point(
    analysis: str | Callable[..., Any], params: dict[str, Any], seed: int
) -> dict[str, Any]:
    """Run one point; never raises (a failure is returned as an error result)."""
    t0 = time.perf_counter()
    try:
        if isinstance(analysis, str):
            rows = ANALYSES[analysis](params, seed)
        else:
            rows = _as_rows(analysis(**params, seed=seed))
        status, error = "ok", None
    except Exception as exc:
        rows, status, error = [{}], "error", f"{type(exc).__name__}: {exc}"
    return {"rows": rows, "status": status, "error": error, "elapsed_s": time.perf_counter() - t0}


def _rows_of(task: _Task, result: Mapping[str, Any]) -> list[dict[str, Any]]:
    base = {k: _plain(v) for k, v in task.params.items()}
    base["seed"] = task.seed
    out = []
    for r in result["rows"]:
        row = dict(base)
        for k, v in r.items():
            row[k if k not in base else f"result_{k}"] = _plain(v)
        row["status"] = result["status"]
        row["error"] = result["error"]
        row["elapsed_s"] = float(result["elapsed_s"])
        row["point_id"] = task.key
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------
# storage
class _Store:
    """One Parquet file per finished point, written atomically."""

    def __init__(self, root: Path, name: str) -> None:
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "writing a sweep to disk needs pyarrow: pip install 'vgcore[dask]' (or pyarrow)"
            ) from exc
        self.root = root
        if root.exists() and not root.is_dir():
            raise ValueError(f"out must be a folder (a Parquet dataset), but {root} is a file")
        root.mkdir(parents=True, exist_ok=True)
        for tmp in root.glob(".tmp-*"):  # left by a sweep killed mid-write
            with suppress(OSError):
                tmp.unlink()
        meta = root / _META
        if meta.exists():
            old = json.loads(meta.read_text()).get("analysis")
            if old != name:
                raise ValueError(
                    f"{root} holds a sweep of analysis {old!r}, not {name!r}; use another folder"
                )
        else:
            import vgcore

            meta.write_text(json.dumps({"analysis": name, "vgcore": vgcore.__version__}) + "\n")

    def _path(self, key: str, ok: bool) -> Path:
        return self.root / f"{'point' if ok else 'error'}-{key}.parquet"

    def status(self) -> dict[str, str]:
        """point id -> "ok" / "error" for every point on disk."""
        out: dict[str, str] = {}
        for p in self.root.glob("error-*.parquet"):
            out[p.stem[len("error-") :]] = "error"
        for p in self.root.glob("point-*.parquet"):
            out[p.stem[len("point-") :]] = "ok"
        return out

    def write(self, key: str, rows: list[dict[str, Any]], ok: bool) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = self.root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, self._path(key, ok))
        if ok:
            with suppress(FileNotFoundError):
                self._path(key, False).unlink()

    def read(self, key: str) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        path = self._path(key, True)
        if not path.exists():
            path = self._path(key, False)
        return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]


def load_sweep(out: str | Path) -> Any:
    """Every point stored in a sweep folder, as a DataFrame (ordered by point id)."""
    import pandas as pd
    import pyarrow.parquet as pq

    root = Path(out)
    if not (root / _META).exists():
        raise FileNotFoundError(f"{root} is not a vgcore sweep folder (no {_META})")
    files = sorted(root.glob("point-*.parquet")) + sorted(root.glob("error-*.parquet"))
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------
# executors
@contextmanager
def _single_thread_env() -> Iterator[None]:
    """Children started inside inherit one-thread BLAS settings (restored afterwards)."""
    old = {v: os.environ.get(v) for v in _THREAD_VARS}
    os.environ.update({v: "1" for v in _THREAD_VARS})
    try:
        yield
    finally:
        for v, val in old.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val


def _is_dask(executor: Any) -> bool:
    return type(executor).__module__.split(".")[0] == "distributed" and hasattr(executor, "submit")


class _Runner:
    """Submit / wait / result over the supported executors."""

    def __init__(self, executor: Any, max_workers: int | None) -> None:
        self.owned = None
        self.kind = "futures"
        if executor is None or isinstance(executor, int):
            import multiprocessing as mp

            n = executor if isinstance(executor, int) else max_workers
            if n is None:
                from vgcore._runtime import get_num_threads

                n = get_num_threads()
            if n < 1:
                raise ValueError(f"the number of workers must be >= 1, got {n}")
            self.workers = int(n)
            self.pool = cf.ProcessPoolExecutor(
                self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=_pin_threads,
            )
            self.owned = self.pool
        elif isinstance(executor, str) and executor == "serial":
            self.kind, self.workers, self.pool = "serial", 1, None
        elif isinstance(executor, str) and "://" in executor:
            try:
                from distributed import Client
            except ImportError as exc:
                raise ImportError(
                    "a Dask scheduler needs dask.distributed: pip install 'vgcore[dask]'"
                ) from exc
            self.pool = Client(executor)
            self.owned = self.pool
            self.kind = "dask"
        elif _is_dask(executor):
            self.pool, self.kind = executor, "dask"
        elif isinstance(executor, cf.Executor):
            self.pool = executor
            self.workers = max_workers or getattr(executor, "_max_workers", 2)
        else:
            raise TypeError(
                "executor must be None (local processes), 'serial', a worker count, a "
                "concurrent.futures.Executor, a dask.distributed.Client or a scheduler address "
                f"('tcp://host:port'); got {executor!r}"
            )
        if self.kind == "dask":
            threads = sum(self.pool.nthreads().values()) if hasattr(self.pool, "nthreads") else 2
            self.workers = max(1, int(threads))

    @property
    def window(self) -> int:
        return 2 * self.workers

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.kind == "dask":
            return self.pool.submit(fn, *args, pure=False)
        return self.pool.submit(fn, *args)

    def wait_first(self, futures: Iterable[Any]) -> set[Any]:
        if self.kind == "dask":
            from distributed import wait

            return set(wait(list(futures), return_when="FIRST_COMPLETED").done)
        done, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
        return done

    def result(self, fut: Any) -> dict[str, Any]:
        try:
            return fut.result()  # type: ignore[no-any-return]
        except Exception as exc:
            return {
                "rows": [{}],
                "status": "error",
                "error": f"{type(exc).__name__}: {exc}",
                "elapsed_s": math.nan,
            }

    def cancel(self, futures: Iterable[Any]) -> None:
        futs = list(futures)
        if self.kind == "dask":
            with suppress(Exception):
                self.pool.cancel(futs)
        else:
            for f in futs:
                f.cancel()

    def close(self) -> None:
        if self.owned is None:
            return
        if self.kind == "dask":
            self.owned.close()
        else:
            self.owned.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------
def sweep(
    analysis: str | Callable[..., Any],
    grid: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    seeds: int | Iterable[int] = 1,
    executor: Any = None,
    out: str | Path | None = None,
    max_workers: int | None = None,
    retry_failed: bool = False,
    progress: bool | Callable[[int, int], Any] = False,
) -> Any:
    """Run an analysis over a grid of settings x seeds; every point is independent.

    Parameters
    ----------
    analysis : str or callable
        A built-in analysis (:data:`ANALYSES`: ``"gradient_flow"``, ``"profile"``,
        ``"diagnose"``, ``"mean_field"`` (theory at ``activation``, ``sigma_w2``,
        ``sigma_b2``)), whose settings are model settings (``model``, ``depth``, ``width``,
        ``activation``, ``init``, ``sigma_w2``, ``hidden_size``, ``steps``, ... ; see
        ``vgcore._modelspec``), or a function ``f(**settings, seed=seed)`` returning a mapping of
        metrics, a list of them (several rows), a DataFrame or a number. For process or Dask
        executors it must be importable (defined at module level).
    grid : mapping of setting -> values, or sequence of mappings
        The cartesian product of the values (see :func:`grid_points`) or explicit points.
    seeds : int or iterable of int
        A count (seeds 0..n-1) or the seeds themselves; every point runs once per seed.
    executor : None, "serial", int, concurrent.futures.Executor, dask Client or address
        ``None``: local processes (``max_workers``, default the usable CPUs), each pinned to
        one BLAS thread; an int: that many local processes; ``"serial"``: in this process;
        a ``dask.distributed.Client`` (or a scheduler address such as ``"tcp://host:8786"``)
        runs the same points on a Dask cluster.
    out : path, optional
        A folder to stream results to (a Parquet dataset, one file per point). Points already
        there are not run again: an interrupted sweep resumes where it stopped.
    max_workers : int, optional
        Local process count (and the in-flight window for other executors).
    retry_failed : bool
        Run again the points that failed in an earlier run into ``out``.
    progress : bool or callable(done, total)
        A progress bar on stderr (``True``) or a callback.

    Returns
    -------
    pandas.DataFrame
        Tidy: one row per point and seed (or per row an analysis returns), in grid order, with
        the settings, ``seed``, the metrics, ``status`` ("ok" / "error"), ``error``,
        ``elapsed_s`` and ``point_id``.
    """
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover
        raise ImportError("sweep needs pandas: pip install 'vgcore[dask]'") from exc
    if isinstance(analysis, str):
        if analysis not in ANALYSES:
            raise ValueError(f"unknown analysis {analysis!r}; built-in: {', '.join(ANALYSES)}")
        if analysis in _NEEDS:
            from vgcore._optional import require

            require(_NEEDS[analysis])  # ImportError, saying what is missing
    elif not callable(analysis):
        raise TypeError(f"analysis must be a name or a callable, got {analysis!r}")
    points = grid_points(grid)
    if not points:
        raise ValueError("the grid has no points")
    seed_list = _seeds(seeds)
    for p in points:
        if "seed" in p:
            raise ValueError("'seed' cannot be a grid setting; pass seeds= instead")
    if isinstance(analysis, str):  # validate settings up front: bad ones are argument errors
        for p in points:
            _spec(p, seed_list[0])
            if analysis == "mean_field" and p.get("sigma_w2") is None:
                raise ValueError("the mean_field analysis needs sigma_w2 in every grid point")
    name = _analysis_name(analysis)
    tasks = [
        _Task(i * len(seed_list) + j, p, s, _key(name, p, s))
        for i, p in enumerate(points)
        for j, s in enumerate(seed_list)
    ]
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("the grid lists the same point twice")
    store = None if out is None else _Store(Path(out), name)
    on_disk = store.status() if store is not None else {}
    skip = {k for k, st in on_disk.items() if st == "ok" or not retry_failed}
    todo = [t for t in tasks if t.key not in skip]
    results: dict[str, list[dict[str, Any]]] = {}

    callback = progress if callable(progress) else None
    from vgcore._progress import progress_bar

    with progress_bar(
        len(tasks), f"sweep {name}", enabled=None if progress is True else False
    ) as bar:
        done = len(tasks) - len(todo)
        bar.update(done, len(tasks))

        def finish(task: _Task, result: Mapping[str, Any]) -> None:
            nonlocal done
            rows = _rows_of(task, result)
            if store is not None:
                store.write(task.key, rows, result["status"] == "ok")
            results[task.key] = rows
            done += 1
            bar.update(done, len(tasks))
            if callback is not None:
                callback(done, len(tasks))

        if todo:
            _execute(todo, analysis, executor, max_workers, finish)

    rows: list[dict[str, Any]] = []
    for t in tasks:
        rows += results[t.key] if t.key in results else store.read(t.key)  # type: ignore[union-attr]
    return _frame(pd, rows, points)


def _execute(
    todo: list[_Task],
    analysis: Any,
    executor: Any,
    max_workers: int | None,
    finish: Callable[[_Task, Mapping[str, Any]], None],
) -> None:
    if executor == "serial":
        for t in todo:
            finish(t, _run_point(analysis, t.params, t.seed))
        return
    local = executor is None or isinstance(executor, int)
    with _single_thread_env() if local else nullcontext():
        runner = _Runner(executor, max_workers)
        queue = deque(todo)
        inflight: dict[Any, _Task] = {}
        try:
            while queue or inflight:
                while queue and len(inflight) < runner.window:
                    t = queue.popleft()
                    inflight[runner.submit(_run_point, analysis, t.params, t.seed)] = t
                for fut in runner.wait_first(inflight):
                    finish(inflight.pop(fut), runner.result(fut))
        except BaseException:
            runner.cancel(inflight)
            raise
        finally:
            runner.close()


def _frame(pd: Any, rows: list[dict[str, Any]], points: list[dict[str, Any]]) -> Any:
    params = list(dict.fromkeys(k for p in points for k in p))
    tail = ["status", "error", "elapsed_s", "point_id"]
    metrics = list(
        dict.fromkeys(
            k for r in rows for k in r if k not in params and k not in tail and k != "seed"
        )
    )
    cols = [*params, "seed", *metrics, *tail]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)

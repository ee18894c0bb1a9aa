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
again skips every point already on disk (failed ones too, unless ``retry_failed``, with a
:class:`SweepWarning` saying how many) and never duplicates one; a larger grid over the same
folder extends it. ``<id>`` is a hash of the analysis, the point's settings and the seed; each
file also records that identity (analysis, settings, seed, id) in its Parquet metadata. On
resume a file that cannot be read (truncated, empty) or that holds another point (copied over)
is set aside as ``<name>.corrupt`` and its point computed again, with a :class:`SweepWarning`
naming it. ``_sweep.json`` records the folder's analysis; when it is garbled it is rewritten if
the point files all say they belong to this analysis, and is otherwise an error naming it.

Only a point's own outcome is stored. The analysis raising is the point's result (an error
row). The machinery failing (a worker process that died, a broken pool, a cancelled future, a
lost Dask worker) is not: nothing is written for those points, the points in flight are still
collected, and :class:`SweepError` says how many are missing; running the same sweep again
computes exactly them.

Local processes use the ``spawn`` start method in every Python version. Workers receive only
the function that runs a point (``vgcore.sweep._run_point``), so for a built-in analysis or a
function from an importable module they do not import the caller's ``__main__`` at all: the
README's one-line call works from a plain script without an ``if __name__ == "__main__":``
guard (plain ``spawn`` and ``forkserver`` would run that script again in every worker or in the
fork server, whose own sweep call then breaks the pool). ``fork`` would avoid that too, but
forking a process that already runs BLAS, OpenMP or PyTorch threads can deadlock the child
(Python 3.12 warns about it), so it is not used. An analysis defined in the ``__main__`` script
itself needs that script in the workers: the call must then sit under the guard, which is
checked up front. Workers die with the sweep: each asks Linux to send it SIGTERM when its parent
dies (``prctl(PR_SET_PDEATHSIG)``) and, everywhere, a watchdog thread ends it once its parent
process is gone, so a killed driver leaves neither workers nor the resource tracker behind.
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import functools
import hashlib
import itertools
import json
import math
import multiprocessing as mp
import multiprocessing.context
import os
import pickle
import signal
import sys
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ANALYSES", "SweepError", "SweepWarning", "grid_points", "load_sweep", "sweep"]

_META = "_sweep.json"
_IDENTITY = b"vgcore.sweep"  # Parquet metadata key: the identity of the point a file holds
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


class SweepError(RuntimeError):
    """The sweep machinery failed (a worker died, the pool broke, a future was cancelled):
    the points it names were not computed and nothing was stored for them."""


class SweepWarning(UserWarning):
    """Something about stored results the caller should know: a damaged file set aside and
    recomputed, error rows of an earlier run skipped."""


# ------------------------------------------------------------------------------------------
# built-in analyses: (settings, seed) -> rows; settings are model-spec keys (vgcore._modelspec)
def _spec(params: Mapping[str, Any], seed: int) -> Any:
    from vgcore._modelspec import ModelSpec

    return ModelSpec({**params, "seed": seed})


#: Settings of a torch-module point that are not passed to its factory.
_TORCH_KEYS = ("module", "input_shape")


def _shape_of(value: Any) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints (``"8,64"`` or a sequence)."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        shape = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise ValueError(f"input_shape must be positive integers, e.g. '8,64', got {value!r}")
    return shape


def _check_torch_point(params: Mapping[str, Any]) -> None:
    spec = params.get("module")
    if not (isinstance(spec, str) and ":" in spec):
        raise ValueError(
            f"module must be 'PKG.MOD:FACTORY' (a string, so points hash and resume), got {spec!r}"
        )
    if "input_shape" not in params:
        raise ValueError("a torch-module point needs input_shape, e.g. '8,64'")
    _shape_of(params["input_shape"])


def _torch_point(params: Mapping[str, Any], seed: int) -> tuple[Any, Any]:
    """A torch-module point: ``module`` ("PKG.MOD:FACTORY") called with the other settings as
    keyword arguments after ``torch.manual_seed(seed)`` (an attribute that is a module is
    taken as is when there are none), and standard normal inputs of ``input_shape`` drawn in
    float64 from a CPU generator seeded ``seed + 1``, in the module's dtype and device."""
    import importlib

    import torch

    from vgcore.torchmodel._hygiene import HALF_DTYPES, module_dtype

    _check_torch_point(params)
    modname, _, attr = params["module"].partition(":")
    obj: Any = importlib.import_module(modname)
    for part in attr.split("."):
        obj = getattr(obj, part)
    kw = {k: v for k, v in params.items() if k not in _TORCH_KEYS}
    torch.manual_seed(seed)
    module = obj if isinstance(obj, torch.nn.Module) and not kw else obj(**kw)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(
            f"module {params['module']!r} gave a {type(module).__name__}, not a torch.nn.Module"
        )
    dt, dev = module_dtype(module)
    dt = torch.float32 if dt in HALF_DTYPES else dt
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(_shape_of(params["input_shape"]), generator=gen, dtype=torch.float64)
    return module, x.to(dtype=dt, device=dev)


def _point(params: Mapping[str, Any], seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """The model, its inputs and the gradient-flow options of one point."""
    if "module" in params:
        module, x = _torch_point(params, seed)
        return module, x, {}
    from vgcore._modelspec import build

    model, x = build(_spec(params, seed))
    return model, x, {"num_threads": 1}


def _an_gradient_flow(params: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
    from vgcore.analysis.gradient_flow import gradient_flow
    from vgcore.diagnose import summarize_flow

    model, x, kw = _point(params, seed)
    flow = gradient_flow(model, x, **kw)
    return [summarize_flow(flow)]


def _an_profile(params: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
    from vgcore.analysis.gradient_flow import gradient_flow

    model, x, kw = _point(params, seed)
    flow = gradient_flow(model, x, **kw)
    lg = flow.log_grad_norms / math.log(10.0)
    return [
        {
            "index": i,
            "log10_grad_norm": float(lg[i]),
            "log10_relative": float(lg[i] - lg[-1]),
            "saturated": float(flow.saturated[i - 1]) if i else math.nan,
            "inactive": float(flow.inactive[i - 1]) if i else math.nan,
        }
        for i in range(lg.size)
    ]


def _an_diagnose(params: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
    from vgcore.diagnose import diagnose
    from vgcore.report._tables import summary_row

    model, x, kw = _point(params, seed)
    d = diagnose(model, x, seed=seed, **kw)
    row = summary_row(d)
    for k in ("model", "kind", "axis"):
        row.pop(k)
    row["causes"] = "; ".join(d.causes)
    return [row]


def _an_mean_field(params: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
    """Mean-field theory at (activation, sigma_w2, sigma_b2); the seed is not used."""
    from vgcore.theory import mean_field

    mf = mean_field(
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
        _check_setting_names(keys, "grid keys")
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
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Iterable):
        raise TypeError(
            "grid must be a mapping of setting -> values or a list of mappings (one per point), "
            f"got {type(grid).__name__}"
        )
    points = []
    for i, p in enumerate(grid):
        if not isinstance(p, Mapping):
            raise TypeError(f"grid[{i}] must be a mapping of settings, got {type(p).__name__}")
        _check_setting_names(list(p), f"grid[{i}] keys")
        points.append(dict(p))
    return points


def _check_setting_names(keys: list[Any], what: str) -> None:
    for k in keys:
        if not isinstance(k, str):
            raise TypeError(f"{what} must be setting names (strings), got {k!r}")


def _seeds(seeds: int | Iterable[int]) -> list[int]:
    def bad(what: Any) -> TypeError:
        return TypeError(
            f"seeds must be a count (an int >= 1) or a list of non-negative int seeds, got {what}"
        )

    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, (bool, np.bool_)):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1 (a count) or a list of seeds, got {seeds}")
        return list(range(int(seeds)))
    if isinstance(seeds, (str, bytes, Mapping)) or not isinstance(seeds, Iterable):
        raise bad(f"{type(seeds).__name__} {seeds!r}")
    out = []
    for s in seeds:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
            raise bad(f"the element {s!r} ({type(s).__name__})")
        if s < 0:
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


def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(1)


def _die_with_parent(parent_pid: int) -> None:
    """End this worker when the process that started it dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        with suppress(Exception):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # died before the line above took effect
        os._exit(1)
    # everywhere (and should the signal be caught): poll for the parent
    threading.Thread(
        target=_watch_parent, args=(parent_pid,), daemon=True, name="vgcore-parent-watch"
    ).start()


def _worker_init(parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    _pin_threads()


def _run_point(
    analysis: str | Callable[..., Any], params: dict[str, Any], seed: int
) -> dict[str, Any]:
    """Run one point; never raises (a failure is returned as an error result). The rows are
    plain values, so the result always travels back from a worker."""
    t0 = time.perf_counter()
    try:
        if isinstance(analysis, str):
            rows = ANALYSES[analysis](params, seed)
        else:
            rows = _as_rows(analysis(**params, seed=seed))
        rows = [{str(k): _plain(v) for k, v in r.items()} for r in rows]
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
class _Damaged(Exception):
    """A stored file that cannot be trusted; the message says why."""


def _identity(name: str, task: _Task, status: str) -> dict[str, Any]:
    params = {k: _plain(v) for k, v in task.params.items()}
    return {
        "key": task.key,
        "analysis": name,
        "params": params,
        "seed": task.seed,
        "status": status,
    }


def _read_point(path: Path, key: str, status: str) -> list[dict[str, Any]]:
    """The rows of one point file, checked to hold point ``key`` with ``status``."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path).read()
    except Exception as exc:  # ArrowInvalid, OSError, ...: whatever the damage
        raise _Damaged(f"it cannot be read ({type(exc).__name__}: {exc})") from None
    raw = (table.schema.metadata or {}).get(_IDENTITY)
    if raw is not None:  # files of older versions have none: their rows' point_id decides
        try:
            ident = json.loads(raw)
            held = ident["key"]
        except (ValueError, TypeError, KeyError):
            raise _Damaged("its identity record is garbled") from None
        if held != key:
            raise _Damaged(
                f"it holds another point (id {held}: settings {ident.get('params')}, "
                f"seed {ident.get('seed')})"
            )
    rows: list[dict[str, Any]] = table.to_pylist()
    if not rows:
        raise _Damaged("it holds no rows")
    ids = {r.get("point_id") for r in rows}
    if ids != {key}:
        raise _Damaged(f"its rows belong to point {', '.join(sorted(map(str, ids)))}")
    if {r.get("status") for r in rows} != {status}:
        raise _Damaged(f"its rows do not all have status {status!r}")
    return rows


def _damage_warning(items: list[tuple[Path, str]], what: str, stacklevel: int) -> None:
    shown = "; ".join(f"{p.name}: {why}" for p, why in items[:5])
    more = f"; and {len(items) - 5} more" if len(items) > 5 else ""
    warnings.warn(
        f"{len(items)} damaged sweep file(s) in {items[0][0].parent}: {shown}{more}. {what}",
        SweepWarning,
        stacklevel=stacklevel,
    )


def _is_infrastructure_row(rows: list[dict[str, Any]]) -> bool:
    """An error row an older vgcore stored for a dead worker or a broken pool: such rows have
    no running time (a point's own failure always has one)."""
    el = rows[0].get("elapsed_s")
    return el is None or (isinstance(el, float) and math.isnan(el))


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
        self.name = name
        if root.exists() and not root.is_dir():
            raise ValueError(f"out must be a folder (a Parquet dataset), but {root} is a file")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"out: cannot create the folder {root}: {exc}") from None
        for tmp in root.glob(".tmp-*"):  # left by a sweep killed mid-write
            with suppress(OSError):
                tmp.unlink()
        self._check_meta()

    def _write_meta(self) -> None:
        import vgcore

        tmp = self.root / f".tmp-meta-{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps({"analysis": self.name, "vgcore": vgcore.__version__}) + "\n")
        os.replace(tmp, self.root / _META)

    def _check_meta(self) -> None:
        meta = self.root / _META
        if not meta.exists():
            self._write_meta()
            return
        try:
            old = json.loads(meta.read_text(encoding="utf-8"))["analysis"]
            if not isinstance(old, str):
                raise TypeError(f"'analysis' is {type(old).__name__}, not a string")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            recorded = self._analyses_in_files()
            if recorded <= {self.name}:  # every point file says it belongs to this analysis
                self._write_meta()
                warnings.warn(
                    f"{meta} was unreadable ({why}); rewrote it from the point files "
                    f"({'none yet' if not recorded else 'all of analysis ' + repr(self.name)})",
                    SweepWarning,
                    stacklevel=5,
                )
                return
            raise ValueError(
                f"{meta} is unreadable ({why}). It records which analysis {self.root} holds, "
                f"and its point files do not all say {self.name!r}: use another folder for "
                f"this sweep, or delete {meta} if you are sure the folder holds a sweep of "
                f"{self.name!r}"
            ) from None
        if old != self.name:
            raise ValueError(
                f"{self.root} holds a sweep of analysis {old!r}, not {self.name!r}; "
                "use another folder"
            )

    def _analyses_in_files(self) -> set[str | None]:
        """The analyses the stored files say they belong to (None: a file that does not say)."""
        import pyarrow.parquet as pq

        out: set[str | None] = set()
        for f in itertools.chain(self.root.glob("point-*"), self.root.glob("error-*")):
            try:
                meta = pq.read_schema(f).metadata or {}
            except Exception:  # damaged: set aside and recomputed later, whatever it held
                continue
            try:
                out.add(json.loads(meta[_IDENTITY])["analysis"])
            except Exception:  # written before files carried their identity
                out.add(None)
        return out

    def _path(self, key: str, ok: bool) -> Path:
        return self.root / f"{'point' if ok else 'error'}-{key}.parquet"

    def stored(self, tasks: list[_Task]) -> dict[str, tuple[str, list[dict[str, Any]]]]:
        """point id -> (status, rows) for each task whose stored file can be trusted. Damaged
        files are set aside (``<name>.corrupt``) with a warning, so their points run again."""
        out: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        damaged: list[tuple[Path, str]] = []
        infra: list[str] = []
        for t in tasks:
            for status in ("ok", "error"):
                path = self._path(t.key, status == "ok")
                if not path.exists():
                    continue
                try:
                    rows = _read_point(path, t.key, status)
                except _Damaged as exc:
                    damaged.append((path, str(exc)))
                    with suppress(OSError):
                        os.replace(path, path.with_name(path.name + ".corrupt"))
                    continue
                if status == "error" and _is_infrastructure_row(rows):
                    infra.append(str(rows[0].get("error")))
                    continue
                out[t.key] = (status, rows)
                break
        if damaged:
            _damage_warning(
                damaged, "Set aside as <name>.corrupt; recomputing their points.", stacklevel=4
            )
        if infra:
            warnings.warn(
                f"{len(infra)} stored error row(s) in {self.root} record a failure of the sweep "
                f"machinery in an older vgcore ({infra[0]}), not of the point: recomputing them",
                SweepWarning,
                stacklevel=3,
            )
        return out

    def write(self, task: _Task, rows: list[dict[str, Any]], ok: bool) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        ident = json.dumps(_identity(self.name, task, "ok" if ok else "error"), default=str)
        table = pa.Table.from_pylist(rows).replace_schema_metadata({_IDENTITY: ident})
        tmp = self.root / f".tmp-{task.key}-{uuid.uuid4().hex[:8]}"
        pq.write_table(table, tmp)
        os.replace(tmp, self._path(task.key, ok))
        if ok:
            with suppress(FileNotFoundError):
                self._path(task.key, False).unlink()


def load_sweep(out: str | Path) -> Any:
    """Every point stored in a sweep folder, as a DataFrame (ordered by point id).

    A file that cannot be read or that holds another point than its name says is left out,
    with a :class:`SweepWarning` naming it (running the sweep again recomputes it).
    """
    import pandas as pd

    root = Path(out)
    if not (root / _META).exists():
        raise FileNotFoundError(f"{root} is not a vgcore sweep folder (no {_META})")
    files = sorted(root.glob("point-*.parquet")) + sorted(root.glob("error-*.parquet"))
    rows: list[dict[str, Any]] = []
    damaged: list[tuple[Path, str]] = []
    for f in files:
        status, key = f.stem.split("-", 1)
        try:
            rows += _read_point(f, key, "ok" if status == "point" else "error")
        except _Damaged as exc:
            damaged.append((f, str(exc)))
    if damaged:
        _damage_warning(
            damaged, "Left out; running the sweep again recomputes their points.", stacklevel=3
        )
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


def _executor_kind(executor: Any) -> str:
    """The kind of executor (local, serial, address, dask, futures); clear errors otherwise."""
    if executor is None:
        return "local"
    if isinstance(executor, (bool, np.bool_)):
        raise TypeError(f"executor must not be a bool, got {executor!r}")
    if isinstance(executor, (int, np.integer)):
        if executor < 1:
            raise ValueError(f"executor as a worker count must be >= 1, got {executor}")
        return "local"
    if isinstance(executor, str):
        if executor == "serial":
            return "serial"
        if "://" in executor:
            return "address"
        raise ValueError(
            "executor as a string must be 'serial' or a Dask scheduler address such as "
            f"'tcp://host:8786', got {executor!r}"
        )
    if _is_dask(executor):
        return "dask"
    if isinstance(executor, cf.Executor):
        return "futures"
    raise TypeError(
        "executor must be None (local processes), 'serial', a worker count, a "
        "concurrent.futures.Executor, a dask.distributed.Client or a scheduler address "
        f"('tcp://host:port'); got {executor!r} ({type(executor).__name__})"
    )


# Workers whose process name starts with this do not import the caller's __main__.
_NO_MAIN = "vgcore-sweep-worker-"


def _skip_main_for_sweep_workers() -> None:
    """Wrap multiprocessing's spawn preparation so that sweep workers (and nothing else) are
    not told to import ``__main__``; idempotent, and a pass-through for other processes."""
    from multiprocessing import spawn

    current = spawn.get_preparation_data
    if getattr(current, "_vgcore_skip_main", False):
        return

    @functools.wraps(current)
    def get_preparation_data(name: str) -> dict[str, Any]:
        d: dict[str, Any] = current(name)
        if name.startswith(_NO_MAIN):
            d.pop("init_main_from_path", None)
            d.pop("init_main_from_name", None)
        return d

    get_preparation_data._vgcore_skip_main = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = _NO_MAIN + self.name


class _WorkerContext(multiprocessing.context.SpawnContext):
    """spawn, with workers that do not import ``__main__``."""

    Process = _WorkerProcess  # type: ignore[assignment]


def _main_script_unguarded() -> str | None:
    """The ``__main__`` script's path when the running sweep() call sits at its top level
    outside ``if __name__ == "__main__":`` (a worker importing the script would call it
    again), else None."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path:
        return None
    frame = sys._getframe(1)
    line = None
    while frame is not None:
        if frame.f_globals is vars(main) and frame.f_code.co_name == "<module>":
            line = frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    if line is None:
        return None
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None

    def is_guard(node: ast.stmt) -> bool:
        if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
            return False
        sides = [node.test.left, *node.test.comparators]
        names = any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides)
        main_ = any(isinstance(x, ast.Constant) and x.value == "__main__" for x in sides)
        return names and main_

    for node in tree.body:
        end = getattr(node, "end_lineno", None) or node.lineno
        if node.lineno <= line <= end:
            return None if is_guard(node) else str(path)
    return str(path)


def _pickled(what: str, value: Any) -> bytes:
    try:
        return pickle.dumps(value)
    except Exception as exc:
        raise TypeError(
            f"{what} cannot be sent to worker processes ({type(exc).__name__}: {exc}): "
            "use values and functions defined at module level (not lambdas or nested "
            "functions), or pass executor='serial'"
        ) from None


def _check_process_payload(analysis: Any, points: list[dict[str, Any]], local: bool) -> bool:
    """What the workers receive can reach them; returns whether it needs ``__main__``
    (something defined in the running script). Said up front, not as dead workers."""
    blob = _pickled(f"analysis {analysis!r}", analysis) + _pickled("a grid value", points)
    needs_main = b"__main__" in blob  # a false alarm only costs importing the script
    if not (needs_main and local):
        return needs_main
    main = sys.modules.get("__main__")
    if not getattr(main, "__file__", None):
        raise TypeError(
            f"analysis {analysis!r} or a grid value is defined interactively (in __main__ "
            "without a file), which worker processes cannot import: define it in a module, "
            "or pass executor='serial'"
        )
    script = _main_script_unguarded()
    if script is not None:
        raise RuntimeError(
            f"analysis {analysis!r} or a grid value is defined in the script {script}, which "
            'calls sweep() at its top level without an `if __name__ == "__main__":` guard: '
            "worker processes import that script to find it and would start the sweep again. "
            'Put the sweep call under `if __name__ == "__main__":`, move the definition into '
            "a module, or pass executor='serial'"
        )
    return needs_main


class _Runner:
    """Submit / wait / result over the supported executors."""

    def __init__(self, kind: str, executor: Any, max_workers: int | None, skip_main: bool) -> None:
        self.owned: Any = None
        self.kind = "futures"
        if kind == "local":
            n = int(executor) if executor is not None else max_workers
            if n is None:
                from vgcore._runtime import get_num_threads

                n = get_num_threads()
            self.workers = int(n)
            if skip_main:
                _skip_main_for_sweep_workers()
                ctx: Any = _WorkerContext()
            else:
                ctx = mp.get_context("spawn")
            self.pool: Any = cf.ProcessPoolExecutor(
                self.workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),)
            )
            self.owned = self.pool
        elif kind == "address":
            try:
                from distributed import Client
            except ImportError as exc:
                raise ImportError(
                    "a Dask scheduler needs dask.distributed: pip install 'vgcore[dask]'"
                ) from exc
            self.pool = Client(executor)
            self.owned = self.pool
            self.kind = "dask"
        elif kind == "dask":
            self.pool, self.kind = executor, "dask"
        else:
            self.pool = executor
            n_pool: int = getattr(executor, "_max_workers", None) or 2
            self.workers = max_workers or n_pool
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
    out: str | os.PathLike[str] | None = None,
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
        metrics, a list of them (several rows), a DataFrame or a number. A torch module
        goes into ``"gradient_flow"``, ``"profile"`` and ``"diagnose"`` as the settings
        ``module="PKG.MOD:FACTORY"`` and ``input_shape="8,64"``: the factory is called with
        the point's other settings as keyword arguments after ``torch.manual_seed(seed)``,
        on standard normal inputs seeded ``seed + 1``. For process or Dask
        executors it must be importable (defined at module level); one defined in the script
        being run needs the sweep call under ``if __name__ == "__main__":``.
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
        there are not run again: an interrupted sweep resumes where it stopped. Damaged files
        are set aside and their points run again (with a :class:`SweepWarning`).
    max_workers : int, optional
        Local process count (and the in-flight window for other executors); >= 1.
    retry_failed : bool
        Run again the points that failed in an earlier run into ``out`` (otherwise their error
        rows are returned, with a :class:`SweepWarning` saying how many).
    progress : bool or callable(done, total)
        A progress bar on stderr (``True``) or a callback.

    Returns
    -------
    pandas.DataFrame
        Tidy: one row per point and seed (or per row an analysis returns), in grid order, with
        the settings, ``seed``, the metrics, ``status`` ("ok" / "error": the analysis raised),
        ``error``, ``elapsed_s`` and ``point_id``.

    Raises
    ------
    SweepError
        The machinery failed for some points (a worker process died, the pool broke, a
        future was cancelled): nothing is stored for them, finished points are; running the
        same sweep again computes the missing ones.
    """
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover
        raise ImportError("sweep needs pandas: pip install 'vgcore[dask]'") from exc
    if isinstance(analysis, str):
        if analysis not in ANALYSES:
            raise ValueError(f"unknown analysis {analysis!r}; built-in: {', '.join(ANALYSES)}")
    elif not callable(analysis):
        raise TypeError(
            f"analysis must be a built-in analysis name or a callable, got {analysis!r} "
            f"({type(analysis).__name__})"
        )
    points = grid_points(grid)
    if not points:
        raise ValueError("the grid has no points")
    seed_list = _seeds(seeds)
    kind = _executor_kind(executor)
    if max_workers is not None:
        if isinstance(max_workers, (bool, np.bool_)) or not isinstance(
            max_workers, (int, np.integer)
        ):
            raise TypeError(f"max_workers must be an int >= 1 or None, got {max_workers!r}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        max_workers = int(max_workers)
    if not isinstance(retry_failed, (bool, np.bool_)):
        raise TypeError(f"retry_failed must be True or False, got {retry_failed!r}")
    if not (isinstance(progress, bool) or callable(progress)):
        raise TypeError(f"progress must be a bool or a callable(done, total), got {progress!r}")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a path to a folder, got {type(out).__name__} {out!r}")
    for p in points:
        if "seed" in p:
            raise ValueError("'seed' cannot be a grid setting; pass seeds= instead")
    if isinstance(analysis, str):  # validate settings up front: bad ones are argument errors
        for p in points:
            if "module" in p and analysis != "mean_field":
                _check_torch_point(p)
                continue
            _spec(p, seed_list[0])
            if analysis == "mean_field" and p.get("sigma_w2") is None:
                raise ValueError("the mean_field analysis needs sigma_w2 in every grid point")
    needs_main = False
    if kind == "local" or isinstance(executor, cf.ProcessPoolExecutor):
        needs_main = _check_process_payload(analysis, points, local=kind == "local")
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
    stored = store.stored(tasks) if store is not None else {}
    n_err = sum(st == "error" for st, _ in stored.values())
    if n_err and not retry_failed:
        warnings.warn(
            f"{n_err} point(s) failed in an earlier run into {out} and are not run again (their "
            "error rows are returned); pass retry_failed=True (CLI: --retry-failed) to run them "
            "again",
            SweepWarning,
            stacklevel=2,
        )
    results = {k: rows for k, (st, rows) in stored.items() if st == "ok" or not retry_failed}
    todo = [t for t in tasks if t.key not in results]

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
                store.write(task, rows, result["status"] == "ok")
            results[task.key] = rows
            done += 1
            bar.update(done, len(tasks))
            if callback is not None:
                callback(done, len(tasks))

        if todo:
            missing, cause = _execute(
                todo, analysis, kind, executor, max_workers, not needs_main, finish
            )
            if cause is not None:
                raise _sweep_error(missing, cause, len(tasks), analysis, out) from cause

    rows: list[dict[str, Any]] = []
    for t in tasks:
        rows += results[t.key]
    return _frame(pd, rows, points)


def _sweep_error(
    missing: list[_Task], cause: BaseException, total: int, analysis: Any, out: Any
) -> SweepError:
    why = f"{type(cause).__name__}: {cause}".rstrip(": ")
    if type(cause).__name__ == "BrokenProcessPool":
        why += " (a worker process died: killed, out of memory, or a crash in native code)"
    kept = (
        f"the points that finished are stored in {out}: run the same sweep again to compute "
        "the missing ones"
        if out is not None
        else "pass out=FOLDER to keep finished points across runs, and run the sweep again"
    )
    return SweepError(
        f"{len(missing)} of {total} point(s) were not computed because the sweep machinery "
        f"failed ({why}); nothing is stored for them, and {kept}"
    )


def _execute(
    todo: list[_Task],
    analysis: Any,
    kind: str,
    executor: Any,
    max_workers: int | None,
    skip_main: bool,
    finish: Callable[[_Task, Mapping[str, Any]], None],
) -> tuple[list[_Task], BaseException | None]:
    """Run the points; returns the points not computed and why (None: all were). After a
    failure of the machinery no new point starts, but the ones in flight are collected."""
    if kind == "serial":
        for t in todo:
            finish(t, _run_point(analysis, t.params, t.seed))
        return [], None
    local = kind == "local"
    missing: list[_Task] = []
    cause: BaseException | None = None
    with _single_thread_env() if local else nullcontext():
        runner = _Runner(kind, executor, max_workers, skip_main)
        queue = deque(todo)
        inflight: dict[Any, _Task] = {}
        try:
            while inflight or (queue and cause is None):
                while queue and cause is None and len(inflight) < runner.window:
                    t = queue.popleft()
                    try:
                        fut = runner.submit(_run_point, analysis, t.params, t.seed)
                    except Exception as exc:  # a broken or shut-down executor refuses work
                        cause = exc
                        missing.append(t)
                        break
                    inflight[fut] = t
                if not inflight:
                    break
                for fut in runner.wait_first(inflight):
                    task = inflight.pop(fut)
                    try:
                        result = fut.result()  # _run_point never raises: this is the machinery
                    except BaseException as exc:
                        cause = cause or exc
                        missing.append(task)
                        continue
                    finish(task, result)
        except BaseException:
            runner.cancel(inflight)
            raise
        finally:
            runner.close()
    return [*missing, *queue], cause


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

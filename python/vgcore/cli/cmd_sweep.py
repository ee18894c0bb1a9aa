"""`vgcore sweep`: grids of analyses from flags or a TOML table."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vgcore.cli._common import DEFAULT_SWEEP_DIR, Failure, UsageError, _emit_json, _with_pd_options
from vgcore.cli.model_flags import _flag_spec, _misapplied, _read_toml


# sweep
def _parse_value(text: str) -> Any:
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def _parse_values(text: str) -> list[Any]:
    """``a,b,c`` or a numeric range ``start:stop:step`` (stop included when reached)."""
    if text.count(":") == 2 and "//" not in text:
        a, b, c = (_parse_value(v) for v in text.split(":"))
        if not all(isinstance(v, (int, float)) for v in (a, b, c)) or c == 0:
            raise UsageError(
                f"bad range {text!r}: expected start:stop:step with numbers, step != 0"
            )
        n = math.floor((b - a) / c + 1e-9) + 1
        if n < 1 or n > 100_000:
            raise UsageError(f"range {text!r} has {n} values")
        vals = [a + i * c for i in range(n)]
        return [
            int(v) if all(isinstance(x, int) for x in (a, b, c)) else round(v, 12) for v in vals
        ]
    return [_parse_value(v) for v in text.split(",") if v.strip() != ""]


def _parse_assignments(items: Sequence[str] | None, what: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"{what} expects KEY=VALUES, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        vals = _parse_values(v)
        if not k or not vals:
            raise UsageError(f"{what} expects KEY=VALUES, got {item!r}")
        out[k] = vals
    return out


def _parse_seeds(text: str) -> int | list[int]:
    vals = _parse_values(text)
    if len(vals) == 1 and isinstance(vals[0], int) and "," not in text and ":" not in text:
        return vals[0]
    if not all(isinstance(v, int) for v in vals):
        raise UsageError(f"--seeds must be a count or a list of integers, got {text!r}")
    return [int(v) for v in vals]


_SWEEP_KEYS = ("analysis", "seeds", "grid", "fixed")


def _toml_type(v: Any) -> str:
    for t, name in ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string")):
        if isinstance(v, t):
            return name
    return "array" if isinstance(v, list) else "table" if isinstance(v, dict) else type(v).__name__


def _sweep_table(path: str) -> dict[str, Any]:
    """The [sweep] table of a TOML file, its keys checked: analysis (a string), seeds (a count
    or an array of integers), grid (setting -> value or array), fixed (setting -> value)."""
    doc = _read_toml(path)
    if "sweep" not in doc:
        raise UsageError(f"{path} has no [sweep] table")
    cfg = doc["sweep"]
    if not isinstance(cfg, dict):
        raise UsageError(f"[sweep] must be a table in {path}, got {_toml_type(cfg)} {cfg!r}")
    unknown = [k for k in cfg if k not in _SWEEP_KEYS]
    if unknown:
        raise UsageError(
            f"[sweep] in {path} has unknown key {unknown[0]!r}; allowed: {', '.join(_SWEEP_KEYS)}"
        )
    if "analysis" in cfg and not isinstance(cfg["analysis"], str):
        a = cfg["analysis"]
        raise UsageError(f"[sweep] analysis in {path} must be a string, got {_toml_type(a)} {a!r}")
    if "seeds" in cfg:
        s = cfg["seeds"]
        count = isinstance(s, int) and not isinstance(s, bool)
        listed = isinstance(s, list) and all(
            isinstance(x, int) and not isinstance(x, bool) for x in s
        )
        if not (count or listed):
            raise UsageError(
                f"[sweep] seeds in {path} must be a count (an integer) or an array of integers, "
                f"got {_toml_type(s)} {s!r}"
            )
    for part in ("grid", "fixed"):
        table = cfg.get(part, {})
        if not isinstance(table, dict):
            raise UsageError(
                f"[sweep] {part} in {path} must be a table of setting = value"
                f"{' or array of values' if part == 'grid' else ''} ([sweep.{part}]), "
                f"got {_toml_type(table)} {table!r}"
            )
        for k, v in table.items():
            if part == "grid" and isinstance(v, list) and not v:
                raise UsageError(f"[sweep.grid] {k} in {path} is an empty array")
            if part == "fixed" and isinstance(v, list):
                raise UsageError(
                    f"[sweep.fixed] {k} in {path} must be one value, got an array {v!r} "
                    "(put it under [sweep.grid] to sweep it)"
                )
    return cfg


#: The settings the theory-only mean_field analysis reads; any other would be ignored.
_MEAN_FIELD_SETTINGS = ("activation", "sigma_w2", "sigma_b2")


def _check_sweep_settings(grid: dict[str, Any], analysis: str) -> None:
    """Refuse a sweep setting that applies to none of the swept models."""
    if "seed" in grid:
        raise UsageError("seed cannot be a sweep setting: give the seeds to run with --seeds")
    if analysis == "mean_field":
        extra = [k for k in grid if k not in _MEAN_FIELD_SETTINGS]
        if extra:
            raise UsageError(
                f"the mean_field analysis (theory, no model is built) reads "
                f"{', '.join(_MEAN_FIELD_SETTINGS)} only; {extra[0]} would be ignored"
            )
        return
    from vgcore.sweep import grid_points

    try:
        points = grid_points(grid)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    for key in grid:
        why = [_misapplied(key, p, flags=False) for p in points]
        if points and all(why):
            raise UsageError(f"sweep setting {key} {why[0]}")


def _cmd_sweep(args: argparse.Namespace) -> int:
    import warnings

    from vgcore.sweep import ANALYSES, SweepError, SweepWarning, sweep

    cfg = _sweep_table(args.config) if args.config else {}
    analysis = args.analysis or cfg.get("analysis", "gradient_flow")
    if analysis not in ANALYSES:
        raise UsageError(f"unknown analysis {analysis!r}; choose from {', '.join(ANALYSES)}")
    grid: dict[str, Any] = {**cfg.get("fixed", {}), **cfg.get("grid", {})}
    grid.update({k: v[0] for k, v in _parse_assignments(args.set, "--set").items()})
    grid.update(_parse_assignments(args.grid, "--grid"))
    flags = _flag_spec(args)
    grid.update(flags)
    if not grid:
        raise UsageError("nothing to sweep: give --grid KEY=V1,V2 (or a [sweep] table in --config)")
    _check_sweep_settings(grid, analysis)
    seeds: Any = _parse_seeds(args.seeds) if args.seeds else cfg.get("seeds", 1)
    executor: Any = None
    if args.scheduler:
        executor = args.scheduler
        if "://" not in executor:
            raise UsageError(
                f"--scheduler must be an address like tcp://host:8786, got {executor!r}"
            )
    elif args.serial:
        executor = "serial"
    out = args.out or DEFAULT_SWEEP_DIR
    resumed = Path(out).is_dir() and any(Path(out).iterdir())
    t0 = time.perf_counter()

    def show_warning(message: Any, *_: Any, **__: Any) -> None:
        print(f"vgcore: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", SweepWarning)
            warnings.showwarning = show_warning
            df = sweep(
                analysis,
                grid,
                seeds=seeds,
                executor=executor,
                out=out,
                max_workers=args.workers,
                retry_failed=args.retry_failed,
                progress=not args.json,
            )
    except SweepError as exc:
        raise Failure(str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    n_err = int((df["status"] == "error").sum())
    if args.json:
        _emit_json(
            {
                "out": out,
                "points": int(df["point_id"].nunique()),
                "errors": n_err,
                "rows": json.loads(df.to_json(orient="records")),
            }
        )
        return 0
    varying = [k for k, v in grid.items() if isinstance(v, list) and len(v) > 1]
    metric = [
        c
        for c in ("verdict", "spread", "log10_gain", "vanishing_depth", "best_fix")
        if c in df.columns
    ]
    show = df[[*varying, "seed", *metric, "status"]] if varying else df
    _with_pd_options(lambda: print(show.to_string(index=False, max_rows=40, na_rep="-")))
    print(
        f"\n{df['point_id'].nunique()} points ({n_err} failed) in {time.perf_counter() - t0:.1f} s; "
        f"results in {out}/ (Parquet, one file per point)"
    )
    if resumed:
        print(
            f"resumed: points already stored in {out}/ were read, not recomputed "
            "(another --out starts afresh)"
        )
    return 0

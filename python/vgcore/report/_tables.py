"""The raw numbers behind a report, as tidy tables written to CSV or Parquet.

Units: ``log10_*`` columns are decades, as are ``spread``, ``best_improvement`` and the
fixes' ``before`` / ``after`` / ``improvement`` (their ``unit`` column says so);
``lyapunov_ln`` is a natural log per layer / step (``lyapunov_log10`` the same in decades).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DATA_FORMATS", "report_tables", "write_table"]

DATA_FORMATS = ("csv", "parquet")


def _num(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


def summary_row(d: Any) -> dict[str, Any]:
    """One row of evidence per diagnosis."""
    e = d.evidence
    best = d.best
    return {
        "model": d.name,
        "kind": d.flow.kind,
        "verdict": d.verdict,
        "axis": e["axis"],
        "length": e["length"],
        "log10_gain": _num(e["log10_gain"]),
        "log10_rate": _num(e["log10_rate"]),
        "spread": _num(e["spread"]),
        "vanishing_depth": _num(e["vanishing_depth"]),
        "exploding_depth": _num(e["exploding_depth"]),
        "saturated_mean": _num(e["saturation_mean"]),
        "saturated_max": _num(e["saturation_max"]),
        "inactive_mean": _num(e.get("inactive_mean")),
        "inactive_max": _num(e.get("inactive_max")),
        "dead_mean": _num(e.get("dead_mean")),
        "dead_max": _num(e.get("dead_max")),
        "lyapunov_ln": _num(e.get("lyapunov")),
        "lyapunov_ln_std": _num(e.get("lyapunov_std")),
        "lyapunov_log10": None
        if e.get("lyapunov") is None
        else _num(e["lyapunov"] / math.log(10.0)),
        "regime": e.get("regime"),
        "sigma_w2": _num(e.get("sigma_w2")),
        "sigma_b2": _num(e.get("sigma_b2")),
        "critical_sigma_w2": _num(e.get("critical_sigma_w2")),
        "phase": e.get("phase"),
        "chi1": _num(e.get("chi1")),
        "best_fix": best.fix if best else None,
        "best_improvement": _num(best.improvement) if best else None,
        "thresholds": e.get("thresholds"),
    }


def report_tables(diagnoses: Sequence[Any]) -> dict[str, list[dict[str, Any]]]:
    """``summary``, ``gradient_norms`` (one row per model and layer/step) and ``fixes`` (every
    fix considered: the recommended ones ranked, then those measured not to help)."""
    summary = [summary_row(d) for d in diagnoses]
    norms: list[dict[str, Any]] = []
    fixes: list[dict[str, Any]] = []
    for d in diagnoses:
        f = d.flow
        lg = np.asarray(f.log_grad_norms) / math.log(10.0)
        lc = (
            None
            if f.log_cell_grad_norms is None
            else np.asarray(f.log_cell_grad_norms) / math.log(10.0)
        )
        blocks = getattr(f, "block_names", None)
        blocks = ["input", *blocks] if blocks is not None and len(blocks) == lg.size - 1 else None
        for i in range(lg.size):
            norms.append(
                {
                    "model": d.name,
                    "axis": f.axis,
                    "index": i,
                    **({} if blocks is None else {"block": blocks[i]}),
                    "log10_grad_norm": _num(lg[i]),
                    "log10_cell_grad_norm": None if lc is None else _num(lc[i]),
                    "saturated": None if i == 0 else _num(f.saturated[i - 1]),
                    "inactive": None if i == 0 else _num(f.inactive[i - 1]),
                    "dead": None if i == 0 or f.dead is None else _num(f.dead[i - 1]),
                    "act_mean": None if i == 0 else _num(f.act_mean[i - 1]),
                    "act_std": None if i == 0 else _num(f.act_std[i - 1]),
                }
            )
        ranked = [(rank, r) for rank, r in enumerate(d.recommended, 1)]
        for rank, r in [*ranked, *((None, r) for r in d.not_helpful)]:
            row = r.to_dict()
            row["params"] = json.dumps(row["params"], sort_keys=True)
            fixes.append(
                {
                    "model": d.name,
                    "rank": rank,
                    "recommended": rank is not None,
                    **{k: _num(v) for k, v in row.items()},
                    "unit": "decades",
                }
            )
    return {"summary": summary, "gradient_norms": norms, "fixes": fixes}


def write_table(rows: list[dict[str, Any]], path: Path, fmt: str) -> Path:
    """Write rows to ``path`` (suffix added) as CSV (stdlib) or Parquet (pyarrow)."""
    if fmt not in DATA_FORMATS:
        raise ValueError(f"data format must be one of {', '.join(DATA_FORMATS)}, got {fmt!r}")
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    target = path.with_suffix("." + fmt)
    if fmt == "csv":
        with target.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: "" if r.get(k) is None else r.get(k) for k in cols})
        return target
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(
            "Parquet output needs pyarrow, a dependency of vgcore: pip install 'vgcore[report]' (or use the CSV format)"
        ) from exc
    table = pa.Table.from_pylist([{k: r.get(k) for k in cols} for r in rows])
    pq.write_table(table, target)
    return target

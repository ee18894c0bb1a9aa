"""Shared pieces of the command line: errors, the parser class, output helpers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

DEFAULT_REPORT_DIR = "vgcore-report"


DEFAULT_SWEEP_DIR = "vgcore-sweep"


class UsageError(Exception):
    """Bad arguments: exit status 2 with a one-line reason."""


class Failure(Exception):
    """The command could not do its job: exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# output helpers
def _emit_json(doc: Any) -> None:
    from vgcore.diagnose import _jsonable

    json.dump(_jsonable(doc), sys.stdout, indent=2)
    sys.stdout.write("\n")


def _info(args: argparse.Namespace, text: str) -> None:
    """Human-readable output: stdout normally, stderr under --json."""
    print(text, file=sys.stderr if getattr(args, "json", False) else sys.stdout)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(out)


def _diag_row(d: Any) -> list[str]:
    e = d.evidence
    where = e["vanishing_depth"] if e["vanishing_depth"] is not None else e["exploding_depth"]
    best = d.best
    lyap = e.get("lyapunov")
    return [
        d.name,
        d.verdict,
        f"{e['log10_gain']:+.1f}",
        "-" if where is None else f"{where} {d.axis}s",
        f"{e['saturation_mean']:.0%}",
        "-" if lyap is None else f"{lyap:+.3f}",
        f"{best.fix} ({best.improvement:+.1f})" if best else "-",
    ]


_DIAG_HEADER = [
    "model",
    "verdict",
    "gain (dec)",
    "<1e-6 / >1e6 at",
    "sat.",
    "lyapunov",
    "best fix (decades gained)",
]


def _per(axis: str) -> str:
    return "layer" if axis == "layer" else "step"


def _fmt_g(v: Any) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.4g}"


def _with_pd_options(fn: Any) -> None:
    import pandas as pd

    with pd.option_context("display.width", 160, "display.precision", 3):
        fn()

"""Output paths checked before any work: plots, files, report folders (replaced cleanly)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from vgcore.cli._common import DEFAULT_REPORT_DIR, Failure, UsageError, _info

# output paths, checked before any work
_REPORT_FILES = ("report.md", "report.html")


_REPORT_PARTS = {"figures": (".png",), "data": (".csv", ".parquet")}


def _report_contents(out: Path) -> tuple[list[Path], list[str]]:
    """The files of a vgcore report in folder ``out`` and the names of any other entries."""
    mine: list[Path] = []
    other: list[str] = []
    for entry in sorted(out.iterdir()):
        if entry.name in _REPORT_FILES and entry.is_file():
            mine.append(entry)
        elif entry.name in _REPORT_PARTS and entry.is_dir():
            for f in sorted(entry.iterdir()):
                if f.is_file() and f.suffix in _REPORT_PARTS[entry.name]:
                    mine.append(f)
                else:
                    other.append(f"{entry.name}/{f.name}")
        else:
            other.append(entry.name + ("/" if entry.is_dir() else ""))
    return mine, other


def _check_report_dir(path: str, flag: str, force: bool) -> None:
    """A report goes to a new or empty folder, over an earlier vgcore report (replaced), or,
    with --force, into any folder (its report files replaced, other files kept)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder")
    if out.is_dir():
        mine, other = _report_contents(out)
        is_report = any(p.parent == out for p in mine)
        if not is_report:  # figures/ or data/ without a report page are someone else's
            other += [str(p.relative_to(out)) for p in mine]
        if other and not force:
            what = "holds a vgcore report and" if is_report else "is not a vgcore report: it holds"
            names = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
            raise UsageError(
                f"{flag} {path} {what} other files ({names}); choose a new or empty folder, "
                "or add --force to write the report there (report.md, report.html, "
                "figures/*.png and data/ tables are replaced, other files are kept)"
            )
    _check_writable(out, flag, path)


def _clear_report_dir(out: Path) -> str:
    """Remove an earlier report's files from ``out`` (no stale figures); says what went."""
    if not out.is_dir():
        return ""
    mine, _ = _report_contents(out)
    for f in mine:
        f.unlink()
    figs = sum(f.parent.name == "figures" for f in mine)
    data = sum(f.parent.name == "data" for f in mine)
    if not mine:
        return ""
    return f"{len(mine) - figs - data} pages, {figs} figures and {data} data files"


def _check_writable(path: Path, flag: str, given: str) -> None:
    """The nearest existing folder at or above ``path`` must be a writable folder."""
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {given}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {given}: cannot write in {parent} (permission denied)")


def _check_file(path: str, flag: str) -> None:
    """An output file: its folder must exist and be writable, and it must not be a folder."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    folder = p.parent
    if not folder.exists():
        raise UsageError(f"{flag} {path}: folder {folder} does not exist (create it first)")
    _check_writable(folder, flag, path)


def _check_plot(path: str, flag: str = "--plot") -> None:
    """A figure file: matplotlib installed, a format it writes, a writable folder."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise Failure(
            f"{flag} needs matplotlib, a dependency of vgcore: pip install 'vgcore[plot]'"
        )
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in formats and not Path(path).is_dir():
        raise UsageError(
            f"{flag} {path}: the file name must end in a format matplotlib writes "
            f"({', '.join('.' + f for f in sorted(formats))}), e.g. .png"
        )
    _check_file(path, flag)


def _check_outputs(args: argparse.Namespace) -> None:
    """Every file or folder the command will write, checked before any work."""
    cmd = args.command
    if getattr(args, "plot", None):
        _check_plot(args.plot)
    if cmd == "bench":
        for flag, path in (("--json", args.json), ("--markdown", args.markdown)):
            if path:
                _check_file(path, flag)
    force = bool(getattr(args, "force", False))
    if cmd in ("demo", "report") and not getattr(args, "no_report", False):
        _check_report_dir(args.out or DEFAULT_REPORT_DIR, "--out", force)
    if cmd == "analyze" and args.report:
        _check_report_dir(args.report, "--report", force)


#: (command, option) -> (whether it applies to the parsed arguments, when it applies).
_OPTION_NEEDS: dict[tuple[str, str], tuple[Any, str]] = {
    ("demo", "out"): (lambda a: not a.no_report, "when a report is written (drop --no-report)"),
    ("demo", "format"): (lambda a: not a.no_report, "when a report is written (drop --no-report)"),
    ("demo", "force"): (lambda a: not a.no_report, "when a report is written (drop --no-report)"),
    ("analyze", "format"): (lambda a: bool(a.report), "with --report DIR"),
    ("analyze", "force"): (lambda a: bool(a.report), "with --report DIR"),
    ("sweep", "workers"): (
        lambda a: not (a.serial or a.scheduler),
        "to local worker processes (not with --serial or --scheduler)",
    ),
    ("sweep", "serial"): (lambda a: not a.scheduler, "without --scheduler: give one of them"),
}


def _check_options(args: argparse.Namespace) -> None:
    """Refuse an option given where it has no effect (defaults are None or False)."""
    for (cmd, key), (applies, when) in _OPTION_NEEDS.items():
        if args.command == cmd and getattr(args, key, None) not in (None, False):
            if not applies(args):
                raise UsageError(f"--{key.replace('_', '-')} applies only {when}")
    if args.command == "sweep" and args.seed is not None:
        raise UsageError("--seed does not apply to sweep: give the seeds to run with --seeds")


def _save_plot(args: argparse.Namespace, result: Any) -> None:
    if not getattr(args, "plot", None):
        return
    from vgcore import plotting

    ret = plotting.plot(result)
    ax = np.ravel(np.asarray(ret, dtype=object))[0] if isinstance(ret, np.ndarray) else ret
    _save_figure(args, ax.figure)


def _save_figure(args: argparse.Namespace, fig: Any) -> None:
    """Write ``fig`` to ``--plot`` (checked before any work), close it and say where it went."""
    from vgcore import plotting

    try:
        fig.savefig(args.plot, dpi=110)
    except OSError as exc:
        raise Failure(f"cannot write {args.plot}: {exc}") from None
    finally:
        plotting.require_matplotlib().close(fig)
    _info(args, f"figure: {args.plot}")

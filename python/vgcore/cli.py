"""Command-line interface: ``vgcore demo | analyze | report | lyapunov | spectrum | singular |
phase | sweep | bench``.

Exit codes: 0 success, 2 bad arguments (one line on stderr saying why), 1 failure.
``--json`` prints one JSON document on stdout and nothing else there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from vgcore._modelspec import MODEL_KINDS

DEFAULT_REPORT_DIR = "vgcore-report"
DEFAULT_SWEEP_DIR = "vgcore-sweep"


class UsageError(Exception):
    """Bad arguments: exit status 2 with a one-line reason."""


class Failure(Exception):
    """The command could not do its job: exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# model arguments
_MODEL_FLAGS: dict[str, tuple[Any, str, str]] = {
    "model": (str, "KIND", f"architecture: {', '.join(MODEL_KINDS)} (default mlp)"),
    "depth": (int, "N", "number of layers (default 20)"),
    "width": (int, "N", "layer width of an MLP, hidden size of a recurrent cell (default 64)"),
    "activation": (str, "NAME", "hidden activation, e.g. tanh, relu, sigmoid, gelu (default tanh)"),
    "block": (str, "KIND", "plain, residual or highway (default plain)"),
    "alpha": (float, "X", "residual branch scale, with --block residual (default 1)"),
    "norm": (str, "KIND", "normalisation: none, layernorm or batchnorm (default none)"),
    "hidden_size": (int, "N", "hidden size (default: --width)"),
    "input_size": (int, "N", "input width (default: --width for an MLP, 32 for recurrent)"),
    "steps": (int, "T", "sequence length (default 100)"),
    "nonlinearity": (str, "NAME", "tanh or relu (default tanh)"),
    "forget_bias": (float, "X", "forget-gate bias (default: the init's)"),
    "init": (
        str,
        "SPEC",
        "init scheme (vgcore.init), a name or JSON, e.g. kaiming_normal or "
        '\'{"name": "gaussian", "sigma_w2": 2}\' (default: PyTorch\'s)',
    ),
    "sigma_w2": (float, "X", "weight variance x fan_in (implies gaussian init)"),
    "sigma_b2": (float, "X", "bias variance (implies gaussian init)"),
    "batch": (int, "N", "batch size of the random inputs (default 64 for an MLP, 16 recurrent)"),
    "seed": (int, "N", "seed of the weights; the inputs use seed+1 (default 0)"),
    "dtype": (str, "TYPE", "float32 or float64 (default float64)"),
    "input_scale": (float, "X", "standard deviation of the random inputs (default 1)"),
}


def _add_model_args(p: argparse.ArgumentParser, *, sources: bool = True) -> None:
    g = p.add_argument_group(
        "model",
        "Flags marked [mlp], [rnn], ... apply to those model kinds only; others are refused."
        + (" Flags override values from --config." if sources else ""),
    )
    for key, (typ, metavar, help_) in _MODEL_FLAGS.items():
        kinds = _SETTING_KINDS.get(key)
        g.add_argument(
            _flag(key),
            dest=key,
            type=typ,
            default=None,
            metavar=metavar,
            help=f"[{'/'.join(kinds)}] {help_}" if kinds else help_,
        )
    g.add_argument(
        "--no-bias", dest="bias", action="store_false", default=None, help="layers without biases"
    )
    g.add_argument("--name", default=None, help="label of the model in tables and reports")
    if sources:
        g.add_argument(
            "--config",
            metavar="FILE.toml",
            help="model(s) from a TOML file ([model] or [[models]] tables of the settings above)",
        )
        g.add_argument(
            "--torch",
            metavar="FILE",
            help="a trained model: a PyTorch state_dict file, torch.save(module.state_dict(), "
            "FILE), of an nn.Sequential of Linear (LayerNorm, BatchNorm1d) layers or one "
            "nn.RNN / LSTM / GRU",
        )


def _flag_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec = {
        k: getattr(args, k)
        for k in (*_MODEL_FLAGS, "bias", "name")
        if getattr(args, k, None) is not None
    }
    init = spec.get("init")
    if isinstance(init, str) and init.lstrip().startswith("{"):
        try:
            spec["init"] = json.loads(init)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--init is not valid JSON: {exc}") from None
    if (
        "width" in spec
        and spec.get("model") in ("rnn", "lstm", "gru")
        and "hidden_size" not in spec
    ):
        spec["hidden_size"] = spec["width"]
    return spec


def _read_toml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {path!r} does not exist")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise UsageError(
                "reading TOML on Python < 3.11 needs tomli: pip install tomli"
            ) from None
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None


def _config_models(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    if "models" in cfg:
        if not isinstance(cfg["models"], list):
            raise UsageError("'models' in the config must be an array of tables ([[models]])")
        return [dict(m) for m in cfg["models"]]
    if "model" in cfg and isinstance(cfg["model"], dict):
        return [dict(cfg["model"])]
    top = {k: v for k, v in cfg.items() if not isinstance(v, dict)}
    return [top] if top else []


# ------------------------------------------------------------------------------------------
# which settings apply to which model kinds (checked before any work)
_RECURRENT = ("rnn", "lstm", "gru")

#: Model settings that apply to some model kinds only; the others apply to every kind.
_SETTING_KINDS: dict[str, tuple[str, ...]] = {
    "depth": ("mlp",),
    "activation": ("mlp",),
    "block": ("mlp",),
    "alpha": ("mlp",),
    "norm": ("mlp",),
    "hidden_size": _RECURRENT,
    "steps": _RECURRENT,
    "nonlinearity": ("rnn",),
    "forget_bias": ("lstm",),
}

#: (setting, kind group) -> the counterpart to use instead, for the error message.
_INSTEAD: dict[tuple[str, str], str] = {
    ("depth", "recurrent"): "a recurrent model's length is {steps}",
    ("activation", "recurrent"): "an RNN's is {nonlinearity}; LSTM and GRU gates are fixed",
    ("steps", "mlp"): "an MLP's length is {depth}",
    ("hidden_size", "mlp"): "an MLP's width is {width}",
    ("nonlinearity", "mlp"): "an MLP's is {activation}",
}

#: Flags that still apply to a model read from a checkpoint (--torch): the rest describe
#: the architecture or weights, which the checkpoint fixes.
_TORCH_SETTINGS = ("activation", "nonlinearity", "steps", "batch", "seed", "input_scale", "name")


def _flag(key: str) -> str:
    return "--no-bias" if key == "bias" else "--" + key.replace("_", "-")


def _given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Model settings given on the command line (their defaults are None), as given."""
    keys = (*_MODEL_FLAGS, "bias", "name")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _kind_of(spec: dict[str, Any]) -> str:
    return str(spec.get("model") or "mlp").lower()


def _misapplied(
    key: str, spec: dict[str, Any], *, flags: bool = True, hint: bool = True
) -> str | None:
    """Why setting ``key`` does not apply to the model ``spec`` describes; None if it does.

    Settings are named as flags (``--steps``) or, for config files, as keys (``steps``).
    """
    name = _flag if flags else (lambda k: k)
    kind = _kind_of(spec)
    if kind not in MODEL_KINDS:  # the model layer names the bad kind
        return None
    kinds = _SETTING_KINDS.get(key)
    if kinds is not None and kind not in kinds:
        other = _INSTEAD.get((key, "recurrent" if kind in _RECURRENT else "mlp"), "")
        other = other.format(**{k: name(k) for k in _MODEL_FLAGS}) if hint else ""
        return f"applies to {'/'.join(kinds)} models only, not to {kind}" + (
            f" ({other})" if other else ""
        )
    block = spec.get("block") or "plain"
    if key == "alpha" and block != "residual":
        where = "--block residual" if flags else "block = 'residual'"
        return f"(the residual branch scale) applies to {where} only, not to {block} blocks"
    if key == "width" and kind in _RECURRENT and spec.get("hidden_size") not in (None, spec[key]):
        return f"and {name('hidden_size')} both set a recurrent model's hidden size: give one"
    return None


def _check_settings(
    raw: dict[str, Any], tables: list[dict[str, Any]], config: str | None = None
) -> None:
    """Refuse settings that do not apply to the model(s) they would describe: a config
    model's own key that does not fit that model, or a flag that fits none of the models."""
    for i, table in enumerate(tables):
        own = {k: v for k, v in table.items() if k not in raw}
        merged = {**own, **raw}
        for key in own:
            spec = {**own, "model": _kind_of(merged)} if key == "width" else merged
            why = _misapplied(key, spec, flags=False)
            if why:
                label = f", model {i + 1}" if len(tables) > 1 else ""
                raise UsageError(f"{config}{label}: {key} {why}")
    where = ""
    if config is not None:
        kinds = sorted({_kind_of({**t, **raw}) for t in tables})
        where = f"; {config} describes {' and '.join(kinds)} models"
    for key in raw:
        # a flag overrides the file: the width conflict is between flags only
        reasons = [
            _misapplied(
                key, {**raw, "model": _kind_of({**t, **raw})} if key == "width" else {**t, **raw}
            )
            for t in tables
        ]
        if all(reasons):
            raise UsageError(f"{_flag(key)} {reasons[0]}{where}")


def _models(args: argparse.Namespace) -> list[tuple[str, Any, np.ndarray]]:
    """``(name, model, x)`` for every model the arguments describe (settings checked first)."""
    from vgcore._modelspec import ModelSpec, build, describe

    flags = _flag_spec(args)
    if getattr(args, "torch", None):
        if getattr(args, "config", None):
            raise UsageError("give --torch or --config, not both")
        return [_torch_model(args, flags)]
    raw = _given_flags(args)
    specs = [flags]
    if getattr(args, "config", None):
        tables = _config_models(_read_toml(args.config))
        if not tables:
            raise UsageError(f"{args.config} describes no model ([model] or [[models]])")
        if "name" in raw and len(tables) > 1:
            raise UsageError(
                f"--name labels one model; {args.config} describes {len(tables)} "
                "(set name in each [[models]] table)"
            )
        _check_settings(raw, tables, args.config)
        specs = [{**m, **flags} for m in tables]
    else:
        _check_settings(raw, [{}])
    out = []
    for s in specs:
        try:
            spec = ModelSpec(s)
            model, x = build(spec)
        except (ValueError, TypeError) as exc:
            raise UsageError(str(exc)) from None
        out.append((describe(spec), model, x))
    return out


def _torch_model(args: argparse.Namespace, flags: dict[str, Any]) -> tuple[str, Any, np.ndarray]:
    """The model of a --torch checkpoint and its random inputs."""
    from vgcore._checkpoint import (
        CheckpointError,
        MissingActivationError,
        load_state_dict,
        model_from_state_dict,
    )
    from vgcore._modelspec import ModelSpec, build_input, spec_from_model

    given = _given_flags(args)
    fixed = [k for k in given if k not in _TORCH_SETTINGS]
    if fixed:
        raise UsageError(
            f"{_flag(fixed[0])} does not apply to --torch: the checkpoint fixes the model's "
            f"architecture and weights (flags that apply: {', '.join(map(_flag, _TORCH_SETTINGS))})"
        )
    try:
        sd = load_state_dict(args.torch)
        model = model_from_state_dict(
            sd,
            activation=flags.get("activation"),
            nonlinearity=flags.get("nonlinearity", "tanh"),
        )
    except MissingActivationError:
        raise UsageError(
            f"{args.torch} holds an MLP (nn.Sequential) state_dict, which does not record its "
            "activations: give the hidden layers' one, e.g. --activation relu (the last Linear "
            "layer is taken as linear)"
        ) from None
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    except ImportError as exc:
        raise Failure(str(exc)) from None
    shape = spec_from_model(model)
    kind = shape["model"]
    for key in given:
        why = _misapplied(key, shape, hint=key != "steps")  # the checkpoint fixes the depth
        if why:
            raise UsageError(f"{_flag(key)} {why}: {args.torch} holds {kind.upper()} weights")
    if kind == "rnn" and "nonlinearity" not in given:
        print(
            "vgcore: note: a state_dict does not record an RNN's nonlinearity; assuming tanh "
            "(nn.RNN's default; give --nonlinearity relu otherwise)",
            file=sys.stderr,
        )
    spec = {k: v for k, v in flags.items() if k in ("batch", "seed", "steps", "input_scale")}
    spec.update(model=kind, input_size=shape["input_size"], dtype=np.dtype(model.dtype).name)
    x = build_input(ModelSpec(spec))
    return flags.get("name") or f"{Path(args.torch).name} ({type(model).__name__})", model, x


def _diagnose_all(
    args: argparse.Namespace, cases: list[tuple[str, Any, np.ndarray]], *, keep_grads: bool
) -> list[Any]:
    from vgcore._progress import progress_bar
    from vgcore.diagnose import diagnose

    diags = []
    quiet = getattr(args, "json", False)
    with progress_bar(len(cases), "diagnosing", enabled=None if not quiet else False) as bar:
        for name, model, x in cases:
            bar.describe(f"diagnosing {name}")
            diags.append(
                diagnose(
                    model,
                    x,
                    name=name,
                    check=not getattr(args, "no_check", False),
                    keep_grads=keep_grads,
                )
            )
            bar.advance()
    return diags


def _write_report(
    args: argparse.Namespace,
    diags: list[Any],
    out: str,
    title: str,
    extras: dict[str, Any] | None = None,
) -> Any:
    from vgcore._progress import progress_bar
    from vgcore.report import write_report

    removed = _clear_report_dir(Path(out))
    with progress_bar(None, f"writing report to {out}", enabled=None if not args.json else False):
        rep = write_report(
            diags, out, title=title, data_format=args.format or "csv", extras=extras or {}
        )
    if removed:
        print(
            f"vgcore: note: replaced the earlier report in {out} (removed its {removed})",
            file=sys.stderr,
        )
    for n in rep.notes:
        print(f"vgcore: note: {n}", file=sys.stderr)
    return rep


# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# demo
DEMO_CASES: list[tuple[str, dict[str, Any]]] = [
    (
        "MLP sigmoid L=50, default init",
        {"model": "mlp", "depth": 50, "width": 128, "activation": "sigmoid"},
    ),
    (
        "MLP tanh L=50, Xavier",
        {"model": "mlp", "depth": 50, "width": 128, "activation": "tanh", "init": "xavier_normal"},
    ),
    (
        "MLP ReLU L=50, He",
        {"model": "mlp", "depth": 50, "width": 128, "activation": "relu", "init": "kaiming_normal"},
    ),
    (
        "MLP tanh residual L=50",
        {"model": "mlp", "depth": 50, "width": 128, "activation": "tanh", "block": "residual"},
    ),
    (
        "MLP tanh LayerNorm L=50",
        {"model": "mlp", "depth": 50, "width": 128, "activation": "tanh", "norm": "layernorm"},
    ),
    ("RNN tanh T=200", {"model": "rnn", "hidden_size": 128, "steps": 200}),
    (
        "RNN tanh T=200, gain 4",
        {"model": "rnn", "hidden_size": 128, "steps": 200, "sigma_w2": 16.0},
    ),
    (
        "LSTM T=200, forget bias 1",
        {"model": "lstm", "hidden_size": 128, "steps": 200, "forget_bias": 1.0},
    ),
    ("GRU T=1000", {"model": "gru", "hidden_size": 128, "steps": 1000}),
]


def _demo_extras(diags: list[Any]) -> dict[str, Any]:
    """Further figures from the optional analyses that are available."""
    from vgcore import _optional

    return _optional.demo_extras(diags)


def _cmd_demo(args: argparse.Namespace) -> int:
    import vgcore
    from vgcore._modelspec import build

    t0 = time.perf_counter()
    cases = []
    for name, spec in DEMO_CASES:
        model, x = build(spec)
        cases.append((name, model, x))
    _info(
        args,
        f"vgcore {vgcore.__version__}: diagnosing {len(cases)} canonical networks "
        "(every recommended fix is applied and measured)\n",
    )
    diags = _diagnose_all(args, cases, keep_grads=True)
    _info(args, _table(_DIAG_HEADER, [_diag_row(d) for d in diags]))
    report = None
    if not args.no_report:
        out = args.out or DEFAULT_REPORT_DIR
        rep = _write_report(
            args,
            diags,
            out,
            "vgcore demo: gradient flow in canonical networks",
            _demo_extras(diags),
        )
        report = str(rep.html)
        _info(
            args,
            f"\nreport: {rep.html} (also {rep.markdown.name}, {len(rep.figures)} figures, "
            f"data in {rep.out / 'data'})",
        )
    _info(args, f"done in {time.perf_counter() - t0:.1f} s")
    if args.json:
        _emit_json(
            {
                "version": vgcore.__version__,
                "report": report,
                "diagnoses": [d.to_dict() for d in diags],
            }
        )
    return 0


# ------------------------------------------------------------------------------------------
# analyze / report
def _cmd_analyze(args: argparse.Namespace) -> int:
    cases = _models(args)
    diags = _diagnose_all(args, cases, keep_grads=bool(args.report))
    if args.json:
        doc: dict[str, Any] = {"diagnoses": [d.to_dict() for d in diags]}
    else:
        for d in diags:
            print(d.summary())
            print()
    if args.plot:
        from vgcore import plotting

        plt = plotting.require_matplotlib()
        fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
        if len(diags) == 1:
            plotting.plot_diagnosis(diags[0], ax=ax)
        else:
            plotting.plot_gradient_flow(diags, ax=ax, relative=True)
        fig.savefig(args.plot, dpi=110)
        _info(args, f"figure: {args.plot}")
    if args.report:
        rep = _write_report(args, diags, args.report, "vgcore analysis")
        _info(args, f"report: {rep.html}")
        if args.json:
            doc["report"] = str(rep.html)
    if args.json:
        _emit_json(doc)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    cases = _models(args)
    diags = _diagnose_all(args, cases, keep_grads=True)
    out = args.out or DEFAULT_REPORT_DIR
    rep = _write_report(args, diags, out, args.title)
    if args.json:
        _emit_json(
            {
                "report": str(rep.html),
                "markdown": str(rep.markdown),
                "figures": [str(f) for f in rep.figures],
                "data": [str(d) for d in rep.data],
                "diagnoses": [d.to_dict() for d in diags],
            }
        )
    else:
        print(_table(_DIAG_HEADER, [_diag_row(d) for d in diags]))
        print(f"\nreport: {rep.html}")
    return 0


# ------------------------------------------------------------------------------------------
# optional analyses: lyapunov, spectrum, singular, phase
def _one_model(args: argparse.Namespace, what: str) -> tuple[str, Any, np.ndarray]:
    (name, model, x), *rest = _models(args)
    if rest:
        raise UsageError(f"{what} analyses one model; the config describes {len(rest) + 1}")
    return name, model, x


def _run_analysis(args: argparse.Namespace, description: str, call: Any) -> Any:
    """Run ``call(progress)`` with a progress bar (stderr, terminals only, never under --json).

    Bad arguments the analysis finds (ValueError / TypeError) exit with status 2; warnings
    (e.g. a matrix-free solve that did not converge) become ``vgcore: warning:`` lines.
    """
    import warnings

    from vgcore._progress import progress_bar

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with progress_bar(None, description, enabled=False if args.json else None) as bar:
            try:
                res = call(bar)
            except (ValueError, TypeError) as exc:
                raise UsageError(str(exc).splitlines()[0]) from None
    for w in caught:
        print(f"vgcore: warning: {w.message}", file=sys.stderr)
    return res


def _per(axis: str) -> str:
    return "layer" if axis == "layer" else "step"


def _cmd_lyapunov(args: argparse.Namespace) -> int:
    from vgcore import _optional
    from vgcore.diagnose import lyapunov_regime

    name, model, x = _one_model(args, "lyapunov")
    res = _run_analysis(
        args,
        "Lyapunov exponents",
        lambda bar: _optional.run_lyapunov(
            model, x, k=args.k, burn_in=args.burn_in, qr_every=args.qr_every, progress=bar
        ),
    )
    s = _optional.lyapunov_summary(res)
    regime = lyapunov_regime(s["top"])
    if args.json:
        _emit_json({"model": name, **s, "regime": regime, "plot": args.plot})
    else:
        per = _per(s["axis"])
        print(
            f"{name}: top {s['k']} Lyapunov exponents per {per} (natural log), "
            f"state dimension {s['state_dim']}"
        )
        print(
            f"  {s['batch']} trajectories (the batch), averaged over {s['accumulated_steps']} "
            f"{per}s after a burn-in of {s['burn_in']}, QR every {s['qr_every']}"
        )
        rows = [
            [i + 1, f"{m:+.5f}", f"{sd:.5f}", f"{lo:+.5f}", f"{hi:+.5f}"]
            for i, (m, sd, lo, hi) in enumerate(
                zip(s["exponents"], s["exponents_std"], s["exponents_min"], s["exponents_max"])
            )
        ]
        print(_table(["i", "lambda_i (batch mean)", "std", "min", "max"], rows))
        print(
            f"top exponent {s['top']:+.5f} +/- {s['top_std']:.5f} (batch mean +/- std): "
            f"{regime}; Kaplan-Yorke dimension {s['kaplan_yorke_dimension']:.3g} (batch mean)"
        )
    _save_plot(args, res)
    return 0


def _fmt_g(v: Any) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.4g}"


def _cmd_spectrum(args: argparse.Namespace) -> int:
    from vgcore import _optional

    name, model, x = _one_model(args, "spectrum")
    res = _run_analysis(
        args,
        "Jacobian spectra",
        lambda bar: _optional.run_spectrum(model, x, method=args.method, progress=bar),
    )
    s = _optional.spectrum_summary(res)
    if args.json:
        _emit_json({"model": name, **s, "plot": args.plot})
    else:
        per = _per(s["axis"])
        n = len(s["steps"])
        jac = "d h_l / d h_(l-1)" if per == "layer" else "d h_(t+1) / d h_t"
        print(f"{name}: Jacobian {jac} of {n} {per}s x batch of {s['batch']}, method {s['method']}")
        print(f"  per-{per} median over the batch, then its median and range over the {per}s:")
        rows = []
        for label, key in (("spectral radius", "spectral_radius"), ("sigma_max", "sigma_max")):
            t = s[key + "_summary"]
            if t is None:
                rows.append([label, "n/a (non-square layers)", "", "", ""])
            else:
                rows.append(
                    [
                        label,
                        _fmt_g(t["median"]),
                        _fmt_g(t["min"]),
                        _fmt_g(t["max"]),
                        f"{t['above_1']}/{t['count']}",
                    ]
                )
        print(_table(["", "median", "min", "max", f"{per}s > 1"], rows))
        show = np.unique(np.linspace(0, n - 1, min(n, 10)).round().astype(int))
        offset = 1 if per == "layer" else 0
        rho, sig = s["spectral_radius"], s["sigma_max"]

        def rng(d: dict[str, Any], i: int) -> str:
            if not np.isfinite(d["median"][i]):
                return ""
            return f"{_fmt_g(d['min'][i])} .. {_fmt_g(d['max'][i])}"

        detail = [
            [
                int(s["steps"][i]) + offset,
                _fmt_g(rho["median"][i]) if np.isfinite(rho["median"][i]) else "n/a",
                rng(rho, i),
                _fmt_g(sig["median"][i]),
                rng(sig, i),
            ]
            for i in show
        ]
        print()
        print(
            _table(
                [per, "rho (median)", "rho (batch range)", "sigma_max", "sigma_max range"], detail
            )
        )
        if len(show) < n:
            print(f"({len(show)} of {n} {per}s shown; --json for all)")
        print(
            f"mean log sigma_max per {per}: {s['mean_log_sigma_max']:+.4f} "
            "(an upper bound on the log growth rate of any perturbation)"
        )
        mf = s.get("matrix_free")
        if mf is not None:
            print(
                f"matrix-free: {mf['operator_applications']} operator applications, "
                f"max residual {mf['max_residual']:.2e}"
                + ("" if mf["converged"] else f", {mf['not_converged']} solves not converged")
            )
    _save_plot(args, res)
    return 0


def _cmd_singular(args: argparse.Namespace) -> int:
    from vgcore import _optional

    name, model, x = _one_model(args, "singular")
    res = _run_analysis(
        args,
        "singular values",
        lambda bar: _optional.run_singular_values(model, x, progress=bar),
    )
    s = _optional.singular_values_summary(res)
    if args.json:
        _emit_json({"model": name, **s, "plot": args.plot})
    else:
        per = "layers" if s["kind"] == "mlp" else "steps"
        print(
            f"{name}: singular values of the input-output Jacobian over {s['depth']} {per} "
            f"({s['rank']} per sample, batch of {s['batch']})"
        )
        print(
            f"  log10 sigma_max {s['median_log10_sigma_max']:+.3f}, log10 sigma_min "
            f"{s['median_log10_sigma_min']:+.3f}, log10 condition number "
            f"{s['median_log10_condition_number']:.3f} (batch medians)"
        )
        iso = s["isometry"]
        print(
            f"  mean sigma^2 = 10^{s['log10_mean_squared']:+.3f} (1 under dynamical "
            f"isometry), std sigma^2 = 10^{s['log10_std_squared']:+.3f}; log10 sigma has mean "
            f"{iso['mean_log_singular'] / math.log(10):+.3f} and std "
            f"{s['std_log10_singular']:.3f} decades (0 under isometry)"
        )
        print(f"  {res.isometry_summary()}")  # the verdict and its thresholds
    _save_plot(args, res)
    return 0


#: The theory's argument names and the 'phase' flags that set them (for error messages).
_PHASE_FLAGS = (
    ("sigma_w2", "--sigma-w2"),
    ("sigma_b2", "--sigma-b2"),
    ("activation", "--activation"),
)


def _cmd_phase(args: argparse.Namespace) -> int:
    from vgcore import _optional

    try:  # every input of the theory is a flag: its ValueErrors are bad arguments
        res = _optional.run_phase(
            args.activation, args.sigma_w2, args.sigma_b2, diagram=bool(args.plot)
        )
    except ValueError as exc:
        msg = str(exc)
        for name, flag in _PHASE_FLAGS:
            if msg.startswith(name + " "):
                msg = f"{flag}: {msg}"
        raise UsageError(msg) from None
    from vgcore.theory.scope import phase_scope_note  # what the phase is about

    if args.json:
        _emit_json({**res["json"], "scope": phase_scope_note()})
    else:
        print(res["text"] + "\n" + phase_scope_note())
    if args.plot:
        from vgcore import plotting

        point = None if args.sigma_w2 is None else (args.sigma_w2, args.sigma_b2)
        ax = plotting.plot_phase_diagram(res["diagram"], point=point)
        try:
            ax.figure.savefig(args.plot, dpi=110)
        except OSError as exc:
            raise Failure(f"cannot write {args.plot}: {exc}") from None
        finally:
            plotting.require_matplotlib().close(ax.figure)
        _info(args, f"figure: {args.plot}")
    return 0


def _save_plot(args: argparse.Namespace, result: Any) -> None:
    if not getattr(args, "plot", None):
        return
    from vgcore import plotting

    ret = plotting.plot(result)
    ax = np.ravel(np.asarray(ret, dtype=object))[0] if isinstance(ret, np.ndarray) else ret
    try:
        ax.figure.savefig(args.plot, dpi=110)
    except OSError as exc:
        raise Failure(f"cannot write {args.plot}: {exc}") from None
    finally:
        plotting.require_matplotlib().close(ax.figure)
    _info(args, f"figure: {args.plot}")


# ------------------------------------------------------------------------------------------
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


def _with_pd_options(fn: Any) -> None:
    import pandas as pd

    with pd.option_context("display.width", 160, "display.precision", 3):
        fn()


# ------------------------------------------------------------------------------------------
# bench
def _cmd_bench(args: argparse.Namespace) -> int:
    from vgcore.bench import format_report, format_table, plot_ratios, run_suite
    from vgcore.bench.workloads import UnknownWorkloadError

    only = [o for o in (args.only or "").split(",") if o] or None
    try:
        threads = sorted({int(t) for t in args.thread_list.split(",") if t.strip()})
    except ValueError:
        msg = f"--threads takes a comma-separated list of counts, got {args.thread_list!r}"
        raise UsageError(msg) from None
    if not threads or min(threads) < 1:
        raise UsageError(f"--threads takes counts >= 1, got {args.thread_list!r}")
    if args.repeat < 1:
        raise UsageError(f"--repeat must be >= 1, got {args.repeat}")
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else print
    try:  # run_suite selects the workloads before any work
        doc = run_suite(
            quick=args.quick,
            only=only,
            repeat=args.repeat,
            sweep=not args.no_sweep,
            memory=not args.no_memory,
            threads=threads,
            budget_s=args.budget,
            log=log,
            trap=not args.no_trap,
        )
    except UnknownWorkloadError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1, default=float)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(format_report(doc) + "\n")
    if args.plot:
        plot_ratios(doc, args.plot)
    print(format_table(doc))
    return 0


# ------------------------------------------------------------------------------------------
#: The description line(s) of each command's --help.
_DESCRIPTIONS = {
    "demo": "Diagnose nine canonical networks (deep MLPs with sigmoid, tanh, ReLU, residual "
    "and LayerNorm blocks; RNN, LSTM, GRU over long sequences), apply and measure every "
    "recommended fix, and write an HTML and Markdown report with figures and data. "
    "Needs no input.",
    "analyze": "Diagnose a model given by flags, the models of a TOML file (--config) or a "
    "trained one (--torch state_dict.pt): where gradients vanish or explode, why, and which "
    "fixes help (each applied and measured unless --no-check). Model flags that do not apply "
    "to the model kind are refused.",
    "report": "Diagnose model(s) as 'analyze' does and write a report folder (report.html, "
    "report.md, figures/, data/). An earlier vgcore report in that folder is replaced.",
    "lyapunov": "Top-k Lyapunov exponents of the step-to-step (layer-to-layer) Jacobians by "
    "the QR method, per sample of the batch: their mean, spread and range. Positive: small "
    "perturbations grow (chaotic); negative: they shrink (ordered).",
    "spectrum": "Spectral radius and largest singular value of every step's (layer's) "
    "Jacobian, per sample, summarised as batch medians and ranges.",
    "singular": "Singular values of the whole input-output Jacobian d h_L / d h_0 per sample: "
    "how far the network is from dynamical isometry (all singular values near 1).",
    "phase": "Mean-field theory of wide random MLPs (no model is built): the critical weight "
    "variance sigma_w^2 where gradients neither vanish nor explode, and the phase (ordered or "
    "chaotic) at your sigma_w^2 and sigma_b^2.",
    "sweep": "Run an analysis over a grid of model settings x seeds on local processes, in "
    "this process (--serial) or on a Dask scheduler. Results go to a Parquet dataset; "
    "running the same command again resumes.",
    "bench": "Time vgcore against PyTorch (eager and torch.func), JAX and NumPy on the "
    "canonical workloads and print the ratios.",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``vgcore`` argument parser (sub-commands)."""
    parser = _Parser(
        prog="vgcore",
        description="Measure how gradients propagate through neural "
        "networks: where they vanish, where they explode, and why.",
    )
    parser.epilog = (
        "Run 'vgcore COMMAND --help' for a command's options. "
        "Exit status: 0 done, 1 failed, 2 bad arguments."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(
        dest="command",
        parser_class=_Parser,
        metavar="COMMAND",
        title="commands",
        help="one of the following ('vgcore demo' needs no input)",
    )

    def common(p: argparse.ArgumentParser, *, report: bool = False) -> None:
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        if report:
            p.add_argument(
                "--format",
                choices=("csv", "parquet"),
                default=None,
                help="format of the raw numbers in the report's data/ folder (default csv)",
            )
            p.add_argument(
                "--force",
                action="store_true",
                help="write the report into a folder that holds other files (its report.md, "
                "report.html, figures/*.png and data/ tables are replaced, other files kept)",
            )

    p = sub.add_parser(
        "demo", help="diagnose canonical networks and write a report (no input needed)"
    )
    p.add_argument("--out", metavar="DIR", help=f"report folder (default ./{DEFAULT_REPORT_DIR})")
    p.add_argument("--no-report", action="store_true", help="print the table only")
    common(p, report=True)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "analyze", help="diagnose a model given by flags, a TOML file or a checkpoint"
    )
    _add_model_args(p)
    p.add_argument("--no-check", action="store_true", help="list fixes without measuring them")
    p.add_argument("--plot", metavar="FILE.png", help="save the gradient-flow figure")
    p.add_argument("--report", metavar="DIR", help="also write a report folder")
    common(p, report=True)
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("report", help="diagnose model(s) and write a report folder")
    _add_model_args(p)
    p.add_argument("--out", metavar="DIR", help=f"report folder (default ./{DEFAULT_REPORT_DIR})")
    p.add_argument(
        "--title",
        default="vgcore gradient-flow report",
        help="title of the report (default 'vgcore gradient-flow report')",
    )
    p.add_argument("--no-check", action="store_true", help="list fixes without measuring them")
    common(p, report=True)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "lyapunov", help="top-k Lyapunov exponents (QR method), batch mean and spread"
    )
    _add_model_args(p)
    p.add_argument(
        "-k", type=int, default=8, help="number of exponents (default 8, at most the state size)"
    )
    p.add_argument(
        "--burn-in",
        type=int,
        default=0,
        metavar="N",
        help="steps (layers) run before the exponents start averaging (default 0)",
    )
    p.add_argument(
        "--qr-every",
        type=int,
        default=1,
        metavar="N",
        help="steps between re-orthonormalisations (default 1)",
    )
    p.add_argument("--plot", metavar="FILE.png", help="save the spectrum and its convergence")
    common(p)
    p.set_defaults(func=_cmd_lyapunov)

    p = sub.add_parser(
        "spectrum", help="spectral radius and sigma_max of each step's / layer's Jacobian"
    )
    _add_model_args(p)
    p.add_argument(
        "--method",
        choices=("auto", "exact", "arnoldi", "power"),
        default="auto",
        help="exact (LAPACK), arnoldi or power (matrix-free); auto: exact up to state size 512",
    )
    p.add_argument("--plot", metavar="FILE.png", help="save the figure (batch median and range)")
    common(p)
    p.set_defaults(func=_cmd_spectrum)

    p = sub.add_parser(
        "singular",
        help="singular values of the whole input-output Jacobian (dynamical isometry)",
    )
    _add_model_args(p)
    p.add_argument("--plot", metavar="FILE.png", help="save the density of log10 sigma")
    common(p)
    p.set_defaults(func=_cmd_singular)

    p = sub.add_parser("phase", help="mean-field phase (ordered / chaotic) and the critical line")
    p.add_argument(
        "--activation", default="tanh", help="activation, e.g. tanh, relu, gelu (default tanh)"
    )
    p.add_argument(
        "--sigma-w2",
        type=float,
        default=None,
        help="your weight variance x fan_in, e.g. 1 (LeCun), 2 (He); without it, only the "
        "critical line is computed",
    )
    p.add_argument("--sigma-b2", type=float, default=0.0, help="your bias variance (default 0)")
    p.add_argument("--plot", metavar="FILE.png", help="save the phase diagram (your point marked)")
    common(p)
    p.set_defaults(func=_cmd_phase)

    p = sub.add_parser("sweep", help="a grid of settings x seeds, on local processes or Dask")
    p.add_argument(
        "--analysis",
        metavar="NAME",
        help="gradient_flow (default), profile, diagnose or mean_field (theory)",
    )
    p.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2|A:B:STEP",
        help="a swept setting (repeatable), e.g. --grid depth=10,20,40",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a fixed setting (repeatable), e.g. --set width=32; the model flags below do the same",
    )
    p.add_argument(
        "--seeds", metavar="N|LIST", help="a count (default 1) or a list, e.g. 3 or 0,1,5"
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help=f"Parquet dataset folder (default ./{DEFAULT_SWEEP_DIR}); re-running resumes",
    )
    p.add_argument(
        "--workers", type=int, metavar="N", help="local worker processes (default: usable CPUs)"
    )
    p.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="run on this Dask scheduler (needs pip install 'vgcore[dask]')",
    )
    p.add_argument("--serial", action="store_true", help="run in this process")
    p.add_argument("--retry-failed", action="store_true", help="run failed points again")
    p.add_argument(
        "--config",
        metavar="FILE.toml",
        help="a [sweep] table: analysis, seeds, [sweep.grid], [sweep.fixed]",
    )
    _add_model_args(p, sources=False)
    common(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "bench", help="benchmark vgcore against PyTorch, JAX and NumPy on the canonical workloads"
    )
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run, ~1 minute)")
    p.add_argument(
        "--repeat", type=int, default=5, metavar="N", help="timed runs per setting (default 5)"
    )
    p.add_argument(
        "--only", metavar="NAMES", help="comma-separated workload name filters (e.g. bptt,N1024)"
    )
    p.add_argument(
        "--threads",
        dest="thread_list",
        default="1,2",
        metavar="LIST",
        help="thread counts tried for vgcore and every peer; each is timed at its best "
        "(default 1,2)",
    )
    p.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="timed seconds per setting, after which fewer than --repeat runs are made "
        "(default 1 with --quick, else 6)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the full results as JSON")
    p.add_argument("--markdown", metavar="FILE", help="also write a markdown report")
    p.add_argument("--plot", metavar="FILE.png", help="also plot the ratios to each peer")
    p.add_argument("--no-sweep", action="store_true", help="skip the N = 16, 64, 1024 size sweep")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--no-trap", action="store_true", help="skip the runs with the other core busy")
    p.set_defaults(func=_cmd_bench)
    for name, p in sub.choices.items():
        p.description = _DESCRIPTIONS[name]
    return parser


def _validate(args: argparse.Namespace) -> None:
    for key in (
        "depth",
        "width",
        "hidden_size",
        "input_size",
        "steps",
        "batch",
        "repeat",
        "workers",
        "threads",
        "k",
        "qr_every",
    ):
        v = getattr(args, key, None)
        if v is not None and v < 1:
            flag = "-k" if key == "k" else f"--{key.replace('_', '-')}"
            raise UsageError(f"{flag} must be >= 1, got {v}")
    burn_in = getattr(args, "burn_in", None)
    if burn_in is not None and burn_in < 0:
        raise UsageError(f"--burn-in must be >= 0, got {burn_in}")
    if getattr(args, "model", None) is not None and args.model not in MODEL_KINDS:
        raise UsageError(f"--model must be one of {', '.join(MODEL_KINDS)}, got {args.model!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 failure, 2 bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.version:
            import vgcore

            print(vgcore.__version__)
            return 0
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            raise UsageError("a command is required (see 'vgcore --help')")
        _validate(args)
        _check_options(args)
        _check_outputs(args)
        return int(args.func(args))
    except UsageError as exc:
        print(f"vgcore: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print("vgcore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. 'vgcore ... | head': the reader left, nothing to say
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout is not a real file
            pass
        return 141
    except (Failure, ImportError) as exc:
        print(f"vgcore: failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"vgcore: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

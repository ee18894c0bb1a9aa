"""Model flags, configs and checkpoints: which settings apply to which model kinds, and the
models a command analyses."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vgcore._modelspec import MODEL_KINDS
from vgcore.cli._common import Failure, UsageError

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
    if model.stacked:
        raise UsageError(
            f"{args.torch} holds a stacked or bidirectional network ({model!r}); the commands "
            "diagnose MLPs and single-layer recurrent models (diagnose covers one layer at a "
            "time): from Python, vgcore.gradient_flow(model, x) measures every layer of it"
        )
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

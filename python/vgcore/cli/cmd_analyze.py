"""`vgcore analyze --module PKG.MOD:FACTORY --input-shape 8,64,256`: diagnose any torch module
and write the report (models given by flags, a TOML file or a checkpoint: ``cmd_demo``)."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from vgcore.cli._common import DEFAULT_REPORT_DIR, Failure, UsageError, _emit_json, _info

__all__ = ["add_module_args", "check_module_args", "load_module", "parse_shape"]

#: Model flags that still apply with --module (the module defines everything else).
_KEPT = ("dtype", "seed", "name")


def add_module_args(p: argparse.ArgumentParser) -> None:
    """The options of a torch module given by import path."""
    g = p.add_argument_group(
        "torch module",
        "Any torch.nn.Module, diagnosed per block (vgcore.TorchModel) with random standard "
        "normal inputs; --seed seeds the inputs, --dtype converts the module. Model flags "
        "other than --dtype, --seed and --name do not apply.",
    )
    g.add_argument(
        "--module",
        metavar="PKG.MOD:FACTORY",
        help="a callable returning the module (called without arguments), or an attribute "
        "that is a module instance, e.g. mypkg.nets:make_resnet",
    )
    g.add_argument(
        "--input-shape",
        metavar="B,D1,...",
        help="shape of the random input batch, e.g. 8,64,256 (required with --module)",
    )
    g.add_argument(
        "--blocks",
        metavar="NAME,NAME",
        help="submodule names that start the blocks, as in module.named_modules() "
        "(default: found automatically)",
    )
    g.add_argument(
        "--out",
        "--output",
        dest="out",
        metavar="DIR",
        help=f"report folder (same as --report; with --module default ./{DEFAULT_REPORT_DIR})",
    )


def parse_shape(text: str, flag: str = "--input-shape") -> tuple[int, ...]:
    """``"8,64,256"`` -> ``(8, 64, 256)``; a UsageError naming ``flag`` otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise UsageError(
            f"{flag} must be comma-separated positive integers (the batch first), e.g. "
            f"8,64,256, got {text!r}"
        )
    return shape


def check_module_args(args: argparse.Namespace) -> None:
    """Checks of ``analyze``'s torch-module options, before any work; sets ``args.report``
    from ``--out`` (and to the default folder with ``--module``)."""
    out = getattr(args, "out", None)
    if out is not None:
        if args.report is not None:
            raise UsageError("give the report folder once: --out (--output) or --report")
        args.report = out
    if args.module is None:
        for key in ("input_shape", "blocks"):
            if getattr(args, key, None) is not None:
                raise UsageError(f"--{key.replace('_', '-')} applies only with --module")
        return
    from vgcore.cli.model_flags import _MODEL_FLAGS, _flag

    for key in (*_MODEL_FLAGS, "bias", "config", "torch"):
        if key in _KEPT or getattr(args, key, None) is None:
            continue
        raise UsageError(
            f"{_flag(key)} does not apply with --module: the module defines the model"
            + (" (the batch is the first entry of --input-shape)" if key == "batch" else "")
        )
    _check_spec(args.module)
    if args.input_shape is None:
        raise UsageError("--module needs --input-shape, e.g. --input-shape 8,64,256")
    args.input_shape = parse_shape(args.input_shape)
    if args.dtype is not None and args.dtype not in ("float32", "float64"):
        raise UsageError(f"--dtype must be float32 or float64, got {args.dtype!r}")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.blocks is not None:
        names = [n.strip() for n in args.blocks.split(",")]
        if not all(names):
            raise UsageError(
                f"--blocks must be comma-separated submodule names, got {args.blocks!r}"
            )
        args.blocks = names
    if args.report is None:
        args.report = DEFAULT_REPORT_DIR


def _check_spec(spec: str, flag: str = "--module") -> tuple[str, str]:
    modname, sep, attr = str(spec).partition(":")
    if not sep or not modname or not attr.strip():
        raise UsageError(
            f"{flag} must be PKG.MOD:FACTORY (an importable module, a colon, then a callable "
            f"returning a torch.nn.Module or a module instance), got {spec!r}"
        )
    return modname, attr.strip()


def load_module(spec: str, flag: str = "--module") -> Any:
    """The ``torch.nn.Module`` named by ``PKG.MOD:ATTR``: ``ATTR`` (dotted attributes allowed)
    is called without arguments when it is not itself a module.

    Raises
    ------
    UsageError
        Naming ``flag``: no colon, a module that cannot be imported, a missing attribute, or
        something that is not (and does not return) a ``torch.nn.Module``.
    Failure
        The factory raised.
    """
    modname, attr = _check_spec(spec, flag)
    from torch import nn

    try:
        mod = importlib.import_module(modname)
    except Exception as exc:
        raise UsageError(
            f"{flag} {spec}: cannot import {modname!r} ({type(exc).__name__}: {exc}); "
            "is its folder on PYTHONPATH?"
        ) from None
    obj: Any = mod
    for part in attr.strip().split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{flag} {spec}: {modname!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise UsageError(
            f"{flag} {spec}: {attr!r} is a {type(obj).__name__}, not a torch.nn.Module or a "
            "callable returning one"
        )
    try:
        made = obj()
    except Exception as exc:
        raise Failure(
            f"{flag} {spec}: calling {attr}() failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(made, nn.Module):
        raise UsageError(
            f"{flag} {spec}: {attr}() returned a {type(made).__name__}, not a torch.nn.Module"
        )
    return made


def _input(module: Any, shape: tuple[int, ...], seed: int) -> Any:
    """Standard normal inputs of ``shape`` in the module's dtype and on its device (drawn on
    the CPU in float64 from ``seed``, so they do not depend on the device)."""
    import torch

    from vgcore.torchmodel._hygiene import HALF_DTYPES, module_dtype

    dt, dev = module_dtype(module)
    if dt in HALF_DTYPES or not dt.is_floating_point:
        dt = torch.float32
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dt, device=dev)


def _cmd_analyze(args: argparse.Namespace) -> int:
    """``vgcore analyze``: a torch module with --module, else the models of the flags."""
    if getattr(args, "module", None) is None:
        from vgcore.cli.cmd_demo import _cmd_analyze as native

        return native(args)
    import torch

    from vgcore.cli.cmd_demo import _write_report
    from vgcore.diagnose import diagnose

    module = load_module(args.module)
    if args.dtype is not None:
        module = module.to(getattr(torch, args.dtype))
    seed = 0 if args.seed is None else args.seed
    x = _input(module, args.input_shape, seed)
    try:
        d = diagnose(
            module,
            x,
            name=args.name or args.module,
            check=not args.no_check,
            seed=seed,
            blocks=args.blocks or "auto",
        )
    except ValueError as exc:
        msg = str(exc)
        if args.blocks and "blocks" in msg:
            raise UsageError(f"--blocks: {msg.removeprefix('blocks: ')}") from None
        raise Failure(f"{args.module} on an input of shape {args.input_shape}: {exc}") from exc
    except RuntimeError as exc:  # the module's forward refused the input
        raise Failure(
            f"{args.module} on an input of shape {args.input_shape} "
            f"(--input-shape {','.join(map(str, args.input_shape))}): {exc}"
        ) from exc
    doc: dict[str, Any] = {"diagnoses": [d.to_dict()]}
    if not args.json:
        print(d.summary())
        print()
    if args.plot:
        from vgcore import plotting
        from vgcore.cli.outputs import _save_figure

        plt = plotting.require_matplotlib()
        fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
        plotting.plot_diagnosis(d, ax=ax)
        _save_figure(args, fig)
    rep = _write_report(args, [d], args.report, f"vgcore analysis: {args.module}")
    _info(args, f"report: {rep.html}")
    doc["report"] = str(rep.html)
    if args.json:
        _emit_json(doc)
    return 0

"""`vgcore demo`, `vgcore analyze`, `vgcore report`: diagnoses and reports."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vgcore.cli._common import (
    _DIAG_HEADER,
    DEFAULT_REPORT_DIR,
    _diag_row,
    _emit_json,
    _info,
    _table,
)
from vgcore.cli.model_flags import _models
from vgcore.cli.outputs import _clear_report_dir


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


def _demo_extras(diags: list[Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """Further figures from the optional analyses that are available (``inputs``: each
    diagnosis's input by name)."""
    from vgcore import _summaries

    return _summaries.demo_extras(diags, inputs=inputs)


def _training_demo(args: argparse.Namespace, out: Any) -> None:
    """A deep sigmoid MLP trained on scikit-learn's digits under several recipes, watched by
    vgcore.watch (a few seconds), in its own report beside the main one; needs torch."""
    import importlib.util
    import logging

    if importlib.util.find_spec("torch") is None:
        _info(args, "training comparison skipped: it needs PyTorch (pip install torch)")
        return
    from vgcore.watch import demo, write_watch_report

    logging.getLogger("vgcore.watch").setLevel(logging.ERROR)  # the alerts go in the report
    runs, acc, data = demo.train_comparison(150, every=5)
    rep = write_watch_report(
        runs, out, title=f"Watching a deep sigmoid MLP train ({data})", figures=True
    )
    best = max(acc, key=lambda k: acc[k])
    _info(
        args,
        f"training comparison ({data}): test accuracy "
        + ", ".join(f"{k} {v:.0%}" for k, v in acc.items())
        + f"; best {best}; report: {rep.html}",
    )


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
            _demo_extras(diags, {name: x for name, _, x in cases}),
        )
        report = str(rep.html)
        _info(
            args,
            f"\nreport: {rep.html} (also {rep.markdown.name}, {len(rep.figures)} figures, "
            f"data in {rep.out / 'data'})",
        )
        _training_demo(args, rep.out / "training")
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

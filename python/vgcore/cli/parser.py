"""The `vgcore` argument parser: one sub-command per command module."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from vgcore._modelspec import MODEL_KINDS
from vgcore.cli._common import DEFAULT_REPORT_DIR, DEFAULT_SWEEP_DIR, UsageError, _Parser
from vgcore.cli.cmd_analyze import _cmd_analyze, add_module_args, check_module_args
from vgcore.cli.cmd_bench import _cmd_bench
from vgcore.cli.cmd_demo import _cmd_demo, _cmd_report
from vgcore.cli.cmd_jacobian import _cmd_lyapunov, _cmd_singular, _cmd_spectrum
from vgcore.cli.cmd_phase import _cmd_phase
from vgcore.cli.cmd_sweep import _cmd_sweep
from vgcore.cli.model_flags import _add_model_args

#: The function that runs each command (looked up at run time, so it can be replaced in tests).
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _cmd_demo,
    "analyze": _cmd_analyze,
    "report": _cmd_report,
    "lyapunov": _cmd_lyapunov,
    "spectrum": _cmd_spectrum,
    "singular": _cmd_singular,
    "phase": _cmd_phase,
    "sweep": _cmd_sweep,
    "bench": _cmd_bench,
}


#: The description line(s) of each command's --help.
_DESCRIPTIONS = {
    "demo": "Diagnose nine canonical networks (deep MLPs with sigmoid, tanh, ReLU, residual "
    "and LayerNorm blocks; RNN, LSTM, GRU over long sequences), apply and measure every "
    "recommended fix, and write an HTML and Markdown report with figures and data. "
    "Needs no input.",
    "analyze": "Diagnose a model given by flags, the models of a TOML file (--config), a "
    "trained one (--torch state_dict.pt) or any torch.nn.Module (--module PKG.MOD:FACTORY "
    "--input-shape 8,64,256, per block, with a report): where gradients vanish or explode, "
    "why, and which fixes help (each applied to a copy and measured unless --no-check). "
    "Model flags that do not apply to the model kind are refused.",
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

    p = sub.add_parser(
        "analyze",
        help="diagnose a model given by flags, a TOML file, a checkpoint or a torch module",
    )
    _add_model_args(p)
    p.add_argument("--no-check", action="store_true", help="list fixes without measuring them")
    p.add_argument("--plot", metavar="FILE.png", help="save the gradient-flow figure")
    p.add_argument("--report", metavar="DIR", help="also write a report folder")
    add_module_args(p)
    common(p, report=True)

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

    p = sub.add_parser(
        "singular",
        help="singular values of the whole input-output Jacobian (dynamical isometry)",
    )
    _add_model_args(p)
    p.add_argument("--plot", metavar="FILE.png", help="save the density of log10 sigma")
    common(p)

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
    if args.command == "analyze":
        check_module_args(args)
    if getattr(args, "model", None) is not None and args.model not in MODEL_KINDS:
        raise UsageError(f"--model must be one of {', '.join(MODEL_KINDS)}, got {args.model!r}")

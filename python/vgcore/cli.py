"""Command-line interface: ``vgcore demo`` and friends."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np


def _demo_cases(depth: int, steps: int) -> list[tuple[str, object, np.ndarray]]:
    from vgcore import GRU, LSTM, MLP, RNN

    rng = np.random.default_rng(0)
    width, batch = 128, 32
    x_mlp = rng.normal(size=(batch, width))
    x_seq = rng.normal(size=(steps, batch, 32))
    sizes = [width] * (depth + 1)
    return [
        (f"MLP sigmoid, default init, L={depth}", MLP.from_sizes(sizes, "sigmoid"), x_mlp),
        (f"MLP tanh, default init, L={depth}", MLP.from_sizes(sizes, "tanh"), x_mlp),
        (f"MLP relu, default init, L={depth}", MLP.from_sizes(sizes, "relu"), x_mlp),
        (f"RNN tanh, T={steps}", RNN.from_sizes(32, width), x_seq),
        (f"LSTM, T={steps}", LSTM.from_sizes(32, width), x_seq),
        (f"GRU, T={steps}", GRU.from_sizes(32, width), x_seq),
    ]


def _cmd_demo(args: argparse.Namespace) -> int:
    import vgcore

    print(f"vgcore {vgcore.__version__}: gradient flow on canonical cases")
    header = f"{'case':<40} {'log10 ||g_out||':>16} {'log10 ||g_in||':>15} {'gain (log10)':>13} {'sat.':>6} {'ms':>7}"
    print(header)
    print("-" * len(header))
    for name, model, x in _demo_cases(args.depth, args.steps):
        t0 = time.perf_counter()
        flow = vgcore.gradient_flow(model, x)  # type: ignore[arg-type]
        ms = 1e3 * (time.perf_counter() - t0)
        lg = flow.log10_grad_norms
        print(
            f"{name:<40} {lg[-1]:>16.2f} {lg[0]:>15.2f} {lg[0] - lg[-1]:>13.2f} "
            f"{np.mean(flow.saturation):>6.1%} {ms:>7.1f}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vgcore", description="Measure how gradients propagate through neural networks."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="gradient flow of canonical networks, on defaults")
    demo.add_argument("--depth", type=int, default=50, help="MLP depth (default 50)")
    demo.add_argument("--steps", type=int, default=200, help="sequence length (default 200)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import vgcore

        print(vgcore.__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (ValueError, TypeError) as exc:
        print(f"vgcore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

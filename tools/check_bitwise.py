#!/usr/bin/env python
"""Bit-identity check of the canonical workloads, for refactorings that must change no number.

Runs every analysis (gradient flow with parameter gradients and kept gradients, Lyapunov
exponents, Jacobian singular values and spectrum) on a fixed set of models of every kind, in
float32 and float64, and stores every array of every result; `--compare` reruns them and reports
each array that is not bit-identical (NaN equal to NaN) to the stored run.

    python tools/check_bitwise.py --save /tmp/before.npz     # on the old build
    python tools/check_bitwise.py --compare /tmp/before.npz  # on the new build; exit 1 if any differ
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import vgcore


def _models() -> Iterator[tuple[str, Any, np.ndarray]]:
    rng = np.random.default_rng(0)
    x_mlp = rng.standard_normal((16, 32))
    for act in ("tanh", "relu", "gelu", "sigmoid"):
        yield f"mlp-{act}", vgcore.MLP.from_sizes([32] + [32] * 12, act, seed=1), x_mlp
    yield "mlp-residual", vgcore.MLP.from_sizes([32] + [32] * 12, "relu", residual=True), x_mlp
    yield "mlp-highway", vgcore.MLP.from_sizes([32] + [32] * 12, "tanh", highway=True), x_mlp
    yield "mlp-layernorm", vgcore.MLP.from_sizes([32] + [32] * 12, "tanh", norm="layernorm"), x_mlp
    bn = vgcore.MLP.from_sizes([32] + [32] * 6, "relu", norm="batchnorm", seed=2)
    yield "mlp-batchnorm-train", bn, x_mlp
    x_seq = 0.5 * rng.standard_normal((40, 4, 8))
    yield "rnn-tanh", vgcore.RNN.from_sizes(8, 32, nonlinearity="tanh", seed=3), x_seq
    yield "rnn-relu", vgcore.RNN.from_sizes(8, 32, nonlinearity="relu", seed=4), x_seq
    yield "lstm", vgcore.LSTM.from_sizes(8, 32, seed=5), x_seq
    yield "gru", vgcore.GRU.from_sizes(8, 32, seed=6), x_seq
    yield "lstm-nobias", vgcore.LSTM.from_sizes(8, 32, seed=7, bias=False), x_seq
    # eval-mode BatchNorm: running statistics, a per-sample map
    bne = vgcore.MLP.from_sizes([32] + [32] * 6, "relu", norm="batchnorm", seed=2)
    bne.running_means = [0.1 * rng.standard_normal(32) for _ in range(6)]
    bne.running_vars = [1.0 + rng.random(32) for _ in range(6)]
    yield "mlp-batchnorm-eval", bne, x_mlp
    # stacked and bidirectional recurrent networks
    yield "lstm-2layer", vgcore.LSTM.from_sizes(8, 16, num_layers=2, seed=8), x_seq
    yield "gru-3layer", vgcore.GRU.from_sizes(8, 16, num_layers=3, seed=9), x_seq
    yield (
        "rnn-relu-2layer",
        vgcore.RNN.from_sizes(8, 16, num_layers=2, nonlinearity="relu", seed=10),
        x_seq,
    )
    bi = vgcore.LSTM.from_sizes(8, 16, num_layers=2, bidirectional=True, seed=11)
    yield "lstm-2layer-bidirectional", bi, x_seq
    # state-space layers (the generic sweep) and, where the build has them, their stacks
    yield "ssm-complex", vgcore.SSM.from_sizes(8, 16, seed=12), x_seq
    yield "ssm-real", vgcore.SSM.from_sizes(8, 16, init="s4d_real", seed=13), x_seq
    yield "selective-ssm", vgcore.SelectiveSSM.from_sizes(8, 4, expand=2, seed=14), x_seq
    if hasattr(vgcore, "SSMStack"):
        yield "ssm-stack", vgcore.SSMStack.from_sizes(8, 4, 2, expand=2, seed=15), x_seq


def _analyses(model: Any) -> Iterator[tuple[str, Callable[..., Any]]]:
    if model.flow_sweep == "generic":  # state gradients only (no parameter or input norms)
        yield "flow", lambda x, dt: vgcore.gradient_flow(model, x, dtype=dt, keep_grads=True)
        yield "lyapunov", lambda x, dt: vgcore.lyapunov(model, x, k=4, dtype=dt)
        yield (
            "singular",
            lambda x, dt: vgcore.jacobian_singular_values(model, x[..., :2, :], dtype=dt),
        )
        return
    yield (
        "flow",
        lambda x, dt: vgcore.gradient_flow(
            model, x, dtype=dt, param_grads=True, keep_grads=True, keep_states=True
        ),
    )
    if model.axis == "time":
        yield (
            "flow-input",
            lambda x, dt: (
                vgcore.gradient_flow(model, x, dtype=dt, input_grads=True).log_input_grad_norms
            ),
        )
    if model.jacobian_obstacle():
        return  # e.g. train-mode BatchNorm couples the batch: no per-sample Jacobian
    yield "lyapunov", lambda x, dt: vgcore.lyapunov(model, x, k=4, dtype=dt)
    yield "singular", lambda x, dt: vgcore.jacobian_singular_values(model, x[..., :2, :], dtype=dt)
    yield "spectrum", lambda x, dt: vgcore.jacobian_spectrum(model, x[..., :2, :], dtype=dt)


def _arrays(prefix: str, obj: Any, out: dict[str, np.ndarray], depth: int = 0) -> None:
    if depth > 3 or obj is None or callable(obj):
        return
    if isinstance(obj, (np.ndarray, float, int, np.floating, np.integer)) and not isinstance(
        obj, bool
    ):
        out[prefix] = np.asarray(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _arrays(f"{prefix}.{k}", v, out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _arrays(f"{prefix}[{i}]", v, out, depth + 1)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _arrays(f"{prefix}.{f.name}", getattr(obj, f.name), out, depth + 1)


def run() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, model, x in _models():
        for dt in (np.float32, np.float64):
            for what, fn in _analyses(model):
                _arrays(f"{name}/{np.dtype(dt).name}/{what}", fn(x, dt), out)
    return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return a.tobytes() == b.tobytes() or bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", metavar="FILE.npz", help="run the workloads and store every array")
    g.add_argument("--compare", metavar="FILE.npz", help="run them and compare with a stored run")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    got = run()
    print(f"{len(got)} arrays from the canonical workloads in {time.perf_counter() - t0:.1f} s")
    if a.save:
        np.savez(a.save, **got)
        print(f"saved to {a.save}")
        return 0
    ref = dict(np.load(a.compare))
    missing, extra = sorted(set(ref) - set(got)), sorted(set(got) - set(ref))
    differ = [k for k in sorted(set(ref) & set(got)) if not _same(ref[k], got[k])]
    for k in differ:
        r, g2 = ref[k].astype(np.float64), got[k].astype(np.float64)
        with np.errstate(all="ignore"):
            rel = np.nanmax(np.abs(r - g2) / np.maximum(np.abs(r), 1e-300)) if r.size else 0.0
        print(f"DIFFERS {k}: max relative difference {rel:.3g}")
    for k in missing:
        print(f"MISSING {k}")
    for k in extra:
        print(f"NEW     {k}")
    same = len(ref) - len(differ) - len(missing)
    print(f"{same} of {len(ref)} stored arrays bit-identical")
    return 1 if differ or missing else 0


if __name__ == "__main__":
    sys.exit(main())

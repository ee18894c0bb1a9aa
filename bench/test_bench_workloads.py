"""pytest-benchmark over the canonical workloads of ``vgcore bench`` (vgcore.bench.workloads).

One group per workload: vgcore at 1 and 2 threads beside every installed in-process peer at
each of its settings (PyTorch eager / torch.func at 1 and 2 threads, with and without flushed
denormals where they matter; NumPy at 1 and 2 BLAS threads; JAX jit in this process at XLA's
default threads, since its thread flags are read once at import; ``vgcore bench`` times JAX
pinned and unpinned in worker processes). Every benchmark checks its answer against vgcore's;
warm-up (and JAX compilation) runs outside the timer.

Sizes are the quick ones unless ``VGCORE_BENCH_FULL=1``; the default test run executes each case
once, untimed (``--benchmark-disable``). Time them:

    python -m pytest bench --benchmark-enable                       # quick sizes
    VGCORE_BENCH_FULL=1 python -m pytest bench --benchmark-enable   # the issue's sizes
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
import pytest

from vgcore.bench import peers as P
from vgcore.bench import workloads as W
from vgcore.bench.machine import numpy_threads, set_numpy_threads

QUICK = os.environ.get("VGCORE_BENCH_FULL") != "1"
ROUNDS = 3 if QUICK else 5
FACTORIES = {
    "mlp-flow": lambda q: W.mlp_flow(q),
    **{f"bptt-{k}": (lambda q, k=k: W.bptt(k, q)) for k in ("lstm", "gru", "rnn")},
    **{f"lyapunov-{k}": (lambda q, k=k: W.lyapunov(k, q)) for k in ("lstm", "gru", "rnn")},
    "spectral-radius": lambda q: W.spectral_radius(q),
    "singular-values": lambda q: W.singular_values(q),
}


@cache
def workload(name: str, quick: bool = QUICK) -> W.Workload:
    return FACTORIES[name](quick)


def _cases() -> list[tuple[str, str, dict]]:
    """(workload, implementation, setting) for every case; the peers come from the quick
    workloads (the same peers as at full size)."""
    out = []
    for name in FACTORIES:
        out += [(name, "vgcore", {"threads": t}) for t in (1, 2)]
        if workload(name, True).unscaled is not None:  # the log scale's cost, beside it
            out += [(name, "vgcore unscaled", {"threads": t}) for t in (1, 2)]
        for peer in workload(name, True).peers:
            if peer.in_process:
                out += [(name, peer.name, s) for s in peer.settings]
            else:  # a JAX peer: here in-process, at XLA's default threads
                out.append((name, peer.name, {"threads": 0}))
    return out


CASES = _cases()


def _id(case: tuple[str, str, dict]) -> str:
    name, impl, s = case
    return f"{name}-{impl.replace(' ', '_')}-{P.setting_label(s).replace(' ', '_')}"


@pytest.fixture
def restore_threads():
    torch = P.torch_or_none()
    saved = (torch.get_num_threads() if torch else None, numpy_threads())
    yield
    if torch is not None:
        torch.set_num_threads(saved[0])
        torch.set_flush_denormal(False)
    if saved[1] is not None:
        set_numpy_threads(saved[1])


@cache
def _reference(name: str, steps: int | None) -> np.ndarray:
    w = workload(name)
    if steps and steps < w.steps:
        assert w.reference is not None
        return np.asarray(w.reference(steps), np.float64)
    return np.asarray(w.vgcore(1), np.float64)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_bench(benchmark, case, restore_threads):
    name, impl, setting = case
    w = workload(name)
    benchmark.group = w.label
    benchmark.extra_info.update(impl=impl, setting=P.setting_label(setting), flops=w.flops)
    if impl == "vgcore":
        th = setting["threads"]
        out = benchmark.pedantic(w.vgcore, args=(th,), rounds=ROUNDS, warmup_rounds=1)
        out = np.asarray(out, np.float64)
        ref = _reference(name, None)
        assert out.shape == ref.shape
        # the thread count changes the work split, not the answer
        assert W.agreement(w.compare, ref, out if w.compare != "curve" else np.exp(out)) < 1e-5
        return
    if impl == "vgcore unscaled":  # rescale=False: the plain product, as the peers compute it
        assert w.unscaled is not None
        th = setting["threads"]
        out = np.asarray(
            benchmark.pedantic(w.unscaled, args=(th,), rounds=ROUNDS, warmup_rounds=1), np.float64
        )
        ref = _reference(name, None)
        # where it is in range it is the same answer; below float32's range it underflows
        assert W.agreement(w.compare, ref, np.exp(out)) < 1e-5
        benchmark.extra_info["coverage"] = W.coverage(out, logs=True)
        return
    peer = next(p for p in w.peers if p.name == impl)
    if peer.in_process:
        if peer.configure is not None:
            peer.configure(**setting)
        fn = peer.fn
    else:
        pytest.importorskip("jax")
        fn = peer.in_process_fn()
    out = np.asarray(benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1), np.float64)
    agree = W.agreement(w.compare, _reference(name, peer.steps), out)
    benchmark.extra_info["agreement"] = agree
    assert agree < w.tol, f"{impl} disagrees with vgcore: {agree:.2e} > {w.tol:g}"

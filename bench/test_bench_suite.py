"""pytest-benchmark over the canonical workloads of ``vgcore bench`` (vgcore.bench.workloads):
vgcore and each in-process peer (PyTorch eager, torch.func, NumPy) in the same group, every
benchmark asserting its answer against vgcore's.

Sizes are the quick ones unless ``VGCORE_BENCH_FULL=1`` (CI runs each case once, untimed).
JAX peers are timed in a subprocess (XLA reads its thread flags at import), so they appear in
``vgcore bench``, not here. Run: ``python -m pytest bench --benchmark-enable``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from vgcore.bench import workloads as W

QUICK = os.environ.get("VGCORE_BENCH_FULL") != "1"
FACTORIES = {
    "mlp-flow": lambda: W.mlp_flow(QUICK),
    **{f"bptt-{k}": (lambda k=k: W.bptt(k, QUICK)) for k in ("gru", "rnn")},
    **{
        f"lyapunov-{k}": (lambda k=k: W.lyapunov(k, QUICK, jacrev=False))
        for k in ("lstm", "gru", "rnn")
    },
    "spectral-radius": lambda: W.spectral_radius(QUICK),
    "singular-values": lambda: W.singular_values(QUICK),
}
# Finite-time Lyapunov estimates from the same initial tangents agree to float32 rounding
# accumulated over the run; curves and spectra to a few float32 ulps per step.
TOL = {"curve": 2e-3, "values": 1e-3, "logs": 1e-3}


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def workload(request):
    return FACTORIES[request.param]()


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    return request.param


def test_vgcore(benchmark, workload, threads):
    benchmark.group = workload.label
    out = benchmark(workload.vgcore, threads)
    assert np.isfinite(out).all() and out.size > 0


def test_peers(benchmark, workload, threads):
    """Every in-process peer at this thread count (the first setting of each kind)."""
    peers = [p for p in workload.peers if hasattr(p, "fn")]
    if not peers:
        pytest.skip("no in-process peer installed for this workload")
    benchmark.group = workload.label
    ours = workload.vgcore(threads)
    for peer in peers[1:]:  # the others run once, checked but untimed
        setting = next(
            (s for s in peer.settings if s.get("threads") in (threads, 0)), peer.settings[0]
        )
        _, out = peer.measure(setting, 1)
        _check(workload, ours, out)
    peer = peers[0]
    if peer.configure is not None:
        peer.configure(threads=threads)
    out = np.asarray(benchmark(peer.fn), np.float64)
    _check(workload, ours, out)


def _check(workload, ours, out):
    n = len(out)
    assert (
        W.agreement(workload.compare, np.asarray(ours[:n], np.float64), out) < TOL[workload.compare]
    )

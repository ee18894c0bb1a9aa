"""Threads, GIL release, progress callbacks, interruption and the package metadata."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import vgcore
from vgcore import LSTM


def test_version():
    assert isinstance(vgcore.__version__, str) and vgcore.__version__.count(".") >= 2


def _long_lstm():
    rng = np.random.default_rng(0)
    N = 64
    model = LSTM(rng.normal(0, 0.1, (4 * N, 8)), rng.normal(0, 0.1, (4 * N, N)))
    x = rng.normal(size=(3000, 8, 8))
    return model, x


def test_gil_is_released_during_analysis():
    model, x = _long_lstm()
    counter = 0
    done = threading.Event()

    def spin():
        nonlocal counter
        while not done.is_set():
            counter += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        start = time.perf_counter()
        vgcore.gradient_flow(model, x, num_threads=1)
        elapsed = time.perf_counter() - start
    finally:
        done.set()
        t.join()
    # A Python thread holding the GIL would make no progress at all while the C++ call
    # runs if the GIL were not released; expect a healthy count.
    assert elapsed > 0.02
    assert counter > 1000


def test_progress_callback_and_interrupt():
    model, x = _long_lstm()
    calls = []

    def progress(done, total):
        calls.append((done, total))

    vgcore.gradient_flow(model, x, progress=progress, num_threads=2)
    assert calls and calls[-1][1] == 2 * x.shape[0]
    assert all(0 <= d <= t for d, t in calls)

    class Stop(Exception):
        pass

    def stopper(done, total):
        raise Stop("user stop")

    with pytest.raises(Stop, match="user stop"):
        vgcore.gradient_flow(model, x, progress=stopper, num_threads=2)


def test_set_num_threads():
    before = vgcore.get_num_threads()
    try:
        vgcore.set_num_threads(1)
        assert vgcore.get_num_threads() == 1
        with pytest.raises(ValueError, match="positive integer"):
            vgcore.set_num_threads(0)
    finally:
        vgcore.set_num_threads(None)
    assert vgcore.get_num_threads() == before


def test_ctrl_c_interrupts_a_long_call(sigint_raises):
    """_thread.interrupt_main() is what Ctrl-C does: the C++ loop notices within ~0.1 s.

    The latency is measured from the moment the interrupt is sent, not from the call's start,
    so a slow set-up (a sanitized build, a loaded machine) does not count against it; the
    uninterrupted call takes several seconds more than the bound allows."""
    import _thread

    rng = np.random.default_rng(0)
    N = 64
    model = LSTM(rng.normal(0, 0.1, (4 * N, 8)), rng.normal(0, 0.1, (4 * N, N)))
    x = rng.normal(size=(100_000, 4, 8))  # several seconds of work
    sent: list[float] = []

    def ctrl_c() -> None:
        sent.append(time.perf_counter())
        _thread.interrupt_main()

    timer = threading.Timer(0.3, ctrl_c)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            vgcore.gradient_flow(model, x, num_threads=2)
    finally:
        timer.cancel()
    assert time.perf_counter() - sent[0] < 1.5


def test_workspace_reuse_gives_identical_results():
    """Cached scratch buffers are reused uninitialised: results must not depend on them."""
    from vgcore import GRU, MLP

    rng = np.random.default_rng(5)
    gru = GRU(rng.normal(0, 0.3, (12, 3)), rng.normal(0, 0.3, (12, 4)))
    mlp = MLP([rng.normal(size=(5, 5))] * 3, [rng.normal(size=5)] * 3, "tanh", norm="layernorm")
    x = rng.normal(size=(6, 3, 3))
    xm = rng.normal(size=(7, 5))
    vgcore.release_memory()
    fresh = vgcore.gradient_flow(gru, x, keep_grads=True)
    fresh_m = vgcore.gradient_flow(mlp, xm, keep_grads=True, param_grads=True)
    # Dirty the pool with other data of similar sizes, then repeat.
    vgcore.gradient_flow(gru, x * 7 + 3, h0=np.full((3, 4), 0.9))
    vgcore.gradient_flow(mlp, xm * -5)
    again = vgcore.gradient_flow(gru, x, keep_grads=True)
    again_m = vgcore.gradient_flow(mlp, xm, keep_grads=True, param_grads=True)
    np.testing.assert_array_equal(fresh.grads, again.grads)
    np.testing.assert_array_equal(fresh.log_grad_norms, again.log_grad_norms)
    np.testing.assert_array_equal(fresh_m.log_grad_norms, again_m.log_grad_norms)
    for k, v in fresh_m.log_param_grad_norms.items():
        np.testing.assert_array_equal(v, again_m.log_param_grad_norms[k])
    assert vgcore.release_memory() > 0
    assert vgcore.release_memory() == 0
    with pytest.raises(ValueError, match="non-negative integer"):
        vgcore.set_workspace_limit(-1)


_CORE_SCRIPT = r"""
import os, sys
import vgcore
from vgcore._loader import blas_corename
print(blas_corename(), os.environ.get("OPENBLAS_CORETYPE", "<unset>"))
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 kernel names")
@pytest.mark.parametrize("outer", [None, "Sandybridge"])
def test_vgcore_blas_coretype_picks_our_kernels_and_leaves_the_environment(outer):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if outer:
        env["OPENBLAS_CORETYPE"] = outer
    env["VGCORE_BLAS_CORETYPE"] = "Haswell"
    out = subprocess.run(
        [sys.executable, "-c", _CORE_SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["Haswell", outer or "<unset>"]
    env["VGCORE_BLAS_CORETYPE"] = "default"
    env["OPENBLAS_CORETYPE"] = "Sandybridge"
    out = subprocess.run(
        [sys.executable, "-c", _CORE_SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["Sandybridge", "Sandybridge"]

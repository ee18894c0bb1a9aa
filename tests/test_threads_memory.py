"""Thread counts, refused thread starts and working-memory checks.

What used to abort the process (std::terminate from a worker that could not be started) runs in
a subprocess, so that a regression fails one test instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import vgcore
import vgcore._validation as validation
from tolerances import hang_guard
from vgcore._loader import _core
from vgcore._runtime import MAX_THREADS
from vgcore.analysis.lyapunov import _engine_bytes, _record_bytes, _records
from vgcore.analysis.singular_values import _working_bytes

hook = _core.testing
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, RLIMIT_AS")
no_asan = pytest.mark.no_sanitizer(reason="RLIMIT_AS: ASan reserves terabytes of address space")


def _run(script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=hang_guard(timeout),
        env=dict(os.environ),
    )


@pytest.fixture(autouse=True)
def _reset_hook():
    hook.refuse_thread_starts(0)
    yield
    hook.refuse_thread_starts(0)


# ---- thread counts -------------------------------------------------------------------------


def test_set_num_threads_refuses_bad_counts_and_keeps_the_setting():
    mlp = vgcore.MLP.from_sizes([6] * 3, "tanh", seed=0)
    x = np.random.default_rng(0).normal(size=(5, 6))
    try:
        vgcore.set_num_threads(2)
        with pytest.raises(
            ValueError, match=rf"n must be .*at most {MAX_THREADS}.*got 1099511627776"
        ):
            vgcore.set_num_threads(2**40)
        with pytest.raises(ValueError, match="n must be a positive integer"):
            vgcore.set_num_threads(MAX_THREADS + 1)
        with pytest.raises(ValueError, match="n must be a positive integer"):
            vgcore.set_num_threads(-3)
        for bad in (1.5, "4", True):
            with pytest.raises(TypeError, match="n must be a positive integer or None"):
                vgcore.set_num_threads(bad)  # type: ignore[arg-type]
        assert vgcore.get_num_threads() == 2  # untouched by the refused values
        assert _core.blas_get_num_threads() == 2
        vgcore.gradient_flow(mlp, x)  # every later analysis still works
        vgcore.set_num_threads(np.int64(3))  # type: ignore[arg-type]
        assert vgcore.get_num_threads() == 3 and type(vgcore.get_num_threads()) is int
        with pytest.raises(ValueError, match="between 1 and"):
            _core.blas_set_num_threads(0)
    finally:
        vgcore.set_num_threads(None)


@pytest.mark.parametrize("analysis", ["gradient_flow", "lyapunov", "singular", "spectrum"])
def test_num_threads_argument_is_checked(analysis):
    rnn = vgcore.RNN.from_sizes(2, 4, seed=0)
    x = np.random.default_rng(0).normal(size=(3, 2, 2))
    call = {
        "gradient_flow": lambda n: vgcore.gradient_flow(rnn, x, num_threads=n),
        "lyapunov": lambda n: vgcore.lyapunov(rnn, x, num_threads=n),
        "singular": lambda n: vgcore.jacobian_singular_values(rnn, x, num_threads=n),
        "spectrum": lambda n: vgcore.jacobian_spectrum(rnn, x, num_threads=n),
    }[analysis]
    for bad in (2**40, MAX_THREADS + 1, 0):
        with pytest.raises(ValueError, match=f"num_threads must be .*got {bad}"):
            call(bad)
    with pytest.raises(TypeError, match="num_threads must be a positive integer or None"):
        call(2.0)
    call(np.int32(2))


# ---- refused thread starts ------------------------------------------------------------------

_REFUSED = """
import json, os, numpy as np, vgcore
from vgcore._loader import _core
rng = np.random.default_rng(0)
out = {}
def tasks():
    return len(os.listdir("/proc/self/task"))
cases = {
    "mlp": (vgcore.MLP.from_sizes([8] * 4, "tanh", seed=0), rng.normal(size=(16, 8))),
    "lstm": (vgcore.LSTM.from_sizes(3, 8, seed=0), rng.normal(size=(64, 8, 3))),
}
for name, (m, x) in cases.items():
    ref = vgcore.gradient_flow(m, x, num_threads=6).log_grad_norms
    before = tasks()
    _core.testing.refuse_thread_starts(1, after=2)
    try:
        vgcore.gradient_flow(m, x, num_threads=6)
        out[name] = "no error"
    except RuntimeError as e:
        out[name] = str(e)
    out[name + "_tasks"] = [before, tasks()]
    again = vgcore.gradient_flow(m, x, num_threads=6).log_grad_norms
    out[name + "_same"] = bool(np.array_equal(ref, again))
print(json.dumps(out))
"""


@linux_only
def test_refused_worker_start_is_a_runtime_error_and_the_others_are_joined():
    """Two workers start, the third is refused: before, the vector of joinable threads was
    destroyed and the process aborted (terminate called without an active exception)."""
    res = _run(_REFUSED)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for name in ("mlp", "lstm"):
        msg = out[name]
        assert "could not start thread 4 of " in msg, msg
        assert "use fewer threads (num_threads = 3 or less)" in msg, msg
        before, after = out[name + "_tasks"]
        assert after == before  # the started workers were joined, none left running
        assert out[name + "_same"]


def test_refused_start_in_every_pool():
    rng = np.random.default_rng(1)
    rnn = vgcore.RNN.from_sizes(3, 8, seed=1)
    x = rng.normal(size=(40, 6, 3))
    mlp = vgcore.MLP.from_sizes([8] * 3, "tanh", seed=1)
    xm = rng.normal(size=(6, 8))
    calls = [
        lambda: vgcore.gradient_flow(rnn, x, num_threads=3),
        lambda: vgcore.lyapunov(rnn, x, k=2, num_threads=3),
        lambda: vgcore.lyapunov(mlp, xm, k=2, num_threads=3),
        lambda: vgcore.jacobian_singular_values(rnn, x, num_threads=3),
        lambda: vgcore.jacobian_spectrum(rnn, x, num_threads=3),
    ]
    for call in calls:
        ref = call()
        hook.refuse_thread_starts(1)
        with pytest.raises(RuntimeError, match=r"could not start thread 2 of \d+ .*fewer threads"):
            call()
        assert hook.refused_thread_starts_left() == 0
        again = call()
        assert repr(again) == repr(ref)


def test_refused_helper_falls_back_to_the_caller_with_identical_numbers():
    """One sample on two threads: Lyapunov (TSQR halves) and singular values (T updates) offer
    work to one helper thread; without it the caller does the same arithmetic."""
    rng = np.random.default_rng(2)
    rnn = vgcore.RNN.from_sizes(4, 512, seed=3)  # large enough a step for the helper
    x = rng.normal(size=(30, 1, 4))
    small = vgcore.RNN.from_sizes(4, 32, seed=3)
    xs = rng.normal(size=(30, 1, 4))
    mlp = vgcore.MLP.from_sizes([16] * 4, "tanh", seed=0)
    xm = rng.normal(size=(1, 16))
    calls = {
        "lyapunov": lambda: vgcore.lyapunov(rnn, x, k=5, num_threads=2),
        "singular": lambda: vgcore.jacobian_singular_values(small, xs, num_threads=2),
        "singular_mlp": lambda: vgcore.jacobian_singular_values(mlp, xm, num_threads=2),
    }
    for name, call in calls.items():
        started = hook.thread_start_attempts()
        ref = call()
        assert hook.thread_start_attempts() == started + 1, name  # the helper was wanted
        hook.refuse_thread_starts(1)
        got = call()
        assert hook.refused_thread_starts_left() == 0, name  # ... and refused
        if name == "lyapunov":
            np.testing.assert_array_equal(got.exponents, ref.exponents)
            np.testing.assert_array_equal(got.running, ref.running)
        else:
            np.testing.assert_array_equal(got.log_singular_values, ref.log_singular_values)


_ADDRESS_SPACE = """
import resource, numpy as np, vgcore
m = vgcore.MLP.from_sizes([8] * 3, "tanh", seed=0)
x = np.random.default_rng(0).normal(size=(300, 8))
ref = vgcore.gradient_flow(m, x, num_threads=300).log_grad_norms  # BLAS pool at full size
vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize")][0]
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (vm + 128 * 2**20, hard))  # room for ~15 thread stacks
try:
    vgcore.gradient_flow(m, x, num_threads=300)
    print("no error")
except (RuntimeError, MemoryError) as e:
    print(type(e).__name__ + ": " + str(e))
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
print(np.array_equal(vgcore.gradient_flow(m, x, num_threads=300).log_grad_norms, ref))
"""


@linux_only
@no_asan
def test_address_space_limit_on_threads_is_an_exception_not_an_abort():
    """The tester's report: num_threads in the hundreds under an address-space limit."""
    res = _run(_ADDRESS_SPACE)
    assert res.returncode == 0, res.stderr[-2000:]
    first, second = res.stdout.strip().splitlines()[-2:]
    assert first.startswith(("RuntimeError: vgcore could not start thread", "MemoryError")), first
    assert second == "True"


# ---- working memory -------------------------------------------------------------------------


@pytest.fixture
def small_machine(monkeypatch):
    """check_memory sees 8 GiB available, whatever the machine has."""
    monkeypatch.setattr(validation, "available_memory_bytes", lambda: 8 * 2**30)


_REFUSAL = """
import resource
# A regression would try to allocate: make that a quick bad_alloc, never the OOM killer.
resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
import numpy as np, vgcore, vgcore._validation as v
v.available_memory_bytes = lambda: 8 * 2**30
try:
    {call}
    print("no error")
except MemoryError as e:
    print(type(e).__name__ + ": " + str(e))
"""


@linux_only
@no_asan
@pytest.mark.parametrize(
    "what, call",
    [
        (
            "jacobian_singular_values",
            "vgcore.jacobian_singular_values(vgcore.MLP.from_sizes([2048, 2048], 'tanh', seed=0),"
            " np.zeros((600, 2048)))",
        ),
        (
            "lyapunov",
            "vgcore.lyapunov(vgcore.RNN.from_sizes(2, 1024, seed=0), np.zeros((5, 400, 2)), k=1000)",
        ),
        (
            "lyapunov",
            "vgcore.lyapunov(vgcore.MLP.from_sizes([1024] * 3, 'tanh', seed=0),"
            " np.zeros((800, 1024)))",
        ),
    ],
)
def test_huge_problems_are_refused_before_allocating(what, call):
    res = _run(_REFUSAL.format(call=call))
    assert res.returncode == 0, res.stderr[-2000:]
    line = res.stdout.strip().splitlines()[-1]
    assert line.startswith(f"InsufficientMemoryError: {what} needs about "), line
    assert "GiB of working memory, but only 8.00 GiB is available" in line


def test_streamed_records_are_checked_chunk_by_chunk(small_machine):
    rnn = vgcore.RNN.from_sizes(2, 16, seed=0)
    rng = np.random.default_rng(0)
    fed = []

    def stream():
        for T in (5, 200_000):  # the second chunk's records: ~8 GiB
            fed.append(T)
            yield np.zeros((T, 64, 2))

    with pytest.raises(vgcore.InsufficientMemoryError, match="lyapunov needs about"):
        vgcore.lyapunov(rnn, stream(), k=16, max_records=10**6, num_threads=1)
    assert fed == [5, 200_000]
    # The same stream with the default cap on records fits.
    out = vgcore.lyapunov(rnn, (rng.normal(size=(T, 4, 2)) for T in (5, 300)), k=16)
    assert out.steps == 305


_PEAK = """
import json, numpy as np, vgcore
from vgcore.analysis.lyapunov import _engine_bytes, _record_bytes, _records
from vgcore.analysis.singular_values import _working_bytes
from vgcore.analysis._spectra import core_model
def status(key):
    return [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key)][0]
rng = np.random.default_rng(0)
kind = {kind!r}
if kind == "singular":
    m = vgcore.MLP.from_sizes([128, 128], "tanh", seed=0)
    x = rng.normal(size=(96, 128))
    est = _working_bytes(core_model(m, np.dtype(np.float64)), 96, 8, 2)
    call = lambda: vgcore.jacobian_singular_values(m, x, num_threads=2)
else:
    m = vgcore.RNN.from_sizes(2, 96, seed=0)
    x = rng.normal(size=(2, 256, 2))
    spec = core_model(m, np.dtype(np.float64))
    est = _engine_bytes(spec, 256, 96, 8, 2) + _record_bytes(_records(2, 0, 1, 10_000), 256, 96)
    call = lambda: vgcore.lyapunov(m, x, k=96, num_threads=2)
vgcore.release_memory()
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from the current resident size
except OSError:
    print("null")
    raise SystemExit
base = status("VmRSS")
call()
print(json.dumps([status("VmHWM") - base, est]))
"""


@linux_only
@pytest.mark.parametrize("kind", ["singular", "lyapunov"])
@pytest.mark.no_sanitizer(
    reason="measures the resident peak; ASan's shadow memory and redzones inflate it"
)
def test_memory_estimates_cover_the_measured_peak(kind):
    """The estimate is above what the call really uses, but not wildly (about 100 MB here)."""
    res = _run(_PEAK.format(kind=kind))
    assert res.returncode == 0, res.stderr[-2000:]
    measured = json.loads(res.stdout.strip().splitlines()[-1])
    if measured is None:
        pytest.skip("cannot reset the peak resident size (/proc/self/clear_refs)")
    used, est = measured
    assert used < est < 2.5 * used, (used, est)


def test_estimates_scale_as_the_allocations():
    mlp = {
        "kind": "mlp",
        "layers": [{"weight": np.zeros((2048, 2048)), "block": "plain", "norm": "none"}],
    }
    # B = 600 samples of width 2048: three (n0 + 1) x 2048 blocks each plus two 2048^2 factors.
    assert _working_bytes(mlp, 600, 8, 2) > 90 * 2**30
    rnn = {"kind": "rnn_tanh", "weight_hh": np.zeros((64, 64))}
    assert _engine_bytes(rnn, 100, 64, 4, 1) > 2 * 100 * 64 * 65 * 4
    assert _records(10, 20, 1, 100) == 0
    assert _records(1000, 0, 3, 100) == 100
    assert _records(30, 0, 3, 100) == 11
    assert _record_bytes(10, 4, 3) == 5 * 8 * 10 * 4 * 3  # engine (x2 while growing), result


@linux_only
@no_asan
def test_bad_alloc_in_the_core_is_a_memory_error():
    """Past the Python estimate (here: a lied-about machine) an allocation failure inside the
    core, also inside a worker thread, is a MemoryError, never an abort."""
    res = _run(
        """
        import resource, numpy as np, vgcore, vgcore._validation as v
        v.available_memory_bytes = lambda: 2**40
        rng = np.random.default_rng(0)
        mlp = vgcore.MLP.from_sizes([512, 512], "tanh", seed=0)
        x = rng.normal(size=(400, 512))
        rnn = vgcore.RNN.from_sizes(16, 16, seed=0, dtype=np.float32)
        xr = rng.normal(size=(600, 2048, 16)).astype(np.float32)
        vgcore.lyapunov(rnn, xr[:5, :4], k=16, num_threads=2)
        vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize")][0]
        resource.setrlimit(resource.RLIMIT_AS, (vm + 256 * 2**20, resource.RLIM_INFINITY))
        for f in (lambda: vgcore.jacobian_singular_values(mlp, x, num_threads=2),
                  lambda: vgcore.lyapunov(rnn, xr, k=16, num_threads=2)):
            try:
                f()
                print("no error")
            except MemoryError as e:
                print(type(e).__name__ + ": " + str(e))
        """
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()[-2:]
    for line in lines:
        assert line.startswith("MemoryError: vgcore could not allocate its working memory"), line

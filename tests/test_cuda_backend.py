"""The CUDA backend from the main test session: the backend argument, vgcore.cuda.backends(),
the auto policy, the errors when CUDA cannot run, import hygiene (importing vgcore imports no
numba; with numba and CuPy hidden the CPU path gives the same numbers), the simulator battery
(tests/cuda_sim, its own session: NUMBA_ENABLE_CUDASIM must be set before numba is imported),
and comparisons on a real device (needs_cuda)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import vgcore
from vgcore.cuda import AUTO_MIN_WORK, BackendInfo, CudaUnavailableError, _probe, backends

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, env: dict[str, str] | None = None) -> str:
    e = dict(os.environ)
    e.pop("NUMBA_ENABLE_CUDASIM", None)
    e.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=e, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def _device() -> bool:
    info = _probe.cuda_status()
    return info.available and not info.simulator


needs_device = pytest.mark.skipif(not _device(), reason="no CUDA device (vgcore.cuda.backends())")

ANALYSES = [
    lambda m, x, b: vgcore.gradient_flow(m, x, backend=b),
    lambda m, x, b: vgcore.lyapunov(m, x, backend=b),
    lambda m, x, b: vgcore.jacobian_spectrum(m, x, backend=b),
    lambda m, x, b: vgcore.jacobian_singular_values(m, x, backend=b),
]
NAMES = ["gradient_flow", "lyapunov", "jacobian_spectrum", "jacobian_singular_values"]


def _small() -> tuple[Any, np.ndarray]:
    return vgcore.RNN.from_sizes(2, 3, seed=0), np.random.default_rng(0).standard_normal((3, 2, 2))


def test_import_loads_no_numba_and_no_cupy() -> None:
    code = (
        "import sys, json, vgcore, vgcore.cuda, vgcore.cuda.analyses; "
        "import numpy as np; m = vgcore.RNN.from_sizes(2, 3); "
        "vgcore.gradient_flow(m, np.ones((3, 1, 2)), backend='cpu'); "
        "print(json.dumps([k for k in ('numba', 'cupy') if k in sys.modules]))"
    )
    assert json.loads(_run(code)) == []


HIDDEN = """
import json, sys
sys.modules["numba"] = None  # an import of numba / cupy now fails as if not installed
sys.modules["cupy"] = None
import numpy as np, vgcore
from vgcore.cuda import backends, CudaUnavailableError
m = vgcore.LSTM.from_sizes(3, 4, seed=1)
x = np.random.default_rng(0).standard_normal((4, 2, 3))
f = vgcore.gradient_flow(m, x, backend="auto")
ly = vgcore.lyapunov(m, x, k=2, backend="auto")
sv = vgcore.jacobian_singular_values(vgcore.MLP.from_sizes([3, 4, 4], seed=1), x[0], backend="auto")
try:
    vgcore.gradient_flow(m, x, backend="cuda")
    err = None
except CudaUnavailableError as e:
    err = str(e)
print(json.dumps({"cuda": str(backends()[1]), "err": err,
                  "flow": f.log_grad_norms.tolist(), "lyap": ly.exponents.tolist(),
                  "sv": sv.log_singular_values.tolist()}))
"""


def test_hidden_numba_leaves_the_cpu_path_unchanged() -> None:
    got = json.loads(_run(HIDDEN))
    assert "numba is not installed" in got["cuda"] and "vgcore[cuda]" in got["cuda"]
    assert got["err"] is not None and "numba is not installed" in got["err"]
    m = vgcore.LSTM.from_sizes(3, 4, seed=1)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    # the same numbers bit for bit: the CPU path does not depend on the optional modules
    assert got["flow"] == vgcore.gradient_flow(m, x).log_grad_norms.tolist()
    assert got["lyap"] == vgcore.lyapunov(m, x, k=2).exponents.tolist()
    mlp = vgcore.MLP.from_sizes([3, 4, 4], seed=1)
    assert got["sv"] == vgcore.jacobian_singular_values(mlp, x[0]).log_singular_values.tolist()


def test_backends_lists_cpu_and_why_cuda_is_missing() -> None:
    cpu, cuda = backends()
    assert (cpu.name, cpu.available, cuda.name) == ("cpu", True, "cuda")
    if not cuda.available:
        assert any(w in cuda.reason for w in ("numba", "device", "CuPy")), cuda.reason
        assert str(cuda).startswith("cuda: missing (")
    assert BackendInfo("cuda", True, "x", simulator=True).label == "cuda (simulator)"


@pytest.mark.parametrize("bad", ["gpu", "CUDA", 1, None])
@pytest.mark.parametrize("i", range(4), ids=NAMES)
def test_backend_argument_is_validated(i: int, bad: Any) -> None:
    m, x = _small()
    with pytest.raises(ValueError, match=r'backend must be "cpu", "cuda" or "auto", got'):
        ANALYSES[i](m, x, bad)


@pytest.mark.parametrize("i", range(4), ids=NAMES)
def test_cpu_and_auto_give_the_cpu_numbers(i: int) -> None:
    m, x = _small()
    a, b = ANALYSES[i](m, x, "cpu"), ANALYSES[i](m, x, "auto")
    assert repr(a) == repr(b)  # a tiny call stays on the CPU whatever the machine has


@pytest.mark.skipif(_device(), reason="a CUDA device is present")
@pytest.mark.parametrize("i", range(4), ids=NAMES)
def test_cuda_without_it_is_a_clear_error(i: int) -> None:
    m, x = _small()
    with pytest.raises(
        CudaUnavailableError, match=r'backend="cuda" cannot run here: .*(numba|device|CuPy)'
    ):
        ANALYSES[i](m, x, "cuda")


@pytest.fixture
def fake_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe answering 'a real device is here' (no kernel runs in these tests)."""
    monkeypatch.setattr(_probe, "cuda_status", lambda: BackendInfo("cuda", True, "fake"))
    monkeypatch.setattr(_probe, "simulator_requested", lambda: False)


def test_auto_policy(fake_device: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from vgcore.cuda import resolve_backend
    from vgcore.cuda.analyses import flow_backend, lyapunov_backend, singular_backend

    assert resolve_backend("auto", AUTO_MIN_WORK - 1) == "cpu"
    assert resolve_backend("auto", AUTO_MIN_WORK) == "cuda"
    assert resolve_backend("cpu", 1e30) == "cpu"
    small = vgcore.LSTM.from_sizes(4, 8)
    big = vgcore.LSTM.from_sizes(4, 1024)
    xs, xb = np.zeros((10000, 2, 4)), np.zeros((10, 256, 4))
    # the work of one step decides, not the length of the sequence
    assert flow_backend("auto", small, xs) == "cpu"
    assert flow_backend("auto", big, np.zeros((1000, 32, 4))) == "cpu"  # 4e8 < 2^29 per step
    assert flow_backend("auto", big, xb) == "cuda"  # 256 * 4 * 1024^2 * 3 >= 2^29
    assert lyapunov_backend("auto", big, xb, 32) == "cuda"
    assert lyapunov_backend("auto", vgcore.MLP.from_sizes([8, 8]), np.zeros((2, 8)), 2) == "cpu"
    # singular values: B n0 (n_in n_out + 3 n_out n0) per layer (the tangent rows' product,
    # the QR and the float64 T update)
    wide = vgcore.MLP.from_sizes([512] * 3)
    assert singular_backend("auto", vgcore.MLP.from_sizes([8, 8]), np.zeros((2, 8))) == "cpu"
    assert singular_backend("auto", wide, np.zeros((8, 512))) == "cuda"
    assert singular_backend("auto", big, np.zeros((10, 8, 4))) == "cuda"
    assert singular_backend("auto", small, xs) == "cpu"
    # what CUDA lacks stays on the CPU under auto
    ln = vgcore.MLP.from_sizes([512] * 3, norm="layernorm")
    assert singular_backend("auto", ln, np.zeros((8, 512))) == "cpu"
    stacked = vgcore.LSTM.from_sizes(4, 1024, num_layers=2)
    assert singular_backend("auto", stacked, xb) == "cpu"
    # the simulator is never picked by auto
    monkeypatch.setattr(_probe, "simulator_requested", lambda: True)
    assert resolve_backend("auto", 1e30) == "cpu"


def test_cuda_refusals_name_what_is_missing(fake_device: None) -> None:
    m, x = _small()
    with pytest.raises(ValueError, match="jacobian_spectrum is not on the cuda backend yet"):
        vgcore.jacobian_spectrum(m, x, backend="cuda")
    # singular values: what the CUDA path lacks, by name
    sv = vgcore.jacobian_singular_values
    with pytest.raises(ValueError, match="'layernorm' layer, which has no CUDA kernel"):
        sv(vgcore.MLP.from_sizes([3, 3, 3], norm="layernorm"), np.ones((2, 3)), backend="cuda")
    with pytest.raises(ValueError, match="activation 'gelu' has no CUDA kernel"):
        sv(vgcore.MLP.from_sizes([3, 3, 3], activation="gelu"), np.ones((2, 3)), backend="cuda")
    with pytest.raises(ValueError, match="single-layer recurrent"):
        sv(vgcore.RNN.from_sizes(2, 3, num_layers=2), x, backend="cuda")
    with pytest.raises(ValueError, match=r"MLP .* not on the cuda backend"):
        vgcore.lyapunov(vgcore.MLP.from_sizes([3, 3, 3]), np.ones((2, 3)), backend="cuda")
    torch = pytest.importorskip("torch")

    class Twice(torch.nn.Module):  # no native kind represents it: a TorchModel
        def forward(self, x: Any) -> Any:
            return 2 * x

    with pytest.raises(ValueError, match="applies to native models"):
        vgcore.gradient_flow(
            torch.nn.Sequential(torch.nn.Linear(2, 2), Twice()), np.ones((1, 2)), backend="cuda"
        )


@pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba is not installed (vgcore[cuda])"
)
def test_simulator_battery() -> None:
    """tests/cuda_sim in its own pytest session with NUMBA_ENABLE_CUDASIM=1."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "cuda_sim"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    tail = out.stdout[-3000:] + out.stderr[-2000:]
    assert out.returncode == 0, tail
    assert " passed" in out.stdout and "skipped" not in out.stdout.splitlines()[-1], tail


@pytest.mark.needs_cuda
@needs_device
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_device_matches_cpu(kind: str) -> None:
    cls = {"rnn": vgcore.RNN, "lstm": vgcore.LSTM, "gru": vgcore.GRU}[kind]
    m = cls.from_sizes(16, 64, seed=1)
    x = np.random.default_rng(0).standard_normal((50, 8, 16))
    a, b = vgcore.gradient_flow(m, x), vgcore.gradient_flow(m, x, backend="cuda")
    np.testing.assert_allclose(b.log_grad_norms, a.log_grad_norms, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b.act_mean, a.act_mean, rtol=1e-10, atol=1e-14)
    la, lb = vgcore.lyapunov(m, x, k=8), vgcore.lyapunov(m, x, k=8, backend="cuda")
    np.testing.assert_allclose(lb.exponents, la.exponents, rtol=1e-10, atol=1e-12)


@pytest.mark.needs_cuda
@needs_device
def test_device_mlp_matches_cpu() -> None:
    m = vgcore.MLP.from_sizes([32, 64, 64, 64, 10], activation="relu", seed=2)
    x = np.random.default_rng(1).standard_normal((16, 32))
    a, b = vgcore.gradient_flow(m, x), vgcore.gradient_flow(m, x, backend="cuda")
    np.testing.assert_allclose(b.log_grad_norms, a.log_grad_norms, rtol=0, atol=1e-10)


@pytest.mark.needs_cuda
@needs_device
def test_device_singular_values_match_cpu() -> None:
    rng = np.random.default_rng(3)
    mlp = vgcore.MLP.from_sizes([64] * 41, activation="tanh", seed=2)
    res = vgcore.MLP.from_sizes([64] * 41, activation="relu", residual=0.5, seed=2)
    for m in (mlp, res):
        x = rng.standard_normal((4, 64))
        a = vgcore.jacobian_singular_values(m, x)
        b = vgcore.jacobian_singular_values(m, x, backend="cuda")
        np.testing.assert_allclose(b.log_singular_values, a.log_singular_values, rtol=0, atol=1e-10)
    for cls in (vgcore.RNN, vgcore.LSTM, vgcore.GRU):
        m = cls.from_sizes(16, 32, seed=1)
        x = rng.standard_normal((50, 4, 16))
        a = vgcore.jacobian_singular_values(m, x)
        b = vgcore.jacobian_singular_values(m, x, backend="cuda")
        top = a.log_singular_values > a.log_singular_values[:, :1] - 25  # above rounding
        np.testing.assert_allclose(
            b.log_singular_values[top], a.log_singular_values[top], rtol=0, atol=1e-10
        )


def test_kinds_without_cuda_formulas_are_refused_or_stay_on_the_cpu(fake_device: None) -> None:
    from types import SimpleNamespace

    from vgcore.cuda.analyses import _without_kernels
    from vgcore.cuda.layers import cuda_kinds
    from vgcore.models import model_kinds

    for k in model_kinds():
        model = SimpleNamespace(kind=k.name)
        if k.name in cuda_kinds():
            assert not _without_kernels("cuda", model)
            continue
        assert _without_kernels("auto", model)
        with pytest.raises(ValueError, match=f"model kind '{k.name}' has no CUDA kernels yet"):
            _without_kernels("cuda", model)


@pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba is not installed (vgcore[cuda])"
)
def test_the_probe_names_a_numba_cuda_that_cannot_load_with_this_numpy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen on a device: numba-cuda 0.30 with NumPy 2.5 fails at its first kernel (np.row_stack
    is gone); the probe says so instead of reporting CUDA as available."""
    from numba import cuda

    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "gpus", [object()], raising=False)
    real = _probe.importlib.import_module

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "numba.cuda.cudaimpl":
            raise AttributeError("module 'numpy' has no attribute 'row_stack'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(_probe.importlib, "import_module", fake_import)
    _probe._cuda_status.cache_clear()
    try:
        info = _probe._cuda_status(False)
    finally:
        _probe._cuda_status.cache_clear()
    assert not info.available
    assert "row_stack" in info.reason and "numpy<2.5" in info.reason

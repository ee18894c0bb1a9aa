"""pytest-benchmark: gradient_flow against PyTorch eager on the same work, results checked.

Run: ``python -m pytest bench --benchmark-enable`` (tests in CI run each once, untimed).
"""

from __future__ import annotations

import pytest

import vgcore
from workloads import LSTMFlow, MLPFlow, rel_diff

RTOL_F32 = 2e-3  # float32 curves over 1000 steps / 200 layers


@pytest.fixture(scope="module")
def lstm():
    return LSTMFlow()


@pytest.fixture(scope="module")
def mlp():
    return MLPFlow()


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    return request.param


@pytest.mark.benchmark(group="lstm-bptt N=256 T=1000 B=32 f32")
def test_lstm_vgcore(benchmark, lstm, threads):
    norms = benchmark(lstm.vgcore, threads)
    assert norms.shape == (lstm.T + 1,) and norms[-1] > 0


@pytest.mark.benchmark(group="lstm-bptt N=256 T=1000 B=32 f32")
@pytest.mark.parametrize("flush_denormal", [False, True], ids=["denormals", "ftz"])
def test_lstm_torch_eager(benchmark, lstm, threads, flush_denormal):
    """The float32 gradients underflow into denormals over 1000 steps; PyTorch is timed with
    and without flushing them (vgcore rescales and never meets denormals)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(threads)
    torch.set_flush_denormal(flush_denormal)
    try:
        norms = benchmark(lstm.torch_eager)
    finally:
        torch.set_flush_denormal(False)
    assert rel_diff(lstm.vgcore(), norms) < RTOL_F32


@pytest.mark.benchmark(group="mlp-flow tanh L=200 N=512 B=128 f32")
def test_mlp_vgcore(benchmark, mlp, threads):
    norms = benchmark(mlp.vgcore, threads)
    assert norms.shape == (mlp.L + 1,) and norms[-1] > 0


@pytest.mark.benchmark(group="mlp-flow tanh L=200 N=512 B=128 f32")
def test_mlp_torch_eager(benchmark, mlp, threads):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(threads)
    norms = benchmark(mlp.torch_eager)
    assert rel_diff(mlp.vgcore(), norms) < RTOL_F32


def test_threads_setting_restored():
    assert vgcore.get_num_threads() >= 1


@pytest.mark.benchmark(group="lstm-bptt N=256 T=1000 B=32 f32")
def test_lstm_numpy(benchmark, lstm):
    norms = benchmark(lstm.numpy)
    assert rel_diff(lstm.vgcore(), norms) < RTOL_F32


@pytest.mark.benchmark(group="mlp-flow tanh L=200 N=512 B=128 f32")
def test_mlp_numpy(benchmark, mlp):
    norms = benchmark(mlp.numpy)
    assert rel_diff(mlp.vgcore(), norms) < RTOL_F32

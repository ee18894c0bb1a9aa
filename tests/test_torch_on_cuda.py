"""Torch modules analysed where they live: the same analyses on a CUDA copy of a module as on
the CPU (float64; skipped without a CUDA device for torch), and the unfused stock cells a
TorchCell runs on a device whose fused cell kernels have no forward-mode rule.

Tolerances: the device's kernels round differently from the CPU's (other reduction orders), so
results agree to about 1e-12 relative on these small float64 models; checked at 1e-9.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import vgcore

torch = pytest.importorskip("torch")
from vgcore.reference import nets  # noqa: E402


def on_cuda(test):
    """A test that needs a CUDA device for torch."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device for torch")
    return pytest.mark.needs_cuda(skip(test))


def _pair(module):
    cpu = module.double().eval()
    return cpu, copy.deepcopy(cpu).cuda()


@on_cuda
def test_per_block_flow_on_the_device_equals_the_cpu():
    torch.manual_seed(0)
    cpu, dev = _pair(nets.transformer(16, layers=3, heads=2))
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    g = torch.randn(2, 5, 16, dtype=torch.float64)
    a = vgcore.gradient_flow(cpu, x, cotangent=g, param_grads=True)
    b = vgcore.gradient_flow(dev, x.cuda(), cotangent=g.cuda(), param_grads=True)
    np.testing.assert_allclose(b.log_grad_norms, a.log_grad_norms, rtol=1e-9)
    np.testing.assert_allclose(b.act_mean, a.act_mean, rtol=1e-9, atol=1e-12)
    assert next(dev.parameters()).device.type == "cuda"  # left where it lives


@on_cuda
def test_singular_values_on_the_device_equal_the_cpu():
    torch.manual_seed(1)
    cpu, dev = _pair(nets.transformer(8, layers=2, heads=2))
    x = torch.randn(1, 3, 8, dtype=torch.float64)
    a = vgcore.jacobian_singular_values(cpu, x, k=4)
    b = vgcore.jacobian_singular_values(dev, x.cuda(), k=4)
    np.testing.assert_allclose(b.log_singular_values, a.log_singular_values, rtol=1e-9)


@on_cuda
def test_torch_cell_lyapunov_on_the_device_equals_the_cpu():
    torch.manual_seed(2)
    cpu = torch.nn.GRUCell(4, 8, dtype=torch.float64)
    dev = copy.deepcopy(cpu).cuda()
    x = torch.randn(30, 2, 4, dtype=torch.float64)
    a = vgcore.lyapunov(vgcore.TorchCell(cpu), x, k=4)
    b = vgcore.lyapunov(vgcore.TorchCell(dev), x.cuda(), k=4)
    np.testing.assert_allclose(b.exponents, a.exponents, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("bias", [True, False])
def test_the_unfused_stock_cells_equal_torch_and_take_jvp(kind, bias):
    """What a stock cell runs as on a device whose fused kernels have no forward-mode rule
    (CUDA): PyTorch's formula in plain operations, equal to the module (float64, 1e-14), and
    differentiable forward (jvp against autograd's vjp: <J v, w> = <v, J^T w>). Runs on the
    CPU too (the same operations)."""
    from vgcore.torchmodel.cell import unfused_cell

    torch.manual_seed(3)
    nn = torch.nn
    cell = {
        "rnn_tanh": lambda: nn.RNNCell(3, 5, bias=bias, dtype=torch.float64),
        "rnn_relu": lambda: nn.RNNCell(3, 5, bias=bias, nonlinearity="relu", dtype=torch.float64),
        "lstm": lambda: nn.LSTMCell(3, 5, bias=bias, dtype=torch.float64),
        "gru": lambda: nn.GRUCell(3, 5, bias=bias, dtype=torch.float64),
    }[kind]()
    f = unfused_cell(cell)
    x = torch.randn(2, 3, dtype=torch.float64)
    s = torch.randn(2, 5, dtype=torch.float64)
    state = (s, torch.randn(2, 5, dtype=torch.float64)) if kind == "lstm" else s
    want, got = cell(x, state), f(x, state)
    for a, b in zip(want if kind == "lstm" else (want,), got if kind == "lstm" else (got,)):
        torch.testing.assert_close(b, a, rtol=1e-14, atol=1e-14)
    h_of = (lambda h: f(x, (h, state[1]))[0]) if kind == "lstm" else (lambda h: f(x, h))
    v, w = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    _, jv = torch.func.jvp(h_of, (s,), (v,))
    _, pull = torch.func.vjp(h_of, s)
    torch.testing.assert_close((jv * w).sum(), (v * pull(w)[0]).sum(), rtol=1e-12, atol=0)
    assert unfused_cell(nn.Linear(2, 2)) is None

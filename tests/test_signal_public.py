"""vgcore.signal_propagation: the public entry (torch module, TorchModel, native model) gives
the chain function's statistics on the same blocks, and attaches the per-block gradient norms."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import vgcore  # noqa: E402
from vgcore.torchmodel.signal import signal_propagation as chain_signal  # noqa: E402


def _encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return torch.nn.TransformerEncoder(layer, 3, enable_nested_tensor=False).double().eval()


def test_module_matches_the_chain_function_and_leaves_no_hooks() -> None:
    m = _encoder()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    r = vgcore.signal_propagation(m, x)
    ref = chain_signal(list(m.layers.named_children()), x)
    assert r.names == ["(input)", "layers.0", "layers.1", "layers.2"]
    for field in ("rms", "cosine", "stable_rank"):
        np.testing.assert_allclose(getattr(r, field), getattr(ref, field), rtol=1e-12)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


def test_grad_norms_are_the_gradient_flow_of_the_same_blocks() -> None:
    m = _encoder()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    r = vgcore.signal_propagation(m, x, grad_norms=True)
    flow = vgcore.gradient_flow(m, x)
    assert r.log_grad_norms is not None
    np.testing.assert_array_equal(r.log_grad_norms, flow.log_grad_norms)


def test_native_model_goes_through_its_torch_module() -> None:
    mlp = vgcore.MLP.from_sizes([8, 16, 4], activation="tanh", seed=1)
    x = np.random.default_rng(0).standard_normal((5, 8))
    r = vgcore.signal_propagation(mlp, x)
    h = torch.as_tensor(x)
    rms = [float(h.pow(2).mean().sqrt())]
    with torch.no_grad():
        for layer in mlp.to_torch():
            h = layer(h)
            rms.append(float(h.pow(2).mean().sqrt()))
    np.testing.assert_allclose(r.rms, rms, rtol=1e-12)


def test_bad_model_and_flag_are_named() -> None:
    with pytest.raises(TypeError, match="model must be"):
        vgcore.signal_propagation("net", np.zeros((2, 3)))
    with pytest.raises(TypeError, match="grad_norms"):
        vgcore.signal_propagation(_encoder(), np.zeros((1, 2, 16)), grad_norms=1)  # type: ignore[arg-type]

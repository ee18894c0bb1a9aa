"""Residual / highway blocks, LayerNorm / BatchNorm and gradient clipping against PyTorch
autograd (float64), and each fix's documented effect on a canonical case."""

from __future__ import annotations

import math

import numpy as np
import pytest

import vgcore
from oracles import torch_block_flow
from tolerances import assert_rel_close
from vgcore import MLP


def _model(block="plain", norm=None, act="tanh", L=4, n=6, seed=0, affine=True, bias=True):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(0, 1.2 / math.sqrt(n), (n, n)) for _ in range(L)]
    bs = [rng.normal(0, 0.2, n) if bias else None for _ in range(L)]
    kw = {}
    if block == "highway":
        kw["gate_weights"] = [rng.normal(0, 0.5, (n, n)) for _ in range(L)]
        kw["gate_biases"] = [rng.normal(-1, 0.3, n) for _ in range(L)]
    if norm and affine:
        kw["norm_weights"] = [rng.uniform(0.5, 1.5, n) for _ in range(L)]
        kw["norm_biases"] = [rng.normal(0, 0.3, n) for _ in range(L)]
    return MLP(ws, bs, act, block=block, alpha=0.7, norm=norm, eps=1e-3, **kw)


@pytest.mark.parametrize("block", ["plain", "residual", "highway"])
@pytest.mark.parametrize("norm", [None, "layernorm", "batchnorm"])
def test_blocks_and_norms_match_torch(torch, block, norm):
    model = _model(block, norm)
    x = np.random.default_rng(1).normal(size=(5, 6))
    flow = vgcore.gradient_flow(model, x, keep_grads=True, param_grads=True, num_threads=2)
    grads, y, pn, _ = torch_block_flow(torch, model, x)
    assert_rel_close(flow.output, y, 1e-12, "y")
    assert_rel_close(flow.grad_norms, [np.linalg.norm(g) for g in grads], 1e-10, "grad_norms")
    for l, g in enumerate(grads):
        assert_rel_close(flow.grads[l], g, 1e-9, f"dL/dh_{l}")
    # only the parameter kinds the model has are reported
    assert set(flow.param_grad_norms) == {k for k, v in pn.items() if not np.isnan(v).all()}
    for k, got in flow.param_grad_norms.items():
        expected = pn[k]
        assert np.array_equal(np.isnan(got), np.isnan(expected)), k
        ok = ~np.isnan(expected)
        if norm == "batchnorm" and k == "bias":
            # BatchNorm removes the mean: the Linear bias gradient is exactly zero in exact
            # arithmetic, so both sides are rounding noise; compare on the weights' scale.
            assert np.all(got[ok] < 1e-12 * np.max(pn["weight"]))
        elif ok.any():
            assert_rel_close(got[ok], expected[ok], 1e-10, k)


def test_norm_without_affine_and_float32(torch):
    model = _model("residual", "layernorm", affine=False, act="gelu")
    x = np.random.default_rng(2).normal(size=(3, 6))
    grads, _, _, _ = torch_block_flow(torch, model, x)
    f32 = vgcore.gradient_flow(model.astype(np.float32), x)
    assert_rel_close(f32.grad_norms, [np.linalg.norm(g) for g in grads], 1e-4)


def test_batchnorm_couples_the_batch(torch):
    """Changing one sample changes another sample's gradient only through batch statistics."""
    model = _model("plain", "batchnorm")
    x = np.random.default_rng(3).normal(size=(4, 6))
    a = vgcore.gradient_flow(model, x, keep_grads=True)
    x2 = x.copy()
    x2[3] += 1.0
    b = vgcore.gradient_flow(model, x2, keep_grads=True)
    assert not np.allclose(a.grads[0][0], b.grads[0][0])
    ln = _model("plain", "layernorm")
    c = vgcore.gradient_flow(ln, x, keep_grads=True)
    d = vgcore.gradient_flow(ln, x2, keep_grads=True)
    np.testing.assert_array_equal(c.grads[0][0], d.grads[0][0])


def test_from_torch_with_norms(torch):
    nn = torch.nn
    net = nn.Sequential(
        nn.Linear(4, 5),
        nn.LayerNorm(5),
        nn.Tanh(),
        nn.Linear(5, 5),
        nn.BatchNorm1d(5),
        nn.PReLU(init=0.3),
        nn.Linear(5, 2),
    ).double()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[4].bias.normal_()
    net.train()
    model = MLP.from_torch(net)
    assert model.norms == ["layernorm", "batchnorm", None]
    assert str(model.activations[1]) == "leaky_relu(negative_slope=0.3)"
    x = np.random.default_rng(0).normal(size=(6, 4))
    flow = vgcore.gradient_flow(model, x, keep_grads=True)
    xt = torch.tensor(x, requires_grad=True)
    y = net(xt)
    (0.5 * (y**2).sum()).backward()
    assert_rel_close(flow.output, y.detach().numpy(), 1e-12)
    assert_rel_close(flow.grads[0], xt.grad.numpy(), 1e-10)
    back = model.to_torch().train()
    assert_rel_close(back(torch.tensor(x)).detach().numpy(), y.detach().numpy(), 1e-12)


def test_block_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(
        ValueError, match=r"needs a square layer, but weights\[0\] has shape \(3, 4\)"
    ):
        MLP([rng.normal(size=(3, 4))], block="residual")
    with pytest.raises(ValueError, match=r"gate_weights\[0\] is None"):
        MLP([rng.normal(size=(3, 3))], block="highway")
    with pytest.raises(ValueError, match="norm\\[0\\] must be None, 'layernorm' or 'batchnorm'"):
        MLP([rng.normal(size=(3, 3))], norm="groupnorm")
    with pytest.raises(NotImplementedError, match="residual and highway"):
        MLP([rng.normal(size=(3, 3))], block="residual").to_torch()


# ------------------------------------------------------------------------------------------
# Gradient clipping


@pytest.mark.parametrize("max_norm", [1e-3, 0.5, 1e6])
def test_clipping_matches_clip_grad_norm(torch, max_norm):
    model = _model("highway", "layernorm")
    x = np.random.default_rng(4).normal(size=(5, 6))
    flow = vgcore.gradient_flow(model, x, clip_norm=max_norm)
    _, _, _, params = torch_block_flow(torch, model, x)
    tensors = [p for layer in params for p in layer.values() if p is not None]
    total = torch.nn.utils.clip_grad_norm_(tensors, max_norm).item()
    assert flow.clip["total_norm"] == pytest.approx(total, rel=1e-10)
    assert flow.clip["clipped"] is (total > max_norm)
    clipped = flow.clipped_param_grad_norms
    for i, layer in enumerate(params):
        for k, p in layer.items():
            if p is None:
                assert np.isnan(clipped[k][i])
            else:
                assert clipped[k][i] == pytest.approx(p.grad.norm().item(), rel=1e-9)
    if flow.clip["clipped"]:
        assert "layers.0.weight" in flow.clip["changed"]
    else:
        assert flow.clip["changed"] == []


def test_clipping_recurrent(torch):
    model = vgcore.LSTM.from_sizes(3, 4, seed=1)
    x = np.random.default_rng(0).normal(size=(5, 2, 3)) * 3
    flow = vgcore.gradient_flow(model, x, clip_norm=0.01)
    pn = flow.param_grad_norms
    total = math.sqrt(sum(v**2 for v in pn.values()))
    assert flow.clip["total_norm"] == pytest.approx(total, rel=1e-12)
    assert flow.clip["clip_coef"] == pytest.approx(0.01 / (total + 1e-6), rel=1e-12)
    assert set(flow.clip["changed"]) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}
    with pytest.raises(ValueError, match="clip_norm must be a positive finite number"):
        vgcore.gradient_flow(model, x, clip_norm=0)


# ------------------------------------------------------------------------------------------
# Documented effects on canonical cases


def _first_over_last(flow):
    return math.exp(flow.log_grad_norms[0] - flow.log_grad_norms[-1])


def test_deep_sigmoid_vanishes_and_fixes_restore_flow():
    x = np.random.default_rng(0).normal(size=(32, 64))
    sizes = [64] * 51
    sigmoid = vgcore.gradient_flow(MLP.from_sizes(sizes, "sigmoid", seed=0), x)
    assert _first_over_last(sigmoid) < 1e-10
    relu_he = vgcore.gradient_flow(MLP.from_sizes(sizes, "relu", init="kaiming_normal", seed=0), x)
    assert 1e-3 < _first_over_last(relu_he) < 1e3
    resid = vgcore.gradient_flow(MLP.from_sizes(sizes, "sigmoid", residual=0.1, seed=0), x)
    assert _first_over_last(resid) > 1e-2
    ln = vgcore.gradient_flow(MLP.from_sizes(sizes, "tanh", norm="layernorm", seed=0), x)
    plain_tanh = vgcore.gradient_flow(MLP.from_sizes(sizes, "tanh", seed=0), x)
    assert _first_over_last(ln) > 1e3 * _first_over_last(plain_tanh)

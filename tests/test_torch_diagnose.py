"""diagnose / write_report on any torch module: verdict and evidence per block against autograd
in float64, the fixes applied to deep copies (checked against closed forms), the user's module
left exactly as it was."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import vgcore  # noqa: E402
from vgcore.torchmodel import TorchModel  # noqa: E402
from vgcore.torchmodel import fixes as F  # noqa: E402
from vgcore.torchmodel._hygiene import hook_counts  # noqa: E402

LN10 = math.log(10.0)


class Layer(nn.Module):
    def __init__(self, width: int, act: nn.Module) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.act = act

    def forward(self, h):
        return self.act(self.lin(h))


class SigmoidNet(nn.Module):
    """A deep sigmoid MLP written as a custom module (not an nn.Sequential)."""

    def __init__(self, width: int = 16, depth: int = 14) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Layer(width, nn.Sigmoid()) for _ in range(depth)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


class Res(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, d)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(d, d)

    def forward(self, h):
        return h + self.fc2(self.act(self.fc1(h)))


class ResNet(nn.Module):
    def __init__(self, d: int = 16, n: int = 24) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Res(d) for _ in range(n)])
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


class ConvBlock(nn.Module):
    """A ResNet basic block (identity skip, BatchNorm in eval)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, h):
        return torch.relu(h + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h))))))


def _seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module.double()


def _oracle_log10(blocks, x, loss=None):
    """log10 ||dL/dh_i|| (i = 0..L) by plain autograd in float64: h_0 = x, h_i = block_i(h_{i-1})."""
    hs = [x.detach().clone().requires_grad_(True)]
    for b in blocks:
        h = b(hs[-1])
        h.retain_grad()
        hs.append(h)
    y = hs[-1]
    (0.5 * (y * y).sum() if loss is None else loss(y)).backward()
    return np.array([math.log10(float(h.grad.norm())) for h in hs])


def _snapshot(module: nn.Module):
    return (
        {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()},
        [m.training for m in module.modules()],
        [p.requires_grad for p in module.parameters()],
        [p.grad for p in module.parameters()],
        hook_counts(module),
    )


def _same(module: nn.Module, snap) -> None:
    state, modes, flags, grads, hooks = snap
    now = module.state_dict(keep_vars=True)
    assert set(now) == set(state)
    for k, v in state.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k].detach(), v), k
    assert [m.training for m in module.modules()] == modes
    assert [p.requires_grad for p in module.parameters()] == flags
    assert all(p.grad is g for p, g in zip(module.parameters(), grads))
    assert hook_counts(module) == hooks
    assert all(v == 0 for v in hooks.values())


# ------------------------------------------------------------------------------------------
# vanishing: a deep sigmoid module, and the fix that swaps Sigmoid for ReLU with He init
@pytest.fixture(scope="module")
def sigmoid_case():
    net = _seeded(SigmoidNet(16, 14))
    x = torch.randn(12, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return net, x, vgcore.diagnose(net, x)


def test_sigmoid_module_vanishes_with_the_block_it_crosses(sigmoid_case):
    net, x, d = sigmoid_case
    e = d.evidence
    assert d.verdict == "vanishing" and d.axis == "block"
    names = e["block_names"]
    assert names == [f"blocks.{i}" for i in range(14)]
    # the evidence against autograd in float64 (1e-10 relative on the logs)
    want = _oracle_log10(list(net.blocks), x)
    np.testing.assert_allclose(e["log10_grad_norms"], want, rtol=1e-10)
    rel = want - want[-1]
    i = int(np.nonzero(rel < -6)[0].max())  # the last input-side h_i below 1e-6
    assert e["vanishing_depth"] == 14 - i
    assert e["vanishing_block"] == names[i]
    assert f"going back through block {names[i]!r}" in d.summary()
    assert e["spread"] == pytest.approx(float(np.max(np.abs(rel))), rel=1e-10)
    assert len(e["saturation_by_block"]) == 14 and len(e["dead_by_block"]) == 14
    assert any("saturating activations" in c for c in d.causes)


def test_relu_he_fix_is_measured_on_a_copy_and_helps(sigmoid_case):
    net, x, d = sigmoid_case
    fix = {f.fix: f for f in d.fixes}["ReLU + He init"]
    assert fix.checked and fix.helps and fix.verdict_after == "healthy"
    assert d.best is not None and d.best.fix in ("ReLU + He init", "GELU + He init")
    fixed = fix.model_after.module
    assert fixed is not net
    kinds = {type(m).__name__ for m in fixed.modules()}
    assert "ReLU" in kinds and "Sigmoid" not in kinds
    assert all(isinstance(m.act, nn.Sigmoid) for m in net.blocks)  # the original keeps them
    # its measured spread is the autograd spread of the fixed copy
    after = _oracle_log10(list(fixed.blocks), x)
    assert fix.after == pytest.approx(float(np.max(np.abs(after - after[-1]))), abs=1e-9)
    assert fix.improvement == pytest.approx(fix.before - fix.after, abs=1e-12)
    for b in fixed.blocks:
        assert torch.count_nonzero(b.lin.bias) == 0


def test_diagnose_leaves_the_module_exactly_as_it_was():
    net = _seeded(SigmoidNet(8, 10))
    net.train()
    net.blocks[3].lin.weight.requires_grad_(False)
    net.blocks[0].lin.bias.grad = torch.ones(8, dtype=torch.float64)
    x = torch.randn(5, 8, dtype=torch.float64)
    snap = _snapshot(net)
    d = vgcore.diagnose(net, x)
    assert d.fixes and all(f.checked for f in d.fixes)
    _same(net, snap)


def test_module_unchanged_when_the_loss_raises_midway():
    net = _seeded(SigmoidNet(8, 4))
    x = torch.randn(3, 8, dtype=torch.float64)
    snap = _snapshot(net)

    def bad(y):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        vgcore.diagnose(net, x, loss_fn=bad)
    _same(net, snap)


def test_loss_fn_is_the_measured_loss():
    net = _seeded(SigmoidNet(8, 6))
    x = torch.randn(4, 8, dtype=torch.float64)
    t = torch.randn(4, 8, dtype=torch.float64)

    def loss(y):
        return ((y - t) ** 2).mean()

    d = vgcore.diagnose(net, x, loss_fn=loss, check=False)
    np.testing.assert_allclose(
        d.evidence["log10_grad_norms"], _oracle_log10(list(net.blocks), x, loss), rtol=1e-10
    )
    assert all(f.note == "checks disabled" for f in d.recommended)


# ------------------------------------------------------------------------------------------
# residual modules
def test_residual_branch_ends_are_recognised():
    net = _seeded(ResNet(8, 5))
    x = torch.randn(4, 8, dtype=torch.float64)
    ends = F.residual_branch_ends(TorchModel(net), x)
    assert ends == {f"blocks.{i}": [f"blocks.{i}.fc2"] for i in range(5)}
    conv = nn.Sequential(*[ConvBlock(3) for _ in range(3)]).double().eval()
    xc = torch.relu(torch.randn(2, 3, 6, 6, dtype=torch.float64))
    assert F.residual_branch_ends(TorchModel(conv), xc) == {str(i): [f"{i}.bn2"] for i in range(3)}
    for norm_first, want in ((True, ["self_attn.out_proj", "linear2"]), (False, None)):
        layer = nn.TransformerEncoderLayer(
            8, 2, 16, dropout=0.0, batch_first=True, norm_first=norm_first
        )
        enc = _seeded(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)).eval()
        got = F.residual_branch_ends(TorchModel(enc), torch.randn(2, 5, 8, dtype=torch.float64))
        if want is None:
            assert got == {}  # post-LN: the norm after the sum is not h + g(h)
        else:
            assert got == {f"layers.{i}": [f"layers.{i}.{n}" for n in want] for i in range(2)}


def test_scaled_branch_is_h_plus_alpha_g():
    net = _seeded(ResNet(8, 3))
    x = torch.randn(4, 8, dtype=torch.float64)
    ends = F.residual_branch_ends(TorchModel(net), x)
    out = F.scale_residual_branches(net, ends, 0.25)
    blk, new = net.blocks[1], out.blocks[1]
    with torch.no_grad():
        g = blk.fc2(blk.act(blk.fc1(x))) - 0.0
        np.testing.assert_allclose(new(x).numpy(), (x + 0.25 * g).numpy(), rtol=1e-13, atol=1e-14)
    assert torch.equal(net.blocks[1].fc2.weight, blk.fc2.weight)  # original untouched
    assert out.blocks[1].fc2.weight.data_ptr() != net.blocks[1].fc2.weight.data_ptr()


def test_exploding_residual_module_gets_branch_scaling():
    net = _seeded(ResNet(16, 24))
    with torch.no_grad():
        for b in net.blocks:
            b.fc1.weight.mul_(2.0)
            b.fc2.weight.mul_(4.0)
    x = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    snap = _snapshot(net)
    d = vgcore.diagnose(net, x)
    _same(net, snap)
    assert d.verdict == "exploding"
    assert d.evidence["exploding_block"] in d.evidence["block_names"]
    res = [f for f in d.fixes if f.cause == "residual branch scale"]
    assert len(res) == 1 and res[0].checked and res[0].helps
    assert res[0].params["layers"] == [f"blocks.{i}.fc2" for i in range(24)]
    # measured against autograd on the fixed copy
    fixed = res[0].model_after.module
    blocks = [*fixed.blocks, fixed.head]
    after = _oracle_log10(blocks, x)
    assert res[0].after == pytest.approx(float(np.max(np.abs(after - after[-1]))), abs=1e-9)
    assert any(f.fix == "gradient clipping" for f in d.fixes)


def test_healthy_module_needs_no_fix():
    net = _seeded(ResNet(16, 4))
    x = torch.randn(16, 16, dtype=torch.float64)
    d = vgcore.diagnose(net, x)
    assert d.verdict == "healthy"
    assert d.causes == [] and d.recommended == [] and d.best is None


def test_functional_activations_are_not_swapped_and_say_so():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(16)])

        def forward(self, x):
            for lin in self.layers:
                x = torch.sigmoid(lin(x))
            return x

    net = _seeded(Functional())
    d = vgcore.diagnose(net, torch.randn(4, 8, dtype=torch.float64))
    assert d.verdict == "vanishing"
    assert not any("ReLU" in f.fix for f in d.fixes)
    assert not any("saturating" in c for c in d.causes)  # no activation module was seen
    assert any(f.fix == "He init" for f in d.fixes)


# ------------------------------------------------------------------------------------------
# the fixes against closed forms
def test_reinit_schemes():
    net = _seeded(nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh()))
    orth = F.reinit(net, "orthogonal", seed=3)
    gain = 5.0 / 3.0  # tanh
    for lin in (orth[0], orth[2]):
        w = lin.weight.detach()
        np.testing.assert_allclose((w @ w.T).numpy(), gain**2 * np.eye(64), atol=1e-12)
        assert torch.count_nonzero(lin.bias) == 0
    xav = F.reinit(net, "xavier_normal", seed=3)
    std = torch.cat([xav[0].weight.flatten(), xav[2].weight.flatten()]).std().item()
    assert std == pytest.approx(gain * math.sqrt(2.0 / 128), rel=0.03)  # 8192 draws: ~0.8%
    he = F.reinit(net, "kaiming_normal", seed=3)
    std = torch.cat([he[0].weight.flatten(), he[2].weight.flatten()]).std().item()
    assert std == pytest.approx(math.sqrt(2.0 / 64), rel=0.03)
    again = F.reinit(net, "kaiming_normal", seed=3)
    assert torch.equal(again[0].weight, he[0].weight)  # seeded
    assert not torch.equal(net[0].weight, he[0].weight)
    with pytest.raises(ValueError, match="scheme must be one of"):
        F.reinit(net, "lecun")


def test_swap_activations_returns_a_copy():
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Sigmoid(), nn.ReLU())
    out, names = F.swap_activations(net, "gelu")
    assert names == ["1", "3"]
    assert [type(m).__name__ for m in out] == ["Linear", "GELU", "Linear", "GELU", "ReLU"]
    assert [type(m).__name__ for m in net] == ["Linear", "Tanh", "Linear", "Sigmoid", "ReLU"]
    leaky, names = F.swap_activations(net, "leaky_relu", kinds=("relu",))
    assert names == ["4"] and leaky[4].negative_slope == 0.1


# ------------------------------------------------------------------------------------------
# reports and bad input
def test_write_report_takes_a_module(tmp_path):
    pytest.importorskip("matplotlib")
    net = _seeded(SigmoidNet(8, 6))
    x = torch.randn(4, 8, dtype=torch.float64)
    snap = _snapshot(net)
    rep = vgcore.write_report(net, tmp_path / "rep", x=x)
    _same(net, snap)
    md = rep.markdown.read_text()
    assert "SigmoidNet (6 blocks)" in md and "| blocks.5 |" in md
    assert len(rep.figures) == 3  # overview, the flow with fixes, units per block
    rows = (tmp_path / "rep" / "data" / "gradient_norms.csv").read_text().splitlines()
    assert rows[0].split(",")[3] == "block" and rows[1].split(",")[3] == "input"
    assert rows[-1].split(",")[3] == "blocks.5"


def test_bad_input():
    net = _seeded(SigmoidNet(4, 3))
    with pytest.raises(ValueError, match="x is required"):
        vgcore.diagnose(net)
    with pytest.raises(ValueError, match="init does not apply to a torch module"):
        vgcore.diagnose(net, torch.zeros(2, 4, dtype=torch.float64), init="xavier_normal")
    with pytest.raises(ValueError, match="not a submodule"):
        vgcore.diagnose(net, torch.zeros(2, 4, dtype=torch.float64), blocks=["nope"])
    mlp = vgcore.MLP.from_sizes([4, 4, 4], "tanh", seed=0)
    with pytest.raises(ValueError, match="loss_fn does not apply to a native model"):
        vgcore.diagnose(mlp, loss_fn=lambda y: y.sum())
    with pytest.raises(ValueError, match=r"blocks applies to a torch\.nn\.Module"):
        vgcore.diagnose(mlp, blocks=["a"])
    with pytest.raises(TypeError, match="MLP, RNN, LSTM or GRU"):
        vgcore.diagnose(object())


def test_sweep_takes_a_module_factory(tmp_path, monkeypatch):
    pytest.importorskip("pandas")
    (tmp_path / "h5sweepnets.py").write_text(
        "from torch import nn\n"
        "def make(depth=3, width=8):\n"
        "    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.Sigmoid())\n"
        "                           for _ in range(depth)]).double()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    grid = {"module": "h5sweepnets:make", "input_shape": "5,8", "depth": [2, 9]}
    df = vgcore.sweep("gradient_flow", grid, seeds=[0, 3], executor="serial")
    assert list(df.status) == ["ok"] * 4
    import h5sweepnets

    for _, row in df.iterrows():
        torch.manual_seed(int(row.seed))
        net = h5sweepnets.make(depth=int(row.depth))
        gen = torch.Generator().manual_seed(int(row.seed) + 1)
        x = torch.randn(5, 8, generator=gen, dtype=torch.float64)
        lg = _oracle_log10(list(net), x)
        assert row.spread == pytest.approx(float(np.max(np.abs(lg - lg[-1]))), rel=1e-10)
    with pytest.raises(ValueError, match="needs input_shape"):
        vgcore.sweep("gradient_flow", {"module": "h5sweepnets:make"}, executor="serial")
    with pytest.raises(ValueError, match=r"module must be 'PKG\.MOD:FACTORY'"):
        vgcore.sweep("diagnose", {"module": "h5sweepnets", "input_shape": "2,8"}, executor="serial")

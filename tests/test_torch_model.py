"""TorchModel: block discovery, the chain check, hygiene (the module is left as it was) and
the dispatch of torch modules in the public analyses."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import vgcore  # noqa: E402
from vgcore.models import is_model, model_kind, model_kinds  # noqa: E402
from vgcore.torchmodel import BlockChainWarning, TorchModel  # noqa: E402
from vgcore.torchmodel._hygiene import hook_counts  # noqa: E402
from vgcore.torchmodel.flow import gradient_flow  # noqa: E402

D64 = torch.float64


class GPT(nn.Module):
    def __init__(self, d: int = 8, layers: int = 3) -> None:
        super().__init__()
        self.wte = nn.Embedding(11, d)
        self.h = nn.ModuleList(
            [nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU()) for _ in range(layers)]
        )
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, 11)

    def forward(self, idx):
        h = self.wte(idx)
        for block in self.h:
            h = block(h)
        return self.head(self.ln_f(h))


class ParentResidual(nn.Module):
    """Residuals added in the parent's forward: the children alone are not a chain."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(3)])
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


class Skip(nn.Module):
    """A skip from the first block's output to the head, across the others."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 4)

    def forward(self, x):
        u = self.a(x)
        return self.c(self.b(u)) + u


def compose(chain):
    h = chain.inputs[0]
    with torch.no_grad():
        for blk in chain.blocks:
            h = blk(h)
    return h


def encoder(norm_first=True):
    layer = nn.TransformerEncoderLayer(
        8, 2, 16, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    return nn.TransformerEncoder(
        layer, 3, norm=nn.LayerNorm(8), enable_nested_tensor=False
    ).double()


# -- discovery ------------------------------------------------------------------------------
def test_sequential_children_are_the_blocks():
    m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 3)).double()
    tm = TorchModel(m)
    ch = tm.chain(torch.randn(2, 4, dtype=D64))
    # dropout in eval returns its input: an identity block, dropped
    assert ch.names == ["0", "1", "3"] and ch.blocks == [m[0], m[1], m[3]]
    assert tm.block_names == ch.names and [n for n, _ in tm.blocks] == ch.names
    assert m.training  # restored


def test_transformer_encoder_layers_and_gpt_h_are_found():
    m = encoder()
    ch = TorchModel(m).chain(torch.randn(2, 5, 8, dtype=D64))
    assert ch.names == ["layers.0", "layers.1", "layers.2", "after"]
    m.eval()  # (module(x) may take torch's fused inference path: a few ulps apart)
    torch.testing.assert_close(compose(ch), m(ch.inputs[0]), rtol=1e-12, atol=1e-14)
    g = GPT().double()
    idx = torch.randint(0, 11, (2, 7))
    ch = TorchModel(g).chain(idx)
    assert ch.names == ["before", "h.0", "h.1", "h.2", "after"]
    assert ch.blocks[1] is g.h[0]
    torch.testing.assert_close(compose(ch), g(idx), rtol=0, atol=0)


def test_residual_in_parent_forward_is_detected_and_coarsened():
    torch.manual_seed(0)
    m = ParentResidual().double()
    x = torch.randn(3, 4, dtype=D64)
    with pytest.warns(BlockChainWarning, match=r"do not form a chain.*blocks\.1"):
        ch = TorchModel(m).chain(x)
    assert ch.names == ["before", "blocks.0..after"]
    torch.testing.assert_close(compose(ch), m(x), rtol=0, atol=0)
    # the coarse chain's gradients are still exact
    with pytest.warns(BlockChainWarning):
        flow = gradient_flow(TorchModel(m), x)
    xx = x.clone().requires_grad_(True)
    y = m(xx)
    (0.5 * (y**2).sum()).backward()
    assert flow.log_grad_norms[0] == pytest.approx(float(np.log(float(xx.grad.norm()))), rel=1e-12)


def test_skip_across_named_blocks_merges_them():
    torch.manual_seed(1)
    m = Skip().double()
    x = torch.randn(2, 4, dtype=D64)
    with pytest.warns(BlockChainWarning, match="skip across"):
        ch = TorchModel(m, blocks=["a", "b", "c"]).chain(x)
    assert ch.names == ["a", "b..after"]
    torch.testing.assert_close(compose(ch), m(x), rtol=0, atol=0)


def test_named_blocks_with_tuple_outputs_cut_at_the_consumers_input():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 5, batch_first=True)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.head(y[:, -1])

    m = M().double()
    x = torch.randn(2, 4, 3, dtype=D64)
    ch = TorchModel(m, blocks=["rnn", "head"]).chain(x)
    assert ch.names == ["rnn", "head"] and ch.blocks[1] is m.head
    torch.testing.assert_close(ch.blocks[0](x), m.rnn(x)[0][:, -1])


def test_bad_block_names_get_clear_errors():
    g = GPT()
    with pytest.raises(ValueError, match=r"'h\.9' is not a submodule of this GPT; did you mean"):
        TorchModel(g, blocks=["h.9"])
    with pytest.raises(ValueError, match="in the order the forward calls them"):
        TorchModel(g, blocks=["h.1", "h.0"]).chain(torch.randint(0, 11, (1, 3)))
    with pytest.raises(ValueError, match='blocks must be "auto"'):
        TorchModel(g, blocks="layers")
    with pytest.raises(TypeError, match=r"module must be a torch\.nn\.Module"):
        TorchModel(object())
    with pytest.raises(RuntimeError, match="no recorded chain"):
        TorchModel(g).blocks  # noqa: B018
    shared = nn.Linear(3, 3)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = shared

        def forward(self, x):
            return self.f(self.f(x))

    with pytest.raises(ValueError, match="'f' is called 2 times"):
        TorchModel(Twice(), blocks=["f"]).chain(torch.randn(1, 3))


def test_tuple_output_module_is_refused_with_a_hint():
    m = nn.LSTM(3, 4)
    with pytest.raises(TypeError, match="returns one tensor"):
        TorchModel(m).chain(torch.randn(2, 1, 3))


# -- hygiene --------------------------------------------------------------------------------
def _state(m):
    return (
        {k: v.detach().clone() for k, v in m.state_dict().items()},
        [mod.training for mod in m.modules()],
        [p.requires_grad for p in m.parameters()],
        [p.grad for p in m.parameters()],
    )


def _same(m, before):
    sd, modes, flags, grads = before
    now = m.state_dict()
    assert all(torch.equal(now[k], v) for k, v in sd.items())
    assert [mod.training for mod in m.modules()] == modes
    assert [p.requires_grad for p in m.parameters()] == flags
    assert all(a is b for a, b in zip([p.grad for p in m.parameters()], grads))
    assert sum(hook_counts(m).values()) == 0


def test_module_is_left_as_it_was():
    torch.manual_seed(2)
    m = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)
    ).double()
    m.train()
    m[0].weight.requires_grad_(False)
    m[4].weight.grad = torch.ones_like(m[4].weight)
    before = _state(m)
    x = torch.randn(4, 2, 4, 4, dtype=D64)
    flow = gradient_flow(TorchModel(m), x, param_grads=True, keep_grads=True)
    _same(m, before)  # BatchNorm statistics not updated: eval semantics
    assert any("train() mode" in n for n in flow.notes)
    assert np.isfinite(flow.log_param_grad_norms["weight"][0])  # frozen weights measured too
    m.eval()
    ref = m(x)
    assert np.array_equal(flow.output, ref.detach().numpy())


def test_an_exception_mid_way_leaves_the_module_as_it_was():
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:  # inside the recording pass, with its hooks in place
                raise RuntimeError("boom")
            return self.lin(x)

    m = nn.Sequential(nn.Linear(3, 3), Fails(), nn.BatchNorm1d(3))
    m.train()
    before = _state(m)
    with pytest.raises(RuntimeError, match="boom"):
        gradient_flow(TorchModel(m), torch.randn(4, 3), param_grads=True)
    _same(m, before)


def test_user_hooks_survive_and_ours_are_removed():
    m = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    seen = []
    h = m[0].register_forward_hook(lambda mod, a, o: seen.append(1))
    gradient_flow(TorchModel(m), torch.randn(2, 3))
    assert seen and hook_counts(m)["_forward_hooks"] == 1
    h.remove()
    assert sum(hook_counts(m).values()) == 0


def test_half_precision_module_is_analysed_in_a_float32_copy():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)).to(torch.bfloat16)
    w = m[0].weight.detach().clone()
    x = torch.randn(3, 4)
    flow = gradient_flow(TorchModel(m), x)
    assert flow.dtype == np.float32
    assert any("bfloat16" in n and "float32 copy" in n for n in flow.notes)
    assert "float32 copy" in repr(flow)
    assert m[0].weight.dtype == torch.bfloat16 and torch.equal(m[0].weight, w)
    ref = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    ref.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    np.testing.assert_array_equal(
        flow.log_grad_norms, gradient_flow(TorchModel(ref), x).log_grad_norms
    )


# -- registry and dispatch ------------------------------------------------------------------
def test_registered_as_a_torch_kind():
    tm = TorchModel(nn.Linear(2, 2))
    assert is_model(tm) and tm.kind == "torch" and tm.axis == "depth" and tm.step_name == "block"
    assert model_kind("torch").backend == "torch"
    assert "torch" not in [k.name for k in model_kinds()]  # core kinds only by default
    assert "torch" in [k.name for k in model_kinds(None)]
    with pytest.raises(NotImplementedError, match="through torch"):
        tm.to_spec()


def test_jacobian_analyses_dispatch_to_the_block_chain():
    jac = pytest.importorskip("vgcore.torchmodel.jacobians")
    torch.manual_seed(4)
    m = nn.Sequential(
        nn.Conv1d(2, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)
    ).double()
    x = np.random.default_rng(0).standard_normal((2, 2, 4))
    sv = vgcore.jacobian_singular_values(m, x)
    ref = jac.singular_values(list(m.named_children()), torch.from_numpy(x))
    np.testing.assert_array_equal(sv.log_singular_values, ref.log_singular_values)
    sp = vgcore.jacobian_spectrum(m, x, which=[0])
    assert (
        type(sp).__name__
        == type(
            jac.block_spectrum(list(m.named_children()), torch.from_numpy(x), which=[0])
        ).__name__
    )
    with pytest.raises(ValueError, match="TorchCell"):
        vgcore.lyapunov(m, x)


def test_torch_free_import():
    import subprocess
    import sys

    code = "import sys, vgcore, vgcore.torchmodel; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_chain_warning_is_quiet_when_the_chain_holds():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TorchModel(encoder()).chain(torch.randn(1, 3, 8, dtype=D64))

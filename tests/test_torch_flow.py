"""Per-block gradient flow of arbitrary torch modules against PyTorch autograd (float64).

Oracles: ``loss.backward()`` on the whole module with ``retain_grad`` on each block boundary
(forward hooks), ``dL/dh`` compared at 1e-9 (full tensors, relative to the largest entry) and
the norms at 1e-10 relative; parameter-gradient norms against ``p.grad``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import vgcore  # noqa: E402
from vgcore.torchmodel import TorchModel  # noqa: E402
from vgcore.torchmodel import flow as flow_mod  # noqa: E402
from vgcore.torchmodel._hygiene import hook_counts  # noqa: E402
from vgcore.torchmodel.flow import gradient_flow  # noqa: E402

D64 = torch.float64


@pytest.fixture(autouse=True, params=["blocks", "graph"])
def memory(request):
    """Every test runs in both memory modes (also through vgcore.gradient_flow): the default
    of torchmodel.flow.gradient_flow is switched for the test."""
    kw = flow_mod.gradient_flow.__kwdefaults__
    before = kw["memory"]
    kw["memory"] = request.param
    yield request.param
    kw["memory"] = before


# -- models ---------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


def residual_cnn(blocks: int = 3, c: int = 4) -> nn.Module:
    m = nn.Sequential(
        nn.Sequential(nn.Conv2d(2, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()),
        *[BasicBlock(c) for _ in range(blocks)],
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3)),
    )
    with torch.no_grad():  # running statistics that differ from the identity
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m.double().eval()


def encoder(norm_first: bool, layers: int = 3, d: int = 16) -> nn.Module:
    layer = nn.TransformerEncoderLayer(
        d, 2, 2 * d, dropout=0.1, batch_first=True, norm_first=norm_first
    )
    return nn.TransformerEncoder(
        layer, layers, norm=nn.LayerNorm(d), enable_nested_tensor=False
    ).double()


class LSTMHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 6, num_layers=2, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.head(y[:, -1])


class SelectiveSSM(nn.Module):
    """A Mamba-style block: input-dependent step sizes and B, C; diagonal A; gated output."""

    def __init__(self, d: int, n: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.in_proj = nn.Linear(d, 2 * d)
        self.dt = nn.Linear(d, d)
        self.bc = nn.Linear(d, 2 * n)
        self.log_a = nn.Parameter(torch.log(torch.linspace(0.5, 2.0, n)).repeat(d, 1))
        self.out = nn.Linear(d, d)
        self.act = nn.SiLU()

    def forward(self, x):  # (B, T, d)
        u, gate = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        dt = F.softplus(self.dt(u))  # (B, T, d)
        b, c = self.bc(u).chunk(2, dim=-1)  # (B, T, n)
        a = -torch.exp(self.log_a)  # (d, n)
        h = torch.zeros(x.shape[0], x.shape[2], a.shape[1], dtype=x.dtype)
        ys = []
        for t in range(x.shape[1]):
            h = (
                torch.exp(dt[:, t, :, None] * a) * h
                + dt[:, t, :, None] * b[:, t, None] * u[:, t, :, None]
            )
            ys.append((h * c[:, t, None]).sum(-1))
        y = torch.stack(ys, 1) * self.act(gate)
        return x + self.out(y)


class SSMStack(nn.Module):
    def __init__(self, d: int = 6, layers: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(3, d)
        self.layers = nn.ModuleList([SelectiveSSM(d) for _ in range(layers)])
        self.norm_f = nn.LayerNorm(d)

    def forward(self, x):
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.norm_f(h)


# -- oracle ---------------------------------------------------------------------------------
def autograd_grads(module, x, boundary_modules, where="out", loss=None):
    """dL/dh at x, at the outputs (or inputs) of the boundary modules, and at y (``where``:
    "out", "in", or one of them per boundary module)."""
    seen = []

    def post(m, a, out):
        out.retain_grad()
        seen.append(out)

    def pre(m, a):
        a[0].retain_grad()
        seen.append(a[0])

    wheres = [where] * len(boundary_modules) if isinstance(where, str) else where
    hooks = [
        b.register_forward_hook(post) if w == "out" else b.register_forward_pre_hook(pre)
        for b, w in zip(boundary_modules, wheres)
    ]
    xx = x.clone().requires_grad_(True)
    try:
        y = module(xx)
    finally:
        for h in hooks:
            h.remove()
    y.retain_grad()
    L = 0.5 * (y**2).sum() if loss is None else loss(y)
    L.backward()
    return [xx.grad, *[s.grad for s in seen], y.grad]


def check_flow(flow, grads, norm_tol=1e-10, full_tol=1e-9):
    # memory="blocks" re-ran every block bit for bit (no fallback to the whole graph)
    assert not any("memory='graph' instead" in n for n in flow.notes)
    ref = np.log([float(g.norm()) for g in grads])
    assert flow.log_grad_norms.shape == ref.shape
    np.testing.assert_allclose(flow.log_grad_norms, ref, rtol=norm_tol, atol=norm_tol)
    for mine, g in zip(flow.grads, grads):
        g = g.detach().numpy()
        assert np.max(np.abs(mine - g)) <= full_tol * np.max(np.abs(g))


# -- oracle tests ---------------------------------------------------------------------------
def test_residual_cnn_matches_autograd():
    torch.manual_seed(0)
    m = residual_cnn()
    x = torch.randn(3, 2, 6, 6, dtype=D64)
    flow = gradient_flow(TorchModel(m), x, keep_grads=True, param_grads=True)
    assert flow.block_names == [str(i) for i in range(5)]
    grads = autograd_grads(m, x, list(m)[:-1])
    check_flow(flow, grads)
    # per-block parameter-gradient norms (weights of block 1 = the first BasicBlock)
    m.zero_grad()
    y = m(x)
    (0.5 * (y**2).sum()).backward()
    blk = list(m)[1]
    ref = math.sqrt(
        sum(float(p.grad.norm()) ** 2 for n, p in blk.named_parameters() if n.endswith("weight"))
    )
    assert flow.log_param_grad_norms["weight"][1] == pytest.approx(math.log(ref), rel=1e-10)
    assert flow.kind == "torch" and flow.axis == "block"


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_encoder_matches_autograd(norm_first):
    torch.manual_seed(1)
    m = encoder(norm_first)
    was = m.training
    x = torch.randn(2, 5, 16, dtype=D64)
    tm = TorchModel(m)
    flow = gradient_flow(tm, x, keep_grads=True)
    assert flow.block_names == ["layers.0", "layers.1", "layers.2", "after"]
    m.eval()  # the oracle in the semantics vgcore analyses in
    grads = autograd_grads(m, x, list(m.layers))
    m.train(was)
    check_flow(flow, grads)
    assert any("train() mode" in n for n in flow.notes)


def test_lstm_with_head_named_blocks():
    torch.manual_seed(2)
    m = LSTMHead().double()
    x = torch.randn(3, 7, 3, dtype=D64)
    flow = gradient_flow(
        TorchModel(m, blocks=["lstm", "head"]), x, keep_grads=True, param_grads=True
    )
    assert flow.block_names == ["lstm", "head"]
    grads = autograd_grads(m, x, [m.head], where="in")
    check_flow(flow, grads)
    assert set(flow.log_param_grad_norms) == {
        "weight_ih",
        "weight_hh",
        "bias_ih",
        "bias_hh",
        "weight",
        "bias",
    }


def test_selective_ssm_stack_and_loss_fn():
    torch.manual_seed(3)
    m = SSMStack().double()
    x = torch.randn(2, 6, 3, dtype=D64)
    target = torch.randn(2, 6, 6, dtype=D64)

    def loss(y):
        return F.mse_loss(y, target)

    flow = gradient_flow(TorchModel(m), x, keep_grads=True, loss_fn=loss)
    assert flow.block_names == ["before", "layers.0", "layers.1", "layers.2", "after"]
    grads = autograd_grads(m, x, [m.embed, *m.layers], loss=loss)
    check_flow(flow, grads)
    assert flow.saturation.shape == (5,)  # SiLU units are recognised in the SSM blocks
    assert flow.low_derivative[1] == "inactive" and flow.low_derivative[0] is None


def test_cotangent_and_dispatch_accept_numpy():
    torch.manual_seed(4)
    m = residual_cnn(blocks=2)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5))
    cot = np.random.default_rng(1).standard_normal((2, 3))
    flow = vgcore.gradient_flow(m, x, cotangent=cot, keep_grads=True)
    assert flow.kind == "torch"
    grads = autograd_grads(
        m, torch.from_numpy(x), list(m)[:-1], loss=lambda y: (y * torch.from_numpy(cot)).sum()
    )
    check_flow(flow, grads)
    with pytest.raises(ValueError, match="cotangent must have the output's shape"):
        vgcore.gradient_flow(m, x, cotangent=cot[:1])
    with pytest.raises(ValueError, match="h0 does not apply"):
        vgcore.gradient_flow(m, x, h0=np.zeros(3))


def test_native_modules_take_the_native_path():
    torch.manual_seed(5)
    seq = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = np.random.default_rng(0).standard_normal((3, 4))
    native = vgcore.gradient_flow(seq, x)
    assert native.kind == "mlp"
    through_torch = gradient_flow(TorchModel(seq), x)
    # the same network: h_0 and the output agree (block 1 of the torch chain is Linear only)
    np.testing.assert_allclose(
        through_torch.log_grad_norms[[0, -1]], native.log_grad_norms[[0, -1]], rtol=1e-12
    )
    gru = nn.GRU(3, 4)
    assert vgcore.gradient_flow(gru, np.zeros((5, 2, 3), np.float32)).kind == "gru"


# -- range ----------------------------------------------------------------------------------
def test_float32_sigmoid_chain_below_float_range():
    torch.manual_seed(6)
    blocks = [nn.Sequential(nn.Linear(8, 8), nn.Sigmoid()) for _ in range(300)]
    m64 = nn.Sequential(*blocks).double()
    m32 = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Sigmoid()) for _ in range(300)])
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    x = torch.randn(4, 8, dtype=D64)
    ref_logs = gradient_flow(TorchModel(m64), x).log_grad_norms  # float64 (rescaled too)
    ref = autograd_grads(m64, x, list(m64)[:-1])
    top = [float(g.norm()) for g in ref][-40:]  # where float64 autograd is still in range
    np.testing.assert_allclose(ref_logs[-40:], np.log(top), rtol=1e-10)
    assert ref_logs[0] < math.log(1e-60)  # far below float32's range
    plain = autograd_grads(m32, x.float(), list(m32)[:-1])
    assert float(plain[0].norm()) == 0.0  # autograd underflows to exact zeros
    flow = gradient_flow(TorchModel(m32), x.float())
    assert np.all(np.isfinite(flow.log_grad_norms))
    np.testing.assert_allclose(flow.log_grad_norms, ref_logs, rtol=1e-4)
    off = gradient_flow(TorchModel(m32), x.float(), rescale=False)
    assert off.log_grad_norms[0] == -np.inf


# -- known results --------------------------------------------------------------------------
def _spread(flow):
    lg = flow.log10_param_grad_norms["weight"][:-1]  # per layer (the final norm excluded)
    return float(np.max(lg) - np.min(lg))


def test_post_ln_gradients_vary_more_across_layers_than_pre_ln():
    """Xiong et al. 2020: at initialisation the per-layer gradient norm of a Post-LN
    Transformer depends strongly on the layer, Pre-LN's hardly at all."""
    spreads = {}
    for nf in (False, True):
        torch.manual_seed(7)
        m = encoder(nf, layers=8, d=32).eval()
        x = torch.randn(4, 12, 32, dtype=D64)
        flow = vgcore.gradient_flow(m, x, param_grads=True)
        spreads[nf] = _spread(flow)
    assert spreads[False] > 3 * spreads[True] and spreads[False] > 0.3


def test_plain_cnn_input_gradient_decays_far_more_than_with_skips():
    """He et al. 2016: without identity shortcuts the gradient reaching the input of a deep
    convolutional stack decays far more than with them."""

    class Plain(nn.Module):
        def __init__(self, c, skip):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)
            self.relu = nn.ReLU()
            self.skip = skip

        def forward(self, x):
            out = self.relu(self.conv(x))
            return x + out if self.skip else out

    gains = {}
    for skip in (False, True):
        torch.manual_seed(8)
        m = nn.Sequential(*[Plain(4, skip) for _ in range(20)]).double()
        flow = vgcore.gradient_flow(m, torch.randn(2, 4, 6, 6, dtype=D64))
        gains[skip] = flow.log10_grad_norms[0] - flow.log10_grad_norms[-1]
    assert gains[False] < gains[True] - 3


def test_parameter_gradients_and_clipping_match_torch():
    torch.manual_seed(9)
    m = encoder(True, layers=2, d=8).eval()
    x = torch.randn(2, 3, 8, dtype=D64)
    flow = vgcore.gradient_flow(m, x, clip_norm=0.01)
    y = m(x)
    (0.5 * (y**2).sum()).backward()
    ref = float(m.layers[1].self_attn.in_proj_weight.grad.norm())
    total = torch.nn.utils.clip_grad_norm_(m.parameters(), 0.01)
    assert flow.clip["total_norm"] == pytest.approx(float(total), rel=1e-10)
    assert flow.clip["clipped"]
    assert flow.param_grad_norms["in_proj_weight"][1] == pytest.approx(ref, rel=1e-10)
    clipped = float(m.layers[1].self_attn.in_proj_weight.grad.norm())
    assert flow.clipped_param_grad_norms["in_proj_weight"][1] == pytest.approx(clipped, rel=1e-9)
    assert np.isnan(flow.log_param_grad_norms["in_proj_weight"][-1])  # the final norm has none
    df = flow.to_pandas()
    assert list(df.index) == ["input", "layers.0", "layers.1", "after"]
    assert "log10_in_proj_weight_grad_norm" in df.columns
    assert "block" in repr(flow) or "blocks" in repr(flow)


def test_saturation_and_dead_units_of_recognised_activations():
    torch.manual_seed(10)
    lin = nn.Linear(5, 5)
    with torch.no_grad():
        lin.bias.fill_(-100.0)  # every ReLU unit off for every sample
    m = nn.Sequential(
        nn.Sequential(nn.Linear(5, 5), nn.Tanh()), nn.Sequential(lin, nn.ReLU())
    ).double()
    x = torch.randn(6, 5, dtype=D64) * 1e4  # tanh saturates for most units
    flow = vgcore.gradient_flow(m, x, dead_units=True)
    with torch.no_grad():
        z = m[0][0](x)
        ref_sat = float(((1 - torch.tanh(z) ** 2) < 1e-3).double().mean())
    assert flow.saturation[0] == pytest.approx(ref_sat, abs=1e-15) and ref_sat > 0.5
    assert flow.low_derivative == ["saturated", "inactive"]
    assert flow.saturation[1] == 1.0 and flow.dead[1] == 1.0 and flow.dead[0] == 0.0


def test_num_threads_sets_torchs_threads_for_the_call_only() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4)).double()
    seen: list[int] = []

    def loss(y: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return 0.5 * (y * y).sum()

    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    tm = vgcore.TorchModel(m)
    vgcore.gradient_flow(tm, torch.randn(3, 4, dtype=torch.float64), loss_fn=loss, num_threads=want)
    assert seen == [want] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads"):
        vgcore.gradient_flow(tm, torch.randn(3, 4, dtype=torch.float64), num_threads=0)


# -- memory="blocks": re-running the blocks ----------------------------------------------------
class NoisyBlock(nn.Module):
    """Random numbers inside the forward whatever the mode (dropout forced on, noise)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        h = F.dropout(torch.tanh(self.lin(x)), 0.5, training=True)
        return h + 0.1 * torch.randn_like(h)


class NoisyParent(nn.Module):
    """Noise drawn by the parent's forward between the blocks, too (blocks re-run as
    segments of the parent's forward)."""

    def __init__(self, d: int = 6, n: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([NoisyBlock(d) for _ in range(n)])
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        for b in self.blocks:
            x = b(x) * (1 + 0.1 * torch.rand(1, dtype=x.dtype))
        return self.head(x)


@pytest.mark.parametrize("net", ["sequential", "parent"])
def test_random_forward_is_replayed_exactly(net, memory):
    torch.manual_seed(11)
    m = (
        nn.Sequential(*[NoisyBlock(6) for _ in range(3)], nn.Linear(6, 2))
        if net == "sequential"
        else NoisyParent()
    ).double()
    # the parent's blocks end where the next one starts (after the parent's noise)
    bounds, where = (
        (list(m)[:-1], "out")
        if net == "sequential"
        else ([m.blocks[1], m.blocks[2], m.blocks[2]], ["in", "in", "out"])
    )
    x = torch.randn(4, 6, dtype=D64)
    tm = TorchModel(m)
    gradient_flow(tm, x)  # block discovery (draws random numbers of its own)
    torch.manual_seed(12)
    flow = gradient_flow(tm, x, keep_grads=True, param_grads=True)
    after = torch.rand(3)
    torch.manual_seed(12)  # the oracle draws the same numbers in the same order
    grads = autograd_grads(m, x, bounds, where=where)
    assert torch.equal(after, torch.rand(3))  # the re-runs left the generator where it was
    check_flow(flow, grads)
    assert len(flow.block_names) == 4


def test_train_mode_batchnorm_and_dropout_are_analysed_in_eval_semantics(memory):
    torch.manual_seed(13)
    m = nn.Sequential(
        nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5)),
        nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5)),
        nn.Linear(8, 3),
    ).double()
    with torch.no_grad():
        for bn in (m[0][1], m[1][1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    m.train()
    stats = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(6, 5, dtype=D64)
    flow = gradient_flow(TorchModel(m), x, keep_grads=True)
    assert m.training and all(torch.equal(v, m.state_dict()[k]) for k, v in stats.items())
    assert any("train() mode" in n for n in flow.notes)
    m.eval()
    grads = autograd_grads(m, x, list(m)[:-1])
    check_flow(flow, grads)


class Counter(nn.Module):
    """Keeps state between calls (a buffer counting them): a re-run differs."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        # a trace of the count: within rounding of the recorded output, not bit for bit
        return torch.tanh(self.lin(x)) * (1 + 1e-15 * self.calls)


def test_a_block_that_does_not_reproduce_falls_back_to_the_graph(memory):
    torch.manual_seed(14)
    m = nn.Sequential(Counter(4), Counter(4), nn.Linear(4, 2)).double()
    x = torch.randn(3, 4, dtype=D64)
    flow = gradient_flow(TorchModel(m), x, keep_grads=True)
    fell_back = any("memory='graph' instead" in n for n in flow.notes)
    assert fell_back == (memory == "blocks")
    assert float(m[0].calls) == 0  # buffers written in place are restored
    grads = autograd_grads(m, x, list(m)[:-1])  # the count changes the gradient by 1e-15
    ref = np.log([float(g.norm()) for g in grads])
    np.testing.assert_allclose(flow.log_grad_norms, ref, rtol=1e-10)


def test_blocks_keep_one_blocks_graph_at_a_time(memory):
    """Peak bytes held for the backward pass (saved tensors, counted per storage): one
    block's graph with memory="blocks", every block's with "graph"."""
    torch.manual_seed(15)
    L, B, d = 8, 64, 32
    m = nn.Sequential(*[nn.Sequential(nn.Linear(d, d), nn.Tanh()) for _ in range(L)]).double()
    x = torch.randn(B, d, dtype=D64)
    tm = TorchModel(m)
    gradient_flow(tm, x)  # discovery keeps a whole graph once
    live: dict[int, list[int]] = {}
    now, peak = [0], [0]

    class Ref:
        def __init__(self, key, t):
            self.key, self.t = key, t

        def __del__(self):
            ent = live[self.key]
            ent[1] -= 1
            if ent[1] == 0:
                now[0] -= ent[0]
                del live[self.key]

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in live:
            live[key] = [t.untyped_storage().nbytes(), 0]
            now[0] += live[key][0]
            peak[0] = max(peak[0], now[0])
        live[key][1] += 1
        return Ref(key, t.detach())

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda r: r.t):
        gradient_flow(tm, x, param_grads=True)
    act = B * d * 8  # one (B, d) float64 activation
    # a block saves its input and its tanh output (the weights are the module's own)
    assert peak[0] <= (3 * act if memory == "blocks" else 3 * L * act)
    assert peak[0] >= (act if memory == "blocks" else L * act)
    assert now[0] == 0


class FailsOnRerun(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.calls = 0
        self.fail_at = -1

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return torch.tanh(self.lin(x))


def test_an_exception_in_a_rerun_leaves_module_and_generator_as_they_were(memory):
    m = nn.Sequential(FailsOnRerun(), nn.Dropout(0.3), nn.Linear(3, 2)).train()
    x = torch.randn(4, 3)
    tm = TorchModel(m)
    gradient_flow(tm, x)
    m[0].fail_at = m[0].calls + 2  # the recording pass runs, the re-run raises
    torch.manual_seed(16)
    state = torch.get_rng_state()
    if memory == "blocks":
        with pytest.raises(RuntimeError, match="boom"):
            gradient_flow(tm, x)
    else:
        gradient_flow(tm, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert m.training and sum(hook_counts(m).values()) == 0


def test_memory_must_be_a_known_mode():
    with pytest.raises(ValueError, match=r"memory must be one of \('blocks', 'graph'\), got 'low'"):
        gradient_flow(TorchModel(nn.Linear(2, 2)), torch.randn(1, 2), memory="low")


class TinyLM(nn.Module):
    """Token ids in: the first block (the embedding) has no input gradient."""

    def __init__(self, vocab: int = 11, d: int = 6, n: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.h = nn.ModuleList([nn.Sequential(nn.Linear(d, d), nn.GELU()) for _ in range(n)])
        self.out = nn.Linear(d, vocab)

    def forward(self, idx):
        x = self.emb(idx)
        for b in self.h:
            x = b(x)
        return self.out(x)


def test_token_ids_in_both_memory_modes():
    torch.manual_seed(17)
    m = TinyLM().double()
    idx = torch.randint(0, 11, (2, 5))
    flow = gradient_flow(TorchModel(m), idx, keep_grads=True, param_grads=True)
    assert flow.block_names == ["before", "h.0", "h.1", "h.2", "after"]
    assert np.isnan(flow.log_grad_norms[0])  # integer input: no gradient there
    assert np.isfinite(flow.log_param_grad_norms["weight"][0])  # the embedding's
    # the oracle: dL/dh at the inputs of h.0, h.1, h.2, out and at the output
    seen = []

    def keep(mod, a):
        a[0].retain_grad()
        seen.append(a[0])

    hooks = [b.register_forward_pre_hook(keep) for b in (*m.h, m.out)]
    try:
        y = m(idx)
    finally:
        for hk in hooks:
            hk.remove()
    y.retain_grad()
    (0.5 * (y**2).sum()).backward()
    ref = np.log([float(t.grad.norm()) for t in (*seen, y)])
    np.testing.assert_allclose(flow.log_grad_norms[1:], ref, rtol=1e-10)
    emb = math.log(float(m.emb.weight.grad.norm()))
    assert flow.log_param_grad_norms["weight"][0] == pytest.approx(emb, rel=1e-10)
    assert not any("memory='graph' instead" in n for n in flow.notes)

"""signal_propagation over a chain of torch blocks: every statistic against closed forms and
float64 oracles computed directly with numpy on the activations, attention entropy against a
direct softmax(Q K^T / sqrt(d_head)), the rank-collapse result of Dong et al. (2021), and the
module left as it was."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from vgcore.torchmodel.signal import SignalPropagation, signal_propagation  # noqa: E402

F64 = torch.float64
RTOL = 1e-10  # float64 statistics against the numpy oracle


class Fn(nn.Module):
    """A block made of a function of one tensor."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, h):
        return self.fn(h)


class SelfAttention(nn.Module):
    """``mha(h, h, h)`` as a one-tensor block, with optional masks and residual."""

    def __init__(self, mha, *, residual=False, **call_kw):
        super().__init__()
        self.mha = mha
        self.residual = residual
        self.call_kw = call_kw

    def forward(self, h):
        out = self.mha(h, h, h, **self.call_kw)[0]
        return h + out if self.residual else out


# ------------------------------------------------------------------------------------------
# oracles (numpy float64 on the activations, each computed by running the blocks directly)
def activations(blocks, x):
    hs = [x]
    with torch.no_grad():
        for _, b in blocks:
            hs.append(b(hs[-1]))
    return [h.detach().to(F64).numpy() for h in hs]


def token_matrices(h, layout):
    """(M, n, d) token matrices, built independently of the implementation."""
    if h.ndim == 2:
        return h[None]
    if layout == "seq_first":
        return np.transpose(h, (1, 0, 2))
    if layout == "channels_first":
        return np.moveaxis(h, 1, -1).reshape(h.shape[0], -1, h.shape[1])
    return h.reshape(h.shape[0], -1, h.shape[-1])


def oracle_stats(h, layout):
    a = token_matrices(h, layout)
    rms = math.sqrt(np.mean(h**2))
    norms = np.linalg.norm(a, axis=-1)
    cos, sr = [], []
    for m in range(a.shape[0]):
        rows = a[m][norms[m] > 0]
        u = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        c = u @ u.T
        n = len(rows)
        cos.append((c.sum() - np.trace(c)) / (n * (n - 1)) if n > 1 else np.nan)
        s = np.linalg.svd(a[m], compute_uv=False)
        sr.append(np.sum(a[m] ** 2) / s[0] ** 2 if s[0] > 0 else np.nan)
    return {
        "rms": rms,
        "mean_token_norm": norms.mean(),
        "cosine": np.nanmean(cos),
        "stable_rank": np.nanmean(sr),
    }


def assert_stats(res, blocks, x, layouts):
    hs = activations(blocks, x)
    assert len(res.names) == len(hs)
    for i, (h, lay) in enumerate(zip(hs, layouts)):
        want = oracle_stats(h, lay)
        for k, v in want.items():
            got = getattr(res, k)[i]
            np.testing.assert_allclose(got, v, rtol=RTOL, atol=1e-13, err_msg=f"{k} row {i}")


def attention_oracle(mha, query, key=None, *, attn_mask=None, key_padding_mask=None):
    """softmax(Q K^T / sqrt(d_head) + mask) per head, (B, H, L, S), written out by hand."""
    key = query if key is None else key
    if not mha.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    E, H = mha.embed_dim, mha.num_heads
    dh = E // H
    if mha._qkv_same_embed_dim:
        wq, wk = mha.in_proj_weight[:E], mha.in_proj_weight[E : 2 * E]
    else:
        wq, wk = mha.q_proj_weight, mha.k_proj_weight
    bq = mha.in_proj_bias[:E] if mha.in_proj_bias is not None else 0.0
    bk = mha.in_proj_bias[E : 2 * E] if mha.in_proj_bias is not None else 0.0
    with torch.no_grad():
        q = (query @ wq.T + bq).to(F64)
        k = (key @ wk.T + bk).to(F64)
        B, L, S = q.shape[0], q.shape[1], k.shape[1]
        q = q.reshape(B, L, H, dh).transpose(1, 2)
        k = k.reshape(B, S, H, dh).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, -math.inf)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], -math.inf)
        p = torch.softmax(scores, dim=-1)
    return p.numpy()


def entropy_per_head(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        e = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)  # (B, H, L)
    return e.mean(axis=(0, 2))


# ------------------------------------------------------------------------------------------
# closed forms
def test_identical_tokens_cosine_one_stable_rank_one():
    torch.manual_seed(0)
    B, S, d = 3, 7, 5
    x = torch.randn(B, 1, d, dtype=F64).expand(B, S, d).contiguous()
    blocks = [("scale", Fn(lambda h: 3.0 * h)), ("tanh", nn.Tanh())]
    res = signal_propagation(blocks, x)
    assert isinstance(res, SignalPropagation)
    assert res.names == ["(input)", "scale", "tanh"]
    np.testing.assert_allclose(res.cosine, 1.0, rtol=0, atol=1e-13)
    np.testing.assert_allclose(res.stable_rank, 1.0, rtol=1e-12)
    xn = x.numpy()
    np.testing.assert_allclose(res.rms[:2], [np.sqrt(np.mean(xn**2)), 3 * np.sqrt(np.mean(xn**2))])
    np.testing.assert_allclose(res.mean_token_norm[1], 3 * np.linalg.norm(xn, axis=-1).mean())
    assert list(res.num_tokens) == [S] * 3 and list(res.num_features) == [d] * 3


def test_orthogonal_tokens_cosine_zero_stable_rank_tokens():
    torch.manual_seed(1)
    B, S, d, c = 2, 6, 9, 2.5
    q = torch.linalg.qr(torch.randn(B, d, d, dtype=F64))[0]
    x = c * q[:, :S, :]  # per sample: S orthogonal tokens of norm c
    res = signal_propagation([("id", nn.Identity())], x)
    np.testing.assert_allclose(res.cosine, 0.0, atol=1e-13)
    np.testing.assert_allclose(res.stable_rank, float(S), rtol=1e-12)
    np.testing.assert_allclose(res.mean_token_norm, c, rtol=1e-12)
    np.testing.assert_allclose(res.rms, c / math.sqrt(d), rtol=1e-12)
    # unequal norms: stable rank = sum c_i^2 / max c_i^2, cosine still 0
    scales = torch.arange(1, S + 1, dtype=F64)
    res = signal_propagation([("id", nn.Identity())], x * scales[:, None])
    np.testing.assert_allclose(res.stable_rank, float((scales**2).sum() / S**2), rtol=1e-12)
    np.testing.assert_allclose(res.cosine, 0.0, atol=1e-13)


def test_two_d_tensor_rows_are_tokens():
    q = torch.linalg.qr(torch.randn(8, 8, dtype=F64))[0]
    x = q[:5]  # (B=5, d=8): 5 orthogonal rows of norm 1
    res = signal_propagation([("neg", Fn(lambda h: -h))], x)
    assert res.layouts == ["rows", "rows"]
    assert list(res.num_tokens) == [5, 5]
    np.testing.assert_allclose(res.stable_rank, 5.0, rtol=1e-12)
    np.testing.assert_allclose(res.cosine, 0.0, atol=1e-13)
    assert res.batch_size == 5


def test_zero_tokens_and_single_token_give_nan_without_warnings():
    x = torch.zeros(2, 4, 3, dtype=F64)
    x[0, 0] = 1.0  # sample 0: one nonzero token; sample 1: all zero
    res = signal_propagation([("zero", Fn(lambda h: 0 * h))], x)
    assert np.isnan(res.cosine).all()  # fewer than two nonzero tokens everywhere
    assert res.stable_rank[0] == pytest.approx(1.0, rel=1e-12)  # the zero sample is left out
    assert np.isnan(res.stable_rank[1]) and res.rms[1] == 0.0
    res.to_pandas()
    repr(res)


# ------------------------------------------------------------------------------------------
# against the numpy oracle, per layout
def test_cnn_channels_first_against_oracle():
    torch.manual_seed(2)
    blocks = [
        ("conv1", nn.Conv2d(3, 4, 3, padding=1, dtype=F64)),
        ("bn", nn.BatchNorm2d(4, dtype=F64).eval()),
        ("relu", nn.ReLU()),
        ("conv2", nn.Conv2d(4, 5, 3, stride=2, dtype=F64)),
        ("flat", nn.Flatten()),
        ("head", nn.Linear(5 * 3 * 3, 4, dtype=F64)),
    ]
    blocks[1][1].running_mean.normal_()
    blocks[1][1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, 8, 8, dtype=F64)
    res = signal_propagation(blocks, x)
    lay = ["channels_first"] * 5 + ["rows"] * 2
    assert res.layouts == lay
    assert list(res.num_tokens) == [64, 64, 64, 64, 9, 3, 3]
    assert list(res.num_features) == [3, 4, 4, 4, 5, 45, 4]
    assert_stats(res, blocks, x, lay)


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_layout_follows_batch_first(batch_first):
    torch.manual_seed(3)
    mk = lambda: nn.TransformerEncoderLayer(  # noqa: E731
        8, 2, dim_feedforward=16, batch_first=batch_first, dtype=F64
    ).eval()
    blocks = [("emb", nn.Linear(5, 8, dtype=F64)), ("l0", mk()), ("l1", mk())]
    B, S = 2, 6
    x = torch.randn(B, S, 5, dtype=F64) if batch_first else torch.randn(S, B, 5, dtype=F64)
    res = signal_propagation(blocks, x)
    lay = "batch_first" if batch_first else "seq_first"
    assert res.layouts == [lay] * 4
    assert list(res.num_tokens) == [S] * 4
    assert res.batch_size == B
    assert_stats(res, blocks, x, [lay] * 4)


def test_layout_auto_and_explicit():
    torch.manual_seed(4)
    x = torch.randn(3, 4, 5, dtype=F64)
    lin = [("lin", nn.Linear(5, 5, dtype=F64))]
    assert signal_propagation(lin, x).layouts == ["batch_first"] * 2
    res = signal_propagation(lin, x, layout="seq_first")
    assert res.layouts == ["seq_first"] * 2 and list(res.num_tokens) == [3, 3]
    assert_stats(res, lin, x, ["seq_first"] * 2)
    res = signal_propagation(lin, x, layout="channels_first")
    assert list(res.num_tokens) == [5, 5] and list(res.num_features) == [4, 4]
    assert_stats(res, lin, x, ["channels_first"] * 2)
    conv = [("c", nn.Conv1d(4, 6, 3, dtype=F64))]
    res = signal_propagation(conv, torch.randn(2, 4, 10, dtype=F64))
    assert res.layouts == ["channels_first"] * 2 and list(res.num_tokens) == [10, 8]
    # channels-last images read as batch_first: (B, H, W, C), H*W tokens of C features
    img = torch.randn(2, 3, 4, 5, dtype=F64)
    res = signal_propagation([("id", nn.Identity())], img, layout="batch_first")
    assert list(res.num_tokens) == [12, 12]
    assert_stats(res, [("id", nn.Identity())], img, ["batch_first"] * 2)


def test_float32_blocks_reduced_in_float64():
    torch.manual_seed(5)
    blocks = [("l0", nn.Linear(6, 6)), ("t", nn.Tanh()), ("l1", nn.Linear(6, 3))]
    x = torch.randn(4, 5, 6)
    res = signal_propagation(blocks, x)
    assert res.dtype == "float32" and res.device == "cpu"
    assert res.rms.dtype == np.float64
    # the oracle sees the same float32 activations, so float64 agreement holds
    assert_stats(res, blocks, x, ["batch_first"] * 4)


def test_integer_token_ids_get_no_input_statistics():
    torch.manual_seed(6)
    blocks = [("emb", nn.Embedding(10, 4, dtype=F64)), ("lin", nn.Linear(4, 4, dtype=F64))]
    ids = torch.randint(0, 10, (2, 5))
    res = signal_propagation(blocks, ids)
    assert res.layouts[0] == "none" and np.isnan(res.rms[0]) and res.num_tokens[0] == 0
    assert any("(input)" in n for n in res.notes)
    hs = activations(blocks, ids)
    for i in (1, 2):
        want = oracle_stats(hs[i], "batch_first")
        np.testing.assert_allclose(res.cosine[i], want["cosine"], rtol=RTOL)
        np.testing.assert_allclose(res.stable_rank[i], want["stable_rank"], rtol=RTOL)


def test_sequential_is_a_chain():
    seq = nn.Sequential(nn.Linear(3, 4, dtype=F64), nn.ReLU(), nn.Linear(4, 2, dtype=F64))
    x = torch.randn(5, 3, dtype=F64)
    res = signal_propagation(seq, x)
    assert res.block_names == ["0", "1", "2"] and res.depth == 3
    assert_stats(res, list(seq.named_children()), x, ["rows"] * 4)


# ------------------------------------------------------------------------------------------
# attention entropy
def zero_qk(mha):
    """Queries and keys zero: every score 0, uniform attention."""
    with torch.no_grad():
        E = mha.embed_dim
        mha.in_proj_weight[: 2 * E].zero_()
        mha.in_proj_bias[: 2 * E].zero_()
    return mha


def test_uniform_attention_entropy_is_log_keys():
    torch.manual_seed(7)
    B, S, E, H = 2, 6, 8, 4
    mha = zero_qk(nn.MultiheadAttention(E, H, batch_first=True, dtype=F64).eval())
    x = torch.randn(B, S, E, dtype=F64)
    res = signal_propagation([("att", SelfAttention(mha))], x)
    (rec,) = res.attention
    assert (rec.block, rec.module, rec.calls, rec.num_keys) == ("att", "mha", 1, S)
    np.testing.assert_allclose(rec.entropy, math.log(S), rtol=1e-13)
    assert rec.max_entropy == pytest.approx(math.log(S))
    # causal mask: query i is uniform over i + 1 keys
    causal = torch.ones(S, S, dtype=torch.bool).triu(1)
    want = np.mean([math.log(i + 1) for i in range(S)])
    for kw in ({"attn_mask": causal}, {"attn_mask": causal, "is_causal": True}):
        res = signal_propagation([("att", SelfAttention(mha, **kw))], x)
        np.testing.assert_allclose(res.attention[0].entropy, want, rtol=1e-13)
    # key padding: the last 2 keys of every sample masked out
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[:, -2:] = True
    res = signal_propagation([("att", SelfAttention(mha, key_padding_mask=kpm))], x)
    np.testing.assert_allclose(res.attention[0].entropy, math.log(S - 2), rtol=1e-13)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_against_direct_softmax(batch_first):
    torch.manual_seed(8)
    B, S, E, H = 3, 7, 12, 3
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first, dtype=F64).eval()
    with torch.no_grad():
        mha.in_proj_weight.mul_(3.0)  # sharper than at init, so heads differ clearly
        mha.in_proj_bias.normal_()
    x = torch.randn(B, S, E, dtype=F64)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    causal = torch.ones(S, S, dtype=torch.bool).triu(1)
    for kw in ({}, {"attn_mask": causal}):
        res = signal_propagation([("att", SelfAttention(mha, **kw))], x, keep_attention=True)
        p = attention_oracle(mha, x, attn_mask=kw.get("attn_mask"))
        (rec,) = res.attention
        assert rec.weights is not None and len(rec.weights) == 1
        np.testing.assert_allclose(rec.weights[0], p, rtol=0, atol=1e-13)
        np.testing.assert_allclose(rec.entropy, entropy_per_head(p), rtol=RTOL)
        assert np.ptp(rec.entropy) > 0.05  # the heads really differ
        # and the module's own per-head weights agree
        with torch.no_grad():
            own = mha(x, x, x, need_weights=True, average_attn_weights=False, **kw)[1]
        np.testing.assert_allclose(rec.weights[0], own.numpy(), rtol=0, atol=1e-13)


def test_cross_attention_with_separate_projections():
    torch.manual_seed(9)
    B, L, S, E, H, kd = 2, 5, 7, 8, 2, 6
    mha = nn.MultiheadAttention(E, H, kdim=kd, vdim=kd, batch_first=True, dtype=F64).eval()
    assert not mha._qkv_same_embed_dim
    mem = torch.randn(B, S, kd, dtype=F64)
    block = Fn(lambda h: mha(h, mem, mem)[0])
    block.mha = mha  # registered so the chain holds it
    x = torch.randn(B, L, E, dtype=F64)
    res = signal_propagation([("cross", block)], x)
    (rec,) = res.attention
    assert rec.num_keys == S and rec.module == "mha"
    p = attention_oracle(mha, x, mem)
    np.testing.assert_allclose(rec.entropy, entropy_per_head(p), rtol=RTOL)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_layer_entropy_eval_mode(batch_first, norm_first):
    """The layer calls self_attn with need_weights=False and, in eval mode under no_grad,
    would take its fused fast path: the weights are still recorded, and exact."""
    torch.manual_seed(10)
    B, S, E, H = 2, 6, 8, 4
    layers = [
        nn.TransformerEncoderLayer(
            E, H, dim_feedforward=16, batch_first=batch_first, norm_first=norm_first, dtype=F64
        ).eval()
        for _ in range(2)
    ]
    for layer in layers:
        with torch.no_grad():
            layer.self_attn.in_proj_weight.mul_(2.0)
    blocks = [(f"layer{i}", m) for i, m in enumerate(layers)]
    x = torch.randn(B, S, E, dtype=F64) if batch_first else torch.randn(S, B, E, dtype=F64)
    res = signal_propagation(blocks, x, keep_attention=True)
    assert [(a.block, a.module) for a in res.attention] == [
        ("layer0", "self_attn"),
        ("layer1", "self_attn"),
    ]
    hs = [x]
    with torch.no_grad():  # the layers' own (fast-path) forward
        for m in layers:
            hs.append(m(hs[-1]))
    for rec, layer, h in zip(res.attention, layers, hs):
        a_in = layer.norm1(h) if norm_first else h
        p = attention_oracle(layer.self_attn, a_in)
        np.testing.assert_allclose(rec.weights[0], p, rtol=0, atol=1e-12)
        np.testing.assert_allclose(rec.entropy, entropy_per_head(p), rtol=RTOL)
    lay = "batch_first" if batch_first else "seq_first"
    assert_stats(res, blocks, x, [lay] * 3)


def test_whole_encoder_as_one_block_and_shared_attention():
    torch.manual_seed(11)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True, dtype=F64)
    enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 5, 8, dtype=F64)
    res = signal_propagation([("enc", enc)], x)
    assert [a.name for a in res.attention] == ["enc.layers.0.self_attn", "enc.layers.1.self_attn"]
    # one module in two blocks: one record per block, each with that block's input
    mha = nn.MultiheadAttention(8, 2, batch_first=True, dtype=F64).eval()
    shared = SelfAttention(mha, residual=True)
    res = signal_propagation([("a", shared), ("b", shared)], x, keep_attention=True)
    assert [(a.block, a.calls) for a in res.attention] == [("a", 1), ("b", 1)]
    with torch.no_grad():
        h1 = shared(x)
    np.testing.assert_allclose(
        res.attention[1].entropy, entropy_per_head(attention_oracle(mha, h1)), rtol=RTOL
    )
    # a module called twice within a block: the mean over both calls
    twice = Fn(lambda h: shared(shared(h)))
    twice.inner = shared
    res = signal_propagation([("twice", twice)], x)
    (rec,) = res.attention
    assert rec.calls == 2 and rec.module == "inner.mha"
    e = [entropy_per_head(attention_oracle(mha, h)) for h in (x, h1)]
    np.testing.assert_allclose(rec.entropy, (e[0] + e[1]) / 2, rtol=RTOL)


def test_training_mode_dropout_and_extra_keys():
    """Attention dropout in training mode is not applied to the recorded weights, and no
    random numbers are drawn for them; bias_k / add_zero_attn add keys."""
    torch.manual_seed(14)
    B, S, E, H = 2, 5, 8, 2
    mha = nn.MultiheadAttention(E, H, dropout=0.5, batch_first=True, dtype=F64).train()
    x = torch.randn(B, S, E, dtype=F64)
    block = SelfAttention(mha, need_weights=False)
    torch.manual_seed(15)
    with torch.no_grad():
        plain = block(x)
    torch.manual_seed(15)
    res = signal_propagation([("att", block)], x)
    np.testing.assert_allclose(
        res.attention[0].entropy, entropy_per_head(attention_oracle(mha, x)), rtol=RTOL
    )
    # the block saw the same dropout masks as without the analysis
    with torch.no_grad():
        want = oracle_stats(plain.numpy(), "batch_first")["rms"]
    assert res.rms[1] == pytest.approx(want, rel=1e-14)
    extra = nn.MultiheadAttention(
        E, H, add_bias_kv=True, add_zero_attn=True, batch_first=True, dtype=F64
    ).eval()
    res = signal_propagation([("att", SelfAttention(extra))], x, keep_attention=True)
    (rec,) = res.attention
    assert rec.num_keys == S + 2
    with torch.no_grad():
        own = extra(x, x, x, average_attn_weights=False)[1].numpy()
    np.testing.assert_allclose(rec.weights[0], own, rtol=0, atol=1e-13)
    np.testing.assert_allclose(rec.entropy, entropy_per_head(own), rtol=RTOL)


def test_attention_off():
    mha = nn.MultiheadAttention(4, 2, batch_first=True, dtype=F64).eval()
    res = signal_propagation(
        [("a", SelfAttention(mha))], torch.randn(1, 3, 4, dtype=F64), attention=False
    )
    assert res.attention == [] and np.isnan(res.block_attention()["attn_entropy"]).all()


# ------------------------------------------------------------------------------------------
# known result: pure attention loses rank with depth (Dong, Cordonnier & Loukas 2021)
def self_attention_stack(depth, residual, seed):
    torch.manual_seed(seed)
    E, H = 32, 4
    return [
        (
            f"sa{i}",
            SelfAttention(
                nn.MultiheadAttention(E, H, batch_first=True, dtype=F64).eval(),
                residual=residual,
                need_weights=False,
            ),
        )
        for i in range(depth)
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pure_attention_collapses_rank_residuals_prevent_it(seed):
    depth = 10
    x = torch.randn(4, 16, 32, dtype=F64, generator=torch.Generator().manual_seed(100 + seed))
    pure = signal_propagation(self_attention_stack(depth, False, seed), x)
    res = signal_propagation(self_attention_stack(depth, True, seed), x)
    # random input tokens are nearly orthogonal
    assert abs(pure.cosine[0]) < 0.1
    # without residuals: 1 - cosine shrinks at every block (until float64's floor), the
    # tokens are parallel after a few blocks and the token matrices have rank one
    gap = 1.0 - pure.cosine
    for i in range(1, depth + 1):
        assert gap[i] < 0.5 * gap[i - 1] or gap[i] < 1e-12, (i, gap)
    assert pure.cosine[3] > 1 - 1e-6 and pure.cosine[-1] > 1 - 1e-10
    assert abs(pure.stable_rank[-1] - 1.0) < 1e-8
    # the same blocks with residual connections keep the tokens apart
    assert res.cosine[-1] < 0.5 and res.stable_rank[-1] > 2.5
    assert (pure.cosine[2:] - res.cosine[2:] > 0.5).all()


# ------------------------------------------------------------------------------------------
# the module is left as it was
def hook_counts(module):
    names = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_pre_hooks_with_kwargs",
        "_backward_hooks",
        "_backward_pre_hooks",
    )
    return {(n, a): len(getattr(m, a, {})) for n, m in module.named_modules() for a in names}


def snapshot(module):
    return (
        {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()},
        {n: m.training for n, m in module.named_modules()},
        {n: p.requires_grad for n, p in module.named_parameters()},
    )


def assert_unchanged(module, snap):
    state, modes, req = snap
    now = module.state_dict(keep_vars=True)
    assert state.keys() == now.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k
    assert modes == {n: m.training for n, m in module.named_modules()}
    assert req == {n: p.requires_grad for n, p in module.named_parameters()}
    assert all(p.grad is None for p in module.parameters())
    assert all(v == 0 for v in hook_counts(module).values())


class Boom(nn.Module):
    """Runs its attention, then raises."""

    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True, dtype=F64)

    def forward(self, h):
        self.mha(h, h, h)
        raise RuntimeError("boom")


def make_model(mode):
    torch.manual_seed(12)
    model = nn.Sequential()
    model.add_module(
        "enc", nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True, dtype=F64)
    )
    model.add_module("bn", nn.BatchNorm1d(5, dtype=F64))  # (B, 5, 8): 5 channels
    model.add_module("att", SelfAttention(nn.MultiheadAttention(8, 2, batch_first=True, dtype=F64)))
    model.add_module("boom", Boom())
    model.train(mode == "train")
    model.att.mha.in_proj_bias.requires_grad_(False)
    return model


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_module_unchanged_and_no_hooks(mode):
    model = make_model(mode)
    chain = list(model.named_children())[:3]
    fast = torch.backends.mha.get_fastpath_enabled()
    snap = snapshot(model)
    x = torch.randn(2, 5, 8, dtype=F64)
    res = signal_propagation(chain, x, layout="batch_first")
    assert len(res.attention) == 2
    assert_unchanged(model, snap)  # incl. BatchNorm running statistics in training mode
    assert torch.backends.mha.get_fastpath_enabled() == fast


def test_exception_in_a_block_leaves_no_trace():
    model = make_model("eval")
    fast = torch.backends.mha.get_fastpath_enabled()
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        signal_propagation(list(model.named_children()), torch.randn(2, 5, 8, dtype=F64))
    assert_unchanged(model, snap)
    assert torch.backends.mha.get_fastpath_enabled() == fast
    # a block that returns a tuple: the error names it, and nothing is left behind either
    pair = Fn(lambda h: (h, h))
    with pytest.raises(TypeError, match=r"block 'pair' \(Fn\) returned a tuple; each block"):
        signal_propagation([("enc", model.enc), ("pair", pair)], torch.randn(2, 5, 8, dtype=F64))
    assert_unchanged(model, snap)


# ------------------------------------------------------------------------------------------
# bad input
@pytest.mark.parametrize(
    ("blocks", "err", "match"),
    [
        (None, TypeError, "blocks must be a non-empty sequence"),
        (nn.Linear(2, 2), TypeError, "blocks must be .* got Linear"),
        ([], ValueError, "blocks must be .* got an empty sequence"),
        ([nn.Identity()], TypeError, r"blocks\[0\] is a Identity"),
        ([("a", 3)], TypeError, r"blocks\[0\] \('a'\) holds a int"),
        ([(1, nn.Identity())], TypeError, r"the name of blocks\[0\] is a int"),
        ([("a", nn.Identity()), ("a", nn.Tanh())], ValueError, "'a' appears twice"),
        ([("(input)", nn.Identity())], ValueError, "reserved"),
    ],
)
def test_bad_blocks(blocks, err, match):
    with pytest.raises(err, match=match):
        signal_propagation(blocks, torch.zeros(2, 3))


def test_bad_x_and_layout():
    blocks = [("id", nn.Identity())]
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got ndarray"):
        signal_propagation(blocks, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"x must have a batch axis, got a 0-d tensor$"):
        signal_propagation(blocks, torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"layout must be one of .* got 'nchw'"):
        signal_propagation(blocks, torch.zeros(2, 3), layout="nchw")
    with pytest.raises(ValueError, match=r"'\(input\)' is a 4-D tensor .* another layout"):
        signal_propagation(blocks, torch.zeros(2, 3, 4, 5), layout="seq_first")
    up = [("up", Fn(lambda h: h[..., None, None]))]
    with pytest.raises(ValueError, match="'up' is a 5-D tensor"):
        signal_propagation(up, torch.zeros(2, 3, 4), layout="seq_first")
    mixed = [
        ("att", SelfAttention(nn.MultiheadAttention(4, 2, batch_first=True))),
        ("rnn", Fn(lambda h: h)),
    ]
    mixed[1][1].lstm = nn.LSTM(4, 4)  # batch_first=False
    with pytest.raises(ValueError, match="batch_first=True and batch_first=False"):
        signal_propagation(mixed, torch.zeros(2, 3, 4))


# ------------------------------------------------------------------------------------------
# presentation
def test_to_pandas_repr_and_plot():
    pytest.importorskip("pandas")
    torch.manual_seed(13)
    blocks = [*self_attention_stack(3, True, 0), ("out", nn.Linear(32, 4, dtype=F64))]
    x = torch.randn(2, 5, 32, dtype=F64)
    res = signal_propagation(blocks, x)
    df = res.to_pandas()
    assert list(df.index) == ["(input)", "sa0", "sa1", "sa2", "out"]
    np.testing.assert_array_equal(df["cosine"].to_numpy(), res.cosine)
    np.testing.assert_array_equal(df["stable_rank"].to_numpy(), res.stable_rank)
    assert np.isnan(df["attn_entropy"].iloc[[0, 4]]).all()
    np.testing.assert_allclose(
        df["attn_entropy"].iloc[1], res.attention[0].entropy.mean(), rtol=1e-14
    )
    assert "log10_grad_norm" not in df
    att = res.attention_to_pandas()
    assert len(att) == 3 * 4 and (att["normalized"] <= 1 + 1e-12).all()
    text = repr(res)
    assert text.startswith("SignalPropagation(4 blocks, B=2, float64, cpu)")
    assert all(n in text for n in res.names)
    res.log_grad_norms = np.linspace(-3.0, 0.0, 5)
    df = res.to_pandas()
    np.testing.assert_allclose(df["log10_grad_norm"], res.log_grad_norms / math.log(10))

    plt = pytest.importorskip("matplotlib.pyplot")
    axs = res.plot()
    assert len(axs) == 4  # norm, cosine, stable rank, attention
    assert len(axs[0].get_lines()) == 3  # RMS, token norm, gradient norm
    np.testing.assert_allclose(axs[1].get_lines()[0].get_ydata(), res.cosine)
    _, ax = plt.subplots()
    assert res.plot(ax=ax) is ax
    plt.close("all")

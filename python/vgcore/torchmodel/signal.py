"""Forward signal propagation through a chain of torch blocks.

:func:`signal_propagation` runs one forward pass through a chain of blocks (the
``Sequence[tuple[str, torch.nn.Module]]`` that :attr:`vgcore.TorchModel.blocks` returns) and
measures, on the input and on every block's output, the quantities Transformer and CNN studies
track with depth: the representation norm, the mean cosine similarity between tokens (rank
collapse), the stable rank of each sample's token matrix, and the attention entropy of every
head of the ``torch.nn.MultiheadAttention`` modules inside the blocks.

torch is imported inside the functions: importing this module does not import it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = ["LAYOUTS", "AttentionEntropy", "SignalPropagation", "signal_propagation"]

#: Values of ``layout=`` (see :func:`signal_propagation`).
LAYOUTS = ("auto", "batch_first", "seq_first", "channels_first")

#: The name of the row that describes the chain's input ``x`` (row 0 of every array).
INPUT_NAME = "(input)"

_LN10 = math.log(10.0)


# ------------------------------------------------------------------------------------------
# results
@dataclass(frozen=True)
class AttentionEntropy:
    """Attention entropy of one ``torch.nn.MultiheadAttention`` module inside a block.

    Attributes
    ----------
    block : str
        Name of the block the module was called in.
    module : str
        The module's path inside that block (``"self_attn"``, ``"layers.0.self_attn"``).
    entropy : ndarray of shape (H,)
        Per head, ``-sum_j p_ij log p_ij`` (natural log) of each query's attention weights,
        averaged over the batch, the queries and the calls of the module within the block.
        Rows whose keys are all masked out (NaN weights) are left out of the mean.
    num_keys : int
        Keys each query attends over (after ``bias_k`` / ``add_zero_attn``), so
        ``log(num_keys)`` is the largest entropy possible, that of uniform attention
        (without masks).
    calls : int
        How often the module ran within the block.
    weights : list of ndarray of shape (B, H, L, S), or None
        With ``keep_attention=True``: the attention weights of each call (``B = 1`` for an
        unbatched call), the same ones ``need_weights=True, average_attn_weights=False``
        returns in eval mode.
    """

    block: str
    module: str
    entropy: np.ndarray
    num_keys: int
    calls: int
    weights: list[np.ndarray] | None = None

    @property
    def name(self) -> str:
        """``"block.module"``: the key of :attr:`SignalPropagation.attention_entropy`."""
        return f"{self.block}.{self.module}" if self.module else self.block

    @property
    def num_heads(self) -> int:
        return int(self.entropy.shape[0])

    @property
    def max_entropy(self) -> float:
        """``log(num_keys)``: the entropy of uniform attention (nats)."""
        return math.log(self.num_keys) if self.num_keys > 0 else math.nan


@dataclass
class SignalPropagation:
    """Result of :func:`signal_propagation`.

    Row 0 of every per-row array describes the chain's input ``x`` (named ``"(input)"``);
    row ``i >= 1`` the output ``h_i`` of block ``i`` (``names[i]``), the same indexing as
    :attr:`vgcore.GradientFlow.log_grad_norms` (``h_0 = x`` .. ``h_L``).

    A *token matrix* is what each statistic is computed on, one per sample (see
    ``layouts``): ``(B, S, d)`` sequences give ``S`` tokens of ``d`` features per sample,
    ``(B, C, H, W)`` images ``H*W`` tokens (spatial positions) of ``C`` features, and a 2-D
    ``(B, d)`` tensor one matrix whose rows (the samples) are the tokens.

    Attributes
    ----------
    names : list of str, length L+1
        ``"(input)"``, then the block names; they index :meth:`to_pandas`.
    shapes : list of tuple of int
        Shape of each row's tensor.
    layouts : list of str
        How each tensor was read: ``"batch_first"`` (B, *tokens, d), ``"seq_first"``
        (S, B, d), ``"channels_first"`` (B, C, *spatial), ``"rows"`` (a 2-D tensor, one
        token per row) or ``"none"`` (not a floating-point tensor of rank >= 2, e.g. token
        ids: every statistic NaN).
    num_tokens, num_features : ndarray of shape (L+1,), int
        Tokens per token matrix and features per token (0 where ``layouts`` is ``"none"``).
    rms : ndarray of shape (L+1,)
        ``sqrt(mean(h**2))`` over the whole tensor.
    mean_token_norm : ndarray of shape (L+1,)
        Mean over all tokens of the batch of the token's Euclidean norm.
    cosine : ndarray of shape (L+1,)
        Mean over the pairs of distinct tokens of their cosine similarity, per token matrix,
        then averaged over the samples: 1 when all tokens point the same way (rank
        collapse), about 0 for independent random tokens. Zero tokens are left out; NaN
        with fewer than two nonzero tokens.
    stable_rank : ndarray of shape (L+1,)
        ``||A||_F^2 / ||A||_2^2`` of each sample's token matrix ``A`` (tokens x features),
        averaged over the samples: between 1 (rank one) and ``min(num_tokens,
        num_features)``. NaN for a zero matrix.
    attention : list of AttentionEntropy
        One entry per ``torch.nn.MultiheadAttention`` module per block that ran it.
    dtype : str
        The dtype the blocks computed in, e.g. ``"float32"`` (statistics are reduced in
        float64).
    device : str
        Where the blocks ran.
    batch_size : int
        ``B`` of the input (its first axis; its second for a ``"seq_first"`` input).
    notes : list of str
        What the run had to decide or could not measure.
    log_grad_norms : ndarray of shape (L+1,) or None
        Optional, filled by callers that also ran a gradient flow: ``log ||dL/dh_i||``
        (natural log) for the same rows, shown beside the forward statistics. None here.
    """

    names: list[str]
    shapes: list[tuple[int, ...]]
    layouts: list[str]
    num_tokens: np.ndarray
    num_features: np.ndarray
    rms: np.ndarray
    mean_token_norm: np.ndarray
    cosine: np.ndarray
    stable_rank: np.ndarray
    attention: list[AttentionEntropy] = field(default_factory=list)
    dtype: str = "float64"
    device: str = "cpu"
    batch_size: int = 0
    notes: list[str] = field(default_factory=list)
    log_grad_norms: np.ndarray | None = None

    # -- derived views ------------------------------------------------------------------
    @property
    def block_names(self) -> list[str]:
        """The block names (``names`` without the input row)."""
        return list(self.names[1:])

    @property
    def depth(self) -> int:
        """Number of blocks ``L``."""
        return len(self.names) - 1

    @property
    def attention_entropy(self) -> dict[str, np.ndarray]:
        """``{"block.module": entropy per head, shape (H,)}`` (natural log)."""
        return {a.name: a.entropy for a in self.attention}

    @property
    def log10_grad_norms(self) -> np.ndarray | None:
        return None if self.log_grad_norms is None else self.log_grad_norms / _LN10

    def block_attention(self) -> dict[str, np.ndarray]:
        """Per row: ``(mean, min, max)`` over the heads of all attention modules of the block
        (NaN where the block has none), arrays of shape (L+1,) under ``"attn_entropy"``,
        ``"attn_entropy_min"``, ``"attn_entropy_max"`` and ``"attn_max_entropy"`` (the
        largest ``log(num_keys)``)."""
        n = len(self.names)
        out = {
            k: np.full(n, np.nan)
            for k in ("attn_entropy", "attn_entropy_min", "attn_entropy_max", "attn_max_entropy")
        }
        row = {name: i for i, name in enumerate(self.names)}
        per: dict[int, list[AttentionEntropy]] = {}
        for a in self.attention:
            per.setdefault(row[a.block], []).append(a)
        for i, recs in per.items():
            ent = np.concatenate([r.entropy for r in recs])
            ok = ent[np.isfinite(ent)]
            if ok.size:
                out["attn_entropy"][i] = ok.mean()
                out["attn_entropy_min"][i] = ok.min()
                out["attn_entropy_max"][i] = ok.max()
            out["attn_max_entropy"][i] = max(r.max_entropy for r in recs)
        return out

    def to_pandas(self) -> Any:
        """A DataFrame indexed by row name (``"(input)"``, then the blocks).

        Columns: ``layout``, ``num_tokens``, ``num_features``, ``rms``, ``log10_rms``,
        ``mean_token_norm``, ``cosine``, ``stable_rank``, the per-block attention summary of
        :meth:`block_attention` (NaN without attention) and, when set, ``log10_grad_norm``
        and ``log_grad_norm``.
        """
        import pandas as pd

        with np.errstate(divide="ignore", invalid="ignore"):
            log10_rms = np.log10(self.rms)
        data: dict[str, Any] = {
            "layout": list(self.layouts),
            "num_tokens": self.num_tokens,
            "num_features": self.num_features,
            "rms": self.rms,
            "log10_rms": log10_rms,
            "mean_token_norm": self.mean_token_norm,
            "cosine": self.cosine,
            "stable_rank": self.stable_rank,
            **self.block_attention(),
        }
        if self.log_grad_norms is not None:
            data["log10_grad_norm"] = self.log_grad_norms / _LN10
            data["log_grad_norm"] = self.log_grad_norms
        return pd.DataFrame(data, index=pd.Index(list(self.names), name="block"))

    def attention_to_pandas(self) -> Any:
        """Long table of the attention entropies: one row per (block, module, head).

        Columns ``entropy`` (nats), ``max_entropy`` (``log(num_keys)``), ``normalized``
        (their ratio) and ``calls``.
        """
        import pandas as pd

        rows = []
        for a in self.attention:
            for h, e in enumerate(a.entropy):
                rows.append((a.block, a.module, h, float(e), a.max_entropy, a.calls))
        df = pd.DataFrame(
            rows, columns=["block", "module", "head", "entropy", "max_entropy", "calls"]
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            df["normalized"] = df["entropy"] / df["max_entropy"]
        return df.set_index(["block", "module", "head"])

    def plot(self, ax: Any = None, *, title: str | None = None) -> Any:
        """Representation norm, token cosine similarity, stable rank and attention entropy
        against depth.

        Parameters
        ----------
        ax : matplotlib Axes, a sequence of Axes, or None
            None: a new figure with one panel per quantity (norm, cosine, stable rank, and
            the attention entropy when there is any). One Axes: the token cosine
            similarity only (the rank-collapse curve). A sequence: the panels in that order,
            as many as given.
        title : str, optional
            Title of the first panel.

        Returns
        -------
        ndarray of Axes (or the single Axes given)
        """
        from vgcore import plotting

        panels = ["norm", "cosine", "stable_rank"] + (["attention"] if self.attention else [])
        if ax is None:
            plt = plotting.require_matplotlib()
            ncols = len(panels)
            _, axs = plt.subplots(1, ncols, figsize=(3.6 * ncols, 3.6), layout="constrained")
            ax = np.atleast_1d(axs)
        single = not isinstance(ax, (list, tuple, np.ndarray))
        axs = [ax] if single else list(ax)
        if single:
            panels = ["cosine"]
        x = np.arange(len(self.names))
        for a, panel in zip(axs, panels):
            if panel == "norm":
                with np.errstate(divide="ignore", invalid="ignore"):
                    a.plot(x, np.log10(self.rms), "o-", ms=3, lw=1.4, label="RMS")
                    a.plot(
                        x, np.log10(self.mean_token_norm), "s--", ms=3, lw=1.2, label="token norm"
                    )
                if self.log_grad_norms is not None:
                    a.plot(x, self.log_grad_norms / _LN10, ":", lw=1.4, label="||dL/dh_i||")
                a.set_ylabel("log10 norm")
                a.legend(fontsize="small")
            elif panel == "cosine":
                a.plot(x, self.cosine, "o-", ms=3, lw=1.4)
                a.axhline(1.0, color="0.4", ls=":", lw=1)
                a.set_ylabel("mean cosine between tokens")
            elif panel == "stable_rank":
                a.plot(x, self.stable_rank, "o-", ms=3, lw=1.4)
                a.set_ylabel("stable rank ||A||_F^2 / ||A||_2^2")
            else:
                row = {name: i for i, name in enumerate(self.names)}
                for j, rec in enumerate(self.attention):
                    xi = np.full(rec.entropy.shape, row[rec.block], dtype=float)
                    a.scatter(
                        xi,
                        rec.entropy / rec.max_entropy,
                        s=10,
                        color="C0",
                        alpha=0.5,
                        lw=0,
                        label="each head" if j == 0 else None,
                    )
                summary = self.block_attention()
                with np.errstate(divide="ignore", invalid="ignore"):
                    mean = summary["attn_entropy"] / summary["attn_max_entropy"]
                ok = np.isfinite(mean)
                a.plot(x[ok], mean[ok], "-", color="C1", lw=1.4, label="mean over heads")
                a.set_ylim(-0.03, 1.03)
                a.set_ylabel("attention entropy / log(keys)")
                a.legend(fontsize="small")
            a.set_xlabel("block (0 = input)")
            if len(self.names) <= 16:
                a.set_xticks(x)
                a.set_xticklabels(self.names, rotation=60, ha="right", fontsize="x-small")
            a.grid(True, alpha=0.3)
        axs[0].set_title(title or f"signal propagation, {self.depth} blocks", fontsize="medium")
        return ax if single else np.asarray(axs, dtype=object)

    def __repr__(self) -> str:
        lines = [
            f"SignalPropagation({self.depth} blocks, B={self.batch_size}, "
            f"{self.dtype}, {self.device})"
        ]
        att = self.block_attention()["attn_entropy"]
        width = max(len(n) for n in self.names)
        head = f"  {'block':<{width}}  {'tokens':>6}  {'rms':>9}  {'cosine':>7}  {'st.rank':>8}"
        has_att = bool(self.attention)
        lines.append(head + ("  attn H" if has_att else ""))
        rows = list(range(len(self.names)))
        if len(rows) > 16:
            rows = [*rows[:8], -1, *rows[-7:]]
        for i in rows:
            if i < 0:
                lines.append("  ...")
                continue
            s = (
                f"  {self.names[i]:<{width}}  {int(self.num_tokens[i]):>6}  {self.rms[i]:>9.3g}"
                f"  {self.cosine[i]:>7.4f}  {self.stable_rank[i]:>8.3f}"
            )
            if has_att and np.isfinite(att[i]):
                s += f"  {att[i]:.3f}"
            lines.append(s)
        if has_att:
            lines.append("  (attn H: mean attention entropy over the heads, nats)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# input checks
def _check_blocks(blocks: Any) -> list[tuple[str, Any]]:
    import torch

    if isinstance(blocks, torch.nn.Sequential):
        blocks = list(blocks.named_children())
    what = "blocks must be a non-empty sequence of (name, torch.nn.Module) pairs"
    if isinstance(blocks, (str, bytes, torch.nn.Module)) or not isinstance(blocks, Sequence):
        raise TypeError(f"{what} (or an nn.Sequential), got {type(blocks).__name__}")
    if len(blocks) == 0:
        raise ValueError(f"{what}, got an empty sequence")
    out: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(blocks):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"{what}; blocks[{i}] is a {type(item).__name__}")
        name, mod = item
        if not isinstance(name, str):
            raise TypeError(f"{what}; the name of blocks[{i}] is a {type(name).__name__}")
        if not isinstance(mod, torch.nn.Module):
            raise TypeError(f"{what}; blocks[{i}] ({name!r}) holds a {type(mod).__name__}")
        if name == INPUT_NAME:
            raise ValueError(f"blocks[{i}]: the name {INPUT_NAME!r} is reserved for the input row")
        if name in seen:
            raise ValueError(f"blocks: the name {name!r} appears twice; block names must be unique")
        seen.add(name)
        out.append((name, mod))
    return out


def _chain_layout(blocks: list[tuple[str, Any]]) -> str:
    """The layout of rank-3 tensors in this chain.

    Modules with a boolean ``batch_first`` (attention, Transformer and recurrent layers) set
    it; failing those, convolutions or normalisations over channels make it
    ``channels_first``; otherwise ``batch_first``.
    """
    import torch

    flags: set[bool] = set()
    convish = False
    conv_types = (
        torch.nn.modules.conv._ConvNd,
        torch.nn.modules.batchnorm._BatchNorm,
        torch.nn.modules.instancenorm._InstanceNorm,
        torch.nn.GroupNorm,
    )
    for _, blk in blocks:
        for m in blk.modules():
            bf = getattr(m, "batch_first", None)
            if isinstance(bf, bool):
                flags.add(bf)
            if isinstance(m, conv_types):
                convish = True
    if len(flags) > 1:
        raise ValueError(
            "layout='auto' cannot read the blocks: they hold modules with batch_first=True and "
            "batch_first=False; pass layout='batch_first' or layout='seq_first'"
        )
    if flags:
        return "batch_first" if flags.pop() else "seq_first"
    return "channels_first" if convish else "batch_first"


# ------------------------------------------------------------------------------------------
# statistics (tensors on the device; no host synchronisation)
def _acc_dtype(device: torch.device) -> Any:
    import torch

    # MPS has no float64
    return torch.float32 if device.type == "mps" else torch.float64


def _token_matrices(h: torch.Tensor, layout: str, name: str) -> tuple[torch.Tensor | None, str]:
    """``(M, n, d)`` token matrices of ``h`` and the layout used (``None, "none"`` if none)."""
    if not h.is_floating_point() or h.dim() < 2:
        return None, "none"
    if h.dim() == 2:
        return h.unsqueeze(0), "rows"
    B = h.shape[0]
    if layout == "batch_first":
        return h.reshape(B, -1, h.shape[-1]), layout
    if layout == "channels_first":
        return h.reshape(B, h.shape[1], -1).transpose(1, 2), layout
    if h.dim() != 3:
        raise ValueError(
            f"layout='seq_first' reads (S, B, d) tensors, but {name!r} is a {h.dim()}-D tensor "
            f"of shape {tuple(h.shape)}; pass another layout"
        )
    return h.transpose(0, 1), layout


def _stats(a: torch.Tensor, acc: Any) -> list[torch.Tensor]:
    """rms, mean token norm, mean cosine, stable rank of the token matrices ``a`` (M, n, d)."""
    import torch

    a = a.to(acc)
    _, n, d = a.shape
    nan = torch.full((), math.nan, dtype=acc, device=a.device)
    if a.numel() == 0:
        return [nan, nan, nan, nan]
    sq = a * a
    rms = sq.mean().sqrt()
    norms = sq.sum(-1).sqrt()  # (M, n)
    mean_norm = norms.mean()
    nonzero = norms > 0
    u = a / torch.where(nonzero, norms, torch.ones_like(norms)).unsqueeze(-1)
    # sum over pairs t != s of u_t . u_s = ||sum_t u_t||^2 - (number of nonzero tokens)
    s = u.sum(1)
    k = nonzero.sum(1).to(acc)
    pairs = k * (k - 1)
    cos = ((s * s).sum(-1) - k) / torch.where(pairs > 0, pairs, torch.ones_like(pairs))
    cos = torch.where(pairs > 0, cos, nan)
    # stable rank from the smaller Gram matrix: ||A||_2^2 is its largest eigenvalue
    gram = a.transpose(1, 2) @ a if d <= n else a @ a.transpose(1, 2)
    top = torch.linalg.eigvalsh(gram)[..., -1]
    fro2 = sq.sum((1, 2))
    sr = torch.where(fro2 > 0, fro2 / torch.where(top > 0, top, torch.ones_like(top)), nan)
    return [rms, mean_norm, torch.nanmean(cos), torch.nanmean(sr)]


# ------------------------------------------------------------------------------------------
# attention
class _AttentionRecorder:
    """Pre-hooks on every ``nn.MultiheadAttention`` of the chain; each call's attention
    weights are recomputed from its inputs with the module's own projections (whatever flags
    the caller passed, e.g. ``need_weights=False``) and reduced to per-head entropy sums."""

    def __init__(self, blocks: list[tuple[str, Any]], keep: bool) -> None:
        import torch

        self.keep = keep
        self.current = -1
        # per block: id(module) -> its path in the block
        self.paths: list[dict[int, str]] = []
        self.modules: dict[int, Any] = {}
        for _, blk in blocks:
            p: dict[int, str] = {}
            for path, m in blk.named_modules(remove_duplicate=False):
                if isinstance(m, torch.nn.MultiheadAttention):
                    p.setdefault(id(m), path)
                    self.modules[id(m)] = m
            self.paths.append(p)
        # (block index, path) -> [entropy sum (H,), row count (H,), calls, num_keys, weights]
        self.acc: dict[tuple[int, str], list[Any]] = {}
        self.handles: list[Any] = []
        self.signature = inspect.signature(torch.nn.MultiheadAttention.forward)
        self.failures: list[str] = []

    def __len__(self) -> int:
        return len(self.modules)

    def attach(self) -> None:
        for m in self.modules.values():
            self.handles.append(m.register_forward_pre_hook(self._hook, with_kwargs=True))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        import torch

        path = self.paths[self.current].get(id(module)) if self.current >= 0 else None
        if path is None:  # called from a block that does not hold it: name it by the owner
            path = next((p[id(module)] for p in self.paths if id(module) in p), "?")
        try:
            bound = self.signature.bind(module, *args, **kwargs)
        except TypeError:
            return  # the module's own call will raise the error
        arg = bound.arguments
        with torch.no_grad():
            w = _attention_weights(
                module,
                arg["query"],
                arg["key"],
                arg["value"],
                arg.get("key_padding_mask"),
                arg.get("attn_mask"),
                bool(arg.get("is_causal", False)),
            )
            if w.dim() == 3:  # unbatched call
                w = w.unsqueeze(0)
            acc = _acc_dtype(w.device)
            wa = w.to(acc)
            ent = -torch.special.xlogy(wa, wa).sum(-1)  # (B, H, L)
            ok = torch.isfinite(ent)
            total = torch.where(ok, ent, torch.zeros_like(ent)).sum((0, 2))
            count = ok.sum((0, 2)).to(acc)
        key = (self.current, path)
        rec = self.acc.get(key)
        if rec is None:
            self.acc[key] = [total, count, 1, int(w.shape[-1]), [w] if self.keep else None]
        else:
            rec[0] = rec[0] + total
            rec[1] = rec[1] + count
            rec[2] += 1
            rec[3] = int(w.shape[-1])
            if self.keep:
                rec[4].append(w)


def _attention_weights(
    mha: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
) -> torch.Tensor:
    """Per-head attention weights ``(B, H, L, S)`` of one call, dropout-free, without touching
    the module (``F.multi_head_attention_forward`` with the module's projections, as its slow
    path does, in eval semantics)."""
    import torch
    import torch.nn.functional as F

    batched = query.dim() == 3
    if mha.batch_first and batched:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    if is_causal and attn_mask is None:
        L, S = query.shape[0], key.shape[0]
        attn_mask = torch.ones(L, S, dtype=torch.bool, device=query.device).triu(1)
    sep = not mha._qkv_same_embed_dim
    _, w = F.multi_head_attention_forward(
        query,
        key,
        value,
        mha.embed_dim,
        mha.num_heads,
        mha.in_proj_weight,
        mha.in_proj_bias,
        mha.bias_k,
        mha.bias_v,
        mha.add_zero_attn,
        0.0,
        mha.out_proj.weight,
        mha.out_proj.bias,
        training=False,
        key_padding_mask=key_padding_mask,
        need_weights=True,
        attn_mask=attn_mask,
        use_separate_proj_weight=sep,
        q_proj_weight=mha.q_proj_weight if sep else None,
        k_proj_weight=mha.k_proj_weight if sep else None,
        v_proj_weight=mha.v_proj_weight if sep else None,
        average_attn_weights=False,
        is_causal=is_causal,
    )
    assert w is not None
    return w


# ------------------------------------------------------------------------------------------
def signal_propagation(
    blocks: Any,
    x: torch.Tensor,
    *,
    layout: str = "auto",
    attention: bool = True,
    keep_attention: bool = False,
) -> SignalPropagation:
    """Forward statistics of every block's output: norm, token similarity, stable rank and
    attention entropy.

    One forward pass through the chain under ``torch.no_grad()``; every statistic stays on
    the device (reduced in float64) until one transfer to numpy at the end.

    Parameters
    ----------
    blocks : sequence of (str, torch.nn.Module), or torch.nn.Sequential
        The chain: each module is called as ``h = module(h)`` with one tensor in and one
        out, in order (``vgcore.TorchModel(module).blocks``). Names must be unique. The
        blocks run in their current mode (``.eval()`` them for inference statistics).
    x : torch.Tensor
        The chain's input, on the blocks' device and in their dtype: ``(B, S, d)`` or
        ``(S, B, d)`` sequences, ``(B, C, *spatial)`` images, ``(B, d)`` vectors, or any
        tensor the first block takes (integer token ids get no statistics of their own).
    layout : {"auto", "batch_first", "seq_first", "channels_first"}
        How tensors of rank >= 3 are split into tokens and features (2-D tensors are always
        read as one matrix with a token per row):

        - ``"batch_first"``: ``(B, *tokens, d)``, features on the last axis (Transformer
          layers with ``batch_first=True``, channels-last images);
        - ``"seq_first"``: ``(S, B, d)`` (torch's Transformer default, ``batch_first=False``);
        - ``"channels_first"``: ``(B, C, *spatial)``, each spatial position a token of ``C``
          features (CNN activations);
        - ``"auto"``: tensors of rank >= 4 are ``channels_first``; rank-3 ones follow the
          layout the blocks' modules expect: their ``batch_first`` flag
          (``nn.MultiheadAttention``, Transformer and recurrent layers; an error when the
          chain mixes both), else ``channels_first`` when the chain holds convolutions or
          channel normalisations, else ``batch_first``.
    attention : bool
        Record the attention entropy per head of every ``torch.nn.MultiheadAttention``
        inside the blocks. The weights are recomputed from the inputs of each call with the
        module's projections (so ``need_weights=False`` callers such as
        ``nn.TransformerEncoderLayer`` are covered and nothing the module returns changes);
        MultiheadAttention's fused fast path is switched off during the pass (restored
        afterwards). Attention dropout is not applied to the recorded weights.
    keep_attention : bool
        Also keep every call's attention weights (:attr:`AttentionEntropy.weights`).

    Returns
    -------
    SignalPropagation
        Rows ``(input)``, then one per block.

    Raises
    ------
    TypeError
        ``blocks`` or ``x`` of the wrong type, or a block that returns something other than
        one tensor (the error names it).
    ValueError
        Empty or duplicate block names, an unknown ``layout``, or a tensor the layout cannot
        read (the error names the block).

    Notes
    -----
    The module is left as it was: no hooks remain (also when a block raises), parameters,
    training mode and ``requires_grad`` flags are untouched, and buffers a training-mode
    pass updates (batch-norm running statistics) are restored.
    """
    import torch

    chain = _check_blocks(blocks)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("x must have a batch axis, got a 0-d tensor")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    notes: list[str] = []
    rank3 = layout
    if layout == "auto":
        rank3 = _chain_layout(chain)

    def layout_of(h: torch.Tensor) -> str:
        if layout != "auto" or h.dim() != 3:
            return "channels_first" if layout == "auto" else layout
        return rank3

    recorder = _AttentionRecorder(chain, keep_attention) if attention else None
    # buffers a training-mode forward updates (BatchNorm running statistics)
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen: set[int] = set()
    for _, blk in chain:
        for b in blk.buffers():
            if id(b) not in seen:
                seen.add(id(b))
                saved.append((b, b.detach().clone()))
    mha_backend = getattr(torch.backends, "mha", None)
    fast_before = None
    rows: list[torch.Tensor] = []
    names = [INPUT_NAME]
    shapes: list[tuple[int, ...]] = []
    layouts: list[str] = []
    tokens: list[int] = []
    features: list[int] = []
    dtype = x.dtype
    device = x.device

    def record(h: torch.Tensor, name: str) -> None:
        mats, used = _token_matrices(h, layout_of(h), name)
        shapes.append(tuple(h.shape))
        layouts.append(used)
        acc = _acc_dtype(x.device)
        if mats is None:
            tokens.append(0)
            features.append(0)
            rows.append(torch.full((4,), math.nan, dtype=acc, device=x.device))
            return
        tokens.append(int(mats.shape[1]))
        features.append(int(mats.shape[2]))
        # gathered where x lives (a copy, not a sync, if a block moved to another device)
        rows.append(torch.stack(_stats(mats, _acc_dtype(mats.device))).to(x.device, acc))

    try:
        if recorder is not None and len(recorder):
            if mha_backend is not None and hasattr(mha_backend, "set_fastpath_enabled"):
                fast_before = mha_backend.get_fastpath_enabled()
                mha_backend.set_fastpath_enabled(False)
            recorder.attach()
        with torch.no_grad():
            record(x, INPUT_NAME)
            h = x
            for i, (name, blk) in enumerate(chain):
                if recorder is not None:
                    recorder.current = i
                try:
                    out = blk(h)
                except Exception as exc:
                    if hasattr(exc, "add_note"):
                        exc.add_note(f"raised by block {name!r} ({type(blk).__name__})")
                    raise
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"block {name!r} ({type(blk).__name__}) returned a "
                        f"{type(out).__name__}; each block must return one tensor: group it "
                        "with a module that returns the tensor to analyse"
                    )
                names.append(name)
                record(out, name)
                if out.is_floating_point():
                    dtype = out.dtype
                    device = out.device
                h = out
    finally:
        if recorder is not None:
            recorder.detach()
        if fast_before is not None and mha_backend is not None:
            mha_backend.set_fastpath_enabled(fast_before)
        with torch.no_grad():
            for b, v in saved:
                if b.shape == v.shape:
                    b.copy_(v)

    # one transfer to the host
    arr = torch.stack(rows).cpu().double().numpy()
    attn: list[AttentionEntropy] = []
    if recorder is not None and recorder.acc:
        keys = sorted(recorder.acc)
        first = recorder.acc[keys[0]][0]
        sums = [
            torch.stack([recorder.acc[k][0], recorder.acc[k][1]]).to(first.device, first.dtype)
            for k in keys
        ]
        # heads differ between modules: pad to the widest, one transfer
        width = max(t.shape[1] for t in sums)
        host = torch.stack([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in sums])
        host_np = host.cpu().double().numpy()
        for j, k in enumerate(keys):
            _, _, calls, nkeys, ws = recorder.acc[k]
            nh = int(recorder.acc[k][0].shape[0])
            total, count = host_np[j, 0, :nh], host_np[j, 1, :nh]
            with np.errstate(invalid="ignore", divide="ignore"):
                ent = np.where(count > 0, total / np.maximum(count, 1), np.nan)
            attn.append(
                AttentionEntropy(
                    block=chain[k[0]][0],
                    module=k[1],
                    entropy=ent,
                    num_keys=nkeys,
                    calls=calls,
                    weights=None if ws is None else [w.detach().cpu().numpy() for w in ws],
                )
            )
    if any(lay == "none" for lay in layouts):
        bad = [n for n, lay in zip(names, layouts) if lay == "none"]
        notes.append(
            "no statistics (not a floating-point tensor of rank >= 2) for: " + ", ".join(bad)
        )
    batch = int(x.shape[1]) if (x.dim() == 3 and layout_of(x) == "seq_first") else int(x.shape[0])
    return SignalPropagation(
        names=names,
        shapes=shapes,
        layouts=layouts,
        num_tokens=np.asarray(tokens, dtype=np.int64),
        num_features=np.asarray(features, dtype=np.int64),
        rms=arr[:, 0].copy(),
        mean_token_norm=arr[:, 1].copy(),
        cosine=arr[:, 2].copy(),
        stable_rank=arr[:, 3].copy(),
        attention=attn,
        dtype=str(dtype).replace("torch.", ""),
        device=str(device),
        batch_size=batch,
        notes=notes,
    )

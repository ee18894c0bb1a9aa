"""Jacobian singular values and per-block spectra of a chain of torch blocks, matrix-free.

A chain is a sequence of ``(name, module)`` pairs, each module a one-tensor-in, one-tensor-out
map, composed in order. The leading dimension of the input is the batch: every analysis works
per sample, on the Jacobian of that sample's output with respect to that sample's input (a
Transformer run with batch 1 has one sample, its whole ``(seq, d)`` tensor). Blocks are called
through ``torch.func`` (``functional_call``, ``jvp``, ``vjp``, ``vmap``) at their recorded
inputs; no Jacobian is ever formed.

The singular values follow the native method (``csrc/vgcore/analysis/singular.hpp``): the
product ``M = J_L ... J_1`` applied to a block of tangent vectors is kept as a graded
decomposition ``U diag(e^d) T`` (a pre-pivoted QR after each block, ``d`` in float64 logs), and a
graded one-sided Jacobi SVD, with the scales kept apart, gives the values, each to high
relative accuracy however far apart (Demmel & Veselic 1992). The top-k values come from block
Golub-Kahan-Lanczos with power-of-two rescaling per block, or, for values too far below the
largest for the dtype, from a subspace iteration in that graded form. torch is imported lazily.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from vgcore._validation import check_int_seed, check_memory, check_positive_int
from vgcore.analysis.singular_values import JacobianSingularValues
from vgcore.analysis.spectrum import JacobianSpectrum

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "TorchJacobianSingularValues",
    "TorchJacobianSpectrum",
    "block_spectrum",
    "singular_values",
]

Blocks = Sequence[tuple[str, Any]]
_LN10 = math.log(10.0)
#: Full spectra (``k=None``) push one tangent vector per input entry; above this many the
#: error message suggests ``k``.
FULL_MAX_DIM = 4096
#: Top-k by block Krylov: the basis holds at most this many blocks before a thick restart.
KRYLOV_MAX_BLOCKS = 10


# ---------------------------------------------------------------------------------- results


@dataclass(repr=False)
class TorchJacobianSingularValues(JacobianSingularValues):
    """Result of :func:`singular_values`: a :class:`vgcore.JacobianSingularValues` whose
    product runs over a chain of torch blocks, with the spectrum after every block.

    ``model`` is what the caller passed (a ``TorchModel`` or None), ``kind`` is ``"torch"``,
    ``depth`` the number of blocks in the product and ``log_singular_values`` (B, r) the
    natural logs of the whole product's values, descending: all ``r`` of them (``k=None``, ``r``
    the smallest width along the chain) or the top ``k``.

    Attributes
    ----------
    block_names : tuple of str
        The blocks of the product, in order (``start`` to ``stop``).
    block_log_singular_values : ndarray of shape (L, B, w)
        Row ``l``: natural logs of the singular values of the product up to block ``l``
        (``d h_{l+1} / d h_start``), descending, NaN-padded where that product has fewer than
        ``w`` values. ``k=None``: all of them. Top-k: the singular values of ``M_l V`` where
        ``V`` spans the whole product's top-k right singular vectors (the gains, block by
        block, of the directions that end up dominant); they equal the top-k of ``M_l`` only
        where those directions are also ``M_l``'s dominant ones.
    k : int or None
        The number of values asked for (None: all).
    method : str
        ``"full"`` (one pass with a basis of the whole input space), ``"krylov"`` (block
        Golub-Kahan-Lanczos) or ``"subspace"`` (graded subspace iteration, in log space).
    iterations : int
        Forward + backward pass pairs through the chain; 0 for ``"full"``.
    residuals : ndarray of shape (B, k)
        Estimated relative error of each top-k value; 0 for ``"full"``. ``"krylov"``: from the
        Ritz residual ``r_i = ||M^T u_i - sigma_i v_i||``, ``min(r_i, r_i^2 / gap_i) /
        sigma_i`` (``gap_i`` to the nearest other Ritz value). ``"subspace"``: from the
        successive changes of each value (they fall geometrically with ratio ``q``: ``delta q
        / (1 - q)``); the residual is not used there, since in floating point it carries
        ``eps sigma_1 / sigma_i`` from the larger values, however accurate ``sigma_i`` is.
    converged : ndarray of bool, shape (B,)
        Whether every top-k error estimate reached ``tol`` (always True for ``"full"``).
    tol : float
        The tolerance used.
    """

    block_names: tuple[str, ...]
    block_log_singular_values: np.ndarray
    k: int | None
    method: str
    iterations: int
    residuals: np.ndarray
    converged: np.ndarray
    tol: float

    @property
    def block_log10_singular_values(self) -> np.ndarray:
        """``block_log_singular_values`` in decades."""
        return self.block_log_singular_values / _LN10

    def to_pandas(self) -> Any:
        """Long-format DataFrame: one row per (block, sample, index) of the per-block spectra
        (the last block's rows are the whole product); ``log_*`` natural logs, ``log10_*``
        decades, ``residual`` the final Ritz residual (last block only, NaN elsewhere)."""
        import pandas as pd

        L, B, w = self.block_log_singular_values.shape
        ls = self.block_log_singular_values
        res = np.full((L, B, w), np.nan)
        kk = min(w, self.residuals.shape[1])
        res[-1, :, :kk] = self.residuals[:, :kk]
        keep = ~np.isnan(ls).ravel()
        with np.errstate(over="ignore", under="ignore"):
            sv = np.exp(ls)
        df = pd.DataFrame(
            {
                "block": np.repeat(np.asarray(self.block_names, dtype=object), B * w),
                "position": np.repeat(np.arange(L), B * w),
                "sample": np.tile(np.repeat(np.arange(B), w), L),
                "index": np.tile(np.arange(w), L * B),
                "singular_value": sv.ravel(),
                "log_singular_value": ls.ravel(),
                "log10_singular_value": (ls / _LN10).ravel(),
                "residual": res.ravel(),
            }
        )
        return df[keep].reset_index(drop=True)

    def plot(self, ax: Any = None, *, kind: str = "blocks", **kw: Any) -> Any:
        """``kind="blocks"``: per block, the largest, median and smallest ``log10 sigma`` of
        the product so far (batch median, band over the batch), a line at ``sigma = 1``: where
        the product leaves isometry. ``kind="histogram"``: the whole product's values, as
        :meth:`JacobianSingularValues.plot`. Needs matplotlib."""
        if kind == "histogram":
            return super().plot(ax=ax, **kw)
        if kind != "blocks":
            raise ValueError(f"kind must be 'blocks' or 'histogram', got {kind!r}")
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=kw.pop("figsize", (7, 4)))
        l10 = self.block_log10_singular_values
        pos = np.arange(l10.shape[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN / -inf columns
            top = np.nanmax(l10, axis=2)
            bot = np.nanmin(np.where(np.isfinite(l10), l10, np.nan), axis=2)
            med = np.nanmedian(l10, axis=2)
        for arr, label, style in ((top, "max", "-"), (med, "median", "--"), (bot, "min", ":")):
            ax.plot(pos, np.median(arr, axis=1), style, label=f"{label} log10 sigma")
            if arr.shape[1] > 1:
                ax.fill_between(pos, arr.min(axis=1), arr.max(axis=1), alpha=0.15)
        ax.axhline(0.0, color="0.3", lw=0.8)
        ax.set_xticks(pos)
        ax.set_xticklabels(self.block_names, rotation=kw.pop("rotation", 60), ha="right")
        ax.set_ylabel("log10 singular value of d h_l / d h_start")
        ax.set_title(kw.pop("title", "Jacobian singular values after each block"))
        ax.legend(fontsize="small")
        return ax

    def __repr__(self) -> str:
        B, r = self.log_singular_values.shape
        l10 = self.log10_singular_values
        what = f"top {self.k}" if self.k is not None else f"all {r}"
        lines = [
            f"TorchJacobianSingularValues({self.depth} blocks, {what} values x B={B}, "
            f"{self.method}, {self.dtype.name})",
            f"  sigma in [10^{np.min(l10):.2f}, 10^{np.max(l10):.2f}]",
        ]
        if self.method in ("subspace", "krylov"):
            state = "converged" if bool(np.all(self.converged)) else "NOT converged"
            what = "subspace iteration" if self.method == "subspace" else "block Krylov"
            lines.append(
                f"  {what}: {self.iterations} iterations, max error estimate "
                f"{float(np.max(self.residuals)):.2e} ({state}, tol {self.tol:g})"
            )
        else:
            lines.append(f"  {self.isometry_summary()}")
        blk = self.block_log10_singular_values
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            top = np.nanmedian(np.nanmax(blk, axis=2), axis=1)
        steps = np.diff(np.concatenate([[0.0], top]))
        if np.isfinite(steps).any():
            worst = int(np.nanargmax(np.abs(np.where(np.isfinite(steps), steps, np.nan))))
            lines.append(
                f"  largest change of log10 sigma_max: {steps[worst]:+.2f} decades at block "
                f"{self.block_names[worst]!r}"
            )
        return "\n".join(lines)


@dataclass(repr=False)
class TorchJacobianSpectrum(JacobianSpectrum):
    """Result of :func:`block_spectrum`: a :class:`vgcore.JacobianSpectrum` over a chain of
    torch blocks. Row ``i`` is block ``steps[i]`` (named ``block_names[i]``): its per-sample
    Jacobian ``d h_{l+1} / d h_l``. ``spectral_radius`` is NaN for a block whose input and
    output sizes differ. ``method`` is ``"arnoldi"`` (Arnoldi on ``J``, Lanczos on ``J^T J``,
    both with explicit restarts); no dense Jacobian is formed, so ``radius_fallback`` and
    ``sigma_fallback`` are always False and the ``*_errors`` are never NaN where computed.
    """

    block_names: tuple[str, ...]

    @property
    def axis(self) -> str:
        """ "block"."""
        return "block"

    def to_pandas(self) -> Any:
        """As :meth:`JacobianSpectrum.to_pandas`, with the block names in a ``name``
        column."""
        df = super().to_pandas()
        B = self.spectral_radius.shape[1]
        df.insert(1, "name", np.repeat(np.asarray(self.block_names, dtype=object), B))
        return df

    def __repr__(self) -> str:
        text = super().__repr__().replace("JacobianSpectrum(", "TorchJacobianSpectrum(", 1)
        if len(self.block_names):
            i = int(np.argmax(np.median(self.log_sigma_max, axis=1)))
            text += (
                f"\n  largest sigma_max: block {self.block_names[i]!r} "
                f"({float(np.median(self.sigma_max[i])):.4g})"
            )
        return text


# ------------------------------------------------------------------------------ the chain


@contextmanager
def _functional_mode() -> Iterator[None]:
    """Kernels without forward-mode AD switched off for the duration: the fused Transformer
    fast path and the flash / efficient attention kernels (the math kernel is the same maths).
    The global settings are restored afterwards."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


class _Chain:
    """The blocks ``start..stop`` with their recorded inputs, each callable functionally.

    Parameters are passed detached and buffers as copies, so a block that writes its buffers
    (BatchNorm statistics) leaves the module as it was, and no autograd graph reaches the
    parameters.
    """

    def __init__(self, blocks: Blocks, x: Any, start: Any, stop: Any) -> None:
        import torch

        entries = _check_blocks(blocks)
        names = [n for n, _ in entries]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"x must be float32 or float64 (a half-precision module is analysed in a "
                f"float32 copy), got {x.dtype}"
            )
        if x.dim() < 2 or x.shape[0] < 1:
            raise ValueError(
                "x must have shape (B, ...) with the batch first and at least one feature "
                f"dimension, got {tuple(x.shape)}"
            )
        self.start = _block_index(start, names, "start", default=0)
        self.stop = _block_index(stop, names, "stop", default=len(names) - 1)
        if self.stop < self.start:
            raise ValueError(
                f"stop must not come before start: start is block {self.start} "
                f"({names[self.start]!r}), stop is block {self.stop} ({names[self.stop]!r})"
            )
        self.names = names[self.start : self.stop + 1]
        self.modules = [m for _, m in entries[self.start : self.stop + 1]]
        for name, module in entries[: self.stop + 1]:
            _check_per_sample(name, module)
        self.batch = int(x.shape[0])
        self.dtype = x.dtype
        self.device = x.device
        self._state = [
            {
                **{k: v.detach() for k, v in m.named_parameters()},
                **{k: v.detach().clone() for k, v in m.named_buffers()},
            }
            for _, m in entries[: self.stop + 1]
        ]
        # The recording pass: the input of every block from 0 to stop (those before start
        # only to reach start's input).
        self.inputs: list[torch.Tensor] = []
        h = x.detach()
        with torch.no_grad(), _functional_mode():
            for i, (name, module) in enumerate(entries[: self.stop + 1]):
                if i >= self.start:
                    self.inputs.append(h)
                    self._check_separable(i, name, module, h)
                h = self._call(i, name, module, h)
        self.output = h

    def _check_separable(self, i: int, name: str, module: Any, h: Any) -> None:
        """One JVP with a tangent in the first sample only: the other samples' outputs must
        not move (each sample mapped on its own), else per-sample Jacobians are not defined."""
        import torch
        from torch.func import jvp

        if h.shape[0] < 2:
            return
        v = torch.zeros_like(h)
        v[0] = 1.0
        t = jvp(lambda u: self._call(i, name, module, u), (h,), (v,))[1]
        if bool((t[1:] != 0).any()):
            raise ValueError(
                f"block {name!r} mixes the samples of the batch (its output for one sample "
                "moves with another sample's input): the leading dimension of x must be the "
                "batch (a Transformer layer needs batch_first=True), or analyse one sample "
                "(batch 1) whose whole tensor is the input"
            )

    def _call(self, i: int, name: str, module: Any, h: Any) -> Any:
        import torch
        from torch.func import functional_call

        out = functional_call(module, self._state[i], (h,))
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"block {name!r} returned {type(out).__name__}, not one tensor: every block must "
                "map one tensor to one tensor (group the block with what consumes its extra "
                "outputs into one module, or wrap it to return the tensor that flows on)"
            )
        if out.dim() < 1 or out.shape[0] != h.shape[0]:
            raise ValueError(
                f"block {name!r} maps an input of shape {tuple(h.shape)} to {tuple(out.shape)}: "
                "the leading (batch) dimension must be kept, each sample mapped on its own"
            )
        return out

    def fn(self, j: int) -> Callable[[Any], Any]:
        """Block ``start + j`` as a function of its input."""
        i = self.start + j
        name, module = self.names[j], self.modules[j]
        return lambda h: self._call(i, name, module, h)

    def dim_in(self, j: int) -> int:
        return int(self.inputs[j][0].numel())

    def dim_out(self, j: int) -> int:
        h = self.inputs[j + 1] if j + 1 < len(self.inputs) else self.output
        return int(h[0].numel())

    def shape_in(self, j: int) -> tuple[int, ...]:
        return tuple(self.inputs[j].shape)

    def shape_out(self, j: int) -> tuple[int, ...]:
        h = self.inputs[j + 1] if j + 1 < len(self.inputs) else self.output
        return tuple(h.shape)

    def __len__(self) -> int:
        return len(self.names)


def _check_blocks(blocks: Any) -> list[tuple[str, Any]]:
    import torch

    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence):
        raise TypeError(
            f"blocks must be a sequence of (name, torch.nn.Module) pairs, got {type(blocks).__name__}"
        )
    if len(blocks) == 0:
        raise ValueError("blocks must hold at least one (name, module) pair, got none")
    out = []
    for i, entry in enumerate(blocks):
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
            raise TypeError(f"blocks[{i}] must be a (name, torch.nn.Module) pair, got {entry!r}")
        if not isinstance(entry[1], torch.nn.Module):
            raise TypeError(
                f"blocks[{i}] ({entry[0]!r}) must hold a torch.nn.Module, got "
                f"{type(entry[1]).__name__}"
            )
        out.append((entry[0], entry[1]))
    return out


def _block_index(value: Any, names: list[str], arg: str, default: int) -> int:
    n = len(names)
    if value is None:
        return default
    if isinstance(value, str):
        if value not in names:
            raise ValueError(f"{arg} must be a block index or name, got unknown name {value!r}")
        return names.index(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{arg} must be a block index (int) or name (str), got {value!r}")
    if not -n <= int(value) < n:
        raise ValueError(f"{arg} must be a block index in [{-n}, {n - 1}], got {int(value)}")
    return int(value) % n


def _check_per_sample(name: str, module: Any) -> None:
    """Refuse the blocks whose per-sample Jacobian is undefined or random in their mode."""
    import torch

    for sub_name, sub in module.named_modules():
        where = f"block {name!r}" + (f" (its {sub_name!r})" if sub_name else "")
        if not sub.training:
            continue
        if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"{where} is a BatchNorm in training mode: it couples the samples of the batch, "
                "so per-sample Jacobians are not defined; analyse the module in eval mode"
            )
        p = (
            getattr(sub, "p", None)
            if isinstance(sub, torch.nn.modules.dropout._DropoutNd)
            else None
        )
        if isinstance(sub, torch.nn.MultiheadAttention):
            p = sub.dropout
        if p:
            raise ValueError(
                f"{where} applies dropout (p={p:g}) in training mode, so its Jacobian is random; "
                "analyse the module in eval mode"
            )


# ------------------------------------------------------------------------- graded algebra


def _as_matrix(t: Any, batch: int) -> Any:
    """(r, B, *shape) tangents -> (B, m, r) columns."""
    r = t.shape[0]
    return t.reshape(r, batch, -1).permute(1, 2, 0)


def _as_tangents(mat: Any, shape: tuple[int, ...]) -> Any:
    """(B, m, r) columns -> (r, B, *shape) tangents."""
    return mat.permute(2, 0, 1).reshape(mat.shape[2], *shape).contiguous()


def _udt_step(C: Any, d: Any, T: Any) -> tuple[Any, Any, Any]:
    """One step of the graded product: ``C diag(e^d) T = Q diag(e^{d'}) T'``.

    ``C`` (B, m, r) the new columns (compute dtype), ``d`` (B, r) float64 logs, ``T`` (B, r, n)
    float64. The columns are ordered by descending ``log||c_j|| + d_j`` (pre-pivoting) and
    factored unscaled (Householder QR is column-scaling invariant), so ``R`` is graded and
    ``T' = (|diag R|^{-1} R e^{d_p(j) - d_p(i)}) P^T T`` stays well conditioned. Returns
    ``Q`` (B, m, kk), ``d'`` (B, kk), ``T'`` (B, kk, n), ``kk = min(m, r)``.
    """
    import torch

    ninf = float("-inf")
    c64 = C.to(torch.float64)
    ln = 0.5 * torch.log((c64 * c64).sum(dim=1)) + d
    ln = torch.where(torch.isneginf(d), ninf, ln)
    perm = torch.argsort(ln, dim=1, descending=True, stable=True)
    A = torch.gather(C, 2, perm.unsqueeze(1).expand(-1, C.shape[1], -1))
    Q, R = torch.linalg.qr(A)
    kk = R.shape[1]
    dp = torch.gather(d, 1, perm)
    R64 = R.to(torch.float64)
    rii = torch.diagonal(R64, dim1=1, dim2=2)  # (B, kk)
    dead = (rii == 0) | torch.isneginf(dp[:, :kk])
    lr = torch.log(rii.abs())
    dnew = torch.where(dead, ninf, lr + dp[:, :kk])
    dfin = torch.where(torch.isneginf(dp), 0.0, dp)
    # log|Rt_ij| = log|R_ij| - log|R_ii| + d_p(j) - d_p(i), combined in logs (the scale
    # factors may lie far outside the float64 range).
    lv = (
        torch.log(R64.abs())
        - torch.where(dead, 0.0, lr).unsqueeze(2)
        + dfin.unsqueeze(1)
        - dfin[:, :kk].unsqueeze(2)
    )
    Rt = torch.sign(R64) * torch.exp(lv)
    Rt = torch.where(dead.unsqueeze(2) | torch.isneginf(dp).unsqueeze(1), 0.0, Rt)
    Rt = torch.triu(Rt)
    Tp = torch.gather(T, 1, perm.unsqueeze(2).expand(-1, -1, T.shape[2]))
    return Q, dnew, Rt @ Tp


def _round_robin(r: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint pairs covering every pair of ``range(r)`` once over ``r - 1`` (r even) or
    ``r`` rounds: the parallel Jacobi ordering."""
    n = r + (r % 2)
    idx = list(range(n))
    rounds = []
    for _ in range(n - 1):
        ps, qs = [], []
        for i in range(n // 2):
            p, q = idx[i], idx[n - 1 - i]
            if p < r and q < r:
                ps.append(min(p, q))
                qs.append(max(p, q))
        if ps:
            rounds.append((ps, qs))
        idx = [idx[0], idx[-1], *idx[1:-1]]
    return rounds


def _graded_svd(T: Any, d: Any, vectors: bool = False) -> tuple[Any, Any, Any, Any]:
    """Singular values of ``G = diag(e^d) T`` by graded one-sided Jacobi on ``G^T``.

    ``T`` (N, r, n) float64, ``d`` (N, r) float64 logs (``-inf``: a zero row). The rotations of
    the scaled columns ``e^{d_j} t_j`` are written for the unscaled ones (as
    ``vgcore::graded_jacobi``), so every singular value keeps its relative accuracy whatever
    the grading. Returns the log singular values (N, r) descending, the sweeps (N,) and, with
    ``vectors``, ``X`` (N, r, r) and ``Y`` (N, n, r) with ``G = X diag(sigma) Y^T``.
    """
    import torch

    N, r, n = T.shape
    Bm = T.clone()
    dd = d.clone()
    Z = torch.eye(r, dtype=T.dtype, device=T.device).expand(N, r, r).clone() if vectors else None
    tol = math.sqrt(n) * float(np.finfo(np.float64).eps)

    def renormalise() -> None:
        nonlocal Bm, dd
        nrm = torch.linalg.vector_norm(Bm, dim=2)
        dead = ~(nrm > 0) | torch.isneginf(dd)
        dd = torch.where(dead, float("-inf"), dd + torch.log(torch.where(dead, 1.0, nrm)))
        Bm = torch.where(dead.unsqueeze(2), 0.0, Bm / torch.where(dead, 1.0, nrm).unsqueeze(2))

    renormalise()
    sweeps = torch.zeros(N, dtype=torch.int64, device=T.device)
    rounds = [
        (torch.tensor(p, device=T.device), torch.tensor(q, device=T.device))
        for p, q in _round_robin(r)
    ]
    for sweep in range(1, 81):
        any_rot = torch.zeros(N, dtype=torch.bool, device=T.device)
        for P, Qi in rounds:
            xp, xq = Bm[:, P], Bm[:, Qi]  # (N, h, n)
            dp, dq = dd[:, P], dd[:, Qi]
            swap = (dq > dp).unsqueeze(2)  # 'a' is the column with the larger scale
            xa, xb = torch.where(swap, xq, xp), torch.where(swap, xp, xq)
            da, db = torch.maximum(dp, dq), torch.minimum(dp, dq)
            na, nb = (xa * xa).sum(2), (xb * xb).sum(2)
            g = (xa * xb).sum(2)
            skip = (g == 0) | (g.abs() <= tol * torch.sqrt(na * nb)) | torch.isneginf(db)
            g = torch.where(skip, 1.0, g)
            rho = torch.exp(torch.where(skip, 0.0, db - da))  # <= 1
            zr = (rho * rho * nb - na) / (2.0 * g)
            tr = torch.where(zr >= 0, 1.0, -1.0) / (zr.abs() + torch.sqrt(rho * rho + zr * zr))
            t = tr * rho
            c = 1.0 / torch.sqrt(1.0 + t * t)
            c = torch.where(skip, 1.0, c)
            s_rho = torch.where(skip, 0.0, c * t * rho)
            s_over = torch.where(skip, 0.0, c * tr)
            na_ = (c.unsqueeze(2) * xa) - s_rho.unsqueeze(2) * xb
            nb_ = s_over.unsqueeze(2) * xa + c.unsqueeze(2) * xb
            Bm[:, P] = torch.where(swap, nb_, na_)
            Bm[:, Qi] = torch.where(swap, na_, nb_)
            if Z is not None:
                s = torch.where(skip, 0.0, c * t).unsqueeze(1)
                cc = c.unsqueeze(1)
                za = torch.where(swap.transpose(1, 2), Z[:, :, Qi], Z[:, :, P])
                zb = torch.where(swap.transpose(1, 2), Z[:, :, P], Z[:, :, Qi])
                za_, zb_ = cc * za - s * zb, s * za + cc * zb
                Z[:, :, P] = torch.where(swap.transpose(1, 2), zb_, za_)
                Z[:, :, Qi] = torch.where(swap.transpose(1, 2), za_, zb_)
            any_rot |= (~skip).any(dim=1)
        renormalise()
        sweeps = torch.where(any_rot, sweep + 1, sweeps)
        if not bool(any_rot.any()):  # one host sync per sweep
            break
    sweeps = torch.clamp(sweeps, min=1)
    order = torch.argsort(dd, dim=1, descending=True, stable=True)
    logs = torch.gather(dd, 1, order)
    if Z is None:
        return logs, sweeps, None, None
    X = torch.gather(Z, 2, order.unsqueeze(1).expand(-1, r, -1))
    Y = torch.gather(Bm, 1, order.unsqueeze(2).expand(-1, -1, n)).transpose(1, 2)
    return logs, sweeps, X, Y


def _jacobi_per_block(states: list[tuple[Any, Any]]) -> tuple[list[Any], Any]:
    """The graded Jacobi of every recorded ``(d, T)``, batched by shape; log values per entry
    and the sweeps of the last one."""
    import torch

    out: list[Any] = [None] * len(states)
    sweeps = None
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (_d, T) in enumerate(states):
        groups.setdefault(tuple(T.shape), []).append(i)
    for idx in groups.values():
        Ts = torch.cat([states[i][1] for i in idx])
        ds = torch.cat([states[i][0] for i in idx])
        logs, sw, _, _ = _graded_svd(Ts, ds)
        B = states[idx[0]][1].shape[0]
        for j, i in enumerate(idx):
            out[i] = logs[j * B : (j + 1) * B]
            if i == len(states) - 1:
                sweeps = sw[j * B : (j + 1) * B]
    return out, sweeps


# ------------------------------------------------------------------------ singular values


def _forward(chain: _Chain, U: Any, chunk_size: int | None, keep: bool) -> tuple[Any, ...]:
    """Push the orthonormal columns ``U`` (B, n0, r) through the chain: ``M U = U_L diag(e^d)
    T``. Returns ``U_L``, ``d``, ``T``, the per-block ``(d, T)`` (with ``keep``) and a flag
    tensor per block: whether the pushed columns stayed finite."""
    import torch
    from torch.func import jvp, vmap

    B = chain.batch
    r = U.shape[2]
    d = torch.zeros(B, r, dtype=torch.float64, device=U.device)
    T = torch.eye(r, dtype=torch.float64, device=U.device).expand(B, r, r).clone()
    states, finite = [], []
    for j in range(len(chain)):
        f, h = chain.fn(j), chain.inputs[j]
        tang = _as_tangents(U, chain.shape_in(j))
        out = vmap(lambda v, f=f, h=h: jvp(f, (h,), (v,))[1], chunk_size=chunk_size)(tang)
        C = _as_matrix(out, B)
        finite.append(torch.isfinite(C).all())
        U, d, T = _udt_step(C, d, T)
        if keep:
            states.append((d, T))
    return U, d, T, states, torch.stack(finite)


def _backward(chain: _Chain, W: Any, chunk_size: int | None) -> tuple[Any, ...]:
    """Push the orthonormal columns ``W`` (B, m_L, r) back through the chain with VJPs:
    ``M^T W = V diag(e^d) T``."""
    import torch
    from torch.func import vjp, vmap

    B = chain.batch
    r = W.shape[2]
    d = torch.zeros(B, r, dtype=torch.float64, device=W.device)
    T = torch.eye(r, dtype=torch.float64, device=W.device).expand(B, r, r).clone()
    finite = []
    for j in reversed(range(len(chain))):
        fn = vjp(chain.fn(j), chain.inputs[j])[1]
        cot = _as_tangents(W, chain.shape_out(j))
        out = vmap(lambda w, fn=fn: fn(w)[0], chunk_size=chunk_size)(cot)
        C = _as_matrix(out, B)
        finite.append(torch.isfinite(C).all())
        W, d, T = _udt_step(C, d, T)
    return W, d, T, torch.stack(finite[::-1])


def _apply(chain: _Chain, V: Any, chunk_size: int | None, transpose: bool) -> tuple[Any, ...]:
    """``M V`` (``transpose=False``, ``V`` (B, n0, b), chained ``vmap(jvp)``) or ``M^T V``
    (``V`` (B, m_L, b), chained ``vmap(vjp)``) as ``2^e C``: after every block the columns are
    rescaled by one exact power of two per sample (the largest entry into [1/2, 1)), the
    exponent accumulated in float64, so the product never over- or underflows however far its
    scale lies outside the dtype's range. Returns ``C`` (B, m, b), ``e`` (B,) float64 and a
    flag per block: whether the columns stayed finite."""
    import torch
    from torch.func import jvp, vjp, vmap

    B = chain.batch
    e = torch.zeros(B, dtype=torch.float64, device=V.device)
    finite = []
    order = reversed(range(len(chain))) if transpose else range(len(chain))
    for j in order:
        if transpose:
            fn = vjp(chain.fn(j), chain.inputs[j])[1]
            out = vmap(lambda w, fn=fn: fn(w)[0], chunk_size=chunk_size)(
                _as_tangents(V, chain.shape_out(j))
            )
        else:
            f, h = chain.fn(j), chain.inputs[j]
            out = vmap(lambda v, f=f, h=h: jvp(f, (h,), (v,))[1], chunk_size=chunk_size)(
                _as_tangents(V, chain.shape_in(j))
            )
        C = _as_matrix(out, B)
        big = C.abs().amax(dim=(1, 2))
        finite.append(torch.isfinite(big).all())
        _, ex = torch.frexp(torch.where((big > 0) & torch.isfinite(big), big, 1.0))
        V = torch.ldexp(C, -ex.view(B, 1, 1))
        e = e + ex.to(torch.float64)
    flags = torch.stack(finite)
    return V, e, (flags.flip(0) if transpose else flags)


def _orthonormalise(W: Any, basis: Any, gen: Any, eps: float) -> tuple[Any, Any, Any]:
    """Block classical Gram-Schmidt, twice, of ``W`` (B, n, b) against the orthonormal
    ``basis`` (B, n, D), then QR: ``W = basis H + Q R``. Columns that vanish (``|r_ii|`` at
    rounding level: an invariant subspace) are replaced by random vectors orthogonal to
    everything, with a zero row in ``R``, so the block keeps its size and the Krylov relation
    holds. Returns ``Q`` (B, n, b), ``H`` (B, D, b) and ``R`` (B, b, b), both float64."""
    import torch

    B, n, b = W.shape
    H = torch.zeros(B, basis.shape[2], b, dtype=torch.float64, device=W.device)
    pre = torch.linalg.vector_norm(W, dim=1)  # (B, b)
    for _ in range(2):
        if basis.shape[2]:
            h = basis.transpose(1, 2) @ W
            W = W - basis @ h
            H += h.to(torch.float64)
    Q, R = torch.linalg.qr(W)
    R = R.to(torch.float64)
    rii = torch.diagonal(R, dim1=1, dim2=2).abs()
    dead = rii <= 10.0 * math.sqrt(n) * eps * pre.to(torch.float64)
    if bool(dead.any()):
        rnd = torch.randn(B, n, b, generator=gen, dtype=torch.float64).to(W)
        Q = torch.where(dead.unsqueeze(1), rnd, Q)
        R = torch.where(dead.unsqueeze(2), 0.0, R)
        for _ in range(2):
            if basis.shape[2]:
                Q = Q - basis @ (basis.transpose(1, 2) @ Q)
        Q, R2 = torch.linalg.qr(Q)
        R = R2.to(torch.float64) @ R
    return Q, H, R


def _krylov_top_k(
    chain: _Chain,
    k: int,
    b: int,
    restart: int,
    *,
    max_iter: int,
    max_dim: int,
    tol: float,
    gen: Any,
    chunk_size: int | None,
    give_up: bool,
) -> tuple[Any, ...]:
    """Top-``k`` singular values by block Golub-Kahan-Lanczos bidiagonalisation with full
    reorthogonalisation (block Lanczos on ``M^T M``, Golub & Kahan 1965; as a randomized block
    Krylov method, Musco & Musco 2015), ``b`` random start vectors; when the basis would pass
    ``max_dim`` vectors, the top ``restart`` right Ritz vectors (``restart >= k``) start the
    next cycle as its block.

    ``M V_j`` (chained jvps) extends ``U`` and fills the projected matrix ``K = U^T M V`` (its
    scale ``2^{E0}`` factored out, float64); ``M^T U_j`` (chained vjps) extends ``V``. With
    ``K = X diag(s) Y^T``, the Ritz triple ``(s_i, U x_i, V y_i)`` has ``M V y_i = s_i U x_i``
    and ``||M^T U x_i - s_i V y_i|| = ||R_{j+1} x_i^{(j)}||`` (the coefficient of the next
    block times the last block of ``x_i``); the error of ``s_i`` is at most that residual and
    at most its square over the gap to the other Ritz values (relative: divided by ``s_i``).

    Returns ``(logs (B, k), errors (B, k), iterations, V_k (B, n0, k), status)``: the top-k
    log values, their error estimates, the iterations (forward + backward pass pairs), the
    right Ritz vectors and ``"converged"`` (every estimate at most ``tol``), ``"range"`` (the
    values lie too far below ``sigma_1`` for the dtype, ``s_k < 10 eps / tol s_1``: rounding
    at ``sigma_1``'s scale swamps them; returned only with ``give_up``, the caller then uses
    graded subspace iteration) or ``"max_iter"``.
    """
    import torch

    B = chain.batch
    dt, dev = chain.dtype, chain.device
    eps = float(torch.finfo(dt).eps)
    n0 = chain.dim_in(0)
    ln2 = math.log(2.0)
    G0 = torch.randn(B, n0, b, generator=gen, dtype=torch.float64)
    Vj = torch.linalg.qr(G0)[0].to(device=dev, dtype=dt)
    E0 = None
    iterations = 0
    while True:  # one restart cycle
        Vs, Us = Vj, torch.zeros(B, chain.dim_out(len(chain) - 1), 0, dtype=dt, device=dev)
        K = torch.zeros(B, 0, 0, dtype=torch.float64, device=dev)
        while True:
            iterations += 1
            b = Vj.shape[2]
            C, e, fin = _apply(chain, Vj, chunk_size, transpose=False)
            _raise_non_finite(chain, fin, "forward")
            if E0 is None:
                E0 = e
            W = torch.ldexp(C, (e - E0).to(torch.int64).view(B, 1, 1))
            Uj, H, R = _orthonormalise(W, Us, gen, eps)
            D = Us.shape[2]
            Kn = torch.zeros(B, D + b, D + b, dtype=torch.float64, device=dev)
            Kn[:, :D, :D] = K
            Kn[:, :D, D:] = H
            Kn[:, D:, D:] = R
            K, Us = Kn, torch.cat([Us, Uj], dim=2)
            C, e, fin = _apply(chain, Uj, chunk_size, transpose=True)
            _raise_non_finite(chain, fin, "backward")
            Z = torch.ldexp(C, (e - E0).to(torch.int64).view(B, 1, 1))
            Vn, _, Rb = _orthonormalise(Z, Vs, gen, eps)
            if D + b < k:  # fewer Ritz values than asked for: extend first
                Vs, Vj = torch.cat([Vs, Vn], dim=2), Vn
                continue
            X, s, Yh = torch.linalg.svd(K)
            res = torch.linalg.vector_norm(Rb @ X[:, D:, :], dim=1)  # (B, D + b)
            gap = (s.unsqueeze(2) - s.unsqueeze(1)).abs()
            gap = gap + torch.diag_embed(torch.full_like(s, math.inf))
            # (capped by s_i itself: the rest of the spectrum may lie anywhere in [0, s_i),
            # and a lone Ritz value has no neighbour to measure a gap from)
            gap = torch.minimum(gap.amin(dim=2), s)
            err = torch.minimum(res, res * res / gap) / s.clamp_min(1e-300)
            err_k = torch.where(s[:, :k] > 0, err[:, :k], math.inf)
            top_ratio = s[:, k - 1] / s[:, 0].clamp_min(1e-300)
            status = None
            if bool((err_k <= tol).all()):
                status = "converged"
            elif give_up and bool((top_ratio < 10.0 * eps / tol).any()) and iterations >= 2:
                status = "range"
            elif iterations >= max_iter:
                status = "max_iter"
            if status is not None:
                logs = torch.log(s[:, :k]) + (E0 * ln2).unsqueeze(1)
                Vk = Vs @ Yh.transpose(1, 2)[:, :, :k].to(dt)
                return logs, err_k, iterations, Vk, status
            if Vs.shape[2] + b > max_dim:
                # Restart from M^T applied to the top ``restart`` left Ritz vectors:
                # M^T U x_i = s_i V y_i + V_{j+1} R x_i^{(j)} (a subspace-iteration step on
                # the Ritz vectors, so every cycle gains).
                r = min(restart, s.shape[1])
                Wr = Vs @ (Yh.transpose(1, 2)[:, :, :r] * s[:, None, :r]).to(dt)
                Wr = Wr + Vn @ (Rb @ X[:, D:, :r]).to(dt)
                Vj = torch.linalg.qr(Wr)[0]
                break
            Vs, Vj = torch.cat([Vs, Vn], dim=2), Vn


def _raise_non_finite(chain: _Chain, finite: Any, direction: str) -> None:
    ok = finite.cpu().numpy()
    if not ok.all():
        j = int(np.argmin(ok))
        raise FloatingPointError(
            f"the {direction} tangent vectors became NaN/Inf in block {chain.names[j]!r}: its "
            "Jacobian has non-finite entries at the recorded input"
        )


def singular_values(
    blocks: Blocks,
    x: Any,
    *,
    k: int | None = None,
    start: int | str = 0,
    stop: int | str | None = None,
    per_block: bool = True,
    oversample: int | None = None,
    max_iter: int = 500,
    tol: float | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    method: str = "auto",
    model: Any = None,
) -> TorchJacobianSingularValues:
    """Singular values of the Jacobian of a chain of blocks, per sample, in log space.

    Parameters
    ----------
    blocks : sequence of (str, torch.nn.Module)
        The chain: each module maps one tensor ``(B, ...)`` to one tensor ``(B, ...)``, each
        sample on its own; composed in order they make the model.
    x : torch.Tensor of shape (B, ...)
        The input of block 0, float32 or float64, on the device and in the dtype of the
        blocks' parameters. Sample ``b``'s Jacobian maps ``x[b]`` (flattened, ``n0`` entries)
        to the output's ``[b]``.
    k : int, optional
        None: all ``r`` singular values (``r`` the smallest per-sample size along the chain;
        one tangent vector per input entry is pushed, so ``n0`` up to a few hundred). An int
        in ``[1, r]``: the top ``k``, by block Krylov or subspace iteration (``method``).
    start, stop : int or str
        The Jacobian runs from the input of block ``start`` to the output of block ``stop``
        (inclusive; indices or block names; the whole chain by default).
    per_block : bool
        Also the spectrum of the product after every block (``block_log_singular_values``);
        otherwise only the last row is filled.
    oversample : int, optional
        Top-k: ``p = k + oversample`` vectors (default ``oversample = max(4, k // 2)``, ``p``
        capped at ``r``): the subspace iteration's width (its convergence rate is
        ``(sigma_{p+1} / sigma_k)^2`` per iteration) and the width a Krylov restart keeps.
    max_iter : int
        Top-k: forward + backward pass pairs allowed.
    tol : float, optional
        Top-k: estimated relative error to reach for each of the top ``k`` values (default
        1e-12 in float64, 1e-4 in float32: the subspace estimate is pessimistic near the
        float32 rounding floor).
    seed : int
        Top-k: seed of the start vectors.
    chunk_size : int, optional
        Tangent vectors pushed at once through a block (``vmap``'s ``chunk_size``); all by
        default. Lower it to bound memory.
    method : {"auto", "krylov", "subspace"}
        Top-k only. ``"krylov"``: block Golub-Kahan-Lanczos; ``"subspace"``: graded subspace
        iteration; ``"auto"``: Krylov when three blocks fit in ``r``, falling back to the
        subspace iteration when the values lie too far below ``sigma_1`` for the dtype
        (below).
    model : object, optional
        Stored in the result's ``model`` field (the ``TorchModel`` the chain came from).

    Returns
    -------
    TorchJacobianSingularValues

    Notes
    -----
    Method (as the native :func:`vgcore.jacobian_singular_values`): tangent columns are pushed
    through each block with ``vmap(jvp)``, the product kept as ``U diag(e^d) T`` with a
    pre-pivoted QR after each block and ``d`` in float64 logs; a graded one-sided Jacobi SVD
    gives the values.

    Top-k, ``"krylov"``: block Golub-Kahan-Lanczos bidiagonalisation with full
    reorthogonalisation (block Lanczos on ``M^T M``; Musco & Musco 2015), ``max(8, k / 2)``
    vectors per block (at most ``p``): each iteration pushes one block forward (``M V_j`` by
    chained ``vmap(jvp)``) and one back (``M^T U_j`` by chained ``vmap(vjp)``), the columns
    rescaled after every block by an exact power of two per sample with the exponent kept in
    float64, so ``M`` may lie far outside the dtype's range; the Ritz values come from the
    projected matrix ``U^T M V`` (float64, its scale factored out). The basis holds at most
    ``10`` blocks; then it restarts from ``M^T`` applied to the top ``p`` left Ritz vectors.
    The Krylov basis is orthonormal in working precision, so it resolves values down to
    about ``eps sigma_1 / tol``: under ``"auto"``, once a ``k``-th Ritz value falls below
    ``10 eps / tol`` times the first (after two iterations), the graded subspace iteration
    takes over from a fresh start. On a 12-block Transformer encoder it needed 5-7
    iterations where the subspace iteration needed 27.

    Top-k, ``"subspace"``: subspace iteration on ``M^T M`` with ``p`` columns: a forward pass
    gives ``M V = U_L G`` and the Ritz values ``sigma(G)`` with the Ritz vectors, a backward
    pass (``vmap(vjp)``, the same graded QR) gives ``M^T U_L X = V' G'``; ``V'`` spans ``M^T
    M V`` and starts the next iteration. Every quantity stays in log-scaled form, so values
    far below ``sigma_1`` and far outside the float range are measured to high relative
    accuracy.

    ``per_block`` with top-k: the singular values of ``M_l V_k``, ``V_k`` the top-k right Ritz
    vectors (for ``"krylov"``, one more forward pass of ``k`` vectors).

    Raises
    ------
    ValueError, TypeError
        Bad ``blocks``, ``x``, ``k``, ``start``, ``stop`` or other arguments (the message
        names it); a block returning something other than one tensor; a block whose
        per-sample Jacobian is undefined (BatchNorm in training mode) or random (dropout in
        training mode).
    FloatingPointError
        A block's Jacobian-vector products became NaN/Inf (the message names the block).
    InsufficientMemoryError
        ``k=None`` on an input too large to push a full basis through.
    """
    import torch

    chain = _Chain(blocks, x, start, stop)
    if method not in ("auto", "krylov", "subspace"):
        raise ValueError(f"method must be 'auto', 'krylov' or 'subspace', got {method!r}")
    if not isinstance(per_block, bool):
        raise TypeError(f"per_block must be True or False, got {per_block!r}")
    max_iter = check_positive_int(max_iter, "max_iter")
    seed = check_int_seed(seed)
    if chunk_size is not None:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    f64 = chain.dtype == torch.float64
    if tol is None:
        tol = 1e-12 if f64 else 1e-4
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    n0 = chain.dim_in(0)
    rank = min([n0] + [chain.dim_out(j) for j in range(len(chain))])
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be None or an int, got {k!r}")
        if not 1 <= int(k) <= rank:
            raise ValueError(
                f"k must be in [1, {rank}] (the smallest per-sample size along the chain), "
                f"got {int(k)}"
            )
        k = int(k)
    if oversample is None:
        oversample = max(4, (k or 0) // 2)
    if isinstance(oversample, bool) or not isinstance(oversample, (int, np.integer)):
        raise TypeError(f"oversample must be an int >= 0, got {oversample!r}")
    if oversample < 0:
        raise ValueError(f"oversample must be >= 0, got {oversample}")
    p = rank if k is None else min(rank, k + int(oversample))
    # A basis of the whole input space (n0 columns) gives every value exactly in one pass.
    full = k is None or (p >= rank and n0 <= FULL_MAX_DIM)
    B, item = chain.batch, chain.inputs[0].element_size()
    widest = max([n0] + [chain.dim_out(j) for j in range(len(chain))])
    width = n0 if full else p
    check_memory(
        B * width * (3 * widest * item + 8 * (2 + len(chain) * per_block) * width),
        "singular_values",
        hint="pass k (the top-k values) or a smaller chunk_size, or analyse fewer samples",
    )
    if k is None and n0 > FULL_MAX_DIM:
        raise ValueError(
            f"k=None pushes one tangent vector per input entry ({n0} per sample, above "
            f"{FULL_MAX_DIM}); pass k for the top-k values"
        )

    dev = chain.device
    iterations = 0
    kr: Any = None
    with torch.no_grad(), _functional_mode():
        if full:
            V = torch.eye(n0, dtype=chain.dtype, device=dev).expand(B, n0, n0)
            U, d, T, states, fin = _forward(chain, V, chunk_size, keep=per_block)
            _raise_non_finite(chain, fin, "forward")
            if not per_block:
                states = [(d, T)]
            block_logs, sweeps = _jacobi_per_block(states)
            residuals = torch.zeros(B, k or rank, dtype=torch.float64)
            converged = torch.ones(B, dtype=torch.bool)
            method = "full"
        else:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            assert k is not None  # not full
            if method == "krylov" or (method == "auto" and 3 * p <= rank):
                # Smaller blocks reach a higher Krylov degree for the same number of
                # Jacobian-vector products (measured on a 12-block Transformer: half of k
                # took 40% fewer products than k + k // 2).
                kb = min(p, max(8, -(-k // 2)))
                max_dim = min(rank, max(2 * p, KRYLOV_MAX_BLOCKS * kb))
                m_out = chain.dim_out(len(chain) - 1)
                check_memory(
                    B * (n0 + m_out) * max_dim * item + 16 * B * max_dim**2,
                    "singular_values",
                    hint="pass a smaller k, or analyse fewer samples",
                )
                kr = _krylov_top_k(
                    chain,
                    k,
                    kb,
                    p,
                    max_iter=max_iter,
                    max_dim=max_dim,
                    tol=tol,
                    gen=gen,
                    chunk_size=chunk_size,
                    give_up=method == "auto",
                )
                if kr[4] == "range" and method == "auto":
                    kr = None  # graded subspace iteration below
        if not full and kr is not None:
            logs, residuals, iterations, Vk, _ = kr
            converged = (residuals <= tol).all(dim=1)
            sweeps = None
            if per_block:
                # The per-block spectra of M_l V_k, V_k the top-k right Ritz vectors.
                _, _, _, states, fin = _forward(chain, Vk, chunk_size, keep=True)
                _raise_non_finite(chain, fin, "forward")
                block_logs, _ = _jacobi_per_block(states[:-1]) if len(states) > 1 else ([], None)
            else:
                block_logs = []
            block_logs = [*block_logs, logs]
            method = "krylov"
        elif not full:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            G0 = torch.randn(B, n0, p, generator=gen, dtype=torch.float64)
            V = torch.linalg.qr(G0)[0].to(device=dev, dtype=chain.dtype)
            best, stale = math.inf, 0
            prev = delta_prev = None
            while True:
                iterations += 1
                U, d, T, states, fin = _forward(chain, V, chunk_size, keep=per_block)
                _raise_non_finite(chain, fin, "forward")
                logs, sweeps, X, Y = _graded_svd(T, d, vectors=True)
                # The left Ritz vectors (orthonormal) go back: M^T U X = Vb e^{db} Tb, and
                # Vb spans M^T M V, the next subspace.
                Vb, _, _, fin = _backward(chain, U @ X.to(U.dtype), chunk_size)
                _raise_non_finite(chain, fin, "backward")
                # Error estimate of each Ritz value from its successive changes: they fall
                # geometrically (ratio q), so the remaining error is about delta q / (1 - q).
                # (A residual ||M^T u - sigma v|| / sigma would measure rounding at the
                # larger values' scale, eps sigma_1 / sigma_i, not the error of sigma_i.)
                top = logs[:, :k]
                est = torch.full_like(top, math.inf)
                if prev is not None:
                    delta = torch.where(torch.isneginf(top), 0.0, (top - prev).abs())
                    if delta_prev is not None:
                        q = torch.where(delta_prev > 0, delta / delta_prev, 0.0).clamp(0.0, 0.99)
                        est = torch.maximum(delta * q / (1.0 - q), torch.zeros_like(delta))
                    delta_prev = delta
                prev = top
                worst = float(est.max())
                if worst <= tol or iterations >= max_iter:
                    break
                # Stagnation (the dtype's floor): 20 iterations without a 10% gain.
                if worst < 0.9 * best:
                    best, stale = worst, 0
                else:
                    stale += 1
                    if stale >= 20 and math.isfinite(worst):
                        break
                V = Vb
            residuals = est
            converged = (residuals <= tol).all(dim=1)
            if not per_block:
                states = [(d, T)]
            # Per block: M_l V Y_k = U_l diag(e^{d_l}) T_l Y_k, with V Y_k the top-k right Ritz
            # vectors (as for the Krylov method).
            Yk = Y[:, :, :k]
            states = [(dl, Tl @ Yk) for dl, Tl in states[:-1]]
            block_logs, _ = _jacobi_per_block(states) if states else ([], None)
            block_logs = [*block_logs, logs]
            method = "subspace"

    kk = rank if k is None else k
    final = block_logs[-1][:, :kk].cpu().numpy()
    if per_block:
        w = max(t.shape[1] for t in block_logs)
        if k is not None:
            w = min(w, k)
        stack = np.full((len(block_logs), B, w), np.nan)
        for i, t in enumerate(block_logs):
            a = t[:, :w].cpu().numpy()
            stack[i, :, : a.shape[1]] = a
    else:
        stack = np.full((len(chain), B, kk), np.nan)
        stack[-1] = final
    if not bool(converged.all()):
        warnings.warn(
            f"singular_values: the top-{k} {method} iteration stopped after {iterations} "
            f"iterations with error estimates up to {float(residuals.max()):.2e} above "
            f"tol={tol:g}; "
            "raise max_iter or oversample, or (float32) accept a larger tol",
            RuntimeWarning,
            stacklevel=2,
        )
    return TorchJacobianSingularValues(
        model=model,
        kind="torch",
        dtype=np.dtype("float64" if f64 else "float32"),
        depth=len(chain),
        log_singular_values=final,
        jacobi_sweeps=sweeps.cpu().numpy() if sweeps is not None else np.zeros(B, np.int64),
        block_names=tuple(chain.names),
        block_log_singular_values=stack,
        k=k,
        method=method,
        iterations=iterations,
        residuals=residuals.cpu().numpy(),
        converged=converged.cpu().numpy(),
        tol=float(tol),
    )


# --------------------------------------------------------------------- per-block spectra


def _krylov(
    op: Callable[[Any], Any],
    q0: Any,
    *,
    ncv: int,
    max_iter: int,
    tol: float,
    eps: float,
) -> tuple[Any, ...]:
    """The largest-modulus eigenvalue of ``op`` per sample, by Krylov-Schur (Arnoldi with
    thick restarts), the operator applied to all samples at once.

    ``op`` maps (B, n) to (B, n); ``q0`` (B, n) start vectors. A cycle extends the Krylov
    decomposition ``A V_m = V_m H + v b^T`` to ``m = min(ncv, n)`` vectors (classical
    Gram-Schmidt, twice), then keeps the ordered real Schur vectors of the ``m // 2`` largest
    Ritz values (``scipy.linalg.schur`` of the small projected matrix, on the host once per
    cycle; a sample that keeps fewer is padded with zero vectors, which change nothing).
    Returns ``lambda`` (B,) complex128, operator applications (B,), relative residuals
    ``|b^T y| / |lambda|`` (B,), the eigenvalue condition estimate in the projected matrix
    (B,) and the converged flags (B,), all numpy.
    """
    import torch

    B, n = q0.shape
    m = max(2, min(ncv, n))
    dev, dt = q0.device, q0.dtype
    lam = np.zeros(B, np.complex128)
    res = np.full(B, np.inf)
    cond = np.ones(B)
    its = np.zeros(B, np.int64)
    done = np.zeros(B, bool)
    V = torch.zeros(B, m + 1, n, dtype=dt, device=dev)
    H = torch.zeros(B, m + 1, m, dtype=torch.float64, device=dev)
    V[:, 0] = q0 / torch.linalg.vector_norm(q0, dim=1, keepdim=True)
    j0, used = 0, 0
    while True:
        jend = min(m, j0 + max_iter - used)
        for j in range(j0, jend):
            w = op(V[:, j])
            for _ in range(2):  # classical Gram-Schmidt, twice
                h = torch.einsum("bjn,bn->bj", V[:, : j + 1], w)
                w = w - torch.einsum("bjn,bj->bn", V[:, : j + 1], h)
                H[:, : j + 1, j] += h.to(torch.float64)
            beta = torch.linalg.vector_norm(w, dim=1)
            H[:, j + 1, j] = beta.to(torch.float64)
            # beta ~ 0: an invariant subspace, the Ritz values are exact; the basis stops.
            alive = beta > eps * torch.linalg.vector_norm(H[:, : j + 2, j], dim=1).to(dt)
            V[:, j + 1] = torch.where(
                alive.unsqueeze(1), w / beta.clamp_min(1e-300).unsqueeze(1), 0.0
            )
        used += jend - j0
        Hm = H[:, :jend, :jend].cpu().numpy()
        brow = H[:, jend, :jend].cpu().numpy()
        for b in range(B):
            ev, Y = np.linalg.eig(Hm[b])
            order = np.argsort(-np.abs(ev), kind="stable")
            i = order[0]
            y = Y[:, i] / np.linalg.norm(Y[:, i])
            if done[b]:
                continue
            evl, Yl = np.linalg.eig(Hm[b].T)
            yl = Yl[:, int(np.argmin(np.abs(evl - ev[i])))]
            # Hm is real: the left eigenvector is conj(yl), so w^H y = yl^T y.
            dot = abs(yl @ y)
            lam[b] = ev[i]
            res[b] = abs(brow[b] @ y) / max(abs(ev[i]), 1e-300)
            cond[b] = np.linalg.norm(yl) / max(dot, 1e-300)
            its[b] = used
            done[b] = res[b] <= tol or ev[i] == 0
        if done.all() or used >= max_iter:
            break
        # Thick restart: the ordered real Schur vectors of the wanted Ritz values.
        Zs, keep = [], []
        for b in range(B):
            got = _ordered_schur(Hm[b], jend)
            if got is None:  # reordering failed: restart from the top Ritz vector alone
                break
            Zs.append(got)
            keep.append(got[2])
        if len(Zs) < B:
            x = torch.einsum(
                "bjn,bj->bn",
                V[:, :jend].to(torch.complex128),
                torch.from_numpy(np.stack([_top_ritz_vector(Hm[b]) for b in range(B)])).to(dev),
            )
            q = (x.real + x.imag).to(dt)
            V = torch.zeros_like(V)
            V[:, 0] = q / torch.linalg.vector_norm(q, dim=1, keepdim=True).clamp_min(1e-300)
            H = torch.zeros_like(H)
            j0 = 0
            continue
        K = max(keep)
        Zk = np.zeros((B, jend, K))
        Sk = np.zeros((B, K, K))
        rk = np.zeros((B, K))
        for b, (T_b, Z_b, sdim) in enumerate(Zs):
            Zk[b, :, :sdim] = Z_b[:, :sdim]
            Sk[b, :sdim, :sdim] = T_b[:sdim, :sdim]
            rk[b, :sdim] = brow[b] @ Z_b[:, :sdim]
        Zt = torch.from_numpy(Zk).to(device=dev, dtype=dt)
        Vn = torch.zeros_like(V)
        Vn[:, :K] = torch.einsum("bjn,bjk->bkn", V[:, :jend], Zt)
        Vn[:, K] = V[:, jend]
        V = Vn
        H = torch.zeros_like(H)
        H[:, :K, :K] = torch.from_numpy(Sk).to(dev)
        H[:, K, :K] = torch.from_numpy(rk).to(dev)
        j0 = K
    return lam, its, res, cond, done


def _ordered_schur(Hm: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Real Schur form of ``Hm`` with about ``m // 2`` largest-modulus eigenvalues leading
    (complex pairs kept whole); the cut is placed in a gap of the moduli, tried at the nearest
    gaps when rounding upsets the ordering. None when every try fails."""
    import scipy.linalg

    mod = np.sort(np.abs(np.linalg.eigvals(Hm)))[::-1]
    want = max(1, m // 2)
    cuts = [i for i in range(1, m) if mod[i] < mod[i - 1] * (1 - 1e-9)]
    cuts.sort(key=lambda i: abs(i - want))
    for i in cuts[:4]:
        thr = math.sqrt(mod[i] * mod[i - 1]) if mod[i] > 0 else 0.5 * mod[i - 1]
        try:
            T, Z, sdim = scipy.linalg.schur(
                Hm, output="real", sort=lambda re, im, t=thr: np.hypot(re, im) > t
            )
        except (np.linalg.LinAlgError, ValueError):
            continue
        if 1 <= sdim < m:
            return T, Z, int(sdim)
    return None


def _top_ritz_vector(Hm: np.ndarray) -> np.ndarray:
    ev, Y = np.linalg.eig(Hm)
    return Y[:, int(np.argmax(np.abs(ev)))].astype(np.complex128)


def block_spectrum(
    blocks: Blocks,
    x: Any,
    *,
    which: Any = None,
    method: str = "auto",
    tol: float | None = None,
    max_iter: int = 20000,
    ncv: int = 40,
    seed: int = 0,
    model: Any = None,
) -> TorchJacobianSpectrum:
    """Largest singular value and spectral radius of every block's per-sample Jacobian.

    Parameters
    ----------
    blocks : sequence of (str, torch.nn.Module)
        The chain (see :func:`singular_values`).
    x : torch.Tensor of shape (B, ...)
        The input of block 0 (float32 or float64, the blocks' device and dtype).
    which : int, str, slice, sequence of int / str or boolean mask, optional
        Blocks to analyse (indices, negative from the end, or names); all by default.
    method : {"auto", "arnoldi"}
        Matrix-free: Arnoldi on ``J`` (``jvp``) for the spectral radius, Lanczos on ``J^T J``
        (``jvp`` then ``vjp``) for ``sigma_max``, both restarted every ``ncv`` vectors from
        the dominant Ritz vector. "auto" is "arnoldi" (no dense Jacobian is ever formed).
    tol : float, optional
        Relative residual to reach (default 1e-10 in float64, 1e-5 in float32).
    max_iter : int
        Operator applications allowed per quantity and block.
    ncv : int
        Krylov vectors per restart cycle (capped at the block's per-sample size).
    seed : int
        Seed of the start vectors.
    model : object, optional
        Stored in the result's ``model`` field.

    Returns
    -------
    TorchJacobianSpectrum
        ``steps`` are block indices in ``blocks``; ``spectral_radius`` is NaN for a block
        whose per-sample input and output sizes differ. ``reliable``: converged, estimated
        error at most ``tol`` and ``spectral_radius <= sigma_max`` (to ``tol``).

    Notes
    -----
    Each operator is applied to a power-of-two multiple ``c J`` of the Jacobian (``c`` from
    the first product, per sample), so values far above or below the dtype's range are
    measured; ``log_sigma_max`` and ``log_spectral_radius`` are computed from the scaled
    values. Per block, one ``vjp`` closure (that block's activations) is kept while it is
    analysed.
    """
    import torch
    from torch.func import jvp, vjp

    chain = _Chain(blocks, x, 0, None)
    if method not in ("auto", "arnoldi"):
        raise ValueError(
            f"method must be 'auto' or 'arnoldi' (matrix-free; no dense Jacobian is built "
            f"for a torch module), got {method!r}"
        )
    max_iter = check_positive_int(max_iter, "max_iter")
    ncv = check_positive_int(ncv, "ncv", minimum=2)
    seed = check_int_seed(seed)
    f64 = chain.dtype == torch.float64
    if tol is None:
        tol = 1e-10 if f64 else 1e-5
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    B = chain.batch
    sel = _select_blocks(which, chain.names)
    eps = float(torch.finfo(chain.dtype).eps)
    n_sel = len(sel)
    out = {
        key: np.full((n_sel, B), np.nan)
        for key in ("rho", "sig", "rres", "sres", "rerr", "serr", "rcond", "lrho", "lsig")
    }
    rit = np.zeros((n_sel, B), np.int64)
    sit = np.zeros((n_sel, B), np.int64)
    conv = np.zeros((n_sel, B), bool)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad(), _functional_mode():
        for row, j in enumerate(sel):
            f, h = chain.fn(j), chain.inputs[j]
            s_in, s_out = chain.shape_in(j), chain.shape_out(j)
            n_in, n_out = chain.dim_in(j), chain.dim_out(j)
            q0 = torch.randn(B, n_in, generator=gen, dtype=torch.float64)
            q0 = q0.to(device=chain.device, dtype=chain.dtype)
            fn = vjp(f, h)[1]

            def apply_j(v: Any, f: Any = f, h: Any = h, s_in: Any = s_in) -> Any:
                return jvp(f, (h,), (v.reshape(s_in),))[1].reshape(B, -1)

            # A power of two per sample so that c J q0 has norm in [1/2, 1): the scaled
            # operators stay inside the dtype's range; c is exact.
            probe = apply_j(q0 / torch.linalg.vector_norm(q0, dim=1, keepdim=True))
            nrm = torch.linalg.vector_norm(probe.to(torch.float64), dim=1)
            _, e = torch.frexp(torch.where(nrm > 0, nrm, 1.0))
            log_c = -e.to(torch.float64) * math.log(2.0)
            c = torch.ldexp(torch.ones(B, dtype=chain.dtype, device=chain.device), -e)
            cv = c.view(B, 1)

            def gram(v: Any, fn: Any = fn, s_out: Any = s_out, cv: Any = cv) -> Any:
                u = apply_j(cv * v) * cv
                return fn(u.reshape(s_out))[0].reshape(B, -1)

            lam, its, res, _, s_ok = _krylov(gram, q0, ncv=ncv, max_iter=max_iter, tol=tol, eps=eps)
            lc = log_c.cpu().numpy()
            with np.errstate(divide="ignore"):
                lsig = 0.5 * np.log(np.maximum(lam.real, 0.0)) - lc
            out["lsig"][row] = lsig
            out["sres"][row] = res
            out["serr"][row] = np.maximum(0.5 * res, eps)
            sit[row] = its
            r_ok = np.ones(B, bool)
            if n_in == n_out:

                def scaled_j(v: Any, cv: Any = cv) -> Any:
                    return apply_j(cv * v)

                lam, its, res, cnd, r_ok = _krylov(
                    scaled_j, q0, ncv=ncv, max_iter=max_iter, tol=tol, eps=eps
                )
                with np.errstate(divide="ignore"):
                    lrho = np.log(np.abs(lam)) - lc
                out["lrho"][row] = lrho
                out["rres"][row] = res
                out["rcond"][row] = cnd
                # cond x max(residual, eps ||J||) / |lambda|, all relative to |lambda|
                with np.errstate(over="ignore", invalid="ignore"):
                    ratio = np.exp(lsig - lrho)
                out["rerr"][row] = cnd * np.maximum(res, eps * ratio)
                rit[row] = its
            conv[row] = s_ok & r_ok
    with np.errstate(over="ignore", under="ignore"):
        rho, sig = np.exp(out["lrho"]), np.exp(out["lsig"])
    square = ~np.isnan(out["lrho"])
    reliable = (
        conv
        & (out["serr"] <= tol)
        & np.where(square, out["rerr"] <= tol, True)
        & np.where(square, out["lrho"] <= out["lsig"] + 10 * tol, True)
    )
    if not reliable.all():
        warnings.warn(
            f"{int((~reliable).sum())} of {reliable.size} matrix-free results are not reliable "
            f"to tol={tol:g} (not converged within max_iter={max_iter}, or an eigenvalue whose "
            "condition estimate times its residual stays above tol, as for a strongly "
            "non-normal Jacobian); see reliable, radius_errors and sigma_errors",
            RuntimeWarning,
            stacklevel=2,
        )
    zeros = np.zeros((n_sel, B), bool)
    return TorchJacobianSpectrum(
        model=model,
        kind="torch",
        dtype=np.dtype("float64" if f64 else "float32"),
        method="arnoldi",
        steps=np.asarray(sel, np.int64),
        spectral_radius=rho,
        sigma_max=sig,
        radius_iterations=rit,
        sigma_iterations=sit,
        radius_residuals=np.where(square, out["rres"], 0.0),
        sigma_residuals=out["sres"],
        converged=conv,
        reliable=reliable,
        radius_errors=out["rerr"],
        sigma_errors=out["serr"],
        radius_condition=out["rcond"],
        radius_fallback=zeros,
        sigma_fallback=zeros.copy(),
        log_spectral_radius=out["lrho"],
        log_sigma_max=out["lsig"],
        block_names=tuple(chain.names[j] for j in sel),
    )


def _select_blocks(which: Any, names: list[str]) -> list[int]:
    """Sorted unique block indices from None, an int, a name, a slice, a sequence of ints or
    names, or a boolean mask."""
    n = len(names)
    if which is None:
        return list(range(n))
    if isinstance(which, slice):
        return list(range(n))[which]
    if isinstance(which, (str, int, np.integer)) and not isinstance(which, bool):
        which = [which]
    if isinstance(which, np.ndarray):
        which = which.tolist()
    if not isinstance(which, Sequence) or isinstance(which, (str, bytes)):
        raise TypeError(
            f"which must be None, an int, a block name, a slice, a sequence of them or a "
            f"boolean mask, got {which!r}"
        )
    if len(which) and all(isinstance(w, (bool, np.bool_)) for w in which):
        if len(which) != n:
            raise ValueError(
                f"a boolean which must have one entry per block ({n}), got {len(which)}"
            )
        return [i for i, w in enumerate(which) if w]
    return sorted({_block_index(w, names, "which", 0) for w in which})

"""Device-side reductions for the training monitor.

Everything here stays on the device of the tensors it is given: norms of many tensors in one
``torch._foreach_norm`` call, activation statistics as three 0-d reductions per call (plus a
per-unit maximum for rectifiers), no bool masks where the output tells (a comparison producing
a bool tensor costs several reductions on the CPU). The monitor stacks the 0-d results of one
logged step into one float64 vector (:func:`stack64`) and moves it to the host once (no
``.item()`` per tensor); the sums per block and per module are formed there
(:func:`activation_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vgcore.activations import Activation

__all__ = [
    "activation_metrics",
    "activation_parts",
    "difference_norms",
    "fast_differences",
    "fast_snapshot",
    "grad_view",
    "local",
    "low_derivative_mask",
    "norms",
    "snapshot_norms",
    "stack64",
]


def local(t: torch.Tensor) -> torch.Tensor:
    """The rank-local part of ``t``: a DTensor's local shard, else ``t`` itself."""
    to_local = getattr(t, "to_local", None)
    if to_local is not None and hasattr(t, "placements"):
        return to_local()
    return t


def norms(tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """Euclidean norms of ``tensors`` as 0-d tensors on their devices, in their dtypes, from one
    ``torch._foreach_norm`` call (one fused kernel per device and dtype group).

    Parameters
    ----------
    tensors : sequence of Tensor or None
        Any shapes and floating dtypes (sparse tensors are densified one by one); None (a
        missing gradient, a rank's empty shard) gives a zero.

    Returns
    -------
    list of 0-d Tensor, one per input
    """
    dense = [t.to_dense() if t.is_sparse else t for t in tensors if t is not None]
    got = list(torch._foreach_norm(dense)) if dense else []
    if len(got) == len(tensors):
        return got
    zero = got[0].new_zeros(()) if got else torch.zeros(())
    it = iter(got)
    return [zero if t is None else next(it) for t in tensors]


_PASS_DTYPES = (torch.float32, torch.float64)


def _one_pass(t: torch.Tensor | None) -> bool:
    """Whether ``t`` can go to the compiled one-pass sums: a dense, contiguous float32 / float64
    CPU tensor that numpy can view (no lazy negation or conjugation)."""
    return (
        t is not None
        and t.is_cpu
        and t.dtype in _PASS_DTYPES
        and t.layout == torch.strided
        and t.is_contiguous()
        and not t.is_neg()
        and not t.is_conj()
    )


class HostViews:
    """NumPy views of the compiled passes' tensors that keep their storage from step to step
    (the parameters, the monitor's copies of them), made once per key.

    Checking the pass's conditions and making a view costs about 10 us a tensor, a few hundred
    per logged step; a kept view is checked by the tensor's address, shape, strides and dtype
    (about 2 us). An equal address is the same storage: the kept view holds it alive.
    """

    def __init__(self) -> None:
        self._views: dict[Any, tuple[Any, ...]] = {}

    def view(self, key: Any, t: torch.Tensor) -> np.ndarray | None:
        """``t`` as a NumPy array when it can take the compiled passes, else None."""
        if not t.is_cpu or t.layout != torch.strided:
            return None
        ptr, shape, strides, dtype = t.data_ptr(), t.shape, t.stride(), t.dtype
        kept = self._views.get(key)
        if kept is not None and kept[:4] == (ptr, shape, strides, dtype) and not t.is_neg():
            return kept[4]
        v = t.detach().numpy() if _one_pass(t) else None
        self._views[key] = (ptr, shape, strides, dtype, v)
        return v

    def clear(self) -> None:
        self._views.clear()


# _CACHE_ORDER: the compiled passes run over the parameters last to first. The optimizer's step
# and the next forward start with the first parameters, and the backward ends with them: a
# pass that ends there leaves in the cache what is read next.


# _THREADS: the compiled passes share their blocks among torch's intra-op threads, as torch's
# own kernels would (one core does not saturate the memory bus these passes are bound by); the
# sums do not depend on the thread count.


def _host_view(t: torch.Tensor | None) -> np.ndarray | None:
    return t.detach().numpy() if t is not None and _one_pass(t) else None


def _views_of(
    tensors: Sequence[torch.Tensor | None], keys: Sequence[Any] | None, kept: HostViews | None
) -> list[Any]:
    """NumPy views of the tensors that can take the compiled passes (None for the others),
    kept in ``kept`` under ``keys`` when given."""
    if kept is None or keys is None:
        return [_host_view(t) for t in tensors]
    return [None if t is None else kept.view(k, t) for k, t in zip(keys, tensors)]


def _alike(a: np.ndarray | None, x: np.ndarray) -> bool:
    return a.dtype == x.dtype and a.size == x.size if a is not None else False


def _scalars(values: Any) -> list[torch.Tensor]:
    """Host float64 values as 0-d CPU tensors (views of one array)."""
    return list(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).unbind(0))


def snapshot_norms(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor | None],
    copies: Sequence[torch.Tensor | None],
    keys: Sequence[Any] | None = None,
    kept: HostViews | None = None,
) -> tuple[Any, Any]:
    """Norms of ``weights`` and ``grads``, each weight copied into its ``copies`` entry (None:
    no copy).

    Dense contiguous float32 / float64 CPU tensors take one compiled pass each (the weight read
    once for its norm and its copy, float64 sums); the others torch's foreach norms and copy.
    A None gradient gives a zero. With ``kept``, the views of the weights (under ``keys``) and
    of the copies (under ``("copy", key)``) are kept there between calls.

    Returns
    -------
    (weight norms, gradient norms) : float64 arrays of shape (len(weights),) on the host when
        every tensor took the compiled pass, else lists of 0-d tensors on the tensors' devices
    """
    from vgcore import _core

    n = len(weights)
    wv = _views_of(weights, keys, kept)
    gv = [_host_view(g) for g in grads]
    cv = _views_of(copies, None if keys is None else [("copy", k) for k in keys], kept)
    fast = [
        i
        for i in range(n)
        if (w := wv[i]) is not None
        and (grads[i] is None or _alike(gv[i], w))
        and (copies[i] is None or _alike(cv[i], w))
    ]
    roots = np.zeros((2, 0))
    if fast:
        last_first = fast[::-1]  # see _CACHE_ORDER
        sums = _core.snapshot_sums(
            [wv[i] for i in last_first],
            [gv[i] for i in last_first],
            [cv[i] for i in last_first],
            threads=torch.get_num_threads(),  # see _THREADS
        )
        roots = np.sqrt(sums[::-1].T)
    if len(fast) == n:
        return roots[0], roots[1]
    wn: list[Any] = [None] * n
    gn: list[Any] = [None] * n
    for j, (wj, gj) in enumerate(zip(_scalars(roots[0]), _scalars(roots[1]))):
        wn[fast[j]], gn[fast[j]] = wj, gj
    done = set(fast)
    rest = [i for i in range(n) if i not in done]
    got = norms([*(weights[i] for i in rest), *(grads[i] for i in rest)])
    for j, i in enumerate(rest):
        wn[i] = got[j]
        gn[i] = got[len(rest) + j]
    dst: list[torch.Tensor] = []
    src: list[torch.Tensor] = []
    for i in rest:
        c = copies[i]
        if c is not None:
            dst.append(c)
            src.append(weights[i])
    if dst:
        torch._foreach_copy_(dst, src)
    return wn, gn


def grad_view(g: torch.Tensor | None, like: np.ndarray) -> np.ndarray | None:
    """A NumPy view of the gradient ``g`` when it can join its weight's compiled pass (dense,
    contiguous, on the CPU, ``like``'s dtype and size), else None."""
    if g is None or not _one_pass(g):
        return None
    v = (g.detach() if g.requires_grad else g).numpy()
    return v if v.dtype == like.dtype and v.size == like.size else None


def fast_snapshot(
    slots: Sequence[tuple[Any, torch.Tensor]],
    copies: Mapping[Any, torch.Tensor],
    kept: HostViews,
) -> tuple[list[Any], np.ndarray, np.ndarray, list[np.ndarray]] | None:
    """:func:`snapshot_norms` for the common case, without its per-tensor set-up: every
    parameter of ``slots`` ((key, parameter), in order) has a gradient and both take the
    compiled pass; those whose key is in ``copies`` are copied there.

    Returns
    -------
    (keys, weight norms, gradient norms, copies' views) : the keys in ``slots``' order, float64
        arrays of shape (len(keys),), the views of ``copies`` in ``slots``' order; None when
        some tensor cannot take the pass or a copy does not match its weight (then
        :func:`snapshot_norms` does the step)
    """
    from vgcore import _core

    keys: list[Any] = []
    wv: list[np.ndarray] = []
    gv: list[np.ndarray | None] = []
    cv: list[np.ndarray | None] = []
    for k, p in reversed(slots):  # see _CACHE_ORDER
        w = kept.view(k, p)
        if w is None:
            return None
        g = grad_view(p.grad, w)
        if g is None:
            return None
        buf = copies.get(k)
        c = None if buf is None else kept.view(("copy", k), buf)
        if buf is not None and not _alike(c, w):
            return None
        keys.append(k)
        wv.append(w)
        gv.append(g)
        cv.append(c)
    if not keys:
        return None
    sums = _core.snapshot_sums(wv, gv, cv, threads=torch.get_num_threads())
    roots = np.sqrt(sums[::-1].T)
    return keys[::-1], roots[0], roots[1], [c for c in cv[::-1] if c is not None]


def fast_differences(
    slots: Sequence[tuple[Any, torch.Tensor]], before: Sequence[np.ndarray], kept: HostViews
) -> np.ndarray | None:
    """:func:`difference_norms` of the parameters of ``slots`` against the copies' views
    ``before`` made by :func:`fast_snapshot`; None when a parameter cannot take the compiled
    pass any more (the optimizer gave it new storage of another layout)."""
    from vgcore import _core

    av: list[np.ndarray] = []
    for (k, p), b in zip(slots, before):
        a = kept.view(k, p)
        if not _alike(a, b):
            return None
        av.append(a)  # type: ignore[arg-type]
    sums = _core.difference_sums(av[::-1], list(before[::-1]), threads=torch.get_num_threads())
    return np.sqrt(sums[::-1])


def difference_norms(
    after: Sequence[torch.Tensor],
    before: Sequence[torch.Tensor],
    keys: Sequence[Any] | None = None,
    kept: HostViews | None = None,
) -> Any:
    """``||after[i] - before[i]||``; ``before`` may be overwritten.

    Dense contiguous float32 / float64 CPU pairs take one compiled pass each (both read once,
    the difference formed in float64, exact for float32); the others are subtracted in place
    into ``before`` (exact for a small step) and normed by torch. ``keys`` and ``kept`` as for
    :func:`snapshot_norms` (``before`` being the copies).

    Returns
    -------
    float64 array of shape (len(after),) on the host when every pair took the compiled pass,
    else a list of 0-d tensors
    """
    from vgcore import _core

    n = len(after)
    av = _views_of(after, keys, kept)
    bv = _views_of(before, None if keys is None else [("copy", k) for k in keys], kept)
    fast = [i for i in range(n) if (a := av[i]) is not None and _alike(bv[i], a)]
    roots = np.zeros(0)
    if fast:
        last_first = fast[::-1]  # see _CACHE_ORDER
        sums = _core.difference_sums(
            [av[i] for i in last_first],
            [bv[i] for i in last_first],
            threads=torch.get_num_threads(),  # see _THREADS
        )
        roots = np.sqrt(sums[::-1])
    if len(fast) == n:
        return roots
    out: list[Any] = [None] * n
    for i, r in zip(fast, _scalars(roots)):
        out[i] = r
    done = set(fast)
    rest = [i for i in range(n) if i not in done]
    diffs = [before[i] for i in rest]
    torch._foreach_sub_(diffs, [after[i] for i in rest])
    for i, r in zip(rest, norms(diffs)):
        out[i] = r
    return out


def _max_derivative(act: Activation) -> float:
    """max |phi'| over the real line (the scale of 'a small derivative')."""
    name, p = act.name, act.params
    if name == "sigmoid":
        return 0.25
    if name == "elu":
        return max(1.0, p["alpha"])
    if name == "selu":
        return 1.0507009873554805 * 1.6732632423543772
    if name == "silu":
        return 1.0998393194
    if name in ("gelu", "gelu_tanh"):
        return 1.1289017
    return 1.0


def low_derivative_mask(
    act: Activation, z: torch.Tensor | None, y: torch.Tensor, threshold: float
) -> torch.Tensor | None:
    """Units whose derivative ``|phi'(z)|`` is below ``threshold * max|phi'|``.

    The derivative comes from the output ``y`` where the activation allows it (sigmoid, tanh,
    the ReLU family, elu, selu, softplus) and from the input ``z`` otherwise (silu, gelu);
    ``z`` is None when the module ran in place (its input was overwritten). Returns None where
    the derivative never vanishes (identity, a leaky ReLU with a slope above ``threshold``) or
    cannot be computed.
    """
    name, p = act.name, act.params
    thr = threshold * _max_derivative(act)
    if name == "sigmoid":
        return y * (1 - y) < thr
    if name == "tanh":
        return 1 - y * y < thr
    if name == "relu":
        return y <= 0
    if name == "leaky_relu":
        return (y < 0) if abs(p["negative_slope"]) < thr else None
    if name == "elu":
        return (y < 0) & (y + p["alpha"] < thr)
    if name == "selu":
        sa = 1.0507009873554805 * 1.6732632423543772
        return (y < 0) & (y + sa < thr)
    if name == "softplus":
        # phi'(z) = sigmoid(beta z) = 1 - exp(-beta y) (exact below the linear threshold)
        return -torch.expm1(-p["beta"] * y) < thr
    if z is None:
        return None
    if name == "silu":
        s = torch.sigmoid(z)
        return (s * (1 + z * (1 - s))).abs() < thr
    if name == "gelu":
        cdf = 0.5 * (1 + torch.erf(z * (1 / math.sqrt(2))))
        pdf = torch.exp(-0.5 * z * z) * (1 / math.sqrt(2 * math.pi))
        return (cdf + z * pdf).abs() < thr
    if name == "gelu_tanh":
        # autograd of the tanh approximation, elementwise and without a graph
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            (d,) = torch.autograd.grad(torch.nn.functional.gelu(zz, approximate="tanh").sum(), zz)
        return d.abs() < thr
    return None


def _sum_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype of a reduction over ``t``: its own for float32 / float64 (torch
    accumulates in it), float32 for half types (whose 0-d results would round to 8 bits)."""
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def activation_parts(
    act: Activation, z: torch.Tensor | None, y: torch.Tensor, thr: float, units: bool
) -> tuple[list[Any], torch.Tensor | None]:
    """One call's reductions of an activation module's output ``y`` (any shape, batch first).

    Returns
    -------
    (parts, alive) : ``parts`` = [sum, Euclidean norm, number of elements with a small
        derivative] as 0-d tensors, or as floats where a rectifier's output on the CPU took
        the compiled pass (summed over calls and ranks by the monitor, the norm squared first); ``alive`` (shape ``y.shape[1:]`` flattened, or None when ``units`` is
        False or the mask cannot be formed) is > 0 where some sample had the unit active (for
        a rectifier the unit's sum over the batch).

    A rectifier needs no mask: ``y = 0`` exactly where the unit is off, so the count is
    ``numel - sum(sign(y))`` (formed on the host) and the per-unit activity the sum over the batch
    (a comparison producing a bool tensor costs several times these reductions on the CPU).
    """
    y = y.detach()
    n = y.numel()
    dt = _sum_dtype(y) if n < 2**24 else torch.float64  # counts stay exact
    sd = _sum_dtype(y)
    alive: torch.Tensor | None = None
    if act.name == "relu":
        if units and y.dim() >= 2 and _one_pass(y) and n < 2**24:
            # one compiled pass on the CPU: host numbers, the per-unit sums as a tensor
            from vgcore import _core

            s1, s2, active, colsum = _core.rectifier_sums(y.numpy())
            return [s1, math.sqrt(s2), active], torch.from_numpy(colsum)
        # the count of active units (sign is 1 or 0); the monitor takes it from the count
        low = torch.sign(y).sum(dtype=dt)
        if units and y.dim() >= 2:
            # y >= 0: a unit's sum over the batch is > 0 exactly where some sample has it
            # active (a sum of non-negative numbers is at least their maximum), and the sums
            # add up to the total: one pass for both
            alive = y.flatten(1).sum(0, dtype=sd)
            return [alive.sum(), torch.linalg.vector_norm(y, dtype=sd), low], alive
    else:
        mask = low_derivative_mask(act, None if z is None else z.detach(), y, thr)
        if mask is None:
            low = torch.full((), math.nan, dtype=dt, device=y.device)
        else:
            low = mask.sum(dtype=dt)
            alive = (~mask).flatten(1).any(0) if (units and y.dim() >= 2) else None
    return [y.sum(dtype=sd), torch.linalg.vector_norm(y, dtype=sd), low], alive


def stack64(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """0-d tensors as one float64 vector on ``device`` (one stack and one cast when they
    share a dtype and device, the common case)."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64, device=device)
    try:
        # one stack; mixed float dtypes promote to the widest, which holds the others exactly
        # (checking each tensor's device and dtype first costs as much as the stack)
        v = torch.stack(list(tensors))
    except RuntimeError:  # tensors on several devices
        return torch.stack([t.to(device=device, dtype=torch.float64) for t in tensors])
    return v.to(device=device, dtype=torch.float64)


def activation_metrics(
    count: float, s1: float, s2: float, low: float, alive: Any = None
) -> dict[str, float]:
    """Host-side: mean, std, low-derivative and dead fractions from the summed parts (over the
    step's calls and the ranks): element count, sum, sum of squares, low-derivative count and
    the per-unit activity (a unit is dead where it is <= 0; None: not tracked)."""
    out: dict[str, float] = {}
    if count <= 0:
        return out
    mean = s1 / count
    out["act_mean"] = mean
    out["act_std"] = math.sqrt(max(s2 / count - mean * mean, 0.0))
    out["act_low_derivative"] = low / count
    if alive is not None and len(alive):
        out["act_dead"] = float((alive <= 0).sum()) / len(alive)
    return out

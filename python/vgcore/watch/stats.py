"""Device-side reductions for the training monitor.

Everything here stays on the device of the tensors it is given: norms of many tensors in one
``torch._foreach_norm`` call, per-block sums by ``index_add``, activation statistics as a few
0-d tensors. The monitor concatenates the results of one logged step and moves them to the
host once (no ``.item()`` per tensor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from vgcore.activations import Activation

__all__ = [
    "ActivationStats",
    "block_sums",
    "local",
    "low_derivative_mask",
    "squared_norms",
]


def local(t: torch.Tensor) -> torch.Tensor:
    """The rank-local part of ``t``: a DTensor's local shard, else ``t`` itself."""
    to_local = getattr(t, "to_local", None)
    if to_local is not None and hasattr(t, "placements"):
        return to_local()
    return t


def squared_norms(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Squared Frobenius norms of ``tensors`` as one float64 vector on ``device``.

    Parameters
    ----------
    tensors : sequence of Tensor
        Any shapes and floating dtypes (dense; sparse tensors are densified one by one).
    device : torch.device
        Where the result lives (the tensors' device when they share one).

    Returns
    -------
    Tensor of shape (len(tensors),), float64
    """
    if not tensors:
        return torch.zeros(0, dtype=torch.float64, device=device)
    dense = [t.to_dense() if t.is_sparse else t for t in tensors]
    # One fused kernel per (device, dtype) group; the norms come back in the input's dtype.
    norms = torch._foreach_norm(dense)
    if all(n.device == device and n.dtype == norms[0].dtype for n in norms):
        out = torch.stack(norms).to(torch.float64)  # the common case: one stack, one cast
    else:
        out = torch.stack([n.to(device=device, dtype=torch.float64) for n in norms])
    return out * out


def block_sums(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Sum ``values`` (shape (P,)) into ``n`` bins given by ``index`` (shape (P,), int64)."""
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    if values.numel():
        out.index_add_(0, index, values)
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


class ActivationStats:
    """Running sums of one activation module's outputs over the forward passes of one step.

    Kept as device tensors, one small group per call and combined once in :meth:`vector`:
    the sum and the squared norm of the outputs (cheap reductions; the variance is taken in
    float64 from them), the number of elements with a small derivative, and per unit whether
    some sample was active (units are all positions after the batch dimension 0; dropped when
    the per-sample shape changes between calls).
    """

    __slots__ = ("alive", "count", "parts", "track_dead")

    def __init__(self, track_dead: bool) -> None:
        self.count = 0
        self.parts: list[torch.Tensor] = []
        self.alive: torch.Tensor | None = None
        self.track_dead = track_dead

    def add(self, act: Activation, z: torch.Tensor | None, y: torch.Tensor, thr: float) -> None:
        """Fold one call's output ``y`` (any shape, batch first) into the sums."""
        y = y.detach()
        n = y.numel()
        if n == 0:
            return
        norm = torch.linalg.vector_norm(y)
        if act.name == "relu":
            # y = 0 exactly where the unit is off: no mask tensor needed for the units
            low = (y <= 0).sum()
            unit = y.flatten(1).amax(0) if (self.track_dead and y.dim() >= 2) else None
        else:
            mask = low_derivative_mask(act, None if z is None else z.detach(), y, thr)
            low = mask.sum() if mask is not None else torch.full((), math.nan, device=y.device)
            unit = None
            if self.track_dead and mask is not None and y.dim() >= 2:
                unit = (~mask).flatten(1).any(0)
        self.parts += [y.sum(), norm, low]
        self.count += n
        if unit is not None:
            alive = unit > 0 if unit.dtype != torch.bool else unit
            if self.alive is None and self.count == n:
                self.alive = alive
            elif self.alive is not None and self.alive.shape == alive.shape:
                self.alive = self.alive | alive
            else:
                self.alive = None
                self.track_dead = False
        elif self.track_dead:
            self.alive = None
            self.track_dead = False

    def vector(self) -> torch.Tensor | None:
        """[count, s1, s2, low, alive...] as one float64 vector (None when nothing was seen);
        every entry is a sum, so ranks combine them by all-reduce (``alive`` > 0 survives)."""
        if not self.parts:
            return None
        if all(t.dtype == self.parts[0].dtype for t in self.parts):
            p = torch.stack(self.parts).to(torch.float64).view(-1, 3)
        else:
            p = torch.stack([t.to(torch.float64) for t in self.parts]).view(-1, 3)
        dev = p.device
        head = torch.stack(
            [
                torch.tensor(float(self.count), dtype=torch.float64, device=dev),
                p[:, 0].sum(),
                (p[:, 1] * p[:, 1]).sum(),
                p[:, 2].sum(),
            ]
        )
        if self.alive is not None:
            return torch.cat([head, self.alive.to(torch.float64)])
        return head


def activation_metrics(vec: Any, has_dead: bool) -> dict[str, float]:
    """Host-side: mean, std, low-derivative and dead fractions from a (reduced) ``vector``."""
    count, s1, s2, low = (float(v) for v in vec[:4])
    out: dict[str, float] = {}
    if count <= 0:
        return out
    mean = s1 / count
    out["act_mean"] = mean
    out["act_std"] = math.sqrt(max(s2 / count - mean * mean, 0.0))
    out["act_low_derivative"] = low / count
    if has_dead and len(vec) > 4:
        alive = vec[4:]
        out["act_dead"] = float((alive <= 0).sum()) / len(alive)
    return out

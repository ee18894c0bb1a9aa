"""Data-parallel and sharded training: combine the ranks' sums so that the recorded norms are
those of the full gradient, and let only rank 0 write.

- DDP: every rank holds the full, averaged parameter gradient, so parameter norms need no
  communication. Block-output gradients and activation statistics come from the rank's own
  samples: their sums are added over ranks, and the output-gradient squared sums divided by
  ``world**2`` (DDP averages the ranks' losses, so the full batch's gradient at a block output
  is ``1/world`` times the local one).
- FSDP (``fully_shard``, parameters as DTensors sharded on a 1-D mesh; or the
  ``FullyShardedDataParallel`` wrapper, flat-parameter shards): each rank holds a shard of each
  parameter and of its gradient; squared sums of the local shards are added over ranks
  (the shards partition the tensor, so the sum is the full tensor's squared norm).

All sums of one logged step go through one ``all_reduce``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DistInfo", "detect"]


class DistInfo:
    """How the watched model is distributed.

    Attributes
    ----------
    mode : {None, "ddp", "fsdp"}
    world : int
        Number of ranks (1 outside torch.distributed).
    rank : int
    """

    def __init__(self, mode: str | None, world: int, rank: int) -> None:
        self.mode = mode
        self.world = world
        self.rank = rank

    @property
    def active(self) -> bool:
        return self.mode is not None and self.world > 1

    @property
    def writer(self) -> bool:
        """Whether this rank writes (logs, alerts, TensorBoard, reports): rank 0."""
        return self.rank == 0

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` (float64) over ranks, in place; the identity outside distributed mode."""
        if self.active and t.numel():
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def __repr__(self) -> str:
        return f"DistInfo(mode={self.mode!r}, world={self.world}, rank={self.rank})"


def _is_sharded_param(p: Any) -> bool:
    placements = getattr(p, "placements", None)
    if placements is None:
        return False
    return any(type(pl).__name__ in ("Shard", "_StridedShard") for pl in placements)


def detect(model: Any, params: list[Any], distributed: Any = "auto") -> tuple[DistInfo, list[bool]]:
    """Find the data-parallel mode of ``model`` and which parameters are sharded.

    Parameters
    ----------
    model : torch.nn.Module
        The model as given (possibly a DDP / FSDP wrapper).
    params : list of Tensor
        The watched parameters.
    distributed : "auto", None, "ddp" or "fsdp"
        "auto" finds it from the wrappers and parameter types; None turns combining off.

    Returns
    -------
    (DistInfo, sharded) : sharded[i] tells whether params[i] holds only a shard
    """
    import torch.distributed as dist

    if distributed not in ("auto", None, "ddp", "fsdp"):
        raise ValueError(f"distributed must be 'auto', None, 'ddp' or 'fsdp', got {distributed!r}")
    ready = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if ready else 1
    rank = dist.get_rank() if ready else 0
    fsdp1 = any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())
    sharded = [fsdp1 or _is_sharded_param(p) for p in params]
    mode: str | None
    if distributed is None or not ready:
        mode = None
    elif distributed != "auto":
        mode = distributed
    elif any(sharded):
        mode = "fsdp"
    elif type(model).__name__ == "DistributedDataParallel":
        mode = "ddp"
    else:
        mode = None
    if mode is None:
        sharded = [False] * len(params)
    return DistInfo(mode, world, rank), sharded

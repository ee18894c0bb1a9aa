"""A single-layer RNN / LSTM / GRU's weights on the device, laid out as the step kernels of
every CUDA driver (gradient flow, Lyapunov, singular values) take them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vgcore.cuda._arrays import Arrays

__all__ = ["CellWeights", "cell_weights"]


@dataclass(frozen=True)
class CellWeights:
    """Device arrays of one recurrent layer (G gates of N units, I inputs).

    Attributes
    ----------
    Wih : device array of shape (G N, I)
    Whh : device array of shape (G N, N)
    WhhT : device array of shape (N, G N)
        ``Whh.T``, contiguous: the state's products ``h @ Whh.T`` read it row by row.
    bias : device array of shape (G N,)
        ``b_ih + b_hh`` folded into the input projections, except a GRU's ``b_hh``.
    bhh : device array of shape (G N,) or None
        A GRU's ``b_hh`` (zeros when it has none), added in the kernel because the reset gate
        multiplies it; None for the other kinds.
    GN, N : int
    extra : tuple
        An RNN's nonlinearity (kernel code, parameter), passed after the kernels' arguments;
        empty for the other kinds.
    """

    Wih: Any
    Whh: Any
    WhhT: Any
    bias: Any
    bhh: Any
    GN: int
    N: int
    extra: tuple[Any, ...]


def cell_weights(ar: Arrays, kind: str, spec: dict[str, Any], dt: np.dtype) -> CellWeights:
    """The device weights of ``spec`` (a single-layer model's ``to_spec(dtype)``) in ``dt``."""
    Wih = ar.asarray(spec["weight_ih"], dt)
    Whh = ar.asarray(spec["weight_hh"], dt)
    GN, N = Whh.shape
    gru = kind == "gru"
    bih, bhh = spec.get("bias_ih"), spec.get("bias_hh")
    bias = np.zeros(GN, dt)
    if bih is not None:
        bias += bih
    if bhh is not None and not gru:
        bias += bhh
    extra: tuple[Any, ...] = ()
    if kind == "rnn":
        from vgcore.cuda.flow import _act_of_spec

        extra = _act_of_spec(spec)[:2]
    return CellWeights(
        Wih=Wih,
        Whh=Whh,
        WhhT=ar.xp.ascontiguousarray(Whh.T),
        bias=ar.asarray(bias, dt),
        bhh=ar.asarray(bhh if bhh is not None else np.zeros(GN), dt) if gru else None,
        GN=int(GN),
        N=int(N),
        extra=extra,
    )

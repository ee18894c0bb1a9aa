"""The fused step of the backward sweeps: measuring and rescaling the backpropagated vector(s)
in one single-block kernel, with the power-of-two scale held on the device.

One launch per step replaces the ~30-90 array operations of measuring (``_logscale.measure``),
logging, rescaling (``_logscale.rescale_exponent``) and injecting a per-step cotangent, each of
which costs 10-40 us of host time on a device. The rules are ``_logscale``'s (those of
base/logscale.hpp): the joint exponent ``e = floor(log2 max|v|)`` over the parts (0 where all
are zero), each part's log Frobenius norm summed in float64 on entries scaled by a power of two
near their largest (-inf for a zero part, NaN where a NaN is), the rescaling by ``2^(target -
e)`` when ``e`` leaves ``[lo, hi]``. Imports numba: imported only by the CUDA backend.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import cuda

from vgcore.cuda._logscale import LIMITS, LN2

__all__ = ["BackwardScale", "fused_kernel", "graded_finish", "qr_finish", "stats_kernel"]


@cuda.jit(device=True)
def nanmax(a, b):  # type: ignore[no-untyped-def]
    """max(a, b), NaN when either is (as NumPy's max)."""
    if a != a:
        return a
    if b != b or b > a:
        return b
    return a


@cuda.jit(device=True)
def block_max2(sa, sb, a, b):  # type: ignore[no-untyped-def]
    """The NaN-propagating maxima of ``a`` and ``b`` over the block, in every thread.

    ``sa``, ``sb``: shared arrays of blockDim.x float64 (a power of two)."""
    tid = cuda.threadIdx.x
    cuda.syncthreads()  # the previous reduction's result has been read everywhere
    sa[tid] = a
    sb[tid] = b
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            sa[tid] = nanmax(sa[tid], sa[tid + stride])
            sb[tid] = nanmax(sb[tid], sb[tid + stride])
        cuda.syncthreads()
        stride //= 2
    return sa[0], sb[0]


@cuda.jit(device=True)
def block_sum2(sa, sb, a, b):  # type: ignore[no-untyped-def]
    """The sums of ``a`` and ``b`` over the block, in every thread (as :func:`block_max2`)."""
    tid = cuda.threadIdx.x
    cuda.syncthreads()
    sa[tid] = a
    sb[tid] = b
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            sa[tid] = sa[tid] + sa[tid + stride]
            sb[tid] = sb[tid] + sb[tid + stride]
        cuda.syncthreads()
        stride //= 2
    return sa[0], sb[0]


@cuda.jit(device=True)
def part_exponent(m):  # type: ignore[no-untyped-def]
    """ex with m = mantissa * 2^ex, mantissa in [0.5, 1) (0 for 0, Inf and NaN, as frexp)."""
    if m > 0.0 and m != math.inf:
        _mant, ex = math.frexp(m)
        return ex
    return 0


@cuda.jit(device=True)
def part_log(m, ex, ssq):  # type: ignore[no-untyped-def]
    """log of a part's Frobenius norm from its max ``m``, ``ex`` and the scaled sum ``ssq``."""
    if m != m or ssq != ssq:
        return math.nan
    if m > 0.0:
        return 0.5 * math.log(ssq) + ex * LN2
    return -math.inf


_KERNELS: dict[int, Any] = {}


def fused_kernel(threads: int) -> Any:
    """The measure-and-rescale kernel for blocks of ``threads`` threads (a power of two: the
    shared arrays' size is a compile-time constant)."""
    got = _KERNELS.get(threads)
    if got is not None:
        return got

    @cuda.jit
    def measure_rescale(  # type: ignore[no-untyped-def]
        G, DC, ADD, CSEQ, CEXP, SCALE, LG, LGC, s, parts, add, inject, rescale, lo, hi, target, emax
    ):
        """One backward step's bookkeeping on G (B, M) and, when ``parts`` is 2, DC (B, M):

        1. ``add``: G += ADD (the part of the cotangent that bypasses the product);
        2. ``inject``: the per-step cotangent CSEQ[s-1]: the scale restarts at 0 on an exactly
           zero carried vector; the carried vectors are shifted down so that the injected
           one, scaled like them, stays below 2^(emax-3) (CEXP[s-1]: its exponent); then
           G += CSEQ[s-1] 2^scale;
        3. LG[s] (LGC[s]) = log ||part|| - scale ln 2;
        4. ``rescale``: both parts times 2^d, d = target - e when e leaves [lo, hi]; the scale
           (SCALE[0], int64) grows by d.

        One block: every thread runs every phase (no thread leaves early: the reductions
        synchronise the block)."""
        sa = cuda.shared.array(threads, np.float64)
        sb = cuda.shared.array(threads, np.float64)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        B = G.shape[0]
        M = G.shape[1]
        two = parts == 2
        scale = int(SCALE[0])  # a Python int in the simulator (ldexp takes no np.int64)
        shift = 0
        # Rows by rows, columns by threads: no integer division per entry (a single block
        # runs on one multiprocessor, where the per-entry work is the cost).
        if inject:
            # was the carried vector exactly zero (its log -inf)? NaN is not zero
            ma = 0.0
            mb = 0.0
            for b in range(B):
                j = tid
                while j < M:
                    gv = float(G[b, j])
                    if add:
                        gv += float(ADD[b, j])
                    ma = nanmax(ma, abs(gv))
                    if two:
                        mb = nanmax(mb, abs(float(DC[b, j])))
                    j += nt
            ma, mb = block_max2(sa, sb, ma, mb)
            if ma == 0.0 and mb == 0.0:
                scale = 0
            shift = min(0, (emax - 4) - (int(CEXP[s - 1]) + scale))
            scale += shift
        # Powers of two as factors where they are normal numbers: x * 2^k rounds once, as
        # ldexp(x, k) does (also into the subnormals); ldexp where 2^k itself is out of range.
        fast_shift = -1000 < shift < 1000
        f_shift = math.ldexp(1.0, shift) if fast_shift else 1.0
        fast_scale = -1000 < scale < 1000
        f_scale = math.ldexp(1.0, scale) if fast_scale else 1.0
        ma = 0.0
        mb = 0.0
        for b in range(B):
            j = tid
            while j < M:
                if add or inject:
                    gv = float(G[b, j])
                    if add:
                        gv += float(ADD[b, j])
                    if inject:
                        cv = float(CSEQ[s - 1, b, j])
                        if fast_shift and fast_scale:
                            gv = gv * f_shift + cv * f_scale
                        else:
                            gv = math.ldexp(gv, shift) + math.ldexp(cv, scale)
                    G[b, j] = gv
                ma = nanmax(ma, abs(float(G[b, j])))  # as stored (rounded to the dtype)
                if two:
                    if shift != 0:
                        if fast_shift:
                            DC[b, j] = float(DC[b, j]) * f_shift
                        else:
                            DC[b, j] = math.ldexp(float(DC[b, j]), shift)
                    mb = nanmax(mb, abs(float(DC[b, j])))
                j += nt
        ma, mb = block_max2(sa, sb, ma, mb)
        exa = part_exponent(ma)
        exb = part_exponent(mb)
        # the joint exponent over the parts that are not zero or NaN
        have = False
        e = 0
        if ma > 0.0:
            e = exa - 1
            have = True
        if two and mb > 0.0:
            if not have or exb - 1 > e:
                e = exb - 1
        d = 0
        if rescale and (e > hi or e < lo):
            d = target - e
        fast = -1000 < exa < 1000 and -1000 < exb < 1000 and -1000 < d < 1000
        ia = math.ldexp(1.0, -exa) if fast else 1.0
        ib = math.ldexp(1.0, -exb) if fast else 1.0
        fd = math.ldexp(1.0, d) if fast else 1.0
        sq_a = 0.0
        sq_b = 0.0
        for b in range(B):
            j = tid
            while j < M:
                gv = float(G[b, j])
                u = abs(gv) * ia if fast else math.ldexp(abs(gv), -exa)
                sq_a += u * u
                if d != 0:
                    G[b, j] = gv * fd if fast else math.ldexp(gv, d)
                if two:
                    cv = float(DC[b, j])
                    u = abs(cv) * ib if fast else math.ldexp(abs(cv), -exb)
                    sq_b += u * u
                    if d != 0:
                        DC[b, j] = cv * fd if fast else math.ldexp(cv, d)
                j += nt
        sq_a, sq_b = block_sum2(sa, sb, sq_a, sq_b)
        if tid == 0:
            LG[s] = part_log(ma, exa, sq_a) - scale * LN2
            if two:
                LGC[s] = part_log(mb, exb, sq_b) - scale * LN2
            SCALE[0] = scale + d

    _KERNELS[threads] = measure_rescale
    return measure_rescale


@cuda.jit
def qr_finish(Q, R, V, LOGS, row):  # type: ignore[no-untyped-def]
    """After a batched QR of the tangent blocks: V (B, k, D) = Q^T per sample (Q: (B, D, k)),
    LOGS[row] (B, k) = log|R_jj| in float64; one launch instead of a transposing copy and
    the diagonal's abs, cast, log and store."""
    B = V.shape[0]
    k = V.shape[1]
    D = V.shape[2]
    n = cuda.grid(1)
    while n < B * k * D:
        b = n // (k * D)
        r = n - b * k * D
        q = r // D
        j = r - q * D
        V[b, q, j] = Q[b, j, q]
        if j == 0:
            a = abs(float(R[b, q, q]))
            if a > 0.0:
                LOGS[row, b, q] = math.log(a)
            elif a == 0.0:
                LOGS[row, b, q] = -math.inf
            else:
                LOGS[row, b, q] = math.nan
        n += cuda.gridsize(1)


@cuda.jit
def graded_finish(Q, R, DP, DMAX, DMIN, V, RT, DNEW):  # type: ignore[no-untyped-def]
    """After the batched QR of the pivoted tangent blocks of a graded product U diag(e^d) T
    (analysis/singular.cpp's udt_update): V (B, kk, m) = Q^T per sample (Q: (B, m, kk));
    RT (B, kk, r) float64 = |diag R|^{-1} R scaled by e^{d_p(j) - d_p(i)} (upper trapezoidal,
    a zero row for a zero direction); DNEW (B, kk) = log|R_ii| + d_p(i). DP (B, r): the
    scales d in the pivot order; DMAX, DMIN (B,): their extremes. The core's formulas and
    branches: one exp per entry where the scales span less than 600 e-folds, else logs."""
    B = RT.shape[0]
    kk = RT.shape[1]
    r = RT.shape[2]
    m = V.shape[2]
    n = cuda.grid(1)
    while n < B * kk * r:
        b = n // (kk * r)
        rem = n - b * kk * r
        i = rem // r
        j = rem - i * r
        rii = float(R[b, i, i])
        dpi = DP[b, i]
        val = 0.0
        if rii == 0.0 or dpi == -math.inf:
            if j == i:
                DNEW[b, i] = -math.inf
        elif j >= i:
            lr = math.log(abs(rii))
            if j == i:
                DNEW[b, i] = lr + dpi
            rij = float(R[b, i, j])
            dmax = DMAX[b]
            if DMIN[b] != -math.inf and dmax - DMIN[b] < 600.0:
                inv_r = 1.0 / abs(rii)
                inv_e = 1.0 / math.exp(dpi - dmax)
                val = (rij * inv_r) * (math.exp(DP[b, j] - dmax) * inv_e)
            else:
                dpj = DP[b, j]
                if rij != 0.0 and dpj != -math.inf:
                    delta = dpj - dpi
                    if abs(delta) < 600.0:
                        val = rij / abs(rii) * math.exp(delta)
                    else:  # scale factors beyond double range: combine in logs
                        val = math.copysign(math.exp(math.log(abs(rij)) - lr + delta), rij)
        RT[b, i, j] = val
        n += cuda.gridsize(1)
    n = cuda.grid(1)
    while n < B * kk * m:
        b = n // (kk * m)
        rem = n - b * kk * m
        q = rem // m
        j = rem - q * m
        V[b, q, j] = Q[b, j, q]
        n += cuda.gridsize(1)


_STATS: dict[int, Any] = {}


def stats_kernel(threads: int) -> Any:
    """The statistics of one dense layer in one launch, for blocks of ``threads`` threads."""
    got = _STATS.get(threads)
    if got is not None:
        return got

    @cuda.jit
    def layer_stats(Z, H, S, STATS, i):  # type: ignore[no-untyped-def]
        """STATS[i] = (sum h, sum h^2, sum S, number of non-finite z), summed in float64."""
        sa = cuda.shared.array(threads, np.float64)
        sb = cuda.shared.array(threads, np.float64)
        tid = cuda.threadIdx.x
        M = Z.shape[1]
        n = Z.shape[0] * M
        s1 = 0.0
        s2 = 0.0
        sat = 0.0
        bad = 0.0
        k = tid
        while k < n:
            b = k // M
            j = k - b * M
            h = float(H[b, j])
            s1 += h
            s2 += h * h
            sat += float(S[b, j])
            z = float(Z[b, j])
            if not abs(z) < math.inf:  # NaN or Inf
                bad += 1.0
            k += cuda.blockDim.x
        s1, s2 = block_sum2(sa, sb, s1, s2)
        sat, bad = block_sum2(sa, sb, sat, bad)
        if tid == 0:
            STATS[i, 0] = s1
            STATS[i, 1] = s2
            STATS[i, 2] = sat
            STATS[i, 3] = bad

    _STATS[threads] = layer_stats
    return layer_stats


class BackwardScale:
    """The bookkeeping of one backward sweep on the device: the scale, the logs, the kernel.

    Parameters
    ----------
    ar : Arrays
        The seam.
    dt : dtype
        The vectors' dtype.
    n_logs : int
        Entries of the logs (steps + 1).
    parts : {1, 2}
        Vectors measured jointly (2: an LSTM's dL/dh and dL/dc).
    rescale : bool
    hi, target : int
        The rescaling window's upper bound and target (``_logscale.rescale_window``).
    cseq : device array of shape (T, B, N) or None
        Per-step cotangents (dL/dh_t for t = 1..T at index t-1).

    Attributes
    ----------
    lg, lgc : device arrays of shape (n_logs,)
        log ||dL/dh_s|| (and ||dL/dc_s||, parts = 2) at their true scale.
    scale : device array of shape (1,), int64
        The vectors are stored as ``true * 2^scale[0]``.
    """

    def __init__(
        self,
        ar: Any,
        dt: np.dtype,
        n_logs: int,
        parts: int,
        rescale: bool,
        hi: int,
        target: int,
        cseq: Any = None,
    ) -> None:
        xp = ar.xp
        rl = LIMITS[np.dtype(dt)]
        self.ar = ar
        self.kernel = fused_kernel(ar.block_threads)
        self.lg = xp.zeros(n_logs, np.float64)
        self.lgc = xp.zeros(n_logs, np.float64) if parts == 2 else None
        self.scale = scale = xp.zeros(1, np.int64)
        if cseq is not None:
            # each step's cotangent's exponent, once for the sequence
            cmax = xp.abs(cseq).astype(np.float64).max(axis=(1, 2))
            cexp = xp.where(cmax > 0, xp.frexp(cmax)[1].astype(np.int64) - 1, 0)
        else:
            cseq = xp.zeros((1, 1, 1), dt)
            cexp = xp.zeros(1, np.int64)
        kv = ar.kernel_view
        # Unused arguments get small arrays of their own, never an alias of a used one: the
        # simulator copies each argument in and out, so an alias would undo the writes.
        self._spare = kv(xp.zeros((1, 1), dt))
        spare_log = xp.zeros(1, np.float64)
        lgc = kv(self.lgc) if parts == 2 else kv(spare_log)
        self._fixed = (kv(cseq), kv(cexp), kv(scale), kv(self.lg), lgc)
        self._tail = (parts, int(rescale), rl.lo, hi, target, rl.emax)

    def step(self, s: int, g: Any, dc: Any = None, add: Any = None, inject: bool = False) -> None:
        """Measure (and rescale) the kernel views ``g`` (and ``dc``) at step ``s``: one launch.

        ``add``: a kernel view added to ``g`` first; ``inject``: add the per-step cotangent
        ``cseq[s-1]`` (after the shift that keeps it in range)."""
        cseq, cexp, scale, lg, lgc = self._fixed
        parts, rescale, lo, hi, target, emax = self._tail
        self.ar.launch_block(
            self.kernel,
            g,
            self._spare if dc is None else dc,
            self._spare if add is None else add,
            cseq,
            cexp,
            scale,
            lg,
            lgc,
            s,
            parts,
            int(add is not None),
            int(inject),
            rescale,
            lo,
            hi,
            target,
            emax,
        )

"""Lyapunov exponents on the CUDA backend: the state and k tangent vectors of every sample stay
on the device; per step one GEMM for the state, one for the tangent block (both against W_hh)
and one kernel (the layer kind's ``step_tangent_kernel``: the state's step and the tangent map,
the coefficients in registers); every ``qr_every`` steps a batched Householder QR (cuSOLVER
through the array seam) and one kernel that stores Q back and ``log|R_jj|`` in float64
(``_fused.qr_finish``), accumulated as analysis/lyapunov.cpp does.

:class:`LyapunovEngine` has the interface of the core's engine (``feed``, ``result``), so the
analysis streams chunks to either the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vgcore.cuda._arrays import arrays
from vgcore.cuda._cell_weights import cell_weights
from vgcore.cuda._fused import qr_finish
from vgcore.cuda.layers import layer_module

__all__ = ["LyapunovEngine"]

#: QR blocks whose logs are kept on the device before one copy to the host.
_FLUSH_BLOCKS = 1024


class LyapunovEngine:
    """The tangent dynamics of a single-layer RNN / LSTM / GRU on the device.

    Parameters
    ----------
    kind : {"rnn", "lstm", "gru"}
    spec : dict
        ``model.to_spec(dtype)``.
    h0 : ndarray of shape (B, D)
        Initial states (LSTM: ``[h, c]`` side by side).
    v0 : ndarray of shape (B, k, D)
        Initial tangent vectors (re-orthonormalised first, as the core does).
    burn_in, qr_every, max_records : int
        As :func:`vgcore.lyapunov`.
    """

    def __init__(
        self,
        kind: str,
        spec: dict[str, Any],
        h0: np.ndarray,
        v0: np.ndarray,
        burn_in: int,
        qr_every: int,
        max_records: int,
    ) -> None:
        if "layers" in spec:
            raise ValueError(
                "lyapunov on the cuda backend takes single-layer recurrent models; use "
                "backend='cpu' for a stacked one"
            )
        self.ar = ar = arrays()
        xp = ar.xp
        self.mod = layer_module(kind)
        self.kind = kind
        dt = h0.dtype
        self.dt = dt
        w = cell_weights(ar, kind, spec, dt)
        self.GN, self.N = w.GN, w.N
        self.Wih, self.WhhT, self.bias, self.bhh = w.Wih, w.WhhT, w.bias, w.bhh
        self.extra = w.extra
        self.B, self.k, self.D = v0.shape
        self.burn_in, self.qr_every, self.max_records = burn_in, qr_every, max_records
        self.X = ar.asarray(h0, dt)
        self.V = ar.asarray(v0, dt)
        kv = ar.kernel_view
        # the products' outputs, and views of the state and tangents' h part (their inputs)
        self.U = xp.empty((self.B, self.GN), dt)
        self.UV = xp.empty((self.B, self.k, self.GN), dt)
        self.Xh = self.X[:, : self.N]
        self.Vh = self.V[:, :, : self.N]
        self.k_ = (kv(self.U), kv(self.bhh), kv(self.X), kv(self.UV), kv(self.V))
        self.steps = 0
        self.since_qr = 0
        self.acc_steps = 0
        # the accumulated blocks' log|R_jj| (device buffer, flushed to the host in batches)
        self.buf = xp.zeros((_FLUSH_BLOCKS, self.B, self.k), np.float64)
        self.kbuf = kv(self.buf)
        self.n_buf = 0
        self.host_logs: list[np.ndarray] = []
        self.block_meta: list[tuple[int, int]] = []  # (step at the QR, block length)
        with np.errstate(all="ignore"):
            self._qr(0)  # into the buffer's first row, overwritten by the first block
        if not bool(np.all(np.isfinite(ar.to_host(self.buf[0])))):
            raise ValueError(
                "the initial tangent vectors contain NaN/Inf or are linearly dependent"
            )

    def _qr(self, row: int) -> None:
        """Re-orthonormalise V per sample in place; log|R_jj| (float64) into ``buf[row]``."""
        ar = self.ar
        q, r = ar.xp.linalg.qr(ar.xp.swapaxes(self.V, 1, 2))  # (B, D, k), (B, k, k)
        kV = self.k_[4]
        ar.launch(qr_finish, self.V.size, ar.kernel_view(q), ar.kernel_view(r), kV, self.kbuf, row)

    def _qr_block(self, length: int) -> None:
        keep = self.steps - length >= self.burn_in
        # a block inside the burn-in is re-orthonormalised only: its logs, in the next free
        # row, are overwritten by the next kept block's
        self._qr(self.n_buf)
        if not keep:
            return
        self.acc_steps += length
        self.n_buf += 1
        self.block_meta.append((self.steps, length))
        if self.n_buf == _FLUSH_BLOCKS:
            self._flush()

    def _flush(self) -> None:
        if self.n_buf:
            self.host_logs.append(self.ar.to_host(self.buf[: self.n_buf]))
            self.n_buf = 0

    def feed(self, x: np.ndarray, total: int = 0, progress: Any = None) -> None:
        """Run the steps of ``x`` (T, B, input_size)."""
        ar, xp, mod = self.ar, self.ar.xp, self.mod
        T, B, I = x.shape
        N, GN = self.N, self.GN
        with np.errstate(all="ignore"):
            P = xp.matmul(ar.asarray(x, self.dt).reshape(T * B, I), self.Wih.T) + self.bias
            P = xp.ascontiguousarray(P.reshape(T, B, GN))
            kP = ar.kernel_view(P)
            kU, kbhh, kX, kUV, kV = self.k_
            head = (kP, kU, kbhh) if self.bhh is not None else (kP, kU)
            # per step three calls: the two products against W_hh (the tangents' use the state
            # before the step: J_t = dh_{t+1}/dh_t) and the layer's step-and-tangent kernel
            for t in range(T):
                xp.matmul(self.Xh, self.WhhT, out=self.U)
                xp.matmul(self.Vh, self.WhhT, out=self.UV)
                ar.launch(mod.step_tangent_kernel, B * N, *head, kX, kUV, kV, t, N, *self.extra)
                self.steps += 1
                self.since_qr += 1
                if self.since_qr == self.qr_every:
                    self.since_qr = 0
                    self._qr_block(self.qr_every)
                if progress is not None:
                    progress(self.steps, total)

    def result(self) -> dict[str, Any]:
        """The core engine's result keys: ``log_growth`` (B, k), ``steps``,
        ``accumulated_steps``, ``running`` and ``block_rates`` (n, B, k), ``record_steps``,
        ``state`` (B, D)."""
        with np.errstate(all="ignore"):
            if self.since_qr > 0:
                length, self.since_qr = self.since_qr, 0
                self._qr_block(length)
            self._flush()
        B, k = self.B, self.k
        logs = np.concatenate(self.host_logs) if self.host_logs else np.zeros((0, B, k))
        if not np.all(np.isfinite(logs) | np.isneginf(logs)):
            bad = int(np.nonzero(~(np.isfinite(logs) | np.isneginf(logs)).all(axis=(1, 2)))[0][0])
            raise FloatingPointError(
                f"the tangent vectors became NaN/Inf by step {self.block_meta[bad][0]}; with "
                "qr_every > 1 they may have over- or underflowed between re-orthonormalisations"
            )
        # The record book of analysis/lyapunov.cpp: every stride-th accumulated block, the
        # stride doubling (and the kept records halving) when max_records are full.
        stride = 1
        rec_steps: list[int] = []
        running: list[np.ndarray] = []
        rates: list[np.ndarray] = []
        logsum = np.zeros((B, k))
        acc = 0
        for i, (step, length) in enumerate(self.block_meta):
            logsum += logs[i]
            acc += length
            block = i + 1
            want = block % stride == 0
            if want and len(rec_steps) >= self.max_records:
                rec_steps, running, rates = rec_steps[1::2], running[1::2], rates[1::2]
                stride *= 2
                want = block % stride == 0
            if want:
                rec_steps.append(step)
                running.append(logsum / acc)
                rates.append(logs[i] / length)
        return {
            "log_growth": logsum,
            "steps": self.steps,
            "accumulated_steps": self.acc_steps,
            "running": np.array(running).reshape(-1, B, k),
            "block_rates": np.array(rates).reshape(-1, B, k),
            "record_steps": np.array(rec_steps, dtype=np.int64),
            "state": self.ar.to_host(self.X),
        }

"""Lyapunov exponents on the CUDA backend: the state and k tangent vectors of every sample stay
on the device; per step one GEMM for the state, one for the tangent block (both against W_hh),
one elementwise kernel each (the layer kind's ``step_kernel`` and ``tangent_kernel``); every
``qr_every`` steps a batched Householder QR (cuSOLVER through the array seam) and
``log|R_jj|`` accumulated in float64, as analysis/lyapunov.cpp does.

:class:`LyapunovEngine` has the interface of the core's engine (``feed``, ``result``), so the
analysis streams chunks to either the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vgcore.cuda._arrays import arrays
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
        self.Wih = ar.asarray(spec["weight_ih"], dt)
        Whh = ar.asarray(spec["weight_hh"], dt)
        self.GN, self.N = Whh.shape
        self.WhhT = xp.ascontiguousarray(Whh.T)
        gru = kind == "gru"
        bias = np.zeros(self.GN, dt)
        if spec.get("bias_ih") is not None:
            bias += spec["bias_ih"]
        if spec.get("bias_hh") is not None and not gru:
            bias += spec["bias_hh"]
        self.bias = ar.asarray(bias, dt)
        self.bhh = (
            ar.asarray(spec["bias_hh"], dt) if gru and spec.get("bias_hh") is not None else None
        )
        self.B, self.k, self.D = v0.shape
        self.burn_in, self.qr_every, self.max_records = burn_in, qr_every, max_records
        self.X = ar.asarray(h0, dt)
        self.V = ar.asarray(v0, dt)
        n_coef = {"rnn": 1, "lstm": 6, "gru": 4}[kind]
        self.extra: tuple[Any, ...] = ()
        if kind == "rnn":  # the nonlinearity's code and parameter
            from vgcore.cuda.flow import _act_of_spec

            self.extra = _act_of_spec(spec)[:2]
        self.COEF = xp.zeros((n_coef, self.B, self.N), dt)
        self.steps = 0
        self.since_qr = 0
        self.acc_steps = 0
        # the accumulated blocks' log|R_jj| (device buffer, flushed to the host in batches)
        self.buf = xp.zeros((_FLUSH_BLOCKS, self.B, self.k), np.float64)
        self.n_buf = 0
        self.host_logs: list[np.ndarray] = []
        self.block_meta: list[tuple[int, int]] = []  # (step at the QR, block length)
        with np.errstate(all="ignore"):
            _, logs = self._qr()
        if not bool(np.all(np.isfinite(ar.to_host(logs)))):
            raise ValueError(
                "the initial tangent vectors contain NaN/Inf or are linearly dependent"
            )

    def _qr(self) -> tuple[Any, Any]:
        """Re-orthonormalise V per sample; (R diagonal, log|R_jj| in float64)."""
        xp = self.ar.xp
        q, r = xp.linalg.qr(xp.swapaxes(self.V, 1, 2))  # (B, D, k), (B, k, k)
        self.V = xp.ascontiguousarray(xp.swapaxes(q, 1, 2))
        d = xp.abs(xp.diagonal(r, axis1=1, axis2=2)).astype(np.float64)
        return d, xp.log(d)

    def _qr_block(self, length: int) -> None:
        _, logs = self._qr()
        if self.steps - length < self.burn_in:
            return
        self.acc_steps += length
        self.buf[self.n_buf] = logs
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
        N, GN, k = self.N, self.GN, self.k
        with np.errstate(all="ignore"):
            P = xp.matmul(ar.asarray(x, self.dt).reshape(T * B, I), self.Wih.T) + self.bias
            P = xp.ascontiguousarray(P.reshape(T, B, GN))
            U = xp.empty((B, GN), self.dt)
            for t in range(T):
                xp.matmul(self.X[:, :N], self.WhhT, out=U)
                if self.bhh is not None:
                    U += self.bhh
                # the tangents' products use the state before the step: J_t = dh_{t+1}/dh_t
                UV = xp.ascontiguousarray(xp.matmul(self.V[:, :, :N], self.WhhT))
                ar.launch(mod.step_kernel, B * N, P, U, self.X, self.COEF, t, N, *self.extra)
                ar.launch(mod.tangent_kernel, B * k * N, self.COEF, UV, self.V, N)
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

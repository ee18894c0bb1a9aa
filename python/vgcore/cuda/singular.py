"""jacobian_singular_values on the CUDA backend: the graded decomposition of the Jacobian
product ``U diag(e^d) T`` of analysis/singular.cpp, every sample's on the device for the whole
depth or sequence.

Per step (a layer of a dense stack, a time step of a single-layer RNN / LSTM / GRU): the
products of the state and of the ``r`` tangent rows ``U`` against the weights and one kernel
of the layer kind (the step and the tangent map, ``step_tangent_kernel``); then the update of
the graded factors as the core's ``udt_update``: the rows pre-pivoted by their scaled norms
``log||u_j|| + d_j`` (a stable sort, descending), a batched Householder QR (cuSOLVER through
the array seam), one kernel storing ``Q`` back and the graded ``R`` (``_fused.graded_finish``)
and the float64 product ``T <- R_graded P^T T``. Finite checks are kept on the device and
read once at the end. The final one-sided graded Jacobi SVD runs on the host, through the
core's own routine, on the ``r x n0`` factor of each sample (as the CPU backend does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vgcore.cuda._arrays import Arrays, arrays
from vgcore.cuda._cell_weights import cell_weights
from vgcore.cuda._fused import graded_finish
from vgcore.cuda.layers import layer_module

__all__ = ["log_singular_values"]

#: Time steps whose input projections are made by one GEMM (bounds their memory).
_PROJECTION_STEPS = 256


class _Dense:
    """The layers of a dense stack as steps: state X (B, n), tangent rows (B, r, n)."""

    def __init__(self, ar: Arrays, spec: dict[str, Any], x: np.ndarray) -> None:
        from vgcore.cuda.analyses import unsupported_layers
        from vgcore.cuda.flow import _act

        why = unsupported_layers(spec)
        if why is not None:
            raise ValueError(why)
        self.ar = ar
        self.mod = layer_module("mlp")
        dt = x.dtype
        self.layers = spec["layers"]
        self.WT = [ar.xp.ascontiguousarray(ar.asarray(ly["weight"], dt).T) for ly in self.layers]
        # a missing bias as zeros: the kernel adds it
        self.bias = [
            ar.asarray(np.zeros(w.shape[1]) if ly["bias"] is None else ly["bias"], dt)
            for ly, w in zip(self.layers, self.WT)
        ]
        self.acts = [_act(ly["act"])[:2] for ly in self.layers]
        self.X = ar.asarray(x, dt)
        self.steps = len(self.layers)

    def advance(self, s: int, V: Any) -> Any:
        """Layer s: the state moves on, the tangent rows V (B, r, n_in) -> J V (B, r, n_out)."""
        ar, xp = self.ar, self.ar.xp
        ly = self.layers[s]
        B, r, n = V.shape
        Z = xp.matmul(self.X, self.WT[s])
        UV = xp.matmul(V.reshape(B * r, n), self.WT[s]).reshape(B, r, -1)  # one GEMM
        Xout = xp.empty_like(Z)
        kv = ar.kernel_view
        code, alpha_act = self.acts[s]
        residual = ly["block"] == "residual"
        ar.launch(
            self.mod.step_tangent_kernel,
            Z.size,
            kv(Z),
            kv(self.bias[s]),
            kv(self.X),
            kv(Xout),
            kv(UV),
            kv(V),
            code,
            alpha_act,
            residual,
            float(ly["alpha"]),
        )
        self.X = Xout
        return UV


class _Recurrent:
    """The time steps of a single-layer RNN / LSTM / GRU: state X (B, D) (an LSTM's [h, c]),
    tangent rows V (B, D, D) updated in place by the kind's Lyapunov step kernel."""

    def __init__(
        self, ar: Arrays, kind: str, spec: dict[str, Any], x: np.ndarray, h0: np.ndarray | None
    ) -> None:
        if "layers" in spec:
            raise ValueError(
                "jacobian_singular_values on the cuda backend takes single-layer recurrent "
                "models; use backend='cpu' for a stacked one"
            )
        xp = ar.xp
        self.ar = ar
        self.mod = layer_module(kind)
        dt = x.dtype
        self.x = x
        self.steps, B, _ = x.shape
        w = cell_weights(ar, kind, spec, dt)
        self.GN, self.N = w.GN, w.N
        self.Wih, self.WhhT, self.bias, self.bhh = w.Wih, w.WhhT, w.bias, w.bhh
        self.extra = w.extra
        self.D = 2 * self.N if kind == "lstm" else self.N
        self.X = ar.asarray(h0, dt) if h0 is not None else xp.zeros((B, self.D), dt)
        self.U = xp.empty((B, self.GN), dt)
        self.P: Any = None
        self.p0 = 0

    def advance(self, s: int, V: Any) -> Any:
        """Step s: the state moves on, the tangent rows V (B, D, D) become J V in place."""
        ar, xp = self.ar, self.ar.xp
        if self.P is None or s - self.p0 >= self.P.shape[0]:
            # the input projections of a block of steps in one GEMM
            T, B, I = self.x.shape
            n = min(_PROJECTION_STEPS, T - s)
            xs = ar.asarray(self.x[s : s + n], self.x.dtype).reshape(n * B, I)
            P = xp.matmul(xs, self.Wih.T) + self.bias
            self.P = xp.ascontiguousarray(P.reshape(n, B, self.GN))
            self.kP = ar.kernel_view(self.P)
            self.p0 = s
        N, B = self.N, self.X.shape[0]
        UV = xp.matmul(V[:, :, :N], self.WhhT)  # the tangents' use the state before the step
        xp.matmul(self.X[:, :N], self.WhhT, out=self.U)
        kv = ar.kernel_view
        head = (self.kP, kv(self.U)) + ((kv(self.bhh),) if self.bhh is not None else ())
        ar.launch(
            self.mod.step_tangent_kernel,
            B * N,
            *head,
            kv(self.X),
            kv(UV),
            kv(V),
            s - self.p0,
            N,
            *self.extra,
        )
        return V


def log_singular_values(
    kind: str,
    spec: dict[str, Any],
    x: np.ndarray,
    h0: np.ndarray | None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Log singular values of ``d h_S / d h_0`` per sample on the device.

    Parameters
    ----------
    kind : {"mlp", "rnn", "lstm", "gru"}
    spec : dict
        ``model.to_spec(dtype)``.
    x : ndarray
        (B, n0) for an MLP (``h_0 = x``), (T, B, I) time-major for a recurrent model; its
        dtype is the computation's.
    h0 : ndarray of shape (B, D) or None
        Initial states (zeros: None); recurrent models only.
    progress : callable(done, total), optional
        Called after every step.

    Returns
    -------
    dict
        ``log_singular_values`` (B, r), descending, and ``jacobi_sweeps`` (B,): the keys of
        the core's ``jacobian_log_singular_values``.
    """
    from vgcore._loader import _core

    ar = arrays()
    xp = ar.xp
    dt = x.dtype
    with np.errstate(all="ignore"):
        st: _Dense | _Recurrent = (
            _Dense(ar, spec, x) if kind == "mlp" else _Recurrent(ar, kind, spec, x, h0)
        )
        steps = st.steps
        if steps == 0:
            raise ValueError("x must have at least one time step, got T = 0")
        B, n0 = st.X.shape
        if B == 0:
            raise ValueError("the batch is empty")
        # U_0 = I, d = 0, T = I for every sample
        V = xp.repeat(xp.eye(n0, dtype=dt)[None], B, axis=0)  # copies: the kernels write
        Tm = xp.repeat(xp.eye(n0)[None], B, axis=0)
        d = xp.zeros((B, n0), np.float64)
        finite = xp.ones((steps, 2), bool)  # the state, the tangent rows
        for s in range(steps):
            C = st.advance(s, V)
            finite[s, 0] = xp.isfinite(st.X).all()
            finite[s, 1] = xp.isfinite(C).all()
            V, Tm, d = _udt_update(ar, C, Tm, d)
            if progress is not None:
                progress(s + 1, steps)
        ok = ar.to_host(finite)
        if not ok.all():
            s, part = (int(v) for v in np.argwhere(~ok)[0])
            what = "the state" if part == 0 else "the Jacobian product"
            raise FloatingPointError(f"{what} became NaN/Inf at step {s + 1}")
        Th, dh = ar.to_host(Tm), ar.to_host(d)
    r = dh.shape[1]
    logs = np.empty((B, r))
    sweeps = np.empty(B, np.int32)  # the core's type
    jacobi = _core.testing.graded_jacobi  # the core's routine (the CPU backend's last step)
    for b in range(B):
        lb, sweeps[b] = jacobi(Th[b], dh[b])
        logs[b] = np.sort(lb)[::-1]
    return {"log_singular_values": logs, "jacobi_sweeps": sweeps}


def _udt_update(ar: Arrays, C: Any, Tm: Any, d: Any) -> tuple[Any, Any, Any]:
    """New tangent rows, T and d from the stepped rows C (B, r, m) (udt_update of
    analysis/singular.cpp, every sample at once)."""
    xp = ar.xp
    B, r, m = C.shape
    kk = min(m, r)
    # pre-pivoting: descending scaled row norms log||c_j|| + d_j (a stable sort, as the core's)
    c64 = C.astype(np.float64)
    ln = 0.5 * xp.log((c64 * c64).sum(axis=2)) + d
    perm = xp.argsort(-ln, axis=1, kind="stable")
    A = xp.take_along_axis(C, perm[:, :, None], axis=1)
    q, R = xp.linalg.qr(xp.swapaxes(A, 1, 2))  # (B, m, kk), (B, kk, r)
    dp = xp.take_along_axis(d, perm, axis=1)
    Rt = xp.empty((B, kk, r), np.float64)
    dnew = xp.empty((B, kk), np.float64)
    V = C if kk == r else xp.empty((B, kk, m), C.dtype)  # C was copied into A: reusable
    dmax, dmin = dp.max(axis=1), dp.min(axis=1)
    kv = ar.kernel_view
    # a thread per 16 entries (grid-stride loops): plenty on a device, and few of the
    # simulator's Python threads
    n = max(1, B * kk * max(r, m) // 16)
    ar.launch(graded_finish, n, kv(q), kv(R), kv(dp), kv(dmax), kv(dmin), kv(V), kv(Rt), kv(dnew))
    # T <- R_graded (P^T T) in float64 (zeros below the diagonal add nothing: trmm's sums)
    Tm = xp.matmul(Rt, xp.take_along_axis(Tm, perm[:, :, None], axis=1))
    return V, Tm, dnew

"""gradient_flow on the CUDA backend: the BPTT sweep (recurrent models) and the depth sweep
(dense stacks) with the caches on the device, one elementwise kernel per layer and step, the
matrix products through the array seam, power-of-two rescaling of the backpropagated vectors.

Results are dictionaries with the keys of the core's ``stats`` (``log_grad_norms``,
``act_mean``, ...), so the analysis builds its result as for the CPU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vgcore.cuda._arrays import arrays
from vgcore.cuda._cell_weights import cell_weights
from vgcore.cuda._fused import BackwardScale, stats_kernel
from vgcore.cuda._logscale import rescale_window
from vgcore.cuda.layers import layer_module

__all__ = ["dense_flow", "recurrent_flow", "unsupported_options"]


def unsupported_options(**given: Any) -> None:
    """A ValueError naming the first option the CUDA backend does not have yet."""
    for name, value in given.items():
        if value:
            raise ValueError(
                f"{name} is not available on the cuda backend yet; use backend='cpu' for it"
            )


def _errstate() -> Any:
    # NumPy (the simulator's array library) warns where CuPy does not; the results are checked
    # for non-finite values afterwards, as the core's are.
    return np.errstate(all="ignore")


def _act(core_args: tuple[str, float, float]) -> tuple[int, float, float]:
    """(kernel code, parameter, max derivative) of an activation from its ``core_args()``."""
    from vgcore.cuda.layers._common import ACT_CODES

    name, a, _ = core_args
    if name not in ACT_CODES:
        raise ValueError(
            f"activation {name!r} has no CUDA kernel yet (the CUDA activations are "
            f"{', '.join(ACT_CODES)}); use backend='cpu'"
        )
    alpha = float(a) if name == "leaky_relu" else 0.0
    maxd = max(1.0, abs(alpha)) if name == "leaky_relu" else (0.25 if name == "sigmoid" else 1.0)
    return ACT_CODES[name], alpha, maxd


#: Steps between two reductions of the forward pass's statistics (a (K, B, G N) buffer).
_STATS_EVERY = 64


def _gain_log2_recurrent(kind: str, spec: dict[str, Any], T: int, h0: Any, c0: Any) -> float:
    """log2 of a bound on one backward step's gain (set_rescale_window of the core)."""
    w = np.asarray(spec["weight_hh"], dtype=np.float64)
    fro = float(np.sqrt(np.sum(w * w)))
    if not (fro > 0 and math.isfinite(fro)):
        return -math.inf
    N = w.shape[1]
    kcell = 1.0
    if kind == "lstm":
        cmax = 0.0 if c0 is None else float(np.max(np.abs(c0)))
        kcell = math.sqrt(2.0) * (1.5 + 0.25 * (cmax + T))
    elif kind == "gru":
        hmax = max(1.0, 0.0 if h0 is None else float(np.max(np.abs(h0))))
        bhh = spec.get("bias_hh")
        q = np.sum(np.abs(w[2 * N :]), axis=1) * hmax
        if bhh is not None:
            q = q + np.abs(np.asarray(bhh, np.float64)[2 * N :])
        kcell = 0.25 * float(np.max(q)) + 0.25 * (hmax + 1.0) + 1.0
    lg = math.log2(fro) + math.log2(kcell)
    if kind == "gru":
        lg = 1.0 + max(lg, 0.0)
    return lg


def recurrent_flow(
    kind: str,
    spec: dict[str, Any],
    x: np.ndarray,
    h0: np.ndarray | None,
    c0: np.ndarray | None,
    cot: np.ndarray | None,
    ccot: np.ndarray | None,
    saturation_threshold: float,
    act: Any,
    rescale: bool = True,
) -> dict[str, Any]:
    """BPTT through a single-layer RNN / LSTM / GRU on the device.

    Parameters
    ----------
    kind : {"rnn", "lstm", "gru"}
    spec : dict
        The model's ``to_spec(dtype)`` (PyTorch layouts; gates i, f, g, o / r, z, n).
    x : ndarray of shape (T, B, I)
    h0, c0 : ndarray of shape (B, N) or None (zeros)
    cot : ndarray of shape (B, N) or (T, B, N), or None
        dL/dh_T, or dL/dh_t at every step; None: the loss 0.5 ||h_T||^2.
    ccot : ndarray of shape (B, N) or None
        LSTM: dL/dc_T.
    saturation_threshold : float
    act : Activation or None
        The RNN's nonlinearity.
    rescale : bool

    Returns
    -------
    dict
        ``log_grad_norms`` (T+1,), ``log_cell_grad_norms`` (T+1,) or None, ``act_mean``,
        ``act_std``, ``saturation`` (T,), ``gate_saturation`` (T, G), ``preact_nonfinite``
        (T,), ``h_n`` (B, N), all NumPy.
    """
    ar = arrays()
    xp = ar.xp
    mod = layer_module(kind)
    dt = x.dtype
    T, B, I = x.shape
    w = cell_weights(ar, kind, spec, dt)
    Whh, WhhT, bhh_d, GN, N = w.Whh, w.WhhT, w.bhh, w.GN, w.N
    G = GN // N
    lstm, gru = kind == "lstm", kind == "gru"
    with _errstate():
        # (1) the input projections of every step in one GEMM (b_hh folded in, except GRU's)
        A = xp.matmul(ar.asarray(x, dt).reshape(T * B, I), w.Wih.T) + w.bias
        A = xp.ascontiguousarray(A.reshape(T, B, GN))
        H = xp.zeros((T + 1, B, N), dt)
        if h0 is not None:
            H[0] = ar.asarray(h0, dt)
        C: Any = xp.zeros((T + 1, B, N), dt) if lstm else None
        if lstm and c0 is not None:
            C[0] = ar.asarray(c0, dt)
        HN = xp.zeros((T, B, N), dt) if gru else None
        U = xp.zeros((B, GN), dt)
        # The per-step statistics are reduced every K steps, not every step: each array
        # operation costs ~10-40 us of host time on a device, more than a small step's work.
        K = min(T, _STATS_EVERY)
        SAT = xp.zeros((K, B, GN), dt)
        s1 = xp.zeros(T, np.float64)
        s2 = xp.zeros(T, np.float64)
        gsat = xp.zeros((T, G), np.float64)
        bad = xp.zeros(T, bool)
        thr = float(saturation_threshold)
        if kind == "rnn":
            code, alpha, maxd = _act(act.core_args())
            level = thr * maxd
        # per step two calls: the product against W_hh and the layer's kernel, on kernel views
        # made once (Numba would convert a CuPy argument at every launch)
        kv = ar.kernel_view
        kA, kU, kH, kC, kHN, kbhh = kv(A), kv(U), kv(H), kv(C), kv(HN), kv(bhh_d)
        ksat = [kv(SAT[k]) for k in range(K)]
        for t in range(T):
            xp.matmul(H[t], WhhT, out=U)
            sat = ksat[t % K]
            if lstm:
                ar.launch(mod.forward_kernel, B * N, kA, kU, kH, kC, sat, t, N, 0.25 * thr, thr)
            elif gru:
                ar.launch(
                    mod.forward_kernel, B * N, kA, kU, kbhh, kH, kHN, sat, t, N, 0.25 * thr, thr
                )
            else:
                ar.launch(mod.forward_kernel, B * N, kA, kU, kH, sat, t, N, code, alpha, level)
            if (t + 1) % K == 0 or t + 1 == T:  # steps t0 .. t, before the backward reuses A, HN
                t0 = t - t % K
                steps = slice(t0, t + 1)
                # non-finite pre-activations (a GRU's W_hh h + b_hh sits in A's r, z and in HN)
                nonfinite = ~xp.isfinite(A[steps]).all(axis=(1, 2))
                if HN is not None:
                    nonfinite |= ~xp.isfinite(HN[steps]).all(axis=(1, 2))
                bad[steps] = nonfinite
                h64 = H[t0 + 1 : t + 2].astype(np.float64)
                s1[steps] = h64.sum(axis=(1, 2))
                s2[steps] = (h64 * h64).sum(axis=(1, 2))
                gsat[steps] = SAT[: t + 1 - t0].reshape(-1, B, G, N).sum(axis=(1, 3))
        # (2) the backward sequence
        lg, lgc = _bptt(ar, mod, kind, spec, A, H, C, HN, Whh, T, B, N, h0, c0, cot, ccot, rescale)
        out = {
            "log_grad_norms": ar.to_host(lg),
            "log_cell_grad_norms": ar.to_host(lgc) if lstm else None,
            "h_n": ar.to_host(H[T]),
        }
        n_units = float(B * N)
        s1h, s2h, gs = ar.to_host(s1), ar.to_host(s2), ar.to_host(gsat)
    mean = s1h / n_units
    out["act_mean"] = mean
    out["act_std"] = np.sqrt(np.maximum(0.0, s2h / n_units - mean * mean))
    out["saturation"] = gs.sum(axis=1) / (n_units * G)
    out["gate_saturation"] = gs / n_units
    out["preact_nonfinite"] = ar.to_host(bad)
    return out


def _bptt(
    ar: Any,
    mod: Any,
    kind: str,
    spec: dict[str, Any],
    A: Any,
    H: Any,
    C: Any,
    HN: Any,
    Whh: Any,
    T: int,
    B: int,
    N: int,
    h0: Any,
    c0: Any,
    cot: np.ndarray | None,
    ccot: np.ndarray | None,
    rescale: bool,
) -> tuple[Any, Any]:
    """The backward pass: log ||dL/dh_t|| (and ||dL/dc_t||) for t = 0..T on the device.

    Per step three calls: the fused measure-and-rescale kernel (``_fused``: the per-step
    cotangent, GRU's direct term, the logs and the power-of-two scale, all on the device),
    the layer's backward kernel and the product against W_hh."""
    xp = ar.xp
    kv = ar.kernel_view
    dt = A.dtype
    lstm, gru = kind == "lstm", kind == "gru"
    hi, target = rescale_window(dt, _gain_log2_recurrent(kind, spec, T, h0, c0))
    per_step = cot is not None and cot.ndim == 3
    if per_step:
        g = xp.zeros((B, N), dt)
    else:
        g = xp.array(H[T]) if cot is None else ar.asarray(cot, dt)
    dc = None
    if lstm:
        dc = ar.asarray(ccot, dt) if ccot is not None else xp.zeros((B, N), dt)
    dp = xp.zeros((B, N), dt) if gru else None
    sc = BackwardScale(
        ar,
        dt,
        T + 1,
        2 if lstm else 1,
        rescale,
        hi,
        target,
        ar.asarray(cot, dt) if per_step else None,
    )
    # kernel views made once: Numba would convert a CuPy argument at every launch
    kA, kg, kdc, kdp = kv(A), kv(g), kv(dc), kv(dp)
    kC, kH, kHN = kv(C), kv(H), kv(HN)
    if kind == "rnn":
        code, alpha, _ = _act_of_spec(spec)
    for s in range(T, -1, -1):
        # GRU: g = dp + A[t] W_hh from the step before, summed in the kernel
        add = kdp if (gru and s < T) else None
        sc.step(s, kg, kdc, add, per_step and s > 0)
        if s == 0:
            break
        t = s - 1
        if lstm:
            ar.launch(mod.backward_kernel, B * N, kA, kC, kg, kdc, t, N)
        elif gru:
            ar.launch(mod.backward_kernel, B * N, kA, kH, kHN, kg, kdp, t, N)
        else:
            ar.launch(mod.backward_kernel, B * N, kA, kg, t, N, code, alpha)
        xp.matmul(A[t], Whh, out=g)
    return sc.lg, sc.lgc


def _act_of_spec(spec: dict[str, Any]) -> tuple[int, float, float]:
    return _act(("relu" if spec["kind"] == "rnn_relu" else "tanh", math.nan, math.nan))


def dense_flow(
    spec: dict[str, Any],
    x: np.ndarray,
    cot: np.ndarray | None,
    saturation_threshold: float,
    rescale: bool = True,
) -> dict[str, Any]:
    """The depth sweep of a dense stack (plain and residual blocks) on the device.

    Parameters
    ----------
    spec : dict
        ``MLP.to_spec(dtype)``.
    x : ndarray of shape (B, in)
    cot : ndarray of shape (B, out) or None
        dL/dy; None: the loss 0.5 ||y||^2.
    saturation_threshold : float
    rescale : bool

    Returns
    -------
    dict
        ``log_grad_norms`` (L+1,), ``act_mean``, ``act_std``, ``saturation``,
        ``preact_nonfinite`` (L,), ``y`` (B, out), all NumPy.
    """
    ar = arrays()
    xp = ar.xp
    mod = layer_module("mlp")
    dt = x.dtype
    layers = spec["layers"]
    for i, ly in enumerate(layers):
        if ly["block"] not in ("plain", "residual") or ly["norm"] != "none":
            what = ly["block"] if ly["block"] not in ("plain", "residual") else ly["norm"]
            raise ValueError(
                f"layer {i} is a {what!r} layer, which has no CUDA kernel yet (plain and "
                "residual blocks without normalisation do); use backend='cpu'"
            )
    L = len(layers)
    B = x.shape[0]
    with _errstate():
        W = [ar.asarray(ly["weight"], dt) for ly in layers]
        # a missing bias as zeros: the forward kernel adds it
        bs = [
            ar.asarray(np.zeros(w.shape[0]) if ly["bias"] is None else ly["bias"], dt)
            for ly, w in zip(layers, W)
        ]
        acts = [_act(ly["act"]) for ly in layers]
        res = [ly["block"] == "residual" for ly in layers]
        alphas = [float(ly["alpha"]) for ly in layers]
        kv = ar.kernel_view
        Hs = [ar.asarray(x, dt)]
        kHs = [kv(Hs[0])]
        Zs: list[Any] = []
        kZs: list[Any] = []
        # per layer: sum h, sum h^2, saturated units, non-finite pre-activations
        STATS = xp.zeros((L, 4), np.float64)
        kST = kv(STATS)
        stats = stats_kernel(ar.block_threads)
        thr = float(saturation_threshold)
        # per layer three calls: the product, the layer's kernel, the statistics' kernel
        for i in range(L):
            z = xp.matmul(Hs[-1], W[i].T)
            hout = xp.empty_like(z)
            S = xp.empty_like(z)
            kz, kh, kS = kv(z), kv(hout), kv(S)
            code, a, maxd = acts[i]
            ar.launch(
                mod.forward_kernel,
                z.size,
                kz,
                kv(bs[i]),
                kHs[-1],
                kh,
                kS,
                code,
                a,
                res[i],
                alphas[i],
                thr * maxd,
            )
            ar.launch_block(stats, kz, kh, kS, kST, i)
            Zs.append(z)
            kZs.append(kz)
            Hs.append(hout)
            kHs.append(kh)
        # backward
        gain = 0.0
        for i in range(L):
            w64 = np.asarray(layers[i]["weight"], np.float64)
            fro = float(np.sqrt(np.sum(w64 * w64)))
            gl = math.log2(fro * acts[i][2] * abs(alphas[i]) + (1.0 if res[i] else 0.0) + 1e-300)
            gain = max(gain, gl)
        hi, target = rescale_window(dt, gain)
        # per layer three calls: the fused measure-and-rescale kernel (a residual block's skip
        # term added there), the layer's backward kernel, the product against W
        kv = ar.kernel_view
        g = xp.array(Hs[L]) if cot is None else ar.asarray(cot, dt)
        kg = kv(g)
        sc = BackwardScale(ar, dt, L + 1, 1, rescale, hi, target)
        Gs = [xp.empty(h.shape, dt) for h in Hs[:L]]  # dL/dh of each layer's input
        add = None
        for s in range(L, -1, -1):
            sc.step(s, kg, None, add)
            if s == 0:
                break
            i = s - 1
            code, a, _ = acts[i]
            ar.launch(mod.backward_kernel, Zs[i].size, kZs[i], kg, code, a, res[i], alphas[i])
            xp.matmul(Zs[i], W[i], out=Gs[i])
            add = kg if res[i] else None  # the skip's g, summed in the next step's kernel
            kg = kv(Gs[i])
        lg = sc.lg
        n = np.array([B * ly["weight"].shape[0] for ly in layers], np.float64)
        st = ar.to_host(STATS)
        mean = st[:, 0] / n
        return {
            "log_grad_norms": ar.to_host(lg),
            "act_mean": mean,
            "act_std": np.sqrt(np.maximum(0.0, st[:, 1] / n - mean * mean)),
            "saturation": st[:, 2] / n,
            "preact_nonfinite": st[:, 3] > 0,
            "y": ar.to_host(Hs[L]),
        }

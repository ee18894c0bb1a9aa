#!/usr/bin/env python
"""Long fuzz run of vgcore's analyses, for maintainers (not part of the test suite).

Hypothesis draws small models of every kind (MLP with each activation, plain / residual /
highway blocks, no norm / LayerNorm / BatchNorm; RNN tanh and ReLU; LSTM; GRU), weights and
inputs scaled over many decades, both dtypes, and runs ``gradient_flow``, ``lyapunov``,
``jacobian_spectrum`` and ``jacobian_singular_values`` on them. The property: either the call
raises a clear exception (ValueError, TypeError, FloatingPointError or MemoryError, message
naming what is wrong), or

* no returned number is NaN or +inf unless documented (NaN spectral radius of a width-changing
  layer, NaN norm of an absent bias); ``-inf`` only in logs (an exactly-zero gradient or
  singular value) and Lyapunov exponents (a tangent block that collapses exactly);
* float64 results agree with a float64 PyTorch oracle written here independently of vgcore
  (custom autograd functions that take every activation's derivative from the pre-activation,
  so saturated units keep their tiny derivatives) to 1e-8 relative, where the oracle's values
  are in the float64 range and well conditioned. The conditioning is measured: the oracle is
  also run on weights and inputs perturbed by a few ulps, and ten times that spread is added
  to the tolerance (plus a rounding bound for products of Jacobians).

Usage::

    python tools/fuzz.py --examples 200 --seed 1 [--only gradient_flow] [--only lyapunov]
    python tools/fuzz.py --replay '{"analysis": ...}'     # one case, verbosely

``PYTHONPATH`` selects the vgcore build (e.g. build/dev-NAME/pkg). Each failure class is shrunk
by Hypothesis to a minimal case and printed with a reproducer. Hypothesis stops a run at the
first failure, so the search goes in rounds (``--rounds``, new seed each): classes already found
are counted and skipped, and a round that finds nothing new ends the analysis. The case being run is written
to ``--last-example`` first, so a crash (segfault, abort) or a hang (``--timeout`` seconds per
example) still leaves its reproducer behind. Exit status 1 when something failed.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import math
import os
import re
import sys
import time
import traceback
import warnings
from collections import Counter
from typing import Any, Callable

import numpy as np

ANALYSES = ("gradient_flow", "lyapunov", "jacobian_spectrum", "jacobian_singular_values")
KINDS = ("mlp", "rnn_tanh", "rnn_relu", "lstm", "gru")
ACTIVATIONS = (
    "tanh",
    "sigmoid",
    "relu",
    "leaky_relu",
    "identity",
    "elu",
    "selu",
    "softplus",
    "silu",
    "gelu",
    "gelu_tanh",
)
ALLOWED = (ValueError, TypeError, FloatingPointError, MemoryError)
# A clear message names the argument, layer, step or quantity concerned.
NAMING = re.compile(
    r"\b(x|h0|k|dtype|weights?|bias(es)?|weight_ih|weight_hh|bias_ih|bias_hh|layer|step|"
    r"sample|state|norm|block|alpha|gate|activation|batch|memory|input|output|gradient|"
    r"cotangent|qr_every|burn_in|method|model|float32|float64|overflow|underflow)\b"
    r"|\w+\[\d+\]",
    re.IGNORECASE,
)
RTOL = 1e-8  # float64 against the oracle, where well conditioned
RTOL_MATRIX_FREE = 1e-6  # arnoldi / power against the oracle (the tests' bound vs "exact")
LOG_RANGE = 690.0  # |log| beyond this: the float64 oracle is near under/overflow
EPS = np.finfo(np.float64).eps


class FuzzFailure(Exception):
    """Base of the per-class exceptions (one type per failure class, so Hypothesis shrinks
    and reports each class separately)."""


_CLASSES: dict[str, type[FuzzFailure]] = {}


def fail(key: str, detail: str, params: dict[str, Any]) -> None:
    cls = _CLASSES.get(key)
    if cls is None:
        cls = type(f"Fuzz_{len(_CLASSES)}", (FuzzFailure,), {"key": key})
        _CLASSES[key] = cls
    raise cls(f"{key}\n{detail}\nparams: {json.dumps(params, sort_keys=True)}")


# -- cases -------------------------------------------------------------------------------------


def build_case(p: dict[str, Any], perturb: float = 0.0) -> tuple[Any, np.ndarray]:
    """The model (float64) and input of a case; ``perturb`` scales a relative random
    perturbation of every weight and input (the oracle's conditioning estimate)."""
    import vgcore

    rng = np.random.default_rng(p["seed"])
    prng = np.random.default_rng(p["seed"] + 1)
    ws, xs, bs = 10.0 ** p["w_exp"], 10.0 ** p["x_exp"], 10.0 ** p["b_exp"]

    def arr(shape: tuple[int, ...], scale: float) -> np.ndarray:
        a = scale * rng.standard_normal(shape)
        if perturb:
            a = a * (1.0 + perturb * prng.standard_normal(shape))
        return a

    if p["kind"] == "mlp":
        sizes = p["sizes"]
        L = len(sizes) - 1
        W = [arr((sizes[i + 1], sizes[i]), ws / math.sqrt(sizes[i])) for i in range(L)]
        B = [arr((sizes[i + 1],), bs) if p["bias"] else None for i in range(L)]
        kw: dict[str, Any] = {"block": p["block"], "alpha": 10.0 ** p["alpha_exp"]}
        if p["block"] == "highway":
            kw["gate_weights"] = [arr((s, s), ws / math.sqrt(s)) for s in sizes[1:]]
            kw["gate_biases"] = [arr((s,), 1.0) for s in sizes[1:]]
        if p["norm"]:
            kw["norm"] = p["norm"]
            kw["norm_weights"] = [1.0 + arr((s,), 0.5) for s in sizes[1:]]
            kw["norm_biases"] = [arr((s,), 0.5) for s in sizes[1:]]
        model = vgcore.MLP(W, B, p["act"], **kw)
        shape: tuple[int, ...] = (p["batch"], sizes[0])
    else:
        cls = {"rnn_tanh": vgcore.RNN, "rnn_relu": vgcore.RNN}.get(p["kind"])
        cls = cls or {"lstm": vgcore.LSTM, "gru": vgcore.GRU}[p["kind"]]
        n, i = p["hidden"], p["input"]
        g = cls.gates
        args = [
            arr((g * n, i), ws / math.sqrt(i)),
            arr((g * n, n), ws / math.sqrt(n)),
            arr((g * n,), bs) if p["bias"] else None,
            arr((g * n,), bs) if p["bias"] else None,
        ]
        extra = {"nonlinearity": p["kind"][4:]} if p["kind"].startswith("rnn") else {}
        model = cls(*args, **extra)
        shape = (p["steps"], p["batch"], i)
    x = np.zeros(shape) if p["x_zero"] else arr(shape, xs)
    return model, x


def run_vgcore(p: dict[str, Any], model: Any, x: np.ndarray) -> Any:
    import vgcore

    dt = np.dtype(p["dtype"])
    a = p["analysis"]
    if a == "gradient_flow":
        return vgcore.gradient_flow(model, x, dtype=dt, param_grads=p["param_grads"])
    if a == "lyapunov":
        return vgcore.lyapunov(
            model, x, k=p["k"], qr_every=p["qr_every"], burn_in=p["burn_in"], dtype=dt
        )
    if a == "jacobian_spectrum":
        return vgcore.jacobian_spectrum(model, x, method=p["method"], dtype=dt)
    return vgcore.jacobian_singular_values(model, x, dtype=dt)


def strategies() -> Callable[[str], Any]:
    from hypothesis import strategies as st

    def exps(lo: float, hi: float, wlo: float, whi: float) -> Any:
        # Mostly moderate decades; sometimes far out. Shrinks towards 10^0.
        return st.one_of(st.floats(lo, hi), st.floats(wlo, whi))

    @st.composite
    def cases(draw: Any, analysis: str) -> dict[str, Any]:
        kind = draw(st.sampled_from(KINDS))
        p: dict[str, Any] = {
            "analysis": analysis,
            "kind": kind,
            "dtype": draw(st.sampled_from(["float64", "float32"])),
            "seed": draw(st.integers(0, 2**32 - 2)),
            "w_exp": draw(exps(-3, 3, -40, 40)),
            "x_exp": draw(exps(-8, 8, -300, 300)),
            "bias": draw(st.booleans()),
            "b_exp": draw(exps(-3, 3, -40, 40)),
            "batch": draw(st.integers(1, 3)),
            "x_zero": draw(st.integers(0, 9)) == 9,
        }
        if kind == "mlp":
            depth = draw(st.integers(1, 5))
            blocks = ["plain", "residual", "highway"]
            p["block"] = draw(st.sampled_from(blocks))
            square = analysis == "lyapunov" or p["block"] != "plain" or draw(st.booleans())
            if square:
                p["sizes"] = [draw(st.integers(1, 6))] * (depth + 1)
            else:
                p["sizes"] = [draw(st.integers(1, 6)) for _ in range(depth + 1)]
            p["act"] = draw(st.sampled_from(ACTIVATIONS))
            p["alpha_exp"] = draw(st.floats(-2, 1))
            norms = [None, "layernorm"] + (["batchnorm"] if analysis == "gradient_flow" else [])
            p["norm"] = draw(st.sampled_from(norms))
            steps, dim = depth, p["sizes"][0]
        else:
            p["hidden"], p["input"] = draw(st.integers(1, 5)), draw(st.integers(1, 4))
            p["steps"] = draw(st.integers(1, 8))
            steps = p["steps"]
            dim = p["hidden"] * (2 if kind == "lstm" else 1)
        if analysis == "gradient_flow":
            p["param_grads"] = draw(st.booleans())
        elif analysis == "lyapunov":
            p["k"] = draw(st.integers(1, dim))
            p["qr_every"] = draw(st.integers(1, 3))
            p["burn_in"] = p["qr_every"] * draw(st.integers(0, (steps - 1) // p["qr_every"]))
        elif analysis == "jacobian_spectrum":
            p["method"] = draw(st.sampled_from(["exact", "arnoldi", "power"]))
        return p

    return cases


# -- the float64 oracle --------------------------------------------------------------------------


def _torch() -> Any:
    import torch

    torch.set_num_threads(1)
    return torch


def _activation_fns(torch: Any) -> dict[str, Callable[[Any], Any]]:
    """Each activation as an autograd function whose forward and derivative are evaluated
    from the pre-activation without cancellation (torch's own tanh/sigmoid backward use the
    output, 1 - y^2, which is 0 far into saturation; its gelu uses 1 + erf)."""
    s = torch.sigmoid

    def make(fwd: Callable[[Any], Any], der: Callable[[Any], Any]) -> Callable[[Any], Any]:
        class F(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, z: Any) -> Any:
                ctx.save_for_backward(z)
                return fwd(z)

            @staticmethod
            def backward(ctx: Any, g: Any) -> Any:
                (z,) = ctx.saved_tensors
                return g * der(z)

        return F.apply

    def zero_where(t: Any, v: Any) -> Any:  # 0 * inf = 0 where the factor t vanished
        return torch.where(t == 0, torch.zeros_like(v), v)

    c = math.sqrt(2 / math.pi)
    scale, alpha = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717

    def gelu_tanh_der(z: Any) -> Any:
        u = c * (z + 0.044715 * z**3)
        t = s(2 * u) * s(-2 * u)
        return s(2 * u) + zero_where(t, 2 * t * z * c * (1 + 3 * 0.044715 * z**2))

    one = torch.ones_like
    return {
        "identity": lambda z: z,
        "relu": make(lambda z: torch.clamp(z, min=0), lambda z: (z > 0).to(z.dtype)),
        "leaky_relu": make(
            lambda z: torch.where(z > 0, z, 0.01 * z), lambda z: torch.where(z > 0, one(z), 0.01)
        ),
        "elu": make(
            lambda z: torch.where(z > 0, z, torch.expm1(z)),
            lambda z: torch.where(z > 0, one(z), torch.exp(z)),
        ),
        "selu": make(
            lambda z: scale * torch.where(z > 0, z, alpha * torch.expm1(z)),
            lambda z: scale * torch.where(z > 0, one(z), alpha * torch.exp(z)),
        ),
        "softplus": make(
            lambda z: torch.where(z > 20, z, torch.log1p(torch.exp(torch.clamp(z, max=20)))),
            lambda z: torch.where(z > 20, one(z), s(z)),
        ),
        "sigmoid": make(s, lambda z: s(z) * s(-z)),
        "tanh": make(torch.tanh, lambda z: 4 * s(2 * z) * s(-2 * z)),
        "silu": make(lambda z: z * s(z), lambda z: s(z) * (1 + zero_where(s(-z), z * s(-z)))),
        "gelu": make(
            lambda z: z * torch.special.ndtr(z),
            lambda z: torch.special.ndtr(z) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi),
        ),
        "gelu_tanh": make(lambda z: z * s(2 * c * (z + 0.044715 * z**3)), gelu_tanh_der),
    }


def _step_fns(torch: Any, model: Any, x: np.ndarray) -> tuple[list[Callable[[Any], Any]], Any]:
    """One function per layer / time step mapping the (B, D) state to the next (``rows``:
    the samples the state rows belong to), and the initial state; written from the model
    definitions, independently of vgcore."""
    F = torch.nn.functional
    acts = _activation_fns(torch)
    sig = acts["sigmoid"]

    def t(a: Any) -> Any:
        return None if a is None else torch.tensor(np.asarray(a, np.float64))

    def layer(i: int) -> Callable[..., Any]:
        W, b = t(model.weights[i]), t(model.biases[i])
        gam, bet = t(model.norm_weights[i]), t(model.norm_biases[i])
        GW, Gb = t(model.gate_weights[i]), t(model.gate_biases[i])
        act = acts[model.activations[i].name]
        block, al, norm, eps = model.blocks[i], model.alphas[i], model.norms[i], model.eps

        def f(h: Any, rows: Any = None) -> Any:
            z = F.linear(h, W, b)
            if norm in ("layernorm", "batchnorm"):
                # By hand, not F.layer_norm / F.batch_norm: their fused backward leaves
                # rounding noise where the exact derivative is 0 (one unit or one sample).
                dim = -1 if norm == "layernorm" else 0
                if norm == "batchnorm" and z.shape[0] < 2:
                    raise ValueError("BatchNorm statistics need two samples")
                d = z - z.mean(dim, keepdim=True)
                z = d / torch.sqrt((d * d).mean(dim, keepdim=True) + eps)
                z = z * (1.0 if gam is None else gam) + (0.0 if bet is None else bet)
            a = act(z)
            if block == "residual":
                return h + al * a
            if block == "highway":
                v = F.linear(h, GW, Gb)
                return sig(v) * a + sig(-v) * h
            return a

        return f

    if model.kind == "mlp":
        fns = [layer(i) for i in range(model.depth)]
        return fns, torch.tensor(np.asarray(x, np.float64))

    N = model.hidden_size
    wih, whh = t(model.weight_ih), t(model.weight_hh)
    zero = torch.zeros(whh.shape[0], dtype=torch.float64)
    bih = zero if model.bias_ih is None else t(model.bias_ih)
    bhh = zero if model.bias_hh is None else t(model.bias_hh)
    tanh = acts["tanh"]
    xt = torch.tensor(np.asarray(x, np.float64))

    def cell(xs: Any, s: Any) -> Any:
        gx, gh = F.linear(xs, wih, bih), F.linear(s[..., :N], whh, bhh)
        if model.kind == "rnn":
            return (tanh if model.nonlinearity == "tanh" else acts["relu"])(gx + gh)
        if model.kind == "lstm":
            i, f, g, o = (gx + gh).chunk(4, -1)
            c = sig(f) * s[..., N:] + sig(i) * tanh(g)
            return torch.cat([sig(o) * tanh(c), c], dim=-1)
        xr, xz, xn = gx.chunk(3, -1)
        hr, hz, hn = gh.chunk(3, -1)
        r = sig(xr + hr)
        n = tanh(xn + r * hn)
        return sig(-(xz + hz)) * n + sig(xz + hz) * s

    fns = [lambda s, rows=slice(None), xs=xt[i]: cell(xs[rows], s) for i in range(xt.shape[0])]
    return fns, torch.zeros(xt.shape[1], model.state_size, dtype=torch.float64)


def _log_norm(g: np.ndarray) -> float:
    """log ||g||_F without under/overflow in the sum of squares."""
    top = float(np.max(np.abs(g))) if g.size else 0.0
    if not np.isfinite(top):
        return math.nan
    return math.log(top) + math.log(np.linalg.norm(g / top)) if top > 0 else -math.inf


def _states(torch: Any, fns: list[Any], s0: Any) -> list[Any] | None:
    states = [s0]
    with torch.no_grad():
        for f in fns:
            s = f(states[-1])
            if not bool(torch.isfinite(s).all()):
                return None  # the forward pass leaves float64: no oracle
            states.append(s)
    return states


def _jacobians(torch: Any, fns: list[Any], states: list[Any]) -> list[np.ndarray]:
    """J[t] of shape (B, D_out, D_in), one autograd Jacobian per step and sample."""
    from torch.autograd.functional import jacobian

    out = []
    for f, s in zip(fns, states):
        out.append(
            np.stack(
                [
                    jacobian(lambda v, f=f, b=b: f(v[None], slice(b, b + 1))[0], s[b]).numpy()
                    for b in range(len(s))
                ]
            )
        )
    return out


def oracle(p: dict[str, Any], perturb: float = 0.0) -> dict[str, np.ndarray] | None:
    """Reference values of the case's analysis (float64), or None outside the float64 range.
    Each entry: an array whose NaN entries are not compared; "<name>_bound" entries give an
    extra absolute tolerance (rounding of Jacobian products)."""
    torch = _torch()
    model, x = build_case(p, perturb)
    fns, s0 = _step_fns(torch, model, x)
    try:
        states = _states(torch, fns, s0)
    except (RuntimeError, ValueError):  # torch's BatchNorm refuses one value per channel
        return None
    if states is None:
        return None
    a = p["analysis"]
    lstm = model.kind == "lstm"
    if a == "gradient_flow":
        N = model.hidden_size if lstm else None
        g = states[-1].clone()
        if lstm:
            g[..., N:] = 0
        grads = [g]
        for f, s in zip(fns[::-1], states[-2::-1]):
            s = s.clone().requires_grad_()
            (g,) = torch.autograd.grad(f(s), s, grads[0])
            grads.insert(0, g)
        G = [g.numpy() for g in grads]
        out = {"log_grad_norms": np.array([_log_norm(g[..., :N] if lstm else g) for g in G])}
        if lstm:
            out["log_cell_grad_norms"] = np.array([_log_norm(g[..., N:]) for g in G])
        return out
    Js = _jacobians(torch, fns, states[:-1])
    if a == "jacobian_spectrum":
        rho = np.array(
            [
                [max(abs(np.linalg.eigvals(J))) if J.shape[0] == J.shape[1] else np.nan for J in Jt]
                for Jt in Js
            ]
        )
        sig = np.array([[np.linalg.norm(J, 2) for J in Jt] for Jt in Js])
        # Backward-stable eigen/singular solvers: errors of order eps ||J||.
        return {
            "spectral_radius": rho,
            "sigma_max": sig,
            "spectral_radius_bound": 1e3 * EPS * sig,
            "sigma_max_bound": 1e3 * EPS * sig,
        }
    B, D = Js[0].shape[0], Js[0].shape[2]
    if a == "jacobian_singular_values":
        logs, bounds = [], []
        for b in range(B):
            M, scale = Js[0][b], np.linalg.norm(Js[0][b], 2)
            for J in Js[1:]:
                M, scale = J[b] @ M, scale * np.linalg.norm(J[b], 2)
            if not np.isfinite(scale) or not np.isfinite(M).all():
                return None
            sv = np.linalg.svd(M, compute_uv=False)
            with np.errstate(divide="ignore"):
                lg = np.log(sv)
            # The float64 product is accurate to ~eps * prod ||J_t|| in norm: singular values
            # far below that bound are not resolved; leave them out.
            err = 10 * len(Js) * max(M.shape) * EPS * scale
            lg[sv < 1e4 * err] = np.nan
            logs.append(lg)
            with np.errstate(over="ignore"):
                bounds.append(err / np.maximum(sv, 1e-300))
        # vgcore returns r = the smallest width along the way (the product's rank bound)
        r = min([len(v) for v in logs] + [min(J.shape[1:]) for J in Js])
        return {
            "log_singular_values": np.array([v[:r] for v in logs]),
            "log_singular_values_bound": np.array([v[:r] for v in bounds]),
        }
    # lyapunov: the textbook QR method from vgcore's documented starting vectors
    k, q, burn = p["k"], p["qr_every"], p["burn_in"]
    v0 = np.random.default_rng(0).standard_normal((B, k, D))
    ex, bd = np.zeros((B, k)), np.zeros((B, k))
    for b in range(B):
        Q = np.linalg.qr(v0[b].T)[0]
        acc, bound, scale = np.zeros(k), np.zeros(k), 1.0
        for t, J in enumerate(Js):
            Q, scale = J[b] @ Q, scale * np.linalg.norm(J[b], 2)
            if (t + 1) % q == 0 or t + 1 == len(Js):
                Q, R = np.linalg.qr(Q)
                d = np.abs(np.diag(R))
                if t >= burn:
                    with np.errstate(divide="ignore"):
                        acc += np.log(d)
                    with np.errstate(over="ignore"):
                        bound += 10 * q * D * EPS * scale / np.maximum(d, 1e-300)
                scale = 1.0
        order = np.argsort(-acc, kind="stable")
        ex[b], bd[b] = (acc / (len(Js) - burn))[order], (bound / (len(Js) - burn))[order]
    return {"exponents": ex, "exponents_bound": bd}


# -- the property ------------------------------------------------------------------------------

STATS: Counter[str] = Counter()
MESSAGES: Counter[str] = Counter()  # exceptions raised, numbers masked
WARNINGS: Counter[str] = Counter()  # warnings emitted by vgcore calls


def _numeric_fields(res: Any) -> list[tuple[str, np.ndarray]]:
    out = []
    for name, v in vars(res).items():
        if name == "model":
            continue
        if isinstance(v, dict):
            out += [
                (f"{name}[{k!r}]", np.asarray(w, dtype=float))
                for k, w in v.items()
                if isinstance(w, (float, np.floating, np.ndarray))
            ]
        elif isinstance(v, np.ndarray) and v.dtype.kind == "f":
            out.append((name, v))
        elif isinstance(v, (float, np.floating)):
            out.append((name, np.asarray(v, dtype=float)))
    return out


def _documented_nan(p: dict[str, Any], res: Any, name: str, v: np.ndarray) -> np.ndarray:
    """Mask of the NaNs the documentation promises."""
    ok = np.zeros(v.shape, dtype=bool)
    if "radius" in name and p["kind"] == "mlp":  # a width-changing layer has no radius
        sizes = p["sizes"]
        rows = np.array([sizes[s] != sizes[s + 1] for s in np.asarray(res.steps)])
        ok |= rows.reshape(-1, *([1] * (v.ndim - 1)))
    if name in ("radius_errors", "sigma_errors", "radius_condition"):
        # NaN where the value came from LAPACK ("exact", or a matrix-free value recomputed
        # exactly: the fallback masks).
        exact = np.full(v.shape, getattr(res, "method", "") == "exact")
        which = "sigma" if name.startswith("sigma") else "radius"
        fallback = getattr(res, f"{which}_fallback", None)
        if fallback is not None:
            exact |= np.asarray(fallback, dtype=bool)
        ok |= exact
    m = re.match(r"log_param_grad_norms\['(\w+)'\]", name)
    if m:  # NaN for a parameter the layer (or cell) does not have
        kind = m.group(1)
        absent = (
            (kind.startswith("bias") and not p["bias"])
            or (kind.startswith("gate_") and p.get("block") != "highway")
            or (kind.startswith("norm_") and not p.get("norm"))
        )
        ok[...] = absent
    return ok


def check(p: dict[str, Any], verbose: bool = False) -> None:
    """Run one case; raise a FuzzFailure subclass when the property fails."""
    model, x = build_case(p)
    a, tag = p["analysis"], f"{p['kind']}, {p['dtype']}"
    faulthandler_arm()
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                res = run_vgcore(p, model, x)
            finally:
                for w in caught:
                    where = f"{os.path.basename(w.filename)}:{w.lineno}"
                    text = re.sub(r"\b\d+\b", "#", str(w.message))[:150]
                    WARNINGS[f"{a}: {w.category.__name__} at {where}: {text}"] += 1
    except ALLOWED as exc:
        msg = str(exc)
        STATS[f"{a}: raised {type(exc).__name__}"] += 1
        masked = re.sub(r"[-+.0-9e]{2,}|\b\d\b", "#", msg)
        MESSAGES[f"{a}: {type(exc).__name__}: {masked}"] += 1
        if verbose:
            print(f"raised {type(exc).__name__}: {msg}")
        if not NAMING.search(msg):
            fail(f"{a} [{tag}]: {type(exc).__name__} without a clear message", repr(msg), p)
        return
    except Exception as exc:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
        fail(f"{a} [{tag}]: unexpected {type(exc).__name__}", tb, p)
    finally:
        faulthandler_disarm()
        STATS[f"{a}: seconds in vgcore"] += time.perf_counter() - t0  # type: ignore[assignment]
    STATS[f"{a}: returned"] += 1
    fields = _numeric_fields(res)
    for name, v in fields:
        nan = np.isnan(v) & ~_documented_nan(p, res, name, v)
        if nan.any():
            fail(f"{a} [{tag}]: NaN in {name}", f"{name} = {v!r}", p)
        if np.isposinf(v).any():
            fail(f"{a} [{tag}]: +inf in {name}", f"{name} = {v!r}", p)
        neg_ok = name.startswith("log_") or name in ("exponents", "running", "block_rates")
        if np.isneginf(v).any() and not neg_ok:
            fail(f"{a} [{tag}]: -inf in {name}", f"{name} = {v!r}", p)
    if p["dtype"] != "float64":
        return
    ref = oracle(p)
    if ref is None:
        STATS[f"{a}: oracle out of range"] += 1
        return
    ref2 = oracle(p, perturb=4 * EPS)
    rtol = RTOL_MATRIX_FREE if p.get("method") in ("arnoldi", "power") else RTOL
    for name, want in ref.items():
        if name.endswith("_bound"):
            continue
        got = np.asarray(getattr(res, name), dtype=float)
        if got.shape != want.shape:
            fail(f"{a} [{tag}]: shape of {name}", f"{got.shape} vs the oracle's {want.shape}", p)
        bound = ref.get(f"{name}_bound", np.zeros(want.shape))
        with np.errstate(invalid="ignore"):  # inf - inf: not comparable
            spread = np.abs(want - ref2[name]) if ref2 is not None else np.full(want.shape, np.nan)
        logs = name.startswith("log_") or name == "exponents"
        big = LOG_RANGE if logs else math.exp(LOG_RANGE)
        small = -LOG_RANGE if logs else math.exp(-LOG_RANGE)
        comparable = np.isfinite(want) & np.isfinite(spread) & (want < big) & (want > small)
        if name in ("spectral_radius", "sigma_max"):  # values the result vouches for
            comparable &= np.asarray(getattr(res, "reliable", res.converged), dtype=bool)
        tol = rtol * np.maximum(1.0 if logs else 0.0, np.abs(want)) + 10 * spread + bound
        # Not resolved by the oracle: a log uncertain by more than 1, a value by half itself.
        comparable &= tol < (1.0 if logs else 0.5 * np.abs(want))
        with np.errstate(invalid="ignore"):
            bad = comparable & ~(np.abs(got - want) <= tol)
            # An exact zero in the oracle (a switched-off ReLU, a zero input) must stay
            # (below) zero; a finite log above the range would be a made-up gradient.
            zero = (want == (-np.inf if logs else 0.0)) & (got > small)
            if name == "exponents":
                # Exact rank loss (ReLU units off): any value more than ~30 (log 1/eps) below
                # the top exponent per accumulated step is rounding noise, as good as -inf.
                n = max(int(res.accumulated_steps), 1)
                zero &= (got - got[:, :1]) * n > -30
        STATS[f"{a}: values compared"] += int(comparable.sum())
        if verbose:
            print(f"{name}:\n  vgcore {got!r}\n  oracle {want!r}\n  tol    {tol!r}")
        if bad.any():
            i = tuple(np.argwhere(bad)[0])
            fail(
                f"{a} [{tag}]: {name} disagrees with the float64 oracle",
                f"at {i}: vgcore {got[i]!r}, oracle {want[i]!r} (tolerance {tol[i]:.3g})\n"
                f"vgcore {got!r}\noracle {want!r}",
                p,
            )
        if zero.any():
            i = tuple(np.argwhere(zero)[0])
            fail(
                f"{a} [{tag}]: {name} nonzero where the oracle's is exactly 0",
                f"at {i}: vgcore {got[i]!r}\nvgcore {got!r}\noracle {want!r}",
                p,
            )


# -- crash / hang guard ------------------------------------------------------------------------

_GUARD: dict[str, Any] = {"timeout": 0.0, "file": None}


def faulthandler_arm() -> None:
    if _GUARD["timeout"] > 0:
        faulthandler.dump_traceback_later(_GUARD["timeout"], exit=True)


def faulthandler_disarm() -> None:
    if _GUARD["timeout"] > 0:
        faulthandler.cancel_dump_traceback_later()


def _record(p: dict[str, Any]) -> None:
    if _GUARD["file"]:
        with open(_GUARD["file"], "w") as fh:
            fh.write(json.dumps(p, sort_keys=True) + "\n")


def reproducer(p: dict[str, Any]) -> str:
    js = json.dumps(p, sort_keys=True)
    return (
        f"python tools/fuzz.py --replay '{js}'\n"
        "  # or in Python, from the repository root:\n"
        f"  import sys; sys.path.insert(0, 'tools'); import fuzz; p = {p!r}\n"
        "  model, x = fuzz.build_case(p); print(fuzz.run_vgcore(p, model, x))"
    )


# -- driver ------------------------------------------------------------------------------------


_KNOWN: set[str] = set()


def run(analysis: str, examples: int, seed: int) -> list[tuple[str, str, dict[str, Any] | None]]:
    """One Hypothesis round over one analysis: it stops at the first new failure class (and
    shrinks it, with any other class met on the way); failures of classes already known are
    counted and skipped. Returns the new classes (key, message, minimal params)."""
    from hypothesis import HealthCheck, Verbosity, given, settings
    from hypothesis import seed as hseed

    cases = strategies()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=True,
        verbosity=Verbosity.quiet,
        print_blob=False,
    )
    @hseed(seed)
    @given(cases(analysis))
    def prop(p: dict[str, Any]) -> None:
        _record(p)
        try:
            check(p)
        except FuzzFailure as exc:
            key = getattr(exc, "key", "")
            if key in _KNOWN:
                STATS[f"{analysis}: examples of known failure classes"] += 1
                return
            raise

    try:
        prop()
    except Exception as exc:  # one failure or a group of distinct ones
        found = []
        for e in getattr(exc, "exceptions", [exc]):
            msg = str(e)
            m = re.search(r"^params: (.*)$", msg, re.MULTILINE)
            params = json.loads(m.group(1)) if m else None
            key = getattr(e, "key", f"{analysis}: {type(e).__name__}: {msg[:200]}")
            _KNOWN.add(key)
            found.append((key, msg, params))
        return found
    return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=100, help="examples per round and analysis")
    ap.add_argument(
        "--rounds", type=int, default=6, help="rounds per analysis (each stops at a new class)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", action="append", choices=ANALYSES, help="repeatable")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per vgcore call")
    ap.add_argument("--last-example", default="fuzz-last-example.json")
    ap.add_argument("--replay", help="one case (JSON), run verbosely")
    args = ap.parse_args(argv)
    faulthandler.enable()
    _GUARD["timeout"] = args.timeout
    import vgcore

    print(f"vgcore {vgcore.__version__} from {os.path.dirname(vgcore.__file__)}")
    if args.replay:
        p = json.loads(args.replay)
        try:
            check(p, verbose=True)
        except FuzzFailure as exc:
            print(f"FAIL: {exc}")
            return 1
        print("ok")
        return 0
    _GUARD["file"] = args.last_example
    failures = []
    t0 = time.perf_counter()
    for analysis in args.only or ANALYSES:
        t1 = time.perf_counter()
        found: list[tuple[str, str, dict[str, Any] | None]] = []
        for r in range(args.rounds):  # a new round after each new class, until none is new
            new = run(analysis, args.examples, args.seed + 1000 * r)
            found += new
            if not new:
                break
        failures += found
        print(
            f"{analysis}: {r + 1} rounds of up to {args.examples} examples, "
            f"{len(found)} failure classes "
            f"({time.perf_counter() - t1:.0f} s)",
            flush=True,
        )
    if args.last_example and os.path.exists(args.last_example):
        os.remove(args.last_example)  # no crash: nothing to keep
    print(f"\n== statistics ({time.perf_counter() - t0:.0f} s)")
    for k in sorted(STATS):
        v = STATS[k]
        print(f"  {k}: {v:.1f}" if isinstance(v, float) else f"  {k}: {v}")
    print("\n== exceptions raised (the most frequent messages)")
    for k, v in MESSAGES.most_common(12):
        print(f"  {k[:200]} ({v}x)")
    print("\n== warnings emitted (the most frequent)")
    for k, v in WARNINGS.most_common(12):
        print(f"  {k[:220]} ({v}x)")
    print(f"\n== {len(failures)} failure classes")
    for key, msg, params in failures:
        print(f"\n-- {key}")
        body = msg.split("\n", 1)[1] if "\n" in msg else msg
        body = re.sub(r"^params: .*$", "", body, flags=re.MULTILINE).strip()
        print("   " + body.replace("\n", "\n   ")[:3000])
        if params is not None:
            print("   reproducer: " + reproducer(params).replace("\n", "\n   "))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

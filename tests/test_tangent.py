"""JVPs and VJPs of one step of every cell and dense block against torch.func (float64).

These are the kernels every Jacobian analysis is built on (Lyapunov, spectra, singular values):
``J V`` for a block of tangent rows and ``J^T W`` for a block of cotangent rows, per sample,
with the forward step itself.
"""

from __future__ import annotations

import numpy as np
import pytest

import vgcore
from oracles import torch_cell_fn, torch_layer_fn, torch_step_maps
from tolerances import assert_rel_close
from vgcore._loader import _core
from vgcore.activations import ACTIVATIONS
from vgcore.analysis._spectra import core_model

B, K = 3, 4


def _core_step_maps(model, step, x_t, states, tangents, cotangents, dt):
    c = lambda a: np.ascontiguousarray(a, dt)  # noqa: E731
    out = _core.testing.tangent_map(
        core_model(model, np.dtype(dt)),
        step,
        None if x_t is None else c(x_t),
        c(states),
        c(tangents),
        c(cotangents),
    )
    return out["state"], out["jvp"], out["vjp"]


RTOL_MAP = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 2e-5}


def _check(torch, model, step, x_t, states, f, dtype):
    rng = np.random.default_rng(7)
    din = states.shape[1]
    dout = f(torch.from_numpy(states[:1])).shape[1]
    V = rng.standard_normal((states.shape[0], K, din))
    W = rng.standard_normal((states.shape[0], K, dout))
    ref = torch_step_maps(torch, lambda s: f(s[None])[0], states, V, W)
    got = _core_step_maps(model, step, x_t, states, V, W, dtype)
    rtol = RTOL_MAP[np.dtype(dtype)]
    for name, g, r in zip(("state", "J V", "J^T W"), got, ref):
        assert_rel_close(g, r, rtol, name)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_recurrent_cell_jvp_vjp_match_torch_func(torch, cell, bias, dtype):
    N, I = 7, 3
    if cell.startswith("rnn"):
        m = vgcore.RNN.from_sizes(I, N, nonlinearity=cell[4:], bias=bias, seed=1)
        assert m.cell == cell  # from_sizes once dropped the nonlinearity (built tanh)
    else:
        m = {"lstm": vgcore.LSTM, "gru": vgcore.GRU}[cell].from_sizes(I, N, bias=bias, seed=1)
    # Weights exactly representable in float32, so both dtypes see the same model.
    m = m.astype(dtype).astype(np.float64)
    rng = np.random.default_rng(0)
    states = rng.standard_normal((B, m.state_size)).astype(dtype).astype(np.float64)
    x_t = rng.standard_normal((B, I)).astype(dtype).astype(np.float64)
    cellf = torch_cell_fn(torch, m)
    xt = torch.from_numpy(x_t)
    # vmap/jvp run per sample; bind that sample's input.
    for b in range(B):
        f = lambda s, b=b: cellf(s, xt[b : b + 1])  # noqa: E731
        _check(torch, m.astype(dtype), 0, x_t[b : b + 1], states[b : b + 1], f, dtype)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_dense_layer_jvp_vjp_every_activation(torch, act, dtype):
    m = vgcore.MLP.from_sizes([6, 6, 5], act, seed=2, dtype=np.float64)
    m = m.astype(dtype).astype(np.float64)
    rng = np.random.default_rng(1)
    states = rng.standard_normal((B, 6)).astype(dtype).astype(np.float64)
    _check(torch, m.astype(dtype), 0, None, states, torch_layer_fn(torch, m, 0), dtype)
    h1 = (
        torch_layer_fn(torch, m, 0)(torch.from_numpy(states))
        .numpy()
        .astype(dtype)
        .astype(np.float64)
    )
    # Layer 1 changes the width (6 -> 5): J is rectangular.
    _check(torch, m.astype(dtype), 1, None, h1, torch_layer_fn(torch, m, 1), dtype)


@pytest.mark.parametrize(
    "kw",
    [
        {"residual": 0.5},
        {"highway": True},
        {"norm": "layernorm"},
        {"residual": True, "norm": "layernorm"},
        {"bias": False},
    ],
    ids=["residual", "highway", "layernorm", "residual+layernorm", "nobias"],
)
def test_dense_blocks_jvp_vjp_match_torch_func(torch, kw, dtype):
    m = vgcore.MLP.from_sizes([5, 5, 5], "tanh", seed=3, dtype=np.float64, **kw)
    if kw.get("norm") == "layernorm":  # non-trivial affine parameters
        rng = np.random.default_rng(4)
        m.norm_weights = [rng.uniform(0.5, 1.5, 5) for _ in range(2)]
        m.norm_biases = [rng.normal(0, 0.3, 5) for _ in range(2)]
    m = m.astype(dtype).astype(np.float64)
    states = np.random.default_rng(5).standard_normal((B, 5)).astype(dtype).astype(np.float64)
    for layer in range(m.depth):
        _check(torch, m.astype(dtype), layer, None, states, torch_layer_fn(torch, m, layer), dtype)

"""Stacks of state-space blocks (vgcore.SSMStack, the core's SsmStackOp) against the reference
torch module (vgcore.reference.ssm.SSMStack): one step, its JVP and VJP, the output stream,
and the Lyapunov spectrum's closed form for LTI stacks. Every analysis on the stacks runs in
the conformance battery (tests/oracles/kinds.py)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import vgcore  # noqa: E402
from vgcore import _core  # noqa: E402
from vgcore.models import SSM, SelectiveSSM, SSMStack  # noqa: E402

D_MODEL = 3


def _layer(kind: str, seed: int) -> SSM | SelectiveSSM:
    if kind == "lti":
        return SSM.from_sizes(D_MODEL, 3, init="s4d_lin", dt_min=0.05, dt_max=0.5, seed=seed)
    if kind == "real":
        return SSM.from_sizes(D_MODEL, 2, init="s4d_real", dt_min=0.05, dt_max=0.5, seed=seed)
    return SelectiveSSM.from_sizes(D_MODEL, 2, expand=2, d_conv=3, dt_rank=2, seed=seed)


def _stack(kinds: list[str], norm: bool, residual: bool, dtype: object = np.float64) -> SSMStack:
    rng = np.random.default_rng(11)
    L = len(kinds)
    return SSMStack(
        [_layer(k, i) for i, k in enumerate(kinds)],
        norm=norm,
        residual=residual,
        norm_weights=[1 + 0.3 * rng.standard_normal(D_MODEL) for _ in range(L)],
        norm_biases=[0.2 * rng.standard_normal(D_MODEL) for _ in range(L)],
        dtype=dtype,
    )


CONFIGS = [
    (kinds, norm, residual)
    for kinds in (["lti", "real"], ["sel", "sel"], ["sel", "lti", "sel"])
    for norm in (False, True)
    for residual in (False, True)
]


@pytest.mark.parametrize(("kinds", "norm", "residual"), CONFIGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_step_jvp_vjp_and_output_equal_the_reference(kinds, norm, residual, dtype):
    """float64: 1e-12 relative to the largest entry; float32: 1e-4 (the map's entries are
    O(1), a few dozen float32 roundings deep)."""
    model = _stack(kinds, norm, residual, dtype)
    ref = model.astype(np.float64).to_torch()
    for p in ref.parameters():
        p.requires_grad_(False)
    rng = np.random.default_rng(1)
    B, k, D = 2, 3, model.state_dim
    s = rng.standard_normal((B, D))
    x = rng.standard_normal((B, D_MODEL))
    V = rng.standard_normal((B, k, D))
    W = rng.standard_normal((B, k, D))
    spec = model.to_spec()
    out = _core.testing.tangent_map(
        spec, 0, x.astype(dtype), s.astype(dtype), V.astype(dtype), W.astype(dtype)
    )
    state, y = _core.testing.ssm_output(spec, x.astype(dtype), s.astype(dtype))
    st, xt = torch.tensor(s), torch.tensor(x)
    s2, y2 = ref.step_output(st, xt)
    J = torch.func.vmap(torch.func.jacrev(lambda a, b: ref.step(a[None], b[None])[0]))(st, xt)
    J = J.numpy()
    tol = 1e-12 if dtype == np.float64 else 1e-4

    def close(a: np.ndarray, b: np.ndarray) -> None:
        assert np.abs(a - b).max() <= tol * max(np.abs(b).max(), 1.0)

    close(out["state"], s2.numpy())
    close(state, s2.numpy())
    close(y, y2.numpy())
    close(out["jvp"], np.einsum("bij,bkj->bki", J, V))
    close(out["vjp"], np.einsum("bij,bki->bkj", J, W))


def test_gradient_flow_of_a_deep_stack_equals_autograd():
    """BPTT norms of a 4-block Mamba-style stack over 40 steps: every dL/ds_t against float64
    autograd through the reference module (1e-10 relative)."""
    model = SSMStack.from_sizes(D_MODEL, 2, 4, expand=2, d_conv=3, seed=2)
    ref = model.to_torch()
    for p in ref.parameters():
        p.requires_grad_(False)
    x = np.random.default_rng(3).standard_normal((40, 2, D_MODEL))
    flow = vgcore.gradient_flow(model, x, keep_grads=True)
    states = [ref.initial_state(2).requires_grad_()]
    for t in range(x.shape[0]):
        s = ref.step(states[-1], torch.tensor(x[t]))
        s.retain_grad()
        states.append(s)
    (0.5 * (states[-1] ** 2).sum()).backward()
    want = np.array([np.linalg.norm(s.grad.numpy()) for s in states])
    got = np.exp(flow.log_grad_norms)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    for t in (0, 1, 20):  # the kept gradients: dL/ds_t, t = 0..T
        np.testing.assert_allclose(flow.grads[t], states[t].grad.numpy(), rtol=1e-10)


def test_lti_stack_exponents_are_the_blocks_log_abs_a():
    """The step Jacobian of an LTI stack is block lower triangular with the constant diag(a_l)
    on its diagonal: its Lyapunov exponents are the union of every block's log|a| (twice for a
    complex mode), whatever the coupling through the outputs. Their sum is log|det| per step,
    exact at any T (1e-10); each exponent converges as 1/T through the coupling's transient
    (4e-3 after 4000 steps; without coupling, a lone layer's are exact)."""
    layers = [
        SSM.from_sizes(D_MODEL, 2, init="s4d_lin", dt_min=0.05, dt_max=0.5, seed=1),
        SSM.from_sizes(D_MODEL, 3, init="s4d_real", dt_min=0.05, dt_max=0.5, seed=2),
    ]
    model = SSMStack(layers)
    want = np.sort(
        np.concatenate(
            [np.repeat(np.log(np.abs(layers[0].transition())), 2), np.log(layers[1].transition())]
        )
    )[::-1]
    x = np.random.default_rng(0).standard_normal((4000, 1, D_MODEL))
    got = vgcore.lyapunov(model, x, k=model.state_dim).exponents.mean(axis=0)
    np.testing.assert_allclose(got.sum(), want.sum(), rtol=1e-10)
    np.testing.assert_allclose(got, want, atol=4e-3)


def test_torch_round_trip_and_block_slices():
    model = _stack(["sel", "lti"], True, True)
    back = SSMStack.from_torch(model.to_torch())
    for name, arr in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], arr)
    assert [s.stop - s.start for s in model.block_slices()] == [ly.state_dim for ly in model.layers]
    assert model.astype(np.float32).to_spec()["blocks"][1]["layer"]["a"].dtype == np.float32


def test_bad_stacks_are_refused_by_name():
    lti = _layer("lti", 0)
    with pytest.raises(TypeError, match=r"layers\[1\] must be an SSM or SelectiveSSM, got MLP"):
        SSMStack([lti, vgcore.MLP.from_sizes([3, 3], "tanh")])
    with pytest.raises(ValueError, match=r"layers\[1\] has input_size 4, layers\[0\] has 3"):
        SSMStack([lti, SSM.from_sizes(4, 2)])
    with pytest.raises(ValueError, match="norm_weights must be a sequence of 1 arrays"):
        SSMStack([lti], norm_weights=[np.ones(3), np.ones(3)])
    with pytest.raises(ValueError, match="layers must hold at least one layer"):
        SSMStack([])
    with pytest.raises(ValueError, match="layer must be one of"):
        SSMStack.from_sizes(3, 2, 2, layer="lstm")

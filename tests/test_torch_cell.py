"""TorchCell: Lyapunov exponents and gradient flow of recurrent steps written in PyTorch.

Oracles: vgcore's native RNN / LSTM / GRU on the same weights (1e-8 in float64), dense
per-step Jacobians from ``torch.func.jacrev`` with a numpy QR loop, closed forms, and
PyTorch autograd through the unrolled sequence in float64 (1e-10 relative).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import vgcore  # noqa: E402
from vgcore.torchmodel.cell import TorchCell, gradient_flow, lyapunov  # noqa: E402

F64 = torch.float64
nn = torch.nn


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _seed(s: int = 0) -> None:
    torch.manual_seed(s)


def _log_norm_of(g):
    """log ||g||, scaled by the largest entry so that the squares cannot underflow."""
    g = g.double().reshape(-1)
    top = float(g.abs().max())
    return -np.inf if top == 0 else math.log(top) + math.log(float((g / top).norm()))


def _native_twin(cell: nn.Module) -> nn.Module:
    """The nn.RNN / nn.LSTM / nn.GRU that shares a stock cell's weights."""
    kw = {}
    if isinstance(cell, nn.RNNCell):
        cls = nn.RNN
        kw["nonlinearity"] = cell.nonlinearity
    else:
        cls = nn.LSTM if isinstance(cell, nn.LSTMCell) else nn.GRU
    twin = cls(cell.input_size, cell.hidden_size, **kw).to(F64)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(twin, name + "_l0").copy_(getattr(cell, name))
    return twin


def _native_model(cell: nn.Module):
    twin = _native_twin(cell)
    cls = {nn.RNN: vgcore.RNN, nn.LSTM: vgcore.LSTM, nn.GRU: vgcore.GRU}[type(twin)]
    return cls.from_torch(twin)


def _assert_same_spectrum(got, ref, rtol: float = 1e-8, atol: float = 1e-10) -> None:
    np.testing.assert_allclose(got.exponents, ref.exponents, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got.running, ref.running, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got.block_rates, ref.block_rates, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(got.record_steps, ref.record_steps)
    np.testing.assert_allclose(got.final_state, ref.final_state, rtol=1e-12, atol=1e-14)
    assert (got.steps, got.accumulated_steps) == (ref.steps, ref.accumulated_steps)
    assert got.k == ref.k and got.state_dim == ref.state_dim


# -- Lyapunov exponents: stock cells against the native models ------------------------------


@pytest.mark.parametrize(
    ("kind", "burn_in", "qr_every", "k"),
    [
        ("gru", 0, 1, 4),
        ("gru", 7, 3, 6),
        ("rnn", 5, 1, 3),
        ("rnn_relu", 0, 2, 4),
        ("lstm", 4, 1, 5),
    ],
)
def test_stock_cell_lyapunov_equals_native(kind, burn_in, qr_every, k):
    _seed(1)
    I, N, B, T = 3, 6, 2, 60
    if kind == "gru":
        cell = nn.GRUCell(I, N)
    elif kind == "lstm":
        cell = nn.LSTMCell(I, N)
    else:
        cell = nn.RNNCell(I, N, nonlinearity="relu" if kind == "rnn_relu" else "tanh")
    cell = cell.to(F64)
    with torch.no_grad():
        if kind == "rnn_relu":  # every unit active: no exactly collapsing direction, whose
            cell.bias_ih.add_(3.0)  # arbitrary replacement column would differ by QR code
        else:
            cell.weight_hh.mul_(3.0)  # a more interesting (partly expanding) spectrum
    x = torch.randn(T, B, I, dtype=F64)
    h0 = torch.randn(B, N, dtype=F64) * 0.3
    init = (h0, 0.5 * h0) if kind == "lstm" else h0
    ref = vgcore.lyapunov(
        _native_model(cell),
        x.numpy(),
        k=k,
        h0=tuple(t.numpy() for t in init) if kind == "lstm" else h0.numpy(),
        burn_in=burn_in,
        qr_every=qr_every,
        seed=3,
    )
    got = lyapunov(TorchCell(cell), x, k=k, h0=init, burn_in=burn_in, qr_every=qr_every, seed=3)
    _assert_same_spectrum(got, ref)
    assert got.kind == "torch_cell" and got.axis == "step" and got.dtype == np.float64
    assert isinstance(got.model, TorchCell) and "torch_cell" in repr(got)


def test_records_compact_like_native():
    """A stream longer than max_records keeps evenly spaced records, as the native engine."""
    _seed(2)
    cell = nn.GRUCell(2, 4).to(F64)
    x = torch.randn(53, 1, 2, dtype=F64)
    ref = vgcore.lyapunov(_native_model(cell), x.numpy(), k=2, max_records=5, burn_in=2)
    got = lyapunov(cell, x, k=2, max_records=5, burn_in=2)  # a module is wrapped
    _assert_same_spectrum(got, ref)
    assert got.record_steps.size <= 5


def test_streamed_chunks_equal_whole_sequence():
    _seed(3)
    cell = nn.LSTMCell(3, 4).to(F64)
    x = torch.randn(40, 2, 3, dtype=F64)
    whole = lyapunov(cell, x, k=3, qr_every=2, burn_in=3)
    seen = []
    chunks = (x[i : i + 7].numpy() for i in range(0, 40, 7))  # numpy chunks, odd sizes
    streamed = lyapunov(
        cell, chunks, k=3, qr_every=2, burn_in=3, progress=lambda d, t: seen.append((d, t))
    )
    np.testing.assert_allclose(streamed.exponents, whole.exponents, rtol=1e-13)
    np.testing.assert_allclose(streamed.running, whole.running, rtol=1e-13)
    assert seen[-1] == (40, 40)


# torch.compile's own deprecation notices (inductor, torch.jit internals) on torch 2.13
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_compiled_steps_give_the_eager_result():
    """compile=True runs the same arithmetic through torch.compile (one compilation)."""
    _seed(17)
    cell = nn.LSTMCell(2, 3).to(F64)
    x = torch.randn(30, 2, 2, dtype=F64)
    eager = lyapunov(cell, x, k=4, qr_every=2, burn_in=3)
    comp = lyapunov(cell, x, k=4, qr_every=2, burn_in=3, compile=True)
    np.testing.assert_allclose(comp.exponents, eager.exponents, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(comp.running, eager.running, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(comp.record_steps, eager.record_steps)


# -- the traced tangent step ----------------------------------------------------------------


def _graphs(owner):
    """What the trace cache holds for a step object: graphs, or False (eager)."""
    from vgcore.torchmodel.cell import _TRACED

    return list(_TRACED.get(owner, {}).values())


@pytest.mark.parametrize("kind", ["gru", "lstm", "rnn", "peephole"])
def test_traced_tangent_step_is_used_and_equals_the_eager_step(kind):
    _seed(21)
    I, N, B, T = 3, 5, 2, 40
    if kind == "peephole":
        m = PeepholeLSTM(I, N).to(F64)
        cell = TorchCell(m, state_sizes=[N, N])
    else:
        m = {"gru": nn.GRUCell, "lstm": nn.LSTMCell, "rnn": nn.RNNCell}[kind](I, N).to(F64)
        cell = TorchCell(m)
    x = torch.randn(T, B, I, dtype=F64)
    traced = lyapunov(cell, x, k=4, qr_every=2, burn_in=3)
    gms = _graphs(m)
    assert len(gms) == 1 and isinstance(gms[0], torch.fx.GraphModule)
    eager = lyapunov(cell, x, k=4, qr_every=2, burn_in=3, trace=False)
    np.testing.assert_allclose(traced.exponents, eager.exponents, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(traced.running, eager.running, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(traced.final_state, eager.final_state, rtol=1e-13, atol=1e-15)
    # the parameters are inputs of the graph: a change of the weights is seen
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1.5)
    again = lyapunov(cell, x, k=4, qr_every=2, burn_in=3)
    assert len(_graphs(m)) == 1  # the same graph, no second trace
    ref = lyapunov(cell, x, k=4, qr_every=2, burn_in=3, trace=False)
    np.testing.assert_allclose(again.exponents, ref.exponents, rtol=1e-12, atol=1e-14)
    assert np.max(np.abs(again.exponents - traced.exponents)) > 1e-3


class Branchy(nn.Module):
    """Control flow on the values of the input (fine for jvp, whose tangents are the
    state's): cannot be traced on fake tensors."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.lin = nn.Linear(2 * n, n)

    def forward(self, h, x):
        z = self.lin(torch.cat([h, x], dim=1))
        return torch.tanh(z) if float(x.sum()) > 0 else torch.sigmoid(z)


def test_untraceable_step_falls_back_to_the_eager_step():
    _seed(22)
    m = Branchy(3).to(F64)
    x = torch.randn(20, 2, 3, dtype=F64).abs()  # the tanh branch at every step
    got = lyapunov(TorchCell(m, state_sizes=3), x, k=3)
    assert _graphs(m) == [False]
    ref = lyapunov(TorchCell(m, state_sizes=3), x, k=3, trace=False)
    np.testing.assert_array_equal(got.exponents, ref.exponents)

    def twin(h, xt):  # the same step without the branch (traced)
        return torch.tanh(m.lin(torch.cat([h, xt], dim=1)))

    tw = lyapunov(TorchCell(twin, state_sizes=3, dtype=F64), x, k=3)
    assert isinstance(_graphs(twin)[0], torch.fx.GraphModule)
    np.testing.assert_allclose(got.exponents, tw.exponents, rtol=1e-12, atol=1e-14)


def test_a_stale_graph_is_caught_on_the_first_step():
    """A plain callable's tensors are constants of its graph: rebinding one changes the
    step, which the first-step check notices (the call then runs eagerly)."""
    _seed(23)
    N = 4
    held = {"W": torch.randn(N, N, dtype=F64)}

    def step(h, x):
        return torch.tanh(h @ held["W"].T + x)

    cell = TorchCell(step, state_sizes=N, dtype=F64)
    x = torch.randn(15, 2, N, dtype=F64)
    first = lyapunov(cell, x, k=2)
    assert isinstance(_graphs(step)[0], torch.fx.GraphModule)
    held["W"] = 2.0 * held["W"]
    got = lyapunov(cell, x, k=2)
    ref = lyapunov(cell, x, k=2, trace=False)
    np.testing.assert_array_equal(got.exponents, ref.exponents)
    assert np.max(np.abs(got.exponents - first.exponents)) > 1e-3


def test_a_step_with_python_side_effects_stays_eager():
    _seed(24)
    m = Flaky().train()
    x = torch.randn(9, 2, 2)
    lyapunov(TorchCell(m, state_sizes=4), x, k=2)
    assert _graphs(m) == [False]
    assert m.n == 1 + 9  # the output check and the steps: the trace's call was undone


# -- custom steps against a jacrev + QR oracle ----------------------------------------------


def _jacrev_qr_oracle(step, state, x, k, seed, qr_every=1):
    """Exponents from dense per-sample Jacobians (torch.func.jacrev) and numpy QR, float64.
    ``step(state_tuple, x_t) -> state_tuple`` with (B, *s) components."""
    shapes = [tuple(c.shape[1:]) for c in state]
    sizes = [math.prod(s) for s in shapes]
    B, D = state[0].shape[0], sum(sizes)

    def flat_step(hf, xt):  # one sample: (D,) -> (D,)
        parts = torch.split(hf, sizes)
        comps = tuple(p.reshape(1, *s) for p, s in zip(parts, shapes))
        out = step(comps, xt[None])
        return torch.cat([o.reshape(-1) for o in out])

    jac = torch.func.vmap(torch.func.jacrev(flat_step), in_dims=(0, 0))
    h = torch.cat([c.reshape(B, -1) for c in state], dim=1)
    v0 = np.random.default_rng(seed).standard_normal((B, k, D))
    Q = np.stack([np.linalg.qr(v.T)[0] for v in v0])  # (B, D, k)
    logs = np.zeros((B, k))
    for t in range(x.shape[0]):
        J = jac(h, x[t]).detach().numpy()  # (B, D, D)
        Q = J @ Q
        h = torch.func.vmap(flat_step)(h, x[t])
        if (t + 1) % qr_every == 0 or t + 1 == x.shape[0]:
            for b in range(B):
                Q[b], R = np.linalg.qr(Q[b])
                logs[b] += np.log(np.abs(np.diag(R)))
    return -np.sort(-logs / x.shape[0], axis=1), h.detach().numpy()


class PeepholeLSTM(nn.Module):
    """An LSTM with peephole connections (Gers & Schmidhuber 2000), state (h, c)."""

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.lin = nn.Linear(input_size + hidden, 4 * hidden)
        self.peep = nn.Parameter(torch.randn(3, hidden) * 0.5)

    def forward(self, state, x):
        h, c = state
        i, f, g, o = self.lin(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        i = torch.sigmoid(i + self.peep[0] * c)
        f = torch.sigmoid(f + self.peep[1] * c)
        c2 = f * c + i * torch.tanh(g)
        o = torch.sigmoid(o + self.peep[2] * c2)
        return o * torch.tanh(c2), c2


def test_peephole_lstm_tuple_state_against_jacrev():
    _seed(4)
    I, N, B, T, k = 3, 5, 2, 30, 6
    m = PeepholeLSTM(I, N).to(F64)
    with torch.no_grad():
        m.lin.weight.mul_(2.5)
    x = torch.randn(T, B, I, dtype=F64)
    state = (torch.randn(B, N, dtype=F64) * 0.2, torch.randn(B, N, dtype=F64) * 0.2)
    cell = TorchCell(m, state_sizes=[N, N])
    assert cell.state_names == ("h", "c") and cell.state_dim == 2 * N and cell.tuple_state
    got = lyapunov(cell, x, k=k, h0=state, seed=5, qr_every=2)
    ref, h_T = _jacrev_qr_oracle(lambda s, xt: m(s, xt), state, x, k, seed=5, qr_every=2)
    np.testing.assert_allclose(got.exponents, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.final_state, h_T, rtol=1e-12, atol=1e-14)


def test_plain_callable_with_closure_and_input_first_signature():
    _seed(5)
    I, N, B, T = 2, 4, 3, 25
    W = torch.randn(N, N, dtype=F64) * 1.5
    U = torch.randn(N, I, dtype=F64)

    def step(x, h):  # input first, as torch's cells
        return torch.tanh(h @ W.T + x @ U.T)

    x = torch.randn(T, B, I, dtype=F64)
    got = lyapunov(
        TorchCell(step, state_sizes=N, signature="input_first", dtype=F64), x, k=N, seed=1
    )
    ref, _ = _jacrev_qr_oracle(
        lambda s, xt: (step(xt, s[0]),), (torch.zeros(B, N, dtype=F64),), x, N, 1
    )
    np.testing.assert_allclose(got.exponents, ref, rtol=1e-10, atol=1e-12)


class SelectiveSSM(nn.Module):
    """A Mamba-style selective diagonal state-space recurrence: per channel d and state index
    n, ``h[d, n] <- exp(delta_d(x) A[d, n]) h[d, n] + delta_d(x) B_n(x) u_d(x)``."""

    def __init__(self, input_size: int, channels: int, d_state: int) -> None:
        super().__init__()
        self.A_log = nn.Parameter(torch.randn(channels, d_state) * 0.5)
        self.to_delta = nn.Linear(input_size, channels)
        self.to_B = nn.Linear(input_size, d_state)
        self.to_u = nn.Linear(input_size, channels)

    def forward(self, h, x):  # h: (B, channels, d_state)
        delta = nn.functional.softplus(self.to_delta(x))  # (B, channels)
        A = -torch.exp(self.A_log)
        decay = torch.exp(delta[:, :, None] * A)
        drive = delta[:, :, None] * self.to_B(x)[:, None, :] * self.to_u(x)[:, :, None]
        return decay * h + drive

    def log_decays(self, x):  # (T, B, channels * d_state): log of the diagonal Jacobian
        delta = nn.functional.softplus(self.to_delta(x))
        return (delta[..., None] * -torch.exp(self.A_log)).reshape(*x.shape[:2], -1)


def test_selective_ssm_against_jacrev_and_closed_form():
    _seed(6)
    I, C, S, B, T = 3, 3, 4, 2, 40
    m = SelectiveSSM(I, C, S).to(F64)
    x = torch.randn(T, B, I, dtype=F64)
    cell = TorchCell(m, state_sizes=torch.Size([C, S]))  # one tensor state of shape (B, C, S)
    assert not cell.tuple_state and cell.state_dim == C * S
    k = C * S
    got = lyapunov(cell, x, k=k, seed=2)
    ref, _ = _jacrev_qr_oracle(
        lambda s, xt: (m(s[0], xt),), (torch.zeros(B, C, S, dtype=F64),), x, k, 2
    )
    np.testing.assert_allclose(got.exponents, ref, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        logs = m.log_decays(x).numpy()  # (T, B, D)
    # k = D: the exponents sum to the mean log-determinant, exactly
    np.testing.assert_allclose(got.exponents.sum(axis=1), logs.sum(axis=(0, 2)) / T, rtol=1e-12)
    # the diagonal Jacobians commute: the exponents are the sorted per-unit mean log decays,
    # up to the O(1/T) transient of the random initial tangents
    np.testing.assert_allclose(got.exponents, -np.sort(-logs.mean(axis=0), axis=1), atol=5.0 / T)


# -- gradient flow against autograd ---------------------------------------------------------


def _autograd_flow(step, state, x, loss=None, tuple_state=False):
    """Unrolled autograd in the dtype of the tensors: per-step state gradients (first
    component, and the others together), input gradients and the parameter gradients."""
    x = x.clone().requires_grad_(True)
    s = tuple(c.clone().requires_grad_(True) for c in state)
    hist = [s]
    for t in range(x.shape[0]):
        out = step(s if tuple_state else s[0], x[t])
        # the state as the next step (or the loss) reads it: its gradient is dL/d(state)
        # in state coordinates (for an LSTM, dL/dc_t holding h_t fixed, as the native models)
        s = tuple(o * 1.0 for o in (out if isinstance(out, tuple) else (out,)))
        for c in s:
            c.retain_grad()
        hist.append(s)
    L = loss(s if tuple_state else s[0]) if loss else 0.5 * (s[0] ** 2).sum()
    L.backward()

    def log_norm(ts):
        zero = torch.zeros(1, dtype=F64)
        return _log_norm_of(
            torch.cat([(zero if t.grad is None else t.grad.reshape(-1)) for t in ts])
        )

    lh = np.array([log_norm(h[:1]) for h in hist])
    lr = np.array([log_norm(h[1:]) for h in hist]) if len(state) > 1 else None
    lx = np.array([_log_norm_of(x.grad[t]) for t in range(x.shape[0])])
    grads = [h[0].grad.clone() for h in hist]
    return lh, lr, lx, grads


@pytest.mark.parametrize("kind", ["gru", "lstm", "peephole"])
def test_gradient_flow_against_autograd(kind):
    _seed(7)
    I, N, B, T = 3, 5, 2, 30
    if kind == "gru":
        m = nn.GRUCell(I, N).to(F64)
        step, tup = (lambda s, x: m(x, s)), False
        state = (torch.randn(B, N, dtype=F64),)
    elif kind == "lstm":
        m = nn.LSTMCell(I, N).to(F64)
        step, tup = (lambda s, x: m(x, s)), True
        state = (torch.randn(B, N, dtype=F64), torch.randn(B, N, dtype=F64))
    else:
        m = PeepholeLSTM(I, N).to(F64)
        step, tup = m, True
        state = (torch.randn(B, N, dtype=F64), torch.randn(B, N, dtype=F64))
    x = torch.randn(T, B, I, dtype=F64)
    h0 = state if tup else state[0]
    lh, lr, lx, grads = _autograd_flow(step, state, x, tuple_state=tup)
    cell = TorchCell(m, state_sizes=[N, N] if kind == "peephole" else None)
    flow = gradient_flow(cell, x, h0=h0, keep_grads=True, keep_states=True)
    np.testing.assert_allclose(flow.log_grad_norms, lh, rtol=1e-10)
    np.testing.assert_allclose(flow.log_input_grad_norms, lx, rtol=1e-10)
    if tup:
        np.testing.assert_allclose(flow.log_cell_grad_norms, lr, rtol=1e-10)
        assert flow.log_cell_grad_norms[-1] == -np.inf  # the default loss reads h_T only
    else:
        assert flow.log_cell_grad_norms is None
    np.testing.assert_allclose(flow.grads, torch.stack(grads).numpy(), rtol=1e-9, atol=1e-300)
    assert flow.states.shape == (T + 1, B, N) and flow.axis == "step"
    np.testing.assert_allclose(flow.states[0], state[0].numpy())
    assert flow.to_pandas().shape[0] == T + 1 and "TorchCell" in repr(flow)


def test_stock_cell_gradient_flow_equals_native():
    _seed(8)
    cell = nn.LSTMCell(3, 4).to(F64)
    x = torch.randn(20, 2, 3, dtype=F64)
    ref = vgcore.gradient_flow(_native_model(cell), x.numpy(), input_grads=True, param_grads=True)
    got = gradient_flow(cell, x, param_grads=True)
    np.testing.assert_allclose(got.log_grad_norms, ref.log_grad_norms, rtol=1e-10)
    np.testing.assert_allclose(got.log_cell_grad_norms, ref.log_cell_grad_norms, rtol=1e-10)
    np.testing.assert_allclose(got.log_input_grad_norms, ref.log_input_grad_norms, rtol=1e-10)
    np.testing.assert_allclose(got.act_mean, ref.act_mean, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got.act_std, ref.act_std, rtol=1e-10)
    assert set(got.log_param_grad_norms) == set(ref.log_param_grad_norms)
    for name, v in ref.log_param_grad_norms.items():
        assert got.log_param_grad_norms[name] == pytest.approx(v, rel=1e-10)


def test_loss_fn_sequence_cotangent_and_param_grads_against_autograd():
    _seed(9)
    I, N, B, T = 2, 4, 3, 15
    m = PeepholeLSTM(I, N).to(F64)
    head = nn.Linear(N, 3).to(F64)
    target = torch.tensor([0, 2, 1])
    x = torch.randn(T, B, I, dtype=F64)
    zeros = (torch.zeros(B, N, dtype=F64), torch.zeros(B, N, dtype=F64))

    def loss(s):
        return nn.functional.cross_entropy(head(s[0]), target)

    lh, lr, lx, _ = _autograd_flow(m, zeros, x, loss=loss, tuple_state=True)
    m.zero_grad(set_to_none=True)  # (the oracle's backward filled .grad)
    flow = gradient_flow(TorchCell(m, state_sizes=[N, N]), x, loss_fn=loss, param_grads=True)
    np.testing.assert_allclose(flow.log_grad_norms, lh, rtol=1e-10)
    np.testing.assert_allclose(flow.log_cell_grad_norms[:-1], lr[:-1], rtol=1e-10)
    np.testing.assert_allclose(flow.log_input_grad_norms, lx, rtol=1e-10)
    # parameter gradients of the same loss, summed over the steps
    params = dict(m.named_parameters())
    s = zeros
    for t in range(T):
        s = m(s, x[t])
    g = torch.autograd.grad(loss(s), list(params.values()))
    for (name, _), gi in zip(params.items(), g):
        assert flow.log_param_grad_norms[name] == pytest.approx(
            math.log(float(gi.norm())), rel=1e-10
        )
    assert all(p.grad is None for p in m.parameters())  # nothing accumulated into .grad
    # a sequence loss: dL/dh_t given at every step
    cot = torch.randn(T, B, N, dtype=F64)
    x2 = x.clone().requires_grad_(True)
    h = [zeros[0].clone().requires_grad_(True)]
    s = (h[0], zeros[1])
    for t in range(T):
        s = m(s, x2[t])
        s[0].retain_grad()
        h.append(s[0])
    (torch.stack(h[1:]) * cot).sum().backward()
    flow = gradient_flow(TorchCell(m, state_sizes=[N, N]), x, cotangent=cot)
    want = np.log([float(t.grad.norm()) for t in h])
    np.testing.assert_allclose(flow.log_grad_norms, want, rtol=1e-10)


def test_float32_range_autograd_underflows_but_logs_match_float64():
    """A contracting step: the gradient reaching the early steps is ~1e-150, far below float32
    (autograd returns exact zeros there), yet vgcore's float32 logs match float64 autograd."""
    _seed(10)
    I, N, B, T = 3, 6, 2, 120
    m = nn.RNNCell(I, N)
    with torch.no_grad():
        m.weight_hh.copy_(torch.linalg.qr(torch.randn(N, N))[0] * 0.05)
    x = torch.randn(T, B, I)
    m64 = nn.RNNCell(I, N).to(F64)
    m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    lh64, _, lx64, _ = _autograd_flow(
        lambda s, xt: m64(xt, s), (torch.ones(B, N, dtype=F64),), x.double()
    )
    lh32, _, _, _ = _autograd_flow(lambda s, xt: m(xt, s), (torch.ones(B, N),), x)
    assert np.isneginf(lh32[0]) and lh64[0] < -300  # the plain float32 gradient is zero
    flow = gradient_flow(m, x, h0=torch.ones(B, N))
    assert flow.dtype == np.float32 and np.all(np.isfinite(flow.log_grad_norms))
    np.testing.assert_allclose(flow.log_grad_norms, lh64, rtol=1e-4)
    np.testing.assert_allclose(flow.log_input_grad_norms, lx64, rtol=1e-4)
    plain = gradient_flow(m, x, h0=torch.ones(B, N), rescale=False)
    np.testing.assert_array_equal(np.isneginf(plain.log_grad_norms), np.isneginf(lh32))


# -- dtypes, devices, hygiene -----------------------------------------------------------------


class Flaky(nn.Module):
    """A step with dropout (train mode), a frozen parameter, and an error at call ``fail_at``."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 4)
        self.lin.bias.requires_grad_(False)
        self.drop = nn.Dropout(0.5)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.fail_at = fail_at
        self.n = 0

    def forward(self, h, x):
        self.n += 1
        if self.fail_at is not None and self.n >= self.fail_at:
            raise RuntimeError("step failed")
        return torch.tanh(self.drop(self.lin(torch.cat([h, x], dim=1))))


def _snapshot(m: nn.Module):
    return (
        {k: v.clone() for k, v in m.state_dict().items()},
        [(n, p.requires_grad, p.grad) for n, p in m.named_parameters()],
        [mod.training for mod in m.modules()],
    )


def _hooks(m: nn.Module) -> int:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(mod, n)) for mod in m.modules() for n in names)


@pytest.mark.parametrize("fail_at", [None, 6])
@pytest.mark.parametrize("analysis", ["lyapunov", "gradient_flow"])
def test_module_left_unchanged(analysis, fail_at):
    _seed(11)
    m = Flaky(fail_at).train()
    before = _snapshot(m)
    x = torch.randn(12, 2, 2)
    run = (
        (lambda: lyapunov(TorchCell(m, state_sizes=4), x, k=2))
        if analysis == "lyapunov"
        else (lambda: gradient_flow(TorchCell(m, state_sizes=4), x, param_grads=True))
    )
    if fail_at is None:
        run()
    else:
        with pytest.raises(RuntimeError, match="step failed"):
            run()
    after = _snapshot(m)
    assert before[0].keys() == after[0].keys()
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), k
    assert before[1] == after[1] and before[2] == after[2]
    assert m.training and _hooks(m) == 0


def test_eval_semantics_make_the_analysis_deterministic():
    """Dropout in train mode is switched off for the analysis: two runs agree exactly."""
    _seed(12)
    m = Flaky().train()
    x = torch.randn(10, 2, 2)
    a = lyapunov(TorchCell(m, state_sizes=4), x, k=3)
    b = lyapunov(TorchCell(m, state_sizes=4), x, k=3)
    np.testing.assert_array_equal(a.exponents, b.exponents)


def test_half_precision_module_runs_in_a_float32_copy():
    _seed(13)
    m = nn.GRUCell(3, 4).to(torch.bfloat16)
    x = torch.randn(15, 2, 3)
    cell = TorchCell(m)
    assert cell.dtype == np.float32 and any("float32 copy" in n for n in cell.notes)
    got = lyapunov(cell, x, k=2)
    ref = lyapunov(_f32(m), x, k=2)
    np.testing.assert_allclose(got.exponents, ref.exponents, rtol=1e-6)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    flow = gradient_flow(cell, x)
    assert flow.dtype == np.float32 and "float32 copy" in repr(flow)


def _f32(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m).float()


def test_dtype_option_analyses_a_converted_copy():
    _seed(14)
    m = nn.GRUCell(3, 5)
    x = torch.randn(20, 2, 3)
    got = lyapunov(m, x, k=3, dtype="float64")
    ref = lyapunov(_f32(m).double(), x.double(), k=3)
    assert got.dtype == np.float64 and m.weight_hh.dtype == torch.float32
    np.testing.assert_allclose(got.exponents, ref.exponents, rtol=1e-12)


def test_model_questions():
    cell = TorchCell(nn.LSTMCell(3, 4).to(F64))
    assert cell.kind == "torch_cell" and cell.axis == "time" and cell.step_name == "step"
    assert cell.state_names == ("h", "c") and cell.state_dim == 8 and cell.input_size == 3
    assert cell.hidden_size == 4 and not cell.stacked and cell.num_layers == 1
    assert cell.lyapunov_obstacle() is None and cell.step_jacobian_dims() == [8]
    assert set(cell.parameters()) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}
    assert cell.flat_spec()["model"] == "torch_cell" and cell.dtype == np.float64
    assert isinstance(cell, vgcore.models.Model)
    with pytest.raises(TypeError, match="compiled core"):
        cell.to_spec()
    from vgcore.models import is_model, model_kind

    kind = model_kind("torch_cell")
    assert kind.cls is TorchCell and kind.backend == "torch" and kind.axis == "time"
    assert is_model(cell) and "GRUCell" in kind.torch_classes


def test_public_analyses_dispatch_a_torch_cell():
    _seed(16)
    cell = nn.GRUCell(3, 4).to(F64)
    x = torch.randn(12, 2, 3, dtype=F64)
    tc = TorchCell(cell)
    a = vgcore.lyapunov(tc, x, k=3, burn_in=2)
    b = lyapunov(tc, x, k=3, burn_in=2)
    np.testing.assert_array_equal(a.exponents, b.exponents)
    f = vgcore.gradient_flow(tc, x)
    np.testing.assert_array_equal(f.log_grad_norms, gradient_flow(tc, x).log_grad_norms)
    assert f.kind == "torch_cell" and f.log_input_grad_norms is not None


# -- bad input --------------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    _seed(15)
    gru = nn.GRUCell(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, input_size\)"):
        lyapunov(gru, x[0])
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, 3\)"):
        lyapunov(gru, torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match="x is an empty sequence"):
        lyapunov(gru, torch.randn(0, 2, 3))
    with pytest.raises(ValueError, match="k = 5 exceeds the state dimension D = 4"):
        lyapunov(gru, x, k=5)
    with pytest.raises(ValueError, match="burn_in = 5 leaves no steps"):
        lyapunov(gru, x, burn_in=5)
    with pytest.raises(ValueError, match="qr_every"):
        lyapunov(gru, x, qr_every=0)
    with pytest.raises(ValueError, match=r"h0 must be the state \(B, 4\)"):
        lyapunov(gru, x, h0=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="h0 has batch size 3"):
        gradient_flow(gru, x, h0=torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"cotangent must have shape \(2, 4\)"):
        gradient_flow(gru, x, cotangent=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="cotangent or loss_fn, not both"):
        gradient_flow(gru, x, cotangent=torch.zeros(2, 4), loss_fn=lambda h: h.sum())
    with pytest.raises(TypeError, match="loss_fn must return a scalar tensor"):
        gradient_flow(gru, x, loss_fn=lambda h: h)
    with pytest.raises(ValueError, match="signature must be one of"):
        TorchCell(gru, signature="xs")
    with pytest.raises(TypeError, match=r"step must be a torch.nn.Module or a callable"):
        TorchCell(3)
    with pytest.raises(ValueError, match=r"state shape of this TorchCell .* is not known"):
        lyapunov(TorchCell(lambda h, x: h), x)
    with pytest.raises(ValueError, match="state_sizes = 5 contradicts"):
        TorchCell(gru, state_sizes=5)
    with pytest.raises(ValueError, match=r"param_grads needs a step that is a torch.nn.Module"):
        gradient_flow(TorchCell(lambda h, x: h, state_sizes=4), x, param_grads=True)
    with pytest.raises(ValueError, match=r"parameter 'weight_hh' .* NaN"):
        bad = nn.GRUCell(3, 4)
        with torch.no_grad():
            bad.weight_hh[0, 0] = float("nan")
        lyapunov(bad, x)


def test_step_returning_a_wrong_state_names_the_step():
    x = torch.randn(5, 2, 3)

    def shrink(h, xt):
        return h[:, :3]

    with pytest.raises(ValueError, match=r"step \(.*shrink\) must return a state of the shape"):
        lyapunov(TorchCell(shrink, state_sizes=4), x)
    with pytest.raises(ValueError, match=r"step \(.*shrink\) must return a state of the shape"):
        gradient_flow(TorchCell(shrink, state_sizes=4), x)

    def pair_to_one(s, xt):
        return s[0]

    with pytest.raises(ValueError, match="structure it takes"):
        lyapunov(TorchCell(pair_to_one, state_sizes=[4, 4]), x)

    def widens(h, xt):
        return h.double()

    with pytest.raises(TypeError, match="dtype="):
        lyapunov(TorchCell(widens, state_sizes=4), x)


def test_nonfinite_state_is_reported():
    def explode(h, xt):
        return h * 1e30 + 1.0

    x = torch.randn(8, 1, 2)
    with pytest.raises(FloatingPointError, match="NaN/Inf by step"):
        lyapunov(TorchCell(explode, state_sizes=3), x, k=2)
    with pytest.raises(FloatingPointError, match="forward pass produced NaN/Inf at step"):
        gradient_flow(TorchCell(explode, state_sizes=3), x)


def test_a_bare_stock_cell_is_a_torch_cell_and_compile_is_refused_elsewhere() -> None:
    torch.manual_seed(3)
    cell = torch.nn.GRUCell(4, 6).double()
    x = torch.randn(30, 2, 4, dtype=torch.float64)
    direct = vgcore.lyapunov(vgcore.TorchCell(cell), x, k=3)
    via_module = vgcore.lyapunov(cell, x, k=3)
    np.testing.assert_array_equal(via_module.exponents, direct.exponents)
    flow = vgcore.gradient_flow(cell, x)
    assert "not measured" in repr(flow)
    with pytest.raises(ValueError, match="compile=True applies to a TorchCell"):
        vgcore.lyapunov(vgcore.RNN.from_sizes(4, 6, seed=0), x.numpy(), k=2, compile=True)


def test_first_non_finite_block_across_reduced_chunks():
    from vgcore.torchmodel.cell import _FirstBad

    w = _FirstBad()
    vals = torch.zeros(2500, dtype=F64)
    vals[100] = -math.inf  # an exactly zero diagonal entry: allowed
    vals[1499] = math.nan  # block 1500 (1-based), after the first reduced chunk
    vals[1999] = math.inf
    for v in vals:
        w.add(v)
    assert w.first() == 1500
    ok = _FirstBad()
    for v in vals[:1400]:
        ok.add(v)
    assert ok.first() == -1 and _FirstBad().first() == -1
    late = _FirstBad()
    for v in torch.tensor([0.0, 1.0, math.inf], dtype=F64):
        late.add(v)
    assert late.first() == 3

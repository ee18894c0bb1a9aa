"""Reference state-space layers (vgcore.reference.ssm) against independent oracles.

Oracles: closed forms (Lyapunov exponents ``log|a|``, HiPPO-LegS's eigenvalues, the
convolution kernel ``K_k = C a^k B_bar``), ``scipy.linalg.expm`` / ``scipy.signal.cont2discrete``
for the zero-order hold, a parallel-scan re-implementation of Mamba's selective block written
here from the equations (cumulative sums of ``log a``, explicit convolution taps), and
``torch.func.jacrev`` of the step for the tangent (JVP) and cotangent (VJP) paths of
vgcore's torch backend. Tolerances: 1e-10 relative in float64 (1e-12 for the hold).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_linalg = pytest.importorskip("scipy.linalg")
scipy_signal = pytest.importorskip("scipy.signal")

import vgcore  # noqa: E402
from vgcore.reference import DiagonalSSM, SelectiveSSM, hippo_legs, s4d_init, zoh  # noqa: E402

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.complex128), np.asarray(b, dtype=np.complex128)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _set(layer, **values) -> None:
    with torch.no_grad():
        for name, v in values.items():
            getattr(layer, name).copy_(torch.as_tensor(v, dtype=F64))


# -- the diagonal LTI layer ----------------------------------------------------------------


@pytest.mark.parametrize("is_complex", [True, False], ids=["complex", "real"])
def test_lti_lyapunov_equals_log_abs_a(is_complex):
    """Constant diagonal Jacobian: the exponents are log|a_n| (twice per complex mode)."""
    N, d = 4, 3
    init = "s4d_lin" if is_complex else "s4d_real"
    m = DiagonalSSM(d, N, init=init, seed=1, dtype=F64)
    # well separated moduli so that the QR method aligns with the modes within the burn-in
    _set(m, log_A_real=np.log([0.1, 0.35, 0.8, 1.6]), log_dt=np.log([1.0, 0.9, 1.1, 1.0]))
    a = m.transition().numpy()
    assert np.iscomplexobj(a) == is_complex
    expected = np.log(np.abs(a))
    if is_complex:
        expected = np.repeat(expected, 2)
    expected = np.sort(expected)[::-1]
    x = torch.randn(400, 2, d, dtype=F64, generator=torch.Generator().manual_seed(0))
    res = vgcore.lyapunov(m.as_cell(), x, burn_in=200)
    assert res.exponents.shape == (2, expected.size)
    for b in range(2):
        assert _rel(res.exponents[b], expected) < 1e-10


@pytest.mark.parametrize("init", ["s4d_lin", "s4d_inv", "hippo", "s4d_real"])
def test_scan_equals_convolution_kernel(init):
    """y_t = sum_k K_k x_{t-k} + D x_t with K_k = Re(C a^k B_bar), from a zero state."""
    d, N, T = 3, 5, 40
    m = DiagonalSSM(d, N, init=init, seed=2, dt_min=0.05, dt_max=0.5, dtype=F64)
    x = torch.randn(2, T, d, dtype=F64, generator=torch.Generator().manual_seed(1))
    y = m(x).detach().numpy()
    # the kernel independently, in numpy complex arithmetic
    A_re, A_im, dt = (None if v is None else v.detach().numpy() for v in m.continuous())
    A = A_re + (0j if A_im is None else 1j * A_im)
    a = np.exp(dt * A)
    Bc = m.B.detach().numpy()
    Cc = m.C.detach().numpy()
    if m.is_complex:
        Bc, Cc = Bc[..., 0] + 1j * Bc[..., 1], Cc[..., 0] + 1j * Cc[..., 1]
    Bbar = ((a - 1) / A)[:, None] * Bc
    K = np.stack([np.real(Cc @ np.diag(a**k) @ Bbar) for k in range(T)])
    xn = x.numpy()
    ref = np.zeros_like(xn)
    for t in range(T):
        for k in range(t + 1):
            ref[:, t] += xn[:, t - k] @ K[k].T
    ref += m.D.detach().numpy() * xn
    assert _rel(y, ref) < 1e-10
    # the layer's own kernel too
    assert _rel(m.kernel(T).detach().numpy(), K) < 1e-10


@pytest.mark.parametrize("dt", [1e-7, 1e-3, 0.1, 2.0])
@pytest.mark.parametrize("is_complex", [True, False], ids=["complex", "real"])
def test_zoh_against_matrix_exponential(dt, is_complex):
    """Per mode: expm([[M, B], [0, 0]] dt) = [[Ad, Bd], [0, I]] (M the real 2x2 block of a
    complex A), at 1e-12 relative, also where dt |A| is small (no cancellation)."""
    A_re = np.array([-0.5, -0.03, -4.0])
    A_im = np.array([3.0, 0.2, -40.0]) if is_complex else None
    dts = np.full(3, dt)
    t = lambda v: None if v is None else torch.tensor(v, dtype=F64)  # noqa: E731
    a_re, a_im, q_re, q_im = zoh(t(A_re), t(A_im), t(dts))
    for n in range(3):
        if is_complex:
            M = np.array([[A_re[n], -A_im[n]], [A_im[n], A_re[n]]])
            Bc = np.eye(2)  # input 1 -> real part, input 2 -> imaginary part
        else:
            M = np.array([[A_re[n]]])
            Bc = np.eye(1)
        k = M.shape[0]
        big = np.zeros((2 * k, 2 * k))
        big[:k, :k], big[:k, k:] = M, Bc
        E = scipy_linalg.expm(big * dt)
        Ad, Bd = E[:k, :k], E[:k, k:]
        if is_complex:
            # complex multiplication by a (resp. q) as a real 2x2 matrix
            a_mat = np.array([[a_re[n], -a_im[n]], [a_im[n], a_re[n]]])
            q_mat = np.array([[q_re[n], -q_im[n]], [q_im[n], q_re[n]]])
        else:
            a_mat, q_mat = np.array([[a_re[n]]]), np.array([[q_re[n]]])
        assert _rel(a_mat, Ad) < 1e-12
        assert _rel(q_mat, Bd) < 1e-12


def test_zoh_against_cont2discrete():
    """The layer's (a, B_bar) against scipy.signal.cont2discrete on the real block system."""
    m = DiagonalSSM(2, 3, init="s4d_lin", seed=3, dtype=F64)
    a_re, a_im, Bb = (v.detach().numpy() for v in m.discretize())
    A_re, A_im, dts = (v.detach().numpy() for v in m.continuous())
    B = m.B.detach().numpy()
    for n in range(3):
        M = np.array([[A_re[n], -A_im[n]], [A_im[n], A_re[n]]])
        Bn = B[n].T  # (2 parts, d): rows real / imaginary
        Ad, Bd, *_ = scipy_signal.cont2discrete(
            (M, Bn, np.eye(2), np.zeros((2, 2))), float(dts[n]), method="zoh"
        )
        assert _rel(np.array([[a_re[n], -a_im[n]], [a_im[n], a_re[n]]]), Ad) < 1e-12
        assert _rel(Bb[n].T, Bd) < 1e-12


def test_inits_formulas():
    N = 6
    n = np.arange(N)
    assert _rel(s4d_init("s4d_lin", N), -0.5 + 1j * np.pi * n) < 1e-15
    assert _rel(s4d_init("s4d_real", N), -(n + 1.0)) < 1e-15
    inv = -0.5 + 1j * (N / np.pi) * (N / (2 * n + 1) - 1)
    assert _rel(s4d_init("s4d_inv", N), inv) < 1e-15
    # HiPPO-LegS (size 2N) built from its definition; its normal part's eigenvalues
    M = 2 * N
    i, k = np.meshgrid(np.arange(M), np.arange(M), indexing="ij")
    s = np.sqrt(2 * np.arange(M) + 1.0)
    A_legs = np.where(i > k, -np.outer(s, s), 0.0) - np.diag(np.arange(M) + 1.0)
    P = np.sqrt(np.arange(M) + 0.5)
    ev = np.linalg.eigvals(A_legs + np.outer(P, P))
    ev = ev[ev.imag > 0]
    ev = ev[np.argsort(ev.imag)]
    A, Bt = hippo_legs(N)
    assert _rel(A, ev) < 1e-10
    # conjugate pairs carry equal |V^* B|: the kept half holds |B|^2 / 2 = M^2 / 2
    assert abs(np.sum(np.abs(Bt) ** 2) - M**2 / 2) < 1e-9 * M**2
    # the layer starts from these A, and dt within [dt_min, dt_max]
    m = DiagonalSSM(2, N, init="hippo", seed=0, dt_min=1e-3, dt_max=1e-1, dtype=F64)
    A_re, A_im, dt = (v.detach().numpy() for v in m.continuous())
    assert _rel(A_re + 1j * A_im, A) < 1e-14
    assert (dt >= 1e-3 * (1 - 1e-12)).all() and (dt <= 1e-1 * (1 + 1e-12)).all()


def test_lti_seeded_and_leaves_global_rng():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    m1 = DiagonalSSM(3, 4, seed=7, dtype=F64)
    assert torch.equal(torch.random.get_rng_state(), before)
    m2 = DiagonalSSM(3, 4, seed=7, dtype=F64)
    m3 = DiagonalSSM(3, 4, seed=8, dtype=F64)
    for (n1, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(p1, p2), n1
    assert not torch.equal(m1.B, m3.B)
    assert m1.B.shape == (4, 3, 2) and m1.C.shape == (3, 4, 2) and m1.D.shape == (3,)
    r = DiagonalSSM(3, 4, init="s4d_real", seed=7)
    assert r.A_imag is None and r.B.shape == (4, 3) and r.state_shape == (4,)
    assert r.transition().dtype == torch.get_default_dtype()


def test_lti_gradient_flow_closed_form():
    """dL/dh_t = diag(a)^(T-t) dL/dh_T for L = 0.5 ||h_T||^2: norms from the closed form."""
    m = DiagonalSSM(2, 3, init="s4d_real", seed=4, dtype=F64)
    T = 30
    x = torch.randn(T, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    g = vgcore.gradient_flow(m.as_cell(), x)
    _, h = m(x.transpose(0, 1), return_state=True)
    a = m.transition().numpy()
    hT = h.detach().numpy()
    ref = [0.5 * np.log(np.sum((hT * a ** (T - t)) ** 2)) for t in range(T + 1)]
    assert _rel(g.log_grad_norms, ref) < 1e-10


# -- the selective block -------------------------------------------------------------------


def _mamba_parallel(blk: SelectiveSSM, u: torch.Tensor) -> torch.Tensor:
    """Mamba's block written from the paper's equations: explicit convolution taps and the
    closed form of the linear recurrence through cumulative sums of log a (no loop over the
    recurrence): h_t = sum_{s<=t} exp(S_t - S_s) Delta_s B_s x_s, S_t = sum_{r<=t} Delta_r A."""
    L = u.shape[1]
    di, n, K = blk.d_inner, blk.d_state, blk.d_conv
    W_in = blk.in_proj.weight
    xz = u @ W_in.T
    x, z = xz[..., :di], xz[..., di:]
    w = blk.conv1d.weight[:, 0, :]  # (di, K): tap j multiplies x_{t-(K-1)+j}
    xc = torch.zeros_like(x)
    if blk.conv1d.bias is not None:
        xc = xc + blk.conv1d.bias
    for j in range(K):
        lag = K - 1 - j
        xc[:, lag:] += w[:, j] * x[:, : L - lag]
    xc = xc * torch.sigmoid(xc)
    proj = xc @ blk.x_proj.weight.T
    r = blk.dt_rank
    dt_low, Bm, Cm = proj[..., :r], proj[..., r : r + n], proj[..., r + n :]
    delta = torch.log1p(torch.exp(dt_low @ blk.dt_proj.weight.T + blk.dt_proj.bias))
    A = -torch.exp(blk.A_log)  # (di, n)
    S = torch.cumsum(delta[..., None] * A, dim=1)  # (B, L, di, n)
    drive = (delta * xc)[..., None] * Bm[:, :, None, :]  # (B, L, di, n)
    mask = torch.tril(torch.ones(L, L, dtype=torch.bool))
    # decay[b, t, s] = exp(S_t - S_s) for s <= t
    diff = S[:, :, None] - S[:, None, :]  # (B, t, s, di, n)
    decay = torch.where(mask[None, :, :, None, None], torch.exp(diff), torch.zeros(()))
    h = torch.einsum("btsin,bsin->btin", decay, drive)
    y = torch.einsum("btin,btn->bti", h, Cm) + blk.D * xc
    y = y * (z * torch.sigmoid(z))
    return y @ blk.out_proj.weight.T


def test_selective_shapes_and_init():
    blk = SelectiveSSM(40, d_state=8, seed=0, dtype=F64)
    assert blk.d_inner == 80 and blk.dt_rank == math.ceil(40 / 16) == 3
    shapes = {k: tuple(v.shape) for k, v in blk.named_parameters()}
    assert shapes == {
        "A_log": (80, 8),
        "D": (80,),
        "in_proj.weight": (160, 40),
        "conv1d.weight": (80, 1, 4),
        "conv1d.bias": (80,),
        "x_proj.weight": (3 + 16, 80),
        "dt_proj.weight": (80, 3),
        "dt_proj.bias": (80,),
        "out_proj.weight": (40, 80),
    }
    assert blk.conv1d.groups == 80 and blk.conv1d.padding == (3,)
    assert torch.equal(blk.A_log, torch.log(torch.arange(1, 9, dtype=F64)).repeat(80, 1))
    assert torch.equal(blk.D, torch.ones(80, dtype=F64))
    dt = torch.nn.functional.softplus(blk.dt_proj.bias).detach()
    assert (dt >= 1e-3 * (1 - 1e-12)).all() and (dt <= 0.1 * (1 + 1e-12)).all()
    s = 3**-0.5
    assert (blk.dt_proj.weight.abs() <= s).all()
    b2 = SelectiveSSM(40, d_state=8, expand=1.5, bias=True, conv_bias=False, seed=0)
    assert b2.d_inner == 60 and b2.in_proj.bias is not None and b2.conv1d.bias is None
    assert SelectiveSSM(16, seed=0).dt_rank == 1 and SelectiveSSM(17, seed=0).dt_rank == 2


@pytest.mark.parametrize("conv_bias", [True, False])
def test_selective_against_parallel_scan(conv_bias):
    blk = SelectiveSSM(6, d_state=4, d_conv=3, seed=1, conv_bias=conv_bias, dtype=F64)
    with torch.no_grad():  # larger steps than the init, so the decay matters over L
        blk.dt_proj.bias.add_(2.0)
    u = torch.randn(2, 12, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    ref = _mamba_parallel(blk, u)
    out = blk(u)
    assert _rel(out.detach().numpy(), ref.detach().numpy()) < 1e-10
    # the step form over the sequence gives the same outputs and final state
    state = blk.initial_state(2)
    outs = []
    for t in range(u.shape[1]):
        state, o = blk.step_output(state, u[:, t])
        outs.append(o)
    assert _rel(torch.stack(outs, 1).detach().numpy(), ref.detach().numpy()) < 1e-10
    _, fin = blk(u, return_state=True)
    for a, b in zip(fin, state):
        assert _rel(a.detach().numpy(), b.detach().numpy()) < 1e-12


def test_selective_forward_from_a_state():
    """Splitting a sequence and carrying (h, conv) gives the unsplit outputs."""
    blk = SelectiveSSM(5, d_state=3, seed=2, dtype=F64)
    u = torch.randn(3, 10, 5, dtype=F64, generator=torch.Generator().manual_seed(1))
    whole = blk(u)
    y1, s1 = blk(u[:, :4], return_state=True)
    y2 = blk(u[:, 4:], s1)
    assert _rel(torch.cat((y1, y2), 1).detach().numpy(), whole.detach().numpy()) < 1e-12


def _flat_step(blk: SelectiveSSM, u_t: torch.Tensor):
    (s_h, s_c) = blk.state_shapes
    nh = s_h[0] * s_h[1]

    def F(v):
        h = v[:nh].reshape(1, *s_h)
        c = v[nh:].reshape(1, *s_c)
        h2, c2 = blk.step((h, c), u_t[None])
        return torch.cat((h2.reshape(-1), c2.reshape(-1)))

    return F, nh


def test_selective_step_jacobian_jacrev_vs_torch_backend():
    """The per-step Jacobian from jacrev: its structure (diag(exp(Delta A)) on h, a shift on
    the conv buffer, no path conv <- h), the tangent path (lyapunov, one step: log|diag R| of
    QR(J Q0)) and the cotangent path (gradient_flow: J^T g), at 1e-10."""
    blk = SelectiveSSM(4, d_state=3, d_conv=3, seed=3, dtype=F64)
    gen = torch.Generator().manual_seed(5)
    (s_h, s_c) = blk.state_shapes
    h0 = torch.randn(1, *s_h, dtype=F64, generator=gen)
    c0 = torch.randn(1, *s_c, dtype=F64, generator=gen)
    u = torch.randn(1, 1, 4, dtype=F64, generator=gen)
    F, nh = _flat_step(blk, u[0, 0])
    v0 = torch.cat((h0.reshape(-1), c0.reshape(-1)))
    J = torch.func.jacrev(F)(v0).detach().numpy()
    D = J.shape[0]
    # structure
    with torch.no_grad():
        sel = blk.selection(u, (h0, c0))
    # selection(u) with the buffer c0: its first step is this step's
    a = sel["a"][0, 0].reshape(-1).numpy()
    assert _rel(J[:nh, :nh], np.diag(a)) < 1e-12
    assert np.all(J[nh:, :nh] == 0)
    shift = np.zeros((D - nh, D - nh))
    di, w = s_c
    for i in range(di):
        for j in range(w - 1):
            shift[i * w + j, i * w + j + 1] = 1.0
    assert np.array_equal(J[nh:, nh:], shift)
    # tangent path: lyapunov over one step, k = nh exponents (the conv part is nilpotent)
    k = nh
    res = vgcore.lyapunov(blk.as_cell(), u.transpose(0, 1), h0=(h0, c0), k=k, seed=11)
    G = np.random.default_rng(11).standard_normal((1, k, D))[0].T
    Q0, _ = np.linalg.qr(G)
    R = np.linalg.qr(J @ Q0)[1]
    ref = np.sort(np.log(np.abs(np.diag(R))))[::-1]
    assert _rel(res.exponents[0], ref) < 1e-10
    # cotangent path: gradient_flow over one step with dL/d(h, conv) given
    gh = torch.randn(1, *s_h, dtype=F64, generator=gen)
    gc = torch.randn(1, *s_c, dtype=F64, generator=gen)
    flow = vgcore.gradient_flow(
        blk.as_cell(), u.transpose(0, 1), h0=(h0, c0), cotangent=(gh, gc), keep_grads=True
    )
    g = np.concatenate((gh.reshape(-1).numpy(), gc.reshape(-1).numpy()))
    vjp = J.T @ g
    got = np.concatenate((flow.grads[0, 0].reshape(-1), flow.cell_grads[0, 0].reshape(-1)))
    assert _rel(got, vjp) < 1e-10


def test_selective_module_unchanged_by_analyses():
    blk = SelectiveSSM(4, d_state=2, seed=4, dtype=F64)
    blk.train()
    before = {k: v.detach().clone() for k, v in blk.state_dict().items()}
    x = torch.randn(8, 2, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    vgcore.lyapunov(blk.as_cell(), x, k=3)
    vgcore.gradient_flow(blk.as_cell(), x, param_grads=True)
    assert blk.training
    for k, v in blk.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in blk.parameters())


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="init"):
        DiagonalSSM(2, 3, init="s4d")
    with pytest.raises(ValueError, match="complex=False"):
        DiagonalSSM(2, 3, init="s4d_lin", complex=False)
    with pytest.raises(ValueError, match="state_size"):
        DiagonalSSM(2, 0)
    with pytest.raises(ValueError, match="dt_min"):
        DiagonalSSM(2, 3, dt_min=0.5, dt_max=0.1)
    with pytest.raises(ValueError, match="seed"):
        DiagonalSSM(2, 3, seed=-1)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, 2\)"):
        DiagonalSSM(2, 3, seed=0)(torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="d_conv"):
        SelectiveSSM(4, d_conv=1)
    with pytest.raises(ValueError, match="dt_init"):
        SelectiveSSM(4, dt_init="log")
    with pytest.raises(ValueError, match="d_model"):
        SelectiveSSM(0)
    with pytest.raises(ValueError, match=r"u must have shape \(B, L, 4\)"):
        SelectiveSSM(4, seed=0)(torch.zeros(1, 3, 5))

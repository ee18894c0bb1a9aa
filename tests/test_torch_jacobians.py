"""Singular values and per-block spectra of chains of torch blocks (vgcore.torchmodel.jacobians).

Oracles: dense ``torch.func.jacrev`` Jacobians with ``torch.linalg.svdvals`` / ``eigvals`` in
float64 (per sample), and a closed form for a 100-block chain whose Jacobian spans hundreds of
decades (exactly representable weights ``Q_l D_l Q_{l-1}^T`` with dyadic orthogonal ``Q`` and
power-of-two diagonals ``D``: the product is ``Q_L (D_L ... D_1) Q_0^T``, so its singular values
are the products of the diagonals, exactly).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.func import jacrev  # noqa: E402

from vgcore._loader import _core  # noqa: E402
from vgcore.torchmodel.jacobians import (  # noqa: E402
    TorchJacobianSingularValues,
    TorchJacobianSpectrum,
    _graded_svd,
    block_spectrum,
    singular_values,
)

F64 = torch.float64
#: float64: relative accuracy of each singular value (absolute in its log).
TOL64 = 1e-9


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # torch's OpenMP pool crawls on a loaded two-core machine (a 12 x 12 QR took 20 ms with
    # two threads, 13 us with one); these sizes need no parallelism.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _blocks(seq: nn.Sequential) -> list[tuple[str, nn.Module]]:
    return list(seq.named_children())


def _sample_jacobian(f, x, b: int) -> torch.Tensor:
    """Dense Jacobian of sample b's output w.r.t. its input (the oracle)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    xb = x[b : b + 1].detach()
    with sdpa_kernel([SDPBackend.MATH]):  # the flash kernel has no batching rule for jacrev
        out = f(xb)
        return jacrev(f)(xb).reshape(out.numel(), xb.numel()).detach()


def _chain(blocks, upto: int):
    def f(h):
        for _, m in blocks[: upto + 1]:
            h = m(h)
        return h

    return f


def _oracle_logs(blocks, x, upto: int | None = None) -> np.ndarray:
    upto = len(blocks) - 1 if upto is None else upto
    f = _chain(blocks, upto)
    return np.stack(
        [
            torch.log(torch.linalg.svdvals(_sample_jacobian(f, x, b))).numpy()
            for b in range(x.shape[0])
        ]
    )


def _compare_logs(got: np.ndarray, want: np.ndarray, tol: float, decades: float = 6.0) -> None:
    """Logs of singular values agree to ``tol`` (relative accuracy of each value) where the
    dense oracle is itself accurate: values within ``decades`` of the largest (svdvals is
    accurate to eps * sigma_max in absolute terms)."""
    assert got.shape == want.shape
    keep = want >= want[:, :1] - decades * math.log(10.0)
    np.testing.assert_allclose(got[keep], want[keep], rtol=0, atol=tol)


def _mlp(widths=(12, 10, 10, 8), seed=0, act=nn.Tanh):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1]).double()


def _snapshot(module: nn.Module):
    return (
        {k: v.detach().clone() for k, v in module.state_dict().items()},
        [(m.training) for m in module.modules()],
        [p.requires_grad for p in module.parameters()],
    )


def _assert_unchanged(module: nn.Module, snap) -> None:
    state, modes, flags = snap
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert [m.training for m in module.modules()] == modes
    assert [p.requires_grad for p in module.parameters()] == flags
    for m in module.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert not m._backward_hooks


# ------------------------------------------------------------------------- full spectrum


def test_full_spectrum_of_an_mlp_matches_jacrev_per_sample_and_per_block():
    net = _mlp()
    blocks = _blocks(net)
    x = torch.randn(3, 12, dtype=F64)
    res = singular_values(blocks, x)
    assert isinstance(res, TorchJacobianSingularValues)
    assert res.method == "full" and res.depth == 5 and res.log_singular_values.shape == (3, 8)
    _compare_logs(res.log_singular_values, _oracle_logs(blocks, x), TOL64)
    # Every prefix product: the spectrum after each block (width 12 -> 10 -> ... -> 8).
    assert res.block_log_singular_values.shape == (5, 3, 10)
    for l in range(5):
        want = _oracle_logs(blocks, x, l)
        got = res.block_log_singular_values[l, :, : want.shape[1]]
        _compare_logs(got, want, TOL64)
        assert np.isnan(res.block_log_singular_values[l, :, want.shape[1] :]).all()


def test_start_and_stop_select_a_sub_chain_by_index_or_name():
    net = _mlp()
    blocks = _blocks(net)
    x = torch.randn(2, 12, dtype=F64)
    res = singular_values(blocks, x, start="2", stop=3)
    h = net[:2](x).detach()
    sub = blocks[2:4]
    _compare_logs(res.log_singular_values, _oracle_logs(sub, h), TOL64)
    assert res.block_names == ("2", "3")


def test_transformer_encoder_layers_batch_one_whole_sequence_is_the_sample():
    torch.manual_seed(1)
    layers = [
        (
            f"layer{i}",
            nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double().eval(),
        )
        for i in range(2)
    ]
    x = torch.randn(1, 5, 8, dtype=F64)
    snap = [_snapshot(m) for _, m in layers]
    res = singular_values(layers, x)
    assert res.log_singular_values.shape == (1, 40)
    _compare_logs(res.log_singular_values, _oracle_logs(layers, x), TOL64)
    top = singular_values(layers, x, k=5)
    np.testing.assert_allclose(
        top.log_singular_values, res.log_singular_values[:, :5], rtol=0, atol=TOL64
    )
    spec = block_spectrum(layers, x, ncv=12)
    _check_spectrum_against_jacrev(layers, x, spec)
    for (_, m), s in zip(layers, snap):
        _assert_unchanged(m, s)


def test_conv_chain_full_and_top_k():
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1), nn.Tanh()
    ).double()
    x = torch.randn(2, 2, 5, 5, dtype=F64)
    blocks = _blocks(net)
    res = singular_values(blocks, x)
    assert res.log_singular_values.shape == (2, 50)
    _compare_logs(res.log_singular_values, _oracle_logs(blocks, x), TOL64)
    top = singular_values(blocks, x, k=6)
    assert top.method == "krylov" and top.converged.all()
    np.testing.assert_allclose(
        top.log_singular_values, res.log_singular_values[:, :6], rtol=0, atol=TOL64
    )


# ------------------------------------------------------------------------ closed-form chain


def _dyadic_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A product of Householder reflections I - v v^T / 2 with v four ones (v^T v = 4):
    orthogonal with dyadic entries, exact in float64."""
    Q = np.eye(n)
    for _ in range(6):
        v = np.zeros(n)
        v[rng.choice(n, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
        Q = Q - np.outer(Q @ v, v) / 2.0
    return Q


def _closed_form_chain(n: int = 12, depth: int = 100, seed: int = 3):
    rng = np.random.default_rng(seed)
    Qs = [_dyadic_orthogonal(n, rng) for _ in range(depth + 1)]
    base = np.arange(n) - (n - 1) / 2.0  # distinct per index
    exps = np.rint(base[None, :] * 1.3 + rng.integers(-1, 2, (depth, n))).astype(int)
    blocks = []
    for l in range(depth):
        W = Qs[l + 1] @ np.diag(np.ldexp(1.0, exps[l])) @ Qs[l].T
        lin = nn.Linear(n, n, bias=False).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
        blocks.append((f"b{l}", lin))
    logs = np.sort(exps.sum(axis=0) * math.log(2.0))[::-1]
    return blocks, logs, exps


def test_100_block_chain_spanning_hundreds_of_decades_matches_the_closed_form():
    blocks, want, exps = _closed_form_chain()
    assert (want[0] - want[-1]) / math.log(10.0) > 300  # hundreds of orders of magnitude
    x = torch.randn(2, 12, dtype=F64)
    res = singular_values(blocks, x)
    # Relative accuracy 1e-9 for every value, from 1e+150 down to 1e-150.
    np.testing.assert_allclose(res.log_singular_values, np.tile(want, (2, 1)), rtol=0, atol=TOL64)
    # The spectrum after block l: products of the first l + 1 diagonals.
    for l in (0, 9, 49):
        w = np.sort(exps[: l + 1].sum(axis=0) * math.log(2.0))[::-1]
        np.testing.assert_allclose(res.block_log_singular_values[l, 0], w, rtol=0, atol=TOL64)
    top = singular_values(blocks, x, k=3, per_block=False)
    # sigma_2 / sigma_1 ~ 1e-39: far below float64 rounding at sigma_1's scale, so "auto"
    # leaves the Krylov method for the graded subspace iteration.
    assert top.method == "subspace" and top.converged.all()
    np.testing.assert_allclose(top.log_singular_values, np.tile(want[:3], (2, 1)), atol=TOL64)
    assert np.isnan(top.block_log_singular_values[:-1]).all()
    # Forced, the Krylov method gets sigma_1 and says that the others did not converge.
    with pytest.warns(RuntimeWarning, match="krylov iteration stopped after 5 iterations"):
        kr = singular_values(blocks, x, k=3, per_block=False, method="krylov", max_iter=5)
    assert kr.method == "krylov" and not kr.converged.any()
    np.testing.assert_allclose(kr.log_singular_values[:, 0], want[0], rtol=0, atol=TOL64)
    assert (kr.residuals[:, 0] <= kr.tol).all() and (kr.residuals[:, 1:] > kr.tol).all()


def test_krylov_restarts_float32_and_per_block_rows(monkeypatch):
    from vgcore.torchmodel import jacobians

    net = _mlp((64, 64, 64, 64), seed=10)
    blocks = _blocks(net)
    x = torch.randn(2, 64, dtype=F64)
    want = _oracle_logs(blocks, x)
    sub = singular_values(blocks, x, k=4, method="subspace")
    kr = singular_values(blocks, x, k=4)
    assert kr.method == "krylov" and kr.converged.all() and kr.iterations < sub.iterations
    np.testing.assert_allclose(kr.log_singular_values, want[:, :4], rtol=0, atol=TOL64)
    # Per block: the values of M_l V_k, V_k the top-k right singular vectors of M (oracle:
    # dense Jacobians; the Ritz vectors carry about the square root of the values' error).
    for b in range(2):
        Vk = torch.linalg.svd(_sample_jacobian(_chain(blocks, 4), x, b))[2][:4].T
        for l in (0, 1, 2, 4):
            Ml = _sample_jacobian(_chain(blocks, l), x, b)
            w = torch.log(torch.linalg.svdvals(Ml @ Vk)).numpy()
            for res in (kr, sub):
                got = res.block_log_singular_values[l, b]
                np.testing.assert_allclose(got, w, rtol=0, atol=1e-6)
    # A basis of at most 2 blocks: restarted cycles, the same values.
    monkeypatch.setattr(jacobians, "KRYLOV_MAX_BLOCKS", 2)
    small = singular_values(blocks, x, k=4, per_block=False)
    assert small.converged.all() and small.iterations > kr.iterations
    np.testing.assert_allclose(small.log_singular_values, want[:, :4], rtol=0, atol=TOL64)
    # float32: float32 accuracy against the float64 oracle.
    f32 = singular_values(_blocks(net.float()), x.float(), k=4, per_block=False)
    assert f32.method == "krylov" and f32.converged.all()
    np.testing.assert_allclose(f32.log_singular_values, want[:, :4], rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------- top-k


@pytest.mark.parametrize(
    ("method", "oversample", "used"),
    [
        ("subspace", 0, "subspace"),
        ("subspace", 3, "subspace"),
        ("krylov", 0, "krylov"),
        ("krylov", 3, "krylov"),
        ("auto", 0, "krylov"),  # 3 blocks of 4 fit in rank 20
        ("auto", 3, "subspace"),  # 3 blocks of 7 do not
    ],
)
def test_top_k_agrees_with_the_full_spectrum(method, oversample, used):
    net = _mlp((24, 24, 24, 20), seed=4)
    blocks = _blocks(net)
    x = torch.randn(2, 24, dtype=F64)
    full = singular_values(blocks, x)
    top = singular_values(blocks, x, k=4, oversample=oversample, max_iter=2000, method=method)
    assert top.method == used and top.iterations >= 1
    assert top.converged.all() and (top.residuals <= top.tol).all()
    assert top.residuals.shape == (2, 4)
    np.testing.assert_allclose(
        top.log_singular_values, full.log_singular_values[:, :4], rtol=0, atol=TOL64
    )


def test_krylov_with_one_vector_per_block_k_1():
    # Lanczos proper (a block of one): the lone first Ritz value must not pass for converged.
    net = _mlp((24, 24, 24, 20), seed=4)
    x = torch.randn(2, 24, dtype=F64)
    full = singular_values(_blocks(net), x)
    top = singular_values(_blocks(net), x, k=1, oversample=0)
    assert top.method == "krylov" and top.converged.all() and top.iterations > 1
    np.testing.assert_allclose(
        top.log_singular_values, full.log_singular_values[:, :1], rtol=0, atol=TOL64
    )


def test_top_k_equal_to_the_rank_is_one_exact_pass():
    net = _mlp()
    x = torch.randn(2, 12, dtype=F64)
    res = singular_values(_blocks(net), x, k=8)
    assert res.method == "full" and res.iterations == 0
    _compare_logs(res.log_singular_values, _oracle_logs(_blocks(net), x)[:, :8], TOL64)


def test_float32_agrees_with_the_float64_oracle_to_float32_accuracy():
    net = _mlp((16, 16, 16, 16), seed=5)
    x = torch.randn(2, 16, dtype=F64)
    want = _oracle_logs(_blocks(net), x)
    got = singular_values(_blocks(net.float()), x.float())
    assert got.dtype == np.float32
    # Relative 1e-4 per value (float32 rounding through three blocks, condition ~1e2).
    _compare_logs(got.log_singular_values, want, 1e-4, decades=2.0)
    top = singular_values(_blocks(net), x.float(), k=3)
    np.testing.assert_allclose(top.log_singular_values, want[:, :3], rtol=0, atol=1e-4)


# ------------------------------------------------------------------------ block spectrum


def _check_spectrum_against_jacrev(blocks, x, spec, tol=TOL64):
    h = x
    for row, (name, m) in enumerate(blocks):
        assert spec.block_names[row] == name
        for b in range(x.shape[0]):
            J = _sample_jacobian(m, h, b)
            s = float(torch.linalg.svdvals(J)[0])
            np.testing.assert_allclose(spec.sigma_max[row, b], s, rtol=tol)
            if J.shape[0] == J.shape[1]:
                rho = float(torch.linalg.eigvals(J).abs().max())
                np.testing.assert_allclose(spec.spectral_radius[row, b], rho, rtol=tol)
            else:
                assert np.isnan(spec.spectral_radius[row, b])
        h = m(h).detach()
    assert spec.reliable.all() and spec.converged.all()
    assert (spec.sigma_iterations > 0).all()


def test_block_spectrum_of_an_mlp_with_restarts_matches_jacrev():
    net = _mlp((30, 30, 24), seed=6)
    x = torch.randn(2, 30, dtype=F64)
    spec = block_spectrum(_blocks(net), x, ncv=8)
    assert isinstance(spec, TorchJacobianSpectrum) and spec.method == "arnoldi"
    _check_spectrum_against_jacrev(_blocks(net), x, spec)
    # ncv=8 < 30: the solves restarted (more applications than one cycle).
    assert spec.sigma_iterations.max() > 8 and spec.radius_iterations[:2].max() > 8
    assert (spec.radius_iterations[2] == 0).all()  # 30 -> 24: not square
    df = spec.to_pandas()
    assert list(df["name"].unique()) == ["0", "1", "2"] and len(df) == 6


def test_block_spectrum_of_a_conv_chain_and_which():
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 2, 3, padding=1))
    net = net.double()
    x = torch.randn(2, 2, 4, 4, dtype=F64)
    spec = block_spectrum(_blocks(net), x, ncv=10)
    _check_spectrum_against_jacrev(_blocks(net), x, spec)
    sel = block_spectrum(_blocks(net), x, which=["2", 0], ncv=10)
    assert list(sel.steps) == [0, 2] and sel.block_names == ("0", "2")
    np.testing.assert_allclose(sel.sigma_max, spec.sigma_max[[0, 2]], rtol=1e-12)


def test_block_spectrum_measures_values_beyond_the_float32_range():
    # sigma_max = 2^140 x sigma(W): J^T J (2^280) overflows float32, the scaled solve does not.
    torch.manual_seed(8)
    lin = nn.Linear(6, 6, bias=False)
    with torch.no_grad():
        lin.weight.mul_(2.0**100)
    x = torch.randn(1, 6)
    spec = block_spectrum([("big", lin)], x, tol=1e-5)
    W = lin.weight.detach().double() / 2.0**100
    want = float(torch.log(torch.linalg.svdvals(W)[0])) + 100 * math.log(2.0)
    np.testing.assert_allclose(spec.log_sigma_max[0, 0], want, rtol=1e-5)
    rho = float(torch.log(torch.linalg.eigvals(W).abs().max())) + 100 * math.log(2.0)
    np.testing.assert_allclose(spec.log_spectral_radius[0, 0], rho, rtol=1e-5)


# ---------------------------------------------------------------------- graded Jacobi


@pytest.mark.parametrize(("r", "n", "spread"), [(1, 1, 1.0), (5, 7, 3.0), (6, 6, 400.0)])
def test_graded_jacobi_matches_the_native_one(r, n, spread):
    # Oracle: vgcore's C++ graded one-sided Jacobi (itself tested against numpy's SVD).
    rng = np.random.default_rng(r + n)
    B = rng.standard_normal((r, n))
    d = rng.uniform(-spread, spread, r)
    want, _ = _core.testing.graded_jacobi(B, d)
    got, sweeps, X, Y = _graded_svd(torch.tensor(B)[None], torch.tensor(d)[None], vectors=True)
    np.testing.assert_allclose(got[0].numpy(), np.sort(want)[::-1], rtol=0, atol=1e-12)
    assert 1 <= int(sweeps[0]) <= 80
    if spread < 10:  # the vectors: G = diag(e^d) B = X diag(sigma) Y^T, formed explicitly
        G = np.exp(d)[:, None] * B
        rebuilt = X[0].numpy() @ np.diag(np.exp(got[0].numpy())) @ Y[0].numpy().T
        np.testing.assert_allclose(rebuilt, G, rtol=0, atol=1e-12 * np.abs(G).max())


# ------------------------------------------------------------------ results and hygiene


def test_result_methods_repr_pandas_and_plot():
    pytest.importorskip("pandas")
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    net = _mlp()
    res = singular_values(_blocks(net), torch.randn(2, 12, dtype=F64))
    text = repr(res)
    assert "TorchJacobianSingularValues(5 blocks, all 8 values x B=2, full, float64)" in text
    df = res.to_pandas()
    assert set(df["block"]) == {"0", "1", "2", "3", "4"}
    last = df[df["block"] == "4"].sort_values(["sample", "index"])
    np.testing.assert_allclose(last["log_singular_value"], res.log_singular_values.ravel())
    assert res.plot() is not None and res.plot(kind="histogram") is not None
    with pytest.raises(ValueError, match="kind must be 'blocks' or 'histogram', got 'x'"):
        res.plot(kind="x")
    top = singular_values(_blocks(net), torch.randn(2, 12, dtype=F64), k=2)
    assert "subspace iteration" in repr(top) and "converged" in repr(top)


def test_modules_are_left_unchanged_with_batchnorm_in_eval_mode():
    torch.manual_seed(9)
    net = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Tanh()).double().eval()
    for p in net[0].parameters():
        p.requires_grad_(False)
    snap = _snapshot(net)
    x = torch.randn(3, 6, dtype=F64)
    singular_values(_blocks(net), x)
    singular_values(_blocks(net), x, k=2)
    block_spectrum(_blocks(net), x)
    _assert_unchanged(net, snap)


class _Pair(nn.Module):
    def forward(self, h):
        return h, h


class _Mix(nn.Module):
    def forward(self, h):
        return h + h.mean(dim=0, keepdim=True)


def test_bad_input_errors_name_the_argument():
    net = _mlp()
    blocks = _blocks(net)
    x = torch.randn(2, 12, dtype=F64)
    with pytest.raises(ValueError, match=r"k must be in \[1, 8\] .* got 9"):
        singular_values(blocks, x, k=9)
    with pytest.raises(ValueError, match=r"k must be in \[1, 8\] .* got 0"):
        singular_values(blocks, x, k=0)
    with pytest.raises(TypeError, match=r"k must be None or an int, got 2\.5"):
        singular_values(blocks, x, k=2.5)
    with pytest.raises(ValueError, match=r"start must be a block index in \[-5, 4\], got 5"):
        singular_values(blocks, x, start=5)
    with pytest.raises(ValueError, match=r"stop must be a block index in \[-5, 4\], got -6"):
        singular_values(blocks, x, stop=-6)
    with pytest.raises(
        ValueError, match="stop must be a block index or name, got unknown name 'z'"
    ):
        singular_values(blocks, x, stop="z")
    with pytest.raises(ValueError, match="stop must not come before start"):
        singular_values(blocks, x, start=3, stop=1)
    with pytest.raises(ValueError, match=r"tol must be a number in \(0, 1\), got 2"):
        singular_values(blocks, x, k=2, tol=2)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        singular_values(blocks, x.long())
    with pytest.raises(ValueError, match=r"x must have shape \(B, \.\.\.\)"):
        singular_values(blocks, x[0])
    with pytest.raises(TypeError, match=r"blocks\[1\] must be a \(name, torch.nn.Module\) pair"):
        singular_values([blocks[0], net[1]], x)
    with pytest.raises(TypeError, match=r"block 'pair' returned tuple, not one tensor"):
        singular_values([("lin", nn.Linear(12, 12).double()), ("pair", _Pair())], x)
    with pytest.raises(ValueError, match="block 'mix' mixes the samples of the batch"):
        singular_values([("mix", _Mix())], x)
    with pytest.raises(ValueError, match=r"method must be 'auto', 'krylov' or 'subspace', got 'x'"):
        singular_values(blocks, x, k=2, method="x")
    with pytest.raises(ValueError, match=r"method must be 'auto' or 'arnoldi'.* got 'exact'"):
        block_spectrum(blocks, x, method="exact")
    with pytest.raises(ValueError, match=r"which must be a block index in \[-5, 4\], got 7"):
        block_spectrum(blocks, x, which=[7])


def test_training_mode_batchnorm_and_dropout_are_refused_and_left_as_they_were():
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).double()
    snap = _snapshot(bn)
    x = torch.randn(3, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"block '1' is a BatchNorm in training mode"):
        singular_values(_blocks(bn), x)
    _assert_unchanged(bn, snap)
    layer = nn.TransformerEncoderLayer(4, 2, 8, batch_first=True).double()
    with pytest.raises(ValueError, match=r"block 'enc' \(its 'self_attn'\) applies dropout"):
        block_spectrum([("enc", layer)], torch.randn(1, 3, 4, dtype=F64))
    assert layer.training

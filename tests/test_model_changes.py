"""Models changed after construction: in-place updates are always seen, invalid changes are
named; imported modules keep their layout and modes; one dtype rule for half precision."""

from __future__ import annotations

import numpy as np
import pytest

import vgcore
from vgcore import GRU, LSTM, MLP, RNN

RNG = np.random.default_rng(0)


def _mlp() -> MLP:
    return MLP.from_sizes([6] * 5, "tanh", seed=1, norm="layernorm")


def _highway() -> MLP:
    return MLP.from_sizes([6] * 4, "tanh", seed=2, highway=True)


def _recurrent(cls: type) -> object:
    return cls.from_sizes(3, 5, seed=3)


MODELS = {
    "mlp": _mlp,
    "highway": _highway,
    "rnn": lambda: _recurrent(RNN),
    "lstm": lambda: _recurrent(LSTM),
    "gru": lambda: _recurrent(GRU),
}


def _input(model: object) -> np.ndarray:
    rng = np.random.default_rng(5)
    if isinstance(model, MLP):
        return rng.normal(size=(3, model.input_size))
    return rng.normal(size=(7, 3, model.input_size))  # type: ignore[attr-defined]


ANALYSES = {
    "gradient_flow": lambda m, x: vgcore.gradient_flow(m, x, dtype=np.float32, param_grads=True),
    "lyapunov": lambda m, x: vgcore.lyapunov(m, x, k=2, dtype=np.float32),
    "jacobian_spectrum": lambda m, x: vgcore.jacobian_spectrum(m, x, dtype=np.float32),
    "jacobian_singular_values": lambda m, x: vgcore.jacobian_singular_values(
        m, x, dtype=np.float32
    ),
}


def _numbers(result: object) -> list[np.ndarray]:
    """Every array-valued field of a result, for exact comparison."""
    out = []
    for key, value in sorted(vars(result).items()):
        if key == "model":
            continue
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            out.append(value)
        elif isinstance(value, dict):
            out += [np.asarray(v, dtype=float) for _, v in sorted(value.items())]
    return out


@pytest.mark.parametrize("analysis", sorted(ANALYSES))
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_float32_results_follow_in_place_updates(kind: str, analysis: str) -> None:
    """A float64 model analysed in float32, then updated in place: the next float32 call equals
    a fresh model's, for every parameter (a stale cast copy would fail this)."""
    if analysis == "jacobian_singular_values" and kind not in ("mlp", "highway"):
        pytest.skip("singular values of deep products: MLPs")
    model = MODELS[kind]()
    x = _input(model)
    run = ANALYSES[analysis]
    run(model, x)  # a first float32 call (it used to cache a cast copy)
    for name, arr in model.parameters().items():
        before = [a.copy() for a in _numbers(run(model, x))]
        saved = arr.copy()
        arr *= 1.5
        arr += 0.25  # zero-initialised parameters (biases, beta) change too
        got = _numbers(run(model, x))
        fresh = _numbers(run(model.astype(np.float64), x))
        assert len(got) == len(fresh)
        for g, f in zip(got, fresh):
            np.testing.assert_array_equal(g, f, err_msg=f"{kind} {analysis} after changing {name}")
        assert any(not np.array_equal(b, g, equal_nan=True) for b, g in zip(before, got)), (
            f"{name} had no effect on {analysis}"
        )
        arr[...] = saved


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: m.weights.clear(), r"weights must contain at least one layer"),
        (lambda m: m.weights.append(np.eye(6)), r"biases must have 5 entries"),
        (lambda m: m.activations.__setitem__(1, 42), r"activations\[1\]"),
        (lambda m: m.activations.__setitem__(1, "no-such"), r"activations\[1\]"),
        (lambda m: m.weights.__setitem__(2, np.ones((6, 5))), r"weights\[2\] must have shape"),
        (lambda m: m.weights[1].__setitem__((0, 0), np.nan), r"weights\[1\] contains NaN"),
        (lambda m: m.biases[0].__setitem__(2, np.inf), r"biases\[0\] contains Inf"),
        (lambda m: m.norm_weights.__setitem__(0, np.ones(3)), r"norm_weights\[0\] must have shape"),
        (lambda m: setattr(m, "blocks", ["plain"]), r"block must have 4 entries"),
    ],
)
@pytest.mark.parametrize("analysis", sorted(ANALYSES))
def test_invalid_changes_name_the_parameter(change, match, analysis) -> None:
    model = MLP.from_sizes([6] * 5, "tanh", seed=1, norm="layernorm")
    x = _input(model)
    change(model)
    with pytest.raises((ValueError, TypeError), match=f"changed after construction.*{match}"):
        ANALYSES[analysis](model, x)


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: setattr(m, "weight_hh", m.weight_hh[:, :4]), r"weight_hh must have shape"),
        (lambda m: m.weight_ih.__setitem__((0, 0), np.nan), r"weight_ih contains NaN"),
        (lambda m: setattr(m, "bias_hh", np.zeros(2)), r"bias_hh must have shape"),
        (lambda m: setattr(m, "weight_ih", "abc"), r"weight_ih must be a real numeric array"),
    ],
)
def test_invalid_recurrent_changes_name_the_parameter(cls, change, match) -> None:
    model = cls.from_sizes(3, 5, seed=0)
    x = _input(model)
    change(model)
    for run in (vgcore.gradient_flow, vgcore.lyapunov, vgcore.jacobian_spectrum):
        with pytest.raises((ValueError, TypeError), match=match):
            run(model, x)


def test_validate_is_public() -> None:
    model = _mlp()
    model.validate()
    model.weights[0][0, 0] = np.inf
    with pytest.raises(ValueError, match=r"weights\[0\] contains Inf"):
        model.validate()


def test_deferred_scan_still_names_nan_weight_behind_saturation() -> None:
    """An Inf weight behind tanh keeps the forward pass finite; the error names the weight."""
    m = MLP.from_sizes([8] * 4, "tanh", seed=0)
    m.weights[1][0, 0] = np.inf
    with pytest.raises((ValueError, FloatingPointError), match=r"weights\[1\] contains Inf"):
        vgcore.gradient_flow(m, RNG.normal(size=(4, 8)))


# -- layout --------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_first", [False, True])
def test_batch_first_module_takes_its_own_batch(torch, batch_first: bool) -> None:
    mod = torch.nn.GRU(3, 4, batch_first=batch_first).double()
    model = GRU.from_torch(mod)
    T, B = 9, 2
    x = RNG.normal(size=(B, T, 3) if batch_first else (T, B, 3))
    flow = vgcore.gradient_flow(model, x, keep_grads=True)
    assert len(flow.log_grad_norms) == T + 1 and flow.batch_size == B
    assert flow.grads.shape == ((B, T + 1, 4) if batch_first else (T + 1, B, 4))
    xt = torch.tensor(x, requires_grad=True)
    out, _ = mod(xt)
    last = out[:, -1] if batch_first else out[-1]
    np.testing.assert_allclose(flow.output, last.detach().numpy(), rtol=1e-12)
    sp = vgcore.jacobian_spectrum(model, x)
    assert sp.spectral_radius.shape == (T, B)
    if batch_first:  # the time-major reading of the same array would need T = 2 steps
        with pytest.raises(ValueError, match=r"batch_first: \(B, T, 3\)"):
            vgcore.gradient_flow(model, x[..., :2])
    assert "batch_first=True" in repr(model) or not batch_first


# -- imported modules: modes and half precision ----------------------------------------------
def test_dropout_in_train_mode_is_noted(torch) -> None:
    seq = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Dropout(0.2))
    m = MLP.from_torch(seq)
    assert any("Dropout" in n and "train()" in n for n in m.notes)
    flow = vgcore.gradient_flow(m, RNG.normal(size=(2, 4)))
    assert "evaluation semantics" in repr(flow)
    assert any("Dropout" in n for n in vgcore.diagnose(m, check=False).notes)
    assert MLP.from_torch(seq.eval()).notes == ()
    assert seq.training is False  # untouched by vgcore: we set it above


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_modules_import_as_float32(torch, half: str) -> None:
    dt = getattr(torch, half)
    torch.manual_seed(0)
    mods = [
        torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh()).to(dt),
        torch.nn.LSTM(4, 3).to(dt),
        torch.nn.GRU(4, 3).to(dt),
        torch.nn.RNN(4, 3).to(dt),
    ]
    for mod, cls in zip(mods, [MLP, LSTM, GRU, RNN]):
        m = cls.from_torch(mod)
        assert m.dtype == np.float32, type(mod).__name__
        exact = {k: v.float().numpy() for k, v in mod.state_dict().items()}
        for got in m.parameters().values():
            assert any(np.array_equal(got, e) for e in exact.values())
    # inputs in half precision are read exactly too
    x = torch.randn(2, 4).to(dt)
    flow = vgcore.gradient_flow(MLP.from_torch(mods[0]), x)
    assert np.isfinite(flow.log_grad_norms).all()


def test_complex_and_integer_tensors_are_refused(torch) -> None:
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="x must be a real numeric array"):
        vgcore.gradient_flow(MLP.from_torch(lin), torch.ones(2, 2, dtype=torch.complex64))


# -- sizes, seeds, diagnose arguments, checkpoints -----------------------------------------
def test_from_sizes_refuses_beyond_memory_before_allocating() -> None:
    with pytest.raises(vgcore.InsufficientMemoryError, match="reduce the depth or width"):
        MLP.from_sizes([4096] * 100_000)
    with pytest.raises(vgcore.InsufficientMemoryError, match=r"LSTM\.from_sizes"):
        LSTM.from_sizes(10, 10**6)


@pytest.mark.parametrize(
    ("seed", "exc", "match"),
    [
        (1.5, TypeError, "seed must be an integer"),
        (2.0, TypeError, "seed must be an integer"),
        (True, TypeError, "seed must be an integer"),
        (-1, ValueError, r"seed must be an integer in \[0, 2\*\*63\)"),
        (2**70, ValueError, r"seed must be an integer in \[0, 2\*\*63\)"),
        ("7", TypeError, "seed must be an integer"),
    ],
)
def test_bad_seeds(seed, exc, match) -> None:
    with pytest.raises(exc, match=match):
        MLP.from_sizes([3, 3], seed=seed)
    with pytest.raises(exc, match=match):
        RNN.from_sizes(2, 3, seed=seed)
    with pytest.raises(exc, match=match):
        vgcore.diagnose(_mlp(), seed=seed, check=False)


def test_numpy_integer_seed_and_generator() -> None:
    a = MLP.from_sizes([3, 3], seed=np.int64(4))
    b = MLP.from_sizes([3, 3], seed=np.random.default_rng(4))
    np.testing.assert_array_equal(a.weights[0], b.weights[0])


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"steps": 0}, ValueError, "steps must be >= 1"),
        ({"batch": 0}, ValueError, "batch must be >= 1"),
        ({"batch": 2.5}, TypeError, "batch must be an integer"),
        ({"check": "yes"}, TypeError, "check must be True or False"),
    ],
)
def test_diagnose_arguments(kw, exc, match) -> None:
    with pytest.raises(exc, match=match):
        vgcore.diagnose(RNN.from_sizes(2, 3), **kw)


def test_checkpoint_with_empty_recurrent_weight(torch, tmp_path) -> None:
    from vgcore._checkpoint import CheckpointError, load_state_dict, model_from_state_dict

    path = tmp_path / "empty.pt"
    torch.save({"weight_ih_l0": torch.zeros(0, 3), "weight_hh_l0": torch.zeros(0, 0)}, path)
    with pytest.raises(CheckpointError, match=r"weight_hh_l0 has shape \(0, 0\)"):
        model_from_state_dict(load_state_dict(path))


def test_bfloat16_checkpoint_loads_as_float32(torch, tmp_path) -> None:
    from vgcore._checkpoint import load_state_dict, model_from_state_dict

    path = tmp_path / "bf16.pt"
    torch.save(torch.nn.GRU(3, 2).to(torch.bfloat16).state_dict(), path)
    m = model_from_state_dict(load_state_dict(path))
    assert isinstance(m, GRU) and m.dtype == np.float32

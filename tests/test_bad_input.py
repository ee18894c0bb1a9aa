"""The bad-input battery: every public entry point, every model kind, every kind of bad
argument. Each case must either raise a clear exception that names the argument, or give the
same result as the canonical input (a float64, C-contiguous, writeable copy).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import vgcore
from vgcore import GRU, LSTM, MLP, RNN

CLEAR = (TypeError, ValueError, FloatingPointError, MemoryError)
B, T, IN, N = 3, 5, 4, 4

KINDS: dict[str, Callable[[], Any]] = {
    "mlp": lambda: MLP.from_sizes([IN] * 4, "tanh", seed=0),
    "rnn": lambda: RNN.from_sizes(IN, N, seed=0),
    "lstm": lambda: LSTM.from_sizes(IN, N, seed=0),
    "gru": lambda: GRU.from_sizes(IN, N, seed=0),
}

ENTRY_POINTS: dict[str, Callable[..., Any]] = {
    "gradient_flow": lambda m, x, **kw: vgcore.gradient_flow(m, x, **kw),
    "lyapunov": lambda m, x, **kw: vgcore.lyapunov(m, x, k=2, **kw),
    "jacobian_spectrum": lambda m, x, **kw: vgcore.jacobian_spectrum(m, x, **kw),
    "jacobian_singular_values": lambda m, x, **kw: vgcore.jacobian_singular_values(m, x, **kw),
    "diagnose": lambda m, x, **kw: vgcore.diagnose(m, x, check=False, **kw),
}


def _x(kind: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.normal(size=(B, IN) if kind == "mlp" else (T, B, IN))


def _numbers(result: Any) -> list[np.ndarray]:
    """The float arrays of a result (diagnosis: its flow), for exact comparison."""
    if isinstance(result, vgcore.Diagnosis):
        result = result.flow
    out = []
    for _key, value in sorted(vars(result).items()):
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            out.append(value)
    return out


def _names(exc: BaseException, arg: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(arg)}(?![\w])", str(exc)) is not None


def _check(call: Callable[[], Any], arg: str, expected: Callable[[], Any] | None) -> None:
    """Either a clear exception naming ``arg``, or (when ``expected`` is given) the same
    numbers as ``expected()``."""
    try:
        got = call()
    except CLEAR as exc:
        if isinstance(exc, MemoryError):  # says how much is needed, and of what
            assert "GiB" in str(exc), f"{type(exc).__name__} without the size needed: {exc}"
            return
        assert _names(exc, arg), f"{type(exc).__name__} does not name {arg!r}: {exc}"
        return
    assert expected is not None, f"accepted a bad {arg} without an error"
    want = expected()
    a, b = _numbers(got), _numbers(want)
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def _bad_x(kind: str) -> dict[str, tuple[Any, Any]]:
    """name -> (bad x, equivalent good x or None when it must be refused)."""
    x = _x(kind)
    fortran = np.asfortranarray(x)
    strided = np.repeat(x, 2, axis=0)[::2]
    readonly = x.copy()
    readonly.setflags(write=False)
    bools = x > 0
    ints = np.round(3 * x).astype(np.int32)
    half = x.astype(np.float16)
    nan = x.copy()
    nan.flat[3] = np.nan
    inf = x.copy()
    inf.flat[-1] = -np.inf
    huge = np.broadcast_to(np.zeros(1), (10**7, 10**4, IN) if kind != "mlp" else (10**11, IN))
    return {
        "rank-low": (x[0], None),
        "rank-high": (x[None], None),
        "last-dim": (np.concatenate([x, x[..., :1]], axis=-1), None),
        "complex": (x.astype(complex), None),
        "object": (np.array([["a"] * IN] * B, dtype=object), None),
        "string": ("abc", None),
        "none": (None, None),
        "nested-ragged": ([[1.0, 2.0], [3.0]], None),
        "nan": (nan, None),
        "inf": (inf, None),
        "empty-batch": (x[..., :0, :] if kind != "mlp" else x[:0], None),
        "empty-steps": (x[:0], None),
        "huge": (huge, None),
        "fortran": (fortran, x),
        "strided": (strided, x),
        "readonly": (readonly, x),
        "bool": (bools, bools.astype(np.float64)),
        "int32": (ints, ints.astype(np.float64)),
        "float16": (half, half.astype(np.float64)),
        "list": (x.tolist(), x),
    }


CASES = [
    (entry, kind, case)
    for entry in ENTRY_POINTS
    for kind in KINDS
    for case in _bad_x("mlp" if kind == "mlp" else "rnn")
    if not (entry == "jacobian_singular_values" and kind != "mlp" and case == "huge")
    and not (entry == "diagnose" and case == "none")  # None: generated inputs
]


@pytest.mark.parametrize(("entry", "kind", "case"), CASES)
def test_bad_x(entry: str, kind: str, case: str) -> None:
    model = KINDS[kind]()
    bad, good = _bad_x(kind)[case]
    run = ENTRY_POINTS[entry]
    with np.errstate(all="raise"):
        _check(
            lambda: run(model, bad),
            "x",
            None if good is None else (lambda: run(model, good)),
        )


@pytest.mark.parametrize("entry", ["gradient_flow", "lyapunov", "jacobian_spectrum"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("case", ["shape", "nan", "type", "pair-shape"])
def test_bad_h0(entry: str, kind: str, case: str) -> None:
    model = KINDS[kind]()
    x = _x(kind)
    h = np.zeros((B, N))
    bad: Any = {
        "shape": np.zeros((B + 1, N)),
        "nan": np.full((B, N), np.nan),
        "type": "zeros",
        "pair-shape": (h, np.zeros((B, N + 1))) if kind == "lstm" else np.zeros((B, N, 1)),
    }[case]
    if kind == "lstm" and case in ("shape", "nan"):
        bad = (bad, h)
    _check(lambda: ENTRY_POINTS[entry](model, x, h0=bad), "h0", None)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("case", ["shape", "nan", "complex", "steps"])
def test_bad_cotangent(kind: str, case: str) -> None:
    model = KINDS[kind]()
    x = _x(kind)
    out = model.output_size if kind == "mlp" else N
    bad = {
        "shape": np.ones((B, out + 1)),
        "nan": np.full((B, out), np.nan),
        "complex": np.ones((B, out), complex),
        "steps": np.ones((T + 1, B, out)),
    }[case]
    _check(lambda: vgcore.gradient_flow(model, x, cotangent=bad), "cotangent", None)


SCALARS: list[tuple[str, str, list[Any]]] = [
    ("gradient_flow", "num_threads", [0, -1, 1.5, "2", 2**40, True]),
    ("lyapunov", "num_threads", [0, 2**40]),
    ("jacobian_spectrum", "num_threads", [0, 2**40]),
    ("jacobian_singular_values", "num_threads", [0, 2**40]),
    ("gradient_flow", "dtype", ["float16", np.complex128, "int32", "nonsense", object]),
    ("lyapunov", "dtype", [np.float16]),
    ("jacobian_spectrum", "dtype", [np.int64]),
    ("gradient_flow", "saturation_threshold", [-0.1, 2.0, np.nan, "x"]),
    ("gradient_flow", "clip_norm", [0.0, -1.0, np.inf, np.nan, "1"]),
    ("gradient_flow", "progress", [1, "print"]),
    ("lyapunov", "progress", [1]),
    ("lyapunov", "seed", [1.5, -1, 2**70, "s"]),
    ("jacobian_spectrum", "seed", [1.5, -1, 2**70, "s"]),
    ("lyapunov", "burn_in", [-1, 1.5]),
    ("lyapunov", "qr_every", [0, 2.5]),
    ("diagnose", "ratio", [0.0, 1.0, -1.0, "a"]),
    ("diagnose", "seed", [1.5, -1]),
]


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
@pytest.mark.parametrize(
    ("entry", "arg", "value"), [(e, a, v) for e, a, vs in SCALARS for v in vs], ids=str
)
def test_bad_scalar_arguments(kind: str, entry: str, arg: str, value: Any) -> None:
    model = KINDS[kind]()
    if entry == "jacobian_singular_values" and kind != "mlp":
        pytest.skip("MLP only")
    _check(lambda: ENTRY_POINTS[entry](model, _x(kind), **{arg: value}), arg, None)


@pytest.mark.parametrize("value", [0, -3, 2.5, 10**9, "4"])
def test_bad_k(value: Any) -> None:
    model = KINDS["gru"]()
    _check(lambda: vgcore.lyapunov(model, _x("gru"), k=value), "k", None)


@pytest.mark.parametrize(
    ("build", "arg"),
    [
        (lambda: MLP([np.ones((2, 2))], activations="bogus"), "activations"),
        (lambda: MLP([np.ones((2, 2)), np.ones((3, 3))]), "weights[1]"),
        (lambda: MLP([np.ones((2, 2), complex)]), "weights[0]"),
        (lambda: MLP([np.ones(2)]), "weights[0]"),
        (lambda: MLP([]), "weights"),
        (lambda: MLP([np.ones((2, 2))], [np.ones(3)]), "biases[0]"),
        (lambda: MLP([np.full((2, 2), np.nan)]), "weights[0]"),
        (lambda: MLP([np.ones((2, 3))], block="residual"), "block[0]"),
        (lambda: MLP([np.ones((2, 2))], eps=-1), "eps"),
        (lambda: MLP([np.ones((2, 2))], dtype="float16"), "dtype"),
        (lambda: MLP.from_sizes([3, 0]), "sizes[1]"),
        (lambda: MLP.from_sizes([3, 2.5]), "sizes[1]"),
        (lambda: MLP.from_sizes("33"), "sizes"),
        (lambda: MLP.from_sizes([3]), "sizes"),
        (lambda: MLP.from_sizes([3, 3], seed=1.5), "seed"),
        (lambda: MLP.from_sizes([3, 3], init="bogus"), "init"),
        (lambda: RNN(np.ones((2, 3)), np.ones((2, 3))), "weight_hh"),
        (lambda: LSTM(np.ones((8, 3)), np.ones((4, 2))), "weight_hh"),
        (lambda: GRU(np.ones((5, 3)), np.ones((6, 2))), "weight_ih"),
        (lambda: RNN(np.ones((2, 3)), np.ones((2, 2)), np.ones(3)), "bias_ih"),
        (lambda: RNN(np.ones((2, 3)), np.ones((2, 2)), nonlinearity="sigmoid"), "nonlinearity"),
        (lambda: RNN.from_sizes(0, 3), "input_size"),
        (lambda: LSTM.from_sizes(3, -1), "hidden_size"),
        (lambda: GRU.from_sizes(3, 3, seed=-2), "seed"),
    ],
)
def test_bad_model_construction(build: Callable[[], Any], arg: str) -> None:
    _check(build, arg, None)


def test_not_a_model() -> None:
    for entry in ENTRY_POINTS.values():
        with pytest.raises(TypeError, match="model must be a vgcore"):
            entry("mlp", np.ones((2, 2)))

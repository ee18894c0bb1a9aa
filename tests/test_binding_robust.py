"""Arrays whose dtype is equal but not the same object as numpy's canonical one (an array
unpickled, or received from a worker process) are accepted like any other: the bindings
compare dtypes by equivalence, not identity (they once answered "x must have dtype float64,
got float64", and dispatched an unpickled float32 array to the float64 kernels)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import vgcore
from vgcore import GRU, LSTM, MLP, RNN


def _fresh_dtype(a: np.ndarray) -> np.ndarray:
    b = pickle.loads(pickle.dumps(a))
    assert b.dtype == a.dtype and b.dtype is not np.dtype(a.dtype.name)
    return b


def _model(cls, dtype, rng):
    if cls is MLP:
        return MLP([rng.standard_normal((3, 3)).astype(dtype) for _ in range(2)], None, "tanh")
    g = cls.gates
    return cls(
        *(
            rng.standard_normal(s).astype(dtype)
            for s in ((g * 3, 2), (g * 3, 3), (g * 3,), (g * 3,))
        )
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", [MLP, RNN, LSTM, GRU])
def test_unpickled_arrays_are_accepted(cls, dtype) -> None:
    rng = np.random.default_rng(0)
    model = _model(cls, dtype, rng)
    shape = (4, 3) if cls is MLP else (5, 2, 2)
    x = rng.standard_normal(shape).astype(dtype)
    xp = _fresh_dtype(x)
    want = vgcore.gradient_flow(model, x)
    got = vgcore.gradient_flow(model, xp)
    assert got.dtype == want.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.log_grad_norms, want.log_grad_norms)
    # the whole model unpickled too (its weights carry fresh dtypes)
    mp = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(vgcore.gradient_flow(mp, xp).log_grad_norms, want.log_grad_norms)
    np.testing.assert_array_equal(
        vgcore.lyapunov(mp, xp).exponents, vgcore.lyapunov(model, x).exponents
    )
    np.testing.assert_array_equal(
        vgcore.jacobian_spectrum(mp, xp).log_sigma_max,
        vgcore.jacobian_spectrum(model, x).log_sigma_max,
    )

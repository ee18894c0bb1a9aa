"""Every activation and its derivative against PyTorch autograd, including kinks, large |x|,
+-inf and NaN, in float64 and float32."""

from __future__ import annotations

import math

import numpy as np
import pytest

import vgcore
from vgcore._loader import _core

CASES = [
    ("identity", {}),
    ("sigmoid", {}),
    ("tanh", {}),
    ("relu", {}),
    ("leaky_relu", {}),
    ("leaky_relu", {"negative_slope": 0.2}),
    ("elu", {}),
    ("elu", {"alpha": 0.5}),
    ("selu", {}),
    ("softplus", {}),
    ("softplus", {"beta": 2.0, "threshold": 5.0}),
    ("silu", {}),
    ("gelu", {}),
    ("gelu_tanh", {}),
]
IDS = [f"{n}-{'-'.join(f'{k}{v:g}' for k, v in p.items())}" if p else n for n, p in CASES]

GRID = np.concatenate(
    [
        np.linspace(-12, 12, 2001),
        [0.0, -0.0, 1e-300, -1e-300, 1e-8, -1e-8, 2.5, -2.5, 9.99, 10.01],
        [30.0, -30.0, 50.0, -50.0, 88.0, -88.0, 700.0, -700.0, 1e30, -1e30],
    ]
)


def torch_reference(torch, act, z):
    mod = vgcore.activations.to_torch_module(act).double()
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    y = mod(zt)
    (dy,) = torch.autograd.grad(y.sum(), zt)
    return y.detach().numpy(), dy.numpy()


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_activation_values_and_derivatives_float64(torch, name, params):
    act = vgcore.Activation(name, **params)
    y, dy = _core.activation(*act.core_args(), GRID.copy())
    ry, rdy = torch_reference(torch, act, GRID)
    # Relative accuracy, plus an absolute floor of a few ulps of the function's scale: in the
    # tails PyTorch itself computes e.g. 1 - tanh(z)^2 with cancellation.
    for got, ref, what in ((y, ry, "phi"), (dy, rdy, "phi'")):
        bad = np.abs(got - ref) > 1e-13 * np.abs(ref) + 1e-15 * (1 + np.abs(GRID))
        assert not bad.any(), (
            f"{name} {what}: worst at z={GRID[bad][0]!r}: {got[bad][0]!r} vs {ref[bad][0]!r}"
        )


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_activation_float32(torch, name, params):
    act = vgcore.Activation(name, **params)
    z = GRID[np.abs(GRID) < 1e20].astype(np.float32)
    y, dy = _core.activation(*act.core_args(), z)
    assert y.dtype == np.float32
    ry, rdy = torch_reference(torch, act, z.astype(np.float64))
    for got, ref, what in ((y, ry, "phi"), (dy, rdy, "phi'")):
        bad = np.abs(got - ref) > 5e-6 * np.abs(ref) + 1e-7 * (1 + np.abs(z))
        assert not bad.any(), (
            f"{name} {what}: worst at z={z[bad][0]!r}: {got[bad][0]!r} vs {ref[bad][0]!r}"
        )


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_special_values(torch, name, params):
    """NaN propagates; +-inf give PyTorch's limits wherever PyTorch gives a number."""
    act = vgcore.Activation(name, **params)
    z = np.array([np.inf, -np.inf, np.nan])
    y, _ = _core.activation(*act.core_args(), z)
    assert np.isnan(y[2])
    ry, _ = torch_reference(torch, act, z)
    ok = ~np.isnan(ry)
    np.testing.assert_array_equal(y[ok], ry[ok])


def test_max_derivative_is_the_supremum():
    z = np.linspace(-20, 20, 400001)
    for name, params in CASES:
        act = vgcore.Activation(name, **params)
        info = _core.activation_info(*act.core_args())
        _, dy = _core.activation(*act.core_args(), z)
        assert info["max_derivative"] == pytest.approx(np.max(np.abs(dy)), rel=1e-6), name


def test_stability_in_the_tails():
    z = np.array([-700.0, -1000.0, 1000.0])
    y, dy = _core.activation("sigmoid", math.nan, math.nan, z)
    assert y[0] == pytest.approx(math.exp(-700.0), rel=1e-12)
    assert y[1] == 0.0 and y[2] == 1.0 and dy[2] == 0.0
    y, _ = _core.activation("softplus", math.nan, math.nan, np.array([-800.0, 800.0]))
    assert y[0] == 0.0 and y[1] == 800.0
    y, dy = _core.activation("tanh", math.nan, math.nan, np.array([1e-10, 25.0]))
    assert y[0] == pytest.approx(1e-10, rel=1e-15) and y[1] == 1.0
    assert dy[1] == pytest.approx(4 * math.exp(-50.0), rel=1e-12)  # not 1 - tanh^2 = 0

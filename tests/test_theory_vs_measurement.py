"""Mean-field predictions next to vgcore's own measurements (the issue's acceptance case)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import vgcore


@pytest.mark.parametrize(
    "sigma_w2,sigma_b2", [(0.7, 0.05), (2.0, 0.05)], ids=["ordered", "chaotic"]
)
def test_width_1000_tanh_mlp_gain_matches_chi1(sigma_w2, sigma_b2):
    width, depth = 1000, 30
    model = vgcore.MLP.from_sizes(
        [width] * (depth + 1),
        "tanh",
        seed=0,
        init={"name": "gaussian", "sigma_w2": sigma_w2, "sigma_b2": sigma_b2},
    )
    mf = vgcore.mean_field("tanh", sigma_w2, sigma_b2)
    # Inputs at the fixed-point length so every layer sits at q*.
    x = np.random.default_rng(1).normal(0, math.sqrt(mf.q_star), (16, width))
    cot = np.random.default_rng(2).normal(size=(16, width))
    flow = vgcore.gradient_flow(model, x, cotangent=cot)
    cmp = vgcore.compare_to_theory(flow, sigma_w2, sigma_b2, burn_in=3)
    assert cmp.mean_gain_ratio == pytest.approx(1.0, abs=0.05)
    assert math.exp(cmp.mean_log_gain) == pytest.approx(mf.chi_1, rel=0.05)


def test_phase_from_theory_agrees_with_measured_direction():
    x = np.random.default_rng(0).normal(size=(32, 200))
    for sw2, expected in [(0.5, "ordered"), (3.0, "chaotic")]:
        mf = vgcore.mean_field("tanh", sw2, 0.0)
        assert mf.phase == expected
        model = vgcore.MLP.from_sizes(
            [200] * 41, "tanh", seed=0, init={"name": "gaussian", "sigma_w2": sw2, "sigma_b2": 0.0}
        )
        flow = vgcore.gradient_flow(model, x)
        assert (flow.log_gain < 0) == (expected == "ordered")

"""Units in names (issue 13, point 7) and parameter kinds (point 10).

Every ``log_*`` name is a natural log, every ``log10_*`` name decades; a ``log10_*`` view is its
``log_*`` twin divided by ln 10 (exactly, in float64: 1e-15 relative).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import vgcore
from vgcore.analysis.gradient_flow import param_kinds
from vgcore.report._tables import report_tables

LN10 = math.log(10.0)


def same(a, b):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-15, atol=0)


def check_columns(df):
    """Log columns name their base, and each log10 column is its natural-log twin / ln 10."""
    for col in df.columns:
        if "log" in col:
            assert {"log", "log10"} & set(col.split("_")), col
        if col.startswith("log10_") and "log_" + col[6:] in df.columns:
            same(df[col], df["log_" + col[6:]] / LN10)


# ------------------------------------------------------------------------------------------
# point 10: only the parameter kinds the model has
def test_plain_mlp_param_grad_norms_have_no_nan_kinds():
    """Was: all-NaN arrays for norm_weight, norm_bias, gate_weight, gate_bias."""
    m = vgcore.MLP.from_sizes([6, 8, 8, 4], "tanh", seed=1)
    x = np.random.default_rng(0).normal(size=(5, 6))
    flow = vgcore.gradient_flow(m, x, param_grads=True)
    assert list(flow.param_grad_norms) == ["weight", "bias"]
    for v in flow.param_grad_norms.values():
        assert np.isfinite(v).all() and v.shape == (3,)
    assert list(flow.log10_param_grad_norms) == ["weight", "bias"]


@pytest.mark.parametrize(
    ("kw", "kinds"),
    [
        ({"bias": False}, ["weight"]),
        ({"norm": "layernorm"}, ["weight", "bias", "norm_weight", "norm_bias"]),
        ({"highway": True}, ["weight", "bias", "gate_weight", "gate_bias"]),
    ],
)
def test_mlp_param_kinds_follow_the_model(kw, kinds):
    m = vgcore.MLP.from_sizes([6, 6, 6], "relu", seed=2, **kw)
    assert list(param_kinds(m)) == kinds
    flow = vgcore.gradient_flow(m, np.ones((3, 6)), param_grads=True)
    assert list(flow.param_grad_norms) == kinds
    assert all(np.isfinite(v).all() for v in flow.log_param_grad_norms.values())


def test_mixed_stack_marks_the_layers_without_a_kind():
    rng = np.random.default_rng(3)
    w = [rng.normal(size=(4, 4)) * 0.5 for _ in range(2)]
    m = vgcore.MLP(
        w,
        [None, rng.normal(size=4)],
        "tanh",
        block=["highway", "plain"],
        gate_weights=[rng.normal(size=(4, 4)), None],
        gate_biases=[rng.normal(size=4), None],
    )
    flow = vgcore.gradient_flow(m, rng.normal(size=(3, 4)), param_grads=True)
    pg = flow.param_grad_norms
    assert list(pg) == ["weight", "bias", "gate_weight", "gate_bias"]
    assert np.isnan(pg["bias"][0]) and np.isfinite(pg["bias"][1])
    assert np.isfinite(pg["gate_weight"][0]) and np.isnan(pg["gate_weight"][1])
    df = flow.to_pandas()
    assert "log10_gate_weight_grad_norm" in df.columns
    check_columns(df)


@pytest.mark.parametrize("bias", [True, False])
def test_recurrent_param_kinds(bias):
    m = vgcore.GRU.from_sizes(3, 5, bias=bias, seed=0)
    flow = vgcore.gradient_flow(m, np.ones((4, 2, 3)), param_grads=True)
    want = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
    assert list(flow.param_grad_norms) == want
    assert all(math.isfinite(v) for v in flow.log_param_grad_norms.values())
    same(
        list(flow.log10_param_grad_norms.values()),
        np.array(list(flow.log_param_grad_norms.values())) / LN10,
    )


# ------------------------------------------------------------------------------------------
# point 7: units
def test_gradient_flow_units():
    m = vgcore.LSTM.from_sizes(3, 6, seed=0)
    flow = vgcore.gradient_flow(m, np.random.default_rng(0).normal(size=(20, 2, 3)))
    same(flow.log10_grad_norms, flow.log_grad_norms / LN10)
    same(flow.log10_cell_grad_norms, flow.log_cell_grad_norms / LN10)
    df = flow.to_pandas()
    assert {"log10_grad_norm", "log_grad_norm", "log10_cell_grad_norm"} <= set(df.columns)
    check_columns(df)
    text = repr(flow)
    assert "10^" in text and "natural log" in text  # printed in decades, attributes named


def test_jacobian_results_units():
    rnn = vgcore.RNN.from_sizes(3, 8, seed=0)
    x = np.random.default_rng(1).normal(size=(30, 2, 3))
    ly = vgcore.lyapunov(rnn, x, k=2)
    same(ly.log10_exponents, ly.exponents / LN10)
    df = ly.to_pandas()
    assert {"log_estimate", "log10_estimate", "log_block_rate", "log10_block_rate"} <= set(
        df.columns
    )
    check_columns(df)
    assert "natural log per step" in repr(ly)

    sp = vgcore.jacobian_spectrum(rnn, x[:5])
    same(sp.log10_sigma_max, sp.log_sigma_max / LN10)
    same(sp.log10_spectral_radius, sp.log_spectral_radius / LN10)
    check_columns(sp.to_pandas())

    sv = vgcore.jacobian_singular_values(rnn, x[:10])
    same(sv.log10_singular_values, sv.log_singular_values / LN10)
    iso = sv.isometry()
    assert iso["std_log10_singular"] == pytest.approx(iso["std_log_singular"] / LN10, rel=1e-15)
    assert iso["log10_mean_squared"] == pytest.approx(iso["log_mean_squared"] / LN10, rel=1e-15)
    assert "decades" in repr(sv)


def test_theory_comparison_units():
    m = vgcore.MLP.from_sizes([32] * 9, "tanh", init={"name": "gaussian", "sigma_w2": 1.2})
    flow = vgcore.gradient_flow(m, np.random.default_rng(0).normal(size=(8, 32)))
    cmp = vgcore.compare_to_theory(flow, 1.2, 0.0)
    same(cmp.log10_measured_gain, cmp.measured_log_gain / LN10)
    check_columns(cmp.to_pandas())


def test_report_tables_name_units():
    m = vgcore.RNN.from_sizes(3, 8, seed=0)
    d = vgcore.diagnose(m, steps=30, batch=4, check=False)
    t = report_tables([d])
    row = t["summary"][0]
    assert "lyapunov" not in row  # natural log and decades are named apart
    assert row["lyapunov_ln"] == pytest.approx(d.evidence["lyapunov"])
    assert row["lyapunov_log10"] == pytest.approx(d.evidence["lyapunov"] / LN10)
    assert "log10_grad_norm" in t["gradient_norms"][0]
    assert "thresholds" in row and "decades" in row["thresholds"]

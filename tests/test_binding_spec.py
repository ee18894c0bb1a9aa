"""The model description as the compiled core parses it (src/convert.hpp), and its test hooks.

One parser serves every binding: the same description gives the same numbers whichever
binding reads it, and a malformed one gets a Python exception that names the entry.
"""

from __future__ import annotations

import numpy as np
import pytest

import vgcore
from vgcore._loader import _core

F64 = np.dtype(np.float64)


def _mlp(**kw):
    return vgcore.MLP.from_sizes([3, 5, 4, 2], "tanh", seed=3, **kw)


def _flow(spec, x, cot=None):
    return _core.dense_gradient_flow(spec, x, cot, True, True, 0.9, 1, None)


def _gru_spec():
    return vgcore.GRU.from_sizes(3, 4, seed=1).to_spec(F64)


X_SEQ = np.random.default_rng(0).standard_normal((5, 2, 3))


def test_dense_flow_takes_the_description_or_its_layer_list_alike():
    m = _mlp()
    spec = m.to_spec(F64)
    x = np.random.default_rng(1).standard_normal((4, 3))
    a, b = _flow(spec, x), _flow(spec["layers"], x)
    for key in ("y", "log_grad_norms", "log_param_grad_norms", "act_std"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for ga, gb in zip(a["grads"], b["grads"]):
        np.testing.assert_array_equal(ga, gb)


def test_dense_flow_refuses_a_recurrent_description():
    with pytest.raises(ValueError, match="model kind must be 'mlp' \\(a dense stack\\), got 'gru'"):
        _flow(_gru_spec(), np.zeros((2, 3)))


def test_recurrent_flow_refuses_a_dense_description():
    spec = _mlp().to_spec(F64)
    with pytest.raises(
        ValueError,
        match="recurrent model kind must be 'rnn_tanh', 'rnn_relu', 'lstm' or 'gru', got 'mlp'",
    ):
        _core.stacked_gradient_flow(
            spec, X_SEQ, None, None, None, None, False, False, False, False, 0.9, 1, None
        )


def test_unknown_model_kind_lists_the_kinds():
    with pytest.raises(
        ValueError,
        match=(
            "model kind must be 'mlp', 'ssm', 'selective_ssm', 'ssm_stack', 'rnn_tanh', "
            "'rnn_relu', 'lstm' or 'gru', got 'tcn'"
        ),
    ):
        _core.jacobian_log_singular_values({**_gru_spec(), "kind": "tcn"}, X_SEQ, None, 1, None)


def test_entries_must_be_numpy_arrays_not_converted_copies():
    # A list would be converted to a temporary array that dies before the core reads it.
    spec = _gru_spec()
    spec["weight_ih"] = spec["weight_ih"].tolist()
    with pytest.raises(TypeError, match="weight_ih must be a numpy array, got list"):
        _core.jacobian_log_singular_values(spec, X_SEQ, None, 1, None)
    dense = _mlp().to_spec(F64)
    dense["layers"][1]["bias"] = list(dense["layers"][1]["bias"])
    with pytest.raises(TypeError, match=r"layers\[1\]\.bias must be a numpy array, got list"):
        _flow(dense, np.zeros((2, 3)))


def test_missing_entries_are_named():
    spec = _gru_spec()
    del spec["bias_hh"]
    with pytest.raises(KeyError, match="bias_hh is missing from the model description"):
        _core.jacobian_log_singular_values(spec, X_SEQ, None, 1, None)
    dense = _mlp().to_spec(F64)
    del dense["layers"][2]["eps"]
    with pytest.raises(KeyError, match=r"layers\[2\]\.eps is missing"):
        _flow(dense, np.zeros((2, 3)))


@pytest.mark.parametrize(
    ("key", "value", "error", "message"),
    [
        ("block", "dense", ValueError, r"layers\[1\]\.block must be 'plain', 'residual' or 'highway', got 'dense'"),
        ("norm", "group", ValueError, r"layers\[1\]\.norm must be 'none', 'layernorm', 'batchnorm' or 'batchnorm_eval', got 'group'"),
        ("act", ("tanh", 1.0), TypeError, r"layers\[1\]\.act must be a tuple \(name, alpha, beta\)"),
    ],
)  # fmt: skip
def test_bad_names_are_named_with_their_layer(key, value, error, message):
    dense = _mlp().to_spec(F64)
    dense["layers"][1][key] = value
    with pytest.raises(error, match=message):
        _flow(dense, np.zeros((2, 3)))
    with pytest.raises(error, match=message):
        _core.jacobian_log_singular_values(dense, np.zeros((2, 3)), None, 1, None)


def test_bidirectional_layer_count_names_both_factors():
    spec = vgcore.LSTM.from_sizes(3, 4, num_layers=2, bidirectional=True, seed=0).to_spec(F64)
    spec["layers"] = spec["layers"][:3]
    with pytest.raises(ValueError, match="num_layers = 2 with 2 directions needs 4 layers, got 3"):
        _core.stacked_gradient_flow(
            spec, X_SEQ, None, None, None, None, False, False, False, False, 0.9, 1, None
        )


# ---- _core.testing hooks -----------------------------------------------------------------


def test_tangent_map_refuses_a_step_out_of_range_and_a_missing_input():
    dense = _mlp().to_spec(F64)
    s, v = np.zeros((2, 3)), np.zeros((2, 1, 3))
    with pytest.raises(ValueError, match="step must be below the dense stack's 3 layers, got 3"):
        _core.testing.tangent_map(dense, 3, None, s, v, np.zeros((2, 1, 5)))
    with pytest.raises(ValueError, match="x_t is required for a recurrent model, got None"):
        _core.testing.tangent_map(
            _gru_spec(), 0, None, np.zeros((2, 4)), np.zeros((2, 1, 4)), np.zeros((2, 1, 4))
        )


@pytest.mark.parametrize(("r", "n"), [(1, 1), (3, 5), (6, 6)])
def test_graded_jacobi_matches_numpy_svd(r, n):
    # Oracle: the singular values of the graded matrix B^T diag(e^d), formed explicitly; the
    # scales stay moderate so that the explicit product is accurate (relative 1e-12).
    rng = np.random.default_rng(r * 10 + n)
    B = rng.standard_normal((r, n))
    d = rng.uniform(-3.0, 3.0, r)
    got, sweeps = _core.testing.graded_jacobi(B, d)
    want = np.linalg.svd(B.T * np.exp(d), compute_uv=False)
    np.testing.assert_allclose(np.sort(got)[::-1], np.log(want), rtol=0, atol=1e-12)
    assert 1 <= sweeps <= 80


def test_graded_jacobi_leaves_its_inputs_and_checks_shapes():
    B, d = np.eye(3), np.zeros(3)
    _core.testing.graded_jacobi(B * 2.0, d)
    np.testing.assert_array_equal(d, np.zeros(3))
    with pytest.raises(
        ValueError, match=r"d must have shape \(3,\) \(one entry per row of B\), got \(2,\)"
    ):
        _core.testing.graded_jacobi(B, np.zeros(2))
    with pytest.raises(ValueError, match=r"B must be 2-d \(r, n\), got shape \(3,\)"):
        _core.testing.graded_jacobi(np.zeros(3), d)


def test_workspace_hooks_report_the_pool():
    limit = _core.testing.workspace_limit()
    try:
        vgcore.set_workspace_limit(12345)
        assert _core.testing.workspace_limit() == 12345
        vgcore.release_memory()
        assert _core.testing.workspace_cached() == 0
    finally:
        vgcore.set_workspace_limit(limit)


def test_gemm_gflops_is_positive_and_its_errors_name_the_sizes():
    assert _core.blas_gemm_gflops(8, 8, 8, True, 1) > 0
    with pytest.raises(ValueError, match="m, n, k and repeat must be positive, got m = 8, n = 0"):
        _core.blas_gemm_gflops(8, 0, 8)

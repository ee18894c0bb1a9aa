"""The registry of model kinds and the model interface the analyses ask (no class lists)."""

from __future__ import annotations

import numpy as np
import pytest

import vgcore
from vgcore.models import MLP, Model, model_kind, model_kinds, register_model_kind


def _small(kind: str) -> Model:
    if kind == "mlp":
        return MLP.from_sizes([5, 6, 6], "tanh", seed=0)
    return model_kind(kind).cls.from_sizes(3, 4, seed=0)  # type: ignore[attr-defined]


def test_registry_lists_every_kind_once():
    names = [k.name for k in model_kinds()]
    assert names == ["mlp", "rnn", "lstm", "gru", "ssm", "selective_ssm", "ssm_stack"]
    for k in model_kinds():
        assert k.cls.kind == k.name and issubclass(k.cls, Model)
        assert k.axis in ("depth", "time")
    assert model_kind("lstm").state_names == ("h", "c")
    assert model_kind("gru").gate_names == ("r", "z", "n")
    assert model_kind("lstm").gate_names == ("i", "f", "g", "o")


def test_unknown_kind_and_double_registration_are_refused():
    with pytest.raises(KeyError, match=r"unknown model kind 'cnn'.*'mlp'"):
        model_kind("cnn")
    with pytest.raises(ValueError, match="already registered"):
        register_model_kind(MLP, torch_classes=(), description="again")


@pytest.mark.parametrize("kind", ["mlp", "rnn", "lstm", "gru"])
def test_state_dim_and_spec(kind):
    m = _small(kind)
    assert m.state_dim == (5 if kind == "mlp" else 4 * len(m.state_names))
    spec = m.to_spec(np.float32)
    arrays = [v for v in spec.values() if isinstance(v, np.ndarray)]
    if kind == "mlp":
        assert spec["kind"] == "mlp" and len(spec["layers"]) == m.num_layers == 2
        arrays = [layer["weight"] for layer in spec["layers"]]
    assert all(a.dtype == np.float32 for a in arrays)
    # read afresh: an in-place update shows in the next description
    w = m.weights[0] if kind == "mlp" else m.weight_hh  # type: ignore[attr-defined]
    w[0, 0] = 7.0
    spec = m.to_spec()
    got = spec["layers"][0]["weight"] if kind == "mlp" else spec["weight_hh"]
    assert got[0, 0] == 7.0


def test_jacobian_analyses_refuse_non_models_naming_the_kinds():
    with pytest.raises(
        TypeError,
        match="vgcore model \\(MLP, RNN, LSTM, GRU, SSM, SelectiveSSM, SSMStack\\), got dict",
    ):
        vgcore.lyapunov({"kind": "mlp"}, np.zeros((2, 3)))


def test_train_batchnorm_is_a_jacobian_obstacle():
    m = MLP.from_sizes([4, 4, 4], "relu", norm="batchnorm", seed=0)
    assert "batch statistics" in (m.jacobian_obstacle() or "")
    with pytest.raises(ValueError, match="batch statistics"):
        vgcore.jacobian_singular_values(m, np.ones((3, 4)))
    assert _small("lstm").jacobian_obstacle() is None

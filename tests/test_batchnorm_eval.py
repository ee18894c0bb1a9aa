"""BatchNorm follows the module's mode: eval() uses the running statistics (a per-sample affine
map, so the Jacobian analyses accept it), train() the batch's. Oracle: PyTorch float64."""

from __future__ import annotations

import numpy as np
import pytest

import vgcore
from oracles import module_jacobians, torch_sequential_flow
from tolerances import assert_rel_close
from vgcore import MLP


def _trained_bn_net(torch, *, train: bool):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 6),
        torch.nn.BatchNorm1d(6),
        torch.nn.Tanh(),
        torch.nn.Linear(6, 6),
        torch.nn.BatchNorm1d(6, affine=False),
        torch.nn.ReLU(),
        torch.nn.Linear(6, 6),
    ).double()
    with torch.no_grad():  # running statistics far from a fresh batch's: the modes differ
        for m in net:
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-2, 2)
                m.running_var.uniform_(0.2, 3)
                if m.weight is not None:
                    m.weight.uniform_(0.5, 2)
                    m.bias.uniform_(-1, 1)
    return net.train(train)


@pytest.mark.parametrize("train", [False, True])
def test_gradient_flow_follows_the_module_mode(torch, train: bool) -> None:
    net = _trained_bn_net(torch, train=train)
    x = np.random.default_rng(0).normal(size=(8, 5))
    model = MLP.from_torch(net)
    assert [model.norm_mode(i) for i in range(3)] == (
        ["batchnorm", "batchnorm", None] if train else ["batchnorm_eval", "batchnorm_eval", None]
    )
    assert any("train()" in n for n in model.notes) is train
    flow = vgcore.gradient_flow(model, x, keep_grads=True, param_grads=True)
    hs, grads = torch_sequential_flow(torch, net, x)
    assert_rel_close(flow.output, hs[-1].detach().numpy(), 1e-12, "output")
    for g, want in zip(flow.grads, grads):
        assert_rel_close(g, want, 1e-10, "dL/dh")
    bn = net[1]
    assert_rel_close(
        flow.param_grad_norms["norm_weight"][0], bn.weight.grad.norm().item(), 1e-10, "dL/dgamma"
    )
    assert_rel_close(
        flow.param_grad_norms["norm_bias"][0], bn.bias.grad.norm().item(), 1e-10, "dL/dbeta"
    )
    assert_rel_close(
        flow.param_grad_norms["weight"][1], net[3].weight.grad.norm().item(), 1e-10, "dL/dW"
    )
    # the module is untouched: mode and statistics
    assert net.training is train and bn.training is train


def test_eval_batchnorm_per_sample_jacobian(torch) -> None:
    """Eval BatchNorm is per-sample: the spectra and singular values run, against jacrev."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Tanh(),
        torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Tanh(),
    ).double()  # fmt: skip
    with torch.no_grad():
        for m in net:
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.3, 2)
    net.eval()
    model = MLP.from_torch(net)
    x = np.random.default_rng(2).normal(size=(2, 4))
    sv = vgcore.jacobian_singular_values(model, x)
    for b, J in enumerate(module_jacobians(torch, net, x)):
        want = np.sort(np.linalg.svd(J, compute_uv=False))[::-1]
        assert_rel_close(np.exp(sv.log_singular_values[b]), want, 1e-10, "singular values")
    vgcore.lyapunov(model, x, k=2)
    vgcore.jacobian_spectrum(model, x)


def test_train_mode_batchnorm_is_refused_by_jacobian_analyses() -> None:
    m = MLP.from_sizes([4] * 3, "tanh", norm="batchnorm")
    with pytest.raises(ValueError, match=r"batch statistics.*Eval-mode BatchNorm"):
        vgcore.jacobian_singular_values(m, np.ones((2, 4)))


def test_round_trip_and_checkpoint(torch, tmp_path) -> None:
    from vgcore._checkpoint import load_state_dict, model_from_state_dict

    net = _trained_bn_net(torch, train=False)
    model = MLP.from_torch(net)
    back = model.to_torch()
    x = torch.tensor(np.random.default_rng(3).normal(size=(5, 5)))
    assert not back[1].training
    np.testing.assert_allclose(back(x).detach().numpy(), net(x).detach().numpy(), rtol=1e-13)
    path = tmp_path / "bn.pt"
    torch.save(net.state_dict(), path)
    loaded = model_from_state_dict(load_state_dict(path), activation="tanh")
    assert loaded.norm_mode(0) == "batchnorm_eval"  # a saved model is analysed as deployed
    np.testing.assert_array_equal(loaded.running_vars[0], net[1].running_var.detach().numpy())


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"running_means": [np.zeros(3)], "running_vars": [None]}, "given together"),
        ({"running_means": [np.zeros(3)], "running_vars": [-np.ones(3)]}, r"running_vars\[0\]"),
        ({"running_means": [np.zeros(2)], "running_vars": [np.ones(2)]}, r"running_means\[0\]"),
    ],
)
def test_running_statistics_validation(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        MLP([np.ones((3, 3))], norm="batchnorm", **kw)
    with pytest.raises(ValueError, match="running statistics belong to BatchNorm"):
        MLP([np.ones((3, 3))], running_means=[np.zeros(3)], running_vars=[np.ones(3)])

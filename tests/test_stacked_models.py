"""Stacked and bidirectional RNN / LSTM / GRU: the model classes (construction, validation,
import / export, description) and the float64 autograd oracle the analyses are tested against."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import vgcore
from oracles import torch_recurrent_flow, torch_stacked_flow
from tolerances import assert_rel_close
from vgcore import GRU, LSTM, RNN
from vgcore.init import initialize_recurrent

CLASSES = [RNN, LSTM, GRU]


def sizes(cls, L, bi, I=3, N=4):
    """(weight_ih, weight_hh) shapes of every layer and direction, PyTorch order."""
    D = 2 if bi else 1
    G = cls.gates
    return [((G * N, I if k < D else D * N), (G * N, N)) for k in range(L * D)]


def random_lists(cls, L, bi, I=3, N=4, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    shp = sizes(cls, L, bi, I, N)
    wih = [rng.normal(0, 0.5, a) for a, _ in shp]
    whh = [rng.normal(0, 0.5, b) for _, b in shp]
    bih = [rng.normal(0, 0.1, a[0]) for a, _ in shp] if bias else None
    bhh = [rng.normal(0, 0.1, a[0]) for a, _ in shp] if bias else None
    return wih, whh, bih, bhh


# -- construction and properties ------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_properties(cls):
    m = cls(*random_lists(cls, 2, True), num_layers=2, bidirectional=True)
    per = 2 * 4 if cls is LSTM else 4
    assert (m.num_layers, m.bidirectional, m.num_directions, m.stacked) == (2, True, 2, True)
    assert (m.hidden_size, m.input_size, m.layer_state_size) == (4, 3, per)
    assert m.state_size == m.state_dim == 2 * 2 * per
    assert m.step_jacobian_dims() == [m.state_dim]
    assert len(m.layer_params()) == 4 and all(len(p) == 4 for p in m.layer_params())
    assert m.weight_ih[2].shape == (cls.gates * 4, 8)  # layer 1 reads both directions
    u = cls(*random_lists(cls, 3, False), num_layers=3)
    assert (u.num_directions, u.stacked, u.state_dim) == (1, True, 3 * per)
    s = cls.from_sizes(3, 4)
    assert (s.num_layers, s.bidirectional, s.num_directions, s.stacked) == (1, False, 1, False)
    assert s.state_dim == per and s.layer_state_size == per
    assert isinstance(s.weight_ih, np.ndarray)
    (p,) = s.layer_params()
    assert p[0] is s.weight_ih and p[3] is s.bias_hh
    assert isinstance(s._own_params(), tuple) and len(s._own_params()) == 4
    assert isinstance(m._own_params(), list) and len(m._own_params()) == 4


def test_validation_messages():
    wih, whh, bih, bhh = random_lists(LSTM, 2, True)
    kw = {"num_layers": 2, "bidirectional": True}
    with pytest.raises(ValueError, match=r"weight_ih must be .*2 \* 2 = 4 arrays.*got 3 entries"):
        LSTM(wih[:3], whh, bih, bhh, **kw)
    with pytest.raises(TypeError, match=r"weight_hh must be a sequence.*got ndarray of shape"):
        LSTM(wih, whh[0], bih, bhh, **kw)
    with pytest.raises(TypeError, match=r"weight_ih must be a sequence.*weight_ih_l0_reverse"):
        LSTM(None, whh, **kw)
    bad = list(wih)
    bad[3] = np.zeros((16, 4))
    with pytest.raises(
        ValueError,
        match=r"weight_ih\[3\] \(weight_ih_l1_reverse\) must have shape \(16, 8\).*both directions of layer 0",
    ):
        LSTM(bad, whh, bih, bhh, **kw)
    bad = list(wih)
    bad[1] = np.zeros((16, 5))
    with pytest.raises(
        ValueError, match=r"weight_ih\[1\] \(weight_ih_l0_reverse\) must have shape \(16, 3\)"
    ):
        LSTM(bad, whh, bih, bhh, **kw)
    bad = list(whh)
    bad[2] = np.zeros((16, 5))
    with pytest.raises(
        ValueError, match=r"weight_hh\[2\] \(weight_hh_l1\) must have shape \(16, 4\)"
    ):
        LSTM(wih, bad, bih, bhh, **kw)
    bad = list(whh)
    bad[0] = np.zeros((12, 4))
    with pytest.raises(
        ValueError, match=r"weight_hh\[0\] \(weight_hh_l0\) must have shape \(4\*N, N\)"
    ):
        LSTM(wih, bad, bih, bhh, **kw)
    bad = list(bih)
    bad[2] = np.zeros(15)
    with pytest.raises(ValueError, match=r"bias_ih\[2\] \(bias_ih_l1\) must have shape \(16,\)"):
        LSTM(wih, whh, bad, bhh, **kw)
    bad = list(bhh)
    bad[1] = None
    with pytest.raises(
        ValueError,
        match=r"every layer and direction a bias or none.*bias_hh\[1\] \(bias_hh_l0_reverse\)",
    ):
        LSTM(wih, whh, bih, bad, **kw)
    with pytest.raises(ValueError, match=r"bias_ih is given but bias_hh is None"):
        LSTM(wih, whh, bih, None, **kw)
    bad = [w.copy() for w in whh]
    bad[3][1, 2] = np.nan
    with pytest.raises(ValueError, match=r"weight_hh\[3\] \(weight_hh_l1_reverse\).*NaN"):
        LSTM(wih, bad, bih, bhh, **kw)
    with pytest.raises(ValueError, match=r"num_layers must be >= 1, got 0"):
        LSTM(wih, whh, num_layers=0)
    with pytest.raises(TypeError, match=r"num_layers must be an integer"):
        LSTM(wih, whh, num_layers=2.0)
    with pytest.raises(TypeError, match=r"bidirectional must be True or False"):
        LSTM(wih, whh, num_layers=2, bidirectional="yes")
    # all-None bias lists are no biases
    m = LSTM(wih, whh, [None] * 4, [None] * 4, **kw)
    assert m.bias_ih is None and m.bias_hh is None and "bias_ih_l0" not in m.parameters()
    # a 3-D array stands for a list of equal-shape entries (layer 0 input size D*N)
    w3 = np.stack(random_lists(GRU, 2, False, I=4)[0])
    assert GRU(w3, np.stack(random_lists(GRU, 2, False, I=4)[1]), num_layers=2).num_layers == 2


def test_single_layer_unchanged():
    """num_layers=1, bidirectional=False is today's model: arrays, messages, names."""
    wih, whh, bih, bhh = random_lists(GRU, 1, False)
    m = GRU(wih[0], whh[0], bih[0], bhh[0])
    assert list(m.parameters()) == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    spec = m.to_spec()
    assert set(spec) == {"kind", "weight_ih", "weight_hh", "bias_ih", "bias_hh"}
    assert repr(m) == "GRU(input_size=3, hidden_size=4, bias=True, dtype=float64)"
    with pytest.raises(ValueError, match=r"weight_hh must have shape \(3\*N, N\)"):
        GRU(wih[0], np.zeros((12, 5)))
    assert m.jacobian_obstacle() is None


def test_repr():
    m = RNN.from_sizes(3, 4, nonlinearity="relu", num_layers=2, bidirectional=True, bias=False)
    assert repr(m) == (
        "RNN(input_size=3, hidden_size=4, nonlinearity='relu', num_layers=2, "
        "bidirectional=True, bias=False, dtype=float64)"
    )
    assert "bidirectional" not in repr(LSTM.from_sizes(3, 4, num_layers=3))
    assert "num_layers=3" in repr(LSTM.from_sizes(3, 4, num_layers=3))


# -- from_sizes ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_from_sizes_shapes_and_determinism(cls):
    for L, bi in [(1, True), (2, False), (3, True)]:
        m = cls.from_sizes(3, 4, num_layers=L, bidirectional=bi, seed=5)
        got = [(a.shape, b.shape) for a, b, _, _ in m.layer_params()]
        assert got == sizes(cls, L, bi)
        again = cls.from_sizes(3, 4, num_layers=L, bidirectional=bi, seed=5)
        for (n1, a1), (n2, a2) in zip(m.parameters().items(), again.parameters().items()):
            assert n1 == n2 and np.array_equal(a1, a2)
        other = cls.from_sizes(3, 4, num_layers=L, bidirectional=bi, seed=6)
        assert not np.array_equal(m.weight_hh[0], other.weight_hh[0])


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_from_sizes_draws_in_pytorch_order(cls):
    """Each (layer, direction) is initialize_recurrent from one generator in PyTorch order;
    a single layer draws exactly what it drew before stacking existed."""
    init = {"name": "orthogonal", "input": "xavier_uniform"}
    m = cls.from_sizes(3, 4, num_layers=2, bidirectional=True, init=init, seed=7, dtype=np.float32)
    rng = np.random.default_rng(7)
    for k, p in enumerate(m.layer_params()):
        ref = initialize_recurrent(init, cls.kind, 3 if k < 2 else 8, 4, rng=rng, dtype=np.float32)
        for arr, key in zip(p, ("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
            assert arr.dtype == np.float32 and np.array_equal(arr, ref[key])
    single = cls.from_sizes(3, 4, seed=7)
    ref = initialize_recurrent(None, cls.kind, 3, 4, rng=np.random.default_rng(7), dtype=np.float64)
    assert np.array_equal(single.weight_ih, ref["weight_ih"])
    assert np.array_equal(single.bias_hh, ref["bias_hh"])
    nob = cls.from_sizes(3, 4, num_layers=2, bias=False)
    assert nob.bias_ih is None and nob.bias_hh is None
    assert np.array_equal(nob.weight_hh[1], cls.from_sizes(3, 4, num_layers=2).weight_hh[1])


def test_from_sizes_errors_and_memory():
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        LSTM.from_sizes(3, 4, num_layers=0)
    with pytest.raises(TypeError, match="bidirectional must be True or False"):
        GRU.from_sizes(3, 4, bidirectional=1)
    with pytest.raises(vgcore.InsufficientMemoryError, match=r"LSTM\.from_sizes"):
        LSTM.from_sizes(8, 100_000, num_layers=10**4)


# -- PyTorch import / export -------------------------------------------------------------------
ROUND_TRIP = list(
    itertools.product(
        ["rnn_tanh", "rnn_relu", "lstm", "gru"],
        [1, 2, 3],
        [False, True],
        [False, True],
        [False, True],
    )
)


@pytest.mark.parametrize("fdt", ["float32", "float64"])
@pytest.mark.parametrize(("cell", "L", "bi", "batch_first", "bias"), ROUND_TRIP)
def test_torch_round_trip(torch, cell, L, bi, batch_first, bias, fdt):
    tdt = getattr(torch, fdt)
    kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    tcls = getattr(torch.nn, cell.split("_")[0].upper())
    torch.manual_seed(L + 2 * bi)
    mod = tcls(3, 4, num_layers=L, bidirectional=bi, batch_first=batch_first, bias=bias,
               dtype=tdt, **kw)  # fmt: skip
    cls = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}[tcls.__name__]
    m = cls.from_torch(mod)
    assert type(m) is cls and m.dtype == np.dtype(fdt)
    assert (m.num_layers, m.bidirectional, m.batch_first) == (L, bi, batch_first)
    assert (m.input_size, m.hidden_size, m.bias_ih is not None) == (3, 4, bias)
    assert m.notes == ()
    sd = mod.state_dict()
    if m.stacked:  # PyTorch's names, in state_dict order
        assert list(m.parameters()) == list(sd)
    else:
        assert [k + "_l0" for k in m.parameters()] == list(sd)
    for arr, t in zip(m.parameters().values(), sd.values()):
        assert arr.dtype == np.dtype(fdt) and np.array_equal(arr, t.numpy())
    back = m.to_torch()
    assert type(back) is tcls
    for attr in ("input_size", "hidden_size", "num_layers", "bidirectional", "batch_first", "bias"):
        assert getattr(back, attr) == getattr(mod, attr), attr
    assert getattr(back, "nonlinearity", None) == getattr(mod, "nonlinearity", None)
    sd2 = back.state_dict()
    assert list(sd2) == list(sd)
    for k in sd:
        assert sd2[k].dtype == tdt and torch.equal(sd2[k], sd[k]), k


def test_from_torch_refusals_and_notes(torch):
    with pytest.raises(NotImplementedError, match=r"proj_size=2.*proj_size=0 and any num_layers"):
        LSTM.from_torch(torch.nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(TypeError, match=r"torch\.nn\.LSTM"):
        LSTM.from_torch(torch.nn.GRU(2, 3))
    with pytest.raises(TypeError, match=r"torch\.nn\.RNN"):
        RNN.from_torch(torch.nn.GRU(2, 3))
    m = GRU.from_torch(torch.nn.GRU(3, 4, num_layers=3, dropout=0.25))
    (note,) = m.notes
    assert "dropout=0.25" in note and "off in the analyses" in note and "eval" in note
    assert m.astype(np.float32).notes == m.notes and m.layer(1).notes == m.notes
    assert GRU.from_torch(torch.nn.GRU(3, 4, num_layers=3)).notes == ()
    m = GRU.from_torch(
        torch.nn.GRU(3, 4, num_layers=2, bidirectional=True).double(), dtype="float32"
    )
    assert m.dtype == np.float32 and all(a.dtype == np.float32 for a in m.parameters().values())
    # half precision is read exactly as float32
    h = LSTM.from_torch(torch.nn.LSTM(3, 4, num_layers=2).half())
    assert h.dtype == np.float32 and h.weight_hh[1].dtype == np.float32


def test_from_torch_output_matches_module(torch):
    """The imported model computes what the module computes (oracle's self-check), every
    direction and layer read from the right PyTorch parameter."""
    torch.manual_seed(0)
    mod = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True).double()
    m = LSTM.from_torch(mod)
    x = np.random.default_rng(0).normal(size=(5, 2, 3))
    r = torch_stacked_flow(m, x)
    out, (hn, cn) = mod(torch.from_numpy(x.transpose(1, 0, 2)))
    assert_rel_close(r["output"], out.detach().numpy().transpose(1, 0, 2), 1e-12)
    assert_rel_close(r["h_n"], hn.detach().numpy(), 1e-12)
    assert_rel_close(r["c_n"], cn.detach().numpy(), 1e-12)


# -- description, dtype, in-place updates ----------------------------------------------------------
def test_to_spec_layout():
    m = LSTM.from_sizes(3, 4, num_layers=2, bidirectional=True)
    spec = m.to_spec()
    assert set(spec) == {"kind", "num_layers", "bidirectional", "layers"}
    assert (spec["kind"], spec["num_layers"], spec["bidirectional"]) == ("lstm", 2, True)
    assert len(spec["layers"]) == 4
    for entry, p in zip(spec["layers"], m.layer_params()):
        assert list(entry) == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
        for a, b in zip(entry.values(), p):
            assert np.array_equal(a, b)
    s32 = m.to_spec(np.float32)
    assert s32["layers"][3]["weight_hh"].dtype == np.float32
    assert m.weight_hh[3].dtype == np.float64  # the model itself is unchanged
    r = RNN.from_sizes(3, 4, nonlinearity="relu", num_layers=2, bias=False).to_spec()
    assert r["kind"] == "rnn_relu" and r["bidirectional"] is False
    assert r["layers"][1]["bias_ih"] is None and r["layers"][1]["bias_hh"] is None


def test_layer_params_as():
    m = GRU.from_sizes(3, 4, num_layers=2)
    lp = m._layer_params_as(np.dtype(np.float32))
    assert len(lp) == 2 and lp[1][1].dtype == np.float32
    assert np.array_equal(lp[1][1], m.weight_hh[1].astype(np.float32))
    s = GRU.from_sizes(3, 4)
    (one,) = s._layer_params_as(np.dtype(np.float64))
    assert one[0] is s.weight_ih  # already right: shared, not copied
    m.weight_hh[1][0, 0] = 7.0
    assert m._layer_params_as(np.dtype(np.float64))[1][1][0, 0] == 7.0  # read afresh
    m.weight_hh[1][0, 0] = np.inf
    with pytest.raises(ValueError, match=r"weight_hh\[1\] \(weight_hh_l1\) contains Inf"):
        m._layer_params_as(np.dtype(np.float64))
    assert np.isinf(m._layer_params_as(np.dtype(np.float64), check_finite=False)[1][1][0, 0])


def test_astype_and_in_place_updates():
    m = RNN.from_sizes(3, 4, num_layers=2, bidirectional=True, nonlinearity="relu")
    m32 = m.astype(np.float32)
    assert (m32.dtype, m32.num_layers, m32.bidirectional, m32.nonlinearity) == (
        np.float32,
        2,
        True,
        "relu",
    )
    assert all(a.dtype == np.float32 for a in m32.parameters().values())
    assert list(m32.parameters()) == list(m.parameters())
    m.validate()
    m.weight_hh[3][1, 1] = np.nan  # in place, inside the list
    with pytest.raises(
        ValueError,
        match=r"changed after construction.*weight_hh\[3\] \(weight_hh_l1_reverse\) contains NaN",
    ):
        m.validate()
    assert m._nonfinite_parameter().startswith("weight_hh_l1_reverse contains NaN")
    m.weight_hh[3] = np.zeros((4, 4))
    m.validate()
    m.weight_ih[2] = np.zeros((4, 4))  # replaced by an entry of the wrong shape
    with pytest.raises(
        ValueError, match=r"weight_ih\[2\] \(weight_ih_l1\) must have shape \(4, 8\)"
    ):
        m.validate()
    m.weight_ih[2] = np.zeros((4, 8))
    m.weight_ih.append(np.zeros((4, 8)))
    with pytest.raises(ValueError, match=r"weight_ih must be .*got 5 entries"):
        m.validate()
    m.weight_ih.pop()
    m.bias_ih = None  # one of the two bias lists removed
    with pytest.raises(ValueError, match="bias_hh is given but bias_ih is None"):
        m.validate()


def test_jacobian_obstacle_and_layer():
    bi = GRU.from_sizes(3, 4, num_layers=2, bidirectional=True)
    why = bi.jacobian_obstacle()
    assert "bidirectional GRU is not a dynamical system forward in time" in why
    assert "backward in time" in why and "model.layer(" in why
    assert GRU.from_sizes(3, 4, num_layers=3).jacobian_obstacle() is None
    one = bi.layer(1, direction=1)
    assert type(one) is GRU and not one.stacked and one.input_size == 8
    assert one.weight_hh is bi.weight_hh[3]
    with pytest.raises(ValueError, match="index must be < num_layers = 2, got 2"):
        bi.layer(2)
    with pytest.raises(ValueError, match="direction must be < num_directions = 1, got 1"):
        GRU.from_sizes(3, 4, num_layers=2).layer(0, direction=1)
    r = RNN.from_sizes(3, 4, num_layers=2, nonlinearity="relu").layer(1)
    assert r.nonlinearity == "relu" and r.input_size == 4


# -- checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tname", "L", "bi", "bias"),
    [("LSTM", 2, True, True), ("GRU", 3, False, False), ("RNN", 1, True, True)],
)
def test_checkpoint_state_dicts(torch, tmp_path, tname, L, bi, bias):
    from vgcore._checkpoint import load_state_dict, model_from_state_dict

    torch.manual_seed(3)
    mod = getattr(torch.nn, tname)(3, 4, num_layers=L, bidirectional=bi, bias=bias)
    path = tmp_path / "m.pt"
    torch.save({"model": {f"rnn.{k}": v for k, v in mod.state_dict().items()}}, path)
    m = model_from_state_dict(load_state_dict(path))
    assert type(m).__name__ == tname and (m.num_layers, m.bidirectional) == (L, bi)
    assert m.dtype == np.float32 and (m.bias_ih is not None) == bias
    for arr, t in zip(m.parameters().values(), mod.state_dict().values()):
        assert np.array_equal(arr, t.numpy())


def test_checkpoint_refusals(torch):
    from vgcore._checkpoint import CheckpointError, model_from_state_dict

    sd = {k: v.numpy() for k, v in torch.nn.LSTM(3, 4, proj_size=2).state_dict().items()}
    with pytest.raises(CheckpointError, match=r"proj_size > 0 \(weight_hr_l0\)"):
        model_from_state_dict(sd)
    sd = {k: v.numpy() for k, v in torch.nn.GRU(3, 4, num_layers=3).state_dict().items()}
    del sd["weight_ih_l1"], sd["bias_hh_l1"]
    with pytest.raises(CheckpointError, match=r"3 layer\(s\) lacks 'weight_ih_l1', 'bias_hh_l1'"):
        model_from_state_dict(sd)


# -- the oracle itself ---------------------------------------------------------------------------
def _module_loss(torch, mod, x, h0, c0, cot=None):
    """Loss of the nn module (float64) as the oracle defines it."""
    with torch.no_grad():
        hx = (
            (torch.from_numpy(h0), torch.from_numpy(c0)) if c0 is not None else torch.from_numpy(h0)
        )
        out, _ = mod(torch.from_numpy(x), hx)
        if cot is None:
            return 0.5 * float((out[-1] ** 2).sum())
        return float((out * torch.from_numpy(cot)).sum())


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_oracle_against_finite_differences(torch, cls):
    """dL/dx, dL/dh0, dL/dc0 and a parameter gradient of a 2-layer bidirectional model by
    central differences of the nn module's loss (eps 1e-6: truncation and rounding ~1e-9)."""
    m = cls.from_sizes(2, 3, num_layers=2, bidirectional=True, seed=1)
    eps = 1e-6
    rng = np.random.default_rng(2)
    T, B = 4, 2
    x = rng.normal(size=(T, B, 2))
    h0 = rng.normal(0, 0.5, (4, B, 3))
    c0 = rng.normal(0, 0.5, (4, B, 3)) if cls is LSTM else None
    for cot in (None, rng.normal(size=(T, B, 6))):
        r = torch_stacked_flow(m, x, h0=h0, c0=c0, cotangent=cot)
        mod = m.to_torch().double()

        def fd(arr, idx, mod=mod, cot=cot):
            old = arr[idx]
            arr[idx] = old + eps
            up = _module_loss(torch, mod, x, h0, c0, cot)
            arr[idx] = old - eps
            down = _module_loss(torch, mod, x, h0, c0, cot)
            arr[idx] = old
            return (up - down) / (2 * eps)

        num = np.array([fd(x, i) for i in np.ndindex(x.shape)]).reshape(x.shape)
        assert_rel_close(r["input_grads"], num, 1e-7, "dL/dx")
        # initial states: forward position 0, reverse position T, PyTorch's index l*D+d
        init = np.stack([r["grads"][k % 2, k // 2, 0 if k % 2 == 0 else T] for k in range(4)])
        num = np.array([fd(h0, i) for i in np.ndindex(h0.shape)]).reshape(h0.shape)
        assert_rel_close(init, num, 1e-7, "dL/dh0")
        if c0 is not None:
            cinit = np.stack(
                [r["cell_grads"][k % 2, k // 2, 0 if k % 2 == 0 else T] for k in range(4)]
            )
            num = np.array([fd(c0, i) for i in np.ndindex(c0.shape)]).reshape(c0.shape)
            assert_rel_close(cinit, num, 1e-7, "dL/dc0")
        w = mod.weight_hh_l0_reverse.detach().numpy()  # shares the parameter's memory
        num = np.array([fd(w, i) for i in np.ndindex(w.shape)])
        assert_rel_close(r["param_grads"]["weight_hh"][1].ravel(), num, 1e-7, "dL/dW")
        assert np.isclose(
            r["log_param_grad_norms"]["weight_hh"][0, 1], np.log(np.linalg.norm(num)), rtol=1e-7
        )
        assert r["log_grad_norms"].shape == (2, 2, T + 1)
        assert r["log_input_grad_norms"].shape == (T,)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_oracle_single_layer_is_the_recurrent_oracle(torch, cls):
    m = cls.from_sizes(3, 4, seed=3)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 2, 3))
    for cot in (None, rng.normal(size=(6, 2, 4)), rng.normal(size=(2, 4))):
        r = torch_stacked_flow(m, x, cotangent=cot)
        g, cg, hT, pn = torch_recurrent_flow(torch, m, x, cotangent=cot)
        assert_rel_close(r["grads"][0, 0], g, 1e-12)
        assert_rel_close(r["h_n"][0], hT, 1e-12)
        if cls is LSTM:
            assert_rel_close(r["cell_grads"][0, 0], cg, 1e-12)
        for k, v in r["log_param_grad_norms"].items():
            assert np.isclose(v[0, 0], np.log(pn[k]), rtol=1e-12, atol=0)


def test_oracle_top_layer_is_a_recurrent_flow_on_the_layer_below(torch):
    """In a unidirectional stack the top layer is a single-layer model driven by the output
    sequence of the layers below: its gradients are torch_recurrent_flow's on that input."""
    m = LSTM.from_sizes(3, 4, num_layers=3, seed=5)
    x = np.random.default_rng(6).normal(size=(5, 2, 3))
    r = torch_stacked_flow(m, x)
    below = LSTM(*map(list, zip(*m.layer_params()[:2])), num_layers=2)
    with torch.no_grad():
        seq, _ = below.to_torch()(torch.from_numpy(x))
    g, cg, _, _ = torch_recurrent_flow(torch, m.layer(2), seq.numpy())
    assert_rel_close(r["grads"][0, 2], g, 1e-12)
    assert_rel_close(r["cell_grads"][0, 2], cg, 1e-12)
    assert_rel_close(r["states"][0, 1, 1:], seq.numpy(), 1e-12)
    # the loss reaches layer l at time t through layer l+1 at time t: no gradient is lost
    assert np.all(np.isfinite(r["log_grad_norms"]))


def test_oracle_input_checks():
    m = GRU.from_sizes(3, 4, num_layers=2)
    x = np.zeros((3, 2, 3))
    with pytest.raises(ValueError, match=r"h0 must have shape \(L\*D, B, N\) = \(2, 2, 4\)"):
        torch_stacked_flow(m, x, h0=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="cotangent must have shape"):
        torch_stacked_flow(m, x, cotangent=np.zeros((3, 2, 8)))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_oracle_reverse_direction_positions(torch, cls):
    """The reverse direction of a one-layer bidirectional model is its cell run on the
    time-reversed sequence: position t of the oracle is step T - t of that run."""
    m = cls.from_sizes(3, 4, bidirectional=True, seed=8)
    rng = np.random.default_rng(9)
    x = rng.normal(size=(6, 2, 3))
    cot = rng.normal(size=(6, 2, 8))
    cot[:, :, :4] = 0.0  # a loss on the reverse half only
    r = torch_stacked_flow(m, x, cotangent=cot)
    g, cg, _, pn = torch_recurrent_flow(
        torch, m.layer(0, 1), x[::-1].copy(), cotangent=cot[::-1, :, 4:].copy()
    )
    assert_rel_close(r["grads"][1, 0], g[::-1], 1e-12)
    if cls is LSTM:
        assert_rel_close(r["cell_grads"][1, 0], cg[::-1], 1e-12)
    assert np.isclose(r["log_param_grad_norms"]["weight_hh"][0, 1], np.log(pn["weight_hh"]))
    assert np.all(r["log_grad_norms"][0] == -np.inf)  # nothing reaches the forward half

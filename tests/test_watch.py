"""vgcore.watch inside real training loops, against direct float64 torch computations.

Oracle: the same training run, unwatched, on a deep copy of the model with the same data;
after each backward the gradients, the weights before the step and the step's difference are
taken directly (``torch.linalg.vector_norm`` in float64), and the gradients at block outputs
by ``torch.autograd.grad`` with respect to the outputs. Models are float64, so the recorded
norms agree to 1e-10 relative (float32 / bfloat16 cases state their own tolerance).
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import vgcore.watch as vw  # noqa: E402

RTOL = 1e-10

pytestmark = pytest.mark.needs_torch


# -- helpers -----------------------------------------------------------------------------------
def mlp(widths=(6, 8, 8, 8, 3), act=nn.Tanh, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers.append(nn.Sequential(nn.Linear(a, b), act()))
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers).to(dtype)


def data(n=16, d=6, k=3, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, k, (n,), generator=g)


def loss_fn(out, y):
    return nn.functional.cross_entropy(out, y)


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
}


def oracle_run(model, make_opt, batches, *, micro=1, block_names=None):
    """Train unwatched; per step: {param: (grad, weight, update)} norms and block-output
    gradient norms (autograd.grad w.r.t. the outputs of ``block_names``' modules)."""
    opt = make_opt(model.parameters())
    mods = dict(model.named_modules())
    steps = []
    for x, y in batches:
        opt.zero_grad()
        outs_sq = {b: 0.0 for b in block_names or []}
        for xm, ym in zip(x.chunk(micro), y.chunk(micro)):
            store: dict[str, torch.Tensor] = {}
            hs = [
                mods[b].register_forward_hook(
                    lambda m, i, o, b=b, store=store: store.__setitem__(b, o)
                )
                for b in block_names or []
            ]
            loss = loss_fn(model(xm), ym) / micro
            for h in hs:
                h.remove()
            names = list(store)
            gs = torch.autograd.grad(loss, [store[b] for b in names], retain_graph=True)
            for b, g in zip(names, gs):
                outs_sq[b] += float(torch.linalg.vector_norm(g.double())) ** 2
            loss.backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads = {
            n: float(torch.linalg.vector_norm(p.grad.double()))
            for n, p in model.named_parameters()
            if p.grad is not None
        }
        opt.step()
        rec = {}
        for n, p in model.named_parameters():
            if n in grads:
                rec[n] = (
                    grads[n],
                    float(torch.linalg.vector_norm(before[n].double())),
                    float(torch.linalg.vector_norm((p.detach() - before[n]).double())),
                )
        steps.append((rec, {b: math.sqrt(v) for b, v in outs_sq.items()}))
    return steps


def watched_run(model, make_opt, batches, *, micro=1, **kw):
    opt = make_opt(model.parameters())
    with vw.watch(model, opt, **kw) as w:
        for x, y in batches:
            opt.zero_grad()
            for xm, ym in zip(x.chunk(micro), y.chunk(micro)):
                loss = loss_fn(model(xm), ym) / micro
                loss.backward()
                w.observe(loss=loss * micro)
            opt.step()
    return w


def value(df, step, block, param, metric):
    sel = df[(df.step == step) & (df.metric == metric)]
    sel = sel[sel.block == block] if block is not None else sel[sel.block.isna()]
    sel = sel[sel.parameter == param] if param is not None else sel[sel.parameter.isna()]
    assert len(sel) == 1, (step, block, param, metric, len(sel))
    return float(sel.value.iloc[0])


def assert_matches_oracle(w, oracle, blocks_of, rtol=RTOL, steps=None):
    df = w.history
    for s, (rec, outs) in enumerate(oracle):
        if steps is not None and s not in steps:
            continue
        bsum: dict[str, list[float]] = {}
        for name, (g, wn, d) in rec.items():
            b = blocks_of(name)
            np.testing.assert_allclose(value(df, s, b, name, "grad_norm"), g, rtol=rtol)
            np.testing.assert_allclose(value(df, s, b, name, "weight_norm"), wn, rtol=rtol)
            np.testing.assert_allclose(
                value(df, s, b, name, "update_norm"), d, rtol=rtol, atol=1e-300
            )
            acc = bsum.setdefault(b, [0.0, 0.0, 0.0])
            acc[0] += g * g
            acc[1] += wn * wn
            acc[2] += d * d
        for b, (g2, w2, d2) in bsum.items():
            np.testing.assert_allclose(value(df, s, b, None, "grad_norm"), math.sqrt(g2), rtol=rtol)
            np.testing.assert_allclose(
                value(df, s, b, None, "update_ratio"), math.sqrt(d2) / math.sqrt(w2), rtol=rtol
            )
        for b, v in outs.items():
            np.testing.assert_allclose(value(df, s, b, None, "output_grad_norm"), v, rtol=rtol)


def fl(t) -> float:
    return float(t.detach())


def top(name: str) -> str:
    return name.split(".")[0]


def hook_state(model, opt=None):
    from vgcore.watch._blocks import unwrap

    names = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_backward_hooks",
        "_backward_pre_hooks",
    )
    state = [
        (n, tuple(getattr(m, k).keys()))
        for n, m in model.named_modules()
        for k in names
        if hasattr(m, k)
    ]
    state += [(n, len(p._post_accumulate_grad_hooks or {})) for n, p in model.named_parameters()]
    if opt is not None:
        state.append(
            ("opt", tuple(opt._optimizer_step_pre_hooks), tuple(opt._optimizer_step_post_hooks))
        )
    assert unwrap(model)[0] is not None
    return state


# -- the recorded numbers ----------------------------------------------------------------------
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_norms_and_updates_match_direct_computation(opt_name):
    make = OPTIMIZERS[opt_name]
    model = mlp()
    ref = copy.deepcopy(model)
    batches = [data(seed=s) for s in range(4)]
    w = watched_run(model, make, batches)
    oracle = oracle_run(ref, make, batches, block_names=["0", "1", "2", "3"])
    assert_matches_oracle(w, oracle, top)
    # the same training: watched and unwatched parameters are bit for bit equal
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n
    assert w.blocks == ["0", "1", "2", "3"]
    loss = w.history.query("metric == 'loss'")
    assert list(loss.step) == [0, 1, 2, 3]


def test_step_with_closure_reads_the_gradients_it_computes():
    """optimizer.step(closure) computes the gradients inside the step (Lightning's automatic
    optimization): the recorded norms are still those of the step's gradients."""
    model = mlp()
    ref = copy.deepcopy(model)
    batches = [data(seed=s) for s in range(3)]
    opt = OPTIMIZERS["sgd_momentum"](model.parameters())
    with vw.watch(model, opt) as w:
        for x, y in batches:

            def closure(x=x, y=y):
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                return loss

            w.observe(loss=opt.step(closure))
    oracle = oracle_run(ref, OPTIMIZERS["sgd_momentum"], batches, block_names=["0", "1", "2", "3"])
    assert_matches_oracle(w, oracle, top)


def test_adam_moves_early_blocks_that_sgd_leaves_still():
    """The seeds' claim: with shrinking gradients an adaptive optimizer keeps the early layers
    moving; visible in the update ratios."""
    batches = [data(seed=s, d=6) for s in range(3)]
    ratios = {}
    for name in ("sgd", "adam"):
        model = mlp(widths=(6, 16, 16, 16, 16, 16, 16, 3), act=nn.Sigmoid)
        w = watched_run(model, OPTIMIZERS[name], batches, alerts=False)
        df = w.history
        ratios[name] = value(df, 2, "0", None, "update_ratio") / value(
            df, 2, "6", None, "update_ratio"
        )
    assert ratios["sgd"] < 1e-3
    assert ratios["adam"] > 1e-2


def test_every_logs_every_nth_step_and_one_host_copy_per_logged_step(monkeypatch):
    model = mlp()
    batches = [data(seed=s) for s in range(7)]
    copies = []
    real = torch.Tensor.cpu

    def counting(self, *a, **k):
        copies.append(self.shape)
        return real(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "cpu", counting)
    w = watched_run(model, OPTIMIZERS["sgd"], batches, every=3)
    monkeypatch.undo()
    assert sorted(w.history.step.unique()) == [0, 3, 6]
    assert len(copies) == 3
    ref = mlp()
    oracle = oracle_run(ref, OPTIMIZERS["sgd"], batches, block_names=["0", "1", "2", "3"])
    assert_matches_oracle(w, oracle, top, steps={0, 3, 6})


def test_module_hooks_only_on_logged_steps():
    """every > 1: the blocks' and activation modules' forward hooks exist during logged steps
    only (steps in between take torch's hook-free call path); the root keeps its pre-hook."""
    model = mlp()
    opt = OPTIMIZERS["sgd"](model.parameters())
    x, y = data()

    def hooked():
        return sum(len(m._forward_hooks) for m in model.modules() if m is not model)

    with vw.watch(model, opt, every=3) as w:
        seen = []
        for _ in range(7):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            seen.append(hooked())
            opt.step()
        assert len(model._forward_pre_hooks) == 1
    assert seen[0] == seen[3] == seen[6] > 0
    assert seen[1] == seen[2] == seen[4] == seen[5] == 0
    assert hooked() == 0 and not model._forward_pre_hooks
    assert sorted(w.history.step.unique()) == [0, 3, 6]


def test_lean_options():
    """updates=False keeps no parameter copy and records no updates; per_parameter=False
    records block rows only (with the same block norms)."""
    batches = [data(seed=s) for s in range(2)]
    full = watched_run(mlp(), OPTIMIZERS["adam"], batches)
    lean = watched_run(mlp(), OPTIMIZERS["adam"], batches, updates=False, per_parameter=False)
    for updates in (True, False):
        model = mlp()
        opt = OPTIMIZERS["sgd"](model.parameters())
        with vw.watch(model, opt, updates=updates) as w:
            x, y = data()
            loss_fn(model(x), y).backward()
            opt.step()
            assert bool(w._bufs) == updates  # the parameter copy exists only for updates
        assert not w._bufs  # released on close
    df, dl = full.history, lean.history
    assert not dl.metric.isin(["update_norm", "update_ratio"]).any()
    assert dl[dl.metric.isin(["grad_norm", "weight_norm"])].parameter.isna().all()
    for b in ("0", "1", "2", "3"):
        np.testing.assert_allclose(
            value(dl, 1, b, None, "grad_norm"), value(df, 1, b, None, "grad_norm"), rtol=1e-15
        )


def test_update_every_records_updates_on_every_kth_logged_step():
    """update_every=k: update norms and ratios on every k-th logged step (exact there; the
    parameter copy is taken only for those steps), gradient and weight norms on every one."""
    model = mlp()
    ref = copy.deepcopy(model)
    batches = [data(seed=s) for s in range(6)]
    w = watched_run(model, OPTIMIZERS["adam"], batches, every=1, update_every=2)
    df = w.history
    assert sorted(df[df.metric == "grad_norm"].step.unique()) == [0, 1, 2, 3, 4, 5]
    assert sorted(df[df.metric == "update_ratio"].step.unique()) == [0, 2, 4]
    oracle = oracle_run(ref, OPTIMIZERS["adam"], batches, block_names=["0", "1", "2", "3"])
    assert_matches_oracle(w, oracle, top, steps={0, 2, 4})
    for s in (1, 3, 5):
        for n, (g, wn, _) in oracle[s][0].items():
            np.testing.assert_allclose(value(df, s, top(n), n, "grad_norm"), g, rtol=RTOL)
            np.testing.assert_allclose(value(df, s, top(n), n, "weight_norm"), wn, rtol=RTOL)
    # every=2, update_every=3: updates on steps 0 and 6 of 0, 2, 4, 6
    w = watched_run(
        mlp(), OPTIMIZERS["sgd"], [data(seed=s) for s in range(8)], every=2, update_every=3
    )
    df = w.history
    assert sorted(df[df.metric == "grad_norm"].step.unique()) == [0, 2, 4, 6]
    assert sorted(df[df.metric == "update_ratio"].step.unique()) == [0, 6]


def test_tiny_float32_updates_are_exact():
    """An update ratio near 1e-8 in float32 weights: ||theta_before - theta_after|| is formed
    elementwise (exact differences of nearby floats), not from ||a||, ||b|| and <a, b>, whose
    cancellation would leave nothing of it. Oracle: the float64 norm of the float32 weights'
    differences; tolerance 1e-5 relative (float32 norms)."""
    model = mlp(dtype=torch.float32)
    ref = copy.deepcopy(model)
    batches = [data(seed=s, dtype=torch.float32) for s in range(3)]

    def make(p):
        return torch.optim.SGD(p, lr=1e-6)

    w = watched_run(model, make, batches, alerts=False)
    oracle = oracle_run(ref, make, batches, block_names=["0"])
    df = w.history
    ratios = []
    for s, (rec, _) in enumerate(oracle):
        for n, (_, wn, d) in rec.items():
            got = value(df, s, top(n), n, "update_ratio")
            assert 0 < d / wn < 1e-6  # tiny, and not rounded away entirely
            np.testing.assert_allclose(got, d / wn, rtol=1e-5)
            ratios.append(d / wn)
    assert min(ratios) < 3e-8
    # the cancelling formula in float32 is far off there (the test can tell them apart)
    p = dict(ref.named_parameters())["0.0.weight"].detach()
    a, b = p + 1e-7 * p, p
    naive = torch.sqrt((a * a).sum() + (b * b).sum() - 2 * (a * b).sum())
    exact = torch.linalg.vector_norm(a.double() - b.double())
    assert not abs(float(naive) - float(exact)) <= 0.5 * float(exact)  # or NaN


def test_without_optimizer_each_backward_is_a_step():
    model = mlp()
    ref = copy.deepcopy(model)
    batches = [data(seed=s) for s in range(3)]
    with vw.watch(model) as w:
        for x, y in batches:
            model.zero_grad()
            loss_fn(model(x), y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
    oracle = oracle_run(ref, OPTIMIZERS["sgd"], batches, block_names=["0", "1", "2", "3"])
    df = w.history
    assert w.step == 3
    assert "update_ratio" not in set(df.metric)
    for s, (rec, outs) in enumerate(oracle):
        for n, (g, wn, _) in rec.items():
            np.testing.assert_allclose(value(df, s, top(n), n, "grad_norm"), g, rtol=RTOL)
            np.testing.assert_allclose(value(df, s, top(n), n, "weight_norm"), wn, rtol=RTOL)
        for b, v in outs.items():
            np.testing.assert_allclose(value(df, s, b, None, "output_grad_norm"), v, rtol=RTOL)


# -- cases that break monitors -------------------------------------------------------------------
class Scale2InPlace(nn.Module):
    def forward(self, h):
        return h.mul_(2.0)


def inplace_model(inplace: bool):
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Linear(6, 8),
        nn.ReLU(inplace=inplace),
        nn.Linear(8, 8),
        Scale2InPlace() if inplace else nn.Identity(),
        nn.Tanh(),
        nn.Linear(8, 3),
    ).double()


def test_in_place_operations_after_blocks():
    """A block's output overwritten in place by the next block (ReLU(inplace=True), mul_):
    the recorded output gradient is that of the block's own output (full backward hooks fail
    here)."""
    model = inplace_model(True)
    batches = [data(seed=s) for s in range(3)]
    w = watched_run(model, OPTIMIZERS["sgd_momentum"], batches)
    ref = inplace_model(False)
    ref[3] = _Times2()
    oracle = oracle_run(ref, OPTIMIZERS["sgd_momentum"], batches, block_names=["0", "2", "4"])
    assert_matches_oracle(w, oracle, top)
    # the in-place ReLU block's own output gradient is there too
    assert not math.isnan(value(w.history, 0, "1", None, "output_grad_norm"))


class _Times2(nn.Module):
    def forward(self, h):
        return h * 2.0


def test_no_grad_and_inference_regions_are_not_counted():
    model = mlp()
    ref = copy.deepcopy(model)
    batches = [data(seed=s) for s in range(3)]
    opt = OPTIMIZERS["adam"](model.parameters())
    x_eval, _ = data(seed=99)
    with vw.watch(model, opt) as w:
        for x, y in batches:
            opt.zero_grad()
            with torch.no_grad():
                model(x_eval)  # evaluation before the training forward
            loss = loss_fn(model(x), y)
            loss.backward()
            with torch.inference_mode():
                model(x_eval)  # and between backward and step
            opt.step()
            with torch.no_grad():
                w.observe(loss=loss)
    oracle = oracle_run(ref, OPTIMIZERS["adam"], batches, block_names=["0", "1", "2", "3"])
    assert_matches_oracle(w, oracle, top)
    # activation statistics are those of the training batch only
    x, _ = batches[0]
    h = torch.tanh(ref_first_layer(x))
    np.testing.assert_allclose(value(w.history, 0, "0", "0.1", "act_mean"), fl(h.mean()), rtol=RTOL)


def ref_first_layer(x):
    return mlp()[0][0](x)


def test_gradient_accumulation_over_micro_batches():
    """Four micro-batches, loss / 4, one step: the norms are those of the full batch."""
    model = mlp(act=nn.ReLU)
    ref = copy.deepcopy(model)
    batches = [data(n=32, seed=s) for s in range(3)]
    w = watched_run(model, OPTIMIZERS["sgd_momentum"], batches, micro=4)
    oracle = oracle_run(
        ref, OPTIMIZERS["sgd_momentum"], batches, micro=1, block_names=["0", "1", "2", "3"]
    )
    assert_matches_oracle(w, oracle, top)
    # activation statistics over the 32 samples of the step
    x, _ = batches[0]
    h = torch.relu(mlp(act=nn.ReLU)[0][0](x))
    df = w.history
    np.testing.assert_allclose(value(df, 0, "0", "0.1", "act_mean"), fl(h.mean()), rtol=RTOL)
    np.testing.assert_allclose(
        value(df, 0, "0", "0.1", "act_std"), fl(h.std(unbiased=False)), rtol=1e-9
    )
    np.testing.assert_allclose(
        value(df, 0, "0", "0.1", "act_inactive"), float((h <= 0).double().mean()), rtol=RTOL
    )
    dead = float((h <= 0).all(0).double().mean())
    np.testing.assert_allclose(value(df, 0, "0", "0.1", "act_dead"), dead, rtol=RTOL)
    # the loss is the mean of the micro-batches' (each observed times 4)
    np.testing.assert_allclose(
        value(df, 0, None, None, "loss"),
        fl(loss_fn(mlp(act=nn.ReLU)(x), batches[0][1])),
        rtol=1e-12,
    )


def test_amp_grad_scaler_norms_are_unscaled():
    """bfloat16 autocast on the CPU with a GradScaler (scale 2**16): parameter gradients and
    block-output gradients are reported unscaled. Oracle: the same float32 model and autocast
    without a scaler (a power-of-two scale is exact), rtol 1e-6."""

    def make():
        torch.manual_seed(5)
        return nn.Sequential(
            nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
        )

    batches = [data(seed=s, dtype=torch.float32) for s in range(3)]
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    with vw.watch(model, opt, scaler=scaler) as w:
        for x, y in batches:
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn(model(x).float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    ref = make()
    ropt = torch.optim.SGD(ref.parameters(), lr=0.1)
    df = w.history
    for s, (x, y) in enumerate(batches):
        ropt.zero_grad()
        store = {}
        hs = [
            ref[i].register_forward_hook(lambda m, a, o, i=i, store=store: store.__setitem__(i, o))
            for i in (0, 2)
        ]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(ref(x).float(), y)
        for h in hs:
            h.remove()
        gs = torch.autograd.grad(loss, [store[0], store[2]], retain_graph=True)
        loss.backward()
        for n, p in ref.named_parameters():
            np.testing.assert_allclose(
                value(df, s, top(n), n, "grad_norm"), float(p.grad.double().norm()), rtol=1e-6
            )
        for i, g in zip((0, 2), gs):
            np.testing.assert_allclose(
                value(df, s, str(i), None, "output_grad_norm"), float(g.double().norm()), rtol=1e-2
            )
        ropt.step()


def test_a_step_the_grad_scaler_skips_leaves_nothing_behind():
    """An inf loss makes the GradScaler skip the optimizer step: no record for it, and its
    backward's block-output gradients (inf) do not leak into the next recorded step."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    ref = copy.deepcopy(model)
    batches = [data(seed=s, dtype=torch.float32) for s in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    with vw.watch(model, opt, scaler=scaler) as w:
        for s, (x, y) in enumerate(batches):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            if s == 1:
                loss = loss * float("inf")
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    assert w.step == 2 and sorted(w.history.step.unique()) == [0, 1]
    assert not [a for a in w.alerts if a.metric == "nonfinite"]
    ropt = torch.optim.SGD(ref.parameters(), lr=0.1)
    df = w.history
    for s, (x, y) in zip((0, 1), (batches[0], batches[2])):
        ropt.zero_grad()
        store = {}
        h = ref[0].register_forward_hook(lambda m, a, o, store=store: store.__setitem__(0, o))
        loss = loss_fn(ref(x), y)
        h.remove()
        (g,) = torch.autograd.grad(loss, [store[0]], retain_graph=True)
        loss.backward()
        np.testing.assert_allclose(
            value(df, s, "0", None, "output_grad_norm"), fl(g.double().norm()), rtol=1e-6
        )
        np.testing.assert_allclose(
            value(df, s, "0", "0.weight", "grad_norm"),
            fl(ref[0].weight.grad.double().norm()),
            rtol=1e-6,
        )
        ropt.step()


def test_frozen_parameters_and_parameters_without_grads():
    torch.manual_seed(0)
    model = nn.ModuleDict({"body": mlp(), "unused": nn.Linear(3, 3).double()})
    for p in model["body"][1].parameters():
        p.requires_grad_(False)  # frozen block

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model["body"]
            self.unused = model["unused"]

        def forward(self, x):
            return self.body(x)

    net = Net()
    ref = copy.deepcopy(net)
    batches = [data(seed=s) for s in range(6)]
    w = watched_run(
        net,
        OPTIMIZERS["adam"],
        batches,
        blocks=["body.0", "body.1", "body.2", "body.3", "unused"],
        alerts={"patience": 2},
    )
    oracle = oracle_run(
        ref, OPTIMIZERS["adam"], batches, block_names=["body.0", "body.2", "body.3"]
    )
    df = w.history
    assert not (df.block == "unused").any()  # no gradient: no rows, not zeros
    norms = df[df.metric.isin(["grad_norm", "weight_norm", "update_ratio"])]
    assert not norms.parameter.str.startswith("body.1.", na=False).any()  # frozen: no rows
    assert not ((df.block == "body.1") & (df.metric == "grad_norm")).any()
    assert set(df[(df.block == "body.1")].metric) == {
        "output_grad_norm",
        "act_mean",
        "act_std",
        "act_saturated",
    }
    assert_matches_oracle(
        w,
        [({k: v for k, v in rec.items()}, outs) for rec, outs in oracle],
        lambda n: ".".join(n.split(".")[:2]),
    )
    assert not [a for a in w.alerts if a.block in ("unused", "body.1")]


def test_torch_compile_gives_correct_numbers_or_warns():
    """A torch.compile'd model (aot_eager backend: dynamo and AOT autograd, no C compiler):
    the parameter norms come from the optimizer and are exact; block outputs are either
    recorded correctly or a WatchWarning says they are missing, never silently empty."""
    model = mlp()
    ref = copy.deepcopy(model)
    batches = [data(seed=s) for s in range(3)]
    compiled = torch.compile(model, backend="aot_eager")
    opt = OPTIMIZERS["sgd"](model.parameters())
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with vw.watch(compiled, opt) as w:
            for x, y in batches:
                opt.zero_grad()
                loss_fn(compiled(x), y).backward()
                opt.step()
    oracle = oracle_run(ref, OPTIMIZERS["sgd"], batches, block_names=["0", "1", "2", "3"])
    df = w.history
    watch_warnings = [c for c in caught if issubclass(c.category, vw.WatchWarning)]
    for s, (rec, outs) in enumerate(oracle):
        for n, (g, _, d) in rec.items():
            np.testing.assert_allclose(value(df, s, top(n), n, "grad_norm"), g, rtol=RTOL)
            np.testing.assert_allclose(value(df, s, top(n), n, "update_norm"), d, rtol=RTOL)
        if watch_warnings:  # pragma: no cover - depends on the torch version
            assert not (df.metric == "output_grad_norm").any()
        else:
            for b, v in outs.items():
                np.testing.assert_allclose(value(df, s, b, None, "output_grad_norm"), v, rtol=1e-9)


class Bypass(nn.Module):
    """Calls its submodules' weights functionally: forward hooks never run."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8).double()
        self.b = nn.Linear(8, 3).double()

    def forward(self, x):
        h = torch.tanh(nn.functional.linear(x, self.a.weight, self.a.bias))
        return nn.functional.linear(h, self.b.weight, self.b.bias)


def test_blocks_that_never_run_give_a_clear_warning():
    model = Bypass()
    opt = OPTIMIZERS["sgd"](model.parameters())
    x, y = data()
    with pytest.warns(vw.WatchWarning, match="did not run"):
        with vw.watch(model, opt) as w:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    df = w.history
    assert set(df.metric) >= {"grad_norm", "update_ratio"}
    assert 0 < value(df, 0, "a", "a.weight", "grad_norm") < np.inf
    assert "output_grad_norm" not in set(df.metric)


def test_close_removes_every_hook_and_training_is_bit_identical():
    model = mlp(act=nn.ReLU)
    ref = copy.deepcopy(model)
    opt = OPTIMIZERS["adamw"](model.parameters())
    ropt = OPTIMIZERS["adamw"](ref.parameters())
    before = hook_state(model, opt)
    w = vw.watch(model, opt, every=2, analyze_every=None)
    assert hook_state(model, opt) != before
    batches = [data(seed=s) for s in range(5)]
    for x, y in batches:
        for m, o in ((model, opt), (ref, ropt)):
            o.zero_grad()
            loss_fn(m(x), y).backward()
            o.step()
    w.close()
    w.close()  # idempotent
    assert hook_state(model, opt) == before
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n
    # no-optimizer mode removes its gradient hooks too
    w2 = vw.watch(model)
    assert hook_state(model) != hook_state(ref)
    w2.close()
    assert hook_state(model) == hook_state(ref)


def test_hooks_removed_when_the_loop_raises():
    model = mlp()
    opt = OPTIMIZERS["sgd"](model.parameters())
    before = hook_state(model, opt)
    with pytest.raises(RuntimeError, match="boom"):
        with vw.watch(model, opt):
            x, y = data()
            loss_fn(model(x), y).backward()
            raise RuntimeError("boom")
    assert hook_state(model, opt) == before


def test_analyze_every_runs_gradient_flow_without_disturbing_training():
    """analyze_every: vgcore.gradient_flow on a copy of the weights after the step, in eval
    mode, on the step's input; the training run (dropout's random draws included) is bit for
    bit the unwatched one."""
    import vgcore

    def make():
        torch.manual_seed(4)
        return nn.Sequential(
            nn.Sequential(nn.Linear(6, 8), nn.Tanh()),
            nn.Dropout(0.3),
            nn.Sequential(nn.Linear(8, 8), nn.Tanh()),
            nn.Linear(8, 3),
        ).double()

    model, ref = make(), make()
    batches = [data(seed=s) for s in range(5)]
    opt, ropt = OPTIMIZERS["adam"](model.parameters()), OPTIMIZERS["adam"](ref.parameters())
    torch.manual_seed(11)
    names = ("gradient_flow", "jacobian_singular_values")
    with vw.watch(model, opt, analyze_every=2, analyze=names) as w:
        for x, y in batches:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    torch.manual_seed(11)
    flows, svals = {}, {}
    for s, (x, y) in enumerate(batches):
        ropt.zero_grad()
        loss_fn(ref(x), y).backward()
        ropt.step()
        if s % 2 == 0:
            with torch.random.fork_rng(devices=[]):
                cp = copy.deepcopy(ref).eval()
                flows[s] = vgcore.gradient_flow(cp, x)
                svals[s] = vgcore.jacobian_singular_values(cp, x)
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n
    assert [s for s, _ in w.analyses] == [0, 0, 2, 2, 4, 4]
    assert model.training and all(m.training for m in model.modules())
    for s, r in w.analyses[0::2]:
        np.testing.assert_allclose(r.log10_grad_norms, flows[s].log10_grad_norms, rtol=1e-12)
    for s, r in w.analyses[1::2]:
        np.testing.assert_allclose(
            r.block_log_singular_values, svals[s].block_log_singular_values, rtol=1e-12
        )
    df = w.history
    rows = df[df.metric == "flow_log10_grad_norm"]
    assert sorted(rows.step.unique()) == [0, 2, 4]
    np.testing.assert_allclose(
        rows[rows.step == 2].value.to_numpy(), flows[2].log10_grad_norms[1:], rtol=1e-12
    )


# -- activation statistics -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "act", [nn.Sigmoid, nn.Tanh, nn.ReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus]
)
def test_activation_statistics_match_closed_forms(act):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 64), act(), nn.Linear(64, 3)).double()
    with torch.no_grad():
        model[0].weight.mul_(8.0)  # push many units into saturation / off
    ref = copy.deepcopy(model)
    batches = [data(n=40, seed=0)]
    w = watched_run(model, OPTIMIZERS["sgd"], batches, alerts=False)
    x, _ = batches[0]
    z = ref[0](x).detach().requires_grad_(True)
    h = ref[1](z)
    (d,) = torch.autograd.grad(h.sum(), z)
    from vgcore.activations import from_torch_module
    from vgcore.watch.stats import _max_derivative

    a = from_torch_module(ref[1])
    low = (d.abs() < 1e-3 * _max_derivative(a)).double()
    df = w.history
    np.testing.assert_allclose(value(df, 0, "1", "1", "act_mean"), fl(h.mean()), rtol=RTOL)
    np.testing.assert_allclose(
        value(df, 0, "1", "1", "act_std"), fl(h.std(unbiased=False)), rtol=1e-9
    )
    metric = "act_saturated" if a.low_derivative == "saturated" else "act_inactive"
    assert low.mean() > 0.01  # the test means something
    np.testing.assert_allclose(value(df, 0, "1", "1", metric), float(low.mean()), rtol=RTOL)
    if a.low_derivative == "inactive":
        np.testing.assert_allclose(
            value(df, 0, "1", "1", "act_dead"), float(low.bool().all(0).double().mean()), rtol=RTOL
        )


def test_a_shared_activation_module_is_reported_per_call():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.l3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
            self.act = nn.Tanh()

        def forward(self, x):
            return self.l3(self.act(self.l2(self.act(self.l1(x)))))

    torch.manual_seed(0)
    net = Net().double()
    w = watched_run(net, OPTIMIZERS["sgd"], [data()], blocks=["l1", "l2", "l3"], alerts=False)
    df = w.history
    acts = df[df.metric == "act_mean"]
    assert sorted(acts.parameter) == ["act[0]", "act[1]"]
    assert list(acts.sort_values("parameter").block) == ["l1", "l2"]
    x, _ = data()
    np.testing.assert_allclose(
        value(df, 0, "l2", "act[1]", "act_mean"),
        fl(net.act(net.l2(net.act(net.l1(x)))).mean()),
        rtol=1e-2,
    )


# -- alerts --------------------------------------------------------------------------------------
def deep_sigmoid(depth=10, width=16):
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Sequential(nn.Linear(6 if i == 0 else width, width), nn.Sigmoid()))
    layers.append(nn.Linear(width, 3))
    return nn.Sequential(*layers).double()


def test_vanishing_alert_names_block_step_and_fixes(caplog):
    model = deep_sigmoid()
    batches = [data(seed=0)] * 6
    with caplog.at_level(logging.WARNING, logger="vgcore.watch"):
        w = watched_run(model, OPTIMIZERS["sgd"], batches, alerts={"patience": 3})
    van = [a for a in w.alerts if a.kind == "vanishing" and a.metric == "grad_ratio"]
    assert van and van[0].block == "0" and van[0].step == 2
    assert "ReLU + He init" in van[0].fixes and "residual blocks" in van[0].fixes
    # the ratio really is below 1e-6 at that step
    df = w.history
    r = value(df, 2, "0", None, "grad_norm") / value(df, 2, "10", None, "grad_norm")
    np.testing.assert_allclose(van[0].value, r, rtol=1e-12)
    assert r < 1e-6
    assert any("vanishing gradient in block '0'" in m for m in caplog.messages)
    # a healthy model raises nothing
    w2 = watched_run(mlp(), OPTIMIZERS["sgd"], batches, alerts={"patience": 3})
    assert not w2.alerts


def test_exploding_alerts_growth_and_first_nonfinite():
    model = mlp()
    opt = OPTIMIZERS["sgd"](model.parameters())
    x, y = data()
    with vw.watch(model, opt) as w:
        for s in range(6):
            opt.zero_grad()
            scale = 1e4 if s >= 2 else 1.0
            loss = loss_fn(model(x), y) * scale
            if s == 4:
                loss = loss + model[1][0].weight.sum() * float("nan")
            loss.backward()
            if s < 4:
                opt.step()
            else:
                with torch.no_grad():  # keep the weights; the optimizer still steps
                    opt.step()
    kinds = [(a.kind, a.metric, a.block, a.step) for a in w.alerts]
    assert ("exploding", "grad_growth", "3", 2) in kinds
    nonfinite = [a for a in w.alerts if a.metric == "nonfinite"]
    assert len(nonfinite) == 1 and nonfinite[0].step == 4
    # only block 1's weight meets the NaN
    assert nonfinite[0].block == "1" and nonfinite[0].parameter == "1.0.weight"
    assert "gradient clipping" in nonfinite[0].fixes


def test_dead_and_saturated_alerts():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    ).double()
    with torch.no_grad():
        model[0].weight.mul_(100.0)  # tanh saturated
        model[2].bias.fill_(-100.0)  # every ReLU off
    w = watched_run(
        model, lambda p: torch.optim.SGD(p, lr=1e-3), [data()] * 3, alerts={"patience": 2}
    )
    by = {(a.kind, a.parameter): a for a in w.alerts}
    assert ("dead", "3") in by and by[("dead", "3")].value == 1.0 and by[("dead", "3")].step == 1
    assert "leaky ReLU" in by[("dead", "3")].fixes
    assert ("saturated", "1") in by and by[("saturated", "1")].value > 0.5
    assert "ReLU + He init" in by[("saturated", "1")].fixes


def test_plateau_alert():
    model = mlp()
    opt = OPTIMIZERS["sgd"](model.parameters())
    x, y = data()
    with vw.watch(model, opt, alerts={"plateau_window": 6}) as w:
        for s in range(10):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            w.observe(loss=2.0 - 1e-5 * s if s < 3 else 2.0)
    pl = [a for a in w.alerts if a.kind == "plateau"]
    assert len(pl) == 1 and pl[0].step == 5 and pl[0].block is None
    # a falling loss raises none
    with vw.watch(model, opt, alerts={"plateau_window": 6}) as w2:
        for s in range(10):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            w2.observe(loss=2.0 * 0.9**s)
    assert not [a for a in w2.alerts if a.kind == "plateau"]


# -- results -------------------------------------------------------------------------------------
def test_history_columns_plot_and_report(tmp_path):
    w = watched_run(mlp(), OPTIMIZERS["sgd"], [data(seed=s) for s in range(3)])
    df = w.history
    assert list(df.columns) == ["step", "block", "parameter", "metric", "value"]
    assert set(df.metric) <= set(vw.METRICS)
    fig = w.plot()
    assert len(fig.axes) >= 4
    import matplotlib.pyplot as plt

    plt.close(fig)
    w2 = watched_run(deep_sigmoid(depth=4), OPTIMIZERS["adam"], [data(seed=s) for s in range(3)])
    rep = vw.write_watch_report({"tanh": w, "sigmoid": w2}, tmp_path / "rep")
    assert rep.html.exists() and rep.markdown.exists()
    assert len(rep.figures) == 3 and all(p.exists() for p in rep.figures)
    import pandas as pd

    back = pd.read_csv(tmp_path / "rep" / "data" / "tanh_history.csv")
    assert len(back) == len(df)
    assert "sigmoid" in rep.markdown.read_text()
    assert "watched Sequential" in w.summary()
    from vgcore.watch.report import is_watch_input

    assert is_watch_input(w) and is_watch_input([w, w2]) and is_watch_input({"a": w})
    assert not is_watch_input([]) and not is_watch_input([w, 3]) and not is_watch_input("w")


def test_tensorboard_scalars(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    model = mlp()
    opt = OPTIMIZERS["sgd"](model.parameters())
    with vw.watch(model, opt, tensorboard=tmp_path / "tb") as w:
        x, y = data()
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        w.observe(loss=loss)
    files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert files
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    tags = ea.Tags()["scalars"]
    assert "grad_norm/0" in tags and "loss" in tags and "update_ratio/3" in tags
    np.testing.assert_allclose(
        ea.Scalars("grad_norm/0")[0].value, value(w.history, 0, "0", None, "grad_norm"), rtol=1e-6
    )


def test_tensorboard_missing_names_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"vgcore\[tensorboard\]"):
        vw.watch(mlp(), tensorboard=tmp_path)


def test_the_module_is_callable_as_the_function():
    """vgcore.watch is both the package and the function: calling the module is watch()."""
    model = mlp()
    with vw(model, every=2) as w:
        assert isinstance(w, vw.Watch) and w.every == 2
    assert hook_state(model) == hook_state(mlp())


def test_importing_the_package_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, vgcore.watch, vgcore.watch.report, vgcore.integrations; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_bad_input_names_the_argument():
    model = mlp()
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        vw.watch("model")
    with pytest.raises(TypeError, match="optimizer must be"):
        vw.watch(model, optimizer=3)
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        vw.watch(model, every=0)
    with pytest.raises(ValueError, match="analyze_every"):
        vw.watch(model, analyze_every=-1)
    with pytest.raises(ValueError, match="update_every must be an integer >= 1, got 0"):
        vw.watch(model, update_every=0)
    with pytest.raises(ValueError, match="'nope' is not a submodule"):
        vw.watch(model, blocks=["nope"])
    with pytest.raises(ValueError, match="unknown setting"):
        vw.watch(model, alerts={"patiense": 3})
    with pytest.raises(ValueError, match="patience must be an integer >= 1"):
        vw.watch(model, alerts={"patience": 0})
    with pytest.raises(ValueError, match="observe: loss must be a scalar"):
        with vw.watch(model) as w:
            w.observe(loss=torch.ones(3))
    assert hook_state(model) == hook_state(mlp())


def test_digits_demo_shows_vanishing_and_recovery():
    """The training comparison of the example and the demo (digits, or a synthetic task of the
    same size without scikit-learn): the sigmoid MLP under SGD raises vanishing alerts and
    leaves its first block still; BatchNorm keeps the gradient at the first block within a
    few decades of the last."""
    from vgcore.watch.demo import train_comparison

    runs, acc, _ = train_comparison(
        40, recipes=["sigmoid + SGD", "sigmoid + BatchNorm"], every=5, depth=10
    )
    sgd, bn = runs["sigmoid + SGD"], runs["sigmoid + BatchNorm"]
    assert sgd.blocks[0] == "0" and sgd.blocks[-1] == "10"
    assert any(a.kind == "vanishing" and a.block == "0" for a in sgd.alerts)
    s = max(sgd.history.step)
    df = sgd.history
    assert value(df, s, "0", None, "update_ratio") < 1e-8
    assert value(df, s, "0", None, "grad_norm") < 1e-6 * value(df, s, "10", None, "grad_norm")
    dfb = bn.history
    assert value(dfb, s, "0", None, "grad_norm") > 1e-3 * value(dfb, s, "10", None, "grad_norm")
    assert not [a for a in bn.alerts if a.kind == "vanishing"]
    assert set(acc) == {"sigmoid + SGD", "sigmoid + BatchNorm"}


def test_relu_parts_and_mixed_dtype_stacking_are_exact():
    """A rectifier's per-unit activity (its sum over the batch) is > 0 exactly where some
    sample has the unit on, tiny values included; 0-d results of several float dtypes stack
    into float64 without rounding."""
    from vgcore.activations import from_torch_module
    from vgcore.watch.stats import activation_metrics, activation_parts, stack64

    y = torch.zeros(5, 4)
    y[2, 0] = 1e-30  # one sample, a tiny value: alive
    y[:, 1] = torch.tensor([0.5, 0.0, 2.0, 0.0, 1.0])
    y[4, 3] = 3.0  # column 2 all zero: dead
    act = from_torch_module(nn.ReLU())
    (s1, s2, active), alive = activation_parts(act, None, y, 1e-3, True)
    assert alive is not None and (alive > 0).tolist() == [True, True, False, True]
    assert float(s1) == pytest.approx(float(y.double().sum()), rel=1e-7)
    assert float(s2) == pytest.approx(float(y.double().norm()), rel=1e-7)
    assert float(active) == 5.0
    m = activation_metrics(y.numel(), float(s1), float(s2) ** 2, y.numel() - float(active), alive)
    assert m["act_dead"] == 0.25
    assert m["act_low_derivative"] == 15 / 20
    vals = [torch.tensor(0.1, dtype=torch.float16), torch.tensor(1 / 3), torch.tensor(2.5)]
    v = stack64(vals, torch.device("cpu"))
    assert v.dtype == torch.float64
    assert v.tolist() == [float(t) for t in vals]


def test_one_pass_parameter_sums_against_float64():
    """The compiled one-pass sums (weights' and gradients' sums of squares with the weights'
    copy before a step, the difference's after it) against math.fsum of the float64 values:
    1e-12 relative (float64 sums in a fixed order); the copy bit for bit; refusals name the
    argument."""
    from vgcore import _core

    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        xs = [rng.standard_normal(n).astype(dt) for n in (0, 1, 7, 8, 1001)]
        gs = [rng.standard_normal(x.size).astype(dt) for x in xs]
        cs = [np.full_like(x, np.nan) for x in xs]
        got = _core.snapshot_sums(xs, [*gs[:-1], None], cs)
        assert got.shape == (len(xs), 2) and got.dtype == np.float64
        for i, (x, g, c) in enumerate(zip(xs, gs, cs)):
            np.testing.assert_allclose(got[i, 0], math.fsum(x.astype(float) ** 2), rtol=1e-12)
            want_g = math.fsum(g.astype(float) ** 2) if i < len(xs) - 1 else 0.0
            np.testing.assert_allclose(got[i, 1], want_g, rtol=1e-12)
            assert np.array_equal(c, x)
        after = [(x * (1 + 1e-7) + 1e-9).astype(dt) for x in xs]
        diff = _core.difference_sums(after, xs)
        for d, a, b in zip(diff, after, xs):
            want = math.fsum((a.astype(float) - b.astype(float)) ** 2)
            np.testing.assert_allclose(d, want, rtol=1e-12)
    x = np.ones(4, np.float32)
    with pytest.raises(TypeError, match=r"xs\[0\] must have dtype float32 or float64"):
        _core.snapshot_sums([np.ones(4, np.int64)], [None], [None])
    with pytest.raises(ValueError, match=r"gs\[0\] must match"):
        _core.snapshot_sums([x], [np.ones(5, np.float32)], [None])
    with pytest.raises(ValueError, match=r"copies\[0\] must match"):
        _core.snapshot_sums([x], [None], [np.ones(4, np.float64)])
    ro = np.ones(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"copies\[0\] must be writeable"):
        _core.snapshot_sums([x], [None], [ro])
    with pytest.raises(ValueError, match=r"xs\[0\] must be C-contiguous"):
        _core.snapshot_sums([np.ones((4, 4), np.float32).T], [None], [None])
    with pytest.raises(ValueError, match="same length"):
        _core.difference_sums([x], [])
    with pytest.raises(TypeError, match=r"b\[0\] must be a numpy array"):
        _core.difference_sums([x], [None])
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        _core.snapshot_sums([x], [None], [None], threads=0)
    with pytest.raises(ValueError, match="threads must be >= 1, got -1"):
        _core.difference_sums([x], [x], threads=-1)


def test_one_pass_sums_on_threads_are_the_same_numbers():
    """Arrays of several blocks (2^15 entries) share their blocks among threads: the sums on
    1, 2, 3 and 7 threads are bit for bit those of one thread and within 1e-12 of math.fsum;
    the copies are exact."""
    from vgcore import _core

    rng = np.random.default_rng(1)
    sizes = (3 * 2**15 + 5, 2**15, 17, 0, 5 * 2**15 - 1)
    for dt in (np.float32, np.float64):
        xs = [rng.standard_normal(n).astype(dt) for n in sizes]
        gs = [rng.standard_normal(n).astype(dt) for n in sizes]
        after = [(x * (1 + 1e-6)).astype(dt) for x in xs]
        runs, diffs = [], []
        for threads in (1, 2, 3, 7):
            cs = [np.full_like(x, np.nan) for x in xs]
            runs.append(_core.snapshot_sums(xs, gs, cs, threads=threads))
            diffs.append(_core.difference_sums(after, xs, threads=threads))
            assert all(np.array_equal(c, x) for c, x in zip(cs, xs))
        assert all(np.array_equal(r, runs[0]) for r in runs)
        assert all(np.array_equal(d, diffs[0]) for d in diffs)
        for i, (x, g, a) in enumerate(zip(xs, gs, after)):
            np.testing.assert_allclose(runs[0][i, 0], math.fsum(x.astype(float) ** 2), rtol=1e-12)
            np.testing.assert_allclose(runs[0][i, 1], math.fsum(g.astype(float) ** 2), rtol=1e-12)
            want = math.fsum((a.astype(float) - x.astype(float)) ** 2)
            np.testing.assert_allclose(diffs[0][i], want, rtol=1e-12)


class _MixedLayouts(nn.Module):
    """Parameters the one-pass sums take (contiguous float64) beside ones they leave to torch:
    a transposed (non-contiguous) weight and a bfloat16 scale."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(6, 8).double()
        self.w_t = nn.Parameter(torch.randn(3, 8, dtype=torch.float64).t())  # (8, 3), strided
        self.scale = nn.Parameter(torch.tensor([1.5, 0.5, 2.0], dtype=torch.bfloat16))

    def forward(self, x):
        return (torch.tanh(self.a(x)) @ self.w_t) * self.scale.double()


@pytest.mark.parametrize("opt_name", ["sgd_momentum", "adam"])
def test_norms_match_on_the_compiled_pass_and_torchs_alike(opt_name, monkeypatch):
    """Contiguous float64 parameters go through the compiled one-pass sums, a non-contiguous
    weight and a bfloat16 parameter through torch's foreach norms, in the same step: every
    recorded norm and update matches the direct float64 computation (1e-10; the bfloat16
    parameter's norms, rounded to its 8 bits, 1e-2), and training is unchanged."""
    make = OPTIMIZERS[opt_name]
    model = _MixedLayouts()
    assert not model.w_t.is_contiguous()
    ref = copy.deepcopy(model)
    batches = [data(seed=s) for s in range(3)]
    from vgcore import _core

    sizes: list[list[int]] = []
    one_pass = _core.snapshot_sums

    def spy(xs, gs, cs, **kw):
        sizes.append([x.size for x in xs])
        return one_pass(xs, gs, cs, **kw)

    monkeypatch.setattr(_core, "snapshot_sums", spy)
    w = watched_run(model, make, batches, activations=False, output_grads=False)
    oracle = oracle_run(ref, make, batches, block_names=["a"])
    # the Linear's weight and bias took the compiled pass (last first), the other two torch's
    assert sizes and all(sz == [8, 48] for sz in sizes)
    df = w.history
    for s, (rec, _) in enumerate(oracle):
        for name, (g, wn, d) in rec.items():
            rtol = 1e-2 if name == "scale" else RTOL
            for metric, want in (("grad_norm", g), ("weight_norm", wn), ("update_norm", d)):
                got = df[(df.step == s) & (df.metric == metric) & (df.parameter == name)]
                assert len(got) == 1, (s, name, metric)
                np.testing.assert_allclose(float(got.value.iloc[0]), want, rtol=rtol)
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_logged_steps_shortcut_gives_the_general_paths_numbers(dtype, monkeypatch):
    """Whole local CPU parameters take the shortcut through the compiled passes (no per-tensor
    set-up once the copies exist): every recorded number is bit for bit that of the general
    path, with a frozen layer and a parameter without a gradient on the way (the shortcut is
    taken: the general snapshot runs on the first logged step only, where the copies are
    made)."""
    from vgcore.watch import stats

    def run(shortcut):
        model = mlp(widths=(6, 16, 16, 16, 3), dtype=dtype)
        model[1][0].weight.requires_grad_(False)
        extra = nn.Parameter(torch.ones(3, dtype=dtype))  # in the optimizer, never used
        opt = torch.optim.Adam([*model.parameters(), extra], lr=1e-2)
        batches = [data(seed=s, dtype=dtype) for s in range(4)]
        with vw.watch(model, opt) as w:
            w._fast_ok = shortcut
            for x, y in batches:
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                w.observe(loss=loss)
        return w.history

    general_calls = []
    general = stats.snapshot_norms

    def spy(*a, **kw):
        general_calls.append(1)
        return general(*a, **kw)

    monkeypatch.setattr(stats, "snapshot_norms", spy)
    fast = run(True)
    assert len(general_calls) == 1
    slow = run(False)
    assert len(general_calls) == 1 + 4
    assert len(fast) == len(slow) > 0
    assert fast[["step", "block", "parameter", "metric"]].equals(
        slow[["step", "block", "parameter", "metric"]]
    )
    np.testing.assert_array_equal(fast.value.to_numpy(), slow.value.to_numpy())
    assert {"update_ratio", "grad_norm"} <= set(fast.metric)


def test_parameters_given_new_storage_between_steps_are_followed():
    """The compiled passes keep NumPy views of the parameters between steps: a weight given new
    storage through ``.data`` (same shape; then a transposed, non-contiguous one, which torch's
    path takes), clipped in place, or of a new shape, is read as it is at each step."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    lin = model[0]
    edits = [
        lambda: None,
        lambda: setattr(lin.weight, "data", lin.weight.data.clone() * 0.5),
        lambda: lin.weight.data.clamp_(-0.05, 0.05),
        lambda: setattr(lin.weight, "data", lin.weight.data.t()),
        lambda: setattr(lin.weight, "data", lin.weight.data.contiguous() + 0.01),
    ]
    want = []
    with vw.watch(model, opt) as w:
        for s, edit in enumerate(edits):
            edit()
            x, y = data(seed=s)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            before = lin.weight.detach().clone()
            g = lin.weight.grad.detach().clone()
            opt.step()
            want.append((fl(g.norm()), fl(before.norm()), fl((lin.weight - before).norm())))
    df = w.history
    for s, (g, wn, d) in enumerate(want):
        for metric, v in (("grad_norm", g), ("weight_norm", wn), ("update_norm", d)):
            got = value(df, s, "0", "0.weight", metric)
            np.testing.assert_allclose(got, v, rtol=RTOL, err_msg=f"step {s} {metric}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rectifier_sums_in_one_pass_match_torch(dtype):
    """A ReLU output on the CPU takes the compiled pass (sum, sum of squares, active count,
    per-unit sums): against float64 torch reductions, 1e-12 relative in float64 and 1e-6 in
    float32 (lanes summed in float32 within a row); the count exact; a 4-D output (batch,
    channels, h, w) per unit of its flattened sample; a non-contiguous output goes to torch's
    reductions with the same numbers."""
    from vgcore import _core
    from vgcore.activations import from_torch_module
    from vgcore.watch.stats import activation_parts

    act = from_torch_module(nn.ReLU())
    g = torch.Generator().manual_seed(4)
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    for shape in [(37, 53), (5, 3, 4, 7), (1, 16), (9, 1)]:
        y = torch.relu(torch.randn(shape, generator=g, dtype=dtype))
        y64 = y.double()
        s1, s2, active, colsum = _core.rectifier_sums(y.numpy())
        np.testing.assert_allclose(s1, float(y64.sum()), rtol=rtol)
        np.testing.assert_allclose(s2, float((y64 * y64).sum()), rtol=rtol)
        assert active == float((y > 0).sum())
        assert colsum.dtype == y.numpy().dtype and colsum.shape == (y[0].numel(),)
        np.testing.assert_allclose(colsum, y64.flatten(1).sum(0).numpy(), rtol=rtol)
        fast, alive = activation_parts(act, None, y, 1e-3, True)
        slow, _ = activation_parts(act, None, y.t() if y.dim() == 2 else y[:, ::1], 1e-3, True)
        assert all(isinstance(v, float) for v in fast)
        if y.dim() == 2 and min(shape) > 1:
            # the transposed output: torch's path, the same statistics of other units
            assert all(isinstance(v, torch.Tensor) for v in slow)
            np.testing.assert_allclose([float(v) for v in slow], fast, rtol=rtol)
        assert alive is not None and (alive > 0).tolist() == (y64.flatten(1).sum(0) > 0).tolist()
    with pytest.raises(ValueError, match="y must have at least 2 dimensions"):
        _core.rectifier_sums(np.ones(3, np.float32))

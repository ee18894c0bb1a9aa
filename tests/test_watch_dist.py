"""vgcore.watch under data-parallel and sharded training: two processes on the CPU (gloo).

The recorded norms must equal those of one process training on the full batch (DDP averages
gradients; FSDP shards parameters and gradients, whose squared sums are combined), and only
rank 0 writes. Oracle: the single-process run of tests/test_watch.py's ``oracle_run``. FSDP runs
both as ``fully_shard`` and as the ``FullyShardedDataParallel`` wrapper (on the CPU with
``device_id=cpu``), with the original parameters (``use_orig_params=True``: one rank's shard of a
tensor can be empty, without a gradient) and with flat parameters (each wrapped block's tensors
concatenated: the monitor splits the rank's shard back into them).
"""

from __future__ import annotations

import copy
import datetime
import os
import pickle
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402

from test_watch import OPTIMIZERS, data, loss_fn, mlp, oracle_run, value  # noqa: E402

pytestmark = [
    pytest.mark.needs_torch,
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available"),
    pytest.mark.no_sanitizer(reason="spawns fresh interpreters without the ASan preload"),
]

STEPS = 3
WORLD = 2


MODES = ("ddp", "fsdp2", "fsdp1_orig", "fsdp1_flat")


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/rendezvous",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        for mode in MODES:
            _train(rank, mode, f"{tmp}/{mode}")
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()
    # The results are on disk: leave without the interpreter's teardown, where torch's gloo
    # threads occasionally abort a process ("terminate called without an active exception")
    # after the work is done. A failure during the work still fails the run.
    os._exit(0)


def _train(rank: int, mode: str, tmp: str) -> None:
    import vgcore.watch as vw

    model = mlp(act=nn.ReLU)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model)
        params = wrapped.parameters()
    elif mode == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (WORLD,))
        for block in model:
            fully_shard(block, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
        params = wrapped.parameters()
    elif mode in ("fsdp1_orig", "fsdp1_flat"):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        kw = {"use_orig_params": mode == "fsdp1_orig", "device_id": torch.device("cpu")}
        for i in range(len(model) - 1):  # nested units: blocks 0-2 own flat parameters
            model[i] = FSDP(model[i], **kw)
        wrapped = FSDP(model, **kw)  # the root's flat parameter: the last block's tensors
        params = wrapped.parameters()
    else:
        raise ValueError(mode)
    opt = OPTIMIZERS["sgd_momentum"](params)
    with vw.watch(wrapped, opt, tensorboard=f"{tmp}/tb") as w:
        for s in range(STEPS):
            x, y = data(n=16, seed=s)
            xs, ys = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
            opt.zero_grad()
            loss = loss_fn(wrapped(xs), ys)
            loss.backward()
            no_grad = sum(p.grad is None for p in wrapped.parameters())
            opt.step()
            w.observe(loss=loss)
    hist = w.history
    with open(f"{tmp}/rank{rank}.pkl", "wb") as fh:
        pickle.dump(
            {
                "history": hist,
                "mode": w._dist.mode,
                "writer": w._dist.writer,
                "blocks": w.blocks,
                "no_grad": no_grad,
                "flat": sum(hasattr(p, "_fqns") for p in wrapped.parameters()),
            },
            fh,
        )


def _spawn(tmp: str, limit: float = 150.0) -> None:
    for mode in MODES:
        os.makedirs(f"{tmp}/{mode}", exist_ok=True)
    ctx = mp.spawn(_worker, args=(tmp,), nprocs=WORLD, join=False)
    deadline = time.monotonic() + limit
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"the 2-process run did not finish in {limit:.0f} s")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One pair of processes trains under DDP, then under FSDP (fully_shard)."""
    tmp = tmp_path_factory.mktemp("watch_dist")
    _spawn(str(tmp))
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_distributed_norms_equal_single_process_full_batch(mode, runs):
    tmp_path = runs / mode
    res = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]
    expected = "ddp" if mode == "ddp" else "fsdp"
    assert [r["mode"] for r in res] == [expected] * WORLD
    assert [r["writer"] for r in res] == [True, False]
    # rank 0 alone writes TensorBoard events
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1
    ref = mlp(act=nn.ReLU)
    batches = [data(n=16, seed=s) for s in range(STEPS)]
    oracle = oracle_run(
        copy.deepcopy(ref), OPTIMIZERS["sgd_momentum"], batches, block_names=["0", "1", "2", "3"]
    )
    df = res[0]["history"]
    assert res[0]["blocks"] == ["0", "1", "2", "3"]
    # the cases mean something: an empty shard without a gradient; flat parameters
    assert (sum(r["no_grad"] for r in res) > 0) == (mode == "fsdp1_orig")
    assert all((r["flat"] == 4) == (mode == "fsdp1_flat") for r in res)
    # every tensor recorded once, under its own name (no flat parameter, no wrapper prefix)
    names = set(df[df.metric == "grad_norm"].parameter.dropna())
    assert names == {n for n, _ in ref.named_parameters()}
    ropt = OPTIMIZERS["sgd_momentum"](ref.parameters())
    for s, (rec, outs) in enumerate(oracle):
        for name, (g, wn, d) in rec.items():
            b = name.split(".")[0]
            np.testing.assert_allclose(value(df, s, b, name, "grad_norm"), g, rtol=1e-10)
            np.testing.assert_allclose(value(df, s, b, name, "weight_norm"), wn, rtol=1e-10)
            np.testing.assert_allclose(value(df, s, b, name, "update_norm"), d, rtol=1e-10)
        for b, v in outs.items():
            np.testing.assert_allclose(value(df, s, b, None, "output_grad_norm"), v, rtol=1e-10)
        x, y = batches[s]
        np.testing.assert_allclose(
            value(df, s, None, None, "loss"), float(loss_fn(ref(x), y).detach()), rtol=1e-10
        )
        with torch.no_grad():
            h = ref[0](x)
        np.testing.assert_allclose(
            value(df, s, "0", "0.1", "act_mean"), float(h.mean()), rtol=1e-10
        )
        np.testing.assert_allclose(
            value(df, s, "0", "0.1", "act_dead"), float((h <= 0).all(0).double().mean()), rtol=1e-10
        )
        ropt.zero_grad()
        loss_fn(ref(x), y).backward()
        ropt.step()
    # every rank holds the same combined numbers
    pd = pytest.importorskip("pandas")
    pd.testing.assert_frame_equal(res[0]["history"], res[1]["history"])

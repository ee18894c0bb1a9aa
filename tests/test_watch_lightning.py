"""The Lightning callback: the numbers of a Lightning run equal the plain loop's oracle."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("pytorch_lightning")
from torch import nn  # noqa: E402

from test_watch import OPTIMIZERS, data, loss_fn, mlp, oracle_run, value  # noqa: E402

pytestmark = [
    pytest.mark.needs_torch,
    # Lightning's advice on data-loader workers and logging is not what is tested here
    pytest.mark.filterwarnings("ignore::UserWarning:pytorch_lightning"),
    pytest.mark.filterwarnings("ignore::UserWarning:lightning_fabric"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*num_workers:UserWarning"),
    # Lightning 2.6 with torch 2.13's pytree
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]


class Module(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return loss_fn(self(x), y)

    def configure_optimizers(self):
        return OPTIMIZERS["sgd_momentum"](self.parameters())


def test_lightning_callback_matches_the_plain_loop():
    from vgcore.integrations.lightning import WatchCallback

    net = mlp()
    ref = copy.deepcopy(net)
    batches = [data(seed=s) for s in range(3)]
    cb = WatchCallback(every=1)
    trainer = pl.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb],
    )
    trainer.fit(Module(net), torch.utils.data.DataLoader(batches, batch_size=None))
    w = cb.watch
    assert w._closed and w.step == 3
    assert w.blocks == ["net.0", "net.1", "net.2", "net.3"]
    oracle = oracle_run(ref, OPTIMIZERS["sgd_momentum"], batches, block_names=["0", "1", "2", "3"])
    df = w.history
    for s, (rec, outs) in enumerate(oracle):
        for name, (g, wn, d) in rec.items():
            b, n = "net." + name.split(".")[0], "net." + name
            np.testing.assert_allclose(value(df, s, b, n, "grad_norm"), g, rtol=1e-10)
            np.testing.assert_allclose(value(df, s, b, n, "weight_norm"), wn, rtol=1e-10)
            np.testing.assert_allclose(value(df, s, b, n, "update_norm"), d, rtol=1e-10)
        for b, v in outs.items():
            np.testing.assert_allclose(
                value(df, s, "net." + b, None, "output_grad_norm"), v, rtol=1e-10
            )
    assert sorted(df[df.metric == "loss"].step) == [0, 1, 2]
    for (n, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n

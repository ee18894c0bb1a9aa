"""Workloads of the training monitor (:func:`vgcore.watch`): CPU training loops timed watched
(vgcore) and unwatched (the peer), so that ``peer / vgcore`` is ``1 / (1 + overhead)``.

The loops are those of the issue's targets (at most 10% overhead with ``every=1``, at most 2%
with ``every=10``), Adam, one loss per step:

- an 8-layer MLP (width 512, batch 128, ReLU), cross-entropy;
- a 2-layer LSTM (input 64, N=256, T=100, batch 32) with a linear head, cross-entropy;
- a 6-block Transformer encoder (d=256, 4 heads, feed-forward 1024, sequence 128, batch 8) with
  a linear head, mean squared error.

Each timed call restores the initial weights and a fresh Adam state and runs ``steps`` steps
(``every=10``: one logged step in ten, the steady state) of a long-lived monitor; the answer is the sequence of
losses, which watching leaves bit for bit unchanged at equal thread counts (agreement 0
there; across the suite's thread settings torch rounds its float32 reductions differently,
within the row's tolerance 1e-5). FLOP counts are those of
forward + backward (three forwards) per step. ``bench/watch_bench.py`` measures the same loops
in paired, alternated rounds (the protocol of BENCHMARKS.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from vgcore.bench import peers as P

__all__ = ["LOOPS", "training_loop", "watch_workloads"]

#: The loops' names, in the order of BENCHMARKS.md.
LOOPS = ("mlp", "lstm", "transformer")


def training_loop(
    name: str, device: str = "cpu", quick: bool = False
) -> tuple[Any, Callable[[Any], Any], float, str]:
    """One of :data:`LOOPS`: ``(model, loss_of, flops_per_step, label)``; ``loss_of(m)`` runs
    the forward pass of ``m`` (the model or a copy) on a fixed batch and returns the loss."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model: Any
    if name == "mlp":
        L, W, B = (4, 64, 16) if quick else (8, 512, 128)
        layers: list[nn.Module] = []
        for _ in range(L):
            layers += [nn.Linear(W, W), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(W, 10)).to(device)
        x = torch.randn(B, W, device=device)
        y = torch.randint(0, 10, (B,), device=device)
        flops = 3.0 * 2 * B * (L * W * W + 10 * W)
        label = f"{L}-layer MLP width {W} batch {B}"
        return model, lambda m: nn.functional.cross_entropy(m(x), y), flops, label
    if name == "lstm":
        N, T, B, inp = (32, 10, 4, 8) if quick else (256, 100, 32, 64)

        class LSTMNet(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = nn.LSTM(inp, N, num_layers=2, batch_first=True)
                self.head = nn.Linear(N, 10)

            def forward(self, x: Any) -> Any:
                out, _ = self.lstm(x)
                return self.head(out[:, -1])

        model = LSTMNet().to(device)
        x = torch.randn(B, T, inp, device=device)
        y = torch.randint(0, 10, (B,), device=device)
        flops = 3.0 * 2 * T * B * 4 * N * ((inp + N) + (N + N))
        label = f"2-layer LSTM N={N} T={T} batch {B}"
        return model, lambda m: nn.functional.cross_entropy(m(x), y), flops, label
    if name == "transformer":
        d, L, S, B = (32, 2, 16, 2) if quick else (256, 6, 128, 8)

        class Encoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.1, batch_first=True)
                self.encoder = nn.TransformerEncoder(layer, L, enable_nested_tensor=False)
                self.head = nn.Linear(d, d)

            def forward(self, x: Any) -> Any:
                return self.head(self.encoder(x))

        model = Encoder().to(device)
        x = torch.randn(B, S, d, device=device)
        t = torch.randn(B, S, d, device=device)
        flops = 3.0 * L * (2 * B * S * 12 * d * d + 4 * B * S * S * d)
        label = f"{L}-block TransformerEncoder d={d} S={S} batch {B}"

        def loss(m: Any) -> Any:
            # dropout draws from the global generator: seeded, every run sees the same masks
            torch.manual_seed(1)
            return nn.functional.mse_loss(m(x), t)

        return model, loss, flops, label
    raise ValueError(f"unknown training loop {name!r}; expected one of {LOOPS}")


def _runner(
    torch: Any, model: Any, loss_of: Callable[[Any], Any], steps: int, every: int | None
) -> Callable[[], np.ndarray]:
    """``steps`` Adam steps of a copy of ``model`` from its initial weights (and a fresh Adam
    state), watched with ``every`` (None: plain); returns the losses. The monitor is built on
    the first call and kept (a long-lived monitor, as in training: its set-up is not timed);
    every call runs a multiple of ``every`` steps, so each holds ``steps / every`` logged
    steps."""
    import copy

    import vgcore.watch as vw

    m = copy.deepcopy(model)
    init = copy.deepcopy(m.state_dict())
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    state: dict[str, Any] = {}

    def run() -> np.ndarray:
        if every is not None and "watch" not in state:
            state["watch"] = vw.watch(m, opt, every=every)
        w = state.get("watch")
        m.load_state_dict(init)
        opt.state.clear()
        losses = []
        # the loop restarts from the same weights every call: its plateau alert is an
        # artifact; alerts are still checked (their cost counts), not printed
        log = logging.getLogger("vgcore.watch")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                loss = loss_of(m)
                loss.backward()
                opt.step()
                if w is not None:
                    w.observe(loss=loss)
                losses.append(loss.detach())
        finally:
            log.setLevel(level)
        return torch.stack(losses).double().numpy()

    return run


def _watch_workload(name: str, every: int, quick: bool) -> Any:
    from vgcore.bench.workloads import Workload

    torch = P.torch_or_none()
    assert torch is not None
    model, loss_of, flops, label = training_loop(name, quick=quick)
    steps = max(every, 3 if quick else 10)
    watched = _runner(torch, model, loss_of, steps, every)

    def ours(th: int) -> np.ndarray:
        torch.set_num_threads(th)
        return watched()

    w = Workload(
        f"torch-watch-{name}-every{every}",
        f"vgcore.watch every={every}: {label}, Adam, {steps} steps",
        flops * steps,
        ours,
        family="torch-watch",
        compare="values",
        # watching leaves the training bit for bit unchanged at equal thread counts (tested);
        # the suite may compare runs on different thread counts, where torch's float32
        # reductions round differently (a few 1e-7 over the loop)
        tol=1e-5,
        steps=steps,
        note=(
            "peer: the same loop unwatched; peer / vgcore = 1 / (1 + overhead); target "
            + ("<= 10%" if every == 1 else "<= 2%")
        ),
    )
    w.peers.append(
        P.Peer(
            "unwatched training loop",
            _runner(torch, model, loss_of, steps, None),
            configure=P.torch_configure(torch),
        )
    )
    return w


def watch_workloads(quick: bool) -> list[tuple[str, Any]]:
    """``(name, factory)`` pairs, empty without torch: each loop with ``every=1`` and 10."""
    if P.torch_or_none() is None:
        return []
    return [
        (f"torch-watch-{name}-every{every}", partial(_watch_workload, name, every, quick))
        for name in LOOPS
        for every in (1, 10)
    ]

"""Per-block gradient flow of torch modules against their floor: one plain forward and
backward of the same module (float32, CPU or CUDA where available), in both memory modes.

Run: ``python bench/torch_flow_bench.py [--rounds 7] [--threads 1] [--no-memory]``. Prints
medians over alternated rounds (floor, ``memory="graph"``, ``memory="blocks"`` one after the
other in each round) and ratios for a 12-block Transformer encoder (d=256, sequence 128,
batch 8) and a ResNet-style CNN; then the memory of each (a fresh process per measurement):

- ``saved``: the peak of the bytes autograd holds for the backward pass (tensors saved by the
  graph, counted once per storage through ``torch.autograd.graph.saved_tensors_hooks``);
- ``peak RSS``: the process's peak resident memory during the call above its resident memory
  before it (Linux: ``/proc/self/clear_refs`` resets the peak after the warm-up; large
  allocations mapped and unmapped directly, ``MALLOC_MMAP_THRESHOLD_``), CPU only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
from torch import nn

from vgcore.reference.nets import resnet, transformer
from vgcore.torchmodel import TorchModel
from vgcore.torchmodel.flow import gradient_flow

NETS = {
    "transformer": (
        "Transformer encoder 12x d=256 T=128 B=8",
        lambda: transformer(256, 12, heads=8),
    ),
    "resnet": ("ResNet-style CNN 8 blocks c=64 32x32 B=16", lambda: resnet(64, 8)),
}


def _input(net: str, dev: torch.device) -> torch.Tensor:
    if net == "transformer":
        return torch.randn(8, 128, 256, device=dev)
    return torch.randn(16, 3, 32, 32, device=dev)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _runners(module: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    module.eval()
    tm = TorchModel(module)

    def floor() -> None:
        module.zero_grad(set_to_none=True)
        y = module(x)
        (0.5 * (y * y).sum()).backward()

    return {
        "floor": floor,
        "graph": lambda: gradient_flow(tm, x, memory="graph"),
        "blocks": lambda: gradient_flow(tm, x, memory="blocks"),
        "graph+params": lambda: gradient_flow(tm, x, memory="graph", param_grads=True),
        "blocks+params": lambda: gradient_flow(tm, x, memory="blocks", param_grads=True),
    }


def bench_time(net: str, rounds: int, dev: torch.device) -> None:
    torch.manual_seed(0)
    label, make = NETS[net]
    run = _runners(make().to(dev), _input(net, dev))
    for fn in run.values():  # warm-up (and the one-off block discovery)
        fn()
    times: dict[str, list[float]] = {k: [] for k in run}
    for _ in range(rounds):
        for k, fn in run.items():
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    f = med["floor"]
    print(f"{label}: floor (fwd+bwd) {f * 1e3:.1f} ms")
    for k in ("graph", "blocks", "graph+params", "blocks+params"):
        print(f"  gradient_flow memory={k:<14} {med[k] * 1e3:8.1f} ms  {med[k] / f:.2f}x floor")


class _Saved:
    """Peak bytes of the tensors an autograd graph holds for its backward pass."""

    def __init__(self) -> None:
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, references]
        self.now = 0
        self.peak = 0

    def pack(self, t: torch.Tensor) -> Any:
        key = t.untyped_storage().data_ptr()
        ent = self.live.get(key)
        if ent is None:
            ent = self.live[key] = [t.untyped_storage().nbytes(), 0]
            self.now += ent[0]
            self.peak = max(self.peak, self.now)
        ent[1] += 1
        return _Ref(self, key, t.detach())  # no grad_fn: no cycle through the graph

    def drop(self, key: int) -> None:
        ent = self.live[key]
        ent[1] -= 1
        if ent[1] == 0:
            self.now -= ent[0]
            del self.live[key]


class _Ref:
    def __init__(self, owner: _Saved, key: int, t: torch.Tensor) -> None:
        self.owner, self.key, self.t = owner, key, t

    def __del__(self) -> None:
        self.owner.drop(self.key)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure_memory(net: str, mode: str, dev: torch.device) -> dict[str, float]:
    """One mode's memory (run in a fresh process)."""
    torch.manual_seed(0)
    _, make = NETS[net]
    fn = _runners(make().to(dev), _input(net, dev))[mode]
    fn()  # warm-up: block discovery keeps a whole graph once
    fn()
    out: dict[str, float] = {}
    if dev.type == "cpu":
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident size
        before = _rss_kib("VmRSS")
        fn()
        out["rss_mib"] = (_rss_kib("VmHWM") - before) / 1024
    saved = _Saved()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda r: r.t):
        fn()
    out["saved_mib"] = saved.peak / 2**20
    return out


def bench_memory(net: str, dev: torch.device, threads: int) -> None:
    label = NETS[net][0]
    print(f"{label}: memory during one call (fresh process each)")
    for mode in ("floor", "graph", "blocks"):
        cmd = [sys.executable, __file__, "--_memory", net, mode, "--device", str(dev)]
        cmd += ["--threads", str(threads)]
        # Large blocks straight from mmap, returned on free: the resident size follows what
        # is live (glibc otherwise keeps freed blocks of the warm-up in its heap).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        res = json.loads(out)
        rss = f", peak RSS +{res['rss_mib']:.0f} MiB" if "rss_mib" in res else ""
        print(f"  {mode:<7} saved tensors {res['saved_mib']:7.1f} MiB{rss}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-time", action="store_true")
    ap.add_argument("--only", choices=list(NETS))
    ap.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if args._memory:
        print(json.dumps(measure_memory(args._memory[0], args._memory[1], dev)))
        return
    print(f"torch {torch.__version__}, {dev}, threads {torch.get_num_threads()}, float32")
    nets = [args.only] if args.only else list(NETS)
    for net in nets:
        if not args.no_time:
            bench_time(net, args.rounds, dev)
        if not args.no_memory:
            bench_memory(net, dev, args.threads)


if __name__ == "__main__":
    main()

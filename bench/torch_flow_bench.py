"""Per-block gradient flow of torch modules against their floor: one plain forward and
backward of the same module (float32, CPU or CUDA where available).

Run: ``python bench/torch_flow_bench.py [--repeats 7]``. Prints medians and ratios for a
12-block Transformer encoder (d=256, sequence 128, batch 8) and a ResNet-style CNN.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from vgcore.reference.nets import resnet, transformer
from vgcore.torchmodel import TorchModel
from vgcore.torchmodel.flow import gradient_flow


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, repeats: int, dev: torch.device) -> float:
    fn()  # warm-up (and, for gradient_flow, the one-off block discovery)
    _sync(dev)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench(name: str, module: nn.Module, x: torch.Tensor, repeats: int) -> None:
    module.eval()
    dev = x.device

    def plain() -> None:
        module.zero_grad(set_to_none=True)
        y = module(x)
        (0.5 * (y * y).sum()).backward()

    tm = TorchModel(module)
    floor = median_time(plain, repeats, dev)
    flow = median_time(lambda: gradient_flow(tm, x), repeats, dev)
    flow_p = median_time(lambda: gradient_flow(tm, x, param_grads=True), repeats, dev)
    f = gradient_flow(tm, x)
    print(
        f"{name:<34} floor (fwd+bwd) {floor * 1e3:8.1f} ms | gradient_flow {flow * 1e3:8.1f} ms "
        f"({flow / floor:.2f}x) | with param_grads {flow_p * 1e3:8.1f} ms ({flow_p / floor:.2f}x)"
        f" | {len(f.log_grad_norms) - 1} blocks"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {dev}, threads {torch.get_num_threads()}, float32")
    bench(
        "Transformer encoder 12x d=256 T=128 B=8",
        transformer(256, 12, heads=8).to(dev),
        torch.randn(8, 128, 256, device=dev),
        args.repeats,
    )
    bench(
        "ResNet-style CNN 8 blocks c=64 32x32 B=16",
        resnet(64, 8).to(dev),
        torch.randn(16, 3, 32, 32, device=dev),
        args.repeats,
    )


if __name__ == "__main__":
    main()

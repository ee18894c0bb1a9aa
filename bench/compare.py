"""Quick ratio table: vgcore vs PyTorch eager on the foundation workloads (medians).

Usage: python bench/compare.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

from workloads import LSTMFlow, MLPFlow, rel_diff


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up outside the timer
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    import torch

    for w in (LSTMFlow(), MLPFlow()):
        ours = {th: median_time(partial(w.vgcore, th), args.repeat) for th in (1, 2)}
        peer = {}
        for th in (1, 2):
            torch.set_num_threads(th)
            peer[th] = median_time(w.torch_eager, args.repeat)
        diff = rel_diff(w.vgcore(), w.torch_eager())
        best_ours, best_peer = min(ours.values()), min(peer.values())
        print(
            f"{type(w).__name__}: vgcore {ours[1]:.3f}s/1t {ours[2]:.3f}s/2t "
            f"({w.flops / best_ours / 1e9:.0f} GFLOP/s); torch eager {peer[1]:.3f}s/1t "
            f"{peer[2]:.3f}s/2t; speed-up {best_peer / best_ours:.2f}x; rel diff {diff:.1e}"
        )


if __name__ == "__main__":
    main()

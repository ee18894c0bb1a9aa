"""Quick ratio table: vgcore vs PyTorch eager on the foundation workloads (medians).

Usage: python bench/compare.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

from workloads import LSTMFlow, MLPFlow, coverage, rel_diff


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
        # PyTorch at every setting: 1 or 2 threads, with and without flushing denormals (the
        # float32 gradients of long runs underflow into denormals, which are slow on x86).
        peer = {}
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            for th in (1, 2):
                torch.set_num_threads(th)
                peer[(th, flush)] = median_time(w.torch_eager, args.repeat)
        torch.set_flush_denormal(False)
        np_time = median_time(w.numpy, max(3, args.repeat // 2))
        np_diff = rel_diff(w.vgcore(), w.numpy())
        print(f"  numpy peer: {np_time:.3f}s (rel diff {np_diff:.1e})")
        diff = rel_diff(w.vgcore(), w.torch_eager())
        best_ours = min(ours.values())
        best_key = min(peer, key=peer.get)
        peers = " ".join(f"{v:.3f}s/{th}t{'/ftz' if fl else ''}" for (th, fl), v in peer.items())
        print(
            f"{type(w).__name__}: vgcore {ours[1]:.3f}s/1t {ours[2]:.3f}s/2t "
            f"({w.flops / best_ours / 1e9:.0f} GFLOP/s); torch eager {peers}; "
            f"speed-up vs best ({best_key[0]}t{', flush denormals' if best_key[1] else ''}) "
            f"{peer[best_key] / best_ours:.2f}x; rel diff {diff:.1e}; torch curve coverage "
            f"{coverage(w.torch_eager()):.0%}"
        )


if __name__ == "__main__":
    main()

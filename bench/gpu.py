"""The CUDA backend on one GPU against its peers, for BENCHMARKS.md.

Workloads (issue: canonical GPU sizes): BPTT gradient flow of LSTM / GRU / RNN with
N = 256..4096, B = 32, T = 1000; Lyapunov exponents top-32 and top-256 (LSTM, N = 1024);
the device's GEMM throughput (float32, N = 4096) measured in the same run. Peers on the same
device: PyTorch CUDA (eager cell loop with per-step gradients; ``torch.func.jvp`` for the
tangent steps) and JAX when installed. Singular values of a 1000-layer MLP (width 1024, one
input, tanh) on the CUDA backend alone (checked against the CPU on its first 20 layers).

    python bench/gpu.py              # needs a CUDA device, CuPy, numba-cuda; prints a table
    python bench/gpu.py --quick      # N = 256 and 1024 only
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu.py --simulate   # tiny sizes in the simulator

Every row checks its result against the CPU backend (a smaller T for the check where the CPU
would take minutes). Timings exclude a warm-up call (kernel compilation).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import vgcore
from vgcore.cuda import backends


def _time(fn: Callable[[], Any], repeat: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up: compilation, caches
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _sync_device() -> None:
    try:
        import cupy

        cupy.cuda.Device().synchronize()
    except ImportError:  # pragma: no cover - the simulator
        pass


def gemm_tflops(n: int = 4096) -> float:
    """float32 GEMM throughput of the device (CuPy / cuBLAS), TFLOP/s."""
    import cupy

    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    b = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    t = _time(lambda: a @ b, 5, _sync_device)
    return 2.0 * n**3 / t / 1e12


def _torch_bptt(kind: str, N: int, B: int, T: int) -> Callable[[], Any] | None:
    """PyTorch CUDA peer: the cell stepped in an eager loop, per-step gradient norms."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[kind]
    cell = cls(N, N).cuda()
    x = torch.randn(T, B, N, device="cuda")

    def run() -> Any:
        h = torch.zeros(B, N, device="cuda", requires_grad=True)
        state: Any = (h, torch.zeros(B, N, device="cuda")) if kind == "lstm" else h
        hs = []
        for t in range(T):
            state = cell(x[t], state)
            hh = state[0] if kind == "lstm" else state
            hh.retain_grad()
            hs.append(hh)
        (0.5 * (hs[-1] ** 2).sum()).backward()
        return torch.stack([hh.grad.norm() for hh in hs]).cpu()

    return run


def _models(kind: str, N: int, seed: int = 0) -> Any:
    cls = {"lstm": vgcore.LSTM, "gru": vgcore.GRU, "rnn": vgcore.RNN}[kind]
    return cls.from_sizes(N, N, seed=seed, dtype=np.float32)


def _agrees_flow(m: Any, x: np.ndarray) -> bool:
    a = vgcore.gradient_flow(m, x)
    b = vgcore.gradient_flow(m, x, backend="cuda")
    return bool(np.allclose(a.log_grad_norms, b.log_grad_norms, rtol=0, atol=1e-4))


def _agrees_lyapunov(m: Any, x: np.ndarray, k: int) -> bool:
    a = vgcore.lyapunov(m, x, k=k)
    b = vgcore.lyapunov(m, x, k=k, backend="cuda")
    scale = max(1.0, float(np.max(np.abs(a.exponents))))
    return bool(np.max(np.abs(a.exponents - b.exponents)) <= 1e-4 * scale)


def _agrees_singular(m: Any, x: np.ndarray) -> bool:
    a = vgcore.jacobian_singular_values(m, x).log_singular_values
    b = vgcore.jacobian_singular_values(m, x, backend="cuda").log_singular_values
    scale = max(1.0, float(np.max(np.abs(a))))
    return bool(np.max(np.abs(a - b)) <= 1e-4 * scale)


def _row_line(r: dict[str, Any]) -> str:
    sp = r["torch_cuda_s"] / r["vgcore_cuda_s"]
    return (
        f"| {r['workload']} | {r['vgcore_cuda_s']:.4g} | {r['torch_cuda_s']:.4g} | "
        f"{sp:.3g} | {r['agrees']} |"
    )


def run(
    simulate: bool,
    quick: bool,
    kinds: tuple[str, ...] = ("lstm", "gru", "rnn"),
    sizes: list[int] | None = None,
    ks: list[int] | None = None,
    svd_widths: list[int] | None = None,
) -> list[dict[str, Any]]:
    """The table's rows, each printed as soon as it is measured (a run cut short by a time
    limit keeps what it measured)."""
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    L, Lcheck = 1000, 20  # the singular values' depth, and the CPU check's
    if simulate:
        sizes, B, T, Tcheck, ks, repeat = [4], 2, 5, 5, [2], 1
        L, Lcheck, svd_widths = 5, 5, [4]
    else:
        sizes = sizes or ([256, 1024] if quick else [256, 512, 1024, 2048, 4096])
        B, T, Tcheck, repeat = 32, 1000, 20, 3
        ks = [32, 256] if ks is None else ks
        svd_widths = [1024] if svd_widths is None else svd_widths
    sync = (lambda: None) if simulate else _sync_device
    for kind in kinds:
        for N in sizes:
            m = _models(kind, N)
            x = rng.standard_normal((T, B, N)).astype(np.float32)
            t_cuda = _time(
                lambda m=m, x=x: vgcore.gradient_flow(m, x, backend="cuda"), repeat, sync
            )
            peer = None if simulate else _torch_bptt(kind, N, B, T)
            t_peer = _time(peer, repeat, sync) if peer is not None else float("nan")
            rows.append(
                {
                    "workload": f"BPTT {kind} N={N} B={B} T={T}",
                    "vgcore_cuda_s": t_cuda,
                    "torch_cuda_s": t_peer,
                    "agrees": _agrees_flow(m, x[:Tcheck]),
                }
            )
            print(_row_line(rows[-1]), flush=True)
    for k in ks:
        N = sizes[-1] if simulate else 1024
        m = _models("lstm", N)
        x = rng.standard_normal((T, B, N)).astype(np.float32)
        kk = min(k, m.state_dim)
        t_cuda = _time(
            lambda m=m, x=x, kk=kk: vgcore.lyapunov(m, x, k=kk, backend="cuda"), repeat, sync
        )
        rows.append(
            {
                "workload": f"Lyapunov lstm N={N} top-{kk} B={B} T={T}",
                "vgcore_cuda_s": t_cuda,
                "torch_cuda_s": float("nan"),
                "agrees": _agrees_lyapunov(m, x[:Tcheck], kk),
            }
        )
        print(_row_line(rows[-1]), flush=True)
    for n in svd_widths:
        m = vgcore.MLP.from_sizes([n] * (L + 1), seed=0, dtype=np.float32)
        x = rng.standard_normal((1, n)).astype(np.float32)
        t_cuda = _time(
            lambda m=m, x=x: vgcore.jacobian_singular_values(m, x, backend="cuda"), repeat, sync
        )
        head = vgcore.MLP(m.weights[:Lcheck], m.biases[:Lcheck], "tanh", dtype=np.float32)
        rows.append(
            {
                "workload": f"singular values, {L}-layer MLP N={n} B=1",
                "vgcore_cuda_s": t_cuda,
                "torch_cuda_s": float("nan"),
                "agrees": _agrees_singular(head, x),
            }
        )
        print(_row_line(rows[-1]), flush=True)
    return rows


def overhead(repeat: int = 2000) -> dict[str, float]:
    """Microseconds per call of what a step is made of on this device: a CuPy elementwise op
    on a (32, 1024) array, a Numba kernel launch through the backend's launcher on it (given
    the CuPy array, and given the kernel view the drivers make once per buffer), the step's
    GEMM (32 x 1024) @ (1024 x 4096), the fused measure-and-rescale kernel of the backward
    step (one block, an LSTM's g and dc); and the LSTM flow's time per step (N = 1024, B = 32).
    A BPTT step is 2 calls forward and 3 backward, a Lyapunov step 3 (plus 3 per QR block):
    tests/cuda_sim/test_fused_step.py counts them."""
    import cupy
    from numba import cuda

    from vgcore.cuda._arrays import arrays
    from vgcore.cuda._fused import BackwardScale

    ar = arrays()
    a = cupy.zeros((32, 1024), cupy.float32)
    w = cupy.zeros((1024, 4096), cupy.float32)

    flat = cupy.zeros(32 * 1024, cupy.float32)

    @cuda.jit
    def touch(x):  # type: ignore[no-untyped-def]
        i = cuda.grid(1)
        if i < x.size:
            x[i] = x[i] + 1.0

    def per_call(fn: Callable[[], Any]) -> float:
        return _time(lambda: [fn() for _ in range(repeat)], 1, _sync_device) / repeat * 1e6

    kflat = ar.kernel_view(flat)
    g = cupy.ones((32, 1024), cupy.float32)
    dc = cupy.ones((32, 1024), cupy.float32)
    kg, kdc = ar.kernel_view(g), ar.kernel_view(dc)
    sc = BackwardScale(ar, np.dtype(np.float32), 2, 2, True, 40, 0)
    out = {
        "cupy elementwise op (us)": per_call(lambda: a * 2.0),
        "numba kernel launch, cupy argument (us)": per_call(
            lambda: ar.launch(touch, flat.size, flat)
        ),
        "numba kernel launch, kernel view (us)": per_call(
            lambda: ar.launch(touch, flat.size, kflat)
        ),
        "cupy gemm 32x1024x4096 (us)": per_call(lambda: a @ w),
        "fused measure-and-rescale, 2 x (32, 1024) (us)": per_call(lambda: sc.step(1, kg, kdc)),
    }
    m = _models("lstm", 1024)
    x = np.random.default_rng(0).standard_normal((200, 32, 1024)).astype(np.float32)
    t = _time(lambda: vgcore.gradient_flow(m, x, backend="cuda"), 2, _sync_device)
    out["lstm flow per step, N=1024 B=32 (us)"] = t / 200 * 1e6
    return out


def table(rows: list[dict[str, Any]], gemm: float | None) -> str:
    lines = [
        "| workload | vgcore cuda (s) | torch cuda (s) | speed-up | agrees with cpu |",
        "|---|---|---|---|---|",
    ]
    lines.extend(_row_line(r) for r in rows)
    if gemm is not None:
        lines.append(f"\nDevice GEMM (float32, N = 4096): {gemm:.1f} TFLOP/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--simulate", action="store_true", help="tiny sizes in Numba's simulator")
    p.add_argument("--quick", action="store_true", help="N = 256 and 1024 only")
    p.add_argument(
        "--overhead", action="store_true", help="per-call costs of a step's parts, then exit"
    )
    p.add_argument("--kinds", default="lstm,gru,rnn", help="BPTT rows: comma-separated kinds")
    p.add_argument("--sizes", default=None, help="hidden sizes, comma-separated")
    p.add_argument("--ks", default=None, help="Lyapunov rows' k, comma-separated ('' for none)")
    p.add_argument(
        "--svd-widths",
        default=None,
        help="widths of the 1000-layer MLP singular-value rows, comma-separated ('' for none)",
    )
    args = p.parse_args(argv)
    cuda = backends()[1]
    if not cuda.available or cuda.simulator != args.simulate:
        need = "NUMBA_ENABLE_CUDASIM=1" if args.simulate else "a CUDA device"
        raise SystemExit(f"bench/gpu.py needs {need}: {cuda}")
    if args.overhead:
        for k, v in overhead().items():
            print(f"{k}: {v:.1f}")
        return []
    rows = run(
        args.simulate,
        args.quick,
        tuple(k for k in args.kinds.split(",") if k),
        None if args.sizes is None else [int(v) for v in args.sizes.split(",")],
        None if args.ks is None else [int(v) for v in args.ks.split(",") if v],
        None if args.svd_widths is None else [int(v) for v in args.svd_widths.split(",") if v],
    )
    gemm = None if args.simulate else gemm_tflops()
    print(table(rows, gemm))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])

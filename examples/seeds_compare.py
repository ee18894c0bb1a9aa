"""The seeds' remedies for vanishing gradients, measured side by side at initialisation.

Through time (matched state size D = 64, Gaussian inputs, T = 10^4 steps by default):
a tanh RNN, an LSTM with forget bias 0 and 1, a GRU, a diagonal LTI state-space layer and
Mamba's selective block (vgcore.SSM / vgcore.SelectiveSSM, from the reference modules of
vgcore.reference.ssm), all in the compiled core.
Measured: the BPTT norms ``||dL/dh_t||`` for ``L = 0.5 ||h_T||^2`` (vgcore.gradient_flow) and
the top Lyapunov exponent (vgcore.lyapunov).

Through depth (a 20-layer sigmoid MLP, width 64, on scikit-learn's digits scaled to [0, 1]):
PyTorch's default, Xavier, He, orthogonal, negative-mean and DBN pre-training
(``init="dbn"``). Measured: the per-layer gradient norms (vgcore.gradient_flow) and the
singular values of the input-output Jacobian (vgcore.jacobian_singular_values).

Writes ``seeds_time.png``, ``seeds_depth.png`` and ``seeds_results.md`` into ``--out``.

    python examples/seeds_compare.py                # T = 10^4, about 15 s on 2 cores
    python examples/seeds_compare.py --quick        # T = 500, seconds
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

import vgcore

LN10 = math.log(10.0)


def _total_log_norm(flow: Any) -> np.ndarray:
    """log ||dL/d state_t|| over the whole state (h and, for an LSTM, c)."""
    a = np.asarray(flow.log_grad_norms, dtype=np.float64)
    c = getattr(flow, "log_cell_grad_norms", None)
    if c is None:
        return a
    c = np.asarray(c, dtype=np.float64)
    return 0.5 * np.logaddexp(2 * a, 2 * c)


def time_models(d: int, seed: int) -> dict[str, tuple[Any, str]]:
    """The recurrent models with state size 64, and a note on the state."""
    import torch

    from vgcore.reference import DiagonalSSM, SelectiveSSM

    f64 = torch.float64
    return {
        "tanh RNN": (vgcore.RNN.from_sizes(d, 64, seed=seed), "h: 64"),
        "LSTM, forget bias 0": (
            vgcore.LSTM.from_sizes(d, 32, init={"name": "default", "forget_bias": 0.0}, seed=seed),
            "(h, c): 32 + 32",
        ),
        "LSTM, forget bias 1": (
            vgcore.LSTM.from_sizes(d, 32, init={"name": "default", "forget_bias": 1.0}, seed=seed),
            "(h, c): 32 + 32",
        ),
        "GRU": (vgcore.GRU.from_sizes(d, 64, seed=seed), "h: 64"),
        # the reference modules' parameters in the core's state-space layers
        "LTI SSM (S4D-Lin)": (
            vgcore.SSM.from_torch(DiagonalSSM(d, 32, init="s4d_lin", seed=seed, dtype=f64)),
            "h: 32 complex modes = 64",
        ),
        "selective SSM (Mamba)": (
            vgcore.SelectiveSSM.from_torch(
                SelectiveSSM(d, d_state=4, expand=2, seed=seed, dtype=f64)
            ),
            "h: 16 x 4 = 64 (+ conv buffer 16 x 3)",
        ),
    }


def closed_form_lambda1(name: str, model: Any, x: np.ndarray) -> float | None:
    """The top exponent from the layer's own quantities, where a closed form exists."""
    import torch

    if name.startswith("LTI"):
        return float(np.log(np.abs(model.transition())).max())
    if name.startswith("selective"):
        blk = model.to_torch()
        with torch.no_grad():
            sel = blk.selection(torch.as_tensor(x, dtype=torch.float64).transpose(0, 1))
            # dh_t/dh_{t-1} = diag(exp(Delta_t A)): exponent (i, n) = mean_t Delta_{t,i} A_{i,n}
            rates = (sel["delta"].mean(dim=1)[..., None] * sel["A"]).amax(dim=(1, 2))
        return float(rates.mean())
    return None


def run_time(T: int, batch: int, seed: int) -> list[dict[str, Any]]:
    d = 8
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, batch, d))
    rows = []
    for name, (model, state) in time_models(d, seed).items():
        t0 = time.perf_counter()
        flow = vgcore.gradient_flow(model, x)
        if isinstance(model, vgcore.SelectiveSSM):
            # the loss on h_T alone, as for the other models (its state also holds the
            # convolution's buffer of recent inputs, which no loss reads)
            cot = np.array(flow.output)
            cot[:, model.d_inner * model.d_state :] = 0.0
            flow = vgcore.gradient_flow(model, x, cotangent=cot)
        ln = _total_log_norm(flow)
        steps = T
        ly = vgcore.lyapunov(model, x, k=1)
        lam = float(np.mean(ly.exponents[:, 0]))
        rows.append(
            {
                "name": name,
                "state": state,
                "log_norms": ln - ln[-1],  # 0 at t = T
                "lambda1": lam,
                "lambda1_steps": steps,
                "closed_form": closed_form_lambda1(name, model, x),
                "seconds": time.perf_counter() - t0,
            }
        )
        print(f"  {name:24s} lambda1 = {lam:+.5f}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    return rows


def run_depth(epochs: int, n_samples: int, seed: int) -> list[dict[str, Any]]:
    from sklearn.datasets import load_digits

    X = load_digits().data / 16.0
    xb = X[:n_samples]
    sizes = [64] + [64] * 19 + [10]
    inits: dict[str, Any] = {
        "PyTorch default": None,
        "Xavier (normal)": "xavier_normal",
        "He (normal)": "he_normal",
        "orthogonal": "orthogonal",
        "negative mean": "negative_mean",
        f"DBN pre-training ({epochs} epochs)": {"name": "dbn", "epochs": epochs},
    }
    rows = []
    for name, init in inits.items():
        t0 = time.perf_counter()
        kw = {"data": X} if isinstance(init, dict) else {}
        m = vgcore.MLP.from_sizes(sizes, "sigmoid", init=init, seed=seed, **kw)
        flow = vgcore.gradient_flow(m, xb)
        ln = np.asarray(flow.log_grad_norms) / LN10
        sv = vgcore.jacobian_singular_values(m, xb[:32])
        l10 = np.asarray(sv.log10_singular_values)
        rows.append(
            {
                "name": name,
                "log10_norms": ln,
                "first_over_last": float(ln[0] - ln[-1]),
                "spread": float(ln.max() - ln.min()),
                "log10_sv": l10.mean(axis=0),
                "log10_sv_top": float(l10[:, 0].mean()),
                "log10_cond": float(np.mean(sv.log_condition_number) / LN10),
                "seconds": time.perf_counter() - t0,
            }
        )
        print(f"  {name:28s} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return rows


def write_figures(
    time_rows: list[dict[str, Any]], depth_rows: list[dict[str, Any]], out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in time_rows:
        ln = r["log_norms"]
        lag = np.arange(len(ln) - 1, -1, -1)  # T - t
        ax.plot(lag[:-1], ln[:-1] / LN10, label=r["name"])
    ax.set_xscale("log")
    ax.set_xlabel("lag T - t (steps)")
    ax.set_ylabel("log10 ||dL/dh_t|| / ||dL/dh_T||")
    ax.set_ylim(bottom=max(-60.0, min(float(np.min(r["log_norms"])) / LN10 for r in time_rows)))
    ax.set_title("Through time, at initialisation (state size 64)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "seeds_time.png", dpi=110)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in depth_rows:
        a1.plot(np.arange(len(r["log10_norms"])), r["log10_norms"], marker=".", label=r["name"])
        a2.plot(np.arange(1, len(r["log10_sv"]) + 1), r["log10_sv"], marker=".", label=r["name"])
    a1.set_xlabel("layer l (0 = input)")
    a1.set_ylabel("log10 ||dL/dh_l||")
    a1.set_title("Gradient norms, 20-layer sigmoid MLP (digits)")
    a2.set_xlabel("index i")
    a2.set_ylabel("log10 sigma_i of d output / d input")
    a2.set_title("Jacobian singular values")
    a1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "seeds_depth.png", dpi=110)
    plt.close(fig)


def results_table(time_rows: list[dict[str, Any]], depth_rows: list[dict[str, Any]], T: int) -> str:
    lags = [lag for lag in (10, 100, 1000, 10000) if lag <= T]
    lines = [
        f"Through time (T = {T}, batch 4, Gaussian inputs, float64). log10 of "
        "||dL/dh_{T-lag}|| / ||dL/dh_T|| (whole state), top Lyapunov exponent lambda_1 "
        "(natural log per step; QR method with one tangent vector over all T steps; the closed form where the layer has one: max log|a_n| for the LTI layer, "
        "max over (i, n) of mean_t Delta_{t,i} A_{i,n} for the selective one) and the lag "
        "1 / |lambda_1| over which the gradient falls by e (closed form where there is one).",
        "",
        "| model | state | "
        + " | ".join(f"lag {lag}" for lag in lags)
        + " | lambda_1 (QR, k=1) | lambda_1 closed form | 1/abs(lambda_1) |",
        "|---|---|" + "---:|" * (len(lags) + 3),
    ]
    for r in time_rows:
        ln = r["log_norms"]
        vals = [f"{ln[T - lag] / LN10:.1f}" for lag in lags]
        cf = "" if r["closed_form"] is None else f"{r['closed_form']:+.5f}"
        lam = r["lambda1"]
        note = "" if r["lambda1_steps"] == T else f" ({r['lambda1_steps']} steps)"
        best = lam if r["closed_form"] is None else r["closed_form"]
        lines.append(
            f"| {r['name']} | {r['state']} | "
            + " | ".join(vals)
            + f" | {lam:+.5f}{note} | {cf} | {1 / abs(best):.0f} |"
        )
    lines += [
        "",
        "Through depth (20 sigmoid layers of width 64, digits / 16, 256 samples for the "
        "gradients, 32 for the Jacobians, float64). log10 of ||dL/dh_0|| / ||dL/dh_20||, the "
        "spread (max - min over layers) of log10 ||dL/dh_l||, the mean log10 of the top "
        "singular value of the input-output Jacobian and its log10 condition number.",
        "",
        "| init | first / last | spread | log10 sigma_1 | log10 condition |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in depth_rows:
        lines.append(
            f"| {r['name']} | {r['first_over_last']:.1f} | {r['spread']:.1f} | "
            f"{r['log10_sv_top']:.1f} | {r['log10_cond']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--T", type=int, default=10_000, help="sequence length (default 10^4)")
    p.add_argument("--epochs", type=int, default=20, help="DBN epochs per layer (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs"), help="output folder (default docs)")
    p.add_argument("--quick", action="store_true", help="T = 500, 5 DBN epochs")
    a = p.parse_args(argv)
    if a.quick:
        a.T, a.epochs = 500, 5
    a.out.mkdir(parents=True, exist_ok=True)
    print(f"through time, T = {a.T}")
    tr = run_time(a.T, 4, a.seed)
    print("through depth")
    dr = run_depth(a.epochs, 256, a.seed)
    write_figures(tr, dr, a.out)
    table = results_table(tr, dr, a.T)
    (a.out / "seeds_results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

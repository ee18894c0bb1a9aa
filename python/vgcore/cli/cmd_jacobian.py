"""`vgcore lyapunov`, `vgcore spectrum`, `vgcore singular`: the Jacobian analyses."""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from vgcore.cli._common import _emit_json, _fmt_g, _per, _table
from vgcore.cli.model_flags import _one_model, _run_analysis
from vgcore.cli.outputs import _save_plot


def _cmd_lyapunov(args: argparse.Namespace) -> int:
    from vgcore import _summaries
    from vgcore.diagnose import lyapunov_regime

    name, model, x = _one_model(args, "lyapunov")
    res = _run_analysis(
        args,
        "Lyapunov exponents",
        lambda bar: _summaries.run_lyapunov(
            model, x, k=args.k, burn_in=args.burn_in, qr_every=args.qr_every, progress=bar
        ),
    )
    s = _summaries.lyapunov_summary(res)
    regime = lyapunov_regime(s["top"])
    if args.json:
        _emit_json({"model": name, **s, "regime": regime, "plot": args.plot})
    else:
        per = _per(s["axis"])
        print(
            f"{name}: top {s['k']} Lyapunov exponents per {per} (natural log), "
            f"state dimension {s['state_dim']}"
        )
        print(
            f"  {s['batch']} trajectories (the batch), averaged over {s['accumulated_steps']} "
            f"{per}s after a burn-in of {s['burn_in']}, QR every {s['qr_every']}"
        )
        rows = [
            [f"{i + 1}{'' if ok else ' *'}", f"{m:+.5f}", f"{sd:.5f}", f"{lo:+.5f}", f"{hi:+.5f}"]
            for i, (m, sd, lo, hi, ok) in enumerate(
                zip(
                    s["exponents"],
                    s["exponents_std"],
                    s["exponents_min"],
                    s["exponents_max"],
                    s["resolved"],
                )
            )
        ]
        print(_table(["i", "lambda_i (batch mean)", "std", "min", "max"], rows))
        if not s["resolved"].all():
            print(
                f"  * unresolved: more than {s['resolution_limit']:.1f} nats per QR block below "
                "the top exponent, on the rounding-noise floor (the true values are lower)"
            )
        print(
            f"top exponent {s['top']:+.5f} +/- {s['top_std']:.5f} (batch mean +/- std): "
            f"{regime}; Kaplan-Yorke dimension {s['kaplan_yorke_dimension']:.3g} (batch mean)"
        )
    _save_plot(args, res)
    return 0


def _cmd_spectrum(args: argparse.Namespace) -> int:
    from vgcore import _summaries

    name, model, x = _one_model(args, "spectrum")
    res = _run_analysis(
        args,
        "Jacobian spectra",
        lambda bar: _summaries.run_spectrum(model, x, method=args.method, progress=bar),
    )
    s = _summaries.spectrum_summary(res)
    if args.json:
        _emit_json({"model": name, **s, "plot": args.plot})
    else:
        per = _per(s["axis"])
        n = len(s["steps"])
        jac = "d h_l / d h_(l-1)" if per == "layer" else "d h_(t+1) / d h_t"
        print(f"{name}: Jacobian {jac} of {n} {per}s x batch of {s['batch']}, method {s['method']}")
        print(f"  per-{per} median over the batch, then its median and range over the {per}s:")
        rows = []
        for label, key in (("spectral radius", "spectral_radius"), ("sigma_max", "sigma_max")):
            t = s[key + "_summary"]
            if t is None:
                rows.append([label, "n/a (non-square layers)", "", "", ""])
            else:
                rows.append(
                    [
                        label,
                        _fmt_g(t["median"]),
                        _fmt_g(t["min"]),
                        _fmt_g(t["max"]),
                        f"{t['above_1']}/{t['count']}",
                    ]
                )
        print(_table(["", "median", "min", "max", f"{per}s > 1"], rows))
        show = np.unique(np.linspace(0, n - 1, min(n, 10)).round().astype(int))
        offset = 1 if per == "layer" else 0
        rho, sig = s["spectral_radius"], s["sigma_max"]

        def rng(d: dict[str, Any], i: int) -> str:
            if not np.isfinite(d["median"][i]):
                return ""
            return f"{_fmt_g(d['min'][i])} .. {_fmt_g(d['max'][i])}"

        detail = [
            [
                int(s["steps"][i]) + offset,
                _fmt_g(rho["median"][i]) if np.isfinite(rho["median"][i]) else "n/a",
                rng(rho, i),
                _fmt_g(sig["median"][i]),
                rng(sig, i),
            ]
            for i in show
        ]
        print()
        print(
            _table(
                [per, "rho (median)", "rho (batch range)", "sigma_max", "sigma_max range"], detail
            )
        )
        if len(show) < n:
            print(f"({len(show)} of {n} {per}s shown; --json for all)")
        print(
            f"mean log sigma_max per {per}: {s['mean_log_sigma_max']:+.4f} "
            "(an upper bound on the log growth rate of any perturbation)"
        )
        mf = s.get("matrix_free")
        if mf is not None:
            print(
                f"matrix-free: {mf['operator_applications']} operator applications, "
                f"max residual {mf['max_residual']:.2e}"
                + ("" if mf["converged"] else f", {mf['not_converged']} solves not converged")
            )
    _save_plot(args, res)
    return 0


def _cmd_singular(args: argparse.Namespace) -> int:
    from vgcore import _summaries

    name, model, x = _one_model(args, "singular")
    res = _run_analysis(
        args,
        "singular values",
        lambda bar: _summaries.run_singular_values(model, x, progress=bar),
    )
    s = _summaries.singular_values_summary(res)
    if args.json:
        _emit_json({"model": name, **s, "plot": args.plot})
    else:
        per = "layers" if s["kind"] == "mlp" else "steps"
        print(
            f"{name}: singular values of the input-output Jacobian over {s['depth']} {per} "
            f"({s['rank']} per sample, batch of {s['batch']})"
        )
        print(
            f"  log10 sigma_max {s['median_log10_sigma_max']:+.3f}, log10 sigma_min "
            f"{s['median_log10_sigma_min']:+.3f}, log10 condition number "
            f"{s['median_log10_condition_number']:.3f} (batch medians)"
        )
        iso = s["isometry"]
        print(
            f"  mean sigma^2 = 10^{s['log10_mean_squared']:+.3f} (1 under dynamical "
            f"isometry), std sigma^2 = 10^{s['log10_std_squared']:+.3f}; log10 sigma has mean "
            f"{iso['mean_log_singular'] / math.log(10):+.3f} and std "
            f"{s['std_log10_singular']:.3f} decades (0 under isometry)"
        )
        print(f"  {res.isometry_summary()}")  # the verdict and its thresholds
    _save_plot(args, res)
    return 0

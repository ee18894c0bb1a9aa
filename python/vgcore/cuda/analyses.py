"""What the analyses call for ``backend="cuda"`` / ``"auto"``: the work estimates of the auto
policy, the checks of what the CUDA backend does not have yet, and the results built from the
drivers' arrays (the same result classes as the CPU's)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vgcore.cuda._probe import check_backend, resolve_backend

__all__ = [
    "flow_backend",
    "gradient_flow",
    "jacobian_backend",
    "jacobian_singular_values",
    "lyapunov_backend",
    "lyapunov_engine",
    "singular_backend",
    "unsupported_layers",
]


def _native(model: Any) -> bool:
    """A model of a kind the compiled core analyses (not a torch module, TorchModel or cell)."""
    from vgcore.models.registry import is_model, model_kind

    return is_model(model) and model_kind(model.kind).backend == "core"


def _without_kernels(b: str, model: Any) -> bool:
    """Whether ``model``'s kind has no CUDA formulas (a ValueError naming the CUDA kinds for
    ``backend="cuda"``; ``"auto"`` then stays on the CPU)."""
    from vgcore.cuda.layers import CUDA_KINDS

    if model.kind in CUDA_KINDS:
        return False
    if b == "cuda":
        raise ValueError(
            f"model kind {model.kind!r} has no CUDA kernels yet; the CUDA kinds are "
            f"{', '.join(map(repr, CUDA_KINDS))} (use backend='cpu')"
        )
    return True


_NATIVE_ONLY = (
    "backend='cuda' applies to native models (MLP, RNN, LSTM, GRU); a torch module runs on its "
    "own device"
)


def _first_checks(backend: object, model: Any, native_only: str = _NATIVE_ONLY) -> tuple[str, bool]:
    """The checks every analysis's policy starts with: the validated backend and whether the
    run stays on the CPU (``backend="cpu"``, or under ``"auto"`` a torch model or a kind without
    CUDA kernels; those two are a ValueError for ``backend="cuda"``, ``native_only`` for the
    first)."""
    b = check_backend(backend)
    if b == "cpu":
        return b, True
    if not _native(model):
        if b == "cuda":
            raise ValueError(native_only)
        return b, True
    return b, _without_kernels(b, model)


def _recurrent_work(model: Any, steps: int, batch: int) -> float:
    N = int(model.hidden_size)
    G = len(getattr(model, "gate_names", ())) or 1
    return float(steps) * batch * G * N * N


def flow_backend(backend: object, model: Any, x: Any) -> str:
    """``"cpu"`` or ``"cuda"`` for gradient_flow (validates ``backend``; a torch module or cell
    runs on torch's own device: ``"cuda"`` is refused for it)."""
    b, on_cpu = _first_checks(backend, model)
    if on_cpu:
        return "cpu"
    shape = tuple(getattr(x, "shape", ()))
    if model.axis == "depth":  # per layer, on average
        B = shape[0] if shape else 1
        sizes = model.sizes
        work = float(B) * sum(int(a) * int(b) for a, b in zip(sizes[:-1], sizes[1:]))
        work /= max(1, len(sizes) - 1)
    else:
        B = shape[1] if len(shape) == 3 else 1
        work = _recurrent_work(model, 1, int(B))
    return resolve_backend(b, 3.0 * work)  # forward, backward and the backward GEMM, per step


def lyapunov_backend(backend: object, model: Any, x: Any, k: int | None) -> str:
    """``"cpu"`` or ``"cuda"`` for lyapunov (work per step: batch * G N (N + k))."""
    b, on_cpu = _first_checks(
        backend, model, "backend='cuda' applies to native models (RNN, LSTM, GRU)"
    )
    if on_cpu:
        return "cpu"
    if b == "cuda" and model.axis == "depth":
        raise ValueError(
            "lyapunov of an MLP (through depth) is not on the cuda backend yet; use backend='cpu'"
        )
    if model.axis == "depth":
        return "cpu"
    shape = tuple(getattr(x, "shape", ()))
    B = shape[1] if len(shape) == 3 else 1
    kk = int(model.state_dim if k is None else k)
    G = len(getattr(model, "gate_names", ())) or 1
    N = int(model.hidden_size)
    return resolve_backend(b, float(B) * G * N * (N + kk))  # per step


def unsupported_layers(spec: dict[str, Any]) -> str | None:
    """Why a dense stack's layers (``spec["layers"]``, the core's per-layer dicts) have no CUDA
    kernels, or None when they all do (imports no numba: the auto policy asks it)."""
    from vgcore.cuda.layers import CUDA_ACTIVATIONS

    for i, ly in enumerate(spec["layers"]):
        if ly["block"] not in ("plain", "residual") or ly["norm"] != "none":
            what = ly["block"] if ly["block"] not in ("plain", "residual") else ly["norm"]
            return (
                f"layer {i} is a {what!r} layer, which has no CUDA kernel yet (plain and "
                "residual blocks without normalisation do); use backend='cpu'"
            )
        if ly["act"][0] not in CUDA_ACTIVATIONS:
            return (
                f"activation {ly['act'][0]!r} has no CUDA kernel yet (the CUDA activations are "
                f"{', '.join(CUDA_ACTIVATIONS)}); use backend='cpu'"
            )
    return None


def _singular_obstacle(model: Any) -> str | None:
    """Why jacobian_singular_values of ``model`` cannot run on CUDA (None when it can)."""
    if model.axis == "depth":
        return unsupported_layers({"layers": model.layer_specs()})  # no conversion
    if getattr(model, "stacked", False):
        return (
            "jacobian_singular_values on the cuda backend takes single-layer recurrent "
            "models; use backend='cpu' for a stacked one"
        )
    return None


def _singular_work(model: Any, x: Any) -> float:
    """Multiply-adds of one step of jacobian_singular_values (a layer, on average): the r
    tangent rows' product, the QR of the (m, r) block and the float64 T update (r ~ n0)."""
    shape = tuple(getattr(x, "shape", ()))
    if model.axis == "depth":
        B = shape[0] if shape else 1
        sizes = [int(v) for v in model.sizes]
        n0 = sizes[0]
        work = sum(a * b + 3 * b * n0 for a, b in zip(sizes[:-1], sizes[1:]))
        return float(B) * n0 * work / max(1, len(sizes) - 1)
    B = shape[1] if len(shape) == 3 else 1
    D = int(model.state_dim)
    return float(B) * D * (_recurrent_work(model, 1, 1) + 3.0 * D * D)


def singular_backend(backend: object, model: Any, x: Any) -> str:
    """``"cpu"`` or ``"cuda"`` for jacobian_singular_values of an already resolved model
    (validates ``backend``; what the CUDA path lacks is a ValueError naming it for
    ``backend="cuda"`` and stays on the CPU for ``"auto"``)."""
    b, on_cpu = _first_checks(backend, model)
    if on_cpu:
        return "cpu"
    why = model.jacobian_obstacle() or _singular_obstacle(model)
    if why:
        if b == "cuda":
            resolve_backend(b, 0.0)  # a missing backend is reported first
            raise ValueError(why)
        return "cpu"
    return resolve_backend(b, _singular_work(model, x))


def jacobian_singular_values(
    model: Any, spec: dict[str, Any], x: np.ndarray, h0: np.ndarray | None, progress: Any
) -> dict[str, Any]:
    """The core's ``jacobian_log_singular_values`` result keys from the CUDA driver (the
    model's spec and inputs as the analysis converted them: ``core_model``, ``step_inputs``)."""
    from vgcore.cuda.singular import log_singular_values

    return log_singular_values(model.kind, spec, x, h0, progress)


def jacobian_backend(backend: object, analysis: str) -> str:
    """``"cpu"`` for the Jacobian analyses the CUDA backend does not have yet (a ValueError
    for ``backend="cuda"``)."""
    b = check_backend(backend)
    if b == "cuda":
        resolve_backend(b, 0.0)  # a missing backend is reported first
        raise ValueError(
            f"{analysis} is not on the cuda backend yet (gradient_flow, lyapunov and "
            "jacobian_singular_values are); "
            "use backend='cpu'"
        )
    return "cpu"


def lyapunov_engine(
    model: Any,
    spec: dict[str, Any],
    h0: np.ndarray,
    v0: np.ndarray,
    burn_in: int,
    qr_every: int,
    max_records: int,
) -> Any:
    """The CUDA engine with the core engine's interface (``feed(x, total, progress)``,
    ``result()``)."""
    from vgcore.cuda.lyapunov import LyapunovEngine

    if getattr(model, "stacked", False):
        raise ValueError(
            "lyapunov on the cuda backend takes single-layer recurrent models; use "
            "backend='cpu' for a stacked one"
        )
    return LyapunovEngine(model.kind, spec, h0, v0, burn_in, qr_every, max_records)


def gradient_flow(
    model: Any,
    m: Any,
    x: Any,
    dt: np.dtype,
    *,
    h0: Any,
    cotangent: Any,
    saturation_threshold: float,
    rescale: bool,
    check_result: Any,
    unsupported: dict[str, Any],
) -> Any:
    """gradient_flow of a native model on the CUDA backend (see
    :func:`vgcore.gradient_flow`); options it does not have yet raise a ValueError."""
    import importlib

    from vgcore._validation import as_float_array
    from vgcore.analysis._layout import output_cotangent, time_major

    gf = importlib.import_module("vgcore.analysis.gradient_flow")  # the module, not the function
    from vgcore.cuda import flow

    flow.unsupported_options(**unsupported)
    if m.axis == "depth":
        if h0 is not None:
            raise ValueError("h0 is only meaningful for recurrent models; an MLP takes x alone")
        xa = as_float_array(x, "x", dt, ndim=2, shape=(None, m.input_size))
        B = xa.shape[0]
        cot = None
        if cotangent is not None:
            cot = as_float_array(cotangent, "cotangent", dt, shape=(B, m.output_size))
        stats = flow.dense_flow(
            m.to_spec(dt, check_finite=False), xa, cot, saturation_threshold, rescale
        )
        check_result(stats, "layer")
        return gf.GradientFlow(
            model=model,
            kind="mlp",
            dtype=dt,
            batch_size=B,
            log_grad_norms=stats["log_grad_norms"],
            act_mean=stats["act_mean"],
            act_std=stats["act_std"],
            saturation=stats["saturation"],
            output=stats["y"],
            low_derivative=[a.low_derivative for a in m.activations],
        )
    if m.stacked:
        raise ValueError(
            "gradient_flow on the cuda backend takes single-layer recurrent models (stacked and "
            "bidirectional ones are not there yet); use backend='cpu'"
        )
    N = m.hidden_size
    is_lstm = len(m.state_names) == 2
    xa = time_major(m, x, "x", dt, m.input_size)
    T, B, _ = xa.shape
    h0a, c0a = gf._initial_states(m, h0, dt, B)
    cot = ccot = None
    if cotangent is not None:
        if is_lstm and isinstance(cotangent, (tuple, list)):
            if len(cotangent) != 2:
                raise ValueError("an LSTM cotangent pair must be (dL/dh_T, dL/dc_T)")
            cot = as_float_array(cotangent[0], "cotangent[0]", dt, shape=(B, N))
            ccot = as_float_array(cotangent[1], "cotangent[1]", dt, shape=(B, N))
        else:
            cot = output_cotangent(m, cotangent, dt, N, T, B)
    act = gf._cell_activation(m)
    stats = flow.recurrent_flow(
        m.kind,
        m.to_spec(dt, check_finite=False),
        xa,
        None if h0a is None else h0a[0],
        None if c0a is None else c0a[0],
        cot,
        ccot,
        saturation_threshold,
        act,
        rescale,
    )
    check_result(stats, "step")
    return gf.GradientFlow(
        model=model,
        kind=model.kind,
        dtype=dt,
        batch_size=B,
        log_grad_norms=stats["log_grad_norms"],
        act_mean=stats["act_mean"],
        act_std=stats["act_std"],
        saturation=stats["saturation"],
        output=stats["h_n"],
        log_cell_grad_norms=stats["log_cell_grad_norms"] if is_lstm else None,
        gate_saturation=stats["gate_saturation"] if m.gates > 1 else None,
        low_derivative=[gf._cell_low_derivative(m)] * T,
    )

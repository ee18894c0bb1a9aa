"""Singular values of the whole input-output Jacobian, in log space (dynamical isometry)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vgcore._loader import _core
from vgcore._runtime import resolve_threads
from vgcore._validation import check_memory
from vgcore.analysis import _torch
from vgcore.analysis._spectra import (
    ProgressCallback,
    check_model,
    check_progress,
    compute_dtype,
    core_model,
    step_inputs,
)
from vgcore.models import Model
from vgcore.models.ssm import SSM, SelectiveSSM
from vgcore.models.ssm_stack import SSMStack

__all__ = [
    "ISOMETRY_MAX_MEAN_DECADES",
    "ISOMETRY_MAX_SPREAD_DECADES",
    "JacobianSingularValues",
    "jacobian_singular_values",
]

#: "near isometry" needs the singular values' spread, the standard deviation of log10 sigma,
#: at most this many decades (sigma within a factor ~3 of its typical value) ...
ISOMETRY_MAX_SPREAD_DECADES = 0.5
#: ... and the mean of sigma^2 within this many decades of 1 (a factor 10 either way).
ISOMETRY_MAX_MEAN_DECADES = 1.0
_LN10 = float(np.log(10.0))


@dataclass(repr=False)
class JacobianSingularValues:
    """Result of :func:`jacobian_singular_values`.

    Units: ``log_*`` names are natural logs, ``log10_*`` names decades (the printed unit).

    Attributes
    ----------
    log_singular_values : ndarray of shape (B, r)
        Natural logs of the singular values of ``d h_S / d h_0`` (the whole MLP, or the whole
        sequence; an LSTM's state is ``(h, c)``, a stacked model's every layer's state),
        descending; ``r`` is the smallest width
        along the way (the state dimension for recurrent models). ``-inf`` marks exact zeros.
    depth : int
        Layers or time steps in the product.
    jacobi_sweeps : ndarray of int, shape (B,)
        Sweeps of the final graded Jacobi SVD (a handful when all is well).
    """

    model: Model
    kind: str
    dtype: np.dtype
    depth: int
    log_singular_values: np.ndarray
    jacobi_sweeps: np.ndarray

    @property
    def singular_values(self) -> np.ndarray:
        """The singular values themselves (0 / inf where they leave the float64 range)."""
        with np.errstate(over="ignore", under="ignore"):
            return np.exp(self.log_singular_values)

    @property
    def log10_singular_values(self) -> np.ndarray:
        """``log_singular_values`` in decades."""
        return self.log_singular_values / _LN10

    @property
    def log10_mean_squared(self) -> np.ndarray:
        """``log_mean_squared`` in decades, (B,)."""
        return self.log_mean_squared / _LN10

    @property
    def log_condition_number(self) -> np.ndarray:
        """``log(sigma_max / sigma_min)`` per batch element, shape (B,)."""
        return self.log_singular_values[:, 0] - self.log_singular_values[:, -1]

    @property
    def log_mean_squared(self) -> np.ndarray:
        """``log mean(sigma^2)`` per batch element (the mean of ``J J^T``'s spectrum), (B,)."""
        s2 = 2.0 * self.log_singular_values
        m = s2.max(axis=1, keepdims=True)
        with np.errstate(invalid="ignore"):
            return (m + np.log(np.mean(np.exp(s2 - m), axis=1, keepdims=True)))[:, 0]

    @property
    def log_std_squared(self) -> np.ndarray:
        """``log std(sigma^2)`` per batch element: the spread of ``J J^T``'s spectrum, (B,)."""
        s2 = 2.0 * self.log_singular_values
        m = s2.max(axis=1, keepdims=True)
        scaled = np.exp(s2 - m)  # in [0, 1]
        with np.errstate(divide="ignore"):
            return m[:, 0] + np.log(np.std(scaled, axis=1))

    @property
    def mean_squared(self) -> np.ndarray:
        """``mean(sigma^2)`` (inf / 0 outside the float64 range); 1 under dynamical isometry."""
        with np.errstate(over="ignore", under="ignore"):
            return np.exp(self.log_mean_squared)

    @property
    def std_squared(self) -> np.ndarray:
        """``std(sigma^2)``; 0 under exact dynamical isometry."""
        with np.errstate(over="ignore", under="ignore"):
            return np.exp(self.log_std_squared)

    def isometry(self) -> dict[str, Any]:
        """Dynamical-isometry summary over the batch.

        Returns
        -------
        dict
            ``mean_squared``, ``std_squared``: mean and spread of ``sigma^2``;
            ``log_mean_squared``, ``log_std_squared``, ``mean_log_singular``,
            ``std_log_singular``: natural logs (the last two over the finite values); ``log10_mean_squared``,
            ``mean_log10_singular``, ``std_log10_singular``: the same in decades;
            ``verdict``: "near isometry" when ``std_log10_singular`` is at most
            :data:`ISOMETRY_MAX_SPREAD_DECADES` and ``|log10_mean_squared|`` at most
            :data:`ISOMETRY_MAX_MEAN_DECADES`, else "far from isometry".
        """
        ls = self.log_singular_values
        finite = ls[np.isfinite(ls)]
        mean_log = float(np.mean(finite)) if finite.size else float("-inf")
        std_log = float(np.std(finite)) if finite.size else float("nan")
        lms = float(np.mean(self.log_mean_squared))
        near = (  # an exact zero (or inf) singular value is never near isometry
            finite.size == ls.size
            and std_log / _LN10 <= ISOMETRY_MAX_SPREAD_DECADES
            and abs(lms / _LN10) <= ISOMETRY_MAX_MEAN_DECADES
        )
        return {
            "mean_squared": float(np.mean(self.mean_squared)),
            "std_squared": float(np.mean(self.std_squared)),
            "log_mean_squared": lms,
            "log_std_squared": float(np.mean(self.log_std_squared)),
            "mean_log_singular": mean_log,
            "std_log_singular": std_log,
            "log10_mean_squared": lms / _LN10,
            "mean_log10_singular": mean_log / _LN10,
            "std_log10_singular": std_log / _LN10,
            "verdict": "near isometry" if near else "far from isometry",
        }

    def isometry_summary(self) -> str:
        """One line: the verdict, the numbers behind it (decades) and the thresholds."""
        iso = self.isometry()
        return (
            f"{iso['verdict']}: spread (std of log10 sigma) {iso['std_log10_singular']:.3g} "
            f"decades, mean sigma^2 = 10^{iso['log10_mean_squared']:+.2f} "
            f"(near isometry: spread <= {ISOMETRY_MAX_SPREAD_DECADES:g} and |log10 mean "
            f"sigma^2| <= {ISOMETRY_MAX_MEAN_DECADES:g} decades)"
        )

    def plot(self, ax: Any = None, **kw: Any) -> Any:
        """Histogram of ``log10`` singular values over the batch, annotated with
        :meth:`isometry` (needs matplotlib); see :func:`vgcore.plotting.plot_singular_values`.
        """
        from vgcore import plotting

        return plotting.plot_singular_values(self, ax=ax, **kw)

    def __repr__(self) -> str:
        B, r = self.log_singular_values.shape
        l10 = self.log10_singular_values
        return (
            f"JacobianSingularValues({self.kind}, depth {self.depth}, {r} values x B={B}, {self.dtype.name})\n"
            f"  sigma in [10^{np.min(l10):.2f}, 10^{np.max(l10):.2f}]\n"
            f"  {self.isometry_summary()}"
        )


def step_dims(spec: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """Sizes behind the core's per-step buffers (tangent.cpp) for a model spec: the initial
    state width, the widest state, the step GEMM's columns, cached values per sample and
    input-projection columns (0 for an MLP)."""
    if spec["kind"] in (SSM.kind, SelectiveSSM.kind, SSMStack.kind):
        return _core.model_step_dims(spec)  # type: ignore[no-any-return]
    if spec["kind"] == "mlp":
        n0 = int(spec["layers"][0]["weight"].shape[1])
        max_w, gc, cache = n0, 0, 0
        for ly in spec["layers"]:
            out = int(ly["weight"].shape[0])
            highway = ly["block"] == "highway"
            max_w = max(max_w, out)
            gc = max(gc, out * (2 if highway else 1))
            cache = max(
                cache, out * (3 if highway else 1) + (out + 1 if ly["norm"] != "none" else 0)
            )
        return n0, max_w, gc, cache, 0
    # A recurrent stack (tangent.cpp): L layers' states and caches side by side; the step GEMM
    # has a block per layer and two of scratch.
    L = len(spec["layers"]) if "layers" in spec else 1
    GN, N = (int(d) for d in (spec["layers"][0] if L > 1 else spec)["weight_hh"].shape)
    D = L * (2 * N if spec["kind"] == "lstm" else N)
    cache = L * {"lstm": 6 * N, "gru": 5 * N}.get(spec["kind"], N)
    gc = (L + 2) * GN if L > 1 else GN
    return D, D, gc, cache, GN


def _working_bytes(spec: dict[str, Any], batch: int, itemsize: int, threads: int) -> int:
    """Memory jacobian_log_singular_values allocates (singular.cpp), slightly generously."""
    n0, max_w, gc, cache, GN = step_dims(spec)
    chunks = min(threads, batch)
    # States and tangent rows (X, Y: B (n0 + 1) max_w each), the step GEMM's output and cache.
    steps = (batch * (n0 + 1) * (2 * max_w + gc) + batch * cache) * itemsize
    # float64 triangular factor T and its update scratch per sample; R^T per chunk (and helper).
    factors = 8 * (2 * batch + 2 * chunks + 1) * n0 * n0
    qr = chunks * max_w * n0 * itemsize
    proj = max(2**18, batch * GN) * itemsize
    return int(1.1 * (steps + factors + qr + proj))


def jacobian_singular_values(
    model: Model,
    x: Any,
    *,
    h0: Any = None,
    dtype: Any = None,
    num_threads: int | None = None,
    progress: ProgressCallback | None = None,
    backend: str = "cpu",
    **torch_options: Any,
) -> Any:
    """Singular values of the input-output Jacobian ``d h_L / d h_0`` (or ``d h_T / d h_0``).

    The product of per-step Jacobians is accumulated as a graded decomposition
    ``U diag(e^d) T`` (pre-pivoted Householder QR per step, ``d`` in float64 logs), so depth
    10,000 works and every singular value keeps its relative accuracy; a one-sided Jacobi
    SVD of the graded factor gives the final values.

    Parameters
    ----------
    model : MLP, RNN, LSTM, GRU, TorchModel or torch.nn.Module
        A torch module the native kinds do not import exactly is analysed as
        ``TorchModel(module)`` by :func:`vgcore.torchmodel.jacobians.singular_values` over its
        blocks (``torch_options``: its ``k``, ``start``, ``stop``, ``per_block``, ...).
        (MLP layers may change width; BatchNorm layers are not supported. A stacked recurrent
        model is one system whose state is every layer's state, layer by layer
        ``[h^0, (c^0), h^1, ...]``; a bidirectional one is refused: it is not a dynamical
        system forward in time.)
    x : array_like of shape (B, input_size) (MLP) or (T, B, input_size) (recurrent)
    h0 : array_like of shape (B, N), for an LSTM a pair ``(h0, c0)``; for a stacked model
        PyTorch's ``(num_layers, B, N)`` (LSTM: a pair of them); zeros by default.
    dtype : float32 or float64, optional
    num_threads : int, optional
    progress : callable(done, total), optional
    backend : {"cpu", "cuda", "auto"}
        Native models: the compiled core (``"cpu"``), the CUDA kernels (``"cuda"``: MLPs of
        plain and residual blocks, single-layer RNN / LSTM / GRU; anything else is a
        ValueError naming it) or ``"auto"`` (CUDA on a device when the work is large enough;
        see docs/cuda.md).

    Returns
    -------
    JacobianSingularValues

    Raises
    ------
    InsufficientMemoryError
        Before anything is allocated, when the working memory (per sample, about three
        ``(n0 + 1) x width`` blocks of tangent rows and two float64 ``n0 x n0`` factors, for
        input width ``n0``) would not fit in the memory available.
    """
    from vgcore.cuda.analyses import singular_backend

    model = _torch.resolve(model)
    on = singular_backend(backend, model, x)
    if _torch.is_torch_model(model):
        from vgcore.torchmodel import jacobians as _jac

        _torch.unsupported("a torch module", h0=h0, dtype=dtype)
        with _torch.threads(num_threads), model.session(x) as chain:  # type: ignore[attr-defined]
            return _jac.singular_values(chain.pairs, chain.inputs[0], model=model, **torch_options)
    if torch_options:
        raise TypeError(
            f"unexpected keyword argument(s) {sorted(torch_options)} (they apply to torch modules)"
        )
    check_model(model)
    dt = compute_dtype(model, dtype)
    threads = resolve_threads(num_threads)
    report = check_progress(progress)
    spec = core_model(model, dt)
    inp = step_inputs(model, x, h0, dt)
    if on == "cuda":
        from vgcore.cuda import analyses as _cuda

        out = _cuda.jacobian_singular_values(model, spec, inp.x, inp.h0, report)
    else:
        check_memory(
            _working_bytes(spec, inp.batch, dt.itemsize, threads), "jacobian_singular_values"
        )
        out = _core.jacobian_log_singular_values(spec, inp.x, inp.h0, threads, report)
    return JacobianSingularValues(
        model=model,
        kind=model.kind,
        dtype=dt,
        depth=inp.steps,
        log_singular_values=out["log_singular_values"],
        jacobi_sweeps=out["jacobi_sweeps"],
    )

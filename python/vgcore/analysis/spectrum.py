"""Spectral radius and largest singular value of every layer's / step's state Jacobian."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from vgcore._loader import _core
from vgcore._runtime import resolve_threads
from vgcore._validation import check_int_seed, check_memory, check_positive_int
from vgcore.analysis import _torch
from vgcore.analysis._spectra import (
    ProgressCallback,
    check_model,
    check_progress,
    compute_dtype,
    core_model,
    step_inputs,
)
from vgcore.analysis.singular_values import step_dims
from vgcore.models import Model

__all__ = ["AUTO_EXACT_MAX_DIM", "JacobianSpectrum", "jacobian_spectrum"]

#: ``method="auto"`` materialises Jacobians up to this state dimension (LAPACK on a 512 x 512
#: matrix takes a few tens of milliseconds) and goes matrix-free above it.
AUTO_EXACT_MAX_DIM = 512
METHODS = ("auto", "exact", "arnoldi", "power")


@dataclass(repr=False)
class JacobianSpectrum:
    """Result of :func:`jacobian_spectrum`.

    Row ``i`` refers to step ``steps[i]``: the Jacobian ``J = d h_{s+1} / d h_s`` of layer
    ``s + 1`` (MLP, ``h_0 = x``) or of time step ``s`` (recurrent; for an LSTM the 2N x 2N
    Jacobian of the state ``(h, c)``; for a stacked model that of every layer's state, layer by
    layer ``[h^0, (c^0), h^1, ...]``), one column per batch element.

    Attributes
    ----------
    steps : ndarray of int, shape (n,)
        The steps analysed (all of them unless ``which`` selected some).
    spectral_radius : ndarray of shape (n, B)
        ``max |eigenvalue(J)|``; NaN for a non-square (width-changing) layer.
    sigma_max : ndarray of shape (n, B)
        Largest singular value of ``J``.
    log_spectral_radius, log_sigma_max : ndarray of shape (n, B)
        Their natural logs (``log10_spectral_radius``, ``log10_sigma_max``: in decades; the sum of ``log_spectral_radius`` over steps is the log-growth
        bound; ``log_sigma_max`` bounds the log gain of any vector per step), computed in
        scaled form: right where a value overflows float64 (the value itself is then inf).
    method : str
        "exact", "arnoldi" or "power" (what "auto" resolved to).
    radius_iterations, sigma_iterations : ndarray of int, shape (n, B)
        Matrix-free methods: operator applications used (JVPs; for ``sigma_max`` pairs of a
        JVP and a VJP). 0 for "exact".
    radius_residuals, sigma_residuals : ndarray of shape (n, B)
        Matrix-free methods: relative residual ``||A y - lambda y|| / (|lambda| ||y||)`` of the
        final Ritz pair (``A = J``, or ``J^T J`` with ``lambda = sigma_max^2``). 0 for "exact".
        For a non-normal ``J`` a small residual does not mean a small error: see
        ``radius_errors``.
    converged : ndarray of bool, shape (n, B)
        Whether every matrix-free solve reached ``tol`` in its residual (a backward error).
    reliable : ndarray of bool, shape (n, B)
        Whether both values can be trusted to about ``tol`` (relative). True for LAPACK
        results ("exact" and fallbacks: backward stable, not condition-checked, so the
        radius of a Jacobian whose eigenvalues are ill-conditioned is as sensitive to rounding
        as any dense eigensolver's). A matrix-free value is reliable when its solve converged,
        its estimated error (``radius_errors`` / ``sigma_errors``) is at most ``tol`` and
        ``spectral_radius <= sigma_max`` holds. False means the value may be wrong in every
        digit (for example a Ritz value of a Jordan-like Jacobian: a point of its
        pseudospectrum, far from any eigenvalue, with a tiny residual).
    radius_errors, sigma_errors : ndarray of shape (n, B)
        Matrix-free methods: estimated relative error of each value,
        ``cond * max(residual, eps ||J||) / |lambda|`` (first order, as the LAPACK error
        bounds), with ``cond`` the eigenvalue condition number of the Ritz value in the
        projected matrix (a lower bound of the true one) and ``eps`` the unit roundoff of the
        dtype; ``sigma_max`` has ``cond = 1`` (``J^T J`` is symmetric). NaN where the value
        came from LAPACK.
    radius_condition : ndarray of shape (n, B)
        Matrix-free methods: that condition number estimate (1 for a normal ``J``); NaN for
        "exact" and non-square layers.
    radius_fallback, sigma_fallback : ndarray of bool, shape (n, B)
        Where a matrix-free value was not reliable and was recomputed by the exact method (a
        state dimension of at most ``fallback_max_dim``). The other matrix-free arrays keep
        the failed attempt's numbers there.
    """

    model: Model
    kind: str
    dtype: np.dtype
    method: str
    steps: np.ndarray
    spectral_radius: np.ndarray
    sigma_max: np.ndarray
    radius_iterations: np.ndarray
    sigma_iterations: np.ndarray
    radius_residuals: np.ndarray
    sigma_residuals: np.ndarray
    converged: np.ndarray
    reliable: np.ndarray
    radius_errors: np.ndarray
    sigma_errors: np.ndarray
    radius_condition: np.ndarray
    radius_fallback: np.ndarray
    sigma_fallback: np.ndarray
    log_spectral_radius: np.ndarray
    log_sigma_max: np.ndarray

    @property
    def axis(self) -> str:
        """ "layer" for an MLP, "step" for a recurrent model."""
        return "layer" if self.kind == "mlp" else "step"

    @property
    def log10_spectral_radius(self) -> np.ndarray:
        """``log_spectral_radius`` in decades."""
        return self.log_spectral_radius / np.log(10.0)

    @property
    def log10_sigma_max(self) -> np.ndarray:
        """``log_sigma_max`` in decades."""
        return self.log_sigma_max / np.log(10.0)

    def to_pandas(self) -> Any:
        """Long-format DataFrame: one row per (step, batch element); ``log_*`` columns are
        natural logs, ``log10_*`` columns decades."""
        import pandas as pd

        n, B = self.spectral_radius.shape
        return pd.DataFrame(
            {
                self.axis: np.repeat(self.steps, B),
                "sample": np.tile(np.arange(B), n),
                "spectral_radius": self.spectral_radius.ravel(),
                "sigma_max": self.sigma_max.ravel(),
                "radius_iterations": self.radius_iterations.ravel(),
                "sigma_iterations": self.sigma_iterations.ravel(),
                "radius_residual": self.radius_residuals.ravel(),
                "sigma_residual": self.sigma_residuals.ravel(),
                "log_spectral_radius": self.log_spectral_radius.ravel(),
                "log_sigma_max": self.log_sigma_max.ravel(),
                "log10_spectral_radius": self.log10_spectral_radius.ravel(),
                "log10_sigma_max": self.log10_sigma_max.ravel(),
                "reliable": self.reliable.ravel(),
                "radius_fallback": self.radius_fallback.ravel(),
                "sigma_fallback": self.sigma_fallback.ravel(),
            }
        )

    def plot(self, ax: Any = None, **kw: Any) -> Any:
        """Spectral radius and ``sigma_max`` per step: batch median, band over the batch, log
        scale, a line at 1 (needs matplotlib); see :func:`vgcore.plotting.plot_spectral_radius`.
        """
        from vgcore import plotting

        return plotting.plot_spectral_radius(self, ax=ax, **kw)

    def __repr__(self) -> str:
        n, B = self.spectral_radius.shape
        rho, sig = self.spectral_radius, self.sigma_max
        lines = [
            f"JacobianSpectrum({self.kind}, {n} {self.axis}s x B={B}, {self.method}, {self.dtype.name})",
            f"  spectral radius: median {np.nanmedian(rho):.4g}, range [{np.nanmin(rho):.4g}, {np.nanmax(rho):.4g}]"
            if np.isfinite(rho).any()
            else "  spectral radius: n/a (non-square layers)",
            f"  sigma_max:       median {np.median(sig):.4g}, range [{np.min(sig):.4g}, {np.max(sig):.4g}]",
        ]
        if self.method != "exact":
            lines.append(
                f"  matrix-free: {int(self.radius_iterations.sum() + self.sigma_iterations.sum())} "
                f"operator applications, max residual "
                f"{max(float(self.radius_residuals.max()), float(self.sigma_residuals.max())):.2e}"
            )
            n_fb = int(np.count_nonzero(self.radius_fallback | self.sigma_fallback))
            if n_fb:
                lines.append(f"  exact fallback: {n_fb} of {self.reliable.size} entries")
        n_bad = int(self.reliable.size - np.count_nonzero(self.reliable))
        if n_bad:
            lines.append(f"  UNRELIABLE: {n_bad} of {self.reliable.size} entries (see reliable)")
        return "\n".join(lines)


def _select_steps(which: Any, n_steps: int, axis: str) -> np.ndarray:
    """Sorted unique step indices from None, an int, a slice, a sequence or a boolean mask."""
    if which is None:
        return np.arange(n_steps, dtype=np.int64)
    if isinstance(which, slice):
        return np.arange(n_steps, dtype=np.int64)[which]
    arr = np.asarray(which)
    if arr.dtype == bool:
        if arr.shape != (n_steps,):
            raise ValueError(
                f"a boolean which must have shape ({n_steps},) (one per {axis}), got {arr.shape}"
            )
        return np.nonzero(arr)[0].astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"which must be None, an int, a slice, integers or a boolean mask, got {which!r}"
        )
    idx = np.atleast_1d(arr).astype(np.int64).ravel()
    bad = idx[(idx < -n_steps) | (idx >= n_steps)]
    if bad.size:
        raise ValueError(f"which contains {axis} {int(bad[0])}, out of range for {n_steps} {axis}s")
    return np.unique(np.where(idx < 0, idx + n_steps, idx))


def jacobian_spectrum(
    model: Model,
    x: Any,
    *,
    h0: Any = None,
    method: str = "auto",
    which: Any = None,
    dtype: Any = None,
    tol: float | None = None,
    max_iter: int = 20000,
    ncv: int = 40,
    seed: int = 0,
    num_threads: int | None = None,
    progress: ProgressCallback | None = None,
    fallback_max_dim: int = AUTO_EXACT_MAX_DIM,
    backend: str = "cpu",
) -> Any:
    """Spectral radius and largest singular value of each per-step state Jacobian.

    Parameters
    ----------
    model : MLP, RNN, LSTM, GRU, TorchModel or torch.nn.Module
        A torch module the native kinds do not import exactly is analysed per block as
        ``TorchModel(module)`` by :func:`vgcore.torchmodel.jacobians.block_spectrum`
        (``which`` may name blocks; ``method``, ``tol``, ``max_iter``, ``ncv``, ``seed`` are
        passed on).
    x : array_like of shape (B, input_size) (MLP) or (T, B, input_size) (recurrent)
    h0 : array_like of shape (B, N), for an LSTM a pair ``(h0, c0)``; for a stacked model
        PyTorch's ``(num_layers, B, N)`` (LSTM: a pair of them); zeros by default.
    method : {"auto", "exact", "arnoldi", "power"}
        "exact" builds each Jacobian from its structure and calls LAPACK (geev, gesdd).
        "arnoldi" (Krylov-Schur) and "power" (block power iteration with Rayleigh-Ritz, block
        of 4) use only JVPs and VJPs. "auto": exact when the state dimension is at most
        :data:`AUTO_EXACT_MAX_DIM` (512), "arnoldi" above.
    which : int, slice, sequence of int or boolean mask, optional
        Steps (layers) to analyse; negative indices count from the end. All by default.
    dtype : float32 or float64, optional
        Computation dtype; the model's when None.
    tol : float, optional
        Matrix-free: relative accuracy to reach (default 1e-10 in float64, 1e-5 in float32).
        A solve stops once its residual is below ``tol`` and its error estimate (condition
        number of the Ritz value times the residual, see :class:`JacobianSpectrum`) is too,
        or can no longer improve; values whose estimate stays above ``tol`` are not
        ``reliable``.
    max_iter : int
        Matrix-free: operator applications allowed per quantity and step.
    ncv : int
        Arnoldi: Krylov subspace size. Where the largest moduli are clustered (within a few
        tenths of a percent), a small subspace can converge to the runner-up eigenvalue with
        a small residual; the default 40 separated every case tested, raise it if in doubt.
    seed : int
        Matrix-free: seed of the start vectors.
    num_threads : int, optional
    progress : callable(done, total), optional
    fallback_max_dim : int
        Matrix-free: a value that is not reliable is recomputed by the exact method when the
        Jacobian's larger dimension is at most this (default :data:`AUTO_EXACT_MAX_DIM`);
        0 never falls back (unreliable values are then only flagged and warned about).
    backend : {"cpu", "auto"}
        ``"cuda"`` is not available for this analysis yet (a ValueError says so); ``"auto"``
        runs on the CPU.

    Returns
    -------
    JacobianSpectrum

    Raises
    ------
    FloatingPointError
        A state became NaN/Inf, or a Jacobian has NaN/Inf entries (its products stay
        non-finite even on inputs scaled down): the message names the step (layer) and sample.
    InsufficientMemoryError
        The saved states and results would not fit in the available memory.

    Notes
    -----
    Values are computed in scaled form: ``sigma_max`` up to the largest float of the dtype
    (and ``sigma_max^2`` far beyond it) is measured, and :attr:`JacobianSpectrum.log_sigma_max`
    is right even where ``sigma_max`` overflows float64.
    """
    from vgcore.cuda.analyses import jacobian_backend

    jacobian_backend(backend, "jacobian_spectrum")
    model = _torch.resolve(model)
    if _torch.is_torch_model(model):
        from vgcore.torchmodel import jacobians as _jac

        _torch.unsupported("a torch module", h0=h0, dtype=dtype)
        with _torch.threads(num_threads), model.session(x) as chain:  # type: ignore[attr-defined]
            return _jac.block_spectrum(
                chain.pairs,
                chain.inputs[0],
                which=which,
                method=method,
                tol=tol,
                max_iter=max_iter,
                ncv=ncv,
                seed=seed,
                model=model,
            )
    check_model(model)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    dt = compute_dtype(model, dtype)
    threads = resolve_threads(num_threads)
    max_iter = check_positive_int(max_iter, "max_iter")
    ncv = check_positive_int(ncv, "ncv", minimum=2)
    if tol is None:
        tol = 1e-10 if dt == np.float64 else 1e-5
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    report = check_progress(progress)
    spec = core_model(model, dt)
    inp = step_inputs(model, x, h0, dt)
    xa, h0a, n_steps, axis = inp.x, inp.h0, inp.steps, model.step_name
    dims = model.step_jacobian_dims()
    if isinstance(fallback_max_dim, bool) or not isinstance(fallback_max_dim, (int, np.integer)):
        raise TypeError(f"fallback_max_dim must be an integer, got {fallback_max_dim!r}")
    if fallback_max_dim < 0:
        raise ValueError(f"fallback_max_dim must be >= 0, got {fallback_max_dim}")
    steps = _select_steps(which, n_steps, axis)
    sel_dims = dims if len(dims) == 1 else [dims[s] for s in steps]
    if method == "auto":
        method = "exact" if max(sel_dims, default=0) <= AUTO_EXACT_MAX_DIM else "arnoldi"
    check_memory(
        _working_memory(
            spec,
            xa.shape[-2],
            len(steps),
            max(sel_dims, default=0),
            method,
            ncv,
            threads,
            dt,
            int(fallback_max_dim),
        ),
        "jacobian_spectrum",
    )
    out = _core.jacobian_spectrum(
        spec,
        xa,
        h0a,
        [int(s) for s in steps],
        method,
        float(tol),
        max_iter,
        ncv,
        4,
        check_int_seed(seed),
        threads,
        report,
        int(fallback_max_dim),
    )
    conv = out["converged"].astype(bool)
    reliable = out["reliable"].astype(bool)
    if not reliable.all():
        n_conv = int((~conv & ~reliable).sum())
        warnings.warn(
            f"{int((~reliable).sum())} of {reliable.size} matrix-free results are not reliable "
            f"to tol={tol:g}: their error estimate (eigenvalue condition number x residual) "
            f"stays above it, as for a strongly non-normal Jacobian ({n_conv} also did not "
            f"reach tol in their residual within max_iter={max_iter}), and their dimension "
            f"exceeds fallback_max_dim={fallback_max_dim}, so they were not recomputed exactly; "
            "see reliable, radius_errors and sigma_errors",
            RuntimeWarning,
            stacklevel=2,
        )
    return JacobianSpectrum(
        model=model,
        kind=model.kind,
        dtype=dt,
        method=method,
        steps=steps,
        spectral_radius=out["spectral_radius"],
        sigma_max=out["sigma_max"],
        radius_iterations=out["radius_iterations"],
        sigma_iterations=out["sigma_iterations"],
        radius_residuals=out["radius_residual"],
        sigma_residuals=out["sigma_residual"],
        converged=conv,
        reliable=reliable,
        radius_errors=out["radius_error"],
        sigma_errors=out["sigma_error"],
        radius_condition=out["radius_condition"],
        radius_fallback=out["radius_fallback"].astype(bool),
        sigma_fallback=out["sigma_fallback"].astype(bool),
        log_spectral_radius=out["log_spectral_radius"],
        log_sigma_max=out["log_sigma_max"],
    )


def _working_memory(
    spec: dict[str, Any],
    batch: int,
    n_sel: int,
    dim: int,
    method: str,
    ncv: int,
    threads: int,
    dt: np.dtype,
    fallback_max_dim: int,
) -> float:
    """Bytes the core allocates: the states (and input projections) kept at the selected
    steps, the result arrays (twice: the core's and NumPy's), the forward buffers and each
    worker's Jacobian or Krylov basis and step scratch."""
    item = dt.itemsize
    entries = n_sel * batch
    D, width, gc, _, GN = step_dims(spec)
    if spec["kind"] == "mlp":
        kept = batch * sum(int(ly["weight"].shape[1]) for ly in spec["layers"]) if n_sel else 0
    else:
        kept = entries * (D + GN)
        width = max(D, GN)
    results = 2 * entries * (9 * 8 + 2 * 8 + 4)
    forward = 2 * batch * width * item + (1 << 18) * item
    workers = max(1, min(threads, entries))
    per_worker = max(dim, 4) * gc * item  # the step GEMM's rows (a stack's Jacobian: dim rows)
    if method == "exact" or dim <= fallback_max_dim:
        per_worker += 3 * dim * dim * max(item, 8)
    if method != "exact":
        per_worker += (ncv + 8) * dim * item + 8 * (ncv + 1) ** 2 * 8
    return float(kept * item + results + forward + workers * per_worker)

"""Spectral radius and largest singular value of every layer's / step's state Jacobian."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from vgcore._loader import _core
from vgcore._runtime import resolve_threads
from vgcore._validation import check_int_seed, check_positive_int
from vgcore.analysis._spectra import (
    ProgressCallback,
    check_model,
    check_progress,
    compute_dtype,
    core_model,
    initial_state,
    mlp_input,
    sequence,
)
from vgcore.models import MLP, Model, RecurrentModel

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
    Jacobian of the state ``(h, c)``), one column per batch element.

    Attributes
    ----------
    steps : ndarray of int, shape (n,)
        The steps analysed (all of them unless ``which`` selected some).
    spectral_radius : ndarray of shape (n, B)
        ``max |eigenvalue(J)|``; NaN for a non-square (width-changing) layer.
    sigma_max : ndarray of shape (n, B)
        Largest singular value of ``J``.
    method : str
        "exact", "arnoldi" or "power" (what "auto" resolved to).
    radius_iterations, sigma_iterations : ndarray of int, shape (n, B)
        Matrix-free methods: operator applications used (JVPs; for ``sigma_max`` pairs of a
        JVP and a VJP). 0 for "exact".
    radius_residuals, sigma_residuals : ndarray of shape (n, B)
        Matrix-free methods: relative residual ``||A y - lambda y|| / (|lambda| ||y||)`` of the
        final Ritz pair (``A = J``, or ``J^T J`` with ``lambda = sigma_max^2``). 0 for "exact".
    converged : ndarray of bool, shape (n, B)
        Whether every matrix-free solve reached the tolerance.
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

    @property
    def axis(self) -> str:
        """ "layer" for an MLP, "step" for a recurrent model."""
        return "layer" if self.kind == "mlp" else "step"

    @property
    def log_spectral_radius(self) -> np.ndarray:
        """Natural log of :attr:`spectral_radius` (its sum over steps is the log-growth bound)."""
        with np.errstate(divide="ignore"):
            return np.log(self.spectral_radius)

    @property
    def log_sigma_max(self) -> np.ndarray:
        """Natural log of :attr:`sigma_max`: per-step upper bound on the log gain of any vector."""
        with np.errstate(divide="ignore"):
            return np.log(self.sigma_max)

    def to_pandas(self) -> Any:
        """Long-format DataFrame: one row per (step, batch element)."""
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
) -> JacobianSpectrum:
    """Spectral radius and largest singular value of each per-step state Jacobian.

    Parameters
    ----------
    model : MLP, RNN, LSTM or GRU
    x : array_like of shape (B, input_size) (MLP) or (T, B, input_size) (recurrent)
    h0 : array_like of shape (B, N), for an LSTM a pair ``(h0, c0)``; zeros by default.
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
        Matrix-free: relative residual to reach (default 1e-10 in float64, 1e-5 in float32).
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

    Returns
    -------
    JacobianSpectrum
    """
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
    h0a = None
    if isinstance(model, MLP):
        xa = mlp_input(model, x, h0, dt)
        n_steps, axis = model.depth, "layer"
        dims = [max(model.sizes[s], model.sizes[s + 1]) for s in range(n_steps)]
    else:
        assert isinstance(model, RecurrentModel)
        xa = sequence(model, x, dt)
        n_steps, axis = xa.shape[0], "step"
        h0a = initial_state(model, h0, xa.shape[1], dt)
        dims = [model.state_size]
    steps = _select_steps(which, n_steps, axis)
    if method == "auto":
        sel_dims = dims if len(dims) == 1 else [dims[s] for s in steps]
        method = "exact" if max(sel_dims, default=0) <= AUTO_EXACT_MAX_DIM else "arnoldi"
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
    )
    conv = out["converged"].astype(bool)
    if method != "exact" and not conv.all():
        warnings.warn(
            f"{int((~conv).sum())} of {conv.size} matrix-free solves did not reach tol={tol:g} "
            f"within max_iter={max_iter}; see radius_residuals / sigma_residuals",
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
    )

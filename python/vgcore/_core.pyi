# Type stubs for the compiled module vgcore._core (internal API; use the vgcore package).
from collections.abc import Callable
from typing import Any

import numpy as np

__version__: str
MAX_THREADS: int

class testing:  # the submodule vgcore._core.testing: hooks for the tests only
    @staticmethod
    def refuse_thread_starts(n: int, after: int = 0) -> None: ...
    @staticmethod
    def refused_thread_starts_left() -> int: ...
    @staticmethod
    def thread_start_attempts() -> int: ...
    @staticmethod
    def packed_product(
        a: np.ndarray, b: np.ndarray, transposed: bool, c: np.ndarray | None = None
    ) -> np.ndarray: ...
    @staticmethod
    def packed_gemm_available() -> bool: ...
    @staticmethod
    def workspace_cached() -> int: ...
    @staticmethod
    def workspace_limit() -> int: ...
    @staticmethod
    def tangent_map(
        model: dict[str, Any],
        step: int,
        x_t: np.ndarray | None,
        state: np.ndarray,
        V: np.ndarray,
        W: np.ndarray,
    ) -> dict[str, np.ndarray]: ...
    @staticmethod
    def ssm_output(
        model: dict[str, Any], x_t: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...
    @staticmethod
    def graded_jacobi(B: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, int]: ...

def blas_set_num_threads(n: int) -> None: ...
def blas_get_num_threads() -> int: ...
def blas_gemm_gflops(m: int, n: int, k: int, float64: bool = False, repeat: int = 5) -> float: ...
def activation(
    name: str, alpha: float, beta: float, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]: ...
def activation_info(name: str, alpha: float, beta: float) -> dict[str, Any]: ...
def snapshot_sums(
    xs: list[np.ndarray],
    gs: list[np.ndarray | None],
    copies: list[np.ndarray | None],
    threads: int = 1,
) -> np.ndarray: ...
def difference_sums(a: list[np.ndarray], b: list[np.ndarray], threads: int = 1) -> np.ndarray: ...
def rectifier_sums(y: np.ndarray) -> tuple[float, float, float, np.ndarray]: ...
def dense_gradient_flow(
    spec: dict[str, Any] | list[dict[str, Any]],
    x: np.ndarray,
    cotangent: np.ndarray | None,
    keep_grads: bool,
    param_grads: bool,
    saturation_threshold: float,
    num_threads: int,
    progress: Callable[[int, int], Any] | None,
    rescale: bool = True,
) -> dict[str, Any]: ...
def stacked_gradient_flow(
    spec: dict[str, Any],
    x: np.ndarray,
    h0: np.ndarray | None,
    c0: np.ndarray | None,
    cotangent: np.ndarray | None,
    cell_cotangent: np.ndarray | None,
    keep_grads: bool,
    keep_states: bool,
    input_grad_norms: bool,
    param_grads: bool,
    saturation_threshold: float,
    num_threads: int,
    progress: Callable[[int, int], Any] | None,
    rescale: bool = True,
) -> dict[str, Any]: ...
def model_gradient_flow(
    spec: dict[str, Any],
    x: np.ndarray,
    h0: np.ndarray | None,
    cotangent: np.ndarray | None,
    keep_grads: bool,
    num_threads: int,
    progress: Callable[[int, int], Any] | None,
    rescale: bool = True,
) -> dict[str, Any]: ...
def model_step_dims(model: dict[str, Any]) -> tuple[int, int, int, int, int]: ...
def jacobian_spectrum(
    model: dict[str, Any],
    x: np.ndarray,
    h0: np.ndarray | None,
    which: list[int],
    method: str,
    tol: float,
    max_iter: int,
    ncv: int,
    block: int,
    seed: int,
    num_threads: int,
    progress: Callable[[int, int], Any] | None,
    fallback_max_dim: int = ...,
) -> dict[str, np.ndarray]: ...
def jacobian_log_singular_values(
    model: dict[str, Any],
    x: np.ndarray,
    h0: np.ndarray | None,
    num_threads: int,
    progress: Callable[[int, int], Any] | None,
) -> dict[str, np.ndarray]: ...

class LyapunovEngine:
    def __init__(
        self,
        model: dict[str, Any],
        h0: np.ndarray,
        v0: np.ndarray,
        burn_in: int,
        qr_every: int,
        max_records: int,
        num_threads: int,
    ) -> None: ...
    def feed(
        self, x: np.ndarray | None, total_hint: int, progress: Callable[[int, int], Any] | None
    ) -> None: ...
    def result(self) -> dict[str, Any]: ...

def workspace_release() -> int: ...
def workspace_set_limit(bytes: int) -> None: ...

# Type stubs for the compiled module vgcore._core (internal API; use the vgcore package).
from collections.abc import Callable
from typing import Any

import numpy as np

__version__: str

def blas_set_num_threads(n: int) -> None: ...
def blas_get_num_threads() -> int: ...
def activation(name: str, alpha: float, beta: float, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
def activation_info(name: str, alpha: float, beta: float) -> dict[str, Any]: ...
def dense_gradient_flow(
    layers: list[dict[str, Any]],
    x: np.ndarray,
    cotangent: np.ndarray | None,
    keep_grads: bool,
    param_grads: bool,
    saturation_threshold: float,
    num_threads: int,
    progress: Callable[[int, int], Any] | None,
) -> dict[str, Any]: ...
def recurrent_gradient_flow(
    cell: str,
    weight_ih: np.ndarray,
    weight_hh: np.ndarray,
    bias_ih: np.ndarray | None,
    bias_hh: np.ndarray | None,
    x: np.ndarray,
    h0: np.ndarray | None,
    c0: np.ndarray | None,
    cotangent: np.ndarray | None,
    cell_cotangent: np.ndarray | None,
    keep_grads: bool,
    keep_states: bool,
    param_grads: bool,
    saturation_threshold: float,
    num_threads: int,
    progress: Callable[[int, int], Any] | None,
) -> dict[str, Any]: ...
def __getattr__(name: str) -> Any: ...

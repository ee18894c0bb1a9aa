"""Shared fixtures: dtype-aware tolerances and the PyTorch oracle."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Relative tolerances against float64 oracles: tight for float64, honest for float32.
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


# Test files of the torch backend (TorchModel, TorchCell, watch, reference modules): they run no
# compiled vgcore code of their own (their comparisons with native models repeat what the
# native tests cover), so the sanitizer run skips them.
TORCH_BACKEND_FILES = (
    "test_torch_",
    "test_watch",
    "test_signal_public",
    "test_cli_analyze",
    "test_ssm_reference",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tools/sanitize.sh sets VGCORE_SANITIZED=1: tests marked no_sanitizer, and the torch
    backend's test files, are skipped there."""
    if os.environ.get("VGCORE_SANITIZED") != "1":
        return
    torch_only = pytest.mark.skip(reason="under ASan/UBSan: torch backend, no compiled code")
    for item in items:
        if item.path.name.startswith(TORCH_BACKEND_FILES):
            item.add_marker(torch_only)
            continue
        mark = item.get_closest_marker("no_sanitizer")
        if mark is not None:
            why = mark.kwargs.get("reason") or (mark.args[0] if mark.args else "")
            item.add_marker(pytest.mark.skip(reason=f"under ASan/UBSan: {why}".rstrip(": ")))


@pytest.fixture(params=[np.float64, np.float32], ids=["f64", "f32"])
def dtype(request: pytest.FixtureRequest) -> np.dtype:
    return np.dtype(request.param)


@pytest.fixture
def rtol(dtype: np.dtype) -> float:
    return RTOL[np.dtype(dtype)]


@pytest.fixture(scope="session")
def torch():
    """PyTorch, the float64 oracle. Skipped locally when absent; in CI its absence is an
    error, so oracle tests can never pass by being skipped."""
    if os.environ.get("CI"):
        import torch
    else:
        torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


@pytest.fixture
def sigint_raises():
    """Ctrl-C raises KeyboardInterrupt during the test, even where the runner was started with
    SIGINT ignored (a background job of a non-interactive shell): interrupt_main() then does
    nothing at all."""
    import signal

    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)

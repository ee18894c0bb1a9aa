"""vgcore: measure how gradients propagate through neural networks.

Where they vanish, where they explode, and why: per-layer and per-time-step gradient norms,
activation saturation, parameter-gradient norms, from one compiled call per analysis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vgcore._loader import _core
from vgcore._runtime import (
    MAX_THREADS,
    get_num_threads,
    release_memory,
    set_num_threads,
    set_workspace_limit,
)
from vgcore._validation import InsufficientMemoryError
from vgcore.activations import ACTIVATIONS, Activation
from vgcore.analysis import (
    GradientFlow,
    JacobianSingularValues,
    JacobianSpectrum,
    LyapunovSpectrum,
    gradient_flow,
    jacobian_singular_values,
    jacobian_spectrum,
    lyapunov,
    signal_propagation,
)
from vgcore.diagnose import Diagnosis, Fix, diagnose
from vgcore.models import GRU, LSTM, MLP, RNN, SSM, SelectiveSSM, SSMStack
from vgcore.report import write_report
from vgcore.sweep import sweep

__version__: str = _core.__version__

if TYPE_CHECKING:  # the lazy names below, as type checkers should see them
    from vgcore.cuda import backends
    from vgcore.theory import compare_to_theory, critical_sigma_w2, mean_field, phase_diagram
    from vgcore.torchmodel import BlockChainWarning, TorchModel
    from vgcore.torchmodel.cell import TorchCell
    from vgcore.watch import watch

#: Imported on first use: mean-field theory pulls in scipy.special / scipy.optimize, which a
#: command-line call that does not need them should not pay for at start-up.
_LAZY = {
    # the torch backend's models: torch-free, but a tenth of the import time
    "BlockChainWarning": "vgcore.torchmodel",
    "TorchCell": "vgcore.torchmodel.cell",
    "TorchModel": "vgcore.torchmodel",
    "backends": "vgcore.cuda",  # probes numba / CuPy only when asked
    "compare_to_theory": "vgcore.theory",
    "critical_sigma_w2": "vgcore.theory",
    "mean_field": "vgcore.theory",
    "phase_diagram": "vgcore.theory",
    "watch": "vgcore.watch",
}


def __getattr__(name: str) -> object:
    if name == "Recommendation":  # the old name of Fix, for one release
        from vgcore.diagnose.result import _renamed_fix

        return _renamed_fix(__name__)
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vgcore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ACTIVATIONS",
    "GRU",
    "LSTM",
    "MAX_THREADS",
    "MLP",
    "RNN",
    "SSM",
    "Activation",
    "BlockChainWarning",
    "Diagnosis",
    "Fix",
    "GradientFlow",
    "InsufficientMemoryError",
    "JacobianSingularValues",
    "JacobianSpectrum",
    "LyapunovSpectrum",
    "SSMStack",
    "SelectiveSSM",
    "TorchCell",
    "TorchModel",
    "__version__",
    "backends",
    "compare_to_theory",
    "critical_sigma_w2",
    "diagnose",
    "get_num_threads",
    "gradient_flow",
    "jacobian_singular_values",
    "jacobian_spectrum",
    "lyapunov",
    "mean_field",
    "phase_diagram",
    "release_memory",
    "set_num_threads",
    "set_workspace_limit",
    "signal_propagation",
    "sweep",
    "watch",
    "write_report",
]

"""Independent reference implementations in PyTorch (float64 autograd, torch.func) and numpy.

One package for every oracle the tests compare vgcore against, split by job:

- :mod:`oracles.flow`: gradient flow (autograd loops over layers / steps, the accurate-derivative
  variants for extreme inputs);
- :mod:`oracles.jacobians`: layer and cell maps, per-step Jacobians along trajectories, JVP / VJP,
  the QR method for Lyapunov exponents, eigenvalues and the SVD of Jacobian products;
- :mod:`oracles.kinds`: the one list of model kinds the conformance battery runs;
- :mod:`oracles.stacked`: gradient flow of stacked and bidirectional RNN / LSTM / GRU;
- :mod:`oracles.stacked_jacobians`: the step map of a stacked unidirectional RNN / LSTM / GRU
  (the ``torch.nn`` module, one time step) and its Jacobians, Lyapunov exponents, spectra and
  product singular values.

``from oracles import X`` keeps working for every name the former ``oracles.py`` had.
"""

from __future__ import annotations

from oracles.flow import (
    _accurate_activations,
    _log_norms,
    _lstm_state_partials,
    accurate_mlp_log_grad_norms,
    accurate_recurrent_log_grad_norms,
    torch_block_flow,
    torch_mlp_flow,
    torch_recurrent_flow,
    torch_sequential_flow,
)
from oracles.jacobians import (
    module_jacobians,
    product_log_singular_values,
    qr_lyapunov,
    spectral_radius,
    step_spectra,
    torch_cell_fn,
    torch_cell_module,
    torch_layer_fn,
    torch_step_maps,
    torch_trajectory_jacobians,
)
from oracles.stacked import torch_stacked_flow
from oracles.stacked_jacobians import (
    stacked_module,
    stacked_product_log_singular_values,
    stacked_qr_lyapunov,
    stacked_state_rows,
    stacked_step_fn,
    stacked_step_spectra,
    stacked_trajectory_jacobians,
)

__all__ = [
    "_accurate_activations",
    "_log_norms",
    "_lstm_state_partials",
    "accurate_mlp_log_grad_norms",
    "accurate_recurrent_log_grad_norms",
    "module_jacobians",
    "product_log_singular_values",
    "qr_lyapunov",
    "spectral_radius",
    "stacked_module",
    "stacked_product_log_singular_values",
    "stacked_qr_lyapunov",
    "stacked_state_rows",
    "stacked_step_fn",
    "stacked_step_spectra",
    "stacked_trajectory_jacobians",
    "step_spectra",
    "torch_block_flow",
    "torch_cell_fn",
    "torch_cell_module",
    "torch_layer_fn",
    "torch_mlp_flow",
    "torch_recurrent_flow",
    "torch_sequential_flow",
    "torch_stacked_flow",
    "torch_step_maps",
    "torch_trajectory_jacobians",
]

// What the gradient-flow sweeps (dense stacks and recurrent networks) take and return.
#pragma once

#include <cstddef>
#include <vector>

#include "vgcore/base/logscale.hpp"

namespace vgcore {

struct FlowOptions {
  bool param_grads = false;            // compute parameter-gradient norms (extra GEMMs)
  double saturation_threshold = 1e-3;  // |phi'(z)| below this fraction of max|phi'| = saturated
  int num_threads = 0;                 // batch-parallel workers; 0 = hardware concurrency
  // Power-of-two rescaling of the backpropagated vectors (below). Off: the plain product, as
  // frameworks compute it (float32 norms underflow to 0 below ~1e-38); for measuring its cost.
  bool rescale = true;
};

// Everything small that a gradient-flow call returns. "States" are h_0..h_L (or h_0..h_T);
// "steps" are the L layers (or T time steps) between them. Norms are natural logs of
// Frobenius norms over the batch, so values far outside floating-point range survive.
struct FlowStats {
  std::vector<double> log_grad_norms;        // n_states: log ||dL/dh||
  std::vector<double> log_cell_grad_norms;   // n_states, LSTM only: log ||dL/dc||
  std::vector<double> act_mean, act_std;     // n_steps: of the layer/step output h
  std::vector<double> saturation;            // n_steps: fraction of saturated units
  std::vector<double> gate_saturation;       // n_steps x n_gates (gated cells), row-major
  std::vector<double> log_param_grad_norms;  // see each kernel for the layout
  std::vector<unsigned char>
      param_present;  // per log_param_grad_norms entry: 0 = no such parameter
  std::vector<unsigned char> preact_nonfinite;  // n_steps: a pre-activation overflowed (inf/NaN)
  std::size_t n_gates = 0;
};

}  // namespace vgcore

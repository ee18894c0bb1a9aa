// Dense stacks h_l = phi_l(W_l h_{l-1} + b_l): forward and backward over the whole depth.
#pragma once

#include <cstddef>
#include <vector>

#include "vgcore/activations.hpp"
#include "vgcore/control.hpp"
#include "vgcore/flow.hpp"

namespace vgcore {

// One layer, PyTorch nn.Linear layout: weight (out x in) row-major, bias (out) or null.
template <class T>
struct DenseLayer {
  const T* weight = nullptr;
  const T* bias = nullptr;
  std::size_t in = 0, out = 0;
  Activation act;
};

template <class T>
struct DenseFlowIO {
  const T* x = nullptr;          // (B, in_0)
  std::size_t batch = 0;
  const T* cotangent = nullptr;  // (B, out_L) = dL/dy; null => y (loss 0.5 ||y||^2)
  T* y = nullptr;                // optional output (B, out_L)
  std::vector<T*> grads;         // optional: L+1 buffers (B, width_l) receiving dL/dh_l
};

// Forward and backward through the stack in one call.
// log_param_grad_norms layout: [weight_1, bias_1, weight_2, bias_2, ...] (bias entry is
// -inf when the layer has no bias).
template <class T>
FlowStats dense_gradient_flow(const std::vector<DenseLayer<T>>& layers, const DenseFlowIO<T>& io,
                              const FlowOptions& opt, Control& ctl);

}  // namespace vgcore

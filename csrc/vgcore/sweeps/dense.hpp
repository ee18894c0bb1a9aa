// Dense stacks (model/dense_stack.hpp): forward and backward over the whole depth in one call.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include "vgcore/base/activations.hpp"
#include "vgcore/base/control.hpp"
#include "vgcore/model/dense_stack.hpp"
#include "vgcore/sweeps/flow.hpp"

namespace vgcore {

template <class T>
struct DenseFlowIO {
  const T* x = nullptr;  // (B, in_0)
  std::size_t batch = 0;
  const T* cotangent = nullptr;  // (B, out_L) = dL/dy; null => y (loss 0.5 ||y||^2)
  T* y = nullptr;                // optional output (B, out_L)
  std::vector<T*> grads;         // optional: L+1 buffers (B, width_l) receiving dL/dh_l
};

// Number of parameter tensors reported per layer, in this order.
constexpr std::size_t kDenseParamsPerLayer = 6;
// log_param_grad_norms layout: per layer [weight, bias, norm_weight, norm_bias, gate_weight,
// gate_bias]; NaN where the layer has no such parameter.
template <class T>
FlowStats dense_gradient_flow(const std::vector<DenseLayer<T>>& layers, const DenseFlowIO<T>& io,
                              const FlowOptions& opt, Control& ctl);

}  // namespace vgcore

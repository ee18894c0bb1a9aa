// Dense stacks: forward and backward over the whole depth in one call.
//
// Layer l maps h_{l-1} to h_l:
//   z  = W h_{l-1} + b                      (nn.Linear layout: W is out x in)
//   z' = Norm(z)                            (optional: LayerNorm per sample, or BatchNorm with
//                                            training-mode batch statistics; affine gamma, beta)
//   a  = phi(z')
//   plain:    h_l = a
//   residual: h_l = h_{l-1} + alpha * a     (in == out)
//   highway:  h_l = t * a + (1 - t) * h_{l-1},  t = sigmoid(W_t h_{l-1} + b_t)   (in == out)
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include "vgcore/activations.hpp"
#include "vgcore/control.hpp"
#include "vgcore/flow.hpp"
#include "vgcore/layers/batchnorm.hpp"

namespace vgcore {

enum class DenseBlock : int { plain = 0, residual, highway };
// batchnorm: training-mode batch statistics (couples the batch); batchnorm_eval: running
// statistics, as nn.BatchNorm1d in eval() mode (a per-unit affine map).
enum class DenseNorm : int { none = 0, layernorm, batchnorm, batchnorm_eval };

template <class T>
struct DenseLayer {
  const T* weight = nullptr;  // (out x in), row-major
  const T* bias = nullptr;    // (out) or null
  std::size_t in = 0, out = 0;
  Activation act;
  DenseBlock block = DenseBlock::plain;
  double alpha = 1.0;              // residual branch scale
  const T* gate_weight = nullptr;  // highway: (out x in)
  const T* gate_bias = nullptr;    // highway: (out) or null
  DenseNorm norm = DenseNorm::none;
  const T* norm_weight = nullptr;   // gamma (out) or null (= 1)
  const T* norm_bias = nullptr;     // beta (out) or null (= 0)
  const T* running_mean = nullptr;  // batchnorm_eval: (out)
  const T* running_var = nullptr;   // batchnorm_eval: (out)
  double eps = 1e-5;
};

// batchnorm_eval: 1 / sqrt(running_var + eps) of unit j (as PyTorch's invstd).
template <class T>
inline T running_istd(const DenseLayer<T>& ly, std::size_t j) {
  return layers::batchnorm_running_istd(ly.running_var[j], ly.eps);
}

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

// The description of a dense stack: its layers, as the sweeps and Model take them.
// Layer l maps h_{l-1} to h_l:
//   z  = W h_{l-1} + b                      (nn.Linear layout: W is out x in)
//   z' = Norm(z)                            (optional: LayerNorm per sample, or BatchNorm)
//   a  = phi(z')
//   plain: h_l = a;  residual: h_l = h_{l-1} + alpha * a;  highway: h_l = t a + (1 - t) h_{l-1}
// The formulas of each part live in layers/.
#pragma once

#include <cstddef>

#include "vgcore/base/activations.hpp"
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

}  // namespace vgcore

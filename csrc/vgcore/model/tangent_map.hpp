// One step of a model with its Jacobian-vector and vector-Jacobian products, per sample: the
// building block every Jacobian analysis uses, exposed whole so that it can be checked against
// an autograd oracle.
#pragma once

#include <cstddef>

#include "vgcore/model/model.hpp"

namespace vgcore {

// Step `step` of m for `batch` samples (a dense stack: layer step + 1; a recurrent model has one
// step map, `step` is ignored). Row-major arrays:
//   x_t     (batch, input_size)       the step's input; recurrent only (null for a dense stack)
//   states  (batch, in_dim)           the states entering the step
//   V       (batch, k, in_dim)        k tangent rows per sample
//   W       (batch, k, out_dim)       k cotangent rows per sample
//   y       (batch, out_dim)          out: the next states
//   jv      (batch, k, out_dim)       out: J V
//   jtw     (batch, k, in_dim)        out: J^T W
// Throws std::invalid_argument for a dense step out of range or a recurrent model without x_t.
template <class T>
void tangent_map(const Model<T>& m, std::size_t step, const T* x_t, const T* states,
                 std::size_t batch, const T* V, const T* W, std::size_t k, T* y, T* jv, T* jtw);

extern template void tangent_map<float>(const Model<float>&, std::size_t, const float*,
                                        const float*, std::size_t, const float*, const float*,
                                        std::size_t, float*, float*, float*);
extern template void tangent_map<double>(const Model<double>&, std::size_t, const double*,
                                         const double*, std::size_t, const double*, const double*,
                                         std::size_t, double*, double*, double*);

}  // namespace vgcore

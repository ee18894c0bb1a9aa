// The highway block around a dense layer (in == out, Srivastava et al. 2015):
//   h' = t * phi(z') + (1 - t) * h,  t = sigmoid(W_t h + b_t).
// The gate is stored encoded (gates.hpp): its derivative stays accurate in deep saturation.
// Formulas only: loops over layers, chunks, threads and memory live in the sweeps.
#pragma once

#include <cstddef>

#include "vgcore/base/fastmath.hpp"
#include "vgcore/base/gates.hpp"

namespace vgcore::layers {

// Forward: t holds the gate pre-activation and becomes the encoded gate; h' into h.
template <class T>
VGCORE_TARGET_CLONES void highway_forward_row(T* __restrict t, const T* __restrict a,
                                              const T* __restrict hin, T* __restrict h,
                                              std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    T tv, tc;
    t[i] = gates::sigmoid_store(t[i], tv, tc);
    h[i] = tv * a[i] + tc * hin[i];
  }
}

// Backward from g = dL/dh' (times f): dL/dz' = g t phi' in place of phi', the carry path
// g (1 - t) into gnext, dL/d(gate pre-activation) = g (a - h) t (1 - t) in place of the gate.
template <class T>
void highway_backward_row(const T* g, T f, const T* a, const T* hin, T* t, T* dphi, T* gnext,
                          std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const T gs = g[i] * f;
    T tv, tc;
    gates::sigmoid_load(t[i], tv, tc);
    dphi[i] = gs * tv * dphi[i];
    gnext[i] = gs * tc;
    t[i] = gs * (a[i] - hin[i]) * (tv * tc);
  }
}

}  // namespace vgcore::layers

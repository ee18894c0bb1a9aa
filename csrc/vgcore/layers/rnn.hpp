// The Elman RNN cell (torch.nn.RNN), all of its maths for one unit j:
//   z = W_ih x + b_ih + W_hh h + b_hh   (the sweeps' GEMMs),  h' = phi(z)
// phi and phi' come from activations.hpp in one pass (the forward writes h' and phi'(z)), so the
// derivatives need nothing else: tangent dh' = phi'(z) u with u = dh W_hh^T; cotangent
// dL/dz = phi'(z) g, then dL/dh = dL/dz W_hh (the sweeps' GEMM).
#pragma once

#include <cstddef>

#include "vgcore/base/fastmath.hpp"

namespace vgcore::layers {

// What the model asks about the cell (model.hpp): gate blocks, state parts (h), cache units per
// hidden unit ([phi'(z)]), and whether the input projection enters outside the W_hh product.
struct RnnCell {
  static constexpr std::size_t gates = 1, parts = 1, cache_units = 1;
  static constexpr bool input_outside = false;
};

// Cotangent of one unit: dL/dz from g = dL/dh' times f (the pending power of two, flow.hpp).
template <class T>
VGCORE_FM_INLINE T rnn_vjp(T dphi, T g, T f) {
  return g * f * dphi;
}

// Tangent of one unit: dh' from u = dh W_hh^T (+ dx W_ih^T).
template <class T>
VGCORE_FM_INLINE T rnn_jvp(T dphi, T u) {
  return dphi * u;
}

}  // namespace vgcore::layers

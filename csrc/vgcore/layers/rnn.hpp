// The Elman RNN cell (torch.nn.RNN): z = W_ih x + b_ih + W_hh h + b_hh, h' = phi(z).
//
// Forward: the activation itself (activations.hpp) writes h' and phi'(z) in one pass, so the
// backward step needs nothing else. Backward: dL/dz = dL/dh' * phi'(z), then dL/dh = dL/dz W_hh
// (a GEMM the sweep does). Row formulas only: loops over steps, samples, threads and memory live
// in the sweeps.
#pragma once

#include <cstddef>

#include "vgcore/base/fastmath.hpp"

namespace vgcore::layers {

// dL/dz of n units in place of phi'(z): at = dh * f * at, with f the pending power-of-two
// factor of the backpropagated vector (flow.hpp).
template <class T>
VGCORE_TARGET_CLONES void rnn_backward_row(T* __restrict at, const T* __restrict dh, T f,
                                           std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) at[i] = dh[i] * f * at[i];
}

}  // namespace vgcore::layers

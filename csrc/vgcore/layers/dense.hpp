// The dense layer's plain block (torch.nn.Linear followed by an activation):
//   z = W h + b,  h' = phi(z)   (W: out x in, as nn.Linear),
// optionally with a normalisation between z and phi (layernorm.hpp, batchnorm.hpp) and a
// residual (residual.hpp) or highway (highway.hpp) block around it. The products W h and
// g W are the sweeps' GEMMs; phi and phi' come from activations.hpp in one pass.
// Formulas only: loops over layers, chunks, threads and memory live in the sweeps.
#pragma once

#include <cstddef>

namespace vgcore::layers {

// Backward: dL/dz' = g * f * phi'(z'), in place of phi' (f: the pending power of two).
template <class T>
void plain_backward_row(const T* g, T f, T* dphi, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) dphi[i] = g[i] * f * dphi[i];
}

// Tangent (and cotangent) of one unit of the plain block: phi'(z') times the tangent of z'
// (or the cotangent of h').
template <class T>
inline T plain_jvp(T dphi, T u) {
  return dphi * u;
}

}  // namespace vgcore::layers

// The residual block around a dense layer (in == out): h' = h + alpha * phi(z').
// Formulas only: loops over layers, chunks, threads and memory live in the sweeps.
#pragma once

#include <cstddef>

namespace vgcore::layers {

// Forward: a holds phi(z'); it becomes h' = h + alpha * a.
template <class T>
void residual_forward_row(const T* h, T alpha, T* a, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) a[i] = h[i] + alpha * a[i];
}

// Backward from g = dL/dh' (times f, the pending power of two): dL/dz' = alpha * g * phi'
// in place of phi', and the skip path g into gnext (the sweep's GEMM adds the branch).
template <class T>
void residual_backward_row(const T* g, T f, T alpha, T* dphi, T* gnext, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const T gs = g[i] * f;
    dphi[i] = alpha * gs * dphi[i];
    gnext[i] = gs;
  }
}

}  // namespace vgcore::layers

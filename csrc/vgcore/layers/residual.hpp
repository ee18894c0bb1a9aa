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

// Tangent of one unit: dh' = dh + alpha phi'(z') u, with u the tangent of z'.
template <class T>
inline T residual_jvp(T dh, T dphi, T u, T alpha) {
  return dh + alpha * dphi * u;
}

// Cotangent of one unit through the branch, from w = dL/dh': dL/dz' = alpha phi' w (the skip path
// passes w on unchanged). The BPTT sweep's residual_backward_row is the same map with the
// pending power of two folded in first (its rounding differs in the last bit, so both stay).
template <class T>
inline T residual_vjp(T dphi, T w, T alpha) {
  return alpha * dphi * w;
}

}  // namespace vgcore::layers

// The highway block around a dense layer (in == out, Srivastava et al. 2015):
//   h' = t * phi(z') + (1 - t) * h,  t = sigmoid(W_t h + b_t).
// The gate is stored encoded (gates.hpp): its derivative stays accurate in deep saturation.
// Formulas only: loops over layers, chunks, threads and memory live in the sweeps.
#pragma once

#include <cstddef>

#include "vgcore/base/fastmath.hpp"
#include "vgcore/base/gates.hpp"

namespace vgcore::layers {

// Forward of one unit from the gate pre-activation, a = phi(z') and h: the encoded gate, the gate
// and its complement, and h'.
template <class T>
struct HighwayForward {
  T vt, t, tc, h;
};

template <class T>
VGCORE_FM_INLINE HighwayForward<T> highway_forward(T tpre, T a, T h) {
  HighwayForward<T> u;
  u.vt = gates::sigmoid_store(tpre, u.t, u.tc);
  u.h = u.t * a + u.tc * h;
  return u;
}

// Forward: t holds the gate pre-activation and becomes the encoded gate; h' into h.
template <class T>
VGCORE_TARGET_CLONES void highway_forward_row(T* __restrict t, const T* __restrict a,
                                              const T* __restrict hin, T* __restrict h,
                                              std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const auto u = highway_forward(t[i], a[i], hin[i]);
    t[i] = u.vt;
    h[i] = u.h;
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

// Tangent of one unit: dh' = t phi' u + (1 - t) dh + (a - h) t (1 - t) u_t, with u the tangent
// of z' and u_t that of the gate pre-activation; vt the encoded gate, amh = a - h.
template <class T>
VGCORE_FM_INLINE T highway_jvp(T vt, T dphi, T u, T dh, T amh, T ut) {
  T tv, tc;
  gates::sigmoid_load(vt, tv, tc);
  return tv * dphi * u + tc * dh + amh * (tv * tc) * ut;
}

// Cotangent of one unit from w = dL/dh': dL/dz', dL/d(gate pre-activation) and the carry path.
// (The BPTT sweep's highway_backward_row folds the pending power of two in first.)
template <class T>
struct HighwayCotangent {
  T dz, dgate, carry;
};

template <class T>
VGCORE_FM_INLINE HighwayCotangent<T> highway_vjp(T vt, T dphi, T amh, T w) {
  T tv, tc;
  gates::sigmoid_load(vt, tv, tc);
  return {tv * dphi * w, amh * (tv * tc) * w, tc * w};
}

}  // namespace vgcore::layers

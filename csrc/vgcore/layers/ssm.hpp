// The diagonal linear time-invariant state-space layer (S4D / LRU style), all of its maths for
// one mode n:
//   h'_n = a_n h_n + u_n,   u = B_bar x   (the input projection, one GEMM for all steps)
//   y = C h' + D * x        (C real: a complex mode's columns hold (Re C, -Im C))
// a_n = exp(Delta_n A_n) comes discretised (zero-order hold) with B_bar from the description.
// A real mode is one state coordinate; a complex mode is two, (Re h_n, Im h_n), side by side,
// and its step is the rotation-scaling |a_n| R(arg a_n):
//   [h_re']   [a_re  -a_im] [h_re]   [u_re]
//   [h_im'] = [a_im   a_re] [h_im] + [u_im]
// The step Jacobian is that constant block diagonal, so a tangent is a times it and a
// cotangent conj(a) times it; the layer keeps no cache. The Lyapunov exponents are log|a_n|
// (twice for a complex mode).
#pragma once

#include <cstddef>

#include "vgcore/base/fastmath.hpp"

namespace vgcore::layers {

// What the model asks about the layer: state coordinates per mode (1 real, 2 complex) and
// cache units (none: the Jacobian is constant).
struct SsmLayer {
  static constexpr std::size_t cache_units = 0;
  static constexpr std::size_t coords(bool complex) { return complex ? 2 : 1; }
};

// A real mode: h' = a h + u. The tangent is ssm_real(a, v, 0); the cotangent ssm_real(a, w, 0).
template <class T>
VGCORE_FM_INLINE T ssm_real(T a, T h, T u) {
  return a * h + u;
}

// A complex mode: (o_re, o_im) = a (h_re, h_im) + (u_re, u_im).
template <class T>
VGCORE_FM_INLINE void ssm_complex(T ar, T ai, T hr, T hi, T ur, T ui, T& o_re, T& o_im) {
  o_re = ar * hr - ai * hi + ur;
  o_im = ai * hr + ar * hi + ui;
}

// Its cotangent: (g_re, g_im) = conj(a) (w_re, w_im), the transpose of the rotation-scaling.
template <class T>
VGCORE_FM_INLINE void ssm_complex_vjp(T ar, T ai, T wr, T wi, T& g_re, T& g_im) {
  g_re = ar * wr + ai * wi;
  g_im = ar * wi - ai * wr;
}

}  // namespace vgcore::layers

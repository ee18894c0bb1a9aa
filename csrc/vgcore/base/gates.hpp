// Gate values stored so that their derivatives stay accurate in deep saturation.
//
// A gate's derivative is sigmoid' = s (1 - s) or tanh' = 1 - g^2. Formed from the stored value,
// 1 - s and 1 - |g| cancel once |pre-activation| exceeds about 17 (float32) / 37 (float64): they
// round to 0 or one ulp and the gradient through a saturated gate is off by orders of
// magnitude. The encodings below keep the small complement to relative accuracy in the same
// storage (one value per gate, no extra memory, no exp in the backward pass):
//
//   sigmoid: v = s(a) for a < 0, v = -s(-a) = -(1 - s(a)) for a >= 0. |v| <= 1/2 is the smaller
//            of s and 1 - s; the sign bit says which (-0: s = 1 exactly).
//   tanh:    v = tanh(a) where |tanh(a)| <= 1/2, else v = sign(a) / (1 - |tanh(a)|), |v| >= 2.
//            The complement 2 e^{-2|a|} / (1 + e^{-2|a|}) is exact to a few ulp; below
//            1 / max(T) (where the derivative itself is subnormal) it reads back as 0.
//
// The *_store functions take the pre-activation and also return the plain values for the
// forward pass; the *_load functions decode. All are branch-free (selects): loops vectorise.
#pragma once

#include "vgcore/base/fastmath.hpp"

namespace vgcore::gates {

namespace fmd = vgcore::fastmath::detail;

// Encoded sigmoid of a; s = sigmoid(a), sc = 1 - s (both to relative accuracy).
template <class T>
VGCORE_FM_INLINE T sigmoid_store(T a, T& s, T& sc) {
  const T t = fmd::exp_nonpos(-fmd::fabs_(a));
  const T big = T(1) / (T(1) + t);  // s(|a|)
  const T small = t * big;          // s(-|a|)
  const bool pos = a >= T(0);
  s = pos ? big : small;
  sc = pos ? small : big;
  return pos ? -small : small;
}

template <class T>
VGCORE_FM_INLINE void sigmoid_load(T v, T& s, T& sc) {
  const T m = fmd::fabs_(v);
  const T M = T(1) - m;
  const bool up = fmd::copysign_(T(1), v) < T(0);
  s = up ? M : m;
  sc = up ? m : M;
}

// s (1 - s) of an encoded sigmoid.
template <class T>
VGCORE_FM_INLINE T sigmoid_deriv(T v) {
  const T m = fmd::fabs_(v);
  return m * (T(1) - m);
}

// Encoded tanh of a; th = tanh(a), d = 1 - th^2 (relative accuracy in the tails).
template <class T>
VGCORE_FM_INLINE T tanh_store(T a, T& th, T& d) {
  T ex, em1;
  fmd::exp_expm1_nonpos(T(-2) * fmd::fabs_(a), ex, em1);  // em1 = ex - 1 in (-1, 0]
  const T den = T(2) + em1;                               // 1 + e^{-2|a|}
  const T inv = T(1) / den;
  const T mag = -em1 * inv;          // |tanh(a)|
  const T comp = (T(2) * ex) * inv;  // 1 - |tanh(a)|
  th = fmd::copysign_(mag, a);
  d = comp * (T(2) - comp);
  const T rc = den / (T(2) * ex);  // 1 / comp (+inf where ex underflows)
  return mag <= T(0.5) ? th : fmd::copysign_(rc, a);
}

template <class T>
VGCORE_FM_INLINE void tanh_load(T v, T& th, T& d) {
  const T av = fmd::fabs_(v);
  const bool big = av > T(1);
  const T comp = T(1) / av;
  th = big ? fmd::copysign_(T(1) - comp, v) : v;
  d = big ? comp * (T(2) - comp) : (T(1) - v) * (T(1) + v);
}

template <class T>
VGCORE_FM_INLINE T tanh_deriv(T v) {
  T th, d;
  tanh_load(v, th, d);
  return d;
}

}  // namespace vgcore::gates

// The one family of lane reductions: sums, dot products, maxima and checks over long arrays.
//
// Strict IEEE semantics forbid the compiler to reorder a single running sum, so a plain loop
// would not vectorise. Each reduction here keeps Lanes independent accumulators instead: lane j
// takes the elements i = j (mod Lanes) of the body, the tail goes to a separate accumulator and
// the lanes are folded into it in order 0..Lanes-1. The order is fixed, so results are
// reproducible bit for bit whatever the instruction set.
#pragma once

#include <cmath>
#include <cstddef>

// Always inlined into the caller's loop: as out-of-line calls they cost the dense sweep a few
// percent (its inlining budget goes elsewhere).
#if defined(__GNUC__)
#define VGCORE_LANES_INLINE inline __attribute__((always_inline))
#else
#define VGCORE_LANES_INLINE inline
#endif

namespace vgcore {

// add(acc, i) takes element i into an accumulator; fold(total, lane) folds a lane in.
template <std::size_t Lanes, class Acc, class Add, class Fold>
VGCORE_LANES_INLINE Acc reduce_lanes(std::size_t n, Acc zero, Add add, Fold fold) {
  Acc acc[Lanes];
  for (auto& a : acc) a = zero;
  std::size_t i = 0;
  for (; i + Lanes <= n; i += Lanes)
    for (std::size_t j = 0; j < Lanes; ++j) add(acc[j], i + j);
  Acc s = zero;
  for (; i < n; ++i) add(s, i);
  for (std::size_t j = 0; j < Lanes; ++j) fold(s, acc[j]);
  return s;
}

namespace lanes_detail {
inline void plus(double& s, double a) { s += a; }
}  // namespace lanes_detail

// sum_i x_i^2 in double. This one and moments are written out: the two hottest reductions of the
// dense sweep ran 3-5% slower there through reduce_lanes (same order, same results).
template <class T>
VGCORE_LANES_INLINE double sum_squares(const T* x, std::size_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j)
      acc[j] += static_cast<double>(x[i + j]) * static_cast<double>(x[i + j]);
  double s = 0;
  for (; i < n; ++i) s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  for (int j = 0; j < 8; ++j) s += acc[j];
  return s;
}

// sum_i a_i b_i in double.
template <class T>
VGCORE_LANES_INLINE double dot(const T* a, const T* b, std::size_t n) {
  return reduce_lanes<8>(
      n, 0.0,
      [a, b](double& s, std::size_t i) {
        s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
      },
      lanes_detail::plus);
}

// sum_i (x_i * f1 * f2)^2 in double: the sum of squares of x scaled by f1 f2 in two exact steps.
template <class T>
VGCORE_LANES_INLINE double sum_squares_times(const T* x, std::size_t n, double f1, double f2) {
  return reduce_lanes<8>(
      n, 0.0,
      [x, f1, f2](double& a, std::size_t i) {
        const double v = static_cast<double>(x[i]) * f1 * f2;
        a += v * v;
      },
      lanes_detail::plus);
}

// Largest |x_i| (NaNs are skipped; +inf if any is infinite).
template <class T>
VGCORE_LANES_INLINE double max_abs(const T* x, std::size_t n) {
  return reduce_lanes<8>(
      n, 0.0,
      [x](double& m, std::size_t i) {
        const double v = std::fabs(static_cast<double>(x[i]));
        m = v > m ? v : m;
      },
      [](double& m, double a) { m = a > m ? a : m; });
}

// sum_i x_i * 0 in T: 0, or NaN exactly when some x_i is infinite or NaN.
template <std::size_t Lanes = 8, class T>
VGCORE_LANES_INLINE T zero_products(const T* x, std::size_t n) {
  return reduce_lanes<Lanes>(
      n, T(0), [x](T& a, std::size_t i) { a += x[i] * T(0); }, [](T& s, T a) { s += a; });
}

// Whether any x_i is infinite or NaN (x - x is NaN exactly for those).
template <class T>
VGCORE_LANES_INLINE bool any_nonfinite(const T* x, std::size_t n) {
  const T s = reduce_lanes<8>(
      n, T(0), [x](T& a, std::size_t i) { a += x[i] - x[i]; }, [](T& t, T a) { t += a; });
  return s != s;
}

// Sum and sum of squares of x, added to sum and sumsq.
template <class T>
VGCORE_LANES_INLINE void moments(const T* x, std::size_t n, double& sum, double& sumsq) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) {
      const double v = x[i + j];
      a[j] += v;
      b[j] += v * v;
    }
  double s = 0, s2 = 0;
  for (; i < n; ++i) {
    s += x[i];
    s2 += static_cast<double>(x[i]) * x[i];
  }
  for (int j = 0; j < 8; ++j) {
    s += a[j];
    s2 += b[j];
  }
  sum += s;
  sumsq += s2;
}

}  // namespace vgcore

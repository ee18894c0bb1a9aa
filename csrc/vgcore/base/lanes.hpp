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

namespace vgcore {

// add(acc, i) takes element i into an accumulator; fold(total, lane) folds a lane in.
template <std::size_t Lanes, class Acc, class Add, class Fold>
inline Acc reduce_lanes(std::size_t n, Acc zero, Add add, Fold fold) {
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

// sum_i x_i^2 in double.
template <class T>
inline double sum_squares(const T* x, std::size_t n) {
  return reduce_lanes<8>(
      n, 0.0,
      [x](double& a, std::size_t i) {
        const double v = static_cast<double>(x[i]);
        a += v * v;
      },
      lanes_detail::plus);
}

// sum_i a_i b_i in double.
template <class T>
inline double dot(const T* a, const T* b, std::size_t n) {
  return reduce_lanes<8>(
      n, 0.0,
      [a, b](double& s, std::size_t i) {
        s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
      },
      lanes_detail::plus);
}

// sum_i (x_i * f1 * f2)^2 in double: the sum of squares of x scaled by f1 f2 in two exact steps.
template <class T>
inline double sum_squares_times(const T* x, std::size_t n, double f1, double f2) {
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
inline double max_abs(const T* x, std::size_t n) {
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
inline T zero_products(const T* x, std::size_t n) {
  return reduce_lanes<Lanes>(
      n, T(0), [x](T& a, std::size_t i) { a += x[i] * T(0); }, [](T& s, T a) { s += a; });
}

// Whether any x_i is infinite or NaN (x - x is NaN exactly for those).
template <class T>
inline bool any_nonfinite(const T* x, std::size_t n) {
  const T s = reduce_lanes<8>(
      n, T(0), [x](T& a, std::size_t i) { a += x[i] - x[i]; }, [](T& t, T a) { t += a; });
  return s != s;
}

// Sum and sum of squares of x, added to sum and sumsq.
template <class T>
inline void moments(const T* x, std::size_t n, double& sum, double& sumsq) {
  struct Pair {
    double s, s2;
  };
  const Pair p = reduce_lanes<8>(
      n, Pair{0.0, 0.0},
      [x](Pair& a, std::size_t i) {
        const double v = static_cast<double>(x[i]);
        a.s += v;
        a.s2 += v * v;
      },
      [](Pair& t, const Pair& a) {
        t.s += a.s;
        t.s2 += a.s2;
      });
  sum += p.s;
  sumsq += p.s2;
}

}  // namespace vgcore

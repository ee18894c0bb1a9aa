// Log-scale helpers: exact power-of-two rescaling of backpropagated vectors, log norms that
// survive far outside floating-point range, and the products' safe shifts.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "vgcore/base/lanes.hpp"

namespace vgcore {

// Backpropagated vectors are kept near unit norm by exact power-of-two rescaling: the
// stored value is true * 2^scale. In range, no rescaling happens and results are
// bit-identical to an unscaled computation.
//   lo, hi:  a stored norm outside [2^lo, 2^hi] is brought back near 1 at the next step.
//   window:  the stored norm that enters a step's products, after its factor, must lie within
//            [2^-window, 2^window]; otherwise the vector is brought near 1 before the step
//            (a step that changes the norm by more than the type's range in one go).
//   pow2max: largest |k| for which 2^k is a normal number of the type.
//   emax:    the largest finite value is below 2^(emax + 1).
template <class T>
struct RescaleLimits;
template <>
struct RescaleLimits<float> {
  static constexpr int lo = -40, hi = 40, window = 64, pow2max = 126, emax = 127, emin = -126,
                       digits = 24;
};
template <>
struct RescaleLimits<double> {
  static constexpr int lo = -200, hi = 200, window = 512, pow2max = 1022, emax = 1023, emin = -1022,
                       digits = 53;
};

// floor(log2 |v|) of a finite nonzero v (std::ilogb, also for subnormals).
inline int exponent_of(double v) { return std::ilogb(v); }

// log2 of the norm, roughly, of a vector whose (scaled) sum of squares is sumsq * 2^(-2k):
// the quantity the rescaling works with. 0 when sumsq is zero or not finite.
inline int norm_exponent(double sumsq, int k) {
  if (!(sumsq > 0.0) || !std::isfinite(sumsq)) return 0;
  return std::ilogb(sumsq) / 2 - k;
}

// Exponent p such that multiplying a vector with norm exponent e by 2^p brings its norm near
// 1, or 0 when it is comfortably in range.
template <class T>
inline int rescale_from_exponent(int e) {
  if (e < RescaleLimits<T>::lo || e > RescaleLimits<T>::hi) return -e;
  return 0;
}

// The same from a scaled sum of squares (see sum_squares_scaled).
template <class T>
inline int rescale_exponent(double sumsq, int k = 0) {
  if (!(sumsq > 0.0) || !std::isfinite(sumsq)) return 0;
  return rescale_from_exponent<T>(norm_exponent(sumsq, k));
}

// The factor for the next step: from the norm exponent e of the vector this step starts from
// and the factor p it applies (the next vector is about 2^(e + p) times this step's gain).
template <class T>
inline int next_pending(double sumsq, int e, int p) {
  if (!(sumsq > 0.0) || !std::isfinite(sumsq)) return 0;
  return rescale_from_exponent<T>(e + p);
}

inline double log_norm(double sumsq, int scale) {
  if (!(sumsq > 0.0)) return sumsq == 0.0 ? -std::numeric_limits<double>::infinity() : sumsq;
  return 0.5 * std::log(sumsq) - scale * 0.69314718055994530942;
}

// log(sqrt(sum_i exp(2 * a_i))): combine per-chunk log norms into one.
inline double combine_log_norms(const double* a, std::size_t n, std::size_t stride) {
  double m = -std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < n; ++i) {
    const double v = a[i * stride];
    if (std::isnan(v)) return v;
    if (v > m) m = v;
  }
  if (!std::isfinite(m)) return m;
  double s = 0.0;
  for (std::size_t i = 0; i < n; ++i) s += std::exp(2.0 * (a[i * stride] - m));
  return m + 0.5 * std::log(s);
}

template <class T>
inline T pow2(int k) {
  return static_cast<T>(std::ldexp(1.0, k));
}

// Multiply n contiguous values by 2^k (exact unless the result leaves the normal range).
template <class T>
inline void scale_pow2(T* x, std::size_t n, int k) {
  if (k == 0) return;
  const T f = pow2<T>(k);
  for (std::size_t i = 0; i < n; ++i) x[i] *= f;
}

// The same for any k, where 2^k itself may not be a number of the type: in steps of normal
// powers of two (each exact while the values stay normal; upscaling never rounds).
template <class T>
inline void scale_pow2_wide(T* x, std::size_t n, int k) {
  constexpr int m = RescaleLimits<T>::pow2max;
  while (k != 0) {
    const int s = k > m ? m : (k < -m ? -m : k);
    scale_pow2(x, n, s);
    k -= s;
    if (s < 0 && k < -2 * m) k = -2 * m;  // everything is 0 by then
    if (s > 0 && k > 2 * m) k = 2 * m;    // or +-inf
  }
}

// out = x * 2^k, correctly rounded: out of the type's range the values overflow to +-inf or
// round to (subnormal or) zero, as a conversion of the true value would; zeros stay zero.
template <class T>
inline void store_scaled(T* out, const T* x, std::size_t n, int k) {
  if (k >= -RescaleLimits<T>::pow2max && k <= RescaleLimits<T>::pow2max) {
    const T f = pow2<T>(k);
    for (std::size_t i = 0; i < n; ++i) out[i] = x[i] * f;
  } else {
    for (std::size_t i = 0; i < n; ++i) out[i] = std::ldexp(x[i], k);
  }
}

// y += x * 2^k (x * 2^k rounded as in store_scaled).
template <class T>
inline void add_scaled(T* y, const T* x, std::size_t n, int k) {
  if (k >= -RescaleLimits<T>::pow2max && k <= RescaleLimits<T>::pow2max) {
    const T f = pow2<T>(k);
    for (std::size_t i = 0; i < n; ++i) y[i] += x[i] * f;
  } else {
    for (std::size_t i = 0; i < n; ++i) y[i] += std::ldexp(x[i], k);
  }
}

// Sum of squares of x * 2^k, in double, with k = 0 (and the value of sum_squares) whenever
// that plain sum is exact to rounding; otherwise, for entries whose squares over- or
// underflow (float64 beyond about 1e+-154), k puts the largest |x_i| in [1, 2), so the
// result neither overflows nor loses digits. NaN if x holds a NaN, +inf if an infinity.
// float squares always fit in a double: only a zero sum (all entries zero) is special.
template <class T>
inline double sum_squares_scaled(const T* x, std::size_t n, int& k) {
  k = 0;
  const double s = sum_squares(x, n);
  constexpr double safe_lo = 0x1p-900;  // the largest square is >= s/n, far above DBL_MIN
  if ((s >= safe_lo || (sizeof(T) < sizeof(double) && s != 0.0)) &&
      s <= std::numeric_limits<double>::max())
    return s;
  if (s != s || sizeof(T) < sizeof(double)) return s;  // NaN, or a float zero vector
  const double m = max_abs(x, n);
  if (m == 0.0 || !(m <= std::numeric_limits<double>::max())) return m * m;  // 0, +inf
  k = -exponent_of(m);
  // x * 2^k in two exact-while-normal factors: 2^k itself may leave the double range.
  const double f1 = std::ldexp(1.0, k / 2), f2 = std::ldexp(1.0, k - k / 2);
  return sum_squares_times(x, n, f1, f2);
}

// Powers of two sa, sb by which to scale the two operands of sums sum_r a_r b_r over `rows`
// terms (a parameter-gradient GEMM in T), given the largest |a| and |b|, so that no sum can
// overflow and the largest terms are normal numbers with all their digits. Both 0 when that
// holds already; else each operand's largest entry is brought to [1, 2).
template <class T>
inline void product_shifts(double amax, double bmax, std::size_t rows, int& sa, int& sb) {
  using RL = RescaleLimits<T>;
  constexpr double big = std::numeric_limits<double>::max();
  sa = sb = 0;
  if (!(amax > 0.0) || !(bmax > 0.0) || !(amax <= big) || !(bmax <= big)) return;
  const int ea = exponent_of(amax), eb = exponent_of(bmax);  // terms are below 2^(ea + eb + 2)
  int lr = 0;
  while (lr < 63 && (std::size_t(1) << lr) < rows) ++lr;
  const bool normal = ea >= RL::emin && eb >= RL::emin;
  if (normal && ea + eb + 2 + lr <= RL::emax - 1 && ea + eb >= RL::emin + 2 * RL::digits) return;
  sa = -ea;
  sb = -eb;
}

// Number of |x| below level.
template <class T>
inline std::size_t count_below(const T* x, std::size_t n, T level) {
  std::size_t c = 0;
  for (std::size_t i = 0; i < n; ++i) c += (x[i] < level && x[i] > -level) ? 1 : 0;
  return c;
}

}  // namespace vgcore

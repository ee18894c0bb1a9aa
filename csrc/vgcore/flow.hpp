// Shared types and helpers for gradient-flow kernels (dense stacks and recurrent cells).
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

namespace vgcore {

struct FlowOptions {
  bool param_grads = false;            // compute parameter-gradient norms (extra GEMMs)
  double saturation_threshold = 1e-3;  // |phi'(z)| below this fraction of max|phi'| = saturated
  int num_threads = 0;                 // batch-parallel workers; 0 = hardware concurrency
  // Power-of-two rescaling of the backpropagated vectors (below). Off: the plain product, as
  // frameworks compute it (float32 norms underflow to 0 below ~1e-38); for measuring its cost.
  bool rescale = true;
};

// Everything small that a gradient-flow call returns. "States" are h_0..h_L (or h_0..h_T);
// "steps" are the L layers (or T time steps) between them. Norms are natural logs of
// Frobenius norms over the batch, so values far outside floating-point range survive.
struct FlowStats {
  std::vector<double> log_grad_norms;       // n_states: log ||dL/dh||
  std::vector<double> log_cell_grad_norms;  // n_states, LSTM only: log ||dL/dc||
  std::vector<double> act_mean, act_std;    // n_steps: of the layer/step output h
  std::vector<double> saturation;           // n_steps: fraction of saturated units
  std::vector<double> gate_saturation;      // n_steps x n_gates (gated cells), row-major
  std::vector<double> log_param_grad_norms; // see each kernel for the layout
  std::size_t n_gates = 0;
};

// Backpropagated vectors are kept near unit norm by exact power-of-two rescaling: the
// stored value is true * 2^scale. In range, no rescaling happens and results are
// bit-identical to an unscaled computation.
template <class T>
struct RescaleLimits;
template <>
struct RescaleLimits<float> {
  static constexpr int lo = -40, hi = 40;
};
template <>
struct RescaleLimits<double> {
  static constexpr int lo = -200, hi = 200;
};

// Exponent k such that multiplying a vector of squared norm `sumsq` by 2^k brings its
// norm near 1, or 0 when it is comfortably in range (or not finite / zero).
template <class T>
inline int rescale_exponent(double sumsq) {
  if (!(sumsq > 0.0) || !std::isfinite(sumsq)) return 0;
  const int e = std::ilogb(sumsq) / 2;  // log2 of the norm, roughly
  if (e < RescaleLimits<T>::lo || e > RescaleLimits<T>::hi) return -e;
  return 0;
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

// Reductions with 8 independent float64 lanes: strict IEEE semantics forbid the compiler to
// reorder a single running sum, so without lanes these loops would not vectorise.
template <class T>
inline double sum_squares(const T* x, std::size_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += static_cast<double>(x[i + j]) * static_cast<double>(x[i + j]);
  double s = 0;
  for (; i < n; ++i) s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  for (int j = 0; j < 8; ++j) s += acc[j];
  return s;
}

// Sum and sum of squares of x.
template <class T>
inline void moments(const T* x, std::size_t n, double& sum, double& sumsq) {
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

// Number of |x| below level.
template <class T>
inline std::size_t count_below(const T* x, std::size_t n, T level) {
  std::size_t c = 0;
  for (std::size_t i = 0; i < n; ++i) c += (x[i] < level && x[i] > -level) ? 1 : 0;
  return c;
}

}  // namespace vgcore

#include "vgcore/base/array_sums.hpp"

#include "vgcore/base/fastmath.hpp"  // VGCORE_TARGET_CLONES

namespace vgcore {
namespace {

constexpr std::size_t kLanes = 8;

template <class T, bool WithG, bool WithCopy>
VGCORE_TARGET_CLONES SnapshotSums snapshot_pass(const T* __restrict x, const T* __restrict g,
                                                T* __restrict copy, std::size_t n) {
  double ax[kLanes] = {}, ag[kLanes] = {};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (std::size_t j = 0; j < kLanes; ++j) {
      const T v = x[i + j];
      if constexpr (WithCopy) copy[i + j] = v;
      ax[j] += static_cast<double>(v) * static_cast<double>(v);
      if constexpr (WithG) ag[j] += static_cast<double>(g[i + j]) * static_cast<double>(g[i + j]);
    }
  SnapshotSums s;
  for (; i < n; ++i) {
    const T v = x[i];
    if constexpr (WithCopy) copy[i] = v;
    s.x2 += static_cast<double>(v) * static_cast<double>(v);
    if constexpr (WithG) s.g2 += static_cast<double>(g[i]) * static_cast<double>(g[i]);
  }
  for (std::size_t j = 0; j < kLanes; ++j) {
    s.x2 += ax[j];
    s.g2 += ag[j];
  }
  return s;
}

template <class T>
VGCORE_TARGET_CLONES double difference_pass(const T* __restrict a, const T* __restrict b,
                                            std::size_t n) {
  double acc[kLanes] = {};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (std::size_t j = 0; j < kLanes; ++j) {
      const double d = static_cast<double>(a[i + j]) - static_cast<double>(b[i + j]);
      acc[j] += d * d;
    }
  double s = 0.0;
  for (; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    s += d * d;
  }
  for (std::size_t j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

template <class T>
VGCORE_TARGET_CLONES RectifierSums rectifier_pass(const T* __restrict y, std::size_t rows,
                                                  std::size_t cols, T* __restrict colsum) {
  // one pass in T (a row is short: its lanes' sums lose nothing that matters for a mean, a
  // spread and a count), lanes folded into double per row
  constexpr std::size_t L = 16;
  RectifierSums s;
  for (std::size_t r = 0; r < rows; ++r) {
    const T* __restrict row = y + r * cols;
    T a1[L] = {}, a2[L] = {}, an[L] = {};
    std::size_t j = 0;
    for (; j + L <= cols; j += L)
      for (std::size_t l = 0; l < L; ++l) {
        const T v = row[j + l];
        colsum[j + l] += v;
        a1[l] += v;
        a2[l] += v * v;
        an[l] += v > T(0) ? T(1) : T(0);
      }
    double t1 = 0.0, t2 = 0.0, tn = 0.0;
    for (; j < cols; ++j) {
      const T v = row[j];
      colsum[j] += v;
      t1 += static_cast<double>(v);
      t2 += static_cast<double>(v) * static_cast<double>(v);
      tn += v > T(0) ? 1.0 : 0.0;
    }
    for (std::size_t l = 0; l < L; ++l) {
      t1 += static_cast<double>(a1[l]);
      t2 += static_cast<double>(a2[l]);
      tn += static_cast<double>(an[l]);
    }
    s.sum += t1;
    s.sum2 += t2;
    s.active += tn;
  }
  return s;
}

}  // namespace

template <class T>
SnapshotSums snapshot_sums(const T* x, const T* g, T* copy, std::size_t n) {
  if (g != nullptr)
    return copy != nullptr ? snapshot_pass<T, true, true>(x, g, copy, n)
                           : snapshot_pass<T, true, false>(x, g, copy, n);
  return copy != nullptr ? snapshot_pass<T, false, true>(x, g, copy, n)
                         : snapshot_pass<T, false, false>(x, g, copy, n);
}

template <class T>
double difference_sum_squares(const T* a, const T* b, std::size_t n) {
  return difference_pass(a, b, n);
}

template <class T>
RectifierSums rectifier_sums(const T* y, std::size_t rows, std::size_t cols, T* colsum) {
  return rectifier_pass(y, rows, cols, colsum);
}

template SnapshotSums snapshot_sums<float>(const float*, const float*, float*, std::size_t);
template SnapshotSums snapshot_sums<double>(const double*, const double*, double*, std::size_t);
template double difference_sum_squares<float>(const float*, const float*, std::size_t);
template double difference_sum_squares<double>(const double*, const double*, std::size_t);
template RectifierSums rectifier_sums<float>(const float*, std::size_t, std::size_t, float*);
template RectifierSums rectifier_sums<double>(const double*, std::size_t, std::size_t, double*);

}  // namespace vgcore

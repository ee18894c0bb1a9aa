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

template SnapshotSums snapshot_sums<float>(const float*, const float*, float*, std::size_t);
template SnapshotSums snapshot_sums<double>(const double*, const double*, double*, std::size_t);
template double difference_sum_squares<float>(const float*, const float*, std::size_t);
template double difference_sum_squares<double>(const double*, const double*, std::size_t);

}  // namespace vgcore

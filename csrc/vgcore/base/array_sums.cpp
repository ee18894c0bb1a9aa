#include "vgcore/base/array_sums.hpp"

#include <algorithm>
#include <vector>

#include "vgcore/base/control.hpp"   // run_chunks, split_range
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

// The items' blocks: (item, first entry, entries).
struct Block {
  std::size_t item, begin, n;
};

std::vector<Block> blocks_of(const SumsItem* items, std::size_t count) {
  std::vector<Block> out;
  for (std::size_t i = 0; i < count; ++i) {
    if (items[i].n == 0) continue;
    for (std::size_t b = 0; b < items[i].n; b += kSumBlock)
      out.push_back({i, b, std::min(kSumBlock, items[i].n - b)});
  }
  return out;
}

// Runs block_sums(block, &partial[width * j]) for every block j on up to `threads` threads
// (contiguous runs of blocks), then adds each item's partials in block order into
// out[width * item ...]. Passes this small are not worth a thread: below 4 blocks a thread,
// fewer threads.
template <class Fn>
void run_blocks(const SumsItem* items, std::size_t count, double* out, std::size_t width,
                std::size_t threads, Fn&& block_sums) {
  const std::vector<Block> blocks = blocks_of(items, count);
  std::fill(out, out + width * count, 0.0);
  std::vector<double> partial(width * blocks.size(), 0.0);
  const std::size_t parts = std::max<std::size_t>(1, std::min(threads, blocks.size() / 4));
  Control ctl;
  run_chunks(parts, ctl, [&](std::size_t c) {
    const auto [lo, hi] = split_range(blocks.size(), parts, c);
    for (std::size_t j = lo; j < hi; ++j) block_sums(blocks[j], &partial[width * j]);
  });
  for (std::size_t j = 0; j < blocks.size(); ++j)
    for (std::size_t w = 0; w < width; ++w)
      out[width * blocks[j].item + w] += partial[width * j + w];
}

template <class T>
SnapshotSums snapshot_block(const SumsItem& it, std::size_t begin, std::size_t n) {
  const T* x = static_cast<const T*>(it.x) + begin;
  const T* g = it.g ? static_cast<const T*>(it.g) + begin : nullptr;
  T* c = it.copy ? static_cast<T*>(it.copy) + begin : nullptr;
  if (g != nullptr)
    return c != nullptr ? snapshot_pass<T, true, true>(x, g, c, n)
                        : snapshot_pass<T, true, false>(x, g, c, n);
  return c != nullptr ? snapshot_pass<T, false, true>(x, g, c, n)
                      : snapshot_pass<T, false, false>(x, g, c, n);
}

}  // namespace

void snapshot_sums_batch(const SumsItem* items, std::size_t count, double* out,
                         std::size_t threads) {
  run_blocks(items, count, out, 2, threads, [items](const Block& b, double* o) {
    const SumsItem& it = items[b.item];
    const SnapshotSums s =
        it.f32 ? snapshot_block<float>(it, b.begin, b.n) : snapshot_block<double>(it, b.begin, b.n);
    o[0] = s.x2;
    o[1] = s.g2;
  });
}

void difference_sums_batch(const SumsItem* items, std::size_t count, double* out,
                           std::size_t threads) {
  run_blocks(items, count, out, 1, threads, [items](const Block& b, double* o) {
    const SumsItem& it = items[b.item];
    o[0] = it.f32 ? difference_pass(static_cast<const float*>(it.x) + b.begin,
                                    static_cast<const float*>(it.g) + b.begin, b.n)
                  : difference_pass(static_cast<const double*>(it.x) + b.begin,
                                    static_cast<const double*>(it.g) + b.begin, b.n);
  });
}

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

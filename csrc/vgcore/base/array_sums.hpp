// One-pass sums over whole arrays for the training monitor (vgcore.watch): the statistics of a
// parameter tensor before and after an optimizer step, and of a rectifier's output.
//
// Each pass reads its arrays once (the step's parameters do not fit in cache: a statistic costs
// the memory traffic it makes). Sums are formed in double with 8 independent accumulators folded
// in a fixed order, so results are reproducible bit for bit whatever the instruction set.
#pragma once

#include <cstddef>

namespace vgcore {

// Entries per block of the batched passes below: each block's sums are formed alone and the
// blocks of an array added in order, so the results do not depend on the thread count.
constexpr std::size_t kSumBlock = std::size_t{1} << 15;

struct SnapshotSums {
  double x2 = 0.0;  // sum x_i^2
  double g2 = 0.0;  // sum g_i^2 (0 without g)
};

// sum x_i^2 and sum g_i^2 over n entries in one pass; when copy is given, x is copied into it
// in the same pass. g and copy may be null; copy must not overlap x.
template <class T>
SnapshotSums snapshot_sums(const T* x, const T* g, T* copy, std::size_t n);

// sum (a_i - b_i)^2 over n entries, each difference formed in double (exact for float; for
// double exact where a_i and b_i are within a factor 2 of each other, as a small step's are).
template <class T>
double difference_sum_squares(const T* a, const T* b, std::size_t n);

// One array of a batched pass: x (a for differences), g (b for differences; may be null for
// snapshots), copy (snapshots only; may be null), n entries of float (f32) or double.
struct SumsItem {
  const void* x = nullptr;
  const void* g = nullptr;
  void* copy = nullptr;
  std::size_t n = 0;
  bool f32 = false;
};

// snapshot_sums over every item (out[2i] = sum x^2, out[2i+1] = sum g^2), on up to `threads`
// threads (the caller's included) sharing the items' blocks of kSumBlock entries. Items are
// processed in the order given (a thread takes a contiguous run of blocks).
void snapshot_sums_batch(const SumsItem* items, std::size_t count, double* out,
                         std::size_t threads);

// difference_sum_squares over every item (out[i] = sum (x - g)^2), as snapshot_sums_batch.
void difference_sums_batch(const SumsItem* items, std::size_t count, double* out,
                           std::size_t threads);

struct RectifierSums {
  double sum = 0.0;     // sum y
  double sum2 = 0.0;    // sum y^2
  double active = 0.0;  // number of entries > 0
};

// Over a rows x cols row-major array y (a batch of rectifier outputs, any sign): the sums
// above, and each column's sum over the rows added to colsum[0..cols) (for y >= 0, > 0 exactly
// where some row has the unit active). Within a row the sums run in T over 16 lanes (exact
// counts below 2^24 per lane), across rows in double.
template <class T>
RectifierSums rectifier_sums(const T* y, std::size_t rows, std::size_t cols, T* colsum);

}  // namespace vgcore

// Row-parallel BLAS work on vgcore's own threads.
//
// OpenBLAS's pool threads busy-wait for about 0.1 s after a multi-threaded call. A whole-batch
// GEMM on the pool just before batch-parallel workers start (the input projection of a
// recurrent model) leaves those threads spinning on the cores the workers need: a quarter of
// the cycles of a short run. Splitting such a GEMM by rows over our own workers, each with one
// BLAS thread, keeps the pool asleep.
#pragma once

#include <algorithm>
#include <cstddef>

#include "vgcore/base/blas.hpp"
#include "vgcore/base/control.hpp"

namespace vgcore {

// Rows one fn call gets at most: a whole-sequence projection (10^5 steps x a batch) is cut into
// blocks so that Ctrl-C and the progress callback are seen between them, not after seconds.
constexpr std::size_t kParallelRowsBlock = 4096;

// fn(r0, r1) on contiguous row ranges covering [0, rows), each of at most kParallelRowsBlock
// rows, on up to `requested` threads (0 = hardware concurrency), at least `min_rows` rows per
// thread; BLAS single-threaded inside unless one thread does it all (then with the whole
// budget). Between blocks the calling thread checks `ctl` (Ctrl-C, progress), the others poll it.
template <class Fn>
void parallel_rows(int requested, std::size_t rows, std::size_t min_rows, Control& ctl, Fn&& fn) {
  const std::size_t n = resolve_threads(
      requested, std::max<std::size_t>(1, rows / std::max<std::size_t>(1, min_rows)));
  blas::BlasThreadsScope threads(n > 1 ? 1 : static_cast<int>(resolve_threads(requested, 1 << 20)));
  run_chunks(n, ctl, [&](std::size_t ci) {
    const auto [r0, r1] = split_range(rows, n, ci);
    for (std::size_t b0 = r0; b0 < r1; b0 += kParallelRowsBlock) {
      if (ci == 0)
        ctl.check();
      else
        ctl.poll();
      fn(b0, std::min(r1, b0 + kParallelRowsBlock));
    }
  });
}

// Steps whose input projections are computed in one block: at most 2^18 values (1 MB in
// float32), so the analyses that stream a sequence keep memory independent of its length,
// while each block still has hundreds of rows for an efficient GEMM.
inline std::size_t projection_block_steps(std::size_t steps, std::size_t values_per_step) {
  const std::size_t per_step = std::max<std::size_t>(1, values_per_step);
  return std::max<std::size_t>(1, std::min(steps, (std::size_t(1) << 18) / per_step));
}

}  // namespace vgcore

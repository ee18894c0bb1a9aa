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

#include "vgcore/blas.hpp"
#include "vgcore/control.hpp"

namespace vgcore {

// fn(r0, r1) on contiguous row ranges covering [0, rows), on up to `requested` threads
// (0 = hardware concurrency), at least `min_rows` rows per thread; BLAS single-threaded inside
// unless one thread does it all (then with the whole budget).
template <class Fn>
void parallel_rows(int requested, std::size_t rows, std::size_t min_rows, Control& ctl, Fn&& fn) {
  const std::size_t n = resolve_threads(requested, std::max<std::size_t>(1, rows / std::max<std::size_t>(1, min_rows)));
  blas::BlasThreadsScope threads(n > 1 ? 1 : static_cast<int>(resolve_threads(requested, 1 << 20)));
  run_chunks(n, ctl, [&](std::size_t ci) {
    const auto [r0, r1] = split_range(rows, n, ci);
    if (r1 > r0) fn(r0, r1);
  });
}

}  // namespace vgcore

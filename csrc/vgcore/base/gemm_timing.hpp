// The machine's own GEMM speed through the BLAS vgcore links: the reference the benchmarks
// compare kernels with.
#pragma once

#include <cstddef>

namespace vgcore {

// Best-of-`repeat` GFLOP/s of C = A B (m x k by k x n, row-major, float64 or float32) at the
// BLAS's current thread count, after one warm-up run. Throws std::invalid_argument when a
// size or repeat is zero.
double blas_gemm_gflops(std::size_t m, std::size_t n, std::size_t k, bool float64, int repeat);

}  // namespace vgcore

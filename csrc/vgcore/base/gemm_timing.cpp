#include "vgcore/base/gemm_timing.hpp"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <vector>

#include "vgcore/base/blas.hpp"

namespace vgcore {
namespace {

template <class T>
double gflops(std::size_t m, std::size_t n, std::size_t k, int repeat) {
  std::vector<T> a(m * k, T(0.5)), b(k * n, T(0.25)), c(m * n, T(0));
  double best = 1e300;
  for (int r = 0; r < repeat + 1; ++r) {  // the first run warms up
    const auto t0 = std::chrono::steady_clock::now();
    blas::gemm(blas::Op::N, blas::Op::N, m, n, k, T(1), a.data(), k, b.data(), n, T(0), c.data(),
               n);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) best = std::min(best, dt);
  }
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) / best /
         1e9;
}

}  // namespace

double blas_gemm_gflops(std::size_t m, std::size_t n, std::size_t k, bool float64, int repeat) {
  if (m == 0 || n == 0 || k == 0 || repeat < 1)
    throw std::invalid_argument("m, n, k and repeat must be positive");
  return float64 ? gflops<double>(m, n, k, repeat) : gflops<float>(m, n, k, repeat);
}

}  // namespace vgcore

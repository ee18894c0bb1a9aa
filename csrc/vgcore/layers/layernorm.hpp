// LayerNorm over the units of each sample (torch.nn.LayerNorm(n) after a Linear layer):
//   z' = gamma * (z - mean(z)) * istd + beta,  istd = 1 / sqrt(var(z) + eps)  (biased variance).
// gamma / beta null mean 1 / 0. Row formulas only: loops over layers, chunks, threads and memory
// live in the sweeps.
#pragma once

#include <cmath>
#include <cstddef>

namespace vgcore::layers {

// z (rows x n) -> z' in place; xhat (rows x n) and istd (rows) kept for the backward pass.
template <class T>
void layernorm_forward_rows(const T* gamma, const T* beta, double eps, T* z, T* xhat, T* istd,
                            std::size_t rows, std::size_t n) {
  for (std::size_t r = 0; r < rows; ++r) {
    T* zr = z + r * n;
    double m = 0, v = 0;
    for (std::size_t j = 0; j < n; ++j) m += zr[j];
    m /= static_cast<double>(n);
    for (std::size_t j = 0; j < n; ++j) v += (zr[j] - m) * (zr[j] - m);
    v /= static_cast<double>(n);
    const T is = static_cast<T>(1.0 / std::sqrt(v + eps));
    istd[r] = is;
    T* xr = xhat + r * n;
    for (std::size_t j = 0; j < n; ++j) {
      xr[j] = static_cast<T>(zr[j] - m) * is;
      zr[j] = (gamma ? gamma[j] : T(1)) * xr[j] + (beta ? beta[j] : T(0));
    }
  }
}

// dL/dz (rows x n) from dL/dz' (dzp), per row through its mean and variance.
template <class T>
void layernorm_backward_rows(const T* gamma, const T* dzp, const T* xhat, const T* istd, T* dz,
                             std::size_t rows, std::size_t n) {
  for (std::size_t r = 0; r < rows; ++r) {
    const T* gr = dzp + r * n;
    const T* xr = xhat + r * n;
    double s1 = 0, s2 = 0;
    for (std::size_t j = 0; j < n; ++j) {
      const double gh = gr[j] * (gamma ? gamma[j] : T(1));
      s1 += gh;
      s2 += gh * xr[j];
    }
    const T m1 = static_cast<T>(s1 / n), m2 = static_cast<T>(s2 / n);
    T* dr = dz + r * n;
    for (std::size_t j = 0; j < n; ++j) {
      const T gh = gr[j] * (gamma ? gamma[j] : T(1));
      dr[j] = istd[r] * (gh - m1 - xr[j] * m2);
    }
  }
}

}  // namespace vgcore::layers

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

// Tangent (JVP) of one sample: dz' = gamma * istd * (u - mean(u) - xhat mean(xhat u)) for a
// tangent u of z.
template <class T>
void layernorm_jvp_row(const T* gamma, const T* xhat, T istd, const T* u, T* out, std::size_t n) {
  double s1 = 0, s2 = 0;
  for (std::size_t j = 0; j < n; ++j) {
    s1 += u[j];
    s2 += static_cast<double>(xhat[j]) * u[j];
  }
  const T m1 = static_cast<T>(s1 / n), m2 = static_cast<T>(s2 / n);
  for (std::size_t j = 0; j < n; ++j)
    out[j] = (gamma ? gamma[j] : T(1)) * istd * (u[j] - m1 - xhat[j] * m2);
}

// Cotangent (VJP) of one sample, in place on g (the cotangent of z' becomes that of z).
template <class T>
void layernorm_vjp_row(const T* gamma, const T* xhat, T istd, T* g, std::size_t n) {
  double s1 = 0, s2 = 0;
  for (std::size_t j = 0; j < n; ++j) {
    const T gh = g[j] * (gamma ? gamma[j] : T(1));
    g[j] = gh;
    s1 += gh;
    s2 += static_cast<double>(gh) * xhat[j];
  }
  const T m1 = static_cast<T>(s1 / n), m2 = static_cast<T>(s2 / n);
  for (std::size_t j = 0; j < n; ++j) g[j] = istd * (g[j] - m1 - xhat[j] * m2);
}

}  // namespace vgcore::layers

// BatchNorm of each unit over the batch (torch.nn.BatchNorm1d after a Linear layer):
//   training mode: z' = gamma * (z - mean_batch) * istd + beta, istd = 1 / sqrt(var_batch + eps)
//                  (biased variance, as PyTorch normalises): couples the samples;
//   eval mode:     the running statistics instead, a per-unit affine map.
// gamma / beta null mean 1 / 0. Formulas only: loops over layers, chunks, threads and memory
// live in the sweeps.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

namespace vgcore::layers {

// Eval mode: 1 / sqrt(running_var + eps) of one unit (PyTorch's invstd).
template <class T>
inline T batchnorm_running_istd(T running_var, double eps) {
  return static_cast<T>(1.0 / std::sqrt(static_cast<double>(running_var) + eps));
}

// Training mode, z (rows x n) -> z' in place, over the rows (the batch); xhat and istd (n) kept.
template <class T>
void batchnorm_forward_cols(const T* gamma, const T* beta, double eps, T* z, T* xhat, T* istd,
                            std::size_t rows, std::size_t n) {
  std::vector<double> m(n, 0.0), v(n, 0.0);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t j = 0; j < n; ++j) m[j] += z[r * n + j];
  for (std::size_t j = 0; j < n; ++j) m[j] /= static_cast<double>(rows);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t j = 0; j < n; ++j) v[j] += (z[r * n + j] - m[j]) * (z[r * n + j] - m[j]);
  for (std::size_t j = 0; j < n; ++j) istd[j] = static_cast<T>(1.0 / std::sqrt(v[j] / rows + eps));
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t j = 0; j < n; ++j) {
      const T xv = static_cast<T>(z[r * n + j] - m[j]) * istd[j];
      xhat[r * n + j] = xv;
      z[r * n + j] = (gamma ? gamma[j] : T(1)) * xv + (beta ? beta[j] : T(0));
    }
}

// Eval mode, one unit: xhat = (z - running_mean) istd, z' = gamma xhat + beta.
template <class T>
struct BatchnormEvalUnit {
  T xhat, z;
};

template <class T>
inline BatchnormEvalUnit<T> batchnorm_eval_unit(T z, T running_mean, T istd, T gamma, T beta) {
  const T xv = (z - running_mean) * istd;
  return {xv, gamma * xv + beta};
}

// Eval mode, z (rows x n) -> z' in place with the running mean and istd (n); xhat kept.
template <class T>
void batchnorm_eval_forward_rows(const T* gamma, const T* beta, const T* running_mean,
                                 const T* istd, T* z, T* xhat, std::size_t rows, std::size_t n) {
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t j = 0; j < n; ++j) {
      const auto u = batchnorm_eval_unit(z[r * n + j], running_mean[j], istd[j],
                                         gamma ? gamma[j] : T(1), beta ? beta[j] : T(0));
      xhat[r * n + j] = u.xhat;
      z[r * n + j] = u.z;
    }
}

// Training mode: dL/dz (rows x n) from dL/dz' (dzp), per unit through the batch statistics.
template <class T>
void batchnorm_backward_cols(const T* gamma, const T* dzp, const T* xhat, const T* istd, T* dz,
                             std::size_t rows, std::size_t n) {
  std::vector<double> s1(n, 0.0), s2(n, 0.0);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t j = 0; j < n; ++j) {
      const double gh = dzp[r * n + j] * (gamma ? gamma[j] : T(1));
      s1[j] += gh;
      s2[j] += gh * xhat[r * n + j];
    }
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t j = 0; j < n; ++j) {
      const T gh = dzp[r * n + j] * (gamma ? gamma[j] : T(1));
      dz[r * n + j] = istd[j] * (gh - static_cast<T>(s1[j] / rows) -
                                 xhat[r * n + j] * static_cast<T>(s2[j] / rows));
    }
}

// Eval mode: dL/dz = dL/dz' * gamma * istd, per unit.
template <class T>
void batchnorm_eval_backward_rows(const T* gamma, const T* dzp, const T* istd, T* dz,
                                  std::size_t rows, std::size_t n) {
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t j = 0; j < n; ++j)
      dz[r * n + j] = dzp[r * n + j] * (gamma ? gamma[j] : T(1)) * istd[j];
}

// Eval mode, tangent and cotangent of one unit: both multiply by gamma istd (a diagonal map).
template <class T>
inline T batchnorm_eval_jvp(T gamma, T istd, T u) {
  return gamma * istd * u;
}

}  // namespace vgcore::layers

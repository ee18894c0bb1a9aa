// Householder QR of tall-skinny blocks stored as rows: re-orthonormalising k tangent vectors of
// dimension m (k <= m) and returning the diagonal of R.
//
// The block is a column-major m x k matrix whose columns are contiguous (one tangent vector per
// row of vgcore's row-major storage). For small k, LAPACK's geqrf + orgqr run their unblocked
// level-2 paths, one gemv + ger per column, with call overhead per column; here each
// reflector is applied to each later column in one fused pass (a dot product and an update of
// that column while it sits in L1), with explicit accumulator lanes so the reductions
// vectorise. Same reflectors as LAPACK (dlarfg conventions), same backward stability; float64
// norms. Large k goes to LAPACK's blocked code.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "vgcore/base/fastmath.hpp"  // VGCORE_TARGET_CLONES
#include "vgcore/base/lapack.hpp"

namespace vgcore::householder {

namespace detail {

// dot(a, b) over n values with enough independent lanes to hide FMA latency.
template <class T>
VGCORE_TARGET_CLONES T dot(const T* __restrict a, const T* __restrict b, std::size_t n) {
  constexpr int L = 256 / sizeof(T);  // 4 AVX-512 registers
  T acc[L] = {};
  std::size_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) acc[j] += a[i + j] * b[i + j];
  T s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < L; j += 2) s += acc[j] + acc[j + 1];
  return s;
}

template <class T>
VGCORE_TARGET_CLONES void axpy(T alpha, const T* __restrict x, T* __restrict y, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template <class T>
VGCORE_TARGET_CLONES double sumsq(const T* __restrict x, std::size_t n) {
  double acc[16] = {};
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j)
      acc[j] += static_cast<double>(x[i + j]) * static_cast<double>(x[i + j]);
  double s = 0;
  for (; i < n; ++i) s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

template <class T>
VGCORE_TARGET_CLONES void scal(T alpha, T* __restrict x, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) x[i] *= alpha;
}

// Reflector for x = [alpha; rest] (dlarfg): H x = [beta; 0], H = I - tau v v^T, v = [1; rest'].
// rest is overwritten by v's tail; returns beta (the R diagonal entry) and sets tau.
//
// Careful path, for any finite column: x scaled by a power of two (exact) so that its largest
// entry is about 1, the norm taken in double there (no overflow; squares that underflow are
// below the rounding of the sum), v = x / (alpha - beta) formed in double on the scaled values,
// where |alpha - beta| >= the scaled norm ~ 1, so no quotient overflows.
template <class T>
double make_reflector_scaled(T* x, std::size_t n, T& tau) {
  double mx = std::fabs(static_cast<double>(x[0]));
  for (std::size_t i = 1; i < n; ++i) mx = std::max(mx, std::fabs(static_cast<double>(x[i])));
  int e = 0;
  std::frexp(mx, &e);  // mx = m 2^e, m in [1/2, 1)
  const double alpha = std::ldexp(static_cast<double>(x[0]), -e);
  double s = 0;
  for (std::size_t i = 1; i < n; ++i) {
    const double v = std::ldexp(static_cast<double>(x[i]), -e);
    s += v * v;
  }
  const double norm = std::sqrt(alpha * alpha + s);
  const double beta = alpha >= 0 ? -norm : norm;
  const double d = alpha - beta;
  for (std::size_t i = 1; i < n; ++i)
    x[i] = static_cast<T>(std::ldexp(static_cast<double>(x[i]), -e) / d);
  tau = static_cast<T>((beta - alpha) / beta);
  return std::ldexp(beta, e);
}

template <class T>
double make_reflector(T* x, std::size_t n, T& tau) {
  const double alpha = x[0];
  const double xn2 = n > 1 ? sumsq(x + 1, n - 1) : 0.0;
  if (xn2 == 0.0) {
    bool zero = true;  // or every square underflowed
    for (std::size_t i = 1; i < n && zero; ++i) zero = x[i] == T(0);
    if (zero) {
      tau = T(0);
      return alpha;
    }
  }
  // Fast path where nothing can over/underflow: the norm in range, and 1 / (alpha - beta) a
  // normal number of T (it is not for columns near T's smallest normal: float32 below about
  // 1e-38, where it would overflow to inf and v would be inf/NaN).
  if (xn2 > 1e-250 && xn2 < 1e250 && std::fabs(alpha) < 1e125) {
    const double norm = std::sqrt(alpha * alpha + xn2);
    const double beta = alpha >= 0 ? -norm : norm;
    const double scale = 1.0 / (alpha - beta);
    if (scale <= static_cast<double>(std::numeric_limits<T>::max()) &&
        scale >= static_cast<double>(std::numeric_limits<T>::min())) {
      tau = static_cast<T>((beta - alpha) / beta);
      scal(static_cast<T>(scale), x + 1, n - 1);
      return beta;
    }
  }
  if (!std::isfinite(xn2) && !(xn2 > 0)) {  // NaN: propagate (the caller checks rdiag)
    tau = std::numeric_limits<T>::quiet_NaN();
    return xn2;
  }
  return make_reflector_scaled(x, n, tau);
}

}  // namespace detail

// Largest k handled by the fused kernel; beyond it LAPACK's blocked QR is faster.
constexpr std::size_t kFusedMaxColumns = 96;

// Replace the m x k block a (column j at a + j * lda, k <= m) by the orthonormal factor Q of its
// QR decomposition and write R's diagonal (signed, float64) to rdiag. tau: k scratch values.
// Returns false if the block held NaN/Inf.
template <class T>
bool qr_replace_by_q(T* a, std::size_t m, std::size_t k, std::size_t lda, double* rdiag, T* tau) {
  using detail::axpy;
  using detail::dot;
  if (k > kFusedMaxColumns) {
    lapack::geqrf(static_cast<int>(m), static_cast<int>(k), a, static_cast<int>(lda), tau);
    for (std::size_t j = 0; j < k; ++j) rdiag[j] = a[j * lda + j];
    lapack::orgqr(static_cast<int>(m), static_cast<int>(k), static_cast<int>(k), a,
                  static_cast<int>(lda), tau);
  } else {
    // Factor: reflector j from column j, applied to the later columns one at a time.
    for (std::size_t j = 0; j < k; ++j) {
      T* cj = a + j * lda + j;
      const std::size_t n = m - j;
      rdiag[j] = detail::make_reflector(cj, n, tau[j]);
      const T tj = tau[j];
      if (tj == T(0)) continue;
      for (std::size_t c = j + 1; c < k; ++c) {
        T* cc = a + c * lda + j;
        const T w = tj * (cc[0] + dot(cj + 1, cc + 1, n - 1));
        cc[0] -= w;
        axpy(-w, cj + 1, cc + 1, n - 1);
      }
    }
    // Form Q = H_0 ... H_{k-1} [I; 0] in place, last reflector first (as dorg2r).
    for (std::size_t jj = k; jj-- > 0;) {
      T* cj = a + jj * lda + jj;
      const std::size_t n = m - jj;
      const T tj = tau[jj];
      for (std::size_t c = jj + 1; c < k; ++c) {
        T* cc = a + c * lda + jj;  // cc[0] is 0 before H_jj is applied
        const T w = tj * dot(cj + 1, cc + 1, n - 1);
        cc[0] = -w;
        axpy(-w, cj + 1, cc + 1, n - 1);
      }
      detail::scal(-tj, cj + 1, n - 1);
      cj[0] = T(1) - tj;
      std::fill(a + jj * lda, cj, T(0));
    }
  }
  for (std::size_t j = 0; j < k; ++j)
    if (!std::isfinite(rdiag[j])) return false;
  return true;
}

}  // namespace vgcore::householder

// Thin, typed shim over CBLAS/LAPACK from the scipy-openblas32 wheel.
// The wheel prefixes every symbol (scipy_cblas_sgemm, ...); the prefix is a
// compile definition so another BLAS can be dropped in.
#pragma once

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <thread>
#include <string>

#ifndef VGCORE_BLAS_PREFIX
#define VGCORE_BLAS_PREFIX scipy_
#endif
#define VGCORE_CAT2(a, b) a##b
#define VGCORE_CAT(a, b) VGCORE_CAT2(a, b)
#define VGCORE_BLAS(name) VGCORE_CAT(VGCORE_BLAS_PREFIX, name)

extern "C" {
enum VgcoreCblasOrder { VgcoreRowMajor = 101, VgcoreColMajor = 102 };
enum VgcoreCblasTranspose { VgcoreNoTrans = 111, VgcoreTrans = 112 };
void VGCORE_BLAS(cblas_sgemm)(int order, int ta, int tb, int m, int n, int k, float alpha,
                              const float* a, int lda, const float* b, int ldb, float beta,
                              float* c, int ldc);
void VGCORE_BLAS(cblas_dgemm)(int order, int ta, int tb, int m, int n, int k, double alpha,
                              const double* a, int lda, const double* b, int ldb, double beta,
                              double* c, int ldc);
void VGCORE_BLAS(cblas_strmm)(int order, int side, int uplo, int ta, int diag, int m, int n,
                              float alpha, const float* a, int lda, float* b, int ldb);
void VGCORE_BLAS(cblas_dtrmm)(int order, int side, int uplo, int ta, int diag, int m, int n,
                              double alpha, const double* a, int lda, double* b, int ldb);
void VGCORE_BLAS(openblas_set_num_threads)(int n);
int VGCORE_BLAS(openblas_get_num_threads)(void);
}

namespace vgcore::blas {

enum class Op { N, T };

inline int checked_int(std::size_t v, const char* what) {
  if (v > static_cast<std::size_t>(2147483647))
    throw std::length_error(std::string("BLAS dimension '") + what +
                            "' exceeds 2^31-1 (32-bit BLAS)");
  return static_cast<int>(v);
}

// C (m x n, row-major, ldc) = alpha * op(A) * op(B) + beta * C.
// op(A) is m x k, op(B) is k x n; lda/ldb are the row strides of A and B as stored.
inline void gemm(Op ta, Op tb, std::size_t m, std::size_t n, std::size_t k, float alpha,
                 const float* a, std::size_t lda, const float* b, std::size_t ldb, float beta,
                 float* c, std::size_t ldc) {
  if (m == 0 || n == 0) return;
  VGCORE_BLAS(cblas_sgemm)(VgcoreRowMajor, ta == Op::N ? VgcoreNoTrans : VgcoreTrans,
                           tb == Op::N ? VgcoreNoTrans : VgcoreTrans, checked_int(m, "m"),
                           checked_int(n, "n"), checked_int(k, "k"), alpha, a,
                           checked_int(lda, "lda"), b, checked_int(ldb, "ldb"), beta, c,
                           checked_int(ldc, "ldc"));
}
inline void gemm(Op ta, Op tb, std::size_t m, std::size_t n, std::size_t k, double alpha,
                 const double* a, std::size_t lda, const double* b, std::size_t ldb, double beta,
                 double* c, std::size_t ldc) {
  if (m == 0 || n == 0) return;
  VGCORE_BLAS(cblas_dgemm)(VgcoreRowMajor, ta == Op::N ? VgcoreNoTrans : VgcoreTrans,
                           tb == Op::N ? VgcoreNoTrans : VgcoreTrans, checked_int(m, "m"),
                           checked_int(n, "n"), checked_int(k, "k"), alpha, a,
                           checked_int(lda, "lda"), b, checked_int(ldb, "ldb"), beta, c,
                           checked_int(ldc, "ldc"));
}

// B (m x n, row-major, ldb) = A B with A upper triangular m x m (row-major, lda), in place.
inline void trmm_upper_left(std::size_t m, std::size_t n, const float* a, std::size_t lda, float* b,
                            std::size_t ldb) {
  if (m == 0 || n == 0) return;
  VGCORE_BLAS(cblas_strmm)(VgcoreRowMajor, 141 /* Left */, 121 /* Upper */, VgcoreNoTrans,
                           131 /* NonUnit */, checked_int(m, "m"), checked_int(n, "n"), 1.0f, a,
                           checked_int(lda, "lda"), b, checked_int(ldb, "ldb"));
}
inline void trmm_upper_left(std::size_t m, std::size_t n, const double* a, std::size_t lda,
                            double* b, std::size_t ldb) {
  if (m == 0 || n == 0) return;
  VGCORE_BLAS(cblas_dtrmm)(VgcoreRowMajor, 141 /* Left */, 121 /* Upper */, VgcoreNoTrans,
                           131 /* NonUnit */, checked_int(m, "m"), checked_int(n, "n"), 1.0, a,
                           checked_int(lda, "lda"), b, checked_int(ldb, "ldb"));
}

// Global BLAS thread count (all threads that have not set a local count).
inline void set_num_threads(int n) { VGCORE_BLAS(openblas_set_num_threads)(n); }
inline int get_num_threads() { return VGCORE_BLAS(openblas_get_num_threads)(); }

// Sets the BLAS thread count while alive and restores the previous one afterwards (scopes
// nest). Batch-parallel workers each call BLAS on their own slice of the batch with one
// thread (a multi-threaded BLAS would serialise them on its pool, and the OpenBLAS wheel has
// no per-thread setting); a single chunk gets the whole thread budget. The setting is
// process-wide: concurrent analyses in several Python threads share it.
class BlasThreadsScope {
 public:
  explicit BlasThreadsScope(int n) : saved_(get_num_threads()) {
    // OpenBLAS grows its pool to n and aborts the process if that fails: never above the CPUs.
    if (n > 0) n = std::min(n, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
    if (n > 0 && n != saved_) set_num_threads(n);
  }
  ~BlasThreadsScope() {
    if (get_num_threads() != saved_) set_num_threads(saved_);
  }
  BlasThreadsScope(const BlasThreadsScope&) = delete;
  BlasThreadsScope& operator=(const BlasThreadsScope&) = delete;

 private:
  int saved_;
};

// BLAS threads for products repeated every step by a single chunk of work: the whole budget
// only when one call has at least 2^25 multiply-adds (N >= ~320 square, or many rows). Below
// that the pool's hand-offs dominate, and with the other core busy two-thread BLAS on such
// matrices runs 2-5x slower than one thread (measured: Jacobian products N = 128).
inline int step_threads(std::size_t m, std::size_t n, std::size_t k, int budget) {
  const double macs = static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  return macs >= 33554432.0 ? budget : 1;
}

}  // namespace vgcore::blas

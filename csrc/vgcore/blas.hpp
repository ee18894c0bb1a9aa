// Thin, typed shim over CBLAS/LAPACK from the scipy-openblas32 wheel.
// The wheel prefixes every symbol (scipy_cblas_sgemm, ...); the prefix is a
// compile definition so another BLAS can be dropped in.
#pragma once

#include <cstddef>
#include <mutex>
#include <stdexcept>
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
                 const double* a, std::size_t lda, const double* b, std::size_t ldb,
                 double beta, double* c, std::size_t ldc) {
  if (m == 0 || n == 0) return;
  VGCORE_BLAS(cblas_dgemm)(VgcoreRowMajor, ta == Op::N ? VgcoreNoTrans : VgcoreTrans,
                           tb == Op::N ? VgcoreNoTrans : VgcoreTrans, checked_int(m, "m"),
                           checked_int(n, "n"), checked_int(k, "k"), alpha, a,
                           checked_int(lda, "lda"), b, checked_int(ldb, "ldb"), beta, c,
                           checked_int(ldc, "ldc"));
}

// Global BLAS thread count (all threads that have not set a local count).
inline void set_num_threads(int n) { VGCORE_BLAS(openblas_set_num_threads)(n); }
inline int get_num_threads() { return VGCORE_BLAS(openblas_get_num_threads)(); }

// Runs BLAS single-threaded while alive. Batch-parallel workers each call BLAS on their own
// slice of the batch; a multi-threaded BLAS would serialise them on its thread pool (the
// OpenBLAS wheel has no per-thread setting). Nested / concurrent scopes are reference-counted.
class SingleThreadScope {
 public:
  SingleThreadScope() {
    std::lock_guard<std::mutex> lock(mutex());
    if (depth()++ == 0) {
      saved() = get_num_threads();
      set_num_threads(1);
    }
  }
  ~SingleThreadScope() {
    std::lock_guard<std::mutex> lock(mutex());
    if (--depth() == 0) set_num_threads(saved());
  }
  SingleThreadScope(const SingleThreadScope&) = delete;
  SingleThreadScope& operator=(const SingleThreadScope&) = delete;

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static int& depth() {
    static int d = 0;
    return d;
  }
  static int& saved() {
    static int s = 1;
    return s;
  }
};

}  // namespace vgcore::blas

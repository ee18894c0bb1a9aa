// Thin, typed shim over the LAPACK routines vgcore uses (from the scipy-openblas32 wheel, whose
// Fortran symbols carry the same prefix as its CBLAS ones: scipy_dgeqrf_, ...).
//
// Everything is column-major, as in LAPACK. A row-major block of k rows of length m (the way
// vgcore stores tangent vectors) is a column-major m x k matrix with leading dimension m.
// Each wrapper sizes its own workspace (a query, then a thread-local buffer) and throws
// std::runtime_error on a LAPACK failure.
#pragma once

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "vgcore/base/blas.hpp"

extern "C" {
// Hidden Fortran string lengths (gfortran >= 8: size_t) are passed explicitly.
void VGCORE_BLAS(sgeqrf_)(const int* m, const int* n, float* a, const int* lda, float* tau,
                          float* work, const int* lwork, int* info);
void VGCORE_BLAS(dgeqrf_)(const int* m, const int* n, double* a, const int* lda, double* tau,
                          double* work, const int* lwork, int* info);
void VGCORE_BLAS(sorgqr_)(const int* m, const int* n, const int* k, float* a, const int* lda,
                          const float* tau, float* work, const int* lwork, int* info);
void VGCORE_BLAS(dorgqr_)(const int* m, const int* n, const int* k, double* a, const int* lda,
                          const double* tau, double* work, const int* lwork, int* info);
void VGCORE_BLAS(sgeev_)(const char* jobvl, const char* jobvr, const int* n, float* a,
                         const int* lda, float* wr, float* wi, float* vl, const int* ldvl,
                         float* vr, const int* ldvr, float* work, const int* lwork, int* info,
                         std::size_t, std::size_t);
void VGCORE_BLAS(dgeev_)(const char* jobvl, const char* jobvr, const int* n, double* a,
                         const int* lda, double* wr, double* wi, double* vl, const int* ldvl,
                         double* vr, const int* ldvr, double* work, const int* lwork, int* info,
                         std::size_t, std::size_t);
void VGCORE_BLAS(sgesdd_)(const char* jobz, const int* m, const int* n, float* a, const int* lda,
                          float* s, float* u, const int* ldu, float* vt, const int* ldvt,
                          float* work, const int* lwork, int* iwork, int* info, std::size_t);
void VGCORE_BLAS(dgesdd_)(const char* jobz, const int* m, const int* n, double* a, const int* lda,
                          double* s, double* u, const int* ldu, double* vt, const int* ldvt,
                          double* work, const int* lwork, int* iwork, int* info, std::size_t);
void VGCORE_BLAS(dgees_)(const char* jobvs, const char* sort,
                         int (*select)(const double*, const double*), const int* n, double* a,
                         const int* lda, int* sdim, double* wr, double* wi, double* vs,
                         const int* ldvs, double* work, const int* lwork, int* bwork, int* info,
                         std::size_t, std::size_t);
void VGCORE_BLAS(dtrsen_)(const char* job, const char* compq, const int* select, const int* n,
                          double* t, const int* ldt, double* q, const int* ldq, double* wr,
                          double* wi, int* m, double* s, double* sep, double* work,
                          const int* lwork, int* iwork, const int* liwork, int* info, std::size_t,
                          std::size_t);
}

namespace vgcore::lapack {

inline void check_info(int info, const char* routine) {
  if (info != 0)
    throw std::runtime_error(std::string("LAPACK ") + routine +
                             " failed (info = " + std::to_string(info) + ")");
}

template <class T>
std::vector<T>& work_buffer(std::size_t n) {
  thread_local std::vector<T> w;
  if (w.size() < n) w.resize(n);
  return w;
}

// Householder QR of the m x n matrix a (lda): R in the upper triangle, reflectors below,
// their scalars in tau (min(m, n)).
template <class T>
void geqrf(int m, int n, T* a, int lda, T* tau) {
  if (m == 0 || n == 0) return;
  int info = 0, lwork = -1;
  T q = 0;
  auto call = [&](T* work, int lw) {
    if constexpr (std::is_same_v<T, float>)
      VGCORE_BLAS(sgeqrf_)(&m, &n, a, &lda, tau, work, &lw, &info);
    else
      VGCORE_BLAS(dgeqrf_)(&m, &n, a, &lda, tau, work, &lw, &info);
  };
  call(&q, lwork);
  lwork = std::max(1, static_cast<int>(q));
  auto& w = work_buffer<T>(static_cast<std::size_t>(lwork));
  call(w.data(), lwork);
  check_info(info, "geqrf");
}

// The first n columns of Q = H_1 ... H_k (from geqrf), in place of a (m x n, lda).
template <class T>
void orgqr(int m, int n, int k, T* a, int lda, const T* tau) {
  if (m == 0 || n == 0) return;
  int info = 0, lwork = -1;
  T q = 0;
  auto call = [&](T* work, int lw) {
    if constexpr (std::is_same_v<T, float>)
      VGCORE_BLAS(sorgqr_)(&m, &n, &k, a, &lda, tau, work, &lw, &info);
    else
      VGCORE_BLAS(dorgqr_)(&m, &n, &k, a, &lda, tau, work, &lw, &info);
  };
  call(&q, lwork);
  lwork = std::max(1, static_cast<int>(q));
  auto& w = work_buffer<T>(static_cast<std::size_t>(lwork));
  call(w.data(), lwork);
  check_info(info, "orgqr");
}

// Eigenvalues (wr + i wi) of the n x n matrix a (destroyed).
template <class T>
void geev_values(int n, T* a, int lda, T* wr, T* wi) {
  int info = 0, lwork = -1, one = 1;
  T q = 0, dummy = 0;
  const char no = 'N';
  auto call = [&](T* work, int lw) {
    if constexpr (std::is_same_v<T, float>)
      VGCORE_BLAS(sgeev_)(&no, &no, &n, a, &lda, wr, wi, &dummy, &one, &dummy, &one, work, &lw,
                          &info, 1, 1);
    else
      VGCORE_BLAS(dgeev_)(&no, &no, &n, a, &lda, wr, wi, &dummy, &one, &dummy, &one, work, &lw,
                          &info, 1, 1);
  };
  call(&q, lwork);
  lwork = std::max(1, static_cast<int>(q));
  auto& w = work_buffer<T>(static_cast<std::size_t>(lwork));
  call(w.data(), lwork);
  check_info(info, "geev");
}

// Eigenvalues and right eigenvectors (LAPACK packing of complex pairs) of a (destroyed).
inline void geev_right(int n, double* a, int lda, double* wr, double* wi, double* vr, int ldvr) {
  int info = 0, lwork = -1, one = 1;
  double q = 0, dummy = 0;
  const char no = 'N', yes = 'V';
  VGCORE_BLAS(dgeev_)(&no, &yes, &n, a, &lda, wr, wi, &dummy, &one, vr, &ldvr, &q, &lwork, &info, 1,
                      1);
  lwork = std::max(1, static_cast<int>(q));
  auto& w = work_buffer<double>(static_cast<std::size_t>(lwork));
  VGCORE_BLAS(dgeev_)(&no, &yes, &n, a, &lda, wr, wi, &dummy, &one, vr, &ldvr, w.data(), &lwork,
                      &info, 1, 1);
  check_info(info, "geev");
}

// Eigenvalues with left and right eigenvectors (LAPACK packing of complex pairs) of a
// (destroyed), for eigenvalue condition numbers.
inline void geev_left_right(int n, double* a, int lda, double* wr, double* wi, double* vl, int ldvl,
                            double* vr, int ldvr) {
  int info = 0, lwork = -1;
  double q = 0;
  const char yes = 'V';
  VGCORE_BLAS(dgeev_)(&yes, &yes, &n, a, &lda, wr, wi, vl, &ldvl, vr, &ldvr, &q, &lwork, &info, 1,
                      1);
  lwork = std::max(1, static_cast<int>(q));
  auto& w = work_buffer<double>(static_cast<std::size_t>(lwork));
  VGCORE_BLAS(dgeev_)(&yes, &yes, &n, a, &lda, wr, wi, vl, &ldvl, vr, &ldvr, w.data(), &lwork,
                      &info, 1, 1);
  check_info(info, "geev");
}

// Singular values (descending, min(m, n) of them) of the m x n matrix a (destroyed).
template <class T>
void gesdd_values(int m, int n, T* a, int lda, T* s) {
  int info = 0, lwork = -1, one = 1;
  T q = 0, dummy = 0;
  const char no = 'N';
  auto& iw = work_buffer<int>(static_cast<std::size_t>(8 * std::min(m, n) + 8));
  auto call = [&](T* work, int lw) {
    if constexpr (std::is_same_v<T, float>)
      VGCORE_BLAS(sgesdd_)(&no, &m, &n, a, &lda, s, &dummy, &one, &dummy, &one, work, &lw,
                           iw.data(), &info, 1);
    else
      VGCORE_BLAS(dgesdd_)(&no, &m, &n, a, &lda, s, &dummy, &one, &dummy, &one, work, &lw,
                           iw.data(), &info, 1);
  };
  call(&q, lwork);
  lwork = std::max(1, static_cast<int>(q));
  auto& w = work_buffer<T>(static_cast<std::size_t>(lwork));
  call(w.data(), lwork);
  check_info(info, "gesdd");
}

// Real Schur form a = Z S Z^T (a overwritten by S, z receives Z), unsorted.
inline void gees(int n, double* a, int lda, double* wr, double* wi, double* z, int ldz) {
  int info = 0, lwork = -1, sdim = 0;
  double q = 0;
  const char jobvs = 'V', sort = 'N';
  std::vector<int> bwork(static_cast<std::size_t>(n));
  VGCORE_BLAS(dgees_)(&jobvs, &sort, nullptr, &n, a, &lda, &sdim, wr, wi, z, &ldz, &q, &lwork,
                      bwork.data(), &info, 1, 1);
  lwork = std::max(1, static_cast<int>(q));
  auto& w = work_buffer<double>(static_cast<std::size_t>(lwork));
  VGCORE_BLAS(dgees_)(&jobvs, &sort, nullptr, &n, a, &lda, &sdim, wr, wi, z, &ldz, w.data(), &lwork,
                      bwork.data(), &info, 1, 1);
  check_info(info, "gees");
}

// Reorder a real Schur form so that the selected eigenvalues lead (Z updated); returns how many
// lead (a selected complex pair counts twice). info 1 (reordering too ill-conditioned) is
// reported as -1 so the caller can fall back.
inline int trsen(int n, double* t, int ldt, double* z, int ldz, const int* select, double* wr,
                 double* wi) {
  int info = 0, m = 0, lwork = std::max(1, n), liwork = 1;
  double s = 0, sep = 0;
  const char job = 'N', compq = 'V';
  auto& w = work_buffer<double>(static_cast<std::size_t>(lwork));
  int iw = 0;
  VGCORE_BLAS(dtrsen_)(&job, &compq, select, &n, t, &ldt, z, &ldz, wr, wi, &m, &s, &sep, w.data(),
                       &lwork, &iw, &liwork, &info, 1, 1);
  if (info == 1) return -1;
  check_info(info, "trsen");
  return m;
}

}  // namespace vgcore::lapack

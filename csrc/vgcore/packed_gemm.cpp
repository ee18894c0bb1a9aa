// Packed-panel GEMM kernels (see packed_gemm.hpp).
//
// Register blocking: MR rows of A times one panel (two 64-byte vectors of B per k step) into
// 2 * MR vector accumulators; A entries are broadcast. AVX-512 has 32 vector registers:
// MR = 12 (24 accumulators, 2 for B). With AVX2 a 64-byte vector takes two registers of the
// 16: MR = 3. The panel (k * 128 bytes) stays in L1/L2 while every row block streams it.
#include "vgcore/packed_gemm.hpp"

#include <algorithm>
#include <cstring>

#include "vgcore/blas.hpp"

namespace vgcore {
namespace {

typedef float vfloat __attribute__((vector_size(64)));
typedef double vdouble __attribute__((vector_size(64)));
template <class T>
struct Vec;
template <>
struct Vec<float> {
  using type = vfloat;
};
template <>
struct Vec<double> {
  using type = vdouble;
};

// C[0:MR, 0:ncols] (+)= A[0:MR, 0:k] * panel. ncols < panel width only for the last panel.
template <class T, int MR>
__attribute__((always_inline)) inline void micro(std::size_t k, const T* a, std::size_t lda,
                                                 const T* bp, bool accumulate, T* c,
                                                 std::size_t ldc, std::size_t ncols) {
  using V = typename Vec<T>::type;
  constexpr std::size_t L = sizeof(V) / sizeof(T), P = 2 * L;
  V acc[MR][2];
  if (accumulate && ncols == P) {
    for (int i = 0; i < MR; ++i) {
      std::memcpy(&acc[i][0], c + i * ldc, sizeof(V));
      std::memcpy(&acc[i][1], c + i * ldc + L, sizeof(V));
    }
  } else if (accumulate) {
    T tmp[P];
    for (int i = 0; i < MR; ++i) {
      std::fill(tmp, tmp + P, T(0));
      std::copy(c + i * ldc, c + i * ldc + ncols, tmp);
      std::memcpy(&acc[i][0], tmp, sizeof(V));
      std::memcpy(&acc[i][1], tmp + L, sizeof(V));
    }
  } else {
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = V{};
  }
  for (std::size_t p = 0; p < k; ++p) {
    V b0, b1;
    std::memcpy(&b0, bp + p * P, sizeof(V));
    std::memcpy(&b1, bp + p * P + L, sizeof(V));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const T s = a[i * lda + p];
      acc[i][0] += s * b0;
      acc[i][1] += s * b1;
    }
  }
  if (ncols == P) {
    for (int i = 0; i < MR; ++i) {
      std::memcpy(c + i * ldc, &acc[i][0], sizeof(V));
      std::memcpy(c + i * ldc + L, &acc[i][1], sizeof(V));
    }
  } else {
    T tmp[P];
    for (int i = 0; i < MR; ++i) {
      std::memcpy(tmp, &acc[i][0], sizeof(V));
      std::memcpy(tmp + L, &acc[i][1], sizeof(V));
      std::copy(tmp, tmp + ncols, c + i * ldc);
    }
  }
}

// Rows [0, r) with r < MR, as one smaller block.
template <class T, int R>
__attribute__((always_inline)) inline void tail(std::size_t r, std::size_t k, const T* a,
                                                std::size_t lda, const T* bp, bool acc, T* c,
                                                std::size_t ldc, std::size_t ncols) {
  if constexpr (R > 0) {
    if (r == R) return micro<T, R>(k, a, lda, bp, acc, c, ldc, ncols);
    tail<T, R - 1>(r, k, a, lda, bp, acc, c, ldc, ncols);
  }
}

template <class T, int MR>
__attribute__((always_inline)) inline void drive(std::size_t m, const T* a, std::size_t lda,
                                                 const PackedMatrix<T>& b, bool acc, T* c,
                                                 std::size_t ldc) {
  constexpr std::size_t P = PackedMatrix<T>::kPanel;
  const std::size_t n = b.n(), k = b.k();
  for (std::size_t j0 = 0, jp = 0; j0 < n; j0 += P, ++jp) {
    const std::size_t ncols = std::min(P, n - j0);
    const T* bp = b.panel(jp);
    std::size_t i = 0;
    for (; i + MR <= m; i += MR) micro<T, MR>(k, a + i * lda, lda, bp, acc, c + i * ldc + j0, ldc, ncols);
    if (i < m) tail<T, MR - 1>(m - i, k, a + i * lda, lda, bp, acc, c + i * ldc + j0, ldc, ncols);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define VGCORE_PACKED_X86 1
template <class T>
__attribute__((target("avx512f,fma"))) void drive_avx512(std::size_t m, const T* a,
                                                          std::size_t lda,
                                                          const PackedMatrix<T>& b, bool acc,
                                                          T* c, std::size_t ldc) {
  drive<T, 12>(m, a, lda, b, acc, c, ldc);
}
template <class T>
__attribute__((target("avx2,fma"))) void drive_avx2(std::size_t m, const T* a, std::size_t lda,
                                                    const PackedMatrix<T>& b, bool acc, T* c,
                                                    std::size_t ldc) {
  drive<T, 3>(m, a, lda, b, acc, c, ldc);
}

enum class Isa { none, avx2, avx512 };
Isa detect() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
  return Isa::none;
}
Isa isa() {
  static const Isa v = detect();
  return v;
}
#endif

}  // namespace

bool packed_gemm_available() {
#ifdef VGCORE_PACKED_X86
  return isa() != Isa::none;
#else
  return false;
#endif
}

template <class T>
void PackedMatrix<T>::assign_rows(const T* b, std::size_t k, std::size_t n, std::size_t ldb) {
  k_ = k;
  n_ = n;
  src_ = b;
  ld_ = ldb;
  trans_ = false;
  if (!packed_gemm_available()) {
    data_.clear();
    return;
  }
  // Every value is written below: resize without clearing (no zero fill of reused storage).
  const std::size_t np = (n + kPanel - 1) / kPanel;
  data_.resize(np * k * kPanel);
  for (std::size_t j = 0; j < np; ++j) {
    const std::size_t j0 = j * kPanel, w = std::min(kPanel, n - j0);
    T* dst = data_.data() + j * k * kPanel;
    for (std::size_t p = 0; p < k; ++p) {
      std::copy(b + p * ldb + j0, b + p * ldb + j0 + w, dst + p * kPanel);
      std::fill(dst + p * kPanel + w, dst + (p + 1) * kPanel, T(0));
    }
  }
}

template <class T>
void PackedMatrix<T>::assign_transposed(const T* w, std::size_t n, std::size_t k, std::size_t ldw) {
  k_ = k;
  n_ = n;
  src_ = w;
  ld_ = ldw;
  trans_ = true;
  if (!packed_gemm_available()) {
    data_.clear();
    return;
  }
  const std::size_t np = (n + kPanel - 1) / kPanel;
  data_.resize(np * k * kPanel);
  for (std::size_t j = 0; j < np; ++j) {
    const std::size_t j0 = j * kPanel, wd = std::min(kPanel, n - j0);
    T* dst = data_.data() + j * k * kPanel;
    if (wd < kPanel) std::fill(dst, dst + k * kPanel, T(0));
    for (std::size_t q = 0; q < wd; ++q) {
      const T* row = w + (j0 + q) * ldw;
      for (std::size_t p = 0; p < k; ++p) dst[p * kPanel + q] = row[p];
    }
  }
}

template <class T>
PackedMatrix<T> PackedMatrix<T>::rows(const T* b, std::size_t k, std::size_t n, std::size_t ldb) {
  PackedMatrix pm;
  pm.assign_rows(b, k, n, ldb);
  return pm;
}

template <class T>
PackedMatrix<T> PackedMatrix<T>::transposed(const T* w, std::size_t n, std::size_t k,
                                            std::size_t ldw) {
  PackedMatrix pm;
  pm.assign_transposed(w, n, k, ldw);
  return pm;
}

template <class T>
void gemm_packed(std::size_t m, const T* a, std::size_t lda, const PackedMatrix<T>& b, T beta,
                 T* c, std::size_t ldc) {
  if (m == 0 || b.n() == 0) return;
  const bool acc = beta != T(0);
#ifdef VGCORE_PACKED_X86
  if (b.packed() && b.k() > 0) {
    if (isa() == Isa::avx512) return drive_avx512<T>(m, a, lda, b, acc, c, ldc);
    if (isa() == Isa::avx2) return drive_avx2<T>(m, a, lda, b, acc, c, ldc);
  }
#endif
  blas::gemm(blas::Op::N, b.source_transposed() ? blas::Op::T : blas::Op::N, m, b.n(), b.k(),
             T(1), a, lda, b.source(), b.source_ld(), acc ? T(1) : T(0), c, ldc);
}

template class PackedMatrix<float>;
template class PackedMatrix<double>;
template void gemm_packed<float>(std::size_t, const float*, std::size_t,
                                 const PackedMatrix<float>&, float, float*, std::size_t);
template void gemm_packed<double>(std::size_t, const double*, std::size_t,
                                  const PackedMatrix<double>&, double, double*, std::size_t);

}  // namespace vgcore

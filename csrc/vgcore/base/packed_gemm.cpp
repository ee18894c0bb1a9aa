// Packed-panel GEMM kernels (see packed_gemm.hpp).
//
// Register blocking: MR rows of A times a strip of NV vectors of one panel (128 bytes of B per k
// step) into MR x NV vector accumulators; A entries are broadcast. AVX-512 (32 registers of 64
// bytes): the whole panel, MR = 12, 24 accumulators and 2 for B. AVX2 (16 registers of 32 bytes):
// half panels, MR = 6, 12 accumulators, 2 for B and a broadcast. The panel (k * 128 bytes) stays
// in L1/L2 while every row block streams it.
#include "vgcore/base/packed_gemm.hpp"

#include <algorithm>
#include <cstring>

#include "vgcore/base/blas.hpp"

namespace vgcore {
namespace {

// Vectors of W bytes: 64 (AVX-512, one register) or 32 (AVX2). Each ISA driver uses the width
// its registers have: wider GCC vectors are lowered element by element on AVX2 (a scalar
// broadcast becomes a dozen stack stores per multiply, ~50x slower than BLAS).
template <class T, int W>
struct Vec {
  typedef T type __attribute__((vector_size(W)));
};

// C[0:MR, 0:ncols] (+)= A[0:MR, 0:k] * B[0:k, 0:ncols] for NV vectors of W bytes of columns
// (CW = NV * W / sizeof T) of a panel whose rows are P values apart. ncols < CW only at the end.
template <class T, int W, int MR, int NV>
__attribute__((always_inline)) inline void micro(std::size_t k, const T* a, std::size_t lda,
                                                 const T* bp, bool accumulate, T* c,
                                                 std::size_t ldc, std::size_t ncols) {
  using V = typename Vec<T, W>::type;
  constexpr std::size_t L = sizeof(V) / sizeof(T), P = PackedMatrix<T>::kPanel, CW = NV * L;
  V acc[MR][NV];
  if (accumulate && ncols == CW) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) std::memcpy(&acc[i][v], c + i * ldc + v * L, sizeof(V));
  } else if (accumulate) {
    T tmp[CW];
    for (int i = 0; i < MR; ++i) {
      std::fill(tmp, tmp + CW, T(0));
      std::copy(c + i * ldc, c + i * ldc + ncols, tmp);
      for (int v = 0; v < NV; ++v) std::memcpy(&acc[i][v], tmp + v * L, sizeof(V));
    }
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = V{};
  }
  for (std::size_t p = 0; p < k; ++p) {
    V b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) std::memcpy(&b[v], bp + p * P + v * L, sizeof(V));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const T s = a[i * lda + p];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] += s * b[v];
    }
  }
  if (ncols == CW) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) std::memcpy(c + i * ldc + v * L, &acc[i][v], sizeof(V));
  } else {
    T tmp[CW];
    for (int i = 0; i < MR; ++i) {
      for (int v = 0; v < NV; ++v) std::memcpy(tmp + v * L, &acc[i][v], sizeof(V));
      std::copy(tmp, tmp + ncols, c + i * ldc);
    }
  }
}

// Rows [0, r) with r < MR, as one smaller block.
template <class T, int W, int R, int NV>
__attribute__((always_inline)) inline void tail(std::size_t r, std::size_t k, const T* a,
                                                std::size_t lda, const T* bp, bool acc, T* c,
                                                std::size_t ldc, std::size_t ncols) {
  if constexpr (R > 0) {
    if (r == R) return micro<T, W, R, NV>(k, a, lda, bp, acc, c, ldc, ncols);
    tail<T, W, R - 1, NV>(r, k, a, lda, bp, acc, c, ldc, ncols);
  }
}

// Each panel in column strips of NV vectors (the whole panel, or halves on AVX2, whose 16
// registers hold 6 rows x 2 vectors of accumulators, 2 of B and a broadcast).
template <class T, int W, int MR, int NV>
__attribute__((always_inline)) inline void drive(std::size_t m, const T* a, std::size_t lda,
                                                 const PackedMatrix<T>& b, bool acc, T* c,
                                                 std::size_t ldc) {
  constexpr std::size_t P = PackedMatrix<T>::kPanel, CW = NV * (W / sizeof(T));
  static_assert(P % CW == 0, "a strip divides the panel");
  const std::size_t n = b.n(), k = b.k();
  for (std::size_t j0 = 0, jp = 0; j0 < n; j0 += P, ++jp) {
    const std::size_t ncols = std::min(P, n - j0);
    for (std::size_t s0 = 0; s0 < ncols; s0 += CW) {
      const std::size_t w = std::min(CW, ncols - s0);
      const T* bp = b.panel(jp) + s0;
      T* cs = c + j0 + s0;
      std::size_t i = 0;
      for (; i + MR <= m; i += MR)
        micro<T, W, MR, NV>(k, a + i * lda, lda, bp, acc, cs + i * ldc, ldc, w);
      if (i < m) tail<T, W, MR - 1, NV>(m - i, k, a + i * lda, lda, bp, acc, cs + i * ldc, ldc, w);
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define VGCORE_PACKED_X86 1
template <class T>
__attribute__((target("avx512f,fma"))) void drive_avx512(std::size_t m, const T* a, std::size_t lda,
                                                         const PackedMatrix<T>& b, bool acc, T* c,
                                                         std::size_t ldc) {
  drive<T, 64, 12, 2>(m, a, lda, b, acc, c, ldc);
}
template <class T>
__attribute__((target("avx2,fma"))) void drive_avx2(std::size_t m, const T* a, std::size_t lda,
                                                    const PackedMatrix<T>& b, bool acc, T* c,
                                                    std::size_t ldc) {
  drive<T, 32, 6, 2>(m, a, lda, b, acc, c, ldc);
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
void gemm_packed(std::size_t m, const T* a, std::size_t lda, const PackedMatrix<T>& b, T beta, T* c,
                 std::size_t ldc) {
  if (m == 0 || b.n() == 0) return;
  const bool acc = beta != T(0);
#ifdef VGCORE_PACKED_X86
  if (b.packed() && b.k() > 0) {
    if (isa() == Isa::avx512) return drive_avx512<T>(m, a, lda, b, acc, c, ldc);
    if (isa() == Isa::avx2) return drive_avx2<T>(m, a, lda, b, acc, c, ldc);
  }
#endif
  blas::gemm(blas::Op::N, b.source_transposed() ? blas::Op::T : blas::Op::N, m, b.n(), b.k(), T(1),
             a, lda, b.source(), b.source_ld(), acc ? T(1) : T(0), c, ldc);
}

template class PackedMatrix<float>;
template class PackedMatrix<double>;
template void gemm_packed<float>(std::size_t, const float*, std::size_t, const PackedMatrix<float>&,
                                 float, float*, std::size_t);
template void gemm_packed<double>(std::size_t, const double*, std::size_t,
                                  const PackedMatrix<double>&, double, double*, std::size_t);

}  // namespace vgcore

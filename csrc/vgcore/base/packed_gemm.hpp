// GEMM against a weight matrix packed once and reused for many small products.
//
// A recurrent step multiplies a few rows (a batch chunk, or the state and its tangent vectors)
// by the same W_hh thousands of times. A general BLAS call repacks W on every call, which for
// 16-33 rows costs as much as the multiplication itself (OpenBLAS reaches 90-115 GFLOP/s on one
// core there). Packing W once per analysis into column panels, contiguous in the contraction
// index, lets a register-blocked kernel stream it: 160-185 GFLOP/s on the same core (AVX-512).
//
// The kernel is compiled for AVX-512 and for AVX2+FMA and picked at run time; elsewhere the
// product falls back to BLAS on the unpacked matrix.
#pragma once

#include <cstddef>
#include <vector>

#include "vgcore/base/workspace.hpp"

namespace vgcore {

// B (k x n) in panels of kPanel columns: panel j holds B[0:k, j*kPanel : (j+1)*kPanel] row by
// row (k * kPanel values), the last one zero-padded.
template <class T>
class PackedMatrix {
 public:
  static constexpr std::size_t kPanel = 128 / sizeof(T);  // two 64-byte vectors

  PackedMatrix() = default;
  // B = the row-major k x n matrix at b (row stride ldb).
  static PackedMatrix rows(const T* b, std::size_t k, std::size_t n, std::size_t ldb);
  // B = W^T for the row-major n x k matrix at w (row stride ldw).
  static PackedMatrix transposed(const T* w, std::size_t n, std::size_t k, std::size_t ldw);

  // The same, reusing this object's storage (no allocation once it is large enough).
  void assign_rows(const T* b, std::size_t k, std::size_t n, std::size_t ldb);
  void assign_transposed(const T* w, std::size_t n, std::size_t k, std::size_t ldw);

  std::size_t k() const { return k_; }
  std::size_t n() const { return n_; }
  bool packed() const { return !data_.empty(); }
  const T* panel(std::size_t j) const { return data_.data() + j * k_ * kPanel; }

  // Fallback (no AVX2): the unpacked operand for BLAS.
  const T* source() const { return src_; }
  std::size_t source_ld() const { return ld_; }
  bool source_transposed() const { return trans_; }

 private:
  std::size_t k_ = 0, n_ = 0, ld_ = 0;
  const T* src_ = nullptr;
  bool trans_ = false;
  std::vector<T, AlignedAllocator<T>> data_;  // 2 MiB pages when large (workspace.hpp)
};

// C (m x n, row stride ldc) = beta * C + A (m x k, row stride lda) * B, beta 0 or 1.
template <class T>
void gemm_packed(std::size_t m, const T* a, std::size_t lda, const PackedMatrix<T>& b, T beta, T* c,
                 std::size_t ldc);

// Whether the packed kernels run on this CPU (else gemm_packed calls BLAS).
bool packed_gemm_available();

extern template class PackedMatrix<float>;
extern template class PackedMatrix<double>;

}  // namespace vgcore

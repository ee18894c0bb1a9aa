// Spectral radius and largest singular value of the per-step state Jacobians
// J_{s,b} = d h_{s+1} / d h_s of sample b at step (layer) s.
//
// "exact" materialises J from its structure (the JVP of the identity needs only W^T and the
// cached gate values, no GEMM) and calls LAPACK: geev for eigenvalues, gesdd for singular
// values. The matrix-free methods use only JVPs (J v) and VJPs (J^T w):
//   arnoldi  Krylov-Schur restarted Arnoldi (Stewart 2001) for the eigenvalue of largest
//            modulus, and the same on J^T J for sigma_max^2;
//   power    block power iteration (subspace iteration with Rayleigh-Ritz on a block of 4,
//            which also converges for complex-conjugate dominant pairs).
// Both report the operator applications used and the relative residual of the final Ritz
// pair (||A y - lambda y|| / (|lambda| ||y||), A = J or J^T J).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "vgcore/control.hpp"
#include "vgcore/tangent.hpp"

namespace vgcore {

enum class SpectrumMethod : int { exact = 0, arnoldi, power };

struct SpectrumOptions {
  SpectrumMethod method = SpectrumMethod::exact;
  double tol = 1e-10;           // relative residual at which a matrix-free solve stops
  std::size_t max_iter = 5000;  // operator applications per quantity (matrix-free)
  std::size_t ncv = 40;         // Krylov subspace size (arnoldi)
  std::size_t block = 4;        // block size (power)
  std::uint64_t seed = 0;       // start vectors
  int num_threads = 0;
};

// Per (selected step, sample), row-major (n_steps x B).
struct SpectrumResult {
  std::vector<double> radius, sigma;                // NaN radius for non-square layers
  std::vector<double> radius_residual, sigma_residual;  // 0 for exact
  std::vector<std::int64_t> radius_iterations, sigma_iterations;
  std::vector<std::uint8_t> converged;
};

// x: recurrent (steps, B, input_size); dense: (B, in_0) with steps = layers. h0: recurrent
// initial states (B, D) or null. which: selected steps (ascending, each < steps).
template <class T>
SpectrumResult jacobian_spectrum(const TangentModel<T>& m, const T* x, std::size_t steps,
                                 std::size_t batch, const T* h0,
                                 const std::vector<std::size_t>& which,
                                 const SpectrumOptions& opt, Control& ctl);

// Eigenvalue of largest modulus of a real operator given as y = A x (rows of length n), by
// Krylov-Schur. Exposed for tests and reuse. Returns |lambda|; iterations and residual out.
struct KrylovResult {
  double value = 0;       // |lambda|
  double re = 0, im = 0;  // lambda
  double residual = 0;    // relative
  std::int64_t matvecs = 0;
  bool converged = false;
};

}  // namespace vgcore

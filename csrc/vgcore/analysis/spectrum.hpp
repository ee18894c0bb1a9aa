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
//
// Scaling: the operators are applied to inputs scaled by powers of two (exact) so that no
// intermediate overflows or underflows the dtype (J^T J is applied as J^T (2^-e J v)); values
// are returned as logs, so sigma_max^2 beyond the range of the dtype (or of double) is fine.
// Exact Jacobians are scaled to a largest entry in [1, 2) before LAPACK, which never sees a
// non-finite matrix: a Jacobian that is not finite even then is a NonFiniteError.
//
// Trust: a small residual bounds the eigenvalue error only for normal matrices. For a
// non-normal J the first-order error of a Ritz value is cond(lambda) * ||E|| (E the backward
// error: the residual, at least eps * ||J||), and a Ritz value from a Jordan-like
// pseudospectrum can be far from any eigenvalue with a tiny residual. The solvers estimate
// cond(lambda) from the left and right eigenvectors of the projected matrix (a lower bound of
// the true one) and report error = cond * max(residual, eps ||J||) / |lambda|; a value is
// reliable when that is at most tol (sigma_max: J^T J is symmetric, cond = 1). Unreliable
// matrix-free values are recomputed exactly when the dimension is at most fallback_max_dim.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "vgcore/base/control.hpp"
#include "vgcore/model/model.hpp"

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
  std::size_t fallback_max_dim = 0;  // exact recomputation of unreliable matrix-free values
};

// Per (selected step, sample), row-major (n_steps x B).
struct SpectrumResult {
  std::vector<double> radius, sigma;                    // NaN radius for non-square layers
  std::vector<double> log_radius, log_sigma;            // natural logs, finite beyond double range
  std::vector<double> radius_residual, sigma_residual;  // 0 for exact
  std::vector<double> radius_condition;                 // Ritz value condition estimate; NaN exact
  std::vector<double> radius_error, sigma_error;        // estimated relative error; NaN exact
  std::vector<std::int64_t> radius_iterations, sigma_iterations;
  std::vector<std::uint8_t> converged;                        // every matrix-free residual <= tol
  std::vector<std::uint8_t> reliable;                         // both values trusted to about tol
  std::vector<std::uint8_t> radius_fallback, sigma_fallback;  // recomputed exactly
};

// x: recurrent (steps, B, input_size); dense: (B, in_0) with steps = layers. h0: recurrent
// initial states (B, D) or null. which: selected steps (ascending, each < steps).
template <class T>
SpectrumResult jacobian_spectrum(const Model<T>& m, const T* x, std::size_t steps,
                                 std::size_t batch, const T* h0,
                                 const std::vector<std::size_t>& which, const SpectrumOptions& opt,
                                 Control& ctl);

// Eigenvalue of largest modulus of a real operator given as y = A x (rows of length n), by
// Krylov-Schur. Exposed for tests and reuse. Returns |lambda|; iterations and residual out.
struct KrylovResult {
  double value = 0;       // |lambda|
  double re = 0, im = 0;  // lambda
  double residual = 0;    // relative
  double condition = 1;   // of lambda in the projected matrix (a lower bound of cond in A)
  double error = 0;       // condition * max(residual, eps ||A||) / |lambda|
  std::int64_t matvecs = 0;
  bool converged = false;  // residual <= tol
};

}  // namespace vgcore

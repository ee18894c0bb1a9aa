// Singular values of the input-output Jacobian M = J_S ... J_1 of a whole dense stack or
// sequence (d h_S / d h_0, per sample), in log space, so that products far outside
// floating-point range (depth 10,000) keep every singular value.
//
// Method: a graded "UDT" decomposition M_s = U_s diag(e^{d_s}) T_s maintained step by step
// (the stabilised products of determinant quantum Monte Carlo), with d in float64 logs:
//   C = J_{s+1} U_s                           (the JVP kernel, one GEMM for all samples)
//   P: order C's columns by descending log||c_j|| + d_j  ("pre-pivoting")
//   C P = Q R                                 (Householder QR, no pivoting)
//   d_{s+1} = log|diag R| + P^T d_s,  U_{s+1} = Q,
//   T_{s+1} = (|diag R|^{-1} R (P^T e^{d_s} P) e^{-(P^T d_s)}) P^T T_s
// Householder QR is backward stable column by column, hence invariant under the column scaling
// diag(e^{d}) that cannot be formed in floating point: factoring C P unscaled gives the Q and
// the R of C diag(e^d) P exactly. The ordering makes R graded, so T stays well conditioned.
// Finally the singular values of diag(e^d) T are those of M; a one-sided Jacobi SVD of the
// column-graded matrix T^T diag(e^d) is done with the scales kept apart, which is accurate
// to high relative precision for each singular value whatever the grading
// (Demmel & Veselic 1992). The ordering follows Bai, Lee, Li & Xu (2011), "Stable solutions
// of linear systems involving long chain of matrix multiplications".
#pragma once

#include <cstddef>
#include <vector>

#include "vgcore/base/control.hpp"
#include "vgcore/model/model.hpp"

namespace vgcore {

struct SingularOptions {
  int num_threads = 0;
};

struct SingularResult {
  std::size_t rank = 0;              // r = min over the widths (dense) or the state dimension
  std::vector<double> log_singular;  // (B, r) natural logs, descending (-inf for zeros)
  std::vector<int> jacobi_sweeps;    // (B,) sweeps of the final Jacobi SVD
};

// x: recurrent (steps, B, input_size); dense: (B, in_0), the input, with steps = layers.
// h0: recurrent initial states (B, D) or null (zeros); ignored for dense stacks.
template <class T>
SingularResult jacobian_log_singular_values(const Model<T>& m, const T* x, std::size_t steps,
                                            std::size_t batch, const T* h0,
                                            const SingularOptions& opt, Control& ctl);

// One-sided Jacobi on G = B diag(e^d): B is n x r column-major (columns contiguous, ld = n),
// d the log scales. On return d_j + log||b_j|| are the log singular values (unsorted). Returns
// the number of sweeps. Exposed for tests.
int graded_jacobi(double* B, std::size_t n, std::size_t r, double* d);

}  // namespace vgcore

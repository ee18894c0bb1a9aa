// Models as discrete-time dynamical systems h_{s+1} = F_s(h_s) on per-sample states, with the
// forward step, Jacobian-vector products (JVP) and vector-Jacobian products (VJP) of F_s on
// blocks of row vectors. Shared by the Lyapunov, singular-value and spectrum kernels.
//
// A dense stack is a system in depth: step s is layer s + 1 and the state h_s has the width of
// layer s's output (h_0 = x). A recurrent cell is a system in time driven by x_t: the state is
// h_t (N) or, for an LSTM, (h_t, c_t) stored as one row of 2N values. A unidirectional stack of
// L recurrent layers (torch num_layers) is one system in time whose state is the layers' states
// side by side, [h^0, (c^0), h^1, (c^1), ...]; layer l > 0 reads the new h^{l-1} of the same
// step, so its Jacobian is block lower-triangular and a JVP / VJP runs layer by layer (one GEMM
// per weight per layer on all rows).
//
// Vectors are rows (row-major). Tangent blocks are (k x D) row blocks, one per sample, so the
// linear part of a JVP for every sample and every tangent at once is a single GEMM
// U = V W^T, followed by elementwise work with that sample's cached forward quantities. The
// caller usually stacks the state rows on top of the tangent rows ("[h; V]") so that the
// forward step and the JVP share that GEMM. No diag(...) matrix is ever formed.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "vgcore/base/activations.hpp"
#include "vgcore/model/dense_stack.hpp"
#include "vgcore/base/packed_gemm.hpp"
#include "vgcore/model/recurrent_stack.hpp"

namespace vgcore {

// A state (or tangent) became NaN/Inf. `step` is 1-based: the step (layer / time step) whose
// output first held the non-finite value.
struct NonFiniteError : std::runtime_error {
  NonFiniteError(std::size_t step_, const std::string& msg)
      : std::runtime_error(msg), step(step_) {}
  std::size_t step;
};

template <class T>
class TangentModel {
 public:
  // Dense stack (BatchNorm is rejected: it couples the batch, so there is no per-sample map).
  static TangentModel dense(std::vector<DenseLayer<T>> layers);
  static TangentModel recurrent(const RecurrentWeights<T>& w);
  // Unidirectional stack, PyTorch's layer order (all the same kind and hidden size; layer l > 0
  // has input size N). One layer: exactly recurrent(layers[0]).
  static TangentModel stack(const std::vector<RecurrentWeights<T>>& layers);

  bool is_dense() const { return dense_; }
  // A recurrent stack of two or more layers (the single-layer code paths are not used).
  bool stacked() const { return !stack_.empty(); }
  CellKind cell() const { return w_.kind; }
  std::size_t n_layers() const { return layers_.size(); }
  const std::vector<DenseLayer<T>>& layers() const { return layers_; }
  const RecurrentWeights<T>& weights() const { return w_; }  // a stack's layer 0
  std::size_t hidden() const { return w_.hidden; }
  std::size_t input_size() const { return w_.input_size; }

  // State dimension entering / leaving step s (for a recurrent cell: N, or 2N for an LSTM).
  std::size_t in_dim(std::size_t s) const;
  std::size_t out_dim(std::size_t s) const;
  // Columns of U = X W^T (recurrent: G*N; dense: out, twice that for a highway layer; a stack of
  // L layers: (L + 2) G*N, each layer's W_hh product and two blocks of scratch).
  std::size_t gemm_cols(std::size_t s) const;
  // Per-sample cache of the forward quantities the JVP / VJP of step s need.
  std::size_t cache_size(std::size_t s) const;
  // Columns of an input projection row (recurrent: G*N; dense: 0).
  std::size_t proj_cols() const { return dense_ ? 0 : cell_gates(w_.kind) * w_.hidden; }

  // Recurrent only: P (rows x G*N) = x W_ih^T + the biases that do not sit inside a gate
  // product (b_ih + b_hh; GRU: b_ih only). A stack: layer 0's (the other layers' input
  // projections are part of the step).
  void project_inputs(const T* x, std::size_t rows, T* P) const;

  // U (rows x gemm_cols, row stride ldu) = X[:, :n] W^T for the rows of X (row stride ldx);
  // n = N for recurrent cells (the h part of an LSTM row), in_dim for dense layers; a stack:
  // each layer's h^l W_hh_l^T in its block.
  void gemm_rows(std::size_t s, const T* X, std::size_t ldx, std::size_t rows, T* U,
                 std::size_t ldu) const;

  // Finish the forward step of nb samples: U their gemm_rows, proj their input projections
  // (null for dense), X their states (row stride ldx). Writes the next states into Y (row stride
  // ldy; Y must not overlap X) and the caches (nb x cache_size) into cache. A stack adds the
  // inter-layer input products into U (its scratch columns, and its W_hh blocks).
  void state_update(std::size_t s, const T* proj, T* U, std::size_t ldu, const T* X,
                    std::size_t ldx, T* Y, std::size_t ldy, T* cache, std::size_t nb) const;

  // k tangent rows of one sample: Vout = J_s Vin, given its cache and U = gemm_rows(Vin).
  // Vout must not overlap Vin or U. U is overwritten for a stack, as in state_update.
  void tangent_update(std::size_t s, const T* cache, T* U, std::size_t ldu, const T* Vin,
                      std::size_t ldv, T* Vout, std::size_t ldo, std::size_t k) const;

  // A stack's step, layer by layer, on ns state rows (writing their caches) followed by nt
  // samples' k tangent rows each (reading cache_r; it may be cache_w): U holds gemm_rows of all
  // those rows, and each inter-layer product is one GEMM over all of them.
  void stack_step(const T* proj, T* U, std::size_t ldu, const T* X, std::size_t ldx, T* Y,
                  std::size_t ldy, std::size_t ns, T* cache_w, std::size_t nt, std::size_t k,
                  const T* cache_r) const;

  // JVP including the GEMM: Vout (k x out_dim) = J_s Vin (k x in_dim). U: k * gemm_cols scratch.
  void jvp(std::size_t s, const T* cache, const T* Vin, T* Vout, std::size_t k, T* U) const;
  // VJP: Wout (k x in_dim) = J_s^T Win (k x out_dim). G: k * gemm_cols scratch.
  void vjp(std::size_t s, const T* cache, const T* Win, T* Wout, std::size_t k, T* G) const;
  // The Jacobian J_s itself, column-major (out_dim x in_dim, leading dimension out_dim),
  // without a GEMM (the JVP of the identity needs only W^T). U: in_dim * gemm_cols scratch.
  void jacobian(std::size_t s, const T* cache, T* J, T* U) const;

 private:
  bool dense_ = false;
  std::vector<DenseLayer<T>> layers_;
  RecurrentWeights<T> w_;
  Activation act_;  // simple RNN nonlinearity
  // W_hh packed once (packed_gemm.hpp): X W_hh^T for JVPs and the forward step, G W_hh for VJPs.
  PackedMatrix<T> whh_t_, whh_;
  // A stack (two or more layers; empty otherwise): the layers, W_hh packed both ways, and for
  // l > 0 W_ih packed both ways and the input projection's biases (as project_inputs).
  struct StackLayer {
    PackedMatrix<T> whh_t, whh, wih_t, wih;
    std::vector<T> pbias;
  };
  std::vector<RecurrentWeights<T>> stack_;
  std::vector<StackLayer> sl_;
  std::size_t layer_state() const { return cell_state_parts(w_.kind) * w_.hidden; }
  std::size_t layer_cache() const;
  void stack_vjp(const T* cache, const T* Win, T* Wout, std::size_t k, T* G) const;
};

// One step for nb samples that each carry k tangent rows. X holds [nb state rows; nb*k tangent
// rows, sample-major] with row stride in_dim(s); Y receives the same layout with row stride
// out_dim(s) (Y must not overlap X). One GEMM covers states and tangents.
template <class T>
struct StepScratch {
  std::vector<T> U, cache;
};

template <class T>
void advance(const TangentModel<T>& m, std::size_t s, const T* proj, const T* X, T* Y,
             std::size_t nb, std::size_t k, StepScratch<T>& ws);

// True when every value is finite (a cheap vectorised check: the sum of 0 * x is 0 or NaN).
template <class T>
bool all_finite(const T* x, std::size_t n);

extern template class TangentModel<float>;
extern template class TangentModel<double>;

}  // namespace vgcore

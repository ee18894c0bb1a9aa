// Models as discrete-time dynamical systems h_{s+1} = F_s(h_s) on per-sample states, built from
// one list of layer kinds, with the forward step, Jacobian-vector products (JVP) and
// vector-Jacobian products (VJP) of F_s on blocks of row vectors. Shared by the Lyapunov,
// singular-value and spectrum kernels.
//
// A model is a list of layers and an axis:
//  * depth (a dense stack): step s is layer s, and the state h_s has the width of layer s's
//    input (h_0 = x);
//  * time (a recurrent model driven by x_t): every step runs all layers in order, layer l > 0
//    reading the new output of layer l - 1 of the same step; the state is the layers' states
//    side by side, [h^0, (c^0), h^1, (c^1), ...] (torch num_layers). The Jacobian of a step is
//    block lower-triangular and a JVP / VJP runs layer by layer (one GEMM per weight per layer
//    on all rows).
// The model dispatches on the layer kind (one std::visit) once per layer per step; each layer
// op runs its row loops, which call the formulas of layers/.
//
// Vectors are rows (row-major). Tangent blocks are (k x D) row blocks, one per sample, so the
// linear part of a JVP for every sample and every tangent at once is a single GEMM
// U = V W^T, followed by elementwise work with that sample's cached forward quantities. The
// caller usually stacks the state rows on top of the tangent rows ("[h; V]") so that the
// forward step and the JVP share that GEMM. No diag(...) matrix is ever formed.
//
// Per-sample cache layouts (N = hidden size, n = layer output width):
//   RNN   [phi'(z)]                                   N
//   LSTM  [i, f, g, o, c_prev, tanh(c')]               6N
//   GRU   [r, z, n, q_n = W_hn h + b_hn, h_prev]        5N
//   (gates and tanh values encoded, gates.hpp: accurate derivatives in saturation)
//   dense [phi'(z')] + highway [t (encoded), a - h] + LayerNorm [xhat, 1/std]
//   SSM   none (its Jacobian is the constant diag(a))
//   selective SSM [a, h, Delta, sigmoid(.), xc, silu'(pre), silu(z), B, C]   (selective_ssm.hpp)
//   a step of several layers: its layers' caches side by side
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "vgcore/base/activations.hpp"
#include "vgcore/base/packed_gemm.hpp"
#include "vgcore/layers/gru.hpp"
#include "vgcore/layers/lstm.hpp"
#include "vgcore/layers/rnn.hpp"
#include "vgcore/layers/selective_ssm.hpp"
#include "vgcore/layers/ssm.hpp"
#include "vgcore/model/dense_stack.hpp"
#include "vgcore/model/recurrent_stack.hpp"

namespace vgcore {

// A state (or tangent) became NaN/Inf. `step` is 1-based: the step (layer / time step) whose
// output first held the non-finite value.
struct NonFiniteError : std::runtime_error {
  NonFiniteError(std::size_t step_, const std::string& msg)
      : std::runtime_error(msg), step(step_) {}
  std::size_t step;
};

enum class Axis : int { depth = 0, time };

// One layer's part of a step, its pointers already offset to the layer's blocks: ns state rows
// (writing their caches, row stride ldc) followed by nt samples' k tangent rows each (reading
// cache_r, which may be cache_w).
template <class T>
struct LayerRows {
  const T* proj = nullptr;  // the state rows' input projection (time axis, layer 0), stride ldp
  std::size_t ldp = 0;
  T* U = nullptr;  // the layer's gemm_rows block of every row (row stride ldu)
  T* A = nullptr;  // scratch columns of U (a GRU's input projection)
  std::size_t ldu = 0;
  const T* X = nullptr;  // the layer's block of the rows entering the step
  std::size_t ldx = 0;
  T* Y = nullptr;  // the layer's block of the rows leaving it
  std::size_t ldy = 0;
  const T* below = nullptr;  // the new output of the layer below (time axis, l > 0), stride ldy
  // The tangent rows' input-projection tangents (stride ldp; a state-space layer inside a stack,
  // whose input depends on the state), else null: tangent rows have no input.
  const T* tproj = nullptr;
  std::size_t ns = 0, nt = 0, k = 0;
  T* cache_w = nullptr;
  const T* cache_r = nullptr;
  std::size_t ldc = 0;
};

// One layer's part of a VJP on k rows: w (stride ldw) the cotangent of its new h, wstate
// (stride lds) the cotangent of its whole new state (an LSTM's c part follows h); writes G (the
// cotangent of the gemm_rows block, stride ldg), gin (the cotangent of a GRU's input projection,
// when it reads a layer below; else null) and the cotangent of its state entering the step (o,
// stride ldo).
template <class T>
struct LayerCotangent {
  const T* cache = nullptr;
  const T* w = nullptr;
  std::size_t ldw = 0;
  const T* wstate = nullptr;
  std::size_t lds = 0;
  T* G = nullptr;
  T* gin = nullptr;
  std::size_t ldg = 0;
  T* o = nullptr;
  std::size_t ldo = 0;
  std::size_t k = 0;
  // The total cotangent of the new state (Model::vjp's Wtotal), written by an op whose step
  // reads its own new state (a state-space stack's blocks read the blocks below); null: none.
  T* total = nullptr;
  std::size_t ldt = 0;
};

// The Jacobian of an op's step for one sample (column-major, out_dim x in_dim) as the JVP of
// the identity: its in_dim rows stepped as tangent rows against the sample's cache. U: in_dim
// rows of gemm_cols scratch, holding the identity's gemm_rows where the op's step reads them.
template <class T, class Op>
void jacobian_as_jvp(const Op& op, const T* cache, T* J, T* U) {
  const std::size_t din = op.in_dim();
  std::vector<T> eye(din * din, T(0));
  for (std::size_t j = 0; j < din; ++j) eye[j * din + j] = T(1);
  LayerRows<T> r;
  r.U = U;
  r.ldu = op.gemm_cols();
  r.X = eye.data();
  r.ldx = din;
  r.Y = J;
  r.ldy = op.out_dim();
  r.nt = 1;
  r.k = din;
  r.cache_r = cache;
  r.ldc = op.cache_size();
  op.step(r);
}

// A dense layer (dense_stack.hpp): plain, residual or highway block, optional LayerNorm or
// eval-mode BatchNorm. Its state is its output.
template <class T>
class DenseOp {
 public:
  explicit DenseOp(const DenseLayer<T>& ly) : ly_(ly) {}
  const DenseLayer<T>& layer() const { return ly_; }
  std::size_t in_dim() const { return ly_.in; }
  std::size_t out_dim() const { return ly_.out; }
  std::size_t gemm_cols() const { return ly_.out * (ly_.block == DenseBlock::highway ? 2 : 1); }
  std::size_t cache_size() const;
  void gemm_rows(std::size_t rows, const T* X, std::size_t ldx, T* U, std::size_t ldu) const;
  void step(const LayerRows<T>& r) const;
  void vjp(const LayerCotangent<T>& c) const;
  // J (column-major out x in) without a GEMM: the identity's gemm_rows are W^T.
  void jacobian(const T* cache, T* J, T* U) const;

 private:
  DenseLayer<T> ly_;
};

using layers::GruCell;
using layers::LstmCell;
using layers::RnnCell;

// A recurrent layer of PyTorch's layout. W_hh is packed once both ways (packed_gemm.hpp):
// X W_hh^T for JVPs and the forward step, G W_hh for VJPs. A layer that reads the layer below
// (l > 0 of a stack) packs W_ih both ways too and keeps its input projection's biases.
template <class T, class Cell>
class RecurrentOp {
 public:
  RecurrentOp(const RecurrentWeights<T>& w, bool reads_below);
  const RecurrentWeights<T>& weights() const { return w_; }
  std::size_t state_dim() const { return Cell::parts * w_.hidden; }
  std::size_t in_dim() const { return state_dim(); }
  std::size_t out_dim() const { return state_dim(); }
  std::size_t gemm_cols() const { return Cell::gates * w_.hidden; }
  std::size_t cache_size() const { return Cell::cache_units * w_.hidden; }
  // P (rows x G*N) = x W_ih^T + the biases that do not sit inside a gate product.
  void project_inputs(const T* x, std::size_t rows, T* P) const;
  void gemm_rows(std::size_t rows, const T* X, std::size_t ldx, T* U, std::size_t ldu) const;
  void step(const LayerRows<T>& r) const;
  void vjp(const LayerCotangent<T>& c) const;
  // acc (k rows, stride lda) += the cotangent this layer's input projection sends to the layer
  // below: (gin for a GRU, else G) W_ih.
  void input_vjp(std::size_t k, const T* G, const T* gin, std::size_t ldg, T* acc,
                 std::size_t lda) const;
  void jacobian(const T* cache, T* J, T* U) const;

 private:
  RecurrentWeights<T> w_;
  Activation act_;  // a vanilla RNN's nonlinearity
  PackedMatrix<T> whh_t_, whh_, wih_t_, wih_;
  std::vector<T> pbias_;  // reads_below: b_ih (+ b_hh where it folds)
};

// A diagonal linear time-invariant state-space layer (layers/ssm.hpp), discretised: N modes,
// real (state N) or complex (state 2N, (Re, Im) of each mode side by side), d inputs.
template <class T>
struct SsmWeights {
  bool complex = false;
  std::size_t input_size = 0, modes = 0;
  const T* a = nullptr;  // (S): a_n, or (Re a_n, Im a_n) pairs; S = modes (real), 2 modes
  const T* B = nullptr;  // (S, d): B_bar's rows (a complex mode: Re, then Im)
  const T* C = nullptr;  // (d, S): y = C h + D x (a complex mode's columns: Re C, -Im C)
  const T* D = nullptr;  // (d) or null
  std::size_t state_dim() const { return complex ? 2 * modes : modes; }
};

// Mamba's selective layer (layers/selective_ssm.hpp), mamba_simple.Mamba's parameters with A
// = -exp(A_log) and conv1d.weight's singleton axis dropped.
template <class T>
struct SelectiveSsmWeights {
  std::size_t d_model = 0, d_inner = 0, d_state = 0, d_conv = 0, dt_rank = 0;
  const T* in_proj_weight = nullptr;   // (2 d_inner, d_model)
  const T* in_proj_bias = nullptr;     // (2 d_inner) or null
  const T* conv_weight = nullptr;      // (d_inner, d_conv)
  const T* conv_bias = nullptr;        // (d_inner) or null
  const T* x_proj_weight = nullptr;    // (dt_rank + 2 d_state, d_inner)
  const T* dt_proj_weight = nullptr;   // (d_inner, dt_rank)
  const T* dt_proj_bias = nullptr;     // (d_inner)
  const T* A = nullptr;                // (d_inner, d_state), negative
  const T* D = nullptr;                // (d_inner) or null
  const T* out_proj_weight = nullptr;  // (d_model, d_inner)
  const T* out_proj_bias = nullptr;    // (d_model) or null
  std::size_t state_dim() const { return d_inner * (d_state + d_conv - 1); }
};

// The diagonal LTI layer's op: the input projection B_bar x for all steps in one GEMM, then
// per mode a (complex) multiply; no GEMM against the state (there is no dense state matrix) and
// no cache. gemm_cols is 0.
template <class T>
class SsmOp {
 public:
  explicit SsmOp(const SsmWeights<T>& w) : w_(w) {}
  const SsmWeights<T>& weights() const { return w_; }
  std::size_t input_size() const { return w_.input_size; }
  std::size_t in_dim() const { return w_.state_dim(); }
  std::size_t out_dim() const { return w_.state_dim(); }
  std::size_t gemm_cols() const { return 0; }
  std::size_t proj_cols() const { return w_.state_dim(); }
  std::size_t cache_size() const { return 0; }
  void project_inputs(const T* x, std::size_t rows, T* P) const;
  void gemm_rows(std::size_t, const T*, std::size_t, T*, std::size_t) const {}
  void step(const LayerRows<T>& r) const;
  void vjp(const LayerCotangent<T>& c) const;
  void jacobian(const T* cache, T* J, T* U) const;
  // y (rows x d) = C h + D x for new states h (stride ldh) and the step's inputs x (stride ldx).
  void output(std::size_t rows, const T* h, std::size_t ldh, const T* x, std::size_t ldx,
              T* y) const;

 private:
  SsmWeights<T> w_;
};

// The selective layer's op: the input projection in_proj(u) for all steps; per step the two
// GEMMs of the selection (x_proj, dt_proj) on every row (states and tangents alike), the rest
// per channel. gemm_rows does nothing: U is the step's scratch, per row [xc or its tangent
// (d_inner) | x_proj(.) (dt_rank + 2 d_state) | dt_proj(.) (d_inner)].
template <class T>
class SelectiveSsmOp {
 public:
  explicit SelectiveSsmOp(const SelectiveSsmWeights<T>& w);
  const SelectiveSsmWeights<T>& weights() const { return w_; }
  std::size_t input_size() const { return w_.d_model; }
  std::size_t in_dim() const { return w_.state_dim(); }
  std::size_t out_dim() const { return w_.state_dim(); }
  std::size_t gemm_cols() const { return 2 * w_.d_inner + w_.dt_rank + 2 * w_.d_state; }
  std::size_t proj_cols() const { return 2 * w_.d_inner; }
  std::size_t cache_size() const { return layers::selective_cache_size(w_.d_inner, w_.d_state); }
  void project_inputs(const T* x, std::size_t rows, T* P) const;
  void gemm_rows(std::size_t, const T*, std::size_t, T*, std::size_t) const {}
  void step(const LayerRows<T>& r) const;
  void vjp(const LayerCotangent<T>& c) const;
  void jacobian(const T* cache, T* J, T* U) const;
  // out (d_model) = out_proj((C h' + D xc) * silu(z)) of one sample from its cache and new
  // state h' (the layer's output y_t, what the reference module returns).
  void output(const T* cache, const T* hn, T* out) const;
  // The VJP of the layer inside a stack: vjp with the cotangents its output sends to C (gC,
  // d_state per row) and to xc (gxc, d_inner per row; both stride ldx, null: none) added, and
  // the cotangent of in_proj's x part written to gx (d_inner per row, stride ldgx, or null).
  void vjp_in_stack(const LayerCotangent<T>& c, const T* gC, const T* gxc, std::size_t ldx, T* gx,
                    std::size_t ldgx) const;

 private:
  SelectiveSsmWeights<T> w_;
  PackedMatrix<T> xproj_t_, xproj_, dtproj_t_, dtproj_;
};

// One block of a state-space stack (SsmStackOp): on the residual stream u (d features),
//   v = LayerNorm(u) (or u),  the layer's state step on v,  y = the layer's output,
//   u' = u + y (residual) or y.
template <class T>
struct SsmBlockWeights {
  std::variant<SsmWeights<T>, SelectiveSsmWeights<T>> layer;
  bool norm = false;
  const T* norm_weight = nullptr;  // (d) or null (1)
  const T* norm_bias = nullptr;    // (d) or null (0)
  double eps = 1e-5;
  bool residual = false;
};

// A stack of state-space blocks over time (Mamba / S4 style: each block's layer reads the
// stream the blocks below wrote), as one op: its state is the blocks' states side by side, its
// step runs the blocks in order on every row (state rows: the stream starts at x_t; tangent
// rows: at 0), so a JVP / VJP of a step couples a block to those below through their outputs.
// The layers' maths stays theirs (SsmOp, SelectiveSsmOp and their headers); the stack only
// adds the LayerNorm, the output maps' rows and the stream. Per row of U: [u (d) | v (d) | p
// (the largest proj_cols) | y / the gate (max(d, d_inner)) | the layers' scratch].
template <class T>
class SsmStackOp {
 public:
  explicit SsmStackOp(const std::vector<SsmBlockWeights<T>>& blocks);
  std::size_t n_blocks() const { return blocks_.size(); }
  std::size_t input_size() const { return d_; }
  std::size_t in_dim() const { return dim_; }
  std::size_t out_dim() const { return dim_; }
  std::size_t gemm_cols() const { return cols_; }
  std::size_t proj_cols() const { return d_; }
  std::size_t cache_size() const { return cache_; }
  // The stream enters as x itself (P = x).
  void project_inputs(const T* x, std::size_t rows, T* P) const;
  void gemm_rows(std::size_t, const T*, std::size_t, T*, std::size_t) const {}
  void step(const LayerRows<T>& r) const;
  void vjp(const LayerCotangent<T>& c) const;
  void jacobian(const T* cache, T* J, T* U) const;
  // The step leaves each row's stream leaving the top block (d) in U's first columns.

 private:
  struct Block {
    std::variant<SsmOp<T>, SelectiveSsmOp<T>> op;
    SsmBlockWeights<T> w;
    // state offset; cache offsets: LayerNorm (xhat, 1/std), the layer's, the output's
    // (selective: y before the gate, silu'(z), the new h)
    std::size_t so = 0, cn = 0, cl = 0, ce = 0;
  };
  std::vector<Block> blocks_;
  std::size_t d_ = 0, dim_ = 0, cols_ = 0, cache_ = 0;
  // U's (and a VJP's G's) blocks per row: v, p, y, the gate, the total state cotangent, the
  // output's cotangents of C and xc, the layer's own scratch
  std::size_t ov_ = 0, op_ = 0, oy_ = 0, og_ = 0, ow_ = 0, oc_ = 0, os_ = 0;
};

template <class Op>
struct is_ssm_op : std::false_type {};
template <class T>
struct is_ssm_op<SsmOp<T>> : std::true_type {};
template <class T>
struct is_ssm_op<SelectiveSsmOp<T>> : std::true_type {};
template <class T>
struct is_ssm_op<SsmStackOp<T>> : std::true_type {};
template <class Op>
inline constexpr bool is_ssm_op_v = is_ssm_op<std::decay_t<Op>>::value;

// The one list of supported layer kinds.
template <class T>
using Layer = std::variant<DenseOp<T>, RecurrentOp<T, RnnCell>, RecurrentOp<T, LstmCell>,
                           RecurrentOp<T, GruCell>, SsmOp<T>, SelectiveSsmOp<T>, SsmStackOp<T>>;

// The op of a recurrent layer of the kind its description names (reads_below: layer l > 0 of a
// stack).
template <class T>
Layer<T> recurrent_layer_op(const RecurrentWeights<T>& w, bool reads_below) {
  return with_cell(w.kind, [&](auto cell) -> Layer<T> {
    return RecurrentOp<T, decltype(cell)>(w, reads_below);
  });
}

template <class T>
class Model {
 public:
  // Dense stack, depth axis (BatchNorm with batch statistics is rejected: it couples the batch,
  // so there is no per-sample map).
  static Model dense(std::vector<DenseLayer<T>> layers);
  // Unidirectional recurrent stack, time axis, PyTorch's layer order (all the same kind and
  // hidden size; layer l > 0 has input size N).
  static Model recurrent(const std::vector<RecurrentWeights<T>>& layers);
  static Model recurrent(const RecurrentWeights<T>& w) {
    return recurrent(std::vector<RecurrentWeights<T>>{w});
  }

  // One state-space layer, time axis (layers/ssm.hpp, layers/selective_ssm.hpp). The state a
  // Jacobian analysis sees is the layer's state (real; complex modes as pairs); its output y_t
  // is not part of it (output() computes it).
  static Model ssm(const SsmWeights<T>& w);
  static Model ssm(const SelectiveSsmWeights<T>& w);
  // A stack of state-space blocks (SsmStackOp), time axis: the state is the blocks' states.
  static Model ssm_stack(const std::vector<SsmBlockWeights<T>>& blocks);

  Axis axis() const { return axis_; }
  bool is_dense() const { return axis_ == Axis::depth; }
  std::size_t n_layers() const { return layers_.size(); }
  const Layer<T>& layer(std::size_t l) const { return layers_[l]; }
  // Time axis: layer l's description (null on the depth axis).
  const RecurrentWeights<T>* recurrent_layer(std::size_t l) const;
  // A time-axis model of one recurrent layer (the fused single-cell fast paths): its weights,
  // else null.
  const RecurrentWeights<T>* single_cell() const {
    return layers_.size() == 1 ? recurrent_layer(0) : nullptr;
  }
  std::size_t input_size() const;  // time axis: layer 0's input size

  // State dimension entering / leaving step s.
  std::size_t in_dim(std::size_t s) const;
  std::size_t out_dim(std::size_t s) const;
  // Columns of U = X W^T (recurrent: G*N; dense: out, twice that for a highway layer; a stack of
  // L layers: (L + 2) G*N, each layer's W_hh product and two blocks of scratch).
  std::size_t gemm_cols(std::size_t s) const;
  // Per-sample cache of the forward quantities the JVP / VJP of step s need.
  std::size_t cache_size(std::size_t s) const;
  // Columns of an input projection row (time axis: layer 0's G*N; depth: 0).
  std::size_t proj_cols() const;

  // Time axis only: P (rows x G*N) = x W_ih^T + the biases that do not sit inside a gate
  // product (b_ih + b_hh; GRU: b_ih only), of layer 0 (the other layers' input projections are
  // part of the step).
  void project_inputs(const T* x, std::size_t rows, T* P) const;

  // U (rows x gemm_cols, row stride ldu) = each layer's X W^T for the rows of X (row stride
  // ldx; recurrent layers: their h part times W_hh^T, in their blocks).
  void gemm_rows(std::size_t s, const T* X, std::size_t ldx, std::size_t rows, T* U,
                 std::size_t ldu) const;

  // Step s, layer by layer, on ns state rows (writing their caches) followed by nt samples' k
  // tangent rows each (reading cache_r; it may be cache_w): U holds gemm_rows of all those rows
  // (overwritten: the layers below' contributions are added in), proj the state rows' input
  // projections (null on the depth axis). Y must not overlap X or U.
  void step(std::size_t s, const T* proj, T* U, std::size_t ldu, const T* X, std::size_t ldx, T* Y,
            std::size_t ldy, std::size_t ns, T* cache_w, std::size_t nt, std::size_t k,
            const T* cache_r) const;
  // The forward step of nb samples (step with nt = 0).
  void state_update(std::size_t s, const T* proj, T* U, std::size_t ldu, const T* X,
                    std::size_t ldx, T* Y, std::size_t ldy, T* cache, std::size_t nb) const {
    step(s, proj, U, ldu, X, ldx, Y, ldy, nb, cache, 0, 0, nullptr);
  }
  // k tangent rows of one sample: Vout = J_s Vin, given its cache and U = gemm_rows(Vin).
  void tangent_update(std::size_t s, const T* cache, T* U, std::size_t ldu, const T* Vin,
                      std::size_t ldv, T* Vout, std::size_t ldo, std::size_t k) const {
    step(s, nullptr, U, ldu, Vin, ldv, Vout, ldo, 0, nullptr, 1, k, cache);
  }

  // JVP including the GEMM: Vout (k x out_dim) = J_s Vin (k x in_dim). U: k * gemm_cols scratch.
  void jvp(std::size_t s, const T* cache, const T* Vin, T* Vout, std::size_t k, T* U) const;
  // VJP: Wout (k x in_dim) = J_s^T Win (k x out_dim). G: k * gemm_cols scratch. Wtotal (k x
  // out_dim, or null) receives the cotangent of the state leaving the step including what the
  // step itself sends back to it: in a stack, layer l + 1 reads the new h^l within the step, so
  // h^l's part is Win's plus layer l + 1's input VJP (the total dL/dh^l of that state).
  void vjp(std::size_t s, const T* cache, const T* Win, T* Wout, std::size_t k, T* G,
           T* Wtotal = nullptr) const;
  // The Jacobian J_s itself, column-major (out_dim x in_dim, leading dimension out_dim). A step
  // of one layer needs no GEMM (the JVP of the identity needs only W^T). U: in_dim * gemm_cols
  // scratch.
  void jacobian(std::size_t s, const T* cache, T* J, T* U) const;

 private:
  // A time-axis model of one op (a state-space layer or stack): the op's state, scratch and
  // cache are the model's.
  static Model single_op(Layer<T> op);

  Axis axis_ = Axis::depth;
  std::vector<Layer<T>> layers_;
  // Time axis: each layer's offsets in a state row, a gemm_rows row and a cache row; the
  // scratch blocks of a stack (A: a GRU's input projection; acc: a VJP's cotangent of h^l).
  std::vector<std::size_t> so_, uo_, co_;
  std::size_t dim_ = 0, cols_ = 0, cache_ = 0, a_off_ = 0, acc_off_ = 0;
};

// One step for nb samples that each carry k tangent rows. X holds [nb state rows; nb*k tangent
// rows, sample-major] with row stride in_dim(s); Y receives the same layout with row stride
// out_dim(s) (Y must not overlap X). One GEMM covers states and tangents.
template <class T>
struct StepScratch {
  std::vector<T> U, cache;
};

template <class T>
void advance(const Model<T>& m, std::size_t s, const T* proj, const T* X, T* Y, std::size_t nb,
             std::size_t k, StepScratch<T>& ws);

// True when every value is finite (a cheap vectorised check: the sum of 0 * x is 0 or NaN).
template <class T>
bool all_finite(const T* x, std::size_t n);

extern template class DenseOp<float>;
extern template class DenseOp<double>;
extern template class RecurrentOp<float, RnnCell>;
extern template class RecurrentOp<double, RnnCell>;
extern template class RecurrentOp<float, LstmCell>;
extern template class RecurrentOp<double, LstmCell>;
extern template class RecurrentOp<float, GruCell>;
extern template class RecurrentOp<double, GruCell>;
extern template class SsmOp<float>;
extern template class SsmOp<double>;
extern template class SelectiveSsmOp<float>;
extern template class SelectiveSsmOp<double>;
extern template class SsmStackOp<float>;
extern template class SsmStackOp<double>;
extern template class Model<float>;
extern template class Model<double>;

}  // namespace vgcore

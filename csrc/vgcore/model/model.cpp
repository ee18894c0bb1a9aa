// The generic model (model.hpp): a list of layers on an axis. Everything here is about which
// layer runs when and where its rows live; the layers' maths is in their ops
// (dense_op.cpp, recurrent_op.cpp), reached by one std::visit per layer per step.
#include "vgcore/model/model.hpp"

#include <algorithm>
#include <type_traits>
#include <utility>

#include "vgcore/base/fastmath.hpp"
#include "vgcore/base/lanes.hpp"

namespace vgcore {

// ---- construction and dimensions ----------------------------------------------------------

template <class T>
Model<T> Model<T>::dense(std::vector<DenseLayer<T>> layers) {
  if (layers.empty()) throw std::invalid_argument("the network has no layers");
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const auto& ly = layers[l];
    const std::string name = "layer " + std::to_string(l);
    if (!ly.weight) throw std::invalid_argument(name + ": weight is null");
    if (l > 0 && ly.in != layers[l - 1].out)
      throw std::invalid_argument(name + " expects " + std::to_string(ly.in) +
                                  " inputs but layer " + std::to_string(l - 1) + " has " +
                                  std::to_string(layers[l - 1].out) + " outputs");
    if (ly.norm == DenseNorm::batchnorm)
      throw std::invalid_argument(name +
                                  " uses BatchNorm with batch statistics, which couples the "
                                  "samples of a batch: the per-sample Jacobian d h_l / d h_{l-1} "
                                  "is not defined (eval-mode BatchNorm is supported)");
    if (ly.norm == DenseNorm::batchnorm_eval && !(ly.running_mean && ly.running_var))
      throw std::invalid_argument(name +
                                  ": eval-mode BatchNorm needs running_mean and running_var");
    if (ly.block != DenseBlock::plain && ly.in != ly.out)
      throw std::invalid_argument(name + ": residual and highway blocks need in == out");
    if (ly.block == DenseBlock::highway && !ly.gate_weight)
      throw std::invalid_argument(name + ": highway block without gate weight");
  }
  Model m;
  m.axis_ = Axis::depth;
  m.layers_.reserve(layers.size());
  for (const auto& ly : layers) m.layers_.emplace_back(DenseOp<T>(ly));
  return m;
}

template <class T>
Model<T> Model<T>::recurrent(const std::vector<RecurrentWeights<T>>& layers) {
  if (layers.empty()) throw std::invalid_argument("the recurrent stack has no layers");
  const RecurrentWeights<T>& w0 = layers[0];
  const std::size_t N = w0.hidden;
  if (layers.size() == 1) {
    if (!w0.weight_ih || !w0.weight_hh) throw std::invalid_argument("recurrent weights are null");
  }
  for (std::size_t l = 0; l < layers.size() && layers.size() > 1; ++l) {
    const auto& w = layers[l];
    const std::string name = "layer " + std::to_string(l);
    if (!w.weight_ih || !w.weight_hh) throw std::invalid_argument(name + ": weights are null");
    if (w.kind != w0.kind) throw std::invalid_argument(name + " is not of layer 0's kind");
    if (w.hidden != N)
      throw std::invalid_argument(name + " has hidden size " + std::to_string(w.hidden) +
                                  ", layer 0 has " + std::to_string(N));
    if (l > 0 && w.input_size != N)
      throw std::invalid_argument(name + " has input size " + std::to_string(w.input_size) +
                                  ", but reads layer " + std::to_string(l - 1) +
                                  "'s hidden state of size " + std::to_string(N));
  }
  if (N == 0) throw std::invalid_argument("hidden size must be positive");
  Model m;
  m.axis_ = Axis::time;
  std::size_t max_cols = 0;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    m.layers_.push_back(recurrent_layer_op(layers[l], l > 0));
    m.so_.push_back(m.dim_);
    m.uo_.push_back(m.cols_);
    m.co_.push_back(m.cache_);
    std::visit(
        [&](const auto& op) {
          m.dim_ += op.out_dim();
          m.cols_ += op.gemm_cols();
          m.cache_ += op.cache_size();
          max_cols = std::max(max_cols, op.gemm_cols());
        },
        m.layers_.back());
  }
  if (layers.size() > 1) {  // scratch: a GRU's input projection, a VJP's cotangent of h^l
    m.a_off_ = m.cols_;
    m.acc_off_ = m.cols_ + max_cols;
    m.cols_ += 2 * max_cols;
  }
  return m;
}

// A time-axis model of one state-space layer (its validation is the description's parser's;
// here only what the op's arithmetic relies on).
template <class T>
Model<T> Model<T>::ssm(const SsmWeights<T>& w) {
  if (!w.a || !w.B || !w.C) throw std::invalid_argument("SSM weights are null");
  if (w.modes == 0 || w.input_size == 0)
    throw std::invalid_argument("SSM sizes must be positive, got " + std::to_string(w.modes) +
                                " modes and " + std::to_string(w.input_size) + " inputs");
  return single_op(SsmOp<T>(w));
}

template <class T>
Model<T> Model<T>::ssm(const SelectiveSsmWeights<T>& w) {
  if (!w.in_proj_weight || !w.conv_weight || !w.x_proj_weight || !w.dt_proj_weight ||
      !w.dt_proj_bias || !w.A || !w.out_proj_weight)
    throw std::invalid_argument("selective SSM weights are null");
  if (w.d_model == 0 || w.d_inner == 0 || w.d_state == 0 || w.dt_rank == 0 || w.d_conv < 2)
    throw std::invalid_argument("selective SSM sizes must be positive (d_conv >= 2)");
  return single_op(SelectiveSsmOp<T>(w));
}

template <class T>
Model<T> Model<T>::ssm_stack(const std::vector<SsmBlockWeights<T>>& blocks) {
  return single_op(SsmStackOp<T>(blocks));
}

template <class T>
Model<T> Model<T>::single_op(Layer<T> op) {
  Model m;
  m.axis_ = Axis::time;
  m.layers_.push_back(std::move(op));
  m.so_ = m.uo_ = m.co_ = {0};
  std::visit(
      [&](const auto& o) {
        m.dim_ = o.out_dim();
        m.cols_ = o.gemm_cols();
        m.cache_ = o.cache_size();
      },
      m.layers_.back());
  return m;
}

template <class T>
const RecurrentWeights<T>* Model<T>::recurrent_layer(std::size_t l) const {
  if (axis_ != Axis::time) return nullptr;
  return std::visit(
      [](const auto& op) -> const RecurrentWeights<T>* {
        if constexpr (std::is_same_v<std::decay_t<decltype(op)>, DenseOp<T>> ||
                      is_ssm_op_v<decltype(op)>)
          return nullptr;
        else
          return &op.weights();
      },
      layers_[l]);
}

template <class T>
std::size_t Model<T>::input_size() const {
  if (axis_ != Axis::time) return 0;
  return std::visit(
      [](const auto& op) -> std::size_t {
        if constexpr (is_ssm_op_v<decltype(op)>)
          return op.input_size();
        else if constexpr (std::is_same_v<std::decay_t<decltype(op)>, DenseOp<T>>)
          return 0;
        else
          return op.weights().input_size;
      },
      layers_[0]);
}

template <class T>
std::size_t Model<T>::in_dim(std::size_t s) const {
  if (axis_ == Axis::time) return dim_;
  return std::visit([](const auto& op) { return op.in_dim(); }, layers_[s]);
}

template <class T>
std::size_t Model<T>::out_dim(std::size_t s) const {
  if (axis_ == Axis::time) return dim_;
  return std::visit([](const auto& op) { return op.out_dim(); }, layers_[s]);
}

template <class T>
std::size_t Model<T>::gemm_cols(std::size_t s) const {
  if (axis_ == Axis::time) return cols_;
  return std::visit([](const auto& op) { return op.gemm_cols(); }, layers_[s]);
}

template <class T>
std::size_t Model<T>::cache_size(std::size_t s) const {
  if (axis_ == Axis::time) return cache_;
  return std::visit([](const auto& op) { return op.cache_size(); }, layers_[s]);
}

template <class T>
std::size_t Model<T>::proj_cols() const {
  if (axis_ != Axis::time) return 0;
  return std::visit(
      [](const auto& op) {
        if constexpr (is_ssm_op_v<decltype(op)>)
          return op.proj_cols();
        else
          return op.gemm_cols();
      },
      layers_[0]);
}

// ---- steps --------------------------------------------------------------------------------

template <class T>
void Model<T>::project_inputs(const T* x, std::size_t rows, T* P) const {
  std::visit(
      [&](const auto& op) {
        if constexpr (!std::is_same_v<std::decay_t<decltype(op)>, DenseOp<T>>)
          op.project_inputs(x, rows, P);
      },
      layers_[0]);
}

template <class T>
void Model<T>::gemm_rows(std::size_t s, const T* X, std::size_t ldx, std::size_t rows, T* U,
                         std::size_t ldu) const {
  if (rows == 0) return;
  if (axis_ == Axis::depth) {
    std::visit([&](const auto& op) { op.gemm_rows(rows, X, ldx, U, ldu); }, layers_[s]);
    return;
  }
  for (std::size_t l = 0; l < layers_.size(); ++l)
    std::visit([&](const auto& op) { op.gemm_rows(rows, X + so_[l], ldx, U + uo_[l], ldu); },
               layers_[l]);
}

template <class T>
void Model<T>::step(std::size_t s, const T* proj, T* U, std::size_t ldu, const T* X,
                    std::size_t ldx, T* Y, std::size_t ldy, std::size_t ns, T* cache_w,
                    std::size_t nt, std::size_t k, const T* cache_r) const {
  if (ns + nt * k == 0) return;
  LayerRows<T> r;
  r.ldu = ldu;
  r.ldx = ldx;
  r.ldy = ldy;
  r.ns = ns;
  r.nt = nt;
  r.k = k;
  if (axis_ == Axis::depth) {
    r.U = U;
    r.X = X;
    r.Y = Y;
    r.cache_w = cache_w;
    r.cache_r = cache_r;
    r.ldc = cache_size(s);
    std::visit([&](const auto& op) { op.step(r); }, layers_[s]);
    return;
  }
  r.ldp = proj_cols();
  r.A = U + a_off_;
  r.ldc = cache_;
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    r.proj = l == 0 ? proj : nullptr;
    r.U = U + uo_[l];
    r.X = X + so_[l];
    r.Y = Y + so_[l];
    r.below = l > 0 ? Y + so_[l - 1] : nullptr;
    r.cache_w = cache_w ? cache_w + co_[l] : nullptr;
    r.cache_r = cache_r ? cache_r + co_[l] : nullptr;
    std::visit([&](const auto& op) { op.step(r); }, layers_[l]);
  }
}

template <class T>
void Model<T>::jvp(std::size_t s, const T* cache, const T* Vin, T* Vout, std::size_t k,
                   T* U) const {
  const std::size_t gc = gemm_cols(s);
  gemm_rows(s, Vin, in_dim(s), k, U, gc);
  tangent_update(s, cache, U, gc, Vin, in_dim(s), Vout, out_dim(s), k);
}

// Cotangents run down a stack: layer l's new h receives Win's part plus what layer l + 1's input
// projection sends back (G_in W_ih_{l+1}).
template <class T>
void Model<T>::vjp(std::size_t s, const T* cache, const T* Win, T* Wout, std::size_t k, T* G,
                   T* Wtotal) const {
  if (k == 0) return;
  const std::size_t gc = gemm_cols(s), din = in_dim(s), dout = out_dim(s);
  if (Wtotal) std::copy(Win, Win + k * dout, Wtotal);
  LayerCotangent<T> c;
  c.k = k;
  c.ldw = dout;
  c.lds = dout;
  c.ldg = gc;
  c.ldo = din;
  if (axis_ == Axis::depth) {
    c.cache = cache;
    c.w = c.wstate = Win;
    c.G = G;
    c.o = Wout;
    std::visit([&](const auto& op) { op.vjp(c); }, layers_[s]);
    return;
  }
  const std::size_t L = layers_.size();
  T* A = G + a_off_;
  T* acc = G + acc_off_;
  for (std::size_t l = L; l-- > 0;) {
    c.cache = cache + co_[l];
    c.wstate = Win + so_[l];
    c.G = G + uo_[l];
    c.gin = l > 0 ? A : nullptr;
    c.o = Wout + so_[l];
    c.total = Wtotal ? Wtotal + so_[l] : nullptr;
    c.ldt = dout;
    if (l + 1 < L) {
      const std::size_t N = recurrent_layer(l)->hidden;
      for (std::size_t r = 0; r < k; ++r)
        std::copy(Win + r * dout + so_[l], Win + r * dout + so_[l] + N, acc + r * gc);
      std::visit(
          [&](const auto& op) {
            if constexpr (!std::is_same_v<std::decay_t<decltype(op)>, DenseOp<T>> &&
                          !is_ssm_op_v<decltype(op)>)
              op.input_vjp(k, G + uo_[l + 1], A, gc, acc, gc);
          },
          layers_[l + 1]);
      c.w = acc;
      c.ldw = gc;
      if (Wtotal)
        for (std::size_t r = 0; r < k; ++r)
          std::copy(acc + r * gc, acc + r * gc + N, Wtotal + r * dout + so_[l]);
    } else {  // the top layer: Win's part only
      c.w = Win + so_[l];
      c.ldw = dout;
    }
    std::visit([&](const auto& op) { op.vjp(c); }, layers_[l]);
  }
}

template <class T>
void Model<T>::jacobian(std::size_t s, const T* cache, T* J, T* U) const {
  if (axis_ == Axis::depth || layers_.size() == 1) {  // one layer: W^T, no GEMM
    std::visit([&](const auto& op) { op.jacobian(cache, J, U); },
               layers_[axis_ == Axis::depth ? s : 0]);
    return;
  }
  // The JVP of the identity (the blocks below the diagonal need GEMMs).
  const std::size_t din = in_dim(s);
  std::vector<T> eye(din * din, T(0));
  for (std::size_t j = 0; j < din; ++j) eye[j * din + j] = T(1);
  jvp(s, cache, eye.data(), J, din, U);
}

// ---- block step ---------------------------------------------------------------------------

template <class T>
void advance(const Model<T>& m, std::size_t s, const T* proj, const T* X, T* Y, std::size_t nb,
             std::size_t k, StepScratch<T>& ws) {
  const std::size_t din = m.in_dim(s), dout = m.out_dim(s), gc = m.gemm_cols(s),
                    C = m.cache_size(s), rows = nb * (k + 1);
  if (ws.U.size() < rows * gc) ws.U.resize(rows * gc);
  if (ws.cache.size() < nb * C) ws.cache.resize(nb * C);
  T* U = ws.U.data();
  T* cache = ws.cache.data();
  m.gemm_rows(s, X, din, rows, U, gc);
  // Layer by layer on all rows: one GEMM per weight per layer.
  m.step(s, proj, U, gc, X, din, Y, dout, nb, cache, k ? nb : 0, k, cache);
}

namespace {
template <class T>
VGCORE_TARGET_CLONES T zero_sum(const T* x, std::size_t n) {
  return zero_products<16>(x, n);
}
}  // namespace

template <class T>
bool all_finite(const T* x, std::size_t n) {
  return zero_sum(x, n) == T(0);
}

template class Model<float>;
template class Model<double>;
template void advance<float>(const Model<float>&, std::size_t, const float*, const float*, float*,
                             std::size_t, std::size_t, StepScratch<float>&);
template void advance<double>(const Model<double>&, std::size_t, const double*, const double*,
                              double*, std::size_t, std::size_t, StepScratch<double>&);
template bool all_finite<float>(const float*, std::size_t);
template bool all_finite<double>(const double*, std::size_t);

}  // namespace vgcore

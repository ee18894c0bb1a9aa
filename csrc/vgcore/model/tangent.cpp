// Forward steps, JVPs and VJPs of dense layers and recurrent cells on row blocks.
//
// Cache layouts (per sample; N = hidden size, n = layer output width):
//   RNN   [phi'(z)]                                   N
//   LSTM  [i, f, g, o, c_prev, tanh(c')]               6N
//   GRU   [r, z, n, q_n = W_hn h + b_hn, h_prev]        5N
//   (gates and tanh values encoded, gates.hpp: accurate derivatives in saturation)
//   dense [phi'(z')] + highway [t (encoded), a - h] + LayerNorm [xhat, 1/std]
//   a recurrent stack: its layers' caches side by side
#include "vgcore/model/tangent.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include "vgcore/base/blas.hpp"
#include "vgcore/base/fastmath.hpp"
#include "vgcore/base/gates.hpp"
#include "vgcore/base/lanes.hpp"
#include "vgcore/layers/dense.hpp"
#include "vgcore/layers/gru.hpp"
#include "vgcore/layers/highway.hpp"
#include "vgcore/layers/layernorm.hpp"
#include "vgcore/layers/residual.hpp"
#include "vgcore/layers/lstm.hpp"

namespace vgcore {
namespace {

namespace fm = vgcore::fastmath;
using blas::Op;

// ---- recurrent row loops (one sample, N units), calling the cells' formulas (layers/) ------

template <class T>
VGCORE_TARGET_CLONES void lstm_state_row(const T* __restrict p, const T* __restrict u,
                                         const T* __restrict cprev, T* __restrict hn,
                                         T* __restrict cn, T* __restrict cache, std::size_t N) {
  T* ci = cache;
  T* cf = cache + N;
  T* cg = cache + 2 * N;
  T* co = cache + 3 * N;
  T* cc = cache + 4 * N;
  T* ct = cache + 5 * N;
  for (std::size_t j = 0; j < N; ++j) {
    const auto v =
        layers::lstm_forward(p[j] + u[j], p[N + j] + u[N + j], p[2 * N + j] + u[2 * N + j],
                             p[3 * N + j] + u[3 * N + j], cprev[j]);
    ci[j] = v.vi;
    cf[j] = v.vf;
    cg[j] = v.vg;
    co[j] = v.vo;
    ct[j] = v.vt;
    cc[j] = cprev[j];
    cn[j] = v.c;
    hn[j] = v.h;
  }
}

// (dh, dc) -> (dh', dc') given da = dh W_hh^T (u, 4N).
template <class T>
VGCORE_TARGET_CLONES void lstm_tangent_row(const T* __restrict cache, const T* __restrict u,
                                           const T* __restrict dc, T* __restrict dho,
                                           T* __restrict dco, std::size_t N) {
  const T* ci = cache;
  const T* cf = cache + N;
  const T* cg = cache + 2 * N;
  const T* co = cache + 3 * N;
  const T* cc = cache + 4 * N;
  const T* ct = cache + 5 * N;
  for (std::size_t j = 0; j < N; ++j) {
    const auto q = layers::lstm_load(ci[j], cf[j], cg[j], co[j], ct[j]);
    const auto d = layers::lstm_jvp(q, cc[j], u[j], u[N + j], u[2 * N + j], u[3 * N + j], dc[j]);
    dco[j] = d.dc;
    dho[j] = d.dh;
  }
}

// Cotangent (wh, wc) of (h', c') -> G (4N, multiplies W_hh) and the direct c part.
template <class T>
VGCORE_TARGET_CLONES void lstm_vjp_row(const T* __restrict cache, const T* __restrict wh,
                                       const T* __restrict wc, T* __restrict G,
                                       T* __restrict dcprev, std::size_t N) {
  const T* ci = cache;
  const T* cf = cache + N;
  const T* cg = cache + 2 * N;
  const T* co = cache + 3 * N;
  const T* cc = cache + 4 * N;
  const T* ct = cache + 5 * N;
  for (std::size_t j = 0; j < N; ++j) {
    const auto q = layers::lstm_load(ci[j], cf[j], cg[j], co[j], ct[j]);
    const auto d = layers::lstm_vjp(q, cc[j], wh[j], wc[j]);
    G[j] = d.di;
    G[N + j] = d.df;
    G[2 * N + j] = d.dg;
    G[3 * N + j] = d.dout;
    dcprev[j] = d.dcprev;
  }
}

template <class T>
VGCORE_TARGET_CLONES void gru_state_row(const T* __restrict p, const T* __restrict u,
                                        const T* __restrict bhh, const T* __restrict hprev,
                                        T* __restrict hn, T* __restrict cache, std::size_t N) {
  T* cr = cache;
  T* cz = cache + N;
  T* cn = cache + 2 * N;
  T* cq = cache + 3 * N;
  T* ch = cache + 4 * N;
  for (std::size_t j = 0; j < N; ++j) {
    const T qr = u[j] + (bhh ? bhh[j] : T(0));
    const T qz = u[N + j] + (bhh ? bhh[N + j] : T(0));
    const T qn = u[2 * N + j] + (bhh ? bhh[2 * N + j] : T(0));
    const auto v = layers::gru_forward(p[j] + qr, p[N + j] + qz, p[2 * N + j], qn, hprev[j]);
    cr[j] = v.vr;
    cz[j] = v.vz;
    cn[j] = v.vn;
    cq[j] = qn;
    ch[j] = hprev[j];
    hn[j] = v.h;
  }
}

// dh -> dh' given dq = dh W_hh^T (u, 3N).
template <class T>
VGCORE_TARGET_CLONES void gru_tangent_row(const T* __restrict cache, const T* __restrict u,
                                          const T* __restrict dh, T* __restrict dho,
                                          std::size_t N) {
  const T* cr = cache;
  const T* cz = cache + N;
  const T* cn = cache + 2 * N;
  const T* cq = cache + 3 * N;
  const T* ch = cache + 4 * N;
  for (std::size_t j = 0; j < N; ++j) {
    const auto q = layers::gru_load(cr[j], cz[j], cn[j]);
    dho[j] = layers::gru_jvp(q, cq[j], ch[j], u[j], u[N + j], u[2 * N + j], dh[j]);
  }
}

template <class T>
VGCORE_TARGET_CLONES void gru_vjp_row(const T* __restrict cache, const T* __restrict w,
                                      T* __restrict G, T* __restrict direct, std::size_t N) {
  const T* cr = cache;
  const T* cz = cache + N;
  const T* cn = cache + 2 * N;
  const T* cq = cache + 3 * N;
  const T* ch = cache + 4 * N;
  for (std::size_t j = 0; j < N; ++j) {
    const auto q = layers::gru_load(cr[j], cz[j], cn[j]);
    const auto d = layers::gru_vjp(q, cq[j], ch[j], w[j]);
    G[j] = d.dr;
    G[N + j] = d.dz;
    G[2 * N + j] = d.dqn;
    direct[j] = d.direct;
  }
}

// A stacked GRU layer: dh -> dh' given dq = dh W_hh^T (u) and the input's tangent dp = dx W_ih^T
// (dp, 3N), which enters the n gate outside the r * (...) product.
template <class T>
VGCORE_TARGET_CLONES void gru_tangent_row_in(const T* __restrict cache, const T* __restrict u,
                                             const T* __restrict dp, const T* __restrict dh,
                                             T* __restrict dho, std::size_t N) {
  const T* cr = cache;
  const T* cz = cache + N;
  const T* cn = cache + 2 * N;
  const T* cq = cache + 3 * N;
  const T* ch = cache + 4 * N;
  for (std::size_t j = 0; j < N; ++j) {
    const auto q = layers::gru_load(cr[j], cz[j], cn[j]);
    dho[j] = layers::gru_jvp_with_input(q, cq[j], ch[j], u[j], u[N + j], u[2 * N + j], dp[j],
                                        dp[N + j], dp[2 * N + j], dh[j]);
  }
}

// gru_vjp_row plus the cotangent of the input projection (Gin, 3N: its n part is not scaled by r).
template <class T>
VGCORE_TARGET_CLONES void gru_vjp_row_in(const T* __restrict cache, const T* __restrict w,
                                         T* __restrict G, T* __restrict Gin, T* __restrict direct,
                                         std::size_t N) {
  const T* cr = cache;
  const T* cz = cache + N;
  const T* cn = cache + 2 * N;
  const T* cq = cache + 3 * N;
  const T* ch = cache + 4 * N;
  for (std::size_t j = 0; j < N; ++j) {
    const auto q = layers::gru_load(cr[j], cz[j], cn[j]);
    const auto d = layers::gru_vjp(q, cq[j], ch[j], w[j]);
    G[j] = Gin[j] = d.dr;
    G[N + j] = Gin[N + j] = d.dz;
    G[2 * N + j] = d.dqn;
    Gin[2 * N + j] = d.dpn;
    direct[j] = d.direct;
  }
}

template <class T>
VGCORE_TARGET_CLONES void add_row(const T* __restrict d, T* __restrict o, std::size_t n) {
  for (std::size_t j = 0; j < n; ++j) o[j] += d[j];
}

template <class T>
VGCORE_TARGET_CLONES void scale_row(const T* __restrict d, const T* __restrict u, T* __restrict o,
                                    std::size_t n) {
  for (std::size_t j = 0; j < n; ++j) o[j] = d[j] * u[j];
}

// ---- the one dispatch on the cell kind per row (single-layer and stacked steps alike) -------

// One sample's forward step of one recurrent layer: p its input projection, u = h W_hh^T, bhh
// the GRU's b_hh (added inside r * (...)); writes h' (and c') into y and the cache.
template <class T>
void cell_state_row(CellKind kind, const Activation& act, const T* p, const T* u, const T* bhh,
                    const T* h, T* y, T* c, std::size_t N) {
  switch (kind) {
    case CellKind::lstm:
      lstm_state_row(p, u, h + N, y, y + N, c, N);
      break;
    case CellKind::gru:
      gru_state_row(p, u, bhh, h, y, c, N);
      break;
    default:
      for (std::size_t j = 0; j < N; ++j) c[j] = p[j] + u[j];
      activation_forward(act, c, y, c, N);
  }
}

// One tangent row: v -> o given u = v_h W_hh^T (+ the input's for non-GRU stacked layers); dp:
// a stacked GRU layer's input tangent projection (outside r * (...)), else null.
template <class T>
void cell_tangent_row(CellKind kind, const T* c, const T* u, const T* dp, const T* v, T* o,
                      std::size_t N) {
  switch (kind) {
    case CellKind::lstm:
      lstm_tangent_row(c, u, v + N, o, o + N, N);
      break;
    case CellKind::gru:
      if (dp)
        gru_tangent_row_in(c, u, dp, v, o, N);
      else
        gru_tangent_row(c, u, v, o, N);
      break;
    default:
      scale_row(c, u, o, N);
  }
}

// One cotangent row: w (h part) and wc (LSTM c part) -> g (multiplies W_hh), the direct parts
// into o; gin: a stacked GRU layer's input-projection cotangent, else null.
template <class T>
void cell_vjp_row(CellKind kind, const T* c, const T* w, const T* wc, T* g, T* gin, T* o,
                  std::size_t N) {
  switch (kind) {
    case CellKind::lstm:
      lstm_vjp_row(c, w, wc, g, o + N, N);
      break;
    case CellKind::gru:
      if (gin)
        gru_vjp_row_in(c, w, g, gin, o, N);
      else
        gru_vjp_row(c, w, g, o, N);
      break;
    default:
      scale_row(c, w, g, N);
  }
}

// ---- dense-layer helpers --------------------------------------------------------------

struct DenseOffsets {
  std::size_t dphi = 0, t = 0, amh = 0, xhat = 0, istd = 0, size = 0;
};

template <class T>
DenseOffsets dense_offsets(const DenseLayer<T>& ly) {
  DenseOffsets o;
  const std::size_t n = ly.out;
  std::size_t at = n;
  if (ly.block == DenseBlock::highway) {
    o.t = at;
    o.amh = at + n;
    at += 2 * n;
  }
  if (ly.norm != DenseNorm::none) {
    o.xhat = at;
    o.istd = at + n;
    at += n + 1;
  }
  o.size = at;
  return o;
}

}  // namespace

// ---- construction and dimensions ----------------------------------------------------------

template <class T>
TangentModel<T> TangentModel<T>::dense(std::vector<DenseLayer<T>> layers) {
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
  TangentModel m;
  m.dense_ = true;
  m.layers_ = std::move(layers);
  return m;
}

template <class T>
TangentModel<T> TangentModel<T>::recurrent(const RecurrentWeights<T>& w) {
  if (!w.weight_ih || !w.weight_hh) throw std::invalid_argument("recurrent weights are null");
  if (w.hidden == 0) throw std::invalid_argument("hidden size must be positive");
  TangentModel m;
  m.w_ = w;
  m.act_ = make_activation(cell_activation(w.kind));
  const std::size_t GN = cell_gates(w.kind) * w.hidden;
  m.whh_t_ = PackedMatrix<T>::transposed(w.weight_hh, GN, w.hidden, w.hidden);
  m.whh_ = PackedMatrix<T>::rows(w.weight_hh, GN, w.hidden, w.hidden);
  return m;
}

template <class T>
TangentModel<T> TangentModel<T>::stack(const std::vector<RecurrentWeights<T>>& layers) {
  if (layers.empty()) throw std::invalid_argument("the recurrent stack has no layers");
  if (layers.size() == 1) return recurrent(layers[0]);
  const RecurrentWeights<T>& w0 = layers[0];
  const std::size_t N = w0.hidden, GN = cell_gates(w0.kind) * N;
  for (std::size_t l = 0; l < layers.size(); ++l) {
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
  TangentModel m;  // w_ = layer 0 (project_inputs); W_hh packed per layer below
  m.w_ = w0;
  m.act_ = make_activation(cell_activation(w0.kind));
  m.stack_ = layers;
  m.sl_.resize(layers.size());
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const auto& w = layers[l];
    auto& sl = m.sl_[l];
    sl.whh_t = PackedMatrix<T>::transposed(w.weight_hh, GN, N, N);
    sl.whh = PackedMatrix<T>::rows(w.weight_hh, GN, N, N);
    if (l == 0) continue;
    sl.wih_t = PackedMatrix<T>::transposed(w.weight_ih, GN, N, N);
    sl.wih = PackedMatrix<T>::rows(w.weight_ih, GN, N, N);
    sl.pbias.assign(GN, T(0));
    for (std::size_t c = 0; c < GN; ++c) {  // as project_inputs
      if (w.bias_ih) sl.pbias[c] += w.bias_ih[c];
      if (w.bias_hh && cell_folds_bias_hh(w.kind)) sl.pbias[c] += w.bias_hh[c];
    }
  }
  return m;
}

template <class T>
std::size_t TangentModel<T>::layer_cache() const {
  return cell_cache_units(w_.kind) * w_.hidden;
}

template <class T>
std::size_t TangentModel<T>::in_dim(std::size_t s) const {
  if (dense_) return layers_[s].in;
  if (!stack_.empty()) return stack_.size() * layer_state();
  return cell_state_parts(w_.kind) * w_.hidden;
}

template <class T>
std::size_t TangentModel<T>::out_dim(std::size_t s) const {
  if (dense_) return layers_[s].out;
  if (!stack_.empty()) return stack_.size() * layer_state();
  return cell_state_parts(w_.kind) * w_.hidden;
}

template <class T>
std::size_t TangentModel<T>::gemm_cols(std::size_t s) const {
  if (dense_) return layers_[s].out * (layers_[s].block == DenseBlock::highway ? 2 : 1);
  if (!stack_.empty()) return (stack_.size() + 2) * cell_gates(w_.kind) * w_.hidden;
  return cell_gates(w_.kind) * w_.hidden;
}

template <class T>
std::size_t TangentModel<T>::cache_size(std::size_t s) const {
  if (dense_) return dense_offsets(layers_[s]).size;
  if (!stack_.empty()) return stack_.size() * layer_cache();
  return layer_cache();
}

// ---- forward ------------------------------------------------------------------------------

template <class T>
void TangentModel<T>::project_inputs(const T* x, std::size_t rows, T* P) const {
  const std::size_t GN = proj_cols(), I = w_.input_size;
  std::vector<T> bias(GN, T(0));
  const bool gru = w_.kind == CellKind::gru;
  for (std::size_t c = 0; c < GN; ++c) {
    if (w_.bias_ih) bias[c] += w_.bias_ih[c];
    if (w_.bias_hh && !gru) bias[c] += w_.bias_hh[c];  // GRU: b_hh sits inside r * (...)
  }
  for (std::size_t r = 0; r < rows; ++r) std::copy(bias.begin(), bias.end(), P + r * GN);
  blas::gemm(Op::N, Op::T, rows, GN, I, T(1), x, I, w_.weight_ih, I, T(1), P, GN);
}

template <class T>
void TangentModel<T>::gemm_rows(std::size_t s, const T* X, std::size_t ldx, std::size_t rows, T* U,
                                std::size_t ldu) const {
  if (rows == 0) return;
  if (dense_) {
    const auto& ly = layers_[s];
    blas::gemm(Op::N, Op::T, rows, ly.out, ly.in, T(1), X, ldx, ly.weight, ly.in, T(0), U, ldu);
    if (ly.block == DenseBlock::highway)
      blas::gemm(Op::N, Op::T, rows, ly.out, ly.in, T(1), X, ldx, ly.gate_weight, ly.in, T(0),
                 U + ly.out, ldu);
    return;
  }
  if (!stack_.empty()) {
    const std::size_t GN = proj_cols(), ls = layer_state();
    for (std::size_t l = 0; l < stack_.size(); ++l)
      gemm_packed(rows, X + l * ls, ldx, sl_[l].whh_t, T(0), U + l * GN, ldu);
    return;
  }
  gemm_packed(rows, X, ldx, whh_t_, T(0), U, ldu);
}

template <class T>
void TangentModel<T>::state_update(std::size_t s, const T* proj, T* U, std::size_t ldu, const T* X,
                                   std::size_t ldx, T* Y, std::size_t ldy, T* cache,
                                   std::size_t nb) const {
  if (!stack_.empty()) return stack_step(proj, U, ldu, X, ldx, Y, ldy, nb, cache, 0, 0, nullptr);
  const std::size_t C = cache_size(s);
  if (!dense_) {
    const std::size_t N = w_.hidden, GN = proj_cols();
    for (std::size_t b = 0; b < nb; ++b) {
      const T* u = U + b * ldu;
      const T* p = proj + b * GN;
      const T* h = X + b * ldx;
      T* y = Y + b * ldy;
      T* c = cache + b * C;
      cell_state_row(w_.kind, act_, p, u, w_.bias_hh, h, y, c, N);
    }
    return;
  }
  const DenseLayer<T>& ly = layers_[s];
  const DenseOffsets off = dense_offsets(ly);
  const std::size_t n = ly.out;
  for (std::size_t b = 0; b < nb; ++b) {
    const T* u = U + b * ldu;
    const T* h = X + b * ldx;
    T* y = Y + b * ldy;
    T* c = cache + b * C;
    T* z = c + off.dphi;  // z, then z', then phi'(z') in place
    for (std::size_t j = 0; j < n; ++j) z[j] = u[j] + (ly.bias ? ly.bias[j] : T(0));
    if (ly.norm == DenseNorm::layernorm) {
      layers::layernorm_forward_rows(ly.norm_weight, ly.norm_bias, ly.eps, z, c + off.xhat,
                                     c + off.istd, 1, n);
    } else if (ly.norm == DenseNorm::batchnorm_eval) {
      for (std::size_t j = 0; j < n; ++j)
        z[j] = layers::batchnorm_eval_unit(z[j], ly.running_mean[j], running_istd(ly, j),
                                           ly.norm_weight ? ly.norm_weight[j] : T(1),
                                           ly.norm_bias ? ly.norm_bias[j] : T(0))
                   .z;
    }
    activation_forward(ly.act, z, y, z, n);  // y = a = phi(z'), z <- phi'(z')
    if (ly.block == DenseBlock::residual) {
      layers::residual_forward_row(h, static_cast<T>(ly.alpha), y, n);
    } else if (ly.block == DenseBlock::highway) {
      T* t = c + off.t;
      T* amh = c + off.amh;
      for (std::size_t j = 0; j < n; ++j) {
        const auto hw =
            layers::highway_forward(u[n + j] + (ly.gate_bias ? ly.gate_bias[j] : T(0)), y[j], h[j]);
        t[j] = hw.vt;
        amh[j] = y[j] - h[j];
        y[j] = hw.h;
      }
    }
  }
}

// ---- JVP / VJP ----------------------------------------------------------------------------

template <class T>
void TangentModel<T>::tangent_update(std::size_t s, const T* cache, T* U, std::size_t ldu,
                                     const T* Vin, std::size_t ldv, T* Vout, std::size_t ldo,
                                     std::size_t k) const {
  if (!stack_.empty())
    return stack_step(nullptr, U, ldu, Vin, ldv, Vout, ldo, 0, nullptr, 1, k, cache);
  if (!dense_) {
    const std::size_t N = w_.hidden;
    for (std::size_t r = 0; r < k; ++r) {
      const T* u = U + r * ldu;
      const T* v = Vin + r * ldv;
      T* o = Vout + r * ldo;
      cell_tangent_row<T>(w_.kind, cache, u, nullptr, v, o, N);
    }
    return;
  }
  const DenseLayer<T>& ly = layers_[s];
  const DenseOffsets off = dense_offsets(ly);
  const std::size_t n = ly.out;
  const T* dphi = cache + off.dphi;
  for (std::size_t r = 0; r < k; ++r) {
    const T* u = U + r * ldu;
    const T* v = Vin + r * ldv;
    T* o = Vout + r * ldo;
    const T* base = u;
    if (ly.norm == DenseNorm::layernorm) {
      layers::layernorm_jvp_row(ly.norm_weight, cache + off.xhat, cache[off.istd], u, o, n);
      base = o;
    } else if (ly.norm == DenseNorm::batchnorm_eval) {
      for (std::size_t j = 0; j < n; ++j)
        o[j] = layers::batchnorm_eval_jvp(ly.norm_weight ? ly.norm_weight[j] : T(1),
                                          running_istd(ly, j), u[j]);
      base = o;
    }
    if (ly.block == DenseBlock::plain) {
      for (std::size_t j = 0; j < n; ++j) o[j] = layers::plain_jvp(dphi[j], base[j]);
    } else if (ly.block == DenseBlock::residual) {
      const T alpha = static_cast<T>(ly.alpha);
      for (std::size_t j = 0; j < n; ++j)
        o[j] = layers::residual_jvp(v[j], dphi[j], base[j], alpha);
    } else {
      const T* t = cache + off.t;
      const T* amh = cache + off.amh;
      for (std::size_t j = 0; j < n; ++j)
        o[j] = layers::highway_jvp(t[j], dphi[j], base[j], v[j], amh[j], u[n + j]);
    }
  }
}

template <class T>
void TangentModel<T>::jvp(std::size_t s, const T* cache, const T* Vin, T* Vout, std::size_t k,
                          T* U) const {
  const std::size_t gc = gemm_cols(s);
  gemm_rows(s, Vin, in_dim(s), k, U, gc);
  tangent_update(s, cache, U, gc, Vin, in_dim(s), Vout, out_dim(s), k);
}

template <class T>
void TangentModel<T>::vjp(std::size_t s, const T* cache, const T* Win, T* Wout, std::size_t k,
                          T* G) const {
  const std::size_t gc = gemm_cols(s), din = in_dim(s), dout = out_dim(s);
  if (k == 0) return;
  if (!stack_.empty()) return stack_vjp(cache, Win, Wout, k, G);
  if (!dense_) {
    const std::size_t N = w_.hidden;
    for (std::size_t r = 0; r < k; ++r) {
      const T* w = Win + r * dout;
      T* g = G + r * gc;
      T* o = Wout + r * din;
      cell_vjp_row<T>(w_.kind, cache, w, w + N, g, nullptr, o, N);
    }
    // h part of the result: G W_hh (+ the direct GRU term already in Wout).
    const T beta = w_.kind == CellKind::gru ? T(1) : T(0);
    gemm_packed(k, G, gc, whh_, beta, Wout, din);
    return;
  }
  const DenseLayer<T>& ly = layers_[s];
  const DenseOffsets off = dense_offsets(ly);
  const std::size_t n = ly.out;
  const T* dphi = cache + off.dphi;
  for (std::size_t r = 0; r < k; ++r) {
    const T* w = Win + r * dout;
    T* g = G + r * gc;
    T* o = Wout + r * din;
    if (ly.block == DenseBlock::plain) {
      for (std::size_t j = 0; j < n; ++j) g[j] = layers::plain_jvp(dphi[j], w[j]);
    } else if (ly.block == DenseBlock::residual) {
      const T alpha = static_cast<T>(ly.alpha);
      for (std::size_t j = 0; j < n; ++j) {
        g[j] = layers::residual_vjp(dphi[j], w[j], alpha);
        o[j] = w[j];
      }
    } else {
      const T* t = cache + off.t;
      const T* amh = cache + off.amh;
      for (std::size_t j = 0; j < n; ++j) {
        const auto d = layers::highway_vjp(t[j], dphi[j], amh[j], w[j]);
        g[j] = d.dz;
        g[n + j] = d.dgate;
        o[j] = d.carry;
      }
    }
    if (ly.norm == DenseNorm::layernorm)
      layers::layernorm_vjp_row(ly.norm_weight, cache + off.xhat, cache[off.istd], g, n);
    if (ly.norm == DenseNorm::batchnorm_eval)
      for (std::size_t j = 0; j < n; ++j)
        g[j] = layers::batchnorm_eval_jvp(ly.norm_weight ? ly.norm_weight[j] : T(1),
                                          running_istd(ly, j), g[j]);
  }
  const T beta = ly.block == DenseBlock::plain ? T(0) : T(1);
  blas::gemm(Op::N, Op::N, k, ly.in, n, T(1), G, gc, ly.weight, ly.in, beta, Wout, din);
  if (ly.block == DenseBlock::highway)
    blas::gemm(Op::N, Op::N, k, ly.in, n, T(1), G + n, gc, ly.gate_weight, ly.in, T(1), Wout, din);
}

template <class T>
void TangentModel<T>::jacobian(std::size_t s, const T* cache, T* J, T* U) const {
  const std::size_t din = in_dim(s), gc = gemm_cols(s);
  if (!stack_.empty()) {  // the JVP of the identity (the blocks below the diagonal need GEMMs)
    std::vector<T> eye(din * din, T(0));
    for (std::size_t j = 0; j < din; ++j) eye[j * din + j] = T(1);
    jvp(s, cache, eye.data(), J, din, U);
    return;
  }
  // The GEMM of the identity rows is W^T: U[j, c] = W[c, j] (zero for an LSTM's c rows).
  std::fill(U, U + din * gc, T(0));
  if (dense_) {
    const auto& ly = layers_[s];
    for (std::size_t c = 0; c < ly.out; ++c)
      for (std::size_t j = 0; j < ly.in; ++j) {
        U[j * gc + c] = ly.weight[c * ly.in + j];
        if (ly.block == DenseBlock::highway) U[j * gc + ly.out + c] = ly.gate_weight[c * ly.in + j];
      }
  } else {
    const std::size_t N = w_.hidden;
    for (std::size_t c = 0; c < gc; ++c)
      for (std::size_t j = 0; j < N; ++j) U[j * gc + c] = w_.weight_hh[c * N + j];
  }
  std::vector<T> eye(din * din, T(0));
  for (std::size_t j = 0; j < din; ++j) eye[j * din + j] = T(1);
  tangent_update(s, cache, U, gc, eye.data(), din, J, out_dim(s), din);
}

// ---- recurrent stack ----------------------------------------------------------------------

template <class T>
void TangentModel<T>::stack_step(const T* proj, T* U, std::size_t ldu, const T* X, std::size_t ldx,
                                 T* Y, std::size_t ldy, std::size_t ns, T* cache_w, std::size_t nt,
                                 std::size_t k, const T* cache_r) const {
  const std::size_t L = stack_.size(), N = w_.hidden, GN = proj_cols(), ls = layer_state(),
                    Cl = layer_cache(), C = L * Cl, rows = ns + nt * k;
  if (rows == 0) return;
  const CellKind kind = w_.kind;
  const bool gru = kind == CellKind::gru;
  T* A = U + L * GN;  // GRU: the input projection of layer l > 0
  for (std::size_t l = 0; l < L; ++l) {
    T* Ul = U + l * GN;
    const T* p = proj;  // the state rows' input projection, row stride ldp
    std::size_t ldp = GN;
    if (l > 0) {
      // The new h^{l-1} (states) and its tangents times W_ih_l^T: into U_l, except for a GRU,
      // whose n gate takes the input outside r * (...).
      const auto& sl = sl_[l];
      if (gru) {
        gemm_packed(rows, Y + (l - 1) * ls, ldy, sl.wih_t, T(0), A, ldu);
        for (std::size_t b = 0; b < ns; ++b) add_row(sl.pbias.data(), A + b * ldu, GN);
        p = A;
        ldp = ldu;
      } else {
        gemm_packed(rows, Y + (l - 1) * ls, ldy, sl.wih_t, T(1), Ul, ldu);
        p = sl.pbias.data();
        ldp = 0;
      }
    }
    const T* bhh = stack_[l].bias_hh;
    for (std::size_t b = 0; b < ns; ++b) {
      const T* pb = p + b * ldp;
      const T* u = Ul + b * ldu;
      const T* h = X + b * ldx + l * ls;
      T* y = Y + b * ldy + l * ls;
      T* c = cache_w + b * C + l * Cl;
      cell_state_row(kind, act_, pb, u, bhh, h, y, c, N);
    }
    for (std::size_t g = 0; g < nt; ++g) {
      const T* c = cache_r + g * C + l * Cl;
      for (std::size_t r = 0; r < k; ++r) {
        const std::size_t row = ns + g * k + r;
        const T* u = Ul + row * ldu;
        const T* v = X + row * ldx + l * ls;
        T* o = Y + row * ldy + l * ls;
        cell_tangent_row<T>(kind, c, u, gru && l > 0 ? A + row * ldu : nullptr, v, o, N);
      }
    }
  }
}

// Cotangents run down the stack: layer l's new h receives Win's part plus what layer l + 1's
// input projection sends back (G_in W_ih_{l+1}).
template <class T>
void TangentModel<T>::stack_vjp(const T* cache, const T* Win, T* Wout, std::size_t k, T* G) const {
  const std::size_t L = stack_.size(), N = w_.hidden, GN = proj_cols(), ls = layer_state(),
                    Cl = layer_cache(), gc = gemm_cols(0), D = in_dim(0);
  const CellKind kind = w_.kind;
  const bool gru = kind == CellKind::gru;
  T* A = G + L * GN;          // GRU: the cotangent of layer l's input projection
  T* acc = G + (L + 1) * GN;  // the cotangent of layer l's new h (N)
  for (std::size_t l = L; l-- > 0;) {
    T* Gl = G + l * GN;
    for (std::size_t r = 0; r < k; ++r)
      std::copy(Win + r * D + l * ls, Win + r * D + l * ls + N, acc + r * gc);
    if (l + 1 < L) gemm_packed(k, gru ? A : G + (l + 1) * GN, gc, sl_[l + 1].wih, T(1), acc, gc);
    const T* c = cache + l * Cl;
    for (std::size_t r = 0; r < k; ++r) {
      const T* w = acc + r * gc;
      T* g = Gl + r * gc;
      T* o = Wout + r * D + l * ls;
      cell_vjp_row<T>(kind, c, w, Win + r * D + l * ls + N, g, gru && l > 0 ? A + r * gc : nullptr,
                      o, N);
    }
    gemm_packed(k, Gl, gc, sl_[l].whh, gru ? T(1) : T(0), Wout + l * ls, D);
  }
}

// ---- block step ---------------------------------------------------------------------------

template <class T>
void advance(const TangentModel<T>& m, std::size_t s, const T* proj, const T* X, T* Y,
             std::size_t nb, std::size_t k, StepScratch<T>& ws) {
  const std::size_t din = m.in_dim(s), dout = m.out_dim(s), gc = m.gemm_cols(s),
                    C = m.cache_size(s), rows = nb * (k + 1);
  if (ws.U.size() < rows * gc) ws.U.resize(rows * gc);
  if (ws.cache.size() < nb * C) ws.cache.resize(nb * C);
  T* U = ws.U.data();
  T* cache = ws.cache.data();
  m.gemm_rows(s, X, din, rows, U, gc);
  if (m.stacked()) {  // layer by layer on all rows: one GEMM per weight per layer
    m.stack_step(proj, U, gc, X, din, Y, dout, nb, cache, nb, k, cache);
    return;
  }
  m.state_update(s, proj, U, gc, X, din, Y, dout, cache, nb);
  if (k == 0) return;
  for (std::size_t b = 0; b < nb; ++b) {
    const std::size_t r0 = nb + b * k;
    m.tangent_update(s, cache + b * C, U + r0 * gc, gc, X + r0 * din, din, Y + r0 * dout, dout, k);
  }
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

template class TangentModel<float>;
template class TangentModel<double>;
template void advance<float>(const TangentModel<float>&, std::size_t, const float*, const float*,
                             float*, std::size_t, std::size_t, StepScratch<float>&);
template void advance<double>(const TangentModel<double>&, std::size_t, const double*,
                              const double*, double*, std::size_t, std::size_t,
                              StepScratch<double>&);
template bool all_finite<float>(const float*, std::size_t);
template bool all_finite<double>(const double*, std::size_t);

}  // namespace vgcore

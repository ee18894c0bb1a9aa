// The recurrent layers' op (model.hpp): forward, tangent and cotangent rows of one RNN, LSTM or
// GRU layer, calling the cells' formulas (layers/{rnn,lstm,gru}.hpp). Each cell contributes one
// CellRows specialisation (its three row loops); the layer loop around them is shared.
#include <algorithm>
#include <vector>

#include "vgcore/base/blas.hpp"
#include "vgcore/base/fastmath.hpp"
#include "vgcore/base/gates.hpp"
#include "vgcore/layers/gru.hpp"
#include "vgcore/layers/lstm.hpp"
#include "vgcore/layers/rnn.hpp"
#include "vgcore/model/model.hpp"

namespace vgcore {
namespace {

using blas::Op;

// ---- row loops (one sample, N units), calling the cells' formulas (layers/) ----------------

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

// ---- one cell's rows: state (p the input projection, u = h W_hh^T, bhh a GRU's b_hh), tangent
// (u = v_h W_hh^T, plus the input's tangent for non-GRU layers reading a layer below; dp: a GRU
// layer's input tangent projection, outside r * (...), else null) and cotangent (w the h part,
// wc an LSTM's c part -> g, which multiplies W_hh, and the direct parts into o; gin: a GRU
// layer's input-projection cotangent, else null) -------------------------------------------

template <class Cell>
struct CellRows;

template <>
struct CellRows<RnnCell> {
  template <class T>
  static void state(const Activation& act, const T* p, const T* u, const T*, const T*, T* y, T* c,
                    std::size_t N) {
    for (std::size_t j = 0; j < N; ++j) c[j] = p[j] + u[j];
    activation_forward(act, c, y, c, N);
  }
  template <class T>
  static void tangent(const T* c, const T* u, const T*, const T*, T* o, std::size_t N) {
    scale_row(c, u, o, N);
  }
  template <class T>
  static void cotangent(const T* c, const T* w, const T*, T* g, T*, T*, std::size_t N) {
    scale_row(c, w, g, N);
  }
};

template <>
struct CellRows<LstmCell> {
  template <class T>
  static void state(const Activation&, const T* p, const T* u, const T*, const T* h, T* y, T* c,
                    std::size_t N) {
    lstm_state_row(p, u, h + N, y, y + N, c, N);
  }
  template <class T>
  static void tangent(const T* c, const T* u, const T*, const T* v, T* o, std::size_t N) {
    lstm_tangent_row(c, u, v + N, o, o + N, N);
  }
  template <class T>
  static void cotangent(const T* c, const T* w, const T* wc, T* g, T*, T* o, std::size_t N) {
    lstm_vjp_row(c, w, wc, g, o + N, N);
  }
};

template <>
struct CellRows<GruCell> {
  template <class T>
  static void state(const Activation&, const T* p, const T* u, const T* bhh, const T* h, T* y, T* c,
                    std::size_t N) {
    gru_state_row(p, u, bhh, h, y, c, N);
  }
  template <class T>
  static void tangent(const T* c, const T* u, const T* dp, const T* v, T* o, std::size_t N) {
    if (dp)
      gru_tangent_row_in(c, u, dp, v, o, N);
    else
      gru_tangent_row(c, u, v, o, N);
  }
  template <class T>
  static void cotangent(const T* c, const T* w, const T*, T* g, T* gin, T* o, std::size_t N) {
    if (gin)
      gru_vjp_row_in(c, w, g, gin, o, N);
    else
      gru_vjp_row(c, w, g, o, N);
  }
};

// The input projection's biases: b_ih, plus b_hh where it folds (a GRU's b_hh sits inside
// r * (...)).
template <class T, class Cell>
std::vector<T> projection_bias(const RecurrentWeights<T>& w) {
  const std::size_t GN = Cell::gates * w.hidden;
  std::vector<T> bias(GN, T(0));
  for (std::size_t c = 0; c < GN; ++c) {
    if (w.bias_ih) bias[c] += w.bias_ih[c];
    if (w.bias_hh && !Cell::input_outside) bias[c] += w.bias_hh[c];
  }
  return bias;
}

}  // namespace

template <class T, class Cell>
RecurrentOp<T, Cell>::RecurrentOp(const RecurrentWeights<T>& w, bool reads_below)
    : w_(w), act_(make_activation(cell_activation(w.kind))) {
  const std::size_t N = w.hidden, GN = Cell::gates * N;
  whh_t_ = PackedMatrix<T>::transposed(w.weight_hh, GN, N, N);
  whh_ = PackedMatrix<T>::rows(w.weight_hh, GN, N, N);
  if (!reads_below) return;
  wih_t_ = PackedMatrix<T>::transposed(w.weight_ih, GN, N, N);
  wih_ = PackedMatrix<T>::rows(w.weight_ih, GN, N, N);
  pbias_ = projection_bias<T, Cell>(w);
}

template <class T, class Cell>
void RecurrentOp<T, Cell>::project_inputs(const T* x, std::size_t rows, T* P) const {
  const std::size_t GN = gemm_cols(), I = w_.input_size;
  const std::vector<T> bias = projection_bias<T, Cell>(w_);
  for (std::size_t r = 0; r < rows; ++r) std::copy(bias.begin(), bias.end(), P + r * GN);
  blas::gemm(Op::N, Op::T, rows, GN, I, T(1), x, I, w_.weight_ih, I, T(1), P, GN);
}

template <class T, class Cell>
void RecurrentOp<T, Cell>::gemm_rows(std::size_t rows, const T* X, std::size_t ldx, T* U,
                                     std::size_t ldu) const {
  gemm_packed(rows, X, ldx, whh_t_, T(0), U, ldu);
}

template <class T, class Cell>
void RecurrentOp<T, Cell>::step(const LayerRows<T>& r) const {
  const std::size_t N = w_.hidden, GN = gemm_cols(), rows = r.ns + r.nt * r.k;
  const T* p = r.proj;  // the state rows' input projection, row stride ldp
  std::size_t ldp = r.ldp;
  const bool in_dp = Cell::input_outside && r.below;
  if (r.below) {
    // The new h of the layer below (states) and its tangents times W_ih^T: into U, except for a
    // GRU, whose n gate takes the input outside r * (...).
    if (Cell::input_outside) {
      gemm_packed(rows, r.below, r.ldy, wih_t_, T(0), r.A, r.ldu);
      for (std::size_t b = 0; b < r.ns; ++b) add_row(pbias_.data(), r.A + b * r.ldu, GN);
      p = r.A;
      ldp = r.ldu;
    } else {
      gemm_packed(rows, r.below, r.ldy, wih_t_, T(1), r.U, r.ldu);
      p = pbias_.data();
      ldp = 0;
    }
  }
  for (std::size_t b = 0; b < r.ns; ++b)
    CellRows<Cell>::state(act_, p + b * ldp, r.U + b * r.ldu, w_.bias_hh, r.X + b * r.ldx,
                          r.Y + b * r.ldy, r.cache_w + b * r.ldc, N);
  for (std::size_t g = 0; g < r.nt; ++g) {
    const T* c = r.cache_r + g * r.ldc;
    for (std::size_t i = 0; i < r.k; ++i) {
      const std::size_t row = r.ns + g * r.k + i;
      CellRows<Cell>::tangent(c, r.U + row * r.ldu, in_dp ? r.A + row * r.ldu : nullptr,
                              r.X + row * r.ldx, r.Y + row * r.ldy, N);
    }
  }
}

template <class T, class Cell>
void RecurrentOp<T, Cell>::vjp(const LayerCotangent<T>& c) const {
  const std::size_t N = w_.hidden;
  for (std::size_t r = 0; r < c.k; ++r)
    CellRows<Cell>::cotangent(c.cache, c.w + r * c.ldw, c.wstate + r * c.lds + N, c.G + r * c.ldg,
                              c.gin ? c.gin + r * c.ldg : nullptr, c.o + r * c.ldo, N);
  // h part of the result: G W_hh (+ the direct GRU term already in o).
  gemm_packed(c.k, c.G, c.ldg, whh_, Cell::input_outside ? T(1) : T(0), c.o, c.ldo);
}

template <class T, class Cell>
void RecurrentOp<T, Cell>::input_vjp(std::size_t k, const T* G, const T* gin, std::size_t ldg,
                                     T* acc, std::size_t lda) const {
  gemm_packed(k, Cell::input_outside ? gin : G, ldg, wih_, T(1), acc, lda);
}

template <class T, class Cell>
void RecurrentOp<T, Cell>::jacobian(const T* cache, T* J, T* U) const {
  const std::size_t N = w_.hidden, din = in_dim(), gc = gemm_cols();
  // The GEMM of the identity rows is W_hh^T: U[j, c] = W_hh[c, j] (zero for an LSTM's c rows).
  std::fill(U, U + din * gc, T(0));
  for (std::size_t c = 0; c < gc; ++c)
    for (std::size_t j = 0; j < N; ++j) U[j * gc + c] = w_.weight_hh[c * N + j];
  std::vector<T> eye(din * din, T(0));
  for (std::size_t j = 0; j < din; ++j) eye[j * din + j] = T(1);
  LayerRows<T> r;
  r.U = U;
  r.ldu = gc;
  r.X = eye.data();
  r.ldx = din;
  r.Y = J;
  r.ldy = out_dim();
  r.nt = 1;
  r.k = din;
  r.cache_r = cache;
  step(r);
}

template class RecurrentOp<float, RnnCell>;
template class RecurrentOp<double, RnnCell>;
template class RecurrentOp<float, LstmCell>;
template class RecurrentOp<double, LstmCell>;
template class RecurrentOp<float, GruCell>;
template class RecurrentOp<double, GruCell>;

}  // namespace vgcore

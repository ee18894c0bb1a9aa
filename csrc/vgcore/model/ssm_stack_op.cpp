// A stack of state-space blocks over time (model.hpp's SsmStackOp). Per step and block l, on
// every row (state rows: the stream starts at x_t; tangent rows: at 0):
//   v = LayerNorm(u) (or u),  p = the layer's input projection of v,  the layer's step,
//   y = its output (LTI: C h' + D v; selective: out_proj((C_t h' + D xc) silu(z))),
//   u = u + y (residual) or y.
// A VJP runs the blocks top down with the stream's cotangent gu: block l's new state receives
// what the stream's cotangent sends through its output (its total cotangent), its input v
// returns gv to the stream below. The layers' state maths is theirs (ssm_op.cpp and the
// headers); the output and LayerNorm formulas are the headers'.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "vgcore/base/blas.hpp"
#include "vgcore/layers/layernorm.hpp"
#include "vgcore/layers/selective_ssm.hpp"
#include "vgcore/model/model.hpp"

namespace vgcore {
namespace {

using blas::Op;

template <class T>
std::size_t layer_input_size(const SsmWeights<T>& w) {
  return w.input_size;
}
template <class T>
std::size_t layer_input_size(const SelectiveSsmWeights<T>& w) {
  return w.d_model;
}

// The selective layer's cached output quantities per sample: y before the gate (d_inner),
// silu'(z) (d_inner), the new h (d_inner d_state).
template <class T>
std::size_t selective_output_cache(const SelectiveSsmWeights<T>& w) {
  return 2 * w.d_inner + w.d_inner * w.d_state;
}

}  // namespace

template <class T>
SsmStackOp<T>::SsmStackOp(const std::vector<SsmBlockWeights<T>>& blocks) {
  if (blocks.empty()) throw std::invalid_argument("the state-space stack has no blocks");
  d_ = std::visit([](const auto& w) { return layer_input_size(w); }, blocks[0].layer);
  std::size_t P = 0, G = 0, W = 0, E = 0, S = 0;
  for (std::size_t l = 0; l < blocks.size(); ++l) {
    const auto& bw = blocks[l];
    const std::string name = "block " + std::to_string(l);
    const std::size_t d = std::visit([](const auto& w) { return layer_input_size(w); }, bw.layer);
    if (d != d_)
      throw std::invalid_argument(name + " has " + std::to_string(d) + " features, block 0 has " +
                                  std::to_string(d_) + " (a stack keeps the stream's width)");
    Block b{std::visit(
                [](const auto& w) -> std::variant<SsmOp<T>, SelectiveSsmOp<T>> {
                  using W = std::decay_t<decltype(w)>;
                  if constexpr (std::is_same_v<W, SsmWeights<T>>)
                    return SsmOp<T>(w);
                  else
                    return SelectiveSsmOp<T>(w);
                },
                bw.layer),
            bw};
    b.so = dim_;
    b.cn = cache_;
    cache_ += bw.norm ? d_ + 1 : 0;
    b.cl = cache_;
    std::visit(
        [&](const auto& op) {
          dim_ += op.out_dim();
          cache_ += op.cache_size();
          P = std::max(P, op.proj_cols());
          S = std::max(S, op.gemm_cols());
          W = std::max(W, op.out_dim());
        },
        b.op);
    b.ce = cache_;
    if (const auto* sw = std::get_if<SelectiveSsmWeights<T>>(&bw.layer)) {
      cache_ += selective_output_cache(*sw);
      G = std::max(G, sw->d_inner);
      E = std::max(E, sw->d_state + sw->d_inner);
    }
    blocks_.push_back(std::move(b));
  }
  ov_ = d_;
  op_ = ov_ + d_;
  oy_ = op_ + P;
  og_ = oy_ + d_;
  ow_ = og_ + G;
  oc_ = ow_ + W;  // per row: the output's cotangent of C (d_state), then of xc (d_inner)
  os_ = oc_ + E;
  cols_ = os_ + S;
}

template <class T>
void SsmStackOp<T>::project_inputs(const T* x, std::size_t rows, T* P) const {
  std::copy(x, x + rows * d_, P);
}

template <class T>
void SsmStackOp<T>::step(const LayerRows<T>& r) const {
  const std::size_t rows = r.ns + r.nt * r.k, d = d_, ld = r.ldu;
  T* U = r.U;
  for (std::size_t b = 0; b < rows; ++b) {
    T* u = U + b * ld;
    if (b < r.ns)
      std::copy(r.proj + b * r.ldp, r.proj + b * r.ldp + d, u);
    else
      std::fill(u, u + d, T(0));
  }
  // The sample's cache of tangent row `row` (rows past ns), and a state row's own.
  const auto tcache = [&](std::size_t row) { return r.cache_r + ((row - r.ns) / r.k) * r.ldc; };
  for (const Block& bl : blocks_) {
    const SsmBlockWeights<T>& bw = bl.w;
    // v
    for (std::size_t b = 0; b < rows; ++b) {
      const T* u = U + b * ld;
      T* v = U + b * ld + ov_;
      if (!bw.norm) {
        std::copy(u, u + d, v);
      } else if (b < r.ns) {
        T* c = r.cache_w + b * r.ldc + bl.cn;
        std::copy(u, u + d, v);
        layers::layernorm_forward_rows(bw.norm_weight, bw.norm_bias, bw.eps, v, c, c + d,
                                       std::size_t(1), d);
      } else {
        const T* c = tcache(b) + bl.cn;
        layers::layernorm_jvp_row(bw.norm_weight, c, c[d], u, v, d);
      }
    }
    LayerRows<T> lr;
    lr.proj = U + op_;
    lr.ldp = ld;
    lr.tproj = r.nt ? U + r.ns * ld + op_ : nullptr;
    lr.U = U + os_;
    lr.ldu = ld;
    lr.X = r.X + bl.so;
    lr.ldx = r.ldx;
    lr.Y = r.Y + bl.so;
    lr.ldy = r.ldy;
    lr.ns = r.ns;
    lr.nt = r.nt;
    lr.k = r.k;
    lr.cache_w = r.cache_w ? r.cache_w + bl.cl : nullptr;
    lr.cache_r = r.cache_r ? r.cache_r + bl.cl : nullptr;
    lr.ldc = r.ldc;
    T* y = U + oy_;
    if (const auto* op = std::get_if<SsmOp<T>>(&bl.op)) {
      const SsmWeights<T>& w = op->weights();
      const std::size_t S = w.state_dim();
      blas::gemm(Op::N, Op::T, rows, S, d, T(1), U + ov_, ld, w.B, d, T(0), U + op_, ld);
      op->step(lr);
      blas::gemm(Op::N, Op::T, rows, d, S, T(1), lr.Y, r.ldy, w.C, S, T(0), y, ld);
      if (w.D)
        for (std::size_t b = 0; b < rows; ++b)
          for (std::size_t j = 0; j < d; ++j) y[b * ld + j] += w.D[j] * U[b * ld + ov_ + j];
    } else {
      const auto& sop = std::get<SelectiveSsmOp<T>>(bl.op);
      const SelectiveSsmWeights<T>& w = sop.weights();
      const std::size_t di = w.d_inner, n = w.d_state, R = w.dt_rank, Sh = di * n;
      blas::gemm(Op::N, Op::T, rows, 2 * di, d, T(1), U + ov_, ld, w.in_proj_weight, d, T(0),
                 U + op_, ld);
      if (w.in_proj_bias)
        for (std::size_t b = 0; b < r.ns; ++b)
          for (std::size_t j = 0; j < 2 * di; ++j) U[b * ld + op_ + j] += w.in_proj_bias[j];
      sop.step(lr);
      T* gate = U + og_;
      for (std::size_t b = 0; b < rows; ++b) {
        const T* z = U + b * ld + op_ + di;
        T* g = gate + b * ld;
        const T* hn = lr.Y + b * r.ldy;  // the new h (state rows) or its tangent
        if (b < r.ns) {
          const layers::SelectiveCache<T, const T*> c(lr.cache_w + b * r.ldc, di, n);
          T* e = r.cache_w + b * r.ldc + bl.ce;
          for (std::size_t i = 0; i < di; ++i) {
            const T yp =
                layers::selective_output(hn + i * n, c.C, n) + (w.D ? w.D[i] * c.xc[i] : T(0));
            T sz, dsz;
            layers::silu_forward(z[i], sz, dsz);
            e[i] = yp;
            e[di + i] = dsz;
            g[i] = yp * sz;
          }
          std::copy(hn, hn + Sh, e + 2 * di);
        } else {
          const layers::SelectiveCache<T, const T*> c(tcache(b) + bl.cl, di, n);
          const T* e = tcache(b) + bl.ce;
          const T* uo = lr.U + b * ld;  // [dxc | d x_proj (dt, B, C) | d dt_proj]
          const T* dC = uo + di + R + n;
          for (std::size_t i = 0; i < di; ++i) {
            const T dy = layers::selective_output_jvp(e + 2 * di + i * n, c.C, hn + i * n, dC, n) +
                         (w.D ? w.D[i] * uo[i] : T(0));
            g[i] = layers::selective_gate_jvp(e[i], dy, c.gz[i], e[di + i], z[i]);
          }
        }
      }
      blas::gemm(Op::N, Op::T, rows, d, di, T(1), gate, ld, w.out_proj_weight, di, T(0), y, ld);
      if (w.out_proj_bias)
        for (std::size_t b = 0; b < r.ns; ++b)
          for (std::size_t j = 0; j < d; ++j) y[b * ld + j] += w.out_proj_bias[j];
    }
    for (std::size_t b = 0; b < rows; ++b) {
      T* u = U + b * ld;
      const T* yb = y + b * ld;
      if (bw.residual)
        for (std::size_t j = 0; j < d; ++j) u[j] += yb[j];
      else
        std::copy(yb, yb + d, u);
    }
  }
}

template <class T>
void SsmStackOp<T>::vjp(const LayerCotangent<T>& cv) const {
  const std::size_t k = cv.k, d = d_, ld = cv.ldg;
  T* G = cv.G;
  for (std::size_t r = 0; r < k; ++r) std::fill(G + r * ld, G + r * ld + d, T(0));
  for (std::size_t l = blocks_.size(); l-- > 0;) {
    const Block& bl = blocks_[l];
    const SsmBlockWeights<T>& bw = bl.w;
    T* gy = G + oy_;  // dL/dy = the stream's cotangent above the block
    T* wt = G + ow_;  // the total cotangent of the block's new state
    T* gv = G + ov_;
    const std::size_t S = std::visit([](const auto& op) { return op.out_dim(); }, bl.op);
    for (std::size_t r = 0; r < k; ++r) {
      std::copy(G + r * ld, G + r * ld + d, gy + r * ld);
      std::copy(cv.wstate + r * cv.lds + bl.so, cv.wstate + r * cv.lds + bl.so + S, wt + r * ld);
    }
    LayerCotangent<T> c;
    c.cache = cv.cache + bl.cl;
    c.wstate = c.w = wt;
    c.lds = c.ldw = ld;
    c.G = G + os_;
    c.ldg = ld;
    c.o = cv.o + bl.so;
    c.ldo = cv.ldo;
    c.k = k;
    if (const auto* op = std::get_if<SsmOp<T>>(&bl.op)) {
      const SsmWeights<T>& w = op->weights();
      blas::gemm(Op::N, Op::N, k, S, d, T(1), gy, ld, w.C, S, T(1), wt, ld);
      op->vjp(c);
      for (std::size_t r = 0; r < k; ++r)
        for (std::size_t j = 0; j < d; ++j) gv[r * ld + j] = w.D ? w.D[j] * gy[r * ld + j] : T(0);
      blas::gemm(Op::N, Op::N, k, d, S, T(1), wt, ld, w.B, d, T(1), gv, ld);
    } else {
      const auto& sop = std::get<SelectiveSsmOp<T>>(bl.op);
      const SelectiveSsmWeights<T>& w = sop.weights();
      const std::size_t di = w.d_inner, n = w.d_state;
      T* gg = G + og_;
      blas::gemm(Op::N, Op::N, k, di, d, T(1), gy, ld, w.out_proj_weight, di, T(0), gg, ld);
      const layers::SelectiveCache<T, const T*> cs(cv.cache + bl.cl, di, n);
      const T* e = cv.cache + bl.ce;
      T* gp = G + op_;
      for (std::size_t r = 0; r < k; ++r) {
        T* gC = G + r * ld + oc_;
        T* gxc = gC + n;
        std::fill(gC, gC + n, T(0));
        const T* g = gg + r * ld;
        for (std::size_t i = 0; i < di; ++i) {
          const T gyi = g[i] * cs.gz[i];
          gp[r * ld + di + i] = g[i] * e[i] * e[di + i];  // dL/dz
          layers::selective_output_vjp(e + 2 * di + i * n, cs.C, gyi, wt + r * ld + i * n, gC, n);
          gxc[i] = w.D ? gyi * w.D[i] : T(0);
        }
      }
      sop.vjp_in_stack(c, G + oc_, G + oc_ + n, ld, gp, ld);
      blas::gemm(Op::N, Op::N, k, d, 2 * di, T(1), gp, ld, w.in_proj_weight, d, T(0), gv, ld);
    }
    if (cv.total)
      for (std::size_t r = 0; r < k; ++r)
        std::copy(wt + r * ld, wt + r * ld + S, cv.total + r * cv.ldt + bl.so);
    for (std::size_t r = 0; r < k; ++r) {
      T* g = gv + r * ld;
      if (bw.norm) {
        const T* cn = cv.cache + bl.cn;
        layers::layernorm_vjp_row(bw.norm_weight, cn, cn[d], g, d);
      }
      T* gu = G + r * ld;
      if (bw.residual)
        for (std::size_t j = 0; j < d; ++j) gu[j] += g[j];
      else
        std::copy(g, g + d, gu);
    }
  }
}

template <class T>
void SsmStackOp<T>::jacobian(const T* cache, T* J, T* U) const {
  jacobian_as_jvp(*this, cache, J, U);
}

template class SsmStackOp<float>;
template class SsmStackOp<double>;

}  // namespace vgcore

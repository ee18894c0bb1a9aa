// The dense layer's op (model.hpp): forward, tangent and cotangent rows of one layer, calling
// the formulas of layers/{dense,layernorm,batchnorm,residual,highway}.hpp.
#include <algorithm>
#include <vector>

#include "vgcore/base/blas.hpp"
#include "vgcore/layers/dense.hpp"
#include "vgcore/layers/highway.hpp"
#include "vgcore/layers/layernorm.hpp"
#include "vgcore/layers/residual.hpp"
#include "vgcore/model/model.hpp"

namespace vgcore {
namespace {

using blas::Op;

// Cache offsets: [phi'(z')] + highway [t (encoded), a - h] + a norm's [xhat, 1/std].
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

template <class T>
std::size_t DenseOp<T>::cache_size() const {
  return dense_offsets(ly_).size;
}

template <class T>
void DenseOp<T>::gemm_rows(std::size_t rows, const T* X, std::size_t ldx, T* U,
                           std::size_t ldu) const {
  const auto& ly = ly_;
  blas::gemm(Op::N, Op::T, rows, ly.out, ly.in, T(1), X, ldx, ly.weight, ly.in, T(0), U, ldu);
  if (ly.block == DenseBlock::highway)
    blas::gemm(Op::N, Op::T, rows, ly.out, ly.in, T(1), X, ldx, ly.gate_weight, ly.in, T(0),
               U + ly.out, ldu);
}

template <class T>
void DenseOp<T>::step(const LayerRows<T>& r) const {
  const DenseLayer<T>& ly = ly_;
  const DenseOffsets off = dense_offsets(ly);
  const std::size_t n = ly.out;
  for (std::size_t b = 0; b < r.ns; ++b) {
    const T* u = r.U + b * r.ldu;
    const T* h = r.X + b * r.ldx;
    T* y = r.Y + b * r.ldy;
    T* c = r.cache_w + b * r.ldc;
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
  for (std::size_t g = 0; g < r.nt; ++g) {
    const T* cache = r.cache_r + g * r.ldc;
    const T* dphi = cache + off.dphi;
    for (std::size_t i = 0; i < r.k; ++i) {
      const std::size_t row = r.ns + g * r.k + i;
      const T* u = r.U + row * r.ldu;
      const T* v = r.X + row * r.ldx;
      T* o = r.Y + row * r.ldy;
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
}

template <class T>
void DenseOp<T>::vjp(const LayerCotangent<T>& c) const {
  const DenseLayer<T>& ly = ly_;
  const DenseOffsets off = dense_offsets(ly);
  const std::size_t n = ly.out;
  const T* dphi = c.cache + off.dphi;
  for (std::size_t r = 0; r < c.k; ++r) {
    const T* w = c.w + r * c.ldw;
    T* g = c.G + r * c.ldg;
    T* o = c.o + r * c.ldo;
    if (ly.block == DenseBlock::plain) {
      for (std::size_t j = 0; j < n; ++j) g[j] = layers::plain_jvp(dphi[j], w[j]);
    } else if (ly.block == DenseBlock::residual) {
      const T alpha = static_cast<T>(ly.alpha);
      for (std::size_t j = 0; j < n; ++j) {
        g[j] = layers::residual_vjp(dphi[j], w[j], alpha);
        o[j] = w[j];
      }
    } else {
      const T* t = c.cache + off.t;
      const T* amh = c.cache + off.amh;
      for (std::size_t j = 0; j < n; ++j) {
        const auto d = layers::highway_vjp(t[j], dphi[j], amh[j], w[j]);
        g[j] = d.dz;
        g[n + j] = d.dgate;
        o[j] = d.carry;
      }
    }
    if (ly.norm == DenseNorm::layernorm)
      layers::layernorm_vjp_row(ly.norm_weight, c.cache + off.xhat, c.cache[off.istd], g, n);
    if (ly.norm == DenseNorm::batchnorm_eval)
      for (std::size_t j = 0; j < n; ++j)
        g[j] = layers::batchnorm_eval_jvp(ly.norm_weight ? ly.norm_weight[j] : T(1),
                                          running_istd(ly, j), g[j]);
  }
  const T beta = ly.block == DenseBlock::plain ? T(0) : T(1);
  blas::gemm(Op::N, Op::N, c.k, ly.in, n, T(1), c.G, c.ldg, ly.weight, ly.in, beta, c.o, c.ldo);
  if (ly.block == DenseBlock::highway)
    blas::gemm(Op::N, Op::N, c.k, ly.in, n, T(1), c.G + n, c.ldg, ly.gate_weight, ly.in, T(1), c.o,
               c.ldo);
}

template <class T>
void DenseOp<T>::jacobian(const T* cache, T* J, T* U) const {
  const auto& ly = ly_;
  const std::size_t din = ly.in, gc = gemm_cols();
  // The GEMM of the identity rows is W^T: U[j, c] = W[c, j].
  std::fill(U, U + din * gc, T(0));
  for (std::size_t c = 0; c < ly.out; ++c)
    for (std::size_t j = 0; j < ly.in; ++j) {
      U[j * gc + c] = ly.weight[c * ly.in + j];
      if (ly.block == DenseBlock::highway) U[j * gc + ly.out + c] = ly.gate_weight[c * ly.in + j];
    }
  jacobian_as_jvp(*this, cache, J, U);
}

template class DenseOp<float>;
template class DenseOp<double>;

}  // namespace vgcore

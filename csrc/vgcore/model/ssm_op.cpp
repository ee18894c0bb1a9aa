// The state-space layers' ops (model.hpp): forward, tangent and cotangent rows of the diagonal
// LTI layer (layers/ssm.hpp) and of Mamba's selective layer (layers/selective_ssm.hpp). The
// diagonal structure is the speed: the LTI layer's step is a per-mode (complex) multiply, the
// selective layer's two GEMMs are its selection's (x_proj, dt_proj) on the rows' xc; neither
// multiplies the state by a dense matrix.
#include <algorithm>
#include <vector>

#include "vgcore/base/blas.hpp"
#include "vgcore/base/fastmath.hpp"
#include "vgcore/layers/selective_ssm.hpp"
#include "vgcore/layers/ssm.hpp"
#include "vgcore/model/model.hpp"

namespace vgcore {
namespace {

using blas::Op;

// o = a h + u over one row (u null: a tangent), real modes.
template <class T>
VGCORE_TARGET_CLONES void ssm_real_row(const T* __restrict a, const T* __restrict h,
                                       const T* __restrict u, T* __restrict o, std::size_t N) {
  if (u)
    for (std::size_t j = 0; j < N; ++j) o[j] = layers::ssm_real(a[j], h[j], u[j]);
  else
    for (std::size_t j = 0; j < N; ++j) o[j] = layers::ssm_real(a[j], h[j], T(0));
}

// The same for complex modes ((Re, Im) pairs).
template <class T>
VGCORE_TARGET_CLONES void ssm_complex_row(const T* __restrict a, const T* __restrict h,
                                          const T* __restrict u, T* __restrict o, std::size_t N) {
  for (std::size_t j = 0; j < N; ++j)
    layers::ssm_complex(a[2 * j], a[2 * j + 1], h[2 * j], h[2 * j + 1], u ? u[2 * j] : T(0),
                        u ? u[2 * j + 1] : T(0), o[2 * j], o[2 * j + 1]);
}

// Cotangent rows: g = conj(a) w.
template <class T>
VGCORE_TARGET_CLONES void ssm_vjp_row(const T* __restrict a, const T* __restrict w, T* __restrict g,
                                      std::size_t N, bool complex) {
  if (!complex) {
    for (std::size_t j = 0; j < N; ++j) g[j] = layers::ssm_real(a[j], w[j], T(0));
    return;
  }
  for (std::size_t j = 0; j < N; ++j)
    layers::ssm_complex_vjp(a[2 * j], a[2 * j + 1], w[2 * j], w[2 * j + 1], g[2 * j], g[2 * j + 1]);
}

// The selective layer's cache of one sample (selective_ssm.hpp's layout).
template <class T, class P>
struct SelCache {
  P a, h, delta, sig, xc, ds, gz, B, C;
  SelCache(P c, std::size_t di, std::size_t n)
      : a(c),
        h(c + di * n),
        delta(c + 2 * di * n),
        sig(delta + di),
        xc(delta + 2 * di),
        ds(delta + 3 * di),
        gz(delta + 4 * di),
        B(delta + 5 * di),
        C(delta + 5 * di + n) {}
};

}  // namespace

// ---- the diagonal LTI layer ---------------------------------------------------------------

template <class T>
void SsmOp<T>::project_inputs(const T* x, std::size_t rows, T* P) const {
  const std::size_t S = w_.state_dim(), d = w_.input_size;
  blas::gemm(Op::N, Op::T, rows, S, d, T(1), x, d, w_.B, d, T(0), P, S);
}

template <class T>
void SsmOp<T>::step(const LayerRows<T>& r) const {
  const std::size_t N = w_.modes, rows = r.ns + r.nt * r.k;
  for (std::size_t b = 0; b < rows; ++b) {
    const T* u = b < r.ns ? r.proj + b * r.ldp : nullptr;
    if (w_.complex)
      ssm_complex_row(w_.a, r.X + b * r.ldx, u, r.Y + b * r.ldy, N);
    else
      ssm_real_row(w_.a, r.X + b * r.ldx, u, r.Y + b * r.ldy, N);
  }
}

template <class T>
void SsmOp<T>::vjp(const LayerCotangent<T>& c) const {
  for (std::size_t r = 0; r < c.k; ++r)
    ssm_vjp_row(w_.a, c.wstate + r * c.lds, c.o + r * c.ldo, w_.modes, w_.complex);
}

template <class T>
void SsmOp<T>::jacobian(const T*, T* J, T*) const {
  const std::size_t S = w_.state_dim();
  std::fill(J, J + S * S, T(0));
  if (!w_.complex) {
    for (std::size_t j = 0; j < S; ++j) J[j * S + j] = w_.a[j];
    return;
  }
  for (std::size_t n = 0; n < w_.modes; ++n) {  // column-major: J[col * S + row]
    const std::size_t i = 2 * n;
    J[i * S + i] = w_.a[i];
    J[i * S + i + 1] = w_.a[i + 1];
    J[(i + 1) * S + i] = -w_.a[i + 1];
    J[(i + 1) * S + i + 1] = w_.a[i];
  }
}

template <class T>
void SsmOp<T>::output(std::size_t rows, const T* h, std::size_t ldh, const T* x, std::size_t ldx,
                      T* y) const {
  const std::size_t S = w_.state_dim(), d = w_.input_size;
  blas::gemm(Op::N, Op::T, rows, d, S, T(1), h, ldh, w_.C, S, T(0), y, d);
  if (w_.D)
    for (std::size_t b = 0; b < rows; ++b)
      for (std::size_t j = 0; j < d; ++j) y[b * d + j] += w_.D[j] * x[b * ldx + j];
}

// ---- the selective layer ------------------------------------------------------------------

template <class T>
SelectiveSsmOp<T>::SelectiveSsmOp(const SelectiveSsmWeights<T>& w) : w_(w) {
  const std::size_t di = w.d_inner, R = w.dt_rank, X = R + 2 * w.d_state;
  xproj_t_ = PackedMatrix<T>::transposed(w.x_proj_weight, X, di, di);
  xproj_ = PackedMatrix<T>::rows(w.x_proj_weight, X, di, di);
  dtproj_t_ = PackedMatrix<T>::transposed(w.dt_proj_weight, di, R, R);
  dtproj_ = PackedMatrix<T>::rows(w.dt_proj_weight, di, R, R);
}

template <class T>
void SelectiveSsmOp<T>::project_inputs(const T* x, std::size_t rows, T* P) const {
  const std::size_t C = proj_cols(), d = w_.d_model;
  for (std::size_t r = 0; r < rows; ++r) {
    T* p = P + r * C;
    if (w_.in_proj_bias)
      std::copy(w_.in_proj_bias, w_.in_proj_bias + C, p);
    else
      std::fill(p, p + C, T(0));
  }
  blas::gemm(Op::N, Op::T, rows, C, d, T(1), x, d, w_.in_proj_weight, d, T(1), P, C);
}

// Three phases over all rows (states, then each sample's k tangents): xc (or its tangent) per
// channel; the selection's two GEMMs; the per-channel step (or tangent) and the buffer's shift.
template <class T>
void SelectiveSsmOp<T>::step(const LayerRows<T>& r) const {
  const std::size_t di = w_.d_inner, n = w_.d_state, dc = w_.d_conv, nb = dc - 1, R = w_.dt_rank;
  const std::size_t Sh = di * n, oxd = di, odt = di + R + 2 * n, rows = r.ns + r.nt * r.k;
  const T* wc = w_.conv_weight;
  for (std::size_t b = 0; b < r.ns; ++b) {
    const T* x = r.proj + b * r.ldp;
    const T* buf = r.X + b * r.ldx + Sh;
    SelCache<T, T*> c(r.cache_w + b * r.ldc, di, n);
    T* u = r.U + b * r.ldu;
    for (std::size_t i = 0; i < di; ++i) {
      const T pre = layers::selective_conv(wc + i * dc, buf + i * nb, x[i],
                                           w_.conv_bias ? w_.conv_bias[i] : T(0), dc);
      T d;
      layers::silu_forward(pre, c.xc[i], c.ds[i]);
      layers::silu_forward(x[di + i], c.gz[i], d);
      u[i] = c.xc[i];
    }
  }
  for (std::size_t g = 0; g < r.nt; ++g) {
    const SelCache<T, const T*> c(r.cache_r + g * r.ldc, di, n);
    for (std::size_t q = 0; q < r.k; ++q) {
      const std::size_t row = r.ns + g * r.k + q;
      const T* dbuf = r.X + row * r.ldx + Sh;
      T* u = r.U + row * r.ldu;
      for (std::size_t i = 0; i < di; ++i)
        u[i] = layers::selective_conv_jvp(wc + i * dc, dbuf + i * nb, c.ds[i], dc);
    }
  }
  // The selection of every row: (dt, B, C) = x_proj(xc), then dt_proj(dt).
  gemm_packed(rows, r.U, r.ldu, xproj_t_, T(0), r.U + oxd, r.ldu);
  gemm_packed(rows, r.U + oxd, r.ldu, dtproj_t_, T(0), r.U + odt, r.ldu);
  for (std::size_t b = 0; b < r.ns; ++b) {
    const T* x = r.proj + b * r.ldp;
    const T* h = r.X + b * r.ldx;
    T* hn = r.Y + b * r.ldy;
    const T* u = r.U + b * r.ldu;
    SelCache<T, T*> c(r.cache_w + b * r.ldc, di, n);
    std::copy(u + oxd + R, u + oxd + R + 2 * n, c.B);  // B, C side by side
    std::copy(h, h + Sh, c.h);
    for (std::size_t i = 0; i < di; ++i) {
      layers::selective_delta(u[odt + i] + w_.dt_proj_bias[i], c.delta[i], c.sig[i]);
      layers::selective_forward(w_.A + i * n, c.B, c.C, c.delta[i], c.xc[i], h + i * n, hn + i * n,
                                c.a + i * n, n);
      const T* buf = h + Sh + i * nb;
      T* bn = hn + Sh + i * nb;
      for (std::size_t j = 0; j + 1 < nb; ++j) bn[j] = buf[j + 1];
      bn[nb - 1] = x[i];
    }
  }
  for (std::size_t g = 0; g < r.nt; ++g) {
    const SelCache<T, const T*> c(r.cache_r + g * r.ldc, di, n);
    for (std::size_t q = 0; q < r.k; ++q) {
      const std::size_t row = r.ns + g * r.k + q;
      const T* v = r.X + row * r.ldx;
      T* o = r.Y + row * r.ldy;
      const T* u = r.U + row * r.ldu;
      for (std::size_t i = 0; i < di; ++i) {
        layers::selective_jvp(w_.A + i * n, c.a + i * n, c.h + i * n, c.B, c.delta[i], c.xc[i],
                              c.sig[i] * u[odt + i], u[i], u + oxd + R, v + i * n, o + i * n, n);
        layers::selective_shift_jvp(v + Sh + i * nb, o + Sh + i * nb, dc);
      }
    }
  }
}

// G per row: [dL/dxc | dL/d x_proj(xc) | dL/d dt_proj(dt)]; C does not reach the state.
template <class T>
void SelectiveSsmOp<T>::vjp(const LayerCotangent<T>& cv) const {
  const std::size_t di = w_.d_inner, n = w_.d_state, dc = w_.d_conv, nb = dc - 1, R = w_.dt_rank;
  const std::size_t Sh = di * n, oxd = di, odt = di + R + 2 * n;
  const SelCache<T, const T*> c(cv.cache, di, n);
  for (std::size_t r = 0; r < cv.k; ++r) {
    const T* w = cv.wstate + r * cv.lds;
    T* g = cv.G + r * cv.ldg;
    T* o = cv.o + r * cv.ldo;
    std::fill(g + oxd + R, g + oxd + R + 2 * n, T(0));
    for (std::size_t i = 0; i < di; ++i) {
      T gdelta, gxc;
      layers::selective_vjp(w_.A + i * n, c.a + i * n, c.h + i * n, c.B, c.delta[i], c.xc[i],
                            w + i * n, o + i * n, g + oxd + R, gdelta, gxc, n);
      g[odt + i] = gdelta * c.sig[i];
      g[i] = gxc;
    }
  }
  gemm_packed(cv.k, cv.G + odt, cv.ldg, dtproj_, T(0), cv.G + oxd, cv.ldg);
  gemm_packed(cv.k, cv.G + oxd, cv.ldg, xproj_, T(1), cv.G, cv.ldg);
  for (std::size_t r = 0; r < cv.k; ++r) {
    const T* w = cv.wstate + r * cv.lds;
    const T* g = cv.G + r * cv.ldg;
    T* o = cv.o + r * cv.ldo;
    for (std::size_t i = 0; i < di; ++i)
      layers::selective_shift_vjp(w_.conv_weight + i * dc, g[i] * c.ds[i], w + Sh + i * nb,
                                  o + Sh + i * nb, dc);
  }
}

template <class T>
void SelectiveSsmOp<T>::jacobian(const T* cache, T* J, T* U) const {
  const std::size_t din = in_dim();
  std::vector<T> eye(din * din, T(0));
  for (std::size_t j = 0; j < din; ++j) eye[j * din + j] = T(1);
  LayerRows<T> r;
  r.U = U;
  r.ldu = gemm_cols();
  r.X = eye.data();
  r.ldx = din;
  r.Y = J;
  r.ldy = din;
  r.nt = 1;
  r.k = din;
  r.cache_r = cache;
  step(r);
}

template <class T>
void SelectiveSsmOp<T>::output(const T* cache, const T* hn, T* out) const {
  const std::size_t di = w_.d_inner, n = w_.d_state, dm = w_.d_model;
  const SelCache<T, const T*> c(cache, di, n);
  std::vector<T> yg(di);
  for (std::size_t i = 0; i < di; ++i) {
    T y = w_.D ? w_.D[i] * c.xc[i] : T(0);
    for (std::size_t m = 0; m < n; ++m) y += hn[i * n + m] * c.C[m];
    yg[i] = y * c.gz[i];
  }
  for (std::size_t j = 0; j < dm; ++j) {
    T s = w_.out_proj_bias ? w_.out_proj_bias[j] : T(0);
    for (std::size_t i = 0; i < di; ++i) s += w_.out_proj_weight[j * di + i] * yg[i];
    out[j] = s;
  }
}

template class SsmOp<float>;
template class SsmOp<double>;
template class SelectiveSsmOp<float>;
template class SelectiveSsmOp<double>;

}  // namespace vgcore

// The state-space layers' ops (model.hpp): forward, tangent and cotangent rows of the diagonal
// LTI layer (layers/ssm.hpp) and of Mamba's selective layer (layers/selective_ssm.hpp). The
// diagonal structure is the speed: the LTI layer's step is a per-mode (complex) multiply, the
// selective layer's two GEMMs are its selection's (x_proj, dt_proj) on the rows' xc; neither
// multiplies the state by a dense matrix.
#include <algorithm>
#include <vector>
#if defined(__SSE__) || defined(__x86_64__)
#include <immintrin.h>
#define VGCORE_SSM_MXCSR 1
#endif

#include "vgcore/base/blas.hpp"
#include "vgcore/base/fastmath.hpp"
#include "vgcore/layers/selective_ssm.hpp"
#include "vgcore/layers/ssm.hpp"
#include "vgcore/model/model.hpp"

namespace vgcore {
namespace {

using blas::Op;

// Flush-to-zero and denormals-are-zero for the scope of a step or VJP of a state-space layer.
// Its modes decay at different rates (a selective layer's a = exp(Delta A) from exp(-Delta) to
// exp(-16 Delta)), so tangent and cotangent entries of the fast modes become subnormal while
// the block's norm is kept near 1 by the callers' re-orthonormalisation or power-of-two
// rescaling (float: within 2^-40..2^40 of 1): each subnormal operand costs a microcode assist,
// a 25x slower VJP. The entries flushed are below 2^-86 (float; double 2^-822) of their row's
// norm, so no norm, exponent or singular value moves at the type's precision. The caller's
// floating-point mode is restored on exit.
class FlushSubnormals {
 public:
#ifdef VGCORE_SSM_MXCSR
  FlushSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~FlushSubnormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

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

// ---- the selective layer's rows (one sample's d_inner channels), multi-versioned --------------

// A state row's convolution: xc (into u and the cache), silu'(pre), silu(z).
template <class T>
VGCORE_TARGET_CLONES void sel_conv_state_row(const T* __restrict wc, const T* __restrict cb,
                                             const T* __restrict buf, const T* __restrict xz,
                                             T* __restrict u, T* __restrict xc, T* __restrict ds,
                                             T* __restrict gz, std::size_t di, std::size_t dc) {
  const std::size_t nb = dc - 1;
  for (std::size_t i = 0; i < di; ++i) {
    const T pre = layers::selective_conv(wc + i * dc, buf + i * nb, xz[i], cb ? cb[i] : T(0), dc);
    layers::silu_forward(pre, xc[i], ds[i]);
    u[i] = xc[i];
  }
  for (std::size_t i = 0; i < di; ++i) {
    T d;
    layers::silu_forward(xz[di + i], gz[i], d);
  }
}

// A tangent row's dxc from its buffer's tangent and, inside a stack, the input's tangent dx
// (its in_proj x part; null for a lone layer, whose input has none).
template <class T>
VGCORE_TARGET_CLONES void sel_conv_tangent_row(const T* __restrict wc, const T* __restrict dbuf,
                                               const T* __restrict dx, const T* __restrict ds,
                                               T* __restrict u, std::size_t di, std::size_t dc) {
  const std::size_t nb = dc - 1;
  if (dx)
    for (std::size_t i = 0; i < di; ++i)
      u[i] = layers::selective_conv_jvp_in(wc + i * dc, dbuf + i * nb, dx[i], ds[i], dc);
  else
    for (std::size_t i = 0; i < di; ++i)
      u[i] = layers::selective_conv_jvp(wc + i * dc, dbuf + i * nb, ds[i], dc);
}

// A state row's step: Delta from dt_proj's output (udt) and bias, h' and the shifted buffer.
template <class T>
VGCORE_TARGET_CLONES void sel_state_row(const T* __restrict A, const T* __restrict bdt,
                                        const T* __restrict udt, const T* __restrict B,
                                        const T* __restrict xc, const T* __restrict x,
                                        const T* __restrict h, T* __restrict hn,
                                        T* __restrict delta, T* __restrict sig, std::size_t di,
                                        std::size_t n, std::size_t dc) {
  for (std::size_t i = 0; i < di; ++i) layers::selective_delta(udt[i] + bdt[i], delta[i], sig[i]);
  for (std::size_t i = 0; i < di; ++i)
    layers::selective_forward(A + i * n, B, delta[i], xc[i], h + i * n, hn + i * n, n);
  const std::size_t nb = dc - 1, Sh = di * n;
  for (std::size_t i = 0; i < di; ++i) {
    const T* bo = h + Sh + i * nb;
    T* bn = hn + Sh + i * nb;
    for (std::size_t j = 0; j + 1 < nb; ++j) bn[j] = bo[j + 1];
    bn[nb - 1] = x[i];
  }
}

// One sample's transition a = exp(Delta A) (d_inner x d_state), for its tangent or cotangent
// rows.
template <class T>
VGCORE_TARGET_CLONES void sel_transition(const T* __restrict A, const T* __restrict delta,
                                         T* __restrict a, std::size_t di, std::size_t n) {
  for (std::size_t i = 0; i < di; ++i)
    layers::selective_transition(A + i * n, delta[i], a + i * n, n);
}

// Per-thread scratch for a (the ops are shared by the threads of an analysis).
template <class T>
T* transition_scratch(std::size_t size) {
  thread_local std::vector<T> a;
  if (a.size() < size) a.resize(size);
  return a.data();
}

// A tangent row: u = [dxc | d x_proj | d dt_proj] of this row.
template <class T>
VGCORE_TARGET_CLONES void sel_tangent_row(const T* __restrict A, const T* __restrict a,
                                          const T* __restrict h, const T* __restrict B,
                                          const T* __restrict delta, const T* __restrict sig,
                                          const T* __restrict xc, const T* __restrict u,
                                          const T* __restrict v, const T* __restrict dx,
                                          T* __restrict o, std::size_t di, std::size_t n,
                                          std::size_t dc, std::size_t R) {
  const T* dB = u + di + R;
  const T* udt = u + di + R + 2 * n;
  for (std::size_t i = 0; i < di; ++i)
    layers::selective_jvp(A + i * n, a + i * n, h + i * n, B, delta[i], xc[i], sig[i] * udt[i],
                          u[i], dB, v + i * n, o + i * n, n);
  const std::size_t nb = dc - 1, Sh = di * n;
  for (std::size_t i = 0; i < di; ++i)
    layers::selective_shift_jvp(v + Sh + i * nb, o + Sh + i * nb, dc, dx ? dx[i] : T(0));
}

// A cotangent row, before the selection's GEMMs: gh into o, g = [gxc | 0, gB, 0 | gdtp].
template <class T>
VGCORE_TARGET_CLONES void sel_vjp_row(const T* __restrict A, const T* __restrict a,
                                      const T* __restrict h, const T* __restrict B,
                                      const T* __restrict delta, const T* __restrict sig,
                                      const T* __restrict xc, const T* __restrict w,
                                      T* __restrict o, T* __restrict g, std::size_t di,
                                      std::size_t n, std::size_t R) {
  T* gB = g + di + R;
  T* gdt = g + di + R + 2 * n;
  std::fill(gB, gB + 2 * n, T(0));
  for (std::size_t i = 0; i < di; ++i) {
    T gdelta, gxc;
    layers::selective_vjp(A + i * n, a + i * n, h + i * n, B, delta[i], xc[i], w + i * n, o + i * n,
                          gB, gdelta, gxc, n);
    gdt[i] = gdelta * sig[i];
    g[i] = gxc;
  }
}

// A cotangent row, after them: the buffer's part from dL/dxc (g) and the shift.
template <class T>
VGCORE_TARGET_CLONES void sel_vjp_buffer_row(const T* __restrict wc, const T* __restrict ds,
                                             const T* __restrict g, const T* __restrict w,
                                             T* __restrict o, std::size_t di, std::size_t dc) {
  const std::size_t nb = dc - 1;
  for (std::size_t i = 0; i < di; ++i)
    layers::selective_shift_vjp(wc + i * dc, g[i] * ds[i], w + i * nb, o + i * nb, dc);
}

}  // namespace

// ---- the diagonal LTI layer ---------------------------------------------------------------

template <class T>
void SsmOp<T>::project_inputs(const T* x, std::size_t rows, T* P) const {
  const std::size_t S = w_.state_dim(), d = w_.input_size;
  blas::gemm(Op::N, Op::T, rows, S, d, T(1), x, d, w_.B, d, T(0), P, S);
}

template <class T>
void SsmOp<T>::step(const LayerRows<T>& r) const {
  const FlushSubnormals ftz;
  const std::size_t N = w_.modes, rows = r.ns + r.nt * r.k;
  for (std::size_t b = 0; b < rows; ++b) {
    const T* u = b < r.ns ? r.proj + b * r.ldp : r.tproj ? r.tproj + (b - r.ns) * r.ldp : nullptr;
    if (w_.complex)
      ssm_complex_row(w_.a, r.X + b * r.ldx, u, r.Y + b * r.ldy, N);
    else
      ssm_real_row(w_.a, r.X + b * r.ldx, u, r.Y + b * r.ldy, N);
  }
}

template <class T>
void SsmOp<T>::vjp(const LayerCotangent<T>& c) const {
  const FlushSubnormals ftz;
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
  const FlushSubnormals ftz;
  const std::size_t di = w_.d_inner, n = w_.d_state, dc = w_.d_conv, R = w_.dt_rank;
  const std::size_t Sh = di * n, oxd = di, odt = di + R + 2 * n, rows = r.ns + r.nt * r.k;
  for (std::size_t b = 0; b < r.ns; ++b) {
    layers::SelectiveCache<T, T*> c(r.cache_w + b * r.ldc, di, n);
    sel_conv_state_row(w_.conv_weight, w_.conv_bias, r.X + b * r.ldx + Sh, r.proj + b * r.ldp,
                       r.U + b * r.ldu, c.xc, c.ds, c.gz, di, dc);
  }
  for (std::size_t g = 0; g < r.nt; ++g) {
    const layers::SelectiveCache<T, const T*> c(r.cache_r + g * r.ldc, di, n);
    for (std::size_t q = 0; q < r.k; ++q) {
      const std::size_t row = r.ns + g * r.k + q;
      const T* dx = r.tproj ? r.tproj + (g * r.k + q) * r.ldp : nullptr;
      sel_conv_tangent_row(w_.conv_weight, r.X + row * r.ldx + Sh, dx, c.ds, r.U + row * r.ldu, di,
                           dc);
    }
  }
  // The selection of every row: (dt, B, C) = x_proj(xc), then dt_proj(dt).
  gemm_packed(rows, r.U, r.ldu, xproj_t_, T(0), r.U + oxd, r.ldu);
  gemm_packed(rows, r.U + oxd, r.ldu, dtproj_t_, T(0), r.U + odt, r.ldu);
  for (std::size_t b = 0; b < r.ns; ++b) {
    const T* h = r.X + b * r.ldx;
    const T* u = r.U + b * r.ldu;
    layers::SelectiveCache<T, T*> c(r.cache_w + b * r.ldc, di, n);
    std::copy(u + oxd + R, u + oxd + R + 2 * n, c.B);  // B, C side by side
    std::copy(h, h + Sh, c.h);
    sel_state_row(w_.A, w_.dt_proj_bias, u + odt, c.B, c.xc, r.proj + b * r.ldp, h, r.Y + b * r.ldy,
                  c.delta, c.sig, di, n, dc);
  }
  T* a = r.nt ? transition_scratch<T>(Sh) : nullptr;
  for (std::size_t g = 0; g < r.nt; ++g) {
    const layers::SelectiveCache<T, const T*> c(r.cache_r + g * r.ldc, di, n);
    sel_transition(w_.A, c.delta, a, di, n);
    for (std::size_t q = 0; q < r.k; ++q) {
      const std::size_t row = r.ns + g * r.k + q;
      sel_tangent_row(w_.A, a, c.h, c.B, c.delta, c.sig, c.xc, r.U + row * r.ldu, r.X + row * r.ldx,
                      r.tproj ? r.tproj + (g * r.k + q) * r.ldp : nullptr, r.Y + row * r.ldy, di, n,
                      dc, R);
    }
  }
}

// G per row: [dL/dxc | dL/d x_proj(xc) | dL/d dt_proj(dt)]; C does not reach the state.
template <class T>
void SelectiveSsmOp<T>::vjp(const LayerCotangent<T>& cv) const {
  vjp_in_stack(cv, nullptr, nullptr, 0, nullptr, 0);
}

// Inside a stack the output's cotangents reach C (gC: into x_proj's C slot before its GEMM) and
// xc (gxc, the skip D xc), and the input x: dL/dx = dL/dxc silu'(pre) w_last + the cotangent of
// the buffer's newest entry (x itself).
template <class T>
void SelectiveSsmOp<T>::vjp_in_stack(const LayerCotangent<T>& cv, const T* gC, const T* gxc,
                                     std::size_t ldx, T* gx, std::size_t ldgx) const {
  const FlushSubnormals ftz;
  const std::size_t di = w_.d_inner, n = w_.d_state, dc = w_.d_conv, R = w_.dt_rank;
  const std::size_t Sh = di * n, oxd = di, odt = di + R + 2 * n, nb = dc - 1;
  const layers::SelectiveCache<T, const T*> c(cv.cache, di, n);
  T* a = transition_scratch<T>(Sh);
  sel_transition(w_.A, c.delta, a, di, n);
  for (std::size_t r = 0; r < cv.k; ++r) {
    T* g = cv.G + r * cv.ldg;
    sel_vjp_row(w_.A, a, c.h, c.B, c.delta, c.sig, c.xc, cv.wstate + r * cv.lds, cv.o + r * cv.ldo,
                g, di, n, R);
    if (gC) std::copy(gC + r * ldx, gC + r * ldx + n, g + oxd + R + n);
  }
  gemm_packed(cv.k, cv.G + odt, cv.ldg, dtproj_, T(0), cv.G + oxd, cv.ldg);
  gemm_packed(cv.k, cv.G + oxd, cv.ldg, xproj_, T(1), cv.G, cv.ldg);
  for (std::size_t r = 0; r < cv.k; ++r) {
    T* g = cv.G + r * cv.ldg;
    if (gxc)
      for (std::size_t i = 0; i < di; ++i) g[i] += gxc[r * ldx + i];
    const T* wb = cv.wstate + r * cv.lds + Sh;
    sel_vjp_buffer_row(w_.conv_weight, c.ds, g, wb, cv.o + r * cv.ldo + Sh, di, dc);
    if (gx)
      for (std::size_t i = 0; i < di; ++i)
        gx[r * ldgx + i] = g[i] * c.ds[i] * w_.conv_weight[i * dc + dc - 1] + wb[i * nb + nb - 1];
  }
}

template <class T>
void SelectiveSsmOp<T>::jacobian(const T* cache, T* J, T* U) const {
  jacobian_as_jvp(*this, cache, J, U);
}

template <class T>
void SelectiveSsmOp<T>::output(const T* cache, const T* hn, T* out) const {
  const std::size_t di = w_.d_inner, n = w_.d_state, dm = w_.d_model;
  const layers::SelectiveCache<T, const T*> c(cache, di, n);
  std::vector<T> yg(di);
  for (std::size_t i = 0; i < di; ++i) {
    const T y = layers::selective_output(hn + i * n, c.C, n) + (w_.D ? w_.D[i] * c.xc[i] : T(0));
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

// Mamba's selective state-space layer (S6, Gu & Dao 2023; the names and shapes of
// mamba_ssm/modules/mamba_simple.py), all of its maths for one inner channel i (d_state = n
// state entries h_i. and d_conv - 1 buffered inputs buf_i.):
//   (x, z)    = in_proj(u)                                   (the input projection, all steps)
//   pre_i     = sum_{j < d_conv - 1} w_ij buf_ij + w_i,last x_i + b_i    (causal depthwise conv)
//   xc_i      = silu(pre_i)
//   (dt, B, C) = x_proj(xc)                                  (one GEMM over the channels)
//   Delta_i   = softplus(dt_proj(dt)_i + bias_i),  a_im = exp(Delta_i A_im)
//   h'_im     = a_im h_im + Delta_i xc_i B_m
//   buf'_i    = (buf_i1, ..., buf_i,last, x_i)               (a shift: x reads the input only)
//   y_i       = sum_m h'_im C_m + D_i xc_i,  out = out_proj(y * silu(z))
// The state is (h, buf): h row-major (d_inner, d_state), then buf (d_inner, d_conv - 1), oldest
// first, as the reference module's step. Its Jacobian is diag(a) on h plus the low-rank part
// through the selection (Delta, B read xc, which reads buf; rank <= dt_rank + d_state per step)
// plus the shift on buf: a tangent needs the two GEMMs of the selection (x_proj, dt_proj) on k
// rows, never a dense state matrix.
//
// Cache a caller keeps per sample (selective_cache_size): [h (the state entering, d_inner
// d_state), Delta, sigmoid(dt_proj(dt) + bias) (= dDelta / d its argument), xc, silu'(pre),
// silu(z) (d_inner each), B, C (d_state each)]. The derivatives recompute a = exp(Delta A)
// (selective_transition) once per sample rather than keep d_inner d_state more values per step.
#pragma once

#include <cstddef>

#include "vgcore/base/fastmath.hpp"
#include "vgcore/base/lanes.hpp"

namespace vgcore::layers {

inline std::size_t selective_cache_size(std::size_t d_inner, std::size_t d_state) {
  return d_inner * d_state + 5 * d_inner + 2 * d_state;
}

// That cache's parts for one sample at c (P: T* to write it, const T* to read it).
template <class T, class P>
struct SelectiveCache {
  P h, delta, sig, xc, ds, gz, B, C;
  SelectiveCache(P c, std::size_t di, std::size_t n)
      : h(c),
        delta(c + di * n),
        sig(delta + di),
        xc(delta + 2 * di),
        ds(delta + 3 * di),
        gz(delta + 4 * di),
        B(delta + 5 * di),
        C(delta + 5 * di + n) {}
};

// The causal depthwise convolution of one channel: w (d_conv) on [buf (d_conv - 1), x].
template <class T>
VGCORE_FM_INLINE T selective_conv(const T* w, const T* buf, T x, T bias, std::size_t dc) {
  T s = bias;
  for (std::size_t j = 0; j + 1 < dc; ++j) s += w[j] * buf[j];
  return s + w[dc - 1] * x;
}

// Its tangent from the buffer's tangent (the input x has none), times silu'(pre).
template <class T>
VGCORE_FM_INLINE T selective_conv_jvp(const T* w, const T* dbuf, T dsilu, std::size_t dc) {
  T s = T(0);
  for (std::size_t j = 0; j + 1 < dc; ++j) s += w[j] * dbuf[j];
  return dsilu * s;
}

// The same inside a stack, where the input has a tangent dx too.
template <class T>
VGCORE_FM_INLINE T selective_conv_jvp_in(const T* w, const T* dbuf, T dx, T dsilu, std::size_t dc) {
  T s = w[dc - 1] * dx;
  for (std::size_t j = 0; j + 1 < dc; ++j) s += w[j] * dbuf[j];
  return dsilu * s;
}

// silu(v) = v sigmoid(v) and silu'(v) = s (1 + v (1 - s)).
template <class T>
VGCORE_FM_INLINE void silu_forward(T v, T& y, T& dy) {
  const T s = fastmath::sigmoid(v);
  y = v * s;
  dy = s * (T(1) + v * (T(1) - s));
}

// Delta = softplus(v) and dDelta/dv = sigmoid(v).
template <class T>
VGCORE_FM_INLINE void selective_delta(T v, T& delta, T& sig) {
  fastmath::detail::softplus_sigmoid(v, delta, sig);
}

// One channel's transition a = exp(Delta A).
template <class T>
VGCORE_FM_INLINE void selective_transition(const T* A, T delta, T* a, std::size_t n) {
  for (std::size_t m = 0; m < n; ++m) a[m] = fastmath::exp(delta * A[m]);
}

// One channel's step: hn = exp(Delta A) h + Delta xc B.
template <class T>
VGCORE_FM_INLINE void selective_forward(const T* A, const T* B, T delta, T xc, const T* h, T* hn,
                                        std::size_t n) {
  const T dx = delta * xc;
  for (std::size_t m = 0; m < n; ++m) hn[m] = fastmath::exp(delta * A[m]) * h[m] + dx * B[m];
}

// One channel's output before the skip and the gate: sum_m hn_m C_m.
template <class T>
VGCORE_FM_INLINE T selective_output(const T* hn, const T* C, std::size_t n) {
  return reduce_lanes<8>(
      n, T(0), [&](T& s, std::size_t m) { s += hn[m] * C[m]; }, [](T& s, T v) { s += v; });
}

// One channel's output tangent before the skip and the gate: sum_m dhn_m C_m + hn_m dC_m.
template <class T>
VGCORE_FM_INLINE T selective_output_jvp(const T* hn, const T* C, const T* dhn, const T* dC,
                                        std::size_t n) {
  T s = T(0);
  for (std::size_t m = 0; m < n; ++m) s += dhn[m] * C[m] + hn[m] * dC[m];
  return s;
}

// The gate out_i = y_i silu(z_i): its tangent dy silu(z) + y silu'(z) dz, and its cotangent
// (gy = g silu(z) to y, gz = g y silu'(z) to z).
template <class T>
VGCORE_FM_INLINE T selective_gate_jvp(T y, T dy, T sz, T dsz, T dz) {
  return dy * sz + y * dsz * dz;
}

// One channel's output cotangent: from gy = dL/dy_i (y_i = sum_m hn_m C_m + D_i xc_i, before
// the gate), ghn += gy C (onto the new state) and gC (n) accumulates gy hn over the channels;
// the skip's part D_i gy goes to xc by the caller.
template <class T>
VGCORE_FM_INLINE void selective_output_vjp(const T* hn, const T* C, T gy, T* ghn, T* gC,
                                           std::size_t n) {
  for (std::size_t m = 0; m < n; ++m) {
    ghn[m] += gy * C[m];
    gC[m] += gy * hn[m];
  }
}

// One channel's tangent: dhn = a dh + dDelta (A a h + xc B) + Delta dxc B + Delta xc dB.
template <class T>
VGCORE_FM_INLINE void selective_jvp(const T* A, const T* a, const T* h, const T* B, T delta, T xc,
                                    T ddelta, T dxc, const T* dB, const T* dh, T* dhn,
                                    std::size_t n) {
  const T cb = ddelta * xc + delta * dxc, cx = delta * xc;
  for (std::size_t m = 0; m < n; ++m)
    dhn[m] = a[m] * dh[m] + ddelta * A[m] * a[m] * h[m] + cb * B[m] + cx * dB[m];
}

// One channel's cotangent from w = dL/dhn: gh = a w (the entering h), and the cotangents of
// Delta and xc (returned through gdelta, gxc); gB (n) accumulates Delta xc w over the channels.
// The sums over m run in 8 lanes (vectorised without reassociation).
template <class T>
VGCORE_FM_INLINE void selective_vjp(const T* A, const T* a, const T* h, const T* B, T delta, T xc,
                                    const T* w, T* gh, T* gB, T& gdelta, T& gxc, std::size_t n) {
  const auto fold = [](T& s, T v) { s += v; };
  const T sa =
      reduce_lanes<8>(n, T(0), [&](T& s, std::size_t m) { s += w[m] * A[m] * a[m] * h[m]; }, fold);
  const T sb = reduce_lanes<8>(n, T(0), [&](T& s, std::size_t m) { s += w[m] * B[m]; }, fold);
  const T cx = delta * xc;
  for (std::size_t m = 0; m < n; ++m) {
    gh[m] = a[m] * w[m];
    gB[m] += cx * w[m];
  }
  gdelta = sa + xc * sb;
  gxc = delta * sb;
}

// The buffer's shift: tangent out_j = v_{j+1}, the last entry the input's tangent dx (0 for a
// lone layer: its input has none); cotangent g_0 = conv part, g_{j+1} = w_j.
template <class T>
VGCORE_FM_INLINE void selective_shift_jvp(const T* v, T* o, std::size_t dc, T dx = T(0)) {
  for (std::size_t j = 0; j + 2 < dc; ++j) o[j] = v[j + 1];
  o[dc - 2] = dx;
}

template <class T>
VGCORE_FM_INLINE void selective_shift_vjp(const T* conv_w, T gpre, const T* w, T* g,
                                          std::size_t dc) {
  for (std::size_t j = 0; j + 1 < dc; ++j) g[j] = gpre * conv_w[j] + (j > 0 ? w[j - 1] : T(0));
}

}  // namespace vgcore::layers

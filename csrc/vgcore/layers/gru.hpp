// The GRU cell (torch.nn.GRU, gates r, z, n), all of its maths for one unit j:
//   q = W_hh h + b_hh,  p = W_ih x + b_ih          (the sweeps' GEMMs; three blocks of N)
//   r = sigmoid(p_r + q_r),  z = sigmoid(p_z + q_z),  n = tanh(p_n + r q_n)
//   h' = (1 - z) n + z h
// r multiplies the n-block of the recurrent product, so q_n is kept apart. Gates are stored
// encoded (gates.hpp). These are the only copies of the formulas: the BPTT sweep, the model's
// layer ops and the Lyapunov fast path call them from their own loops (loops, threads, memory and
// SIMD layouts live there).
//
// Cache a caller keeps per unit for the derivatives: the encoded gates (vr, vz, vn), q_n and h.
#pragma once

#include <cstddef>

#include "vgcore/base/fastmath.hpp"
#include "vgcore/base/gates.hpp"

namespace vgcore::layers {

inline constexpr std::size_t gru_gates = 3;

// What the model asks about the cell (model.hpp): gate blocks, state parts (h), cache units per
// hidden unit ([r, z, n, q_n, h]), and whether the input projection enters outside the W_hh
// product (yes: n = tanh(p_n + r q_n), and b_hh stays inside q).
struct GruCell {
  static constexpr std::size_t gates = gru_gates, parts = 1, cache_units = 5;
  static constexpr bool input_outside = true;
};

template <class T>
struct GruForward {
  T vr, vz, vn;              // encoded gates: what caches keep
  T r, rc, z, zc, n, nd, h;  // gates and complements (1 - s; tanh' = 1 - n^2), h'
};

// Forward of one unit: ar, az the full pre-activations of r and z, xn = p_n (the input part of
// n's pre-activation), qn = W_hn h + b_hn.
template <class T>
VGCORE_FM_INLINE GruForward<T> gru_forward(T ar, T az, T xn, T qn, T hprev) {
  GruForward<T> u;
  u.vr = gates::sigmoid_store(ar, u.r, u.rc);
  u.vz = gates::sigmoid_store(az, u.z, u.zc);
  u.vn = gates::tanh_store(xn + u.r * qn, u.n, u.nd);
  u.h = u.zc * u.n + u.z * hprev;
  return u;
}

template <class T>
struct GruGates {
  T r, rc, z, zc, n, nd;
};

template <class T>
VGCORE_FM_INLINE GruGates<T> gru_load(T vr, T vz, T vn) {
  GruGates<T> q;
  gates::sigmoid_load(vr, q.r, q.rc);
  gates::sigmoid_load(vz, q.z, q.zc);
  gates::tanh_load(vn, q.n, q.nd);
  return q;
}

// Cotangent (VJP) of one unit from g = dL/dh': dL/d(pre-activations of r and z), dL/dq_n (the
// n block of W_hh's cotangent), dL/dp_n (the n block of W_ih's: not scaled by r) and the direct
// part z g of dL/dh.
template <class T>
struct GruCotangent {
  T dr, dz, dqn, dpn, direct;
};

template <class T>
VGCORE_FM_INLINE GruCotangent<T> gru_vjp(const GruGates<T>& q, T qn, T hprev, T g) {
  const T dan = g * q.zc * q.nd;
  return {dan * qn * (q.r * q.rc), g * (hprev - q.n) * (q.z * q.zc), dan * q.r, dan, g * q.z};
}

// Tangent (JVP) of one unit: dh -> dh' given u = dh W_hh^T per gate (the state alone).
template <class T>
VGCORE_FM_INLINE T gru_jvp(const GruGates<T>& q, T qn, T hprev, T ur, T uz, T un, T dh) {
  const T dr = (q.r * q.rc) * ur;
  const T dz = (q.z * q.zc) * uz;
  const T dn = q.nd * (q.r * un + qn * dr);
  return q.zc * dn + (hprev - q.n) * dz + q.z * dh;
}

// The same with the input's tangent dp = dx W_ih^T per gate (a layer of a stack), which enters
// n outside the r * (...) product.
template <class T>
VGCORE_FM_INLINE T gru_jvp_with_input(const GruGates<T>& q, T qn, T hprev, T ur, T uz, T un, T pr,
                                      T pz, T pn, T dh) {
  const T dr = (q.r * q.rc) * (ur + pr);
  const T dz = (q.z * q.zc) * (uz + pz);
  const T dn = q.nd * (pn + q.r * un + qn * dr);
  return q.zc * dn + (hprev - q.n) * dz + q.z * dh;
}

// The tangent map as four per-unit coefficients, for kernels that apply it to many tangent
// vectors at once: dh' = k0 dh + k1 u_r + k2 u_z + k3 u_n.
template <class T>
struct GruCoefficients {
  T k0, k1, k2, k3;
};

template <class T>
VGCORE_FM_INLINE GruCoefficients<T> gru_tangent_coefficients(const GruForward<T>& u, T qn,
                                                             T hprev) {
  const T a = u.zc * u.nd;
  return {u.z, a * qn * (u.r * u.rc), (hprev - u.n) * (u.z * u.zc), a * u.r};
}

}  // namespace vgcore::layers

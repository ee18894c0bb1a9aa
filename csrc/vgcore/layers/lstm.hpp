// The LSTM cell (torch.nn.LSTM, gates i, f, g, o), all of its maths for one unit j:
//   a = W_ih x + b_ih + W_hh h + b_hh            (the sweeps' GEMMs; four blocks of N)
//   i, f, o = sigmoid(a_i, a_f, a_o), g = tanh(a_g)
//   c' = f c + i g,  h' = o tanh(c')
// Gates and tanh(c') are stored encoded (gates.hpp) so that derivatives stay accurate in deep
// saturation. State (h, c). These are the only copies of the formulas: the BPTT sweep, the
// model's layer ops and the Lyapunov fast path call them from their own loops (loops, threads,
// memory and SIMD layouts live there), so every path computes the same numbers.
//
// Cache a caller keeps per unit for the derivatives: the encoded gates (vi, vf, vg, vo),
// c (the previous cell state) and the encoded tanh(c') (vt).
#pragma once

#include <cstddef>

#include "vgcore/base/fastmath.hpp"
#include "vgcore/base/gates.hpp"

namespace vgcore::layers {

inline constexpr std::size_t lstm_gates = 4;

// What the model asks about the cell (model.hpp): gate blocks, state parts (h, c), cache units
// per hidden unit ([i, f, g, o, c, tanh(c')]), and whether the input projection enters outside
// the W_hh product.
struct LstmCell {
  static constexpr std::size_t gates = lstm_gates, parts = 2, cache_units = 6;
  static constexpr bool input_outside = false;
};

// Forward of one unit from its four pre-activations and c.
template <class T>
struct LstmForward {
  T vi, vf, vg, vo, vt;          // encoded gates and tanh(c'): what caches keep
  T i, ic, f, fc, g, gd, o, oc;  // gates and complements (1 - s; tanh' = 1 - g^2)
  T c, tc, tcd, h;               // c', tanh(c'), 1 - tanh(c')^2, h'
};

template <class T>
VGCORE_FM_INLINE LstmForward<T> lstm_forward(T ai, T af, T ag, T ao, T cprev) {
  LstmForward<T> u;
  u.vi = gates::sigmoid_store(ai, u.i, u.ic);
  u.vf = gates::sigmoid_store(af, u.f, u.fc);
  u.vg = gates::tanh_store(ag, u.g, u.gd);
  u.vo = gates::sigmoid_store(ao, u.o, u.oc);
  u.c = u.f * cprev + u.i * u.g;
  u.vt = gates::tanh_store(u.c, u.tc, u.tcd);
  u.h = u.o * u.tc;
  return u;
}

// The decoded gates of a cached unit.
template <class T>
struct LstmGates {
  T i, ic, f, fc, g, gd, o, oc, tc, tcd;
};

template <class T>
VGCORE_FM_INLINE LstmGates<T> lstm_load(T vi, T vf, T vg, T vo, T vt) {
  LstmGates<T> q;
  gates::sigmoid_load(vi, q.i, q.ic);
  gates::sigmoid_load(vf, q.f, q.fc);
  gates::tanh_load(vg, q.g, q.gd);
  gates::sigmoid_load(vo, q.o, q.oc);
  gates::tanh_load(vt, q.tc, q.tcd);
  return q;
}

// Cotangent (VJP) of one unit: from (gh, gc) = dL/d(h', c'), dL/da for the four gates (the
// sweep multiplies them by W_hh / W_ih) and the direct part dL/dc = dct f.
template <class T>
struct LstmCotangent {
  T di, df, dg, dout, dcprev;
};

template <class T>
VGCORE_FM_INLINE LstmCotangent<T> lstm_vjp(const LstmGates<T>& q, T cprev, T gh, T gc) {
  const T dct = gc + gh * q.o * q.tcd;
  return {dct * q.g * (q.i * q.ic), dct * cprev * (q.f * q.fc), dct * q.i * q.gd,
          gh * q.tc * (q.o * q.oc), dct * q.f};
}

// Tangent (JVP) of one unit: (dh, dc) -> (dh', dc') given u = dh W_hh^T (+ dx W_ih^T) per gate.
template <class T>
struct LstmTangent {
  T dh, dc;
};

template <class T>
VGCORE_FM_INLINE LstmTangent<T> lstm_jvp(const LstmGates<T>& q, T cprev, T ui, T uf, T ug, T uo,
                                         T dc) {
  const T di = (q.i * q.ic) * ui;
  const T df = (q.f * q.fc) * uf;
  const T dg = q.gd * ug;
  const T dout = (q.o * q.oc) * uo;
  const T dcn = q.f * dc + cprev * df + q.g * di + q.i * dg;
  return {q.o * q.tcd * dcn + q.tc * dout, dcn};
}

// The same tangent map as six per-unit coefficients, for kernels that apply it to many
// tangent vectors at once: dc' = k0 dc + k1 u_f + k2 u_i + k3 u_g, dh' = k4 dc' + k5 u_o.
template <class T>
struct LstmCoefficients {
  T k0, k1, k2, k3, k4, k5;
};

template <class T>
VGCORE_FM_INLINE LstmCoefficients<T> lstm_tangent_coefficients(const LstmForward<T>& u, T cprev) {
  return {u.f,        cprev * (u.f * u.fc), u.g * (u.i * u.ic),
          u.i * u.gd, u.o * u.tcd,          u.tc * (u.o * u.oc)};
}

}  // namespace vgcore::layers

// The LSTM cell (torch.nn.LSTM, gates i, f, g, o):
//   i, f, o = sigmoid(a_i, a_f, a_o), g = tanh(a_g), with a = W_ih x + b_ih + W_hh h + b_hh,
//   c' = f * c + i * g, h' = o * tanh(c').
// Gates and tanh(c') are stored encoded (gates.hpp) so that derivatives stay accurate in deep
// saturation. Row formulas only: loops over steps, samples, threads and memory live in the
// sweeps. State (h, c); four gate blocks of N units in PyTorch's order.
#pragma once

#include <cstddef>

#include "vgcore/base/fastmath.hpp"
#include "vgcore/base/gates.hpp"

namespace vgcore::layers {

inline constexpr std::size_t lstm_gates = 4;

// One sample: pre-activations a_* (input projection + W_hh h already summed) are replaced by the
// encoded gates; writes c', encoded tanh(c') and h'. Vectorised: no reductions here.
template <class T>
VGCORE_TARGET_CLONES void lstm_forward_row(T* __restrict ai, T* __restrict af, T* __restrict ag,
                                           T* __restrict ao, const T* __restrict cprev,
                                           T* __restrict cnext, T* __restrict tcn,
                                           T* __restrict hnext, std::size_t N) {
  for (std::size_t j = 0; j < N; ++j) {
    T i, f, g, o, tcv, unused;
    const T vi = gates::sigmoid_store(ai[j], i, unused);
    const T vf = gates::sigmoid_store(af[j], f, unused);
    const T vg = gates::tanh_store(ag[j], g, unused);
    const T vo = gates::sigmoid_store(ao[j], o, unused);
    const T cn = f * cprev[j] + i * g;
    const T vt = gates::tanh_store(cn, tcv, unused);
    ai[j] = vi;
    af[j] = vf;
    ag[j] = vg;
    ao[j] = vo;
    cnext[j] = cn;
    tcn[j] = vt;
    hnext[j] = o * tcv;
  }
}

// One sample backward: dh = dL/dh', dc = dL/dc' (both times f, the pending power of two) give
// dL/da_* in place of the encoded gates and dL/dc in dc; dL/dh is then dL/da W_hh (the sweep's
// GEMM).
template <class T>
VGCORE_TARGET_CLONES void lstm_backward_row(T* __restrict ai, T* __restrict af, T* __restrict ag,
                                            T* __restrict ao, const T* __restrict cprev,
                                            const T* __restrict tcv, const T* __restrict dh,
                                            T* __restrict dc, T f, std::size_t N) {
  for (std::size_t j = 0; j < N; ++j) {
    const T gh = dh[j] * f, gc = dc[j] * f;
    T i, ic, fg, fc, g, gd, o, oc, tc, tcd;
    gates::sigmoid_load(ai[j], i, ic);
    gates::sigmoid_load(af[j], fg, fc);
    gates::tanh_load(ag[j], g, gd);
    gates::sigmoid_load(ao[j], o, oc);
    gates::tanh_load(tcv[j], tc, tcd);
    const T dct = gc + gh * o * tcd;
    ai[j] = dct * g * (i * ic);
    af[j] = dct * cprev[j] * (fg * fc);
    ag[j] = dct * i * gd;
    ao[j] = gh * tc * (o * oc);
    dc[j] = dct * fg;
  }
}

}  // namespace vgcore::layers

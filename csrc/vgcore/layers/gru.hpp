// The GRU cell (torch.nn.GRU, gates r, z, n):
//   r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z}),
//   n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h.
// r multiplies the n-block of the recurrent product, so q = W_hh h + b_hh is kept apart from
// the input projection. Gates are stored encoded (gates.hpp). Row formulas only: loops over
// steps, samples, threads and memory live in the sweeps.
#pragma once

#include <cstddef>

#include "vgcore/base/fastmath.hpp"
#include "vgcore/base/gates.hpp"

namespace vgcore::layers {

inline constexpr std::size_t gru_gates = 3;

// One sample: a_* are the input projections (b_ih folded in), q_* = W_h* h + b_h*. Writes the
// encoded gates over a_*, W_hn h + b_hn into hnb (the backward pass needs it) and h'.
template <class T>
VGCORE_TARGET_CLONES void gru_forward_row(T* __restrict ar, T* __restrict az, T* __restrict an,
                                          const T* __restrict qr, const T* __restrict qz,
                                          const T* __restrict qn, const T* __restrict hprev,
                                          T* __restrict hnext, T* __restrict hnb, std::size_t N) {
  for (std::size_t j = 0; j < N; ++j) {
    T r, z, zc, n, unused;
    const T vr = gates::sigmoid_store(ar[j] + qr[j], r, unused);
    const T vz = gates::sigmoid_store(az[j] + qz[j], z, zc);
    const T vn = gates::tanh_store(an[j] + r * qn[j], n, unused);
    ar[j] = vr;
    az[j] = vz;
    an[j] = vn;
    hnb[j] = qn[j];
    hnext[j] = zc * n + z * hprev[j];
  }
}

// One sample backward from g = dh * f (dL/dh', times the pending power of two): writes
// dL/d(r, z pre-activations) and dL/d(W_hn h + b_hn) over the gates, dL/d(n pre-activation)
// over hnb, and the direct part z * g of dL/dh into dpb (the sweep's GEMM adds the rest).
template <class T>
VGCORE_TARGET_CLONES void gru_backward_row(T* __restrict ar, T* __restrict az, T* __restrict an,
                                           T* __restrict hnb, const T* __restrict hprev,
                                           const T* __restrict dh, T* __restrict dpb, T f,
                                           std::size_t N) {
  for (std::size_t j = 0; j < N; ++j) {
    const T g = dh[j] * f;
    T r, rc, z, zc, n, nd;
    gates::sigmoid_load(ar[j], r, rc);
    gates::sigmoid_load(az[j], z, zc);
    gates::tanh_load(an[j], n, nd);
    const T qn = hnb[j];
    const T dan = g * zc * nd;  // dL/d(n pre-activation)
    ar[j] = dan * qn * (r * rc);
    az[j] = g * (hprev[j] - n) * (z * zc);
    an[j] = dan * r;  // dL/d(W_hn h + b_hn)
    hnb[j] = dan;
    dpb[j] = g * z;
  }
}

}  // namespace vgcore::layers

// Backpropagation through time for RNN / LSTM / GRU stacks (single-layer, stacked,
// bidirectional): one sweep over (layer, direction) runs, the cells' formulas from layers/.
//
// Structure, per layer and direction (a "run"), layer by layer as frameworks do: (1) the input
// projections of all steps in one GEMM; (2) the batch is split into chunks, one per worker
// thread, each running the whole forward sequence (and later the whole backward sequence) with
// single-threaded BLAS (no synchronisation per step); (3) dL/dx of all steps in one GEMM, the
// cotangent of the layer below; (4) parameter gradients, if asked, as a few large GEMMs.
//
// Backpropagated vectors carry power-of-two scales (flow.hpp). The cotangent passed from a layer
// to the one below keeps the scale of each (step, chunk) block, so gradients far below the
// type's range still reach the lower layers exactly.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "vgcore/base/blas.hpp"
#include "vgcore/base/fastmath.hpp"
#include "vgcore/base/gates.hpp"
#include "vgcore/layers/gru.hpp"
#include "vgcore/layers/lstm.hpp"
#include "vgcore/layers/rnn.hpp"
#include "vgcore/base/packed_gemm.hpp"
#include "vgcore/base/parallel_rows.hpp"
#include "vgcore/sweeps/recurrent.hpp"
#include "vgcore/base/workspace.hpp"

namespace vgcore {
namespace {

constexpr int kNoExponent = std::numeric_limits<int>::min();

struct ChunkStats {
  std::vector<double> sum, sumsq, saturated;   // per step: of h_{t+1}; saturated gate units
  std::vector<double> gate_saturated;          // per step x gate
  std::vector<double> grad_sumsq, cell_sumsq;  // per state t = 0..T
  std::vector<int> grad_scale, cell_scale;     // per state: stored = true * 2^scale
  std::vector<int> dz_scale;                   // per step: scale of stored dL/d(pre-activation)
  std::vector<unsigned char> preact_bad;       // per step: a pre-activation is inf/NaN
};

// A per-step cotangent in the original time order: rows (t, b) of a (T, B, ld) array from
// column col; each (step, chunk) block is stored as true * 2^scale[t * n_chunks + chunk]
// (scale null: 0).
template <class T>
struct CotSeq {
  const T* base = nullptr;
  std::size_t ld = 0, col = 0;
  const int* scale = nullptr;
};

// One layer in one direction over the whole sequence. The reverse direction works in its own
// time order: its step s reads x_{T-1-s}; positions are mapped when results are written.
template <class T>
struct Run {
  Run(const RecurrentWeights<T>& w_, bool reverse_, std::size_t steps, std::size_t batch,
      std::size_t hidden, std::size_t inputs, std::size_t gates, bool lstm_, bool gru_, const T* x_,
      const T* h0_, const T* c0_)
      : w(w_),
        reverse(reverse_),
        T_(steps),
        B(batch),
        N(hidden),
        I(inputs),
        G(gates),
        GN(gates * hidden),
        lstm(lstm_),
        gru(gru_),
        x(x_),
        h0(h0_),
        c0(c0_) {}
  const RecurrentWeights<T>& w;
  bool reverse;
  std::size_t T_, B, N, I, G, GN;
  bool lstm, gru;
  const T* x;   // (T, B, I), own time order
  const T* h0;  // (B, N) or null
  const T* c0;
  // A: (T, B, GN) input projections -> gates (encoded, gates.hpp) -> dL/d(pre-activation).
  Buffer<T> A;
  // H: (T+1, B, N) hidden states; C, TC: LSTM cell states and tanh(c_t) (encoded); HN: GRU W_hn h +
  // b_hn during the forward pass, dL/d(n pre-activation) after the backward pass.
  Buffer<T> H, C, TC, HN;
  // W_hh packed once for the per-step products: h W_hh^T (forward) and g W_hh (backward).
  PackedMatrix<T> fwd, bwd;
  std::vector<ChunkStats> cs;
  int hi_w = 0, target = 0;  // rescaling window (see set_rescale_window)

  T* a(std::size_t t, std::size_t b) { return A.data() + (t * B + b) * GN; }
  T* h(std::size_t t, std::size_t b) { return H.data() + (t * B + b) * N; }
  T* c(std::size_t t, std::size_t b) { return C.data() + (t * B + b) * N; }
  T* tc(std::size_t t, std::size_t b) { return TC.data() + (t * B + b) * N; }
  T* hn(std::size_t t, std::size_t b) { return HN.data() + (t * B + b) * N; }
  // Position (see StackFlowIO) of own state s, and output time of own step s.
  std::size_t pos(std::size_t s) const { return reverse ? T_ - s : s; }
  std::size_t time(std::size_t s) const { return reverse ? T_ - 1 - s : s; }
};

// ---------------------------------------------------------------------------------------
// Row loops over the units of one sample, calling the cells' formulas (layers/). Vectorised:
// no reductions here; each output array is its own restrict parameter.

// LSTM forward: pre-activations a_* become the encoded gates; writes c', encoded tanh(c'), h'.
template <class T>
VGCORE_TARGET_CLONES void lstm_forward_row(T* __restrict ai, T* __restrict af, T* __restrict ag,
                                           T* __restrict ao, const T* __restrict cprev,
                                           T* __restrict cnext, T* __restrict tcn,
                                           T* __restrict hnext, std::size_t N) {
  for (std::size_t j = 0; j < N; ++j) {
    const auto u = layers::lstm_forward(ai[j], af[j], ag[j], ao[j], cprev[j]);
    ai[j] = u.vi;
    af[j] = u.vf;
    ag[j] = u.vg;
    ao[j] = u.vo;
    cnext[j] = u.c;
    tcn[j] = u.vt;
    hnext[j] = u.h;
  }
}

// LSTM backward from dh = dL/dh', dc = dL/dc' (times f): dL/da in place of the gates, dL/dc in dc.
template <class T>
VGCORE_TARGET_CLONES void lstm_backward_row(T* __restrict ai, T* __restrict af, T* __restrict ag,
                                            T* __restrict ao, const T* __restrict cprev,
                                            const T* __restrict tcv, const T* __restrict dh,
                                            T* __restrict dc, T f, std::size_t N) {
  for (std::size_t j = 0; j < N; ++j) {
    const auto q = layers::lstm_load(ai[j], af[j], ag[j], ao[j], tcv[j]);
    const auto d = layers::lstm_vjp(q, cprev[j], dh[j] * f, dc[j] * f);
    ai[j] = d.di;
    af[j] = d.df;
    ag[j] = d.dg;
    ao[j] = d.dout;
    dc[j] = d.dcprev;
  }
}

// GRU forward: a_* the input projections, q_* = W_h* h + b_h*; writes the encoded gates over
// a_*, q_n into hnb (the backward pass needs it) and h'.
template <class T>
VGCORE_TARGET_CLONES void gru_forward_row(T* __restrict ar, T* __restrict az, T* __restrict an,
                                          const T* __restrict qr, const T* __restrict qz,
                                          const T* __restrict qn, const T* __restrict hprev,
                                          T* __restrict hnext, T* __restrict hnb, std::size_t N) {
  for (std::size_t j = 0; j < N; ++j) {
    const auto u = layers::gru_forward(ar[j] + qr[j], az[j] + qz[j], an[j], qn[j], hprev[j]);
    ar[j] = u.vr;
    az[j] = u.vz;
    an[j] = u.vn;
    hnb[j] = qn[j];
    hnext[j] = u.h;
  }
}

// GRU backward from dh = dL/dh' (times f): dL/d(r, z pre-activations) and dL/dq_n over the
// gates, dL/dp_n over hnb, the direct part of dL/dh into dpb (the GEMM adds the rest).
template <class T>
VGCORE_TARGET_CLONES void gru_backward_row(T* __restrict ar, T* __restrict az, T* __restrict an,
                                           T* __restrict hnb, const T* __restrict hprev,
                                           const T* __restrict dh, T* __restrict dpb, T f,
                                           std::size_t N) {
  for (std::size_t j = 0; j < N; ++j) {
    const auto q = layers::gru_load(ar[j], az[j], an[j]);
    const auto d = layers::gru_vjp(q, hnb[j], hprev[j], dh[j] * f);
    ar[j] = d.dr;
    az[j] = d.dz;
    an[j] = d.dqn;
    hnb[j] = d.dpn;
    dpb[j] = d.direct;
  }
}

// RNN backward: dL/dz = dh * f * phi'(z), in place of phi'.
template <class T>
VGCORE_TARGET_CLONES void rnn_backward_row(T* __restrict at, const T* __restrict dh, T f,
                                           std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) at[i] = layers::rnn_vjp(at[i], dh[i], f);
}

// ---------------------------------------------------------------------------------------
// Forward steps. Each processes rows [b0, b0 + nb) of step t (h_t -> h_{t+1}).

template <class T>
void forward_rnn(Run<T>& p, std::size_t t, std::size_t b0, std::size_t nb, const Activation& act,
                 ChunkStats& st, T sat_level) {
  const std::size_t N = p.N;
  T* at = p.a(t, b0);
  gemm_packed(nb, p.h(t, b0), N, p.fwd, T(1), at, N);
  // An overflowed pre-activation can hide behind a saturating activation (tanh(inf) = 1).
  st.preact_bad[t] = any_nonfinite(at, nb * N) ? 1 : 0;
  T* hn = p.h(t + 1, b0);
  activation_forward(act, at, hn, at, nb * N);
  double s = 0, s2 = 0;
  moments(hn, nb * N, s, s2);
  const double ns = static_cast<double>(count_below(at, nb * N, sat_level));
  st.sum[t] = s;
  st.sumsq[t] = s2;
  st.saturated[t] = ns;
  st.gate_saturated[t] = ns;
}

// Saturated units of an encoded gate block: sigmoid' = s(1-s) or tanh' = 1 - g^2 below level.
template <class T>
VGCORE_TARGET_CLONES std::size_t count_saturated(const T* v, std::size_t n, bool is_tanh, T level) {
  std::size_t c = 0;
  if (is_tanh)
    for (std::size_t j = 0; j < n; ++j) c += (gates::tanh_deriv(v[j]) < level) ? 1 : 0;
  else
    for (std::size_t j = 0; j < n; ++j) c += (gates::sigmoid_deriv(v[j]) < level) ? 1 : 0;
  return c;
}

template <class T>
void forward_lstm(Run<T>& p, std::size_t t, std::size_t b0, std::size_t nb, ChunkStats& st,
                  double thr) {
  const std::size_t N = p.N, GN = p.GN;
  T* at = p.a(t, b0);
  gemm_packed(nb, p.h(t, b0), N, p.fwd, T(1), at, GN);
  st.preact_bad[t] = any_nonfinite(at, nb * GN) ? 1 : 0;
  const T sat_sig = static_cast<T>(0.25 * thr), sat_tanh = static_cast<T>(thr);
  double s = 0, s2 = 0;
  std::size_t n_gate[4] = {0, 0, 0, 0};
  for (std::size_t b = 0; b < nb; ++b) {
    T* ai = at + b * GN;
    T* hnext = p.h(t + 1, b0 + b);
    lstm_forward_row(ai, ai + N, ai + 2 * N, ai + 3 * N, p.c(t, b0 + b), p.c(t + 1, b0 + b),
                     p.tc(t, b0 + b), hnext, N);
    moments(hnext, N, s, s2);
    for (std::size_t k = 0; k < 4; ++k)
      n_gate[k] += count_saturated(ai + k * N, N, k == 2, k == 2 ? sat_tanh : sat_sig);
  }
  st.sum[t] = s;
  st.sumsq[t] = s2;
  for (std::size_t k = 0; k < 4; ++k) st.gate_saturated[4 * t + k] = static_cast<double>(n_gate[k]);
  st.saturated[t] = static_cast<double>(n_gate[0] + n_gate[1] + n_gate[2] + n_gate[3]);
}

template <class T>
void forward_gru(Run<T>& p, std::size_t t, std::size_t b0, std::size_t nb, ChunkStats& st,
                 double thr, std::vector<T>& q) {
  const std::size_t N = p.N, GN = p.GN;
  T* at = p.a(t, b0);
  // q = h_t W_hh^T + b_hh, kept apart because r multiplies its n-block.
  if (p.w.bias_hh) {
    for (std::size_t b = 0; b < nb; ++b)
      std::copy(p.w.bias_hh, p.w.bias_hh + GN, q.data() + b * GN);
  }
  gemm_packed(nb, p.h(t, b0), N, p.fwd, p.w.bias_hh ? T(1) : T(0), q.data(), GN);
  // r * (W_hn h + b_hn) with an infinite second factor and r = 0 would be NaN in the backward.
  st.preact_bad[t] = (any_nonfinite(at, nb * GN) || any_nonfinite(q.data(), nb * GN)) ? 1 : 0;
  const T sat_sig = static_cast<T>(0.25 * thr), sat_tanh = static_cast<T>(thr);
  double s = 0, s2 = 0;
  std::size_t n_gate[3] = {0, 0, 0};
  for (std::size_t b = 0; b < nb; ++b) {
    T* ar = at + b * GN;
    const T* qr = q.data() + b * GN;
    T* hnext = p.h(t + 1, b0 + b);
    gru_forward_row(ar, ar + N, ar + 2 * N, qr, qr + N, qr + 2 * N, p.h(t, b0 + b), hnext,
                    p.hn(t, b0 + b), N);
    moments(hnext, N, s, s2);
    for (std::size_t k = 0; k < 3; ++k)
      n_gate[k] += count_saturated(ar + k * N, N, k == 2, k == 2 ? sat_tanh : sat_sig);
  }
  st.sum[t] = s;
  st.sumsq[t] = s2;
  for (std::size_t k = 0; k < 3; ++k) st.gate_saturated[3 * t + k] = static_cast<double>(n_gate[k]);
  st.saturated[t] = static_cast<double>(n_gate[0] + n_gate[1] + n_gate[2]);
}

// ---------------------------------------------------------------------------------------
// Backward steps. `dh` holds dL/dh_{t+1} (stored = true * 2^scale, cotangents already added)
// for the chunk's rows and `f` the pending power-of-two factor. Each writes dL/d(pre-activation)
// of step t into A (and HN for GRU) and dL/dh_t into dh_prev.

template <class T>
void backward_rnn(Run<T>& p, std::size_t t, std::size_t b0, std::size_t nb, const T* dh, T f,
                  T* dh_prev) {
  const std::size_t N = p.N;
  T* at = p.a(t, b0);
  rnn_backward_row(at, dh, f, nb * N);
  gemm_packed(nb, at, N, p.bwd, T(0), dh_prev, N);
}

template <class T>
void backward_lstm(Run<T>& p, std::size_t t, std::size_t b0, std::size_t nb, const T* dh, T f,
                   T* dh_prev, T* dc) {
  const std::size_t N = p.N, GN = p.GN;
  T* at = p.a(t, b0);
  for (std::size_t b = 0; b < nb; ++b) {
    T* ai = at + b * GN;
    lstm_backward_row(ai, ai + N, ai + 2 * N, ai + 3 * N, p.c(t, b0 + b), p.tc(t, b0 + b),
                      dh + b * N, dc + b * N, f, N);
  }
  gemm_packed(nb, at, GN, p.bwd, T(0), dh_prev, N);
}

template <class T>
void backward_gru(Run<T>& p, std::size_t t, std::size_t b0, std::size_t nb, const T* dh, T f,
                  T* dh_prev) {
  const std::size_t N = p.N, GN = p.GN;
  T* at = p.a(t, b0);
  for (std::size_t b = 0; b < nb; ++b) {
    T* ar = at + b * GN;
    gru_backward_row(ar, ar + N, ar + 2 * N, p.hn(t, b0 + b), p.h(t, b0 + b), dh + b * N,
                     dh_prev + b * N, f, N);
  }
  gemm_packed(nb, at, GN, p.bwd, T(1), dh_prev, N);
}

// ---------------------------------------------------------------------------------------
// The phases of one run.

// Rescaling bounds. One backward step maps the stored (dL/dh, dL/dc) of norm r to entries
// below G r, with G = ||W_hh||_F K + (GRU: 1) and K bounding the gate derivatives (LSTM:
// |c_t| <= |c_0| + t; GRU: |W_hn h + b_hn| with |h_t| <= max(|h_0|, 1)). The norm entering
// a step is kept below 2^hi_w with G 2^(hi_w + 1) < 2^(emax - 1), so no product overflows;
// it is brought to 2^target when out of its window.
template <class T>
void set_rescale_window(Run<T>& p, const FlowOptions& opt) {
  using RL = RescaleLimits<T>;
  const auto& w = p.w;
  const std::size_t B = p.B, N = p.N, GN = p.GN;
  int hi_w = RL::window;
  if (opt.rescale) {
    int kw = 0;
    const double sw = sum_squares_scaled(w.weight_hh, GN * N, kw);
    if (sw > 0.0 && std::isfinite(sw)) {
      double kcell = 1.0;
      if (p.lstm) {
        kcell = std::sqrt(2.0) * (1.5 + 0.25 * ((p.c0 ? max_abs(p.c0, B * N) : 0.0) + p.T_));
      } else if (p.gru) {
        const double hmax = std::max(1.0, p.h0 ? max_abs(p.h0, B * N) : 0.0);
        double qmax = 0.0;
        for (std::size_t r = 2 * N; r < GN; ++r) {
          double a = 0.0;
          for (std::size_t j = 0; j < N; ++j)
            a += std::fabs(static_cast<double>(w.weight_hh[r * N + j]));
          a = a * hmax + (w.bias_hh ? std::fabs(static_cast<double>(w.bias_hh[r])) : 0.0);
          qmax = std::max(qmax, a);
        }
        kcell = 0.25 * qmax + 0.25 * (hmax + 1.0) + 1.0;
      }
      double lg = 0.5 * std::log2(sw) - kw + std::log2(kcell);
      if (p.gru) lg = 1.0 + std::max(lg, 0.0);  // + 1: G <= 2 max(||W_hh||_F K, 1)
      const double cap = RL::emax - 3 - lg;
      if (!(cap >= hi_w))
        hi_w = cap > -2.0 * RL::window ? static_cast<int>(std::floor(cap)) : -2 * RL::window;
    }
  }
  p.hi_w = hi_w;
  p.target = std::max(std::min(0, hi_w - 2), -RL::window);
}

// Progress over the whole call: `units` of `total` done when a run's primary chunk reports.
struct Progress {
  std::size_t offset = 0, total = 0;
};

template <class T>
void allocate(Run<T>& p) {
  const std::size_t T_ = p.T_, B = p.B, N = p.N;
  p.fwd = PackedMatrix<T>::transposed(p.w.weight_hh, p.GN, N, N);
  p.bwd = PackedMatrix<T>::rows(p.w.weight_hh, p.GN, N, N);
  // Per-step caches, streamed once per call: small pages (workspace.hpp). As huge pages, a
  // first call over a long sequence spent most of its time in the kernel compacting memory
  // for them (2.2 of 3.8 s at T = 1e5, before its first progress report).
  constexpr bool kSmallPages = false;
  p.A.resize(T_ * B * p.GN, kSmallPages);
  p.H.resize((T_ + 1) * B * N, kSmallPages);
  if (p.lstm) {
    p.C.resize((T_ + 1) * B * N, kSmallPages);
    p.TC.resize(T_ * B * N, kSmallPages);
  }
  if (p.gru) p.HN.resize(T_ * B * N, kSmallPages);
}

// (1) the input projections and the forward sequence, chunk-parallel.
template <class T>
void run_forward(Run<T>& p, const FlowOptions& opt, Control& ctl, std::size_t n_chunks, int budget,
                 Progress prog) {
  const auto& w = p.w;
  const std::size_t T_ = p.T_, B = p.B, N = p.N, I = p.I, G = p.G, GN = p.GN;
  {
    std::vector<T> bias(GN, T(0));
    for (std::size_t k = 0; k < GN; ++k) {
      if (w.bias_ih) bias[k] += w.bias_ih[k];
      // GRU adds all of b_hh with the recurrent product (b_hn sits inside r * (W_hn h + b_hn)).
      if (w.bias_hh && cell_folds_bias_hh(w.kind)) bias[k] += w.bias_hh[k];
    }
    // On our own workers: OpenBLAS's pool would keep spinning on the cores (parallel_rows.hpp).
    parallel_rows(opt.num_threads, T_ * B, 64, ctl, [&](std::size_t r0, std::size_t r1) {
      for (std::size_t r = r0; r < r1; ++r)
        std::copy(bias.begin(), bias.end(), p.A.data() + r * GN);
      blas::gemm(blas::Op::N, blas::Op::T, r1 - r0, GN, I, T(1), p.x + r0 * I, I, w.weight_ih, I,
                 T(1), p.A.data() + r0 * GN, GN);
    });
  }
  if (p.h0)
    std::copy(p.h0, p.h0 + B * N, p.H.data());
  else
    std::fill(p.H.data(), p.H.data() + B * N, T(0));
  if (p.lstm) {
    if (p.c0)
      std::copy(p.c0, p.c0 + B * N, p.C.data());
    else
      std::fill(p.C.data(), p.C.data() + B * N, T(0));
  }
  const Activation act = make_activation(cell_activation(w.kind));
  const T sat_level = static_cast<T>(opt.saturation_threshold * act.max_derivative());
  p.cs.assign(n_chunks, ChunkStats{});
  // Workers run single-threaded BLAS (a fallback for the packed products, see packed_gemm.hpp).
  blas::BlasThreadsScope chunk_threads(n_chunks > 1 ? 1 : blas::step_threads(B, GN, N, budget));
  run_chunks(n_chunks, ctl, [&](std::size_t ci) {
    const auto [b0, b1] = split_range(B, n_chunks, ci);
    const std::size_t nb = b1 - b0;
    ChunkStats& st = p.cs[ci];
    st.sum.assign(T_, 0.0);
    st.sumsq.assign(T_, 0.0);
    st.saturated.assign(T_, 0.0);
    st.gate_saturated.assign(T_ * G, 0.0);
    st.preact_bad.assign(T_, 0);
    std::vector<T> q(p.gru ? nb * GN : 0);
    for (std::size_t t = 0; t < T_; ++t) {
      if (p.lstm)
        forward_lstm(p, t, b0, nb, st, opt.saturation_threshold);
      else if (p.gru)
        forward_gru(p, t, b0, nb, st, opt.saturation_threshold, q);
      else
        forward_rnn(p, t, b0, nb, act, st, sat_level);
      if (ci == 0)
        ctl.tick(prog.offset + t + 1, prog.total);
      else
        ctl.poll();
    }
  });
}

// Where the backward pass of a run starts: a per-step cotangent sequence (seq.base set), or
// dL/dh_T given (cot_last, true values), or by default h_T itself (the loss 0.5 ||h_T||^2).
template <class T>
struct BackwardSource {
  CotSeq<T> seq;
  const T* cot_last = nullptr;   // (B, N)
  const T* cell_last = nullptr;  // LSTM (B, N): dL/dc_T
};

// Kept outputs of one run, (T+1, B, N) by position, or null.
template <class T>
struct RunOutputs {
  T* grads = nullptr;
  T* cell_grads = nullptr;
};

// (2) the backward sequence, chunk-parallel: dL/d(pre-activation) of every step into A (at the
// scales dz_scale), the norms of dL/dh (and dL/dc) at every state.
template <class T>
void run_backward(Run<T>& p, const FlowOptions& opt, Control& ctl, std::size_t n_chunks, int budget,
                  const BackwardSource<T>& src, const RunOutputs<T>& out, Progress prog) {
  using RL = RescaleLimits<T>;
  const std::size_t T_ = p.T_, B = p.B, N = p.N, GN = p.GN;
  const bool lstm = p.lstm, gru = p.gru;
  const int hi_w = p.hi_w, target = p.target;
  const CotSeq<T>& seq = src.seq;
  blas::BlasThreadsScope chunk_threads(n_chunks > 1 ? 1 : blas::step_threads(B, GN, N, budget));
  run_chunks(n_chunks, ctl, [&](std::size_t ci) {
    const auto [b0, b1] = split_range(B, n_chunks, ci);
    const std::size_t nb = b1 - b0;
    ChunkStats& st = p.cs[ci];
    st.grad_sumsq.assign(T_ + 1, 0.0);
    st.cell_sumsq.assign(T_ + 1, 0.0);
    st.grad_scale.assign(T_ + 1, 0);
    st.cell_scale.assign(T_ + 1, 0);
    st.dz_scale.assign(T_, 0);
    // dh / dh_prev ping-pong; dc in place (LSTM).
    std::vector<T> dha(nb * N, T(0)), dhb(nb * N, T(0)), dc(lstm ? nb * N : 0, T(0));
    T* dh = dha.data();
    T* dh_prev = dhb.data();
    const bool per_step = seq.base != nullptr;
    const bool contiguous = seq.ld == N && seq.col == 0;
    if (!per_step) {
      if (src.cot_last)
        std::copy(src.cot_last + b0 * N, src.cot_last + b1 * N, dh);
      else
        std::copy(p.h(T_, b0), p.h(T_, b0) + nb * N, dh);
    }
    if (lstm && src.cell_last) std::copy(src.cell_last + b0 * N, src.cell_last + b1 * N, dc.data());
    // The cotangent rows of own step t, and their stored scale.
    auto cot_row = [&](std::size_t t, std::size_t b) {
      return seq.base + (p.time(t) * B + b) * seq.ld + seq.col;
    };
    auto cot_scale = [&](std::size_t t) {
      return seq.scale ? seq.scale[p.time(t) * n_chunks + ci] : 0;
    };
    // Sequence losses: the largest stored |dL/dh_t| exponent of each step (kNoExponent: all
    // zero), so that adding it at the current scale is checked for overflow in O(1) per step.
    std::vector<int> cot_exp;
    if (per_step) {
      cot_exp.assign(T_, kNoExponent);
      for (std::size_t t = 0; t < T_; ++t) {
        double m = 0.0;
        if (contiguous) {
          m = max_abs(cot_row(t, b0), nb * N);
        } else {
          for (std::size_t b = b0; b < b1; ++b) m = std::max(m, max_abs(cot_row(t, b), N));
        }
        if (m > 0.0 && m <= std::numeric_limits<double>::max()) cot_exp[t] = exponent_of(m);
      }
    }
    const std::size_t n = nb * N;
    int scale = 0, k = 0, kc = 0;
    double s2 = 0, c2 = 0;
    // Norms of (dh, dc) at the stored scale; e: their joint norm exponent.
    auto measure = [&]() {
      s2 = sum_squares_scaled(dh, n, k);
      c2 = lstm ? sum_squares_scaled(dc.data(), n, kc) : 0.0;
      if (lstm) kc = c2 == 0.0 ? k : kc;
      if (!lstm || k == kc) return norm_exponent(s2 + c2, k);
      const bool hs = s2 > 0.0 && std::isfinite(s2), cs_ = c2 > 0.0 && std::isfinite(c2);
      if (hs && cs_) return std::max(norm_exponent(s2, k), norm_exponent(c2, kc));
      return hs ? norm_exponent(s2, k) : norm_exponent(c2, kc);
    };
    auto scale_state = [&](int d) {
      scale_pow2_wide(dh, n, d);
      if (lstm) scale_pow2_wide(dc.data(), n, d);
      scale += d;
    };
    int e = measure();
    int pending = opt.rescale ? next_pending<T>(s2 + c2, e, 0) : 0;
    bool zero = !(s2 + c2 != 0.0);
    // State s = T..0: dh = dL/dh_s (before the loss term at s), dc = dL/dc_s; then step s-1.
    for (std::size_t st_i = T_;; --st_i) {
      // Where a per-step term was placed: its largest entry near 2^top (0: not shifted for it).
      int top = 0;
      if (per_step && st_i > 0) {  // add dL/dh_s from the loss (or the layer above) at that step
        const std::size_t t = st_i - 1;
        const int cs_t = cot_scale(t);
        if (zero && scale != cs_t) {  // a zero vector has every scale: take the term's
          scale = cs_t;
          pending = 0;
        }
        if (cot_exp[t] != kNoExponent && cot_exp[t] - cs_t + scale > RL::emax - 4) {
          // dL/dh so far is far smaller than this term: shift (dh, dc) down only as far as the
          // term needs to stay below 2^(emax - 3), not to the term's scale, so that a part far
          // below the other (dc under an injected dh) keeps its digits until it is measured
          // below; the window rescaling then brings the state back before the step. Without
          // rescaling (the plain product) the term's largest entry goes to 2^0, as the product
          // must not overflow.
          top = opt.rescale ? RL::emax - 4 : 0;
          scale_state(top - (cot_exp[t] - cs_t + scale));
          pending = 0;
        }
        if (contiguous) {
          add_scaled(dh, cot_row(t, b0), n, scale - cs_t);
        } else {
          for (std::size_t b = 0; b < nb; ++b)
            add_scaled(dh + b * N, cot_row(t, b0 + b), N, scale - cs_t);
        }
      }
      e = measure();
      // The norms and kept gradients of state s, from the vector before any window rescaling
      // (which serves only the next steps' safety, and can push a part far below the other
      // into the subnormals).
      const std::size_t at_pos = p.pos(st_i);
      if (out.grads) store_scaled(out.grads + (at_pos * B + b0) * N, dh, n, -scale);
      if (out.cell_grads)
        store_scaled(out.cell_grads + (at_pos * B + b0) * N, dc.data(), n, -scale);
      st.grad_sumsq[st_i] = s2;
      st.cell_sumsq[st_i] = c2;
      st.grad_scale[st_i] = scale + k;
      st.cell_scale[st_i] = scale + kc;
      if (st_i == 0) break;
      if (opt.rescale && (top != 0 || pending > RL::pow2max || pending < -RL::pow2max ||
                          e + pending > hi_w || e + pending < -RL::window)) {
        // The factor from the previous norm does not fit this vector (or a term was placed near
        // the top of the range): rescale it now. A norm that is not finite (inf / NaN entries)
        // has no exponent: the term goes back to 2^0.
        const bool finite = std::isfinite(s2) && std::isfinite(c2);
        scale_state(top != 0 && !finite ? -top : target - e);
        pending = 0;
        e = measure();
      }
      const std::size_t t = st_i - 1;
      const T f = pow2<T>(pending);
      if (lstm)
        backward_lstm(p, t, b0, nb, dh, f, dh_prev, dc.data());
      else if (gru)
        backward_gru(p, t, b0, nb, dh, f, dh_prev);
      else
        backward_rnn(p, t, b0, nb, dh, f, dh_prev);
      scale += pending;
      st.dz_scale[t] = scale;
      zero = !(s2 + c2 != 0.0);
      pending = opt.rescale ? next_pending<T>(s2 + c2, e, pending) : 0;
      std::swap(dh, dh_prev);
      if (ci == 0)
        ctl.tick(prog.offset + T_ - t, prog.total);
      else
        ctl.poll();
    }
  });
}

// (3) dL/dx of every own step, dx (T, B, I) in own time order, = dL/d(pre-activation) W_ih
// (GRU: the n block from HN, dL/d(n pre-activation)); block (t, chunk) is stored as
// true * 2^dx_scale[t * n_chunks + chunk].
template <class T>
void run_input_grads(Run<T>& p, const FlowOptions& opt, Control& ctl, std::size_t n_chunks,
                     std::vector<T>& dx, std::vector<int>& dx_scale) {
  const std::size_t T_ = p.T_, B = p.B, N = p.N, I = p.I, GN = p.GN;
  // Shift the operands by powers of two where the sums could overflow or lose digits.
  double amax = max_abs(p.A.data(), p.A.size());
  if (p.gru) amax = std::max(amax, max_abs(p.HN.data(), p.HN.size()));
  int sa = 0, sw = 0;
  product_shifts<T>(amax, max_abs(p.w.weight_ih, GN * I), GN, sa, sw);
  if (sa != 0) {  // in place: the parameter gradients read A at the recorded scales
    scale_pow2_wide(p.A.data(), p.A.size(), sa);
    if (p.gru) scale_pow2_wide(p.HN.data(), p.HN.size(), sa);
    for (auto& st : p.cs)
      for (int& s : st.dz_scale) s += sa;
  }
  std::vector<T> ws;
  const T* wih = p.w.weight_ih;
  if (sw != 0) {
    ws.assign(wih, wih + GN * I);
    scale_pow2_wide(ws.data(), ws.size(), sw);
    wih = ws.data();
  }
  dx.assign(T_ * B * I, T(0));
  const std::size_t kA = p.gru ? 2 * N : GN;
  parallel_rows(opt.num_threads, T_ * B, 64, ctl, [&](std::size_t r0, std::size_t r1) {
    blas::gemm(blas::Op::N, blas::Op::N, r1 - r0, I, kA, T(1), p.A.data() + r0 * GN, GN, wih, I,
               T(0), dx.data() + r0 * I, I);
    if (p.gru)
      blas::gemm(blas::Op::N, blas::Op::N, r1 - r0, I, N, T(1), p.HN.data() + r0 * N, N,
                 wih + 2 * N * I, I, T(1), dx.data() + r0 * I, I);
  });
  dx_scale.assign(T_ * n_chunks, 0);
  for (std::size_t ci = 0; ci < n_chunks; ++ci)
    for (std::size_t t = 0; t < T_; ++t) dx_scale[t * n_chunks + ci] = p.cs[ci].dz_scale[t] + sw;
}

// The cotangent of the layer below (or of x) in the original time order, (T, B, I) with per
// (step, chunk) scales: one direction's dx as it is, or both directions' summed at the scale of
// the larger (the smaller one is rounded to it, as a floating-point sum would).
template <class T>
void combine_directions(std::vector<T>& fwd, std::vector<int>& fwd_scale, const std::vector<T>& rev,
                        const std::vector<int>& rev_scale, std::size_t T_, std::size_t B,
                        std::size_t I, std::size_t n_chunks) {
  for (std::size_t t = 0; t < T_; ++t) {
    const std::size_t tr = T_ - 1 - t;  // the reverse run's own step for time t
    for (std::size_t ci = 0; ci < n_chunks; ++ci) {
      const auto [b0, b1] = split_range(B, n_chunks, ci);
      const std::size_t n = (b1 - b0) * I;
      T* y = fwd.data() + (t * B + b0) * I;
      const T* r = rev.data() + (tr * B + b0) * I;
      const int sf = fwd_scale[t * n_chunks + ci], sr = rev_scale[tr * n_chunks + ci];
      const bool has_f = max_abs(y, n) > 0.0, has_r = max_abs(r, n) > 0.0;
      if (!has_r) continue;
      if (!has_f) {
        std::copy(r, r + n, y);
        fwd_scale[t * n_chunks + ci] = sr;
        continue;
      }
      const int c = std::min(sf, sr);  // stored = true * 2^scale: the smaller scale is larger
      scale_pow2_wide(y, n, c - sf);
      add_scaled(y, r, n, c - sr);
      fwd_scale[t * n_chunks + ci] = c;
    }
  }
}

// log ||dL/dx_t|| over the batch from a combined cotangent (see combine_directions).
template <class T>
std::vector<double> cotangent_log_norms(const std::vector<T>& dx, const std::vector<int>& scale,
                                        std::size_t T_, std::size_t B, std::size_t I,
                                        std::size_t n_chunks) {
  std::vector<double> out(T_), per_chunk(n_chunks);
  for (std::size_t t = 0; t < T_; ++t) {
    for (std::size_t ci = 0; ci < n_chunks; ++ci) {
      const auto [b0, b1] = split_range(B, n_chunks, ci);
      int k = 0;
      const double s = sum_squares_scaled(dx.data() + (t * B + b0) * I, (b1 - b0) * I, k);
      per_chunk[ci] = log_norm(s, scale[t * n_chunks + ci] + k);
    }
    out[t] = combine_log_norms(per_chunk.data(), n_chunks, 1);
  }
  return out;
}

// Norms and activation statistics of a run, by position / output time.
template <class T>
FlowStats collect_stats(Run<T>& p, std::size_t n_chunks) {
  const std::size_t T_ = p.T_, G = p.G;
  const auto& cs = p.cs;
  FlowStats out;
  out.n_gates = G;
  std::vector<double> per_chunk(n_chunks);
  out.log_grad_norms.resize(T_ + 1);
  if (p.lstm) out.log_cell_grad_norms.resize(T_ + 1);
  for (std::size_t t = 0; t <= T_; ++t) {
    for (std::size_t c = 0; c < n_chunks; ++c)
      per_chunk[c] = log_norm(cs[c].grad_sumsq[t], cs[c].grad_scale[t]);
    out.log_grad_norms[p.pos(t)] = combine_log_norms(per_chunk.data(), n_chunks, 1);
    if (p.lstm) {
      for (std::size_t c = 0; c < n_chunks; ++c)
        per_chunk[c] = log_norm(cs[c].cell_sumsq[t], cs[c].cell_scale[t]);
      out.log_cell_grad_norms[p.pos(t)] = combine_log_norms(per_chunk.data(), n_chunks, 1);
    }
  }
  out.act_mean.resize(T_);
  out.act_std.resize(T_);
  out.saturation.resize(T_);
  out.gate_saturation.resize(T_ * G);
  out.preact_nonfinite.assign(T_, 0);
  const double n_units = static_cast<double>(p.B * p.N);
  for (std::size_t s_own = 0; s_own < T_; ++s_own) {
    const std::size_t t = p.time(s_own);
    double s = 0, s2 = 0, ns = 0;
    for (auto& st : cs) {
      out.preact_nonfinite[t] |= st.preact_bad[s_own];
      s += st.sum[s_own];
      s2 += st.sumsq[s_own];
      ns += st.saturated[s_own];
      for (std::size_t g = 0; g < G; ++g)
        out.gate_saturation[t * G + g] += st.gate_saturated[s_own * G + g];
    }
    const double mean = s / n_units;
    out.act_mean[t] = mean;
    out.act_std[t] = std::sqrt(std::max(0.0, s2 / n_units - mean * mean));
    out.saturation[t] = ns / (n_units * G);
    for (std::size_t g = 0; g < G; ++g) out.gate_saturation[t * G + g] /= n_units;
  }
  return out;
}

// Copy a (T+1, B, N) array of a run into position order.
template <class T>
void copy_by_position(const Run<T>& p, const T* src, T* dst) {
  const std::size_t row = p.B * p.N;
  if (!p.reverse) {
    std::copy(src, src + (p.T_ + 1) * row, dst);
    return;
  }
  for (std::size_t s = 0; s <= p.T_; ++s)
    std::copy(src + s * row, src + (s + 1) * row, dst + p.pos(s) * row);
}

// (4) parameter-gradient norms over all steps at once. Scales A (and HN, H) in place.
template <class T>
void run_param_grads(Run<T>& p, std::size_t n_chunks, FlowStats& out) {
  const auto& w = p.w;
  const std::size_t T_ = p.T_, B = p.B, N = p.N, I = p.I, GN = p.GN;
  const bool gru = p.gru;
  const auto& cs = p.cs;
  int ref = std::numeric_limits<int>::max();
  for (auto& st : cs)
    for (int s : st.dz_scale) ref = std::min(ref, s);
  for (std::size_t ci = 0; ci < n_chunks; ++ci) {
    const auto [b0, b1] = split_range(B, n_chunks, ci);
    for (std::size_t t = 0; t < T_; ++t) {
      const int k = ref - cs[ci].dz_scale[t];
      scale_pow2(p.a(t, b0), (b1 - b0) * GN, k);
      if (gru) scale_pow2(p.hn(t, b0), (b1 - b0) * N, k);
    }
  }
  const std::size_t rows = T_ * B;
  auto norm_of = [](const auto* v, std::size_t n, int at) {
    int k = 0;
    const double s = sum_squares_scaled(v, n, k);
    return log_norm(s, at + k);
  };
  // Bias gradients: column sums of dL/d(pre-activation), in double, at the common scale.
  std::vector<double> dbh(GN, 0.0), dbi(GN, 0.0);
  for (std::size_t r = 0; r < rows; ++r) {
    const T* ar = p.A.data() + r * GN;
    for (std::size_t k = 0; k < GN; ++k) dbh[k] += ar[k];
  }
  dbi = dbh;
  if (gru) {
    for (std::size_t k = 2 * N; k < GN; ++k) dbi[k] = 0;
    for (std::size_t r = 0; r < rows; ++r) {
      const T* hr = p.HN.data() + r * N;
      for (std::size_t j = 0; j < N; ++j) dbi[2 * N + j] += hr[j];
    }
  }
  // Weight gradients as GEMMs in T: the operands are shifted by powers of two first where
  // the terms could overflow or lose digits (huge or tiny inputs, far-rescaled gradients):
  // A (and HN) and H in place (ours), x in a copy.
  double amax = max_abs(p.A.data(), p.A.size());
  if (gru) amax = std::max(amax, max_abs(p.HN.data(), p.HN.size()));
  int sa = 0, sx = 0;
  product_shifts<T>(amax, max_abs(p.x, rows * I), rows, sa, sx);
  scale_pow2_wide(p.A.data(), p.A.size(), sa);
  if (gru) scale_pow2_wide(p.HN.data(), p.HN.size(), sa);
  std::vector<T> xs;
  const T* xp = p.x;
  if (sx != 0) {
    xs.assign(p.x, p.x + rows * I);
    scale_pow2_wide(xs.data(), xs.size(), sx);
    xp = xs.data();
  }
  const int at_ih = ref + sa + sx;
  std::vector<T> dw(GN * std::max(I, N));
  double wih;
  if (gru) {
    // rows r,z of dW_ih come from A's first 2N columns, rows n from HN.
    blas::gemm(blas::Op::T, blas::Op::N, 2 * N, I, rows, T(1), p.A.data(), GN, xp, I, T(0),
               dw.data(), I);
    int ka = 0, kb = 0;
    const double sa2 = sum_squares_scaled(dw.data(), 2 * N * I, ka);
    blas::gemm(blas::Op::T, blas::Op::N, N, I, rows, T(1), p.HN.data(), N, xp, I, T(0), dw.data(),
               I);
    const double sb2 = sum_squares_scaled(dw.data(), N * I, kb);
    if (ka == kb) {
      wih = log_norm(sa2 + sb2, at_ih + ka);
    } else {
      const double parts[2] = {log_norm(sa2, at_ih + ka), log_norm(sb2, at_ih + kb)};
      wih = combine_log_norms(parts, 2, 1);
    }
  } else {
    blas::gemm(blas::Op::T, blas::Op::N, GN, I, rows, T(1), p.A.data(), GN, xp, I, T(0), dw.data(),
               I);
    wih = norm_of(dw.data(), GN * I, at_ih);
  }
  T* hs = p.H.data();  // h_0..h_{T-1} (h_T is not a factor)
  int sa_hh = 0, sh = 0;
  product_shifts<T>(std::ldexp(amax, sa), max_abs(hs, rows * N), rows, sa_hh, sh);
  scale_pow2_wide(p.A.data(), p.A.size(), sa_hh);
  scale_pow2_wide(hs, rows * N, sh);
  blas::gemm(blas::Op::T, blas::Op::N, GN, N, rows, T(1), p.A.data(), GN, hs, N, T(0), dw.data(),
             N);
  const double whh = norm_of(dw.data(), GN * N, ref + sa + sa_hh + sh);
  const double ninf = -std::numeric_limits<double>::infinity();
  out.log_param_grad_norms = {wih, whh, w.bias_ih ? norm_of(dbi.data(), GN, ref) : ninf,
                              w.bias_hh ? norm_of(dbh.data(), GN, ref) : ninf};
  out.param_present = {1, 1, static_cast<unsigned char>(w.bias_ih ? 1 : 0),
                       static_cast<unsigned char>(w.bias_hh ? 1 : 0)};
}

// Time-reversed copy of a (T, B, width) sequence.
template <class T>
std::vector<T> reversed_in_time(const T* x, std::size_t T_, std::size_t row) {
  std::vector<T> out(T_ * row);
  for (std::size_t t = 0; t < T_; ++t)
    std::copy(x + t * row, x + (t + 1) * row, out.data() + (T_ - 1 - t) * row);
  return out;
}

}  // namespace

template <class T>
StackFlowStats stacked_gradient_flow(const std::vector<RecurrentWeights<T>>& layers,
                                     std::size_t num_layers, bool bidirectional,
                                     const StackFlowIO<T>& io, const FlowOptions& opt,
                                     Control& ctl) {
  const std::size_t L = num_layers, D = bidirectional ? 2 : 1;
  if (L == 0 || layers.size() != L * D)
    throw std::invalid_argument(
        "a recurrent stack needs num_layers * directions = " + std::to_string(L * D) +
        " layers, got " + std::to_string(layers.size()));
  for (const auto& w : layers)
    if (!w.weight_ih || !w.weight_hh) throw std::invalid_argument("recurrent weights are null");
  const CellKind kind = layers[0].kind;
  const bool lstm = kind == CellKind::lstm, gru = kind == CellKind::gru;
  const std::size_t T_ = io.steps, B = io.batch, N = layers[0].hidden;
  const std::size_t G = cell_gates(kind);
  if (T_ == 0) throw std::invalid_argument("x must have at least one time step, got T = 0");
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const std::size_t want_in = i < D ? layers[0].input_size : D * N;
    if (layers[i].kind != kind || layers[i].hidden != N || layers[i].input_size != want_in)
      throw std::invalid_argument("layer " + std::to_string(i) +
                                  " of a recurrent stack does not match its kind, hidden size "
                                  "or input size (" +
                                  std::to_string(want_in) + ")");
  }
  if (io.cell_cotangent && (L * D != 1 || !lstm))
    throw std::invalid_argument("cell_cotangent is only meaningful for a single-layer LSTM");
  const int budget = static_cast<int>(resolve_threads(opt.num_threads, 1 << 20));
  blas::BlasThreadsScope whole_call(budget);  // input projection and parameter GEMMs
  const std::size_t n_chunks = resolve_threads(opt.num_threads, B);
  const std::size_t per_run = 2 * T_;
  const std::size_t total_work = per_run * L * D;
  const std::size_t slot = (T_ + 1) * B * N;  // one run's (T+1, B, N) kept array

  // Inputs of each layer, own time order: layer 0 reads x; layer l > 0 the output sequence of
  // layer l - 1 (both directions concatenated); the reverse direction a time-reversed copy.
  std::vector<std::unique_ptr<Run<T>>> runs(L * D);
  std::vector<std::vector<T>> inputs(L * D);  // owned copies where needed
  for (std::size_t l = 0; l < L; ++l) {
    const std::size_t I = layers[l * D].input_size;
    const T* xl = io.x;
    if (l > 0) {
      if (D == 1) {
        xl = runs[l - 1]->H.data() + B * N;  // h_1..h_T of the layer below
      } else {
        std::vector<T>& cat = inputs[l * D];
        cat.resize(T_ * B * I);
        const Run<T>& f = *runs[(l - 1) * D];
        const Run<T>& r = *runs[(l - 1) * D + 1];
        for (std::size_t t = 0; t < T_; ++t)
          for (std::size_t b = 0; b < B; ++b) {
            T* row = cat.data() + (t * B + b) * I;
            const T* hf = f.H.data() + ((t + 1) * B + b) * N;
            const T* hr = r.H.data() + ((T_ - t) * B + b) * N;  // reverse state at position t
            std::copy(hf, hf + N, row);
            std::copy(hr, hr + N, row + N);
          }
        xl = cat.data();
      }
    }
    for (std::size_t d = 0; d < D; ++d) {
      const std::size_t i = l * D + d;
      const T* xin = xl;
      if (d == 1) {
        inputs[i] = reversed_in_time(xl, T_, B * I);
        xin = inputs[i].data();
      }
      runs[i] = std::make_unique<Run<T>>(layers[i], d == 1, T_, B, N, I, G, lstm, gru, xin,
                                         io.h0 ? io.h0 + i * B * N : nullptr,
                                         io.c0 && lstm ? io.c0 + i * B * N : nullptr);
      Run<T>& p = *runs[i];
      allocate(p);
      set_rescale_window(p, opt);
      run_forward(p, opt, ctl, n_chunks, budget, Progress{i * per_run, total_work});
    }
  }

  // The top layer's output at T-1 and the default loss 0.5 ||output[T-1]||^2.
  const std::size_t top = (L - 1) * D;
  std::vector<T> out_last(B * D * N);
  for (std::size_t d = 0; d < D; ++d) {
    const Run<T>& p = *runs[top + d];
    const std::size_t s = d == 0 ? T_ : 1;  // own state at position T (forward) / T-1 (reverse)
    for (std::size_t b = 0; b < B; ++b) {
      const T* h = p.H.data() + (s * B + b) * N;
      std::copy(h, h + N, out_last.data() + (b * D + d) * N);
    }
  }
  if (io.output_last) std::copy(out_last.begin(), out_last.end(), io.output_last);
  // A bidirectional top layer's loss sits on one step of each direction: as a sequence.
  std::vector<T> top_seq;
  const T* top_cot = io.cotangent;
  bool top_per_step = io.cotangent_per_step;
  if (D == 2 && !top_per_step) {
    top_seq.assign(T_ * B * D * N, T(0));
    const T* last = io.cotangent ? io.cotangent : out_last.data();
    std::copy(last, last + B * D * N, top_seq.data() + (T_ - 1) * B * D * N);
    top_cot = top_seq.data();
    top_per_step = true;
  }

  StackFlowStats result;
  result.layers.resize(L * D);
  std::vector<T> below, below_rev;  // the cotangent passed down, (T, B, I) by time
  std::vector<int> below_scale, below_rev_scale;
  for (std::size_t l = L; l-- > 0;) {
    std::vector<T> cot = std::move(below);
    std::vector<int> cot_scale = std::move(below_scale);
    for (std::size_t d = 0; d < D; ++d) {
      const std::size_t i = l * D + d;
      Run<T>& p = *runs[i];
      BackwardSource<T> src;
      if (l + 1 < L) {
        src.seq = CotSeq<T>{cot.data(), D * N, d * N, cot_scale.data()};
      } else if (top_per_step) {
        src.seq = CotSeq<T>{top_cot, D * N, d * N, nullptr};
      } else {
        src.cot_last = io.cotangent;  // null: h_T itself
        src.cell_last = io.cell_cotangent;
      }
      RunOutputs<T> outs;
      if (io.grads) outs.grads = io.grads + i * slot;
      if (io.cell_grads && lstm) outs.cell_grads = io.cell_grads + i * slot;
      run_backward(p, opt, ctl, n_chunks, budget, src, outs,
                   Progress{i * per_run + T_, total_work});
      if (l > 0 || io.input_grad_norms) {
        std::vector<T>& dx = d == 0 ? below : below_rev;
        std::vector<int>& dxs = d == 0 ? below_scale : below_rev_scale;
        run_input_grads(p, opt, ctl, n_chunks, dx, dxs);
      }
      result.layers[i] = collect_stats(p, n_chunks);
      if (io.states) copy_by_position(p, p.H.data(), io.states + i * slot);
      if (io.cell_states && lstm) copy_by_position(p, p.C.data(), io.cell_states + i * slot);
      if (io.h_n) std::copy(p.h(T_, 0), p.h(T_, 0) + B * N, io.h_n + i * B * N);
      if (io.c_n && lstm) std::copy(p.c(T_, 0), p.c(T_, 0) + B * N, io.c_n + i * B * N);
      if (opt.param_grads) {
        ctl.tick(i * per_run + per_run, total_work);
        run_param_grads(p, n_chunks, result.layers[i]);
      }
    }
    if (D == 2 && (l > 0 || io.input_grad_norms)) {
      const std::size_t I = layers[l * D].input_size;
      combine_directions(below, below_scale, below_rev, below_rev_scale, T_, B, I, n_chunks);
    }
    // The buffers of this layer are no longer needed.
    for (std::size_t d = 0; d < D; ++d) runs[l * D + d].reset();
    for (std::size_t d = 0; d < D; ++d) inputs[l * D + d] = std::vector<T>();
  }
  if (io.input_grad_norms)
    result.log_input_grad_norms =
        cotangent_log_norms(below, below_scale, T_, B, layers[0].input_size, n_chunks);
  return result;
}

template <class T>
FlowStats recurrent_gradient_flow(const RecurrentWeights<T>& w, const RecurrentFlowIO<T>& io,
                                  const FlowOptions& opt, Control& ctl) {
  StackFlowIO<T> s;
  s.x = io.x;
  s.steps = io.steps;
  s.batch = io.batch;
  s.h0 = io.h0;
  s.c0 = io.c0;
  s.cotangent = io.cotangent;
  s.cotangent_per_step = io.cotangent_per_step;
  s.cell_cotangent = io.cell_cotangent;
  s.h_n = io.last_state;
  s.c_n = io.last_cell;
  s.states = io.states;
  s.cell_states = io.cell_states;
  s.grads = io.grads;
  s.cell_grads = io.cell_grads;
  std::vector<RecurrentWeights<T>> layers{w};
  StackFlowStats r = stacked_gradient_flow(layers, 1, false, s, opt, ctl);
  return std::move(r.layers[0]);
}

template StackFlowStats stacked_gradient_flow<float>(const std::vector<RecurrentWeights<float>>&,
                                                     std::size_t, bool, const StackFlowIO<float>&,
                                                     const FlowOptions&, Control&);
template StackFlowStats stacked_gradient_flow<double>(const std::vector<RecurrentWeights<double>>&,
                                                      std::size_t, bool, const StackFlowIO<double>&,
                                                      const FlowOptions&, Control&);
template FlowStats recurrent_gradient_flow<float>(const RecurrentWeights<float>&,
                                                  const RecurrentFlowIO<float>&, const FlowOptions&,
                                                  Control&);
template FlowStats recurrent_gradient_flow<double>(const RecurrentWeights<double>&,
                                                   const RecurrentFlowIO<double>&,
                                                   const FlowOptions&, Control&);

}  // namespace vgcore

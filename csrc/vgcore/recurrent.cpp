// Backpropagation through time for RNN / LSTM / GRU.
//
// Structure: (1) the input projections of all steps in one GEMM; (2) the batch is split
// into chunks, one per worker thread, each running the whole forward sequence and the
// whole backward sequence with single-threaded BLAS (no synchronisation per step);
// (3) parameter gradients, if asked, as a few large GEMMs over all steps at once.
#include "vgcore/recurrent.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "vgcore/blas.hpp"
#include "vgcore/packed_gemm.hpp"
#include "vgcore/parallel_rows.hpp"
#include "vgcore/fastmath.hpp"
#include "vgcore/gates.hpp"
#include "vgcore/workspace.hpp"

namespace vgcore {
namespace {

namespace fm = vgcore::fastmath;

struct ChunkStats {
  std::vector<double> sum, sumsq, saturated;   // per step: of h_{t+1}; saturated gate units
  std::vector<double> gate_saturated;          // per step x gate
  std::vector<double> grad_sumsq, cell_sumsq;  // per state t = 0..T
  std::vector<int> grad_scale, cell_scale;     // per state: stored = true * 2^scale
  std::vector<int> dz_scale;                   // per step: scale of stored dL/d(pre-activation)
  std::vector<unsigned char> preact_bad;       // per step: a pre-activation is inf/NaN
};

template <class T>
struct Problem {
  const RecurrentWeights<T>& w;
  const RecurrentFlowIO<T>& io;
  const FlowOptions& opt;
  std::size_t T_, B, N, I, G, GN;
  // A: (T, B, GN) input projections -> gates (encoded, gates.hpp) -> dL/d(pre-activation).
  Buffer<T> A;
  // H: (T+1, B, N) hidden states; C, TC: LSTM cell states and tanh(c_t) (encoded); HN: GRU W_hn h +
  // b_hn during the forward pass, dL/d(n pre-activation) after the backward pass.
  Buffer<T> H, C, TC, HN;
  // W_hh packed once for the per-step products: h W_hh^T (forward) and g W_hh (backward).
  PackedMatrix<T> fwd, bwd;

  T* a(std::size_t t, std::size_t b) { return A.data() + (t * B + b) * GN; }
  T* h(std::size_t t, std::size_t b) { return H.data() + (t * B + b) * N; }
  T* c(std::size_t t, std::size_t b) { return C.data() + (t * B + b) * N; }
  T* tc(std::size_t t, std::size_t b) { return TC.data() + (t * B + b) * N; }
  T* hn(std::size_t t, std::size_t b) { return HN.data() + (t * B + b) * N; }
};

// ---------------------------------------------------------------------------------------
// Forward steps. Each processes rows [b0, b0 + nb) of step t (h_t -> h_{t+1}).

template <class T>
void forward_rnn(Problem<T>& p, std::size_t t, std::size_t b0, std::size_t nb,
                 const Activation& act, ChunkStats& st, T sat_level) {
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

// Gate nonlinearities, cell and hidden update of one row (vectorised: no reductions here).
// Gates and tanh(c) are stored encoded (gates.hpp): accurate derivatives in saturation.
template <class T>
VGCORE_TARGET_CLONES void lstm_row(T* __restrict ai, T* __restrict af, T* __restrict ag,
                                   T* __restrict ao, const T* __restrict cprev, T* __restrict cnext,
                                   T* __restrict tcn, T* __restrict hnext, std::size_t N) {
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
void forward_lstm(Problem<T>& p, std::size_t t, std::size_t b0, std::size_t nb, ChunkStats& st,
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
    lstm_row(ai, ai + N, ai + 2 * N, ai + 3 * N, p.c(t, b0 + b), p.c(t + 1, b0 + b),
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
VGCORE_TARGET_CLONES void gru_row(T* __restrict ar, T* __restrict az, T* __restrict an,
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

template <class T>
void forward_gru(Problem<T>& p, std::size_t t, std::size_t b0, std::size_t nb, ChunkStats& st,
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
    gru_row(ar, ar + N, ar + 2 * N, qr, qr + N, qr + 2 * N, p.h(t, b0 + b), hnext, p.hn(t, b0 + b),
            N);
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
VGCORE_TARGET_CLONES void rnn_back_row(T* __restrict at, const T* __restrict dh, T f,
                                       std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) at[i] = dh[i] * f * at[i];
}

template <class T>
void backward_rnn(Problem<T>& p, std::size_t t, std::size_t b0, std::size_t nb, const T* dh, T f,
                  T* dh_prev) {
  const std::size_t N = p.N;
  T* at = p.a(t, b0);
  rnn_back_row(at, dh, f, nb * N);
  gemm_packed(nb, at, N, p.bwd, T(0), dh_prev, N);
}

template <class T>
VGCORE_TARGET_CLONES void lstm_back_row(T* __restrict ai, T* __restrict af, T* __restrict ag,
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

template <class T>
void backward_lstm(Problem<T>& p, std::size_t t, std::size_t b0, std::size_t nb, const T* dh, T f,
                   T* dh_prev, T* dc) {
  const std::size_t N = p.N, GN = p.GN;
  T* at = p.a(t, b0);
  for (std::size_t b = 0; b < nb; ++b) {
    T* ai = at + b * GN;
    lstm_back_row(ai, ai + N, ai + 2 * N, ai + 3 * N, p.c(t, b0 + b), p.tc(t, b0 + b), dh + b * N,
                  dc + b * N, f, N);
  }
  gemm_packed(nb, at, GN, p.bwd, T(0), dh_prev, N);
}

template <class T>
VGCORE_TARGET_CLONES void gru_back_row(T* __restrict ar, T* __restrict az, T* __restrict an,
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

template <class T>
void backward_gru(Problem<T>& p, std::size_t t, std::size_t b0, std::size_t nb, const T* dh, T f,
                  T* dh_prev) {
  const std::size_t N = p.N, GN = p.GN;
  T* at = p.a(t, b0);
  for (std::size_t b = 0; b < nb; ++b) {
    T* ar = at + b * GN;
    gru_back_row(ar, ar + N, ar + 2 * N, p.hn(t, b0 + b), p.h(t, b0 + b), dh + b * N,
                 dh_prev + b * N, f, N);
  }
  gemm_packed(nb, at, GN, p.bwd, T(1), dh_prev, N);
}

template <class T>
void check_finite_progress(const RecurrentWeights<T>& w) {
  if (!w.weight_ih || !w.weight_hh) throw std::invalid_argument("recurrent weights are null");
}

}  // namespace

template <class T>
FlowStats recurrent_gradient_flow(const RecurrentWeights<T>& w, const RecurrentFlowIO<T>& io,
                                  const FlowOptions& opt, Control& ctl) {
  check_finite_progress(w);
  const CellKind kind = w.kind;
  const bool lstm = kind == CellKind::lstm, gru = kind == CellKind::gru;
  const std::size_t T_ = io.steps, B = io.batch, N = w.hidden, I = w.input_size;
  const std::size_t G = cell_gates(kind), GN = G * N;
  if (T_ == 0) throw std::invalid_argument("x must have at least one time step, got T = 0");
  const int budget = static_cast<int>(resolve_threads(opt.num_threads, 1 << 20));
  blas::BlasThreadsScope whole_call(budget);  // input projection and parameter GEMMs
  Problem<T> p{w, io, opt, T_, B, N, I, G, GN, {}, {}, {}, {}, {}, {}, {}};
  p.fwd = PackedMatrix<T>::transposed(w.weight_hh, GN, N, N);
  p.bwd = PackedMatrix<T>::rows(w.weight_hh, GN, N, N);
  p.A.resize(T_ * B * GN);
  p.H.resize((T_ + 1) * B * N);
  if (lstm) {
    p.C.resize((T_ + 1) * B * N);
    p.TC.resize(T_ * B * N);
  }
  if (gru) p.HN.resize(T_ * B * N);

  // (1) Input projections for all steps: A = X W_ih^T + folded biases.
  {
    std::vector<T> bias(GN, T(0));
    for (std::size_t k = 0; k < GN; ++k) {
      if (w.bias_ih) bias[k] += w.bias_ih[k];
      // GRU adds all of b_hh with the recurrent product (b_hn sits inside r * (W_hn h + b_hn)).
      if (w.bias_hh && !gru) bias[k] += w.bias_hh[k];
    }
    for (std::size_t r = 0; r < T_ * B; ++r)
      std::copy(bias.begin(), bias.end(), p.A.data() + r * GN);
    // On our own workers: OpenBLAS's pool would keep spinning on the cores (parallel_rows.hpp).
    parallel_rows(opt.num_threads, T_ * B, 64, ctl, [&](std::size_t r0, std::size_t r1) {
      blas::gemm(blas::Op::N, blas::Op::T, r1 - r0, GN, I, T(1), io.x + r0 * I, I, w.weight_ih, I,
                 T(1), p.A.data() + r0 * GN, GN);
    });
  }
  if (io.h0)
    std::copy(io.h0, io.h0 + B * N, p.H.data());
  else
    std::fill(p.H.data(), p.H.data() + B * N, T(0));
  if (lstm) {
    if (io.c0)
      std::copy(io.c0, io.c0 + B * N, p.C.data());
    else
      std::fill(p.C.data(), p.C.data() + B * N, T(0));
  }

  const Activation act = make_activation(kind == CellKind::rnn_relu ? "relu" : "tanh");
  const T sat_level = static_cast<T>(opt.saturation_threshold * act.max_derivative());
  const std::size_t n_chunks = resolve_threads(opt.num_threads, B);
  std::vector<ChunkStats> cs(n_chunks);
  const std::size_t total_work = 2 * T_;

  // Rescaling bounds. One backward step maps the stored (dL/dh, dL/dc) of norm r to entries
  // below G r, with G = ||W_hh||_F K + (GRU: 1) and K bounding the gate derivatives (LSTM:
  // |c_t| <= |c_0| + t; GRU: |W_hn h + b_hn| with |h_t| <= max(|h_0|, 1)). The norm entering
  // a step is kept below 2^hi_w with G 2^(hi_w + 1) < 2^(emax - 1), so no product overflows;
  // it is brought to 2^target when out of its window.
  using RL = RescaleLimits<T>;
  int hi_w = RL::window;
  if (opt.rescale) {
    int kw = 0;
    const double sw = sum_squares_scaled(w.weight_hh, GN * N, kw);
    if (sw > 0.0 && std::isfinite(sw)) {
      double kcell = 1.0;
      if (lstm) {
        kcell = std::sqrt(2.0) * (1.5 + 0.25 * ((io.c0 ? max_abs(io.c0, B * N) : 0.0) + T_));
      } else if (gru) {
        const double hmax = std::max(1.0, io.h0 ? max_abs(io.h0, B * N) : 0.0);
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
      if (gru) lg = 1.0 + std::max(lg, 0.0);  // + 1: G <= 2 max(||W_hh||_F K, 1)
      const double cap = RL::emax - 3 - lg;
      if (!(cap >= hi_w))
        hi_w = cap > -2.0 * RL::window ? static_cast<int>(std::floor(cap)) : -2 * RL::window;
    }
  }
  const int target = std::max(std::min(0, hi_w - 2), -RL::window);

  // (2) Forward and backward through time, batch-parallel.
  {
    // Workers run single-threaded BLAS (a fallback for the packed products, see packed_gemm.hpp).
    blas::BlasThreadsScope chunk_threads(n_chunks > 1 ? 1 : blas::step_threads(B, GN, N, budget));
    run_chunks(n_chunks, ctl, [&](std::size_t ci) {
      const auto [b0, b1] = split_range(B, n_chunks, ci);
      const std::size_t nb = b1 - b0;
      const bool primary = ci == 0;
      auto step_done = [&](std::size_t done) {
        if (primary)
          ctl.tick(done, total_work);
        else
          ctl.poll();
      };
      ChunkStats& st = cs[ci];
      st.sum.assign(T_, 0.0);
      st.sumsq.assign(T_, 0.0);
      st.saturated.assign(T_, 0.0);
      st.gate_saturated.assign(T_ * G, 0.0);
      st.grad_sumsq.assign(T_ + 1, 0.0);
      st.cell_sumsq.assign(T_ + 1, 0.0);
      st.grad_scale.assign(T_ + 1, 0);
      st.cell_scale.assign(T_ + 1, 0);
      st.dz_scale.assign(T_, 0);
      st.preact_bad.assign(T_, 0);
      std::vector<T> q(gru ? nb * GN : 0);
      for (std::size_t t = 0; t < T_; ++t) {
        if (lstm)
          forward_lstm(p, t, b0, nb, st, opt.saturation_threshold);
        else if (gru)
          forward_gru(p, t, b0, nb, st, opt.saturation_threshold, q);
        else
          forward_rnn(p, t, b0, nb, act, st, sat_level);
        step_done(t + 1);
      }

      // Backward. dh / dh_prev ping-pong; dc in place (LSTM).
      std::vector<T> dha(nb * N, T(0)), dhb(nb * N, T(0)), dc(lstm ? nb * N : 0, T(0));
      T* dh = dha.data();
      T* dh_prev = dhb.data();
      const T* cot_seq = nullptr;
      if (io.cotangent && io.cotangent_per_step)
        cot_seq = io.cotangent;
      else if (io.cotangent)
        std::copy(io.cotangent + b0 * N, io.cotangent + b1 * N, dh);
      else
        std::copy(p.h(T_, b0), p.h(T_, b0) + nb * N, dh);
      if (lstm && io.cell_cotangent)
        std::copy(io.cell_cotangent + b0 * N, io.cell_cotangent + b1 * N, dc.data());
      // Sequence losses: the largest |dL/dh_t| exponent of each step (INT_MIN: all zero), so
      // that adding it at the current scale is checked for overflow in O(1) per step.
      std::vector<int> cot_exp;
      if (cot_seq) {
        cot_exp.assign(T_, std::numeric_limits<int>::min());
        for (std::size_t t = 0; t < T_; ++t) {
          const double m = max_abs(cot_seq + (t * B + b0) * N, nb * N);
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
        if (cot_seq && st_i > 0) {  // sequence loss: add dL/dh_s from the loss on that step
          const std::size_t t = st_i - 1;
          const T* cot = cot_seq + (t * B + b0) * N;
          if (zero && scale != 0) {  // a zero vector has every scale: start afresh
            scale = 0;
            pending = 0;
          }
          if (cot_exp[t] != std::numeric_limits<int>::min() && cot_exp[t] + scale > RL::emax - 4) {
            // dL/dh so far is far smaller than this loss term: move to the term's scale
            scale_state(-cot_exp[t] - scale);
            pending = 0;
          }
          add_scaled(dh, cot, n, scale);
        }
        e = measure();
        if (opt.rescale && (pending > RL::pow2max || pending < -RL::pow2max || e + pending > hi_w ||
                            e + pending < -RL::window)) {
          // The factor from the previous norm does not fit this vector: rescale it now.
          scale_state(target - e);
          pending = 0;
          e = measure();
        }
        if (io.grads) store_scaled(io.grads + (st_i * B + b0) * N, dh, n, -scale);
        if (io.cell_grads) store_scaled(io.cell_grads + (st_i * B + b0) * N, dc.data(), n, -scale);
        st.grad_sumsq[st_i] = s2;
        st.cell_sumsq[st_i] = c2;
        st.grad_scale[st_i] = scale + k;
        st.cell_scale[st_i] = scale + kc;
        if (st_i == 0) break;
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
        step_done(2 * T_ - t);
      }
    });
  }

  FlowStats out;
  out.n_gates = G;
  std::vector<double> per_chunk(n_chunks);
  out.log_grad_norms.resize(T_ + 1);
  if (lstm) out.log_cell_grad_norms.resize(T_ + 1);
  for (std::size_t t = 0; t <= T_; ++t) {
    for (std::size_t c = 0; c < n_chunks; ++c)
      per_chunk[c] = log_norm(cs[c].grad_sumsq[t], cs[c].grad_scale[t]);
    out.log_grad_norms[t] = combine_log_norms(per_chunk.data(), n_chunks, 1);
    if (lstm) {
      for (std::size_t c = 0; c < n_chunks; ++c)
        per_chunk[c] = log_norm(cs[c].cell_sumsq[t], cs[c].cell_scale[t]);
      out.log_cell_grad_norms[t] = combine_log_norms(per_chunk.data(), n_chunks, 1);
    }
  }
  out.act_mean.resize(T_);
  out.act_std.resize(T_);
  out.saturation.resize(T_);
  out.gate_saturation.resize(T_ * G);
  out.preact_nonfinite.assign(T_, 0);
  const double n_units = static_cast<double>(B * N);
  for (std::size_t t = 0; t < T_; ++t) {
    double s = 0, s2 = 0, ns = 0;
    for (auto& st : cs) {
      out.preact_nonfinite[t] |= st.preact_bad[t];
      s += st.sum[t];
      s2 += st.sumsq[t];
      ns += st.saturated[t];
      for (std::size_t g = 0; g < G; ++g)
        out.gate_saturation[t * G + g] += st.gate_saturated[t * G + g];
    }
    const double mean = s / n_units;
    out.act_mean[t] = mean;
    out.act_std[t] = std::sqrt(std::max(0.0, s2 / n_units - mean * mean));
    out.saturation[t] = ns / (n_units * G);
    for (std::size_t g = 0; g < G; ++g) out.gate_saturation[t * G + g] /= n_units;
  }
  if (io.states) std::copy(p.H.data(), p.H.data() + p.H.size(), io.states);
  if (io.last_state) std::copy(p.h(T_, 0), p.h(T_, 0) + B * N, io.last_state);
  if (io.last_cell && lstm) std::copy(p.c(T_, 0), p.c(T_, 0) + B * N, io.last_cell);
  if (io.cell_states && lstm) std::copy(p.C.data(), p.C.data() + p.C.size(), io.cell_states);

  // (3) Parameter gradients over all steps at once.
  if (opt.param_grads) {
    ctl.tick(total_work, total_work);
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
    product_shifts<T>(amax, max_abs(io.x, rows * I), rows, sa, sx);
    scale_pow2_wide(p.A.data(), p.A.size(), sa);
    if (gru) scale_pow2_wide(p.HN.data(), p.HN.size(), sa);
    std::vector<T> xs;
    const T* xp = io.x;
    if (sx != 0) {
      xs.assign(io.x, io.x + rows * I);
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
      blas::gemm(blas::Op::T, blas::Op::N, GN, I, rows, T(1), p.A.data(), GN, xp, I, T(0),
                 dw.data(), I);
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
  return out;
}

template FlowStats recurrent_gradient_flow<float>(const RecurrentWeights<float>&,
                                                  const RecurrentFlowIO<float>&, const FlowOptions&,
                                                  Control&);
template FlowStats recurrent_gradient_flow<double>(const RecurrentWeights<double>&,
                                                   const RecurrentFlowIO<double>&,
                                                   const FlowOptions&, Control&);

}  // namespace vgcore

// Streaming Lyapunov-exponent engine: batch-parallel chunks, each advancing its samples' states
// and tangent blocks with one GEMM per step and re-orthonormalising with Householder QR.
//
// Two implementations of a step:
//  * The fast path (recurrent cells with k up to 8 vectors of tangent lanes): the tangent block
//    is kept transposed (D x KP rows, see lyapunov_kernels.hpp); W_hh is packed once per engine
//    into row tiles and each step is one pass over it (JVPs of all tangents plus the state row),
//    a per-unit state update, a per-unit tangent update, and a one-pass-per-reflector
//    Householder QR on rows with float64 R diagonal and logs. The kernels are compiled for
//    AVX-512, AVX2+FMA and the baseline and chosen at run time.
//  * The general path (dense stacks, recurrent stacks, larger k, or VGCORE_LYAPUNOV_KERNELS=off):
//    one Model step (advance, model.hpp) over [states; tangents] and householder::qr_replace_by_q.
//
// Threads. Several samples: batch-parallel chunks, one thread each, no synchronisation inside
// a step. One chunk and two or more threads, when the step is large enough (split_ok): each
// step is split in two halves of the units (GEMM tiles, state and tangent updates, and the
// Householder factorisation of that half's rows, all local), a float64 TSQR combine of the two
// k x k triangles, and forming each half's rows of Q. The second half goes to a helper thread
// only if it picks it up in time; otherwise the caller runs it, and a helper that keeps the
// caller waiting (its core is busy: the "thread trap") is left out for exponentially longer
// stretches. The arithmetic is the same whoever runs a half, so results depend on the thread
// setting (split TSQR vs one QR) but never on timing.
#include "vgcore/analysis/lyapunov.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "vgcore/base/activations.hpp"
#include "vgcore/base/blas.hpp"
#include "vgcore/base/fastmath.hpp"
#include "vgcore/base/gates.hpp"
#include "vgcore/base/helper_thread.hpp"
#include "vgcore/layers/gru.hpp"
#include "vgcore/layers/lstm.hpp"
#include "vgcore/base/householder.hpp"
#include "vgcore/base/packed_gemm.hpp"
#include "vgcore/base/parallel_rows.hpp"

namespace vgcore {

namespace {

// Evenly spaced records over a stream of unknown length (see lyapunov.hpp).
struct RecordBook {
  std::size_t stride = 1, max = 1;
  std::vector<std::size_t> steps;

  // Whether the block with this (1-based) index is recorded; compacts first if needed.
  // `compact(keep_odd)` is called on the data arrays when the record is full.
  template <class Compact>
  bool want(std::size_t block, Compact&& compact) {
    if (block % stride != 0) return false;
    if (steps.size() >= max) {
      std::vector<std::size_t> kept;
      for (std::size_t i = 1; i < steps.size(); i += 2) kept.push_back(steps[i]);
      steps.swap(kept);
      compact();
      stride *= 2;
      if (block % stride != 0) return false;
    }
    return true;
  }
};

// Keep entries 1, 3, 5, ... of an array of records of `width` values each.
inline void keep_odd(std::vector<double>& v, std::size_t width) {
  const std::size_t n = v.size() / width;
  std::size_t o = 0;
  for (std::size_t i = 1; i < n; i += 2, ++o)
    std::copy(v.begin() + i * width, v.begin() + (i + 1) * width, v.begin() + o * width);
  v.resize(o * width);
}

// ---- fast path: kernels per instruction set ------------------------------------------------

template <class T>
struct LyapKernels {
  int lanes = 0;
  std::size_t kp = 0, mr = 0;  // tangent lanes per row, W_hh rows per GEMM tile
  void (*gemm)(const T*, std::size_t, std::size_t, std::size_t, const T*, std::size_t, const T*, T*,
               T*, const unsigned*, std::size_t) = nullptr;
  void (*tangent)(int, const T*, const T*, std::size_t, const T*, T*, std::size_t, std::size_t,
                  T*) = nullptr;
  void (*scale)(T*, std::size_t, const T*) = nullptr;
  void (*factor)(T*, std::size_t, std::size_t, T*, std::size_t, T*, T*, double*, T*) = nullptr;
  void (*form_e)(T*, std::size_t, std::size_t, const T*, std::size_t, const T*, T*) = nullptr;
  void (*form_dense)(T*, std::size_t, std::size_t, const T*, std::size_t, const T*, const T*,
                     T*) = nullptr;
  void (*combine)(const T*, const T*, const double*, const double*, const double*, const double*,
                  std::size_t, double*, T*, T*, double*) = nullptr;
};

namespace lk_generic {
#define LK_VB 16
#define LK_REGS 16
#include "vgcore/cpu/lyapunov_kernels.hpp"
#undef LK_VB
#undef LK_REGS
}  // namespace lk_generic

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    !defined(VGCORE_NO_TARGET_CLONES)
#define VGCORE_LYAP_X86 1
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace lk_avx2 {
#define LK_VB 32
#define LK_REGS 16
#include "vgcore/cpu/lyapunov_kernels.hpp"
#undef LK_VB
#undef LK_REGS
}  // namespace lk_avx2
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
namespace lk_avx512 {
#define LK_VB 64
#define LK_REGS 32
#include "vgcore/cpu/lyapunov_kernels.hpp"
#undef LK_VB
#undef LK_REGS
}  // namespace lk_avx512
#pragma GCC pop_options
#endif

// 0: fast path off, 1: baseline, 2: AVX2+FMA, 3: AVX-512. VGCORE_LYAPUNOV_KERNELS = off,
// generic, avx2 or avx512 caps the choice (for tests and comparisons).
inline int lyap_isa() {
  static const int isa = [] {
    int best = 1;
#ifdef VGCORE_LYAP_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v3")) best = 2;
    if (best == 2 && __builtin_cpu_supports("x86-64-v4")) best = 3;
#endif
    if (const char* env = std::getenv("VGCORE_LYAPUNOV_KERNELS")) {
      const std::string e(env);
      if (e == "off") return 0;
      if (e == "generic") return 1;
      if (e == "avx2") return std::min(best, 2);
    }
    return best;
  }();
  return isa;
}

template <class T>
bool lyap_kernels(std::size_t k, LyapKernels<T>& out) {
  switch (lyap_isa()) {
    case 0:
      return false;
#ifdef VGCORE_LYAP_X86
    case 3:
      return lk_avx512::select_kernels<T>(k, out);
    case 2:
      return lk_avx2::select_kernels<T>(k, out);
#endif
    default:
      return lk_generic::select_kernels<T>(k, out);
  }
}

// ---- fast path: state updates of a range of units -------------------------------------------
//
// The cells' formulas (layers/lstm.hpp, layers/gru.hpp; their *_tangent_coefficients); u is
// W_hh h in the original gate order. coef receives the per-unit coefficients of the tangent
// update (coefficient q of unit j at coef[q * N + j]):
//   LSTM: dc' = f dc + [c f(1-f)] u_f + [g i(1-i)] u_i + [i(1-g^2)] u_g,
//         dh' = [o(1-tc^2)] dc' + [tc o(1-o)] u_o
//   GRU:  dh' = z dh + [(1-z)(1-n^2) q_n r(1-r)] u_r + [(h-n) z(1-z)] u_z + [(1-z)(1-n^2) r] u_n
//   RNN:  dh' = phi'(z) u

namespace fm = vgcore::fastmath;

// Each output array is its own restrict parameter: with one base pointer GCC needs a run-time
// alias check per pair of stores, exceeds its limit (10) and gives up vectorising.
template <class T>
VGCORE_TARGET_CLONES void lstm_state_units(const T* __restrict pi, const T* __restrict pf,
                                           const T* __restrict pg, const T* __restrict po,
                                           const T* __restrict ui, const T* __restrict uf,
                                           const T* __restrict ug, const T* __restrict uo,
                                           const T* __restrict cprev, T* __restrict hn,
                                           T* __restrict cn, T* __restrict c0, T* __restrict c1,
                                           T* __restrict c2, T* __restrict c3, T* __restrict c4,
                                           T* __restrict c5, std::size_t j0, std::size_t j1) {
  for (std::size_t j = j0; j < j1; ++j) {
    const T cp = cprev[j];
    const auto u =
        layers::lstm_forward(pi[j] + ui[j], pf[j] + uf[j], pg[j] + ug[j], po[j] + uo[j], cp);
    const auto k = layers::lstm_tangent_coefficients(u, cp);
    cn[j] = u.c;
    hn[j] = u.h;
    c0[j] = k.k0;
    c1[j] = k.k1;
    c2[j] = k.k2;
    c3[j] = k.k3;
    c4[j] = k.k4;
    c5[j] = k.k5;
  }
}

template <class T>
VGCORE_TARGET_CLONES void gru_state_units(
    const T* __restrict pr, const T* __restrict pz, const T* __restrict pn, const T* __restrict ur,
    const T* __restrict uz, const T* __restrict un, const T* __restrict br, const T* __restrict bz,
    const T* __restrict bn, const T* __restrict hprev, T* __restrict hn, T* __restrict c0,
    T* __restrict c1, T* __restrict c2, T* __restrict c3, std::size_t j0, std::size_t j1) {
  for (std::size_t j = j0; j < j1; ++j) {
    const T qn = un[j] + bn[j];
    const T hp = hprev[j];
    const auto u =
        layers::gru_forward(pr[j] + (ur[j] + br[j]), pz[j] + (uz[j] + bz[j]), pn[j], qn, hp);
    const auto k = layers::gru_tangent_coefficients(u, qn, hp);
    hn[j] = u.h;
    c0[j] = k.k0;
    c1[j] = k.k1;
    c2[j] = k.k2;
    c3[j] = k.k3;
  }
}

// ---- fast path: buffers and the two-thread team ----------------------------------------------

template <class T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <class U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
  }
  void deallocate(T* q, std::size_t) { ::operator delete(q, std::align_val_t(64)); }
  template <class U>
  bool operator==(const Aligned64<U>&) const {
    return true;
  }
  template <class U>
  bool operator!=(const Aligned64<U>&) const {
    return false;
  }
};
template <class T>
using AVec = std::vector<T, Aligned64<T>>;

// The caller plus one helper thread (helper_thread.hpp) running the two halves of a phase. The
// caller offers half 1, runs half 0, then claims half 1 back if the helper has not taken it; the
// arithmetic is the same either way. What this adds to the helper is the policy of when to
// offer at all.
//
// Thread-trap guard, two layers.
//  * Measured choice: the engine marks every step; the median wall time per step over windows
//    of 32 steps, with the helper and solo (the helper asleep). The faster mode runs; the other
//    is re-measured after 4 windows, doubling up to 32 windows while it keeps losing. With the
//    other core busy, three runnable threads share two cores and even the caller's half slows
//    down: only the measured step time shows that. Estimates younger than 2 s carry over to
//    the next team (the next feed call, another engine).
//  * Events, immediately: a helper that is awake but did not claim half 1 while the caller ran
//    half 0 is not running; a helper that keeps the caller waiting long after half 0 was
//    preempted mid-way. Each event's lost time feeds a running rate (time lost per time,
//    decaying over 20 ms). Above 10%, every team runs solo for 1 ms, doubling up to 256 ms
//    while the costly events recur (back to 1 ms after 50 ms without one). Below it the event
//    was a hiccup, not a busy core: a virtual machine's vCPU stalls ~30-150 us every timer
//    tick (4 ms; measured here), which used to trip the guard every few hundred steps and
//    kept the helper off for most of a run. A caller left waiting blocks, so that the
//    scheduler can pull the helper onto its core.
// A helper with nothing to do spins ~50 us, then sleeps until offered a phase (the first phase
// after a sleep only wakes it: no judgement).
class Team {
 public:
  Team() : helper_(50000) {
    std::lock_guard<std::mutex> lock(policy_mutex());
    const Policy& g = policy();
    if (now_ns() - g.stamp < 2000000000) {
      est_[0] = g.est[0];
      est_[1] = g.est[1];
      interval_[0] = g.interval[0];
      interval_[1] = g.interval[1];
      mode_ = est_[0] > 0 && est_[1] > 0 && est_[0] < est_[1] ? 0 : 1;
    }
    last_step_ = now_ns();
  }
  ~Team() {
    {
      std::lock_guard<std::mutex> lock(policy_mutex());
      Policy& g = policy();
      g.est[0] = est_[0];
      g.est[1] = est_[1];
      g.interval[0] = interval_[0];
      g.interval[1] = interval_[1];
      g.stamp = now_ns();
    }
  }
  Team(const Team&) = delete;
  Team& operator=(const Team&) = delete;

  // The caller marks the end of every step (for the measured choice).
  void step_done() {
    const std::int64_t t = now_ns(), dt = t - last_step_;
    last_step_ = t;
    if (skip_ > 0) {  // the first steps after a switch: helper waking up, caches refilling
      --skip_;
      return;
    }
    win_[win_steps_] = dt;
    if (++win_steps_ < kWindow) return;
    win_steps_ = 0;
    // The median step: a stall is the event guard's business, not a reason to change modes.
    std::nth_element(win_, win_ + kWindow / 2, win_ + kWindow);
    const double mean = static_cast<double>(win_[kWindow / 2]);
    const int before = mode_;
    decide(mean);
    if (mode_ != before) skip_ = 2;
  }

 private:
  void decide(double mean) {
    const int other = 1 - mode_;
    est_[mode_] = mean;
    ++age_[other];
    age_[mode_] = 0;
    if (est_[other] <= 0) {  // never measured: measure it now
      mode_ = other;
    } else if (mean > 1.02 * est_[other]) {  // the other mode was faster
      if (probing_) interval_[mode_] = std::min(2 * interval_[mode_], 32);
      probing_ = false;
      mode_ = other;
    } else if (probing_) {  // a probe that won
      interval_[mode_] = 4;
      probing_ = false;
    } else if (age_[other] >= interval_[other]) {
      probing_ = true;
      mode_ = other;
    }
  }

 public:
  template <class F>
  void run(F& fn) {
    const std::int64_t now = now_ns();
    if (mode_ == 0 || now < trap_until().load(std::memory_order_relaxed)) {
      fn(0);
      fn(1);
      return;
    }
    const bool asleep = helper_.offer([](void* c) { (*static_cast<F*>(c))(1); }, &fn);
    // An exception from either half is rethrown here, on the calling thread, once the helper
    // is done with fn (it lives in the caller's frame): never std::terminate in the helper.
    std::exception_ptr err;
    try {
      fn(0);
    } catch (...) {
      err = std::current_exception();
    }
    const std::int64_t t1 = now_ns();
    if (helper_.claim()) {
      if (err) std::rethrow_exception(err);
      fn(1);
      // Awake, yet it did not get to the phase: its core is busy (or stalled for a moment).
      if (!asleep) trapped(t1, t1 - now);
      return;
    }
    // Spin while the helper is plausibly running (about as long as half 0 took); then block.
    const std::int64_t patience = 20000 + (t1 - now);
    std::exception_ptr helper_err = helper_.wait(t1, patience);
    if (err) std::rethrow_exception(err);
    if (helper_err) std::rethrow_exception(helper_err);
    const std::int64_t t2 = now_ns();
    if (t2 - t1 > patience)
      trapped(t2, t2 - t1);  // preempted mid-half
    else if (t2 - last_event_ > 50000000)
      backoff_ns().store(1000000, std::memory_order_relaxed);
  }

 private:
  static constexpr int kWindow = 32;
  struct Policy {
    double est[2] = {0, 0};
    int interval[2] = {4, 4};
    std::int64_t stamp = -(std::int64_t(1) << 62);
  };
  static Policy& policy() {
    static Policy p;
    return p;
  }
  static std::mutex& policy_mutex() {
    static std::mutex m;
    return m;
  }
  static std::int64_t now_ns() { return steady_ns(); }
  static std::atomic<std::int64_t>& trap_until() {
    static std::atomic<std::int64_t> v{0};
    return v;
  }
  static std::atomic<std::int64_t>& backoff_ns() {
    static std::atomic<std::int64_t> v{1000000};
    return v;
  }
  // Shared by all teams: time lost to events per unit time, decaying with kLossTau.
  static constexpr double kLossTau = 20e6, kLossTrap = 0.1;  // ns, fraction
  static std::atomic<double>& loss_rate() {
    static std::atomic<double> v{0};
    return v;
  }
  static std::atomic<std::int64_t>& loss_stamp() {
    static std::atomic<std::int64_t> v{0};
    return v;
  }
  // An event at time t that cost `lost` ns of the helper's work.
  void trapped(std::int64_t t, std::int64_t lost) {
    const double dt = static_cast<double>(t - loss_stamp().load(std::memory_order_relaxed));
    const double decay = std::exp(-std::max(dt, 0.0) / kLossTau);
    const double rate =
        loss_rate().load(std::memory_order_relaxed) * decay + static_cast<double>(lost) / kLossTau;
    loss_rate().store(rate, std::memory_order_relaxed);
    loss_stamp().store(t, std::memory_order_relaxed);
    if (rate < kLossTrap) return;  // a hiccup
    const std::int64_t b = backoff_ns().load(std::memory_order_relaxed);
    trap_until().store(t + b, std::memory_order_relaxed);
    backoff_ns().store(std::min<std::int64_t>(2 * b, 256000000), std::memory_order_relaxed);
    last_event_ = t;
  }

  // Caller-only state.
  std::int64_t last_event_ = 0, last_step_ = 0, win_[32] = {};
  int mode_ = 1, win_steps_ = 0, skip_ = 2;  // mode: 0 solo, 1 with the helper
  double est_[2] = {0, 0};                   // mean ns per step in each mode
  int age_[2] = {0, 0}, interval_[2] = {4, 4};
  bool probing_ = false;
  HelperThread helper_;  // last: starts after everything above is initialised
};

}  // namespace

template <class T>
struct LyapunovEngine<T>::Impl {
  Model<T> m;
  std::size_t B = 0, k = 0, D = 0;
  LyapunovOptions opt;

  // ---- fast path plan (recurrent cells; immutable after construction) ----
  struct Part {
    std::size_t t0 = 0, t1 = 0;  // GEMM tiles
    std::size_t u0 = 0, u1 = 0;  // units
    std::size_t r0 = 0, r1 = 0;  // tangent rows
  };
  bool fast = false;
  LyapKernels<T> kr;
  int cell = 0;  // 0 RNN, 1 LSTM, 2 GRU
  std::size_t N = 0, G = 0, GN = 0, KP = 0, MR = 0, ntiles = 0, ncoef = 0;
  Activation act;
  AVec<T> Wp;                  // W_hh in tiles of MR packed rows (see gemm_tiles)
  std::vector<unsigned> orig;  // packed row -> original row of W_hh
  PackedMatrix<T> wih;         // W_ih^T for the input projections (no BLAS calls on this path: a
  std::vector<T> pbias;    // BLAS thread-count change would wake its pool onto the helper's core)
  std::vector<T> gru_bhh;  // GRU: b_hh (zeros without one)
  Part whole;              // the whole step
  Part half[2];            // the two halves of a split step
  bool split = false;      // steps are split in two halves (TSQR)
  bool helper_ok = false;  // ... and a helper thread may take one

  // Everything a chunk of samples owns. Counters are the same in every chunk (each advances
  // through the same steps); chunk 0's are reported.
  struct Chunk {
    std::size_t b0 = 0, nb = 0;
    std::vector<T> X, Y;  // general path: [nb states; nb*k tangents] x D; fast path: nb states
    StepScratch<T> ws;
    std::vector<double> logsum;  // nb x k
    std::vector<double> rdiag;
    std::vector<T> tau;
    std::vector<double> rec_running, rec_block;  // n_records x nb x k
    RecordBook book;
    std::size_t steps = 0, since_qr = 0, acc_steps = 0, acc_blocks = 0;
    // Fast path.
    std::vector<AVec<T>> va, vb;  // per sample: current tangents (Q) / next, D x KP rows
    AVec<T> U, us, coef;
    struct PartScratch {
      AVec<T> colmax, scale, Y, tau, sc, gw, top;
      std::vector<int> ex;        // column exponents of the power-of-two scaling
      std::vector<double> rdiag;  // beta_j
    } ps[2];
    std::vector<double> cwork, rd, f2;  // TSQR combine: scratch, R's diagonal, 2^ex per half
    std::vector<double> logs;           // nb x k: log|R_jj| of the last QR
    std::vector<char> qr_ok;
  };
  std::vector<Chunk> chunks;

  T* tangents(Chunk& c, std::size_t b) { return c.X.data() + (c.nb + b * k) * D; }

  // ---- fast path -------------------------------------------------------------------------

  void plan_fast(int threads) {
    const RecurrentWeights<T>* single = m.single_cell();
    if (!single) return;  // dense and recurrent stacks take the general path
    const RecurrentWeights<T>& rw = *single;
    const CellKind kind = rw.kind;
    if (kind != CellKind::rnn_tanh && kind != CellKind::rnn_relu && kind != CellKind::lstm &&
        kind != CellKind::gru)
      return;
    if (!lyap_kernels<T>(k, kr)) return;
    fast = true;
    cell = kind == CellKind::lstm ? 1 : kind == CellKind::gru ? 2 : 0;
    N = rw.hidden;
    G = cell_gates(kind);
    GN = G * N;
    KP = kr.kp;
    MR = kr.mr;
    ntiles = (GN + MR - 1) / MR;
    ncoef = cell == 1 ? 6 : cell == 2 ? 4 : 1;
    act = make_activation(cell_activation(kind));
    const T* W = rw.weight_hh;
    orig.resize(GN);
    for (std::size_t pr = 0; pr < GN; ++pr) orig[pr] = static_cast<unsigned>((pr % G) * N + pr / G);
    Wp.assign(ntiles * N * MR + 4 * KP + 64, T(0));
    for (std::size_t t = 0; t < ntiles; ++t)
      for (std::size_t r = 0; r < MR; ++r) {
        const std::size_t pr = t * MR + r;
        if (pr >= GN) break;
        const T* src = W + ((pr % G) * N + pr / G) * N;
        T* dst = Wp.data() + t * N * MR + r;
        for (std::size_t kk = 0; kk < N; ++kk) dst[kk * MR] = src[kk];
      }
    wih = PackedMatrix<T>::transposed(rw.weight_ih, GN, rw.input_size, rw.input_size);
    pbias.assign(GN, T(0));
    for (std::size_t j = 0; j < GN; ++j) {  // as Model::project_inputs
      if (rw.bias_ih) pbias[j] += rw.bias_ih[j];
      if (rw.bias_hh && cell != 2) pbias[j] += rw.bias_hh[j];  // GRU: b_hh sits inside r * (...)
    }
    gru_bhh.assign(GN, T(0));
    if (cell == 2 && rw.bias_hh) std::copy(rw.bias_hh, rw.bias_hh + GN, gru_bhh.begin());
    const std::size_t rows_per_unit = cell == 1 ? 2 : 1;
    whole = Part{0, ntiles, 0, N, 0, D};
    // Halves at a unit boundary that is also a tile boundary.
    std::size_t a = MR, b = G;
    while (b) a = std::exchange(b, a % b);
    const std::size_t ustep = MR / a;  // lcm(MR, G) / G units
    const std::size_t u = (N / 2 + ustep / 2) / ustep * ustep;
    half[0] = Part{0, u * G / MR, 0, u, 0, u * rows_per_unit};
    half[1] = Part{u * G / MR, ntiles, u, N, u * rows_per_unit, D};
    // Split steps (two halves, TSQR): when a helper thread can take a half (two threads, one
    // chunk) and the step is worth ~3 hand-overs (about a microsecond when both cores are free:
    // from ~1.5 M multiply-adds per step; N = 256 RNN: 2.2 M), and whenever the tangent block
    // outgrows L1 (> 48 KB: N = 256 LSTM, N >= 512), where two L1-sized halves plus the combine
    // beat one QR even on one thread. So the arithmetic depends on the thread setting only for
    // small blocks.
    const bool can = u >= k && D - half[1].r0 >= k && u > 0 && u < N;
    const double macs =
        static_cast<double>(k + 1) * static_cast<double>(GN) * static_cast<double>(N);
    helper_ok = can && threads >= 2 && B == 1 && macs >= 1.5e6;
    split = helper_ok || (can && D * KP * sizeof(T) > 48 * 1024);
    if (const char* env = std::getenv("VGCORE_LYAPUNOV_SPLIT")) {  // tests: force either way
      if (std::string(env) == "0")
        split = helper_ok = false;
      else if (std::string(env) == "1" && can)
        split = true;
    }
  }

  void init_fast_chunk(Chunk& c) {
    c.va.assign(c.nb, AVec<T>(D * KP, T(0)));
    c.vb.assign(c.nb, AVec<T>(D * KP, T(0)));
    c.U.assign(ntiles * MR * KP + KP, T(0));
    c.us.assign(GN + 64, T(0));
    c.coef.assign(ncoef * N + 64, T(0));
    for (auto& q : c.ps) {
      q.colmax.assign(KP, T(0));
      q.scale.assign(KP, T(1));
      q.Y.assign(k * D + 64, T(0));
      q.tau.assign(KP, T(0));
      q.sc.assign(KP, T(0));
      q.gw.assign(2 * KP, T(0));
      q.top.assign(k * KP, T(0));
      q.ex.assign(KP, 0);
      q.rdiag.assign(KP, 0.0);
    }
    c.cwork.assign(4 * k * KP + 4 * KP, 0.0);
    c.rd.assign(KP, 0.0);
    c.f2.assign(2 * KP, 1.0);
    c.logs.assign(c.nb * k, 0.0);
    c.qr_ok.assign(c.nb, 1);
  }

  // Half (or whole) step of sample b: W_hh products, state and tangent updates of P's units.
  void forward_part(Chunk& c, std::size_t b, const Part& P, int slot, const T* proj) {
    const T* va = c.va[b].data();
    const T* h = c.X.data() + b * D;
    T* y = c.Y.data() + b * D;
    const std::size_t xs = cell == 1 ? 2 * KP : KP;
    kr.gemm(Wp.data(), N, P.t0, P.t1, va, xs, h, c.U.data(), c.us.data(), orig.data(), GN);
    const T* u = c.us.data();
    T* coef = c.coef.data();
    if (cell == 1) {
      lstm_state_units(proj, proj + N, proj + 2 * N, proj + 3 * N, u, u + N, u + 2 * N, u + 3 * N,
                       h + N, y, y + N, coef, coef + N, coef + 2 * N, coef + 3 * N, coef + 4 * N,
                       coef + 5 * N, P.u0, P.u1);
    } else if (cell == 2) {
      const T* bh = gru_bhh.data();
      gru_state_units(proj, proj + N, proj + 2 * N, u, u + N, u + 2 * N, bh, bh + N, bh + 2 * N, h,
                      y, coef, coef + N, coef + 2 * N, coef + 3 * N, P.u0, P.u1);
    } else {
      for (std::size_t j = P.u0; j < P.u1; ++j) coef[j] = proj[j] + u[j];
      activation_forward(act, coef + P.u0, y + P.u0, coef + P.u0, P.u1 - P.u0);
    }
    kr.tangent(cell, c.U.data(), coef, N, va, c.vb[b].data(), P.u0, P.u1, c.ps[slot].colmax.data());
  }

  // Householder factorisation of P's rows of sample b's new tangents, with the columns scaled
  // by powers of two (exact) when their magnitudes could over- or underflow the sums.
  void factor_part(Chunk& c, std::size_t b, const Part& P, int slot) {
    auto& q = c.ps[slot];
    T* A = c.vb[b].data() + P.r0 * KP;
    const std::size_t rows = P.r1 - P.r0;
    const T lo = std::numeric_limits<T>::digits > 30 ? T(0x1p-400) : T(0x1p-40);
    const T hi = std::numeric_limits<T>::digits > 30 ? T(0x1p400) : T(0x1p40);
    bool scale = false;
    for (std::size_t j = 0; j < k; ++j) {
      q.ex[j] = 0;
      if (!(q.colmax[j] >= lo && q.colmax[j] <= hi)) scale = true;
    }
    if (scale) {
      for (std::size_t j = 0; j < KP; ++j) {
        const T cm = q.colmax[j];
        // ilogb of a subnormal column is below -max_exponent: 2^-ex would overflow T
        q.ex[j] = (j < k && cm > T(0) && std::isfinite(cm))
                      ? std::max(std::ilogb(cm), 1 - std::numeric_limits<T>::max_exponent)
                      : 0;
        q.scale[j] = std::ldexp(T(1), -q.ex[j]);
      }
      kr.scale(A, rows, q.scale.data());
    }
    kr.factor(A, rows, k, q.Y.data(), D, q.tau.data(), q.sc.data(), q.rdiag.data(), q.gw.data());
  }

  // Logs of |R_jj| and Q of sample b when the step is not split.
  void qr_whole(Chunk& c, std::size_t b) {
    factor_part(c, b, whole, 0);
    auto& q = c.ps[0];
    double* lg = c.logs.data() + b * k;
    bool ok = true;
    for (std::size_t j = 0; j < k; ++j) {
      lg[j] = std::log(std::fabs(q.rdiag[j])) + q.ex[j] * 0.69314718055994530942;
      ok = ok && std::isfinite(q.rdiag[j]);
    }
    c.qr_ok[b] = ok;
    kr.form_e(c.va[b].data(), D, k, q.Y.data(), D, q.tau.data(), q.gw.data());
  }

  // TSQR: combine the two halves' triangles (float64), logs, and the halves' tops of Q.
  void combine_halves(Chunk& c, std::size_t b) {
    for (int t = 0; t < 2; ++t)
      for (std::size_t j = 0; j < KP; ++j)
        c.f2[t * KP + j] = c.ps[t].ex[j] ? std::ldexp(1.0, c.ps[t].ex[j]) : 1.0;
    const T* vb = c.vb[b].data();
    kr.combine(vb + half[0].r0 * KP, vb + half[1].r0 * KP, c.ps[0].rdiag.data(),
               c.ps[1].rdiag.data(), c.f2.data(), c.f2.data() + KP, k, c.rd.data(),
               c.ps[0].top.data(), c.ps[1].top.data(), c.cwork.data());
    double* lg = c.logs.data() + b * k;
    bool ok = true;
    for (std::size_t j = 0; j < k; ++j) {
      lg[j] = std::log(std::fabs(c.rd[j]));
      ok = ok && std::isfinite(c.rd[j]);
    }
    c.qr_ok[b] = ok;
  }

  void form_half(Chunk& c, std::size_t b, int t) {
    auto& q = c.ps[t];
    kr.form_dense(c.va[b].data() + half[t].r0 * KP, half[t].r1 - half[t].r0, k, q.Y.data(), D,
                  q.tau.data(), q.top.data(), q.gw.data());
  }

  template <class F>
  static void run_halves(Team* team, F& fn) {
    if (team) {
      team->run(fn);
    } else {
      fn(0);
      fn(1);
    }
  }

  // One step of every sample of the chunk; with qr, also the QR (logs in c.logs).
  void fast_step(Chunk& c, const T* proj, bool qr, Team* team) {
    for (std::size_t b = 0; b < c.nb; ++b) {
      const T* pb = proj + b * GN;
      if (!split) {
        forward_part(c, b, whole, 0, pb);
        if (qr)
          qr_whole(c, b);
        else
          std::swap(c.va[b], c.vb[b]);
        continue;
      }
      auto forward = [&](int t) {
        forward_part(c, b, half[t], t, pb);
        if (qr) factor_part(c, b, half[t], t);
      };
      run_halves(team, forward);
      if (!qr) {
        std::swap(c.va[b], c.vb[b]);
        continue;
      }
      combine_halves(c, b);
      auto form = [&](int t) { form_half(c, b, t); };
      run_halves(team, form);
    }
  }

  // The QR of a pending partial block (finish): the tangent rows are in va.
  void fast_qr_only(Chunk& c) {
    for (std::size_t b = 0; b < c.nb; ++b) {
      std::swap(c.va[b], c.vb[b]);  // the block to factor goes to vb, Q comes back in va
      const Part* parts = split ? half : &whole;
      const int n = split ? 2 : 1;
      for (int t = 0; t < n; ++t) {  // column magnitudes of the block
        auto& cm = c.ps[t].colmax;
        std::fill(cm.begin(), cm.end(), T(0));
        const T* A = c.vb[b].data() + parts[t].r0 * KP;
        for (std::size_t i = 0; i < parts[t].r1 - parts[t].r0; ++i)
          for (std::size_t j = 0; j < KP; ++j) cm[j] = std::max(cm[j], std::fabs(A[i * KP + j]));
      }
      if (!split) {
        qr_whole(c, b);
        continue;
      }
      for (int t = 0; t < 2; ++t) factor_part(c, b, half[t], t);
      combine_halves(c, b);
      for (int t = 0; t < 2; ++t) form_half(c, b, t);
    }
  }

  // ---- shared ------------------------------------------------------------------------------

  // QR of every sample's block after a block of `len` steps ending at step c.steps (the fast
  // path has already computed the logs; the general path computes them here).
  void qr_block(Chunk& c, std::size_t len) {
    const bool accumulate = c.steps - len >= opt.burn_in;
    double* rd = c.rdiag.data();
    if (accumulate) ++c.acc_blocks;
    const bool record = accumulate && c.book.want(c.acc_blocks, [&] {
      keep_odd(c.rec_running, c.nb * k);
      keep_odd(c.rec_block, c.nb * k);
    });
    if (accumulate) c.acc_steps += len;
    for (std::size_t b = 0; b < c.nb; ++b) {
      bool ok;
      if (fast) {
        ok = c.qr_ok[b];
        std::copy(c.logs.begin() + b * k, c.logs.begin() + (b + 1) * k, rd);
      } else {
        ok = householder::qr_replace_by_q(tangents(c, b), D, k, D, rd, c.tau.data());
        if (ok)
          for (std::size_t j = 0; j < k; ++j) rd[j] = std::log(std::fabs(rd[j]));
      }
      if (!ok)
        throw NonFiniteError(c.steps, "the tangent vectors became NaN/Inf by step " +
                                          std::to_string(c.steps) + " (sample " +
                                          std::to_string(c.b0 + b) +
                                          "); with qr_every > 1 they may have over- or "
                                          "underflowed between re-orthonormalisations");
      if (!accumulate) continue;
      double* ls = c.logsum.data() + b * k;
      for (std::size_t j = 0; j < k; ++j) ls[j] += rd[j];
      if (record) {
        const std::size_t base = c.rec_block.size();
        c.rec_block.resize(base + k);
        c.rec_running.resize(base + k);
        for (std::size_t j = 0; j < k; ++j) {
          c.rec_block[base + j] = rd[j] / static_cast<double>(len);
          c.rec_running[base + j] = ls[j] / static_cast<double>(c.acc_steps);
        }
      }
    }
    if (record) c.book.steps.push_back(c.steps);
  }

  void step(Chunk& c, std::size_t s, const T* proj, Team* team) {
    const bool qr_now = c.since_qr + 1 == opt.qr_every;
    if (fast) {
      fast_step(c, proj, qr_now, team);
    } else {
      advance(m, s, proj, c.X.data(), c.Y.data(), c.nb, k, c.ws);
    }
    std::swap(c.X, c.Y);
    ++c.steps;
    if (!all_finite(c.X.data(), c.nb * D)) {
      std::size_t bad = 0;
      while (bad < c.nb && all_finite(c.X.data() + bad * D, D)) ++bad;
      throw NonFiniteError(c.steps, "the state became NaN/Inf at step " + std::to_string(c.steps) +
                                        " (sample " + std::to_string(c.b0 + bad) + ")");
    }
    if (++c.since_qr == opt.qr_every) {
      c.since_qr = 0;
      qr_block(c, opt.qr_every);
    }
  }
};

template <class T>
LyapunovEngine<T>::LyapunovEngine(Model<T> model, std::size_t batch, const T* h0, const T* v0,
                                  const LyapunovOptions& opt)
    : p_(new Impl) {
  Impl& p = *p_;
  p.m = std::move(model);
  p.opt = opt;
  p.B = batch;
  p.k = opt.k;
  p.D = p.m.in_dim(0);
  if (p.m.is_dense())
    for (std::size_t l = 0; l < p.m.n_layers(); ++l)
      if (p.m.in_dim(l) != p.D || p.m.out_dim(l) != p.D)
        throw std::invalid_argument(
            "Lyapunov exponents of a dense stack need every layer to keep the width (" +
            std::to_string(p.D) + "), but layer " + std::to_string(l) + " maps " +
            std::to_string(p.m.in_dim(l)) + " -> " + std::to_string(p.m.out_dim(l)));
  if (batch == 0) throw std::invalid_argument("the batch is empty");
  if (p.k < 1 || p.k > p.D)
    throw std::invalid_argument("k must be between 1 and the state dimension " +
                                std::to_string(p.D) + ", got " + std::to_string(p.k));
  if (opt.qr_every < 1) throw std::invalid_argument("qr_every must be >= 1");
  if (opt.max_records < 2) throw std::invalid_argument("max_records must be >= 2");
  if (!h0 || !v0) throw std::invalid_argument("h0 and v0 are required");
  const std::size_t n_chunks = resolve_threads(opt.num_threads, batch);
  p.plan_fast(static_cast<int>(resolve_threads(opt.num_threads, 1 << 20)));
  p.chunks.resize(n_chunks);
  const std::size_t D = p.D, k = p.k;
  std::vector<T> tmp(p.fast ? k * D : 0);
  for (std::size_t ci = 0; ci < n_chunks; ++ci) {
    auto& c = p.chunks[ci];
    const auto [b0, b1] = split_range(batch, n_chunks, ci);
    c.b0 = b0;
    c.nb = b1 - b0;
    const std::size_t rows = p.fast ? c.nb : c.nb * (k + 1);
    c.X.assign(rows * D, T(0));
    c.Y.assign(rows * D, T(0));
    std::copy(h0 + b0 * D, h0 + b1 * D, c.X.data());
    if (!p.fast)
      std::copy(v0 + b0 * k * D, v0 + b1 * k * D, c.X.data() + c.nb * D);
    else
      p.init_fast_chunk(c);
    c.logsum.assign(c.nb * k, 0.0);
    c.rdiag.assign(k, 0.0);
    c.tau.assign(k, T(0));
    c.book.max = opt.max_records;
    for (std::size_t b = 0; b < c.nb; ++b) {
      T* v = p.fast ? tmp.data() : p.tangents(c, b);
      if (p.fast) std::copy(v0 + (b0 + b) * k * D, v0 + (b0 + b + 1) * k * D, v);
      if (!householder::qr_replace_by_q(v, D, k, D, c.rdiag.data(), c.tau.data()))
        throw std::invalid_argument("the initial tangent vectors contain NaN/Inf");
      for (std::size_t j = 0; j < k; ++j)
        if (c.rdiag[j] == 0.0)
          throw std::invalid_argument("the initial tangent vectors are linearly dependent");
      if (p.fast) {  // transposed: row i holds coordinate i of every vector
        T* va = c.va[b].data();
        for (std::size_t j = 0; j < k; ++j)
          for (std::size_t i = 0; i < D; ++i) {
            // LSTM rows are interleaved: h_j at 2j, c_j at 2j + 1.
            const std::size_t row = p.cell == 1 ? (i < p.N ? 2 * i : 2 * (i - p.N) + 1) : i;
            va[row * p.KP + j] = v[j * D + i];
          }
      }
    }
  }
}

template <class T>
LyapunovEngine<T>::~LyapunovEngine() = default;

template <class T>
void LyapunovEngine<T>::feed(const T* x, std::size_t steps, std::size_t total_hint, Control& ctl) {
  Impl& p = *p_;
  if (steps == 0) return;
  const bool dense = p.m.is_dense();
  if (dense && (steps != p.m.n_layers() || p.chunks[0].steps != 0))
    throw std::invalid_argument("a dense stack is fed once, with all its layers");
  const std::size_t B = p.B, n_chunks = p.chunks.size();
  const std::size_t GN = p.m.proj_cols(), I = dense ? 0 : p.m.input_size();
  const int budget = static_cast<int>(resolve_threads(p.opt.num_threads, 1 << 20));
  // Input projections (general path: BLAS with the whole budget).
  std::unique_ptr<blas::BlasThreadsScope> whole_call;
  if (!p.fast) whole_call = std::make_unique<blas::BlasThreadsScope>(budget);
  const std::size_t total = total_hint ? total_hint : std::numeric_limits<std::size_t>::max();
  // Input projections for a sub-chunk of steps in one GEMM (projection_block_steps).
  const std::size_t per_step = std::max<std::size_t>(1, B * GN);
  const std::size_t sub = dense ? steps : projection_block_steps(steps, per_step);
  std::vector<T> P(dense ? 0 : sub * B * GN);
  std::unique_ptr<Team> team;
  if (p.split && p.helper_ok && n_chunks == 1 && budget >= 2 && steps > 1) {
    try {
      team = std::make_unique<Team>();
    } catch (const std::system_error&) {
      // No helper thread to be had: the caller runs both halves (the same arithmetic).
    }
  }
  for (std::size_t t0 = 0; t0 < steps; t0 += sub) {
    const std::size_t tn = std::min(sub, steps - t0);
    if (p.fast) {
      for (std::size_t r = 0; r < tn * B; ++r)
        std::copy(p.pbias.begin(), p.pbias.end(), P.data() + r * GN);
      gemm_packed(tn * B, x + t0 * B * I, I, p.wih, T(1), P.data(), GN);
    } else if (!dense) {
      p.m.project_inputs(x + t0 * B * I, tn * B, P.data());
    }
    const std::size_t start = p.chunks[0].steps;
    const std::size_t rows = (p.chunks[0].nb) * (p.k + 1);
    std::unique_ptr<blas::BlasThreadsScope> chunk_threads;
    if (!p.fast)
      chunk_threads = std::make_unique<blas::BlasThreadsScope>(
          n_chunks > 1 ? 1 : blas::step_threads(rows, p.m.gemm_cols(0), p.m.in_dim(0), budget));
    run_chunks(n_chunks, ctl, [&](std::size_t ci) {
      auto& c = p.chunks[ci];
      for (std::size_t t = 0; t < tn; ++t) {
        const std::size_t s = dense ? t : 0;  // layer index (dense) or the shared cell
        const T* proj = dense ? nullptr : P.data() + (t * B + c.b0) * GN;
        p.step(c, s, proj, ci == 0 ? team.get() : nullptr);
        if (ci == 0 && team) team->step_done();
        if (ci == 0)
          ctl.tick(start + t + 1, total);
        else
          ctl.poll();
      }
    });
  }
}

template <class T>
void LyapunovEngine<T>::finish() {
  Impl& p = *p_;
  for (auto& c : p.chunks)
    if (c.since_qr > 0) {
      const std::size_t len = c.since_qr;
      c.since_qr = 0;
      if (p.fast) p.fast_qr_only(c);
      p.qr_block(c, len);
    }
}

template <class T>
std::size_t LyapunovEngine<T>::batch() const {
  return p_->B;
}
template <class T>
std::size_t LyapunovEngine<T>::k() const {
  return p_->k;
}
template <class T>
std::size_t LyapunovEngine<T>::state_dim() const {
  return p_->D;
}
template <class T>
std::size_t LyapunovEngine<T>::steps() const {
  return p_->chunks[0].steps;
}
template <class T>
std::size_t LyapunovEngine<T>::accumulated_steps() const {
  return p_->chunks[0].acc_steps;
}

template <class T>
std::vector<double> LyapunovEngine<T>::log_growth() const {
  std::vector<double> out(p_->B * p_->k);
  for (const auto& c : p_->chunks)
    std::copy(c.logsum.begin(), c.logsum.end(), out.begin() + c.b0 * p_->k);
  return out;
}

namespace {
template <class Chunks>
std::vector<double> gather_records(const Chunks& chunks, std::size_t B, std::size_t k,
                                   std::vector<double> Chunks::value_type::* field) {
  const std::size_t n = chunks[0].book.steps.size();
  std::vector<double> out(n * B * k);
  for (const auto& c : chunks) {
    const auto& v = c.*field;
    for (std::size_t r = 0; r < n; ++r)
      std::copy(v.begin() + r * c.nb * k, v.begin() + (r + 1) * c.nb * k,
                out.begin() + (r * B + c.b0) * k);
  }
  return out;
}
}  // namespace

template <class T>
std::vector<double> LyapunovEngine<T>::running() const {
  return gather_records(p_->chunks, p_->B, p_->k, &Impl::Chunk::rec_running);
}
template <class T>
std::vector<double> LyapunovEngine<T>::block_rates() const {
  return gather_records(p_->chunks, p_->B, p_->k, &Impl::Chunk::rec_block);
}
template <class T>
std::vector<std::size_t> LyapunovEngine<T>::record_steps() const {
  return p_->chunks[0].book.steps;
}

template <class T>
std::vector<T> LyapunovEngine<T>::state() const {
  std::vector<T> out(p_->B * p_->D);
  for (const auto& c : p_->chunks)
    std::copy(c.X.begin(), c.X.begin() + c.nb * p_->D, out.begin() + c.b0 * p_->D);
  return out;
}

template class LyapunovEngine<float>;
template class LyapunovEngine<double>;

}  // namespace vgcore

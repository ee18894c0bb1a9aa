// Lyapunov exponents of the tangent dynamics of a model driven by its inputs, streamed.
//
// Each sample b carries its trajectory h_t and a block of k tangent vectors V (k x D rows).
// A step maps [h; V] -> [F(h); J V] with one GEMM for all samples and tangents (see
// model.hpp); every qr_every steps each sample's block is re-orthonormalised by Householder
// QR and log|diag R| is accumulated in float64 (after burn_in steps). The exponents are the
// accumulated logs divided by the accumulated steps: natural log per step (per layer for a
// dense stack, where depth plays the role of time).
//
// The engine holds only O(B k D) state, so sequences of any length are fed chunk by chunk.
//
// Recurrent cells (RNN, LSTM, GRU) with k up to 8 vectors of tangent lanes (AVX-512 float: 128)
// take a fast path (lyapunov.cpp): transposed tangent block, W_hh packed once, one pass over it
// per step, row-wise Householder QR. Threads: B >= 2 splits the batch over workers; B = 1 on two
// or more threads splits each step in two halves (TSQR) for a helper thread when that pays and
// measures, step by step, whether it still does (the other core may be busy).
// Running estimates and per-block growth rates are recorded at most max_records times: every
// `stride` QR blocks, and when the record is full every other entry is dropped and the stride
// doubles, so the kept records stay evenly spaced over a stream of unknown length.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "vgcore/base/control.hpp"
#include "vgcore/model/model.hpp"

namespace vgcore {

struct LyapunovOptions {
  std::size_t k = 1;         // tangent vectors per sample (1 <= k <= D)
  std::size_t burn_in = 0;   // steps before accumulation starts (tangents still aligned)
  std::size_t qr_every = 1;  // steps between re-orthonormalisations
  std::size_t max_records = 10000;
  int num_threads = 0;  // workers (0 = hardware concurrency): batch chunks, or for
                        // B = 1 a helper thread that takes half of each step
};

template <class T>
class LyapunovEngine {
 public:
  // h0: (B, D) initial states (for a dense stack: the input x); v0: (B, k, D) initial tangent
  // vectors (orthonormalised here; need not be orthonormal, must have full rank).
  LyapunovEngine(Model<T> model, std::size_t batch, const T* h0, const T* v0,
                 const LyapunovOptions& opt);
  ~LyapunovEngine();
  LyapunovEngine(const LyapunovEngine&) = delete;
  LyapunovEngine& operator=(const LyapunovEngine&) = delete;

  // Advance `steps` steps. Recurrent: x is (steps, B, input_size). Dense: x is ignored and
  // steps must equal the number of layers (called once). progress reports done/total_hint
  // steps (total_hint 0 = unknown).
  void feed(const T* x, std::size_t steps, std::size_t total_hint, Control& ctl);
  // Re-orthonormalise a pending partial block so that every step taken is accounted for.
  void finish();

  std::size_t batch() const;
  std::size_t k() const;
  std::size_t state_dim() const;
  std::size_t steps() const;                      // steps taken
  std::size_t accumulated_steps() const;          // steps included in the exponents
  std::vector<double> log_growth() const;         // (B, k) accumulated sum of log|R_ii|
  std::vector<double> running() const;            // (n_records, B, k) running exponent estimates
  std::vector<double> block_rates() const;        // (n_records, B, k) log|R_ii| / block length
  std::vector<std::size_t> record_steps() const;  // (n_records,) step of each record
  std::vector<T> state() const;                   // (B, D) current states

 private:
  struct Impl;
  std::unique_ptr<Impl> p_;
};

extern template class LyapunovEngine<float>;
extern template class LyapunovEngine<double>;

}  // namespace vgcore

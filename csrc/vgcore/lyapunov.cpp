// Streaming Lyapunov-exponent engine: batch-parallel chunks, each advancing its samples' states
// and tangent blocks with one GEMM per step and re-orthonormalising with Householder QR.
#include "vgcore/lyapunov.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "vgcore/blas.hpp"
#include "vgcore/householder.hpp"

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

}  // namespace

template <class T>
struct LyapunovEngine<T>::Impl {
  TangentModel<T> m;
  std::size_t B = 0, k = 0, D = 0;
  LyapunovOptions opt;

  // Everything a chunk of samples owns. Counters are the same in every chunk (each advances
  // through the same steps); chunk 0's are reported.
  struct Chunk {
    std::size_t b0 = 0, nb = 0;
    std::vector<T> X, Y;  // [nb states; nb*k tangents] x D
    StepScratch<T> ws;
    std::vector<double> logsum;  // nb x k
    std::vector<double> rdiag;
    std::vector<T> tau;
    std::vector<double> rec_running, rec_block;  // n_records x nb x k
    RecordBook book;
    std::size_t steps = 0, since_qr = 0, acc_steps = 0, acc_blocks = 0;
  };
  std::vector<Chunk> chunks;

  T* tangents(Chunk& c, std::size_t b) { return c.X.data() + (c.nb + b * k) * D; }

  // QR of every sample's block after a block of `len` steps ending at step c.steps.
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
      if (!householder::qr_replace_by_q(tangents(c, b), D, k, D, rd, c.tau.data()))
        throw NonFiniteError(c.steps, "the tangent vectors became NaN/Inf by step " +
                                          std::to_string(c.steps) +
                                          " (sample " + std::to_string(c.b0 + b) +
                                          "); with qr_every > 1 they may have over- or "
                                          "underflowed between re-orthonormalisations");
      if (!accumulate) continue;
      double* ls = c.logsum.data() + b * k;
      for (std::size_t j = 0; j < k; ++j) {
        const double g = std::log(std::fabs(rd[j]));
        ls[j] += g;
        rd[j] = g;
      }
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

  void step(Chunk& c, std::size_t s, const T* proj) {
    StepScratch<T>& ws = c.ws;
    advance(m, s, proj, c.X.data(), c.Y.data(), c.nb, k, ws);
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
LyapunovEngine<T>::LyapunovEngine(TangentModel<T> model, std::size_t batch, const T* h0,
                                  const T* v0, const LyapunovOptions& opt)
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
  p.chunks.resize(n_chunks);
  const std::size_t D = p.D, k = p.k;
  for (std::size_t ci = 0; ci < n_chunks; ++ci) {
    auto& c = p.chunks[ci];
    const auto [b0, b1] = split_range(batch, n_chunks, ci);
    c.b0 = b0;
    c.nb = b1 - b0;
    const std::size_t rows = c.nb * (k + 1);
    c.X.assign(rows * D, T(0));
    c.Y.assign(rows * D, T(0));
    std::copy(h0 + b0 * D, h0 + b1 * D, c.X.data());
    std::copy(v0 + b0 * k * D, v0 + b1 * k * D, c.X.data() + c.nb * D);
    c.logsum.assign(c.nb * k, 0.0);
    c.rdiag.assign(k, 0.0);
    c.tau.assign(k, T(0));
    c.book.max = opt.max_records;
    for (std::size_t b = 0; b < c.nb; ++b) {
      if (!householder::qr_replace_by_q(p.tangents(c, b), D, k, D, c.rdiag.data(), c.tau.data()))
        throw std::invalid_argument("the initial tangent vectors contain NaN/Inf");
      for (std::size_t j = 0; j < k; ++j)
        if (c.rdiag[j] == 0.0)
          throw std::invalid_argument("the initial tangent vectors are linearly dependent");
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
  blas::BlasThreadsScope whole_call(budget);  // input projections
  const std::size_t total = total_hint ? total_hint : std::numeric_limits<std::size_t>::max();
  // Input projections for a sub-chunk of steps in one GEMM, bounded to ~4M values.
  const std::size_t per_step = std::max<std::size_t>(1, B * GN);
  const std::size_t sub = dense ? steps : std::max<std::size_t>(1, std::min(steps, (std::size_t(1) << 22) / per_step));
  std::vector<T> P(dense ? 0 : sub * B * GN);
  for (std::size_t t0 = 0; t0 < steps; t0 += sub) {
    const std::size_t tn = std::min(sub, steps - t0);
    if (!dense) p.m.project_inputs(x + t0 * B * I, tn * B, P.data());
    const std::size_t start = p.chunks[0].steps;
    blas::BlasThreadsScope chunk_threads(n_chunks > 1 ? 1 : budget);
    run_chunks(n_chunks, ctl, [&](std::size_t ci) {
      auto& c = p.chunks[ci];
      for (std::size_t t = 0; t < tn; ++t) {
        const std::size_t s = dense ? t : 0;  // layer index (dense) or the shared cell
        const T* proj = dense ? nullptr : P.data() + (t * B + c.b0) * GN;
        p.step(c, s, proj);
        if (ci == 0) ctl.tick(start + t + 1, total);
        else ctl.poll();
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
      p.qr_block(c, len);
    }
}

template <class T>
std::size_t LyapunovEngine<T>::batch() const { return p_->B; }
template <class T>
std::size_t LyapunovEngine<T>::k() const { return p_->k; }
template <class T>
std::size_t LyapunovEngine<T>::state_dim() const { return p_->D; }
template <class T>
std::size_t LyapunovEngine<T>::steps() const { return p_->chunks[0].steps; }
template <class T>
std::size_t LyapunovEngine<T>::accumulated_steps() const { return p_->chunks[0].acc_steps; }

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
                                   std::vector<double> Chunks::value_type::*field) {
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

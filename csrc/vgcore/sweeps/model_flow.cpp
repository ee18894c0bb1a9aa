// The generic BPTT sweep over Model<T> (model_flow.hpp).
#include "vgcore/sweeps/model_flow.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "vgcore/base/blas.hpp"
#include "vgcore/base/lanes.hpp"
#include "vgcore/base/parallel_rows.hpp"
#include "vgcore/base/workspace.hpp"

namespace vgcore {
namespace {

template <class Op>
struct RecurrentParts {  // a state block of one part (dense, state-space layers)
  static std::size_t parts() { return 1; }
  static std::size_t width(const Op& op) { return op.out_dim(); }
};
template <class T, class Cell>
struct RecurrentParts<RecurrentOp<T, Cell>> {  // h, c, ... side by side, N each
  static std::size_t parts() { return Cell::parts; }
  static std::size_t width(const RecurrentOp<T, Cell>& op) { return op.weights().hidden; }
};

// Per-chunk results, combined after the parallel section.
struct ChunkFlow {
  std::vector<double> log_norms;   // segments x n_states
  std::vector<double> sum, sumsq;  // segments x S
  std::vector<unsigned char> bad;  // S
};

// Sum of squares of the columns [off, off + w) of nb rows of stride ld, as sum_squares_scaled
// (through a contiguous copy when the segment is not the whole row).
template <class T>
double segment_sum_squares(const T* rows, std::size_t nb, std::size_t ld, std::size_t off,
                           std::size_t w, std::vector<T>& tmp, int& k) {
  if (off == 0 && w == ld) return sum_squares_scaled(rows, nb * w, k);
  tmp.resize(nb * w);
  for (std::size_t b = 0; b < nb; ++b)
    std::copy(rows + b * ld + off, rows + b * ld + off + w, tmp.data() + b * w);
  return sum_squares_scaled(tmp.data(), nb * w, k);
}

}  // namespace

template <class T>
std::vector<StateSegment> state_segments(const Model<T>& m) {
  if (m.axis() == Axis::depth) return {StateSegment{}};
  std::vector<StateSegment> out;
  std::size_t offset = 0;
  for (std::size_t l = 0; l < m.n_layers(); ++l) {
    std::visit(
        [&](const auto& op) {
          using P = RecurrentParts<std::decay_t<decltype(op)>>;
          const std::size_t w = P::width(op);
          for (std::size_t p = 0; p < P::parts(); ++p) out.push_back({l, p, offset + p * w, w});
          offset += op.out_dim();
        },
        m.layer(l));
  }
  return out;
}

template <class T>
StateSegment output_segment(const Model<T>& m) {
  if (m.axis() == Axis::depth) return {m.n_layers() - 1, 0, 0, m.out_dim(m.n_layers() - 1)};
  for (const StateSegment& s : state_segments(m))
    if (s.layer + 1 == m.n_layers() && s.part == 0) return s;
  throw std::logic_error("the model has no top layer");
}

template <class T>
ModelFlowStats model_gradient_flow(const Model<T>& m, const ModelFlowIO<T>& io,
                                   const FlowOptions& opt, Control& ctl) {
  using RL = RescaleLimits<T>;
  const bool time = m.axis() == Axis::time;
  const std::size_t S = time ? io.steps : m.n_layers(), B = io.batch;
  if (S == 0) throw std::invalid_argument("the sequence has no steps");
  if (B == 0) throw std::invalid_argument("the batch is empty");
  if (!io.x) throw std::invalid_argument("x is null");
  if (io.cotangent_per_step && !time)
    throw std::invalid_argument("a per-step cotangent needs a model on the time axis");
  if (io.grads && !time) throw std::invalid_argument("kept gradients need the time axis");
  // Width of state s (time axis: all the same), gemm columns and cache size of step s.
  auto width = [&](std::size_t s) {
    return s < S ? m.in_dim(time ? 0 : s) : m.out_dim(time ? 0 : S - 1);
  };
  auto step_of = [&](std::size_t s) { return time ? std::size_t{0} : s; };
  std::vector<std::size_t> cache_off(S + 1, 0);
  std::size_t max_w = width(S), max_gc = 0;
  for (std::size_t s = 0; s < S; ++s) {
    cache_off[s + 1] = cache_off[s] + B * m.cache_size(step_of(s));
    max_w = std::max(max_w, width(s));
    max_gc = std::max(max_gc, m.gemm_cols(step_of(s)));
  }
  const std::vector<StateSegment> segs = state_segments(m);
  const StateSegment out_seg = output_segment(m);
  const std::size_t n_seg = segs.size(), n_out = out_seg.width;

  // The input projections of every step in one GEMM (time axis).
  const std::size_t pc = m.proj_cols(), I = time ? m.input_size() : 0;
  // P and the caches (every step's, for the backward pass: the bulk of the memory) come from
  // the workspace pool uninitialised and in small pages: every entry is written before it is
  // read, and zeroing a fresh gigabyte (page faults and a memset) cost a quarter of a selective
  // layer's sweep; a later call reuses the pages.
  Buffer<T> P(time ? S * B * pc : 0, false);
  if (time)
    parallel_rows(opt.num_threads, S * B, 64, ctl, [&](std::size_t r0, std::size_t r1) {
      m.project_inputs(io.x + r0 * I, r1 - r0, P.data() + r0 * pc);
    });
  Buffer<T> caches(cache_off[S], false);

  const int budget = static_cast<int>(resolve_threads(opt.num_threads, 1 << 20));
  const std::size_t n_chunks = resolve_threads(opt.num_threads, B);
  std::vector<ChunkFlow> cf(n_chunks);
  const std::size_t total_work = 2 * S;
  blas::BlasThreadsScope chunk_threads(n_chunks > 1 ? 1 : budget);
  run_chunks(n_chunks, ctl, [&](std::size_t ci) {
    const auto [b0, b1] = split_range(B, n_chunks, ci);
    const std::size_t nb = b1 - b0;
    ChunkFlow& st = cf[ci];
    st.log_norms.assign(n_seg * (S + 1), -std::numeric_limits<double>::infinity());
    st.sum.assign(n_seg * S, 0.0);
    st.sumsq.assign(n_seg * S, 0.0);
    st.bad.assign(S, 0);
    auto progress = [&](std::size_t done) {
      if (ci == 0)
        ctl.tick(done, total_work);
      else
        ctl.poll();
    };
    std::vector<T> xa(nb * max_w, T(0)), xb(nb * max_w, T(0)), U(nb * max_gc), tmp;
    T* X = xa.data();
    T* Y = xb.data();
    if (time) {
      if (io.h0) std::copy(io.h0 + b0 * width(0), io.h0 + b1 * width(0), X);
    } else {
      std::copy(io.x + b0 * width(0), io.x + b1 * width(0), X);
    }
    // Forward, keeping each step's per-sample cache.
    for (std::size_t s = 0; s < S; ++s) {
      const std::size_t din = width(s), dout = width(s + 1), ms = step_of(s);
      const std::size_t gc = m.gemm_cols(ms), C = m.cache_size(ms);
      m.gemm_rows(ms, X, din, nb, U.data(), gc);
      m.step(ms, time ? P.data() + (s * B + b0) * pc : nullptr, U.data(), gc, X, din, Y, dout, nb,
             caches.data() + cache_off[s] + b0 * C, 0, 0, nullptr);
      st.bad[s] = all_finite(Y, nb * dout) ? 0 : 1;
      for (std::size_t j = 0; j < n_seg; ++j) {
        const std::size_t off = time ? segs[j].offset : 0, w = time ? segs[j].width : dout;
        double a = 0, a2 = 0;
        for (std::size_t b = 0; b < nb; ++b) moments(Y + b * dout + off, w, a, a2);
        st.sum[j * S + s] = a;
        st.sumsq[j * S + s] = a2;
      }
      std::swap(X, Y);
      progress(s + 1);
    }
    const std::size_t wS = width(S);
    if (io.y)
      for (std::size_t b = 0; b < nb; ++b)
        std::copy(X + b * wS + out_seg.offset, X + b * wS + out_seg.offset + n_out,
                  io.y + (b0 + b) * n_out);

    // Backward: g = dL/dh_s, stored = true * 2^scale.
    std::vector<T> ga(nb * max_w, T(0)), gb(nb * max_w, T(0)), total(nb * max_w), G(max_gc);
    T* g = ga.data();
    T* gn = gb.data();
    if (!io.cotangent_per_step)
      for (std::size_t b = 0; b < nb; ++b) {
        const T* src = io.cotangent ? io.cotangent + (b0 + b) * n_out : X + b * wS + out_seg.offset;
        std::copy(src, src + n_out, g + b * wS + out_seg.offset);
      }
    int scale = 0;
    // Only a stack over time sends cotangent back into a state within a step (layer l + 1 reads
    // the new h^l); elsewhere dL/dh_s is g itself, measured by the norm the rescaling takes.
    const bool within = time && m.n_layers() > 1;
    // Then, with one segment covering the whole row, a state's norm is the rescaling's s2.
    const bool norm_is_s2 =
        !within && n_seg == 1 && (!time || (segs[0].offset == 0 && segs[0].width == width(0)));
    for (std::size_t s = S;; --s) {
      const std::size_t w = width(s), n = nb * w;
      int top = 0;  // where a per-step term's largest entry was placed, 2^top (0: not moved)
      if (io.cotangent_per_step && s > 0) {  // the loss on the output of step s - 1
        const T* cot = io.cotangent + ((s - 1) * B + b0) * n_out;
        const double mx = max_abs(cot, nb * n_out);
        if (mx > 0.0 && mx <= std::numeric_limits<double>::max()) {
          const int em = exponent_of(mx);
          int kz = 0;
          const bool zero = !(sum_squares_scaled(g, n, kz) != 0.0);
          if (zero || em + scale > RL::emax - 4) {
            // g is zero (take the term's scale) or far smaller than the term: shift g down only
            // as far as the term needs to stay below 2^(emax - 3), so that a segment far below
            // the others (a cell state's under an injected h) keeps its digits until it is
            // measured below; the window rescaling then brings g back before the step.
            // Without rescaling (the plain product) the term's largest entry goes to 2^0.
            top = zero || !opt.rescale ? 0 : RL::emax - 4;
            const int d = top - (em + scale);
            if (!zero) scale_pow2_wide(g, n, d);
            scale += d;
          }
        }
        for (std::size_t b = 0; b < nb; ++b)
          add_scaled(g + b * w + out_seg.offset, cot + b * n_out, n_out, scale);
      }
      int k = 0;
      double s2 = sum_squares_scaled(g, n, k);
      int e = norm_exponent(s2, k);
      // The norms of state s: of dL/dh_s in full (a stack's lower layers also receive, within
      // step s - 1, what the layer above sends back; Model::vjp's Wtotal).
      auto record = [&](const T* v) {
        if (norm_is_s2) {  // v is g
          st.log_norms[s] = log_norm(s2, scale + k);
          if (io.grads) store_scaled(io.grads + (s * B + b0) * w, v, n, -scale);
          return;
        }
        for (std::size_t j = 0; j < n_seg; ++j) {
          int ks = 0;
          const double q = segment_sum_squares(v, nb, w, time ? segs[j].offset : 0,
                                               time ? segs[j].width : w, tmp, ks);
          st.log_norms[j * (S + 1) + s] = log_norm(q, scale + ks);
        }
        if (io.grads) store_scaled(io.grads + (s * B + b0) * w, v, n, -scale);
      };
      // Measured and kept before the window rescaling (which serves only the next steps'
      // safety, and can push a segment far below the others into the subnormals).
      if (!within || s == 0) record(g);
      if (s == 0) break;
      const bool finite = s2 > 0.0 && std::isfinite(s2);
      if (opt.rescale && (finite ? e > RL::window || e < -RL::window : top != 0)) {
        // Bring the norm near 1; a norm that is not finite (inf / NaN entries) has no
        // exponent: a term placed near the top goes back to 2^0.
        const int d = finite ? -e : -top;
        scale_pow2_wide(g, n, d);
        scale += d;
        s2 = sum_squares_scaled(g, n, k);
        e = norm_exponent(s2, k);
      }
      const std::size_t ms = step_of(s - 1), din = width(s - 1), C = m.cache_size(ms);
      const T* cache = caches.data() + cache_off[s - 1] + b0 * C;
      auto pull = [&]() {
        for (std::size_t b = 0; b < nb; ++b)
          m.vjp(ms, cache + b * C, g + b * w, gn + b * din, 1, G.data(),
                within ? total.data() + b * w : nullptr);
      };
      pull();
      if (opt.rescale && s2 > 0.0 && std::isfinite(s2) && !all_finite(gn, nb * din)) {
        // The gain of this one step overflowed the type at this scale: redo it from a smaller
        // vector, first near 2^-(emax/4), then at the bottom of the normal range.
        for (const int target : {-RL::emax / 4, RL::emin + 2 * RL::digits}) {
          const int d = e - target;
          if (d <= 0) continue;
          scale_pow2_wide(g, n, -d);
          scale -= d;
          e -= d;
          pull();
          if (all_finite(gn, nb * din)) break;
        }
      }
      if (within) record(total.data());
      std::swap(g, gn);
      progress(2 * S - s + 1);
    }
  });

  ModelFlowStats out;
  out.segments = segs;
  out.n_states = S + 1;
  out.log_grad_norms.resize(n_seg * (S + 1));
  std::vector<double> per_chunk(n_chunks);
  for (std::size_t i = 0; i < n_seg * (S + 1); ++i) {
    for (std::size_t c = 0; c < n_chunks; ++c) per_chunk[c] = cf[c].log_norms[i];
    out.log_grad_norms[i] = combine_log_norms(per_chunk.data(), n_chunks, 1);
  }
  out.act_mean.assign(n_seg * S, 0.0);
  out.act_std.assign(n_seg * S, 0.0);
  out.nonfinite.assign(S, 0);
  for (std::size_t j = 0; j < n_seg; ++j)
    for (std::size_t s = 0; s < S; ++s) {
      double a = 0, a2 = 0;
      for (const auto& c : cf) {
        a += c.sum[j * S + s];
        a2 += c.sumsq[j * S + s];
      }
      const double cnt = static_cast<double>(B * (time ? segs[j].width : width(s + 1)));
      const double mean = a / cnt;
      out.act_mean[j * S + s] = mean;
      out.act_std[j * S + s] = std::sqrt(std::max(0.0, a2 / cnt - mean * mean));
    }
  for (const auto& c : cf)
    for (std::size_t s = 0; s < S; ++s) out.nonfinite[s] |= c.bad[s];
  return out;
}

template std::vector<StateSegment> state_segments<float>(const Model<float>&);
template std::vector<StateSegment> state_segments<double>(const Model<double>&);
template StateSegment output_segment<float>(const Model<float>&);
template StateSegment output_segment<double>(const Model<double>&);
template ModelFlowStats model_gradient_flow<float>(const Model<float>&, const ModelFlowIO<float>&,
                                                   const FlowOptions&, Control&);
template ModelFlowStats model_gradient_flow<double>(const Model<double>&,
                                                    const ModelFlowIO<double>&, const FlowOptions&,
                                                    Control&);

}  // namespace vgcore

// Forward and backward through a dense stack (plain / residual / highway blocks, optional
// LayerNorm or BatchNorm), batch-parallel unless BatchNorm couples the batch.
#include "vgcore/sweeps/dense.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "vgcore/base/blas.hpp"
#include "vgcore/base/fastmath.hpp"
#include "vgcore/base/gates.hpp"
#include "vgcore/layers/batchnorm.hpp"
#include "vgcore/layers/dense.hpp"
#include "vgcore/layers/highway.hpp"
#include "vgcore/layers/layernorm.hpp"
#include "vgcore/layers/residual.hpp"
#include "vgcore/base/packed_gemm.hpp"
#include "vgcore/base/workspace.hpp"

namespace vgcore {
namespace {

template <class T>
void check_layers(const std::vector<DenseLayer<T>>& layers) {
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const auto& ly = layers[l];
    const std::string name = "layer " + std::to_string(l);
    if (l > 0 && ly.in != layers[l - 1].out)
      throw std::invalid_argument(name + " expects " + std::to_string(ly.in) +
                                  " inputs but layer " + std::to_string(l - 1) + " has " +
                                  std::to_string(layers[l - 1].out) + " outputs");
    if (!ly.weight) throw std::invalid_argument(name + ": weight is null");
    if (ly.block != DenseBlock::plain && ly.in != ly.out)
      throw std::invalid_argument(name + ": residual and highway blocks need in == out, got " +
                                  std::to_string(ly.in) + " -> " + std::to_string(ly.out));
    if (ly.block == DenseBlock::highway && !ly.gate_weight)
      throw std::invalid_argument(name + ": highway block without gate weight");
    if (ly.norm != DenseNorm::none && !(ly.eps >= 0))
      throw std::invalid_argument(name + ": normalisation eps must be >= 0");
    if (ly.norm == DenseNorm::batchnorm_eval && !(ly.running_mean && ly.running_var))
      throw std::invalid_argument(name +
                                  ": eval-mode BatchNorm needs running_mean and running_var");
  }
}

// Per-chunk accumulators, combined after the parallel section.
struct ChunkStats {
  std::vector<double> sum, sumsq, saturated;  // per layer
  std::vector<double> grad_sumsq;             // per state
  std::vector<int> grad_scale;                // per state: stored = true * 2^scale
  std::vector<int> gz_scale;                  // per layer: scale of the stored dL/dz
  std::vector<unsigned char> preact_bad;      // per layer: a pre-activation is inf/NaN
};

// Buffers of one layer, each (B x out) unless noted; chunks own disjoint rows.
template <class T>
struct LayerBuffers {
  Buffer<T> h;     // output h_l
  Buffer<T> d;     // phi'(z'), then dL/dz' after the backward pass
  Buffer<T> xhat;  // norm: normalised z
  Buffer<T> istd;  // norm: 1/sqrt(var + eps); LayerNorm (B), BatchNorm (out)
  Buffer<T> dz;    // norm: dL/dz (pre-norm), for dW
  Buffer<T> a;     // highway: phi(z')
  Buffer<T> t;     // highway: gate t, then dL/d(gate pre-activation)
};

template <class T>
void col_sums(const T* a, std::size_t rows, std::size_t n, std::vector<double>& out) {
  out.assign(n, 0.0);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t j = 0; j < n; ++j) out[j] += a[r * n + j];
}

}  // namespace

template <class T>
FlowStats dense_gradient_flow(const std::vector<DenseLayer<T>>& layers, const DenseFlowIO<T>& io,
                              const FlowOptions& opt, Control& ctl) {
  check_layers(layers);
  const std::size_t L = layers.size(), B = io.batch;
  if (L == 0) throw std::invalid_argument("the network has no layers");
  const int budget = static_cast<int>(resolve_threads(opt.num_threads, 1 << 20));
  blas::BlasThreadsScope whole_call(budget);  // parameter-gradient GEMMs
  std::vector<std::size_t> width(L + 1);
  width[0] = layers[0].in;
  for (std::size_t l = 0; l < L; ++l) width[l + 1] = layers[l].out;
  bool coupled = false;  // BatchNorm couples the batch: no batch-parallel chunks
  std::vector<LayerBuffers<T>> buf(L + 1);
  for (std::size_t l = 1; l <= L; ++l) {
    const auto& ly = layers[l - 1];
    const std::size_t n = B * width[l];
    buf[l].h.resize(n);
    buf[l].d.resize(n);
    if (ly.norm != DenseNorm::none) {
      buf[l].xhat.resize(n);
      buf[l].dz.resize(n);
      buf[l].istd.resize(ly.norm == DenseNorm::layernorm ? B : width[l]);
      if (ly.norm == DenseNorm::batchnorm_eval)  // fixed: computed once, read by every chunk
        for (std::size_t j = 0; j < width[l]; ++j) buf[l].istd[j] = running_istd(ly, j);
      coupled = coupled || ly.norm == DenseNorm::batchnorm;
    }
    if (ly.block == DenseBlock::highway) {
      buf[l].a.resize(n);
      buf[l].t.resize(n);
    }
  }
  const std::size_t max_width = *std::max_element(width.begin(), width.end());
  const std::size_t n_chunks = coupled ? 1 : resolve_threads(opt.num_threads, B);
  std::vector<ChunkStats> cs(n_chunks);
  const std::size_t total_work = 2 * L;

  {
    // Workers run single-threaded BLAS; a single chunk gets the whole budget for big products.
    const int chunk_blas = n_chunks > 1 ? 1 : blas::step_threads(B, max_width, max_width, budget);
    blas::BlasThreadsScope chunk_threads(chunk_blas);
    // Single-threaded products go through the packed kernels (packed_gemm.hpp): each worker packs
    // a layer's weight (as BLAS would on every call) and streams it with AVX-512/AVX2 tiles.
    const bool packed = chunk_blas == 1 && packed_gemm_available();
    run_chunks(n_chunks, ctl, [&](std::size_t c) {
      PackedMatrix<T> pk;  // this worker's packed operand, storage reused from layer to layer
      std::vector<T> ct;   // C^T of a forward product
      // C (nb x n) = beta C + A (nb x k) W^T (W: n x k, row stride ldw), or + A W (W: k x n)
      // when !trans. The forward form runs as C^T = W A^T: the weight streams from memory as it
      // is and only the activations are packed (nb columns), then C takes the transpose.
      auto product = [&](std::size_t nb, std::size_t n, std::size_t k, const T* a, const T* w,
                         std::size_t ldw, bool trans, T beta, T* cmat) {
        if (!packed) {
          blas::gemm(blas::Op::N, trans ? blas::Op::T : blas::Op::N, nb, n, k, T(1), a, k, w, ldw,
                     beta, cmat, n);
          return;
        }
        if (!trans) {
          pk.assign_rows(w, k, n, ldw);
          gemm_packed(nb, a, k, pk, beta, cmat, n);
          return;
        }
        pk.assign_transposed(a, nb, k, k);
        ct.resize(n * nb);
        gemm_packed(n, w, ldw, pk, T(0), ct.data(), nb);
        for (std::size_t b = 0; b < nb; ++b) {
          T* crow = cmat + b * n;
          if (beta == T(0))
            for (std::size_t j = 0; j < n; ++j) crow[j] = ct[j * nb + b];
          else
            for (std::size_t j = 0; j < n; ++j) crow[j] += ct[j * nb + b];
        }
      };
      const auto [b0, b1] = split_range(B, n_chunks, c);
      const std::size_t nb = b1 - b0;
      ChunkStats& st = cs[c];
      st.sum.assign(L, 0.0);
      st.sumsq.assign(L, 0.0);
      st.saturated.assign(L, 0.0);
      st.grad_sumsq.assign(L + 1, 0.0);
      st.grad_scale.assign(L + 1, 0);
      st.gz_scale.assign(L, 0);
      const bool primary = (c == 0);
      auto hin_of = [&](std::size_t l) -> const T* {
        return l == 1 ? io.x + b0 * width[0] : buf[l - 1].h.data() + b0 * width[l - 1];
      };

      st.preact_bad.assign(L, 0);

      // Forward through layer l (rows of this chunk): h_l, phi', norm and gate buffers, stats.
      // Run again by the backward pass when it has to redo a layer (see below).
      auto forward_layer = [&](std::size_t l) {
        const DenseLayer<T>& ly = layers[l - 1];
        LayerBuffers<T>& lb = buf[l];
        const std::size_t n_in = width[l - 1], n_out = width[l], off = b0 * n_out, cnt = nb * n_out;
        const T* hin = hin_of(l);
        T* z = lb.h.data() + off;
        T* dphi = lb.d.data() + off;
        if (ly.bias)
          for (std::size_t b = 0; b < nb; ++b) std::copy(ly.bias, ly.bias + n_out, z + b * n_out);
        product(nb, n_out, n_in, hin, ly.weight, ly.in, true, ly.bias ? T(1) : T(0), z);
        if (ly.norm == DenseNorm::layernorm)
          layers::layernorm_forward_rows(ly.norm_weight, ly.norm_bias, ly.eps, z,
                                         lb.xhat.data() + off, lb.istd.data() + b0, nb, n_out);
        else if (ly.norm == DenseNorm::batchnorm)
          layers::batchnorm_forward_cols(ly.norm_weight, ly.norm_bias, ly.eps, z,
                                         lb.xhat.data() + off, lb.istd.data(), nb, n_out);
        else if (ly.norm == DenseNorm::batchnorm_eval)
          layers::batchnorm_eval_forward_rows(ly.norm_weight, ly.norm_bias, ly.running_mean,
                                              lb.istd.data(), z, lb.xhat.data() + off, nb, n_out);
        // An overflowed pre-activation can hide behind a saturating activation (tanh(inf) = 1).
        bool bad = any_nonfinite(z, cnt);
        if (ly.block == DenseBlock::plain) {
          activation_forward(ly.act, z, z, dphi, cnt);
        } else if (ly.block == DenseBlock::residual) {
          activation_forward(ly.act, z, z, dphi, cnt);
          layers::residual_forward_row(hin, static_cast<T>(ly.alpha), z, cnt);
        } else {
          T* a = lb.a.data() + off;
          T* t = lb.t.data() + off;
          activation_forward(ly.act, z, a, dphi, cnt);
          if (ly.gate_bias)
            for (std::size_t b = 0; b < nb; ++b)
              std::copy(ly.gate_bias, ly.gate_bias + n_out, t + b * n_out);
          product(nb, n_out, n_in, hin, ly.gate_weight, ly.in, true, ly.gate_bias ? T(1) : T(0), t);
          bad = bad || any_nonfinite(t, cnt);
          layers::highway_forward_row(t, a, hin, z, cnt);
        }
        st.preact_bad[l - 1] = bad ? 1 : 0;
        const T sat_level = static_cast<T>(opt.saturation_threshold * ly.act.max_derivative());
        double s = 0, s2 = 0;
        moments(z, cnt, s, s2);
        st.sum[l - 1] = s;
        st.sumsq[l - 1] = s2;
        st.saturated[l - 1] = static_cast<double>(count_below(dphi, cnt, sat_level));
      };
      for (std::size_t l = 1; l <= L; ++l) {
        forward_layer(l);
        if (primary)
          ctl.tick(l, total_work);
        else
          ctl.poll();
      }

      // Backward through layer l: from g = dL/dh_l (stored; times f) to gnext = dL/dh_{l-1}
      // (stored, at the scale of g times f). Overwrites phi' with dL/dz' (and the gate buffer
      // with dL/d(gate pre-activation)), which the parameter gradients use.
      auto backward_layer = [&](std::size_t l, const T* g, T f, T* gnext) {
        const DenseLayer<T>& ly = layers[l - 1];
        LayerBuffers<T>& lb = buf[l];
        const std::size_t n_in = width[l - 1], n_out = width[l], off = b0 * n_out, cnt = nb * n_out;
        const T* hin = hin_of(l);
        T* dphi = lb.d.data() + off;  // becomes dL/dz'
        // gnext first receives the direct (skip / carry) path, then the GEMMs accumulate.
        if (ly.block == DenseBlock::plain)
          layers::plain_backward_row(g, f, dphi, cnt);
        else if (ly.block == DenseBlock::residual)
          layers::residual_backward_row(g, f, static_cast<T>(ly.alpha), dphi, gnext, cnt);
        else  // the gate buffer becomes dL/d(gate pre-activation)
          layers::highway_backward_row(g, f, lb.a.data() + off, hin, lb.t.data() + off, dphi, gnext,
                                       cnt);
        const T* dz = dphi;
        if (ly.norm != DenseNorm::none) {
          T* dzn = lb.dz.data() + off;
          if (ly.norm == DenseNorm::layernorm)
            layers::layernorm_backward_rows(ly.norm_weight, dphi, lb.xhat.data() + off,
                                            lb.istd.data() + b0, dzn, nb, n_out);
          else if (ly.norm == DenseNorm::batchnorm)
            layers::batchnorm_backward_cols(ly.norm_weight, dphi, lb.xhat.data() + off,
                                            lb.istd.data(), dzn, nb, n_out);
          else
            layers::batchnorm_eval_backward_rows(ly.norm_weight, dphi, lb.istd.data(), dzn, nb,
                                                 n_out);
          dz = dzn;
        }
        const T beta = ly.block == DenseBlock::plain ? T(0) : T(1);
        product(nb, n_in, n_out, dz, ly.weight, ly.in, false, beta, gnext);
        if (ly.block == DenseBlock::highway)
          product(nb, n_in, n_out, lb.t.data() + off, ly.gate_weight, ly.in, false, T(1), gnext);
      };

      // Backward. g holds dL/dh_l, stored = true * 2^scale; two ping-pong buffers. `pending`
      // is the power of two applied with the next layer's products, chosen from the previous
      // norm (so that it costs no extra pass), unless that is not enough (see RescaleLimits).
      using RL = RescaleLimits<T>;
      std::vector<T> ga(nb * max_width), gb(nb * max_width);
      T* g = ga.data();
      T* gnext = gb.data();
      const std::size_t nL = width[L];
      const T* yL = buf[L].h.data() + b0 * nL;
      if (io.cotangent)
        std::copy(io.cotangent + b0 * nL, io.cotangent + b1 * nL, g);
      else
        std::copy(yL, yL + nb * nL, g);
      int scale = 0, k = 0;
      double s2 = sum_squares_scaled(g, nb * nL, k);
      int pending = opt.rescale ? rescale_exponent<T>(s2, k) : 0;
      int prev_e = 0, prev_pending = 0;  // of the layer above, for a redo
      bool prev_finite = false;
      auto keep = [&](std::size_t l, const T* gv) {
        if (io.grads.empty() || !io.grads[l]) return;
        store_scaled(io.grads[l] + b0 * width[l], gv, nb * width[l], -scale);
      };
      for (std::size_t l = L;; --l) {
        const std::size_t cnt = nb * width[l];
        if (l < L) {
          s2 = sum_squares_scaled(g, cnt, k);
          if (opt.rescale && prev_finite && !std::isfinite(s2)) {
            // The products of layer l + 1 overflowed (a gain beyond the type's range in one
            // layer): redo that layer with its input made smaller, first to 2^-(emax/2), then
            // to the bottom of the normal range. Its forward buffers were overwritten: rebuilt.
            const std::size_t cnt_up = nb * width[l + 1];
            for (const int target : {-RL::emax / 4, RL::emin + 2 * RL::digits}) {
              const int d = prev_e + prev_pending - target;
              if (d <= 0) continue;
              scale_pow2_wide(gnext, cnt_up, -d);
              prev_e -= d;
              scale -= d;
              st.gz_scale[l] -= d;
              forward_layer(l + 1);
              backward_layer(l + 1, gnext, pow2<T>(prev_pending), g);
              s2 = sum_squares_scaled(g, cnt, k);
              if (std::isfinite(s2)) break;
            }
          }
        }
        int e = norm_exponent(s2, k);
        if (opt.rescale && (pending > RL::pow2max || pending < -RL::pow2max ||
                            e + pending > RL::window || e + pending < -RL::window)) {
          // The factor from the previous norm does not fit this vector: bring it near 1 now.
          scale_pow2_wide(g, cnt, -e);
          scale -= e;
          pending = 0;
          s2 = sum_squares_scaled(g, cnt, k);
          e = norm_exponent(s2, k);
        }
        keep(l, g);
        st.grad_sumsq[l] = s2;
        st.grad_scale[l] = scale + k;
        if (l == 0) break;
        backward_layer(l, g, pow2<T>(pending), gnext);
        scale += pending;
        st.gz_scale[l - 1] = scale;
        prev_e = e;
        prev_pending = pending;
        prev_finite = std::isfinite(s2);
        pending = opt.rescale ? next_pending<T>(s2, e, pending) : 0;
        std::swap(g, gnext);
        if (primary)
          ctl.tick(2 * L - l + 1, total_work);
        else
          ctl.poll();
      }
      if (io.y) std::copy(yL, yL + nb * nL, io.y + b0 * nL);
    });
  }

  FlowStats out;
  out.log_grad_norms.resize(L + 1);
  std::vector<double> per_chunk(n_chunks);
  for (std::size_t l = 0; l <= L; ++l) {
    for (std::size_t c = 0; c < n_chunks; ++c)
      per_chunk[c] = log_norm(cs[c].grad_sumsq[l], cs[c].grad_scale[l]);
    out.log_grad_norms[l] = combine_log_norms(per_chunk.data(), n_chunks, 1);
  }
  out.act_mean.resize(L);
  out.act_std.resize(L);
  out.saturation.resize(L);
  out.preact_nonfinite.assign(L, 0);
  for (std::size_t l = 0; l < L; ++l) {
    double s = 0, s2 = 0, ns = 0;
    for (auto& st : cs) {
      s += st.sum[l];
      s2 += st.sumsq[l];
      ns += st.saturated[l];
      out.preact_nonfinite[l] |= st.preact_bad[l];
    }
    const double n = static_cast<double>(B * width[l + 1]);
    const double mean = s / n;
    out.act_mean[l] = mean;
    out.act_std[l] = std::sqrt(std::max(0.0, s2 / n - mean * mean));
    out.saturation[l] = ns / n;
  }

  if (opt.param_grads) {
    // Chunks may hold a layer's gradients at different scales: bring them to the smallest
    // (least amplified) one, then one GEMM over the whole batch per weight matrix.
    const double nan = std::numeric_limits<double>::quiet_NaN();
    out.log_param_grad_norms.assign(kDenseParamsPerLayer * L, nan);
    out.param_present.assign(kDenseParamsPerLayer * L, 0);
    std::vector<T> dw, hs;
    std::vector<double> colsum;
    for (std::size_t l = 1; l <= L; ++l) {
      ctl.tick(2 * L, total_work);
      const DenseLayer<T>& ly = layers[l - 1];
      LayerBuffers<T>& lb = buf[l];
      const std::size_t n_out = width[l], n_in = width[l - 1];
      int ref = cs[0].gz_scale[l - 1];
      for (auto& st : cs) ref = std::min(ref, st.gz_scale[l - 1]);
      for (std::size_t c = 0; c < n_chunks; ++c) {
        const auto [b0, b1] = split_range(B, n_chunks, c);
        const int k = ref - cs[c].gz_scale[l - 1];
        for (auto* v : {&lb.d, &lb.dz, &lb.t})
          if (!v->empty()) scale_pow2(v->data() + b0 * n_out, (b1 - b0) * n_out, k);
      }
      const T* hin = (l == 1) ? io.x : buf[l - 1].h.data();
      T* dz = ly.norm != DenseNorm::none ? lb.dz.data() : lb.d.data();
      double* o = out.log_param_grad_norms.data() + kDenseParamsPerLayer * (l - 1);
      unsigned char* present = out.param_present.data() + kDenseParamsPerLayer * (l - 1);
      auto norm_of = [&](const auto* v, std::size_t n, int at) {
        int k = 0;
        const double s = sum_squares_scaled(v, n, k);
        return log_norm(s, at + k);
      };
      // dW = dz^T h_in in T: both operands are shifted by powers of two where the terms could
      // overflow or lose digits (huge or tiny inputs and activations, far-rescaled gradients).
      const double hmax = max_abs(hin, B * n_in);
      auto weight_grad = [&](T* d, int at) {
        int sa = 0, sb = 0;
        product_shifts<T>(max_abs(d, B * n_out), hmax, B, sa, sb);
        const T* h = hin;
        if (sb != 0) {
          hs.assign(hin, hin + B * n_in);
          scale_pow2_wide(hs.data(), hs.size(), sb);
          h = hs.data();
        }
        scale_pow2_wide(d, B * n_out, sa);
        dw.resize(n_out * n_in);
        blas::gemm(blas::Op::T, blas::Op::N, n_out, n_in, B, T(1), d, n_out, h, n_in, T(0),
                   dw.data(), n_in);
        return norm_of(dw.data(), dw.size(), at + sa + sb);
      };
      if (ly.bias) {
        col_sums(dz, B, n_out, colsum);
        o[1] = norm_of(colsum.data(), n_out, ref);
        present[1] = 1;
      }
      if (ly.norm != DenseNorm::none) {
        // dgamma = colsum(dL/dz' * xhat), dbeta = colsum(dL/dz')
        std::vector<double> dg(n_out, 0.0);
        for (std::size_t b = 0; b < B; ++b)
          for (std::size_t j = 0; j < n_out; ++j)
            dg[j] += static_cast<double>(lb.d[b * n_out + j]) * lb.xhat[b * n_out + j];
        if (ly.norm_weight) {
          o[2] = norm_of(dg.data(), n_out, ref);
          present[2] = 1;
        }
        col_sums(lb.d.data(), B, n_out, colsum);
        if (ly.norm_bias) {
          o[3] = norm_of(colsum.data(), n_out, ref);
          present[3] = 1;
        }
      }
      o[0] = weight_grad(dz, ref);
      present[0] = 1;
      if (ly.block == DenseBlock::highway) {
        if (ly.gate_bias) {
          col_sums(lb.t.data(), B, n_out, colsum);
          o[5] = norm_of(colsum.data(), n_out, ref);
          present[5] = 1;
        }
        o[4] = weight_grad(lb.t.data(), ref);
        present[4] = 1;
      }
    }
  }
  return out;
}

template FlowStats dense_gradient_flow<float>(const std::vector<DenseLayer<float>>&,
                                              const DenseFlowIO<float>&, const FlowOptions&,
                                              Control&);
template FlowStats dense_gradient_flow<double>(const std::vector<DenseLayer<double>>&,
                                               const DenseFlowIO<double>&, const FlowOptions&,
                                               Control&);

}  // namespace vgcore

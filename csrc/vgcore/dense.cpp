#include "vgcore/dense.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>

#include "vgcore/blas.hpp"

namespace vgcore {
namespace {

template <class T>
void check_layers(const std::vector<DenseLayer<T>>& layers) {
  for (std::size_t l = 0; l < layers.size(); ++l) {
    if (l > 0 && layers[l].in != layers[l - 1].out)
      throw std::invalid_argument("layer " + std::to_string(l) + " expects " +
                                  std::to_string(layers[l].in) + " inputs but layer " +
                                  std::to_string(l - 1) + " has " +
                                  std::to_string(layers[l - 1].out) + " outputs");
    if (!layers[l].weight) throw std::invalid_argument("layer weight is null");
  }
}

// Per-chunk accumulators, combined after the parallel section.
struct ChunkStats {
  std::vector<double> sum, sumsq, saturated;  // per layer
  std::vector<double> grad_sumsq;             // per state
  std::vector<int> grad_scale;                // per state: stored = true * 2^scale
  std::vector<int> gz_scale;                  // per layer: scale of the stored dL/dz
};

}  // namespace

template <class T>
FlowStats dense_gradient_flow(const std::vector<DenseLayer<T>>& layers, const DenseFlowIO<T>& io,
                              const FlowOptions& opt, Control& ctl) {
  check_layers(layers);
  const std::size_t L = layers.size(), B = io.batch;
  if (L == 0) throw std::invalid_argument("the network has no layers");
  std::vector<std::size_t> width(L + 1);
  width[0] = layers[0].in;
  for (std::size_t l = 0; l < L; ++l) width[l + 1] = layers[l].out;

  // h[l] (B x width[l]) for l >= 1 (h[0] is the input); d[l] (B x width[l]) holds phi'(z_l),
  // then dL/dz_l after the backward pass (kept for parameter gradients).
  std::vector<std::vector<T>> h(L + 1), d(L + 1);
  for (std::size_t l = 1; l <= L; ++l) {
    h[l].resize(B * width[l]);
    d[l].resize(B * width[l]);
  }
  std::size_t max_width = *std::max_element(width.begin(), width.end());

  const std::size_t n_chunks = resolve_threads(opt.num_threads, B);
  std::vector<ChunkStats> cs(n_chunks);
  const std::size_t total_work = 2 * L;

  std::optional<blas::SingleThreadScope> single_blas;
  if (n_chunks > 1) single_blas.emplace();  // each worker runs single-threaded BLAS
  run_chunks(n_chunks, ctl, [&](std::size_t c) {
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

    // Forward.
    for (std::size_t l = 1; l <= L; ++l) {
      const DenseLayer<T>& layer = layers[l - 1];
      const T* hin = (l == 1) ? io.x + b0 * width[0] : h[l - 1].data() + b0 * width[l - 1];
      T* z = h[l].data() + b0 * width[l];
      T* dz = d[l].data() + b0 * width[l];
      const std::size_t n_out = width[l];
      T beta = 0;
      if (layer.bias) {
        for (std::size_t b = 0; b < nb; ++b) std::copy(layer.bias, layer.bias + n_out, z + b * n_out);
        beta = 1;
      }
      blas::gemm(blas::Op::N, blas::Op::T, nb, n_out, width[l - 1], T(1), hin, width[l - 1],
                 layer.weight, layer.in, beta, z, n_out);
      activation_forward(layer.act, z, z, dz, nb * n_out);
      const T sat_level = static_cast<T>(opt.saturation_threshold * layer.act.max_derivative());
      double s = 0, s2 = 0, ns = 0;
      for (std::size_t i = 0; i < nb * n_out; ++i) {
        const double v = z[i];
        s += v;
        s2 += v * v;
        ns += (std::abs(dz[i]) < sat_level) ? 1.0 : 0.0;
      }
      st.sum[l - 1] = s;
      st.sumsq[l - 1] = s2;
      st.saturated[l - 1] = ns;
      if (primary) ctl.tick(l, total_work);
      else ctl.poll();
    }

    // Backward. g holds dL/dh_l (stored * 2^scale); two ping-pong buffers.
    std::vector<T> ga(nb * max_width), gb(nb * max_width);
    T* g = ga.data();
    T* gnext = gb.data();
    const std::size_t nL = width[L];
    const T* yL = h[L].data() + b0 * nL;
    if (io.cotangent) std::copy(io.cotangent + b0 * nL, io.cotangent + b1 * nL, g);
    else std::copy(yL, yL + nb * nL, g);
    int scale = 0;
    int pending = rescale_exponent<T>(sum_squares(g, nb * nL));
    for (std::size_t l = L; l >= 1; --l) {
      const std::size_t n_out = width[l];
      T* dz = d[l].data() + b0 * n_out;
      const T f = pow2<T>(pending);
      double s2 = 0;
      for (std::size_t i = 0; i < nb * n_out; ++i) {
        const T gi = g[i];
        s2 += static_cast<double>(gi) * static_cast<double>(gi);
        dz[i] = gi * dz[i] * f;
      }
      if (!io.grads.empty() && io.grads[l]) {
        const T inv = pow2<T>(-scale);
        T* out = io.grads[l] + b0 * n_out;
        for (std::size_t i = 0; i < nb * n_out; ++i) out[i] = g[i] * inv;
      }
      st.grad_sumsq[l] = s2;
      st.grad_scale[l] = scale;
      scale += pending;
      st.gz_scale[l - 1] = scale;
      pending = rescale_exponent<T>(s2);
      // dL/dh_{l-1} = dL/dz_l W_l
      blas::gemm(blas::Op::N, blas::Op::N, nb, width[l - 1], n_out, T(1), dz, n_out,
                 layers[l - 1].weight, layers[l - 1].in, T(0), gnext, width[l - 1]);
      std::swap(g, gnext);
      if (primary) ctl.tick(2 * L - l + 1, total_work);
      else ctl.poll();
    }
    st.grad_sumsq[0] = sum_squares(g, nb * width[0]);
    st.grad_scale[0] = scale;
    if (!io.grads.empty() && io.grads[0]) {
      const T inv = pow2<T>(-scale);
      T* out = io.grads[0] + b0 * width[0];
      for (std::size_t i = 0; i < nb * width[0]; ++i) out[i] = g[i] * inv;
    }
    if (io.y) std::copy(yL, yL + nb * nL, io.y + b0 * nL);
  });
  single_blas.reset();

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
  for (std::size_t l = 0; l < L; ++l) {
    double s = 0, s2 = 0, ns = 0;
    for (auto& st : cs) {
      s += st.sum[l];
      s2 += st.sumsq[l];
      ns += st.saturated[l];
    }
    const double n = static_cast<double>(B * width[l + 1]);
    const double mean = n > 0 ? s / n : NAN;
    out.act_mean[l] = mean;
    out.act_std[l] = n > 0 ? std::sqrt(std::max(0.0, s2 / n - mean * mean)) : NAN;
    out.saturation[l] = n > 0 ? ns / n : NAN;
  }

  if (opt.param_grads) {
    // dW_l = dz_l^T h_{l-1}, db_l = colsum(dz_l), over the whole batch. Chunks may hold
    // dz at different scales: bring them to the smallest (least amplified) one first.
    out.log_param_grad_norms.resize(2 * L);
    std::vector<T> dw(max_width * max_width);
    for (std::size_t l = 1; l <= L; ++l) {
      ctl.tick(2 * L, total_work);
      const std::size_t n_out = width[l], n_in = width[l - 1];
      int ref = cs[0].gz_scale[l - 1];
      for (auto& st : cs) ref = std::min(ref, st.gz_scale[l - 1]);
      for (std::size_t c = 0; c < n_chunks; ++c) {
        const auto [b0, b1] = split_range(B, n_chunks, c);
        scale_pow2(d[l].data() + b0 * n_out, (b1 - b0) * n_out, ref - cs[c].gz_scale[l - 1]);
      }
      const T* hin = (l == 1) ? io.x : h[l - 1].data();
      dw.resize(n_out * n_in);
      blas::gemm(blas::Op::T, blas::Op::N, n_out, n_in, B, T(1), d[l].data(), n_out, hin, n_in,
                 T(0), dw.data(), n_in);
      out.log_param_grad_norms[2 * (l - 1)] = log_norm(sum_squares(dw.data(), n_out * n_in), ref);
      if (layers[l - 1].bias) {
        std::vector<double> db(n_out, 0.0);
        for (std::size_t b = 0; b < B; ++b)
          for (std::size_t j = 0; j < n_out; ++j) db[j] += d[l][b * n_out + j];
        out.log_param_grad_norms[2 * (l - 1) + 1] = log_norm(sum_squares(db.data(), n_out), ref);
      } else {
        out.log_param_grad_norms[2 * (l - 1) + 1] = -std::numeric_limits<double>::infinity();
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

// Per-step Jacobian spectra: a forward pass that keeps the states of the selected steps, then
// one task per (step, sample), run on a pool of workers (each with single-threaded BLAS).
#include "vgcore/spectrum.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <complex>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>

#include "vgcore/blas.hpp"
#include "vgcore/householder.hpp"
#include "vgcore/lapack.hpp"
#include "vgcore/parallel_rows.hpp"

namespace vgcore {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

template <class T>
double dot_d(const T* a, const T* b, std::size_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += static_cast<double>(a[i + j]) * static_cast<double>(b[i + j]);
  double s = 0;
  for (; i < n; ++i) s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  for (int j = 0; j < 8; ++j) s += acc[j];
  return s;
}

template <class T>
void random_rows(T* v, std::size_t rows, std::size_t n, std::mt19937_64& rng) {
  std::normal_distribution<double> nd;
  for (std::size_t i = 0; i < rows * n; ++i) v[i] = static_cast<T>(nd(rng));
}

// Eigenvector y (complex, length s = 1 or 2) of the leading s x s block of a quasi-triangular
// S (column-major, ld) for its eigenvalue lambda.
void leading_eigvec(const double* S, std::size_t ld, std::size_t s, std::complex<double> lambda,
                    std::complex<double>* y) {
  if (s == 1) {
    y[0] = 1.0;
    return;
  }
  const double a = S[0], c = S[1], b = S[ld];  // [[a, b], [c, d]]
  // (a - lambda) y0 + b y1 = 0
  if (std::abs(b) >= std::abs(c)) {
    y[0] = b;
    y[1] = lambda - a;
  } else {  // c y0 + (d - lambda) y1 = 0
    const double d = S[ld + 1];
    y[0] = lambda - d;
    y[1] = c;
  }
}

// Krylov-Schur for the eigenvalue of largest modulus of y = A x (n-vectors, rows).
template <class T, class Apply>
KrylovResult krylov_schur(std::size_t n, Apply&& apply, const SpectrumOptions& o,
                          std::mt19937_64& rng) {
  KrylovResult res;
  const std::size_t m = std::max<std::size_t>(1, std::min(o.ncv, n));
  const std::size_t keep = m <= 2 ? 1 : std::max<std::size_t>(1, std::min(m - 2, m / 2));
  std::vector<T> V((m + 1) * n), w(n);
  std::vector<double> H((m + 1) * m, 0.0), h(m + 1), S, Z, wr(m), wi(m), Zt;
  std::vector<T> Vn, ZtT;
  std::vector<int> select(m);
  random_rows(V.data(), 1, n, rng);
  {
    const double nrm = std::sqrt(dot_d(V.data(), V.data(), n));
    for (std::size_t i = 0; i < n; ++i) V[i] = static_cast<T>(V[i] / nrm);
  }
  const std::size_t ldh = m + 1;
  std::size_t p = 0;
  while (true) {
    // Expand the Arnoldi decomposition from p to m vectors (CGS with one reorthogonalisation).
    std::size_t mm = m;
    double beta = 0;
    bool invariant = false;
    for (std::size_t j = p; j < m; ++j) {
      T* vj = V.data() + j * n;
      T* wv = V.data() + (j + 1) * n;
      apply(vj, wv);
      ++res.matvecs;
      const double wnorm0 = std::sqrt(dot_d(wv, wv, n));
      for (std::size_t i = 0; i <= j; ++i) h[i] = 0;
      for (int pass = 0; pass < 2; ++pass)
        for (std::size_t i = 0; i <= j; ++i) {
          const T* vi = V.data() + i * n;
          const double c = dot_d(vi, wv, n);
          h[i] += c;
          const T ct = static_cast<T>(c);
          for (std::size_t q = 0; q < n; ++q) wv[q] -= ct * vi[q];
        }
      beta = std::sqrt(dot_d(wv, wv, n));
      for (std::size_t i = 0; i <= j; ++i) H[j * ldh + i] = h[i];
      H[j * ldh + j + 1] = beta;
      const double scale = std::max(wnorm0, 1e-300);
      if (beta <= 1e-12 * scale || j + 1 == n) {  // an invariant subspace: exact Ritz values
        invariant = true;
        mm = j + 1;
        beta = 0;
        break;
      }
      for (std::size_t q = 0; q < n; ++q) wv[q] = static_cast<T>(wv[q] / beta);
    }
    // Real Schur form of H_mm, wanted (largest |lambda|) eigenvalues moved to the top.
    S.assign(mm * mm, 0.0);
    for (std::size_t c = 0; c < mm; ++c)
      for (std::size_t r = 0; r < mm; ++r) S[c * mm + r] = H[c * ldh + r];
    Z.assign(mm * mm, 0.0);
    const int imm = static_cast<int>(mm);
    lapack::gees(imm, S.data(), imm, wr.data(), wi.data(), Z.data(), imm);
    std::vector<double> mod(mm);
    for (std::size_t i = 0; i < mm; ++i) mod[i] = std::hypot(wr[i], wi[i]);
    std::vector<double> sorted(mod);
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    const std::size_t want = std::min(keep, mm);
    // Move the eigenvalues of modulus >= thr to the top of the Schur form. trsen keeps the
    // relative order of the ones it moves, so the dominant one is moved first on its own: the
    // second pass then leaves it in the leading position (a 2 x 2 block for a complex pair).
    auto move_up = [&](double thr) {
      for (std::size_t i = 0; i < mm; ++i) select[i] = std::hypot(wr[i], wi[i]) >= thr ? 1 : 0;
      return lapack::trsen(imm, S.data(), imm, Z.data(), imm, select.data(), wr.data(), wi.data());
    };
    int sdim = move_up(sorted[0] * (1 - 1e-14));
    if (sdim < 0) throw std::runtime_error("Krylov-Schur: the Schur form could not be reordered");
    if (want > static_cast<std::size_t>(sdim)) {
      const int s2 = move_up(sorted[want - 1] * (1 - 1e-14));
      if (s2 >= 0) sdim = s2;  // too ill-conditioned to move the cluster: keep the top only
    }
    const std::size_t s = (mm > 1 && S[1] != 0.0) ? 2 : 1;
    const std::complex<double> lambda(wr[0], wi[0]);
    res.re = wr[0];
    res.im = wi[0];
    res.value = std::abs(lambda);
    // Residual of the leading Ritz pair: A x - lambda x = v_{mm} (b^T y), b = beta * Z[mm-1, :].
    std::complex<double> y[2];
    leading_eigvec(S.data(), mm, s, lambda, y);
    std::complex<double> by = 0;
    double ny = 0;
    for (std::size_t i = 0; i < s; ++i) {
      by += beta * Z[i * mm + mm - 1] * y[i];
      ny += std::norm(y[i]);
    }
    res.residual = res.value > 0 ? std::abs(by) / (res.value * std::sqrt(ny)) : (std::abs(by) == 0 ? 0.0 : 1.0);
    if (invariant || res.residual <= o.tol) {
      res.converged = true;
      return res;
    }
    if (res.matvecs >= static_cast<std::int64_t>(o.max_iter)) return res;
    // Restart: keep the sdim leading Schur vectors, the residual vector follows them.
    std::size_t np = static_cast<std::size_t>(sdim);
    if (np == 0 || np >= mm) np = std::min<std::size_t>(s, mm - 1);
    if (np == 0) np = 1;
    ZtT.resize(np * mm);
    for (std::size_t i = 0; i < np; ++i)
      for (std::size_t l = 0; l < mm; ++l) ZtT[i * mm + l] = static_cast<T>(Z[i * mm + l]);
    Vn.resize(np * n);
    blas::gemm(blas::Op::N, blas::Op::N, np, n, mm, T(1), ZtT.data(), mm, V.data(), n, T(0), Vn.data(), n);
    std::copy(V.data() + mm * n, V.data() + (mm + 1) * n, V.data() + np * n);
    std::copy(Vn.begin(), Vn.end(), V.begin());
    std::fill(H.begin(), H.end(), 0.0);
    for (std::size_t c = 0; c < np; ++c) {
      for (std::size_t r = 0; r < np; ++r) H[c * ldh + r] = S[c * mm + r];
      H[c * ldh + np] = beta * Z[c * mm + mm - 1];
    }
    p = np;
  }
}

// Block power iteration with Rayleigh-Ritz on a block of s vectors.
template <class T, class ApplyBlock>
KrylovResult block_power(std::size_t n, ApplyBlock&& apply, const SpectrumOptions& o,
                         std::mt19937_64& rng) {
  KrylovResult res;
  const std::size_t s = std::max<std::size_t>(1, std::min(o.block, n));
  std::vector<T> V(s * n), W(s * n), tau(s);
  std::vector<double> rd(s), Hm(s * s), wr(s), wi(s), vr(s * s);
  random_rows(V.data(), s, n, rng);
  householder::qr_replace_by_q(V.data(), n, s, n, rd.data(), tau.data());
  std::vector<std::complex<double>> x(n), ax(n);
  while (true) {
    apply(V.data(), W.data(), s);
    res.matvecs += static_cast<std::int64_t>(s);
    for (std::size_t i = 0; i < s; ++i)
      for (std::size_t j = 0; j < s; ++j) Hm[j * s + i] = dot_d(V.data() + i * n, W.data() + j * n, n);
    const int is = static_cast<int>(s);
    lapack::geev_right(is, Hm.data(), is, wr.data(), wi.data(), vr.data(), is);
    std::size_t top = 0;
    for (std::size_t i = 1; i < s; ++i)
      if (std::hypot(wr[i], wi[i]) > std::hypot(wr[top], wi[top])) top = i;
    const std::complex<double> lambda(wr[top], wi[top]);
    res.re = wr[top];
    res.im = wi[top];
    res.value = std::abs(lambda);
    // Ritz vector y (LAPACK packs a conjugate pair as re / im columns).
    std::vector<std::complex<double>> y(s);
    if (wi[top] == 0.0) {
      for (std::size_t i = 0; i < s; ++i) y[i] = vr[top * s + i];
    } else {
      const std::size_t c0 = (top + 1 < s && wi[top] > 0) ? top : top - 1;
      const double sign = wi[top] > 0 ? 1.0 : -1.0;
      for (std::size_t i = 0; i < s; ++i) y[i] = {vr[c0 * s + i], sign * vr[(c0 + 1) * s + i]};
    }
    double rr = 0, xx = 0;
    for (std::size_t q = 0; q < n; ++q) {
      std::complex<double> xv = 0, av = 0;
      for (std::size_t i = 0; i < s; ++i) {
        xv += y[i] * static_cast<double>(V[i * n + q]);
        av += y[i] * static_cast<double>(W[i * n + q]);
      }
      rr += std::norm(av - lambda * xv);
      xx += std::norm(xv);
    }
    res.residual = res.value > 0 && xx > 0 ? std::sqrt(rr / xx) / res.value : (rr == 0 ? 0.0 : 1.0);
    if (res.residual <= o.tol || res.value == 0) {
      res.converged = true;
      return res;
    }
    if (res.matvecs >= static_cast<std::int64_t>(o.max_iter)) return res;
    V.swap(W);
    if (!householder::qr_replace_by_q(V.data(), n, s, n, rd.data(), tau.data())) return res;
  }
}

}  // namespace

template <class T>
SpectrumResult jacobian_spectrum(const TangentModel<T>& m, const T* x, std::size_t steps,
                                 std::size_t batch, const T* h0,
                                 const std::vector<std::size_t>& which,
                                 const SpectrumOptions& opt, Control& ctl) {
  const bool dense = m.is_dense();
  if (dense) steps = m.n_layers();
  if (steps == 0) throw std::invalid_argument("x must have at least one time step, got T = 0");
  if (batch == 0) throw std::invalid_argument("the batch is empty");
  const std::size_t B = batch, n_sel = which.size();
  for (std::size_t i = 0; i < n_sel; ++i)
    if (which[i] >= steps || (i > 0 && which[i] <= which[i - 1]))
      throw std::invalid_argument("which must hold ascending step indices below " + std::to_string(steps));
  SpectrumResult res;
  res.radius.assign(n_sel * B, kNaN);
  res.sigma.assign(n_sel * B, kNaN);
  res.radius_residual.assign(n_sel * B, 0.0);
  res.sigma_residual.assign(n_sel * B, 0.0);
  res.radius_iterations.assign(n_sel * B, 0);
  res.sigma_iterations.assign(n_sel * B, 0);
  res.converged.assign(n_sel * B, 1);
  if (n_sel == 0) return res;

  const std::size_t GN = m.proj_cols(), I = dense ? 0 : m.input_size();
  const int budget = static_cast<int>(resolve_threads(opt.num_threads, 1 << 20));
  blas::BlasThreadsScope whole_call(budget);
  // (1) Forward up to the last selected step, keeping h_s (and the input projection) there.
  std::vector<std::vector<T>> saved(n_sel), saved_proj(n_sel);
  for (std::size_t i = 0; i < n_sel; ++i) {
    saved[i].resize(B * m.in_dim(which[i]));
    if (!dense) saved_proj[i].resize(B * GN);
  }
  const std::size_t last = which.back() + 1;
  const std::size_t n_fwd = resolve_threads(opt.num_threads, B);
  std::size_t max_w = m.in_dim(0);
  for (std::size_t s = 0; s < last; ++s) max_w = std::max(max_w, m.out_dim(s));
  struct Fwd {
    std::vector<T> X, Y;
    StepScratch<T> ws;
    std::size_t sel = 0;
  };
  std::vector<Fwd> fw(n_fwd);
  for (std::size_t ci = 0; ci < n_fwd; ++ci) {
    const auto [b0, b1] = split_range(B, n_fwd, ci);
    fw[ci].X.assign((b1 - b0) * max_w, T(0));
    fw[ci].Y.assign((b1 - b0) * max_w, T(0));
    if (dense) std::copy(x + b0 * m.in_dim(0), x + b1 * m.in_dim(0), fw[ci].X.data());
    else if (h0) std::copy(h0 + b0 * m.in_dim(0), h0 + b1 * m.in_dim(0), fw[ci].X.data());
  }
  const std::size_t total_work = last + n_sel * B;
  {
    const std::size_t per_step = std::max<std::size_t>(1, B * GN);
    const std::size_t sub = dense ? last : projection_block_steps(last, per_step);
    std::vector<T> P(dense ? 0 : sub * B * GN);
    for (std::size_t t0 = 0; t0 < last; t0 += sub) {
      const std::size_t tn = std::min(sub, last - t0);
      if (!dense)  // on our own workers (parallel_rows.hpp)
        parallel_rows(opt.num_threads, tn * B, 64, ctl, [&](std::size_t r0, std::size_t r1) {
          m.project_inputs(x + (t0 * B + r0) * I, r1 - r0, P.data() + r0 * GN);
        });
      blas::BlasThreadsScope chunk_threads(
          n_fwd > 1 ? 1 : blas::step_threads(B, max_w, std::max(max_w, GN), budget));
      run_chunks(n_fwd, ctl, [&](std::size_t ci) {
        const auto [b0, b1] = split_range(B, n_fwd, ci);
        const std::size_t nb = b1 - b0;
        Fwd& f = fw[ci];
        for (std::size_t t = 0; t < tn; ++t) {
          const std::size_t gs = t0 + t, s = dense ? gs : 0;
          const std::size_t din = m.in_dim(s), dout = m.out_dim(s);
          const T* proj = dense ? nullptr : P.data() + (t * B + b0) * GN;
          if (f.sel < n_sel && which[f.sel] == gs) {
            std::copy(f.X.data(), f.X.data() + nb * din, saved[f.sel].data() + b0 * din);
            if (!dense) std::copy(proj, proj + nb * GN, saved_proj[f.sel].data() + b0 * GN);
            ++f.sel;
          }
          advance(m, s, proj, f.X.data(), f.Y.data(), nb, 0, f.ws);
          if (!all_finite(f.Y.data(), nb * dout))
            throw NonFiniteError(gs + 1, "the state became NaN/Inf at step " + std::to_string(gs + 1));
          std::swap(f.X, f.Y);
          if (ci == 0) ctl.tick(gs + 1, total_work);
          else ctl.poll();
        }
      });
    }
  }

  // (2) One task per (selected step, sample).
  const std::size_t n_tasks = n_sel * B;
  const std::size_t n_workers = resolve_threads(opt.num_threads, n_tasks);
  std::atomic<std::size_t> next{0}, done{0};
  // One task at a time on one worker: LAPACK on a big Jacobian can use the whole budget.
  blas::BlasThreadsScope worker_threads(
      n_workers > 1 ? 1 : blas::step_threads(max_w, max_w, max_w, budget));
  run_chunks(n_workers, ctl, [&](std::size_t wi) {
    std::vector<T> cache, U, ybuf, J, J2, tmp, tmp2;
    std::vector<T> wr, wim, sv;
    while (true) {
      const std::size_t task = next.fetch_add(1);
      if (task >= n_tasks) break;
      const std::size_t i = task / B, b = task % B, s = dense ? which[i] : 0;
      const std::size_t din = m.in_dim(s), dout = m.out_dim(s), gc = m.gemm_cols(s);
      cache.resize(m.cache_size(s));
      U.resize(std::max(din, std::max(dout, opt.block)) * gc);
      ybuf.resize(dout);
      const T* h = saved[i].data() + b * din;
      m.gemm_rows(s, h, din, 1, U.data(), gc);
      m.state_update(s, dense ? nullptr : saved_proj[i].data() + b * GN, U.data(), gc, h, din,
                     ybuf.data(), dout, cache.data(), 1);
      const std::size_t o = i * B + b;
      if (opt.method == SpectrumMethod::exact) {
        J.resize(din * dout);
        m.jacobian(s, cache.data(), J.data(), U.data());
        J2 = J;
        if (din == dout) {
          wr.resize(din);
          wim.resize(din);
          lapack::geev_values(static_cast<int>(din), J.data(), static_cast<int>(dout), wr.data(), wim.data());
          double rho = 0;
          for (std::size_t q = 0; q < din; ++q)
            rho = std::max(rho, std::hypot(static_cast<double>(wr[q]), static_cast<double>(wim[q])));
          res.radius[o] = rho;
        }
        sv.resize(std::min(din, dout));
        lapack::gesdd_values(static_cast<int>(dout), static_cast<int>(din), J2.data(), static_cast<int>(dout), sv.data());
        res.sigma[o] = sv.empty() ? 0.0 : static_cast<double>(sv[0]);
      } else {
        std::mt19937_64 rng(opt.seed * 0x9E3779B97F4A7C15ull + task);
        tmp.resize(std::max(din, dout) * std::max<std::size_t>(opt.block, 1));
        tmp2.resize(tmp.size());
        const T* c = cache.data();
        // J^T J (din) or J J^T (dout), whichever is smaller.
        const bool gram_in = din <= dout;
        const std::size_t ng = gram_in ? din : dout;
        auto gram = [&](const T* v, T* out, std::size_t k) {
          if (gram_in) {
            m.jvp(s, c, v, tmp.data(), k, U.data());
            m.vjp(s, c, tmp.data(), out, k, U.data());
          } else {
            m.vjp(s, c, v, tmp.data(), k, U.data());
            m.jvp(s, c, tmp.data(), out, k, U.data());
          }
        };
        KrylovResult kr, ks;
        if (opt.method == SpectrumMethod::arnoldi) {
          if (din == dout)
            kr = krylov_schur<T>(din, [&](const T* v, T* out) { m.jvp(s, c, v, out, 1, U.data()); }, opt, rng);
          ks = krylov_schur<T>(ng, [&](const T* v, T* out) { gram(v, out, 1); }, opt, rng);
        } else {
          if (din == dout)
            kr = block_power<T>(din, [&](const T* v, T* out, std::size_t k) { m.jvp(s, c, v, out, k, U.data()); }, opt, rng);
          ks = block_power<T>(ng, gram, opt, rng);
        }
        if (din == dout) {
          res.radius[o] = kr.value;
          res.radius_residual[o] = kr.residual;
          res.radius_iterations[o] = kr.matvecs;
        }
        res.sigma[o] = std::sqrt(ks.value);
        res.sigma_residual[o] = ks.residual;
        res.sigma_iterations[o] = ks.matvecs;
        res.converged[o] = (din != dout || kr.converged) && ks.converged ? 1 : 0;
      }
      const std::size_t d = done.fetch_add(1) + 1;
      if (wi == 0) ctl.tick(last + d, total_work);
      else ctl.poll();
    }
  });
  // The last task may finish on a helper thread: report completion from the caller's thread.
  ctl.tick(total_work, total_work);
  return res;
}

template SpectrumResult jacobian_spectrum<float>(const TangentModel<float>&, const float*,
                                                 std::size_t, std::size_t, const float*,
                                                 const std::vector<std::size_t>&,
                                                 const SpectrumOptions&, Control&);
template SpectrumResult jacobian_spectrum<double>(const TangentModel<double>&, const double*,
                                                  std::size_t, std::size_t, const double*,
                                                  const std::vector<std::size_t>&,
                                                  const SpectrumOptions&, Control&);

}  // namespace vgcore

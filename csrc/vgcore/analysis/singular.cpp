// Log singular values of long Jacobian products via a graded UDT decomposition (singular.hpp).
#include "vgcore/analysis/singular.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

#include "vgcore/base/blas.hpp"
#include "vgcore/base/helper_thread.hpp"
#include "vgcore/base/lanes.hpp"
#include "vgcore/base/lapack.hpp"
#include "vgcore/base/parallel_rows.hpp"

namespace vgcore {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// One sample's graded factorisation M = U diag(e^d) T (U lives in the tangent rows).
struct Graded {
  std::vector<double> d;  // r
  std::vector<double> T;  // r x n0, row-major
};

// One pending update T <- Rt (P^T T) of a sample's triangular factor.
struct TUpdate {
  std::vector<double> Rt;         // kk x r, row-major, upper trapezoidal
  std::vector<std::size_t> perm;  // r
  std::size_t kk = 0, r = 0;
};

// T <- Rt (P^T T): Rt is upper triangular (a triangular multiply, half a GEMM's work) unless
// the rank drops (kk < r: upper trapezoidal). Tp: scratch.
void apply_t_update(const TUpdate& u, std::vector<double>& Tm, std::size_t n0,
                    std::vector<double>& Tp) {
  Tp.resize(u.r * n0);
  for (std::size_t j = 0; j < u.r; ++j)
    std::copy(Tm.data() + u.perm[j] * n0, Tm.data() + (u.perm[j] + 1) * n0, Tp.data() + j * n0);
  if (u.kk == u.r) {
    blas::trmm_upper_left(u.r, n0, u.Rt.data(), u.r, Tp.data(), n0);
    Tm.swap(Tp);
  } else {
    Tm.resize(u.kk * n0);
    blas::gemm(blas::Op::N, blas::Op::N, u.kk, n0, u.r, 1.0, u.Rt.data(), u.r, Tp.data(), n0, 0.0,
               Tm.data(), n0);
  }
}

// Runs the T updates of one sample in order, each overlapping the next step's JVP and QR on a
// helper thread (helper_thread.hpp). The caller takes a posted update back and runs it itself
// when the helper has not started it by the time the next one is due (its core is busy: the
// thread trap), so a busy machine costs at most the hand-off. The arithmetic is the same
// whoever runs it. The helper sleeps between updates and the caller blocks when it waits (a
// step is long next to a wake-up).
class TUpdater {
 public:
  TUpdater(std::vector<double>& Tm, std::size_t n0, bool helper) : Tm_(Tm), n0_(n0) {
    if (!helper) return;
    try {
      helper_ = std::make_unique<HelperThread>(0);
    } catch (const std::system_error&) {
      // No helper thread to be had: post() runs the updates here (the same arithmetic).
    }
  }
  TUpdater(const TUpdater&) = delete;
  TUpdater& operator=(const TUpdater&) = delete;

  // Hand over u (swapped out: u comes back holding a spare buffer).
  void post(TUpdate& u) {
    finish();
    if (!helper_) {
      apply_t_update(u, Tm_, n0_, Tp_main_);
      return;
    }
    std::swap(task_, u);
    pending_ = true;
    helper_->offer(
        [](void* c) {
          auto* t = static_cast<TUpdater*>(c);
          apply_t_update(t->task_, t->Tm_, t->n0_, t->Tp_helper_);
        },
        this);
  }
  // The pending update done (by the helper, or here when it has not started).
  void finish() {
    if (!pending_) return;
    pending_ = false;
    if (helper_->claim()) {
      apply_t_update(task_, Tm_, n0_, Tp_main_);
      return;
    }
    if (std::exception_ptr err = helper_->wait(steady_ns(), 0)) std::rethrow_exception(err);
  }

 private:
  std::vector<double>& Tm_;
  const std::size_t n0_;
  std::vector<double> Tp_main_, Tp_helper_;
  TUpdate task_;
  bool pending_ = false;
  std::unique_ptr<HelperThread> helper_;  // last: joined before the buffers above go
};

// Work buffers of one chunk.
template <class T>
struct Work {
  std::vector<T> A, tau;
  std::vector<double> ln, e, dnew;
  TUpdate up;  // filled here, swapped into the TUpdater
};

// C (r rows of length m = the new tangent rows of one sample, i.e. a column-major m x r matrix)
// -> new U rows (kk = min(m, r) of them, written to out), d and T updated.
template <class T>
std::size_t udt_update(const T* C, std::size_t m, std::size_t r, T* out, Graded& g, Work<T>& w,
                       TUpdater& tu) {
  const std::size_t kk = std::min(m, r);
  // Pre-pivoting: descending scaled column norms log||c_j|| + d_j. The order goes to the
  // pending T update directly.
  auto& perm = w.up.perm;
  w.ln.resize(r);
  for (std::size_t j = 0; j < r; ++j) {
    const double s2 = sum_squares(C + j * m, m);
    w.ln[j] = (s2 > 0 && g.d[j] != kNegInf) ? 0.5 * std::log(s2) + g.d[j] : kNegInf;
  }
  perm.resize(r);
  std::iota(perm.begin(), perm.end(), std::size_t{0});
  std::stable_sort(perm.begin(), perm.end(),
                   [&](std::size_t a, std::size_t b) { return w.ln[a] > w.ln[b]; });
  w.A.resize(m * r);
  for (std::size_t j = 0; j < r; ++j)
    std::copy(C + perm[j] * m, C + (perm[j] + 1) * m, w.A.data() + j * m);
  w.tau.resize(kk);
  lapack::geqrf(static_cast<int>(m), static_cast<int>(r), w.A.data(), static_cast<int>(m),
                w.tau.data());
  // Rt = |diag R|^{-1} R scaled by e^{d_p(j) - d_p(i)}: graded, entries of modest size.
  w.up.Rt.assign(kk * r, 0.0);
  w.dnew.resize(kk);
  // The scale factors from one exp per column where the scales span less than 600 (e-folds)
  // and every one is finite: e^{d_j - d_i} = e_j / e_i with e_j = e^{d_j - max d}.
  w.e.resize(r);
  double dmax = kNegInf, dmin = -kNegInf;
  for (std::size_t j = 0; j < r; ++j) {
    w.e[j] = g.d[perm[j]];
    dmax = std::max(dmax, w.e[j]);
    dmin = std::min(dmin, w.e[j]);
  }
  const bool by_ratio = dmin != kNegInf && dmax - dmin < 600.0;
  if (by_ratio)
    for (std::size_t j = 0; j < r; ++j) w.e[j] = std::exp(w.e[j] - dmax);
  for (std::size_t i = 0; i < kk; ++i) {
    const double rii = static_cast<double>(w.A[i * m + i]);
    const double dpi = g.d[perm[i]];
    if (rii == 0.0 || dpi == kNegInf) {
      w.dnew[i] = kNegInf;  // a zero singular direction: its row of T is 0
      continue;
    }
    const double lr = std::log(std::fabs(rii));
    w.dnew[i] = lr + dpi;
    double* row = w.up.Rt.data() + i * r;
    if (by_ratio) {
      const double inv_r = 1.0 / std::fabs(rii), inv_e = 1.0 / w.e[i];  // inv_e <= e^600
      for (std::size_t j = i; j < r; ++j)
        row[j] = (static_cast<double>(w.A[j * m + i]) * inv_r) * (w.e[j] * inv_e);
      continue;
    }
    for (std::size_t j = i; j < r; ++j) {
      const double rij = static_cast<double>(w.A[j * m + i]);
      const double dpj = g.d[perm[j]];
      if (rij == 0.0 || dpj == kNegInf) continue;
      const double delta = dpj - dpi;
      if (std::fabs(delta) < 600.0) {
        row[j] = rij / std::fabs(rii) * std::exp(delta);
      } else {  // scale factors beyond double range: combine in logs
        const double lv = std::log(std::fabs(rij)) - lr + delta;
        row[j] = std::copysign(std::exp(lv), rij);
      }
    }
  }
  // The T update goes first (it may run on the helper while Q is formed here).
  w.up.kk = kk;
  w.up.r = r;
  tu.post(w.up);
  lapack::orgqr(static_cast<int>(m), static_cast<int>(kk), static_cast<int>(kk), w.A.data(),
                static_cast<int>(m), w.tau.data());
  std::copy(w.A.data(), w.A.data() + m * kk, out);
  g.d.swap(w.dnew);
  return kk;
}

}  // namespace

int graded_jacobi(double* B, std::size_t n, std::size_t r, double* d) {
  auto renormalise = [&] {
    for (std::size_t j = 0; j < r; ++j) {
      double* b = B + j * n;
      const double nrm = std::sqrt(sum_squares(b, n));
      if (!(nrm > 0) || d[j] == kNegInf) {
        d[j] = kNegInf;
        std::fill(b, b + n, 0.0);
        continue;
      }
      d[j] += std::log(nrm);
      for (std::size_t i = 0; i < n; ++i) b[i] /= nrm;
    }
  };
  renormalise();
  const double tol = std::sqrt(static_cast<double>(n)) * std::numeric_limits<double>::epsilon();
  int sweep = 0;
  for (sweep = 1; sweep <= 80; ++sweep) {
    bool rotated = false;
    for (std::size_t p = 0; p + 1 < r; ++p)
      for (std::size_t q = p + 1; q < r; ++q) {
        if (d[p] == kNegInf || d[q] == kNegInf) continue;
        // a: the column with the larger scale, so that rho = e^{d_b - d_a} <= 1.
        const std::size_t a = d[p] >= d[q] ? p : q, bq = a == p ? q : p;
        double* ba = B + a * n;
        double* bb = B + bq * n;
        const double na = sum_squares(ba, n), nb = sum_squares(bb, n), gab = dot(ba, bb, n);
        if (gab == 0.0 || std::fabs(gab) <= tol * std::sqrt(na * nb)) continue;
        rotated = true;
        const double rho = std::exp(d[bq] - d[a]);
        // Rotation of the scaled columns e^{d_a} b_a, e^{d_b} b_b, written for the unscaled
        // ones: zr = zeta * rho, tr = t / rho, both finite even when rho underflows.
        const double zr = (rho * rho * nb - na) / (2.0 * gab);
        const double tr = (zr >= 0 ? 1.0 : -1.0) / (std::fabs(zr) + std::sqrt(rho * rho + zr * zr));
        const double t = tr * rho;
        const double c = 1.0 / std::sqrt(1.0 + t * t);
        const double s_rho = c * t * rho, s_over_rho = c * tr;
        for (std::size_t i = 0; i < n; ++i) {
          const double xa = ba[i], xb = bb[i];
          ba[i] = c * xa - s_rho * xb;
          bb[i] = s_over_rho * xa + c * xb;
        }
      }
    renormalise();
    if (!rotated) break;
  }
  return sweep;
}

template <class T>
SingularResult jacobian_log_singular_values(const Model<T>& m, const T* x, std::size_t steps,
                                            std::size_t batch, const T* h0,
                                            const SingularOptions& opt, Control& ctl) {
  const bool dense = m.is_dense();
  if (dense) steps = m.n_layers();
  if (steps == 0) throw std::invalid_argument("x must have at least one time step, got T = 0");
  if (batch == 0) throw std::invalid_argument("the batch is empty");
  const std::size_t B = batch, n0 = m.in_dim(0);
  std::size_t max_w = n0, rank = n0;
  for (std::size_t s = 0; s < steps; ++s) {
    max_w = std::max(max_w, m.out_dim(s));
    rank = std::min(rank, m.out_dim(s));
  }
  const std::size_t GN = m.proj_cols(), I = dense ? 0 : m.input_size();
  const int budget = static_cast<int>(resolve_threads(opt.num_threads, 1 << 20));
  blas::BlasThreadsScope whole_call(budget);
  const std::size_t n_chunks = resolve_threads(opt.num_threads, B);

  struct Chunk {
    std::size_t b0 = 0, nb = 0, r = 0;
    std::vector<T> X, Y;
    StepScratch<T> ws;
    std::vector<Graded> g;
    std::vector<std::unique_ptr<TUpdater>> tu;  // per sample: runs its T updates in order
    Work<T> w;
  };
  const int chunk_blas =
      n_chunks > 1 ? 1 : blas::step_threads(B * (max_w + 1), max_w, max_w, budget);
  // One sample on two or more threads: its T updates overlap the next steps on a helper
  // (single-threaded BLAS on both sides, so the two never contend for OpenBLAS's pool).
  const bool helper = n_chunks == 1 && B == 1 && budget >= 2 && chunk_blas == 1;
  std::vector<Chunk> chunks(n_chunks);
  for (std::size_t ci = 0; ci < n_chunks; ++ci) {
    auto& c = chunks[ci];
    const auto [b0, b1] = split_range(B, n_chunks, ci);
    c.b0 = b0;
    c.nb = b1 - b0;
    c.r = n0;
    c.X.assign(c.nb * (n0 + 1) * max_w, T(0));
    c.Y.assign(c.X.size(), T(0));
    // States, then U_0 = I for every sample.
    if (dense)
      std::copy(x + b0 * n0, x + b1 * n0, c.X.data());
    else if (h0)
      std::copy(h0 + b0 * n0, h0 + b1 * n0, c.X.data());
    c.g.resize(c.nb);
    for (std::size_t b = 0; b < c.nb; ++b) {
      T* U = c.X.data() + (c.nb + b * n0) * n0;
      for (std::size_t j = 0; j < n0; ++j) U[j * n0 + j] = T(1);
      c.g[b].d.assign(n0, 0.0);
      c.g[b].T.assign(n0 * n0, 0.0);
      for (std::size_t j = 0; j < n0; ++j) c.g[b].T[j * n0 + j] = 1.0;
    }
    for (std::size_t b = 0; b < c.nb; ++b)
      c.tu.push_back(std::make_unique<TUpdater>(c.g[b].T, n0, helper));
  }

  const std::size_t per_step = std::max<std::size_t>(1, B * GN);
  const std::size_t sub = dense ? steps : projection_block_steps(steps, per_step);
  std::vector<T> P(dense ? 0 : sub * B * GN);
  for (std::size_t t0 = 0; t0 < steps; t0 += sub) {
    const std::size_t tn = std::min(sub, steps - t0);
    if (!dense)  // on our own workers (parallel_rows.hpp)
      parallel_rows(opt.num_threads, tn * B, 64, ctl, [&](std::size_t r0, std::size_t r1) {
        m.project_inputs(x + (t0 * B + r0) * I, r1 - r0, P.data() + r0 * GN);
      });
    blas::BlasThreadsScope chunk_threads(chunk_blas);
    run_chunks(n_chunks, ctl, [&](std::size_t ci) {
      auto& c = chunks[ci];
      for (std::size_t t = 0; t < tn; ++t) {
        const std::size_t gs = t0 + t, s = dense ? gs : 0;
        const std::size_t dout = m.out_dim(s);
        const T* proj = dense ? nullptr : P.data() + (t * B + c.b0) * GN;
        advance(m, s, proj, c.X.data(), c.Y.data(), c.nb, c.r, c.ws);
        if (!all_finite(c.Y.data(), c.nb * dout))
          throw NonFiniteError(gs + 1,
                               "the state became NaN/Inf at step " + std::to_string(gs + 1));
        std::size_t rn = c.r;
        for (std::size_t b = 0; b < c.nb; ++b) {
          const T* C = c.Y.data() + (c.nb + b * c.r) * dout;
          if (!all_finite(C, c.r * dout))
            throw NonFiniteError(
                gs + 1, "the Jacobian product became NaN/Inf at step " + std::to_string(gs + 1));
          T* out = c.Y.data() + (c.nb + b * std::min(dout, c.r)) * dout;
          rn = udt_update(C, dout, c.r, out, c.g[b], c.w, *c.tu[b]);
        }
        c.r = rn;
        std::swap(c.X, c.Y);
        if (ci == 0)
          ctl.tick(gs + 1, steps);
        else
          ctl.poll();
      }
    });
  }

  SingularResult res;
  const std::size_t r = chunks[0].r;
  res.rank = r;
  res.log_singular.resize(B * r);
  res.jacobi_sweeps.resize(B);
  for (auto& c : chunks)
    for (std::size_t b = 0; b < c.nb; ++b) {
      c.tu[b]->finish();
      Graded& g = c.g[b];
      res.jacobi_sweeps[c.b0 + b] = graded_jacobi(g.T.data(), n0, r, g.d.data());
      std::sort(g.d.begin(), g.d.end(), std::greater<double>());
      std::copy(g.d.begin(), g.d.end(), res.log_singular.begin() + (c.b0 + b) * r);
    }
  return res;
}

template SingularResult jacobian_log_singular_values<float>(const Model<float>&, const float*,
                                                            std::size_t, std::size_t, const float*,
                                                            const SingularOptions&, Control&);
template SingularResult jacobian_log_singular_values<double>(const Model<double>&, const double*,
                                                             std::size_t, std::size_t,
                                                             const double*, const SingularOptions&,
                                                             Control&);

}  // namespace vgcore

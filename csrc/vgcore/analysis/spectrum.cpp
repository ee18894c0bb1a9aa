// Per-step Jacobian spectra: a forward pass that keeps the states of the selected steps, then
// one task per (step, sample), run on a pool of workers (each with single-threaded BLAS).
#include "vgcore/analysis/spectrum.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <complex>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>

#include "vgcore/base/blas.hpp"
#include "vgcore/base/householder.hpp"
#include "vgcore/base/lanes.hpp"
#include "vgcore/base/lapack.hpp"
#include "vgcore/base/parallel_rows.hpp"

namespace vgcore {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

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

// v *= 2^e, exactly (in steps that keep the factor a normal number of T).
template <class T>
void scale_exp2(T* v, std::size_t n, int e) {
  constexpr int lim = std::numeric_limits<T>::max_exponent - 2;
  while (e != 0) {
    const int k = std::max(-lim, std::min(lim, e));
    const T f = std::ldexp(T(1), k);
    for (std::size_t i = 0; i < n; ++i) v[i] *= f;
    e -= k;
  }
}

// Binary exponent of the largest magnitude in v (finite values), 0 for a zero vector. (Not of
// the norm: that can overflow double where every entry is finite.)
template <class T>
int max_exponent_of(const T* v, std::size_t n) {
  double amax = 0;
  for (std::size_t q = 0; q < n; ++q) amax = std::max(amax, std::abs(static_cast<double>(v[q])));
  return amax > 0 ? std::ilogb(amax) : 0;
}

// Condition number ||x|| ||y|| / |x^H y| of the eigenvalue of the k x k matrix A (column-major,
// leading dimension ld) nearest lambda, from its left (x) and right (y) eigenvectors; infinite
// when LAPACK fails or the eigenvalue is (numerically) defective.
double eig_condition(const double* A, std::size_t k, std::size_t ld, std::complex<double> lambda) {
  if (k <= 1) return 1.0;
  constexpr double inf = std::numeric_limits<double>::infinity();
  std::vector<double> a(k * k), wr(k), wi(k), vl(k * k), vr(k * k);
  for (std::size_t c = 0; c < k; ++c)
    for (std::size_t r = 0; r < k; ++r) a[c * k + r] = A[c * ld + r];
  const int ik = static_cast<int>(k);
  try {
    lapack::geev_left_right(ik, a.data(), ik, wr.data(), wi.data(), vl.data(), ik, vr.data(), ik);
  } catch (const std::runtime_error&) {
    return inf;
  }
  std::size_t j = 0;
  for (std::size_t i = 1; i < k; ++i)
    if (std::abs(std::complex<double>(wr[i], wi[i]) - lambda) <
        std::abs(std::complex<double>(wr[j], wi[j]) - lambda))
      j = i;
  // LAPACK packs a conjugate pair as (re, im) columns j, j + 1, the first with wi > 0.
  std::size_t c0 = j;
  double sign = 0;
  if (wi[j] > 0) sign = 1;
  if (wi[j] < 0) {
    if (j == 0) return inf;
    c0 = j - 1;
    sign = -1;
  }
  if (sign != 0 && c0 + 1 >= k) return inf;
  std::complex<double> xy = 0;
  double xx = 0, yy = 0;
  for (std::size_t q = 0; q < k; ++q) {
    const std::complex<double> x(vl[c0 * k + q], sign != 0 ? sign * vl[(c0 + 1) * k + q] : 0.0);
    const std::complex<double> y(vr[c0 * k + q], sign != 0 ? sign * vr[(c0 + 1) * k + q] : 0.0);
    xy += std::conj(x) * y;
    xx += std::norm(x);
    yy += std::norm(y);
  }
  const double d = std::abs(xy);
  const double kappa = d > 0 ? std::sqrt(xx * yy) / d : inf;
  return std::isfinite(kappa) ? std::max(1.0, kappa) : inf;
}

// First-order relative error estimate of a Ritz value: cond * max(residual, eps ||A||) / |lambda|
// (the LAPACK Users' Guide bound with the backward error of the Ritz pair). An exact null vector
// (lambda = 0, residual 0) is exact; any other zero Ritz value has no relative accuracy.
double ritz_error(double kappa, double rnorm, double anorm, double value, double eps) {
  if (value > 0) return kappa * std::max(rnorm, eps * anorm) / value;
  return rnorm == 0 ? 0.0 : std::numeric_limits<double>::infinity();
}

// Decides when a Ritz pair whose residual reached tol may stop: when its error estimate does
// too, when rounding (the eps ||A|| term) keeps it above tol, or when it stopped improving.
struct StopRule {
  double best = std::numeric_limits<double>::infinity();
  int stalls = 0;
  bool stop(double err, double kappa, double anorm, double value, double eps, double tol,
            int patience) {
    if (err <= tol || !(value > 0) || kappa * eps * anorm > tol * value) return true;
    if (err < 0.5 * best) {
      best = err;
      stalls = 0;
    } else {
      ++stalls;
    }
    return stalls >= patience;
  }
  // Before the residual reaches tol: give up once the pair is roughly converged (residual
  // below sqrt(tol)) and rounding alone keeps its error estimate above tol (a Ritz value of a
  // Jordan-like matrix would otherwise run to max_iter).
  static bool hopeless(double residual, double kappa, double anorm, double value, double eps,
                       double tol) {
    return residual <= std::sqrt(tol) && kappa * eps * anorm > tol * value;
  }
};

// Krylov-Schur for the eigenvalue of largest modulus of y = A x (n-vectors, rows). anorm(): an
// estimate of ||A|| for the rounding term of the error estimate (<= 0: ||H||_F; symmetric A:
// the Ritz value itself, and cond = 1).
template <class T, class Apply, class Norm>
KrylovResult krylov_schur(std::size_t n, Apply&& apply, const SpectrumOptions& o,
                          std::mt19937_64& rng, Norm&& anorm, bool symmetric) {
  KrylovResult res;
  constexpr double eps = std::numeric_limits<T>::epsilon();
  const std::size_t m = std::max<std::size_t>(1, std::min(o.ncv, n));
  const std::size_t keep = m <= 2 ? 1 : std::max<std::size_t>(1, std::min(m - 2, m / 2));
  std::vector<T> V((m + 1) * n), w(n);
  std::vector<double> H((m + 1) * m, 0.0), h(m + 1), S, Z, Hc, wr(m), wi(m), Zt;
  std::vector<T> Vn, ZtT;
  std::vector<int> select(m);
  random_rows(V.data(), 1, n, rng);
  {
    const double nrm = std::sqrt(dot(V.data(), V.data(), n));
    for (std::size_t i = 0; i < n; ++i) V[i] = static_cast<T>(V[i] / nrm);
  }
  const std::size_t ldh = m + 1;
  std::size_t p = 0;
  StopRule rule;
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
      const double wnorm0 = std::sqrt(dot(wv, wv, n));
      for (std::size_t i = 0; i <= j; ++i) h[i] = 0;
      for (int pass = 0; pass < 2; ++pass)
        for (std::size_t i = 0; i <= j; ++i) {
          const T* vi = V.data() + i * n;
          const double c = dot(vi, wv, n);
          h[i] += c;
          const T ct = static_cast<T>(c);
          for (std::size_t q = 0; q < n; ++q) wv[q] -= ct * vi[q];
        }
      beta = std::sqrt(dot(wv, wv, n));
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
    Hc = S;
    double hnorm = 0;
    for (double v : Hc) hnorm += v * v;
    hnorm = std::sqrt(hnorm);
    Z.assign(mm * mm, 0.0);
    const int imm = static_cast<int>(mm);
    try {
      lapack::gees(imm, S.data(), imm, wr.data(), wi.data(), Z.data(), imm);
    } catch (const std::runtime_error&) {  // QR did not converge: no trustworthy Ritz value
      res.error = std::numeric_limits<double>::infinity();
      res.converged = false;
      return res;
    }
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
    if (sdim < 0) {  // too ill-conditioned to reorder: no trustworthy Ritz value
      res.error = std::numeric_limits<double>::infinity();
      res.converged = false;
      return res;
    }
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
    const double rnorm = std::abs(by) / std::sqrt(ny);
    res.residual = res.value > 0 ? rnorm / res.value : (rnorm == 0 ? 0.0 : 1.0);
    res.converged = invariant || res.residual <= o.tol;
    const double an0 = anorm();
    const double an = symmetric ? res.value : (an0 > 0 ? an0 : hnorm);
    res.condition = symmetric ? 1.0 : eig_condition(Hc.data(), mm, mm, lambda);
    res.error = ritz_error(res.condition, rnorm, an, res.value, eps);
    // An invariant subspace cannot be improved on; otherwise keep restarting while the error
    // estimate (not just the residual) still improves.
    if (invariant || res.matvecs >= static_cast<std::int64_t>(o.max_iter)) return res;
    if (res.converged ? rule.stop(res.error, res.condition, an, res.value, eps, o.tol, 3)
                      : rule.hopeless(res.residual, res.condition, an, res.value, eps, o.tol))
      return res;
    // Restart: keep the sdim leading Schur vectors, the residual vector follows them.
    std::size_t np = static_cast<std::size_t>(sdim);
    if (np == 0 || np >= mm) np = std::min<std::size_t>(s, mm - 1);
    if (np == 0) np = 1;
    ZtT.resize(np * mm);
    for (std::size_t i = 0; i < np; ++i)
      for (std::size_t l = 0; l < mm; ++l) ZtT[i * mm + l] = static_cast<T>(Z[i * mm + l]);
    Vn.resize(np * n);
    blas::gemm(blas::Op::N, blas::Op::N, np, n, mm, T(1), ZtT.data(), mm, V.data(), n, T(0),
               Vn.data(), n);
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
template <class T, class ApplyBlock, class Norm>
KrylovResult block_power(std::size_t n, ApplyBlock&& apply, const SpectrumOptions& o,
                         std::mt19937_64& rng, Norm&& anorm, bool symmetric) {
  KrylovResult res;
  constexpr double eps = std::numeric_limits<T>::epsilon();
  constexpr double inf = std::numeric_limits<double>::infinity();
  const std::size_t s = std::max<std::size_t>(1, std::min(o.block, n));
  std::vector<T> V(s * n), W(s * n), tau(s);
  std::vector<double> rd(s), Hm(s * s), Hc(s * s), wr(s), wi(s), vl(s * s), vr(s * s);
  random_rows(V.data(), s, n, rng);
  householder::qr_replace_by_q(V.data(), n, s, n, rd.data(), tau.data());
  const int is = static_cast<int>(s);
  StopRule rule;
  std::vector<std::complex<double>> y(s), x(s);
  while (true) {
    apply(V.data(), W.data(), s);
    res.matvecs += static_cast<std::int64_t>(s);
    for (std::size_t i = 0; i < s; ++i)
      for (std::size_t j = 0; j < s; ++j)
        Hm[j * s + i] = dot(V.data() + i * n, W.data() + j * n, n);
    Hc = Hm;
    double hnorm = 0;
    for (double v : Hc) hnorm += v * v;
    hnorm = std::sqrt(hnorm);
    try {
      lapack::geev_left_right(is, Hm.data(), is, wr.data(), wi.data(), vl.data(), is, vr.data(),
                              is);
    } catch (const std::runtime_error&) {
      res.error = inf;
      res.converged = false;
      return res;
    }
    std::size_t top = 0;
    for (std::size_t i = 1; i < s; ++i)
      if (std::hypot(wr[i], wi[i]) > std::hypot(wr[top], wi[top])) top = i;
    const std::complex<double> lambda(wr[top], wi[top]);
    res.re = wr[top];
    res.im = wi[top];
    res.value = std::abs(lambda);
    // Ritz vectors (LAPACK packs a conjugate pair as (re, im) columns, the first with wi > 0).
    std::size_t c0 = top;
    double sign = 0;
    if (wi[top] > 0) sign = 1;
    if (wi[top] < 0) {
      sign = -1;
      c0 = top - 1;
    }
    if ((sign < 0 && top == 0) || (sign != 0 && c0 + 1 >= s)) {  // not LAPACK's packing
      res.error = inf;
      res.converged = false;
      return res;
    }
    double xx = 0, yy = 0;
    std::complex<double> xy = 0;
    for (std::size_t i = 0; i < s; ++i) {
      y[i] = {vr[c0 * s + i], sign != 0 ? sign * vr[(c0 + 1) * s + i] : 0.0};
      x[i] = {vl[c0 * s + i], sign != 0 ? sign * vl[(c0 + 1) * s + i] : 0.0};
      xy += std::conj(x[i]) * y[i];
      xx += std::norm(x[i]);
      yy += std::norm(y[i]);
    }
    double rr = 0, zz = 0;
    for (std::size_t q = 0; q < n; ++q) {
      std::complex<double> xv = 0, av = 0;
      for (std::size_t i = 0; i < s; ++i) {
        xv += y[i] * static_cast<double>(V[i * n + q]);
        av += y[i] * static_cast<double>(W[i * n + q]);
      }
      rr += std::norm(av - lambda * xv);
      zz += std::norm(xv);
    }
    const double rnorm = zz > 0 ? std::sqrt(rr / zz) : (rr == 0 ? 0.0 : inf);
    res.residual = res.value > 0 ? rnorm / res.value : (rnorm == 0 ? 0.0 : 1.0);
    res.converged = res.residual <= o.tol;
    const double an0 = anorm();
    const double an = symmetric ? res.value : (an0 > 0 ? an0 : hnorm);
    const double d = std::abs(xy);
    res.condition = symmetric ? 1.0 : (d > 0 ? std::max(1.0, std::sqrt(xx * yy) / d) : inf);
    if (!std::isfinite(res.condition)) res.condition = inf;
    res.error = ritz_error(res.condition, rnorm, an, res.value, eps);
    if (res.matvecs >= static_cast<std::int64_t>(o.max_iter)) return res;
    if (res.converged ? rule.stop(res.error, res.condition, an, res.value, eps, o.tol, 20)
                      : rule.hopeless(res.residual, res.condition, an, res.value, eps, o.tol))
      return res;
    V.swap(W);
    // Columns of very different magnitudes (the dominant direction against ones that have
    // underflowed): bring each to a largest entry in [1, 2) first (the span is unchanged), so
    // the reflectors never divide by a subnormal.
    for (std::size_t j = 0; j < s; ++j)
      scale_exp2(V.data() + j * n, n, -max_exponent_of(V.data() + j * n, n));
    if (!householder::qr_replace_by_q(V.data(), n, s, n, rd.data(), tau.data()) ||
        !all_finite(V.data(), s * n)) {
      if (!res.converged) res.error = inf;  // the block collapsed before any estimate
      return res;
    }
  }
}

// An operator application came out with a non-finite squared norm (in double).
// Or, with up > 0, it came out so small (subnormal range: few significant bits) that its input
// should be scaled up by 2^up.
struct ApplyOverflow : std::runtime_error {
  explicit ApplyOverflow(int stage_, int up_ = 0)
      : std::runtime_error("overflow"), stage(stage_), up(up_) {}
  int stage;  // 0: the first product (of J or J^T), 1: after its scaling, 2: after the second
  int up;
};

// Natural logs of the spectral radius and largest singular value of J_s (column-major,
// dout x din), from LAPACK on a copy scaled to a largest entry in [1, 2). J's entries may lie
// beyond the range of T (the product of a huge weight and an activation slope): it is then
// rebuilt from JVPs of a scaled-down identity (J is linear in the tangent).
template <class T>
void exact_logs(const Model<T>& m, std::size_t s, const T* cache, std::vector<T>& J,
                std::vector<T>& J2, std::vector<T>& U, bool want_radius, bool want_sigma,
                double& log_radius, double& log_sigma, const std::string& where,
                std::size_t step1) {
  const std::size_t din = m.in_dim(s), dout = m.out_dim(s);
  J.resize(din * dout);
  m.jacobian(s, cache, J.data(), U.data());
  int shift = 0;
  if (!all_finite(J.data(), J.size())) {
    shift = std::numeric_limits<T>::max_exponent / 4;
    J2.assign(din * din, T(0));
    for (std::size_t i = 0; i < din; ++i) J2[i * din + i] = std::ldexp(T(1), -shift);
    m.jvp(s, cache, J2.data(), J.data(), din, U.data());  // row i = J e_i: column-major J
    if (!all_finite(J.data(), J.size()))
      throw NonFiniteError(step1, "the Jacobian of " + where + " has NaN/Inf entries");
  }
  double amax = 0;
  for (const T v : J) amax = std::max(amax, std::abs(static_cast<double>(v)));
  if (amax == 0) {
    if (want_radius) log_radius = -std::numeric_limits<double>::infinity();
    if (want_sigma) log_sigma = -std::numeric_limits<double>::infinity();
    return;
  }
  const int e = std::ilogb(amax);
  scale_exp2(J.data(), J.size(), -e);
  shift += e;
  constexpr double ln2 = 0.69314718055994530942;
  try {
    if (want_sigma) {
      J2 = J;
      std::vector<T> sv(std::min(din, dout));
      lapack::gesdd_values(static_cast<int>(dout), static_cast<int>(din), J2.data(),
                           static_cast<int>(dout), sv.data());
      log_sigma = std::log(static_cast<double>(sv[0])) + shift * ln2;
    }
    if (want_radius && din == dout) {
      std::vector<T> wr(din), wi(din);
      lapack::geev_values(static_cast<int>(din), J.data(), static_cast<int>(dout), wr.data(),
                          wi.data());
      double rho = 0;
      for (std::size_t q = 0; q < din; ++q)
        rho = std::max(rho, std::hypot(static_cast<double>(wr[q]), static_cast<double>(wi[q])));
      log_radius = std::log(rho) + shift * ln2;
    }
  } catch (const std::runtime_error& e) {  // did not converge (the input is finite)
    throw std::runtime_error(std::string(e.what()) + " on the Jacobian of " + where);
  }
}

}  // namespace

template <class T>
SpectrumResult jacobian_spectrum(const Model<T>& m, const T* x, std::size_t steps,
                                 std::size_t batch, const T* h0,
                                 const std::vector<std::size_t>& which, const SpectrumOptions& opt,
                                 Control& ctl) {
  const bool dense = m.is_dense();
  if (dense) steps = m.n_layers();
  if (steps == 0) throw std::invalid_argument("x must have at least one time step, got T = 0");
  if (batch == 0) throw std::invalid_argument("the batch is empty");
  const std::size_t B = batch, n_sel = which.size();
  for (std::size_t i = 0; i < n_sel; ++i)
    if (which[i] >= steps || (i > 0 && which[i] <= which[i - 1]))
      throw std::invalid_argument("which must hold ascending step indices below " +
                                  std::to_string(steps));
  SpectrumResult res;
  res.radius.assign(n_sel * B, kNaN);
  res.sigma.assign(n_sel * B, kNaN);
  res.radius_residual.assign(n_sel * B, 0.0);
  res.sigma_residual.assign(n_sel * B, 0.0);
  res.log_radius.assign(n_sel * B, kNaN);
  res.log_sigma.assign(n_sel * B, kNaN);
  res.radius_condition.assign(n_sel * B, kNaN);
  res.radius_error.assign(n_sel * B, kNaN);
  res.sigma_error.assign(n_sel * B, kNaN);
  res.radius_iterations.assign(n_sel * B, 0);
  res.sigma_iterations.assign(n_sel * B, 0);
  res.converged.assign(n_sel * B, 1);
  res.reliable.assign(n_sel * B, 1);
  res.radius_fallback.assign(n_sel * B, 0);
  res.sigma_fallback.assign(n_sel * B, 0);
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
    if (dense)
      std::copy(x + b0 * m.in_dim(0), x + b1 * m.in_dim(0), fw[ci].X.data());
    else if (h0)
      std::copy(h0 + b0 * m.in_dim(0), h0 + b1 * m.in_dim(0), fw[ci].X.data());
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
            throw NonFiniteError(gs + 1,
                                 "the state became NaN/Inf at step " + std::to_string(gs + 1));
          std::swap(f.X, f.Y);
          if (ci == 0)
            ctl.tick(gs + 1, total_work);
          else
            ctl.poll();
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
  constexpr double ln2 = 0.69314718055994530942;
  // Overflow retries shift the inputs of an operator by this many binary orders each.
  constexpr int kShift = std::numeric_limits<T>::max_exponent / 4;
  constexpr int kMaxShift = std::numeric_limits<T>::max_exponent - 8;
  // Outputs whose largest entry is below 2^kMinExp may have lost digits to the subnormal range.
  constexpr int kMinExp = std::numeric_limits<T>::min_exponent + std::numeric_limits<T>::digits;
  run_chunks(n_workers, ctl, [&](std::size_t wi) {
    std::vector<T> cache, U, ybuf, J, J2, tmp, vin;
    while (true) {
      const std::size_t task = next.fetch_add(1);
      if (task >= n_tasks) break;
      const std::size_t i = task / B, b = task % B, s = dense ? which[i] : 0;
      const std::size_t din = m.in_dim(s), dout = m.out_dim(s), gc = m.gemm_cols(s);
      const bool square = din == dout;
      const std::string where = (dense ? "layer " + std::to_string(which[i] + 1) + " (step " +
                                             std::to_string(which[i]) + ")"
                                       : "step " + std::to_string(which[i])) +
                                ", sample " + std::to_string(b);
      cache.resize(m.cache_size(s));
      U.resize(std::max(din, std::max(dout, opt.block)) * gc);
      ybuf.resize(dout);
      const T* h = saved[i].data() + b * din;
      m.gemm_rows(s, h, din, 1, U.data(), gc);
      m.state_update(s, dense ? nullptr : saved_proj[i].data() + b * GN, U.data(), gc, h, din,
                     ybuf.data(), dout, cache.data(), 1);
      const std::size_t o = i * B + b;
      double log_rho = kNaN, log_sig = kNaN;
      if (opt.method == SpectrumMethod::exact) {
        exact_logs(m, s, cache.data(), J, J2, U, square, true, log_rho, log_sig, where,
                   which[i] + 1);
      } else {
        std::mt19937_64 rng(opt.seed * 0x9E3779B97F4A7C15ull + task);
        tmp.resize(std::max(din, dout) * std::max<std::size_t>(opt.block, 1));
        vin.resize(tmp.size());
        const T* c = cache.data();
        // Operators scaled by powers of two (exact). An input is scaled down (2^-ei) only if a
        // product overflowed T (up if the first product fell into the subnormal range); every
        // output is scaled (2^-eo, and 2^-em between the two
        // halves of a Gram operator) by an exponent fixed at the first application, so that
        // the vectors the solvers see are of order one: J^T J v never overflows (sigma_max^2
        // beyond the range of T or of double) nor underflows.
        struct Scale {
          int ei = 0, em = 0, eo = 0, ups = 0;
          bool em_set = false, eo_set = false;
          int total() const { return ei + em + eo; }
        };
        auto scaled_in = [&](const T* v, std::size_t len, int e) -> const T* {
          if (e == 0) return v;
          std::copy(v, v + len, vin.data());
          scale_exp2(vin.data(), len, -e);
          return vin.data();
        };
        // Scales k rows of length n by 2^-e, e set at the first call (largest entry then in
        // [1, 2)); stage: what to adjust when a row comes out non-finite.
        auto scale_out = [&](T* v, std::size_t k, std::size_t n, int& e, bool& set, int stage,
                             int ups) {
          if (!all_finite(v, k * n)) throw ApplyOverflow(stage);
          if (!set) {
            e = max_exponent_of(v, k * n);
            bool zero = true;
            for (std::size_t q = 0; q < k * n && zero; ++q) zero = v[q] == T(0);
            if (!zero && e < kMinExp && ups < 4)  // inputs are of order one: room to scale up
              throw ApplyOverflow(stage, std::min(-e, kMaxShift));
            set = true;
          }
          scale_exp2(v, k * n, -e);
          for (std::size_t j = 0; j < k; ++j)  // the solvers' sums of squares must stay finite
            if (!std::isfinite(dot(v + j * n, v + j * n, n))) throw ApplyOverflow(stage + 1);
        };
        const bool gram_in = din <= dout;  // J^T J (din) or J J^T (dout)
        const std::size_t ng = gram_in ? din : dout, nmid = gram_in ? dout : din;
        Scale sg, sr;
        auto gram = [&](const T* v, T* out, std::size_t k) {
          const T* in = scaled_in(v, k * ng, sg.ei);
          if (gram_in)
            m.jvp(s, c, in, tmp.data(), k, U.data());
          else
            m.vjp(s, c, in, tmp.data(), k, U.data());
          scale_out(tmp.data(), k, nmid, sg.em, sg.em_set, 0, sg.ups);
          if (gram_in)
            m.vjp(s, c, tmp.data(), out, k, U.data());
          else
            m.jvp(s, c, tmp.data(), out, k, U.data());
          scale_out(out, k, ng, sg.eo, sg.eo_set, 1, sg.ups);
        };
        auto jop = [&](const T* v, T* out, std::size_t k) {
          m.jvp(s, c, scaled_in(v, k * din, sr.ei), out, k, U.data());
          scale_out(out, k, dout, sr.eo, sr.eo_set, 0, sr.ups);
        };
        // Runs a solve, redoing it with more scaling while an application overflows: stage 0
        // (the first product) scales the input down, stage 1 the middle, stage 2 the output.
        auto solve = [&](Scale& sc, bool two_stage, auto&& run) {
          for (int attempt = 0;; ++attempt) {
            try {
              return run();
            } catch (const ApplyOverflow& ov) {
              int& e = ov.stage == 0 ? sc.ei : (ov.stage == 1 && two_stage ? sc.em : sc.eo);
              if (ov.up > 0) {  // an underflowing first measurement: scale that input up
                e = std::max(-kMaxShift, e - ov.up);
                ++sc.ups;
                if (ov.stage == 0)
                  sc.em_set = sc.eo_set = false;
                else
                  sc.eo_set = false;
                continue;
              }
              if (attempt >= 12 || (ov.stage == 0 && sc.ei + kShift > kMaxShift))
                throw NonFiniteError(which[i] + 1, "the Jacobian of " + where +
                                                       " gives NaN/Inf products even on inputs "
                                                       "scaled down by 2^" +
                                                       std::to_string(sc.ei) +
                                                       ": it has NaN/Inf entries");
              e += kShift;
              // Exponents after the one adjusted are measured again.
              if (ov.stage == 0) sc.em_set = sc.eo_set = false;
              if (ov.stage == 1 && two_stage) sc.eo_set = false;
            }
          }
        };
        const bool arnoldi = opt.method == SpectrumMethod::arnoldi;
        auto none = [] { return 0.0; };
        // sigma_max first: ||J|| sets the rounding term of the radius' error estimate.
        KrylovResult ks = solve(sg, true, [&] {
          return arnoldi
                     ? krylov_schur<T>(
                           ng, [&](const T* v, T* out) { gram(v, out, 1); }, opt, rng, none, true)
                     : block_power<T>(ng, gram, opt, rng, none, true);
        });
        log_sig = 0.5 * (std::log(ks.value) + sg.total() * ln2);
        // sigma^2 = theta: relative error of sigma is half that of theta.
        double sig_err = 0.5 * ks.error;
        bool sig_ok = ks.converged && ks.error <= opt.tol;
        bool rho_ok = true;
        double rho_err = 0;
        KrylovResult kr;
        if (square) {
          auto sig_op = [&] {  // ||J|| in the units of the scaled operator
            const double v = std::exp(log_sig - sr.total() * ln2);
            return std::isfinite(v) ? v : 0.0;
          };
          kr = solve(sr, false, [&] {
            return arnoldi ? krylov_schur<T>(
                                 din, [&](const T* v, T* out) { jop(v, out, 1); }, opt, rng, sig_op,
                                 false)
                           : block_power<T>(din, jop, opt, rng, sig_op, false);
          });
          log_rho = std::log(kr.value) + sr.total() * ln2;
          rho_err = kr.error;
          rho_ok = kr.converged && kr.error <= opt.tol;
          // The spectral radius never exceeds sigma_max: if it does, one of them is wrong.
          if (rho_ok && sig_ok && log_rho > log_sig + 2 * (rho_err + sig_err) + opt.tol)
            rho_ok = sig_ok = false;
          res.radius_residual[o] = kr.residual;
          res.radius_iterations[o] = kr.matvecs;
          res.radius_condition[o] = kr.condition;
          res.radius_error[o] = rho_err;
        }
        res.sigma_residual[o] = ks.residual;
        res.sigma_iterations[o] = ks.matvecs;
        res.sigma_error[o] = sig_err;
        res.converged[o] = (!square || kr.converged) && ks.converged ? 1 : 0;
        if ((!rho_ok || !sig_ok) && std::max(din, dout) <= opt.fallback_max_dim) {
          exact_logs(m, s, c, J, J2, U, !rho_ok, !sig_ok, log_rho, log_sig, where, which[i] + 1);
          if (!rho_ok) {
            res.radius_fallback[o] = 1;
            res.radius_error[o] = kNaN;
          }
          if (!sig_ok) {
            res.sigma_fallback[o] = 1;
            res.sigma_error[o] = kNaN;
          }
          rho_ok = sig_ok = true;
        }
        res.reliable[o] = rho_ok && sig_ok ? 1 : 0;
      }
      if (square) {
        res.log_radius[o] = log_rho;
        res.radius[o] = std::exp(log_rho);
      }
      res.log_sigma[o] = log_sig;
      res.sigma[o] = std::exp(log_sig);
      const std::size_t d = done.fetch_add(1) + 1;
      if (wi == 0)
        ctl.tick(last + d, total_work);
      else
        ctl.poll();
    }
  });
  // The last task may finish on a helper thread: report completion from the caller's thread.
  ctl.tick(total_work, total_work);
  return res;
}

template SpectrumResult jacobian_spectrum<float>(const Model<float>&, const float*, std::size_t,
                                                 std::size_t, const float*,
                                                 const std::vector<std::size_t>&,
                                                 const SpectrumOptions&, Control&);
template SpectrumResult jacobian_spectrum<double>(const Model<double>&, const double*, std::size_t,
                                                  std::size_t, const double*,
                                                  const std::vector<std::size_t>&,
                                                  const SpectrumOptions&, Control&);

}  // namespace vgcore

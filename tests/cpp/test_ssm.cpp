// Standalone test of the state-space layers' ops (csrc/vgcore/model/ssm_op.cpp,
// layers/ssm.hpp, layers/selective_ssm.hpp) through Model<T>, without Python:
//  * the diagonal LTI layer (real and complex modes): its Lyapunov exponents from the coordinate
//    axes equal log|a_n| (twice per complex mode), float64 to 1e-12, float32 to 1e-5 relative,
//    on 1 and 2 threads; Model::jacobian is the block diagonal of a;
//  * Mamba's selective layer: J V (Model::jvp) against central differences of the step, the
//    adjoint identity <W, J V> = <J^T W, V> (Model::vjp) to 1e-12, Model::jacobian against J V
//    on the identity, and d h' / d h exactly diagonal.
// Returns 0 if every check passed. ctest: ssm, well under a second.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "vgcore/analysis/lyapunov.hpp"
#include "vgcore/base/control.hpp"
#include "vgcore/model/model.hpp"

using namespace vgcore;

static int g_failures = 0, g_checks = 0;

static void check(bool ok, const char* what, double got, double want) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("FAIL %s: got %.17g, want %.17g\n", what, got, want);
  }
}

// ---- the LTI layer -------------------------------------------------------------------------

template <class T>
struct Lti {
  bool complex;
  std::size_t N, d;
  std::vector<T> a, B, C, D;
  SsmWeights<T> w() const {
    SsmWeights<T> r;
    r.complex = complex;
    r.modes = N;
    r.input_size = d;
    r.a = a.data();
    r.B = B.data();
    r.C = C.data();
    r.D = D.data();
    return r;
  }
  std::vector<double> log_abs_a() const {  // sorted descending, twice per complex mode
    std::vector<double> out;
    for (std::size_t n = 0; n < N; ++n) {
      const double m = complex ? std::log(std::hypot(double(a[2 * n]), double(a[2 * n + 1])))
                               : std::log(std::abs(double(a[n])));
      out.push_back(m);
      if (complex) out.push_back(m);
    }
    std::sort(out.rbegin(), out.rend());
    return out;
  }
};

template <class T>
Lti<T> make_lti(bool complex, std::size_t N, std::size_t d, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> r(0.3, 0.99), th(-3.0, 3.0);
  std::normal_distribution<double> nd(0.0, 1.0);
  Lti<T> m{complex, N, d, {}, {}, {}, {}};
  const std::size_t S = complex ? 2 * N : N;
  for (std::size_t n = 0; n < N; ++n) {
    const double mod = r(g), ang = th(g);
    if (complex) {
      m.a.push_back(T(mod * std::cos(ang)));
      m.a.push_back(T(mod * std::sin(ang)));
    } else {
      m.a.push_back(T(n % 2 ? -mod : mod));
    }
  }
  for (std::size_t i = 0; i < S * d; ++i) m.B.push_back(T(nd(g)));
  for (std::size_t i = 0; i < S * d; ++i) m.C.push_back(T(nd(g)));
  for (std::size_t i = 0; i < d; ++i) m.D.push_back(T(nd(g)));
  return m;
}

template <class T>
void test_lti_lyapunov(bool complex, int threads, double rtol) {
  const auto m = make_lti<T>(complex, 5, 3, 7);
  const Model<T> model = Model<T>::ssm(m.w());
  const std::size_t D = model.in_dim(0), B = 3, steps = 200;
  std::vector<T> h0(B * D, T(0)), v0(B * D * D, T(0)), x(steps * B * m.d);
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t j = 0; j < D; ++j) v0[(b * D + j) * D + j] = T(1);
  std::mt19937 g(3);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (auto& v : x) v = T(nd(g));
  LyapunovOptions opt;
  opt.k = D;
  opt.num_threads = threads;
  LyapunovEngine<T> eng(model, B, h0.data(), v0.data(), opt);
  Control ctl;
  eng.feed(x.data(), steps / 2, steps, ctl);  // streamed in two chunks
  eng.feed(x.data() + steps / 2 * B * m.d, steps - steps / 2, steps, ctl);
  eng.finish();
  const auto growth = eng.log_growth();
  const auto want = m.log_abs_a();
  for (std::size_t b = 0; b < B; ++b) {
    std::vector<double> got(growth.begin() + b * D, growth.begin() + (b + 1) * D);
    for (auto& v : got) v /= double(eng.accumulated_steps());
    std::sort(got.rbegin(), got.rend());
    for (std::size_t i = 0; i < D; ++i)
      check(std::abs(got[i] - want[i]) <= rtol * std::abs(want[i]), "LTI exponent = log|a|", got[i],
            want[i]);
  }
  // The Jacobian: the block diagonal of a, column-major.
  std::vector<T> J(D * D), U(1);
  model.jacobian(0, nullptr, J.data(), U.data());
  for (std::size_t j = 0; j < D; ++j)
    for (std::size_t i = 0; i < D; ++i) {
      double want_ij = 0;
      if (!complex && i == j) want_ij = m.a[i];
      if (complex && i / 2 == j / 2) {
        const std::size_t n = i / 2;
        const double ar = m.a[2 * n], ai = m.a[2 * n + 1];
        want_ij = i == j ? ar : (i > j ? ai : -ai);
      }
      check(double(J[j * D + i]) == want_ij, "LTI Jacobian entry", J[j * D + i], want_ij);
    }
}

// ---- the selective layer --------------------------------------------------------------------

struct Selective {
  std::size_t dm = 3, di = 4, n = 3, dc = 3, R = 2;
  std::vector<double> win, bin, cw, cb, wx, wdt, bdt, A, Dv, wout;
  SelectiveSsmWeights<double> w() const {
    SelectiveSsmWeights<double> r;
    r.d_model = dm;
    r.d_inner = di;
    r.d_state = n;
    r.d_conv = dc;
    r.dt_rank = R;
    r.in_proj_weight = win.data();
    r.in_proj_bias = bin.data();
    r.conv_weight = cw.data();
    r.conv_bias = cb.data();
    r.x_proj_weight = wx.data();
    r.dt_proj_weight = wdt.data();
    r.dt_proj_bias = bdt.data();
    r.A = A.data();
    r.D = Dv.data();
    r.out_proj_weight = wout.data();
    return r;
  }
};

static Selective make_selective(unsigned seed) {
  Selective s;
  std::mt19937 g(seed);
  std::normal_distribution<double> nd(0.0, 0.6);
  auto fill = [&](std::vector<double>& v, std::size_t k) {
    v.resize(k);
    for (auto& e : v) e = nd(g);
  };
  fill(s.win, 2 * s.di * s.dm);
  fill(s.bin, 2 * s.di);
  fill(s.cw, s.di * s.dc);
  fill(s.cb, s.di);
  fill(s.wx, (s.R + 2 * s.n) * s.di);
  fill(s.wdt, s.di * s.R);
  fill(s.bdt, s.di);
  fill(s.Dv, s.di);
  fill(s.wout, s.dm * s.di);
  for (std::size_t i = 0; i < s.di; ++i)
    for (std::size_t m = 0; m < s.n; ++m) s.A.push_back(-double(m + 1) * (1.0 + 0.1 * i));
  return s;
}

static void test_selective() {
  const Selective s = make_selective(11);
  const Model<double> model = Model<double>::ssm(s.w());
  const std::size_t D = model.in_dim(0), gc = model.gemm_cols(0), C = model.cache_size(0);
  std::mt19937 g(5);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<double> x(s.dm), h(D), P(model.proj_cols());
  for (auto& v : x) v = nd(g);
  for (auto& v : h) v = nd(g);
  model.project_inputs(x.data(), 1, P.data());
  auto step = [&](const std::vector<double>& state, std::vector<double>& out,
                  std::vector<double>& cache) {
    std::vector<double> U(gc);
    out.assign(D, 0.0);
    cache.assign(C, 0.0);
    model.state_update(0, P.data(), U.data(), gc, state.data(), D, out.data(), D, cache.data(), 1);
  };
  std::vector<double> y, cache, tmp;
  step(h, y, cache);
  const std::size_t k = 3;
  std::vector<double> V(k * D), W(k * D), JV(k * D), JtW(k * D), G(std::max(k, D) * gc);
  for (auto& v : V) v = nd(g);
  for (auto& v : W) v = nd(g);
  model.jvp(0, cache.data(), V.data(), JV.data(), k, G.data());
  model.vjp(0, cache.data(), W.data(), JtW.data(), k, G.data());
  const double eps = 1e-6;
  for (std::size_t r = 0; r < k; ++r) {
    std::vector<double> hp(h), hm(h), yp, ym;
    for (std::size_t j = 0; j < D; ++j) {
      hp[j] += eps * V[r * D + j];
      hm[j] -= eps * V[r * D + j];
    }
    step(hp, yp, tmp);
    step(hm, ym, tmp);
    for (std::size_t j = 0; j < D; ++j) {
      const double fd = (yp[j] - ym[j]) / (2 * eps);
      check(std::abs(fd - JV[r * D + j]) <= 1e-7 * (1 + std::abs(fd)), "selective J V vs FD",
            JV[r * D + j], fd);
    }
    double lhs = 0, rhs = 0, scale = 0;
    for (std::size_t j = 0; j < D; ++j) {
      lhs += W[r * D + j] * JV[r * D + j];
      rhs += JtW[r * D + j] * V[r * D + j];
      scale += std::abs(W[r * D + j] * JV[r * D + j]) + std::abs(JtW[r * D + j] * V[r * D + j]);
    }
    check(std::abs(lhs - rhs) <= 1e-12 * scale, "<W, J V> = <J^T W, V>", lhs, rhs);
  }
  // The Jacobian against J V of the identity; d h'/d h is diagonal.
  std::vector<double> J(D * D), eye(D * D, 0.0), Je(D * D);
  for (std::size_t j = 0; j < D; ++j) eye[j * D + j] = 1;
  model.jacobian(0, cache.data(), J.data(), G.data());
  model.jvp(0, cache.data(), eye.data(), Je.data(), D, G.data());
  for (std::size_t i = 0; i < D * D; ++i) check(J[i] == Je[i], "jacobian == J I", J[i], Je[i]);
  const std::size_t Sh = s.di * s.n;
  for (std::size_t j = 0; j < Sh; ++j)
    for (std::size_t i = 0; i < Sh; ++i)
      if (i != j) check(J[j * D + i] == 0.0, "d h'/d h off the diagonal", J[j * D + i], 0.0);
}

int main() {
  for (int threads : {1, 2}) {
    test_lti_lyapunov<double>(false, threads, 1e-12);
    test_lti_lyapunov<double>(true, threads, 1e-12);
    test_lti_lyapunov<float>(false, threads, 1e-5);
    test_lti_lyapunov<float>(true, threads, 1e-5);
  }
  test_selective();
  std::printf("%d of %d checks passed\n", g_checks - g_failures, g_checks);
  return g_failures ? 1 : 0;
}

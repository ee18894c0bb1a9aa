// Standalone test of vgcore/fastmath.hpp and vgcore/activations.{hpp,cpp}.
//
//  1. fastmath accuracy: max error in ulp of every function, float and double, over dense
//     sweeps, against long double libm (glibc), for each instruction set the machine has
//     (baseline x86-64, x86-64-v3 = AVX2+FMA, x86-64-v4 = AVX-512), plus exact special values.
//  2. every activation and derivative against long double references at many points
//     (including +-0, kinks, +-1e-300, +-30, +-700, +-1e308, +-inf, NaN), derivative vs central
//     finite differences, torch's conventions at kinks, in-place operation, the API
//     (make_activation, activation_name, max_derivative, is_linear).
//  3. timings (printed, not asserted): ns/element of fastmath exp/tanh/sigmoid vs std:: and of
//     activation_forward, arrays of 1e6.
//
// Returns 0 if every check passed. Build: see tests/cpp/README.md.

#include <algorithm>
#include <cfenv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "vgcore/base/activations.hpp"
#include "vgcore/base/fastmath.hpp"

namespace fm = vgcore::fastmath;
using vgcore::Activation;
using vgcore::ActKind;
using LD = long double;

// ---------------------------------------------------------------------------------------------
// reporting

static int g_failures = 0;
static int g_printed = 0;

#define CHECK(cond, ...)                                 \
  do {                                                   \
    if (!(cond)) {                                       \
      ++g_failures;                                      \
      if (g_printed++ < 60) {                            \
        std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
        std::printf(__VA_ARGS__);                        \
        std::printf("\n");                               \
      }                                                  \
    }                                                    \
  } while (0)

template <class T>
const char* tname() {
  return sizeof(T) == 4 ? "float" : "double";
}

template <class T>
bool same_value(T a, T b) {  // bitwise-equal up to NaN payload
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b && std::signbit(a) == std::signbit(b);
}

// ulp of T at the magnitude of r (>= the smallest subnormal)
template <class T>
LD ulp_of(LD r) {
  r = fabsl(r);
  const LD tiny = std::numeric_limits<T>::denorm_min();
  if (!(r > 0) || std::isinf(r)) return tiny;
  int e;
  frexpl(r, &e);  // r = m 2^e, m in [0.5, 1)
  const LD u = ldexpl(1.0L, e - std::numeric_limits<T>::digits);
  return u > tiny ? u : tiny;
}

// error of y in ulp of T against the exact value ref (scale >= |ref| sets the ulp size)
template <class T>
double ulp_err(T y, LD ref, LD scale = 0) {
  if (std::isnan(ref)) return std::isnan(y) ? 0.0 : INFINITY;
  const T rr = static_cast<T>(ref);  // correctly rounded, overflow -> inf
  if (std::isinf(rr) || std::isinf(y)) return y == rr ? 0.0 : INFINITY;
  if (std::isnan(y)) return INFINITY;
  const LD s = std::max(fabsl(ref), fabsl(scale));
  return static_cast<double>(fabsl(static_cast<LD>(y) - ref) / ulp_of<T>(s));
}

// ---------------------------------------------------------------------------------------------
// long double references

static const LD kInvSqrt2L = 0.707106781186547524381894L;       // 1/sqrt(2) rounded to 64 bits
static const LD kInvSqrt2Lo = 1.895032558893257079655062e-20L;  // 1/sqrt(2) - kInvSqrt2L
static const LD kInvSqrt2PiL = 0.3989422804014326779399461L;
static const LD k2OverSqrtPiL = 1.128379167095512573896159L;

static LD ref_exp(LD x) { return expl(x); }
static LD ref_expm1(LD x) { return expm1l(x); }
static LD ref_log1p(LD x) { return log1pl(x); }
static LD ref_tanh(LD x) { return tanhl(x); }
static LD ref_sigmoid(LD x) {
  if (std::isnan(x)) return x;
  const LD t = expl(-fabsl(x));
  return (x >= 0 ? 1.0L : t) / (1.0L + t);
}
static LD ref_softplus(LD x) {
  if (std::isnan(x)) return x;
  return (x > 0 ? x : 0.0L) + log1pl(expl(-fabsl(x)));
}
static LD ref_erf(LD x) { return erfl(x); }
static LD ref_erfc(LD x) { return erfcl(x); }
// Phi(x) = erfc(-x/sqrt2)/2, with the rounding error of -x/sqrt2 in long double corrected to
// first order (it would otherwise be ~z^2 2^-64 relative, visible in the far left tail).
static LD ref_cdf(LD x) {
  if (std::isnan(x)) return x;
  if (std::isinf(x)) return x > 0 ? 1.0L : 0.0L;
  const LD zl = -x * kInvSqrt2L;
  const LD delta = fmal(-x, kInvSqrt2L, -zl) + (-x) * kInvSqrt2Lo;
  return 0.5L * (erfcl(zl) - delta * k2OverSqrtPiL * expl(-zl * zl));
}
// exp(-x^2/2)/sqrt(2pi) with x^2 split exactly (x holds a double or float value)
static LD ref_pdf(LD x) {
  if (std::isnan(x)) return x;
  if (std::isinf(x)) return 0.0L;
  const double xd = static_cast<double>(x);
  std::uint64_t b;
  std::memcpy(&b, &xd, 8);
  b &= ~std::uint64_t(0) << 27;
  double xh;
  std::memcpy(&xh, &b, 8);
  const LD h = static_cast<LD>(xh) * xh;
  const LD l = (static_cast<LD>(xd) - xh) * (static_cast<LD>(xd) + xh);
  return expl(-h / 2) * expl(-l / 2) * kInvSqrt2PiL;
}

// ---------------------------------------------------------------------------------------------
// fastmath sweeps, compiled for several instruction sets

#define FM_FUNCTOR(NAME)  \
  struct F_##NAME {       \
    template <class T>    \
    static T call(T x) {  \
      return fm::NAME(x); \
    }                     \
  };
FM_FUNCTOR(exp)
FM_FUNCTOR(expm1)
FM_FUNCTOR(log1p)
FM_FUNCTOR(tanh)
FM_FUNCTOR(sigmoid)
FM_FUNCTOR(softplus)
FM_FUNCTOR(erf)
FM_FUNCTOR(erfc)
FM_FUNCTOR(normal_cdf)
FM_FUNCTOR(normal_pdf)

struct F_std_exp {
  template <class T>
  static T call(T x) {
    return std::exp(x);
  }
};
struct F_std_tanh {
  template <class T>
  static T call(T x) {
    return std::tanh(x);
  }
};
struct F_std_sigmoid {
  template <class T>
  static T call(T x) {
    return T(1) / (T(1) + std::exp(-x));
  }
};

template <class T, class F>
void run_base(const T* x, T* y, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) y[i] = F::call(x[i]);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define VG_HAVE_ISA 1
template <class T, class F>
__attribute__((target("arch=x86-64-v3"))) void run_v3(const T* x, T* y, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) y[i] = F::call(x[i]);
}
template <class T, class F>
__attribute__((target("arch=x86-64-v4"))) void run_v4(const T* x, T* y, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) y[i] = F::call(x[i]);
}
static bool have_v3() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("bmi2");
}
static bool have_v4() {
  __builtin_cpu_init();
  return have_v3() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512cd");
}
#endif

template <class T>
using Kernel = void (*)(const T*, T*, std::size_t);

template <class T>
struct Isa {
  const char* name;
  Kernel<T> k;
};

template <class T, class F>
std::vector<Isa<T>> kernels() {
  std::vector<Isa<T>> v{{"base", &run_base<T, F>}};
#ifdef VG_HAVE_ISA
  if (have_v3()) v.push_back({"v3", &run_v3<T, F>});
  if (have_v4()) v.push_back({"v4", &run_v4<T, F>});
#endif
  return v;
}

struct Range {
  enum Kind { uniform, logpos, logneg, neg1 } kind;  // neg1: x = -1 + 10^t
  double a, b;
  int n;
};

template <class T>
std::vector<T> make_points(const std::vector<Range>& ranges, std::uint64_t seed) {
  std::vector<T> v;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  for (const Range& r : ranges) {
    for (int i = 0; i < r.n; ++i) {
      // half on a regular grid, half random
      const double t = (i % 2 == 0) ? (r.n > 1 ? double(i) / (r.n - 1) : 0.5) : u01(rng);
      double x = 0;
      switch (r.kind) {
        case Range::uniform:
          x = r.a + (r.b - r.a) * t;
          break;
        case Range::logpos:
          x = std::pow(10.0, r.a + (r.b - r.a) * t);
          break;
        case Range::logneg:
          x = -std::pow(10.0, r.a + (r.b - r.a) * t);
          break;
        case Range::neg1:
          x = -1.0 + std::pow(10.0, r.a + (r.b - r.a) * t);
          break;
      }
      const T xt = static_cast<T>(x);
      if (std::isfinite(xt)) v.push_back(xt);
    }
  }
  return v;
}

struct FnSpec {
  const char* name;
  LD (*ref)(LD);
  std::vector<Range> dom_d, dom_f;
  double bound_d, bound_f;  // max allowed error in ulp
  bool flushes = false;     // results below the normal range may be flushed to 0
};

template <class T, class F>
void sweep(const FnSpec& s, std::vector<std::string>& rows, double& worst_ratio) {
  const std::vector<T> x = make_points<T>(sizeof(T) == 4 ? s.dom_f : s.dom_d, 12345);
  std::vector<LD> ref(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) ref[i] = s.ref(static_cast<LD>(x[i]));
  std::vector<T> y(x.size());
  const double bound = sizeof(T) == 4 ? s.bound_f : s.bound_d;
  std::string row =
      std::string(s.name) + " (" + tname<T>() + ", " + std::to_string(x.size()) + " pts):";
  for (const Isa<T>& isa : kernels<T, F>()) {
    isa.k(x.data(), y.data(), x.size());
    double mx = 0, at = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (s.flushes && y[i] == 0 && fabsl(ref[i]) < std::numeric_limits<T>::min()) continue;
      const double e = ulp_err<T>(y[i], ref[i]);
      if (e > mx) mx = e, at = static_cast<double>(x[i]);
    }
    char buf[160];
    std::snprintf(buf, sizeof buf, "  %s %.3f ulp (at %.17g)", isa.name, mx, at);
    row += buf;
    worst_ratio = std::max(worst_ratio, mx / bound);
    CHECK(mx <= bound, "%s<%s> [%s]: max error %.3f ulp at x=%.17g > bound %.1f", s.name,
          tname<T>(), isa.name, mx, at, bound);
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "  (bound %.1f)", bound);
  rows.push_back(row + buf);
}

static std::vector<FnSpec> fn_specs() {
  using R = Range;
  const R::Kind U = R::uniform, LP = R::logpos, LN = R::logneg, N1 = R::neg1;
  std::vector<FnSpec> v;
  v.push_back(
      {"exp",
       ref_exp,
       {{U, -746, 710, 600000}, {U, -2, 2, 200000}, {LP, -20, 0, 50000}, {LN, -20, 0, 50000}},
       {{U, -104, 89, 600000}, {U, -2, 2, 200000}, {LP, -10, 0, 50000}, {LN, -10, 0, 50000}},
       1.0,
       1.0});
  v.push_back(
      {"expm1",
       ref_expm1,
       {{U, -50, 710, 400000}, {U, -2, 2, 200000}, {LP, -300, 1, 100000}, {LN, -300, 1, 100000}},
       {{U, -20, 89, 400000}, {U, -2, 2, 200000}, {LP, -38, 1, 100000}, {LN, -38, 1, 100000}},
       2.0,
       2.0});
  v.push_back({"log1p",
               ref_log1p,
               {{N1, -16, 0, 100000},
                {LP, -300, 308, 300000},
                {LN, -300, -0.302, 100000},
                {U, -0.9, 3, 300000}},
               {{N1, -7, 0, 100000},
                {LP, -38, 38, 300000},
                {LN, -38, -0.302, 100000},
                {U, -0.9, 3, 300000}},
               2.0,
               2.0});
  v.push_back({"tanh",
               ref_tanh,
               {{LP, -300, 1.5, 200000}, {LN, -300, 1.5, 200000}, {U, -25, 25, 400000}},
               {{LP, -38, 1.2, 200000}, {LN, -38, 1.2, 200000}, {U, -12, 12, 400000}},
               3.0,
               3.0});
  v.push_back(
      {"sigmoid",
       ref_sigmoid,
       {{U, -745, 745, 300000}, {U, -40, 40, 300000}, {LP, -300, 1, 100000}, {LN, -300, 1, 100000}},
       {{U, -104, 104, 300000}, {U, -20, 20, 300000}, {LP, -38, 1, 100000}, {LN, -38, 1, 100000}},
       3.0,
       3.0});
  v.push_back(
      {"softplus",
       ref_softplus,
       {{U, -745, 745, 300000}, {U, -40, 40, 300000}, {LP, -300, 1, 100000}, {LN, -300, 1, 100000}},
       {{U, -104, 104, 300000}, {U, -20, 20, 300000}, {LP, -38, 1, 100000}, {LN, -38, 1, 100000}},
       3.0,
       3.0});
  v.push_back({"erf",
               ref_erf,
               {{U, -7, 7, 600000}, {LP, -300, 0.8, 100000}, {LN, -300, 0.8, 100000}},
               {{U, -5, 5, 600000}, {LP, -38, 0.6, 100000}, {LN, -38, 0.6, 100000}},
               3.0,
               3.0});
  v.push_back(
      {"erfc",
       ref_erfc,
       {{U, -6, 27.3, 600000}, {U, -1, 1, 100000}, {LP, -300, 0, 50000}, {LN, -300, 0, 50000}},
       {{U, -4, 10.1, 600000}, {U, -1, 1, 100000}, {LP, -38, 0, 50000}, {LN, -38, 0, 50000}},
       4.0,
       4.0,
       true});
  v.push_back(
      {"normal_cdf",
       ref_cdf,
       {{U, -38.6, 9, 600000}, {U, -2, 2, 100000}, {LP, -300, 0, 50000}, {LN, -300, 0, 50000}},
       {{U, -14.2, 6, 600000}, {U, -2, 2, 100000}, {LP, -38, 0, 50000}, {LN, -38, 0, 50000}},
       4.0,
       4.0,
       true});
  v.push_back({"normal_pdf",
               ref_pdf,
               {{U, -38.6, 38.6, 600000}, {U, -2, 2, 100000}, {LP, -300, 0, 50000}},
               {{U, -14.2, 14.2, 600000}, {U, -2, 2, 100000}, {LP, -38, 0, 50000}},
               2.0,
               2.0});
  return v;
}

template <class T>
void test_fastmath_sweeps() {
  std::printf(
      "\n== fastmath accuracy, %s (max |error| in ulp; base = x86-64 baseline, v3 = "
      "AVX2+FMA, v4 = AVX-512)\n",
      tname<T>());
  const std::vector<FnSpec> specs = fn_specs();
  std::vector<std::string> rows;
  double worst = 0;
  sweep<T, F_exp>(specs[0], rows, worst);
  sweep<T, F_expm1>(specs[1], rows, worst);
  sweep<T, F_log1p>(specs[2], rows, worst);
  sweep<T, F_tanh>(specs[3], rows, worst);
  sweep<T, F_sigmoid>(specs[4], rows, worst);
  sweep<T, F_softplus>(specs[5], rows, worst);
  sweep<T, F_erf>(specs[6], rows, worst);
  sweep<T, F_erfc>(specs[7], rows, worst);
  sweep<T, F_normal_cdf>(specs[8], rows, worst);
  sweep<T, F_normal_pdf>(specs[9], rows, worst);
  for (const std::string& r : rows) std::printf("  %s\n", r.c_str());
}

// ---- exact special values ---------------------------------------------------------------------

template <class T>
void expect(const char* what, T got, T want) {
  CHECK(same_value(got, want), "%s<%s>: got %.17g (signbit %d), want %.17g (signbit %d)", what,
        tname<T>(), double(got), int(std::signbit(got)), double(want), int(std::signbit(want)));
}

template <class T>
void test_fastmath_special() {
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  const T big = std::numeric_limits<T>::max(), tiny = std::numeric_limits<T>::denorm_min();
  const T mn = std::numeric_limits<T>::min();
  const bool dbl = sizeof(T) == 8;
  // exp
  expect("exp(0)", fm::exp(T(0)), T(1));
  expect("exp(-0)", fm::exp(T(-0.0)), T(1));
  expect("exp(inf)", fm::exp(inf), inf);
  expect("exp(-inf)", fm::exp(-inf), T(0));
  expect("exp(nan)", fm::exp(nan), nan);
  expect("exp(1000)", fm::exp(T(1000)), inf);
  expect("exp(-1000)", fm::exp(T(-1000)), T(0));
  expect("exp(big)", fm::exp(big), inf);
  expect("exp(-big)", fm::exp(-big), T(0));
  CHECK(std::isfinite(fm::exp(T(dbl ? 709.78 : 88.72))), "exp just below overflow");
  expect("exp(just above overflow)", fm::exp(T(dbl ? 709.79 : 88.73)), inf);
  CHECK(fm::exp(T(dbl ? -745.0 : -103.0)) > T(0), "exp smallest subnormal");
  expect("exp(-745.2)", fm::exp(T(dbl ? -745.2 : -103.98)), T(0));
  CHECK(ulp_err<T>(fm::exp(T(1)), 2.71828182845904523536L) <= 1, "exp(1)");
  // expm1
  expect("expm1(0)", fm::expm1(T(0)), T(0));
  expect("expm1(-0)", fm::expm1(T(-0.0)), T(-0.0));
  expect("expm1(inf)", fm::expm1(inf), inf);
  expect("expm1(-inf)", fm::expm1(-inf), T(-1));
  expect("expm1(nan)", fm::expm1(nan), nan);
  expect("expm1(1000)", fm::expm1(T(1000)), inf);
  expect("expm1(-1000)", fm::expm1(T(-1000)), T(-1));
  expect("expm1(tiny)", fm::expm1(tiny), tiny);
  expect("expm1(-tiny)", fm::expm1(-tiny), -tiny);
  expect("expm1(min)", fm::expm1(mn), mn);
  CHECK(std::isfinite(fm::expm1(T(dbl ? 709.78 : 88.72))), "expm1 just below overflow");
  // log1p
  expect("log1p(0)", fm::log1p(T(0)), T(0));
  expect("log1p(-0)", fm::log1p(T(-0.0)), T(-0.0));
  expect("log1p(-1)", fm::log1p(T(-1)), -inf);
  expect("log1p(-2)", fm::log1p(T(-2)), nan);
  expect("log1p(-inf)", fm::log1p(-inf), nan);
  expect("log1p(inf)", fm::log1p(inf), inf);
  expect("log1p(nan)", fm::log1p(nan), nan);
  expect("log1p(tiny)", fm::log1p(tiny), tiny);
  expect("log1p(-tiny)", fm::log1p(-tiny), -tiny);
  CHECK(ulp_err<T>(fm::log1p(big), log1pl(static_cast<LD>(big))) <= 1, "log1p(max)");
  // tanh
  expect("tanh(0)", fm::tanh(T(0)), T(0));
  expect("tanh(-0)", fm::tanh(T(-0.0)), T(-0.0));
  expect("tanh(inf)", fm::tanh(inf), T(1));
  expect("tanh(-inf)", fm::tanh(-inf), T(-1));
  expect("tanh(nan)", fm::tanh(nan), nan);
  expect("tanh(30)", fm::tanh(T(30)), T(1));
  expect("tanh(-30)", fm::tanh(T(-30)), T(-1));
  expect("tanh(big)", fm::tanh(big), T(1));
  expect("tanh(tiny)", fm::tanh(tiny), tiny);
  expect("tanh(-tiny)", fm::tanh(-tiny), -tiny);
  // sigmoid
  expect("sigmoid(0)", fm::sigmoid(T(0)), T(0.5));
  expect("sigmoid(-0)", fm::sigmoid(T(-0.0)), T(0.5));
  expect("sigmoid(inf)", fm::sigmoid(inf), T(1));
  expect("sigmoid(-inf)", fm::sigmoid(-inf), T(0));
  expect("sigmoid(nan)", fm::sigmoid(nan), nan);
  expect("sigmoid(big)", fm::sigmoid(big), T(1));
  expect("sigmoid(-big)", fm::sigmoid(-big), T(0));
  expect("sigmoid(50)", fm::sigmoid(T(50)), T(1));
  if (dbl) {
    CHECK(ulp_err<T>(fm::sigmoid(T(-700)), ref_sigmoid(-700.0L)) <= 3, "sigmoid(-700) = %.17g",
          double(fm::sigmoid(T(-700))));
    CHECK(fm::sigmoid(T(-745)) > 0, "sigmoid(-745) subnormal");
  } else {
    CHECK(ulp_err<T>(fm::sigmoid(T(-80)), ref_sigmoid(-80.0L)) <= 3, "sigmoid(-80f)");
  }
  // softplus
  expect("softplus(inf)", fm::softplus(inf), inf);
  expect("softplus(-inf)", fm::softplus(-inf), T(0));
  expect("softplus(nan)", fm::softplus(nan), nan);
  expect("softplus(big)", fm::softplus(big), big);
  expect("softplus(-big)", fm::softplus(-big), T(0));
  // erf / erfc / Phi / pdf
  expect("erf(0)", fm::erf(T(0)), T(0));
  expect("erf(-0)", fm::erf(T(-0.0)), T(-0.0));
  expect("erf(inf)", fm::erf(inf), T(1));
  expect("erf(-inf)", fm::erf(-inf), T(-1));
  expect("erf(nan)", fm::erf(nan), nan);
  expect("erf(10)", fm::erf(T(10)), T(1));
  expect("erf(-big)", fm::erf(-big), T(-1));
  expect("erfc(inf)", fm::erfc(inf), T(0));
  expect("erfc(-inf)", fm::erfc(-inf), T(2));
  expect("erfc(nan)", fm::erfc(nan), nan);
  expect("erfc(0)", fm::erfc(T(0)), T(1));
  expect("erfc(30)", fm::erfc(T(dbl ? 30 : 12)), T(0));
  CHECK(fm::erfc(T(dbl ? 26.4 : 9.0)) >= std::numeric_limits<T>::min(), "erfc far tail nonzero");
  expect("erfc(flushed)", fm::erfc(T(dbl ? 26.55 : 9.2)), T(0));
  expect("normal_cdf(0)", fm::normal_cdf(T(0)), T(0.5));
  expect("normal_cdf(inf)", fm::normal_cdf(inf), T(1));
  expect("normal_cdf(-inf)", fm::normal_cdf(-inf), T(0));
  expect("normal_cdf(nan)", fm::normal_cdf(nan), nan);
  expect("normal_cdf(-big)", fm::normal_cdf(-big), T(0));
  CHECK(fm::normal_cdf(T(dbl ? -37.4 : -12.8)) >= std::numeric_limits<T>::min(),
        "normal_cdf far tail nonzero");
  expect("normal_cdf(flushed)", fm::normal_cdf(T(dbl ? -37.52 : -12.96)), T(0));
  CHECK(fm::normal_pdf(T(dbl ? 38.5 : 14.3)) > 0, "normal_pdf subnormal tail");
  expect("normal_pdf(inf)", fm::normal_pdf(inf), T(0));
  expect("normal_pdf(nan)", fm::normal_pdf(nan), nan);
  // symmetry: tanh and erf are odd (bitwise), sigmoid(x) + sigmoid(-x) ~ 1
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(-30, 30);
  for (int i = 0; i < 20000; ++i) {
    const T x = static_cast<T>(u(rng) * (i % 3 == 0 ? 1e-3 : 1.0));
    CHECK(same_value(fm::tanh(-x), T(-fm::tanh(x))), "tanh odd at %.17g", double(x));
    CHECK(same_value(fm::erf(-x), T(-fm::erf(x))), "erf odd at %.17g", double(x));
    const T s = fm::sigmoid(x) + fm::sigmoid(-x);
    CHECK(std::fabs(s - T(1)) <= 2 * std::numeric_limits<T>::epsilon(), "sigmoid sym at %.17g",
          double(x));
  }
}

// ---- special values through the vectorised loops ------------------------------------------

template <class T>
std::vector<T> special_inputs() {
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  const T big = std::numeric_limits<T>::max(), mn = std::numeric_limits<T>::min();
  const T dn = std::numeric_limits<T>::denorm_min();
  const std::vector<T> sp = {T(0),     T(-0.0), inf,    -inf,   nan,     big,      -big,
                             mn,       -mn,     dn,     -dn,    T(1e30), T(-1e30), T(1),
                             T(-1),    T(0.5),  T(-30), T(30),  T(-700), T(700),   T(-1e-30),
                             T(1e-30), T(40),   T(-40), T(100), T(-100), T(20),    T(-20)};
  std::vector<T> x;  // every value in every vector lane position, mixed with the others
  for (std::size_t r = 0; r < 17; ++r)
    for (std::size_t i = 0; i < sp.size(); ++i) x.push_back(sp[(i * 5 + r) % sp.size()]);
  return x;
}

template <class T>
bool close_or_same(T a, T b) {
  if (same_value(a, b)) return true;
  if (!std::isfinite(a) || !std::isfinite(b)) return false;
  return ulp_err<T>(a, static_cast<LD>(b)) <= 4;  // FMA clones may round differently
}

template <class T, class F>
__attribute__((noinline)) T scalar_call(T x) {
  return F::call(x);
}

template <class T, class F>
void vector_specials(const char* name) {
  const std::vector<T> x = special_inputs<T>();
  std::vector<T> y(x.size());
  for (const Isa<T>& isa : kernels<T, F>()) {
    isa.k(x.data(), y.data(), x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      const T want = scalar_call<T, F>(x[i]);
      CHECK(close_or_same(y[i], want), "%s<%s> [%s] vector path at x=%g: %g, scalar %g", name,
            tname<T>(), isa.name, double(x[i]), double(y[i]), double(want));
    }
  }
}

template <class T>
void test_fastmath_vector_specials() {
  vector_specials<T, F_exp>("exp");
  vector_specials<T, F_expm1>("expm1");
  vector_specials<T, F_log1p>("log1p");
  vector_specials<T, F_tanh>("tanh");
  vector_specials<T, F_sigmoid>("sigmoid");
  vector_specials<T, F_softplus>("softplus");
  vector_specials<T, F_erf>("erf");
  vector_specials<T, F_erfc>("erfc");
  vector_specials<T, F_normal_cdf>("normal_cdf");
  vector_specials<T, F_normal_pdf>("normal_pdf");
}

// ---------------------------------------------------------------------------------------------
// activation references (long double), with the parameters rounded to T as torch does

template <class T>
struct ActRef {
  Activation a;
  struct Out {
    LD y, d, dscale;  // dscale: magnitude of the terms of phi' (for the error measure)
    LD cond = 1;      // amplification of rounding errors in inner arguments (gelu_tanh)
  };

  static LD sig(LD v) { return ref_sigmoid(v); }

  // phi with exact (unrounded) inner arithmetic, used for finite differences
  LD phi(LD x) const { return eval(x, false).y; }

  Out eval(LD x, bool round_inner = true) const {
    const LD nan = NAN;
    if (std::isnan(x)) return {nan, nan, 1};
    switch (a.kind) {
      case ActKind::identity:
        return {x, 1, 1};
      case ActKind::sigmoid: {
        if (std::isinf(x)) return {x > 0 ? 1.0L : 0.0L, 0, 0};
        const LD t = expl(-fabsl(x));
        return {sig(x), t / ((1 + t) * (1 + t)), 0};
      }
      case ActKind::tanh: {
        if (std::isinf(x)) return {x > 0 ? 1.0L : -1.0L, 0, 0};
        const LD c = coshl(x);
        return {tanhl(x), 1 / (c * c), 0};
      }
      case ActKind::relu:
        return {x < 0 ? 0.0L : x, x > 0 ? 1.0L : 0.0L, 0};
      case ActKind::leaky_relu: {
        const LD s = static_cast<T>(a.alpha);
        return {x > 0 ? x : x * s, x > 0 ? 1.0L : s, 0};
      }
      case ActKind::elu:
      case ActKind::selu: {
        LD pos = 1, neg = static_cast<T>(a.alpha);
        if (a.kind == ActKind::selu) {
          pos = static_cast<T>(vgcore::kSeluScale);
          neg = static_cast<T>(static_cast<T>(vgcore::kSeluAlpha) *
                               static_cast<T>(vgcore::kSeluScale));
        }
        if (x > 0) return {pos * x, pos, 0};
        return {neg * expm1l(x), neg * expl(x), 0};
      }
      case ActKind::softplus: {
        const LD b = static_cast<T>(a.alpha), thr = static_cast<T>(a.beta);
        const LD v = round_inner
                         ? static_cast<LD>(static_cast<T>(static_cast<T>(x) * static_cast<T>(b)))
                         : x * b;
        if (v > thr) return {x, 1, 0};
        return {ref_softplus(v) / b, sig(v), 0};
      }
      case ActKind::silu: {
        if (std::isinf(x)) return {x > 0 ? x : -0.0L, x > 0 ? 1.0L : 0.0L, 0};
        const LD s = sig(x), sm = sig(-x);
        return {x * s, s * (1 + x * sm), s + fabsl(x * s * sm)};
      }
      case ActKind::gelu: {
        if (std::isinf(x)) return {x > 0 ? x : -0.0L, x > 0 ? 1.0L : 0.0L, 0};
        const LD c = ref_cdf(x), p = ref_pdf(x);
        return {x * c, c + x * p, c + fabsl(x * p)};
      }
      case ActKind::gelu_tanh: {
        if (std::isinf(x)) return {x > 0 ? x : -0.0L, x > 0 ? 1.0L : 0.0L, 0};
        const LD kb = static_cast<T>(0.79788456080286535587989211986876L);
        const LD kk = static_cast<T>(0.044715L);
        const LD u = kb * (x + kk * x * x * x);
        const LD s = sig(2 * u), sm = sig(-2 * u);
        const LD du = kb * (1 + 3 * kk * x * x);
        const LD r = 2 * x * s * sm * du;
        // y = x sigmoid(2u): a relative error e in the computed u changes y by |2u| sm e
        return {x * s, s + r, s + fabsl(r), 1 + fabsl(2 * u) * sm};
      }
    }
    return {nan, nan, 1};
  }
};

struct ActCase {
  std::string name;
  double alpha, beta;
};

static std::vector<ActCase> act_cases() {
  return {{"identity", NAN, NAN},  {"sigmoid", NAN, NAN},    {"tanh", NAN, NAN},
          {"relu", NAN, NAN},      {"leaky_relu", NAN, NAN}, {"leaky_relu", 0.2, NAN},
          {"leaky_relu", -2, NAN}, {"elu", NAN, NAN},        {"elu", 0.5, NAN},
          {"elu", 2.0, NAN},       {"selu", NAN, NAN},       {"softplus", NAN, NAN},
          {"softplus", 2.0, 10.0}, {"softplus", 0.5, 30.0},  {"silu", NAN, NAN},
          {"gelu", NAN, NAN},      {"gelu_tanh", NAN, NAN}};
}

template <class T>
std::vector<T> act_points(const Activation& a) {
  const double inf = INFINITY;
  std::vector<double> xs = {0.0,
                            -0.0,
                            1e-300,
                            -1e-300,
                            1e-30,
                            -1e-30,
                            1e-8,
                            -1e-8,
                            0.5,
                            -0.5,
                            1,
                            -1,
                            2,
                            -2,
                            30,
                            -30,
                            700,
                            -700,
                            1e308,
                            -1e308,
                            inf,
                            -inf,
                            NAN,
                            5e-324,
                            -5e-324,
                            1e-45,
                            -1e-45,
                            20,
                            -20,
                            10,
                            -10,
                            37,
                            -37,
                            88,
                            -88,
                            103,
                            -103,
                            745,
                            -745,
                            1e6,
                            -1e6,
                            1e30,
                            -1e30,
                            3e38,
                            -3e38,
                            0.75,
                            -0.75,
                            1.4142135623730951,
                            2.3993572805,
                            -2.3993572805,
                            38.5,
                            -38.5,
                            14,
                            -14};
  if (a.kind == ActKind::softplus) {  // around the threshold
    const double thr = a.beta / a.alpha;
    for (double f : {-1e-9, 0.0, 1e-9, 1e-3, -1e-3}) xs.push_back(thr * (1 + f));
  }
  for (int i = 0; i <= 4000; ++i) xs.push_back(-50.0 + 100.0 * i / 4000);
  for (int i = 0; i <= 2000; ++i) xs.push_back(-8.0 + 16.0 * i / 2000 + 1e-7);
  std::mt19937_64 rng(99);
  std::uniform_real_distribution<double> u(-12, 12);
  for (int i = 0; i < 4000; ++i) xs.push_back(u(rng));
  std::vector<T> v;
  for (double x : xs) v.push_back(static_cast<T>(x));
  return v;
}

template <class T>
void test_activation_values(std::vector<std::string>& table) {
  for (const ActCase& c : act_cases()) {
    const Activation a = vgcore::make_activation(c.name, c.alpha, c.beta);
    const ActRef<T> ref{a};
    const std::vector<T> x = act_points<T>(a);
    const std::size_t n = x.size();
    std::vector<T> y(n), d(n), y2(n), d2(n);
    vgcore::activation_forward<T>(a, x.data(), y.data(), d.data(), n);
    vgcore::activation_forward<T>(a, x.data(), y2.data(), nullptr, n);
    vgcore::activation_derivative<T>(a, x.data(), d2.data(), n);
    double ey = 0, ed = 0, ey2 = 0, ed2 = 0, efd = 0;
    double at_y = 0, at_d = 0;
    const double eps = std::numeric_limits<T>::epsilon();
    for (std::size_t i = 0; i < n; ++i) {
      const LD xi = x[i];
      const auto r = ref.eval(xi);
      // Error in ulp of T, relative to the magnitude of the result (for phi': of its terms),
      // divided by the condition factor of the inner argument. Results in the subnormal range
      // are measured against min_normal * max(1, |x|): there a subnormal factor (sigmoid(x),
      // Phi(x)) carries only a few bits and is multiplied by x.
      const LD floor_ = static_cast<LD>(std::numeric_limits<T>::min()) * std::max<LD>(1, fabsl(xi));
      const LD ys = std::max(fabsl(r.y), floor_),
               ds = std::max(std::max(fabsl(r.d), fabsl(r.dscale)), floor_);
      const double cond = static_cast<double>(r.cond);
      // gelu flushes Phi(x) < min_normal (x < -37.52 / -12.95) and phi(x) there to 0:
      // |x Phi(x)| < |x| min_normal, |phi'(x)| < x^2 min_normal
      if (a.kind == ActKind::gelu && xi < 0 && y[i] == 0 && d[i] == 0 && y2[i] == 0 && d2[i] == 0 &&
          fabsl(r.y) <= floor_ && fabsl(r.d) <= 2 * floor_ * fabsl(xi))
        continue;
      const double e1 = ulp_err<T>(y[i], r.y, ys) / cond, e2 = ulp_err<T>(d[i], r.d, ds) / cond;
      if (e1 > ey) ey = e1, at_y = double(xi);
      if (e2 > ed) ed = e2, at_d = double(xi);
      ey2 = std::max(ey2, ulp_err<T>(y2[i], r.y, ys) / cond);
      ed2 = std::max(ed2, ulp_err<T>(d2[i], r.d, ds) / cond);
      // signed zeros of phi where the reference has them
      if (r.y == 0 && y[i] == 0 &&
          !(a.kind == ActKind::silu || a.kind == ActKind::gelu || a.kind == ActKind::gelu_tanh ||
            a.kind == ActKind::softplus)) {
        CHECK(std::signbit(static_cast<T>(r.y)) == std::signbit(y[i]),
              "%s<%s>: sign of zero at x=%g", c.name.c_str(), tname<T>(), double(xi));
      }
      // derivative vs central finite difference of the exact reference (smooth points only)
      const bool near_kink =
          (a.kind == ActKind::softplus &&
           fabsl(xi * static_cast<LD>(static_cast<T>(a.alpha)) - static_cast<T>(a.beta)) < 1e-3L);
      if (std::isfinite(xi) && fabsl(xi) < 60 && fabsl(xi) > 1e-3 && !near_kink) {
        const LD h = 1e-6L / std::max<LD>(1, xi * xi);
        const LD fp = ref.phi(xi + h), fm_ = ref.phi(xi - h);
        const LD fdv = (fp - fm_) / (2 * h);
        const LD noise =
            8 * std::numeric_limits<LD>::epsilon() * (fabsl(fp) + fabsl(fm_)) / (2 * h);
        const LD sc =
            std::max(std::max(fabsl(fdv), ds), static_cast<LD>(std::numeric_limits<T>::min()));
        const double rel =
            static_cast<double>(std::max<LD>(0, fabsl(d[i] - fdv) - noise) / sc) / cond;
        efd = std::max(efd, rel);
      }
    }
    const double tol = 4.0, dtol = 5.0;  // ulp, against the long double reference
    const std::string label =
        c.name +
        (std::isnan(c.alpha)
             ? ""
             : "(" + std::to_string(c.alpha).substr(0, 4) +
                   (std::isnan(c.beta) ? "" : "," + std::to_string(c.beta).substr(0, 4)) + ")");
    CHECK(ey <= tol && ey2 <= tol, "%s<%s>: phi error %.2f / %.2f ulp (at x=%.17g)", label.c_str(),
          tname<T>(), ey, ey2, at_y);
    CHECK(ed <= dtol && ed2 <= dtol, "%s<%s>: phi' error %.2f / %.2f ulp (at x=%.17g)",
          label.c_str(), tname<T>(), ed, ed2, at_d);
    const double fd_tol = sizeof(T) == 4 ? 2e-6 : 1e-8;
    CHECK(efd <= fd_tol, "%s<%s>: phi' vs finite difference rel. error %.3g", label.c_str(),
          tname<T>(), efd);
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "%-22s %-6s phi %5.2f ulp  phi' %5.2f ulp  (f-only %5.2f, d-only %5.2f)  fd %.1e",
                  label.c_str(), tname<T>(), ey, ed, ey2, ed2, efd);
    table.push_back(buf);
    (void)eps;
  }
}

// torch autograd conventions at kinks and at +-inf, and NaN propagation
template <class T>
void test_activation_conventions() {
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  auto fwd = [](const char* name, double al, double be, T x, T& y, T& d) {
    const Activation a = vgcore::make_activation(name, al, be);
    vgcore::activation_forward<T>(a, &x, &y, &d, 1);
  };
  struct Row {
    const char* name;
    double al, be;
    T x, y, d;
  };
  const T sa = static_cast<T>(vgcore::kSeluAlpha) * static_cast<T>(vgcore::kSeluScale);
  const T ss = static_cast<T>(vgcore::kSeluScale);
  const std::vector<Row> rows = {
      {"relu", NAN, NAN, T(0), T(0), T(0)},
      {"relu", NAN, NAN, T(-0.0), T(-0.0), T(0)},
      {"relu", NAN, NAN, inf, inf, T(1)},
      {"relu", NAN, NAN, -inf, T(0), T(0)},
      {"leaky_relu", NAN, NAN, T(0), T(0), T(0.01)},
      {"leaky_relu", NAN, NAN, T(-0.0), T(-0.0), T(0.01)},
      {"leaky_relu", 0.2, NAN, -inf, -inf, T(0.2)},
      {"elu", NAN, NAN, T(0), T(0), T(1)},
      {"elu", 2.0, NAN, T(0), T(0), T(2)},
      {"elu", 2.0, NAN, T(-0.0), T(-0.0), T(2)},
      {"elu", 0.5, NAN, -inf, T(-0.5), T(0)},
      {"selu", NAN, NAN, T(0), T(0), sa},
      {"selu", NAN, NAN, T(1), ss, ss},
      {"selu", NAN, NAN, -inf, -sa, T(0)},
      {"softplus", NAN, NAN, T(0), static_cast<T>(0.693147180559945309417L), T(0.5)},
      {"softplus", NAN, NAN, T(20), fm::log1p(fm::exp(T(20))),
       fm::sigmoid(T(20))},  // at threshold: not linear
      {"softplus", NAN, NAN, T(21), T(21), T(1)},
      {"softplus", 2.0, 20.0, T(10.5), T(10.5), T(1)},
      {"softplus", NAN, NAN, inf, inf, T(1)},
      {"softplus", NAN, NAN, -inf, T(0), T(0)},
      {"sigmoid", NAN, NAN, T(0), T(0.5), T(0.25)},
      {"sigmoid", NAN, NAN, inf, T(1), T(0)},
      {"sigmoid", NAN, NAN, -inf, T(0), T(0)},
      {"tanh", NAN, NAN, T(0), T(0), T(1)},
      {"tanh", NAN, NAN, T(-0.0), T(-0.0), T(1)},
      {"tanh", NAN, NAN, inf, T(1), T(0)},
      {"tanh", NAN, NAN, -inf, T(-1), T(0)},
      {"silu", NAN, NAN, T(0), T(0), T(0.5)},
      {"silu", NAN, NAN, inf, inf, T(1)},
      {"silu", NAN, NAN, -inf, T(-0.0), T(0)},
      {"gelu", NAN, NAN, T(0), T(0), T(0.5)},
      {"gelu", NAN, NAN, inf, inf, T(1)},
      {"gelu", NAN, NAN, -inf, T(-0.0), T(0)},
      {"gelu_tanh", NAN, NAN, T(0), T(0), T(0.5)},
      {"gelu_tanh", NAN, NAN, inf, inf, T(1)},
      {"gelu_tanh", NAN, NAN, -inf, T(-0.0), T(0)},
      {"identity", NAN, NAN, inf, inf, T(1)},
  };
  for (const Row& r : rows) {
    T y, d;
    fwd(r.name, r.al, r.be, r.x, y, d);
    // phi exactly (sign of zero included); phi' by value (the limit at -inf may be -0)
    CHECK(same_value(y, r.y) && (d == r.d || (std::isnan(d) && std::isnan(r.d))),
          "%s<%s>(%g): got (%.9g, %.9g), want (%.9g, %.9g)", r.name, tname<T>(), double(r.x),
          double(y), double(d), double(r.y), double(r.d));
  }
  for (const ActCase& c : act_cases()) {
    T y, d;
    fwd(c.name.c_str(), c.alpha, c.beta, nan, y, d);
    CHECK(std::isnan(y) && std::isnan(d), "%s<%s>(nan) = (%g, %g)", c.name.c_str(), tname<T>(),
          double(y), double(d));
  }
  // the same special values through the vectorised loops agree with one-element calls
  // (which run the scalar remainder loop)
  const std::vector<T> xs = special_inputs<T>();
  for (const ActCase& c : act_cases()) {
    const Activation a = vgcore::make_activation(c.name, c.alpha, c.beta);
    std::vector<T> y(xs.size()), d(xs.size()), y2(xs.size()), d2(xs.size());
    vgcore::activation_forward<T>(a, xs.data(), y.data(), d.data(), xs.size());
    vgcore::activation_forward<T>(a, xs.data(), y2.data(), nullptr, xs.size());
    vgcore::activation_derivative<T>(a, xs.data(), d2.data(), xs.size());
    for (std::size_t i = 0; i < xs.size(); ++i) {
      T y1, d1;
      vgcore::activation_forward<T>(a, &xs[i], &y1, &d1, 1);
      CHECK(close_or_same(y[i], y1) && close_or_same(d[i], d1) && close_or_same(y2[i], y1) &&
                close_or_same(d2[i], d1),
            "%s<%s> vector path at x=%g: (%g, %g | %g, %g), scalar (%g, %g)", c.name.c_str(),
            tname<T>(), double(xs[i]), double(y[i]), double(d[i]), double(y2[i]), double(d2[i]),
            double(y1), double(d1));
    }
  }
}

// z aliasing y or dy gives the same results as separate arrays
template <class T>
void test_activation_inplace() {
  std::vector<T> x;
  for (int i = 0; i < 1003; ++i) x.push_back(static_cast<T>(-20.0 + 40.0 * i / 1002));
  const std::size_t n = x.size();
  for (const ActCase& c : act_cases()) {
    const Activation a = vgcore::make_activation(c.name, c.alpha, c.beta);
    std::vector<T> y(n), d(n), d2(n);
    vgcore::activation_forward<T>(a, x.data(), y.data(), d.data(), n);
    vgcore::activation_derivative<T>(a, x.data(), d2.data(), n);
    std::vector<T> b = x, e(n);
    vgcore::activation_forward<T>(a, b.data(), b.data(), e.data(), n);  // z == y
    bool ok = true;
    for (std::size_t i = 0; i < n; ++i) ok &= same_value(b[i], y[i]) && same_value(e[i], d[i]);
    CHECK(ok, "%s<%s>: in-place (z == y) differs", c.name.c_str(), tname<T>());
    b = x;
    vgcore::activation_forward<T>(a, b.data(), e.data(), b.data(), n);  // z == dy
    ok = true;
    for (std::size_t i = 0; i < n; ++i) ok &= same_value(e[i], y[i]) && same_value(b[i], d[i]);
    CHECK(ok, "%s<%s>: in-place (z == dy) differs", c.name.c_str(), tname<T>());
    b = x;
    vgcore::activation_forward<T>(a, b.data(), b.data(), nullptr, n);
    ok = true;
    for (std::size_t i = 0; i < n; ++i)
      ok &= std::fabs(b[i] - y[i]) <=
            4 * std::numeric_limits<T>::epsilon() * std::max(T(1e-30), std::fabs(y[i]));
    CHECK(ok, "%s<%s>: in-place forward without dy differs", c.name.c_str(), tname<T>());
    b = x;
    vgcore::activation_derivative<T>(a, b.data(), b.data(), n);
    ok = true;
    for (std::size_t i = 0; i < n; ++i) ok &= same_value(b[i], d2[i]);
    CHECK(ok, "%s<%s>: in-place derivative differs", c.name.c_str(), tname<T>());
  }
}

static void test_api() {
  using vgcore::activation_name;
  using vgcore::make_activation;
  const char* names[] = {"identity", "sigmoid",  "tanh", "relu", "leaky_relu", "elu",
                         "selu",     "softplus", "silu", "gelu", "gelu_tanh"};
  for (int k = 0; k < 11; ++k) {
    const Activation a = make_activation(names[k]);
    CHECK(static_cast<int>(a.kind) == k, "make_activation(%s) kind", names[k]);
    CHECK(activation_name(a.kind) == names[k], "activation_name(%d)", k);
  }
  CHECK(make_activation("linear").kind == ActKind::identity, "alias linear");
  CHECK(make_activation("swish").kind == ActKind::silu, "alias swish");
  CHECK(make_activation("gelu_erf").kind == ActKind::gelu, "alias gelu_erf");
  CHECK(make_activation("TANH").kind == ActKind::tanh, "case-insensitive");
  CHECK(make_activation("leaky_relu").alpha == 0.01, "leaky default");
  CHECK(make_activation("leaky_relu", 0.3).alpha == 0.3, "leaky slope");
  CHECK(make_activation("elu").alpha == 1.0, "elu default");
  {
    const Activation s = make_activation("softplus");
    CHECK(s.alpha == 1.0 && s.beta == 20.0, "softplus defaults");
    const Activation s2 = make_activation("softplus", 2.0, 5.0);
    CHECK(s2.alpha == 2.0 && s2.beta == 5.0, "softplus params");
  }
  auto throws = [](std::function<void()> f, const char* needle) {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what()).find(needle) != std::string::npos;
    }
    return false;
  };
  CHECK(throws([] { make_activation("foo"); },
               "unknown activation 'foo'; expected one of: identity, sigmoid, tanh, relu, "
               "leaky_relu, elu, selu, softplus, silu, gelu, gelu_tanh"),
        "unknown name message");
  CHECK(throws([] { make_activation("tanh", 0.5); }, "takes no"), "param to tanh");
  CHECK(throws([] { make_activation("elu", 1.0, 2.0); }, "takes no"), "2nd param to elu");
  CHECK(throws([] { make_activation("leaky_relu", INFINITY); }, "finite"), "inf param");
  CHECK(throws([] { make_activation("softplus", 0.0); }, "nonzero"), "softplus beta 0");
  CHECK(throws([] { activation_name(static_cast<ActKind>(42)); }, "ActKind"), "bad kind");
  CHECK(make_activation("identity").is_linear(), "identity linear");
  CHECK(make_activation("leaky_relu", 1.0).is_linear(), "leaky slope 1 linear");
  CHECK(!make_activation("relu").is_linear() && !make_activation("leaky_relu").is_linear(),
        "relu not linear");
  // max_derivative: compare with the sup of |phi'| sampled on a fine grid
  for (const ActCase& c : act_cases()) {
    const Activation a = make_activation(c.name, c.alpha, c.beta);
    const ActRef<double> ref{a};
    LD sup = 0;
    for (int i = -160000; i <= 160000; ++i) sup = std::max(sup, fabsl(ref.eval(i * 5e-5L).d));
    for (int i = -10000; i <= 10000; ++i) sup = std::max(sup, fabsl(ref.eval(i * 1e-2L).d));
    const double md = a.max_derivative();
    CHECK(std::fabs(md - double(sup)) <= 1e-8 * md && double(sup) <= md * (1 + 1e-15),
          "%s: max_derivative %.17g vs sampled sup %.17g", c.name.c_str(), md, double(sup));
  }
  CHECK(std::fabs(make_activation("sigmoid").max_derivative() - 0.25) == 0, "sigmoid max d");
}

// No floating-point underflow for arguments in [-10, 10] (where no result or derivative is
// subnormal): guards against vectorised code that computes a clamped special-case path with
// subnormal intermediates for every element, which costs a microcode assist per vector
// (a 5-10x slowdown); see the note at fastmath::detail::cdf_tail.
template <class T, class F>
bool underflows(Kernel<T> k, const std::vector<T>& x, std::vector<T>& y) {
  std::feclearexcept(FE_ALL_EXCEPT);
  k(x.data(), y.data(), x.size());
  return std::fetestexcept(FE_UNDERFLOW) != 0;
}

template <class T>
void test_no_underflow() {
  std::vector<T> x, y, d;
  for (int i = 0; i <= 20000; ++i) x.push_back(static_cast<T>(-10.0 + 20.0 * i / 20000));
  y.resize(x.size());
  d.resize(x.size());
#define VG_UF(F)                                                                             \
  for (const Isa<T>& isa : kernels<T, F>())                                                  \
    CHECK((!underflows<T, F>(isa.k, x, y)), "%s<%s> [%s]: underflow for x in [-10, 10]", #F, \
          tname<T>(), isa.name);
  VG_UF(F_exp);
  VG_UF(F_expm1);
  VG_UF(F_log1p);
  VG_UF(F_tanh);
  VG_UF(F_sigmoid);
  VG_UF(F_softplus);
  VG_UF(F_erf);
  VG_UF(F_erfc);
  VG_UF(F_normal_cdf);
  VG_UF(F_normal_pdf);
#undef VG_UF
  for (const ActCase& c : act_cases()) {
    const Activation a = vgcore::make_activation(c.name, c.alpha, c.beta);
    std::feclearexcept(FE_ALL_EXCEPT);
    vgcore::activation_forward<T>(a, x.data(), y.data(), d.data(), x.size());
    vgcore::activation_forward<T>(a, x.data(), y.data(), nullptr, x.size());
    vgcore::activation_derivative<T>(a, x.data(), d.data(), x.size());
    CHECK(!std::fetestexcept(FE_UNDERFLOW), "%s<%s>: underflow for x in [-10, 10]", c.name.c_str(),
          tname<T>());
  }
}

// ---------------------------------------------------------------------------------------------
// timing

template <class F>
double time_ns(F&& f, std::size_t n, int reps = 7) {
  double best = 1e300;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double, std::nano>(t1 - t0).count() / n);
  }
  return best;
}

static volatile double g_sink;

template <class T, class FFast, class FStd>
void time_fn(const char* name, const std::vector<T>& x, std::vector<T>& y) {
  const std::size_t n = x.size();
  auto run = [&](Kernel<T> k) {
    return time_ns(
        [&] {
          k(x.data(), y.data(), n);
          g_sink = y[n / 2];
        },
        n);
  };
  const double ts = run(&run_base<T, FStd>);
  std::printf("  %-8s %-6s std:: %6.2f ns", name, tname<T>(), ts);
  for (const Isa<T>& isa : kernels<T, FFast>()) {
    const double t = run(isa.k);
    std::printf("  | fastmath %s %6.3f ns (x%.1f)", isa.name, t, ts / t);
  }
  std::printf("\n");
}

template <class T>
void timings() {
  const std::size_t n = 1000000;
  std::vector<T> x(n), y(n), d(n);
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<double> u(-10, 10);
  for (T& v : x) v = static_cast<T>(u(rng));
  time_fn<T, F_exp, F_std_exp>("exp", x, y);
  time_fn<T, F_tanh, F_std_tanh>("tanh", x, y);
  time_fn<T, F_sigmoid, F_std_sigmoid>("sigmoid", x, y);
  std::printf("  activation_forward<%s> (dispatched build), ns/element:", tname<T>());
  for (const char* nm :
       {"relu", "sigmoid", "tanh", "elu", "softplus", "silu", "gelu", "gelu_tanh"}) {
    const Activation a = vgcore::make_activation(nm);
    const double t1 =
        time_ns([&] { vgcore::activation_forward<T>(a, x.data(), y.data(), nullptr, n); }, n);
    const double t2 =
        time_ns([&] { vgcore::activation_forward<T>(a, x.data(), y.data(), d.data(), n); }, n);
    std::printf("\n    %-10s phi %.3f  phi+phi' %.3f", nm, t1, t2);
  }
  std::printf("\n");
}

// ---------------------------------------------------------------------------------------------

int main(int argc, char** argv) {
  bool timing = true;
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--no-timing") timing = false;

  test_fastmath_special<double>();
  test_fastmath_special<float>();
  test_fastmath_vector_specials<double>();
  test_fastmath_vector_specials<float>();
  test_fastmath_sweeps<double>();
  test_fastmath_sweeps<float>();

  std::printf(
      "\n== activations vs long double reference (max error in ulp of the type; phi' "
      "error relative to the magnitude of its terms; fd = rel. difference of phi' from a "
      "central finite difference)\n");
  std::vector<std::string> table;
  test_activation_values<double>(table);
  test_activation_values<float>(table);
  for (const std::string& r : table) std::printf("  %s\n", r.c_str());
  test_activation_conventions<double>();
  test_activation_conventions<float>();
  test_activation_inplace<double>();
  test_activation_inplace<float>();
  test_api();
  test_no_underflow<double>();
  test_no_underflow<float>();

  if (timing) {
    std::printf("\n== timings (1e6 elements, uniform in [-10, 10], best of 7; not asserted)\n");
    timings<double>();
    timings<float>();
  }
  if (g_failures) {
    std::printf("\n%d check(s) FAILED\n", g_failures);
    return 1;
  }
  std::printf("\nall checks passed\n");
  return 0;
}

// vgcore/activations.cpp -- see activations.hpp.
//
// Each activation is a small "op" struct with branch-free scalar members
//   T f(T x)                    phi(x)
//   void fd(T x, T& y, T& d)    phi(x) and phi'(x)
//   T d(T x)                    phi'(x)
// built from vgcore/fastmath.hpp. The kind is switched on once per call; the element loops
// (loop_f / loop_fd / loop_d) are plain counted loops that GCC vectorises. Vectorising them
// needs -fno-trapping-math on SSE2/AVX2 targets (otherwise GCC will not if-convert the
// selects); CMake compiles the core with it. On x86-64 with GCC (glibc) the loops are also
// compiled as target_clones for x86-64-v3 (AVX2+FMA) and x86-64-v4 (AVX-512), picked at load
// time; define VGCORE_NO_TARGET_CLONES to compile a single (baseline) version only.

#include "vgcore/base/activations.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "vgcore/base/fastmath.hpp"

#if defined(__GNUC__) && !defined(__clang__) && !defined(__NO_TRAPPING_MATH__) && \
    !defined(VGCORE_NO_TRAPPING_MATH_WARNING)
#warning "compile vgcore/activations.cpp with -fno-trapping-math, or its loops are not vectorised"
#endif

namespace vgcore {
namespace {

namespace fmd = fastmath::detail;

// NaN if x is NaN, else v (derivatives of piecewise-linear functions).
template <class T>
VGCORE_FM_INLINE T nan_if_nan(T x, T v) {
  return x == x ? v : x;
}

template <class T>
struct OpIdentity {
  explicit OpIdentity(const Activation&) {}
  VGCORE_FM_INLINE T f(T x) const { return x; }
  VGCORE_FM_INLINE T d(T x) const { return nan_if_nan(x, T(1)); }
  VGCORE_FM_INLINE void fd(T x, T& y, T& dd) const {
    y = x;
    dd = d(x);
  }
};

template <class T>
struct OpSigmoid {
  explicit OpSigmoid(const Activation&) {}
  VGCORE_FM_INLINE T f(T x) const { return fmd::sigmoid_impl(x); }
  VGCORE_FM_INLINE void fd(T x, T& y, T& dd) const {
    T s, sm;
    fmd::sigmoid2(x, s, sm);
    y = s;
    dd = s * sm;  // sigma(x) sigma(-x): relative accuracy in both tails
  }
  VGCORE_FM_INLINE T d(T x) const {
    T y, dd;
    fd(x, y, dd);
    return dd;
  }
};

template <class T>
struct OpTanh {
  explicit OpTanh(const Activation&) {}
  VGCORE_FM_INLINE T f(T x) const { return fmd::tanh_impl(x); }
  VGCORE_FM_INLINE void fd(T x, T& y, T& dd) const { fmd::tanh_sech2(x, y, dd); }
  VGCORE_FM_INLINE T d(T x) const {
    T y, dd;
    fmd::tanh_sech2(x, y, dd);
    return dd;
  }
};

template <class T>
struct OpRelu {
  explicit OpRelu(const Activation&) {}
  // as torch's clamp_min(x, 0): relu(-0) = -0, relu(NaN) = NaN; relu'(0) = 0
  VGCORE_FM_INLINE T f(T x) const { return x < T(0) ? T(0) : x; }
  VGCORE_FM_INLINE T d(T x) const { return nan_if_nan(x, x > T(0) ? T(1) : T(0)); }
  VGCORE_FM_INLINE void fd(T x, T& y, T& dd) const {
    y = f(x);
    dd = d(x);
  }
};

template <class T>
struct OpLeaky {
  T slope;
  explicit OpLeaky(const Activation& a) : slope(static_cast<T>(a.alpha)) {}
  // as torch: x > 0 ? x : x * slope, so leaky(-0) = -0 and leaky'(0) = slope
  VGCORE_FM_INLINE T f(T x) const { return x > T(0) ? x : x * slope; }
  VGCORE_FM_INLINE T d(T x) const { return nan_if_nan(x, x > T(0) ? T(1) : slope); }
  VGCORE_FM_INLINE void fd(T x, T& y, T& dd) const {
    y = f(x);
    dd = d(x);
  }
};

// ELU and SELU: x > 0 ? pos * x : neg * expm1(x); derivative pos or neg * exp(x) (torch uses
// the negative branch at 0: elu'(0) = alpha). NaN propagates through exp.
template <class T>
struct OpElu {
  T pos, neg;
  OpElu(T p, T n) : pos(p), neg(n) {}
  VGCORE_FM_INLINE T f(T x) const {
    T ex, em1;
    fmd::exp_expm1(x, ex, em1);
    return x > T(0) ? pos * x : neg * em1;
  }
  VGCORE_FM_INLINE T d(T x) const { return x > T(0) ? pos : neg * fmd::exp_impl(x); }
  VGCORE_FM_INLINE void fd(T x, T& y, T& dd) const {
    T ex, em1;
    fmd::exp_expm1(x, ex, em1);
    const bool p = x > T(0);
    y = p ? pos * x : neg * em1;
    dd = p ? pos : neg * ex;
  }
};

template <class T>
OpElu<T> make_elu(const Activation& a) {
  if (a.kind == ActKind::selu)  // torch: negcoef = alpha * scale in the computation type
    return OpElu<T>(static_cast<T>(kSeluScale),
                    static_cast<T>(kSeluAlpha) * static_cast<T>(kSeluScale));
  return OpElu<T>(T(1), static_cast<T>(a.alpha));
}

// softplus (torch): beta*x > threshold ? x : log1p(exp(beta*x)) / beta, derivative
// sigmoid(beta*x) (1 above the threshold). log1p(exp(v)) is evaluated as
// max(v, 0) + log1p(exp(-|v|)) (no overflow for large thresholds). UnitBeta: beta == 1 (the
// default), which saves the multiplication and division.
template <class T, bool UnitBeta>
struct OpSoftplus {
  T beta, threshold;
  explicit OpSoftplus(const Activation& a)
      : beta(static_cast<T>(a.alpha)), threshold(static_cast<T>(a.beta)) {}
  VGCORE_FM_INLINE void fd(T x, T& y, T& dd) const {
    const T v = UnitBeta ? x : x * beta;
    T sp, sg;
    fmd::softplus_sigmoid(v, sp, sg);
    const bool lin = v > threshold;
    y = lin ? x : (UnitBeta ? sp : sp / beta);
    dd = lin ? T(1) : sg;
  }
  VGCORE_FM_INLINE T f(T x) const {
    T y, dd;
    fd(x, y, dd);
    return y;
  }
  VGCORE_FM_INLINE T d(T x) const {
    const T v = UnitBeta ? x : x * beta;
    return v > threshold ? T(1) : fmd::sigmoid_impl(v);
  }
};

// Beyond +-kBig the sigmoid factor of silu / gelu_tanh is exactly 0 or 1; clamping there avoids
// inf * 0 at +-inf (the limits are returned: phi(-inf) = -0, phi'(-inf) = 0, phi'(+inf) = 1).
template <class T>
struct Big;
template <>
struct Big<double> {
  static constexpr double silu = 750.0, gelu_tanh = 40.0;
};
template <>
struct Big<float> {
  static constexpr float silu = 110.0f, gelu_tanh = 20.0f;
};

template <class T>
struct OpSilu {
  explicit OpSilu(const Activation&) {}
  static constexpr T B = Big<T>::silu;
  VGCORE_FM_INLINE T f(T x) const {
    const T xl = x < -B ? -B : x;
    return xl * fmd::sigmoid_impl(x);
  }
  VGCORE_FM_INLINE void fd(T x, T& y, T& dd) const {
    T s, sm;
    fmd::sigmoid2(x, s, sm);
    const T xm = fmd::clamp_nan(x, -B, B);
    y = (x < -B ? -B : x) * s;
    dd = s * (T(1) + xm * sm);  // sigma(x) (1 + x sigma(-x))
  }
  VGCORE_FM_INLINE T d(T x) const {
    T y, dd;
    fd(x, y, dd);
    return dd;
  }
};

// exact GELU x Phi(x), derivative Phi(x) + x phi(x); Phi with relative accuracy in the left
// tail (torch's 0.5 (1 + erf(x/sqrt 2)) cancels to 0 there).
template <class T>
struct OpGelu {
  explicit OpGelu(const Activation&) {}
  static constexpr T B = fmd::K<T>::cdf_max;  // Phi(-B) == 0, B phi(B) == 0
  VGCORE_FM_INLINE void fd(T x, T& y, T& dd) const {
    T tail, pdf;
    fmd::cdf_tail(fmd::fabs_(x), tail, pdf);
    const T cdf = fmd::cdf_from_tail(x, tail);
    y = (x < -B ? -B : x) * cdf;
    dd = cdf + fmd::clamp_nan(x, -B, B) * pdf;
  }
  VGCORE_FM_INLINE T f(T x) const {
    T tail, pdf;
    fmd::cdf_tail(fmd::fabs_(x), tail, pdf);
    const T cdf = fmd::cdf_from_tail(x, tail);
    return (x < -B ? -B : x) * cdf;
  }
  VGCORE_FM_INLINE T d(T x) const {
    T y, dd;
    fd(x, y, dd);
    return dd;
  }
};

// torch approximate='tanh': 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), evaluated
// as x sigmoid(2u) (same function, no cancellation for x < 0); derivative
// 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) u' = s + 2 x s (1 - s) u', s = sigmoid(2u).
template <class T>
struct OpGeluTanh {
  explicit OpGeluTanh(const Activation&) {}
  static constexpr T B = Big<T>::gelu_tanh;
  // torch: M_SQRT2 * M_2_SQRTPI * 0.5 (== sqrt(2/pi) rounded) and 0.044715, cast to T
  static constexpr T kBeta = static_cast<T>(0.79788456080286535587989211986876);
  static constexpr T kKappa = static_cast<T>(0.044715);
  VGCORE_FM_INLINE void fd(T x, T& y, T& dd) const {
    const T xm = fmd::clamp_nan(x, -B, B);
    const T u = kBeta * (xm + kKappa * (xm * xm * xm));
    T s, sm;
    fmd::sigmoid2(T(2) * u, s, sm);
    y = (x < -B ? -B : x) * s;
    const T du = kBeta * (T(1) + T(3) * kKappa * (xm * xm));
    dd = s + (T(2) * xm) * (s * sm) * du;
  }
  VGCORE_FM_INLINE T f(T x) const {
    const T xm = fmd::clamp_nan(x, -B, B);
    const T u = kBeta * (xm + kKappa * (xm * xm * xm));
    return (x < -B ? -B : x) * fmd::sigmoid_impl(T(2) * u);
  }
  VGCORE_FM_INLINE T d(T x) const {
    T y, dd;
    fd(x, y, dd);
    return dd;
  }
};

// ---- element loops --------------------------------------------------------------------------
// z may equal y or dy: every iteration reads z[i] before writing index i, and GCC's runtime
// alias check accepts identical pointers (dependence distance 0) for the vector path.

template <class T, class Op>
VGCORE_TARGET_CLONES void loop_f(Op op, const T* z, T* y, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) y[i] = op.f(z[i]);
}

template <class T, class Op>
VGCORE_TARGET_CLONES void loop_fd(Op op, const T* z, T* y, T* dy, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const T x = z[i];
    T a, b;
    op.fd(x, a, b);
    y[i] = a;
    dy[i] = b;
  }
}

template <class T, class Op>
VGCORE_TARGET_CLONES void loop_d(Op op, const T* z, T* dy, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) dy[i] = op.d(z[i]);
}

template <class T, class F>
void with_op(const Activation& a, F&& f) {
  switch (a.kind) {
    case ActKind::identity:
      return f(OpIdentity<T>(a));
    case ActKind::sigmoid:
      return f(OpSigmoid<T>(a));
    case ActKind::tanh:
      return f(OpTanh<T>(a));
    case ActKind::relu:
      return f(OpRelu<T>(a));
    case ActKind::leaky_relu:
      return f(OpLeaky<T>(a));
    case ActKind::elu:
    case ActKind::selu:
      return f(make_elu<T>(a));
    case ActKind::softplus:
      if (a.alpha == 1.0) return f(OpSoftplus<T, true>(a));
      return f(OpSoftplus<T, false>(a));
    case ActKind::silu:
      return f(OpSilu<T>(a));
    case ActKind::gelu:
      return f(OpGelu<T>(a));
    case ActKind::gelu_tanh:
      return f(OpGeluTanh<T>(a));
  }
  throw std::invalid_argument("vgcore: invalid ActKind " +
                              std::to_string(static_cast<int>(a.kind)));
}

constexpr const char* kNames[] = {"identity", "sigmoid",  "tanh", "relu", "leaky_relu", "elu",
                                  "selu",     "softplus", "silu", "gelu", "gelu_tanh"};
constexpr int kNumKinds = static_cast<int>(sizeof(kNames) / sizeof(kNames[0]));

std::string lower(const std::string& s) {
  std::string r(s);
  for (char& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

std::string fmt_param(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

std::string activation_name(ActKind kind) {
  const int k = static_cast<int>(kind);
  if (k < 0 || k >= kNumKinds)
    throw std::invalid_argument("vgcore: invalid ActKind " + std::to_string(k));
  return kNames[k];
}

Activation make_activation(const std::string& name, double alpha, double beta) {
  std::string key = lower(name);
  if (key == "linear" || key == "none")
    key = "identity";
  else if (key == "swish")
    key = "silu";
  else if (key == "gelu_erf")
    key = "gelu";
  int k = 0;
  while (k < kNumKinds && key != kNames[k]) ++k;
  if (k == kNumKinds) {
    std::string msg = "unknown activation '" + name + "'; expected one of: ";
    for (int i = 0; i < kNumKinds; ++i) msg += (i ? ", " : "") + std::string(kNames[i]);
    throw std::invalid_argument(msg);
  }
  Activation a;
  a.kind = static_cast<ActKind>(k);
  const std::string canon = kNames[k];
  const auto check_finite = [&](double v, const char* what) {
    if (std::isinf(v))
      throw std::invalid_argument("activation '" + canon + "': " + what + " must be finite, got " +
                                  fmt_param(v));
  };
  const auto no_param = [&](double v, const char* what) {
    if (!std::isnan(v))
      throw std::invalid_argument("activation '" + canon + "' takes no " + what +
                                  " parameter (got " + fmt_param(v) + ")");
  };
  switch (a.kind) {
    case ActKind::leaky_relu:
      check_finite(alpha, "negative_slope");
      no_param(beta, "second");
      a.alpha = std::isnan(alpha) ? 0.01 : alpha;
      break;
    case ActKind::elu:
      check_finite(alpha, "alpha");
      no_param(beta, "second");
      a.alpha = std::isnan(alpha) ? 1.0 : alpha;
      break;
    case ActKind::softplus:
      check_finite(alpha, "beta");
      check_finite(beta, "threshold");
      a.alpha = std::isnan(alpha) ? 1.0 : alpha;
      a.beta = std::isnan(beta) ? 20.0 : beta;
      if (a.alpha == 0.0)
        throw std::invalid_argument("activation 'softplus': beta must be nonzero");
      break;
    default:
      no_param(alpha, "alpha");
      no_param(beta, "beta");
      break;
  }
  return a;
}

double Activation::max_derivative() const {
  switch (kind) {
    case ActKind::identity:
    case ActKind::tanh:
    case ActKind::relu:
    case ActKind::softplus:
      return 1.0;
    case ActKind::sigmoid:
      return 0.25;
    case ActKind::leaky_relu:
    case ActKind::elu:
      return std::max(1.0, std::fabs(alpha));
    case ActKind::selu:
      return kSeluScale * kSeluAlpha;  // 1.7580993408473769
    case ActKind::silu:
      return 1.0998393201288669;  // at x = 2.3993572805
    case ActKind::gelu:
      return 1.1289041451851548;  // at x = sqrt(2)
    case ActKind::gelu_tanh:
      return 1.1289930686587718;  // at x = 1.4185040088
  }
  return 1.0;
}

bool Activation::is_linear() const {
  return kind == ActKind::identity || (kind == ActKind::leaky_relu && alpha == 1.0);
}

template <class T>
void activation_forward(const Activation& a, const T* z, T* y, T* dy, std::size_t n) {
  if (n == 0) return;
  if (a.kind == ActKind::identity && !dy) {
    if (y != z) std::memmove(y, z, n * sizeof(T));
    return;
  }
  with_op<T>(a, [&](auto op) {
    if (dy)
      loop_fd<T>(op, z, y, dy, n);
    else
      loop_f<T>(op, z, y, n);
  });
}

template <class T>
void activation_derivative(const Activation& a, const T* z, T* dy, std::size_t n) {
  if (n == 0) return;
  with_op<T>(a, [&](auto op) { loop_d<T>(op, z, dy, n); });
}

template void activation_forward<float>(const Activation&, const float*, float*, float*,
                                        std::size_t);
template void activation_forward<double>(const Activation&, const double*, double*, double*,
                                         std::size_t);
template void activation_derivative<float>(const Activation&, const float*, float*, std::size_t);
template void activation_derivative<double>(const Activation&, const double*, double*, std::size_t);

}  // namespace vgcore

// vgcore/fastmath.hpp -- branch-free, auto-vectorisable elementary functions.
//
// Every function here is a straight-line inline function of one float or double: no table
// look-ups, no data-dependent branches (special cases are handled with selects), no calls into
// libm. A loop such as
//
//     for (std::size_t i = 0; i < n; ++i) y[i] = vgcore::fastmath::sigmoid(x[i]);
//
// is vectorised by GCC -O3 with the baseline x86-64 (SSE2) target as well as with AVX2 /
// AVX-512 targets (see tests/cpp/README.md for how this was checked). No -ffast-math is
// needed or assumed: the code relies on IEEE semantics (e.g. (x + S) - S rounding tricks, the
// exactness of Sterbenz subtractions), so do NOT compile it with -ffast-math /
// -fassociative-math. -fno-math-errno / -fno-trapping-math are harmless but not required.
// FMA contraction (-ffp-contract=fast, GCC's default even in ISO mode for C++) is harmless.
//
// float versions compute in float (twice the vector width of double) with float-tuned
// polynomials; double versions in double. Accuracy (max error in ulp over dense sweeps,
// measured by tests/cpp/test_activations.cpp against long double libm):
//
//   function      double   float      notes
//   exp           <= 1     <= 1       overflow -> +inf, underflow -> 0 (subnormals kept)
//   expm1         <= 2     <= 2       relative accuracy near 0, expm1(-0) = -0
//   log1p         <= 2     <= 2       log1p(-1) = -inf, x < -1 -> NaN
//   tanh          <= 3     <= 3       odd, exact +-1 saturation, tanh(+-0) = +-0
//   sigmoid       <= 3     <= 3       never NaN for non-NaN x, relative accuracy in both tails
//   softplus      <= 3     <= 3       log(1 + exp(x)) computed stably
//   erf           <= 3     <= 3
//   erfc          <= 4     <= 4       relative accuracy in the right tail (to underflow)
//   normal_cdf    <= 4     <= 4       Phi(x); relative accuracy in the left tail
//   normal_pdf    <= 2     <= 2
//
// (the exact measured values are printed by the test; the test fails above these bounds.)
//
// Techniques (standard ones): Cody-Waite range reduction x = n ln2 + r with a split ln2,
// n obtained by the "add 1.5*2^p" rounding trick, 2^n built from integer bits (as two
// factors 2^(n/2) so that overflow, underflow and subnormal results come out right),
// minimax polynomials / a minimax rational function fitted for this file (Remez / Lawson
// iterations in 50-digit arithmetic), log via the atanh series in s = f/(2+f), and
// exp(-x^2) computed from a 26-bit (float: 12-bit) split of x so that the Gaussian tail keeps
// full relative accuracy.

#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__GNUC__) || defined(__clang__)
#define VGCORE_FM_INLINE inline __attribute__((always_inline))
#else
#define VGCORE_FM_INLINE inline
#endif

namespace vgcore {
namespace fastmath {
namespace detail {

template <class T>
struct K;

template <>
struct K<double> {
  using U = std::uint64_t;
  static constexpr int mbits = 52;                             // stored mantissa bits
  static constexpr U bias = 1023;
  static constexpr U sign_mask = U(1) << 63;
  static constexpr double shift = 0x1.8p52;                    // (v + shift) - shift = rint(v)
  static constexpr double log2e = 0x1.71547652b82fep+0;
  static constexpr double ln2hi = 0x1.62e42fefa3800p-1;       // 11 trailing zero bits
  static constexpr double ln2lo = 0x1.ef35793c76730p-45;
  static constexpr double exp_min = -746.0;                    // exp(x) rounds to 0 below
  static constexpr double exp_max = 710.0;                     // exp(x) overflows above
  static constexpr double em1_big = 40.0;                      // expm1(x) == exp(x) above
  static constexpr U split_mask = ~U(0) << 27;                // keep 26 significant bits
  static constexpr double cdf_max = 40.0;                      // Phi(-x) == 0 beyond
  static constexpr double erfc_max = 28.0;                     // erfc(x) == 0 beyond
  static constexpr double erf_small = 0.5;                     // erf polynomial below
  static constexpr double sqrt2 = 0x1.6a09e667f3bcdp+0;
  static constexpr double inv_sqrt2pi = 0x1.9884533d43651p-2; // 1/sqrt(2 pi)
};

template <>
struct K<float> {
  using U = std::uint32_t;
  static constexpr int mbits = 23;
  static constexpr U bias = 127;
  static constexpr U sign_mask = U(1) << 31;
  static constexpr float shift = 0x1.8p23f;
  static constexpr float log2e = 0x1.715476p+0f;
  static constexpr float ln2hi = 0x1.62e4p-1f;                 // 8 trailing zero bits
  static constexpr float ln2lo = 0x1.7f7d1cp-20f;
  static constexpr float exp_min = -104.0f;
  static constexpr float exp_max = 89.0f;
  static constexpr float em1_big = 18.0f;
  static constexpr U split_mask = ~U(0) << 12;                // keep 12 significant bits
  static constexpr float cdf_max = 15.0f;
  static constexpr float erfc_max = 10.5f;
  static constexpr float erf_small = 0.5f;
  static constexpr float sqrt2 = 0x1.6a09e6p+0f;
  static constexpr float inv_sqrt2pi = 0x1.988454p-2f;
};

template <class T>
VGCORE_FM_INLINE typename K<T>::U to_bits(T x) {
  typename K<T>::U u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

template <class T>
VGCORE_FM_INLINE T from_bits(typename K<T>::U u) {
  T x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// Horner's scheme, coefficients in increasing order of degree.
template <class T>
VGCORE_FM_INLINE T horner(T, T c0) {
  return c0;
}
template <class T, class... C>
VGCORE_FM_INLINE T horner(T x, T c0, C... c) {
  return c0 + x * horner(x, static_cast<T>(c)...);
}

// Selects written so that a NaN x passes through (comparisons with NaN are false).
template <class T>
VGCORE_FM_INLINE T clamp_nan(T x, T lo, T hi) {
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}

template <class T>
VGCORE_FM_INLINE T fabs_(T x) {
  return from_bits<T>(to_bits(x) & ~K<T>::sign_mask);
}

// magnitude of a with the sign of b
template <class T>
VGCORE_FM_INLINE T copysign_(T a, T b) {
  return from_bits<T>((to_bits(a) & ~K<T>::sign_mask) | (to_bits(b) & K<T>::sign_mask));
}

// ---- polynomial / rational kernels ----------------------------------------------------------

// (expm1(r) - r) / r^2 on |r| <= ln2/2 (+ margin): minimax, rel. error 2.8e-18 (double),
// 2.7e-9 (float).
VGCORE_FM_INLINE double expq(double r) {
  return horner(r, 0.5000000000000000001253, 0.1666666666666667102806, 0.04166666666666661770781,
                0.008333333333326079959527, 0.001388888888891831181748,
                0.0001984126987502674709092, 0.0000248015872452336480504,
                0.000002755725512626463959347, 2.755734980277358444014e-7,
                2.510533501812294879523e-8, 2.088941284772367562009e-9);
}
VGCORE_FM_INLINE float expq(float r) {
  return horner(r, 0.5000000013501795f, 0.1666666653114142f, 0.04166646430311309f,
                0.008333360880686055f, 0.001393373358320232f, 0.0001985785008217478f);
}

// T(z) with log(1+f) = 2 atanh(s) = 2s + s z T(z), s = f/(2+f), z = s^2 <= 0.02944:
// minimax, rel. error 4.6e-16 (double), 2.8e-7 (float); both far below what is needed
// because the term is multiplied by z.
VGCORE_FM_INLINE double logt(double z) {
  return horner(z, 0.6666666666666669701735, 0.3999999999989911394281, 0.2857142862613401718226,
                0.2222221111128356197666, 0.1818289070016971246113, 0.1533167300947711009914,
                0.1461701155778907676507);
}
VGCORE_FM_INLINE float logt(float z) {
  return horner(z, 0.6666668510558662f, 0.3998876175827285f, 0.2958061547535446f);
}

// erf(x)/x as a polynomial in z = x^2, |x| <= 0.5: minimax, rel. error 3.9e-18 / 1.4e-9.
VGCORE_FM_INLINE double erfp(double z) {
  return horner(z, 1.128379167095512569465, -0.3761263890318346707431, 0.1128379167092481272595,
                -0.02686617063271577586336, 0.005223977370326190290136,
                -0.0008548297524384765578678, 0.0001205332431334819148732,
                -0.00001484558373494891016755, 0.000001472321535141165075379);
}
VGCORE_FM_INLINE float erfp(float z) {
  return horner(z, 1.128379165567347f, -0.3761260857285337f, 0.1128282281002262f,
                -0.02675718427581820f, 0.004717990080673098f);
}

// Mills-type ratio Q(y) = exp(y^2/2) Phi(-y) for 0 <= y <= 40 (double) / 15 (float):
// minimax rational of degree 10/11 (rel. error 1e-18, 6e-17 with rounded coefficients) and
// 4/5 (6e-9 / 3e-8). All coefficients are positive, so Horner evaluation for y >= 0 is
// free of cancellation.
VGCORE_FM_INLINE double mills(double y) {
  const double p = horner(y, 0.5000000000000000004890244, 0.8286474038792287624219022,
                          0.6807376541567893969129392, 0.3582164257392520859495805,
                          0.1324738216580691293925644, 0.0358133378620472086823227,
                          0.007158361180620945284875116, 0.001045915432918253215450511,
                          0.0001073241517051527679023522, 0.000007033785222597449994222144,
                          0.0000002263701291477060595675009);
  const double q = horner(y, 1.0, 2.455179368561323103851334, 2.820425020490378076607898,
                          2.005178266216962809905407, 0.9826191507342687056044834,
                          0.3494736013738578287003894, 0.09235718459920726419736089,
                          0.0182112374285305652852672, 0.002639352282133188625294991,
                          0.0002695891789782536032792059, 0.00001763108491667169224624721,
                          0.0000005674257662533956827712658);
  return p / q;
}
VGCORE_FM_INLINE float mills(float y) {
  const float p = horner(y, 0.5000000031123322f, 0.4392886280235970f, 0.1839720267085441f,
                         0.04088181103398351f, 0.004153239257570743f);
  const float q = horner(y, 1.0f, 1.676462258743682f, 1.205562376959570f, 0.4714160383767107f,
                         0.1024816150995107f, 0.01041051541127112f);
  return p / q;
}

// ---- exp kernel -----------------------------------------------------------------------------

// exp(x + lo) = (1 + e) * s1 * s2 with e = expm1(r), s1 * s2 = 2^n. x must already be clamped
// to [exp_min, exp_max] (NaN allowed: it propagates through e); |lo| must be tiny (< 1e-3).
template <class T>
struct ExpParts {
  T e, s1, s2;
};

template <class T, bool HasLo>
VGCORE_FM_INLINE ExpParts<T> exp_reduce(T x, T lo) {
  using C = K<T>;
  using U = typename C::U;
  const T kd = x * C::log2e + C::shift;  // low bits of kd hold n = rint(x / ln2)
  const T n = kd - C::shift;
  T r = x - n * C::ln2hi;  // exact
  if constexpr (HasLo) r = r + lo;
  r = r - n * C::ln2lo;
  ExpParts<T> p;
  p.e = r + (r * r) * expq(r);
  // bits(kd) = B + n with B even and its low (exponent-width) bits zero, so >> 1 gives
  // B/2 + floor(n/2) and the shifts below drop B: s1 = 2^floor(n/2), s2 = 2^(n - floor(n/2)).
  const U ib = to_bits(kd);
  const U h = ib >> 1;
  p.s1 = from_bits<T>((h + C::bias) << C::mbits);
  p.s2 = from_bits<T>((ib - h + C::bias) << C::mbits);
  return p;
}

template <class T>
VGCORE_FM_INLINE T exp_impl(T x) {
  const T xc = clamp_nan(x, K<T>::exp_min, K<T>::exp_max);
  const ExpParts<T> p = exp_reduce<T, false>(xc, T(0));
  return ((T(1) + p.e) * p.s1) * p.s2;
}

// exp(x) for x <= 0 (or NaN)
template <class T>
VGCORE_FM_INLINE T exp_nonpos(T x) {
  const T xc = x < K<T>::exp_min ? K<T>::exp_min : x;
  const ExpParts<T> p = exp_reduce<T, false>(xc, T(0));
  return ((T(1) + p.e) * p.s1) * p.s2;
}

// exp(x) and expm1(x) together (one range reduction).
template <class T>
VGCORE_FM_INLINE void exp_expm1(T x, T& ex, T& em1) {
  const T xc = clamp_nan(x, K<T>::exp_min, K<T>::exp_max);
  const ExpParts<T> p = exp_reduce<T, false>(xc, T(0));
  ex = ((T(1) + p.e) * p.s1) * p.s2;
  const T s = p.s1 * p.s2;  // exact where used (xc <= em1_big)
  T m = s * p.e + (s - T(1));
  m = xc > K<T>::em1_big ? ex : m;
  em1 = x == T(0) ? x : m;  // keep the sign of zero
}

// expm1(x) and exp(x) for x <= 0 (or NaN); no sign-of-zero fix-up.
template <class T>
VGCORE_FM_INLINE void exp_expm1_nonpos(T x, T& ex, T& em1) {
  const T xc = x < K<T>::exp_min ? K<T>::exp_min : x;
  const ExpParts<T> p = exp_reduce<T, false>(xc, T(0));
  ex = ((T(1) + p.e) * p.s1) * p.s2;
  const T s = p.s1 * p.s2;
  em1 = s * p.e + (s - T(1));
}

// exp(-m x^2) for x >= 0 with m = 1/2 or 1, to full relative accuracy even when m x^2 is
// large: x = xh + xl with xh of half precision, so xh^2 is exact and
// m x^2 = m xh^2 + m xl (x + xh).
template <class T>
VGCORE_FM_INLINE T exp_neg_sq(T x, T m) {
  const T xh = from_bits<T>(to_bits(x) & K<T>::split_mask);
  T hi = -(m * (xh * xh));
  const T lo = -(m * ((x - xh) * (x + xh)));
  hi = hi < K<T>::exp_min ? K<T>::exp_min : hi;
  const ExpParts<T> p = exp_reduce<T, true>(hi, lo);
  return ((T(1) + p.e) * p.s1) * p.s2;
}

// sigmoid(x) and sigmoid(-x) = 1 - sigmoid(x), both with relative accuracy.
template <class T>
VGCORE_FM_INLINE void sigmoid2(T x, T& s, T& sm) {
  const T t = exp_nonpos(-fabs_(x));
  const T inv = T(1) / (T(1) + t);
  const bool pos = x >= T(0);
  s = (pos ? T(1) : t) * inv;
  sm = (pos ? t : T(1)) * inv;
}

template <class T>
VGCORE_FM_INLINE T sigmoid_impl(T x) {
  const T t = exp_nonpos(-fabs_(x));
  return (x >= T(0) ? T(1) : t) / (T(1) + t);
}

template <class T>
VGCORE_FM_INLINE T tanh_impl(T x) {
  T ex, em1;
  exp_expm1_nonpos(T(-2) * fabs_(x), ex, em1);  // em1 = expm1(-2|x|) in (-1, 0]
  return copysign_(-em1 / (T(2) + em1), x);
}

// tanh(x) and 1 - tanh(x)^2 = 4 e^{-2|x|} / (2 + expm1(-2|x|))^2 (relative accuracy in the
// tails, where 1 - tanh^2 would cancel).
template <class T>
VGCORE_FM_INLINE void tanh_sech2(T x, T& th, T& d) {
  T ex, em1;
  exp_expm1_nonpos(T(-2) * fabs_(x), ex, em1);
  const T inv = T(1) / (T(2) + em1);
  th = copysign_(-em1 * inv, x);
  d = (T(4) * ex) * (inv * inv);
}

template <class T>
VGCORE_FM_INLINE T log1p_impl(T x) {
  using C = K<T>;
  using U = typename C::U;
  const T u = T(1) + x;
  // u + c == 1 + x exactly (TwoSum)
  const T bp = u - T(1);
  const T ap = u - bp;
  const T c = (T(1) - ap) + (x - bp);
  // u = 2^k m with m in [sqrt(1/2), sqrt(2))
  constexpr U one = C::bias << C::mbits;
  constexpr U sqrt_half = std::is_same<T, double>::value ? U(0x3fe6a09e667f3bcdull) : U(0x3f3504f3u);
  const U iu = to_bits(u) + (one - sqrt_half);
  const U mant_mask = (U(1) << C::mbits) - 1;
  const T m = from_bits<T>((iu & mant_mask) + sqrt_half);
  // k as a float: OR the biased exponent into the mantissa of 2^mbits, subtract.
  const T two_p = from_bits<T>((C::bias + C::mbits) << C::mbits);  // 2^mbits
  const T k = from_bits<T>((iu >> C::mbits) | to_bits(two_p)) - (two_p + T(C::bias));
  const T f = m - T(1);
  const T s = f / (T(2) + f);
  const T z = s * s;
  const T hfsq = T(0.5) * f * f;
  const T R = z * logt(z);
  T r = k * C::ln2hi + ((f - (hfsq - s * (hfsq + R))) + (k * C::ln2lo + c / u));
  // special values
  constexpr T inf = std::numeric_limits<T>::infinity();
  const T special = x == T(-1) ? -inf : (x < T(-1) ? std::numeric_limits<T>::quiet_NaN() : x);
  r = (x > T(-1) && x < inf) ? r : special;  // NaN, +inf: x itself
  return x == T(0) ? x : r;                   // log1p(-0) = -0
}

// log(1 + exp(x)), stably.
template <class T>
VGCORE_FM_INLINE T softplus_impl(T x) {
  const T t = exp_nonpos(-fabs_(x));
  return (x > T(0) ? x : T(0)) + log1p_impl(t);
}

// Phi(-a) for a = |x| (a may be NaN/inf) and the Gaussian factor exp(-a^2/2).
template <class T>
VGCORE_FM_INLINE void cdf_tail(T a, T& tail, T& gauss) {
  const T ac = a > K<T>::cdf_max ? K<T>::cdf_max : a;
  gauss = exp_neg_sq(ac, T(0.5));
  tail = gauss * mills(ac);
}

template <class T>
VGCORE_FM_INLINE T normal_cdf_impl(T x) {
  T tail, gauss;
  cdf_tail(fabs_(x), tail, gauss);
  return x < T(0) ? tail : T(1) - tail;
}

template <class T>
VGCORE_FM_INLINE T normal_pdf_impl(T x) {
  const T a = fabs_(x);
  const T ac = a > K<T>::cdf_max ? K<T>::cdf_max : a;
  return exp_neg_sq(ac, T(0.5)) * K<T>::inv_sqrt2pi;
}

// erfc(a) for a >= 0 (or NaN): exp(-a^2) * 2 Q(a sqrt 2).
template <class T>
VGCORE_FM_INLINE T erfc_pos(T a) {
  const T ac = a > K<T>::erfc_max ? K<T>::erfc_max : a;
  return (T(2) * exp_neg_sq(ac, T(1))) * mills(ac * K<T>::sqrt2);
}

template <class T>
VGCORE_FM_INLINE T erfc_impl(T x) {
  const T c = erfc_pos(fabs_(x));
  return x < T(0) ? T(2) - c : c;
}

template <class T>
VGCORE_FM_INLINE T erf_impl(T x) {
  const T a = fabs_(x);
  const T small = a * erfp(a * a);
  const T big = T(1) - erfc_pos(a);
  return copysign_(a < K<T>::erf_small ? small : big, x);
}

}  // namespace detail

// ---- public API ----------------------------------------------------------------------------

VGCORE_FM_INLINE double exp(double x) { return detail::exp_impl(x); }
VGCORE_FM_INLINE float exp(float x) { return detail::exp_impl(x); }

VGCORE_FM_INLINE double expm1(double x) {
  double e, m;
  detail::exp_expm1(x, e, m);
  return m;
}
VGCORE_FM_INLINE float expm1(float x) {
  float e, m;
  detail::exp_expm1(x, e, m);
  return m;
}

VGCORE_FM_INLINE double log1p(double x) { return detail::log1p_impl(x); }
VGCORE_FM_INLINE float log1p(float x) { return detail::log1p_impl(x); }

VGCORE_FM_INLINE double tanh(double x) { return detail::tanh_impl(x); }
VGCORE_FM_INLINE float tanh(float x) { return detail::tanh_impl(x); }

/// 1 / (1 + exp(-x)); relative accuracy in both tails (sigmoid(-700) = 9.86e-305).
VGCORE_FM_INLINE double sigmoid(double x) { return detail::sigmoid_impl(x); }
VGCORE_FM_INLINE float sigmoid(float x) { return detail::sigmoid_impl(x); }

/// log(1 + exp(x)) without overflow or cancellation.
VGCORE_FM_INLINE double softplus(double x) { return detail::softplus_impl(x); }
VGCORE_FM_INLINE float softplus(float x) { return detail::softplus_impl(x); }

VGCORE_FM_INLINE double erf(double x) { return detail::erf_impl(x); }
VGCORE_FM_INLINE float erf(float x) { return detail::erf_impl(x); }

/// 1 - erf(x), with relative accuracy for large x.
VGCORE_FM_INLINE double erfc(double x) { return detail::erfc_impl(x); }
VGCORE_FM_INLINE float erfc(float x) { return detail::erfc_impl(x); }

/// Standard normal CDF Phi(x) = erfc(-x/sqrt 2)/2, with relative accuracy in the left tail.
VGCORE_FM_INLINE double normal_cdf(double x) { return detail::normal_cdf_impl(x); }
VGCORE_FM_INLINE float normal_cdf(float x) { return detail::normal_cdf_impl(x); }

/// Standard normal density exp(-x^2/2)/sqrt(2 pi).
VGCORE_FM_INLINE double normal_pdf(double x) { return detail::normal_pdf_impl(x); }
VGCORE_FM_INLINE float normal_pdf(float x) { return detail::normal_pdf_impl(x); }

}  // namespace fastmath
}  // namespace vgcore

// vgcore/fastmath.hpp -- branch-free, auto-vectorisable elementary functions.
//
// Every function here is a straight-line inline function of one float or double: no table
// look-ups, no data-dependent branches (special cases are handled with selects), no calls into
// libm. A loop such as
//
//     for (std::size_t i = 0; i < n; ++i) y[i] = vgcore::fastmath::sigmoid(x[i]);
//
// is vectorised by GCC -O3 for the baseline x86-64 (SSE2), x86-64-v3 (AVX2+FMA) and x86-64-v4
// (AVX-512) targets (checked with -fopt-info-vec; see tests/cpp/README.md).
//
// Compiler flags:
//  * -fno-trapping-math is REQUIRED for vectorisation on SSE2/AVX2 targets: without it GCC
//    refuses to if-convert the selects (it treats the speculated FP operations as possibly
//    trapping). AVX-512 targets vectorise even without it (masked operations). The results do
//    not depend on the flag. -fno-math-errno is harmless (no libm calls are made).
//  * Do NOT use -ffast-math / -fassociative-math / -ffinite-math-only: the code relies on IEEE
//    semantics ((x + S) - S rounding, exact Sterbenz subtractions, TwoSum, NaN/inf selects).
//  * FMA contraction (-ffp-contract=fast, GCC's default for C++ even with -std=c++17) is fine;
//    FMA targets are slightly more accurate.
//
// float versions compute in float (twice the vector width of double) with float-tuned
// polynomials; double versions in double. Max error in ulp measured over dense sweeps (~1e6
// points each, including the tails) against long double libm, baseline / FMA targets:
//
//   function     double       float        notes
//   exp          0.92 / 0.96  0.95 / 0.97  overflow -> +inf, underflow -> 0, subnormals kept
//   expm1        1.93 / 1.78  1.38 / 1.39  relative accuracy near 0, expm1(-0) = -0
//   log1p        1.43         1.43         log1p(-1) = -inf, x < -1 -> NaN, log1p(-0) = -0
//   tanh         2.49         2.48         odd, exact +-1 saturation, tanh(+-0) = +-0
//   sigmoid      2.07         2.26         never NaN for non-NaN x; relative accuracy in both
//                                          tails (sigmoid(-700) = 9.86e-305)
//   softplus     1.83 / 1.85  1.86         log(1 + exp(x)) without overflow/cancellation
//   erf          1.83 / 1.70  2.39 / 2.36  odd
//   erfc         3.38 / 3.09  3.78 / 3.36  relative accuracy in the right tail; results below
//                                          DBL_MIN / FLT_MIN (x > 26.54 / 9.19) are 0
//   normal_cdf   3.35 / 2.90  3.44         Phi(x), relative accuracy in the left tail; 0 below
//                                          DBL_MIN / FLT_MIN (x < -37.52 / -12.95)
//   normal_pdf   1.09 / 1.12  1.00 / 1.02
//
// tests/cpp/test_activations.cpp prints these and fails above 1, 2, 2, 3, 3, 3, 3, 4, 4, 2 ulp.
//
// Techniques (standard ones): Cody-Waite range reduction x = n ln2 + r with a split ln2, n by
// the "add 1.5*2^p" rounding trick, 2^n built from integer bits as two factors 2^(n/2) so
// that overflow, underflow and subnormal results come out right; minimax polynomials and
// rational functions fitted for this file (Remez / Lawson iterations in 50-digit arithmetic);
// log via the atanh series in s = f/(2+f); the Gaussian factor exp(-x^2/2) from a
// half-precision split of x (xh^2 exact) so that the normal/erfc tails keep full relative
// accuracy, with the constant 1/sqrt(2 pi) folded into the range reduction; the Mills ratio as
// c / (x + h(x)) with h rational, which keeps Horner rounding errors damped.

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

// Function multi-versioning for the hot loops that call these functions (used by
// activations.cpp; other translation units may use it too): on x86-64 with GCC >= 11 and glibc
// (ifunc), a function declared VGCORE_TARGET_CLONES is compiled for x86-64-v4 (AVX-512),
// x86-64-v3 (AVX2 + FMA) and the baseline, and the best one for the running CPU is chosen at
// load time. Define VGCORE_NO_TARGET_CLONES to get a single baseline version.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    defined(__GLIBC__) && !defined(VGCORE_NO_TARGET_CLONES)
#define VGCORE_TARGET_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VGCORE_TARGET_CLONES
#endif

namespace vgcore {
namespace fastmath {
namespace detail {

template <class T>
struct K;

template <>
struct K<double> {
  using U = std::uint64_t;
  static constexpr int mbits = 52;  // stored mantissa bits
  static constexpr U bias = 1023;
  static constexpr U sign_mask = U(1) << 63;
  static constexpr double shift = 0x1.8p52;  // (v + shift) - shift = rint(v)
  static constexpr double log2e = 0x1.71547652b82fep+0;
  static constexpr double ln2hi = 0x1.62e42fefa3800p-1;  // 11 trailing zero bits
  static constexpr double ln2lo = 0x1.ef35793c76730p-45;
  static constexpr double exp_min = -746.0;     // exp(x) rounds to 0 below
  static constexpr double exp_max = 710.0;      // exp(x) overflows above
  static constexpr double em1_big = 40.0;       // expm1(x) == exp(x) above
  static constexpr U split_mask = ~U(0) << 27;  // keep 26 significant bits
  static constexpr double cdf_max = 37.5194;    // Phi(-x) < DBL_MIN beyond: flushed to 0 (and phi)
  static constexpr double pdf_max = 38.58;      // phi(x) rounds to 0 beyond
  static constexpr double erfc_max = 26.5433;   // erfc(x) < DBL_MIN beyond: flushed to 0
  static constexpr double erf_small = 0.5;      // erf polynomial below
  static constexpr double sqrt2 = 0x1.6a09e667f3bcdp+0;
  // log(1/sqrt(2 pi)) and log(1/sqrt(pi)) as hi (a multiple of 2^-42, like ln2hi) + lo
  static constexpr double ln_c_hi = -0x1.d67f1c864c000p-1, ln_c_lo = 0x1.4b596d686dffdp-45;
  static constexpr double ln_rpi_hi = -0x1.250d048e7a000p-1, ln_rpi_lo = -0x1.bd0bd5f956c6bp-45;
};

template <>
struct K<float> {
  using U = std::uint32_t;
  static constexpr int mbits = 23;
  static constexpr U bias = 127;
  static constexpr U sign_mask = U(1) << 31;
  static constexpr float shift = 0x1.8p23f;
  static constexpr float log2e = 0x1.715476p+0f;
  static constexpr float ln2hi = 0x1.62e4p-1f;  // 8 trailing zero bits
  static constexpr float ln2lo = 0x1.7f7d1cp-20f;
  static constexpr float exp_min = -104.0f;
  static constexpr float exp_max = 89.0f;
  static constexpr float em1_big = 18.0f;
  static constexpr U split_mask = ~U(0) << 12;  // keep 12 significant bits
  static constexpr float cdf_max = 12.9500f;
  static constexpr float pdf_max = 14.35f;
  static constexpr float erfc_max = 9.1946f;
  static constexpr float erf_small = 0.5f;
  static constexpr float sqrt2 = 0x1.6a09e6p+0f;
  // as for double, hi a multiple of 2^-16
  static constexpr float ln_c_hi = -0x1.d68p-1f, ln_c_lo = 0x1.c6f368p-18f;
  static constexpr float ln_rpi_hi = -0x1.250ep-1f, ln_rpi_lo = 0x1.f6e30cp-18f;
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

// For a >= 0 or NaN: mask = all ones if a > m (or a is NaN), else 0, computed with integer
// arithmetic on the bit patterns (no comparison, no select: GCC cannot thread a constant
// through it; see cdf_tail).
template <class T>
VGCORE_FM_INLINE typename K<T>::U above_mask(T a, T m) {
  using U = typename K<T>::U;
  return U(0) - ((to_bits(m) - to_bits(a)) >> (8 * sizeof(U) - 1));
}
template <class T>
VGCORE_FM_INLINE T bitselect(typename K<T>::U mask, T yes, T no) {
  return from_bits<T>((to_bits(yes) & mask) | (to_bits(no) & ~mask));
}

// ---- polynomial / rational kernels ----------------------------------------------------------

// (expm1(r) - r) / r^2 on |r| <= ln2/2 (+ margin): minimax, rel. error 2.8e-18 (double),
// 2.7e-9 (float).
VGCORE_FM_INLINE double expq(double r) {
  return horner(r, 0.5000000000000000001253, 0.1666666666666667102806, 0.04166666666666661770781,
                0.008333333333326079959527, 0.001388888888891831181748, 0.0001984126987502674709092,
                0.0000248015872452336480504, 0.000002755725512626463959347,
                2.755734980277358444014e-7, 2.510533501812294879523e-8, 2.088941284772367562009e-9);
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

// Mills ratio Q(y) = exp(y^2/2) Phi(-y) = c / (y + h(y)) for 0 <= y <= 40 (double) / 15
// (float), c = 1/sqrt(2 pi); h(y) = c/Q(y) - y (h(0) = 2c, h ~ 1/y) is a minimax rational P/R
// of degree 9/10 (double) or 4/5 (float), fitted for the relative error it causes in Q (max
// 4.4e-18 resp. 7.2e-10). mills() returns Q/c = R / (y R + P): rounding errors of P and R are
// damped by h/(y + h), whereas a direct rational fit of Q (whose terms are all of similar size
// for large y) loses several ulp in Horner's scheme.
VGCORE_FM_INLINE double mills(double y) {
  const double p = horner(y, 0.7978845608028653526336686, 0.9891339558328586436883824,
                          0.6269301685990495928606724, 0.2579458076994733668952238,
                          0.07482697711066931378829642, 0.01575374106105759084528836,
                          0.002400740954386330198635369, 0.0002556750395232740151834664,
                          0.00001736238218374719006746099, 0.0000005796909730216417707876971);
  const double r = horner(y, 1.0, 1.695125147056761354761893, 1.421130798907207898595501,
                          0.7628984667018232552447509, 0.2879442607414214535770378,
                          0.07952425053129026257754956, 0.01626161431476485627612435,
                          0.002435465681613819731109999, 0.0002568344221798149096399169,
                          0.00001736238217555897572207654, 0.0000005796909730641637786589285);
  return r / (y * r + p);
}
VGCORE_FM_INLINE float mills(float y) {
  const float p = horner(y, 0.7978845613531784f, 0.5042751148919811f, 0.16684244788166425f,
                         0.03003116238330206f, 0.002517810154761706f);
  const float r = horner(y, 1.0f, 1.0874447658179796f, 0.5677399746383571f, 0.17161520500684432f,
                         0.030043030424907177f, 0.0025175771820405914f);
  return r / (y * r + p);
}

// The same for erfc: erfc(x) = exp(-x^2) / sqrt(pi) / (x + h(x sqrt 2)/sqrt 2); the
// coefficients are those above rescaled (p_k 2^(k-1)/2, r_k 2^(k/2)), so that x need not be
// multiplied by sqrt 2 (a rounding). Returns sqrt(pi) exp(x^2) erfc(x), 0 <= x <= 28 / 10.5.
VGCORE_FM_INLINE double mills_erfc(double x) {
  const double p =
      horner(x, 0.5641895835477562846527, 0.9891339558328586436884, 0.8866131470936270163829,
             0.5158916153989467337904, 0.2116426517225793862669, 0.06301496424423036338115,
             0.01358064166975070447143, 0.002045400316186192121468, 0.0001964329308748821680076,
             0.000009275055568346268332603);
  const double r =
      horner(x, 1.0, 2.397268972887359091168, 2.842261597814415797191, 2.157802716646714996718,
             1.151777042965685814308, 0.4498570945556259953144, 0.130092914518118850209,
             0.02755414878105998478156, 0.004109350754877038554239, 0.0003928658615644861955535,
             0.00001855011113805324091709);
  return r / (x * r + p);
}
VGCORE_FM_INLINE float mills_erfc(float x) {
  const float p = horner(x, 0.564189612865448f, 0.5042751431465149f, 0.23595085740089417f,
                         0.06006232649087906f, 0.007121442351490259f);
  const float r = horner(x, 1.0f, 1.5378791093826294f, 1.1354799270629883f, 0.48540109395980835f,
                         0.12017212063074112f, 0.014241566881537437f);
  return r / (x * r + p);
}

// ---- exp kernel -----------------------------------------------------------------------------

// exp(x) = (1 + e) * s1 * s2 with e = expm1(r), s1 * s2 = 2^n, x = n ln2 + r. x must already
// be clamped to [exp_min, exp_max] (NaN allowed: it propagates through e).
template <class T>
struct ExpParts {
  T e, s1, s2;
};

template <class T>
VGCORE_FM_INLINE ExpParts<T> exp_reduce(T x) {
  using C = K<T>;
  using U = typename C::U;
  const T kd = x * C::log2e + C::shift;  // low bits of kd hold n = rint(x / ln2)
  const T n = kd - C::shift;
  const T r = (x - n * C::ln2hi) - n * C::ln2lo;  // the first subtraction is exact
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
  const ExpParts<T> p = exp_reduce<T>(xc);
  return ((T(1) + p.e) * p.s1) * p.s2;
}

// exp(x) for x <= 0 (or NaN)
template <class T>
VGCORE_FM_INLINE T exp_nonpos(T x) {
  const T xc = x < K<T>::exp_min ? K<T>::exp_min : x;
  const ExpParts<T> p = exp_reduce<T>(xc);
  return ((T(1) + p.e) * p.s1) * p.s2;
}

// exp(x) and expm1(x) together (one range reduction).
template <class T>
VGCORE_FM_INLINE void exp_expm1(T x, T& ex, T& em1) {
  const T xc = clamp_nan(x, K<T>::exp_min, K<T>::exp_max);
  const ExpParts<T> p = exp_reduce<T>(xc);
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
  const ExpParts<T> p = exp_reduce<T>(xc);
  ex = ((T(1) + p.e) * p.s1) * p.s2;
  const T s = p.s1 * p.s2;
  em1 = s * p.e + (s - T(1));
}

// exp(lk - m x^2) for x >= 0 (or NaN) with m x^2 <= 745 (float: 103), m = 1/2 or 1, to full
// relative accuracy even when m x^2 is large: x = xh + xl with xh of half precision, so xh^2 is
// exact and m x^2 = m xh^2 + m xl (x + xh). The constant factor exp(lk), lk = lk_hi + lk_lo
// with lk_hi a multiple of 2^-42 (float: 2^-16) like ln2hi, is folded into the range reduction
// (lk_hi - n ln2hi is exact), which saves the rounding of a separate multiplication.
template <class T>
VGCORE_FM_INLINE T gauss(T x, T m, T lk_hi, T lk_lo) {
  using C = K<T>;
  using U = typename C::U;
  const T xh = from_bits<T>(to_bits(x) & C::split_mask);
  const T hi = -(m * (xh * xh));
  const T lo = -(m * ((x - xh) * (x + xh)));
  const T kd = (hi + lk_hi) * C::log2e + C::shift;
  const T n = kd - C::shift;
  const T d = lk_hi - n * C::ln2hi;  // exact
  T r = hi + d;                      // exact, or rounded at the level of |r|
  r = r + (lo + (lk_lo - n * C::ln2lo));
  const T e = r + (r * r) * expq(r);
  const U ib = to_bits(kd);
  const U h = ib >> 1;
  const T s1 = from_bits<T>((h + C::bias) << C::mbits);
  const T s2 = from_bits<T>((ib - h + C::bias) << C::mbits);
  return ((T(1) + e) * s1) * s2;
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

// log(u) + cu for u > 0 finite, where cu = c/u is the correction for 1 + x = u + c exactly
// (log(u + c) = log(u) + c/u to working precision).
template <class T>
VGCORE_FM_INLINE T log_core(T u, T cu) {
  using C = K<T>;
  using U = typename C::U;
  // u = 2^k m with m in [sqrt(1/2), sqrt(2))
  constexpr U one = C::bias << C::mbits;
  constexpr U sqrt_half =
      std::is_same<T, double>::value ? U(0x3fe6a09e667f3bcdull) : U(0x3f3504f3u);
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
  return k * C::ln2hi + ((f - (hfsq - s * (hfsq + R))) + (k * C::ln2lo + cu));
}

template <class T>
VGCORE_FM_INLINE T log1p_impl(T x) {
  const T u = T(1) + x;
  // u + c == 1 + x exactly (TwoSum)
  const T bp = u - T(1);
  const T ap = u - bp;
  const T c = (T(1) - ap) + (x - bp);
  T r = log_core(u, c / u);
  // special values
  constexpr T inf = std::numeric_limits<T>::infinity();
  const T special = x == T(-1) ? -inf : (x < T(-1) ? std::numeric_limits<T>::quiet_NaN() : x);
  r = (x > T(-1) && x < inf) ? r : special;  // NaN, +inf: x itself
  return x == T(0) ? x : r;                  // log1p(-0) = -0
}

// softplus(v) = log(1 + exp(v)) = max(v, 0) + log1p(exp(-|v|)), and sigmoid(v), sharing
// exp(-|v|) and 1/(1 + exp(-|v|)).
template <class T>
VGCORE_FM_INLINE void softplus_sigmoid(T v, T& sp, T& sg) {
  const T t = exp_nonpos(-fabs_(v));  // in [0, 1] (or NaN)
  const T u = T(1) + t;               // in [1, 2]
  const T inv = T(1) / u;
  const T c = t - (u - T(1));  // u + c == 1 + t exactly (Fast2Sum, 1 >= t)
  const T l = log_core(u, c * inv);
  const bool pos = v >= T(0);
  sp = (pos ? v : T(0)) + (t == t ? l : t);
  sg = (pos ? T(1) : t) * inv;
}

template <class T>
VGCORE_FM_INLINE T softplus_impl(T x) {
  T sp, sg;
  softplus_sigmoid(x, sp, sg);
  return sp;
}

// For a = |x| (NaN/inf allowed): pdf = exp(-a^2/2)/sqrt(2 pi) and tail = Phi(-a) = pdf Q(a)/c,
// both flushed to 0 for a > cdf_max (where Phi(-a) < DBL_MIN / FLT_MIN).
//
// Note on the clamps here and in erfc_pos / normal_pdf: GCC may duplicate the code after a
// select for the clamped constant, compute that copy for every element and blend; and it drops
// a clamp whose result is only used where a later select discards it. Either way, elements
// beyond the clamp must not lead to subnormal intermediates (each costs a microcode assist per
// vector, a 5-10x slowdown). Hence the clamp value gives a normal result, and the flush to 0
// beyond it is a multiplication by 0 (which keeps the clamp needed), not a select.
template <class T>
VGCORE_FM_INLINE void cdf_tail(T a, T& tail, T& pdf) {
  const typename K<T>::U big = above_mask(a, K<T>::cdf_max);
  const T ac = bitselect(big, K<T>::cdf_max, a);
  const T keep = bitselect(big, T(0), T(1));
  pdf = gauss(ac, T(0.5), K<T>::ln_c_hi, K<T>::ln_c_lo) * keep;
  tail = pdf * mills(ac);
  pdf = a == a ? pdf : a;  // NaN
  tail = a == a ? tail : a;
}

// Phi(x) given Phi(-|x|) (tail); for |x| < sqrt(2)/2 from the erf polynomial instead,
// 1/2 + erf(x/sqrt 2)/2, which is more accurate there (and exactly 1/2 at 0).
template <class T>
VGCORE_FM_INLINE T cdf_from_tail(T x, T tail) {
  const T z = x * (T(0.5) * K<T>::sqrt2);
  const T small = T(0.5) + T(0.5) * (z * erfp(z * z));
  const T big = x < T(0) ? tail : T(1) - tail;
  return fabs_(z) < K<T>::erf_small ? small : big;
}

template <class T>
VGCORE_FM_INLINE T normal_cdf_impl(T x) {
  T tail, pdf;
  cdf_tail(fabs_(x), tail, pdf);
  return cdf_from_tail(x, tail);
}

template <class T>
VGCORE_FM_INLINE T normal_pdf_impl(T x) {
  const T a = fabs_(x);
  const typename K<T>::U big = above_mask(a, K<T>::pdf_max);
  const T g = gauss(bitselect(big, K<T>::pdf_max, a), T(0.5), K<T>::ln_c_hi, K<T>::ln_c_lo) *
              bitselect(big, T(0), T(1));
  return x == x ? g : x;
}

// erfc(a) for a >= 0 (or NaN), flushed to 0 for a > erfc_max (erfc(a) < DBL_MIN / FLT_MIN).
template <class T>
VGCORE_FM_INLINE T erfc_pos(T a) {
  const typename K<T>::U big = above_mask(a, K<T>::erfc_max);
  const T ac = bitselect(big, K<T>::erfc_max, a);
  const T r = (gauss(ac, T(1), K<T>::ln_rpi_hi, K<T>::ln_rpi_lo) * bitselect(big, T(0), T(1))) *
              mills_erfc(ac);
  return a == a ? r : a;
}

template <class T>
VGCORE_FM_INLINE T erfc_impl(T x) {
  const T c = erfc_pos(fabs_(x));
  const T small = T(1) - x * erfp(x * x);  // 1 - erf(x) for |x| < 1/2
  const T big = x < T(0) ? T(2) - c : c;
  return fabs_(x) < K<T>::erf_small ? small : big;
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

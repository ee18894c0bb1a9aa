// Vectorised kernels of the recurrent Lyapunov fast path (see lyapunov.cpp).
//
// NO include guard on purpose: lyapunov.cpp includes this file once per instruction set, each
// time inside its own namespace and `#pragma GCC target` region, with LK_VB (the vector width
// in bytes: 16, 32 or 64) and LK_REGS (vector registers: 16 or 32) defined. Everything here is
// internal to that translation unit; use nothing with external linkage that could be emitted
// out of line (it would be merged across instruction sets).
//
// Layout. The k tangent vectors of one sample are stored transposed, as a D x KP row-major
// block ("tangent rows"): row i holds coordinate i of every tangent vector, padded to KP = NV
// vectors of L lanes (padding lanes stay 0). For an LSTM, row 2j is h_j and row 2j + 1 is c_j.
// This makes every kernel a sequence of full-width row operations with broadcast scalars:
//  * the JVP GEMM U = W_hh V reads a tile of MR packed rows of W_hh (broadcasts) against the
//    tangent rows (vectors) and streams W_hh once per step; the state row h rides along;
//  * the elementwise tangent update is per unit, scalars broadcast against tangent rows;
//  * Householder QR works on rows: w = v^T A is a sum of scaled rows, A -= v w^T an update of
//    rows, with no horizontal reductions. Each pass over the rows applies reflector j and
//    accumulates the Gram row of column j + 1 (its norm and its products with the later
//    columns), so a reflector costs one pass; Q is formed the same way, backwards (dorg2r
//    order), from the reflector tails kept in column-major Y.

#define LK_INLINE inline __attribute__((always_inline))

template <class T>
struct LkVec {
  typedef T type __attribute__((vector_size(LK_VB)));
};
template <class T>
using VecT = typename LkVec<T>::type;

template <class T>
LK_INLINE VecT<T> vload(const T* p) {
  VecT<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
LK_INLINE void vstore(T* p, VecT<T> v) {
  __builtin_memcpy(p, &v, sizeof v);
}
// Broadcast. s - 0 folds to s (0 + s would not: -0 + 0 = +0), so this is one vbroadcast.
template <class T>
LK_INLINE VecT<T> vbc(T s) {
  return s - VecT<T>{};
}
template <class V>
LK_INLINE V vabs(V x) {
  return x < V{} ? -x : x;
}
template <class V>
LK_INLINE V vmax(V a, V b) {
  return a > b ? a : b;
}

template <class T>
constexpr int kLanes = LK_VB / static_cast<int>(sizeof(T));

// Rows of W_hh per GEMM tile: MR * NV accumulators fill about 3/4 of the register file.
template <int NV>
constexpr int kTileRows = (LK_REGS * 3 / 4) / NV > 0 ? (LK_REGS * 3 / 4) / NV : 1;

// ---- GEMM: U (packed rows, KP wide) = W X, and the state row us = W h ----------------------
//
// Wp holds tile t (MR packed rows p = t*MR + r) as N x MR values, [kk][r]; packed row p is
// gate p % G of unit p / G (original row (p % G) * N + p / G). X: the N tangent rows of the
// h part, row stride xs. U: packed row p at U + p * KP. us: original order.
template <class T, int NV>
void gemm_tiles(const T* __restrict Wp, std::size_t N, std::size_t t0, std::size_t t1,
                const T* __restrict X, std::size_t xs, const T* __restrict h, T* __restrict U,
                T* __restrict us, std::size_t G) {
  using V = VecT<T>;
  constexpr int L = kLanes<T>, KP = NV * L, MR = kTileRows<NV>, SV = (MR + L - 1) / L;
  const std::size_t GN = G * N;
  for (std::size_t t = t0; t < t1; ++t) {
    const T* w = Wp + t * N * MR;
    V acc[MR][NV], sacc[SV];
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = V{};
    for (int s = 0; s < SV; ++s) sacc[s] = V{};
    const T* x = X;
    for (std::size_t kk = 0; kk < N; ++kk, x += xs, w += MR) {
      V xv[NV];
      for (int v = 0; v < NV; ++v) xv[v] = vload(x + v * L);
      for (int r = 0; r < MR; ++r) {
        const V b = vbc(w[r]);
        for (int v = 0; v < NV; ++v) acc[r][v] += b * xv[v];
      }
      const V hb = vbc(h[kk]);
      for (int s = 0; s < SV; ++s) sacc[s] += vload(w + s * L) * hb;  // lanes >= MR: unused
    }
    T* u = U + t * MR * KP;
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) vstore(u + r * KP + v * L, acc[r][v]);
    T sv[SV * L];
    for (int s = 0; s < SV; ++s) vstore(sv + s * L, sacc[s]);
    for (int r = 0; r < MR; ++r) {
      const std::size_t p = t * MR + r;
      if (p < GN) us[(p % G) * N + p / G] = sv[r];
    }
  }
}

// ---- elementwise tangent updates for units [j0, j1) ---------------------------------------
//
// coef holds per-unit coefficients, coefficient q of unit j at coef[q * N + j] (see
// lyapunov.cpp). colmax receives max |entry| per column over the rows written.
// cell: 0 = simple RNN (dh' = d * u), 1 = LSTM, 2 = GRU.
template <class T, int NV>
void tangent_units(int cell, const T* __restrict U, const T* __restrict coef, std::size_t N,
                   const T* __restrict Vin, T* __restrict Vout, std::size_t j0, std::size_t j1,
                   T* __restrict colmax) {
  using V = VecT<T>;
  constexpr int L = kLanes<T>, KP = NV * L;
  V cm[NV];
  for (int v = 0; v < NV; ++v) cm[v] = V{};
  if (cell == 1) {
    for (std::size_t j = j0; j < j1; ++j) {
      const T* u = U + 4 * j * KP;  // i, f, g, o
      const T* dc = Vin + (2 * j + 1) * KP;
      T* oh = Vout + 2 * j * KP;
      T* oc = oh + KP;
      const V f = vbc(coef[j]), bf = vbc(coef[N + j]), bi = vbc(coef[2 * N + j]),
              bg = vbc(coef[3 * N + j]), co = vbc(coef[4 * N + j]), dd = vbc(coef[5 * N + j]);
      for (int v = 0; v < NV; ++v) {
        const V c = f * vload(dc + v * L) + bf * vload(u + KP + v * L) + bi * vload(u + v * L) +
                    bg * vload(u + 2 * KP + v * L);
        const V hh = co * c + dd * vload(u + 3 * KP + v * L);
        vstore(oc + v * L, c);
        vstore(oh + v * L, hh);
        cm[v] = vmax(cm[v], vmax(vabs(c), vabs(hh)));
      }
    }
  } else if (cell == 2) {
    for (std::size_t j = j0; j < j1; ++j) {
      const T* u = U + 3 * j * KP;  // r, z, n
      const T* dh = Vin + j * KP;
      T* o = Vout + j * KP;
      const V z = vbc(coef[j]), ar = vbc(coef[N + j]), az = vbc(coef[2 * N + j]),
              an = vbc(coef[3 * N + j]);
      for (int v = 0; v < NV; ++v) {
        const V y = z * vload(dh + v * L) + ar * vload(u + v * L) + az * vload(u + KP + v * L) +
                    an * vload(u + 2 * KP + v * L);
        vstore(o + v * L, y);
        cm[v] = vmax(cm[v], vabs(y));
      }
    }
  } else {
    for (std::size_t j = j0; j < j1; ++j) {
      const T* u = U + j * KP;
      T* o = Vout + j * KP;
      const V d = vbc(coef[j]);
      for (int v = 0; v < NV; ++v) {
        const V y = d * vload(u + v * L);
        vstore(o + v * L, y);
        cm[v] = vmax(cm[v], vabs(y));
      }
    }
  }
  for (int v = 0; v < NV; ++v) vstore(colmax + v * L, cm[v]);
}

// A[i] *= s (columnwise powers of two) for m rows.
template <class T, int NV>
void scale_rows(T* __restrict A, std::size_t m, const T* __restrict s) {
  using V = VecT<T>;
  constexpr int L = kLanes<T>, KP = NV * L;
  V sv[NV];
  for (int v = 0; v < NV; ++v) sv[v] = vload(s + v * L);
  for (std::size_t i = 0; i < m; ++i)
    for (int v = 0; v < NV; ++v) vstore(A + i * KP + v * L, vload(A + i * KP + v * L) * sv[v]);
}

// ---- Householder QR of an m x k block of tangent rows -------------------------------------

// g = sum_{i >= 1} A[i][0] A[i][:] (the Gram row of column 0 below the diagonal).
template <class T, int NV>
void gram0(const T* __restrict A, std::size_t m, T* __restrict g) {
  using V = VecT<T>;
  constexpr int L = kLanes<T>, KP = NV * L;
  V acc[2][NV];  // two rows at a time: independent FMA chains
  for (int v = 0; v < NV; ++v) acc[0][v] = acc[1][v] = V{};
  std::size_t i = 1;
  for (; i + 1 < m; i += 2)
    for (int r = 0; r < 2; ++r) {
      const T* a = A + (i + r) * KP;
      const V x = vbc(a[0]);
      for (int v = 0; v < NV; ++v) acc[r][v] += x * vload(a + v * L);
    }
  if (i < m) {
    const T* a = A + i * KP;
    const V x = vbc(a[0]);
    for (int v = 0; v < NV; ++v) acc[0][v] += x * vload(a + v * L);
  }
  for (int v = 0; v < NV; ++v) vstore(g + v * L, acc[0][v] + acc[1][v]);
}

// Rows i > j: A[i][c] -= (s A[i][j]) w[c] on vectors V0.. (w is 0 on lanes <= j), the tail
// A[i][j] copied to y[i]; g = sum_{i > j + 1} A'[i][j + 1] A'[i][:] on the same vectors.
template <class T, int NV, int V0>
void factor_pass(T* __restrict A, std::size_t m, std::size_t j, T s, const T* __restrict w,
                 T* __restrict y, T* __restrict g) {
  using V = VecT<T>;
  constexpr int L = kLanes<T>, KP = NV * L;
  V wv[NV], acc[2][NV];  // two rows at a time: independent FMA chains
  for (int v = V0; v < NV; ++v) {
    wv[v] = vload(w + v * L);
    acc[0][v] = acc[1][v] = V{};
  }
  const T wj1 = j + 1 < static_cast<std::size_t>(KP) ? w[j + 1] : T(0);
  std::size_t i = j + 1;
  if (i < m) {  // the next pivot row: updated, not in the Gram row
    T* a = A + i * KP;
    const T x = a[j];
    y[i] = x;
    const V c = vbc(s * x);
    for (int v = V0; v < NV; ++v) vstore(a + v * L, vload(a + v * L) - c * wv[v]);
    ++i;
  }
  const bool next = j + 1 < static_cast<std::size_t>(KP);
  for (; i < m; i += 2) {
    const int nr = i + 1 < m ? 2 : 1;
    for (int r = 0; r < nr; ++r) {
      T* a = A + (i + r) * KP;
      const T x = a[j];
      y[i + r] = x;
      const T cs = s * x;
      const V c = vbc(cs);
      const V yj = vbc(next ? a[j + 1] - cs * wj1 : T(0));
      for (int v = V0; v < NV; ++v) {
        const V av = vload(a + v * L) - c * wv[v];
        vstore(a + v * L, av);
        acc[r][v] += yj * av;
      }
    }
  }
  for (int v = V0; v < NV; ++v) vstore(g + v * L, acc[0][v] + acc[1][v]);
}

template <class T, int NV, int V0 = 0>
LK_INLINE void factor_pass_at(int v0, T* A, std::size_t m, std::size_t j, T s, const T* w, T* y,
                              T* g) {
  if constexpr (V0 + 1 < NV) {
    if (v0 > V0) return factor_pass_at<T, NV, V0 + 1>(v0, A, m, j, s, w, y, g);
  }
  factor_pass<T, NV, V0>(A, m, j, s, w, y, g);
}

// Factor the m x k block A (k <= KP, m >= k) in place: R in the upper triangle of rows < k,
// reflector j = I - tau_j v v^T with v = [0 (rows < j); 1; sc_j * Y[j][i] (rows i > j)]; Y is
// column-major with leading dimension ldy. rdiag: beta_j (R's diagonal, float64). gw: 2 KP
// scratch values.
template <class T, int NV>
void qr_factor(T* __restrict A, std::size_t m, std::size_t k, T* __restrict Y, std::size_t ldy,
               T* __restrict tau, T* __restrict sc, double* __restrict rdiag, T* __restrict gw) {
  constexpr int L = kLanes<T>, KP = NV * L;
  T* g = gw;
  T* w = gw + KP;
  gram0<T, NV>(A, m, g);
  for (std::size_t j = 0; j < k; ++j) {
    T* aj = A + j * KP;
    const double alpha = aj[j], xn2 = g[j];
    double beta = alpha, tj = 0.0, s = 0.0;
    if (xn2 != 0.0) {  // NaN goes this way too and propagates
      const double norm = std::sqrt(alpha * alpha + xn2);
      beta = alpha >= 0 ? -norm : norm;
      tj = (beta - alpha) / beta;
      s = 1.0 / (alpha - beta);
    }
    rdiag[j] = beta;
    tau[j] = static_cast<T>(tj);
    sc[j] = static_cast<T>(s);
    for (int c = 0; c < KP; ++c)
      w[c] = (static_cast<std::size_t>(c) > j && static_cast<std::size_t>(c) < k)
                 ? static_cast<T>(tj * (aj[c] + s * g[c]))
                 : T(0);
    for (std::size_t c = j + 1; c < k; ++c) aj[c] -= w[c];
    aj[j] = static_cast<T>(beta);
    T* yj = Y + j * ldy;
    if (j + 1 < k) {
      factor_pass_at<T, NV>(static_cast<int>((j + 1) / L), A, m, j, static_cast<T>(s), w, yj, g);
    } else {
      for (std::size_t i = j + 1; i < m; ++i) yj[i] = A[i * KP + j];
    }
  }
}

// One backward step of forming Q from E = [I; 0] (out of place, M rows at M + i * KP): rows
// i > j get M[i][c] -= v_i w[c] (w = tau_j sum_{i > j} v_i M[i], zero on lanes <= j) and
// M[i][j] = -tau_j v_i; the
// sums for step j - 1 (wn, lanes > j; wnj, lane j) accumulate on the way (vp = v^{(j-1)}).
template <class T, int NV, int V0>
void form_pass(T* __restrict M, std::size_t m, std::size_t j, T tj, T sj, const T* __restrict yj,
               T sp, const T* __restrict yp, const T* __restrict w, T* __restrict wn, T& wnj) {
  using V = VecT<T>;
  constexpr int L = kLanes<T>, KP = NV * L;
  V wv[NV], acc[2][NV];  // two rows at a time: independent FMA chains
  for (int v = V0; v < NV; ++v) {
    wv[v] = vload(w + v * L);
    acc[0][v] = acc[1][v] = V{};
  }
  T accj[2] = {0, 0};
  for (std::size_t i = j + 1; i < m; i += 2) {
    const int nr = i + 1 < m ? 2 : 1;
    for (int r = 0; r < nr; ++r) {
      T* a = M + (i + r) * KP;
      const T vi = sj * yj[i + r];
      const V c = vbc(vi);
      const T vp = yp ? sp * yp[i + r] : T(0);
      const V b = vbc(vp);
      for (int v = V0; v < NV; ++v) {
        const V av = vload(a + v * L) - c * wv[v];
        vstore(a + v * L, av);
        acc[r][v] += b * av;
      }
      const T q = -(tj * vi);
      a[j] = q;
      accj[r] += vp * q;
    }
  }
  for (int v = V0; v < NV; ++v) vstore(wn + v * L, acc[0][v] + acc[1][v]);
  wnj = accj[0] + accj[1];
}

template <class T, int NV, int V0 = 0>
LK_INLINE void form_pass_at(int v0, T* M, std::size_t m, std::size_t j, T tj, T sj, const T* yj,
                            T sp, const T* yp, const T* w, T* wn, T& wnj) {
  if constexpr (V0 + 1 < NV) {
    if (v0 > V0) return form_pass_at<T, NV, V0 + 1>(v0, M, m, j, tj, sj, yj, sp, yp, w, wn, wnj);
  }
  form_pass<T, NV, V0>(M, m, j, tj, sj, yj, sp, yp, w, wn, wnj);
}

// Q = H_0 ... H_{k-1} [I; 0] into M (m x k tangent rows, padding lanes must already be 0),
// from qr_factor's Y, tau, sc. gw: 2 KP scratch values.
template <class T, int NV>
void qr_form_e(T* __restrict M, std::size_t m, std::size_t k, const T* __restrict Y,
               std::size_t ldy, const T* __restrict tau, const T* __restrict sc,
               T* __restrict gw) {
  constexpr int L = kLanes<T>, KP = NV * L;
  T* w = gw;  // sum_{i > j} v_i M[i][c], lanes > j
  T* wn = gw + KP;
  for (int c = 0; c < KP; ++c) w[c] = T(0);
  for (std::size_t j = k; j-- > 0;) {
    const T tj = tau[j];
    for (int c = 0; c < KP; ++c) w[c] = static_cast<std::size_t>(c) > j ? tj * w[c] : T(0);
    const bool prev = j > 0;
    const T sp = prev ? sc[j - 1] : T(0);
    const T* yp = prev ? Y + (j - 1) * ldy : nullptr;
    T wnj = 0;
    form_pass_at<T, NV>(static_cast<int>((j + 1) / L), M, m, j, tj, sc[j], Y + j * ldy, sp, yp,
                        w, wn, wnj);
    // Row j: M[j][c] = -w[c] (c > j), M[j][j] = 1 - tau_j; lanes < j are set by later steps.
    T* a = M + j * KP;
    for (std::size_t c = j + 1; c < static_cast<std::size_t>(KP); ++c) a[c] = -w[c];
    a[j] = T(1) - tj;
    if (prev) {
      const T vpj = sp * Y[(j - 1) * ldy + j];
      for (std::size_t c = j + 1; c < static_cast<std::size_t>(KP); ++c) wn[c] += vpj * a[c];
      wn[j] = wnj + vpj * a[j];
      for (int c = 0; c < KP; ++c) w[c] = static_cast<std::size_t>(c) >= j && static_cast<std::size_t>(c) < k ? wn[c] : T(0);
    }
  }
}

// Q = H_0 ... H_{k-1} [top; 0] into M (m x k tangent rows, m >= k), top: k dense rows (KP
// wide, padding 0). TSQR: the local reflectors applied to the rows of the combined Q.
template <class T, int NV>
void qr_form_dense(T* __restrict M, std::size_t m, std::size_t k, const T* __restrict Y,
                   std::size_t ldy, const T* __restrict tau, const T* __restrict sc,
                   const T* __restrict top, T* __restrict gw) {
  using V = VecT<T>;
  constexpr int L = kLanes<T>, KP = NV * L;
  for (std::size_t i = 0; i < k; ++i)
    for (int v = 0; v < NV; ++v) vstore(M + i * KP + v * L, vload(top + i * KP + v * L));
  T* w = gw;
  // w = sum_{i >= k-1} v_i M[i] = M[k-1] (rows >= k are zero).
  for (int c = 0; c < KP; ++c) w[c] = M[(k - 1) * KP + c];
  for (std::size_t j = k; j-- > 0;) {
    const T tj = tau[j], sj = sc[j];
    const T* yj = Y + j * ldy;
    const bool prev = j > 0;
    const T sp = prev ? sc[j - 1] : T(0);
    const T* yp = prev ? Y + (j - 1) * ldy : nullptr;
    V wv[NV], acc[NV], acc2[2][NV];
    for (int v = 0; v < NV; ++v) {
      wv[v] = vbc(tj) * vload(w + v * L);
      acc[v] = acc2[0][v] = acc2[1][v] = V{};
    }
    // Row j (v_j = 1).
    {
      T* a = M + j * KP;
      for (int v = 0; v < NV; ++v) {
        const V av = vload(a + v * L) - wv[v];
        vstore(a + v * L, av);
        if (prev) acc[v] += vbc(sp * yp[j]) * av;
      }
    }
    // At j = k - 1 the rows below k are still zero: written, not updated.
    const bool fresh = j + 1 == k;
    for (std::size_t i = j + 1; i < m; i += 2) {
      const int nr = i + 1 < m ? 2 : 1;
      for (int r = 0; r < nr; ++r) {
        T* a = M + (i + r) * KP;
        const V c = vbc(sj * yj[i + r]);  // v_i; wv carries tau_j
        const V b = vbc(prev ? sp * yp[i + r] : T(0));
        for (int v = 0; v < NV; ++v) {
          const V av = (fresh ? V{} : vload(a + v * L)) - c * wv[v];
          vstore(a + v * L, av);
          acc2[r][v] += b * av;
        }
      }
    }
    if (prev) {
      const T* ap = M + (j - 1) * KP;  // row j - 1 (v = 1) is not touched by H_j
      for (int v = 0; v < NV; ++v)
        vstore(w + v * L, acc[v] + acc2[0][v] + acc2[1][v] + vload(ap + v * L));
    }
  }
}

// ---- TSQR combine (float64) ----------------------------------------------------------------
//
// S = [top; bot], two k x k upper-triangular blocks (rows of KP doubles, padding 0). Householder
// QR exploiting the structure (reflector j acts on top row j and bottom rows 0..j), then
// Qc = H_0 ... H_{k-1} [I; 0] (2k x k) into qtop / qbot (rows of KP doubles). rdiag: R's
// diagonal; taus: k scratch. Row operations on whole vectors from the first one holding a lane
// the reflector touches (the lanes before it are zero or masked), two accumulation chains.

// w (vectors V0..) = tv * (t + sum_{i <= j} v_i b[i]) masked to lanes > jm (jm = -1: none);
// then t -= w and b[i] -= v_i w. v_i = vs[i * KP + col] (vs may be b).
template <int KP, int V0>
LK_INLINE void combine_reflect(double* t, double* b, const double* vs, std::size_t j,
                               std::size_t col, double tau, double jm, const double* idx) {
  using V = VecT<double>;
  constexpr int L = kLanes<double>, NV = KP / L;
  V w[NV], w2[NV];
  for (int v = V0; v < NV; ++v) {
    w[v] = vload(t + v * L);
    w2[v] = V{};
  }
  std::size_t i = 0;
  for (; i + 1 <= j; i += 2) {
    const V a0 = vbc(vs[i * KP + col]), a1 = vbc(vs[(i + 1) * KP + col]);
    for (int v = V0; v < NV; ++v) {
      w[v] += a0 * vload(b + i * KP + v * L);
      w2[v] += a1 * vload(b + (i + 1) * KP + v * L);
    }
  }
  if (i <= j) {
    const V a0 = vbc(vs[i * KP + col]);
    for (int v = V0; v < NV; ++v) w[v] += a0 * vload(b + i * KP + v * L);
  }
  const V tv = vbc(tau), jv = vbc(jm);
  for (int v = V0; v < NV; ++v) {
    w[v] = vload(idx + v * L) > jv ? tv * (w[v] + w2[v]) : V{};
    vstore(t + v * L, vload(t + v * L) - w[v]);
  }
  for (i = 0; i <= j; ++i) {
    const V a = vbc(vs[i * KP + col]);  // read before b's row changes (lane col of w is 0)
    for (int v = V0; v < NV; ++v) vstore(b + i * KP + v * L, vload(b + i * KP + v * L) - a * w[v]);
  }
}

template <int KP, int V0 = 0>
LK_INLINE void combine_reflect_at(int v0, double* t, double* b, const double* vs, std::size_t j,
                                  std::size_t col, double tau, double jm, const double* idx) {
  if constexpr (V0 + 1 < KP / kLanes<double>) {
    if (v0 > V0) return combine_reflect_at<KP, V0 + 1>(v0, t, b, vs, j, col, tau, jm, idx);
  }
  combine_reflect<KP, V0>(t, b, vs, j, col, tau, jm, idx);
}

template <int KP>
void tsqr_combine(double* __restrict top, double* __restrict bot, std::size_t k,
                  double* __restrict rdiag, double* __restrict qtop, double* __restrict qbot,
                  double* __restrict taus) {
  constexpr int L = kLanes<double>;
  static_assert(KP % L == 0, "rows of whole vectors");
  double idx[KP];
  for (int c = 0; c < KP; ++c) idx[c] = c;
  for (std::size_t j = 0; j < k; ++j) {
    double* tj = top + j * KP;
    const double alpha = tj[j];
    double x0 = 0, x1 = 0;
    std::size_t i = 0;
    for (; i + 1 <= j; i += 2) {
      x0 += bot[i * KP + j] * bot[i * KP + j];
      x1 += bot[(i + 1) * KP + j] * bot[(i + 1) * KP + j];
    }
    if (i <= j) x0 += bot[i * KP + j] * bot[i * KP + j];
    const double xn2 = x0 + x1;
    double beta = alpha, t = 0;
    if (xn2 != 0.0) {
      const double norm = std::sqrt(alpha * alpha + xn2);
      beta = alpha >= 0 ? -norm : norm;
      t = (beta - alpha) / beta;
      const double sc = 1.0 / (alpha - beta);
      for (i = 0; i <= j; ++i) bot[i * KP + j] *= sc;  // v tail
    }
    rdiag[j] = beta;
    taus[j] = t;
    if (t != 0.0 && j + 1 < k)
      combine_reflect_at<KP>(static_cast<int>((j + 1) / L), tj, bot, bot, j, j, t,
                             static_cast<double>(j), idx);
    tj[j] = beta;
  }
  // Qc, backwards; lanes < j of the rows H_j touches are still zero.
  for (std::size_t i = 0; i < k; ++i)
    for (int c = 0; c < KP; ++c) {
      qtop[i * KP + c] = static_cast<std::size_t>(c) == i ? 1.0 : 0.0;
      qbot[i * KP + c] = 0.0;
    }
  for (std::size_t j = k; j-- > 0;)
    if (taus[j] != 0.0)
      combine_reflect_at<KP>(static_cast<int>(j / L), qtop + j * KP, qbot, bot, j, j, taus[j],
                             -1.0, idx);
}

// ---- the operation table -------------------------------------------------------------------

template <class T, int NV>
LyapKernels<T> make_kernels() {
  LyapKernels<T> o;
  o.lanes = kLanes<T>;
  o.kp = NV * kLanes<T>;
  o.mr = kTileRows<NV>;
  o.gemm = &gemm_tiles<T, NV>;
  o.tangent = &tangent_units<T, NV>;
  o.scale = &scale_rows<T, NV>;
  o.factor = &qr_factor<T, NV>;
  o.form_e = &qr_form_e<T, NV>;
  o.form_dense = &qr_form_dense<T, NV>;
  o.combine = &tsqr_combine<NV * kLanes<T>>;
  return o;
}

// The kernels for k tangent vectors (NV in 1, 2, 4, 8), or false if k is too large.
template <class T>
bool select_kernels(std::size_t k, LyapKernels<T>& out) {
  const std::size_t L = kLanes<T>;
  if (k <= L) out = make_kernels<T, 1>();
  else if (k <= 2 * L) out = make_kernels<T, 2>();
  else if (k <= 4 * L) out = make_kernels<T, 4>();
  else if (k <= 8 * L) out = make_kernels<T, 8>();
  else return false;
  return true;
}

#undef LK_INLINE

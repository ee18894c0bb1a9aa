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
#define LK_ALWAYS __attribute__((always_inline))

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
constexpr int kTileRows = NV == 1                      ? LK_REGS / 2
                          : (LK_REGS * 3 / 4) / NV > 0 ? (LK_REGS * 3 / 4) / NV
                                                       : 1;

// ---- GEMM: U (packed rows, KP wide) = W X, and the state row us = W h ----------------------
//
// Wp holds tile t (MR packed rows p = t*MR + r) as N x MR values, [kk][r]; packed row p is
// gate p % G of unit p / G, original row orig[p] = (p % G) * N + p / G (orig: GN entries). X:
// the N tangent rows of the h part, row stride xs. U: packed row p at U + p * KP. us: original
// order.
template <class T, int NV>
void gemm_tiles(const T* __restrict Wp, std::size_t N, std::size_t t0, std::size_t t1,
                const T* __restrict X, std::size_t xs, const T* __restrict h, T* __restrict U,
                T* __restrict us, const unsigned* __restrict orig, std::size_t GN) {
  using V = VecT<T>;
  constexpr int L = kLanes<T>, KP = NV * L, MR = kTileRows<NV>, SV = (MR + L - 1) / L;
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
    const std::size_t p0 = t * MR;
    if (p0 + MR <= GN) {
      for (int r = 0; r < MR; ++r) us[orig[p0 + r]] = sv[r];
    } else {
      for (std::size_t r = 0; p0 + r < GN; ++r) us[orig[p0 + r]] = sv[r];
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

// Rows i > j: A[i][c] -= v_i w[c] on vectors V0.. (w is 0 on lanes <= j), v_i = s A[i][j]
// stored to y[i]; g = sum_{i > j + 1} A'[i][j + 1] A'[i][:] on the same vectors.
template <class T, int NV, int V0>
void factor_pass(T* __restrict A, std::size_t m, std::size_t j, T s, const T* __restrict w,
                 T* __restrict y, T* __restrict g) {
  using V = VecT<T>;
  constexpr int L = kLanes<T>, KP = NV * L;
  constexpr int C = NV <= 2 ? 4 : 2;  // rows at a time: independent FMA chains
  V wv[NV], acc[C][NV];
  for (int v = V0; v < NV; ++v) {
    wv[v] = vload(w + v * L);
    for (int r = 0; r < C; ++r) acc[r][v] = V{};
  }
  const T wj1 = j + 1 < static_cast<std::size_t>(KP) ? w[j + 1] : T(0);
  std::size_t i = j + 1;
  if (i < m) {  // the next pivot row: updated, not in the Gram row
    T* a = A + i * KP;
    const T cs = s * a[j];
    y[i] = cs;
    const V c = vbc(cs);
    for (int v = V0; v < NV; ++v) vstore(a + v * L, vload(a + v * L) - c * wv[v]);
    ++i;
  }
  const bool next = j + 1 < static_cast<std::size_t>(KP);
  for (; i < m; i += C) {
    const int nr = i + C <= m ? C : static_cast<int>(m - i);
    for (int r = 0; r < nr; ++r) {
      T* a = A + (i + r) * KP;
      const T cs = s * a[j];
      y[i + r] = cs;  // v_i, pre-scaled: the Q passes broadcast it straight from memory
      const V c = vbc(cs);
      const V yj = vbc(next ? a[j + 1] - cs * wj1 : T(0));
      for (int v = V0; v < NV; ++v) {
        const V av = vload(a + v * L) - c * wv[v];
        vstore(a + v * L, av);
        acc[r][v] += yj * av;
      }
    }
  }
  for (int v = V0; v < NV; ++v) {
    V t = acc[0][v];
    for (int r = 1; r < C; ++r) t += acc[r][v];
    vstore(g + v * L, t);
  }
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
// reflector j = I - tau_j v v^T with v = [0 (rows < j); 1; Y[j][i] (rows i > j)]; Y is
// column-major with leading dimension ldy; sc_j: the scale of column j's tail. rdiag: beta_j
// (R's diagonal, float64). gw: 2 KP scratch values.
template <class T, int NV>
void qr_factor(T* __restrict A, std::size_t m, std::size_t k, T* __restrict Y, std::size_t ldy,
               T* __restrict tau, T* __restrict sc, double* __restrict rdiag, T* __restrict gw) {
  using V = VecT<T>;
  constexpr int L = kLanes<T>, KP = NV * L;
  T* g = gw;
  T* w = gw + KP;
  T idx[KP];
  for (int c = 0; c < KP; ++c) idx[c] = static_cast<T>(c);
  gram0<T, NV>(A, m, g);
  for (std::size_t j = 0; j < k; ++j) {
    T* aj = A + j * KP;
    // The reflector's scalars in T: float's sqrt and divisions are shorter on this serial
    // chain, and the column's entries and Gram sums are in T anyway (the column scaling in
    // lyapunov.cpp keeps their squares in range).
    const T alpha = aj[j], xn2 = g[j];
    T beta = alpha, tj = 0, s = 0;
    if (xn2 != T(0)) {  // NaN goes this way too and propagates
      const T norm = std::sqrt(alpha * alpha + xn2);
      beta = alpha >= 0 ? -norm : norm;
      const T d = alpha - beta;
      tj = -d / beta;
      s = T(1) / d;
    }
    rdiag[j] = beta;
    tau[j] = tj;
    sc[j] = s;
    // w = tau (A[j] + s g) on the lanes > j (padding lanes of A[j] and g are 0); A[j] -= w.
    const V tv = vbc(tj), sv = vbc(s), jv = vbc(static_cast<T>(j));
    for (int v = 0; v < NV; ++v) {
      const V a = vload(aj + v * L);
      const V wv = vload(idx + v * L) > jv ? tv * (a + sv * vload(g + v * L)) : V{};
      vstore(w + v * L, wv);
      vstore(aj + v * L, a - wv);
    }
    aj[j] = beta;
    T* yj = Y + j * ldy;
    if (j + 1 < k) {
      factor_pass_at<T, NV>(static_cast<int>((j + 1) / L), A, m, j, s, w, yj, g);
    } else {
      for (std::size_t i = j + 1; i < m; ++i) yj[i] = s * A[i * KP + j];
    }
  }
}

// One backward step of forming Q from E = [I; 0] (out of place, M rows at M + i * KP): rows
// i > j get M[i][c] -= v_i w[c] (w = tau_j sum_{i > j} v_i M[i], zero on lanes <= j) and
// M[i][j] = -tau_j v_i; the
// sums for step j - 1 (wn, lanes > j; wnj, lane j) accumulate on the way (vp = v^{(j-1)}).
template <class T, int NV, int V0>
void form_pass(T* __restrict M, std::size_t m, std::size_t j, T tj, const T* __restrict yj,
               const T* __restrict yp, const T* __restrict w, T* __restrict wn, T& wnj) {
  using V = VecT<T>;
  constexpr int L = kLanes<T>, KP = NV * L;
  constexpr int C = NV <= 2 ? 4 : 2;  // rows at a time: independent FMA chains
  V wv[NV], acc[C][NV];
  for (int v = V0; v < NV; ++v) {
    wv[v] = vload(w + v * L);
    for (int r = 0; r < C; ++r) acc[r][v] = V{};
  }
  T accj[C] = {};
  for (std::size_t i = j + 1; i < m; i += C) {
    const int nr = i + C <= m ? C : static_cast<int>(m - i);
    for (int r = 0; r < nr; ++r) {
      T* a = M + (i + r) * KP;
      const T vi = yj[i + r];
      const V c = vbc(vi);
      const T vp = yp ? yp[i + r] : T(0);
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
  T sj_ = accj[0];
  for (int r = 1; r < C; ++r) sj_ += accj[r];
  for (int v = V0; v < NV; ++v) {
    V t = acc[0][v];
    for (int r = 1; r < C; ++r) t += acc[r][v];
    vstore(wn + v * L, t);
  }
  wnj = sj_;
}

template <class T, int NV, int V0 = 0>
LK_INLINE void form_pass_at(int v0, T* M, std::size_t m, std::size_t j, T tj, const T* yj,
                            const T* yp, const T* w, T* wn, T& wnj) {
  if constexpr (V0 + 1 < NV) {
    if (v0 > V0) return form_pass_at<T, NV, V0 + 1>(v0, M, m, j, tj, yj, yp, w, wn, wnj);
  }
  form_pass<T, NV, V0>(M, m, j, tj, yj, yp, w, wn, wnj);
}

// Q = H_0 ... H_{k-1} [I; 0] into M (m x k tangent rows, padding lanes must already be 0),
// from qr_factor's Y and tau. gw: 2 KP scratch values.
template <class T, int NV>
void qr_form_e(T* __restrict M, std::size_t m, std::size_t k, const T* __restrict Y,
               std::size_t ldy, const T* __restrict tau, T* __restrict gw) {
  using V = VecT<T>;
  constexpr int L = kLanes<T>, KP = NV * L;
  T* w = gw;  // tau_j sum_{i > j} v_i M[i][c] on the lanes > j, 0 elsewhere
  T* wn = gw + KP;
  T idx[KP];
  for (int c = 0; c < KP; ++c) idx[c] = static_cast<T>(c);
  for (int c = 0; c < KP; ++c) w[c] = T(0);
  for (std::size_t j = k; j-- > 0;) {
    const T tj = tau[j];
    const bool prev = j > 0;
    const T* yp = prev ? Y + (j - 1) * ldy : nullptr;
    T wnj = 0;
    const int v0 = static_cast<int>((j + 1) / L);
    for (int v = 0; v < v0; ++v) vstore(wn + v * L, V{});
    form_pass_at<T, NV>(v0, M, m, j, tj, Y + j * ldy, yp, w, wn, wnj);
    // Row j: M[j][c] = -w[c] (c > j), M[j][j] = 1 - tau_j (lanes < j are set by later steps).
    // The sums for step j - 1 (lanes >= j): wn + v^{(j-1)}_j M[j], lane j from wnj.
    T* a = M + j * KP;
    const T vpj = prev ? Y[(j - 1) * ldy + j] : T(0);
    const V jv = vbc(static_cast<T>(j)), dj = vbc(T(1) - tj), bj = vbc(wnj + vpj * (T(1) - tj)),
            vb = vbc(vpj), tn = vbc(prev ? tau[j - 1] : T(0));
    for (int v = 0; v < NV; ++v) {
      const V lane = vload(idx + v * L);
      const V row = lane == jv ? dj : -vload(w + v * L);
      vstore(a + v * L, row);
      const V raw = lane > jv ? vload(wn + v * L) + vb * row : (lane == jv ? bj : V{});
      vstore(w + v * L, tn * raw);
    }
  }
}

// Q = H_0 ... H_{k-1} [top; 0] into M (m x k tangent rows, m >= k), top: k dense rows (KP
// wide, padding 0). TSQR: the local reflectors applied to the rows of the combined Q.
template <class T, int NV>
void qr_form_dense(T* __restrict M, std::size_t m, std::size_t k, const T* __restrict Y,
                   std::size_t ldy, const T* __restrict tau, const T* __restrict top,
                   T* __restrict gw) {
  using V = VecT<T>;
  constexpr int L = kLanes<T>, KP = NV * L;
  for (std::size_t i = 0; i < k; ++i)
    for (int v = 0; v < NV; ++v) vstore(M + i * KP + v * L, vload(top + i * KP + v * L));
  T* w = gw;
  // w = sum_{i >= k-1} v_i M[i] = M[k-1] (rows >= k are zero).
  for (int c = 0; c < KP; ++c) w[c] = M[(k - 1) * KP + c];
  for (std::size_t j = k; j-- > 0;) {
    const T tj = tau[j];
    const T* yj = Y + j * ldy;
    const bool prev = j > 0;
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
        if (prev) acc[v] += vbc(yp[j]) * av;
      }
    }
    // At j = k - 1 the rows below k are still zero: written, not updated.
    const bool fresh = j + 1 == k;
    for (std::size_t i = j + 1; i < m; i += 2) {
      const int nr = i + 1 < m ? 2 : 1;
      for (int r = 0; r < nr; ++r) {
        T* a = M + (i + r) * KP;
        const V c = vbc(yj[i + r]);  // v_i; wv carries tau_j
        const V b = vbc(prev ? yp[i + r] : T(0));
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
// The halves' triangles R_t = R'_t 2^ex_t (R'_t: upper triangle of rows 0..k-1 of each factored
// half, diagonal in rd_t) are stacked as S = [top; bot] in float64 rows of KP (padding 0).
// Householder QR of S exploiting the structure (reflector j acts on top row j and bottom rows
// 0..j), one pass per reflector as in qr_factor: the pass applying reflector j accumulates the
// Gram row of column j + 1 over the bottom rows. Then Qc = H_0 ... H_{k-1} [I; 0] (2k x k),
// one pass per reflector backwards, and its two k x k blocks go out as the halves' tops in T.
// rdiag: R's diagonal. work: 4 k KP + 4 KP doubles.

// Rows i < rows of b: b[i] -= (s vsrc[i][col]) w on vectors V0.. (w is 0 on the lanes the
// reflector must not touch); over rows i < grows, g = sum y_i b'[i] with y_i = b'[i][col + 1]
// (Factor) or gs vsrc[i][col - 1] (forming Q).
template <int KP, int V0, bool Factor>
void combine_pass(double* __restrict b, const double* __restrict vsrc, std::size_t col,
                  std::size_t rows, double s, const double* __restrict w, double* __restrict g,
                  double gs, std::size_t grows) {
  using V = VecT<double>;
  constexpr int L = kLanes<double>, NV = KP / L;
  V wv[NV], acc0[NV], acc1[NV];
  for (int v = V0; v < NV; ++v) {
    wv[v] = vload(w + v * L);
    acc0[v] = acc1[v] = V{};
  }
  const double wn = Factor && col + 1 < static_cast<std::size_t>(KP) ? w[col + 1] : 0.0;
  auto row = [&](std::size_t i, V* acc, bool gram) LK_ALWAYS {
    double* r = b + i * KP;
    const double cs = s * vsrc[i * KP + col];
    const V c = vbc(cs);
    double y = 0;
    if (gram) y = Factor ? r[col + 1] - cs * wn : gs * vsrc[i * KP + col - 1];
    const V yv = vbc(y);
    for (int v = V0; v < NV; ++v) {
      const V a = vload(r + v * L) - c * wv[v];
      vstore(r + v * L, a);
      if (gram) acc[v] += yv * a;
    }
  };
  std::size_t i = 0;
  for (; i + 1 < grows; i += 2) {
    row(i, acc0, true);
    row(i + 1, acc1, true);
  }
  for (; i < grows; ++i) row(i, acc0, true);
  for (; i < rows; ++i) row(i, acc0, false);
  for (int v = V0; v < NV; ++v) vstore(g + v * L, acc0[v] + acc1[v]);
}

template <int KP, bool Factor, int V0 = 0>
LK_INLINE void combine_pass_at(int v0, double* b, const double* vsrc, std::size_t col,
                               std::size_t rows, double s, const double* w, double* g, double gs,
                               std::size_t grows) {
  if constexpr (V0 + 1 < KP / kLanes<double>) {
    if (v0 > V0)
      return combine_pass_at<KP, Factor, V0 + 1>(v0, b, vsrc, col, rows, s, w, g, gs, grows);
  }
  combine_pass<KP, V0, Factor>(b, vsrc, col, rows, s, w, g, gs, grows);
}

template <class T, int NV>
void tsqr_combine(const T* __restrict A0, const T* __restrict A1, const double* __restrict rd0,
                  const double* __restrict rd1, const double* __restrict f0,
                  const double* __restrict f1, std::size_t k, double* __restrict rdiag,
                  T* __restrict top0, T* __restrict top1, double* __restrict work) {
  using V = VecT<double>;
  constexpr int KP = NV * kLanes<T>, L = kLanes<double>, NVd = KP / L;
  static_assert(KP % L == 0, "rows of whole vectors");
  double* top = work;
  double* bot = top + k * KP;
  double* qt = bot + k * KP;
  double* qb = qt + k * KP;
  double* g = qb + k * KP;
  double* w = g + KP;
  double* taus = w + KP;
  double* scs = taus + KP;
  double idx[KP];
  for (int c = 0; c < KP; ++c) idx[c] = c;
  for (int t = 0; t < 2; ++t) {
    const T* A = t ? A1 : A0;
    const double* rd = t ? rd1 : rd0;
    const double* f = t ? f1 : f0;
    double* S = t ? bot : top;
    for (std::size_t i = 0; i < k; ++i) {
      double* r = S + i * KP;
      const T* a = A + i * KP;
      for (int c = 0; c < KP; ++c) r[c] = static_cast<double>(a[c]) * f[c];  // vectorises
      for (std::size_t c = 0; c < i; ++c) r[c] = 0.0;
      r[i] = rd[i] * f[i];
    }
  }
  // Factor. g: Gram row of column j over bottom rows 0..j (before reflector j).
  for (int c = 0; c < KP; ++c) g[c] = bot[0] * bot[c];
  for (std::size_t j = 0; j < k; ++j) {
    double* tj = top + j * KP;
    const double alpha = tj[j], xn2 = g[j];
    double beta = alpha, ta = 0, sc = 0;
    if (xn2 != 0.0) {
      const double norm = std::sqrt(alpha * alpha + xn2);
      beta = alpha >= 0 ? -norm : norm;
      const double d = alpha - beta;
      ta = -d / beta;
      sc = 1.0 / d;
    }
    rdiag[j] = beta;
    taus[j] = ta;
    scs[j] = sc;
    const V tv = vbc(ta), sv = vbc(sc), jv = vbc(static_cast<double>(j));
    for (int v = 0; v < NVd; ++v) {
      const V a = vload(tj + v * L);
      const V wv = vload(idx + v * L) > jv ? tv * (a + sv * vload(g + v * L)) : V{};
      vstore(w + v * L, wv);
      vstore(tj + v * L, a - wv);
    }
    tj[j] = beta;
    if (j + 1 < k) {
      combine_pass_at<KP, true>(static_cast<int>((j + 1) / L), bot, bot, j, j + 1, sc, w, g, 0.0,
                                j + 1);
      // Row j + 1 of the bottom is not touched by reflector j: add it to the Gram row.
      const double* bn = bot + (j + 1) * KP;
      const V y = vbc(bn[j + 1]);
      for (int v = static_cast<int>((j + 1) / L); v < NVd; ++v)
        vstore(g + v * L, vload(g + v * L) + y * vload(bn + v * L));
    }
  }
  // Qc backwards from [I; 0]; lanes < j of the rows H_j touches are zero. w: tau_j times the
  // sum top[j] + sum_{i <= j} v_i qb[i] on lanes >= j.
  for (std::size_t i = 0; i < k; ++i)
    for (int c = 0; c < KP; ++c) {
      qt[i * KP + c] = static_cast<std::size_t>(c) == i ? 1.0 : 0.0;
      qb[i * KP + c] = 0.0;
    }
  for (int c = 0; c < KP; ++c) w[c] = static_cast<std::size_t>(c) == k - 1 ? taus[k - 1] : 0.0;
  for (std::size_t j = k; j-- > 0;) {
    double* qj = qt + j * KP;
    for (int c = 0; c < KP; ++c) qj[c] -= w[c];
    const bool prev = j > 0;
    // Update bottom rows 0..j; accumulate the sum for step j - 1 over rows 0..j-1.
    combine_pass_at<KP, false>(static_cast<int>((prev ? j - 1 : 0) / L), qb, bot, j, j + 1, scs[j],
                               w, g, prev ? scs[j - 1] : 0.0, j);
    if (prev) {
      const double tn = taus[j - 1];
      const double* qp = qt + (j - 1) * KP;  // top row j - 1: untouched so far
      const V tv = vbc(tn), jv = vbc(static_cast<double>(j) - 1.5);
      for (int v = 0; v < NVd; ++v)
        vstore(w + v * L,
               vload(idx + v * L) > jv ? tv * (vload(qp + v * L) + vload(g + v * L)) : V{});
    }
  }
  for (std::size_t i = 0; i < k; ++i)
    for (int c = 0; c < KP; ++c) {
      top0[i * KP + c] = static_cast<T>(qt[i * KP + c]);
      top1[i * KP + c] = static_cast<T>(qb[i * KP + c]);
    }
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
  o.combine = &tsqr_combine<T, NV>;
  return o;
}

// The kernels for k tangent vectors (NV in 1, 2, 4, 8), or false if k is too large.
template <class T>
bool select_kernels(std::size_t k, LyapKernels<T>& out) {
  const std::size_t L = kLanes<T>;
  if (k <= L)
    out = make_kernels<T, 1>();
  else if (k <= 2 * L)
    out = make_kernels<T, 2>();
  else if (k <= 4 * L)
    out = make_kernels<T, 4>();
  else if (k <= 8 * L)
    out = make_kernels<T, 8>();
  else
    return false;
  return true;
}

#undef LK_INLINE
#undef LK_ALWAYS

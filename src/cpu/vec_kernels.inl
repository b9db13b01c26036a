// The bodies of the vectorised CPU kernels (vec.hpp), written as plain loops over fixed
// lane counts for the compiler to vectorise; included once per x86-64 level by
// src/cpu/isa/vec_<level>.cpp, which names the table function (BB_ISA_TABLE) and the
// level (BB_ISA_NAME).
//
// Compiled with -mavx2 / -mavx512* flags, so nothing here may define a function that
// other files also define (an inline function or template from a shared header: the
// linker would keep one copy, maybe this ISA's, for every caller). Hence no std::
// templates, only builtins and the C math library; everything is in an anonymous
// namespace. tests/cpu_isa_symbols.sh checks the object files for such symbols.
#include <math.h>
#include <stdint.h>

// 64-byte vectors below are passed between inlined functions of this file only, never
// across an ABI boundary: GCC's note that their calling convention differs with and
// without AVX-512 does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "cpu/vec.hpp"

namespace barbell::cpu {
namespace {

constexpr int L = 16;  // lanes of the reductions: one AVX-512 register of floats
constexpr int64_t Br = 64, Bc = 64;  // attention tiles: queries x keys (vec.hpp's attention_scratch)
constexpr float kInf = __builtin_inff();
#define BB_R __restrict__

inline float fmax_(float a, float b) { return a > b ? a : b; }
inline double dmax_(double a, double b) { return a > b ? a : b; }

// exp for float as plain arithmetic (2^k by exponent bits, 2^f by a degree-6 polynomial,
// relative error ~2e-7), so loops over it vectorise. NaN stays NaN and overflow is inf,
// as with expf; the clamped copy keeps the int conversion defined.
inline float vexp(float x) {
  float xc = x > -87.0f ? x : -87.0f;  // NaN -> -87
  xc = xc < 88.0f ? xc : 88.0f;
  float t = xc * 1.4426950408889634f;
  float k = (t + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23)
  float f = (t - k) * 0.6931471805599453f;
  float p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 + f * (1.0f / 720))))));
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, 4);
  float r = p * scale;
  r = x > 88.72284f ? kInf : r;
  return x != x ? x : r;
}
inline double vexp(double x) { return ::exp(x); }

// Sums of L lanes, combined in one fixed order.
inline float lanes_sum(const float* a) {
  float s8[8], s4[4];
  for (int i = 0; i < 8; ++i) s8[i] = a[i] + a[i + 8];
  for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}
inline double lanes_sum(const double* a) {
  double s8[8], s4[4];
  for (int i = 0; i < 8; ++i) s8[i] = a[i] + a[i + 8];
  for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}
inline float lanes_max(const float* a) {
  float m = a[0];
  for (int i = 1; i < L; ++i) m = fmax_(m, a[i]);
  return m;
}

// sum of x[i], max of x[i]
float row_sum(const float* x, int64_t n) {
  float acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) acc[j] += x[i + j];
  for (int j = 0; i + j < n; ++j) acc[j] += x[i + j];
  return lanes_sum(acc);
}
float row_max(const float* x, int64_t n) {
  float acc[L];
  for (int j = 0; j < L; ++j) acc[j] = -kInf;
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) acc[j] = fmax_(acc[j], x[i + j]);
  for (int j = 0; i + j < n; ++j) acc[j] = fmax_(acc[j], x[i + j]);
  return lanes_max(acc);
}
// sum of exp(x[i] - m)
float row_sumexp(const float* x, int64_t n, float m) {
  float acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) acc[j] += vexp(x[i + j] - m);
  for (int j = 0; i + j < n; ++j) acc[j] += vexp(x[i + j] - m);
  return lanes_sum(acc);
}
// sum of a[i] * b[i]
float row_dot(const float* a, const float* b, int64_t n) {
  float acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) acc[j] += a[i + j] * b[i + j];
  for (int j = 0; i + j < n; ++j) acc[j] += a[i + j] * b[i + j];
  return lanes_sum(acc);
}

void bf16_to_f32(float* BB_R y, const uint16_t* BB_R x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u = uint32_t(x[i]) << 16;
    __builtin_memcpy(&y[i], &u, 4);
  }
}

void f32_to_bf16(uint16_t* BB_R y, const float* BB_R x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    __builtin_memcpy(&u, &x[i], 4);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t nan = (u >> 16) | 0x40u;
    y[i] = uint16_t((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
  }
}

constexpr float kSqrt2OverPi = 0.7978845608028654f;

inline float tanh_(float u) {
  u = u > 20.0f ? 20.0f : u;
  u = u < -20.0f ? -20.0f : u;
  return 1.0f - 2.0f / (vexp(2.0f * u) + 1.0f);
}

void gelu_tanh(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i];
    float u = kSqrt2OverPi * (v + 0.044715f * v * v * v);
    y[i] = 0.5f * v * (1.0f + tanh_(u));
  }
}

void gelu_tanh_grad(float* dx, const float* dy, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i];
    float u = kSqrt2OverPi * (v + 0.044715f * v * v * v);
    float th = tanh_(u);
    float du = kSqrt2OverPi * (1.0f + float(3 * 0.044715) * v * v);
    dx[i] = dy[i] * (0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * du);
  }
}

void silu(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + vexp(-x[i]));
}

void silu_grad(float* dx, const float* dy, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float sg = 1.0f / (1.0f + vexp(-x[i]));
    dx[i] = dy[i] * (sg * (1.0f + x[i] * (1.0f - sg)));
  }
}

template <int OP>
inline float bin(float a, float b) {
  if constexpr (OP == kVecAdd) return a + b;
  else if constexpr (OP == kVecSub) return a - b;
  else if constexpr (OP == kVecMul) return a * b;
  else return a / b;
}
template <int OP>
void binary_op(float* o, const float* a, const float* b, int64_t n, bool b_scalar) {
  if (b_scalar) {
    const float bv = b[0];
    for (int64_t i = 0; i < n; ++i) o[i] = bin<OP>(a[i], bv);
  } else {
    for (int64_t i = 0; i < n; ++i) o[i] = bin<OP>(a[i], b[i]);
  }
}
void binary(int op, float* o, const float* a, const float* b, int64_t n, bool b_scalar) {
  switch (op) {
    case kVecAdd: return binary_op<kVecAdd>(o, a, b, n, b_scalar);
    case kVecSub: return binary_op<kVecSub>(o, a, b, n, b_scalar);
    case kVecMul: return binary_op<kVecMul>(o, a, b, n, b_scalar);
    default: return binary_op<kVecDiv>(o, a, b, n, b_scalar);
  }
}

void softmax(float* y, const float* x, int64_t rows, int64_t n, bool log) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * n;
    float* out = y + r * n;
    float m = row_max(in, n);
    if (m == -kInf) m = 0;  // a fully masked row stays finite in exp
    if (log) {
      const float lse = m + ::logf(row_sumexp(in, n, m));
      for (int64_t i = 0; i < n; ++i) out[i] = in[i] - lse;
    } else {
      for (int64_t i = 0; i < n; ++i) out[i] = vexp(in[i] - m);
      const float inv = 1.0f / row_sum(out, n);
      for (int64_t i = 0; i < n; ++i) out[i] *= inv;
    }
  }
}

void softmax_grad(float* dx, const float* dy, const float* y, int64_t rows, int64_t n, bool log) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = dy + r * n;
    const float* o = y + r * n;
    float* d = dx + r * n;
    if (log) {
      const float s = row_sum(g, n);
      for (int64_t i = 0; i < n; ++i) d[i] = g[i] - vexp(o[i]) * s;
    } else {
      const float s = row_dot(g, o, n);
      for (int64_t i = 0; i < n; ++i) d[i] = o[i] * (g[i] - s);
    }
  }
}

float logsumexp(const float* x, int64_t n) {
  const float m = row_max(x, n);
  if (m == -kInf || m == kInf) return m;
  return m + ::logf(row_sumexp(x, n, m));
}

void softmax_scaled(float* d, const float* x, int64_t n, float lse, float scale) {
  for (int64_t i = 0; i < n; ++i) d[i] = vexp(x[i] - lse) * scale;
}

void layer_norm(float* y, float* mean, float* rstd, const float* x, const float* w, const float* b, int64_t rows,
                int64_t n, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * n;
    float* out = y + r * n;
    const float mu = row_sum(in, n) / float(n);
    float acc[L] = {};
    int64_t i = 0;
    for (; i + L <= n; i += L)
      for (int j = 0; j < L; ++j) {
        float d = in[i + j] - mu;
        acc[j] += d * d;
      }
    for (int j = 0; i + j < n; ++j) {
      float d = in[i + j] - mu;
      acc[j] += d * d;
    }
    const float rs = float(1.0 / __builtin_sqrt(double(lanes_sum(acc)) / double(n) + double(eps)));
    mean[r] = mu;
    rstd[r] = rs;
    if (w && b) {
      for (int64_t k = 0; k < n; ++k) out[k] = (in[k] - mu) * rs * w[k] + b[k];
    } else if (w) {
      for (int64_t k = 0; k < n; ++k) out[k] = (in[k] - mu) * rs * w[k];
    } else {
      for (int64_t k = 0; k < n; ++k) out[k] = (in[k] - mu) * rs + (b ? b[k] : 0.0f);
    }
  }
}

void layer_norm_grad(float* dx, double* dw, double* db, const float* dy, const float* x, const float* mean,
                     const float* rstd, const float* w, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * n;
    const float* g = dy + r * n;
    const float mu = mean[r], rs = rstd[r];
    float a1[L] = {}, a2[L] = {};  // sum(dy*w), sum(dy*w*xhat)
    int64_t i = 0;
    for (; i + L <= n; i += L)
      for (int j = 0; j < L; ++j) {
        float xh = (in[i + j] - mu) * rs;
        float gw = g[i + j] * (w ? w[i + j] : 1.0f);
        a1[j] += gw;
        a2[j] += gw * xh;
      }
    for (int j = 0; i + j < n; ++j) {
      float xh = (in[i + j] - mu) * rs;
      float gw = g[i + j] * (w ? w[i + j] : 1.0f);
      a1[j] += gw;
      a2[j] += gw * xh;
    }
    const float s1 = lanes_sum(a1), s2 = lanes_sum(a2), inv_n = 1.0f / float(n);
    for (int64_t k = 0; k < n; ++k) {
      float xh = (in[k] - mu) * rs;
      if (dw) dw[k] += double(g[k] * xh);
      if (db) db[k] += double(g[k]);
    }
    if (dx) {
      float* d = dx + r * n;
      for (int64_t k = 0; k < n; ++k) {
        float xh = (in[k] - mu) * rs;
        float gw = g[k] * (w ? w[k] : 1.0f);
        d[k] = rs * (gw - (s1 + xh * s2) * inv_n);
      }
    }
  }
}

void rms_norm(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t n, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * n;
    float* out = y + r * n;
    const float rs = float(1.0 / __builtin_sqrt(double(row_dot(in, in, n)) / double(n) + double(eps)));
    rstd[r] = rs;
    if (w) {
      for (int64_t k = 0; k < n; ++k) out[k] = in[k] * rs * w[k];
    } else {
      for (int64_t k = 0; k < n; ++k) out[k] = in[k] * rs;
    }
  }
}

void rms_norm_grad(float* dx, double* dw, const float* dy, const float* x, const float* rstd, const float* w,
                   int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * n;
    const float* g = dy + r * n;
    const float rs = rstd[r];
    float a[L] = {};  // sum(dy*w*xhat)
    int64_t i = 0;
    for (; i + L <= n; i += L)
      for (int j = 0; j < L; ++j) a[j] += g[i + j] * (w ? w[i + j] : 1.0f) * (in[i + j] * rs);
    for (int j = 0; i + j < n; ++j) a[j] += g[i + j] * (w ? w[i + j] : 1.0f) * (in[i + j] * rs);
    const float s = lanes_sum(a) / float(n);
    if (dw)
      for (int64_t k = 0; k < n; ++k) dw[k] += double(g[k] * (in[k] * rs));
    if (dx) {
      float* d = dx + r * n;
      for (int64_t k = 0; k < n; ++k) d[k] = rs * (g[k] * (w ? w[k] : 1.0f) - in[k] * rs * s);
    }
  }
}

void col_sum(double* acc, const float* x, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * cols;
    for (int64_t c = 0; c < cols; ++c) acc[c] += double(row[c]);
  }
}

void add_bias(float* y, const float* bias, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = y + r * cols;
    for (int64_t c = 0; c < cols; ++c) row[c] += bias[c];
  }
}

double sum_squares(const float* x, int64_t n) {
  double acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) acc[j] += double(x[i + j]) * double(x[i + j]);
  for (int j = 0; i + j < n; ++j) acc[j] += double(x[i + j]) * double(x[i + j]);
  return lanes_sum(acc);
}

void adamw(float* p, const float* g, float* m, float* v, int64_t n, float b1, float b2, float omb1, float omb2,
           float eps, float decay, float step_size, float inv_sqrt_bc2) {
  for (int64_t i = 0; i < n; ++i) {
    float gi = g[i];
    float mi = b1 * m[i] + omb1 * gi;
    float vi = b2 * v[i] + omb2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * mi / (__builtin_sqrtf(vi) * inv_sqrt_bc2 + eps);
  }
}

// ---- fused attention ------------------------------------------------------------------
//
// Forward, per head: query tiles of Br rows; for each key tile of Bc keys the scores
// S = q k^T * scale, the online softmax (running max m and sum l per row, the
// accumulator rescaled when m grows), and acc += P v. No [T, T] tensor exists; lse =
// m + log(l) is saved for the backward. Backward (FlashAttention-2's order, serial per
// head so every sum has one fixed order): for each key tile, over the query tiles that
// see it: P = exp(S - lse), dV += P^T dO, dP = dO v^T, dS = P (dP - rowsum(dO o)) * scale,
// dQ += dS k, dK += dS^T q.
//
// Tiles are copied into scratch with the head dim padded with zeros to DC (16, 32, 64 or
// 128; any other D runs the DC = 0 loops), so every inner loop has a compile-time trip
// count and accumulates in registers. Padding adds zeros to dot products: no change.

inline int64_t mn_(int64_t a, int64_t b) { return a < b ? a : b; }

// The exclusive end of the keys query i sees: min(Tk, i + 1 + Tk - Tq) when causal.
inline int64_t key_end(int64_t i, int64_t Tq, int64_t Tk, bool causal) {
  if (!causal) return Tk;
  int64_t e = i + 1 + (Tk - Tq);
  return e < 0 ? 0 : (e > Tk ? Tk : e);
}

// dst[r][0:Dp] = rows [i0, i0 + n) of x (row stride rs, D values), zero-padded to Dp.
template <typename T>
void load_rows(T* BB_R dst, const T* x, int64_t rs, int64_t i0, int64_t n, int64_t D, int64_t Dp) {
  for (int64_t r = 0; r < n; ++r) {
    const T* row = x + (i0 + r) * rs;
    T* o = dst + r * Dp;
    for (int64_t d = 0; d < D; ++d) o[d] = row[d];
    for (int64_t d = D; d < Dp; ++d) o[d] = 0;
  }
}
// xt[d][c] (Dp x Bc) = row c of the n rows from j0, zero-padded in both directions.
// Written a row of xt at a time (contiguous stores, strided loads): writing it a column
// at a time, 64 stores 256 bytes apart, cost 30% of the backward.
template <typename T>
void load_transposed(T* BB_R xt, const T* x, int64_t rs, int64_t j0, int64_t n, int64_t D, int64_t Dp) {
  const T* base = x + j0 * rs;
  for (int64_t d = 0; d < D; ++d) {
    T* o = xt + d * Bc;
    for (int64_t c = 0; c < n; ++c) o[c] = base[c * rs + d];
    for (int64_t c = n; c < Bc; ++c) o[c] = 0;
  }
  for (int64_t i = D * Bc; i < Dp * Bc; ++i) xt[i] = 0;
}

// 64-byte vectors (GCC's vector extension): one AVX-512 register, two AVX2 or four SSE2
// ones. Accumulators of these types stay in registers, where arrays of scalars were
// kept in memory (a load and a store around every multiply-add).
typedef float vf16 __attribute__((vector_size(64)));
typedef double vd8 __attribute__((vector_size(64)));
template <typename T> struct VecOf;
template <> struct VecOf<float> { using type = vf16; static constexpr int64_t W = 16; };
template <> struct VecOf<double> { using type = vd8; static constexpr int64_t W = 8; };
template <typename T> using vec_t = typename VecOf<T>::type;
template <typename T>
__attribute__((always_inline)) inline vec_t<T> vload(const T* p) {
  vec_t<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
__attribute__((always_inline)) inline void vstore(T* p, vec_t<T> v) {
  __builtin_memcpy(p, &v, sizeof v);
}

// How many 64-byte accumulators the tile loops keep in registers: 32 zmm registers with
// AVX-512, 16 ymm (8 vectors) with AVX2, 16 xmm (4 vectors) with SSE2, leaving room for
// the operands.
#if defined(__AVX512F__)
constexpr int64_t kAccVecs = 16;
#elif defined(__AVX2__)
constexpr int64_t kAccVecs = 5;
#else
constexpr int64_t kAccVecs = 3;
#endif
// Rows (or columns) a tile loop handles at once with NV accumulators each.
constexpr int64_t rows_at_once(int64_t NV) {
  const int64_t r = kAccVecs / NV;
  return r < 1 ? 1 : (r > 8 ? 8 : r);
}

// C[r][0:Bc] = sum_d A[r][d] * Bt[d][0:Bc] for r < rows (A [rows, Dp], Bt [Dp, Bc]).
template <typename T, int DC, int64_t R>
void mm_abt_rows(T* BB_R C, const T* BB_R A, const T* BB_R Bt, int64_t r, int64_t Dp) {
  using V = vec_t<T>;
  constexpr int64_t W = VecOf<T>::W, NV = Bc / W;
  V s[R][NV] = {};
  for (int64_t d = 0; d < Dp; ++d) {
    const T* bd = Bt + d * Bc;
    V b[NV];
    for (int64_t j = 0; j < NV; ++j) b[j] = vload(bd + j * W);
    for (int64_t i = 0; i < R; ++i) {
      const T x = A[(r + i) * Dp + d];
      for (int64_t j = 0; j < NV; ++j) s[i][j] += x * b[j];
    }
  }
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = 0; j < NV; ++j) vstore(C + (r + i) * Bc + j * W, s[i][j]);
}
template <typename T, int DC>
void mm_abt(T* BB_R C, const T* BB_R A, const T* BB_R Bt, int64_t rows, int64_t Dp_) {
  const int64_t Dp = DC ? DC : Dp_;
  constexpr int64_t R = rows_at_once(Bc / VecOf<T>::W);
  int64_t r = 0;
  for (; r + R <= rows; r += R) mm_abt_rows<T, DC, R>(C, A, Bt, r, Dp);
  for (; r < rows; ++r) mm_abt_rows<T, DC, 1>(C, A, Bt, r, Dp);
}

// Acc[r][0:Dp] = Acc[r] * (alpha ? alpha[r] : 1) + sum_{c < cols} P[r][c] * X[c][0:Dp]
// (P [rows, Bc], X [cols, Dp], Acc [rows, Dp]).
template <typename T, int DC>
void mm_pv(T* BB_R Acc, const T* BB_R P, const T* BB_R X, const T* alpha, int64_t rows, int64_t cols,
           int64_t Dp_) {
  if constexpr (DC == 0) {
    const int64_t Dp = Dp_;
    for (int64_t r = 0; r < rows; ++r) {
      T* a = Acc + r * Dp;
      const T al = alpha ? alpha[r] : T(1);
      for (int64_t d = 0; d < Dp; ++d) a[d] *= al;
      for (int64_t c = 0; c < cols; ++c) {
        const T p = P[r * Bc + c];
        const T* x = X + c * Dp;
        for (int64_t d = 0; d < Dp; ++d) a[d] += p * x[d];
      }
    }
  } else {
    using V = vec_t<T>;
    constexpr int64_t W = VecOf<T>::W, NV = DC / W;
    static_assert(DC % W == 0, "head dims are padded to multiples of 16");
    constexpr int64_t R = rows_at_once(NV);
    int64_t r = 0;
    for (; r + R <= rows; r += R) {
      V a[R][NV];
      for (int64_t i = 0; i < R; ++i) {
        const T al = alpha ? alpha[r + i] : T(1);
        for (int64_t j = 0; j < NV; ++j) a[i][j] = vload(Acc + (r + i) * DC + j * W) * al;
      }
      for (int64_t c = 0; c < cols; ++c) {
        V x[NV];
        for (int64_t j = 0; j < NV; ++j) x[j] = vload(X + c * DC + j * W);
        for (int64_t i = 0; i < R; ++i) {
          const T p = P[(r + i) * Bc + c];
          for (int64_t j = 0; j < NV; ++j) a[i][j] += p * x[j];
        }
      }
      for (int64_t i = 0; i < R; ++i)
        for (int64_t j = 0; j < NV; ++j) vstore(Acc + (r + i) * DC + j * W, a[i][j]);
    }
    for (; r < rows; ++r) {
      V a[NV];
      const T al = alpha ? alpha[r] : T(1);
      for (int64_t j = 0; j < NV; ++j) a[j] = vload(Acc + r * DC + j * W) * al;
      for (int64_t c = 0; c < cols; ++c) {
        const T p = P[r * Bc + c];
        for (int64_t j = 0; j < NV; ++j) a[j] += p * vload(X + c * DC + j * W);
      }
      for (int64_t j = 0; j < NV; ++j) vstore(Acc + r * DC + j * W, a[j]);
    }
  }
}

// Acc[c][0:Dp] += sum_{r < rows} P[r][c] * X[r][0:Dp] for c < cols (P^T X; P [rows, Bc],
// X [rows, Dp], Acc [cols, Dp]): P's columns are read with broadcasts, no transpose.
template <typename T, int DC>
void mm_ptx(T* BB_R Acc, const T* BB_R P, const T* BB_R X, int64_t rows, int64_t cols, int64_t Dp_) {
  if constexpr (DC == 0) {
    const int64_t Dp = Dp_;
    for (int64_t c = 0; c < cols; ++c) {
      T* a = Acc + c * Dp;
      for (int64_t r = 0; r < rows; ++r) {
        const T p = P[r * Bc + c];
        const T* x = X + r * Dp;
        for (int64_t d = 0; d < Dp; ++d) a[d] += p * x[d];
      }
    }
  } else {
    using V = vec_t<T>;
    constexpr int64_t W = VecOf<T>::W, NV = DC / W;
    constexpr int64_t R = rows_at_once(NV);  // columns at once
    int64_t c = 0;
    for (; c + R <= cols; c += R) {
      V a[R][NV];
      for (int64_t i = 0; i < R; ++i)
        for (int64_t j = 0; j < NV; ++j) a[i][j] = vload(Acc + (c + i) * DC + j * W);
      for (int64_t r = 0; r < rows; ++r) {
        V x[NV];
        for (int64_t j = 0; j < NV; ++j) x[j] = vload(X + r * DC + j * W);
        for (int64_t i = 0; i < R; ++i) {
          const T p = P[r * Bc + c + i];
          for (int64_t j = 0; j < NV; ++j) a[i][j] += p * x[j];
        }
      }
      for (int64_t i = 0; i < R; ++i)
        for (int64_t j = 0; j < NV; ++j) vstore(Acc + (c + i) * DC + j * W, a[i][j]);
    }
    for (; c < cols; ++c) {
      V a[NV];
      for (int64_t j = 0; j < NV; ++j) a[j] = vload(Acc + c * DC + j * W);
      for (int64_t r = 0; r < rows; ++r) {
        const T p = P[r * Bc + c];
        for (int64_t j = 0; j < NV; ++j) a[j] += p * vload(X + r * DC + j * W);
      }
      for (int64_t j = 0; j < NV; ++j) vstore(Acc + c * DC + j * W, a[j]);
    }
  }
}

// Row max of Bc values in L lanes.
template <typename T>
T tile_row_max(const T* BB_R s) {
  T m[L];
  for (int j = 0; j < L; ++j) m[j] = s[j];
  for (int64_t c = L; c < Bc; c += L)
    for (int j = 0; j < L; ++j) m[j] = s[c + j] > m[j] ? s[c + j] : m[j];
  T r = m[0];
  for (int j = 1; j < L; ++j) r = m[j] > r ? m[j] : r;
  return r;
}
// p = exp(s - m) in place (masked -inf -> 0); returns the row sum, in L lanes.
template <typename T>
T tile_row_exp(T* BB_R s, T m) {
  for (int64_t c = 0; c < Bc; ++c) {
    const T x = s[c];
    const T e = vexp(x - m);
    s[c] = x == -T(kInf) ? T(0) : e;
  }
  T acc[L] = {};
  for (int64_t c = 0; c < Bc; c += L)
    for (int j = 0; j < L; ++j) acc[j] += s[c + j];
  return lanes_sum(acc);
}

// Scales S[r] by `scale` and masks the columns at or past the row's visible key end.
template <typename T>
void tile_scale_mask(T* BB_R S, int64_t rows, T scale, int64_t i0, int64_t j0, int64_t Tq, int64_t Tk, bool causal,
                     int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    int64_t lim = key_end(i0 + r, Tq, Tk, causal) - j0;
    lim = mn_(lim, cols);
    T* sr = S + r * Bc;
    for (int64_t c = 0; c < Bc; ++c) sr[c] = c < lim ? sr[c] * scale : -T(kInf);
  }
}

// vec.hpp's attention_padded_dim (not called from here: this file defines no shared inline function).
inline int64_t padded_dim(int64_t D) {
  return D <= 16 ? 16 : D <= 32 ? 32 : D <= 64 ? 64 : D <= 128 ? 128 : (D + 15) / 16 * 16;
}

template <typename T, int DC>
void attention_forward_impl(const AttnHead<T>& h, T* scratch) {
  const int64_t D = h.D, Dp = DC ? DC : padded_dim(D), Tq = h.Tq, Tk = h.Tk;
  const int64_t tiles = (Tk + Bc - 1) / Bc;
  T* qb = scratch;                  // [Br, Dp]
  T* kt_all = qb + Br * Dp;         // [tiles][Dp, Bc]: k transposed, a tile at a time
  T* vb_all = kt_all + tiles * Dp * Bc;  // [tiles * Bc, Dp]
  T* S = vb_all + tiles * Bc * Dp;  // [Br, Bc]
  T* acc = S + Br * Bc;   // [Br, Dp]
  T* m = acc + Br * Dp;   // [Br]
  T* l = m + Br;          // [Br]
  T* alpha = l + Br;      // [Br]
  // k and v are read by every query tile: copied (k transposed, both padded) once per head.
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t j0 = t * Bc, cols = mn_(Bc, Tk - j0);
    load_transposed(kt_all + t * Dp * Bc, h.k, h.k_rs, j0, cols, D, Dp);
    load_rows(vb_all + j0 * Dp, h.v, h.v_rs, j0, cols, D, Dp);
  }
  for (int64_t i0 = 0; i0 < Tq; i0 += Br) {
    const int64_t rows = mn_(Br, Tq - i0);
    load_rows(qb, h.q, h.q_rs, i0, rows, D, Dp);
    for (int64_t r = 0; r < rows; ++r) {
      m[r] = -T(kInf);
      l[r] = 0;
    }
    for (int64_t i = 0; i < rows * Dp; ++i) acc[i] = 0;
    const int64_t jend = key_end(i0 + rows - 1, Tq, Tk, h.causal);
    for (int64_t j0 = 0; j0 < jend; j0 += Bc) {
      const int64_t cols = mn_(Bc, jend - j0);
      const T* kt = kt_all + (j0 / Bc) * Dp * Bc;
      const T* vb = vb_all + j0 * Dp;
      mm_abt<T, DC>(S, qb, kt, rows, Dp);
      tile_scale_mask(S, rows, h.scale, i0, j0, Tq, Tk, h.causal, cols);
      for (int64_t r = 0; r < rows; ++r) {
        T* sr = S + r * Bc;
        const T tm = tile_row_max(sr);
        const T mx = tm > m[r] ? tm : m[r];
        if (mx == -T(kInf)) {  // nothing visible yet: P = 0, acc stays 0
          for (int64_t c = 0; c < Bc; ++c) sr[c] = 0;
          alpha[r] = 1;
          continue;
        }
        alpha[r] = m[r] == -T(kInf) ? T(0) : vexp(m[r] - mx);
        l[r] = l[r] * alpha[r] + tile_row_exp(sr, mx);
        m[r] = mx;
      }
      mm_pv<T, DC>(acc, S, vb, alpha, rows, cols, Dp);
    }
    for (int64_t r = 0; r < rows; ++r) {
      T* orow = h.o + (i0 + r) * h.o_rs;
      const T inv = T(1) / l[r];  // a row that sees no key: 0 / 0, NaN, as the Math composition gives
      for (int64_t d = 0; d < D; ++d) orow[d] = acc[r * Dp + d] * inv;
      h.lse[i0 + r] = l[r] > 0 ? m[r] + T(::log(double(l[r]))) : -T(kInf);
    }
  }
}

template <typename T, int DC>
void attention_backward_impl(const AttnHead<T>& h, T* scratch) {
  const int64_t D = h.D, Dp = DC ? DC : padded_dim(D), Tq = h.Tq, Tk = h.Tk;
  const int64_t Tq_pad = (Tq + Br - 1) / Br * Br;
  T* q_all = scratch;                 // [Tq, Dp]: q and dO of the head, copied once
  T* do_all = q_all + Tq_pad * Dp;    // [Tq, Dp]
  T* kb = do_all + Tq_pad * Dp;       // [Bc, Dp]
  T* kt = kb + Bc * Dp;      // [Dp, Bc]
  T* vt = kt + Dp * Bc;      // [Dp, Bc]
  T* dk = vt + Dp * Bc;      // [Bc, Dp]
  T* dv = dk + Bc * Dp;      // [Bc, Dp]
  T* P = dv + Bc * Dp;       // [Br, Bc]
  T* dS = P + Br * Bc;       // [Br, Bc]
  T* Di_all = dS + Br * Bc;  // [Tq]: rowsum(dO o)
  T* dq = Di_all + Tq_pad;   // [Tq, Dp]: dQ of the whole head, written at the end
  for (int64_t i = 0; i < Tq * Dp; ++i) dq[i] = 0;
  load_rows(q_all, h.q, h.q_rs, 0, Tq, D, Dp);
  load_rows(do_all, h.dout, h.dout_rs, 0, Tq, D, Dp);
  for (int64_t i = 0; i < Tq; ++i) {
    const T* orow = h.o + i * h.o_rs;
    const T* g = do_all + i * Dp;
    T acc[L] = {};  // L lanes, summed in a fixed order
    int64_t d = 0;
    for (; d + L <= D; d += L)
      for (int j = 0; j < L; ++j) acc[j] += g[d + j] * orow[d + j];
    for (int j = 0; d + j < D; ++j) acc[j] += g[d + j] * orow[d + j];
    Di_all[i] = lanes_sum(acc);
  }
  for (int64_t j0 = 0; j0 < Tk; j0 += Bc) {
    const int64_t cols = mn_(Bc, Tk - j0);
    load_transposed(kt, h.k, h.k_rs, j0, cols, D, Dp);
    load_transposed(vt, h.v, h.v_rs, j0, cols, D, Dp);
    load_rows(kb, h.k, h.k_rs, j0, cols, D, Dp);
    for (int64_t i = 0; i < Bc * Dp; ++i) dk[i] = dv[i] = 0;
    // The first query that sees key j0: key_end(i) > j0.
    int64_t ifirst = 0;
    if (h.causal) ifirst = j0 - (Tk - Tq) < 0 ? 0 : j0 - (Tk - Tq);
    for (int64_t i0 = (ifirst / Br) * Br; i0 < Tq; i0 += Br) {
      const int64_t rows = mn_(Br, Tq - i0);
      const T* qb = q_all + i0 * Dp;
      const T* dob = do_all + i0 * Dp;
      const T* Di = Di_all + i0;
      mm_abt<T, DC>(P, qb, kt, rows, Dp);
      tile_scale_mask(P, rows, h.scale, i0, j0, Tq, Tk, h.causal, cols);
      for (int64_t r = 0; r < rows; ++r) {
        T* pr = P + r * Bc;
        const T lse = h.lse[i0 + r];
        for (int64_t c = 0; c < Bc; ++c) {
          const T x = pr[c];
          const T e = vexp(x - lse);
          pr[c] = x == -T(kInf) ? T(0) : e;
        }
      }
      mm_ptx<T, DC>(dv, P, dob, rows, cols, Dp);  // dV += P^T dO
      mm_abt<T, DC>(dS, dob, vt, rows, Dp);       // dP = dO v^T
      for (int64_t r = 0; r < rows; ++r) {
        const T* pr = P + r * Bc;
        T* dsr = dS + r * Bc;
        const T di = Di[r], sc = h.scale;
        for (int64_t c = 0; c < Bc; ++c) dsr[c] = pr[c] * (dsr[c] - di) * sc;
      }
      mm_pv<T, DC>(dq + i0 * Dp, dS, kb, nullptr, rows, cols, Dp);  // dQ += dS k
      mm_ptx<T, DC>(dk, dS, qb, rows, cols, Dp);                    // dK += dS^T q
    }
    for (int64_t c = 0; c < cols; ++c) {
      T* dkr = h.dk + (j0 + c) * h.dk_rs;
      T* dvr = h.dv + (j0 + c) * h.dv_rs;
      for (int64_t d = 0; d < D; ++d) {
        dkr[d] = dk[c * Dp + d];
        dvr[d] = dv[c * Dp + d];
      }
    }
  }
  for (int64_t i = 0; i < Tq; ++i) {
    T* dqr = h.dq + i * h.dq_rs;
    for (int64_t d = 0; d < D; ++d) dqr[d] = dq[i * Dp + d];
  }
}

template <typename T>
void attention_forward(const AttnHead<T>& h, T* scratch) {
  switch (padded_dim(h.D)) {
    case 16: return attention_forward_impl<T, 16>(h, scratch);
    case 32: return attention_forward_impl<T, 32>(h, scratch);
    case 64: return attention_forward_impl<T, 64>(h, scratch);
    case 128: return attention_forward_impl<T, 128>(h, scratch);
    default: return attention_forward_impl<T, 0>(h, scratch);
  }
}
template <typename T>
void attention_backward(const AttnHead<T>& h, T* scratch) {
  switch (padded_dim(h.D)) {
    case 16: return attention_backward_impl<T, 16>(h, scratch);
    case 32: return attention_backward_impl<T, 32>(h, scratch);
    case 64: return attention_backward_impl<T, 64>(h, scratch);
    case 128: return attention_backward_impl<T, 128>(h, scratch);
    default: return attention_backward_impl<T, 0>(h, scratch);
  }
}
void attention_forward_f32(const AttnHead<float>& h, float* s) { attention_forward<float>(h, s); }
void attention_backward_f32(const AttnHead<float>& h, float* s) { attention_backward<float>(h, s); }
void attention_forward_f64(const AttnHead<double>& h, double* s) { attention_forward<double>(h, s); }
void attention_backward_f64(const AttnHead<double>& h, double* s) { attention_backward<double>(h, s); }

}  // namespace

const VecKernels& BB_ISA_TABLE() {
  static const VecKernels k = [] {
    VecKernels t{};
    t.isa = BB_ISA_NAME;
    t.bf16_to_f32 = bf16_to_f32;
    t.f32_to_bf16 = f32_to_bf16;
    t.gelu_tanh = gelu_tanh;
    t.gelu_tanh_grad = gelu_tanh_grad;
    t.silu = silu;
    t.silu_grad = silu_grad;
    t.binary = binary;
    t.softmax = softmax;
    t.softmax_grad = softmax_grad;
    t.logsumexp = logsumexp;
    t.softmax_scaled = softmax_scaled;
    t.layer_norm = layer_norm;
    t.layer_norm_grad = layer_norm_grad;
    t.rms_norm = rms_norm;
    t.rms_norm_grad = rms_norm_grad;
    t.col_sum = col_sum;
    t.add_bias = add_bias;
    t.sum_squares = sum_squares;
    t.adamw = adamw;
    t.attention_forward_f32 = attention_forward_f32;
    t.attention_backward_f32 = attention_backward_f32;
    t.attention_forward_f64 = attention_forward_f64;
    t.attention_backward_f64 = attention_backward_f64;
    return t;
  }();
  return k;
}

}  // namespace barbell::cpu

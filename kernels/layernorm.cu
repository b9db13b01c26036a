// LayerNorm and RMSNorm over the rows of a contiguous [rows, n] tensor, forward and
// backward. Statistics and all sums are fp32 (fp64 for f64 inputs).
//
// Register path (n a multiple of the 16-byte vector, aligned, and small enough): a
// group of 32..512 threads owns a row and keeps it in registers, read once with
// 16-byte loads; small rows put several groups in one 256-thread block. Forward takes
// mean and variance in two passes over the registers. Backward computes dx from
// registers in one pass and accumulates dw/db per thread for the columns it owns over
// a fixed chunk of rows; the groups of a block are combined in group order, one fp32
// row of partials per block goes to scratch, and a second kernel adds the partials in
// block order: deterministic, no atomics. Other shapes take a block-per-row path that
// reads x from global memory on each pass.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "cuda/kernels.hpp"

namespace barbell::gpu {
namespace {

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
  BB_VECTOR_ACCESS(Vec)
};
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte access

constexpr int kBlock = 256;        // threads per block (several rows when a row needs fewer)
constexpr int kMaxGroup = 512;     // most threads on one row in the register path
constexpr int kMaxWarps = kMaxGroup / 32;
constexpr int kFwdElems = 32;      // elements of x a thread holds in forward
constexpr int kBwdElems = 16;      // elements of x and of dy a thread holds in backward
constexpr int kMaxItems = 8;       // vectors per thread (template values 1, 2, 4, 8)
constexpr int kCombMax = kBlock / 2 * kBwdElems;  // columns when a block holds >= 2 groups
constexpr int kMaxPartials = 1024;  // blocks in backward with dw/db = rows of partials (~8 per SM)
constexpr int64_t kMaxScratch = int64_t(1) << 22;  // elements of partials per output (16 MB f32)

__device__ __forceinline__ float acc_sqrt(float v) { return ::sqrtf(v); }
__device__ __forceinline__ double acc_sqrt(double v) { return ::sqrt(v); }

// Sums NV values over each group of `gw` consecutive warps and gives every thread its
// group's sums. Every thread of the block must call it: it synchronises when gw > 1.
// smem holds kMaxWarps * NV values.
template <typename A, int NV>
__device__ __forceinline__ void group_sum(A (&v)[NV], A* smem, int gw) {
#pragma unroll
  for (int k = 0; k < NV; ++k) v[k] = warp_sum(v[k]);
  if (gw == 1) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // the previous call's readers are done
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < NV; ++k) smem[warp * NV + k] = v[k];
  }
  __syncthreads();
  const int first = warp - warp % gw;
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    A s = A(0);
    for (int i = 0; i < gw; ++i) s += smem[(first + i) * NV + k];  // fixed order
    v[k] = s;
  }
}

// ---- forward, register path ---------------------------------------------------------
template <typename T, typename S, bool RMS, int ITEMS>
__global__ void __launch_bounds__(kMaxGroup)
    norm_fwd_reg(T* __restrict__ y, S* __restrict__ mean, S* __restrict__ rstd, const T* __restrict__ x,
                 const T* __restrict__ w, const T* __restrict__ b, int64_t rows, int n, int gw, acc_t<T> eps) {
  using A = acc_t<T>;
  constexpr int VEC = kVec<T>;
  using V = Vec<T, VEC>;
  __shared__ A red[kMaxWarps];
  const int gt = gw * 32, ngroups = blockDim.x / gt;
  const int g = threadIdx.x / gt, t = threadIdx.x % gt;
  const int64_t row = int64_t(blockIdx.x) * ngroups + g;
  const bool valid = row < rows;
  const int nvec = n / VEC;
  const V* xr = reinterpret_cast<const V*>(x + (valid ? row : 0) * int64_t(n));

  V xv[ITEMS];
  A mu = A(0);
  if constexpr (!RMS) {
    A s[1] = {A(0)};
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int c = t + i * gt;
      if (valid && c < nvec) {
        xv[i] = xr[c];
#pragma unroll
        for (int j = 0; j < VEC; ++j) s[0] += to_acc(xv[i].v[j]);
      }
    }
    group_sum(s, red, gw);
    mu = s[0] / A(n);
  } else {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int c = t + i * gt;
      if (valid && c < nvec) xv[i] = xr[c];
    }
  }
  A ss[1] = {A(0)};
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int c = t + i * gt;
    if (valid && c < nvec) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const A d = to_acc(xv[i].v[j]) - mu;
        ss[0] += d * d;
      }
    }
  }
  group_sum(ss, red, gw);
  if (!valid) return;  // no barrier below
  const A rs = A(1) / acc_sqrt(ss[0] / A(n) + eps);
  if (t == 0) {
    if constexpr (!RMS) mean[row] = static_cast<S>(mu);
    rstd[row] = static_cast<S>(rs);
  }
  V* yr = reinterpret_cast<V*>(y + row * int64_t(n));
  const V* wr = reinterpret_cast<const V*>(w);
  const V* br = reinterpret_cast<const V*>(b);
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int c = t + i * gt;
    if (c < nvec) {
      V wv, bv, o;
      if (w) wv = wr[c];
      if (b) bv = br[c];
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        A v = (to_acc(xv[i].v[j]) - mu) * rs;
        if (w) v *= to_acc(wv.v[j]);
        if (b) v += to_acc(bv.v[j]);
        o.v[j] = from_acc<T>(v);
      }
      yr[c] = o;
    }
  }
}

// ---- backward, register path --------------------------------------------------------
// Block b handles rows [b*chunk, (b+1)*chunk); its groups take every ngroups-th row.
// part_dw/part_db (either may be null) get one row of n partial sums per block.
template <typename T, typename S, bool RMS, int ITEMS>
__global__ void __launch_bounds__(kMaxGroup)
    norm_bwd_reg(T* __restrict__ dx, acc_t<T>* __restrict__ part_dw, acc_t<T>* __restrict__ part_db,
                 const T* __restrict__ dy, const T* __restrict__ x, const S* __restrict__ mean,
                 const S* __restrict__ rstd, const T* __restrict__ w, int64_t rows, int n, int gw, int64_t chunk) {
  using A = acc_t<T>;
  constexpr int VEC = kVec<T>;
  using V = Vec<T, VEC>;
  __shared__ A red[kMaxWarps * 2];
  __shared__ A comb[2][kCombMax];
  const int gt = gw * 32, ngroups = blockDim.x / gt;
  const int g = threadIdx.x / gt, t = threadIdx.x % gt;
  const int nvec = n / VEC;
  const A inv_n = A(1) / A(n);
  const int64_t r0 = int64_t(blockIdx.x) * chunk, r1 = ::min(rows, r0 + chunk);
  const int64_t iters = r1 > r0 ? (r1 - r0 + ngroups - 1) / ngroups : 0;

  V wv[ITEMS];
  if (w) {
    const V* wr = reinterpret_cast<const V*>(w);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int c = t + i * gt;
      if (c < nvec) wv[i] = wr[c];
    }
  }
  A dwa[ITEMS][VEC], dba[ITEMS][VEC];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) dwa[i][j] = dba[i][j] = A(0);
  }

  for (int64_t it = 0; it < iters; ++it) {
    const int64_t row = r0 + it * ngroups + g;
    const bool valid = row < r1;
    const int64_t off = (valid ? row : 0) * int64_t(n);
    const V* xr = reinterpret_cast<const V*>(x + off);
    const V* gr = reinterpret_cast<const V*>(dy + off);
    A mu = A(0), rs = A(0);
    if (valid) {
      if constexpr (!RMS) mu = static_cast<A>(mean[row]);
      rs = static_cast<A>(rstd[row]);
    }
    V xv[ITEMS], gv[ITEMS];
    A s[2] = {A(0), A(0)};  // sum(dy*w), sum(dy*w*xhat)
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int c = t + i * gt;
      if (valid && c < nvec) {
        xv[i] = xr[c];
        gv[i] = gr[c];
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const A xh = (to_acc(xv[i].v[j]) - mu) * rs;
          const A gw_ = w ? to_acc(gv[i].v[j]) * to_acc(wv[i].v[j]) : to_acc(gv[i].v[j]);
          s[0] += gw_;
          s[1] += gw_ * xh;
        }
      }
    }
    group_sum(s, red, gw);
    if (!valid) continue;  // the next group_sum is reached by every thread all the same
    const A s1n = RMS ? A(0) : s[0] * inv_n, s2n = s[1] * inv_n;
    V* dxr = dx ? reinterpret_cast<V*>(dx + off) : nullptr;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int c = t + i * gt;
      if (c < nvec) {
        V o;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const A xh = (to_acc(xv[i].v[j]) - mu) * rs;
          const A gg = to_acc(gv[i].v[j]);
          const A gw_ = w ? gg * to_acc(wv[i].v[j]) : gg;
          o.v[j] = from_acc<T>(rs * (gw_ - (s1n + xh * s2n)));
          dwa[i][j] += gg * xh;
          dba[i][j] += gg;
        }
        if (dxr) dxr[c] = o;
      }
    }
  }

  // This block's partial row: the groups' sums added in group order.
  if (!part_dw && !part_db) return;
  const int64_t prow = int64_t(blockIdx.x) * n;
  if (ngroups == 1) {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int c = t + i * gt;
      if (c < nvec) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const int64_t idx = int64_t(c) * VEC + j;
          if (part_dw) part_dw[prow + idx] = dwa[i][j];
          if (part_db) part_db[prow + idx] = dba[i][j];
        }
      }
    }
    return;
  }
  for (int gi = 0; gi < ngroups; ++gi) {
    if (g == gi) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int c = t + i * gt;
        if (c < nvec) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            const int idx = c * VEC + j;
            const A a = gi ? comb[0][idx] + dwa[i][j] : dwa[i][j];
            const A bb = gi ? comb[1][idx] + dba[i][j] : dba[i][j];
            if (gi == ngroups - 1) {
              if (part_dw) part_dw[prow + idx] = a;
              if (part_db) part_db[prow + idx] = bb;
            } else {
              comb[0][idx] = a;
              comb[1][idx] = bb;
            }
          }
        }
      }
    }
    __syncthreads();
  }
}

// ---- block-per-row path (any n, any alignment) ---------------------------------------
template <typename T, typename S, bool RMS>
__global__ void __launch_bounds__(kBlock)
    norm_fwd_rows(T* __restrict__ y, S* __restrict__ mean, S* __restrict__ rstd, const T* __restrict__ x,
                  const T* __restrict__ w, const T* __restrict__ b, int64_t n, acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ A red[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * n;
  A mu = A(0);
  if constexpr (!RMS) {
    A s = A(0);
    for (int64_t c = threadIdx.x; c < n; c += blockDim.x) s += to_acc(xr[c]);
    mu = block_sum(s, red) / A(n);
  }
  A ss = A(0);
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
    const A d = to_acc(xr[c]) - mu;
    ss += d * d;
  }
  const A rs = A(1) / acc_sqrt(block_sum(ss, red) / A(n) + eps);
  if (threadIdx.x == 0) {
    if constexpr (!RMS) mean[row] = static_cast<S>(mu);
    rstd[row] = static_cast<S>(rs);
  }
  T* yr = y + row * n;
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
    A v = (to_acc(xr[c]) - mu) * rs;
    if (w) v *= to_acc(w[c]);
    if (b) v += to_acc(b[c]);
    yr[c] = from_acc<T>(v);
  }
}

// Partials must be zero on entry: each thread adds into the columns it owns.
template <typename T, typename S, bool RMS>
__global__ void __launch_bounds__(kBlock)
    norm_bwd_rows(T* __restrict__ dx, acc_t<T>* __restrict__ part_dw, acc_t<T>* __restrict__ part_db,
                  const T* __restrict__ dy, const T* __restrict__ x, const S* __restrict__ mean,
                  const S* __restrict__ rstd, const T* __restrict__ w, int64_t rows, int64_t n, int64_t chunk) {
  using A = acc_t<T>;
  __shared__ A red[32];
  const int64_t r0 = int64_t(blockIdx.x) * chunk, r1 = ::min(rows, r0 + chunk);
  const int64_t prow = int64_t(blockIdx.x) * n;
  const A inv_n = A(1) / A(n);
  for (int64_t row = r0; row < r1; ++row) {
    const T* xr = x + row * n;
    const T* gr = dy + row * n;
    const A mu = RMS ? A(0) : static_cast<A>(mean[row]), rs = static_cast<A>(rstd[row]);
    A s1 = A(0), s2 = A(0);
    for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
      const A xh = (to_acc(xr[c]) - mu) * rs;
      const A gw_ = w ? to_acc(gr[c]) * to_acc(w[c]) : to_acc(gr[c]);
      s1 += gw_;
      s2 += gw_ * xh;
    }
    const A s1n = RMS ? A(0) : block_sum(s1, red) * inv_n;
    const A s2n = block_sum(s2, red) * inv_n;
    for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
      const A xh = (to_acc(xr[c]) - mu) * rs;
      const A gg = to_acc(gr[c]);
      const A gw_ = w ? gg * to_acc(w[c]) : gg;
      if (dx) dx[row * n + c] = from_acc<T>(rs * (gw_ - (s1n + xh * s2n)));
      if (part_dw) part_dw[prow + c] += gg * xh;
      if (part_db) part_db[prow + c] += gg;
    }
  }
}

// out[c] = sum over p of part[p, c], in p order (threads split p into 32 strided
// subsequences, added in subsequence order). Block (32, 32).
template <typename T, typename A>
__global__ void __launch_bounds__(1024) column_sum(T* __restrict__ out, const A* __restrict__ part, int64_t P, int64_t n) {
  __shared__ A sm[32][33];
  const int64_t col = int64_t(blockIdx.x) * 32 + threadIdx.x;
  A s = A(0);
  if (col < n)
    for (int64_t p = threadIdx.y; p < P; p += 32) s += part[p * n + col];
  sm[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < n) {
    A tot = A(0);
    for (int k = 0; k < 32; ++k) tot += sm[k][threadIdx.x];
    out[col] = from_acc<T>(tot);
  }
}

// ---- host side ------------------------------------------------------------------------
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// How the register path lays out a row of nvec vectors, or items == 0 for the
// block-per-row path.
struct Plan {
  int items = 0;    // vectors per thread
  int gw = 0;       // warps per row
  int block = 0;    // threads per block
  int ngroups = 0;  // rows per block at a time
};
Plan plan_rows(bool vec_ok, int64_t nvec, int max_items) {
  Plan p;
  if (!vec_ok || nvec <= 0) return p;
  const int64_t need = (nvec + max_items - 1) / max_items;
  int64_t gt = 32;
  while (gt < need) gt *= 2;
  if (gt > kMaxGroup) return p;
  int items = 1;
  while (gt * items < nvec) items *= 2;
  p.items = items;
  p.gw = static_cast<int>(gt / 32);
  p.block = std::max<int>(kBlock, static_cast<int>(gt));
  p.ngroups = p.block / static_cast<int>(gt);
  return p;
}

template <int MaxItems, typename F>
void with_items(int items, F&& f) {
  switch (items) {
    case 1: f(std::integral_constant<int, 1>{}); return;
    case 2: if constexpr (MaxItems >= 2) { f(std::integral_constant<int, 2>{}); return; } break;
    case 4: if constexpr (MaxItems >= 4) { f(std::integral_constant<int, 4>{}); return; } break;
    case 8: if constexpr (MaxItems >= 8) { f(std::integral_constant<int, 8>{}); return; } break;
    default: break;
  }
  throw Error(fmt::format("norm kernels: no instance for {} vectors per thread", items));
}

// Vectors per thread that keep `elems` elements in registers (half as many for f64,
// whose values take two registers).
template <typename T>
constexpr int max_items(int elems) {
  return std::min(kMaxItems, elems / kVec<T> / (sizeof(T) == 8 ? 2 : 1));
}

void check_contig(const char* op, const char* what, const Tensor& t, int64_t numel) {
  BB_CHECK(t.is_contiguous() && t.numel() == numel, ShapeError, "{}: {} must be contiguous with {} elements, got {}",
           op, what, numel, shape_str(t.shape()));
}
// Contiguous, numel elements, x's dtype.
void check_like(const char* op, const char* what, const Tensor& t, const Tensor& x, int64_t numel) {
  check_contig(op, what, t, numel);
  BB_CHECK(t.dtype() == x.dtype(), DTypeError, "{}: {} is {} but x is {}", op, what, dtype_name(t.dtype()),
           dtype_name(x.dtype()));
}

// Calls f(Tag<T>{}, Tag<S>{}) for x's dtype and the statistics' dtype (F32, or F64
// with f64 inputs).
template <typename F>
void dispatch_norm(const char* op, DType xt, DType st, F&& f) {
  dispatch_float(xt, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (st == DType::F32) {
      f(tag, Tag<float>{});
      return;
    }
    if constexpr (std::is_same_v<T, double>) {
      if (st == DType::F64) {
        f(tag, Tag<double>{});
        return;
      }
    }
    throw DTypeError(fmt::format("{}: statistics must be f32 (or f64 for f64 input), got {}", op, dtype_name(st)));
  });
}

template <typename T, typename S, bool RMS>
void norm_forward(const Tensor& y, const Tensor& mean, const Tensor& rstd, const Tensor& x,
                  const Tensor& w, const Tensor& b, int64_t rows, int64_t n, double eps) {
  using A = acc_t<T>;
  constexpr int VEC = kVec<T>;
  cudaStream_t st = stream_for(x);
  T* py = ptr<T>(y);
  S* pm = RMS ? nullptr : ptr<S>(mean);
  S* pr = ptr<S>(rstd);
  const T* px = ptr<T>(x);
  const T* pw = w.defined() ? ptr<T>(w) : nullptr;
  const T* pb = b.defined() ? ptr<T>(b) : nullptr;
  const bool vec_ok = n % VEC == 0 && n <= INT_MAX && aligned16(px) && aligned16(py) && (!pw || aligned16(pw)) &&
                      (!pb || aligned16(pb));
  const Plan p = plan_rows(vec_ok, n / VEC, max_items<T>(kFwdElems));
  if (p.items > 0) {
    const int64_t grid = (rows + p.ngroups - 1) / p.ngroups;
    with_items<max_items<T>(kFwdElems)>(p.items, [&](auto ic) {
      BB_LAUNCH(static_cast<unsigned>(grid), p.block, 0, st, norm_fwd_reg<T, S, RMS, decltype(ic)::value>)
      (py, pm, pr, px, pw, pb, rows, static_cast<int>(n), p.gw, static_cast<A>(eps));
    });
  } else {
    BB_LAUNCH(static_cast<unsigned>(rows), kBlock, 0, st, norm_fwd_rows<T, S, RMS>)
    (py, pm, pr, px, pw, pb, n, static_cast<A>(eps));
  }
  BB_CUDA_LAUNCH_CHECK();
}

template <typename T, typename S, bool RMS>
void norm_backward(const Tensor& dx, const Tensor& dw, const Tensor& db, const Tensor& dy, const Tensor& x,
                   const Tensor& mean, const Tensor& rstd, const Tensor& w, int64_t rows, int64_t n) {
  using A = acc_t<T>;
  constexpr int VEC = kVec<T>;
  cudaStream_t st = stream_for(x);
  T* pdx = dx.defined() ? ptr<T>(dx) : nullptr;
  const T* pdy = ptr<T>(dy);
  const T* px = ptr<T>(x);
  const S* pm = RMS ? nullptr : ptr<S>(mean);
  const S* pr = ptr<S>(rstd);
  const T* pw = w.defined() ? ptr<T>(w) : nullptr;
  const bool vec_ok = n % VEC == 0 && n <= INT_MAX && aligned16(px) && aligned16(pdy) && (!pdx || aligned16(pdx)) &&
                      (!pw || aligned16(pw));
  const Plan p = plan_rows(vec_ok, n / VEC, max_items<T>(kBwdElems));
  const int nouts = int(dw.defined()) + int(db.defined());

  // Blocks, each a chunk of rows and (with dw/db) a row of partials.
  int64_t P = 0, chunk = 0;
  if (rows > 0) {
    // Without dw/db there are no partials to bound: one block per group of rows.
    const int64_t cap = nouts > 0 ? kMaxPartials : int64_t(INT32_MAX);
    P = p.items > 0 ? std::min<int64_t>((rows + p.ngroups - 1) / p.ngroups, cap) : std::min<int64_t>(rows, cap);
    if (nouts > 0) P = std::max<int64_t>(1, std::min<int64_t>(P, kMaxScratch / n));
    chunk = (rows + P - 1) / P;
    P = (rows + chunk - 1) / chunk;
  }
  Tensor part;
  A* part_dw = nullptr;
  A* part_db = nullptr;
  if (nouts > 0 && P > 0) {
    part = empty({nouts * P * n}, {std::is_same_v<A, double> ? DType::F64 : DType::F32, x.device()});
    A* base = ptr<A>(part);
    if (dw.defined()) part_dw = base;
    if (db.defined()) part_db = base + (dw.defined() ? P * n : 0);
    if (p.items == 0)
      BB_CUDA_CHECK(cudaMemsetAsync(base, 0, static_cast<size_t>(nouts * P * n) * sizeof(A), st));
  }
  if (P > 0 && (pdx || nouts > 0)) {
    if (p.items > 0) {
      with_items<max_items<T>(kBwdElems)>(p.items, [&](auto ic) {
        BB_LAUNCH(static_cast<unsigned>(P), p.block, 0, st, norm_bwd_reg<T, S, RMS, decltype(ic)::value>)
        (pdx, part_dw, part_db, pdy, px, pm, pr, pw, rows, static_cast<int>(n), p.gw, chunk);
      });
    } else {
      BB_LAUNCH(static_cast<unsigned>(P), kBlock, 0, st, norm_bwd_rows<T, S, RMS>)
      (pdx, part_dw, part_db, pdy, px, pm, pr, pw, rows, n, chunk);
    }
    BB_CUDA_LAUNCH_CHECK();
  }
  // dw/db: the partials added in block order (zeros when there are no rows).
  const dim3 cblock(32, 32);
  const unsigned cgrid = static_cast<unsigned>((n + 31) / 32);
  if (dw.defined()) {
    BB_LAUNCH(cgrid, cblock, 0, st, column_sum<T, A>)(ptr<T>(dw), part_dw, P, n);
    BB_CUDA_LAUNCH_CHECK();
  }
  if (db.defined()) {
    BB_LAUNCH(cgrid, cblock, 0, st, column_sum<T, A>)(ptr<T>(db), part_db, P, n);
    BB_CUDA_LAUNCH_CHECK();
  }
}

void check_common(const char* op, const Tensor& x, int64_t rows, int64_t n) {
  BB_CHECK(rows >= 0 && n >= 1, ShapeError, "{}: bad sizes rows={} n={} for input {}", op, rows, n,
           shape_str(x.shape()));
  BB_CHECK(rows <= INT_MAX, ShapeError, "{}: {} rows is more than the kernel handles (input {})", op, rows,
           shape_str(x.shape()));
  check_contig(op, "x", x, rows * n);
}
void check_param(const char* op, const char* what, const Tensor& p, const Tensor& x, int64_t n) {
  if (p.defined()) check_like(op, what, p, x, n);
}
void check_stats(const char* op, const char* what, const Tensor& s, int64_t rows) { check_contig(op, what, s, rows); }

}  // namespace

void layer_norm(const Tensor& y, const Tensor& mean, const Tensor& rstd, const Tensor& x, const Tensor& w,
                const Tensor& b, int64_t rows, int64_t n, double eps) {
  const char* op = "layer_norm";
  check_common(op, x, rows, n);
  check_like(op, "y", y, x, rows * n);
  check_stats(op, "mean", mean, rows);
  check_stats(op, "rstd", rstd, rows);
  BB_CHECK(mean.dtype() == rstd.dtype(), DTypeError, "{}: mean is {} but rstd is {}", op, dtype_name(mean.dtype()),
           dtype_name(rstd.dtype()));
  check_param(op, "weight", w, x, n);
  check_param(op, "bias", b, x, n);
  if (rows == 0) return;
  dispatch_norm(op, x.dtype(), rstd.dtype(), [&](auto tt, auto ts) {
    norm_forward<typename decltype(tt)::type, typename decltype(ts)::type, false>(y, mean, rstd, x, w, b, rows, n, eps);
  });
}

void layer_norm_backward(const Tensor& dx, const Tensor& dw, const Tensor& db, const Tensor& dy, const Tensor& x,
                         const Tensor& mean, const Tensor& rstd, const Tensor& w, int64_t rows, int64_t n) {
  const char* op = "layer_norm backward";
  check_common(op, x, rows, n);
  check_like(op, "dy", dy, x, rows * n);
  if (dx.defined()) check_like(op, "dx", dx, x, rows * n);
  check_stats(op, "mean", mean, rows);
  check_stats(op, "rstd", rstd, rows);
  BB_CHECK(mean.dtype() == rstd.dtype(), DTypeError, "{}: mean is {} but rstd is {}", op, dtype_name(mean.dtype()),
           dtype_name(rstd.dtype()));
  check_param(op, "weight", w, x, n);
  check_param(op, "dweight", dw, x, n);
  check_param(op, "dbias", db, x, n);
  if (!dx.defined() && !dw.defined() && !db.defined()) return;
  dispatch_norm(op, x.dtype(), rstd.dtype(), [&](auto tt, auto ts) {
    norm_backward<typename decltype(tt)::type, typename decltype(ts)::type, false>(dx, dw, db, dy, x, mean, rstd, w,
                                                                                   rows, n);
  });
}

void rms_norm(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& w, int64_t rows, int64_t n,
              double eps) {
  const char* op = "rms_norm";
  check_common(op, x, rows, n);
  check_like(op, "y", y, x, rows * n);
  check_stats(op, "rstd", rstd, rows);
  check_param(op, "weight", w, x, n);
  if (rows == 0) return;
  dispatch_norm(op, x.dtype(), rstd.dtype(), [&](auto tt, auto ts) {
    norm_forward<typename decltype(tt)::type, typename decltype(ts)::type, true>(y, Tensor(), rstd, x, w, Tensor(), rows,
                                                                                 n, eps);
  });
}

void rms_norm_backward(const Tensor& dx, const Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& rstd,
                       const Tensor& w, int64_t rows, int64_t n) {
  const char* op = "rms_norm backward";
  check_common(op, x, rows, n);
  check_like(op, "dy", dy, x, rows * n);
  if (dx.defined()) check_like(op, "dx", dx, x, rows * n);
  check_stats(op, "rstd", rstd, rows);
  check_param(op, "weight", w, x, n);
  check_param(op, "dweight", dw, x, n);
  if (!dx.defined() && !dw.defined()) return;
  dispatch_norm(op, x.dtype(), rstd.dtype(), [&](auto tt, auto ts) {
    norm_backward<typename decltype(tt)::type, typename decltype(ts)::type, true>(dx, dw, Tensor(), dy, x, Tensor(),
                                                                                  rstd, w, rows, n);
  });
}

}  // namespace barbell::gpu

// CUDA softmax and log-softmax over contiguous rows of length n, forward and
// backward, mirroring src/cpu/reduce.cpp: max and sum in fp32 (fp64 for f64), a row
// whose max is -inf uses 0 in its place, NaN propagates through the sum.
//
//  - n <= 1024: a warp per row; the row lives in registers (K elements per lane), so
//    x (or dy and y) is read once, max then sum, exactly as the CPU does.
//  - larger n (the GPT-2 vocabulary and beyond): a block per row. Forward makes one
//    pass computing the max and the sum of exponentials together (online: the sum is
//    rescaled when the max grows), a block reduction of the (max, sum) pairs, then a
//    writing pass (the row is re-read, mostly from L2). Backward: a sum pass, then a
//    writing pass. Loads and stores are 16-byte vectors after an aligning head when
//    the operands share their alignment.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "common.cuh"
#include "cuda/kernels.hpp"

namespace barbell::gpu {
namespace {

constexpr int kWarpRowMax = 1024;
constexpr int kWarpThreads = 128;  // 4 rows per block in the warp kernels

__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return ::exp(x); }
__device__ __forceinline__ float m_log(float x) { return logf(x); }
__device__ __forceinline__ double m_log(double x) { return ::log(x); }

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
  BB_VECTOR_ACCESS(Vec)
};

// Elements before the first 16-byte boundary at p (at most n).
template <typename T>
__device__ __forceinline__ int64_t align_head(const T* p, int64_t n) {
  return std::min<int64_t>(n, ((16 - (reinterpret_cast<uintptr_t>(p) & 15)) & 15) / sizeof(T));
}

// Calls scalar(j) or vector(j) (for VEC elements from j) over [0, n), spread over
// nthreads threads: a scalar head up to p's 16-byte boundary, vectors, a scalar tail.
// Without `vec`, all scalar.
template <int VEC, typename T, typename FS, typename FV>
__device__ __forceinline__ void row_loop(const T* p, int64_t n, bool vec, int tid, int nthreads, FS&& scalar,
                                         FV&& vector) {
  const int64_t head = vec ? align_head(p, n) : n;
  for (int64_t j = tid; j < head; j += nthreads) scalar(j);
  if (!vec) return;
  const int64_t nv = (n - head) / VEC;
  for (int64_t k = tid; k < nv; k += nthreads) vector(head + k * VEC);
  for (int64_t j = head + nv * VEC + tid; j < n; j += nthreads) scalar(j);
}

template <typename T, int VEC>
__device__ __forceinline__ Vec<T, VEC> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, VEC>*>(p);
}

// ---- online (max, sum of exp) -----------------------------------------------------------------
// m: the running max (never NaN: a NaN never compares greater); s: the sum of
// exp(x - m) over the elements seen. -inf elements add 0 (the CPU's exp(-inf - m)
// with m finite, or with its m = 0 when the whole row is -inf); a NaN makes s NaN.

template <typename A>
__device__ __forceinline__ A rescale(A m_old, A m_new) {
  return m_old == m_new ? A(1) : m_exp(m_old - m_new);  // no inf - inf
}
template <typename A>
__device__ __forceinline__ A term(A x, A m) {
  return x == A(-INFINITY) ? A(0) : m_exp(x - m);
}
template <typename A>
__device__ __forceinline__ void ms_combine(A& m, A& s, A m2, A s2) {
  const A mn = m2 > m ? m2 : m;
  s = s * rescale(m, mn) + s2 * rescale(m2, mn);
  m = mn;
}
template <typename A>
__device__ __forceinline__ void ms_warp(A& m, A& s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const A m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    ms_combine(m, s, m2, s2);
  }
}
// Every thread gets the block's (m, s); the butterfly gives all lanes the same bits.
template <typename A>
__device__ __forceinline__ void ms_block(A& m, A& s, A* sm_m, A* sm_s) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  ms_warp(m, s);
  __syncthreads();  // the scratch may still be read from the previous row
  if (lane == 0) {
    sm_m[warp] = m;
    sm_s[warp] = s;
  }
  __syncthreads();
  m = lane < nwarps ? sm_m[lane] : A(-INFINITY);
  s = lane < nwarps ? sm_s[lane] : A(0);
  ms_warp(m, s);
}

// ---- warp per row (n <= 32 * K) -----------------------------------------------------------------

template <typename T, int K>
__global__ void __launch_bounds__(kWarpThreads)
    softmax_warp_kernel(T* y, const T* x, int64_t rows, int n, bool log) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  const int64_t step = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < rows; row += step) {
    const T* xr = x + row * n;
    T* yr = y + row * n;
    A v[K];
    A m = A(-INFINITY);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int idx = j * 32 + lane;
      v[j] = idx < n ? to_acc(xr[idx]) : A(-INFINITY);
      m = v[j] > m ? v[j] : m;  // NaN ignored, as std::max(m, v) does
    }
    m = warp_max(m);
    if (m == A(-INFINITY)) m = A(0);  // a fully masked row stays finite in exp
    A s = A(0);
    if (log) {
#pragma unroll
      for (int j = 0; j < K; ++j)
        if (j * 32 + lane < n) s += m_exp(v[j] - m);
      s = warp_sum(s);
      const A lse = m + m_log(s);
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int idx = j * 32 + lane;
        if (idx < n) yr[idx] = from_acc<T>(v[j] - lse);
      }
    } else {
#pragma unroll
      for (int j = 0; j < K; ++j) {
        v[j] = m_exp(v[j] - m);
        if (j * 32 + lane < n) s += v[j];
      }
      s = warp_sum(s);
      const A inv = A(1) / s;
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int idx = j * 32 + lane;
        if (idx < n) yr[idx] = from_acc<T>(v[j] * inv);
      }
    }
  }
}

// log: dx = dy - exp(y) * sum(dy); else dx = y * (dy - sum(dy * y)).
template <typename T, int K>
__global__ void __launch_bounds__(kWarpThreads)
    softmax_backward_warp_kernel(T* dx, const T* dy, const T* y, int64_t rows, int n, bool log) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  const int64_t step = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t row = blockIdx.x * wpb + (threadIdx.x >> 5); row < rows; row += step) {
    const int64_t base = row * n;
    A g[K], o[K];
    A s = A(0);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int idx = j * 32 + lane;
      g[j] = idx < n ? to_acc(dy[base + idx]) : A(0);
      o[j] = idx < n ? to_acc(y[base + idx]) : A(0);
      s += log ? g[j] : g[j] * o[j];
    }
    s = warp_sum(s);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int idx = j * 32 + lane;
      if (idx < n) dx[base + idx] = from_acc<T>(log ? g[j] - m_exp(o[j]) * s : o[j] * (g[j] - s));
    }
  }
}

// ---- block per row --------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(1024) softmax_block_kernel(T* y, const T* x, int64_t rows, int64_t n, bool log) {
  using A = acc_t<T>;
  constexpr int VEC = 16 / sizeof(T);
  __shared__ A sm_m[32], sm_s[32];
  const int tid = threadIdx.x, nt = blockDim.x;
  // Row starts differ by the same n * sizeof(T) in x and y: one test for all rows.
  const bool same_align = ((reinterpret_cast<uintptr_t>(x) ^ reinterpret_cast<uintptr_t>(y)) & 15) == 0;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * n;
    T* yr = y + row * n;
    A m = A(-INFINITY), s = A(0);
    row_loop<VEC>(
        xr, n, true, tid, nt,
        [&](int64_t j) {
          const A v = to_acc(xr[j]);
          const A mn = v > m ? v : m;
          s = s * rescale(m, mn) + term(v, mn);
          m = mn;
        },
        [&](int64_t j) {
          const Vec<T, VEC> vv = load_vec<T, VEC>(xr + j);
          A v[VEC];
          A cm = m;
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            v[k] = to_acc(vv.v[k]);
            cm = v[k] > cm ? v[k] : cm;
          }
          A acc = s * rescale(m, cm);
#pragma unroll
          for (int k = 0; k < VEC; ++k) acc += term(v[k], cm);
          s = acc;
          m = cm;
        });
    ms_block(m, s, sm_m, sm_s);
    if (m == A(-INFINITY)) m = A(0);  // s is then 0 (or NaN), as the CPU's sum with m = 0
    if (log) {
      const A lse = m + m_log(s);
      row_loop<VEC>(
          yr, n, same_align, tid, nt, [&](int64_t j) { yr[j] = from_acc<T>(to_acc(xr[j]) - lse); },
          [&](int64_t j) {
            const Vec<T, VEC> vv = load_vec<T, VEC>(xr + j);
            Vec<T, VEC> out;
#pragma unroll
            for (int k = 0; k < VEC; ++k) out.v[k] = from_acc<T>(to_acc(vv.v[k]) - lse);
            *reinterpret_cast<Vec<T, VEC>*>(yr + j) = out;
          });
    } else {
      const A inv = A(1) / s;
      row_loop<VEC>(
          yr, n, same_align, tid, nt, [&](int64_t j) { yr[j] = from_acc<T>(m_exp(to_acc(xr[j]) - m) * inv); },
          [&](int64_t j) {
            const Vec<T, VEC> vv = load_vec<T, VEC>(xr + j);
            Vec<T, VEC> out;
#pragma unroll
            for (int k = 0; k < VEC; ++k) out.v[k] = from_acc<T>(m_exp(to_acc(vv.v[k]) - m) * inv);
            *reinterpret_cast<Vec<T, VEC>*>(yr + j) = out;
          });
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(1024)
    softmax_backward_block_kernel(T* dx, const T* dy, const T* y, int64_t rows, int64_t n, bool log) {
  using A = acc_t<T>;
  constexpr int VEC = 16 / sizeof(T);
  __shared__ A scratch[32];
  const int tid = threadIdx.x, nt = blockDim.x;
  const auto addr = [](const void* p) { return reinterpret_cast<uintptr_t>(p) & 15; };
  const bool in_align = addr(dy) == addr(y);
  const bool all_align = in_align && addr(dx) == addr(y);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* g = dy + row * n;
    const T* o = y + row * n;
    T* d = dx + row * n;
    A s = A(0);
    row_loop<VEC>(
        o, n, in_align, tid, nt, [&](int64_t j) { s += log ? to_acc(g[j]) : to_acc(g[j]) * to_acc(o[j]); },
        [&](int64_t j) {
          const Vec<T, VEC> gv = load_vec<T, VEC>(g + j), ov = load_vec<T, VEC>(o + j);
#pragma unroll
          for (int k = 0; k < VEC; ++k) s += log ? to_acc(gv.v[k]) : to_acc(gv.v[k]) * to_acc(ov.v[k]);
        });
    s = block_sum(s, scratch);
    const auto f = [&](A gj, A oj) { return from_acc<T>(log ? gj - m_exp(oj) * s : oj * (gj - s)); };
    row_loop<VEC>(
        d, n, all_align, tid, nt, [&](int64_t j) { d[j] = f(to_acc(g[j]), to_acc(o[j])); },
        [&](int64_t j) {
          const Vec<T, VEC> gv = load_vec<T, VEC>(g + j), ov = load_vec<T, VEC>(o + j);
          Vec<T, VEC> out;
#pragma unroll
          for (int k = 0; k < VEC; ++k) out.v[k] = f(to_acc(gv.v[k]), to_acc(ov.v[k]));
          *reinterpret_cast<Vec<T, VEC>*>(d + j) = out;
        });
  }
}

// ---- host side --------------------------------------------------------------------------------

// Calls f(std::integral_constant<int, K>) with K = elements per lane for a row of n.
template <typename F>
void with_lane_elems(int64_t n, F&& f) {
  if (n <= 32) f(std::integral_constant<int, 1>{});
  else if (n <= 64) f(std::integral_constant<int, 2>{});
  else if (n <= 128) f(std::integral_constant<int, 4>{});
  else if (n <= 256) f(std::integral_constant<int, 8>{});
  else if (n <= 512) f(std::integral_constant<int, 16>{});
  else f(std::integral_constant<int, 32>{});
}

int block_threads(int64_t n) { return n <= 4096 ? 256 : n <= 16384 ? 512 : 1024; }

void check_rows(const char* op, const Tensor& a, const char* what, int64_t rows, int64_t n) {
  BB_CHECK(a.is_contiguous() && a.numel() == rows * n, ValueError,
           "{}: {} {} (strides {}) must be contiguous with {} rows of {}", op, what, shape_str(a.shape()),
           shape_str(a.strides()), rows, n);
}

}  // namespace

void softmax_rows(const Tensor& y, const Tensor& x, int64_t rows, int64_t n, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  BB_CHECK(rows >= 0 && n >= 0, ValueError, "{}: bad sizes rows={} n={}", op, rows, n);
  check_rows(op, x, "input", rows, n);
  check_rows(op, y, "output", rows, n);
  BB_CHECK(y.dtype() == x.dtype(), DTypeError, "{}: output {} {} and input {} {} differ in dtype", op,
           dtype_name(y.dtype()), shape_str(y.shape()), dtype_name(x.dtype()), shape_str(x.shape()));
  if (rows == 0 || n == 0) return;
  cudaStream_t stream = stream_for(y);
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* py = ptr<T>(y);
    const T* px = static_cast<const T*>(x.data_ptr());
    if (n <= kWarpRowMax) {
      with_lane_elems(n, [&](auto k) {
        BB_LAUNCH(grid_for(rows, kWarpThreads / 32), kWarpThreads, 0, stream,
                  softmax_warp_kernel<T, decltype(k)::value>)
        (py, px, rows, static_cast<int>(n), log);
      });
    } else {
      BB_LAUNCH(grid_for(rows, 1), block_threads(n), 0, stream, softmax_block_kernel<T>)
      (py, px, rows, n, log);
    }
    BB_CUDA_LAUNCH_CHECK();
  });
}

void softmax_rows_backward(const Tensor& dx, const Tensor& dy, const Tensor& y, int64_t rows, int64_t n, bool log) {
  const char* op = log ? "log_softmax backward" : "softmax backward";
  BB_CHECK(rows >= 0 && n >= 0, ValueError, "{}: bad sizes rows={} n={}", op, rows, n);
  check_rows(op, dx, "dx", rows, n);
  check_rows(op, dy, "dy", rows, n);
  check_rows(op, y, "y", rows, n);
  BB_CHECK(dx.dtype() == y.dtype() && dy.dtype() == y.dtype(), DTypeError,
           "{}: dtypes differ: dx {} {}, dy {} {}, y {} {}", op, dtype_name(dx.dtype()), shape_str(dx.shape()),
           dtype_name(dy.dtype()), shape_str(dy.shape()), dtype_name(y.dtype()), shape_str(y.shape()));
  if (rows == 0 || n == 0) return;
  cudaStream_t stream = stream_for(dx);
  dispatch_float(y.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* pdx = ptr<T>(dx);
    const T* pdy = static_cast<const T*>(dy.data_ptr());
    const T* py = static_cast<const T*>(y.data_ptr());
    if (n <= kWarpRowMax) {
      with_lane_elems(n, [&](auto k) {
        BB_LAUNCH(grid_for(rows, kWarpThreads / 32), kWarpThreads, 0, stream,
                  softmax_backward_warp_kernel<T, decltype(k)::value>)
        (pdx, pdy, py, rows, static_cast<int>(n), log);
      });
    } else {
      BB_LAUNCH(grid_for(rows, 1), block_threads(n), 0, stream, softmax_backward_block_kernel<T>)
      (pdx, pdy, py, rows, n, log);
    }
    BB_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace barbell::gpu

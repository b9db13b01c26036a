// What every kernel file shares: dtype <-> CUDA type mapping, runtime dtype dispatch,
// conversions through fp32, warp/block reductions, launch checking and the stream a
// launcher must use. Kernels accumulate in fp32 (fp64 for f64 tensors).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "barbell/core/tensor.hpp"
#include "check.cuh"
#include "cuda/runtime.hpp"
#include "launch.cuh"

// After every launch: a bad configuration or an earlier asynchronous fault surfaces
// here as barbell::CudaError naming the kernel's file and line.
#define BB_CUDA_LAUNCH_CHECK() BB_CUDA_CHECK(cudaGetLastError())

namespace barbell::gpu {

using bf16 = __nv_bfloat16;
using f16 = __half;

// The stream a launcher uses for tensor t: makes t's device current on this thread
// and returns that thread's current stream there.
inline cudaStream_t stream_for(const Tensor& t) {
  return static_cast<cudaStream_t>(cuda_rt::prepare_launch(t.device().index()));
}

// ---- conversions (all through fp32; f64 stays f64) ----------------------------------
template <typename T>
struct acc_type { using type = float; };
template <>
struct acc_type<double> { using type = double; };
template <typename T>
using acc_t = typename acc_type<T>::type;

template <typename T>
__device__ __forceinline__ acc_t<T> to_acc(T x) { return static_cast<acc_t<T>>(x); }
template <>
__device__ __forceinline__ float to_acc<bf16>(bf16 x) { return __bfloat162float(x); }
template <>
__device__ __forceinline__ float to_acc<f16>(f16 x) { return __half2float(x); }

template <typename T, typename A>
__device__ __forceinline__ T from_acc(A x) { return static_cast<T>(x); }
template <>
__device__ __forceinline__ bf16 from_acc<bf16, float>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ f16 from_acc<f16, float>(float x) { return __float2half_rn(x); }

// ---- runtime dtype dispatch ------------------------------------------------------------
template <typename T>
struct Tag { using type = T; };

// Calls f(Tag<T>{}) for the CUDA type of a float dtype (f32, f64, bf16, f16).
template <typename F>
void dispatch_float(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::F32: f(Tag<float>{}); return;
    case DType::F64: f(Tag<double>{}); return;
    case DType::BF16: f(Tag<bf16>{}); return;
    case DType::F16: f(Tag<f16>{}); return;
    default:
      throw DTypeError(fmt::format("{}: the CUDA kernel takes f32, f64, bf16 or f16, not {}", op, dtype_name(dt)));
  }
}
// Also the integer and bool dtypes.
template <typename F>
void dispatch_all(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::I32: f(Tag<int32_t>{}); return;
    case DType::I64: f(Tag<int64_t>{}); return;
    case DType::Bool: f(Tag<bool>{}); return;
    default: dispatch_float(dt, op, std::forward<F>(f));
  }
}
template <typename F>
void dispatch_index(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::I32: f(Tag<int32_t>{}); return;
    case DType::I64: f(Tag<int64_t>{}); return;
    default:
      throw DTypeError(fmt::format("{}: indices must be i32 or i64, not {}", op, dtype_name(dt)));
  }
}

// ---- reductions -------------------------------------------------------------------------
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets
// the result. `scratch` holds 32 values; the function synchronises before reuse.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : A(0);
  return warp_sum(v);
}
template <typename A>
__device__ __forceinline__ A block_max(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : A(-INFINITY);
  return warp_max(v);
}

// Grid size for a grid-stride loop over n items.
inline unsigned grid_for(int64_t n, int threads, int64_t max_blocks = 65535LL * 8) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b < max_blocks ? b : max_blocks);
}

template <typename T>
inline T* ptr(const Tensor& t) { return static_cast<T*>(t.data_ptr()); }

}  // namespace barbell::gpu

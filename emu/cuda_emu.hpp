// Force-included (g++ -include) into every kernels/*.cu compiled as host C++ for the
// emulated device (BARBELL_CUDA=EMULATE): maps CUDA C++'s built-ins (threadIdx, the
// qualifiers, __syncthreads, the warp collectives, atomics, the device intrinsics) onto
// the host emulator in emu/emu.hpp, so the kernels stay plain CUDA C++.
//
// Semantics chosen (where the host differs from a GPU, the kernels must not care):
//   * __shared__ variables become function-local statics: one copy per kernel
//     instantiation, which is right because the emulator runs one block at a time. The
//     access checks recognise them by address (the library's writable segment), track
//     which bytes each block wrote (a read of a byte not written by the block is an
//     error) and race-check them between barriers.
//   * math: the host's libm (correctly rounded or nearly); the GPU's fast intrinsics
//     (__expf, ex2.approx) and FMA contraction are not modelled, so results can differ
//     from a GPU's in the last bits. The *_rn intrinsics are exact IEEE operations on
//     both.
//   * __ldg is a plain load; __launch_bounds__ is ignored; atomics are plain
//     read-modify-writes (one emulated thread runs at a time) that the race checks
//     exempt.
#pragma once

#ifndef BARBELL_CUDA_EMULATE
#error "emu/cuda_emu.hpp is for the emulated build (BARBELL_CUDA_EMULATE)"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "emu.hpp"

// ---- qualifiers ---------------------------------------------------------------------------
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __grid_constant__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __constant__ static
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__

// ---- built-in variables ---------------------------------------------------------------------
#define threadIdx (::barbell::emu::thread_idx())
#define blockIdx (::barbell::emu::block_idx())
#define blockDim (::barbell::emu::block_dim())
#define gridDim (::barbell::emu::grid_dim())
#define warpSize 32

// ---- synchronisation and warp collectives ------------------------------------------------
inline void __syncthreads() { ::barbell::emu::syncthreads(); }
inline int __syncthreads_count(int p) { return ::barbell::emu::syncthreads_count(p != 0); }
inline int __syncthreads_and(int p) {
  return ::barbell::emu::syncthreads_count(p != 0) == static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
}
inline int __syncthreads_or(int p) { return ::barbell::emu::syncthreads_count(p != 0) > 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::barbell::emu::syncwarp(mask); }
inline unsigned __ballot_sync(unsigned mask, int p) { return ::barbell::emu::ballot(mask, p != 0); }
inline int __any_sync(unsigned mask, int p) { return (::barbell::emu::ballot(mask, p != 0) & mask) != 0; }
inline int __all_sync(unsigned mask, int p) { return (::barbell::emu::ballot(mask, p != 0) & mask) == mask; }
inline unsigned __activemask() { return ::barbell::emu::activemask(); }
// Memory fences: the emulator runs one thread at a time, so they order nothing further;
// they are not scheduling points.
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

namespace barbell::emu::detail {
template <typename T>
inline T shfl_as(unsigned mask, T v, Shfl kind, int arg, int width) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                "__shfl*_sync: a value of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  b = ::barbell::emu::shfl(mask, b, sizeof(T), kind, arg, width);
  T r;
  std::memcpy(&r, &b, sizeof(T));
  return r;
}
}  // namespace barbell::emu::detail

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = warpSize) {
  return ::barbell::emu::detail::shfl_as(mask, v, ::barbell::emu::Shfl::Idx, src, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  return ::barbell::emu::detail::shfl_as(mask, v, ::barbell::emu::Shfl::Up, static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  return ::barbell::emu::detail::shfl_as(mask, v, ::barbell::emu::Shfl::Down, static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
  return ::barbell::emu::detail::shfl_as(mask, v, ::barbell::emu::Shfl::Xor, lane_mask, width);
}

// ---- atomics (emu/atomics.cpp: checked, counted, exempt from the race checks) ----------
int atomicAdd(int* p, int v);
unsigned atomicAdd(unsigned* p, unsigned v);
unsigned long long atomicAdd(unsigned long long* p, unsigned long long v);
float atomicAdd(float* p, float v);
double atomicAdd(double* p, double v);
float2 atomicAdd(float2* p, float2 v);
float4 atomicAdd(float4* p, float4 v);
__half2 atomicAdd(__half2* p, __half2 v);
__nv_bfloat162 atomicAdd(__nv_bfloat162* p, __nv_bfloat162 v);
int atomicSub(int* p, int v);
unsigned atomicSub(unsigned* p, unsigned v);
int atomicMax(int* p, int v);
unsigned atomicMax(unsigned* p, unsigned v);
long long atomicMax(long long* p, long long v);
unsigned long long atomicMax(unsigned long long* p, unsigned long long v);
int atomicMin(int* p, int v);
unsigned atomicMin(unsigned* p, unsigned v);
long long atomicMin(long long* p, long long v);
unsigned long long atomicMin(unsigned long long* p, unsigned long long v);
int atomicExch(int* p, int v);
unsigned atomicExch(unsigned* p, unsigned v);
unsigned long long atomicExch(unsigned long long* p, unsigned long long v);
float atomicExch(float* p, float v);
int atomicCAS(int* p, int cmp, int v);
unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v);
unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v);
unsigned short atomicCAS(unsigned short* p, unsigned short cmp, unsigned short v);
int atomicAnd(int* p, int v);
unsigned atomicAnd(unsigned* p, unsigned v);
unsigned long long atomicAnd(unsigned long long* p, unsigned long long v);
int atomicOr(int* p, int v);
unsigned atomicOr(unsigned* p, unsigned v);
unsigned long long atomicOr(unsigned long long* p, unsigned long long v);
int atomicXor(int* p, int v);
unsigned atomicXor(unsigned* p, unsigned v);
unsigned long long atomicXor(unsigned long long* p, unsigned long long v);
unsigned atomicInc(unsigned* p, unsigned v);
unsigned atomicDec(unsigned* p, unsigned v);

// ---- loads ------------------------------------------------------------------------------
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
template <typename T>
inline T __ldcs(const T* p) {
  return *p;
}
template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}
template <typename T>
inline void __stcs(T* p, T v) {
  *p = v;
}
template <typename T>
inline void __stcg(T* p, T v) {
  *p = v;
}

// ---- integer and bit intrinsics ------------------------------------------------------------
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<int64_t>(a) * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline long long __mul64hi(long long a, long long b) {
  return static_cast<long long>((static_cast<__int128>(a) * b) >> 64);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
  return (x >> 16) | (x << 16);
}

// ---- float intrinsics --------------------------------------------------------------------
inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline float __uint_as_float(unsigned x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline int __float_as_int(float f) {
  int x;
  std::memcpy(&x, &f, 4);
  return x;
}
inline unsigned __float_as_uint(float f) {
  unsigned x;
  std::memcpy(&x, &f, 4);
  return x;
}
inline double __longlong_as_double(long long x) {
  double d;
  std::memcpy(&d, &x, 8);
  return d;
}
inline long long __double_as_longlong(double d) {
  long long x;
  std::memcpy(&x, &d, 8);
  return x;
}
// IEEE round-to-nearest operations (also what the host does: no contraction in this build).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline double __drcp_rn(double a) { return 1.0 / a; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
// The fast intrinsics, computed precisely (the GPU's approximation error is not modelled).
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float exp10f(float x) { return std::pow(10.0f, x); }
inline float normcdff(float x) { return 0.5f * std::erfc(-x * 0.70710678118654752f); }
inline double normcdf(double x) { return 0.5 * std::erfc(-x * 0.70710678118654752); }

// CUDA's min/max overloads for the arithmetic types (device code calls them unqualified
// or as ::min / ::max).
#define BB_EMU_MINMAX(T)                           \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
BB_EMU_MINMAX(int)
BB_EMU_MINMAX(unsigned)
BB_EMU_MINMAX(long)
BB_EMU_MINMAX(unsigned long)
BB_EMU_MINMAX(long long)
BB_EMU_MINMAX(unsigned long long)
#undef BB_EMU_MINMAX
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;

// cuda_runtime.h's C++ overloads that take the kernel itself (nvcc-only there).
template <typename T>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, T* entry) {
  return ::cudaFuncGetAttributes(attr, reinterpret_cast<const void*>(entry));
}
template <typename T>
inline cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

// ---- whole-vector loads and stores (kernels/launch.cuh's BB_VECTOR_ACCESS) ------------------
#define BB_EMU_VECTOR_ACCESS(Type)                                                               \
  Type() = default;                                                                              \
  Type(const Type& o) { ::barbell::emu::vector_copy(this, &o, sizeof(Type), alignof(Type)); }   \
  Type& operator=(const Type& o) {                                                               \
    ::barbell::emu::vector_copy(this, &o, sizeof(Type), alignof(Type));                          \
    return *this;                                                                                \
  }

// ---- launches ---------------------------------------------------------------------------------
namespace barbell::emu {

// BB_LAUNCH(...)(args...): the kernel and its arguments are captured by value in one
// trivially copyable block, copied at the launch (as CUDA copies the arguments into the
// kernel's parameter buffer) and again onto every emulated thread's stack.
template <typename Block>
void run_block_params(const void* p) {
  (*static_cast<const Block*>(p))();
}

template <typename Call>
struct Launch {
  LaunchSite site;
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  const void* fn;
  Call call;
  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert((std::is_trivially_copyable_v<std::decay_t<Args>> && ...),
                  "kernel arguments must be trivially copyable");
    auto params = [c = call, args...]() { c(args...); };
    using Block = decltype(params);
    static_assert(std::is_trivially_copyable_v<Block>, "kernel arguments must be trivially copyable");
    static_assert(sizeof(Block) <= kMaxParamBlock && alignof(Block) <= 64, "kernel arguments too large");
    ::barbell::emu::launch(site, grid, block, smem, stream, fn, &params, sizeof(Block),
                           &run_block_params<Block>);
  }
};
template <typename Call>
Launch<Call> make_launch(const LaunchSite& site, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                         const void* fn, Call call) {
  return Launch<Call>{site, grid, block, smem, stream, fn, call};
}

template <typename F>
inline const void* fn_address(F* f) {
  return reinterpret_cast<const void*>(f);
}

}  // namespace barbell::emu

#define BB_EMU_SITE(...) \
  ::barbell::emu::LaunchSite { #__VA_ARGS__, __FILE__, __LINE__ }
// The emulated forms of kernels/launch.cuh's macros.
#define BB_EMU_LAUNCH(grid, block, smem, stream, ...)                                       \
  ::barbell::emu::make_launch(BB_EMU_SITE(__VA_ARGS__), grid, block, smem, stream, nullptr, \
                              [=](const auto&... bb_emu_args) { __VA_ARGS__(bb_emu_args...); })
#define BB_EMU_LAUNCH_FN(grid, block, smem, stream, fn)                                                   \
  ::barbell::emu::make_launch(BB_EMU_SITE(fn), grid, block, smem, stream, ::barbell::emu::fn_address(fn), \
                              [=](const auto&... bb_emu_args) { fn(bb_emu_args...); })

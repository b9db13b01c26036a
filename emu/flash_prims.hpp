// The flash-attention primitives (kernels/flash/primitives.cuh) on the host emulator:
// included from there when the kernels are compiled for the emulated device
// (BARBELL_CUDA_EMULATE) or for the standalone kernel tests in tests/sim
// (BB_FLASH_SIM). mma.sync, ldmatrix and cp.async are implemented from the PTX ISA in
// emu/flash_prims.cpp (see its header for the semantics chosen and the checks); the
// `sim` namespace is the tests' interface (synchronous launches, options, counters).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <type_traits>

#include "emu.hpp"
#include "emu_api.hpp"

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

#define BB_FA_DEVICE inline
#define BB_FA_KERNEL(threads) inline void

namespace barbell::emu::flash {
uint32_t smem_addr(const void* p);
void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans);
void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16);
void cp_async_16(void* smem, const void* gmem, bool pred);
void cp_async_commit();
void cp_async_wait(int n);
void atomic_add(float* p, float v);
void atomic_add2(float* p, float a, float b);
}  // namespace barbell::emu::flash

namespace barbell::gpu::fa {
namespace sim {

using Error = ::barbell::emu::Fault;

enum class Schedule { forward, reverse, random };

struct Options {
  bool race_check = true;                 // env BB_SIM_RACECHECK=0 turns it off
  Schedule schedule = Schedule::forward;  // order of the threads (and blocks)
  uint64_t seed = 1;                      // for Schedule::random
  size_t max_dynamic_smem = 227 * 1024;   // per block (sm_86 / sm_89: 99 KiB)
};
Options& options();

struct Stats {
  uint64_t blocks = 0, mma = 0, ldmatrix = 0, shfl = 0, warp_syncs = 0, block_syncs = 0;
  uint64_t cp_async = 0, cp_async_zero_fill = 0, cp_async_dropped = 0, switches = 0;
};
Stats& stats();

// Host ranges the kernels may treat as global memory (the standalone tests keep their
// tensors in host vectors); with none registered, any host memory may be read.
void register_global(const void* p, size_t bytes);
void clear_globals();

// Runs body() as every thread of every block of a grid_x x grid_y x grid_z grid of
// `threads` threads with `smem_bytes` of dynamic shared memory, now. Throws sim::Error
// on any fault.
void launch(int grid_x, int grid_y, int grid_z, int threads, size_t smem_bytes,
            const std::function<void()>& body);

}  // namespace sim

BB_FA_DEVICE int thread_x() { return static_cast<int>(::barbell::emu::thread_idx().x); }
BB_FA_DEVICE int block_x() { return static_cast<int>(::barbell::emu::block_idx().x); }
BB_FA_DEVICE int block_y() { return static_cast<int>(::barbell::emu::block_idx().y); }
BB_FA_DEVICE int block_z() { return static_cast<int>(::barbell::emu::block_idx().z); }
BB_FA_DEVICE int grid_x() { return static_cast<int>(::barbell::emu::grid_dim().x); }

BB_FA_DEVICE char* dynamic_smem() { return ::barbell::emu::dynamic_smem(); }
BB_FA_DEVICE void block_sync() { ::barbell::emu::syncthreads(); }
BB_FA_DEVICE void warp_sync() { ::barbell::emu::syncwarp(0xffffffffu); }
BB_FA_DEVICE uint32_t smem_addr(const void* p) { return ::barbell::emu::flash::smem_addr(p); }

BB_FA_DEVICE void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  ::barbell::emu::flash::ldmatrix_x4(r, row, false);
}
BB_FA_DEVICE void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  ::barbell::emu::flash::ldmatrix_x4(r, row, true);
}

template <typename T>
BB_FA_DEVICE void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "mma_16816: bf16 or f16");
  ::barbell::emu::flash::mma_16816(d, a, b0, b1, std::is_same_v<T, __nv_bfloat16>);
}

BB_FA_DEVICE void cp_async_16(void* smem, const void* gmem, bool pred) {
  ::barbell::emu::flash::cp_async_16(smem, gmem, pred);
}
BB_FA_DEVICE void cp_async_commit() { ::barbell::emu::flash::cp_async_commit(); }
template <int N>
BB_FA_DEVICE void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group N >= 0");
  ::barbell::emu::flash::cp_async_wait(N);
}

BB_FA_DEVICE float shfl_xor(float v, int mask) {
  uint64_t b = 0;
  std::memcpy(&b, &v, 4);
  b = ::barbell::emu::shfl(0xffffffffu, b, 4, ::barbell::emu::Shfl::Xor, mask, 32);
  float r;
  std::memcpy(&r, &b, 4);
  return r;
}
BB_FA_DEVICE bool warp_all(bool p) { return ::barbell::emu::ballot(0xffffffffu, p) == 0xffffffffu; }

// ex2.approx.ftz.f32: exp2f with subnormal inputs and results flushed to
// sign-preserving zero; the hardware's ~2 ulp approximation error is not modelled.
BB_FA_DEVICE float fast_exp2(float x) {
  if (std::fpclassify(x) == FP_SUBNORMAL) x = std::copysign(0.f, x);
  float y = std::exp2(x);
  if (std::fpclassify(y) == FP_SUBNORMAL) y = std::copysign(0.f, y);
  return y;
}

BB_FA_DEVICE void atomic_add(float* p, float v) { ::barbell::emu::flash::atomic_add(p, v); }
BB_FA_DEVICE void atomic_add2(float* p, float a, float b) { ::barbell::emu::flash::atomic_add2(p, a, b); }

template <typename T>
BB_FA_DEVICE uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    std::memcpy(&r, &v, 4);
  } else {
    static_assert(std::is_same_v<T, __half>, "pack2: bf16 or f16");
    __half2 v = __floats2half2_rn(lo, hi);
    std::memcpy(&r, &v, 4);
  }
  return r;
}

template <typename T>
BB_FA_DEVICE float to_float(T x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __bfloat162float(x);
  else
    return __half2float(x);
}

}  // namespace barbell::gpu::fa

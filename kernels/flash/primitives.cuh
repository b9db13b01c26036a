// The few warp-level primitives the flash-attention kernels are written in: tensor-core
// mma.sync (m16n8k16, bf16/f16 in, fp32 accumulate), ldmatrix, cp.async, shuffles,
// barriers and the fast exp2. The kernels (flash/forward.cuh, flash/backward.cuh) use
// nothing else of the GPU, so they also compile for the host: for the emulated device
// (BARBELL_CUDA_EMULATE) and the standalone kernel tests (tests/sim, BB_FLASH_SIM),
// emu/flash_prims.hpp supplies the same functions on barbell's host emulator of the GPU
// (each CUDA thread a coroutine, the warp collectives done as the PTX ISA defines them).
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16/.f16; g = lane / 4, t = lane % 4):
//   A 16x16 (row major), 4 regs of 2 halves: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..),
//     a3 (g+8, 2t+8..)
//   B 16x8 (k x n), 2 regs: b0 (k 2t..2t+1, n g), b1 (k 2t+8..2t+9, n g)
//   C/D 16x8 fp32, 4 regs: c0, c1 (g, 2t..2t+1), c2, c3 (g+8, 2t..2t+1)
// The lower half of a 32-bit register holds the element with the smaller column (A)
// or k index (B).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#if defined(BB_FLASH_SIM) || defined(BARBELL_CUDA_EMULATE)
#include "flash_prims.hpp"  // emu/: the host emulation of everything below
#else

#include <cuda_runtime.h>

#define BB_FA_DEVICE __device__ __forceinline__
#define BB_FA_KERNEL(threads) __global__ void __launch_bounds__(threads)

namespace barbell::gpu::fa {

BB_FA_DEVICE int thread_x() { return static_cast<int>(threadIdx.x); }
BB_FA_DEVICE int block_x() { return static_cast<int>(blockIdx.x); }
BB_FA_DEVICE int block_y() { return static_cast<int>(blockIdx.y); }
BB_FA_DEVICE int block_z() { return static_cast<int>(blockIdx.z); }
BB_FA_DEVICE int grid_x() { return static_cast<int>(gridDim.x); }

// The block's dynamic shared memory (128-byte aligned).
BB_FA_DEVICE char* dynamic_smem() {
  extern __shared__ __align__(128) char bb_fa_smem[];
  return bb_fa_smem;
}

BB_FA_DEVICE void block_sync() { __syncthreads(); }
BB_FA_DEVICE void warp_sync() { __syncwarp(); }

BB_FA_DEVICE uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// Four 8x8 matrices of 16-bit elements from shared memory. Lane i gives the address of
// row i % 8 of matrix i / 8 (16 contiguous bytes); r[j] receives, from matrix j, the
// pair (row lane / 4, columns 2 (lane % 4), +1).
BB_FA_DEVICE void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}
// The same, transposed: r[j] receives from matrix j the pair (rows 2 (lane % 4), +1,
// column lane / 4).
BB_FA_DEVICE void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}

// d += a * b on the tensor cores, fp32 accumulation. T is __nv_bfloat16 or __half.
template <typename T>
BB_FA_DEVICE void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// 16 bytes global -> shared without registers; when !pred the 16 bytes are zero-filled
// and gmem is not read (it must still be a valid address).
BB_FA_DEVICE void cp_async_16(void* smem, const void* gmem, bool pred) {
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(src_bytes)
               : "memory");
}
// The "memory" clobbers keep the compiler from moving ordinary loads and stores across
// the copies and waits (the kernels put a barrier after every wait anyway).
BB_FA_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
BB_FA_DEVICE void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

BB_FA_DEVICE float shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
// True when p is true in every lane of the warp (all 32 lanes take part).
BB_FA_DEVICE bool warp_all(bool p) { return __all_sync(0xffffffffu, p) != 0; }
// 2^x (ex2.approx, relative error ~2^-22; exact 0 for -inf).
BB_FA_DEVICE float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
BB_FA_DEVICE void atomic_add(float* p, float v) { atomicAdd(p, v); }
// p[0] += a, p[1] += b (p 8-byte aligned): one vector atomic on sm_90 and later.
BB_FA_DEVICE void atomic_add2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// Two floats rounded to T and packed (lo in the lower 16 bits).
template <typename T>
BB_FA_DEVICE uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    r = *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    r = *reinterpret_cast<uint32_t*>(&v);
  }
  return r;
}
template <typename T>
BB_FA_DEVICE float to_float(T x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(x);
  else return __half2float(x);
}

}  // namespace barbell::gpu::fa

#endif  // BB_FLASH_SIM || BARBELL_CUDA_EMULATE

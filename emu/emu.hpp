// The host emulator of the GPU, as kernel code sees it: the current emulated thread's
// indices, the block and warp collectives, atomics, and kernel launches. Implemented in
// emu/exec.cpp (execution model), emu/memory.cpp (device memory and access checks) and
// emu/runtime.cpp (the CUDA runtime API). Kernel sources never include this directly:
// emu/cuda_emu.hpp (force-included into kernels/*.cu in the emulated build) maps the
// CUDA built-ins onto it.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace barbell::emu {

// What threadIdx, blockIdx, blockDim and gridDim read: the running emulated thread's.
// Out of line and by value: the emulator's own memory (thread-local state, the thread
// table) is not the kernel's to touch, and the access checks would say so.
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();

struct ThreadView {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

[[noreturn]] void outside_kernel(const char* what);

// ---- collectives (every one is a scheduling point) -------------------------------------
void syncthreads();
int syncthreads_count(int pred);  // __syncthreads_count / _and / _or
void syncwarp(unsigned mask);
enum class Shfl : int { Idx, Up, Down, Xor };
// __shfl*_sync on a value of `size` bytes (<= 8) carried in `bits`.
uint64_t shfl(unsigned mask, uint64_t bits, unsigned size, Shfl kind, int arg, int width);
unsigned ballot(unsigned mask, bool pred);
unsigned activemask();
// The lane and warp of the running thread.
int lane_id();

// ---- memory as kernels see it ---------------------------------------------------------
// The block's dynamic shared memory (128-byte aligned, poisoned at every block start).
char* dynamic_smem();
// Declares an access that instrumented code does not see (atomics, the flash
// primitives' ldmatrix/cp.async): checked and counted like an instrumented one.
void kernel_access(const void* p, size_t bytes, bool write, bool atomic);
// A whole-vector copy (a 16-byte load or store on a GPU): both ends checked for the
// type's alignment and counted as one access each.
void vector_copy(void* dst, const void* src, size_t bytes, size_t align);
// Suspends the per-access checks on this OS thread (nesting): the launch's prologue
// copies the kernel's arguments with them off.
void checks_off();
void checks_on();

// ---- kernel launches -------------------------------------------------------------------
struct LaunchSite {
  const char* kernel;  // the launch expression, as written
  const char* file;
  int line;
};

// Runs a kernel's body for one thread: `params` points at that thread's own copy of the
// launch's argument block (the kernel and its arguments, captured by value).
using Thunk = void (*)(const void* params);
constexpr size_t kMaxParamBlock = 32768;

// Queues a launch on `stream`: what a <<<grid, block, smem, stream>>> launch does. The
// argument block (`param_bytes` at `params`, trivially copyable) is copied now, as CUDA
// copies a launch's arguments; `fn` is the kernel's address when the launch site gave
// one (for cudaFuncSetAttribute). Configuration errors become cudaGetLastError()'s
// error, as on a GPU.
void launch(const LaunchSite& site, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const void* fn,
            const void* params, size_t param_bytes, Thunk thunk);

}  // namespace barbell::emu

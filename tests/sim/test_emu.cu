// Tests of barbell's host emulator of the GPU (emu/) itself, with kernels written the way
// kernels/*.cu are and compiled the same way (emu/cuda_emu.hpp force-included, the
// per-access instrumentation on with clang): the execution model, the warp collectives
// against the CUDA C++ guide's definitions, atomics, launch limits, device memory and
// every access check, streams and events with their ordering checks, sticky errors, the
// order check and the traffic counters. Each check that expects a fault says which
// message it expects. A plain program: PASS / FAIL lines, nonzero exit on any failure.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "internal.hpp"
#include "launch.cuh"

namespace emu = barbell::emu;

namespace {

int g_failures = 0;

void check(bool ok, const std::string& what, const std::string& detail = "") {
  std::printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", what.c_str(), detail.empty() ? "" : ": ", detail.c_str());
  if (!ok) ++g_failures;
}

bool instrumented() {
#ifdef BB_EMU_INSTRUMENTED
  return true;
#else
  return false;
#endif
}

// The device's sticky error and its message after synchronising; resets the device.
std::string take_error() {
  const cudaError_t e = cudaDeviceSynchronize();
  std::string msg = e == cudaSuccess ? "" : cudaGetErrorString(e);
  cudaDeviceReset();
  cudaGetLastError();
  return msg;
}

// Expects the work queued by f to fault with `needle` in the message.
void expect_fault(const std::string& what, const std::string& needle, const std::function<void()>& f,
                  bool needs_instrumentation = true) {
  if (needs_instrumentation && !instrumented()) {
    std::printf("SKIP %s (needs the per-access instrumentation: a clang build)\n", what.c_str());
    return;
  }
  f();
  const std::string msg = take_error();
  const bool ok = msg.find(needle) != std::string::npos;
  check(ok, what + " (reported: \"" + needle + "\")", ok ? "" : "got: " + (msg.empty() ? "no error" : msg));
}
void expect_clean(const std::string& what, const std::function<bool()>& f) {
  const bool ok = f();
  const std::string msg = take_error();
  check(ok && msg.empty(), what, msg);
}

template <typename T>
T* dalloc(size_t n) {
  void* p = nullptr;
  cudaMalloc(&p, n * sizeof(T));
  return static_cast<T*>(p);
}
template <typename T>
std::vector<T> fetch(const T* d, size_t n) {
  std::vector<T> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}
template <typename T>
void put(T* d, const std::vector<T>& h) {
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
}

// ---- kernels -----------------------------------------------------------------------------------

__global__ void indices(int* out) {
  const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int nt = blockDim.x * blockDim.y * blockDim.z;
  out[b * nt + t] = b * 1000 + t;
}

__global__ void shuffles(int* out, int width) {
  const int lane = threadIdx.x & 31;
  const int v = 100 + lane;
  int* o = out + threadIdx.x * 8;
  o[0] = __shfl_sync(0xffffffffu, v, 3, width);
  o[1] = __shfl_up_sync(0xffffffffu, v, 2, width);
  o[2] = __shfl_down_sync(0xffffffffu, v, 2, width);
  o[3] = __shfl_xor_sync(0xffffffffu, v, 5, width);
  o[4] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
  o[5] = __any_sync(0xffffffffu, lane == 7);
  o[6] = __all_sync(0xffffffffu, lane < 31);
  double d = __shfl_xor_sync(0xffffffffu, 0.5 * lane, 1);  // 8-byte values
  o[7] = static_cast<int>(d * 2);
}

// Two half-warps shuffle separately with their own masks.
__global__ void half_warps(int* out) {
  const int lane = threadIdx.x & 31;
  const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  out[threadIdx.x] = __shfl_xor_sync(mask, lane, 1);
}

__global__ void block_reduce(const float* in, float* out, int n) {
  __shared__ float part[32];
  float v = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += in[i];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) *out = v;
  }
  const int c = __syncthreads_count(threadIdx.x % 4 == 0);
  if (threadIdx.x == 1) out[1] = static_cast<float>(c);
}

__global__ void atomics(int* ci, float* cf, unsigned* cu, float2* c2) {
  atomicAdd(ci, 1);
  atomicAdd(cf, 0.5f);
  atomicMax(cu, static_cast<unsigned>(threadIdx.x + 1000 * blockIdx.x));
  atomicAdd(c2, make_float2(1.f, 2.f));
  int old = atomicCAS(ci + 1, 0, 7);  // only the first succeeds
  if (old == 0) atomicAdd(ci + 2, 1);
}

__global__ void barrier_after_exit(float* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}
__global__ void divergent_collective(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x & 1) v = __shfl_xor_sync(0xffffffffu, v, 1);  // half the lanes never come
  out[threadIdx.x] = v;
}
__global__ void mixed_collectives(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  else v = static_cast<int>(__ballot_sync(0xffffffffu, v > 3));
  out[threadIdx.x] = v;
}
__global__ void shfl_outside_mask(int* out) {
  // lane 0 reads lane 20, which the mask leaves out
  const unsigned mask = 0x0000ffffu;
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(mask, static_cast<int>(threadIdx.x), 20);
}

__global__ void shared_uninit(float* out) {
  __shared__ float s[64];
  if (threadIdx.x < 32) s[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];  // threads 32..63 read what nobody wrote
}
__global__ void shared_raw(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  // no __syncthreads: thread 32 reads s[31], written by thread 31 (another warp)
  if (threadIdx.x == 32) out[0] = s[31];
}
__global__ void shared_war(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = 1.f;
  __syncthreads();
  const float v = s[63 - threadIdx.x];
  s[threadIdx.x] = v + 1.f;  // overwrites what another thread may still have to read: no barrier
  out[threadIdx.x] = v;
}
__global__ void shared_ok(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  const float v = s[63 - threadIdx.x];
  __syncthreads();
  s[threadIdx.x] = v;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}
__global__ void warp_staging(float* out, bool sync) {
  __shared__ float s[32];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (sync) __syncwarp();
  // another lane of the same warp: what it wrote (sync) or may still be writing (no sync)
  const int src = sync ? 31 - threadIdx.x : (threadIdx.x | 1) - 1;
  out[threadIdx.x] = s[src];
}
__global__ void dynamic_smem_kernel(float* out, int n) {
  float* s = reinterpret_cast<float*>(barbell::emu::dynamic_smem());
  for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = static_cast<float>(i);
  __syncthreads();
  out[threadIdx.x] = s[n - 1 - threadIdx.x];
}

__global__ void write_n(float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = static_cast<float>(i);
}
__global__ void read_at(const float* in, float* out, int at) { out[threadIdx.x] = in[at]; }
struct alignas(16) F4 {
  float v[4];
  BB_VECTOR_ACCESS(F4)
};
__global__ void vector_load(const float* in, float* out) {
  const F4 x = *reinterpret_cast<const F4*>(in);
  out[threadIdx.x] = x.v[0] + x.v[1] + x.v[2] + x.v[3];
}
__global__ void cross_block_race(float* out) { out[0] = static_cast<float>(blockIdx.x); }
__global__ void cross_block_read(float* out) {
  if (blockIdx.x == 0) out[0] = 1.f;
  else out[1] = out[0];
}

__global__ void copy_kernel(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i];
}
__global__ void coalesced_copy(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i];
}
__global__ void strided_read(const float* in, float* out, int stride) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  out[i] = in[static_cast<size_t>(i) * stride];
}
__global__ void big_smem(float* out) {
  float* s = reinterpret_cast<float*>(barbell::emu::dynamic_smem());
  s[threadIdx.x] = 1.f;
  out[threadIdx.x] = s[threadIdx.x];
}

// ---- the tests --------------------------------------------------------------------------------

void test_execution_model() {
  int* d = dalloc<int>(2 * 3 * 2 * 4 * 3 * 2);
  BB_LAUNCH(dim3(2, 3, 2), dim3(4, 3, 2), 0, nullptr, indices)(d);
  auto h = fetch(d, 2 * 3 * 2 * 4 * 3 * 2);
  bool ok = true;
  for (int b = 0; b < 12; ++b)
    for (int t = 0; t < 24; ++t) ok = ok && h[static_cast<size_t>(b * 24 + t)] == b * 1000 + t;
  check(ok && take_error().empty(), "3-d grid and block indices");
  cudaFree(d);

  std::vector<float> in(1000);
  double want = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    in[i] = static_cast<float>(i % 7) - 3.f;
    want += in[i];
  }
  float* din = dalloc<float>(in.size());
  float* dout = dalloc<float>(2);
  put(din, in);
  BB_LAUNCH(1, 256, 0, nullptr, block_reduce)(din, dout, static_cast<int>(in.size()));
  auto r = fetch(dout, 2);
  check(r[0] == static_cast<float>(want) && r[1] == 64.f && take_error().empty(),
        "block reduction through shuffles, shared memory and a barrier; __syncthreads_count",
        std::to_string(r[0]) + " " + std::to_string(r[1]));
  cudaFree(din);
  cudaFree(dout);
}

void test_shuffles() {
  for (int width : {32, 16, 8}) {
    int* d = dalloc<int>(32 * 8);
    BB_LAUNCH(1, 32, 0, nullptr, shuffles)(d, width);
    auto h = fetch(d, 32 * 8);
    bool ok = true;
    for (int l = 0; l < 32; ++l) {
      const int base = (l / width) * width, lo = l - base;
      const int* o = &h[static_cast<size_t>(l * 8)];
      const int x = l ^ 5;
      ok = ok && o[0] == 100 + base + 3 % width;
      ok = ok && o[1] == (lo >= 2 ? 100 + l - 2 : 100 + l);
      ok = ok && o[2] == (lo + 2 < width ? 100 + l + 2 : 100 + l);
      ok = ok && o[3] == (x >= base + width ? 100 + l : 100 + x);
      unsigned bal = 0;
      for (int j = 0; j < 32; ++j)
        if (j % 3 == 0) bal |= 1u << j;
      ok = ok && static_cast<unsigned>(o[4]) == bal && o[5] == 1 && o[6] == 0 && o[7] == (l ^ 1);
    }
    check(ok && take_error().empty(), "__shfl/_up/_down/_xor_sync, ballot, any, all with width " + std::to_string(width) +
                                          " (CUDA C++ guide semantics)");
    cudaFree(d);
  }
  int* d = dalloc<int>(32);
  BB_LAUNCH(1, 32, 0, nullptr, half_warps)(d);
  auto h = fetch(d, 32);
  bool ok = true;
  for (int l = 0; l < 32; ++l) ok = ok && h[static_cast<size_t>(l)] == (l ^ 1);
  check(ok && take_error().empty(), "two half-warps shuffling with their own masks");
  cudaFree(d);
}

void test_atomics() {
  int* ci = dalloc<int>(3);
  float* cf = dalloc<float>(1);
  unsigned* cu = dalloc<unsigned>(1);
  float2* c2 = dalloc<float2>(1);
  cudaMemset(ci, 0, 12);
  cudaMemset(cf, 0, 4);
  cudaMemset(cu, 0, 4);
  cudaMemset(c2, 0, 8);
  BB_LAUNCH(3, 128, 0, nullptr, atomics)(ci, cf, cu, c2);
  auto i = fetch(ci, 3);
  auto f = fetch(cf, 1);
  auto u = fetch(cu, 1);
  auto v = fetch(c2, 1);
  check(i[0] == 384 && i[1] == 7 && i[2] == 1 && f[0] == 192.f && u[0] == 2127 && v[0].x == 384.f && v[0].y == 768.f &&
            take_error().empty(),
        "atomicAdd (int, float, float2), atomicMax, atomicCAS from 3 blocks of 128 threads (no race reported)");
  cudaFree(ci);
  cudaFree(cf);
  cudaFree(cu);
  cudaFree(c2);
}

void test_divergence() {
  float* d = dalloc<float>(64);
  int* di = dalloc<int>(64);
  expect_fault("__syncthreads after a thread of the block exited", "exited",
               [&] { BB_LAUNCH(1, 64, 0, nullptr, barrier_after_exit)(d); }, false);
  expect_fault("a shuffle that half the warp never reaches", "has exited",
               [&] { BB_LAUNCH(1, 32, 0, nullptr, divergent_collective)(di); }, false);
  expect_fault("lanes of one warp at different collectives", "divergent warp",
               [&] { BB_LAUNCH(1, 32, 0, nullptr, mixed_collectives)(di); }, false);
  expect_fault("a shuffle reading a lane outside its mask", "not in the mask",
               [&] { BB_LAUNCH(1, 32, 0, nullptr, shfl_outside_mask)(di); }, false);
  cudaFree(d);
  cudaFree(di);
}

void test_shared_checks() {
  float* d = dalloc<float>(64);
  expect_fault("a read of shared memory its block never wrote", "uninitialized shared memory",
               [&] { BB_LAUNCH(1, 64, 0, nullptr, shared_uninit)(d); });
  expect_fault("read after write by another warp without a barrier", "data race",
               [&] { BB_LAUNCH(1, 64, 0, nullptr, shared_raw)(d); });
  expect_fault("write after read by another thread without a barrier", "data race",
               [&] { BB_LAUNCH(1, 64, 0, nullptr, shared_war)(d); });
  expect_clean("the same exchanges with barriers", [&] {
    BB_LAUNCH(1, 64, 0, nullptr, shared_ok)(d);
    auto h = fetch(d, 64);
    for (int i = 0; i < 64; ++i)
      if (h[static_cast<size_t>(i)] != static_cast<float>(63 - i)) return false;
    return true;
  });
  expect_fault("warp-private staging without __syncwarp", "data race",
               [&] { BB_LAUNCH(1, 32, 0, nullptr, warp_staging)(d, false); });
  expect_clean("warp-private staging with __syncwarp", [&] {
    BB_LAUNCH(1, 32, 0, nullptr, warp_staging)(d, true);
    return fetch(d, 1)[0] == 31.f;
  });
  expect_clean("dynamic shared memory", [&] {
    BB_LAUNCH(1, 64, 256 * 4, nullptr, dynamic_smem_kernel)(d, 256);
    return fetch(d, 1)[0] == 255.f;
  });
  expect_fault("a read past the block's dynamic shared memory", "dynamic shared memory",
               [&] { BB_LAUNCH(1, 64, 64 * 4, nullptr, dynamic_smem_kernel)(d, 100); });
  cudaFree(d);
}

void test_global_checks() {
  float* d = dalloc<float>(100);
  float* o = dalloc<float>(128);
  expect_fault("a write one element past the end of an allocation", "past the end of",
               [&] { BB_LAUNCH(1, 128, 0, nullptr, write_n)(d, 101); });
  expect_clean("the same kernel within bounds", [&] {
    BB_LAUNCH(1, 128, 0, nullptr, write_n)(d, 100);
    return fetch(d, 100)[99] == 99.f;
  });
  expect_fault("a read one element before an allocation", "before", [&] {
    BB_LAUNCH(1, 1, 0, nullptr, read_at)(d, o, -1);
  });
  expect_fault("a read of device memory never written", "never written", [&] {
    float* fresh = dalloc<float>(8);
    BB_LAUNCH(1, 1, 0, nullptr, read_at)(fresh, o, 3);
  });
  expect_fault("a 16-byte vector load from an address that is not 16-byte aligned", "misaligned",
               [&] { BB_LAUNCH(1, 1, 0, nullptr, vector_load)(d + 1, o); });
  expect_fault("a host pointer passed to a kernel", "host-memory", [&] {
    static std::vector<float> host(64, 1.f);
    BB_LAUNCH(1, 1, 0, nullptr, read_at)(host.data(), o, 0);
  });
  expect_fault("blocks writing the same element (a race between blocks)", "different blocks",
               [&] { BB_LAUNCH(4, 1, 0, nullptr, cross_block_race)(o); });
  expect_fault("a block reading what another block of the launch wrote", "different blocks",
               [&] { BB_LAUNCH(2, 1, 0, nullptr, cross_block_read)(o); });
  expect_fault("use after cudaFree", "cudaFree", [&] {
    float* t = dalloc<float>(16);
    BB_LAUNCH(1, 16, 0, nullptr, write_n)(t, 16);
    cudaDeviceSynchronize();
    cudaFree(t);
    BB_LAUNCH(1, 16, 0, nullptr, write_n)(t, 16);
  });
  cudaFree(d);
  cudaFree(o);
}

void test_host_dereference() {
  // In a child: a device pointer dereferenced by host code traps, with the allocation named.
  int fds[2];
  if (pipe(fds) != 0) return;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 2);
    float* d = dalloc<float>(4);
    volatile float x = d[1];
    (void)x;
    _exit(0);
  }
  close(fds[1]);
  std::string out;
  char buf[512];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  const bool ok = (WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) != 0)) &&
                  out.find("dereferenced on the host") != std::string::npos &&
                  out.find("device allocation") != std::string::npos;
  check(ok, "a device pointer dereferenced on the host traps, naming the allocation", ok ? "" : out);
}

void test_launch_limits() {
  float* d = dalloc<float>(2048);
  BB_LAUNCH(1, 2048, 0, nullptr, write_n)(d, 10);
  cudaError_t e = cudaGetLastError();
  check(e == cudaErrorInvalidConfiguration, "a block of 2048 threads is an invalid configuration");
  BB_LAUNCH(dim3(1, 70000), 32, 0, nullptr, write_n)(d, 10);
  check(cudaGetLastError() == cudaErrorInvalidConfiguration, "a grid with y = 70000 is an invalid configuration");
  BB_LAUNCH_FN(1, 32, 64 * 1024, nullptr, big_smem)(d);
  e = cudaGetLastError();
  check(e == cudaErrorInvalidValue && std::string(cudaGetErrorString(e)).find("opt in") != std::string::npos,
        "64 KiB of dynamic shared memory without the opt-in is refused", cudaGetErrorString(e));
  cudaFuncSetAttribute(big_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  BB_LAUNCH_FN(1, 32, 64 * 1024, nullptr, big_smem)(d);
  check(cudaGetLastError() == cudaSuccess && take_error().empty(), "with cudaFuncSetAttribute it launches");
  check(cudaFuncSetAttribute(big_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, 240 * 1024) ==
            cudaErrorInvalidValue,
        "an opt-in beyond the H100's 227 KiB is refused");
  cudaGetLastError();
  cudaFree(d);
}

void test_streams() {
  cudaStream_t a, b;
  cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking);
  cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking);
  float* x = dalloc<float>(256);
  float* y = dalloc<float>(256);
  expect_fault("a kernel reading another stream's output with no event between them", "not ordered", [&] {
    BB_LAUNCH(1, 256, 0, a, write_n)(x, 256);
    BB_LAUNCH(1, 256, 0, b, copy_kernel)(x, y, 256);
  });
  expect_clean("the same with cudaEventRecord / cudaStreamWaitEvent", [&] {
    cudaEvent_t e;
    cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
    BB_LAUNCH(1, 256, 0, a, write_n)(x, 256);
    cudaEventRecord(e, a);
    cudaStreamWaitEvent(b, e, 0);
    BB_LAUNCH(1, 256, 0, b, copy_kernel)(x, y, 256);
    cudaStreamSynchronize(b);
    cudaEventDestroy(e);
    return fetch(y, 256)[255] == 255.f;
  });
  expect_clean("the same after the host synchronised with the first stream", [&] {
    BB_LAUNCH(1, 256, 0, a, write_n)(x, 256);
    cudaStreamSynchronize(a);
    BB_LAUNCH(1, 256, 0, b, copy_kernel)(x, y, 256);
    cudaStreamSynchronize(b);
    return true;
  });
  expect_fault("a write racing with another stream's read (write after read)", "not ordered", [&] {
    BB_LAUNCH(1, 256, 0, a, write_n)(x, 256);
    cudaStreamSynchronize(a);
    BB_LAUNCH(1, 256, 0, b, copy_kernel)(x, y, 256);
    BB_LAUNCH(1, 256, 0, a, write_n)(x, 256);
    cudaDeviceSynchronize();
  });
  cudaStream_t blocking;
  cudaStreamCreate(&blocking);
  expect_clean("the legacy default stream orders work on blocking streams", [&] {
    BB_LAUNCH(1, 256, 0, nullptr, write_n)(x, 256);
    BB_LAUNCH(1, 256, 0, blocking, copy_kernel)(x, y, 256);
    cudaDeviceSynchronize();
    return fetch(y, 256)[7] == 7.f;
  });
  expect_fault("but not work on non-blocking streams", "not ordered", [&] {
    BB_LAUNCH(1, 256, 0, nullptr, write_n)(x, 256);
    BB_LAUNCH(1, 256, 0, a, copy_kernel)(x, y, 256);
  });
  expect_fault("cudaMallocAsync memory used on another stream before it is ordered", "cudaMallocAsync", [&] {
    void* p = nullptr;
    cudaMallocAsync(&p, 1024, a);
    BB_LAUNCH(1, 256, 0, b, write_n)(static_cast<float*>(p), 256);
  });
  // The free runs first when the host's synchronisation pulls its stream first, so the
  // read then lands on freed memory.
  expect_fault("cudaFreeAsync on one stream while another still reads", "use after cudaFree", [&] {
    void* p = nullptr;
    cudaMallocAsync(&p, 1024, a);
    BB_LAUNCH(1, 256, 0, a, write_n)(static_cast<float*>(p), 256);
    cudaStreamSynchronize(a);
    BB_LAUNCH(1, 256, 0, b, copy_kernel)(static_cast<float*>(p), y, 256);
    cudaFreeAsync(p, a);
    cudaDeviceSynchronize();
  });
  // Deferred execution: nothing runs before the host synchronises.
  expect_clean("queued work runs when the host synchronises, in stream order", [&] {
    cudaMemsetAsync(x, 0, 256 * 4, a);
    BB_LAUNCH(1, 256, 0, a, write_n)(x, 128);
    std::vector<float> h(256, -1.f);
    cudaMemcpyAsync(h.data(), x, 256 * 4, cudaMemcpyDeviceToHost, a);  // pageable: returns with the data
    return h[127] == 127.f && h[128] == 0.f;
  });
  cudaStreamDestroy(a);
  cudaStreamDestroy(b);
  cudaStreamDestroy(blocking);
  cudaFree(x);
  cudaFree(y);
}

void test_sticky() {
  if (!instrumented()) {
    std::printf("SKIP sticky errors (needs the per-access instrumentation)\n");
    return;
  }
  float* d = dalloc<float>(8);
  BB_LAUNCH(1, 64, 0, nullptr, write_n)(d, 64);
  const cudaError_t e1 = cudaDeviceSynchronize();
  float* p = nullptr;
  const cudaError_t e2 = cudaMalloc(reinterpret_cast<void**>(&p), 16);
  const cudaError_t e3 = cudaGetLastError();
  const cudaError_t e4 = cudaGetLastError();
  check(e1 == cudaErrorIllegalAddress && e2 == cudaErrorIllegalAddress && e3 == cudaErrorIllegalAddress &&
            e4 == cudaErrorIllegalAddress,
        "an illegal address is sticky: every later call fails with it, cudaGetLastError does not clear it");
  check(std::string(cudaGetErrorString(e1)).find("write_n") != std::string::npos,
        "the error string names the kernel that faulted");
  cudaDeviceReset();
  cudaGetLastError();
}

void test_order_check() {
  if (!instrumented()) {
    std::printf("SKIP the order check (it records the writes the instrumentation reports)\n");
    return;
  }
  emu::Options& o = emu::options();
  const emu::Options saved = o;
  o.race_check = false;  // the race checks would report it first
  o.check_order = true;
  float* d = dalloc<float>(4);
  BB_LAUNCH(4, 1, 0, nullptr, cross_block_race)(d);
  const std::string msg = take_error();
  o = saved;
  check(msg.find("depends on the order") != std::string::npos,
        "BARBELL_EMU_CHECK_ORDER: a result that depends on the block order is reported", msg);
  o.check_order = true;
  expect_clean("and an order-independent kernel passes it", [&] {
    BB_LAUNCH(4, 32, 0, nullptr, write_n)(d, 4);
    cudaDeviceSynchronize();
    return fetch(d, 4)[3] == 3.f;
  });
  o = saved;
  cudaFree(d);
}

const emu::KernelStats* stats_of(const std::string& prefix) {
  for (const auto& [name, s] : emu::kernel_stats())
    if (name.rfind(prefix, 0) == 0) return &s;
  return nullptr;
}

__global__ void column_conflict(float* out) {
  __shared__ float tile[32 * 32];
  for (int r = 0; r < 32; ++r) tile[r * 32 + threadIdx.x] = static_cast<float>(r * 32 + threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = tile[threadIdx.x * 32];  // every lane in bank 0: 32-way
}
__global__ void column_padded(float* out) {
  __shared__ float tile[32 * 33];
  for (int r = 0; r < 32; ++r) tile[r * 33 + threadIdx.x] = static_cast<float>(r * 33 + threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = tile[threadIdx.x * 33];  // lane l in bank l: conflict-free
}

void test_traffic() {
  if (!instrumented()) {
    std::printf("SKIP traffic counters (need the per-access instrumentation)\n");
    return;
  }
  const int n = 1024;
  float* in = dalloc<float>(static_cast<size_t>(n) * 32);
  float* out = dalloc<float>(n);
  cudaMemset(in, 0, static_cast<size_t>(n) * 32 * 4);
  BB_LAUNCH(n / 256, 256, 0, nullptr, coalesced_copy)(in, out, n);
  BB_LAUNCH(n / 256, 256, 0, nullptr, strided_read)(in, out, 32);
  BB_LAUNCH(1, 32, 0, nullptr, column_conflict)(out);
  BB_LAUNCH(1, 32, 0, nullptr, column_padded)(out);
  cudaDeviceSynchronize();
  const emu::KernelStats* c = stats_of("coalesced_copy");
  const emu::KernelStats* s = stats_of("strided_read");
  bool ok = c && s && c->g_requests == 64 && c->g_sectors == 256 && c->g_ideal_sectors == 256;
  check(ok, "a coalesced copy: 4 sectors per warp request, the minimum",
        c ? std::to_string(c->g_requests) + " requests, " + std::to_string(c->g_sectors) + " sectors" : "no stats");
  ok = s && s->g_sectors == 32 * 32 + 32 * 4 && s->g_ideal_sectors == 32 * 4 + 32 * 4;
  check(ok, "a read with a stride of 32 floats: 32 sectors per request against 4",
        s ? std::to_string(s->g_sectors) + " sectors, ideal " + std::to_string(s->g_ideal_sectors) : "no stats");
  const emu::KernelStats* k1 = stats_of("column_conflict");
  const emu::KernelStats* k2 = stats_of("column_padded");
  // 32 row writes (one wavefront each) and the column read
  ok = k1 && k2 && k1->s_requests == 33 && k1->s_wavefronts == 32 + 32 && k1->s_ideal_wavefronts == 33 &&
       k2->s_wavefronts == 33 && k2->s_ideal_wavefronts == 33;
  check(ok, "shared-memory bank conflicts: a column of a [32][32] tile is 32-way, of a [32][33] tile 1-way",
        k1 && k2 ? std::to_string(k1->s_wavefronts) + " and " + std::to_string(k2->s_wavefronts) +
                       " wavefronts, ideal " + std::to_string(k1->s_ideal_wavefronts)
                 : "no stats");
  cudaFree(in);
  cudaFree(out);
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  emu::options().quiet = true;  // the faults are expected; their messages are checked
  int n = 0;
  cudaGetDeviceCount(&n);
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  check(n == 1 && p.major == 9 && p.multiProcessorCount == 132 && p.sharedMemPerBlockOptin == 232448,
        "one emulated device with an H100 SXM's properties", p.name);
  std::printf("per-access checks: %s\n", instrumented() ? "on (clang instrumentation)" : "off (not a clang build)");
  test_execution_model();
  test_shuffles();
  test_atomics();
  test_divergence();
  test_shared_checks();
  test_global_checks();
  test_host_dereference();
  test_launch_limits();
  test_streams();
  test_sticky();
  test_order_check();
  test_traffic();
  std::printf("%s: %d failure(s)\n", g_failures ? "FAIL" : "PASS", g_failures);
  return g_failures ? 1 : 0;
}

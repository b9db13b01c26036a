// The CUDA runtime as barbell exposes it: devices and their properties, a current
// device and a current stream per thread, events, and the statistics of the
// stream-ordered memory pool tensors come from. Every function throws DeviceError in
// a build without the CUDA backend or on a machine without a GPU, except
// device_count() and is_available(), which answer 0 and false.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "barbell/core/device.hpp"

namespace barbell::cuda {

struct DeviceProperties {
  std::string name;
  int major = 0, minor = 0;       // compute capability
  int multiprocessors = 0;
  size_t total_memory = 0;        // bytes
  size_t l2_cache = 0;            // bytes
  size_t shared_memory_per_block_optin = 0;
};
DeviceProperties properties(int device = -1);  // -1: the current device

// The current device of the calling thread (cudaGetDevice / cudaSetDevice).
int current_device();
void set_device(int device);

// A CUDA stream. The default current stream of every thread is CUDA's per-thread
// default stream, which does not synchronise with other streams.
class Stream {
 public:
  Stream() = default;
  // A new non-blocking stream on `device` (-1: the current one); priority 0 is normal,
  // lower numbers are higher priorities (as in CUDA).
  static Stream create(int device = -1, int priority = 0);
  // Wraps an existing cudaStream_t (not owned).
  static Stream wrap(void* handle, int device);
  void* handle() const { return handle_; }  // cudaStream_t
  int device() const { return device_; }
  void synchronize() const;
  bool query() const;  // true when all work on it has finished
  bool operator==(const Stream& o) const { return handle_ == o.handle_ && device_ == o.device_; }

 private:
  void* handle_ = nullptr;  // nullptr-with-owner is never used; see create()
  int device_ = 0;
  std::shared_ptr<void> owner_;
  friend Stream current_stream(int);
};

// The calling thread's current stream on `device` (-1: the current device): every
// kernel barbell launches on that device from this thread goes to it.
Stream current_stream(int device = -1);
void set_current_stream(const Stream& s);
// Restores the previous current stream when it goes out of scope.
class StreamGuard {
 public:
  explicit StreamGuard(const Stream& s);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  Stream prev_;
};

class Event {
 public:
  // timing=false makes a lighter event for ordering only.
  explicit Event(bool timing = true);
  void record(const Stream& s);
  void record() { record(current_stream()); }
  void synchronize() const;
  bool query() const;
  void wait(const Stream& s) const;  // s waits for this event (no host block)
  // Milliseconds from `start` to this event; both must have been recorded with timing.
  float elapsed_ms(const Event& start) const;
  void* handle() const { return handle_.get(); }

 private:
  std::shared_ptr<void> handle_;
  int device_ = 0;
};

// Waits for all work on `device` (-1: the current one).
void synchronize(int device = -1);

// Statistics of barbell's device allocations (bytes). `reserved` is what the CUDA
// memory pool holds from the driver, `allocated` what live tensors use.
struct MemoryStats {
  size_t allocated = 0, peak_allocated = 0;
  size_t reserved = 0, peak_reserved = 0;
  int64_t allocations = 0;  // calls since the start (or the last reset)
};
MemoryStats memory_stats(int device = -1);
void reset_peak_memory_stats(int device = -1);
// Returns unused pool memory to the driver.
void empty_cache(int device = -1);

// f32 matmuls may use TF32 tensor cores (10-bit mantissa inputs) when allowed; off
// by default, so f32 means f32.
void set_allow_tf32(bool on);
bool allow_tf32();

// For tests: every new device allocation is filled with 0xFF bytes (NaN for every
// float dtype, -1 for integers), so a kernel that forgets to write an output is caught.
void set_poison_allocations(bool on);
bool poison_allocations();

// Whether cuda:N is barbell's host emulator of the GPU (a BARBELL_CUDA=EMULATE build,
// emu/README.md), not a GPU.
bool is_emulated();

// The emulator's memory-traffic counters per kernel (launch site), summed over every
// launch since the program started; empty on a GPU. Counts under emulation, not timings.
struct KernelTraffic {
  std::string kernel;  // launch expression (file:line)
  uint64_t launches = 0;
  uint64_t requests = 0;       // warp-level global-memory requests
  uint64_t sectors = 0;        // 32-byte sectors they touched
  uint64_t ideal_sectors = 0;  // the fewest that could hold the bytes they asked for
  uint64_t bytes_read = 0, bytes_written = 0;            // by the threads
  uint64_t unique_read_sectors = 0, unique_write_sectors = 0;  // distinct per launch, summed
  uint64_t shared_requests = 0, shared_wavefronts = 0, shared_ideal_wavefronts = 0;
  uint64_t atomics = 0;
};
std::vector<KernelTraffic> emulated_traffic();

}  // namespace barbell::cuda

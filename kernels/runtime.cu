// The CUDA runtime behind barbell/cuda/cuda.hpp and the core's seam (cuda/runtime.hpp):
// devices, per-thread current streams, events, device memory from CUDA's
// stream-ordered pool with statistics, and host/device copies through pinned staging.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "barbell/cuda/cuda.hpp"
#include "check.cuh"
#include "cuda/runtime.hpp"
#ifdef BARBELL_CUDA_EMULATE
#include "internal.hpp"  // emu/: the traffic counters
#endif

namespace barbell {
namespace {

constexpr int kMaxDevices = 64;

// Asked once: the set of visible devices is fixed when CUDA initialises, and every
// launch checks its device against it.
int visible_devices() {
  static const int n = [] {
    int c = 0;
    // No driver or no GPU is not an error here: it means zero devices.
    if (cudaGetDeviceCount(&c) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return c;
  }();
  return n;
}

int checked_device(int device, const char* what) {
  int n = visible_devices();
  if (device < 0) {
    BB_CHECK(n > 0, DeviceError, "{}: no CUDA device is visible (no GPU or no driver)", what);
    BB_CUDA_CHECK(cudaGetDevice(&device));
  }
  BB_CHECK(device >= 0 && device < n, DeviceError, "{}: cuda:{} requested but {} CUDA device(s) are visible", what,
           device, n);
  BB_CHECK(device < kMaxDevices, DeviceError, "{}: cuda:{} is beyond the {} devices barbell supports", what, device,
           kMaxDevices);
  return device;
}

// Per device: allocation statistics, and whether the pool has been configured.
struct DeviceState {
  std::atomic<int64_t> allocated{0}, peak{0}, allocations{0};
  std::once_flag pool_once;
};
DeviceState& state(int device) {
  static std::array<DeviceState, kMaxDevices> states;
  return states[static_cast<size_t>(device)];
}

std::atomic<bool> g_poison{false};

// Keep freed blocks in the pool instead of returning them to the driver at every
// synchronisation: the default release threshold (0) makes steady-state training
// call cudaMalloc again and again.
void configure_pool(int device) {
  std::call_once(state(device).pool_once, [device] {
    cudaMemPool_t pool;
    BB_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t threshold = UINT64_MAX;
    BB_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  });
}

// The calling thread's current stream per device; null means CUDA's per-thread
// default stream.
thread_local std::array<cuda::Stream, kMaxDevices> t_current{};
thread_local std::array<bool, kMaxDevices> t_has_current{};

cudaStream_t current_handle(int device) {
  return t_has_current[static_cast<size_t>(device)]
             ? static_cast<cudaStream_t>(t_current[static_cast<size_t>(device)].handle())
             : cudaStreamPerThread;
}

void use_device(int device) {
  int cur = -1;
  BB_CUDA_CHECK(cudaGetDevice(&cur));
  if (cur != device) BB_CUDA_CHECK(cudaSetDevice(device));
}

// Pinned staging buffers for host <-> device copies: pageable memory would make CUDA
// stage through its own small buffers synchronously. Two buffers per thread and device
// (events belong to a device) let the host fill one while the other is in flight;
// every reuse of a buffer first waits for its event, whatever stream used it last.
struct Staging {
  static constexpr size_t kChunk = size_t(16) << 20;
  std::array<void*, 2> buf{nullptr, nullptr};
  std::array<cudaEvent_t, 2> done{nullptr, nullptr};
  ~Staging() {
    for (int i = 0; i < 2; ++i) {
      if (done[static_cast<size_t>(i)]) cudaEventDestroy(done[static_cast<size_t>(i)]);
      if (buf[static_cast<size_t>(i)]) cudaFreeHost(buf[static_cast<size_t>(i)]);
    }
  }
  void ensure() {
    for (size_t i = 0; i < 2; ++i) {
      if (!buf[i]) BB_CUDA_CHECK(cudaMallocHost(&buf[i], kChunk));
      if (!done[i]) BB_CUDA_CHECK(cudaEventCreateWithFlags(&done[i], cudaEventDisableTiming));
    }
  }
};
thread_local std::array<Staging, kMaxDevices> t_staging;

}  // namespace

// ---- the core's seam -------------------------------------------------------------------

namespace cuda_rt {

int device_count() { return visible_devices(); }

void* prepare_launch(int device) {
  device = checked_device(device, "cuda launch");
  use_device(device);
  return current_handle(device);
}

void* alloc(size_t nbytes, int device) {
  device = checked_device(device, "cuda alloc");
  use_device(device);
  if (nbytes == 0) return nullptr;
  configure_pool(device);
  cudaStream_t s = current_handle(device);
  void* p = nullptr;
  cudaError_t err = cudaMallocAsync(&p, nbytes, s);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    auto& st = state(device);
    throw DeviceError(fmt::format(
        "cuda alloc: out of memory on cuda:{} asking for {} bytes ({} allocated by barbell, {} free of {})", device,
        nbytes, st.allocated.load(), free_b, total_b));
  }
  BB_CUDA_CHECK(err);
  if (g_poison.load(std::memory_order_relaxed)) BB_CUDA_CHECK(cudaMemsetAsync(p, 0xFF, nbytes, s));
  auto& st = state(device);
  int64_t now = st.allocated.fetch_add(static_cast<int64_t>(nbytes)) + static_cast<int64_t>(nbytes);
  int64_t peak = st.peak.load();
  while (now > peak && !st.peak.compare_exchange_weak(peak, now)) {
  }
  st.allocations.fetch_add(1);
  return p;
}

void free(void* ptr, size_t nbytes, int device) noexcept {
  if (!ptr) return;
  if (device < 0 || device >= kMaxDevices) return;
  // Errors here are cleared, not left pending: the next launch check would otherwise
  // blame an unrelated kernel.
  int cur = -1;
  if (cudaGetDevice(&cur) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  if (cur != device && cudaSetDevice(device) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  // Stream-ordered: the block returns to the pool once the work queued on this
  // thread's current stream has finished. A tensor used on another stream must be
  // ordered against this one by its user (events), as with any stream-ordered pool:
  // the NCCL process group keeps its tensors until the compute stream has waited.
  if (cudaFreeAsync(ptr, current_handle(device)) != cudaSuccess) cudaGetLastError();
  state(device).allocated.fetch_sub(static_cast<int64_t>(nbytes));
  if (cur != device && cudaSetDevice(cur) != cudaSuccess) cudaGetLastError();
}

void copy_h2d(void* dst, const void* src, size_t nbytes, int device) {
  device = checked_device(device, "copy to cuda");
  use_device(device);
  if (nbytes == 0) return;
  cudaStream_t s = current_handle(device);
  Staging& st = t_staging[static_cast<size_t>(device)];
  st.ensure();
  const auto* in = static_cast<const char*>(src);
  auto* out = static_cast<char*>(dst);
  for (size_t off = 0, k = 0; off < nbytes; off += Staging::kChunk, k ^= 1) {
    size_t n = std::min(Staging::kChunk, nbytes - off);
    BB_CUDA_CHECK(cudaEventSynchronize(st.done[k]));  // the buffer's previous copy has finished
    std::memcpy(st.buf[k], in + off, n);
    BB_CUDA_CHECK(cudaMemcpyAsync(out + off, st.buf[k], n, cudaMemcpyHostToDevice, s));
    BB_CUDA_CHECK(cudaEventRecord(st.done[k], s));
  }
  // The source may be freed by the caller as soon as we return; it already has been
  // copied into staging, so only the staging buffers' reuse needs the events above.
}

void copy_d2h(void* dst, const void* src, size_t nbytes, int device) {
  device = checked_device(device, "copy from cuda");
  use_device(device);
  if (nbytes == 0) return;
  cudaStream_t s = current_handle(device);
  Staging& st = t_staging[static_cast<size_t>(device)];
  st.ensure();
  const auto* in = static_cast<const char*>(src);
  auto* out = static_cast<char*>(dst);
  // Queue chunk i+1 before draining chunk i, so the copy engine and the host memcpy overlap.
  size_t nchunks = (nbytes + Staging::kChunk - 1) / Staging::kChunk;
  auto issue = [&](size_t i) {
    size_t off = i * Staging::kChunk, n = std::min(Staging::kChunk, nbytes - off);
    BB_CUDA_CHECK(cudaEventSynchronize(st.done[i & 1]));  // an earlier copy may still use the buffer
    BB_CUDA_CHECK(cudaMemcpyAsync(st.buf[i & 1], in + off, n, cudaMemcpyDeviceToHost, s));
    BB_CUDA_CHECK(cudaEventRecord(st.done[i & 1], s));
  };
  issue(0);
  for (size_t i = 0; i < nchunks; ++i) {
    if (i + 1 < nchunks) issue(i + 1);
    BB_CUDA_CHECK(cudaEventSynchronize(st.done[i & 1]));
    size_t off = i * Staging::kChunk, n = std::min(Staging::kChunk, nbytes - off);
    std::memcpy(out + off, st.buf[i & 1], n);
  }
}

void copy_d2d(void* dst, const void* src, size_t nbytes, int device, int src_device) {
  device = checked_device(device, "cuda copy");
  if (src_device < 0) src_device = device;
  src_device = checked_device(src_device, "cuda copy");
  if (nbytes == 0) return;
  if (src_device == device) {
    use_device(device);
    BB_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, current_handle(device)));
    return;
  }
  // Between GPUs: the copy (on the destination's stream) waits for the work that
  // wrote src, and the source's stream waits for the copy before it may free src.
  cudaStream_t s_src = current_handle(src_device), s_dst = current_handle(device);
  cudaEvent_t written = nullptr, read = nullptr;
  use_device(src_device);
  BB_CUDA_CHECK(cudaEventCreateWithFlags(&written, cudaEventDisableTiming));
  BB_CUDA_CHECK(cudaEventRecord(written, s_src));
  use_device(device);
  BB_CUDA_CHECK(cudaEventCreateWithFlags(&read, cudaEventDisableTiming));
  BB_CUDA_CHECK(cudaStreamWaitEvent(s_dst, written, 0));
  BB_CUDA_CHECK(cudaMemcpyPeerAsync(dst, device, src, src_device, nbytes, s_dst));
  BB_CUDA_CHECK(cudaEventRecord(read, s_dst));
  use_device(src_device);
  BB_CUDA_CHECK(cudaStreamWaitEvent(s_src, read, 0));
  // Destroying a recorded event is safe: CUDA releases it once it has completed.
  cudaEventDestroy(written);
  cudaEventDestroy(read);
  use_device(device);
}

}  // namespace cuda_rt

// ---- the public runtime API ----------------------------------------------------------------

namespace cuda {

DeviceProperties properties(int device) {
  device = checked_device(device, "cuda::properties");
  cudaDeviceProp p{};
  BB_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  DeviceProperties out;
  out.name = p.name;
  out.major = p.major;
  out.minor = p.minor;
  out.multiprocessors = p.multiProcessorCount;
  out.total_memory = p.totalGlobalMem;
  out.l2_cache = static_cast<size_t>(p.l2CacheSize);
  out.shared_memory_per_block_optin = p.sharedMemPerBlockOptin;
  return out;
}

int current_device() {
  checked_device(-1, "cuda::current_device");
  int d = 0;
  BB_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

void set_device(int device) {
  device = checked_device(device, "cuda::set_device");
  BB_CUDA_CHECK(cudaSetDevice(device));
}

Stream Stream::create(int device, int priority) {
  device = checked_device(device, "cuda::Stream::create");
  use_device(device);
  cudaStream_t s = nullptr;
  BB_CUDA_CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, priority));
  Stream out;
  out.handle_ = s;
  out.device_ = device;
  out.owner_ = std::shared_ptr<void>(s, [device](void* h) {
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess) return;
    cudaSetDevice(device);
    cudaStreamDestroy(static_cast<cudaStream_t>(h));
    cudaSetDevice(cur);
  });
  return out;
}

Stream Stream::wrap(void* handle, int device) {
  Stream out;
  out.handle_ = handle;
  out.device_ = checked_device(device, "cuda::Stream::wrap");
  return out;
}

void Stream::synchronize() const {
  use_device(checked_device(device_, "cuda::Stream::synchronize"));
  BB_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(handle_)));
}

bool Stream::query() const {
  use_device(checked_device(device_, "cuda::Stream::query"));
  cudaError_t e = cudaStreamQuery(static_cast<cudaStream_t>(handle_));
  if (e == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  BB_CUDA_CHECK(e);
  return true;
}

Stream current_stream(int device) {
  device = checked_device(device, "cuda::current_stream");
  if (t_has_current[static_cast<size_t>(device)]) return t_current[static_cast<size_t>(device)];
  Stream s;
  s.handle_ = cudaStreamPerThread;
  s.device_ = device;
  return s;
}

void set_current_stream(const Stream& s) {
  int device = checked_device(s.device(), "cuda::set_current_stream");
  bool is_default = s.handle() == static_cast<void*>(cudaStreamPerThread) || s.handle() == nullptr;
  t_has_current[static_cast<size_t>(device)] = !is_default;
  t_current[static_cast<size_t>(device)] = is_default ? Stream() : s;
}

StreamGuard::StreamGuard(const Stream& s) : prev_(current_stream(s.device())) { set_current_stream(s); }
StreamGuard::~StreamGuard() {
  try {
    set_current_stream(prev_);
  } catch (...) {  // a destructor must not throw; the device existed when we started
  }
}

Event::Event(bool timing) {
  device_ = checked_device(-1, "cuda::Event");
  cudaEvent_t e = nullptr;
  BB_CUDA_CHECK(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming));
  handle_ = std::shared_ptr<void>(e, [](void* h) { cudaEventDestroy(static_cast<cudaEvent_t>(h)); });
}

void Event::record(const Stream& s) {
  BB_CHECK(s.device() == device_, DeviceError, "cuda::Event::record: event of cuda:{} on a stream of cuda:{}", device_,
           s.device());
  use_device(device_);
  BB_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(handle_.get()), static_cast<cudaStream_t>(s.handle())));
}

void Event::synchronize() const { BB_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(handle_.get()))); }

bool Event::query() const {
  cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(handle_.get()));
  if (e == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  BB_CUDA_CHECK(e);
  return true;
}

void Event::wait(const Stream& s) const {
  use_device(s.device());
  BB_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(s.handle()), static_cast<cudaEvent_t>(handle_.get()), 0));
}

float Event::elapsed_ms(const Event& start) const {
  float ms = 0;
  BB_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start.handle_.get()),
                                     static_cast<cudaEvent_t>(handle_.get())));
  return ms;
}

void synchronize(int device) {
  device = checked_device(device, "cuda::synchronize");
  use_device(device);
  BB_CUDA_CHECK(cudaDeviceSynchronize());
}

MemoryStats memory_stats(int device) {
  device = checked_device(device, "cuda::memory_stats");
  configure_pool(device);
  auto& st = state(device);
  MemoryStats m;
  m.allocated = static_cast<size_t>(std::max<int64_t>(st.allocated.load(), 0));
  m.peak_allocated = static_cast<size_t>(std::max<int64_t>(st.peak.load(), 0));
  m.allocations = st.allocations.load();
  cudaMemPool_t pool;
  BB_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t v = 0;
  BB_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &v));
  m.reserved = v;
  BB_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &v));
  m.peak_reserved = v;
  return m;
}

void reset_peak_memory_stats(int device) {
  device = checked_device(device, "cuda::reset_peak_memory_stats");
  auto& st = state(device);
  st.peak.store(st.allocated.load());
  st.allocations.store(0);
  cudaMemPool_t pool;
  BB_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t zero = 0;
  BB_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &zero));
}

void empty_cache(int device) {
  device = checked_device(device, "cuda::empty_cache");
  use_device(device);
  BB_CUDA_CHECK(cudaDeviceSynchronize());
  cudaMemPool_t pool;
  BB_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  BB_CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));
}

void set_poison_allocations(bool on) { g_poison.store(on); }
bool poison_allocations() { return g_poison.load(); }

#ifdef BARBELL_CUDA_EMULATE
bool is_emulated() { return true; }
std::vector<KernelTraffic> emulated_traffic() {
  std::vector<KernelTraffic> out;
  for (const auto& [name, s] : emu::kernel_stats()) {
    KernelTraffic k;
    k.kernel = name;
    k.launches = s.launches;
    k.requests = s.g_requests;
    k.sectors = s.g_sectors;
    k.ideal_sectors = s.g_ideal_sectors;
    k.bytes_read = s.g_bytes_read;
    k.bytes_written = s.g_bytes_written;
    k.unique_read_sectors = s.g_unique_read_sectors;
    k.unique_write_sectors = s.g_unique_write_sectors;
    k.shared_requests = s.s_requests;
    k.shared_wavefronts = s.s_wavefronts;
    k.shared_ideal_wavefronts = s.s_ideal_wavefronts;
    k.atomics = s.atomics;
    out.push_back(k);
  }
  return out;
}
#else
bool is_emulated() { return false; }
std::vector<KernelTraffic> emulated_traffic() { return {}; }
#endif

}  // namespace cuda
}  // namespace barbell

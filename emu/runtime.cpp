// The CUDA runtime API calls barbell makes, served by the emulated device: devices with
// an H100 SXM's properties, streams (the legacy default stream, per-thread default
// streams, created blocking and non-blocking ones) and events with CUDA's ordering
// rules, the stream-ordered allocator and its pool attributes, copies and memsets,
// function attributes, launches, and errors (the last error, and sticky errors after a
// fault, as a GPU context has).
//
// Execution is deferred, as on a GPU: an operation is queued on its stream and runs when
// the host synchronises with it (a stream, event or device synchronisation, a blocking
// copy, cudaFree) or another operation that must follow it runs; independent streams
// run in whatever order the host's synchronisations pull them. Ordering is checked, not
// assumed: every operation carries a vector clock (its stream's position, joined with
// the events it waits for, the legacy stream's implicit synchronisation, and what the
// host had synchronised with when it queued it), and memory.cpp checks each access
// against the operations that last wrote and read the same bytes. BARBELL_EMU_SYNC=1
// runs every operation as it is queued (like CUDA_LAUNCH_BLOCKING=1).
#include <execinfo.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "internal.hpp"

namespace barbell::emu {
namespace {
constexpr int kMaxDevices = 8;
constexpr size_t kMaxParamBytes = 32764;  // CUDA 12.1+, Volta and later
constexpr size_t kDefaultSmem = 48 * 1024;
constexpr size_t kOptinSmem = 232448;  // H100: 227 KiB per block with the opt-in
}  // namespace
}  // namespace barbell::emu

struct Dep {
  uint32_t stream;
  uint64_t seq;
};

struct PendingOp {
  uint32_t id = 0;
  uint64_t seq = 0;
  std::vector<uint64_t> vc;
  std::vector<Dep> deps;
  const std::string* name = nullptr;
  std::function<void()> run;
};

struct CUstream_st {
  uint32_t index = 0;
  int device = 0;
  bool blocking = true;  // synchronises with the legacy default stream
  bool legacy = false;
  bool per_thread = false;
  int priority = 0;
  bool destroyed = false;
  uint64_t enqueued = 0, executed = 0;
  std::vector<uint64_t> vc;  // the clock of its last queued operation
  std::vector<Dep> waits;    // dependencies of its next operation (cudaStreamWaitEvent)
  std::deque<PendingOp> queue;
  std::string label;
};

struct CUevent_st {
  int device = 0;
  bool timing = true;
  bool recorded = false;
  uint32_t stream = 0;
  uint64_t seq = 0;
  std::vector<uint64_t> vc;
  double time = 0;  // seconds, when its record ran
  bool destroyed = false;
};

struct CUmemPoolHandle_st {
  int device = 0;
  uint64_t threshold = 0;
  uint64_t used = 0, used_high = 0, reserved = 0, reserved_high = 0;
};

namespace barbell::emu {
namespace {

struct Runtime {
  std::recursive_mutex mu;
  std::vector<CUstream_st*> streams;  // by index; never freed (destroyed streams keep their index)
  std::array<CUstream_st*, kMaxDevices> legacy{};
  std::set<const CUstream_st*> valid_streams;
  std::set<const CUevent_st*> valid_events;
  std::vector<std::pair<uint32_t, uint64_t>> ops{{0, 0}};  // op id -> (stream, seq); id 0 unused
  std::vector<const std::string*> op_names{nullptr};
  std::unordered_set<std::string> names;
  std::vector<uint64_t> host_vc;
  std::array<cudaError_t, kMaxDevices> sticky{};
  std::array<std::string, kMaxDevices> sticky_msg;
  std::map<uintptr_t, size_t> pinned;
  std::unordered_map<const void*, int> max_dyn_smem;
  std::array<CUmemPoolHandle_st, kMaxDevices> pools{};
  std::unordered_map<const void*, std::pair<size_t, int>> async_allocs;  // ptr -> (bytes, device)
  OpInfo running;
  bool has_running = false;
  std::map<cudaError_t, std::string> detail;  // the latest message per error code
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
};
Runtime& R() {
  static Runtime* r = new Runtime();  // never destroyed (work may be pending at exit)
  return *r;
}
using Lock = std::lock_guard<std::recursive_mutex>;

thread_local cudaError_t t_last = cudaSuccess;
thread_local int t_device = 0;
thread_local std::array<CUstream_st*, kMaxDevices> t_per_thread{};

int ndev() { return options().devices; }

cudaError_t set_error(cudaError_t e, const std::string& msg = "") {
  if (e != cudaSuccess) {
    t_last = e;
    if (!msg.empty()) R().detail[e] = msg;
  }
  return e;
}

// After a fault the device's context is unusable: every call that touches it fails.
cudaError_t sticky(int device) {
  const cudaError_t e = R().sticky[static_cast<size_t>(device)];
  if (e != cudaSuccess) t_last = e;
  return e;
}

void join(std::vector<uint64_t>& a, const std::vector<uint64_t>& b) {
  if (a.size() < b.size()) a.resize(b.size(), 0);
  for (size_t i = 0; i < b.size(); ++i) a[i] = std::max(a[i], b[i]);
}

CUstream_st* new_stream(int device, bool blocking, bool legacy, bool per_thread, int priority,
                        const std::string& label) {
  Runtime& r = R();
  auto* s = new CUstream_st();
  s->index = static_cast<uint32_t>(r.streams.size());
  s->device = device;
  s->blocking = blocking;
  s->legacy = legacy;
  s->per_thread = per_thread;
  s->priority = priority;
  s->label = label;
  r.streams.push_back(s);
  r.valid_streams.insert(s);
  return s;
}

CUstream_st* legacy_stream(int device) {
  Runtime& r = R();
  if (!r.legacy[static_cast<size_t>(device)])
    r.legacy[static_cast<size_t>(device)] = new_stream(
        device, true, true, false, 0, "the legacy default stream of cuda:" + std::to_string(device));
  return r.legacy[static_cast<size_t>(device)];
}

// The stream a handle names (null: not a live stream).
CUstream_st* resolve(cudaStream_t h) {
  Runtime& r = R();
  if (h == nullptr || h == cudaStreamLegacy) return legacy_stream(t_device);
  if (h == cudaStreamPerThread) {
    CUstream_st*& s = t_per_thread[static_cast<size_t>(t_device)];
    if (!s) {
      std::ostringstream os;
      os << "the per-thread default stream of cuda:" << t_device << " in thread "
         << std::this_thread::get_id();
      s = new_stream(t_device, true, false, true, 0, os.str());
    }
    return s;
  }
  if (!r.valid_streams.count(h)) return nullptr;
  return h;
}

std::string stream_label(uint32_t index) {
  Runtime& r = R();
  if (index >= r.streams.size()) return "?";
  const CUstream_st* s = r.streams[index];
  if (!s->label.empty()) return s->label;
  return "stream #" + std::to_string(index);
}

void report(const std::string& msg) {
  if (options().quiet) return;
  std::fprintf(stderr, "\nbarbell emulator: %s\n", msg.c_str());
  if (options().eager) {
    // BARBELL_EMU_SYNC=1: the operation runs inside the host call that queued it, so the
    // host's stack says which op launched it.
    void* frames[48];
    const int n = backtrace(frames, 48);
    std::fprintf(stderr, "barbell emulator: the host call that queued it:\n");
    backtrace_symbols_fd(frames, n, 2);
  }
}

void execute(CUstream_st* s, PendingOp& op) {
  Runtime& r = R();
  const size_t dev = static_cast<size_t>(s->device);
  if (r.sticky[dev] == cudaSuccess) {
    r.running = OpInfo{op.id, s->index, op.seq, &op.vc, op.name};
    r.has_running = true;
    arena_unprotect();
    try {
      op.run();
    } catch (const CodedFault& f) {
      r.sticky[dev] = f.code;
      r.sticky_msg[dev] = f.what();
      r.detail[f.code] = f.what();
      report(f.what());
    } catch (const Fault& f) {
      r.sticky[dev] = cudaErrorIllegalAddress;
      r.sticky_msg[dev] = f.what();
      r.detail[cudaErrorIllegalAddress] = f.what();
      report(f.what());
    } catch (const std::exception& e) {
      r.sticky[dev] = cudaErrorUnknown;
      r.sticky_msg[dev] = std::string("emulator: ") + e.what();
      r.detail[cudaErrorUnknown] = r.sticky_msg[dev];
      report(r.sticky_msg[dev]);
    }
    arena_protect();
    r.has_running = false;
  }
  s->executed = op.seq;
}

void flush(CUstream_st* s, uint64_t upto) {
  while (s->executed < upto && !s->queue.empty()) {
    PendingOp op = std::move(s->queue.front());
    s->queue.pop_front();
    for (const Dep& d : op.deps) flush(R().streams[d.stream], d.seq);
    execute(s, op);
  }
}

void flush_device(int device) {
  Runtime& r = R();
  for (CUstream_st* s : r.streams)
    if (s->device == device) {
      flush(s, s->enqueued);
      join(r.host_vc, s->vc);
    }
}

const std::string* intern(const std::string& name) {
  Runtime& r = R();
  return &*r.names.insert(name).first;
}

// Queues an operation; returns its id.
uint32_t enqueue_op(CUstream_st* s, const std::string& name, std::function<void()> run) {
  Runtime& r = R();
  PendingOp op;
  std::vector<uint64_t>& vc = s->vc;
  join(vc, r.host_vc);
  if (s->legacy) {
    // The legacy default stream waits for all blocking streams of its device.
    for (CUstream_st* o : r.streams)
      if (o != s && o->device == s->device && o->blocking && !o->destroyed && o->enqueued > 0) {
        op.deps.push_back(Dep{o->index, o->enqueued});
        join(vc, o->vc);
      }
  } else if (s->blocking) {
    CUstream_st* l = legacy_stream(s->device);
    if (l->enqueued > 0) {
      op.deps.push_back(Dep{l->index, l->enqueued});
      join(vc, l->vc);
    }
  }
  for (const Dep& d : s->waits) op.deps.push_back(d);
  s->waits.clear();
  op.seq = ++s->enqueued;
  if (vc.size() <= s->index) vc.resize(s->index + 1, 0);
  vc[s->index] = op.seq;
  op.vc = vc;
  op.id = static_cast<uint32_t>(r.ops.size());
  r.ops.emplace_back(s->index, op.seq);
  op.name = intern(name);
  r.op_names.push_back(op.name);
  op.run = std::move(run);
  const uint32_t id = op.id;
  const uint64_t seq = op.seq;
  s->queue.push_back(std::move(op));
  if (options().eager)
    flush(s, seq);
  else if (s->queue.size() > 4096)
    flush(s, s->executed + 2048);
  return id;
}

bool is_pinned(const void* p, size_t n) {
  Runtime& r = R();
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = r.pinned.upper_bound(a);
  if (it == r.pinned.begin()) return false;
  --it;
  return a >= it->first && a + n <= it->first + it->second;
}

bool checked_device(int d) { return d >= 0 && d < ndev(); }

cudaError_t mem_op(CUstream_st* s, void* dst, const void* src, size_t n, cudaMemcpyKind kind, bool host_sync,
                   const char* what) {
  const auto d = reinterpret_cast<uintptr_t>(dst), sp = reinterpret_cast<uintptr_t>(src);
  const bool dst_dev = in_arena(d, 1), src_dev = in_arena(sp, 1);
  if (kind == cudaMemcpyDefault)
    kind = dst_dev ? (src_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                   : (src_dev ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  const bool want_dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool want_src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (n > 0 && (dst_dev != want_dst_dev || src_dev != want_src_dev)) {
    std::ostringstream os;
    os << what << ": the pointers do not match the copy kind " << static_cast<int>(kind) << " (destination "
       << describe_address(d) << ", source " << describe_address(sp) << ")";
    return set_error(cudaErrorInvalidValue, os.str());
  }
  if (n == 0) return cudaSuccess;
  if (kind == cudaMemcpyDeviceToDevice && d < sp + n && sp < d + n)
    return set_error(cudaErrorInvalidValue, std::string(what) + ": overlapping source and destination");
  std::string name = what;
  switch (kind) {
    case cudaMemcpyHostToDevice: {
      if (is_pinned(src, n) && !host_sync) {
        // read when it runs, as DMA from pinned memory does
        enqueue_op(s, name + " (host to device)", [dst, src, n, name] {
          device_write(dst, n);
          std::memcpy(dst, src, n);
        });
      } else {
        // pageable: CUDA stages the source before returning; so do we
        auto copy = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                                 static_cast<const unsigned char*>(src) + n);
        const uint32_t id = enqueue_op(s, name + " (host to device)", [dst, copy, n] {
          device_write(dst, n);
          std::memcpy(dst, copy->data(), n);
        });
        (void)id;
        if (host_sync) flush(s, s->enqueued);
      }
      break;
    }
    case cudaMemcpyDeviceToHost: {
      enqueue_op(s, name + " (device to host)", [dst, src, n] {
        device_read(src, n);
        std::memcpy(dst, src, n);
      });
      // to pageable memory the call returns when the data is there; to pinned memory
      // (async) it does not
      if (host_sync || !is_pinned(dst, n)) {
        flush(s, s->enqueued);
        join(R().host_vc, s->vc);
      }
      break;
    }
    case cudaMemcpyDeviceToDevice:
      enqueue_op(s, name + " (device to device)", [dst, src, n] {
        device_read(src, n);
        device_write(dst, n);
        std::memmove(dst, src, n);
      });
      if (host_sync) flush(s, s->enqueued);
      break;
    default:
      enqueue_op(s, name + " (host to host)", [dst, src, n] { std::memmove(dst, src, n); });
      flush(s, s->enqueued);
      break;
  }
  return cudaSuccess;
}

}  // namespace

// ---- for the other parts of the emulator --------------------------------------------------

const OpInfo* running_op() {
  Runtime& r = R();
  return r.has_running ? &r.running : nullptr;
}

bool ordered_before(uint32_t op) {
  Runtime& r = R();
  if (!r.has_running || op == 0) return true;
  if (op == r.running.id) return true;
  if (op >= r.ops.size()) return false;
  const auto [stream, seq] = r.ops[op];
  const std::vector<uint64_t>& vc = *r.running.vc;
  return stream < vc.size() && vc[stream] >= seq;
}

std::string op_description(uint32_t op) {
  Runtime& r = R();
  if (op == 0 || op >= r.ops.size()) return "an unknown operation";
  std::ostringstream os;
  os << "operation #" << op << " (" << (r.op_names[op] ? *r.op_names[op] : std::string("?")) << ") on "
     << stream_label(r.ops[op].first);
  return os.str();
}

cudaError_t enqueue(cudaStream_t h, const std::string& name, std::function<void()> work) {
  Runtime& r = R();
  Lock lock(r.mu);
  CUstream_st* s = resolve(h);
  if (!s) return set_error(cudaErrorInvalidResourceHandle, name + ": not a live stream");
  if (cudaError_t e = sticky(s->device)) return e;
  enqueue_op(s, name, std::move(work));
  return cudaSuccess;
}

void launch(const LaunchSite& site, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const void* fn,
            const void* params, size_t param_bytes, Thunk thunk) {
  Runtime& r = R();
  Lock lock(r.mu);
  memory_init();
  auto bad = [&](cudaError_t e, const std::string& why) {
    std::ostringstream os;
    os << "launch of " << site.kernel << " at " << site.file << ":" << site.line << " with grid (" << grid.x
       << "," << grid.y << "," << grid.z << "), block (" << block.x << "," << block.y << "," << block.z
       << "), " << smem << " bytes of dynamic shared memory: " << why;
    set_error(e, os.str());
  };
  if (sticky(t_device) != cudaSuccess) return;
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0)
    return bad(cudaErrorInvalidConfiguration, "an empty grid or block");
  if (block.x > 1024 || block.y > 1024 || block.z > 64 ||
      static_cast<uint64_t>(block.x) * block.y * block.z > 1024)
    return bad(cudaErrorInvalidConfiguration,
               "more than 1024 threads per block, or a block dimension beyond "
               "(1024, 1024, 64)");
  if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    return bad(cudaErrorInvalidConfiguration, "a grid dimension beyond (2^31 - 1, 65535, 65535)");
  size_t limit = kDefaultSmem;
  if (fn) {
    auto it = r.max_dyn_smem.find(fn);
    if (it != r.max_dyn_smem.end()) limit = static_cast<size_t>(it->second);
  }
  if (smem > limit)
    return bad(cudaErrorInvalidValue,
               smem > kOptinSmem
                   ? "more dynamic shared memory than an H100 block can have (227 KiB)"
                   : "more than the kernel's dynamic shared memory limit of " + std::to_string(limit) +
                         " bytes (above 48 KiB a kernel must opt in with cudaFuncSetAttribute("
                         "cudaFuncAttributeMaxDynamicSharedMemorySize) first)");
  if (param_bytes > kMaxParamBytes)
    return bad(cudaErrorInvalidValue, "the kernel's arguments take " + std::to_string(param_bytes) +
                                          " bytes, more than the 32764 a launch can pass");
  CUstream_st* s = resolve(stream);
  if (!s) return bad(cudaErrorInvalidResourceHandle, "the stream is not a live stream");
  if (s->device != t_device)
    return bad(cudaErrorInvalidResourceHandle,
               "the stream belongs to cuda:" + std::to_string(s->device) +
                   ", the current device is cuda:" + std::to_string(t_device));
  const int device = t_device;
  auto block_copy = std::make_shared<std::vector<unsigned char>>(
      static_cast<const unsigned char*>(params), static_cast<const unsigned char*>(params) + param_bytes);
  enqueue_op(s, site.kernel, [site, grid, block, smem, fn, device, block_copy, thunk] {
    LaunchCtx L;
    L.site = site;
    L.grid = grid;
    L.block = block;
    L.smem = smem;
    L.fn = fn;
    L.device = device;
    L.op = running_op()->id;
    L.thunk = thunk;
    L.params = block_copy->data();
    L.param_bytes = block_copy->size();
    if (options().check_order) {
      undo_begin();
      try {
        run_launch(L, Order::forward);
        std::vector<std::pair<uintptr_t, std::vector<unsigned char>>> first;
        undo_restore(&first);
        undo_begin();
        LaunchCtx L2;
        L2.site = site;
        L2.grid = grid;
        L2.block = block;
        L2.smem = smem;
        L2.fn = fn;
        L2.device = device;
        L2.op = L.op;
        L2.thunk = thunk;
        L2.params = block_copy->data();
        L2.param_bytes = block_copy->size();
        L2.replay = true;
        run_launch(L2, Order::reverse);
        undo_compare(first, std::string("kernel ") + site.kernel + " (" + site.file + ":" +
                                std::to_string(site.line) + ")");
        undo_end();
      } catch (...) {
        undo_end();
        throw;
      }
    } else {
      run_launch(L, options().order);
    }
  });
}

void arena_alloc_op_touch(uint32_t) {}

}  // namespace barbell::emu

// ---- the CUDA runtime API ---------------------------------------------------------------------

using namespace barbell::emu;

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = t_last;
  t_last = cudaSuccess;
  // A sticky error stays: the context is unusable.
  for (int d = 0; d < ndev(); ++d)
    if (R().sticky[static_cast<size_t>(d)] != cudaSuccess && d == t_device) {
      t_last = R().sticky[static_cast<size_t>(d)];
      return t_last;
    }
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return t_last; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorMisalignedAddress: return "cudaErrorMisalignedAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t e) {
  const char* base = "unknown error";
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: base = "invalid argument"; break;
    case cudaErrorMemoryAllocation: base = "out of memory"; break;
    case cudaErrorInvalidConfiguration: base = "invalid configuration argument"; break;
    case cudaErrorInvalidDevice: base = "invalid device ordinal"; break;
    case cudaErrorInvalidResourceHandle: base = "invalid resource handle"; break;
    case cudaErrorIllegalAddress: base = "an illegal memory access was encountered"; break;
    case cudaErrorMisalignedAddress: base = "misaligned address"; break;
    case cudaErrorLaunchFailure: base = "unspecified launch failure"; break;
    case cudaErrorNotReady: base = "device not ready"; break;
    case cudaErrorNoDevice: base = "no CUDA-capable device is detected"; break;
    case cudaErrorNotSupported: base = "operation not supported"; break;
    case cudaErrorInvalidDeviceFunction: base = "invalid device function"; break;
    default: break;
  }
  // The emulator's explanation of the latest error with this code (what a GPU cannot say).
  thread_local std::string buf;
  Runtime& r = R();
  Lock lock(r.mu);
  auto it = r.detail.find(e);
  buf = base;
  if (it != r.detail.end()) buf += " [emulated GPU: " + it->second + "]";
  return buf.c_str();
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return set_error(cudaErrorInvalidValue);
  *count = ndev();
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  if (!device) return set_error(cudaErrorInvalidValue);
  *device = t_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (!checked_device(device))
    return set_error(cudaErrorInvalidDevice, "cudaSetDevice(" + std::to_string(device) + ")");
  t_device = device;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  if (!v) return set_error(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  if (!v) return set_error(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (!p) return set_error(cudaErrorInvalidValue);
  if (!checked_device(device)) return set_error(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "NVIDIA H100 80GB HBM3 (barbell emulated device)");
  p->totalGlobalMem = arena_capacity() / static_cast<size_t>(ndev());
  p->sharedMemPerBlock = kDefaultSmem;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->memPitch = 2147483647;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = 1024;
  p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = 65535;
  p->maxGridSize[2] = 65535;
  p->totalConstMem = 65536;
  p->major = 9;
  p->minor = 0;
  p->textureAlignment = 512;
  p->multiProcessorCount = 132;
  p->canMapHostMemory = 1;
  p->concurrentKernels = 1;
  p->ECCEnabled = 1;
  p->pciBusID = 0x18 + device;
  p->asyncEngineCount = 3;
  p->unifiedAddressing = 1;
  p->memoryBusWidth = 5120;
  p->l2CacheSize = 50 * 1024 * 1024;
  p->persistingL2CacheMaxSize = 30 * 1024 * 1024;
  p->maxThreadsPerMultiProcessor = 2048;
  p->streamPrioritiesSupported = 1;
  p->globalL1CacheSupported = 1;
  p->localL1CacheSupported = 1;
  p->sharedMemPerMultiprocessor = 233472;
  p->regsPerMultiprocessor = 65536;
  p->managedMemory = 1;
  p->computePreemptionSupported = 1;
  p->cooperativeLaunch = 1;
  p->sharedMemPerBlockOptin = kOptinSmem;
  p->maxBlocksPerMultiProcessor = 32;
  p->reservedSharedMemPerBlock = 1024;
  p->memoryPoolsSupported = 1;
  p->clusterLaunch = 1;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int device) {
  if (!v) return set_error(cudaErrorInvalidValue);
  if (!checked_device(device)) return set_error(cudaErrorInvalidDevice);
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, device);
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *v = p.major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *v = p.minor; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *v = p.multiProcessorCount; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *v = p.maxThreadsPerBlock; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *v = static_cast<int>(p.sharedMemPerBlockOptin);
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = static_cast<int>(p.sharedMemPerBlock); return cudaSuccess;
    case cudaDevAttrWarpSize: *v = 32; return cudaSuccess;
    case cudaDevAttrL2CacheSize: *v = p.l2CacheSize; return cudaSuccess;
    case cudaDevAttrMemoryPoolsSupported: *v = 1; return cudaSuccess;
    default:
      return set_error(
          cudaErrorNotSupported,
          "cudaDeviceGetAttribute: attribute " + std::to_string(static_cast<int>(attr)) + " is not emulated");
  }
}

cudaError_t cudaDeviceSynchronize(void) {
  Runtime& r = R();
  Lock lock(r.mu);
  flush_device(t_device);
  return sticky(t_device);
}

cudaError_t cudaDeviceReset(void) {
  Runtime& r = R();
  Lock lock(r.mu);
  flush_device(t_device);
  r.sticky[static_cast<size_t>(t_device)] = cudaSuccess;
  return cudaSuccess;
}

// -- streams ----------------------------------------------------------------------------------

cudaError_t cudaStreamCreateWithPriority(cudaStream_t* out, unsigned flags, int priority) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!out) return set_error(cudaErrorInvalidValue);
  if (cudaError_t e = sticky(t_device)) return e;
  const bool nonblocking = (flags & cudaStreamNonBlocking) != 0;
  std::ostringstream os;
  os << "stream #" << r.streams.size() << " (created" << (nonblocking ? ", non-blocking" : "")
     << ", cuda:" << t_device << ")";
  *out = new_stream(t_device, !nonblocking, false, false, std::max(-5, std::min(0, priority)), os.str());
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* out, unsigned flags) {
  return cudaStreamCreateWithPriority(out, flags, 0);
}
cudaError_t cudaStreamCreate(cudaStream_t* out) { return cudaStreamCreateWithPriority(out, 0, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t h) {
  Runtime& r = R();
  Lock lock(r.mu);
  CUstream_st* s = resolve(h);
  if (!s || s->legacy || s->per_thread)
    return set_error(cudaErrorInvalidResourceHandle,
                     "cudaStreamDestroy of a stream that is not a created, live one");
  // Work already queued still completes (CUDA: the stream's resources are released once
  // it is done); the handle is dead from now on.
  flush(s, s->enqueued);
  s->destroyed = true;
  r.valid_streams.erase(s);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t h) {
  Runtime& r = R();
  Lock lock(r.mu);
  CUstream_st* s = resolve(h);
  if (!s) return set_error(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize of a dead stream");
  flush(s, s->enqueued);
  join(r.host_vc, s->vc);
  return sticky(s->device);
}

cudaError_t cudaStreamQuery(cudaStream_t h) {
  // Pending work is run now, so the answer is always "done" (documented deviation).
  return cudaStreamSynchronize(h);
}

cudaError_t cudaStreamWaitEvent(cudaStream_t h, cudaEvent_t e, unsigned flags) {
  Runtime& r = R();
  Lock lock(r.mu);
  (void)flags;
  CUstream_st* s = resolve(h);
  if (!s) return set_error(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent on a dead stream");
  if (!e || !r.valid_events.count(e))
    return set_error(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent on a dead event");
  if (cudaError_t err = sticky(s->device)) return err;
  if (!e->recorded) return cudaSuccess;  // an event never recorded is complete
  s->waits.push_back(Dep{e->stream, e->seq});
  join(s->vc, e->vc);
  return cudaSuccess;
}

cudaError_t cudaStreamGetPriority(cudaStream_t h, int* p) {
  Runtime& r = R();
  Lock lock(r.mu);
  CUstream_st* s = resolve(h);
  if (!s || !p) return set_error(cudaErrorInvalidValue);
  *p = s->priority;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetStreamPriorityRange(int* least, int* greatest) {
  if (least) *least = 0;
  if (greatest) *greatest = -5;
  return cudaSuccess;
}

// -- events -------------------------------------------------------------------------------------

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* out, unsigned flags) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!out) return set_error(cudaErrorInvalidValue);
  auto* e = new CUevent_st();
  e->device = t_device;
  e->timing = (flags & cudaEventDisableTiming) == 0;
  r.valid_events.insert(e);
  *out = e;
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* out) { return cudaEventCreateWithFlags(out, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t e) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!e || !r.valid_events.count(e))
    return set_error(cudaErrorInvalidResourceHandle, "cudaEventDestroy of a dead event");
  // Recorded work may still be queued; the marker operation holds no pointer to the
  // event (it updates the event through the live set), so the event can go now.
  r.valid_events.erase(e);
  e->destroyed = true;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t h) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!e || !r.valid_events.count(e))
    return set_error(cudaErrorInvalidResourceHandle, "cudaEventRecord of a dead event");
  CUstream_st* s = resolve(h);
  if (!s) return set_error(cudaErrorInvalidResourceHandle, "cudaEventRecord on a dead stream");
  if (s->device != e->device)
    return set_error(cudaErrorInvalidResourceHandle,
                     "cudaEventRecord: the event belongs to cuda:" + std::to_string(e->device) +
                         ", the stream to cuda:" + std::to_string(s->device));
  if (cudaError_t err = sticky(s->device)) return err;
  enqueue_op(s, "cudaEventRecord", [e] {
    Runtime& rr = R();
    if (rr.valid_events.count(e))
      e->time = std::chrono::duration<double>(std::chrono::steady_clock::now() - rr.t0).count();
  });
  e->recorded = true;
  e->stream = s->index;
  e->seq = s->enqueued;
  e->vc = s->vc;
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!e || !r.valid_events.count(e))
    return set_error(cudaErrorInvalidResourceHandle, "cudaEventSynchronize of a dead event");
  if (!e->recorded) return cudaSuccess;
  flush(r.streams[e->stream], e->seq);
  join(r.host_vc, e->vc);
  return sticky(e->device);
}

cudaError_t cudaEventQuery(cudaEvent_t e) { return cudaEventSynchronize(e); }

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!ms || !start || !end || !r.valid_events.count(start) || !r.valid_events.count(end))
    return set_error(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime of a dead event");
  if (!start->timing || !end->timing)
    return set_error(cudaErrorInvalidResourceHandle,
                     "cudaEventElapsedTime of an event made with cudaEventDisableTiming");
  if (!start->recorded || !end->recorded)
    return set_error(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime of an event never recorded");
  flush(r.streams[start->stream], start->seq);
  flush(r.streams[end->stream], end->seq);
  *ms = static_cast<float>((end->time - start->time) * 1e3);
  return sticky(start->device);
}

// -- memory ---------------------------------------------------------------------------------------

cudaError_t cudaMalloc(void** p, size_t n) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!p) return set_error(cudaErrorInvalidValue);
  if (cudaError_t e = sticky(t_device)) return e;
  *p = nullptr;
  if (n == 0) return cudaSuccess;
  void* m = arena_alloc(n, t_device, 0);
  if (!m)
    return set_error(cudaErrorMemoryAllocation,
                     "cudaMalloc of " + std::to_string(n) + " bytes: the emulated device has " +
                         std::to_string(arena_capacity() - arena_in_use()) + " bytes free");
  *p = m;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!p) return cudaSuccess;
  if (!arena_owns(p))
    return set_error(cudaErrorInvalidValue, "cudaFree of a pointer that is not a live device allocation: " +
                                                describe_address(reinterpret_cast<uintptr_t>(p)));
  // cudaFree synchronises: every queued use of the memory completes first.
  for (int d = 0; d < ndev(); ++d) flush_device(d);
  auto it = r.async_allocs.find(p);
  if (it != r.async_allocs.end()) {
    CUmemPoolHandle_st& pool = r.pools[static_cast<size_t>(it->second.second)];
    pool.used -= it->second.first;
    r.async_allocs.erase(it);
  }
  arena_free_now(p);
  return cudaSuccess;
}

cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t h) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!p) return set_error(cudaErrorInvalidValue);
  CUstream_st* s = resolve(h);
  if (!s) return set_error(cudaErrorInvalidResourceHandle, "cudaMallocAsync on a dead stream");
  if (cudaError_t e = sticky(s->device)) return e;
  *p = nullptr;
  if (n == 0) return cudaSuccess;
  // The memory becomes valid at this point of the stream: a marker operation.
  const uint32_t op = enqueue_op(s, "cudaMallocAsync", [] {});
  void* m = arena_alloc(n, s->device, op);
  if (!m)
    return set_error(cudaErrorMemoryAllocation,
                     "cudaMallocAsync of " + std::to_string(n) + " bytes: the emulated device has " +
                         std::to_string(arena_capacity() - arena_in_use()) + " bytes free");
  CUmemPoolHandle_st& pool = r.pools[static_cast<size_t>(s->device)];
  pool.used += n;
  pool.used_high = std::max(pool.used_high, pool.used);
  pool.reserved = std::max(pool.reserved, pool.used);
  pool.reserved_high = std::max(pool.reserved_high, pool.reserved);
  r.async_allocs[m] = {n, s->device};
  *p = m;
  return cudaSuccess;
}

cudaError_t cudaFreeAsync(void* p, cudaStream_t h) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!p) return cudaSuccess;
  CUstream_st* s = resolve(h);
  if (!s) return set_error(cudaErrorInvalidResourceHandle, "cudaFreeAsync on a dead stream");
  if (cudaError_t e = sticky(s->device)) return e;
  if (!arena_owns(p))
    return set_error(cudaErrorInvalidValue,
                     "cudaFreeAsync of a pointer that is not a live device allocation: " +
                         describe_address(reinterpret_cast<uintptr_t>(p)));
  const size_t n = arena_size_of(p);
  enqueue_op(s, "cudaFreeAsync", [p, n] {
    // The free is ordered like a write of the whole block: any use on another stream
    // that is not ordered before it is a use after free.
    op_free_access(reinterpret_cast<uintptr_t>(p), n);
    Runtime& rr = R();
    auto it = rr.async_allocs.find(p);
    if (it != rr.async_allocs.end()) {
      CUmemPoolHandle_st& pool = rr.pools[static_cast<size_t>(it->second.second)];
      pool.used -= it->second.first;
      if (pool.threshold == 0) pool.reserved = pool.used;  // released at once without a threshold
      rr.async_allocs.erase(it);
    }
    arena_free_now(p);
  });
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** p, size_t n) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!p) return set_error(cudaErrorInvalidValue);
  void* m = std::aligned_alloc(4096, std::max<size_t>(4096, (n + 4095) / 4096 * 4096));
  if (!m) return set_error(cudaErrorMemoryAllocation, "cudaMallocHost of " + std::to_string(n) + " bytes");
  r.pinned[reinterpret_cast<uintptr_t>(m)] = n;
  *p = m;
  return cudaSuccess;
}
cudaError_t cudaHostAlloc(void** p, size_t n, unsigned) { return cudaMallocHost(p, n); }
cudaError_t cudaFreeHost(void* p) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!p) return cudaSuccess;
  auto it = r.pinned.find(reinterpret_cast<uintptr_t>(p));
  if (it == r.pinned.end())
    return set_error(cudaErrorInvalidValue, "cudaFreeHost of memory not from cudaMallocHost");
  for (int d = 0; d < ndev(); ++d) flush_device(d);  // queued copies may still read it
  r.pinned.erase(it);
  std::free(p);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  const size_t cap = arena_capacity();
  if (free_b) *free_b = cap - std::min(cap, arena_in_use());
  if (total_b) *total_b = cap;
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t h) {
  Runtime& r = R();
  Lock lock(r.mu);
  CUstream_st* s = resolve(h);
  if (!s) return set_error(cudaErrorInvalidResourceHandle, "cudaMemcpyAsync on a dead stream");
  if (cudaError_t e = sticky(s->device)) return e;
  return mem_op(s, dst, src, n, kind, false, "cudaMemcpyAsync");
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  Runtime& r = R();
  Lock lock(r.mu);
  CUstream_st* s = legacy_stream(t_device);
  if (cudaError_t e = sticky(s->device)) return e;
  const cudaError_t e = mem_op(s, dst, src, n, kind, true, "cudaMemcpy");
  if (e != cudaSuccess) return e;
  flush(s, s->enqueued);
  join(r.host_vc, s->vc);
  return sticky(s->device);
}

cudaError_t cudaMemcpyPeerAsync(void* dst, int dst_dev, const void* src, int src_dev, size_t n,
                                cudaStream_t h) {
  Runtime& r = R();
  Lock lock(r.mu);
  CUstream_st* s = resolve(h);
  if (!s) return set_error(cudaErrorInvalidResourceHandle, "cudaMemcpyPeerAsync on a dead stream");
  if (!checked_device(dst_dev) || !checked_device(src_dev)) return set_error(cudaErrorInvalidDevice);
  if (n && (arena_device_of(dst) != dst_dev || arena_device_of(src) != src_dev))
    return set_error(cudaErrorInvalidValue,
                     "cudaMemcpyPeerAsync: a pointer is not on the device named for it");
  if (cudaError_t e = sticky(s->device)) return e;
  return mem_op(s, dst, src, n, cudaMemcpyDeviceToDevice, false, "cudaMemcpyPeerAsync");
}

cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t h) {
  Runtime& r = R();
  Lock lock(r.mu);
  CUstream_st* s = resolve(h);
  if (!s) return set_error(cudaErrorInvalidResourceHandle, "cudaMemsetAsync on a dead stream");
  if (cudaError_t e = sticky(s->device)) return e;
  if (n == 0) return cudaSuccess;
  if (!live_range(reinterpret_cast<uintptr_t>(p), 1))
    return set_error(cudaErrorInvalidValue,
                     "cudaMemsetAsync of " + describe_address(reinterpret_cast<uintptr_t>(p)));
  enqueue_op(s, "cudaMemsetAsync", [p, v, n] {
    device_write(p, n);
    std::memset(p, v, n);
  });
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int v, size_t n) {
  const cudaError_t e = cudaMemsetAsync(p, v, n, nullptr);
  if (e != cudaSuccess) return e;
  return cudaStreamSynchronize(nullptr);
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  if (!a) return set_error(cudaErrorInvalidValue);
  std::memset(a, 0, sizeof *a);
  if (in_arena(reinterpret_cast<uintptr_t>(p), 1)) {
    a->type = cudaMemoryTypeDevice;
    a->device = arena_device_of(p);
    a->devicePointer = const_cast<void*>(p);
  } else if (is_pinned(p, 1)) {
    a->type = cudaMemoryTypeHost;
    a->hostPointer = const_cast<void*>(p);
  } else {
    a->type = cudaMemoryTypeUnregistered;
  }
  return cudaSuccess;
}

// -- the stream-ordered pool -------------------------------------------------------------------

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  if (!pool) return set_error(cudaErrorInvalidValue);
  if (!checked_device(device)) return set_error(cudaErrorInvalidDevice);
  CUmemPoolHandle_st& p = R().pools[static_cast<size_t>(device)];
  p.device = device;
  *pool = &p;
  return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!pool || !value) return set_error(cudaErrorInvalidValue);
  const uint64_t v = *static_cast<uint64_t*>(value);
  switch (attr) {
    case cudaMemPoolAttrReleaseThreshold: pool->threshold = v; return cudaSuccess;
    case cudaMemPoolAttrReservedMemHigh:
      if (v != 0)
        return set_error(cudaErrorInvalidValue, "cudaMemPoolAttrReservedMemHigh can only be reset to 0");
      pool->reserved_high = pool->reserved;
      return cudaSuccess;
    case cudaMemPoolAttrUsedMemHigh:
      if (v != 0)
        return set_error(cudaErrorInvalidValue, "cudaMemPoolAttrUsedMemHigh can only be reset to 0");
      pool->used_high = pool->used;
      return cudaSuccess;
    default: return cudaSuccess;  // reuse policies: accepted, no effect here
  }
}

cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!pool || !value) return set_error(cudaErrorInvalidValue);
  uint64_t* v = static_cast<uint64_t*>(value);
  switch (attr) {
    case cudaMemPoolAttrReleaseThreshold: *v = pool->threshold; return cudaSuccess;
    case cudaMemPoolAttrReservedMemCurrent: *v = pool->reserved; return cudaSuccess;
    case cudaMemPoolAttrReservedMemHigh: *v = pool->reserved_high; return cudaSuccess;
    case cudaMemPoolAttrUsedMemCurrent: *v = pool->used; return cudaSuccess;
    case cudaMemPoolAttrUsedMemHigh: *v = pool->used_high; return cudaSuccess;
    default: *static_cast<int*>(value) = 0; return cudaSuccess;
  }
}

cudaError_t cudaMemPoolTrimTo(cudaMemPool_t pool, size_t keep) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!pool) return set_error(cudaErrorInvalidValue);
  pool->reserved = std::max<uint64_t>(pool->used, std::min<uint64_t>(pool->reserved, keep));
  return cudaSuccess;
}

// -- functions -----------------------------------------------------------------------------------

cudaError_t cudaFuncSetAttribute(const void* fn, cudaFuncAttribute attr, int value) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!fn) return set_error(cudaErrorInvalidDeviceFunction);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > kOptinSmem)
      return set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " +
                                                  std::to_string(value) +
                                                  "): beyond the 232448 bytes an H100 "
                                                  "block can have");
    r.max_dyn_smem[fn] = value;
    return cudaSuccess;
  }
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) {
    if (value < -1 || value > 100) return set_error(cudaErrorInvalidValue);
    return cudaSuccess;
  }
  return set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: attribute " +
                                              std::to_string(static_cast<int>(attr)) + " is not emulated");
}

cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, const void* fn) {
  Runtime& r = R();
  Lock lock(r.mu);
  if (!a || !fn) return set_error(cudaErrorInvalidDeviceFunction);
  std::memset(a, 0, sizeof *a);
  a->maxThreadsPerBlock = 1024;
  auto it = r.max_dyn_smem.find(fn);
  a->maxDynamicSharedSizeBytes = it == r.max_dyn_smem.end() ? static_cast<int>(kDefaultSmem) : it->second;
  a->binaryVersion = 90;
  a->ptxVersion = 90;
  return cudaSuccess;
}

}  // extern "C"

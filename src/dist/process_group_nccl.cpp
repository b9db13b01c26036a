// The NCCL process group for CUDA tensors: collectives on the group's own stream, ordered
// with events against the caller's compute stream, on non-blocking communicators so that
// init and wait() can poll ncclCommGetAsyncError against a deadline and abort the
// communicator (ncclCommAbort) instead of hanging. libnccl is loaded with dlopen when the
// first group is made (nccl() below), never linked: libbarbell loads without it.
#include "dist/backends.hpp"

#if defined(BARBELL_WITH_NCCL)

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

#include <dlfcn.h>
#include <nccl.h>

#include "barbell/autograd/autograd.hpp"
#include "barbell/cuda/cuda.hpp"
#include "core/dynamic_library.hpp"

namespace barbell::dist::detail {
namespace {
// Every NCCL function this file calls, loaded at the first NCCL group (nccl()): nccl.h
// supplies types and constants only, so libbarbell has no NEEDED entry for libnccl.
#define BB_NCCL_FUNCTIONS(X) \
  X(ncclGetErrorString)      \
  X(ncclGetLastError)        \
  X(ncclGetUniqueId)         \
  X(ncclCommInitRankConfig)  \
  X(ncclCommFinalize)        \
  X(ncclCommDestroy)         \
  X(ncclCommAbort)           \
  X(ncclCommSplit)           \
  X(ncclCommGetAsyncError)   \
  X(ncclCommUserRank)        \
  X(ncclCommCount)           \
  X(ncclAllReduce)           \
  X(ncclBroadcast)           \
  X(ncclReduceScatter)       \
  X(ncclAllGather)           \
  X(ncclGroupStart)          \
  X(ncclGroupEnd)

struct NcclApi {
#define BB_NCCL_MEMBER(f) decltype(&::f) f = nullptr;
  BB_NCCL_FUNCTIONS(BB_NCCL_MEMBER)
#undef BB_NCCL_MEMBER
  int version = 0;   // ncclGetVersion(): major * 10000 + minor * 100 + patch
  std::string path;  // the file loaded
};

// The oldest NCCL with everything used here (ncclCommSplit; non-blocking communicators,
// ncclCommInitRankConfig and ncclCommFinalize are 2.14, ncclAvg and bf16 2.10).
constexpr int kMinNcclVersion = NCCL_VERSION(2, 18, 0);

std::string nccl_version_str(int v) { return fmt::format("{}.{}.{}", v / 10000, v / 100 % 100, v % 100); }

struct LoadedNccl {
  NcclApi api;
  std::string error;  // empty when the table is complete
};

template <typename F>
void take_symbol(void* lib, const char* symbol, F& fn, std::string* missing) {
  fn = reinterpret_cast<F>(dlsym(lib, symbol));
  if (!fn) *missing += (missing->empty() ? "" : ", ") + std::string(symbol);
}

// Candidates: $BARBELL_NCCL_LIBRARY alone when it is set; else "libnccl.so.2" (the loader's
// search), then the file in the directory where CMake found libnccl when this build was
// configured.
LoadedNccl* load_nccl() {
  auto* l = new LoadedNccl();
  const std::string so = fmt::format("libnccl.so.{}", NCCL_MAJOR);
#if defined(BARBELL_NCCL_LIBRARY_DIR)
  const std::string build_dir_so = std::string(BARBELL_NCCL_LIBRARY_DIR) + "/" + so;
#else
  const std::string build_dir_so;
#endif
  const std::string fix = fmt::format(
      "install NCCL {} (NVIDIA's libnccl2 package or the nvidia-nccl wheel) and put its directory on "
      "LD_LIBRARY_PATH, or set BARBELL_NCCL_LIBRARY to the full path of {}",
      NCCL_MAJOR, so);
  barbell::detail::OpenedLibrary lib = barbell::detail::open_first(
      barbell::detail::library_candidates("BARBELL_NCCL_LIBRARY", {so, build_dir_so}), RTLD_NOW | RTLD_LOCAL);
  if (!lib.handle) {
    l->error = fmt::format("nccl: {} could not be loaded (tried {}); {}", so, lib.tried, fix);
    return l;
  }
  l->api.path = barbell::detail::library_path(lib.handle);
  if (l->api.path.empty()) l->api.path = lib.name;
  std::string missing;
  decltype(&::ncclGetVersion) get_version = nullptr;
  take_symbol(lib.handle, "ncclGetVersion", get_version, &missing);
#define BB_TAKE_NCCL(f) take_symbol(lib.handle, #f, l->api.f, &missing);
  BB_NCCL_FUNCTIONS(BB_TAKE_NCCL)
#undef BB_TAKE_NCCL
  if (!missing.empty()) {
    l->error = fmt::format("nccl: {} lacks {}; {}", l->api.path, missing, fix);
    return l;
  }
  if (get_version(&l->api.version) != ncclSuccess || l->api.version < kMinNcclVersion)
    l->error = fmt::format("nccl: {} is NCCL {}, barbell needs {} or newer; {}", l->api.path,
                           nccl_version_str(l->api.version), nccl_version_str(kMinNcclVersion), fix);
  return l;
}

// The table, loaded on the first call (once, thread-safe; never unloaded). Throws NcclError
// naming the library, the paths tried and the fix, then and on every later call.
const NcclApi& nccl() {
  static const LoadedNccl* l = load_nccl();
  if (!l->error.empty()) throw NcclError(l->error);
  return l->api;
}

using Clock = std::chrono::steady_clock;

Clock::time_point deadline_after(double s) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

#define BB_NCCL_CHECK(call)                                                                          \
  do {                                                                                               \
    ncclResult_t bb_nccl_rc_ = (call);                                                               \
    if (bb_nccl_rc_ != ncclSuccess && bb_nccl_rc_ != ncclInProgress)                                 \
      throw ::barbell::NcclError(fmt::format("{} failed: {} ({}) ({}:{})", #call,                    \
                                             nccl().ncclGetErrorString(bb_nccl_rc_),                 \
                                             nccl().ncclGetLastError(nullptr), __FILE__, __LINE__)); \
  } while (0)

// A communicator and what its works share. abort_comm() may come from another thread
// (run_threads, abort_job), so the handle is guarded.
struct CommState {
  ncclComm_t comm = nullptr;
  int device = 0, rank = 0, size = 1;
  std::atomic<bool> broken{false};
  std::mutex mu;
  std::string why;

  void abort_comm(const std::string& reason) {
    std::lock_guard<std::mutex> l(mu);
    if (!comm) return;
    why = reason;  // before `broken`, which readers check first
    broken = true;
    nccl().ncclCommAbort(comm);
    comm = nullptr;
  }
  // Why the communicator was aborted (a copy: `why` is written under the mutex).
  std::string reason() {
    std::lock_guard<std::mutex> l(mu);
    return why;
  }
  // ncclSuccess, or the error / in-progress state. A communicator that is gone without
  // being broken was finalized and destroyed cleanly: nothing of it is pending.
  ncclResult_t async_state() {
    std::lock_guard<std::mutex> l(mu);
    if (!comm) return broken ? ncclInvalidUsage : ncclSuccess;
    ncclResult_t st = ncclSuccess;
    ncclResult_t rc = nccl().ncclCommGetAsyncError(comm, &st);
    return rc != ncclSuccess ? rc : st;
  }
  // Polls until the communicator is no longer busy (non-blocking mode), failing on an
  // error or the deadline: the communicator is then aborted.
  void settle(const std::string& what, double timeout_s) {
    auto deadline = deadline_after(timeout_s);
    for (;;) {
      ncclResult_t st = async_state();
      if (st == ncclSuccess) return;
      if (st != ncclInProgress)
        fail(what, fmt::format("NCCL error: {} ({})", nccl().ncclGetErrorString(st),
                               nccl().ncclGetLastError(nullptr)));
      if (Clock::now() > deadline) fail(what, timeout_message(what, timeout_s, rank, size));
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
  [[noreturn]] void fail(const std::string& what, const std::string& msg) {
    abort_comm(msg);
    throw NcclError(fmt::format("{}: {} (communicator aborted)", what, msg));
  }
};

// Every live communicator of this process, for abort_job. Leaked on purpose: a group
// held in a user's global may be destroyed after this file's statics are.
struct Registry {
  std::mutex mu;
  std::set<std::shared_ptr<CommState>> comms;
};
Registry& registry() {
  static Registry& r = *new Registry;
  return r;
}

void register_comm(const std::shared_ptr<CommState>& s) {
  std::lock_guard<std::mutex> l(registry().mu);
  registry().comms.insert(s);
}
void unregister_comm(const std::shared_ptr<CommState>& s) {
  std::lock_guard<std::mutex> l(registry().mu);
  registry().comms.erase(s);
}

// Makes `device` current and restores the caller's device when it goes out of scope.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : prev_(cuda::current_device()) { cuda::set_device(device); }
  ~DeviceGuard() {
    try {
      cuda::set_device(prev_);
    } catch (...) {}
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_;
};

ncclDataType_t nccl_type(DType d) {
  switch (d) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    case DType::Bool: return ncclUint8;
  }
  throw DTypeError("nccl: unknown dtype");
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Avg: return ncclAvg;
    case ReduceOp::Max: return ncclMax;
  }
  return ncclSum;
}

class NcclWork : public Work {
 public:
  NcclWork(std::shared_ptr<CommState> s, std::string what, double timeout_s)
      : s_(std::move(s)), what_(std::move(what)), timeout_s_(timeout_s) {
    cuda::set_device(s_->device);
    end_ = std::make_unique<cuda::Event>(false);
  }
  ~NcclWork() override {
    // Whatever frees the kept tensors next is ordered after the collective.
    if (!done_ && recorded_) {
      try {
        end_->wait(cuda::current_stream(s_->device));
      } catch (...) {}
    }
  }
  std::vector<Tensor> keep;

  void record_end(const cuda::Stream& comm_stream) {
    end_->record(comm_stream);
    recorded_ = true;
  }
  bool recorded() const { return recorded_; }

  bool is_completed() override {
    if (done_) return true;
    // Checked first: once aborted, the async state only says "invalid usage", and the end
    // event may have fired because the aborted kernels stopped early.
    if (s_->broken) throw NcclError(fmt::format("{}: the communicator was aborted: {}", what_, s_->reason()));
    ncclResult_t st = s_->async_state();
    if (st != ncclSuccess && st != ncclInProgress)
      s_->fail(what_, fmt::format("NCCL error: {} ({})", nccl().ncclGetErrorString(st),
                                  nccl().ncclGetLastError(nullptr)));
    if (end_->query()) {
      done_ = true;
      keep.clear();
    }
    return done_;
  }

  // Orders the caller's current stream after the collective, then blocks the host until
  // it has finished (so errors and timeouts surface here).
  void wait() override {
    cuda::set_device(s_->device);
    end_->wait(cuda::current_stream(s_->device));
    auto deadline = deadline_after(timeout_s_);
    while (!is_completed()) {
      if (s_->broken) throw NcclError(fmt::format("{}: the communicator was aborted: {}", what_, s_->reason()));
      if (Clock::now() > deadline) s_->fail(what_, timeout_message(what_, timeout_s_, s_->rank, s_->size));
      std::this_thread::sleep_for(std::chrono::microseconds(10));
    }
  }

 private:
  std::shared_ptr<CommState> s_;
  std::string what_;
  double timeout_s_;
  std::unique_ptr<cuda::Event> end_;
  bool done_ = false, recorded_ = false;
};

class ProcessGroupNCCL : public ProcessGroup {
 public:
  ProcessGroupNCCL(std::shared_ptr<CommState> s, double timeout_s, std::shared_ptr<void> keepalive = nullptr)
      : ProcessGroup(s->rank, s->size), s_(std::move(s)), keepalive_(std::move(keepalive)) {
    set_timeout(timeout_s);
    cuda::set_device(s_->device);
    // High priority (clamped by CUDA to the device's range), so communication is not
    // starved by the compute kernels it overlaps with.
    comm_stream_ = cuda::Stream::create(s_->device, -1);
    register_comm(s_);
  }
  ~ProcessGroupNCCL() override {
    unregister_comm(s_);
    try {
      // NCCL's finalize / destroy / abort expect the communicator's device to be current.
      std::unique_ptr<DeviceGuard> dg;
      try {
        dg = std::make_unique<DeviceGuard>(s_->device);
      } catch (...) {}
      {
        std::lock_guard<std::mutex> l(s_->mu);
        if (!s_->comm) return;
        // Finalize flushes pending work; a broken or stuck peer would make it wait forever,
        // so a communicator that failed is aborted instead (in abort_comm()).
        nccl().ncclCommFinalize(s_->comm);
      }
      // The wait polls with the mutex taken per query only, so an abort from another
      // thread (abort_job, a work's timeout) is not held up for the whole wait.
      ncclResult_t st = ncclInProgress;
      auto deadline = deadline_after(timeout_s_);
      for (;;) {
        {
          std::lock_guard<std::mutex> l(s_->mu);
          if (!s_->comm) return;  // aborted meanwhile
          if (nccl().ncclCommGetAsyncError(s_->comm, &st) != ncclSuccess) st = ncclInternalError;
        }
        if (st != ncclInProgress || Clock::now() >= deadline) break;
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
      if (st == ncclSuccess) {
        std::lock_guard<std::mutex> l(s_->mu);
        if (s_->comm) nccl().ncclCommDestroy(s_->comm);
        s_->comm = nullptr;
      } else {
        s_->abort_comm(st == ncclInProgress ? "finalize timed out when the process group was destroyed"
                                       : "finalize failed when the process group was destroyed");
      }
    } catch (...) {}  // a destructor does not throw
  }
  Backend backend() const override { return Backend::NCCL; }
  Device device() const override { return Device::cuda(s_->device); }
  bool broken() const override { return s_->broken; }
  CommState& state() { return *s_; }

  std::shared_ptr<ProcessGroup> split(int color) override {
    BB_CHECK(!broken(), NcclError, "split: the NCCL process group is broken: {}", s_->reason());
    cuda::set_device(s_->device);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t nc = nullptr;
    {
      std::lock_guard<std::mutex> l(s_->mu);
      BB_CHECK(s_->comm, NcclError, "split: the communicator was aborted: {}", s_->why);
      BB_NCCL_CHECK(
          nccl().ncclCommSplit(s_->comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, rank_, &nc, &config));
    }
    s_->settle("split", timeout_s_);
    BB_CHECK(nc != nullptr, ValueError, "split: color {} must be >= 0", color);
    auto ns = std::make_shared<CommState>();
    ns->comm = nc;
    ns->device = s_->device;
    ns->settle("split (new communicator)", timeout_s_);
    nccl().ncclCommUserRank(nc, &ns->rank);
    nccl().ncclCommCount(nc, &ns->size);
    return std::make_shared<ProcessGroupNCCL>(ns, timeout_s_);
  }

 protected:
  // Runs one collective on the comm stream, after the work queued so far on the caller's
  // stream, and records the work's end event:
  //   stage(keep)          makes staging tensors (on the comm stream) and adds them to
  //                        `keep`, which lives as long as the work; may be empty.
  //   issue(comm, stream)  makes the one NCCL call. It runs with the communicator's mutex
  //                        held, so an abort from another thread cannot free the handle
  //                        under it (short: the communicator is non-blocking). Everything
  //                        that can throw before the call (the dtype, ...) is computed by
  //                        the caller first. No ncclGroupStart/End: for one collective a
  //                        group adds nothing, and an exception inside one would leave
  //                        this thread's NCCL group depth raised.
  //   after()              queues work on the comm stream after the collective (a copy
  //                        out of a staging buffer); may be empty. It runs only once
  //                        settle() has seen the communicator leave ncclInProgress: with a
  //                        non-blocking communicator the call may return before the
  //                        collective is queued, and NCCL forbids queueing other work on
  //                        that stream until then.
  WorkPtr launch(const std::string& what, std::vector<Tensor> keep,
                 const std::function<void(std::vector<Tensor>&)>& stage,
                 const std::function<void(ncclComm_t, cudaStream_t)>& issue,
                 const std::function<void()>& after = nullptr) {
    cuda::set_device(s_->device);
    auto w = std::make_shared<NcclWork>(s_, fmt::format("{} ({} ranks)", what, size_), timeout_s_);
    w->keep = std::move(keep);
    cuda::Event ready(false);
    ready.record(cuda::current_stream(s_->device));
    ready.wait(comm_stream_);
    {
      // Staging copies go to the comm stream too.
      cuda::StreamGuard guard(comm_stream_);
      NoGradGuard ng;
      auto stream = static_cast<cudaStream_t>(comm_stream_.handle());
      try {
        if (stage) stage(w->keep);
        {
          std::lock_guard<std::mutex> l(s_->mu);
          BB_CHECK(s_->comm, NcclError, "{}: the communicator was aborted: {}", what, s_->why);
          issue(s_->comm, stream);
        }
        s_->settle(what, timeout_s_);
        if (after) after();
        w->record_end(comm_stream_);
      } catch (...) {
        // Record the end anyway, so the work's destructor makes the caller's stream wait
        // for whatever was queued on the comm stream (staging copies, an aborted
        // collective) before the staging tensors are freed there.
        if (!w->recorded()) {
          try {
            w->record_end(comm_stream_);
          } catch (...) {}
        }
        throw;
      }
    }
    return w;
  }

  WorkPtr do_all_reduce(const Tensor& t, ReduceOp op) override {
    const ncclDataType_t dt = nccl_type(t.dtype());
    return launch(
        fmt::format("all_reduce {} of {} {}", reduce_op_name(op), dtype_name(t.dtype()),
                    shape_str(t.shape())),
        {t}, nullptr, [&](ncclComm_t comm, cudaStream_t st) {
          BB_NCCL_CHECK(nccl().ncclAllReduce(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), dt,
                                             nccl_op(op), comm, st));
        });
  }

  WorkPtr do_broadcast(const Tensor& t, int root) override {
    return launch(
        fmt::format("broadcast from rank {} of {} {}", root, dtype_name(t.dtype()), shape_str(t.shape())),
        {t}, nullptr, [&](ncclComm_t comm, cudaStream_t st) {
          BB_NCCL_CHECK(
              nccl().ncclBroadcast(t.data_ptr(), t.data_ptr(), t.nbytes(), ncclUint8, root, comm, st));
        });
  }

  // NCCL needs n divisible by the group size: an uneven input is staged into a zero-padded
  // buffer of size * c elements (so the shard's tail beyond what this rank owns is zero).
  WorkPtr do_reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp op) override {
    const int64_t n = in.numel(), c = out.numel();
    const ncclDataType_t dt = nccl_type(in.dtype());
    Tensor src = in;
    return launch(
        fmt::format("reduce_scatter {} of {} {} into {}", reduce_op_name(op), dtype_name(in.dtype()),
                    shape_str(in.shape()), shape_str(out.shape())),
        {in, out},
        [&](std::vector<Tensor>& keep) {
          if (n == c * size_) return;
          src = zeros({c * size_}, {in.dtype(), device()});
          keep.push_back(src);  // freed after the work, in stream order
          if (n > 0) src.narrow(0, 0, n).copy_(in.view({n}));
        },
        [&](ncclComm_t comm, cudaStream_t st) {
          BB_NCCL_CHECK(nccl().ncclReduceScatter(src.data_ptr(), out.data_ptr(), static_cast<size_t>(c), dt,
                                                 nccl_op(op), comm, st));
        });
  }

  // An uneven output is gathered into a buffer of size * c elements, then its first n are
  // copied out (in `after`, once NCCL has queued the gather).
  WorkPtr do_all_gather(const Tensor& out, const Tensor& in) override {
    const int64_t n = out.numel(), c = in.numel();
    const ncclDataType_t dt = nccl_type(in.dtype());
    const bool padded = n != c * size_;
    Tensor dst = out;
    return launch(
        fmt::format("all_gather of {} {} into {}", dtype_name(in.dtype()), shape_str(in.shape()),
                    shape_str(out.shape())),
        {in, out},
        [&](std::vector<Tensor>& keep) {
          if (!padded) return;
          dst = empty({c * size_}, {in.dtype(), device()});
          keep.push_back(dst);
        },
        [&](ncclComm_t comm, cudaStream_t st) {
          BB_NCCL_CHECK(
              nccl().ncclAllGather(in.data_ptr(), dst.data_ptr(), static_cast<size_t>(c), dt, comm, st));
        },
        [&] {
          if (padded && n > 0) Tensor(out).view({n}).copy_(dst.narrow(0, 0, n));
        });
  }

  void do_barrier() override {
    cuda::set_device(s_->device);
    Tensor one = ones({1}, {DType::I32, device()});
    do_all_reduce(one, ReduceOp::Sum)->wait();
  }

 private:
  std::shared_ptr<CommState> s_;
  cuda::Stream comm_stream_;
  std::shared_ptr<void> keepalive_;  // e.g. MPI, which started this group
};

// Waits for a non-blocking init to finish, or aborts it.
std::shared_ptr<CommState> finish_init(ncclComm_t comm, int gpu, int rank, int size, double timeout_s) {
  auto s = std::make_shared<CommState>();
  s->comm = comm;
  s->device = gpu;
  s->rank = rank;
  s->size = size;
  s->settle(fmt::format("NCCL communicator init (rank {} of {} on cuda:{})", rank, size, gpu), timeout_s);
  return s;
}

}  // namespace

bool nccl_built() { return true; }

std::string nccl_library_description() {
  const NcclApi& a = nccl();
  return fmt::format("NCCL {} ({})", nccl_version_str(a.version), a.path);
}

size_t nccl_unique_id_size() { return sizeof(ncclUniqueId); }

std::string nccl_unique_id() {
  ncclUniqueId id;
  BB_NCCL_CHECK(nccl().ncclGetUniqueId(&id));
  return std::string(reinterpret_cast<const char*>(&id), sizeof(id));
}

ProcessGroupPtr make_nccl_group(const std::string& unique_id, int rank, int size, int gpu, double timeout_s,
                                std::shared_ptr<void> keepalive) {
  BB_CHECK(unique_id.size() == sizeof(ncclUniqueId), ValueError, "nccl: a unique id has {} bytes, got {}",
           sizeof(ncclUniqueId), unique_id.size());
  BB_CHECK(gpu >= 0 && gpu < cuda::device_count(), DeviceError,
           "nccl: rank {} asks for cuda:{} but {} GPU(s) are visible", rank, gpu, cuda::device_count());
  cuda::set_device(gpu);
  ncclUniqueId id;
  std::memcpy(&id, unique_id.data(), sizeof(id));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // init and collectives return at once; settle() polls with a deadline
  ncclComm_t comm = nullptr;
  BB_NCCL_CHECK(nccl().ncclCommInitRankConfig(&comm, size, id, rank, &config));
  return std::make_shared<ProcessGroupNCCL>(finish_init(comm, gpu, rank, size, timeout_s), timeout_s,
                                            std::move(keepalive));
}

// One thread per GPU: one unique id, every rank initialized from this thread inside one
// NCCL group (NCCL needs that to init several ranks from one thread), on non-blocking
// communicators so the init is polled against the timeout like make_nccl_group's. On any
// failure every communicator made so far is aborted.
std::vector<ProcessGroupPtr> make_nccl_groups(const std::vector<int>& gpus, double timeout_s) {
  const int n = static_cast<int>(gpus.size());
  std::set<int> seen;
  for (int g : gpus) {
    BB_CHECK(g >= 0 && g < cuda::device_count(), DeviceError,
             "init_threads: cuda:{} requested but {} GPU(s) are visible", g, cuda::device_count());
    BB_CHECK(seen.insert(g).second, ValueError,
             "init_threads: cuda:{} is listed twice; each rank (thread) needs a GPU of its own", g);
  }
  ncclUniqueId id;
  BB_NCCL_CHECK(nccl().ncclGetUniqueId(&id));
  DeviceGuard restore(cuda::current_device());  // the loop below moves through the GPUs
  std::vector<ncclComm_t> comms(gpus.size(), nullptr);
  std::vector<std::shared_ptr<CommState>> states;
  std::vector<ProcessGroupPtr> out;
  try {
    BB_NCCL_CHECK(nccl().ncclGroupStart());
    ncclResult_t rc = ncclSuccess;
    {
      // Closes the group on every path (an exception below must not leave this thread's
      // NCCL group depth raised).
      struct GroupEnd {
        ncclResult_t* rc;
        ~GroupEnd() {
          ncclResult_t e = nccl().ncclGroupEnd();
          if (*rc == ncclSuccess || *rc == ncclInProgress) *rc = e;
        }
      } end{&rc};
      for (int i = 0; i < n; ++i) {
        cuda::set_device(gpus[static_cast<size_t>(i)]);
        ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
        config.blocking = 0;
        rc = nccl().ncclCommInitRankConfig(&comms[static_cast<size_t>(i)], n, id, i, &config);
        if (rc != ncclSuccess && rc != ncclInProgress) break;
      }
    }
    // The first failure, or ncclGroupEnd's result (ncclInProgress: still initializing).
    if (rc != ncclSuccess && rc != ncclInProgress)
      throw NcclError(fmt::format("init_threads: NCCL communicator init over {} GPU(s) failed: {} ({})", n,
                                  nccl().ncclGetErrorString(rc), nccl().ncclGetLastError(nullptr)));
    for (int i = 0; i < n; ++i) {
      auto s = std::make_shared<CommState>();
      s->comm = comms[static_cast<size_t>(i)];
      s->device = gpus[static_cast<size_t>(i)];
      s->rank = i;
      s->size = n;
      states.push_back(s);
      comms[static_cast<size_t>(i)] = nullptr;  // owned by the state now
    }
    for (auto& s : states)
      s->settle(fmt::format("NCCL communicator init (rank {} of {} on cuda:{}, init_threads)", s->rank, n,
                            s->device),
                timeout_s);
    for (auto& s : states) out.push_back(std::make_shared<ProcessGroupNCCL>(s, timeout_s));
  } catch (...) {
    // Aborted before the groups go, so no group waits in finalize for a peer that failed.
    for (ncclComm_t c : comms)
      if (c) nccl().ncclCommAbort(c);
    for (auto& s : states) s->abort_comm("init_threads failed");
    out.clear();
    throw;
  }
  return out;
}

int nccl_abort_all() {
  std::vector<std::shared_ptr<CommState>> all;
  {
    std::lock_guard<std::mutex> l(registry().mu);
    all.assign(registry().comms.begin(), registry().comms.end());
  }
  for (auto& s : all) s->abort_comm("aborted by abort_job");
  return static_cast<int>(all.size());
}

void nccl_abort(ProcessGroup& pg) {
  if (auto* p = dynamic_cast<ProcessGroupNCCL*>(&pg))
    p->state().abort_comm("aborted because another thread failed");
}

void set_group_device(ProcessGroup& pg) {
  if (pg.backend() == Backend::NCCL) cuda::set_device(pg.device().index());
}

}  // namespace barbell::dist::detail

#else  // no NCCL in this build

namespace barbell::dist::detail {

namespace {
[[noreturn]] void no_nccl(const char* what) {
  throw NcclError(fmt::format(
      "{}: this build of barbell has no NCCL backend (configure with -DBARBELL_CUDA=ON -DBARBELL_NCCL=ON)",
      what));
}
}  // namespace

bool nccl_built() { return false; }
std::string nccl_library_description() { no_nccl("nccl library"); }
size_t nccl_unique_id_size() { return 128; }
std::string nccl_unique_id() { no_nccl("nccl unique id"); }
ProcessGroupPtr make_nccl_group(const std::string&, int, int, int, double, std::shared_ptr<void>) {
  no_nccl("NCCL process group");
}
std::vector<ProcessGroupPtr> make_nccl_groups(const std::vector<int>&, double) { no_nccl("init_threads"); }
int nccl_abort_all() { return 0; }
void nccl_abort(ProcessGroup&) {}
void set_group_device(ProcessGroup&) {}

}  // namespace barbell::dist::detail

#endif

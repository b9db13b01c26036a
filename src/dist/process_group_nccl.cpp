// The NCCL process group for CUDA tensors: collectives on the group's own stream, ordered
// with events against the caller's compute stream, on non-blocking communicators so that
// init and wait() can poll ncclCommGetAsyncError against a deadline and abort the
// communicator (ncclCommAbort) instead of hanging.
#include "dist/backends.hpp"

#if defined(BARBELL_WITH_NCCL)

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

#include <nccl.h>

#include "barbell/autograd/autograd.hpp"
#include "barbell/cuda/cuda.hpp"

namespace barbell::dist::detail {
namespace {

using Clock = std::chrono::steady_clock;

Clock::time_point deadline_after(double s) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

#define BB_NCCL_CHECK(call)                                                                              \
  do {                                                                                                   \
    ncclResult_t bb_nccl_rc_ = (call);                                                                   \
    if (bb_nccl_rc_ != ncclSuccess && bb_nccl_rc_ != ncclInProgress)                                     \
      throw ::barbell::NcclError(fmt::format("{} failed: {} ({}) ({}:{})", #call,                        \
                                             ncclGetErrorString(bb_nccl_rc_), ncclGetLastError(nullptr), \
                                             __FILE__, __LINE__));                                       \
  } while (0)

// A communicator and what its works share. abort() may come from another thread
// (run_threads, abort_job), so the handle is guarded.
struct CommState {
  ncclComm_t comm = nullptr;
  int device = 0, rank = 0, size = 1;
  std::atomic<bool> broken{false};
  std::mutex mu;
  std::string why;

  void abort(const std::string& reason) {
    std::lock_guard<std::mutex> l(mu);
    if (!comm) return;
    broken = true;
    why = reason;
    ncclCommAbort(comm);
    comm = nullptr;
  }
  // ncclSuccess, or the error / in-progress state.
  ncclResult_t async_state() {
    std::lock_guard<std::mutex> l(mu);
    if (!comm) return ncclInvalidUsage;
    ncclResult_t st = ncclSuccess;
    ncclResult_t rc = ncclCommGetAsyncError(comm, &st);
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
        fail(what, fmt::format("NCCL error: {} ({})", ncclGetErrorString(st), ncclGetLastError(nullptr)));
      if (Clock::now() > deadline) fail(what, timeout_message(what, timeout_s, rank, size));
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
  [[noreturn]] void fail(const std::string& what, const std::string& msg) {
    abort(msg);
    throw NcclError(fmt::format("{}: {} (communicator aborted)", what, msg));
  }
};

// Every live communicator of this process, for abort_job.
std::mutex g_registry_mu;
std::set<std::shared_ptr<CommState>> g_registry;

void register_comm(const std::shared_ptr<CommState>& s) {
  std::lock_guard<std::mutex> l(g_registry_mu);
  g_registry.insert(s);
}
void unregister_comm(const std::shared_ptr<CommState>& s) {
  std::lock_guard<std::mutex> l(g_registry_mu);
  g_registry.erase(s);
}

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

  bool is_completed() override {
    if (done_) return true;
    ncclResult_t st = s_->async_state();
    if (st != ncclSuccess && st != ncclInProgress)
      s_->fail(what_, fmt::format("NCCL error: {} ({})", ncclGetErrorString(st), ncclGetLastError(nullptr)));
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
      if (s_->broken) throw NcclError(fmt::format("{}: the communicator was aborted: {}", what_, s_->why));
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
    comm_stream_ = cuda::Stream::create(s_->device);
    register_comm(s_);
  }
  ~ProcessGroupNCCL() override {
    unregister_comm(s_);
    std::lock_guard<std::mutex> l(s_->mu);
    if (s_->comm) {
      // Finalize flushes pending work; a broken or stuck peer would make it wait forever,
      // so a communicator that failed is aborted instead (in abort()).
      ncclCommFinalize(s_->comm);
      ncclResult_t st = ncclInProgress;
      auto deadline = deadline_after(timeout_s_);
      while (st == ncclInProgress && Clock::now() < deadline) {
        ncclCommGetAsyncError(s_->comm, &st);
        if (st == ncclInProgress) std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
      if (st == ncclSuccess)
        ncclCommDestroy(s_->comm);
      else
        ncclCommAbort(s_->comm);
      s_->comm = nullptr;
    }
  }
  Backend backend() const override { return Backend::NCCL; }
  Device device() const override { return Device::cuda(s_->device); }
  bool broken() const override { return s_->broken; }
  CommState& state() { return *s_; }

  std::shared_ptr<ProcessGroup> split(int color) override {
    BB_CHECK(!broken(), NcclError, "split: the NCCL process group is broken: {}", s_->why);
    cuda::set_device(s_->device);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t nc = nullptr;
    {
      std::lock_guard<std::mutex> l(s_->mu);
      BB_NCCL_CHECK(ncclCommSplit(s_->comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, rank_, &nc, &config));
    }
    s_->settle("split", timeout_s_);
    BB_CHECK(nc != nullptr, ValueError, "split: color {} must be >= 0", color);
    auto ns = std::make_shared<CommState>();
    ns->comm = nc;
    ns->device = s_->device;
    ns->settle("split (new communicator)", timeout_s_);
    ncclCommUserRank(nc, &ns->rank);
    ncclCommCount(nc, &ns->size);
    return std::make_shared<ProcessGroupNCCL>(ns, timeout_s_);
  }

 protected:
  // Runs `enqueue` on the comm stream after the work queued so far on the caller's stream,
  // inside one NCCL group, and records the work's end event.
  // `enqueue` adds any staging tensor it makes to `keep`, which lives as long as the work.
  WorkPtr launch(const std::string& what, std::vector<Tensor> keep,
                 const std::function<void(cudaStream_t, std::vector<Tensor>&)>& enqueue) {
    cuda::set_device(s_->device);
    auto w = std::make_shared<NcclWork>(s_, fmt::format("{} ({} ranks)", what, size_), timeout_s_);
    w->keep = std::move(keep);
    cuda::Event ready(false);
    ready.record(cuda::current_stream(s_->device));
    ready.wait(comm_stream_);
    {
      // Staging copies made inside `enqueue` go to the comm stream too.
      cuda::StreamGuard guard(comm_stream_);
      NoGradGuard ng;
      auto stream = static_cast<cudaStream_t>(comm_stream_.handle());
      {
        std::lock_guard<std::mutex> l(s_->mu);
        BB_CHECK(s_->comm, NcclError, "{}: the communicator was aborted: {}", what, s_->why);
      }
      enqueue(stream, w->keep);
      s_->settle(what, timeout_s_);
      w->record_end(comm_stream_);
    }
    return w;
  }
  ncclComm_t comm() {
    std::lock_guard<std::mutex> l(s_->mu);
    BB_CHECK(s_->comm, NcclError, "nccl: the communicator was aborted: {}", s_->why);
    return s_->comm;
  }

  WorkPtr do_all_reduce(const Tensor& t, ReduceOp op) override {
    return launch(fmt::format("all_reduce {} of {} {}", reduce_op_name(op), dtype_name(t.dtype()),
                              shape_str(t.shape())),
                  {t}, [&](cudaStream_t st, std::vector<Tensor>&) {
                    BB_NCCL_CHECK(ncclGroupStart());
                    BB_NCCL_CHECK(ncclAllReduce(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()),
                                                nccl_type(t.dtype()), nccl_op(op), comm(), st));
                    BB_NCCL_CHECK(ncclGroupEnd());
                  });
  }

  WorkPtr do_broadcast(const Tensor& t, int root) override {
    return launch(
        fmt::format("broadcast from rank {} of {} {}", root, dtype_name(t.dtype()), shape_str(t.shape())),
        {t}, [&](cudaStream_t st, std::vector<Tensor>&) {
          BB_NCCL_CHECK(ncclGroupStart());
          BB_NCCL_CHECK(ncclBroadcast(t.data_ptr(), t.data_ptr(), t.nbytes(), ncclUint8, root, comm(), st));
          BB_NCCL_CHECK(ncclGroupEnd());
        });
  }

  // NCCL needs n divisible by the group size: an uneven input is staged into a zero-padded
  // buffer of size * c elements (so the shard's tail beyond what this rank owns is zero).
  WorkPtr do_reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp op) override {
    const int64_t n = in.numel(), c = out.numel();
    return launch(fmt::format("reduce_scatter {} of {} {} into {}", reduce_op_name(op),
                              dtype_name(in.dtype()), shape_str(in.shape()), shape_str(out.shape())),
                  {in, out}, [&, n, c](cudaStream_t st, std::vector<Tensor>& keep) {
                    Tensor src = in;
                    if (n != c * size_) {
                      src = zeros({c * size_}, {in.dtype(), device()});
                      if (n > 0) src.narrow(0, 0, n).copy_(in.view({n}));
                    }
                    BB_NCCL_CHECK(ncclGroupStart());
                    BB_NCCL_CHECK(ncclReduceScatter(src.data_ptr(), out.data_ptr(), static_cast<size_t>(c),
                                                    nccl_type(in.dtype()), nccl_op(op), comm(), st));
                    BB_NCCL_CHECK(ncclGroupEnd());
                    keep.push_back(src);  // freed after the work, in stream order
                  });
  }

  WorkPtr do_all_gather(const Tensor& out, const Tensor& in) override {
    const int64_t n = out.numel(), c = in.numel();
    return launch(fmt::format("all_gather of {} {} into {}", dtype_name(in.dtype()), shape_str(in.shape()),
                              shape_str(out.shape())),
                  {in, out}, [&, n, c](cudaStream_t st, std::vector<Tensor>& keep) {
                    Tensor dst = n == c * size_ ? out : empty({c * size_}, {in.dtype(), device()});
                    keep.push_back(dst);
                    BB_NCCL_CHECK(ncclGroupStart());
                    BB_NCCL_CHECK(ncclAllGather(in.data_ptr(), dst.data_ptr(), static_cast<size_t>(c),
                                                nccl_type(in.dtype()), comm(), st));
                    BB_NCCL_CHECK(ncclGroupEnd());
                    if (!dst.same(out) && n > 0) Tensor(out).view({n}).copy_(dst.narrow(0, 0, n));
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

size_t nccl_unique_id_size() { return sizeof(ncclUniqueId); }

std::string nccl_unique_id() {
  ncclUniqueId id;
  BB_NCCL_CHECK(ncclGetUniqueId(&id));
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
  BB_NCCL_CHECK(ncclCommInitRankConfig(&comm, size, id, rank, &config));
  return std::make_shared<ProcessGroupNCCL>(finish_init(comm, gpu, rank, size, timeout_s), timeout_s,
                                            std::move(keepalive));
}

std::vector<ProcessGroupPtr> make_nccl_groups(const std::vector<int>& gpus, double timeout_s) {
  const int n = static_cast<int>(gpus.size());
  for (int g : gpus)
    BB_CHECK(g >= 0 && g < cuda::device_count(), DeviceError,
             "init_threads: cuda:{} requested but {} GPU(s) are visible", g, cuda::device_count());
  std::vector<ncclComm_t> comms(gpus.size(), nullptr);
  // ncclCommInitAll is blocking and initializes every communicator from this one thread.
  BB_NCCL_CHECK(ncclCommInitAll(comms.data(), n, gpus.data()));
  std::vector<ProcessGroupPtr> out;
  for (int i = 0; i < n; ++i)
    out.push_back(std::make_shared<ProcessGroupNCCL>(
        finish_init(comms[static_cast<size_t>(i)], gpus[static_cast<size_t>(i)], i, n, timeout_s),
        timeout_s));
  return out;
}

int nccl_abort_all() {
  std::vector<std::shared_ptr<CommState>> all;
  {
    std::lock_guard<std::mutex> l(g_registry_mu);
    all.assign(g_registry.begin(), g_registry.end());
  }
  for (auto& s : all) s->abort("aborted by abort_job");
  return static_cast<int>(all.size());
}

void nccl_abort(ProcessGroup& pg) {
  if (auto* p = dynamic_cast<ProcessGroupNCCL*>(&pg))
    p->state().abort("aborted because another thread failed");
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

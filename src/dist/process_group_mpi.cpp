// The MPI process group for CPU tensors: non-blocking MPI collectives (MPI_Iallreduce,
// MPI_Ibcast, MPI_Ireduce_scatter, MPI_Iallgatherv, MPI_Ibarrier) whose wait() polls
// MPI_Test against a deadline, so a dead or stuck peer becomes an Error, not a hang.
// Compiled into the module libbarbell_mpi.so, not into libbarbell: its one exported
// function hands src/dist/mpi_backend.cpp the MpiBackend table (dist/backends.hpp).
#include "dist/backends.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

// Only the C API: the deprecated C++ bindings would need libmpi_cxx's ABI.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include "barbell/autograd/autograd.hpp"
#include "barbell/config.hpp"

namespace barbell::dist::detail {
namespace {

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return fmt::format("MPI error {}", code);
  return std::string(buf, static_cast<size_t>(len));
}

#define BB_MPI_CHECK(call)                                                                                \
  do {                                                                                                    \
    int bb_mpi_rc_ = (call);                                                                              \
    if (bb_mpi_rc_ != MPI_SUCCESS)                                                                        \
      throw ::barbell::Error(                                                                             \
          fmt::format("{} failed: {} ({}:{})", #call, mpi_error_string(bb_mpi_rc_), __FILE__, __LINE__)); \
  } while (0)

// MPI's life in this process: initialized by the first group unless the program did it,
// finalized when the last group goes (unless a collective failed: MPI_Finalize would then
// wait for the peers that the failure is about).
struct MpiRuntime {
  bool we_initialized = false;
  int thread_level = MPI_THREAD_SINGLE;
  std::mutex mu;  // serializes MPI calls below MPI_THREAD_MULTIPLE
  std::atomic<bool> failed{false};
  ~MpiRuntime() {
    if (!we_initialized || failed.load()) return;
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
  }
};

std::mutex g_runtime_mu;
std::weak_ptr<MpiRuntime> g_runtime;
std::atomic<bool> g_any_failed{false};

std::shared_ptr<MpiRuntime> runtime() {
  std::lock_guard<std::mutex> lock(g_runtime_mu);
  if (auto rt = g_runtime.lock()) return rt;
  auto rt = std::make_shared<MpiRuntime>();
  int inited = 0, fin = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&fin);
  BB_CHECK(!fin, Error,
           "init_mpi: MPI was already finalized (barbell finalizes it when the last MPI process group is "
           "destroyed: keep one alive for the whole program)");
  if (!inited) {
    // Open MPI's non-blocking all-reduce (libnbc) picks binomial / recursive doubling by
    // default, ~10x slower than its blocking all-reduce for MB-sized buckets on shared
    // memory; the ring is bandwidth-optimal (and what docs/distributed.md models). Only a
    // default: a value the user set wins.
    setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", 0);
    int provided = MPI_THREAD_SINGLE;
    BB_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided));
    rt->we_initialized = true;
  }
  MPI_Query_thread(&rt->thread_level);
  g_runtime = rt;
  return rt;
}

// Element types for arithmetic, and same-size unsigned types for byte-exact transfers.
MPI_Datatype arith_type(DType d) {
  switch (d) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    default: break;
  }
  throw DTypeError(fmt::format("mpi: no MPI arithmetic type for {}", dtype_name(d)));
}

MPI_Datatype raw_type(DType d) {
  switch (dtype_size(d)) {
    case 1: return MPI_UINT8_T;
    case 2: return MPI_UINT16_T;
    case 4: return MPI_UINT32_T;
    case 8: return MPI_UINT64_T;
    default: break;
  }
  throw DTypeError(fmt::format("mpi: no MPI type for {}", dtype_name(d)));
}

int to_count(const char* op, int64_t n) {
  BB_CHECK(n <= INT_MAX, ValueError,
           "{}: {} elements exceed MPI's int count ({}); split the tensor into smaller collectives", op, n,
           INT_MAX);
  return static_cast<int>(n);
}

bool is_16bit_float(DType d) { return d == DType::BF16 || d == DType::F16; }

// What a group's works share: the runtime, the broken flag and the timeout.
struct GroupState {
  std::shared_ptr<MpiRuntime> rt;
  std::atomic<bool> broken{false};
  int rank = 0, size = 1;
  std::unique_lock<std::mutex> lock() {
    return rt->thread_level >= MPI_THREAD_MULTIPLE ? std::unique_lock<std::mutex>()
                                                   : std::unique_lock<std::mutex>(rt->mu);
  }
  void mark_broken() {
    broken = true;
    rt->failed = true;
    g_any_failed = true;
  }
};

class MpiWork : public Work {
 public:
  MpiWork(std::shared_ptr<GroupState> g, std::string what, double timeout_s)
      : g_(std::move(g)), what_(std::move(what)), timeout_s_(timeout_s) {}
  ~MpiWork() override {
    // MPI may still write into the buffers this work keeps alive: finish it first (a
    // destructor cannot throw, so errors are dropped; the group is broken by then).
    if (!done_ && !g_->broken) {
      try {
        wait();
      } catch (...) {}
    }
  }

  MPI_Request req = MPI_REQUEST_NULL;
  std::vector<Tensor> keep;           // tensors MPI reads or writes until completion
  std::vector<int> counts, displs;    // arrays a non-blocking v-collective reads until completion
  std::function<void()> on_complete;  // scaling / copying back, run once

  bool is_completed() override {
    if (done_) return true;
    int flag = 0;
    {
      auto l = g_->lock();
      int rc = MPI_Test(&req, &flag, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) {
        g_->mark_broken();
        throw Error(fmt::format("{}: MPI_Test failed on rank {} of {}: {}", what_, g_->rank, g_->size,
                                mpi_error_string(rc)));
      }
    }
    if (flag) complete();
    return done_;
  }

  void wait() override {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const auto deadline =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s_));
    // Every MPI_Test also moves the collective along (MPI progresses non-blocking
    // collectives only inside MPI calls), so poll continuously, yielding the core to ranks
    // that share it; only a wait that already lasted a second (a straggler, a dead peer)
    // sleeps between polls.
    const auto patient = start + std::chrono::seconds(1);
    for (int spins = 0; !is_completed(); ++spins) {
      if ((spins & 63) != 63) {
        std::this_thread::yield();
        continue;
      }
      const auto now = Clock::now();
      if (now > deadline) {
        g_->mark_broken();
        throw Error(timeout_message(what_, timeout_s_, g_->rank, g_->size));
      }
      if (now > patient) std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  void complete() {
    done_ = true;
    if (on_complete) {
      NoGradGuard ng;
      on_complete();
      on_complete = nullptr;
    }
    keep.clear();
  }

 private:
  std::shared_ptr<GroupState> g_;
  std::string what_;
  double timeout_s_;
  bool done_ = false;
};

class ProcessGroupMPI : public ProcessGroup {
 public:
  ProcessGroupMPI(MPI_Comm comm, std::shared_ptr<MpiRuntime> rt, int rank, int size)
      : ProcessGroup(rank, size), comm_(comm), g_(std::make_shared<GroupState>()) {
    g_->rt = std::move(rt);
    g_->rank = rank;
    g_->size = size;
  }
  ~ProcessGroupMPI() override {
    // A communicator with a collective still pending (after a timeout) cannot be freed.
    if (!g_->broken && !g_any_failed) {
      auto l = g_->lock();
      MPI_Comm_free(&comm_);
    }
  }
  Backend backend() const override { return Backend::MPI; }
  Device device() const override { return Device::cpu(); }
  bool broken() const override { return g_->broken; }

  std::shared_ptr<ProcessGroup> split(int color) override {
    BB_CHECK(!broken(), Error, "split: the MPI process group is broken by an earlier failure");
    MPI_Comm nc = MPI_COMM_NULL;
    int r = 0, s = 1;
    {
      auto l = g_->lock();
      BB_MPI_CHECK(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, rank_, &nc));
      BB_CHECK(nc != MPI_COMM_NULL, ValueError, "split: color {} must be >= 0", color);
      MPI_Comm_set_errhandler(nc, MPI_ERRORS_RETURN);
      MPI_Comm_rank(nc, &r);
      MPI_Comm_size(nc, &s);
    }
    auto pg = std::make_shared<ProcessGroupMPI>(nc, g_->rt, r, s);
    pg->set_timeout(timeout_s_);
    return pg;
  }

 protected:
  std::shared_ptr<MpiWork> new_work(const std::string& what) {
    return std::make_shared<MpiWork>(g_, fmt::format("{} ({} ranks)", what, size_), timeout_s_);
  }
  // Starts `start(req)` under the MPI lock; an error there breaks nothing (nothing is in flight).
  template <typename F>
  void start(MpiWork& w, const char* call, F&& f) {
    auto l = g_->lock();
    int rc = f(&w.req);
    if (rc != MPI_SUCCESS)
      throw Error(fmt::format("{} failed on rank {} of {}: {}", call, rank_, size_, mpi_error_string(rc)));
  }

  WorkPtr do_all_reduce(const Tensor& t, ReduceOp op) override {
    auto w = new_work(fmt::format("all_reduce {} of {} {}", reduce_op_name(op), dtype_name(t.dtype()),
                                  shape_str(t.shape())));
    const int n = to_count("all_reduce", t.numel());
    // 16-bit floats are reduced in an f32 copy: MPI has no bf16 / f16 arithmetic.
    Tensor buf = is_16bit_float(t.dtype()) ? t.to(DType::F32) : t;
    w->keep = {t, buf};
    const double scale = op == ReduceOp::Avg ? 1.0 / size_ : 1.0;
    if (scale != 1.0 || !buf.same(t)) {
      w->on_complete = [t = Tensor(t), buf, scale]() mutable {
        if (scale != 1.0) buf.mul_(scale);
        if (!buf.same(t)) t.copy_(buf);
      };
    }
    MPI_Op mop = op == ReduceOp::Max ? MPI_MAX : MPI_SUM;
    MPI_Datatype type = arith_type(buf.dtype());
    void* data = buf.data_ptr();
    start(*w, "MPI_Iallreduce",
          [&](MPI_Request* r) { return MPI_Iallreduce(MPI_IN_PLACE, data, n, type, mop, comm_, r); });
    return w;
  }

  WorkPtr do_broadcast(const Tensor& t, int root) override {
    auto w = new_work(
        fmt::format("broadcast from rank {} of {} {}", root, dtype_name(t.dtype()), shape_str(t.shape())));
    const int n = to_count("broadcast", t.numel());
    w->keep = {t};
    MPI_Datatype type = raw_type(t.dtype());
    void* data = t.data_ptr();
    start(*w, "MPI_Ibcast", [&](MPI_Request* r) { return MPI_Ibcast(data, n, type, root, comm_, r); });
    return w;
  }

  // counts[r] = elements rank r owns of n (see chunk_range); displs[r] = r * chunk.
  void partition(MpiWork& w, int64_t n) {
    w.counts.resize(static_cast<size_t>(size_));
    w.displs.resize(static_cast<size_t>(size_));
    for (int r = 0; r < size_; ++r) {
      auto [b, e] = chunk_range(n, size_, r);
      w.counts[static_cast<size_t>(r)] = static_cast<int>(e - b);
      w.displs[static_cast<size_t>(r)] = static_cast<int>(b);
    }
  }

  WorkPtr do_reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp op) override {
    auto w = new_work(fmt::format("reduce_scatter {} of {} {} into {}", reduce_op_name(op),
                                  dtype_name(in.dtype()), shape_str(in.shape()), shape_str(out.shape())));
    to_count("reduce_scatter", in.numel());
    partition(*w, in.numel());
    const bool stage = is_16bit_float(in.dtype());
    Tensor sin = stage ? in.to(DType::F32) : in;
    Tensor sout = stage ? empty(out.shape(), {DType::F32}) : out;
    // MPI writes only what this rank owns; the rest of the shard is defined to be zero.
    const int own = w->counts[static_cast<size_t>(rank_)];
    if (own < out.numel()) {
      NoGradGuard ng;
      Tensor(sout).view({sout.numel()}).narrow(0, own, sout.numel() - own).zero_();
    }
    w->keep = {in, out, sin, sout};
    const double scale = op == ReduceOp::Avg ? 1.0 / size_ : 1.0;
    if (scale != 1.0 || stage) {
      w->on_complete = [out = Tensor(out), sout, scale, stage]() mutable {
        if (scale != 1.0) sout.mul_(scale);
        if (stage) out.copy_(sout);
      };
    }
    MPI_Op mop = op == ReduceOp::Max ? MPI_MAX : MPI_SUM;
    MPI_Datatype type = arith_type(sin.dtype());
    void* src = sin.data_ptr();
    void* dst = sout.data_ptr();
    const int* counts = w->counts.data();
    start(*w, "MPI_Ireduce_scatter",
          [&](MPI_Request* r) { return MPI_Ireduce_scatter(src, dst, counts, type, mop, comm_, r); });
    return w;
  }

  WorkPtr do_all_gather(const Tensor& out, const Tensor& in) override {
    auto w = new_work(fmt::format("all_gather of {} {} into {}", dtype_name(in.dtype()),
                                  shape_str(in.shape()), shape_str(out.shape())));
    to_count("all_gather", out.numel());
    partition(*w, out.numel());
    w->keep = {in, out};
    MPI_Datatype type = raw_type(in.dtype());
    void* src = in.data_ptr();
    void* dst = out.data_ptr();
    const int own = w->counts[static_cast<size_t>(rank_)];
    const int* counts = w->counts.data();
    const int* displs = w->displs.data();
    start(*w, "MPI_Iallgatherv", [&](MPI_Request* r) {
      return MPI_Iallgatherv(src, own, type, dst, counts, displs, type, comm_, r);
    });
    return w;
  }

  void do_barrier() override {
    auto w = new_work("barrier");
    start(*w, "MPI_Ibarrier", [&](MPI_Request* r) { return MPI_Ibarrier(comm_, r); });
    w->wait();
  }

 private:
  MPI_Comm comm_;
  std::shared_ptr<GroupState> g_;
};

// ---- the functions of the MpiBackend table ----------------------------------------------------

std::shared_ptr<void> keepalive() { return runtime(); }

MpiWorld world() {
  auto rt = runtime();
  MpiWorld w;
  auto l = rt->thread_level >= MPI_THREAD_MULTIPLE ? std::unique_lock<std::mutex>()
                                                   : std::unique_lock<std::mutex>(rt->mu);
  MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &w.size);
  MPI_Comm node = MPI_COMM_NULL;
  BB_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w.rank, MPI_INFO_NULL, &node));
  MPI_Comm_rank(node, &w.local_rank);
  MPI_Comm_size(node, &w.local_size);
  MPI_Comm_free(&node);
  return w;
}

ProcessGroupPtr make_group(double timeout_s) {
  auto rt = runtime();
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0, size = 1;
  {
    auto l = rt->thread_level >= MPI_THREAD_MULTIPLE ? std::unique_lock<std::mutex>()
                                                     : std::unique_lock<std::mutex>(rt->mu);
    BB_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
  }
  auto pg = std::make_shared<ProcessGroupMPI>(comm, rt, rank, size);
  pg->set_timeout(timeout_s);
  return pg;
}

void broadcast_bytes(void* data, size_t n, int root, double timeout_s) {
  auto pg = make_group(timeout_s);
  Tensor t = from_blob(data, {static_cast<int64_t>(n)}, DType::Bool);  // one byte per element
  pg->broadcast(t, root)->wait();
}

bool active() {
  int inited = 0, fin = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&fin);
  return inited && !fin;
}

void abort_world(int code) {
  if (active()) MPI_Abort(MPI_COMM_WORLD, code);
}

// The first line of MPI_Get_library_version (callable before MPI_Init).
const char* mpi_library() {
  static const std::string line = [] {
    char buf[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
    int len = 0;
    if (MPI_Get_library_version(buf, &len) != MPI_SUCCESS) return std::string("MPI (version unknown)");
    std::string s(buf, static_cast<size_t>(std::max(len, 0)));
    const size_t nl = s.find_first_of("\r\n");
    if (nl != std::string::npos) s.resize(nl);
    while (!s.empty() && (s.back() == ',' || s.back() == ' ' || s.back() == '\0')) s.pop_back();
    return s;
  }();
  return line.c_str();
}

}  // namespace
}  // namespace barbell::dist::detail

// The module's only exported symbol (the rest has hidden visibility).
extern "C" __attribute__((visibility("default"))) const barbell::dist::detail::MpiBackend*
barbell_mpi_backend_v1() {
  namespace d = barbell::dist::detail;
  static const d::MpiBackend table = {d::kMpiBackendAbi,   BARBELL_VERSION, d::mpi_library(),
                                      &d::keepalive,       &d::world,       &d::make_group,
                                      &d::broadcast_bytes, &d::active,      &d::abort_world};
  return &table;
}

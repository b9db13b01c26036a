// ProcessGroup: the collectives data parallelism is built on (all_reduce, broadcast,
// reduce_scatter, all_gather, barrier), asynchronous, with MPI and NCCL backends.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "barbell/core/tensor.hpp"

namespace barbell::dist {

enum class ReduceOp { Sum, Avg, Max };
// Local: a one-rank group (every collective is a no-op); MPI: CPU tensors; NCCL: CUDA tensors.
enum class Backend { Local, MPI, NCCL };
const char* reduce_op_name(ReduceOp op);
const char* backend_name(Backend b);

// The handle of one collective in flight. wait() returns once the result is in the
// output tensor (NCCL: the calling thread's current stream is also ordered after it) and
// throws barbell::Error (NcclError on NCCL) if the collective failed or did not finish
// within the group's timeout. A timed-out collective cannot be cancelled: the group is
// then broken and every later call on it throws; the program should end (dist::abort_job).
// Work keeps its tensors alive until it completes. Dropping a Work without wait() is
// allowed; the collective still runs, but nothing tells you when it has finished.
class Work {
 public:
  virtual ~Work() = default;
  Work() = default;
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;
  virtual void wait() = 0;
  // Non-blocking: true once finished (drives MPI's progress engine as a side effect).
  virtual bool is_completed() = 0;
};
using WorkPtr = std::shared_ptr<Work>;

// A fixed set of ranks 0..size()-1 that run collectives together. Every rank must call
// the same collectives in the same order with matching shapes and dtypes (as with MPI and
// NCCL). All collectives are asynchronous and in place on the given tensors, which must
// be contiguous and live on device(): CPU tensors for MPI, cuda:i tensors for NCCL.
//
// Dtypes: reductions take f32, f64, bf16, f16, i32, i64 (Avg floating only); broadcast
// and all_gather take any dtype. MPI has no 16-bit float arithmetic: bf16/f16 reductions
// are done in an f32 staging copy and rounded once at the end (so a bf16 sum over ranks is
// the correctly rounded f32 sum, as NCCL's bf16 sum is accumulated on the wire in bf16
// and may differ in the last bit).
//
// Uneven sizes: reduce_scatter and all_gather partition a flat tensor of n elements into
// size() chunks of c = chunk_numel(n, size()) = ceil(n / size()) elements; rank r owns
// elements chunk_range(n, size(), r) = [r*c, min((r+1)*c, n)), so the last rank(s) may own
// fewer (or none). Each rank's shard tensor always has c elements; the elements past what
// it owns are zero after reduce_scatter and ignored by all_gather. With n divisible by
// size() nothing is padded and no copy is made.
class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  virtual Backend backend() const = 0;
  // Where this group's tensors live: cpu for MPI, cuda:i for NCCL.
  virtual Device device() const = 0;
  // How long wait() waits before it declares the collective (and the group) failed.
  double timeout_s() const { return timeout_s_; }
  void set_timeout(double seconds);
  // True once a collective failed or timed out; every call then throws.
  virtual bool broken() const = 0;

  // tensor <- op over ranks of tensor (in place).
  WorkPtr all_reduce(const Tensor& tensor, ReduceOp op = ReduceOp::Sum);
  // tensor <- root's tensor.
  WorkPtr broadcast(const Tensor& tensor, int root = 0);
  // output (c elements) <- op over ranks of this rank's chunk of input (n elements), with
  // c = chunk_numel(n, size()); see above for uneven n. Shapes are otherwise free.
  WorkPtr reduce_scatter(const Tensor& output, const Tensor& input, ReduceOp op = ReduceOp::Sum);
  // output (n elements) <- every rank's input (c = chunk_numel(n, size()) elements each),
  // concatenated in rank order and cut to n.
  WorkPtr all_gather(const Tensor& output, const Tensor& input);
  // Returns when every rank has entered it (or throws on the timeout).
  void barrier();
  // A new group of the ranks that pass the same color, ranked by their rank here (a
  // collective call on this group). Lets a test build a one-rank reference inside a job.
  virtual std::shared_ptr<ProcessGroup> split(int color) = 0;

  static int64_t chunk_numel(int64_t n, int world) { return world > 0 ? (n + world - 1) / world : 0; }
  // [begin, end) of the n elements that rank r owns.
  static std::pair<int64_t, int64_t> chunk_range(int64_t n, int world, int r);

 protected:
  ProcessGroup(int rank, int size);
  virtual WorkPtr do_all_reduce(const Tensor& t, ReduceOp op) = 0;
  virtual WorkPtr do_broadcast(const Tensor& t, int root) = 0;
  virtual WorkPtr do_reduce_scatter(const Tensor& output, const Tensor& input, ReduceOp op) = 0;
  virtual WorkPtr do_all_gather(const Tensor& output, const Tensor& input) = 0;
  virtual void do_barrier() = 0;
  // Throws DeviceError unless t is on device() (named in the message with `op`).
  void check_tensor(const char* op, const char* what, const Tensor& t) const;

  int rank_, size_;
  double timeout_s_;
};
using ProcessGroupPtr = std::shared_ptr<ProcessGroup>;

// The default collective timeout: $BARBELL_DIST_TIMEOUT seconds if set, else 300.
double default_timeout_s();

}  // namespace barbell::dist

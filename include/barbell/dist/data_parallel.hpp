// DataParallel: keeps a model's replicas in step across ranks by averaging gradients in
// buckets that are all-reduced during backward, as soon as each bucket's gradients exist.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "barbell/dist/process_group.hpp"
#include "barbell/nn/module.hpp"

namespace barbell::dist {

struct DataParallelOptions {
  // Bucket capacities in MiB. Buckets take parameters in reverse registration order (the
  // order backward produces their gradients); the first one is small so communication
  // starts early, the rest are large so each all-reduce is efficient.
  double first_bucket_mb = 1.0;
  double bucket_mb = 25.0;
  // Broadcast buffers (not only parameters) from rank 0 at construction.
  bool broadcast_buffers = true;
};

// Where communication time went, summed over steps since construction or reset_stats().
struct DataParallelStats {
  int64_t steps = 0;                        // finish() calls
  int64_t buckets = 0;                      // bucket all-reduces
  int64_t buckets_started_in_backward = 0;  // of those, started from a gradient hook
  double bytes = 0;                         // bytes all-reduced
  double comm_s = 0;         // time with at least one all-reduce in flight (start to observed end)
  double finish_wait_s = 0;  // time finish() blocked on all-reduces: communication not hidden
  double pack_s = 0;         // time copying gradients into buckets and back (+ starting collectives)
};

// Wraps a module for data-parallel training; the module is used as before:
//
//   dist::DataParallel ddp(model, pg);        // broadcasts rank 0's parameters
//   auto loss = model.loss(x, y);             // this rank's slice of the batch
//   loss.backward();                          // buckets all-reduce while backward runs
//   ddp.finish();                             // .grad = average over ranks
//   opt.step();
//
// Gradient accumulation: run all but the last micro-step's backward under no_sync();
// gradients then accumulate locally in .grad and are averaged once, in the last
// backward and finish(). finish() reduces every bucket that backward did not start
// (parameters that received no gradient count as zeros, on every rank), so it must be
// called exactly once per optimizer step, on every rank. Buckets start strictly in bucket
// order, so every rank issues the same collectives in the same order even when gradients
// arrive in a different order. After finish() every trainable parameter has a .grad (zeros
// where no rank produced a gradient).
//
// The bucket layout (parameter order, shapes, dtypes, bucket sizes) is compared across
// ranks at construction (a hash, all-gathered) and a mismatch throws ValueError on every
// rank. The module must outlive this object; the hooks it installs turn into no-ops when
// the DataParallel is destroyed.
class DataParallel {
 public:
  DataParallel(nn::Module& module, ProcessGroupPtr pg, DataParallelOptions opts = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Waits for all buckets and writes the averaged gradients into .grad.
  void finish();

  // While a NoSync lives, backward starts no communication (gradient accumulation).
  class NoSync {
   public:
    ~NoSync();
    NoSync(NoSync&& o) noexcept;
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;
    NoSync& operator=(NoSync&&) = delete;

   private:
    friend class DataParallel;
    explicit NoSync(DataParallel* dp);
    DataParallel* dp_;
    bool prev_;
  };
  NoSync no_sync();
  bool sync_enabled() const;

  struct Bucket {
    std::vector<std::string> params;  // names, in the bucket's (reverse) order
    int64_t numel = 0;
    DType dtype = DType::F32;
    size_t bytes() const { return static_cast<size_t>(numel) * dtype_size(dtype); }
  };
  const std::vector<Bucket>& buckets() const;
  uint64_t layout_hash() const;

  const DataParallelStats& stats() const;
  void reset_stats();
  nn::Module& module() { return module_; }
  ProcessGroup& process_group() { return *pg_; }

  struct State;  // shared with the gradient hooks

 private:
  nn::Module& module_;
  ProcessGroupPtr pg_;
  std::shared_ptr<State> st_;
};

// A collective: throws ValueError on every rank, naming `what` and each rank's value, unless
// every rank passed the same value (the layout check above; also usable for a program's
// own invariants, e.g. a hash of its configuration).
void check_same_across_ranks(ProcessGroup& pg, uint64_t value, const std::string& what);
// Broadcasts each tensor from `root` (a collective; tensors must be on pg.device()).
void broadcast_tensors(ProcessGroup& pg, const std::vector<Tensor>& tensors, int root = 0);

}  // namespace barbell::dist

// ZeroAdamW: AdamW with ZeRO stage 1, its optimizer state (moments, fp32 master weights
// of 16-bit parameters) sharded over the ranks of a process group by a flat partition.
#pragma once

#include <cstddef>
#include <vector>

#include "barbell/dist/process_group.hpp"
#include "barbell/optim/optim.hpp"

namespace barbell::dist {

struct ZeroAdamWOptions : optim::AdamWOptions {
  // The AdamW options' ranges apply. max_grad_norm >= 0;
  // > 0: clip the global gradient norm (computed from the shards, one extra all_reduce of
  // one number) to this before the update; last_grad_norm() gives the norm before clipping.
  double max_grad_norm = 0;
  // Broadcast rank 0's parameters at construction (after checking that every rank has the
  // same parameter names, shapes and dtypes).
  bool broadcast_parameters = true;
};

// Use it instead of DataParallel + AdamW (not with DataParallel: it averages gradients
// itself). The parameters of each dtype are laid end to end in one flat vector of n
// elements, split like ProcessGroup::reduce_scatter splits it: rank r owns
// chunk_range(n, world, r) and keeps AdamW state only for that chunk. step(), a
// collective, then
//   1. copies the local gradients into the flat vector (zeros where .grad is undefined)
//      and reduce-scatters them (average over ranks): each rank gets its chunk's gradient;
//   2. updates its chunk with AdamW (into the fp32 master for 16-bit parameters, rounding
//      the parameter from it, as adamw_multi_step_ does);
//   3. all-gathers the updated chunks and copies them back into every parameter.
// Traffic per step: a reduce-scatter plus an all-gather, the same bytes as one all-reduce.
// Every parameter counts as having a gradient each step (zeros where no rank produced
// one), so weight decay and the moments advance for all of them.
//
// Checkpoints: state_dict() gathers the full per-parameter state under the names AdamW
// uses ("step", "<name>.step", "<name>.exp_avg", "<name>.exp_avg_sq", plus "<name>.master"
// for 16-bit parameters); it is a collective and every rank gets the whole state, so rank
// 0 can write it. load_state_dict() takes that format (or a plain AdamW state) on every
// rank, each keeping its own chunk, so a checkpoint moves between world sizes and between
// AdamW and ZeroAdamW. shard_state_dict() / load_shard_state_dict() save and load only this
// rank's chunk (no communication, for files per rank), and need the same world size.
class ZeroAdamW : public optim::Optimizer {
 public:
  ZeroAdamW(NamedTensors params, ProcessGroupPtr pg, ZeroAdamWOptions opts = {});
  void step() override;
  double last_grad_norm() const { return last_grad_norm_; }

  // Optimizer state held by this rank (moments and masters of its chunk), in bytes; what
  // an unsharded AdamW with the same masters keeps on every rank; the flat gradient /
  // parameter buffer step() uses (one per dtype, n elements, not state).
  size_t state_bytes() const;
  size_t unsharded_state_bytes() const;
  size_t workspace_bytes() const;

  NamedTensors state_dict() const override;
  void load_state_dict(const NamedTensors& state) override;
  NamedTensors shard_state_dict() const;
  void load_shard_state_dict(const NamedTensors& state);

  ZeroAdamWOptions options;

 private:
  void check_options() const;  // ValueError on an option out of range

  struct Segment {        // one parameter's piece of this rank's chunk
    size_t param;         // index into params_
    int64_t param_begin;  // first element within the parameter (flattened)
    int64_t shard_begin;  // first element within the chunk
    int64_t len;
  };
  struct Group {  // the parameters of one dtype
    DType dtype;
    std::vector<size_t> params;
    std::vector<int64_t> offsets;  // of each parameter in the flat vector
    int64_t numel = 0, chunk = 0, own_begin = 0, own_end = 0;
    std::vector<Segment> segments;
    Tensor flat;                 // [numel]: gradients, then gathered parameters
    Tensor param_shard;          // [chunk], dtype
    Tensor grad_shard;           // [chunk], dtype
    Tensor exp_avg, exp_avg_sq;  // [chunk], f32 (f64 for f64)
    Tensor master;               // [chunk], f32, 16-bit dtypes only
  };
  ProcessGroupPtr pg_;
  std::vector<Group> groups_;
  double last_grad_norm_ = 0;
  DType state_dtype(DType d) const { return d == DType::F64 ? DType::F64 : DType::F32; }
  void init_master(Group& g);
};

}  // namespace barbell::dist

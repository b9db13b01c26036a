// DistributedTokenLoader: each rank reads only its own slice of a set of llm.c token
// shards and samples [B, T] windows from it exactly as io::DataLoader would.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "barbell/io/data.hpp"

namespace barbell::dist {

// Tokens [begin, end) of the concatenation of the token shards `paths` (.bin, llm.c
// format), reading only the headers and the bytes of that range. IOError on a bad header,
// a short file, or a range beyond the shards' total.
std::vector<int32_t> read_token_range(const std::vector<std::string>& paths, int64_t begin, int64_t end);
// The total token count of the shards, from their headers.
int64_t count_tokens(const std::vector<std::string>& paths);

// The distributed sampler. Rank r of `world` owns the slice
// [r * n / world, (r + 1) * n / world) of the n tokens of all shards together, reads only
// that slice from disk, and draws batches that are bit for bit those of
//   io::DataLoader(all n tokens, batch, seq_len, seed, rank, world)
// (so windows never cross into another rank's tokens, every rank gets a different stream,
// and a run is a pure function of the seed). state() / set_state() resume it exactly.
class DistributedTokenLoader {
 public:
  DistributedTokenLoader(const std::vector<std::string>& paths, int64_t batch, int64_t seq_len, uint64_t seed,
                         int rank, int world);
  std::pair<Tensor, Tensor> next() { return loader_->next(); }
  uint64_t state() const { return loader_->state(); }
  void set_state(uint64_t s) { loader_->set_state(s); }
  int64_t num_tokens() const { return total_; }  // all ranks together
  int64_t slice_begin() const { return begin_; }
  int64_t slice_end() const { return end_; }
  int rank() const { return rank_; }
  int world() const { return world_; }

 private:
  int64_t total_ = 0, begin_ = 0, end_ = 0;
  int rank_ = 0, world_ = 1;
  std::unique_ptr<io::DataLoader> loader_;
};

}  // namespace barbell::dist

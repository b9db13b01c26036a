// Training data: llm.c token shards (.bin), whole-file byte tokens, and DataLoader, the
// seeded, resumable sampler of [B, T] windows that gives each rank its own slice.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "barbell/core/tensor.hpp"

namespace barbell::io {

// llm.c token shard: 256 int32 header (header[0] = kShardMagic, header[1] = kShardVersion,
// header[2] = token count), then `count` uint16 tokens, all little-endian.
inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderInts = 256;

// IOError naming the path on a missing file, a short header, a wrong magic or version
// (expected vs found), or a body that is shorter or longer than the header's count.
std::vector<uint16_t> read_token_shard(const std::string& path);
// Written atomically (temp file, fsync, rename). ValueError if the count overflows int32.
void write_token_shard(const std::string& path, const std::vector<uint16_t>& tokens);

// A dataset's tokens: a path ending in ".bin" is a token shard; any other file is text,
// one token per byte (ByteTokenizer). An empty dataset throws IOError.
std::vector<int32_t> load_tokens(const std::string& path);

// Draws (x, y) batches, both I64 [batch, seq_len] on the CPU, y = x shifted by one token,
// from random windows of `tokens`. Rank r of `world` owns the contiguous slice
// [r * n / world, (r + 1) * n / world) of the n tokens and draws only windows that lie
// wholly inside it, so ranks never see each other's tokens. Window starts are a pure
// function of (seed, rank, batches drawn): a run is reproducible, and state() /
// set_state() resume it exactly.
class DataLoader {
 public:
  // ValueError on a null token vector, batch or seq_len < 1, a rank outside
  // [0, world), or a slice shorter than seq_len + 1 tokens.
  DataLoader(std::shared_ptr<const std::vector<int32_t>> tokens, int64_t batch, int64_t seq_len,
             uint64_t seed, int rank = 0, int world = 1);

  std::pair<Tensor, Tensor> next();

  // The number of batches drawn so far; set_state(state()) makes the next batches
  // repeat exactly, also in a fresh DataLoader built with the same arguments.
  uint64_t state() const { return batches_; }
  void set_state(uint64_t s) { batches_ = s; }

  int64_t num_tokens() const;  // all tokens, every rank's slice together
  int64_t slice_begin() const { return begin_; }
  int64_t slice_end() const { return end_; }  // this rank's tokens are [slice_begin, slice_end)
  int64_t batch() const { return batch_; }
  int64_t seq_len() const { return seq_len_; }

 private:
  std::shared_ptr<const std::vector<int32_t>> tokens_;
  int64_t batch_, seq_len_;
  uint64_t seed_;
  int64_t begin_ = 0, end_ = 0;
  uint64_t batches_ = 0;
};

}  // namespace barbell::io

// Seeded, counter-based random numbers (Philox4x32-10), so a stream of numbers is a
// pure function of (seed, offset): reproducible, resumable, and the same on a GPU.
#pragma once

#include <cstdint>

#include "barbell/core/tensor.hpp"

namespace barbell {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0x5eed) : seed_(seed) {}
  void manual_seed(uint64_t seed) { seed_ = seed; offset_ = 0; }
  uint64_t seed() const { return seed_; }
  // Counter position; saving (seed, offset) and restoring them resumes the stream.
  uint64_t offset() const { return offset_; }
  void set_offset(uint64_t offset) { offset_ = offset; }
  // Reserve `n` blocks of 4 random 32-bit words; returns the first block's counter.
  uint64_t reserve(uint64_t n) { uint64_t o = offset_; offset_ += n; return o; }
  // 4 random words for block `counter` of this seed.
  static void philox(uint64_t seed, uint64_t counter, uint32_t out[4]);
  uint32_t next_u32();
  double next_double();  // uniform in [0, 1)

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

// The process-wide generator that factories and dropout use by default.
Generator& default_generator();
void manual_seed(uint64_t seed);

Tensor rand(const Shape& shape, TensorOptions opts = {}, Generator* gen = nullptr);   // U[0, 1)
Tensor randn(const Shape& shape, TensorOptions opts = {}, Generator* gen = nullptr);  // N(0, 1)
Tensor randint(int64_t low, int64_t high, const Shape& shape, TensorOptions opts = {DType::I64},
               Generator* gen = nullptr);

}  // namespace barbell

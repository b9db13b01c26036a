// Dropout masks from the Philox stream the CPU uses (Generator::philox in
// src/core/random.cpp): element 4b + j of the mask takes word j of
// philox(seed, offset + b), is 0 when that word is below p * 2^32 and 1 / (1 - p)
// otherwise. Threshold and scale are computed on the host exactly as
// cpu::dropout_mask does, so both backends give bit-identical masks.
#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "cuda/kernels.hpp"

namespace barbell::gpu {
namespace {

constexpr int kThreads = 256;

// Philox4x32-10, counter (lo, hi, 0, 0), key (seed lo, seed hi): the same rounds and
// constants as Generator::philox.
__device__ __forceinline__ void philox(uint64_t seed, uint64_t counter, uint32_t out[4]) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// One Philox block (4 mask values) per thread and step.
__global__ void __launch_bounds__(kThreads)
    dropout_kernel(float* __restrict__ mask, int64_t n, uint64_t seed, uint64_t offset, uint32_t threshold,
                   float keep_scale, bool vec) {
  const int64_t nblocks = (n + 3) / 4;
  for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < nblocks; b += int64_t(gridDim.x) * blockDim.x) {
    uint32_t w[4];
    philox(seed, offset + static_cast<uint64_t>(b), w);
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = w[j] < threshold ? 0.0f : keep_scale;
    const int64_t i = b * 4;
    if (vec && i + 4 <= n) {
      *reinterpret_cast<float4*>(mask + i) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (i + j < n) mask[i + j] = v[j];
    }
  }
}

}  // namespace

void dropout_mask(const Tensor& mask, double p, uint64_t seed, uint64_t offset) {
  const char* op = "dropout_mask";
  BB_CHECK(mask.dtype() == DType::F32, DTypeError, "{}: mask must be f32, got {}", op, dtype_name(mask.dtype()));
  BB_CHECK(mask.is_contiguous(), ShapeError, "{}: mask {} must be contiguous", op, shape_str(mask.shape()));
  BB_CHECK(p >= 0.0 && p < 1.0, ValueError, "{}: p must be in [0, 1), got {}", op, p);
  const int64_t n = mask.numel();
  if (n == 0) return;
  cudaStream_t st = stream_for(mask);
  // As cpu::dropout_mask computes them.
  const float keep_scale = float(1.0 / (1.0 - p));
  const auto threshold = static_cast<uint32_t>(std::min(p * 4294967296.0, 4294967295.0));
  float* pm = ptr<float>(mask);
  const bool vec = reinterpret_cast<uintptr_t>(pm) % 16 == 0;
  BB_LAUNCH(grid_for((n + 3) / 4, kThreads), kThreads, 0, st, dropout_kernel)
  (pm, n, seed, offset, threshold, keep_scale, vec);
  BB_CUDA_LAUNCH_CHECK();
}

}  // namespace barbell::gpu

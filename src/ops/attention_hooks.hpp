// Test seams of scaled_dot_product_attention: the Flash backend for CPU tensors, and the
// Math backend's composition of ops on the CPU (instead of its fused kernel).
// tests/sim sets it to run barbell's flash kernels (their own code, kernels/flash/*)
// under the warp emulator, so the op layer's fused path (layouts, autograd, the GPT)
// is exercised end to end in CI without a GPU. Unset (the default), the Flash backend
// needs CUDA tensors.
#pragma once

#include "barbell/core/tensor.hpp"

namespace barbell::detail {

struct CpuFlashHooks {
  // Same arguments and meaning as gpu::flash_attention_forward / _backward.
  void (*forward)(const Tensor& o, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                  double scale) = nullptr;
  void (*backward)(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                   const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse, bool causal, double scale,
                   bool deterministic) = nullptr;
};
// Installs (or, with a default-constructed value, removes) the hooks; not thread-safe
// against running attention.
void set_cpu_flash_hooks(const CpuFlashHooks& hooks);

// Tests only: the Math backend on CPU tensors runs the composition of ops (matmul,
// softmax) instead of the fused CPU kernel, so the two can be compared. Process-wide.
void set_cpu_math_composite(bool on);

}  // namespace barbell::detail

// Which kernels a flash-attention forward or backward runs, in order, for one dtype
// and head dim. Shared by the CUDA launchers (kernels/flash_attention.cu), which give
// `launch` a function that starts the kernel on the GPU, and the CPU tests
// (tests/sim), which run it under the warp emulator: both go through the same steps.
//
// launch(kernel, shape) receives a pointer to a kernel taking the params by value
// and the kernel's LaunchShape.
#pragma once

#include <type_traits>

#include "barbell/core/dtype.hpp"
#include "barbell/core/error.hpp"
#include "flash/backward.cuh"
#include "flash/forward.cuh"

namespace barbell::gpu::fa {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}, std::integral_constant<int, D>{}) for the kernels' dtypes (bf16,
// f16) and head dims (64, 128); anything else throws naming `op`.
template <typename F>
void dispatch(DType dt, int64_t D, const char* op, F&& f) {
  auto by_dim = [&](auto tag) {
    if (D == 64) f(tag, std::integral_constant<int, 64>{});
    else if (D == 128) f(tag, std::integral_constant<int, 128>{});
    else throw ValueError(fmt::format("{}: head dim {} (the kernels take 64 or 128)", op, D));
  };
  if (dt == DType::BF16) by_dim(TypeTag<__nv_bfloat16>{});
  else if (dt == DType::F16) by_dim(TypeTag<__half>{});
  else throw DTypeError(fmt::format("{}: dtype {} (the kernels take bf16 or f16)", op, dtype_name(dt)));
}

// variant: the forward's tile configuration (FwdCfg<D, variant>, 0 or 1).
template <typename T, int D, typename Launch>
void run_forward(const FwdParams& p, Launch&& launch, int variant = 0) {
  if (variant == 1) {
    const LaunchShape s = fwd_shape<T, D, 1>(p);
    if (p.causal) launch(&fwd_kernel<T, D, true, 1>, s);
    else launch(&fwd_kernel<T, D, false, 1>, s);
    return;
  }
  const LaunchShape s = fwd_shape<T, D>(p);
  if (p.causal) launch(&fwd_kernel<T, D, true>, s);
  else launch(&fwd_kernel<T, D, false>, s);
}

// Deterministic: dQ by its own kernel (p.dq_accum unused, may be null). Otherwise dQ is
// accumulated with atomics into p.dq_accum ([B, H, Tq, D] fp32, zeroed by the
// preprocess kernel) and converted at the end.
template <typename T, int D, typename Launch>
void run_backward(const BwdParams& p, bool deterministic, Launch&& launch) {
  launch(&bwd_preprocess_kernel<T, D>, bwd_preprocess_shape<T, D>(p));
  const LaunchShape kv = bwd_dkdv_shape<T, D>(p);
  if (deterministic) {
    if (p.causal) launch(&bwd_dkdv_kernel<T, D, true, false>, kv);
    else launch(&bwd_dkdv_kernel<T, D, false, false>, kv);
    const LaunchShape qs = bwd_dq_shape<T, D>(p);
    if (p.causal) launch(&bwd_dq_kernel<T, D, true>, qs);
    else launch(&bwd_dq_kernel<T, D, false>, qs);
  } else {
    if (p.causal) launch(&bwd_dkdv_kernel<T, D, true, true>, kv);
    else launch(&bwd_dkdv_kernel<T, D, false, true>, kv);
    launch(&bwd_dq_convert_kernel<T, D>, bwd_dq_convert_shape<T, D>(p));
  }
}

}  // namespace barbell::gpu::fa

// The checking macro for CUDA runtime calls: a failure throws barbell::CudaError
// naming the call, the file and the line.
#pragma once

#include <cuda_runtime.h>

#include "barbell/core/error.hpp"

#define BB_CUDA_CHECK(call)                                                                          \
  do {                                                                                               \
    cudaError_t bb_err_ = (call);                                                                    \
    if (bb_err_ != cudaSuccess)                                                                      \
      throw ::barbell::CudaError(fmt::format("{} failed: {} ({}) at {}:{}", #call,                   \
                                             cudaGetErrorString(bb_err_), static_cast<int>(bb_err_), \
                                             __FILE__, __LINE__));                                   \
  } while (0)

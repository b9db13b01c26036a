// Checks shared by the ops: devices, dtypes and the backend switch.
#pragma once

#include <initializer_list>

#include "barbell/autograd/autograd.hpp"
#include "barbell/core/tensor.hpp"
#include "barbell/ops/ops.hpp"
#include "cuda/kernels.hpp"

namespace barbell::detail {

inline void check_defined(const char* op, std::initializer_list<const Tensor*> ts) {
  for (auto* t : ts) BB_CHECK(t->defined(), ValueError, "{}: an input tensor is undefined", op);
}

inline void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  BB_CHECK(a.device() == b.device(), DeviceError, "{}: tensors on different devices: {} ({}) and {} ({})", op,
           a.device().str(), shape_str(a.shape()), b.device().str(), shape_str(b.shape()));
}

inline void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  BB_CHECK(a.dtype() == b.dtype(), DTypeError, "{}: dtypes differ: {} {} and {} {}", op, dtype_name(a.dtype()),
           shape_str(a.shape()), dtype_name(b.dtype()), shape_str(b.shape()));
}

inline void check_floating(const char* op, const Tensor& a) {
  check_defined(op, {&a});
  BB_CHECK(is_floating(a.dtype()), DTypeError, "{}: expected a floating tensor, got {} {}", op, dtype_name(a.dtype()),
           shape_str(a.shape()));
}

inline void check_index(const char* op, const Tensor& a) {
  check_defined(op, {&a});
  BB_CHECK(a.dtype() == DType::I32 || a.dtype() == DType::I64, DTypeError,
           "{}: expected an index tensor (i32 or i64), got {} {}", op, dtype_name(a.dtype()), shape_str(a.shape()));
}

// The backend switch. Ops call cpu::f(...) when their tensors live on the CPU and
// BB_GPU(op, t, gpu::f(...)) otherwise; in a build without the CUDA backend the GPU
// call is not compiled and a CUDA tensor gets a clear error instead.
[[noreturn]] inline void no_cuda_build(const char* op, const Tensor& t) {
  throw DeviceError(fmt::format("{}: this build of barbell has no CUDA backend (input {} on {})", op,
                                shape_str(t.shape()), t.device().str()));
}
[[noreturn]] inline void no_cuda_kernel(const char* op, const Tensor& t) {
  throw DeviceError(fmt::format("{}: the CUDA backend does not implement this op (input {} on {})", op,
                                shape_str(t.shape()), t.device().str()));
}
inline void require_cpu(const char* op, const Tensor& t) {
  if (!t.is_cpu()) no_cuda_kernel(op, t);
}

}  // namespace barbell::detail

#if defined(BARBELL_WITH_CUDA)
#define BB_GPU(op, t, ...) __VA_ARGS__
#else
#define BB_GPU(op, t, ...) ::barbell::detail::no_cuda_build(op, t)
#endif

namespace barbell::detail {

}  // namespace barbell::detail

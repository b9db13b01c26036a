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

// ---- src/core/checks.cpp ------------------------------------------------------------

// empty() for `op`: sizes checked (no negatives, element count and bytes within range),
// and an allocation that cannot be made throws barbell::Error naming `op`, the shape
// and the bytes asked for.
Tensor empty_for(const char* op, const Shape& shape, TensorOptions opts);
// Throws ShapeError naming `op` when a size is negative or the element count or byte
// count of `shape` in `dtype` overflows.
void check_shape(const char* op, const Shape& shape, DType dtype);

// The conversion rule for values stored into a dtype (to(), copy_, full, fill_, item):
// into an integer dtype a floating value is truncated toward zero, and NaN, infinities
// and values outside the dtype's range throw ValueError; an integer outside the range
// throws too. Into a floating dtype a finite value beyond its largest finite value
// throws (as PyTorch's fill). Into bool anything goes (nonzero is true).
void check_scalar_for(const char* op, const Scalar& value, DType dtype);
// The same rule for every element of a floating `src` converted to the integer `dst`:
// one reduction on src's device, and a look at the host only to name a bad value.
void check_float_to_int(const char* op, const Tensor& src, DType dst);
// `t op s`'s dtype by PyTorch's rule (see ops.hpp): a floating tensor keeps its dtype;
// an integer or bool tensor with a floating scalar gives f32; an integer tensor with an
// integer or bool scalar keeps its dtype; a bool tensor with an integer scalar gives i64.
DType promote_scalar(const Tensor& t, const Scalar& s);

// Memory overlap. A write into `out` where several elements share one memory location
// (an expanded view, stride 0) would write one element several times: throws ValueError
// naming `op`.
void check_writable(const char* op, const Tensor& out);
// `in`, or a copy of it when it may share memory with `out` in another layout (a read
// after a write of the same location would see the new value): what an in-place op
// reads its inputs through.
Tensor unalias(const Tensor& out, const Tensor& in);
// Whether the bytes `a` and `b` span intersect (a cheap test, before the exact one).
bool may_overlap(const Tensor& a, const Tensor& b);

}  // namespace barbell::detail

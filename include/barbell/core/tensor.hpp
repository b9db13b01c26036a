// Tensor: a cheap shared handle to (storage, shape, strides, offset, dtype) plus the
// autograd fields. Views share storage; ops live in barbell/ops/ops.hpp.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <iosfwd>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#include "barbell/core/device.hpp"
#include "barbell/core/dtype.hpp"
#include "barbell/core/error.hpp"
#include "barbell/core/scalar.hpp"
#include "barbell/core/shape.hpp"

namespace barbell {

namespace autograd {
class Node;
class AccumulateGrad;
}  // namespace autograd

// A block of memory on one device. `deleter` frees it; a null deleter means the
// memory belongs to someone else (Tensor::from_blob). Its version counts the in-place
// writes into it (through any view), so autograd can tell when a tensor it saved for
// backward was changed after it was saved.
class Storage {
 public:
  Storage(void* data, size_t nbytes, Device device, std::function<void(void*)> deleter)
      : data_(data), nbytes_(nbytes), device_(device), deleter_(std::move(deleter)) {}
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  // Throws barbell::Error naming `op` and the bytes asked for when the memory cannot be had.
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device, const char* op = "allocate");

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  uint64_t version() const { return version_.load(std::memory_order_relaxed); }
  void bump_version() { version_.fetch_add(1, std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> version_{0};
  void* data_;
  size_t nbytes_;
  Device device_;
  std::function<void(void*)> deleter_;
};

class Tensor;
using GradHook = std::function<void(const Tensor& param)>;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;  // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::F32;
  // autograd
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<autograd::Node> grad_fn;
  std::weak_ptr<autograd::AccumulateGrad> grad_accumulator;
  std::vector<GradHook> grad_ready_hooks;
};

struct TensorOptions {
  DType dtype = DType::F32;
  Device device = Device::cpu();
  bool requires_grad = false;
};

class Tensor {
 public:
  Tensor() = default;  // undefined tensor
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& sizes() const { return impl().shape; }
  int64_t size(int64_t dim) const;
  const Shape& strides() const { return impl().strides; }
  int64_t stride(int64_t dim) const;
  int64_t offset() const { return impl().offset; }
  int64_t dim() const { return static_cast<int64_t>(impl().shape.size()); }
  int64_t numel() const { return shape_numel(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  size_t element_size() const { return dtype_size(dtype()); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * element_size(); }
  bool is_contiguous() const;
  bool is_cpu() const { return device().is_cpu(); }
  bool is_cuda() const { return device().is_cuda(); }
  TensorOptions options() const { return {dtype(), device(), false}; }

  // Raw data, checked against the dtype; throws on a mismatch. CPU only for
  // element access; data_ptr() works on any device.
  void* data_ptr() const;
  template <typename T>
  T* data() const {
    BB_CHECK(dtype_of<T>::value == dtype(), DTypeError, "Tensor::data: asked for {}, tensor is {}",
             dtype_name(dtype_of<T>::value), dtype_name(dtype()));
    return static_cast<T*>(data_ptr());
  }
  // The single value of a one-element tensor, converted. Integer types are exact over
  // their whole range: an integer tensor's value is read as int64; a floating value is
  // truncated toward zero, and NaN, infinities and values outside T's range throw
  // ValueError.
  template <typename T = double>
  T item() const {
    if constexpr (std::is_same_v<T, bool>) {
      return item_double() != 0.0;
    } else if constexpr (std::is_integral_v<T>) {
      const int64_t v = item_int64();
      bool fits;
      if constexpr (std::is_unsigned_v<T>)
        fits = v >= 0 && static_cast<uint64_t>(v) <= std::numeric_limits<T>::max();
      else
        fits = v >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
               v <= static_cast<int64_t>(std::numeric_limits<T>::max());
      if (!fits) item_out_of_range(v, sizeof(T), std::is_unsigned_v<T>);
      return static_cast<T>(v);
    } else {
      return static_cast<T>(item_double());
    }
  }
  double item_double() const;
  int64_t item_int64() const;
  // All elements in row-major order, converted to T (copies from the GPU).
  template <typename T>
  std::vector<T> to_vector() const;

  // Views: share storage, no copy.
  Tensor view(const Shape& shape) const;
  Tensor reshape(const Shape& shape) const;  // a view when possible, else a copy
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const { return transpose(0, 1); }
  Tensor permute(const Shape& dims) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;
  Tensor squeeze() const;
  Tensor expand(const Shape& shape) const;
  Tensor operator[](int64_t index) const { return select(0, index); }

  // Copies.
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;
  Tensor to(Device device, DType dtype) const;

  // In place (no autograd: throws on a tensor that requires grad while grad is on).
  // Each bumps the storage's version. A write into a view where several elements share
  // one memory location (an expanded view: stride 0) throws; a source that overlaps
  // the destination in another layout (`x.add_(x.t())`, `a.narrow(0, 1, n - 1)
  // .copy_(a.narrow(0, 0, n - 1))`) is read through a temporary copy, so the result is
  // as if the source had been read first. fill_ and zero_ write one value and accept
  // expanded views (as PyTorch). An integer tensor refuses a floating scalar in mul_
  // and a fractional alpha in add_ (the result would not be an integer).
  Tensor& copy_(const Tensor& src);
  Tensor& fill_(Scalar value);
  Tensor& zero_() { return fill_(0); }
  Tensor& add_(const Tensor& other, double alpha = 1.0);
  Tensor& mul_(Scalar value);
  // The version of this tensor's storage: the number of in-place writes into it so far.
  uint64_t version() const { return impl().storage->version(); }
  // For code that writes through data_ptr(): marks the storage as changed, so that a
  // tensor autograd saved from it is reported at backward() instead of being misread.
  void bump_version() const { impl().storage->bump_version(); }
  // Replace this tensor's data (storage, shape, dtype) with other's, keeping its
  // identity: what Module::to uses so optimizers keep valid references.
  void set_data(const Tensor& other);

  // Reductions and common ops as methods (see ops.hpp for the full list).
  Tensor sum() const;
  Tensor sum(const Shape& dims, bool keepdim = false) const;
  Tensor mean() const;
  Tensor mean(const Shape& dims, bool keepdim = false) const;
  Tensor exp() const;
  Tensor log() const;
  Tensor sqrt() const;
  Tensor pow(double exponent) const;
  Tensor matmul(const Tensor& other) const;

  // Autograd.
  bool requires_grad() const { return impl().requires_grad; }
  Tensor& requires_grad_(bool on = true);
  Tensor grad() const { return impl().grad ? Tensor(impl().grad) : Tensor(); }
  void set_grad(const Tensor& g);
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  const std::shared_ptr<autograd::Node>& grad_fn() const { return impl().grad_fn; }
  // Runs backward from this tensor; `grad` defaults to 1 for a one-element tensor.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;
  // A tensor sharing storage but cut from the graph.
  Tensor detach() const;
  // Called once per backward pass, after this leaf's .grad holds its full gradient.
  void register_grad_ready_hook(GradHook hook);

  std::string str() const;
  TensorImpl& impl() const;
  [[noreturn]] void item_out_of_range(int64_t v, size_t bytes, bool is_unsigned) const;
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// Factories.
Tensor empty(const Shape& shape, TensorOptions opts = {});
Tensor zeros(const Shape& shape, TensorOptions opts = {});
Tensor ones(const Shape& shape, TensorOptions opts = {});
// full infers its dtype from the value when no options are given (PyTorch's rule: a bool
// gives bool, an integer i64, a floating value f32); with options, opts.dtype (f32 unless
// set). A value is converted by the rule of to(): truncated toward zero for an integer
// dtype, NaN, infinities and values outside the dtype's range throw ValueError; integers
// are exact over the whole range of i64.
Tensor full(const Shape& shape, Scalar value);
Tensor full(const Shape& shape, Scalar value, TensorOptions opts);
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor empty_like(const Tensor& t);
Tensor scalar_tensor(Scalar value, TensorOptions opts = {});
// [start, end) in steps. Without options the dtype is inferred as PyTorch does: i64 when
// start, end and step are all integers (exact over the whole i64 range), f32 when any is
// floating (`arange(0, 1, 0.25)` is [0, .25, .5, .75]). An integer dtype with a
// fractional argument throws rather than truncate.
Tensor arange(Scalar end);
Tensor arange(Scalar end, TensorOptions opts);
Tensor arange(Scalar start, Scalar end, Scalar step = 1);
Tensor arange(Scalar start, Scalar end, Scalar step, TensorOptions opts);
// From host data: copied, converted to opts.dtype, placed on opts.device.
template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions opts = {dtype_of<T>::value});
// Wraps memory the caller owns (no copy); the caller keeps it alive.
Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device = Device::cpu());

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
// Tensor-scalar arithmetic promotes as PyTorch does (see add(Tensor, Scalar) in ops.hpp):
// arange(4) * 0.5 is the f32 [0, .5, 1, 1.5]; arange(4) * 2 stays i64; `/` is true division.
Tensor operator+(const Tensor& a, Scalar b);
Tensor operator-(const Tensor& a, Scalar b);
Tensor operator*(const Tensor& a, Scalar b);
Tensor operator/(const Tensor& a, Scalar b);
Tensor operator+(Scalar a, const Tensor& b);
Tensor operator-(Scalar a, const Tensor& b);
Tensor operator*(Scalar a, const Tensor& b);
Tensor operator/(Scalar a, const Tensor& b);
Tensor operator-(const Tensor& a);
std::ostream& operator<<(std::ostream& os, const Tensor& t);

}  // namespace barbell

template <>
struct fmt::formatter<barbell::Tensor> : fmt::formatter<std::string_view> {
  template <typename Ctx>
  auto format(const barbell::Tensor& t, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(t.str(), ctx);
  }
};

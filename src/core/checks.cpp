// Checks shared by the tensor methods and the ops: sizes and allocations, the rule for
// converting values into a dtype, scalar type promotion, and memory overlap of writes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "ops/common.hpp"

namespace barbell::detail {

// ---- sizes and allocations -------------------------------------------------------

void check_shape(const char* op, const Shape& shape, DType dtype) {
  int64_t n = 1;
  for (int64_t d : shape) {
    BB_CHECK(d >= 0, ShapeError, "{}: negative size in shape {}", op, shape_str(shape));
    BB_CHECK(!__builtin_mul_overflow(n, d, &n), ShapeError,
             "{}: shape {} has more elements than int64 can count", op, shape_str(shape));
  }
  size_t bytes = 0;
  BB_CHECK(!__builtin_mul_overflow(static_cast<size_t>(n), dtype_size(dtype), &bytes), ShapeError,
           "{}: shape {} of {} needs more bytes than size_t can count", op, shape_str(shape),
           dtype_name(dtype));
}

Tensor empty_for(const char* op, const Shape& shape, TensorOptions opts) {
  check_shape(op, shape, opts.dtype);
  auto im = std::make_shared<TensorImpl>();
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(opts.dtype);
  try {
    im->storage = Storage::allocate(bytes, opts.device, op);
  } catch (const DeviceError& e) {  // the CUDA allocator's own message, with the op and the tensor in front
    throw DeviceError(fmt::format("{}: a {} tensor of shape {}: {}", op, dtype_name(opts.dtype),
                                  shape_str(shape), e.what()));
  }
  im->shape = shape;
  im->strides = contiguous_strides(shape);
  im->dtype = opts.dtype;
  Tensor t(im);
  if (opts.requires_grad) t.requires_grad_(true);
  return t;
}

// ---- conversions -------------------------------------------------------------------

namespace {
// Does a floating value, truncated toward zero, fit the integer dtype?
bool fits_int(double v, DType dt) {
  if (dt == DType::I32) return v > -2147483649.0 && v < 2147483648.0;
  return v >= -9223372036854775808.0 && v < 9223372036854775808.0;  // both bounds are exact doubles
}

double max_finite(DType dt) {
  switch (dt) {
    case DType::F16: return 65504.0;
    case DType::BF16: return 3.3895313892515355e38;
    case DType::F32: return static_cast<double>(std::numeric_limits<float>::max());
    default: return std::numeric_limits<double>::max();
  }
}

const char* int_range(DType dt) {
  return dt == DType::I32 ? "[-2147483648, 2147483647]" : "[-9223372036854775808, 9223372036854775807]";
}
}  // namespace

void check_scalar_for(const char* op, const Scalar& value, DType dtype) {
  if (dtype == DType::Bool) return;
  if (is_floating(dtype)) {
    const double v = value.to_double();
    BB_CHECK(!std::isfinite(v) || std::abs(v) <= max_finite(dtype), ValueError,
             "{}: the value {} overflows {} (its largest finite value is {})", op, value.str(),
             dtype_name(dtype), max_finite(dtype));
    return;
  }
  if (value.is_floating()) {
    BB_CHECK(
        fits_int(value.to_double(), dtype), ValueError,
        "{}: the value {} cannot be converted to {}: NaN, infinities and values outside {} have no {} value",
        op, value.str(), dtype_name(dtype), int_range(dtype), dtype_name(dtype));
    return;
  }
  const int64_t v = value.to_int64();
  BB_CHECK(dtype != DType::I32 ||
               (v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max()),
           ValueError, "{}: the value {} does not fit in i32 (range {})", op, v, int_range(DType::I32));
}

void check_float_to_int(const char* op, const Tensor& src, DType dst) {
  if (!is_floating(src.dtype()) || (dst != DType::I32 && dst != DType::I64) || src.numel() == 0) return;
  const double limit = dst == DType::I32 ? 2147483648.0 : 9223372036854775808.0;
  double m;
  {
    NoGradGuard g;
    m = max(abs(src.detach())).item<double>();  // NaN wins in max
  }
  if (m < limit) return;
  // Something is NaN, infinite or large: find it (a value of exactly -2^31 or -2^63 is fine).
  const std::vector<double> v = src.to_vector<double>();
  for (size_t i = 0; i < v.size(); ++i) {
    BB_CHECK(
        fits_int(v[i], dst), ValueError,
        "{}: cannot convert the {} value {} (element {} of a tensor of shape {}) to {}: NaN, infinities and "
        "values outside {} have no {} value",
        op, dtype_name(src.dtype()), v[i], i, shape_str(src.shape()), dtype_name(dst), int_range(dst),
        dtype_name(dst));
  }
}

DType promote_scalar(const Tensor& t, const Scalar& s) {
  const DType dt = t.dtype();
  if (is_floating(dt)) return dt;
  if (s.is_floating()) return DType::F32;
  if (dt == DType::Bool) return s.is_bool() ? DType::Bool : DType::I64;
  return dt;
}

// ---- memory overlap -------------------------------------------------------------------

namespace {
struct ByteSpan {
  uintptr_t lo = 0, hi = 0;  // [lo, hi); empty for a tensor with no elements
};

ByteSpan byte_span(const Tensor& t) {
  const Shape& sh = t.shape();
  const Shape& st = t.strides();
  int64_t lo = 0, hi = 0;  // element offsets from data_ptr()
  for (size_t d = 0; d < sh.size(); ++d) {
    if (sh[d] == 0) return {};
    const int64_t ext = (sh[d] - 1) * st[d];
    (ext < 0 ? lo : hi) += ext;
  }
  const auto base = reinterpret_cast<uintptr_t>(t.data_ptr());
  const auto es = static_cast<int64_t>(t.element_size());
  return {base + static_cast<uintptr_t>(lo * es), base + static_cast<uintptr_t>((hi + 1) * es)};
}
}  // namespace

bool may_overlap(const Tensor& a, const Tensor& b) {
  const ByteSpan x = byte_span(a), y = byte_span(b);
  return x.lo < x.hi && y.lo < y.hi && x.lo < y.hi && y.lo < x.hi;
}

void check_writable(const char* op, const Tensor& out) {
  // The dims that matter (size > 1), by stride: the layout is one-to-one when each stride
  // is at least the span of the dims with smaller strides. barbell's views keep that;
  // only expand (stride 0) breaks it.
  const Shape& sh = out.shape();
  const Shape& st = out.strides();
  constexpr size_t kStack = 16;
  std::pair<int64_t, int64_t> stack[kStack];
  std::vector<std::pair<int64_t, int64_t>> heap;
  std::pair<int64_t, int64_t>* dims = stack;
  if (sh.size() > kStack) {
    heap.resize(sh.size());
    dims = heap.data();
  }
  size_t n = 0;
  for (size_t d = 0; d < sh.size(); ++d) {
    if (sh[d] == 0) return;  // nothing is written
    if (sh[d] > 1) dims[n++] = {std::abs(st[d]), sh[d]};
  }
  std::sort(dims, dims + n);
  int64_t span = 1;  // elements covered by the dims so far
  for (size_t k = 0; k < n; ++k) {
    BB_CHECK(
        dims[k].first >= span, ValueError,
        "{}: unsupported operation: more than one element of the written-to tensor (shape {}, strides {}) "
        "refers to a single memory location (an expanded view?); clone() it before writing into it",
        op, shape_str(sh), shape_str(st));
    if (__builtin_mul_overflow(dims[k].first, dims[k].second, &span)) return;
  }
}

Tensor unalias(const Tensor& out, const Tensor& in) {
  if (!in.defined() || !may_overlap(out, in)) return in;
  // The same elements in the same order: each output element reads its own input element
  // before it is written, so no copy is needed.
  if (in.data_ptr() == out.data_ptr() && in.dtype() == out.dtype() && in.shape() == out.shape() &&
      in.strides() == out.strides())
    return in;
  NoGradGuard g;
  return in.clone();
}

}  // namespace barbell::detail

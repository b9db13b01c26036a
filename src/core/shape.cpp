// Shape helpers: printing, element counts, contiguous strides, broadcasting.
#include "barbell/core/shape.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "barbell/core/error.hpp"

namespace barbell {

std::string shape_str(const Shape& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) {
    // A product past int64 would wrap and size a buffer too small for its shape.
    BB_CHECK(!__builtin_mul_overflow(n, d, &n), ShapeError, "shape {}: the element count overflows int64",
             shape_str(s));
  }
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t i = static_cast<int64_t>(s.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    BB_CHECK(!__builtin_mul_overflow(acc, std::max<int64_t>(s[i], 1), &acc), ShapeError,
             "shape {}: strides overflow int64", shape_str(s));
  }
  return st;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    BB_CHECK(da == db || da == 1 || db == 1, ShapeError, "{}: shapes do not broadcast: a is {}, b is {}", op,
             shape_str(a), shape_str(b));
    out[i] = da == 1 ? db : da;
  }
  return out;
}

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  int64_t d = dim < 0 ? dim + ndim : dim;
  BB_CHECK(d >= 0 && d < ndim, IndexError, "{}: dim {} out of range for a {}-d tensor", op, dim, ndim);
  return d;
}

}  // namespace barbell

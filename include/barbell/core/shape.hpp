// Shapes and strides (vectors of int64) and the helpers every op uses on them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace barbell {

using Shape = std::vector<int64_t>;

// "[4, 8]"
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);
// Broadcast two shapes numpy-style; throws ShapeError naming `op` when they don't.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
// Wrap a possibly negative dim into [0, ndim); throws IndexError naming `op`.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);

}  // namespace barbell

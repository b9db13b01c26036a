// A test seam of scaled_dot_product_attention: the Math backend's composition of ops on
// the CPU (matmul, softmax) instead of its fused CPU kernel, so the two can be compared.
#pragma once

namespace barbell::detail {

// Tests only. Process-wide; set it before, not while, attention runs.
void set_cpu_math_composite(bool on);

}  // namespace barbell::detail

// bf16 storage, f32 compute: runs the f32 vectorised kernels (vec.hpp) on bf16 data,
// converting a chunk at a time into buffers on the stack.
#pragma once

#include <cstdint>
#include <vector>

#include "barbell/core/dtype.hpp"
#include "cpu/vec.hpp"

namespace barbell::cpu {

constexpr int64_t kBf16Chunk = 1024;

inline const uint16_t* bits(const BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }
inline uint16_t* bits(BFloat16* p) { return reinterpret_cast<uint16_t*>(p); }

// o[i] = f(x[i]) for n elements: f(float* o, const float* x, int64_t m).
template <typename F>
void bf16_map1(BFloat16* o, const BFloat16* x, int64_t n, F&& f) {
  float xf[kBf16Chunk], of[kBf16Chunk];
  const VecKernels& v = vec();
  for (int64_t i = 0; i < n; i += kBf16Chunk) {
    const int64_t m = n - i < kBf16Chunk ? n - i : kBf16Chunk;
    v.bf16_to_f32(xf, bits(x + i), m);
    f(of, xf, m);
    v.f32_to_bf16(bits(o + i), of, m);
  }
}

// o[i] = f(a[i], b[i]): f(float* o, const float* a, const float* b, int64_t m). With
// b_scalar, b is one value.
template <typename F>
void bf16_map2(BFloat16* o, const BFloat16* a, const BFloat16* b, int64_t n, bool b_scalar, F&& f) {
  float af[kBf16Chunk], bf[kBf16Chunk], of[kBf16Chunk];
  const VecKernels& v = vec();
  if (b_scalar) v.bf16_to_f32(bf, bits(b), 1);
  for (int64_t i = 0; i < n; i += kBf16Chunk) {
    const int64_t m = n - i < kBf16Chunk ? n - i : kBf16Chunk;
    v.bf16_to_f32(af, bits(a + i), m);
    if (!b_scalar) v.bf16_to_f32(bf, bits(b + i), m);
    f(of, af, bf, m);
    v.f32_to_bf16(bits(o + i), of, m);
  }
}

// x as f32, n values (nullptr when x is).
inline std::vector<float> bf16_to_vector(const BFloat16* x, int64_t n) {
  std::vector<float> r(x ? static_cast<size_t>(n) : 0);
  if (x) vec().bf16_to_f32(r.data(), bits(x), n);
  return r;
}

}  // namespace barbell::cpu

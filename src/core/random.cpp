// Philox4x32-10 counter-based generator and the random factories built on it.
#include "barbell/core/random.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/common.hpp"

#include "cpu/parallel.hpp"

namespace barbell {

void Generator::philox(uint64_t seed, uint64_t counter, uint32_t out[4]) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    uint32_t n1 = static_cast<uint32_t>(p1);
    uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    uint32_t n3 = static_cast<uint32_t>(p0);
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

uint32_t Generator::next_u32() {
  uint32_t w[4];
  philox(seed_, offset_++, w);
  return w[0];
}

double Generator::next_double() {
  uint32_t w[4];
  philox(seed_, offset_++, w);
  uint64_t bits = (static_cast<uint64_t>(w[0]) << 21) ^ w[1];
  return static_cast<double>(bits & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

Generator& default_generator() {
  static Generator g(0x5eed);
  return g;
}

void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

namespace {
// Fills the n values of `out` (a fresh contiguous CPU tensor of V) from the generator,
// with f(words, values) producing up to 4 values per Philox block.
template <typename V, typename F>
void draw(const Tensor& out, Generator& g, F f) {
  V* v = static_cast<V*>(out.data_ptr());
  const int64_t n = out.numel();
  int64_t blocks = n / 4 + (n % 4 != 0);
  uint64_t base = g.reserve(static_cast<uint64_t>(blocks));
  uint64_t seed = g.seed();
  cpu::parallel_for(blocks, 4096, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      uint32_t w[4];
      Generator::philox(seed, base + static_cast<uint64_t>(b), w);
      V vals[4];
      f(w, vals);
      for (int j = 0; j < 4 && b * 4 + j < n; ++j) v[b * 4 + j] = vals[j];
    }
  });
}
inline double u01(uint32_t w) { return (static_cast<double>(w) + 0.5) * (1.0 / 4294967296.0); }

// The host buffer draws are made in, checked and allocated before anything is drawn.
Tensor host_buffer(const char* op, const Shape& shape, DType dt, const TensorOptions& opts) {
  detail::check_shape(op, shape, opts.dtype);
  return detail::empty_for(op, shape, {dt, Device::cpu()});
}

Tensor finish(Tensor t, const TensorOptions& opts) {
  // Converted on the host, then moved: the values do not depend on the device.
  if (t.dtype() != opts.dtype) t = t.to(opts.dtype);
  if (t.device() != opts.device) t = t.to(opts.device);
  if (opts.requires_grad) t.requires_grad_(true);
  return t;
}
}  // namespace

Tensor rand(const Shape& shape, TensorOptions opts, Generator* gen) {
  BB_CHECK(is_floating(opts.dtype), DTypeError,
           "rand: uniform values in [0, 1) need a floating dtype, got {}", dtype_name(opts.dtype));
  Tensor buf = host_buffer("rand", shape, DType::F64, opts);
  Generator& g = gen ? *gen : default_generator();
  // The largest value below 1 in the target dtype: a uniform closer to 1 than that
  // would round up to 1 when stored (bf16 does so for 1 draw in 512).
  const double top = opts.dtype == DType::BF16  ? 1.0 - 0x1p-8
                     : opts.dtype == DType::F16 ? 1.0 - 0x1p-11
                     : opts.dtype == DType::F32 ? 1.0 - 0x1p-24
                                                : 1.0;
  draw<double>(buf, g, [top](const uint32_t* w, double* out) {
    for (int j = 0; j < 4; ++j) out[j] = std::min(static_cast<double>(w[j]) * (1.0 / 4294967296.0), top);
  });
  return finish(buf, opts);
}

Tensor randn(const Shape& shape, TensorOptions opts, Generator* gen) {
  BB_CHECK(is_floating(opts.dtype), DTypeError, "randn: normal values need a floating dtype, got {}",
           dtype_name(opts.dtype));
  Tensor buf = host_buffer("randn", shape, DType::F64, opts);
  Generator& g = gen ? *gen : default_generator();
  draw<double>(buf, g, [](const uint32_t* w, double* out) {
    // Box-Muller on two pairs of uniforms.
    for (int j = 0; j < 2; ++j) {
      double r = std::sqrt(-2.0 * std::log(u01(w[2 * j])));
      double th = 6.283185307179586 * u01(w[2 * j + 1]);
      out[2 * j] = r * std::cos(th);
      out[2 * j + 1] = r * std::sin(th);
    }
  });
  return finish(buf, opts);
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, TensorOptions opts, Generator* gen) {
  BB_CHECK(high > low, ValueError, "randint: empty range [{}, {})", low, high);
  BB_CHECK(opts.dtype != DType::Bool, DTypeError, "randint: not defined for bool (range [{}, {}))", low,
           high);
  if (opts.dtype == DType::I32)
    BB_CHECK(low >= std::numeric_limits<int32_t>::min() && high - 1 <= std::numeric_limits<int32_t>::max(),
             ValueError, "randint: range [{}, {}) does not fit in i32", low, high);
  Tensor buf = host_buffer("randint", shape, DType::I64, opts);
  Generator& g = gen ? *gen : default_generator();
  // In uint64: high - low can exceed INT64_MAX, and low + r wraps back into [low, high).
  const uint64_t span = static_cast<uint64_t>(high) - static_cast<uint64_t>(low);
  draw<int64_t>(buf, g, [span, low](const uint32_t* w, int64_t* out) {
    for (int j = 0; j < 4; ++j) {
      uint64_t r = (static_cast<uint64_t>(w[j]) << 32) | w[(j + 1) & 3];
      out[j] = static_cast<int64_t>(static_cast<uint64_t>(low) + r % span);
    }
  });
  return finish(buf, opts);
}

}  // namespace barbell

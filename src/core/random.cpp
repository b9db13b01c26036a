// Philox4x32-10 counter-based generator and the random factories built on it.
#include "barbell/core/random.hpp"

#include <algorithm>
#include <cmath>

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
// Fills n doubles from the generator with f(u0, u1, u2, u3) producing up to 4 values per block.
template <typename F>
std::vector<double> draw(int64_t n, Generator& g, F f) {
  std::vector<double> v(static_cast<size_t>(n));
  int64_t blocks = (n + 3) / 4;
  uint64_t base = g.reserve(static_cast<uint64_t>(blocks));
  uint64_t seed = g.seed();
  cpu::parallel_for(blocks, 4096, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      uint32_t w[4];
      Generator::philox(seed, base + static_cast<uint64_t>(b), w);
      double out[4];
      f(w, out);
      for (int j = 0; j < 4 && b * 4 + j < n; ++j) v[static_cast<size_t>(b * 4 + j)] = out[j];
    }
  });
  return v;
}
inline double u01(uint32_t w) { return (static_cast<double>(w) + 0.5) * (1.0 / 4294967296.0); }
// Before draw() sizes its buffer from the element count.
void check_sizes(const Shape& shape, const char* op) {
  for (auto d : shape) BB_CHECK(d >= 0, ShapeError, "{}: negative size in {}", op, shape_str(shape));
}
}  // namespace

Tensor rand(const Shape& shape, TensorOptions opts, Generator* gen) {
  check_sizes(shape, "rand");
  Generator& g = gen ? *gen : default_generator();
  // The largest value below 1 in the target dtype: a uniform closer to 1 than that
  // would round up to 1 when stored (bf16 does so for 1 draw in 512).
  const double top = opts.dtype == DType::BF16  ? 1.0 - 0x1p-8
                     : opts.dtype == DType::F16 ? 1.0 - 0x1p-11
                     : opts.dtype == DType::F32 ? 1.0 - 0x1p-24
                                                : 1.0;
  auto v = draw(shape_numel(shape), g, [top](const uint32_t* w, double* out) {
    for (int j = 0; j < 4; ++j) out[j] = std::min(static_cast<double>(w[j]) * (1.0 / 4294967296.0), top);
  });
  Tensor t = from_vector(v, shape, {opts.dtype, opts.device});
  if (opts.requires_grad) t.requires_grad_(true);
  return t;
}

Tensor randn(const Shape& shape, TensorOptions opts, Generator* gen) {
  check_sizes(shape, "randn");
  Generator& g = gen ? *gen : default_generator();
  auto v = draw(shape_numel(shape), g, [](const uint32_t* w, double* out) {
    // Box-Muller on two pairs of uniforms.
    for (int j = 0; j < 2; ++j) {
      double r = std::sqrt(-2.0 * std::log(u01(w[2 * j])));
      double th = 6.283185307179586 * u01(w[2 * j + 1]);
      out[2 * j] = r * std::cos(th);
      out[2 * j + 1] = r * std::sin(th);
    }
  });
  Tensor t = from_vector(v, shape, {opts.dtype, opts.device});
  if (opts.requires_grad) t.requires_grad_(true);
  return t;
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, TensorOptions opts, Generator* gen) {
  BB_CHECK(high > low, ValueError, "randint: empty range [{}, {})", low, high);
  check_sizes(shape, "randint");
  Generator& g = gen ? *gen : default_generator();
  uint64_t span = static_cast<uint64_t>(high - low);
  auto v = draw(shape_numel(shape), g, [span, low](const uint32_t* w, double* out) {
    for (int j = 0; j < 4; ++j) {
      uint64_t r = (static_cast<uint64_t>(w[j]) << 32) | w[(j + 1) & 3];
      out[j] = static_cast<double>(low + static_cast<int64_t>(r % span));
    }
  });
  return from_vector(v, shape, {opts.dtype, opts.device});
}

}  // namespace barbell

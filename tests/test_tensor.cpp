// Tests of barbell::Tensor: dtypes and their conversions (bf16/f16 bit patterns),
// factories, random numbers, views and strides, copies, broadcasting, printing, in-place ops.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <set>
#include <sstream>

#include "testing.hpp"

namespace bb = barbell;
using bb::Shape;
using bb::Tensor;
using Catch::Contains;

namespace {

uint32_t f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t bf16_bits(float f) { return bb::BFloat16(f).bits; }
uint16_t f16_bits(float f) { return bb::Half(f).bits; }

// Row-major vector of 0, 1, 2, ... as f64 with the given shape.
Tensor iota(const Shape& s, bb::DType dt = bb::kF64) {
  std::vector<double> v(static_cast<size_t>(bb::shape_numel(s)));
  std::iota(v.begin(), v.end(), 0.0);
  return bb::from_vector(v, s, {dt});
}

double mean_of(const std::vector<double>& v) {
  return std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}
double std_of(const std::vector<double>& v) {
  double m = mean_of(v), s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / double(v.size()));
}

const std::vector<bb::DType> kAllDTypes = {bb::kF32, bb::kF64, bb::kBF16, bb::kF16,
                                           bb::kI32, bb::kI64, bb::kBool};

}  // namespace

// ---- dtypes --------------------------------------------------------------------------------

TEST_CASE("dtype sizes, names and classes", "[tensor][dtype]") {
  REQUIRE(bb::dtype_size(bb::kF32) == 4);
  REQUIRE(bb::dtype_size(bb::kF64) == 8);
  REQUIRE(bb::dtype_size(bb::kBF16) == 2);
  REQUIRE(bb::dtype_size(bb::kF16) == 2);
  REQUIRE(bb::dtype_size(bb::kI32) == 4);
  REQUIRE(bb::dtype_size(bb::kI64) == 8);
  REQUIRE(bb::dtype_size(bb::kBool) == 1);
  REQUIRE(std::string(bb::dtype_name(bb::kBF16)) == "bf16");
  REQUIRE(std::string(bb::dtype_name(bb::kF16)) == "f16");
  REQUIRE(std::string(bb::dtype_name(bb::kBool)) == "bool");
  REQUIRE(fmt::format("{}", bb::kI64) == "i64");
  for (auto dt : {bb::kF32, bb::kF64, bb::kBF16, bb::kF16}) {
    REQUIRE(bb::is_floating(dt));
    REQUIRE_FALSE(bb::is_integral(dt));
  }
  for (auto dt : {bb::kI32, bb::kI64, bb::kBool}) {
    REQUIRE(bb::is_integral(dt));
    REQUIRE_FALSE(bb::is_floating(dt));
  }
}

TEST_CASE("bf16 rounding matches hand-computed bit patterns", "[tensor][dtype]") {
  REQUIRE(bf16_bits(1.0f) == 0x3f80);
  REQUIRE(bf16_bits(-2.0f) == 0xc000);
  REQUIRE(bf16_bits(0.0f) == 0x0000);
  REQUIRE(bf16_bits(-0.0f) == 0x8000);
  REQUIRE(bf16_bits(u2f(0x40490fdbu)) == 0x4049);  // pi: low half 0x0fdb rounds down
  REQUIRE(bf16_bits(u2f(0x3f808000u)) == 0x3f80);  // 1 + 2^-8: a tie, to even (down)
  REQUIRE(bf16_bits(u2f(0x3f818000u)) == 0x3f82);  // 1 + 3*2^-8: a tie, to even (up)
  REQUIRE(bf16_bits(u2f(0x3f808001u)) == 0x3f81);  // just above the tie
  REQUIRE(bf16_bits(u2f(0x3f807fffu)) == 0x3f80);  // just below the tie
  REQUIRE(bf16_bits(65504.0f) == 0x4780);          // 0x477fe000 rounds up to 65536
  REQUIRE(bf16_bits(u2f(0x7f7fffffu)) == 0x7f80);  // FLT_MAX rounds to inf
  REQUIRE(bf16_bits(INFINITY) == 0x7f80);
  REQUIRE(bf16_bits(-INFINITY) == 0xff80);
  REQUIRE(bf16_bits(u2f(0x00010000u)) == 0x0001);  // float subnormal kept exactly
  REQUIRE(bf16_bits(u2f(0x00000001u)) == 0x0000);  // smallest float subnormal rounds to 0
  REQUIRE(bf16_bits(u2f(0x00018000u)) == 0x0002);  // subnormal tie rounds to even
  uint16_t nan = bf16_bits(NAN);
  REQUIRE((nan & 0x7f80) == 0x7f80);
  REQUIRE((nan & 0x007f) != 0);
  // A NaN whose payload is only in the low half must stay a NaN, not become inf.
  uint16_t nan_low = bf16_bits(u2f(0x7f800001u));
  REQUIRE((nan_low & 0x7f80) == 0x7f80);
  REQUIRE((nan_low & 0x007f) != 0);
  // Back to float: exact.
  bb::BFloat16 b;
  b.bits = 0x4049;
  REQUIRE(static_cast<float>(b) == 3.140625f);
  b.bits = 0x0001;
  REQUIRE(f2u(static_cast<float>(b)) == 0x00010000u);
}

TEST_CASE("f16 rounding matches hand-computed bit patterns", "[tensor][dtype]") {
  REQUIRE(f16_bits(1.0f) == 0x3c00);
  REQUIRE(f16_bits(-2.0f) == 0xc000);
  REQUIRE(f16_bits(0.0f) == 0x0000);
  REQUIRE(f16_bits(-0.0f) == 0x8000);
  REQUIRE(f16_bits(0.1f) == 0x2e66);
  REQUIRE(f16_bits(1.0f / 3.0f) == 0x3555);
  REQUIRE(f16_bits(65504.0f) == 0x7bff);  // the largest half
  REQUIRE(f16_bits(65519.0f) == 0x7bff);  // below the tie with 65536
  REQUIRE(f16_bits(65520.0f) == 0x7c00);  // the tie rounds to even: inf
  REQUIRE(f16_bits(1e5f) == 0x7c00);
  REQUIRE(f16_bits(-1e5f) == 0xfc00);
  REQUIRE(f16_bits(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);      // tie, to even (down)
  REQUIRE(f16_bits(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);  // tie, to even (up)
  REQUIRE(f16_bits(std::ldexp(1.0f, -14)) == 0x0400);             // smallest normal
  REQUIRE(f16_bits(std::ldexp(1023.0f, -24)) == 0x03ff);          // largest subnormal
  REQUIRE(f16_bits(std::ldexp(1.0f, -24)) == 0x0001);             // smallest subnormal
  REQUIRE(f16_bits(std::ldexp(1.0f, -25)) == 0x0000);             // tie with 0: to even
  REQUIRE(f16_bits(std::ldexp(1.5f, -25)) == 0x0001);
  REQUIRE(f16_bits(std::ldexp(3.0f, -25)) == 0x0002);  // 1.5 * 2^-24: tie, to even (up)
  REQUIRE(f16_bits(std::ldexp(5.0f, -25)) == 0x0002);  // 2.5 * 2^-24: tie, to even (down)
  REQUIRE(f16_bits(-std::ldexp(1.0f, -24)) == 0x8001);
  REQUIRE(f16_bits(std::ldexp(1.0f, -30)) == 0x0000);
  REQUIRE(f16_bits(std::ldexp(2047.0f, -25)) == 0x0400);  // largest subnormal + carry into the exponent
  REQUIRE(f16_bits(INFINITY) == 0x7c00);
  REQUIRE(f16_bits(-INFINITY) == 0xfc00);
  uint16_t nan = f16_bits(NAN);
  REQUIRE((nan & 0x7c00) == 0x7c00);
  REQUIRE((nan & 0x03ff) != 0);
  // Back to float.
  REQUIRE(bb::Half::to_float(0x0001) == std::ldexp(1.0f, -24));
  REQUIRE(bb::Half::to_float(0x03ff) == std::ldexp(1023.0f, -24));
  REQUIRE(bb::Half::to_float(0x0200) == std::ldexp(1.0f, -15));
  REQUIRE(bb::Half::to_float(0x7bff) == 65504.0f);
  REQUIRE(bb::Half::to_float(0x3555) == 0.333251953125f);
  REQUIRE(bb::Half::to_float(0xc000) == -2.0f);
  REQUIRE(f2u(bb::Half::to_float(0x8000)) == 0x80000000u);
  REQUIRE(std::isinf(bb::Half::to_float(0xfc00)));
  REQUIRE(bb::Half::to_float(0xfc00) < 0);
  REQUIRE(std::isnan(bb::Half::to_float(0x7e00)));
  // Every finite half survives half -> float -> half.
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    if ((h & 0x7c00u) == 0x7c00u) continue;
    uint16_t back = f16_bits(bb::Half::to_float(static_cast<uint16_t>(h)));
    if (back != h) FAIL("half " << h << " came back as " << back);
  }
}

TEST_CASE("tensor conversions between every pair of dtypes", "[tensor][dtype]") {
  // Values every dtype can hold exactly (bool holds their != 0).
  std::vector<double> v = {0, 1, -2, 3, 100, -7};
  Tensor src = bb::from_vector(v, {2, 3}, {bb::kF64});
  for (auto from : kAllDTypes) {
    for (auto to : kAllDTypes) {
      INFO(bb::dtype_name(from) << " -> " << bb::dtype_name(to));
      Tensor a = src.to(from);
      Tensor b = a.to(to);
      REQUIRE(b.dtype() == to);
      REQUIRE(b.shape() == Shape{2, 3});
      auto got = b.to_vector<double>();
      for (size_t i = 0; i < v.size(); ++i) {
        double want = v[i];
        if (from == bb::kBool || to == bb::kBool) want = v[i] != 0 ? 1 : 0;
        REQUIRE(got[i] == want);
      }
    }
  }
  // Float -> int truncates toward zero.
  Tensor f = bb::from_vector<float>({-2.75f, -0.5f, 0.5f, 3.99f}, {4});
  REQUIRE(f.to(bb::kI32).to_vector<int32_t>() == std::vector<int32_t>{-2, 0, 0, 3});
  REQUIRE(f.to(bb::kI64).to_vector<int64_t>() == std::vector<int64_t>{-2, 0, 0, 3});
  REQUIRE(f.to(bb::kBool).to_vector<bool>() == std::vector<bool>{true, true, true, true});
  // Round trips through 16-bit types at the bit level.
  Tensor x = bb::from_vector<float>({1.0f, 65504.0f, 0.1f, u2f(0x3f818000u)}, {4});
  auto hb = x.to(bb::kF16).to_vector<bb::Half>();
  REQUIRE(hb[0].bits == 0x3c00);
  REQUIRE(hb[1].bits == 0x7bff);
  REQUIRE(hb[2].bits == 0x2e66);
  auto bf = x.to(bb::kBF16).to_vector<bb::BFloat16>();
  REQUIRE(bf[0].bits == 0x3f80);
  REQUIRE(bf[1].bits == 0x4780);
  REQUIRE(bf[3].bits == 0x3f82);
  // f32 -> f64 -> f32 is exact; f64 -> f32 rounds to nearest.
  REQUIRE(x.to(bb::kF64).to(bb::kF32).to_vector<float>() == x.to_vector<float>());
  Tensor d = bb::from_vector<double>({1.0 + 1e-12, 1.0 / 3.0}, {2});
  auto dv = d.to(bb::kF32).to_vector<float>();
  REQUIRE(dv[0] == 1.0f);
  REQUIRE(dv[1] == static_cast<float>(1.0 / 3.0));
}

TEST_CASE("inf, nan and subnormals survive conversions", "[tensor][dtype]") {
  const float inf = std::numeric_limits<float>::infinity();
  Tensor x = bb::from_vector<float>({inf, -inf, NAN, std::ldexp(1.0f, -24), std::ldexp(1.0f, -130)}, {5});
  auto h = x.to(bb::kF16).to(bb::kF32).to_vector<float>();
  REQUIRE(h[0] == inf);
  REQUIRE(h[1] == -inf);
  REQUIRE(std::isnan(h[2]));
  REQUIRE(h[3] == std::ldexp(1.0f, -24));  // the smallest f16 subnormal
  REQUIRE(h[4] == 0.0f);                   // far below f16 range
  auto b = x.to(bb::kBF16).to(bb::kF64).to_vector<double>();
  REQUIRE(b[0] == inf);
  REQUIRE(b[1] == -inf);
  REQUIRE(std::isnan(b[2]));
  REQUIRE(b[3] == std::ldexp(1.0, -24));
  REQUIRE(b[4] == std::ldexp(1.0, -130));  // bf16 keeps float's exponent range, subnormals included
  // Overflow to f16 saturates to inf.
  REQUIRE(std::isinf(bb::full({1}, 1e6, {bb::kF32}).to(bb::kF16).item<double>()));
}

// ---- factories -----------------------------------------------------------------------------------

TEST_CASE("empty, zeros, ones, full in every dtype", "[tensor][factory]") {
  for (auto dt : kAllDTypes) {
    INFO(bb::dtype_name(dt));
    Tensor e = bb::empty({2, 3}, {dt});
    REQUIRE(e.dtype() == dt);
    REQUIRE(e.shape() == Shape{2, 3});
    REQUIRE(e.strides() == Shape{3, 1});
    REQUIRE(e.numel() == 6);
    REQUIRE(e.nbytes() == 6 * bb::dtype_size(dt));
    REQUIRE(e.element_size() == bb::dtype_size(dt));
    REQUIRE(e.is_contiguous());
    REQUIRE(e.is_cpu());
    REQUIRE(bb::zeros({3, 1, 2}, {dt}).to_vector<double>() == std::vector<double>(6, 0.0));
    REQUIRE(bb::ones({4}, {dt}).to_vector<double>() == std::vector<double>(4, 1.0));
    double v = dt == bb::kBool ? 1.0 : 3.0;
    Tensor f = bb::full({2, 2}, v, {dt});
    REQUIRE(f.to_vector<double>() == std::vector<double>(4, v));
    REQUIRE(bb::zeros_like(f).to_vector<double>() == std::vector<double>(4, 0.0));
    REQUIRE(bb::ones_like(f).dtype() == dt);
    REQUIRE(bb::empty_like(f).shape() == f.shape());
  }
  REQUIRE(bb::full({2}, -1.5, {bb::kBF16}).to_vector<double>() == std::vector<double>{-1.5, -1.5});
  REQUIRE(bb::full({1}, 0.1, {bb::kF16}).to_vector<bb::Half>()[0].bits == 0x2e66);
  REQUIRE(bb::full({1}, 2.9, {bb::kI32}).item<int>() == 2);
  Tensor s = bb::scalar_tensor(4.5);
  REQUIRE(s.dim() == 0);
  REQUIRE(s.numel() == 1);
  REQUIRE(s.item() == 4.5);
  Tensor z = bb::zeros({0, 3});
  REQUIRE(z.numel() == 0);
  REQUIRE(z.to_vector<float>().empty());
  Tensor g = bb::zeros({2}, {bb::kF32, bb::Device::cpu(), true});
  REQUIRE(g.requires_grad());
  REQUIRE(g.is_leaf());
}

TEST_CASE("arange", "[tensor][factory]") {
  Tensor a = bb::arange(5);
  REQUIRE(a.dtype() == bb::kI64);
  REQUIRE(a.to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3, 4});
  Tensor b = bb::arange(1.0, 2.0, 0.25, {bb::kF32});
  REQUIRE(b.to_vector<float>() == std::vector<float>{1.0f, 1.25f, 1.5f, 1.75f});
  REQUIRE(bb::arange(5.0, 0.0, -2.0).to_vector<int64_t>() == std::vector<int64_t>{5, 3, 1});
  REQUIRE(bb::arange(0.0, 1.0, 0.3, {bb::kF64}).numel() == 4);  // 0, .3, .6, .9
  REQUIRE(bb::arange(3.0, 3.0).numel() == 0);
  REQUIRE_THROWS_AS(bb::arange(0.0, 1.0, 0.0), bb::ValueError);
  REQUIRE_THROWS_AS(bb::arange(0.0, 5.0, -1.0), bb::ValueError);
}

TEST_CASE("rand, randn, randint: seeded, reproducible, right moments", "[tensor][random]") {
  bb::Generator g1(42), g2(42), g3(43);
  Tensor a = bb::rand({20000}, {bb::kF64}, &g1);
  Tensor b = bb::rand({20000}, {bb::kF64}, &g2);
  Tensor c = bb::rand({20000}, {bb::kF64}, &g3);
  REQUIRE(bbtest::max_abs_diff(a, b) == 0.0);
  REQUIRE(bbtest::max_abs_diff(a, c) > 0.5);
  auto av = a.to_vector<double>();
  REQUIRE(*std::min_element(av.begin(), av.end()) >= 0.0);
  REQUIRE(*std::max_element(av.begin(), av.end()) < 1.0);
  REQUIRE(std::abs(mean_of(av) - 0.5) < 0.01);
  REQUIRE(std::abs(std_of(av) - std::sqrt(1.0 / 12.0)) < 0.01);
  // The stream moves on: a second draw differs from the first.
  Tensor a2 = bb::rand({20000}, {bb::kF64}, &g1);
  REQUIRE(bbtest::max_abs_diff(a, a2) > 0.5);
  // Saving (seed, offset) and restoring resumes the stream.
  uint64_t off = g1.offset();
  Tensor n1 = bb::randn({1000}, {bb::kF64}, &g1);
  g1.set_offset(off);
  Tensor n2 = bb::randn({1000}, {bb::kF64}, &g1);
  REQUIRE(bbtest::max_abs_diff(n1, n2) == 0.0);
  g1.manual_seed(42);
  REQUIRE(g1.offset() == 0);
  REQUIRE(bbtest::max_abs_diff(bb::rand({20000}, {bb::kF64}, &g1), a) == 0.0);

  bb::Generator gn(7);
  auto nv = bb::randn({40000}, {bb::kF32}, &gn).to_vector<double>();
  REQUIRE(std::abs(mean_of(nv)) < 0.02);
  REQUIRE(std::abs(std_of(nv) - 1.0) < 0.02);
  size_t within1 = 0;
  for (double x : nv) within1 += std::abs(x) < 1.0;
  REQUIRE(std::abs(double(within1) / double(nv.size()) - 0.6827) < 0.01);

  // The default generator is reproducible through manual_seed.
  bb::manual_seed(123);
  Tensor d1 = bb::randn({64});
  bb::manual_seed(123);
  Tensor d2 = bb::randn({64});
  REQUIRE(bbtest::max_abs_diff(d1, d2) == 0.0);
  REQUIRE(d1.dtype() == bb::kF32);

  bb::Generator gi(9);
  Tensor r = bb::randint(-3, 4, {5000}, {bb::kI64}, &gi);
  REQUIRE(r.dtype() == bb::kI64);
  auto rv = r.to_vector<int64_t>();
  std::set<int64_t> seen(rv.begin(), rv.end());
  REQUIRE(seen == std::set<int64_t>{-3, -2, -1, 0, 1, 2, 3});
  REQUIRE(std::abs(mean_of(r.to_vector<double>())) < 0.1);
  Tensor r32 = bb::randint(0, 2, {100}, {bb::kI32}, &gi);
  REQUIRE(r32.dtype() == bb::kI32);
  REQUIRE_THROWS_AS(bb::randint(3, 3, {2}), bb::ValueError);
  Tensor rg = bb::randn({3}, {bb::kF64, bb::Device::cpu(), true}, &gi);
  REQUIRE(rg.requires_grad());
}

TEST_CASE("Generator: raw draws are reproducible and in range", "[tensor][random]") {
  bb::Generator a(1), b(1), c(2);
  std::vector<uint32_t> ua, ub, uc;
  for (int i = 0; i < 8; ++i) {
    ua.push_back(a.next_u32());
    ub.push_back(b.next_u32());
    uc.push_back(c.next_u32());
  }
  REQUIRE(ua == ub);
  REQUIRE(ua != uc);
  REQUIRE(std::set<uint32_t>(ua.begin(), ua.end()).size() == ua.size());
  REQUIRE(a.offset() == 8);
  REQUIRE(a.seed() == 1);
  double lo = 1, hi = 0, sum = 0;
  for (int i = 0; i < 10000; ++i) {
    double d = a.next_double();
    lo = std::min(lo, d);
    hi = std::max(hi, d);
    sum += d;
  }
  REQUIRE(lo >= 0.0);
  REQUIRE(hi < 1.0);
  REQUIRE(std::abs(sum / 10000 - 0.5) < 0.02);
  // philox is a pure function of (seed, counter).
  uint32_t w1[4], w2[4];
  bb::Generator::philox(7, 3, w1);
  bb::Generator::philox(7, 3, w2);
  REQUIRE(std::equal(w1, w1 + 4, w2));
  bb::Generator::philox(7, 4, w2);
  REQUIRE_FALSE(std::equal(w1, w1 + 4, w2));
  // reserve hands out disjoint blocks.
  bb::Generator r(5);
  REQUIRE(r.reserve(3) == 0);
  REQUIRE(r.reserve(2) == 3);
  REQUIRE(r.offset() == 5);
}

TEST_CASE("rand stays below 1 in every floating dtype", "[tensor][random]") {
  // Uniforms just below 1 must not round up to 1 when stored in a narrow type.
  for (auto dt : {bb::kF32, bb::kBF16, bb::kF16}) {
    INFO(bb::dtype_name(dt));
    bb::Generator g(5);
    auto v = bb::rand({50000}, {dt}, &g).to_vector<double>();
    REQUIRE(*std::max_element(v.begin(), v.end()) < 1.0);
    REQUIRE(*std::min_element(v.begin(), v.end()) >= 0.0);
    REQUIRE(std::abs(mean_of(v) - 0.5) < 0.01);
  }
}

TEST_CASE("from_vector and from_blob", "[tensor][factory]") {
  Tensor a = bb::from_vector<int32_t>({1, 2, 3, 4, 5, 6}, {2, 3});
  REQUIRE(a.dtype() == bb::kI32);
  REQUIRE(a.to_vector<int32_t>() == std::vector<int32_t>{1, 2, 3, 4, 5, 6});
  Tensor b = bb::from_vector<int32_t>({1, 2, 3}, {3}, {bb::kF32});
  REQUIRE(b.dtype() == bb::kF32);
  REQUIRE(b.to_vector<float>() == std::vector<float>{1, 2, 3});
  Tensor m = bb::from_vector<bool>({true, false, true}, {3});
  REQUIRE(m.dtype() == bb::kBool);
  REQUIRE(m.to_vector<bool>() == std::vector<bool>{true, false, true});
  Tensor h = bb::from_vector<bb::Half>({bb::Half(1.5f), bb::Half(-0.25f)}, {2});
  REQUIRE(h.dtype() == bb::kF16);
  REQUIRE(h.to_vector<double>() == std::vector<double>{1.5, -0.25});
  // from_vector copies.
  std::vector<float> host = {1, 2, 3};
  Tensor c = bb::from_vector(host, {3});
  host[0] = 9;
  REQUIRE(c.to_vector<float>()[0] == 1.0f);

  // from_blob shares memory both ways.
  std::vector<float> buf = {1, 2, 3, 4, 5, 6};
  Tensor t = bb::from_blob(buf.data(), {2, 3}, bb::kF32);
  REQUIRE(t.data_ptr() == buf.data());
  buf[4] = 50;
  REQUIRE(t.to_vector<float>()[4] == 50.0f);
  t.select(0, 0).fill_(-1.0);
  REQUIRE(buf == std::vector<float>{-1, -1, -1, 4, 50, 6});
  REQUIRE(t.data<float>() == buf.data());
  REQUIRE_THROWS_AS(t.data<double>(), bb::DTypeError);
}

// ---- views --------------------------------------------------------------------------------------

TEST_CASE("view and reshape share storage and infer -1", "[tensor][view]") {
  Tensor x = iota({2, 3, 4});
  Tensor v = x.view({6, -1});
  REQUIRE(v.shape() == Shape{6, 4});
  REQUIRE(v.strides() == Shape{4, 1});
  REQUIRE(v.data_ptr() == x.data_ptr());
  REQUIRE(x.view({-1}).shape() == Shape{24});
  REQUIRE(x.view({4, 1, -1, 2}).shape() == Shape{4, 1, 3, 2});
  Tensor r = x.reshape({3, 8});
  REQUIRE(r.data_ptr() == x.data_ptr());
  {
    bb::NoGradGuard g;
    v.select(0, 1).fill_(-1);  // elements 4..7
  }
  auto xv = x.to_vector<double>();
  for (int i = 0; i < 24; ++i) REQUIRE(xv[size_t(i)] == (i >= 4 && i < 8 ? -1.0 : double(i)));
  REQUIRE(x.view({2, 12}).to_vector<double>() == xv);
  // A 0-d tensor and back.
  Tensor s = bb::scalar_tensor(3.0, {bb::kF64});
  REQUIRE(s.view({1, 1}).shape() == Shape{1, 1});
  REQUIRE(s.view({1}).view({}).dim() == 0);
  REQUIRE(s.reshape({-1}).shape() == Shape{1});
}

TEST_CASE("views of non-contiguous tensors: view where possible, reshape copies otherwise",
          "[tensor][view]") {
  Tensor x = iota({4, 6});
  // A narrow along the last dim: rows stay apart, but splitting a row is a view.
  Tensor n = x.narrow(1, 1, 4);  // [4, 4] strides [6, 1]
  REQUIRE_FALSE(n.is_contiguous());
  Tensor nv = n.view({4, 2, 2});
  REQUIRE(nv.strides() == Shape{6, 2, 1});
  REQUIRE(nv.data_ptr() == n.data_ptr());
  REQUIRE(nv.to_vector<double>() == n.to_vector<double>());
  // Merging rows of the narrow is impossible without a copy.
  REQUIRE_THROWS_AS(n.view({16}), bb::ShapeError);
  Tensor nr = n.reshape({16});
  REQUIRE(nr.is_contiguous());
  REQUIRE(nr.data_ptr() != x.data_ptr());
  std::vector<double> want;
  for (int i = 0; i < 4; ++i)
    for (int j = 1; j < 5; ++j) want.push_back(i * 6 + j);
  REQUIRE(nr.to_vector<double>() == want);
  // The copy is independent of the original.
  {
    bb::NoGradGuard g;
    nr.fill_(0);
  }
  REQUIRE(x.to_vector<double>()[1] == 1.0);

  // A transpose: reshape copies, values in the transposed order.
  Tensor t = x.t();  // [6, 4]
  Tensor tr = t.reshape({24});
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t j = 0; j < 4; ++j) REQUIRE(tr.to_vector<double>()[size_t(i * 4 + j)] == double(j * 6 + i));
  REQUIRE_THROWS_AS(t.view({24}), bb::ShapeError);
  // Splitting a dim of a transposed tensor is still a view.
  Tensor ts = t.view({2, 3, 4});
  REQUIRE(ts.data_ptr() == x.data_ptr());
  REQUIRE(ts.strides() == Shape{3, 1, 6});
  REQUIRE(ts.to_vector<double>() == tr.to_vector<double>());
}

TEST_CASE("reshape of a transposed tensor with a size-1 dim in between", "[tensor][view]") {
  // [2, 1, 3] with strides [1, 6, 2]: the size-1 dim's stride happens to line up with
  // its neighbour, but dims 0 and 2 are not contiguous with each other.
  Tensor base = iota({3, 2});
  Tensor u = base.t().unsqueeze(1);
  REQUIRE(u.shape() == Shape{2, 1, 3});
  REQUIRE(u.strides() == Shape{1, 6, 2});
  std::vector<double> want = {0, 2, 4, 1, 3, 5};
  REQUIRE(u.reshape({6}).to_vector<double>() == want);
  REQUIRE(u.flatten().to_vector<double>() == want);
  REQUIRE(u.reshape({3, 2}).to_vector<double>() == want);
  REQUIRE_THROWS_AS(u.view({6}), bb::ShapeError);
  // Size-1 dims elsewhere don't block a genuine view.
  Tensor w = iota({2, 1, 3});
  REQUIRE(w.narrow(2, 0, 3).view({6}).data_ptr() == w.data_ptr());
  Tensor odd = iota({4, 1, 5}).narrow(0, 1, 2);  // [2, 1, 5], contiguous rows
  REQUIRE(odd.view({10}).to_vector<double>() == std::vector<double>{5, 6, 7, 8, 9, 10, 11, 12, 13, 14});
}

TEST_CASE("transpose and permute", "[tensor][view]") {
  Tensor x = iota({2, 3, 4});
  Tensor t = x.transpose(0, 2);
  REQUIRE(t.shape() == Shape{4, 3, 2});
  REQUIRE(t.strides() == Shape{1, 4, 12});
  REQUIRE(t.data_ptr() == x.data_ptr());
  REQUIRE_FALSE(t.is_contiguous());
  REQUIRE(x.transpose(-1, -2).shape() == Shape{2, 4, 3});
  Tensor p = x.permute({2, 0, 1});
  REQUIRE(p.shape() == Shape{4, 2, 3});
  REQUIRE(p.strides() == Shape{1, 12, 4});
  auto pv = p.contiguous().to_vector<double>();
  for (int64_t k = 0; k < 4; ++k)
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t j = 0; j < 3; ++j) REQUIRE(pv[size_t((k * 2 + i) * 3 + j)] == double(i * 12 + j * 4 + k));
  REQUIRE(x.permute({-1, 0, 1}).shape() == Shape{4, 2, 3});
  Tensor m = iota({2, 3});
  REQUIRE(m.t().shape() == Shape{3, 2});
  REQUIRE(m.t().t().to_vector<double>() == m.to_vector<double>());
}

TEST_CASE("narrow, slice, select, indexing", "[tensor][view]") {
  Tensor x = iota({4, 5});
  Tensor n = x.narrow(1, 2, 3);
  REQUIRE(n.shape() == Shape{4, 3});
  REQUIRE(n.offset() == 2);
  REQUIRE(n.strides() == Shape{5, 1});
  REQUIRE(n.to_vector<double>() == std::vector<double>{2, 3, 4, 7, 8, 9, 12, 13, 14, 17, 18, 19});
  Tensor s = x.slice(0, 1, 3);
  REQUIRE(s.shape() == Shape{2, 5});
  REQUIRE(s.offset() == 5);
  REQUIRE(s.to_vector<double>()[0] == 5.0);
  REQUIRE(x.slice(1, -2, 5).to_vector<double>() == std::vector<double>{3, 4, 8, 9, 13, 14, 18, 19});
  REQUIRE(x.slice(0, 2, 100).shape() == Shape{2, 5});  // clamped
  REQUIRE(x.slice(0, 3, 1).shape() == Shape{0, 5});
  Tensor c = x.select(1, 3);
  REQUIRE(c.shape() == Shape{4});
  REQUIRE(c.strides() == Shape{5});
  REQUIRE(c.to_vector<double>() == std::vector<double>{3, 8, 13, 18});
  REQUIRE(x.select(0, -1).to_vector<double>() == std::vector<double>{15, 16, 17, 18, 19});
  REQUIRE(x[2][4].item() == 14.0);
  REQUIRE(x[2].data_ptr() == static_cast<char*>(x.data_ptr()) + 10 * sizeof(double));
  // Chained views: a narrow of a transpose.
  Tensor tn = x.t().narrow(0, 1, 2);  // [2, 4]
  REQUIRE(tn.to_vector<double>() == std::vector<double>{1, 6, 11, 16, 2, 7, 12, 17});
}

TEST_CASE("unsqueeze, squeeze, expand, flatten", "[tensor][view]") {
  Tensor x = iota({3, 4});
  Tensor u0 = x.unsqueeze(0);
  REQUIRE(u0.shape() == Shape{1, 3, 4});
  REQUIRE(u0.data_ptr() == x.data_ptr());
  REQUIRE(x.unsqueeze(1).shape() == Shape{3, 1, 4});
  REQUIRE(x.unsqueeze(-1).shape() == Shape{3, 4, 1});
  REQUIRE(x.unsqueeze(-1).strides()[2] == 1);
  REQUIRE(x.unsqueeze(1).squeeze(1).shape() == Shape{3, 4});
  REQUIRE(x.squeeze(0).shape() == Shape{3, 4});  // not size 1: unchanged
  Tensor y = iota({1, 3, 1, 2});
  REQUIRE(y.squeeze().shape() == Shape{3, 2});
  REQUIRE(y.squeeze().data_ptr() == y.data_ptr());
  REQUIRE(y.squeeze(-2).shape() == Shape{1, 3, 2});
  REQUIRE(iota({1, 1}).squeeze().dim() == 0);

  Tensor col = iota({3, 1});
  Tensor e = col.expand({2, 3, 4});
  REQUIRE(e.shape() == Shape{2, 3, 4});
  REQUIRE(e.strides() == Shape{0, 1, 0});
  REQUIRE(e.data_ptr() == col.data_ptr());
  auto ev = e.to_vector<double>();
  for (int64_t a = 0; a < 2; ++a)
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 4; ++j) REQUIRE(ev[size_t((a * 3 + i) * 4 + j)] == double(i));
  REQUIRE(col.expand({-1, 5}).shape() == Shape{3, 5});
  REQUIRE(bb::scalar_tensor(2.0).expand({2, 2}).to_vector<double>() == std::vector<double>(4, 2.0));
  // An expanded tensor made contiguous is a real copy.
  Tensor ec = e.contiguous();
  REQUIRE(ec.is_contiguous());
  REQUIRE(ec.to_vector<double>() == ev);

  Tensor z = iota({2, 3, 4, 5});
  REQUIRE(z.flatten().shape() == Shape{120});
  REQUIRE(z.flatten(1).shape() == Shape{2, 60});
  REQUIRE(z.flatten(1, 2).shape() == Shape{2, 12, 5});
  REQUIRE(z.flatten(-2).shape() == Shape{2, 3, 20});
  REQUIRE(z.flatten(1, 2).data_ptr() == z.data_ptr());
  REQUIRE(bb::scalar_tensor(1.0).flatten().shape() == Shape{1});
}

TEST_CASE("contiguous copies strided data correctly", "[tensor][view]") {
  bb::Generator g(3);
  Tensor x = bb::randn({3, 4, 5}, {bb::kF32}, &g);
  auto xv = x.to_vector<float>();
  // A permuted, narrowed view, checked element by element against the index formula.
  Tensor v = x.permute({2, 0, 1}).narrow(0, 1, 3).narrow(2, 1, 2);  // [3, 3, 2]
  Tensor c = v.contiguous();
  REQUIRE(c.is_contiguous());
  REQUIRE(c.shape() == Shape{3, 3, 2});
  REQUIRE(c.data_ptr() != x.data_ptr());
  const float* p = c.data<float>();
  for (int64_t k = 0; k < 3; ++k)
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 2; ++j)
        REQUIRE(p[(k * 3 + i) * 2 + j] == xv[size_t(i * 20 + (j + 1) * 5 + (k + 1))]);
  // contiguous() of a contiguous tensor is the same tensor.
  REQUIRE(x.contiguous().same(x));
  // Every dtype.
  for (auto dt : kAllDTypes) {
    Tensor a = iota({3, 4}).to(dt);
    Tensor want = iota({3, 4}).t().contiguous().to(dt);
    REQUIRE(a.t().contiguous().to_vector<double>() == want.to_vector<double>());
  }
  // clone always copies.
  Tensor cl = x.clone();
  REQUIRE(cl.data_ptr() != x.data_ptr());
  REQUIRE(cl.to_vector<float>() == xv);
  // to() with the same dtype and device is the same tensor.
  REQUIRE(x.to(bb::kF32).same(x));
  REQUIRE(x.to(bb::Device::cpu()).same(x));
}

TEST_CASE("broadcast_shapes", "[tensor][broadcast]") {
  REQUIRE(bb::broadcast_shapes({3, 1, 5}, {4, 5}, "t") == Shape{3, 4, 5});
  REQUIRE(bb::broadcast_shapes({}, {2, 3}, "t") == Shape{2, 3});
  REQUIRE(bb::broadcast_shapes({2, 1}, {}, "t") == Shape{2, 1});
  REQUIRE(bb::broadcast_shapes({1}, {0}, "t") == Shape{0});
  REQUIRE(bb::broadcast_shapes({2, 1, 4, 1}, {1, 3, 1, 5}, "t") == Shape{2, 3, 4, 5});
  REQUIRE_THROWS_AS(bb::broadcast_shapes({3}, {4}, "t"), bb::ShapeError);
  REQUIRE_THROWS_WITH(bb::broadcast_shapes({2, 3}, {4, 3}, "myop"),
                      Contains("myop") && Contains("[2, 3]") && Contains("[4, 3]"));
  REQUIRE(bb::shape_str({}) == "[]");
  REQUIRE(bb::shape_str({4, 8}) == "[4, 8]");
  REQUIRE(bb::shape_numel({}) == 1);
  REQUIRE(bb::shape_numel({2, 0, 3}) == 0);
  REQUIRE(bb::contiguous_strides({2, 3, 4}) == Shape{12, 4, 1});
  REQUIRE(bb::wrap_dim(-1, 3, "t") == 2);
  REQUIRE_THROWS_AS(bb::wrap_dim(3, 3, "t"), bb::IndexError);
  REQUIRE_THROWS_AS(bb::wrap_dim(-4, 3, "t"), bb::IndexError);
}

TEST_CASE("accessors, item and to_vector", "[tensor]") {
  Tensor x = iota({2, 3, 4});
  REQUIRE(x.dim() == 3);
  REQUIRE(x.size(-1) == 4);
  REQUIRE(x.size(0) == 2);
  REQUIRE(x.stride(0) == 12);
  REQUIRE(x.stride(-1) == 1);
  REQUIRE(x.sizes() == x.shape());
  REQUIRE(x.options().dtype == bb::kF64);
  REQUIRE(x.device() == bb::Device::cpu());
  REQUIRE(iota({1, 1, 1}).item() == 0.0);
  REQUIRE(bb::full({1}, 7, {bb::kI64}).item<int64_t>() == 7);
  REQUIRE(bb::full({}, 1, {bb::kBool}).item<bool>());
  REQUIRE(bb::full({}, -2.5, {bb::kBF16}).item<float>() == -2.5f);
  REQUIRE_THROWS_AS(x.item(), bb::ShapeError);
  REQUIRE(iota({3}).to(bb::kI32).to_vector<int32_t>() == std::vector<int32_t>{0, 1, 2});
  REQUIRE(iota({3}).to_vector<float>() == std::vector<float>{0, 1, 2});
  auto bfv = iota({3}).to_vector<bb::BFloat16>();
  REQUIRE(bfv[2].bits == 0x4000);
  Tensor undef;
  REQUIRE_FALSE(undef.defined());
  REQUIRE_THROWS_AS(undef.shape(), bb::ValueError);
}

TEST_CASE("printing", "[tensor][print]") {
  Tensor x = bb::from_vector<float>({1.5f, -2.0f, 3.25f, 0.0f, 10.0f, 6.125f}, {2, 3});
  std::string s = x.str();
  INFO(s);
  REQUIRE(s.find("1.5") != std::string::npos);
  REQUIRE(s.find("-2") != std::string::npos);
  REQUIRE(s.find("3.25") != std::string::npos);
  REQUIRE(s.find("6.125") != std::string::npos);
  REQUIRE(s.find("shape=[2, 3]") != std::string::npos);
  REQUIRE(s.find("dtype=f32") != std::string::npos);
  REQUIRE(s.find("requires_grad") == std::string::npos);
  std::ostringstream os;
  os << x;
  REQUIRE(os.str() == s);
  REQUIRE(fmt::format("{}", x) == s);
  // Integers print as integers; the values of a view are the view's.
  std::string si = bb::arange(10).narrow(0, 7, 3).str();
  INFO(si);
  REQUIRE(si.find("[7, 8, 9]") != std::string::npos);
  REQUIRE(si.find("dtype=i64") != std::string::npos);
  std::string sb = bb::from_vector<bool>({true, false}, {2}).str();
  REQUIRE(sb.find("[1, 0]") != std::string::npos);
  // Big tensors are summarised.
  std::string big = bb::arange(2000).str();
  REQUIRE(big.find("...") != std::string::npos);
  REQUIRE(big.find("1999") != std::string::npos);
  REQUIRE(big.find("1000") == std::string::npos);
  REQUIRE(bb::scalar_tensor(2.5).str().find("tensor(2.5") == 0);
  REQUIRE(bb::zeros({2}, {bb::kF32, bb::Device::cpu(), true}).str().find("requires_grad") !=
          std::string::npos);
  REQUIRE(Tensor().str() == "tensor(undefined)");
}

// ---- copies and in-place ops --------------------------------------------------------------------

TEST_CASE("copy_ broadcasts and casts", "[tensor][inplace]") {
  Tensor dst = bb::zeros({2, 3}, {bb::kF32});
  dst.copy_(bb::from_vector<double>({1.5, 2.5, 3.5}, {3}));
  REQUIRE(dst.to_vector<float>() == std::vector<float>{1.5f, 2.5f, 3.5f, 1.5f, 2.5f, 3.5f});
  dst.copy_(bb::from_vector<int64_t>({7, 8}, {2, 1}));
  REQUIRE(dst.to_vector<float>() == std::vector<float>{7, 7, 7, 8, 8, 8});
  Tensor di = bb::zeros({3}, {bb::kI32});
  di.copy_(bb::from_vector<float>({-1.7f, 2.2f, 9.9f}, {3}));
  REQUIRE(di.to_vector<int32_t>() == std::vector<int32_t>{-1, 2, 9});
  Tensor dh = bb::zeros({2}, {bb::kF16});
  dh.copy_(bb::full({}, 65504.0, {bb::kF64}));
  REQUIRE(dh.to_vector<bb::Half>()[1].bits == 0x7bff);
  // Into a strided view: only the view's elements change.
  Tensor big = iota({3, 4});
  {
    bb::NoGradGuard g;
    big.t().narrow(0, 1, 2).copy_(bb::from_vector<double>({-1, -2, -3}, {3}));
  }
  REQUIRE(big.to_vector<double>() == std::vector<double>{0, -1, -1, 3, 4, -2, -2, 7, 8, -3, -3, 11});
  REQUIRE_THROWS_AS(dst.copy_(bb::zeros({3, 3})), bb::ShapeError);
  REQUIRE_THROWS_AS(dst.copy_(bb::zeros({2, 3, 1})), bb::ShapeError);
}

TEST_CASE("fill_, zero_, add_, mul_, set_data", "[tensor][inplace]") {
  Tensor x = iota({2, 3});
  x.narrow(1, 1, 1).fill_(9);
  REQUIRE(x.to_vector<double>() == std::vector<double>{0, 9, 2, 3, 9, 5});
  x.add_(bb::from_vector<double>({1, 2, 3}, {3}), 2.0);
  REQUIRE(x.to_vector<double>() == std::vector<double>{2, 13, 8, 5, 13, 11});
  x.mul_(0.5);
  REQUIRE(x.to_vector<double>() == std::vector<double>{1, 6.5, 4, 2.5, 6.5, 5.5});
  x.t().select(0, 0).mul_(-1);  // column 0
  REQUIRE(x.to_vector<double>() == std::vector<double>{-1, 6.5, 4, -2.5, 6.5, 5.5});
  x.zero_();
  REQUIRE(x.to_vector<double>() == std::vector<double>(6, 0.0));
  Tensor ii = bb::arange(4);
  ii.add_(bb::arange(4));
  REQUIRE(ii.to_vector<int64_t>() == std::vector<int64_t>{0, 2, 4, 6});
  REQUIRE_THROWS_AS(x.add_(bb::zeros({2, 3}, {bb::kF32})), bb::DTypeError);
  REQUIRE_THROWS_AS(x.add_(bb::zeros({4}, {bb::kF64})), bb::ShapeError);

  Tensor p = bb::zeros({2}, {bb::kF32});
  Tensor alias = p;
  p.set_data(bb::ones({3, 3}, {bb::kF64}));
  REQUIRE(alias.shape() == Shape{3, 3});
  REQUIRE(alias.dtype() == bb::kF64);
  REQUIRE(alias.to_vector<double>() == std::vector<double>(9, 1.0));
}

TEST_CASE("in-place ops refuse tensors that require grad while grad mode is on", "[tensor][inplace]") {
  Tensor w = bb::ones({3}, {bb::kF32, bb::Device::cpu(), true});
  Tensor o = bb::ones({3}, {bb::kF32});
  REQUIRE(bb::grad_enabled());
  REQUIRE_THROWS_AS(w.fill_(2), bb::ValueError);
  REQUIRE_THROWS_AS(w.zero_(), bb::ValueError);
  REQUIRE_THROWS_AS(w.add_(o), bb::ValueError);
  REQUIRE_THROWS_AS(w.mul_(2), bb::ValueError);
  REQUIRE_THROWS_AS(w.copy_(o), bb::ValueError);
  REQUIRE_THROWS_WITH(w.mul_(2), Contains("mul_") && Contains("requires grad"));
  // A view of such a tensor is refused as well.
  REQUIRE_THROWS_AS(w.narrow(0, 0, 1).fill_(0), bb::ValueError);
  REQUIRE(w.to_vector<float>() == std::vector<float>{1, 1, 1});
  {
    bb::NoGradGuard g;
    REQUIRE_FALSE(bb::grad_enabled());
    w.add_(o, 2.0);
    w.mul_(2);
  }
  REQUIRE(bb::grad_enabled());
  REQUIRE(w.to_vector<float>() == std::vector<float>{6, 6, 6});
  // A detached alias is allowed (and shares memory).
  w.detach().fill_(1);
  REQUIRE(w.to_vector<float>() == std::vector<float>{1, 1, 1});
  // requires_grad_ on a non-float tensor throws.
  Tensor i = bb::zeros({2}, {bb::kI64});
  REQUIRE_THROWS_AS(i.requires_grad_(), bb::DTypeError);
  REQUIRE_NOTHROW(i.requires_grad_(false));
}

TEST_CASE("devices", "[tensor][device]") {
  REQUIRE(bb::Device::parse("cpu") == bb::Device::cpu());
  REQUIRE(bb::Device::parse("cuda") == bb::Device::cuda(0));
  REQUIRE(bb::Device::parse("cuda:3") == bb::Device::cuda(3));
  REQUIRE(bb::Device::parse("cuda:3").index() == 3);
  REQUIRE(bb::Device::cuda(1).str() == "cuda:1");
  REQUIRE(bb::Device::cpu().str() == "cpu");
  REQUIRE(fmt::format("{}", bb::Device::cuda(2)) == "cuda:2");
  REQUIRE(bb::Device::cuda(1) != bb::Device::cuda(2));
  REQUIRE(bb::Device::cuda(0).is_cuda());
  // This machine's build: the count agrees with is_available.
  REQUIRE(bb::cuda::is_available() == (bb::cuda::device_count() > 0));
}

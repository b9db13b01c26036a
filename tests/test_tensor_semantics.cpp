// Tests of the tensor semantics issue 11 fixed: scalar type promotion and dtype inference
// of factories, memory overlap of in-place writes, exact integer arithmetic and
// conversions, size and allocation checks, empty matmuls, NaN through the fast exp.
#include <cmath>
#include <cstdint>
#include <limits>

#include "testing.hpp"

namespace bb = barbell;
using bb::Shape;
using bb::Tensor;
using Catch::Contains;

namespace {
constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();

std::vector<int64_t> i64s(const Tensor& t) { return t.to_vector<int64_t>(); }
std::vector<double> f64s(const Tensor& t) { return t.to_vector<double>(); }
}  // namespace

// ---- type promotion ------------------------------------------------------------------

TEST_CASE("an integer tensor with a floating scalar gives f32, as PyTorch", "[semantics][promotion]") {
  Tensor a = bb::arange(4);
  REQUIRE(a.dtype() == bb::kI64);
  Tensor h = a * 0.5;
  REQUIRE(h.dtype() == bb::kF32);
  REQUIRE(f64s(h) == std::vector<double>{0, 0.5, 1, 1.5});
  REQUIRE(f64s(0.5 * a) == std::vector<double>{0, 0.5, 1, 1.5});
  REQUIRE(f64s(a + 0.25) == std::vector<double>{0.25, 1.25, 2.25, 3.25});
  REQUIRE(f64s(a - 0.5) == std::vector<double>{-0.5, 0.5, 1.5, 2.5});
  REQUIRE(f64s(0.5 - a) == std::vector<double>{0.5, -0.5, -1.5, -2.5});
  REQUIRE(bb::pow(a, 0.5).dtype() == bb::kF32);
  bbtest::require_close(bb::pow(a, 0.5), bb::from_vector<double>({0, 1, std::sqrt(2.0), std::sqrt(3.0)}, {4}),
                        1e-6);
  // True division, whatever the scalar's kind.
  REQUIRE(f64s(a / 2) == std::vector<double>{0, 0.5, 1, 1.5});
  REQUIRE((a / 2).dtype() == bb::kF32);
  REQUIRE(f64s(bb::arange(1, 4) / 3) ==
          std::vector<double>{1.0f / 3.0f, 2.0f / 3.0f, 1.0f});  // true division, not x * (1/3)
  REQUIRE(f64s(6 / bb::arange(1, 4)) == std::vector<double>{6, 3, 2});
  Tensor i32 = bb::arange(3, {bb::kI32});
  REQUIRE((i32 * 1.5).dtype() == bb::kF32);
  // Bool tensors: integer scalars give i64, floating ones f32.
  Tensor b = bb::from_vector<bool>({true, false}, {2});
  REQUIRE((b + 1).dtype() == bb::kI64);
  REQUIRE(i64s(b + 1) == std::vector<int64_t>{2, 1});
  REQUIRE((b * 0.5).dtype() == bb::kF32);
  REQUIRE_THROWS_AS(b + true, bb::DTypeError);
}

TEST_CASE("an integer tensor with an integer scalar stays integer and exact", "[semantics][promotion]") {
  Tensor a = bb::arange(4);
  REQUIRE((a * 2).dtype() == bb::kI64);
  REQUIRE(i64s(a * 2) == std::vector<int64_t>{0, 2, 4, 6});
  REQUIRE(i64s(a + 3) == std::vector<int64_t>{3, 4, 5, 6});
  REQUIRE(i64s(a - 1) == std::vector<int64_t>{-1, 0, 1, 2});
  REQUIRE(i64s(10 - a) == std::vector<int64_t>{10, 9, 8, 7});
  REQUIRE(i64s(-a) == std::vector<int64_t>{0, -1, -2, -3});
  REQUIRE(i64s(bb::pow(a, 3)) == std::vector<int64_t>{0, 1, 8, 27});
  // Beyond 2^53, where a trip through double would drop the low bits.
  const int64_t big = (int64_t{1} << 60) + 1;
  Tensor l = bb::full({2}, big);
  REQUIRE(l.dtype() == bb::kI64);
  REQUIRE(i64s(l + 2) == std::vector<int64_t>{big + 2, big + 2});
  REQUIRE(i64s(l - 1) == std::vector<int64_t>{big - 1, big - 1});
  REQUIRE(i64s(-l) == std::vector<int64_t>{-big, -big});
  REQUIRE(i64s(bb::mul(bb::full({1}, (int64_t{1} << 40) + 3), 1000))[0] == ((int64_t{1} << 40) + 3) * 1000);
  REQUIRE(i64s(bb::pow(bb::full({1}, 3), 39))[0] == 4052555153018976267LL);
  // An i32 tensor with a scalar outside i32 is refused (as PyTorch), not wrapped.
  Tensor i32 = bb::arange(3, {bb::kI32});
  REQUIRE((i32 + 1).dtype() == bb::kI32);
  REQUIRE_THROWS_WITH(i32 + (int64_t{1} << 40),
                      Contains("add") && Contains("1099511627776") && Contains("i32"));
}

TEST_CASE("integer add, sub and mul wrap on overflow, as PyTorch", "[semantics][promotion][integer]") {
  // Two's complement wrapping, computed without signed overflow (UBSan stays quiet).
  REQUIRE(i64s(bb::full({1}, kI64Max) + 1) == std::vector<int64_t>{kI64Min});
  REQUIRE(i64s(bb::full({1}, kI64Min) - 1) == std::vector<int64_t>{kI64Max});
  REQUIRE(i64s(-bb::full({1}, kI64Min)) == std::vector<int64_t>{kI64Min});
  REQUIRE(i64s(bb::full({1}, kI64Max) * 2) == std::vector<int64_t>{-2});
  REQUIRE(i64s(bb::mul(bb::full({3}, kI64Max), bb::full({3}, kI64Max))) == std::vector<int64_t>{1, 1, 1});
  REQUIRE(i64s(bb::add(bb::full({1}, 1), bb::full({1}, kI64Max), 3.0)) == std::vector<int64_t>{kI64Max - 1});
  REQUIRE(i64s(bb::sub(bb::full({2}, kI64Min), bb::full({2}, 1))) == std::vector<int64_t>{kI64Max, kI64Max});
  Tensor t = bb::full({2}, kI64Max);
  t.mul_(3);
  REQUIRE(i64s(t) == std::vector<int64_t>{kI64Max - 2, kI64Max - 2});
  t.add_(bb::full({2}, kI64Max), 2.0);
  REQUIRE(i64s(t) == std::vector<int64_t>{kI64Max - 4, kI64Max - 4});
  Tensor i32 = bb::full({1}, 2147483647, {bb::kI32});
  REQUIRE((i32 + 1).to_vector<int32_t>() == std::vector<int32_t>{-2147483647 - 1});
  // Comparisons and max are exact beyond 2^53 (no trip through double).
  const int64_t two53 = int64_t{1} << 53;
  REQUIRE_FALSE(bb::eq(bb::full({1}, two53 + 1), bb::full({1}, two53)).item<bool>());
  REQUIRE(bb::max(bb::from_vector<int64_t>({two53, two53 + 1, two53}, {3})).item<int64_t>() == two53 + 1);
}

TEST_CASE("integer pow: exact, negative exponents refused, overflow reported", "[semantics][promotion]") {
  Tensor base = bb::from_vector<int64_t>({2, -3, 0, 1, -1}, {5});
  Tensor ex = bb::from_vector<int64_t>({62, 3, 0, kI64Max, kI64Max}, {5});
  REQUIRE(i64s(bb::pow(base, ex)) == std::vector<int64_t>{int64_t{1} << 62, -27, 1, 1, -1});
  REQUIRE_THROWS_WITH(bb::pow(bb::full({1}, 2), bb::full({1}, 63)), Contains("pow") && Contains("2^63"));
  REQUIRE_THROWS_WITH(bb::pow(bb::full({1}, 2), -1), Contains("negative") && Contains("pow"));
  REQUIRE_THROWS_AS(bb::pow(bb::arange(3, {bb::kI32}), 40), bb::ValueError);  // 2^40 overflows i32
  REQUIRE(bb::pow(bb::arange(3), 2.0).dtype() == bb::kF32);
}

TEST_CASE("unary float functions promote integer tensors to f32", "[semantics][promotion]") {
  Tensor a = bb::arange(3);
  for (auto* f :
       {+[](const Tensor& x) { return bb::exp(x); }, +[](const Tensor& x) { return bb::sqrt(x); },
        +[](const Tensor& x) { return bb::tanh(x); }, +[](const Tensor& x) { return bb::gelu(x); }}) {
    Tensor y = f(a);
    REQUIRE(y.dtype() == bb::kF32);
    bbtest::require_close(y, f(a.to(bb::kF32)), 0, 0);
  }
  REQUIRE_THROWS_AS(bb::relu(a), bb::DTypeError);
}

TEST_CASE("in-place ops on integer tensors refuse results that are not integers", "[semantics][promotion]") {
  Tensor a = bb::arange(4);
  REQUIRE_THROWS_WITH(a.mul_(0.5), Contains("mul_") && Contains("i64") && Contains("0.5") && Contains("f32"));
  REQUIRE(i64s(a) == std::vector<int64_t>{0, 1, 2, 3});  // untouched
  a.mul_(3);
  REQUIRE(i64s(a) == std::vector<int64_t>{0, 3, 6, 9});
  REQUIRE_THROWS_WITH(a.add_(bb::arange(4), 0.5), Contains("add_") && Contains("alpha"));
  REQUIRE_THROWS_WITH(bb::add(a, bb::arange(4), 1.5), Contains("add") && Contains("alpha"));
  a.add_(bb::arange(4), 2.0);
  REQUIRE(i64s(a) == std::vector<int64_t>{0, 5, 10, 15});
  // Tensor-tensor mixing of dtypes stays an error (documented): no silent promotion.
  REQUIRE_THROWS_AS(bb::arange(4) + bb::zeros({4}), bb::DTypeError);
  REQUIRE_THROWS_AS(bb::zeros({4}).add_(bb::arange(4)), bb::DTypeError);
}

TEST_CASE("factories infer their dtype as PyTorch", "[semantics][factory]") {
  REQUIRE(bb::arange(0, 1, 0.25).dtype() == bb::kF32);
  REQUIRE(f64s(bb::arange(0, 1, 0.25)) == std::vector<double>{0, 0.25, 0.5, 0.75});
  REQUIRE(bb::arange(0.0, 3.0).dtype() == bb::kF32);
  REQUIRE(bb::arange(5).dtype() == bb::kI64);
  REQUIRE(bb::arange(1, 10, 3).dtype() == bb::kI64);
  REQUIRE(i64s(bb::arange(1, 10, 3)) == std::vector<int64_t>{1, 4, 7});
  REQUIRE(i64s(bb::arange(5, -5, -3)) == std::vector<int64_t>{5, 2, -1, -4});
  REQUIRE(bb::arange(0, 1, 0.25, {bb::kF64}).dtype() == bb::kF64);
  REQUIRE(bb::full({2}, 7).dtype() == bb::kI64);
  REQUIRE(bb::full({2}, 7.5).dtype() == bb::kF32);
  REQUIRE(bb::full({2}, true).dtype() == bb::kBool);
  REQUIRE(bb::full({2}, 7, {bb::kF64}).dtype() == bb::kF64);
  // An integer dtype with fractional arguments would truncate every value: refused.
  REQUIRE_THROWS_WITH(bb::arange(0, 1, 0.25, {bb::kI64}), Contains("arange") && Contains("0.25"));
  REQUIRE_THROWS_AS(bb::arange(0, 3, 1, {bb::kBool}), bb::DTypeError);
}

TEST_CASE("arange over the whole int64 range", "[semantics][factory][integer]") {
  Tensor t = bb::arange(kI64Max - 2, kI64Max);
  REQUIRE(i64s(t) == std::vector<int64_t>{kI64Max - 2, kI64Max - 1});
  REQUIRE(i64s(bb::arange(kI64Min, kI64Min + 3)) == std::vector<int64_t>{kI64Min, kI64Min + 1, kI64Min + 2});
  // The difference end - start is 2^64 - 1: counted exactly, not overflowed.
  Tensor wide = bb::arange(kI64Min, kI64Max, kI64Max);
  REQUIRE(i64s(wide) == std::vector<int64_t>{kI64Min, -1, kI64Max - 1});
  REQUIRE_THROWS_WITH(bb::arange(kI64Min, kI64Max), Contains("arange") && Contains("int64"));
  REQUIRE_THROWS_AS(bb::arange(0, 1e300, 1e-300), bb::ValueError);  // count past int64 (and no UB cast)
  REQUIRE_THROWS_AS(bb::arange(0, 5, 0), bb::ValueError);
  REQUIRE_THROWS_AS(bb::arange(0, 5, -1), bb::ValueError);
  REQUIRE_THROWS_WITH(bb::arange(0, int64_t{1} << 40, int64_t{1} << 20, {bb::kI32}), Contains("i32"));
}

// ---- memory overlap -------------------------------------------------------------------

TEST_CASE("add_ of a transposed view of itself reads the original values", "[semantics][overlap]") {
  Tensor x = bb::arange(9.0, {bb::kF32}).view({3, 3});
  std::vector<double> v = f64s(x), want(9);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) want[i * 3 + j] = v[i * 3 + j] + v[j * 3 + i];
  x.add_(x.t());
  REQUIRE(f64s(x) == want);
  // Also with alpha, and a broadcast row of itself.
  Tensor y = bb::arange(6.0, {bb::kF64}).view({2, 3});
  y.add_(y.select(0, 1), -1.0);  // every row minus the old row 1
  REQUIRE(f64s(y) == std::vector<double>{-3, -3, -3, 0, 0, 0});
}

TEST_CASE("shifted self-copies give the values before the copy", "[semantics][overlap]") {
  Tensor a = bb::arange(6.0, {bb::kF32});
  a.narrow(0, 1, 5).copy_(a.narrow(0, 0, 5));  // a[1:] = a[:-1]
  REQUIRE(f64s(a) == std::vector<double>{0, 0, 1, 2, 3, 4});
  Tensor b = bb::arange(6.0, {bb::kF32});
  b.narrow(0, 0, 5).copy_(b.narrow(0, 1, 5));  // b[:-1] = b[1:]
  REQUIRE(f64s(b) == std::vector<double>{1, 2, 3, 4, 5, 5});
  Tensor m = bb::arange(4.0, {bb::kF64}).view({2, 2});
  m.copy_(m.t());
  REQUIRE(f64s(m) == std::vector<double>{0, 2, 1, 3});
  Tensor s = bb::arange(3.0, {bb::kF32});
  s.copy_(s);  // the same tensor: a no-op
  REQUIRE(f64s(s) == std::vector<double>{0, 1, 2});
  // Integer and casting copies too.
  Tensor i = bb::arange(5);
  i.narrow(0, 2, 3).copy_(i.narrow(0, 0, 3));
  REQUIRE(i64s(i) == std::vector<int64_t>{0, 1, 0, 1, 2});
}

TEST_CASE("writes into expanded views are refused; fill_ is allowed", "[semantics][overlap]") {
  Tensor base = bb::zeros({1, 3});
  Tensor e = base.expand({4, 3});
  REQUIRE_THROWS_WITH(e.add_(bb::ones({4, 3})), Contains("add_") && Contains("single memory location"));
  REQUIRE_THROWS_WITH(e.mul_(2.0), Contains("mul_") && Contains("[4, 3]"));
  REQUIRE_THROWS_WITH(e.copy_(bb::ones({4, 3})), Contains("copy_") && Contains("strides [0, 1]"));
  REQUIRE(f64s(base) == std::vector<double>{0, 0, 0});  // nothing was written
  e.fill_(5.0);                                         // one value: idempotent, as PyTorch allows
  REQUIRE(f64s(base) == std::vector<double>{5, 5, 5});
  // An expand that adds no repeated element (size 1) is writable.
  Tensor one = bb::zeros({3});
  one.expand({1, 3}).add_(bb::ones({1, 3}));
  REQUIRE(f64s(one) == std::vector<double>{1, 1, 1});
  // Overlap checks on the AdamW op: a state tensor aliasing the parameter.
  Tensor p = bb::zeros({4}), g = bb::ones({4}), m = bb::zeros({4});
  bb::AdamWParams hp{0.1, 0.9, 0.999, 1e-8, 0.0, 1};
  REQUIRE_THROWS_WITH(bb::adamw_step_(p, g, p, m, hp), Contains("adamw_step_") && Contains("share memory"));
  REQUIRE_THROWS_WITH(bb::adamw_step_(p, p, m, g, hp), Contains("share memory"));
  Tensor m2 = bb::zeros({4}), v2 = bb::zeros({4});
  Tensor m1 = bb::zeros({4}), v1 = bb::zeros({4});
  REQUIRE_THROWS_WITH(
      bb::adamw_multi_step_({{p, g, m1, v1, Tensor(), 1, 0.0}, {p, g, m2, v2, Tensor(), 1, 0.0}}, 0.1, 0.9,
                            0.999, 1e-8),
      Contains("adamw_multi_step_") && Contains("the param of parameter"));
}

// ---- the version counter ---------------------------------------------------------------

TEST_CASE("every in-place write bumps the storage's version", "[semantics][version]") {
  Tensor x = bb::zeros({4}, {bb::kF32});
  Tensor view = x.narrow(0, 1, 2);
  const uint64_t v0 = x.version();
  x.fill_(1.0);
  REQUIRE(x.version() == v0 + 1);
  view.zero_();  // a view shares the counter
  REQUIRE(x.version() == v0 + 2);
  x.add_(bb::ones({4}));
  x.mul_(2.0);
  x.copy_(bb::ones({4}));
  REQUIRE(x.version() == v0 + 5);
  REQUIRE(x.detach().version() == x.version());
  x.bump_version();
  REQUIRE(view.version() == v0 + 6);
  Tensor p = bb::zeros({3}), g = bb::ones({3}), m = bb::zeros({3}), v = bb::zeros({3});
  bb::adamw_step_(p, g, m, v, {0.1, 0.9, 0.999, 1e-8, 0.0, 1});
  REQUIRE((p.version() == 1 && m.version() == 1 && v.version() == 1 && g.version() == 0));
  // A fresh tensor, and an out-of-place op, start at 0.
  REQUIRE((x + 1.0).version() == 0);
}

TEST_CASE("optimizer steps bump the parameters' versions", "[semantics][version]") {
  Tensor w = bb::ones({3}, {bb::kF32, bb::Device::cpu(), true});
  bb::optim::SGD sgd({{"w", w}}, {});
  bb::optim::AdamW adam({{"w", w}}, {});
  (w * w).sum().backward();
  const uint64_t v0 = w.version();
  sgd.step();
  REQUIRE(w.version() > v0);
  const uint64_t v1 = w.version();
  adam.step();
  REQUIRE(w.version() > v1);
}

// ---- exact integers and conversions ------------------------------------------------------

TEST_CASE("integer sums accumulate in int64", "[semantics][integer]") {
  const int64_t two53 = int64_t{1} << 53;
  REQUIRE(bb::from_vector<int64_t>({two53, 1}, {2}).sum().item<int64_t>() == two53 + 1);
  REQUIRE(bb::from_vector<int64_t>({two53, 1, 1, 1}, {2, 2}).sum({1}).to_vector<int64_t>() ==
          std::vector<int64_t>{two53 + 1, 2});
  REQUIRE(bb::from_vector<int64_t>({two53, 1, 3, 1}, {2, 2}).sum({0}).to_vector<int64_t>() ==
          std::vector<int64_t>{two53 + 3, 2});
  REQUIRE_THROWS_WITH(bb::from_vector<int64_t>({kI64Max, 1}, {2}).sum(),
                      Contains("sum") && Contains("overflows int64"));
  REQUIRE(bb::from_vector<int64_t>({kI64Max, 1, -1}, {3}).sum().item<int64_t>() == kI64Max);
  Tensor i32 = bb::full({3}, 2000000000, {bb::kI32});
  REQUIRE(i32.sum().dtype() == bb::kI64);
  REQUIRE(i32.sum().item<int64_t>() == 6000000000LL);
  REQUIRE(bb::from_vector<bool>({true, true, false}, {3}).sum().item<int64_t>() == 2);
  REQUIRE(bb::zeros({0}, {bb::kI64}).sum().item<int64_t>() == 0);
  // Permuted reductions take the same path.
  Tensor t = bb::from_vector<int64_t>({two53, 1, 2, 3, 4, 5}, {1, 2, 3});
  REQUIRE(t.sum({0, 2}).to_vector<int64_t>() == std::vector<int64_t>{two53 + 3, 12});
}

TEST_CASE("item<int64_t> and full are exact over the int64 range", "[semantics][integer]") {
  for (int64_t v : {kI64Max, kI64Min, (int64_t{1} << 60) + 1, -((int64_t{1} << 62) + 7), int64_t{0}}) {
    INFO(v);
    REQUIRE(bb::full({}, v).item<int64_t>() == v);
    REQUIRE(bb::full({3}, v, {bb::kI64}).to_vector<int64_t>() == std::vector<int64_t>(3, v));
    Tensor f = bb::zeros({2}, {bb::kI64});
    f.fill_(v);
    REQUIRE(i64s(f) == std::vector<int64_t>{v, v});
  }
  REQUIRE(bb::full({}, uint64_t{5}).item<uint64_t>() == 5u);
  REQUIRE_THROWS_AS(bb::Scalar(std::numeric_limits<uint64_t>::max()), bb::ValueError);
  // Narrower item types are range checked.
  REQUIRE_THROWS_WITH(bb::full({}, int64_t{1} << 40).item<int32_t>(),
                      Contains("item") && Contains("1099511627776"));
  REQUIRE_THROWS_AS(bb::full({}, -1).item<uint32_t>(), bb::ValueError);
  REQUIRE(bb::full({}, -7).item<int8_t>() == -7);
  // Floating tensors: truncated toward zero; NaN, infinities and out of range throw.
  REQUIRE(bb::full({}, -2.9).item<int64_t>() == -2);
  REQUIRE(bb::full({}, -9223372036854775808.0, {bb::kF64}).item<int64_t>() == kI64Min);
  REQUIRE_THROWS_WITH(bb::full({}, NAN).item<int64_t>(), Contains("item") && Contains("nan"));
  REQUIRE_THROWS_AS(bb::full({}, INFINITY).item<int>(), bb::ValueError);
  REQUIRE_THROWS_AS(bb::full({}, 1e19, {bb::kF64}).item<int64_t>(), bb::ValueError);
  REQUIRE(bb::full({}, NAN).item<bool>());
  REQUIRE_FALSE(bb::full({}, 0).item<bool>());
}

TEST_CASE("randint is exact and in range over the whole int64 range", "[semantics][integer][random]") {
  bb::Generator gen(7);
  const int64_t lo = (int64_t{1} << 60) + 1;
  for (int64_t v : bb::randint(lo, lo + 1, {64}, {bb::kI64}, &gen).to_vector<int64_t>()) REQUIRE(v == lo);
  for (int64_t v : bb::randint(lo, lo + 3, {256}, {bb::kI64}, &gen).to_vector<int64_t>())
    REQUIRE((v >= lo && v < lo + 3));
  // A span past INT64_MAX.
  std::vector<int64_t> w = bb::randint(kI64Min, kI64Max, {1000}, {bb::kI64}, &gen).to_vector<int64_t>();
  int negative = 0;
  for (int64_t v : w) {
    REQUIRE(v < kI64Max);
    negative += v < 0;
  }
  REQUIRE((negative > 400 && negative < 600));
  REQUIRE_THROWS_WITH(bb::randint(0, int64_t{1} << 40, {2}, {bb::kI32}),
                      Contains("randint") && Contains("i32"));
  REQUIRE_THROWS_AS(bb::randint(0, 2, {2}, {bb::kBool}), bb::DTypeError);
  REQUIRE_THROWS_AS(bb::rand({2}, {bb::kI64}), bb::DTypeError);
  REQUIRE_THROWS_AS(bb::randn({2}, {bb::kI32}), bb::DTypeError);
  // Small ranges give the same draws as before (the old formula, computed exactly).
  bb::Generator g1(3);
  std::vector<int64_t> small = bb::randint(0, 10, {8}, {bb::kI64}, &g1).to_vector<int64_t>();
  bb::Generator g2(3);
  REQUIRE(bb::randint(0, 10, {8}, {bb::kF64}, &g2).to_vector<int64_t>() == small);
}

TEST_CASE("conversions to integer dtypes: truncation, and NaN or out of range throw",
          "[semantics][integer]") {
  Tensor f = bb::from_vector<float>({-1.7f, 2.2f, 9.9f, -0.5f}, {4});
  REQUIRE(f.to(bb::kI32).to_vector<int32_t>() == std::vector<int32_t>{-1, 2, 9, 0});
  REQUIRE(f.to(bb::kI64).to_vector<int64_t>() == std::vector<int64_t>{-1, 2, 9, 0});
  for (bb::DType src : {bb::kF32, bb::kF64, bb::kBF16, bb::kF16}) {
    INFO(bb::dtype_name(src));
    Tensor bad = bb::from_vector<double>({1.0, NAN, 3.0}, {3}, {src});
    REQUIRE_THROWS_WITH(bad.to(bb::kI64), Contains("to") && Contains("nan") && Contains("element 1"));
    Tensor inf = bb::from_vector<double>({-INFINITY}, {1}, {src});
    REQUIRE_THROWS_AS(inf.to(bb::kI32), bb::ValueError);
    REQUIRE_THROWS_AS(bb::zeros({1}, {bb::kI64}).copy_(bad.narrow(0, 1, 1)), bb::ValueError);
    REQUIRE(bad.to(bb::kBool).to_vector<bool>() == std::vector<bool>{true, true, true});  // nonzero
  }
  REQUIRE_THROWS_WITH(bb::full({2}, 3e9, {bb::kF64}).to(bb::kI32), Contains("3000000000") && Contains("i32"));
  REQUIRE(bb::full({1}, -2147483648.0, {bb::kF64}).to(bb::kI32).item<int>() == -2147483648);
  REQUIRE(bb::full({1}, 2147483647.9, {bb::kF64}).to(bb::kI32).item<int>() == 2147483647);
  REQUIRE_THROWS_AS(bb::full({1}, 9223372036854775808.0, {bb::kF64}).to(bb::kI64), bb::ValueError);
  // full, fill_, masked_fill and from_vector follow the same rule.
  REQUIRE(bb::full({1}, 2.9, {bb::kI32}).item<int>() == 2);
  REQUIRE_THROWS_WITH(bb::full({2}, NAN, {bb::kI64}), Contains("full") && Contains("nan"));
  REQUIRE_THROWS_WITH(bb::zeros({2}, {bb::kI32}).fill_(1e10), Contains("fill_") && Contains("i32"));
  REQUIRE_THROWS_WITH(bb::zeros({2}, {bb::kI32}).fill_(int64_t{1} << 40),
                      Contains("fill_") && Contains("i32"));
  REQUIRE_THROWS_WITH(bb::masked_fill(bb::zeros({2}, {bb::kI64}), bb::full({2}, true), NAN),
                      Contains("masked_fill"));
  REQUIRE_THROWS_WITH(bb::from_vector<double>({1, INFINITY}, {2}, {bb::kI64}), Contains("from_vector"));
  // Finite values that overflow a floating dtype are refused by full, as PyTorch.
  REQUIRE_THROWS_WITH(bb::full({1}, 1e6, {bb::kF16}),
                      Contains("full") && Contains("f16") && Contains("65504"));
  REQUIRE(std::isinf(bb::full({1}, INFINITY, {bb::kF16}).item()));
  // Integer to integer wraps, as a two's-complement cast (PyTorch, numpy).
  REQUIRE(bb::full({1}, (int64_t{1} << 32) + 5).to(bb::kI32).item<int>() == 5);
}

// ---- sizes and allocations ------------------------------------------------------------------

TEST_CASE("sizes, starts and lengths are checked for negatives and overflow", "[semantics][sizes]") {
  Tensor x = bb::zeros({4});
  REQUIRE_THROWS_WITH(x.narrow(0, 1, kI64Max), Contains("narrow") && Contains("9223372036854775807"));
  REQUIRE_THROWS_AS(x.narrow(0, kI64Max, 1), bb::IndexError);
  REQUIRE_THROWS_AS(x.narrow(0, -1, 2), bb::IndexError);
  REQUIRE_THROWS_AS(x.narrow(0, 2, -1), bb::IndexError);
  REQUIRE(x.narrow(0, 4, 0).numel() == 0);
  REQUIRE_THROWS_WITH(bb::zeros({1}).expand({-5}), Contains("expand") && Contains("-5"));
  REQUIRE_THROWS_WITH(bb::zeros({1}).expand({-2, 1}), Contains("expand") && Contains("-2"));
  REQUIRE(bb::zeros({1}).expand({-1}).shape() == Shape{1});
  REQUIRE_THROWS_WITH(bb::zeros({2}).expand({kI64Max, kI64Max, 2}), Contains("overflows int64"));
  float buf[4] = {};
  REQUIRE_THROWS_WITH(bb::from_blob(buf, {-1}, bb::kF32), Contains("from_blob") && Contains("[-1]"));
  REQUIRE_THROWS_AS(bb::from_blob(nullptr, {2}, bb::kF32), bb::ValueError);
  REQUIRE(bb::from_blob(nullptr, {0}, bb::kF32).numel() == 0);
  REQUIRE_THROWS_WITH(bb::zeros({-3, 2}), Contains("zeros") && Contains("[-3, 2]"));
  REQUIRE_THROWS_WITH(bb::empty({int64_t{1} << 62, 8}), Contains("empty") && Contains("int64"));
  REQUIRE_THROWS_WITH(bb::empty({int64_t{1} << 62}, {bb::kF64}), Contains("empty") && Contains("bytes"));
  REQUIRE_THROWS_WITH(bb::rand({-1}), Contains("rand") && Contains("[-1]"));
  REQUIRE_THROWS_AS(bb::tril_mask(-1, 3), bb::ValueError);
  REQUIRE_THROWS_WITH(bb::zeros({4}).view({int64_t{1} << 62, 4, -1}), Contains("view") && Contains("int64"));
  REQUIRE_THROWS_AS(bb::from_vector<float>({1, 2}, {-1, -2}), bb::ShapeError);
  // chunk with a huge count no longer overflows its size computation.
  REQUIRE(bb::chunk(bb::zeros({5}), kI64Max).size() == 5);
  REQUIRE(bb::split(bb::zeros({5}), kI64Max).size() == 1);
}

TEST_CASE("impossible allocations throw barbell::Error naming the op and the bytes", "[semantics][sizes]") {
  // The kernel refuses these at once (far beyond memory and swap): nothing is touched.
  REQUIRE_THROWS_WITH(bb::arange(0, 1e13), Contains("arange") && Contains("40000000000000 bytes"));
  REQUIRE_THROWS_WITH(bb::tril_mask(int64_t{1} << 31, int64_t{1} << 31),
                      Contains("tril_mask") && Contains("4611686018427387904 bytes"));
  REQUIRE_THROWS_WITH(bb::zeros({int64_t{1} << 45}), Contains("zeros") && Contains("bytes"));
  REQUIRE_THROWS_WITH(bb::zeros({1}).expand({int64_t{1} << 50}).contiguous(),
                      Contains("contiguous") && Contains("bytes"));
  REQUIRE_THROWS_WITH(bb::randn({int64_t{1} << 50}), Contains("randn") && Contains("bytes"));
  REQUIRE_THROWS_WITH(bb::randint(0, 5, {int64_t{1} << 50}), Contains("randint") && Contains("bytes"));
  REQUIRE_THROWS_WITH(bb::zeros({1}).expand({int64_t{1} << 50}) + 1.0, Contains("add") && Contains("bytes"));
  REQUIRE_THROWS_AS(bb::arange(0, 1e13), bb::Error);
}

// ---- legal edge inputs ------------------------------------------------------------------

TEST_CASE("matmul with an empty dimension, and its backward", "[semantics][matmul]") {
  Tensor a = bb::zeros({0, 4}, {bb::kF32, bb::Device::cpu(), true});
  Tensor b = bb::randn({4, 3}, {bb::kF32, bb::Device::cpu(), true});
  Tensor c = bb::matmul(a, b);
  REQUIRE(c.shape() == Shape{0, 3});
  c.sum().backward();
  REQUIRE(a.grad().shape() == Shape{0, 4});
  REQUIRE(b.grad().shape() == Shape{4, 3});
  REQUIRE(f64s(b.grad()) == std::vector<double>(12, 0.0));
  // An empty inner dim: a sum of nothing is zero.
  Tensor k0 = bb::matmul(bb::ones({2, 0}), bb::ones({0, 3}));
  REQUIRE(k0.shape() == Shape{2, 3});
  REQUIRE(f64s(k0) == std::vector<double>(6, 0.0));
  REQUIRE(bb::matmul(bb::ones({3, 0, 4}, {bb::kF64}), bb::ones({4, 2}, {bb::kF64})).shape() ==
          Shape{3, 0, 2});
  REQUIRE(bb::matmul(bb::ones({2, 4}), bb::ones({4, 0})).shape() == Shape{2, 0});
  // linear with no rows, and with no inputs (bias only).
  Tensor w = bb::randn({5, 4}, {bb::kF32, bb::Device::cpu(), true});
  Tensor bias = bb::ones({5}, {bb::kF32, bb::Device::cpu(), true});
  Tensor y = bb::linear(bb::zeros({0, 4}), w, bias);
  REQUIRE(y.shape() == Shape{0, 5});
  y.sum().backward();
  REQUIRE(f64s(w.grad()) == std::vector<double>(20, 0.0));
  REQUIRE(f64s(bb::linear(bb::zeros({2, 0}), bb::zeros({3, 0}), bb::ones({3}))) ==
          std::vector<double>(6, 1.0));
}

TEST_CASE("NaN through GELU and exp stays NaN", "[semantics][nan]") {
  Tensor x = bb::from_vector<float>({NAN, 1.0f, -3.0f}, {3});
  std::vector<double> g = f64s(bb::gelu(x));
  REQUIRE(std::isnan(g[0]));
  REQUIRE(g[1] == Approx(0.8411920));
  REQUIRE(g[2] == Approx(-0.0036374).margin(1e-6));
  Tensor xg = x.detach().requires_grad_();
  bb::gelu(xg).sum().backward();
  REQUIRE(std::isnan(f64s(xg.grad())[0]));
  REQUIRE(std::isnan(f64s(bb::exp(x))[0]));
}

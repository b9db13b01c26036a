// Autograd tests: a float64 finite-difference gradcheck for every differentiable op and
// view, and the engine's edge cases (reuse, accumulation, no-grad, hooks, custom Functions).
#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "testing.hpp"

namespace bb = barbell;
using bb::Shape;
using bb::Tensor;
using Catch::Contains;
using Inputs = std::vector<Tensor>;

namespace {

// f64 leaf in [lo, hi) that requires grad.
Tensor leaf(const Shape& s, uint64_t seed, double lo = -2.0, double hi = 2.0) {
  bb::Generator g(seed);
  Tensor t = bb::add(bb::mul(bb::rand(s, {bb::kF64}, &g), hi - lo), lo);
  t.requires_grad_();
  return t;
}

// f64 leaf with |x| in [0.2, 2): away from the kinks of relu and abs.
Tensor leaf_off_zero(const Shape& s, uint64_t seed) {
  bb::Generator g(seed);
  Tensor mag = bb::add(bb::mul(bb::rand(s, {bb::kF64}, &g), 1.8), 0.2);
  Tensor sign = bb::rsub(
      bb::mul(bb::eq(bb::randint(0, 2, s, {bb::kI64}, &g), bb::zeros(s, {bb::kI64})).to(bb::kF64), 2.0), 1.0);
  Tensor t = bb::mul(mag, sign);
  t.requires_grad_();
  return t;
}

void gradcheck(const std::function<Tensor(const Inputs&)>& f, const Inputs& in, double atol = 1e-6,
               double rtol = 1e-4) {
  bbtest::require_gradcheck(f, in, atol, rtol);
}

Tensor ids(const std::vector<int64_t>& v, const Shape& s) { return bb::from_vector(v, s); }

}  // namespace

// ---- gradcheck of every differentiable op -----------------------------------------------------------

TEST_CASE("gradcheck: binary ops with broadcasting reduce to each input's shape", "[autograd][gradcheck]") {
  std::vector<std::pair<Shape, Shape>> shapes = {
      {{3, 1, 4}, {2, 4}}, {{4}, {}}, {{2, 3}, {2, 3}}, {{1, 3}, {4, 1}}};
  uint64_t seed = 10;
  for (auto& [sa, sb] : shapes) {
    INFO(bb::shape_str(sa) << " with " << bb::shape_str(sb));
    Tensor a = leaf(sa, ++seed), b = leaf(sb, ++seed, 0.5, 2.0), ap = leaf(sa, ++seed, 0.5, 2.0);
    gradcheck([](const Inputs& x) { return bb::add(x[0], x[1]); }, {a, b});
    gradcheck([](const Inputs& x) { return bb::add(x[0], x[1], -1.5); }, {a, b});
    gradcheck([](const Inputs& x) { return bb::sub(x[0], x[1]); }, {a, b});
    gradcheck([](const Inputs& x) { return x[1] - x[0]; }, {a, b});
    gradcheck([](const Inputs& x) { return bb::mul(x[0], x[1]); }, {a, b});
    gradcheck([](const Inputs& x) { return bb::div(x[0], x[1]); }, {a, b});
    gradcheck([](const Inputs& x) { return bb::div(x[1], x[0]); }, {ap, b});
    gradcheck([](const Inputs& x) { return bb::pow(x[0], x[1]); }, {ap, b});
    // The gradient lands in each input's own shape.
    Tensor y = bb::mul(a, b).sum();
    y.backward();
    REQUIRE(a.grad().shape() == sa);
    REQUIRE(b.grad().shape() == sb);
  }
  // Only one side requires grad.
  Tensor a = leaf({3, 4}, 30);
  Tensor c = bb::full({4}, 2.0, {bb::kF64});
  gradcheck([&](const Inputs& x) { return bb::mul(x[0], c); }, {a});
  gradcheck([&](const Inputs& x) { return bb::div(c, x[0]); }, {leaf({3, 4}, 31, 0.5, 2.0)});
}

TEST_CASE("gradcheck: scalar forms", "[autograd][gradcheck]") {
  Tensor x = leaf({2, 3}, 40, 0.5, 2.0);
  gradcheck([](const Inputs& v) { return bb::add(v[0], 3.0); }, {x});
  gradcheck([](const Inputs& v) { return v[0] - 3.0; }, {x});
  gradcheck([](const Inputs& v) { return bb::mul(v[0], -2.5); }, {x});
  gradcheck([](const Inputs& v) { return v[0] / 4.0; }, {x});
  gradcheck([](const Inputs& v) { return bb::pow(v[0], 2.5); }, {x});
  gradcheck([](const Inputs& v) { return bb::pow(v[0], -1.0); }, {x});
  gradcheck([](const Inputs& v) { return bb::pow(v[0], 3.0); }, {leaf({5}, 41)});
  gradcheck([](const Inputs& v) { return bb::rsub(v[0], 1.5); }, {x});
  gradcheck([](const Inputs& v) { return 1.5 - v[0]; }, {x});
  gradcheck([](const Inputs& v) { return bb::rdiv(v[0], 1.5); }, {x});
  gradcheck([](const Inputs& v) { return 1.5 / v[0]; }, {x});
  gradcheck([](const Inputs& v) { return 2.0 * v[0] + 1.0; }, {x});
}

TEST_CASE("gradcheck: unary ops", "[autograd][gradcheck]") {
  Tensor x = leaf({3, 4}, 50, -2.5, 2.5);
  Tensor xp = leaf({3, 4}, 51, 0.3, 3.0);
  Tensor xo = leaf_off_zero({3, 4}, 52);
  gradcheck([](const Inputs& v) { return bb::neg(v[0]); }, {x});
  gradcheck([](const Inputs& v) { return -v[0]; }, {x});
  gradcheck([](const Inputs& v) { return bb::exp(v[0]); }, {x});
  gradcheck([](const Inputs& v) { return bb::log(v[0]); }, {xp});
  gradcheck([](const Inputs& v) { return bb::sqrt(v[0]); }, {xp});
  gradcheck([](const Inputs& v) { return bb::rsqrt(v[0]); }, {xp});
  gradcheck([](const Inputs& v) { return bb::tanh(v[0]); }, {x});
  gradcheck([](const Inputs& v) { return bb::relu(v[0]); }, {xo});
  gradcheck([](const Inputs& v) { return bb::silu(v[0]); }, {x});
  gradcheck([](const Inputs& v) { return bb::gelu(v[0]); }, {x});
  gradcheck([](const Inputs& v) { return bb::gelu(v[0], bb::GeluApprox::None); }, {x});
  gradcheck([](const Inputs& v) { return bb::abs(v[0]); }, {xo});
  // On a strided (transposed) input.
  gradcheck([](const Inputs& v) { return bb::gelu(v[0].t()); }, {x});
  gradcheck([](const Inputs& v) { return bb::relu(v[0].t()); }, {xo});
  // relu and abs: the gradient at a kink is 0.
  Tensor z = bb::zeros({2}, {bb::kF64, bb::Device::cpu(), true});
  bb::relu(z).sum().backward();
  REQUIRE(z.grad().to_vector<double>() == std::vector<double>{0, 0});
}

TEST_CASE("gradcheck: where and masked_fill", "[autograd][gradcheck]") {
  Tensor cond = bb::from_vector<bool>({true, false, false, true, true, false}, {2, 3});
  Tensor a = leaf({2, 3}, 60), b = leaf({3}, 61);
  gradcheck([&](const Inputs& v) { return bb::where(cond, v[0], v[1]); }, {a, b});
  gradcheck([&](const Inputs& v) { return bb::where(cond.select(0, 0), v[0], v[1]); }, {a, b});
  gradcheck([&](const Inputs& v) { return bb::masked_fill(v[0], cond, -3.0); }, {a});
  gradcheck([&](const Inputs& v) { return bb::masked_fill(v[0], cond.select(1, 0).unsqueeze(1), 0.0); }, {a});
}

TEST_CASE("gradcheck: reductions", "[autograd][gradcheck]") {
  Tensor x = leaf({2, 3, 4}, 70);
  gradcheck([](const Inputs& v) { return bb::sum(v[0]); }, {x});
  gradcheck([](const Inputs& v) { return v[0].sum({1}); }, {x});
  gradcheck([](const Inputs& v) { return bb::sum(v[0], {0, 2}, true); }, {x});
  gradcheck([](const Inputs& v) { return bb::sum(v[0], {2, 0}); }, {x});
  gradcheck([](const Inputs& v) { return bb::mean(v[0]); }, {x});
  gradcheck([](const Inputs& v) { return bb::mean(v[0], {-1}, true); }, {x});
  gradcheck([](const Inputs& v) { return v[0].mean({0, 1}); }, {x});
  gradcheck([](const Inputs& v) { return bb::sum(v[0].transpose(0, 2), {1}); }, {x});
  gradcheck([](const Inputs& v) { return bb::max(v[0], 1); }, {x});
  gradcheck([](const Inputs& v) { return bb::max(v[0], 0, true); }, {x});
  gradcheck([](const Inputs& v) { return bb::max(v[0], -1); }, {x});
  gradcheck([](const Inputs& v) { return bb::max(v[0]); }, {x});
  gradcheck([](const Inputs& v) { return bb::max(v[0].t(), 1); }, {leaf({4, 5}, 71)});
  gradcheck([](const Inputs& v) { return bb::max(v[0], 0); }, {leaf({}, 72)});
  gradcheck([](const Inputs& v) { return bb::sum_to(v[0], {3, 1}); }, {x});
  gradcheck([](const Inputs& v) { return bb::sum_to(v[0], {4}); }, {x});
  gradcheck([](const Inputs& v) { return bb::sum_to(v[0], {}); }, {x});
}

TEST_CASE("gradcheck: softmax and log_softmax on every dim", "[autograd][gradcheck]") {
  Tensor x = leaf({3, 4, 5}, 80);
  for (int64_t d : {0, 1, -1}) {
    INFO("dim " << d);
    gradcheck([d](const Inputs& v) { return bb::softmax(v[0], d); }, {x});
    gradcheck([d](const Inputs& v) { return bb::log_softmax(v[0], d); }, {x});
  }
  gradcheck([](const Inputs& v) { return bb::softmax(v[0].transpose(0, 2), 0); }, {x});
  gradcheck([](const Inputs& v) { return bb::log_softmax(v[0], 0); }, {leaf({7}, 81)});
}

TEST_CASE("gradcheck: matmul and linear", "[autograd][gradcheck]") {
  std::vector<std::pair<Shape, Shape>> cases = {
      {{3, 4}, {4, 2}},    {{2, 3, 4}, {2, 4, 5}}, {{2, 1, 3, 4}, {3, 4, 2}},
      {{3, 4}, {2, 4, 5}}, {{4}, {4, 3}},          {{3, 4}, {4}},
      {{4}, {4}},          {{4}, {2, 4, 3}},       {{2, 2, 3, 4}, {4}},
  };
  uint64_t seed = 90;
  for (auto& [sa, sb] : cases) {
    INFO(bb::shape_str(sa) << " @ " << bb::shape_str(sb));
    Tensor a = leaf(sa, ++seed), b = leaf(sb, ++seed);
    gradcheck([](const Inputs& v) { return bb::matmul(v[0], v[1]); }, {a, b});
  }
  // Transposed operands, an expanded batch.
  Tensor a = leaf({4, 3}, 120), b = leaf({5, 4}, 121);
  gradcheck([](const Inputs& v) { return bb::matmul(v[0].t(), v[1].t()); }, {a, b});
  gradcheck(
      [](const Inputs& v) {
        return v[0].unsqueeze(0).expand({3, 4, 3}).matmul(v[1].unsqueeze(0).transpose(1, 2));
      },
      {leaf({4, 3}, 122), leaf({2, 3}, 123)});
  // linear: x of any rank, with and without bias, strided weight.
  Tensor w = leaf({3, 5}, 124), bias = leaf({3}, 125);
  for (const Shape& xs : {Shape{5}, Shape{2, 5}, Shape{2, 3, 5}}) {
    INFO("linear x " << bb::shape_str(xs));
    Tensor x = leaf(xs, 126);
    gradcheck([](const Inputs& v) { return bb::linear(v[0], v[1], v[2]); }, {x, w, bias});
    gradcheck([](const Inputs& v) { return bb::linear(v[0], v[1]); }, {x, w});
  }
  gradcheck([](const Inputs& v) { return bb::linear(v[0].transpose(0, 1), v[1].t(), v[2]); },
            {leaf({5, 4}, 127), leaf({5, 3}, 128), bias});
  // A frozen weight: only x and bias get gradients.
  Tensor wf = w.detach();
  gradcheck([&](const Inputs& v) { return bb::linear(v[0], wf, v[1]); }, {leaf({2, 5}, 129), bias});
}

TEST_CASE("gradcheck: layer_norm, rms_norm", "[autograd][gradcheck]") {
  Tensor x = leaf({3, 6}, 130), w = leaf({6}, 131), b = leaf({6}, 132);
  gradcheck([](const Inputs& v) { return bb::layer_norm(v[0], v[1], v[2]); }, {x, w, b});
  gradcheck([](const Inputs& v) { return bb::layer_norm(v[0], Tensor(), Tensor()); }, {x});
  gradcheck([](const Inputs& v) { return bb::layer_norm(v[0], v[1], Tensor(), 0.1); }, {x, w});
  gradcheck([](const Inputs& v) { return bb::layer_norm(v[0].t(), v[1], v[2]); },
            {leaf({4, 3}, 133), leaf({4}, 134), leaf({4}, 135)});
  gradcheck([](const Inputs& v) { return bb::layer_norm(v[0], v[1], v[2]); },
            {leaf({2, 2, 5}, 136), leaf({5}, 137), leaf({5}, 138)});
  gradcheck([](const Inputs& v) { return bb::rms_norm(v[0], v[1]); }, {x, w});
  gradcheck([](const Inputs& v) { return bb::rms_norm(v[0], Tensor(), 0.01); }, {x});
  gradcheck([](const Inputs& v) { return bb::rms_norm(v[0].transpose(0, 1), v[1]); },
            {leaf({4, 3}, 139), leaf({4}, 140)});
  // Only the parameters require grad.
  Tensor xd = x.detach();
  gradcheck([&](const Inputs& v) { return bb::layer_norm(xd, v[0], v[1]); }, {w, b});
}

TEST_CASE("gradcheck: embedding and cross_entropy", "[autograd][gradcheck]") {
  Tensor w = leaf({5, 3}, 150);
  Tensor id = ids({4, 0, 4, 2, 4, 1}, {2, 3});  // repeated ids accumulate
  gradcheck([&](const Inputs& v) { return bb::embedding(id, v[0]); }, {w});
  gradcheck([&](const Inputs& v) { return bb::embedding(id.t(), v[0].t().contiguous().t()); }, {w});
  gradcheck([&](const Inputs& v) { return bb::embedding(id.to(bb::kI32), v[0]); }, {w});

  Tensor logits = leaf({4, 6}, 151, -3.0, 3.0);
  gradcheck([](const Inputs& v) { return bb::cross_entropy(v[0], ids({0, 5, 2, 2}, {4})); }, {logits});
  gradcheck([](const Inputs& v) { return bb::cross_entropy(v[0], ids({0, -100, 3, -100}, {4})); }, {logits});
  gradcheck([](const Inputs& v) { return bb::cross_entropy(v[0], ids({0, 1, 3, 1}, {4}), 1); }, {logits});
  gradcheck(
      [](const Inputs& v) {
        return bb::cross_entropy(v[0].t().contiguous().t(), ids({1, 2, 3, 4}, {4}));
      },
      {logits});
  gradcheck(
      [](const Inputs& v) {
        return bb::cross_entropy(v[0], ids({0, 1, 2, 0, 1, 2}, {2, 3}));
      },
      {leaf({2, 3, 4}, 152)});
  // A loss that is scaled afterwards: the fused backward uses the incoming gradient.
  gradcheck(
      [](const Inputs& v) {
        return bb::mul(bb::cross_entropy(v[0], ids({3, 0, 1, 5}, {4})), 3.5);
      },
      {logits});
  // All targets ignored: the loss is NaN and the gradient is zero.
  Tensor l2 = leaf({2, 3}, 153);
  Tensor loss = bb::cross_entropy(l2, ids({-100, -100}, {2}));
  REQUIRE(std::isnan(loss.item()));
  loss.backward();
  REQUIRE(l2.grad().to_vector<double>() == std::vector<double>(6, 0.0));
}

TEST_CASE("gradcheck: dropout with a fixed generator", "[autograd][gradcheck]") {
  Tensor x = leaf({4, 5}, 160);
  gradcheck(
      [](const Inputs& v) {
        bb::Generator g(99);  // a fresh generator: the same mask in every call
        return bb::dropout(v[0], 0.4, true, &g);
      },
      {x});
  gradcheck([](const Inputs& v) { return bb::dropout(v[0], 0.4, false); }, {x});
  // The gradient is the mask: zero where the output was dropped, 1/(1-p) elsewhere.
  bb::Generator g(7);
  Tensor y = bb::dropout(x, 0.5, true, &g);
  y.sum().backward();
  auto yv = y.to_vector<double>(), gv = x.grad().to_vector<double>();
  for (size_t i = 0; i < yv.size(); ++i) REQUIRE(gv[i] == (yv[i] == 0.0 ? 0.0 : 2.0));
}

TEST_CASE("gradcheck: cat, stack, split, chunk", "[autograd][gradcheck]") {
  Tensor a = leaf({2, 3}, 170), b = leaf({4, 3}, 171), c = leaf({2, 1}, 172);
  gradcheck([](const Inputs& v) { return bb::cat({v[0], v[1]}, 0); }, {a, b});
  gradcheck([](const Inputs& v) { return bb::cat({v[0], v[1], v[0]}, -1); }, {a, c});
  gradcheck([](const Inputs& v) { return bb::cat({bb::exp(v[0]), v[1].t().t()}, 0); }, {a, b});
  gradcheck([](const Inputs& v) { return bb::stack({v[0], bb::mul(v[1], 2.0)}, 1); }, {a, leaf({2, 3}, 173)});
  gradcheck([](const Inputs& v) { return bb::stack({v[0], v[0]}, -1); }, {a});
  gradcheck(
      [](const Inputs& v) {
        auto p = bb::split(v[0], 2, 0);  // 2, 2, 1 rows
        return bb::cat({bb::mul(p[0], 2.0), bb::exp(p[1]), p[2]}, 0);
      },
      {leaf({5, 3}, 174)});
  gradcheck(
      [](const Inputs& v) {
        auto p = bb::chunk(v[0], 2, 1);  // only the first half is used
        return bb::tanh(p[0]);
      },
      {leaf({3, 4}, 175)});
}

TEST_CASE("gradcheck: scaled_dot_product_attention", "[autograd][gradcheck]") {
  Tensor q = leaf({1, 2, 3, 4}, 180), k = leaf({1, 2, 3, 4}, 181), v = leaf({1, 2, 3, 4}, 182);
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    gradcheck(
        [causal](const Inputs& x) { return bb::scaled_dot_product_attention(x[0], x[1], x[2], causal); },
        {q, k, v});
  }
  // More keys than queries, causal, explicit scale; k and v strided.
  Tensor q2 = leaf({2, 1, 2, 3}, 183), k2 = leaf({2, 4, 1, 3}, 184), v2 = leaf({2, 4, 1, 3}, 185);
  gradcheck(
      [](const Inputs& x) {
        return bb::scaled_dot_product_attention(x[0], x[1].transpose(1, 2), x[2].transpose(1, 2), true, 0.8);
      },
      {q2, k2, v2});
}

TEST_CASE("gradcheck: views and copies", "[autograd][gradcheck]") {
  Tensor x = leaf({2, 3, 4}, 190);
  gradcheck([](const Inputs& v) { return v[0].view({6, 4}); }, {x});
  gradcheck([](const Inputs& v) { return v[0].view({-1}); }, {x});
  gradcheck([](const Inputs& v) { return v[0].reshape({4, 6}); }, {x});
  gradcheck([](const Inputs& v) { return v[0].transpose(0, 2).reshape({-1}); }, {x});  // reshape copies
  gradcheck([](const Inputs& v) { return v[0].transpose(0, 1); }, {x});
  gradcheck([](const Inputs& v) { return v[0].permute({2, 0, 1}); }, {x});
  gradcheck([](const Inputs& v) { return v[0].narrow(2, 1, 2); }, {x});
  gradcheck([](const Inputs& v) { return v[0].slice(1, -2, 3); }, {x});
  gradcheck([](const Inputs& v) { return v[0].select(1, -1); }, {x});
  gradcheck([](const Inputs& v) { return v[0][1]; }, {x});
  gradcheck([](const Inputs& v) { return v[0].unsqueeze(1); }, {x});
  gradcheck([](const Inputs& v) { return v[0].unsqueeze(-1).squeeze(-1); }, {x});
  gradcheck([](const Inputs& v) { return v[0].squeeze(); }, {leaf({1, 3, 1, 2}, 191)});
  gradcheck([](const Inputs& v) { return v[0].squeeze(0); }, {leaf({1, 3}, 192)});
  gradcheck([](const Inputs& v) { return v[0].expand({3, 2, 4}); }, {leaf({2, 1}, 193)});
  gradcheck([](const Inputs& v) { return v[0].expand({2, -1}); }, {leaf({3}, 194)});
  gradcheck([](const Inputs& v) { return v[0].transpose(0, 2).contiguous(); }, {x});
  gradcheck([](const Inputs& v) { return v[0].clone(); }, {x});
  gradcheck([](const Inputs& v) { return v[0].flatten(1); }, {x});
  gradcheck([](const Inputs& v) { return v[0].t(); }, {leaf({3, 5}, 195)});
  // A chain of views, then an op that reads them strided.
  gradcheck(
      [](const Inputs& v) {
        return bb::mul(v[0].permute({1, 0, 2}).narrow(0, 1, 2).select(2, 3), 3.0);
      },
      {x});
  // A view of an op's output, reused.
  gradcheck(
      [](const Inputs& v) {
        Tensor y = bb::exp(v[0]);
        return bb::add(y.t(), y.t().contiguous());
      },
      {leaf({3, 4}, 196)});
}

TEST_CASE("to(dtype) passes the gradient back in the input's dtype", "[autograd]") {
  Tensor x = leaf({3}, 200);
  Tensor y = x.to(bb::kF32);
  REQUIRE(y.requires_grad());
  bb::mul(y, bb::full({3}, 2.0, {bb::kF32})).sum().backward();
  REQUIRE(x.grad().dtype() == bb::kF64);
  REQUIRE(x.grad().to_vector<double>() == std::vector<double>(3, 2.0));
  // Conversions to integer types cut the graph.
  REQUIRE_FALSE(x.to(bb::kI64).requires_grad());
}

// ---- engine edge cases -----------------------------------------------------------------------------

TEST_CASE("a tensor used twice and shared subexpressions", "[autograd][engine]") {
  Tensor x = leaf({4}, 210);
  auto xv = x.to_vector<double>();
  bb::mul(x, x).sum().backward();
  auto g = x.grad().to_vector<double>();
  for (size_t i = 0; i < 4; ++i) REQUIRE(g[i] == Approx(2 * xv[i]).epsilon(1e-14));

  Tensor x2 = leaf({4}, 211);
  auto x2v = x2.to_vector<double>();
  Tensor y = bb::mul(x2, 2.0);
  Tensor z = bb::add(bb::mul(y, y), y);  // 4x^2 + 2x
  z.sum().backward();
  auto g2 = x2.grad().to_vector<double>();
  for (size_t i = 0; i < 4; ++i) REQUIRE(g2[i] == Approx(8 * x2v[i] + 2).epsilon(1e-14));
  REQUIRE_FALSE(y.grad().defined());  // non-leaves keep no .grad
  gradcheck(
      [](const Inputs& v) {
        Tensor yy = bb::mul(v[0], 2.0);
        return bb::add(bb::mul(yy, yy), bb::exp(yy));
      },
      {x2});
  // A diamond with uneven depths.
  gradcheck(
      [](const Inputs& v) {
        Tensor a = bb::tanh(v[0]);
        Tensor b = bb::exp(bb::mul(a, 0.5));
        return bb::mul(bb::add(a, b), bb::sum(a));
      },
      {leaf({3}, 212)});
}

TEST_CASE("gradients accumulate across backward passes", "[autograd][engine]") {
  Tensor x = leaf({3}, 220);
  auto xv = x.to_vector<double>();
  bb::mul(x, 3.0).sum().backward();
  REQUIRE(x.grad().to_vector<double>() == std::vector<double>(3, 3.0));
  bb::mul(x, x).sum().backward();
  auto g = x.grad().to_vector<double>();
  for (size_t i = 0; i < 3; ++i) REQUIRE(g[i] == Approx(3 + 2 * xv[i]).epsilon(1e-14));
  // The grad is a fresh contiguous tensor, even when the incoming gradient is strided.
  REQUIRE(x.grad().is_contiguous());
  x.set_grad(Tensor());
  REQUIRE_FALSE(x.grad().defined());
  bb::sum(x).backward();
  REQUIRE(x.grad().to_vector<double>() == std::vector<double>(3, 1.0));
  REQUIRE(x.grad().strides() == Shape{1});
  // Backward from a leaf itself.
  Tensor s = bb::full({}, 2.0, {bb::kF64, bb::Device::cpu(), true});
  s.backward();
  REQUIRE(s.grad().item() == 1.0);
  // An explicit gradient for a non-scalar output.
  Tensor v = leaf({2, 2}, 221);
  bb::mul(v, 2.0).backward(bb::from_vector<double>({1, 2, 3, 4}, {2, 2}));
  REQUIRE(v.grad().to_vector<double>() == std::vector<double>{2, 4, 6, 8});
}

TEST_CASE("no-grad regions and detach", "[autograd][engine]") {
  Tensor x = leaf({3}, 230);
  {
    bb::NoGradGuard g;
    Tensor y = bb::mul(x, 2.0);
    REQUIRE_FALSE(y.requires_grad());
    REQUIRE(y.grad_fn() == nullptr);
    REQUIRE_FALSE(x.view({3, 1}).requires_grad());
    {
      bb::NoGradGuard inner;
      REQUIRE_FALSE(bb::grad_enabled());
    }
    REQUIRE_FALSE(bb::grad_enabled());  // the inner guard restores "off", not "on"
  }
  REQUIRE(bb::grad_enabled());
  Tensor y = bb::mul(x, 2.0);
  REQUIRE(y.requires_grad());
  REQUIRE_FALSE(y.is_leaf());
  REQUIRE(y.grad_fn() != nullptr);
  REQUIRE(y.grad_fn()->name() == "mul_scalar");
  // Nothing requires grad: nothing recorded.
  Tensor c = bb::ones({3}, {bb::kF64});
  REQUIRE_FALSE(bb::exp(c).requires_grad());
  REQUIRE_FALSE(bb::add(c, c).requires_grad());
  // detach shares storage but cuts the graph: d(x.detach() * x)/dx = x.
  Tensor d = x.detach();
  REQUIRE_FALSE(d.requires_grad());
  REQUIRE(d.is_leaf());
  REQUIRE(d.data_ptr() == x.data_ptr());
  bb::mul(d, x).sum().backward();
  REQUIRE(bbtest::max_abs_diff(x.grad(), d) == 0.0);
  REQUIRE_FALSE(d.grad().defined());
  // set_grad_enabled toggles the same state the guard uses.
  bb::set_grad_enabled(false);
  REQUIRE_FALSE(bb::mul(x, 2.0).requires_grad());
  bb::set_grad_enabled(true);
  REQUIRE(bb::mul(x, 2.0).requires_grad());
}

TEST_CASE("requires_grad_ rules", "[autograd][engine]") {
  REQUIRE_THROWS_AS(bb::zeros({2}, {bb::kI32}).requires_grad_(), bb::DTypeError);
  REQUIRE_THROWS_AS(bb::zeros({2}, {bb::kBool}).requires_grad_(), bb::DTypeError);
  REQUIRE_THROWS_AS(bb::zeros({2}, {bb::kI64, bb::Device::cpu(), true}), bb::DTypeError);
  for (auto dt : {bb::kF32, bb::kF64, bb::kBF16, bb::kF16})
    REQUIRE(bb::zeros({2}, {dt}).requires_grad_().requires_grad());
  Tensor x = leaf({2}, 240);
  Tensor y = bb::mul(x, 2.0);
  REQUIRE_THROWS_AS(y.requires_grad_(false), bb::ValueError);
  x.requires_grad_(false);
  REQUIRE_FALSE(x.requires_grad());
  REQUIRE_FALSE(bb::mul(x, 2.0).requires_grad());
}

TEST_CASE("backward twice needs retain_graph", "[autograd][engine]") {
  Tensor x = leaf({3}, 250);
  Tensor loss = bb::exp(x).sum();
  loss.backward();
  auto g1 = x.grad().to_vector<double>();
  REQUIRE_THROWS_AS(loss.backward(), bb::Error);
  REQUIRE_THROWS_WITH(loss.backward(), Contains("retain_graph"));
  Tensor x2 = leaf({3}, 251);
  Tensor loss2 = bb::exp(x2).sum();
  loss2.backward(Tensor(), true);
  loss2.backward(Tensor(), true);
  loss2.backward();
  auto g2 = x2.grad().to_vector<double>();
  auto e = bb::exp(x2.detach()).to_vector<double>();
  for (size_t i = 0; i < 3; ++i) REQUIRE(g2[i] == Approx(3 * e[i]).epsilon(1e-14));
  REQUIRE_THROWS_WITH(loss2.backward(), Contains("retain_graph"));
  // A graph whose only node is a leaf's accumulator can be run again.
  Tensor s = leaf({}, 252);
  s.backward();
  s.backward();
  REQUIRE(s.grad().item() == 2.0);
}

TEST_CASE("backward argument checks", "[autograd][engine]") {
  Tensor x = leaf({2, 3}, 260);
  Tensor y = bb::mul(x, 2.0);
  REQUIRE_THROWS_AS(y.backward(), bb::ShapeError);
  REQUIRE_THROWS_WITH(y.backward(), Contains("backward") && Contains("[2, 3]"));
  REQUIRE_THROWS_AS(y.backward(bb::ones({3, 2}, {bb::kF64})), bb::ShapeError);
  REQUIRE_THROWS_AS(bb::ones({1}).backward(), bb::ValueError);
  REQUIRE_THROWS_AS(bb::autograd::backward({y}, {}), bb::ValueError);
  REQUIRE_THROWS_AS(x.set_grad(bb::ones({3}, {bb::kF64})), bb::ShapeError);
  // Two roots at once.
  Tensor a = bb::sum(bb::mul(x, 2.0)), b = bb::sum(bb::mul(x, x));
  bb::autograd::backward({a, b}, {Tensor(), Tensor()});
  auto xv = x.to_vector<double>(), g = x.grad().to_vector<double>();
  for (size_t i = 0; i < 6; ++i) REQUIRE(g[i] == Approx(2 + 2 * xv[i]).epsilon(1e-14));
}

namespace {
// x^3 with a hand-written backward, through the custom Function API.
struct Cube : bb::autograd::Function<Cube> {
  static Tensor forward(bb::autograd::Context& ctx, const std::vector<Tensor>& in) {
    ctx.save(in[0]);
    REQUIRE_FALSE(bb::grad_enabled());  // forward runs without recording
    return bb::mul(bb::mul(in[0], in[0]), in[0]);
  }
  static std::vector<Tensor> backward(bb::autograd::Context& ctx, const Tensor& g) {
    const Tensor& x = ctx.saved(0);
    return {bb::mul(bb::mul(g, bb::mul(x, x)), 3.0)};
  }
};

// a * b where only a gets a gradient: b's edge gets an undefined one.
struct LeftOnly : bb::autograd::Function<LeftOnly> {
  static Tensor forward(bb::autograd::Context& ctx, const std::vector<Tensor>& in) {
    ctx.save(in[1]);
    return bb::mul(in[0], in[1]);
  }
  static std::vector<Tensor> backward(bb::autograd::Context& ctx, const Tensor& g) {
    return {bb::mul(g, ctx.saved(0)), Tensor()};
  }
};
}  // namespace

TEST_CASE("custom autograd::Function", "[autograd][engine]") {
  Tensor x = leaf({2, 3}, 270);
  Tensor y = Cube::apply({x}, "cube");
  REQUIRE(y.requires_grad());
  REQUIRE(y.grad_fn()->name() == "cube");
  auto xv = x.to_vector<double>(), yv = y.to_vector<double>();
  for (size_t i = 0; i < 6; ++i) REQUIRE(yv[i] == Approx(xv[i] * xv[i] * xv[i]).epsilon(1e-14));
  gradcheck([](const Inputs& v) { return Cube::apply({v[0]}); }, {x});
  gradcheck([](const Inputs& v) { return bb::exp(Cube::apply({bb::tanh(v[0])})); }, {x});
  {
    bb::NoGradGuard g;
    REQUIRE_FALSE(Cube::apply({x}).requires_grad());
  }
  bb::autograd::Context ctx;
  REQUIRE_THROWS_AS(ctx.saved(0), bb::IndexError);
  // The node keeps its own copy of the name.
  Tensor z;
  {
    std::string name = "cube_from_a_std_string_that_is_not_short";
    z = Cube::apply({x}, name.c_str());
    name.assign(name.size(), 'x');
  }
  REQUIRE(z.grad_fn()->name() == "cube_from_a_std_string_that_is_not_short");
}

TEST_CASE("branches without a gradient path do not hang the engine", "[autograd][engine]") {
  Tensor a = leaf({3}, 280);
  Tensor b = bb::ones({3}, {bb::kF64});
  Tensor z = bb::mul(a, b);
  z.sum().backward();
  REQUIRE(a.grad().to_vector<double>() == std::vector<double>(3, 1.0));
  REQUIRE_FALSE(b.grad().defined());
  // One input path computed under no_grad.
  Tensor x = leaf({3}, 281);
  Tensor y = bb::mul(x, 2.0);
  Tensor c;
  {
    bb::NoGradGuard g;
    c = bb::mul(y, 3.0);
  }
  bb::mul(y, c).sum().backward();
  auto xv = x.to_vector<double>(), g = x.grad().to_vector<double>();
  for (size_t i = 0; i < 3; ++i) REQUIRE(g[i] == Approx(12 * xv[i]).epsilon(1e-14));
  // A node that returns no gradient for an input that requires one: the leaf below it
  // gets nothing, the rest of the graph still finishes.
  Tensor p = leaf({3}, 282), q = leaf({3}, 283);
  Tensor q2 = bb::exp(q);
  Tensor out = bb::add(LeftOnly::apply({p, q2}), bb::mul(p, 2.0));
  out.sum().backward();
  auto q2v = q2.to_vector<double>(), gp = p.grad().to_vector<double>();
  for (size_t i = 0; i < 3; ++i) REQUIRE(gp[i] == Approx(q2v[i] + 2).epsilon(1e-14));
  REQUIRE_FALSE(q.grad().defined());
}

TEST_CASE("leaf gradients are never aliased", "[autograd][engine]") {
  Tensor a = leaf({2, 2}, 290), b = leaf({2, 2}, 291);
  bb::add(a, b).sum().backward();  // add's backward hands the same gradient to both
  REQUIRE(a.grad().data_ptr() != b.grad().data_ptr());
  {
    bb::NoGradGuard g;
    a.grad().mul_(5.0);
  }
  REQUIRE(a.grad().to_vector<double>() == std::vector<double>(4, 5.0));
  REQUIRE(b.grad().to_vector<double>() == std::vector<double>(4, 1.0));
  // Nor aliased with an explicit root gradient.
  Tensor c = leaf({2}, 292);
  Tensor root_grad = bb::ones({2}, {bb::kF64});
  bb::add(c, 0.0).backward(root_grad);
  {
    bb::NoGradGuard g;
    c.grad().fill_(7.0);
  }
  REQUIRE(root_grad.to_vector<double>() == std::vector<double>{1, 1});
  Tensor d = leaf({2}, 293);
  d.backward(root_grad);
  REQUIRE(d.grad().data_ptr() != root_grad.data_ptr());
}

TEST_CASE("gradient-ready hooks", "[autograd][engine][hooks]") {
  SECTION("once per backward per leaf, with the complete gradient") {
    Tensor x = leaf({3}, 300);
    auto xv = x.to_vector<double>();
    int calls = 0;
    std::vector<double> seen;
    x.register_grad_ready_hook([&](const Tensor& p) {
      ++calls;
      REQUIRE(p.same(x));
      seen = p.grad().to_vector<double>();
    });
    // x reaches the loss through three paths; the hook must see their sum.
    Tensor loss = bb::add(bb::add(bb::mul(x, x).sum(), bb::mul(x, 3.0).sum()), bb::exp(x).sum());
    loss.backward();
    REQUIRE(calls == 1);
    for (size_t i = 0; i < 3; ++i) REQUIRE(seen[i] == Approx(2 * xv[i] + 3 + std::exp(xv[i])).epsilon(1e-14));
    bb::mul(x, 2.0).sum().backward();
    REQUIRE(calls == 2);
    for (size_t i = 0; i < 3; ++i) REQUIRE(seen[i] == Approx(2 * xv[i] + 5 + std::exp(xv[i])).epsilon(1e-14));
    REQUIRE_THROWS_AS(bb::mul(x, 2.0).register_grad_ready_hook([](const Tensor&) {}), bb::ValueError);
    REQUIRE_THROWS_AS(bb::ones({2}).register_grad_ready_hook([](const Tensor&) {}), bb::ValueError);
  }
  SECTION("parameters of a chain of linears fire in reverse order of use") {
    Tensor w1 = leaf({4, 3}, 310), b1 = leaf({4}, 311), w2 = leaf({5, 4}, 312), b2 = leaf({5}, 313);
    Tensor w3 = leaf({2, 5}, 314), b3 = leaf({2}, 315);
    std::vector<std::string> order;
    std::map<std::string, int> count;
    std::vector<std::pair<std::string, Tensor>> params = {{"w1", w1}, {"b1", b1}, {"w2", w2},
                                                          {"b2", b2}, {"w3", w3}, {"b3", b3}};
    for (auto& [name, p] : params) {
      std::string nm = name;
      p.register_grad_ready_hook([&order, &count, nm](const Tensor& t) {
        REQUIRE(t.grad().defined());
        order.push_back(nm);
        ++count[nm];
      });
    }
    Tensor x = leaf({6, 3}, 316).detach();
    Tensor h = bb::tanh(bb::linear(x, w1, b1));
    h = bb::tanh(bb::linear(h, w2, b2));
    bb::linear(h, w3, b3).sum().backward();
    REQUIRE(order.size() == 6);
    for (auto& np : params) REQUIRE(count[np.first] == 1);
    auto pos = [&](const std::string& n) { return std::find(order.begin(), order.end(), n) - order.begin(); };
    INFO(order[0] << " " << order[1] << " " << order[2] << " " << order[3] << " " << order[4] << " "
                  << order[5]);
    // Layer 3's parameters first, layer 1's last; within a layer, the later input first.
    REQUIRE(order == std::vector<std::string>{"b3", "w3", "b2", "w2", "b1", "w1"});
    REQUIRE(std::max(pos("w3"), pos("b3")) < std::min(pos("w2"), pos("b2")));
    REQUIRE(std::max(pos("w2"), pos("b2")) < std::min(pos("w1"), pos("b1")));
  }
}

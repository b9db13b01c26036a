// Bad input must throw the right barbell::Error subclass with a message that names the
// op and the shapes: mismatched shapes and dtypes, undefined tensors, bad ids, devices.
#include <cctype>
#include <functional>
#include <string>

#include "testing.hpp"

namespace bb = barbell;
using bb::Shape;
using bb::Tensor;
using Catch::Contains;

namespace {
Tensor f32(const Shape& s) { return bb::ones(s, {bb::kF32}); }
Tensor f64(const Shape& s) { return bb::ones(s, {bb::kF64}); }
Tensor i64(const Shape& s) { return bb::zeros(s, {bb::kI64}); }
Tensor i32(const Shape& s) { return bb::zeros(s, {bb::kI32}); }
Tensor boolean(const Shape& s) { return bb::ones(s, {bb::kBool}); }
}  // namespace

TEST_CASE("elementwise ops: mismatched shapes", "[errors][shape]") {
  Tensor a = f32({2, 3}), b = f32({4, 3});
  REQUIRE_THROWS_AS(bb::add(a, b), bb::ShapeError);
  REQUIRE_THROWS_WITH(bb::add(a, b), Contains("add") && Contains("[2, 3]") && Contains("[4, 3]"));
  REQUIRE_THROWS_WITH(a + b, Contains("add") && Contains("[2, 3]") && Contains("[4, 3]"));
  REQUIRE_THROWS_WITH(bb::sub(a, b), Contains("sub") && Contains("[2, 3]") && Contains("[4, 3]"));
  REQUIRE_THROWS_WITH(bb::mul(a, b), Contains("mul") && Contains("[2, 3]") && Contains("[4, 3]"));
  REQUIRE_THROWS_WITH(bb::div(a, b), Contains("div") && Contains("[2, 3]") && Contains("[4, 3]"));
  REQUIRE_THROWS_WITH(bb::pow(a, b), Contains("pow") && Contains("[2, 3]") && Contains("[4, 3]"));
  REQUIRE_THROWS_WITH(bb::eq(a, b), Contains("eq") && Contains("[2, 3]") && Contains("[4, 3]"));
  REQUIRE_THROWS_AS(bb::where(boolean({2, 3}), a, b), bb::ShapeError);
  REQUIRE_THROWS_WITH(bb::where(boolean({5}), a, a),
                      Contains("where") && Contains("[5]") && Contains("[2, 3]"));
  REQUIRE_THROWS_AS(bb::masked_fill(a, boolean({4}), 0.0), bb::ShapeError);
  REQUIRE_THROWS_WITH(bb::masked_fill(a, boolean({3, 1, 1}), 0.0),
                      Contains("masked_fill") && Contains("[3, 1, 1]") && Contains("[2, 3]"));
  REQUIRE_THROWS_WITH(bb::sum_to(a, {4}), Contains("sum_to") && Contains("[2, 3]") && Contains("[4]"));
  REQUIRE_THROWS_AS(bb::sum_to(a, {1, 2, 3}), bb::ShapeError);
}

TEST_CASE("matmul, linear, norms, attention: mismatched shapes", "[errors][shape]") {
  REQUIRE_THROWS_AS(bb::matmul(f32({4, 8}), f32({7, 3})), bb::ShapeError);
  REQUIRE_THROWS_WITH(bb::matmul(f32({4, 8}), f32({7, 3})), Contains("matmul") &&
                                                                Contains("inner dimensions") &&
                                                                Contains("[4, 8]") && Contains("[7, 3]"));
  REQUIRE_THROWS_WITH(bb::matmul(f32({5}), f32({4})),
                      Contains("matmul") && Contains("[5]") && Contains("[4]"));
  REQUIRE_THROWS_WITH(bb::matmul(f32({5}), f32({4, 3})),
                      Contains("matmul") && Contains("[5]") && Contains("[4, 3]"));
  REQUIRE_THROWS_WITH(bb::matmul(f32({2, 4}), f32({3})),
                      Contains("matmul") && Contains("[2, 4]") && Contains("[3]"));
  REQUIRE_THROWS_AS(bb::matmul(f32({2, 4, 8}), f32({3, 8, 2})), bb::ShapeError);
  REQUIRE_THROWS_WITH(bb::matmul(f32({2, 4, 8}), f32({3, 8, 2})),
                      Contains("matmul") && Contains("[2, 4, 8]") && Contains("[3, 8, 2]"));
  REQUIRE_THROWS_AS(bb::matmul(f32({}), f32({3})), bb::ShapeError);
  REQUIRE_THROWS_WITH(bb::linear(f32({2, 5}), f32({4, 6})),
                      Contains("linear") && Contains("[2, 5]") && Contains("[4, 6]"));
  REQUIRE_THROWS_AS(bb::linear(f32({2, 5}), f32({5})), bb::ShapeError);
  REQUIRE_THROWS_WITH(bb::linear(f32({2, 5}), f32({4, 5}), f32({3})),
                      Contains("linear") && Contains("bias") && Contains("[3]") && Contains("[4, 5]"));
  REQUIRE_THROWS_WITH(bb::layer_norm(f32({2, 4}), f32({5}), f32({4})),
                      Contains("layer_norm") && Contains("weight") && Contains("[5]") && Contains("[2, 4]"));
  REQUIRE_THROWS_WITH(bb::layer_norm(f32({2, 4}), f32({4}), f32({2, 4})),
                      Contains("layer_norm") && Contains("bias") && Contains("[2, 4]"));
  REQUIRE_THROWS_AS(bb::layer_norm(f32({}), Tensor(), Tensor()), bb::ShapeError);
  REQUIRE_THROWS_WITH(bb::rms_norm(f32({3, 4}), f32({3})),
                      Contains("rms_norm") && Contains("[3]") && Contains("[3, 4]"));
  REQUIRE_THROWS_WITH(bb::rms_norm(f32({3, 0}), Tensor()), Contains("rms_norm") && Contains("[3, 0]"));
  const char* sdpa = "scaled_dot_product_attention";
  REQUIRE_THROWS_WITH(bb::scaled_dot_product_attention(f32({2, 3, 4}), f32({2, 3, 4}), f32({2, 3, 4})),
                      Contains(sdpa) && Contains("[2, 3, 4]"));
  REQUIRE_THROWS_WITH(
      bb::scaled_dot_product_attention(f32({1, 2, 3, 4}), f32({1, 2, 3, 5}), f32({1, 2, 3, 5})),
      Contains(sdpa) && Contains("[1, 2, 3, 4]") && Contains("[1, 2, 3, 5]"));
  REQUIRE_THROWS_AS(bb::scaled_dot_product_attention(f32({1, 2, 3, 4}), f32({1, 2, 3, 4}), f32({1, 2, 5, 4})),
                    bb::ShapeError);
  REQUIRE_THROWS_AS(bb::scaled_dot_product_attention(f32({1, 2, 3, 4}), f32({1, 3, 3, 4}), f32({1, 3, 3, 4})),
                    bb::ShapeError);
}

TEST_CASE("embedding, cross_entropy, joins, optimizer ops: mismatched shapes", "[errors][shape]") {
  REQUIRE_THROWS_WITH(bb::embedding(i64({3}), f32({5})), Contains("embedding") && Contains("[5]"));
  REQUIRE_THROWS_AS(bb::embedding(i64({3}), f32({5, 2, 2})), bb::ShapeError);
  REQUIRE_THROWS_AS(bb::cross_entropy(f32({4, 5}), i64({3})), bb::ShapeError);
  REQUIRE_THROWS_WITH(bb::cross_entropy(f32({4, 5}), i64({3})),
                      Contains("cross_entropy") && Contains("[4, 5]") && Contains("[3]"));
  REQUIRE_THROWS_AS(bb::cross_entropy(f32({4, 5}), i64({4, 5})), bb::ShapeError);
  REQUIRE_THROWS_AS(bb::cross_entropy(f32({}), i64({})), bb::ShapeError);
  REQUIRE_THROWS_AS(bb::cat({f32({2, 3}), f32({2, 4})}, 0), bb::ShapeError);
  REQUIRE_THROWS_WITH(bb::cat({f32({2, 3}), f32({2, 4})}, 0),
                      Contains("cat") && Contains("[2, 4]") && Contains("[2, 3]"));
  REQUIRE_THROWS_AS(bb::cat({f32({2, 3}), f32({2, 3, 1})}, 0), bb::ShapeError);
  REQUIRE_THROWS_WITH(bb::cat({f32({}), f32({})}, 0), Contains("cat") && Contains("[]"));
  REQUIRE_THROWS_WITH(bb::stack({f32({2, 3}), f32({3, 2})}),
                      Contains("stack") && Contains("[3, 2]") && Contains("[2, 3]"));
  Tensor p = f32({3}), m = f32({3}), v = f32({3});
  bb::AdamWParams hp{0.1, 0.9, 0.999, 1e-8, 0.0, 1};
  REQUIRE_THROWS_WITH(bb::adamw_step_(p, f32({4}), m, v, hp),
                      Contains("adamw_step_") && Contains("[3]") && Contains("[4]"));
  Tensor m4 = f32({4});
  REQUIRE_THROWS_AS(bb::adamw_step_(p, f32({3}), m4, v, hp), bb::ShapeError);
  Tensor strided = f32({3, 2}).select(1, 0);
  REQUIRE_THROWS_AS(bb::adamw_step_(strided, f32({3}), m, v, hp), bb::ShapeError);
}

TEST_CASE("tensor methods: bad shapes", "[errors][shape]") {
  Tensor a = f32({2, 3});
  REQUIRE_THROWS_AS(a.view({4}), bb::ShapeError);
  REQUIRE_THROWS_WITH(a.view({4}), Contains("view") && Contains("[2, 3]") && Contains("[4]"));
  REQUIRE_THROWS_WITH(a.reshape({5, -1}), Contains("reshape") && Contains("[2, 3]"));
  REQUIRE_THROWS_AS(a.view({-1, -1}), bb::ShapeError);
  REQUIRE_THROWS_AS(a.view({-2, 3}), bb::ShapeError);
  REQUIRE_THROWS_WITH(a.t().view({6}), Contains("view") && Contains("[3, 2]"));
  REQUIRE_THROWS_WITH(f32({3}).expand({2, 4}), Contains("expand") && Contains("[3]") && Contains("[2, 4]"));
  REQUIRE_THROWS_AS(a.expand({3}), bb::ShapeError);
  REQUIRE_THROWS_WITH(a.permute({0}), Contains("permute") && Contains("[2, 3]"));
  REQUIRE_THROWS_AS(a.permute({0, 0}), bb::ShapeError);
  REQUIRE_THROWS_WITH(a.copy_(f32({4})), Contains("copy_") && Contains("[4]") && Contains("[2, 3]"));
  REQUIRE_THROWS_WITH(a.item(), Contains("item") && Contains("[2, 3]"));
  REQUIRE_THROWS_WITH(bb::from_vector<float>({1, 2, 3}, {2, 2}),
                      Contains("from_vector") && Contains("[2, 2]"));
  REQUIRE_THROWS_WITH(bb::zeros({2, -1}), Contains("[2, -1]"));
  REQUIRE_THROWS_AS(bb::empty({-3}), bb::ShapeError);
  REQUIRE_THROWS_AS(bb::randn({-2}), bb::ShapeError);
  REQUIRE_THROWS_AS(bb::rand({3, -2}), bb::ShapeError);
  REQUIRE_THROWS_AS(bb::randint(0, 5, {-1}), bb::ShapeError);
  Tensor w = bb::zeros({2, 3}, {bb::kF32, bb::Device::cpu(), true});
  REQUIRE_THROWS_WITH(w.set_grad(f32({3, 2})),
                      Contains("set_grad") && Contains("[3, 2]") && Contains("[2, 3]"));
  REQUIRE_THROWS_AS(w.set_grad(f64({2, 3})), bb::DTypeError);
}

TEST_CASE("mismatched and wrong dtypes", "[errors][dtype]") {
  Tensor a = f32({2}), b = f64({2});
  REQUIRE_THROWS_AS(bb::add(a, b), bb::DTypeError);
  REQUIRE_THROWS_WITH(bb::add(a, b),
                      Contains("add") && Contains("f32") && Contains("f64") && Contains("[2]"));
  REQUIRE_THROWS_WITH(bb::sub(a, b), Contains("sub") && Contains("f64"));
  REQUIRE_THROWS_WITH(bb::mul(a, b), Contains("mul") && Contains("f64"));
  REQUIRE_THROWS_WITH(bb::div(a, b), Contains("div") && Contains("f64"));
  REQUIRE_THROWS_WITH(bb::pow(a, b), Contains("pow") && Contains("f64"));
  REQUIRE_THROWS_WITH(bb::eq(a, b), Contains("eq") && Contains("f64"));
  REQUIRE_THROWS_AS(bb::eq(a, i64({2})), bb::DTypeError);
  // Integer division would trap on a zero divisor: refused.
  REQUIRE_THROWS_WITH(bb::div(i64({2}), i64({2})), Contains("div") && Contains("i64"));
  REQUIRE_THROWS_AS(bb::div(i32({2}), i32({2})), bb::DTypeError);
  REQUIRE_THROWS_WITH(bb::where(f32({2}), a, a), Contains("where") && Contains("bool"));
  REQUIRE_THROWS_AS(bb::where(boolean({2}), a, b), bb::DTypeError);
  REQUIRE_THROWS_WITH(bb::matmul(f32({2, 2}), f64({2, 2})), Contains("matmul") && Contains("f64"));
  REQUIRE_THROWS_WITH(bb::matmul(i64({2, 2}), i64({2, 2})), Contains("matmul") && Contains("i64"));
  REQUIRE_THROWS_AS(bb::linear(f32({2, 3}), f64({4, 3})), bb::DTypeError);
  REQUIRE_THROWS_WITH(bb::linear(f32({2, 3}), f32({4, 3}), f64({4})), Contains("linear") && Contains("f64"));
  REQUIRE_THROWS_WITH(bb::layer_norm(f32({2, 3}), f64({3}), Tensor()),
                      Contains("layer_norm") && Contains("f64"));
  REQUIRE_THROWS_WITH(bb::layer_norm(i64({2, 3}), Tensor(), Tensor()),
                      Contains("layer_norm") && Contains("i64"));
  REQUIRE_THROWS_WITH(bb::rms_norm(f32({2, 3}), f64({3})), Contains("rms_norm") && Contains("f64"));
  REQUIRE_THROWS_WITH(bb::embedding(f32({3}), f32({5, 2})), Contains("embedding") && Contains("f32"));
  REQUIRE_THROWS_WITH(bb::embedding(i64({3}), i64({5, 2})), Contains("embedding") && Contains("i64"));
  REQUIRE_THROWS_WITH(bb::cross_entropy(f32({3, 4}), f32({3})), Contains("cross_entropy") && Contains("f32"));
  REQUIRE_THROWS_WITH(bb::cross_entropy(i64({3, 4}), i64({3})), Contains("cross_entropy") && Contains("i64"));
  REQUIRE_THROWS_WITH(bb::softmax(i64({3})), Contains("softmax") && Contains("i64"));
  REQUIRE_THROWS_WITH(bb::log_softmax(i32({3})), Contains("log_softmax") && Contains("i32"));
  REQUIRE_THROWS_WITH(bb::mean(i64({3})), Contains("mean") && Contains("i64"));
  // exp, log, sqrt, rsqrt, tanh, silu and gelu promote integer tensors to f32 (as PyTorch);
  // these keep refusing them.
  for (auto [name, op] : std::vector<std::pair<std::string, std::function<Tensor(const Tensor&)>>>{
           {"relu", [](const Tensor& x) { return bb::relu(x); }},
           {"abs", [](const Tensor& x) { return bb::abs(x); }},
           {"dropout", [](const Tensor& x) { return bb::dropout(x, 0.5); }},
       }) {
    INFO(name);
    REQUIRE_THROWS_AS(op(i64({2, 2})), bb::DTypeError);
    REQUIRE_THROWS_WITH(op(i32({2, 2})), Contains(name) && Contains("i32") && Contains("[2, 2]"));
  }
  REQUIRE_THROWS_WITH(bb::neg(boolean({3})), Contains("neg") && Contains("bool"));
  REQUIRE(bb::add(boolean({3}), 1.0).dtype() == bb::kF32);  // promoted, as PyTorch does
  REQUIRE_THROWS_WITH(bb::add(boolean({3}), true), Contains("add") && Contains("bool"));
  REQUIRE_THROWS_WITH(bb::masked_fill(a, f32({2}), 0.0), Contains("masked_fill") && Contains("f32"));
  REQUIRE_THROWS_WITH(bb::cat({a, b}), Contains("cat") && Contains("f64"));
  REQUIRE_THROWS_AS(bb::stack({a, b}), bb::DTypeError);
  REQUIRE_THROWS_AS(bb::scaled_dot_product_attention(f32({1, 1, 2, 2}), f64({1, 1, 2, 2}), f32({1, 1, 2, 2})),
                    bb::DTypeError);
  REQUIRE_THROWS_AS(bb::scaled_dot_product_attention(i64({1, 1, 2, 2}), i64({1, 1, 2, 2}), i64({1, 1, 2, 2})),
                    bb::DTypeError);
  Tensor p = f32({3}), m = f32({3}), v = f32({3}), m64 = f64({3});
  bb::AdamWParams hp{0.1, 0.9, 0.999, 1e-8, 0.0, 1};
  REQUIRE_THROWS_WITH(bb::adamw_step_(p, f64({3}), m, v, hp), Contains("adamw_step_") && Contains("f64"));
  REQUIRE_THROWS_WITH(bb::adamw_step_(p, f32({3}), m64, v, hp), Contains("adamw_step_") && Contains("f32"));
  Tensor pi = i64({3}), mi = i64({3}), vi = i64({3});
  REQUIRE_THROWS_AS(bb::adamw_step_(pi, i64({3}), mi, vi, hp), bb::DTypeError);
  REQUIRE_THROWS_WITH(bb::sum_of_squares({i64({2})}), Contains("sum_of_squares") && Contains("i64"));
  REQUIRE_THROWS_AS(f32({2}).data<double>(), bb::DTypeError);
  REQUIRE_THROWS_WITH(i64({2}).requires_grad_(), Contains("requires_grad_") && Contains("i64"));
  Tensor wgrad = bb::zeros({2}, {bb::kF32, bb::Device::cpu(), true});
  REQUIRE_THROWS_AS(bb::autograd::gradcheck([](const std::vector<Tensor>& x) { return x[0]; }, {wgrad}),
                    bb::DTypeError);
}

TEST_CASE("undefined tensors: every op names itself", "[errors][undefined]") {
  Tensor u, a = f32({2, 2});
  auto check = [](const std::function<void()>& fn, const std::string& op) {
    INFO(op);
    REQUIRE_THROWS_AS(fn(), bb::ValueError);
    REQUIRE_THROWS_WITH(fn(), Contains(op) && Contains("undefined"));
  };
  check([&] { bb::add(u, a); }, "add");
  check([&] { bb::add(a, u); }, "add");
  check([&] { bb::sub(u, a); }, "sub");
  check([&] { bb::mul(u, a); }, "mul");
  check([&] { bb::div(u, a); }, "div");
  check([&] { bb::pow(u, a); }, "pow");
  check([&] { bb::add(u, 1.0); }, "add");
  check([&] { bb::mul(u, 2.0); }, "mul");
  check([&] { bb::pow(u, 2.0); }, "pow");
  check([&] { bb::rsub(u, 1.0); }, "rsub");
  check([&] { bb::rdiv(u, 1.0); }, "rdiv");
  check([&] { bb::neg(u); }, "neg");
  check([&] { bb::exp(u); }, "exp");
  check([&] { bb::log(u); }, "log");
  check([&] { bb::sqrt(u); }, "sqrt");
  check([&] { bb::rsqrt(u); }, "rsqrt");
  check([&] { bb::tanh(u); }, "tanh");
  check([&] { bb::relu(u); }, "relu");
  check([&] { bb::silu(u); }, "silu");
  check([&] { bb::gelu(u); }, "gelu");
  check([&] { bb::abs(u); }, "abs");
  check([&] { bb::eq(a, u); }, "eq");
  check([&] { bb::where(u, a, a); }, "where");
  check([&] { bb::where(boolean({2}), u, a); }, "where");
  check([&] { bb::sum(u); }, "sum");
  check([&] { bb::mean(u, {0}); }, "mean");
  check([&] { bb::max(u, 0); }, "max");
  check([&] { bb::max(u); }, "max");
  check([&] { bb::argmax(u, 0); }, "argmax");
  check([&] { bb::sum_to(u, {1}); }, "sum_to");
  check([&] { bb::softmax(u); }, "softmax");
  check([&] { bb::log_softmax(u); }, "log_softmax");
  check([&] { bb::matmul(u, a); }, "matmul");
  check([&] { bb::matmul(a, u); }, "matmul");
  check([&] { bb::linear(u, a); }, "linear");
  check([&] { bb::linear(a, u); }, "linear");
  check([&] { bb::layer_norm(u, Tensor(), Tensor()); }, "layer_norm");
  check([&] { bb::rms_norm(u, Tensor()); }, "rms_norm");
  check([&] { bb::embedding(u, a); }, "embedding");
  check([&] { bb::embedding(i64({2}), u); }, "embedding");
  check([&] { bb::cross_entropy(u, i64({2})); }, "cross_entropy");
  check([&] { bb::cross_entropy(a, u); }, "cross_entropy");
  check([&] { bb::dropout(u, 0.5); }, "dropout");
  check([&] { bb::cat({a, u}); }, "cat");
  check([&] { bb::cat({u, a}); }, "cat");
  check([&] { bb::stack({a, u}); }, "stack");
  check([&] { bb::split(u, 1); }, "split");
  check([&] { bb::chunk(u, 2); }, "chunk");
  check([&] { bb::masked_fill(u, boolean({2}), 0.0); }, "masked_fill");
  check([&] { bb::masked_fill(a, u, 0.0); }, "masked_fill");
  check([&] { bb::scaled_dot_product_attention(u, a, a); }, "scaled_dot_product_attention");
  Tensor p = f32({3}), m = f32({3}), v = f32({3});
  check([&] { bb::adamw_step_(p, u, m, v, {0.1, 0.9, 0.999, 1e-8, 0.0, 1}); }, "adamw_step_");
  // Methods on an undefined tensor.
  REQUIRE_THROWS_WITH(u.shape(), Contains("undefined"));
  REQUIRE_THROWS_AS(u.view({1}), bb::ValueError);
  REQUIRE_THROWS_AS(u.backward(), bb::ValueError);
}

TEST_CASE("out-of-range ids and indices", "[errors][index]") {
  Tensor w = f32({8, 4});
  Tensor ids = bb::from_vector<int64_t>({1, 7, 10, 2}, {2, 2});
  REQUIRE_THROWS_AS(bb::embedding(ids, w), bb::IndexError);
  REQUIRE_THROWS_WITH(bb::embedding(ids, w), Contains("embedding") && Contains("10") && Contains("[0, 8)"));
  REQUIRE_THROWS_WITH(bb::embedding(bb::from_vector<int32_t>({-1}, {1}), w),
                      Contains("embedding") && Contains("-1"));
  REQUIRE_NOTHROW(bb::embedding(bb::from_vector<int64_t>({0, 7}, {2}), w));
  Tensor logits = f32({3, 5});
  REQUIRE_THROWS_AS(bb::cross_entropy(logits, bb::from_vector<int64_t>({0, 7, 1}, {3})), bb::IndexError);
  REQUIRE_THROWS_WITH(bb::cross_entropy(logits, bb::from_vector<int64_t>({0, 7, 1}, {3})),
                      Contains("cross_entropy") && Contains("7"));
  REQUIRE_THROWS_WITH(bb::cross_entropy(logits, bb::from_vector<int32_t>({0, -5, 1}, {3})),
                      Contains("cross_entropy") && Contains("-5"));
  // -100 is the ignore value, not an error; with another ignore_index, -100 is out of range.
  REQUIRE_NOTHROW(bb::cross_entropy(logits, bb::from_vector<int64_t>({0, -100, 1}, {3})));
  REQUIRE_THROWS_AS(bb::cross_entropy(logits, bb::from_vector<int64_t>({0, -100, 1}, {3}), 2),
                    bb::IndexError);
  Tensor x = f32({2, 3});
  REQUIRE_THROWS_AS(x.select(1, 3), bb::IndexError);
  REQUIRE_THROWS_WITH(x.select(0, -3), Contains("select") && Contains("-3"));
  REQUIRE_THROWS_AS(x.narrow(1, 2, 2), bb::IndexError);
  REQUIRE_THROWS_WITH(x.narrow(0, -1, 1), Contains("narrow") && Contains("[2, 3]"));
  REQUIRE_THROWS_WITH(x.transpose(0, 2), Contains("transpose") && Contains("2"));
  REQUIRE_THROWS_AS(x.unsqueeze(4), bb::IndexError);
  REQUIRE_THROWS_AS(x.squeeze(-3), bb::IndexError);
  REQUIRE_THROWS_AS(x.size(2), bb::IndexError);
  REQUIRE_THROWS_AS(x.stride(-3), bb::IndexError);
  REQUIRE_THROWS_AS(x.permute({0, 2}), bb::IndexError);
  REQUIRE_THROWS_WITH(bb::sum(x, {2}), Contains("sum") && Contains("2"));
  REQUIRE_THROWS_AS(bb::mean(x, {-3}), bb::IndexError);
  REQUIRE_THROWS_WITH(bb::softmax(x, 2), Contains("softmax"));
  REQUIRE_THROWS_AS(bb::max(x, 5), bb::IndexError);
  REQUIRE_THROWS_AS(bb::cat({x, x}, 2), bb::IndexError);
  REQUIRE_THROWS_AS(bb::stack({x, x}, 3), bb::IndexError);
  REQUIRE_THROWS_AS(bb::split(x, 1, 2), bb::IndexError);
  // A 0-d tensor has no dim to index: no out-of-bounds reads.
  Tensor s = bb::scalar_tensor(1.0);
  REQUIRE_THROWS_AS(s.size(0), bb::IndexError);
  REQUIRE_THROWS_AS(s.narrow(0, 0, 1), bb::IndexError);
  REQUIRE_THROWS_AS(s.select(0, 0), bb::IndexError);
  REQUIRE_THROWS_AS(s.transpose(0, 0), bb::IndexError);
  REQUIRE_THROWS_AS(s.squeeze(0), bb::IndexError);
  REQUIRE_THROWS_AS(bb::split(s, 1), bb::IndexError);
  REQUIRE_THROWS_AS(bb::sum(s, {0}), bb::IndexError);
  REQUIRE_NOTHROW(s.unsqueeze(0));
  REQUIRE_NOTHROW(bb::max(s, 0));
  REQUIRE_NOTHROW(bb::softmax(s, 0));
}

TEST_CASE("bad argument values", "[errors][value]") {
  Tensor x = f32({4, 3});
  REQUIRE_THROWS_AS(bb::dropout(x, 1.0), bb::ValueError);
  REQUIRE_THROWS_WITH(bb::dropout(x, -0.1), Contains("dropout") && Contains("-0.1"));
  REQUIRE_THROWS_WITH(bb::split(x, 0), Contains("split"));
  REQUIRE_THROWS_AS(bb::split(x, -1), bb::ValueError);
  REQUIRE_THROWS_WITH(bb::chunk(x, 0), Contains("chunk"));
  REQUIRE_THROWS_WITH(bb::cat({}), Contains("cat"));
  REQUIRE_THROWS_AS(bb::stack({}), bb::ValueError);
  REQUIRE_THROWS_WITH(bb::sum(x, {0, -2}), Contains("sum") && Contains("twice"));
  REQUIRE_THROWS_WITH(x.flatten(1, 0), Contains("flatten"));
  REQUIRE_THROWS_AS(bb::tril_mask(-1, 2), bb::ValueError);
  REQUIRE_THROWS_AS(bb::arange(0.0, 1.0, 0.0), bb::ValueError);
  REQUIRE_THROWS_WITH(bb::randint(5, 2, {3}), Contains("randint"));
  Tensor p = f32({3}), m = f32({3}), v = f32({3});
  REQUIRE_THROWS_WITH(bb::adamw_step_(p, f32({3}), m, v, {0.1, 0.9, 0.999, 1e-8, 0.0, 0}),
                      Contains("adamw_step_") && Contains("step"));
  Tensor w = bb::zeros({2}, {bb::kF32, bb::Device::cpu(), true});
  REQUIRE_THROWS_WITH(w.fill_(1), Contains("fill_") && Contains("requires grad"));
  REQUIRE_THROWS_AS(bb::mul(w, 2.0).requires_grad_(false), bb::ValueError);
}

TEST_CASE("Device::parse rejects bad strings", "[errors][device]") {
  for (const char* bad : {"gpu", "", "CPU", " cpu", "cpu ", "cuda:", "cuda:x", "cuda:-1", "cuda:1:2", "cuda1",
                          "cuda:+1", "cuda:99999999999999999999", "cuda:1 "}) {
    INFO("'" << bad << "'");
    REQUIRE_THROWS_AS(bb::Device::parse(bad), bb::ValueError);
    REQUIRE_THROWS_WITH(bb::Device::parse(bad), Contains("Device::parse"));
  }
}

TEST_CASE("CUDA tensors on a machine without a GPU throw, never crash", "[errors][device]") {
  if (bb::cuda::is_available()) {
    // This check is for GPU-less machines; with a GPU the tensors must simply work.
    REQUIRE(bb::zeros({2}, {bb::kF32, bb::Device::cuda(0)}).is_cuda());
    return;
  }
  // DeviceError or CudaError, with a message that says what was asked for.
  auto mentions_cuda = [](const bb::Error& e) {
    std::string m = e.what();
    for (auto& c : m) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return m.find("cuda") != std::string::npos;
  };
  auto is_device_error = [&](const std::function<void()>& fn) {
    try {
      fn();
    } catch (const bb::DeviceError& e) { return mentions_cuda(e); } catch (const bb::CudaError& e) {
      return mentions_cuda(e);
    }
    return false;
  };
  bb::TensorOptions cuda{bb::kF32, bb::Device::cuda(0)};
  REQUIRE_THROWS_AS(bb::zeros({2}, cuda), bb::Error);
  REQUIRE(is_device_error([&] { bb::zeros({2}, cuda); }));
  REQUIRE(is_device_error([&] { bb::empty({2, 3}, cuda); }));
  REQUIRE(is_device_error([&] { bb::full({2}, 1.0, cuda); }));
  REQUIRE(is_device_error([&] { bb::randn({2}, cuda); }));
  REQUIRE(is_device_error([&] { bb::from_vector<float>({1, 2}, {2}, cuda); }));
  REQUIRE(is_device_error([&] { bb::arange(0.0, 4.0, 1.0, cuda); }));
  REQUIRE(is_device_error([&] { bb::tril_mask(2, 2, bb::Device::cuda(1)); }));
  REQUIRE(is_device_error([&] { f32({2}).to(bb::Device::cuda(0)); }));
  REQUIRE(is_device_error([&] { f32({2}).to(bb::Device::parse("cuda:1"), bb::kBF16); }));
  // The runtime API says so too (DeviceError, whether or not this build has CUDA).
  REQUIRE_THROWS_AS(bb::cuda::properties(0), bb::DeviceError);
  REQUIRE_THROWS_AS(bb::cuda::memory_stats(), bb::DeviceError);
  REQUIRE_THROWS_AS(bb::cuda::Event(), bb::DeviceError);
  REQUIRE_THROWS_AS(bb::cuda::Stream::create(), bb::DeviceError);
  REQUIRE_THROWS_AS(bb::cuda::current_stream(), bb::DeviceError);
  REQUIRE_THROWS_AS(bb::cuda::synchronize(), bb::DeviceError);
  REQUIRE(bb::cuda::device_count() == 0);
  // The process is still fine afterwards.
  REQUIRE(bb::add(f32({2}), f32({2})).to_vector<float>() == std::vector<float>{2, 2});
}

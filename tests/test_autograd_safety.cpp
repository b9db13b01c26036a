// Tests of autograd's safety checks: the version counter that catches saved tensors
// changed in place before backward(), and the checks on what a custom Function's
// backward returns (count, broadcast shapes, dtypes), with errors that name the op.
#include "testing.hpp"

namespace bb = barbell;
using bb::Shape;
using bb::Tensor;
using Catch::Contains;

namespace {
Tensor leaf(const Shape& s, double v = 1.5, bb::DType dt = bb::kF64) {
  return bb::full(s, v, {dt, bb::Device::cpu(), true});
}
}  // namespace

// ---- the version counter ---------------------------------------------------------------

TEST_CASE("changing a saved leaf in place before backward() is reported", "[autograd][version]") {
  Tensor w = leaf({3});
  Tensor loss = (w * w).sum();
  {
    bb::NoGradGuard g;
    w.mul_(2.0);
  }
  std::string m;
  try {
    loss.backward();
  } catch (const bb::ValueError& e) { m = e.what(); }
  INFO(m);
  REQUIRE(m.find("modified by an in-place operation") != std::string::npos);
  REQUIRE(m.find("input 0 of mul") != std::string::npos);
  REQUIRE(m.find("f64 [3]") != std::string::npos);
  REQUIRE(m.find("version 1") != std::string::npos);
  REQUIRE(m.find("version 0") != std::string::npos);
  REQUIRE_FALSE(w.grad().defined());  // nothing was accumulated
}

TEST_CASE("changing the saved output of exp in place is reported", "[autograd][version]") {
  Tensor x = leaf({2, 2});
  Tensor y = bb::exp(x);
  Tensor loss = y.sum();
  {
    bb::NoGradGuard g;
    y.add_(bb::ones({2, 2}, {bb::kF64}));
  }
  REQUIRE_THROWS_WITH(loss.backward(), Contains("result of exp") && Contains("version 1") &&
                                           Contains("saved for backward at version 0"));
}

TEST_CASE("every kind of in-place write through any view is caught", "[autograd][version]") {
  auto writes = std::vector<std::pair<std::string, std::function<void(Tensor&)>>>{
      {"fill_", [](Tensor& t) { t.fill_(0.0); }},
      {"zero_", [](Tensor& t) { t.zero_(); }},
      {"copy_", [](Tensor& t) { t.copy_(bb::zeros(t.shape(), {t.dtype()})); }},
      {"add_", [](Tensor& t) { t.add_(bb::ones(t.shape(), {t.dtype()})); }},
      {"mul_", [](Tensor& t) { t.mul_(3); }},
      {"a view's fill_", [](Tensor& t) { t.narrow(0, 1, 1).fill_(7.0); }},
      {"a detached alias", [](Tensor& t) { t.detach().mul_(2.0); }},
      {"bump_version", [](Tensor& t) { t.bump_version(); }},
  };
  for (auto& [name, write] : writes) {
    INFO(name);
    Tensor a = leaf({3});
    Tensor b = bb::full({3}, 2.0, {bb::kF64});  // saved by mul, does not require grad
    Tensor loss = (a * b).sum();
    {
      bb::NoGradGuard g;
      write(b);
    }
    REQUIRE_THROWS_WITH(loss.backward(), Contains("input 1 of mul"));
  }
}

TEST_CASE("the ops that save tensors check them", "[autograd][version]") {
  struct Case {
    const char* name;
    std::function<Tensor(const Tensor&)> f;
    const char* what;
  };
  const std::vector<Case> cases = {
      {"div", [](const Tensor& x) { return bb::div(bb::ones({3}, {bb::kF64}), x); }, "div"},
      {"log", [](const Tensor& x) { return bb::log(x); }, "log"},
      {"sqrt", [](const Tensor& x) { return bb::sqrt(x); }, "sqrt"},
      {"tanh", [](const Tensor& x) { return bb::tanh(x); }, "tanh"},
      {"gelu", [](const Tensor& x) { return bb::gelu(x); }, "gelu"},
      {"pow", [](const Tensor& x) { return bb::pow(x, 3.0); }, "pow"},
      {"softmax",
       [](const Tensor& x) {
         return bb::softmax(x.view({1, 3}));
       },
       "softmax"},
      {"matmul",
       [](const Tensor& x) {
         return bb::matmul(x.view({1, 3}), bb::ones({3, 2}, {bb::kF64}));
       },
       "matmul"},
      {"layer_norm",
       [](const Tensor& x) {
         return bb::layer_norm(x.view({1, 3}), Tensor(), Tensor());
       },
       "layer_norm"},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    Tensor x = leaf({3}, 0.5);
    Tensor out = c.f(x);
    {
      bb::NoGradGuard g;
      // softmax saves its output; the others save their input.
      if (std::string(c.name) == "softmax" || std::string(c.name) == "tanh" || std::string(c.name) == "sqrt")
        out.mul_(1.0);
      else
        x.mul_(1.0);
    }
    REQUIRE_THROWS_WITH(out.sum().backward(), Contains(c.what) && Contains("in-place"));
  }
}

TEST_CASE("in-place changes that autograd does not need are fine", "[autograd][version]") {
  // add saves nothing: changing its inputs afterwards is allowed (as in PyTorch).
  Tensor a = leaf({3}), b = leaf({3});
  Tensor loss = (a + b).sum();
  {
    bb::NoGradGuard g;
    a.mul_(10.0);
  }
  loss.backward();
  REQUIRE(a.grad().to_vector<double>() == std::vector<double>{1, 1, 1});
  // A change before the op runs, or after backward, is fine too.
  Tensor w = leaf({3});
  {
    bb::NoGradGuard g;
    w.mul_(2.0);
  }
  Tensor l2 = (w * w).sum();
  l2.backward();
  REQUIRE(w.grad().to_vector<double>() == std::vector<double>{6, 6, 6});
  {
    bb::NoGradGuard g;
    w.mul_(2.0);
  }
  // A clone is a separate tensor.
  Tensor c = w.detach().clone().requires_grad_();
  Tensor l3 = (c * w.detach()).sum();
  {
    bb::NoGradGuard g;
    w.zero_();
  }
  REQUIRE_THROWS_AS(l3.backward(), bb::ValueError);  // w's data was saved by mul
}

TEST_CASE("a training step then a second backward over the retained graph is refused",
          "[autograd][version]") {
  Tensor w = leaf({4});
  bb::optim::SGD opt({{"w", w}}, {});
  Tensor loss = (w * w).sum();
  loss.backward(Tensor(), /*retain_graph=*/true);
  opt.step();  // changes w in place
  REQUIRE_THROWS_WITH(loss.backward(), Contains("mul") && Contains("in-place"));
}

TEST_CASE("training a GPT for a few steps raises no false alarm", "[autograd][version]") {
  bb::nn::GPTConfig cfg = bb::nn::GPTConfig::preset("tiny");
  cfg.vocab_size = 32;
  cfg.block_size = 8;
  bb::manual_seed(5);
  bb::nn::GPT model(cfg);
  bb::optim::AdamW opt(model.named_parameters(), {});
  bb::Generator gen(3);
  for (int step = 0; step < 3; ++step) {
    Tensor x = bb::randint(0, 32, {2, 8}, {bb::kI64}, &gen), y = bb::randint(0, 32, {2, 8}, {bb::kI64}, &gen);
    Tensor loss = model.loss(x, y);
    REQUIRE_NOTHROW(loss.backward());
    bb::optim::clip_grad_norm_(model.parameters(), 1.0);
    opt.step();
    opt.zero_grad();
  }
}

// ---- custom Functions ---------------------------------------------------------------------

namespace {
struct Square : bb::autograd::Function<Square> {
  static Tensor forward(bb::autograd::Context& ctx, const std::vector<Tensor>& in) {
    ctx.save(in[0]);
    return in[0] * in[0];
  }
  static std::vector<Tensor> backward(bb::autograd::Context& ctx, const Tensor& g) {
    return {g * ctx.saved(0) * 2.0};
  }
};

struct TooMany : bb::autograd::Function<TooMany> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>& in) { return in[0] * 2.0; }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor& g) { return {g * 2.0, g}; }
};

struct TooFew : bb::autograd::Function<TooFew> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>& in) { return in[0] + in[1]; }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor& g) { return {g}; }
};

// a [3] + b [1] -> [3]; the backward returns the gradient at the broadcast shape for
// both, as PyTorch allows.
struct BroadcastAdd : bb::autograd::Function<BroadcastAdd> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>& in) { return in[0] + in[1]; }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor& g) { return {g, g}; }
};

struct WrongShape : bb::autograd::Function<WrongShape> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>& in) { return in[0] * 1.0; }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor& g) {
    return {bb::ones({g.numel() + 1}, {g.dtype()})};
  }
};

struct WrongDtype : bb::autograd::Function<WrongDtype> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>& in) { return in[0] * 1.0; }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor& g) { return {g.to(bb::kF32)}; }
};

struct IntGrad : bb::autograd::Function<IntGrad> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>& in) { return in[0] * 1.0; }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor& g) {
    return {bb::zeros(g.shape(), {bb::kI64})};
  }
};

struct Undefined : bb::autograd::Function<Undefined> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>&) { return Tensor(); }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor&) { return {}; }
};
}  // namespace

TEST_CASE("custom Function: the number of gradients must match the inputs", "[autograd][function]") {
  Tensor x = leaf({3});
  Tensor y = TooMany::apply({x});
  REQUIRE_THROWS_WITH(y.sum().backward(), Contains("TooMany") && Contains("2 gradients for 1 inputs"));
  Tensor a = leaf({3}), b = leaf({3});
  REQUIRE_THROWS_WITH(TooFew::apply({a, b}, "my_add").sum().backward(),
                      Contains("my_add") && Contains("1 gradients for 2 inputs"));
}

TEST_CASE("custom Function: gradients of a broadcast shape are reduced to the input",
          "[autograd][function]") {
  Tensor a = leaf({3}), b = leaf({1}), c = leaf({2, 1});
  BroadcastAdd::apply({a, b}).sum().backward();
  REQUIRE(a.grad().to_vector<double>() == std::vector<double>{1, 1, 1});
  REQUIRE(b.grad().shape() == Shape{1});
  REQUIRE(b.grad().to_vector<double>() == std::vector<double>{3});
  // Leading dims too: [2, 1] + [3] -> [2, 3].
  Tensor d = leaf({3});
  BroadcastAdd::apply({c, d}).sum().backward();
  REQUIRE(c.grad().to_vector<double>() == std::vector<double>{3, 3});
  REQUIRE(d.grad().to_vector<double>() == std::vector<double>{2, 2, 2});
}

TEST_CASE("custom Function: a wrong gradient names the Function and the input", "[autograd][function]") {
  Tensor x = leaf({3});
  REQUIRE_THROWS_WITH(WrongShape::apply({x}).sum().backward(),
                      Contains("WrongShape") && Contains("[4]") && Contains("input 0") && Contains("[3]"));
  REQUIRE_THROWS_WITH(IntGrad::apply({x}).sum().backward(),
                      Contains("IntGrad") && Contains("input 0") && Contains("i64"));
  // Another floating dtype is converted, as PyTorch does.
  Tensor z = leaf({3});
  WrongDtype::apply({z}).sum().backward();
  REQUIRE(z.grad().dtype() == bb::kF64);
  REQUIRE(z.grad().to_vector<double>() == std::vector<double>{1, 1, 1});
  REQUIRE_THROWS_WITH(Undefined::apply({x}), Contains("Undefined") && Contains("undefined"));
  // An input that needs no gradient has its gradient ignored.
  Tensor n = bb::ones({3}, {bb::kF64});
  Tensor m = leaf({3});
  BroadcastAdd::apply({n, m}).sum().backward();
  REQUIRE(m.grad().to_vector<double>() == std::vector<double>{1, 1, 1});
}

TEST_CASE("custom Function: a saved tensor changed in place is reported", "[autograd][function][version]") {
  Tensor x = leaf({3}, 2.0);
  Tensor y = Square::apply({x});
  {
    bb::NoGradGuard g;
    x.add_(bb::ones({3}, {bb::kF64}));
  }
  REQUIRE_THROWS_WITH(y.sum().backward(), Contains("Square") && Contains("saved tensor 0") &&
                                              Contains("version 1") && Contains("version 0"));
  // Unchanged, it works and is right.
  Tensor x2 = leaf({3}, 2.0);
  Square::apply({x2}).sum().backward();
  REQUIRE(x2.grad().to_vector<double>() == std::vector<double>{4, 4, 4});
  bbtest::require_gradcheck([](const std::vector<Tensor>& in) { return Square::apply({in[0]}); },
                            {bb::randn({4}, {bb::kF64, bb::Device::cpu(), true})});
}

TEST_CASE("saved tensors are freed during backward, not kept for the version check", "[autograd][version]") {
  Tensor x = leaf({64});
  Tensor y = bb::exp(x);
  std::weak_ptr<bb::Storage> saved = y.impl().storage;  // exp saves its output
  Tensor loss = y.sum();
  y = Tensor();
  REQUIRE_FALSE(saved.expired());  // the graph holds it until backward
  loss.backward();
  REQUIRE(saved.expired());  // freed with the node, though loss (and its graph) live on
  REQUIRE(loss.defined());
}

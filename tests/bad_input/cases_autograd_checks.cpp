// Bad-input probe cases for autograd: tensors saved for backward and then changed in
// place (the version counter), and custom Functions whose backward returns the wrong
// number, shape or kind of gradients.
#include <cmath>
#include <string>
#include <vector>

#include <fmt/ranges.h>

#include "bad_input.hpp"
#include "barbell/barbell.hpp"

namespace bb = barbell;
using bad_input::compute;
using bad_input::refuse;
using bad_input::Result;
using bb::Shape;
using bb::Tensor;

namespace {

void add(const char* cls, const std::string& name, std::function<Result()> run) {
  bad_input::registry().push_back({cls, name, std::move(run)});
}

Tensor leaf(const Shape& s, double v = 0.5) { return bb::full(s, v, {bb::kF64, bb::Device::cpu(), true}); }
Tensor ids() { return bb::from_vector<int64_t>({0, 2, 1}, {3}); }

bool grads(const Tensor& t, const std::vector<double>& want, std::string& d) {
  if (!t.grad().defined()) {
    d = "no gradient";
    return false;
  }
  std::vector<double> got = t.grad().to_vector<double>();
  d = fmt::format("{}", fmt::join(got, ", "));
  if (got.size() != want.size()) return false;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::abs(got[i] - want[i]) > 1e-9) return false;
  return true;
}

// ---- the version counter ------------------------------------------------------------------

// An op whose backward reads a saved tensor, the tensor it saves (one of its inputs or
// its output), and how to change that tensor in place.
struct SavedCase {
  const char* op;     // the name the error must carry
  const char* name;   // what the case does
  bool saves_output;  // the saved tensor is the op's result
  std::function<Tensor(const Tensor&)> f;
};

const bool kVersions = [] {
  const char* c = "version counter";
  const std::vector<SavedCase> ops = {
      {"mul", "a leaf used in a product", false, [](const Tensor& x) { return x * x; }},
      {"exp", "the output of exp", true, [](const Tensor& x) { return bb::exp(x); }},
      {"div", "the divisor of div", false,
       [](const Tensor& x) { return bb::div(bb::ones({4}, {bb::kF64}), x); }},
      {"log", "the input of log", false, [](const Tensor& x) { return bb::log(x); }},
      {"sqrt", "the output of sqrt", true, [](const Tensor& x) { return bb::sqrt(x); }},
      {"rsqrt", "the output of rsqrt", true, [](const Tensor& x) { return bb::rsqrt(x); }},
      {"tanh", "the output of tanh", true, [](const Tensor& x) { return bb::tanh(x); }},
      {"gelu", "the input of gelu", false, [](const Tensor& x) { return bb::gelu(x); }},
      {"silu", "the input of silu", false, [](const Tensor& x) { return bb::silu(x); }},
      {"relu", "the input of relu", false, [](const Tensor& x) { return bb::relu(x); }},
      {"pow", "the base of pow(x, 3)", false, [](const Tensor& x) { return bb::pow(x, 3.0); }},
      {"pow", "the output of pow(x, y)", true,
       [](const Tensor& x) { return bb::pow(x, bb::full({4}, 2.0, {bb::kF64})); }},
      {"rdiv", "the input of 1 / x", false, [](const Tensor& x) { return 1.0 / x; }},
      {"softmax", "the output of softmax", true,
       [](const Tensor& x) {
         return bb::softmax(x.view({2, 2}));
       }},
      {"log_softmax", "the output of log_softmax", true,
       [](const Tensor& x) {
         return bb::log_softmax(x.view({2, 2}));
       }},
      {"matmul", "an operand of matmul", false,
       [](const Tensor& x) {
         return bb::matmul(x.view({2, 2}), bb::ones({2, 3}, {bb::kF64}));
       }},
      {"linear", "the input of linear", false,
       [](const Tensor& x) {
         return bb::linear(x.view({2, 2}), bb::ones({3, 2}, {bb::kF64}));
       }},
      {"layer_norm", "the input of layer_norm", false,
       [](const Tensor& x) {
         return bb::layer_norm(x.view({2, 2}), Tensor(), Tensor());
       }},
      {"rms_norm", "the input of rms_norm", false,
       [](const Tensor& x) {
         return bb::rms_norm(x.view({2, 2}), Tensor());
       }},
      {"cross_entropy", "the logits of cross_entropy", false,
       [](const Tensor& x) {
         return bb::cross_entropy(x.view({2, 2}), bb::from_vector<int64_t>({0, 1}, {2}));
       }},
      {"scaled_dot_product_attention", "q of attention (the CPU's fused kernel)", false,
       [](const Tensor& x) {
         Tensor q = x.view({1, 1, 2, 2});
         return bb::scaled_dot_product_attention(q, q, q, true);
       }},
  };
  for (const SavedCase& sc : ops) {
    add(c, fmt::format("{} changed in place before backward()", sc.name), [sc] {
      const char* op = sc.op;
      return refuse(
          [&sc] {
            Tensor x =
                bb::from_vector<double>({0.5, 1.5, 2.0, 3.0}, {4}, {bb::kF64, bb::Device::cpu(), true});
            Tensor y = sc.f(x);
            {
              bb::NoGradGuard g;
              (sc.saves_output ? y : x).mul_(1.0);  // even an identity write changes the version
            }
            y.sum().backward();
          },
          {op, "modified by an in-place operation", "version 1", "version 0"});
    });
  }
  const std::vector<std::pair<const char*, std::function<void(Tensor&)>>> writes = {
      {"fill_", [](Tensor& t) { t.fill_(1.0); }},
      {"zero_", [](Tensor& t) { t.zero_(); }},
      {"copy_", [](Tensor& t) { t.copy_(bb::ones(t.shape(), {t.dtype()})); }},
      {"add_", [](Tensor& t) { t.add_(bb::ones(t.shape(), {t.dtype()})); }},
      {"mul_", [](Tensor& t) { t.mul_(2); }},
      {"fill_ of a narrowed view", [](Tensor& t) { t.narrow(0, 1, 1).fill_(7.0); }},
      {"mul_ of a transposed view",
       [](Tensor& t) {
         t.view({2, 2}).t().mul_(3.0);
       }},
      {"add_ of a detached alias", [](Tensor& t) { t.detach().add_(t.detach()); }},
      {"index assignment through select",
       [](Tensor& t) { t.select(0, 2).copy_(bb::full({}, 9.0, {t.dtype()})); }},
      {"bump_version after a raw write",
       [](Tensor& t) {
         static_cast<double*>(t.data_ptr())[0] = 4.0;
         t.bump_version();
       }},
  };
  for (const auto& [wname, write] : writes) {
    add(c, fmt::format("a saved constant changed by {}", wname), [w = write] {
      return refuse(
          [&w] {
            Tensor a = leaf({4});
            Tensor b = bb::full({4}, 2.0, {bb::kF64});  // saved by mul; needs no gradient itself
            Tensor loss = (a * b).sum();
            {
              bb::NoGradGuard g;
              w(b);
            }
            loss.backward();
          },
          {"input 1 of mul", "in-place"});
    });
  }
  add(c, "embedding ids changed in place", [] {
    return refuse(
        [] {
          Tensor w = bb::ones({4, 2}, {bb::kF64, bb::Device::cpu(), true});
          Tensor i = ids();
          Tensor y = bb::embedding(i, w);
          i.fill_(3);
          y.sum().backward();
        },
        {"embedding", "ids", "version"});
  });
  add(c, "cross_entropy targets changed in place", [] {
    return refuse(
        [] {
          Tensor l = bb::zeros({3, 4}, {bb::kF64, bb::Device::cpu(), true});
          Tensor t = ids();
          Tensor loss = bb::cross_entropy(l, t);
          t.zero_();
          loss.backward();
        },
        {"cross_entropy", "targets"});
  });
  add(c, "where's condition changed in place", [] {
    return refuse(
        [] {
          Tensor a = leaf({3});
          Tensor cond = bb::from_vector<bool>({true, false, true}, {3});
          Tensor y = bb::where(cond, a, bb::zeros({3}, {bb::kF64}));
          cond.fill_(false);
          y.sum().backward();
        },
        {"where", "condition"});
  });
  add(c, "an SGD step, then a second backward over the retained graph", [] {
    return refuse(
        [] {
          Tensor w = leaf({3});
          bb::optim::SGD opt({{"w", w}}, {});
          Tensor loss = (w * w).sum();
          loss.backward(Tensor(), true);
          opt.step();
          loss.backward();
        },
        {"mul", "in-place"});
  });
  add(c, "an AdamW step, then a second backward over the retained graph", [] {
    return refuse(
        [] {
          Tensor w = leaf({3});
          bb::optim::AdamW opt({{"w", w}}, {});
          Tensor loss = bb::exp(w).sum() + (w * w).sum();
          loss.backward(Tensor(), true);
          opt.step();
          loss.backward();
        },
        {"mul", "in-place"});
  });
  add(c, "clip_grad_norm_ of a gradient saved by a graph on it", [] {
    return refuse(
        [] {
          Tensor w = leaf({3});
          (w * w).sum().backward();
          Tensor g = w.grad();
          Tensor u = leaf({3});
          Tensor loss = (u * g).sum();
          bb::optim::clip_grad_norm_({w}, 1e-3);  // scales w.grad() in place
          loss.backward();
        },
        {"input 1 of mul"});
  });
  add(c, "an input of add changed afterwards needs no check", [] {
    return compute([](std::string& d) {
      Tensor a = leaf({3}), b = leaf({3});
      Tensor loss = (a + b).sum();
      {
        bb::NoGradGuard g;
        a.mul_(10.0);
      }
      loss.backward();
      return grads(a, {1, 1, 1}, d);
    });
  });
  add(c, "a change before the op runs is seen by the op", [] {
    return compute([](std::string& d) {
      Tensor w = leaf({3}, 1.0);
      {
        bb::NoGradGuard g;
        w.mul_(2.0);
      }
      (w * w).sum().backward();
      return grads(w, {4, 4, 4}, d);
    });
  });
  add(c, "a change after backward() is fine", [] {
    return compute([](std::string& d) {
      Tensor w = leaf({3}, 1.0);
      (w * w).sum().backward();
      {
        bb::NoGradGuard g;
        w.mul_(2.0);
      }
      return grads(w, {2, 2, 2}, d);
    });
  });
  add(c, "a version count after fill_, copy_, add_, mul_ and zero_", [] {
    return compute([](std::string& d) {
      Tensor x = bb::zeros({3});
      x.fill_(1.0);
      x.copy_(bb::ones({3}));
      x.add_(bb::ones({3}));
      x.mul_(2.0);
      x.narrow(0, 0, 1).zero_();
      d = std::to_string(x.version());
      return x.version() == 5;
    });
  });
  add(c, "adamw_step_ bumps the parameter and both moments", [] {
    return compute([](std::string& d) {
      Tensor p = bb::zeros({3}), g = bb::ones({3}), m = bb::zeros({3}), v = bb::zeros({3});
      bb::adamw_step_(p, g, m, v, {0.1, 0.9, 0.999, 1e-8, 0.0, 1});
      d = fmt::format("{} {} {} {}", p.version(), g.version(), m.version(), v.version());
      return p.version() == 1 && g.version() == 0 && m.version() == 1 && v.version() == 1;
    });
  });
  return true;
}();

// ---- custom Functions ---------------------------------------------------------------------

struct Square : bb::autograd::Function<Square> {
  static Tensor forward(bb::autograd::Context& ctx, const std::vector<Tensor>& in) {
    ctx.save(in[0]);
    return in[0] * in[0];
  }
  static std::vector<Tensor> backward(bb::autograd::Context& ctx, const Tensor& g) {
    return {g * ctx.saved(0) * 2.0};
  }
};
struct ThreeGrads : bb::autograd::Function<ThreeGrads> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>& in) { return in[0] * 2.0; }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor& g) { return {g, g, g}; }
};
struct NoGrads : bb::autograd::Function<NoGrads> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>& in) { return in[0] + in[1]; }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor&) { return {}; }
};
struct BroadcastAdd : bb::autograd::Function<BroadcastAdd> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>& in) { return in[0] + in[1]; }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor& g) { return {g, g}; }
};
struct BadShape : bb::autograd::Function<BadShape> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>& in) { return in[0] * 1.0; }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor& g) {
    return {bb::ones({g.numel(), 2}, {g.dtype()})};
  }
};
struct SmallerGrad : bb::autograd::Function<SmallerGrad> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>& in) { return in[0] * 1.0; }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor& g) {
    return {bb::ones({1}, {g.dtype()})};  // a [1] for a [3] input: not a broadcast of [3]
  }
};
struct IntGrad : bb::autograd::Function<IntGrad> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>& in) { return in[0] * 1.0; }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor& g) {
    return {bb::zeros(g.shape(), {bb::kI64})};
  }
};
struct F32Grad : bb::autograd::Function<F32Grad> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>& in) { return in[0] * 1.0; }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor& g) { return {g.to(bb::kF32)}; }
};
struct NoOutput : bb::autograd::Function<NoOutput> {
  static Tensor forward(bb::autograd::Context&, const std::vector<Tensor>&) { return Tensor(); }
  static std::vector<Tensor> backward(bb::autograd::Context&, const Tensor&) { return {}; }
};
struct BadSavedIndex : bb::autograd::Function<BadSavedIndex> {
  static Tensor forward(bb::autograd::Context& ctx, const std::vector<Tensor>& in) {
    ctx.save(in[0]);
    return in[0] * 1.0;
  }
  static std::vector<Tensor> backward(bb::autograd::Context& ctx, const Tensor& g) {
    return {g * ctx.saved(3)};
  }
};

const bool kFunctions = [] {
  const char* c = "custom Function";
  add(c, "backward returns 3 gradients for 1 input", [] {
    return refuse([] { ThreeGrads::apply({leaf({3})}).sum().backward(); },
                  {"ThreeGrads", "3 gradients for 1 inputs"});
  });
  add(c, "backward returns no gradients for 2 inputs", [] {
    return refuse(
        [] {
          NoGrads::apply({leaf({3}), leaf({3})}).sum().backward();
        },
        {"NoGrads", "0 gradients for 2"});
  });
  add(c, "the error names a Function given a name", [] {
    return refuse([] { ThreeGrads::apply({leaf({3})}, "my_triple").sum().backward(); }, {"my_triple"});
  });
  add(c, "a gradient of the broadcast shape is reduced to [1]", [] {
    return compute([](std::string& d) {
      Tensor a = leaf({3}), b = leaf({1});
      BroadcastAdd::apply({a, b}).sum().backward();
      return grads(b, {3}, d) && a.grad().shape() == Shape{3};
    });
  });
  add(c, "a gradient of the broadcast shape is reduced over leading dims", [] {
    return compute([](std::string& d) {
      Tensor a = leaf({2, 1}), b = leaf({3});
      BroadcastAdd::apply({a, b}).sum().backward();
      std::string da;
      return grads(a, {3, 3}, da) && grads(b, {2, 2, 2}, d);
    });
  });
  add(c, "a gradient of shape [3, 2] for an input [3]", [] {
    return refuse([] { BadShape::apply({leaf({3})}).sum().backward(); },
                  {"BadShape", "[3, 2]", "input 0", "[3]"});
  });
  add(c, "a gradient of shape [1] for an input [3]", [] {
    return refuse([] { SmallerGrad::apply({leaf({3})}).sum().backward(); },
                  {"SmallerGrad", "[1]", "input 0"});
  });
  add(c, "an integer gradient", [] {
    return refuse([] { IntGrad::apply({leaf({3})}).sum().backward(); }, {"IntGrad", "input 0", "i64"});
  });
  add(c, "an f32 gradient for an f64 input is converted", [] {
    return compute([](std::string& d) {
      Tensor x = leaf({3});
      F32Grad::apply({x}).sum().backward();
      return x.grad().dtype() == bb::kF64 && grads(x, {1, 1, 1}, d);
    });
  });
  add(c, "forward returns an undefined tensor", [] {
    return refuse([] { NoOutput::apply({leaf({3})}); }, {"NoOutput", "undefined"});
  });
  add(c, "a saved tensor changed in place before backward()", [] {
    return refuse(
        [] {
          Tensor x = leaf({3});
          Tensor y = Square::apply({x});
          {
            bb::NoGradGuard g;
            x.add_(bb::ones({3}, {bb::kF64}));
          }
          y.sum().backward();
        },
        {"Square", "saved tensor 0", "version 1", "version 0"});
  });
  add(c, "Context::saved with an index past what was saved", [] {
    return refuse([] { BadSavedIndex::apply({leaf({3})}).sum().backward(); }, {"BadSavedIndex", "index 3"});
  });
  add(c, "a gradient for an input that needs none is ignored", [] {
    return compute([](std::string& d) {
      Tensor a = bb::ones({3}, {bb::kF64}), b = leaf({3});
      BroadcastAdd::apply({a, b}).sum().backward();
      return !a.grad().defined() && grads(b, {1, 1, 1}, d);
    });
  });
  add(c, "Square's gradient is right", [] {
    return compute([](std::string& d) {
      Tensor x = leaf({3}, 2.0);
      Square::apply({x}).sum().backward();
      return grads(x, {4, 4, 4}, d);
    });
  });
  return true;
}();

}  // namespace

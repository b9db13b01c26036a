// Bad-input cases for the optimizers: options outside PyTorch's ranges, parameter lists
// with a tensor twice, and state dicts with impossible steps or values (issue 11, item 7).
#include <cmath>
#include <limits>

#include "bad_input.hpp"
#include "barbell/barbell.hpp"

namespace bb = barbell;
namespace optim = barbell::optim;
using bad_input::compute;
using bad_input::refuse;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

bb::Tensor param(std::vector<double> v, bb::Shape shape) {
  return bb::from_vector(v, shape, {bb::kF64}).requires_grad_(true);
}

bad_input::Result adamw_refuses(void (*set)(optim::AdamWOptions&), std::vector<std::string> mention) {
  return refuse(
      [set] {
        optim::AdamWOptions o;
        set(o);
        optim::AdamW opt({{"w", param({1, 2}, {2})}}, o);
      },
      mention);
}

bad_input::Result sgd_refuses(void (*set)(optim::SGDOptions&), std::vector<std::string> mention) {
  return refuse(
      [set] {
        optim::SGDOptions o;
        set(o);
        optim::SGD opt({{"w", param({1, 2}, {2})}}, o);
      },
      mention);
}

// The state of an AdamW over one [2, 2] parameter after one step, with entry `name`
// replaced by `t` (or removed, when t is undefined and remove is set), loaded into a fresh AdamW.
bad_input::Result state_refuses(const std::string& name, bb::Tensor t, std::vector<std::string> mention,
                                bool remove = false) {
  return refuse(
      [&] {
        bb::Tensor w = param({1, 2, 3, 4}, {2, 2});
        optim::AdamW a({{"w", w}}, {});
        w.set_grad(bb::from_vector<double>({1, -1, 0.5, 2}, {2, 2}, {bb::kF64}));
        a.step();
        bb::NamedTensors s;
        for (auto& [n, v] : a.state_dict()) {
          if (n != name)
            s.emplace_back(n, v);
          else if (!remove)
            s.emplace_back(n, t);
        }
        if (!remove && std::none_of(s.begin(), s.end(), [&](const auto& e) { return e.first == name; }))
          s.emplace_back(name, t);
        optim::AdamW b({{"w", param({1, 2, 3, 4}, {2, 2})}}, {});
        b.load_state_dict(s);
      },
      mention);
}

bb::Tensor f64(std::vector<double> v, bb::Shape shape = {}) { return bb::from_vector(v, shape, {bb::kF64}); }
bb::Tensor i64(std::vector<int64_t> v, bb::Shape shape = {}) { return bb::from_vector(v, shape); }

}  // namespace

// ---- options ----------------------------------------------------------------------------
#define ADAMW_CASE(what, body, ...)                                            \
  BAD_INPUT_CASE("optimizer options", "AdamW " what) {                         \
    return adamw_refuses([](optim::AdamWOptions& o) { body; }, {__VA_ARGS__}); \
  }
ADAMW_CASE("beta1 = 1", o.beta1 = 1, "AdamW", "beta1", "1")
ADAMW_CASE("beta1 = 1.5", o.beta1 = 1.5, "beta1", "1.5")
ADAMW_CASE("beta1 = -0.1", o.beta1 = -0.1, "beta1", "-0.1")
ADAMW_CASE("beta1 = NaN", o.beta1 = kNaN, "beta1", "nan")
ADAMW_CASE("beta2 = 1", o.beta2 = 1, "beta2", "1")
ADAMW_CASE("beta2 = NaN", o.beta2 = kNaN, "beta2", "nan")
ADAMW_CASE("lr = -1e-3", o.lr = -1e-3, "learning rate", "-0.001")
ADAMW_CASE("lr = NaN", o.lr = kNaN, "learning rate", "nan")
ADAMW_CASE("lr = inf", o.lr = kInf, "learning rate", "inf")
ADAMW_CASE("eps = 0 (PyTorch takes it and gives 0/0 = NaN on all-zero gradients)", o.eps = 0, "eps", "0")
ADAMW_CASE("eps = -1e-8", o.eps = -1e-8, "eps", "-1e-08")
ADAMW_CASE("eps = NaN", o.eps = kNaN, "eps", "nan")
ADAMW_CASE("weight_decay = -0.1", o.weight_decay = -0.1, "weight_decay", "-0.1")
ADAMW_CASE("weight_decay = NaN", o.weight_decay = kNaN, "weight_decay", "nan")
ADAMW_CASE("weight_decay = inf", o.weight_decay = kInf, "weight_decay", "inf")

#define SGD_CASE(what, body, ...)                                          \
  BAD_INPUT_CASE("optimizer options", "SGD " what) {                       \
    return sgd_refuses([](optim::SGDOptions& o) { body; }, {__VA_ARGS__}); \
  }
SGD_CASE("lr = -1", o.lr = -1, "SGD", "learning rate", "-1")
SGD_CASE("lr = NaN (PyTorch's SGD lets it through)", o.lr = kNaN, "SGD", "nan")
SGD_CASE("momentum = -0.5", o.momentum = -0.5, "momentum", "-0.5")
SGD_CASE("momentum = NaN", o.momentum = kNaN, "momentum", "nan")
SGD_CASE("weight_decay = -1", o.weight_decay = -1, "weight_decay", "-1")
SGD_CASE("nesterov without momentum", o.nesterov = true, "Nesterov", "0")

BAD_INPUT_CASE("optimizer options", "set_lr(NaN)") {
  return refuse(
      [] {
        optim::AdamW opt({{"w", param({1, 2}, {2})}}, {});
        opt.set_lr(kNaN);
      },
      {"set_lr", "nan"});
}
BAD_INPUT_CASE("optimizer options", "set_lr(-0.5)") {
  return refuse(
      [] {
        optim::SGD opt({{"w", param({1, 2}, {2})}}, {});
        opt.set_lr(-0.5);
      },
      {"SGD set_lr", "-0.5"});
}
BAD_INPUT_CASE("optimizer options", "AdamW options.beta1 = 1 set after construction, then step()") {
  return refuse(
      [] {
        bb::Tensor w = param({1, 2}, {2});
        optim::AdamW opt({{"w", w}}, {});
        opt.options.beta1 = 1;
        w.set_grad(f64({1, 1}, {2}));
        opt.step();
      },
      {"beta1", "1"});
}
BAD_INPUT_CASE("optimizer options", "ZeroAdamW beta2 = 1 (one-rank group)") {
  return refuse(
      [] {
        bb::dist::ZeroAdamWOptions o;
        o.beta2 = 1;
        bb::dist::ZeroAdamW opt({{"w", param({1, 2}, {2})}}, bb::dist::init(), o);
      },
      {"ZeroAdamW", "beta2", "1"});
}
BAD_INPUT_CASE("optimizer options", "ZeroAdamW max_grad_norm = NaN") {
  return refuse(
      [] {
        bb::dist::ZeroAdamWOptions o;
        o.max_grad_norm = kNaN;
        bb::dist::ZeroAdamW opt({{"w", param({1, 2}, {2})}}, bb::dist::init(), o);
      },
      {"ZeroAdamW", "max_grad_norm", "nan"});
}
BAD_INPUT_CASE("optimizer options", "CosineSchedule(max_lr = NaN)") {
  return refuse([] { optim::CosineSchedule s(kNaN, 0, 1, 10); }, {"CosineSchedule", "nan"});
}
BAD_INPUT_CASE("optimizer options", "CosineSchedule(min_lr = -1)") {
  return refuse([] { optim::CosineSchedule s(1, -1, 1, 10); }, {"CosineSchedule", "-1"});
}
BAD_INPUT_CASE("optimizer options", "CosineSchedule(warmup 20 > total 10)") {
  return refuse([] { optim::CosineSchedule s(1, 0, 20, 10); }, {"CosineSchedule", "20", "10"});
}
BAD_INPUT_CASE("optimizer options", "clip_grad_norm_(max_norm = NaN)") {
  return refuse([] { optim::clip_grad_norm_({param({1}, {1})}, kNaN); }, {"clip_grad_norm_", "nan"});
}
BAD_INPUT_CASE("optimizer options",
               "AdamW lr = 0 and beta1 = 0 (legal in PyTorch): finite, parameter unchanged") {
  return compute([](std::string& d) {
    bb::Tensor w = param({1, 2}, {2});
    optim::AdamWOptions o;
    o.lr = 0;
    o.beta1 = 0;
    optim::AdamW opt({{"w", w}}, o);
    w.set_grad(f64({3, -4}, {2}));
    opt.step();
    auto v = w.to_vector<double>();
    d = fmt::format("w = [{}, {}]", v[0], v[1]);
    return v[0] == 1 && v[1] == 2;
  });
}
BAD_INPUT_CASE("optimizer options", "SGD Nesterov momentum 0.9: two steps match the formula") {
  return compute([](std::string& d) {
    bb::Tensor w = param({1.0}, {1});
    optim::SGDOptions o;
    o.lr = 0.1;
    o.momentum = 0.9;
    o.nesterov = true;
    optim::SGD opt({{"w", w}}, o);
    double x = 1, buf = 0;
    for (int k = 0; k < 2; ++k) {
      w.set_grad(f64({2 * x}, {1}));  // gradient of x^2
      opt.step();
      const double g = 2 * x;
      buf = k == 0 ? g : 0.9 * buf + g;
      x -= 0.1 * (g + 0.9 * buf);
    }
    const double got = w.to_vector<double>()[0];
    d = fmt::format("w = {}, expected {}", got, x);
    return std::abs(got - x) < 1e-15;
  });
}

// ---- parameter lists --------------------------------------------------------------------
BAD_INPUT_CASE("optimizer parameters", "AdamW with the same tensor twice") {
  return refuse(
      [] {
        bb::Tensor w = param({1, 2}, {2});
        optim::AdamW opt({{"a", w}, {"b", w}}, {});
      },
      {"AdamW", "listed twice", "'a'", "'b'"});
}
BAD_INPUT_CASE("optimizer parameters", "SGD with the same tensor twice") {
  return refuse(
      [] {
        bb::Tensor w = param({1, 2}, {2});
        optim::SGD opt({{"a", w}, {"b", param({1}, {1})}, {"c", w}}, {});
      },
      {"SGD", "listed twice", "'c'"});
}
BAD_INPUT_CASE("optimizer parameters", "the same memory under two handles (w and w.detach())") {
  return refuse(
      [] {
        bb::Tensor w = param({1, 2}, {2});
        optim::AdamW opt({{"a", w}, {"b", w.detach().requires_grad_(true)}}, {});
      },
      {"share memory", "'a'", "'b'"});
}
BAD_INPUT_CASE("optimizer parameters", "overlapping contiguous slices of one buffer") {
  return refuse(
      [] {
        bb::Tensor base = bb::zeros({8}, {bb::kF64});
        optim::SGD opt({{"a", base.narrow(0, 0, 5)}, {"b", base.narrow(0, 4, 4)}}, {});
      },
      {"share memory", "'a'", "'b'"});
}
BAD_INPUT_CASE("optimizer parameters", "the same name twice") {
  return refuse(
      [] {
        optim::AdamW opt({{"w", param({1}, {1})}, {"w", param({2}, {1})}}, {});
      },
      {"'w'", "twice"});
}
BAD_INPUT_CASE("optimizer parameters", "a non-leaf parameter (the output of an op)") {
  return refuse(
      [] {
        bb::Tensor w = param({1, 2}, {2});
        optim::AdamW opt({{"y", bb::mul(w, 2.0)}}, {});
      },
      {"'y'", "not a leaf"});
}
BAD_INPUT_CASE("optimizer parameters", "an integer parameter") {
  return refuse(
      [] {
        optim::AdamW opt({{"i", bb::zeros({2}, {bb::kI64})}}, {});
      },
      {"'i'", "floating", "i64"});
}
BAD_INPUT_CASE("optimizer parameters", "an undefined parameter") {
  return refuse([] { optim::SGD opt({{"u", bb::Tensor()}}, {}); }, {"'u'", "undefined"});
}
BAD_INPUT_CASE("optimizer parameters", "two disjoint rows of one matrix are allowed and both update") {
  return compute([](std::string& d) {
    bb::Tensor base = bb::zeros({2, 2}, {bb::kF64});
    bb::Tensor r0 = base.select(0, 0), r1 = base.select(0, 1);
    optim::SGD opt({{"r0", r0}, {"r1", r1}}, {});
    r0.set_grad(f64({1, 1}, {2}));
    r1.set_grad(f64({2, 2}, {2}));
    opt.step();
    auto v = base.to_vector<double>();
    d = fmt::format("[{}, {}, {}, {}]", v[0], v[1], v[2], v[3]);
    return v[0] == -0.01 && v[1] == -0.01 && v[2] == -0.02 && v[3] == -0.02;
  });
}

// ---- state dicts ------------------------------------------------------------------------
BAD_INPUT_CASE("optimizer state", "step = 1e300 (f64)") {
  return state_refuses("step", f64({1e300}), {"load_state_dict", "'step'", "1e+300"});
}
BAD_INPUT_CASE("optimizer state", "step = -3") { return state_refuses("step", i64({-3}), {"'step'", "-3"}); }
BAD_INPUT_CASE("optimizer state", "step = 2.5") {
  return state_refuses("step", f64({2.5}), {"'step'", "2.5"});
}
BAD_INPUT_CASE("optimizer state", "step = NaN") {
  return state_refuses("step", f64({kNaN}), {"'step'", "nan"});
}
BAD_INPUT_CASE("optimizer state", "step = INT64_MAX (++step would overflow)") {
  return state_refuses("step", i64({INT64_MAX}), {"'step'", "9223372036854775807"});
}
BAD_INPUT_CASE("optimizer state", "step of shape [2]") {
  return state_refuses("step", i64({1, 2}, {2}), {"'step'", "[2]"});
}
BAD_INPUT_CASE("optimizer state", "step a bool tensor") {
  return state_refuses("step", bb::from_vector<bool>({true}, {}), {"'step'", "bool"});
}
BAD_INPUT_CASE("optimizer state", "no step entry") { return state_refuses("step", {}, {"no 'step'"}, true); }
BAD_INPUT_CASE("optimizer state", "w.step 5 after 1 optimizer step") {
  return state_refuses("w.step", i64({5}), {"'w.step'", "5"});
}
BAD_INPUT_CASE("optimizer state", "w.step = -1") {
  return state_refuses("w.step", i64({-1}), {"'w.step'", "-1"});
}
BAD_INPUT_CASE("optimizer state", "exp_avg_sq with a negative element") {
  return state_refuses("w.exp_avg_sq", f64({1, -0.5, 1, 1}, {2, 2}), {"'w.exp_avg_sq'", "-0.5"});
}
BAD_INPUT_CASE("optimizer state", "exp_avg with a NaN") {
  return state_refuses("w.exp_avg", f64({0, kNaN, 0, 0}, {2, 2}), {"'w.exp_avg'", "nan"});
}
BAD_INPUT_CASE("optimizer state", "exp_avg_sq with an inf") {
  return state_refuses("w.exp_avg_sq", f64({0, 0, kInf, 0}, {2, 2}), {"'w.exp_avg_sq'", "inf"});
}
BAD_INPUT_CASE("optimizer state", "exp_avg of the wrong shape") {
  return state_refuses("w.exp_avg", f64({0, 0, 0, 0}, {4}), {"'w.exp_avg'", "[4]", "[2, 2]"});
}
BAD_INPUT_CASE("optimizer state", "exp_avg of an integer dtype") {
  return state_refuses("w.exp_avg", bb::zeros({2, 2}, {bb::kI64}), {"'w.exp_avg'", "i64"});
}
BAD_INPUT_CASE("optimizer state", "exp_avg_sq missing (one of two moments)") {
  return state_refuses("w.exp_avg_sq", {}, {"'w'", "1 of its 2"}, true);
}
BAD_INPUT_CASE("optimizer state", "an unexpected entry") {
  return state_refuses("v.exp_avg", f64({1}, {1}), {"unexpected entry", "'v.exp_avg'"});
}
BAD_INPUT_CASE("optimizer state", "an entry twice") {
  return refuse(
      [] {
        optim::AdamW b({{"w", param({1, 2}, {2})}}, {});
        b.load_state_dict({{"step", i64({0})}, {"step", i64({0})}});
      },
      {"'step'", "twice"});
}
BAD_INPUT_CASE("optimizer state", "w.step 3 without moments") {
  return refuse(
      [] {
        optim::AdamW b({{"w", param({1, 2}, {2})}}, {});
        b.load_state_dict({{"step", i64({3})}, {"w.step", i64({3})}});
      },
      {"'w.step'", "3", "no state tensors"});
}
BAD_INPUT_CASE("optimizer state", "SGD momentum_buffer with a NaN") {
  return refuse(
      [] {
        optim::SGDOptions o;
        o.momentum = 0.9;
        optim::SGD s({{"w", param({1, 2}, {2})}}, o);
        s.load_state_dict({{"step", i64({1})}, {"w.momentum_buffer", f64({kNaN, 0}, {2})}});
      },
      {"SGD", "'w.momentum_buffer'", "nan"});
}
BAD_INPUT_CASE("optimizer state", "ZeroAdamW: exp_avg_sq negative") {
  return refuse(
      [] {
        bb::dist::ZeroAdamW z({{"w", param({1, 2}, {2})}}, bb::dist::init(), {});
        z.load_state_dict({{"step", i64({1})},
                           {"w.step", i64({1})},
                           {"w.exp_avg", f64({0, 0}, {2})},
                           {"w.exp_avg_sq", f64({0, -1}, {2})}});
      },
      {"ZeroAdamW", "'w.exp_avg_sq'", "-1"});
}
BAD_INPUT_CASE("optimizer state", "ZeroAdamW: step = 1e300") {
  return refuse(
      [] {
        bb::dist::ZeroAdamW z({{"w", param({1, 2}, {2})}}, bb::dist::init(), {});
        z.load_state_dict({{"step", f64({1e300})}});
      },
      {"ZeroAdamW", "'step'", "1e+300"});
}
BAD_INPUT_CASE("optimizer state", "a refused state changes nothing; the good one then continues exactly") {
  return compute([](std::string& d) {
    bb::Tensor w = param({1, 2, 3, 4}, {2, 2});
    optim::AdamW a({{"w", w}}, {});
    auto grad = [] { return f64({1, -1, 0.5, 2}, {2, 2}); };
    w.set_grad(grad());
    a.step();
    auto good = a.state_dict();
    bb::Tensor w2 = param({1, 2, 3, 4}, {2, 2});
    w2.detach().copy_(w.detach());
    optim::AdamW b({{"w", w2}}, {});
    auto bad = good;
    bad[0].second = f64({1e300});
    try {
      b.load_state_dict(bad);
      d = "the bad state loaded";
      return false;
    } catch (const bb::Error&) {}
    if (b.steps() != 0) return false;
    b.load_state_dict(good);
    w.set_grad(grad());
    w2.set_grad(grad());
    a.step();
    b.step();
    auto va = w.to_vector<double>(), vb = w2.to_vector<double>();
    d = fmt::format("after a second step: {} vs {}", va[0], vb[0]);
    return va == vb;
  });
}
BAD_INPUT_CASE("optimizer state", "a float step holding a whole number (1.0) loads") {
  return compute([](std::string& d) {
    optim::AdamW b({{"w", param({1, 2}, {2})}}, {});
    b.load_state_dict({{"step", f64({1.0})}});
    d = fmt::format("steps() = {}", b.steps());
    return b.steps() == 1;
  });
}

// Tests of barbell::optim: SGD and AdamW against the published update rules computed in plain double
// arithmetic, optimizer state round trips, the cosine schedule and global-norm gradient clipping.
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "testing.hpp"

namespace bb = barbell;
namespace optim = barbell::optim;
using Catch::Contains;

namespace {

using Vec = std::vector<double>;

bb::Tensor param(const Vec& v, const bb::Shape& shape) {
  return bb::from_vector(v, shape, {bb::kF64}).requires_grad_(true);
}

// The gradient the tests feed at step k (1-based) for element i of a parameter with values p:
// depends on the values, so an update that goes wrong changes every later step.
Vec grad_at(const Vec& p, int k, double scale) {
  Vec g(p.size());
  for (size_t i = 0; i < p.size(); ++i)
    g[i] = scale * (0.5 * p[i] + 0.1 * k * static_cast<double>(i + 1) - 0.3);
  return g;
}

void set_grad(bb::Tensor& p, const Vec& g) { p.set_grad(bb::from_vector(g, p.shape(), {bb::kF64})); }

void require_values(const bb::Tensor& t, const Vec& expected, double tol = 1e-12) {
  auto v = t.to_vector<double>();
  REQUIRE(v.size() == expected.size());
  for (size_t i = 0; i < v.size(); ++i) {
    INFO("element " << i << ": " << v[i] << " vs expected " << expected[i]);
    REQUIRE(std::abs(v[i] - expected[i]) <= tol * (1 + std::abs(expected[i])));
  }
}

struct SGDRef {
  double lr, momentum, wd;
  bool nesterov;
  Vec buf;
  void step(Vec& p, Vec g) {
    for (size_t i = 0; i < p.size(); ++i) g[i] += wd * p[i];
    if (momentum != 0) {
      if (buf.empty())
        buf = g;
      else
        for (size_t i = 0; i < p.size(); ++i) buf[i] = momentum * buf[i] + g[i];
      for (size_t i = 0; i < p.size(); ++i) g[i] = nesterov ? g[i] + momentum * buf[i] : buf[i];
    }
    for (size_t i = 0; i < p.size(); ++i) p[i] -= lr * g[i];
  }
};

struct AdamWRef {
  double beta1, beta2, eps;
  Vec m, v;
  int t = 0;
  void step(Vec& p, const Vec& g, double lr, double wd) {
    if (m.empty()) m.assign(p.size(), 0.0), v.assign(p.size(), 0.0);
    ++t;
    const double bc1 = 1 - std::pow(beta1, t), bc2 = 1 - std::pow(beta2, t);
    for (size_t i = 0; i < p.size(); ++i) {
      m[i] = beta1 * m[i] + (1 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
      const double mhat = m[i] / bc1, vhat = v[i] / bc2;
      p[i] *= 1 - lr * wd;
      p[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

// A loss of two parameters whose gradients depend on the parameters (for round-trip tests).
bb::Tensor quad_loss(const bb::Tensor& w, const bb::Tensor& b) {
  bb::Tensor x = bb::from_vector<float>({0.5f, -1.0f, 2.0f, 0.25f, 1.5f, -0.5f}, {2, 3});
  bb::Tensor y = bb::add(bb::linear(x, w, b), -0.7);  // [2, 4]
  return bb::sum(bb::mul(y, y));
}

}  // namespace

TEST_CASE("SGD matches the update rule: plain, momentum, nesterov, weight decay", "[optim][sgd]") {
  struct Case {
    const char* name;
    double momentum, wd;
    bool nesterov;
  };
  for (Case c : {Case{"plain", 0, 0, false}, Case{"momentum", 0.9, 0, false}, Case{"nesterov", 0.8, 0, true},
                 Case{"weight decay", 0, 0.05, false}, Case{"momentum + decay", 0.9, 0.1, false}}) {
    INFO(c.name);
    Vec ref = {1.0, -2.0, 0.5, 3.0, -0.25, 0.0};
    bb::Tensor p = param(ref, {2, 3});
    optim::SGDOptions o;
    o.lr = 0.1;
    o.momentum = c.momentum;
    o.weight_decay = c.wd;
    o.nesterov = c.nesterov;
    optim::SGD opt({{"p", p}}, o);
    SGDRef r{0.1, c.momentum, c.wd, c.nesterov, {}};
    Vec initial = ref;
    for (int k = 1; k <= 3; ++k) {
      Vec g = grad_at(ref, k, 1.0);
      set_grad(p, g);
      opt.step();
      r.step(ref, g);
      require_values(p, ref);
    }
    REQUIRE(opt.steps() == 3);
    REQUIRE(ref != initial);
  }
}

TEST_CASE("AdamW matches the update rule with and without weight decay", "[optim][adamw]") {
  for (double wd : {0.0, 0.1}) {
    INFO("weight decay " << wd);
    Vec ref = {1.0, -2.0, 0.5, 3.0, -0.25, 0.0};
    bb::Tensor p = param(ref, {2, 3});
    optim::AdamWOptions o;
    o.lr = 0.01;
    o.beta1 = 0.9;
    o.beta2 = 0.95;
    o.eps = 1e-8;
    o.weight_decay = wd;
    optim::AdamW opt({{"p", p}}, o);
    AdamWRef r{0.9, 0.95, 1e-8, {}, {}, 0};
    for (int k = 1; k <= 3; ++k) {
      const double lr = k == 3 ? 0.005 : 0.01;  // the lr is read at every step
      opt.set_lr(lr);
      // Gradients of very different sizes: Adam's step is about lr whatever the scale.
      Vec g = grad_at(ref, k, k == 2 ? 100.0 : 1.0);
      set_grad(p, g);
      opt.step();
      r.step(ref, g, lr, wd);
      require_values(p, ref);
    }
  }
}

TEST_CASE("AdamW: 1-D parameters get no weight decay unless decay_1d", "[optim][adamw]") {
  for (bool decay_1d : {false, true}) {
    INFO("decay_1d " << decay_1d);
    Vec w = {1.0, -2.0, 0.5, 3.0}, b = {0.5, -1.5};
    bb::Tensor tw = param(w, {2, 2}), tb = param(b, {2});
    optim::AdamWOptions o;
    o.lr = 0.05;
    o.weight_decay = 0.5;
    o.decay_1d = decay_1d;
    optim::AdamW opt({{"w", tw}, {"b", tb}}, o);
    AdamWRef rw{o.beta1, o.beta2, o.eps, {}, {}, 0}, rb{o.beta1, o.beta2, o.eps, {}, {}, 0};
    for (int k = 1; k <= 2; ++k) {
      Vec gw = grad_at(w, k, 1.0), gb = grad_at(b, k, 1.0);
      set_grad(tw, gw);
      set_grad(tb, gb);
      opt.step();
      rw.step(w, gw, o.lr, 0.5);
      rb.step(b, gb, o.lr, decay_1d ? 0.5 : 0.0);
      require_values(tw, w);
      require_values(tb, b);
    }
  }
}

TEST_CASE("Optimizers skip parameters without a gradient", "[optim]") {
  Vec a0 = {1.0, 2.0}, b0 = {3.0, 4.0};
  bb::Tensor a = param(a0, {2}), b = param(b0, {2});
  SECTION("AdamW") {
    optim::AdamW opt({{"a", a}, {"b", b}}, {});
    set_grad(a, {0.5, -0.5});
    opt.step();
    REQUIRE(a.to_vector<double>() != a0);
    REQUIRE(b.to_vector<double>() == b0);
    std::vector<std::string> names;
    for (auto& [n, t] : opt.state_dict()) names.push_back(n);
    REQUIRE(names == std::vector<std::string>{"step", "a.step", "a.exp_avg", "a.exp_avg_sq"});
  }
  SECTION("SGD with momentum") {
    optim::SGDOptions o;
    o.momentum = 0.9;
    optim::SGD opt({{"a", a}, {"b", b}}, o);
    set_grad(b, {0.5, -0.5});
    opt.step();
    REQUIRE(a.to_vector<double>() == a0);
    REQUIRE(b.to_vector<double>() != b0);
  }
  SECTION("zero_grad drops the gradients") {
    optim::SGD opt({{"a", a}, {"b", b}}, {});
    set_grad(a, {1, 1});
    set_grad(b, {1, 1});
    opt.zero_grad();
    REQUIRE_FALSE(a.grad().defined());
    REQUIRE_FALSE(b.grad().defined());
    opt.step();
    REQUIRE(a.to_vector<double>() == a0);
  }
}

TEST_CASE("Optimizer state_dict round trip continues identically", "[optim][state]") {
  using Make = std::function<std::unique_ptr<optim::Optimizer>(bb::NamedTensors)>;
  auto adamw = [](bb::NamedTensors p) -> std::unique_ptr<optim::Optimizer> {
    optim::AdamWOptions o;
    o.lr = 0.05;
    o.weight_decay = 0.1;
    return std::make_unique<optim::AdamW>(std::move(p), o);
  };
  auto sgd = [](bb::NamedTensors p) -> std::unique_ptr<optim::Optimizer> {
    optim::SGDOptions o;
    o.lr = 0.01;
    o.momentum = 0.9;
    o.nesterov = true;
    return std::make_unique<optim::SGD>(std::move(p), o);
  };
  for (auto& [kind, make] : std::vector<std::pair<std::string, Make>>{{"AdamW", adamw}, {"SGD", sgd}}) {
    INFO(kind);
    bb::Generator gen(7);
    bb::Tensor w0 = bb::randn({4, 3}, {}, &gen), b0 = bb::randn({4}, {}, &gen);
    auto fresh = [&](const bb::Tensor& w, const bb::Tensor& b) {
      return bb::NamedTensors{{"w", w.detach().clone().requires_grad_(true)},
                              {"b", b.detach().clone().requires_grad_(true)}};
    };
    auto run = [&](optim::Optimizer& opt, int steps) {
      for (int s = 0; s < steps; ++s) {
        opt.set_lr(0.05 / (1 + opt.steps()));
        quad_loss(opt.named_params()[0].second, opt.named_params()[1].second).backward();
        opt.step();
        opt.zero_grad();
      }
    };
    auto pa = fresh(w0, b0);
    auto a = make(pa);
    run(*a, 4);

    auto pb = fresh(w0, b0);
    auto b = make(pb);
    run(*b, 2);
    const std::string path = bbtest::tmp_path("optim_state_" + kind + ".safetensors");
    bb::io::save_safetensors(path, b->state_dict());
    auto saved = bb::io::load_safetensors(path);

    auto pc = fresh(pb[0].second, pb[1].second);
    auto c = make(pc);
    c->load_state_dict(saved.tensors);
    REQUIRE(c->steps() == 2);
    run(*c, 2);
    REQUIRE(c->steps() == 4);
    for (size_t i = 0; i < 2; ++i) {
      INFO(pa[i].first);
      REQUIRE(bbtest::max_abs_diff(pc[i].second, pa[i].second) == 0.0);
      REQUIRE(bbtest::max_abs_diff(pc[i].second, w0.shape() == pc[i].second.shape() ? w0 : b0) > 1e-4);
    }
    // Without the state the continuation differs (so the check above can fail).
    auto pd = fresh(pb[0].second, pb[1].second);
    auto d = make(pd);
    run(*d, 2);
    REQUIRE(bbtest::max_abs_diff(pd[0].second, pa[0].second) > 1e-7);
  }
}

TEST_CASE("Optimizer load_state_dict validates before changing anything", "[optim][state]") {
  bb::Tensor w = param({1, 2, 3, 4}, {2, 2});
  optim::AdamW opt({{"w", w}}, {});
  set_grad(w, {1, 1, 1, 1});
  opt.step();
  auto good = opt.state_dict();
  REQUIRE(good.size() == 4);  // step, w.step, w.exp_avg, w.exp_avg_sq

  bb::Tensor w2 = param({1, 2, 3, 4}, {2, 2});
  optim::AdamW other({{"w", w2}}, {});
  auto bad = good;
  bad[0].second = bb::from_vector<int64_t>({7}, {});
  REQUIRE(bad[2].first == "w.exp_avg");
  bad[2].second = bb::zeros({4});  // w.exp_avg of the wrong shape
  REQUIRE_THROWS_AS(other.load_state_dict(bad), bb::ShapeError);
  REQUIRE_THROWS_WITH(other.load_state_dict(bad),
                      Contains("w.exp_avg") && Contains("[4]") && Contains("[2, 2]"));
  REQUIRE(other.steps() == 0);
  REQUIRE(other.state_dict().size() == 1);  // still no moments
  bb::NamedTensors no_step(good.begin() + 1, good.end());
  REQUIRE_THROWS_AS(other.load_state_dict(no_step), bb::ValueError);
  other.load_state_dict(good);
  REQUIRE(other.steps() == 1);
  REQUIRE(other.state_dict().size() == 4);
}

TEST_CASE("AdamW bias correction counts each parameter's own updates", "[optim]") {
  // b gets its first gradient at the optimizer's third step: its update must be a
  // first AdamW step (bias corrections 1 - beta^1), exactly as a fresh optimizer's.
  bb::Tensor a = param({1.0, 2.0}, {2}), b = param({3.0, -4.0}, {2});
  optim::AdamWOptions o;
  o.lr = 0.1;
  o.weight_decay = 0.0;
  optim::AdamW opt({{"a", a}, {"b", b}}, o);
  for (int i = 0; i < 2; ++i) {
    set_grad(a, {0.5, -0.5});
    opt.step();
  }
  set_grad(a, {0.5, -0.5});
  set_grad(b, {0.25, 1.0});
  opt.step();
  bb::Tensor b_ref = param({3.0, -4.0}, {2});
  optim::AdamW fresh({{"b", b_ref}}, o);
  set_grad(b_ref, {0.25, 1.0});
  fresh.step();
  bbtest::require_close(b, b_ref, 1e-15, 0);
  // A first Adam step moves each coordinate by about lr against its gradient's sign.
  REQUIRE(b.to_vector<double>()[0] == Approx(3.0 - 0.1).epsilon(1e-6));
  REQUIRE(opt.state_dict().size() == 7);  // step, and a/b: step, exp_avg, exp_avg_sq
}

TEST_CASE("CosineSchedule: warm-up, cosine decay, floor", "[optim][schedule]") {
  const double max_lr = 1.0, min_lr = 0.1;
  optim::CosineSchedule s(max_lr, min_lr, 10, 110);
  auto cosine = [&](int64_t step) {
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + std::cos(M_PI * static_cast<double>(step - 10) / 100.0));
  };
  REQUIRE(s(0) == Approx(0.1).epsilon(1e-12));  // warm-up start: max_lr * 1 / warmup
  REQUIRE(s(4) == Approx(0.5).epsilon(1e-12));
  REQUIRE(s(9) == Approx(1.0).epsilon(1e-12));  // warm-up end
  REQUIRE(s(10) == Approx(1.0).epsilon(1e-12));
  REQUIRE(s(60) == Approx(0.55).epsilon(1e-12));  // midpoint of the decay
  REQUIRE(s(35) == Approx(cosine(35)).epsilon(1e-12));
  REQUIRE(s(109) == Approx(cosine(109)).epsilon(1e-12));
  REQUIRE(s(109) > min_lr);
  REQUIRE(s(110) == Approx(min_lr).epsilon(1e-12));   // end
  REQUIRE(s(1000) == Approx(min_lr).epsilon(1e-12));  // beyond
  for (int64_t k = 10; k < 120; ++k) REQUIRE(s(k + 1) <= s(k));
  optim::CosineSchedule no_warmup(2.0, 0.0, 0, 10);
  REQUIRE(no_warmup(0) == Approx(2.0).epsilon(1e-12));
  REQUIRE(no_warmup(5) == Approx(1.0).epsilon(1e-12));
  REQUIRE_THROWS_AS(optim::CosineSchedule(1.0, 0.1, 20, 10), bb::ValueError);
  REQUIRE_THROWS_AS(optim::CosineSchedule(1.0, 0.1, 0, 0), bb::ValueError);
}

TEST_CASE("clip_grad_norm_ returns the global norm and scales down to max_norm", "[optim][clip]") {
  bb::Tensor a = param({0, 0}, {2}), b = param({0}, {1}), c = param({5}, {1});
  set_grad(a, {3, 4});
  set_grad(b, {12});  // global norm sqrt(9 + 16 + 144) = 13; c has no grad
  std::vector<bb::Tensor> params = {a, b, c};

  SECTION("above max_norm: scaled") {
    double n = optim::clip_grad_norm_(params, 6.5);
    REQUIRE(n == Approx(13.0).epsilon(1e-12));
    require_values(a.grad(), {1.5, 2.0}, 1e-6);
    require_values(b.grad(), {6.0}, 1e-6);
    REQUIRE(optim::clip_grad_norm_(params, 100.0) == Approx(6.5).epsilon(1e-6));  // the new norm
    REQUIRE_FALSE(c.grad().defined());
  }
  SECTION("below max_norm: unchanged") {
    double n = optim::clip_grad_norm_(params, 20.0);
    REQUIRE(n == Approx(13.0).epsilon(1e-12));
    REQUIRE(a.grad().to_vector<double>() == Vec{3, 4});
    REQUIRE(b.grad().to_vector<double>() == Vec{12});
  }
  SECTION("float32 gradients") {
    bb::Tensor f = bb::zeros({3}).requires_grad_(true);
    f.set_grad(bb::from_vector<float>({2, -2, 1}, {3}));
    REQUIRE(optim::clip_grad_norm_({f}, 1.5) == Approx(3.0).epsilon(1e-7));
    bbtest::require_close(f.grad(), bb::from_vector<float>({1, -1, 0.5f}, {3}), 1e-6, 1e-6);
  }
  REQUIRE_THROWS_AS(optim::clip_grad_norm_(params, 0.0), bb::ValueError);
}

TEST_CASE("Optimizer load_state_dict refuses foreign or partial state", "[optim][state]") {
  bb::Tensor w = param({1, 2, 3, 4}, {2, 2});
  optim::AdamW adam({{"w", w}}, {});
  set_grad(w, {1, 1, 1, 1});
  adam.step();
  auto good = adam.state_dict();

  bb::Tensor w2 = param({1, 2, 3, 4}, {2, 2});
  optim::SGDOptions so;
  so.momentum = 0.9;
  optim::SGD sgd({{"w", w2}}, so);
  // AdamW's state is not SGD's: its slot names are unexpected entries.
  REQUIRE_THROWS_WITH(sgd.load_state_dict(good), Contains("unexpected entry") && Contains("w.exp_avg"));
  REQUIRE(sgd.steps() == 0);

  optim::AdamW other({{"w", w2}}, {});
  bb::NamedTensors partial;
  for (auto& [n, t] : good)
    if (n != "w.exp_avg_sq") partial.emplace_back(n, t);
  REQUIRE_THROWS_WITH(other.load_state_dict(partial), Contains("'w'") && Contains("1 of its 2"));
  REQUIRE(other.steps() == 0);
  other.load_state_dict(good);
  REQUIRE(other.steps() == 1);
}

TEST_CASE("AdamW with fp32 master weights: a bf16 parameter follows the f32 run", "[optim][adamw][mixed]") {
  // The same gradients (exactly representable in bf16) go to an f32 parameter and a
  // bf16 one with a master copy: the master must equal the f32 parameter, and the bf16
  // parameter must be its rounding. Without a master, updates below bf16's resolution
  // would be lost: check that they are not.
  Vec init{1.0, -2.0, 0.5, 3.0, 0.25, -1.5};
  bb::Tensor p32 = bb::from_vector(init, {2, 3}, {bb::kF32}).requires_grad_(true);
  bb::Tensor p16 = bb::from_vector(init, {2, 3}, {bb::kBF16}).requires_grad_(true);
  optim::AdamWOptions o;
  o.lr = 1e-4;  // far below bf16's spacing near 1 (2^-7): the bf16 value barely moves
  o.weight_decay = 0.1;
  optim::AdamW a32({{"p", p32}}, o), a16({{"p", p16}}, o);
  for (int k = 1; k <= 20; ++k) {
    Vec gv = grad_at(init, k, 1.0);
    bb::Tensor g = bb::from_vector(gv, {2, 3}, {bb::kBF16});
    p32.set_grad(g.to(bb::kF32));
    p16.set_grad(g);
    a32.step();
    a16.step();
  }
  auto st = a16.state_dict();
  bb::Tensor master;
  for (auto& [n, t] : st)
    if (n == "p.master") master = t;
  REQUIRE(master.defined());
  REQUIRE(master.dtype() == bb::kF32);
  REQUIRE(bbtest::max_abs_diff(master, p32) < 1e-6);
  REQUIRE(bbtest::max_abs_diff(p16.detach().to(bb::kF32), master.to(bb::kBF16).to(bb::kF32)) == 0.0);
  // 20 steps of ~1e-4 moved the f32 parameter by ~2e-3; the master kept all of it.
  REQUIRE(bbtest::max_abs_diff(master, bb::from_vector(init, {2, 3}, {bb::kF32})) > 1e-3);

  // The state round-trips, master included, and an f32 parameter has no master.
  optim::AdamW b16({{"p", p16}}, o);
  b16.load_state_dict(st);
  REQUIRE(b16.state_dict().size() == st.size());
  bool has_master32 = false;
  for (auto& [n, t] : a32.state_dict()) has_master32 |= n == "p.master";
  REQUIRE_FALSE(has_master32);
}

TEST_CASE("adamw_multi_step_ equals one adamw_step_ per parameter", "[optim][adamw]") {
  bb::Generator gen(7);
  std::vector<bb::Tensor> ps, gs;
  std::vector<bb::Shape> shapes{{5}, {3, 7}, {1}, {2, 2, 3}};
  for (auto& s : shapes) {
    ps.push_back(bb::randn(s, {bb::kF32}, &gen));
    gs.push_back(bb::randn(s, {bb::kF32}, &gen));
  }
  std::vector<bb::Tensor> qs;
  for (auto& p : ps) qs.push_back(p.clone());
  std::vector<bb::AdamWTensors> items;
  for (size_t i = 0; i < ps.size(); ++i) {
    bb::Tensor m = bb::zeros(ps[i].shape()), v = bb::zeros(ps[i].shape());
    bb::Tensor m2 = m.clone(), v2 = v.clone();
    int64_t step = static_cast<int64_t>(i) + 1;
    double wd = 0.01 * static_cast<double>(i);
    bb::AdamWParams ap{1e-2, 0.9, 0.95, 1e-8, wd, step};
    bb::adamw_step_(qs[i], gs[i], m2, v2, ap);
    items.push_back({ps[i], gs[i], m, v, bb::Tensor(), step, wd});
  }
  bb::adamw_multi_step_(items, 1e-2, 0.9, 0.95, 1e-8);
  for (size_t i = 0; i < ps.size(); ++i) REQUIRE(bbtest::max_abs_diff(ps[i], qs[i]) == 0.0);
  // Bad input is refused before anything changes.
  bb::Tensor before = ps[0].clone();
  std::vector<bb::AdamWTensors> bad = items;
  bad[1].step = 0;
  REQUIRE_THROWS_AS(bb::adamw_multi_step_(bad, 1e-2, 0.9, 0.95, 1e-8), bb::ValueError);
  REQUIRE(bbtest::max_abs_diff(ps[0], before) == 0.0);
}

TEST_CASE("Optimizers refuse options outside PyTorch's ranges", "[optim][validate]") {
  const double nan = std::nan(""), inf = INFINITY;
  auto adamw = [](auto set) {
    bb::Tensor w = param({1, 2}, {2});
    optim::AdamWOptions o;
    set(o);
    optim::AdamW opt({{"w", w}}, o);
  };
  using AO = optim::AdamWOptions;
  REQUIRE_NOTHROW(adamw([](AO&) {}));
  REQUIRE_NOTHROW(adamw([](AO& o) { o.lr = 0; }));     // PyTorch takes lr = 0
  REQUIRE_NOTHROW(adamw([](AO& o) { o.beta1 = 0; }));  // and beta1 = 0 (RMSProp-like)
  REQUIRE_THROWS_WITH(adamw([](AO& o) { o.beta1 = 1; }),
                      Contains("AdamW") && Contains("beta1") && Contains("1"));
  REQUIRE_THROWS_WITH(adamw([](AO& o) { o.beta2 = 1.5; }), Contains("beta2") && Contains("1.5"));
  REQUIRE_THROWS_WITH(adamw([](AO& o) { o.beta1 = -0.1; }), Contains("beta1") && Contains("-0.1"));
  REQUIRE_THROWS_WITH(adamw([nan](AO& o) { o.beta2 = nan; }), Contains("beta2") && Contains("nan"));
  REQUIRE_THROWS_WITH(adamw([](AO& o) { o.lr = -1e-3; }), Contains("learning rate") && Contains("-0.001"));
  REQUIRE_THROWS_WITH(adamw([nan](AO& o) { o.lr = nan; }), Contains("learning rate") && Contains("nan"));
  REQUIRE_THROWS_WITH(adamw([inf](AO& o) { o.lr = inf; }), Contains("learning rate") && Contains("inf"));
  REQUIRE_THROWS_WITH(adamw([](AO& o) { o.eps = 0; }), Contains("eps") && Contains("0 / 0"));
  REQUIRE_THROWS_WITH(adamw([](AO& o) { o.eps = -1e-8; }), Contains("eps"));
  REQUIRE_THROWS_WITH(adamw([](AO& o) { o.weight_decay = -0.1; }),
                      Contains("weight_decay") && Contains("-0.1"));
  REQUIRE_THROWS_AS(adamw([](AO& o) { o.beta1 = 1; }), bb::ValueError);

  auto sgd = [](auto set) {
    bb::Tensor w = param({1, 2}, {2});
    optim::SGDOptions o;
    set(o);
    optim::SGD opt({{"w", w}}, o);
  };
  using SO = optim::SGDOptions;
  REQUIRE_NOTHROW(sgd([](SO& o) {
    o.momentum = 0.9;
    o.nesterov = true;
  }));
  REQUIRE_THROWS_WITH(sgd([](SO& o) { o.momentum = -0.5; }),
                      Contains("SGD") && Contains("momentum") && Contains("-0.5"));
  REQUIRE_THROWS_WITH(sgd([](SO& o) { o.nesterov = true; }), Contains("Nesterov"));
  REQUIRE_THROWS_WITH(sgd([nan](SO& o) { o.lr = nan; }), Contains("learning rate") && Contains("nan"));
  REQUIRE_THROWS_WITH(sgd([](SO& o) { o.weight_decay = -1; }), Contains("weight_decay"));

  // The options are public fields: step() checks them again; set_lr checks its argument.
  bb::Tensor w = param({1, 2}, {2});
  optim::AdamW opt({{"w", w}}, {});
  REQUIRE_THROWS_WITH(opt.set_lr(nan), Contains("AdamW set_lr") && Contains("nan"));
  REQUIRE_THROWS_WITH(opt.set_lr(-1), Contains("-1"));
  REQUIRE(opt.lr() == 1e-3);
  opt.options.beta1 = 1;
  set_grad(w, {1, 1});
  REQUIRE_THROWS_WITH(opt.step(), Contains("beta1"));
  REQUIRE(w.to_vector<double>() == Vec{1, 2});
  REQUIRE(opt.steps() == 0);

  REQUIRE_THROWS_WITH(optim::CosineSchedule(nan, 0, 1, 10), Contains("CosineSchedule") && Contains("nan"));
  REQUIRE_THROWS_WITH(optim::CosineSchedule(1, -1, 1, 10), Contains("min_lr"));
  REQUIRE_THROWS_WITH(optim::clip_grad_norm_({w}, nan), Contains("max_norm") && Contains("nan"));
}

TEST_CASE("Optimizers refuse a parameter list with a tensor twice", "[optim][validate]") {
  bb::Tensor w = param({1, 2, 3, 4}, {2, 2}), v = param({1, 2}, {2});
  REQUIRE_THROWS_WITH(optim::AdamW({{"a", w}, {"b", v}, {"c", w}}, {}),
                      Contains("same tensor is listed twice") && Contains("'a'") && Contains("'c'"));
  REQUIRE_THROWS_WITH(optim::SGD({{"a", w}, {"b", w}}, {}), Contains("SGD") && Contains("twice"));
  // The same memory under another handle.
  REQUIRE_THROWS_WITH(optim::AdamW({{"a", w}, {"b", w.detach().requires_grad_(true)}}, {}),
                      Contains("share memory") && Contains("'a'") && Contains("'b'"));
  // Two rows of one matrix do not overlap: allowed.
  bb::Tensor base = bb::zeros({2, 3}, {bb::kF64});
  REQUIRE_NOTHROW(optim::SGD({{"r0", base.select(0, 0)}, {"r1", base.select(0, 1)}}, {}));
  REQUIRE_THROWS_WITH(optim::AdamW({{"w", w}, {"w", v}}, {}), Contains("name 'w' is listed twice"));
  // A non-leaf never gets a .grad: PyTorch refuses it ("can't optimize a non-leaf Tensor").
  bb::Tensor nonleaf = bb::mul(w, 2.0);
  REQUIRE_THROWS_WITH(optim::AdamW({{"x", nonleaf}}, {}), Contains("'x'") && Contains("not a leaf"));
  REQUIRE_THROWS_AS(optim::AdamW({{"i", bb::zeros({2}, {bb::kI64})}}, {}), bb::DTypeError);
}

TEST_CASE("Optimizer load_state_dict refuses damaged values", "[optim][state][validate]") {
  bb::Tensor w = param({1, 2, 3, 4}, {2, 2});
  optim::AdamW opt({{"w", w}}, {});
  set_grad(w, {1, -1, 0.5, 2});
  opt.step();
  const auto good = opt.state_dict();
  auto with = [&](const std::string& name, bb::Tensor t) {
    auto s = good;
    for (auto& [n, v] : s)
      if (n == name) v = t;
    return s;
  };
  bb::Tensor w2 = param({1, 2, 3, 4}, {2, 2});
  optim::AdamW other({{"w", w2}}, {});
  REQUIRE_THROWS_WITH(other.load_state_dict(with("step", bb::from_vector<double>({1e300}, {}, {bb::kF64}))),
                      Contains("'step'") && Contains("1e+300"));
  REQUIRE_THROWS_WITH(other.load_state_dict(with("step", bb::from_vector<int64_t>({-3}, {}))),
                      Contains("'step'") && Contains("-3"));
  REQUIRE_THROWS_WITH(other.load_state_dict(with("step", bb::from_vector<double>({2.5}, {}, {bb::kF64}))),
                      Contains("2.5") && Contains("whole number"));
  REQUIRE_THROWS_WITH(other.load_state_dict(with("w.step", bb::from_vector<int64_t>({5}, {}))),
                      Contains("'w.step'") && Contains("5"));  // more updates than steps
  REQUIRE_THROWS_WITH(other.load_state_dict(
                          with("w.exp_avg_sq", bb::from_vector<double>({1, -0.5, 1, 1}, {2, 2}, {bb::kF64}))),
                      Contains("'w.exp_avg_sq'") && Contains("-0.5") && Contains("flat index 1"));
  REQUIRE_THROWS_WITH(other.load_state_dict(with(
                          "w.exp_avg", bb::from_vector<double>({1, 1, std::nan(""), 1}, {2, 2}, {bb::kF64}))),
                      Contains("'w.exp_avg'") && Contains("nan"));
  REQUIRE_THROWS_AS(other.load_state_dict(with("w.exp_avg", bb::zeros({2, 2}, {bb::kI64}))), bb::DTypeError);
  REQUIRE_THROWS_AS(other.load_state_dict(with("step", bb::from_vector<int64_t>({1, 2}, {2}))),
                    bb::ShapeError);
  auto twice = good;
  twice.push_back(good[1]);
  REQUIRE_THROWS_WITH(other.load_state_dict(twice), Contains("twice"));
  // Nothing changed, and the good state still loads; a float step holding an integer does too.
  REQUIRE(other.steps() == 0);
  other.load_state_dict(with("step", bb::from_vector<double>({1}, {}, {bb::kF64})));
  REQUIRE(other.steps() == 1);
}

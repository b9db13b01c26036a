// Every tensor op of barbell/ops/ops.hpp that is not a network layer, and the Tensor
// methods with a GPU path, on the GPU against the CPU backend: copies, casts and views;
// elementwise binary (broadcasting, strided operands), scalar and unary ops; eq, where,
// masked_fill; reductions, softmax, matmul (2-D, batched, broadcast, transposed, the
// GPT's q/k/v views, TF32); cat/stack/split. Forward and backward (gradients of every
// float input for a random upstream gradient), f32/bf16/f16 (f64 where supported),
// odd sizes (1, 7, 33, 65, 2^20 + 3). Exit 77 without a GPU.
#include "cuda_check.hpp"

using namespace ct;

namespace {

using View = std::function<Tensor(const Tensor&)>;
const View kT = [](const Tensor& t) { return t.transpose(-1, -2); };

std::vector<DType> all_dtypes() {
  return {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::I64, DType::Bool};
}

// Random values of any dtype on the CPU (ints in [-1000, 1000), bools half true).
Tensor values(const Shape& s, DType dt) {
  if (bb::is_floating(dt)) return randn(s, dt, 3.0);
  if (dt == DType::Bool) return randint(0, 2, s).to(DType::Bool);
  return randint(-1000, 1000, s, dt);
}

// ---- copies, casts, views, in-place methods ------------------------------------------

void copies() {
  for (DType dt : all_dtypes()) {
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{33}, big(kLarge)}) {
      std::string name = "copy roundtrip+clone [" + dt_name(dt) + "] n=" + std::to_string(n);
      guarded(name, [&] {
        Tensor h = values({n}, dt);
        Tensor d = h.to(gpu());
        expect(on_dev(d) && d.dtype() == dt && d.shape() == h.shape(), name + " to(cuda) placement");
        check_exact(name + " h->d->h", d, h);
        Tensor c = d.clone();
        expect(on_dev(c) && c.data_ptr() != d.data_ptr(), name + " clone is a new GPU tensor");
        check_exact(name + " clone", c, h);
      }, dt);
    }
  }
  // Casts on the GPU against the CPU's casts of the same values (both round to nearest even).
  const std::pair<DType, DType> casts[] = {
      {DType::F32, DType::BF16}, {DType::F32, DType::F16}, {DType::BF16, DType::F32}, {DType::F16, DType::F32},
      {DType::F32, DType::F64},  {DType::F64, DType::F32}, {DType::BF16, DType::F16}, {DType::F16, DType::BF16},
      {DType::F32, DType::I32},  {DType::F32, DType::I64}, {DType::I64, DType::F32}, {DType::I32, DType::I64},
      {DType::I64, DType::I32},  {DType::Bool, DType::F32}, {DType::F32, DType::Bool}, {DType::I64, DType::Bool},
      {DType::Bool, DType::BF16}, {DType::F64, DType::BF16}};
  for (const auto& pr : casts) {
    const DType from = pr.first, to = pr.second;
    for (int64_t n : {int64_t{7}, big(kLarge)}) {
      std::string name = "cast " + dt_name(from) + "->" + dt_name(to) + " n=" + std::to_string(n);
      guarded(name, [&] {
        Tensor h = values({n}, from);
        // zeros too, for casts to bool
        if (bb::is_floating(from)) h = bb::mul(h, randint(0, 2, {n}).to(from));
        Tensor got = h.to(gpu()).to(to);
        expect(on_dev(got), name + " stays on the GPU");
        check_exact(name, got, h.to(to));
      }, from == DType::F64 || to == DType::F64 ? DType::F64 : DType::F32);
    }
  }
  // A strided source cast: transposed f32 -> contiguous bf16.
  guarded("cast strided f32->bf16", [&] {
    Tensor h = values({65, 33}, DType::F32);
    check_exact("cast strided f32->bf16", h.to(gpu()).t().to(DType::BF16), h.t().to(DType::BF16));
  });

  // Views made contiguous on the GPU.
  struct ViewCase {
    const char* name;
    Shape shape;
    View view;
  };
  const std::vector<ViewCase> views = {
      {"transpose", {33, 65}, [](const Tensor& t) { return t.t(); }},
      {"permute(2,0,1)", {5, 7, 9}, [](const Tensor& t) { return t.permute({2, 0, 1}); }},
      {"narrow(1,3,40)", {33, 65}, [](const Tensor& t) { return t.narrow(1, 3, 40); }},
      {"slice(0,5,30).t", {33, 65}, [](const Tensor& t) { return t.slice(0, 5, 30).t(); }},
      {"select(1,3)", {5, 7, 9}, [](const Tensor& t) { return t.select(1, 3); }},
      {"expand [7,1]->[7,33]", {7, 1}, [](const Tensor& t) { return t.expand({7, 33}); }},
      {"expand [33]->[4,33]", {33}, [](const Tensor& t) { return t.expand({4, 33}); }},
      {"qkv view k [B,T,3,H,D]->[B,H,T,D]", {2, 33, 3 * 48},
       [](const Tensor& t) { return t.view({2, 33, 3, 2, 24}).select(2, 1).transpose(1, 2); }},
      {"transpose(0,1) then reshape", {6, 10, 5}, [](const Tensor& t) { return t.transpose(0, 1).reshape({10, 30}); }},
      {"large transpose", {1031, big(1023, 61)}, [](const Tensor& t) { return t.t(); }},
  };
  for (DType dt : {DType::F32, DType::BF16, DType::I64, DType::Bool}) {
    for (auto& v : views) {
      std::string name = std::string("contiguous(") + v.name + ") [" + dt_name(dt) + "]";
      guarded(name, [&] {
        Tensor h = values(v.shape, dt);
        Tensor d = v.view(h.to(gpu()));
        Tensor c = d.contiguous();
        expect(on_dev(c) && c.is_contiguous(), name + " is contiguous on the GPU");
        check_exact(name, c, v.view(h).contiguous());
        check_exact(name + " to(cpu) of the view", d.to(host()), v.view(h).contiguous());
      });
    }
  }

  // copy_ (cast, broadcast, strided destination, across devices)
  guarded("copy_ f32 <- bf16 transposed", [&] {
    Tensor src = values({65, 33}, DType::BF16);
    Tensor dg = bb::empty({33, 65}, {DType::F32, gpu()});
    dg.copy_(src.to(gpu()).t());
    Tensor dc = bb::empty({33, 65}, {DType::F32});
    dc.copy_(src.t());
    check_exact("copy_ f32 <- bf16 transposed", dg, dc);
  });
  guarded("copy_ broadcast [33] -> [4,33]", [&] {
    Tensor src = values({33}, DType::F32);
    Tensor dg = bb::empty({4, 33}, {DType::F32, gpu()});
    dg.copy_(src.to(gpu()));
    check_exact("copy_ broadcast [33] -> [4,33]", dg, src.expand({4, 33}).contiguous());
  });
  guarded("copy_ into a strided view", [&] {
    Tensor base = values({65, 33}, DType::F32), src = values({33, 20}, DType::F32);
    Tensor bg = base.to(gpu()), bc = base.clone();
    bg.t().narrow(1, 7, 20).copy_(src.to(gpu()));
    bc.t().narrow(1, 7, 20).copy_(src);
    check_exact("copy_ into a strided view (whole base)", bg, bc);
  });
  guarded("copy_ across devices", [&] {
    Tensor src = values({33, 7}, DType::F32);
    Tensor dg = bb::empty({33, 7}, {DType::BF16, gpu()});
    dg.copy_(src);  // CPU f32 -> GPU bf16
    check_exact("copy_ GPU bf16 <- CPU f32", dg, src.to(DType::BF16));
    Tensor dc = bb::empty({7, 33}, {DType::F32});
    dc.copy_(src.to(gpu()).t());  // GPU strided -> CPU
    check_exact("copy_ CPU <- GPU transposed", dc, src.t().contiguous());
  });

  // fill_, add_, mul_, factories
  for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::I64, DType::F64}) {
    std::string name = "fill_ [" + dt_name(dt) + "]";
    guarded(name, [&] {
      Tensor g = bb::empty({big(kLarge)}, {dt, gpu()});
      g.fill_(dt == DType::I64 ? 7.0 : -1.25);
      check_exact(name, g, bb::full({big(kLarge)}, dt == DType::I64 ? 7.0 : -1.25, {dt}));
      Tensor base = values({33, 65}, dt);
      Tensor bg = base.to(gpu()), bc = base.clone();
      bg.narrow(1, 5, 20).fill_(3.0);
      bc.narrow(1, 5, 20).fill_(3.0);
      check_exact(name + " on a narrow view (whole base)", bg, bc);
    }, dt);
  }
  for (DType dt : float_dtypes()) {
    std::string name = "add_/mul_ [" + dt_name(dt) + "]";
    guarded(name, [&] {
      Tensor a = values({33, 65}, dt), b = values({65}, dt), c = values({33, 65}, dt);
      Tensor ag = a.to(gpu()), ac = a.to(DType::F64);
      ag.add_(b.to(gpu()), 0.5);
      ac.add_(b.to(DType::F64), 0.5);
      check(name + " add_ broadcast alpha=0.5", ag, ac, tol_of(dt));
      ag = a.to(gpu());
      ac = a.to(DType::F64);
      ag.add_(c.to(gpu()));
      ac.add_(c.to(DType::F64));
      check(name + " add_ same shape", ag, ac, tol_of(dt));
      ag = a.to(gpu());
      ac = a.to(DType::F64);
      ag.t().narrow(0, 3, 30).mul_(-1.5);
      ac.t().narrow(0, 3, 30).mul_(-1.5);
      check(name + " mul_ on a strided view (whole base)", ag, ac, tol_of(dt));
    }, dt);
  }
  guarded("factories on the GPU", [&] {
    check_exact("zeros [bf16]", bb::zeros({33, 7}, {DType::BF16, gpu()}), bb::zeros({33, 7}, {DType::BF16}));
    check_exact("ones [f32]", bb::ones({kLarge}, {DType::F32, gpu()}), bb::ones({kLarge}, {DType::F32}));
    check_exact("full [f16]", bb::full({5, 7}, 2.5, {DType::F16, gpu()}), bb::full({5, 7}, 2.5, {DType::F16}));
    check_exact("zeros [i64]", bb::zeros({9}, {DType::I64, gpu()}), bb::zeros({9}, {DType::I64}));
    check_exact("tril_mask(33, 40)", bb::tril_mask(33, 40, gpu()), bb::tril_mask(33, 40));
    Tensor s = bb::full({}, 3.5, {DType::F32, gpu()});
    expect(s.item() == 3.5, "item() of a GPU scalar", std::to_string(s.item()));
    std::vector<float> v = bb::arange(0.0, 10.0, 1.0, {DType::F32}).to(gpu()).to_vector<float>();
    expect(v.size() == 10 && v[9] == 9.0f, "to_vector() of a GPU tensor");
  });
}

// ---- elementwise -----------------------------------------------------------------

struct BinShape {
  Shape a, b;
  View va, vb;
  const char* note;
};

void binary_ops() {
  const std::vector<BinShape> shapes = {
      {{1}, {1}, nullptr, nullptr, ""},
      {{7}, {7}, nullptr, nullptr, ""},
      {{33, 7}, {7}, nullptr, nullptr, "broadcast row"},
      {{33, 1}, {1, 7}, nullptr, nullptr, "outer broadcast"},
      {{4, 1, 5}, {3, 1}, nullptr, nullptr, "3-D broadcast"},
      {{1000}, {1}, nullptr, nullptr, "scalar-like"},
      {{7, 33}, {33, 7}, kT, nullptr, "a transposed"},
      {{33, 7}, {7, 33}, nullptr, kT, "b transposed"},
      {{7}, {33, 7}, [](const Tensor& t) { return t.expand({33, 7}); }, nullptr, "a expanded (stride 0)"},
      {{big(kLarge)}, {big(kLarge)}, nullptr, nullptr, "large"},
  };
  struct Op {
    const char* name;
    std::function<Tensor(const Tensor&, const Tensor&)> f;
    bool pos_a, away_b;
    double grad_mult;
  };
  const std::vector<Op> ops = {
      {"add", [](const Tensor& a, const Tensor& b) { return bb::add(a, b); }, false, false, 1},
      {"add alpha=-0.5", [](const Tensor& a, const Tensor& b) { return bb::add(a, b, -0.5); }, false, false, 1},
      {"sub", [](const Tensor& a, const Tensor& b) { return bb::sub(a, b); }, false, false, 1},
      {"mul", [](const Tensor& a, const Tensor& b) { return bb::mul(a, b); }, false, false, 1},
      {"div", [](const Tensor& a, const Tensor& b) { return bb::div(a, b); }, false, true, 1},
      {"pow", [](const Tensor& a, const Tensor& b) { return bb::pow(a, b); }, true, false, 2},
  };
  for (auto& s : shapes) {
    bool large = s.a.size() == 1 && s.a[0] > 100000;
    for (DType dt : float_dtypes(!large)) {
      if (large && dt == DType::F16) continue;
      for (auto& op : ops) {
        OpCheck c;
        c.name = std::string(op.name) + " " + shp(s.a) + "," + shp(s.b) + (*s.note ? " " : "") + s.note;
        c.dt = dt;
        Tensor a = op.pos_a ? rand_away(s.a, dt, 0.5, 2.5) : randn(s.a, dt);
        Tensor b = op.away_b ? rand_away(s.b, dt, 0.5, 3.0, true) : randn(s.b, dt);
        c.inputs = {in(a, s.va), in(b, s.vb)};
        auto f = op.f;
        c.f = [f](const std::vector<Tensor>& x) { return f(x[0], x[1]); };
        if (low_precision(dt)) c.grad_tol = 2 * op.grad_mult * tol_of(dt);
        // A broadcast operand's gradient sums many rounded terms (the backward formulas
        // round each product): judge it against the size of the terms, not of the sum.
        double ratio = static_cast<double>(std::max(bb::shape_numel(s.a), bb::shape_numel(s.b))) /
                       static_cast<double>(std::min(bb::shape_numel(s.a), bb::shape_numel(s.b)));
        c.abs_floor = (c.grad_tol > 0 ? c.grad_tol : tol_of(dt)) * std::sqrt(ratio);
        run(c);
      }
    }
  }
}

void scalar_and_unary_ops() {
  struct Op {
    const char* name;
    std::function<Tensor(const Tensor&)> f;
    int domain;  // 0 any, 1 positive, 2 away from zero
  };
  const std::vector<Op> ops = {
      {"add(x, 2.5)", [](const Tensor& x) { return bb::add(x, 2.5); }, 0},
      {"mul(x, -1.5)", [](const Tensor& x) { return bb::mul(x, -1.5); }, 0},
      {"pow(x, 2)", [](const Tensor& x) { return bb::pow(x, 2.0); }, 0},
      {"pow(x, 0.5)", [](const Tensor& x) { return bb::pow(x, 0.5); }, 1},
      {"pow(x, -1.5)", [](const Tensor& x) { return bb::pow(x, -1.5); }, 1},
      {"rsub(x, 1)", [](const Tensor& x) { return bb::rsub(x, 1.0); }, 0},
      {"rdiv(x, 2)", [](const Tensor& x) { return bb::rdiv(x, 2.0); }, 2},
      {"neg", [](const Tensor& x) { return bb::neg(x); }, 0},
      {"exp", [](const Tensor& x) { return bb::exp(x); }, 0},
      {"log", [](const Tensor& x) { return bb::log(x); }, 1},
      {"sqrt", [](const Tensor& x) { return bb::sqrt(x); }, 1},
      {"rsqrt", [](const Tensor& x) { return bb::rsqrt(x); }, 1},
      {"tanh", [](const Tensor& x) { return bb::tanh(x); }, 0},
      {"relu", [](const Tensor& x) { return bb::relu(x); }, 0},
      {"silu", [](const Tensor& x) { return bb::silu(x); }, 0},
      {"gelu(tanh)", [](const Tensor& x) { return bb::gelu(x, bb::GeluApprox::Tanh); }, 0},
      {"gelu(erf)", [](const Tensor& x) { return bb::gelu(x, bb::GeluApprox::None); }, 0},
      {"abs", [](const Tensor& x) { return bb::abs(x); }, 0},
  };
  struct S {
    Shape shape;
    View view;
  };
  const std::vector<S> shapes = {{{1}, nullptr}, {{7}, nullptr}, {{65, 33}, kT}, {{big(kLarge)}, nullptr}};
  for (auto& s : shapes) {
    bool large = s.shape[0] > 100000;
    for (DType dt : float_dtypes(!large)) {
      if (large && dt == DType::F16) continue;
      for (auto& op : ops) {
        bool gelu = std::string(op.name).rfind("gelu", 0) == 0;
        if (large && !(gelu || std::string(op.name) == "exp" || std::string(op.name) == "mul(x, -1.5)")) continue;
        OpCheck c;
        c.name = std::string(op.name) + " " + shp(s.shape) + (s.view ? " transposed" : "");
        c.dt = dt;
        Tensor x = op.domain == 1 ? rand_away(s.shape, dt, 0.25, 3.0) : op.domain == 2 ? rand_away(s.shape, dt, 0.5, 3.0, true)
                                                                                         : randn(s.shape, dt, 2.0);
        c.inputs = {in(x, s.view)};
        auto f = op.f;
        c.f = [f](const std::vector<Tensor>& v) { return f(v[0]); };
        if (low_precision(dt)) c.grad_tol = 3 * tol_of(dt);  // backward formulas round intermediates
        // Values and derivatives are O(1): an absolute allowance at that scale (tanh's
        // derivative 1 - y^2 from a rounded y, gelu's tail where 1 + tanh(u) = 0).
        c.abs_floor = 3 * tol_of(dt);
        run(c);
      }
    }
  }
}

void compare_and_select() {
  for (DType dt : all_dtypes()) {
    for (auto sh : std::vector<std::pair<Shape, Shape>>{{{big(kLarge)}, {big(kLarge)}}, {{33, 7}, {7}}, {{1}, {1}}}) {
      std::string name = "eq " + shp(sh.first) + "," + shp(sh.second) + " [" + dt_name(dt) + "]";
      guarded(name, [&] {
        Tensor a = bb::is_floating(dt) ? values(sh.first, dt) : randint(-3, 3, sh.first, DType::I64).to(dt);
        Tensor b = bb::is_floating(dt) ? values(sh.second, dt) : randint(-3, 3, sh.second, DType::I64).to(dt);
        if (bb::is_floating(dt) && sh.first == sh.second) {
          Tensor m = randint(0, 2, sh.first).to(DType::Bool);
          b = bb::where(m, a, b);  // about half equal
        }
        Tensor got = bb::eq(a.to(gpu()), b.to(gpu()));
        expect(got.dtype() == DType::Bool && on_dev(got), name + " gives a GPU bool tensor");
        check_exact(name, got, bb::eq(a, b));
      }, dt);
    }
  }
  for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::F64, DType::I64, DType::I32, DType::Bool}) {
    struct W {
      Shape c, a, b;
    };
    for (auto w : std::vector<W>{{{33, 1}, {33, 7}, {7}}, {{7}, {33, 7}, {33, 7}}, {{big(kLarge)}, {big(kLarge)}, {1}}}) {
      OpCheck c;
      c.name = "where c" + shp(w.c) + " a" + shp(w.a) + " b" + shp(w.b);
      c.dt = dt;
      c.inputs = {nograd(randint(0, 2, w.c).to(DType::Bool)), in(values(w.a, dt)), in(values(w.b, dt))};
      c.f = [](const std::vector<Tensor>& x) { return bb::where(x[0], x[1], x[2]); };
      run(c);
    }
  }
  for (DType dt : float_dtypes()) {
    OpCheck c;
    c.name = "masked_fill [33,7] mask [1,7]";
    c.dt = dt;
    c.inputs = {in(randn({33, 7}, dt)), nograd(randint(0, 2, {1, 7}).to(DType::Bool))};
    c.f = [](const std::vector<Tensor>& x) { return bb::masked_fill(x[0], x[1], -2.5); };
    run(c);
  }
}

// ---- reductions and softmax -------------------------------------------------------

void reductions() {
  struct R {
    Shape shape;
    Shape dims;
    bool keepdim;
    View view;
  };
  const std::vector<R> cases = {
      {{1}, {}, false, nullptr},        {{7}, {0}, false, nullptr},         {{33, 65}, {}, false, nullptr},
      {{33, 65}, {0}, false, nullptr},  {{33, 65}, {1}, true, nullptr},     {{33, 65}, {-1}, false, kT},
      {{4, 33, 17}, {1}, false, nullptr}, {{4, 33, 17}, {0, 2}, true, nullptr}, {{4, 33, 17}, {2}, false, nullptr},
      {{3, 50257}, {1}, false, nullptr}, {{big(kLarge)}, {}, false, nullptr}, {{1031, 1025}, {0}, false, nullptr},
  };
  for (auto& r : cases) {
    bool large = bb::shape_numel(r.shape) > 100000;
    for (DType dt : float_dtypes(!large)) {
      std::string where_ = shp(r.shape) + " dims" + shp(r.dims) + (r.keepdim ? " keepdim" : "") + (r.view ? " transposed" : "");
      // The absolute allowance grows with the number of summed terms.
      double terms = 1;
      if (r.dims.empty()) terms = static_cast<double>(bb::shape_numel(r.shape));
      else
        for (auto d : r.dims) terms *= static_cast<double>(r.shape[static_cast<size_t>(d < 0 ? d + static_cast<int64_t>(r.shape.size()) : d)]);
      for (int which = 0; which < 2; ++which) {
        OpCheck c;
        c.name = std::string(which ? "mean " : "sum ") + where_;
        c.dt = dt;
        c.inputs = {in(randn(r.shape, dt), r.view)};
        Shape dims = r.dims;
        bool kd = r.keepdim;
        if (which) c.f = [dims, kd](const std::vector<Tensor>& x) { return bb::mean(x[0], dims, kd); };
        else c.f = [dims, kd](const std::vector<Tensor>& x) { return bb::sum(x[0], dims, kd); };
        c.atol_scale = std::max(1.0, std::sqrt(terms) / 8);
        run(c);
      }
    }
  }
  // max / argmax over a dim, and the global max.
  struct M {
    Shape shape;
    int64_t dim;
    bool keepdim;
  };
  for (auto m : std::vector<M>{{{7}, 0, false}, {{33, 65}, 1, false}, {{33, 65}, 0, true}, {{4, 33, 17}, 1, false},
                               {{3, 50257}, -1, false}, {{1, 1}, 0, false}}) {
    for (DType dt : float_dtypes()) {
      OpCheck c;
      c.name = "max(dim=" + std::to_string(m.dim) + ") " + shp(m.shape) + (m.keepdim ? " keepdim" : "");
      c.dt = dt;
      c.inputs = {in(randn(m.shape, dt))};
      int64_t d = m.dim;
      bool kd = m.keepdim;
      c.f = [d, kd](const std::vector<Tensor>& x) { return bb::max(x[0], d, kd); };
      run(c);
      std::string an = "argmax(dim=" + std::to_string(m.dim) + ") " + shp(m.shape) + " [" + dt_name(dt) + "]";
      guarded(an, [&] {
        Tensor x = randn(m.shape, dt);
        Tensor got = bb::argmax(x.to(gpu()), d, kd);
        check_exact(an, got, bb::argmax(x, d, kd));
      }, dt);
    }
  }
  for (DType dt : float_dtypes()) {
    OpCheck c;
    c.name = "max() " + shp({33, 65});
    c.dt = dt;
    c.inputs = {in(randn({33, 65}, dt))};
    c.f = [](const std::vector<Tensor>& x) { return bb::max(x[0]); };
    run(c);
    for (Shape to : std::vector<Shape>{{33, 1}, {1, 17}, {17}, {}}) {
      OpCheck s;
      s.name = "sum_to [4,33,17] -> " + shp(to);
      s.dt = dt;
      s.inputs = {in(randn({4, 33, 17}, dt))};
      s.f = [to](const std::vector<Tensor>& x) { return bb::sum_to(x[0], to); };
      s.atol_scale = 4;
      run(s);
    }
  }
}

void softmaxes() {
  struct S {
    Shape shape;
    int64_t dim;
    double scale;
  };
  for (auto s : std::vector<S>{{{1, 1}, -1, 1}, {{7}, 0, 1}, {{33, 65}, -1, 3}, {{33, 65}, 0, 3}, {{4, 33, 17}, 1, 2},
                               {{5, 50257}, -1, 4}, {{big(2048), 1024}, -1, 3}}) {
    bool large = bb::shape_numel(s.shape) > 100000;
    for (DType dt : float_dtypes(!large)) {
      for (int lg = 0; lg < 2; ++lg) {
        OpCheck c;
        c.name = std::string(lg ? "log_softmax" : "softmax") + " " + shp(s.shape) + " dim=" + std::to_string(s.dim);
        c.dt = dt;
        c.inputs = {in(randn(s.shape, dt, s.scale))};
        int64_t d = s.dim;
        if (lg) c.f = [d](const std::vector<Tensor>& x) { return bb::log_softmax(x[0], d); };
        else c.f = [d](const std::vector<Tensor>& x) { return bb::softmax(x[0], d); };
        // Row sums in fp32 (of exponentials forward; of dy * y backward, which then
        // cancels against dy); 16-bit backward works from the rounded saved output.
        // (Tolerances from the CPU backend's own f32/bf16 against f64 over several seeds,
        // with 2x to spare: its row sums are sequential.)
        const int64_t row = s.shape[static_cast<size_t>(s.dim < 0 ? static_cast<int64_t>(s.shape.size()) + s.dim : s.dim)];
        if (dt == DType::F32) {
          c.tol = row > 10000 ? 2e-3 : row >= 1024 ? 3e-4 : 5e-5;
          if (row > 10000) c.atol_scale = 4;
        }
        if (dt == DType::BF16) c.grad_tol = 0.15;
        if (dt == DType::F16) c.grad_tol = 0.04;
        run(c);
      }
    }
  }
}

// ---- matmul ------------------------------------------------------------------------

void matmuls() {
  struct MM {
    const char* name;
    Shape a, b;
    View va, vb;
  };
  // the GPT's attention operands: qkv [B, T, 3C] -> [B, T, 3, H, D] -> q, k, v [B, H, T, D]
  auto part = [](int i) {
    return [i](const Tensor& t) { return t.view({2, 33, 3, 2, 24}).select(2, i).transpose(1, 2); };
  };
  const std::vector<MM> cases = {
      {"1x1 @ 1x1", {1, 1}, {1, 1}, nullptr, nullptr},
      {"2-D", {7, 33}, {33, 5}, nullptr, nullptr},
      {"2-D odd", {65, 129}, {129, 33}, nullptr, nullptr},
      {"batched", {3, 17, 33}, {3, 33, 9}, nullptr, nullptr},
      {"broadcast batch", {2, 1, 7, 33}, {3, 33, 5}, nullptr, nullptr},
      {"3-D @ 2-D", {4, 7, 33}, {33, 5}, nullptr, nullptr},
      {"a transposed", {33, 7}, {33, 5}, kT, nullptr},
      {"b transposed", {7, 33}, {5, 33}, nullptr, kT},
      {"both transposed batched", {3, 33, 17}, {3, 9, 33}, kT, kT},
      {"vector @ matrix", {33}, {33, 5}, nullptr, nullptr},
      {"matrix @ vector", {7, 33}, {33}, nullptr, nullptr},
      {"dot", {33}, {33}, nullptr, nullptr},
      {"att @ v (v a qkv view)", {2, 2, 33, 33}, {2, 33, 144}, nullptr, part(2)},
      {"GPT-sized", {big(300, 40), 768}, {768, big(1000, 72)}, nullptr, nullptr},
  };
  for (auto& m : cases) {
    for (DType dt : float_dtypes()) {
      OpCheck c;
      c.name = std::string("matmul ") + m.name + " " + shp(m.a) + "@" + shp(m.b);
      c.dt = dt;
      c.inputs = {in(randn(m.a, dt)), in(randn(m.b, dt))};
      c.f = [va = m.va, vb = m.vb](const std::vector<Tensor>& x) {
        return bb::matmul(va ? va(x[0]) : x[0], vb ? vb(x[1]) : x[1]);
      };
      run(c);
    }
  }
  // q @ k^T with q and k strided views of one qkv tensor, as CausalSelfAttention makes them.
  for (DType dt : float_dtypes()) {
    OpCheck c;
    c.name = "matmul q @ k^T (views of one qkv [2,33,144])";
    c.dt = dt;
    c.inputs = {in(randn({2, 33, 144}, dt))};
    c.f = [part](const std::vector<Tensor>& x) { return bb::matmul(part(0)(x[0]), part(1)(x[0]).transpose(-2, -1)); };
    run(c);
  }
  if (kSelfTest) return;  // TF32 is a GPU switch
  guarded("matmul f32 with TF32 allowed", [&] {
    bb::cuda::set_allow_tf32(true);
    expect(bb::cuda::allow_tf32(), "set_allow_tf32(true) sticks");
    OpCheck c;
    c.name = "matmul TF32 [129,257]@[257,65]";
    c.dt = DType::F32;
    c.tol = 4e-3;
    c.inputs = {in(randn({129, 257}, DType::F32)), in(randn({257, 65}, DType::F32))};
    c.f = [](const std::vector<Tensor>& x) { return bb::matmul(x[0], x[1]); };
    run(c);
    bb::cuda::set_allow_tf32(false);
    expect(!bb::cuda::allow_tf32(), "set_allow_tf32(false) sticks");
  });
  bb::cuda::set_allow_tf32(false);
}

void joins() {
  for (DType dt : {DType::F32, DType::BF16}) {
    OpCheck c;
    c.name = "cat dim 1 (one input transposed)";
    c.dt = dt;
    c.inputs = {in(randn({33, 7}, dt)), in(randn({5, 33}, dt), kT), in(randn({33, 1}, dt))};
    c.f = [](const std::vector<Tensor>& x) { return bb::cat({x[0], x[1], x[2]}, 1); };
    run(c);
    c.name = "cat dim 0";
    c.inputs = {in(randn({3, 7}, dt)), in(randn({1, 7}, dt)), in(randn({33, 7}, dt))};
    c.f = [](const std::vector<Tensor>& x) { return bb::cat({x[0], x[1], x[2]}, 0); };
    run(c);
    c.name = "stack dim 1";
    c.inputs = {in(randn({4, 7}, dt)), in(randn({4, 7}, dt))};
    c.f = [](const std::vector<Tensor>& x) { return bb::stack({x[0], x[1]}, 1); };
    run(c);
    c.name = "split(5, dim 1)[1] + chunk(3, dim 1)[1]";
    c.inputs = {in(randn({6, 13}, dt))};
    c.f = [](const std::vector<Tensor>& x) {
      return bb::add(bb::split(x[0], 5, 1)[1].contiguous(), bb::chunk(x[0], 3, 1)[1]);
    };
    run(c);
  }
}

}  // namespace

int main() {
  return program("cuda_test_cuda_ops", [] {
    if (selected("copies")) copies();
    if (selected("binary")) binary_ops();
    if (selected("unary")) scalar_and_unary_ops();
    if (selected("select")) compare_and_select();
    if (selected("reduce")) reductions();
    if (selected("softmax")) softmaxes();
    if (selected("matmul")) matmuls();
    if (selected("joins")) joins();
  });
}

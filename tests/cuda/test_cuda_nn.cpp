// The network ops on the GPU against the CPU backend: linear (with and without bias,
// strided input, the MLP chain), layer_norm and rms_norm, embedding (repeated ids,
// deterministic backward), fused cross_entropy (ignore_index, V = 50257), dropout (the
// same mask as the CPU for the same Generator seed), adamw_step_ and
// adamw_multi_step_ (f32, and bf16/f16 parameters with f32 master weights),
// sum_of_squares and clip_grad_norm_, scaled_dot_product_attention (causal or not,
// Tq != Tk, the GPT's q/k/v views), and the errors (bad ids, mixed devices).
// Forward and backward, f32/bf16/f16 (f64 where supported). Exit 77 without a GPU.
#include "cuda_check.hpp"

using namespace ct;

namespace {

using View = std::function<Tensor(const Tensor&)>;
const View kT = [](const Tensor& t) { return t.transpose(-1, -2); };

// The f32 tolerance of gelu(x W^T + b) and its gradients (against f64) when the dot
// products have K terms and the pre-activation p has an rms of rms_p. p's rounding error
// is absolute, about u sqrt(K) rms_p (u = 2^-24, random rounding errors in any
// accumulation order), not relative to each p. The forward passes it on through
// gelu' <= 1.13, harmlessly; the gradient g gelu'(p) passes it on through gelu'' (up to
// 0.8 near p = 0): an error of 0.8 u sqrt(K) rms_p |g| on dp, where the check's scale is
// rms(dp) ~ 0.7 rms(g). So the relative error is about u sqrt(K) rms_p, not u: 9e-6 at
// rms for K = 768, rms_p = 5.6, a few times that at the worst of 10^4-10^6 elements (the
// worst error of p meeting large |g| and |x|). The CPU self-test at 1e-5 measured
// worst/allowance 0.99 to 1.42 over seeds. Hence 8 u sqrt(K) max(1, rms_p), never below
// tol_of(F32): 7.4e-5 at K = 768 (1e-5 at K = 48), still 7 times below a fast tanh's
// ~5e-4 and 40 times below TF32's ~3e-3 at this K.
double gelu_of_dot_f32_tol(int64_t K, double rms_p) {
  const double u = 0x1p-24;
  return std::max(tol_of(DType::F32), 8 * u * std::sqrt(static_cast<double>(K)) * std::max(1.0, rms_p));
}

void linears() {
  struct L {
    const char* name;
    Shape x;
    int64_t out;
    bool bias;
    View vx;
  };
  const std::vector<L> cases = {
      {"1x1", {1, 1}, 1, true, nullptr},
      {"2-D bias", {7, 33}, 65, true, nullptr},
      {"3-D no bias", {2, 5, 33}, 129, false, nullptr},
      {"x transposed", {33, 7}, 17, true, kT},
      {"GPT qkv 768->2304", {big(128, 8), 768}, 2304, true, nullptr},
  };
  for (auto& l : cases) {
    for (DType dt : float_dtypes()) {
      OpCheck c;
      c.name = std::string("linear ") + l.name + " x" + shp(l.x) + " out " + std::to_string(l.out);
      c.dt = dt;
      int64_t inf = l.vx ? l.x[l.x.size() - 2] : l.x.back();
      c.inputs = {in(randn(l.x, dt), l.vx), in(randn({l.out, inf}, dt, 0.2))};
      if (l.bias) c.inputs.push_back(in(randn({l.out}, dt)));
      c.f = [](const std::vector<Tensor>& x) { return bb::linear(x[0], x[1], x.size() > 2 ? x[2] : Tensor()); };
      run(c);
    }
  }
  // The GPT MLP: linear -> gelu(tanh) -> linear (what a fused bias+GELU epilogue must match).
  for (DType dt : float_dtypes(false)) {
    OpCheck c;
    c.name = "MLP linear-gelu-linear [33,48] 48->192->48";
    c.dt = dt;
    c.inputs = {in(randn({33, 48}, dt)), in(randn({192, 48}, dt, 0.2)), in(randn({192}, dt)),
                in(randn({48, 192}, dt, 0.1)), in(randn({48}, dt))};
    c.f = [](const std::vector<Tensor>& x) {
      return bb::linear(bb::gelu(bb::linear(x[0], x[1], x[2]), bb::GeluApprox::Tanh), x[3], x[4]);
    };
    if (low_precision(dt)) c.tol = c.grad_tol = 2.5 * tol_of(dt);
    run(c);
  }
  // linear_gelu against linear then gelu on the CPU: in bf16/f16 cuBLASLt's bias+GELU
  // epilogue (with its saved pre-activation); 4C = 192 (aux ld a multiple of 8) and
  // 4C = 132 (not: the unfused fallback inside the launcher). In f32 the op runs linear
  // then gelu (see ops.hpp), with the tolerance below.
  for (int64_t hidden : {192, 132, 3072}) {
    for (DType dt : float_dtypes(false)) {
      OpCheck c;
      int64_t C = hidden == 3072 ? 768 : 48, N = hidden == 3072 ? big(64, 8) : 33;
      c.name = "linear_gelu [" + std::to_string(N) + "," + std::to_string(C) + "] -> " + std::to_string(hidden);
      c.dt = dt;
      c.inputs = {in(randn({N, C}, dt)), in(randn({hidden, C}, dt, 0.2)), in(randn({hidden}, dt))};
      c.f = [](const std::vector<Tensor>& x) { return bb::linear_gelu(x[0], x[1], x[2]); };
      if (low_precision(dt)) c.tol = c.grad_tol = 2.5 * tol_of(dt);
      else c.tol = c.grad_tol = gelu_of_dot_f32_tol(C, std::sqrt(0.04 * static_cast<double>(C) + 1.0));
      run(c);
    }
  }
}

void norms() {
  struct N {
    Shape x;
    View vx;
  };
  const std::vector<N> shapes = {{{1, 1}, nullptr},  {{1, 7}, nullptr},        {{33, 48}, nullptr},
                                 {{48, 33}, kT},     {{5, 3, 768}, nullptr},   {{17, 1000}, nullptr},
                                 {{big(64, 4), 4099}, nullptr}};
  for (auto& s : shapes) {
    int64_t n = s.vx ? s.x[s.x.size() - 2] : s.x.back();
    for (DType dt : float_dtypes()) {
      for (int params = 0; params < 3; ++params) {  // 0: weight and bias, 1: weight, 2: none
        OpCheck c;
        c.name = "layer_norm x" + shp(s.x) + (s.vx ? " transposed" : "") +
                 (params == 0 ? " w+b" : params == 1 ? " w" : " no affine");
        c.dt = dt;
        c.inputs = {in(randn(s.x, dt, 3.0, 2.0), s.vx)};  // mean 2, std 3
        if (params < 2) c.inputs.push_back(in(randn({n}, dt, 0.5, 1.0)));
        if (params < 1) c.inputs.push_back(in(randn({n}, dt)));
        c.f = [](const std::vector<Tensor>& x) {
          return bb::layer_norm(x[0], x.size() > 1 ? x[1] : Tensor(), x.size() > 2 ? x[2] : Tensor());
        };
        c.atol_scale = 2;
        run(c);
        if (params == 0) continue;
        OpCheck r;
        r.name = "rms_norm x" + shp(s.x) + (s.vx ? " transposed" : "") + (params == 1 ? " w" : " no weight");
        r.dt = dt;
        r.inputs = {in(randn(s.x, dt, 3.0, 0.5), s.vx)};
        if (params == 1) r.inputs.push_back(in(randn({n}, dt, 0.5, 1.0)));
        r.f = [](const std::vector<Tensor>& x) { return bb::rms_norm(x[0], x.size() > 1 ? x[1] : Tensor()); };
        r.atol_scale = 2;
        // n = 1: dx = w dy rstd (1 - x^2 rstd^2) is ~eps, all cancellation; judge it
        // against the O(1) terms it is made of
        if (n == 1) r.abs_floor = 10 * tol_of(dt);
        run(r);
      }
    }
  }
}

void embeddings() {
  struct E {
    Shape ids;
    int64_t V, C;
    DType idt;
    View vids;
  };
  const std::vector<E> cases = {
      {{1}, 1, 1, DType::I64, nullptr},
      {{13, 17}, 7, 33, DType::I64, nullptr},  // every id repeated ~30 times
      {{17, 13}, 7, 33, DType::I32, kT},       // strided ids
      {{4, 33}, 50257, 48, DType::I64, nullptr},
      {{big(512, 32)}, 67, 768, DType::I32, nullptr},
  };
  for (auto& e : cases) {
    for (DType dt : float_dtypes()) {
      OpCheck c;
      c.name = "embedding ids" + shp(e.ids) + " " + dt_name(e.idt) + (e.vids ? " transposed" : "") + " V=" +
               std::to_string(e.V) + " C=" + std::to_string(e.C);
      c.dt = dt;
      c.inputs = {nograd(randint(0, e.V, e.ids, e.idt), e.vids), in(randn({e.V, e.C}, dt))};
      c.f = [](const std::vector<Tensor>& x) { return bb::embedding(x[0], x[1]); };
      c.atol_scale = 2;
      if (low_precision(dt)) c.grad_tol = 3 * tol_of(dt);  // dW rows sum many dy rows
      run(c);
    }
  }
  // The backward is deterministic: the same gradient bit for bit on a second run.
  for (DType dt : {DType::F32, DType::BF16}) {
    std::string name = "embedding backward deterministic [" + dt_name(dt) + "]";
    guarded(name, [&] {
      Tensor ids = randint(0, 5, {big(4096, 256)}).to(gpu());
      Tensor w = randn({5, 64}, dt).to(gpu());
      Tensor dy = randn({big(4096, 256), 64}, dt).to(gpu());
      Tensor g1, g2;
      for (int k = 0; k < 2; ++k) {
        Tensor wl = w.detach().requires_grad_(true);
        bb::embedding(ids, wl).backward(dy);
        (k ? g2 : g1) = wl.grad();
      }
      check_exact(name, g2, g1);
    });
  }
}

void cross_entropies() {
  struct X {
    Shape logits;
    View vl;
    int64_t ignore;
    int n_ignored;
    DType tdt;
    double scale;
  };
  const std::vector<X> cases = {
      {{1, 7}, nullptr, -100, 0, DType::I64, 1},
      {{7, 7}, nullptr, -100, 2, DType::I64, 2},
      {{33, 67}, nullptr, 3, 5, DType::I64, 3},  // ignore_index 3 is also a valid class
      {{2, 33, 67}, nullptr, -100, 9, DType::I32, 3},
      {{67, 33}, kT, -100, 4, DType::I64, 3},  // logits transposed (strided)
      {{5, 50257}, nullptr, -100, 1, DType::I64, 4},
      {{big(64, 4), 50257}, nullptr, -100, 3, DType::I32, 4},
  };
  for (auto& x : cases) {
    Shape ls = x.logits;
    if (x.vl) std::swap(ls[ls.size() - 1], ls[ls.size() - 2]);
    const int64_t V = ls.back();
    Shape ts(ls.begin(), ls.end() - 1);
    for (DType dt : float_dtypes()) {
      OpCheck c;
      c.name = "cross_entropy logits" + shp(ls) + (x.vl ? " transposed" : "") + " ignore " + std::to_string(x.ignore) +
               " (" + std::to_string(x.n_ignored) + " ignored) " + dt_name(x.tdt);
      c.dt = dt;
      Tensor t = randint(0, V, ts, DType::I64);
      if (x.ignore < 0 || x.ignore >= V) {
        // the first n_ignored rows (not all of them) are ignored
        auto v = t.to_vector<int64_t>();
        for (int k = 0; k < x.n_ignored && k < static_cast<int>(v.size()) - 1; ++k) v[static_cast<size_t>(k) * 3 % v.size()] = x.ignore;
        t = bb::from_vector(v, ts, {DType::I64});
      } else {
        auto v = t.to_vector<int64_t>();
        for (int k = 0; k < x.n_ignored; ++k) v[static_cast<size_t>(k) * 2 % v.size()] = x.ignore;
        t = bb::from_vector(v, ts, {DType::I64});
      }
      c.inputs = {in(randn(x.logits, dt, x.scale), x.vl), nograd(t.to(x.tdt))};
      int64_t ig = x.ignore;
      c.f = [ig](const std::vector<Tensor>& a) { return bb::cross_entropy(a[0], a[1], ig); };
      // dlogits' relative error is lse's absolute error: a sum of V exponentials in fp32
      if (dt == DType::F32) c.tol = V > 10000 ? 3e-4 : 5e-5;
      if (low_precision(dt)) c.grad_tol = 3 * tol_of(dt);
      run(c);
    }
  }
}

void dropouts() {
  for (double p : {0.1, 0.5}) {
    for (Shape s : std::vector<Shape>{{1}, {7}, {33, 65}, {big(kLarge)}}) {
      for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
        std::string name = "dropout p=" + std::to_string(p).substr(0, 3) + " " + shp(s) + " [" + dt_name(dt) + "]";
        guarded(name, [&] {
          Tensor x = randn(s, dt);
          bb::Generator gc(777 + s.size()), gg(777 + s.size());
          gc.set_offset(5);
          gg.set_offset(5);
          Tensor xc = x.to(DType::F64).requires_grad_(true);
          Tensor xg = x.to(gpu()).requires_grad_(true);
          Tensor yc = bb::dropout(xc, p, true, &gc);
          Tensor yg = bb::dropout(xg, p, true, &gg);
          expect(gc.offset() == gg.offset(), name + " generator offsets advance alike",
                 std::to_string(gc.offset()) + " vs " + std::to_string(gg.offset()));
          // the same elements are dropped ...
          Tensor zero_c = bb::eq(yc, bb::zeros({}, {DType::F64}));
          Tensor zero_g = bb::eq(yg, bb::zeros({}, {dt, gpu()}));
          check_exact(name + " mask", zero_g, zero_c);
          // ... and the kept ones scaled by 1/(1-p)
          check(name + " values", yg, yc, tol_of(dt));
          Tensor w = randn(s, dt);
          yc.backward(w.to(DType::F64));
          yg.backward(w.to(gpu()));
          check(name + " grad", xg.grad(), xc.grad(), tol_of(dt));
        });
      }
    }
  }
  guarded("dropout with the default generator", [&] {
    Tensor x = randn({1000}, DType::F32);
    bb::manual_seed(99);
    Tensor yc = bb::dropout(x, 0.3);
    bb::manual_seed(99);
    Tensor yg = bb::dropout(x.to(gpu()), 0.3);
    check_exact("dropout with the default generator", yg, yc);
  });
}

// ---- AdamW -------------------------------------------------------------------------

struct AdamState {
  Tensor p, m, v, master;
};

void adamw() {
  const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8;
  // adamw_step_ on one parameter, three steps, f32 against the CPU in f64.
  for (DType dt : {DType::F32, DType::BF16}) {
    std::string name = "adamw_step_ [" + dt_name(dt) + "] [33,65]";
    guarded(name, [&] {
      Tensor p0 = randn({33, 65}, dt);
      Tensor pg = p0.to(gpu()), mg = bb::zeros({33, 65}, {DType::F32, gpu()}), vg = bb::zeros({33, 65}, {DType::F32, gpu()});
      // the reference: f64 for f32; the CPU's own bf16 step for bf16 (it rounds alike)
      DType rd = dt == DType::F32 ? DType::F64 : dt;
      DType rs = dt == DType::F32 ? DType::F64 : DType::F32;
      Tensor pc = p0.to(rd).clone(), mc = bb::zeros({33, 65}, {rs}), vc = bb::zeros({33, 65}, {rs});
      for (int64_t step = 1; step <= 3; ++step) {
        Tensor g = randn({33, 65}, dt);
        bb::AdamWParams hp{lr, b1, b2, eps, 0.1, step};
        Tensor gg = g.to(gpu()), gc = g.to(rd);
        bb::adamw_step_(pg, gg, mg, vg, hp);
        bb::adamw_step_(pc, gc, mc, vc, hp);
      }
      check(name + " param", pg, pc, tol_of(dt));
      check(name + " exp_avg", mg, mc, 1e-5);
      check(name + " exp_avg_sq", vg, vc, 1e-5);
    });
  }

  // adamw_multi_step_: awkward shapes, per-parameter steps and weight decays, f32 params
  // and 16-bit params with f32 master weights, in one list; 3 calls with new gradients.
  struct Item {
    Shape shape;
    DType dt;
    bool master;
    int64_t step0;
    double wd;
  };
  const std::vector<std::vector<Item>> lists = {
      {{{1}, DType::F32, false, 0, 0.0},
       {{7}, DType::F32, false, 2, 0.1},
       {{33, 65}, DType::F32, false, 0, 0.1},
       {{big(kLarge)}, DType::F32, false, 5, 0.01},
       {{768}, DType::F32, false, 0, 0.0}},
      {{{33, 65}, DType::BF16, true, 0, 0.1},
       {{7}, DType::BF16, true, 3, 0.0},
       {{big(kLarge)}, DType::BF16, true, 0, 0.1},
       {{1}, DType::F16, true, 0, 0.1},
       {{129, 3}, DType::F16, true, 1, 0.0}},
      {{{33, 7}, DType::F32, false, 0, 0.1}, {{33, 7}, DType::BF16, true, 0, 0.1}, {{5}, DType::BF16, false, 0, 0.0}},
  };
  for (size_t li = 0; li < lists.size(); ++li) {
    const auto& list = lists[li];
    std::string name = "adamw_multi_step_ list " + std::to_string(li);
    guarded(name, [&] {
      std::vector<AdamState> G, R;  // GPU, reference (f64 CPU)
      for (auto& it : list) {
        AdamState g, r;
        Tensor m0 = randn(it.shape, DType::F32, 0.02);
        g.master = it.master ? m0.to(gpu()) : Tensor();
        g.p = it.master ? m0.to(it.dt).to(gpu()) : m0.to(it.dt).to(gpu());
        g.m = bb::zeros(it.shape, {DType::F32, gpu()});
        g.v = bb::zeros(it.shape, {DType::F32, gpu()});
        // reference: the master (or the param) in f64
        r.p = (it.master ? m0 : m0.to(it.dt)).to(DType::F64).clone();
        r.m = bb::zeros(it.shape, {DType::F64});
        r.v = bb::zeros(it.shape, {DType::F64});
        if (it.step0 > 0) {  // start from non-zero moments
          Tensor m1 = randn(it.shape, DType::F32, 0.01), v1 = bb::abs(randn(it.shape, DType::F32, 1e-4));
          g.m = m1.to(gpu());
          g.v = v1.to(gpu());
          r.m = m1.to(DType::F64);
          r.v = v1.to(DType::F64);
        }
        G.push_back(g);
        R.push_back(r);
      }
      for (int call = 0; call < 3; ++call) {
        std::vector<bb::AdamWTensors> items;
        for (size_t k = 0; k < list.size(); ++k) {
          const Item& it = list[k];
          Tensor grad = randn(it.shape, it.dt);
          int64_t step = it.step0 + call + 1;
          items.push_back({G[k].p, grad.to(gpu()), G[k].m, G[k].v, G[k].master, step, it.wd});
          bb::AdamWParams hp{lr, b1, b2, eps, it.wd, step};
          Tensor gr = grad.to(DType::F64);
          bb::adamw_step_(R[k].p, gr, R[k].m, R[k].v, hp);
          if (!it.master && it.dt != DType::F32)  // a 16-bit param without master rounds every step
            R[k].p = R[k].p.to(it.dt).to(DType::F64);
        }
        bb::adamw_multi_step_(items, lr, b1, b2, eps);
      }
      for (size_t k = 0; k < list.size(); ++k) {
        const Item& it = list[k];
        std::string in_ = name + " item " + std::to_string(k) + " " + shp(it.shape) + " " + dt_name(it.dt) +
                          (it.master ? "+master" : "");
        if (it.master) {
          check(in_ + " master", G[k].master, R[k].p, 1e-5);
          check_exact(in_ + " param == round(master)", G[k].p, G[k].master.to(it.dt));
        } else {
          check(in_ + " param", G[k].p, R[k].p, it.dt == DType::F32 ? 1e-5 : tol_of(it.dt));
        }
        check(in_ + " exp_avg", G[k].m, R[k].m, 1e-5);
        check(in_ + " exp_avg_sq", G[k].v, R[k].v, 1e-5);
      }
    });
  }
  if (kSelfTest) return;
  expect_throw<bb::DeviceError>("adamw_multi_step_ with a CPU grad for a GPU param", [&] {
    Tensor p = bb::zeros({4}, {DType::F32, gpu()}), m = bb::zeros({4}, {DType::F32, gpu()}),
           v = bb::zeros({4}, {DType::F32, gpu()});
    bb::adamw_multi_step_({{p, bb::ones({4}), m, v, Tensor(), 1, 0.0}}, lr, b1, b2, eps);
  });
}

void norms_of_grads() {
  guarded("sum_of_squares", [&] {
    std::vector<Tensor> host_list = {randn({big(kLarge)}, DType::F32), randn({33, 65}, DType::BF16),
                                     randn({7}, DType::F16), randn({1}, DType::F32), randn({65, 33}, DType::F32)};
    std::vector<Tensor> gl;
    for (auto& t : host_list) gl.push_back(t.to(gpu()));
    gl[4] = gl[4].t();  // a transposed one
    gl.push_back(Tensor());  // undefined: skipped
    double want = 0;
    for (auto& t : host_list) want += bb::sum_of_squares({t.to(DType::F64)});
    double got = bb::sum_of_squares(gl);
    double err = std::abs(got - want) / want;
    expect(err < 1e-5, "sum_of_squares mixed list", "got " + std::to_string(got) + " want " + std::to_string(want) +
                                                         " rel err " + std::to_string(err) + " (tol 1e-5)");
    expect(bb::sum_of_squares(std::vector<Tensor>{}) == 0.0, "sum_of_squares of nothing is 0");
  });
  for (DType dt : {DType::F32, DType::BF16}) {
    std::string name = "clip_grad_norm_ [" + dt_name(dt) + "]";
    guarded(name, [&] {
      std::vector<Tensor> pc, pg;
      for (Shape s : std::vector<Shape>{{33, 65}, {7}, {1}, {big(100003, 1003)}}) {
        Tensor p = randn(s, dt), g = randn(s, dt);
        Tensor a = p.to(DType::F64).clone(), b = p.to(gpu());
        a.set_grad(g.to(DType::F64));
        b.set_grad(g.to(gpu()));
        pc.push_back(a);
        pg.push_back(b);
      }
      double nc = bb::optim::clip_grad_norm_(pc, 1.0), ng = bb::optim::clip_grad_norm_(pg, 1.0);
      expect(std::abs(nc - ng) <= 1e-5 * nc, name + " norm", std::to_string(ng) + " vs " + std::to_string(nc));
      for (size_t k = 0; k < pc.size(); ++k) check(name + " clipped grad " + std::to_string(k), pg[k].grad(), pc[k].grad(), tol_of(dt));
    });
  }
}

void attention() {
  struct A {
    const char* name;
    Shape q, kv;
    bool causal;
    double scale;  // <= 0: default
  };
  const std::vector<A> cases = {
      {"T=1", {1, 1, 1, 8}, {1, 1, 1, 8}, true, 0},
      {"non-causal", {2, 3, 7, 16}, {2, 3, 7, 16}, false, 0},
      {"causal", {2, 3, 7, 16}, {2, 3, 7, 16}, true, 0},
      {"causal T=33 D=24", {2, 2, 33, 24}, {2, 2, 33, 24}, true, 0},
      {"Tq<Tk causal", {2, 2, 5, 16}, {2, 2, 33, 16}, true, 0},
      {"Tq<Tk non-causal scale=0.3", {2, 2, 5, 16}, {2, 2, 33, 16}, false, 0.3},
      {"causal T=big D=64", {1, 4, big(128, 16), 64}, {1, 4, big(128, 16), 64}, true, 0},
  };
  for (auto& a : cases) {
    for (DType dt : float_dtypes()) {
      OpCheck c;
      c.name = std::string("sdpa ") + a.name + " q" + shp(a.q) + " kv" + shp(a.kv);
      c.dt = dt;
      c.inputs = {in(randn(a.q, dt)), in(randn(a.kv, dt)), in(randn(a.kv, dt))};
      bool causal = a.causal;
      double sc = a.scale;
      c.f = [causal, sc](const std::vector<Tensor>& x) {
        return sc > 0 ? bb::scaled_dot_product_attention(x[0], x[1], x[2], causal, sc)
                      : bb::scaled_dot_product_attention(x[0], x[1], x[2], causal);
      };
      if (low_precision(dt)) {  // scores, probabilities and products each rounded
        c.tol = 4 * tol_of(dt);
        c.grad_tol = 6 * tol_of(dt);
      }
      // One key: softmax is the constant 1, so dq and dk are exactly 0 and the float64
      // reference's are rounding noise (~1e-16) that no relative tolerance can compare
      // against; a floor of tol keeps any real gradient (O(1) here) a failure.
      if (a.kv[2] == 1) c.abs_floor = tol_of(dt);
      run(c);
    }
  }
  // q, k, v as strided views of one qkv [B, T, 3C] tensor, as CausalSelfAttention makes them.
  for (DType dt : float_dtypes()) {
    OpCheck c;
    c.name = "sdpa causal on qkv views [2,33,3*48] H=2 D=24";
    c.dt = dt;
    c.inputs = {in(randn({2, 33, 144}, dt))};
    c.f = [](const std::vector<Tensor>& x) {
      Tensor v5 = x[0].view({2, 33, 3, 2, 24});
      return bb::scaled_dot_product_attention(v5.select(2, 0).transpose(1, 2), v5.select(2, 1).transpose(1, 2),
                                              v5.select(2, 2).transpose(1, 2), true);
    };
    if (low_precision(dt)) {
      c.tol = 4 * tol_of(dt);
      c.grad_tol = 6 * tol_of(dt);
    }
    run(c);
  }
}

void errors() {
  Tensor w = randn({7, 4}, DType::F32).to(gpu());
  expect_throw<bb::IndexError>("embedding: id == V on the GPU throws IndexError", [&] {
    bb::embedding(bb::from_vector<int64_t>({0, 7, 1}, {3}, {DType::I64, gpu()}), w);
  });
  expect_throw<bb::IndexError>("embedding: negative id on the GPU throws IndexError", [&] {
    bb::embedding(bb::from_vector<int32_t>({0, -1}, {2}, {DType::I32, gpu()}), w);
  });
  Tensor logits = randn({3, 5}, DType::F32).to(gpu());
  expect_throw<bb::IndexError>("cross_entropy: target == V on the GPU throws IndexError", [&] {
    bb::cross_entropy(logits, bb::from_vector<int64_t>({0, 5, 1}, {3}, {DType::I64, gpu()}));
  });
  guarded("the GPU still works after those errors", [&] {
    Tensor ids = bb::from_vector<int64_t>({0, 6, 1}, {3}, {DType::I64, gpu()});
    check_exact("embedding after errors", bb::embedding(ids, w), bb::embedding(ids.to(host()), w.to(host())));
    Tensor t = bb::from_vector<int64_t>({0, -100, 4}, {3}, {DType::I64, gpu()});
    check("cross_entropy with -100 ignored is not an error", bb::cross_entropy(logits, t),
          bb::cross_entropy(logits.to(host()), t.to(host())), 1e-5);
  });
  if (kSelfTest) return;  // the rest mixes devices
  Tensor a = randn({4, 4}, DType::F32), ag = a.to(gpu());
  expect_throw<bb::DeviceError>("add(cpu, gpu) throws DeviceError", [&] { bb::add(a, ag); });
  expect_throw<bb::DeviceError>("mul(gpu, cpu) throws DeviceError", [&] { bb::mul(ag, a); });
  expect_throw<bb::DeviceError>("matmul(cpu, gpu) throws DeviceError", [&] { bb::matmul(a, ag); });
  expect_throw<bb::DeviceError>("linear(gpu x, cpu w) throws DeviceError", [&] { bb::linear(ag, a); });
  expect_throw<bb::DeviceError>("where(cpu cond, gpu, gpu) throws DeviceError",
                                [&] { bb::where(bb::ones({4, 4}, {DType::Bool}), ag, ag); });
  expect_throw<bb::DeviceError>("embedding(cpu ids, gpu w) throws DeviceError",
                                [&] { bb::embedding(bb::zeros({2}, {DType::I64}), w); });
  expect_throw<bb::DeviceError>("cross_entropy(gpu logits, cpu targets) throws DeviceError",
                                [&] { bb::cross_entropy(logits, bb::zeros({3}, {DType::I64})); });
  expect_throw<bb::DeviceError>("layer_norm(gpu x, cpu w) throws DeviceError",
                                [&] { bb::layer_norm(ag, bb::ones({4}), Tensor()); });
  expect_throw<bb::DeviceError>("sdpa(gpu q, cpu k, cpu v) throws DeviceError", [&] {
    Tensor q = bb::ones({1, 1, 2, 4}, {DType::F32, gpu()}), k = bb::ones({1, 1, 2, 4});
    bb::scaled_dot_product_attention(q, k, k);
  });
  expect_throw<bb::DeviceError>("gpu.add_(cpu) throws DeviceError", [&] { Tensor x = ag.clone(); x.add_(a); });
  expect_throw<bb::DeviceError>("a tensor on a GPU that does not exist throws DeviceError",
                                [&] { bb::zeros({2}, {DType::F32, bb::Device::cuda(bb::cuda::device_count() + 7)}); });
}

}  // namespace

int main() {
  return program("cuda_test_cuda_nn", [] {
    if (selected("linear")) linears();
    if (selected("norm")) norms();
    if (selected("embedding")) embeddings();
    if (selected("cross_entropy")) cross_entropies();
    if (selected("dropout")) dropouts();
    if (selected("adamw")) adamw();
    if (selected("sum_of_squares")) norms_of_grads();
    if (selected("attention")) attention();
    if (selected("errors")) errors();
  });
}

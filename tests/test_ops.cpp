// Value tests of every op in barbell/ops/ops.hpp against float64 references computed
// here with plain loops, on awkward shapes and strided inputs, plus 16-bit/f32 variants.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

#include "testing.hpp"

namespace bb = barbell;
using bb::Shape;
using bb::Tensor;

namespace {

// ---- a tiny float64 reference library -----------------------------------------------------------

struct Ref {
  std::vector<double> v;
  Shape s;
};

Ref ref_of(const Tensor& t) { return {t.to_vector<double>(), t.shape()}; }
Tensor tensor_of(const Ref& r) { return bb::from_vector(r.v, r.s, {bb::kF64}); }

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

std::vector<int64_t> unravel(int64_t i, const Shape& s) {
  std::vector<int64_t> idx(s.size());
  for (int64_t d = int64_t(s.size()) - 1; d >= 0; --d) {
    idx[size_t(d)] = i % s[size_t(d)];
    i /= s[size_t(d)];
  }
  return idx;
}

// Flat index into a tensor of shape `s` for the (right-aligned, broadcast) index `idx`.
int64_t ravel(const std::vector<int64_t>& idx, const Shape& s) {
  size_t lead = idx.size() - s.size();
  int64_t off = 0;
  for (size_t d = 0; d < s.size(); ++d) off = off * s[d] + (s[d] == 1 ? 0 : idx[lead + d]);
  return off;
}

Shape bshape(const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape o(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i + a.size() >= n ? a[i + a.size() - n] : 1;
    int64_t db = i + b.size() >= n ? b[i + b.size() - n] : 1;
    o[i] = da == 1 ? db : da;
  }
  return o;
}

Ref map1(const Ref& a, const std::function<double(double)>& f) {
  Ref r{a.v, a.s};
  for (auto& x : r.v) x = f(x);
  return r;
}

Ref map2(const Ref& a, const Ref& b, const std::function<double(double, double)>& f) {
  Ref r;
  r.s = bshape(a.s, b.s);
  r.v.resize(size_t(numel(r.s)));
  for (int64_t i = 0; i < numel(r.s); ++i) {
    auto idx = unravel(i, r.s);
    r.v[size_t(i)] = f(a.v[size_t(ravel(idx, a.s))], b.v[size_t(ravel(idx, b.s))]);
  }
  return r;
}

// Sum or mean over `dims` (all when empty).
Ref reduce_ref(const Ref& x, std::vector<int64_t> dims, bool keepdim, bool mean) {
  const int64_t nd = int64_t(x.s.size());
  std::vector<bool> red(size_t(nd), dims.empty());
  for (auto d : dims) red[size_t(d < 0 ? d + nd : d)] = true;
  Shape keep, out;
  int64_t count = 1;
  for (int64_t d = 0; d < nd; ++d) {
    keep.push_back(red[size_t(d)] ? 1 : x.s[size_t(d)]);
    if (red[size_t(d)]) count *= x.s[size_t(d)];
    if (!red[size_t(d)] || keepdim) out.push_back(keep.back());
  }
  Ref r;
  r.s = out;
  r.v.assign(size_t(numel(keep)), 0.0);
  for (int64_t i = 0; i < numel(x.s); ++i) r.v[size_t(ravel(unravel(i, x.s), keep))] += x.v[size_t(i)];
  if (mean)
    for (auto& v : r.v) v /= double(count);
  return r;
}

// Reduces every 1-D fiber along `dim` with f.
Ref fiber_reduce(const Ref& x, int64_t dim, bool keepdim,
                 const std::function<double(const std::vector<double>&)>& f) {
  const int64_t nd = int64_t(x.s.size());
  const int64_t d = dim < 0 ? dim + nd : dim;
  const int64_t n = x.s[size_t(d)];
  int64_t inner = 1;
  for (int64_t k = d + 1; k < nd; ++k) inner *= x.s[size_t(k)];
  const int64_t outer = numel(x.s) / std::max<int64_t>(n * inner, 1);
  Ref r;
  r.s = x.s;
  if (keepdim)
    r.s[size_t(d)] = 1;
  else
    r.s.erase(r.s.begin() + d);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      std::vector<double> fib(static_cast<size_t>(n));
      for (int64_t k = 0; k < n; ++k) fib[size_t(k)] = x.v[size_t((o * n + k) * inner + i)];
      r.v.push_back(f(fib));
    }
  return r;
}

// Applies f to every 1-D fiber along `dim` (f gets and returns the fiber).
Ref along(const Ref& x, int64_t dim,
          const std::function<std::vector<double>(const std::vector<double>&)>& f) {
  const int64_t nd = int64_t(x.s.size());
  const int64_t d = dim < 0 ? dim + nd : dim;
  const int64_t n = x.s[size_t(d)];
  int64_t inner = 1;
  for (int64_t k = d + 1; k < nd; ++k) inner *= x.s[size_t(k)];
  const int64_t outer = numel(x.s) / std::max<int64_t>(n * inner, 1);
  Ref r{x.v, x.s};
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      std::vector<double> fib(static_cast<size_t>(n));
      for (int64_t k = 0; k < n; ++k) fib[size_t(k)] = x.v[size_t((o * n + k) * inner + i)];
      auto res = f(fib);
      for (int64_t k = 0; k < n; ++k) r.v[size_t((o * n + k) * inner + i)] = res[size_t(k)];
    }
  return r;
}

std::vector<double> softmax_vec(const std::vector<double>& x, bool log) {
  double m = *std::max_element(x.begin(), x.end());
  double s = 0;
  for (double v : x) s += std::exp(v - m);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = log ? x[i] - m - std::log(s) : std::exp(x[i] - m) / s;
  return y;
}

// numpy matmul on float64, 1-D rules included.
Ref matmul_ref(Ref a, Ref b) {
  bool a1 = a.s.size() == 1, b1 = b.s.size() == 1;
  if (a1) a.s.insert(a.s.begin(), 1);
  if (b1) b.s.push_back(1);
  const size_t na = a.s.size(), nb = b.s.size();
  const int64_t M = a.s[na - 2], K = a.s[na - 1], N = b.s[nb - 1];
  REQUIRE(K == b.s[nb - 2]);
  Shape ba(a.s.begin(), a.s.end() - 2), bbs(b.s.begin(), b.s.end() - 2);
  Shape batch = bshape(ba, bbs);
  Shape os = batch;
  os.push_back(M);
  os.push_back(N);
  Ref r;
  r.v.assign(size_t(numel(os)), 0.0);
  for (int64_t bi = 0; bi < numel(batch); ++bi) {
    auto idx = unravel(bi, batch);
    int64_t oa = ravel(idx, ba) * M * K, ob = ravel(idx, bbs) * K * N;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += a.v[size_t(oa + m * K + k)] * b.v[size_t(ob + k * N + n)];
        r.v[size_t((bi * M + m) * N + n)] = s;
      }
  }
  if (b1) os.pop_back();
  if (a1) os.erase(os.end() - (b1 ? 1 : 2));
  r.s = os;
  return r;
}

// ---- inputs ------------------------------------------------------------------------------------------

Tensor uniform(const Shape& s, uint64_t seed, double lo = -2.0, double hi = 2.0, bb::DType dt = bb::kF64) {
  bb::Generator g(seed);
  return bb::add(bb::mul(bb::rand(s, {bb::kF64}, &g), hi - lo), lo).to(dt);
}

// The same values in other memory layouts: contiguous, transposed storage, a narrow
// of a bigger buffer, reversed-dims storage.
std::vector<Tensor> layouts(const Tensor& x) {
  bb::NoGradGuard g;
  std::vector<Tensor> out = {x};
  const int64_t nd = x.dim();
  if (nd >= 2) out.push_back(x.transpose(-1, -2).contiguous().transpose(-1, -2));
  if (nd >= 1) {
    Shape big = x.shape();
    big.back() += 3;
    if (nd >= 2) big.front() += 1;
    Tensor buf = bb::full(big, 1e30, x.options());
    Tensor v = buf.narrow(-1, 2, x.shape().back());
    if (nd >= 2) v = v.narrow(0, 1, x.shape().front());
    v.copy_(x);
    out.push_back(v);
  }
  if (nd >= 3) {
    Shape rev;
    for (int64_t d = nd - 1; d >= 0; --d) rev.push_back(d);
    out.push_back(x.permute(rev).contiguous().permute(rev));
  }
  for (size_t i = 1; i < out.size(); ++i) REQUIRE(bbtest::max_abs_diff(out[i], x) == 0.0);
  return out;
}

void check(const Tensor& got, const Ref& want, double atol = 1e-12, double rtol = 1e-12) {
  REQUIRE(got.dtype() == bb::kF64);
  bbtest::require_close(got, tensor_of(want), atol, rtol);
}

const double kSqrt2OverPi = std::sqrt(2.0 / std::acos(-1.0));

}  // namespace

// ---- elementwise ----------------------------------------------------------------------------------

TEST_CASE("unary ops against float64 references", "[ops][unary]") {
  struct U {
    const char* name;
    std::function<Tensor(const Tensor&)> op;
    std::function<double(double)> ref;
    bool positive;
  };
  std::vector<U> ops = {
      {"neg", [](const Tensor& x) { return bb::neg(x); }, [](double x) { return -x; }, false},
      {"operator-", [](const Tensor& x) { return -x; }, [](double x) { return -x; }, false},
      {"exp", [](const Tensor& x) { return bb::exp(x); }, [](double x) { return std::exp(x); }, false},
      {"exp method", [](const Tensor& x) { return x.exp(); }, [](double x) { return std::exp(x); }, false},
      {"log", [](const Tensor& x) { return bb::log(x); }, [](double x) { return std::log(x); }, true},
      {"sqrt", [](const Tensor& x) { return bb::sqrt(x); }, [](double x) { return std::sqrt(x); }, true},
      {"rsqrt", [](const Tensor& x) { return bb::rsqrt(x); }, [](double x) { return 1 / std::sqrt(x); },
       true},
      {"tanh", [](const Tensor& x) { return bb::tanh(x); }, [](double x) { return std::tanh(x); }, false},
      {"relu", [](const Tensor& x) { return bb::relu(x); }, [](double x) { return x > 0 ? x : 0.0; }, false},
      {"silu", [](const Tensor& x) { return bb::silu(x); }, [](double x) { return x / (1 + std::exp(-x)); },
       false},
      {"gelu tanh", [](const Tensor& x) { return bb::gelu(x); },
       [](double x) { return 0.5 * x * (1 + std::tanh(kSqrt2OverPi * (x + 0.044715 * x * x * x))); }, false},
      {"gelu erf", [](const Tensor& x) { return bb::gelu(x, bb::GeluApprox::None); },
       [](double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }, false},
      {"abs", [](const Tensor& x) { return bb::abs(x); }, [](double x) { return std::abs(x); }, false},
  };
  for (const Shape& s : {Shape{}, Shape{1}, Shape{7}, Shape{3, 1, 5}, Shape{2, 3, 4}}) {
    Tensor x = uniform(s, 11, -3.0, 3.0);
    Tensor xp = uniform(s, 12, 0.05, 4.0);
    for (auto& u : ops) {
      const Tensor& base = u.positive ? xp : x;
      Ref want = map1(ref_of(base), u.ref);
      for (auto& in : layouts(base)) {
        INFO(u.name << " on " << bb::shape_str(s) << " strides " << bb::shape_str(in.strides()));
        Tensor y = u.op(in);
        REQUIRE(y.shape() == s);
        check(y, want, 1e-12, 1e-12);
      }
    }
  }
  // An expanded (stride-0) input.
  Tensor col = uniform({3, 1}, 13);
  Tensor e = col.expand({3, 4});
  check(bb::tanh(e), map1(ref_of(e), [](double x) { return std::tanh(x); }));
  // Special values.
  Tensor sp = bb::from_vector<double>({0.0, -0.0, INFINITY, -INFINITY}, {4});
  auto r = bb::relu(sp).to_vector<double>();
  REQUIRE(r[2] == INFINITY);
  REQUIRE(r[3] == 0.0);
  REQUIRE(std::isnan(bb::log(bb::full({1}, -1.0, {bb::kF64})).item()));
  REQUIRE(bb::exp(bb::full({1}, -INFINITY, {bb::kF64})).item() == 0.0);
  // neg works on integers.
  REQUIRE(bb::neg(bb::arange(3)).to_vector<int64_t>() == std::vector<int64_t>{0, -1, -2});
}

TEST_CASE("binary ops with broadcasting against float64 references", "[ops][binary]") {
  struct B {
    const char* name;
    std::function<Tensor(const Tensor&, const Tensor&)> op;
    std::function<double(double, double)> ref;
  };
  std::vector<B> ops = {
      {"add", [](const Tensor& a, const Tensor& b) { return bb::add(a, b); },
       [](double a, double b) { return a + b; }},
      {"add alpha", [](const Tensor& a, const Tensor& b) { return bb::add(a, b, -2.5); },
       [](double a, double b) { return a - 2.5 * b; }},
      {"operator+", [](const Tensor& a, const Tensor& b) { return a + b; },
       [](double a, double b) { return a + b; }},
      {"sub", [](const Tensor& a, const Tensor& b) { return bb::sub(a, b); },
       [](double a, double b) { return a - b; }},
      {"operator-", [](const Tensor& a, const Tensor& b) { return a - b; },
       [](double a, double b) { return a - b; }},
      {"mul", [](const Tensor& a, const Tensor& b) { return bb::mul(a, b); },
       [](double a, double b) { return a * b; }},
      {"operator*", [](const Tensor& a, const Tensor& b) { return a * b; },
       [](double a, double b) { return a * b; }},
      {"div", [](const Tensor& a, const Tensor& b) { return bb::div(a, b); },
       [](double a, double b) { return a / b; }},
      {"operator/", [](const Tensor& a, const Tensor& b) { return a / b; },
       [](double a, double b) { return a / b; }},
      {"pow", [](const Tensor& a, const Tensor& b) { return bb::pow(bb::abs(a), b); },
       [](double a, double b) { return std::pow(std::abs(a), b); }},
  };
  std::vector<std::pair<Shape, Shape>> shapes = {
      {{1}, {1}},
      {{5}, {5}},
      {{3, 1, 5}, {4, 5}},
      {{2, 1, 4, 1}, {1, 3, 1, 5}},
      {{7}, {}},
      {{}, {2, 3}},
      {{3, 4}, {3, 1}},
      {{1, 4}, {5, 1}},
      {{2, 3, 4}, {2, 3, 4}},
      {{4, 1, 3}, {1, 2, 1}},
  };
  for (auto& [sa, sb] : shapes) {
    Tensor a = uniform(sa, 21, -2.0, 2.0);
    Tensor b = uniform(sb, 22, 0.5, 2.0);  // away from 0: div and pow stay tame
    for (auto& op : ops) {
      Ref want = map2(ref_of(a), ref_of(b), op.ref);
      for (auto& la : layouts(a)) {
        for (auto& lb : layouts(b)) {
          INFO(op.name << ": " << bb::shape_str(sa) << " strides " << bb::shape_str(la.strides()) << " with "
                       << bb::shape_str(sb) << " strides " << bb::shape_str(lb.strides()));
          Tensor y = op.op(la, lb);
          REQUIRE(y.shape() == want.s);
          check(y, want, 1e-12, 1e-12);
        }
      }
    }
  }
  // Broadcasting against an explicitly expanded operand.
  Tensor a = uniform({3, 1}, 23).expand({3, 4});
  Tensor b = uniform({4}, 24);
  check(bb::mul(a, b), map2(ref_of(a), ref_of(b), [](double x, double y) { return x * y; }));
  // A long row (more than one chunk of the CPU loop) with a broadcast operand.
  Tensor la = uniform({3, 20000}, 25), lb = uniform({3, 1}, 26);
  check(bb::sub(la, lb), map2(ref_of(la), ref_of(lb), [](double x, double y) { return x - y; }));
  // Zero-size operands.
  REQUIRE(bb::add(bb::zeros({0, 3}), bb::ones({3})).shape() == Shape{0, 3});
}

TEST_CASE("binary ops on integer tensors", "[ops][binary]") {
  Tensor a = bb::from_vector<int32_t>({1, -2, 3, 4}, {2, 2});
  Tensor b = bb::from_vector<int32_t>({10, 20}, {2});
  Tensor s = bb::add(a, b);
  REQUIRE(s.dtype() == bb::kI32);
  REQUIRE(s.to_vector<int32_t>() == std::vector<int32_t>{11, 18, 13, 24});
  REQUIRE(bb::mul(a, b).to_vector<int32_t>() == std::vector<int32_t>{10, -40, 30, 80});
  REQUIRE(bb::sub(a, b).to_vector<int32_t>() == std::vector<int32_t>{-9, -22, -7, -16});
  Tensor l = bb::from_vector<int64_t>({3000000000LL, -5}, {2});
  REQUIRE(bb::add(l, l).to_vector<int64_t>() == std::vector<int64_t>{6000000000LL, -10});
  REQUIRE(bb::add(l, 1).to_vector<int64_t>() == std::vector<int64_t>{3000000001LL, -4});
  // A floating scalar promotes an integer tensor to f32 (PyTorch's rule), not truncated.
  REQUIRE(bb::add(l, 1.0).dtype() == bb::kF32);
}

TEST_CASE("scalar forms: add, mul, pow, rsub, rdiv and the operators", "[ops][binary]") {
  Tensor x = uniform({3, 5}, 31, 0.5, 3.0);
  for (auto& in : layouts(x)) {
    Ref r = ref_of(in);
    check(bb::add(in, 1.25), map1(r, [](double v) { return v + 1.25; }));
    check(in + 1.25, map1(r, [](double v) { return v + 1.25; }));
    check(1.25 + in, map1(r, [](double v) { return v + 1.25; }));
    check(in - 0.5, map1(r, [](double v) { return v - 0.5; }));
    check(0.5 - in, map1(r, [](double v) { return 0.5 - v; }));
    check(bb::rsub(in, 0.5), map1(r, [](double v) { return 0.5 - v; }));
    check(bb::mul(in, -3.0), map1(r, [](double v) { return -3 * v; }));
    check(in * -3.0, map1(r, [](double v) { return -3 * v; }));
    check(-3.0 * in, map1(r, [](double v) { return -3 * v; }));
    check(in / 4.0, map1(r, [](double v) { return v / 4; }));
    check(2.0 / in, map1(r, [](double v) { return 2 / v; }));
    check(bb::rdiv(in, 2.0), map1(r, [](double v) { return 2 / v; }));
    check(bb::pow(in, 2.5), map1(r, [](double v) { return std::pow(v, 2.5); }));
    check(in.pow(-1.5), map1(r, [](double v) { return std::pow(v, -1.5); }));
    check(in.sqrt(), map1(r, [](double v) { return std::sqrt(v); }));
    check(in.log(), map1(r, [](double v) { return std::log(v); }));
  }
  // Integer pow and scalar forms.
  REQUIRE(bb::pow(bb::arange(4), 2.0).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 4, 9});
  REQUIRE(bb::mul(bb::arange(3), 3.0).to_vector<int64_t>() == std::vector<int64_t>{0, 3, 6});
}

TEST_CASE("eq and where", "[ops][binary]") {
  Tensor a = bb::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = bb::from_vector<double>({1, 0, 3}, {3});
  Tensor e = bb::eq(a, b);
  REQUIRE(e.dtype() == bb::kBool);
  REQUIRE(e.to_vector<bool>() == std::vector<bool>{true, false, true, false, false, false});
  REQUIRE(bb::eq(a.t(), a.t()).to_vector<bool>() == std::vector<bool>(6, true));
  Tensor ia = bb::from_vector<int64_t>({7, 8}, {2, 1});
  REQUIRE(bb::eq(ia, bb::from_vector<int64_t>({7, 8}, {2})).to_vector<bool>() ==
          std::vector<bool>{true, false, false, true});
  Tensor ba = bb::from_vector<bool>({true, false}, {2});
  REQUIRE(bb::eq(ba, bb::from_vector<bool>({true, true}, {2})).to_vector<bool>() ==
          std::vector<bool>{true, false});
  REQUIRE(bb::eq(bb::full({1}, NAN, {bb::kF64}), bb::full({1}, NAN, {bb::kF64})).to_vector<bool>()[0] ==
          false);

  // where with three different broadcast shapes and strided operands.
  Tensor cond = bb::from_vector<bool>({true, false, false, true}, {4, 1});
  Tensor x = uniform({4, 5}, 41);
  Tensor y = uniform({5}, 42);
  for (auto& lx : layouts(x)) {
    Tensor w = bb::where(cond, lx, y);
    REQUIRE(w.shape() == Shape{4, 5});
    auto xv = x.to_vector<double>(), yv = y.to_vector<double>(), wv = w.to_vector<double>();
    const bool c[4] = {true, false, false, true};
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 5; ++j)
        REQUIRE(wv[size_t(i * 5 + j)] == (c[i] ? xv[size_t(i * 5 + j)] : yv[size_t(j)]));
  }
  Tensor wi =
      bb::where(bb::from_vector<bool>({false, true}, {2}), bb::arange(2), bb::full({}, 9, {bb::kI64}));
  REQUIRE(wi.to_vector<int64_t>() == std::vector<int64_t>{9, 1});
}

// ---- reductions --------------------------------------------------------------------------------------

TEST_CASE("sum and mean over dims, keepdim, strided inputs", "[ops][reduce]") {
  Tensor x = uniform({3, 4, 5}, 51);
  std::vector<std::vector<int64_t>> dimsets = {{},     {0},    {1},    {2},       {-1},
                                               {0, 2}, {0, 1}, {1, 2}, {0, 1, 2}, {2, 0}};
  for (auto& lx : layouts(x)) {
    for (auto& dims : dimsets) {
      for (bool keep : {false, true}) {
        INFO("dims " << bb::shape_str(dims) << " keepdim " << keep << " strides "
                     << bb::shape_str(lx.strides()));
        check(bb::sum(lx, dims, keep), reduce_ref(ref_of(x), dims, keep, false), 1e-12, 1e-12);
        check(bb::mean(lx, dims, keep), reduce_ref(ref_of(x), dims, keep, true), 1e-12, 1e-12);
      }
    }
  }
  REQUIRE(bb::sum(x).dim() == 0);
  REQUIRE(x.sum().item() == Approx(reduce_ref(ref_of(x), {}, false, false).v[0]).epsilon(1e-12));
  REQUIRE(x.mean({1}, true).shape() == Shape{3, 1, 5});
  REQUIRE(x.sum({0, 2}).shape() == Shape{4});
  // An expanded input counts each broadcast element.
  Tensor e = uniform({1, 5}, 52).expand({6, 5});
  check(bb::sum(e, {0}), map1(ref_of(uniform({1, 5}, 52).reshape({5})), [](double v) { return 6 * v; }));
  // 0-d and size-1 inputs.
  Tensor s = bb::scalar_tensor(2.5, {bb::kF64});
  REQUIRE(bb::sum(s).item() == 2.5);
  REQUIRE(bb::mean(uniform({1, 1}, 53), {0}).shape() == Shape{1});
  // Integers sum to i64; empty sums are 0, empty means NaN.
  Tensor ii = bb::from_vector<int32_t>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor si = bb::sum(ii, {1});
  REQUIRE(si.dtype() == bb::kI64);
  REQUIRE(si.to_vector<int64_t>() == std::vector<int64_t>{6, 15});
  REQUIRE(bb::sum(bb::from_vector<bool>({true, true, false}, {3})).item<int64_t>() == 2);
  REQUIRE(bb::sum(bb::zeros({0, 3}, {bb::kF64}), {0}).to_vector<double>() == std::vector<double>(3, 0.0));
  REQUIRE(std::isnan(bb::mean(bb::zeros({0}, {bb::kF64})).item()));
  // A long reduction accumulates without drift.
  Tensor ones = bb::ones({1 << 20}, {bb::kF32});
  REQUIRE(bb::sum(ones).item() == double(1 << 20));
}

TEST_CASE("max and argmax", "[ops][reduce]") {
  Tensor x = uniform({3, 4, 5}, 61);
  Ref r = ref_of(x);
  for (auto& lx : layouts(x)) {
    for (int64_t dim : {0, 1, 2, -1}) {
      for (bool keep : {false, true}) {
        INFO("dim " << dim << " keepdim " << keep);
        Tensor m = bb::max(lx, dim, keep);
        Tensor am = bb::argmax(lx, dim, keep);
        REQUIRE(am.dtype() == bb::kI64);
        Ref want_m = fiber_reduce(
            r, dim, keep, [](const std::vector<double>& f) { return *std::max_element(f.begin(), f.end()); });
        Ref want_a = fiber_reduce(r, dim, keep, [](const std::vector<double>& f) {
          return double(std::max_element(f.begin(), f.end()) - f.begin());
        });
        check(m, want_m, 0, 0);
        REQUIRE(am.shape() == want_a.s);
        REQUIRE(am.to_vector<double>() == want_a.v);
      }
    }
  }
  REQUIRE(bb::max(x).item() == *std::max_element(r.v.begin(), r.v.end()));
  REQUIRE(bb::max(x).dim() == 0);
  // Ties go to the first index; NaN wins.
  Tensor t = bb::from_vector<double>({1, 3, 3, 2, NAN, 5}, {2, 3});
  REQUIRE(bb::argmax(t, 1).to_vector<int64_t>() == std::vector<int64_t>{1, 1});
  REQUIRE(std::isnan(bb::max(t, 1).to_vector<double>()[1]));
  REQUIRE(bb::argmax(bb::from_vector<int32_t>({4, 9, 9, -1}, {4}), 0).item<int64_t>() == 1);
  REQUIRE(bb::max(bb::from_vector<int32_t>({4, 9, 9, -1}, {4}), 0).item<int>() == 9);
  REQUIRE(bb::max(bb::scalar_tensor(-2.0, {bb::kF64}), 0).item() == -2.0);
}

TEST_CASE("sum_to reverses broadcasting", "[ops][reduce]") {
  Tensor x = uniform({2, 3, 4}, 71);
  Ref r = ref_of(x);
  check(bb::sum_to(x, {3, 1}), Ref{reduce_ref(r, {0, 2}, false, false).v, {3, 1}});
  check(bb::sum_to(x, {4}), reduce_ref(r, {0, 1}, false, false));
  check(bb::sum_to(x, {1, 1, 1}), reduce_ref(r, {}, true, false));
  check(bb::sum_to(x, {}), reduce_ref(r, {}, false, false));
  check(bb::sum_to(x, {2, 1, 4}), reduce_ref(r, {1}, true, false));
  REQUIRE(bb::sum_to(x, {2, 3, 4}).same(x));
  check(bb::sum_to(x.transpose(0, 2), {4, 1, 1}), Ref{reduce_ref(r, {0, 1}, false, false).v, {4, 1, 1}});
}

TEST_CASE("softmax and log_softmax over any dim", "[ops][softmax]") {
  Tensor x = uniform({3, 4, 5}, 81, -4.0, 4.0);
  for (auto& lx : layouts(x)) {
    for (int64_t dim : {0, 1, 2, -1, -3}) {
      INFO("dim " << dim << " strides " << bb::shape_str(lx.strides()));
      check(bb::softmax(lx, dim), along(ref_of(x), dim, [](auto& f) { return softmax_vec(f, false); }), 1e-14,
            1e-12);
      check(bb::log_softmax(lx, dim), along(ref_of(x), dim, [](auto& f) { return softmax_vec(f, true); }),
            1e-12, 1e-12);
    }
  }
  // Large logits stay finite; -inf entries get probability 0.
  Tensor big = bb::from_vector<double>({1000, 1001, 1002, -INFINITY}, {1, 4});
  auto p = bb::softmax(big).to_vector<double>();
  Ref want = along(ref_of(big.narrow(1, 0, 3)), 1, [](auto& f) { return softmax_vec(f, false); });
  for (int i = 0; i < 3; ++i) REQUIRE(p[size_t(i)] == Approx(want.v[size_t(i)]).epsilon(1e-12));
  REQUIRE(p[3] == 0.0);
  REQUIRE(bb::log_softmax(big).to_vector<double>()[3] == -INFINITY);
  // Size-1 dims and 0-d.
  REQUIRE(bb::softmax(uniform({4, 1}, 82), 1).to_vector<double>() == std::vector<double>(4, 1.0));
  REQUIRE(bb::log_softmax(uniform({4, 1}, 82), 1).to_vector<double>() == std::vector<double>(4, 0.0));
  REQUIRE(bb::softmax(bb::scalar_tensor(3.0, {bb::kF64})).item() == 1.0);
}

// ---- matmul and linear ----------------------------------------------------------------------------

TEST_CASE("matmul: 2-D, batched, broadcast batch dims, 1-D operands", "[ops][matmul]") {
  std::vector<std::pair<Shape, Shape>> cases = {
      {{3, 5}, {5, 4}},
      {{1, 1}, {1, 1}},
      {{1, 7}, {7, 1}},
      {{5, 1}, {1, 3}},
      {{2, 3, 5}, {2, 5, 4}},
      {{2, 1, 3, 5}, {4, 5, 2}},
      {{3, 5}, {2, 5, 4}},
      {{2, 3, 5}, {5, 4}},
      {{5}, {5, 4}},
      {{3, 5}, {5}},
      {{5}, {5}},
      {{5}, {2, 5, 3}},
      {{2, 2, 3, 5}, {5}},
      {{1, 3, 5}, {4, 1, 5, 2}},
      {{70, 65}, {65, 66}},
  };
  uint64_t seed = 90;
  for (auto& [sa, sb] : cases) {
    Tensor a = uniform(sa, ++seed), b = uniform(sb, ++seed);
    Ref want = matmul_ref(ref_of(a), ref_of(b));
    for (auto& la : layouts(a)) {
      for (auto& lb : layouts(b)) {
        INFO(bb::shape_str(sa) << " strides " << bb::shape_str(la.strides()) << " @ " << bb::shape_str(sb)
                               << " strides " << bb::shape_str(lb.strides()));
        Tensor c = bb::matmul(la, lb);
        REQUIRE(c.shape() == want.s);
        check(c, want, 1e-12, 1e-12);
      }
    }
  }
  // Transposed views go straight through; an expanded (stride-0) batch too.
  Tensor a = uniform({4, 3}, 201), b = uniform({5, 4}, 202);
  check(bb::matmul(a.t(), b.t()), matmul_ref(ref_of(a.t()), ref_of(b.t())));
  check(a.t().matmul(b.t()), matmul_ref(ref_of(a.t()), ref_of(b.t())));
  Tensor e = uniform({1, 3, 4}, 203).expand({6, 3, 4});
  Tensor bb3 = uniform({6, 4, 2}, 204);
  check(bb::matmul(e, bb3), matmul_ref(ref_of(e), ref_of(bb3)));
  // A row of a matrix (a 1-D strided view) times a matrix.
  Tensor m = uniform({4, 6}, 205);
  Tensor col = m.select(1, 2);  // [4], stride 6
  check(bb::matmul(col, uniform({4, 3}, 206)), matmul_ref(ref_of(col), ref_of(uniform({4, 3}, 206))));
  // f32 against the f64 reference.
  Tensor af = uniform({2, 9, 17}, 207), bf = uniform({17, 5}, 208);
  Tensor cf = bb::matmul(af.to(bb::kF32), bf.to(bb::kF32));
  REQUIRE(cf.dtype() == bb::kF32);
  bbtest::require_close(cf, tensor_of(matmul_ref(ref_of(af.to(bb::kF32)), ref_of(bf.to(bb::kF32)))), 1e-5,
                        1e-5);
  // K = 0 gives zeros.
  REQUIRE(bb::matmul(bb::ones({2, 0}, {bb::kF64}), bb::ones({0, 3}, {bb::kF64})).to_vector<double>() ==
          std::vector<double>(6, 0.0));
}

TEST_CASE("linear with and without bias", "[ops][matmul]") {
  Tensor w = uniform({4, 5}, 211), bias = uniform({4}, 212);
  for (const Shape& xs : {Shape{5}, Shape{1, 5}, Shape{3, 5}, Shape{2, 3, 5}}) {
    Tensor x = uniform(xs, 213);
    Ref xw = matmul_ref(ref_of(x), ref_of(w.t()));
    Ref with_b = map2(xw, ref_of(bias), [](double p, double q) { return p + q; });
    for (auto& lx : layouts(x)) {
      for (auto& lw : layouts(w)) {
        INFO("x " << bb::shape_str(xs) << " strides " << bb::shape_str(lx.strides()) << ", w strides "
                  << bb::shape_str(lw.strides()));
        Tensor y = bb::linear(lx, lw, bias);
        REQUIRE(y.shape() == with_b.s);
        check(y, with_b);
        check(bb::linear(lx, lw), xw);
      }
    }
  }
  Tensor x = uniform({6, 5}, 214);
  Tensor yf = bb::linear(x.to(bb::kF32), w.to(bb::kF32), bias.to(bb::kF32));
  REQUIRE(yf.dtype() == bb::kF32);
  Ref want = map2(matmul_ref(ref_of(x.to(bb::kF32)), ref_of(w.to(bb::kF32).t())), ref_of(bias.to(bb::kF32)),
                  [](double p, double q) { return p + q; });
  bbtest::require_close(yf, tensor_of(want), 1e-5, 1e-5);
}

// ---- normalisations, embedding, loss -------------------------------------------------------------

namespace {
Ref layer_norm_ref(const Ref& x, const Ref* w, const Ref* b, double eps) {
  return along(x, -1, [&](const std::vector<double>& f) {
    double n = double(f.size()), mu = 0, var = 0;
    for (double v : f) mu += v;
    mu /= n;
    for (double v : f) var += (v - mu) * (v - mu);
    var /= n;
    std::vector<double> y(f.size());
    for (size_t i = 0; i < f.size(); ++i) {
      y[i] = (f[i] - mu) / std::sqrt(var + eps);
      if (w) y[i] *= w->v[i];
      if (b) y[i] += b->v[i];
    }
    return y;
  });
}

Ref rms_norm_ref(const Ref& x, const Ref* w, double eps) {
  return along(x, -1, [&](const std::vector<double>& f) {
    double ms = 0;
    for (double v : f) ms += v * v;
    ms /= double(f.size());
    std::vector<double> y(f.size());
    for (size_t i = 0; i < f.size(); ++i) y[i] = f[i] / std::sqrt(ms + eps) * (w ? w->v[i] : 1.0);
    return y;
  });
}

// Mean over counted rows of -log softmax(row)[target]; NaN when none counts.
double cross_entropy_ref(const Ref& logits, const std::vector<int64_t>& targets, int64_t ignore) {
  const int64_t V = logits.s.back();
  double total = 0;
  int64_t count = 0;
  for (size_t r = 0; r < targets.size(); ++r) {
    if (targets[r] == ignore) continue;
    std::vector<double> row(logits.v.begin() + int64_t(r) * V, logits.v.begin() + int64_t(r + 1) * V);
    total -= softmax_vec(row, true)[size_t(targets[r])];
    ++count;
  }
  return count ? total / double(count) : NAN;
}

// softmax(q k^T * scale, masked) v over [B, H, T, D] in float64.
Ref attention_ref(const Ref& q, const Ref& k, const Ref& v, bool causal, double scale) {
  const int64_t B = q.s[0], H = q.s[1], Tq = q.s[2], D = q.s[3], Tk = k.s[2];
  Ref o{std::vector<double>(size_t(B * H * Tq * D), 0.0), q.s};
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < Tq; ++i) {
      std::vector<double> sc;
      std::vector<int64_t> js;
      for (int64_t j = 0; j < Tk; ++j) {
        if (causal && j > i + (Tk - Tq)) continue;
        double s = 0;
        for (int64_t d = 0; d < D; ++d)
          s += q.v[size_t((bh * Tq + i) * D + d)] * k.v[size_t((bh * Tk + j) * D + d)];
        sc.push_back(s * scale);
        js.push_back(j);
      }
      auto p = softmax_vec(sc, false);
      for (size_t t = 0; t < js.size(); ++t)
        for (int64_t d = 0; d < D; ++d)
          o.v[size_t((bh * Tq + i) * D + d)] += p[t] * v.v[size_t((bh * Tk + js[t]) * D + d)];
    }
  return o;
}
}  // namespace

TEST_CASE("layer_norm and rms_norm", "[ops][norm]") {
  for (const Shape& s : {Shape{1, 1}, Shape{7}, Shape{3, 7}, Shape{2, 3, 8}}) {
    const int64_t n = s.back();
    Tensor x = uniform(s, 301, -2.0, 3.0);
    Tensor w = uniform({n}, 302), b = uniform({n}, 303);
    Ref rx = ref_of(x), rw = ref_of(w), rb = ref_of(b);
    for (auto& lx : layouts(x)) {
      INFO(bb::shape_str(s) << " strides " << bb::shape_str(lx.strides()));
      check(bb::layer_norm(lx, w, b), layer_norm_ref(rx, &rw, &rb, 1e-5), 1e-10, 1e-10);
      check(bb::layer_norm(lx, w, Tensor()), layer_norm_ref(rx, &rw, nullptr, 1e-5), 1e-10, 1e-10);
      check(bb::layer_norm(lx, Tensor(), Tensor(), 0.1), layer_norm_ref(rx, nullptr, nullptr, 0.1), 1e-10,
            1e-10);
      check(bb::rms_norm(lx, w), rms_norm_ref(rx, &rw, 1e-6), 1e-10, 1e-10);
      check(bb::rms_norm(lx, Tensor(), 0.5), rms_norm_ref(rx, nullptr, 0.5), 1e-10, 1e-10);
    }
  }
  // A constant row normalises to the bias.
  Tensor c = bb::full({2, 4}, 3.0, {bb::kF64});
  Tensor bias = uniform({4}, 304);
  check(bb::layer_norm(c, uniform({4}, 305), bias), ref_of(bias.expand({2, 4})), 0, 0);
}

TEST_CASE("embedding", "[ops][embedding]") {
  Tensor w = uniform({6, 3}, 311);
  auto wv = w.to_vector<double>();
  for (auto idt : {bb::kI32, bb::kI64}) {
    Tensor ids = bb::from_vector<int64_t>({5, 0, 2, 2, 5, 1}, {2, 3}, {idt});
    Tensor e = bb::embedding(ids, w);
    REQUIRE(e.shape() == Shape{2, 3, 3});
    auto ev = e.to_vector<double>();
    std::vector<int64_t> iv = {5, 0, 2, 2, 5, 1};
    for (size_t t = 0; t < 6; ++t)
      for (size_t c = 0; c < 3; ++c) REQUIRE(ev[t * 3 + c] == wv[size_t(iv[t]) * 3 + c]);
    // Strided ids and a strided weight.
    Tensor et = bb::embedding(ids.t(), w.t().contiguous().t());
    REQUIRE(et.shape() == Shape{3, 2, 3});
    REQUIRE(et.select(0, 2).select(0, 1).to_vector<double>() ==
            std::vector<double>(wv.begin() + 3, wv.begin() + 6));  // ids[1][2] = 1
  }
  Tensor one = bb::embedding(bb::full({}, 4, {bb::kI64}), w);
  REQUIRE(one.shape() == Shape{3});
  REQUIRE(one.to_vector<double>() == std::vector<double>(wv.begin() + 12, wv.begin() + 15));
}

TEST_CASE("cross_entropy, ignore_index, all ignored", "[ops][loss]") {
  Tensor logits = uniform({5, 7}, 321, -3.0, 3.0);
  std::vector<int64_t> t = {3, 0, 6, 2, 6};
  Ref rl = ref_of(logits);
  for (auto tdt : {bb::kI64, bb::kI32}) {
    Tensor targets = bb::from_vector(t, {5}, {tdt});
    for (auto& ll : layouts(logits)) {
      Tensor loss = bb::cross_entropy(ll, targets);
      REQUIRE(loss.dim() == 0);
      REQUIRE(loss.item() == Approx(cross_entropy_ref(rl, t, -100)).epsilon(1e-12));
    }
  }
  // ignore_index: the default -100 and a valid class id used as the ignore value.
  std::vector<int64_t> ti = {3, -100, 6, -100, 1};
  REQUIRE(bb::cross_entropy(logits, bb::from_vector(ti, {5})).item() ==
          Approx(cross_entropy_ref(rl, ti, -100)).epsilon(1e-12));
  REQUIRE(bb::cross_entropy(logits, bb::from_vector(t, {5}), 6).item() ==
          Approx(cross_entropy_ref(rl, t, 6)).epsilon(1e-12));
  // Every target ignored: the mean over nothing is NaN (documented behaviour, as in PyTorch).
  std::vector<int64_t> none = {-100, -100, -100, -100, -100};
  REQUIRE(std::isnan(bb::cross_entropy(logits, bb::from_vector(none, {5})).item()));
  // [B, T, V] logits with [B, T] targets.
  Tensor l3 = uniform({2, 3, 4}, 322);
  std::vector<int64_t> t3 = {0, 1, 2, 3, 3, 0};
  REQUIRE(bb::cross_entropy(l3, bb::from_vector(t3, {2, 3})).item() ==
          Approx(cross_entropy_ref(ref_of(l3), t3, -100)).epsilon(1e-12));
  // 1-D logits with a 0-d target; huge logits stay finite.
  Tensor big = bb::from_vector<double>({1000, 0, -1000}, {3});
  REQUIRE(bb::cross_entropy(big, bb::full({}, 0, {bb::kI64})).item() == Approx(0.0).margin(1e-12));
  REQUIRE(bb::cross_entropy(big, bb::full({}, 1, {bb::kI64})).item() == Approx(1000.0).epsilon(1e-12));
}

TEST_CASE("dropout", "[ops][dropout]") {
  Tensor x = uniform({200, 500}, 331, 0.5, 1.5);
  // p = 0 and eval mode are the identity.
  REQUIRE(bbtest::max_abs_diff(bb::dropout(x, 0.0), x) == 0.0);
  REQUIRE(bbtest::max_abs_diff(bb::dropout(x, 0.5, false), x) == 0.0);
  const double p = 0.3;
  bb::Generator g1(77), g2(77), g3(78);
  Tensor y1 = bb::dropout(x, p, true, &g1);
  Tensor y2 = bb::dropout(x, p, true, &g2);
  Tensor y3 = bb::dropout(x, p, true, &g3);
  REQUIRE(bbtest::max_abs_diff(y1, y2) == 0.0);
  REQUIRE(bbtest::max_abs_diff(y1, y3) > 0.0);
  // A second call on the same generator draws a new mask.
  REQUIRE(bbtest::max_abs_diff(bb::dropout(x, p, true, &g1), y1) > 0.0);
  auto xv = x.to_vector<double>(), yv = y1.to_vector<double>();
  size_t zeros = 0;
  double sx = 0, sy = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    if (yv[i] == 0.0) {
      ++zeros;
    } else {
      REQUIRE(yv[i] == Approx(xv[i] / (1 - p)).epsilon(1e-6));
    }
    sx += xv[i];
    sy += yv[i];
  }
  REQUIRE(std::abs(double(zeros) / double(xv.size()) - p) < 0.01);
  REQUIRE(std::abs(sy / sx - 1.0) < 0.01);
  // Reproducible through the default generator too.
  bb::manual_seed(5);
  Tensor d1 = bb::dropout(x, 0.5);
  bb::manual_seed(5);
  Tensor d2 = bb::dropout(x, 0.5);
  REQUIRE(bbtest::max_abs_diff(d1, d2) == 0.0);
  // A strided input, and bf16.
  bb::Generator g4(79);
  Tensor xt = x.t();
  Tensor yt = bb::dropout(xt, 0.25, true, &g4);
  REQUIRE(yt.shape() == Shape{500, 200});
  auto xtv = xt.to_vector<double>(), ytv = yt.to_vector<double>();
  for (size_t i = 0; i < xtv.size(); ++i)
    REQUIRE((ytv[i] == 0.0 || ytv[i] == Approx(xtv[i] / 0.75).epsilon(1e-6)));
  bb::Generator g5(80);
  Tensor yb = bb::dropout(x.to(bb::kBF16), 0.5, true, &g5);
  REQUIRE(yb.dtype() == bb::kBF16);
  auto ybv = yb.to_vector<double>();
  size_t bz = size_t(std::count(ybv.begin(), ybv.end(), 0.0));
  REQUIRE(std::abs(double(bz) / double(ybv.size()) - 0.5) < 0.01);
}

// ---- joining, cutting, masking --------------------------------------------------------------------

TEST_CASE("cat and stack", "[ops][shape]") {
  Tensor a = uniform({2, 3}, 341), b = uniform({4, 3}, 342), c = uniform({1, 3}, 343);
  Tensor k = bb::cat({a, b, c}, 0);
  REQUIRE(k.shape() == Shape{7, 3});
  auto kv = k.to_vector<double>();
  std::vector<double> want = a.to_vector<double>();
  for (auto& t : {b, c}) {
    auto v = t.to_vector<double>();
    want.insert(want.end(), v.begin(), v.end());
  }
  REQUIRE(kv == want);
  // Along the last dim, with strided inputs.
  Tensor x = uniform({3, 2}, 344), y = uniform({2, 3}, 345);
  Tensor k1 = bb::cat({x, y.t(), x.narrow(1, 1, 1)}, -1);
  REQUIRE(k1.shape() == Shape{3, 5});
  for (int64_t i = 0; i < 3; ++i) {
    auto row = k1.select(0, i).to_vector<double>();
    auto xr = x.select(0, i).to_vector<double>();
    auto yc = y.select(1, i).to_vector<double>();
    REQUIRE(row == std::vector<double>{xr[0], xr[1], yc[0], yc[1], xr[1]});
  }
  // Middle dim of a 3-D, including an empty piece.
  Tensor p = uniform({2, 1, 4}, 346), q = uniform({2, 3, 4}, 347), z = bb::zeros({2, 0, 4}, {bb::kF64});
  Tensor k2 = bb::cat({p, z, q}, 1);
  REQUIRE(k2.shape() == Shape{2, 4, 4});
  REQUIRE(bbtest::max_abs_diff(k2.narrow(1, 0, 1), p) == 0.0);
  REQUIRE(bbtest::max_abs_diff(k2.narrow(1, 1, 3), q) == 0.0);
  REQUIRE(bb::cat({bb::arange(2), bb::arange(3)}).to_vector<int64_t>() ==
          std::vector<int64_t>{0, 1, 0, 1, 2});

  Tensor s0 = bb::stack({a, bb::mul(a, 2.0), a.t().t()}, 0);
  REQUIRE(s0.shape() == Shape{3, 2, 3});
  REQUIRE(bbtest::max_abs_diff(s0.select(0, 1), bb::mul(a, 2.0)) == 0.0);
  Tensor s2 = bb::stack({a, b.narrow(0, 0, 2)}, -1);
  REQUIRE(s2.shape() == Shape{2, 3, 2});
  REQUIRE(bbtest::max_abs_diff(s2.select(2, 0), a) == 0.0);
  REQUIRE(bbtest::max_abs_diff(s2.select(2, 1), b.narrow(0, 0, 2)) == 0.0);
  Tensor s1 = bb::stack({a, a}, 1);
  REQUIRE(s1.shape() == Shape{2, 2, 3});
  REQUIRE(bbtest::max_abs_diff(s1.select(1, 1), a) == 0.0);
}

TEST_CASE("split and chunk", "[ops][shape]") {
  Tensor x = uniform({7, 4}, 351);
  auto parts = bb::split(x, 3, 0);
  REQUIRE(parts.size() == 3);
  REQUIRE(parts[0].shape() == Shape{3, 4});
  REQUIRE(parts[2].shape() == Shape{1, 4});
  REQUIRE(bbtest::max_abs_diff(parts[1], x.narrow(0, 3, 3)) == 0.0);
  REQUIRE(parts[2].data_ptr() == x[6].data_ptr());  // views, not copies
  auto cols = bb::split(x, 1, -1);
  REQUIRE(cols.size() == 4);
  REQUIRE(bbtest::max_abs_diff(cols[3], x.narrow(1, 3, 1)) == 0.0);
  REQUIRE(bbtest::max_abs_diff(bb::cat(bb::split(x, 2, 1), 1), x) == 0.0);
  auto ch = bb::chunk(x, 3, 0);  // 7 rows in chunks of 3: 3, 3, 1
  REQUIRE(ch.size() == 3);
  REQUIRE(ch[0].shape() == Shape{3, 4});
  REQUIRE(ch[2].shape() == Shape{1, 4});
  auto ch2 = bb::chunk(x, 2, 1);
  REQUIRE(ch2.size() == 2);
  REQUIRE(ch2[1].shape() == Shape{7, 2});
  REQUIRE(bbtest::max_abs_diff(ch2[1], x.narrow(1, 2, 2)) == 0.0);
  REQUIRE(bb::chunk(x, 10, 0).size() == 7);
  REQUIRE(bb::split(x, 100, 0).size() == 1);
}

TEST_CASE("masked_fill and tril_mask", "[ops][shape]") {
  Tensor m = bb::tril_mask(3, 4);
  REQUIRE(m.dtype() == bb::kBool);
  REQUIRE(m.shape() == Shape{3, 4});
  REQUIRE(m.to_vector<bool>() ==
          std::vector<bool>{true, false, false, false, true, true, false, false, true, true, true, false});
  REQUIRE(bb::tril_mask(1, 1).to_vector<bool>() == std::vector<bool>{true});
  Tensor x = uniform({2, 3, 4}, 361);
  for (auto& lx : layouts(x)) {
    Tensor y = bb::masked_fill(lx, m, -7.5);  // [3, 4] mask broadcast over the batch
    REQUIRE(y.shape() == x.shape());
    auto yv = y.to_vector<double>(), xv = x.to_vector<double>();
    auto mv = m.to_vector<bool>();
    for (size_t i = 0; i < yv.size(); ++i) REQUIRE(yv[i] == (mv[i % 12] ? -7.5 : xv[i]));
  }
  Tensor neg_inf =
      bb::masked_fill(bb::zeros({2, 2}, {bb::kF32}), bb::from_vector<bool>({false, true}, {2}), -INFINITY);
  REQUIRE(neg_inf.to_vector<float>() == std::vector<float>{0, -INFINITY, 0, -INFINITY});
  REQUIRE(neg_inf.dtype() == bb::kF32);
}

TEST_CASE("scaled_dot_product_attention, causal and not", "[ops][attention]") {
  struct C {
    Shape q, kv;
    bool causal;
    std::optional<double> scale;
  };
  std::vector<C> cases = {
      {{2, 3, 5, 4}, {2, 3, 5, 4}, false, std::nullopt}, {{2, 3, 5, 4}, {2, 3, 5, 4}, true, std::nullopt},
      {{1, 2, 3, 4}, {1, 2, 6, 4}, false, std::nullopt}, {{1, 2, 3, 4}, {1, 2, 6, 4}, true, std::nullopt},
      {{2, 1, 4, 3}, {2, 1, 4, 3}, true, 0.7},           {{1, 1, 1, 1}, {1, 1, 1, 1}, true, std::nullopt},
  };
  uint64_t seed = 370;
  for (auto& c : cases) {
    Tensor q = uniform(c.q, ++seed), k = uniform(c.kv, ++seed), v = uniform(c.kv, ++seed);
    double scale = c.scale ? *c.scale : 1.0 / std::sqrt(double(c.q[3]));
    Ref want = attention_ref(ref_of(q), ref_of(k), ref_of(v), c.causal, scale);
    for (auto& lq : layouts(q)) {
      INFO("q " << bb::shape_str(c.q) << " kv " << bb::shape_str(c.kv) << " causal " << c.causal);
      Tensor o = bb::scaled_dot_product_attention(lq, k, v, c.causal, c.scale);
      REQUIRE(o.shape() == c.q);
      check(o, want, 1e-12, 1e-10);
    }
    // k, v as the transposed halves of a [B, T, H, D] buffer, the way a model makes them.
    Tensor kt = k.transpose(1, 2).contiguous().transpose(1, 2), vt = v.permute({0, 2, 1, 3}).contiguous();
    check(bb::scaled_dot_product_attention(q, kt, vt.permute({0, 2, 1, 3}), c.causal, c.scale), want, 1e-12,
          1e-10);
  }
  // With causal masking the first query only sees the first key: its output is v[0].
  Tensor q = uniform({1, 1, 4, 2}, 390), k = uniform({1, 1, 4, 2}, 391), v = uniform({1, 1, 4, 2}, 392);
  Tensor o = bb::scaled_dot_product_attention(q, k, v, true);
  REQUIRE(bbtest::max_abs_diff(o.select(2, 0), v.select(2, 0)) < 1e-15);
}

// ---- optimizer ops ---------------------------------------------------------------------------------

TEST_CASE("adamw_step_ against hand-computed values for two steps", "[ops][optim]") {
  // lr 0.1, betas (0.9, 0.999), eps 1e-8, weight decay 0.01; values worked out by hand
  // from the AdamW update (decoupled decay, bias-corrected moments).
  const std::vector<double> p_step1 = {0.899000002, -1.898000001, 0.4995};
  const std::vector<double> p_step2 = {0.8714672987058463, -1.9327123534710748, 0.4245878697336899};
  const std::vector<double> m_step2 = {0.02, 0.11, 1e-4};
  const std::vector<double> v_step2 = {0.00031225, 0.004999, 1e-9};
  for (auto dt : {bb::kF64, bb::kF32}) {
    INFO(bb::dtype_name(dt));
    const double tol = dt == bb::kF64 ? 1e-12 : 1e-6;
    const bb::DType st = dt == bb::kF64 ? bb::kF64 : bb::kF32;
    Tensor p = bb::from_vector<double>({1.0, -2.0, 0.5}, {3}, {dt});
    Tensor m = bb::zeros({3}, {st}), v = bb::zeros({3}, {st});
    bb::AdamWParams hp{0.1, 0.9, 0.999, 1e-8, 0.01, 1};
    bb::adamw_step_(p, bb::from_vector<double>({0.5, -1.0, 0.0}, {3}, {dt}), m, v, hp);
    bbtest::require_close(p, bb::from_vector(p_step1, {3}), tol, tol);
    bbtest::require_close(m, bb::from_vector<double>({0.05, -0.1, 0.0}, {3}), tol, tol);
    bbtest::require_close(v, bb::from_vector<double>({0.00025, 0.001, 0.0}, {3}), tol, tol);
    hp.step = 2;
    bb::adamw_step_(p, bb::from_vector<double>({-0.25, 2.0, 1e-3}, {3}, {dt}), m, v, hp);
    bbtest::require_close(p, bb::from_vector(p_step2, {3}), tol, tol);
    bbtest::require_close(m, bb::from_vector(m_step2, {3}), tol, tol);
    bbtest::require_close(v, bb::from_vector(v_step2, {3}), tol * 1e-3, tol);
  }
  // bf16 parameters keep f32 moments; the update lands on the nearest bf16.
  Tensor pb = bb::from_vector<double>({1.0, -2.0, 0.5}, {3}, {bb::kBF16});
  Tensor mb = bb::zeros({3}, {bb::kF32}), vb = bb::zeros({3}, {bb::kF32});
  bb::adamw_step_(pb, bb::from_vector<double>({0.5, -1.0, 0.0}, {3}, {bb::kBF16}), mb, vb,
                  {0.1, 0.9, 0.999, 1e-8, 0.01, 1});
  bbtest::require_close(pb, bb::from_vector(p_step1, {3}), 4e-3, 4e-3);
  // Larger than a parallel chunk: every element is updated.
  Tensor pl = bb::ones({100000}, {bb::kF32}), ml = bb::zeros({100000}, {bb::kF32}), vl = bb::zeros({100000});
  bb::adamw_step_(pl, bb::full({100000}, 2.0, {bb::kF32}), ml, vl, {0.1, 0.9, 0.999, 1e-8, 0.0, 1});
  auto plv = pl.to_vector<float>();
  REQUIRE(*std::max_element(plv.begin(), plv.end()) == Approx(0.9).epsilon(1e-6));
  REQUIRE(*std::min_element(plv.begin(), plv.end()) == Approx(0.9).epsilon(1e-6));
}

TEST_CASE("sum_of_squares", "[ops][optim]") {
  Tensor a = uniform({3, 4}, 401), b = uniform({5}, 402);
  double want = 0;
  for (double v : a.to_vector<double>()) want += v * v;
  for (double v : b.to_vector<double>()) want += v * v;
  REQUIRE(bb::sum_of_squares({a, b}) == Approx(want).epsilon(1e-14));
  REQUIRE(bb::sum_of_squares({a.t(), Tensor(), b}) == Approx(want).epsilon(1e-14));
  REQUIRE(bb::sum_of_squares({}) == 0.0);
  Tensor h = bb::from_vector<double>({0.5, -1.5, 2.0}, {3}, {bb::kBF16});
  REQUIRE(bb::sum_of_squares({h}) == 6.5);
  Tensor big = bb::full({100001}, 0.5, {bb::kF32});
  REQUIRE(bb::sum_of_squares({big}) == Approx(100001 * 0.25).epsilon(1e-12));
}

// ---- 16-bit and f32 versions against the f64 result -------------------------------------------------

TEST_CASE("f32, bf16 and f16 ops against the f64 result", "[ops][precision]") {
  // Inputs are rounded to the low dtype first, so the tolerance only covers the op.
  struct P {
    bb::DType dt;
    double tol;
  };
  for (P pr : {P{bb::kF32, 1e-5}, P{bb::kBF16, 1.6e-2}, P{bb::kF16, 2e-3}}) {
    INFO(bb::dtype_name(pr.dt));
    auto low = [&](const Tensor& t) { return t.to(pr.dt); };
    auto f64 = [](const Tensor& t) { return t.to(bb::kF64); };
    auto close = [&](const Tensor& got, const Tensor& want, double scale) {
      REQUIRE(got.dtype() == pr.dt);
      bbtest::require_close(got, want, pr.tol * scale, pr.tol);
    };
    Tensor x = f64(low(uniform({4, 33}, 501, -3.0, 3.0)));
    Tensor y = f64(low(uniform({33}, 502, 0.5, 2.0)));
    Tensor w = f64(low(uniform({9, 33}, 503))), b = f64(low(uniform({9}, 504)));
    Tensor b33 = f64(low(uniform({33}, 507)));
    close(bb::add(low(x), low(y)), bb::add(x, y), 1);
    close(bb::mul(low(x), low(y)), bb::mul(x, y), 1);
    close(bb::div(low(x), low(y)), bb::div(x, y), 1);
    close(bb::exp(low(x)), bb::exp(x), 1);
    close(bb::tanh(low(x)), bb::tanh(x), 1);
    close(bb::gelu(low(x)), bb::gelu(x), 1);
    close(bb::silu(low(x)), bb::silu(x), 1);
    close(bb::softmax(low(x), -1), bb::softmax(x, -1), 0.1);
    close(bb::log_softmax(low(x), 0), bb::log_softmax(x, 0), 1);
    close(bb::sum(low(x), {1}), bb::sum(x, {1}), 10);
    close(bb::mean(low(x)), bb::mean(x), 1);
    close(bb::matmul(low(x), low(w).t()), bb::matmul(x, w.t()), 5);
    close(bb::linear(low(x), low(w), low(b)), bb::linear(x, w, b), 5);
    close(bb::layer_norm(low(x), low(y), low(b33)), bb::layer_norm(x, y, b33), 3);
    close(bb::rms_norm(low(x), low(y)), bb::rms_norm(x, y), 3);
    Tensor tg = bb::from_vector<int64_t>({0, 32, 7, 19}, {4});
    // The loss itself is f32 whatever the logits' precision.
    Tensor ce = bb::cross_entropy(low(x), tg);
    REQUIRE(ce.dtype() == bb::DType::F32);
    bbtest::require_close(ce, bb::cross_entropy(x, tg), pr.tol * 3, pr.tol);
    Tensor q = f64(low(uniform({1, 2, 5, 8}, 505))), k = f64(low(uniform({1, 2, 5, 8}, 506)));
    close(bb::scaled_dot_product_attention(low(q), low(k), low(k), true),
          bb::scaled_dot_product_attention(q, k, k, true), 5);
    Tensor ids = bb::from_vector<int64_t>({3, 0, 8}, {3});
    REQUIRE(bbtest::max_abs_diff(f64(bb::embedding(ids, low(w))), bb::embedding(ids, w)) == 0.0);
  }
}

TEST_CASE("linear_gelu is gelu(linear) with the tanh approximation, and its gradient", "[ops][matmul]") {
  Tensor x = uniform({3, 5}, 301), w = uniform({4, 5}, 302), b = uniform({4}, 303);
  Tensor want = bb::gelu(bb::linear(x, w, b), bb::GeluApprox::Tanh);
  REQUIRE(bbtest::max_abs_diff(bb::linear_gelu(x, w, b), want) == 0.0);
  auto f = [](const std::vector<Tensor>& v) { return bb::linear_gelu(v[0], v[1], v[2]); };
  bbtest::require_gradcheck(f, {x.to(bb::kF64).requires_grad_(true), w.to(bb::kF64).requires_grad_(true),
                                b.to(bb::kF64).requires_grad_(true)});
  REQUIRE_THROWS_AS(bb::linear_gelu(x, w, Tensor()), bb::ValueError);
}

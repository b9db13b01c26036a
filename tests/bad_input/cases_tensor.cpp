// Bad-input probe cases for tensors and ops: scalar type promotion, memory overlap of
// in-place writes, exact integers and conversions, sizes and allocations, legal edge
// inputs (empty matmuls) and NaN through the kernels.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "bad_input.hpp"
#include "barbell/barbell.hpp"

namespace bb = barbell;
using bad_input::compute;
using bad_input::refuse;
using bad_input::Result;
using bb::DType;
using bb::Shape;
using bb::Tensor;

namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
constexpr int64_t k2p53 = int64_t{1} << 53;
constexpr int64_t k2p60 = int64_t{1} << 60;

void add(const char* cls, const std::string& name, std::function<Result()> run) {
  bad_input::registry().push_back({cls, name, std::move(run)});
}

std::string str(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + fmt::format("{}", v[i]);
  return s + "]";
}
std::string str(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// t has dtype `dt` and exactly the values `want` (NaN matches NaN).
bool values(const Tensor& t, DType dt, const std::vector<double>& want, std::string& d) {
  std::vector<double> got = t.to_vector<double>();
  d = fmt::format("{} {}", bb::dtype_name(t.dtype()), str(got));
  if (t.dtype() != dt || got.size() != want.size()) return false;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i])))) return false;
  return true;
}
bool ints(const Tensor& t, DType dt, const std::vector<int64_t>& want, std::string& d) {
  std::vector<int64_t> got = t.to_vector<int64_t>();
  d = fmt::format("{} {}", bb::dtype_name(t.dtype()), str(got));
  return t.dtype() == dt && got == want;
}
bool close(const Tensor& t, const std::vector<double>& want, double tol, std::string& d) {
  std::vector<double> got = t.to_vector<double>();
  d = str(got);
  if (got.size() != want.size()) return false;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::abs(got[i] - want[i]) <= tol)) return false;
  return true;
}

// ---- type promotion -------------------------------------------------------------------

const bool kPromotion = [] {
  const char* c = "type promotion";
  add(c, "arange(4) * 0.5 is the f32 [0, .5, 1, 1.5]", [] {
    return compute([](std::string& d) { return values(bb::arange(4) * 0.5, bb::kF32, {0, 0.5, 1, 1.5}, d); });
  });
  add(c, "0.5 * arange(4)", [] {
    return compute([](std::string& d) { return values(0.5 * bb::arange(4), bb::kF32, {0, 0.5, 1, 1.5}, d); });
  });
  add(c, "arange(4) + 0.25", [] {
    return compute([](std::string& d) {
      return values(bb::arange(4) + 0.25, bb::kF32, {0.25, 1.25, 2.25, 3.25}, d);
    });
  });
  add(c, "arange(4) - 0.5", [] {
    return compute([](std::string& d) {
      return values(bb::arange(4) - 0.5, bb::kF32, {-0.5, 0.5, 1.5, 2.5}, d);
    });
  });
  add(c, "0.5 - arange(4)", [] {
    return compute([](std::string& d) {
      return values(0.5 - bb::arange(4), bb::kF32, {0.5, -0.5, -1.5, -2.5}, d);
    });
  });
  add(c, "arange(4) / 2 is true division", [] {
    return compute([](std::string& d) { return values(bb::arange(4) / 2, bb::kF32, {0, 0.5, 1, 1.5}, d); });
  });
  add(c, "6 / arange(1, 4) is true division", [] {
    return compute([](std::string& d) { return values(6 / bb::arange(1, 4), bb::kF32, {6, 3, 2}, d); });
  });
  add(c, "pow(arange(4), 0.5) is f32", [] {
    return compute([](std::string& d) {
      Tensor p = bb::pow(bb::arange(4), 0.5);
      return p.dtype() == bb::kF32 && close(p, {0, 1, std::sqrt(2.0), std::sqrt(3.0)}, 1e-6, d);
    });
  });
  add(c, "arange(0, 1, 0.25) is the f32 [0, .25, .5, .75]", [] {
    return compute([](std::string& d) {
      return values(bb::arange(0, 1, 0.25), bb::kF32, {0, 0.25, 0.5, 0.75}, d);
    });
  });
  add(c, "arange(0.0, 3.0) is f32", [] {
    return compute([](std::string& d) { return values(bb::arange(0.0, 3.0), bb::kF32, {0, 1, 2}, d); });
  });
  add(c, "arange(1, 10, 3) is i64", [] {
    return compute([](std::string& d) { return ints(bb::arange(1, 10, 3), bb::kI64, {1, 4, 7}, d); });
  });
  add(c, "full({2}, 7) is i64", [] {
    return compute([](std::string& d) { return ints(bb::full({2}, 7), bb::kI64, {7, 7}, d); });
  });
  add(c, "full({2}, 7.5) is f32", [] {
    return compute([](std::string& d) { return values(bb::full({2}, 7.5), bb::kF32, {7.5, 7.5}, d); });
  });
  add(c, "full({2}, true) is bool", [] {
    return compute([](std::string& d) { return values(bb::full({2}, true), bb::kBool, {1, 1}, d); });
  });
  add(c, "arange(0, 1, 0.25) as i64 would truncate", [] {
    return refuse([] { bb::arange(0, 1, 0.25, {bb::kI64}); }, {"arange", "0.25", "i64"});
  });
  add(c, "arange as bool", [] {
    return refuse([] { bb::arange(0, 3, 1, {bb::kBool}); }, {"arange", "bool"});
  });
  add(c, "i32 tensor * 1.5 is f32", [] {
    return compute([](std::string& d) {
      return values(bb::arange(3, {bb::kI32}) * 1.5, bb::kF32, {0, 1.5, 3}, d);
    });
  });
  add(c, "bool tensor + 1 is i64", [] {
    return compute([](std::string& d) {
      return ints(bb::from_vector<bool>({true, false}, {2}) + 1, bb::kI64, {2, 1}, d);
    });
  });
  add(c, "bool tensor * 0.5 is f32", [] {
    return compute([](std::string& d) {
      return values(bb::from_vector<bool>({true, false}, {2}) * 0.5, bb::kF32, {0.5, 0}, d);
    });
  });
  add(c, "bool tensor + true", [] {
    return refuse([] { (void)(bb::from_vector<bool>({true}, {1}) + true); }, {"add", "bool"});
  });
  add(c, "i64 tensor mul_(0.5) in place", [] {
    return refuse([] { bb::arange(4).mul_(0.5); }, {"mul_", "i64", "0.5", "f32"});
  });
  add(c, "i64 tensor add_(x, alpha 0.5)", [] {
    return refuse([] { bb::arange(4).add_(bb::arange(4), 0.5); }, {"add_", "alpha", "0.5"});
  });
  add(c, "add(i64, i64, alpha 1.5)", [] {
    return refuse([] { bb::add(bb::arange(4), bb::arange(4), 1.5); }, {"add", "alpha", "1.5"});
  });
  add(c, "i32 tensor + 2^40", [] {
    return refuse([] { (void)(bb::arange(3, {bb::kI32}) + (int64_t{1} << 40)); },
                  {"add", "1099511627776", "i32"});
  });
  add(c, "i64 tensor mul_(3) in place stays exact", [] {
    return compute([](std::string& d) {
      Tensor a = bb::full({2}, k2p60 + 1);
      a.mul_(3);
      return ints(a, bb::kI64, {3 * (k2p60 + 1), 3 * (k2p60 + 1)}, d);
    });
  });
  for (auto [name, f] : std::vector<std::pair<const char*, Tensor (*)(const Tensor&)>>{
           {"exp", [](const Tensor& x) { return bb::exp(x); }},
           {"log", [](const Tensor& x) { return bb::log(x); }},
           {"sqrt", [](const Tensor& x) { return bb::sqrt(x); }},
           {"tanh", [](const Tensor& x) { return bb::tanh(x); }},
           {"silu", [](const Tensor& x) { return bb::silu(x); }},
           {"gelu", [](const Tensor& x) { return bb::gelu(x); }}}) {
    add(c, fmt::format("{} of an i64 tensor computes in f32", name), [f = f] {
      return compute([f](std::string& d) {
        Tensor x = bb::arange(1, 4);
        Tensor y = f(x), want = f(x.to(bb::kF32));
        return values(y, bb::kF32, want.to_vector<double>(), d);
      });
    });
  }
  // Integer tensors with integer and floating scalars, for each integer dtype.
  for (DType dt : {bb::kI32, bb::kI64}) {
    const char* dn = bb::dtype_name(dt);
    add(c, fmt::format("{} + 2 stays {}", dn, dn), [dt] {
      return compute([dt](std::string& d) { return ints(bb::arange(3, {dt}) + 2, dt, {2, 3, 4}, d); });
    });
    add(c, fmt::format("{} * 3 stays {}", dn, dn), [dt] {
      return compute([dt](std::string& d) { return ints(bb::arange(3, {dt}) * 3, dt, {0, 3, 6}, d); });
    });
    add(c, fmt::format("{} - 1 stays {}", dn, dn), [dt] {
      return compute([dt](std::string& d) { return ints(bb::arange(3, {dt}) - 1, dt, {-1, 0, 1}, d); });
    });
    add(c, fmt::format("10 - {} stays {}", dn, dn), [dt] {
      return compute([dt](std::string& d) { return ints(10 - bb::arange(3, {dt}), dt, {10, 9, 8}, d); });
    });
    add(c, fmt::format("{} - 0.5 is f32", dn), [dt] {
      return compute([dt](std::string& d) {
        return values(bb::arange(3, {dt}) - 0.5, bb::kF32, {-0.5, 0.5, 1.5}, d);
      });
    });
    add(c, fmt::format("{} ** 2 stays {}", dn, dn), [dt] {
      return compute([dt](std::string& d) {
        return ints(bb::pow(bb::arange(3, {dt}), 2), dt, {0, 1, 4}, d);
      });
    });
  }
  // Tensor-tensor dtype mixing stays an error (documented): never a silent cast.
  for (auto [a, b] : std::vector<std::pair<DType, DType>>{{bb::kI64, bb::kF32},
                                                          {bb::kF32, bb::kBF16},
                                                          {bb::kF32, bb::kF64},
                                                          {bb::kI32, bb::kI64},
                                                          {bb::kF16, bb::kBF16}}) {
    for (auto [op, f] : std::vector<std::pair<const char*, Tensor (*)(const Tensor&, const Tensor&)>>{
             {"add", [](const Tensor&x, const Tensor&y) { return x + y; }},
             {"mul", [](const Tensor&x, const Tensor&y) { return x * y; }}}) {
      add(c, fmt::format("{} of {} and {} tensors", op, bb::dtype_name(a), bb::dtype_name(b)),
          [a = a, b = b, f = f, op = op] {
            return refuse([&] { f(bb::ones({2}, {a}), bb::ones({2}, {b})); },
                          {op, bb::dtype_name(a), bb::dtype_name(b)});
          });
    }
  }
  return true;
}();

// ---- memory overlap ------------------------------------------------------------------------

const bool kOverlap = [] {
  const char* c = "memory overlap";
  add(c, "x.add_(x.t()) reads the original values", [] {
    return compute([](std::string& d) {
      Tensor x = bb::arange(9.0, {bb::kF32}).view({3, 3});
      x.add_(x.t());
      return values(x, bb::kF32, {0, 4, 8, 4, 8, 12, 8, 12, 16}, d);
    });
  });
  add(c, "x.add_(x.t(), -1) gives x - x^T", [] {
    return compute([](std::string& d) {
      Tensor x = bb::arange(4.0, {bb::kF64}).view({2, 2});
      x.add_(x.t(), -1.0);
      return values(x, bb::kF64, {0, -1, 1, 0}, d);
    });
  });
  add(c, "x.add_(x[1]) with the row broadcast over x", [] {
    return compute([](std::string& d) {
      Tensor x = bb::arange(6.0, {bb::kF64}).view({2, 3});
      x.add_(x.select(0, 1));
      return values(x, bb::kF64, {3, 5, 7, 6, 8, 10}, d);
    });
  });
  for (int shift : {1, 2, 3}) {
    add(c, fmt::format("a[{}:] = a[:-{}] (shifted self-copy, forward)", shift, shift), [shift] {
      return compute([shift](std::string& d) {
        Tensor a = bb::arange(8.0, {bb::kF32});
        a.narrow(0, shift, 8 - shift).copy_(a.narrow(0, 0, 8 - shift));
        std::vector<double> want(8);
        for (int i = 0; i < 8; ++i) want[i] = i < shift ? i : i - shift;
        return values(a, bb::kF32, want, d);
      });
    });
    add(c, fmt::format("a[:-{}] = a[{}:] (shifted self-copy, backward)", shift, shift), [shift] {
      return compute([shift](std::string& d) {
        Tensor a = bb::arange(8.0, {bb::kF32});
        a.narrow(0, 0, 8 - shift).copy_(a.narrow(0, shift, 8 - shift));
        std::vector<double> want(8);
        for (int i = 0; i < 8; ++i) want[i] = i < 8 - shift ? i + shift : i;
        return values(a, bb::kF32, want, d);
      });
    });
  }
  add(c, "m.copy_(m.t()) transposes in place", [] {
    return compute([](std::string& d) {
      Tensor m = bb::arange(4.0, {bb::kF64}).view({2, 2});
      m.copy_(m.t());
      return values(m, bb::kF64, {0, 2, 1, 3}, d);
    });
  });
  add(c, "an i64 shifted self-copy", [] {
    return compute([](std::string& d) {
      Tensor i = bb::arange(5);
      i.narrow(0, 2, 3).copy_(i.narrow(0, 0, 3));
      return ints(i, bb::kI64, {0, 1, 0, 1, 2}, d);
    });
  });
  add(c, "a casting copy between f32 and i32 views of the same bytes", [] {
    return compute([](std::string& d) {
      float buf[4] = {1.5f, 2.5f, 3.5f, 4.5f};
      Tensor f = bb::from_blob(buf, {4}, bb::kF32), i = bb::from_blob(buf, {4}, bb::kI32);
      i.narrow(0, 1, 3).copy_(f.narrow(0, 0, 3));  // reads the floats before any is overwritten
      Tensor got = i.narrow(0, 1, 3).clone();
      return ints(got, bb::kI32, {1, 2, 3}, d);
    });
  });
  add(c, "x.copy_(x) is a no-op", [] {
    return compute([](std::string& d) {
      Tensor x = bb::arange(3.0, {bb::kF32});
      x.copy_(x);
      return values(x, bb::kF32, {0, 1, 2}, d);
    });
  });
  add(c, "add_ into an expanded (stride 0) view", [] {
    return refuse(
        [] {
          bb::zeros({1, 3}).expand({4, 3}).add_(bb::ones({4, 3}));
        },
        {"add_", "single memory location", "[4, 3]"});
  });
  add(c, "mul_ into an expanded view", [] {
    return refuse([] { bb::zeros({3}).expand({2, 3}).mul_(2.0); }, {"mul_", "strides [0, 1]"});
  });
  add(c, "copy_ into an expanded view", [] {
    return refuse([] { bb::zeros({1}).expand({5}).copy_(bb::arange(5.0, {bb::kF32})); }, {"copy_", "[5]"});
  });
  add(c, "integer mul_ into an expanded view",
      [] { return refuse([] { bb::zeros({1}, {bb::kI64}).expand({3}).mul_(2); }, {"mul_"}); });
  add(c, "fill_ into an expanded view writes one value (allowed, as PyTorch)", [] {
    return compute([](std::string& d) {
      Tensor base = bb::zeros({1, 3});
      base.expand({4, 3}).fill_(5.0);
      return values(base, bb::kF32, {5, 5, 5}, d);
    });
  });
  add(c, "adamw_step_ with exp_avg aliasing the parameter", [] {
    return refuse(
        [] {
          Tensor p = bb::zeros({4}), g = bb::ones({4}), v = bb::zeros({4});
          bb::adamw_step_(p, g, p, v, {0.1, 0.9, 0.999, 1e-8, 0.0, 1});
        },
        {"adamw_step_", "share memory", "exp_avg"});
  });
  add(c, "adamw_step_ with the gradient aliasing the parameter", [] {
    return refuse(
        [] {
          Tensor p = bb::zeros({4}), m = bb::zeros({4}), v = bb::zeros({4});
          bb::adamw_step_(p, p, m, v, {0.1, 0.9, 0.999, 1e-8, 0.0, 1});
        },
        {"adamw_step_", "grad"});
  });
  add(c, "adamw_multi_step_ with one parameter listed twice", [] {
    return refuse(
        [] {
          Tensor p = bb::zeros({4}), g = bb::ones({4});
          Tensor m1 = bb::zeros({4}), v1 = bb::zeros({4}), m2 = bb::zeros({4}), v2 = bb::zeros({4});
          bb::adamw_multi_step_({{p, g, m1, v1, Tensor(), 1, 0.0}, {p, g, m2, v2, Tensor(), 1, 0.0}}, 0.1,
                                0.9, 0.999, 1e-8);
        },
        {"adamw_multi_step_", "share memory", "param of parameter"});
  });
  add(c, "adamw_multi_step_ over disjoint slices of one buffer (legal)", [] {
    return compute([](std::string& d) {
      Tensor flat = bb::zeros({8}), g = bb::ones({8}), m = bb::zeros({8}), v = bb::zeros({8});
      std::vector<bb::AdamWTensors> items;
      for (int k = 0; k < 2; ++k)
        items.push_back({flat.narrow(0, 4 * k, 4), g.narrow(0, 4 * k, 4), m.narrow(0, 4 * k, 4),
                         v.narrow(0, 4 * k, 4), Tensor(), 1, 0.0});
      bb::adamw_multi_step_(items, 0.1, 0.9, 0.999, 1e-8);
      return close(flat, std::vector<double>(8, -0.1), 1e-6, d);
    });
  });
  return true;
}();

// ---- exact integers and conversions -------------------------------------------------------

const bool kIntegers = [] {
  const char* c = "integer exactness";
  add(c, "sum of the i64 [2^53, 1]", [] {
    return compute([](std::string& d) {
      return ints(bb::from_vector<int64_t>({k2p53, 1}, {2}).sum(), bb::kI64, {k2p53 + 1}, d);
    });
  });
  add(c, "sum of the i64 [INT64_MAX, 1] overflows", [] {
    return refuse([] { bb::from_vector<int64_t>({kMax, 1}, {2}).sum(); }, {"sum", "overflows int64", "[2]"});
  });
  add(c, "sum of [INT64_MAX, 1, -1] fits though a running total does not", [] {
    return compute([](std::string& d) {
      return ints(bb::from_vector<int64_t>({kMax, 1, -1}, {3}).sum(), bb::kI64, {kMax}, d);
    });
  });
  add(c, "sum over a dim of [[2^53, 1], [3, 1]]", [] {
    return compute([](std::string& d) {
      return ints(bb::from_vector<int64_t>({k2p53, 1, 3, 1}, {2, 2}).sum({0}), bb::kI64, {k2p53 + 3, 2}, d);
    });
  });
  add(c, "sum of three i32 2e9 is 6e9 in i64", [] {
    return compute([](std::string& d) {
      return ints(bb::full({3}, 2000000000, {bb::kI32}).sum(), bb::kI64, {6000000000}, d);
    });
  });
  add(c, "sum of a bool tensor counts", [] {
    return compute([](std::string& d) {
      return ints(bb::from_vector<bool>({true, true, false}, {3}).sum(), bb::kI64, {2}, d);
    });
  });
  add(c, "randint(2^60 + 1, 2^60 + 2) is 2^60 + 1", [] {
    return compute([](std::string& d) {
      return ints(bb::randint(k2p60 + 1, k2p60 + 2, {4}), bb::kI64, std::vector<int64_t>(4, k2p60 + 1), d);
    });
  });
  add(c, "randint over [INT64_MIN, INT64_MAX) stays in range", [] {
    return compute([](std::string& d) {
      std::vector<int64_t> v = bb::randint(kMin, kMax, {256}).to_vector<int64_t>();
      int neg = 0;
      for (int64_t x : v) {
        if (x == kMax) {
          d = "drew INT64_MAX";
          return false;
        }
        neg += x < 0;
      }
      d = fmt::format("{} of 256 negative", neg);
      return neg > 64 && neg < 192;
    });
  });
  add(c, "randint as i32 over a range past i32", [] {
    return refuse([] { bb::randint(0, int64_t{1} << 40, {2}, {bb::kI32}); }, {"randint", "i32"});
  });
  for (int64_t v : {kMax, kMin, k2p60 + 1, -(k2p60 + 7)}) {
    add(c, fmt::format("item<int64_t>() of full({{}}, {})", v), [v] {
      return compute([v](std::string& d) {
        const int64_t got = bb::full({}, v).item<int64_t>();
        d = std::to_string(got);
        return got == v;
      });
    });
    add(c, fmt::format("fill_({}) into an i64 tensor", v), [v] {
      return compute([v](std::string& d) {
        Tensor t = bb::zeros({2}, {bb::kI64});
        t.fill_(v);
        return ints(t, bb::kI64, {v, v}, d);
      });
    });
  }
  add(c, "item<int32_t>() of 2^40", [] {
    return refuse([] { bb::full({}, int64_t{1} << 40).item<int32_t>(); }, {"item", "1099511627776"});
  });
  add(c, "item<uint32_t>() of -1", [] {
    return refuse([] { bb::full({}, -1).item<uint32_t>(); }, {"item", "-1"});
  });
  add(c, "item<int64_t>() of NaN", [] {
    return refuse([] { bb::full({}, NAN).item<int64_t>(); }, {"item", "nan"});
  });
  add(c, "item<int>() of inf", [] {
    return refuse([] { bb::full({}, INFINITY).item<int>(); }, {"item", "inf"});
  });
  add(c, "item<int64_t>() of 1e19", [] {
    return refuse([] { bb::full({}, 1e19, {bb::kF64}).item<int64_t>(); }, {"item", "1e+19"});
  });
  add(c, "item<int64_t>() of -2.9 truncates toward zero (documented)", [] {
    return compute([](std::string& d) {
      const int64_t got = bb::full({}, -2.9).item<int64_t>();
      d = std::to_string(got);
      return got == -2;
    });
  });
  add(c, "full({3}, 2^60 + 1) as i64", [] {
    return compute([](std::string& d) {
      return ints(bb::full({3}, k2p60 + 1, {bb::kI64}), bb::kI64, std::vector<int64_t>(3, k2p60 + 1), d);
    });
  });
  add(c, "full(NaN) as i64", [] {
    return refuse([] { bb::full({2}, NAN, {bb::kI64}); }, {"full", "nan", "i64"});
  });
  add(c, "full(1e10) as i32", [] {
    return refuse([] { bb::full({2}, 1e10, {bb::kI32}); }, {"full", "i32"});
  });
  add(c, "full(2^40) as i32", [] {
    return refuse([] { bb::full({2}, int64_t{1} << 40, {bb::kI32}); }, {"full", "1099511627776", "i32"});
  });
  add(c, "full(1e6) as f16 overflows", [] {
    return refuse([] { bb::full({1}, 1e6, {bb::kF16}); }, {"full", "f16", "65504"});
  });
  add(c, "fill_(-inf) into an i32 tensor", [] {
    return refuse([] { bb::zeros({2}, {bb::kI32}).fill_(-INFINITY); }, {"fill_", "-inf", "i32"});
  });
  add(c, "masked_fill(NaN) into an i64 tensor", [] {
    return refuse([] { bb::masked_fill(bb::zeros({2}, {bb::kI64}), bb::full({2}, true), NAN); },
                  {"masked_fill", "nan"});
  });
  for (DType src : {bb::kF32, bb::kF64, bb::kBF16, bb::kF16}) {
    add(c, fmt::format("to(i64) of a {} NaN", bb::dtype_name(src)), [src] {
      return refuse(
          [src] {
            bb::from_vector<double>({1, NAN, 3}, {3}, {src}).to(bb::kI64);
          },
          {"to", "nan", "element 1", "i64"});
    });
    add(c, fmt::format("to(i32) of a {} -inf", bb::dtype_name(src)), [src] {
      return refuse([src] { bb::from_vector<double>({-INFINITY}, {1}, {src}).to(bb::kI32); },
                    {"to", "-inf", "i32"});
    });
  }
  add(c, "to(i32) of 3e9", [] {
    return refuse([] { bb::full({2}, 3e9, {bb::kF64}).to(bb::kI32); }, {"to", "3000000000", "i32"});
  });
  add(c, "to(i64) of 2^63", [] {
    return refuse([] { bb::full({1}, 9223372036854775808.0, {bb::kF64}).to(bb::kI64); }, {"to", "i64"});
  });
  add(c, "to(i32) of -2^31 exactly", [] {
    return compute([](std::string& d) {
      return ints(bb::full({1}, -2147483648.0, {bb::kF64}).to(bb::kI32), bb::kI32, {-2147483648LL}, d);
    });
  });
  add(c, "to(i32) of [-1.7, 2.2, 9.9] truncates toward zero (documented)", [] {
    return compute([](std::string& d) {
      return ints(bb::from_vector<float>({-1.7f, 2.2f, 9.9f}, {3}).to(bb::kI32), bb::kI32, {-1, 2, 9}, d);
    });
  });
  add(c, "copy_ of a NaN into an i64 tensor", [] {
    return refuse([] { bb::zeros({1}, {bb::kI64}).copy_(bb::full({1}, NAN)); }, {"copy_", "nan"});
  });
  add(c, "from_vector of inf as i64", [] {
    return refuse([] { bb::from_vector<double>({1, INFINITY}, {2}, {bb::kI64}); }, {"from_vector", "inf"});
  });
  add(c, "pow(2, 63) in i64 overflows", [] {
    return refuse([] { bb::pow(bb::full({1}, 2), bb::full({1}, 63)); }, {"pow", "2^63", "i64"});
  });
  add(c, "pow of an integer to -1", [] {
    return refuse([] { bb::pow(bb::full({1}, 2), -1); }, {"pow", "negative"});
  });
  add(c, "3^39 in i64 is exact", [] {
    return compute([](std::string& d) {
      return ints(bb::pow(bb::full({1}, 3), 39), bb::kI64, {4052555153018976267LL}, d);
    });
  });
  add(c, "(2^60 + 1) + 2 in i64 is exact", [] {
    return compute(
        [](std::string& d) { return ints(bb::full({1}, k2p60 + 1) + 2, bb::kI64, {k2p60 + 3}, d); });
  });
  add(c, "-(2^60 + 1) in i64 is exact", [] {
    return compute(
        [](std::string& d) { return ints(-bb::full({1}, k2p60 + 1), bb::kI64, {-(k2p60 + 1)}, d); });
  });
  add(c, "arange(INT64_MAX - 2, INT64_MAX)", [] {
    return compute([](std::string& d) {
      return ints(bb::arange(kMax - 2, kMax), bb::kI64, {kMax - 2, kMax - 1}, d);
    });
  });
  add(c, "arange(INT64_MIN, INT64_MAX, INT64_MAX) counts 2^64 - 1 exactly", [] {
    return compute([](std::string& d) {
      return ints(bb::arange(kMin, kMax, kMax), bb::kI64, {kMin, -1, kMax - 1}, d);
    });
  });
  add(c, "arange(INT64_MIN, INT64_MAX) has more elements than int64 counts", [] {
    return refuse([] { bb::arange(kMin, kMax); }, {"arange", "int64"});
  });
  // Integer add, sub and mul wrap on overflow as PyTorch does (two's complement), with no
  // undefined behaviour on the way (UBSan's signed-integer-overflow).
  add(c, "INT64_MAX + 1 in i64 wraps to INT64_MIN", [] {
    return compute([](std::string& d) { return ints(bb::full({1}, kMax) + 1, bb::kI64, {kMin}, d); });
  });
  add(c, "INT64_MIN - 1 in i64 wraps to INT64_MAX", [] {
    return compute([](std::string& d) { return ints(bb::full({1}, kMin) - 1, bb::kI64, {kMax}, d); });
  });
  add(c, "-INT64_MIN in i64 is INT64_MIN",
      [] { return compute([](std::string& d) { return ints(-bb::full({1}, kMin), bb::kI64, {kMin}, d); }); });
  add(c, "INT64_MAX * INT64_MAX (tensors) wraps to 1", [] {
    return compute([](std::string& d) {
      return ints(bb::mul(bb::full({2}, kMax), bb::full({2}, kMax)), bb::kI64, {1, 1}, d);
    });
  });
  add(c, "add(1, INT64_MAX, alpha = 3) wraps", [] {
    return compute([](std::string& d) {
      return ints(bb::add(bb::full({1}, 1), bb::full({1}, kMax), 3.0), bb::kI64, {kMax - 1}, d);
    });
  });
  add(c, "INT64_MAX mul_(3) wraps in place", [] {
    return compute([](std::string& d) {
      Tensor t = bb::full({1}, kMax);
      t.mul_(3);
      return ints(t, bb::kI64, {kMax - 2}, d);
    });
  });
  add(c, "i32 2147483647 + 1 wraps to -2147483648", [] {
    return compute([](std::string& d) {
      return ints(bb::full({1}, 2147483647, {bb::kI32}) + 1, bb::kI32, {-2147483648LL}, d);
    });
  });
  add(c, "eq of 2^53 + 1 and 2^53 is false (compared in int64, not double)", [] {
    return compute([](std::string& d) {
      const bool e = bb::eq(bb::full({1}, k2p53 + 1), bb::full({1}, k2p53)).item<bool>();
      d = e ? "equal" : "different";
      return !e;
    });
  });
  add(c, "max of the i64 [2^53, 2^53 + 1] is 2^53 + 1", [] {
    return compute([](std::string& d) {
      return ints(bb::max(bb::from_vector<int64_t>({k2p53, k2p53 + 1}, {2}), 0), bb::kI64, {k2p53 + 1}, d);
    });
  });
  return true;
}();

// ---- sizes and allocations -------------------------------------------------------------------

const bool kSizes = [] {
  const char* c = "sizes and allocations";
  add(c, "narrow(0, 1, INT64_MAX) of a [4]", [] {
    return refuse([] { bb::zeros({4}).narrow(0, 1, kMax); }, {"narrow", "9223372036854775807", "[4]"});
  });
  add(c, "narrow(0, INT64_MAX, 1) of a [4]", [] {
    return refuse([] { bb::zeros({4}).narrow(0, kMax, 1); }, {"narrow", "9223372036854775807"});
  });
  add(c, "narrow(0, -1, 2)", [] {
    return refuse([] { bb::zeros({4}).narrow(0, -1, 2); }, {"narrow", "-1"});
  });
  add(c, "narrow(0, 2, -1)", [] {
    return refuse([] { bb::zeros({4}).narrow(0, 2, -1); }, {"narrow", "-1"});
  });
  add(c, "select(0, INT64_MIN)", [] { return refuse([] { bb::zeros({4}).select(0, kMin); }, {"select"}); });
  add(c, "slice(0, INT64_MIN, INT64_MAX) clamps to the whole dim", [] {
    return compute([](std::string& d) {
      return values(bb::arange(3.0, {bb::kF32}).slice(0, kMin, kMax), bb::kF32, {0, 1, 2}, d);
    });
  });
  add(c, "expand to [-5]", [] { return refuse([] { bb::zeros({1}).expand({-5}); }, {"expand", "-5"}); });
  add(c, "expand to [-2, 1]", [] {
    return refuse([] { bb::zeros({1}).expand({-2, 1}); }, {"expand", "-2"});
  });
  add(c, "expand to [INT64_MAX, INT64_MAX, 2]", [] {
    return refuse([] { bb::zeros({2}).expand({kMax, kMax, 2}); }, {"overflows int64"});
  });
  add(c, "from_blob with shape [-1]", [] {
    return refuse(
        [] {
          float b[4] = {};
          bb::from_blob(b, {-1}, bb::kF32);
        },
        {"from_blob", "[-1]"});
  });
  add(c, "from_blob of null data with shape [2]", [] {
    return refuse([] { bb::from_blob(nullptr, {2}, bb::kF32); }, {"from_blob", "null"});
  });
  add(c, "from_blob with a shape whose byte count overflows", [] {
    return refuse(
        [] {
          float b[1] = {};
          bb::from_blob(b, {int64_t{1} << 62}, bb::kF64);
        },
        {"from_blob", "bytes"});
  });
  add(c, "zeros({-3, 2})", [] { return refuse([] { bb::zeros({-3, 2}); }, {"zeros", "[-3, 2]"}); });
  add(c, "ones({-1})", [] { return refuse([] { bb::ones({-1}); }, {"ones", "[-1]"}); });
  add(c, "full({-1}, 2)", [] { return refuse([] { bb::full({-1}, 2); }, {"full", "[-1]"}); });
  add(c, "empty({2^62, 8}) counts more than int64", [] {
    return refuse([] { bb::empty({int64_t{1} << 62, 8}); }, {"empty", "int64"});
  });
  add(c, "empty({2^62}) of f64 needs more bytes than size_t", [] {
    return refuse([] { bb::empty({int64_t{1} << 62}, {bb::kF64}); }, {"empty", "bytes"});
  });
  add(c, "rand({-1})", [] { return refuse([] { bb::rand({-1}); }, {"rand", "[-1]"}); });
  add(c, "randn({-2, 3})", [] { return refuse([] { bb::randn({-2, 3}); }, {"randn", "[-2, 3]"}); });
  add(c, "randint(0, 2, {-1})", [] { return refuse([] { bb::randint(0, 2, {-1}); }, {"randint", "[-1]"}); });
  add(c, "from_vector with shape [-1, -2]", [] {
    return refuse([] { bb::from_vector<float>({1, 2}, {-1, -2}); }, {"from_vector", "[-1, -2]"});
  });
  add(c, "view as [-2, 2]", [] { return refuse([] { bb::zeros({4}).view({-2, 2}); }, {"view", "[-2, 2]"}); });
  add(c, "view as [2^62, 4, -1]: the known sizes multiply past int64", [] {
    return refuse([] { bb::zeros({4}).view({int64_t{1} << 62, 4, -1}); }, {"view", "int64"});
  });
  add(c, "reshape as [-1, -1]", [] {
    return refuse([] { bb::zeros({4}).reshape({-1, -1}); }, {"reshape", "-1"});
  });
  add(c, "arange(0, 1e13): 40 TB", [] {
    return refuse([] { bb::arange(0, 1e13); }, {"arange", "40000000000000 bytes"});
  });
  add(c, "arange(0, 1e300, 1e-300): a count past int64", [] {
    return refuse([] { bb::arange(0, 1e300, 1e-300); }, {"arange", "int64"});
  });
  add(c, "arange(0, 1, 0)", [] { return refuse([] { bb::arange(0, 1, 0); }, {"arange", "step"}); });
  add(c, "arange(0, NaN)", [] { return refuse([] { bb::arange(0, NAN); }, {"arange", "finite"}); });
  add(c, "tril_mask(2^31, 2^31): 4 EiB", [] {
    return refuse([] { bb::tril_mask(int64_t{1} << 31, int64_t{1} << 31); },
                  {"tril_mask", "4611686018427387904 bytes"});
  });
  add(c, "tril_mask(2^32, 2^32) counts more than int64", [] {
    return refuse([] { bb::tril_mask(int64_t{1} << 32, int64_t{1} << 32); }, {"tril_mask", "int64"});
  });
  add(c, "tril_mask(-1, 3)", [] { return refuse([] { bb::tril_mask(-1, 3); }, {"tril_mask", "-1"}); });
  add(c, "zeros({2^45}): 128 TiB", [] {
    return refuse([] { bb::zeros({int64_t{1} << 45}); }, {"zeros", "bytes"});
  });
  add(c, "contiguous() of a [2^50] expanded view", [] {
    return refuse([] { bb::zeros({1}).expand({int64_t{1} << 50}).contiguous(); }, {"contiguous", "bytes"});
  });
  add(c, "an expanded [2^50] view + 1.0", [] {
    return refuse([] { (void)(bb::zeros({1}).expand({int64_t{1} << 50}) + 1.0); }, {"add", "bytes"});
  });
  add(c, "an expanded [2^50] view * another tensor", [] {
    return refuse([] { bb::mul(bb::zeros({1}).expand({int64_t{1} << 50}), bb::ones({1})); },
                  {"mul", "bytes"});
  });
  add(c, "randn({2^50})", [] { return refuse([] { bb::randn({int64_t{1} << 50}); }, {"randn", "bytes"}); });
  add(c, "randint(0, 5, {2^50})", [] {
    return refuse([] { bb::randint(0, 5, {int64_t{1} << 50}); }, {"randint", "bytes"});
  });
  add(c, "cat of four [2^62] expanded views: the total overflows", [] {
    return refuse(
        [] {
          Tensor e = bb::zeros({1}).expand({int64_t{1} << 62});
          bb::cat({e, e, e, e});
        },
        {"cat", "int64"});
  });
  add(c, "cat of two [2^61] expanded views: 2^62 floats", [] {
    return refuse(
        [] {
          Tensor e = bb::zeros({1}).expand({int64_t{1} << 61});
          bb::cat({e, e});
        },
        {"cat", "bytes"});
  });
  add(c, "chunk into INT64_MAX pieces", [] {
    return compute([](std::string& d) {
      const size_t n = bb::chunk(bb::zeros({5}), kMax).size();
      d = std::to_string(n);
      return n == 5;
    });
  });
  add(c, "split by INT64_MAX", [] {
    return compute([](std::string& d) {
      const size_t n = bb::split(bb::zeros({5}), kMax).size();
      d = std::to_string(n);
      return n == 1;
    });
  });
  add(c, "chunk(x, 0)", [] { return refuse([] { bb::chunk(bb::zeros({5}), 0); }, {"chunk", "0"}); });
  add(c, "split(x, -1)", [] { return refuse([] { bb::split(bb::zeros({5}), -1); }, {"split", "-1"}); });
  return true;
}();

// ---- legal edge inputs ------------------------------------------------------------------------

const bool kLegal = [] {
  const char* c = "legal edge inputs";
  add(c, "matmul of [0, 4] @ [4, 3]", [] {
    return compute([](std::string& d) {
      Tensor y = bb::matmul(bb::zeros({0, 4}), bb::zeros({4, 3}));
      d = bb::shape_str(y.shape());
      return y.shape() == Shape{0, 3};
    });
  });
  add(c, "the backward of matmul of [0, 4] @ [4, 3]", [] {
    return compute([](std::string& d) {
      Tensor a = bb::zeros({0, 4}, {bb::kF32, bb::Device::cpu(), true});
      Tensor b = bb::ones({4, 3}, {bb::kF32, bb::Device::cpu(), true});
      bb::matmul(a, b).sum().backward();
      return a.grad().shape() == Shape{0, 4} && values(b.grad(), bb::kF32, std::vector<double>(12, 0.0), d);
    });
  });
  add(c, "matmul of [2, 0] @ [0, 3] is zeros", [] {
    return compute([](std::string& d) {
      return values(bb::matmul(bb::ones({2, 0}), bb::ones({0, 3})), bb::kF32, std::vector<double>(6, 0.0), d);
    });
  });
  add(c, "matmul of [2, 4] @ [4, 0]", [] {
    return compute([](std::string& d) {
      Tensor y = bb::matmul(bb::ones({2, 4}), bb::ones({4, 0}));
      d = bb::shape_str(y.shape());
      return y.shape() == Shape{2, 0};
    });
  });
  add(c, "batched matmul of [3, 0, 4] @ [4, 2] in f64", [] {
    return compute([](std::string& d) {
      Tensor y = bb::matmul(bb::ones({3, 0, 4}, {bb::kF64}), bb::ones({4, 2}, {bb::kF64}));
      d = bb::shape_str(y.shape());
      return y.shape() == Shape{3, 0, 2};
    });
  });
  add(c, "matmul of a [0] vector with a [0] vector is 0", [] {
    return compute(
        [](std::string& d) { return values(bb::matmul(bb::ones({0}), bb::ones({0})), bb::kF32, {0}, d); });
  });
  add(c, "linear with no rows, and its backward", [] {
    return compute([](std::string& d) {
      Tensor w = bb::ones({5, 4}, {bb::kF32, bb::Device::cpu(), true});
      Tensor b = bb::ones({5}, {bb::kF32, bb::Device::cpu(), true});
      Tensor y = bb::linear(bb::zeros({0, 4}), w, b);
      y.sum().backward();
      return y.shape() == Shape{0, 5} && values(w.grad(), bb::kF32, std::vector<double>(20, 0.0), d);
    });
  });
  add(c, "linear with no inputs (in = 0) is the bias", [] {
    return compute([](std::string& d) {
      return values(bb::linear(bb::zeros({2, 0}), bb::zeros({3, 0}), bb::ones({3})), bb::kF32,
                    std::vector<double>(6, 1.0), d);
    });
  });
  add(c, "sum of an empty i64 tensor is 0", [] {
    return compute([](std::string& d) { return ints(bb::zeros({0}, {bb::kI64}).sum(), bb::kI64, {0}, d); });
  });
  add(c, "mean of an empty tensor is NaN (as PyTorch)", [] {
    return compute([](std::string& d) { return values(bb::zeros({0}).mean(), bb::kF32, {NAN}, d); });
  });
  add(c, "softmax of a [0, 3] tensor", [] {
    return compute([](std::string& d) {
      Tensor y = bb::softmax(bb::zeros({0, 3}));
      d = bb::shape_str(y.shape());
      return y.shape() == Shape{0, 3};
    });
  });
  add(c, "cat with an empty tensor", [] {
    return compute([](std::string& d) {
      return values(bb::cat({bb::ones({2}), bb::zeros({0}), bb::ones({1})}), bb::kF32, {1, 1, 1}, d);
    });
  });
  add(c, "arange(3, 3) is empty",
      [] { return compute([](std::string& d) { return ints(bb::arange(3, 3), bb::kI64, {}, d); }); });
  add(c, "max over an empty dim", [] {
    return refuse([] { bb::max(bb::zeros({2, 0}), 1); }, {"max", "empty"});
  });
  return true;
}();

// ---- NaN through the kernels --------------------------------------------------------------------

const bool kNan = [] {
  const char* c = "NaN through kernels";
  add(c, "gelu (tanh) of NaN is NaN (the vectorised exp)", [] {
    return compute([](std::string& d) {
      return values(bb::gelu(bb::full({9}, NAN)), bb::kF32, std::vector<double>(9, NAN), d);
    });
  });
  add(c, "the gelu backward of a NaN weight is NaN", [] {
    return compute([](std::string& d) {
      Tensor x = bb::full({3}, NAN, {bb::kF32, bb::Device::cpu(), true});
      bb::gelu(x).sum().backward();
      return values(x.grad(), bb::kF32, std::vector<double>(3, NAN), d);
    });
  });
  add(c, "gelu of +-1e30 stays finite", [] {
    return compute([](std::string& d) {
      std::vector<double> v = bb::gelu(bb::from_vector<float>({-1e30f, 1e30f}, {2})).to_vector<double>();
      d = str(v);
      return v[0] == 0.0 && v[1] == static_cast<double>(1e30f);
    });
  });
  add(c, "gelu in bf16 of NaN", [] {
    return compute([](std::string& d) {
      return values(bb::gelu(bb::full({4}, NAN, {bb::kBF16})), bb::kBF16, std::vector<double>(4, NAN), d);
    });
  });
  add(c, "silu of NaN", [] {
    return compute([](std::string& d) {
      return values(bb::silu(bb::full({3}, NAN)), bb::kF32, std::vector<double>(3, NAN), d);
    });
  });
  add(c, "exp of NaN", [] {
    return compute([](std::string& d) {
      return values(bb::exp(bb::full({3}, NAN)), bb::kF32, std::vector<double>(3, NAN), d);
    });
  });
  add(c, "softmax of a row with a NaN", [] {
    return compute([](std::string& d) {
      return values(bb::softmax(bb::from_vector<float>({1, NAN, 2}, {1, 3})), bb::kF32, {NAN, NAN, NAN}, d);
    });
  });
  add(c, "a linear layer with a NaN weight, through GELU", [] {
    return compute([](std::string& d) {
      Tensor w = bb::ones({4, 3});
      w.narrow(0, 1, 1).fill_(NAN);
      std::vector<double> v = bb::linear_gelu(bb::ones({2, 3}), w, bb::zeros({4})).to_vector<double>();
      d = str(v);
      return std::isnan(v[1]) && std::isnan(v[5]) && !std::isnan(v[0]);
    });
  });
  return true;
}();

}  // namespace

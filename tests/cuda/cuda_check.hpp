// The harness the CUDA tests share (plain programs, no Catch2): every check prints one
// line (PASS/FAIL/SKIP, the max error and the tolerance), failures never stop the run,
// and finish() prints a summary and gives the exit code. Checks compare a CUDA result
// with the CPU backend run on the same (already rounded) inputs, in f64 unless said
// otherwise.
//
// Sticky errors. After an illegal address (or any other sticky CUDA error) every later
// CUDA call fails with the same error, so every later check would fail and nobody would
// learn which kernel caused it. So the harness synchronizes the device after each
// guarded() block and after each exception in one; when the synchronize fails too, the
// context is dead: it prints "STICKY <check>  <error>" naming the block that raised it,
// stops the program and exits with kExitSticky (scripts/device-check.sh then reruns the
// program under compute-sanitizer memcheck, which names the kernel and the access).
// A plain CudaError that leaves the device working (a bad argument) is an ordinary FAIL.
//
// Exit codes: 0 all passed, 1 a check failed, 3 (kExitSticky) stopped at a sticky CUDA
// error, 77 no GPU (CTest: skipped).
//
// Environment:
//   BARBELL_TEST_QUICK=1   smaller sizes (for compute-sanitizer runs)
//   BARBELL_TEST_SEED=N    another seed for the random inputs (default 1234)
//   BARBELL_TEST_FILTER=s  run only the groups whose name contains s
//   BARBELL_TEST_SIMULATE_STICKY=s  the first passing check whose name contains s throws
//                          a CudaError and the device then counts as dead (a test of the
//                          sticky-error path without a GPU; see tests/cuda/CMakeLists.txt)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "barbell/barbell.hpp"
#include "barbell/cuda/cuda.hpp"

namespace ct {

namespace bb = barbell;
using bb::DType;
using bb::Shape;
using bb::Tensor;

// BARBELL_CUDA_TEST_SELFTEST: the "GPU" side runs on the CPU too (the CPU backend in the
// test dtype against itself in f64): checks the harness, the references and the
// tolerances on a machine without a GPU. Not a test of the CUDA backend.
#ifdef BARBELL_CUDA_TEST_SELFTEST
constexpr bool kSelfTest = true;
inline bb::Device gpu() { return bb::Device::cpu(); }
#else
constexpr bool kSelfTest = false;
inline bb::Device gpu() { return bb::Device::cuda(0); }
#endif
inline bb::Device host() { return bb::Device::cpu(); }
// Is t on the device under test?
inline bool on_dev(const Tensor& t) { return t.device() == gpu(); }

inline bool quick() {
  const char* q = std::getenv("BARBELL_TEST_QUICK");
  return q && *q && std::string(q) != "0";
}
// A size that is large in a full run and small in quick mode.
inline int64_t big(int64_t full, int64_t small = 4099) { return quick() ? small : full; }
constexpr int64_t kLarge = (1 << 20) + 3;

inline bb::Generator& rng() {
  static bb::Generator g([] {
    const char* s = std::getenv("BARBELL_TEST_SEED");
    return s ? std::strtoull(s, nullptr, 10) : 1234ull;
  }());
  return g;
}

constexpr int kExitSticky = 3;

struct Stats {
  std::string program;
  int pass = 0, fail = 0, skip = 0;
  std::vector<std::string> failed;
  std::string last_check;                  // the name of the last check reported
  std::string sticky_check, sticky_error;  // set when the device context died
  bool simulated_dead = false;             // BARBELL_TEST_SIMULATE_STICKY fired
};
inline Stats& stats() {
  static Stats s;
  return s;
}

inline std::string dt_name(DType d) { return bb::dtype_name(d); }
inline std::string shp(const Shape& s) { return bb::shape_str(s); }

inline void line(const char* tag, const std::string& name, const std::string& detail) {
  std::printf("%-4s %s%s%s\n", tag, name.c_str(), detail.empty() ? "" : "  ", detail.c_str());
  std::fflush(stdout);
}
// BARBELL_TEST_SIMULATE_STICKY: the first passing check whose name contains the value
// throws, as a kernel's illegal address would surface, and the device counts as dead.
inline void simulate_sticky(const std::string& name) {
  static const char* sim = std::getenv("BARBELL_TEST_SIMULATE_STICKY");
  if (!sim || !*sim || stats().simulated_dead || name.find(sim) == std::string::npos) return;
  stats().simulated_dead = true;
  throw bb::CudaError("simulated sticky error (BARBELL_TEST_SIMULATE_STICKY): an illegal memory access");
}
inline void pass(const std::string& name, const std::string& detail = "") {
  simulate_sticky(name);
  ++stats().pass;
  stats().last_check = name;
  line("PASS", name, detail);
}
inline void fail(const std::string& name, const std::string& detail = "") {
  ++stats().fail;
  stats().failed.push_back(name);
  stats().last_check = name;
  line("FAIL", name, detail);
}
inline void skip(const std::string& name, const std::string& detail = "") {
  ++stats().skip;
  stats().last_check = name;
  line("SKIP", name, detail);
}
inline void expect(bool ok, const std::string& name, const std::string& detail = "") {
  ok ? pass(name, detail) : fail(name, detail);
}

// Exit 77 (CTest: skipped) without a GPU; otherwise poison fresh device memory (NaN
// for every float dtype) so an output a kernel forgets to write fails its check.
inline int start(const char* program) {
  stats().program = program;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (kSelfTest) {
    std::printf("%s: SELF-TEST on the CPU (the harness, not the CUDA backend)%s\n", program, quick() ? ", QUICK mode" : "");
    return 0;
  }
  int n = bb::cuda::device_count();
  if (n == 0 || !bb::cuda::is_available()) {
    std::printf("%s: skipped: no CUDA device (device_count() = %d)\n", program, n);
    return 77;
  }
  bb::cuda::set_poison_allocations(true);
  auto p = bb::cuda::properties(0);
  std::printf("%s: %s (sm_%d%d, %d SMs, %.1f GiB, L2 %.0f MiB)%s, seed %llu\n", program, p.name.c_str(), p.major,
              p.minor, p.multiprocessors, static_cast<double>(p.total_memory) / (1 << 30),
              static_cast<double>(p.l2_cache) / (1 << 20), quick() ? ", QUICK mode" : "",
              static_cast<unsigned long long>(rng().seed()));
  return 0;
}

inline int finish() {
  auto& s = stats();
  std::printf("\nSUMMARY %s: %d passed, %d failed, %d skipped%s\n", s.program.c_str(), s.pass, s.fail, s.skip,
              s.sticky_check.empty() ? "" : ", stopped at a sticky CUDA error");
  for (auto& f : s.failed) std::printf("  failed: %s\n", f.c_str());
  if (!s.sticky_check.empty()) {
    std::printf("STICKY %s  %s\n", s.sticky_check.c_str(), s.sticky_error.c_str());
    std::printf("FAILED (sticky CUDA error)\n");
    std::fflush(stdout);
    return kExitSticky;
  }
  std::printf("%s\n", s.fail ? "FAILED" : "passed");
  std::fflush(stdout);
  return s.fail ? 1 : 0;
}

// ---- sticky CUDA errors ------------------------------------------------------------------

// Thrown to stop the program once the device context is dead; caught by program().
struct StickyStop {};

// Why the device under test no longer works ("" while it does): a synchronize that
// fails after a check means the error is sticky (a plain error was cleared when it was
// reported). Nothing to probe in the self-test, except a simulated failure.
inline std::string device_dead() {
  if (stats().simulated_dead) return "simulated sticky error (BARBELL_TEST_SIMULATE_STICKY)";
  if (kSelfTest) return "";
  try {
    bb::cuda::synchronize();
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

// After the block `name`: stops the program (StickyStop) when the device is dead,
// naming `name` as the check that raised the error (`first`: the error it threw, if any;
// `before`: the last check reported before the block began).
inline void stop_if_sticky(const std::string& name, const std::string& first, const std::string& before) {
  std::string why = device_dead();
  if (why.empty()) return;
  auto& s = stats();
  s.sticky_check = name;
  s.sticky_error = (first.empty() ? why : first) +
                   " [the last check before it: " + (before.empty() ? "none" : before) + "]";
  const std::string msg = "sticky CUDA error: the device no longer works after this check (" + why +
                          "); stopping here, the later checks would all fail with it";
  if (first.empty()) {
    fail(name, msg);
  } else {
    line("FAIL", name, msg);  // the block's failure is counted already
  }
  throw StickyStop{};
}

// Groups can be selected with BARBELL_TEST_FILTER.
inline bool selected(const std::string& group) {
  const char* f = std::getenv("BARBELL_TEST_FILTER");
  return !f || !*f || group.find(f) != std::string::npos;
}

// Runs f; an exception is a failure of `name` (a DTypeError on an f64 case is reported
// as SKIP: f64 is supported on the GPU only where it is cheap to).
// Afterwards the device is probed: a sticky CUDA error stops the program (StickyStop),
// naming this block.
template <typename F>
void guarded(const std::string& name, F&& f, DType dt = DType::F32) {
  const std::string before = stats().last_check;
  std::string error;
  try {
    f();
  } catch (const StickyStop&) {
    throw;
  } catch (const bb::DTypeError& e) {
    if (dt == DType::F64) skip(name, std::string("f64 not supported on the GPU: ") + e.what());
    else fail(name, std::string("threw DTypeError: ") + e.what());
  } catch (const std::exception& e) {
    error = e.what();
    fail(name, std::string("threw: ") + e.what());
  }
  stop_if_sticky(name, error, before);
}

// A test program's main: start(), body(), finish(); an exception that escapes body()
// is a failure (and, when the device is dead, a sticky stop naming the last check).
template <typename F>
int program(const char* name, F&& body) {
  if (int rc = start(name)) return rc;
  try {
    body();
  } catch (const StickyStop&) {
  } catch (const std::exception& e) {
    const std::string before = stats().last_check, where = "after '" + before + "'";
    fail("uncaught exception " + where, e.what());
    try {
      stop_if_sticky("the code " + where, e.what(), before);
    } catch (const StickyStop&) {
    }
  }
  return finish();
}

// Default tolerances (relative; the absolute part is tol * rms(reference)).
inline double tol_of(DType d) {
  switch (d) {
    case DType::F64: return 1e-9;
    case DType::F32: return 1e-5;
    case DType::BF16: return 1e-2;
    case DType::F16: return 2e-3;
    default: return 0;
  }
}
inline bool low_precision(DType d) { return d == DType::BF16 || d == DType::F16; }

inline std::vector<double> host_values(const Tensor& t) {
  Tensor h = t.is_cpu() ? t : t.to(host());
  return h.to_vector<double>();
}

// got (any device) against ref: passes when every |got - ref| <= atol + tol * |ref| with
// atol = tol * atol_scale * rms(ref), and got has no NaN/Inf where ref is finite.
// Prints max_abs, the relative L2 error and `worst` (the largest error over its allowance:
// <= 1 passes). With l2_tol > 0 the relative L2 error must also be <= l2_tol; abs_floor
// is a lower bound on atol (for references that are ~0 where rounding noise is not).
inline bool check(const std::string& name, const Tensor& got, const Tensor& ref, double tol, double atol_scale = 1.0,
                  double l2_tol = 0.0, double abs_floor = 0.0) {
  if (!got.defined() || !ref.defined()) {
    fail(name, got.defined() ? "reference undefined" : "result undefined (no gradient?)");
    return false;
  }
  if (got.shape() != ref.shape()) {
    fail(name, "shape " + shp(got.shape()) + " != reference " + shp(ref.shape()));
    return false;
  }
  std::vector<double> g = host_values(got), r = host_values(ref);
  double ss = 0;
  size_t nfin = 0;
  for (double v : r)
    if (std::isfinite(v)) ss += v * v, ++nfin;
  double rms = nfin ? std::sqrt(ss / static_cast<double>(nfin)) : 0.0;
  double scale = rms > 0 ? rms : 1.0;
  // f16 results below 6.1e-5 are subnormal, spaced 6e-8 apart
  if (got.dtype() == DType::F16) abs_floor = std::max(abs_floor, 6e-8);
  double atol = std::max(tol * atol_scale * scale, abs_floor);
  double max_abs = 0, worst = 0, dd = 0, rr = 0;
  size_t bad_nan = 0, first_bad = g.size(), worst_i = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    if (!std::isfinite(r[i])) {
      bool same = (std::isnan(r[i]) && std::isnan(g[i])) || g[i] == r[i];
      if (!same) {
        ++bad_nan;
        if (first_bad == g.size()) first_bad = i;
      }
      continue;
    }
    if (!std::isfinite(g[i])) {
      ++bad_nan;
      if (first_bad == g.size()) first_bad = i;
      continue;
    }
    double d = std::abs(g[i] - r[i]);
    max_abs = std::max(max_abs, d);
    double w = d / (atol + tol * std::abs(r[i]));
    if (w > worst) worst = w, worst_i = i;
    dd += d * d;
    rr += r[i] * r[i];
  }
  double rel_l2 = rr > 0 ? std::sqrt(dd / rr) : std::sqrt(dd);
  char buf[512];
  std::snprintf(buf, sizeof buf, "%s max_abs=%.3g rel_l2=%.3g worst=%.3g (tol %.1e, atol %.2g%s) n=%zu",
                shp(got.shape()).c_str(), max_abs, rel_l2, worst, tol, atol,
                l2_tol > 0 ? (", l2 tol " + std::to_string(l2_tol)).c_str() : "", g.size());
  std::string detail = buf;
  if (bad_nan) {
    std::snprintf(buf, sizeof buf, "; %zu non-finite mismatches, first at %zu: got %g ref %g", bad_nan, first_bad,
                  g[first_bad], r[first_bad]);
    fail(name, detail + buf);
    return false;
  }
  bool ok = worst <= 1.0 && (l2_tol <= 0 || rel_l2 <= l2_tol);
  if (!ok && !g.empty()) {
    std::snprintf(buf, sizeof buf, "; worst at %zu: got %.8g ref %.8g", worst_i, g[worst_i], r[worst_i]);
    detail += buf;
  }
  ok ? pass(name, detail) : fail(name, detail);
  return ok;
}

// Bit-for-bit (after conversion to double, which is exact for every dtype).
inline bool check_exact(const std::string& name, const Tensor& got, const Tensor& ref) {
  if (!got.defined() || !ref.defined()) {
    fail(name, "undefined tensor");
    return false;
  }
  if (got.shape() != ref.shape()) {
    fail(name, "shape " + shp(got.shape()) + " != reference " + shp(ref.shape()));
    return false;
  }
  if (got.dtype() != ref.dtype()) {
    fail(name, "dtype " + dt_name(got.dtype()) + " != reference " + dt_name(ref.dtype()));
    return false;
  }
  std::vector<double> g = host_values(got), r = host_values(ref);
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    bool same = g[i] == r[i] || (std::isnan(g[i]) && std::isnan(r[i]));
    if (!same && bad++ == 0) first = i;
  }
  char buf[256];
  if (bad) {
    std::snprintf(buf, sizeof buf, "%s %zu of %zu differ, first at %zu: got %.9g ref %.9g", shp(got.shape()).c_str(),
                  bad, g.size(), first, g[first], r[first]);
    fail(name, buf);
    return false;
  }
  std::snprintf(buf, sizeof buf, "%s %s exact, n=%zu", shp(got.shape()).c_str(), dt_name(got.dtype()).c_str(),
                g.size());
  pass(name, buf);
  return true;
}

// Expects f to throw E (or a subclass).
template <typename E, typename F>
void expect_throw(const std::string& name, F&& f) {
  try {
    f();
  } catch (const E& e) {
    pass(name, std::string("threw as expected: ") + e.what());
    return;
  } catch (const std::exception& e) {
    fail(name, std::string("threw the wrong type: ") + e.what());
    return;
  }
  fail(name, "did not throw");
}

// ---- random inputs (on the CPU, already in the test dtype) ---------------------------

inline Tensor randn(const Shape& s, DType dt, double scale = 1.0, double shift = 0.0) {
  Tensor t = bb::randn(s, {DType::F32}, &rng());
  if (scale != 1.0) t = bb::mul(t, scale);
  if (shift != 0.0) t = bb::add(t, shift);
  return t.to(dt);
}
// Values with |x| in [lo, lo + width): away from zero (divisors, log, sqrt).
inline Tensor rand_away(const Shape& s, DType dt, double lo = 0.5, double width = 3.0, bool signed_ = false) {
  Tensor u = bb::add(bb::mul(bb::rand(s, {DType::F32}, &rng()), width), lo);
  if (signed_) {
    Tensor sign = bb::add(bb::mul(bb::randint(0, 2, s, {DType::F32}, &rng()), 2.0), -1.0);  // +-1
    u = bb::mul(u, sign);
  }
  return u.to(dt);
}
inline Tensor randint(int64_t lo, int64_t hi, const Shape& s, DType dt = DType::I64) {
  return bb::randint(lo, hi, s, {dt}, &rng());
}

// ---- the generic forward/backward check ----------------------------------------------

struct Input {
  Tensor value;  // on the CPU, in the test dtype (ints for ids)
  std::function<Tensor(const Tensor&)> view;  // applied to the leaf on both sides
  bool grad = true;
};
inline Input in(Tensor v, std::function<Tensor(const Tensor&)> view = nullptr, bool grad = true) {
  return Input{std::move(v), std::move(view), grad};
}
inline Input nograd(Tensor v, std::function<Tensor(const Tensor&)> view = nullptr) {
  return Input{std::move(v), std::move(view), false};
}

using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

struct OpCheck {
  std::string name;
  DType dt = DType::F32;
  std::vector<Input> inputs;
  OpFn f;
  double tol = -1;        // default: tol_of(dt)
  double grad_tol = -1;   // default: tol, twice it for 16-bit dtypes
  double atol_scale = 1;  // see check()
  double abs_floor = 0;   // see check()
  bool backward = true;
  DType ref_dt = DType::F64;
};

// Runs c.f on the GPU and on the CPU (inputs converted to ref_dt), compares the outputs
// and, when backward, the gradients of every float input for the same random upstream
// gradient.
inline void run(const OpCheck& c) {
  const std::string base = c.name + " [" + dt_name(c.dt) + "]";
  double tol = c.tol > 0 ? c.tol : tol_of(c.dt);
  double gtol = c.grad_tol > 0 ? c.grad_tol : (low_precision(c.dt) ? 2 * tol : tol);
  std::vector<Tensor> lg, lr, xg, xr;
  Tensor out_g, out_r;
  bool want_grad = false;
  try {
    for (auto& i : c.inputs) {
      bool fl = bb::is_floating(i.value.dtype());
      bool g = c.backward && i.grad && fl;
      want_grad = want_grad || g;
      Tensor a = i.value.to(gpu()).detach();
      Tensor b = (fl ? i.value.to(c.ref_dt) : i.value).detach().clone();
      if (g) {
        a.requires_grad_(true);
        b.requires_grad_(true);
      }
      lg.push_back(a);
      lr.push_back(b);
      xg.push_back(i.view ? i.view(a) : a);
      xr.push_back(i.view ? i.view(b) : b);
    }
  } catch (const std::exception& e) {
    fail(base + " setup", e.what());
    return;
  }
  try {
    out_r = c.f(xr);
  } catch (const std::exception& e) {
    fail(base + " reference", std::string("CPU reference threw: ") + e.what());
    return;
  }
  // The result dtype the CPU gives for inputs of this dtype (the reference ran in f64).
  DType want_dt = out_r.dtype();
  if (c.ref_dt != c.dt) {
    try {
      bb::NoGradGuard ng;
      std::vector<Tensor> xs;
      for (auto& i : c.inputs) xs.push_back(i.view ? i.view(i.value) : i.value);
      want_dt = c.f(xs).dtype();
    } catch (const std::exception&) {
      want_dt = bb::is_floating(out_r.dtype()) ? c.dt : out_r.dtype();
    }
  }
  bool fwd_ok = false;
  guarded(base + " fwd", [&] {
    out_g = c.f(xg);
    if (!on_dev(out_g)) {
      fail(base + " fwd", "result is on " + out_g.device().str());
      return;
    }
    if (out_g.dtype() != want_dt) {
      fail(base + " fwd", "result dtype " + dt_name(out_g.dtype()) + ", the CPU gives " + dt_name(want_dt));
      return;
    }
    fwd_ok = bb::is_floating(out_r.dtype()) ? check(base + " fwd", out_g, out_r, tol, c.atol_scale, 0.0, c.abs_floor)
                                            : check_exact(base + " fwd", out_g, out_r.to(out_g.dtype()));
  }, c.dt);
  if (!fwd_ok || !want_grad) return;
  guarded(base + " bwd", [&] {
    // the upstream gradient in the result's dtype (an f32 loss of bf16 logits gets an f32 one)
    Tensor w = randn(out_r.shape(), bb::is_floating(want_dt) ? want_dt : c.dt);
    out_r.backward(w.to(c.ref_dt));
    out_g.backward(w.to(gpu()));
    for (size_t k = 0; k < lg.size(); ++k) {
      if (!lr[k].requires_grad()) continue;
      std::string gn = base + " grad[" + std::to_string(k) + "]";
      Tensor gg = lg[k].grad();
      if (gg.defined() && !on_dev(gg)) {
        fail(gn, "gradient is on " + gg.device().str());
        continue;
      }
      check(gn, gg, lr[k].grad(), gtol, c.atol_scale, 0.0, c.abs_floor);
    }
  }, c.dt);
}

// Float dtypes the GPU kernels take (f64 where supported: a DTypeError is a SKIP). Quick
// mode (compute-sanitizer runs) keeps f32 and bf16: a 4-byte and a 2-byte path.
inline std::vector<DType> float_dtypes(bool with_f64 = true) {
  if (quick()) return {DType::F32, DType::BF16};
  std::vector<DType> v{DType::F32, DType::BF16, DType::F16};
  if (with_f64) v.push_back(DType::F64);
  return v;
}

}  // namespace ct

// scaled_dot_product_attention's fused backends (Flash: barbell's kernels; Cudnn: cuDNN's
// SDPA) on the GPU, against a CPU reference in float64 on the same (already rounded)
// inputs, with the plain GPU path (the Math backend, same dtype, same inputs) as the
// yardstick:
//   accuracy       D 64 and 128, T 1 to 2048, causal or not, bf16 and f16, B and H > 1;
//                  q, k, v read through strides from a [B, T, 3, H, D] qkv buffer (as
//                  CausalSelfAttention makes them), from contiguous [B, H, T, D] tensors
//                  (one with an explicit scale), and with Tq != Tk: q from [B, Tq, H, D],
//                  k, v from a [B, Tk, 2, H, D] buffer (decode Tq = 1 against Tk = 257,
//                  causal Tq < Tk, Tq > Tk), and causal Tq > Tk, whose first Tq - Tk
//                  queries see no key (the fused backends must give them zeros and an lse
//                  of -inf; the references use the other queries only).
//                  Checked: the output, the logsumexp, and dQ, dK, dV for a random dO.
//                  A fused result passes when its max abs error against the f64 reference
//                  is at most max(2 x that of Math, 1e-5 x max(1, max|ref|)) and it has no
//                  NaN/Inf (fresh device memory is poisoned with NaN, so an output a kernel
//                  forgets to write fails). Math itself must be within 16 eps in relative L2
//                  of the reference (a sanity check of the yardstick). lse's baseline is
//                  Math's from scaled_dot_product_attention_lse.
//   deterministic  set_deterministic_attention(true): Flash's gradients bit-identical over
//                  two runs; the default (atomic dQ) mode agrees with them within rounding.
//   errors         explicit Flash with D = 80 or f32 throws barbell::Error naming the op;
//                  Auto with D = 80 falls back to Math (bit-identical to it); Auto picks
//                  Flash where it applies.
//   gpt            a tiny GPT (D = 64) in bf16, 10 AdamW steps with Flash attention and
//                  with Math attention from the same weights: the losses agree step by step
//                  within bf16 tolerance (and with an f64 CPU run).
// Groups for BARBELL_TEST_FILTER: "accuracy flash", "accuracy cudnn", "deterministic flash",
// "errors", "gpt" (so "flash" selects everything Flash runs: the sanitizer runs use
// BARBELL_TEST_QUICK=1 BARBELL_TEST_FILTER=flash). Quick mode: bf16 (one f16 case),
// T <= 257, B = H = 2. The f64 CPU reference, O(B H T^2 D), is most of the CPU time: B*H
// is 6 up to T = 257, 4 at T = 1000 and 2 at T = 2048 (about 15 s on 2 busy cores here).
// A backend that resolve_attention_backend refuses is a SKIP for Cudnn (libcudnn.so.9 may
// be missing, and cuDNN refuses some shapes) and a FAIL for Flash on inputs it is
// documented to take. With BARBELL_TEST_REQUIRE_CUDNN=1 (scripts/device-check.sh sets it
// on the GPU machine) the cudnn group also fails when cuDNN refuses a case every cuDNN 9
// takes (bf16, T 128, D 64: the library cannot be loaded, say) or when no cuDNN case
// ran: otherwise every case would SKIP and the step would pass without cuDNN running.
// $BARBELL_FLASH_FWD_TILES=1 runs the flash forward's second tile configuration (the
// launcher reads it at every call); the program prints which one it checks.
// Self-test (BARBELL_CUDA_TEST_SELFTEST): Math on the CPU against f64 only; the fused
// backends do not exist on the CPU (SKIP). Exit 77 without a GPU.
#include <array>
#include <cctype>
#include <chrono>
#include <optional>

#include "cuda_check.hpp"

using namespace ct;
namespace nn = barbell::nn;
using bb::AttentionBackend;

namespace {

constexpr AttentionBackend kAuto = AttentionBackend::Auto, kFlash = AttentionBackend::Flash,
                           kCudnn = AttentionBackend::Cudnn, kMath = AttentionBackend::Math;

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}
std::string bname(AttentionBackend b) { return lower(bb::attention_backend_name(b)); }

// Unit roundoff of the 16-bit dtypes (f32 for anything else).
double eps_of(DType d) { return d == DType::BF16 ? 0x1p-8 : d == DType::F16 ? 0x1p-11 : 0x1p-24; }

// ---- cases -------------------------------------------------------------------------------

enum class Layout { Qkv, Contig, KvBuf };

struct Case {
  int64_t B = 2, H = 3, Tq = 0, Tk = 0, D = 64;
  bool causal = false;
  DType dt = DType::BF16;
  Layout layout = Layout::Qkv;
  double scale = 0;  // <= 0: the default 1/sqrt(D)
  // Causal with Tq > Tk: the first `off` queries see no key (zeros from the fused
  // backends, NaN from Math); the references use the other queries only.
  int64_t off() const { return causal && Tq > Tk ? Tq - Tk : 0; }
  std::optional<double> sc() const { return scale > 0 ? std::optional<double>(scale) : std::nullopt; }
  std::string tag() const {
    char buf[160];
    const char* lay = layout == Layout::Qkv ? "qkv-views" : layout == Layout::Contig ? "contiguous" : "q+kv-views";
    if (Tq == Tk)
      std::snprintf(buf, sizeof buf, "%s B%lld H%lld T%lld D%lld %s %s", dt_name(dt).c_str(),
                    static_cast<long long>(B), static_cast<long long>(H), static_cast<long long>(Tq),
                    static_cast<long long>(D), causal ? "causal" : "full", lay);
    else
      std::snprintf(buf, sizeof buf, "%s B%lld H%lld Tq%lld Tk%lld D%lld %s %s", dt_name(dt).c_str(),
                    static_cast<long long>(B), static_cast<long long>(H), static_cast<long long>(Tq),
                    static_cast<long long>(Tk), static_cast<long long>(D), causal ? "causal" : "full", lay);
    std::string s = buf;
    if (scale > 0) s += " scale=" + std::to_string(scale).substr(0, 4);
    return s;
  }
};

// The leaves (on the CPU, in the case's dtype, fresh random values).
std::vector<Tensor> make_leaves(const Case& c) {
  switch (c.layout) {
    case Layout::Qkv: return {randn({c.B, c.Tq, 3, c.H, c.D}, c.dt)};
    case Layout::Contig:
      return {randn({c.B, c.H, c.Tq, c.D}, c.dt), randn({c.B, c.H, c.Tk, c.D}, c.dt),
              randn({c.B, c.H, c.Tk, c.D}, c.dt)};
    case Layout::KvBuf: return {randn({c.B, c.Tq, c.H, c.D}, c.dt), randn({c.B, c.Tk, 2, c.H, c.D}, c.dt)};
  }
  return {};
}

struct QKV {
  Tensor q, k, v;
};
// q, k, v [B, H, T, D] from the leaves (or dq, dk, dv from their gradients: the same map).
QKV views(const Case& c, const std::vector<Tensor>& l) {
  for (auto& t : l)
    if (!t.defined()) return {};
  switch (c.layout) {
    case Layout::Qkv:
      return {l[0].select(2, 0).transpose(1, 2), l[0].select(2, 1).transpose(1, 2), l[0].select(2, 2).transpose(1, 2)};
    case Layout::Contig: return {l[0], l[1], l[2]};
    case Layout::KvBuf:
      return {l[0].transpose(1, 2), l[1].select(2, 0).transpose(1, 2), l[1].select(2, 1).transpose(1, 2)};
  }
  return {};
}
QKV grads_of(const Case& c, const std::vector<Tensor>& leaves) {
  std::vector<Tensor> g;
  for (auto& t : leaves) g.push_back(t.grad());
  return views(c, g);
}

// Bool [Tq, Tk] on the CPU: query i sees key j when j <= i + (Tk - Tq) (bottom-right).
Tensor keep_mask(int64_t Tq, int64_t Tk) {
  std::vector<int32_t> m(static_cast<size_t>(Tq * Tk));
  for (int64_t i = 0; i < Tq; ++i)
    for (int64_t j = 0; j < Tk; ++j) m[static_cast<size_t>(i * Tk + j)] = j <= i + (Tk - Tq);
  return bb::from_vector(m, {Tq, Tk}, {DType::Bool});
}

struct Result {
  Tensor out, lse, dq, dk, dv;
};
constexpr const char* kWhat[5] = {"out", "lse", "dq", "dk", "dv"};
std::array<Tensor, 5> parts(const Result& r) { return {r.out, r.lse, r.dq, r.dk, r.dv}; }

// The reference: the composition written out here, in f64 on the CPU, on the queries that
// see a key (all of them unless off() > 0).
Result reference(const Case& c, const std::vector<Tensor>& vals, const Tensor& dout) {
  std::vector<Tensor> l;
  for (auto& v : vals) l.push_back(v.to(DType::F64).detach().clone().requires_grad_(true));
  QKV x = views(c, l);
  Tensor q = x.q, dO = dout.to(DType::F64);
  const int64_t off = c.off();
  if (off) {
    q = q.narrow(2, off, c.Tq - off);
    dO = dO.narrow(2, off, c.Tq - off);
  }
  const double s = c.scale > 0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(c.D));
  Tensor att = bb::mul(bb::matmul(q, x.k.transpose(-2, -1)), s);
  if (c.causal) att = bb::where(keep_mask(q.size(2), c.Tk), att, bb::full({}, -INFINITY, att.options()));
  Result r;
  r.out = bb::matmul(bb::softmax(att, -1), x.v);
  {
    bb::NoGradGuard ng;
    Tensor a = att.detach();
    Tensor m = bb::max(a, -1, true);
    r.lse = bb::add(bb::log(bb::sum(bb::exp(bb::sub(a, m)), {-1})), m.squeeze(-1));
  }
  r.out.backward(dO);
  QKV g = grads_of(c, l);
  r.dq = g.q;
  r.dk = g.k;
  r.dv = g.v;
  return r;
}

// One backend on the device under test: out from scaled_dot_product_attention (and its
// gradients for dO), lse from scaled_dot_product_attention_lse. With `sub`, the queries
// that see no key are left out (for Math: they would be NaN).
Result run_backend(const Case& c, const std::vector<Tensor>& vals, const Tensor& dout, AttentionBackend b, bool sub,
                   bool with_lse = true) {
  std::vector<Tensor> l;
  for (auto& v : vals) l.push_back(v.to(gpu()).detach().clone().requires_grad_(true));
  QKV x = views(c, l);
  Tensor q = x.q, dO = dout.to(gpu());
  const int64_t off = sub ? c.off() : 0;
  if (off) {
    q = q.narrow(2, off, c.Tq - off);
    dO = dO.narrow(2, off, c.Tq - off);
  }
  Result r;
  r.out = bb::scaled_dot_product_attention(q, x.k, x.v, c.causal, c.sc(), b);
  if (with_lse) {
    bb::NoGradGuard ng;
    r.lse = bb::scaled_dot_product_attention_lse(q, x.k, x.v, c.causal, c.sc(), b).lse;
  }
  r.out.backward(dO);
  QKV g = grads_of(c, l);
  r.dq = g.q;
  r.dk = g.k;
  r.dv = g.v;
  return r;
}

// Why `b` cannot run this case on the device under test ("" when it can: it resolves to b).
std::string unavailable(const Case& c, const std::vector<Tensor>& vals, AttentionBackend b) {
  try {
    std::vector<Tensor> l;
    for (auto& v : vals) l.push_back(v.to(gpu()));
    QKV x = views(c, l);
    AttentionBackend got = bb::resolve_attention_backend(x.q, x.k, x.v, b);
    if (got != b) return std::string("resolve_attention_backend gave ") + bb::attention_backend_name(got);
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

// ---- errors against the reference ------------------------------------------------------

struct Ref {  // a reference tensor, on the host
  std::vector<double> v;
  Shape shape;
  double max_abs = 0;
  bool defined = false;
};
Ref host_ref(const Tensor& t) {
  Ref r;
  if (!t.defined()) return r;
  r.defined = true;
  r.shape = t.shape();
  r.v = host_values(t.contiguous());
  for (double x : r.v)
    if (std::isfinite(x)) r.max_abs = std::max(r.max_abs, std::abs(x));
  return r;
}

struct Err {
  double max_abs = 0, rel_l2 = 0;
  size_t nonfinite = 0, first_bad = 0, n = 0;
  double bad_got = 0, bad_ref = 0;
  std::string problem;  // undefined, wrong shape, threw
  bool ok() const { return problem.empty() && nonfinite == 0; }
  std::string str() const {
    if (!problem.empty()) return problem;
    char buf[200];
    if (nonfinite)
      std::snprintf(buf, sizeof buf, "%zu non-finite mismatches of %zu, first at %zu: got %g ref %g", nonfinite, n,
                    first_bad, bad_got, bad_ref);
    else
      std::snprintf(buf, sizeof buf, "max_abs %.3g rel_l2 %.3g", max_abs, rel_l2);
    return buf;
  }
};

Err error_of(const Tensor& got, const Ref& ref) {
  Err e;
  if (!ref.defined) {
    e.problem = "no reference";
    return e;
  }
  if (!got.defined()) {
    e.problem = "undefined (no gradient?)";
    return e;
  }
  if (got.shape() != ref.shape) {
    e.problem = "shape " + shp(got.shape()) + " != reference " + shp(ref.shape);
    return e;
  }
  std::vector<double> g = host_values(got.contiguous());
  e.n = g.size();
  double dd = 0, rr = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const double r = ref.v[i];
    if (!std::isfinite(g[i]) || !std::isfinite(r)) {
      bool same = (std::isnan(g[i]) && std::isnan(r)) || g[i] == r;
      if (!same && e.nonfinite++ == 0) e.first_bad = i, e.bad_got = g[i], e.bad_ref = r;
      continue;
    }
    const double d = std::abs(g[i] - r);
    e.max_abs = std::max(e.max_abs, d);
    dd += d * d;
    rr += r * r;
  }
  e.rel_l2 = rr > 0 ? std::sqrt(dd / rr) : std::sqrt(dd);
  return e;
}

// Math against the reference: within 16 unit roundoffs of its dtype in relative L2.
void sanity(const std::string& name, const Err& e, DType dt) {
  const double tol = 16 * eps_of(dt);
  char buf[96];
  std::snprintf(buf, sizeof buf, " (yardstick sanity: rel_l2 <= %.2g)", tol);
  expect(e.ok() && e.rel_l2 <= tol, name, e.str() + buf);
}

// A fused backend's error against Math's: max abs at most max(2 x Math's, floor), where the
// floor 1e-5 * max(1, max|ref|) is far below a 16-bit rounding of O(1) values and only
// matters where the reference is exactly zero (dq and dk at T = 1) and Math is too.
void judge(const std::string& name, const Err& e, const Err& math, const Ref& ref) {
  if (!e.ok()) {
    fail(name, e.str());
    return;
  }
  if (!math.ok() || !std::isfinite(math.max_abs)) {
    fail(name, e.str() + "; no yardstick: Math " + math.str());
    return;
  }
  const double floor = 1e-5 * std::max(1.0, ref.max_abs);
  const double bound = std::max(2 * math.max_abs, floor);
  char buf[200];
  std::snprintf(buf, sizeof buf, "max_abs %.3g vs math %.3g (bound %.3g), rel_l2 %.3g vs math %.3g, n=%zu", e.max_abs,
                math.max_abs, bound, e.rel_l2, math.rel_l2, e.n);
  expect(e.max_abs <= bound, name, buf);
}

// Every value of t (any device) equals `value` (NaN never does).
bool all_equal(const Tensor& t, double value, std::string* why) {
  std::vector<double> v = host_values(t.contiguous());
  for (size_t i = 0; i < v.size(); ++i)
    if (!(v[i] == value)) {
      *why = "element " + std::to_string(i) + " is " + std::to_string(v[i]);
      return false;
    }
  *why = std::to_string(v.size()) + " values";
  return true;
}

// ---- accuracy --------------------------------------------------------------------------

double g_reference_seconds = 0;  // wall time spent in the f64 CPU reference
int g_cudnn_ran = 0;             // cuDNN cases that ran (passed or not)

bool require_cudnn() {
  const char* e = std::getenv("BARBELL_TEST_REQUIRE_CUDNN");
  return !kSelfTest && e && *e && std::string(e) != "0";
}

void accuracy_case(const Case& c, const std::vector<AttentionBackend>& fused) {
  const std::string tag = c.tag();
  std::vector<Tensor> vals = make_leaves(c);
  Tensor dout = randn({c.B, c.H, c.Tq, c.D}, c.dt);
  std::array<Ref, 5> ref;
  try {
    auto t0 = std::chrono::steady_clock::now();
    auto p = parts(reference(c, vals, dout));
    for (size_t i = 0; i < 5; ++i) ref[i] = host_ref(p[i]);
    g_reference_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } catch (const std::exception& e) {
    fail("reference " + tag, std::string("the f64 CPU reference threw: ") + e.what());
    return;
  }
  std::array<Err, 5> em;
  try {
    auto p = parts(run_backend(c, vals, dout, kMath, /*sub=*/true));
    for (size_t i = 0; i < 5; ++i) {
      em[i] = error_of(p[i], ref[i]);
      sanity("math " + tag + " " + kWhat[i], em[i], c.dt);
    }
  } catch (const std::exception& e) {
    fail("math " + tag, std::string("threw: ") + e.what());
    for (auto& x : em) x.problem = "Math threw";
  }
  for (AttentionBackend b : fused) {
    const std::string name = bname(b) + " " + tag;
    std::string why = unavailable(c, vals, b);
    if (!why.empty()) {
      if (kSelfTest || b != kFlash) skip(name, "not available: " + why);
      else fail(name, "not available on inputs it must take: " + why);
      continue;
    }
    if (b == kCudnn) ++g_cudnn_ran;
    try {
      Result r = run_backend(c, vals, dout, b, /*sub=*/false);
      if (!on_dev(r.out) || r.out.dtype() != c.dt || !r.lse.defined() || !on_dev(r.lse) ||
          r.lse.dtype() != DType::F32 || r.lse.shape() != Shape{c.B, c.H, c.Tq}) {
        fail(name + " outputs", "out " + dt_name(r.out.dtype()) + " on " + r.out.device().str() + ", lse " +
                                    (r.lse.defined() ? dt_name(r.lse.dtype()) + " " + shp(r.lse.shape()) + " on " +
                                                           r.lse.device().str()
                                                     : std::string("undefined")) +
                                    " (want " + dt_name(c.dt) + " and F32 [B, H, Tq] on the GPU)");
        continue;
      }
      if (const int64_t off = c.off()) {  // the queries that see no key: zeros and lse -inf
        std::string w;
        expect(all_equal(r.out.narrow(2, 0, off), 0.0, &w), name + " out of queries seeing no key is 0", w);
        expect(all_equal(r.lse.narrow(2, 0, off), -INFINITY, &w), name + " lse of queries seeing no key is -inf", w);
        r.out = r.out.narrow(2, off, c.Tq - off);
        r.lse = r.lse.narrow(2, off, c.Tq - off);
      }
      auto p = parts(r);
      for (size_t i = 0; i < 5; ++i) judge(name + " " + kWhat[i], error_of(p[i], ref[i]), em[i], ref[i]);
    } catch (const std::exception& e) {
      fail(name, std::string("threw: ") + e.what());
    }
  }
}

std::vector<Case> accuracy_cases() {
  const bool q = quick();
  std::vector<Case> v;
  auto add = [&](int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, bool causal, DType dt, Layout l,
                 double scale = 0) { v.push_back(Case{B, H, Tq, Tk, D, causal, dt, l, scale}); };
  const std::vector<DType> dts = q ? std::vector<DType>{DType::BF16} : std::vector<DType>{DType::BF16, DType::F16};
  const std::vector<int64_t> Ts = q ? std::vector<int64_t>{1, 17, 128} : std::vector<int64_t>{1, 17, 128, 257, 1000, 2048};
  // The GPT's layout: q, k, v strided views of one [B, T, 3, H, D] buffer. The f64 CPU
  // reference costs O(B H T^2 D): B*H = 6 up to T = 257, 4 at T = 1000, 2 at T = 2048.
  for (DType dt : dts)
    for (int64_t D : {64, 128})
      for (int64_t T : Ts)
        for (bool causal : {false, true}) {
          const int64_t B = T >= 2048 ? 1 : 2, H = T >= 2048 ? 2 : T >= 1000 || q ? 2 : 3;
          add(B, H, T, T, D, causal, dt, Layout::Qkv);
        }
  if (q) add(2, 2, 128, 128, 64, true, DType::F16, Layout::Qkv);  // the f16 kernels under the sanitizers
  for (DType dt : dts) {
    const int64_t H = q ? 2 : 3;
    // contiguous [B, H, T, D]
    add(2, H, q ? 128 : 257, q ? 128 : 257, 64, true, dt, Layout::Contig);
    add(2, H, 128, 128, 128, false, dt, Layout::Contig);
    add(2, H, 128, 128, 64, false, dt, Layout::Contig, 0.3);  // an explicit scale
    // Tq != Tk: q from [B, Tq, H, D], k and v from a [B, Tk, 2, H, D] buffer
    const int64_t Tk = q ? 129 : 257;
    add(2, H, 1, Tk, 64, false, dt, Layout::KvBuf);    // decode
    add(2, H, 1, Tk, 128, true, dt, Layout::KvBuf);    // decode, causal: the one query sees every key
    add(2, H, q ? 17 : 100, Tk, 128, true, dt, Layout::KvBuf);   // causal, Tq < Tk (bottom-right)
    add(2, H, Tk, q ? 24 : 100, 64, false, dt, Layout::KvBuf);   // Tq > Tk
    add(2, H, q ? 40 : 150, q ? 24 : 100, 64, true, dt, Layout::Contig);  // causal Tq > Tk: queries seeing no key
  }
  return v;
}

// Whether cuDNN runs here at all: a case every cuDNN 9 takes.
void cudnn_loads() {
  const Case c{2, 2, 128, 128, 64, false, DType::BF16, Layout::Contig};
  std::string why = unavailable(c, make_leaves(c), kCudnn);
  const std::string name = "cudnn available (bf16 B2 H2 T128 D64, contiguous)";
  if (why.empty()) {
    pass(name);
  } else if (require_cudnn()) {
    fail(name, "refused with BARBELL_TEST_REQUIRE_CUDNN=1: " + why);
  } else {
    skip(name, "not available: " + why);
  }
}

// ---- deterministic mode ------------------------------------------------------------------

// Sets the process-wide mode for its scope.
class DeterministicGuard {
 public:
  explicit DeterministicGuard(bool on) : prev_(bb::deterministic_attention()) { bb::set_deterministic_attention(on); }
  ~DeterministicGuard() { bb::set_deterministic_attention(prev_); }
  DeterministicGuard(const DeterministicGuard&) = delete;
  DeterministicGuard& operator=(const DeterministicGuard&) = delete;

 private:
  bool prev_;
};

void deterministic_case(const Case& c) {
  const std::string name = "deterministic flash " + c.tag();
  std::vector<Tensor> vals = make_leaves(c);
  Tensor dout = randn({c.B, c.H, c.Tq, c.D}, c.dt);
  std::string why = unavailable(c, vals, kFlash);
  if (!why.empty()) {
    if (kSelfTest) skip(name, "not available: " + why);
    else fail(name, "not available on inputs it must take: " + why);
    return;
  }
  guarded(name, [&] {
    Result d1, d2, a1, a2;
    {
      DeterministicGuard g(true);
      expect(bb::deterministic_attention(), "set_deterministic_attention(true) reads back true");
      d1 = run_backend(c, vals, dout, kFlash, false, false);
      d2 = run_backend(c, vals, dout, kFlash, false, false);
    }
    {
      DeterministicGuard g(false);
      a1 = run_backend(c, vals, dout, kFlash, false, false);
      a2 = run_backend(c, vals, dout, kFlash, false, false);
    }
    check_exact(name + " out, run 1 == run 2", d2.out, d1.out);
    check_exact(name + " dq, run 1 == run 2", d2.dq, d1.dq);
    check_exact(name + " dk, run 1 == run 2", d2.dk, d1.dk);
    check_exact(name + " dv, run 1 == run 2", d2.dv, d1.dv);
    // atomic dQ: the order of the fp32 additions varies, so the 16-bit results may differ
    // from the deterministic ones by a rounding or two
    const double tol = 4 * eps_of(c.dt);
    check(name + " atomic-mode dq ~ deterministic dq", a1.dq, d1.dq, tol);
    check(name + " atomic-mode dk ~ deterministic dk", a1.dk, d1.dk, tol);
    check(name + " atomic-mode dv ~ deterministic dv", a1.dv, d1.dv, tol);
    std::vector<double> x = host_values(a1.dq.contiguous()), y = host_values(a2.dq.contiguous());
    size_t differ = 0;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) differ += !(x[i] == y[i]);
    line("INFO", name + " atomic mode, two runs", std::to_string(differ) + " of " + std::to_string(x.size()) +
                                                      " dq values differ (allowed: the atomic order varies)");
  }, c.dt);
}

void deterministic() {
  if (quick()) {
    deterministic_case(Case{2, 2, 257, 257, 64, true, DType::BF16, Layout::Qkv});
    deterministic_case(Case{2, 2, 128, 128, 128, false, DType::BF16, Layout::Contig});
  } else {
    deterministic_case(Case{2, 3, 1000, 1000, 64, true, DType::BF16, Layout::Qkv});
    deterministic_case(Case{2, 3, 1000, 1000, 128, false, DType::F16, Layout::Qkv});
    deterministic_case(Case{2, 2, 2048, 2048, 128, true, DType::BF16, Layout::Qkv});
    deterministic_case(Case{2, 3, 100, 257, 64, true, DType::BF16, Layout::KvBuf});
  }
}

// ---- errors and dispatch ---------------------------------------------------------------------

// f must throw barbell::Error (or a subclass) whose message contains `needle`.
template <typename F>
void expect_error(const std::string& name, const std::string& needle, F&& f) {
  try {
    f();
  } catch (const bb::Error& e) {
    std::string m = e.what();
    if (needle.empty() || m.find(needle) != std::string::npos) pass(name, "threw: " + m);
    else fail(name, "the message does not name '" + needle + "': " + m);
    return;
  } catch (const std::exception& e) {
    fail(name, std::string("threw something other than barbell::Error: ") + e.what());
    return;
  }
  fail(name, "did not throw");
}

void errors() {
  const char* op = "scaled_dot_product_attention";
  guarded("attention_backend_name", [&] {
    std::string n[4] = {bb::attention_backend_name(kAuto), bb::attention_backend_name(kFlash),
                        bb::attention_backend_name(kCudnn), bb::attention_backend_name(kMath)};
    bool ok = true;
    for (int i = 0; i < 4; ++i)
      for (int j = i + 1; j < 4; ++j) ok = ok && !n[i].empty() && n[i] != n[j];
    expect(ok, "attention_backend_name: four distinct names", n[0] + " " + n[1] + " " + n[2] + " " + n[3]);
  });
  // D = 80: no Flash kernel for it.
  Case c80{2, 2, 33, 33, 80, true, DType::BF16, Layout::Qkv};
  std::vector<Tensor> v80 = make_leaves(c80);
  QKV x80 = views(c80, {v80[0].to(gpu())});
  expect_error("explicit Flash with D=80 throws", op,
               [&] { bb::scaled_dot_product_attention(x80.q, x80.k, x80.v, true, std::nullopt, kFlash); });
  expect_error("explicit Flash with D=80 throws (the _lse variant)", op,
               [&] { bb::scaled_dot_product_attention_lse(x80.q, x80.k, x80.v, true, std::nullopt, kFlash); });
  expect_error("resolve_attention_backend(Flash) with D=80 throws", "",
               [&] { bb::resolve_attention_backend(x80.q, x80.k, x80.v, kFlash); });
  // f32: Flash and cuDNN take bf16/f16 only.
  Case c32{2, 2, 33, 33, 64, false, DType::F32, Layout::Qkv};
  std::vector<Tensor> v32 = make_leaves(c32);
  QKV x32 = views(c32, {v32[0].to(gpu())});
  expect_error("explicit Flash with f32 throws", op,
               [&] { bb::scaled_dot_product_attention(x32.q, x32.k, x32.v, false, std::nullopt, kFlash); });
  expect_error("explicit Cudnn with f32 throws", op,
               [&] { bb::scaled_dot_product_attention(x32.q, x32.k, x32.v, false, std::nullopt, kCudnn); });
  // CPU tensors: no fused backend.
  Case c64{2, 2, 33, 33, 64, true, DType::BF16, Layout::Qkv};
  std::vector<Tensor> v64 = make_leaves(c64);
  QKV xc = views(c64, v64);
  expect_error("explicit Flash on CPU tensors throws", op,
               [&] { bb::scaled_dot_product_attention(xc.q, xc.k, xc.v, true, std::nullopt, kFlash); });
  expect_error("explicit Cudnn on CPU tensors throws", op,
               [&] { bb::scaled_dot_product_attention(xc.q, xc.k, xc.v, true, std::nullopt, kCudnn); });
  // What Auto resolves to.
  guarded("Auto resolution", [&] {
    QKV x64 = views(c64, {v64[0].to(gpu())});
    AttentionBackend want = kSelfTest ? kMath : kFlash;
    AttentionBackend got = bb::resolve_attention_backend(x64.q, x64.k, x64.v, kAuto);
    expect(got == want, std::string("Auto on bf16 D=64 qkv views on ") + gpu().str() + " resolves to " +
                            bb::attention_backend_name(want),
           std::string("got ") + bb::attention_backend_name(got));
    got = bb::resolve_attention_backend(x80.q, x80.k, x80.v, kAuto);
    expect(got == kMath, "Auto with D=80 resolves to Math", std::string("got ") + bb::attention_backend_name(got));
    got = bb::resolve_attention_backend(x32.q, x32.k, x32.v, kAuto);
    expect(got == kMath, "Auto with f32 resolves to Math", std::string("got ") + bb::attention_backend_name(got));
    got = bb::resolve_attention_backend(xc.q, xc.k, xc.v, kAuto);
    expect(got == kMath, "Auto on CPU tensors resolves to Math", std::string("got ") + bb::attention_backend_name(got));
    got = bb::resolve_attention_backend(x80.q, x80.k, x80.v, kMath);
    expect(got == kMath, "resolve_attention_backend(Math) is Math", std::string("got ") + bb::attention_backend_name(got));
  });
  // Auto with D = 80 falls back to Math: the same values, bit for bit, and the same gradients.
  guarded("Auto with D=80 falls back to Math", [&] {
    Tensor dout = randn({c80.B, c80.H, c80.Tq, c80.D}, c80.dt);
    Result a = run_backend(c80, v80, dout, kAuto, false), m = run_backend(c80, v80, dout, kMath, false);
    check_exact("Auto (D=80) out == Math out", a.out, m.out);
    check_exact("Auto (D=80) lse == Math lse", a.lse, m.lse);
    check_exact("Auto (D=80) dq == Math dq", a.dq, m.dq);
    check_exact("Auto (D=80) dk == Math dk", a.dk, m.dk);
    check_exact("Auto (D=80) dv == Math dv", a.dv, m.dv);
  });
  // The GPU still works after the errors.
  guarded("after the errors", [&] {
    Tensor dout = randn({c64.B, c64.H, c64.Tq, c64.D}, c64.dt);
    Result m = run_backend(c64, v64, dout, kMath, false);
    Result r = reference(c64, v64, dout);
    check("Math after the errors: out", m.out, r.out, 4 * tol_of(c64.dt));
  });
}

// ---- the GPT -------------------------------------------------------------------------------

nn::GPTConfig gpt_config(AttentionBackend b) {
  nn::GPTConfig c;
  c.vocab_size = 67;
  c.block_size = 65;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 128;  // head dim 64: a Flash size
  c.seed = 4321;
  c.attn_backend = b;
  return c;
}

struct Batch {
  Tensor idx, targets;  // on the CPU, I64
};
Batch gpt_batch(int64_t B, int64_t T) {
  return Batch{randint(0, 67, {B, T}), randint(0, 67, {B, T})};
}

std::vector<double> gpt_train(const nn::GPT& base, AttentionBackend b, bb::Device dev, DType dt,
                              const std::vector<Batch>& batches, int steps) {
  nn::GPT m(gpt_config(b));
  m.to(dev);
  m.load_state_dict(base.state_dict());
  m.to(dt);
  bb::optim::AdamWOptions o;
  o.lr = 3e-3;
  o.weight_decay = 0.1;
  o.beta1 = 0.9;
  o.beta2 = 0.95;
  o.master_weights = dt == DType::BF16 || dt == DType::F16;
  bb::optim::AdamW opt(m.named_parameters(), o);
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) {
    const Batch& bt = batches[static_cast<size_t>(s) % batches.size()];
    m.zero_grad();
    Tensor l = m.loss(bt.idx.to(dev), bt.targets.to(dev));
    losses.push_back(l.item());
    l.backward();
    bb::optim::clip_grad_norm_(m.parameters(), 1.0);
    opt.step();
  }
  return losses;
}

void compare_losses(const std::string& what, const std::vector<double>& got, const std::vector<double>& ref,
                    double rel_tol) {
  for (size_t s = 0; s < got.size() && s < ref.size(); ++s) {
    double err = std::abs(got[s] - ref[s]) / std::abs(ref[s]);
    char buf[160];
    std::snprintf(buf, sizeof buf, "%.7f vs %.7f, rel diff %.2e (tol %.0e)", got[s], ref[s], err, rel_tol);
    expect(std::isfinite(got[s]) && err <= rel_tol, what + " step " + std::to_string(s) + " loss", buf);
  }
  expect(got.size() == ref.size(), what + ": every step ran", std::to_string(got.size()) + " of " + std::to_string(ref.size()));
}

void gpt() {
  // 4 steps on the emulated device (its flash kernels run ~10^5 times slower): the same
  // checks, fewer repetitions.
  const int kSteps = bb::cuda::is_emulated() ? 4 : 10;
  nn::GPT base(gpt_config(kAuto));
  std::vector<Batch> batches = {gpt_batch(4, 65), gpt_batch(4, 65)};
  std::vector<double> ref, math, flash;
  try {
    ref = gpt_train(base, kMath, host(), DType::F64, batches, kSteps);
  } catch (const std::exception& e) {
    fail("gpt f64 CPU reference", e.what());
    return;
  }
  guarded("gpt bf16 Math", [&] {
    math = gpt_train(base, kMath, gpu(), DType::BF16, batches, kSteps);
    compare_losses("gpt bf16 Math vs f64", math, ref, 2e-2);
    if (!math.empty()) expect(math.back() < math.front(), "gpt bf16 Math: the loss decreases",
                              std::to_string(math.front()) + " -> " + std::to_string(math.back()));
  });
  if (kSelfTest) {
    skip("gpt bf16 Flash", "no fused attention on the CPU");
    return;
  }
  guarded("gpt bf16 Flash", [&] {
    flash = gpt_train(base, kFlash, gpu(), DType::BF16, batches, kSteps);
    compare_losses("gpt bf16 Flash vs bf16 Math", flash, math, 1e-2);
    compare_losses("gpt bf16 Flash vs f64", flash, ref, 2e-2);
  });
}

}  // namespace

int main() {
  return program("cuda_test_cuda_attention", [] {
    const char* tiles = std::getenv("BARBELL_FLASH_FWD_TILES");
    line("INFO", "flash forward tile configuration",
         std::string(tiles && tiles[0] == '1' ? "1" : "0") + " ($BARBELL_FLASH_FWD_TILES)");
    std::vector<AttentionBackend> fused;
    if (selected("accuracy flash")) fused.push_back(kFlash);
    if (selected("accuracy cudnn")) {
      fused.push_back(kCudnn);
      guarded("cudnn available", cudnn_loads);
    }
    if (!fused.empty()) {
      auto t0 = std::chrono::steady_clock::now();
      auto cases = accuracy_cases();
      for (const Case& c : cases) guarded("accuracy " + c.tag(), [&] { accuracy_case(c, fused); });
      char buf[160];
      std::snprintf(buf, sizeof buf, "%zu cases in %.1f s, of which the f64 CPU reference %.1f s", cases.size(),
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                    g_reference_seconds);
      line("INFO", "accuracy", buf);
    }
    if (selected("accuracy cudnn") && require_cudnn())
      expect(g_cudnn_ran > 0, "cudnn: at least one accuracy case ran (BARBELL_TEST_REQUIRE_CUDNN=1)",
             std::to_string(g_cudnn_ran) + " ran");
    if (selected("deterministic flash")) deterministic();
    if (selected("errors")) errors();
    if (selected("gpt")) gpt();
  });
}

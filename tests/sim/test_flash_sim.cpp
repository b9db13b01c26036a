// The real flash-attention kernels (kernels/flash/forward.cuh, backward.cuh) run on the
// host under the warp emulator (emu/, through kernels/flash/primitives.cuh) and are compared with a float64
// reference computed from the same bf16 / f16-rounded inputs:
//   forward:  O = softmax(Q K^T * scale + causal mask) V, lse = logsumexp (natural log)
//   backward: dV = P^T dO, dP = dO V^T, delta_i = sum_j P_ij dP_ij,
//             dS = P * (dP - delta), dQ = scale dS K, dK = scale dS^T Q
// Causal masking is bottom-right aligned (query i sees key j <= i + Tk - Tq); a query that
// sees no key has O = 0, lse = -inf and dQ = 0.
//
// Both backward modes run: atomic (preprocess, dkdv<AtomicDq=true>, dq_convert) and
// deterministic (preprocess, dkdv<false>, dq). Tq == Tk cases read Q, K, V through
// strides from one [B, T, 3, H, D] qkv buffer and write dQ, dK, dV into one dqkv buffer of
// the same layout, O and dO as [B, T, H, D]; other cases use contiguous [B, H, T, D]
// buffers. Every output and workspace is poisoned with NaN first and surrounded by guard
// zones that must stay untouched; cp.async may read only the registered input buffers.
//
// Tolerances (u = unit roundoff of T: 2^-8 for bf16, 2^-11 for f16; scale = max(1,
// max |ref|) of the compared tensor). The kernels round P (forward), P and dS (backward)
// to T before the tensor-core products and round every output to T, so each output
// element carries a few u of relative error of its largest terms:
//   O:              max |err| <= 5 u * scale   (bf16 2.0e-2, f16 2.4e-3)
//   dQ, dK, dV:     max |err| <= 10 u * scale  (bf16 3.9e-2, f16 4.9e-3)
//   also the relative 2-norm ||err|| / ||ref|| <= 2 u (outputs) and 4 u (gradients)
//   lse (fp32, no rounding to T on the way): |err| <= 1e-5 * max(1, |ref|)
//   atomic vs deterministic dQ: |diff| <= 2 u * scale (same products, other summation
//   order); dK, dV of the two dkdv variants: bitwise equal.
// NaN anywhere fails. Some cases also run under the emulator's reverse and random thread
// schedules, which must give bitwise the same results (a plain shared-memory access
// without a barrier would make them differ).
// Usage: test_flash_sim [--all] [--quick] [--schedules] [filter-substring]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "flash/backward.cuh"
#include "flash/forward.cuh"
#include "flash/params.hpp"
#include "flash/primitives.cuh"

using namespace barbell::gpu::fa;

namespace {

int g_failures = 0, g_checks = 0;

// The forward tile configuration under test: $BB_SIM_FWD_VARIANT (FwdCfg<D, 0 or 1>).
int fwd_variant() {
  const char* e = std::getenv("BB_SIM_FWD_VARIANT");
  return e && e[0] == '1' ? 1 : 0;
}

template <typename T>
T from_float(float x);
template <>
__nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <typename T>
constexpr const char* tname() {
  return std::is_same_v<T, __nv_bfloat16> ? "bf16" : "f16";
}
template <typename T>
constexpr double unit_roundoff() {
  return std::is_same_v<T, __nv_bfloat16> ? 1.0 / 256 : 1.0 / 2048;
}

// A global buffer with guard zones on both sides (filled with a pattern that must stay),
// 128-byte aligned, NaN-poisoned payload.
template <typename E>
struct Guarded {
  static constexpr size_t kGuard = 1024;  // bytes each side
  std::vector<unsigned char> raw;
  E* p = nullptr;
  size_t n = 0;
  explicit Guarded(size_t count) : raw(count * sizeof(E) + 2 * kGuard + 256), n(count) {
    uintptr_t u = reinterpret_cast<uintptr_t>(raw.data()) + kGuard;
    u = (u + 127) & ~static_cast<uintptr_t>(127);
    p = reinterpret_cast<E*>(u);
    for (size_t i = 0; i < raw.size(); ++i) raw[i] = static_cast<unsigned char>(0xA5 ^ (i * 7));
    poison();
  }
  void poison() { std::memset(static_cast<void*>(p), 0xff, n * sizeof(E)); }  // NaN for bf16, f16 and f32
  bool guards_intact() const {
    const unsigned char* lo = reinterpret_cast<const unsigned char*>(p);
    const unsigned char* hi = lo + n * sizeof(E);
    for (size_t i = 0; i < raw.size(); ++i) {
      const unsigned char* c = raw.data() + i;
      if (c >= lo && c < hi) continue;
      if (*c != static_cast<unsigned char>(0xA5 ^ (i * 7))) return false;
    }
    return true;
  }
  E& operator[](size_t i) { return p[i]; }
  size_t bytes() const { return n * sizeof(E); }
};

struct Shape {
  int B, H, Tq, Tk, D;
  bool causal;
};

// Logical [B, H, T, D] view of a strided tensor.
struct View {
  Strides s;
  int64_t idx(int b, int h, int t, int d) const { return b * s.b + h * s.h + t * s.t + d; }
};

// ---- float64 reference -------------------------------------------------------------------
struct Ref {
  std::vector<double> o, lse, dq, dk, dv;  // [B,H,T,D] / [B,H,Tq]
};

void reference(const Shape& sh, double scale, const std::vector<double>& q, const std::vector<double>& k,
               const std::vector<double>& v, const std::vector<double>& dout, Ref& r) {
  const int B = sh.B, H = sh.H, Tq = sh.Tq, Tk = sh.Tk, D = sh.D, off = Tk - Tq;
  r.o.assign(size_t(B) * H * Tq * D, 0);
  r.lse.assign(size_t(B) * H * Tq, -INFINITY);
  r.dq.assign(size_t(B) * H * Tq * D, 0);
  r.dk.assign(size_t(B) * H * Tk * D, 0);
  r.dv.assign(size_t(B) * H * Tk * D, 0);
  std::vector<double> s(Tk), p(Tk), dp(Tk);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const size_t qb = (size_t(b) * H + h) * Tq, kb = (size_t(b) * H + h) * Tk;
      for (int i = 0; i < Tq; ++i) {
        const int jend = sh.causal ? std::min(Tk, i + off + 1) : Tk;  // keys 0..jend-1
        if (jend <= 0) continue;                                      // sees no key
        double m = -INFINITY;
        for (int j = 0; j < jend; ++j) {
          double acc = 0;
          for (int d = 0; d < D; ++d) acc += q[(qb + i) * D + d] * k[(kb + j) * D + d];
          s[j] = acc * scale;
          m = std::max(m, s[j]);
        }
        double sum = 0;
        for (int j = 0; j < jend; ++j) sum += std::exp(s[j] - m);
        const double lse = m + std::log(sum);
        r.lse[qb + i] = lse;
        double delta = 0;
        for (int j = 0; j < jend; ++j) {
          p[j] = std::exp(s[j] - lse);
          double acc = 0;
          for (int d = 0; d < D; ++d) {
            r.o[(qb + i) * D + d] += p[j] * v[(kb + j) * D + d];
            acc += dout[(qb + i) * D + d] * v[(kb + j) * D + d];
          }
          dp[j] = acc;
          delta += p[j] * dp[j];
        }
        for (int j = 0; j < jend; ++j) {
          const double ds = p[j] * (dp[j] - delta);
          for (int d = 0; d < D; ++d) {
            r.dq[(qb + i) * D + d] += scale * ds * k[(kb + j) * D + d];
            r.dk[(kb + j) * D + d] += scale * ds * q[(qb + i) * D + d];
            r.dv[(kb + j) * D + d] += p[j] * dout[(qb + i) * D + d];
          }
        }
      }
    }
}

// ---- comparison --------------------------------------------------------------------------
struct Cmp {
  double max_err = 0, max_ref = 0, err2 = 0, ref2 = 0;
  long nan = 0, n = 0;
  int64_t worst = -1, first_nan = -1;
  double worst_ref = 0, worst_got = 0;
};

// got(i) for logical element i of a [B,H,T,D] (or [B,H,T]) tensor
Cmp compare(const std::vector<double>& ref, const std::function<double(size_t)>& got) {
  Cmp c;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got(i), r = ref[i];
    ++c.n;
    if (std::isnan(g)) {
      if (c.first_nan < 0) c.first_nan = int64_t(i);
      ++c.nan;
      continue;
    }
    const double e = (std::isinf(r) && g == r) ? 0.0 : std::fabs(g - r);
    if (std::isfinite(r)) {
      c.max_ref = std::max(c.max_ref, std::fabs(r));
      c.ref2 += r * r;
    }
    c.err2 += std::isfinite(e) ? e * e : INFINITY;
    if (!(e <= c.max_err)) {
      c.max_err = e;
      c.worst = int64_t(i);
      c.worst_ref = r;
      c.worst_got = g;
    }
  }
  return c;
}

std::string where4(const Shape& sh, int64_t i, int T, bool rows) {
  if (i < 0) return "-";
  char buf[96];
  if (rows) {
    const int t = int(i % T), h = int(i / T % sh.H), b = int(i / T / sh.H);
    std::snprintf(buf, sizeof buf, "[b=%d h=%d t=%d]", b, h, t);
  } else {
    const int d = int(i % sh.D), t = int(i / sh.D % T), h = int(i / sh.D / T % sh.H),
              b = int(i / sh.D / T / sh.H);
    std::snprintf(buf, sizeof buf, "[b=%d h=%d t=%d d=%d]", b, h, t, d);
  }
  return buf;
}

// One comparison line; returns pass.
bool report(const char* cfg, const char* what, const Shape& sh, int T, bool rows, const Cmp& c,
            double abs_tol_rel, double rel2_tol, bool abs_scale_is_one = false) {
  const double scale = abs_scale_is_one ? 1.0 : std::max(1.0, c.max_ref);
  const double tol = abs_tol_rel * scale;
  const double rel2 = c.ref2 > 0 ? std::sqrt(c.err2 / c.ref2) : std::sqrt(c.err2);
  const bool ok = c.nan == 0 && c.max_err <= tol && (rel2_tol <= 0 || rel2 <= rel2_tol);
  ++g_checks;
  if (!ok) ++g_failures;
  std::printf("  %s %-16s max|err| %.3e (tol %.2e, max|ref| %.3g)  rel2 %.3e%s", ok ? "ok  " : "FAIL", what,
              c.max_err, tol, c.max_ref, rel2, rel2_tol > 0 ? "" : " (n/a)");
  if (c.nan) std::printf("  NaN x%ld first at %s", c.nan, where4(sh, c.first_nan, T, rows).c_str());
  if (!ok && c.worst >= 0)
    std::printf("  worst at %s: ref %.6g got %.6g", where4(sh, c.worst, T, rows).c_str(), c.worst_ref,
                c.worst_got);
  std::printf("\n");
  if (!ok) std::printf("FAIL %s %s\n", cfg, what);
  return ok;
}

void fail_line(const char* cfg, const std::string& what) {
  ++g_checks;
  ++g_failures;
  std::printf("FAIL %s %s\n", cfg, what.c_str());
}

// ---- one configuration -------------------------------------------------------------------

template <typename T, int D>
struct Run {
  static void launch_named(const char* cfg, const char* name, const LaunchShape& s,
                           const std::function<void()>& body, bool& ok) {
    if (!ok) return;
    if (s.grid_x == 0 || s.grid_y == 0 || s.grid_z == 0) return;  // the launcher skips empty grids too
    try {
      sim::launch(s.grid_x, s.grid_y, s.grid_z, s.threads, s.smem, body);
    } catch (const std::exception& e) {
      fail_line(cfg, std::string(name) + ": " + e.what());
      ok = false;
    }
  }

  template <bool Causal>
  static void go(Shape sh, uint32_t seed, sim::Schedule sched, bool compare_schedules, float qmul) {
    sh.D = D;
    const int B = sh.B, H = sh.H, Tq = sh.Tq, Tk = sh.Tk;
    const bool fused = Tq == Tk;
    char cfg[160];
    std::snprintf(cfg, sizeof cfg, "%s D=%d B=%d H=%d Tq=%d Tk=%d %s%s%s%s", tname<T>(), D, B, H, Tq, Tk,
                  Causal ? "causal" : "non-causal", fused ? " (strided qkv)" : "",
                  qmul != 1.f ? " (sharp: q x 4)" : "",
                  sched == sim::Schedule::forward
                      ? ""
                      : (sched == sim::Schedule::reverse ? " [reverse schedule]" : " [random schedule]"));
    std::printf("%s\n", cfg);
    sim::options().schedule = sched;
    const double u = unit_roundoff<T>();
    const float scale = 1.0f / std::sqrt(float(D));

    // --- inputs (rounded to T), their float64 copies, and the views
    const size_t nq = size_t(B) * H * Tq * D, nk = size_t(B) * H * Tk * D;
    Guarded<T> qkv(fused ? size_t(B) * Tq * 3 * H * D : 1), dqkv(fused ? size_t(B) * Tq * 3 * H * D : 1);
    Guarded<T> qs(fused ? 1 : nq), ks(fused ? 1 : nk), vs(fused ? 1 : nk);
    Guarded<T> dqs(fused ? 1 : nq), dks(fused ? 1 : nk), dvs(fused ? 1 : nk);
    Guarded<T> o(nq), dout(nq);
    Guarded<float> lse(size_t(B) * H * Tq), delta(size_t(B) * H * Tq), dq_accum(nq);
    T *qp, *kp, *vp, *dqp, *dkp, *dvp;
    View vq, vk, vv, vo;
    if (fused) {
      const int64_t st = 3LL * H * D;
      const Strides s{int64_t(Tq) * st, D, st};
      qp = qkv.p;
      kp = qkv.p + int64_t(H) * D;
      vp = qkv.p + 2LL * H * D;
      dqp = dqkv.p;
      dkp = dqkv.p + int64_t(H) * D;
      dvp = dqkv.p + 2LL * H * D;
      vq.s = vk.s = vv.s = s;
      vo.s = Strides{int64_t(Tq) * H * D, D, int64_t(H) * D};  // [B, T, H, D]
    } else {
      qp = qs.p, kp = ks.p, vp = vs.p, dqp = dqs.p, dkp = dks.p, dvp = dvs.p;
      vq.s = Strides{int64_t(H) * Tq * D, int64_t(Tq) * D, D};
      vk.s = vv.s = Strides{int64_t(H) * Tk * D, int64_t(Tk) * D, D};
      vo.s = vq.s;
    }
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<double> q(nq), k(nk), v(nk), dov(nq);
    auto fill = [&](T* base, const View& vw, int T_, std::vector<double>& dst, float mul) {
      for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
          for (int t = 0; t < T_; ++t)
            for (int d = 0; d < D; ++d) {
              const T x = from_float<T>(mul * nd(rng));
              base[vw.idx(b, h, t, d)] = x;
              dst[((size_t(b) * H + h) * T_ + t) * D + d] = to_float<T>(x);
            }
    };
    fill(qp, vq, Tq, q, qmul);
    fill(kp, vk, Tk, k, 1.f);
    fill(vp, vv, Tk, v, 1.f);
    fill(dout.p, vo, Tq, dov, 1.f);

    Ref ref;
    reference(sh, scale, q, k, v, dov, ref);

    sim::clear_globals();
    if (fused)
      sim::register_global(qkv.p, qkv.bytes());
    else {
      sim::register_global(qs.p, qs.bytes());
      sim::register_global(ks.p, ks.bytes());
      sim::register_global(vs.p, vs.bytes());
    }
    sim::register_global(o.p, o.bytes());
    sim::register_global(dout.p, dout.bytes());

    // --- forward
    FwdParams fp;
    fp.q = qp, fp.k = kp, fp.v = vp, fp.o = o.p, fp.lse = lse.p;
    fp.sq = vq.s, fp.sk = vk.s, fp.sv = vv.s, fp.so = vo.s;
    fp.B = B, fp.H = H, fp.Tq = Tq, fp.Tk = Tk, fp.scale = scale, fp.causal = Causal;
    fp.scale_log2 = scale * kLog2e;
    bool ok = true;
    if (fwd_variant() == 1)
      launch_named(
          cfg, "fwd_kernel", fwd_shape<T, D, 1>(fp), [&] { fwd_kernel<T, D, Causal, 1>(fp); }, ok);
    else
      launch_named(
          cfg, "fwd_kernel", fwd_shape<T, D>(fp), [&] { fwd_kernel<T, D, Causal>(fp); }, ok);
    if (!ok) return;
    auto guards = [&](const char* after) {
      const bool g = qkv.guards_intact() && dqkv.guards_intact() && qs.guards_intact() &&
                     ks.guards_intact() && vs.guards_intact() && dqs.guards_intact() && dks.guards_intact() &&
                     dvs.guards_intact() && o.guards_intact() && dout.guards_intact() &&
                     lse.guards_intact() && delta.guards_intact() && dq_accum.guards_intact();
      if (!g) fail_line(cfg, std::string("a guard zone around a buffer was overwritten after ") + after);
      return g;
    };
    if (!guards("fwd_kernel")) return;
    if (fused) {
      // the forward must not write into the input buffer
      bool same = true;
      for (int b = 0; b < B && same; ++b)
        for (int h = 0; h < H; ++h)
          for (int t = 0; t < Tq; ++t)
            for (int d = 0; d < D; ++d)
              if (double(to_float<T>(qp[vq.idx(b, h, t, d)])) != q[((size_t(b) * H + h) * Tq + t) * D + d])
                same = false;
      if (!same) fail_line(cfg, "fwd_kernel modified its input q");
    }
    auto at = [&](const T* base, const View& vw, int T_) {
      return [=](size_t i) {
        const int d = int(i % D), t = int(i / D % T_), h = int(i / D / T_ % H), b = int(i / D / T_ / H);
        return double(to_float<T>(base[vw.idx(b, h, t, d)]));
      };
    };
    report(cfg, "O", sh, Tq, false, compare(ref.o, at(o.p, vo, Tq)), 5 * u, 2 * u);
    report(cfg, "lse", sh, Tq, true, compare(ref.lse, [&](size_t i) { return double(lse[i]); }), 1e-5, 0);

    // --- backward, atomic and deterministic
    BwdParams bp;
    bp.q = qp, bp.k = kp, bp.v = vp, bp.o = o.p, bp.dout = dout.p, bp.lse = lse.p;
    bp.delta = delta.p;
    bp.dq = dqp, bp.dk = dkp, bp.dv = dvp;
    bp.sq = vq.s, bp.sk = vk.s, bp.sv = vv.s, bp.so = vo.s, bp.sdo = vo.s;
    bp.sdq = vq.s, bp.sdk = vk.s, bp.sdv = vv.s;
    bp.B = B, bp.H = H, bp.Tq = Tq, bp.Tk = Tk, bp.scale = scale, bp.causal = Causal;
    bp.scale_log2 = scale * kLog2e;

    std::vector<double> dq_atomic(nq), dk_atomic(nk), dv_atomic(nk);
    std::vector<double> dq_det(nq), dk_det(nk), dv_det(nk);
    for (int mode = 0; mode < 2 && ok; ++mode) {
      const bool atomic = mode == 0;
      const char* mname = atomic ? "atomic" : "deterministic";
      if (fused)
        dqkv.poison();
      else
        dqs.poison(), dks.poison(), dvs.poison();
      delta.poison();
      dq_accum.poison();
      bp.dq_accum = atomic ? dq_accum.p : nullptr;
      launch_named(
          cfg, "bwd_preprocess_kernel", bwd_preprocess_shape<T, D>(bp),
          [&] { bwd_preprocess_kernel<T, D>(bp); }, ok);
      if (ok) {
        // delta = rowsum(dO * O) over the kernel's own O
        std::vector<double> dref(size_t(B) * H * Tq);
        for (int b = 0; b < B; ++b)
          for (int h = 0; h < H; ++h)
            for (int t = 0; t < Tq; ++t) {
              double acc = 0;
              for (int d = 0; d < D; ++d)
                acc += double(to_float<T>(o.p[vo.idx(b, h, t, d)])) *
                       double(to_float<T>(dout.p[vo.idx(b, h, t, d)]));
              dref[(size_t(b) * H + h) * Tq + t] = acc;
            }
        if (atomic)
          report(cfg, "delta", sh, Tq, true, compare(dref, [&](size_t i) { return double(delta[i]); }), 1e-5,
                 0);
        if (atomic) {
          bool zero = true;
          for (size_t i = 0; i < nq; ++i)
            if (dq_accum[i] != 0.f) zero = false;
          if (!zero) fail_line(cfg, "bwd_preprocess_kernel left dq_accum not all zero");
        }
      }
      if (atomic) {
        launch_named(
            cfg, "bwd_dkdv_kernel<atomic>", bwd_dkdv_shape<T, D>(bp),
            [&] { bwd_dkdv_kernel<T, D, Causal, true>(bp); }, ok);
        launch_named(
            cfg, "bwd_dq_convert_kernel", bwd_dq_convert_shape<T, D>(bp),
            [&] { bwd_dq_convert_kernel<T, D>(bp); }, ok);
      } else {
        launch_named(
            cfg, "bwd_dkdv_kernel<deterministic>", bwd_dkdv_shape<T, D>(bp),
            [&] { bwd_dkdv_kernel<T, D, Causal, false>(bp); }, ok);
        launch_named(
            cfg, "bwd_dq_kernel", bwd_dq_shape<T, D>(bp), [&] { bwd_dq_kernel<T, D, Causal>(bp); }, ok);
      }
      if (!ok) break;
      if (!guards(mname)) {
        ok = false;
        break;
      }
      auto& dqv = atomic ? dq_atomic : dq_det;
      auto& dkv = atomic ? dk_atomic : dk_det;
      auto& dvv = atomic ? dv_atomic : dv_det;
      auto gq = at(dqp, vq, Tq), gk = at(dkp, vk, Tk), gv = at(dvp, vv, Tk);
      for (size_t i = 0; i < nq; ++i) dqv[i] = gq(i);
      for (size_t i = 0; i < nk; ++i) dkv[i] = gk(i), dvv[i] = gv(i);
      std::string l = std::string("dQ (") + mname + ")";
      report(cfg, l.c_str(), sh, Tq, false, compare(ref.dq, [&](size_t i) { return dqv[i]; }), 10 * u, 4 * u);
      l = std::string("dK (") + mname + ")";
      report(cfg, l.c_str(), sh, Tk, false, compare(ref.dk, [&](size_t i) { return dkv[i]; }), 10 * u, 4 * u);
      l = std::string("dV (") + mname + ")";
      report(cfg, l.c_str(), sh, Tk, false, compare(ref.dv, [&](size_t i) { return dvv[i]; }), 10 * u, 4 * u);
    }
    if (ok) {
      // the two modes: dK, dV bitwise, dQ within a couple of ulps of T
      bool same = true;
      for (size_t i = 0; i < nk; ++i)
        if (!(dk_atomic[i] == dk_det[i] && dv_atomic[i] == dv_det[i])) same = false;
      ++g_checks;
      if (!same) {
        ++g_failures;
        std::printf("FAIL %s dK/dV differ between the atomic and deterministic dkdv kernels\n", cfg);
      }
      Cmp c = compare(dq_det, [&](size_t i) { return dq_atomic[i]; });
      report(cfg, "dQ atomic vs det", sh, Tq, false, c, 2 * u, 0);
    }

    // --- the same under other schedules must give bitwise the same results
    if (ok && compare_schedules) {
      std::vector<T> o_fwd(o.p, o.p + nq);
      std::vector<float> lse_fwd(lse.p, lse.p + lse.n);
      for (sim::Schedule other : {sim::Schedule::reverse, sim::Schedule::random}) {
        sim::options().schedule = other;
        sim::options().seed = seed;
        o.poison();
        lse.poison();
        if (fwd_variant() == 1)
          launch_named(
              cfg, other == sim::Schedule::reverse ? "fwd_kernel [reverse]" : "fwd_kernel [random]",
              fwd_shape<T, D, 1>(fp), [&] { fwd_kernel<T, D, Causal, 1>(fp); }, ok);
        else
          launch_named(
              cfg, other == sim::Schedule::reverse ? "fwd_kernel [reverse]" : "fwd_kernel [random]",
              fwd_shape<T, D>(fp), [&] { fwd_kernel<T, D, Causal>(fp); }, ok);
        if (!ok) break;
        const bool same = std::memcmp(o_fwd.data(), o.p, nq * sizeof(T)) == 0 &&
                          std::memcmp(lse_fwd.data(), lse.p, lse.n * sizeof(float)) == 0;
        ++g_checks;
        if (!same) {
          ++g_failures;
          std::printf(
              "FAIL %s forward differs under the %s schedule (an unsynchronized plain shared-memory "
              "access?)\n",
              cfg, other == sim::Schedule::reverse ? "reverse" : "random");
        }
        // deterministic backward
        if (fused)
          dqkv.poison();
        else
          dqs.poison(), dks.poison(), dvs.poison();
        delta.poison();
        bp.dq_accum = dq_accum.p;
        dq_accum.poison();
        launch_named(
            cfg, "bwd_preprocess_kernel [other schedule]", bwd_preprocess_shape<T, D>(bp),
            [&] { bwd_preprocess_kernel<T, D>(bp); }, ok);
        launch_named(
            cfg, "bwd_dkdv_kernel<atomic> [other schedule]", bwd_dkdv_shape<T, D>(bp),
            [&] { bwd_dkdv_kernel<T, D, Causal, true>(bp); }, ok);
        launch_named(
            cfg, "bwd_dq_convert_kernel [other schedule]", bwd_dq_convert_shape<T, D>(bp),
            [&] { bwd_dq_convert_kernel<T, D>(bp); }, ok);
        if (!ok) break;
        auto gq = at(dqp, vq, Tq), gk = at(dkp, vk, Tk), gv = at(dvp, vv, Tk);
        bool bsame = true;
        for (size_t i = 0; i < nk; ++i)
          if (!(gk(i) == dk_atomic[i] && gv(i) == dv_atomic[i])) bsame = false;
        ++g_checks;
        const char* oname = other == sim::Schedule::reverse ? "reverse" : "random";
        if (!bsame) {
          ++g_failures;
          std::printf("FAIL %s dK/dV differ under the %s schedule\n", cfg, oname);
        } else {
          std::printf(
              "  ok   identical O, lse, dK, dV under the %s schedule (threads and blocks reordered)\n",
              oname);
        }
        // dQ: the atomic adds of the blocks now come in another order (fp32 sums differ)
        const std::string l = std::string("dQ atomic ") + oname;
        report(cfg, l.c_str(), sh, Tq, false, compare(dq_atomic, gq), 2 * u, 0);
      }
    }
    sim::options().schedule = sim::Schedule::forward;
    sim::clear_globals();
  }
};

struct Case {
  int Tq, Tk;
  bool causal;
  int dmask;         // bit 0: D = 64, bit 1: D = 128
  int tmask;         // bit 0: bf16, bit 1: f16
  bool quick;        // in --quick
  bool schedules;    // also under the reverse and random schedules
  float qmul = 1.f;  // q scale: 4 makes the softmax sharp (rescaling, exp underflow)
};

template <typename T, int D>
void run_case(const Case& c, uint32_t seed) {
  Shape sh{2, 2, c.Tq, c.Tk, D, c.causal};
  if (c.causal)
    Run<T, D>::template go<true>(sh, seed, sim::Schedule::forward, c.schedules, c.qmul);
  else
    Run<T, D>::template go<false>(sh, seed, sim::Schedule::forward, c.schedules, c.qmul);
}

}  // namespace

int main(int argc, char** argv) {
  bool all = false, quick = false, schedules = false;
  std::string filter;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--all")
      all = true;
    else if (a == "--quick")
      quick = true;
    else if (a == "--schedules")
      schedules = true;
    else
      filter = a;
  }
  // The default set keeps the whole run near a minute on one core (-O2); --all runs
  // every shape with both D and both types.
  std::vector<Case> cases;
  for (bool causal : {false, true}) {
    cases.push_back({1, 1, causal, 3, 3, true, false});
    cases.push_back({17, 17, causal, 3, 3, true, false});
    cases.push_back({1, 40, causal, 3, 3, false, false});
    cases.push_back({33, 70, causal, 3, 3, true, false});
    cases.push_back({70, 33, causal, 3, 3, true, causal});  // causal: also under other schedules (bf16 D=64)
    cases.push_back({128, 128, causal, 3, 3, false, false});
    cases.push_back({5, 0, causal, 1, 1, true, false});  // no keys at all
  }
  cases.push_back({128, 128, true, 1, 3, false, false, 4.f});  // sharp softmax, D = 64
  cases.push_back({257, 257, false, 2, 1, false, false});      // bf16, D = 128
  cases.push_back({257, 257, true, 1, 2, false, false});       // f16, D = 64
  cases.push_back({257, 257, true, 2, 1, false, false});       // bf16, D = 128
  cases.push_back({200, 300, true, 1, 1, false, true});        // bf16, D = 64: several blocks, Tk > Tq
  uint32_t seed = 1;
  for (const Case& c : cases) {
    for (int ti = 0; ti < 2; ++ti)
      for (int di = 0; di < 2; ++di) {
        ++seed;
        if (!all && (!((c.tmask >> ti) & 1) || !((c.dmask >> di) & 1))) continue;
        if (quick && !c.quick) continue;
        char name[96];
        std::snprintf(name, sizeof name, "%s D=%d Tq=%d Tk=%d %s", ti ? "f16" : "bf16", di ? 128 : 64, c.Tq,
                      c.Tk, c.causal ? "causal" : "non-causal");
        if (!filter.empty() && std::string(name).find(filter) == std::string::npos) continue;
        Case cc = c;
        cc.schedules = schedules || (c.schedules && ti == 0 && di == 0);
        if (ti == 0 && di == 0) run_case<__nv_bfloat16, 64>(cc, seed);
        if (ti == 0 && di == 1) run_case<__nv_bfloat16, 128>(cc, seed);
        if (ti == 1 && di == 0) run_case<__half, 64>(cc, seed);
        if (ti == 1 && di == 1) run_case<__half, 128>(cc, seed);
      }
  }
  const sim::Stats& s = sim::stats();
  std::printf(
      "emulated: %llu blocks, %llu mma, %llu ldmatrix, %llu cp.async (%llu zero-filled, %llu never "
      "retired)\n",
      (unsigned long long)s.blocks, (unsigned long long)s.mma, (unsigned long long)s.ldmatrix,
      (unsigned long long)s.cp_async, (unsigned long long)s.cp_async_zero_fill,
      (unsigned long long)s.cp_async_dropped);
  std::printf("%s: %d of %d checks failed\n", g_failures ? "FAIL" : "PASS", g_failures, g_checks);
  return g_failures ? 1 : 0;
}

// scaled_dot_product_attention and its backends (see ops.hpp):
//   Math:  softmax(q k^T * scale [+ causal mask]) v. On the CPU one fused kernel
//          (src/cpu/attention.cpp: tiles, online softmax, no [B, H, Tq, Tk] tensor);
//          elsewhere built from matmul/softmax ops, so autograd and every device come
//          for free. The reference the fused kernels are tested against.
//   Flash: barbell's kernels (kernels/flash_attention.cu); Cudnn: cuDNN's fused SDPA
//          (kernels/attention_cudnn.cu). Both read q, k, v in place through their
//          strides, save the logsumexp and recompute the probabilities in backward.
#include <atomic>
#include <cmath>
#include <map>
#include <string>
#include <tuple>

#include "barbell/cuda/cuda.hpp"
#include "cpu/cpu.hpp"
#include "flash/tensor_params.hpp"
#include "ops/attention_hooks.hpp"
#include "ops/common.hpp"

namespace barbell {

namespace {

const char* kOp = "scaled_dot_product_attention";
std::atomic<bool> g_deterministic{false};
std::atomic<bool> g_cpu_math_composite{false};  // tests only (attention_hooks.hpp)


// The causal mask, built once per (Tq, Tk, device, stream) and thread: every layer of
// every step reuses it instead of filling Tq x Tk values on the host and copying them
// to the GPU again. Keyed by stream too, so a mask is only read on the stream whose
// copy wrote it. Query i sees keys j <= i + (Tk - Tq): the queries are the last Tq
// positions.
Tensor causal_keep(int64_t Tq, int64_t Tk, Device device) {
  using Key = std::tuple<int64_t, int64_t, int, int, const void*>;
  thread_local std::map<Key, Tensor> cache;
  const void* stream = device.is_cuda() ? cuda::current_stream(device.index()).handle() : nullptr;
  Key key{Tq, Tk, static_cast<int>(device.type()), device.index(), stream};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 16) cache.clear();  // a bound, for programs that vary T a lot
  // Built in place on the host, one byte per element (no temporary of ints).
  Tensor keep = detail::empty_for(kOp, {Tq, Tk}, {DType::Bool, Device::cpu()});
  bool* m = keep.data<bool>();
  for (int64_t i = 0; i < Tq; ++i)
    for (int64_t j = 0; j < Tk; ++j) m[i * Tk + j] = j <= i + (Tk - Tq);
  if (device.is_cuda()) keep = keep.to(device);
  cache.emplace(key, keep);
  return keep;
}

void check_inputs(const Tensor& q, const Tensor& k, const Tensor& v) {
  detail::check_defined(kOp, {&q, &k, &v});
  detail::check_same_device(kOp, q, k);
  detail::check_same_device(kOp, q, v);
  detail::check_same_dtype(kOp, q, k);
  detail::check_same_dtype(kOp, q, v);
  detail::check_floating(kOp, q);
  BB_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, ShapeError,
           "{}: expected q, k, v of shape [B, H, T, D]: q is {}, k is {}, v is {}", kOp, shape_str(q.shape()),
           shape_str(k.shape()), shape_str(v.shape()));
  bool ok = q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3) && k.shape() == v.shape();
  BB_CHECK(ok, ShapeError, "{}: q is {}, k is {}, v is {}: batch, heads and head dim must agree and k, v match", kOp,
           shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape()));
}

// Whether a fused backend can run these inputs; the reason otherwise.
bool fused_ok(AttentionBackend b, const Tensor& q, const Tensor& k, const Tensor& v, bool causal, std::string* why) {
  if (!q.is_cuda()) {
    *why = fmt::format("it runs on CUDA tensors and q {} is on {}", shape_str(q.shape()), q.device().str());
    return false;
  }
#if defined(BARBELL_WITH_CUDA)
  if (b == AttentionBackend::Flash) return gpu::flash_attention_supported(q, k, v, why);
  return gpu::cudnn_attention_supported(q, k, v, why) && (!causal || gpu::cudnn_attention_causal_supported(q, k, why));
#else
  (void)b, (void)k, (void)v, (void)causal;
  *why = "this build of barbell has no CUDA backend";
  return false;
#endif
}

AttentionOutput math_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double s,
                               bool want_lse) {
  const int64_t Tq = q.size(2), Tk = k.size(2);
  Tensor att = mul(matmul(q, k.transpose(-2, -1)), s);  // [B, H, Tq, Tk]
  if (causal) att = where(causal_keep(Tq, Tk, q.device()), att, full({}, -INFINITY, att.options()));
  AttentionOutput r;
  r.out = matmul(softmax(att, -1), v);
  if (want_lse) {
    NoGradGuard ng;
    Tensor a = att.dtype() == DType::F64 ? att.detach() : att.detach().to(DType::F32);
    Tensor m = max(a, -1, /*keepdim=*/true);
    r.lse = add(log(sum(exp(sub(a, m)), {-1})), m.squeeze(-1));
  }
  return r;
}

// A [B, H, T, D] tensor stored as [B, T, H, D]: the layout the fused kernels write,
// which the GPT's y.transpose(1, 2).reshape({B, T, C}) turns into [B, T, C] for free.
Tensor bthd(int64_t B, int64_t H, int64_t T, int64_t D, const TensorOptions& o) {
  return empty({B, T, H, D}, o).transpose(1, 2);
}

// The fused kernels' layout (unit stride in D, 16-byte aligned rows); anything else,
// e.g. an incoming gradient from a permuted view, is copied first.
Tensor fused_layout(const Tensor& t) {
  if (gpu::fa::layout_ok(t, "", nullptr)) return t;
  Tensor c = bthd(t.size(0), t.size(1), t.size(2), t.size(3), t.options());
  NoGradGuard ng;
  c.copy_(t);
  return c;
}

void fused_forward(bool flash, const Tensor& o, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                   bool causal, double s) {
#if defined(BARBELL_WITH_CUDA)
  if (flash) gpu::flash_attention_forward(o, lse, q, k, v, causal, s);
  else gpu::cudnn_attention_forward(o, lse, q, k, v, causal, s);
#else
  (void)flash, (void)o, (void)lse, (void)k, (void)v, (void)causal, (void)s;
  detail::no_cuda_build(kOp, q);
#endif
}

void fused_backward(bool flash, const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& go,
                    const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse, bool causal,
                    double s) {
#if defined(BARBELL_WITH_CUDA)
  if (flash) gpu::flash_attention_backward(dq, dk, dv, go, q, k, v, o, lse, causal, s, deterministic_attention());
  else gpu::cudnn_attention_backward(dq, dk, dv, go, q, k, v, o, lse, causal, s);
#else
  (void)flash, (void)dq, (void)dk, (void)dv, (void)go, (void)k, (void)v, (void)o, (void)lse, (void)causal, (void)s;
  detail::no_cuda_build(kOp, q);
#endif
}

AttentionOutput fused_attention(AttentionBackend backend, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                bool causal, double s) {
  const int64_t B = q_in.size(0), H = q_in.size(1), Tq = q_in.size(2), Tk = k_in.size(2), D = q_in.size(3);
  Tensor q = q_in.detach(), k = k_in.detach(), v = v_in.detach();
  Tensor o = bthd(B, H, Tq, D, q.options());
  Tensor lse = empty({B, H, Tq}, {DType::F32, q.device()});
  const bool flash = backend == AttentionBackend::Flash;
  fused_forward(flash, o, lse, q, k, v, causal, s);
  AttentionOutput r{o, lse};
  Tensor od = o.detach();
  autograd::record(
      flash ? "scaled_dot_product_attention (flash)" : "scaled_dot_product_attention (cudnn)", r.out,
      {q_in, k_in, v_in},
      [q, k, v, od, lse, causal, s, flash, B, H, Tq, Tk, D](const Tensor& g) -> std::vector<Tensor> {
        Tensor go = g.dtype() == q.dtype() ? g : g.to(q.dtype());
        go = fused_layout(go);
        Tensor dq = bthd(B, H, Tq, D, q.options());
        Tensor dk = bthd(B, H, Tk, D, q.options());
        Tensor dv = bthd(B, H, Tk, D, q.options());
        fused_backward(flash, dq, dk, dv, go, q, k, v, od, lse, causal, s);
        return {dq, dk, dv};
      },
      {{&q, "query"}, {&k, "key"}, {&v, "value"}, {&od, "result"}});
  return r;
}

// Math on the CPU: the fused kernel, in f32 for 16-bit inputs (as the composition of
// ops computes them), reading q, k, v through their strides.
AttentionOutput cpu_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, bool causal,
                              double s) {
  const int64_t B = q_in.size(0), H = q_in.size(1), Tq = q_in.size(2), Tk = k_in.size(2), D = q_in.size(3);
  const DType dt = q_in.dtype(), cdt = dt == DType::F64 ? DType::F64 : DType::F32;
  auto prep = [&](const Tensor& t) {
    Tensor x = t.detach();
    if (x.dtype() != cdt) x = x.to(cdt);
    return x.strides()[3] == 1 ? x : x.contiguous();
  };
  Tensor q = prep(q_in), k = prep(k_in), v = prep(v_in);
  Tensor o = bthd(B, H, Tq, D, {cdt, q.device()});
  Tensor lse = empty({B, H, Tq}, {cdt, q.device()});
  cpu::attention_forward(o, lse, q, k, v, causal, s);
  AttentionOutput r{dt == cdt ? o : o.to(dt), lse};
  Tensor od = o.detach();
  autograd::record(
      "scaled_dot_product_attention (cpu)", r.out, {q_in, k_in, v_in},
      [q, k, v, od, lse, causal, s, dt, cdt, B, H, Tq, Tk, D](const Tensor& g) -> std::vector<Tensor> {
        Tensor go = g.dtype() == cdt ? g : g.to(cdt);
        if (go.strides()[3] != 1) go = go.contiguous();
        Tensor dq = bthd(B, H, Tq, D, q.options());
        Tensor dk = bthd(B, H, Tk, D, q.options());
        Tensor dv = bthd(B, H, Tk, D, q.options());
        cpu::attention_backward(dq, dk, dv, go, q, k, v, od, lse, causal, s);
        if (dt == cdt) return {dq, dk, dv};
        return {dq.to(dt), dk.to(dt), dv.to(dt)};
      },
      // Each shares its storage with the caller's tensor unless prep() copied it.
      {{&q, "query"}, {&k, "key"}, {&v, "value"}, {&od, "result"}});
  return r;
}

AttentionOutput attention_impl(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                               std::optional<double> scale, AttentionBackend backend, bool want_lse) {
  AttentionBackend b = resolve_attention_backend(q, k, v, backend, causal);
  const double s = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  // The flash kernels take a positive finite scale (their masking and running maxima
  // assume it); Auto sends anything else to Math.
  if (b == AttentionBackend::Flash && !(s > 0 && std::isfinite(s))) {
    BB_CHECK(backend == AttentionBackend::Auto, ValueError,
             "{}: the flash backend takes a positive finite scale, got {} (q {}, k {}, v {})", kOp, s,
             shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape()));
    b = AttentionBackend::Math;
  }
  if (b == AttentionBackend::Math) {
    const bool fused =
        q.is_cpu() && !g_cpu_math_composite.load() && std::isfinite(s) && q.numel() > 0 && k.numel() > 0;
    return fused ? cpu_attention(q, k, v, causal, s) : math_attention(q, k, v, causal, s, want_lse);
  }
  return fused_attention(b, q, k, v, causal, s);
}

}  // namespace

const char* attention_backend_name(AttentionBackend b) {
  switch (b) {
    case AttentionBackend::Auto: return "auto";
    case AttentionBackend::Flash: return "flash";
    case AttentionBackend::Cudnn: return "cudnn";
    case AttentionBackend::Math: return "math";
  }
  return "?";
}

AttentionBackend resolve_attention_backend(const Tensor& q, const Tensor& k, const Tensor& v,
                                           AttentionBackend requested, bool causal) {
  check_inputs(q, k, v);
  std::string why;
  switch (requested) {
    case AttentionBackend::Math: return AttentionBackend::Math;
    case AttentionBackend::Auto:
      return q.is_cuda() && fused_ok(AttentionBackend::Flash, q, k, v, causal, &why) ? AttentionBackend::Flash
                                                                                      : AttentionBackend::Math;
    case AttentionBackend::Flash:
    case AttentionBackend::Cudnn:
      if (!fused_ok(requested, q, k, v, causal, &why)) {
        throw ValueError(fmt::format("{}: the {} backend cannot run q {} {}, k {}, v {}{}: {}", kOp,
                                     attention_backend_name(requested), dtype_name(q.dtype()), shape_str(q.shape()),
                                     shape_str(k.shape()), shape_str(v.shape()), causal ? " (causal)" : "", why));
      }
      return requested;
  }
  throw ValueError(fmt::format("{}: unknown attention backend {}", kOp, static_cast<int>(requested)));
}

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                    std::optional<double> scale, AttentionBackend backend) {
  return attention_impl(q, k, v, causal, scale, backend, false).out;
}

AttentionOutput scaled_dot_product_attention_lse(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                                 std::optional<double> scale, AttentionBackend backend) {
  return attention_impl(q, k, v, causal, scale, backend, true);
}

void set_deterministic_attention(bool on) { g_deterministic.store(on); }

void detail::set_cpu_math_composite(bool on) { g_cpu_math_composite.store(on); }
bool deterministic_attention() { return g_deterministic.load(); }

}  // namespace barbell

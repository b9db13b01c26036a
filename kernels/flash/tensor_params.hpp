// What the flash kernels take (dtype, head dim, layout, sizes), and FwdParams /
// BwdParams from barbell tensors ([B, H, T, D] views, unit stride in D): shared by the
// CUDA launchers, the op layer and the emulator-backed CPU tests, so all of them apply
// the same rules and read the same pointers and strides. Plain C++ (no CUDA headers):
// src/ includes it in every build. Device checks (compute capability, shared memory)
// are the launchers'.
#pragma once

#include <cstdint>
#include <string>

#include "barbell/core/tensor.hpp"
#include "flash/params.hpp"

namespace barbell::gpu::fa {

// [B, H, T, D] with unit stride in D and 16-byte aligned rows (pointer, and strides in
// multiples of 8 elements). Otherwise false, with the reason (naming `name`) in *why.
inline bool layout_ok(const Tensor& t, const char* name, std::string* why) {
  auto fail = [&](const char* m) {
    if (why) *why = fmt::format("{} {} {}", name, shape_str(t.shape()), m);
    return false;
  };
  if (t.dim() != 4) return fail("is not [B, H, T, D]");
  if (t.size(3) > 1 && t.stride(3) != 1) return fail("has a non-unit stride in D");
  for (int d = 0; d < 3; ++d)
    if (t.size(d) > 1 && t.stride(d) % 8 != 0) return fail("has a stride that is not a multiple of 8 elements");
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return fail("does not start on a 16-byte boundary");
  return true;
}

// q, k, v as the kernels take them: bf16 or f16, head dim 64 or 128, layout_ok, grid
// dimensions within CUDA's limits. Shapes and dtypes agreeing is the op's check.
inline bool inputs_ok(const Tensor& q, const Tensor& k, const Tensor& v, std::string* why) {
  auto fail = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (q.dtype() != DType::BF16 && q.dtype() != DType::F16)
    return fail(fmt::format("dtype {} (the kernels take bf16 or f16)", dtype_name(q.dtype())));
  if (q.size(3) != 64 && q.size(3) != 128)
    return fail(fmt::format("head dim {} (the kernels take 64 or 128)", q.size(3)));
  if (!layout_ok(q, "q", why) || !layout_ok(k, "k", why) || !layout_ok(v, "v", why)) return false;
  if (q.size(0) > 65535 || q.size(1) > 65535) return fail("more than 65535 batches or heads");
  if (q.size(2) >= (int64_t{1} << 30) || k.size(2) >= (int64_t{1} << 30)) return fail("a sequence of 2^30 or more");
  return true;
}

inline Strides strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

inline FwdParams fwd_params(const Tensor& o, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                            bool causal, double scale) {
  FwdParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.o = o.data_ptr();
  p.lse = static_cast<float*>(lse.data_ptr());
  p.sq = strides_of(q);
  p.sk = strides_of(k);
  p.sv = strides_of(v);
  p.so = strides_of(o);
  p.B = static_cast<int>(q.size(0));
  p.H = static_cast<int>(q.size(1));
  p.Tq = static_cast<int>(q.size(2));
  p.Tk = static_cast<int>(k.size(2));
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.causal = causal;
  return p;
}

// delta [B, H, Tq] and dq_accum [B, H, Tq, D] (null in deterministic mode): fp32
// contiguous workspaces.
inline BwdParams bwd_params(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                            const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse, float* delta,
                            float* dq_accum, bool causal, double scale) {
  BwdParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.o = o.data_ptr();
  p.dout = dout.data_ptr();
  p.lse = static_cast<const float*>(lse.data_ptr());
  p.delta = delta;
  p.dq_accum = dq_accum;
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.sq = strides_of(q);
  p.sk = strides_of(k);
  p.sv = strides_of(v);
  p.so = strides_of(o);
  p.sdo = strides_of(dout);
  p.sdq = strides_of(dq);
  p.sdk = strides_of(dk);
  p.sdv = strides_of(dv);
  p.B = static_cast<int>(q.size(0));
  p.H = static_cast<int>(q.size(1));
  p.Tq = static_cast<int>(q.size(2));
  p.Tk = static_cast<int>(k.size(2));
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.causal = causal;
  return p;
}

}  // namespace barbell::gpu::fa

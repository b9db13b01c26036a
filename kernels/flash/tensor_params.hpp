// FwdParams / BwdParams from barbell tensors ([B, H, T, D] views, unit stride in D):
// shared by the CUDA launchers and the emulator-backed CPU path of the tests, so both
// read the same pointers and strides. Checks are the callers'.
#pragma once

#include "barbell/core/tensor.hpp"
#include "flash/params.hpp"

namespace barbell::gpu::fa {

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

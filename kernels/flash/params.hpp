// Arguments of the flash-attention kernels: plain structs shared by the CUDA launchers
// (kernels/flash_attention.cu) and the host emulation (tests/sim). Tensors are
// [B, H, T, D] views with unit stride in D and any other strides (in elements), so the
// q, k, v views of the fused qkv projection's [B, T, 3, H, D] output are read in place.
// Causal masking is bottom-right aligned: query i sees key j when j <= i + (Tk - Tq).
#pragma once

#include <cstdint>

namespace barbell::gpu::fa {

struct Strides {
  int64_t b = 0, h = 0, t = 0;  // elements; D is contiguous
};

struct FwdParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  float* lse = nullptr;  // [B, H, Tq] contiguous, natural log; -inf for a query that sees no key
  Strides sq, sk, sv, so;
  int B = 0, H = 0, Tq = 0, Tk = 0;
  float scale = 0;       // softmax scale (1/sqrt(D) by default); > 0
  float scale_log2 = 0;  // scale * log2(e): the kernels exponentiate with exp2
  bool causal = false;
};

struct BwdParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* o = nullptr;
  const void* dout = nullptr;
  const float* lse = nullptr;  // from the forward, [B, H, Tq]
  float* delta = nullptr;      // [B, H, Tq] workspace: rowsum(dO * O)
  float* dq_accum = nullptr;   // [B, H, Tq, D] fp32 workspace (atomic mode), contiguous
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  Strides sq, sk, sv, so, sdo, sdq, sdk, sdv;
  int B = 0, H = 0, Tq = 0, Tk = 0;
  float scale = 0;
  float scale_log2 = 0;  // scale * log2(e)
  bool causal = false;
};

}  // namespace barbell::gpu::fa

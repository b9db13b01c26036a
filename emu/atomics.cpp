// CUDA's atomic functions for emulated kernels: each is a plain read-modify-write (one
// emulated thread runs at a time), declared to the access checks as an atomic access
// (bounds and stream ordering are checked; atomics never race with each other) and
// counted for the traffic tables. Semantics as the CUDA C++ Programming Guide's "Atomic
// Functions" section gives them (atomicInc/atomicDec wrap as documented).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstring>

#include "internal.hpp"

namespace {
template <typename T, typename F>
T rmw(T* p, F f) {
  barbell::emu::NoCheck guard;
  barbell::emu::kernel_access(p, sizeof(T), true, true);
  const T old = *p;
  *p = f(old);
  return old;
}
}  // namespace

#define BB_EMU_ATOMIC2(NAME, T, EXPR)                                          \
  T NAME(T* p, T v) {                                                          \
    return rmw(p, [v]([[maybe_unused]] T o) { return static_cast<T>(EXPR); }); \
  }

BB_EMU_ATOMIC2(atomicAdd, int, o + v)
BB_EMU_ATOMIC2(atomicAdd, unsigned, o + v)
BB_EMU_ATOMIC2(atomicAdd, unsigned long long, o + v)
BB_EMU_ATOMIC2(atomicAdd, float, o + v)
BB_EMU_ATOMIC2(atomicAdd, double, o + v)
BB_EMU_ATOMIC2(atomicSub, int, o - v)
BB_EMU_ATOMIC2(atomicSub, unsigned, o - v)
BB_EMU_ATOMIC2(atomicMax, int, o < v ? v : o)
BB_EMU_ATOMIC2(atomicMax, unsigned, o < v ? v : o)
BB_EMU_ATOMIC2(atomicMax, long long, o < v ? v : o)
BB_EMU_ATOMIC2(atomicMax, unsigned long long, o < v ? v : o)
BB_EMU_ATOMIC2(atomicMin, int, v < o ? v : o)
BB_EMU_ATOMIC2(atomicMin, unsigned, v < o ? v : o)
BB_EMU_ATOMIC2(atomicMin, long long, v < o ? v : o)
BB_EMU_ATOMIC2(atomicMin, unsigned long long, v < o ? v : o)
BB_EMU_ATOMIC2(atomicExch, int, v)
BB_EMU_ATOMIC2(atomicExch, unsigned, v)
BB_EMU_ATOMIC2(atomicExch, unsigned long long, v)
BB_EMU_ATOMIC2(atomicExch, float, v)
BB_EMU_ATOMIC2(atomicAnd, int, o& v)
BB_EMU_ATOMIC2(atomicAnd, unsigned, o& v)
BB_EMU_ATOMIC2(atomicAnd, unsigned long long, o& v)
BB_EMU_ATOMIC2(atomicOr, int, o | v)
BB_EMU_ATOMIC2(atomicOr, unsigned, o | v)
BB_EMU_ATOMIC2(atomicOr, unsigned long long, o | v)
BB_EMU_ATOMIC2(atomicXor, int, o ^ v)
BB_EMU_ATOMIC2(atomicXor, unsigned, o ^ v)
BB_EMU_ATOMIC2(atomicXor, unsigned long long, o ^ v)
BB_EMU_ATOMIC2(atomicInc, unsigned, o >= v ? 0u : o + 1u)
BB_EMU_ATOMIC2(atomicDec, unsigned, (o == 0u || o > v) ? v : o - 1u)
#undef BB_EMU_ATOMIC2

int atomicCAS(int* p, int cmp, int v) {
  return rmw(p, [cmp, v](int o) { return o == cmp ? v : o; });
}
unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
  return rmw(p, [cmp, v](unsigned o) { return o == cmp ? v : o; });
}
unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
  return rmw(p, [cmp, v](unsigned long long o) { return o == cmp ? v : o; });
}
unsigned short atomicCAS(unsigned short* p, unsigned short cmp, unsigned short v) {
  return rmw(p, [cmp, v](unsigned short o) { return o == cmp ? v : o; });
}

// The vector atomics of sm_90 (float2, float4: 8- and 16-byte aligned) and the packed
// 16-bit ones: each component added on its own, in fp32 for the 16-bit types and
// rounded once, as the hardware does.
float2 atomicAdd(float2* p, float2 v) {
  return rmw(p, [v](float2 o) { return make_float2(o.x + v.x, o.y + v.y); });
}
float4 atomicAdd(float4* p, float4 v) {
  return rmw(p, [v](float4 o) { return make_float4(o.x + v.x, o.y + v.y, o.z + v.z, o.w + v.w); });
}
__half2 atomicAdd(__half2* p, __half2 v) {
  return rmw(p, [v](__half2 o) {
    const float2 a = __half22float2(o), b = __half22float2(v);
    return __floats2half2_rn(a.x + b.x, a.y + b.y);
  });
}
__nv_bfloat162 atomicAdd(__nv_bfloat162* p, __nv_bfloat162 v) {
  return rmw(p, [v](__nv_bfloat162 o) {
    const float2 a = __bfloat1622float2(o), b = __bfloat1622float2(v);
    return __floats2bfloat162_rn(a.x + b.x, a.y + b.y);
  });
}

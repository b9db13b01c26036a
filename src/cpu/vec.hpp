// The CPU backend's vectorised f32 kernels (and the fused attention in f32 and f64),
// compiled once per x86-64 level and picked at run time by cpuid: vec() is the table.
#pragma once

#include <cstdint>

namespace barbell::cpu {

// One head of scaled_dot_product_attention: q [Tq, D], k, v [Tk, D] rows at the given
// row strides (elements; D has unit stride), o [Tq, D], lse [Tq]. Causal masking is
// bottom-right aligned: query i sees key j when j <= i + (Tk - Tq).
template <typename T>
struct AttnHead {
  const T *q, *k, *v;
  int64_t q_rs, k_rs, v_rs;
  int64_t Tq, Tk, D;
  bool causal;
  T scale;
  T* o;
  int64_t o_rs;
  T* lse;  // float for f32 heads: T is the element type; lse is T too
  // Backward only: the incoming gradient and the outputs.
  const T* dout;
  int64_t dout_rs;
  T *dq, *dk, *dv;
  int64_t dq_rs, dk_rs, dv_rs;
};

// Scratch elements one head needs (forward or backward), for the caller to provide:
// tiles of 64 queries x 64 keys, the head dim padded to 16, 32, 64, 128 or a multiple of
// 16, the head's k (transposed) and v, and the backward's q, dO and dQ of the whole head.
constexpr int64_t attention_padded_dim(int64_t D) {
  return D <= 16 ? 16 : D <= 32 ? 32 : D <= 64 ? 64 : D <= 128 ? 128 : (D + 15) / 16 * 16;
}
constexpr int64_t attention_scratch(int64_t Tq, int64_t Tk, int64_t D) {
  const int64_t tq = (Tq + 63) / 64 * 64, tk = (Tk + 63) / 64 * 64;
  return (7 * 64 + 3 * tq + 2 * tk) * attention_padded_dim(D) + 4 * 64 * 64 + tq + 4 * 64;
}

// Codes of the binary ops the table implements (cpu::BinaryOp's order).
enum VecBinary : int { kVecAdd = 0, kVecSub = 1, kVecMul = 2, kVecDiv = 3 };

struct VecKernels {
  const char* isa;  // "avx512", "avx2", "sse2"
  // bf16 <-> f32, as BFloat16 converts (round to nearest even; NaN stays a quiet NaN).
  void (*bf16_to_f32)(float* y, const uint16_t* x, int64_t n);
  void (*f32_to_bf16)(uint16_t* y, const float* x, int64_t n);
  // Contiguous elementwise: n elements each.
  void (*gelu_tanh)(float* y, const float* x, int64_t n);
  void (*gelu_tanh_grad)(float* dx, const float* dy, const float* x, int64_t n);  // dx = dy * gelu'(x)
  void (*silu)(float* y, const float* x, int64_t n);
  void (*silu_grad)(float* dx, const float* dy, const float* x, int64_t n);
  // o = a op b; b is one value when b_scalar.
  void (*binary)(int op, float* o, const float* a, const float* b, int64_t n, bool b_scalar);
  // Rows of n contiguous values.
  void (*softmax)(float* y, const float* x, int64_t rows, int64_t n, bool log);
  void (*softmax_grad)(float* dx, const float* dy, const float* y, int64_t rows, int64_t n, bool log);
  float (*logsumexp)(const float* x, int64_t n);
  // d = softmax(x) * scale, from x's logsumexp (cross-entropy's gradient before the target's -scale).
  void (*softmax_scaled)(float* d, const float* x, int64_t n, float lse, float scale);
  // mean/rstd per row; w, b may be null.
  void (*layer_norm)(float* y, float* mean, float* rstd, const float* x, const float* w, const float* b,
                     int64_t rows, int64_t n, float eps);
  // dx for the rows (dx may be null); dw, db (length n, double) accumulate the rows in order.
  void (*layer_norm_grad)(float* dx, double* dw, double* db, const float* dy, const float* x,
                          const float* mean, const float* rstd, const float* w, int64_t rows, int64_t n);
  void (*rms_norm)(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t n, float eps);
  void (*rms_norm_grad)(float* dx, double* dw, const float* dy, const float* x, const float* rstd,
                        const float* w, int64_t rows, int64_t n);
  // acc[c] += sum of x[r][c] over the rows, in row order (double).
  void (*col_sum)(double* acc, const float* x, int64_t rows, int64_t cols);
  void (*add_bias)(float* y, const float* bias, int64_t rows, int64_t cols);
  double (*sum_squares)(const float* x, int64_t n);
  // One AdamW step on n elements (see cpu::adamw_step for the constants).
  void (*adamw)(float* p, const float* g, float* m, float* v, int64_t n, float b1, float b2, float omb1,
                float omb2, float eps, float decay, float step_size, float inv_sqrt_bc2);
  // Fused attention of one head, serial; scratch has attention_scratch() elements.
  void (*attention_forward_f32)(const AttnHead<float>& h, float* scratch);
  void (*attention_backward_f32)(const AttnHead<float>& h, float* scratch);
  void (*attention_forward_f64)(const AttnHead<double>& h, double* scratch);
  void (*attention_backward_f64)(const AttnHead<double>& h, double* scratch);
};

// The table for the best level this CPU supports, or the one BARBELL_CPU_ISA names
// ("avx512", "avx2", "sse2": lower levels only; tests and benchmarks compare them).
const VecKernels& vec();
// A level's table if this CPU can run it, else nullptr.
const VecKernels* vec_for(const char* isa);

// Defined by src/cpu/isa/vec_<level>.cpp.
const VecKernels& vec_kernels_sse2();
const VecKernels& vec_kernels_avx2();
const VecKernels& vec_kernels_avx512();

}  // namespace barbell::cpu

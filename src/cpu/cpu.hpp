// CPU backend kernels: the functions src/ops calls when a tensor lives on the CPU.
// Strided ops take tensors (already checked and allocated by the op); fused ones
// take raw pointers and sizes like their CUDA twins in kernels/.
#pragma once

#include <cstdint>
#include <type_traits>

#include "barbell/core/tensor.hpp"
#include "barbell/ops/ops.hpp"

namespace barbell::cpu {

// dst[...] = cast(src[...]), src broadcast to dst's shape; any dtypes, any strides.
void copy(const Tensor& dst, const Tensor& src);
void fill(const Tensor& dst, double value);

enum class BinaryOp { Add, Sub, Mul, Div, Pow, Max, Eq };
// out = a op (alpha * b); a and b broadcast to out's shape. Eq writes Bool.
void binary(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b, double alpha = 1.0);
enum class UnaryOp { Neg, Exp, Log, Sqrt, Rsqrt, Tanh, Relu, Silu, GeluTanh, GeluErf, Abs, AddScalar, MulScalar,
                     PowScalar, RSubScalar, RDivScalar };
// Calls f with the op as a compile-time constant, so each loop (CPU) or kernel (GPU) is
// specialised for its op instead of switching per element.
template <UnaryOp OP>
using UnaryTag = std::integral_constant<UnaryOp, OP>;
template <typename F>
void with_unary_op(UnaryOp op, F&& f) {
  switch (op) {
    case UnaryOp::Neg: return f(UnaryTag<UnaryOp::Neg>{});
    case UnaryOp::Exp: return f(UnaryTag<UnaryOp::Exp>{});
    case UnaryOp::Log: return f(UnaryTag<UnaryOp::Log>{});
    case UnaryOp::Sqrt: return f(UnaryTag<UnaryOp::Sqrt>{});
    case UnaryOp::Rsqrt: return f(UnaryTag<UnaryOp::Rsqrt>{});
    case UnaryOp::Tanh: return f(UnaryTag<UnaryOp::Tanh>{});
    case UnaryOp::Relu: return f(UnaryTag<UnaryOp::Relu>{});
    case UnaryOp::Silu: return f(UnaryTag<UnaryOp::Silu>{});
    case UnaryOp::GeluTanh: return f(UnaryTag<UnaryOp::GeluTanh>{});
    case UnaryOp::GeluErf: return f(UnaryTag<UnaryOp::GeluErf>{});
    case UnaryOp::Abs: return f(UnaryTag<UnaryOp::Abs>{});
    case UnaryOp::AddScalar: return f(UnaryTag<UnaryOp::AddScalar>{});
    case UnaryOp::MulScalar: return f(UnaryTag<UnaryOp::MulScalar>{});
    case UnaryOp::PowScalar: return f(UnaryTag<UnaryOp::PowScalar>{});
    case UnaryOp::RSubScalar: return f(UnaryTag<UnaryOp::RSubScalar>{});
    case UnaryOp::RDivScalar: return f(UnaryTag<UnaryOp::RDivScalar>{});
  }
  throw ValueError(fmt::format("unary op: unknown op {}", static_cast<int>(op)));
}
void unary(UnaryOp op, const Tensor& out, const Tensor& x, double scalar = 0.0);
// Backward of the unary activations: out = dy * f'(x).
void unary_backward(UnaryOp op, const Tensor& dx, const Tensor& dy, const Tensor& x);
void where(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b);

// x viewed as [A, R, I] contiguous; out [A, I].
void sum_dim(const Tensor& out, const Tensor& x, int64_t A, int64_t R, int64_t I, double scale);
void max_dim(const Tensor& values, const Tensor& indices, const Tensor& x, int64_t A, int64_t R, int64_t I);
// dx [A, R, I] = 0 except dx[a, idx[a, i], i] = dy[a, i].
void max_dim_backward(const Tensor& dx, const Tensor& dy, const Tensor& indices, int64_t A, int64_t R, int64_t I);

// Rows of length n, contiguous.
void softmax_rows(const Tensor& y, const Tensor& x, int64_t rows, int64_t n, bool log);
void softmax_rows_backward(const Tensor& dx, const Tensor& dy, const Tensor& y, int64_t rows, int64_t n, bool log);

// C[b] = A[b] @ B[b] for batched 2-D operands with arbitrary strides (inner dims
// must have one unit stride, else the op makes them contiguous first).
// C is f32 or f64 with A, B of its dtype, or f32 with bf16 A, B when
// bf16_gemm_available() (cpu/gemm.hpp).
void matmul(const Tensor& c, const Tensor& a, const Tensor& b);
// Can the last two dims of t go to BLAS as they are (one unit stride, valid ld)?
bool matmul_strides_ok(const Tensor& t);
void add_bias(const Tensor& y, const Tensor& bias);  // y [N, C] += bias [C]

void layer_norm(const Tensor& y, const Tensor& mean, const Tensor& rstd, const Tensor& x, const Tensor& w,
                const Tensor& b, int64_t rows, int64_t n, double eps);
void layer_norm_backward(const Tensor& dx, const Tensor& dw, const Tensor& db, const Tensor& dy, const Tensor& x,
                         const Tensor& mean, const Tensor& rstd, const Tensor& w, int64_t rows, int64_t n);
void rms_norm(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& w, int64_t rows, int64_t n,
              double eps);
void rms_norm_backward(const Tensor& dx, const Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& rstd,
                       const Tensor& w, int64_t rows, int64_t n);

void embedding(const Tensor& out, const Tensor& ids, const Tensor& weight);
void embedding_backward(const Tensor& dweight, const Tensor& dy, const Tensor& ids);

// Returns the number of counted targets; loss is the mean over them.
int64_t cross_entropy(const Tensor& loss, const Tensor& logits, const Tensor& targets, int64_t rows, int64_t V,
                      int64_t ignore_index);
void cross_entropy_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& targets, int64_t rows,
                            int64_t V, int64_t ignore_index, double scale);

void dropout_mask(const Tensor& mask, double p, uint64_t seed, uint64_t offset);

// Fused attention (f32, f64): q [B, H, Tq, D], k, v [B, H, Tk, D], o like q, any strides
// with unit stride in D; lse [B, H, Tq] contiguous, q's dtype. Backward: dq, dk, dv like
// q, k, v from dout (like o), with the forward's o and lse.
void attention_forward(const Tensor& o, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                       bool causal, double scale);
void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                        bool causal, double scale);

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const AdamWParams& p);
double sum_of_squares(const Tensor& x);

}  // namespace barbell::cpu

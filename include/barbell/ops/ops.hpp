// The functional API: free functions over Tensor. Each checks shapes, dtypes and
// devices, runs the backend kernel, and records its backward when grad is on.
#pragma once

#include <optional>
#include <vector>

#include "barbell/core/random.hpp"
#include "barbell/core/tensor.hpp"

namespace barbell {

// Elementwise binary with numpy broadcasting; both operands share a dtype and device
// (mixing dtypes is a DTypeError: no implicit promotion between tensors). Integer
// tensors compute exactly in int64 (wrapping on overflow, as PyTorch); an integer alpha
// only (a fractional one throws). div takes floating tensors; pow of integers takes
// exponents >= 0 and throws when a result overflows.
Tensor add(const Tensor& a, const Tensor& b, double alpha = 1.0);  // a + alpha * b
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
// Tensor and scalar, promoted as PyTorch does: a floating tensor keeps its dtype; an
// integer or bool tensor with a floating scalar gives f32 (arange(4) * 0.5 is
// [0, .5, 1, 1.5]); an integer tensor with an integer scalar keeps its dtype and is
// exact (a scalar outside that dtype's range throws); a bool tensor with an integer
// scalar gives i64. rdiv (and `/`) is true division: f32 for integer tensors.
Tensor add(const Tensor& a, Scalar b);
Tensor sub(const Tensor& a, Scalar b);
Tensor mul(const Tensor& a, Scalar b);
Tensor pow(const Tensor& a, Scalar exponent);
Tensor rsub(const Tensor& a, Scalar b);  // b - a
Tensor rdiv(const Tensor& a, Scalar b);  // b / a

// Elementwise unary. exp, log, sqrt, rsqrt, tanh, silu and gelu of an integer or bool
// tensor compute in f32 (PyTorch's promotion); neg of an integer tensor is exact.
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor silu(const Tensor& x);
enum class GeluApprox { None, Tanh };
Tensor gelu(const Tensor& x, GeluApprox approx = GeluApprox::Tanh);
Tensor abs(const Tensor& x);

// Comparisons give Bool tensors; where() selects.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);

// Reductions over `dims` (all dims when empty).
Tensor sum(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
Tensor max(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor max(const Tensor& x);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);  // I64
// Sum `x` down to `shape` (the inverse of broadcasting).
Tensor sum_to(const Tensor& x, const Shape& shape);

Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);

// a [..., M, K] @ b [..., K, N] with broadcast batch dims; 1-D operands are treated
// as a row (a) or a column (b) vector as in numpy and dropped from the result.
Tensor matmul(const Tensor& a, const Tensor& b);
// x [..., in] @ weight[out, in]^T + bias[out]
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());
// gelu(linear(x, weight, bias), GeluApprox::Tanh): on a GPU in bf16/f16 one cuBLASLt call
// with the bias and GELU in its epilogue, which also saves the pre-activation for backward;
// in f32/f64 linear then gelu (cuBLASLt's GELU has no stated accuracy).
Tensor linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias);

// Normalizations over the last dim, statistics in float.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps = 1e-6);

// weight [V, C], ids I32/I64 [...] -> [..., C]; ids out of [0, V) throw IndexError.
Tensor embedding(const Tensor& ids, const Tensor& weight);
// logits [..., V], targets I32/I64 [...]: mean over targets != ignore_index of
// -log softmax(logits)[target]. Fused: the backward recomputes the softmax.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
Tensor dropout(const Tensor& x, double p, bool training = true, Generator* gen = nullptr);

Tensor cat(const std::vector<Tensor>& xs, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& xs, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim = 0);
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim = 0);
// Fills positions where mask (Bool, broadcast to x) is true with value (converted to
// x's dtype by the rule of full()).
Tensor masked_fill(const Tensor& x, const Tensor& mask, Scalar value);
// Lower-triangular Bool mask [rows, cols] (true on and below the diagonal).
Tensor tril_mask(int64_t rows, int64_t cols, Device device = Device::cpu());

// Which implementation scaled_dot_product_attention runs.
//   Auto:  Flash where it applies (CUDA tensors, bf16/f16, head dim 64 or 128, unit
//          stride in D, 16-byte aligned rows), else Math.
//   Flash: barbell's fused kernels (tiled online softmax on the tensor cores; the
//          forward saves the logsumexp, the backward recomputes the probabilities);
//          sm_80 or later with enough shared memory per block (sm_80, sm_90), and a
//          positive scale.
//   Cudnn: cuDNN's fused SDPA through its graph API (CUDA, bf16/f16; libcudnn.so.9 is
//          loaded at first use and need not be present otherwise).
//   Math:  softmax(q k^T * scale [+ mask]) v, any device and float dtype: on the CPU
//          one fused kernel (tiles with an online softmax, no [B, H, Tq, Tk] tensor;
//          16-bit inputs in f32), elsewhere the composition of the ops above.
// An explicitly requested backend that cannot run the inputs throws (naming why); only
// Auto falls back.
enum class AttentionBackend { Auto, Flash, Cudnn, Math };
const char* attention_backend_name(AttentionBackend b);
// The backend `requested` resolves to for these inputs (and causal setting); throws as
// the op would when an explicit backend cannot run them.
AttentionBackend resolve_attention_backend(const Tensor& q, const Tensor& k, const Tensor& v,
                                           AttentionBackend requested = AttentionBackend::Auto, bool causal = false);

// q [B, H, Tq, D], k, v [B, H, Tk, D] -> [B, H, Tq, D]: softmax(q k^T * scale) v, scale
// 1/sqrt(D) by default. Inputs may be strided views (e.g. of a [B, T, 3, H, D] qkv
// buffer); the fused backends read them in place. Causal masking is bottom-right
// aligned: query i sees key j when j <= i + (Tk - Tq). A query that sees no key
// (causal with Tq > Tk) gets zeros from the fused backends and NaN from Math.
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal = false,
                                    std::optional<double> scale = std::nullopt,
                                    AttentionBackend backend = AttentionBackend::Auto);
// The same, also returning the logsumexp of each query's scaled scores, lse [B, H, Tq]
// F32 (F64 for f64 inputs; -inf for a query that sees no key). `out` is differentiable,
// `lse` is not.
struct AttentionOutput {
  Tensor out, lse;
};
AttentionOutput scaled_dot_product_attention_lse(const Tensor& q, const Tensor& k, const Tensor& v,
                                                 bool causal = false, std::optional<double> scale = std::nullopt,
                                                 AttentionBackend backend = AttentionBackend::Auto);
// Flash backward: by default dQ is accumulated with fp32 atomics (fast; the order of
// the additions varies between runs). Deterministic mode computes dQ in a separate
// pass instead (bit-identical runs, about 40% more backward work). Process-wide.
void set_deterministic_attention(bool on);
bool deterministic_attention();

// Fused AdamW step on one parameter (no autograd): param, grad, exp_avg, exp_avg_sq
// are updated in place. `step` is 1-based.
struct AdamWParams {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;
};
void adamw_step_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWParams& p);
// One AdamW step over many parameters: one fused launch per device on a GPU. A
// 16-bit param may carry an F32 `master` copy: the update goes to master and param
// becomes its rounding (mixed precision). exp_avg/exp_avg_sq are F32 (F64 for f64).
struct AdamWTensors {
  Tensor param, grad, exp_avg, exp_avg_sq, master;
  int64_t step = 0;  // this parameter's 1-based step
  double weight_decay = 0;
};
void adamw_multi_step_(const std::vector<AdamWTensors>& items, double lr, double beta1, double beta2, double eps);
// Sum of squares of all elements of all tensors, as a float64 on the host.
double sum_of_squares(const std::vector<Tensor>& xs);

}  // namespace barbell

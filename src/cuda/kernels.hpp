// The CUDA backend's launchers: what src/ops calls when a tensor lives on a GPU.
// They mirror src/cpu/cpu.hpp (same arguments, same meaning) except where a GPU wants
// no host round trip (cross_entropy keeps its count on the device) or one launch for
// many tensors (AdamW, the gradient norm). Each is defined in one kernels/<op>.cu and
// launches on the calling thread's current stream of the tensor's device (nothing is
// synchronised). The ops have already checked shapes, dtypes and devices and
// allocated the outputs; launchers check only what the kernel itself needs
// (contiguity, sizes that fit) and throw barbell::Error naming the op otherwise.
//
// This header is plain C++ (no CUDA headers) so src/ can include it in every build;
// the calls are compiled only when BARBELL_WITH_CUDA is defined (see ops/common.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "barbell/core/tensor.hpp"
#include "barbell/ops/ops.hpp"
#include "cpu/cpu.hpp"  // the op enums (BinaryOp, UnaryOp) are shared

namespace barbell::gpu {

using cpu::BinaryOp;
using cpu::UnaryOp;

// ---- kernels/elementwise.cu -------------------------------------------------------
// dst[...] = cast(src[...]), src broadcast to dst's shape; any dtypes, any strides
// (both on the same GPU).
void copy(const Tensor& dst, const Tensor& src);
void fill(const Tensor& dst, double value);
// out = a op (alpha * b); a, b broadcast to out's shape; any strides. Eq writes Bool.
void binary(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b, double alpha = 1.0);
void unary(UnaryOp op, const Tensor& out, const Tensor& x, double scalar = 0.0);
void unary_backward(UnaryOp op, const Tensor& dx, const Tensor& dy, const Tensor& x);
void where(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b);

// ---- kernels/reduce.cu ------------------------------------------------------------
// x viewed as [A, R, I] contiguous; out [A, I] = scale * sum over R (fp32 accumulation,
// f64 for f64).
void sum_dim(const Tensor& out, const Tensor& x, int64_t A, int64_t R, int64_t I, double scale);
// values [A, I], indices [A, I] (I64): the first index of the maximum (NaN wins).
void max_dim(const Tensor& values, const Tensor& indices, const Tensor& x, int64_t A, int64_t R, int64_t I);
void max_dim_backward(const Tensor& dx, const Tensor& dy, const Tensor& indices, int64_t A, int64_t R, int64_t I);

// ---- kernels/softmax.cu -----------------------------------------------------------
void softmax_rows(const Tensor& y, const Tensor& x, int64_t rows, int64_t n, bool log);
void softmax_rows_backward(const Tensor& dx, const Tensor& dy, const Tensor& y, int64_t rows, int64_t n, bool log);

// ---- kernels/matmul.cu (cuBLASLt) ---------------------------------------------------
enum class Epilogue { None, Bias, BiasGelu };
// C[b] = A[b] @ B[b] over the batch dims; operands with one unit stride in their last
// two dims (either order) go to cuBLASLt as they are; batch dims must be expressible
// as one stride (the op makes operands contiguous otherwise). bf16/f16 with fp32
// accumulation; f32 in full fp32 unless set_allow_tf32(true); f64 through cuBLAS.
void matmul(const Tensor& c, const Tensor& a, const Tensor& b);
bool matmul_strides_ok(const Tensor& t);
// y [N, out] = x [N, in] @ w[out, in]^T (+ bias) (then GELU-tanh when BiasGelu);
// when pre_gelu is defined (BiasGelu only) it receives x @ w^T + bias for backward.
void linear(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& bias, Epilogue ep,
            const Tensor& pre_gelu);
void add_bias(const Tensor& y, const Tensor& bias);  // y [N, C] += bias [C]
// db [C] = sum over rows of dy [N, C] (fp32 accumulation)
void bias_grad(const Tensor& db, const Tensor& dy);

// ---- kernels/layernorm.cu ---------------------------------------------------------
// Statistics (mean, rstd) are fp32 [rows] whatever the input dtype; dw/db are written
// (not accumulated) in w's dtype, reduced in fp32 deterministically.
void layer_norm(const Tensor& y, const Tensor& mean, const Tensor& rstd, const Tensor& x, const Tensor& w,
                const Tensor& b, int64_t rows, int64_t n, double eps);
void layer_norm_backward(const Tensor& dx, const Tensor& dw, const Tensor& db, const Tensor& dy, const Tensor& x,
                         const Tensor& mean, const Tensor& rstd, const Tensor& w, int64_t rows, int64_t n);
void rms_norm(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& w, int64_t rows, int64_t n,
              double eps);
void rms_norm_backward(const Tensor& dx, const Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& rstd,
                       const Tensor& w, int64_t rows, int64_t n);

// ---- kernels/embedding.cu ---------------------------------------------------------
// The kernels assume ids in range; the ops check first with index_range (one small
// reduction and a read-back). Backward is deterministic (no float atomics): each row
// of dweight is summed by one owner in a fixed order and written, not accumulated.
void embedding(const Tensor& out, const Tensor& ids, const Tensor& weight);
void embedding_backward(const Tensor& dweight, const Tensor& dy, const Tensor& ids);
// Smallest and largest id (I32 or I64, contiguous), skipping elements equal to
// `ignore` when has_ignore; *lo > *hi when nothing is left. Synchronises.
void index_range(const Tensor& ids, int64_t ignore, bool has_ignore, int64_t* lo, int64_t* hi);

// ---- kernels/cross_entropy.cu -----------------------------------------------------
// Fused softmax-cross-entropy over rows of V logits (any float dtype, read once per
// pass, no probability tensor). loss: F32 scalar, the mean over counted rows (targets
// != ignore_index); count: F32 scalar; lse: F32 [rows], saved for backward.
void cross_entropy(const Tensor& loss, const Tensor& count, const Tensor& lse, const Tensor& logits,
                   const Tensor& targets, int64_t rows, int64_t V, int64_t ignore_index);
// dlogits = (softmax(logits) - onehot(target)) * dloss / count, 0 for ignored rows.
// dloss: scalar on the device (any float dtype).
void cross_entropy_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            const Tensor& dloss, const Tensor& count, int64_t rows, int64_t V,
                            int64_t ignore_index);

// ---- kernels/dropout.cu -----------------------------------------------------------
// The same Philox stream as cpu::dropout_mask: identical masks on both backends.
void dropout_mask(const Tensor& mask, double p, uint64_t seed, uint64_t offset);

// ---- kernels/adamw.cu -------------------------------------------------------------
// One launch for many parameters. param may be f32, bf16 or f16; grad has param's
// dtype; exp_avg/exp_avg_sq are F32; master (F32, optional) holds the fp32 weights of
// a 16-bit param: the update is applied to master and param = round(master).
struct AdamWItem {
  Tensor param, grad, exp_avg, exp_avg_sq, master;
  int64_t step = 0;          // this parameter's 1-based step (bias correction)
  double weight_decay = 0;   // per parameter (0 for biases and norms by default)
};
void adamw_multi(const std::vector<AdamWItem>& items, double lr, double beta1, double beta2, double eps);

// ---- kernels/norm.cu --------------------------------------------------------------
// Sum of squares of all elements of all tensors (each contiguous, any float dtype, on
// one device), accumulated in fp32 per element and fp64 across blocks, written to
// out (an F32 scalar on the device) with one launch for the whole list.
void sum_of_squares(const Tensor& out, const std::vector<Tensor>& xs);

// ---- kernels/flash_attention.cu ----------------------------------------------------
// barbell's flash attention (q, k, v: [B, H, T, D] views, see ops.hpp). supported()
// says whether the kernels take these inputs (and why not, into *why).
bool flash_attention_supported(const Tensor& q, const Tensor& k, const Tensor& v, std::string* why);
// o [B, H, Tq, D] (any strides with unit stride in D), lse F32 [B, H, Tq] contiguous.
void flash_attention_forward(const Tensor& o, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                             bool causal, double scale);
// dq, dk, dv like q, k, v (any strides with unit stride in D), written (not accumulated).
void flash_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                              const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                              bool causal, double scale, bool deterministic);

// ---- kernels/attention_cudnn.cu -----------------------------------------------------
// cuDNN's fused SDPA (graph API; libcudnn.so.9 loaded with dlopen at first use).
// Same arguments and outputs as the flash launchers.
bool cudnn_attention_supported(const Tensor& q, const Tensor& k, const Tensor& v, std::string* why);
// Whether the loaded cuDNN can apply barbell's (bottom-right) causal mask to these
// sequence lengths (Tq < Tk needs cuDNN 9.3, and multiples of 64 before 9.6).
bool cudnn_attention_causal_supported(const Tensor& q, const Tensor& k, std::string* why);
void cudnn_attention_forward(const Tensor& o, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                             bool causal, double scale);
void cudnn_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                              const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                              bool causal, double scale);

}  // namespace barbell::gpu

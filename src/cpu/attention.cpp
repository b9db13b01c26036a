// CPU fused attention: softmax(q k^T * scale) v head by head, in tiles with an online
// softmax (no [B, H, Tq, Tk] tensor), and its backward; the tile loops are in vec_kernels.inl.
#include <vector>

#include "cpu/cpu.hpp"
#include "cpu/parallel.hpp"
#include "cpu/vec.hpp"

namespace barbell::cpu {

namespace {

// The pointer to (b, h, 0, 0) of a [B, H, T, D] tensor.
template <typename T>
T* head_ptr(const Tensor& t, int64_t b, int64_t h) {
  return static_cast<T*>(t.data_ptr()) + b * t.strides()[0] + h * t.strides()[1];
}

template <typename T>
void run_heads(bool backward, const Tensor& o, const Tensor& lse, const Tensor& q, const Tensor& k,
               const Tensor& v, bool causal, double scale, const Tensor& dout, const Tensor& dq,
               const Tensor& dk, const Tensor& dv) {
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2), D = q.size(3);
  const VecKernels& vk = vec();
  // Each head is one task; a task's sums run in one order, whichever thread runs it.
  parallel_for(B * H, grain_for(Tq * Tk * D), [&](int64_t t0, int64_t t1) {
    std::vector<T> scratch(static_cast<size_t>(attention_scratch(Tq, Tk, D)));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / H, h = t % H;
      AttnHead<T> a{};
      a.q = head_ptr<const T>(q, b, h);
      a.k = head_ptr<const T>(k, b, h);
      a.v = head_ptr<const T>(v, b, h);
      a.q_rs = q.strides()[2];
      a.k_rs = k.strides()[2];
      a.v_rs = v.strides()[2];
      a.Tq = Tq;
      a.Tk = Tk;
      a.D = D;
      a.causal = causal;
      a.scale = static_cast<T>(scale);
      a.o = head_ptr<T>(o, b, h);
      a.o_rs = o.strides()[2];
      a.lse = static_cast<T*>(lse.data_ptr()) + (b * H + h) * Tq;
      if (backward) {
        a.dout = head_ptr<const T>(dout, b, h);
        a.dout_rs = dout.strides()[2];
        a.dq = head_ptr<T>(dq, b, h);
        a.dk = head_ptr<T>(dk, b, h);
        a.dv = head_ptr<T>(dv, b, h);
        a.dq_rs = dq.strides()[2];
        a.dk_rs = dk.strides()[2];
        a.dv_rs = dv.strides()[2];
      }
      if constexpr (std::is_same_v<T, float>) {
        (backward ? vk.attention_backward_f32 : vk.attention_forward_f32)(a, scratch.data());
      } else {
        (backward ? vk.attention_backward_f64 : vk.attention_forward_f64)(a, scratch.data());
      }
    }
  });
}

void check_layout(const Tensor& t, const char* what) {
  BB_CHECK(t.dim() == 4 && t.strides()[3] == 1, Error,
           "attention (cpu): internal error: {} must be [B, H, T, D] with unit stride in D, got shape {} "
           "strides {}",
           what, shape_str(t.shape()), shape_str(t.strides()));
}

}  // namespace

void attention_forward(const Tensor& o, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                       bool causal, double scale) {
  for (auto [t, n] : {std::pair{&o, "o"}, {&q, "q"}, {&k, "k"}, {&v, "v"}}) check_layout(*t, n);
  BB_CHECK(lse.is_contiguous() && lse.dtype() == q.dtype(), Error,
           "attention (cpu): internal error: lse must be contiguous and of q's dtype");
  if (q.dtype() == DType::F32) return run_heads<float>(false, o, lse, q, k, v, causal, scale, {}, {}, {}, {});
  if (q.dtype() == DType::F64)
    return run_heads<double>(false, o, lse, q, k, v, causal, scale, {}, {}, {}, {});
  throw DTypeError(fmt::format("attention (cpu): takes f32 or f64 (the op converts 16-bit inputs), got {}",
                               dtype_name(q.dtype())));
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                        bool causal, double scale) {
  for (auto [t, n] : {std::pair{&dq, "dq"},
                      {&dk, "dk"},
                      {&dv, "dv"},
                      {&dout, "dout"},
                      {&o, "o"},
                      {&q, "q"},
                      {&k, "k"},
                      {&v, "v"}})
    check_layout(*t, n);
  if (q.dtype() == DType::F32)
    return run_heads<float>(true, o, lse, q, k, v, causal, scale, dout, dq, dk, dv);
  if (q.dtype() == DType::F64)
    return run_heads<double>(true, o, lse, q, k, v, causal, scale, dout, dq, dk, dv);
  throw DTypeError(fmt::format("attention backward (cpu): takes f32 or f64, got {}", dtype_name(q.dtype())));
}

}  // namespace barbell::cpu

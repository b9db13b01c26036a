// matmul (batched, broadcast batch dims, numpy 1-D rules) and linear, with their
// backward formulas; transposed operands go to BLAS through strides, not copies.
#include "cpu/cpu.hpp"
#include "cpu/gemm.hpp"
#include "ops/common.hpp"

namespace barbell {

namespace {
// c = a @ b for a [..., M, K], b [..., K, N] with equal leading dims (already expanded).
Tensor matmul_nd(const Tensor& a, const Tensor& b) {
  Shape cs(a.shape().begin(), a.shape().end() - 1);
  cs.push_back(b.shape().back());
  detail::check_same_dtype("matmul", a, b);
  // No rows, no columns or an empty inner dim: a legal product the BLAS calls cannot
  // express (their leading dimensions would be 0). An empty sum is 0.
  if (shape_numel(cs) == 0 || a.shape().back() == 0) return zeros(cs, a.options());
  if (!a.is_cpu()) {
    // cuBLASLt multiplies 16-bit operands with fp32 accumulation, transposes through
    // strides; only batch layouts it cannot express are made contiguous.
    BB_GPU("matmul", a, {
      Tensor aa = gpu::matmul_strides_ok(a) ? a : a.contiguous();
      Tensor bb = gpu::matmul_strides_ok(b) ? b : b.contiguous();
      Tensor c = empty(cs, a.options());
      gpu::matmul(c, aa, bb);
      return c;
    });
  }
  DType dt = a.dtype();
  bool low = dt == DType::BF16 || dt == DType::F16;
  // 16-bit operands are multiplied in f32 on the CPU, as the GPU accumulates in f32;
  // bf16 ones go to a bf16 GEMM with f32 products where there is one (oneDNN's).
  const bool bf16_gemm = dt == DType::BF16 && cpu::bf16_gemm_available();
  Tensor aa = low && !bf16_gemm ? a.to(DType::F32) : a, bb = low && !bf16_gemm ? b.to(DType::F32) : b;
  if (!cpu::matmul_strides_ok(aa)) aa = aa.contiguous();
  if (!cpu::matmul_strides_ok(bb)) bb = bb.contiguous();
  Tensor c = empty(cs, {low ? DType::F32 : dt, a.device()});
  cpu::matmul(c, aa, bb);
  return low ? c.to(dt) : c;
}
}  // namespace

Tensor matmul(const Tensor& a_in, const Tensor& b_in) {
  detail::check_defined("matmul", {&a_in, &b_in});
  detail::check_same_device("matmul", a_in, b_in);
  detail::check_same_dtype("matmul", a_in, b_in);
  detail::check_floating("matmul", a_in);
  BB_CHECK(a_in.dim() >= 1 && b_in.dim() >= 1, ShapeError, "matmul: 0-d operand: a is {}, b is {}",
           shape_str(a_in.shape()), shape_str(b_in.shape()));
  // Check K on the shapes the caller gave, before the 1-D operands are reshaped.
  const int64_t ka = a_in.shape().back(),
                kb = b_in.dim() == 1 ? b_in.shape()[0] : b_in.shape()[b_in.dim() - 2];
  BB_CHECK(ka == kb, ShapeError, "matmul: inner dimensions differ: a is {}, b is {}", shape_str(a_in.shape()),
           shape_str(b_in.shape()));
  // 1-D @ 1-D is a dot product: a 0-d result.
  if (a_in.dim() == 1 && b_in.dim() == 1) return matmul(a_in.unsqueeze(0), b_in.unsqueeze(-1)).reshape({});
  if (a_in.dim() == 1) return matmul(a_in.unsqueeze(0), b_in).squeeze(-2);
  if (b_in.dim() == 1) return matmul(a_in, b_in.unsqueeze(-1)).squeeze(-1);
  const Tensor& a = a_in;
  const Tensor& b = b_in;
  int64_t K = a.shape().back();
  BB_CHECK(K == b.shape()[b.dim() - 2], ShapeError, "matmul: inner dimensions differ: a is {}, b is {}",
           shape_str(a.shape()), shape_str(b.shape()));
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch;
  try {
    batch = broadcast_shapes(ba, bb, "matmul");
  } catch (const ShapeError&) {  // name the full operands, not just their batch dims
    throw ShapeError(fmt::format("matmul: batch dimensions do not broadcast: a is {}, b is {}",
                                 shape_str(a.shape()), shape_str(b.shape())));
  }
  Shape ea = batch, eb = batch;
  ea.push_back(a.shape()[a.dim() - 2]);
  ea.push_back(K);
  eb.push_back(K);
  eb.push_back(b.shape().back());
  Tensor out;
  {
    NoGradGuard g;
    out = matmul_nd(a.shape() == ea ? a : a.expand(ea), b.shape() == eb ? b : b.expand(eb));
  }
  Tensor ad = a.detach(), bd = b.detach();
  bool ga = a.requires_grad(), gb = b.requires_grad();
  autograd::record("matmul", out, {a, b},
                   [ad, bd, ga, gb](const Tensor& g) -> std::vector<Tensor> {
                     Tensor da, db;
                     if (ga) da = sum_to(matmul(g, bd.transpose(-1, -2)), ad.shape());
                     if (gb) db = sum_to(matmul(ad.transpose(-1, -2), g), bd.shape());
                     return {da, db};
                   },
                   {{&ad, "input 0"}, {&bd, "input 1"}});
  return out;
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  detail::check_defined("linear", {&x, &w});
  detail::check_same_device("linear", x, w);
  detail::check_same_dtype("linear", x, w);
  detail::check_floating("linear", x);
  BB_CHECK(w.dim() == 2 && x.dim() >= 1 && x.shape().back() == w.shape()[1], ShapeError,
           "linear: x is {}, weight is {} (expected [out, {}])", shape_str(x.shape()), shape_str(w.shape()),
           x.dim() >= 1 ? x.shape().back() : 0);
  if (bias.defined()) {
    detail::check_same_device("linear", x, bias);
    detail::check_same_dtype("linear", x, bias);
    BB_CHECK(bias.dim() == 1 && bias.shape()[0] == w.shape()[0], ShapeError,
             "linear: bias is {}, expected [{}] for weight {}", shape_str(bias.shape()), w.shape()[0],
             shape_str(w.shape()));
  }
  const int64_t in = w.shape()[1], outf = w.shape()[0];
  Shape ys(x.shape().begin(), x.shape().end() - 1);
  // The row count spelled out: reshape cannot infer a -1 next to a 0.
  const int64_t rows = shape_numel(ys);
  ys.push_back(outf);
  Tensor y;
  {
    NoGradGuard g;
    Tensor x2 = x.reshape({rows, in});
    if (x.is_cpu() || x2.numel() == 0 || outf == 0) {  // matmul_nd handles the empty products
      y = matmul_nd(x2, w.t());
      if (bias.defined() && y.numel() > 0) {
        if (y.is_cpu())
          cpu::add_bias(y, bias.contiguous());
        else
          y = add(y, bias);
      }
    } else {
      // One cuBLASLt call with the bias fused into its epilogue.
      BB_GPU("linear", x, {
        if (!gpu::matmul_strides_ok(x2)) x2 = x2.contiguous();
        Tensor wc = w.contiguous();
        y = empty({x2.size(0), outf}, x.options());
        gpu::linear(y, x2, wc, bias.defined() ? bias.contiguous() : Tensor(),
                    bias.defined() ? gpu::Epilogue::Bias : gpu::Epilogue::None, Tensor());
      });
    }
    y = y.view(ys);
  }
  Tensor xd = x.detach(), wd = w.detach();
  bool gx = x.requires_grad(), gw = w.requires_grad(), gbias = bias.defined() && bias.requires_grad();
  std::vector<Tensor> inputs = {x, w};
  if (bias.defined()) inputs.push_back(bias);
  autograd::record("linear", y, inputs,
                   [xd, wd, gx, gw, gbias, in, outf, rows](const Tensor& g) -> std::vector<Tensor> {
                     Tensor g2 = g.reshape({rows, outf});
                     std::vector<Tensor> r(3);
                     if (gx) r[0] = matmul_nd(g2, wd).view(xd.shape());
                     if (gw) r[1] = matmul_nd(g2.t(), xd.reshape({rows, in}));
                     if (gbias) r[2] = sum(g2, {0});
                     return r;
                   },
                   {{&xd, "input 0"}, {&wd, "weight"}});
  return y;
}

Tensor linear_gelu(const Tensor& x, const Tensor& w, const Tensor& bias) {
  detail::check_defined("linear_gelu", {&x, &w, &bias});
  if (x.is_cpu() || !w.device().is_cuda() || x.dim() < 1 || x.numel() == 0 || w.numel() == 0)
    return gelu(linear(x, w, bias), GeluApprox::Tanh);
  // linear's checks (the CPU path gets them from linear itself).
  detail::check_same_device("linear_gelu", x, w);
  detail::check_same_device("linear_gelu", x, bias);
  detail::check_same_dtype("linear_gelu", x, w);
  detail::check_same_dtype("linear_gelu", x, bias);
  detail::check_floating("linear_gelu", x);
  BB_CHECK(w.dim() == 2 && x.shape().back() == w.shape()[1] && bias.dim() == 1 && bias.shape()[0] == w.shape()[0],
           ShapeError, "linear_gelu: x is {}, weight is {}, bias is {} (expected weight [out, {}], bias [out])",
           shape_str(x.shape()), shape_str(w.shape()), shape_str(bias.shape()), x.shape().back());
  // Only the 16-bit dtypes fuse the GELU into cuBLASLt's epilogue. Its GELU is the tanh
  // form with no stated accuracy (a hardware tanh.approx errs by up to ~5e-4 relative): far below a
  // bf16/f16 rounding of the output, far above an f32 one. f32 and f64 run linear (the bias
  // in the epilogue: one exact addition) and barbell's gelu kernel, whose accuracy is known.
  if (x.dtype() != DType::BF16 && x.dtype() != DType::F16) return gelu(linear(x, w, bias), GeluApprox::Tanh);
  [[maybe_unused]] const int64_t in = w.shape()[1];
  const int64_t outf = w.shape()[0];
  Shape ys(x.shape().begin(), x.shape().end() - 1);
  ys.push_back(outf);
  Tensor y, pre, x2;
  BB_GPU("linear_gelu", x, {
    NoGradGuard g;
    x2 = x.reshape({-1, in});
    if (!gpu::matmul_strides_ok(x2)) x2 = x2.contiguous();
    y = empty({x2.size(0), outf}, x.options());
    pre = empty({x2.size(0), outf}, x.options());
    gpu::linear(y, x2, w.contiguous(), bias.contiguous(), gpu::Epilogue::BiasGelu, pre);
  });
  y = y.view(ys);
  Tensor xd = x2.detach(), wd = w.detach();
  Shape xs = x.shape();
  bool gx = x.requires_grad(), gw = w.requires_grad(), gb = bias.requires_grad();
  autograd::record("linear_gelu", y, {x, w, bias},
                   [=](const Tensor& g) -> std::vector<Tensor> {
                     Tensor g2 = g.reshape({-1, outf}).contiguous();
                     if (g2.dtype() != pre.dtype()) g2 = g2.to(pre.dtype());
                     Tensor dpre = empty(pre.shape(), pre.options());
                     BB_GPU("linear_gelu", pre, gpu::unary_backward(gpu::UnaryOp::GeluTanh, dpre, g2, pre));
                     std::vector<Tensor> r(3);
                     if (gx) r[0] = matmul(dpre, wd).view(xs);
                     if (gw) r[1] = matmul(dpre.t(), xd);
                     if (gb) r[2] = sum(dpre, {0});
                     return r;
                   },
                   {{&xd, "input 0"}, {&wd, "weight"}});
  return y;
}

}  // namespace barbell

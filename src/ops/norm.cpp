// layer_norm and rms_norm over the last dim: fused kernels forward and backward,
// statistics (mean, 1/std) saved in f32.
#include "cpu/cpu.hpp"
#include "ops/common.hpp"

namespace barbell {

namespace {
void check_norm_param(const char* op, const Tensor& x, const Tensor& p, const char* what) {
  if (!p.defined()) return;
  detail::check_same_device(op, x, p);
  detail::check_same_dtype(op, x, p);
  BB_CHECK(p.dim() == 1 && p.shape()[0] == x.shape().back(), ShapeError, "{}: {} is {}, expected [{}] for input {}", op,
           what, shape_str(p.shape()), x.shape().back(), shape_str(x.shape()));
}
}  // namespace

Tensor layer_norm(const Tensor& x_in, const Tensor& w, const Tensor& b, double eps) {
  detail::check_defined("layer_norm", {&x_in});
  detail::check_floating("layer_norm", x_in);
  BB_CHECK(x_in.dim() >= 1 && x_in.shape().back() > 0, ShapeError, "layer_norm: input {} has no last dim to normalize",
           shape_str(x_in.shape()));
  check_norm_param("layer_norm", x_in, w, "weight");
  check_norm_param("layer_norm", x_in, b, "bias");
  Tensor x = x_in.contiguous().detach();
  const int64_t n = x.shape().back(), rows = x.numel() / n;
  Tensor y = empty(x.shape(), x.options());
  DType st = x.dtype() == DType::F64 ? DType::F64 : DType::F32;
  Tensor mean = empty({rows}, {st, x.device()}), rstd = empty({rows}, {st, x.device()});
  Tensor wc = w.defined() ? w.contiguous().detach() : Tensor(), bc = b.defined() ? b.contiguous().detach() : Tensor();
  if (x.is_cpu()) cpu::layer_norm(y, mean, rstd, x, wc, bc, rows, n, eps);
  else BB_GPU("layer_norm", x, gpu::layer_norm(y, mean, rstd, x, wc, bc, rows, n, eps));
  bool gx = x_in.requires_grad(), gw = w.defined() && w.requires_grad(), gb = b.defined() && b.requires_grad();
  autograd::record("layer_norm", y, {x_in, w, b},
                   [=](const Tensor& g) -> std::vector<Tensor> {
                     Tensor gc = g.contiguous();
                     if (gc.dtype() != x.dtype()) gc = gc.to(x.dtype());
                     Tensor dx = gx ? empty(x.shape(), x.options()) : Tensor();
                     Tensor dw = gw ? empty({n}, x.options()) : Tensor();
                     Tensor db = gb ? empty({n}, x.options()) : Tensor();
                     if (x.is_cpu())
                       cpu::layer_norm_backward(dx, dw, db, gc, x, mean, rstd, wc, rows, n);
                     else
                       BB_GPU("layer_norm", x,
                              gpu::layer_norm_backward(dx, dw, db, gc, x, mean, rstd, wc, rows, n));
                     return {dx, dw, db};
                   },
                   {{&x, "input 0"}, {&wc, "weight"}});
  return y;
}

Tensor rms_norm(const Tensor& x_in, const Tensor& w, double eps) {
  detail::check_defined("rms_norm", {&x_in});
  detail::check_floating("rms_norm", x_in);
  BB_CHECK(x_in.dim() >= 1 && x_in.shape().back() > 0, ShapeError, "rms_norm: input {} has no last dim to normalize",
           shape_str(x_in.shape()));
  check_norm_param("rms_norm", x_in, w, "weight");
  Tensor x = x_in.contiguous().detach();
  const int64_t n = x.shape().back(), rows = x.numel() / n;
  Tensor y = empty(x.shape(), x.options());
  Tensor rstd = empty({rows}, {x.dtype() == DType::F64 ? DType::F64 : DType::F32, x.device()});
  Tensor wc = w.defined() ? w.contiguous().detach() : Tensor();
  if (x.is_cpu()) cpu::rms_norm(y, rstd, x, wc, rows, n, eps);
  else BB_GPU("rms_norm", x, gpu::rms_norm(y, rstd, x, wc, rows, n, eps));
  bool gx = x_in.requires_grad(), gw = w.defined() && w.requires_grad();
  autograd::record("rms_norm", y, {x_in, w},
                   [=](const Tensor& g) -> std::vector<Tensor> {
                     Tensor gc = g.contiguous();
                     if (gc.dtype() != x.dtype()) gc = gc.to(x.dtype());
                     Tensor dx = gx ? empty(x.shape(), x.options()) : Tensor();
                     Tensor dw = gw ? empty({n}, x.options()) : Tensor();
                     if (x.is_cpu())
                       cpu::rms_norm_backward(dx, dw, gc, x, rstd, wc, rows, n);
                     else
                       BB_GPU("rms_norm", x, gpu::rms_norm_backward(dx, dw, gc, x, rstd, wc, rows, n));
                     return {dx, dw};
                   },
                   {{&x, "input 0"}, {&wc, "weight"}});
  return y;
}

}  // namespace barbell

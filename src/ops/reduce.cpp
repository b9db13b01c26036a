// Reductions: sum, mean, max, argmax over dims, sum_to (the inverse of broadcasting),
// with their backward formulas.
#include <algorithm>
#include <limits>

#include "cpu/cpu.hpp"
#include "ops/common.hpp"

namespace barbell {

namespace {

struct ReduceLayout {
  Tensor x;        // contiguous, viewed as [A, R, I]
  int64_t A = 1, R = 1, I = 1;
  Shape out_keep;  // output shape with reduced dims kept as 1
  Shape out;       // output shape as requested
};

ReduceLayout layout(const Tensor& x, const Shape& dims_in, bool keepdim, const char* op) {
  ReduceLayout L;
  int64_t nd = x.dim();
  std::vector<bool> red(static_cast<size_t>(nd), dims_in.empty());
  for (auto d : dims_in) {
    int64_t w = wrap_dim(d, nd, op);
    BB_CHECK(!red[w], ValueError, "{}: dim {} given twice for a tensor of shape {}", op, w, shape_str(x.shape()));
    red[w] = true;
  }
  for (int64_t d = 0; d < nd; ++d) {
    L.out_keep.push_back(red[d] ? 1 : x.shape()[d]);
    if (!red[d] || keepdim) L.out.push_back(red[d] ? 1 : x.shape()[d]);
  }
  // Reduced dims that form one contiguous block need no permutation.
  int64_t first = -1, last = -1;
  for (int64_t d = 0; d < nd; ++d)
    if (red[d]) { if (first < 0) first = d; last = d; }
  bool block = first >= 0;
  for (int64_t d = first; block && d <= last; ++d) block = red[d];
  if (first < 0) {  // nothing reduced (0-d tensor)
    L.x = x.contiguous();
    L.A = x.numel();
    return L;
  }
  if (block) {
    L.x = x.contiguous();
    for (int64_t d = 0; d < nd; ++d) (d < first ? L.A : d <= last ? L.R : L.I) *= x.shape()[d];
  } else {
    Shape perm;
    for (int64_t d = 0; d < nd; ++d) if (!red[d]) { perm.push_back(d); L.A *= x.shape()[d]; }
    for (int64_t d = 0; d < nd; ++d) if (red[d]) { perm.push_back(d); L.R *= x.shape()[d]; }
    NoGradGuard g;
    L.x = x.permute(perm).contiguous();
  }
  return L;
}

// Integer and bool sums, exactly: accumulated on the host in 128 bits, which no int64
// inputs can overflow (a GPU tensor makes a round trip; the device kernels accumulate in
// float). A total outside int64 throws instead of wrapping.
template <typename T>
void int_sum_rows(const T* px, int64_t* po, int64_t A, int64_t R, int64_t I, const char* op,
                  const Tensor& x) {
  for (int64_t a = 0; a < A; ++a) {
    for (int64_t i = 0; i < I; ++i) {
      __int128 acc = 0;
      for (int64_t r = 0; r < R; ++r) acc += static_cast<int64_t>(px[(a * R + r) * I + i]);
      BB_CHECK(acc >= std::numeric_limits<int64_t>::min() && acc <= std::numeric_limits<int64_t>::max(),
               ValueError, "{}: the sum of the {} tensor {} overflows int64 (at output element {})", op,
               dtype_name(x.dtype()), shape_str(x.shape()), a * I + i);
      po[a * I + i] = static_cast<int64_t>(acc);
    }
  }
}

Tensor int_sum(const ReduceLayout& L, const Tensor& x, const char* op) {
  Tensor h = L.x.is_cpu() ? L.x : L.x.to(Device::cpu());
  Tensor out = detail::empty_for(op, L.out, {DType::I64, Device::cpu()});
  int64_t* po = out.data<int64_t>();
  switch (h.dtype()) {
    case DType::I64: int_sum_rows(h.data<int64_t>(), po, L.A, L.R, L.I, op, x); break;
    case DType::I32: int_sum_rows(h.data<int32_t>(), po, L.A, L.R, L.I, op, x); break;
    case DType::Bool: int_sum_rows(h.data<bool>(), po, L.A, L.R, L.I, op, x); break;
    default: throw DTypeError(fmt::format("{}: unexpected dtype {}", op, dtype_name(h.dtype())));
  }
  return x.is_cpu() ? out : out.to(x.device());
}

Tensor sum_impl(const Tensor& x, const Shape& dims, bool keepdim, bool mean, const char* op) {
  detail::check_defined(op, {&x});
  ReduceLayout L = layout(x, dims, keepdim, op);
  if (mean) detail::check_floating(op, x);
  if (!is_floating(x.dtype())) return int_sum(L, x, op);
  DType odt = x.dtype();
  Tensor out = detail::empty_for(op, L.out, {odt, x.device()});
  double scale = mean ? 1.0 / static_cast<double>(std::max<int64_t>(L.R, 1)) : 1.0;
  if (x.is_cpu()) {
    if (L.R == 0) cpu::fill(out, mean ? NAN : 0.0);
    else cpu::sum_dim(out, L.x, L.A, L.R, L.I, scale);
  } else {
    BB_GPU(op, x, {
      if (L.R == 0) gpu::fill(out, mean ? NAN : 0.0);
      else gpu::sum_dim(out, L.x, L.A, L.R, L.I, scale);
    });
  }
  Shape in_shape = x.shape(), keep = L.out_keep;
  autograd::record(op, out, {x}, [in_shape, keep, scale](const Tensor& g) -> std::vector<Tensor> {
    Tensor gg = g.reshape(keep).expand(in_shape);
    return {scale == 1.0 ? gg : mul(gg, scale)};
  });
  return out;
}

}  // namespace

Tensor sum(const Tensor& x, const Shape& dims, bool keepdim) { return sum_impl(x, dims, keepdim, false, "sum"); }
Tensor mean(const Tensor& x, const Shape& dims, bool keepdim) { return sum_impl(x, dims, keepdim, true, "mean"); }

Tensor sum_to(const Tensor& x, const Shape& shape) {
  detail::check_defined("sum_to", {&x});
  if (x.shape() == shape) return x;
  BB_CHECK(x.dim() >= static_cast<int64_t>(shape.size()), ShapeError, "sum_to: cannot reduce {} to {}",
           shape_str(x.shape()), shape_str(shape));
  size_t lead = x.shape().size() - shape.size();
  Shape dims;
  for (size_t i = 0; i < x.shape().size(); ++i) {
    if (i < lead) { dims.push_back(static_cast<int64_t>(i)); continue; }
    int64_t want = shape[i - lead];
    BB_CHECK(want == x.shape()[i] || want == 1, ShapeError, "sum_to: cannot reduce {} to {}", shape_str(x.shape()),
             shape_str(shape));
    if (want == 1 && x.shape()[i] != 1) dims.push_back(static_cast<int64_t>(i));
  }
  if (dims.empty()) return x.reshape(shape);
  return sum(x, dims, true).reshape(shape);
}

namespace {
std::pair<Tensor, Tensor> max_impl(const Tensor& x, int64_t dim, bool keepdim, bool want_values, const char* op) {
  detail::check_defined(op, {&x});
  int64_t d = wrap_dim(dim, std::max<int64_t>(x.dim(), 1), op);
  Tensor xx = x.dim() == 0 ? x.reshape({1}) : x;
  // Only the reduced dim must be non-empty: max over dim 1 of [0, V] is [0].
  BB_CHECK(xx.shape()[d] > 0, ShapeError, "{}: dim {} of shape {} is empty", op, d, shape_str(x.shape()));
  ReduceLayout L = layout(xx, {d}, keepdim, op);
  Tensor values = want_values ? empty(L.out, x.options()) : Tensor();
  Tensor idx = empty(L.out, {DType::I64, x.device()});
  if (x.is_cpu()) cpu::max_dim(values, idx, L.x, L.A, L.R, L.I);
  else BB_GPU(op, x, gpu::max_dim(values, idx, L.x, L.A, L.R, L.I));
  if (want_values) {
    // dx is laid out as xx ([1] for a 0-d x) and returned in x's own shape.
    Shape in_shape = xx.shape(), x_shape = x.shape();
    int64_t A = L.A, R = L.R, I = L.I;
    Tensor idd = idx.detach();
    autograd::record(op, values, {x}, [=](const Tensor& g) -> std::vector<Tensor> {
      Tensor dx = empty(in_shape, g.options());
      if (dx.is_cpu()) cpu::max_dim_backward(dx, g.contiguous(), idd.contiguous(), A, R, I);
      else BB_GPU("max", dx, gpu::max_dim_backward(dx, g.contiguous(), idd.contiguous(), A, R, I));
      return {dx.view(x_shape)};
    });
  }
  return {values, idx};
}
}  // namespace

Tensor max(const Tensor& x, int64_t dim, bool keepdim) { return max_impl(x, dim, keepdim, true, "max").first; }
Tensor max(const Tensor& x) {
  detail::check_defined("max", {&x});
  return max(x.reshape({-1}), 0, false);
}
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) { return max_impl(x, dim, keepdim, false, "argmax").second; }

// ---- softmax -----------------------------------------------------------------------

namespace {
Tensor softmax_impl(const Tensor& x, int64_t dim, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  detail::check_defined(op, {&x});
  detail::check_floating(op, x);
  if (x.dim() == 0) return softmax_impl(x.reshape({1}), 0, log).reshape({});
  int64_t d = wrap_dim(dim, x.dim(), op);
  bool last = d == x.dim() - 1;
  Tensor xt;
  {
    NoGradGuard g;
    xt = last ? x.contiguous() : x.transpose(d, -1).contiguous();
  }
  int64_t n = xt.shape().back(), rows = n ? xt.numel() / n : 0;
  Tensor yt = empty(xt.shape(), xt.options());
  if (x.is_cpu()) cpu::softmax_rows(yt, xt, rows, n, log);
  else BB_GPU(op, x, gpu::softmax_rows(yt, xt, rows, n, log));
  Tensor y = last ? yt : yt.transpose(d, -1);
  Tensor yd = yt.detach();
  autograd::record(op, y, {x},
                   [yd, d, last, rows, n, log](const Tensor& g) -> std::vector<Tensor> {
                     Tensor gt = (last ? g : g.transpose(d, -1)).contiguous();
                     if (gt.dtype() != yd.dtype()) gt = gt.to(yd.dtype());
                     Tensor dx = empty(yd.shape(), yd.options());
                     if (yd.is_cpu())
                       cpu::softmax_rows_backward(dx, gt, yd, rows, n, log);
                     else
                       BB_GPU("softmax", yd, gpu::softmax_rows_backward(dx, gt, yd, rows, n, log));
                     return {last ? dx : dx.transpose(d, -1)};
                   },
                   {{&yd, "result"}});
  return y;
}
}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, true); }

}  // namespace barbell

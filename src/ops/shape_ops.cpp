// Ops that join, cut and mask tensors: cat, stack, split, chunk, masked_fill, tril_mask.
#include "cpu/cpu.hpp"
#include "ops/common.hpp"

namespace barbell {

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  BB_CHECK(!xs.empty(), ValueError, "cat: no tensors given");
  const Tensor& x0 = xs[0];
  detail::check_defined("cat", {&x0});
  BB_CHECK(x0.dim() > 0, ShapeError, "cat: tensors must have at least one dim, got {} (use stack)",
           shape_str(x0.shape()));
  int64_t d = wrap_dim(dim, x0.dim(), "cat");
  Shape os = x0.shape();
  int64_t total = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    detail::check_defined("cat", {&x});
    detail::check_same_device("cat", x0, x);
    detail::check_same_dtype("cat", x0, x);
    bool ok = x.dim() == x0.dim();
    for (int64_t k = 0; ok && k < x.dim(); ++k) ok = k == d || x.shape()[k] == x0.shape()[k];
    BB_CHECK(ok, ShapeError, "cat: tensor {} has shape {}, incompatible with {} along dim {}", i, shape_str(x.shape()),
             shape_str(x0.shape()), d);
    BB_CHECK(!__builtin_add_overflow(total, x.shape()[d], &total), ShapeError,
             "cat: the sizes along dim {} add up to more than int64 can count", d);
  }
  os[d] = total;
  Tensor out = detail::empty_for("cat", os, x0.options());
  std::vector<int64_t> sizes;
  {
    NoGradGuard g;
    int64_t at = 0;
    for (auto& x : xs) {
      if (x.shape()[d] > 0) out.narrow(d, at, x.shape()[d]).copy_(x);
      sizes.push_back(x.shape()[d]);
      at += x.shape()[d];
    }
  }
  autograd::record("cat", out, xs, [sizes, d](const Tensor& g) -> std::vector<Tensor> {
    std::vector<Tensor> r;
    int64_t at = 0;
    for (auto s : sizes) {
      r.push_back(g.narrow(d, at, s));
      at += s;
    }
    return r;
  });
  return out;
}

Tensor stack(const std::vector<Tensor>& xs, int64_t dim) {
  BB_CHECK(!xs.empty(), ValueError, "stack: no tensors given");
  for (auto& x : xs) detail::check_defined("stack", {&x});
  int64_t d = wrap_dim(dim, xs[0].dim() + 1, "stack");
  std::vector<Tensor> u;
  for (size_t i = 0; i < xs.size(); ++i) {
    BB_CHECK(xs[i].shape() == xs[0].shape(), ShapeError, "stack: tensor {} has shape {}, tensor 0 has {}", i,
             shape_str(xs[i].shape()), shape_str(xs[0].shape()));
    u.push_back(xs[i].unsqueeze(d));
  }
  return cat(u, d);
}

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim) {
  detail::check_defined("split", {&x});
  BB_CHECK(split_size > 0, ValueError, "split: split_size must be positive, got {}", split_size);
  int64_t d = wrap_dim(dim, x.dim(), "split");
  std::vector<Tensor> r;
  for (int64_t at = 0; at < x.shape()[d]; at += split_size)
    r.push_back(x.narrow(d, at, std::min(split_size, x.shape()[d] - at)));
  return r;
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  detail::check_defined("chunk", {&x});
  BB_CHECK(chunks > 0, ValueError, "chunk: chunks must be positive, got {}", chunks);
  int64_t d = wrap_dim(dim, x.dim(), "chunk");
  const int64_t n = x.shape()[d];  // ceil(n / chunks) without the overflow of n + chunks - 1
  return split(x, std::max<int64_t>(n / chunks + (n % chunks != 0), 1), d);
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, Scalar value) {
  detail::check_defined("masked_fill", {&x, &mask});
  BB_CHECK(mask.dtype() == DType::Bool, DTypeError, "masked_fill: mask must be bool, got {} {}",
           dtype_name(mask.dtype()), shape_str(mask.shape()));
  BB_CHECK(broadcast_shapes(x.shape(), mask.shape(), "masked_fill") == x.shape(), ShapeError,
           "masked_fill: mask {} does not broadcast to input {}", shape_str(mask.shape()), shape_str(x.shape()));
  detail::check_scalar_for("masked_fill", value, x.dtype());
  return where(mask, full({}, value, x.options()), x);
}

Tensor tril_mask(int64_t rows, int64_t cols, Device device) {
  BB_CHECK(rows >= 0 && cols >= 0, ValueError, "tril_mask: negative size [{}, {}]", rows, cols);
  // Built in place on the host (no temporary of ints): one byte per element.
  Tensor m = detail::empty_for("tril_mask", {rows, cols}, {DType::Bool, Device::cpu()});
  bool* p = m.data<bool>();
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) p[i * cols + j] = j <= i;
  return device.is_cpu() ? m : m.to(device);
}

}  // namespace barbell

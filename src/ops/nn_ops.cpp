// embedding, fused softmax-cross-entropy and dropout: the ops a language model's
// input and loss are made of.
#include <limits>

#include "cpu/cpu.hpp"
#include "ops/common.hpp"

namespace barbell {

namespace {
// Throws IndexError naming the op, the first bad id and its position.
void check_ids(const char* op, const Tensor& ids, int64_t V, int64_t allowed) {
  std::vector<int64_t> v = ids.to_vector<int64_t>();
  for (size_t i = 0; i < v.size(); ++i) {
    if ((v[i] < 0 || v[i] >= V) && v[i] != allowed) {
      throw IndexError(fmt::format("{}: id {} at position {} is out of range [0, {}) (ids of shape {})", op, v[i], i, V,
                                   shape_str(ids.shape())));
    }
  }
}

// On a GPU: a min/max reduction there, and the ids come to the host only to name a
// bad one.
void check_ids_any(const char* op, const Tensor& ids, int64_t V, int64_t allowed) {
  if (ids.is_cpu()) return check_ids(op, ids, V, allowed);
  BB_GPU(op, ids, {
    int64_t lo = 0, hi = -1;
    bool skip = allowed != std::numeric_limits<int64_t>::min();
    gpu::index_range(ids, allowed, skip, &lo, &hi);
    if (lo <= hi && (lo < 0 || hi >= V)) check_ids(op, ids.to(Device::cpu()), V, allowed);
  });
}
}  // namespace

Tensor embedding(const Tensor& ids_in, const Tensor& weight) {
  detail::check_defined("embedding", {&ids_in, &weight});
  detail::check_index("embedding", ids_in);
  detail::check_floating("embedding", weight);
  detail::check_same_device("embedding", ids_in, weight);
  BB_CHECK(weight.dim() == 2, ShapeError, "embedding: weight must be [V, C], got {}", shape_str(weight.shape()));
  Tensor ids = ids_in.contiguous();
  const int64_t V = weight.shape()[0], C = weight.shape()[1];
  check_ids_any("embedding", ids, V, std::numeric_limits<int64_t>::min());
  Shape os = ids.shape();
  os.push_back(C);
  Tensor out = empty(os, weight.options());
  if (ids.is_cpu()) cpu::embedding(out, ids, weight.contiguous());
  else BB_GPU("embedding", ids, gpu::embedding(out, ids, weight.contiguous()));
  Shape ws = weight.shape();
  DType wdt = weight.dtype();
  autograd::record("embedding", out, {weight},
                   [ids, ws, wdt](const Tensor& g) -> std::vector<Tensor> {
                     Tensor dw = empty(ws, {wdt, g.device()});
                     Tensor gc = g.contiguous();
                     if (gc.dtype() != wdt) gc = gc.to(wdt);
                     if (ids.is_cpu())
                       cpu::embedding_backward(dw, gc, ids);
                     else
                       BB_GPU("embedding", ids, gpu::embedding_backward(dw, gc, ids));
                     return {dw};
                   },
                   {{&ids, "ids"}});
  return out;
}

Tensor cross_entropy(const Tensor& logits_in, const Tensor& targets_in, int64_t ignore_index) {
  detail::check_defined("cross_entropy", {&logits_in, &targets_in});
  detail::check_floating("cross_entropy", logits_in);
  detail::check_index("cross_entropy", targets_in);
  detail::check_same_device("cross_entropy", logits_in, targets_in);
  BB_CHECK(logits_in.dim() >= 1, ShapeError, "cross_entropy: logits must be [..., V], got {}",
           shape_str(logits_in.shape()));
  Shape lead(logits_in.shape().begin(), logits_in.shape().end() - 1);
  BB_CHECK(targets_in.shape() == lead, ShapeError, "cross_entropy: logits are {}, so targets must be {}, got {}",
           shape_str(logits_in.shape()), shape_str(lead), shape_str(targets_in.shape()));
  const int64_t V = logits_in.shape().back(), rows = shape_numel(lead);
  Tensor logits = logits_in.contiguous().detach(), targets = targets_in.contiguous();
  check_ids_any("cross_entropy", targets, V, ignore_index);
  // The loss is f32 (f64 for f64 logits) whatever the logits' precision.
  DType ldt = logits.dtype() == DType::F64 ? DType::F64 : DType::F32;
  Tensor loss = empty({}, {ldt, logits.device()});
  if (!logits.is_cpu()) {
    BB_GPU("cross_entropy", logits, {
      // Count and logsumexp stay on the device: no host round trip per step.
      Tensor count = empty({}, {DType::F32, logits.device()});
      Tensor lse = empty({rows}, {ldt, logits.device()});
      gpu::cross_entropy(loss, count, lse, logits, targets, rows, V, ignore_index);
      autograd::record("cross_entropy", loss, {logits_in},
                       [=](const Tensor& g) -> std::vector<Tensor> {
                         Tensor d = empty(logits.shape(), logits.options());
                         gpu::cross_entropy_backward(d, logits, targets, lse, g.contiguous(), count, rows, V,
                                                     ignore_index);
                         return {d};
                       },
                       {{&logits, "input 0"}, {&targets, "targets"}});
      return loss;
    });
  }
  int64_t count = cpu::cross_entropy(loss, logits, targets, rows, V, ignore_index);
  autograd::record("cross_entropy", loss, {logits_in},
                   [=](const Tensor& g) -> std::vector<Tensor> {
                     Tensor d = empty(logits.shape(), logits.options());
                     double scale = count > 0 ? g.item<double>() / double(count) : 0.0;
                     cpu::cross_entropy_backward(d, logits, targets, rows, V, ignore_index, scale);
                     return {d};
                   },
                   {{&logits, "input 0"}, {&targets, "targets"}});
  return loss;
}

Tensor dropout(const Tensor& x, double p, bool training, Generator* gen) {
  detail::check_defined("dropout", {&x});
  BB_CHECK(p >= 0.0 && p < 1.0, ValueError, "dropout: p must be in [0, 1), got {}", p);
  if (!training || p == 0.0) return x;
  detail::check_floating("dropout", x);
  Generator& g = gen ? *gen : default_generator();
  const int64_t n = x.numel();
  uint64_t offset = g.reserve(static_cast<uint64_t>((n + 3) / 4));
  Tensor mask = empty(x.shape(), {DType::F32, x.device()});
  if (x.is_cpu()) cpu::dropout_mask(mask, p, g.seed(), offset);
  else BB_GPU("dropout", x, gpu::dropout_mask(mask, p, g.seed(), offset));
  Tensor m = mask.dtype() == x.dtype() ? mask : mask.to(x.dtype());
  return mul(x, m);
}

}  // namespace barbell

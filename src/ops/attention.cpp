// scaled_dot_product_attention, the plain reference: softmax(q k^T * scale) v built
// from matmul/softmax ops, so autograd and every backend come for free. The fused
// flash kernels are tested against it.
#include <cmath>
#include <map>
#include <tuple>

#include "barbell/cuda/cuda.hpp"
#include "ops/common.hpp"

namespace barbell {

namespace {
// The causal mask, built once per (Tq, Tk, device, stream) and thread: every layer of
// every step reuses it instead of filling Tq x Tk values on the host and copying them
// to the GPU again. Keyed by stream too, so a mask is only read on the stream whose
// copy wrote it. Query i sees keys j <= i + (Tk - Tq): the queries are the last Tq
// positions.
Tensor causal_keep(int64_t Tq, int64_t Tk, Device device) {
  using Key = std::tuple<int64_t, int64_t, int, int, const void*>;
  thread_local std::map<Key, Tensor> cache;
  const void* stream = device.is_cuda() ? cuda::current_stream(device.index()).handle() : nullptr;
  Key key{Tq, Tk, static_cast<int>(device.type()), device.index(), stream};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 16) cache.clear();  // a bound, for programs that vary T a lot
  std::vector<int32_t> m(static_cast<size_t>(Tq * Tk));
  for (int64_t i = 0; i < Tq; ++i)
    for (int64_t j = 0; j < Tk; ++j) m[static_cast<size_t>(i * Tk + j)] = j <= i + (Tk - Tq);
  Tensor keep = from_vector(m, {Tq, Tk}, {DType::Bool, device});
  cache.emplace(key, keep);
  return keep;
}
}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                    std::optional<double> scale) {
  const char* op = "scaled_dot_product_attention";
  detail::check_defined(op, {&q, &k, &v});
  detail::check_same_device(op, q, k);
  detail::check_same_device(op, q, v);
  detail::check_same_dtype(op, q, k);
  detail::check_same_dtype(op, q, v);
  detail::check_floating(op, q);
  BB_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, ShapeError,
           "{}: expected q, k, v of shape [B, H, T, D]: q is {}, k is {}, v is {}", op, shape_str(q.shape()),
           shape_str(k.shape()), shape_str(v.shape()));
  bool ok = q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3) && k.shape() == v.shape();
  BB_CHECK(ok, ShapeError, "{}: q is {}, k is {}, v is {}: batch, heads and head dim must agree and k, v match", op,
           shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape()));
  const int64_t Tq = q.size(2), Tk = k.size(2), D = q.size(3);
  double s = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(D));
  Tensor att = mul(matmul(q, k.transpose(-2, -1)), s);  // [B, H, Tq, Tk]
  if (causal) att = where(causal_keep(Tq, Tk, q.device()), att, full({}, -INFINITY, att.options()));
  return matmul(softmax(att, -1), v);
}

}  // namespace barbell

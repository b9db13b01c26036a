// Tensor: storage, accessors, views (recorded by autograd), copies, factories and
// printing. Ops that compute live in src/ops.
#include "barbell/core/tensor.hpp"

#if defined(__linux__)
#include <sys/sysinfo.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <ostream>

#include "barbell/autograd/autograd.hpp"
#include "barbell/ops/ops.hpp"
#include "cpu/cpu.hpp"
#include "cpu/host_alloc.hpp"
#include "cuda/runtime.hpp"
#include "ops/common.hpp"

namespace barbell {

// ---- storage and devices ---------------------------------------------------

Storage::~Storage() {
  if (deleter_ && data_) deleter_(data_);
}

namespace {
std::string human_bytes(size_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  return fmt::format("{:.1f} {}", v, units[u]);
}

// RAM plus swap: a host allocation larger than that cannot be backed, and under
// overcommit (vm.overcommit_memory = 1) malloc would return it anyway and the process
// would be killed when it touches the pages. 0 when unknown.
size_t host_memory_limit() {
#if defined(__linux__)
  static const size_t limit = [] {
    struct sysinfo si {};
    if (sysinfo(&si) != 0) return size_t{0};
    return static_cast<size_t>(si.totalram + si.totalswap) * si.mem_unit;
  }();
  return limit;
#else
  return 0;
#endif
}
}  // namespace

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device, const char* op) {
  if (device.is_cpu()) {
    if (nbytes > (size_t{1} << 30)) {
      const size_t limit = host_memory_limit();
      BB_CHECK(limit == 0 || nbytes <= limit, Error,
               "{}: cannot allocate {} bytes ({}): more than this machine's memory and swap ({})", op, nbytes,
               human_bytes(nbytes), human_bytes(limit));
    }
    // 64-byte aligned; large blocks are reused (src/cpu/host_alloc.cpp).
    constexpr size_t kMax = std::numeric_limits<size_t>::max() - 64;
    const size_t n = std::max<size_t>(nbytes, 1);
    void* p = nbytes <= kMax ? cpu::host_alloc(n) : nullptr;
    BB_CHECK(p != nullptr, Error, "{}: out of host memory: cannot allocate {} bytes ({})", op, nbytes,
             human_bytes(nbytes));
    try {
      return std::make_shared<Storage>(p, nbytes, device, [n](void* q) { cpu::host_free(q, n); });
    } catch (const std::bad_alloc&) {
      cpu::host_free(p, n);
      throw Error(fmt::format("{}: out of host memory allocating a storage of {} bytes", op, nbytes));
    }
  }
  int idx = device.index();
  void* p = cuda_rt::alloc(nbytes, idx);
  return std::make_shared<Storage>(p, nbytes, device, [idx, nbytes](void* q) { cuda_rt::free(q, nbytes, idx); });
}

Device Device::parse(const std::string& s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    const std::string num = s.substr(5);
    bool digits = !num.empty() && std::all_of(num.begin(), num.end(), [](char c) { return c >= '0' && c <= '9'; });
    // At most 6 digits, so stoi cannot overflow (it would throw std::out_of_range).
    BB_CHECK(digits && num.size() <= 6, ValueError,
             "Device::parse: bad device '{}' (expected cpu, cuda or cuda:N)", s);
    return cuda(std::stoi(num));
  }
  throw ValueError(fmt::format("Device::parse: bad device '{}' (expected cpu, cuda or cuda:N)", s));
}

namespace cuda {
int device_count() { return cuda_rt::device_count(); }
bool is_available() { return device_count() > 0; }
}  // namespace cuda

// ---- accessors --------------------------------------------------------------

TensorImpl& Tensor::impl() const {
  BB_CHECK(impl_ != nullptr, ValueError, "Tensor: use of an undefined tensor");
  return *impl_;
}

int64_t Tensor::size(int64_t d) const { return shape()[wrap_dim(d, dim(), "Tensor::size")]; }
int64_t Tensor::stride(int64_t d) const { return strides()[wrap_dim(d, dim(), "Tensor::stride")]; }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;
  int64_t expected = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (shape()[i] == 1) continue;
    if (strides()[i] != expected) return false;
    expected *= shape()[i];
  }
  return true;
}

void* Tensor::data_ptr() const {
  auto& im = impl();
  return static_cast<char*>(im.storage->data()) + im.offset * static_cast<int64_t>(dtype_size(im.dtype));
}

double Tensor::item_double() const {
  BB_CHECK(numel() == 1, ShapeError, "item: tensor of shape {} has {} elements, expected 1", shape_str(shape()),
           numel());
  return to_vector<double>()[0];
}

int64_t Tensor::item_int64() const {
  BB_CHECK(numel() == 1, ShapeError, "item: tensor of shape {} has {} elements, expected 1",
           shape_str(shape()), numel());
  if (!is_floating(dtype())) return to_vector<int64_t>()[0];  // exact: integers never pass through double
  const double v = item_double();
  BB_CHECK(v >= -9223372036854775808.0 && v < 9223372036854775808.0, ValueError,
           "item: the {} value {} has no int64 value (NaN, infinities and values outside int64's range)",
           dtype_name(dtype()), v);
  return static_cast<int64_t>(v);
}

void Tensor::item_out_of_range(int64_t v, size_t bytes, bool is_unsigned) const {
  throw ValueError(fmt::format("item: the value {} of a {} tensor does not fit in a {}-bit {} integer", v,
                               dtype_name(dtype()), 8 * bytes, is_unsigned ? "unsigned" : "signed"));
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = detach().to(Device::cpu(), dtype_of<T>::value).contiguous();
  const T* p = c.data<T>();
  try {
    return std::vector<T>(p, p + c.numel());
  } catch (const std::bad_alloc&) {
    throw Error(fmt::format("to_vector: out of host memory copying {} elements", c.numel()));
  }
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<BFloat16> Tensor::to_vector<BFloat16>() const;
template std::vector<Half> Tensor::to_vector<Half>() const;
template <>
std::vector<bool> Tensor::to_vector<bool>() const {
  Tensor c = detach().to(Device::cpu(), DType::Bool).contiguous();
  const bool* p = c.data<bool>();
  return std::vector<bool>(p, p + c.numel());
}

// ---- views --------------------------------------------------------------------

namespace {
Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset) {
  auto im = std::make_shared<TensorImpl>();
  im->storage = base.impl().storage;
  im->shape = std::move(shape);
  im->strides = std::move(strides);
  im->offset = offset;
  im->dtype = base.dtype();
  return Tensor(im);
}

// Strides for viewing `t` as `shape` without a copy, or false when impossible.
bool view_strides(const Tensor& t, const Shape& shape, Shape& out) {
  if (t.is_contiguous() || t.numel() == 0) {
    out = contiguous_strides(shape);
    return true;
  }
  // Match groups of old dims to groups of new dims with equal products; each old
  // group must be contiguous within itself. Size-1 old dims carry no layout (their
  // stride is arbitrary), so they are dropped first: otherwise the contiguity check
  // would compare a neighbour with the size-1 dim instead of the next real dim.
  Shape os, ost;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.shape()[d] == 1) continue;
    os.push_back(t.shape()[d]);
    ost.push_back(t.strides()[d]);
  }
  out.assign(shape.size(), 0);
  size_t i = 0, j = 0;
  while (i < os.size() || j < shape.size()) {
    if (i < os.size() && os[i] == 1) { ++i; continue; }
    if (j < shape.size() && shape[j] == 1) { out[j] = 1; ++j; continue; }
    if (i >= os.size() || j >= shape.size()) return false;
    size_t i0 = i, j0 = j;
    int64_t po = os[i++], pn = shape[j++];
    while (po != pn) {
      if (po < pn) { if (i >= os.size()) return false; po *= os[i++]; }
      else { if (j >= shape.size()) return false; pn *= shape[j++]; }
    }
    for (size_t k = i0; k + 1 < i; ++k)
      if (os[k + 1] != 1 && ost[k] != ost[k + 1] * os[k + 1]) return false;
    int64_t st = ost[i - 1];
    for (size_t k = j; k-- > j0;) { out[k] = st; st *= shape[k]; }
  }
  return true;
}

Shape infer_shape(const Shape& shape, int64_t numel, const char* op, const Shape& from) {
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      BB_CHECK(infer < 0, ShapeError, "{}: more than one -1 in {}", op, shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      BB_CHECK(s[i] >= 0, ShapeError, "{}: negative size in {}", op, shape_str(shape));
      BB_CHECK(!__builtin_mul_overflow(known, s[i], &known), ShapeError,
               "{}: the sizes in {} multiply past int64", op, shape_str(shape));
    }
  }
  if (infer >= 0) {
    BB_CHECK(known > 0 && numel % known == 0, ShapeError, "{}: cannot view {} as {}", op, shape_str(from),
             shape_str(shape));
    s[infer] = numel / known;
  }
  BB_CHECK(shape_numel(s) == numel, ShapeError, "{}: cannot view {} ({} elements) as {}", op, shape_str(from), numel,
           shape_str(shape));
  return s;
}
}  // namespace

Tensor Tensor::view(const Shape& shape_in) const {
  Shape s = infer_shape(shape_in, numel(), "view", shape());
  Shape st;
  BB_CHECK(view_strides(*this, s, st), ShapeError,
           "view: a tensor of shape {} with strides {} cannot be viewed as {} without a copy (use reshape)",
           shape_str(shape()), shape_str(strides()), shape_str(s));
  Tensor out = make_view(*this, s, st, offset());
  Shape in_shape = shape();
  autograd::record("view", out, {*this}, [in_shape](const Tensor& g) -> std::vector<Tensor> {
    return {g.reshape(in_shape)};
  });
  return out;
}

Tensor Tensor::reshape(const Shape& shape_in) const {
  Shape s = infer_shape(shape_in, numel(), "reshape", shape());
  Shape st;
  if (view_strides(*this, s, st)) return view(s);
  return contiguous().view(s);
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  int64_t s = wrap_dim(start_dim, dim(), "flatten"), e = wrap_dim(end_dim, dim(), "flatten");
  BB_CHECK(s <= e, ValueError, "flatten: start_dim {} after end_dim {}", start_dim, end_dim);
  Shape ns(shape().begin(), shape().begin() + s);
  int64_t p = 1;
  for (int64_t i = s; i <= e; ++i) p *= shape()[i];
  ns.push_back(p);
  ns.insert(ns.end(), shape().begin() + e + 1, shape().end());
  return reshape(ns);
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  int64_t a = wrap_dim(d0, dim(), "transpose"), b = wrap_dim(d1, dim(), "transpose");
  Shape s = shape(), st = strides();
  std::swap(s[a], s[b]);
  std::swap(st[a], st[b]);
  Tensor out = make_view(*this, s, st, offset());
  autograd::record("transpose", out, {*this}, [a, b](const Tensor& g) -> std::vector<Tensor> {
    return {g.transpose(a, b)};
  });
  return out;
}

Tensor Tensor::permute(const Shape& dims) const {
  BB_CHECK(static_cast<int64_t>(dims.size()) == dim(), ShapeError, "permute: {} dims given for a tensor of shape {}",
           dims.size(), shape_str(shape()));
  Shape s(dims.size()), st(dims.size()), inv(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t d = wrap_dim(dims[i], dim(), "permute");
    BB_CHECK(!seen[d], ShapeError, "permute: dim {} repeated in {}", d, shape_str(dims));
    seen[d] = true;
    s[i] = shape()[d];
    st[i] = strides()[d];
    inv[d] = static_cast<int64_t>(i);
  }
  Tensor out = make_view(*this, s, st, offset());
  autograd::record("permute", out, {*this}, [inv](const Tensor& g) -> std::vector<Tensor> {
    return {g.permute(inv)};
  });
  return out;
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  int64_t a = wrap_dim(d, dim(), "narrow");
  // length <= size - start rather than start + length <= size: the sum may overflow.
  BB_CHECK(start >= 0 && length >= 0 && start <= shape()[a] && length <= shape()[a] - start, IndexError,
           "narrow: start {} and length {} out of bounds for dim {} of a tensor of shape {}", start, length,
           a, shape_str(shape()));
  Shape s = shape();
  s[a] = length;
  Tensor out = make_view(*this, s, strides(), offset() + start * strides()[a]);
  Shape in_shape = shape();
  autograd::record("narrow", out, {*this}, [in_shape, a, start, length](const Tensor& g) -> std::vector<Tensor> {
    // Zeros outside the slice, g inside: each element written once.
    Tensor z = empty(in_shape, g.options());
    if (start > 0) z.narrow(a, 0, start).fill_(0.0);
    if (start + length < in_shape[a]) z.narrow(a, start + length, in_shape[a] - start - length).fill_(0.0);
    z.narrow(a, start, length).copy_(g);
    return {z};
  });
  return out;
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  int64_t a = wrap_dim(d, dim(), "slice");
  int64_t n = shape()[a];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  return narrow(a, start, end - start);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  int64_t a = wrap_dim(d, dim(), "select");
  int64_t n = shape()[a];
  int64_t i = index < 0 ? index + n : index;
  BB_CHECK(i >= 0 && i < n, IndexError, "select: index {} out of range for dim {} of size {}", index, a, n);
  return narrow(a, i, 1).squeeze(a);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  int64_t a = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape s = shape(), st = strides();
  int64_t stv = a < dim() ? strides()[a] * shape()[a] : 1;
  s.insert(s.begin() + a, 1);
  st.insert(st.begin() + a, stv);
  Tensor out = make_view(*this, s, st, offset());
  autograd::record("unsqueeze", out, {*this}, [a](const Tensor& g) -> std::vector<Tensor> { return {g.squeeze(a)}; });
  return out;
}

Tensor Tensor::squeeze(int64_t d) const {
  int64_t a = wrap_dim(d, dim(), "squeeze");
  if (shape()[a] != 1) return *this;
  Shape s = shape(), st = strides();
  s.erase(s.begin() + a);
  st.erase(st.begin() + a);
  Tensor out = make_view(*this, s, st, offset());
  autograd::record("squeeze", out, {*this}, [a](const Tensor& g) -> std::vector<Tensor> { return {g.unsqueeze(a)}; });
  return out;
}

Tensor Tensor::squeeze() const {
  Shape s;
  for (auto v : shape())
    if (v != 1) s.push_back(v);
  return reshape(s);
}

Tensor Tensor::expand(const Shape& shape_in) const {
  BB_CHECK(shape_in.size() >= shape().size(), ShapeError, "expand: cannot expand {} to fewer dims {}",
           shape_str(shape()), shape_str(shape_in));
  size_t lead = shape_in.size() - shape().size();
  Shape s(shape_in.size()), st(shape_in.size());
  for (size_t i = 0; i < shape_in.size(); ++i) {
    if (i < lead) {
      BB_CHECK(shape_in[i] >= 0, ShapeError, "expand: negative size {} for the new leading dim {} in {}",
               shape_in[i], i, shape_str(shape_in));
      s[i] = shape_in[i];
      st[i] = 0;
      continue;
    }
    int64_t cur = shape()[i - lead];
    int64_t want = shape_in[i] == -1 ? cur : shape_in[i];
    BB_CHECK(want >= 0, ShapeError, "expand: negative size {} in {} (only -1, keep the size, is allowed)",
             shape_in[i], shape_str(shape_in));
    BB_CHECK(cur == want || cur == 1, ShapeError, "expand: cannot expand {} to {}", shape_str(shape()),
             shape_str(shape_in));
    s[i] = want;
    st[i] = cur == want ? strides()[i - lead] : 0;
  }
  shape_numel(s);  // throws when the element count overflows int64
  Tensor out = make_view(*this, s, st, offset());
  Shape in_shape = shape();
  autograd::record("expand", out, {*this}, [in_shape](const Tensor& g) -> std::vector<Tensor> {
    return {sum_to(g, in_shape)};
  });
  return out;
}

// ---- copies ---------------------------------------------------------------------

namespace {
// A differentiable copy into a fresh tensor of `dtype` on `device`.
Tensor copy_to(const Tensor& src, Device device, DType dtype, const char* op) {
  detail::check_float_to_int(op, src, dtype);
  Tensor out = detail::empty_for(op, src.shape(), {dtype, device});
  if (src.device().is_cpu() && device.is_cpu()) {
    cpu::copy(out, src);
  } else if (src.device() == device) {
    BB_GPU(op, src, gpu::copy(out, src));  // cast and/or gather on the GPU
  } else {
    // Between devices, bytes move contiguous; the conversion happens on the GPU side
    // (or the CPU side when there is no GPU side).
    Tensor s = src;
    if (s.device().is_cpu()) s = s.contiguous();
    else s = s.to(s.device(), device.is_cpu() ? dtype : s.dtype()).contiguous();
    Tensor dst = s.dtype() == dtype ? out : empty(src.shape(), {s.dtype(), device});
    if (device.is_cuda() && s.device().is_cpu()) cuda_rt::copy_h2d(dst.data_ptr(), s.data_ptr(), dst.nbytes(), device.index());
    else if (device.is_cpu()) cuda_rt::copy_d2h(dst.data_ptr(), s.data_ptr(), dst.nbytes(), s.device().index());
    else cuda_rt::copy_d2d(dst.data_ptr(), s.data_ptr(), dst.nbytes(), device.index(), s.device().index());
    if (dst.data_ptr() != out.data_ptr()) {
      if (device.is_cpu()) cpu::copy(out, dst);
      else BB_GPU(op, dst, gpu::copy(out, dst));
    }
  }
  Device src_dev = src.device();
  DType src_dtype = src.dtype();
  if (is_floating(dtype) && is_floating(src_dtype)) {
    autograd::record(op, out, {src}, [src_dev, src_dtype](const Tensor& g) -> std::vector<Tensor> {
      return {g.to(src_dev, src_dtype)};
    });
  }
  return out;
}
}  // namespace

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return copy_to(*this, device(), dtype(), "contiguous");
}

Tensor Tensor::clone() const { return copy_to(*this, device(), dtype(), "clone"); }

Tensor Tensor::to(DType t) const { return to(device(), t); }
Tensor Tensor::to(Device d) const { return to(d, dtype()); }
Tensor Tensor::to(Device d, DType t) const {
  if (d == device() && t == dtype()) return *this;
  return copy_to(*this, d, t, "to");
}

namespace {
void check_inplace(const Tensor& t, const char* op) {
  BB_CHECK(!(grad_enabled() && t.requires_grad()), ValueError,
           "{}: in-place op on a tensor of shape {} that requires grad (use NoGradGuard or detach())", op,
           shape_str(t.shape()));
}
}  // namespace

Tensor& Tensor::copy_(const Tensor& src) {
  check_inplace(*this, "copy_");
  detail::check_defined("copy_", {&src});
  BB_CHECK(broadcast_shapes(shape(), src.shape(), "copy_") == shape(), ShapeError,
           "copy_: source of shape {} does not broadcast to {}", shape_str(src.shape()), shape_str(shape()));
  detail::check_writable("copy_", *this);
  detail::check_float_to_int("copy_", src, dtype());
  if (is_cpu() && src.is_cpu()) {
    cpu::copy(*this, detail::unalias(*this, src));
  } else if (is_cpu()) {
    cpu::copy(*this, src.to(Device::cpu()));  // from the GPU: bring it over, then a strided CPU copy
  } else {
    // Onto this GPU first (a no-op when it is there), then a strided, casting,
    // broadcasting copy there.
    Tensor s = src.device() == device() ? detail::unalias(*this, src) : src.to(device());
    BB_GPU("copy_", *this, gpu::copy(*this, s));
  }
  bump_version();
  return *this;
}

namespace {
// Writes `value` into every element of `t` (any layout, any device), exactly: an
// integer beyond 2^53 would lose its low bits on the way through double, so it goes
// through a one-element i64 tensor instead.
void fill_exact(const Tensor& t, const Scalar& value, const char* op) {
  detail::check_scalar_for(op, value, t.dtype());
  if (t.numel() == 0) return;
  if (value.is_integral() && (t.dtype() == DType::I64 || t.dtype() == DType::I32)) {
    const int64_t v = value.to_int64();
    if (v > (int64_t{1} << 53) || v < -(int64_t{1} << 53)) {
      Tensor src = from_vector<int64_t>({v}, {});
      if (t.is_cpu())
        cpu::copy(t, src);
      else
        BB_GPU(op, t, gpu::copy(t, src.to(t.device())));
      return;
    }
  }
  const double d = value.to_double();
  if (t.is_cpu())
    cpu::fill(t, d);
  else
    BB_GPU(op, t, gpu::fill(t, d));
}
}  // namespace

Tensor& Tensor::fill_(Scalar value) {
  check_inplace(*this, "fill_");
  // Every element gets the same value, so an expanded view is fine (as in PyTorch).
  fill_exact(*this, value, "fill_");
  bump_version();
  return *this;
}

Tensor& Tensor::add_(const Tensor& other, double alpha) {
  check_inplace(*this, "add_");
  detail::check_defined("add_", {&other});
  BB_CHECK(other.dtype() == dtype(), DTypeError, "add_: dtypes differ: self is {}, other is {}", dtype_name(dtype()),
           dtype_name(other.dtype()));
  BB_CHECK(other.device() == device(), DeviceError, "add_: tensors on different devices: self {} on {}, other {} on {}",
           shape_str(shape()), device().str(), shape_str(other.shape()), other.device().str());
  BB_CHECK(broadcast_shapes(shape(), other.shape(), "add_") == shape(), ShapeError,
           "add_: other of shape {} does not broadcast to {}", shape_str(other.shape()), shape_str(shape()));
  BB_CHECK(is_floating(dtype()) || (alpha == std::trunc(alpha) && std::abs(alpha) < 9223372036854775808.0),
           DTypeError, "add_: alpha {} is not an integer, so the result cannot be stored in the {} tensor {}",
           alpha, dtype_name(dtype()), shape_str(shape()));
  detail::check_writable("add_", *this);
  Tensor o = detail::unalias(*this, other);
  if (is_cpu())
    cpu::binary(cpu::BinaryOp::Add, *this, *this, o, alpha);
  else
    BB_GPU("add_", *this, gpu::binary(cpu::BinaryOp::Add, *this, *this, o, alpha));
  bump_version();
  return *this;
}

Tensor& Tensor::mul_(Scalar value) {
  check_inplace(*this, "mul_");
  detail::check_writable("mul_", *this);
  if (is_floating(dtype())) {
    if (is_cpu())
      cpu::unary(cpu::UnaryOp::MulScalar, *this, *this, value.to_double());
    else
      BB_GPU("mul_", *this, gpu::unary(cpu::UnaryOp::MulScalar, *this, *this, value.to_double()));
  } else {
    BB_CHECK(
        !value.is_floating() && dtype() != DType::Bool, DTypeError,
        "mul_: the product of the {} tensor {} and the scalar {} is {}, which cannot be stored in place (use "
        "mul() or to() first)",
        dtype_name(dtype()), shape_str(shape()), value.str(),
        dtype_name(detail::promote_scalar(*this, value)));
    // Exact integer arithmetic: the binary kernel computes integers in int64.
    Tensor s = scalar_tensor(value, {dtype(), device()});
    if (is_cpu())
      cpu::binary(cpu::BinaryOp::Mul, *this, *this, s, 1.0);
    else
      BB_GPU("mul_", *this, gpu::binary(cpu::BinaryOp::Mul, *this, *this, s, 1.0));
  }
  bump_version();
  return *this;
}

void Tensor::set_data(const Tensor& other) {
  auto& im = impl();
  auto& o = other.impl();
  im.storage = o.storage;
  im.shape = o.shape;
  im.strides = o.strides;
  im.offset = o.offset;
  im.dtype = o.dtype;
}

// ---- autograd glue -----------------------------------------------------------------

Tensor& Tensor::requires_grad_(bool on) {
  BB_CHECK(!on || is_floating(dtype()), DTypeError, "requires_grad_: only floating tensors can require grad, got {}",
           dtype_name(dtype()));
  BB_CHECK(is_leaf() || on, ValueError, "requires_grad_: cannot turn off grad on a non-leaf tensor (use detach())");
  impl().requires_grad = on;
  return *this;
}

void Tensor::set_grad(const Tensor& g) {
  if (!g.defined()) {
    impl().grad.reset();
    return;
  }
  BB_CHECK(g.shape() == shape(), ShapeError, "set_grad: grad of shape {} ({}) for a tensor of shape {} ({})",
           shape_str(g.shape()), dtype_name(g.dtype()), shape_str(shape()), dtype_name(dtype()));
  BB_CHECK(g.dtype() == dtype(), DTypeError, "set_grad: grad of shape {} ({}) for a tensor of shape {} ({})",
           shape_str(g.shape()), dtype_name(g.dtype()), shape_str(shape()), dtype_name(dtype()));
  impl().grad = g.impl_ptr();
}

void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  autograd::backward({*this}, {grad}, retain_graph);
}

Tensor Tensor::detach() const {
  auto im = std::make_shared<TensorImpl>();
  auto& s = impl();
  im->storage = s.storage;
  im->shape = s.shape;
  im->strides = s.strides;
  im->offset = s.offset;
  im->dtype = s.dtype;
  return Tensor(im);
}

void Tensor::register_grad_ready_hook(GradHook hook) {
  BB_CHECK(is_leaf() && requires_grad(), ValueError,
           "register_grad_ready_hook: only leaf tensors that require grad have gradient-ready hooks");
  impl().grad_ready_hooks.push_back(std::move(hook));
}

// ---- method forms of ops ---------------------------------------------------------------

Tensor Tensor::sum() const { return barbell::sum(*this); }
Tensor Tensor::sum(const Shape& dims, bool keepdim) const { return barbell::sum(*this, dims, keepdim); }
Tensor Tensor::mean() const { return barbell::mean(*this); }
Tensor Tensor::mean(const Shape& dims, bool keepdim) const { return barbell::mean(*this, dims, keepdim); }
Tensor Tensor::exp() const { return barbell::exp(*this); }
Tensor Tensor::log() const { return barbell::log(*this); }
Tensor Tensor::sqrt() const { return barbell::sqrt(*this); }
Tensor Tensor::pow(double e) const { return barbell::pow(*this, e); }
Tensor Tensor::matmul(const Tensor& o) const { return barbell::matmul(*this, o); }

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator+(const Tensor& a, Scalar b) { return add(a, b); }
Tensor operator-(const Tensor& a, Scalar b) { return sub(a, b); }
Tensor operator*(const Tensor& a, Scalar b) { return mul(a, b); }
Tensor operator/(const Tensor& a, Scalar b) {
  detail::check_defined("div", {&a});
  // A floating tensor multiplies by the reciprocal (what training has always computed);
  // an integer one is divided truly, in f32.
  if (is_floating(a.dtype())) return mul(a, 1.0 / b.to_double());
  Tensor af = a.to(DType::F32);
  return div(af, full({}, b, {DType::F32, a.device()}));
}
Tensor operator+(Scalar a, const Tensor& b) { return add(b, a); }
Tensor operator-(Scalar a, const Tensor& b) { return rsub(b, a); }
Tensor operator*(Scalar a, const Tensor& b) { return mul(b, a); }
Tensor operator/(Scalar a, const Tensor& b) { return rdiv(b, a); }
Tensor operator-(const Tensor& a) { return neg(a); }
std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

// ---- factories -------------------------------------------------------------------------

Tensor empty(const Shape& shape, TensorOptions opts) { return detail::empty_for("empty", shape, opts); }

namespace {
Tensor full_for(const char* op, const Shape& shape, const Scalar& value, const TensorOptions& opts) {
  detail::check_scalar_for(op, value, opts.dtype);
  Tensor t = detail::empty_for(op, shape, {opts.dtype, opts.device});
  fill_exact(t, value, op);
  if (opts.requires_grad) t.requires_grad_(true);
  return t;
}
}  // namespace

Tensor full(const Shape& shape, Scalar value, TensorOptions opts) {
  return full_for("full", shape, value, opts);
}
Tensor full(const Shape& shape, Scalar value) { return full(shape, value, {default_dtype_for(value)}); }
Tensor zeros(const Shape& shape, TensorOptions opts) { return full_for("zeros", shape, 0, opts); }
Tensor ones(const Shape& shape, TensorOptions opts) { return full_for("ones", shape, 1, opts); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.options()); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), t.options()); }
Tensor empty_like(const Tensor& t) { return empty(t.shape(), t.options()); }
Tensor scalar_tensor(Scalar value, TensorOptions opts) { return full({}, value, opts); }

namespace {
DType arange_dtype(const Scalar& start, const Scalar& end, const Scalar& step) {
  return start.is_floating() || end.is_floating() || step.is_floating() ? DType::F32 : DType::I64;
}

// Fills t [n] (CPU, contiguous) with start + i * step: integers exactly, floating values
// computed in double and rounded once into T.
template <typename T, typename V>
void arange_fill(const Tensor& t, V start, V step) {
  T* p = static_cast<T*>(t.data_ptr());
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_integral_v<V>) {
      // In uint64, which wraps instead of overflowing: each true value is in range, the
      // partial product i * step need not be.
      const uint64_t v =
          static_cast<uint64_t>(start) + static_cast<uint64_t>(i) * static_cast<uint64_t>(step);
      p[i] = static_cast<T>(static_cast<int64_t>(v));
    } else {
      const double v = start + static_cast<double>(i) * step;
      if constexpr (std::is_same_v<T, double>)
        p[i] = v;
      else
        p[i] = T(static_cast<float>(v));
    }
  }
}
}  // namespace

Tensor arange(Scalar start, Scalar end, Scalar step, TensorOptions opts) {
  const char* op = "arange";
  const DType dt = opts.dtype;
  BB_CHECK(dt != DType::Bool, DTypeError, "arange: not defined for bool (start={} end={} step={})",
           start.str(), end.str(), step.str());
  const bool exact = !start.is_floating() && !end.is_floating() && !step.is_floating();
  int64_t n = 0;
  if (exact) {
    // Integers: the count in 128 bits, so no difference or quotient can overflow.
    const __int128 a = start.to_int64(), b = end.to_int64(), s = step.to_int64();
    BB_CHECK(s != 0, ValueError, "arange: step must not be zero (start={} end={})", start.str(), end.str());
    BB_CHECK((b - a == 0) || ((b - a > 0) == (s > 0)), ValueError,
             "arange: the step {} goes away from end {} (start {})", step.str(), end.str(), start.str());
    const __int128 count = s > 0 ? (b - a + s - 1) / s : (a - b + (-s) - 1) / (-s);
    BB_CHECK(count <= std::numeric_limits<int64_t>::max(), ValueError,
             "arange: start={} end={} step={} gives more elements than int64 can count", start.str(),
             end.str(), step.str());
    n = static_cast<int64_t>(count);
  } else {
    const double a = start.to_double(), b = end.to_double(), s = step.to_double();
    BB_CHECK(std::isfinite(a) && std::isfinite(b) && std::isfinite(s), ValueError,
             "arange: start={} end={} step={} must be finite", start.str(), end.str(), step.str());
    BB_CHECK(s != 0 && (b - a) / s >= 0, ValueError, "arange: bad range start={} end={} step={}", start.str(),
             end.str(), step.str());
    BB_CHECK(!is_integral(dt), DTypeError,
             "arange: start={} end={} step={} are not all integers, but the dtype is {} (pass a "
             "floating dtype, or integer arguments)",
             start.str(), end.str(), step.str(), dtype_name(dt));
    const double count = std::ceil((b - a) / s);
    // Compared before the cast: a count past int64 is undefined behaviour to convert.
    BB_CHECK(count < 9223372036854775808.0, ValueError,
             "arange: start={} end={} step={} gives {} elements, more than int64 can count", start.str(),
             end.str(), step.str(), count);
    n = static_cast<int64_t>(count);
  }
  // Computed on the host in the target dtype, then moved.
  Tensor t = detail::empty_for(op, {n}, {dt, Device::cpu()});
  if (exact && is_integral(dt)) {
    const int64_t a = start.to_int64(), s = step.to_int64();
    if (dt == DType::I32) {
      // The first and the last values are the extremes; both must fit.
      const __int128 last = static_cast<__int128>(a) + static_cast<__int128>(n > 0 ? n - 1 : 0) * s;
      for (__int128 v : {static_cast<__int128>(a), last})
        BB_CHECK(
            n == 0 || (v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max()),
            ValueError, "arange: start={} end={} step={} has values outside i32", start.str(), end.str(),
            step.str());
      arange_fill<int32_t>(t, a, s);
    } else {
      arange_fill<int64_t>(t, a, s);
    }
  } else {
    const double a = start.to_double(), s = step.to_double();
    switch (dt) {
      case DType::F32: arange_fill<float>(t, a, s); break;
      case DType::F64: arange_fill<double>(t, a, s); break;
      case DType::BF16: arange_fill<BFloat16>(t, a, s); break;
      case DType::F16: arange_fill<Half>(t, a, s); break;
      default: throw DTypeError(fmt::format("arange: unexpected dtype {}", dtype_name(dt)));
    }
  }
  if (!opts.device.is_cpu()) t = t.to(opts.device);
  if (opts.requires_grad) t.requires_grad_(true);
  return t;
}
Tensor arange(Scalar start, Scalar end, Scalar step) {
  return arange(start, end, step, {arange_dtype(start, end, step)});
}
Tensor arange(Scalar end) { return arange(0, end, 1); }
Tensor arange(Scalar end, TensorOptions opts) { return arange(0, end, 1, opts); }

template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions opts) {
  detail::check_shape("from_vector", shape, opts.dtype);
  BB_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), ShapeError,
           "from_vector: {} values for shape {} ({} elements)", values.size(), shape_str(shape), shape_numel(shape));
  if constexpr (std::is_floating_point_v<T> || std::is_same_v<T, BFloat16> || std::is_same_v<T, Half>) {
    if (opts.dtype == DType::I32 || opts.dtype == DType::I64) {
      for (size_t i = 0; i < values.size(); ++i)
        detail::check_scalar_for("from_vector", values[i], opts.dtype);
    }
  }
  // Wrap the host data without a copy, then convert (copy) into the requested tensor.
  Tensor src = from_blob(const_cast<T*>(values.data()), shape, dtype_of<T>::value);
  Tensor out = detail::empty_for("from_vector", shape, {opts.dtype, Device::cpu()});
  cpu::copy(out, src);
  if (opts.device.is_cuda()) out = out.to(opts.device);
  if (opts.requires_grad) out.requires_grad_(true);
  return out;
}
template Tensor from_vector<float>(const std::vector<float>&, const Shape&, TensorOptions);
template Tensor from_vector<double>(const std::vector<double>&, const Shape&, TensorOptions);
template Tensor from_vector<int32_t>(const std::vector<int32_t>&, const Shape&, TensorOptions);
template Tensor from_vector<int64_t>(const std::vector<int64_t>&, const Shape&, TensorOptions);
template Tensor from_vector<BFloat16>(const std::vector<BFloat16>&, const Shape&, TensorOptions);
template Tensor from_vector<Half>(const std::vector<Half>&, const Shape&, TensorOptions);
template <>
Tensor from_vector<bool>(const std::vector<bool>& values, const Shape& shape, TensorOptions opts) {
  std::vector<int32_t> v(values.begin(), values.end());
  return from_vector(v, shape, opts);
}

Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device) {
  detail::check_shape("from_blob", shape, dtype);
  BB_CHECK(data != nullptr || shape_numel(shape) == 0, ValueError,
           "from_blob: null data for a tensor of shape {}", shape_str(shape));
  auto im = std::make_shared<TensorImpl>();
  im->storage = std::make_shared<Storage>(data, static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device,
                                          nullptr);
  im->shape = shape;
  im->strides = contiguous_strides(shape);
  im->dtype = dtype;
  return Tensor(im);
}

// ---- printing ------------------------------------------------------------------------------

namespace {
void print_rec(std::string& s, const std::vector<double>& v, const Shape& shape, size_t d, int64_t base,
               bool is_float, bool summarize) {
  if (shape.empty()) {
    s += is_float ? fmt::format("{:.4g}", v[0]) : fmt::format("{}", static_cast<int64_t>(v[0]));
    return;
  }
  int64_t stride = 1;
  for (size_t k = d + 1; k < shape.size(); ++k) stride *= shape[k];
  s += '[';
  int64_t n = shape[d];
  for (int64_t i = 0; i < n; ++i) {
    if (summarize && n > 6 && i == 3) {
      s += "..., ";
      i = n - 3;
    }
    if (d + 1 == shape.size()) {
      double x = v[static_cast<size_t>(base + i)];
      s += is_float ? fmt::format("{:.4g}", x) : fmt::format("{}", static_cast<int64_t>(x));
    } else {
      print_rec(s, v, shape, d + 1, base + i * stride, is_float, summarize);
    }
    if (i + 1 < n) s += d + 1 == shape.size() ? ", " : ",\n" + std::string(d + 8, ' ');
  }
  s += ']';
}
}  // namespace

std::string Tensor::str() const {
  if (!defined()) return "tensor(undefined)";
  std::vector<double> v = to_vector<double>();
  std::string s = "tensor(";
  print_rec(s, v, shape(), 0, 0, is_floating(dtype()), numel() > 1000);
  s += fmt::format(", shape={}, dtype={}", shape_str(shape()), dtype_name(dtype()));
  if (!is_cpu()) s += ", device=" + device().str();
  if (requires_grad()) s += ", requires_grad";
  s += ')';
  return s;
}

}  // namespace barbell

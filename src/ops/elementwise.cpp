// Elementwise ops with broadcasting: binary, scalar, unary activations, where/eq,
// and their backward formulas (written with ops so they run on any backend).
#include <cmath>
#include <limits>

#include "cpu/cpu.hpp"
#include "ops/common.hpp"

namespace barbell {

using detail::check_floating;
using detail::check_same_device;
using detail::check_same_dtype;

namespace {

// The output has a's dtype, or Bool for comparisons.
Tensor binary_forward(cpu::BinaryOp op, const char* name, const Tensor& a, const Tensor& b, double alpha,
                      bool bool_out = false) {
  detail::check_defined(name, {&a, &b});
  check_same_device(name, a, b);
  check_same_dtype(name, a, b);
  Shape s = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = detail::empty_for(name, s, {bool_out ? DType::Bool : a.dtype(), a.device()});
  if (a.is_cpu()) cpu::binary(op, out, a, b, alpha);
  else BB_GPU(name, a, gpu::binary(op, out, a, b, alpha));
  return out;
}

Tensor unary_forward(cpu::UnaryOp op, const char* name, const Tensor& x, double scalar = 0.0) {
  detail::check_defined(name, {&x});
  BB_CHECK(x.dtype() != DType::Bool, DTypeError, "{}: not defined on bool tensors, got {} {}", name,
           dtype_name(x.dtype()), shape_str(x.shape()));
  Tensor out = detail::empty_for(name, x.shape(), {x.dtype(), x.device()});
  if (x.is_cpu()) cpu::unary(op, out, x, scalar);
  else BB_GPU(name, x, gpu::unary(op, out, x, scalar));
  return out;
}

// Integer (and bool) operands of a scalar op: the scalar becomes a 0-d tensor of the
// result dtype and the binary kernel computes in int64, exactly.
Tensor int_scalar_op(cpu::BinaryOp op, const char* name, const Tensor& a, const Scalar& s, DType rt,
                     bool reversed) {
  BB_CHECK(rt != DType::Bool, DTypeError,
           "{}: a bool tensor {} with the bool scalar {}: convert one with to()", name, shape_str(a.shape()),
           s.str());
  detail::check_scalar_for(name, s, rt);
  Tensor x = a.dtype() == rt ? a : a.to(rt);
  Tensor st = scalar_tensor(s, {rt, a.device()});
  return reversed ? binary_forward(op, name, st, x, 1.0) : binary_forward(op, name, x, st, 1.0);
}

// Integer powers, exactly: on the host in int64 by repeated squaring, with negative
// exponents refused and overflow reported (a GPU tensor makes a round trip; integer
// powers are rare and this keeps one definition of what they mean).
Tensor int_pow(const char* name, const Tensor& a, const Tensor& b) {
  Shape s = broadcast_shapes(a.shape(), b.shape(), name);
  const DType dt = a.dtype();
  std::vector<int64_t> va = a.expand(s).to_vector<int64_t>(), vb = b.expand(s).to_vector<int64_t>();
  const int64_t lo =
      dt == DType::I32 ? std::numeric_limits<int32_t>::min() : std::numeric_limits<int64_t>::min();
  const int64_t hi =
      dt == DType::I32 ? std::numeric_limits<int32_t>::max() : std::numeric_limits<int64_t>::max();
  for (size_t i = 0; i < va.size(); ++i) {
    const int64_t base = va[i];
    BB_CHECK(vb[i] >= 0, ValueError,
             "{}: integers to negative integer powers are not allowed ({}^{} at element {})", name, base,
             vb[i], i);
    auto e = static_cast<uint64_t>(vb[i]);
    int64_t r = 1, p = base;
    bool overflow = false;
    while (e && !overflow) {
      if (e & 1) overflow = __builtin_mul_overflow(r, p, &r);
      e >>= 1;
      // A further square is needed only for a further bit, which would use it.
      if (e && !overflow) overflow = __builtin_mul_overflow(p, p, &p);
    }
    BB_CHECK(!overflow && r >= lo && r <= hi, ValueError, "{}: {}^{} (element {}) overflows {}", name, base,
             vb[i], i, dtype_name(dt));
    va[i] = r;
  }
  return from_vector(va, s, {dt, a.device()});
}

// exp, log, ... of an integer or bool tensor compute in f32, as PyTorch promotes them.
Tensor to_float(const char* op, const Tensor& x) {
  detail::check_defined(op, {&x});
  return is_floating(x.dtype()) ? x : x.to(DType::F32);
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b, double alpha) {
  detail::check_defined("add", {&a, &b});
  BB_CHECK(is_floating(a.dtype()) || (alpha == std::trunc(alpha) && std::abs(alpha) < 9223372036854775808.0),
           DTypeError, "add: alpha {} is not an integer, so a {} {} + alpha * {} would not be one", alpha,
           dtype_name(a.dtype()), shape_str(a.shape()), shape_str(b.shape()));
  Tensor out = binary_forward(cpu::BinaryOp::Add, "add", a, b, alpha);
  Shape sa = a.shape(), sb = b.shape();
  autograd::record("add", out, {a, b}, [sa, sb, alpha](const Tensor& g) -> std::vector<Tensor> {
    return {sum_to(g, sa), sum_to(alpha == 1.0 ? g : mul(g, alpha), sb)};
  });
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(cpu::BinaryOp::Sub, "sub", a, b, 1.0);
  Shape sa = a.shape(), sb = b.shape();
  autograd::record("sub", out, {a, b}, [sa, sb](const Tensor& g) -> std::vector<Tensor> {
    return {sum_to(g, sa), sum_to(neg(g), sb)};
  });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(cpu::BinaryOp::Mul, "mul", a, b, 1.0);
  bool ga = a.requires_grad(), gb = b.requires_grad();
  Tensor ad = ga || gb ? a.detach() : Tensor(), bd = ga || gb ? b.detach() : Tensor();
  autograd::record("mul", out, {a, b},
                   [ad, bd, ga, gb](const Tensor& g) -> std::vector<Tensor> {
                     return {ga ? sum_to(mul(g, bd), ad.shape()) : Tensor(),
                             gb ? sum_to(mul(g, ad), bd.shape()) : Tensor()};
                   },
                   {{&ad, "input 0"}, {&bd, "input 1"}});
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  // Integer division would trap (SIGFPE) on a zero divisor; true division needs floats.
  detail::check_defined("div", {&a, &b});
  BB_CHECK(is_floating(a.dtype()) && is_floating(b.dtype()), DTypeError,
           "div: expected floating tensors, got {} {} and {} {} (convert integers with to())",
           dtype_name(a.dtype()), shape_str(a.shape()), dtype_name(b.dtype()), shape_str(b.shape()));
  Tensor out = binary_forward(cpu::BinaryOp::Div, "div", a, b, 1.0);
  bool ga = a.requires_grad(), gb = b.requires_grad();
  Tensor ad = a.detach(), bd = b.detach();
  autograd::record("div", out, {a, b},
                   [ad, bd, ga, gb](const Tensor& g) -> std::vector<Tensor> {
                     Tensor gdb = div(g, bd);
                     return {ga ? sum_to(gdb, ad.shape()) : Tensor(),
                             gb ? sum_to(neg(mul(gdb, div(ad, bd))), bd.shape()) : Tensor()};
                   },
                   {{&ad, "input 0"}, {&bd, "input 1"}});
  return out;
}

Tensor pow(const Tensor& a, const Tensor& b) {
  detail::check_defined("pow", {&a, &b});
  if (!is_floating(a.dtype()) && a.dtype() == b.dtype() && a.device() == b.device()) {
    BB_CHECK(a.dtype() != DType::Bool, DTypeError, "pow: not defined on bool tensors ({} and {})",
             shape_str(a.shape()), shape_str(b.shape()));
    return int_pow("pow", a, b);
  }
  Tensor out = binary_forward(cpu::BinaryOp::Pow, "pow", a, b, 1.0);
  bool ga = a.requires_grad(), gb = b.requires_grad();
  Tensor ad = a.detach(), bd = b.detach(), od = out.detach();
  autograd::record("pow", out, {a, b},
                   [ad, bd, od, ga, gb](const Tensor& g) -> std::vector<Tensor> {
                     Tensor da, db;
                     if (ga) da = sum_to(mul(g, mul(bd, pow(ad, add(bd, -1.0)))), ad.shape());
                     if (gb) db = sum_to(mul(g, mul(od, log(ad))), bd.shape());
                     return {da, db};
                   },
                   {{&ad, "input 0"}, {&bd, "input 1"}, {&od, "result"}});
  return out;
}

Tensor eq(const Tensor& a, const Tensor& b) {
  return binary_forward(cpu::BinaryOp::Eq, "eq", a, b, 1.0, true);
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  detail::check_defined("where", {&cond, &a, &b});
  BB_CHECK(cond.dtype() == DType::Bool, DTypeError, "where: condition must be bool, got {} {}",
           dtype_name(cond.dtype()), shape_str(cond.shape()));
  check_same_device("where", cond, a);
  check_same_device("where", a, b);
  check_same_dtype("where", a, b);
  Shape s = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor out = empty(s, a.options());
  if (a.is_cpu()) cpu::where(out, cond, a, b);
  else BB_GPU("where", a, gpu::where(out, cond, a, b));
  Tensor cd = cond.detach();
  Shape sa = a.shape(), sb = b.shape();
  autograd::record("where", out, {a, b},
                   [cd, sa, sb](const Tensor& g) -> std::vector<Tensor> {
                     Tensor z = zeros({}, g.options());
                     return {sum_to(where(cd, g, z), sa), sum_to(where(cd, z, g), sb)};
                   },
                   {{&cd, "condition"}});
  return out;
}

// ---- scalar forms ---------------------------------------------------------------
// A floating tensor runs the scalar kernels; integer and bool tensors promote (see
// detail::promote_scalar): to f32 with a floating scalar, else exact integer arithmetic.

Tensor add(const Tensor& a, Scalar b) {
  detail::check_defined("add", {&a});
  const DType rt = detail::promote_scalar(a, b);
  if (!is_floating(rt)) return int_scalar_op(cpu::BinaryOp::Add, "add", a, b, rt, false);
  if (!is_floating(a.dtype())) return add(a.to(rt), b);
  Tensor out = unary_forward(cpu::UnaryOp::AddScalar, "add", a, b.to_double());
  autograd::record("add_scalar", out, {a}, [](const Tensor& g) -> std::vector<Tensor> { return {g}; });
  return out;
}

Tensor sub(const Tensor& a, Scalar b) {
  detail::check_defined("sub", {&a});
  const DType rt = detail::promote_scalar(a, b);
  if (!is_floating(rt)) return int_scalar_op(cpu::BinaryOp::Sub, "sub", a, b, rt, false);
  return add(a, -b.to_double());
}

Tensor mul(const Tensor& a, Scalar b) {
  detail::check_defined("mul", {&a});
  const DType rt = detail::promote_scalar(a, b);
  if (!is_floating(rt)) return int_scalar_op(cpu::BinaryOp::Mul, "mul", a, b, rt, false);
  if (!is_floating(a.dtype())) return mul(a.to(rt), b);
  const double v = b.to_double();
  Tensor out = unary_forward(cpu::UnaryOp::MulScalar, "mul", a, v);
  autograd::record("mul_scalar", out, {a},
                   [v](const Tensor& g) -> std::vector<Tensor> { return {mul(g, v)}; });
  return out;
}

Tensor pow(const Tensor& a, Scalar exponent) {
  detail::check_defined("pow", {&a});
  const DType rt = detail::promote_scalar(a, exponent);
  if (!is_floating(rt)) {
    BB_CHECK(rt != DType::Bool, DTypeError, "pow: a bool tensor {} with the bool exponent {}",
             shape_str(a.shape()), exponent.str());
    Tensor x = a.dtype() == rt ? a : a.to(rt);
    return int_pow("pow", x, scalar_tensor(exponent, {rt, a.device()}));
  }
  if (!is_floating(a.dtype())) return pow(a.to(rt), exponent);
  const double e = exponent.to_double();
  Tensor out = unary_forward(cpu::UnaryOp::PowScalar, "pow", a, e);
  Tensor ad = a.detach();
  autograd::record("pow_scalar", out, {a},
                   [ad, e](const Tensor& g) -> std::vector<Tensor> {
                     if (e == 0.0) return {zeros_like(g)};  // not 0 * x^-1, which is NaN at x = 0
                     return {mul(mul(g, pow(ad, e - 1.0)), e)};
                   },
                   {{&ad, "input 0"}});
  return out;
}

Tensor rsub(const Tensor& a, Scalar b) {
  detail::check_defined("rsub", {&a});
  const DType rt = detail::promote_scalar(a, b);
  if (!is_floating(rt)) return int_scalar_op(cpu::BinaryOp::Sub, "rsub", a, b, rt, true);
  if (!is_floating(a.dtype())) return rsub(a.to(rt), b);
  Tensor out = unary_forward(cpu::UnaryOp::RSubScalar, "rsub", a, b.to_double());
  autograd::record("rsub", out, {a}, [](const Tensor& g) -> std::vector<Tensor> { return {neg(g)}; });
  return out;
}

Tensor rdiv(const Tensor& a, Scalar b) {
  detail::check_defined("rdiv", {&a});
  if (!is_floating(a.dtype())) return rdiv(a.to(DType::F32), b);  // true division
  Tensor out = unary_forward(cpu::UnaryOp::RDivScalar, "rdiv", a, b.to_double());
  Tensor od = out.detach(), ad = a.detach();
  autograd::record("rdiv", out, {a},
                   [od, ad](const Tensor& g) -> std::vector<Tensor> { return {neg(mul(g, div(od, ad)))}; },
                   {{&ad, "input 0"}, {&od, "result"}});
  return out;
}

// ---- unary -------------------------------------------------------------------------

Tensor neg(const Tensor& x) {
  detail::check_defined("neg", {&x});
  if (x.dtype() == DType::I32 || x.dtype() == DType::I64) return rsub(x, 0);  // exact, in int64
  Tensor out = unary_forward(cpu::UnaryOp::Neg, "neg", x);
  autograd::record("neg", out, {x}, [](const Tensor& g) -> std::vector<Tensor> { return {neg(g)}; });
  return out;
}

Tensor exp(const Tensor& x_in) {
  const Tensor x = to_float("exp", x_in);
  check_floating("exp", x);
  Tensor out = unary_forward(cpu::UnaryOp::Exp, "exp", x);
  Tensor od = out.detach();
  autograd::record("exp", out, {x}, [od](const Tensor& g) -> std::vector<Tensor> { return {mul(g, od)}; },
                   {{&od, "result"}});
  return out;
}

Tensor log(const Tensor& x_in) {
  const Tensor x = to_float("log", x_in);
  check_floating("log", x);
  Tensor out = unary_forward(cpu::UnaryOp::Log, "log", x);
  Tensor xd = x.detach();
  autograd::record("log", out, {x}, [xd](const Tensor& g) -> std::vector<Tensor> { return {div(g, xd)}; },
                   {{&xd, "input 0"}});
  return out;
}

Tensor sqrt(const Tensor& x_in) {
  const Tensor x = to_float("sqrt", x_in);
  check_floating("sqrt", x);
  Tensor out = unary_forward(cpu::UnaryOp::Sqrt, "sqrt", x);
  Tensor od = out.detach();
  autograd::record("sqrt", out, {x},
                   [od](const Tensor& g) -> std::vector<Tensor> { return {div(mul(g, 0.5), od)}; },
                   {{&od, "result"}});
  return out;
}

Tensor rsqrt(const Tensor& x_in) {
  const Tensor x = to_float("rsqrt", x_in);
  check_floating("rsqrt", x);
  Tensor out = unary_forward(cpu::UnaryOp::Rsqrt, "rsqrt", x);
  Tensor od = out.detach();
  autograd::record("rsqrt", out, {x},
                   [od](const Tensor& g) -> std::vector<Tensor> { return {mul(mul(g, pow(od, 3.0)), -0.5)}; },
                   {{&od, "result"}});
  return out;
}

Tensor tanh(const Tensor& x_in) {
  const Tensor x = to_float("tanh", x_in);
  check_floating("tanh", x);
  Tensor out = unary_forward(cpu::UnaryOp::Tanh, "tanh", x);
  Tensor od = out.detach();
  autograd::record("tanh", out, {x},
                   [od](const Tensor& g) -> std::vector<Tensor> { return {mul(g, rsub(mul(od, od), 1.0))}; },
                   {{&od, "result"}});
  return out;
}

namespace {
// Activations whose derivative needs x: one fused backward kernel each.
Tensor activation(cpu::UnaryOp op, const char* name, const Tensor& x) {
  check_floating(name, x);
  Tensor out = unary_forward(op, name, x);
  Tensor xd = x.detach();
  autograd::record(name, out, {x},
                   [op, name, xd](const Tensor& g) -> std::vector<Tensor> {
                     Tensor gc = g.dtype() == xd.dtype() ? g : g.to(xd.dtype());
                     Tensor dx = empty(xd.shape(), xd.options());
                     (void)name;  // used by BB_GPU only when the CUDA backend is built
                     if (xd.is_cpu())
                       cpu::unary_backward(op, dx, gc, xd);
                     else
                       BB_GPU(name, xd, gpu::unary_backward(op, dx, gc, xd));
                     return {dx};
                   },
                   {{&xd, "input 0"}});
  return out;
}
}  // namespace

Tensor relu(const Tensor& x) { return activation(cpu::UnaryOp::Relu, "relu", x); }
Tensor silu(const Tensor& x) { return activation(cpu::UnaryOp::Silu, "silu", to_float("silu", x)); }
Tensor abs(const Tensor& x) { return activation(cpu::UnaryOp::Abs, "abs", x); }
Tensor gelu(const Tensor& x, GeluApprox approx) {
  return activation(approx == GeluApprox::Tanh ? cpu::UnaryOp::GeluTanh : cpu::UnaryOp::GeluErf, "gelu",
                    to_float("gelu", x));
}

}  // namespace barbell

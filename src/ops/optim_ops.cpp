// The optimizer's fused ops: one AdamW step on a parameter, and the sum of squares
// behind global-norm gradient clipping.
#include "cpu/cpu.hpp"
#include "ops/common.hpp"

namespace barbell {

void adamw_step_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWParams& p) {
  const char* op = "adamw_step_";
  detail::check_defined(op, {&param, &grad, &exp_avg, &exp_avg_sq});
  detail::check_floating(op, param);
  detail::check_same_device(op, param, grad);
  detail::check_same_device(op, param, exp_avg);
  detail::check_same_device(op, param, exp_avg_sq);
  detail::check_same_dtype(op, param, grad);
  DType state = param.dtype() == DType::F64 ? DType::F64 : DType::F32;
  for (const Tensor* t : std::initializer_list<const Tensor*>{&grad, &exp_avg, &exp_avg_sq}) {
    BB_CHECK(t->shape() == param.shape() && t->is_contiguous(), ShapeError,
             "{}: param is {}, but a grad or state tensor is {} (must match and be contiguous)", op,
             shape_str(param.shape()), shape_str(t->shape()));
  }
  BB_CHECK(exp_avg.dtype() == state && exp_avg_sq.dtype() == state, DTypeError,
           "{}: moments must be {} for a {} parameter", op, dtype_name(state), dtype_name(param.dtype()));
  BB_CHECK(param.is_contiguous(), ShapeError, "{}: param {} must be contiguous", op, shape_str(param.shape()));
  BB_CHECK(p.step >= 1, ValueError, "{}: step is 1-based, got {}", op, p.step);
  detail::require_cpu(op, param);
  cpu::adamw_step(param, grad, exp_avg, exp_avg_sq, p);
}

double sum_of_squares(const std::vector<Tensor>& xs) {
  double total = 0;
  for (auto& x : xs) {
    if (!x.defined()) continue;
    detail::require_cpu("sum_of_squares", x);
    total += cpu::sum_of_squares(x.contiguous());
  }
  return total;
}

}  // namespace barbell

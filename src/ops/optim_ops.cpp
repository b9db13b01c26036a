// The optimizer's fused ops: one AdamW step on a parameter, and the sum of squares
// behind global-norm gradient clipping.
#include <map>

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
  if (param.is_cpu()) {
    cpu::adamw_step(param, grad, exp_avg, exp_avg_sq, p);
  } else {
    BB_GPU(op, param, {
      gpu::AdamWItem it{param, grad, exp_avg, exp_avg_sq, Tensor(), p.step, p.weight_decay};
      gpu::adamw_multi({it}, p.lr, p.beta1, p.beta2, p.eps);
    });
  }
}

void adamw_multi_step_(const std::vector<AdamWTensors>& items, double lr, double beta1, double beta2, double eps) {
  const char* op = "adamw_multi_step_";
  // Check everything before changing anything.
  for (const auto& it : items) {
    detail::check_defined(op, {&it.param, &it.grad, &it.exp_avg, &it.exp_avg_sq});
    detail::check_floating(op, it.param);
    detail::check_same_device(op, it.param, it.grad);
    detail::check_same_device(op, it.param, it.exp_avg);
    detail::check_same_device(op, it.param, it.exp_avg_sq);
    detail::check_same_dtype(op, it.param, it.grad);
    DType state = it.param.dtype() == DType::F64 ? DType::F64 : DType::F32;
    for (const Tensor* t : {&it.param, &it.grad, &it.exp_avg, &it.exp_avg_sq}) {
      BB_CHECK(t->shape() == it.param.shape() && t->is_contiguous(), ShapeError,
               "{}: param is {}, but a grad or state tensor is {} (all must match and be contiguous)", op,
               shape_str(it.param.shape()), shape_str(t->shape()));
    }
    BB_CHECK(it.exp_avg.dtype() == state && it.exp_avg_sq.dtype() == state, DTypeError,
             "{}: moments must be {} for a {} parameter of shape {}", op, dtype_name(state),
             dtype_name(it.param.dtype()), shape_str(it.param.shape()));
    if (it.master.defined()) {
      detail::check_same_device(op, it.param, it.master);
      BB_CHECK(it.master.dtype() == DType::F32 && it.master.shape() == it.param.shape() && it.master.is_contiguous(),
               DTypeError, "{}: master weights must be a contiguous f32 {}, got {} {}", op,
               shape_str(it.param.shape()), dtype_name(it.master.dtype()), shape_str(it.master.shape()));
    }
    BB_CHECK(it.step >= 1, ValueError, "{}: step is 1-based, got {} for a parameter of shape {}", op, it.step,
             shape_str(it.param.shape()));
  }
  std::map<int, std::vector<gpu::AdamWItem>> on_gpu;
  for (const auto& it : items) {
    if (it.param.is_cpu()) {
      AdamWParams p{lr, beta1, beta2, eps, it.weight_decay, it.step};
      if (it.master.defined()) {
        // Update the fp32 master from the gradient in fp32, then round into param.
        cpu::adamw_step(it.master, it.grad.to(DType::F32), it.exp_avg, it.exp_avg_sq, p);
        cpu::copy(it.param, it.master);
      } else {
        cpu::adamw_step(it.param, it.grad, it.exp_avg, it.exp_avg_sq, p);
      }
    } else {
      on_gpu[it.param.device().index()].push_back(
          {it.param, it.grad, it.exp_avg, it.exp_avg_sq, it.master, it.step, it.weight_decay});
    }
  }
  for (auto& [dev, list] : on_gpu) {
    BB_GPU(op, list.front().param, gpu::adamw_multi(list, lr, beta1, beta2, eps));
  }
}

double sum_of_squares(const std::vector<Tensor>& xs) {
  double total = 0;
  std::map<int, std::vector<Tensor>> on_gpu;
  for (auto& x : xs) {
    if (!x.defined()) continue;
    if (x.is_cpu()) total += cpu::sum_of_squares(x.contiguous());
    else on_gpu[x.device().index()].push_back(x.contiguous());
  }
  for (auto& [dev, list] : on_gpu) {
    BB_GPU("sum_of_squares", list.front(), {
      Tensor out = empty({}, {DType::F32, list.front().device()});
      gpu::sum_of_squares(out, list);
      total += out.item<double>();
    });
  }
  return total;
}

}  // namespace barbell

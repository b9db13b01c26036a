// The optimizer's fused ops: one AdamW step on a parameter, and the sum of squares
// behind global-norm gradient clipping.
#include <algorithm>
#include <map>

#include "cpu/cpu.hpp"
#include "ops/common.hpp"

namespace barbell {

namespace {
// The tensors an AdamW step writes must not share memory with each other or with the
// gradient it reads: a parameter listed twice, or moments aliasing the parameter, would
// be updated twice or read after being written.
struct Written {
  const Tensor* t;
  const char* what;
  size_t item;
};
void check_no_aliasing(const char* op, const std::vector<Written>& written,
                       const std::vector<Written>& read) {
  std::vector<const Written*> w;
  for (const Written& x : written)
    if (x.t->defined() && x.t->numel() > 0) w.push_back(&x);
  std::sort(w.begin(), w.end(),
            [](const Written* a, const Written* b) { return a->t->data_ptr() < b->t->data_ptr(); });
  auto fail = [op](const Written& a, const Written& b) {
    throw ValueError(
        fmt::format("{}: the {} of parameter {} (shape {}) and the {} of parameter {} (shape {}) share "
                    "memory (a tensor listed twice, or state aliasing a parameter)",
                    op, a.what, a.item, shape_str(a.t->shape()), b.what, b.item, shape_str(b.t->shape())));
  };
  // Sorted by start, a written tensor can only overlap its successor first.
  for (size_t i = 0; i + 1 < w.size(); ++i)
    if (detail::may_overlap(*w[i]->t, *w[i + 1]->t)) fail(*w[i], *w[i + 1]);
  for (const Written& r : read) {
    if (!r.t->defined()) continue;
    for (const Written& x : written)
      if (x.item == r.item && x.t->defined() && detail::may_overlap(*x.t, *r.t)) fail(x, r);
  }
}
}  // namespace

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
  check_no_aliasing(op, {{&param, "param", 0}, {&exp_avg, "exp_avg", 0}, {&exp_avg_sq, "exp_avg_sq", 0}},
                    {{&grad, "grad", 0}});
  if (param.is_cpu()) {
    cpu::adamw_step(param, grad, exp_avg, exp_avg_sq, p);
  } else {
    BB_GPU(op, param, {
      gpu::AdamWItem it{param, grad, exp_avg, exp_avg_sq, Tensor(), p.step, p.weight_decay};
      gpu::adamw_multi({it}, p.lr, p.beta1, p.beta2, p.eps);
    });
  }
  for (const Tensor* t : {&param, &exp_avg, &exp_avg_sq}) t->bump_version();
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
  {
    std::vector<Written> written, read;
    for (size_t i = 0; i < items.size(); ++i) {
      const AdamWTensors& it = items[i];
      written.push_back({&it.param, "param", i});
      written.push_back({&it.exp_avg, "exp_avg", i});
      written.push_back({&it.exp_avg_sq, "exp_avg_sq", i});
      written.push_back({&it.master, "master", i});
      read.push_back({&it.grad, "grad", i});
    }
    check_no_aliasing(op, written, read);
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
  for (const auto& it : items)
    for (const Tensor* t : {&it.param, &it.exp_avg, &it.exp_avg_sq, &it.master})
      if (t->defined()) t->bump_version();
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

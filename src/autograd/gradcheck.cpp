// Finite-difference gradient check in float64, used by the tests of every
// differentiable op.
#include <cmath>

#include "barbell/autograd/autograd.hpp"
#include "barbell/ops/ops.hpp"

namespace barbell::autograd {

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                          const std::vector<Tensor>& inputs_in, double eps, double atol, double rtol) {
  GradcheckResult res;
  std::vector<Tensor> inputs;
  for (auto& t : inputs_in) {
    if (t.defined() && t.requires_grad()) {
      BB_CHECK(t.dtype() == DType::F64, DTypeError, "gradcheck: inputs that require grad must be f64, got {}",
               dtype_name(t.dtype()));
      Tensor c = t.detach().clone();
      c.requires_grad_(true);
      inputs.push_back(c);
    } else {
      inputs.push_back(t);
    }
  }
  Tensor out0 = f(inputs);
  Generator gen(1234);
  Tensor w = randn(out0.shape(), {DType::F64}, &gen);
  auto scalar = [&](const std::vector<Tensor>& in) { return sum(mul(f(in), w)); };

  Tensor loss = scalar(inputs);
  loss.backward();
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor x = inputs[k];
    if (!x.defined() || !x.requires_grad()) continue;
    Tensor analytic = x.grad().defined() ? x.grad() : zeros_like(x);
    auto a = analytic.to_vector<double>();
    NoGradGuard ng;
    double* p = x.contiguous().data<double>();
    BB_CHECK(x.is_contiguous(), ValueError, "gradcheck: input {} must be contiguous", k);
    for (int64_t i = 0; i < x.numel(); ++i) {
      double orig = p[i];
      p[i] = orig + eps;
      double fp = scalar(inputs).item<double>();
      p[i] = orig - eps;
      double fm = scalar(inputs).item<double>();
      p[i] = orig;
      double num = (fp - fm) / (2 * eps);
      double err = std::abs(num - a[static_cast<size_t>(i)]);
      res.max_abs_error = std::max(res.max_abs_error, err);
      if (std::abs(num) > 0) res.max_rel_error = std::max(res.max_rel_error, err / std::abs(num));
      if (!(err <= atol + rtol * std::abs(num)) && res.ok) {
        res.ok = false;
        res.message = fmt::format("gradcheck: input {} (shape {}) element {}: analytic {} vs numeric {}", k,
                                  shape_str(x.shape()), i, a[static_cast<size_t>(i)], num);
      }
    }
  }
  return res;
}

}  // namespace barbell::autograd

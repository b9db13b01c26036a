// SGD, AdamW, the cosine schedule and gradient clipping. Updates run under
// NoGradGuard through ops (adamw_step_ is one fused kernel per parameter).
#include "barbell/optim/optim.hpp"

#include <cmath>
#include <map>
#include <set>

#include "barbell/autograd/autograd.hpp"
#include "barbell/ops/ops.hpp"
#include "optim/validate.hpp"

namespace barbell::optim {

namespace detail {

void check_lr(const std::string& op, double lr) {
  BB_CHECK(std::isfinite(lr) && lr >= 0, ValueError, "{}: the learning rate must be finite and >= 0, got {}",
           op, lr);
}

void check_adamw_options(const std::string& op, const AdamWOptions& o) {
  check_lr(op, o.lr);
  BB_CHECK(o.beta1 >= 0 && o.beta1 < 1, ValueError, "{}: beta1 must be in [0, 1), got {}", op, o.beta1);
  BB_CHECK(o.beta2 >= 0 && o.beta2 < 1, ValueError, "{}: beta2 must be in [0, 1), got {}", op, o.beta2);
  BB_CHECK(std::isfinite(o.eps) && o.eps > 0, ValueError,
           "{}: eps must be finite and > 0, got {} (with eps = 0 an element whose gradients were all zero "
           "updates by 0 / 0 = NaN)",
           op, o.eps);
  BB_CHECK(std::isfinite(o.weight_decay) && o.weight_decay >= 0, ValueError,
           "{}: weight_decay must be finite and >= 0, got {}", op, o.weight_decay);
}

namespace {
// The elements [first, last] a tensor's view can touch in its storage (strides >= 0 here).
std::pair<int64_t, int64_t> extent(const Tensor& t) {
  int64_t last = t.offset();
  for (int64_t d = 0; d < t.dim(); ++d)
    last += (t.shape()[static_cast<size_t>(d)] - 1) * t.strides()[static_cast<size_t>(d)];
  return {t.offset(), last};
}
}  // namespace

void check_params(const std::string& op, const NamedTensors& params) {
  std::set<std::string> names;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& [n, p] = params[i];
    BB_CHECK(p.defined(), ValueError, "{}: parameter '{}' is an undefined tensor", op, n);
    BB_CHECK(is_floating(p.dtype()), DTypeError, "{}: parameter '{}' must be a floating tensor, got {}", op,
             n, dtype_name(p.dtype()));
    BB_CHECK(
        p.is_leaf(), ValueError,
        "{}: parameter '{}' is not a leaf (the output of an op): its .grad is never set, so it would never "
        "be updated; optimize the leaf it was computed from",
        op, n);
    BB_CHECK(names.insert(n).second, ValueError, "{}: the parameter name '{}' is listed twice", op, n);
    for (size_t j = 0; j < i; ++j) {
      const auto& [m, q] = params[j];
      BB_CHECK(!p.same(q), ValueError, "{}: the same tensor is listed twice, as '{}' and as '{}'", op, m, n);
      if (p.impl().storage != q.impl().storage || p.numel() == 0 || q.numel() == 0) continue;
      // Another handle on the same memory: the same view, or two contiguous ranges that
      // overlap (strided views that interleave without sharing elements stay allowed).
      const bool same_view = p.offset() == q.offset() && p.shape() == q.shape() && p.strides() == q.strides();
      const auto [pa, pb] = extent(p);
      const auto [qa, qb] = extent(q);
      const bool overlap = p.is_contiguous() && q.is_contiguous() && pa <= qb && qa <= pb;
      BB_CHECK(!same_view && !overlap, ValueError,
               "{}: parameters '{}' and '{}' share memory: each step would update it twice", op, m, n);
    }
  }
}

int64_t state_step(const std::string& op, const std::string& name, const Tensor& t, int64_t max) {
  BB_CHECK(t.defined() && t.numel() == 1, ShapeError,
           "{} load_state_dict: '{}' must hold one value, got shape {}", op, name,
           t.defined() ? shape_str(t.shape()) : std::string("(undefined)"));
  if (t.dtype() == DType::I64 || t.dtype() == DType::I32) {
    const int64_t v = t.to_vector<int64_t>()[0];
    BB_CHECK(v >= 0 && v <= max, ValueError, "{} load_state_dict: '{}' is {}, outside [0, {}]", op, name, v,
             max);
    return v;
  }
  BB_CHECK(is_floating(t.dtype()), DTypeError,
           "{} load_state_dict: '{}' must be a step count, got a {} tensor", op, name, dtype_name(t.dtype()));
  const double v = t.to_vector<double>()[0];
  BB_CHECK(std::isfinite(v) && v >= 0 && v <= static_cast<double>(max) && v == std::floor(v), ValueError,
           "{} load_state_dict: '{}' is {}, not a whole number in [0, {}]", op, name, v, max);
  return static_cast<int64_t>(v);
}

void check_state_values(const std::string& op, const std::string& name, const Tensor& t, bool nonneg) {
  BB_CHECK(t.defined(), ValueError, "{} load_state_dict: '{}' is an undefined tensor", op, name);
  BB_CHECK(is_floating(t.dtype()), DTypeError, "{} load_state_dict: '{}' must be a floating tensor, got {}",
           op, name, dtype_name(t.dtype()));
  // Read on the host in the tensor's own width (f64 stays f64: a finite f64 may not fit f32).
  const DType host_dt = t.dtype() == DType::F64 ? DType::F64 : DType::F32;
  Tensor h = t.detach().to(Device::cpu(), host_dt).contiguous();
  auto scan = [&](const auto* v) {
    for (int64_t i = 0; i < h.numel(); ++i) {
      const double x = static_cast<double>(v[i]);
      BB_CHECK(std::isfinite(x), ValueError,
               "{} load_state_dict: '{}' holds {} at flat index {} (a damaged state?)", op, name, x, i);
      BB_CHECK(!nonneg || x >= 0, ValueError,
               "{} load_state_dict: '{}' holds {} at flat index {}, but it is a mean of squares (>= 0)", op,
               name, x, i);
    }
  };
  if (host_dt == DType::F64)
    scan(h.data<double>());
  else
    scan(h.data<float>());
}

}  // namespace detail

Optimizer::Optimizer(NamedTensors params, std::string name)
    : params_(std::move(params)), param_steps_(params_.size(), 0), name_(std::move(name)) {
  detail::check_params(name_, params_);
}

void Optimizer::set_lr(double lr) {
  detail::check_lr(name_ + " set_lr", lr);
  lr_ = lr;
}

void Optimizer::zero_grad() {
  for (auto& [n, p] : params_) Tensor(p).set_grad(Tensor());
}

NamedTensors Optimizer::state_dict() const {
  NamedTensors s;
  s.emplace_back("step", from_vector<int64_t>({step_}, {}));
  for (size_t i = 0; i < params_.size(); ++i) {
    if (param_steps_[i] > 0) s.emplace_back(params_[i].first + ".step", from_vector<int64_t>({param_steps_[i]}, {}));
    for (size_t k = 0; k < slot_names_.size(); ++k)
      if (slots_[i][k].defined()) s.emplace_back(params_[i].first + "." + slot_names_[k], slots_[i][k]);
  }
  return s;
}

void Optimizer::load_state_dict(const NamedTensors& state) {
  std::map<std::string, Tensor> byname;
  for (const auto& [name, t] : state)
    BB_CHECK(byname.emplace(name, t).second, ValueError, "{} load_state_dict: the entry '{}' is there twice",
             name_, name);
  auto it = byname.find("step");
  BB_CHECK(it != byname.end(), ValueError, "{} load_state_dict: no 'step' entry", name_);
  // Validate everything before changing anything: every name known, every shape, dtype
  // and value right, a parameter's slots present together or not at all.
  const int64_t step = detail::state_step(name_, "step", it->second, detail::kMaxStep);
  std::vector<int64_t> psteps(params_.size(), 0);
  std::map<std::string, int> known{{"step", 0}};
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& pn = params_[i].first;
    known[pn + ".step"] = 0;
    auto ps = byname.find(pn + ".step");
    // A parameter is updated at most once per step.
    if (ps != byname.end()) psteps[i] = detail::state_step(name_, pn + ".step", ps->second, step);
    size_t present = 0, required = 0;
    for (size_t k = 0; k < slot_names_.size(); ++k) {
      const std::string& slot = slot_names_[k];
      bool optional = k >= required_slots();
      required += optional ? 0 : 1;
      std::string name = pn + "." + slot;
      known[name] = 0;
      auto sl = byname.find(name);
      if (sl == byname.end()) continue;
      present += optional ? 0 : 1;
      BB_CHECK(sl->second.defined() && sl->second.shape() == params_[i].second.shape(), ShapeError,
               "{} load_state_dict: '{}' has shape {} but the parameter is {}", name_, name,
               sl->second.defined() ? shape_str(sl->second.shape()) : std::string("(undefined)"),
               shape_str(params_[i].second.shape()));
      detail::check_state_values(name_, name, sl->second, slot_nonneg(k));
    }
    BB_CHECK(present == 0 || present == required, ValueError,
             "{} load_state_dict: parameter '{}' has {} of its {} state tensors", name_, pn, present,
             required);
  }
  for (auto& [name, t] : state)
    BB_CHECK(known.count(name), ValueError,
             "{} load_state_dict: unexpected entry '{}' (a state of another optimizer or model?)", name_,
             name);
  for (size_t i = 0; i < params_.size(); ++i) {
    const bool has_slots = !slot_names_.empty() && byname.count(params_[i].first + "." + slot_names_[0]);
    BB_CHECK(has_slots || required_slots() == 0 || psteps[i] == 0, ValueError,
             "{} load_state_dict: '{}.step' is {} but the parameter has no state tensors", name_,
             params_[i].first, psteps[i]);
  }

  step_ = step;
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& pn = params_[i].first;
    auto ps = byname.find(pn + ".step");
    // Checkpoints without per-parameter counts: every parameter was updated every step.
    bool has_slot = !slot_names_.empty() && byname.count(pn + "." + slot_names_[0]);
    param_steps_[i] = ps != byname.end() ? psteps[i] : (has_slot ? step_ : 0);
    for (size_t k = 0; k < slot_names_.size(); ++k) {
      auto sl = byname.find(pn + "." + slot_names_[k]);
      const Tensor& p = params_[i].second;
      slots_[i][k] = sl == byname.end() ? Tensor()
                                        : sl->second.detach().to(p.device(), slot_dtype(p)).contiguous().clone();
    }
  }
}

DType Optimizer::slot_dtype(const Tensor& p) const { return p.dtype() == DType::F64 ? DType::F64 : DType::F32; }

namespace {
void check_sgd_options(const SGDOptions& o) {
  detail::check_lr("SGD", o.lr);
  BB_CHECK(std::isfinite(o.momentum) && o.momentum >= 0, ValueError,
           "SGD: momentum must be finite and >= 0, got {}", o.momentum);
  BB_CHECK(std::isfinite(o.weight_decay) && o.weight_decay >= 0, ValueError,
           "SGD: weight_decay must be finite and >= 0, got {}", o.weight_decay);
  BB_CHECK(!o.nesterov || o.momentum > 0, ValueError, "SGD: Nesterov momentum needs momentum > 0, got {}",
           o.momentum);
}
}  // namespace

SGD::SGD(NamedTensors params, SGDOptions opts) : Optimizer(std::move(params), "SGD"), options(opts) {
  check_sgd_options(opts);
  lr_ = opts.lr;
  slot_names_ = {"momentum_buffer"};
  slots_.assign(params_.size(), std::vector<Tensor>(1));
}

// The momentum buffer is added to gradients, so it keeps their dtype.
DType SGD::slot_dtype(const Tensor& p) const { return p.dtype(); }

void SGD::step() {
  // The options are public fields: checked again, as they may have changed since construction.
  check_sgd_options(options);
  detail::check_lr("SGD", lr_);
  NoGradGuard g;
  ++step_;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor p = params_[i].second;
    Tensor grad = p.grad();
    if (!grad.defined()) continue;
    Tensor d = options.weight_decay != 0 ? add(grad, p, options.weight_decay) : grad;
    if (options.momentum != 0) {
      Tensor& buf = slots_[i][0];
      if (!buf.defined()) buf = d.clone();
      else buf = add(mul(buf, options.momentum), d);
      d = options.nesterov ? add(d, buf, options.momentum) : buf;
    }
    p.add_(d, -lr_);
  }
}

AdamW::AdamW(NamedTensors params, AdamWOptions opts) : Optimizer(std::move(params), "AdamW"), options(opts) {
  detail::check_adamw_options("AdamW", opts);
  lr_ = opts.lr;
  // "master" (the fp32 weights of a 16-bit parameter) is optional: f32 parameters
  // have none.
  slot_names_ = {"exp_avg", "exp_avg_sq", "master"};
  slots_.assign(params_.size(), std::vector<Tensor>(3));
}

size_t AdamW::required_slots() const { return 2; }

bool AdamW::slot_nonneg(size_t k) const { return k == 1; }  // exp_avg_sq

void AdamW::step() {
  detail::check_adamw_options("AdamW", options);
  detail::check_lr("AdamW", lr_);
  NoGradGuard g;
  ++step_;
  std::vector<AdamWTensors> items;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor p = params_[i].second;
    Tensor grad = p.grad();
    if (!grad.defined()) continue;
    auto& s = slots_[i];
    DType dt = slot_dtype(p);
    if (!s[0].defined()) {
      s[0] = zeros(p.shape(), {dt, p.device()});
      s[1] = zeros(p.shape(), {dt, p.device()});
    }
    bool low = p.dtype() == DType::BF16 || p.dtype() == DType::F16;
    if (low && options.master_weights && !s[2].defined()) s[2] = p.detach().to(DType::F32).contiguous();
    if (!low || !options.master_weights) s[2] = Tensor();
    double wd = (p.dim() >= 2 || options.decay_1d) ? options.weight_decay : 0.0;
    // Bias correction counts this parameter's own updates, as PyTorch does: a
    // parameter whose first gradient arrives late is not under-corrected.
    items.push_back({p, grad.contiguous(), s[0], s[1], s[2], ++param_steps_[i], wd});
  }
  // One fused launch for all parameters on a GPU; a loop over them on the CPU.
  adamw_multi_step_(items, lr_, options.beta1, options.beta2, options.eps);
}

CosineSchedule::CosineSchedule(double max_lr, double min_lr, int64_t warmup, int64_t total)
    : max_lr_(max_lr), min_lr_(min_lr), warmup_(warmup), total_(total) {
  BB_CHECK(std::isfinite(max_lr) && max_lr >= 0 && std::isfinite(min_lr) && min_lr >= 0, ValueError,
           "CosineSchedule: max_lr ({}) and min_lr ({}) must be finite and >= 0", max_lr, min_lr);
  BB_CHECK(warmup >= 0 && total > 0 && warmup <= total, ValueError,
           "CosineSchedule: need 0 <= warmup ({}) <= total ({}) and total > 0", warmup, total);
}

double CosineSchedule::operator()(int64_t step) const {
  if (step < warmup_) return max_lr_ * static_cast<double>(step + 1) / static_cast<double>(warmup_);
  if (step >= total_) return min_lr_;
  double t = static_cast<double>(step - warmup_) / static_cast<double>(std::max<int64_t>(total_ - warmup_, 1));
  return min_lr_ + 0.5 * (max_lr_ - min_lr_) * (1.0 + std::cos(M_PI * t));
}

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm) {
  BB_CHECK(max_norm > 0, ValueError, "clip_grad_norm_: max_norm must be positive, got {}", max_norm);
  std::vector<Tensor> grads;
  for (auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  double norm = std::sqrt(sum_of_squares(grads));
  if (norm > max_norm) {
    NoGradGuard g;
    double scale = max_norm / (norm + 1e-6);
    for (auto& gr : grads) Tensor(gr).mul_(scale);
  }
  return norm;
}

}  // namespace barbell::optim

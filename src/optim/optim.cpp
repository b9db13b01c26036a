// SGD, AdamW, the cosine schedule and gradient clipping. Updates run under
// NoGradGuard through ops (adamw_step_ is one fused kernel per parameter).
#include "barbell/optim/optim.hpp"

#include <cmath>
#include <map>

#include "barbell/autograd/autograd.hpp"
#include "barbell/ops/ops.hpp"

namespace barbell::optim {

Optimizer::Optimizer(NamedTensors params) : params_(std::move(params)), param_steps_(params_.size(), 0) {
  for (auto& [n, p] : params_) {
    BB_CHECK(p.defined() && is_floating(p.dtype()), DTypeError, "optimizer: parameter '{}' must be a floating tensor",
             n);
  }
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
  std::map<std::string, Tensor> byname(state.begin(), state.end());
  auto it = byname.find("step");
  BB_CHECK(it != byname.end() && it->second.numel() == 1, ValueError, "optimizer load_state_dict: no 'step' entry");
  // Validate everything before changing anything: every name known, every shape
  // right, a parameter's slots present together or not at all.
  std::map<std::string, int> known{{"step", 0}};
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& pn = params_[i].first;
    known[pn + ".step"] = 0;
    auto ps = byname.find(pn + ".step");
    BB_CHECK(ps == byname.end() || ps->second.numel() == 1, ShapeError,
             "optimizer load_state_dict: '{}.step' has shape {}, expected one value", pn, shape_str(ps->second.shape()));
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
      BB_CHECK(sl->second.shape() == params_[i].second.shape(), ShapeError,
               "optimizer load_state_dict: '{}' has shape {} but the parameter is {}", name,
               shape_str(sl->second.shape()), shape_str(params_[i].second.shape()));
    }
    BB_CHECK(present == 0 || present == required, ValueError,
             "optimizer load_state_dict: parameter '{}' has {} of its {} state tensors", pn, present, required);
  }
  for (auto& [name, t] : state)
    BB_CHECK(known.count(name), ValueError,
             "optimizer load_state_dict: unexpected entry '{}' (a state of another optimizer or model?)", name);

  step_ = it->second.item<int64_t>();
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& pn = params_[i].first;
    auto ps = byname.find(pn + ".step");
    // Checkpoints without per-parameter counts: every parameter was updated every step.
    bool has_slot = !slot_names_.empty() && byname.count(pn + "." + slot_names_[0]);
    param_steps_[i] = ps != byname.end() ? ps->second.item<int64_t>() : (has_slot ? step_ : 0);
    for (size_t k = 0; k < slot_names_.size(); ++k) {
      auto sl = byname.find(pn + "." + slot_names_[k]);
      const Tensor& p = params_[i].second;
      slots_[i][k] = sl == byname.end() ? Tensor()
                                        : sl->second.detach().to(p.device(), slot_dtype(p)).contiguous().clone();
    }
  }
}

DType Optimizer::slot_dtype(const Tensor& p) const { return p.dtype() == DType::F64 ? DType::F64 : DType::F32; }

SGD::SGD(NamedTensors params, SGDOptions opts) : Optimizer(std::move(params)), options(opts) {
  lr_ = opts.lr;
  slot_names_ = {"momentum_buffer"};
  slots_.assign(params_.size(), std::vector<Tensor>(1));
}

// The momentum buffer is added to gradients, so it keeps their dtype.
DType SGD::slot_dtype(const Tensor& p) const { return p.dtype(); }

void SGD::step() {
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

AdamW::AdamW(NamedTensors params, AdamWOptions opts) : Optimizer(std::move(params)), options(opts) {
  lr_ = opts.lr;
  // "master" (the fp32 weights of a 16-bit parameter) is optional: f32 parameters
  // have none.
  slot_names_ = {"exp_avg", "exp_avg_sq", "master"};
  slots_.assign(params_.size(), std::vector<Tensor>(3));
}

size_t AdamW::required_slots() const { return 2; }

void AdamW::step() {
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

// Optimizers (SGD with momentum, AdamW with decoupled weight decay), the cosine
// schedule with linear warm-up, and global-norm gradient clipping.
#pragma once

#include <string>
#include <vector>

#include "barbell/nn/module.hpp"

namespace barbell::optim {

// Constructors validate their options with PyTorch's ranges (ValueError naming the option
// and its value) and the parameters (defined, floating, leaves, no tensor or name twice);
// step() checks the options again, as they are public fields.
class Optimizer {
 public:
  // `name` ("AdamW", ...) prefixes error messages.
  explicit Optimizer(NamedTensors params, std::string name = "optimizer");
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update from the parameters' .grad (parameters without a grad are skipped).
  virtual void step() = 0;
  // Drops every gradient (the next backward writes fresh ones).
  void zero_grad();
  double lr() const { return lr_; }
  void set_lr(double lr);  // ValueError unless finite and >= 0
  int64_t steps() const { return step_; }
  const NamedTensors& named_params() const { return params_; }

  // Optimizer state ("step", and per parameter "<name>.step" and "<name>.<slot>") for checkpoints;
  // load_state_dict validates everything before changing anything: names, shapes, dtypes,
  // steps (integral, in [0, 2^53], a parameter's at most the optimizer's) and values
  // (finite; exp_avg_sq >= 0).
  virtual NamedTensors state_dict() const;
  virtual void load_state_dict(const NamedTensors& state);

 protected:
  NamedTensors params_;
  std::vector<std::vector<Tensor>> slots_;      // per parameter, per slot name
  std::vector<std::string> slot_names_;
  std::vector<int64_t> param_steps_;             // updates each parameter has had (bias correction)
  // The dtype a parameter's state tensors are kept in.
  virtual DType slot_dtype(const Tensor& param) const;
  // The first required_slots() slot names are kept for every parameter with state;
  // the others are optional (a checkpoint may lack them).
  virtual size_t required_slots() const { return slot_names_.size(); }
  // Whether slot k holds values that cannot be negative (checked by load_state_dict).
  virtual bool slot_nonneg(size_t /*k*/) const { return false; }
  double lr_ = 1e-3;
  int64_t step_ = 0;
  std::string name_;
};

// Ranges (PyTorch's): lr >= 0, momentum >= 0, weight_decay >= 0, all finite; nesterov
// needs momentum > 0.
struct SGDOptions {
  double lr = 0.01;
  double momentum = 0.0;
  double weight_decay = 0.0;  // L2, added to the gradient
  bool nesterov = false;
};

class SGD : public Optimizer {
 public:
  SGD(NamedTensors params, SGDOptions opts);
  void step() override;
  SGDOptions options;

 protected:
  DType slot_dtype(const Tensor& param) const override;
};

// Ranges: PyTorch's (lr >= 0, beta1 and beta2 in [0, 1), weight_decay >= 0), all finite,
// and eps > 0 where PyTorch takes eps >= 0: with eps = 0 an element whose gradients were
// all zero so far (an unused embedding row) updates by 0 / 0 = NaN, in PyTorch too.
struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;  // decoupled: p -= lr * wd * p
  bool decay_1d = false;       // biases and norm weights (1-D) get no decay unless set
  // Mixed precision: a bf16/f16 parameter gets an fp32 master copy (slot "master");
  // the update is applied to it and the parameter is its rounding. Without it, small
  // updates vanish in bf16's 8-bit mantissa.
  bool master_weights = true;
};

class AdamW : public Optimizer {
 public:
  AdamW(NamedTensors params, AdamWOptions opts);
  void step() override;
  AdamWOptions options;

 protected:
  size_t required_slots() const override;
  bool slot_nonneg(size_t k) const override;
};

// lr(step), step 0-based: linear warm-up max_lr * (step + 1) / warmup for step < warmup (so
// max_lr / warmup at step 0 and max_lr at step warmup - 1), then cosine decay from max_lr at
// step warmup to min_lr at `total`; min_lr from `total` on.
class CosineSchedule {
 public:
  CosineSchedule(double max_lr, double min_lr, int64_t warmup, int64_t total);
  double operator()(int64_t step) const;

 private:
  double max_lr_, min_lr_;
  int64_t warmup_, total_;
};

// Scales all gradients so their global L2 norm is at most max_norm; returns the
// norm before clipping.
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm);

}  // namespace barbell::optim

// The checks every optimizer shares (SGD, AdamW here, ZeroAdamW in src/dist): option
// ranges (PyTorch's, where it has them), the parameter list, and what a state dict brings.
#pragma once

#include <cstdint>
#include <string>

#include "barbell/optim/optim.hpp"

namespace barbell::optim::detail {

// The largest step count a state may hold: bias corrections are computed in double, and
// 2^53 steps are beyond any run (it also keeps ++step far from int64 overflow).
inline constexpr int64_t kMaxStep = int64_t{1} << 53;

// ValueError unless lr is finite and >= 0 (PyTorch: "Invalid learning rate"; it lets a
// NaN through SGD, barbell does not).
void check_lr(const std::string& op, double lr);
// PyTorch's AdamW ranges: lr >= 0, 0 <= beta1, beta2 < 1, weight_decay >= 0; all finite.
// eps must be > 0, where PyTorch takes eps >= 0: with eps = 0 every element whose
// gradients were all zero so far (an unused embedding row) updates by 0 / 0 = NaN.
void check_adamw_options(const std::string& op, const AdamWOptions& o);
// Every parameter defined, floating and a leaf (PyTorch: "can't optimize a non-leaf
// Tensor"); no tensor listed twice (the same handle, or the same memory under another
// handle), no name twice (the state dict is keyed by name).
void check_params(const std::string& op, const NamedTensors& params);
// A step count from a state dict: one element of an integer dtype (or a floating one
// holding an integer exactly), in [0, max]. Returns it.
int64_t state_step(const std::string& op, const std::string& name, const Tensor& t, int64_t max);
// A state tensor from a state dict: floating, every element finite, and >= 0 when
// `nonneg` (exp_avg_sq is a running mean of squares).
void check_state_values(const std::string& op, const std::string& name, const Tensor& t, bool nonneg);

}  // namespace barbell::optim::detail

// nn::Module: registration, recursive traversal, train/eval, to(), state_dict.
#include "barbell/nn/module.hpp"

#include <set>

#include <fmt/ranges.h>
#include <unordered_set>

#include "barbell/autograd/autograd.hpp"

namespace barbell::nn {

Tensor Module::register_parameter(const std::string& name, Tensor t, bool requires_grad) {
  BB_CHECK(t.defined(), ValueError, "register_parameter: '{}' is undefined", name);
  if (requires_grad && !t.requires_grad()) t.requires_grad_(true);
  params_.emplace_back(name, t);
  return t;
}

Tensor Module::register_buffer(const std::string& name, Tensor t) {
  buffers_.emplace_back(name, t);
  return t;
}

void Module::collect(const std::string& prefix, bool recurse, bool buffers, NamedTensors& out) const {
  for (auto& [n, t] : buffers ? buffers_ : params_) out.emplace_back(prefix + n, t);
  if (!recurse) return;
  for (auto& [n, m] : children_) m->collect(prefix + n + ".", true, buffers, out);
}

namespace {
NamedTensors dedupe(NamedTensors all) {
  std::unordered_set<TensorImpl*> seen;
  NamedTensors out;
  for (auto& p : all)
    if (seen.insert(p.second.impl_ptr().get()).second) out.push_back(std::move(p));
  return out;
}
}  // namespace

NamedTensors Module::named_parameters(bool recurse) const {
  NamedTensors all;
  collect("", recurse, false, all);
  return dedupe(std::move(all));
}

std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> r;
  for (auto& p : named_parameters(recurse)) r.push_back(p.second);
  return r;
}

NamedTensors Module::named_buffers(bool recurse) const {
  NamedTensors all;
  collect("", recurse, true, all);
  return dedupe(std::move(all));
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& p : named_parameters()) n += p.second.numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& c : children_) c.second->train(on);
}

void Module::to(Device device) {
  NoGradGuard g;
  for (auto& list : {named_parameters(), named_buffers()})
    for (auto& p : list) {
      Tensor t = p.second;
      if (t.device() == device) continue;
      t.set_data(t.detach().to(device));
      t.set_grad(Tensor());  // a gradient on the old device would no longer match
    }
}

void Module::to(DType dtype) {
  BB_CHECK(is_floating(dtype), DTypeError, "Module::to: {} is not a floating dtype", dtype_name(dtype));
  NoGradGuard g;
  for (auto& list : {named_parameters(), named_buffers()})
    for (auto& p : list) {
      Tensor t = p.second;
      if (!is_floating(t.dtype()) || t.dtype() == dtype) continue;
      t.set_data(t.detach().to(dtype));
      t.set_grad(Tensor());  // a gradient of the old dtype would no longer match
    }
}

void Module::zero_grad() {
  for (auto& p : named_parameters()) p.second.set_grad(Tensor());
}

NamedTensors Module::state_dict() const {
  NamedTensors all;
  collect("", true, false, all);
  collect("", true, true, all);
  return dedupe(std::move(all));
}

void Module::load_state_dict(const NamedTensors& state, bool strict) {
  NamedTensors mine = state_dict();
  std::set<std::string> given;
  for (auto& [n, t] : state) given.insert(n);
  std::set<std::string> have;
  for (auto& [n, t] : mine) have.insert(n);
  if (strict) {
    std::vector<std::string> missing, unexpected;
    for (auto& n : have)
      if (!given.count(n)) missing.push_back(n);
    for (auto& n : given)
      if (!have.count(n)) unexpected.push_back(n);
    BB_CHECK(missing.empty() && unexpected.empty(), ValueError,
             "load_state_dict: names do not match: missing [{}], unexpected [{}]", fmt::join(missing, ", "),
             fmt::join(unexpected, ", "));
  }
  // Check every shape before copying anything, so a bad checkpoint changes nothing.
  for (auto& [n, src] : state) {
    for (auto& [m, dst] : mine) {
      if (m != n) continue;
      BB_CHECK(src.shape() == dst.shape(), ShapeError,
               "load_state_dict: '{}' has shape {} in the checkpoint but {} in the model", n, shape_str(src.shape()),
               shape_str(dst.shape()));
    }
  }
  NoGradGuard g;
  for (auto& [n, src] : state)
    for (auto& [m, dst] : mine)
      if (m == n) Tensor(dst).copy_(src);
}

}  // namespace barbell::nn

// nn::Module: a tree of named parameters, buffers and submodules, with train/eval,
// device/dtype moves and state_dict round trips.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "barbell/core/tensor.hpp"

namespace barbell {

// Ordered (name, tensor) pairs: state dicts, checkpoints, named parameters.
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

namespace nn {

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Parameters in registration order, recursing into submodules ("h.0.attn.c_attn.weight").
  // A tensor registered twice (tied weights) is listed once, under its first name.
  NamedTensors named_parameters(bool recurse = true) const;
  std::vector<Tensor> parameters(bool recurse = true) const;
  NamedTensors named_buffers(bool recurse = true) const;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const { return children_; }
  int64_t num_parameters() const;

  virtual void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Moves every floating parameter and buffer in place (the tensors keep their
  // identity, so optimizers built before still hold them).
  void to(Device device);
  void to(DType dtype);
  void zero_grad();

  // Parameters and buffers by name.
  NamedTensors state_dict() const;
  // Copies values into the existing tensors (converting dtype/device). strict: the
  // names must match exactly. Any shape mismatch throws ShapeError naming the tensor.
  void load_state_dict(const NamedTensors& state, bool strict = true);

 protected:
  Tensor register_parameter(const std::string& name, Tensor t, bool requires_grad = true);
  Tensor register_buffer(const std::string& name, Tensor t);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }

 private:
  void collect(const std::string& prefix, bool recurse, bool buffers, NamedTensors& out) const;
  NamedTensors params_;
  NamedTensors buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace nn
}  // namespace barbell

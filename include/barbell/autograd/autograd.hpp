// The define-by-run tape: graph nodes, the grad-mode guard, a custom Function API for
// user ops, and the float64 finite-difference gradient check.
#pragma once

#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <typeinfo>
#include <vector>

#include "barbell/core/tensor.hpp"

namespace barbell {

// Is gradient recording on for this thread?
bool grad_enabled();
void set_grad_enabled(bool on);

// Turns recording off for its scope (evaluation, optimizer updates).
class NoGradGuard {
 public:
  NoGradGuard() : prev_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

namespace autograd {

// A tensor that a backward formula reads, and what to call it when it was changed:
// "input 0", "result", ... (a string literal).
struct SavedTensor {
  const Tensor* tensor;
  const char* what;
};

// One node of the graph: it receives the gradient of its (single) output and returns
// one gradient per input edge (undefined where an input needs none).
class Node {
 public:
  Node();
  virtual ~Node() = default;
  virtual std::vector<Tensor> apply(const Tensor& grad_output) = 0;
  virtual std::string name() const = 0;
  // Frees saved tensors after a backward pass without retain_graph.
  virtual void release() {}
  bool released() const { return released_; }
  void mark_released() { released_ = true; }

  std::vector<std::shared_ptr<Node>> next;  // one per input, null when it needs no grad
  uint64_t sequence_nr() const { return seq_; }

  // Remembers the storage versions of the tensors the backward reads; check_saved()
  // throws ValueError naming this node, the tensor and both versions when one of them
  // was written in place since (PyTorch's "modified by an inplace operation").
  void save_versions(std::initializer_list<SavedTensor> saved);
  void check_saved() const;

 protected:
  // Drops the references save_versions() keeps; release() must call it, or the saved
  // tensors would live as long as the graph instead of being freed during backward.
  void release_saved();

 protected:
  uint64_t seq_;
  bool released_ = false;

 private:
  struct SavedVersion {
    Tensor tensor;
    uint64_t version;
    const char* what;
  };
  std::vector<SavedVersion> saved_;
};

// The sink of a leaf that requires grad: accumulates into .grad and runs the hooks.
class AccumulateGrad : public Node {
 public:
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> leaf) : leaf_(std::move(leaf)) {}
  std::vector<Tensor> apply(const Tensor& grad_output) override;
  std::string name() const override { return "AccumulateGrad"; }

 private:
  std::shared_ptr<TensorImpl> leaf_;
};

using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output)>;

// Records `out` as produced by `op` from `inputs` when grad mode is on and any input
// requires grad; `backward` receives d(out) and returns d(inputs) in order. Tensors
// the backward needs are captured by value, detached (see DESIGN: no graph cycles), and
// listed in `saved` so that backward() refuses to run on them once they were changed in
// place. Returns true when a node was recorded.
bool record(const char* op, Tensor& out, const std::vector<Tensor>& inputs, BackwardFn backward,
            std::initializer_list<SavedTensor> saved = {});
bool needs_grad(const std::vector<Tensor>& inputs);

// Runs the graph below `roots` in reverse topological order.
void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph = false);

// A user-defined differentiable op. Subclass it:
//   struct Square : Function<Square> {
//     static Tensor forward(Context& ctx, const std::vector<Tensor>& in) {
//       ctx.save(in[0]); return in[0] * in[0]; }
//     static std::vector<Tensor> backward(Context& ctx, const Tensor& g) {
//       return {g * ctx.saved(0) * 2.0}; }
//   };
//   Tensor y = Square::apply({x});
//
// backward must return one gradient per input (undefined where none is needed). A
// gradient of a broadcast of the input's shape is summed down to that shape, one of
// another floating dtype is converted, as PyTorch does; anything else throws an error
// naming the Function and the input. saved(i) throws when the saved tensor was changed
// in place after it was saved.
class Context {
 public:
  void save(const Tensor& t);
  const Tensor& saved(size_t i) const;
  std::vector<double> scalars;  // free slots for non-tensor state
  void clear() { saved_.clear(); }
  // The Function's name, for error messages (set by Function::apply).
  std::string function_name = "custom Function";

 private:
  struct Saved {
    Tensor tensor;
    uint64_t version;
  };
  std::vector<Saved> saved_;
};

namespace detail {
struct InputMeta {
  Shape shape;
  DType dtype;
  Device device;
  bool requires_grad;
};
std::vector<InputMeta> input_meta(const std::vector<Tensor>& inputs);
// The gradients a Function's backward returned, checked against its inputs (count,
// device, dtype) and reduced to the inputs' shapes where they were broadcast.
std::vector<Tensor> check_function_grads(const std::string& name, const std::vector<InputMeta>& inputs,
                                         std::vector<Tensor> grads);
std::string type_name(const std::type_info& t);
}  // namespace detail

template <typename Derived>
struct Function {
  // `name` names the op in errors; by default the Function's type name.
  static Tensor apply(const std::vector<Tensor>& inputs, const char* name = nullptr) {
    const std::string fname = name ? std::string(name) : detail::type_name(typeid(Derived));
    auto ctx = std::make_shared<Context>();
    ctx->function_name = fname;
    Tensor out;
    {
      NoGradGuard g;
      out = Derived::forward(*ctx, inputs);
    }
    BB_CHECK(out.defined(), ValueError, "custom Function {}: forward returned an undefined tensor", fname);
    if (!needs_grad(inputs)) return out;
    auto meta = detail::input_meta(inputs);
    record(fname.c_str(), out, inputs, [ctx, meta, fname](const Tensor& grad) {
      return detail::check_function_grads(fname, meta, Derived::backward(*ctx, grad));
    });
    return out;
  }
};

// Finite-difference check in float64: compares the gradient of sum(w * f(inputs))
// (w fixed random weights) from backward() with central differences, for every
// input that requires grad. Inputs must be F64.
struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;
  double max_rel_error = 0;
  std::string message;  // where the worst mismatch is, when !ok
};
GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                          const std::vector<Tensor>& inputs, double eps = 1e-6, double atol = 1e-6,
                          double rtol = 1e-4);

}  // namespace autograd
}  // namespace barbell

// The backward engine: dependency counting over the graph below the roots, then
// nodes in reverse creation order (a max-heap on sequence numbers), gradients summed
// per node, leaves accumulated into .grad with their gradient-ready hooks.
#include <cxxabi.h>

#include <atomic>
#include <cstdlib>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "barbell/autograd/autograd.hpp"
#include "barbell/ops/ops.hpp"

namespace barbell {

namespace {
thread_local bool g_grad_enabled = true;
std::atomic<uint64_t> g_next_seq{0};
}  // namespace

bool grad_enabled() { return g_grad_enabled; }
void set_grad_enabled(bool on) { g_grad_enabled = on; }

namespace autograd {

Node::Node() : seq_(g_next_seq.fetch_add(1)) {}

void Node::save_versions(std::initializer_list<SavedTensor> saved) {
  saved_.reserve(saved.size());
  for (const SavedTensor& s : saved)
    if (s.tensor->defined()) saved_.push_back({*s.tensor, s.tensor->version(), s.what});
}

void Node::release_saved() {
  saved_.clear();
  saved_.shrink_to_fit();
}

void Node::check_saved() const {
  for (const SavedVersion& s : saved_) {
    const uint64_t now = s.tensor.version();
    if (now == s.version) continue;
    throw ValueError(fmt::format(
        "backward: one of the tensors needed for gradient computation has been modified by an "
        "in-place operation: {} of {} ({} {}) is at version {}; it was saved for backward at version "
        "{}. Change it after backward(), or change a clone() of it",
        s.what, name(), dtype_name(s.tensor.dtype()), shape_str(s.tensor.shape()), now, s.version));
  }
}

namespace {

// A node whose backward is a closure; release() drops the closure and with it the
// tensors it saved.
class LambdaNode : public Node {
 public:
  LambdaNode(const char* op, BackwardFn fn) : op_(op), fn_(std::move(fn)) {}
  std::vector<Tensor> apply(const Tensor& g) override {
    BB_CHECK(!released_, ValueError,
             "backward: trying to run backward through the graph a second time ({} node); its saved tensors were "
             "freed after the first backward (pass retain_graph = true to keep them)",
             op_);
    check_saved();
    return fn_(g);
  }
  std::string name() const override { return op_; }
  void release() override {
    fn_ = nullptr;
    release_saved();
    released_ = true;
  }

 private:
  std::string op_;  // a copy: Function::apply's name may be a temporary's c_str()
  BackwardFn fn_;
};

std::shared_ptr<Node> grad_edge(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return nullptr;
  if (t.grad_fn()) return t.grad_fn();
  auto& im = t.impl();
  auto acc = im.grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad>(t.impl_ptr());
    im.grad_accumulator = acc;
  }
  return acc;
}

}  // namespace

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!grad_enabled()) return false;
  for (auto& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

bool record(const char* op, Tensor& out, const std::vector<Tensor>& inputs, BackwardFn backward,
            std::initializer_list<SavedTensor> saved) {
  if (!needs_grad(inputs)) return false;
  // An op that returns one of its inputs as is (an identity Function) must not make
  // that input a non-leaf: the output becomes a fresh alias of the same storage.
  for (auto& t : inputs)
    if (t.defined() && t.same(out)) out = t.detach();
  auto node = std::make_shared<LambdaNode>(op, std::move(backward));
  if (saved.size()) node->save_versions(saved);
  node->next.reserve(inputs.size());
  for (auto& t : inputs) node->next.push_back(grad_edge(t));
  auto& im = out.impl();
  im.grad_fn = node;
  im.requires_grad = true;
  return true;
}

std::vector<Tensor> AccumulateGrad::apply(const Tensor& g) {
  Tensor leaf(leaf_);
  Tensor cur = leaf.grad();
  Tensor gg = g.dtype() == leaf.dtype() ? g : g.to(leaf.dtype());
  BB_CHECK(gg.shape() == leaf.shape(), ShapeError, "backward: gradient of shape {} for a leaf of shape {}",
           shape_str(gg.shape()), shape_str(leaf.shape()));
  if (!cur.defined()) {
    // A fresh copy: the incoming gradient may alias another tensor's gradient.
    leaf_->grad = (gg.is_contiguous() ? gg.clone() : gg.contiguous()).impl_ptr();
  } else {
    cur.add_(gg);
  }
  for (auto& h : leaf_->grad_ready_hooks) h(leaf);
  return {};
}

void Context::save(const Tensor& t) {
  if (!t.defined()) {
    saved_.push_back({Tensor(), 0});
    return;
  }
  saved_.push_back({t.detach(), t.version()});
}

const Tensor& Context::saved(size_t i) const {
  BB_CHECK(i < saved_.size(), IndexError, "{}: Context::saved: index {} but {} tensors were saved",
           function_name, i, saved_.size());
  const Saved& s = saved_[i];
  if (s.tensor.defined() && s.tensor.version() != s.version) {
    throw ValueError(fmt::format(
        "backward: one of the tensors needed for gradient computation has been modified by an "
        "in-place operation: saved tensor {} of custom Function {} ({} {}) is at version {}; it was "
        "saved at version {}",
        i, function_name, dtype_name(s.tensor.dtype()), shape_str(s.tensor.shape()), s.tensor.version(),
        s.version));
  }
  return s.tensor;
}

namespace detail {

std::string type_name(const std::type_info& t) {
  int status = 0;
  char* d = abi::__cxa_demangle(t.name(), nullptr, nullptr, &status);
  std::string r = status == 0 && d ? d : t.name();
  std::free(d);
  return r;
}

std::vector<InputMeta> input_meta(const std::vector<Tensor>& inputs) {
  std::vector<InputMeta> m;
  m.reserve(inputs.size());
  for (const Tensor& t : inputs) {
    if (t.defined())
      m.push_back({t.shape(), t.dtype(), t.device(), t.requires_grad()});
    else
      m.push_back({{}, DType::F32, Device::cpu(), false});
  }
  return m;
}

std::vector<Tensor> check_function_grads(const std::string& name, const std::vector<InputMeta>& inputs,
                                         std::vector<Tensor> grads) {
  BB_CHECK(
      grads.size() == inputs.size(), ValueError,
      "custom Function {}: backward returned {} gradients for {} inputs (return one per input, an undefined "
      "Tensor() where an input needs none)",
      name, grads.size(), inputs.size());
  for (size_t i = 0; i < grads.size(); ++i) {
    Tensor& g = grads[i];
    const InputMeta& in = inputs[i];
    if (!g.defined()) continue;
    if (!in.requires_grad) {  // not differentiated: ignored, as PyTorch does
      g = Tensor();
      continue;
    }
    BB_CHECK(g.device() == in.device, DeviceError,
             "custom Function {}: the gradient for input {} is on {}, but the input is on {}", name, i,
             g.device().str(), in.device.str());
    BB_CHECK(is_floating(g.dtype()), DTypeError,
             "custom Function {}: the gradient for input {} is {} {}, not a floating tensor", name, i,
             dtype_name(g.dtype()), shape_str(g.shape()));
    if (g.shape() != in.shape) {
      bool expandable = false;
      try {
        expandable = broadcast_shapes(in.shape, g.shape(), "custom Function") == g.shape();
      } catch (const ShapeError&) {}
      BB_CHECK(expandable, ShapeError,
               "custom Function {}: backward returned a gradient of shape {} for input {} of shape "
               "{} (expected that shape, or one it broadcasts to)",
               name, shape_str(g.shape()), i, shape_str(in.shape));
      g = sum_to(g, in.shape);
    }
    if (g.dtype() != in.dtype) g = g.to(in.dtype);
  }
  return grads;
}

}  // namespace detail

void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads_in, bool retain_graph) {
  BB_CHECK(roots.size() == grads_in.size(), ValueError, "backward: {} roots but {} gradients", roots.size(),
           grads_in.size());
  struct Pending {
    Tensor grad;
    int deps = 0;
  };
  std::unordered_map<Node*, Pending> pending;
  std::vector<std::shared_ptr<Node>> root_nodes;
  std::vector<Tensor> root_grads;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    BB_CHECK(r.requires_grad(), ValueError,
             "backward: tensor of shape {} does not require grad and has no grad_fn", shape_str(r.shape()));
    Tensor g = grads_in[i];
    if (!g.defined()) {
      BB_CHECK(r.numel() == 1, ShapeError,
               "backward: a gradient must be given for a non-scalar output of shape {}", shape_str(r.shape()));
      g = ones(r.shape(), r.options());
    }
    BB_CHECK(g.shape() == r.shape(), ShapeError, "backward: gradient of shape {} for an output of shape {}",
             shape_str(g.shape()), shape_str(r.shape()));
    BB_CHECK(g.dtype() == r.dtype() && g.device() == r.device(), DTypeError,
             "backward: gradient is {} on {} but the output {} is {} on {}", dtype_name(g.dtype()), g.device().str(),
             shape_str(r.shape()), dtype_name(r.dtype()), r.device().str());
    root_nodes.push_back(grad_edge(r));
    root_grads.push_back(g);
  }

  // Count, for each node, the edges that reach it from the roots.
  std::unordered_set<Node*> seen;
  std::vector<Node*> stack;
  for (auto& n : root_nodes) {
    if (seen.insert(n.get()).second) stack.push_back(n.get());
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (auto& e : n->next) {
      if (!e) continue;
      pending[e.get()].deps++;
      if (seen.insert(e.get()).second) stack.push_back(e.get());
    }
  }

  NoGradGuard no_grad;
  auto add_grad = [](Pending& p, const Tensor& g) {
    if (!p.grad.defined()) p.grad = g;
    else p.grad = add(p.grad, g);
  };
  // Leaves (AccumulateGrad) first when ready, so gradient-ready hooks fire as early as
  // possible; otherwise later-created nodes first.
  auto cmp = [](const std::shared_ptr<Node>& a, const std::shared_ptr<Node>& b) {
    bool la = dynamic_cast<AccumulateGrad*>(a.get()) != nullptr;
    bool lb = dynamic_cast<AccumulateGrad*>(b.get()) != nullptr;
    if (la != lb) return lb;
    return a->sequence_nr() < b->sequence_nr();
  };
  std::priority_queue<std::shared_ptr<Node>, std::vector<std::shared_ptr<Node>>, decltype(cmp)> ready(cmp);
  for (size_t i = 0; i < root_nodes.size(); ++i) {
    add_grad(pending[root_nodes[i].get()], root_grads[i]);
  }
  for (auto& n : root_nodes) {
    auto& p = pending[n.get()];
    if (p.deps == 0) {
      p.deps = -1;  // queued
      ready.push(n);
    }
  }
  while (!ready.empty()) {
    auto node = ready.top();
    ready.pop();
    Tensor g = std::move(pending[node.get()].grad);
    // A node reached only by paths that carried no gradient still runs its edges'
    // bookkeeping, so nodes below it are not left waiting.
    std::vector<Tensor> gin;
    if (g.defined()) gin = node->apply(g);
    if (!retain_graph) node->release();
    for (size_t i = 0; i < node->next.size(); ++i) {
      auto& e = node->next[i];
      if (!e) continue;
      auto& p = pending[e.get()];
      if (i < gin.size() && gin[i].defined()) add_grad(p, gin[i]);
      if (--p.deps == 0) ready.push(e);
    }
  }
}

}  // namespace autograd
}  // namespace barbell

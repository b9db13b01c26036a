// ZeroAdamW (ZeRO stage 1): per dtype, the parameters form one flat vector split into
// per-rank chunks; a step reduce-scatters the gradients, updates this rank's chunk with
// adamw_multi_step_ and all-gathers the parameters back.
#include "barbell/dist/zero.hpp"

#include <cmath>
#include <map>

#include "barbell/autograd/autograd.hpp"
#include "barbell/dist/data_parallel.hpp"
#include "barbell/ops/ops.hpp"
#include "optim/validate.hpp"

namespace barbell::dist {

namespace {

uint64_t fnv_str(uint64_t h, const std::string& s) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

bool is_16bit(DType d) { return d == DType::BF16 || d == DType::F16; }

// The flat view of a parameter's elements [b, b + len).
Tensor flat_piece(const Tensor& p, int64_t b, int64_t len) {
  return p.detach().view({p.numel()}).narrow(0, b, len);
}

}  // namespace

ZeroAdamW::ZeroAdamW(NamedTensors params, ProcessGroupPtr pg, ZeroAdamWOptions opts)
    : Optimizer(std::move(params), "ZeroAdamW"), options(opts), pg_(std::move(pg)) {
  BB_CHECK(pg_ != nullptr, ValueError, "ZeroAdamW: null process group");
  check_options();
  lr_ = opts.lr;
  const int world = pg_->size(), rank = pg_->rank();
  uint64_t h = 0xcbf29ce484222325ull;
  std::map<DType, size_t> group_of;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i].second;
    BB_CHECK(p.is_contiguous(), ShapeError, "ZeroAdamW: parameter '{}' {} must be contiguous",
             params_[i].first, shape_str(p.shape()));
    BB_CHECK(p.device() == pg_->device() || pg_->backend() == Backend::Local, DeviceError,
             "ZeroAdamW: parameter '{}' is on {}, but the {} process group works on {}", params_[i].first,
             p.device().str(), backend_name(pg_->backend()), pg_->device().str());
    h = fnv_str(h, fmt::format("{}:{}:{};", params_[i].first, shape_str(p.shape()), dtype_name(p.dtype())));
    auto [it, fresh] = group_of.emplace(p.dtype(), groups_.size());
    if (fresh) {
      groups_.emplace_back();
      groups_.back().dtype = p.dtype();
    }
    Group& g = groups_[it->second];
    g.params.push_back(i);
    g.offsets.push_back(g.numel);
    g.numel += p.numel();
  }
  check_same_across_ranks(*pg_, h, "ZeroAdamW: the parameters (names, shapes, dtypes)");

  const Device dev = params_.empty() ? pg_->device() : params_[0].second.device();
  for (Group& g : groups_) {
    g.chunk = ProcessGroup::chunk_numel(g.numel, world);
    std::tie(g.own_begin, g.own_end) = ProcessGroup::chunk_range(g.numel, world, rank);
    for (size_t k = 0; k < g.params.size(); ++k) {
      const int64_t pb = g.offsets[k], pe = pb + params_[g.params[k]].second.numel();
      const int64_t b = std::max(pb, g.own_begin), e = std::min(pe, g.own_end);
      if (b < e) g.segments.push_back({g.params[k], b - pb, b - g.own_begin, e - b});
    }
    const DType sd = state_dtype(g.dtype);
    g.flat = zeros({g.numel}, {g.dtype, dev});
    g.param_shard = zeros({g.chunk}, {g.dtype, dev});
    g.grad_shard = zeros({g.chunk}, {g.dtype, dev});
    g.exp_avg = zeros({g.chunk}, {sd, dev});
    g.exp_avg_sq = zeros({g.chunk}, {sd, dev});
  }
  if (opts.broadcast_parameters) {
    std::vector<Tensor> ps;
    for (auto& [n, p] : params_) ps.push_back(p);
    broadcast_tensors(*pg_, ps, 0);
  }
  for (Group& g : groups_) init_master(g);
}

void ZeroAdamW::init_master(Group& g) {
  if (!is_16bit(g.dtype)) return;
  NoGradGuard ng;
  g.master = zeros({g.chunk}, {DType::F32, g.flat.device()});
  for (const Segment& s : g.segments)
    g.master.narrow(0, s.shard_begin, s.len).copy_(flat_piece(params_[s.param].second, s.param_begin, s.len));
}

void ZeroAdamW::check_options() const {
  optim::detail::check_adamw_options("ZeroAdamW", options);
  BB_CHECK(options.max_grad_norm >= 0 && !std::isnan(options.max_grad_norm), ValueError,
           "ZeroAdamW: max_grad_norm must be >= 0 (0: no clipping), got {}", options.max_grad_norm);
}

void ZeroAdamW::step() {
  // The options are public fields: checked again, as they may have changed since construction.
  check_options();
  optim::detail::check_lr("ZeroAdamW", lr_);
  NoGradGuard ng;
  ++step_;
  // 1. Gradients into the flat vectors; reduce-scatter (average) all groups, then wait.
  std::vector<WorkPtr> works;
  for (Group& g : groups_) {
    for (size_t k = 0; k < g.params.size(); ++k) {
      const Tensor& p = params_[g.params[k]].second;
      Tensor dst = g.flat.narrow(0, g.offsets[k], p.numel());
      Tensor gr = p.grad();
      if (gr.defined())
        dst.copy_(gr.reshape({p.numel()}));
      else
        dst.zero_();
    }
    works.push_back(pg_->reduce_scatter(g.grad_shard, g.flat, ReduceOp::Avg));
  }
  for (auto& w : works) w->wait();
  works.clear();

  // 2. The global gradient norm from the shards (their padding is zero), and clipping.
  {
    std::vector<Tensor> shards;
    for (Group& g : groups_) shards.push_back(g.grad_shard);
    Tensor sq = from_vector<double>({sum_of_squares(shards)}, {1}).to(pg_->device());
    pg_->all_reduce(sq, ReduceOp::Sum)->wait();
    last_grad_norm_ = std::sqrt(sq.item<double>());
    if (options.max_grad_norm > 0 && last_grad_norm_ > options.max_grad_norm) {
      const double scale = options.max_grad_norm / (last_grad_norm_ + 1e-6);
      for (Group& g : groups_) g.grad_shard.mul_(scale);
    }
  }

  // 3. AdamW on this rank's chunk; every parameter's step count advances on every rank.
  std::vector<int64_t> steps(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) steps[i] = ++param_steps_[i];
  std::vector<AdamWTensors> items;
  for (Group& g : groups_) {
    const bool master = is_16bit(g.dtype);
    for (const Segment& s : g.segments) {
      const Tensor& p = params_[s.param].second;
      Tensor pshard = g.param_shard.narrow(0, s.shard_begin, s.len);
      if (!master) pshard.copy_(flat_piece(p, s.param_begin, s.len));  // f32/f64: the parameter is the master
      AdamWTensors it;
      it.param = pshard;
      it.grad = g.grad_shard.narrow(0, s.shard_begin, s.len);
      it.exp_avg = g.exp_avg.narrow(0, s.shard_begin, s.len);
      it.exp_avg_sq = g.exp_avg_sq.narrow(0, s.shard_begin, s.len);
      if (master) it.master = g.master.narrow(0, s.shard_begin, s.len);
      it.step = steps[s.param];
      it.weight_decay = (p.dim() >= 2 || options.decay_1d) ? options.weight_decay : 0.0;
      items.push_back(it);
    }
  }
  if (!items.empty()) adamw_multi_step_(items, lr_, options.beta1, options.beta2, options.eps);

  // 4. All-gather the updated chunks and copy them into the parameters.
  for (Group& g : groups_) works.push_back(pg_->all_gather(g.flat, g.param_shard));
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    works[gi]->wait();
    Group& g = groups_[gi];
    for (size_t k = 0; k < g.params.size(); ++k) {
      Tensor p = params_[g.params[k]].second;
      p.copy_(g.flat.narrow(0, g.offsets[k], p.numel()).view(p.shape()));
    }
  }
}

size_t ZeroAdamW::state_bytes() const {
  size_t b = 0;
  for (const Group& g : groups_) {
    b += g.exp_avg.nbytes() + g.exp_avg_sq.nbytes();
    if (g.master.defined()) b += g.master.nbytes();
  }
  return b;
}

size_t ZeroAdamW::unsharded_state_bytes() const {
  size_t b = 0;
  for (const Group& g : groups_) {
    size_t per = 2 * dtype_size(state_dtype(g.dtype)) + (is_16bit(g.dtype) ? 4 : 0);
    b += per * static_cast<size_t>(g.numel);
  }
  return b;
}

size_t ZeroAdamW::workspace_bytes() const {
  size_t b = 0;
  for (const Group& g : groups_) b += g.flat.nbytes() + g.param_shard.nbytes() + g.grad_shard.nbytes();
  return b;
}

// ---- checkpoints ----------------------------------------------------------------------

NamedTensors ZeroAdamW::state_dict() const {
  NoGradGuard ng;
  NamedTensors s;
  s.emplace_back("step", from_vector<int64_t>({step_}, {}));
  std::map<size_t, std::map<std::string, Tensor>> per_param;
  for (const Group& g : groups_) {
    std::vector<std::pair<std::string, Tensor>> slots{{"exp_avg", g.exp_avg}, {"exp_avg_sq", g.exp_avg_sq}};
    if (g.master.defined()) slots.emplace_back("master", g.master);
    for (auto& [slot, shard] : slots) {
      Tensor full = zeros({g.numel}, {shard.dtype(), shard.device()});
      pg_->all_gather(full, shard)->wait();
      Tensor host = full.to(Device::cpu());
      for (size_t k = 0; k < g.params.size(); ++k) {
        const Tensor& p = params_[g.params[k]].second;
        per_param[g.params[k]][slot] = host.narrow(0, g.offsets[k], p.numel()).view(p.shape()).clone();
      }
    }
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    if (param_steps_[i] == 0) continue;  // never updated: no state, as AdamW
    const std::string& n = params_[i].first;
    s.emplace_back(n + ".step", from_vector<int64_t>({param_steps_[i]}, {}));
    for (const char* slot : {"exp_avg", "exp_avg_sq", "master"}) {
      auto it = per_param[i].find(slot);
      if (it != per_param[i].end()) s.emplace_back(n + "." + slot, it->second);
    }
  }
  return s;
}

void ZeroAdamW::load_state_dict(const NamedTensors& state) {
  std::map<std::string, Tensor> by;
  for (const auto& [name, t] : state)
    BB_CHECK(by.emplace(name, t).second, ValueError,
             "ZeroAdamW load_state_dict: the entry '{}' is there twice", name);
  auto st = by.find("step");
  BB_CHECK(st != by.end(), ValueError, "ZeroAdamW load_state_dict: no 'step' entry");
  const int64_t step = optim::detail::state_step("ZeroAdamW", "step", st->second, optim::detail::kMaxStep);
  std::vector<int64_t> psteps(params_.size(), 0);
  std::map<std::string, int> known{{"step", 0}};
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [n, p] = params_[i];
    known[n + ".step"] = 0;
    auto ps = by.find(n + ".step");
    if (ps != by.end()) psteps[i] = optim::detail::state_step("ZeroAdamW", n + ".step", ps->second, step);
    for (const char* slot : {"exp_avg", "exp_avg_sq", "master"}) {
      std::string name = n + "." + slot;
      known[name] = 0;
      auto it = by.find(name);
      if (it == by.end()) continue;
      BB_CHECK(it->second.defined() && it->second.numel() == p.numel(), ShapeError,
               "ZeroAdamW load_state_dict: '{}' has shape {} but the parameter is {}", name,
               it->second.defined() ? shape_str(it->second.shape()) : std::string("(undefined)"),
               shape_str(p.shape()));
      optim::detail::check_state_values("ZeroAdamW", name, it->second, std::string(slot) == "exp_avg_sq");
    }
    BB_CHECK(by.count(n + ".exp_avg") == by.count(n + ".exp_avg_sq"), ValueError,
             "ZeroAdamW load_state_dict: parameter '{}' has only one of its two moments", n);
    BB_CHECK(by.count(n + ".exp_avg") || psteps[i] == 0, ValueError,
             "ZeroAdamW load_state_dict: '{}.step' is {} but the parameter has no moments", n, psteps[i]);
  }
  for (auto& [name, t] : state)
    BB_CHECK(known.count(name), ValueError, "ZeroAdamW load_state_dict: unexpected entry '{}'", name);

  NoGradGuard ng;
  step_ = step;
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& n = params_[i].first;
    param_steps_[i] = by.count(n + ".step") ? psteps[i] : (by.count(n + ".exp_avg") ? step_ : 0);
  }
  for (Group& g : groups_) {
    g.exp_avg.zero_();
    g.exp_avg_sq.zero_();
    init_master(g);  // from the parameters, unless the state has masters
    for (const Segment& s : g.segments) {
      const std::string& n = params_[s.param].first;
      auto put = [&](const char* slot, Tensor& dst) {
        auto it = by.find(n + "." + slot);
        if (it == by.end() || !dst.defined()) return;
        Tensor src =
            it->second.detach().contiguous().view({it->second.numel()}).narrow(0, s.param_begin, s.len);
        dst.narrow(0, s.shard_begin, s.len).copy_(src.to(dst.device(), dst.dtype()));
      };
      put("exp_avg", g.exp_avg);
      put("exp_avg_sq", g.exp_avg_sq);
      put("master", g.master);
    }
  }
}

NamedTensors ZeroAdamW::shard_state_dict() const {
  NamedTensors s;
  s.emplace_back("step", from_vector<int64_t>({step_}, {}));
  s.emplace_back("zero.world", from_vector<int64_t>({pg_->size()}, {}));
  s.emplace_back("zero.rank", from_vector<int64_t>({pg_->rank()}, {}));
  s.emplace_back("zero.param_steps",
                 from_vector<int64_t>(param_steps_, {static_cast<int64_t>(param_steps_.size())}));
  for (const Group& g : groups_) {
    const std::string pre = fmt::format("zero.{}.", dtype_name(g.dtype));
    s.emplace_back(pre + "numel", from_vector<int64_t>({g.numel}, {}));
    s.emplace_back(pre + "exp_avg", g.exp_avg);
    s.emplace_back(pre + "exp_avg_sq", g.exp_avg_sq);
    if (g.master.defined()) s.emplace_back(pre + "master", g.master);
  }
  return s;
}

void ZeroAdamW::load_shard_state_dict(const NamedTensors& state) {
  std::map<std::string, Tensor> by(state.begin(), state.end());
  auto need = [&](const std::string& n) -> const Tensor& {
    auto it = by.find(n);
    BB_CHECK(it != by.end(), ValueError, "ZeroAdamW load_shard_state_dict: missing '{}'", n);
    return it->second;
  };
  namespace od = optim::detail;
  const char* op = "ZeroAdamW shard";
  const int64_t world = od::state_step(op, "zero.world", need("zero.world"), INT32_MAX);
  const int64_t rank = od::state_step(op, "zero.rank", need("zero.rank"), INT32_MAX);
  const int64_t step = od::state_step(op, "step", need("step"), od::kMaxStep);
  BB_CHECK(world == pg_->size() && rank == pg_->rank(), ValueError,
           "ZeroAdamW load_shard_state_dict: the shard is rank {} of {}, but this is rank {} of {} (load the "
           "gathered state_dict() to change the world size)",
           rank, world, pg_->rank(), pg_->size());
  const Tensor& ps = need("zero.param_steps");
  BB_CHECK(ps.numel() == static_cast<int64_t>(params_.size()), ShapeError,
           "ZeroAdamW load_shard_state_dict: {} parameter step counts for {} parameters", ps.numel(),
           params_.size());
  BB_CHECK(ps.dtype() == DType::I64 || ps.dtype() == DType::I32, DTypeError,
           "ZeroAdamW load_shard_state_dict: 'zero.param_steps' must be an integer tensor, got {}",
           dtype_name(ps.dtype()));
  const std::vector<int64_t> psteps = ps.to_vector<int64_t>();
  for (size_t i = 0; i < psteps.size(); ++i)
    BB_CHECK(psteps[i] >= 0 && psteps[i] <= step, ValueError,
             "ZeroAdamW load_shard_state_dict: parameter '{}' has step {}, outside [0, {}]", params_[i].first,
             psteps[i], step);
  for (const Group& g : groups_) {
    const std::string pre = fmt::format("zero.{}.", dtype_name(g.dtype));
    const int64_t numel = od::state_step(op, pre + "numel", need(pre + "numel"), INT64_MAX);
    BB_CHECK(numel == g.numel, ShapeError,
             "ZeroAdamW load_shard_state_dict: {} parameters have {} elements, the shard was made for {}",
             dtype_name(g.dtype), g.numel, numel);
    for (const char* slot : {"exp_avg", "exp_avg_sq", "master"}) {
      auto it = by.find(pre + slot);
      if (it == by.end() && std::string(slot) == "master") continue;
      const Tensor& t = need(pre + slot);
      BB_CHECK(t.defined() && t.numel() == g.chunk, ShapeError,
               "ZeroAdamW load_shard_state_dict: '{}{}' has {} elements, the chunk has {}", pre, slot,
               t.defined() ? t.numel() : 0, g.chunk);
      od::check_state_values(op, pre + slot, t, std::string(slot) == "exp_avg_sq");
    }
  }
  NoGradGuard ng;
  step_ = step;
  param_steps_ = psteps;
  for (Group& g : groups_) {
    const std::string pre = fmt::format("zero.{}.", dtype_name(g.dtype));
    g.exp_avg.copy_(need(pre + "exp_avg").to(g.exp_avg.device(), g.exp_avg.dtype()));
    g.exp_avg_sq.copy_(need(pre + "exp_avg_sq").to(g.exp_avg_sq.device(), g.exp_avg_sq.dtype()));
    if (g.master.defined()) {
      auto it = by.find(pre + "master");
      if (it != by.end())
        g.master.copy_(it->second.to(g.master.device(), DType::F32));
      else
        init_master(g);
    }
  }
}

}  // namespace barbell::dist

// DataParallel and ZeroAdamW over N ranks with batch b each end with the parameters of one
// rank trained on the whole batch N*b (computed in every rank's process), with and without
// gradient accumulation; gradients after finish() are the full-batch gradients; layout
// mismatches and misuse throw on every rank; ZeRO checkpoints move to AdamW and back.
#include <cmath>

#include "dist_check.hpp"

namespace bb = barbell;
namespace dist = barbell::dist;
using disttest::max_diff;

namespace {

constexpr int kSteps = 4;
constexpr int64_t kB = 4;  // sequences per rank per step

bb::nn::GPTConfig config(uint64_t seed) {
  bb::nn::GPTConfig c = bb::nn::GPTConfig::tiny();
  c.n_layer = 1;
  c.n_embd = 32;
  c.n_head = 2;
  c.vocab_size = bb::io::AdditionTask::kVocab;
  c.block_size = 16;
  c.seed = seed;
  return c;
}

bb::optim::AdamWOptions adamw_opts() {
  bb::optim::AdamWOptions o;
  o.lr = 3e-3;
  o.beta2 = 0.99;
  o.weight_decay = 0.1;
  return o;
}

// The global batch of step s, the same on every rank.
std::pair<bb::Tensor, bb::Tensor> global_batch(const bb::io::AdditionTask& task, int W, int s) {
  bb::Generator gen(1000 + static_cast<uint64_t>(s));
  return task.batch(W * kB, gen);
}

double max_param_diff(const bb::nn::Module& a, const bb::nn::Module& b) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  double m = 0;
  for (size_t i = 0; i < pa.size(); ++i) m = std::max(m, max_diff(pa[i].second, pb[i].second));
  return m;
}

double max_grad_diff(const bb::nn::Module& a, const bb::nn::Module& b) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  double m = 0;
  for (size_t i = 0; i < pa.size(); ++i) {
    if (!pa[i].second.grad().defined() || !pb[i].second.grad().defined()) return INFINITY;
    m = std::max(m, max_diff(pa[i].second.grad(), pb[i].second.grad()));
  }
  return m;
}

double grad_norm(const bb::nn::Module& m) {
  std::vector<bb::Tensor> g;
  for (auto& p : m.parameters()) g.push_back(p.grad());
  return std::sqrt(bb::sum_of_squares(g));
}

enum class Mode { DDP, Zero };

// Trains a reference on the full batch and a distributed model on this rank's slice, with
// `accum` micro-steps per step; compares gradients (first step) and parameters (end).
void equivalence(dist::ProcessGroupPtr pg, Mode mode, int accum, double first_mb, double mb) {
  const int W = pg->size(), r = pg->rank();
  const std::string what = fmt::format("{} accum={} buckets {}/{} MB",
                                       mode == Mode::DDP ? "DataParallel" : "ZeRO-1", accum, first_mb, mb);
  bb::io::AdditionTask task(2);
  bb::nn::GPT ref(config(7));
  bb::nn::GPT model(config(7 + static_cast<uint64_t>(r)));  // different on every rank until broadcast
  bb::optim::AdamW ref_opt(ref.named_parameters(), adamw_opts());
  std::unique_ptr<dist::DataParallel> ddp;
  std::unique_ptr<bb::optim::Optimizer> opt;
  if (mode == Mode::DDP) {
    dist::DataParallelOptions o;
    o.first_bucket_mb = first_mb;
    o.bucket_mb = mb;
    ddp = std::make_unique<dist::DataParallel>(model, pg, o);
    opt = std::make_unique<bb::optim::AdamW>(model.named_parameters(), adamw_opts());
  } else {
    dist::ZeroAdamWOptions zo;
    static_cast<bb::optim::AdamWOptions&>(zo) = adamw_opts();
    opt = std::make_unique<dist::ZeroAdamW>(model.named_parameters(), pg, zo);
  }
  DCHECK(max_param_diff(model, ref) == 0, "{}: parameters differ from rank 0's after construction", what);

  for (int s = 0; s < kSteps; ++s) {
    auto [x, y] = global_batch(task, W, s);
    ref.loss(x, y).backward();
    const double ref_norm = grad_norm(ref);
    bb::Tensor xl = x.narrow(0, r * kB, kB), yl = y.narrow(0, r * kB, kB);
    const int64_t mb_rows = kB / accum;
    for (int k = 0; k < accum; ++k) {
      bb::Tensor loss =
          model.loss(xl.narrow(0, k * mb_rows, mb_rows), yl.narrow(0, k * mb_rows, mb_rows)) * (1.0 / accum);
      if (ddp && k + 1 < accum) {
        auto guard = ddp->no_sync();
        loss.backward();
      } else {
        loss.backward();
      }
    }
    if (ddp) {
      ddp->finish();
      const double gd = max_grad_diff(model, ref);
      DCHECK(gd < 1e-6, "{}: step {}: averaged gradients differ from the full-batch gradients by {}", what, s,
             gd);
    }
    opt->step();
    if (mode == Mode::Zero) {
      const double zn = static_cast<dist::ZeroAdamW&>(*opt).last_grad_norm();
      DCHECK(std::abs(zn - ref_norm) < 1e-5 * ref_norm, "{}: step {}: gradient norm {} vs full batch {}",
             what, s, zn, ref_norm);
    }
    ref_opt.step();
    opt->zero_grad();
    ref_opt.zero_grad();
  }
  const double pd = max_param_diff(model, ref);
  DCHECK(pd < 1e-4, "{}: after {} steps parameters differ from the full-batch run by {}", what, kSteps, pd);
  if (r == 0) fmt::print("  {}: max parameter difference {:.2e}\n", what, pd);
  if (ddp) {
    const auto& st = ddp->stats();
    DCHECK(st.steps == kSteps && st.buckets == kSteps * static_cast<int64_t>(ddp->buckets().size()),
           "{}: stats count {} steps, {} buckets", what, st.steps, st.buckets);
    // Every parameter of the GPT gets a gradient, so every bucket starts during backward.
    DCHECK(st.buckets_started_in_backward == st.buckets, "{}: only {} of {} buckets started during backward",
           what, st.buckets_started_in_backward, st.buckets);
    DCHECK(st.bytes > 0 && st.comm_s > 0, "{}: stats bytes {} comm_s {}", what, st.bytes, st.comm_s);
    if (first_mb < 0.1)
      DCHECK(ddp->buckets().size() >= 3, "{}: expected several buckets, got {}", what, ddp->buckets().size());
  }
}

void bucket_order(dist::ProcessGroupPtr pg) {
  bb::nn::GPT model(config(7));
  dist::DataParallelOptions o;
  o.first_bucket_mb = 0.004;
  o.bucket_mb = 0.02;
  dist::DataParallel ddp(model, pg, o);
  auto names = model.named_parameters();
  // Reverse registration order, a small first bucket, every parameter exactly once.
  std::vector<std::string> flat;
  for (auto& b : ddp.buckets()) flat.insert(flat.end(), b.params.begin(), b.params.end());
  DCHECK(flat.size() == names.size(), "{} parameters in buckets, {} in the model", flat.size(), names.size());
  for (size_t i = 0; i < flat.size() && i < names.size(); ++i)
    DCHECK(flat[i] == names[names.size() - 1 - i].first, "bucket position {}: {} vs {}", i, flat[i],
           names[names.size() - 1 - i].first);
  DCHECK(ddp.buckets()[0].bytes() <= 4200 || ddp.buckets()[0].params.size() == 1,
         "first bucket holds {} bytes", ddp.buckets()[0].bytes());
}

void layout_mismatch(dist::ProcessGroupPtr pg) {
  const bool odd_one = pg->rank() == pg->size() - 1;
  {
    bb::nn::GPTConfig c = config(7);
    if (odd_one) c.n_embd = 48;
    bb::nn::GPT model(c);
    DEXPECT_THROW(bb::ValueError, dist::DataParallel(model, pg), "bucket layout");
  }
  {
    bb::nn::GPT model(config(7));
    dist::DataParallelOptions o;
    o.first_bucket_mb = odd_one ? 0.001 : 1.0;
    DEXPECT_THROW(bb::ValueError, dist::DataParallel(model, pg, o), "differs across ranks");
  }
  {
    bb::nn::GPTConfig c = config(7);
    if (odd_one) c.n_layer = 2;
    bb::nn::GPT model(c);
    DEXPECT_THROW(bb::ValueError, dist::ZeroAdamW(model.named_parameters(), pg), "differs across ranks");
  }
}

void misuse(dist::ProcessGroupPtr pg) {
  bb::io::AdditionTask task(2);
  bb::nn::GPT model(config(7));
  dist::DataParallel ddp(model, pg);
  auto [x, y] = global_batch(task, pg->size(), 0);
  model.loss(x, y).backward();
  // A second backward in the same step without no_sync() would average stale gradients.
  DEXPECT_THROW(bb::Error, model.loss(x, y).backward(), "no_sync");
  ddp.finish();  // drains and resets; the next step works
  for (auto& p : model.parameters()) bb::Tensor(p).set_grad(bb::Tensor());
  model.loss(x, y).backward();
  ddp.finish();
  DCHECK(model.parameters()[0].grad().defined(), "no gradient after a normal step");
}

// ZeRO state: gathered state_dict -> plain AdamW continues identically; and back; and shards.
void zero_checkpoints(dist::ProcessGroupPtr pg) {
  const int W = pg->size(), r = pg->rank();
  bb::io::AdditionTask task(2);
  bb::nn::GPT model(config(7)), ref(config(7));
  dist::ZeroAdamWOptions zo;
  static_cast<bb::optim::AdamWOptions&>(zo) = adamw_opts();
  dist::ZeroAdamW zopt(model.named_parameters(), pg, zo);
  auto train = [&](bb::nn::GPT& m, bb::optim::Optimizer& o, int s, bool full) {
    auto [x, y] = global_batch(task, W, s);
    if (full)
      m.loss(x, y).backward();
    else
      m.loss(x.narrow(0, r * kB, kB), y.narrow(0, r * kB, kB)).backward();
    o.step();
    o.zero_grad();
  };
  for (int s = 0; s < 2; ++s) train(model, zopt, s, false);

  // Memory: each rank holds about 1/W of the state.
  const size_t mine = zopt.state_bytes(), all = zopt.unsharded_state_bytes();
  DCHECK(mine * W >= all && mine * W <= all + 64 * static_cast<size_t>(W),
         "ZeRO state {} bytes per rank, {} unsharded", mine, all);

  auto state = zopt.state_dict();  // collective: the whole state on every rank
  // Plain AdamW on the full batch picks up from the gathered state.
  ref.load_state_dict(model.state_dict());
  bb::optim::AdamW aopt(ref.named_parameters(), adamw_opts());
  aopt.load_state_dict(state);
  // A second ZeroAdamW picks up from the shard files.
  bb::nn::GPT model2(config(99));
  model2.load_state_dict(model.state_dict());
  dist::ZeroAdamW zopt2(model2.named_parameters(), pg, zo);
  zopt2.load_shard_state_dict(zopt.shard_state_dict());
  // A third from the gathered state (the path that also changes world size).
  bb::nn::GPT model3(config(98));
  model3.load_state_dict(model.state_dict());
  dist::ZeroAdamW zopt3(model3.named_parameters(), pg, zo);
  zopt3.load_state_dict(aopt.state_dict());

  for (int s = 2; s < 4; ++s) {
    train(model, zopt, s, false);
    train(ref, aopt, s, true);
    train(model2, zopt2, s, false);
    train(model3, zopt3, s, false);
  }
  DCHECK(max_param_diff(model, ref) < 1e-4, "ZeRO vs AdamW resumed from the gathered state: {}",
         max_param_diff(model, ref));
  DCHECK(max_param_diff(model, model2) == 0, "ZeRO resumed from its shard: {}",
         max_param_diff(model, model2));
  DCHECK(max_param_diff(model, model3) == 0, "ZeRO resumed from an AdamW state: {}",
         max_param_diff(model, model3));
  bb::NamedTensors bad = zopt.shard_state_dict();
  bad[2].second = bb::from_vector<int64_t>({(r + 1) % W}, {});  // "zero.rank"
  DEXPECT_THROW(bb::ValueError, zopt2.load_shard_state_dict(bad), "rank");
}

// bf16 parameters with fp32 master weights: N ranks vs a one-rank ZeroAdamW (a split-off
// group) fed the same averaged gradient, computed here slice by slice: the bf16 gradient
// of each rank's slice, summed in f32, averaged, rounded to bf16 (what the reduce-scatter
// does). The masters then agree to f32 rounding.
void zero_bf16(dist::ProcessGroupPtr pg) {
  const int W = pg->size(), r = pg->rank();
  bb::io::AdditionTask task(2);
  auto self = pg->split(r);
  bb::nn::GPT model(config(7)), ref(config(7));
  model.to(bb::kBF16);
  ref.to(bb::kBF16);
  dist::ZeroAdamWOptions zo;
  static_cast<bb::optim::AdamWOptions&>(zo) = adamw_opts();
  dist::ZeroAdamW zopt(model.named_parameters(), pg, zo);
  dist::ZeroAdamW ropt(ref.named_parameters(), self, zo);
  DCHECK(zopt.state_bytes() * W >= ropt.state_bytes() && zopt.state_bytes() < ropt.state_bytes(),
         "bf16 ZeRO state {} per rank, {} on one rank", zopt.state_bytes(), ropt.state_bytes());
  auto rparams = ref.parameters();
  for (int s = 0; s < 3; ++s) {
    auto [x, y] = global_batch(task, W, s);
    model.loss(x.narrow(0, r * kB, kB), y.narrow(0, r * kB, kB)).backward();
    std::vector<bb::Tensor> acc;
    for (auto& p : rparams) acc.push_back(bb::zeros(p.shape(), {bb::kF32}));
    for (int q = 0; q < W; ++q) {
      ref.loss(x.narrow(0, q * kB, kB), y.narrow(0, q * kB, kB)).backward();
      bb::NoGradGuard ng;
      for (size_t i = 0; i < rparams.size(); ++i) acc[i] = acc[i] + rparams[i].grad().to(bb::kF32);
      ropt.zero_grad();
    }
    {
      bb::NoGradGuard ng;
      for (size_t i = 0; i < rparams.size(); ++i) {
        acc[i].mul_(1.0 / W);
        bb::Tensor(rparams[i]).set_grad(acc[i].to(bb::kBF16));
      }
    }
    zopt.step();
    ropt.step();
    zopt.zero_grad();
    ropt.zero_grad();
  }
  auto a = zopt.state_dict(), b = ropt.state_dict();
  double worst = 0;
  int masters = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].first.size() > 7 && a[i].first.substr(a[i].first.size() - 7) == ".master") {
      ++masters;
      worst = std::max(worst, max_diff(a[i].second, b[i].second));
    }
  }
  DCHECK(masters == static_cast<int>(model.named_parameters().size()), "{} master tensors", masters);
  DCHECK(worst < 1e-5, "bf16 ZeRO masters differ from the one-rank run by {}", worst);
  DCHECK(max_param_diff(model, ref) <= 1.0 / 128, "bf16 parameters differ by {}", max_param_diff(model, ref));
  if (r == 0) fmt::print("  ZeRO-1 bf16 with fp32 masters: max master difference {:.2e}\n", worst);
}

}  // namespace

int main() {
  bb::set_num_threads(1);
  auto pg = dist::init_mpi();
  pg->set_timeout(60);
  return disttest::run(*pg, [&] {
    bucket_order(pg);
    equivalence(pg, Mode::DDP, 1, 1.0, 25.0);
    equivalence(pg, Mode::DDP, 1, 0.004, 0.02);  // many buckets, overlapping backward
    equivalence(pg, Mode::DDP, 2, 0.004, 0.02);  // gradient accumulation with no_sync
    equivalence(pg, Mode::Zero, 1, 0, 0);
    equivalence(pg, Mode::Zero, 2, 0, 0);
    layout_mismatch(pg);
    misuse(pg);
    zero_checkpoints(pg);
    zero_bf16(pg);
  });
}

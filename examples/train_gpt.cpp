// barbell-train, the main job: trains a GPT on the synthetic addition task (default)
// or on any text file / token shard, with live progress, evaluation, checkpoints,
// exact resume, sample completions and a JSONL metrics log.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "barbell/barbell.hpp"

namespace bb = barbell;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  std::string data;
  std::string preset = "small";
  int64_t n_layer = 0, n_head = 0, n_embd = 0;
  int64_t steps = 1500, batch = 128, seq_len = 128;
  double lr = 2e-3, min_lr = 2e-4, weight_decay = 0.1, grad_clip = 1.0, dropout = 0.0;
  int64_t warmup = 50;
  uint64_t seed = 1337;
  std::string out = "runs/train_gpt";
  bool resume = false;
  int64_t save_every = 500, eval_every = 500, log_every = 25, eval_problems = 2000, samples = 8;
  double time_limit = 0;
  std::string device = "auto", dtype = "auto", attention = "auto";
  int digits = 3;
  bool reverse = false;
  int threads = 0;
  bool zero = false;
};

std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = static_cast<int64_t>(s + 0.5);
  return t >= 60 ? fmt::format("{}m{:02d}s", t / 60, t % 60) : fmt::format("{}s", t);
}

std::string fmt_rate(double r) { return r >= 1e6 ? fmt::format("{:.2f}M", r / 1e6) : fmt::format("{:.1f}k", r / 1e3); }

// The training data: the addition task or a token stream, behind one interface.
class Source {
 public:
  virtual ~Source() = default;
  virtual std::pair<bb::Tensor, bb::Tensor> next_batch() = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t seq_len() const = 0;
  virtual json state() const = 0;
  virtual void set_state(const json& s) = 0;
  virtual std::string describe() const = 0;
};

class AdditionSource : public Source {
 public:
  AdditionSource(const bb::io::AdditionTask& task, int64_t batch, uint64_t seed)
      : task_(task), batch_(batch), gen_(seed) {}
  std::pair<bb::Tensor, bb::Tensor> next_batch() override { return task_.batch(batch_, gen_); }
  int64_t vocab_size() const override { return task_.vocab_size(); }
  int64_t seq_len() const override { return task_.seq_len(); }
  json state() const override { return {{"offset", gen_.offset()}}; }
  void set_state(const json& s) override { gen_.set_offset(s.at("offset").get<uint64_t>()); }
  std::string describe() const override {
    return fmt::format("synthetic {}-digit addition{}, {} tokens per problem", task_.digits(),
                       task_.reverse_answer() ? " (answers written least significant digit first)" : "",
                       task_.seq_len() + 1);
  }

 private:
  const bb::io::AdditionTask& task_;
  int64_t batch_;
  bb::Generator gen_;
};

class TokenSource : public Source {
 public:
  TokenSource(std::shared_ptr<const std::vector<int32_t>> tokens, int64_t vocab, int64_t batch, int64_t T, uint64_t seed,
              std::string path, int rank = 0, int world = 1)
      : loader_(tokens, batch, T, seed, rank, world), vocab_(vocab), T_(T), ntok_(static_cast<int64_t>(tokens->size())),
        path_(std::move(path)) {}
  std::pair<bb::Tensor, bb::Tensor> next_batch() override { return loader_.next(); }
  int64_t vocab_size() const override { return vocab_; }
  int64_t seq_len() const override { return T_; }
  json state() const override { return {{"batches", loader_.state()}}; }
  void set_state(const json& s) override { loader_.set_state(s.at("batches").get<uint64_t>()); }
  std::string describe() const override {
    return fmt::format("{}: {} training tokens, vocabulary {}", path_, ntok_, vocab_);
  }

 private:
  bb::io::DataLoader loader_;
  int64_t vocab_, T_, ntok_;
  std::string path_;
};

// Exact-match accuracy on held-out problems by batched greedy decoding.
double addition_accuracy(const bb::nn::GPT& model, const bb::io::AdditionTask& task,
                         const std::vector<std::pair<int64_t, int64_t>>& problems) {
  bb::NoGradGuard ng;
  const int64_t N = static_cast<int64_t>(problems.size()), P = task.prompt_len();
  std::vector<int64_t> prompts;
  for (auto& [a, b] : problems) {
    auto p = task.encode_prompt(a, b);
    prompts.insert(prompts.end(), p.begin(), p.end());
  }
  bb::Tensor seq = bb::from_vector(prompts, {N, P}, {bb::kI64, model.transformer->wte->weight.device()});
  for (int64_t k = 0; k < task.answer_len(); ++k) {
    bb::Tensor logits = model.forward(seq).select(1, -1);  // [N, V]
    seq = bb::cat({seq, bb::argmax(logits, -1, true)}, 1);
  }
  auto all = seq.to_vector<int64_t>();
  int64_t correct = 0;
  const int64_t L = P + task.answer_len();
  for (int64_t i = 0; i < N; ++i) {
    std::vector<int32_t> ans(all.begin() + i * L + P, all.begin() + (i + 1) * L);
    if (task.decode_answer(ans) == problems[static_cast<size_t>(i)].first + problems[static_cast<size_t>(i)].second)
      ++correct;
  }
  return N ? static_cast<double>(correct) / static_cast<double>(N) : 0.0;
}

double eval_loss(const bb::nn::GPT& model, Source& src, int64_t batches) {
  bb::NoGradGuard ng;
  double total = 0;
  for (int64_t i = 0; i < batches; ++i) {
    auto [x, y] = src.next_batch();
    bb::Device dev = model.transformer->wte->weight.device();
    total += model.loss(x.to(dev), y.to(dev)).item<double>();
  }
  return total / static_cast<double>(batches);
}

std::string model_json(const bb::nn::GPTConfig& c) {
  return json{{"vocab_size", c.vocab_size}, {"block_size", c.block_size}, {"n_layer", c.n_layer},
              {"n_head", c.n_head},         {"n_embd", c.n_embd},         {"bias", c.bias}}
      .dump();
}

// The settings a resumed run must share with the run it continues, or its losses
// would not be the ones an uninterrupted run gets. (--steps may change: with the same
// schedule shape a run can be extended.)
json run_json(const Args& a, bb::DType dtype) {
  return {{"data", a.data.empty() ? "addition" : a.data}, {"digits", a.digits}, {"reverse", a.reverse},
          {"seed", a.seed}, {"batch", a.batch}, {"seq_len", a.data.empty() ? 0 : a.seq_len},
          {"dropout", a.dropout}, {"lr", a.lr}, {"min_lr", a.min_lr}, {"warmup", a.warmup},
          {"weight_decay", a.weight_decay}, {"grad_clip", a.grad_clip}, {"dtype", bb::dtype_name(dtype)}};
}

int run(const Args& args) {
  auto t_start = Clock::now();
  if (args.threads > 0) bb::set_num_threads(args.threads);
  // --device auto: the first GPU when there is one. --dtype auto: bf16 on a GPU (with
  // fp32 master weights in AdamW and fp32 statistics, softmax and loss), f32 on the CPU.
  bb::Device device = args.device == "auto"
                          ? (bb::cuda::is_available() ? bb::Device::cuda(0) : bb::Device::cpu())
                          : bb::Device::parse(args.device);
  if (device.is_cuda()) {
    int n = bb::cuda::device_count();
    BB_CHECK(device.index() < n, bb::DeviceError, "barbell-train: --device {}: {} CUDA device(s) are visible{}",
             args.device, n, BARBELL_HAVE_CUDA ? "" : " (this build has no CUDA backend)");
  }
  BB_CHECK(args.dtype == "auto" || args.dtype == "f32" || args.dtype == "bf16" || args.dtype == "f16", bb::ValueError,
           "barbell-train: --dtype {}: expected auto, f32, bf16 or f16", args.dtype);
  const bb::DType dtype = args.dtype == "auto" ? (device.is_cuda() ? bb::kBF16 : bb::kF32)
                          : args.dtype == "f32" ? bb::kF32
                          : args.dtype == "bf16" ? bb::kBF16
                                                 : bb::kF16;

  // Data parallelism: under mpirun (or RANK/WORLD_SIZE) every rank trains --batch / N
  // sequences per step on its own data; alone, init() gives a one-rank group and nothing
  // changes. CPU ranks use MPI, GPUs NCCL (rank r on GPU local_rank % device_count).
  bb::dist::InitOptions dio;
  dio.backend = device.is_cuda() ? bb::dist::Backend::NCCL : bb::dist::Backend::MPI;
  auto pg = bb::dist::init(dio);
  const int rank = pg->rank(), world = pg->size();
  const bool lead = rank == 0;
  if (pg->backend() == bb::dist::Backend::NCCL) device = pg->device();
  BB_CHECK(args.batch % world == 0, bb::ValueError, "barbell-train: --batch {} must be a multiple of the {} ranks",
           args.batch, world);
  const int64_t local_batch = args.batch / world;
  // Rank 0 keeps the single-process seed, so a one-rank job reproduces a run without mpirun.
  const uint64_t rank_seed = args.seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(rank);

  // Data.
  std::optional<bb::io::AdditionTask> task;
  std::unique_ptr<Source> train_src, val_src;
  std::shared_ptr<const std::vector<int32_t>> train_tokens, val_tokens;
  if (args.data.empty()) {
    task.emplace(args.digits, args.reverse);
    train_src = std::make_unique<AdditionSource>(*task, local_batch, rank_seed);
  } else {
    auto tokens = bb::io::load_tokens(args.data);
    int64_t vocab = 256;
    if (args.data.size() >= 4 && args.data.substr(args.data.size() - 4) == ".bin") {
      vocab = *std::max_element(tokens.begin(), tokens.end()) + 1;
      if (vocab > 256) vocab = std::max<int64_t>(vocab, 50257);  // GPT-2 token ids
    }
    int64_t n = static_cast<int64_t>(tokens.size());
    int64_t n_val = std::max<int64_t>(args.seq_len + 1, n / 10);
    BB_CHECK(n - n_val >= args.seq_len + 1, bb::ValueError,
             "barbell-train: {} has {} tokens, too few for --seq-len {} with a 10% validation split", args.data, n,
             args.seq_len);
    train_tokens = std::make_shared<const std::vector<int32_t>>(tokens.begin(), tokens.end() - n_val);
    val_tokens = std::make_shared<const std::vector<int32_t>>(tokens.end() - n_val, tokens.end());
    train_src = std::make_unique<TokenSource>(train_tokens, vocab, local_batch, args.seq_len, args.seed, args.data, rank,
                                              world);
    val_src = std::make_unique<TokenSource>(val_tokens, vocab, args.batch, args.seq_len, args.seed + 1, "validation");
  }

  // Model.
  bb::nn::GPTConfig cfg = bb::nn::GPTConfig::preset(args.preset);
  if (args.n_layer) cfg.n_layer = args.n_layer;
  if (args.n_head) cfg.n_head = args.n_head;
  if (args.n_embd) cfg.n_embd = args.n_embd;
  cfg.vocab_size = train_src->vocab_size();
  cfg.block_size = train_src->seq_len();
  cfg.dropout = args.dropout;
  cfg.seed = args.seed;
  cfg.attn_backend = args.attention == "flash"   ? bb::AttentionBackend::Flash
                     : args.attention == "cudnn" ? bb::AttentionBackend::Cudnn
                     : args.attention == "math"  ? bb::AttentionBackend::Math
                                                 : bb::AttentionBackend::Auto;
  bb::manual_seed(args.seed);
  bb::nn::GPT model(cfg);
  model.to(device);
  model.to(dtype);
  bb::optim::AdamWOptions ao;
  ao.lr = args.lr;
  ao.beta1 = 0.9;
  ao.beta2 = 0.99;
  ao.weight_decay = args.weight_decay;
  // DataParallel averages the gradients during backward; --zero shards AdamW's state
  // instead (ZeroAdamW averages the gradients itself and clips from its shards).
  std::unique_ptr<bb::dist::DataParallel> ddp;
  std::unique_ptr<bb::optim::Optimizer> opt;
  if (args.zero) {
    bb::dist::ZeroAdamWOptions zo;
    static_cast<bb::optim::AdamWOptions&>(zo) = ao;
    zo.max_grad_norm = args.grad_clip;
    opt = std::make_unique<bb::dist::ZeroAdamW>(model.named_parameters(), pg, zo);
  } else {
    ddp = std::make_unique<bb::dist::DataParallel>(model, pg);
    opt = std::make_unique<bb::optim::AdamW>(model.named_parameters(), ao);
  }
  bb::optim::CosineSchedule sched(args.lr, args.min_lr, std::min(args.warmup, args.steps), args.steps);

  if (lead) std::filesystem::create_directories(args.out);
  if (rank > 0) bb::manual_seed(rank_seed);  // each rank its own dropout masks
  const std::string ckpt = args.out + "/checkpoint.safetensors";
  const std::string metrics_path = args.out + "/metrics.jsonl";
  int64_t step = 0;
  if (args.resume) {
    auto f = bb::io::load_safetensors(ckpt);
    auto meta = f.metadata;
    BB_CHECK(meta.count("barbell.model") && meta["barbell.model"] == model_json(cfg), bb::ValueError,
             "barbell-train: --resume: {} holds model {} but the flags give {}", ckpt,
             meta.count("barbell.model") ? meta["barbell.model"] : "(none)", model_json(cfg));
    bb::NamedTensors model_state, opt_state;
    for (auto& [n, t] : f.tensors) {
      if (n.rfind("optimizer.", 0) == 0) opt_state.emplace_back(n.substr(10), t);
      else model_state.emplace_back(n, t);
    }
    model.load_state_dict(model_state);
    opt->load_state_dict(opt_state);
    json saved_run = json::parse(meta.count("barbell.run") ? meta["barbell.run"] : "{}", nullptr, false);
    json now_run = run_json(args, dtype);
    std::string diffs;
    for (auto& [k, v] : now_run.items())
      if (!saved_run.is_object() || !saved_run.contains(k) || saved_run[k] != v)
        diffs += fmt::format(" --{}: checkpoint {}, now {};", k,
                             saved_run.is_object() && saved_run.contains(k) ? saved_run[k].dump() : "(none)", v.dump());
    BB_CHECK(diffs.empty(), bb::ValueError, "barbell-train: --resume: {} was trained with other settings:{}", ckpt,
             diffs);
    json st = json::parse(meta.at("barbell.train_state"));
    step = st.at("step").get<int64_t>();
    train_src->set_state(st.at("data"));
    bb::default_generator().manual_seed(st.at("rng_seed").get<uint64_t>());
    bb::default_generator().set_offset(st.at("rng_offset").get<uint64_t>());
    if (rank > 0) bb::default_generator().manual_seed(st.at("rng_seed").get<uint64_t>() + rank_seed - args.seed);
    if (lead) fmt::print("resumed from {} at step {}\n", ckpt, step);
  }
  if (args.resume && lead) {
    // Drop what an interrupted run logged after its last checkpoint: those steps run again.
    std::ifstream in(metrics_path);
    std::string line, kept;
    while (std::getline(in, line)) {
      json m = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!m.is_discarded() && m.contains("step") && m["step"].get<int64_t>() <= step) kept += line + "\n";
    }
    std::ofstream(metrics_path, std::ios::trunc) << kept;
  }
  std::ofstream metrics;  // rank 0 alone prints, logs, evaluates and writes checkpoints
  if (lead) {
    metrics.open(metrics_path, args.resume ? std::ios::app : std::ios::trunc);
    BB_CHECK(metrics.good(), bb::IOError, "barbell-train: cannot write {}", metrics_path);
  }

  // Called on every rank: with --zero, state_dict() gathers the shards (a collective).
  auto save = [&](int64_t at_step) {
    bb::NamedTensors opt_state = opt->state_dict();
    if (!lead) return;
    bb::NamedTensors all = model.state_dict();
    for (auto& [n, t] : opt_state) all.emplace_back("optimizer." + n, t);
    json st = {{"step", at_step},
               {"data", train_src->state()},
               {"rng_seed", bb::default_generator().seed()},
               {"rng_offset", bb::default_generator().offset()}};
    bb::io::save_safetensors(ckpt, all,
                             {{"format", "pt"},
                              {"barbell.model", model_json(cfg)},
                              {"barbell.run", run_json(args, dtype).dump()},
                              {"barbell.train_state", st.dump()},
                              {"barbell.data", args.data.empty() ? "addition" : args.data}});
  };

  std::vector<std::pair<int64_t, int64_t>> held_out;
  if (task) held_out = task->held_out(args.eval_problems);
  auto evaluate = [&](int64_t at_step) {
    json m = {{"step", at_step}};
    model.eval();
    if (task && !held_out.empty()) {
      double acc = addition_accuracy(model, *task, held_out);
      m["accuracy"] = acc;
      fmt::print("eval step {}: exact match {:.2f}% on {} held-out problems\n", at_step, 100 * acc, held_out.size());
    } else if (val_src) {
      val_src->set_state(json{{"batches", 0}});  // the same validation batches every time
      double vl = eval_loss(model, *val_src, 10);
      m["val_loss"] = vl;
      fmt::print("eval step {}: validation loss {:.4f}\n", at_step, vl);
    }
    model.train();
    std::fflush(stdout);
    metrics << m.dump() << "\n" << std::flush;
    return m;
  };

  if (lead) {
  fmt::print("barbell-train: {}\n", train_src->describe());
  if (world > 1)
    fmt::print("data parallel: {} ranks ({}), {} sequences each, {}\n", world, bb::dist::backend_name(pg->backend()),
               local_batch, args.zero ? "ZeRO-1 AdamW" : "gradients averaged by DataParallel");
  fmt::print("model: {} layers, {} heads, width {}, vocab {}, context {}: {:.2f}M parameters; device {}{}, {}\n",
             cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size, cfg.block_size, model.num_parameters() / 1e6,
             device.str(), device.is_cuda() ? " (" + bb::cuda::properties(device.index()).name + ")" : "",
             dtype == bb::kF32 ? std::string("f32")
                               : fmt::format("{} compute, fp32 master weights", bb::dtype_name(dtype)));
  if (device.is_cpu()) fmt::print("{} CPU threads\n", bb::num_threads());
  {
    // The attention backend this model will run, resolved on a q like its layers' (head
    // dim n_embd / n_head, this device and dtype): Auto falls back to math for head dims
    // the flash kernels do not take.
    const int64_t hd = cfg.n_embd / cfg.n_head;
    bb::Tensor probe = bb::empty({1, 1, 1, hd}, {dtype, device});
    bb::AttentionBackend resolved;
    try {
      resolved = bb::resolve_attention_backend(probe, probe, probe, cfg.attn_backend, true);
    } catch (const bb::Error& e) {
      throw bb::ValueError(fmt::format("barbell-train: --attention {} with head dim {} ({} on {}): {}", args.attention,
                                       hd, bb::dtype_name(dtype), device.str(), e.what()));
    }
    fmt::print("attention: {} (head dim {})\n", bb::attention_backend_name(resolved), hd);
  }
  fmt::print("training {} steps of {} x {} tokens, AdamW lr {} -> {}, warm-up {}\n", args.steps, args.batch,
             train_src->seq_len(), args.lr, args.min_lr, args.warmup);
  std::fflush(stdout);
  }

  const bool tty = isatty(fileno(stdout));
  const int64_t tokens_per_step = args.batch * train_src->seq_len();
  auto t_train = Clock::now();
  int64_t first_step = step;
  double loss_ema = NAN;
  bool stopped_early = false;
  while (step < args.steps) {
    double lr = sched(step);
    opt->set_lr(lr);
    auto [xb, yb] = train_src->next_batch();
    bb::Tensor loss = model.loss(xb.to(device), yb.to(device));
    loss.backward();
    double gnorm = 0;
    if (ddp) {
      ddp->finish();  // every rank now holds the same averaged gradients
      gnorm = bb::optim::clip_grad_norm_(model.parameters(), args.grad_clip);
    }
    opt->step();
    if (!ddp) gnorm = static_cast<bb::dist::ZeroAdamW&>(*opt).last_grad_norm();
    opt->zero_grad();
    ++step;
    // The loss averaged over ranks: every rank logs and checks the same number.
    bb::Tensor lt = loss.detach().to(bb::kF32).reshape({1}).clone();
    pg->all_reduce(lt, bb::dist::ReduceOp::Avg)->wait();
    double l = lt.item<double>();
    BB_CHECK(std::isfinite(l), bb::Error, "barbell-train: the loss became {} at step {}", l, step);
    loss_ema = std::isnan(loss_ema) ? l : 0.9 * loss_ema + 0.1 * l;
    double elapsed = std::chrono::duration<double>(Clock::now() - t_train).count();
    double tps = static_cast<double>((step - first_step) * tokens_per_step) / std::max(elapsed, 1e-9);
    double eta = elapsed / static_cast<double>(step - first_step) * static_cast<double>(args.steps - step);
    if (lead) metrics << json{{"step", step}, {"loss", l}, {"lr", lr}, {"grad_norm", gnorm}, {"tokens_per_s", tps},
                    {"elapsed_s", elapsed}}.dump()
            << "\n";
    if (lead && (step % args.log_every == 0 || step == args.steps || tty)) {
      std::string line = fmt::format("step {:>5}/{} | loss {:.4f} | lr {:.2e} | {} tok/s | {:.0f} ms/step | ETA {}",
                                     step, args.steps, loss_ema, lr, fmt_rate(tps),
                                     1e3 * elapsed / static_cast<double>(step - first_step), fmt_duration(eta));
      if (tty) fmt::print("\r{}\x1b[K{}", line, step % args.log_every == 0 ? "\n" : "");
      else fmt::print("{}\n", line);
      std::fflush(stdout);
    }
    // Save first: a failure in evaluation must not cost the training done since the last save.
    if (args.save_every > 0 && step % args.save_every == 0 && step < args.steps) save(step);
    if (lead && args.eval_every > 0 && step % args.eval_every == 0 && step < args.steps) evaluate(step);
    // Ranks must stop together: rank 0's clock decides for all of them.
    bool out_of_time =
        args.time_limit > 0 && std::chrono::duration<double>(Clock::now() - t_start).count() > args.time_limit;
    if (args.time_limit > 0 && world > 1) {
      bb::Tensor f = bb::from_vector<int32_t>({out_of_time ? 1 : 0}, {1}).to(pg->device());
      pg->broadcast(f, 0)->wait();
      out_of_time = f.item<int>() != 0;
    }
    if (out_of_time) {
      if (lead) fmt::print("\ntime limit of {} s reached at step {}\n", args.time_limit, step);
      stopped_early = true;
      break;
    }
  }
  if (tty && lead) fmt::print("\n");
  save(step);
  if (!lead) return 0;  // rank 0 alone evaluates and samples
  evaluate(step);
  fmt::print("checkpoint: {} (step {})\nmetrics: {}\n", ckpt, step, metrics_path);

  // Samples.
  model.eval();
  if (task) {
    fmt::print("samples (held-out problems, greedy):\n");
    auto probs = task->held_out(args.eval_problems + args.samples);
    for (int64_t i = 0; i < args.samples; ++i) {
      auto [a, b] = probs[static_cast<size_t>(args.eval_problems + i)];
      auto prompt = task->encode_prompt(a, b);
      auto out = model.generate(prompt, task->answer_len(), 0.0, 0, bb::io::AdditionTask::kEnd);
      std::vector<int32_t> ans(out.begin() + task->prompt_len(), out.end());
      int64_t v = task->decode_answer(ans);
      fmt::print("  {}{:<5} {}{}\n", bb::io::AdditionTask::to_text(prompt), v >= 0 ? std::to_string(v) : "??",
                 v == a + b ? "ok" : fmt::format("wrong (expected {})", a + b),
                 task->reverse_answer() ? fmt::format("  [model wrote {}]", bb::io::AdditionTask::to_text(ans)) : "");
    }
  } else {
    bb::io::ByteTokenizer tok;
    std::vector<int32_t> prompt(val_tokens->begin(), val_tokens->begin() + std::min<int64_t>(16, cfg.block_size / 2));
    for (int64_t i = 0; i < std::min<int64_t>(args.samples, 3); ++i) {
      auto out = model.generate(prompt, std::min<int64_t>(200, cfg.block_size), 0.8, 40);
      if (cfg.vocab_size <= 256) fmt::print("sample {}:\n{}\n---\n", i, tok.decode(out));
      else fmt::print("sample {}: {} token ids\n", i, out.size());
    }
  }
  double total = std::chrono::duration<double>(Clock::now() - t_start).count();
  fmt::print("done in {}{}\n", fmt_duration(total), stopped_early ? " (stopped by --time-limit)" : "");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{"barbell-train: train a GPT on the GPU or the CPU (synthetic addition by default, or --data FILE)"};
  app.add_option("--data", a.data, "Text file (byte-level) or llm.c token shard (.bin); default: synthetic addition");
  app.add_option("--preset", a.preset, "Model preset: tiny, small, medium, gpt2")->capture_default_str();
  app.add_option("--n-layer", a.n_layer, "Override the preset's number of layers");
  app.add_option("--n-head", a.n_head, "Override the preset's number of heads");
  app.add_option("--n-embd", a.n_embd, "Override the preset's width");
  app.add_option("--steps", a.steps, "Training steps")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--batch", a.batch, "Sequences per step")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seq-len", a.seq_len, "Context length with --data")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--lr", a.lr, "Peak learning rate")->capture_default_str();
  app.add_option("--min-lr", a.min_lr, "Final learning rate of the cosine schedule")->capture_default_str();
  app.add_option("--warmup", a.warmup, "Linear warm-up steps")->capture_default_str();
  app.add_option("--weight-decay", a.weight_decay, "AdamW weight decay (2-D weights only)")->capture_default_str();
  app.add_option("--grad-clip", a.grad_clip, "Global gradient-norm clip")->capture_default_str();
  app.add_option("--dropout", a.dropout, "Dropout probability")->capture_default_str();
  app.add_option("--seed", a.seed, "Seed for initialisation, data and dropout")->capture_default_str();
  app.add_option("--out", a.out, "Output directory (checkpoint.safetensors, metrics.jsonl)")->capture_default_str();
  app.add_flag("--resume", a.resume, "Continue from the checkpoint in --out");
  app.add_option("--save-every", a.save_every, "Checkpoint every N steps (0: only at the end)")->capture_default_str();
  app.add_option("--eval-every", a.eval_every, "Evaluate every N steps (0: only at the end)")->capture_default_str();
  app.add_option("--log-every", a.log_every, "Print a progress line every N steps")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--eval-problems", a.eval_problems, "Held-out addition problems to evaluate")->capture_default_str();
  app.add_option("--samples", a.samples, "Sample completions printed at the end")->capture_default_str();
  app.add_option("--time-limit", a.time_limit, "Stop training after this many seconds (0: no limit)")->capture_default_str();
  app.add_option("--device", a.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--attention", a.attention,
                 "Attention backend: auto (flash kernels on a GPU where they apply), flash, cudnn, math")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "flash", "cudnn", "math"}));
  app.add_option("--dtype", a.dtype, "Compute dtype: auto (bf16 on a GPU, f32 on the CPU), f32, bf16, f16")
      ->capture_default_str();
  app.add_option("--digits", a.digits, "Digits per operand in the addition task")->capture_default_str()->check(CLI::Range(1, 9));
  app.add_flag("--reverse", a.reverse, "Addition task: the model writes the answer least significant digit first");
  app.add_option("--threads", a.threads, "CPU threads (0: barbell's default, one per physical core)")
      ->capture_default_str();
  app.add_flag("--zero", a.zero, "Under mpirun: shard AdamW's state over the ranks (ZeRO-1) instead of DataParallel");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(a);
  } catch (const std::exception& e) {
    fmt::print(stderr, "\nerror: {}\n", e.what());
    // Under mpirun the other ranks may be waiting in a collective: end them all.
    if (barbell::dist::launched_by_mpi()) barbell::dist::abort_job(fmt::format("barbell-train: {}", e.what()));
    return 1;
  }
}

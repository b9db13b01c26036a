// barbell-train, the main job: trains a GPT on the synthetic addition task (default)
// or on any text file / token shard, with live progress, evaluation, checkpoints,
// exact resume, sample completions and a JSONL metrics log.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "barbell/barbell.hpp"
#include "train_checkpoint.hpp"

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
  bool force_threads = false;
  bool zero = false;
  std::string init_from, export_hf, tokenizer;  // Hugging Face GPT-2 folders, GPT-2 BPE
};

// ---- flag validators --------------------------------------------------------------
// Each flag's real range, said in words (CLI::Range prints DBL_MAX's 309 digits). A
// validator sees the text before CLI11 converts it, so NaN, inf and junk are caught here.

// A floating flag: a finite number for which ok(v) holds; `range` says which ("in [0, 1)").
CLI::Validator real_flag(const std::string& range, std::function<bool(double)> ok) {
  return CLI::Validator(
      [range, ok](std::string& in) -> std::string {
        char* end = nullptr;
        errno = 0;
        const double v = std::strtod(in.c_str(), &end);
        if (in.empty() || end == in.c_str() || *end != '\0') return fmt::format("'{}' is not a number", in);
        if (!std::isfinite(v) || errno == ERANGE)
          return fmt::format("{} is not a finite number (must be {})", in, range);
        if (!ok(v)) return fmt::format("{} is out of range: must be {}", in, range);
        return {};
      },
      range);
}

// An integer flag in [lo, hi].
CLI::Validator int_flag(int64_t lo, int64_t hi, const std::string& range) {
  return CLI::Validator(
      [lo, hi, range](std::string& in) -> std::string {
        char* end = nullptr;
        errno = 0;
        const long long v = std::strtoll(in.c_str(), &end, 10);
        if (in.empty() || end == in.c_str() || *end != '\0') return fmt::format("'{}' is not an integer", in);
        if (errno == ERANGE || v < lo || v > hi)
          return fmt::format("{} is out of range: must be {}", in, range);
        return {};
      },
      range);
}

// A uint64 flag (the seed): strtoull would take "-1" as 2^64 - 1.
CLI::Validator u64_flag() {
  return CLI::Validator(
      [](std::string& in) -> std::string {
        char* end = nullptr;
        errno = 0;
        std::strtoull(in.c_str(), &end, 10);
        if (in.empty() || in[0] == '-' || in[0] == '+' || end == in.c_str() || *end != '\0' ||
            errno == ERANGE)
          return fmt::format("'{}' is not an integer in [0, 2^64)", in);
        return {};
      },
      "in [0, 2^64)");
}

constexpr int64_t kMaxSteps = int64_t{1} << 53;  // the optimizers' state holds at most 2^53 steps
constexpr int64_t kMaxEvalProblems = 1000000;
constexpr int kMaxThreads = 1024;

// The cores this process may run on (its affinity mask, e.g. under taskset or a container).
int available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// Refuses, before anything is allocated, a model and batch that cannot fit: a lower bound
// of what training holds (weights, gradients, AdamW's two fp32 moments and the fp32
// master of a 16-bit model; four [B, T, C] activations per layer and the logits with
// their gradient) against the device's memory. An allocation would otherwise fail deep in
// the first step, or (overcommit) the kernel would kill the process.
void check_fits(const bb::nn::GPTConfig& c, int64_t batch, bb::DType dtype, bb::Device device,
                const Args& a) {
  using LD = long double;
  const LD C = static_cast<LD>(c.n_embd), L = static_cast<LD>(c.n_layer), V = static_cast<LD>(c.vocab_size),
           T = static_cast<LD>(c.block_size), B = static_cast<LD>(batch),
           e = static_cast<LD>(bb::dtype_size(dtype));
  const LD params = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C;
  const LD state = params * (2 * e + 8 + (e < 4 ? 4 : 0));
  const LD acts = B * T * (L * 4 * C * e + 2 * V * 4);
  const LD need = state + acts;
  LD have = 0;
  if (device.is_cuda()) {
    have = static_cast<LD>(bb::cuda::properties(device.index()).total_memory);
  } else {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    have = pages > 0 && page > 0 ? static_cast<LD>(pages) * static_cast<LD>(page) : 0;
  }
  if (have > 0 && need > have) {
    throw bb::ValueError(fmt::format(
        "barbell-train: the model and batch do not fit: --n-layer {} --n-head {} --n-embd {} (preset {}), "
        "vocab {}, "
        "context {}, --batch {}{}: {:.4g} parameters; training needs at least {:.4g} GiB, {} has {:.4g} GiB",
        c.n_layer, c.n_head, c.n_embd, a.preset, c.vocab_size, c.block_size, a.batch,
        a.data.empty() ? "" : fmt::format(" (--seq-len {})", a.seq_len), static_cast<double>(params),
        static_cast<double>(need / (1u << 30)), device.str(), static_cast<double>(have / (1u << 30))));
  }
}

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

// Exact-match accuracy on held-out problems by batched greedy decoding, in chunks of
// 1024 problems so that memory does not grow with --eval-problems.
double addition_accuracy(const bb::nn::GPT& model, const bb::io::AdditionTask& task,
                         const std::vector<std::pair<int64_t, int64_t>>& problems) {
  bb::NoGradGuard ng;
  const int64_t total = static_cast<int64_t>(problems.size()), P = task.prompt_len(),
                L = P + task.answer_len();
  int64_t correct = 0;
  for (int64_t first = 0; first < total; first += 1024) {
    const int64_t N = std::min<int64_t>(1024, total - first);
    std::vector<int64_t> prompts;
    for (int64_t i = first; i < first + N; ++i) {
      auto p =
          task.encode_prompt(problems[static_cast<size_t>(i)].first, problems[static_cast<size_t>(i)].second);
      prompts.insert(prompts.end(), p.begin(), p.end());
    }
    bb::Tensor seq = bb::from_vector(prompts, {N, P}, {bb::kI64, model.transformer->wte->weight.device()});
    for (int64_t k = 0; k < task.answer_len(); ++k) {
      bb::Tensor logits = model.forward(seq).select(1, -1);  // [N, V]
      seq = bb::cat({seq, bb::argmax(logits, -1, true)}, 1);
    }
    auto all = seq.to_vector<int64_t>();
    for (int64_t i = 0; i < N; ++i) {
      std::vector<int32_t> ans(all.begin() + i * L + P, all.begin() + (i + 1) * L);
      const auto& [a, b] = problems[static_cast<size_t>(first + i)];
      if (task.decode_answer(ans) == a + b) ++correct;
    }
  }
  return total ? static_cast<double>(correct) / static_cast<double>(total) : 0.0;
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

// The settings a resumed run must share with the run it continues, or its losses
// would not be the ones an uninterrupted run gets. (--steps may change: with the same
// schedule shape a run can be extended.)
json run_json(const Args& a, bb::DType dtype) {
  json j = {{"data", a.data.empty() ? "addition" : a.data}, {"digits", a.digits}, {"reverse", a.reverse},
            {"seed", a.seed}, {"batch", a.batch}, {"seq_len", a.data.empty() ? 0 : a.seq_len},
            {"dropout", a.dropout}, {"lr", a.lr}, {"min_lr", a.min_lr}, {"warmup", a.warmup},
            {"weight_decay", a.weight_decay}, {"grad_clip", a.grad_clip}, {"dtype", bb::dtype_name(dtype)}};
  if (!a.tokenizer.empty()) j["tokenizer"] = a.tokenizer;  // BPE ids, not bytes
  return j;
}

// --- Hugging Face GPT-2 folders and GPT-2's BPE tokenizer (--init-from, --export-hf, --tokenizer) ---

// Flags that only make sense together, checked before any work.
void check_hf_flags(const Args& a) {
  BB_CHECK(a.tokenizer.empty() || !a.data.empty(), bb::ValueError,
           "barbell-train: --tokenizer {} needs --data (the addition task has its own 13-token vocabulary)",
           a.tokenizer);
  if (a.init_from.empty()) return;
  BB_CHECK(!a.data.empty(), bb::ValueError,
           "barbell-train: --init-from {} needs --data: the addition task's 13 tokens mean nothing to a "
           "pretrained model",
           a.init_from);
}

// With --tokenizer, text becomes GPT-2 BPE ids and is written as an llm.c shard in --out (so that later runs
// read the ids with --data OUT/tokens.bin); a .bin shard is checked against the vocabulary.
// `tokens` holds what load_tokens read: for a text file its bytes.
void apply_tokenizer(const Args& a, const bb::io::GPT2Tokenizer& tok, bool lead, std::vector<int32_t>& tokens,
                     int64_t& vocab) {
  vocab = tok.vocab_size();
  const bool shard = a.data.size() >= 4 && a.data.substr(a.data.size() - 4) == ".bin";
  if (!shard) {
    BB_CHECK(vocab <= 65536, bb::ValueError,
             "barbell-train: --tokenizer {}: {} tokens do not fit the uint16 ids of a token shard",
             a.tokenizer, vocab);
    auto t0 = Clock::now();
    const std::string text(tokens.begin(), tokens.end());
    tokens = tok.encode(text);
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    if (lead) {
      std::filesystem::create_directories(a.out);
      const std::string path = a.out + "/tokens.bin";
      bb::io::write_token_shard(path, std::vector<uint16_t>(tokens.begin(), tokens.end()));
      fmt::print(
          "tokenizer: {} ({} tokens): {} bytes of text -> {} tokens in {:.2f} s, written to {} (an llm.c "
          "shard: --data {} --tokenizer {} trains on the same ids without encoding again)\n",
          a.tokenizer, vocab, text.size(), tokens.size(), secs, path, path, a.tokenizer);
    }
  }
  const int32_t top = *std::max_element(tokens.begin(), tokens.end());
  BB_CHECK(top < vocab, bb::ValueError,
           "barbell-train: {} holds token id {}, outside --tokenizer {}'s {} tokens", a.data, top,
           a.tokenizer, vocab);
}

// --init-from: the model is the folder's (its sizes, its context, its vocabulary); --dropout, --seed and
// --attention still apply. Returns the folder's config; `cfg` becomes the model's.
bb::io::HFGPT2Config init_config(const Args& a, bb::nn::GPTConfig& cfg, int64_t data_vocab, int64_t seq_len,
                                 bool lead) {
  bb::io::HFGPT2Config hf = bb::io::read_hf_gpt2_config(a.init_from);
  const bb::nn::GPTConfig& g = hf.gpt;
  const std::pair<const char*, std::pair<int64_t, int64_t>> sizes[] = {{"--n-layer", {a.n_layer, g.n_layer}},
                                                                       {"--n-head", {a.n_head, g.n_head}},
                                                                       {"--n-embd", {a.n_embd, g.n_embd}}};
  for (const auto& [flag, v] : sizes) {
    BB_CHECK(v.first == 0 || v.first == v.second, bb::ValueError,
             "barbell-train: {} {} contradicts --init-from {}, whose model has {}", flag, v.first,
             a.init_from, v.second);
  }
  BB_CHECK(data_vocab <= g.vocab_size, bb::ValueError,
           "barbell-train: --init-from {}: the model has {} tokens, the data needs {}", a.init_from,
           g.vocab_size, data_vocab);
  BB_CHECK(seq_len <= g.block_size, bb::ValueError,
           "barbell-train: --seq-len {} is longer than --init-from {}'s n_positions {}", seq_len, a.init_from,
           g.block_size);
  if (lead && a.tokenizer.empty() && data_vocab <= 256 && g.vocab_size > 256)
    fmt::print(
        "note: --init-from {} has {} tokens but the data is byte-level: the ids are bytes, not that model's "
        "tokens (give --tokenizer DIR for GPT-2 BPE)\n",
        a.init_from, g.vocab_size);
  const double dropout = cfg.dropout;
  const uint64_t seed = cfg.seed;
  const bb::AttentionBackend backend = cfg.attn_backend;
  cfg = g;
  cfg.dropout = dropout;
  cfg.seed = seed;
  cfg.attn_backend = backend;
  return hf;
}

// --export-hf: config.json and model.safetensors in the model's dtype, plus the tokenizer's files, so that
// GPT2LMHeadModel.from_pretrained(dir) and GPT2TokenizerFast.from_pretrained(dir) both open the folder.
void export_hf(const Args& a, const bb::nn::GPT& model, const std::optional<bb::io::GPT2Tokenizer>& tok,
               const std::optional<bb::io::HFGPT2Config>& init) {
  bb::io::HFGPT2SaveOptions o;
  if (tok && tok->token_id("<|endoftext|>")) {
    o.bos_token_id = o.eos_token_id = *tok->token_id("<|endoftext|>");
  } else if (init) {
    o.bos_token_id = init->bos_token_id;
    o.eos_token_id = init->eos_token_id;
  }
  bb::io::save_hf_gpt2(model, a.export_hf, o);
  std::string files = "config.json, model.safetensors";
  if (tok) {
    for (const char* f : {"vocab.json", "merges.txt"}) {
      std::filesystem::copy_file(a.tokenizer + "/" + f, a.export_hf + "/" + f,
                                 std::filesystem::copy_options::overwrite_existing);
      files += std::string(", ") + f;
    }
  }
  fmt::print("exported: {} (a Hugging Face GPT-2 folder: {})\n", a.export_hf, files);
}

// A sample's text; ids the tokenizer lacks (a padded vocabulary's) are shown as <id>.
std::string decode_sample(const bb::io::GPT2Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::string out;
  for (int32_t id : ids) {
    try {
      out += tok.decode({id});
    } catch (const bb::IndexError&) { out += fmt::format("<{}>", id); }
  }
  return out;
}

int run(const Args& args) {
  auto t_start = Clock::now();
  // More threads than cores only adds switching (and --threads 100000 would start 100000).
  const int cores = available_cores();
  std::string threads_note;
  int threads = args.threads;
  if (threads > cores && !args.force_threads) {
    threads_note =
        fmt::format("note: --threads {}: {} cores are available, using {} (--force-threads to use more)",
                    threads, cores, cores);
    threads = cores;
  }
  if (threads > 0) bb::set_num_threads(threads);
  // --device auto: the first GPU when there is one (the emulated device of a
  // BARBELL_CUDA=EMULATE build is not one: it is for tests, and very slow). --dtype auto:
  // bf16 on a GPU (with fp32 master weights in AdamW and fp32 statistics, softmax and
  // loss), f32 on the CPU.
  bb::Device device = bb::Device::cpu();
  try {
    device = args.device == "auto" ? (bb::cuda::is_available() && !bb::cuda::is_emulated() ? bb::Device::cuda(0)
                                                                                          : bb::Device::cpu())
                                   : bb::Device::parse(args.device);
  } catch (const bb::Error& e) {
    throw bb::ValueError(fmt::format("barbell-train: --device {}: {}", args.device, e.what()));
  }
  if (device.is_cuda() && bb::cuda::is_emulated())
    std::printf("barbell-train: %s is barbell's host emulator of the GPU (emu/): a check of the CUDA code, not a "
                "GPU; expect it to be slow\n",
                device.str().c_str());
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
  check_hf_flags(args);
  std::optional<bb::io::GPT2Tokenizer> bpe;
  if (!args.tokenizer.empty()) bpe.emplace(args.tokenizer);
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
    if (bpe) apply_tokenizer(args, *bpe, lead, tokens, vocab);
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
  BB_CHECK(cfg.n_head <= cfg.n_embd && cfg.n_embd % cfg.n_head == 0, bb::ValueError,
           "barbell-train: the width {} (--n-embd) must be a multiple of the {} heads (--n-head)", cfg.n_embd,
           cfg.n_head);
  cfg.vocab_size = train_src->vocab_size();
  cfg.block_size = train_src->seq_len();
  cfg.dropout = args.dropout;
  cfg.seed = args.seed;
  cfg.attn_backend = args.attention == "flash"   ? bb::AttentionBackend::Flash
                     : args.attention == "cudnn" ? bb::AttentionBackend::Cudnn
                     : args.attention == "math"  ? bb::AttentionBackend::Math
                                                 : bb::AttentionBackend::Auto;
  std::optional<bb::io::HFGPT2Config> hf;
  if (!args.init_from.empty())
    hf = init_config(args, cfg, train_src->vocab_size(), train_src->seq_len(), lead);
  cfg.validate();
  check_fits(cfg, std::max(local_batch, args.data.empty() ? local_batch : args.batch), dtype, device, args);
  // The held-out problems for evaluation, then those for the samples, checked before training.
  std::vector<std::pair<int64_t, int64_t>> held_out, sample_problems;
  if (task) {
    try {
      held_out = task->held_out(args.eval_problems + args.samples);
    } catch (const bb::ValueError& e) {
      throw bb::ValueError(
          fmt::format("barbell-train: --eval-problems {} + --samples {} with --digits {}: {}",
                      args.eval_problems, args.samples, args.digits, e.what()));
    }
    sample_problems.assign(held_out.begin() + args.eval_problems, held_out.end());
    held_out.resize(static_cast<size_t>(args.eval_problems));
  }
  bb::manual_seed(args.seed);
  bb::nn::GPT model(cfg);
  if (hf) bb::io::load_hf_gpt2_weights(model, args.init_from);
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
  std::string resume_note;
  if (args.resume) {
    train::ResumeExpect expect{train::model_json(cfg), run_json(args, dtype), train_src->state()};
    const train::TrainState st = train::resume_checkpoint(ckpt, expect, model, *opt, &resume_note);
    step = st.step;
    train_src->set_state(st.data);
    bb::default_generator().manual_seed(st.rng_seed);
    bb::default_generator().set_offset(st.rng_offset);
    if (rank > 0) bb::default_generator().manual_seed(st.rng_seed + rank_seed - args.seed);
    if (lead) fmt::print("resumed from {} at step {}\n", ckpt, step);
  }
  // Drop what an interrupted run logged after its last checkpoint: those steps run again.
  std::string trim_note;
  if (args.resume && lead) train::trim_metrics(metrics_path, step, &trim_note);
  for (const std::string& note : {resume_note, trim_note})
    if (lead && !note.empty()) fmt::print("{}\n", note);
  if (lead && !threads_note.empty()) fmt::print("{}\n", threads_note);
  train::MetricsLog metrics;  // rank 0 alone prints, logs, evaluates and writes checkpoints
  if (lead) metrics = train::MetricsLog(metrics_path, args.resume);

  // Called on every rank: with --zero, state_dict() gathers the shards (a collective).
  auto save = [&](int64_t at_step) {
    bb::NamedTensors opt_state = opt->state_dict();
    if (!lead) return;
    bb::NamedTensors all = model.state_dict();
    for (auto& [n, t] : opt_state) all.emplace_back("optimizer." + n, t);
    train::TrainState st{at_step, train_src->state(), bb::default_generator().seed(),
                         bb::default_generator().offset()};
    // The log's lines up to this step are on disk before the checkpoint that contains them.
    metrics.sync();
    bb::io::save_safetensors(ckpt, all,
                             {{"format", "pt"},
                              {"barbell.model", train::model_json(cfg)},
                              {"barbell.run", run_json(args, dtype).dump()},
                              {"barbell.train_state", train::train_state_json(st)},
                              {"barbell.data", args.data.empty() ? "addition" : args.data}});
  };

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
    metrics.write(m);
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
    if (lead)
      metrics.write(json{{"step", step},
                         {"loss", l},
                         {"lr", lr},
                         {"grad_norm", gnorm},
                         {"tokens_per_s", tps},
                         {"elapsed_s", elapsed}});
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
  if (!args.export_hf.empty()) export_hf(args, model, bpe, hf);

  // Samples.
  model.eval();
  if (task) {
    fmt::print("samples (held-out problems, greedy):\n");
    for (const auto& [a, b] : sample_problems) {
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
      if (bpe)
        fmt::print("sample {}:\n{}\n---\n", i, decode_sample(*bpe, out));
      else if (cfg.vocab_size <= 256)
        fmt::print("sample {}:\n{}\n---\n", i, tok.decode(out));
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
  // Ranges: the validators above; sizes the memory cannot hold are refused by check_fits.
  const CLI::Validator nonneg = real_flag(">= 0", [](double v) { return v >= 0; });
  const CLI::Validator count = int_flag(0, INT64_MAX, ">= 0");
  const CLI::Validator positive_count = int_flag(1, INT64_MAX, ">= 1");
  app.add_option("--data", a.data, "Text file (byte-level) or llm.c token shard (.bin); default: synthetic addition");
  app.add_option("--preset", a.preset, "Model preset: tiny, small, medium, gpt2")
      ->capture_default_str()
      ->check(CLI::IsMember({"tiny", "small", "medium", "gpt2"}));
  app.add_option("--n-layer", a.n_layer, "Override the preset's number of layers (0: the preset's)")
      ->check(count);
  app.add_option("--n-head", a.n_head, "Override the preset's number of heads (0: the preset's)")
      ->check(count);
  app.add_option("--n-embd", a.n_embd,
                 "Override the preset's width, a multiple of the heads (0: the preset's)")
      ->check(count);
  app.add_option("--steps", a.steps, "Training steps")
      ->capture_default_str()
      ->check(int_flag(1, kMaxSteps, "in [1, 2^53]"));
  app.add_option("--batch", a.batch, "Sequences per step")->capture_default_str()->check(positive_count);
  app.add_option("--seq-len", a.seq_len, "Context length with --data")
      ->capture_default_str()
      ->check(int_flag(1, INT32_MAX, "in [1, 2^31 - 1]"));
  app.add_option("--lr", a.lr, "Peak learning rate")->capture_default_str()->check(nonneg);
  app.add_option("--min-lr", a.min_lr, "Final learning rate of the cosine schedule")
      ->capture_default_str()
      ->check(nonneg);
  app.add_option("--warmup", a.warmup, "Linear warm-up steps")->capture_default_str()->check(count);
  app.add_option("--weight-decay", a.weight_decay, "AdamW weight decay (2-D weights only)")
      ->capture_default_str()
      ->check(nonneg);
  app.add_option("--grad-clip", a.grad_clip, "Global gradient-norm clip")
      ->capture_default_str()
      ->check(real_flag("> 0", [](double v) { return v > 0; }));
  app.add_option("--dropout", a.dropout, "Dropout probability")
      ->capture_default_str()
      ->check(real_flag("in [0, 1)", [](double v) { return v >= 0 && v < 1; }));
  app.add_option("--seed", a.seed, "Seed for initialisation, data and dropout")
      ->capture_default_str()
      ->check(u64_flag());
  app.add_option("--out", a.out, "Output directory (checkpoint.safetensors, metrics.jsonl)")->capture_default_str();
  app.add_flag("--resume", a.resume, "Continue from the checkpoint in --out");
  app.add_option("--save-every", a.save_every, "Checkpoint every N steps (0: only at the end)")
      ->capture_default_str()
      ->check(count);
  app.add_option("--eval-every", a.eval_every, "Evaluate every N steps (0: only at the end)")
      ->capture_default_str()
      ->check(count);
  app.add_option("--log-every", a.log_every, "Print a progress line every N steps")
      ->capture_default_str()
      ->check(positive_count);
  app.add_option("--eval-problems", a.eval_problems, "Held-out addition problems to evaluate")
      ->capture_default_str()
      ->check(int_flag(0, kMaxEvalProblems, "in [0, 1000000]"));
  app.add_option("--samples", a.samples, "Sample completions printed at the end")
      ->capture_default_str()
      ->check(int_flag(0, 10000, "in [0, 10000]"));
  app.add_option("--time-limit", a.time_limit, "Stop training after this many seconds (0: no limit)")
      ->capture_default_str()
      ->check(nonneg);
  app.add_option("--device", a.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--attention", a.attention,
                 "Attention backend: auto (flash kernels on a GPU where they apply), flash, cudnn, math")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "flash", "cudnn", "math"}));
  app.add_option("--dtype", a.dtype, "Compute dtype: auto (bf16 on a GPU, f32 on the CPU), f32, bf16, f16")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "f32", "bf16", "f16"}));
  app.add_option("--digits", a.digits, "Digits per operand in the addition task")
      ->capture_default_str()
      ->check(int_flag(1, 9, "in [1, 9]"));
  app.add_flag("--reverse", a.reverse, "Addition task: the model writes the answer least significant digit first");
  app.add_option("--threads", a.threads,
                 "CPU threads (0: barbell's default, one per physical core; more than the cores available: capped)")
      ->capture_default_str()
      ->check(int_flag(0, kMaxThreads, "in [0, 1024]"));
  app.add_flag("--force-threads", a.force_threads,
               "Use --threads even where it is more than the cores available");
  app.add_option(
      "--init-from", a.init_from,
      "Start from a Hugging Face GPT-2 folder (config.json, model.safetensors): its sizes and weights");
  app.add_option(
      "--export-hf", a.export_hf,
      "At the end, write the model as a Hugging Face GPT-2 folder (GPT2LMHeadModel.from_pretrained)");
  app.add_option("--tokenizer", a.tokenizer,
                 "Folder with GPT-2's vocab.json and merges.txt: --data text is BPE-encoded (and saved as "
                 "OUT/tokens.bin)");
  app.add_flag("--zero", a.zero, "Under mpirun: shard AdamW's state over the ranks (ZeRO-1) instead of DataParallel");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(a);
  } catch (const std::exception& e) {
    // check_fits refuses what cannot fit; an allocation can still fail where the estimate is low.
    const std::string what = dynamic_cast<const std::bad_alloc*>(&e)
                                 ? fmt::format(
                                       "barbell-train: out of memory ({}) with --batch {}, {} preset "
                                       "--n-layer {} --n-embd {}: use a "
                                       "smaller batch, context or model",
                                       e.what(), a.batch, a.preset, a.n_layer, a.n_embd)
                                 : std::string(e.what());
    fmt::print(stderr, "\nerror: {}\n", what);
    // Under mpirun the other ranks may be waiting in a collective: end them all.
    if (barbell::dist::launched_by_mpi()) barbell::dist::abort_job(fmt::format("barbell-train: {}", what));
    return 1;
  }
}

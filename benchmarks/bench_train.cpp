// bench_train: the time of one full training step on the CPU (forward, backward, gradient clipping, AdamW)
// for the GPT presets and a user-style model, with tokens/s and GFLOP/s; --compare-torch runs PyTorch eager
// on the same models, weights and batches, interleaved in the same run, and prints the ratio.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "barbell/barbell.hpp"
#include "bench_util.hpp"
#include "cpu/gemm.hpp"  // which GEMM (oneDNN or OpenBLAS) and which kernel level ran: in the JSON
#include "cpu/vec.hpp"

namespace bb = barbell;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

using bench::median;
using bench::utc_now;

// A realistic batch per config: the model's whole context, a batch that fits comfortably in memory.
struct Shape {
  std::string name;
  int64_t batch, seq_len;
};
// "user" is a model as a user writes one (UserModel below), not a GPT preset.
const std::vector<Shape> kShapes = {
    {"tiny", 32, 64}, {"small", 16, 128}, {"medium", 8, 256}, {"gpt2", 4, 1024}, {"user", 16, 128}};
constexpr int64_t kVocab = 256;
constexpr int kBatches = 4;
constexpr double kLr = 1e-4, kWeightDecay = 0.1, kClip = 1.0;  // lr small, so that many steps stay tame

std::string first_line_of(const std::string& path, const std::string& key) {
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line))
    if (key.empty() || line.rfind(key, 0) == 0) {
      auto colon = line.find(':');
      if (key.empty() || colon == std::string::npos) return line;
      auto start = line.find_first_not_of(" \t", colon + 1);
      return start == std::string::npos ? "" : line.substr(start);
    }
  return "";
}

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

// The output of a shell command's first line ("" when it fails): the git commit of the source tree.
std::string command_line(const std::string& cmd) {
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[256];
    if (fgets(buf, sizeof buf, p)) out = buf;
    pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

// The user-style model: a char-level transformer written from barbell's ops the way a libtorch user would
// write one: RMSNorm, rotary positions (tables built on the host: barbell has no sin/cos ops), SwiGLU, no
// biases, an untied head. torch_train_step.py's UserModel is the same model under the same names.
struct UserConfig {
  int64_t vocab = kVocab, n_layer = 4, n_head = 4, n_embd = 128, hidden = 352, block = 128;
  double eps = 1e-5;
};

class UserBlock : public bb::nn::Module {
 public:
  UserBlock(const UserConfig& c, bb::Generator* gen) : H(c.n_head) {
    attn_norm = register_module("attn_norm", std::make_shared<bb::nn::RMSNorm>(c.n_embd, c.eps));
    auto attn = register_module("attn", std::make_shared<Holder>());
    wq = attn->add("wq", c.n_embd, c.n_embd, gen);
    wk = attn->add("wk", c.n_embd, c.n_embd, gen);
    wv = attn->add("wv", c.n_embd, c.n_embd, gen);
    wo = attn->add("wo", c.n_embd, c.n_embd, gen);
    mlp_norm = register_module("mlp_norm", std::make_shared<bb::nn::RMSNorm>(c.n_embd, c.eps));
    auto mlp = register_module("mlp", std::make_shared<Holder>());
    w1 = mlp->add("w1", c.n_embd, c.hidden, gen);
    w3 = mlp->add("w3", c.n_embd, c.hidden, gen);
    w2 = mlp->add("w2", c.hidden, c.n_embd, gen);
  }
  bb::Tensor forward(const bb::Tensor& x, const bb::Tensor& cos, const bb::Tensor& sin) const {
    const int64_t B = x.size(0), T = x.size(1), C = x.size(2), D = C / H;
    bb::Tensor h = attn_norm->forward(x);
    auto heads = [&](const std::shared_ptr<bb::nn::Linear>& w) {
      return w->forward(h).view({B, T, H, D}).transpose(1, 2);
    };
    auto rope = [&](const bb::Tensor& t) {  // t * cos + rotate_half(t) * sin
      std::vector<bb::Tensor> p = bb::chunk(t, 2, -1);
      return bb::add(bb::mul(t, cos), bb::mul(bb::cat({bb::neg(p[1]), p[0]}, -1), sin));
    };
    bb::Tensor q = rope(heads(wq)), k = rope(heads(wk)), v = heads(wv);
    bb::Tensor y = bb::scaled_dot_product_attention(q, k, v, /*causal=*/true);
    bb::Tensor r = bb::add(x, wo->forward(y.transpose(1, 2).reshape({B, T, C})));
    bb::Tensor m = mlp_norm->forward(r);
    return bb::add(r, w2->forward(bb::mul(bb::silu(w1->forward(m)), w3->forward(m))));
  }

 private:
  // A namespace for the attention / MLP weights ("attn.wq.weight").
  struct Holder : bb::nn::Module {
    std::shared_ptr<bb::nn::Linear> add(const std::string& n, int64_t in, int64_t out, bb::Generator* gen) {
      return register_module(n, std::make_shared<bb::nn::Linear>(in, out, /*bias=*/false, 0.02, gen));
    }
  };
  int64_t H;
  std::shared_ptr<bb::nn::RMSNorm> attn_norm, mlp_norm;
  std::shared_ptr<bb::nn::Linear> wq, wk, wv, wo, w1, w2, w3;
};

class UserModel : public bb::nn::Module {
 public:
  explicit UserModel(const UserConfig& c) : cfg(c) {
    bb::Generator gen(1337);
    tok_emb = register_module("tok_emb", std::make_shared<bb::nn::Embedding>(c.vocab, c.n_embd, 0.02, &gen));
    layers = register_module("layers", std::make_shared<bb::nn::ModuleList>());
    for (int64_t i = 0; i < c.n_layer; ++i)
      blocks.push_back(layers->push_back(std::make_shared<UserBlock>(c, &gen)));
    norm = register_module("norm", std::make_shared<bb::nn::RMSNorm>(c.n_embd, c.eps));
    head = register_module("head", std::make_shared<bb::nn::Linear>(c.n_embd, c.vocab, false, 0.02, &gen));
    // Rotary tables [block, D]: angle t * theta^(-2i/D) for i < D/2, repeated for the two halves.
    const int64_t D = c.n_embd / c.n_head;
    std::vector<float> vc(static_cast<size_t>(c.block * D)), vs(vc.size());
    for (int64_t t = 0; t < c.block; ++t)
      for (int64_t i = 0; i < D; ++i) {
        double a =
            static_cast<double>(t) * std::pow(10000.0, -2.0 * static_cast<double>(i % (D / 2)) / double(D));
        vc[static_cast<size_t>(t * D + i)] = static_cast<float>(std::cos(a));
        vs[static_cast<size_t>(t * D + i)] = static_cast<float>(std::sin(a));
      }
    rope_cos = bb::from_vector(vc, {c.block, D});
    rope_sin = bb::from_vector(vs, {c.block, D});
  }
  bb::Tensor loss(const bb::Tensor& idx, const bb::Tensor& targets) const {
    const int64_t T = idx.size(1);
    bb::Tensor cos = rope_cos.narrow(0, 0, T), sin = rope_sin.narrow(0, 0, T);
    bb::Tensor x = tok_emb->forward(idx);
    for (auto& b : blocks) x = b->forward(x, cos, sin);
    return bb::cross_entropy(head->forward(norm->forward(x)), targets);
  }
  UserConfig cfg;
  bb::Tensor rope_cos, rope_sin;

 private:
  std::shared_ptr<bb::nn::Embedding> tok_emb;
  std::shared_ptr<bb::nn::ModuleList> layers;
  std::vector<std::shared_ptr<UserBlock>> blocks;
  std::shared_ptr<bb::nn::RMSNorm> norm;
  std::shared_ptr<bb::nn::Linear> head;
};

// One config's barbell model, optimizer and batches; a step is the whole training step.
class Trainer {
 public:
  explicit Trainer(const Shape& s, bb::DType dtype = bb::DType::F32) : shape(s) {
    if (s.name == "user") {
      UserConfig c;
      c.block = s.seq_len;
      user_ = std::make_unique<UserModel>(c);
      module_ = user_.get();
      meta_ = {{"model", "user"},    {"vocab_size", c.vocab}, {"n_layer", c.n_layer}, {"n_head", c.n_head},
               {"n_embd", c.n_embd}, {"hidden", c.hidden},    {"eps", c.eps}};
    } else {
      bb::nn::GPTConfig cfg = bb::nn::GPTConfig::preset(s.name);
      cfg.vocab_size = kVocab;
      cfg.block_size = s.seq_len;
      gpt_ = std::make_unique<bb::nn::GPT>(cfg);
      module_ = gpt_.get();
      meta_ = {{"model", "gpt"},          {"vocab_size", cfg.vocab_size}, {"block_size", cfg.block_size},
               {"n_layer", cfg.n_layer},  {"n_head", cfg.n_head},         {"n_embd", cfg.n_embd},
               {"bias", cfg.bias ? 1 : 0}};
    }
    if (dtype != bb::DType::F32) {
      module_->to(dtype);  // AdamW keeps f32 master weights for 16-bit parameters
      if (user_) {
        user_->rope_cos = user_->rope_cos.to(dtype);
        user_->rope_sin = user_->rope_sin.to(dtype);
      }
    }
    bb::optim::AdamWOptions ao;
    ao.lr = kLr;
    ao.weight_decay = kWeightDecay;
    meta_.update({{"lr", ao.lr},
                  {"weight_decay", ao.weight_decay},
                  {"beta1", ao.beta1},
                  {"beta2", ao.beta2},
                  {"eps_adam", ao.eps},
                  {"clip", kClip},
                  {"batches", kBatches}});
    opt_ = std::make_unique<bb::optim::AdamW>(module_->named_parameters(), ao);
    params_ = module_->parameters();
    // A few fixed random batches, drawn before timing.
    bb::Generator gen(1234);
    for (int i = 0; i < kBatches; ++i)
      batches_.emplace_back(bb::randint(0, kVocab, {s.batch, s.seq_len}, {bb::DType::I64}, &gen),
                            bb::randint(0, kVocab, {s.batch, s.seq_len}, {bb::DType::I64}, &gen));
  }

  // Seconds of one step; its loss goes to losses.
  double step() {
    auto t0 = Clock::now();
    auto& [x, y] = batches_[static_cast<size_t>(step_++ % kBatches)];
    bb::Tensor loss = user_ ? user_->loss(x, y) : gpt_->loss(x, y);
    loss.backward();
    bb::optim::clip_grad_norm_(params_, kClip);
    opt_->step();
    opt_->zero_grad();
    losses.push_back(loss.item<double>());
    return std::chrono::duration<double>(Clock::now() - t0).count();
  }

  // The initial weights, batches and (user model) rotary tables, config in the metadata, for
  // torch_train_step.py.
  void save(const std::string& path) const {
    bb::io::TensorMap t;
    for (auto& [n, p] : module_->named_parameters()) t.emplace_back(n, p.detach());
    for (int i = 0; i < kBatches; ++i) {
      t.emplace_back(fmt::format("batch.{}.x", i), batches_[static_cast<size_t>(i)].first);
      t.emplace_back(fmt::format("batch.{}.y", i), batches_[static_cast<size_t>(i)].second);
    }
    if (user_) {
      t.emplace_back("rope.cos", user_->rope_cos);
      t.emplace_back("rope.sin", user_->rope_sin);
    }
    bb::io::save_safetensors(path, t, {{"config", meta_.dump()}});
  }

  int64_t num_parameters() const { return module_->num_parameters(); }
  json describe() const { return meta_; }
  // FLOPs per token of a training step (forward + backward = 3x forward): 6 per parameter that is a matmul
  // weight (embeddings count only when they are the tied output projection), plus attention's q k^T and att
  // v: 2 * 2 * T * C forward per layer, 12 * L * T * C with the backward. The causal attention is counted in
  // full, no halving.
  double flops_per_token() const {
    int64_t n = num_parameters();
    int64_t L, C;
    if (gpt_) {
      const auto& c = gpt_->config();
      n -= c.block_size * c.n_embd;  // wpe is only a lookup
      L = c.n_layer;
      C = c.n_embd;
    } else {
      n -= user_->cfg.vocab * user_->cfg.n_embd;  // tok_emb is only a lookup
      L = user_->cfg.n_layer;
      C = user_->cfg.n_embd;
    }
    return 6.0 * static_cast<double>(n) + 12.0 * static_cast<double>(L * shape.seq_len * C);
  }

  Shape shape;
  std::vector<double> losses;

 private:
  std::unique_ptr<bb::nn::GPT> gpt_;
  std::unique_ptr<UserModel> user_;
  bb::nn::Module* module_ = nullptr;
  json meta_;
  std::unique_ptr<bb::optim::AdamW> opt_;
  std::vector<bb::Tensor> params_;
  std::vector<std::pair<bb::Tensor, bb::Tensor>> batches_;
  int64_t step_ = 0;
};

// The machine's f32 matmul rate (best of 5 square 1024 products through the library's matmul): the
// ceiling a training step's GFLOP/s is compared against.
double matmul_ceiling_gflops() {
  bb::NoGradGuard ng;
  bb::Generator gen(99);
  const int64_t n = 1024;
  bb::Tensor a = bb::randn({n, n}, {}, &gen), b = bb::randn({n, n}, {}, &gen);
  double best = 1e30;
  for (int i = 0; i < 6; ++i) {
    auto t0 = Clock::now();
    bb::Tensor c = bb::matmul(a, b);
    double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    if (i > 0) best = std::min(best, dt);  // the first one warms up the threads
  }
  return 2.0 * static_cast<double>(n * n * n) / best / 1e9;
}

json bench_config(const Shape& s, int64_t steps_flag, double seconds, int warmup, double ceiling,
                  bb::DType dtype) {
  Trainer tr(s, dtype);
  double warm_s = 0;
  for (int i = 0; i < warmup; ++i) warm_s = tr.step();
  int64_t steps = steps_flag;
  if (steps <= 0)
    steps = std::clamp<int64_t>(static_cast<int64_t>(seconds / std::max(warm_s, 1e-6)), 3, 1000);
  std::vector<double> times;
  for (int64_t i = 0; i < steps; ++i) times.push_back(tr.step());
  const int64_t n_params = tr.num_parameters();
  const int64_t tokens = s.batch * s.seq_len;
  const double med = median(times), mn = *std::min_element(times.begin(), times.end());
  const double gflop_step = tr.flops_per_token() * static_cast<double>(tokens) / 1e9;
  json r = {{"preset", s.name},
            {"model", tr.describe()},
            {"batch", s.batch},
            {"seq_len", s.seq_len},
            {"parameters", n_params},
            {"tokens_per_step", tokens},
            {"warmup_steps", warmup},
            {"steps", steps},
            {"ms_median", 1e3 * med},
            {"ms_min", 1e3 * mn},
            {"ms_max", 1e3 * *std::max_element(times.begin(), times.end())},
            {"tokens_per_s", static_cast<double>(tokens) / med},
            {"gflop_per_step", gflop_step},
            {"gflop_per_s", gflop_step / med},
            {"gflop_per_s_best", gflop_step / mn},
            {"fraction_of_matmul_ceiling", gflop_step / med / ceiling},
            {"final_loss", tr.losses.back()}};
  fmt::print("{:<7} {:>9.2f}M {:>7} {:>6} {:>10.1f} {:>10.1f} {:>11.0f} {:>9.2f} {:>8.0f}%\n", s.name,
             static_cast<double>(n_params) / 1e6, tokens, steps, 1e3 * med, 1e3 * mn,
             static_cast<double>(tokens) / med, gflop_step / med, 100 * gflop_step / med / ceiling);
  std::fflush(stdout);
  return r;
}

// CPU seconds: of the whole machine (every CPU's busy time, /proc/stat), and of one process (all its
// threads, /proc/PID/stat). Over the timed rounds, the difference is what other programs took meanwhile.
double machine_busy_s() {
  std::ifstream f("/proc/stat");
  std::string cpu;
  double user = 0, nice = 0, sys = 0, idle = 0, iowait = 0, irq = 0, softirq = 0;
  if (!(f >> cpu >> user >> nice >> sys >> idle >> iowait >> irq >> softirq)) return 0;
  return (user + nice + sys + irq + softirq) / static_cast<double>(sysconf(_SC_CLK_TCK));
}
double process_cpu_s(pid_t pid) {
  std::ifstream f(fmt::format("/proc/{}/stat", pid));
  std::string line;
  std::getline(f, line);
  const auto close = line.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos || close + 2 > line.size()) return 0;
  std::istringstream rest(line.substr(close + 2));  // from field 3 (state) on
  std::string field;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::atof(field.c_str());
    if (i == 15) stime = std::atof(field.c_str());
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}
// The CPUs other programs kept busy on average from construction to others(): ours are this
// process's and the given children's.
class OtherLoad {
 public:
  explicit OtherLoad(std::vector<pid_t> children) : children_(std::move(children)) {
    busy0_ = machine_busy_s();
    ours0_ = ours();
  }
  double others() const {
    const double wall = std::chrono::duration<double>(Clock::now() - wall0_).count();
    return std::max(0.0, (machine_busy_s() - busy0_) - (ours() - ours0_)) / std::max(wall, 1e-9);
  }

 private:
  double ours() const {
    double t = process_cpu_s(getpid());
    for (pid_t c : children_) t += process_cpu_s(c);
    return t;
  }
  std::vector<pid_t> children_;
  double busy0_ = 0, ours0_ = 0;
  Clock::time_point wall0_ = Clock::now();
};

// torch_train_step.py --serve as a child process, spoken to in JSON lines over two pipes.
class TorchPeer {
 public:
  TorchPeer(const std::string& python, const std::string& script) {
    int to_child[2], from_child[2];
    BB_CHECK(pipe(to_child) == 0 && pipe(from_child) == 0, bb::IOError, "bench_train: pipe failed");
    pid_ = fork();
    BB_CHECK(pid_ >= 0, bb::IOError, "bench_train: fork failed");
    if (pid_ == 0) {
      dup2(to_child[0], 0);
      dup2(from_child[1], 1);
      close(to_child[1]);
      close(from_child[0]);
      execlp(python.c_str(), python.c_str(), script.c_str(), "--serve", static_cast<char*>(nullptr));
      std::fprintf(stderr, "bench_train: cannot run %s: %s\n", python.c_str(), std::strerror(errno));
      _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    to_ = fdopen(to_child[1], "w");
    from_ = fdopen(from_child[0], "r");
  }
  ~TorchPeer() {
    if (to_) {
      std::fputs("{\"cmd\": \"quit\"}\n", to_);
      std::fclose(to_);
    }
    if (from_) std::fclose(from_);
    int st;
    waitpid(pid_, &st, 0);
  }
  TorchPeer(const TorchPeer&) = delete;
  TorchPeer& operator=(const TorchPeer&) = delete;

  pid_t pid() const { return pid_; }

  json request(const json& req) {
    std::string line = req.dump() + "\n";
    BB_CHECK(std::fputs(line.c_str(), to_) >= 0 && std::fflush(to_) == 0, bb::IOError,
             "bench_train: torch_train_step.py is gone (writing {})", req.dump());
    std::string reply;
    char buf[65536];
    while (std::fgets(buf, sizeof buf, from_)) {
      reply += buf;
      if (!reply.empty() && reply.back() == '\n') break;
    }
    BB_CHECK(!reply.empty(), bb::IOError,
             "bench_train: torch_train_step.py exited without answering {} (status 3: no PyTorch; "
             "see scripts/setup-torch-cpu.sh)",
             req.dump());
    json r = json::parse(reply);
    BB_CHECK(r.value("ok", false), bb::Error, "bench_train: torch_train_step.py: {}",
             r.value("error", reply));
    return r;
  }

 private:
  pid_t pid_ = -1;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
};

struct Spread {
  double median, p25, p75, min, max;
};
Spread spread(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto q = [&](double f) {
    double pos = f * static_cast<double>(v.size() - 1);
    size_t i = static_cast<size_t>(pos);
    double fr = pos - static_cast<double>(i);
    return i + 1 < v.size() ? v[i] * (1 - fr) + v[i + 1] * fr : v[i];
  };
  return {q(0.5), q(0.25), q(0.75), v.front(), v.back()};
}

// The same-run comparison of one config: barbell and PyTorch at each thread count, as four trainers that take
// turns, a few steps each, for `rounds` rounds (the order rotates every round, so slow phases of a busy
// machine fall on all four alike). Each trainer starts from the same weights and batches and runs the same
// steps, so the losses must agree to f32 noise; they are compared step by step.
json compare_config(const Shape& s, const std::vector<int>& threads, int rounds, double round_seconds,
                    int warmup, const std::string& python, const std::string& script, const std::string& dir,
                    bool keep) {
  const std::string file = keep ? fmt::format("{}/bench_train_{}.safetensors", dir, s.name)
                                : fmt::format("{}/bench_train_{}_{}.safetensors", dir, s.name, getpid());
  struct Side {
    std::string impl;
    int threads;
    std::unique_ptr<Trainer> bb;
    std::unique_ptr<TorchPeer> torch;
    std::vector<double> ms, losses;
  };
  std::vector<Side> sides;
  int64_t params = 0;
  json model, torch_version;
  for (int t : threads) {
    Side b{"barbell", t, std::make_unique<Trainer>(s), nullptr, {}, {}};
    if (sides.empty()) {
      b.bb->save(file);
      params = b.bb->num_parameters();
      model = b.bb->describe();
    }
    sides.push_back(std::move(b));
    Side p{"torch", t, nullptr, std::make_unique<TorchPeer>(python, script), {}, {}};
    json r = p.torch->request({{"cmd", "load"}, {"file", file}, {"threads", t}});
    BB_CHECK(r.at("parameters").get<int64_t>() == params, bb::Error,
             "bench_train: torch's {} model has {} parameters, barbell's {}", s.name,
             r.at("parameters").dump(), params);
    torch_version = r.value("torch", json());
    sides.push_back(std::move(p));
  }
  if (!keep) std::remove(file.c_str());
  // Runs k steps of one side; returns the seconds per step.
  auto run = [&](Side& sd, int k, bool record) {
    std::vector<double> ms, losses;
    if (sd.bb) {
      bb::set_num_threads(sd.threads);
      for (int i = 0; i < k; ++i) ms.push_back(1e3 * sd.bb->step());
      losses.assign(sd.bb->losses.end() - k, sd.bb->losses.end());
    } else {
      json r = sd.torch->request({{"cmd", "steps"}, {"n", k}});
      ms = r.at("ms").get<std::vector<double>>();
      losses = r.at("loss").get<std::vector<double>>();
    }
    sd.losses.insert(sd.losses.end(), losses.begin(), losses.end());
    if (record) sd.ms.insert(sd.ms.end(), ms.begin(), ms.end());
    return median(ms) / 1e3;
  };
  double slowest = 0;
  for (auto& sd : sides) slowest = std::max(slowest, run(sd, warmup, false));
  const int k = static_cast<int>(std::clamp(round_seconds / std::max(slowest, 1e-6), 1.0, 50.0));
  std::vector<pid_t> children;
  for (auto& sd : sides)
    if (sd.torch) children.push_back(sd.torch->pid());
  OtherLoad load(children);
  for (int r = 0; r < rounds; ++r)
    for (size_t i = 0; i < sides.size(); ++i)
      run(sides[(i + static_cast<size_t>(r)) % sides.size()], k, true);
  const double others = load.others();

  // Losses: every trainer ran the same steps from the same start.
  double first_diff = 0, max_diff = 0;
  const size_t n_first = std::min<size_t>(3, sides[0].losses.size());
  for (auto& sd : sides)
    for (size_t i = 0; i < sd.losses.size() && i < sides[0].losses.size(); ++i) {
      double d = std::abs(sd.losses[i] - sides[0].losses[i]);
      max_diff = std::max(max_diff, d);
      if (i < n_first) first_diff = std::max(first_diff, d);
    }
  json out = {
      {"config", s.name},
      {"model", model},
      {"batch", s.batch},
      {"seq_len", s.seq_len},
      {"parameters", params},
      {"torch", torch_version},
      {"rounds", rounds},
      {"steps_per_round", k},
      {"warmup_steps", warmup},
      {"loss_first_steps", std::vector<double>(sides[0].losses.begin(), sides[0].losses.begin() + n_first)},
      {"loss_max_abs_diff_first_3_steps", first_diff},
      {"loss_max_abs_diff_all_steps", max_diff},
      {"other_processes_cpus", others}};
  json runs = json::array();
  for (int t : threads) {
    Spread b{}, p{};
    for (auto& sd : sides) {
      if (sd.threads != t) continue;
      Spread sp = spread(sd.ms);
      (sd.bb ? b : p) = sp;
      runs.push_back({{"impl", sd.impl},
                      {"threads", t},
                      {"ms", sd.ms},
                      {"ms_median", sp.median},
                      {"ms_p25", sp.p25},
                      {"ms_p75", sp.p75},
                      {"ms_min", sp.min},
                      {"ms_max", sp.max}});
    }
    fmt::print("{:<7} {:>7.2f}M {:>3} {:>10.1f} {:>15} {:>10.1f} {:>15} {:>7.2f}x {:>10.1e} {:>7.2f}\n",
               s.name, static_cast<double>(params) / 1e6, t, b.median,
               fmt::format("{:.0f}-{:.0f}", b.p25, b.p75), p.median,
               fmt::format("{:.0f}-{:.0f}", p.p25, p.p75), b.median / p.median, first_diff, others);
    out[fmt::format("ratio_{}t", t)] = b.median / p.median;
  }
  std::fflush(stdout);
  out["runs"] = runs;
  return out;
}

// bf16 against f32 in barbell: the same config as two trainers per thread count (f32, and bf16 parameters
// and activations with f32 master weights), taking turns as in compare_config. Their losses differ by bf16's
// rounding, so only the times are compared.
json compare_bf16_config(const Shape& s, const std::vector<int>& threads, int rounds, double round_seconds,
                         int warmup) {
  struct Side {
    bb::DType dtype;
    int threads;
    std::unique_ptr<Trainer> tr;
    std::vector<double> ms;
  };
  std::vector<Side> sides;
  for (int t : threads)
    for (bb::DType dt : {bb::DType::F32, bb::DType::BF16})
      sides.push_back({dt, t, std::make_unique<Trainer>(s, dt), {}});
  auto run = [&](Side& sd, int k, bool record) {
    bb::set_num_threads(sd.threads);
    std::vector<double> ms;
    for (int i = 0; i < k; ++i) ms.push_back(1e3 * sd.tr->step());
    if (record) sd.ms.insert(sd.ms.end(), ms.begin(), ms.end());
    return median(ms) / 1e3;
  };
  double slowest = 0;
  for (auto& sd : sides) slowest = std::max(slowest, run(sd, warmup, false));
  const int k = static_cast<int>(std::clamp(round_seconds / std::max(slowest, 1e-6), 1.0, 50.0));
  OtherLoad load({});
  for (int r = 0; r < rounds; ++r)
    for (size_t i = 0; i < sides.size(); ++i)
      run(sides[(i + static_cast<size_t>(r)) % sides.size()], k, true);
  const double others = load.others();
  json out = {{"config", s.name},
              {"model", sides[0].tr->describe()},
              {"batch", s.batch},
              {"seq_len", s.seq_len},
              {"parameters", sides[0].tr->num_parameters()},
              {"rounds", rounds},
              {"steps_per_round", k},
              {"warmup_steps", warmup},
              {"other_processes_cpus", others}};
  json runs = json::array();
  for (int t : threads) {
    Spread f{}, h{};
    for (auto& sd : sides) {
      if (sd.threads != t) continue;
      Spread sp = spread(sd.ms);
      (sd.dtype == bb::DType::F32 ? f : h) = sp;
      runs.push_back({{"dtype", sd.dtype == bb::DType::F32 ? "f32" : "bf16"},
                      {"threads", t},
                      {"ms", sd.ms},
                      {"ms_median", sp.median},
                      {"ms_p25", sp.p25},
                      {"ms_p75", sp.p75},
                      {"ms_min", sp.min},
                      {"ms_max", sp.max},
                      {"final_loss", sd.tr->losses.back()}});
    }
    fmt::print("{:<7} {:>7.2f}M {:>3} {:>10.1f} {:>15} {:>10.1f} {:>15} {:>7.2f}x {:>7.2f}\n", s.name,
               static_cast<double>(sides[0].tr->num_parameters()) / 1e6, t, f.median,
               fmt::format("{:.0f}-{:.0f}", f.p25, f.p75), h.median,
               fmt::format("{:.0f}-{:.0f}", h.p25, h.p75), h.median / f.median, others);
    out[fmt::format("ratio_bf16_f32_{}t", t)] = h.median / f.median;
  }
  std::fflush(stdout);
  out["runs"] = runs;
  return out;
}

std::vector<int> parse_ints(const std::string& list) {
  std::vector<int> r;
  std::stringstream ss(list);
  for (std::string x; std::getline(ss, x, ',');) r.push_back(std::stoi(x));
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string presets = "tiny,small,medium";
  int64_t steps = 0;
  double seconds = 6.0;
  int warmup = 2;
  std::string json_path;
  int threads = 0;
  bool compare = false, compare_bf16 = false;
  bool no_ceiling = false;
  std::string dtype_name = "f32";
  std::string compare_threads = "1,2";
  int rounds = 6;
  double round_seconds = 1.0;
  std::string python = env_or("BARBELL_TORCH_PYTHON", "python3");
  std::string script = BENCH_TORCH_SCRIPT;
  std::string keep_dir;
  CLI::App app{"bench_train: time full training steps (forward, backward, clip, AdamW) on the CPU"};
  app.add_option("--presets", presets, "Comma-separated configs: tiny, small, medium, gpt2, user")
      ->capture_default_str();
  app.add_option("--steps", steps, "Timed steps per preset (0: as many as fit in --seconds, at least 3)")
      ->capture_default_str();
  app.add_option("--seconds", seconds, "Target timed seconds per preset when --steps is 0")
      ->capture_default_str();
  app.add_option("--warmup", warmup, "Untimed steps first")->capture_default_str()->check(CLI::Range(1, 100));
  app.add_option("--json", json_path, "Write the results as JSON to this file");
  app.add_option("--threads", threads, "CPU threads (0: barbell's default)")->capture_default_str();
  app.add_option("--dtype", dtype_name,
                 "Parameter and activation dtype: f32 or bf16 (bf16 with f32 master weights)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  app.add_flag("--no-ceiling", no_ceiling, "Skip the matmul ceiling measurement (for profilers: callgrind)");
  app.add_flag("--compare-torch", compare,
               "Run PyTorch eager (benchmarks/torch_train_step.py) on the same models, weights and batches, "
               "interleaved with barbell, and print the ratio");
  app.add_flag(
      "--compare-bf16", compare_bf16,
      "Run barbell in bf16 (f32 master weights) and in f32 on the same config, interleaved, and print "
      "the ratio");
  app.add_option("--compare-threads", compare_threads,
                 "Thread counts compared (--compare-torch, --compare-bf16)")
      ->capture_default_str();
  app.add_option("--rounds", rounds, "Interleaved rounds per config (--compare-torch, --compare-bf16)")
      ->capture_default_str();
  app.add_option("--round-seconds", round_seconds,
                 "About how long each trainer runs per round (--compare-torch, --compare-bf16)")
      ->capture_default_str();
  app.add_option("--python", python,
                 "Python with PyTorch ($BARBELL_TORCH_PYTHON; scripts/setup-torch-cpu.sh)")
      ->capture_default_str();
  app.add_option("--torch-script", script, "torch_train_step.py")->capture_default_str();
  app.add_option(
      "--keep-configs", keep_dir,
      "Write each config's weights and batches to DIR/bench_train_CONFIG.safetensors and keep them "
      "(for running torch_train_step.py by hand)");
  CLI11_PARSE(app, argc, argv);

  try {
    if (threads > 0) bb::set_num_threads(threads);
    const bb::DType dtype = dtype_name == "bf16" ? bb::DType::BF16 : bb::DType::F32;
    BB_CHECK(!(compare || compare_bf16) || dtype == bb::DType::F32, bb::ValueError,
             "bench_train: --compare-torch and --compare-bf16 take no --dtype (they run f32, and bf16 "
             "against it)");
    BB_CHECK(!(compare && compare_bf16), bb::ValueError,
             "bench_train: --compare-torch or --compare-bf16, one per run");
    std::vector<Shape> chosen;
    std::stringstream ss(presets);
    for (std::string name; std::getline(ss, name, ',');) {
      auto it = std::find_if(kShapes.begin(), kShapes.end(), [&](const Shape& s) { return s.name == name; });
      BB_CHECK(it != kShapes.end(), bb::ValueError,
               "bench_train: unknown config '{}' (tiny, small, medium, gpt2, user)", name);
      chosen.push_back(*it);
    }
    const std::string cpu = first_line_of("/proc/cpuinfo", "model name");
    const std::string load_before = first_line_of("/proc/loadavg", "");
    const std::string commit =
        command_line(fmt::format("git -C '{}' rev-parse --short HEAD 2>/dev/null", BENCH_SOURCE_DIR));
    const std::string gemm = bb::cpu::gemm_backend(), isa = bb::cpu::vec().isa;
    fmt::print(
        "bench_train: {} | {} threads ({} hardware) | GEMM {} | kernels {} | OMP_WAIT_POLICY={} | load "
        "average "
        "{} | commit {}\n",
        cpu.empty() ? "unknown CPU" : cpu, bb::num_threads(), std::thread::hardware_concurrency(), gemm, isa,
        env_or("OMP_WAIT_POLICY", "(unset)"), load_before, commit);
    json out = {{"benchmark", compare        ? "bench_train --compare-torch"
                              : compare_bf16 ? "bench_train --compare-bf16"
                                             : "bench_train"},
                {"barbell_version", BARBELL_VERSION},
                {"commit", commit},
                {"date", utc_now()},
                {"device", "cpu"},
                {"machine", {{"cpu", cpu}, {"hardware_threads", std::thread::hardware_concurrency()}}},
                {"cpu_gemm", gemm},
                {"cpu_kernels", isa},
                {"env",
                 {{"OMP_NUM_THREADS", env_or("OMP_NUM_THREADS", "")},
                  {"OMP_WAIT_POLICY", env_or("OMP_WAIT_POLICY", "")},
                  {"OPENBLAS_NUM_THREADS", env_or("OPENBLAS_NUM_THREADS", "")},
                  {"BARBELL_CPU_GEMM", env_or("BARBELL_CPU_GEMM", "")},
                  {"BARBELL_CPU_ISA", env_or("BARBELL_CPU_ISA", "")}}},
                {"dtype", dtype_name},
                {"step", "forward + backward + clip_grad_norm_ + AdamW"},
                {"load_average_before", load_before}};
    json results = json::array();
    if (compare) {
      const std::vector<int> tl = parse_ints(compare_threads);
      const char* tmp = std::getenv("TMPDIR");
      fmt::print(
          "(medians of per-step times, interleaved rounds; others: CPUs that other programs kept busy "
          "meanwhile)\n");
      fmt::print("{:<7} {:>8} {:>3} {:>10} {:>15} {:>10} {:>15} {:>8} {:>10} {:>7}\n", "config", "params",
                 "thr", "barbell ms", "(p25-p75)", "torch ms", "(p25-p75)", "ratio", "|dloss|", "others");
      for (auto& s : chosen)
        results.push_back(compare_config(s, tl, rounds, round_seconds, warmup, python, script,
                                         keep_dir.empty() ? (tmp ? tmp : "/tmp") : keep_dir,
                                         !keep_dir.empty()));
    } else if (compare_bf16) {
      const std::vector<int> tl = parse_ints(compare_threads);
      fmt::print(
          "(medians of per-step times, interleaved rounds; others: CPUs that other programs kept busy "
          "meanwhile)\n");
      fmt::print("{:<7} {:>8} {:>3} {:>10} {:>15} {:>10} {:>15} {:>8} {:>7}\n", "config", "params", "thr",
                 "f32 ms", "(p25-p75)", "bf16 ms", "(p25-p75)", "bf16/f32", "others");
      for (auto& s : chosen) results.push_back(compare_bf16_config(s, tl, rounds, round_seconds, warmup));
    } else {
      const double ceiling = no_ceiling ? 1.0 : matmul_ceiling_gflops();
      out["matmul_ceiling_gflop_per_s"] = ceiling;
      out["threads"] = bb::num_threads();
      out["flops_model"] = "6 * (matmul parameters) + 12 * n_layer * seq_len * n_embd per token";
      fmt::print("f32 matmul ceiling (1024^3): {:.1f} GFLOP/s\n", ceiling);
      fmt::print("{:<7} {:>10} {:>7} {:>6} {:>10} {:>10} {:>11} {:>9} {:>9}\n", "preset", "params", "tokens",
                 "steps", "ms median", "ms min", "tokens/s", "GFLOP/s", "of ceil");
      for (auto& s : chosen) results.push_back(bench_config(s, steps, seconds, warmup, ceiling, dtype));
    }
    out["load_average_after"] = first_line_of("/proc/loadavg", "");
    out["results"] = results;
    if (!json_path.empty()) {
      std::ofstream f(json_path);
      f << out.dump(2) << "\n";
      BB_CHECK(f.good(), bb::IOError, "bench_train: cannot write {}", json_path);
      fmt::print("wrote {}\n", json_path);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}

// bench_train: the time of one full GPT training step on the CPU (forward, backward, gradient clipping,
// AdamW) for the presets, with tokens/s and achieved GFLOP/s, optionally written as JSON.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "barbell/barbell.hpp"
#include "bench_util.hpp"

namespace bb = barbell;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

using bench::median;
using bench::utc_now;

// A realistic batch per preset: the model's whole context, a batch that fits comfortably in memory.
struct Shape {
  std::string preset;
  int64_t batch, seq_len;
};
const std::vector<Shape> kShapes = {
    {"tiny", 32, 64}, {"small", 16, 128}, {"medium", 8, 256}, {"gpt2", 4, 1024}};
constexpr int64_t kVocab = 256;

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

json bench_preset(const Shape& s, int64_t steps_flag, double seconds, int warmup, double ceiling) {
  bb::nn::GPTConfig cfg = bb::nn::GPTConfig::preset(s.preset);
  cfg.vocab_size = kVocab;
  cfg.block_size = s.seq_len;
  bb::nn::GPT model(cfg);
  bb::optim::AdamWOptions ao;
  ao.lr = 1e-4;  // small, so that many steps stay numerically tame
  ao.weight_decay = 0.1;
  bb::optim::AdamW opt(model.named_parameters(), ao);
  const std::vector<bb::Tensor> params = model.parameters();

  // A few fixed random batches, drawn before timing.
  bb::Generator gen(1234);
  std::vector<std::pair<bb::Tensor, bb::Tensor>> batches;
  for (int i = 0; i < 4; ++i)
    batches.emplace_back(bb::randint(0, kVocab, {s.batch, s.seq_len}, {bb::DType::I64}, &gen),
                         bb::randint(0, kVocab, {s.batch, s.seq_len}, {bb::DType::I64}, &gen));
  int64_t step = 0;
  double last_loss = 0;
  auto train_step = [&]() {
    auto t0 = Clock::now();
    auto& [x, y] = batches[static_cast<size_t>(step++ % 4)];
    bb::Tensor loss = model.loss(x, y);
    loss.backward();
    bb::optim::clip_grad_norm_(params, 1.0);
    opt.step();
    opt.zero_grad();
    last_loss = loss.item<double>();
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };

  double warm_s = 0;
  for (int i = 0; i < warmup; ++i) warm_s = train_step();
  int64_t steps = steps_flag;
  if (steps <= 0)
    steps = std::clamp<int64_t>(static_cast<int64_t>(seconds / std::max(warm_s, 1e-6)), 3, 1000);
  std::vector<double> times;
  for (int64_t i = 0; i < steps; ++i) times.push_back(train_step());

  // FLOPs per token of a training step (forward + backward = 3x forward): 6 per parameter that is a
  // matmul weight (wte counts, as the tied output projection; wpe is only a lookup), plus attention's
  // q k^T and att v: 2 * 2 * T * C forward per layer, 12 * L * T * C with the backward. The causal
  // attention computes the full T x T scores, so no halving.
  const int64_t n_params = model.num_parameters();
  const int64_t matmul_params = n_params - cfg.block_size * cfg.n_embd;
  const double flops_per_token = 6.0 * static_cast<double>(matmul_params) +
                                 12.0 * static_cast<double>(cfg.n_layer * s.seq_len * cfg.n_embd);
  const int64_t tokens = s.batch * s.seq_len;
  const double med = median(times), mn = *std::min_element(times.begin(), times.end());
  const double gflop_step = flops_per_token * static_cast<double>(tokens) / 1e9;
  json r = {{"preset", s.preset},
            {"n_layer", cfg.n_layer},
            {"n_head", cfg.n_head},
            {"n_embd", cfg.n_embd},
            {"vocab_size", cfg.vocab_size},
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
            {"final_loss", last_loss}};
  fmt::print("{:<7} {:>9.2f}M {:>7} {:>6} {:>10.1f} {:>10.1f} {:>11.0f} {:>9.2f} {:>8.0f}%\n", s.preset,
             static_cast<double>(n_params) / 1e6, tokens, steps, 1e3 * med, 1e3 * mn,
             static_cast<double>(tokens) / med, gflop_step / med, 100 * gflop_step / med / ceiling);
  std::fflush(stdout);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  bb::prefer_passive_omp_wait(argv);  // as barbell-train does; OMP_WAIT_POLICY=active to compare
  std::string presets = "tiny,small,medium";
  int64_t steps = 0;
  double seconds = 6.0;
  int warmup = 2;
  std::string json_path;
  int threads = 0;
  CLI::App app{"bench_train: time full GPT training steps (forward, backward, clip, AdamW) on the CPU"};
  app.add_option("--presets", presets, "Comma-separated presets: tiny, small, medium, gpt2")
      ->capture_default_str();
  app.add_option("--steps", steps, "Timed steps per preset (0: as many as fit in --seconds, at least 3)")
      ->capture_default_str();
  app.add_option("--seconds", seconds, "Target timed seconds per preset when --steps is 0")
      ->capture_default_str();
  app.add_option("--warmup", warmup, "Untimed steps first")->capture_default_str()->check(CLI::Range(1, 100));
  app.add_option("--json", json_path, "Write the results as JSON to this file");
  app.add_option("--threads", threads, "CPU threads (0: the OpenMP default)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    if (threads > 0) bb::set_num_threads(threads);
    std::vector<Shape> chosen;
    std::stringstream ss(presets);
    for (std::string name; std::getline(ss, name, ',');) {
      auto it =
          std::find_if(kShapes.begin(), kShapes.end(), [&](const Shape& s) { return s.preset == name; });
      BB_CHECK(it != kShapes.end(), bb::ValueError,
               "bench_train: unknown preset '{}' (tiny, small, medium, gpt2)", name);
      chosen.push_back(*it);
    }
    const std::string cpu = first_line_of("/proc/cpuinfo", "model name");
    const std::string load_before = first_line_of("/proc/loadavg", "");
    fmt::print("bench_train: {} | {} threads ({} hardware) | OMP_WAIT_POLICY={} | load average {}\n",
               cpu.empty() ? "unknown CPU" : cpu, bb::num_threads(), std::thread::hardware_concurrency(),
               env_or("OMP_WAIT_POLICY", "(default)"), load_before);
    const double ceiling = matmul_ceiling_gflops();
    fmt::print("f32 matmul ceiling (1024^3): {:.1f} GFLOP/s\n", ceiling);
    fmt::print("{:<7} {:>10} {:>7} {:>6} {:>10} {:>10} {:>11} {:>9} {:>9}\n", "preset", "params", "tokens",
               "steps", "ms median", "ms min", "tokens/s", "GFLOP/s", "of ceil");
    json results = json::array();
    for (auto& s : chosen) results.push_back(bench_preset(s, steps, seconds, warmup, ceiling));
    if (!json_path.empty()) {
      json out = {{"benchmark", "bench_train"},
                  {"barbell_version", BARBELL_VERSION},
                  {"date", utc_now()},
                  {"device", "cpu"},
                  {"machine",
                   {{"cpu", cpu},
                    {"hardware_threads", std::thread::hardware_concurrency()},
                    {"load_average_before", load_before},
                    {"load_average_after", first_line_of("/proc/loadavg", "")}}},
                  {"matmul_ceiling_gflop_per_s", ceiling},
                  {"threads", bb::num_threads()},
                  // OpenMP's spin-waiting makes a loaded machine far slower; record what was set.
                  {"env",
                   {{"OMP_NUM_THREADS", env_or("OMP_NUM_THREADS", "")},
                    {"OMP_WAIT_POLICY", env_or("OMP_WAIT_POLICY", "")},
                    {"OPENBLAS_NUM_THREADS", env_or("OPENBLAS_NUM_THREADS", "")}}},
                  {"dtype", "f32"},
                  {"step", "forward + backward + clip_grad_norm_ + AdamW"},
                  {"flops_model", "6 * (parameters - wpe) + 12 * n_layer * seq_len * n_embd per token"},
                  {"results", results}};
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

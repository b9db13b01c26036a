// bench_attention: GPU time and TFLOP/s of scaled_dot_product_attention's fused backends
// (Flash: barbell's kernels; Cudnn: cuDNN's SDPA; optionally Math, the plain composition,
// at small T), forward and backward separately, at the shapes of the attention issue:
// hidden size 2048 (H = 16 at D = 128, H = 32 at D = 64), B*T = 16384 tokens,
// T = 512 ... 16384, causal and not, bf16 (f16 with --f16).
//
// Inputs are those of a GPT layer: q, k, v are strided [B, H, T, D] views of one
// [B, T, 3, H, D] buffer (select(2, i).transpose(1, 2)), read in place.
//
// FLOPs (the usual convention, as FlashAttention and cuDNN report them):
//   forward  = 4 * B * H * T^2 * D, halved when causal;
//   backward = 2.5 * forward (5 matmuls against the forward's 2).
//
// How each pass is timed: the median over repetitions of per-call GPU times (CUDA events),
// after a warm-up; before each timed call a device-to-device copy keeps the GPU busy while
// the host enqueues the call (so host launch gaps are not counted) and flushes the L2.
//   fwd: scaled_dot_product_attention(q, k, v, causal, default scale, backend) under
//        NoGradGuard (no graph recorded).
//   bwd: the fused op's own autograd node, out.grad_fn()->apply(dO), on the state one
//        forward saved (q, k, v, out, lse): exactly the backward kernels and their output
//        allocations, no autograd engine, no gradient accumulation. Math has no single
//        node: its backward is the autograd engine over its graph (retain_graph), which
//        also copies dq, dk, dv into the leaves' .grad (3 x [B, H, T, D], untimed setup
//        clears them).
//
// Flags: --json FILE (results written after every case, so a run cut short keeps what it
// measured), --quick (fewer shapes and repetitions), --f16, --math [--math-max-t T],
// --backends LIST (flash,cudnn), --only REGEX (on "backend pass dtype T D causal|full"),
// --commit STR (else $BARBELL_COMMIT), --time-budget SECONDS (start no case after it).
// The most telling shapes run first (D = 128, T = 8192, non-causal: the issue's target).
// Progress goes to stderr, the table to stdout. Without a GPU it says so and exits 0.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "barbell/barbell.hpp"
#include "barbell/cuda/cuda.hpp"
#include "bench_util.hpp"
#include "gpu_bench.hpp"

namespace bb = barbell;
using bb::AttentionBackend;
using bb::DType;
using bb::Shape;
using bb::Tensor;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

using bench::Measured;
using bench::median;
using bench::utc_now;

// The NVIDIA kernel driver's version ("550.54.15"), from /proc/driver/nvidia/version.
std::string nvidia_driver_version() {
  std::ifstream f("/proc/driver/nvidia/version");
  std::string line;
  if (!f || !std::getline(f, line)) return "";
  std::regex re(R"((\d+\.\d+(\.\d+)?))");
  std::smatch m;
  auto pos = line.find("Kernel Module");
  std::string tail = pos == std::string::npos ? line : line.substr(pos);
  return std::regex_search(tail, m, re) ? m.str(1) : "";
}

// cuDNN's version if libcudnn.so.9 can be loaded here (the Cudnn backend loads it the same
// way), else 0.
long cudnn_version() {
  const char* env = std::getenv("BARBELL_CUDNN_LIBRARY");  // what the Cudnn backend tries first
  void* h = env && *env ? dlopen(env, RTLD_LAZY | RTLD_LOCAL) : nullptr;
  if (!h) h = dlopen("libcudnn.so.9", RTLD_LAZY | RTLD_LOCAL);
  if (!h) return 0;
  using Fn = size_t (*)();
  auto fn = reinterpret_cast<Fn>(dlsym(h, "cudnnGetVersion"));
  long v = fn ? static_cast<long>(fn()) : 0;
  dlclose(h);
  return v;
}

// The flash forward's tile configuration ($BARBELL_FLASH_FWD_TILES, set by --flash-tiles):
// variant 1 is reported as backend "flash-t1", so both can sit in one table.
bool flash_tiles_1() {
  const char* e = std::getenv("BARBELL_FLASH_FWD_TILES");
  return e && e[0] == '1';
}

const char* bname(AttentionBackend b) {
  switch (b) {
    case AttentionBackend::Flash: return flash_tiles_1() ? "flash-t1" : "flash";
    case AttentionBackend::Cudnn: return "cudnn";
    case AttentionBackend::Math: return "math";
    default: return "auto";
  }
}

struct Shape4 {
  int64_t B, H, T, D;
  bool causal;
  DType dt;
};

double fwd_flops(const Shape4& s) {
  double f = 4.0 * static_cast<double>(s.B) * static_cast<double>(s.H) * static_cast<double>(s.T) *
             static_cast<double>(s.T) * static_cast<double>(s.D);
  return s.causal ? f / 2 : f;
}

struct Bench {
  bench::GpuTimer timer;
  std::regex only{".*"};
  double budget_s = 0;  // 0: none
  Clock::time_point t0 = Clock::now();
  json meta = json::object();
  json results = json::array();
  std::string json_path;
  int errors = 0, skipped_cases = 0, not_run = 0;
  std::map<std::string, double> ms_of;  // "backend pass dtype T D causal" -> ms, for the ratios

  void save() const {
    if (json_path.empty()) return;
    json out = meta;
    out["results"] = results;
    std::ofstream f(json_path);
    f << out.dump(2) << "\n";
  }
  bool over_budget() const {
    return budget_s > 0 && std::chrono::duration<double>(Clock::now() - t0).count() > budget_s;
  }
  static std::string key(AttentionBackend b, const char* pass, const Shape4& s) {
    return fmt::format("{} {} {} T={} D={} {}", bname(b), pass, bb::dtype_name(s.dt), s.T, s.D,
                       s.causal ? "causal" : "full");
  }

  // Measures one (backend, pass, shape) and records it.
  void one(AttentionBackend b, const char* pass, const Shape4& s, const std::function<Measured()>& run,
           int index, int total) {
    const std::string id = key(b, pass, s);
    if (!std::regex_search(id, only)) return;
    json j = {{"backend", bname(b)}, {"pass", pass},         {"dtype", bb::dtype_name(s.dt)},
              {"B", s.B},            {"H", s.H},             {"T", s.T},
              {"D", s.D},            {"causal", s.causal}};
    if (over_budget()) {
      ++not_run;
      return;
    }
    std::fprintf(stderr, "[%d/%d] %s ...\n", index, total, id.c_str());
    try {
      Measured m = run();
      double flops = fwd_flops(s) * (std::string(pass) == "bwd" ? 2.5 : 1.0);
      double tflops = flops / (m.median_ms * 1e-3) / 1e12;
      j["ms"] = m.median_ms;
      j["tflops"] = tflops;
      j["min_ms"] = m.min_ms;
      j["max_ms"] = m.max_ms;
      j["reps"] = m.reps;
      j["host_enqueue_us"] = m.host_us;
      j["flops"] = flops;
      ms_of[id] = m.median_ms;
      std::printf("%-6s %-4s %-5s %3lld %3lld %6lld %4lld %-6s %10.3f %9.1f %5d\n", bname(b), pass,
                  bb::dtype_name(s.dt), static_cast<long long>(s.B), static_cast<long long>(s.H),
                  static_cast<long long>(s.T), static_cast<long long>(s.D), s.causal ? "causal" : "full",
                  m.median_ms, tflops, m.reps);
    } catch (const std::exception& e) {
      ++errors;
      j["error"] = e.what();
      std::printf("%-6s %-4s %-5s %3lld %3lld %6lld %4lld %-6s ERROR: %s\n", bname(b), pass, bb::dtype_name(s.dt),
                  static_cast<long long>(s.B), static_cast<long long>(s.H), static_cast<long long>(s.T),
                  static_cast<long long>(s.D), s.causal ? "causal" : "full", e.what());
      try {
        bb::cuda::synchronize();
      } catch (const std::exception&) {
      }
    }
    std::fflush(stdout);
    results.push_back(j);
    save();
  }

  // A backend that cannot run the shape: one record saying why, no timing.
  void unavailable(AttentionBackend b, const Shape4& s, const std::string& why) {
    for (const char* pass : {"fwd", "bwd"}) {
      if (!std::regex_search(key(b, pass, s), only)) continue;
      ++skipped_cases;
      results.push_back({{"backend", bname(b)}, {"pass", pass}, {"dtype", bb::dtype_name(s.dt)}, {"B", s.B},
                         {"H", s.H}, {"T", s.T}, {"D", s.D}, {"causal", s.causal}, {"skipped", why}});
    }
    std::printf("%-6s      %-5s %3lld %3lld %6lld %4lld %-6s SKIP: %s\n", bname(b), bb::dtype_name(s.dt),
                static_cast<long long>(s.B), static_cast<long long>(s.H), static_cast<long long>(s.T),
                static_cast<long long>(s.D), s.causal ? "causal" : "full", why.substr(0, 160).c_str());
    save();
  }
};

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, f16 = false, with_math = false;
  int64_t math_max_t = 2048;
  double budget = 0;
  std::string json_path, only = ".*", commit, backends_arg = "flash,cudnn";
  CLI::App app{"bench_attention: GPU time and TFLOP/s of scaled_dot_product_attention (Flash, cuDNN; Math at "
               "small T), forward and backward, hidden 2048, B*T = 16384, T = 512..16384"};
  app.add_flag("--quick", quick, "Fewer shapes (D=128 T=8192/2048, D=64 T=8192) and repetitions: a smoke run");
  app.add_flag("--f16", f16, "Also f16 (after all the bf16 cases)");
  app.add_flag("--math", with_math, "Also the Math backend (the plain composition; memory hungry) up to --math-max-t");
  app.add_option("--math-max-t", math_max_t, "Largest T for --math (default 2048)");
  app.add_option("--backends", backends_arg, "Comma-separated fused backends to time (default flash,cudnn)");
  int flash_tiles = -1;
  app.add_option("--flash-tiles", flash_tiles,
                 "The flash forward's tile configuration, 0 or 1 (sets $BARBELL_FLASH_FWD_TILES; 1 is reported as "
                 "backend flash-t1)")
      ->check(CLI::Range(0, 1));
  app.add_option("--json", json_path, "Write the results as JSON to this file (rewritten after every case)");
  app.add_option("--only", only, "Run only the cases whose \"backend pass dtype T=.. D=.. causal|full\" matches");
  app.add_option("--commit", commit, "The barbell commit being measured (default: $BARBELL_COMMIT)");
  app.add_option("--time-budget", budget, "Start no new case after this many seconds (0: no limit)");
  CLI11_PARSE(app, argc, argv);
  if (flash_tiles >= 0) setenv("BARBELL_FLASH_FWD_TILES", flash_tiles ? "1" : "0", 1);
  if (commit.empty() && std::getenv("BARBELL_COMMIT")) commit = std::getenv("BARBELL_COMMIT");
#ifdef BARBELL_COMMIT
  if (commit.empty()) commit = BARBELL_COMMIT;
#endif

  std::vector<AttentionBackend> backends;
  {
    std::stringstream ss(backends_arg);
    std::string b;
    while (std::getline(ss, b, ',')) {
      if (b == "flash") backends.push_back(AttentionBackend::Flash);
      else if (b == "cudnn") backends.push_back(AttentionBackend::Cudnn);
      else if (b == "math") with_math = true;
      else if (!b.empty()) {
        std::fprintf(stderr, "bench_attention: unknown backend '%s' (flash, cudnn, math)\n", b.c_str());
        return 2;
      }
    }
  }
  if (with_math) backends.push_back(AttentionBackend::Math);

  Bench bench;
  bench.budget_s = budget;
  bench.json_path = json_path;
  try {
    bench.only = std::regex(only);
  } catch (const std::regex_error& e) {
    std::fprintf(stderr, "bench_attention: bad --only regex '%s': %s\n", only.c_str(), e.what());
    return 2;
  }
  bench.meta = {{"benchmark", "bench_attention"}, {"date", utc_now()},  {"commit", commit},
                {"quick", quick},                 {"complete", false}};

  if (bb::cuda::device_count() == 0 || !bb::cuda::is_available()) {
    std::printf("bench_attention: skipped: no CUDA device\n");
    bench.meta["skipped"] = "no CUDA device";
    bench.save();
    return 0;
  }

  auto p = bb::cuda::properties(0);
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  bench.meta["gpu"] = p.name;
  bench.meta["sm"] = fmt::format("{}{}", p.major, p.minor);
  bench.meta["flash_fwd_tiles"] = flash_tiles_1() ? 1 : 0;
  bench.meta["multiprocessors"] = p.multiprocessors;
  bench.meta["driver_version"] = nvidia_driver_version();
  bench.meta["cuda_driver_api_version"] = drv;
  bench.meta["cuda_runtime_version"] = rt;
  bench.meta["cudnn_version"] = cudnn_version();
  bench.meta["deterministic_attention"] = bb::deterministic_attention();
  bench.meta["flops_formula"] = "fwd = 4*B*H*T^2*D (halved when causal); bwd = 2.5 * fwd";
  bench.meta["method"] =
      "median of per-call GPU times (CUDA events) after warm-up, each call preceded by a device copy that covers the "
      "host's enqueue time and flushes L2; q, k, v strided views of a [B, T, 3, H, D] buffer; fwd under "
      "NoGradGuard; bwd = the fused op's autograd node apply(dO) (Math: the autograd engine with retain_graph)";

  bench.timer.init(int64_t{64} << 20);  // delay buffers: 2 x 256 MiB of f32
  bench.timer.copy_gbps = 3000;          // assumed (H100-class) for sizing the delays
  bench.timer.target_ms = 300;
  bench.timer.min_reps = 5;
  bench.timer.max_reps = 50;
  if (quick) {
    bench.timer.target_ms = 60;
    bench.timer.warm = 2;
    bench.timer.min_reps = 3;
    bench.timer.max_reps = 10;
  }
  std::fprintf(stderr, "bench_attention on %s (sm_%d%d, %d SMs), driver %s, cuDNN %ld%s\n", p.name.c_str(), p.major,
               p.minor, p.multiprocessors, nvidia_driver_version().c_str(), cudnn_version(), quick ? ", QUICK" : "");
  std::printf("%-6s %-4s %-5s %3s %3s %6s %4s %-6s %10s %9s %5s\n", "backend", "pass", "dtype", "B", "H", "T", "D",
              "mask", "median_ms", "TFLOP/s", "reps");

  // The shapes, the most telling first.
  const int64_t kTokens = 16384, kHidden = 2048;
  std::vector<std::pair<int64_t, int64_t>> dt_shapes;  // (D, T)
  if (quick) {
    dt_shapes = {{128, 8192}, {128, 2048}, {64, 8192}};
  } else {
    for (int64_t D : {128, 64})
      for (int64_t T : {8192, 16384, 4096, 2048, 1024, 512}) dt_shapes.push_back({D, T});
  }
  std::vector<DType> dtypes = {DType::BF16};
  if (f16) dtypes.push_back(DType::F16);
  int total = 0;
  for (size_t i = 0; i < dtypes.size(); ++i)
    for (auto& dts : dt_shapes)
      for (AttentionBackend b : backends)
        if (b != AttentionBackend::Math || dts.second <= math_max_t) total += 4;  // fwd, bwd; causal or not
  int index = 0;
  bb::Generator gen(20251201);
  auto t_start = Clock::now();
  json ratios = json::array();  // flash TFLOP/s over cudnn TFLOP/s, per shape and pass
  std::set<int> named;          // backends whose backward node was printed

  for (DType dt : dtypes) {
    for (const auto& dts : dt_shapes) {
      const int64_t D = dts.first, T = dts.second;
      const int64_t H = kHidden / D, B = kTokens / T;
      if (bench.over_budget()) {
        for (AttentionBackend b : backends)
          if (b != AttentionBackend::Math || T <= math_max_t) bench.not_run += 4;
        continue;
      }
      Tensor qkv, dout;
      try {
        qkv = bench::random_rows(gen, B * T, 3 * H * D, dt).view({B, T, 3, H, D});
        dout = bench::random_rows(gen, B * H * T, D, dt).view({B, H, T, D});
      } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_attention: inputs for D=%lld T=%lld: %s\n", static_cast<long long>(D),
                     static_cast<long long>(T), e.what());
        ++bench.errors;
        continue;
      }
      for (bool causal : {false, true}) {
        const Shape4 s{B, H, T, D, causal, dt};
        for (AttentionBackend b : backends) {
          if (b == AttentionBackend::Math && T > math_max_t) continue;
          // Leaves: detached strided views of the buffer (for the backward's graph).
          Tensor q = qkv.select(2, 0).transpose(1, 2).detach(), k = qkv.select(2, 1).transpose(1, 2).detach(),
                 v = qkv.select(2, 2).transpose(1, 2).detach();
          try {
            AttentionBackend got = bb::resolve_attention_backend(q, k, v, b);
            if (got != b) throw bb::ValueError(fmt::format("resolved to {}", bb::attention_backend_name(got)));
          } catch (const std::exception& e) {
            index += 2;
            bench.unavailable(b, s, e.what());
            continue;
          }
          bench.one(b, "fwd", s, [&] {
            return bench.timer.measure([&](int) {
              bb::NoGradGuard ng;
              Tensor y = bb::scaled_dot_product_attention(q, k, v, causal, std::nullopt, b);
            });
          }, ++index, total);
          bench.one(b, "bwd", s, [&] {
            Tensor ql = q.detach().requires_grad_(true), kl = k.detach().requires_grad_(true),
                   vl = v.detach().requires_grad_(true);
            Tensor out = bb::scaled_dot_product_attention(ql, kl, vl, causal, std::nullopt, b);
            if (b == AttentionBackend::Math) {
              return bench.timer.measure(
                  [&](int) { bb::autograd::backward({out}, {dout}, /*retain_graph=*/true); },
                  [&](int) {
                    ql.set_grad(Tensor());
                    kl.set_grad(Tensor());
                    vl.set_grad(Tensor());
                  });
            }
            auto node = out.grad_fn();
            if (!node) throw bb::ValueError("the forward recorded no backward node");
            if (named.insert(static_cast<int>(b)).second)
              std::fprintf(stderr, "  (%s backward node: %s)\n", bname(b), node->name().c_str());
            return bench.timer.measure([&](int) {
              bb::NoGradGuard ng;
              std::vector<Tensor> g = node->apply(dout);
            });
          }, ++index, total);
          try {
            bb::cuda::empty_cache();
          } catch (const std::exception&) {
          }
        }
        // Flash / cuDNN, per pass: the ratio of their TFLOP/s (> 1: Flash faster).
        for (const char* pass : {"fwd", "bwd"}) {
          auto f = bench.ms_of.find(Bench::key(AttentionBackend::Flash, pass, s));
          auto c = bench.ms_of.find(Bench::key(AttentionBackend::Cudnn, pass, s));
          if (f == bench.ms_of.end() || c == bench.ms_of.end() || f->second <= 0) continue;
          const double ratio = c->second / f->second;
          std::printf("  flash/cudnn %s %s T=%lld D=%lld %s: %.2f\n", pass, bb::dtype_name(dt),
                      static_cast<long long>(T), static_cast<long long>(D), causal ? "causal" : "full", ratio);
          ratios.push_back({{"pass", pass}, {"dtype", bb::dtype_name(dt)}, {"B", B}, {"H", H}, {"T", T}, {"D", D},
                            {"causal", causal}, {"flash_over_cudnn", ratio}});
          bench.meta["ratios"] = ratios;
          bench.save();
        }
      }
    }
  }
  double secs = std::chrono::duration<double>(Clock::now() - t_start).count();
  bench.meta["complete"] = bench.not_run == 0;
  bench.meta["wall_seconds"] = secs;
  if (bench.not_run) bench.meta["not_run"] = fmt::format("{} cases: past --time-budget {} s", bench.not_run, budget);
  bench.save();
  std::printf("\nbench_attention: %zu results, %d errors, %d unavailable, %d not run (time budget), %.0f s\n",
              bench.results.size(), bench.errors, bench.skipped_cases, bench.not_run, secs);
  if (!json_path.empty()) std::printf("wrote %s\n", json_path.c_str());
  return bench.errors ? 1 : 0;
}

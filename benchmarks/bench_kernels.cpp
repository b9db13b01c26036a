// bench_kernels: the GPU time of every CUDA kernel barbell has, through the public ops API,
// at the sizes of a GPT-2 124M training step (B*T = 16384 and 65536 tokens, C = 768,
// V = 50257; bf16 and f32), as GB/s or TFLOP/s and as a fraction of two ceilings measured
// in the same run: a raw cudaMemcpyAsync device-to-device copy of 1 GiB (bytes read +
// written / time) and a raw cuBLASLt bf16 8192^3 matmul (the heuristic's best algorithm,
// 32 MiB workspace).
//
// How a kernel is timed. Each repetition enqueues, on barbell's current stream: the
// untimed setup (if any), a device-to-device copy ("delay") that keeps the GPU busy while
// the host enqueues the timed call and that also flushes the L2 (it moves >= 4x the L2),
// a start event, the timed call, a stop event. So the time is the GPU's, from the first
// kernel of the call to the end of its last, without host launch gaps, unless the call
// itself waits for the host (host_sync: true in the JSON: it reads a value back).
// The median over the repetitions is reported (min and max too), after a warm-up.
// Inputs are rotated over enough copies that they exceed 2x the L2 together.
// Backward kernels are timed by calling the op's autograd node directly
// (y.grad_fn()->apply(dy)): exactly the op's backward function (its kernels and output
// allocations), with no autograd engine and no gradient accumulation.
//
// Bytes are those an ideal kernel moves (each input read once, each output written once),
// per kernel as "bytes_formula" in the JSON; matmul FLOPs are 2*M*N*K.
//
// Flags: --json FILE, --quick (16384 tokens, bf16, few repetitions: a smoke run),
// --only REGEX (on "name dtype tokens"), --commit STR (recorded in the JSON).
// Without a GPU it prints a message and exits with 77 (like the CUDA tests: "skipped").
//
// On barbell's emulated device (a BARBELL_CUDA=EMULATE build) nothing is timed: each case
// runs once at emulation sizes (--tokens, default 32; a small parameter set for the
// optimizer) and the table shows the emulator's memory-traffic counts for the kernels the
// case launched (emu/README.md): coalescing (sectors touched / the fewest possible),
// distinct bytes moved against the ideal bytes above, shared-memory bank conflicts
// (wavefronts / ideal), atomics. Counts under emulation, not timings.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "barbell/barbell.hpp"
#include "barbell/cuda/cuda.hpp"
#include "bench_util.hpp"
#include "gpu_bench.hpp"

namespace bb = barbell;
using bb::DType;
using bb::Shape;
using bb::Tensor;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

using bench::Measured;
using bench::median;
using bench::utc_now;

// The raw CUDA calls below use this program's own (static) CUDA runtime, on its own
// stream and events; they share only device pointers with barbell, whose runtime lives in
// libbarbell.so. bb::cuda::synchronize() (a device-wide sync) orders the two.
void cuda_ok(cudaError_t e, const char* what, int line) {
  if (e != cudaSuccess)
    throw bb::CudaError(fmt::format("bench_kernels:{}: {} failed: {}", line, what, cudaGetErrorString(e)));
}
void lt_ok(cublasStatus_t s, const char* what, int line) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw bb::CudaError(fmt::format("bench_kernels:{}: {} failed: cublas status {}", line, what, static_cast<int>(s)));
}
#define CUDA_OK(x) cuda_ok((x), #x, __LINE__)
#define LT_OK(x) lt_ok((x), #x, __LINE__)

bb::Device gpu() { return bb::Device::cuda(0); }

size_t dsize(DType d) { return bb::dtype_size(d); }

// One benchmarked configuration.
struct Case {
  std::string name;   // e.g. "layer_norm_bwd"
  DType dtype = DType::BF16;
  int64_t tokens = 0;  // 0 when not token-sized
  std::string shape;  // readable
  std::string timed;  // what exactly is timed
  std::string bytes_formula, flops_formula;
  double bytes = 0, flops = 0;
  bool host_sync = false;
  std::string ceiling = "copy";  // "copy", "cublaslt" or "" (no ratio)
};

class Bench {
 public:
  bool quick = false;
  bool emulated = false;  // the emulated device: traffic counts instead of timings
  std::regex only{".*"};
  json results = json::array();
  // Written after every case, so a run cut short by a timeout still leaves its results.
  std::string json_path;
  json meta = json::object();
  void save() const {
    if (json_path.empty()) return;
    json out = meta;
    out["results"] = results;
    std::ofstream f(json_path);
    f << out.dump(2) << "\n";
  }
  // Timing; its copy_gbps is the copy ceiling (raw D2D, (read + write) bytes / s / 1e9)
  // once measured.
  bench::GpuTimer timer;
  double cublaslt_tflops = 0;  // ceiling: raw cuBLASLt bf16 8192^3
  bb::Generator gen{20251126};

  void init() {
    if (emulated) return;  // no timing: no delay buffers
    if (quick) {
      timer.target_ms = 25;
      timer.warm = 2;
      timer.min_reps = 5;
      timer.max_reps = 25;
    }
    timer.init(int64_t{128} << 20);  // delay buffers: 2 x 512 MiB of f32
  }
  Measured measure(const std::function<void(int)>& timed, const std::function<void(int)>& setup = nullptr) {
    return timer.measure(timed, setup);
  }

  bool wanted(const Case& c) const {
    return std::regex_search(id(c), only);
  }
  static std::string id(const Case& c) {
    return c.name + " " + bb::dtype_name(c.dtype) + " " + std::to_string(c.tokens);
  }

  // Random inputs made on the GPU (bench::random_rows over the last dim).
  Tensor rnd(const Shape& s, DType dt, double scale = 1.0, double shift = 0.0) {
    const int64_t C = s.empty() ? 1 : s.back();
    return bench::random_rows(gen, bb::shape_numel(s) / C, C, dt, scale, shift).view(s);
  }
  std::vector<Tensor> rnd_copies(int copies, const Shape& s, DType dt, double scale = 1.0, double shift = 0.0) {
    std::vector<Tensor> v;
    for (int i = 0; i < copies; ++i) v.push_back(rnd(s, dt, scale, shift));
    return v;
  }
  // Enough copies of an input set of `input_bytes` that all of them exceed 2x the L2.
  int copies_for(double input_bytes) const {
    if (emulated) return 1;
    double want = 2.0 * static_cast<double>(timer.l2);
    if (input_bytes >= want) return 1;
    return static_cast<int>(std::ceil(want / input_bytes)) + 1;
  }

  static void header() {
    std::printf("%-26s %-5s %6s %-30s %10s %8s %6s %8s %6s %5s\n", "kernel", "dtype", "tokens", "shape", "median_us",
                "GB/s", "%copy", "TFLOP/s", "%cuBLASLt", "reps");
    std::fflush(stdout);
  }

  // Runs and records one case; `make` builds the inputs and returns the timed function
  // (and optionally a setup). Errors are recorded and the run goes on.
  using Timed = std::function<void(int)>;
  struct Fns {
    Timed timed, setup;
  };
  // The emulated device: run the case once and report the traffic of what it launched.
  static std::map<std::string, bb::cuda::KernelTraffic> traffic_now() {
    std::map<std::string, bb::cuda::KernelTraffic> m;
    for (const auto& k : bb::cuda::emulated_traffic()) m[k.kernel] = k;
    return m;
  }
  static void emu_header() {
    std::printf("%-26s %-5s %6s %-28s %7s %9s %9s %7s %9s %9s %6s %7s\n", "case", "dtype", "tokens", "shape",
                "kernels", "requests", "sector_eff", "moved_MB", "ideal_MB", "moved/ideal", "bank", "atomics");
    std::fflush(stdout);
  }
  void run_emulated(Case c, json& j, const std::function<Fns()>& make) {
    Fns f = make();
    bb::cuda::synchronize();
    auto before = traffic_now();
    if (f.setup) f.setup(0);
    bb::cuda::synchronize();
    auto mid = traffic_now();  // what the setup launched is not the case's
    f.timed(0);
    bb::cuda::synchronize();
    auto after = traffic_now();
    (void)before;
    uint64_t req = 0, sec = 0, ideal = 0, moved = 0, swf = 0, sideal = 0, atom = 0;
    json kernels = json::array();
    for (const auto& [name, k] : after) {
      bb::cuda::KernelTraffic d = k, o{};
      auto it = mid.find(name);
      if (it != mid.end()) o = it->second;
      d.launches -= o.launches;
      if (d.launches == 0) continue;
      d.requests -= o.requests;
      d.sectors -= o.sectors;
      d.ideal_sectors -= o.ideal_sectors;
      d.unique_read_sectors -= o.unique_read_sectors;
      d.unique_write_sectors -= o.unique_write_sectors;
      d.shared_wavefronts -= o.shared_wavefronts;
      d.shared_ideal_wavefronts -= o.shared_ideal_wavefronts;
      d.atomics -= o.atomics;
      req += d.requests;
      sec += d.sectors;
      ideal += d.ideal_sectors;
      moved += 32 * (d.unique_read_sectors + d.unique_write_sectors);
      swf += d.shared_wavefronts;
      sideal += d.shared_ideal_wavefronts;
      atom += d.atomics;
      kernels.push_back({{"kernel", name},
                         {"launches", d.launches},
                         {"requests", d.requests},
                         {"sectors", d.sectors},
                         {"ideal_sectors", d.ideal_sectors},
                         {"moved_bytes", 32 * (d.unique_read_sectors + d.unique_write_sectors)},
                         {"shared_wavefronts", d.shared_wavefronts},
                         {"shared_ideal_wavefronts", d.shared_ideal_wavefronts},
                         {"atomics", d.atomics}});
    }
    const double eff = sec ? static_cast<double>(ideal) / static_cast<double>(sec) : 0;
    const double ratio = c.bytes > 0 ? static_cast<double>(moved) / c.bytes : 0;
    const double bank = sideal ? static_cast<double>(swf) / static_cast<double>(sideal) : 0;
    j["emulated"] = {{"kernels", kernels}, {"requests", req},          {"sector_efficiency", eff},
                     {"moved_bytes", moved}, {"moved_over_ideal", ratio}, {"bank_conflict_ways", bank},
                     {"atomics", atom}};
    std::printf("%-26s %-5s %6lld %-28s %7zu %9llu %9.0f%% %7.3f %9.3f %9.2fx %6s %7llu\n", c.name.c_str(),
                bb::dtype_name(c.dtype), static_cast<long long>(c.tokens), c.shape.substr(0, 28).c_str(),
                kernels.size(), static_cast<unsigned long long>(req), 100 * eff, static_cast<double>(moved) / 1e6,
                c.bytes / 1e6, ratio, sideal ? fmt::format("{:.2f}", bank).c_str() : "-",
                static_cast<unsigned long long>(atom));
  }

  void run(Case c, const std::function<Fns()>& make) {
    if (!wanted(c)) return;
    json j = {{"name", c.name},       {"dtype", bb::dtype_name(c.dtype)}, {"tokens", c.tokens},
              {"shape", c.shape},     {"timed", c.timed},                 {"bytes_formula", c.bytes_formula},
              {"bytes", c.bytes},     {"flops_formula", c.flops_formula}, {"flops", c.flops},
              {"host_sync", c.host_sync}};
    try {
      if (emulated) {
        run_emulated(c, j, make);
        std::fflush(stdout);
        results.push_back(j);
        save();
        return;
      }
      Measured m;
      {
        Fns f = make();
        m = measure(f.timed, f.setup);
      }
      bb::cuda::synchronize();
      double s = m.median_ms * 1e-3;
      double gbps = c.bytes > 0 ? c.bytes / s / 1e9 : 0;
      double tflops = c.flops > 0 ? c.flops / s / 1e12 : 0;
      j["median_ms"] = m.median_ms;
      j["min_ms"] = m.min_ms;
      j["max_ms"] = m.max_ms;
      j["reps"] = m.reps;
      j["host_enqueue_us"] = m.host_us;
      if (gbps > 0) j["gbps"] = gbps;
      if (tflops > 0) j["tflops"] = tflops;
      double fc = 0, fl = 0;
      if (c.ceiling == "copy" && gbps > 0 && timer.copy_gbps > 0) j["frac_of_copy"] = fc = gbps / timer.copy_gbps;
      if (c.ceiling == "cublaslt" && tflops > 0 && cublaslt_tflops > 0) j["frac_of_cublaslt"] = fl = tflops / cublaslt_tflops;
      std::printf("%-26s %-5s %6lld %-30s %10.1f %8.0f %6s %8s %6s %5d%s\n", c.name.c_str(), bb::dtype_name(c.dtype),
                  static_cast<long long>(c.tokens), c.shape.substr(0, 30).c_str(), m.median_ms * 1e3, gbps,
                  fc > 0 ? fmt::format("{:.0f}%", 100 * fc).c_str() : "-",
                  tflops > 0 ? fmt::format("{:.1f}", tflops).c_str() : "-",
                  fl > 0 ? fmt::format("{:.0f}%", 100 * fl).c_str() : "-", m.reps, c.host_sync ? " (host sync)" : "");
    } catch (const std::exception& e) {
      j["error"] = e.what();
      std::printf("%-26s %-5s %6lld ERROR: %s\n", c.name.c_str(), bb::dtype_name(c.dtype),
                  static_cast<long long>(c.tokens), e.what());
      try {
        bb::cuda::synchronize();
      } catch (const std::exception&) {
      }
    }
    std::fflush(stdout);
    results.push_back(j);
    save();
    try {
      bb::cuda::empty_cache();
    } catch (const std::exception&) {
    }
  }
};

// ---- the ceilings, measured raw ---------------------------------------------------

struct RawTiming {
  double median_ms = 0;
  int reps = 0;
};

template <typename F>
RawTiming time_raw(cudaStream_t st, int warm, int reps, F&& call) {
  for (int i = 0; i < warm; ++i) call();
  CUDA_OK(cudaStreamSynchronize(st));
  std::vector<cudaEvent_t> e(static_cast<size_t>(2 * reps));
  for (auto& ev : e) CUDA_OK(cudaEventCreate(&ev));
  for (int i = 0; i < reps; ++i) {
    CUDA_OK(cudaEventRecord(e[static_cast<size_t>(2 * i)], st));
    call();
    CUDA_OK(cudaEventRecord(e[static_cast<size_t>(2 * i + 1)], st));
  }
  CUDA_OK(cudaStreamSynchronize(st));
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    float t = 0;
    CUDA_OK(cudaEventElapsedTime(&t, e[static_cast<size_t>(2 * i)], e[static_cast<size_t>(2 * i + 1)]));
    ms.push_back(t);
  }
  for (auto& ev : e) cudaEventDestroy(ev);
  return {median(ms), reps};
}

// Raw D2D copy of 1 GiB between two barbell buffers on this program's own stream.
void ceiling_copy(Bench& b, json& ceilings) {
  const int64_t n = int64_t{1} << 28;  // f32 elements: 1 GiB
  Tensor src = b.rnd({n / 1024, 1024}, DType::F32), dst = bb::empty({n}, {DType::F32, gpu()});
  bb::cuda::synchronize();
  cudaStream_t st;
  CUDA_OK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  size_t bytes = static_cast<size_t>(n) * 4;
  auto t = time_raw(st, 3, b.quick ? 10 : 30, [&] {
    CUDA_OK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), bytes, cudaMemcpyDeviceToDevice, st));
  });
  CUDA_OK(cudaStreamDestroy(st));
  b.timer.copy_gbps = 2.0 * static_cast<double>(bytes) / (t.median_ms * 1e-3) / 1e9;
  ceilings["copy"] = {{"what", "cudaMemcpyAsync device-to-device, 1 GiB, own stream"},
                  {"bytes_formula", "2 * 2^30 (read + write)"},
                  {"median_ms", t.median_ms},
                  {"reps", t.reps},
                  {"gbps", b.timer.copy_gbps}};
  std::printf("ceiling: raw D2D copy of 1 GiB: %.3f ms -> %.0f GB/s (read + write)\n", t.median_ms, b.timer.copy_gbps);
  // barbell's own copy of the same bytes, for comparison
  Bench::Fns f;
  Case c;
  c.name = "copy_1GiB(barbell copy_)";
  c.dtype = DType::F32;
  c.shape = "[268435456]";
  c.timed = "dst.copy_(src), contiguous f32, 1 GiB";
  c.bytes_formula = "2 * 2^30";
  c.bytes = 2.0 * static_cast<double>(bytes);
  b.run(c, [&] {
    return Bench::Fns{[&](int) {
                        bb::NoGradGuard ng;
                        dst.copy_(src.view({n}));
                      },
                      nullptr};
  });
}

// The raw cuBLASLt bf16 8192^3 matmul, then barbell's matmul on the same operands.
void ceiling_matmul(Bench& b, json& ceilings) {
  const int64_t M = 8192;
  Tensor A = b.rnd({M, M}, DType::BF16), B = b.rnd({M, M}, DType::BF16);
  Tensor Cm = bb::empty({M, M}, {DType::BF16, gpu()});
  Tensor ws = bb::empty({int64_t{32} << 18}, {DType::F32, gpu()});  // 32 MiB
  const size_t ws_bytes = size_t{32} << 20;
  bb::cuda::synchronize();
  cublasLtHandle_t lt;
  LT_OK(cublasLtCreate(&lt));
  cublasLtMatmulDesc_t op;
  LT_OK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t tn = CUBLAS_OP_N;
  LT_OK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tn, sizeof tn));
  LT_OK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tn, sizeof tn));
  cublasLtMatrixLayout_t la, lb, lc;
  LT_OK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, M, M, M));
  LT_OK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, M, M, M));
  LT_OK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, M, M, M));
  cublasLtMatmulPreference_t pref;
  LT_OK(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t wsb = ws_bytes;
  LT_OK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb));
  cublasLtMatmulHeuristicResult_t heur[8];
  int found = 0;
  LT_OK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 8, heur, &found));
  if (found == 0) throw bb::CudaError("bench_kernels: cuBLASLt found no algorithm for bf16 8192^3");
  cudaStream_t st;
  CUDA_OK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const float alpha = 1.0f, beta = 0.0f;
  // Column-major C = A B with barbell's buffers: the same data and FLOPs as barbell's
  // row-major product below.
  auto t = time_raw(st, 5, b.quick ? 10 : 40, [&] {
    LT_OK(cublasLtMatmul(lt, op, &alpha, A.data_ptr(), la, B.data_ptr(), lb, &beta, Cm.data_ptr(), lc, Cm.data_ptr(),
                         lc, &heur[0].algo, ws.data_ptr(), ws_bytes, st));
  });
  CUDA_OK(cudaStreamSynchronize(st));
  CUDA_OK(cudaStreamDestroy(st));
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(op);
  cublasLtDestroy(lt);
  double flops = 2.0 * static_cast<double>(M) * M * M;
  b.cublaslt_tflops = flops / (t.median_ms * 1e-3) / 1e12;
  ceilings["cublaslt_bf16_8192"] = {{"what", "cublasLtMatmul bf16 in/out, fp32 compute, 8192^3, heuristic's first algo, "
                                         "32 MiB workspace, own stream"},
                                {"flops_formula", "2 * 8192^3"},
                                {"median_ms", t.median_ms},
                                {"reps", t.reps},
                                {"heuristic_results", found},
                                {"tflops", b.cublaslt_tflops}};
  std::printf("ceiling: raw cuBLASLt bf16 8192^3: %.3f ms -> %.1f TFLOP/s\n", t.median_ms, b.cublaslt_tflops);
  Case c;
  c.name = "matmul_8192^3";
  c.dtype = DType::BF16;
  c.shape = "[8192,8192]@[8192,8192]";
  c.timed = "bb::matmul(A, B) (NoGrad), same operands as the raw cuBLASLt ceiling";
  c.flops_formula = "2 * 8192^3";
  c.flops = flops;
  c.ceiling = "cublaslt";
  b.run(c, [&] {
    return Bench::Fns{[&](int) {
                        bb::NoGradGuard ng;
                        Tensor y = bb::matmul(A, B);
                      },
                      nullptr};
  });
}

// ---- the kernels ------------------------------------------------------------------

constexpr int64_t kC = 768, kV = 50257, kHeads = 12, kT = 1024;

std::string sh(const Shape& s) { return bb::shape_str(s); }

// Forward ops, timed under NoGradGuard over rotated inputs.
void elementwise(Bench& b, int64_t N, DType dt) {
  const double s = static_cast<double>(dsize(dt)), n = static_cast<double>(N * kC);
  Shape x{N, kC};
  {
    Case c{"copy(clone)", dt, N, sh(x), "x.clone()", "2*N*C*s", "", 2 * n * s};
    b.run(c, [&] {
      auto xs = b.rnd_copies(b.copies_for(n * s), x, dt);
      return Bench::Fns{[xs](int i) {
                          bb::NoGradGuard ng;
                          Tensor y = xs[static_cast<size_t>(i) % xs.size()].clone();
                        },
                        nullptr};
    });
  }
  {
    DType to = dt == DType::F32 ? DType::BF16 : DType::F32;
    Case c{std::string("cast_to_") + bb::dtype_name(to), dt, N, sh(x), "x.to(dtype)", "N*C*(s_in+s_out)", "",
           n * static_cast<double>(dsize(dt) + dsize(to))};
    b.run(c, [&] {
      auto xs = b.rnd_copies(b.copies_for(n * s), x, dt);
      return Bench::Fns{[xs, to](int i) {
                          bb::NoGradGuard ng;
                          Tensor y = xs[static_cast<size_t>(i) % xs.size()].to(to);
                        },
                        nullptr};
    });
  }
  for (int op = 0; op < 3; ++op) {
    const char* names[] = {"add", "mul", "add_bias(broadcast)"};
    Case c{names[op], dt, N, op == 2 ? sh(x) + "+[768]" : sh(x) + "," + sh(x), "", op == 2 ? "2*N*C*s + C*s" : "3*N*C*s",
           "", op == 2 ? 2 * n * s + kC * s : 3 * n * s};
    c.timed = op == 0 ? "bb::add(a, b)" : op == 1 ? "bb::mul(a, b)" : "bb::add(x, bias[C])";
    b.run(c, [&] {
      int k = b.copies_for(2 * n * s);
      auto as = b.rnd_copies(k, x, dt);
      auto bs = op == 2 ? b.rnd_copies(k, {kC}, dt) : b.rnd_copies(k, x, dt);
      return Bench::Fns{[as, bs, op](int i) {
                          bb::NoGradGuard ng;
                          size_t j = static_cast<size_t>(i) % as.size();
                          Tensor y = op == 1 ? bb::mul(as[j], bs[j]) : bb::add(as[j], bs[j]);
                        },
                        nullptr};
    });
  }
}

// A forward op and its backward node. `fwd` builds the output from the inputs with grad
// on; the backward case calls out.grad_fn()->apply(dy).
struct FwdBwd {
  std::string name, shape;
  double fwd_bytes, bwd_bytes;
  std::string fwd_formula, bwd_formula;
  bool fwd_sync = false, bwd_sync = false;
};

void fwd_bwd(Bench& b, int64_t N, DType dt, const FwdBwd& k, double input_bytes,
             const std::function<std::vector<Tensor>()>& make_inputs,  // one copy of the inputs (leaves)
             const std::function<Tensor(const std::vector<Tensor>&)>& fwd,
             const std::function<Tensor(const Tensor& out)>& make_dy) {
  Case cf{k.name + "_fwd", dt, N, k.shape, "forward op under NoGradGuard", k.fwd_formula, "", k.fwd_bytes};
  cf.host_sync = k.fwd_sync;
  b.run(cf, [&] {
    std::vector<std::vector<Tensor>> sets;
    for (int i = 0, n = b.copies_for(input_bytes); i < n; ++i) sets.push_back(make_inputs());
    return Bench::Fns{[sets, fwd](int i) {
                        bb::NoGradGuard ng;
                        Tensor y = fwd(sets[static_cast<size_t>(i) % sets.size()]);
                      },
                      nullptr};
  });
  Case cb{k.name + "_bwd", dt, N, k.shape, "", k.bwd_formula, "", k.bwd_bytes};
  cb.host_sync = k.bwd_sync;
  cb.timed = "out.grad_fn()->apply(dy): the op's backward function alone";
  b.run(cb, [&] {
    struct G {
      std::vector<Tensor> in;
      Tensor out, dy;
      std::shared_ptr<bb::autograd::Node> node;
    };
    auto graphs = std::make_shared<std::vector<G>>();
    for (int i = 0, n = b.copies_for(input_bytes); i < n; ++i) {
      G g;
      g.in = make_inputs();
      g.out = fwd(g.in);
      g.node = g.out.grad_fn();
      if (!g.node) throw bb::ValueError(k.name + ": the forward recorded no backward node");
      g.dy = make_dy(g.out);
      graphs->push_back(g);
    }
    std::printf("  (%s backward node: %s)\n", k.name.c_str(), graphs->front().node->name().c_str());
    return Bench::Fns{[graphs](int i) {
                        bb::NoGradGuard ng;
                        G& g = (*graphs)[static_cast<size_t>(i) % graphs->size()];
                        std::vector<Tensor> grads = g.node->apply(g.dy);
                      },
                      nullptr};
  });
}

void layers(Bench& b, int64_t N, DType dt) {
  const double s = static_cast<double>(dsize(dt)), Nd = static_cast<double>(N), C = kC;
  // GELU on the MLP's hidden activations [N, 4C]
  {
    double n = Nd * 4 * C;
    FwdBwd k{"gelu", sh({N, 4 * kC}), 2 * n * s, 3 * n * s, "2*N*4C*s", "3*N*4C*s (read dy, x; write dx)"};
    fwd_bwd(
        b, N, dt, k, n * s,
        [&] {
          Tensor x = b.rnd({N, 4 * kC}, dt);
          x.requires_grad_(true);
          return std::vector<Tensor>{x};
        },
        [](const std::vector<Tensor>& in) { return bb::gelu(in[0], bb::GeluApprox::Tanh); },
        [&](const Tensor& out) { return b.rnd(out.shape(), dt); });
  }
  // LayerNorm [N, C]
  {
    double n = Nd * C;
    FwdBwd k{"layer_norm", sh({N, kC}), 2 * n * s + 2 * C * s + 8 * Nd, 3 * n * s + 8 * Nd + 3 * C * s,
             "2*N*C*s + 2*C*s (w, b) + 8*N (mean, rstd f32)",
             "3*N*C*s (read dy, x; write dx) + 8*N (mean, rstd) + 3*C*s (w; dw, db)"};
    fwd_bwd(
        b, N, dt, k, n * s,
        [&] {
          Tensor x = b.rnd({N, kC}, dt, 1.0, 0.5), w = b.rnd({1, kC}, dt, 0.2, 1.0).view({kC}),
                 bias = b.rnd({1, kC}, dt).view({kC});
          x.requires_grad_(true);
          w.requires_grad_(true);
          bias.requires_grad_(true);
          return std::vector<Tensor>{x, w, bias};
        },
        [](const std::vector<Tensor>& in) { return bb::layer_norm(in[0], in[1], in[2]); },
        [&](const Tensor& out) { return b.rnd(out.shape(), dt); });
  }
  // Softmax over attention rows [N * heads, T=1024]
  {
    int64_t R = N * kHeads;
    double n = static_cast<double>(R) * kT;
    FwdBwd k{"softmax", sh({R, kT}), 2 * n * s, 3 * n * s, "2*R*T*s (R = N*12 heads, T = 1024)",
             "3*R*T*s (read dy, y; write dx)"};
    fwd_bwd(
        b, N, dt, k, n * s,
        [&] {
          Tensor x = b.rnd({R, kT}, dt, 2.0);
          x.requires_grad_(true);
          return std::vector<Tensor>{x};
        },
        [](const std::vector<Tensor>& in) { return bb::softmax(in[0], -1); },
        [&](const Tensor& out) { return b.rnd(out.shape(), dt); });
  }
  // Fused cross-entropy over the vocabulary [N, V]
  {
    double n = Nd * kV;
    FwdBwd k{"cross_entropy", sh({N, kV}), n * s + 12 * Nd, 2 * n * s + 12 * Nd,
             "N*V*s + 8*N (targets i64) + 4*N (lse f32)", "2*N*V*s (read logits; write dlogits) + 12*N"};
    k.fwd_sync = true;  // the op checks the targets' range (a read-back)
    fwd_bwd(
        b, N, dt, k, n * s,
        [&] {
          Tensor logits = b.rnd({N, kV}, dt, 2.0);
          logits.requires_grad_(true);
          Tensor t = bb::randint(0, kV, {N}, {DType::I64}, &b.gen).to(gpu());
          return std::vector<Tensor>{logits, t};
        },
        [](const std::vector<Tensor>& in) { return bb::cross_entropy(in[0], in[1]); },
        [](const Tensor& out) { return bb::ones(out.shape(), {out.dtype(), gpu()}); });
  }
  // Token embedding: ids [N] into wte [V, C]
  {
    FwdBwd k{"embedding", "ids[" + std::to_string(N) + "] wte" + sh({kV, kC}), 2 * Nd * C * s + 8 * Nd,
             Nd * C * s + static_cast<double>(kV) * C * s + 8 * Nd, "2*N*C*s + 8*N (ids)",
             "N*C*s (read dy) + V*C*s (write dW) + 8*N (ids)"};
    k.fwd_sync = true;  // the op checks the ids' range (a read-back)
    fwd_bwd(
        b, N, dt, k, Nd * C * s,
        [&] {
          Tensor w = b.rnd({kV, kC}, dt, 0.02);
          w.requires_grad_(true);
          Tensor ids = bb::randint(0, kV, {N}, {DType::I64}, &b.gen).to(gpu());
          return std::vector<Tensor>{ids, w};
        },
        [](const std::vector<Tensor>& in) { return bb::embedding(in[0], in[1]); },
        [&](const Tensor& out) { return b.rnd(out.shape(), dt); });
  }
}

Case gemm_case(const std::string& name, DType dt, int64_t N, const std::string& shape, const std::string& timed,
               const std::string& flops_formula, double flops) {
  Case c;
  c.name = name;
  c.dtype = dt;
  c.tokens = N;
  c.shape = shape;
  c.timed = timed;
  c.flops_formula = flops_formula;
  c.flops = flops;
  c.ceiling = dt == DType::BF16 ? "cublaslt" : "";
  return c;
}

// Linear layers of GPT-2 at N tokens: forward (bias fused), the two backward GEMMs alone,
// and the whole linear backward node (dX + dW + db).
void matmuls(Bench& b, int64_t N, DType dt) {
  struct L {
    const char* name;
    int64_t in, out;
    bool bias;
  };
  const L ls[] = {{"qkv", kC, 3 * kC, true},
                  {"attn_proj", kC, kC, true},
                  {"fc", kC, 4 * kC, true},
                  {"fc2", 4 * kC, kC, true},
                  {"lm_head", kC, kV, false}};
  const double s = static_cast<double>(dsize(dt));
  for (const L& l : ls) {
    const double fl = 2.0 * static_cast<double>(N) * static_cast<double>(l.in) * static_cast<double>(l.out);
    const double in_bytes = static_cast<double>(N * l.in + l.in * l.out) * s;
    std::string base = std::string("linear_") + l.name;
    {
      Case c = gemm_case(base + "_fwd", dt, N, "x" + sh({N, l.in}) + " W" + sh({l.out, l.in}),
                         "bb::linear(x, W, b) (NoGrad, bias fused)", "2*N*in*out", fl);
      b.run(c, [&] {
        std::vector<std::vector<Tensor>> sets;
        for (int i = 0, n = b.copies_for(in_bytes); i < n; ++i)
          sets.push_back({b.rnd({N, l.in}, dt), b.rnd({l.out, l.in}, dt, 0.05),
                          l.bias ? b.rnd({1, l.out}, dt).view({l.out}) : Tensor()});
        return Bench::Fns{[sets](int i) {
                            bb::NoGradGuard ng;
                            auto& t = sets[static_cast<size_t>(i) % sets.size()];
                            Tensor y = bb::linear(t[0], t[1], t[2]);
                          },
                          nullptr};
      });
    }
    {
      Case c = gemm_case(base + "_bwd_dX", dt, N, "dY" + sh({N, l.out}) + "@W" + sh({l.out, l.in}),
                         "bb::matmul(dY, W) (NoGrad)", "2*N*out*in", fl);
      b.run(c, [&] {
        std::vector<std::vector<Tensor>> sets;
        for (int i = 0, n = b.copies_for(static_cast<double>(N * l.out + l.in * l.out) * s); i < n; ++i)
          sets.push_back({b.rnd({N, l.out}, dt), b.rnd({l.out, l.in}, dt, 0.05)});
        return Bench::Fns{[sets](int i) {
                            bb::NoGradGuard ng;
                            auto& t = sets[static_cast<size_t>(i) % sets.size()];
                            Tensor y = bb::matmul(t[0], t[1]);
                          },
                          nullptr};
      });
    }
    {
      Case c = gemm_case(base + "_bwd_dW", dt, N, "dY^T" + sh({l.out, N}) + "@X" + sh({N, l.in}),
                         "bb::matmul(dY.t(), X) (NoGrad; dY.t() a transposed view)", "2*N*in*out", fl);
      b.run(c, [&] {
        std::vector<std::vector<Tensor>> sets;
        for (int i = 0, n = b.copies_for(static_cast<double>(N * l.out + N * l.in) * s); i < n; ++i)
          sets.push_back({b.rnd({N, l.out}, dt), b.rnd({N, l.in}, dt)});
        return Bench::Fns{[sets](int i) {
                            bb::NoGradGuard ng;
                            auto& t = sets[static_cast<size_t>(i) % sets.size()];
                            Tensor y = bb::matmul(t[0].t(), t[1]);
                          },
                          nullptr};
      });
    }
    {
      Case c = gemm_case(base + "_bwd", dt, N, "x" + sh({N, l.in}) + " W" + sh({l.out, l.in}),
                         "linear's backward node apply(dY): dX, dW (and db)", "4*N*in*out", 2 * fl);
      b.run(c, [&] {
        struct G {
          Tensor x, w, bias, y, dy;
          std::shared_ptr<bb::autograd::Node> node;
        };
        auto gs = std::make_shared<std::vector<G>>();
        for (int i = 0, n = b.copies_for(in_bytes); i < n; ++i) {
          G g;
          g.x = b.rnd({N, l.in}, dt);
          g.w = b.rnd({l.out, l.in}, dt, 0.05);
          g.x.requires_grad_(true);
          g.w.requires_grad_(true);
          if (l.bias) {
            g.bias = b.rnd({1, l.out}, dt).view({l.out});
            g.bias.requires_grad_(true);
          }
          g.y = bb::linear(g.x, g.w, g.bias);
          g.node = g.y.grad_fn();
          if (!g.node) throw bb::ValueError("linear recorded no backward node");
          g.dy = b.rnd({N, l.out}, dt);
          gs->push_back(g);
        }
        return Bench::Fns{[gs](int i) {
                            bb::NoGradGuard ng;
                            G& g = (*gs)[static_cast<size_t>(i) % gs->size()];
                            auto grads = g.node->apply(g.dy);
                          },
                          nullptr};
      });
    }
  }
}

// GPT-2 124M's parameter shapes (wte tied to the LM head).
std::vector<Shape> gpt2_shapes() {
  std::vector<Shape> v = {{kV, kC}, {1024, kC}};
  for (int l = 0; l < 12; ++l) {
    for (Shape s : std::vector<Shape>{{kC}, {kC}, {3 * kC, kC}, {3 * kC}, {kC, kC}, {kC}, {kC}, {kC},
                                      {4 * kC, kC}, {4 * kC}, {kC, 4 * kC}, {kC}})
      v.push_back(s);
  }
  v.push_back({kC});
  v.push_back({kC});
  return v;
}

void optimizer(Bench& b) {
  // On the emulated device a small parameter set of awkward sizes stands for GPT-2's.
  auto shapes = b.emulated ? std::vector<Shape>{{1000, 64}, {64}, {64, 192}, {192}, {333}, {7, 33}} : gpt2_shapes();
  double P = 0;
  for (auto& s : shapes) P += static_cast<double>(bb::shape_numel(s));
  std::printf("  %s parameter set: %zu tensors, %.0f elements\n", b.emulated ? "emulation-size" : "GPT-2 124M",
              shapes.size(), P);
  auto as2d = [](const Shape& s) { return s.size() == 1 ? Shape{1, s[0]} : s; };
  for (int mode = 0; mode < 2; ++mode) {  // 0: f32 params; 1: bf16 params + f32 master
    DType pdt = mode ? DType::BF16 : DType::F32;
    Case c{mode ? "adamw_multi_step(master)" : "adamw_multi_step", pdt, 0,
           std::to_string(shapes.size()) + " tensors, " + fmt::format("{:.1f}M", P / 1e6),
           "bb::adamw_multi_step_ over all GPT-2 124M parameters (one call)",
           mode ? "P*(2 g read + 4+4 master r/w + 8+8 m,v r/w + 2 p write) = 28*P"
                : "P*(4+4 p r/w + 4 g read + 8+8 m,v r/w) = 28*P",
           "", 28 * P};
    b.run(c, [&] {
      struct S {
        std::vector<bb::AdamWTensors> items;
        int64_t step = 0;
      };
      auto st = std::make_shared<S>();
      for (auto& s : shapes) {
        bb::AdamWTensors t;
        Tensor p32 = b.rnd(as2d(s), DType::F32, 0.02).view(s);
        t.param = mode ? p32.to(DType::BF16) : p32;
        t.master = mode ? p32 : Tensor();
        t.grad = b.rnd(as2d(s), pdt, 0.01).view(s);
        t.exp_avg = bb::zeros(s, {DType::F32, gpu()});
        t.exp_avg_sq = bb::zeros(s, {DType::F32, gpu()});
        t.weight_decay = s.size() >= 2 ? 0.1 : 0.0;
        st->items.push_back(t);
      }
      return Bench::Fns{[st](int) {
                          bb::NoGradGuard ng;
                          ++st->step;
                          for (auto& t : st->items) t.step = st->step;
                          bb::adamw_multi_step_(st->items, 6e-4, 0.9, 0.95, 1e-8);
                        },
                        nullptr};
    });
    Case q{"sum_of_squares(grads)", pdt, 0, c.shape, "bb::sum_of_squares(all 124M gradients) -> host double", "P*s",
           "", P * static_cast<double>(dsize(pdt))};
    q.host_sync = true;
    b.run(q, [&] {
      auto gs = std::make_shared<std::vector<Tensor>>();
      for (auto& s : shapes) gs->push_back(b.rnd(as2d(s), pdt, 0.01).view(s));
      return Bench::Fns{[gs](int) {
                          bb::NoGradGuard ng;
                          volatile double v = bb::sum_of_squares(*gs);
                          (void)v;
                        },
                        nullptr};
    });
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string json_path, only = ".*", commit;
  CLI::App app{"bench_kernels: GPU time of barbell's CUDA kernels at GPT-2 124M training sizes, against measured "
               "copy-bandwidth and cuBLASLt ceilings"};
  app.add_flag("--quick", quick, "16384 tokens, bf16 only, few repetitions (a smoke run)");
  app.add_option("--json", json_path, "Write the results as JSON to this file");
  app.add_option("--only", only, "Run only the cases whose \"name dtype tokens\" matches this regex");
  app.add_option("--commit", commit, "The commit being measured (recorded in the JSON)");
  int64_t emu_tokens = 32;
  app.add_option("--tokens", emu_tokens, "On the emulated device: the token count of the cases (default 32)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  CLI11_PARSE(app, argc, argv);

  if (bb::cuda::device_count() == 0) {
    std::printf("bench_kernels: skipped: no CUDA device\n");
    return 77;
  }
  Bench b;
  b.quick = quick;
  b.emulated = bb::cuda::is_emulated();
  try {
    b.only = std::regex(only);
  } catch (const std::regex_error& e) {
    std::fprintf(stderr, "bench_kernels: bad --only regex '%s': %s\n", only.c_str(), e.what());
    return 2;
  }
  auto t_start = Clock::now();
  json out, ceilings = json::object();
  try {
    b.init();
    auto p = bb::cuda::properties(0);
    int drv = 0, rt = 0;
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    out = {{"benchmark", "bench_kernels"},
           {"date", utc_now()},
           {"commit", commit},
           {"quick", quick},
           {"device",
            {{"name", p.name},
             {"sm", fmt::format("{}{}", p.major, p.minor)},
             {"multiprocessors", p.multiprocessors},
             {"memory_bytes", p.total_memory},
             {"l2_bytes", p.l2_cache}}},
           {"cuda_driver_version", drv},
           {"cuda_runtime_version", rt},
           {"cublaslt_version", cublasLtGetVersion()},
           {"method",
            "median of per-call GPU times (CUDA events) after warm-up; each call is preceded by a device copy that "
            "covers the host's enqueue time and flushes L2; inputs rotated over copies totalling > 2x L2; backward "
            "= the op's autograd node apply(dy)"}};
    std::printf("bench_kernels on %s (sm_%d%d, %d SMs, L2 %zu MiB)%s\n", p.name.c_str(), p.major, p.minor,
                p.multiprocessors, p.l2_cache >> 20, b.emulated ? " EMULATED: traffic counts, not timings" : quick ? " QUICK" : "");
    if (b.emulated) {
      out["method"] = "the emulated device (emu/): each case run once, the emulator's memory-traffic counters";
    } else {
      ceiling_copy(b, ceilings);
      ceiling_matmul(b, ceilings);
    }
  } catch (const std::exception& e) {
    std::printf("bench_kernels: ceilings failed: %s\n", e.what());
    ceilings["error"] = e.what();
  }
  out["ceilings"] = ceilings;
  out["complete"] = false;
  b.json_path = json_path;
  b.meta = out;
  if (b.emulated) Bench::emu_header();
  else Bench::header();
  std::vector<int64_t> tokens = b.emulated ? std::vector<int64_t>{emu_tokens}
                                : quick    ? std::vector<int64_t>{16384}
                                           : std::vector<int64_t>{16384, 65536};
  std::vector<DType> dtypes = quick ? std::vector<DType>{DType::BF16} : std::vector<DType>{DType::BF16, DType::F32};
  for (DType dt : dtypes) {
    for (int64_t N : tokens) {
      elementwise(b, N, dt);
      layers(b, N, dt);
    }
  }
  for (DType dt : dtypes)
    for (int64_t N : tokens)
      if (dt == DType::BF16 || N == 16384 || b.emulated) matmuls(b, N, dt);  // f32 GEMMs (no TF32) at 16k tokens only
  optimizer(b);
  out["results"] = b.results;
  out["complete"] = true;
  double secs = std::chrono::duration<double>(Clock::now() - t_start).count();
  out["wall_seconds"] = secs;
  int errors = 0;
  for (auto& r : b.results)
    if (r.contains("error")) ++errors;
  if (b.emulated)
    std::printf("\nbench_kernels: %zu cases, %d errors, %.0f s on the emulated device (traffic counts, not timings)\n",
                b.results.size(), errors, secs);
  else
    std::printf("\nbench_kernels: %zu cases, %d errors, %.0f s; ceilings: copy %.0f GB/s, cuBLASLt bf16 %.1f TFLOP/s\n",
                b.results.size(), errors, secs, b.timer.copy_gbps, b.cublaslt_tflops);
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << out.dump(2) << "\n";
    if (!f.good()) {
      std::fprintf(stderr, "bench_kernels: cannot write %s\n", json_path.c_str());
      return 1;
    }
    std::printf("wrote %s\n", json_path.c_str());
  }
  return errors ? 1 : 0;
}

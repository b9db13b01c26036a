// barbell-ddp-scaling: GPT training on the N ranks it was launched with (mpirun -np N), for
// scaling measurements. Interleaves compute-only steps (no communication) with
// data-parallel steps, times the gradient all-reduce alone and sweeps all_reduce's bus
// bandwidth, then writes one JSON record; scripts/ddp_scaling.sh combines N = 1, 2, 4.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <numeric>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "barbell/barbell.hpp"
#include "barbell/cuda/cuda.hpp"

namespace bb = barbell;
namespace dist = barbell::dist;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  std::string preset = "small";
  int64_t batch = 8, seq_len = 64, steps = 16, warmup = 3;
  int threads = 1;
  double first_bucket_mb = 1.0, bucket_mb = 25.0;
  bool zero = false;
  std::string json_out;
  int sweep_reps = 10;
  std::string device = "cpu";
};

double secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Every rank's value, on every rank.
std::vector<double> gather(dist::ProcessGroup& pg, double x) {
  bb::Tensor all = bb::zeros({pg.size()}, {bb::kF64, pg.device()});
  pg.all_gather(all, bb::from_vector<double>({x}, {1}).to(pg.device()))->wait();
  return all.to_vector<double>();
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

double loadavg() {
  double l = NAN;
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &l) != 1) l = NAN;
    std::fclose(f);
  }
  return l;
}

// AdamW keeps two f32 moments per parameter; ZeroAdamW reports its own shard.
double unsharded_state_bytes(const bb::optim::Optimizer& o) {
  if (auto* z = dynamic_cast<const dist::ZeroAdamW*>(&o))
    return static_cast<double>(z->unsharded_state_bytes());
  double n = 0;
  for (auto& [name, p] : o.named_params()) n += static_cast<double>(p.numel());
  return 8 * n;
}
double optimizer_state_bytes(const bb::optim::Optimizer& o) {
  if (auto* z = dynamic_cast<const dist::ZeroAdamW*>(&o)) return static_cast<double>(z->state_bytes());
  return unsharded_state_bytes(o);
}

int run(const Args& a) {
  bb::set_num_threads(a.threads);
  // CPU ranks use MPI; --device cuda uses NCCL, rank r on GPU local_rank % device_count.
  dist::InitOptions io;
  io.backend = bb::Device::parse(a.device).is_cuda() ? dist::Backend::NCCL : dist::Backend::MPI;
  auto pg = dist::init(io);
  const bb::Device dev = io.backend == dist::Backend::NCCL ? pg->device() : bb::Device::parse(a.device);
  const int W = pg->size(), R = pg->rank();
  const bool lead = R == 0;

  // Data: a synthetic token stream with structure to learn (a noisy repeating pattern).
  auto tokens = std::make_shared<std::vector<int32_t>>(1 << 20);
  {
    bb::Generator g(2024);
    for (size_t i = 0; i < tokens->size(); ++i)
      (*tokens)[i] = g.next_u32() % 8 == 0 ? static_cast<int32_t>(g.next_u32() % 256)
                                           : static_cast<int32_t>((i * 7 + i / 64) % 256);
  }
  bb::io::DataLoader loader(tokens, a.batch, a.seq_len, 1337, R, W);

  bb::nn::GPTConfig cfg = bb::nn::GPTConfig::preset(a.preset);
  cfg.vocab_size = 256;
  cfg.block_size = a.seq_len;
  bb::nn::GPT model(cfg);
  model.to(dev);
  dist::DataParallelOptions dpo;
  dpo.first_bucket_mb = a.first_bucket_mb;
  dpo.bucket_mb = a.bucket_mb;
  dist::DataParallel ddp(model, pg, dpo);
  bb::optim::AdamWOptions ao;
  ao.lr = 1e-3;
  std::unique_ptr<bb::optim::Optimizer> opt_dist;
  if (a.zero) {
    dist::ZeroAdamWOptions zo;
    static_cast<bb::optim::AdamWOptions&>(zo) = ao;
    opt_dist = std::make_unique<dist::ZeroAdamW>(model.named_parameters(), pg, zo);
  } else {
    opt_dist = std::make_unique<bb::optim::AdamW>(model.named_parameters(), ao);
  }
  bb::optim::AdamW opt_local(model.named_parameters(), ao);

  if (lead) {
    fmt::print(
        "ddp_scaling: {} rank(s) ({}), GPT {} ({:.2f}M parameters), batch {} x {} tokens per rank, {} "
        "thread(s) "
        "per rank, {}\n",
        W, dist::backend_name(pg->backend()), a.preset, model.num_parameters() / 1e6, a.batch, a.seq_len,
        a.threads, a.zero ? "ZeRO-1 AdamW (reduce-scatter + all-gather)" : "DataParallel + AdamW");
    fmt::print("buckets: {} ({} MB first, {} MB after)\n", ddp.buckets().size(), a.first_bucket_mb,
               a.bucket_mb);
    std::fflush(stdout);
  }

  // Compute-only steps (local, no communication) interleaved with data-parallel steps, so
  // both see the same machine load. The replicas drift apart in the local steps, which
  // does not matter for timing.
  struct Times {
    std::vector<double> step, fwd, bwd, sync, opt;
  } local, dp;
  double losses = 0;
  const double load0 = loadavg();
  pg->barrier();
  for (int64_t s = 0; s < a.warmup + a.steps; ++s) {
    for (int mode = 0; mode < 2; ++mode) {
      const bool use_dp = mode == 1;
      // Start every step together, so finish() waits for communication, not for a rank
      // that the previous (unsynchronised) step left behind.
      pg->barrier();
      auto t0 = Clock::now();
      auto [x, y] = loader.next();
      bb::Tensor loss = model.loss(x.to(dev), y.to(dev));
      auto t1 = Clock::now();
      if (use_dp) {
        if (a.zero) {
          auto g = ddp.no_sync();  // ZeroAdamW reduce-scatters the gradients itself
          loss.backward();
        } else {
          loss.backward();
        }
      } else {
        auto g = ddp.no_sync();
        loss.backward();
      }
      auto t2 = Clock::now();
      if (use_dp && !a.zero) ddp.finish();
      auto t3 = Clock::now();
      (use_dp ? *opt_dist : static_cast<bb::optim::Optimizer&>(opt_local)).step();
      opt_local.zero_grad();
      if (dev.is_cuda()) bb::cuda::synchronize(dev.index());  // host clocks time GPU work only after it
      auto t4 = Clock::now();
      if (s == a.warmup - 1 && use_dp) ddp.reset_stats();
      if (s < a.warmup) continue;
      Times& t = use_dp ? dp : local;
      t.step.push_back(secs(t0, t4));
      t.fwd.push_back(secs(t0, t1));
      t.bwd.push_back(secs(t1, t2));
      t.sync.push_back(secs(t2, t3));
      t.opt.push_back(secs(t3, t4));
      if (use_dp) losses = loss.item<double>();
    }
  }
  const dist::DataParallelStats st = ddp.stats();

  // The gradient all-reduce alone: the same buckets, no compute.
  std::vector<bb::Tensor> bufs;
  double grad_bytes = 0;
  for (auto& b : ddp.buckets()) {
    bufs.push_back(bb::ones({b.numel}, {b.dtype, pg->device()}));
    grad_bytes += static_cast<double>(b.bytes());
  }
  std::vector<double> comm_alone;
  for (int rep = 0; rep < a.sweep_reps; ++rep) {
    pg->barrier();
    auto t0 = Clock::now();
    std::vector<dist::WorkPtr> ws;
    for (auto& b : bufs) {
      if (a.zero) {
        bb::Tensor shard =
            bb::zeros({dist::ProcessGroup::chunk_numel(b.numel(), W)}, {b.dtype(), pg->device()});
        ws.push_back(pg->reduce_scatter(shard, b, dist::ReduceOp::Avg));
        ws.back()->wait();
        ws.push_back(pg->all_gather(b, shard));
      } else {
        ws.push_back(pg->all_reduce(b, dist::ReduceOp::Avg));
      }
    }
    for (auto& w : ws) w->wait();
    comm_alone.push_back(secs(t0, Clock::now()));
  }

  // all_reduce bus bandwidth by message size (nccl-tests' definition: busbw = algbw * 2(N-1)/N).
  json sweep = json::array();
  if (W > 1) {
    for (int64_t bytes = 4096; bytes <= (int64_t(64) << 20); bytes *= 4) {
      bb::Tensor t = bb::ones({bytes / 4}, {bb::kF32, pg->device()});
      std::vector<double> ts;
      for (int rep = 0; rep < a.sweep_reps; ++rep) {
        pg->barrier();
        auto t0 = Clock::now();
        pg->all_reduce(t, dist::ReduceOp::Sum)->wait();
        ts.push_back(secs(t0, Clock::now()));
      }
      double tm = gather(*pg, median(ts))[0];
      double algbw = static_cast<double>(bytes) / tm;
      sweep.push_back({{"bytes", bytes},
                       {"time_s", tm},
                       {"algbw_GBps", algbw / 1e9},
                       {"busbw_GBps", algbw * 2.0 * (W - 1) / W / 1e9}});
    }
  }

  // Per-rank medians, then the job's view: a synchronous step lasts as long as its slowest rank.
  const double tok = static_cast<double>(a.batch * a.seq_len);
  auto per_rank = [&](const std::vector<double>& v) { return gather(*pg, median(v)); };
  const auto local_step = per_rank(local.step), dp_step = per_rank(dp.step);
  const auto dp_sync = per_rank(dp.sync), dp_bwd = per_rank(dp.bwd), local_bwd = per_rank(local.bwd);
  const auto comm_alone_r = gather(*pg, median(comm_alone));
  const double n_steps = std::max<double>(1.0, static_cast<double>(st.steps));
  const auto finish_wait = gather(*pg, st.finish_wait_s / n_steps),
             inflight = gather(*pg, st.comm_s / n_steps), pack = gather(*pg, st.pack_s / n_steps);
  auto mean = [](const std::vector<double>& v) {
    return std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  };
  auto maxv = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
  const double load1 = loadavg();

  if (!lead) return 0;
  const double step_local = maxv(local_step), step_dp = maxv(dp_step), t_comm = maxv(comm_alone_r);
  const double exposed = std::max(0.0, step_dp - step_local);
  json per_rank_json = json::array();
  for (int r = 0; r < W; ++r)
    per_rank_json.push_back({{"rank", r},
                             {"step_s_local", local_step[static_cast<size_t>(r)]},
                             {"step_s_ddp", dp_step[static_cast<size_t>(r)]},
                             {"tokens_per_s_ddp", tok / dp_step[static_cast<size_t>(r)]},
                             {"tokens_per_s_local", tok / local_step[static_cast<size_t>(r)]}});
  char date[32];
  std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  json out = {
      {"benchmark", "ddp_scaling"},
      {"date", date},
      {"world", W},
      {"backend", dist::backend_name(pg->backend())},
      {"optimizer", a.zero ? "zero1_adamw" : "adamw"},
      {"model",
       {{"preset", a.preset},
        {"parameters", model.num_parameters()},
        {"n_layer", cfg.n_layer},
        {"n_embd", cfg.n_embd},
        {"vocab_size", cfg.vocab_size}}},
      {"batch_per_rank", a.batch},
      {"seq_len", a.seq_len},
      {"threads_per_rank", a.threads},
      {"steps_timed", a.steps},
      {"machine",
       {{"cpu", cpu_model()},
        {"online_cpus", std::thread::hardware_concurrency()},
        {"loadavg_1min_before", load0},
        {"loadavg_1min_after", load1}}},
      {"per_rank", per_rank_json},
      {"step_s_local", step_local},
      {"step_s_ddp", step_dp},
      {"backward_s_local", mean(local_bwd)},
      {"backward_s_ddp", mean(dp_bwd)},
      {"finish_s_ddp", mean(dp_sync)},
      {"tokens_per_s_per_rank", tok / step_dp},
      {"tokens_per_s_total", W * tok / step_dp},
      {"tokens_per_s_total_local", W * tok / step_local},
      {"comm",
       {{"grad_bytes_per_step", grad_bytes},
        {"buckets", ddp.buckets().size()},
        {"buckets_started_in_backward_per_step",
         static_cast<double>(st.buckets_started_in_backward) / n_steps},
        {"allreduce_alone_s", t_comm},
        {"finish_wait_s", mean(finish_wait)},
        {"in_flight_s", mean(inflight)},
        {"pack_s", mean(pack)},
        {"exposed_s", exposed},
        // Of the time the gradient all-reduce takes alone, the part finish() did not wait for
        // (from the library's timers; the wait also absorbs ranks arriving late).
        {"hidden_fraction",
         W > 1 && t_comm > 0 ? json(std::clamp(1.0 - mean(finish_wait) / t_comm, 0.0, 1.0)) : json(nullptr)},
        // The same from step times: the part that did not lengthen the step (noisy when
        // the communication is small against the step's run-to-run variation).
        {"hidden_fraction_from_step_times",
         W > 1 && t_comm > 0 ? json(std::clamp(1.0 - exposed / t_comm, 0.0, 1.0)) : json(nullptr)}}},
      {"allreduce_sweep", sweep},
      {"optimizer_state_bytes_per_rank", optimizer_state_bytes(*opt_dist)},
      {"optimizer_state_bytes_unsharded", unsharded_state_bytes(*opt_dist)},
      {"final_loss", losses},
  };
  fmt::print(
      "step: {:.1f} ms compute-only, {:.1f} ms data-parallel (slowest rank); tokens/s: {:.0f} per rank, "
      "{:.0f} "
      "total\n",
      1e3 * step_local, 1e3 * step_dp, tok / step_dp, W * tok / step_dp);
  fmt::print(
      "communication: {:.2f} MB of gradients per step in {} buckets; alone it takes {:.2f} ms; the step grew "
      "by {:.2f} ms; finish() waited {:.2f} ms\n",
      grad_bytes / 1e6, ddp.buckets().size(), 1e3 * t_comm, 1e3 * exposed, 1e3 * mean(finish_wait));
  fmt::print("optimizer state per rank: {:.2f} MB ({:.2f} MB unsharded{})\n",
             optimizer_state_bytes(*opt_dist) / 1e6, unsharded_state_bytes(*opt_dist) / 1e6,
             a.zero ? ", ZeRO-1" : "");
  for (auto& s : sweep)
    fmt::print("  all_reduce {:>9} B: {:8.3f} ms, bus bandwidth {:.2f} GB/s\n", s["bytes"].get<int64_t>(),
               1e3 * s["time_s"].get<double>(), s["busbw_GBps"].get<double>());
  if (!a.json_out.empty()) {
    std::ofstream f(a.json_out);
    f << out.dump(2) << "\n";
    BB_CHECK(f.good(), bb::IOError, "ddp_scaling: cannot write {}", a.json_out);
    fmt::print("wrote {}\n", a.json_out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{
      "barbell-ddp-scaling: data-parallel GPT training speed on the ranks it was launched with "
      "(mpirun -np N barbell-ddp-scaling)"};
  app.add_option("--preset", a.preset, "Model preset: tiny, small, medium")->capture_default_str();
  app.add_option("--batch", a.batch, "Sequences per rank per step")->capture_default_str();
  app.add_option("--seq-len", a.seq_len, "Tokens per sequence")->capture_default_str();
  app.add_option("--steps", a.steps, "Timed steps of each kind")->capture_default_str();
  app.add_option("--warmup", a.warmup, "Untimed steps first")->capture_default_str();
  app.add_option("--threads", a.threads, "CPU threads per rank")->capture_default_str();
  app.add_option("--first-bucket-mb", a.first_bucket_mb, "First gradient bucket (MiB)")
      ->capture_default_str();
  app.add_option("--bucket-mb", a.bucket_mb, "Other gradient buckets (MiB)")->capture_default_str();
  app.add_flag("--zero", a.zero, "ZeRO-1 AdamW instead of DataParallel + AdamW");
  app.add_option("--sweep-reps", a.sweep_reps, "Repetitions per all_reduce size")->capture_default_str();
  app.add_option("--json", a.json_out, "Write the results here (rank 0)");
  app.add_option("--device", a.device, "cpu (MPI ranks) or cuda (NCCL, one GPU per rank)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    return run(a);
  } catch (const std::exception& e) {
    // Under mpirun the other ranks may be inside a collective: end them all.
    barbell::dist::abort_job(fmt::format("barbell-ddp-scaling: error: {}", e.what()));
    return 1;
  }
}

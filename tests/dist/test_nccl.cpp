// The NCCL process group on a GPU; exits 77 (skipped) in a build without NCCL or on a
// machine without a GPU. Modes (argv[1]):
//   one      one process, a one-rank NCCL group from dist::init()
//   threads  init_threads over the visible GPUs (one thread each)
//   mpi      under mpirun: init_mpi with Backend::NCCL; several ranks may share one GPU
//            (this test gives each rank its own NCCL_HOSTID, which NCCL allows for tests)
//   env      under mpirun only as a launcher: RANK / WORLD_SIZE / LOCAL_RANK and a rendezvous file
// Each checks every collective against values computed on the CPU. With a second argument
// "ddp", "one" and "mpi" instead check DataParallel against a full-batch CPU reference
// (exit 77 when the CUDA backend does not run the GPT's ops yet).
#include <unistd.h>

#include <cstdlib>
#include <mutex>

#include "barbell/cuda/cuda.hpp"
#include "dist_check.hpp"

namespace bb = barbell;
namespace dist = barbell::dist;
using disttest::max_diff;

namespace {

double val(int r, int64_t i) { return static_cast<double>(((r + 1) * (i % 7 + 1) + 3 * r) % 23) - 9.0; }

bb::Tensor rank_tensor(int r, int64_t n, bb::DType d, bb::Device dev) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = val(r, i);
  return bb::from_vector<double>(v, {n}, {d}).to(dev);
}

std::mutex g_check_mu;  // DCHECK from several threads (mode "threads")

void collectives(dist::ProcessGroup& pg) {
  const int W = pg.size(), r = pg.rank();
  const bb::Device dev = pg.device();
  for (bb::DType d : {bb::kF32, bb::kBF16, bb::kF16, bb::kF64, bb::kI32, bb::kI64}) {
    for (int64_t n : {int64_t(1), int64_t(7), int64_t(4099), int64_t(65536)}) {
      const double tol = d == bb::kBF16 ? 0.07 : d == bb::kF16 ? 0.005 : 1e-5;
      for (dist::ReduceOp op : {dist::ReduceOp::Sum, dist::ReduceOp::Avg, dist::ReduceOp::Max}) {
        if (op == dist::ReduceOp::Avg && !bb::is_floating(d)) continue;
        bb::Tensor t = rank_tensor(r, n, d, dev);
        pg.all_reduce(t, op)->wait();
        std::vector<double> want(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
          double s = 0, m = -1e300;
          for (int q = 0; q < W; ++q) s += val(q, i), m = std::max(m, val(q, i));
          want[static_cast<size_t>(i)] = op == dist::ReduceOp::Sum   ? s
                                         : op == dist::ReduceOp::Avg ? s / W
                                                                     : m;
        }
        double diff = max_diff(t, bb::from_vector<double>(want, {n}, {bb::kF64}));
        std::lock_guard<std::mutex> l(g_check_mu);
        DCHECK(diff <= tol, "nccl all_reduce {} {} n={}: {}", dist::reduce_op_name(op), bb::dtype_name(d), n,
               diff);
      }
      {
        bb::Tensor t = rank_tensor(r, n, d, dev);
        pg.broadcast(t, W - 1)->wait();
        std::lock_guard<std::mutex> l(g_check_mu);
        DCHECK(max_diff(t, rank_tensor(W - 1, n, bb::kF64, bb::Device::cpu())) == 0, "nccl broadcast {} n={}",
               bb::dtype_name(d), n);
      }
      {
        const int64_t c = dist::ProcessGroup::chunk_numel(n, W);
        auto [b, e] = dist::ProcessGroup::chunk_range(n, W, r);
        bb::Tensor out = bb::full({c}, 77.0, {d, dev});
        pg.reduce_scatter(out, rank_tensor(r, n, d, dev), dist::ReduceOp::Sum)->wait();
        std::vector<double> want(static_cast<size_t>(c), 0.0);
        for (int64_t i = b; i < e; ++i)
          for (int q = 0; q < W; ++q) want[static_cast<size_t>(i - b)] += val(q, i);
        std::lock_guard<std::mutex> l(g_check_mu);
        DCHECK(max_diff(out, bb::from_vector<double>(want, {c}, {bb::kF64})) <= tol,
               "nccl reduce_scatter {} n={}", bb::dtype_name(d), n);
      }
      {
        const int64_t c = dist::ProcessGroup::chunk_numel(n, W);
        auto [b, e] = dist::ProcessGroup::chunk_range(n, W, r);
        std::vector<double> mine(static_cast<size_t>(c), 55.0);
        for (int64_t i = b; i < e; ++i) mine[static_cast<size_t>(i - b)] = val(0, i);
        bb::Tensor out = bb::full({n}, 77.0, {d, dev});
        pg.all_gather(out, bb::from_vector<double>(mine, {c}, {d}).to(dev))->wait();
        std::lock_guard<std::mutex> l(g_check_mu);
        DCHECK(max_diff(out, rank_tensor(0, n, bb::kF64, bb::Device::cpu())) == 0, "nccl all_gather {} n={}",
               bb::dtype_name(d), n);
      }
    }
  }
  pg.barrier();
}

// DataParallel on the GPU vs a CPU model trained on the whole batch. Returns false when
// the CUDA backend cannot run the model yet (the caller then reports a skip).
bool ddp_equivalence(const dist::ProcessGroupPtr& pg) {
  const int W = pg->size(), r = pg->rank();
  bb::nn::GPTConfig c = bb::nn::GPTConfig::tiny();
  c.n_layer = 1;
  c.n_embd = 32;
  c.n_head = 2;
  c.vocab_size = bb::io::AdditionTask::kVocab;
  c.block_size = 16;
  c.seed = 7;
  bb::nn::GPT ref(c), model(c);
  model.to(pg->device());
  bb::optim::AdamWOptions o;
  o.lr = 3e-3;
  bb::optim::AdamW ref_opt(ref.named_parameters(), o);
  try {
    dist::DataParallelOptions dpo;
    dpo.first_bucket_mb = 0.004;
    dpo.bucket_mb = 0.02;
    dist::DataParallel ddp(model, pg, dpo);
    bb::optim::AdamW opt(model.named_parameters(), o);
    bb::io::AdditionTask task(2);
    const int64_t B = 4;
    for (int s = 0; s < 4; ++s) {
      bb::Generator gen(1000 + static_cast<uint64_t>(s));
      auto [x, y] = task.batch(W * B, gen);
      ref.loss(x, y).backward();
      model.loss(x.narrow(0, r * B, B).to(pg->device()), y.narrow(0, r * B, B).to(pg->device())).backward();
      ddp.finish();
      opt.step();
      ref_opt.step();
      opt.zero_grad();
      ref_opt.zero_grad();
    }
  } catch (const bb::DeviceError& e) {
    if (std::string(e.what()).find("does not implement") != std::string::npos) {
      std::printf("SKIP DataParallel on NCCL: %s\n", e.what());
      return false;
    }
    throw;
  }
  double worst = 0;
  auto pa = model.parameters(), pb = ref.parameters();
  for (size_t i = 0; i < pa.size(); ++i) worst = std::max(worst, max_diff(pa[i], pb[i]));
  DCHECK(worst < 1e-4, "DataParallel on NCCL differs from the full-batch CPU run by {}", worst);
  if (r == 0) std::printf("DataParallel on NCCL: max parameter difference %.2e\n", worst);
  return true;
}

int mpi_rank_from_env() {
  const char* v = std::getenv("OMPI_COMM_WORLD_RANK");
  return v ? std::atoi(v) : 0;
}

// setenv(to, $from, 1); false (with a message) when $from is not set.
bool copy_env(const char* to, const char* from) {
  const char* v = std::getenv(from);
  if (!v) {
    std::printf("FAILED: mode env runs under Open MPI's mpirun, but %s is not set\n", from);
    return false;
  }
  setenv(to, v, 1);
  return true;
}

// The same on every rank of this mpirun job and different for the next one, so a
// rendezvous file left by an earlier run is never taken for this run's: the launcher's
// job id, else the parent's pid (the launcher's daemon, shared by the ranks on this node;
// no clock in it, which ranks could read on either side of a tick).
std::string run_id() {
  for (const char* name : {"PMIX_NAMESPACE", "OMPI_MCA_orte_ess_jobid", "OMPI_MCA_ess_base_jobid"})
    if (const char* v = std::getenv(name); v && *v) return v;
  return fmt::format("ppid{}", static_cast<long>(::getppid()));
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "one";
  const bool ddp = argc > 2 && std::string(argv[2]) == "ddp";
  if (!BARBELL_HAVE_NCCL) {
    std::printf("SKIP: this build of barbell has no NCCL backend\n");
    return 77;
  }
  if (bb::cuda::device_count() == 0) {
    std::printf("SKIP: no GPU\n");
    return 77;
  }
  bb::set_num_threads(1);
  dist::InitOptions o;
  o.backend = dist::Backend::NCCL;
  o.timeout_s = 60;
  // Several ranks on one GPU (tests only): NCCL refuses two ranks of one host on one GPU,
  // so each rank claims a host of its own and they talk over sockets on loopback.
  if (mode == "mpi" || mode == "env") {
    const int r = mpi_rank_from_env();
    setenv("NCCL_HOSTID", fmt::format("barbell-test-rank-{}", r).c_str(), 1);
    setenv("NCCL_SOCKET_IFNAME", "lo", 0);
    o.gpu = r % bb::cuda::device_count();
  }
  if (mode == "env") {
    if (!copy_env("RANK", "OMPI_COMM_WORLD_RANK") || !copy_env("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE") ||
        !copy_env("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"))
      return 1;
    o.rendezvous_file = std::string(BARBELL_TEST_TMPDIR) + "/nccl_rendezvous";
    setenv("BARBELL_RUN_ID", run_id().c_str(), 0);  // the same tag on every rank, new for each run
  }
  if (mode == "threads") {
    auto groups = dist::init_threads({}, o);
    dist::run_threads(groups, [](dist::ProcessGroup& pg) { collectives(pg); });
    std::printf("%s: init_threads over %zu GPU(s), %d failure(s)\n",
                disttest::g_failures ? "FAILED" : "PASSED", groups.size(), disttest::g_failures);
    return disttest::g_failures ? 1 : 0;
  }
  dist::ProcessGroupPtr pg = mode == "one"   ? dist::init(o)
                             : mode == "mpi" ? dist::init_mpi(o)
                                             : dist::init_env(o);
  bool ddp_ran = true;
  int rc = disttest::run(*pg, [&] {
    DCHECK(pg->backend() == dist::Backend::NCCL, "backend {}", dist::backend_name(pg->backend()));
    if (ddp)
      ddp_ran = ddp_equivalence(pg);
    else
      collectives(*pg);
  });
  return rc != 0 ? rc : ddp_ran ? 0 : 77;
}

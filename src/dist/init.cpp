// How ranks start: under an MPI launcher, from RANK / WORLD_SIZE / LOCAL_RANK with a
// rendezvous file (rank 0 publishes the NCCL unique id atomically), or one thread per GPU
// in one process; and abort_job for a program's error path.
#include "barbell/dist/init.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "barbell/cuda/cuda.hpp"
#include "dist/backends.hpp"

namespace barbell::dist {

namespace {

double timeout_of(const InitOptions& o) { return o.timeout_s > 0 ? o.timeout_s : default_timeout_s(); }

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int env_int(const char* name, int fallback) {
  const char* v = env(name);
  if (!v) return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  BB_CHECK(end != v && *end == '\0' && x >= 0 && x < (1L << 30), ValueError,
           "dist: environment variable {}='{}' is not a non-negative integer", name, v);
  return static_cast<int>(x);
}

int pick_gpu(const InitOptions& o, int local_rank) {
  if (o.gpu >= 0) return o.gpu;
  int n = cuda::device_count();
  BB_CHECK(n > 0, DeviceError, "dist: the NCCL backend needs a GPU, but no CUDA device is visible");
  return local_rank % n;
}

std::string hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

bool unhex(const std::string& h, std::string* out) {
  if (h.size() % 2) return false;
  out->clear();
  auto val = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
  for (size_t i = 0; i < h.size(); i += 2) {
    int a = val(h[i]), b = val(h[i + 1]);
    if (a < 0 || b < 0) return false;
    out->push_back(static_cast<char>(a * 16 + b));
  }
  return true;
}

// When this library was loaded: the process's start, for a program linked against it.
const std::time_t g_start_time = std::time(nullptr);

// The job's id, so a rendezvous file left by another job is ignored. Under Slurm the step
// is part of it: the steps of one allocation share SLURM_JOB_ID.
std::string run_tag() {
  std::string tag;
  for (const char* name : {"BARBELL_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"})
    if (const char* v = env(name)) {
      tag = v;
      break;
    }
  if (const char* step = env("SLURM_STEP_ID")) tag += fmt::format(".step{}", step);
  return tag;
}

// A rendezvous file last written before (this process's start - timeout - kClockSlackS)
// is a leftover (a job killed before rank 0 removed it), whatever its tag says: rank 0
// publishes the file and then waits at most `timeout` for the other ranks in NCCL's init,
// removing it when that ends, so a rank that started later than that cannot be waiting for
// it. The slack covers clock differences between this node and the file system's server.
// (A file from a run whose tag is empty or reused and that ended within that window is
// still accepted: give each job a distinct BARBELL_RUN_ID.)
constexpr double kClockSlackS = 30;

bool too_old(const std::string& path, double timeout_s) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return false;  // gone: the read fails anyway
  return static_cast<double>(st.st_mtime) < static_cast<double>(g_start_time) - timeout_s - kClockSlackS;
}

// Rank 0's side of the rendezvous: the file appears whole or not at all (rename).
void publish(const std::string& path, const std::string& id, int world) {
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  {
    std::ofstream f(tmp, std::ios::trunc);
    BB_CHECK(f.good(), IOError, "init_env: cannot write the rendezvous file {}", tmp);
    f << "barbell-rendezvous 1\n"
      << "tag " << run_tag() << "\n"
      << "world " << world << "\n"
      << "id " << hex(id) << "\n";
    f.flush();
    BB_CHECK(f.good(), IOError, "init_env: writing {} failed", tmp);
  }
  BB_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, IOError, "init_env: cannot rename {} to {}", tmp,
           path);
}

// The id in the file, if the file is there, complete, and from this job.
bool try_read(const std::string& path, int world, double timeout_s, std::string* id) {
  if (too_old(path, timeout_s)) return false;
  std::ifstream f(path);
  if (!f.good()) return false;
  std::string magic, ver, k1, tag, k2, k3, idhex;
  int w = -1;
  f >> magic >> ver >> k1;
  std::getline(f, tag);
  if (!tag.empty() && tag[0] == ' ') tag.erase(0, 1);
  f >> k2 >> w >> k3 >> idhex;
  if (!f || magic != "barbell-rendezvous" || k1 != "tag" || k2 != "world" || k3 != "id") return false;
  if (tag != run_tag() || w != world) return false;  // a stale file from another job
  return unhex(idhex, id) && id->size() == detail::nccl_unique_id_size();
}

}  // namespace

bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "PMI_RANK"})
    if (env(name)) return true;
  return false;
}

int local_rank_from_env() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK"})
    if (env(name)) return env_int(name, 0);
  return 0;
}

ProcessGroupPtr init_mpi(const InitOptions& opts) {
  const double timeout = timeout_of(opts);
  if (opts.backend == Backend::Local) return single_process_group();
  if (opts.backend == Backend::MPI) return detail::make_mpi_group(timeout);
  // NCCL under mpirun: MPI only carries the unique id.
  BB_CHECK(detail::nccl_built(), NcclError,
           "init_mpi: Backend::NCCL asked for, but this build of barbell has no NCCL backend "
           "(configure with -DBARBELL_CUDA=ON -DBARBELL_NCCL=ON)");
  // MPI stays up while the NCCL group lives, so abort_job can still end the job with MPI_Abort.
  std::shared_ptr<void> mpi = detail::mpi_keepalive();
  detail::MpiWorld w = detail::mpi_world();
  const int gpu = pick_gpu(opts, w.local_rank);
  std::string id(detail::nccl_unique_id_size(), '\0');
  if (w.rank == 0) id = detail::nccl_unique_id();
  detail::mpi_broadcast_bytes(id.data(), id.size(), 0, timeout);
  return detail::make_nccl_group(id, w.rank, w.size, gpu, timeout, mpi);
}

ProcessGroupPtr init_env(const InitOptions& opts) {
  const double timeout = timeout_of(opts);
  const char* r = env("RANK");
  const char* ws = env("WORLD_SIZE");
  BB_CHECK(r && ws, ValueError,
           "init_env: RANK and WORLD_SIZE must be set (LOCAL_RANK too on a multi-GPU node)");
  const int rank = env_int("RANK", 0), world = env_int("WORLD_SIZE", 1), local = env_int("LOCAL_RANK", 0);
  BB_CHECK(world >= 1 && rank < world, ValueError, "init_env: RANK={} is outside WORLD_SIZE={}", rank, world);
  if (world == 1 && opts.backend != Backend::NCCL) return single_process_group();
  BB_CHECK(opts.backend == Backend::NCCL, ValueError,
           "init_env: ranks started from environment variables need Backend::NCCL; CPU ranks (Backend::MPI) "
           "must be "
           "started by mpirun (init_mpi)");
  BB_CHECK(detail::nccl_built(), NcclError,
           "init_env: this build of barbell has no NCCL backend (configure with -DBARBELL_CUDA=ON "
           "-DBARBELL_NCCL=ON)");
  std::string path = opts.rendezvous_file;
  if (path.empty() && env("BARBELL_RENDEZVOUS")) path = env("BARBELL_RENDEZVOUS");
  BB_CHECK(!path.empty(), ValueError,
           "init_env: no rendezvous file: set InitOptions::rendezvous_file or $BARBELL_RENDEZVOUS to a path "
           "on a file "
           "system every rank sees");
  const int gpu = pick_gpu(opts, local);
  std::string id;
  // Rank 0 removes the file when it leaves, failing or not, so no later job finds it:
  // once its communicator is up, every rank has read the id; if the init failed, the id
  // is of no use to anyone.
  struct RemoveOnExit {
    const std::string* path = nullptr;
    ~RemoveOnExit() {
      if (path) std::remove(path->c_str());
    }
  } remove_file;
  if (rank == 0) {
    id = detail::nccl_unique_id();
    publish(path, id, world);
    remove_file.path = &path;  // only once the file there is ours
  } else {
    using Clock = std::chrono::steady_clock;
    const auto deadline =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout));
    while (!try_read(path, world, timeout, &id)) {
      BB_CHECK(Clock::now() < deadline, Error,
               "init_env: rank {} of {} waited {:g} s for rank 0 to write the rendezvous file {} (with tag "
               "'{}', world size {}, and written no more than {:g} s before this process started); is "
               "rank 0 running, and is the path on a shared file system?",
               rank, world, timeout, path, run_tag(), world, timeout + kClockSlackS);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  return detail::make_nccl_group(id, rank, world, gpu, timeout);
}

std::vector<ProcessGroupPtr> init_threads(std::vector<int> gpus, const InitOptions& opts) {
  BB_CHECK(detail::nccl_built(), NcclError,
           "init_threads: this build of barbell has no NCCL backend (configure with -DBARBELL_CUDA=ON "
           "-DBARBELL_NCCL=ON)");
  if (gpus.empty())
    for (int i = 0; i < cuda::device_count(); ++i) gpus.push_back(i);
  BB_CHECK(!gpus.empty(), DeviceError, "init_threads: no CUDA device is visible");
  return detail::make_nccl_groups(gpus, timeout_of(opts));
}

void run_threads(const std::vector<ProcessGroupPtr>& groups, const std::function<void(ProcessGroup&)>& fn) {
  std::mutex mu;
  std::exception_ptr first;
  std::vector<std::thread> threads;
  for (size_t i = 0; i < groups.size(); ++i) {
    threads.emplace_back([&, i] {
      try {
        detail::set_group_device(*groups[i]);
        fn(*groups[i]);
      } catch (...) {
        {
          std::lock_guard<std::mutex> l(mu);
          if (!first) first = std::current_exception();
        }
        // The other threads may be inside collectives that now cannot finish.
        for (auto& g : groups) detail::nccl_abort(*g);
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

ProcessGroupPtr init(const InitOptions& opts) {
  if (launched_by_mpi()) return init_mpi(opts);
  if (env("RANK") && env("WORLD_SIZE")) return init_env(opts);
  if (opts.backend == Backend::NCCL) {
    // One process alone: a one-rank NCCL group on its GPU, so the program's path is the
    // same as with several ranks. A build without NCCL (or the emulated device's) gets the
    // local one-rank group on that GPU: one rank needs no communication.
    if (!detail::nccl_built()) {
      BB_CHECK(cuda::device_count() > 0, NcclError,
               "init: Backend::NCCL asked for, but this build of barbell has no NCCL backend (configure with "
               "-DBARBELL_CUDA=ON -DBARBELL_NCCL=ON) and no CUDA device is visible");
      return single_process_group(Device::cuda(pick_gpu(opts, 0)));
    }
    return detail::make_nccl_group(detail::nccl_unique_id(), 0, 1, pick_gpu(opts, 0), timeout_of(opts));
  }
  return single_process_group();
}

ProcessGroupPtr single_process_group(Device device) { return detail::make_local_group(device); }

void abort_job(const std::string& message, int code) {
  int rank = -1;
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "RANK"})
    if (env(name)) {
      rank = std::atoi(env(name));
      break;
    }
  if (rank >= 0)
    std::fprintf(stderr, "[rank %d] %s; aborting the job\n", rank, message.c_str());
  else
    std::fprintf(stderr, "%s; aborting the job\n", message.c_str());
  std::fflush(stderr);
  std::fflush(stdout);
  detail::nccl_abort_all();
  detail::mpi_abort(code);  // does not return when MPI is running
}

}  // namespace barbell::dist

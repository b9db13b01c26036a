// CPU threading: barbell's own thread pool behind cpu::parallel_for, its default size,
// and OpenBLAS held at one thread (the pool splits matmuls itself, see src/cpu/matmul.cpp).
//
// Why not OpenMP: libgomp's idle threads spin for a long while (its wait policy is read
// once, when it loads), which on a machine with few or shared cores steals the CPU from
// the thread that has work; the only remedy was to re-execute the program with
// OMP_WAIT_POLICY=passive. This pool spins briefly, then sleeps on a futex, and hands
// out chunks dynamically, so a worker the OS has descheduled holds up one chunk at most.
#include "barbell/core/parallel.hpp"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "barbell/core/error.hpp"
#include "cpu/parallel.hpp"

extern "C" void openblas_set_num_threads(int);
// libgomp's, present when OpenBLAS is its OpenMP build (weak: absent with the pthread build).
extern "C" void omp_set_num_threads(int) __attribute__((weak));

namespace barbell {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

void futex_wait(std::atomic<uint32_t>* addr, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}
void futex_wake_all(std::atomic<uint32_t>* addr) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
}

// A positive integer from the environment, or 0.
int env_threads(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return 0;
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);  // OMP_NUM_THREADS may be a list ("4,2"): its first entry
  return end != v && n >= 1 && n <= 4096 ? static_cast<int>(n) : 0;
}

// CPUs of a cgroup CPU quota (v2 cpu.max, v1 cfs quota/period), rounded up; 0 when none.
int cgroup_cpus() {
  long quota = -1, period = 0;
  {
    std::ifstream f("/sys/fs/cgroup/cpu.max");
    std::string q;
    if (f >> q >> period && q != "max") quota = std::atol(q.c_str());
  }
  if (quota < 0) {
    std::ifstream fq("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), fp("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
    if (!(fq >> quota && fp >> period)) quota = -1;
  }
  if (quota <= 0 || period <= 0) return 0;
  return static_cast<int>((quota + period - 1) / period);
}

// One thread per physical core this process may run on: a shared machine's other users
// get the rest, and SMT siblings add little to matmul-bound work.
int default_threads() {
  for (const char* name : {"BARBELL_NUM_THREADS", "OMP_NUM_THREADS"})
    if (int n = env_threads(name)) return n;
  cpu_set_t set;
  CPU_ZERO(&set);
  int n = 0;
  std::set<std::pair<std::string, std::string>> cores;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (!CPU_ISSET(c, &set)) continue;
      ++n;
      std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(c) + "/topology/";
      std::ifstream pk(base + "physical_package_id"), co(base + "core_id");
      std::string p, k;
      if (pk >> p && co >> k) cores.emplace(p, k);
    }
  }
  if (n == 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (!cores.empty() && static_cast<int>(cores.size()) < n) n = static_cast<int>(cores.size());
  if (int q = cgroup_cpus(); q > 0 && q < n) n = q;
  return std::max(1, n);
}

// How long an idle worker spins before it sleeps: long enough to catch the next loop of
// a training step without a wake-up, short enough not to take a shared core for long.
std::chrono::microseconds spin_time() {
  const char* v = std::getenv("BARBELL_SPIN_US");
  long us = v ? std::atol(v) : 50;
  return std::chrono::microseconds(us < 0 ? 0 : us);
}

struct Job {
  cpu::detail::ChunkFn fn;
  void* ctx;
  int64_t n, chunk, nchunks;
  std::atomic<int64_t> next{0}, done{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
};

thread_local bool t_in_pool = false;  // a pool worker, or the caller while it runs a job

void work_on(Job* j) {
  for (;;) {
    int64_t c = j->next.fetch_add(1);
    if (c >= j->nchunks) return;
    const int64_t b = c * j->chunk, e = std::min(j->n, b + j->chunk);
    if (!j->failed.load(std::memory_order_relaxed)) {
      try {
        j->fn(j->ctx, b, e);
      } catch (...) {
        bool expected = false;
        if (j->failed.compare_exchange_strong(expected, true)) j->error = std::current_exception();
      }
    }
    j->done.fetch_add(1);
  }
}

class Pool {
 public:
  static Pool& get() {
    static Pool* p = new Pool();  // never destroyed: workers may outlive static destructors
    return *p;
  }

  int threads() const { return threads_.load(std::memory_order_relaxed); }

  void set_threads(int n) {
    std::lock_guard<std::mutex> g(run_mu_);
    if (n == threads_.load()) return;
    stop_workers();
    threads_.store(n);
  }

  // Runs the job on the pool, or on the calling thread alone when the pool is busy
  // with another thread's job.
  void run(Job& j) {
    std::unique_lock<std::mutex> g(run_mu_, std::try_to_lock);
    const int want = threads_.load() - 1;
    if (!g.owns_lock() || want < 1) {
      t_in_pool = true;
      work_on(&j);
      t_in_pool = false;
      return;
    }
    if (static_cast<int>(workers_->size()) != want) start_workers(want);
    job_.store(&j);
    epoch_.fetch_add(1);
    if (sleepers_.load() > 0) futex_wake_all(&epoch_);
    t_in_pool = true;
    work_on(&j);
    t_in_pool = false;
    // Chunks other threads claimed and still run: spin a little, then give up the CPU
    // (on a busy machine the late thread may be waiting for this very core).
    for (int i = 0; j.done.load() < j.nchunks; ++i) {
      if (i < 2000)
        cpu_relax();
      else
        sched_yield();
    }
    job_.store(nullptr);
    for (int i = 0; busy_.load() > 0; ++i) {  // workers that looked at the job and are leaving it
      if (i < 2000)
        cpu_relax();
      else
        sched_yield();
    }
  }

  // After fork() the child has this thread only: forget the parent's workers.
  void forget_workers_after_fork() {
    new (&run_mu_) std::mutex();
    (void)workers_.release();  // leaked on purpose: their threads do not exist here
    workers_ = std::make_unique<std::vector<std::thread>>();
    job_.store(nullptr);
    busy_.store(0);
    sleepers_.store(0);
    stop_.store(false);
  }

 private:
  Pool()
      : threads_(default_threads()),
        spin_(spin_time()),
        workers_(std::make_unique<std::vector<std::thread>>()) {
    // barbell's loops and matmul splits are the parallelism; OpenBLAS's own threads
    // would compete with them for the same cores.
    openblas_set_num_threads(1);
    pthread_atfork(nullptr, nullptr, [] { Pool::get().forget_workers_after_fork(); });
  }

  void start_workers(int n) {
    stop_workers();
    // The epoch now: a worker that starts late must still see the bumps after it (the
    // next job's, or stop_workers').
    const uint32_t e = epoch_.load();
    for (int i = 0; i < n; ++i) workers_->emplace_back([this, e] { worker(e); });
  }

  void stop_workers() {
    if (workers_->empty()) return;
    stop_.store(true);
    epoch_.fetch_add(1);
    futex_wake_all(&epoch_);
    for (auto& t : *workers_) t.join();
    workers_->clear();
    stop_.store(false);
  }

  void worker(uint32_t seen) {
    t_in_pool = true;
    // The OpenMP build of OpenBLAS sizes its team from the calling thread's OpenMP
    // thread count, whatever openblas_set_num_threads said: one, on the pool's threads.
    // (openblas_set_num_threads(1) already set it for the thread that made the pool.)
    if (omp_set_num_threads != nullptr) omp_set_num_threads(1);
    for (;;) {
      // Spin first: the next loop of a step usually comes within microseconds.
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; epoch_.load(std::memory_order_acquire) == seen; ++i) {
        cpu_relax();
        if ((i & 63) == 63 && std::chrono::steady_clock::now() - t0 > spin_) {
          sleepers_.fetch_add(1);
          while (epoch_.load() == seen) futex_wait(&epoch_, seen);
          sleepers_.fetch_sub(1);
          break;
        }
      }
      seen = epoch_.load();
      if (stop_.load()) return;
      busy_.fetch_add(1);
      if (Job* j = job_.load()) work_on(j);
      busy_.fetch_sub(1);
    }
  }

  std::atomic<int> threads_;
  std::chrono::microseconds spin_;
  std::mutex run_mu_;  // one job at a time; held while the job runs
  std::unique_ptr<std::vector<std::thread>> workers_;
  std::atomic<uint32_t> epoch_{0};  // bumped per job (and to stop): the futex word
  std::atomic<Job*> job_{nullptr};
  std::atomic<int> busy_{0}, sleepers_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace

namespace cpu::detail {

int pool_threads() {
  const int n = Pool::get().threads();  // the first call also sets OpenBLAS to one thread
  return t_in_pool ? 1 : n;
}

void run_chunks(int64_t n, int64_t chunk, ChunkFn fn, void* ctx) {
  Job j;
  j.fn = fn;
  j.ctx = ctx;
  j.n = n;
  j.chunk = chunk;
  j.nchunks = (n + chunk - 1) / chunk;
  Pool::get().run(j);
  if (j.error) std::rethrow_exception(j.error);
}

}  // namespace cpu::detail

int num_threads() { return Pool::get().threads(); }

void set_num_threads(int n) {
  BB_CHECK(n >= 1, ValueError, "set_num_threads: need at least 1 thread, got {}", n);
  Pool::get().set_threads(n);
}

}  // namespace barbell

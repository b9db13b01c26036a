// The emulator's own shared state and interfaces between its parts: options, faults,
// the emulated threads/warps/launches (exec.cpp), device memory and the access checks
// (memory.cpp), and the stream operations (runtime.cpp). Not for kernels or barbell.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "emu.hpp"
#include "emu_api.hpp"

namespace barbell::emu {

// ---- options (environment, read once) ---------------------------------------------------
enum class Order { forward, reverse, random };
struct Options {
  Order order = Order::forward;           // BARBELL_EMU_ORDER=forward|reverse|random: threads and blocks
  uint64_t seed = 1;                      // BARBELL_EMU_SEED (random order)
  bool check_order = false;               // BARBELL_EMU_CHECK_ORDER=1: every launch runs twice (forward,
                                          // then reversed) and the two results must be identical
  bool uninit_is_error = true;            // BARBELL_EMU_UNINIT=warn: reads of unwritten memory only warn
  bool eager = false;                     // BARBELL_EMU_SYNC=1: run each operation when it is queued
  bool quiet = false;                     // BARBELL_EMU_QUIET=1: no fault reports on stderr
  int devices = 1;                        // BARBELL_EMU_DEVICES
  size_t arena_bytes = size_t(16) << 30;  // BARBELL_EMU_MEMORY_GB: device memory (all devices)
  size_t stack_bytes = 256 * 1024;        // per emulated thread
  bool race_check = true;                 // BARBELL_EMU_RACECHECK=0 (or BB_SIM_RACECHECK=0)
};
Options& options();

// ---- faults -------------------------------------------------------------------------------
// Throws Fault: the message is prefixed with where it happened (the running kernel, block
// and thread, or the running operation). `code` is the sticky error it becomes.
[[noreturn]] void fault(const std::string& what, cudaError_t code = cudaErrorLaunchFailure);
struct CodedFault : Fault {
  cudaError_t code;
  CodedFault(const std::string& m, cudaError_t c) : Fault(m), code(c) {}
};
std::string where();

// ---- the execution model (exec.cpp) -------------------------------------------------------
enum class TSt : uint8_t { runnable, warp_wait, block_wait, done };
enum class WOp : uint8_t { none, syncwarp, shfl, ballot, ldmatrix, ldmatrix_trans, mma_bf16, mma_f16 };

// One access of an emulated thread, kept for the traffic counters until its warp's next
// synchronisation point.
struct Acc {
  uintptr_t addr;
  uint32_t size;
  uint8_t write;
  uint8_t shared;
};

struct CpCopy {
  char* dst;
  unsigned char data[16];
};

struct ThreadCtx {
  ThreadView view{};  // first: t_view points here
  int tid = 0, warp = 0, lane = 0;
  uint32_t gtid = 0;  // linear thread index within the launch
  TSt st = TSt::runnable;
  // the warp collective it waits in, with its operands
  WOp op = WOp::none;
  unsigned mask = 0;
  uint64_t in = 0, out = 0;
  int arg = 0, width = 32;
  unsigned size = 0;
  Shfl kind = Shfl::Idx;
  bool pred = false;
  const void* addr = nullptr;
  uint32_t* r = nullptr;
  const uint32_t* a = nullptr;
  uint32_t b0 = 0, b1 = 0;
  float* d = nullptr;
  std::vector<Acc> log;
  std::vector<CpCopy> uncommitted;
  std::deque<std::vector<CpCopy>> committed;
  // the coroutine
  char* stack_lo = nullptr;
  size_t stack_size = 0;
  void* sp = nullptr;
  void* asan_fake = nullptr;
  int nocheck = 0;  // its t_nocheck while switched out
#ifdef BB_EMU_UCONTEXT
  void* uctx = nullptr;
#endif
};

struct WarpGroup {
  unsigned mask = 0, arrived = 0;
  WOp op = WOp::none;
};
struct WarpCtx {
  std::vector<WarpGroup> groups;  // collectives being gathered
  unsigned exists = 0;            // lanes that exist (a partial last warp has fewer)
  unsigned done = 0;              // lanes that exited
  // Memory ordering inside the warp: completed full-warp __syncwarp()s and barriers
  // (shuffles and votes exchange values but order no memory: CUDA C++ guide).
  uint64_t full_syncs = 0;
  uint64_t sync_epoch = ~0ull;  // the block barrier epoch of the last full __syncwarp
};

// Totals since the program started (the tests' sim::stats()).
struct Counters {
  uint64_t blocks = 0, switches = 0, block_syncs = 0, warp_syncs = 0, shfl = 0, mma = 0, ldmatrix = 0;
  uint64_t cp_async = 0, cp_async_zero_fill = 0, cp_async_dropped = 0;
};
Counters& counters();

// Per kernel (by launch expression and site), summed over launches.
struct KernelStats {
  std::string name;
  uint64_t launches = 0, blocks = 0, threads = 0;
  uint64_t g_requests = 0, g_sectors = 0, g_ideal_sectors = 0;
  uint64_t g_bytes_read = 0, g_bytes_written = 0;
  uint64_t g_unique_read_sectors = 0, g_unique_write_sectors = 0;
  uint64_t s_requests = 0, s_wavefronts = 0, s_ideal_wavefronts = 0;
  uint64_t atomics = 0, barriers = 0, warp_collectives = 0;
};

// The 16-byte granules of dynamic shared memory, for the cp.async / ldmatrix rules of
// the flash primitives (emu/flash_prims.hpp).
struct Granule16 {
  int32_t pending = -1;     // thread with a cp.async in flight to it
  int32_t writer = -1;      // thread whose cp.async landed last
  uint64_t land_epoch = 0;  // block barrier epoch at landing
  uint64_t land_wsync = 0;  // the writer's warp's full_syncs at landing
  uint64_t read_epoch = ~0ull;
  uint32_t read_warps = 0;
};

struct LaunchCtx {
  LaunchSite site{};
  dim3 grid, block;
  size_t smem = 0;
  const void* fn = nullptr;
  uint32_t op = 0;  // the stream operation this launch is
  int device = 0;
  int nthreads = 0, nwarps = 0;
  uint64_t nblocks = 0;
  const std::function<void()>* body = nullptr;  // sim::launch's body, or:
  Thunk thunk = nullptr;                        // the kernel's, with its argument block
  const unsigned char* params = nullptr;
  size_t param_bytes = 0;
  // the block being run
  uint3 bidx{};
  uint64_t block_linear = 0;
  uint32_t block_gen = 0;  // changes at every block: invalidates the shared-memory shadow
  uint16_t epoch = 0;      // completed __syncthreads of this block (wraps)
  uint64_t epoch_full = 0;
  std::vector<ThreadCtx> threads;
  std::vector<WarpCtx> warps;
  int block_arrived = 0, ndone = 0, barrier_count = 0;
  char* dsmem = nullptr;
  size_t dsmem_bytes = 0;
  std::vector<Granule16> gran;
  std::vector<char> shadow16;  // dynamic smem as of the last barrier (flash primitives)
  size_t static_smem = 0;      // bytes of the __shared__ variables this launch touched
  KernelStats* stats = nullptr;
  std::exception_ptr failure;
  bool replay = false;  // the second run of BARBELL_EMU_CHECK_ORDER
};

extern __thread ThreadView* t_view __attribute__((tls_model("initial-exec")));
extern __thread ThreadCtx* t_cur __attribute__((tls_model("initial-exec")));
extern __thread int t_nocheck __attribute__((tls_model("initial-exec")));
// The emulator's own code runs with the access checks off: an inline library function
// that kernel code also uses (std::string, std::vector) may be the instrumented copy the
// linker kept, and its accesses are not the kernel's. Every entry point that kernel code
// calls holds one of these; each emulated thread keeps its own count across switches.
struct NoCheck {
  NoCheck() { ++t_nocheck; }
  ~NoCheck() { --t_nocheck; }
  NoCheck(const NoCheck&) = delete;
  NoCheck& operator=(const NoCheck&) = delete;
};
LaunchCtx* cur_launch();
ThreadCtx& cur_thread(const char* what);

// Runs a launch now (the runtime calls it when the launch's turn in its stream comes).
void run_launch(LaunchCtx& L, Order order);
// Kernel statistics, by kernel name.
std::map<std::string, KernelStats>& kernel_stats();

// ---- device memory and the access checks (memory.cpp) ---------------------------------
void memory_init();
bool in_arena(uintptr_t a, size_t n = 1);
// The allocator (sizes are rounded and guarded; `op` is the stream operation that makes
// the memory valid, 0 for memory valid on every stream at once).
void* arena_alloc(size_t bytes, int device, uint32_t op);
bool arena_owns(const void* p);
size_t arena_size_of(const void* p);
int arena_device_of(const void* p);
void arena_free_now(void* p);  // when the free's turn in its stream comes
size_t arena_in_use();
size_t arena_capacity();
std::string describe_address(uintptr_t a);
// Host access to the arena is trapped (PROT_NONE) except while device work runs.
void arena_unprotect();
void arena_protect();
// A kernel thread's access (from the instrumentation hooks and kernel_access).
void on_kernel_access(ThreadCtx* t, uintptr_t a, size_t n, bool write, bool atomic, bool aligned = true);
// An operation's access (memcpy, memset, emulated libraries).
void on_op_access(uintptr_t a, size_t n, bool write, const char* what);
// cudaFreeAsync's ordering check (the free as a write of the block).
void op_free_access(uintptr_t a, size_t n);
// Is [a, a+n) inside a live allocation?
bool live_range(uintptr_t a, size_t n);
// Launch bookkeeping for the shared-memory shadow and the order check.
void launch_begin(LaunchCtx& L);
void block_begin(LaunchCtx& L);
void launch_end(LaunchCtx& L);
// BARBELL_EMU_CHECK_ORDER: the bytes the current launch wrote, restored / compared.
void undo_begin();
void undo_restore(std::vector<std::pair<uintptr_t, std::vector<unsigned char>>>* written);
void undo_compare(const std::vector<std::pair<uintptr_t, std::vector<unsigned char>>>& first,
                  const std::string& name);
void undo_end();
// Ranges of host memory tests declare as "global" (tests/sim, no runtime).
void register_host_global(const void* p, size_t n);
void clear_host_globals();
// The stacks of the emulated threads (accesses there are ignored).
void set_stack_range(uintptr_t lo, size_t len);
// tests/sim: kernels may use host memory as global memory (the registered ranges only,
// when any are registered).
void set_host_memory_allowed(bool on);
bool host_global_ok(const void* p, size_t n);
// Host code in an instrumented unit touching device memory is an error.
void host_access_check(uintptr_t a, size_t n, bool write);
// The flash primitives' hooks (flash_prims.cpp) at a barrier and at a thread's exit.
void flash_barrier_check(LaunchCtx& L);
void flash_exit_count(ThreadCtx& t);

// ---- operations (runtime.cpp) ------------------------------------------------------------
// The operation running now (its id and vector clock), for the ordering checks.
struct OpInfo {
  uint32_t id = 0;
  uint32_t stream = 0;  // index
  uint64_t seq = 0;
  const std::vector<uint64_t>* vc = nullptr;
  const std::string* name = nullptr;
};
const OpInfo* running_op();
// Whether operation `op` happens before the running operation.
bool ordered_before(uint32_t op);
std::string op_description(uint32_t op);
void arena_alloc_op_touch(uint32_t op);

}  // namespace barbell::emu

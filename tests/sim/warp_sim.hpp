// Host emulation of one CUDA thread block for the flash-attention primitives
// (kernels/flash/primitives.cuh, included from there when BB_FLASH_SIM is defined).
//
// Every CUDA thread is a coroutine on its own stack; sim::launch runs the blocks of a
// grid one after another, and in a block a round-robin scheduler runs each thread until
// it reaches a collective (a warp collective or block_sync), where it waits until every
// participant has arrived. The warp collectives are computed once all 32 lanes are in,
// from all lanes' operands, as the PTX ISA defines them. Everything is written from the
// PTX ISA (sections cited at each primitive), not from the kernels' expectations.
//
// What is checked (each violation throws sim::Error, a std::runtime_error, out of
// sim::launch with the block, thread, warp and lane in the message):
//   * warp collectives (ldmatrix, mma, shfl_xor, warp_sync) need all 32 lanes of the
//     warp at the same collective; a different collective, an exited lane, or a partial
//     warp is an error ("divergence"). block_sync needs every thread of the block; a
//     thread that exits while others wait (or will wait) in block_sync is an error, and
//     so is any state in which no thread can run ("deadlock"), with a dump of where every
//     warp's lanes are.
//   * a launch's dynamic shared memory must fit sim::options().max_dynamic_smem (227 KiB,
//     the sm_90 opt-in maximum; set it to 99 KiB to model sm_86 / sm_89).
//   * ldmatrix row addresses: 16-byte aligned, all 16 bytes inside the block's dynamic
//     shared memory. cp.async: destination 16-byte aligned inside shared memory, source
//     16-byte aligned (also when the predicate is false); with sim::register_global()
//     ranges declared, a source read (pred true) must lie inside one of them.
//   * shared-memory races (sim::options().race_check, default on; env BB_SIM_RACECHECK=0
//     turns it off), tracked per 16-byte granule (every instrumented access is a whole,
//     aligned 16-byte granule) between block_sync epochs:
//       (a) an ldmatrix reads a granule with a cp.async pending (issued, not yet retired
//           by the issuing thread's cp.async.wait_group), whoever issued it;
//       (b) a cp.async is issued to a granule that another warp read by ldmatrix in the
//           current epoch (write after read with no barrier in between);
//       (c) an ldmatrix reads a granule whose cp.async landed (was retired by the issuing
//           thread's wait) in the current epoch, with no block_sync since and, when the
//           issuer is in the reading warp, no warp_sync since. wait_group makes the
//           writes visible to the executing thread only (PTX ISA "cp.async.wait_group":
//           "Writes performed by cp.async operations are made visible to the executing
//           thread only after ..."); other threads need a barrier (bar.sync /
//           __syncthreads, or __syncwarp within the warp) to be ordered after them.
//           ldmatrix hands each row to 4 (or, transposed, 8) lanes, so every row it reads
//           reaches lanes other than the issuer: the rule cannot be met by "same thread".
//       (d) a cp.async is issued to a granule that already has a cp.async pending (PTX:
//           no ordering between cp.async operations not synchronized by a wait; two in
//           one group to the same location are undefined behaviour).
//       (e) plain C++ stores are not seen when they happen (they are ordinary pointer
//           writes), but their effect is: a shadow copy of shared memory, taken at every
//           block_sync and updated by every cp.async, shows which granules plain stores
//           changed. Reported: an ldmatrix reading a granule changed by a plain store
//           since the last block_sync (unless the reading warp did a warp_sync since
//           then: the warp-private staging pattern); a granule read by ldmatrix and then
//           changed by a plain store before the next block_sync; a plain store to a
//           granule with a cp.async in flight. The writer of a plain store is unknown, so
//           a store by the reading warp itself is reported too (without warp_sync).
//     Plain C++ loads of shared memory are NOT instrumented at all. They are covered by
//     the poison below and by running with another schedule (sim::options().schedule:
//     reverse or random order of the threads in every round, and of the blocks) and
//     comparing the results.
//
// Semantics chosen:
//   * shared memory is filled with 0xFF bytes at the start of every block (16-bit NaNs,
//     float NaNs), and a cp.async's 16 destination bytes are set to 0xFF when it is
//     issued; the data (read from global memory at issue) lands only when the issuing
//     thread's cp.async.wait_group retires its group.
//   * cp_async_wait<N>: retires every committed group but the N most recent ones; copies
//     not yet committed belong to no group and are not waited for (PTX ISA
//     "cp.async.wait_group": "wait till only N or fewer of the most recent
//     cp.async-groups are pending and all the prior cp.async-groups committed by the
//     executing threads are complete"; "cp.async.commit_group ... batches all prior
//     cp.async instructions initiated by the executing thread but not committed"). An
//     empty commit makes an (empty) group. Copies still pending when a thread exits are
//     dropped (counted in sim::stats().cp_async_dropped).
//   * mma.m16n8k16 (PTX ISA 9.7.14.5.8 / 9.7.15.5.8 "Matrix Fragments for mma.m16n8k16
//     with floating point type"; g = lane >> 2, t = lane % 4, low 16 bits = lower index):
//       A: a0,a1 = (g, 2t+{0,1}), a2,a3 = (g+8, 2t+{0,1}), a4,a5 = (g, 2t+8+{0,1}),
//          a6,a7 = (g+8, 2t+8+{0,1}); register j holds elements a(2j), a(2j+1).
//       B: b0,b1 = (k 2t+{0,1}, n g), b2,b3 = (k 2t+8+{0,1}, n g).
//       C/D: c0,c1 = (g, 2t+{0,1}), c2,c3 = (g+8, 2t+{0,1}).
//     D = A B + C with the 16 products (exact in fp32 and in double) summed with C in
//     double and rounded once to fp32. The hardware's accumulation order and internal
//     rounding are not specified by PTX; this is the exactly-rounded result.
//   * ldmatrix.m8n8.x4(.trans).b16 (PTX ISA "Warp-level matrix load instruction:
//     ldmatrix"): lanes 8j..8j+7 give the row addresses of matrix j; without .trans lane
//     L receives in r[j] the elements (row L/4, columns 2(L%4), 2(L%4)+1) of matrix j
//     (Figure "ldmatrix fragment layout for one 8x8 Matrix with 16-bit elements"); with
//     .trans ("the matrix is loaded in column-major format") (rows 2(L%4), 2(L%4)+1,
//     column L/4), where "row" is the 16-byte row a lane addressed.
//   * shfl_xor: lane L receives the value of lane L ^ mask (a mask outside 0..31 is
//     reported as an error).
//   * fast_exp2 (ex2.approx.ftz.f32): exp2f with subnormal inputs and results flushed to
//     sign-preserving zero (-inf -> +0, +inf -> +inf, NaN -> NaN). The hardware's
//     approximation error (~2 ulp) is not modelled: results are exp2f's.
//   * atomic_add: a plain add (the blocks and threads never run concurrently).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>  // host definitions of __device__, __forceinline__, __restrict__ ...
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define BB_SIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BB_SIM_ASAN 1
#endif
#endif
#ifdef BB_SIM_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>  // fiber switch annotations
#endif

#if !defined(__x86_64__) || defined(BB_SIM_UCONTEXT)
#include <ucontext.h>
#define BB_SIM_USE_UCONTEXT 1
#endif

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

#define BB_FA_DEVICE inline
#define BB_FA_KERNEL(threads) inline void

// ---- context switch (x86-64 System V: callee-saved rbx, rbp, r12-r15) ------------------
#ifndef BB_SIM_USE_UCONTEXT
extern "C" void bb_sim_swap(void** save_sp, void* load_sp);
extern "C" void bb_sim_trampoline();
// Weak symbols: every translation unit that includes this header emits them; the linker
// keeps one.
__asm__(R"(
  .text
  .weak bb_sim_swap
  .type bb_sim_swap, @function
  .p2align 4
bb_sim_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size bb_sim_swap, .-bb_sim_swap

  .weak bb_sim_trampoline
  .type bb_sim_trampoline, @function
  .p2align 4
bb_sim_trampoline:
  .cfi_startproc
  .cfi_undefined rip
  movq %rbx, %rdi
  callq *%r12
  ud2
  .cfi_endproc
  .size bb_sim_trampoline, .-bb_sim_trampoline
)");
#endif

namespace barbell::gpu::fa {
namespace sim {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Schedule { forward, reverse, random };

struct Options {
  bool race_check = true;                 // env BB_SIM_RACECHECK=0 turns it off
  Schedule schedule = Schedule::forward;  // order of the threads in each scheduler round
  uint64_t seed = 1;                      // for Schedule::random
  size_t stack_bytes = 256 * 1024;        // per thread
  // per block: sm_90's opt-in maximum (sm_80: 163 KiB, sm_86 / sm_89: 99 KiB)
  size_t max_dynamic_smem = 227 * 1024;
};

struct Stats {
  uint64_t blocks = 0, mma = 0, ldmatrix = 0, shfl = 0, warp_syncs = 0, block_syncs = 0;
  uint64_t cp_async = 0, cp_async_zero_fill = 0, cp_async_dropped = 0, switches = 0;
};

namespace detail {

inline Options make_options() {
  Options o;
  if (const char* e = std::getenv("BB_SIM_RACECHECK")) o.race_check = std::strcmp(e, "0") != 0;
  return o;
}

enum class Op : uint8_t { none, ldmatrix, ldmatrix_trans, mma_bf16, mma_f16, shfl, warp_sync };
enum class St : uint8_t { runnable, warp_wait, block_wait, done };

inline const char* op_name(Op op) {
  switch (op) {
    case Op::none: return "none";
    case Op::ldmatrix: return "ldmatrix_x4";
    case Op::ldmatrix_trans: return "ldmatrix_x4_trans";
    case Op::mma_bf16: return "mma_16816<bf16>";
    case Op::mma_f16: return "mma_16816<f16>";
    case Op::shfl: return "shfl_xor";
    case Op::warp_sync: return "warp_sync";
  }
  return "?";
}

struct Copy {
  char* dst;
  unsigned char data[16];
};

struct Thread {
  int tid = 0;
  char* stack_lo = nullptr;
  size_t stack_size = 0;
  void* asan_fake = nullptr;
#ifdef BB_SIM_USE_UCONTEXT
  ucontext_t ctx{};
#else
  void* sp = nullptr;
#endif
  St st = St::runnable;
  Op op = Op::none;
  // operands and results of the collective this thread waits in (pointers into the
  // suspended thread's own stack, which stays alive while it waits)
  const void* addr = nullptr;
  uint32_t* r = nullptr;
  const uint32_t* a = nullptr;
  uint32_t b0 = 0, b1 = 0;
  float* d = nullptr;
  float v = 0, out = 0;
  int mask = 0;
  std::vector<Copy> uncommitted;
  std::deque<std::vector<Copy>> committed;
};

struct Warp {
  int arrived = 0;
  Op op = Op::none;
  uint64_t syncs = 0;           // completed warp_syncs
  uint64_t sync_epoch = ~0ull;  // block epoch of the last warp_sync
};

struct Granule {
  int32_t pending = -1;     // thread with a cp.async in flight to it, or -1
  int32_t writer = -1;      // thread whose cp.async landed last, or -1
  uint64_t land_epoch = 0;  // block epoch at landing
  uint64_t land_wsync = 0;  // writer's warp's warp_sync count at landing
  uint64_t read_epoch = ~0ull;
  uint32_t read_warps = 0;  // warps that read it by ldmatrix in read_epoch (bit w % 32)
};

struct Range {
  const char* lo;
  const char* hi;
};

struct State {
  Options opts = make_options();
  Stats stats;
  std::vector<Range> globals;

  // the grid and block being run
  bool running = false;
  int gx = 0, gy = 0, gz = 0, bx = 0, by = 0, bz = 0, nthreads = 0;
  const std::function<void()>* body = nullptr;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  int block_arrived = 0;
  int ndone = 0;
  uint64_t epoch = 0;
  Thread* cur = nullptr;
  std::exception_ptr failure;
#ifdef BB_SIM_USE_UCONTEXT
  ucontext_t main_ctx{};
#else
  void* main_sp = nullptr;
#endif

  // shared memory
  std::vector<char> smem_store;
  char* smem = nullptr;
  size_t smem_bytes = 0;
  std::vector<Granule> gran;
  std::vector<char> shadow;  // shared memory as of the last barrier / instrumented write

  // the scheduler's stack, for the sanitizer annotations
  const void* main_bottom = nullptr;
  size_t main_size = 0;
  void* main_fake = nullptr;

  // stacks (kept between launches)
  char* stacks = nullptr;
  size_t stacks_len = 0, stack_stride = 0;

  ~State() {
    if (stacks) munmap(stacks, stacks_len);
  }
};

inline State& st() {
  static State s;
  return s;
}

inline std::string where(const Thread* t) {
  State& s = st();
  std::ostringstream os;
  os << "warp_sim: block (" << s.bx << "," << s.by << "," << s.bz << ")";
  if (t) os << " thread " << t->tid << " (warp " << (t->tid >> 5) << " lane " << (t->tid & 31) << ")";
  return os.str();
}

[[noreturn]] inline void fail(const std::string& msg, const Thread* t = nullptr) {
  throw Error(where(t ? t : st().cur) + ": " + msg);
}

inline Thread& cur() {
  State& s = st();
  if (!s.running || !s.cur) throw Error("warp_sim: a device primitive was called outside sim::launch");
  return *s.cur;
}

// -- switching -------------------------------------------------------------------------

// AddressSanitizer must be told about every stack switch (else it reports false
// stack-use-after-scope errors); no-ops otherwise.
inline void asan_start(void** fake, const void* bottom, size_t size) {
#ifdef BB_SIM_ASAN
  __sanitizer_start_switch_fiber(fake, bottom, size);
#else
  (void)fake, (void)bottom, (void)size;
#endif
}
inline void asan_finish_in_thread(void* fake) {
#ifdef BB_SIM_ASAN
  State& s = st();
  __sanitizer_finish_switch_fiber(fake, &s.main_bottom, &s.main_size);
#else
  (void)fake;
#endif
}
inline void asan_finish_in_main() {
#ifdef BB_SIM_ASAN
  __sanitizer_finish_switch_fiber(st().main_fake, nullptr, nullptr);
#endif
}

inline void to_scheduler(Thread& t) {
  State& s = st();
  asan_start(&t.asan_fake, s.main_bottom, s.main_size);
#ifdef BB_SIM_USE_UCONTEXT
  swapcontext(&t.ctx, &s.main_ctx);
#else
  bb_sim_swap(&t.sp, s.main_sp);
#endif
  asan_finish_in_thread(t.asan_fake);
}

inline void on_exit(Thread& t);

inline void thread_entry(Thread* t) noexcept {
  State& s = st();
  asan_finish_in_thread(nullptr);
  try {
    (*s.body)();
    on_exit(*t);
  } catch (...) {
    if (!s.failure) s.failure = std::current_exception();
    t->st = St::done;
  }
  // never resumed
  asan_start(nullptr, s.main_bottom, s.main_size);
#ifdef BB_SIM_USE_UCONTEXT
  setcontext(&s.main_ctx);
#else
  void* dummy;
  bb_sim_swap(&dummy, s.main_sp);
#endif
  std::abort();
}

#ifdef BB_SIM_USE_UCONTEXT
inline void ucontext_entry(unsigned lo, unsigned hi) {
  thread_entry(reinterpret_cast<Thread*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

inline void init_stacks(int n) {
  State& s = st();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t per = ((s.opts.stack_bytes + page - 1) / page) * page + page;  // + guard page
  const size_t need = per * static_cast<size_t>(n);
  if (s.stacks && s.stack_stride == per && s.stacks_len >= need) return;
  if (s.stacks) munmap(s.stacks, s.stacks_len);
  s.stacks = nullptr;
  void* m = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) throw Error("warp_sim: cannot map thread stacks");
  s.stacks = static_cast<char*>(m);
  s.stacks_len = need;
  s.stack_stride = per;
  for (int i = 0; i < n; ++i)
    mprotect(s.stacks + per * static_cast<size_t>(i), page, PROT_NONE);  // overflow traps
}

inline void make_context(Thread& t) {
  State& s = st();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  char* lo = s.stacks + s.stack_stride * static_cast<size_t>(t.tid) + page;
  const size_t size = s.stack_stride - page;
  t.stack_lo = lo;
  t.stack_size = size;
#ifdef BB_SIM_ASAN
  __asan_unpoison_memory_region(lo, size);  // frames a previous thread left on this stack
#endif
#ifdef BB_SIM_USE_UCONTEXT
  getcontext(&t.ctx);
  t.ctx.uc_stack.ss_sp = lo;
  t.ctx.uc_stack.ss_size = size;
  t.ctx.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(&t);
  makecontext(&t.ctx, reinterpret_cast<void (*)()>(&ucontext_entry), 2,
              static_cast<unsigned>(p & 0xffffffffu), static_cast<unsigned>(p >> 32));
#else
  uintptr_t top = (reinterpret_cast<uintptr_t>(lo) + size) & ~static_cast<uintptr_t>(15);
  void** sp = reinterpret_cast<void**>(top) - 7;        // r15 r14 r13 r12 rbx rbp ret
  sp[0] = nullptr;                                      // r15
  sp[1] = nullptr;                                      // r14
  sp[2] = nullptr;                                      // r13
  sp[3] = reinterpret_cast<void*>(&thread_entry);       // r12
  sp[4] = &t;                                           // rbx
  sp[5] = nullptr;                                      // rbp
  sp[6] = reinterpret_cast<void*>(&bb_sim_trampoline);  // return address
  t.sp = sp;
#endif
}

// -- shared memory bookkeeping ------------------------------------------------------------

inline bool in_smem(const void* p, size_t n) {
  State& s = st();
  const char* c = static_cast<const char*>(p);
  return s.smem && c >= s.smem && c + n <= s.smem + s.smem_bytes && c + n >= c;
}

inline Granule& granule(const void* p) {
  State& s = st();
  return s.gran[static_cast<size_t>(static_cast<const char*>(p) - s.smem) / 16];
}

inline std::string smem_off(const void* p) {
  State& s = st();
  std::ostringstream os;
  os << "smem+" << (static_cast<const char*>(p) - s.smem);
  return os.str();
}

inline void land(Thread& t, const Copy& c) {
  State& s = st();
  const size_t off = static_cast<size_t>(c.dst - s.smem);
  if (s.opts.race_check && std::memcmp(c.dst, s.shadow.data() + off, 16) != 0)
    fail("a plain store wrote " + smem_off(c.dst) + " while a cp.async of thread " + std::to_string(t.tid) +
         " to it was in flight (the copy lands over it)");
  std::memcpy(c.dst, c.data, 16);
  std::memcpy(s.shadow.data() + off, c.data, 16);
  if (s.opts.race_check) {
    Granule& g = granule(c.dst);
    g.pending = -1;
    g.writer = t.tid;
    g.land_epoch = s.epoch;
    g.land_wsync = s.warps[static_cast<size_t>(t.tid >> 5)].syncs;
  }
}

// -- collectives ---------------------------------------------------------------------------

inline std::string dump_states() {
  State& s = st();
  std::ostringstream os;
  for (size_t w = 0; w < s.warps.size(); ++w) {
    os << "\n  warp " << w << ":";
    int lo = static_cast<int>(w) * 32, hi = std::min(lo + 32, s.nthreads);
    int i = lo;
    while (i < hi) {
      const Thread& t = s.threads[static_cast<size_t>(i)];
      int j = i + 1;
      while (j < hi && s.threads[static_cast<size_t>(j)].st == t.st &&
             (t.st != St::warp_wait || s.threads[static_cast<size_t>(j)].op == t.op))
        ++j;
      os << " lanes " << (i - lo) << "-" << (j - 1 - lo) << " ";
      switch (t.st) {
        case St::runnable: os << "runnable"; break;
        case St::done: os << "exited"; break;
        case St::block_wait: os << "in block_sync"; break;
        case St::warp_wait: os << "in " << op_name(t.op); break;
      }
      os << ";";
      i = j;
    }
  }
  return os.str();
}

inline void exec_warp(int w);

inline void warp_collective(Op op) {
  State& s = st();
  Thread& t = cur();
  const int w = t.tid >> 5;
  Warp& wp = s.warps[static_cast<size_t>(w)];
  const int lo = w * 32;
  if (lo + 32 > s.nthreads)
    fail(std::string(op_name(op)) + " in a partial warp (block of " + std::to_string(s.nthreads) +
         " threads): warp collectives need all 32 lanes");
  for (int l = 0; l < 32; ++l) {
    const Thread& o = s.threads[static_cast<size_t>(lo + l)];
    if (o.st == St::done)
      fail(std::string(op_name(op)) + " while lane " + std::to_string(l) +
           " of the warp has exited (warp collectives need all 32 lanes)");
    if (o.st == St::block_wait)
      fail(std::string(op_name(op)) + " while lane " + std::to_string(l) +
           " of the warp waits in block_sync (divergent warp)");
  }
  if (wp.arrived > 0 && wp.op != op)
    fail(std::string(op_name(op)) + " while other lanes of the warp wait in " + op_name(wp.op) +
         " (divergent warp)" + dump_states());
  wp.op = op;
  t.op = op;
  t.st = St::warp_wait;
  if (++wp.arrived == 32) {
    exec_warp(w);
    for (int l = 0; l < 32; ++l) {
      Thread& o = s.threads[static_cast<size_t>(lo + l)];
      o.st = St::runnable;
      o.op = Op::none;
    }
    wp.arrived = 0;
    wp.op = Op::none;
  } else {
    to_scheduler(t);
  }
}

inline void block_collective() {
  State& s = st();
  Thread& t = cur();
  if (s.ndone > 0) {
    int who = -1;
    for (const Thread& o : s.threads)
      if (o.st == St::done) {
        who = o.tid;
        break;
      }
    fail("block_sync after thread " + std::to_string(who) +
         " exited: __syncthreads needs every thread of the block (it would hang)" + dump_states());
  }
  const Warp& wp = s.warps[static_cast<size_t>(t.tid >> 5)];
  if (wp.arrived > 0)
    fail(std::string("block_sync while other lanes of the warp wait in ") + op_name(wp.op) +
         " (divergent warp)" + dump_states());
  t.st = St::block_wait;
  if (++s.block_arrived == s.nthreads) {
    s.block_arrived = 0;
    if (s.opts.race_check) {
      // a granule read by ldmatrix in this interval whose bytes then changed by plain
      // stores: written after the read with no barrier in between
      for (size_t i = 0; i < s.gran.size(); ++i) {
        const Granule& g = s.gran[i];
        if (g.pending >= 0 && std::memcmp(s.smem + 16 * i, s.shadow.data() + 16 * i, 16) != 0)
          fail("a plain store wrote smem+" + std::to_string(16 * i) + " while a cp.async of thread " +
               std::to_string(g.pending) + " to it was in flight (the copy lands over it)");
        if (g.read_epoch == s.epoch && std::memcmp(s.smem + 16 * i, s.shadow.data() + 16 * i, 16) != 0) {
          int w = 0;
          while (!((g.read_warps >> w) & 1u)) ++w;
          fail("smem+" + std::to_string(16 * i) + " was read by ldmatrix (warp " + std::to_string(w) +
               ") and then changed by a plain store before the next block_sync (write after read without a "
               "barrier)");
        }
      }
    }
    std::memcpy(s.shadow.data(), s.smem, s.smem_bytes);
    ++s.epoch;
    ++s.stats.block_syncs;
    for (Thread& o : s.threads) o.st = St::runnable;
  } else {
    to_scheduler(t);
  }
}

inline void on_exit(Thread& t) {
  State& s = st();
  s.stats.cp_async_dropped += t.uncommitted.size();
  for (const auto& g : t.committed) s.stats.cp_async_dropped += g.size();
  // A pending copy that never lands leaves its granule marked pending: later reads by
  // ldmatrix in this block are reported.
  t.st = St::done;
  ++s.ndone;
  if (s.block_arrived > 0)
    fail("exited while " + std::to_string(s.block_arrived) +
             " threads wait in block_sync (__syncthreads needs every thread of the block)" + dump_states(),
         &t);
  const Warp& wp = s.warps[static_cast<size_t>(t.tid >> 5)];
  if (wp.arrived > 0)
    fail(std::string("exited while other lanes of its warp wait in ") + op_name(wp.op) + dump_states(), &t);
}

inline void check_row_read(const void* p, int w) {
  State& s = st();
  Granule& g = granule(p);
  const size_t off = static_cast<size_t>(static_cast<const char*>(p) - s.smem);
  if (std::memcmp(p, s.shadow.data() + off, 16) != 0) {
    if (s.warps[static_cast<size_t>(w)].sync_epoch != s.epoch)
      fail("ldmatrix by warp " + std::to_string(w) + " reads " + smem_off(p) +
           ", changed by a plain store since the last block_sync: stores by other threads need a barrier "
           "(block_sync, or warp_sync within the warp) before the read");
    std::memcpy(s.shadow.data() + off, p, 16);  // accounted for: later changes are writes after this read
  }
  if (g.pending >= 0)
    fail("ldmatrix by warp " + std::to_string(w) + " reads " + smem_off(p) + " while a cp.async of thread " +
         std::to_string(g.pending) + " to it is still in flight (not retired by its cp_async_wait)");
  if (g.writer >= 0 && g.land_epoch == s.epoch) {
    const int ww = g.writer >> 5;
    const bool warp_ok = ww == w && s.warps[static_cast<size_t>(w)].syncs > g.land_wsync;
    if (!warp_ok)
      fail("ldmatrix by warp " + std::to_string(w) + " reads " + smem_off(p) +
           ", written by a cp.async of thread " + std::to_string(g.writer) + " (warp " + std::to_string(ww) +
           ") that landed (cp_async_wait) after the last block_sync: the data is visible to the issuing "
           "thread "
           "only until a barrier" +
           (ww == w ? " (or warp_sync)" : std::string()) + " orders it for the others");
  }
  if (g.read_epoch != s.epoch) {
    g.read_epoch = s.epoch;
    g.read_warps = 0;
  }
  g.read_warps |= 1u << (w & 31);
}

inline void exec_ldmatrix(int w, bool trans) {
  State& s = st();
  const int lo = w * 32;
  uint16_t m[4][8][8];  // matrix, addressed row, element
  for (int l = 0; l < 32; ++l) {
    const Thread& t = s.threads[static_cast<size_t>(lo + l)];
    const void* p = t.addr;
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
      fail(std::string(trans ? "ldmatrix_x4_trans" : "ldmatrix_x4") + ": row address " +
               (in_smem(p, 1) ? smem_off(p) : std::string("(outside shared memory)")) +
               " is not 16-byte aligned",
           &t);
    if (!in_smem(p, 16)) {
      std::ostringstream os;
      os << (trans ? "ldmatrix_x4_trans" : "ldmatrix_x4") << ": row address " << p << " (offset "
         << (static_cast<const char*>(p) - s.smem) << ") is outside the block's " << s.smem_bytes
         << " bytes of dynamic shared memory";
      fail(os.str(), &t);
    }
    if (s.opts.race_check) check_row_read(p, w);
    std::memcpy(m[l >> 3][l & 7], p, 16);
  }
  for (int l = 0; l < 32; ++l) {
    Thread& t = s.threads[static_cast<size_t>(lo + l)];
    const int g = l >> 2, c = l & 3;
    for (int j = 0; j < 4; ++j) {
      uint16_t e0, e1;
      if (!trans) {
        e0 = m[j][g][2 * c];
        e1 = m[j][g][2 * c + 1];
      } else {
        e0 = m[j][2 * c][g];
        e1 = m[j][2 * c + 1][g];
      }
      t.r[j] = static_cast<uint32_t>(e0) | (static_cast<uint32_t>(e1) << 16);
    }
  }
  ++s.stats.ldmatrix;
}

inline float half_bits_to_float(uint16_t h, bool bf16) {
  if (bf16) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  __half_raw raw;
  raw.x = h;
  return __half2float(__half(raw));
}

inline void exec_mma(int w, bool bf16) {
  State& s = st();
  const int lo = w * 32;
  double A[16][16], B[16][8], Cm[16][8];
  auto lo16 = [](uint32_t r) { return static_cast<uint16_t>(r & 0xffffu); };
  auto hi16 = [](uint32_t r) { return static_cast<uint16_t>(r >> 16); };
  for (int l = 0; l < 32; ++l) {
    const Thread& t = s.threads[static_cast<size_t>(lo + l)];
    const int g = l >> 2, c = l & 3;
    const uint32_t* a = t.a;
    // A: reg j holds a(2j), a(2j+1); rows g (a0,a1,a4,a5) / g+8 (a2,a3,a6,a7);
    // columns 2c + (i & 1), + 8 for i >= 4.
    A[g][2 * c] = half_bits_to_float(lo16(a[0]), bf16);
    A[g][2 * c + 1] = half_bits_to_float(hi16(a[0]), bf16);
    A[g + 8][2 * c] = half_bits_to_float(lo16(a[1]), bf16);
    A[g + 8][2 * c + 1] = half_bits_to_float(hi16(a[1]), bf16);
    A[g][2 * c + 8] = half_bits_to_float(lo16(a[2]), bf16);
    A[g][2 * c + 9] = half_bits_to_float(hi16(a[2]), bf16);
    A[g + 8][2 * c + 8] = half_bits_to_float(lo16(a[3]), bf16);
    A[g + 8][2 * c + 9] = half_bits_to_float(hi16(a[3]), bf16);
    // B: b0,b1 = (k 2c + {0,1}, n g); b2,b3 = (k 2c + 8 + {0,1}, n g)
    B[2 * c][g] = half_bits_to_float(lo16(t.b0), bf16);
    B[2 * c + 1][g] = half_bits_to_float(hi16(t.b0), bf16);
    B[2 * c + 8][g] = half_bits_to_float(lo16(t.b1), bf16);
    B[2 * c + 9][g] = half_bits_to_float(hi16(t.b1), bf16);
    // C: c0,c1 = (g, 2c + {0,1}); c2,c3 = (g + 8, 2c + {0,1})
    Cm[g][2 * c] = t.d[0];
    Cm[g][2 * c + 1] = t.d[1];
    Cm[g + 8][2 * c] = t.d[2];
    Cm[g + 8][2 * c + 1] = t.d[3];
  }
  float D[16][8];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      double acc = Cm[i][j];
      for (int k = 0; k < 16; ++k) acc += A[i][k] * B[k][j];
      D[i][j] = static_cast<float>(acc);
    }
  for (int l = 0; l < 32; ++l) {
    Thread& t = s.threads[static_cast<size_t>(lo + l)];
    const int g = l >> 2, c = l & 3;
    t.d[0] = D[g][2 * c];
    t.d[1] = D[g][2 * c + 1];
    t.d[2] = D[g + 8][2 * c];
    t.d[3] = D[g + 8][2 * c + 1];
  }
  ++s.stats.mma;
}

inline void exec_warp(int w) {
  State& s = st();
  const int lo = w * 32;
  switch (s.warps[static_cast<size_t>(w)].op) {
    case Op::ldmatrix: exec_ldmatrix(w, false); break;
    case Op::ldmatrix_trans: exec_ldmatrix(w, true); break;
    case Op::mma_bf16: exec_mma(w, true); break;
    case Op::mma_f16: exec_mma(w, false); break;
    case Op::shfl: {
      float vals[32];
      for (int l = 0; l < 32; ++l) vals[l] = s.threads[static_cast<size_t>(lo + l)].v;
      for (int l = 0; l < 32; ++l) {
        Thread& t = s.threads[static_cast<size_t>(lo + l)];
        if (t.mask < 0 || t.mask > 31)
          fail("shfl_xor with lane mask " + std::to_string(t.mask) + " (not in 0..31)", &t);
        t.out = vals[l ^ t.mask];
      }
      ++s.stats.shfl;
      break;
    }
    case Op::warp_sync:
      ++s.warps[static_cast<size_t>(w)].syncs;
      s.warps[static_cast<size_t>(w)].sync_epoch = s.epoch;
      ++s.stats.warp_syncs;
      break;
    case Op::none: break;
  }
}

}  // namespace detail

inline Options& options() { return detail::st().opts; }
inline Stats& stats() { return detail::st().stats; }

// Global-memory ranges that cp.async may read (when any are registered).
inline void register_global(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  detail::st().globals.push_back({c, c + bytes});
}
inline void clear_globals() { detail::st().globals.clear(); }

// Runs body() as every thread of every block of a grid_x x grid_y x grid_z grid.
inline void launch(int grid_x, int grid_y, int grid_z, int threads, size_t smem_bytes,
                   const std::function<void()>& body) {
  using namespace detail;
  State& s = st();
  if (s.running) throw Error("warp_sim: sim::launch called from inside a kernel");
  if (threads <= 0 || threads > 1024)
    throw Error("warp_sim: launch with " + std::to_string(threads) + " threads");
  if (grid_x <= 0 || grid_y <= 0 || grid_z <= 0) throw Error("warp_sim: launch with an empty grid");
  if (smem_bytes > s.opts.max_dynamic_smem)
    throw Error("warp_sim: launch with " + std::to_string(smem_bytes) +
                " bytes of dynamic shared memory, over the " + std::to_string(s.opts.max_dynamic_smem) +
                " of sim::options().max_dynamic_smem");
  init_stacks(threads);
  s.gx = grid_x;
  s.gy = grid_y;
  s.gz = grid_z;
  s.nthreads = threads;
  s.body = &body;
  s.smem_bytes = smem_bytes;
  s.smem_store.assign(smem_bytes + 128, 0);
  s.smem = s.smem_store.data() + (128 - reinterpret_cast<uintptr_t>(s.smem_store.data()) % 128) % 128;
  s.gran.assign((smem_bytes + 15) / 16, Granule{});
  std::mt19937_64 rng(s.opts.seed);
  std::vector<int> order(static_cast<size_t>(threads));

  struct Reset {
    State& s;
    ~Reset() {
      s.running = false;
      s.cur = nullptr;
      s.threads.clear();
      s.warps.clear();
      s.failure = nullptr;
      s.body = nullptr;
    }
  } reset{s};
  s.running = true;

  // Blocks run one at a time: in index order, or reversed / shuffled with the schedule
  // (a kernel's result must not depend on the order of its blocks).
  std::vector<std::array<int, 3>> blocks;
  blocks.reserve(static_cast<size_t>(grid_x) * static_cast<size_t>(grid_y) * static_cast<size_t>(grid_z));
  for (int bz = 0; bz < grid_z; ++bz)
    for (int by = 0; by < grid_y; ++by)
      for (int bx = 0; bx < grid_x; ++bx) blocks.push_back({bx, by, bz});
  if (s.opts.schedule == Schedule::reverse) std::reverse(blocks.begin(), blocks.end());
  if (s.opts.schedule == Schedule::random) std::shuffle(blocks.begin(), blocks.end(), rng);
  for (const auto& blk : blocks) {
    s.bx = blk[0];
    s.by = blk[1];
    s.bz = blk[2];
    s.threads.assign(static_cast<size_t>(threads), Thread{});
    s.warps.assign(static_cast<size_t>((threads + 31) / 32), Warp{});
    s.block_arrived = 0;
    s.ndone = 0;
    s.epoch = 0;
    s.failure = nullptr;
    std::memset(s.smem, 0xff, smem_bytes);
    s.shadow.assign(smem_bytes, static_cast<char>(0xff));
    std::fill(s.gran.begin(), s.gran.end(), Granule{});
    for (int i = 0; i < threads; ++i) {
      s.threads[static_cast<size_t>(i)].tid = i;
      make_context(s.threads[static_cast<size_t>(i)]);
    }
    ++s.stats.blocks;
    for (;;) {
      for (int i = 0; i < threads; ++i) order[static_cast<size_t>(i)] = i;
      if (s.opts.schedule == Schedule::reverse) std::reverse(order.begin(), order.end());
      if (s.opts.schedule == Schedule::random) std::shuffle(order.begin(), order.end(), rng);
      bool ran = false;
      for (int i : order) {
        Thread& t = s.threads[static_cast<size_t>(i)];
        if (t.st != St::runnable) continue;
        ran = true;
        s.cur = &t;
        ++s.stats.switches;
        asan_start(&s.main_fake, t.stack_lo, t.stack_size);
#ifdef BB_SIM_USE_UCONTEXT
        swapcontext(&s.main_ctx, &t.ctx);
#else
        bb_sim_swap(&s.main_sp, t.sp);
#endif
        asan_finish_in_main();
        s.cur = nullptr;
        if (s.failure) std::rethrow_exception(s.failure);
      }
      if (s.ndone == threads) break;
      if (!ran) throw Error(where(nullptr) + ": deadlock: no thread can run" + dump_states());
    }
  }
}

}  // namespace sim

// ---- the primitives (same names and signatures as primitives.cuh) ------------------------

inline int thread_x() { return sim::detail::cur().tid; }
inline int block_x() { return (void)sim::detail::cur(), sim::detail::st().bx; }
inline int block_y() { return (void)sim::detail::cur(), sim::detail::st().by; }
inline int block_z() { return (void)sim::detail::cur(), sim::detail::st().bz; }
inline int grid_x() { return (void)sim::detail::cur(), sim::detail::st().gx; }

inline char* dynamic_smem() { return (void)sim::detail::cur(), sim::detail::st().smem; }

inline void block_sync() { sim::detail::block_collective(); }
inline void warp_sync() { sim::detail::warp_collective(sim::detail::Op::warp_sync); }

// The shared-window address of p (here: its offset in the block's dynamic shared memory).
inline uint32_t smem_addr(const void* p) {
  if (!sim::detail::in_smem(p, 1)) sim::detail::fail("smem_addr of an address outside shared memory");
  return static_cast<uint32_t>(static_cast<const char*>(p) - sim::detail::st().smem);
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  sim::detail::Thread& t = sim::detail::cur();
  t.addr = row;
  t.r = r;
  sim::detail::warp_collective(sim::detail::Op::ldmatrix);
}
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  sim::detail::Thread& t = sim::detail::cur();
  t.addr = row;
  t.r = r;
  sim::detail::warp_collective(sim::detail::Op::ldmatrix_trans);
}

template <typename T>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "mma_16816: bf16 or f16");
  sim::detail::Thread& t = sim::detail::cur();
  t.d = d;
  t.a = a;
  t.b0 = b0;
  t.b1 = b1;
  sim::detail::warp_collective(std::is_same_v<T, __nv_bfloat16> ? sim::detail::Op::mma_bf16
                                                                : sim::detail::Op::mma_f16);
}

inline void cp_async_16(void* smem, const void* gmem, bool pred) {
  using namespace sim::detail;
  State& s = st();
  Thread& t = cur();
  if (reinterpret_cast<uintptr_t>(smem) % 16 != 0 || !in_smem(smem, 16)) {
    std::ostringstream os;
    os << "cp_async_16: destination " << smem << " (offset " << (static_cast<char*>(smem) - s.smem)
       << ") is not a 16-byte aligned 16-byte range inside the block's " << s.smem_bytes
       << " bytes of dynamic shared memory";
    fail(os.str());
  }
  if (reinterpret_cast<uintptr_t>(gmem) % 16 != 0) {
    std::ostringstream os;
    os << "cp_async_16: source " << gmem << " is not 16-byte aligned" << (pred ? "" : " (predicate false)");
    fail(os.str());
  }
  if (pred && !s.globals.empty()) {
    const char* g = static_cast<const char*>(gmem);
    bool ok = false;
    for (const Range& r : s.globals)
      if (g >= r.lo && g + 16 <= r.hi) ok = true;
    if (!ok) {
      std::ostringstream os;
      os << "cp_async_16: source " << gmem << " (16 bytes) is outside every registered global buffer";
      fail(os.str());
    }
  }
  if (s.opts.race_check) {
    Granule& g = granule(smem);
    if (g.pending >= 0)
      fail("cp_async_16 to " + smem_off(smem) + " while an earlier cp.async of thread " +
           std::to_string(g.pending) + " to it is still in flight (no ordering between them)");
    if (g.read_epoch == s.epoch && (g.read_warps & ~(1u << ((t.tid >> 5) & 31))) != 0) {
      int other = 0;
      while (!((g.read_warps >> other) & 1u) || other == ((t.tid >> 5) & 31)) ++other;
      fail("cp_async_16 to " + smem_off(smem) + ", which warp " + std::to_string(other) +
           " read by ldmatrix since the last block_sync (write after read without a barrier)");
    }
    g.pending = t.tid;
  }
  Copy c;
  c.dst = static_cast<char*>(smem);
  if (pred)
    std::memcpy(c.data, gmem, 16);
  else
    std::memset(c.data, 0, 16);
  std::memset(smem, 0xff, 16);  // poison until it lands
  std::memcpy(s.shadow.data() + (static_cast<char*>(smem) - s.smem), smem, 16);
  t.uncommitted.push_back(c);
  ++s.stats.cp_async;
  if (!pred) ++s.stats.cp_async_zero_fill;
}

inline void cp_async_commit() {
  sim::detail::Thread& t = sim::detail::cur();
  t.committed.push_back(std::move(t.uncommitted));
  t.uncommitted.clear();
}

template <int N>
inline void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group N >= 0");
  sim::detail::Thread& t = sim::detail::cur();
  while (t.committed.size() > static_cast<size_t>(N)) {
    for (const sim::detail::Copy& c : t.committed.front()) sim::detail::land(t, c);
    t.committed.pop_front();
  }
}

inline float shfl_xor(float v, int mask) {
  sim::detail::Thread& t = sim::detail::cur();
  t.v = v;
  t.mask = mask;
  sim::detail::warp_collective(sim::detail::Op::shfl);
  return t.out;
}

// __all_sync over the full warp, as the AND of a butterfly of shuffles (the same
// collective rules: every lane must take part).
inline bool warp_all(bool p) {
  float v = p ? 1.f : 0.f;
  for (int m = 16; m > 0; m >>= 1) v = std::min(v, shfl_xor(v, m));
  return v == 1.f;
}

inline float fast_exp2(float x) {
  if (std::fpclassify(x) == FP_SUBNORMAL) x = std::copysign(0.f, x);
  float y = std::exp2(x);
  if (std::fpclassify(y) == FP_SUBNORMAL) y = std::copysign(0.f, y);
  return y;
}

inline void atomic_add(float* p, float v) { *p += v; }
inline void atomic_add2(float* p, float a, float b) {
  if (reinterpret_cast<uintptr_t>(p) % 8 != 0) throw sim::Error("warp_sim: atomic_add2 on an address not 8-byte aligned");
  p[0] += a;
  p[1] += b;
}

template <typename T>
inline uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    std::memcpy(&r, &v, 4);
  } else {
    static_assert(std::is_same_v<T, __half>, "pack2: bf16 or f16");
    __half2 v = __floats2half2_rn(lo, hi);
    std::memcpy(&r, &v, 4);
  }
  return r;
}

template <typename T>
inline float to_float(T x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __bfloat162float(x);
  else
    return __half2float(x);
}

}  // namespace barbell::gpu::fa

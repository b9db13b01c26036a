// The emulated execution model: a launch runs its blocks one after another, and in a
// block every CUDA thread is a coroutine on its own stack. A round-robin scheduler runs
// each thread until it reaches a collective (__syncthreads, a warp collective), where it
// waits until every participant has arrived; warp collectives are computed from all
// participants' operands once they are in, as the CUDA C++ guide and the PTX ISA define
// them. Divergence (participants at different collectives, an exited participant, a
// barrier some thread never reaches) and deadlocks are faults, with a dump of where every
// warp's lanes are. The traffic counters group each warp's accesses at its
// synchronisation points (see count_warp).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <unordered_set>

#include "internal.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define BB_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BB_EMU_ASAN 1
#endif
#endif
#ifdef BB_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#error "the emulator's context switch is written for x86-64"
#endif

// The context switch (x86-64 System V: callee-saved rbx, rbp, r12-r15).
extern "C" void bb_emu_swap(void** save_sp, void* load_sp);
extern "C" void bb_emu_trampoline();
__asm__(R"(
  .text
  .globl bb_emu_swap
  .hidden bb_emu_swap
  .type bb_emu_swap, @function
  .p2align 4
bb_emu_swap:
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
  .size bb_emu_swap, .-bb_emu_swap

  .globl bb_emu_trampoline
  .hidden bb_emu_trampoline
  .type bb_emu_trampoline, @function
  .p2align 4
bb_emu_trampoline:
  .cfi_startproc
  .cfi_undefined rip
  movq %rbx, %rdi
  callq *%r12
  ud2
  .cfi_endproc
  .size bb_emu_trampoline, .-bb_emu_trampoline
)");

namespace barbell::emu {

__thread ThreadView* t_view = nullptr;
__thread ThreadCtx* t_cur = nullptr;
__thread int t_nocheck = 0;

namespace {

Options make_options() {
  Options o;
  auto env = [](const char* n) -> const char* {
    const char* v = std::getenv(n);
    return v && *v ? v : nullptr;
  };
  if (const char* v = env("BARBELL_EMU_ORDER")) {
    if (!std::strcmp(v, "reverse"))
      o.order = Order::reverse;
    else if (!std::strcmp(v, "random"))
      o.order = Order::random;
    else
      o.order = Order::forward;
  }
  if (const char* v = env("BARBELL_EMU_SEED")) o.seed = std::strtoull(v, nullptr, 10);
  if (const char* v = env("BARBELL_EMU_CHECK_ORDER")) o.check_order = std::strcmp(v, "0") != 0;
  if (const char* v = env("BARBELL_EMU_UNINIT")) o.uninit_is_error = std::strcmp(v, "warn") != 0;
  if (const char* v = env("BARBELL_EMU_SYNC")) o.eager = std::strcmp(v, "0") != 0;
  if (const char* v = env("BARBELL_EMU_QUIET")) o.quiet = std::strcmp(v, "0") != 0;
  if (const char* v = env("BARBELL_EMU_DEVICES")) o.devices = std::max(1, std::min(8, std::atoi(v)));
  if (const char* v = env("BARBELL_EMU_RACECHECK")) o.race_check = std::strcmp(v, "0") != 0;
  if (const char* v = env("BB_SIM_RACECHECK")) o.race_check = std::strcmp(v, "0") != 0;
  if (const char* v = env("BARBELL_EMU_MEMORY_GB"))
    o.arena_bytes = static_cast<size_t>(std::max(1, std::atoi(v))) << 30;
  return o;
}

// The launch being run (one at a time: the runtime holds its lock).
LaunchCtx* g_launch = nullptr;

// Thread stacks, kept between launches.
struct Stacks {
  char* base = nullptr;
  size_t len = 0, stride = 0;
  ~Stacks() {
    if (base) munmap(base, len);
  }
} g_stacks;

// The scheduler's stack, for the sanitizer annotations.
void* g_main_sp = nullptr;
const void* g_main_bottom = nullptr;
size_t g_main_size = 0;
void* g_main_fake = nullptr;

void asan_start(void** fake, const void* bottom, size_t size) {
#ifdef BB_EMU_ASAN
  __sanitizer_start_switch_fiber(fake, bottom, size);
#else
  (void)fake, (void)bottom, (void)size;
#endif
}
void asan_finish_in_thread(void* fake) {
#ifdef BB_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, &g_main_bottom, &g_main_size);
#else
  (void)fake;
#endif
}
void asan_finish_in_main() {
#ifdef BB_EMU_ASAN
  __sanitizer_finish_switch_fiber(g_main_fake, nullptr, nullptr);
#endif
}

void to_scheduler(ThreadCtx& t) {
  asan_start(&t.asan_fake, g_main_bottom, g_main_size);
  t.nocheck = t_nocheck;
  t_cur = nullptr;
  t_view = nullptr;
  bb_emu_swap(&t.sp, g_main_sp);
  t_cur = &t;
  t_view = &t.view;
  t_nocheck = t.nocheck;
  asan_finish_in_thread(t.asan_fake);
}

void on_exit(ThreadCtx& t);

void thread_entry(ThreadCtx* t) noexcept {
  asan_finish_in_thread(nullptr);
  t_cur = t;
  t_view = &t->view;
  t_nocheck = 0;  // the kernel's own code is checked
  LaunchCtx& L = *g_launch;
  try {
    if (L.thunk) {
      // This thread's own copy of the kernel's arguments, on its stack.
      alignas(64) unsigned char params[kMaxParamBlock];
      {
        NoCheck guard;  // the launch's copy of the arguments is the emulator's memory
        std::memcpy(params, L.params, L.param_bytes);
      }
      L.thunk(params);
    } else {
      (*L.body)();
    }
    NoCheck guard;  // the emulator's bookkeeping from here on
    on_exit(*t);
  } catch (...) {
    ++t_nocheck;
    if (!L.failure) L.failure = std::current_exception();
    t->st = TSt::done;
  }
  t_cur = nullptr;
  t_view = nullptr;
  t_nocheck = 1;  // back in the scheduler
  asan_start(nullptr, g_main_bottom, g_main_size);
  void* dummy;
  bb_emu_swap(&dummy, g_main_sp);
  std::abort();  // never resumed
}

void init_stacks(int n) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t per = ((options().stack_bytes + page - 1) / page) * page + page;  // + a guard page
  const size_t need = per * static_cast<size_t>(n);
  if (g_stacks.base && g_stacks.stride == per && g_stacks.len >= need) return;
  if (g_stacks.base) munmap(g_stacks.base, g_stacks.len);
  g_stacks.base = nullptr;
  void* m = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) throw Fault("emulator: cannot map the stacks of " + std::to_string(n) + " threads");
  g_stacks.base = static_cast<char*>(m);
  g_stacks.len = need;
  g_stacks.stride = per;
  for (int i = 0; i < n; ++i) mprotect(g_stacks.base + per * static_cast<size_t>(i), page, PROT_NONE);
  set_stack_range(reinterpret_cast<uintptr_t>(g_stacks.base), need);
}

void make_context(ThreadCtx& t) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  char* lo = g_stacks.base + g_stacks.stride * static_cast<size_t>(t.tid) + page;
  const size_t size = g_stacks.stride - page;
  t.stack_lo = lo;
  t.stack_size = size;
#ifdef BB_EMU_ASAN
  __asan_unpoison_memory_region(lo, size);
#endif
  uintptr_t top = (reinterpret_cast<uintptr_t>(lo) + size) & ~static_cast<uintptr_t>(15);
  void** sp = reinterpret_cast<void**>(top) - 7;  // r15 r14 r13 r12 rbx rbp ret
  sp[0] = nullptr;
  sp[1] = nullptr;
  sp[2] = nullptr;
  sp[3] = reinterpret_cast<void*>(&thread_entry);
  sp[4] = &t;
  sp[5] = nullptr;
  sp[6] = reinterpret_cast<void*>(&bb_emu_trampoline);
  t.sp = sp;
}

const char* op_name(WOp op) {
  switch (op) {
    case WOp::none: return "none";
    case WOp::syncwarp: return "__syncwarp";
    case WOp::shfl: return "__shfl*_sync";
    case WOp::ballot: return "__ballot_sync/__any_sync/__all_sync";
    case WOp::ldmatrix: return "ldmatrix_x4";
    case WOp::ldmatrix_trans: return "ldmatrix_x4_trans";
    case WOp::mma_bf16: return "mma_16816<bf16>";
    case WOp::mma_f16: return "mma_16816<f16>";
  }
  return "?";
}

std::string hex(unsigned m) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", m);
  return b;
}

std::string dump_states() {
  LaunchCtx& L = *g_launch;
  std::ostringstream os;
  for (int w = 0; w < L.nwarps; ++w) {
    os << "\n  warp " << w << ":";
    const int lo = w * 32, hi = std::min(lo + 32, L.nthreads);
    int i = lo;
    while (i < hi) {
      const ThreadCtx& t = L.threads[static_cast<size_t>(i)];
      int j = i + 1;
      while (j < hi && L.threads[static_cast<size_t>(j)].st == t.st &&
             (t.st != TSt::warp_wait || (L.threads[static_cast<size_t>(j)].op == t.op &&
                                         L.threads[static_cast<size_t>(j)].mask == t.mask)))
        ++j;
      os << " lanes " << (i - lo) << "-" << (j - 1 - lo) << " ";
      switch (t.st) {
        case TSt::runnable: os << "runnable"; break;
        case TSt::done: os << "exited"; break;
        case TSt::block_wait: os << "in __syncthreads"; break;
        case TSt::warp_wait: os << "in " << op_name(t.op) << " (mask " << hex(t.mask) << ")"; break;
      }
      os << ";";
      i = j;
    }
  }
  return os.str();
}

// ---- traffic: group a warp's accesses -------------------------------------------------------
//
// The lanes of a warp run one after another here, so which accesses a GPU would issue
// together is reconstructed: between two synchronisation points of the warp, the k-th
// global (or shared) access of every lane forms one warp-level request. Exact for code
// in which every lane makes the same sequence of accesses (the common case); for
// divergent code it is an approximation.
//   global: the 32-byte sectors a request touches, against the fewest that could hold
//     the bytes it asks for (coalescing efficiency), and the distinct sectors of the
//     launch (an estimate of DRAM traffic without reuse through the caches);
//   shared: wavefronts: a request is served in phases (32-bit and smaller accesses:
//     one phase of 32 lanes; 64-bit: two of 16; 128-bit: four of 8), each phase taking
//     as many wavefronts as the most-used bank has distinct 4-byte words; the ideal is
//     one per phase (bank conflicts are the difference).

struct LaunchTraffic {
  std::unordered_set<uintptr_t> read_sectors, write_sectors;
};
LaunchTraffic g_traffic;

void count_warp(LaunchCtx& L, int w) {
  const int lo = w * 32, hi = std::min(lo + 32, L.nthreads);
  size_t longest = 0;
  for (int i = lo; i < hi; ++i) longest = std::max(longest, L.threads[static_cast<size_t>(i)].log.size());
  if (longest == 0) return;
  KernelStats& S = *L.stats;
  // Split each lane's log into its global and shared sequences.
  std::array<std::vector<const Acc*>, 32> glog, slog;
  for (int i = lo; i < hi; ++i) {
    for (const Acc& a : L.threads[static_cast<size_t>(i)].log)
      (a.shared ? slog : glog)[static_cast<size_t>(i - lo)].push_back(&a);
  }
  size_t gmax = 0, smax = 0;
  for (int l = 0; l < hi - lo; ++l) {
    gmax = std::max(gmax, glog[static_cast<size_t>(l)].size());
    smax = std::max(smax, slog[static_cast<size_t>(l)].size());
  }
  std::vector<uintptr_t> sectors;
  for (size_t k = 0; k < gmax; ++k) {
    sectors.clear();
    std::vector<std::pair<uintptr_t, uintptr_t>> bytes;  // [lo, hi) ranges
    for (int l = 0; l < hi - lo; ++l) {
      const auto& v = glog[static_cast<size_t>(l)];
      if (k >= v.size()) continue;
      const Acc& a = *v[k];
      for (uintptr_t s = a.addr >> 5; s <= (a.addr + a.size - 1) >> 5; ++s) sectors.push_back(s);
      bytes.emplace_back(a.addr, a.addr + a.size);
      (a.write ? g_traffic.write_sectors : g_traffic.read_sectors).insert(a.addr >> 5);
      if (((a.addr + a.size - 1) >> 5) != (a.addr >> 5))
        (a.write ? g_traffic.write_sectors : g_traffic.read_sectors).insert((a.addr + a.size - 1) >> 5);
    }
    std::sort(sectors.begin(), sectors.end());
    const size_t distinct =
        static_cast<size_t>(std::unique(sectors.begin(), sectors.end()) - sectors.begin());
    // distinct bytes asked for
    std::sort(bytes.begin(), bytes.end());
    uint64_t nbytes = 0;
    uintptr_t end = 0;
    for (const auto& r : bytes) {
      const uintptr_t b = std::max(r.first, end);
      if (r.second > b) nbytes += r.second - b;
      end = std::max(end, r.second);
    }
    ++S.g_requests;
    S.g_sectors += distinct;
    S.g_ideal_sectors += (nbytes + 31) / 32;
  }
  for (size_t k = 0; k < smax; ++k) {
    std::array<const Acc*, 32> req{};
    unsigned width = 4;
    for (int l = 0; l < hi - lo; ++l) {
      const auto& v = slog[static_cast<size_t>(l)];
      if (k < v.size()) {
        req[static_cast<size_t>(l)] = v[k];
        width = std::max(width, v[k]->size);
      }
    }
    const int lanes_per_phase = width >= 16 ? 8 : (width >= 8 ? 16 : 32);
    uint64_t wf = 0, ideal = 0;
    for (int p = 0; p < 32; p += lanes_per_phase) {
      std::array<std::vector<uintptr_t>, 32> bank_words;
      bool any = false;
      for (int l = p; l < p + lanes_per_phase && l < hi - lo; ++l) {
        const Acc* a = req[static_cast<size_t>(l)];
        if (!a) continue;
        any = true;
        for (uintptr_t word = a->addr >> 2; word <= (a->addr + a->size - 1) >> 2; ++word)
          bank_words[word % 32].push_back(word);
      }
      if (!any) continue;
      ++ideal;
      size_t worst = 1;
      for (auto& v : bank_words) {
        std::sort(v.begin(), v.end());
        worst = std::max(worst, static_cast<size_t>(std::unique(v.begin(), v.end()) - v.begin()));
      }
      wf += worst;
    }
    ++S.s_requests;
    S.s_wavefronts += wf;
    S.s_ideal_wavefronts += ideal;
  }
  for (int i = lo; i < hi; ++i) L.threads[static_cast<size_t>(i)].log.clear();
}

void count_all_warps(LaunchCtx& L) {
  for (int w = 0; w < L.nwarps; ++w) count_warp(L, w);
}

// ---- collectives ---------------------------------------------------------------------------

void exec_group(LaunchCtx& L, int w, WarpGroup& g);

void warp_arrive(ThreadCtx& t, WOp op, unsigned mask) {
  LaunchCtx& L = *g_launch;
  WarpCtx& wc = L.warps[static_cast<size_t>(t.warp)];
  const unsigned me = 1u << t.lane;
  if (!(mask & me))
    fault(std::string(op_name(op)) + " with mask " + hex(mask) + " that does not name the calling lane " +
          std::to_string(t.lane) + " (undefined behaviour)");
  if (mask & ~wc.exists)
    fault(std::string(op_name(op)) + " with mask " + hex(mask) +
          " naming lanes the warp does not have (block of " + std::to_string(L.nthreads) +
          " threads; existing lanes " + hex(wc.exists) + ")");
  if (mask & wc.done) {
    const int l = __builtin_ctz(mask & wc.done);
    fault(std::string(op_name(op)) + " with mask " + hex(mask) + " while lane " + std::to_string(l) +
          " of the warp has exited (the collective would never complete)" + dump_states());
  }
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u) || !((wc.exists >> l) & 1u)) continue;
    const ThreadCtx& o = L.threads[static_cast<size_t>(t.warp * 32 + l)];
    if (o.st == TSt::block_wait)
      fault(std::string(op_name(op)) + " while lane " + std::to_string(l) +
            ", which its mask names, waits in __syncthreads (divergent warp)" + dump_states());
  }
  WarpGroup* grp = nullptr;
  for (WarpGroup& g : wc.groups) {
    if (g.mask == mask) {
      grp = &g;
    } else if (g.mask & mask) {
      fault(std::string(op_name(op)) + " with mask " + hex(mask) + " while lanes " + hex(g.arrived) +
            " wait in " + op_name(g.op) + " with the overlapping mask " + hex(g.mask) + " (divergent warp)" +
            dump_states());
    }
  }
  if (!grp) {
    wc.groups.push_back(WarpGroup{mask, 0, op});
    grp = &wc.groups.back();
  } else if (grp->op != op) {
    fault(std::string(op_name(op)) + " while lanes " + hex(grp->arrived) + " of the warp wait in " +
          op_name(grp->op) + " with the same mask (divergent warp)" + dump_states());
  }
  t.op = op;
  t.mask = mask;
  t.st = TSt::warp_wait;
  grp->arrived |= me;
  if (grp->arrived == mask) {
    const WarpGroup done = *grp;
    wc.groups.erase(wc.groups.begin() + (grp - wc.groups.data()));
    WarpGroup g = done;
    exec_group(L, t.warp, g);
    for (int l = 0; l < 32; ++l) {
      if (!((mask >> l) & 1u)) continue;
      ThreadCtx& o = L.threads[static_cast<size_t>(t.warp * 32 + l)];
      o.st = TSt::runnable;
      o.op = WOp::none;
    }
    if (op == WOp::syncwarp) {
      ++counters().warp_syncs;
      if ((mask & wc.exists) == wc.exists) {
        ++wc.full_syncs;
        wc.sync_epoch = L.epoch_full;
      }
    } else if (op == WOp::shfl) {
      ++counters().shfl;
    }
    ++L.stats->warp_collectives;
    count_warp(L, t.warp);
  } else {
    to_scheduler(t);
  }
}

}  // namespace

// Implemented in flash_prims.cpp (ldmatrix, mma).
void exec_flash_collective(LaunchCtx& L, int w, WOp op, unsigned mask);

namespace {

void exec_group(LaunchCtx& L, int w, WarpGroup& g) {
  const int lo = w * 32;
  auto lane = [&](int l) -> ThreadCtx& { return L.threads[static_cast<size_t>(lo + l)]; };
  switch (g.op) {
    case WOp::syncwarp: return;
    case WOp::ballot: {
      unsigned bits = 0;
      for (int l = 0; l < 32; ++l)
        if (((g.mask >> l) & 1u) && lane(l).pred) bits |= 1u << l;
      for (int l = 0; l < 32; ++l)
        if ((g.mask >> l) & 1u) lane(l).out = bits;
      return;
    }
    case WOp::shfl: {
      // CUDA C++ Programming Guide, "Warp Shuffle Functions": width splits the warp into
      // segments of `width` lanes, each a separate entity with logical lanes 0..width-1.
      uint64_t vals[32];
      for (int l = 0; l < 32; ++l) vals[l] = ((g.mask >> l) & 1u) ? lane(l).in : 0;
      for (int l = 0; l < 32; ++l) {
        if (!((g.mask >> l) & 1u)) continue;
        ThreadCtx& t = lane(l);
        const int width = t.width;
        if (width < 1 || width > 32 || (width & (width - 1)) != 0)
          fault("__shfl*_sync with width " + std::to_string(width) + " (must be a power of 2 in 1..32)");
        const int base = (l / width) * width, logical = l - base;
        int src = l;
        switch (t.kind) {
          case Shfl::Idx: src = base + (((t.arg % width) + width) % width); break;
          case Shfl::Up: src = logical - t.arg >= 0 ? l - t.arg : l; break;
          case Shfl::Down: src = logical + t.arg < width ? l + t.arg : l; break;
          case Shfl::Xor: {
            const int x = l ^ t.arg;
            if (t.arg < 0 || t.arg > 31) fault("__shfl_xor_sync with lane mask " + std::to_string(t.arg));
            // "if they attempt to access elements from later groups of threads their own
            // value of var will be returned"
            src = x >= base + width ? l : x;
            break;
          }
        }
        if (!((g.mask >> src) & 1u))
          fault("__shfl*_sync: lane " + std::to_string(l) + " reads lane " + std::to_string(src) +
                ", which is not in the mask " + hex(g.mask) + " (undefined value)");
        if (lane(src).size != t.size)
          fault("__shfl*_sync: lanes " + std::to_string(l) + " and " + std::to_string(src) +
                " shuffle values of different sizes");
        t.out = vals[src];
      }
      return;
    }
    default: exec_flash_collective(L, w, g.op, g.mask); return;
  }
}

void block_arrive(ThreadCtx& t) {
  LaunchCtx& L = *g_launch;
  if (L.ndone > 0) {
    int who = -1;
    for (const ThreadCtx& o : L.threads)
      if (o.st == TSt::done) {
        who = o.tid;
        break;
      }
    fault("__syncthreads after thread " + std::to_string(who) +
          " of the block exited: a barrier must be reached by every thread of the block (CUDA C++ guide: "
          "undefined, it may hang)" +
          dump_states());
  }
  WarpCtx& wc = L.warps[static_cast<size_t>(t.warp)];
  for (const WarpGroup& g : wc.groups)
    if ((g.mask >> t.lane) & 1u)
      fault("__syncthreads while lanes " + hex(g.arrived) + " of its warp wait in " + op_name(g.op) +
            " with a mask that names this lane (divergent warp)" + dump_states());
  t.st = TSt::block_wait;
  if (++L.block_arrived == L.nthreads) {
    L.block_arrived = 0;
    flash_barrier_check(L);  // before the epoch moves: it looks at this interval's reads
    ++L.epoch;
    ++L.epoch_full;
    ++L.barrier_count;
    ++L.stats->barriers;
    uint64_t count = 0;  // __syncthreads_count's answer
    for (const ThreadCtx& o : L.threads) count += o.pred ? 1 : 0;
    for (ThreadCtx& o : L.threads) {
      o.st = TSt::runnable;
      o.out = count;
    }
    for (WarpCtx& w : L.warps) ++w.full_syncs;
    ++counters().block_syncs;
    count_all_warps(L);
    // the flash primitives' snapshot of shared memory
    if (!L.shadow16.empty()) std::memcpy(L.shadow16.data(), L.dsmem, L.dsmem_bytes);
  } else {
    to_scheduler(t);
  }
}

void on_exit(ThreadCtx& t) {
  LaunchCtx& L = *g_launch;
  flash_exit_count(t);
  t.st = TSt::done;
  ++L.ndone;
  WarpCtx& wc = L.warps[static_cast<size_t>(t.warp)];
  wc.done |= 1u << t.lane;
  if (L.block_arrived > 0)
    fault("exited while " + std::to_string(L.block_arrived) +
          " threads of the block wait in __syncthreads (every thread must reach a barrier)" + dump_states());
  for (const WarpGroup& g : wc.groups)
    if ((g.mask >> t.lane) & 1u)
      fault(std::string("exited while lanes ") + hex(g.arrived) + " of its warp wait in " + op_name(g.op) +
            " with a mask that names it" + dump_states());
  if ((wc.done & wc.exists) == wc.exists) count_warp(L, t.warp);
}

void run_block(LaunchCtx& L, std::mt19937_64& rng, Order order, std::vector<int>& sched) {
  const int n = L.nthreads;
  L.threads.assign(static_cast<size_t>(n), ThreadCtx{});
  L.warps.assign(static_cast<size_t>(L.nwarps), WarpCtx{});
  for (int w = 0; w < L.nwarps; ++w) {
    const int lanes = std::min(32, n - w * 32);
    L.warps[static_cast<size_t>(w)].exists = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  }
  L.block_arrived = 0;
  L.ndone = 0;
  L.epoch = 0;
  L.epoch_full = 0;
  L.barrier_count = 0;
  block_begin(L);
  const uint32_t bx = L.block.x, by = L.block.y;
  for (int i = 0; i < n; ++i) {
    ThreadCtx& t = L.threads[static_cast<size_t>(i)];
    t.tid = i;
    t.warp = i >> 5;
    t.lane = i & 31;
    t.gtid = static_cast<uint32_t>(L.block_linear * static_cast<uint64_t>(n) + static_cast<uint64_t>(i));
    t.view.thread_idx = make_uint3(static_cast<unsigned>(i) % bx, (static_cast<unsigned>(i) / bx) % by,
                                   static_cast<unsigned>(i) / (bx * by));
    t.view.block_idx = L.bidx;
    t.view.block_dim = L.block;
    t.view.grid_dim = L.grid;
    make_context(t);
  }
  ++L.stats->blocks;
  ++counters().blocks;
  sched.resize(static_cast<size_t>(n));
  for (;;) {
    for (int i = 0; i < n; ++i) sched[static_cast<size_t>(i)] = i;
    if (order == Order::reverse) std::reverse(sched.begin(), sched.end());
    if (order == Order::random) std::shuffle(sched.begin(), sched.end(), rng);
    bool ran = false;
    for (int i : sched) {
      ThreadCtx& t = L.threads[static_cast<size_t>(i)];
      if (t.st != TSt::runnable) continue;
      ran = true;
      ++counters().switches;
      asan_start(&g_main_fake, t.stack_lo, t.stack_size);
      bb_emu_swap(&g_main_sp, t.sp);
      asan_finish_in_main();
      t_nocheck = 1;
      if (L.failure) std::rethrow_exception(L.failure);
    }
    if (L.ndone == n) break;
    if (!ran) {
      t_cur = nullptr;
      std::ostringstream os;
      os << "kernel " << L.site.kernel << " (" << L.site.file << ":" << L.site.line << ") block (" << L.bidx.x
         << "," << L.bidx.y << "," << L.bidx.z << "): deadlock: no thread can run" << dump_states();
      throw CodedFault(os.str(), cudaErrorLaunchFailure);
    }
  }
}

}  // namespace

Options& options() {
  static Options o = make_options();
  return o;
}

LaunchCtx* cur_launch() { return g_launch; }

ThreadCtx& cur_thread(const char* what) {
  ThreadCtx* t = t_cur;
  if (!t) outside_kernel(what);
  return *t;
}

void outside_kernel(const char* what) {
  throw Fault(std::string("emulator: ") + what +
              " used outside a kernel (host code, or a kernel called directly "
              "instead of launched)");
}

std::string where() {
  std::ostringstream os;
  if (LaunchCtx* L = g_launch) {
    os << "kernel " << L->site.kernel << " (" << L->site.file << ":" << L->site.line << ")";
    os << " block (" << L->bidx.x << "," << L->bidx.y << "," << L->bidx.z << ")";
    if (ThreadCtx* t = t_cur) {
      os << " thread (" << t->view.thread_idx.x << "," << t->view.thread_idx.y << "," << t->view.thread_idx.z
         << ") [warp " << t->warp << " lane " << t->lane << "]";
    }
  } else if (const OpInfo* op = running_op()) {
    os << "operation " << (op->name ? *op->name : std::string("?"));
  } else {
    os << "host";
  }
  return os.str();
}

void fault(const std::string& what, cudaError_t code) { throw CodedFault(where() + ": " + what, code); }

// BARBELL_EMU_REPORT=FILE: at exit, one line per kernel (launch site) that ran, with its
// launches, blocks and threads (which tests executed which kernels, at which sizes).
void write_report() {
  const char* path = std::getenv("BARBELL_EMU_REPORT");
  if (!path || !*path) return;
  FILE* f = std::fopen(path, "a");
  if (!f) return;
  // Which program (and arguments) ran them: /proc/self/cmdline, NULs as spaces, the
  // program's directory left out.
  std::string prog;
  if (FILE* c = std::fopen("/proc/self/cmdline", "rb")) {
    for (int ch; (ch = std::fgetc(c)) != EOF;) prog.push_back(ch ? static_cast<char>(ch) : ' ');
    std::fclose(c);
  }
  while (!prog.empty() && prog.back() == ' ') prog.pop_back();
  const size_t first_space = prog.find(' ');
  const size_t slash = prog.rfind('/', first_space);
  if (slash != std::string::npos) prog.erase(0, slash + 1);
  for (const auto& [name, k] : kernel_stats())
    std::fprintf(f, "%s\t%s\t%llu launches\t%llu blocks\t%llu threads\n", prog.c_str(), name.c_str(),
                 static_cast<unsigned long long>(k.launches), static_cast<unsigned long long>(k.blocks),
                 static_cast<unsigned long long>(k.threads));
  std::fclose(f);
}

std::map<std::string, KernelStats>& kernel_stats() {
  static auto* m = [] {
    std::atexit(write_report);
    return new std::map<std::string, KernelStats>();  // never destroyed: read at exit
  }();
  return *m;
}

void run_launch(LaunchCtx& L, Order order) {
  if (g_launch) throw Fault("emulator: a kernel launched from inside a kernel");
  // The scheduler runs with the checks off; each thread switches them on for itself.
  struct SchedulerChecks {
    int saved = t_nocheck;
    SchedulerChecks() { t_nocheck = 1; }
    ~SchedulerChecks() { t_nocheck = saved; }
  } scheduler_checks;
  L.nthreads = static_cast<int>(L.block.x * L.block.y * L.block.z);
  L.nwarps = (L.nthreads + 31) / 32;
  L.nblocks = static_cast<uint64_t>(L.grid.x) * L.grid.y * L.grid.z;
  std::string key = std::string(L.site.kernel) + " @ " + L.site.file + ":" + std::to_string(L.site.line);
  {
    const char* slash = std::strrchr(L.site.file, '/');
    key = std::string(L.site.kernel) + " (" + (slash ? slash + 1 : L.site.file) + ":" +
          std::to_string(L.site.line) + ")";
  }
  KernelStats& S = kernel_stats()[key];
  S.name = key;
  if (!L.replay) {
    ++S.launches;
    S.threads += L.nblocks * static_cast<uint64_t>(L.nthreads);
  }
  // The replay of the order check is not counted twice.
  KernelStats scratch;
  L.stats = L.replay ? &scratch : &S;
  init_stacks(L.nthreads);
  // dynamic shared memory, 128-byte aligned, with room for the flash primitives' checks
  std::vector<char> dstore(L.smem + 256);
  L.dsmem = dstore.data() + (128 - reinterpret_cast<uintptr_t>(dstore.data()) % 128) % 128;
  L.dsmem_bytes = L.smem;
  L.gran.assign((L.smem + 15) / 16, Granule16{});
  L.shadow16.assign(L.smem, static_cast<char>(0xff));
  g_traffic = LaunchTraffic{};
  g_launch = &L;
  struct Reset {
    LaunchCtx& L;
    ~Reset() {
      launch_end(L);
      g_launch = nullptr;
      t_cur = nullptr;
      t_view = nullptr;
      L.threads.clear();
      L.warps.clear();
      L.dsmem = nullptr;
    }
  } reset{L};
  launch_begin(L);
  std::mt19937_64 rng(options().seed ^ (static_cast<uint64_t>(L.op) * 0x9e3779b97f4a7c15ull));
  std::vector<uint64_t> blocks(L.nblocks);
  for (uint64_t i = 0; i < L.nblocks; ++i) blocks[i] = i;
  if (order == Order::reverse) std::reverse(blocks.begin(), blocks.end());
  if (order == Order::random) std::shuffle(blocks.begin(), blocks.end(), rng);
  std::vector<int> sched;
  for (uint64_t b : blocks) {
    L.block_linear = b;
    L.bidx = make_uint3(static_cast<unsigned>(b % L.grid.x), static_cast<unsigned>((b / L.grid.x) % L.grid.y),
                        static_cast<unsigned>(b / (static_cast<uint64_t>(L.grid.x) * L.grid.y)));
    std::memset(L.dsmem, 0xff, L.smem);  // poison (NaN in every float type)
    std::fill(L.gran.begin(), L.gran.end(), Granule16{});
    std::fill(L.shadow16.begin(), L.shadow16.end(), static_cast<char>(0xff));
    run_block(L, rng, order, sched);
  }
  S.g_unique_read_sectors += L.replay ? 0 : g_traffic.read_sectors.size();
  S.g_unique_write_sectors += L.replay ? 0 : g_traffic.write_sectors.size();
}

// ---- the entry points kernel code calls ------------------------------------------------------

void syncthreads() {
  NoCheck guard;
  ThreadCtx& t = cur_thread("__syncthreads");
  t.pred = false;
  block_arrive(t);
}

int syncthreads_count(int pred) {
  NoCheck guard;
  ThreadCtx& t = cur_thread("__syncthreads_count");
  t.pred = pred != 0;
  block_arrive(t);
  return static_cast<int>(t.out);
}

void syncwarp(unsigned mask) {
  NoCheck guard;
  warp_arrive(cur_thread("__syncwarp"), WOp::syncwarp, mask);
}

uint64_t shfl(unsigned mask, uint64_t bits, unsigned size, Shfl kind, int arg, int width) {
  NoCheck guard;
  ThreadCtx& t = cur_thread("__shfl*_sync");
  t.in = bits;
  t.size = size;
  t.kind = kind;
  t.arg = arg;
  t.width = width;
  warp_arrive(t, WOp::shfl, mask);
  return t.out;
}

unsigned ballot(unsigned mask, bool pred) {
  NoCheck guard;
  ThreadCtx& t = cur_thread("__ballot_sync");
  t.pred = pred;
  warp_arrive(t, WOp::ballot, mask);
  return static_cast<unsigned>(t.out);
}

unsigned activemask() {
  NoCheck guard;
  ThreadCtx& t = cur_thread("__activemask");
  const WarpCtx& wc = g_launch->warps[static_cast<size_t>(t.warp)];
  return wc.exists & ~wc.done;
}

int lane_id() { return cur_thread("lane id").lane; }

uint3 thread_idx() {
  NoCheck guard;
  return cur_thread("threadIdx").view.thread_idx;
}
uint3 block_idx() {
  NoCheck guard;
  return cur_thread("blockIdx").view.block_idx;
}
dim3 block_dim() {
  NoCheck guard;
  return cur_thread("blockDim").view.block_dim;
}
dim3 grid_dim() {
  NoCheck guard;
  return cur_thread("gridDim").view.grid_dim;
}

char* dynamic_smem() {
  NoCheck guard;
  cur_thread("dynamic shared memory");
  return g_launch->dsmem;
}

void checks_off() { ++t_nocheck; }
void checks_on() { --t_nocheck; }

// For the flash primitives (flash_prims.cpp): a warp-wide collective of `op`.
void flash_warp_collective(WOp op) {
  // (the calling primitive holds the NoCheck)
  ThreadCtx& t = cur_thread("a flash primitive");
  warp_arrive(t, op, g_launch->warps[static_cast<size_t>(t.warp)].exists);
}

}  // namespace barbell::emu

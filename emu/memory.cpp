// The emulated device's memory and the checks on every access to it.
//
// Device memory is one arena (mmap, reserved up front), kept PROT_NONE while no device
// work runs, so a host dereference of a device pointer traps (a SIGSEGV handler names
// the allocation). Allocations are page-granular with a guard page on each side and a
// page table (page -> allocation), so a bounds check is a table lookup and byte-exact.
// Kernels are compiled with -fsanitize=thread's instrumentation but without its runtime:
// the __tsan_* entry points at the end of this file receive every load and store the
// kernel code makes (address, size), which is how each access is classified:
//   * the emulated thread's stack: ignored;
//   * the arena: bounds (a live allocation), alignment (an N-byte access N-aligned),
//     unwritten bytes (init masks), races between threads of one launch (different
//     blocks, or one block without a barrier between), and stream ordering against the
//     operations that last wrote and read the bytes (vector clocks, runtime.cpp);
//   * the block's dynamic shared memory, or a __shared__ variable (a function-local
//     static in the image's writable segment): unwritten bytes per block, and races
//     between barriers (same warp: ordered by a full-warp collective);
//   * read-only image data (constants): reads allowed;
//   * anything else (host heap, host globals): a fault ("kernel accessed host memory").
// The shadow state is per 8-byte granule for global memory (32 bytes of shadow each,
// reserved with the arena, populated lazily; a granule's shadow is valid only for the
// allocation id it records, so nothing is cleared at allocation) and per 4-byte granule
// for shared memory. Byte masks keep sub-granule accesses by different threads (bf16,
// bool) apart.
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "internal.hpp"

namespace barbell::emu {

// Set by the instrumentation's module constructor (__tsan_init): kernel code was built with
// the per-access hooks. Without them the emulator never sees a kernel's stores, so the
// checks that depend on them (unwritten bytes) are off.
bool g_instrumented = false;

namespace {

constexpr size_t kPage = 4096;
constexpr uint32_t kMulti = 0xffffffffu;

struct AllocRec {
  uintptr_t start = 0;
  size_t size = 0;   // as asked
  size_t pages = 0;  // data pages (guards not included)
  int device = 0;
  uint8_t state = 0;  // 1 live, 2 freed (quarantined), 3 released
  uint32_t op = 0;    // the operation that made it valid (0: valid everywhere at once)
};

struct GShadow {
  uint32_t alloc = 0;  // allocation id this entry belongs to (else: fresh)
  uint32_t w_op = 0, r_op = 0;
  uint32_t w_thread = 0, r_thread = 0;
  uint16_t w_epoch = 0, r_epoch = 0;
  uint8_t init = 0, wmask = 0, rmask = 0;
  uint8_t flags = 0;  // kWMulti, kRMulti, kAtomic
  uint32_t pad = 0;   // 32 bytes: the shadow of a page is whole pages (madvise)
};
static_assert(sizeof(GShadow) == 32, "32 bytes of shadow per 8 bytes of device memory");
constexpr uint8_t kWMulti = 1, kRMulti = 2, kAtomicW = 4;

struct SShadow {
  uint32_t gen = 0;  // block generation this entry belongs to
  uint16_t w_tid = 0, r_tid = 0;
  uint16_t w_epoch = 0, r_epoch = 0;
  uint32_t w_wsync = 0, r_wsync = 0;
  uint8_t init = 0, wmask = 0, rmask = 0, flags = 0;  // flags: 1 w valid, 2 r valid, 4 w multi, 8 r multi
};

struct Segment {
  uintptr_t lo = 0, hi = 0;
  bool writable = false;
  std::vector<SShadow> shadow;  // writable segments: the __shared__ variables
};

struct State {
  std::once_flag once;
  char* base = nullptr;
  size_t len = 0;
  size_t used_pages = 0;                        // bump pointer (pages)
  std::vector<uint32_t>* page_alloc = nullptr;  // page -> allocation id (0: none)
  GShadow* gshadow = nullptr;
  std::vector<AllocRec> allocs{AllocRec{}};  // id 0 unused
  std::multimap<size_t, size_t> free_runs;   // pages -> first page of a free run
  std::map<size_t, size_t> free_by_start;    // first page -> pages
  std::deque<uint32_t> quarantine;
  size_t quarantined_bytes = 0;
  size_t in_use = 0;
  int protect_depth = 0;
  uintptr_t stack_lo = 0;
  size_t stack_len = 0;
  std::vector<Segment> segments;
  std::vector<std::pair<uintptr_t, uintptr_t>> host_globals;
  std::vector<SShadow> dyn_shadow;
  bool allow_host = false;
  uintptr_t host_stack_lo = 0, host_stack_hi = 0;  // the launching OS thread's stack (tests/sim)
  // BARBELL_EMU_CHECK_ORDER
  bool undo_on = false;
  std::unordered_map<uintptr_t, std::pair<uint64_t, GShadow>> undo;  // granule -> (bytes, shadow)
  std::unordered_map<uintptr_t, bool> undo_atomic;
};
State& S() {
  static State* s = new State();  // never destroyed: kernels may run during exit
  return *s;
}

// ---- the image segments (read-only constants, writable: __shared__ statics) ---------------

int collect_segments(dl_phdr_info* info, size_t, void* data) {
  auto* segs = static_cast<std::vector<Segment>*>(data);
  const char* name = info->dlpi_name;
  // the main program and barbell's own images (libbarbell, the test programs)
  const bool ours = !name || !*name || std::strstr(name, "barbell") || std::strstr(name, "sim_test") ||
                    std::strstr(name, "emu_test");
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    Segment s;
    s.lo = info->dlpi_addr + ph.p_vaddr;
    s.hi = s.lo + ph.p_memsz;
    s.writable = (ph.p_flags & PF_W) != 0;
    if (s.writable && !ours) continue;                 // other libraries' data is host memory to a kernel
    if (!s.writable && (ph.p_flags & PF_X)) continue;  // code
    segs->push_back(std::move(s));
  }
  return 0;
}

void sigsegv_handler(int sig, siginfo_t* si, void* uc);
struct sigaction g_prev_segv;

void init() {
  State& s = S();
  std::call_once(s.once, [&s] {
    size_t want = options().arena_bytes;
    void* m = MAP_FAILED;
    void* sh = MAP_FAILED;
    while (want >= (size_t(256) << 20)) {
      m = mmap(nullptr, want, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m != MAP_FAILED) {
        sh = mmap(nullptr, want / 8 * sizeof(GShadow), PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (sh != MAP_FAILED) break;
        munmap(m, want);
        m = MAP_FAILED;
      }
      want /= 2;
    }
    if (m == MAP_FAILED) {
      std::fprintf(stderr, "barbell emulator: cannot reserve device memory\n");
      return;
    }
    s.base = static_cast<char*>(m);
    s.len = want;
    s.gshadow = static_cast<GShadow*>(sh);
    s.page_alloc = new std::vector<uint32_t>(want / kPage, 0);
    dl_iterate_phdr(&collect_segments, &s.segments);
    for (Segment& g : s.segments)
      if (g.writable) g.shadow.assign((g.hi - g.lo + 3) / 4, SShadow{});
    struct sigaction sa {};
    sa.sa_sigaction = &sigsegv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
  });
}

// -- allocation records --------------------------------------------------------------------------

AllocRec* alloc_at(uintptr_t a, uint32_t* id_out = nullptr) {
  State& s = S();
  const uintptr_t b = reinterpret_cast<uintptr_t>(s.base);
  if (a < b || a >= b + s.len) return nullptr;
  const uint32_t id = (*s.page_alloc)[(a - b) / kPage];
  if (id_out) *id_out = id;
  return id ? &s.allocs[id] : nullptr;
}

std::string describe(uintptr_t a) {
  State& s = S();
  std::ostringstream os;
  os << "0x" << std::hex << a << std::dec;
  uint32_t id = 0;
  if (AllocRec* r = alloc_at(a, &id)) {
    const char* st = r->state == 1 ? "" : (r->state == 2 ? " (freed)" : " (released)");
    const int64_t off = static_cast<int64_t>(a) - static_cast<int64_t>(r->start);
    os << ": " << off << " bytes ";
    if (off >= 0 && static_cast<size_t>(off) < r->size)
      os << "into";
    else if (off < 0)
      os << "(" << -off << " before the start of)";
    else
      os << "(" << (off - static_cast<int64_t>(r->size)) << " past the end of)";
    os << " device allocation #" << id << " of " << r->size << " bytes at 0x" << std::hex << r->start
       << std::dec << " on cuda:" << r->device << st;
    return os.str();
  }
  const uintptr_t b = reinterpret_cast<uintptr_t>(s.base);
  if (a >= b && a < b + s.len) {
    // nearest allocation
    const size_t page = (a - b) / kPage;
    for (size_t d = 1; d < 64; ++d) {
      for (int sign : {-1, 1}) {
        const int64_t p = static_cast<int64_t>(page) + sign * static_cast<int64_t>(d);
        if (p < 0 || static_cast<size_t>(p) >= s.page_alloc->size()) continue;
        if (uint32_t nid = (*s.page_alloc)[static_cast<size_t>(p)]) {
          const AllocRec& r = s.allocs[nid];
          const int64_t off = static_cast<int64_t>(a) - static_cast<int64_t>(r.start);
          os << ": in the guard zone, " << (off < 0 ? -off : off - static_cast<int64_t>(r.size)) << " bytes "
             << (off < 0 ? "before" : "past the end of") << " device allocation #" << nid << " of " << r.size
             << " bytes at 0x" << std::hex << r.start << std::dec;
          return os.str();
        }
      }
    }
    os << ": emulated device memory outside every allocation";
    return os.str();
  }
  os << ": not device memory";
  return os.str();
}

void release(uint32_t id) {
  State& s = S();
  AllocRec& r = s.allocs[id];
  const size_t first = (r.start - reinterpret_cast<uintptr_t>(s.base)) / kPage - 1;  // with the guard before
  const size_t pages = r.pages + 2;
  for (size_t p = first + 1; p < first + 1 + r.pages; ++p) (*s.page_alloc)[p] = 0;
  // Give the pages and their shadow back (both read as zero afterwards).
  madvise(s.base + first * kPage, pages * kPage, MADV_DONTNEED);
  madvise(reinterpret_cast<char*>(s.gshadow) + first * kPage / 8 * sizeof(GShadow),
          pages * kPage / 8 * sizeof(GShadow), MADV_DONTNEED);
  r.state = 3;
  // coalesce into the free lists
  size_t start = first, len = pages;
  auto next = s.free_by_start.find(start + len);
  if (next != s.free_by_start.end()) {
    len += next->second;
    for (auto it = s.free_runs.lower_bound(next->second); it != s.free_runs.end(); ++it)
      if (it->second == next->first) {
        s.free_runs.erase(it);
        break;
      }
    s.free_by_start.erase(next);
  }
  auto prev = s.free_by_start.lower_bound(start);
  if (prev != s.free_by_start.begin()) {
    --prev;
    if (prev->first + prev->second == start) {
      for (auto it = s.free_runs.lower_bound(prev->second); it != s.free_runs.end(); ++it)
        if (it->second == prev->first) {
          s.free_runs.erase(it);
          break;
        }
      start = prev->first;
      len += prev->second;
      s.free_by_start.erase(prev);
    }
  }
  s.free_by_start[start] = len;
  s.free_runs.emplace(len, start);
}

// ---- access checks -----------------------------------------------------------------------

bool in_stack(uintptr_t a) { return a - S().stack_lo < S().stack_len; }

Segment* segment_of(uintptr_t a) {
  for (Segment& g : S().segments)
    if (a >= g.lo && a < g.hi) return &g;
  return nullptr;
}

uint8_t byte_mask(uintptr_t a, size_t n, unsigned granule) {
  const unsigned off = static_cast<unsigned>(a % granule);
  const unsigned hi = std::min<unsigned>(granule, off + static_cast<unsigned>(n));
  return static_cast<uint8_t>(((1u << hi) - 1u) & ~((1u << off) - 1u));
}

[[noreturn]] void access_fault(const char* kind, uintptr_t a, size_t n, bool write, const std::string& why,
                               cudaError_t code = cudaErrorIllegalAddress) {
  std::ostringstream os;
  os << kind << " " << (write ? "write" : "read") << " of " << n << " bytes at " << describe(a);
  if (!why.empty()) os << ": " << why;
  fault(os.str(), code);
}

std::string thread_name(const LaunchCtx& L, uint32_t gtid) {
  if (gtid == kMulti) return "several threads";
  const uint64_t n = static_cast<uint64_t>(L.nthreads);
  const uint64_t b = gtid / n, t = gtid % n;
  std::ostringstream os;
  os << "thread " << t << " of block " << b;
  return os.str();
}

void save_undo(uintptr_t granule_addr, const GShadow& g) {
  State& s = S();
  if (s.undo.count(granule_addr)) return;
  uint64_t bytes;
  std::memcpy(&bytes, reinterpret_cast<const void*>(granule_addr), 8);
  s.undo.emplace(granule_addr, std::make_pair(bytes, g));
}

void global_granule(ThreadCtx* t, LaunchCtx* L, uint32_t id, uintptr_t ga, uint8_t m, uintptr_t a, size_t n,
                    bool write, bool atomic) {
  State& s = S();
  const size_t gi = (ga - reinterpret_cast<uintptr_t>(s.base)) / 8;
  GShadow& g = s.gshadow[gi];
  if (g.alloc != id) {
    g = GShadow{};
    g.alloc = id;
  }
  const uint32_t op = L ? L->op : (running_op() ? running_op()->id : 0);
  const uint32_t me = t ? t->gtid : 0;
  const uint64_t nthreads = L ? static_cast<uint64_t>(L->nthreads) : 1;
  const uint16_t ep = L ? L->epoch : 0;
  auto same_block_after_barrier = [&](uint32_t other, uint16_t other_epoch) {
    return L && other != kMulti && other / nthreads == me / nthreads && other_epoch != ep;
  };
  if (s.undo_on && write) save_undo(ga, g);
  if (!write) {
    if ((g.init & m) != m && g_instrumented) {
      std::string why = "the bytes were never written since the allocation";
      if (options().uninit_is_error) access_fault("uninitialized", a, n, false, why, cudaErrorLaunchFailure);
      static std::atomic<int> warned{0};
      if (warned.fetch_add(1) < 10 && !options().quiet)
        std::fprintf(stderr, "barbell emulator: warning: %s: uninitialized read at %s\n", where().c_str(),
                     describe(a).c_str());
    }
    if (g.w_op == op && op != 0) {
      if (options().race_check && !atomic && !(g.flags & kWMulti) && g.w_thread != me && (g.wmask & m) &&
          !(g.flags & kAtomicW) && !same_block_after_barrier(g.w_thread, g.w_epoch))
        access_fault("racy", a, n, false,
                     "written by " + thread_name(*L, g.w_thread) + " of the same launch with no ordering (" +
                         (g.w_thread / nthreads == me / nthreads ? "no __syncthreads in between"
                                                                 : "different blocks are never ordered") +
                         ")",
                     cudaErrorLaunchFailure);
    } else if (g.w_op != 0 && !ordered_before(g.w_op)) {
      access_fault("unordered", a, n, false,
                   "the bytes were written by " + op_description(g.w_op) +
                       ", which is not ordered before this operation (a missing event or stream wait)",
                   cudaErrorLaunchFailure);
    }
    if (g.r_op != op) {
      g.r_op = op;
      g.r_thread = me;
      g.r_epoch = ep;
      g.rmask = m;
      g.flags &= static_cast<uint8_t>(~kRMulti);
    } else {
      if (g.r_thread != me) g.flags |= kRMulti;
      g.rmask |= m;
      g.r_epoch = ep;
    }
    return;
  }
  // a write
  if (g.w_op == op && op != 0) {
    if (options().race_check && !atomic && !(g.flags & kWMulti) && !(g.flags & kAtomicW) &&
        g.w_thread != me && (g.wmask & m) && !same_block_after_barrier(g.w_thread, g.w_epoch))
      access_fault("racy", a, n, true,
                   "also written by " + thread_name(*L, g.w_thread) +
                       " of the same launch with no ordering (" +
                       (g.w_thread / nthreads == me / nthreads ? "no __syncthreads in between"
                                                               : "different blocks are never ordered") +
                       ")",
                   cudaErrorLaunchFailure);
  } else if (g.w_op != 0 && !ordered_before(g.w_op)) {
    access_fault("unordered", a, n, true,
                 "the bytes were written by " + op_description(g.w_op) +
                     ", which is not ordered before this operation (a missing event or stream wait)",
                 cudaErrorLaunchFailure);
  }
  if (g.r_op == op && op != 0) {
    if (options().race_check && !atomic && !(g.flags & kRMulti) && g.r_thread != me && (g.rmask & m) &&
        !same_block_after_barrier(g.r_thread, g.r_epoch))
      access_fault("racy", a, n, true,
                   "read by " + thread_name(*L, g.r_thread) + " of the same launch with no ordering (" +
                       (g.r_thread / nthreads == me / nthreads ? "no __syncthreads in between"
                                                               : "different blocks are never ordered") +
                       ")",
                   cudaErrorLaunchFailure);
  } else if (g.r_op != 0 && g.r_op != op && !ordered_before(g.r_op)) {
    access_fault("unordered", a, n, true,
                 "the bytes were read by " + op_description(g.r_op) +
                     ", which is not ordered before this operation (a missing event or stream wait)",
                 cudaErrorLaunchFailure);
  }
  if (g.w_op != op) {
    g.w_op = op;
    g.w_thread = me;
    g.wmask = m;
    g.flags &= static_cast<uint8_t>(~(kWMulti | kAtomicW));
  } else if (g.w_thread != me) {
    if (!(g.wmask & m)) g.flags |= kWMulti;  // disjoint bytes: fine, but one writer is no longer known
    g.w_thread = me;
    g.wmask |= m;
  } else {
    g.wmask |= m;
  }
  if (atomic) {
    g.flags |= kAtomicW;
    if (s.undo_on) s.undo_atomic[ga] = true;
  }
  g.w_epoch = ep;
  g.init |= m;
}

void global_access(ThreadCtx* t, LaunchCtx* L, uintptr_t a, size_t n, bool write, bool atomic) {
  uint32_t id = 0;
  AllocRec* r = alloc_at(a, &id);
  if (!r || r->state != 1 || a < r->start || a + n > r->start + r->size) {
    std::string why;
    if (r && r->state == 2)
      why = "use after cudaFree";
    else if (r && r->state == 3)
      why = "use after cudaFree (the memory was released)";
    access_fault("illegal", a, n, write, why);
  }
  if (t && L && r->device != L->device)
    access_fault("illegal", a, n, write,
                 "the allocation is on cuda:" + std::to_string(r->device) +
                     ", the kernel runs on cuda:" + std::to_string(L->device));
  if (r->op && !ordered_before(r->op))
    access_fault("unordered", a, n, write,
                 "the memory was allocated by " + op_description(r->op) +
                     " (cudaMallocAsync), which is not ordered before this operation");
  for (uintptr_t ga = a & ~uintptr_t(7); ga < a + n; ga += 8) {
    const uintptr_t lo = std::max(ga, a), hi = std::min(ga + 8, a + n);
    global_granule(t, L, id, ga, byte_mask(lo, hi - lo, 8), lo, hi - lo, write, atomic);
  }
}

void shared_access(ThreadCtx* t, LaunchCtx* L, SShadow* base_shadow, uintptr_t base, uintptr_t a, size_t n,
                   bool write, bool atomic, const char* what) {
  for (uintptr_t ga = a & ~uintptr_t(3); ga < a + n; ga += 4) {
    SShadow& g = base_shadow[(ga - base) / 4];
    if (g.gen != L->block_gen) {
      g = SShadow{};
      g.gen = L->block_gen;
    }
    const uintptr_t lo = std::max(ga, a), hi = std::min(ga + 4, a + n);
    const uint8_t m = byte_mask(lo, hi - lo, 4);
    const uint16_t me = static_cast<uint16_t>(t->tid);
    const uint32_t wsync = static_cast<uint32_t>(L->warps[static_cast<size_t>(t->warp)].full_syncs);
    auto ordered = [&](uint16_t other, uint16_t other_epoch, uint32_t other_wsync) {
      if (other == me) return true;
      if (other_epoch != L->epoch) return true;                  // a __syncthreads in between
      return (other >> 5) == (me >> 5) && wsync != other_wsync;  // same warp, a full-warp collective since
    };
    std::ostringstream who;
    const bool rc = options().race_check;
    if (!write) {
      if ((g.init & m) != m && g_instrumented) {
        if (options().uninit_is_error)
          access_fault(what, lo, hi - lo, false,
                       "this block never wrote these bytes (uninitialized shared memory)",
                       cudaErrorLaunchFailure);
      }
      if (rc && !atomic && (g.flags & 1) && !(g.flags & 4) && (g.wmask & m) &&
          !ordered(g.w_tid, g.w_epoch, g.w_wsync)) {
        who << "written by thread " << g.w_tid << " of the block with no __syncthreads (or, in its warp, "
            << "__syncwarp) in between";
        access_fault(what, lo, hi - lo, false, "data race: " + who.str(), cudaErrorLaunchFailure);
      }
      if (!(g.flags & 2) || g.r_epoch != L->epoch) {
        g.r_tid = me;
        g.r_epoch = L->epoch;
        g.r_wsync = wsync;
        g.rmask = m;
        g.flags = static_cast<uint8_t>((g.flags | 2) & ~8);
      } else {
        if (g.r_tid != me) g.flags |= 8;
        g.rmask |= m;
      }
      continue;
    }
    if (rc && !atomic) {
      if ((g.flags & 1) && !(g.flags & 4) && (g.wmask & m) && !ordered(g.w_tid, g.w_epoch, g.w_wsync)) {
        who << "also written by thread " << g.w_tid << " of the block with no barrier in between";
        access_fault(what, lo, hi - lo, true, "data race: " + who.str(), cudaErrorLaunchFailure);
      }
      if ((g.flags & 2) && !(g.flags & 8) && (g.rmask & m) && !ordered(g.r_tid, g.r_epoch, g.r_wsync)) {
        who << "read by thread " << g.r_tid << " of the block with no barrier in between (write after read)";
        access_fault(what, lo, hi - lo, true, "data race: " + who.str(), cudaErrorLaunchFailure);
      }
    }
    if (!(g.flags & 1) || g.w_epoch != L->epoch || g.w_tid == me) {
      g.w_tid = me;
      g.wmask = (g.flags & 1) && g.w_epoch == L->epoch ? static_cast<uint8_t>(g.wmask | m) : m;
      g.flags = static_cast<uint8_t>((g.flags | 1) & ~4);
    } else {
      if (!(g.wmask & m)) g.flags |= 4;
      g.w_tid = me;
      g.wmask |= m;
    }
    if (atomic) g.flags |= 4;  // atomics never race with each other
    g.w_epoch = L->epoch;
    g.w_wsync = wsync;
    g.init |= m;
  }
}

void log_access(ThreadCtx* t, uintptr_t a, size_t n, bool write, bool shared) {
  if (t->log.size() < (1u << 16)) t->log.push_back(Acc{a, static_cast<uint32_t>(n), write, shared});
}

void kernel_access_impl(ThreadCtx* t, uintptr_t a, size_t n, bool write, bool atomic, bool aligned = true) {
  State& s = S();
  if (in_stack(a)) return;
  LaunchCtx* L = cur_launch();
  if (!L) return;
  KernelStats& ks = *L->stats;
  if (aligned && n > 1 && (n & (n - 1)) == 0 && (a & (n - 1)) != 0 && n <= 16)
    access_fault("misaligned", a, n, write,
                 "an access of " + std::to_string(n) + " bytes must be " + std::to_string(n) +
                     "-byte aligned on the GPU",
                 cudaErrorMisalignedAddress);
  const uintptr_t b = reinterpret_cast<uintptr_t>(s.base);
  if (a >= b && a < b + s.len) {
    global_access(t, L, a, n, write, atomic);
    if (write)
      ks.g_bytes_written += n;
    else
      ks.g_bytes_read += n;
    if (atomic) ++ks.atomics;
    log_access(t, a, n, write, false);
    return;
  }
  const uintptr_t d = reinterpret_cast<uintptr_t>(L->dsmem);
  if (L->dsmem && a >= d && a + n <= d + L->dsmem_bytes) {
    if (s.dyn_shadow.size() < (L->dsmem_bytes + 3) / 4) s.dyn_shadow.resize((L->dsmem_bytes + 3) / 4);
    shared_access(t, L, s.dyn_shadow.data(), d, a, n, write, atomic, "shared-memory");
    if (atomic) ++ks.atomics;
    log_access(t, a, n, write, true);
    return;
  }
  if (L->dsmem && a >= d && a < d + L->dsmem_bytes + 256)
    access_fault(
        "out-of-bounds", a, n, write,
        "past the end of the block's " + std::to_string(L->dsmem_bytes) + " bytes of dynamic shared memory",
        cudaErrorIllegalAddress);
  // tests/sim (standalone kernels on host buffers): host memory is global memory; the
  // registered ranges constrain only cp.async sources (flash_prims.cpp).
  if (s.allow_host && !segment_of(a)) {
    log_access(t, a, n, write, false);
    return;
  }
  if (Segment* g = segment_of(a)) {
    if (g->writable) {
      shared_access(t, L, g->shadow.data(), g->lo & ~uintptr_t(3), a, n, write, atomic, "__shared__");
      if (atomic) ++ks.atomics;
      log_access(t, a, n, write, true);
      return;
    }
    if (!write) return;  // constant data
  }
  access_fault("host-memory", a, n, write,
               "a kernel may only access device memory, shared memory and its own stack (a host pointer was "
               "passed to a kernel?)");
}

void host_access(uintptr_t a, size_t n, bool write) {
  State& s = S();
  const uintptr_t b = reinterpret_cast<uintptr_t>(s.base);
  if (a >= b && a < b + s.len && s.protect_depth == 0 && !running_op()) {
    std::ostringstream os;
    os << "host code " << (write ? "wrote" : "read") << " " << n << " bytes of emulated device memory at "
       << describe(a) << " (a device pointer dereferenced on the host)";
    throw CodedFault(os.str(), cudaErrorIllegalAddress);
  }
}

void sigsegv_handler(int sig, siginfo_t* si, void* uc) {
  State& s = S();
  const uintptr_t a = reinterpret_cast<uintptr_t>(si->si_addr);
  const uintptr_t b = reinterpret_cast<uintptr_t>(s.base);
  if (s.base && a >= b && a < b + s.len) {
    // async-signal-safety: describe() allocates; this is the last thing the process does.
    const std::string d = describe(a);
    char buf[512];
    const int k =
        std::snprintf(buf, sizeof buf,
                      "\nbarbell emulator: host code touched emulated device memory at %s (a device "
                      "pointer dereferenced on the host)\n",
                      d.c_str());
    if (k > 0) {
      ssize_t w = write(2, buf, static_cast<size_t>(std::min<int>(k, static_cast<int>(sizeof buf) - 1)));
      (void)w;
    }
  }
  // Chain to whatever was installed before (or the default action).
  if (g_prev_segv.sa_flags & SA_SIGINFO) {
    if (g_prev_segv.sa_sigaction) return g_prev_segv.sa_sigaction(sig, si, uc);
  } else if (g_prev_segv.sa_handler != SIG_DFL && g_prev_segv.sa_handler != SIG_IGN &&
             g_prev_segv.sa_handler) {
    return g_prev_segv.sa_handler(sig);
  }
  signal(SIGSEGV, SIG_DFL);
  raise(SIGSEGV);
}

}  // namespace

// ---- the interface -----------------------------------------------------------------------------

void memory_init() { init(); }

bool in_arena(uintptr_t a, size_t n) {
  State& s = S();
  const uintptr_t b = reinterpret_cast<uintptr_t>(s.base);
  return s.base && a >= b && a + n <= b + s.len;
}

void* arena_alloc(size_t bytes, int device, uint32_t op) {
  init();
  State& s = S();
  if (!s.base) return nullptr;
  const size_t data_pages = std::max<size_t>(1, (bytes + kPage - 1) / kPage);
  const size_t need = data_pages + 2;
  // Release quarantined blocks beyond 256 MiB (older first).
  while (s.quarantined_bytes > (size_t(256) << 20) && !s.quarantine.empty()) {
    const uint32_t id = s.quarantine.front();
    s.quarantine.pop_front();
    s.quarantined_bytes -= s.allocs[id].pages * kPage;
    release(id);
  }
  size_t first = SIZE_MAX;
  auto it = s.free_runs.lower_bound(need);
  if (it != s.free_runs.end()) {
    const size_t len = it->first, start = it->second;
    s.free_runs.erase(it);
    s.free_by_start.erase(start);
    first = start;
    if (len > need) {
      s.free_by_start[start + need] = len - need;
      s.free_runs.emplace(len - need, start + need);
    }
  } else {
    if ((s.used_pages + need) * kPage > s.len) {
      // out of fresh pages: release the whole quarantine and retry once
      if (!s.quarantine.empty()) {
        while (!s.quarantine.empty()) {
          const uint32_t id = s.quarantine.front();
          s.quarantine.pop_front();
          release(id);
        }
        s.quarantined_bytes = 0;
        return arena_alloc(bytes, device, op);
      }
      return nullptr;
    }
    first = s.used_pages;
    s.used_pages += need;
    // Device work running now (protection lifted) may touch the new pages too.
    if (s.protect_depth > 0) mprotect(s.base + first * kPage, need * kPage, PROT_READ | PROT_WRITE);
  }
  AllocRec r;
  r.start = reinterpret_cast<uintptr_t>(s.base) + (first + 1) * kPage;
  r.size = bytes;
  r.pages = data_pages;
  r.device = device;
  r.state = 1;
  r.op = op;
  const uint32_t id = static_cast<uint32_t>(s.allocs.size());
  s.allocs.push_back(r);
  for (size_t p = first + 1; p < first + 1 + data_pages; ++p) (*s.page_alloc)[p] = id;
  s.in_use += bytes;
  // Fresh device memory is garbage on a GPU: here 0xFF bytes (NaN in every float type),
  // up to 64 MiB (larger allocations stay untouched, zero pages, until used); reads of
  // unwritten bytes are reported anyway (the init masks).
  arena_unprotect();
  std::memset(reinterpret_cast<void*>(r.start), 0xff, std::min(data_pages * kPage, size_t(64) << 20));
  arena_protect();
  return reinterpret_cast<void*>(r.start);
}

bool arena_owns(const void* p) {
  AllocRec* r = alloc_at(reinterpret_cast<uintptr_t>(p));
  return r && r->state == 1 && r->start == reinterpret_cast<uintptr_t>(p);
}
size_t arena_size_of(const void* p) {
  AllocRec* r = alloc_at(reinterpret_cast<uintptr_t>(p));
  return r ? r->size : 0;
}
int arena_device_of(const void* p) {
  AllocRec* r = alloc_at(reinterpret_cast<uintptr_t>(p));
  return r ? r->device : -1;
}

void arena_free_now(void* p) {
  State& s = S();
  uint32_t id = 0;
  AllocRec* r = alloc_at(reinterpret_cast<uintptr_t>(p), &id);
  if (!r || r->state != 1 || r->start != reinterpret_cast<uintptr_t>(p)) return;
  r->state = 2;
  s.in_use -= r->size;
  s.quarantine.push_back(id);
  s.quarantined_bytes += r->pages * kPage;
}

size_t arena_in_use() { return S().in_use; }
size_t arena_capacity() {
  init();
  return S().len;
}

std::string describe_address(uintptr_t a) { return describe(a); }

// Only the part of the arena ever handed out changes protection (the rest stays PROT_NONE):
// mprotect's cost grows with the range's mapped pages.
void arena_unprotect() {
  State& s = S();
  if (s.base && s.protect_depth++ == 0 && s.used_pages) mprotect(s.base, s.used_pages * kPage, PROT_READ | PROT_WRITE);
}
void arena_protect() {
  State& s = S();
  if (s.base && --s.protect_depth == 0 && s.used_pages) mprotect(s.base, s.used_pages * kPage, PROT_NONE);
}

void on_kernel_access(ThreadCtx* t, uintptr_t a, size_t n, bool write, bool atomic, bool aligned) {
  kernel_access_impl(t, a, n, write, atomic, aligned);
}

void on_op_access(uintptr_t a, size_t n, bool write, const char* what) {
  if (n == 0) return;
  uint32_t id = 0;
  AllocRec* r = alloc_at(a, &id);
  if (!r || r->state != 1 || a < r->start || a + n > r->start + r->size) {
    std::ostringstream os;
    os << (write ? "writes" : "reads") << " " << n << " bytes at " << describe(a)
       << (r && r->state != 1 ? " (use after cudaFree)" : "");
    (void)what;  // where() already names the operation
    fault(os.str(), cudaErrorIllegalAddress);
  }
  if (r->op && !ordered_before(r->op))
    fault("uses memory allocated by " + op_description(r->op) +
              " (cudaMallocAsync), which is not ordered before it",
          cudaErrorLaunchFailure);
  for (uintptr_t ga = a & ~uintptr_t(7); ga < a + n; ga += 8) {
    const uintptr_t lo = std::max(ga, a), hi = std::min(ga + 8, a + n);
    global_granule(nullptr, nullptr, id, ga, byte_mask(lo, hi - lo, 8), lo, hi - lo, write, false);
  }
}

// cudaFreeAsync's check: the free counts as a write of the whole block, against the
// accesses recorded so far. Only shadow that was ever written can hold one (mincore finds
// its pages), so a large block that was barely used costs little.
void op_free_access(uintptr_t a, size_t n) {
  State& s = S();
  uint32_t id = 0;
  AllocRec* r = alloc_at(a, &id);
  if (!r || r->state != 1) fault("cudaFreeAsync: the memory at " + describe(a) + " is not a live allocation");
  const uintptr_t b = reinterpret_cast<uintptr_t>(s.base);
  char* sh_lo = reinterpret_cast<char*>(s.gshadow + (a - b) / 8);
  char* sh_hi = reinterpret_cast<char*>(s.gshadow + (a + n - b + 7) / 8);
  char* page_lo = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(sh_lo) & ~(kPage - 1));
  const size_t pages = static_cast<size_t>(sh_hi - page_lo + kPage - 1) / kPage;
  std::vector<unsigned char> resident(pages, 1);
  if (mincore(page_lo, pages * kPage, resident.data()) != 0) std::fill(resident.begin(), resident.end(), 1);
  for (size_t pg = 0; pg < pages; ++pg) {
    if (!(resident[pg] & 1)) continue;
    char* lo = std::max(page_lo + pg * kPage, sh_lo);
    char* hi = std::min(page_lo + (pg + 1) * kPage, sh_hi);
    for (char* q = lo; q < hi; q += sizeof(GShadow)) {
      const GShadow& g = *reinterpret_cast<const GShadow*>(q);
      if (g.alloc != id) continue;
      const uintptr_t ga = b + static_cast<uintptr_t>(reinterpret_cast<const GShadow*>(q) - s.gshadow) * 8;
      global_granule(nullptr, nullptr, id, ga, 0xff, ga, 8, true, false);
    }
  }
}

bool live_range(uintptr_t a, size_t n) {
  AllocRec* r = alloc_at(a);
  return r && r->state == 1 && a >= r->start && a + n <= r->start + r->size;
}

void launch_begin(LaunchCtx& L) { (void)L; }
void block_begin(LaunchCtx& L) {
  static uint32_t gen = 0;
  L.block_gen = ++gen;
  if (gen == 0) L.block_gen = ++gen;
}
void launch_end(LaunchCtx& L) { (void)L; }

void undo_begin() {
  State& s = S();
  s.undo.clear();
  s.undo_atomic.clear();
  s.undo_on = true;
}
void undo_restore(std::vector<std::pair<uintptr_t, std::vector<unsigned char>>>* written) {
  State& s = S();
  s.undo_on = false;
  for (auto& [ga, saved] : s.undo) {
    if (written) {
      std::vector<unsigned char> now(8);
      std::memcpy(now.data(), reinterpret_cast<const void*>(ga), 8);
      written->emplace_back(ga, std::move(now));
    }
    std::memcpy(reinterpret_cast<void*>(ga), &saved.first, 8);
    s.gshadow[(ga - reinterpret_cast<uintptr_t>(s.base)) / 8] = saved.second;
  }
  if (written) std::sort(written->begin(), written->end());
}
void undo_compare(const std::vector<std::pair<uintptr_t, std::vector<unsigned char>>>& first,
                  const std::string& name) {
  State& s = S();
  // second run's writes: s.undo holds every granule it wrote
  std::vector<uintptr_t> all;
  for (const auto& f : first) all.push_back(f.first);
  for (const auto& [ga, saved] : s.undo) all.push_back(ga);
  std::sort(all.begin(), all.end());
  all.erase(std::unique(all.begin(), all.end()), all.end());
  for (uintptr_t ga : all) {
    if (s.undo_atomic.count(ga)) continue;  // atomics may legitimately round differently
    auto it = std::lower_bound(first.begin(), first.end(), std::make_pair(ga, std::vector<unsigned char>{}));
    unsigned char now[8];
    std::memcpy(now, reinterpret_cast<const void*>(ga), 8);
    unsigned char before[8];
    if (it != first.end() && it->first == ga)
      std::memcpy(before, it->second.data(), 8);
    else if (s.undo.count(ga))
      std::memcpy(before, &s.undo.at(ga).first, 8);
    else
      continue;
    if (std::memcmp(now, before, 8) != 0) {
      std::ostringstream os;
      os << name << ": the result depends on the order of threads and blocks: the bytes at " << describe(ga)
         << " differ between a forward and a reversed run (a race, or a missing barrier)";
      s.undo_on = false;
      throw CodedFault(os.str(), cudaErrorLaunchFailure);
    }
  }
}
void undo_end() {
  State& s = S();
  s.undo_on = false;
  s.undo.clear();
  s.undo_atomic.clear();
}

void register_host_global(const void* p, size_t n) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  S().host_globals.emplace_back(a, a + n);
}
void clear_host_globals() { S().host_globals.clear(); }

bool host_global_ok(const void* p, size_t n) {
  State& s = S();
  if (!s.allow_host || s.host_globals.empty()) return true;
  const auto a = reinterpret_cast<uintptr_t>(p);
  for (const auto& hg : s.host_globals)
    if (a >= hg.first && a + n <= hg.second) return true;
  return false;
}

void set_host_memory_allowed(bool on) {
  State& s = S();
  s.allow_host = on;
  pthread_attr_t attr;
  if (on && pthread_getattr_np(pthread_self(), &attr) == 0) {
    void* lo = nullptr;
    size_t len = 0;
    pthread_attr_getstack(&attr, &lo, &len);
    s.host_stack_lo = reinterpret_cast<uintptr_t>(lo);
    s.host_stack_hi = s.host_stack_lo + len;
    pthread_attr_destroy(&attr);
  }
}

void set_stack_range(uintptr_t lo, size_t len) {
  S().stack_lo = lo;
  S().stack_len = len;
}

void kernel_access(const void* p, size_t bytes, bool write, bool atomic) {
  // Called by the emulator's own entry points, which hold a NoCheck: the check is whether
  // the kernel had the checks on when it called them.
  if (t_nocheck > 1) return;
  if (ThreadCtx* t = t_cur) kernel_access_impl(t, reinterpret_cast<uintptr_t>(p), bytes, write, atomic);
}

void vector_copy(void* dst, const void* src, size_t bytes, size_t align) {
  ThreadCtx* t = t_cur;
  const bool check = t && !t_nocheck;
  NoCheck guard;
  if (check) {
    const auto s = reinterpret_cast<uintptr_t>(src), d = reinterpret_cast<uintptr_t>(dst);
    for (const auto& [a, write] : {std::make_pair(s, false), std::make_pair(d, true)}) {
      if (in_stack(a)) continue;
      if (a % align != 0)
        access_fault("misaligned", a, bytes, write,
                     "a " + std::to_string(bytes) + "-byte vector access must be " + std::to_string(align) +
                         "-byte aligned on the GPU",
                     cudaErrorMisalignedAddress);
      kernel_access_impl(t, a, bytes, write, false, false);
    }
  }
  std::memcpy(dst, src, bytes);
}

// ---- emu_api.hpp (for the emulated libraries) ------------------------------------------

void device_read(const void* p, size_t bytes) {
  on_op_access(reinterpret_cast<uintptr_t>(p), bytes, false,
               running_op() && running_op()->name ? running_op()->name->c_str() : "device operation");
}
void device_write(void* p, size_t bytes) {
  on_op_access(reinterpret_cast<uintptr_t>(p), bytes, true,
               running_op() && running_op()->name ? running_op()->name->c_str() : "device operation");
}
bool is_device_range(const void* p, size_t bytes) {
  return live_range(reinterpret_cast<uintptr_t>(p), bytes);
}

}  // namespace barbell::emu

// ---- the instrumentation's entry points (the ThreadSanitizer ABI, our own runtime) --------
//
// GCC's -fsanitize=thread instruments every memory access of the kernels' translation
// units with a call here. Accesses by an emulated thread are checked; host code in those
// units (the launchers) only has its device-memory dereferences caught.

namespace {
using barbell::emu::t_cur;
using barbell::emu::t_nocheck;

// `aligned`: the compiler assumed the access naturally aligned (the GPU requires it).
inline void bb_hook(const void* p, size_t n, bool write, bool aligned = true) {
  if (t_nocheck) return;
  barbell::emu::NoCheck guard;
  if (barbell::emu::ThreadCtx* t = t_cur) {
    barbell::emu::on_kernel_access(t, reinterpret_cast<uintptr_t>(p), n, write, false, aligned);
  } else {
    barbell::emu::host_access_check(reinterpret_cast<uintptr_t>(p), n, write);
  }
}
}  // namespace

namespace barbell::emu {
void host_access_check(uintptr_t a, size_t n, bool write) { host_access(a, n, write); }
}  // namespace barbell::emu

extern "C" {
#define BB_TSAN_RW(N)                                                           \
  void __tsan_read##N(void* p) { bb_hook(p, N, false); }                        \
  void __tsan_write##N(void* p) { bb_hook(p, N, true); }                        \
  void __tsan_unaligned_read##N(const void* p) { bb_hook(p, N, false, false); } \
  void __tsan_unaligned_write##N(void* p) { bb_hook(p, N, true, false); }       \
  void __tsan_volatile_read##N(void* p) { bb_hook(p, N, false); }               \
  void __tsan_volatile_write##N(void* p) { bb_hook(p, N, true); }               \
  void __tsan_read##N##_pc(void* p, void*) { bb_hook(p, N, false); }            \
  void __tsan_write##N##_pc(void* p, void*) { bb_hook(p, N, true); }
BB_TSAN_RW(1)
BB_TSAN_RW(2)
BB_TSAN_RW(4)
BB_TSAN_RW(8)
BB_TSAN_RW(16)
#undef BB_TSAN_RW
void __tsan_read_range(void* p, unsigned long n) { bb_hook(p, n, false, false); }
void __tsan_write_range(void* p, unsigned long n) { bb_hook(p, n, true, false); }
void __tsan_init() { barbell::emu::g_instrumented = true; }
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
void __tsan_ignore_thread_begin() { ++t_nocheck; }
void __tsan_ignore_thread_end() { --t_nocheck; }
void __tsan_acquire(void*) {}
void __tsan_release(void*) {}

// Atomics of host code in the instrumented units (std::atomic in the launchers): done
// for real, with the memory order asked for; not checked (kernels use atomicAdd & co).
typedef int morder;
#define BB_TSAN_ATOMIC(N, T)                                                                               \
  T __tsan_atomic##N##_load(const volatile T* a, morder mo) { return __atomic_load_n(a, mo); }             \
  void __tsan_atomic##N##_store(volatile T* a, T v, morder mo) { __atomic_store_n(a, v, mo); }             \
  T __tsan_atomic##N##_exchange(volatile T* a, T v, morder mo) { return __atomic_exchange_n(a, v, mo); }   \
  T __tsan_atomic##N##_fetch_add(volatile T* a, T v, morder mo) { return __atomic_fetch_add(a, v, mo); }   \
  T __tsan_atomic##N##_fetch_sub(volatile T* a, T v, morder mo) { return __atomic_fetch_sub(a, v, mo); }   \
  T __tsan_atomic##N##_fetch_and(volatile T* a, T v, morder mo) { return __atomic_fetch_and(a, v, mo); }   \
  T __tsan_atomic##N##_fetch_or(volatile T* a, T v, morder mo) { return __atomic_fetch_or(a, v, mo); }     \
  T __tsan_atomic##N##_fetch_xor(volatile T* a, T v, morder mo) { return __atomic_fetch_xor(a, v, mo); }   \
  T __tsan_atomic##N##_fetch_nand(volatile T* a, T v, morder mo) { return __atomic_fetch_nand(a, v, mo); } \
  int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, morder mo, morder fmo) {        \
    return __atomic_compare_exchange_n(a, c, v, false, mo, fmo);                                           \
  }                                                                                                        \
  int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, morder mo, morder fmo) {          \
    return __atomic_compare_exchange_n(a, c, v, true, mo, fmo);                                            \
  }                                                                                                        \
  T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, morder mo, morder fmo) {              \
    __atomic_compare_exchange_n(a, &c, v, false, mo, fmo);                                                 \
    return c;                                                                                              \
  }
BB_TSAN_ATOMIC(8, unsigned char)
BB_TSAN_ATOMIC(16, unsigned short)
BB_TSAN_ATOMIC(32, unsigned int)
BB_TSAN_ATOMIC(64, unsigned long long)
#undef BB_TSAN_ATOMIC
void __tsan_atomic_thread_fence(morder mo) { __atomic_thread_fence(mo); }

// memcpy, memset and memmove, wrapped at link time (-Wl,--wrap=..., emu/CMakeLists.txt):
// the instrumentation turns a kernel's aggregate copies (a uint4, a struct) into calls of
// these, which it does not check itself. From an emulated thread they are checked as the
// reads and writes they are; everywhere else they go straight through.
void* __real_memcpy(void* d, const void* s, size_t n);
void* __real_memset(void* d, int c, size_t n);
void* __real_memmove(void* d, const void* s, size_t n);
void* __wrap_memcpy(void* d, const void* s, size_t n) {
  if (t_cur && !t_nocheck && n) {
    bb_hook(s, n, false, false);
    bb_hook(d, n, true, false);
  }
  return __real_memcpy(d, s, n);
}
void* __wrap_memmove(void* d, const void* s, size_t n) {
  if (t_cur && !t_nocheck && n) {
    bb_hook(s, n, false, false);
    bb_hook(d, n, true, false);
  }
  return __real_memmove(d, s, n);
}
void* __wrap_memset(void* d, int c, size_t n) {
  if (t_cur && !t_nocheck && n) bb_hook(d, n, true, false);
  return __real_memset(d, c, n);
}
void __tsan_atomic_signal_fence(morder mo) { __atomic_signal_fence(mo); }
}

// mma.sync, ldmatrix and cp.async for the flash kernels on the emulator, written from the
// PTX ISA (sections cited below), not from the kernels' expectations, and the tests'
// `sim` interface (emu/flash_prims.hpp).
//
// Semantics chosen:
//   * mma.m16n8k16 (PTX ISA 9.7.14.5.8 / 9.7.15.5.8 "Matrix Fragments for mma.m16n8k16
//     with floating point type"; g = lane >> 2, t = lane % 4, low 16 bits = lower index):
//       A: a0,a1 = (g, 2t+{0,1}), a2,a3 = (g+8, 2t+{0,1}), a4,a5 = (g, 2t+8+{0,1}),
//          a6,a7 = (g+8, 2t+8+{0,1}); register j holds elements a(2j), a(2j+1).
//       B: b0,b1 = (k 2t+{0,1}, n g), b2,b3 = (k 2t+8+{0,1}, n g).
//       C/D: c0,c1 = (g, 2t+{0,1}), c2,c3 = (g+8, 2t+{0,1}).
//     D = A B + C with the 16 products (exact in double) summed with C in double and
//     rounded once to fp32. The hardware's accumulation order and internal rounding are
//     not specified by PTX; this is the exactly-rounded result.
//   * ldmatrix.m8n8.x4(.trans).b16 (PTX ISA "Warp-level matrix load instruction:
//     ldmatrix"): lanes 8j..8j+7 give the row addresses of matrix j; without .trans lane
//     L receives in r[j] the elements (row L/4, columns 2(L%4), 2(L%4)+1) of matrix j;
//     with .trans (rows 2(L%4), 2(L%4)+1, column L/4).
//   * cp.async (PTX ISA "cp.async", "cp.async.wait_group"): the 16 destination bytes are
//     poisoned (0xFF) at issue and the data (read from global memory at issue) lands when
//     the issuing thread's wait_group retires its group; the writes are visible to the
//     issuing thread only until a barrier (or, within its warp, __syncwarp) orders them
//     for the others. wait_group N retires every committed group but the N most recent;
//     copies not committed belong to no group. Copies still pending at exit are dropped.
//   * atomics: plain adds (one thread runs at a time), checked as atomic accesses.
// Checks (faults naming block, thread, warp and lane), per 16-byte granule of dynamic
// shared memory, between barriers:
//   (a) an ldmatrix reads a granule with a cp.async pending;
//   (b) a cp.async is issued to a granule another warp read by ldmatrix since the last
//       barrier (write after read);
//   (c) an ldmatrix reads a granule whose cp.async landed since the last barrier, with no
//       barrier since and, when the issuer is in the reading warp, no __syncwarp since;
//   (d) a cp.async is issued to a granule that already has one pending;
//   (e) a plain store to a granule with a cp.async in flight, or to a granule read by
//       ldmatrix since the last barrier (seen through a snapshot of shared memory).
// Plain loads and stores are checked by the general shared-memory rules (memory.cpp).
#include "flash_prims.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "internal.hpp"

namespace barbell::emu {
namespace {

LaunchCtx& L_() {
  LaunchCtx* L = cur_launch();
  if (!L) outside_kernel("a flash primitive");
  return *L;
}

bool in_smem(const LaunchCtx& L, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  return L.dsmem && c >= L.dsmem && c + n <= L.dsmem + L.dsmem_bytes;
}

std::string smem_off(const LaunchCtx& L, const void* p) {
  return "smem+" + std::to_string(static_cast<const char*>(p) - L.dsmem);
}

Granule16& granule(LaunchCtx& L, const void* p) {
  return L.gran[static_cast<size_t>(static_cast<const char*>(p) - L.dsmem) / 16];
}

void land(LaunchCtx& L, ThreadCtx& t, const CpCopy& c) {
  const size_t off = static_cast<size_t>(c.dst - L.dsmem);
  if (options().race_check && std::memcmp(c.dst, L.shadow16.data() + off, 16) != 0)
    fault("a plain store wrote " + smem_off(L, c.dst) + " while a cp.async of thread " +
          std::to_string(t.tid) + " to it was in flight (the copy lands over it)");
  ++t_nocheck;  // the data lands (declared below as the issuer's write)
  std::memcpy(c.dst, c.data, 16);
  --t_nocheck;
  kernel_access(c.dst, 16, true, false);
  std::memcpy(L.shadow16.data() + off, c.data, 16);
  Granule16& g = granule(L, c.dst);
  g.pending = -1;
  g.writer = t.tid;
  g.land_epoch = L.epoch_full;
  g.land_wsync = L.warps[static_cast<size_t>(t.warp)].full_syncs;
}

void check_row_read(LaunchCtx& L, const void* p, int w, const ThreadCtx& t) {
  Granule16& g = granule(L, p);
  const size_t off = static_cast<size_t>(static_cast<const char*>(p) - L.dsmem);
  if (std::memcmp(p, L.shadow16.data() + off, 16) != 0) {
    // changed by plain stores since the last barrier: only the warp's own staging,
    // ordered by a __syncwarp, may be read
    if (L.warps[static_cast<size_t>(w)].sync_epoch != L.epoch_full)
      fault("ldmatrix by warp " + std::to_string(w) + " reads " + smem_off(L, p) +
            ", changed by a plain store since the last barrier: stores by other threads need a barrier "
            "(__syncthreads, or __syncwarp within the warp) before the read");
    std::memcpy(L.shadow16.data() + off, p, 16);  // accounted for: later changes are writes after this read
  }
  if (g.pending >= 0)
    fault("ldmatrix by warp " + std::to_string(w) + " reads " + smem_off(L, p) +
          " while a cp.async of thread " + std::to_string(g.pending) +
          " to it is still in flight (not retired by its cp_async_wait)");
  if (g.writer >= 0 && g.land_epoch == L.epoch_full) {
    const int ww = g.writer >> 5;
    const bool warp_ok = ww == w && L.warps[static_cast<size_t>(w)].full_syncs > g.land_wsync;
    if (!warp_ok)
      fault("ldmatrix by warp " + std::to_string(w) + " reads " + smem_off(L, p) +
            ", written by a cp.async of thread " + std::to_string(g.writer) + " (warp " + std::to_string(ww) +
            ") that landed (cp_async_wait) after the last barrier: the data is visible to the issuing thread "
            "only "
            "until a barrier" +
            (ww == w ? " (or __syncwarp)" : std::string()) + " orders it for the others");
  }
  if (g.read_epoch != L.epoch_full) {
    g.read_epoch = L.epoch_full;
    g.read_warps = 0;
  }
  g.read_warps |= 1u << (w & 31);
  (void)t;
}

float half_bits_to_float(uint16_t h, bool bf16) {
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

}  // namespace

Counters& counters() {
  static Counters c;
  return c;
}

void exec_flash_collective(LaunchCtx& L, int w, WOp op, unsigned mask) {
  const int lo = w * 32;
  if (mask != 0xffffffffu) fault("a flash primitive in a partial warp");
  auto lane = [&](int l) -> ThreadCtx& { return L.threads[static_cast<size_t>(lo + l)]; };
  if (op == WOp::ldmatrix || op == WOp::ldmatrix_trans) {
    const bool trans = op == WOp::ldmatrix_trans;
    ThreadCtx* const arriving = t_cur;
    struct Restore {
      ThreadCtx* t;
      ~Restore() { t_cur = t; }
    } restore{arriving};
    const char* what = trans ? "ldmatrix_x4_trans" : "ldmatrix_x4";
    uint16_t m[4][8][8];  // matrix, addressed row, element
    // Every lane's address first (alignment, bounds), then the race and access checks.
    for (int l = 0; l < 32; ++l) {
      ThreadCtx& t = lane(l);
      const void* p = t.addr;
      t_cur = &t;  // faults and the access checks name this lane
      if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
        fault(std::string(what) + ": row address " +
                  (in_smem(L, p, 1) ? smem_off(L, p) : std::string("(outside shared memory)")) +
                  " is not 16-byte aligned",
              cudaErrorMisalignedAddress);
      if (!in_smem(L, p, 16)) {
        std::ostringstream os;
        os << what << ": row address " << p << " (offset " << (static_cast<const char*>(p) - L.dsmem)
           << ") is outside the block's " << L.dsmem_bytes << " bytes of dynamic shared memory";
        fault(os.str(), cudaErrorIllegalAddress);
      }
    }
    for (int l = 0; l < 32; ++l) {
      ThreadCtx& t = lane(l);
      const void* p = t.addr;
      t_cur = &t;
      if (options().race_check) check_row_read(L, p, w, t);
      kernel_access(p, 16, false, false);
      std::memcpy(m[l >> 3][l & 7], p, 16);
    }
    for (int l = 0; l < 32; ++l) {
      ThreadCtx& t = lane(l);
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
    ++counters().ldmatrix;
    return;
  }
  // mma.m16n8k16
  const bool bf16 = op == WOp::mma_bf16;
  double A[16][16], B[16][8], Cm[16][8];
  auto lo16 = [](uint32_t r) { return static_cast<uint16_t>(r & 0xffffu); };
  auto hi16 = [](uint32_t r) { return static_cast<uint16_t>(r >> 16); };
  for (int l = 0; l < 32; ++l) {
    const ThreadCtx& t = lane(l);
    const int g = l >> 2, c = l & 3;
    const uint32_t* a = t.a;
    A[g][2 * c] = half_bits_to_float(lo16(a[0]), bf16);
    A[g][2 * c + 1] = half_bits_to_float(hi16(a[0]), bf16);
    A[g + 8][2 * c] = half_bits_to_float(lo16(a[1]), bf16);
    A[g + 8][2 * c + 1] = half_bits_to_float(hi16(a[1]), bf16);
    A[g][2 * c + 8] = half_bits_to_float(lo16(a[2]), bf16);
    A[g][2 * c + 9] = half_bits_to_float(hi16(a[2]), bf16);
    A[g + 8][2 * c + 8] = half_bits_to_float(lo16(a[3]), bf16);
    A[g + 8][2 * c + 9] = half_bits_to_float(hi16(a[3]), bf16);
    B[2 * c][g] = half_bits_to_float(lo16(t.b0), bf16);
    B[2 * c + 1][g] = half_bits_to_float(hi16(t.b0), bf16);
    B[2 * c + 8][g] = half_bits_to_float(lo16(t.b1), bf16);
    B[2 * c + 9][g] = half_bits_to_float(hi16(t.b1), bf16);
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
    ThreadCtx& t = lane(l);
    const int g = l >> 2, c = l & 3;
    t.d[0] = D[g][2 * c];
    t.d[1] = D[g][2 * c + 1];
    t.d[2] = D[g + 8][2 * c];
    t.d[3] = D[g + 8][2 * c + 1];
  }
  ++counters().mma;
}

void flash_warp_collective(WOp op);  // exec.cpp

namespace flash {

uint32_t smem_addr(const void* p) {
  NoCheck guard;
  LaunchCtx& L = L_();
  if (!in_smem(L, p, 1)) fault("smem_addr of an address outside shared memory", cudaErrorIllegalAddress);
  return static_cast<uint32_t>(static_cast<const char*>(p) - L.dsmem);
}

void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  NoCheck guard;
  ThreadCtx& t = cur_thread("ldmatrix");
  t.addr = row;
  t.r = r;
  flash_warp_collective(trans ? WOp::ldmatrix_trans : WOp::ldmatrix);
}

void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
  NoCheck guard;
  ThreadCtx& t = cur_thread("mma");
  t.d = d;
  t.a = a;
  t.b0 = b0;
  t.b1 = b1;
  flash_warp_collective(bf16 ? WOp::mma_bf16 : WOp::mma_f16);
}

void cp_async_16(void* smem, const void* gmem, bool pred) {
  NoCheck guard;
  LaunchCtx& L = L_();
  ThreadCtx& t = cur_thread("cp.async");
  if (reinterpret_cast<uintptr_t>(smem) % 16 != 0 || !in_smem(L, smem, 16)) {
    std::ostringstream os;
    os << "cp_async_16: destination " << smem << " (offset " << (static_cast<char*>(smem) - L.dsmem)
       << ") is not a 16-byte aligned 16-byte range inside the block's " << L.dsmem_bytes
       << " bytes of dynamic shared memory";
    fault(os.str(), cudaErrorIllegalAddress);
  }
  if (reinterpret_cast<uintptr_t>(gmem) % 16 != 0) {
    std::ostringstream os;
    os << "cp_async_16: source " << gmem << " is not 16-byte aligned" << (pred ? "" : " (predicate false)");
    fault(os.str(), cudaErrorMisalignedAddress);
  }
  if (pred && !host_global_ok(gmem, 16)) {
    std::ostringstream os;
    os << "cp_async_16: source " << gmem << " (16 bytes) is outside every registered global buffer";
    fault(os.str(), cudaErrorIllegalAddress);
  }
  if (pred) kernel_access(gmem, 16, false, false);  // bounds, ordering, unwritten bytes
  if (options().race_check) {
    Granule16& g = granule(L, smem);
    if (g.pending >= 0)
      fault("cp_async_16 to " + smem_off(L, smem) + " while an earlier cp.async of thread " +
            std::to_string(g.pending) + " to it is still in flight (no ordering between them)");
    if (g.read_epoch == L.epoch_full && (g.read_warps & ~(1u << (t.warp & 31))) != 0) {
      int other = 0;
      while (!((g.read_warps >> other) & 1u) || other == (t.warp & 31)) ++other;
      fault("cp_async_16 to " + smem_off(L, smem) + ", which warp " + std::to_string(other) +
            " read by ldmatrix since the last barrier (write after read without a barrier)");
    }
    g.pending = t.tid;
  }
  CpCopy c;
  c.dst = static_cast<char*>(smem);
  ++t_nocheck;
  if (pred)
    std::memcpy(c.data, gmem, 16);
  else
    std::memset(c.data, 0, 16);
  std::memset(smem, 0xff, 16);  // poison until it lands
  --t_nocheck;
  std::memcpy(L.shadow16.data() + (static_cast<char*>(smem) - L.dsmem), smem, 16);
  t.uncommitted.push_back(c);
  ++counters().cp_async;
  if (!pred) ++counters().cp_async_zero_fill;
}

void cp_async_commit() {
  NoCheck guard;
  ThreadCtx& t = cur_thread("cp.async.commit_group");
  t.committed.push_back(std::move(t.uncommitted));
  t.uncommitted.clear();
}

void cp_async_wait(int n) {
  NoCheck guard;
  LaunchCtx& L = L_();
  ThreadCtx& t = cur_thread("cp.async.wait_group");
  while (t.committed.size() > static_cast<size_t>(n)) {
    for (const CpCopy& c : t.committed.front()) land(L, t, c);
    t.committed.pop_front();
  }
}

void atomic_add(float* p, float v) {
  NoCheck guard;
  kernel_access(p, 4, true, true);
  *p += v;
}

void atomic_add2(float* p, float a, float b) {
  NoCheck guard;
  if (reinterpret_cast<uintptr_t>(p) % 8 != 0)
    fault("atomic_add2 (a float2 atomic) on an address that is not 8-byte aligned",
          cudaErrorMisalignedAddress);
  kernel_access(p, 8, true, true);
  p[0] += a;
  p[1] += b;
}

}  // namespace flash

// The plain-store rule (e) at a barrier: granules read by ldmatrix in the interval that
// plain stores changed afterwards, and plain stores over copies in flight.
void flash_barrier_check(LaunchCtx& L) {
  if (!options().race_check || L.shadow16.empty()) return;
  for (size_t i = 0; i < L.gran.size(); ++i) {
    const Granule16& g = L.gran[i];
    const bool changed = std::memcmp(L.dsmem + 16 * i, L.shadow16.data() + 16 * i, 16) != 0;
    if (!changed) continue;
    if (g.pending >= 0)
      fault("a plain store wrote smem+" + std::to_string(16 * i) + " while a cp.async of thread " +
            std::to_string(g.pending) + " to it was in flight (the copy lands over it)");
    if (g.read_epoch == L.epoch_full) {
      int w = 0;
      while (!((g.read_warps >> w) & 1u)) ++w;
      fault(
          "smem+" + std::to_string(16 * i) + " was read by ldmatrix (warp " + std::to_string(w) +
          ") and then changed by a plain store before the next barrier (write after read without a barrier)");
    }
  }
}

void flash_exit_count(ThreadCtx& t) {
  counters().cp_async_dropped += t.uncommitted.size();
  for (const auto& g : t.committed) counters().cp_async_dropped += g.size();
}

}  // namespace barbell::emu

// ---- the tests' interface -------------------------------------------------------------------

namespace barbell::gpu::fa::sim {

Options& options() {
  static Options o = [] {
    Options x;
    if (const char* e = std::getenv("BB_SIM_RACECHECK")) x.race_check = std::strcmp(e, "0") != 0;
    return x;
  }();
  return o;
}

Stats& stats() {
  static Stats s;
  const emu::Counters& c = emu::counters();
  s.blocks = c.blocks;
  s.mma = c.mma;
  s.ldmatrix = c.ldmatrix;
  s.shfl = c.shfl;
  s.warp_syncs = c.warp_syncs;
  s.block_syncs = c.block_syncs;
  s.cp_async = c.cp_async;
  s.cp_async_zero_fill = c.cp_async_zero_fill;
  s.cp_async_dropped = c.cp_async_dropped;
  s.switches = c.switches;
  return s;
}

void register_global(const void* p, size_t bytes) { emu::register_host_global(p, bytes); }
void clear_globals() { emu::clear_host_globals(); }

void launch(int grid_x, int grid_y, int grid_z, int threads, size_t smem_bytes,
            const std::function<void()>& body) {
  if (threads <= 0 || threads > 1024)
    throw Error("warp_sim: launch with " + std::to_string(threads) + " threads");
  if (grid_x <= 0 || grid_y <= 0 || grid_z <= 0) throw Error("warp_sim: launch with an empty grid");
  if (smem_bytes > options().max_dynamic_smem)
    throw Error("warp_sim: launch with " + std::to_string(smem_bytes) +
                " bytes of dynamic shared memory, over the " + std::to_string(options().max_dynamic_smem) +
                " of sim::options().max_dynamic_smem");
  emu::memory_init();
  emu::set_host_memory_allowed(true);
  emu::Options& eo = emu::options();
  eo.race_check = options().race_check;
  eo.seed = options().seed;
  const emu::Order order = options().schedule == Schedule::reverse  ? emu::Order::reverse
                           : options().schedule == Schedule::random ? emu::Order::random
                                                                    : emu::Order::forward;
  emu::LaunchCtx L;
  L.site = emu::LaunchSite{"sim::launch", "tests/sim", 0};
  L.grid = dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y), static_cast<unsigned>(grid_z));
  L.block = dim3(static_cast<unsigned>(threads), 1, 1);
  L.smem = smem_bytes;
  L.body = &body;
  emu::run_launch(L, order);
}

}  // namespace barbell::gpu::fa::sim

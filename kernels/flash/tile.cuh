// Shared-memory tiles of the flash-attention kernels: swizzled [rows][COLS] tiles of
// 16-bit elements filled by cp.async, and the launch shape each kernel reports.
//
// Swizzle: a row of COLS elements is COLS / 8 chunks of 16 bytes; chunk c of row r is
// stored at chunk c ^ (r % 8). An ldmatrix reads one 16-byte chunk from each of 8
// consecutive rows at the same logical chunk: the XOR puts the 8 chunks on 8 distinct
// 16-byte bank groups, so the read is conflict-free (unswizzled, rows of 128 or 256
// bytes would put all 8 in the same banks: an 8-way conflict). COLS >= 64.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flash/params.hpp"
#include "flash/primitives.cuh"

namespace barbell::gpu::fa {

struct LaunchShape {
  int grid_x = 1, grid_y = 1, grid_z = 1, threads = 0;
  size_t smem = 0;
};

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

BB_FA_DEVICE int ceil_div(int a, int b) { return (a + b - 1) / b; }
BB_FA_DEVICE int imin(int a, int b) { return a < b ? a : b; }
BB_FA_DEVICE int imax(int a, int b) { return a > b ? a : b; }

// Element offset of (row, 16-byte chunk) in a swizzled tile with COLS columns.
template <int COLS>
BB_FA_DEVICE int swz(int row, int chunk) {
  static_assert(COLS >= 64 && COLS % 64 == 0, "swizzled tiles need at least 8 chunks per row");
  return row * COLS + ((chunk ^ (row & 7)) << 3);
}

// ROWS x COLS elements from global memory (row r at src + r * row_stride, COLS
// contiguous) into a swizzled tile with cp.async, by THREADS threads; rows >= nvalid
// are zero-filled (and not read: `fallback`, any valid address, is passed instead).
template <typename T, int ROWS, int COLS, int THREADS>
BB_FA_DEVICE void load_tile(T* tile, const T* src, int64_t row_stride, int nvalid, const T* fallback, int tid) {
  constexpr int kChunks = COLS / 8;
  constexpr int kTotal = ROWS * kChunks;
  static_assert(kTotal % THREADS == 0 && THREADS % kChunks == 0, "tile chunks must divide evenly among the threads");
  constexpr int kRowStep = THREADS / kChunks;  // rows between a thread's chunks
  // The thread's chunk column is the same in every row it copies, and its rows are
  // kRowStep apart: one pointer, stepped (fewer live registers than one per chunk).
  const int c = tid % kChunks, r0 = tid / kChunks;
  const T* g = src + static_cast<int64_t>(r0) * row_stride + c * 8;
  const int64_t step = static_cast<int64_t>(kRowStep) * row_stride;
#pragma unroll
  for (int i = 0; i < kTotal / THREADS; ++i) {
    const int r = r0 + i * kRowStep;
    const bool ok = r < nvalid;
    cp_async_16(tile + swz<COLS>(r, c), ok ? g : fallback, ok);
    g += step;
  }
}

// ldmatrix addressing. An x4 ldmatrix of a 16 x 16 block at rows r0.. (a multiple of
// 16) and 16-byte chunks 2 cp, 2 cp + 1 of a swizzled tile reads, in lane l, row
// r0 + R(l) at chunk (2 cp + C(l)) ^ (R(l) % 8), where R(l) in [0, 16) and C(l) in
// {0, 1} depend on the operand (below). As 2 cp + C = 2 cp ^ C, that chunk is
// 2 cp ^ w(l) with w = C ^ (R % 8) < 8, and writing cp = 4 ch + cl it is
// 8 ch + (2 cl ^ w): the lane's element offset is a per-lane value for cl (4 of them,
// computed once per kernel) plus compile-time constants for r0 and ch. Without this
// the compiler keeps one address register per (row block, chunk) pair and runs out of
// registers.
template <int COLS>
struct LdRows {
  int off[4];
  int row, w;
  BB_FA_DEVICE LdRows(int R, int C) : row(R * COLS), w(C ^ (R & 7)) {
#pragma unroll
    for (int cl = 0; cl < 4; ++cl) off[cl] = row + (((2 * cl) ^ w) << 3);
  }
  // cp known at compile time (unrolled loops): no arithmetic but an immediate.
  BB_FA_DEVICE int at(int r0, int cp) const { return r0 * COLS + off[cp & 3] + ((cp >> 2) << 6); }
  // cp known only at run time (it depends on the warp): computed, not indexed.
  BB_FA_DEVICE int at_dyn(int r0, int cp) const { return r0 * COLS + row + (((2 * cp) ^ w) << 3); }
};
// The four ldmatrix patterns of the kernels, for lane `lane`:
//   A operand, tile holds A row-major ([m][k]): matrices (rows 0-7, chunk 0),
//     (8-15, 0), (0-7, 1), (8-15, 1) -> a0..a3.
template <int COLS>
BB_FA_DEVICE LdRows<COLS> rows_a(int lane) { return LdRows<COLS>(lane & 15, lane >> 4); }
//   B operands of two n-tiles, tile holds B^T row-major ([n][k], e.g. K for S = Q K^T):
//     matrices (n 0-7, k chunk 0), (n 0-7, chunk 1), (n 8-15, chunk 0), (n 8-15, chunk 1)
//     -> b0, b1 of n-tile 0, b0, b1 of n-tile 1.
//   A operand, tile holds A^T row-major ([k][m], with ldmatrix.trans): matrices
//     (k 0-7, m chunk 0), (k 0-7, m chunk 1), (k 8-15, chunk 0), (k 8-15, chunk 1)
//     -> a0..a3. Same addresses as B^T above.
template <int COLS>
BB_FA_DEVICE LdRows<COLS> rows_nk(int lane) { return LdRows<COLS>((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1); }
//   B operands of two n-tiles, tile holds B row-major ([k][n], e.g. V for O = P V; with
//     ldmatrix.trans): matrices (k 0-7, n chunk 0), (k 8-15, chunk 0), (k 0-7, chunk 1),
//     (k 8-15, chunk 1) -> b0, b1 of n-tile 0, b0, b1 of n-tile 1.
template <int COLS>
BB_FA_DEVICE LdRows<COLS> rows_kn(int lane) {
  return LdRows<COLS>((lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4);
}

// A operand (16 x 16): rows r0.., chunks 2 cp, 2 cp + 1 of a [m][k] tile.
template <int COLS, typename T>
BB_FA_DEVICE void load_a(uint32_t (&a)[4], const T* tile, const LdRows<COLS>& rows, int r0, int cp) {
  ldmatrix_x4(a, tile + rows.at(r0, cp));
}
// B operands of n-tiles n0/8, n0/8 + 1 (k chunks 2 cp, 2 cp + 1) of a [n][k] tile.
template <int COLS, typename T>
BB_FA_DEVICE void load_b_nk(uint32_t (&b)[4], const T* tile, const LdRows<COLS>& rows, int n0, int cp) {
  ldmatrix_x4(b, tile + rows.at(n0, cp));
}
// B operands of n-tiles 2 cp, 2 cp + 1 (k rows k0..k0+15) of a [k][n] tile.
template <int COLS, typename T>
BB_FA_DEVICE void load_b_kn(uint32_t (&b)[4], const T* tile, const LdRows<COLS>& rows, int k0, int cp) {
  ldmatrix_x4_trans(b, tile + rows.at(k0, cp));
}
// A operand (16 x 16, m chunks 2 cp, 2 cp + 1, k rows k0..k0+15) of a [k][m] tile; cp
// may be a run-time value.
template <int COLS, typename T>
BB_FA_DEVICE void load_a_km(uint32_t (&a)[4], const T* tile, const LdRows<COLS>& rows, int k0, int cp) {
  ldmatrix_x4_trans(a, tile + rows.at_dyn(k0, cp));
}
// load_b_kn for a run-time cp.
template <int COLS, typename T>
BB_FA_DEVICE void load_b_kn_dyn(uint32_t (&b)[4], const T* tile, const LdRows<COLS>& rows, int k0, int cp) {
  ldmatrix_x4_trans(b, tile + rows.at_dyn(k0, cp));
}

// The A operand of P V from the fp32 accumulators of S (n-tiles 2 kc, 2 kc + 1),
// rounded to T: the C layout of two n-tiles is the A layout of one k-chunk.
template <typename T>
BB_FA_DEVICE void acc_to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = pack2<T>(lo[0], lo[1]);
  a[1] = pack2<T>(lo[2], lo[3]);
  a[2] = pack2<T>(hi[0], hi[1]);
  a[3] = pack2<T>(hi[2], hi[3]);
}

}  // namespace barbell::gpu::fa

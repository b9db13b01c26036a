// Flash-attention backward (FlashAttention-2's schedule on mma.sync; sm_80 and later).
//
//   preprocess:  delta_i = sum_d dO_id O_id (fp32), and dq_accum = 0 in atomic mode.
//   dkdv:        one block per (BN keys, head, batch), NW warps of 16 keys each. It
//                keeps K and V in shared memory and dK, dV in registers, and walks the
//                query blocks of BM queries (double-buffered Q, dO, lse, delta). The
//                products are taken transposed so that every one of them has this
//                warp's keys as its rows and nothing but dS goes through shared memory:
//                  S^T  = K Q^T           P^T = exp(S^T * scale - lse)
//                  dV  += P^T dO          dP^T = V dO^T
//                  dS^T = P^T (dP^T - delta)
//                  dK  += dS^T Q          (times scale at the end)
//                Atomic mode also writes dS^T to shared memory and adds dQ += dS K
//                (the warps split the BM x D tile) into the fp32 dq_accum with atomics.
//   dq_convert:  dq = scale * dq_accum, rounded to T (atomic mode).
//   dq:          deterministic mode: one block per (BM queries, head, batch) walks the
//                key blocks like the forward, recomputes S and dP = dO V^T and keeps
//                dQ += dS K in registers. Each dQ element is then a fixed-order sum
//                (two more products than atomic mode: about 40% more work).
#pragma once

#include <cmath>

#include "flash/tile.cuh"

namespace barbell::gpu::fa {

// ---- preprocess and dq_convert: a warp per query row ---------------------------------

constexpr int kRowWarps = 8;  // rows (warps) per block

template <typename T, int D>
inline LaunchShape bwd_preprocess_shape(const BwdParams& p) {
  LaunchShape s;
  s.grid_x = (p.Tq + kRowWarps - 1) / kRowWarps;
  s.grid_y = p.H;
  s.grid_z = p.B;
  s.threads = kRowWarps * 32;
  s.smem = 0;
  return s;
}

template <typename T, int D>
BB_FA_KERNEL(kRowWarps * 32) bwd_preprocess_kernel(const BwdParams p) {
  constexpr int E = D / 32;  // elements per lane
  const int warp = thread_x() >> 5, lane = thread_x() & 31;
  const int i = block_x() * kRowWarps + warp, h = block_y(), b = block_z();
  if (i >= p.Tq) return;
  const T* o = static_cast<const T*>(p.o) + b * p.so.b + h * p.so.h + static_cast<int64_t>(i) * p.so.t;
  const T* d = static_cast<const T*>(p.dout) + b * p.sdo.b + h * p.sdo.h + static_cast<int64_t>(i) * p.sdo.t;
  float acc = 0.f;
#pragma unroll
  for (int e = 0; e < E; ++e) acc += to_float<T>(o[lane * E + e]) * to_float<T>(d[lane * E + e]);
  for (int m = 16; m > 0; m >>= 1) acc += shfl_xor(acc, m);
  const int64_t row = (static_cast<int64_t>(b) * p.H + h) * p.Tq + i;
  if (lane == 0) p.delta[row] = acc;
  if (p.dq_accum) {
#pragma unroll
    for (int e = 0; e < E; ++e) p.dq_accum[row * D + lane * E + e] = 0.f;
  }
}

template <typename T, int D>
inline LaunchShape bwd_dq_convert_shape(const BwdParams& p) {
  return bwd_preprocess_shape<T, D>(p);
}

template <typename T, int D>
BB_FA_KERNEL(kRowWarps * 32) bwd_dq_convert_kernel(const BwdParams p) {
  constexpr int E = D / 32;
  static_assert(E % 2 == 0, "pairs per lane");
  const int warp = thread_x() >> 5, lane = thread_x() & 31;
  const int i = block_x() * kRowWarps + warp, h = block_y(), b = block_z();
  if (i >= p.Tq) return;
  const float* src = p.dq_accum + ((static_cast<int64_t>(b) * p.H + h) * p.Tq + i) * D + lane * E;
  T* dst = static_cast<T*>(p.dq) + b * p.sdq.b + h * p.sdq.h + static_cast<int64_t>(i) * p.sdq.t + lane * E;
#pragma unroll
  for (int e = 0; e < E; e += 2)
    *reinterpret_cast<uint32_t*>(dst + e) = pack2<T>(src[e] * p.scale, src[e + 1] * p.scale);
}

// ---- dkdv -------------------------------------------------------------------------------

template <int D>
struct BwdCfg {
  static constexpr int BN = 128, BM = 64, NW = 8;  // keys per block, queries per step, warps
};

template <typename T, int D>
inline LaunchShape bwd_dkdv_shape(const BwdParams& p) {
  using C = BwdCfg<D>;
  LaunchShape s;
  s.grid_x = (p.Tk + C::BN - 1) / C::BN;
  s.grid_y = p.H;
  s.grid_z = p.B;
  s.threads = C::NW * 32;
  // K, V; Q and dO double-buffered; dS^T; lse and delta double-buffered.
  s.smem = (static_cast<size_t>(2 * C::BN * D + 4 * C::BM * D + C::BN * C::BM)) * sizeof(T) +
           4 * C::BM * sizeof(float);
  return s;
}

template <typename T, int D, bool Causal, bool AtomicDq>
BB_FA_KERNEL(BwdCfg<D>::NW * 32) bwd_dkdv_kernel(const BwdParams p) {
  using C = BwdCfg<D>;
  constexpr int BN = C::BN, BM = C::BM, NW = C::NW, NTH = NW * 32;
  constexpr int NS = BM / 8;  // n-tiles of S^T (columns: queries)
  constexpr int NO = D / 8;   // n-tiles of dK, dV
  static_assert(BN == 16 * NW, "a warp owns 16 keys");
  // dQ tile split: (BM / 16) m-tiles x QG column groups of D / QG columns.
  constexpr int QG = NW / (BM / 16);
  constexpr int QCOLS = D / QG;
  static_assert(QG * (BM / 16) == NW && QCOLS % 16 == 0, "dQ split");

  const int tid = thread_x(), warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int h = block_y(), b = block_z();
  const int n0 = block_x() * BN;
  const int off = p.Tk - p.Tq;
  const int mblocks = ceil_div(p.Tq, BM);
  // Causal: query i sees key j when i >= j - off; the first query that sees key n0.
  const int mfirst = Causal ? imax(0, n0 - off) / BM : 0;

  const T* qh = static_cast<const T*>(p.q) + b * p.sq.b + h * p.sq.h;
  const T* kh = static_cast<const T*>(p.k) + b * p.sk.b + h * p.sk.h;
  const T* vh = static_cast<const T*>(p.v) + b * p.sv.b + h * p.sv.h;
  const T* doh = static_cast<const T*>(p.dout) + b * p.sdo.b + h * p.sdo.h;
  const int64_t rowbase = (static_cast<int64_t>(b) * p.H + h) * p.Tq;  // lse, delta, dq_accum rows

  T* Ks = reinterpret_cast<T*>(dynamic_smem());
  T* Vs = Ks + BN * D;
  T* Qs = Vs + BN * D;    // [2][BM][D]
  T* dOs = Qs + 2 * BM * D;  // [2][BM][D]
  T* dSs = dOs + 2 * BM * D;  // [BN][BM]
  float* lse_s = reinterpret_cast<float*>(dSs + BN * BM);  // [2][BM], lse * log2(e); +inf past Tq
  float* delta_s = lse_s + 2 * BM;                         // [2][BM]

  load_tile<T, BN, D, NTH>(Ks, kh + static_cast<int64_t>(n0) * p.sk.t, p.sk.t, p.Tk - n0, kh, tid);
  load_tile<T, BN, D, NTH>(Vs, vh + static_cast<int64_t>(n0) * p.sv.t, p.sv.t, p.Tk - n0, vh, tid);
  cp_async_commit();

  // Query block mb into buffer buf: Q and dO by cp.async; lse and delta are read into
  // registers when the block is prefetched and stored to shared memory just before the
  // barrier that ends the iteration, so no warp waits on their global loads.
  auto load_query_tiles = [&](int mb, int buf) {
    const int m0 = mb * BM;
    load_tile<T, BM, D, NTH>(Qs + buf * BM * D, qh + static_cast<int64_t>(m0) * p.sq.t, p.sq.t, p.Tq - m0, qh, tid);
    load_tile<T, BM, D, NTH>(dOs + buf * BM * D, doh + static_cast<int64_t>(m0) * p.sdo.t, p.sdo.t, p.Tq - m0, doh,
                             tid);
  };
  float next_lse = 0.f, next_delta = 0.f;  // thread tid < BM: row tid of the prefetched block
  auto load_row_stats = [&](int mb) {
    const int i = mb * BM + tid;
    if (tid < BM) {
      next_lse = i < p.Tq ? p.lse[rowbase + i] * kLog2e : INFINITY;
      next_delta = i < p.Tq ? p.delta[rowbase + i] : 0.f;
    }
  };
  if (mfirst < mblocks) {
    load_query_tiles(mfirst, 0);
    load_row_stats(mfirst);
    if (tid < BM) {
      lse_s[tid] = next_lse;
      delta_s[tid] = next_delta;
    }
  }
  cp_async_commit();

  float dk[NO][4], dv[NO][4];
#pragma unroll
  for (int n = 0; n < NO; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;
  const float sl2 = p.scale_log2;
  const int krow = warp * 16;  // the warp's first key row in the block
  const LdRows<D> ra = rows_a<D>(lane), rnk = rows_nk<D>(lane), rkn = rows_kn<D>(lane);
  const LdRows<BM> rds = rows_nk<BM>(lane);  // dS^T [BN][BM], read as A^T

  for (int mb = mfirst; mb < mblocks; ++mb) {
    const int buf = (mb - mfirst) & 1;
    const int m0 = mb * BM;
    if (mb + 1 < mblocks) {  // buf ^ 1 was released by the last barrier
      load_query_tiles(mb + 1, buf ^ 1);
      load_row_stats(mb + 1);
    }
    cp_async_commit();
    cp_async_wait<1>();  // K, V and this query block have landed
    block_sync();
    const T* Qb = Qs + buf * BM * D;
    const T* dOb = dOs + buf * BM * D;
    const float* lse_b = lse_s + buf * BM;
    const float* delta_b = delta_s + buf * BM;

    // S^T = K Q^T and dP^T = V dO^T: [16 keys] x [BM queries] per warp.
    float st[NS][4], dpt[NS][4];
#pragma unroll
    for (int n = 0; n < NS; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.f;
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
      uint32_t ka[4], va[4];
      load_a<D>(ka, Ks, ra, krow, kc);
      load_a<D>(va, Vs, ra, krow, kc);
#pragma unroll
      for (int np = 0; np < NS / 2; ++np) {
        uint32_t qb[4], db[4];
        load_b_nk<D>(qb, Qb, rnk, np * 16, kc);
        load_b_nk<D>(db, dOb, rnk, np * 16, kc);
        mma_16816<T>(st[2 * np], ka, qb[0], qb[1]);
        mma_16816<T>(st[2 * np + 1], ka, qb[2], qb[3]);
        mma_16816<T>(dpt[2 * np], va, db[0], db[1]);
        mma_16816<T>(dpt[2 * np + 1], va, db[2], db[3]);
      }
    }

    // P^T (masked entries 0) and dS^T = P^T (dP^T - delta).
    const bool need_mask = (n0 + BN > p.Tk) || (m0 + BM > p.Tq) || (Causal && n0 + BN - 1 > m0 + off);
#pragma unroll
    for (int n = 0; n < NS; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = n0 + krow + g + 8 * (e >> 1);  // key (row)
        const int c = n * 8 + 2 * t4 + (e & 1);      // query column in the block
        const int i = m0 + c;
        const bool masked = need_mask && (j >= p.Tk || i >= p.Tq || (Causal && j > i + off));
        const float pv = masked ? 0.f : fast_exp2(st[n][e] * sl2 - lse_b[c]);
        st[n][e] = pv;
        dpt[n][e] = pv * (dpt[n][e] - delta_b[c]);
      }
    }

    // dV += P^T dO and dK += dS^T Q (k = queries).
#pragma unroll
    for (int kc = 0; kc < BM / 16; ++kc) {
      uint32_t pa[4], sa[4];
      acc_to_a<T>(pa, st[2 * kc], st[2 * kc + 1]);
      acc_to_a<T>(sa, dpt[2 * kc], dpt[2 * kc + 1]);
#pragma unroll
      for (int np = 0; np < NO / 2; ++np) {
        uint32_t db[4], qb[4];
        load_b_kn<D>(db, dOb, rkn, kc * 16, np);
        load_b_kn<D>(qb, Qb, rkn, kc * 16, np);
        mma_16816<T>(dv[2 * np], pa, db[0], db[1]);
        mma_16816<T>(dv[2 * np + 1], pa, db[2], db[3]);
        mma_16816<T>(dk[2 * np], sa, qb[0], qb[1]);
        mma_16816<T>(dk[2 * np + 1], sa, qb[2], qb[3]);
      }
    }

    if constexpr (AtomicDq) {
      // dS^T to shared memory (rounded to T, as the products above used it) ...
#pragma unroll
      for (int n = 0; n < NS; ++n) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = krow + g + 8 * r;
          *reinterpret_cast<uint32_t*>(dSs + swz<BM>(row, n) + 2 * t4) =
              pack2<T>(dpt[n][2 * r], dpt[n][2 * r + 1]);
        }
      }
      block_sync();
      // ... then dQ[BM x D] += dS K, warp (mq, cg) taking queries mq*16.. and columns
      // cg*QCOLS.., added into dq_accum (unscaled; dq_convert applies the scale).
      const int mq = warp % (BM / 16), cg = warp / (BM / 16);
      float dq[QCOLS / 8][4];
#pragma unroll
      for (int n = 0; n < QCOLS / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;
#pragma unroll
      for (int kc = 0; kc < BN / 16; ++kc) {
        uint32_t sa2[4];
        load_a_km<BM>(sa2, dSs, rds, kc * 16, mq);
#pragma unroll
        for (int np = 0; np < QCOLS / 16; ++np) {
          uint32_t kb[4];
          load_b_kn_dyn<D>(kb, Ks, rkn, kc * 16, cg * (QCOLS / 16) + np);
          mma_16816<T>(dq[2 * np], sa2, kb[0], kb[1]);
          mma_16816<T>(dq[2 * np + 1], sa2, kb[2], kb[3]);
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = m0 + mq * 16 + g + 8 * r;
        if (i < p.Tq) {
          float* acc = p.dq_accum + (rowbase + i) * D + cg * QCOLS + 2 * t4;
#pragma unroll
          for (int n = 0; n < QCOLS / 8; ++n) atomic_add2(acc + n * 8, dq[n][2 * r], dq[n][2 * r + 1]);
        }
      }
    }
    if (mb + 1 < mblocks && tid < BM) {  // nobody reads buffer buf ^ 1 in this iteration
      lse_s[(buf ^ 1) * BM + tid] = next_lse;
      delta_s[(buf ^ 1) * BM + tid] = next_delta;
    }
    block_sync();  // this buffer and dSs may be overwritten, the next block's stats are visible
  }
  cp_async_wait<0>();

  // dK (times the softmax scale) and dV; rows past Tk are dropped.
  T* dkh = static_cast<T*>(p.dk) + b * p.sdk.b + h * p.sdk.h;
  T* dvh = static_cast<T*>(p.dv) + b * p.sdv.b + h * p.sdv.h;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = n0 + krow + g + 8 * r;
    if (j < p.Tk) {
      T* dkr = dkh + static_cast<int64_t>(j) * p.sdk.t + 2 * t4;
      T* dvr = dvh + static_cast<int64_t>(j) * p.sdv.t + 2 * t4;
#pragma unroll
      for (int n = 0; n < NO; ++n) {
        *reinterpret_cast<uint32_t*>(dkr + n * 8) = pack2<T>(dk[n][2 * r] * p.scale, dk[n][2 * r + 1] * p.scale);
        *reinterpret_cast<uint32_t*>(dvr + n * 8) = pack2<T>(dv[n][2 * r], dv[n][2 * r + 1]);
      }
    }
  }
}

// ---- dq (deterministic mode) -------------------------------------------------------------

template <int D>
struct BwdDqCfg {
  static constexpr int BM = 64, BN = 64, NW = 4;  // a warp owns 16 queries
};

template <typename T, int D>
inline LaunchShape bwd_dq_shape(const BwdParams& p) {
  using C = BwdDqCfg<D>;
  LaunchShape s;
  s.grid_x = (p.Tq + C::BM - 1) / C::BM;
  s.grid_y = p.H;
  s.grid_z = p.B;
  s.threads = C::NW * 32;
  s.smem = static_cast<size_t>(2 * C::BM * D + 4 * C::BN * D) * sizeof(T);  // Q, dO; K, V double-buffered
  return s;
}

template <typename T, int D, bool Causal>
BB_FA_KERNEL(BwdDqCfg<D>::NW * 32) bwd_dq_kernel(const BwdParams p) {
  using C = BwdDqCfg<D>;
  constexpr int BM = C::BM, BN = C::BN, NW = C::NW, NTH = NW * 32;
  constexpr int NS = BN / 8, NO = D / 8;
  static_assert(BM == 16 * NW, "a warp owns 16 queries");

  const int tid = thread_x(), warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int mblock = grid_x() - 1 - block_x();
  const int h = block_y(), b = block_z();
  const int m0 = mblock * BM;
  const int off = p.Tk - p.Tq;
  const int kend = Causal ? imin(p.Tk, m0 + BM + off) : p.Tk;
  const int nblocks = kend > 0 ? ceil_div(kend, BN) : 0;

  const T* qh = static_cast<const T*>(p.q) + b * p.sq.b + h * p.sq.h;
  const T* kh = static_cast<const T*>(p.k) + b * p.sk.b + h * p.sk.h;
  const T* vh = static_cast<const T*>(p.v) + b * p.sv.b + h * p.sv.h;
  const T* doh = static_cast<const T*>(p.dout) + b * p.sdo.b + h * p.sdo.h;
  const int64_t rowbase = (static_cast<int64_t>(b) * p.H + h) * p.Tq;

  T* Qs = reinterpret_cast<T*>(dynamic_smem());
  T* dOs = Qs + BM * D;
  T* Ks = dOs + BM * D;  // [2][BN][D]
  T* Vs = Ks + 2 * BN * D;  // [2][BN][D]

  load_tile<T, BM, D, NTH>(Qs, qh + static_cast<int64_t>(m0) * p.sq.t, p.sq.t, p.Tq - m0, qh, tid);
  load_tile<T, BM, D, NTH>(dOs, doh + static_cast<int64_t>(m0) * p.sdo.t, p.sdo.t, p.Tq - m0, doh, tid);
  auto load_key_block = [&](int nb, int buf) {
    const int k0 = nb * BN;
    load_tile<T, BN, D, NTH>(Ks + buf * BN * D, kh + static_cast<int64_t>(k0) * p.sk.t, p.sk.t, p.Tk - k0, kh, tid);
    load_tile<T, BN, D, NTH>(Vs + buf * BN * D, vh + static_cast<int64_t>(k0) * p.sv.t, p.sv.t, p.Tk - k0, vh, tid);
  };
  if (nblocks > 0) load_key_block(0, 0);
  cp_async_commit();

  // This thread's two rows per m-tile: lse (times log2 e) and delta.
  const int qrow = warp * 16;
  const LdRows<D> ra = rows_a<D>(lane), rnk = rows_nk<D>(lane), rkn = rows_kn<D>(lane);
  float lse_r[2], delta_r[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = m0 + qrow + g + 8 * r;
    lse_r[r] = i < p.Tq ? p.lse[rowbase + i] * kLog2e : INFINITY;
    delta_r[r] = i < p.Tq ? p.delta[rowbase + i] : 0.f;
  }
  float dq[NO][4];
#pragma unroll
  for (int n = 0; n < NO; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;
  const float sl2 = p.scale_log2;

  for (int nb = 0; nb < nblocks; ++nb) {
    const int buf = nb & 1;
    const int k0 = nb * BN;
    if (nb + 1 < nblocks) load_key_block(nb + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    block_sync();
    const T* Kb = Ks + buf * BN * D;
    const T* Vb = Vs + buf * BN * D;

    float s[NS][4], dp[NS][4];
#pragma unroll
    for (int n = 0; n < NS; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
      uint32_t qa[4], da[4];
      load_a<D>(qa, Qs, ra, qrow, kc);
      load_a<D>(da, dOs, ra, qrow, kc);
#pragma unroll
      for (int np = 0; np < NS / 2; ++np) {
        uint32_t kb[4], vb[4];
        load_b_nk<D>(kb, Kb, rnk, np * 16, kc);
        load_b_nk<D>(vb, Vb, rnk, np * 16, kc);
        mma_16816<T>(s[2 * np], qa, kb[0], kb[1]);
        mma_16816<T>(s[2 * np + 1], qa, kb[2], kb[3]);
        mma_16816<T>(dp[2 * np], da, vb[0], vb[1]);
        mma_16816<T>(dp[2 * np + 1], da, vb[2], vb[3]);
      }
    }

    const bool need_mask = (k0 + BN > p.Tk) || (m0 + BM > p.Tq) || (Causal && k0 + BN - 1 > m0 + off);
#pragma unroll
    for (int n = 0; n < NS; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const int i = m0 + qrow + g + 8 * r;
        const int j = k0 + n * 8 + 2 * t4 + (e & 1);
        const bool masked = need_mask && (j >= p.Tk || i >= p.Tq || (Causal && j > i + off));
        const float pv = masked ? 0.f : fast_exp2(s[n][e] * sl2 - lse_r[r]);
        dp[n][e] = pv * (dp[n][e] - delta_r[r]);  // dS
      }
    }

    // dQ += dS K (k = keys)
#pragma unroll
    for (int kc = 0; kc < BN / 16; ++kc) {
      uint32_t sa[4];
      acc_to_a<T>(sa, dp[2 * kc], dp[2 * kc + 1]);
#pragma unroll
      for (int np = 0; np < NO / 2; ++np) {
        uint32_t kb[4];
        load_b_kn<D>(kb, Kb, rkn, kc * 16, np);
        mma_16816<T>(dq[2 * np], sa, kb[0], kb[1]);
        mma_16816<T>(dq[2 * np + 1], sa, kb[2], kb[3]);
      }
    }
    block_sync();  // buffer buf may be overwritten from here on
  }
  cp_async_wait<0>();

  T* dqh = static_cast<T*>(p.dq) + b * p.sdq.b + h * p.sdq.h;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = m0 + qrow + g + 8 * r;
    if (i < p.Tq) {
      T* row = dqh + static_cast<int64_t>(i) * p.sdq.t + 2 * t4;
#pragma unroll
      for (int n = 0; n < NO; ++n)
        *reinterpret_cast<uint32_t*>(row + n * 8) = pack2<T>(dq[n][2 * r] * p.scale, dq[n][2 * r + 1] * p.scale);
    }
  }
}

}  // namespace barbell::gpu::fa

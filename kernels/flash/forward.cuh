// Flash-attention forward (FlashAttention-2's schedule on mma.sync; sm_80 and later).
//
// One block per (BM queries, head, batch); NW warps, each owning 16 * MT query rows
// for the whole block. The block walks the key blocks of BN keys:
//   S = Q K^T          (tensor cores; Q and K from swizzled shared memory by ldmatrix)
//   online softmax     (row max and sum in fp32 registers; a row lives in the 4 lanes
//                       of a quad, so its reductions are two shuffles)
//   O += P V           (P goes from the S accumulators straight into A fragments)
// while cp.async brings in this block's V (during S and the softmax) and the next K
// (during P V). O is divided by the row sum at the end; the logsumexp
// m * scale + ln(l) is saved for the backward pass.
//
// The structure is kept open to the Hopper path (wgmma, TMA, warp specialisation):
// the tile loads, the S and P V products and the softmax are separate steps.
#pragma once

#include <cmath>

#include "flash/tile.cuh"

namespace barbell::gpu::fa {

// Tile sizes: BM queries per block, BN keys per step, NW warps. Each warp owns
// 16 * MT = BM / NW query rows, so its share of K and V in shared memory is read once
// per MT m-tiles: MT = 2 halves the shared-memory traffic per flop against MT = 1.
// Variant 0 (the default) is MT = 2. With D = 128 the O accumulators alone are then 128
// registers per thread, and BN = 32 keeps the S tile small enough not to spill (nvcc 13,
// sm_90a; BN = 64 spilled 96-208 bytes); D = 64 fits BN = 64. Variant 1 is MT = 1 with
// 8 warps and twice the keys per step: more shared-memory traffic for K and V, but Q
// stays in registers, and half the barriers and softmax rescales per key. These are choices made without a GPU at hand: the
// launcher takes $BARBELL_FLASH_FWD_TILES=1 to run variant 1, so bench_attention can
// measure both.
template <int D, int V>
struct FwdCfg;
template <>
struct FwdCfg<64, 0> {
  static constexpr int BM = 128, BN = 64, NW = 4;
};
template <>
struct FwdCfg<128, 0> {
  static constexpr int BM = 128, BN = 32, NW = 4;
};
template <>
struct FwdCfg<64, 1> {
  static constexpr int BM = 128, BN = 128, NW = 8;
};
template <>
struct FwdCfg<128, 1> {
  static constexpr int BM = 128, BN = 64, NW = 8;
};

template <typename T, int D, int V = 0>
inline LaunchShape fwd_shape(const FwdParams& p) {
  using C = FwdCfg<D, V>;
  LaunchShape s;
  s.grid_x = (p.Tq + C::BM - 1) / C::BM;
  s.grid_y = p.H;
  s.grid_z = p.B;
  s.threads = C::NW * 32;
  s.smem = static_cast<size_t>(C::BM + 2 * C::BN) * D * sizeof(T);
  return s;
}

template <typename T, int D, bool Causal, int V = 0>
BB_FA_KERNEL((FwdCfg<D, V>::NW * 32)) fwd_kernel(const FwdParams p) {
  using C = FwdCfg<D, V>;
  constexpr int BM = C::BM, BN = C::BN, NW = C::NW, NTH = NW * 32;
  constexpr int MT = BM / (16 * NW);  // 16-row m-tiles per warp
  constexpr int NS = BN / 8;          // 8-column n-tiles of S
  constexpr int NO = D / 8;           // 8-column n-tiles of O
  static_assert(BM % (16 * NW) == 0 && BN % 16 == 0 && D % 16 == 0, "tile sizes");

  const int tid = thread_x(), warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int mblock = grid_x() - 1 - block_x();  // the longest causal blocks start first
  const int h = block_y(), b = block_z();
  const int q0 = mblock * BM;
  const int off = p.Tk - p.Tq;  // query i sees keys j <= i + off when causal
  const int kend = Causal ? imin(p.Tk, q0 + BM + off) : p.Tk;
  const int nblocks = kend > 0 ? ceil_div(kend, BN) : 0;

  const T* qh = static_cast<const T*>(p.q) + b * p.sq.b + h * p.sq.h;
  const T* kh = static_cast<const T*>(p.k) + b * p.sk.b + h * p.sk.h;
  const T* vh = static_cast<const T*>(p.v) + b * p.sv.b + h * p.sv.h;

  T* Qs = reinterpret_cast<T*>(dynamic_smem());
  T* Ks = Qs + BM * D;
  T* Vs = Ks + BN * D;

  // Two barriers per key block (FlashAttention-2's schedule): at the first, K_nb has
  // landed and every warp is done with V_{nb-1}, so V_nb is issued and lands during
  // S = Q K^T and the softmax; at the second, V_nb has landed and every warp is done
  // with K_nb, so K_{nb+1} is issued and lands during O += P V. Only one group is ever
  // in flight at a barrier, so every wait is wait<0>.
  load_tile<T, BM, D, NTH>(Qs, qh + static_cast<int64_t>(q0) * p.sq.t, p.sq.t, p.Tq - q0, qh, tid);
  if (nblocks > 0) load_tile<T, BN, D, NTH>(Ks, kh, p.sk.t, p.Tk, kh, tid);
  cp_async_commit();

  float o[MT][NO][4];
  float row_max[MT][2], row_sum[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int n = 0; n < NO; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }
  const float sl2 = p.scale_log2;
  const int wrow = warp * MT * 16;  // the warp's first row in the block
  const LdRows<D> ra = rows_a<D>(lane), rnk = rows_nk<D>(lane), rkn = rows_kn<D>(lane);

  // With one m-tile per warp (MT = 1) the warp's Q fragments (D / 16 x 4 registers) fit
  // in registers next to the accumulators: they are read from shared memory once, not
  // at every key block.
  constexpr bool kQInRegs = MT == 1;
  uint32_t qreg[kQInRegs ? D / 16 : 1][4];
  if constexpr (kQInRegs) {
    cp_async_wait<0>();  // Q (and K_0) have landed
    block_sync();
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) load_a<D>(qreg[kc], Qs, ra, wrow, kc);
  }

  for (int nb = 0; nb < nblocks; ++nb) {
    const int k0 = nb * BN;
    cp_async_wait<0>();  // Q and K_nb have landed
    block_sync();        // ... for every thread; and every warp is done with V_{nb-1}
    load_tile<T, BN, D, NTH>(Vs, vh + static_cast<int64_t>(k0) * p.sv.t, p.sv.t, p.Tk - k0, vh, tid);
    cp_async_commit();

    // S = Q K^T
    float s[MT][NS][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < NS; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.f;
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
      uint32_t qa[MT][4];
      if constexpr (kQInRegs) {
#pragma unroll
        for (int e = 0; e < 4; ++e) qa[0][e] = qreg[kc][e];
      } else {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) load_a<D>(qa[mt], Qs, ra, wrow + mt * 16, kc);
      }
#pragma unroll
      for (int np = 0; np < NS / 2; ++np) {
        uint32_t kb[4];
        load_b_nk<D>(kb, Ks, rnk, np * 16, kc);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<T>(s[mt][2 * np], qa[mt], kb[0], kb[1]);
          mma_16816<T>(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
        }
      }
    }

    // Mask (key padding past Tk, and the causal triangle) and the online softmax.
    const bool need_mask = (k0 + BN > p.Tk) || (Causal && k0 + BN - 1 > q0 + off);
    float corr[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = q0 + wrow + mt * 16 + g + 8 * r;
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < NS; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = s[mt][n][2 * r + e];
            if (need_mask) {
              const int j = k0 + n * 8 + 2 * t4 + e;
              if (j >= p.Tk || (Causal && j > i + off)) x = -INFINITY;
            }
            mx = fmaxf(mx, x);
          }
        }
        mx = fmaxf(mx, shfl_xor(mx, 1));
        mx = fmaxf(mx, shfl_xor(mx, 2));
        const float m_new = fmaxf(row_max[mt][r], mx);
        // A row that has seen no key yet keeps max -inf; exponents are taken against 0
        // then (every exp is of -inf: 0) so no inf - inf appears.
        const float m_ref = m_new == -INFINITY ? 0.f : m_new * sl2;
        // exactly 1 when the max did not grow (also for a row that has seen no key yet)
        corr[mt][r] = row_max[mt][r] == m_new ? 1.f : fast_exp2(row_max[mt][r] * sl2 - m_ref);
        row_max[mt][r] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < NS; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = s[mt][n][2 * r + e];
            x = fast_exp2(x * sl2 - m_ref);
            sum += x;
          }
        }
        row_sum[mt][r] = row_sum[mt][r] * corr[mt][r] + sum;  // this lane's part; the quad is summed at the end
      }
    }
    // Rescale O by exp(old max - new max), unless no row of the warp got a larger max
    // (every factor is then 1): once the maxima settle, most key blocks skip these
    // NO * 4 * MT multiplies.
    bool unchanged = true;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) unchanged = unchanged && corr[mt][0] == 1.f && corr[mt][1] == 1.f;
    if (!warp_all(unchanged)) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int n = 0; n < NO; ++n) {
          o[mt][n][0] *= corr[mt][0];
          o[mt][n][1] *= corr[mt][0];
          o[mt][n][2] *= corr[mt][1];
          o[mt][n][3] *= corr[mt][1];
        }
    }

    cp_async_wait<0>();  // V_nb has landed
    block_sync();        // ... for every thread; and every warp is done with K_nb
    if (nb + 1 < nblocks) {
      const int kn = k0 + BN;
      load_tile<T, BN, D, NTH>(Ks, kh + static_cast<int64_t>(kn) * p.sk.t, p.sk.t, p.Tk - kn, kh, tid);
    }
    cp_async_commit();

    // O += P V
#pragma unroll
    for (int kc = 0; kc < BN / 16; ++kc) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) acc_to_a<T>(pa[mt], s[mt][2 * kc], s[mt][2 * kc + 1]);
#pragma unroll
      for (int np = 0; np < NO / 2; ++np) {
        uint32_t vb[4];
        load_b_kn<D>(vb, Vs, rkn, kc * 16, np);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<T>(o[mt][2 * np], pa[mt], vb[0], vb[1]);
          mma_16816<T>(o[mt][2 * np + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
  }
  cp_async_wait<0>();

  // O / l, the logsumexp, and the stores (rows past Tq are dropped).
  T* oh = static_cast<T*>(p.o) + b * p.so.b + h * p.so.h;
  float* lse = p.lse + (static_cast<int64_t>(b) * p.H + h) * p.Tq;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_sum[mt][r];
      l += shfl_xor(l, 1);
      l += shfl_xor(l, 2);
      const int i = q0 + wrow + mt * 16 + g + 8 * r;
      const bool seen = l > 0.f;  // false only for a query that sees no key
      const float inv = seen ? 1.f / l : 0.f;
      if (i < p.Tq) {
        if (t4 == 0) lse[i] = seen ? row_max[mt][r] * p.scale + logf(l) : -INFINITY;
        T* orow = oh + static_cast<int64_t>(i) * p.so.t + 2 * t4;
#pragma unroll
        for (int n = 0; n < NO; ++n)
          *reinterpret_cast<uint32_t*>(orow + n * 8) = pack2<T>(o[mt][n][2 * r] * inv, o[mt][n][2 * r + 1] * inv);
      }
    }
  }
}

}  // namespace barbell::gpu::fa

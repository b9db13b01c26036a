// CPU matmul through OpenBLAS: tiles of each product spread over the pool's threads,
// transposes read from the strides (no copies), f32 and f64; bias add for linear.
#include <cblas.h>

#include "cpu/cpu.hpp"
#include "cpu/dispatch.hpp"
#include "cpu/parallel.hpp"
#include "cpu/vec.hpp"

namespace barbell::cpu {

namespace {
// A tile of C has at most about this many multiply-adds (some 50 us on one core) unless
// both of its sides are already below 2 * kMinTile; smaller tiles would repack the
// operands too often for what they compute.
constexpr int64_t kTileMacs = int64_t(1) << 22;
constexpr int64_t kMinTile = 64;
// Less work than this per thread is not worth another thread.
constexpr int64_t kGrainMacs = int64_t(1) << 16;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct MatDesc {
  bool trans;
  int64_t ld;
};
// A row-major [rows, cols] matrix with strides (s0, s1): one of them must be 1.
MatDesc describe(int64_t s0, int64_t s1, int64_t rows, int64_t cols) {
  if (s1 == 1 && (s0 >= std::max<int64_t>(cols, 1) || rows == 1)) return {false, std::max<int64_t>(s0, std::max<int64_t>(cols, 1))};
  if (s0 == 1 && (s1 >= std::max<int64_t>(rows, 1) || cols == 1)) return {true, std::max<int64_t>(s1, std::max<int64_t>(rows, 1))};
  throw Error(fmt::format("matmul: internal error: matrix strides ({}, {}) for [{}, {}] need a copy", s0, s1, rows,
                          cols));
}
}  // namespace

bool matmul_strides_ok(const Tensor& t) {
  int64_t n = t.dim();
  int64_t s0 = t.strides()[n - 2], s1 = t.strides()[n - 1], rows = t.shape()[n - 2], cols = t.shape()[n - 1];
  return (s1 == 1 && (s0 >= std::max<int64_t>(cols, 1) || rows == 1)) ||
         (s0 == 1 && (s1 >= std::max<int64_t>(rows, 1) || cols == 1));
}

void matmul(const Tensor& c, const Tensor& a, const Tensor& b) {
  const int64_t nd = c.dim();
  const int64_t M = c.shape()[nd - 2], N = c.shape()[nd - 1], K = a.shape()[nd - 1];
  int64_t batch = 1;
  for (int64_t d = 0; d < nd - 2; ++d) batch *= c.shape()[d];
  MatDesc da = describe(a.strides()[nd - 2], a.strides()[nd - 1], M, K);
  MatDesc db = describe(b.strides()[nd - 2], b.strides()[nd - 1], K, N);
  auto offsets = [&](int64_t bi, int64_t& oa, int64_t& ob, int64_t& oc) {
    oa = ob = oc = 0;
    for (int64_t d = nd - 3; d >= 0; --d) {
      int64_t i = bi % c.shape()[d];
      bi /= c.shape()[d];
      oa += i * a.strides()[d];
      ob += i * b.strides()[d];
      oc += i * c.strides()[d];
    }
  };
  // Tiles of C, each one sgemm on one thread: the pool's threads share a product
  // between them (OpenBLAS runs single-threaded). The tiling depends on the shape only,
  // never on the thread count, so neither do the results.
  int64_t Mt = M, Nt = N;
  while (Mt * Nt * K > kTileMacs) {
    if (Mt >= Nt && Mt >= 2 * kMinTile) Mt = round_up((Mt + 1) / 2, 16);
    else if (Nt >= 2 * kMinTile) Nt = round_up((Nt + 1) / 2, 16);
    else break;
  }
  const int64_t tm = (M + Mt - 1) / std::max<int64_t>(Mt, 1), tn = (N + Nt - 1) / std::max<int64_t>(Nt, 1);
  const int64_t tiles = tm * tn;
  dispatch_float(c.dtype(), "matmul", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      const T* pa = static_cast<const T*>(a.data_ptr());
      const T* pb = static_cast<const T*>(b.data_ptr());
      T* pc = static_cast<T*>(c.data_ptr());
      auto tile = [&](int64_t task) {
        const int64_t bi = task / tiles, t = task % tiles;
        const int64_t m0 = (t / tn) * Mt, n0 = (t % tn) * Nt;
        const int64_t m = std::min(Mt, M - m0), n = std::min(Nt, N - n0);
        int64_t oa, ob, oc;
        offsets(bi, oa, ob, oc);
        oa += da.trans ? m0 : m0 * da.ld;  // row m0 of A
        ob += db.trans ? n0 * db.ld : n0;  // column n0 of B
        oc += m0 * N + n0;
        auto ta = da.trans ? CblasTrans : CblasNoTrans;
        auto tb = db.trans ? CblasTrans : CblasNoTrans;
        if constexpr (std::is_same_v<T, float>)
          cblas_sgemm(CblasRowMajor, ta, tb, m, n, K, 1.0f, pa + oa, da.ld, pb + ob, db.ld, 0.0f, pc + oc, N);
        else
          cblas_dgemm(CblasRowMajor, ta, tb, m, n, K, 1.0, pa + oa, da.ld, pb + ob, db.ld, 0.0, pc + oc, N);
      };
      if (M == 0 || N == 0) return;  // nothing to write; BLAS rejects ldc = 0
      if (K == 0) {
        fill(c, 0.0);
        return;
      }
      // A few tiny products stay on this thread: waking another costs more than they do.
      const int64_t tile_macs = std::max<int64_t>(1, std::min(Mt, M) * std::min(Nt, N) * K);
      parallel_for(batch * tiles, std::max<int64_t>(1, kGrainMacs / tile_macs), [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) tile(t);
      });
    } else {
      throw DTypeError("matmul: the CPU kernel takes f32 or f64 (the op converts 16-bit inputs)");
    }
  });
}

void add_bias(const Tensor& y, const Tensor& bias) {
  const int64_t C = bias.numel(), rows = y.numel() / std::max<int64_t>(C, 1);
  dispatch_float(y.dtype(), "linear bias", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    T* py = static_cast<T*>(y.data_ptr());
    const T* pb = static_cast<const T*>(bias.data_ptr());
    parallel_for(rows, grain_for(C), [&](int64_t r0, int64_t r1) {
      if constexpr (std::is_same_v<T, float>) return vec().add_bias(py + r0 * C, pb, r1 - r0, C);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t i = 0; i < C; ++i) py[r * C + i] = T(A(py[r * C + i]) + A(pb[i]));
    });
  });
}

}  // namespace barbell::cpu

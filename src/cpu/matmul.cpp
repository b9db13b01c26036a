// CPU matmul (cpu::sgemm: oneDNN or OpenBLAS): parts of each product spread over the pool's threads,
// transposes read from the strides (no copies), f32 and f64; bias add for linear.
#include <utility>
#include <vector>

#include "cpu/bf16.hpp"
#include "cpu/cpu.hpp"
#include "cpu/dispatch.hpp"
#include "cpu/gemm.hpp"
#include "cpu/parallel.hpp"
#include "cpu/vec.hpp"

namespace barbell::cpu {

namespace {
// How a product is split between threads: into 2, 4 or 8 parts (a power of two, so 2,
// 4 or 8 threads get even shares) along one dimension, M (rows of C) if it is long
// enough, else N, else K (each part then writes its own partial C, summed in part order
// afterwards). A part has at least kMinSide rows / columns / depth: the GEMM repacks the
// shared operand for every part, which costs about 16 / side of the part's multiply-adds
// on AVX-512 (at 1 thread, parts of 256 rows made the medium GPT's step 5% slower). Products under
// kMinMacs stay whole. The split depends on the shape only, never on the thread count,
// so neither do the results.
constexpr int64_t kMaxParts = 8;
constexpr int64_t kMinSide = 384;
constexpr int64_t kMinMacs = int64_t(1) << 21;
// Less work than this per thread is not worth another thread.
constexpr int64_t kGrainMacs = int64_t(1) << 16;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Split {
  enum Dim { None, M, N, K } dim = None;
  int64_t part = 0, parts = 1;
};
Split choose_split(int64_t M, int64_t N, int64_t K) {
  Split s;
  if (M * N * K < 2 * kMinMacs) return s;
  const int64_t by_work = std::min<int64_t>(kMaxParts, M * N * K / kMinMacs);
  for (auto [dim, len] : {std::pair{Split::M, M}, {Split::N, N}, {Split::K, K}}) {
    int64_t parts = std::min(by_work, len / kMinSide);
    while (parts & (parts - 1)) parts &= parts - 1;  // a power of two: even shares for 2, 4, 8 threads
    if (parts >= 2) {
      s.dim = dim;
      s.part = round_up((len + parts - 1) / parts, 16);
      s.parts = (len + s.part - 1) / s.part;
      return s;
    }
  }
  return s;
}

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
  const Split sp = choose_split(M, N, K);
  dispatch_float(c.dtype(), "matmul", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      // bf16 operands with an f32 product go to the bf16 GEMM (cpu::bf16_gemm_available()).
      const bool bf16 = std::is_same_v<T, float> && a.dtype() == DType::BF16;
      BB_CHECK(a.dtype() == b.dtype() && (a.dtype() == c.dtype() || (bf16 && bf16_gemm_available())), Error,
               "matmul (cpu): internal error: operands {} and {} for a {} product", dtype_name(a.dtype()),
               dtype_name(b.dtype()), dtype_name(c.dtype()));
      const T* pa = static_cast<const T*>(a.data_ptr());
      const T* pb = static_cast<const T*>(b.data_ptr());
      const uint16_t* ha = static_cast<const uint16_t*>(a.data_ptr());
      const uint16_t* hb = static_cast<const uint16_t*>(b.data_ptr());
      T* pc = static_cast<T*>(c.data_ptr());
      if (M == 0 || N == 0) return;  // nothing to write; BLAS rejects ldc = 0
      if (K == 0) {
        fill(c, 0.0);
        return;
      }
      // K parts 1.. write partial products here ([parts - 1][batch][M][N]); part 0 writes C.
      std::vector<T> partial(sp.dim == Split::K ? static_cast<size_t>((sp.parts - 1) * batch * M * N) : 0);
      auto part = [&](int64_t task) {
        const int64_t bi = task / sp.parts, p = task % sp.parts;
        int64_t m0 = 0, n0 = 0, k0 = 0, m = M, n = N, k = K;
        if (sp.dim == Split::M) m0 = p * sp.part, m = std::min(sp.part, M - m0);
        if (sp.dim == Split::N) n0 = p * sp.part, n = std::min(sp.part, N - n0);
        if (sp.dim == Split::K) k0 = p * sp.part, k = std::min(sp.part, K - k0);
        int64_t oa, ob, oc;
        offsets(bi, oa, ob, oc);
        oa += da.trans ? m0 + k0 * da.ld : m0 * da.ld + k0;  // A[m0, k0]
        ob += db.trans ? n0 * db.ld + k0 : k0 * db.ld + n0;  // B[k0, n0]
        T* out = pc + oc + m0 * N + n0;
        if (p > 0 && sp.dim == Split::K) out = partial.data() + ((p - 1) * batch + bi) * M * N;
        if constexpr (std::is_same_v<T, float>) {
          if (bf16)
            bf16_gemm(da.trans, db.trans, m, n, k, ha + oa, da.ld, hb + ob, db.ld, out, N);
          else
            sgemm(da.trans, db.trans, m, n, k, pa + oa, da.ld, pb + ob, db.ld, out, N);
        } else
          dgemm(da.trans, db.trans, m, n, k, pa + oa, da.ld, pb + ob, db.ld, out, N);
      };
      // Several small products (batched attention scores): one thread each, when it pays.
      const int64_t part_macs = std::max<int64_t>(1, M * N * K / sp.parts);
      parallel_for(batch * sp.parts, std::max<int64_t>(1, kGrainMacs / part_macs),
                   [&](int64_t t0, int64_t t1) {
                     for (int64_t t = t0; t < t1; ++t) part(t);
                   });
      if (sp.dim == Split::K) {
        // C += partial products, in part order.
        parallel_for(batch * M, grain_for(N * (sp.parts - 1)), [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            const int64_t bi = r / M, i = r % M;
            int64_t oa, ob, oc;
            offsets(bi, oa, ob, oc);
            T* crow = pc + oc + i * N;
            for (int64_t p = 1; p < sp.parts; ++p) {
              const T* prow = partial.data() + ((p - 1) * batch + bi) * M * N + i * N;
              for (int64_t j = 0; j < N; ++j) crow[j] += prow[j];
            }
          }
        });
      }
    } else {
      throw DTypeError("matmul: the CPU kernel writes f32 or f64 (the op converts 16-bit products)");
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
      if constexpr (std::is_same_v<T, BFloat16>) {
        std::vector<float> bf = bf16_to_vector(pb, C), yf = bf16_to_vector(py + r0 * C, (r1 - r0) * C);
        vec().add_bias(yf.data(), bf.data(), r1 - r0, C);
        return vec().f32_to_bf16(bits(py + r0 * C), yf.data(), (r1 - r0) * C);
      }
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t i = 0; i < C; ++i) py[r * C + i] = T(A(py[r * C + i]) + A(pb[i]));
    });
  });
}

}  // namespace barbell::cpu

// CPU matmul through OpenBLAS: one gemm per batch entry, transposes read from the
// strides (no copies), f32 and f64; bias add for linear.
#include <cblas.h>

#include "cpu/cpu.hpp"
#include "cpu/dispatch.hpp"

namespace barbell::cpu {

namespace {
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
  [[maybe_unused]] const bool small = M * N * K < 64 * 64 * 64;  // (used by the pragma only)
  dispatch_float(c.dtype(), "matmul", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      const T* pa = static_cast<const T*>(a.data_ptr());
      const T* pb = static_cast<const T*>(b.data_ptr());
      T* pc = static_cast<T*>(c.data_ptr());
      auto one = [&](int64_t bi) {
        int64_t oa, ob, oc;
        offsets(bi, oa, ob, oc);
        auto ta = da.trans ? CblasTrans : CblasNoTrans;
        auto tb = db.trans ? CblasTrans : CblasNoTrans;
        if constexpr (std::is_same_v<T, float>)
          cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, 1.0f, pa + oa, da.ld, pb + ob, db.ld, 0.0f, pc + oc, N);
        else
          cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, 1.0, pa + oa, da.ld, pb + ob, db.ld, 0.0, pc + oc, N);
      };
      if (M == 0 || N == 0) return;  // nothing to write; BLAS rejects ldc = 0
      if (K == 0) {
        fill(c, 0.0);
        return;
      }
      // Many small products: spread the batch over threads; large ones use BLAS's
      // threads. A few tiny products stay on this thread: a parallel region costs more than
      // they do, and much more when the cores are busy with other work.
#pragma omp parallel for if (small && batch > 1 && batch * M * N * K >= 32768)
      for (int64_t bi = 0; bi < batch; ++bi) one(bi);
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
#pragma omp parallel for if (rows * C > 32768)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < C; ++i) py[r * C + i] = T(A(py[r * C + i]) + A(pb[i]));
  });
}

}  // namespace barbell::cpu

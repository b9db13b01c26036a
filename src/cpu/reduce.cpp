// CPU reductions over a [A, R, I] view (R reduced), accumulating in double, and
// row-wise softmax / log_softmax with their backward.
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/bf16.hpp"
#include "cpu/cpu.hpp"
#include "cpu/dispatch.hpp"
#include "cpu/parallel.hpp"
#include "cpu/vec.hpp"

namespace barbell::cpu {

void sum_dim(const Tensor& out, const Tensor& x, int64_t A, int64_t R, int64_t I, double scale) {
  dispatch_all(x.dtype(), "sum", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* px = static_cast<const T*>(x.data_ptr());
    auto write = [&](auto* po) {
      using O = std::remove_pointer_t<decltype(po)>;
      if (I == 1) {
        parallel_for(A, grain_for(R), [&](int64_t a0, int64_t a1) {
          for (int64_t a = a0; a < a1; ++a) {
            double acc = 0;
            const T* row = px + a * R;
            for (int64_t r = 0; r < R; ++r) acc += static_cast<double>(static_cast<acc_t<T>>(row[r]));
            po[a] = static_cast<O>(static_cast<acc_t<O>>(acc * scale));
          }
        });
      } else if constexpr (std::is_same_v<T, float> || std::is_same_v<T, BFloat16>) {
        // Column sums (a bias gradient) vectorised; the rows are added in order, so each
        // column's sum is the same whatever the split over threads (of columns).
        const int64_t cblk = 256;
        const int64_t nc = (I + cblk - 1) / cblk;
        parallel_for(A * nc, grain_for(R * cblk), [&](int64_t t0, int64_t t1) {
          double acc[cblk];
          float rowf[cblk];
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t a = t / nc, c0 = (t % nc) * cblk, w = std::min(cblk, I - c0);
            std::fill(acc, acc + w, 0.0);
            for (int64_t r = 0; r < R; ++r) {
              if constexpr (std::is_same_v<T, float>) {
                vec().col_sum(acc, px + (a * R + r) * I + c0, 1, w);
              } else {
                vec().bf16_to_f32(rowf, bits(px + (a * R + r) * I + c0), w);
                vec().col_sum(acc, rowf, 1, w);
              }
            }
            for (int64_t i = 0; i < w; ++i)
              po[a * I + c0 + i] = static_cast<O>(static_cast<acc_t<O>>(acc[i] * scale));
          }
        });
      } else {
        parallel_for(A, grain_for(R * I), [&](int64_t a0, int64_t a1) {
          std::vector<double> acc(static_cast<size_t>(I));
          for (int64_t a = a0; a < a1; ++a) {
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int64_t r = 0; r < R; ++r) {
              const T* row = px + (a * R + r) * I;
              for (int64_t i = 0; i < I; ++i)
                acc[static_cast<size_t>(i)] += static_cast<double>(static_cast<acc_t<T>>(row[i]));
            }
            for (int64_t i = 0; i < I; ++i)
              po[a * I + i] = static_cast<O>(static_cast<acc_t<O>>(acc[static_cast<size_t>(i)] * scale));
          }
        });
      }
    };
    if (out.dtype() == x.dtype()) write(static_cast<T*>(out.data_ptr()));
    else write(static_cast<int64_t*>(out.data_ptr()));
  });
}

void max_dim(const Tensor& values, const Tensor& indices, const Tensor& x, int64_t A, int64_t R, int64_t I) {
  dispatch_all(x.dtype(), "max", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Acc = acc_t<T>;
    const T* px = static_cast<const T*>(x.data_ptr());
    T* pv = values.defined() ? static_cast<T*>(values.data_ptr()) : nullptr;
    int64_t* pi = indices.defined() ? static_cast<int64_t*>(indices.data_ptr()) : nullptr;
    parallel_for(A, grain_for(R * I), [&](int64_t a0, int64_t a1) {
      for (int64_t a = a0; a < a1; ++a) {
        for (int64_t i = 0; i < I; ++i) {
          Acc best = Acc(px[a * R * I + i]);
          int64_t bi = 0;
          for (int64_t r = 1; r < R; ++r) {
            Acc v = Acc(px[(a * R + r) * I + i]);
            // NaN wins, as in numpy: a max over data with a NaN is NaN.
            if (v > best || (v != v && best == best)) {
              best = v;
              bi = r;
            }
          }
          if (pv) pv[a * I + i] = px[(a * R + bi) * I + i];
          if (pi) pi[a * I + i] = bi;
        }
      }
    });
  });
}

void max_dim_backward(const Tensor& dx, const Tensor& dy, const Tensor& indices, int64_t A, int64_t R, int64_t I) {
  fill(dx, 0.0);
  dispatch_float(dx.dtype(), "max backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* pdx = static_cast<T*>(dx.data_ptr());
    const T* pdy = static_cast<const T*>(dy.data_ptr());
    const int64_t* pi = static_cast<const int64_t*>(indices.data_ptr());
    for (int64_t a = 0; a < A; ++a)
      for (int64_t i = 0; i < I; ++i) pdx[(a * R + pi[a * I + i]) * I + i] = pdy[a * I + i];
  });
}

void softmax_rows(const Tensor& y, const Tensor& x, int64_t rows, int64_t n, bool log) {
  dispatch_float(x.dtype(), log ? "log_softmax" : "softmax", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Acc = acc_t<T>;
    const T* px = static_cast<const T*>(x.data_ptr());
    T* py = static_cast<T*>(y.data_ptr());
    if constexpr (std::is_same_v<T, float>) {
      parallel_for(rows, grain_for(2 * n),
                   [&](int64_t r0, int64_t r1) { vec().softmax(py + r0 * n, px + r0 * n, r1 - r0, n, log); });
      return;
    }
    if constexpr (std::is_same_v<T, BFloat16>) {
      parallel_for(rows, grain_for(2 * n), [&](int64_t r0, int64_t r1) {
        std::vector<float> xf = bf16_to_vector(px + r0 * n, (r1 - r0) * n), yf(xf.size());
        vec().softmax(yf.data(), xf.data(), r1 - r0, n, log);
        vec().f32_to_bf16(bits(py + r0 * n), yf.data(), (r1 - r0) * n);
      });
      return;
    }
    parallel_for(rows, grain_for(2 * n), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* in = px + r * n;
        T* out = py + r * n;
        Acc m = -std::numeric_limits<Acc>::infinity();
        for (int64_t i = 0; i < n; ++i) m = std::max(m, Acc(in[i]));
        if (m == -std::numeric_limits<Acc>::infinity()) m = 0;  // a fully masked row stays finite in exp
        Acc s = 0;
        for (int64_t i = 0; i < n; ++i) s += std::exp(Acc(in[i]) - m);
        if (log) {
          Acc lse = m + std::log(s);
          for (int64_t i = 0; i < n; ++i) out[i] = T(Acc(in[i]) - lse);
        } else {
          Acc inv = Acc(1) / s;
          for (int64_t i = 0; i < n; ++i) out[i] = T(std::exp(Acc(in[i]) - m) * inv);
        }
      }
    });
  });
}

void softmax_rows_backward(const Tensor& dx, const Tensor& dy, const Tensor& y, int64_t rows, int64_t n, bool log) {
  dispatch_float(y.dtype(), log ? "log_softmax backward" : "softmax backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Acc = acc_t<T>;
    const T* pdy = static_cast<const T*>(dy.data_ptr());
    const T* py = static_cast<const T*>(y.data_ptr());
    T* pdx = static_cast<T*>(dx.data_ptr());
    if constexpr (std::is_same_v<T, float>) {
      parallel_for(rows, grain_for(2 * n), [&](int64_t r0, int64_t r1) {
        vec().softmax_grad(pdx + r0 * n, pdy + r0 * n, py + r0 * n, r1 - r0, n, log);
      });
      return;
    }
    if constexpr (std::is_same_v<T, BFloat16>) {
      parallel_for(rows, grain_for(2 * n), [&](int64_t r0, int64_t r1) {
        std::vector<float> gf = bf16_to_vector(pdy + r0 * n, (r1 - r0) * n),
                           yf = bf16_to_vector(py + r0 * n, (r1 - r0) * n), df(gf.size());
        vec().softmax_grad(df.data(), gf.data(), yf.data(), r1 - r0, n, log);
        vec().f32_to_bf16(bits(pdx + r0 * n), df.data(), (r1 - r0) * n);
      });
      return;
    }
    parallel_for(rows, grain_for(2 * n), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* g = pdy + r * n;
        const T* o = py + r * n;
        T* d = pdx + r * n;
        Acc s = 0;
        if (log) {
          for (int64_t i = 0; i < n; ++i) s += Acc(g[i]);
          for (int64_t i = 0; i < n; ++i) d[i] = T(Acc(g[i]) - std::exp(Acc(o[i])) * s);
        } else {
          for (int64_t i = 0; i < n; ++i) s += Acc(g[i]) * Acc(o[i]);
          for (int64_t i = 0; i < n; ++i) d[i] = T(Acc(o[i]) * (Acc(g[i]) - s));
        }
      }
    });
  });
}

}  // namespace barbell::cpu

// CPU layernorm and rmsnorm over rows, forward and fused backward, float statistics.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/bf16.hpp"
#include "cpu/cpu.hpp"
#include "cpu/dispatch.hpp"
#include "cpu/parallel.hpp"
#include "cpu/vec.hpp"

namespace barbell::cpu {

void layer_norm(const Tensor& y, const Tensor& mean, const Tensor& rstd, const Tensor& x, const Tensor& w,
                const Tensor& b, int64_t rows, int64_t n, double eps) {
  dispatch_float(x.dtype(), "layer_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    using S = std::conditional_t<std::is_same_v<T, double>, double, float>;  // statistics
    const T* px = static_cast<const T*>(x.data_ptr());
    const T* pw = w.defined() ? static_cast<const T*>(w.data_ptr()) : nullptr;
    const T* pb = b.defined() ? static_cast<const T*>(b.data_ptr()) : nullptr;
    T* py = static_cast<T*>(y.data_ptr());
    S* pm = static_cast<S*>(mean.data_ptr());
    S* pr = static_cast<S*>(rstd.data_ptr());
    if constexpr (std::is_same_v<T, float>) {
      parallel_for(rows, grain_for(3 * n), [&](int64_t r0, int64_t r1) {
        vec().layer_norm(py + r0 * n, pm + r0, pr + r0, px + r0 * n, pw, pb, r1 - r0, n, float(eps));
      });
      return;
    }
    if constexpr (std::is_same_v<T, BFloat16>) {  // f32 compute on converted rows
      const std::vector<float> wf = bf16_to_vector(pw, n), bfv = bf16_to_vector(pb, n);
      parallel_for(rows, grain_for(3 * n), [&](int64_t r0, int64_t r1) {
        std::vector<float> xf = bf16_to_vector(px + r0 * n, (r1 - r0) * n), yf(xf.size());
        vec().layer_norm(yf.data(), pm + r0, pr + r0, xf.data(), pw ? wf.data() : nullptr,
                         pb ? bfv.data() : nullptr, r1 - r0, n, float(eps));
        vec().f32_to_bf16(bits(py + r0 * n), yf.data(), (r1 - r0) * n);
      });
      return;
    }
    parallel_for(rows, grain_for(3 * n), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* in = px + r * n;
        double s = 0, ss = 0;
        for (int64_t i = 0; i < n; ++i) s += double(A(in[i]));
        double mu = s / double(n);
        for (int64_t i = 0; i < n; ++i) {
          double d = double(A(in[i])) - mu;
          ss += d * d;
        }
        double rs = 1.0 / std::sqrt(ss / double(n) + eps);
        pm[r] = S(mu);
        pr[r] = S(rs);
        for (int64_t i = 0; i < n; ++i) {
          A v = A((double(A(in[i])) - mu) * rs);
          if (pw) v = v * A(pw[i]);
          if (pb) v = v + A(pb[i]);
          py[r * n + i] = T(v);
        }
      }
    });
  });
}

void layer_norm_backward(const Tensor& dx, const Tensor& dw, const Tensor& db, const Tensor& dy, const Tensor& x,
                         const Tensor& mean, const Tensor& rstd, const Tensor& w, int64_t rows, int64_t n) {
  dispatch_float(x.dtype(), "layer_norm backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    using S = std::conditional_t<std::is_same_v<T, double>, double, float>;  // statistics
    const T* px = static_cast<const T*>(x.data_ptr());
    const T* pdy = static_cast<const T*>(dy.data_ptr());
    const T* pw = w.defined() ? static_cast<const T*>(w.data_ptr()) : nullptr;
    const S* pm = static_cast<const S*>(mean.data_ptr());
    const S* pr = static_cast<const S*>(rstd.data_ptr());
    T* pdx = dx.defined() ? static_cast<T*>(dx.data_ptr()) : nullptr;
    // dw/db: partial sums in double per block of rows, added in block order so the
    // result does not depend on thread timing (resumed runs reproduce losses exactly).
    const int64_t nblk = std::min<int64_t>(rows, 64);
    std::vector<double> part(static_cast<size_t>(nblk * 2 * n), 0.0);
    parallel_for(nblk, rows * n > 16384 ? 1 : nblk, [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        double* dwl = part.data() + blk * 2 * n;
        double* dbl = dwl + n;
        if constexpr (std::is_same_v<T, float>) {
          const int64_t r0 = blk * rows / nblk, r1 = (blk + 1) * rows / nblk;
          vec().layer_norm_grad(pdx ? pdx + r0 * n : nullptr, dwl, dbl, pdy + r0 * n, px + r0 * n, pm + r0,
                                pr + r0, pw, r1 - r0, n);
          continue;
        }
        if constexpr (std::is_same_v<T, BFloat16>) {
          const int64_t r0 = blk * rows / nblk, r1 = (blk + 1) * rows / nblk;
          std::vector<float> xf = bf16_to_vector(px + r0 * n, (r1 - r0) * n),
                             gf = bf16_to_vector(pdy + r0 * n, (r1 - r0) * n), wf = bf16_to_vector(pw, n),
                             dxf(pdx ? xf.size() : 0);
          vec().layer_norm_grad(pdx ? dxf.data() : nullptr, dwl, dbl, gf.data(), xf.data(), pm + r0, pr + r0,
                                pw ? wf.data() : nullptr, r1 - r0, n);
          if (pdx) vec().f32_to_bf16(bits(pdx + r0 * n), dxf.data(), (r1 - r0) * n);
          continue;
        }
        for (int64_t r = blk * rows / nblk; r < (blk + 1) * rows / nblk; ++r) {
          const T* in = px + r * n;
          const T* g = pdy + r * n;
          const double mu = pm[r], rs = pr[r];
          double s1 = 0, s2 = 0;  // sum(dy*w), sum(dy*w*xhat)
          for (int64_t i = 0; i < n; ++i) {
            double xh = (double(A(in[i])) - mu) * rs;
            double gw = double(A(g[i])) * (pw ? double(A(pw[i])) : 1.0);
            s1 += gw;
            s2 += gw * xh;
            dwl[i] += double(A(g[i])) * xh;
            dbl[i] += double(A(g[i]));
          }
          if (pdx) {
            for (int64_t i = 0; i < n; ++i) {
              double xh = (double(A(in[i])) - mu) * rs;
              double gw = double(A(g[i])) * (pw ? double(A(pw[i])) : 1.0);
              pdx[r * n + i] = T(A(rs * (gw - (s1 + xh * s2) / double(n))));
            }
          }
        }
      }
    });
    std::vector<double> dw_acc(static_cast<size_t>(n), 0.0), db_acc(static_cast<size_t>(n), 0.0);
    for (int64_t blk = 0; blk < nblk; ++blk)
      for (int64_t i = 0; i < n; ++i) {
        dw_acc[static_cast<size_t>(i)] += part[static_cast<size_t>(blk * 2 * n + i)];
        db_acc[static_cast<size_t>(i)] += part[static_cast<size_t>(blk * 2 * n + n + i)];
      }
    if (dw.defined()) {
      T* p = static_cast<T*>(dw.data_ptr());
      for (int64_t i = 0; i < n; ++i) p[i] = T(A(dw_acc[static_cast<size_t>(i)]));
    }
    if (db.defined()) {
      T* p = static_cast<T*>(db.data_ptr());
      for (int64_t i = 0; i < n; ++i) p[i] = T(A(db_acc[static_cast<size_t>(i)]));
    }
  });
}

void rms_norm(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& w, int64_t rows, int64_t n,
              double eps) {
  dispatch_float(x.dtype(), "rms_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    using S = std::conditional_t<std::is_same_v<T, double>, double, float>;  // statistics
    const T* px = static_cast<const T*>(x.data_ptr());
    const T* pw = w.defined() ? static_cast<const T*>(w.data_ptr()) : nullptr;
    T* py = static_cast<T*>(y.data_ptr());
    S* pr = static_cast<S*>(rstd.data_ptr());
    if constexpr (std::is_same_v<T, float>) {
      parallel_for(rows, grain_for(2 * n), [&](int64_t r0, int64_t r1) {
        vec().rms_norm(py + r0 * n, pr + r0, px + r0 * n, pw, r1 - r0, n, float(eps));
      });
      return;
    }
    if constexpr (std::is_same_v<T, BFloat16>) {
      const std::vector<float> wf = bf16_to_vector(pw, n);
      parallel_for(rows, grain_for(2 * n), [&](int64_t r0, int64_t r1) {
        std::vector<float> xf = bf16_to_vector(px + r0 * n, (r1 - r0) * n), yf(xf.size());
        vec().rms_norm(yf.data(), pr + r0, xf.data(), pw ? wf.data() : nullptr, r1 - r0, n, float(eps));
        vec().f32_to_bf16(bits(py + r0 * n), yf.data(), (r1 - r0) * n);
      });
      return;
    }
    parallel_for(rows, grain_for(2 * n), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* in = px + r * n;
        double ss = 0;
        for (int64_t i = 0; i < n; ++i) ss += double(A(in[i])) * double(A(in[i]));
        double rs = 1.0 / std::sqrt(ss / double(n) + eps);
        pr[r] = S(rs);
        for (int64_t i = 0; i < n; ++i)
          py[r * n + i] = T(A(double(A(in[i])) * rs * (pw ? double(A(pw[i])) : 1.0)));
      }
    });
  });
}

void rms_norm_backward(const Tensor& dx, const Tensor& dw, const Tensor& dy, const Tensor& x, const Tensor& rstd,
                       const Tensor& w, int64_t rows, int64_t n) {
  dispatch_float(x.dtype(), "rms_norm backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    using S = std::conditional_t<std::is_same_v<T, double>, double, float>;  // statistics
    const T* px = static_cast<const T*>(x.data_ptr());
    const T* pdy = static_cast<const T*>(dy.data_ptr());
    const T* pw = w.defined() ? static_cast<const T*>(w.data_ptr()) : nullptr;
    const S* pr = static_cast<const S*>(rstd.data_ptr());
    T* pdx = dx.defined() ? static_cast<T*>(dx.data_ptr()) : nullptr;
    const int64_t nblk = std::min<int64_t>(rows, 64);
    std::vector<double> part(static_cast<size_t>(nblk * n), 0.0);
    parallel_for(nblk, rows * n > 16384 ? 1 : nblk, [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        double* dwl = part.data() + blk * n;
        if constexpr (std::is_same_v<T, float>) {
          const int64_t r0 = blk * rows / nblk, r1 = (blk + 1) * rows / nblk;
          vec().rms_norm_grad(pdx ? pdx + r0 * n : nullptr, dwl, pdy + r0 * n, px + r0 * n, pr + r0, pw,
                              r1 - r0, n);
          continue;
        }
        if constexpr (std::is_same_v<T, BFloat16>) {
          const int64_t r0 = blk * rows / nblk, r1 = (blk + 1) * rows / nblk;
          std::vector<float> xf = bf16_to_vector(px + r0 * n, (r1 - r0) * n),
                             gf = bf16_to_vector(pdy + r0 * n, (r1 - r0) * n), wf = bf16_to_vector(pw, n),
                             dxf(pdx ? xf.size() : 0);
          vec().rms_norm_grad(pdx ? dxf.data() : nullptr, dwl, gf.data(), xf.data(), pr + r0,
                              pw ? wf.data() : nullptr, r1 - r0, n);
          if (pdx) vec().f32_to_bf16(bits(pdx + r0 * n), dxf.data(), (r1 - r0) * n);
          continue;
        }
        for (int64_t r = blk * rows / nblk; r < (blk + 1) * rows / nblk; ++r) {
          const T* in = px + r * n;
          const T* g = pdy + r * n;
          const double rs = pr[r];
          double s = 0;  // sum(dy*w*xhat)
          for (int64_t i = 0; i < n; ++i) {
            double xh = double(A(in[i])) * rs;
            s += double(A(g[i])) * (pw ? double(A(pw[i])) : 1.0) * xh;
            dwl[i] += double(A(g[i])) * xh;
          }
          if (pdx) {
            for (int64_t i = 0; i < n; ++i) {
              double xh = double(A(in[i])) * rs;
              double gw = double(A(g[i])) * (pw ? double(A(pw[i])) : 1.0);
              pdx[r * n + i] = T(A(rs * (gw - xh * s / double(n))));
            }
          }
        }
      }
    });
    std::vector<double> dw_acc(static_cast<size_t>(n), 0.0);
    for (int64_t blk = 0; blk < nblk; ++blk)
      for (int64_t i = 0; i < n; ++i) dw_acc[static_cast<size_t>(i)] += part[static_cast<size_t>(blk * n + i)];
    if (dw.defined()) {
      T* p = static_cast<T*>(dw.data_ptr());
      for (int64_t i = 0; i < n; ++i) p[i] = T(A(dw_acc[static_cast<size_t>(i)]));
    }
  });
}

}  // namespace barbell::cpu

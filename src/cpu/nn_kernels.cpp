// CPU kernels for embedding, fused softmax-cross-entropy, dropout masks, AdamW and
// the sum of squares behind gradient clipping.
#include <algorithm>
#include <cmath>
#include <vector>
#include <limits>

#include "cpu/bf16.hpp"
#include "cpu/cpu.hpp"
#include "cpu/dispatch.hpp"
#include "cpu/parallel.hpp"
#include "cpu/vec.hpp"

namespace barbell::cpu {

void embedding(const Tensor& out, const Tensor& ids, const Tensor& weight) {
  const int64_t n = ids.numel(), C = weight.shape()[1];
  dispatch_index(ids.dtype(), "embedding", [&](auto itag) {
    using I = typename decltype(itag)::type;
    const I* pi = static_cast<const I*>(ids.data_ptr());
    dispatch_float(weight.dtype(), "embedding", [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* pw = static_cast<const T*>(weight.data_ptr());
      T* po = static_cast<T*>(out.data_ptr());
      parallel_for(n, grain_for(C), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          std::copy(pw + int64_t(pi[r]) * C, pw + int64_t(pi[r]) * C + C, po + r * C);
      });
    });
  });
}

void embedding_backward(const Tensor& dweight, const Tensor& dy, const Tensor& ids) {
  fill(dweight, 0.0);
  const int64_t n = ids.numel(), C = dweight.shape()[1];
  // Sequential over tokens: a deterministic sum in token order.
  dispatch_index(ids.dtype(), "embedding backward", [&](auto itag) {
    using I = typename decltype(itag)::type;
    const I* pi = static_cast<const I*>(ids.data_ptr());
    dispatch_float(dweight.dtype(), "embedding backward", [&](auto tag) {
      using T = typename decltype(tag)::type;
      using A = acc_t<T>;
      T* pw = static_cast<T*>(dweight.data_ptr());
      const T* pg = static_cast<const T*>(dy.data_ptr());
      const int64_t nblk = (C + 63) / 64;
      parallel_for(nblk, grain_for(64 * n), [&](int64_t b0, int64_t b1) {
        for (int64_t c0 = b0 * 64; c0 < std::min(C, b1 * 64); c0 += 64) {
          int64_t c1 = std::min(C, c0 + 64);
          for (int64_t r = 0; r < n; ++r) {
            T* row = pw + int64_t(pi[r]) * C;
            const T* g = pg + r * C;
            for (int64_t c = c0; c < c1; ++c) row[c] = T(A(row[c]) + A(g[c]));
          }
        }
      });
    });
  });
}

namespace {
// Max and sum of exp(x - max) of one row of logits: its softmax's normaliser.
template <typename A, typename T>
std::pair<A, A> row_max_sumexp(const T* row, int64_t V) {
  A m = -std::numeric_limits<A>::infinity();
  for (int64_t i = 0; i < V; ++i) m = std::max(m, A(row[i]));
  A s = 0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(A(row[i]) - m);
  return {m, s};
}
}  // namespace

int64_t cross_entropy(const Tensor& loss, const Tensor& logits, const Tensor& targets, int64_t rows, int64_t V,
                      int64_t ignore_index) {
  // Per-row losses summed in row order: deterministic whatever the threads do.
  std::vector<double> row_loss(static_cast<size_t>(rows), 0.0);
  std::vector<char> counted(static_cast<size_t>(rows), 0);
  dispatch_index(targets.dtype(), "cross_entropy", [&](auto itag) {
    using I = typename decltype(itag)::type;
    const I* pt = static_cast<const I*>(targets.data_ptr());
    dispatch_float(logits.dtype(), "cross_entropy", [&](auto tag) {
      using T = typename decltype(tag)::type;
      using A = acc_t<T>;
      const T* pl = static_cast<const T*>(logits.data_ptr());
      parallel_for(rows, grain_for(2 * V), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          int64_t t = int64_t(pt[r]);
          if (t == ignore_index) continue;
          const T* row = pl + r * V;
          if constexpr (std::is_same_v<T, float>) {
            row_loss[static_cast<size_t>(r)] = double(vec().logsumexp(row, V)) - double(row[t]);
          } else if constexpr (std::is_same_v<T, BFloat16>) {
            std::vector<float> rf = bf16_to_vector(row, V);
            row_loss[static_cast<size_t>(r)] = double(vec().logsumexp(rf.data(), V)) - double(rf[size_t(t)]);
          } else {
            auto [m, s] = row_max_sumexp<A>(row, V);
            row_loss[static_cast<size_t>(r)] = double(m + std::log(s) - A(row[t]));
          }
          counted[static_cast<size_t>(r)] = 1;
        }
      });
    });
  });
  int64_t count = 0;
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    total += row_loss[static_cast<size_t>(r)];
    count += counted[static_cast<size_t>(r)];
  }
  double mean = count > 0 ? total / double(count) : NAN;
  dispatch_float(loss.dtype(), "cross_entropy", [&](auto tag) {
    using T = typename decltype(tag)::type;
    *static_cast<T*>(loss.data_ptr()) = T(acc_t<T>(mean));
  });
  return count;
}

void cross_entropy_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& targets, int64_t rows,
                            int64_t V, int64_t ignore_index, double scale) {
  dispatch_index(targets.dtype(), "cross_entropy backward", [&](auto itag) {
    using I = typename decltype(itag)::type;
    const I* pt = static_cast<const I*>(targets.data_ptr());
    dispatch_float(logits.dtype(), "cross_entropy backward", [&](auto tag) {
      using T = typename decltype(tag)::type;
      using A = acc_t<T>;
      const T* pl = static_cast<const T*>(logits.data_ptr());
      T* pd = static_cast<T*>(dlogits.data_ptr());
      const A sc = A(scale);
      parallel_for(rows, grain_for(3 * V), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          int64_t t = int64_t(pt[r]);
          T* d = pd + r * V;
          if (t == ignore_index) {
            std::fill(d, d + V, T(A(0)));
            continue;
          }
          const T* row = pl + r * V;
          if constexpr (std::is_same_v<T, float>) {
            vec().softmax_scaled(d, row, V, vec().logsumexp(row, V), sc);
            d[t] -= sc;
            continue;
          }
          if constexpr (std::is_same_v<T, BFloat16>) {
            std::vector<float> rf = bf16_to_vector(row, V), df(static_cast<size_t>(V));
            vec().softmax_scaled(df.data(), rf.data(), V, vec().logsumexp(rf.data(), V), sc);
            df[size_t(t)] -= sc;
            vec().f32_to_bf16(bits(d), df.data(), V);
            continue;
          }
          auto [m, s] = row_max_sumexp<A>(row, V);
          A inv = A(1) / s;
          for (int64_t i = 0; i < V; ++i) d[i] = T(std::exp(A(row[i]) - m) * inv * sc);
          d[t] = T(A(d[t]) - sc);
        }
      });
    });
  });
}

void dropout_mask(const Tensor& mask, double p, uint64_t seed, uint64_t offset) {
  const int64_t n = mask.numel();
  float* pm = static_cast<float*>(mask.data_ptr());
  const float keep_scale = float(1.0 / (1.0 - p));
  const auto threshold = static_cast<uint32_t>(std::min(p * 4294967296.0, 4294967295.0));
  parallel_for((n + 3) / 4, 4096, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      uint32_t w[4];
      Generator::philox(seed, offset + uint64_t(b), w);
      for (int j = 0; j < 4 && b * 4 + j < n; ++j) pm[b * 4 + j] = w[j] < threshold ? 0.0f : keep_scale;
    }
  });
}

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, const AdamWParams& p) {
  const int64_t n = param.numel();
  const double bc1 = 1.0 - std::pow(p.beta1, double(p.step)), bc2 = 1.0 - std::pow(p.beta2, double(p.step));
  dispatch_float(param.dtype(), "adamw", [&](auto tag) {
    using T = typename decltype(tag)::type;
    // Moments are f32 (f64 for f64 parameters), whatever the parameter's precision.
    using S = std::conditional_t<std::is_same_v<T, double>, double, float>;
    // 1 - beta in double: in float, 1 - 0.999f is off by 1.3e-5 relative.
    const S b1 = S(p.beta1), b2 = S(p.beta2), eps = S(p.eps), decay = S(1.0 - p.lr * p.weight_decay);
    const S omb1 = S(1.0 - p.beta1), omb2 = S(1.0 - p.beta2);
    const S step_size = S(p.lr / bc1), inv_sqrt_bc2 = S(1.0 / std::sqrt(bc2));
    T* pp = static_cast<T*>(param.data_ptr());
    const T* pg = static_cast<const T*>(grad.data_ptr());
    S* pm = static_cast<S*>(m.data_ptr());
    S* pv = static_cast<S*>(v.data_ptr());
    if constexpr (std::is_same_v<T, float>) {
      parallel_for(n, kGrainElems, [&](int64_t i0, int64_t i1) {
        vec().adamw(pp + i0, pg + i0, pm + i0, pv + i0, i1 - i0, b1, b2, omb1, omb2, eps, decay, step_size,
                    inv_sqrt_bc2);
      });
      return;
    }
    parallel_for(n, kGrainElems, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        S g = S(acc_t<T>(pg[i]));
        S mi = b1 * pm[i] + omb1 * g;
        S vi = b2 * pv[i] + omb2 * g * g;
        pm[i] = mi;
        pv[i] = vi;
        S x = S(acc_t<T>(pp[i])) * decay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
        pp[i] = T(acc_t<T>(x));
      }
    });
  });
}

double sum_of_squares(const Tensor& x) {
  const int64_t n = x.numel();
  // Fixed blocks summed in order: the same bits on every run.
  const int64_t nblk = std::max<int64_t>(1, std::min<int64_t>(64, n / 4096));
  std::vector<double> part(static_cast<size_t>(nblk), 0.0);
  dispatch_float(x.dtype(), "sum_of_squares", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* p = static_cast<const T*>(x.data_ptr());
    parallel_for(nblk, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if constexpr (std::is_same_v<T, float>) {
          part[static_cast<size_t>(b)] =
              vec().sum_squares(p + b * n / nblk, (b + 1) * n / nblk - b * n / nblk);
          continue;
        }
        double acc = 0;
        for (int64_t i = b * n / nblk; i < (b + 1) * n / nblk; ++i) {
          double v = double(acc_t<T>(p[i]));
          acc += v * v;
        }
        part[static_cast<size_t>(b)] = acc;
      }
    });
  });
  double total = 0;
  for (double v : part) total += v;
  return total;
}

}  // namespace barbell::cpu

// Test helpers for the emulated cuBLASLt/cuBLAS: device buffers from the stub, random operands,
// and a naive long-double reference GEMM that the results are checked against, element by
// element, to within half an ulp of the output type (one correct rounding) plus the error the
// emulator's double accumulation may add.
#pragma once

#include <cublas_api.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "emu_stub.hpp"

namespace emutest {

inline size_t esize(cudaDataType_t t) {
  switch (t) {
    case CUDA_R_16BF:
    case CUDA_R_16F: return 2;
    case CUDA_R_32F: return 4;
    case CUDA_R_64F: return 8;
    default: return 0;
  }
}

inline const char* tname(cudaDataType_t t) {
  switch (t) {
    case CUDA_R_16BF: return "bf16";
    case CUDA_R_16F: return "f16";
    case CUDA_R_32F: return "f32";
    case CUDA_R_64F: return "f64";
    default: return "?";
  }
}

inline double get(cudaDataType_t t, const void* base, int64_t idx) {
  const char* p = static_cast<const char*>(base) + idx * static_cast<int64_t>(esize(t));
  switch (t) {
    case CUDA_R_16BF: {
      __nv_bfloat16 v;
      std::memcpy(&v, p, 2);
      return __bfloat162float(v);
    }
    case CUDA_R_16F: {
      __half v;
      std::memcpy(&v, p, 2);
      return __half2float(v);
    }
    case CUDA_R_32F: {
      float v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case CUDA_R_64F: {
      double v;
      std::memcpy(&v, p, 8);
      return v;
    }
    default: return 0;
  }
}

inline void set(cudaDataType_t t, void* base, int64_t idx, double v) {
  char* p = static_cast<char*>(base) + idx * static_cast<int64_t>(esize(t));
  switch (t) {
    case CUDA_R_16BF: {
      const __nv_bfloat16 h = __float2bfloat16(static_cast<float>(v));
      std::memcpy(p, &h, 2);
      break;
    }
    case CUDA_R_16F: {
      const __half h = __float2half(static_cast<float>(v));
      std::memcpy(p, &h, 2);
      break;
    }
    case CUDA_R_32F: {
      const auto f = static_cast<float>(v);
      std::memcpy(p, &f, 4);
      break;
    }
    case CUDA_R_64F: std::memcpy(p, &v, 8); break;
    default: break;
  }
}

// The spacing of the output type's values at |v| (the smaller one at a power of two).
inline double ulp(cudaDataType_t t, double v) {
  int mant = 52, emin = -1022;
  switch (t) {
    case CUDA_R_16BF: mant = 7, emin = -126; break;
    case CUDA_R_16F: mant = 10, emin = -14; break;
    case CUDA_R_32F: mant = 23, emin = -126; break;
    default: break;
  }
  const double a = std::fabs(v);
  int e = a > 0 ? std::ilogb(a) : emin;
  if (e < emin) e = emin;
  return std::ldexp(1.0, e - mant);
}

// x rounded to `bits` significant bits, to nearest even (the test's own TF32 rounding: 11 bits).
inline double round_sig(double x, int bits) {
  if (x == 0 || !std::isfinite(x)) return x;
  int e;
  std::frexp(x, &e);
  const double scale = std::ldexp(1.0, bits - e);
  return std::nearbyint(x * scale) / scale;
}

// A stub device allocation, freed on scope exit.
struct Buf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Buf(size_t n) : p(barbell::emu::stub::alloc(n)), bytes(n) {}
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { barbell::emu::stub::free(p); }
  char* c() const { return static_cast<char*>(p); }
};

// Fills `count` elements at p with random values of the type in [-1, 1].
inline void fill(std::mt19937_64& rng, cudaDataType_t t, void* p, int64_t count) {
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  for (int64_t i = 0; i < count; ++i) set(t, p, i, u(rng));
}

// A column-major matrix as stored, for the reference.
struct Mat {
  const void* p = nullptr;
  cudaDataType_t t = CUDA_R_32F;
  int64_t ld = 1, stride = 0;
  double at(int64_t b, int64_t r, int64_t c) const { return get(t, p, b * stride + c * ld + r); }
};

struct RefProblem {
  int64_t m = 0, n = 0, k = 0, batch = 1;
  bool ta = false, tb = false;
  Mat a, b, c;
  double alpha = 1, beta = 0;
  const void* bias = nullptr;  // of c's type
  int64_t bias_stride = 0;
  bool gelu = false;
  bool tf32 = false;  // round the inputs to TF32 first
};

// t (pre-activation), out (post-activation) and mag (the sum of |terms|), each [batch][n][m].
struct RefResult {
  std::vector<long double> t, out, mag;
};

inline long double gelu_ref(long double x) {
  const long double pi = 3.14159265358979323846264338327950288L;
  return 0.5L * x * (1.0L + std::tanh(std::sqrt(2.0L / pi) * (x + 0.044715L * x * x * x)));
}

// The naive GEMM, in long double; call before the emulated one when C is D.
inline RefResult reference(const RefProblem& p) {
  RefResult r;
  const auto cells = static_cast<size_t>(p.batch * p.m * p.n);
  r.t.resize(cells);
  r.out.resize(cells);
  r.mag.resize(cells);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t j = 0; j < p.n; ++j)
      for (int64_t i = 0; i < p.m; ++i) {
        long double s = 0, mag = 0;
        for (int64_t q = 0; q < p.k; ++q) {
          double av = p.ta ? p.a.at(b, q, i) : p.a.at(b, i, q);
          double bv = p.tb ? p.b.at(b, j, q) : p.b.at(b, q, j);
          if (p.tf32) av = round_sig(av, 11), bv = round_sig(bv, 11);
          s += static_cast<long double>(av) * bv;
          mag += std::fabs(static_cast<long double>(av) * bv);
        }
        long double t = p.alpha * s;
        mag = std::fabs(p.alpha) * mag;
        if (p.beta != 0) {
          const double cv = p.c.at(b, i, j);
          t += p.beta * static_cast<long double>(cv);
          mag += std::fabs(p.beta * cv);
        }
        if (p.bias) {
          const double bv = get(p.c.t, p.bias, b * p.bias_stride + i);
          t += bv;
          mag += std::fabs(bv);
        }
        const size_t at = static_cast<size_t>((b * p.n + j) * p.m + i);
        r.t[at] = t;
        r.out[at] = p.gelu ? gelu_ref(t) : t;
        r.mag[at] = mag;
      }
  return r;
}

// Checks the m x n x batch matrix at `d` (type t, ld, stride) against want: each element within
// half an ulp of the output type (one rounding) plus rel_slack * mag (the emulator's own error:
// double accumulation, or split-K partials stored in fp32). Returns "" or the first mismatch.
inline std::string check(const std::vector<long double>& want, const std::vector<long double>& mag,
                         cudaDataType_t t, const void* d, int64_t m, int64_t n, int64_t batch, int64_t ld,
                         int64_t stride, double rel_slack, int64_t* violations = nullptr) {
  std::string first;
  int64_t bad = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < m; ++i) {
        const size_t at = static_cast<size_t>((b * n + j) * m + i);
        const double w = static_cast<double>(want[at]);
        const double got = get(t, d, b * stride + j * ld + i);
        const double tol = 0.5 * ulp(t, w) * (1 + 1e-9) + rel_slack * static_cast<double>(mag[at]) + 1e-300;
        if (!(std::fabs(got - w) <= tol)) {
          ++bad;
          if (first.empty()) {
            std::ostringstream os;
            os.precision(17);
            os << tname(t) << " element (" << i << ", " << j << ") of batch " << b << ": got " << got
               << ", want " << w << " (tolerance " << tol << ")";
            first = os.str();
          }
        }
      }
  if (violations) *violations = bad;
  return first;
}

// Whether every byte of [p, p + bytes) is still the stub's 0xCD fill.
inline bool untouched(const void* p, size_t bytes) {
  const auto* c = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < bytes; ++i)
    if (c[i] != 0xCD) return false;
  return true;
}

}  // namespace emutest

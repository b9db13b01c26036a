// The CPU GEMM backends (gemm.hpp). oneDNN's sgemm runs the training step's shapes
// 15-30% faster than OpenBLAS 0.3.21 on AVX-512 (at 1 thread: 2048x384x1536 168 vs 128
// GFLOP/s), and it has a bf16 gemm; it is opened with dlopen at first use, never linked,
// so libbarbell needs only OpenBLAS. Its threads (an OpenMP build) are held to one per
// call through the calling thread's OpenMP thread count, restored afterwards.
#include "cpu/gemm.hpp"

#include <cblas.h>
#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "barbell/core/error.hpp"

namespace barbell::cpu {

namespace {

// oneDNN's C API (dnnl.h): row-major, status 0 on success. dnnl_gemm_bf16bf16f32 is
// exported by libdnnl with the same convention (bf16 as 16-bit words).
using SgemmFn = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                        int64_t, float, float*, int64_t);
using Bf16GemmFn = int (*)(char, char, int64_t, int64_t, int64_t, float, const uint16_t*, int64_t,
                           const uint16_t*, int64_t, float, float*, int64_t);

struct OneDnn {
  SgemmFn sgemm = nullptr;
  Bf16GemmFn bf16 = nullptr;
  int (*omp_get_max_threads)() = nullptr;
  void (*omp_set_num_threads)(int) = nullptr;
  std::string error;  // why it did not load
};

const OneDnn& onednn() {
  static const OneDnn d = [] {
    OneDnn r;
    std::string tried;
    const char* env = std::getenv("BARBELL_ONEDNN_LIBRARY");
    void* lib = nullptr;
    for (const char* name : {env, "libdnnl.so.3", "libdnnl.so.2"}) {
      if (name == nullptr || *name == '\0') continue;
      lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib) break;
      const char* e = dlerror();
      tried += (tried.empty() ? "" : "; ") + std::string(name) + ": " + (e ? e : "dlopen failed");
    }
    if (!lib) {
      r.error = tried;
      return r;
    }
    r.sgemm = reinterpret_cast<SgemmFn>(dlsym(lib, "dnnl_sgemm"));
    r.bf16 = reinterpret_cast<Bf16GemmFn>(dlsym(lib, "dnnl_gemm_bf16bf16f32"));
    // Found through libdnnl's own dependencies (its OpenMP runtime), if it has one.
    r.omp_get_max_threads = reinterpret_cast<int (*)()>(dlsym(lib, "omp_get_max_threads"));
    r.omp_set_num_threads = reinterpret_cast<void (*)(int)>(dlsym(lib, "omp_set_num_threads"));
    if (!r.sgemm) {
      r.error = "libdnnl has no dnnl_sgemm";
      r.bf16 = nullptr;
    }
    return r;
  }();
  return d;
}

// 0: not decided, 1: OpenBLAS, 2: oneDNN.
std::atomic<int> g_backend{0};
std::mutex g_mu;

int backend() {
  int b = g_backend.load(std::memory_order_acquire);
  if (b != 0) return b;
  std::lock_guard<std::mutex> lk(g_mu);
  if ((b = g_backend.load()) != 0) return b;
  const char* want = std::getenv("BARBELL_CPU_GEMM");
  if (want && std::strcmp(want, "openblas") == 0) {
    b = 1;
  } else if (want && std::strcmp(want, "onednn") == 0) {
    BB_CHECK(onednn().sgemm != nullptr, ValueError,
             "BARBELL_CPU_GEMM=onednn: oneDNN could not be loaded ({})", onednn().error);
    b = 2;
  } else {
    BB_CHECK(want == nullptr || *want == '\0', ValueError, "BARBELL_CPU_GEMM={}: expected openblas or onednn",
             want);
    b = onednn().sgemm ? 2 : 1;
  }
  g_backend.store(b, std::memory_order_release);
  return b;
}

// One thread inside oneDNN for this call, whatever this thread's OpenMP setting is.
struct OneThread {
  const OneDnn& d;
  int saved = 0;
  explicit OneThread(const OneDnn& dd) : d(dd) {
    if (d.omp_get_max_threads && d.omp_set_num_threads) {
      saved = d.omp_get_max_threads();
      if (saved != 1) d.omp_set_num_threads(1);
    }
  }
  ~OneThread() {
    if (saved > 1) d.omp_set_num_threads(saved);
  }
};

char tr(bool t) { return t ? 'T' : 'N'; }

}  // namespace

void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
           int64_t ldb, float* C, int64_t ldc) {
  if (backend() == 2) {
    const OneDnn& d = onednn();
    OneThread one(d);
    int st = d.sgemm(tr(ta), tr(tb), M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
    BB_CHECK(st == 0, Error, "matmul: oneDNN's dnnl_sgemm failed (status {}) for [{}, {}] x [{}, {}]", st, M,
             K, K, N);
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A,
              lda, B, ldb, 0.0f, C, ldc);
}

void dgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const double* A, int64_t lda, const double* B,
           int64_t ldb, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0, A,
              lda, B, ldb, 0.0, C, ldc);
}

bool bf16_gemm_available() { return backend() == 2 && onednn().bf16 != nullptr; }

void bf16_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
               const uint16_t* B, int64_t ldb, float* C, int64_t ldc) {
  const OneDnn& d = onednn();
  BB_CHECK(d.bf16 != nullptr, Error, "matmul: internal error: no bf16 GEMM ({})", d.error);
  OneThread one(d);
  int st = d.bf16(tr(ta), tr(tb), M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
  BB_CHECK(st == 0, Error, "matmul: oneDNN's bf16 gemm failed (status {}) for [{}, {}] x [{}, {}]", st, M, K,
           K, N);
}

const char* gemm_backend() { return backend() == 2 ? "onednn" : "openblas"; }

void set_gemm_backend(const char* name) {
  std::lock_guard<std::mutex> lk(g_mu);
  if (std::strcmp(name, "openblas") == 0) {
    g_backend.store(1);
  } else {
    BB_CHECK(std::strcmp(name, "onednn") == 0, ValueError,
             "set_gemm_backend: expected openblas or onednn, got {}", name);
    BB_CHECK(onednn().sgemm != nullptr, ValueError, "set_gemm_backend: oneDNN could not be loaded ({})",
             onednn().error);
    g_backend.store(2);
  }
}

}  // namespace barbell::cpu

// The refusals the emulated cuBLASLt/cuBLAS implement, asked of whichever library this program is
// linked with: the emulator (emu.status_probe, in CI) or NVIDIA's (emu_status_probe_real, built
// with the CUDA backend, for a GPU session). Prints one line per case with the status the library
// gave and the one the emulator gives; exits 1 if any differ, so a GPU run shows where the
// emulator's reading of the documentation is not what the library does.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#ifndef BB_PROBE_REAL
#include "blas_emu.hpp"
#include "emu_stub.hpp"
#endif

namespace {

void* dev_alloc(size_t bytes) {
#ifdef BB_PROBE_REAL
  void* p = nullptr;
  if (cudaMalloc(&p, bytes) != cudaSuccess) {
    std::fprintf(stderr, "cudaMalloc(%zu) failed\n", bytes);
    std::exit(2);
  }
  cudaMemset(p, 0, bytes);
  return p;
#else
  void* p = barbell::emu::stub::alloc(bytes);
  std::memset(p, 0, bytes);
  return p;
#endif
}

struct Probe {
  std::string name;
  cublasStatus_t expected;  // what the emulator returns
  std::function<cublasStatus_t()> run;
};

constexpr size_t kWs = size_t(32) << 20;

cublasLtMatrixLayout_t layout(cudaDataType_t t, uint64_t rows, uint64_t cols, int64_t ld, int32_t batch = 1,
                              int64_t stride = 0) {
  cublasLtMatrixLayout_t l = nullptr;
  cublasLtMatrixLayoutCreate(&l, t, rows, cols, ld);
  if (batch != 1) {
    cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch);
    cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride);
  }
  return l;
}

}  // namespace

int main() {
#ifndef BB_PROBE_REAL
  barbell::emu::set_blas_quiet(true);
#endif
  const int64_t m = 64, n = 32, k = 48, kbig = 8192;
  void* A = dev_alloc(m * kbig * 4);
  void* B = dev_alloc(kbig * n * 4);
  void* C = dev_alloc(m * n * 4 * 2);
  void* aux = dev_alloc(m * n * 4 * 2);
  void* ws = dev_alloc(kWs + 256);
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t blas = nullptr;
  if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS || cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) return 2;
  const float one = 1, zero = 0;
  const uint64_t wsb = kWs;

  // A matmul descriptor with an optional epilogue / aux ld, f32 data.
  auto desc = [&](cublasComputeType_t ct, cudaDataType_t st, uint32_t epi, int64_t aux_ld, bool set_aux) {
    cublasLtMatmulDesc_t d = nullptr;
    cublasLtMatmulDescCreate(&d, ct, st);
    if (epi != CUBLASLT_EPILOGUE_DEFAULT)
      cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    if (set_aux) {
      cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux);
      cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof aux_ld);
    }
    return d;
  };
  auto pref = [&](uint32_t align_a, uint64_t max_ws) {
    cublasLtMatmulPreference_t p = nullptr;
    cublasLtMatmulPreferenceCreate(&p);
    cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_ws, sizeof max_ws);
    cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                         sizeof align_a);
    return p;
  };
  // The heuristic for (desc, A, B, C=D) with a preference; `algo` receives the result.
  auto heur = [&](cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                  cublasLtMatrixLayout_t lc, cublasLtMatmulPreference_t p, cublasLtMatmulHeuristicResult_t* r,
                  int req = 1) {
    int count = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, d, la, lb, lc, lc, p, req, r, &count);
    return st == CUBLAS_STATUS_SUCCESS && count == 0 ? CUBLAS_STATUS_NOT_SUPPORTED : st;
  };
  auto matmul = [&](cublasLtHandle_t h, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t la,
                    cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc, const cublasLtMatmulAlgo_t* algo,
                    void* w, size_t wbytes) {
    return cublasLtMatmul(h, d, &one, A, la, B, lb, &zero, C, lc, C, lc, algo, w, wbytes, nullptr);
  };

  cublasLtMatmulDesc_t plain = desc(CUBLAS_COMPUTE_32F, CUDA_R_32F, CUBLASLT_EPILOGUE_DEFAULT, 0, false);
  cublasLtMatrixLayout_t la = layout(CUDA_R_32F, m, k, m), lb = layout(CUDA_R_32F, k, n, k),
                         lc = layout(CUDA_R_32F, m, n, m);
  cublasLtMatmulPreference_t good = pref(256, wsb);
  cublasLtMatmulHeuristicResult_t res{};

  std::vector<Probe> probes = {
      {"lt: a valid problem (heuristic)", CUBLAS_STATUS_SUCCESS,
       [&] { return heur(plain, la, lb, lc, good, &res); }},
      {"lt: a valid problem (matmul, algo from the heuristic)", CUBLAS_STATUS_SUCCESS,
       [&] {
         heur(plain, la, lb, lc, good, &res);
         return matmul(lt, plain, la, lb, lc, &res.algo, ws, kWs);
       }},
      {"lt: a valid problem (matmul, algo NULL)", CUBLAS_STATUS_SUCCESS,
       [&] { return matmul(lt, plain, la, lb, lc, nullptr, ws, kWs); }},
      {"lt heuristic: requestedAlgoCount 0", CUBLAS_STATUS_INVALID_VALUE,
       [&] { return heur(plain, la, lb, lc, good, &res, 0); }},
      {"lt heuristic: A's ld below its rows", CUBLAS_STATUS_INVALID_VALUE,
       [&] { return heur(plain, layout(CUDA_R_32F, m, k, m - 1), lb, lc, good, &res); }},
      {"lt matmul: A's ld below its rows", CUBLAS_STATUS_INVALID_VALUE,
       [&] { return matmul(lt, plain, layout(CUDA_R_32F, m, k, m - 1), lb, lc, nullptr, ws, kWs); }},
      {"lt heuristic: op(A) and op(B) do not multiply", CUBLAS_STATUS_INVALID_VALUE,
       [&] { return heur(plain, la, layout(CUDA_R_32F, k + 1, n, k + 1), lc, good, &res); }},
      {"lt heuristic: batch counts differ", CUBLAS_STATUS_INVALID_VALUE,
       [&] { return heur(plain, layout(CUDA_R_32F, m, k, m, 2, m * k), lb, lc, good, &res); }},
      {"lt heuristic: f32 A/B with a bf16 C/D", CUBLAS_STATUS_NOT_SUPPORTED,
       [&] { return heur(plain, la, lb, layout(CUDA_R_16BF, m, n, m), good, &res); }},
      {"lt heuristic: compute 64F with f32 data", CUBLAS_STATUS_NOT_SUPPORTED,
       [&] {
         return heur(desc(CUBLAS_COMPUTE_64F, CUDA_R_64F, CUBLASLT_EPILOGUE_DEFAULT, 0, false), la, lb, lc,
                     good, &res);
       }},
      {"lt heuristic: MIN_ALIGNMENT_A_BYTES 1 for f32", CUBLAS_STATUS_NOT_SUPPORTED,
       [&] { return heur(plain, la, lb, lc, pref(1, wsb), &res); }},
      {"lt heuristic: GELU_AUX with aux ld 68 (not a multiple of 8)", CUBLAS_STATUS_INVALID_VALUE,
       [&] {
         return heur(desc(CUBLAS_COMPUTE_32F, CUDA_R_32F, CUBLASLT_EPILOGUE_GELU_AUX, 68, true), la, lb, lc,
                     good, &res);
       }},
      {"lt matmul: GELU_AUX with aux ld 68 (not a multiple of 8)", CUBLAS_STATUS_INVALID_VALUE,
       [&] {
         return matmul(lt, desc(CUBLAS_COMPUTE_32F, CUDA_R_32F, CUBLASLT_EPILOGUE_GELU_AUX, 68, true), la, lb,
                       lc, nullptr, ws, kWs);
       }},
      {"lt heuristic: GELU_AUX with aux ld 56 (below the 64 rows)", CUBLAS_STATUS_INVALID_VALUE,
       [&] {
         return heur(desc(CUBLAS_COMPUTE_32F, CUDA_R_32F, CUBLASLT_EPILOGUE_GELU_AUX, 56, true), la, lb, lc,
                     good, &res);
       }},
      {"lt: GELU_AUX with aux ld 64 (valid)", CUBLAS_STATUS_SUCCESS,
       [&] {
         return matmul(lt, desc(CUBLAS_COMPUTE_32F, CUDA_R_32F, CUBLASLT_EPILOGUE_GELU_AUX, 64, true), la, lb,
                       lc, nullptr, ws, kWs);
       }},
      {"lt matmul: BIAS epilogue without a bias pointer", CUBLAS_STATUS_INVALID_VALUE,
       [&] {
         return matmul(lt, desc(CUBLAS_COMPUTE_32F, CUDA_R_32F, CUBLASLT_EPILOGUE_BIAS, 0, false), la, lb, lc,
                       nullptr, ws, kWs);
       }},
      {"lt matmul: workspace 1 byte smaller than the heuristic's workspaceSize (long k)",
       CUBLAS_STATUS_INVALID_VALUE,
       [&] {
         cublasLtMatrixLayout_t ka = layout(CUDA_R_32F, m, kbig, m), kb = layout(CUDA_R_32F, kbig, n, kbig);
         const cublasStatus_t h = heur(plain, ka, kb, lc, good, &res);
         if (h != CUBLAS_STATUS_SUCCESS) return h;
         if (res.workspaceSize == 0) {
           std::printf("    (the heuristic chose an algorithm without workspace: not probed)\n");
           return CUBLAS_STATUS_INVALID_VALUE;
         }
         return matmul(lt, plain, ka, kb, lc, &res.algo, ws, res.workspaceSize - 1);
       }},
      {"lt matmul: NULL handle", CUBLAS_STATUS_NOT_INITIALIZED,
       [&] { return matmul(nullptr, plain, la, lb, lc, nullptr, ws, kWs); }},
      {"lt matmul: NULL alpha", CUBLAS_STATUS_INVALID_VALUE,
       [&] {
         return cublasLtMatmul(lt, plain, nullptr, A, la, B, lb, &zero, C, lc, C, lc, nullptr, ws, kWs,
                               nullptr);
       }},
      {"lt SetAttribute: TRANSA with an 8-byte value", CUBLAS_STATUS_INVALID_VALUE,
       [&] {
         const int64_t v = 0;
         return cublasLtMatmulDescSetAttribute(plain, CUBLASLT_MATMUL_DESC_TRANSA, &v, sizeof v);
       }},
      {"lt SetAttribute: BATCH_COUNT from NULL", CUBLAS_STATUS_INVALID_VALUE,
       [&] { return cublasLtMatrixLayoutSetAttribute(la, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, nullptr, 4); }},
      {"lt create: NULL handle pointer", CUBLAS_STATUS_INVALID_VALUE,
       [&] { return cublasLtCreate(nullptr); }},
      {"cublas gemm: lda below m", CUBLAS_STATUS_INVALID_VALUE,
       [&] {
         return cublasGemmStridedBatchedEx_64(blas, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, A, CUDA_R_32F,
                                              m - 1, 0, B, CUDA_R_32F, k, 0, &zero, C, CUDA_R_32F, m, 0, 1,
                                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
       }},
      {"cublas gemm: ldb below n with transb", CUBLAS_STATUS_INVALID_VALUE,
       [&] {
         return cublasGemmStridedBatchedEx_64(blas, CUBLAS_OP_N, CUBLAS_OP_T, m, n, k, &one, A, CUDA_R_32F, m,
                                              0, B, CUDA_R_32F, n - 1, 0, &zero, C, CUDA_R_32F, m, 0, 1,
                                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
       }},
      {"cublas gemm: m < 0", CUBLAS_STATUS_INVALID_VALUE,
       [&] {
         return cublasGemmStridedBatchedEx_64(blas, CUBLAS_OP_N, CUBLAS_OP_N, -1, n, k, &one, A, CUDA_R_32F,
                                              m, 0, B, CUDA_R_32F, k, 0, &zero, C, CUDA_R_32F, m, 0, 1,
                                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
       }},
      {"cublas gemm: f32 A/B with an f64 C", CUBLAS_STATUS_NOT_SUPPORTED,
       [&] {
         return cublasGemmStridedBatchedEx_64(blas, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, A, CUDA_R_32F, m,
                                              0, B, CUDA_R_32F, k, 0, &zero, C, CUDA_R_64F, m, 0, 1,
                                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
       }},
      {"cublas gemm: valid", CUBLAS_STATUS_SUCCESS,
       [&] {
         return cublasGemmStridedBatchedEx_64(blas, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, A, CUDA_R_32F, m,
                                              0, B, CUDA_R_32F, k, 0, &zero, C, CUDA_R_32F, m, 0, 1,
                                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
       }},
      {"cublas SetWorkspace: a 16-byte aligned workspace", CUBLAS_STATUS_INVALID_VALUE,
       [&] { return cublasSetWorkspace(blas, static_cast<char*>(ws) + 16, 4096); }},
      {"cublas SetMathMode: mode 7", CUBLAS_STATUS_INVALID_VALUE,
       [&] { return cublasSetMathMode(blas, static_cast<cublasMath_t>(7)); }},
      {"cublas create: NULL handle pointer", CUBLAS_STATUS_INVALID_VALUE,
       [&] { return cublasCreate(nullptr); }},
  };

  int mismatches = 0;
  for (const Probe& p : probes) {
    const cublasStatus_t got = p.run();
    const bool same = got == p.expected;
    mismatches += !same;
    std::printf("%-4s %-72s %-30s (emulator: %s)\n", same ? "ok" : "DIFF", p.name.c_str(),
                cublasLtGetStatusName(got), cublasLtGetStatusName(p.expected));
  }
#ifdef BB_PROBE_REAL
  const cudaError_t e = cudaDeviceSynchronize();
  std::printf("device after the probes: %s\n", cudaGetErrorName(e));
  if (e != cudaSuccess) ++mismatches;
#endif
  std::printf("%d of %zu probes differ from the emulator\n", mismatches, probes.size());
  return mismatches == 0 ? 0 : 1;
}

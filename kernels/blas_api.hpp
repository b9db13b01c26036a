// The cuBLASLt and cuBLAS functions that kernels/matmul.cu calls, as one table of pointers
// (blas()), so that libbarbell has no NEEDED entry for either library (kernels/blas_api.cu).
//
// The table is filled once, at the first matmul on a GPU: dlopen of libcublasLt.so.13 and
// libcublas.so.13 (CUDA 13's sonames: the header's CUBLAS_VER_MAJOR) and dlsym of each
// function. In the host emulation build (BARBELL_CUDA_EMULATE) it holds the addresses of the
// linked emulation's functions of the same names instead. The headers supply types only.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>

#include <cstddef>
#include <string>

// X(symbol) for every function of the table, by the name each library exports (cublas_v2.h
// maps cublasCreate and friends to their _v2 symbols by macro; dlsym needs the real names).
#define BB_CUBLASLT_FUNCTIONS(X)          \
  X(cublasLtGetStatusName)                \
  X(cublasLtCreate)                       \
  X(cublasLtMatmulDescCreate)             \
  X(cublasLtMatmulDescDestroy)            \
  X(cublasLtMatmulDescSetAttribute)       \
  X(cublasLtMatrixLayoutCreate)           \
  X(cublasLtMatrixLayoutDestroy)          \
  X(cublasLtMatrixLayoutSetAttribute)     \
  X(cublasLtMatmulPreferenceCreate)       \
  X(cublasLtMatmulPreferenceDestroy)      \
  X(cublasLtMatmulPreferenceSetAttribute) \
  X(cublasLtMatmulAlgoGetHeuristic)       \
  X(cublasLtMatmul)
#define BB_CUBLAS_FUNCTIONS(X) \
  X(cublasCreate_v2)           \
  X(cublasSetMathMode)         \
  X(cublasSetStream_v2)        \
  X(cublasSetWorkspace_v2)     \
  X(cublasGemmStridedBatchedEx_64)

namespace barbell::gpu {

struct BlasApi {
#define BB_BLAS_MEMBER(f) decltype(&::f) f = nullptr;
  BB_CUBLASLT_FUNCTIONS(BB_BLAS_MEMBER)
  BB_CUBLAS_FUNCTIONS(BB_BLAS_MEMBER)
#undef BB_BLAS_MEMBER
  std::string lt_path, blas_path;  // the files loaded (or what stands in for them)
  size_t lt_version = 0;           // cublasLtGetVersion(): major * 10000 + minor * 100 + patch
};

// The table, loaded on the first call (once, thread-safe). When the libraries cannot be
// loaded it throws CudaError naming them, every path tried with the loader's reason, and
// how to fix it ($BARBELL_CUBLASLT_LIBRARY, $BARBELL_CUBLAS_LIBRARY), then and on every
// later call.
const BlasApi& blas();

}  // namespace barbell::gpu

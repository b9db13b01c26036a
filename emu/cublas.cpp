// cuBLAS emulated on the emulated GPU: the handle functions and the strided-batched GEMM barbell
// falls back to (kernels/matmul.cu), with the signatures of the real cublas_api.h.
//
// Sources: the cuBLAS API reference (docs.nvidia.com/cuda/cublas, "cuBLAS Helper Function
// Reference": cublasCreate(), cublasDestroy(), cublasSetStream(), cublasSetWorkspace(),
// cublasSetMathMode(), cublasGetStatusName(); "BLAS-like Extension": cublasGemmEx(),
// cublasGemmStridedBatchedEx(); "64-bit Integer Interface"; cublasMath_t), cited as [doc: section].
#include <cublas_v2.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_set>

#include "emu_api.hpp"
#include "gemm_emu.hpp"

// The opaque handle type cublas_api.h declares.
struct cublasContext {
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;  // the user's workspace (cublasSetWorkspace), when has_user_workspace
  size_t workspace_bytes = 0;
  bool has_user_workspace = false;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace barbell::emu::blas {
namespace {

std::mutex& live_mu() {
  static auto* m = new std::mutex();
  return *m;
}
std::unordered_set<const void*>& live() {
  static auto* s = new std::unordered_set<const void*>();
  return *s;
}
bool is_live(const void* h) {
  std::lock_guard<std::mutex> l(live_mu());
  return h && live().count(h) == 1;
}

cublasStatus_t fail(const char* call, cublasStatus_t st, const std::string& why) {
  const bool loud = st == CUBLAS_STATUS_INVALID_VALUE || st == CUBLAS_STATUS_NOT_INITIALIZED;
  gemm::set_last_error(std::string(call) + ": " + gemm::status_name(st) + ": " + why, loud);
  return st;
}
cublasStatus_t ok() {
  gemm::set_last_error("", false);
  return CUBLAS_STATUS_SUCCESS;
}

bool is_compute_type(int c) {
  switch (c) {
    case CUBLAS_COMPUTE_16F:
    case CUBLAS_COMPUTE_16F_PEDANTIC:
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC:
    case CUBLAS_COMPUTE_32F_FAST_16F:
    case CUBLAS_COMPUTE_32F_FAST_16BF:
    case CUBLAS_COMPUTE_32F_FAST_TF32:
    case CUBLAS_COMPUTE_32F_EMULATED_16BFX9:
    case CUBLAS_COMPUTE_64F:
    case CUBLAS_COMPUTE_64F_PEDANTIC:
    case CUBLAS_COMPUTE_64F_EMULATED_FIXEDPOINT:
    case CUBLAS_COMPUTE_32I:
    case CUBLAS_COMPUTE_32I_PEDANTIC: return true;
    default: return false;
  }
}

bool is_gemm_algo(int a) {
  return a == CUBLAS_GEMM_DEFAULT || (a >= CUBLAS_GEMM_ALGO0 && a <= CUBLAS_GEMM_ALGO23) ||
         a == CUBLAS_GEMM_DEFAULT_TENSOR_OP ||
         (a >= CUBLAS_GEMM_ALGO0_TENSOR_OP && a <= CUBLAS_GEMM_ALGO15_TENSOR_OP) || a == CUBLAS_GEMM_AUTOTUNE;
}

// The scale type cublasGemmEx() reads alpha and beta in: the one that corresponds to the compute
// type [doc: cublasGemmEx(), alpha / beta].
int scale_for(int compute) {
  switch (compute) {
    case CUBLAS_COMPUTE_64F:
    case CUBLAS_COMPUTE_64F_PEDANTIC:
    case CUBLAS_COMPUTE_64F_EMULATED_FIXEDPOINT: return CUDA_R_64F;
    case CUBLAS_COMPUTE_16F:
    case CUBLAS_COMPUTE_16F_PEDANTIC: return CUDA_R_16F;
    default: return CUDA_R_32F;
  }
}

std::string str(int64_t v) { return std::to_string(v); }

cublasStatus_t gemm_strided_batched(const char* call, cublasHandle_t handle, cublasOperation_t transa,
                                    cublasOperation_t transb, int64_t m, int64_t n, int64_t k,
                                    const void* alpha, const void* A, cudaDataType Atype, int64_t lda,
                                    long long strideA, const void* B, cudaDataType Btype, int64_t ldb,
                                    long long strideB, const void* beta, void* C, cudaDataType Ctype,
                                    int64_t ldc, long long strideC, int64_t batchCount,
                                    cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  // [doc: cublasGemmStridedBatchedEx(), Return Value]
  if (!is_live(handle))
    return fail(call, CUBLAS_STATUS_NOT_INITIALIZED, "the handle is not a live cublasHandle_t");
  if (m < 0 || n < 0 || k < 0 || batchCount < 0)
    return fail(
        call, CUBLAS_STATUS_INVALID_VALUE,
        "m " + str(m) + ", n " + str(n) + ", k " + str(k) + ", batchCount " + str(batchCount) + ": below 0");
  for (cublasOperation_t t : {transa, transb})
    if (t != CUBLAS_OP_N && t != CUBLAS_OP_T && t != CUBLAS_OP_C)
      return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                  "transa/transb " + str(t) + " is not CUBLAS_OP_N, CUBLAS_OP_T or CUBLAS_OP_C");
  const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
  // lda >= max(1, m) when transa == N, max(1, k) otherwise; ldb >= max(1, k) / max(1, n); ldc >= max(1, m).
  const int64_t a_rows = ta ? k : m, b_rows = tb ? n : k;
  if (lda < std::max<int64_t>(1, a_rows) || ldb < std::max<int64_t>(1, b_rows) ||
      ldc < std::max<int64_t>(1, m))
    return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                "lda " + str(lda) + " (A has " + str(a_rows) + " rows), ldb " + str(ldb) + " (B has " +
                    str(b_rows) + " rows), ldc " + str(ldc) + " (C has " + str(m) +
                    " rows): a leading dimension is below max(1, rows)");
  if (!alpha || !beta) return fail(call, CUBLAS_STATUS_INVALID_VALUE, "alpha or beta is NULL");
  if (!is_compute_type(computeType))
    return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                "computeType " + str(computeType) + " is not a cublasComputeType_t");
  if (!is_gemm_algo(algo))
    return fail(call, CUBLAS_STATUS_INVALID_VALUE, "algo " + str(algo) + " is not a cublasGemmAlgo_t");
  std::string why;
  gemm::Compute compute;
  if (Atype != Btype ||
      !gemm::compute_for(computeType, scale_for(computeType), Atype, Ctype, &compute, &why)) {
    if (why.empty())
      why =
          std::string("Atype ") + gemm::type_name(Atype) + " and Btype " + gemm::type_name(Btype) + " differ";
    return fail(call, CUBLAS_STATUS_NOT_SUPPORTED, why);
  }
  // TF32 for fp32 routines when the math mode allows it [doc: cublasMath_t, CUBLAS_TF32_TENSOR_OP_MATH].
  const int base_math =
      static_cast<int>(handle->math) & ~static_cast<int>(CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
  if (compute == gemm::Compute::F32 && computeType == CUBLAS_COMPUTE_32F && Atype == CUDA_R_32F &&
      base_math == CUBLAS_TF32_TENSOR_OP_MATH)
    compute = gemm::Compute::F32_TF32;

  double a = 0, b = 0;
  if (scale_for(computeType) == CUDA_R_64F) {
    std::memcpy(&a, alpha, 8);
    std::memcpy(&b, beta, 8);
  } else {
    float af, bf;
    std::memcpy(&af, alpha, 4);
    std::memcpy(&bf, beta, 4);
    a = af;
    b = bf;
  }
  if (m == 0 || n == 0 || batchCount == 0) return ok();  // nothing to compute (BLAS quick return)
  if (!C) return fail(call, CUBLAS_STATUS_INVALID_VALUE, "C is NULL");
  if (a != 0 && k > 0 && (!A || !B)) return fail(call, CUBLAS_STATUS_INVALID_VALUE, "A or B is NULL");

  gemm::Job job;
  job.name = call;
  job.m = m;
  job.n = n;
  job.k = k;
  job.batch = batchCount;
  job.a = {A, Atype, a_rows, ta ? m : k, lda, strideA};
  job.b = {B, Btype, b_rows, tb ? k : n, ldb, strideB};
  job.c = {C, Ctype, m, n, ldc, strideC};
  job.d = job.c;
  job.trans_a = ta;
  job.trans_b = tb;
  job.compute = compute;
  job.alpha = a;
  job.beta = b;
  // cuBLAS takes any element-aligned pointers.
  job.align_a = job.align_b = gemm::element_size(Atype);
  job.align_c = job.align_d = job.align_bias = job.align_aux = gemm::element_size(Ctype);
  // Split-K as the emulated cuBLASLt would; the partials of a 16-bit output are reduced in the
  // output type unless the math mode forbids it [doc: cublasMath_t,
  // CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION].
  const int splits = gemm::split_count(m, n, k, batchCount);
  const bool reduced =
      gemm::element_size(Ctype) == 2 &&
      (static_cast<int>(handle->math) & CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION) == 0;
  job.scheme =
      splits > 1 ? (reduced ? gemm::Scheme::OutputType : gemm::Scheme::ComputeType) : gemm::Scheme::None;
  const size_t need = gemm::split_workspace(splits, job.scheme, m, n, batchCount, compute, Ctype);
  if (handle->has_user_workspace && need > handle->workspace_bytes) {
    job.scheme = gemm::Scheme::None;  // an algorithm that fits the user's workspace
  } else if (splits > 1) {
    job.splits = splits;
    job.workspace_bytes = need;
    job.workspace = handle->has_user_workspace ? handle->workspace : nullptr;
    job.workspace_is_device = handle->has_user_workspace;  // else cuBLAS's own pool
  }
  job.algo = job.splits > 1 ? std::string("emulated cuBLAS GEMM, ") + std::to_string(job.splits) + "-way " +
                                  gemm::scheme_name(job.scheme)
                            : std::string("emulated cuBLAS GEMM");
  const std::string overlap = gemm::overlap_error(job);
  if (!overlap.empty()) return fail(call, CUBLAS_STATUS_INVALID_VALUE, overlap);
  // [doc: EXECUTION_FAILED "the function failed to launch on the GPU"]
  const cudaError_t e = barbell::emu::enqueue(handle->stream, call, [job] { gemm::run(job); });
  if (e != cudaSuccess)
    return fail(call, CUBLAS_STATUS_EXECUTION_FAILED,
                "the stream refused the work (cudaError_t " + std::to_string(static_cast<int>(e)) + ")");
  return ok();
}

}  // namespace
}  // namespace barbell::emu::blas

using namespace barbell::emu::blas;  // NOLINT: the C API below is the file's point
namespace gemm = barbell::emu::gemm;

// [doc: cublasCreate(): INVALID_VALUE "handle == NULL"]
cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t* handle) {
  if (!handle) return fail("cublasCreate", CUBLAS_STATUS_INVALID_VALUE, "handle is NULL");
  *handle = new cublasContext();
  std::lock_guard<std::mutex> l(live_mu());
  live().insert(*handle);
  return ok();
}

// [doc: cublasDestroy(): NOT_INITIALIZED "the library was not initialized"]
cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle) {
  {
    std::lock_guard<std::mutex> l(live_mu());
    if (!handle || live().erase(handle) != 1)
      return fail("cublasDestroy", CUBLAS_STATUS_NOT_INITIALIZED, "not a live handle (destroyed twice?)");
  }
  delete handle;
  return ok();
}

// [doc: cublasSetStream(): "unconditionally resets the cuBLAS library workspace back to the
// default workspace pool"; NOT_INITIALIZED "the library was not initialized"]
cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId) {
  if (!is_live(handle)) return fail("cublasSetStream", CUBLAS_STATUS_NOT_INITIALIZED, "not a live handle");
  handle->stream = streamId;
  handle->has_user_workspace = false;
  handle->workspace = nullptr;
  handle->workspace_bytes = 0;
  return ok();
}

// [doc: cublasSetWorkspace(): "The workspace pointer has to be aligned to at least 256 bytes,
// otherwise CUBLAS_STATUS_INVALID_VALUE error is returned"]
cublasStatus_t CUBLASWINAPI cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace,
                                                  size_t workspaceSizeInBytes) {
  if (!is_live(handle)) return fail("cublasSetWorkspace", CUBLAS_STATUS_NOT_INITIALIZED, "not a live handle");
  if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0)
    return fail("cublasSetWorkspace", CUBLAS_STATUS_INVALID_VALUE, "the workspace is not 256-byte aligned");
  handle->has_user_workspace = true;
  handle->workspace = workspaceSizeInBytes > 0 ? workspace : nullptr;
  handle->workspace_bytes = workspace ? workspaceSizeInBytes : 0;
  return ok();
}

// [doc: cublasSetMathMode(): INVALID_VALUE "mode has invalid value"; cublasMath_t: the modes, and
// CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION a flag combined with one of them]
cublasStatus_t CUBLASWINAPI cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!is_live(handle)) return fail("cublasSetMathMode", CUBLAS_STATUS_NOT_INITIALIZED, "not a live handle");
  const int base =
      static_cast<int>(mode) & ~static_cast<int>(CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
  switch (base) {
    case CUBLAS_DEFAULT_MATH:
    case CUBLAS_TENSOR_OP_MATH:
    case CUBLAS_PEDANTIC_MATH:
    case CUBLAS_TF32_TENSOR_OP_MATH:
    case CUBLAS_FP32_EMULATED_BF16X9_MATH:
    case CUBLAS_FP64_EMULATED_FIXEDPOINT_MATH: break;
    default:
      return fail("cublasSetMathMode", CUBLAS_STATUS_INVALID_VALUE,
                  "mode " + std::to_string(mode) + " is invalid");
  }
  handle->math = mode;
  return ok();
}

const char* CUBLASWINAPI cublasGetStatusName(cublasStatus_t status) { return gemm::status_name(status); }
const char* CUBLASWINAPI cublasGetStatusString(cublasStatus_t status) { return gemm::status_string(status); }

cublasStatus_t CUBLASWINAPI cublasGemmStridedBatchedEx(
    cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
    const void* alpha, const void* A, cudaDataType Atype, int lda, long long int strideA, const void* B,
    cudaDataType Btype, int ldb, long long int strideB, const void* beta, void* C, cudaDataType Ctype,
    int ldc, long long int strideC, int batchCount, cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  return gemm_strided_batched("cublasGemmStridedBatchedEx", handle, transa, transb, m, n, k, alpha, A, Atype,
                              lda, strideA, B, Btype, ldb, strideB, beta, C, Ctype, ldc, strideC, batchCount,
                              computeType, algo);
}

// [doc: "64-bit Integer Interface": the _64 variant takes int64_t sizes, leading dimensions and count]
cublasStatus_t CUBLASWINAPI cublasGemmStridedBatchedEx_64(
    cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int64_t m, int64_t n,
    int64_t k, const void* alpha, const void* A, cudaDataType Atype, int64_t lda, long long int strideA,
    const void* B, cudaDataType Btype, int64_t ldb, long long int strideB, const void* beta, void* C,
    cudaDataType Ctype, int64_t ldc, long long int strideC, int64_t batchCount,
    cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  return gemm_strided_batched("cublasGemmStridedBatchedEx_64", handle, transa, transb, m, n, k, alpha, A,
                              Atype, lda, strideA, B, Btype, ldb, strideB, beta, C, Ctype, ldc, strideC,
                              batchCount, computeType, algo);
}

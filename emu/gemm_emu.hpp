// The GEMM engine behind the emulated cuBLASLt (emu/cublaslt.cpp) and cuBLAS (emu/cublas.cpp):
// one strided-batched column-major D = epilogue(alpha op(A) op(B) + beta C), computed in double.
//
// Internal to the emulator (the two front ends validate their arguments as the libraries do and
// describe the work as a gemm::Job; this file runs it on the emulated device). What the
// emulator's callers may use is in emu/blas_emu.hpp.
#pragma once

#include <cublas_api.h>
#include <cuda_runtime.h>
#include <library_types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace barbell::emu::gemm {

// The data types the emulator computes with (cuBLASLt/cuBLAS take more; those are rejected).
bool known_type(int type);
size_t element_size(cudaDataType_t type);  // 0 for an unknown type
const char* type_name(int type);

enum class Compute {
  F32,       // CUBLAS_COMPUTE_32F(_PEDANTIC): fp32 inputs and accumulation (emulated exactly, in double)
  F32_TF32,  // CUBLAS_COMPUTE_32F_FAST_TF32 (and _FAST_16F/_16BF): inputs rounded to TF32 first
  F64,       // CUBLAS_COMPUTE_64F(_PEDANTIC)
};

// The compute type for a (compute, scale, A/B type, C/D type) combination, from the table of
// supported types in the cuBLASLt reference (cublasLtMatmul(), "Datatypes Supported") and the
// cuBLAS reference (cublasGemmEx()): false if the combination is not one of them (or is one the
// emulator does not do: integer, fp8, complex). `why` says what is wrong.
bool compute_for(int compute_type, int scale_type, int ab_type, int cd_type, Compute* out, std::string* why);
const char* compute_name(int compute_type);

// Split-K reduction of the partial dot products (cublasLtReductionScheme_t).
enum class Scheme : uint32_t { None = 0, Inplace = 1, ComputeType = 2, OutputType = 4 };
const char* scheme_name(Scheme s);

// A column-major matrix as stored: element (r, c) of batch entry b is at
// ptr + (b * stride + c * ld + r) * element_size(type).
struct Matrix {
  const void* ptr = nullptr;
  cudaDataType_t type = CUDA_R_32F;
  int64_t rows = 0, cols = 0, ld = 0, stride = 0;
};

// One emulated GEMM: for b < batch,
//   t = alpha * op(A_b) op(B_b) + beta * C_b (+ bias_b broadcast over columns)
//   aux_b = t (when aux), D_b = gelu(t) (when gelu) or t.
// op(A) is m x k, op(B) is k x n, C and D are m x n. C is not read when beta == 0, A and B
// are not read when alpha == 0 or k == 0 (as BLAS specifies).
struct Job {
  std::string name;  // the API call, for messages ("cublasLtMatmul", ...)
  int64_t m = 0, n = 0, k = 0, batch = 1;
  Matrix a, b, c, d;  // d.ptr is written
  bool trans_a = false, trans_b = false;
  Compute compute = Compute::F32;
  double alpha = 1, beta = 0;
  bool gelu = false;
  const void* bias = nullptr;  // m elements of d's type, batch stride bias_stride
  int64_t bias_stride = 0;
  void* aux = nullptr;  // m x n of d's type, column-major with aux_ld, batch stride aux_stride
  int64_t aux_ld = 0, aux_stride = 0;
  // The algorithm: the alignment (bytes) it assumes of every A, B, C, D pointer of every batch
  // entry and of the bias and aux pointers (a smaller one faults, as a vectorised GPU kernel
  // would with "misaligned address"); its split-K.
  size_t align_a = 1, align_b = 1, align_c = 1, align_d = 1, align_bias = 1, align_aux = 1;
  std::string algo;  // its name, for messages
  int splits = 1;
  Scheme scheme = Scheme::None;
  void* workspace = nullptr;  // device memory the split-K partials go through
  size_t workspace_bytes = 0;
  bool workspace_is_device = true;  // false: the library's own pool (cuBLAS's default workspace)
};

// Runs `job` on the emulated device; only from inside work given to barbell::emu::enqueue.
// Declares every range it touches (one per column), faults (barbell::emu::Fault) on a pointer
// misaligned for the algorithm.
void run(const Job& job);

// Host-side checks shared by both front ends: the ranges D (and aux) write must not overlap
// each other or the inputs, except C == D with the same layout (in place). Empty when fine,
// else what overlaps.
std::string overlap_error(const Job& job);

// The split-K the emulated heuristics use for an m x n x k problem of `batch` entries: the
// number of splits (1: none). Deterministic, from the shape only: long reductions into few
// output tiles, where a GPU would otherwise leave most SMs idle.
int split_count(int64_t m, int64_t n, int64_t k, int64_t batch);
// The workspace bytes a split-K algorithm with that scheme needs.
size_t split_workspace(int splits, Scheme scheme, int64_t m, int64_t n, int64_t batch, Compute compute,
                       cudaDataType_t d_type);

// The lowest set bit of p's address (its alignment), at most 256; 256 for nullptr.
size_t pointer_alignment(const void* p);

// cublasGetStatusName / cublasGetStatusString (and their cuBLASLt twins) for the emulated libraries.
const char* status_name(cublasStatus_t st);
const char* status_string(cublasStatus_t st);

// The emulator's record of why the last call on this thread did not succeed (emu/blas_emu.hpp).
void set_last_error(const std::string& msg, bool loud);

}  // namespace barbell::emu::gemm

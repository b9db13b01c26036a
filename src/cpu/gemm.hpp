// The CPU backend's GEMM: oneDNN's sgemm (and bf16 gemm) when libdnnl is installed,
// loaded at first use, else OpenBLAS; row-major, C = op(A) op(B), single-threaded.
#pragma once

#include <cstdint>

namespace barbell::cpu {

// C [M, N] (row stride ldc) = op(A) [M, K] @ op(B) [K, N]; beta 0. One thread: the
// caller splits a product between threads (cpu::matmul).
void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
           int64_t ldb, float* C, int64_t ldc);
void dgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const double* A, int64_t lda, const double* B,
           int64_t ldb, double* C, int64_t ldc);
// bf16 operands (raw bits), f32 products; only when bf16_gemm_available().
bool bf16_gemm_available();
void bf16_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
               const uint16_t* B, int64_t ldb, float* C, int64_t ldc);

// "onednn" or "openblas": the f32 GEMM in use. BARBELL_CPU_GEMM=openblas forces OpenBLAS,
// =onednn requires oneDNN (BARBELL_ONEDNN_LIBRARY names its file, else libdnnl.so.3/.2).
const char* gemm_backend();
// Tests only: switches the f32/bf16 GEMM ("onednn" throws when it cannot be loaded).
void set_gemm_backend(const char* name);

}  // namespace barbell::cpu

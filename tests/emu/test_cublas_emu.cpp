// The emulated cuBLAS (emu/cublas.cpp): cublasGemmStridedBatchedEx(_64) against the reference over
// shapes, transposes, leading dimensions, batches and dtypes; the handle's stream, workspace and
// math mode; every documented refusal with its status.
#include <cublas_v2.h>
#include <catch2/catch.hpp>

#include <random>
#include <string>

#include "blas_emu.hpp"
#include "emu_stub.hpp"
#include "gemm_ref.hpp"

using namespace emutest;
namespace stub = barbell::emu::stub;

namespace {

struct Blas {
  cublasHandle_t h = nullptr;
  Blas() { REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS); }
  ~Blas() { cublasDestroy(h); }
};

struct GemmCase {
  cudaDataType_t ab = CUDA_R_32F, cd = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  int64_t m = 1, n = 1, k = 1, batch = 1;
  bool ta = false, tb = false;
  int64_t pad = 0;
  bool bcast_b = false;
  double alpha = 1, beta = 0;
  bool use64 = true;
  double slack = 1e-12;
  uint64_t seed = 1;
};

// Runs one GEMM on h; returns the first wrong element (or a fault), "" if right.
std::string run_gemm(cublasHandle_t h, const GemmCase& g, cublasStatus_t* status,
                     int64_t* violations = nullptr) {
  std::mt19937_64 rng(g.seed);
  const int64_t ar = g.ta ? g.k : g.m, ac = g.ta ? g.m : g.k, br = g.tb ? g.n : g.k, bc = g.tb ? g.k : g.n;
  const int64_t lda = ar + g.pad, ldb = br + 2 * g.pad, ldc = g.m + g.pad;
  const int64_t sa = lda * ac + 3, sb = g.bcast_b ? 0 : ldb * bc, sc = ldc * g.n + 1;
  const size_t ea = esize(g.ab), ec = esize(g.cd);
  Buf A(static_cast<size_t>(sa * g.batch) * ea),
      B(static_cast<size_t>(ldb * bc * (g.bcast_b ? 1 : g.batch)) * ea),
      C(static_cast<size_t>(sc * g.batch) * ec);
  fill(rng, g.ab, A.p, sa * g.batch);
  fill(rng, g.ab, B.p, ldb * bc * (g.bcast_b ? 1 : g.batch));
  if (g.beta != 0) fill(rng, g.cd, C.p, sc * g.batch);
  RefProblem rp;
  rp.m = g.m, rp.n = g.n, rp.k = g.k, rp.batch = g.batch, rp.ta = g.ta, rp.tb = g.tb;
  rp.a = {A.p, g.ab, lda, sa};
  rp.b = {B.p, g.ab, ldb, sb};
  rp.c = {C.p, g.cd, ldc, sc};
  rp.alpha = g.alpha, rp.beta = g.beta;
  rp.tf32 = g.compute == CUBLAS_COMPUTE_32F_FAST_TF32;
  const RefResult want = reference(rp);
  const float af = static_cast<float>(g.alpha), bf = static_cast<float>(g.beta);
  const double ad = g.alpha, bd = g.beta;
  const bool dbl = g.compute == CUBLAS_COMPUTE_64F;
  const void* alpha = dbl ? static_cast<const void*>(&ad) : static_cast<const void*>(&af);
  const void* beta = dbl ? static_cast<const void*>(&bd) : static_cast<const void*>(&bf);
  const cublasOperation_t oa = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N, ob = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (g.use64)
    *status =
        cublasGemmStridedBatchedEx_64(h, oa, ob, g.m, g.n, g.k, alpha, A.p, g.ab, lda, sa, B.p, g.ab, ldb, sb,
                                      beta, C.p, g.cd, ldc, sc, g.batch, g.compute, CUBLAS_GEMM_DEFAULT);
  else
    *status = cublasGemmStridedBatchedEx(
        h, oa, ob, static_cast<int>(g.m), static_cast<int>(g.n), static_cast<int>(g.k), alpha, A.p, g.ab,
        static_cast<int>(lda), sa, B.p, g.ab, static_cast<int>(ldb), sb, beta, C.p, g.cd,
        static_cast<int>(ldc), sc, static_cast<int>(g.batch), g.compute, CUBLAS_GEMM_DEFAULT);
  if (*status != CUBLAS_STATUS_SUCCESS) return barbell::emu::blas_last_error();
  const std::string f = stub::take_fault();
  if (!f.empty()) return f;
  std::string e = check(want.out, want.mag, g.cd, C.p, g.m, g.n, g.batch, ldc, sc, g.slack, violations);
  for (int64_t b = 0; b < g.batch && e.empty() && g.beta == 0; ++b)  // (beta != 0: the test filled it)
    if (!untouched(C.c() + ((b + 1) * sc - 1) * static_cast<int64_t>(ec), ec))
      e = "the batch gap of C was written";
  return e;
}

}  // namespace

TEST_CASE("cublasGemmStridedBatchedEx(_64) matches the reference") {
  struct Types {
    cudaDataType_t ab, cd;
    cublasComputeType_t compute;
  };
  const Types types[] = {
      {CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F}, {CUDA_R_16F, CUDA_R_16F, CUBLAS_COMPUTE_32F},
      {CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F},   {CUDA_R_64F, CUDA_R_64F, CUBLAS_COMPUTE_64F},
      {CUDA_R_16F, CUDA_R_32F, CUBLAS_COMPUTE_32F},   {CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32}};
  const int64_t sizes[] = {1, 3, 17, 65};
  Blas blas;
  int v = 0;
  for (const Types& ty : types)
    for (int64_t m : sizes)
      for (int64_t n : sizes)
        for (int64_t k : sizes) {
          GemmCase g;
          g.ab = ty.ab, g.cd = ty.cd, g.compute = ty.compute, g.m = m, g.n = n, g.k = k;
          g.ta = v & 1, g.tb = v & 2;
          g.pad = (v / 4) % 2 ? 3 : 0;
          if ((v / 8) % 2) g.alpha = -0.5, g.beta = 1.25;
          if ((v / 3) % 3) g.batch = 2, g.bcast_b = (v / 3) % 3 == 2;
          g.use64 = (v / 5) % 2;
          g.seed = static_cast<uint64_t>(v) + 11;
          ++v;
          cublasStatus_t st;
          const std::string e = run_gemm(blas.h, g, &st);
          INFO(tname(g.ab) << "->" << tname(g.cd) << " m " << m << " n " << n << " k " << k << " ta " << g.ta
                           << " tb " << g.tb << " batch " << g.batch << ": " << e);
          REQUIRE(st == CUBLAS_STATUS_SUCCESS);
          REQUIRE(e.empty());
        }
}

TEST_CASE("cuBLAS's stream, workspace and math mode") {
  Blas blas;
  Buf ws(size_t(32) << 20);
  GemmCase g;  // a long reduction into one tile: the emulated cuBLAS splits K
  g.ab = g.cd = CUDA_R_16BF;
  g.m = g.n = 16, g.k = 4096;
  g.slack = 1e-6;
  g.seed = 42;
  cublasStatus_t st;
  cudaStream_t s1 = reinterpret_cast<cudaStream_t>(uintptr_t(0x100)),
               s2 = reinterpret_cast<cudaStream_t>(uintptr_t(0x200));
  REQUIRE(cublasSetStream(blas.h, s1) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(cublasSetWorkspace(blas.h, ws.p, ws.bytes) == CUBLAS_STATUS_SUCCESS);
  stub::take_launches();
  stub::take_accesses();
  SECTION("DISALLOW_REDUCED_PRECISION_REDUCTION: partials reduced in fp32, through the user's workspace") {
    REQUIRE(cublasSetMathMode(blas.h, CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION) ==
            CUBLAS_STATUS_SUCCESS);
    const std::string e = run_gemm(blas.h, g, &st);
    INFO(e);
    CHECK(e.empty());
    const auto launches = stub::take_launches();
    REQUIRE(launches.size() == 1);
    CHECK(launches[0].stream == s1);
    CHECK(launches[0].name == "cublasGemmStridedBatchedEx_64");
    bool used = false;
    for (const auto& a : stub::take_accesses()) used |= a.write && a.lo == reinterpret_cast<uintptr_t>(ws.p);
    CHECK(used);
  }
  SECTION("the default math mode reduces a bf16 output's partials in bf16 (more than one rounding)") {
    int64_t bad = 0;
    run_gemm(blas.h, g, &st, &bad);
    CHECK(st == CUBLAS_STATUS_SUCCESS);
    CHECK(bad > 0);
  }
  SECTION("cublasSetStream resets the workspace to cuBLAS's own pool") {
    REQUIRE(cublasSetStream(blas.h, s2) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasSetMathMode(blas.h, CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION) ==
            CUBLAS_STATUS_SUCCESS);
    CHECK(run_gemm(blas.h, g, &st).empty());
    const auto launches = stub::take_launches();
    REQUIRE(launches.size() == 1);
    CHECK(launches[0].stream == s2);
    for (const auto& a : stub::take_accesses())
      CHECK(!(a.lo >= reinterpret_cast<uintptr_t>(ws.p) &&
              a.lo < reinterpret_cast<uintptr_t>(ws.c() + ws.bytes)));
  }
  SECTION("a workspace too small for split-K: no split, one rounding") {
    REQUIRE(cublasSetWorkspace(blas.h, ws.p, 256) == CUBLAS_STATUS_SUCCESS);
    g.slack = 1e-12;
    const std::string e = run_gemm(blas.h, g, &st);
    INFO(e);
    CHECK(e.empty());
  }
  SECTION("CUBLAS_TF32_TENSOR_OP_MATH lets COMPUTE_32F round fp32 inputs to TF32") {
    REQUIRE(cublasSetMathMode(blas.h, CUBLAS_TF32_TENSOR_OP_MATH) == CUBLAS_STATUS_SUCCESS);
    GemmCase f;
    f.m = 9, f.n = 7, f.k = 65, f.seed = 3;
    int64_t bad = 0;
    run_gemm(blas.h, f, &st, &bad);
    CHECK(bad > 0);                            // against the fp32 reference
    f.compute = CUBLAS_COMPUTE_32F_FAST_TF32;  // the reference then rounds to TF32 too
    CHECK(run_gemm(blas.h, f, &st).empty());
  }
}

TEST_CASE("k == 0 gives beta C, and beta == 0 writes zeros over NaN") {
  Blas blas;
  Buf C(6 * 4);
  for (int i = 0; i < 6; ++i) set(CUDA_R_32F, C.p, i, i == 2 ? std::nan("") : i);
  const float two = 2, zero = 0;
  REQUIRE(cublasGemmStridedBatchedEx(blas.h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 2, 0, &two, nullptr, CUDA_R_32F, 3,
                                     0, nullptr, CUDA_R_32F, 1, 0, &two, C.p, CUDA_R_32F, 3, 0, 1,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
  CHECK(get(CUDA_R_32F, C.p, 5) == 10);
  CHECK(std::isnan(get(CUDA_R_32F, C.p, 2)));
  REQUIRE(cublasGemmStridedBatchedEx(blas.h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 2, 0, &two, nullptr, CUDA_R_32F, 3,
                                     0, nullptr, CUDA_R_32F, 1, 0, &zero, C.p, CUDA_R_32F, 3, 0, 1,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
  for (int i = 0; i < 6; ++i) CHECK(get(CUDA_R_32F, C.p, i) == 0);
}

TEST_CASE("each documented cuBLAS refusal returns its status") {
  barbell::emu::set_blas_quiet(true);
  Blas blas;
  Buf A(64 * 4), B(64 * 4), C(64 * 4);
  const float one = 1;
  auto gemm = [&](cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n,
                  int64_t k, int64_t lda, int64_t ldb, int64_t ldc, int64_t batch, cudaDataType_t at,
                  cudaDataType_t ct, cublasComputeType_t comp, const void* alpha,
                  int algo = CUBLAS_GEMM_DEFAULT) {
    return cublasGemmStridedBatchedEx_64(h, ta, tb, m, n, k, alpha, A.p, at, lda, 0, B.p, at, ldb, 0, alpha,
                                         C.p, ct, ldc, 0, batch, comp, static_cast<cublasGemmAlgo_t>(algo));
  };
  const auto N = CUBLAS_OP_N, T = CUBLAS_OP_T;
  const auto F = CUDA_R_32F;
  const auto c32 = CUBLAS_COMPUTE_32F;
  REQUIRE(gemm(blas.h, N, N, 4, 3, 2, 4, 2, 4, 1, F, F, c32, &one) == CUBLAS_STATUS_SUCCESS);
  // [cublasGemmStridedBatchedEx(), Return Value]
  CHECK(gemm(nullptr, N, N, 4, 3, 2, 4, 2, 4, 1, F, F, c32, &one) == CUBLAS_STATUS_NOT_INITIALIZED);
  CHECK(gemm(blas.h, N, N, -1, 3, 2, 4, 2, 4, 1, F, F, c32, &one) == CUBLAS_STATUS_INVALID_VALUE);
  CHECK(gemm(blas.h, N, N, 4, 3, -2, 4, 2, 4, 1, F, F, c32, &one) == CUBLAS_STATUS_INVALID_VALUE);
  CHECK(gemm(blas.h, N, N, 4, 3, 2, 4, 2, 4, -1, F, F, c32, &one) == CUBLAS_STATUS_INVALID_VALUE);
  CHECK(gemm(blas.h, CUBLAS_OP_CONJG, N, 4, 3, 2, 4, 2, 4, 1, F, F, c32, &one) ==
        CUBLAS_STATUS_INVALID_VALUE);
  CHECK(gemm(blas.h, N, N, 4, 3, 2, 3, 2, 4, 1, F, F, c32, &one) == CUBLAS_STATUS_INVALID_VALUE);  // lda < m
  CHECK(gemm(blas.h, T, N, 4, 3, 2, 1, 2, 4, 1, F, F, c32, &one) == CUBLAS_STATUS_INVALID_VALUE);  // lda < k
  CHECK(gemm(blas.h, T, N, 4, 3, 2, 2, 2, 4, 1, F, F, c32, &one) == CUBLAS_STATUS_SUCCESS);
  CHECK(gemm(blas.h, N, N, 4, 3, 2, 4, 1, 4, 1, F, F, c32, &one) == CUBLAS_STATUS_INVALID_VALUE);  // ldb < k
  CHECK(gemm(blas.h, N, T, 4, 3, 2, 4, 2, 4, 1, F, F, c32, &one) == CUBLAS_STATUS_INVALID_VALUE);  // ldb < n
  CHECK(gemm(blas.h, N, N, 4, 3, 2, 4, 2, 3, 1, F, F, c32, &one) == CUBLAS_STATUS_INVALID_VALUE);  // ldc < m
  CHECK(gemm(blas.h, N, N, 0, 3, 2, 0, 2, 0, 1, F, F, c32, &one) ==
        CUBLAS_STATUS_INVALID_VALUE);  // lda < max(1, m)
  CHECK(gemm(blas.h, N, N, 0, 3, 2, 1, 2, 1, 1, F, F, c32, &one) == CUBLAS_STATUS_SUCCESS);  // quick return
  CHECK(gemm(blas.h, N, N, 4, 3, 2, 4, 2, 4, 1, F, F, c32, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
  CHECK(gemm(blas.h, N, N, 4, 3, 2, 4, 2, 4, 1, F, F, static_cast<cublasComputeType_t>(66), &one) ==
        CUBLAS_STATUS_INVALID_VALUE);
  CHECK(gemm(blas.h, N, N, 4, 3, 2, 4, 2, 4, 1, F, F, c32, &one, 500) == CUBLAS_STATUS_INVALID_VALUE);
  // the combination of Atype, Btype and Ctype, or of them and the compute type, is not supported
  CHECK(gemm(blas.h, N, N, 4, 3, 2, 4, 2, 4, 1, F, CUDA_R_64F, c32, &one) == CUBLAS_STATUS_NOT_SUPPORTED);
  CHECK(gemm(blas.h, N, N, 4, 3, 2, 4, 2, 4, 1, F, CUDA_R_16BF, c32, &one) == CUBLAS_STATUS_NOT_SUPPORTED);
  CHECK(gemm(blas.h, N, N, 4, 3, 2, 4, 2, 4, 1, F, F, CUBLAS_COMPUTE_64F, &one) ==
        CUBLAS_STATUS_NOT_SUPPORTED);
  CHECK(gemm(blas.h, N, N, 4, 3, 2, 4, 2, 4, 1, CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F_FAST_TF32,
             &one) == CUBLAS_STATUS_NOT_SUPPORTED);
  CHECK(cublasGemmStridedBatchedEx_64(blas.h, N, N, 4, 3, 2, &one, A.p, CUDA_R_16F, 4, 0, B.p, CUDA_R_16BF, 2,
                                      0, &one, C.p, CUDA_R_32F, 4, 0, 1, c32,
                                      CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_SUPPORTED);
  // the output over an input
  CHECK(cublasGemmStridedBatchedEx_64(blas.h, N, N, 4, 3, 2, &one, A.p, F, 4, 0, B.p, F, 2, 0, &one, A.p, F,
                                      4, 0, 1, c32, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE);
  // a stream that refuses the work
  stub::fail_next_enqueue(cudaErrorInvalidResourceHandle);
  CHECK(gemm(blas.h, N, N, 4, 3, 2, 4, 2, 4, 1, F, F, c32, &one) == CUBLAS_STATUS_EXECUTION_FAILED);

  // [cublasSetWorkspace(): "aligned to at least 256 bytes, otherwise CUBLAS_STATUS_INVALID_VALUE"]
  CHECK(cublasSetWorkspace(blas.h, A.c() + 16, 64) == CUBLAS_STATUS_INVALID_VALUE);
  CHECK(cublasSetWorkspace(blas.h, A.p, 64) == CUBLAS_STATUS_SUCCESS);
  // [cublasSetMathMode(): INVALID_VALUE "mode has invalid value"]
  CHECK(cublasSetMathMode(blas.h, static_cast<cublasMath_t>(7)) == CUBLAS_STATUS_INVALID_VALUE);
  CHECK(cublasSetMathMode(blas.h,
                          static_cast<cublasMath_t>(CUBLAS_TF32_TENSOR_OP_MATH |
                                                    CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)) ==
        CUBLAS_STATUS_SUCCESS);
  // [cublasCreate(): INVALID_VALUE for a NULL handle pointer]; a destroyed handle is not initialized
  CHECK(cublasCreate(nullptr) == CUBLAS_STATUS_INVALID_VALUE);
  cublasHandle_t h2 = nullptr;
  REQUIRE(cublasCreate(&h2) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(cublasDestroy(h2) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasDestroy(h2) == CUBLAS_STATUS_NOT_INITIALIZED);
  CHECK(cublasSetStream(h2, nullptr) == CUBLAS_STATUS_NOT_INITIALIZED);
  CHECK(cublasSetWorkspace(h2, nullptr, 0) == CUBLAS_STATUS_NOT_INITIALIZED);
  CHECK(cublasSetMathMode(h2, CUBLAS_DEFAULT_MATH) == CUBLAS_STATUS_NOT_INITIALIZED);
  CHECK(gemm(h2, N, N, 4, 3, 2, 4, 2, 4, 1, F, F, c32, &one) == CUBLAS_STATUS_NOT_INITIALIZED);
  CHECK(std::string(cublasGetStatusName(CUBLAS_STATUS_EXECUTION_FAILED)) == "CUBLAS_STATUS_EXECUTION_FAILED");
  CHECK(std::string(cublasGetStatusString(CUBLAS_STATUS_NOT_INITIALIZED)) ==
        "the library was not initialized");
  CHECK(barbell::emu::blas_last_error().find(
            "cublasGemmStridedBatchedEx_64: CUBLAS_STATUS_NOT_INITIALIZED") != std::string::npos);
  CHECK(stub::take_fault().empty());
  barbell::emu::set_blas_quiet(false);
}

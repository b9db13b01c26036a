// kernels/matmul.cu's use of cuBLASLt and cuBLAS, replayed against the emulated libraries: the
// row-major -> column-major mapping, the descriptors, preferences and heuristic query create_plan
// makes, run_lt's and run_blas's calls, linear's epilogue choice. The functions below mirror
// matmul.cu's (describe_input, describe_output, alignment, create_plan, run_lt, run_blas); the
// emulated build (the integrator's) runs the real file, this test pins the sequence down without
// libbarbell. Results are checked against a row-major reference that shares none of the mapping.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "blas_emu.hpp"
#include "emu_stub.hpp"
#include "gemm_ref.hpp"

using namespace emutest;
namespace stub = barbell::emu::stub;

namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

// ---- as kernels/matmul.cu ------------------------------------------------------------------

struct LtInput {
  cublasOperation_t op;
  int64_t rows, cols, ld;
};

bool describe_input(int64_t r, int64_t c, int64_t s0, int64_t s1, LtInput* out) {
  const int64_t r1 = std::max<int64_t>(r, 1), c1 = std::max<int64_t>(c, 1);
  if (s1 == 1 && (r == 1 || s0 >= c1)) {
    *out = {CUBLAS_OP_N, c, r, r == 1 ? c1 : s0};
    return true;
  }
  if (s0 == 1 && (c == 1 || s1 >= r1)) {
    *out = {CUBLAS_OP_T, r, c, c == 1 ? r1 : s1};
    return true;
  }
  return false;
}

bool describe_output(int64_t M, int64_t N, int64_t s0, int64_t s1, int64_t* ld) {
  const int64_t n1 = std::max<int64_t>(N, 1);
  if (!(s1 == 1 || N == 1) || !(M == 1 || s0 >= n1)) return false;
  *ld = M == 1 ? n1 : s0;
  return true;
}

struct TypeInfo {
  cudaDataType_t data, scale;
  cublasComputeType_t compute;
};

TypeInfo type_info(cudaDataType_t t, bool tf32) {
  switch (t) {
    case CUDA_R_16BF: return {CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F};
    case CUDA_R_16F: return {CUDA_R_16F, CUDA_R_32F, CUBLAS_COMPUTE_32F};
    case CUDA_R_64F: return {CUDA_R_64F, CUDA_R_64F, CUBLAS_COMPUTE_64F};
    default: return {CUDA_R_32F, CUDA_R_32F, tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F};
  }
}

struct Gemm {
  cudaDataType_t dtype = CUDA_R_32F;
  bool tf32 = false;
  cudaStream_t stream = nullptr;
  int64_t M = 0, N = 0, K = 0;
  const void* a = nullptr;
  int64_t as0 = 0, as1 = 0;
  const void* b = nullptr;
  int64_t bs0 = 0, bs1 = 0;
  void* c = nullptr;
  int64_t cs0 = 0, cs1 = 0;
  int64_t batch = 1, sa = 0, sb = 0, sc = 0;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  void* aux = nullptr;
  int64_t aux_ld = 0;
};

struct LtProblem {
  LtInput A, B;
  int64_t ldc = 0, m = 0, n = 0, k = 0;
};

LtProblem lt_problem(const Gemm& g) {
  LtProblem p;
  p.m = g.N;
  p.n = g.M;
  p.k = g.K;
  const bool ok = describe_input(g.K, g.N, g.bs0, g.bs1, &p.A) &&
                  describe_input(g.M, g.K, g.as0, g.as1, &p.B) &&
                  describe_output(g.M, g.N, g.cs0, g.cs1, &p.ldc);
  REQUIRE(ok);
  return p;
}

uint32_t alignment(const void* p, int64_t batch, int64_t stride, size_t es) {
  uint64_t v = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)) | 256u;
  if (batch > 1) v |= static_cast<uint64_t>(stride) * es;
  return static_cast<uint32_t>(v & (~v + 1));
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

#define LT_OK(call) REQUIRE((call) == CUBLAS_STATUS_SUCCESS)

template <typename V>
void set_desc(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const V& v) {
  LT_OK(cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof(v)));
}
template <typename V>
void set_pref(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t attr, const V& v) {
  LT_OK(cublasLtMatmulPreferenceSetAttribute(p, attr, &v, sizeof(v)));
}

void make_layout(cublasLtMatrixLayout_t* l, cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld,
                 int64_t batch, int64_t stride) {
  LT_OK(cublasLtMatrixLayoutCreate(l, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    const int64_t offset = stride;
    LT_OK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
    LT_OK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &offset,
                                           sizeof(offset)));
  }
}

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool usable = false;
  ~Plan() {
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatmulDescDestroy(op);
  }
};

struct Handles {
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t blas = nullptr;
  Buf ws{kWorkspaceBytes};
  Handles() {
    LT_OK(cublasLtCreate(&lt));
    LT_OK(cublasCreate(&blas));
    LT_OK(cublasSetMathMode(blas, CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
  }
  ~Handles() {
    cublasDestroy(blas);
    cublasLtDestroy(lt);
  }
};

Handles& handles() {
  static Handles h;
  return h;
}

void create_plan(const Gemm& g, const LtProblem& p, const TypeInfo& ti, Plan* plan) {
  const size_t es = esize(g.dtype);
  LT_OK(cublasLtMatmulDescCreate(&plan->op, ti.compute, ti.scale));
  set_desc(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, static_cast<int32_t>(p.A.op));
  set_desc(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, static_cast<int32_t>(p.B.op));
  if (g.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    set_desc(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(g.epilogue));
    if (g.bias) set_desc(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
    if (g.aux) {
      set_desc(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
      set_desc(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, g.aux_ld);
    }
  }
  make_layout(&plan->la, ti.data, p.A.rows, p.A.cols, p.A.ld, g.batch, g.sb);
  make_layout(&plan->lb, ti.data, p.B.rows, p.B.cols, p.B.ld, g.batch, g.sa);
  make_layout(&plan->lc, ti.data, p.m, p.n, p.ldc, g.batch, g.sc);
  cublasLtMatmulPreference_t pref = nullptr;
  LT_OK(cublasLtMatmulPreferenceCreate(&pref));
  set_pref(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(kWorkspaceBytes));
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment(g.b, g.batch, g.sb, es));
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment(g.a, g.batch, g.sa, es));
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment(g.c, g.batch, g.sc, es));
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment(g.c, g.batch, g.sc, es));
  if (es == 2)
    set_pref(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
             static_cast<uint32_t>(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE));
  cublasLtMatmulHeuristicResult_t result{};
  int count = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handles().lt, plan->op, plan->la, plan->lb,
                                                           plan->lc, plan->lc, pref, 1, &result, &count);
  if (st == CUBLAS_STATUS_SUCCESS && count > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
    plan->algo = result.algo;
    plan->usable = true;
    CHECK(result.workspaceSize <= kWorkspaceBytes);
  }
  cublasLtMatmulPreferenceDestroy(pref);
}

// run_lt: the call with a plan made for g (or for another call with the same key, as the cache
// does: the pointer attributes are set again first).
cublasStatus_t run_lt(const Gemm& g, const LtProblem& p, const TypeInfo& ti, Plan& plan) {
  const float one_f = 1.0f, zero_f = 0.0f;
  const double one_d = 1.0, zero_d = 0.0;
  const bool dbl = ti.scale == CUDA_R_64F;
  const void* alpha = dbl ? static_cast<const void*>(&one_d) : static_cast<const void*>(&one_f);
  const void* beta = dbl ? static_cast<const void*>(&zero_d) : static_cast<const void*>(&zero_f);
  if (g.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    if (g.bias) set_desc(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
    if (g.aux) set_desc(plan.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
  }
  (void)p;
  return cublasLtMatmul(handles().lt, plan.op, alpha, g.b, plan.la, g.a, plan.lb, beta, g.c, plan.lc, g.c,
                        plan.lc, &plan.algo, handles().ws.p, kWorkspaceBytes, g.stream);
}

cublasStatus_t run_blas(const Gemm& g, const LtProblem& p, const TypeInfo& ti) {
  cublasHandle_t h = handles().blas;
  LT_OK(cublasSetStream(h, g.stream));
  LT_OK(cublasSetWorkspace(h, handles().ws.p, kWorkspaceBytes));
  const float one_f = 1.0f, zero_f = 0.0f;
  const double one_d = 1.0, zero_d = 0.0;
  const bool dbl = ti.scale == CUDA_R_64F;
  return cublasGemmStridedBatchedEx_64(
      h, p.A.op, p.B.op, p.m, p.n, p.k,
      dbl ? static_cast<const void*>(&one_d) : static_cast<const void*>(&one_f), g.b, ti.data, p.A.ld, g.sb,
      g.a, ti.data, p.B.ld, g.sa, dbl ? static_cast<const void*>(&zero_d) : static_cast<const void*>(&zero_f),
      g.c, ti.data, p.ldc, g.sc, g.batch, ti.compute, CUBLAS_GEMM_DEFAULT);
}

// ---- the reference, in row-major terms ---------------------------------------------------------

// want[(b * M + i) * N + j] for C[b] = act(A[b] @ B[b] + bias), with pre-activation values too.
RefResult row_major_reference(const Gemm& g, bool gelu) {
  RefResult r;
  const auto cells = static_cast<size_t>(g.batch * g.M * g.N);
  r.t.resize(cells);
  r.out.resize(cells);
  r.mag.resize(cells);
  for (int64_t b = 0; b < g.batch; ++b)
    for (int64_t i = 0; i < g.M; ++i)
      for (int64_t j = 0; j < g.N; ++j) {
        long double s = 0, mag = 0;
        for (int64_t q = 0; q < g.K; ++q) {
          double av = get(g.dtype, g.a, b * g.sa + i * g.as0 + q * g.as1);
          double bv = get(g.dtype, g.b, b * g.sb + q * g.bs0 + j * g.bs1);
          if (g.tf32) av = round_sig(av, 11), bv = round_sig(bv, 11);
          s += static_cast<long double>(av) * bv;
          mag += std::fabs(static_cast<long double>(av) * bv);
        }
        if (g.bias) {
          const double bb = get(g.dtype, g.bias, j);
          s += bb;
          mag += std::fabs(bb);
        }
        const auto at = static_cast<size_t>((b * g.M + i) * g.N + j);
        r.t[at] = s;
        r.out[at] = gelu ? gelu_ref(s) : s;
        r.mag[at] = mag;
      }
  return r;
}

// Runs g as gemm() does (cuBLASLt, else cuBLAS) and checks c (and aux) against the reference.
// Returns which library ran it.
std::string run_and_check(const Gemm& g, bool force_blas = false, double slack = 1e-12) {
  const bool gelu = g.epilogue == CUBLASLT_EPILOGUE_GELU || g.epilogue == CUBLASLT_EPILOGUE_GELU_BIAS ||
                    g.epilogue == CUBLASLT_EPILOGUE_GELU_AUX || g.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  const RefResult want = row_major_reference(g, gelu);
  const TypeInfo ti = type_info(g.dtype, g.tf32);
  const LtProblem p = lt_problem(g);
  std::string ran;
  Plan plan;
  if (!force_blas) create_plan(g, p, ti, &plan);
  if (plan.usable) {
    const cublasStatus_t st = run_lt(g, p, ti, plan);
    INFO(barbell::emu::blas_last_error());
    REQUIRE(st == CUBLAS_STATUS_SUCCESS);
    ran = "cuBLASLt";
  } else {
    REQUIRE(g.epilogue == CUBLASLT_EPILOGUE_DEFAULT);
    const cublasStatus_t st = run_blas(g, p, ti);
    INFO(barbell::emu::blas_last_error());
    REQUIRE(st == CUBLAS_STATUS_SUCCESS);
    ran = "cuBLAS";
  }
  const std::string fault = stub::take_fault();
  INFO(fault);
  REQUIRE(fault.empty());
  // Row-major C [M, N] with row stride cs0 is column-major [N, M] with ld cs0, which is what
  // check() reads: element (j, i) of batch b at b * sc + i * cs0 + j.
  const std::string e = check(want.out, want.mag, g.dtype, g.c, g.N, g.M, g.batch, g.cs0, g.sc, slack);
  INFO(ran << ": " << e);
  REQUIRE(e.empty());
  if (g.aux) {
    const std::string ea = check(want.t, want.mag, g.dtype, g.aux, g.N, g.M, g.batch, g.aux_ld, 0, slack);
    INFO("pre_gelu: " << ea);
    REQUIRE(ea.empty());
  }
  stub::take_accesses();
  return ran;
}

const cudaDataType_t kTypes[] = {CUDA_R_16BF, CUDA_R_16F, CUDA_R_32F, CUDA_R_64F};

}  // namespace

TEST_CASE("matmul: contiguous and transposed views, every dtype, through cuBLASLt and through cuBLAS") {
  std::mt19937_64 rng(21);
  const int64_t sizes[] = {1, 3, 17, 65};
  int lt_runs = 0;
  for (cudaDataType_t t : kTypes)
    for (int tf32 = 0; tf32 < (t == CUDA_R_32F ? 2 : 1); ++tf32)
      for (int64_t M : sizes)
        for (int64_t N : sizes)
          for (int64_t K : sizes)
            for (int views = 0; views < 4; ++views) {
              const size_t es = esize(t);
              // a is [M, K] (or x^T of a contiguous x [K, M]); b is [K, N] (or w^T of w [N, K]).
              Buf A(static_cast<size_t>(M * K) * es), B(static_cast<size_t>(K * N) * es),
                  C(static_cast<size_t>(M * N) * es);
              fill(rng, t, A.p, M * K);
              fill(rng, t, B.p, K * N);
              Gemm g;
              g.dtype = t;
              g.tf32 = tf32;
              g.M = M, g.N = N, g.K = K;
              g.a = A.p, g.b = B.p, g.c = C.p;
              if (views & 1)
                g.as0 = 1, g.as1 = M;
              else
                g.as0 = K, g.as1 = 1;
              if (views & 2)
                g.bs0 = 1, g.bs1 = K;
              else
                g.bs0 = N, g.bs1 = 1;
              g.cs0 = N, g.cs1 = 1;
              INFO(tname(t) << (tf32 ? " tf32" : "") << " [" << M << ", " << K << "] @ [" << K << ", " << N
                            << "] views " << views);
              lt_runs += run_and_check(g) == "cuBLASLt";
              run_and_check(g, /*force_blas=*/true);
            }
  CHECK(lt_runs == 5 * 64 * 4);  // cuBLASLt took every one of them
}

TEST_CASE("batched matmul: a broadcast operand (stride 0), padded rows, attention's strided qkv views") {
  std::mt19937_64 rng(22);
  for (cudaDataType_t t : kTypes) {
    const size_t es = esize(t);
    INFO(tname(t));
    {  // [B, M, K] @ broadcast [K, N] -> c [B, M, N] with rows padded to N + 3
      const int64_t Bn = 3, M = 17, K = 9, N = 5, ldc = N + 3;
      Buf A(static_cast<size_t>(Bn * M * K) * es), Bm(static_cast<size_t>(K * N) * es),
          C(static_cast<size_t>(Bn * M * ldc) * es);
      fill(rng, t, A.p, Bn * M * K);
      fill(rng, t, Bm.p, K * N);
      Gemm g;
      g.dtype = t, g.M = M, g.N = N, g.K = K;
      g.a = A.p, g.as0 = K, g.as1 = 1;
      g.b = Bm.p, g.bs0 = N, g.bs1 = 1;
      g.c = C.p, g.cs0 = ldc, g.cs1 = 1;
      g.batch = Bn, g.sa = M * K, g.sb = 0, g.sc = M * ldc;
      CHECK(run_and_check(g) == "cuBLASLt");
      run_and_check(g, true);
    }
    {  // views that start one element into their buffers (x[:, 1:] and the like), with leading
       // dimensions that are multiples of 16 bytes: only the pointers are under-aligned
      const int64_t M = 9, K = 24, N = 8, ld = 40;
      Buf A(static_cast<size_t>(M * ld) * es), Bm(static_cast<size_t>(K * ld) * es),
          C(static_cast<size_t>(M * ld) * es);
      fill(rng, t, A.p, M * ld);
      fill(rng, t, Bm.p, K * ld);
      Gemm g;
      g.dtype = t, g.M = M, g.N = N, g.K = K;
      g.a = A.c() + es, g.as0 = ld, g.as1 = 1;
      g.b = Bm.c() + es, g.bs0 = ld, g.bs1 = 1;
      g.c = C.c() + es, g.cs0 = ld, g.cs1 = 1;
      CHECK(run_and_check(g) == "cuBLASLt");
      run_and_check(g, true);
      // only one operand under-aligned: the others alone would allow the vectorised algorithm
      g.b = Bm.p, g.c = C.p;
      CHECK(run_and_check(g) == "cuBLASLt");
      g.a = A.p, g.b = Bm.c() + es;
      CHECK(run_and_check(g) == "cuBLASLt");
    }
    {  // one batch row of attention: q [H, T, D] @ k^T [H, D, T] from qkv [T, 3, H, D] -> s [H, T, T]
      const int64_t T = 13, H = 3, D = 16;
      Buf qkv(static_cast<size_t>(T * 3 * H * D) * es), S(static_cast<size_t>(H * T * T) * es);
      fill(rng, t, qkv.p, T * 3 * H * D);
      Gemm g;
      g.dtype = t, g.M = T, g.N = T, g.K = D;
      g.a = qkv.p, g.as0 = 3 * H * D, g.as1 = 1;  // q: t -> 3HD, d -> 1
      g.b = qkv.c() + H * D * static_cast<int64_t>(es), g.bs0 = 1,
      g.bs1 = 3 * H * D;  // k^T: d -> 1, t -> 3HD
      g.c = S.p, g.cs0 = T, g.cs1 = 1;
      g.batch = H, g.sa = D, g.sb = D, g.sc = T * T;
      run_and_check(g);
      run_and_check(g, true);
    }
  }
}

TEST_CASE("linear: the fused bias / GELU / pre_gelu epilogues as linear() chooses them") {
  std::mt19937_64 rng(23);
  for (cudaDataType_t t : kTypes) {
    const size_t es = esize(t);
    // out = 64: contiguous pre_gelu is fusable; out = 17 with y and pre_gelu rows of 24 (views of
    // wider buffers) too; rows 1 and 33.
    struct Shape {
      int64_t rows, in, out, ld;
    };
    for (const Shape& s : {Shape{33, 20, 64, 64}, Shape{1, 7, 64, 64}, Shape{33, 9, 17, 24}})
      for (int mode = 0; mode < 3;
           ++mode) {  // BIAS, GELU_BIAS, GELU_AUX_BIAS (linear's Epilogue::BiasGelu + pre_gelu)
        Buf X(static_cast<size_t>(s.rows * s.in) * es), W(static_cast<size_t>(s.out * s.in) * es),
            bias(static_cast<size_t>(s.out) * es), Y(static_cast<size_t>(s.rows * s.ld) * es),
            P(static_cast<size_t>(s.rows * s.ld) * es);
        fill(rng, t, X.p, s.rows * s.in);
        fill(rng, t, W.p, s.out * s.in);
        fill(rng, t, bias.p, s.out);
        // linear_gemm: y [rows, out] = x [rows, in] @ w^T
        Gemm g;
        g.dtype = t, g.M = s.rows, g.N = s.out, g.K = s.in;
        g.a = X.p, g.as0 = s.in, g.as1 = 1;
        g.b = W.p, g.bs0 = 1, g.bs1 = s.in;
        g.c = Y.p, g.cs0 = s.ld, g.cs1 = 1;
        void* aux = mode == 2 ? P.p : nullptr;
        const int64_t ps0 = s.ld;
        const bool fusable = aligned16(bias.p) && (!aux || (aligned16(aux) && ps0 % 8 == 0 && ps0 >= s.out));
        REQUIRE(fusable);
        g.epilogue = mode == 0 ? CUBLASLT_EPILOGUE_BIAS
                               : (aux ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_BIAS);
        g.bias = bias.p;
        g.aux = aux;
        g.aux_ld = aux ? ps0 : 0;
        INFO(tname(t) << " rows " << s.rows << " in " << s.in << " out " << s.out << " mode " << mode);
        CHECK(run_and_check(g) == "cuBLASLt");
      }
  }
}

TEST_CASE("a cached plan serves a later call with other pointers of the same alignment") {
  std::mt19937_64 rng(24);
  const int64_t rows = 8, in = 16, out = 32;
  const cudaDataType_t t = CUDA_R_16BF;
  Buf X1(rows * in * 2), X2(rows * in * 2), W(out * in * 2), b1(out * 2), b2(out * 2), Y1(rows * out * 2),
      Y2(rows * out * 2), P1(rows * out * 2), P2(rows * out * 2);
  for (Buf* b : {&X1, &X2, &W, &b1, &b2}) fill(rng, t, b->p, static_cast<int64_t>(b->bytes / 2));
  auto gemm_for = [&](Buf& x, Buf& b, Buf& y, Buf& p) {
    Gemm g;
    g.dtype = t, g.M = rows, g.N = out, g.K = in;
    g.a = x.p, g.as0 = in, g.as1 = 1;
    g.b = W.p, g.bs0 = 1, g.bs1 = in;
    g.c = y.p, g.cs0 = out, g.cs1 = 1;
    g.epilogue = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    g.bias = b.p, g.aux = p.p, g.aux_ld = out;
    return g;
  };
  const Gemm g1 = gemm_for(X1, b1, Y1, P1), g2 = gemm_for(X2, b2, Y2, P2);
  const TypeInfo ti = type_info(t, false);
  const LtProblem p = lt_problem(g1);
  Plan plan;
  create_plan(g1, p, ti, &plan);
  REQUIRE(plan.usable);
  REQUIRE(run_lt(g1, p, ti, plan) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(run_lt(g2, p, ti, plan) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(stub::take_fault().empty());
  const RefResult want = row_major_reference(g2, true);
  CHECK(check(want.out, want.mag, t, Y2.p, out, rows, 1, out, 0, 1e-12).empty());
  CHECK(check(want.t, want.mag, t, P2.p, out, rows, 1, out, 0, 1e-12).empty());
}

TEST_CASE(
    "a long bf16 reduction through barbell's preference keeps one bf16 rounding (no bf16 split-K partials)") {
  std::mt19937_64 rng(25);
  for (cudaDataType_t t : {CUDA_R_16BF, CUDA_R_16F}) {
    const int64_t M = 16, N = 16, K = 4096;
    Buf A(M * K * 2), B(K * N * 2), C(M * N * 2);
    fill(rng, t, A.p, M * K);
    fill(rng, t, B.p, K * N);
    Gemm g;
    g.dtype = t, g.M = M, g.N = N, g.K = K;
    g.a = A.p, g.as0 = K, g.as1 = 1;
    g.b = B.p, g.bs0 = N, g.bs1 = 1;
    g.c = C.p, g.cs0 = N, g.cs1 = 1;
    CHECK(run_and_check(g, false, 1e-6) == "cuBLASLt");  // fp32 partials, within 1e-6 of the terms
    run_and_check(g, true, 1e-6);                        // cuBLAS with DISALLOW_REDUCED_PRECISION_REDUCTION
  }
}

// The emulated cuBLASLt (emu/cublaslt.cpp) against a naive reference: every shape, transpose,
// leading dimension, batch layout, dtype and epilogue barbell uses, the heuristic's handling of
// alignment, workspace and reduction schemes, and every documented refusal with its status.
#include <cublasLt.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "blas_emu.hpp"
#include "emu_stub.hpp"
#include "gemm_ref.hpp"

using namespace emutest;
namespace stub = barbell::emu::stub;

namespace {

constexpr size_t kWs = size_t(32) << 20;

uint32_t align_of(const void* p, int64_t batch, int64_t stride, size_t es) {
  uint64_t v = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)) | 256u;
  if (batch > 1) v |= static_cast<uint64_t>(stride) * es;
  return static_cast<uint32_t>(v & (~v + 1));
}

struct Lt {
  cublasLtHandle_t h = nullptr;
  Lt() { REQUIRE(cublasLtCreate(&h) == CUBLAS_STATUS_SUCCESS); }
  ~Lt() { cublasLtDestroy(h); }
};

// Descriptors, destroyed on scope exit.
struct Descs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~Descs() {
    cublasLtMatrixLayoutDestroy(a);
    cublasLtMatrixLayoutDestroy(b);
    cublasLtMatrixLayoutDestroy(c);
    if (d != c) cublasLtMatrixLayoutDestroy(d);
    cublasLtMatmulDescDestroy(op);
    cublasLtMatmulPreferenceDestroy(pref);
  }
};

template <typename T>
cublasStatus_t set_desc(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const T& v) {
  return cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof v);
}
template <typename T>
cublasStatus_t set_layout(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t attr, const T& v) {
  return cublasLtMatrixLayoutSetAttribute(l, attr, &v, sizeof v);
}
template <typename T>
cublasStatus_t set_pref(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t attr, const T& v) {
  return cublasLtMatmulPreferenceSetAttribute(p, attr, &v, sizeof v);
}

cublasLtMatrixLayout_t layout(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, int32_t batch,
                              int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  REQUIRE(cublasLtMatrixLayoutCreate(&l, t, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld) ==
          CUBLAS_STATUS_SUCCESS);
  if (batch != 1) {
    REQUIRE(set_layout(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, batch) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(set_layout(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, stride) == CUBLAS_STATUS_SUCCESS);
  }
  return l;
}

bool has_bias(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_GELU_BIAS ||
         e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
}
bool has_gelu(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_GELU || e == CUBLASLT_EPILOGUE_GELU_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX ||
         e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
}
bool has_aux(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_GELU_AUX || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
}

// One emulated cublasLtMatmul of random operands, checked against the reference.
struct Case {
  cudaDataType_t ab = CUDA_R_32F, cd = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  cudaDataType_t scale = CUDA_R_32F;
  int64_t m = 1, n = 1, k = 1, batch = 1;
  bool ta = false, tb = false;
  int64_t pad_a = 0, pad_b = 0, pad_c = 0;  // leading dimension beyond the rows
  bool bcast_a = false, bcast_b = false;    // batch stride 0
  int64_t batch_pad = 0;                    // elements between batch entries
  double alpha = 1, beta = 0;
  bool in_place = true;  // C == D
  cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
  int64_t aux_pad = 0;        // aux ld = round_up(m, 8) + aux_pad (a multiple of 8)
  bool bias_batched = false;  // BIAS_BATCH_STRIDE = m + 1 rather than 0
  uint64_t max_ws = kWs;
  uint32_t mask = CUBLASLT_REDUCTION_SCHEME_MASK;
  double slack = 1e-12;  // relative to the sum of |terms|
  uint64_t seed = 1;

  std::string str() const {
    std::ostringstream os;
    os << tname(ab) << "->" << tname(cd) << " compute " << compute << " m " << m << " n " << n << " k " << k
       << " batch " << batch << (ta ? " T" : " N") << (tb ? "T" : "N") << " pads " << pad_a << "/" << pad_b
       << "/" << pad_c << (bcast_a ? " bcastA" : "") << (bcast_b ? " bcastB" : "") << " alpha " << alpha
       << " beta " << beta << " epilogue " << epi << (in_place ? "" : " out-of-place");
    return os.str();
  }
};

struct Outcome {
  cublasStatus_t heuristic = CUBLAS_STATUS_SUCCESS, matmul = CUBLAS_STATUS_SUCCESS;
  size_t workspace = 0;
  std::string error;  // a wrong element, a touched pad, a fault
  int64_t violations = 0;
};

Outcome run_case(const Case& cs) {
  Outcome out;
  Lt lt;
  std::mt19937_64 rng(cs.seed);
  const size_t ea = esize(cs.ab), ed = esize(cs.cd);
  const int64_t ar = cs.ta ? cs.k : cs.m, ac = cs.ta ? cs.m : cs.k;
  const int64_t br = cs.tb ? cs.n : cs.k, bc = cs.tb ? cs.k : cs.n;
  const int64_t lda = ar + cs.pad_a, ldb = br + cs.pad_b, ldc = cs.m + cs.pad_c;
  const int64_t sa = cs.bcast_a ? 0 : lda * ac + cs.batch_pad, sb = cs.bcast_b ? 0 : ldb * bc + cs.batch_pad;
  const int64_t sc = ldc * cs.n + cs.batch_pad;
  const int64_t na = (cs.bcast_a ? 1 : cs.batch) * (lda * ac + cs.batch_pad),
                nb = (cs.bcast_b ? 1 : cs.batch) * (ldb * bc + cs.batch_pad), nc = cs.batch * sc;
  Buf A(static_cast<size_t>(na) * ea), B(static_cast<size_t>(nb) * ea), C(static_cast<size_t>(nc) * ed);
  Buf Dsep(cs.in_place ? 1 : static_cast<size_t>(nc) * ed);
  void* D = cs.in_place ? C.p : Dsep.p;
  // Only the matrices' elements are random; the padding keeps the stub's fill, so any read of it
  // would show in the result and any write in the check below.
  auto fill_mat = [&](void* p, cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, int64_t stride,
                      int64_t nbat) {
    for (int64_t b = 0; b < nbat; ++b)
      for (int64_t c = 0; c < cols; ++c)
        fill(rng, t, static_cast<char*>(p) + (b * stride + c * ld) * static_cast<int64_t>(esize(t)), rows);
  };
  fill_mat(A.p, cs.ab, ar, ac, lda, sa, cs.bcast_a ? 1 : cs.batch);
  fill_mat(B.p, cs.ab, br, bc, ldb, sb, cs.bcast_b ? 1 : cs.batch);
  if (cs.beta != 0) fill_mat(C.p, cs.cd, cs.m, cs.n, ldc, sc, cs.batch);
  const int64_t bias_stride = cs.bias_batched ? cs.m + 1 : 0;
  Buf bias(static_cast<size_t>((bias_stride * (cs.batch - 1) + cs.m)) * ed);
  fill(rng, cs.cd, bias.p, bias_stride * (cs.batch - 1) + cs.m);
  const int64_t aux_ld = (cs.m + 7) / 8 * 8 + cs.aux_pad, aux_stride = aux_ld * cs.n;
  Buf aux(static_cast<size_t>(aux_stride * cs.batch) * ed);

  RefProblem rp;
  rp.m = cs.m, rp.n = cs.n, rp.k = cs.k, rp.batch = cs.batch, rp.ta = cs.ta, rp.tb = cs.tb;
  rp.a = {A.p, cs.ab, lda, sa};
  rp.b = {B.p, cs.ab, ldb, sb};
  rp.c = {C.p, cs.cd, ldc, sc};
  rp.alpha = cs.alpha, rp.beta = cs.beta;
  rp.bias = has_bias(cs.epi) ? bias.p : nullptr;
  rp.bias_stride = bias_stride;
  rp.gelu = has_gelu(cs.epi);
  rp.tf32 = cs.compute == CUBLAS_COMPUTE_32F_FAST_TF32;
  const RefResult want = reference(rp);

  Descs ds;
  REQUIRE(cublasLtMatmulDescCreate(&ds.op, cs.compute, cs.scale) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_TRANSA,
                   static_cast<int32_t>(cs.ta ? CUBLAS_OP_T : CUBLAS_OP_N)) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_TRANSB,
                   static_cast<int32_t>(cs.tb ? CUBLAS_OP_T : CUBLAS_OP_N)) == CUBLAS_STATUS_SUCCESS);
  if (cs.epi != CUBLASLT_EPILOGUE_DEFAULT) {
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(cs.epi)) ==
            CUBLAS_STATUS_SUCCESS);
    if (has_bias(cs.epi)) {
      REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(bias.p)) ==
              CUBLAS_STATUS_SUCCESS);
      if (cs.bias_batched)
        REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, bias_stride) ==
                CUBLAS_STATUS_SUCCESS);
    }
    if (has_aux(cs.epi)) {
      REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux.p) == CUBLAS_STATUS_SUCCESS);
      REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, aux_ld) == CUBLAS_STATUS_SUCCESS);
      if (cs.batch > 1)
        REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, aux_stride) ==
                CUBLAS_STATUS_SUCCESS);
    }
  }
  const auto nbatch = static_cast<int32_t>(cs.batch);
  ds.a = layout(cs.ab, ar, ac, lda, nbatch, sa);
  ds.b = layout(cs.ab, br, bc, ldb, nbatch, sb);
  ds.c = layout(cs.cd, cs.m, cs.n, ldc, nbatch, sc);
  ds.d = ds.c;
  REQUIRE(cublasLtMatmulPreferenceCreate(&ds.pref) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(set_pref(ds.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, cs.max_ws) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(set_pref(ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_of(A.p, cs.batch, sa, ea)) ==
          CUBLAS_STATUS_SUCCESS);
  REQUIRE(set_pref(ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_of(B.p, cs.batch, sb, ea)) ==
          CUBLAS_STATUS_SUCCESS);
  REQUIRE(set_pref(ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_of(C.p, cs.batch, sc, ed)) ==
          CUBLAS_STATUS_SUCCESS);
  REQUIRE(set_pref(ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_of(D, cs.batch, sc, ed)) ==
          CUBLAS_STATUS_SUCCESS);
  REQUIRE(set_pref(ds.pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, cs.mask) == CUBLAS_STATUS_SUCCESS);

  cublasLtMatmulHeuristicResult_t res{};
  int count = 0;
  out.heuristic =
      cublasLtMatmulAlgoGetHeuristic(lt.h, ds.op, ds.a, ds.b, ds.c, ds.d, ds.pref, 1, &res, &count);
  if (out.heuristic != CUBLAS_STATUS_SUCCESS) return out;
  REQUIRE(count == 1);
  REQUIRE(res.state == CUBLAS_STATUS_SUCCESS);
  out.workspace = res.workspaceSize;
  static Buf ws(kWs);  // one for every case: filling 32 MiB per case would dominate the run time
  const float af = static_cast<float>(cs.alpha), bf = static_cast<float>(cs.beta);
  const double ad = cs.alpha, bd = cs.beta;
  const bool dbl = cs.scale == CUDA_R_64F;
  const void* alpha = dbl ? static_cast<const void*>(&ad) : static_cast<const void*>(&af);
  const void* beta = dbl ? static_cast<const void*>(&bd) : static_cast<const void*>(&bf);
  stub::take_accesses();
  stub::take_launches();
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(uintptr_t(0x5000));
  out.matmul = cublasLtMatmul(lt.h, ds.op, alpha, A.p, ds.a, B.p, ds.b, beta, C.p, ds.c, D, ds.d, &res.algo,
                              ws.p, kWs, stream);
  if (out.matmul != CUBLAS_STATUS_SUCCESS) return out;
  const auto launches = stub::take_launches();
  REQUIRE(launches.size() == 1);
  CHECK(launches[0].stream == stream);
  CHECK(launches[0].name == "cublasLtMatmul");
  out.error = stub::take_fault();
  if (!out.error.empty()) return out;

  out.error = check(want.out, want.mag, cs.cd, D, cs.m, cs.n, cs.batch, ldc, sc, cs.slack, &out.violations);
  if (out.error.empty() && has_aux(cs.epi)) {
    out.error = check(want.t, want.mag, cs.cd, aux.p, cs.m, cs.n, cs.batch, aux_ld, aux_stride, cs.slack);
    if (!out.error.empty()) out.error = "aux: " + out.error;
  }
  // D's padding (rows beyond m, the batch gap) was neither written nor declared.
  const auto accesses = stub::take_accesses();
  for (int64_t b = 0; b < cs.batch && out.error.empty(); ++b)
    for (int64_t j = 0; j < cs.n; ++j) {
      const char* col_end =
          static_cast<const char*>(D) + (b * sc + j * ldc + cs.m) * static_cast<int64_t>(ed);
      const int64_t gap = (j + 1 < cs.n ? ldc - cs.m : ldc - cs.m + cs.batch_pad);
      if (gap > 0 && !untouched(col_end, static_cast<size_t>(gap) * ed)) {
        out.error = "the padding after column " + std::to_string(j) + " of batch " + std::to_string(b) +
                    " was written";
        break;
      }
    }
  const auto dlo = reinterpret_cast<uintptr_t>(D), dhi = dlo + static_cast<uintptr_t>(nc) * ed;
  for (const auto& acc : accesses) {
    if (!acc.write || acc.hi <= dlo || acc.lo >= dhi) continue;
    const auto off = static_cast<int64_t>(acc.lo - dlo) / static_cast<int64_t>(ed);
    if ((off % sc) % ldc != 0 || static_cast<int64_t>(acc.hi - acc.lo) != cs.m * static_cast<int64_t>(ed))
      out.error = "a declared write to D is not exactly one column";
  }
  // beta == 0: C is not read (a read would trip the runtime's uninitialised-memory check).
  if (cs.beta == 0 && !cs.in_place) {
    const auto clo = reinterpret_cast<uintptr_t>(C.p), chi = clo + static_cast<uintptr_t>(nc) * ed;
    for (const auto& acc : accesses)
      if (!acc.write && acc.lo < chi && acc.hi > clo) out.error = "C was read with beta == 0";
  }
  return out;
}

}  // namespace

TEST_CASE("cuBLASLt emulation matches the reference over shapes, transposes, layouts, dtypes and epilogues") {
  const int64_t sizes[] = {1, 3, 17, 65};
  struct Types {
    cudaDataType_t ab, cd;
    cublasComputeType_t compute;
    cudaDataType_t scale;
  };
  const Types types[] = {
      {CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUDA_R_32F},
      {CUDA_R_16F, CUDA_R_16F, CUBLAS_COMPUTE_32F, CUDA_R_32F},
      {CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, CUDA_R_32F},
      {CUDA_R_64F, CUDA_R_64F, CUBLAS_COMPUTE_64F, CUDA_R_64F},
      {CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F, CUDA_R_32F},
      {CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_32F},
  };
  const cublasLtEpilogue_t epis[] = {CUBLASLT_EPILOGUE_DEFAULT,  CUBLASLT_EPILOGUE_BIAS,
                                     CUBLASLT_EPILOGUE_GELU,     CUBLASLT_EPILOGUE_GELU_BIAS,
                                     CUBLASLT_EPILOGUE_GELU_AUX, CUBLASLT_EPILOGUE_GELU_AUX_BIAS};
  int run = 0;
  for (const Types& ty : types)
    for (int64_t m : sizes)
      for (int64_t n : sizes)
        for (int64_t k : sizes)
          for (int tr = 0; tr < 4; ++tr) {
            // Each combination gets one of the layouts, scalings and epilogues in turn, so every
            // one of them meets every dtype and shape class.
            Case cs;
            cs.ab = ty.ab, cs.cd = ty.cd, cs.compute = ty.compute, cs.scale = ty.scale;
            cs.m = m, cs.n = n, cs.k = k, cs.ta = tr & 1, cs.tb = tr & 2;
            const int v = run++;
            cs.epi = epis[v % 6];
            cs.pad_a = (v / 2) % 3 == 0 ? 0 : 3;
            cs.pad_b = (v / 3) % 2 == 0 ? 0 : 5;
            cs.pad_c = (v / 5) % 2 == 0 ? 0 : 2;
            if ((v / 7) % 2) cs.alpha = 0.75, cs.beta = -1.5;
            cs.in_place = (v / 11) % 3 != 0;
            if ((v / 13) % 3 != 0) {
              cs.batch = 3;
              cs.bcast_a = (v / 13) % 3 == 1;
              cs.bcast_b = (v / 17) % 2 == 1 && !cs.bcast_a;
              cs.batch_pad = (v / 19) % 2 ? 8 : 0;
              cs.bias_batched = (v / 23) % 2;
              cs.aux_pad = (v / 29) % 2 ? 8 : 0;
            }
            cs.seed = static_cast<uint64_t>(v) + 7;
            const Outcome o = run_case(cs);
            INFO(cs.str() << ": " << barbell::emu::blas_last_error());
            REQUIRE(o.heuristic == CUBLAS_STATUS_SUCCESS);
            REQUIRE(o.matmul == CUBLAS_STATUS_SUCCESS);
            INFO(o.error);
            REQUIRE(o.error.empty());
          }
  CHECK(run == 6 * 64 * 4);
}

TEST_CASE("FAST_TF32 rounds the inputs to TF32 (and the plain fp32 reference would not match)") {
  Case cs;
  cs.compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  cs.m = 17, cs.n = 9, cs.k = 65;
  const Outcome tf = run_case(cs);
  REQUIRE(tf.error.empty());
  // The same problem checked against an fp32 reference fails: TF32 was really applied.
  Lt lt;
  std::mt19937_64 rng(cs.seed);
  Buf A(17 * 65 * 4), B(65 * 9 * 4), C(17 * 9 * 4);
  fill(rng, CUDA_R_32F, A.p, 17 * 65);
  fill(rng, CUDA_R_32F, B.p, 65 * 9);
  RefProblem rp;
  rp.m = 17, rp.n = 9, rp.k = 65;
  rp.a = {A.p, CUDA_R_32F, 17, 0};
  rp.b = {B.p, CUDA_R_32F, 65, 0};
  rp.c = {C.p, CUDA_R_32F, 17, 0};
  const RefResult exact = reference(rp);
  Descs ds;
  REQUIRE(cublasLtMatmulDescCreate(&ds.op, CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_32F) ==
          CUBLAS_STATUS_SUCCESS);
  ds.a = layout(CUDA_R_32F, 17, 65, 17, 1, 0);
  ds.b = layout(CUDA_R_32F, 65, 9, 65, 1, 0);
  ds.c = ds.d = layout(CUDA_R_32F, 17, 9, 17, 1, 0);
  const float one = 1, zero = 0;
  REQUIRE(cublasLtMatmul(lt.h, ds.op, &one, A.p, ds.a, B.p, ds.b, &zero, C.p, ds.c, C.p, ds.d, nullptr,
                         nullptr, 0, nullptr) == CUBLAS_STATUS_SUCCESS);
  int64_t bad = 0;
  CHECK(!check(exact.out, exact.mag, CUDA_R_32F, C.p, 17, 9, 1, 17, 0, 1e-12, &bad).empty());
  CHECK(bad > 17 * 9 / 2);
}

TEST_CASE("split-K: the workspace the heuristic reports, the schemes the mask allows, their rounding") {
  // 16 x 16 outputs of a 2048-long reduction: one tile, so the emulated heuristic splits K.
  Case cs;
  cs.ab = cs.cd = CUDA_R_16BF;
  cs.m = cs.n = 16, cs.k = 2048;
  cs.seed = 99;
  SECTION("barbell's mask for 16-bit outputs (COMPUTE_TYPE only): fp32 partials, one bf16 rounding") {
    cs.mask = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    cs.slack = 1e-6;  // the fp32 partials
    const Outcome o = run_case(cs);
    CHECK(o.workspace > 0);
    INFO(o.error);
    CHECK(o.error.empty());
  }
  SECTION("every scheme allowed: partials reduced in bf16, which rounds more than once") {
    cs.slack = 1e-6;
    const Outcome o = run_case(cs);
    REQUIRE(o.matmul == CUBLAS_STATUS_SUCCESS);
    CHECK(o.workspace > 0);
    CHECK(o.violations > 0);
  }
  SECTION("no workspace allowed (the preference's default): no split-K, exact") {
    cs.max_ws = 0;
    cs.slack = 1e-12;
    const Outcome o = run_case(cs);
    CHECK(o.workspace == 0);
    INFO(o.error);
    CHECK(o.error.empty());
  }
}

TEST_CASE("the heuristic honours the declared alignments; a pointer that breaks them faults") {
  barbell::emu::set_blas_quiet(true);
  Lt lt;
  const int64_t m = 16, n = 8, k = 8;  // bf16, every ld a multiple of 16 bytes
  Buf A(m * k * 2 + 64), B(k * n * 2 + 64), C(m * n * 2 + 64), ws(kWs);
  std::mt19937_64 rng(3);
  fill(rng, CUDA_R_16BF, A.p, m * k + 32);
  fill(rng, CUDA_R_16BF, B.p, k * n + 32);
  Descs ds;
  REQUIRE(cublasLtMatmulDescCreate(&ds.op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  ds.a = layout(CUDA_R_16BF, m, k, m, 1, 0);
  ds.b = layout(CUDA_R_16BF, k, n, k, 1, 0);
  ds.c = ds.d = layout(CUDA_R_16BF, m, n, m, 1, 0);
  REQUIRE(cublasLtMatmulPreferenceCreate(&ds.pref) == CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulHeuristicResult_t vec{}, scalar{};
  int count = 0;
  const float one = 1, zero = 0;
  // The defaults (256-byte alignment) give the vectorised algorithm.
  REQUIRE(cublasLtMatmulAlgoGetHeuristic(lt.h, ds.op, ds.a, ds.b, ds.c, ds.d, ds.pref, 1, &vec, &count) ==
          CUBLAS_STATUS_SUCCESS);
  // A declared 2-byte aligned: the scalar one.
  REQUIRE(set_pref(ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, uint32_t(2)) ==
          CUBLAS_STATUS_SUCCESS);
  REQUIRE(cublasLtMatmulAlgoGetHeuristic(lt.h, ds.op, ds.a, ds.b, ds.c, ds.d, ds.pref, 1, &scalar, &count) ==
          CUBLAS_STATUS_SUCCESS);
  CHECK(std::memcmp(&vec.algo, &scalar.algo, sizeof vec.algo) != 0);
  const char* a2 = A.c() + 2;  // 2-byte aligned
  stub::take_fault();
  SECTION("the scalar algorithm runs a 2-byte aligned A") {
    REQUIRE(cublasLtMatmul(lt.h, ds.op, &one, a2, ds.a, B.p, ds.b, &zero, C.p, ds.c, C.p, ds.d, &scalar.algo,
                           ws.p, kWs, nullptr) == CUBLAS_STATUS_SUCCESS);
    CHECK(stub::take_fault().empty());
  }
  SECTION("the vectorised one faults on it, as a GPU kernel would") {
    REQUIRE(cublasLtMatmul(lt.h, ds.op, &one, a2, ds.a, B.p, ds.b, &zero, C.p, ds.c, C.p, ds.d, &vec.algo,
                           ws.p, kWs, nullptr) == CUBLAS_STATUS_SUCCESS);
    const std::string f = stub::take_fault();
    CHECK(f.find("misaligned address") != std::string::npos);
    CHECK(f.find("A column 0") != std::string::npos);
  }
  SECTION("an alignment below the element size leaves no algorithm") {
    REQUIRE(set_pref(ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, uint32_t(1)) ==
            CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulAlgoGetHeuristic(lt.h, ds.op, ds.a, ds.b, ds.c, ds.d, ds.pref, 1, &vec, &count) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(count == 0);
  }
  SECTION("a leading dimension that is not a multiple of 16 bytes rules out the vectorised algorithm") {
    cublasLtMatrixLayout_t odd = layout(CUDA_R_16BF, m, k - 1, m + 1, 1, 0);
    cublasLtMatrixLayout_t bo = layout(CUDA_R_16BF, k - 1, n, k - 1, 1, 0);
    cublasLtMatmulHeuristicResult_t r{};
    REQUIRE(cublasLtMatmulAlgoGetHeuristic(lt.h, ds.op, odd, bo, ds.c, ds.d, ds.pref, 1, &r, &count) ==
            CUBLAS_STATUS_SUCCESS);
    // ... so the vectorised algo found for the aligned layout does not run this one.
    CHECK(cublasLtMatmul(lt.h, ds.op, &one, A.p, odd, B.p, bo, &zero, C.p, ds.c, C.p, ds.d, &vec.algo, ws.p,
                         kWs, nullptr) == CUBLAS_STATUS_NOT_SUPPORTED);
    CHECK(cublasLtMatmul(lt.h, ds.op, &one, A.p, odd, B.p, bo, &zero, C.p, ds.c, C.p, ds.d, &r.algo, ws.p,
                         kWs, nullptr) == CUBLAS_STATUS_SUCCESS);
    CHECK(stub::take_fault().empty());
    cublasLtMatrixLayoutDestroy(odd);
    cublasLtMatrixLayoutDestroy(bo);
  }
  SECTION("the bias pointer's value decides the bias alignment the algorithm assumes") {
    Buf bias(m * 2 + 64);
    fill(rng, CUDA_R_16BF, bias.p, m + 32);
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(CUBLASLT_EPILOGUE_BIAS)) ==
            CUBLAS_STATUS_SUCCESS);
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(bias.p)) ==
            CUBLAS_STATUS_SUCCESS);
    REQUIRE(set_pref(ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, uint32_t(256)) ==
            CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulHeuristicResult_t r{};
    REQUIRE(cublasLtMatmulAlgoGetHeuristic(lt.h, ds.op, ds.a, ds.b, ds.c, ds.d, ds.pref, 1, &r, &count) ==
            CUBLAS_STATUS_SUCCESS);
    // The same algorithm with a bias that is only 2-byte aligned faults.
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(bias.c() + 2)) ==
            CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatmul(lt.h, ds.op, &one, A.p, ds.a, B.p, ds.b, &zero, C.p, ds.c, C.p, ds.d, &r.algo,
                           ws.p, kWs, nullptr) == CUBLAS_STATUS_SUCCESS);
    CHECK(stub::take_fault().find("the bias") != std::string::npos);
    // Asked with that pointer, the heuristic gives an algorithm that takes it.
    REQUIRE(cublasLtMatmulAlgoGetHeuristic(lt.h, ds.op, ds.a, ds.b, ds.c, ds.d, ds.pref, 1, &r, &count) ==
            CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtMatmul(lt.h, ds.op, &one, A.p, ds.a, B.p, ds.b, &zero, C.p, ds.c, C.p, ds.d, &r.algo,
                           ws.p, kWs, nullptr) == CUBLAS_STATUS_SUCCESS);
    CHECK(stub::take_fault().empty());
  }
  barbell::emu::set_blas_quiet(false);
}

TEST_CASE("each documented invalid configuration returns its status") {
  barbell::emu::set_blas_quiet(true);
  Lt lt;
  const int64_t m = 8, n = 4, k = 5;
  Buf A(m * k * 4), B(k * n * 4), C(m * n * 4), aux(16 * n * 4), ws(kWs);
  Descs ds;
  REQUIRE(cublasLtMatmulDescCreate(&ds.op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  ds.a = layout(CUDA_R_32F, m, k, m, 1, 0);
  ds.b = layout(CUDA_R_32F, k, n, k, 1, 0);
  ds.c = ds.d = layout(CUDA_R_32F, m, n, m, 1, 0);
  REQUIRE(cublasLtMatmulPreferenceCreate(&ds.pref) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(set_pref(ds.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(kWs)) ==
          CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulHeuristicResult_t res{};
  int count = 0;
  const float one = 1, zero = 0;
  auto heur = [&](cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c) {
    return cublasLtMatmulAlgoGetHeuristic(lt.h, ds.op, a, b, c, c, ds.pref, 1, &res, &count);
  };
  auto mm = [&](cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c) {
    return cublasLtMatmul(lt.h, ds.op, &one, A.p, a, B.p, b, &zero, C.p, c, C.p, c, nullptr, ws.p, kWs,
                          nullptr);
  };
  REQUIRE(heur(ds.a, ds.b, ds.c) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(mm(ds.a, ds.b, ds.c) == CUBLAS_STATUS_SUCCESS);

  SECTION("handles: null or destroyed -> NOT_INITIALIZED; cublasLtCreate(NULL) -> INVALID_VALUE") {
    CHECK(cublasLtCreate(nullptr) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulAlgoGetHeuristic(nullptr, ds.op, ds.a, ds.b, ds.c, ds.c, ds.pref, 1, &res, &count) ==
          CUBLAS_STATUS_NOT_INITIALIZED);
    cublasLtHandle_t h2 = nullptr;
    REQUIRE(cublasLtCreate(&h2) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(cublasLtDestroy(h2) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmul(h2, ds.op, &one, A.p, ds.a, B.p, ds.b, &zero, C.p, ds.c, C.p, ds.c, nullptr, ws.p,
                         kWs, nullptr) == CUBLAS_STATUS_NOT_INITIALIZED);
    CHECK(cublasLtDestroy(h2) == CUBLAS_STATUS_NOT_INITIALIZED);
    CHECK(cublasLtDestroy(nullptr) == CUBLAS_STATUS_INVALID_VALUE);
  }
  SECTION("null or destroyed descriptors -> INVALID_VALUE") {
    CHECK(heur(nullptr, ds.b, ds.c) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulAlgoGetHeuristic(lt.h, nullptr, ds.a, ds.b, ds.c, ds.c, ds.pref, 1, &res, &count) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulAlgoGetHeuristic(lt.h, ds.op, ds.a, ds.b, ds.c, ds.c, nullptr, 1, &res, &count) ==
          CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayout_t gone = layout(CUDA_R_32F, m, k, m, 1, 0);
    REQUIRE(cublasLtMatrixLayoutDestroy(gone) == CUBLAS_STATUS_SUCCESS);
    CHECK(mm(gone, ds.b, ds.c) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatrixLayoutDestroy(gone) == CUBLAS_STATUS_INVALID_VALUE);
  }
  SECTION("requestedAlgoCount <= 0 -> INVALID_VALUE") {
    CHECK(cublasLtMatmulAlgoGetHeuristic(lt.h, ds.op, ds.a, ds.b, ds.c, ds.c, ds.pref, 0, &res, &count) ==
          CUBLAS_STATUS_INVALID_VALUE);
  }
  SECTION("SetAttribute: NULL buf or a size that is not the attribute's -> INVALID_VALUE") {
    const int64_t wide = 1;
    CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, &wide, sizeof wide) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, nullptr, 4) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatrixLayoutSetAttribute(ds.a, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &wide, sizeof wide) ==
          CUBLAS_STATUS_INVALID_VALUE);
    const uint32_t narrow = 1;
    CHECK(cublasLtMatrixLayoutSetAttribute(ds.a, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &narrow,
                                           sizeof narrow) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulPreferenceSetAttribute(ds.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &narrow,
                                               sizeof narrow) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulPreferenceSetAttribute(ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &wide,
                                               sizeof wide) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &narrow,
                                         sizeof narrow) == CUBLAS_STATUS_INVALID_VALUE);
    // An attribute the emulator does not implement is refused rather than ignored.
    const int32_t sms = 8;
    CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &sms, sizeof sms) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
  }
  SECTION("ld below the rows -> INVALID_VALUE") {
    cublasLtMatrixLayout_t bad = layout(CUDA_R_32F, m, k, m - 1, 1, 0);
    CHECK(heur(bad, ds.b, ds.c) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(mm(bad, ds.b, ds.c) == CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayoutDestroy(bad);
    cublasLtMatrixLayout_t badc = layout(CUDA_R_32F, m, n, 0, 1, 0);
    CHECK(heur(ds.a, ds.b, badc) == CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayoutDestroy(badc);
  }
  SECTION("shapes that do not multiply, batch counts that differ -> INVALID_VALUE") {
    cublasLtMatrixLayout_t bk = layout(CUDA_R_32F, k + 1, n, k + 1, 1, 0);
    CHECK(heur(ds.a, bk, ds.c) == CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayoutDestroy(bk);
    cublasLtMatrixLayout_t a2 = layout(CUDA_R_32F, m, k, m, 2, m * k);
    CHECK(heur(a2, ds.b, ds.c) == CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayoutDestroy(a2);
    // ... and a transpose that makes op(A) k x m.
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, int32_t(CUBLAS_OP_T)) == CUBLAS_STATUS_SUCCESS);
    CHECK(heur(ds.a, ds.b, ds.c) == CUBLAS_STATUS_INVALID_VALUE);
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, int32_t(7)) == CUBLAS_STATUS_SUCCESS);
    CHECK(heur(ds.a, ds.b, ds.c) == CUBLAS_STATUS_INVALID_VALUE);
  }
  SECTION("type combinations outside the supported table -> NOT_SUPPORTED") {
    cublasLtMatrixLayout_t cb = layout(CUDA_R_16BF, m, n, m, 1, 0);
    CHECK(heur(ds.a, ds.b, cb) == CUBLAS_STATUS_NOT_SUPPORTED);  // f32 inputs, bf16 output
    cublasLtMatrixLayoutDestroy(cb);
    cublasLtMatrixLayout_t ah = layout(CUDA_R_16F, m, k, m, 1, 0);
    cublasLtMatrixLayout_t bb = layout(CUDA_R_16BF, k, n, k, 1, 0);
    CHECK(heur(ah, bb, ds.c) == CUBLAS_STATUS_NOT_SUPPORTED);  // f16 with bf16
    cublasLtMatrixLayoutDestroy(ah);
    cublasLtMatrixLayoutDestroy(bb);
    cublasLtMatmulDesc_t d64 = nullptr;
    REQUIRE(cublasLtMatmulDescCreate(&d64, CUBLAS_COMPUTE_64F, CUDA_R_64F) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulAlgoGetHeuristic(lt.h, d64, ds.a, ds.b, ds.c, ds.c, ds.pref, 1, &res, &count) ==
          CUBLAS_STATUS_NOT_SUPPORTED);  // f32 data with 64F compute
    cublasLtMatmulDescDestroy(d64);
    cublasLtMatmulDesc_t wrong_scale = nullptr;
    REQUIRE(cublasLtMatmulDescCreate(&wrong_scale, CUBLAS_COMPUTE_32F, CUDA_R_64F) == CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulAlgoGetHeuristic(lt.h, wrong_scale, ds.a, ds.b, ds.c, ds.c, ds.pref, 1, &res,
                                         &count) == CUBLAS_STATUS_NOT_SUPPORTED);
    cublasLtMatmulDescDestroy(wrong_scale);
    cublasLtMatmulDesc_t tf32 = nullptr;
    cublasLtMatrixLayout_t a16 = layout(CUDA_R_16BF, m, k, m, 1, 0), b16 = layout(CUDA_R_16BF, k, n, k, 1, 0),
                           c16 = layout(CUDA_R_16BF, m, n, m, 1, 0);
    REQUIRE(cublasLtMatmulDescCreate(&tf32, CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_32F) ==
            CUBLAS_STATUS_SUCCESS);
    CHECK(cublasLtMatmulAlgoGetHeuristic(lt.h, tf32, a16, b16, c16, c16, ds.pref, 1, &res, &count) ==
          CUBLAS_STATUS_NOT_SUPPORTED);
    cublasLtMatmulDescDestroy(tf32);
    cublasLtMatrixLayoutDestroy(a16);
    cublasLtMatrixLayoutDestroy(b16);
    cublasLtMatrixLayoutDestroy(c16);
  }
  SECTION("rows beyond int32 -> NOT_SUPPORTED") {
    cublasLtMatrixLayout_t big = nullptr;
    REQUIRE(cublasLtMatrixLayoutCreate(&big, CUDA_R_32F, uint64_t(1) << 31, 1, int64_t(1) << 31) ==
            CUBLAS_STATUS_SUCCESS);
    cublasLtMatrixLayout_t bigb = layout(CUDA_R_32F, 1, 1, 1, 1, 0);
    cublasLtMatrixLayout_t bigc = nullptr;
    REQUIRE(cublasLtMatrixLayoutCreate(&bigc, CUDA_R_32F, uint64_t(1) << 31, 1, int64_t(1) << 31) ==
            CUBLAS_STATUS_SUCCESS);
    CHECK(heur(big, bigb, bigc) == CUBLAS_STATUS_NOT_SUPPORTED);
    cublasLtMatrixLayoutDestroy(big);
    cublasLtMatrixLayoutDestroy(bigb);
    cublasLtMatrixLayoutDestroy(bigc);
  }
  SECTION(
      "GELU aux: ld not a multiple of 8, below the rows, batch stride not a multiple of 8 -> INVALID_VALUE") {
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE,
                     static_cast<uint32_t>(CUBLASLT_EPILOGUE_GELU_AUX)) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux.p) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, int64_t(12)) == CUBLAS_STATUS_SUCCESS);
    CHECK(heur(ds.a, ds.b, ds.c) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(mm(ds.a, ds.b, ds.c) == CUBLAS_STATUS_INVALID_VALUE);
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, int64_t(0)) == CUBLAS_STATUS_SUCCESS);
    CHECK(heur(ds.a, ds.b, ds.c) == CUBLAS_STATUS_INVALID_VALUE);  // below m = 8 (and the default)
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, int64_t(16)) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(heur(ds.a, ds.b, ds.c) == CUBLAS_STATUS_SUCCESS);
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, int64_t(68)) ==
            CUBLAS_STATUS_SUCCESS);
    CHECK(heur(ds.a, ds.b, ds.c) == CUBLAS_STATUS_INVALID_VALUE);
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, int64_t(64)) ==
            CUBLAS_STATUS_SUCCESS);
    REQUIRE(mm(ds.a, ds.b, ds.c) == CUBLAS_STATUS_SUCCESS);
    // An aux type other than D's
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, int32_t(CUDA_R_16BF)) ==
            CUBLAS_STATUS_SUCCESS);
    CHECK(mm(ds.a, ds.b, ds.c) == CUBLAS_STATUS_INVALID_VALUE);
    // ... and a missing aux pointer
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, int32_t(-1)) ==
            CUBLAS_STATUS_SUCCESS);
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<void*>(nullptr)) ==
            CUBLAS_STATUS_SUCCESS);
    CHECK(mm(ds.a, ds.b, ds.c) == CUBLAS_STATUS_INVALID_VALUE);
  }
  SECTION(
      "a BIAS epilogue without its pointer -> INVALID_VALUE; an epilogue the emulator lacks -> "
      "NOT_SUPPORTED") {
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE,
                     static_cast<uint32_t>(CUBLASLT_EPILOGUE_GELU_BIAS)) == CUBLAS_STATUS_SUCCESS);
    CHECK(mm(ds.a, ds.b, ds.c) == CUBLAS_STATUS_INVALID_VALUE);
    REQUIRE(set_desc(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(CUBLASLT_EPILOGUE_RELU)) ==
            CUBLAS_STATUS_SUCCESS);
    CHECK(heur(ds.a, ds.b, ds.c) == CUBLAS_STATUS_NOT_SUPPORTED);
  }
  SECTION("workspace: smaller than the algorithm needs, NULL, or misaligned -> INVALID_VALUE") {
    // A split-K shape: 8 x 4 outputs, k = 4096.
    const int64_t kk = 4096;
    Buf A2(m * kk * 4), B2(kk * n * 4);
    cublasLtMatrixLayout_t la = layout(CUDA_R_32F, m, kk, m, 1, 0), lb = layout(CUDA_R_32F, kk, n, kk, 1, 0);
    cublasLtMatmulHeuristicResult_t r{};
    REQUIRE(cublasLtMatmulAlgoGetHeuristic(lt.h, ds.op, la, lb, ds.c, ds.c, ds.pref, 1, &r, &count) ==
            CUBLAS_STATUS_SUCCESS);
    REQUIRE(r.workspaceSize > 0);
    CHECK(cublasLtMatmul(lt.h, ds.op, &one, A2.p, la, B2.p, lb, &zero, C.p, ds.c, C.p, ds.c, &r.algo, ws.p,
                         r.workspaceSize - 1, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmul(lt.h, ds.op, &one, A2.p, la, B2.p, lb, &zero, C.p, ds.c, C.p, ds.c, &r.algo, nullptr,
                         r.workspaceSize, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmul(lt.h, ds.op, &one, A2.p, la, B2.p, lb, &zero, C.p, ds.c, C.p, ds.c, &r.algo,
                         ws.c() + 16, r.workspaceSize, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
    stub::take_accesses();
    REQUIRE(cublasLtMatmul(lt.h, ds.op, &one, A2.p, la, B2.p, lb, &zero, C.p, ds.c, C.p, ds.c, &r.algo, ws.p,
                           r.workspaceSize, nullptr) == CUBLAS_STATUS_SUCCESS);
    // The workspace is declared as written: two streams sharing it would be caught by the runtime.
    bool ws_written = false;
    for (const auto& acc : stub::take_accesses())
      ws_written |=
          acc.write && acc.lo == reinterpret_cast<uintptr_t>(ws.p) && acc.hi - acc.lo == r.workspaceSize;
    CHECK(ws_written);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
  }
  SECTION("a NULL alpha, D, or A; an algo not from the heuristic -> INVALID_VALUE") {
    CHECK(cublasLtMatmul(lt.h, ds.op, nullptr, A.p, ds.a, B.p, ds.b, &zero, C.p, ds.c, C.p, ds.c, nullptr,
                         ws.p, kWs, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmul(lt.h, ds.op, &one, A.p, ds.a, B.p, ds.b, &zero, C.p, ds.c, nullptr, ds.c, nullptr,
                         ws.p, kWs, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasLtMatmul(lt.h, ds.op, &one, nullptr, ds.a, B.p, ds.b, &zero, C.p, ds.c, C.p, ds.c, nullptr,
                         ws.p, kWs, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatmulAlgo_t junk;
    std::memset(&junk, 0x5a, sizeof junk);
    CHECK(cublasLtMatmul(lt.h, ds.op, &one, A.p, ds.a, B.p, ds.b, &zero, C.p, ds.c, C.p, ds.c, &junk, ws.p,
                         kWs, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
  }
  SECTION("outputs that overlap inputs or each other -> INVALID_VALUE") {
    // D over A
    CHECK(cublasLtMatmul(lt.h, ds.op, &one, A.p, ds.a, B.p, ds.b, &zero, A.p, ds.c, A.p, ds.c, nullptr, ws.p,
                         kWs, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
    // D with batch stride 0 and 2 entries
    cublasLtMatrixLayout_t a2 = layout(CUDA_R_32F, m, k, m, 2, 0), b2 = layout(CUDA_R_32F, k, n, k, 2, 0),
                           c2 = layout(CUDA_R_32F, m, n, m, 2, 0);
    CHECK(mm(a2, b2, c2) == CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayoutDestroy(c2);
    // entries that overlap by one column
    c2 = layout(CUDA_R_32F, m, n, m, 2, m * (n - 1));
    CHECK(mm(a2, b2, c2) == CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayoutDestroy(c2);
    // interleaved entries that do not overlap are fine
    Buf C2(m * n * 2 * 4);
    c2 = layout(CUDA_R_32F, m, n, 2 * m, 2, m);
    CHECK(cublasLtMatmul(lt.h, ds.op, &one, A.p, a2, B.p, b2, &zero, C2.p, c2, C2.p, c2, nullptr, ws.p, kWs,
                         nullptr) == CUBLAS_STATUS_SUCCESS);
    cublasLtMatrixLayoutDestroy(a2);
    cublasLtMatrixLayoutDestroy(b2);
    cublasLtMatrixLayoutDestroy(c2);
    // in place with a different layout for C, beta != 0
    cublasLtMatrixLayout_t cw = layout(CUDA_R_32F, m, n, m + 1, 1, 0);
    Buf Cw((m + 1) * n * 4);
    CHECK(cublasLtMatmul(lt.h, ds.op, &one, A.p, ds.a, B.p, ds.b, &one, Cw.p, cw, Cw.p, ds.c, nullptr, ws.p,
                         kWs, nullptr) == CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayoutDestroy(cw);
  }
  SECTION("a stream that refuses the work -> EXECUTION_FAILED") {
    stub::fail_next_enqueue(cudaErrorInvalidResourceHandle);
    CHECK(mm(ds.a, ds.b, ds.c) == CUBLAS_STATUS_EXECUTION_FAILED);
  }
  SECTION("an operand outside device memory faults on the device") {
    std::vector<float> host(static_cast<size_t>(m * k));
    stub::take_fault();
    REQUIRE(cublasLtMatmul(lt.h, ds.op, &one, host.data(), ds.a, B.p, ds.b, &zero, C.p, ds.c, C.p, ds.c,
                           nullptr, ws.p, kWs, nullptr) == CUBLAS_STATUS_SUCCESS);
    CHECK(stub::take_fault().find("outside every device allocation") != std::string::npos);
  }
  SECTION("the status names") {
    CHECK(std::string(cublasLtGetStatusName(CUBLAS_STATUS_NOT_SUPPORTED)) == "CUBLAS_STATUS_NOT_SUPPORTED");
    CHECK(std::string(cublasLtGetStatusName(CUBLAS_STATUS_INVALID_VALUE)) == "CUBLAS_STATUS_INVALID_VALUE");
    CHECK(std::string(cublasLtGetStatusString(CUBLAS_STATUS_SUCCESS)) == "success");
  }
  CHECK(stub::take_fault().empty());
  barbell::emu::set_blas_quiet(false);
}

TEST_CASE("beta == 0 ignores C's contents (NaN there does not reach D); k == 0 gives beta C") {
  Lt lt;
  const int64_t m = 5, n = 3, k = 4;
  Buf A(m * k * 4), B(k * n * 4), C(m * n * 4);
  std::mt19937_64 rng(5);
  fill(rng, CUDA_R_32F, A.p, m * k);
  fill(rng, CUDA_R_32F, B.p, k * n);
  for (int64_t i = 0; i < m * n; ++i) set(CUDA_R_32F, C.p, i, std::nan(""));
  Descs ds;
  REQUIRE(cublasLtMatmulDescCreate(&ds.op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS);
  ds.a = layout(CUDA_R_32F, m, k, m, 1, 0);
  ds.b = layout(CUDA_R_32F, k, n, k, 1, 0);
  ds.c = ds.d = layout(CUDA_R_32F, m, n, m, 1, 0);
  const float one = 1, zero = 0, two = 2;
  REQUIRE(cublasLtMatmul(lt.h, ds.op, &one, A.p, ds.a, B.p, ds.b, &zero, C.p, ds.c, C.p, ds.d, nullptr,
                         nullptr, 0, nullptr) == CUBLAS_STATUS_SUCCESS);
  for (int64_t i = 0; i < m * n; ++i) REQUIRE(std::isfinite(get(CUDA_R_32F, C.p, i)));
  std::vector<double> before(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m * n; ++i) before[static_cast<size_t>(i)] = get(CUDA_R_32F, C.p, i);
  cublasLtMatrixLayout_t a0 = layout(CUDA_R_32F, m, 0, m, 1, 0), b0 = layout(CUDA_R_32F, 0, n, 1, 1, 0);
  REQUIRE(cublasLtMatmul(lt.h, ds.op, &one, A.p, a0, B.p, b0, &two, C.p, ds.c, C.p, ds.d, nullptr, nullptr, 0,
                         nullptr) == CUBLAS_STATUS_SUCCESS);
  for (int64_t i = 0; i < m * n; ++i)
    CHECK(get(CUDA_R_32F, C.p, i) ==
          static_cast<double>(static_cast<float>(2 * before[static_cast<size_t>(i)])));
  cublasLtMatrixLayoutDestroy(a0);
  cublasLtMatrixLayoutDestroy(b0);
}

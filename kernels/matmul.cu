// Matmul and linear on the GPU through cuBLASLt, and the small kernels around them:
// the bias add, the bias gradient and the (unfused) bias/GELU epilogue.
//
// Layout. barbell tensors are row-major, cuBLAS is column-major. A row-major [r, c]
// matrix with strides (s0, 1) read column-major with ld = s0 is its transpose [c, r].
// So C = A @ B is computed as C^T = B^T A^T: cuBLAS's "A" operand is our b, its "B"
// is our a, and its column-major D [N, M] (ld = C's row stride) is our row-major
// C [M, N]. cuBLAS needs op(X) = X^T of each input X:
//   - unit column stride (row-major rows): the stored column-major matrix is already
//     X^T: op N, stored [cols, rows], ld = row stride;
//   - unit row stride (a transposed view): the stored column-major matrix is X: op T,
//     stored [rows, cols], ld = column stride.
// No operand is copied. linear's y = x @ w^T is the same product with b = w^T, a
// view with the strides of w swapped.
//
// Batching. matmul's operands have equal batch dims (the op expands broadcast ones,
// which gives stride 0). The batch dims of size > 1 are merged, jointly over a, b and
// c, into groups that each have one stride per tensor. The largest group becomes
// cuBLASLt's strided batch (BATCH_COUNT / STRIDED_BATCH_OFFSET, stride 0 for a
// broadcast operand); any other groups are looped over on the host, one cuBLASLt call
// each. matmul_strides_ok accepts an operand whose batch dims form at most two groups
// (e.g. q or k^T of attention: [B, H, T, D] views of a [B, T, 3, H, D] buffer), so the
// host loop is at most over the smaller of two dims in practice.
//
// Plans. One cuBLASLt handle per device; a 32 MiB workspace per (thread, device,
// stream), so concurrent streams never share one. The descriptors and the heuristic's
// algorithm are cached per problem (device, dtype, compute type, m/n/k, transposes,
// lds, batch and batch strides, epilogue, aux ld, alignment of every pointer): a
// training step makes no heuristic query after its first. When cuBLASLt has no
// algorithm (or refuses one) the product goes to cuBLAS's cublasGemmStridedBatchedEx
// and a fused epilogue falls back to a separate bias/GELU kernel.
//
// Precision: bf16/f16 accumulate in fp32 (reduction schemes that would sum split-K
// partials in the 16-bit output type are excluded); f32 uses fp32, or TF32 tensor
// cores when cuda::set_allow_tf32(true); f64 uses CUBLAS_COMPUTE_64F.
//
// Every cuBLASLt and cuBLAS call goes through blas()'s table of function pointers
// (blas_api.hpp): the libraries are loaded at the first GPU matmul, never linked.

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cstdint>
#include <memory>
#include <mutex>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "barbell/cuda/cuda.hpp"
#include "blas_api.hpp"
#include "common.cuh"
#include "cuda/kernels.hpp"

namespace barbell::gpu::detail {
[[noreturn]] inline void throw_cublas(cublasStatus_t st, const char* call, const char* file, int line) {
  throw CudaError(fmt::format("{} failed: {} ({}) at {}:{}", call, blas().cublasLtGetStatusName(st),
                              static_cast<int>(st), file, line));
}
}  // namespace barbell::gpu::detail

// For cuBLAS and cuBLASLt calls: a failure throws barbell::CudaError naming the call,
// the status, the file and the line.
#define BB_CUBLAS_CHECK(call)                                                  \
  do {                                                                         \
    cublasStatus_t bb_st_ = (call);                                            \
    if (bb_st_ != CUBLAS_STATUS_SUCCESS)                                       \
      ::barbell::gpu::detail::throw_cublas(bb_st_, #call, __FILE__, __LINE__); \
  } while (0)

// ---- TF32 switch (barbell/cuda/cuda.hpp) --------------------------------------------------
namespace barbell::cuda {
namespace {
std::atomic<bool> g_allow_tf32{false};
}  // namespace
void set_allow_tf32(bool on) { g_allow_tf32.store(on, std::memory_order_relaxed); }
bool allow_tf32() { return g_allow_tf32.load(std::memory_order_relaxed); }
}  // namespace barbell::cuda

namespace barbell::gpu {
namespace {

constexpr int kMaxDevices = 64;                       // as kernels/runtime.cu
constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // what cuBLAS suggests for Hopper
constexpr size_t kMaxPlans = 4096;                    // the cache is cleared beyond this
constexpr int64_t kMaxBatch = INT32_MAX;              // BATCH_COUNT is an int32

// ---- handles and workspaces -----------------------------------------------------------------

struct DeviceHandles {
  std::mutex init_mu;
  std::atomic<cublasLtHandle_t> lt{nullptr};
  std::mutex blas_mu;  // guards `blas` and its stream/workspace settings during a call
  cublasHandle_t blas = nullptr;
};

DeviceHandles& device_handles(int device) {
  BB_CHECK(device >= 0 && device < kMaxDevices, DeviceError,
           "gpu matmul: cuda:{} is beyond the {} devices barbell supports", device, kMaxDevices);
  // Never destroyed: the handles must outlive anything that might still run at exit.
  static auto* all = new std::array<DeviceHandles, kMaxDevices>();
  return (*all)[static_cast<size_t>(device)];
}

// The device's cuBLASLt handle (the device must be current). cuBLASLt takes the stream
// and the workspace per call, so threads can share it.
cublasLtHandle_t lt_handle(int device) {
  DeviceHandles& h = device_handles(device);
  cublasLtHandle_t p = h.lt.load(std::memory_order_acquire);
  if (p) return p;
  std::lock_guard<std::mutex> lock(h.init_mu);
  p = h.lt.load(std::memory_order_relaxed);
  if (!p) {
    BB_CUBLAS_CHECK(blas().cublasLtCreate(&p));
    h.lt.store(p, std::memory_order_release);
  }
  return p;
}

// Workspaces per (device, stream) of the calling thread: work that shares one is ordered
// by its stream, and cudaStreamPerThread (one handle value, a different stream in every
// thread) is safe too. Freed when the thread exits (cudaFree waits for the device).
// Not guarded: a stream destroyed while its work still runs, and a new one that gets
// the same handle in the same thread, would share a workspace with that work.
struct ThreadWorkspaces {
  struct Entry {
    int device;
    cudaStream_t stream;
    void* ptr;
  };
  std::vector<Entry> entries;
  ThreadWorkspaces() = default;
  ThreadWorkspaces(const ThreadWorkspaces&) = delete;
  ThreadWorkspaces& operator=(const ThreadWorkspaces&) = delete;
  ~ThreadWorkspaces() {
    for (const Entry& e : entries)
      if (cudaSetDevice(e.device) == cudaSuccess) cudaFree(e.ptr);
  }
};

void* workspace(int device, cudaStream_t stream) {
  thread_local ThreadWorkspaces ws;
  for (const auto& e : ws.entries)
    if (e.device == device && e.stream == stream) return e.ptr;
  void* p = nullptr;
  BB_CUDA_CHECK(cudaMalloc(&p, kWorkspaceBytes));
  ws.entries.push_back({device, stream, p});
  return p;
}

// Runs f(handle) with the device's cuBLAS handle bound to `stream` and this thread's
// workspace for it; the handle's settings are shared state, so the call holds a lock.
template <typename F>
void with_blas(int device, cudaStream_t stream, F&& f) {
  DeviceHandles& h = device_handles(device);
  void* ws = workspace(device, stream);
  std::lock_guard<std::mutex> lock(h.blas_mu);
  if (!h.blas) {
    cublasHandle_t b = nullptr;
    BB_CUBLAS_CHECK(blas().cublasCreate_v2(&b));
    // 16-bit inputs: split-K partials are reduced in fp32 too.
    BB_CUBLAS_CHECK(blas().cublasSetMathMode(b, CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
    h.blas = b;
  }
  BB_CUBLAS_CHECK(blas().cublasSetStream_v2(h.blas, stream));
  // After cublasSetStream, which resets the handle to its default workspace.
  BB_CUBLAS_CHECK(blas().cublasSetWorkspace_v2(h.blas, ws, kWorkspaceBytes));
  f(h.blas);
}

// ---- types ------------------------------------------------------------------------------------

struct TypeInfo {
  cudaDataType_t data;   // A, B, C, D (and bias, GELU aux: cuBLASLt's default is D's type)
  cudaDataType_t scale;  // alpha, beta
  cublasComputeType_t compute;
};

TypeInfo type_info(DType dt, const char* op) {
  switch (dt) {
    case DType::BF16: return {CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F};
    case DType::F16: return {CUDA_R_16F, CUDA_R_32F, CUBLAS_COMPUTE_32F};
    case DType::F32:
      return {CUDA_R_32F, CUDA_R_32F, cuda::allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F};
    case DType::F64: return {CUDA_R_64F, CUDA_R_64F, CUBLAS_COMPUTE_64F};
    default:
      throw DTypeError(fmt::format("{}: cuBLAS takes f32, f64, bf16 or f16, not {}", op, dtype_name(dt)));
  }
}

bool is_16bit(DType dt) { return dt == DType::BF16 || dt == DType::F16; }

// ---- layout mapping (see the file comment) ----------------------------------------------------

// How cuBLAS reads an input X (row-major view [r, c], element strides (s0, s1)) of which
// it needs op(X') = X^T: the stored column-major matrix X' and the op.
struct LtInput {
  cublasOperation_t op;
  int64_t rows, cols, ld;
};

bool describe_input(int64_t r, int64_t c, int64_t s0, int64_t s1, LtInput* out) {
  const int64_t r1 = std::max<int64_t>(r, 1), c1 = std::max<int64_t>(c, 1);
  if (s1 == 1 && (r == 1 || s0 >= c1)) {  // rows are contiguous: X' = X^T, no transpose
    *out = {CUBLAS_OP_N, c, r, r == 1 ? c1 : s0};
    return true;
  }
  if (s0 == 1 && (c == 1 || s1 >= r1)) {  // columns are contiguous: X' = X, transpose it
    *out = {CUBLAS_OP_T, r, c, c == 1 ? r1 : s1};
    return true;
  }
  return false;
}

// The output C [M, N] must have contiguous rows: column-major it is D = C^T [N, M].
bool describe_output(int64_t M, int64_t N, int64_t s0, int64_t s1, int64_t* ld) {
  const int64_t n1 = std::max<int64_t>(N, 1);
  if (!(s1 == 1 || N == 1) || !(M == 1 || s0 >= n1)) return false;
  *ld = M == 1 ? n1 : s0;
  return true;
}

// One cuBLAS call: C[i] = A[i] @ B[i] for i < batch, row-major views with element
// strides, plus linear's epilogue. Pointers are to the first element of entry 0.
struct Gemm {
  DType dtype = DType::F32;
  int device = 0;
  cudaStream_t stream = nullptr;
  int64_t M = 0, N = 0, K = 0;
  const void* a = nullptr;  // [M, K]
  int64_t as0 = 0, as1 = 0;
  const void* b = nullptr;  // [K, N]
  int64_t bs0 = 0, bs1 = 0;
  void* c = nullptr;  // [M, N]
  int64_t cs0 = 0, cs1 = 0;
  int64_t batch = 1, sa = 0, sb = 0, sc = 0;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // [N] in C's dtype (the *_BIAS epilogues)
  void* aux = nullptr;         // GELU input [M, N] with row stride aux_ld (the GELU_AUX epilogues)
  int64_t aux_ld = 0;
};

// The same call in cuBLAS's column-major terms: D [m, n] = op(A') [m, k] @ op(B') [k, n]
// with A' from our b, B' from our a, m = N, n = M.
struct LtProblem {
  LtInput A, B;
  int64_t ldc = 0;
  int64_t m = 0, n = 0, k = 0;
};

LtProblem lt_problem(const Gemm& g) {
  LtProblem p;
  p.m = g.N;
  p.n = g.M;
  p.k = g.K;
  const bool ok = describe_input(g.K, g.N, g.bs0, g.bs1, &p.A) &&
                  describe_input(g.M, g.K, g.as0, g.as1, &p.B) &&
                  describe_output(g.M, g.N, g.cs0, g.cs1, &p.ldc);
  if (!ok)
    throw Error(
        fmt::format("gpu matmul: internal error: strides a ({}, {}), b ({}, {}), c ({}, {}) for [{}, {}] @ "
                    "[{}, {}] need a copy first (see gpu::matmul_strides_ok)",
                    g.as0, g.as1, g.bs0, g.bs1, g.cs0, g.cs1, g.M, g.K, g.K, g.N));
  return p;
}

// The alignment (bytes, at most 256: cuBLASLt's default assumption) that every batch
// entry's pointer has.
uint32_t alignment(const void* p, int64_t batch, int64_t stride, size_t esize) {
  uint64_t v = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)) | 256u;
  if (batch > 1) v |= static_cast<uint64_t>(stride) * esize;
  return static_cast<uint32_t>(v & (~v + 1));  // the lowest set bit
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---- cached plans -----------------------------------------------------------------------------

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;  // lc serves as C and D
  cublasLtMatmulAlgo_t algo{};
  std::atomic<bool> usable{false};  // false: cuBLASLt has no algorithm, use the fallback
  std::mutex mu;  // epilogue plans: held while the pointer attributes are set and the call enqueued
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (lc) blas().cublasLtMatrixLayoutDestroy(lc);
    if (lb) blas().cublasLtMatrixLayoutDestroy(lb);
    if (la) blas().cublasLtMatrixLayoutDestroy(la);
    if (op) blas().cublasLtMatmulDescDestroy(op);
  }
};

using PlanKey = std::array<int64_t, 22>;
struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (int64_t v : k) {
      h ^= static_cast<uint64_t>(v) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
      h *= 0xff51afd7ed558ccdull;
    }
    return static_cast<size_t>(h ^ (h >> 33));
  }
};

template <typename V>
void set_desc(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const V& v) {
  BB_CUBLAS_CHECK(blas().cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof(v)));
}
template <typename V>
void set_pref(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t attr, const V& v) {
  BB_CUBLAS_CHECK(blas().cublasLtMatmulPreferenceSetAttribute(p, attr, &v, sizeof(v)));
}

void make_layout(cublasLtMatrixLayout_t* l, cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld,
                 int64_t batch, int64_t stride) {
  BB_CUBLAS_CHECK(blas().cublasLtMatrixLayoutCreate(l, type, static_cast<uint64_t>(rows),
                                                    static_cast<uint64_t>(cols), ld));
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    const int64_t offset = stride;  // elements; 0 for a broadcast operand
    BB_CUBLAS_CHECK(blas().cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                            sizeof(count)));
    BB_CUBLAS_CHECK(blas().cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                            &offset, sizeof(offset)));
  }
}

struct PrefGuard {
  cublasLtMatmulPreference_t p = nullptr;
  ~PrefGuard() {
    if (p) blas().cublasLtMatmulPreferenceDestroy(p);
  }
};

struct Alignments {
  uint32_t a, b, c, bias, aux;  // in cuBLAS's terms: a is A' (our b), b is B' (our a)
};

std::shared_ptr<Plan> create_plan(const Gemm& g, const LtProblem& p, const TypeInfo& ti,
                                  const Alignments& al) {
  auto plan = std::make_shared<Plan>();
  BB_CUBLAS_CHECK(blas().cublasLtMatmulDescCreate(&plan->op, ti.compute, ti.scale));
  set_desc(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, static_cast<int32_t>(p.A.op));
  set_desc(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, static_cast<int32_t>(p.B.op));
  if (g.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    set_desc(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(g.epilogue));
    // The bias and aux types are left at their default, D's type (cublasLt.h,
    // CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE / _EPILOGUE_AUX_DATA_TYPE), which is ours.
    // The heuristic reads the pointers' values for their alignment, so set them now.
    if (g.bias) set_desc(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
    if (g.aux) {
      set_desc(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
      set_desc(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, g.aux_ld);
    }
  }
  make_layout(&plan->la, ti.data, p.A.rows, p.A.cols, p.A.ld, g.batch, g.sb);
  make_layout(&plan->lb, ti.data, p.B.rows, p.B.cols, p.B.ld, g.batch, g.sa);
  make_layout(&plan->lc, ti.data, p.m, p.n, p.ldc, g.batch, g.sc);

  PrefGuard pref;
  BB_CUBLAS_CHECK(blas().cublasLtMatmulPreferenceCreate(&pref.p));
  set_pref(pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(kWorkspaceBytes));
  set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al.a);
  set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al.b);
  set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al.c);
  set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al.c);
  if (is_16bit(g.dtype)) {
    // INPLACE and OUTPUT_TYPE would add split-K partials in bf16/f16.
    set_pref(pref.p, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
             static_cast<uint32_t>(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE));
  }
  cublasLtMatmulHeuristicResult_t result{};
  int count = 0;
  const cublasStatus_t st = blas().cublasLtMatmulAlgoGetHeuristic(
      lt_handle(g.device), plan->op, plan->la, plan->lb, plan->lc, plan->lc, pref.p, 1, &result, &count);
  // No algorithm (NOT_SUPPORTED, or a combination cuBLASLt rejects): the plan stays
  // unusable and the callers fall back to cuBLAS, which reports real errors itself.
  if (st == CUBLAS_STATUS_SUCCESS && count > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
    plan->algo = result.algo;
    plan->usable.store(true);
  }
  return plan;
}

std::shared_ptr<Plan> get_plan(const Gemm& g, const LtProblem& p, const TypeInfo& ti) {
  const size_t es = dtype_size(g.dtype);
  const Alignments al{alignment(g.b, g.batch, g.sb, es), alignment(g.a, g.batch, g.sa, es),
                      alignment(g.c, g.batch, g.sc, es), alignment(g.bias, 1, 0, es),
                      alignment(g.aux, 1, 0, es)};
  // clang-format off
  const PlanKey key = {g.device, static_cast<int64_t>(g.dtype), static_cast<int64_t>(ti.compute),
                       static_cast<int64_t>(g.epilogue), g.aux_ld,
                       static_cast<int64_t>(p.A.op), static_cast<int64_t>(p.B.op), p.m, p.n, p.k,
                       p.A.ld, p.B.ld, p.ldc, g.batch, g.sb, g.sa, g.sc,
                       al.a, al.b, al.c, al.bias, al.aux};
  // clang-format on
  // Never destroyed (see device_handles); plans in use survive a clear through their shared_ptr.
  static auto* mu = new std::mutex();
  static auto* plans = new std::unordered_map<PlanKey, std::shared_ptr<Plan>, PlanKeyHash>();
  std::lock_guard<std::mutex> lock(*mu);
  auto it = plans->find(key);
  if (it != plans->end()) return it->second;
  if (plans->size() >= kMaxPlans) plans->clear();
  std::shared_ptr<Plan> plan = create_plan(g, p, ti, al);
  plans->emplace(key, plan);
  return plan;
}

std::string problem_str(const Gemm& g) {
  return fmt::format("{} [{}, {}] @ [{}, {}] x {} (epilogue {})", dtype_name(g.dtype), g.M, g.K, g.K, g.N,
                     g.batch, static_cast<int>(g.epilogue));
}

// Enqueues g through cuBLASLt; false when cuBLASLt has no algorithm for it.
bool run_lt(const Gemm& g, const LtProblem& p, const TypeInfo& ti) {
  // cuBLASLt's rows and columns are int32 in practice.
  if (p.m > INT32_MAX || p.n > INT32_MAX || p.k > INT32_MAX) return false;
  std::shared_ptr<Plan> plan = get_plan(g, p, ti);
  if (!plan->usable.load(std::memory_order_relaxed)) return false;
  cublasLtHandle_t h = lt_handle(g.device);
  void* ws = workspace(g.device, g.stream);
  const float one_f = 1.0f, zero_f = 0.0f;
  const double one_d = 1.0, zero_d = 0.0;
  const bool dbl = ti.scale == CUDA_R_64F;
  const void* alpha = dbl ? static_cast<const void*>(&one_d) : static_cast<const void*>(&one_f);
  const void* beta = dbl ? static_cast<const void*>(&zero_d) : static_cast<const void*>(&zero_f);
  auto call = [&] {
    return blas().cublasLtMatmul(h, plan->op, alpha, g.b, plan->la, g.a, plan->lb, beta, g.c, plan->lc, g.c,
                                 plan->lc, &plan->algo, ws, kWorkspaceBytes, g.stream);
  };
  cublasStatus_t st;
  if (g.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    // The descriptor is shared by every call with this key: its pointers are this call's
    // only while the lock is held (cublasLtMatmul reads them before it returns).
    std::lock_guard<std::mutex> lock(plan->mu);
    if (g.bias) set_desc(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
    if (g.aux) set_desc(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
    st = call();
  } else {
    st = call();
  }
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {  // refused before launching anything
    plan->usable.store(false);
    return false;
  }
  if (st != CUBLAS_STATUS_SUCCESS)
    detail::throw_cublas(st, fmt::format("cublasLtMatmul for {}", problem_str(g)).c_str(), __FILE__,
                         __LINE__);
  return true;
}

// The fallback: cuBLAS's strided-batched GEMM (any alignment, 64-bit sizes).
void run_blas(const Gemm& g, const LtProblem& p, const TypeInfo& ti) {
  with_blas(g.device, g.stream, [&](cublasHandle_t h) {
    const float one_f = 1.0f, zero_f = 0.0f;
    const double one_d = 1.0, zero_d = 0.0;
    const bool dbl = ti.scale == CUDA_R_64F;
    const cublasStatus_t st = blas().cublasGemmStridedBatchedEx_64(
        h, p.A.op, p.B.op, p.m, p.n, p.k,
        dbl ? static_cast<const void*>(&one_d) : static_cast<const void*>(&one_f), g.b, ti.data, p.A.ld, g.sb,
        g.a, ti.data, p.B.ld, g.sa,
        dbl ? static_cast<const void*>(&zero_d) : static_cast<const void*>(&zero_f), g.c, ti.data, p.ldc,
        g.sc, g.batch, ti.compute, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
      detail::throw_cublas(st, fmt::format("cublasGemmStridedBatchedEx for {}", problem_str(g)).c_str(),
                           __FILE__, __LINE__);
  });
}

// ---- small kernels ------------------------------------------------------------------------

template <typename T>
__global__ void zero_kernel(T* __restrict__ c, int64_t batch, int64_t sc, int64_t M, int64_t N, int64_t s0,
                            int64_t s1) {
  const int64_t per = M * N, n = batch * per;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bi = i / per, r = (i - bi * per) / N, col = i - bi * per - r * N;
    c[bi * sc + r * s0 + col * s1] = from_acc<T>(acc_t<T>(0));
  }
}

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
  BB_VECTOR_ACCESS(Pack)
};

template <typename A>
__device__ __forceinline__ A gelu_tanh(A x) {
  const A u = A(0.7978845608028654) * (x + A(0.044715) * x * x * x);  // sqrt(2/pi) (x + 0.044715 x^3)
  if constexpr (std::is_same_v<A, float>)
    return 0.5f * x * (1.0f + ::tanhf(u));
  else
    return A(0.5) * x * (A(1) + ::tanh(u));
}

// y [rows, C] (row stride ldy) = act(y + bias); pre (row stride ldp) receives y + bias
// when AUX. VEC elements per thread: all of C, ldy, ldp are multiples of VEC and the
// pointers are aligned to a Pack when VEC > 1. bias may be null.
template <typename T, int VEC, bool GELU, bool AUX>
__global__ void bias_act_kernel(T* __restrict__ y, int64_t ldy, T* __restrict__ pre, int64_t ldp,
                                const T* __restrict__ bias, int64_t rows, int64_t C) {
  using A = acc_t<T>;
  using P = Pack<T, VEC>;
  const int64_t cv = C / VEC, n = rows * cv;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cv, col = (i - r * cv) * VEC;
    const P v = *reinterpret_cast<const P*>(y + r * ldy + col);
    P bv{};
    if (bias) bv = *reinterpret_cast<const P*>(bias + col);
    P out{}, pv{};
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      A t = to_acc(v.v[j]);
      if (bias) t += to_acc(bv.v[j]);
      if constexpr (AUX) pv.v[j] = from_acc<T>(t);
      if constexpr (GELU) t = gelu_tanh(t);
      out.v[j] = from_acc<T>(t);
    }
    if constexpr (AUX) *reinterpret_cast<P*>(pre + r * ldp + col) = pv;
    *reinterpret_cast<P*>(y + r * ldy + col) = out;
  }
}

template <typename T, int VEC>
void launch_bias_act_vec(cudaStream_t s, T* y, int64_t ldy, T* pre, int64_t ldp, const T* bias, int64_t rows,
                         int64_t C, bool gelu) {
  constexpr int kThreads = 256;
  const unsigned grid = grid_for(rows * (C / VEC), kThreads);
  if (gelu && pre)
    BB_LAUNCH(grid, kThreads, 0, s, bias_act_kernel<T, VEC, true, true>)(y, ldy, pre, ldp, bias, rows, C);
  else if (gelu)
    BB_LAUNCH(grid, kThreads, 0, s, bias_act_kernel<T, VEC, true, false>)(y, ldy, pre, ldp, bias, rows, C);
  else
    BB_LAUNCH(grid, kThreads, 0, s, bias_act_kernel<T, VEC, false, false>)(y, ldy, pre, ldp, bias, rows, C);
  BB_CUDA_LAUNCH_CHECK();
}

// The unfused epilogue: y = act(y + bias) (bias optional), pre = y + bias when given
// (only with gelu).
void bias_act(cudaStream_t s, DType dt, void* y, int64_t ldy, void* pre, int64_t ldp, const void* bias,
              int64_t rows, int64_t C, bool gelu) {
  if (rows == 0 || C == 0) return;
  dispatch_float(dt, "gpu linear epilogue", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int kVec = static_cast<int>(16 / sizeof(T));
    T* py = static_cast<T*>(y);
    T* pp = static_cast<T*>(pre);
    const T* pb = static_cast<const T*>(bias);
    const bool vec = C % kVec == 0 && (rows == 1 || ldy % kVec == 0) && aligned16(py) &&
                     (!pb || aligned16(pb)) && (!pp || ((rows == 1 || ldp % kVec == 0) && aligned16(pp)));
    if (vec)
      launch_bias_act_vec<T, kVec>(s, py, ldy, pp, ldp, pb, rows, C, gelu);
    else
      launch_bias_act_vec<T, 1>(s, py, ldy, pp, ldp, pb, rows, C, gelu);
  });
}

// ---- the product --------------------------------------------------------------------------

// Enqueues g. Returns true when g's epilogue has been applied (fused, or none was asked),
// false when the plain product was written and the caller must apply the epilogue.
bool gemm(const Gemm& g) {
  if (g.M == 0 || g.N == 0 || g.batch == 0) return true;
  const TypeInfo ti = type_info(g.dtype, "gpu matmul");
  if (g.K == 0) {  // an empty sum: zeros, written here rather than trusting cuBLAS with k = 0
    dispatch_float(g.dtype, "gpu matmul", [&](auto tag) {
      using T = typename decltype(tag)::type;
      constexpr int kThreads = 256;
      BB_LAUNCH(grid_for(g.batch * g.M * g.N, kThreads), kThreads, 0, g.stream, zero_kernel<T>)
      (static_cast<T*>(g.c), g.batch, g.sc, g.M, g.N, g.cs0, g.cs1);
      BB_CUDA_LAUNCH_CHECK();
    });
    return g.epilogue == CUBLASLT_EPILOGUE_DEFAULT;
  }
  const LtProblem p = lt_problem(g);
  if (run_lt(g, p, ti)) return true;
  if (g.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    Gemm plain = g;
    plain.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    plain.bias = nullptr;
    plain.aux = nullptr;
    plain.aux_ld = 0;
    if (!run_lt(plain, p, ti)) run_blas(plain, p, ti);
    return false;
  }
  run_blas(g, p, ti);
  return true;
}

// A group of batch dims that one stride per tensor addresses.
struct BatchGroup {
  int64_t size, sa, sb, sc;
};

// Merges the batch dims (all but the last two) of size > 1 into groups, outer to inner:
// dims d (outer) and d+1 merge when every tensor's stride[d] == stride[d+1] * size[d+1].
std::vector<BatchGroup> batch_groups(const Tensor& c, const Tensor& a, const Tensor& b) {
  std::vector<BatchGroup> groups;
  const int64_t nb = c.dim() - 2;
  for (int64_t d = 0; d < nb; ++d) {
    const auto i = static_cast<size_t>(d);
    const BatchGroup cur{c.shape()[i], a.strides()[i], b.strides()[i], c.strides()[i]};
    if (cur.size == 1) continue;
    if (!groups.empty()) {
      BatchGroup& o = groups.back();
      if (o.sa == cur.sa * cur.size && o.sb == cur.sb * cur.size && o.sc == cur.sc * cur.size) {
        o = {o.size * cur.size, cur.sa, cur.sb, cur.sc};
        continue;
      }
    }
    groups.push_back(cur);
  }
  return groups;
}

// rows x cols view of t's elements: the leading dims must merge into one row stride.
bool rows_view(const Tensor& t, int64_t* rows, int64_t* row_stride) {
  const int64_t nd = t.dim();
  const int64_t cols = nd >= 1 ? t.shape().back() : 1;
  *rows = 1;
  *row_stride = std::max<int64_t>(cols, 1);
  bool have = false;
  for (int64_t d = nd - 2; d >= 0; --d) {  // inner to outer
    const auto i = static_cast<size_t>(d);
    const int64_t size = t.shape()[i], stride = t.strides()[i];
    if (size == 1) continue;
    if (!have) {
      *row_stride = stride;
      have = true;
    } else if (stride != *row_stride * *rows) {
      return false;
    }
    *rows *= size;
  }
  return true;
}

int64_t col_stride(const Tensor& t) { return t.dim() >= 1 ? t.strides().back() : 1; }

// The number of rows of t seen as [rows, last dim].
int64_t leading_numel(const Tensor& t) {
  int64_t n = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) n *= t.shape()[static_cast<size_t>(d)];
  return n;
}

// ---- bias gradient ------------------------------------------------------------------------

constexpr int kColTile = 32, kRowLanes = 8;

// part[chunk, col] = sum of dy[r, col] over the chunk's rows, in a fixed order: each
// thread strides over rows, then the kRowLanes lanes are added in lane order.
template <typename T, typename A>
__global__ void colsum_partial_kernel(const T* __restrict__ dy, int64_t ld, int64_t rows, int64_t C,
                                      int64_t rows_per_chunk, A* __restrict__ part) {
  __shared__ A tile[kRowLanes][kColTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColTile + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  A acc = A(0);
  if (col < C)
    for (int64_t r = r0 + ty; r < r1; r += kRowLanes) acc += to_acc(dy[r * ld + col]);
  tile[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && col < C) {
    A total = A(0);
#pragma unroll
    for (int i = 0; i < kRowLanes; ++i) total += tile[i][tx];
    part[static_cast<int64_t>(blockIdx.y) * C + col] = total;
  }
}

// db[col] = sum over chunks of part[chunk, col], in chunk order.
template <typename A, typename U>
__global__ void colsum_final_kernel(const A* __restrict__ part, int64_t chunks, int64_t C,
                                    U* __restrict__ db) {
  for (int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; col < C;
       col += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A total = A(0);
    for (int64_t i = 0; i < chunks; ++i) total += part[i * C + col];
    db[col] = from_acc<U>(static_cast<acc_t<U>>(total));
  }
}

// ---- the calls for matmul and linear ----------------------------------------------------------

// Calls f(g) for each cuBLAS call that computes c = a @ b (shapes already checked; g's
// device and stream are left to f). cuBLAS batches over the largest batch group; the
// other groups are looped over here.
template <typename F>
void for_each_call(const Tensor& c, const Tensor& a, const Tensor& b, F&& f) {
  const auto r = static_cast<size_t>(c.dim() - 2), q = static_cast<size_t>(c.dim() - 1);
  Gemm g;
  g.dtype = c.dtype();
  g.M = c.shape()[r];
  g.N = c.shape()[q];
  g.K = a.shape()[q];
  g.as0 = a.strides()[r];
  g.as1 = a.strides()[q];
  g.bs0 = b.strides()[r];
  g.bs1 = b.strides()[q];
  g.cs0 = c.strides()[r];
  g.cs1 = c.strides()[q];

  std::vector<BatchGroup> groups = batch_groups(c, a, b);
  BatchGroup inner{1, 0, 0, 0};
  if (!groups.empty()) {
    size_t big = 0;  // the largest; the innermost of equal sizes
    for (size_t i = 1; i < groups.size(); ++i)
      if (groups[i].size >= groups[big].size) big = i;
    inner = groups[big];
    groups.erase(groups.begin() + static_cast<std::ptrdiff_t>(big));
  }
  int64_t outer = 1;
  for (const BatchGroup& grp : groups) outer *= grp.size;

  const auto es = static_cast<int64_t>(c.element_size());
  const char* pa = static_cast<const char*>(a.data_ptr());
  const char* pb = static_cast<const char*>(b.data_ptr());
  char* pc = static_cast<char*>(c.data_ptr());
  for (int64_t o = 0; o < outer; ++o) {
    int64_t oa = 0, ob = 0, oc = 0, rest = o;
    for (auto it = groups.rbegin(); it != groups.rend(); ++it) {
      const int64_t i = rest % it->size;
      rest /= it->size;
      oa += i * it->sa;
      ob += i * it->sb;
      oc += i * it->sc;
    }
    for (int64_t start = 0; start < inner.size; start += kMaxBatch) {
      g.batch = std::min(kMaxBatch, inner.size - start);
      g.sa = inner.sa;
      g.sb = inner.sb;
      g.sc = inner.sc;
      g.a = pa + (oa + start * inner.sa) * es;
      g.b = pb + (ob + start * inner.sb) * es;
      g.c = pc + (oc + start * inner.sc) * es;
      f(g);
    }
  }
}

// linear's product y [rows, out] = x [rows, in] @ w^T, w^T being w [out, in] with its
// strides swapped (device, stream and epilogue left to the caller).
Gemm linear_gemm(const Tensor& y, const Tensor& x, const Tensor& w, int64_t rows, int64_t xs0, int64_t ys0) {
  Gemm g;
  g.dtype = y.dtype();
  g.M = rows;
  g.N = w.shape()[0];
  g.K = w.shape()[1];
  g.a = x.data_ptr();
  g.as0 = xs0;
  g.as1 = col_stride(x);
  g.b = w.data_ptr();
  g.bs0 = w.strides()[1];
  g.bs1 = w.strides()[0];
  g.c = y.data_ptr();
  g.cs0 = ys0;
  g.cs1 = 1;
  return g;
}

}  // namespace

// ---- the launchers (src/cuda/kernels.hpp) -------------------------------------------------------

bool matmul_strides_ok(const Tensor& t) {
  const int64_t nd = t.dim();
  if (nd < 2) return false;
  if (t.numel() == 0) return true;
  const auto& sh = t.shape();
  const auto& st = t.strides();
  const auto r = static_cast<size_t>(nd - 2), c = static_cast<size_t>(nd - 1);
  LtInput unused;
  if (!describe_input(sh[r], sh[c], st[r], st[c], &unused)) return false;
  // The batch dims must form at most two stride groups (see batch_groups).
  int groups = 0;
  int64_t inner_stride = 0;
  for (size_t d = 0; d < r; ++d) {
    if (sh[d] == 1) continue;
    if (st[d] < 0) return false;
    if (groups == 0 || inner_stride != st[d] * sh[d]) ++groups;
    inner_stride = st[d];
  }
  return groups <= 2;
}

void matmul(const Tensor& c, const Tensor& a, const Tensor& b) {
  const int64_t nd = c.dim();
  bool shapes_ok = nd >= 2 && a.dim() == nd && b.dim() == nd;
  int64_t M = 0, N = 0, K = 0;
  if (shapes_ok) {
    const auto r = static_cast<size_t>(nd - 2), q = static_cast<size_t>(nd - 1);
    M = c.shape()[r];
    N = c.shape()[q];
    K = a.shape()[q];
    shapes_ok = a.shape()[r] == M && b.shape()[r] == K && b.shape()[q] == N;
    for (size_t d = 0; d < r; ++d)
      shapes_ok = shapes_ok && a.shape()[d] == c.shape()[d] && b.shape()[d] == c.shape()[d];
  }
  BB_CHECK(shapes_ok, ShapeError,
           "gpu matmul: c is {}, a is {}, b is {}; expected [..., M, N] = [..., M, K] @ [..., K, N] with "
           "equal batch dims",
           shape_str(c.shape()), shape_str(a.shape()), shape_str(b.shape()));
  BB_CHECK(a.dtype() == c.dtype() && b.dtype() == c.dtype(), DTypeError,
           "gpu matmul: dtypes differ: c {}, a {}, b {}", dtype_name(c.dtype()), dtype_name(a.dtype()),
           dtype_name(b.dtype()));
  BB_CHECK(a.device() == c.device() && b.device() == c.device(), DeviceError,
           "gpu matmul: operands on different devices (c {}, a {}, b {})", c.device().str(), a.device().str(),
           b.device().str());
  type_info(c.dtype(), "gpu matmul");  // rejects other dtypes before anything is launched
  if (c.numel() == 0) return;

  const int device = c.device().index();
  cudaStream_t stream = stream_for(c);
  for_each_call(c, a, b, [&](Gemm& g) {
    g.device = device;
    g.stream = stream;
    gemm(g);
  });
}

void linear(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& bias, Epilogue ep,
            const Tensor& pre_gelu) {
  BB_CHECK(w.dim() == 2 && x.dim() >= 1 && y.dim() >= 1 && x.shape().back() == w.shape()[1] &&
               y.shape().back() == w.shape()[0] && leading_numel(x) == leading_numel(y),
           ShapeError,
           "gpu linear: y is {}, x is {}, weight is {}; expected y [N, out] = x [N, in] @ weight [out, in]^T",
           shape_str(y.shape()), shape_str(x.shape()), shape_str(w.shape()));
  const int64_t out = w.shape()[0];
  const DType dt = y.dtype();
  BB_CHECK(x.dtype() == dt && w.dtype() == dt, DTypeError, "gpu linear: dtypes differ: y {}, x {}, weight {}",
           dtype_name(dt), dtype_name(x.dtype()), dtype_name(w.dtype()));
  BB_CHECK(ep != Epilogue::None || !bias.defined(), ValueError, "gpu linear: a bias with Epilogue::None");
  BB_CHECK(!pre_gelu.defined() || ep == Epilogue::BiasGelu, ValueError,
           "gpu linear: pre_gelu is only written with Epilogue::BiasGelu");
  if (bias.defined()) {
    BB_CHECK(bias.dim() == 1 && bias.shape()[0] == out, ShapeError, "gpu linear: bias is {}, expected [{}]",
             shape_str(bias.shape()), out);
    BB_CHECK(bias.dtype() == dt, DTypeError, "gpu linear: bias is {}, y is {}", dtype_name(bias.dtype()),
             dtype_name(dt));
    BB_CHECK(out == 1 || bias.strides()[0] == 1, Error, "gpu linear: the bias must be contiguous");
  }
  if (pre_gelu.defined()) {
    BB_CHECK(pre_gelu.shape() == y.shape(), ShapeError, "gpu linear: pre_gelu is {}, y is {}",
             shape_str(pre_gelu.shape()), shape_str(y.shape()));
    BB_CHECK(pre_gelu.dtype() == dt, DTypeError, "gpu linear: pre_gelu is {}, y is {}",
             dtype_name(pre_gelu.dtype()), dtype_name(dt));
  }
  type_info(dt, "gpu linear");
  int64_t rows = 0, xs0 = 0, rows_y = 0, ys0 = 0, rows_p = 0, ps0 = 0;
  BB_CHECK(rows_view(x, &rows, &xs0) && rows_view(y, &rows_y, &ys0) &&
               (!pre_gelu.defined() || rows_view(pre_gelu, &rows_p, &ps0)),
           Error,
           "gpu linear: the leading dims of x, y and pre_gelu must merge into one (make them contiguous)");
  BB_CHECK(out == 1 || col_stride(y) == 1, Error, "gpu linear: y's rows must be contiguous");
  BB_CHECK(!pre_gelu.defined() || out == 1 || col_stride(pre_gelu) == 1, Error,
           "gpu linear: pre_gelu's rows must be contiguous");
  if (rows == 0 || out == 0) return;

  Gemm g = linear_gemm(y, x, w, rows, xs0, ys0);
  g.device = y.device().index();
  g.stream = stream_for(y);

  const bool gelu = ep == Epilogue::BiasGelu;
  const void* pb = bias.defined() ? bias.data_ptr() : nullptr;
  void* aux = pre_gelu.defined() ? pre_gelu.data_ptr() : nullptr;
  const bool has_epilogue = pb || gelu;
  // cuBLASLt's epilogue wants a 16-byte aligned bias (its alignment preferences do not
  // cover the bias, so a kernel may assume it) and an aux ld that is a multiple of 8.
  const bool fusable =
      has_epilogue && (!pb || aligned16(pb)) && (!aux || (aligned16(aux) && ps0 % 8 == 0 && ps0 >= out));
  if (fusable) {
    if (gelu)
      g.epilogue = pb ? (aux ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_BIAS)
                      : (aux ? CUBLASLT_EPILOGUE_GELU_AUX : CUBLASLT_EPILOGUE_GELU);
    else
      g.epilogue = CUBLASLT_EPILOGUE_BIAS;
    g.bias = pb;
    g.aux = aux;
    g.aux_ld = aux ? ps0 : 0;
  }
  const bool applied = gemm(g);
  if (has_epilogue && !(fusable && applied)) bias_act(g.stream, dt, g.c, ys0, aux, ps0, pb, rows, out, gelu);
}

void add_bias(const Tensor& y, const Tensor& bias) {
  BB_CHECK(bias.dim() == 1 && y.dim() >= 1 && y.shape().back() == bias.shape()[0], ShapeError,
           "gpu add_bias: y is {}, bias is {}", shape_str(y.shape()), shape_str(bias.shape()));
  BB_CHECK(y.dtype() == bias.dtype(), DTypeError, "gpu add_bias: y is {}, bias is {}", dtype_name(y.dtype()),
           dtype_name(bias.dtype()));
  const int64_t C = bias.shape()[0];
  int64_t rows = 0, ld = 0;
  BB_CHECK(rows_view(y, &rows, &ld) && (C == 1 || col_stride(y) == 1) && (C == 1 || bias.strides()[0] == 1),
           Error, "gpu add_bias: y's rows and the bias must be contiguous");
  if (rows == 0 || C == 0) return;
  bias_act(stream_for(y), y.dtype(), y.data_ptr(), ld, nullptr, 0, bias.data_ptr(), rows, C, false);
}

void bias_grad(const Tensor& db, const Tensor& dy) {
  const int64_t C = db.numel();
  BB_CHECK(dy.dim() >= 1 && dy.shape().back() == C, ShapeError, "gpu bias_grad: db is {}, dy is {}",
           shape_str(db.shape()), shape_str(dy.shape()));
  BB_CHECK(db.is_contiguous(), Error, "gpu bias_grad: db must be contiguous");
  int64_t rows = 0, ld = 0;
  BB_CHECK(rows_view(dy, &rows, &ld) && (C == 1 || col_stride(dy) == 1), Error,
           "gpu bias_grad: dy's rows must be contiguous");
  if (C == 0) return;
  cudaStream_t s = stream_for(db);
  // Chunks of rows: enough blocks to fill a GPU, at least 64 rows each. The split
  // depends only on (rows, C), so the sums are the same on every run and every device.
  const int64_t col_tiles = (C + kColTile - 1) / kColTile;
  int64_t chunks = std::max<int64_t>(1, 1024 / col_tiles);
  chunks = std::min<int64_t>({chunks, std::max<int64_t>(1, (rows + 63) / 64), 65535});
  const int64_t rows_per_chunk = std::max<int64_t>(1, (rows + chunks - 1) / chunks);
  chunks = std::max<int64_t>(1, (rows + rows_per_chunk - 1) / rows_per_chunk);
  BB_CHECK(col_tiles <= INT32_MAX, ShapeError, "gpu bias_grad: {} columns is too many", C);

  dispatch_float(dy.dtype(), "gpu bias_grad", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    Tensor part = empty({chunks, C}, {std::is_same_v<A, double> ? DType::F64 : DType::F32, db.device()});
    A* pp = static_cast<A*>(part.data_ptr());
    const dim3 grid(static_cast<unsigned>(col_tiles), static_cast<unsigned>(chunks));
    const dim3 block(kColTile, kRowLanes);
    BB_LAUNCH(grid, block, 0, s, colsum_partial_kernel<T, A>)
    (static_cast<const T*>(dy.data_ptr()), ld, rows, C, rows_per_chunk, pp);
    BB_CUDA_LAUNCH_CHECK();
    dispatch_float(db.dtype(), "gpu bias_grad", [&](auto out_tag) {
      using U = typename decltype(out_tag)::type;
      constexpr int kThreads = 256;
      BB_LAUNCH(grid_for(C, kThreads), kThreads, 0, s, colsum_final_kernel<A, U>)
      (pp, chunks, C, static_cast<U*>(db.data_ptr()));
      BB_CUDA_LAUNCH_CHECK();
    });
  });
}

}  // namespace barbell::gpu

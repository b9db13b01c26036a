// cuDNN's fused scaled-dot-product attention ("flash" engines) through its graph API.
//
// Loading. libcudnn is opened with dlopen at first use, never linked: libbarbell loads and
// runs everywhere else without it. Tried in order: $BARBELL_CUDNN_LIBRARY (a full path),
// "libcudnn.so.9", "libcudnn.so". Only C entry points are resolved (cudnnGetVersion,
// cudnnCreate/Destroy, cudnnSetStream, cudnnGetErrorString, cudnnGetLastErrorString, the
// cudnnBackend* functions); cudnn_graph.h supplies types and enums only. cuDNN 9.x keeps the
// backend API ABI-stable, so the runtime version is checked (9.0 <= v < 10, not 9.10.0/1)
// rather than the header's. Without cuDNN 9 headers at build time the launchers compile to
// stubs whose supported() says so. The pip wheels' libcudnn.so.9 finds its sub-libraries
// through RUNPATH $ORIGIN and libnvrtc through $ORIGIN/../../cuda_nvrtc/lib; the attention
// engines are runtime-compiled, so libnvrtc must be found (and libcuda, the driver).
//
// Handles, plans, workspace. One cudnnHandle_t per device, created on first use and never
// destroyed (like matmul.cu's cuBLAS handles); its stream is set to the caller's current
// stream under a per-device lock just before each execute. Execution plans are cached per
// problem: device, direction, dtype, B, H, Tq, Tk, D, every operand's strides, causal and
// its alignment, the scale's bits (16-byte alignment of every pointer is a precondition,
// enforced below by copies). The workspace (cuDNN's plus the backward's fp32 softmax_sum
// and dQ accumulator) comes from barbell's stream-ordered pool for each call.
//
// Causal masking is bottom-right aligned (ops.hpp). Tq == Tk is cuDNN's ordinary mask;
// Tq < Tk uses the bottom-right shift (cuDNN >= 9.3.0, and Tq, Tk multiples of 64 below
// 9.6.0; otherwise ValueError naming why, also from cudnn_attention_causal_supported);
// Tq == 1 needs no mask; Tq > Tk runs the last Tk queries as a square causal problem and
// writes zeros (lse -inf, dq 0) for the first Tq - Tk, which see no key.
//
// Operands. cuDNN wants unit stride in D, 16-byte aligned pointers and strides, and
// (cuDNN < 9.26 on SM80, NVBug 6057616, cudnn-frontend PR 304) packed [B, H, Tq]
// statistics; and cuDNN up to 9.5.0 assumed dO has O's strides (pytorch/pytorch#138354,
// #141147). Operands that break these are copied to contiguous buffers first (outputs:
// written to a temporary, then copied back); the common cases (contiguous tensors, views of
// a [B, T, 3, H, D] qkv buffer, [B, T, H, D] storage, D a multiple of 8) go in place.
//
// ==== The graphs (built in attention_cudnn_graph.hpp) =========================================
// Source: NVIDIA/cudnn-frontend, include/cudnn_frontend/node/scaled_dot_product_flash_attention.h
// (SDPANode::expand_node / SDPABackwardNode::expand_node, the 1.x releases for cuDNN 9, no
// dropout/bias/alibi/padding), its softmax.h (SoftmaxNode with stats), the causal masks of
// the same file in the releases before diagonal_band_mask.h (GEN_INDEX / CMP_GE /
// BINARY_SELECT, bottom-right: row + s_kv - s_q), node/{matmul,pointwise,reduction,reshape}.h
// and cudnn_frontend_{MatMulDesc,PointWiseDesc}.h for how each node becomes backend
// descriptors. Dims are always [b, h, s, d]-ordered; strides are the operands' own (element
// units). Every tensor declares 16-byte alignment (the frontend default). Intermediate and
// compute type fp32 unless noted; io = bf16 or f16.
//
//   uid   tensor       dims          strides                         type  role
//   1     Q            [b,h,sq,d]    q's                             io    input
//   2     K^T          [b,h,d,skv]   k's, last two swapped           io    input
//   3     V (fwd)      [b,h,skv,d]   v's                             io    input
//   3     V^T (bwd)    [b,h,d,skv]   v's, last two swapped           io    input
//   4     O            [b,h,sq,d]    o's                             io    fwd output, bwd input
//   5     Stats        [b,h,sq,1]    [h*sq, sq, 1, 1] (lse, packed)  f32   fwd output, bwd input
//   6-9   dO dQ dK dV  [b,h,s,d]     their own                       io    bwd
//   10    scale        [1,1,1,1]     [1,1,1,1]                       f32   by value
//   11    one (1.0)    [1,1,1,1]     [1,1,1,1]                       f32   by value (bwd)
//   12    mask fill    [1,1,1,1]     [1,1,1,1]                       f32   by value (causal): FLT_LOWEST
//   13,14 Tk, Tq       [1,1,1,1]     [1,1,1,1]                       i32   by value (bottom-right causal)
//   15    softmax_sum  [b,h,sq,1]    [h*sq, sq, 1, 1]                f32   workspace (bwd)
//   16    dQ_accum     [b,h,sq,d]    [h*sq*d, sq*d, d, 1]            f32   workspace (bwd), zeroed first
//   1000+ virtual: scores [b,h,sq,skv] packed; row statistics [b,h,sq,1] packed.
// (The frontend's scalars are rank 1; the backend's pointwise finalize rejects mixed ranks,
// "xDesc.getNbDims() != bDesc.getNbDims()" on 9.19, so rank 4 here.)
//
// Forward (frontend SDPANode, is_inference = false):
//   S   = matmul(Q, K^T)                         "bmm1"
//   S   = S * scale                              pointwise MUL, B = scale
//  [mask: r = GEN_INDEX(S, axis 2) (i32); bottom-right: r = r + Tk; r = r - Tq (i32 ADD/SUB);
//         c = GEN_INDEX(S, axis 3) (i32); keep = CMP_GE(r, c) (bool compute, bool out);
//         S = BINARY_SELECT(S, fill, keep)       y = keep ? S : fill]
//   M   = reduce MAX over skv of S               [b,h,sq,1]
//   E   = exp(S - M)                             SUB, EXP
//   Z   = reduce ADD over skv of E
//   Stats = M + log(Z)                           LOG, ADD(x = M, b = log Z)
//   P   = E / Z                                  DIV, output virtual in the io type (bmm2's A)
//   O   = matmul(P, V)                           "bmm2"
// So Stats is exactly the natural-log logsumexp of the scaled (masked) scores, the lse that
// ops.hpp defines (masked scores are FLT_LOWEST, whose exp underflows to 0).
//
// Backward (frontend SDPABackwardNode, cuDNN >= 9 path: no dP workspace, dQ accumulated in
// fp32; non-virtual fp32 softmax_sum as in the releases since ~1.8):
//   softmax_sum = reduce ADD over d of (dO * O), times one     MUL, reduction, MUL -> uid 15
//   S  = matmul(Q, K^T) * scale [mask as above]
//   E  = exp(S - Stats)                                         SUB, EXP   (= P)
//   P^T = reshape(E) -> [b,h,skv,sq], strides [h*sq*skv, sq*skv, 1, skv], io type
//   dV = matmul(P^T, dO)
//   dP = matmul(dO, V^T) * one                                  (the no-dropout mask)
//   dS = (dP - softmax_sum) * E * scale                         SUB, MUL, MUL
//   dS^T = reshape(dS) -> [b,h,skv,sq] as P^T, io type
//   dK = matmul(dS^T, Q)
//   K  = reshape(K^T) -> [b,h,skv,d] with k's strides (virtual, so fp32 like the frontend's)
//   dQ_accum = matmul(dS, K); dQ = IDENTITY(dQ_accum)
// Fallback variants, tried in order when no engine takes the first (shapes identical):
//   without the "* one" on dP (the newest frontend drops it when there is no dropout);
//   the older frontend's virtual softmax_sum with an F16x16-reordered dQ_accum;
//   no dQ_accum (matmul straight into dQ, the "dP workspace" path).
//   The forward's fallback uses -inf instead of FLT_LOWEST as the mask fill (newest frontend
//   for cuDNN >= 9.10).
// Engine choice: heuristics mode A (then FALLBACK), first configuration whose execution plan
// finalizes (cudnn-frontend's HEURISTICS_CHOICE build policy). BARBELL_CUDNN_DEBUG=1 prints
// each plan built (variant, workspace) to stderr. dQ_accum is zeroed before every
// execute (the frontend does it below 9.6.0; harmless above).
//
// Checked without a GPU against cuDNN 9.19 (descriptor finalization, operation-graph
// classification as SDPA_FWD, heuristics for synthetic H100/A100 device properties: the flash
// engines are chosen and reach kernel compilation for every variant above, causal and
// bottom-right included, where a malformed softmax is refused at the pattern stage). That
// checks the structure only: the runtime-compiled engines generate code from the pointwise
// chain as given, so numerics, and the older 9.x releases, need a GPU run.
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common.cuh"
#include "cuda/kernels.hpp"
#include "cuda/runtime.hpp"

#if defined(__has_include)
#if __has_include(<cudnn_version.h>) && __has_include(<cudnn_graph.h>)
#include <cudnn_version.h>
#if CUDNN_MAJOR >= 9
#define BB_HAVE_CUDNN_HEADERS 1
#include "attention_cudnn_graph.hpp"
#endif
#endif
#endif

namespace barbell::gpu {
namespace {

constexpr const char* kOp = "scaled_dot_product_attention (cudnn)";

[[maybe_unused]] std::string shape_str(const Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  s += "] strides (";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.stride(i));
  return s + ")";
}

// What the op layer already guarantees is re-checked here (cheaply) so that a direct call
// gets a clear message too. Empty when q, k, v are acceptable as a problem.
std::string input_problem(const Tensor& q, const Tensor& k, const Tensor& v) {
  if (!q.defined() || !k.defined() || !v.defined()) return "undefined input";
  if (!q.is_cuda() || !k.is_cuda() || !v.is_cuda()) return "q, k and v must be CUDA tensors";
  if (k.device() != q.device() || v.device() != q.device()) return "q, k and v must be on one device";
  if (q.dtype() != k.dtype() || q.dtype() != v.dtype()) return "q, k and v must have one dtype";
  if (q.dtype() != DType::BF16 && q.dtype() != DType::F16)
    return fmt::format("cuDNN's fused attention takes bf16 or f16, not {}", dtype_name(q.dtype()));
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4) return "q, k, v must be 4-D [B, H, T, D]";
  if (k.size(0) != q.size(0) || v.size(0) != q.size(0) || k.size(1) != q.size(1) || v.size(1) != q.size(1))
    return "q, k, v must agree in B and H";
  if (k.size(2) != v.size(2)) return "k and v must have one sequence length";
  if (k.size(3) != q.size(3) || v.size(3) != q.size(3)) return "q, k, v must have one head dim";
  const int64_t D = q.size(3);
  if (D <= 0) return "empty head dim";
  if (D % 8 != 0) return fmt::format("head dim {} is not a multiple of 8", D);
  if (D > 256) return fmt::format("head dim {} exceeds 256", D);
  if (q.size(2) == 0 || k.size(2) == 0) return "empty sequence";
  if (q.size(2) > INT32_MAX || k.size(2) > INT32_MAX) return "sequence longer than 2^31 - 1";
  // cudnn-frontend's validate_sdpa_backward_support_surface refuses s_q = s_kv = 1.
  if (q.size(2) == 1 && k.size(2) == 1) return "Tq = Tk = 1 (cuDNN's fused attention backward does not take it)";
  return {};
}

#ifdef BB_HAVE_CUDNN_HEADERS

namespace sdpa = cudnn_sdpa;

// ---- the library -----------------------------------------------------------------------------

struct Library {
  sdpa::Api api;
  bool ok = false;
  std::string error;  // why it cannot be used
};

const Library& library() {
  // Thread-safe one-time initialisation; never destroyed (plans may outlive exit order).
  static const Library* lib = [] {
    auto* l = new Library();
    std::vector<std::string> names;
    const char* env = std::getenv("BARBELL_CUDNN_LIBRARY");
    if (env && *env) names.emplace_back(env);
    names.emplace_back("libcudnn.so.9");
    names.emplace_back("libcudnn.so");
    std::string err;
    if (!sdpa::load_api_from(names, &l->api, &err)) {
      l->error = "libcudnn could not be loaded (" + err +
                 "); set BARBELL_CUDNN_LIBRARY to the full path of libcudnn.so.9 or put its directory on "
                 "LD_LIBRARY_PATH";
      return l;
    }
    const size_t v = l->api.version;
    const std::string vs = sdpa::version_str(v);
    if (v < 90000 || v >= 100000) {
      l->error = "cuDNN " + vs + " (" + l->api.path + ") is not a 9.x release; cuDNN 9 is required";
    } else if (v == 91000 || v == 91001) {
      l->error = "cuDNN " + vs + " (" + l->api.path +
                 ") has known bugs in fused bf16/f16 attention (the cuDNN frontend refuses it too); "
                 "use 9.10.2 or newer";
    } else {
      l->ok = true;
    }
    return l;
  }();
  return *lib;
}

constexpr int kMaxDevices = 64;  // as kernels/runtime.cu

struct DeviceState {
  std::mutex mu;  // guards the handle's creation and its stream setting + execute
  cudnnHandle_t handle = nullptr;
  bool tried = false;
  std::string error;
  int cc_major = -1, cc_minor = -1;
};

DeviceState& device_state(int device) {
  static auto* all = new std::array<DeviceState, kMaxDevices>();
  return (*all)[static_cast<size_t>(device)];
}

// The device's handle, created on first use (device must be current). Null with *why set
// when cuDNN cannot create one (driver too old, no such device, ...).
cudnnHandle_t device_handle(int device, std::string* why) {
  const Library& lib = library();
  if (!lib.ok) {
    *why = lib.error;
    return nullptr;
  }
  if (device < 0 || device >= kMaxDevices) {
    *why = fmt::format("cuda:{} is beyond the {} devices barbell supports", device, kMaxDevices);
    return nullptr;
  }
  DeviceState& ds = device_state(device);
  std::lock_guard<std::mutex> lock(ds.mu);
  if (!ds.tried) {
    ds.tried = true;
    cudnnHandle_t h = nullptr;
    const cudnnStatus_t st = lib.api.Create(&h);
    if (st != CUDNN_STATUS_SUCCESS) {
      ds.error = "cudnnCreate on cuda:" + std::to_string(device) + " failed: " + lib.api.status_str(st);
      const std::string e = lib.api.last_error();
      if (!e.empty()) ds.error += " [" + e + "]";
    } else {
      ds.handle = h;
    }
  }
  if (!ds.handle) *why = ds.error;
  return ds.handle;
}

void compute_capability(int device, int* major, int* minor) {
  DeviceState& ds = device_state(device);
  std::lock_guard<std::mutex> lock(ds.mu);
  if (ds.cc_major < 0) {
    int a = 0, b = 0;
    BB_CUDA_CHECK(cudaDeviceGetAttribute(&a, cudaDevAttrComputeCapabilityMajor, device));
    BB_CUDA_CHECK(cudaDeviceGetAttribute(&b, cudaDevAttrComputeCapabilityMinor, device));
    ds.cc_major = a;
    ds.cc_minor = b;
  }
  *major = ds.cc_major;
  *minor = ds.cc_minor;
}

// Everything but the causal mask: library, version, architecture, head dim. Empty when fine.
std::string platform_problem(const Tensor& q, const Tensor& k) {
  const Library& lib = library();
  if (!lib.ok) return lib.error;
  const int device = q.device().index();
  if (device < 0 || device >= kMaxDevices) return fmt::format("cuda:{} is out of range", device);
  int major = 0, minor = 0;
  try {
    compute_capability(device, &major, &minor);
  } catch (const Error& e) { return e.what(); }
  if (major < 8)
    return fmt::format("cuDNN's fused attention needs sm80 or newer; cuda:{} is sm{}{}", device, major,
                       minor);
  const int64_t D = q.size(3);
  if (D > 128 && major != 9)
    return fmt::format("head dim {} > 128 is only taken on Hopper (cuda:{} is sm{}{})", D, device, major,
                       minor);
  // Before 9.15.1 cuDNN's backward could fault (or give NaN) when Tk is not a multiple of
  // 128 unless a padding mask was added; cudnn-frontend adds one for those versions. This
  // file does not build that mask, so those lengths need 9.15.1.
  if (lib.api.version < 91501 && k.size(2) % 128 != 0)
    return fmt::format("Tk = {} is not a multiple of 128, which needs cuDNN 9.15.1 or later (loaded {})", k.size(2),
                       sdpa::version_str(lib.api.version));
  return {};
}

// Whether the causal mask for these lengths can be expressed (bottom-right alignment when
// Tq != Tk). Empty when fine.
std::string causal_problem(int64_t Tq, int64_t Tk) {
  // Tq == Tk: top-left == bottom-right. Tq == 1: the one query sees every key. Tq > Tk: the
  // first Tq - Tk queries see no key and the rest form a square problem (see the launchers).
  // With Tk = 1 the square problem is 1 x 1, which the backward does not take.
  if (Tq > Tk && Tk == 1) return "causal with Tk = 1 < Tq (cuDNN's fused attention backward does not take 1 x 1)";
  if (Tq >= Tk || Tq == 1) return {};
  const size_t v = library().api.version;
  const std::string vs = sdpa::version_str(v);
  if (v < 90300) return "bottom-right causal masking (Tq != Tk) needs cuDNN 9.3.0; loaded " + vs;
  if (v < 90600 && (Tq % 64 != 0 || Tk % 64 != 0))
    return fmt::format(
        "bottom-right causal masking with Tq ({}) or Tk ({}) not a multiple of 64 needs cuDNN 9.6.0; loaded "
        "{}",
        Tq, Tk, vs);
  return {};
}

// ---- operands ---------------------------------------------------------------------------------

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// A [.., .., .., D] operand cuDNN can read in place: unit stride in the last dim, other
// strides positive multiples of 16 bytes (dims of extent 1 excepted), 16-byte aligned.
bool usable(const Tensor& t) {
  if (t.dim() != 4) return false;
  const int64_t es = static_cast<int64_t>(t.element_size());
  if (t.size(3) > 1 && t.stride(3) != 1) return false;
  for (int i = 0; i < 3; ++i) {
    if (t.size(i) <= 1) continue;
    const int64_t s = t.stride(i);
    if (s <= 0 || (s * es) % 16 != 0) return false;
  }
  return aligned16(t.data_ptr());
}

// Strides as cuDNN sees them: dims of extent 1 get the packed stride (never used to step).
sdpa::Dims strides_of(const Tensor& t) {
  sdpa::Dims s{};
  int64_t packed = 1;
  for (int i = t.dim() - 1; i >= 0; --i) {
    s[static_cast<size_t>(i)] = t.size(i) <= 1 ? packed : t.stride(i);
    packed *= std::max<int64_t>(t.size(i), 1);
  }
  return s;
}

bool same_layout(const Tensor& a, const Tensor& b) { return strides_of(a) == strides_of(b); }

Tensor contiguous_copy(const Tensor& t) {
  Tensor c = barbell::empty(t.shape(), TensorOptions{t.dtype(), t.device(), false});
  gpu::copy(c, t);
  return c;
}

// lse as the stats tensor: F32, [B, H, Tq] packed (see the file comment), 16-byte aligned.
bool stats_usable(const Tensor& lse) {
  if (lse.dim() != 3 || lse.dtype() != DType::F32) return false;
  const int64_t H = lse.size(1), T = lse.size(2);
  if (!(lse.size(2) <= 1 || lse.stride(2) == 1)) return false;
  if (!(lse.size(1) <= 1 || lse.stride(1) == T)) return false;
  if (!(lse.size(0) <= 1 || lse.stride(0) == H * T)) return false;
  return aligned16(lse.data_ptr());
}

// An output operand: written in place when usable, else through a contiguous temporary.
struct Output {
  Tensor dst, buf;
  explicit Output(const Tensor& t, bool ok) : dst(t), buf(ok ? t : contiguous_copy_shape(t)) {}
  static Tensor contiguous_copy_shape(const Tensor& t) {
    return barbell::empty(t.shape(), TensorOptions{t.dtype(), t.device(), false});
  }
  void finish() {
    if (!buf.same(dst)) gpu::copy(dst, buf);
  }
};

// ---- plans ---------------------------------------------------------------------------------------

struct Plan {
  std::unique_ptr<sdpa::Graph> graph;  // owns every descriptor, the plan's included
  cudnnBackendDescriptor_t plan = nullptr;
  int64_t workspace = 0;
  bool backward = false;
  sdpa::FwdVariant fwd;
  sdpa::BwdVariant bwd;
  std::string variant;
};

using PlanKey = std::vector<int64_t>;
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
constexpr size_t kMaxPlans = 1024;

std::string problem_str(const sdpa::Problem& p, bool backward, float scale) {
  auto dims = [](const sdpa::Dims& d) { return fmt::format("({}, {}, {}, {})", d[0], d[1], d[2], d[3]); };
  std::string s = fmt::format("{} {} B={} H={} Tq={} Tk={} D={} scale={} {} q{} k{} v{} o{}",
                              backward ? "backward" : "forward", p.io == CUDNN_DATA_BFLOAT16 ? "bf16" : "f16",
                              p.b, p.h, p.sq, p.skv, p.d, scale,
                              p.causal ? (p.bottom_right ? "causal (bottom-right)" : "causal") : "non-causal",
                              dims(p.q), dims(p.k), dims(p.v), dims(p.o));
  if (backward) s += fmt::format(" dO{} dQ{} dK{} dV{}", dims(p.dout), dims(p.dq), dims(p.dk), dims(p.dv));
  return s;
}

PlanKey plan_key(int device, bool backward, const sdpa::Problem& p, float scale) {
  PlanKey k = {device, backward ? 1 : 0, static_cast<int64_t>(p.io), p.b, p.h, p.sq, p.skv,
               p.d,    p.causal ? 1 : 0, p.bottom_right ? 1 : 0};
  (void)scale;  // a by-value operand of the variant pack: plans do not depend on it
  auto add = [&](const sdpa::Dims& d) { k.insert(k.end(), d.begin(), d.end()); };
  add(p.q);
  add(p.k);
  add(p.v);
  add(p.o);
  add(p.stats);
  if (backward) {
    add(p.dout);
    add(p.dq);
    add(p.dk);
    add(p.dv);
  }
  return k;
}

// Builds the graph variants in order until one has an engine; throws CudaError naming
// every failure otherwise.
std::shared_ptr<Plan> build_plan(cudnnHandle_t handle, bool backward, const sdpa::Problem& p, float scale) {
  const Library& lib = library();
  const float lowest = std::numeric_limits<float>::lowest(), ninf = -std::numeric_limits<float>::infinity();
  struct Variant {
    const char* name;
    sdpa::FwdVariant fwd;
    sdpa::BwdVariant bwd;
  };
  std::vector<Variant> variants;
  if (!backward) {
    variants.push_back({"mask fill FLT_LOWEST", {lowest}, {}});
    if (p.causal) variants.push_back({"mask fill -inf", {ninf}, {}});
  } else {
    // {mask_fill, softmax_sum_virtual, dq_accum, dp_mul_one}
    // The current cudnn-frontend's lowering first, then older ones.
    variants.push_back({"fp32 softmax_sum + fp32 dQ accumulator", {}, {lowest, false, 1, false}});
    variants.push_back({"as before with dP * 1", {}, {lowest, false, 1, true}});
    variants.push_back({"virtual softmax_sum + F16x16 dQ accumulator", {}, {lowest, true, 2, true}});
    variants.push_back({"no dQ accumulator", {}, {lowest, false, 0, true}});
  }
  std::string log;
  for (const Variant& var : variants) {
    auto plan = std::make_shared<Plan>();
    plan->graph = std::make_unique<sdpa::Graph>(lib.api);
    plan->backward = backward;
    plan->fwd = var.fwd;
    plan->bwd = var.bwd;
    plan->variant = var.name;
    try {
      if (backward)
        sdpa::build_backward(*plan->graph, p, var.bwd);
      else
        sdpa::build_forward(*plan->graph, p, var.fwd);
      cudnnBackendDescriptor_t graph = plan->graph->finalize_graph(handle);
      std::string why;
      plan->plan = plan->graph->make_plan(handle, graph, &plan->workspace, &why);
      if (plan->plan) {
        const char* dbg = std::getenv("BARBELL_CUDNN_DEBUG");
        if (dbg && *dbg && *dbg != '0')
          std::fprintf(stderr, "%s: cuDNN %s plan for %s: graph variant '%s', workspace %lld bytes%s%s\n",
                       kOp, sdpa::version_str(lib.api.version).c_str(),
                       problem_str(p, backward, scale).c_str(), var.name,
                       static_cast<long long>(plan->workspace),
                       log.empty() ? "" : "; earlier variants: ", log.c_str());
        return plan;
      }
      log += fmt::format("{}[{}] {}", log.empty() ? "" : "; ", var.name, why);
    } catch (const sdpa::Failure& f) {
      log += fmt::format("{}[{}] {}", log.empty() ? "" : "; ", var.name, f.what());
    }
  }
  throw CudaError(fmt::format(
      "{}: cuDNN {} ({}) has no engine for {}: {}. (cuDNN's attention engines are compiled at run time: "
      "libnvrtc "
      "must be loadable, e.g. the pip wheel's nvidia/cuda_nvrtc/lib on LD_LIBRARY_PATH; CUDNN_LOGLEVEL_DBG=2 "
      "CUDNN_LOGDEST_DBG=stderr shows cuDNN's reasons)",
      kOp, sdpa::version_str(lib.api.version), lib.api.path, problem_str(p, backward, scale), log));
}

std::shared_ptr<Plan> get_plan(int device, cudnnHandle_t handle, bool backward, const sdpa::Problem& p,
                               float scale) {
  const PlanKey key = plan_key(device, backward, p, scale);
  // Never destroyed (see device_state); a plan in use survives a clear through its shared_ptr.
  static auto* mu = new std::mutex();
  static auto* plans = new std::unordered_map<PlanKey, std::shared_ptr<Plan>, PlanKeyHash>();
  std::lock_guard<std::mutex> lock(*mu);
  auto it = plans->find(key);
  if (it != plans->end()) return it->second;
  if (plans->size() >= kMaxPlans) plans->clear();
  std::shared_ptr<Plan> plan;
  {
    // The handle is not used by two threads at once: building waits for executes on this
    // device (and they for it). Lock order: the cache, then the device.
    std::lock_guard<std::mutex> dlock(device_state(device).mu);
    plan = build_plan(handle, backward, p, scale);
  }
  plans->emplace(key, plan);
  return plan;
}

// Temporary device memory, returned to the pool in stream order after the work queued
// behind it (as reduce.cu's Workspace).
class Scratch {
 public:
  Scratch(size_t bytes, int device) : bytes_(bytes), device_(device), p_(cuda_rt::alloc(bytes, device)) {}
  ~Scratch() { cuda_rt::free(p_, bytes_, device_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  char* get() const { return static_cast<char*>(p_); }

 private:
  size_t bytes_;
  int device_;
  void* p_;
};

inline size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// The variant pack's (uid, pointer) pairs; by-value scalars point at host memory that
// lives until execute returns.
struct Pack {
  std::vector<int64_t> uids;
  std::vector<void*> ptrs;
  void add(int64_t uid, const void* p) {
    uids.push_back(uid);
    ptrs.push_back(const_cast<void*>(p));
  }
};

void execute(int device, cudnnHandle_t handle, cudaStream_t stream, const Plan& plan, Pack& pack,
             void* workspace, const sdpa::Problem& p, float scale) {
  const Library& lib = library();
  DeviceState& ds = device_state(device);
  std::lock_guard<std::mutex> lock(ds.mu);
  cudnnStatus_t st = lib.api.SetStream(handle, stream);
  if (st != CUDNN_STATUS_SUCCESS)
    throw CudaError(fmt::format("{}: cudnnSetStream failed: {}", kOp, lib.api.status_str(st)));
  try {
    sdpa::Desc vp(&lib.api, CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
    sdpa::Graph& g = *plan.graph;
    g.set(vp.get(), CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
          static_cast<int64_t>(pack.uids.size()), pack.uids.data(), "variant pack uids");
    g.set(vp.get(), CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
          static_cast<int64_t>(pack.ptrs.size()), pack.ptrs.data(), "variant pack pointers");
    g.set(vp.get(), CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace,
          "variant pack workspace");
    g.finalize(vp.get(), "variant pack");
    st = lib.api.BackendExecute(handle, plan.plan, vp.get());
    if (st != CUDNN_STATUS_SUCCESS)
      throw sdpa::Failure(
          "cudnnBackendExecute failed: " + lib.api.status_str(st) + sdpa::Desc::detail_of(&lib.api), st);
  } catch (const sdpa::Failure& f) {
    throw CudaError(fmt::format("{}: {} ({}, graph variant '{}')", kOp, f.what(),
                                problem_str(p, plan.backward, scale), plan.variant));
  }
}

void check_or_throw(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  std::string why = input_problem(q, k, v);
  if (why.empty()) why = platform_problem(q, k);
  if (why.empty() && causal) why = causal_problem(q.size(2), k.size(2));
  if (!why.empty())
    throw ValueError(
        fmt::format("{}: {} (q {}, k {}, v {})", kOp, why, shape_str(q), shape_str(k), shape_str(v)));
}

sdpa::Problem make_problem(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  sdpa::Problem p;
  p.io = q.dtype() == DType::BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
  p.b = q.size(0);
  p.h = q.size(1);
  p.sq = q.size(2);
  p.skv = k.size(2);
  p.d = q.size(3);
  p.q = strides_of(q);
  p.k = strides_of(k);
  p.v = strides_of(v);
  p.stats = {p.h * p.sq, p.sq, 1, 1};
  // A single query sees every key under either alignment: no mask needed.
  p.causal = causal && !(p.sq == 1);
  p.bottom_right = p.causal && p.sq != p.skv;
  return p;
}

Tensor input_operand(const Tensor& t) { return usable(t) ? t : contiguous_copy(t); }

#endif  // BB_HAVE_CUDNN_HEADERS

}  // namespace

// ---- launchers -------------------------------------------------------------------------------------

bool cudnn_attention_supported(const Tensor& q, const Tensor& k, const Tensor& v, std::string* why) {
#ifdef BARBELL_CUDA_EMULATE
  (void)q, (void)k, (void)v;
  if (why) *why = "the device is barbell's host emulator of the GPU, and cuDNN's kernels need a real GPU";
  return false;
#endif
  std::string reason = input_problem(q, k, v);
#ifdef BB_HAVE_CUDNN_HEADERS
  if (reason.empty()) reason = platform_problem(q, k);
  if (reason.empty()) {
    // Creating the handle surfaces driver or device problems now rather than at the first call.
    const int device = q.device().index();
    int prev = -1;
    cudaGetDevice(&prev);
    const bool switched = prev != device && cudaSetDevice(device) == cudaSuccess;
    std::string err;
    if (!device_handle(device, &err)) reason = err;
    if (switched) cudaSetDevice(prev);
  }
#else
  if (reason.empty()) reason = "this build of barbell was compiled without cuDNN 9 headers (cudnn_graph.h)";
#endif
  if (!reason.empty() && why) *why = reason;
  return reason.empty();
}

// Not declared in cuda/kernels.hpp (the supported() signature has no causal flag): whether a
// causal mask for q's and k's lengths is possible with the loaded cuDNN.
bool cudnn_attention_causal_supported(const Tensor& q, const Tensor& k, std::string* why) {
#ifdef BB_HAVE_CUDNN_HEADERS
  if (!library().ok) {
    if (why) *why = library().error;
    return false;
  }
  const std::string reason = causal_problem(q.size(2), k.size(2));
  if (!reason.empty() && why) *why = reason;
  return reason.empty();
#else
  (void)q;
  (void)k;
  if (why) *why = "this build of barbell was compiled without cuDNN 9 headers (cudnn_graph.h)";
  return false;
#endif
}

#ifdef BB_HAVE_CUDNN_HEADERS
namespace {

void forward_impl(const Tensor& o, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                  bool causal, double scale) {
  cudaStream_t stream = stream_for(q);
  const int device = q.device().index();
  std::string err;
  cudnnHandle_t handle = device_handle(device, &err);
  if (!handle) throw CudaError(fmt::format("{}: {}", kOp, err));

  const Tensor qi = input_operand(q), ki = input_operand(k), vi = input_operand(v);
  Output out(o, usable(o));
  Output stats(lse, stats_usable(lse));

  sdpa::Problem p = make_problem(qi, ki, vi, causal);
  p.o = strides_of(out.buf);
  const float scale_f = static_cast<float>(scale);
  std::shared_ptr<Plan> plan = get_plan(device, handle, false, p, scale_f);

  const float fill = plan->fwd.mask_fill;
  const int32_t tk = static_cast<int32_t>(p.skv), tq = static_cast<int32_t>(p.sq);
  Pack pack;
  pack.add(sdpa::kQ, qi.data_ptr());
  pack.add(sdpa::kK, ki.data_ptr());
  pack.add(sdpa::kV, vi.data_ptr());
  pack.add(sdpa::kO, out.buf.data_ptr());
  pack.add(sdpa::kStats, stats.buf.data_ptr());
  pack.add(sdpa::kScale, &scale_f);
  if (p.causal) pack.add(sdpa::kMaskFill, &fill);
  if (p.bottom_right) {
    pack.add(sdpa::kShiftKv, &tk);
    pack.add(sdpa::kShiftQ, &tq);
  }
  Scratch ws(static_cast<size_t>(plan->workspace), device);
  execute(device, handle, stream, *plan, pack, ws.get(), p, scale_f);
  out.finish();
  stats.finish();
}

void backward_impl(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                   const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse, bool causal,
                   double scale) {
  cudaStream_t stream = stream_for(q);
  const int device = q.device().index();
  std::string err;
  cudnnHandle_t handle = device_handle(device, &err);
  if (!handle) throw CudaError(fmt::format("{}: {}", kOp, err));

  const Tensor qi = input_operand(q), ki = input_operand(k), vi = input_operand(v);
  Tensor oi = input_operand(o), doi = input_operand(dout);
  // cuDNN up to 9.5.0 reads dO with O's strides (pytorch/pytorch#141147: fixed in 9.5.1).
  if (library().api.version < 90501 && !same_layout(oi, doi)) {
    if (!oi.is_contiguous()) oi = contiguous_copy(oi);
    if (!doi.is_contiguous()) doi = contiguous_copy(doi);
  }
  const Tensor stats = stats_usable(lse) ? lse : contiguous_copy(lse);
  Output gq(dq, usable(dq)), gk(dk, usable(dk)), gv(dv, usable(dv));

  sdpa::Problem p = make_problem(qi, ki, vi, causal);
  p.o = strides_of(oi);
  p.dout = strides_of(doi);
  p.dq = strides_of(gq.buf);
  p.dk = strides_of(gk.buf);
  p.dv = strides_of(gv.buf);
  const float scale_f = static_cast<float>(scale);
  std::shared_ptr<Plan> plan = get_plan(device, handle, true, p, scale_f);

  // Workspace: cuDNN's, then softmax_sum [B, H, Tq] and dQ_accum [B, H, Tq, D] in fp32.
  const size_t ws_cudnn = round_up(static_cast<size_t>(plan->workspace), 256);
  const size_t sum_bytes =
      plan->bwd.softmax_sum_virtual ? 0 : round_up(static_cast<size_t>(p.b * p.h * p.sq) * 4, 256);
  const size_t acc_bytes = plan->bwd.dq_accum ? static_cast<size_t>(p.b * p.h * p.sq * p.d) * 4 : 0;
  Scratch ws(ws_cudnn + sum_bytes + acc_bytes, device);
  char* base = ws.get();
  void* softmax_sum = sum_bytes ? base + ws_cudnn : nullptr;
  void* dq_accum = acc_bytes ? base + ws_cudnn + sum_bytes : nullptr;
  if (dq_accum) BB_CUDA_CHECK(cudaMemsetAsync(dq_accum, 0, acc_bytes, stream));

  const float one = 1.0f, fill = plan->bwd.mask_fill;
  const int32_t tk = static_cast<int32_t>(p.skv), tq = static_cast<int32_t>(p.sq);
  Pack pack;
  pack.add(sdpa::kQ, qi.data_ptr());
  pack.add(sdpa::kK, ki.data_ptr());
  pack.add(sdpa::kV, vi.data_ptr());
  pack.add(sdpa::kO, oi.data_ptr());
  pack.add(sdpa::kStats, stats.data_ptr());
  pack.add(sdpa::kDO, doi.data_ptr());
  pack.add(sdpa::kDQ, gq.buf.data_ptr());
  pack.add(sdpa::kDK, gk.buf.data_ptr());
  pack.add(sdpa::kDV, gv.buf.data_ptr());
  pack.add(sdpa::kScale, &scale_f);
  pack.add(sdpa::kOne, &one);
  if (p.causal) pack.add(sdpa::kMaskFill, &fill);
  if (p.bottom_right) {
    pack.add(sdpa::kShiftKv, &tk);
    pack.add(sdpa::kShiftQ, &tq);
  }
  if (softmax_sum) pack.add(sdpa::kSoftmaxSum, softmax_sum);
  if (dq_accum) pack.add(sdpa::kDQAccum, dq_accum);
  execute(device, handle, stream, *plan, pack, ws_cudnn ? base : nullptr, p, scale_f);
  gq.finish();
  gk.finish();
  gv.finish();
}

}  // namespace
#endif  // BB_HAVE_CUDNN_HEADERS

void cudnn_attention_forward(const Tensor& o, const Tensor& lse, const Tensor& q, const Tensor& k,
                             const Tensor& v, bool causal, double scale) {
#ifdef BB_HAVE_CUDNN_HEADERS
  check_or_throw(q, k, v, causal);
  BB_CHECK(o.defined() && o.dim() == 4 && o.size(0) == q.size(0) && o.size(1) == q.size(1) &&
               o.size(2) == q.size(2) && o.size(3) == q.size(3) && o.dtype() == q.dtype() &&
               o.device() == q.device(),
           ShapeError, "{}: o {} must be [B, H, Tq, D] like q {} (same dtype and device)", kOp, shape_str(o),
           shape_str(q));
  BB_CHECK(lse.defined() && lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) &&
               lse.size(2) == q.size(2) && lse.dtype() == DType::F32 && lse.device() == q.device(),
           ShapeError, "{}: lse {} must be F32 [B, H, Tq] on q's device", kOp, shape_str(lse));
  if (q.size(0) * q.size(1) == 0) return;
  const int64_t Tq = q.size(2), Tk = k.size(2);
  if (causal && Tq > Tk) {
    // Queries 0 .. off-1 see no key: zeros and lse -inf (ops.hpp). Query off + i sees keys
    // j <= i: the last Tk queries form a square causal problem.
    const int64_t off = Tq - Tk;
    forward_impl(o.narrow(2, off, Tk), lse.narrow(2, off, Tk), q.narrow(2, off, Tk), k, v, true, scale);
    gpu::fill(o.narrow(2, 0, off), 0.0);
    gpu::fill(lse.narrow(2, 0, off), -std::numeric_limits<double>::infinity());
    return;
  }
  forward_impl(o, lse, q, k, v, causal, scale);
#else
  (void)o;
  (void)lse;
  (void)causal;
  (void)scale;
  std::string why;
  cudnn_attention_supported(q, k, v, &why);
  throw ValueError(fmt::format("{}: {}", kOp, why));
#endif
}

void cudnn_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                              const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                              const Tensor& lse, bool causal, double scale) {
#ifdef BB_HAVE_CUDNN_HEADERS
  check_or_throw(q, k, v, causal);
  auto like = [&](const Tensor& t, const Tensor& ref, const char* name, const char* refname) {
    BB_CHECK(t.defined() && t.dim() == 4 && t.shape() == ref.shape() && t.dtype() == ref.dtype() &&
                 t.device() == ref.device(),
             ShapeError, "{}: {} {} must match {} {} (shape, dtype, device)", kOp, name, shape_str(t),
             refname, shape_str(ref));
  };
  like(o, q, "o", "q");
  like(dout, q, "dout", "q");
  like(dq, q, "dq", "q");
  like(dk, k, "dk", "k");
  like(dv, v, "dv", "v");
  BB_CHECK(lse.defined() && lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) &&
               lse.size(2) == q.size(2) && lse.dtype() == DType::F32 && lse.device() == q.device(),
           ShapeError, "{}: lse {} must be F32 [B, H, Tq] on q's device", kOp, shape_str(lse));
  if (q.size(0) * q.size(1) == 0) return;
  const int64_t Tq = q.size(2), Tk = k.size(2);
  if (causal && Tq > Tk) {
    // As in forward: the first Tq - Tk queries contribute nothing (dq = 0 there, nothing to
    // dk, dv); the last Tk are a square causal problem.
    const int64_t off = Tq - Tk;
    backward_impl(dq.narrow(2, off, Tk), dk, dv, dout.narrow(2, off, Tk), q.narrow(2, off, Tk), k, v,
                  o.narrow(2, off, Tk), lse.narrow(2, off, Tk), true, scale);
    gpu::fill(dq.narrow(2, 0, off), 0.0);
    return;
  }
  backward_impl(dq, dk, dv, dout, q, k, v, o, lse, causal, scale);
#else
  (void)dq;
  (void)dk;
  (void)dv;
  (void)dout;
  (void)o;
  (void)lse;
  (void)causal;
  (void)scale;
  std::string why;
  cudnn_attention_supported(q, k, v, &why);
  throw ValueError(fmt::format("{}: {}", kOp, why));
#endif
}

}  // namespace barbell::gpu

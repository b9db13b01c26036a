// The host-only half of kernels/attention_cudnn.cu: loading libcudnn with dlopen, RAII
// backend descriptors, and the two SDPA operation graphs (forward, backward) built with
// cuDNN's backend API. No barbell or CUDA-runtime dependency beyond the cuDNN header's
// types, so a standalone program can include it and finalize the descriptors against a
// real libcudnn on a machine without a GPU (everything up to the operation graph, which
// needs a handle). The graphs themselves are documented in attention_cudnn.cu.
#pragma once

#include <cudnn_graph.h>  // types and enums only: every call goes through Api's pointers
#include <dlfcn.h>

#include <array>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace barbell::gpu::cudnn_sdpa {

// ---- the library ----------------------------------------------------------------------------

// The C functions used, resolved with dlsym (decltype only names the header's types: the
// real symbols are never referenced, so nothing links against libcudnn).
struct Api {
  decltype(&::cudnnGetVersion) GetVersion = nullptr;
  decltype(&::cudnnCreate) Create = nullptr;
  decltype(&::cudnnDestroy) Destroy = nullptr;
  decltype(&::cudnnSetStream) SetStream = nullptr;
  decltype(&::cudnnGetErrorString) GetErrorString = nullptr;
  decltype(&::cudnnGetLastErrorString) GetLastErrorString = nullptr;  // optional
  decltype(&::cudnnBackendCreateDescriptor) BackendCreateDescriptor = nullptr;
  decltype(&::cudnnBackendDestroyDescriptor) BackendDestroyDescriptor = nullptr;
  decltype(&::cudnnBackendSetAttribute) BackendSetAttribute = nullptr;
  decltype(&::cudnnBackendGetAttribute) BackendGetAttribute = nullptr;
  decltype(&::cudnnBackendFinalize) BackendFinalize = nullptr;
  decltype(&::cudnnBackendExecute) BackendExecute = nullptr;
  size_t version = 0;  // cudnnGetVersion(): major * 10000 + minor * 100 + patch
  std::string path;    // the name or path that loaded

  std::string status_str(cudnnStatus_t st) const {
    const char* s = GetErrorString ? GetErrorString(st) : nullptr;
    return (s ? std::string(s) : std::string("CUDNN_STATUS_?")) + " (" +
           std::to_string(static_cast<int>(st)) + ")";
  }
  // cuDNN's own explanation of the last failure on this thread ("" when none).
  std::string last_error() const {
    if (!GetLastErrorString) return {};
    char buf[2048] = {0};
    GetLastErrorString(buf, sizeof(buf));
    buf[sizeof(buf) - 1] = 0;
    return std::string(buf);
  }
};

inline std::string version_str(size_t v) {
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
}

// Tries each candidate (a full path or a soname) in order; on success fills *api and
// returns true, else explains every attempt in *err. The handle is never closed.
inline bool load_api_from(const std::vector<std::string>& candidates, Api* api, std::string* err) {
  std::string tried;
  for (const std::string& name : candidates) {
    if (name.empty()) continue;
    dlerror();
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      tried += (tried.empty() ? "" : "; ") + name + ": " + (e ? e : "dlopen failed");
      continue;
    }
    Api a;
    std::string missing;
    auto sym = [&](auto& fn, const char* symbol, bool required) {
      void* p = dlsym(lib, symbol);
      if (!p && required) missing += (missing.empty() ? "" : ", ") + std::string(symbol);
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
    };
    sym(a.GetVersion, "cudnnGetVersion", true);
    sym(a.Create, "cudnnCreate", true);
    sym(a.Destroy, "cudnnDestroy", true);
    sym(a.SetStream, "cudnnSetStream", true);
    sym(a.GetErrorString, "cudnnGetErrorString", true);
    sym(a.GetLastErrorString, "cudnnGetLastErrorString", false);
    sym(a.BackendCreateDescriptor, "cudnnBackendCreateDescriptor", true);
    sym(a.BackendDestroyDescriptor, "cudnnBackendDestroyDescriptor", true);
    sym(a.BackendSetAttribute, "cudnnBackendSetAttribute", true);
    sym(a.BackendGetAttribute, "cudnnBackendGetAttribute", true);
    sym(a.BackendFinalize, "cudnnBackendFinalize", true);
    sym(a.BackendExecute, "cudnnBackendExecute", true);
    if (!missing.empty()) {
      tried += (tried.empty() ? "" : "; ") + name + ": loaded but lacks " + missing;
      dlclose(lib);
      continue;
    }
    a.version = a.GetVersion();
    a.path = name;
    *api = a;
    return true;
  }
  *err = tried.empty() ? std::string("no candidate library name") : tried;
  return false;
}

// ---- descriptors --------------------------------------------------------------------------------

// A failed cuDNN call while building or running a graph; the caller adds the context.
struct Failure : std::runtime_error {
  cudnnStatus_t status;
  Failure(const std::string& what, cudnnStatus_t st) : std::runtime_error(what), status(st) {}
};

class Desc {
 public:
  Desc() = default;
  Desc(const Api* api, cudnnBackendDescriptorType_t type, const char* what) : api_(api) {
    const cudnnStatus_t st = api->BackendCreateDescriptor(type, &d_);
    if (st != CUDNN_STATUS_SUCCESS) {
      d_ = nullptr;
      throw Failure(std::string("cudnnBackendCreateDescriptor(") + what + ") failed: " + api->status_str(st) +
                        detail_of(api),
                    st);
    }
  }
  ~Desc() { reset(); }
  Desc(Desc&& o) noexcept : api_(o.api_), d_(std::exchange(o.d_, nullptr)) {}
  Desc& operator=(Desc&& o) noexcept {
    if (this != &o) {
      reset();
      api_ = o.api_;
      d_ = std::exchange(o.d_, nullptr);
    }
    return *this;
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  cudnnBackendDescriptor_t get() const { return d_; }

  static std::string detail_of(const Api* api) {
    std::string e = api->last_error();
    return e.empty() ? std::string() : " [" + e + "]";
  }

 private:
  void reset() {
    if (d_ && api_) api_->BackendDestroyDescriptor(d_);
    d_ = nullptr;
  }
  const Api* api_ = nullptr;
  cudnnBackendDescriptor_t d_ = nullptr;
};

using Dims = std::array<int64_t, 4>;

// Builds one operation graph: owns every descriptor it creates (the tensors, the
// operations and their sub-descriptors) for as long as the plan made from it lives.
class Graph {
 public:
  explicit Graph(const Api& api) : api_(&api) {}

  const Api& api() const { return *api_; }

  cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t type, const char* what) {
    keep_.emplace_back(api_, type, what);
    return keep_.back().get();
  }
  void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
           int64_t n, const void* value, const char* what) {
    const cudnnStatus_t st = api_->BackendSetAttribute(d, name, type, n, value);
    if (st != CUDNN_STATUS_SUCCESS)
      throw Failure(std::string("cudnnBackendSetAttribute(") + what + ", attribute " +
                        std::to_string(static_cast<int>(name)) + ") failed: " + api_->status_str(st) +
                        Desc::detail_of(api_),
                    st);
  }
  void set_desc(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendDescriptor_t v,
                const char* what) {
    set(d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v, what);
  }
  void finalize(cudnnBackendDescriptor_t d, const char* what) {
    const cudnnStatus_t st = api_->BackendFinalize(d);
    if (st != CUDNN_STATUS_SUCCESS)
      throw Failure(std::string("cudnnBackendFinalize(") + what + ") failed: " + api_->status_str(st) +
                        Desc::detail_of(api_),
                    st);
  }

  // A tensor descriptor with dims/strides of rank n (always 4 here); alignment 16 bytes
  // as the frontend declares for every tensor (the launcher checks the real pointers).
  cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t dtype, const int64_t* dims,
                                  const int64_t* strides, int64_t n, bool is_virtual, bool by_value = false,
                                  cudnnBackendTensorReordering_t reorder = CUDNN_TENSOR_REORDERING_NONE) {
    cudnnBackendDescriptor_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor");
    const int64_t alignment = 16;
    set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dtype, "tensor data type");
    set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, n, dims, "tensor dims");
    set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, n, strides, "tensor strides");
    set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor uid");
    set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment, "tensor alignment");
    const bool virt = is_virtual;
    set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt, "tensor is_virtual");
    if (by_value) {
      const bool bv = true;
      set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &bv, "tensor is_by_value");
    }
    if (reorder != CUDNN_TENSOR_REORDERING_NONE)
      set(t, CUDNN_ATTR_TENSOR_REORDERING_MODE, CUDNN_TYPE_TENSOR_REORDERING_MODE, 1, &reorder,
          "tensor reordering");
    finalize(t, "tensor");
    return t;
  }
  cudnnBackendDescriptor_t tensor4(int64_t uid, cudnnDataType_t dtype, const Dims& dims, const Dims& strides,
                                   bool is_virtual,
                                   cudnnBackendTensorReordering_t reorder = CUDNN_TENSOR_REORDERING_NONE) {
    return tensor(uid, dtype, dims.data(), strides.data(), 4, is_virtual, false, reorder);
  }
  // A virtual intermediate with a fresh uid.
  cudnnBackendDescriptor_t virt(cudnnDataType_t dtype, const Dims& dims, const Dims& strides) {
    return tensor4(next_virtual_uid_++, dtype, dims, strides, true);
  }
  // A pass-by-value scalar; its value is a host pointer in the variant pack. The
  // frontend's Tensor_attributes(scalar) is rank 1 ({1}), but the backend's pointwise
  // finalize demands equal ranks ("xDesc.getNbDims() != bDesc.getNbDims()", seen with
  // 9.19), so it is rank 4 here, all ones, as TransformerEngine's cuDNN 8.9 graphs wrote it.
  cudnnBackendDescriptor_t scalar(int64_t uid, cudnnDataType_t dtype) {
    const int64_t ones[4] = {1, 1, 1, 1};
    return tensor(uid, dtype, ones, ones, 4, false, true);
  }

  // y = mode(x [, b] [, t]). compute: CUDNN_ATTR_POINTWISE_MATH_PREC; axis only for
  // GEN_INDEX. ALPHA1/ALPHA2 = 1 as the frontend's OperationBuilder always sets them.
  void pointwise(cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                 cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y,
                 cudnnDataType_t compute = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    cudnnBackendDescriptor_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise");
    set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
    set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &compute, "pointwise math prec");
    if (mode == CUDNN_POINTWISE_GEN_INDEX)
      set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
    finalize(pw, "pointwise");
    cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise op");
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw, "pointwise op descriptor");
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x, "pointwise op x");
    if (b) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b, "pointwise op b");
    if (t) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t, "pointwise op t");
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y, "pointwise op y");
    const float one = 1.0f;
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one, "pointwise op alpha1");
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one, "pointwise op alpha2");
    finalize(op, "pointwise op");
    ops_.push_back(op);
  }
  // c = a @ b over the last two dims (batch dims broadcast); fp32 compute.
  void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c) {
    cudnnBackendDescriptor_t mm = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul");
    const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    const double padding = 0.0;  // MatMulDescBuilder().setPaddingValue(0.0), as the frontend node does
    set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute, "matmul compute type");
    set(mm, CUDNN_ATTR_MATMUL_PADDING_VALUE, CUDNN_TYPE_DOUBLE, 1, &padding, "matmul padding value");
    finalize(mm, "matmul");
    cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "matmul op");
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a, "matmul op a");
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b, "matmul op b");
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c, "matmul op c");
    set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm, "matmul op descriptor");
    finalize(op, "matmul op");
    ops_.push_back(op);
  }
  // y = reduce(x) over the dims where y has extent 1; fp32 compute.
  void reduction(cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t rd = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction");
    const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    set(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode,
        "reduction operator");
    set(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute, "reduction compute type");
    finalize(rd, "reduction");
    cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "reduction op");
    set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x, "reduction op x");
    set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y, "reduction op y");
    set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, rd, "reduction op descriptor");
    finalize(op, "reduction op");
    ops_.push_back(op);
  }
  // y = x seen through y's dims and strides (a transpose here).
  void reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, "reshape op");
    set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x, "reshape op x");
    set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y, "reshape op y");
    finalize(op, "reshape op");
    ops_.push_back(op);
  }

  const std::vector<cudnnBackendDescriptor_t>& ops() const { return ops_; }

  // The operation graph over every operation added so far (needs a live handle).
  cudnnBackendDescriptor_t finalize_graph(cudnnHandle_t handle) {
    cudnnBackendDescriptor_t g = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    set(g, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(ops_.size()),
        ops_.data(), "operation graph ops");
    set(g, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "operation graph handle");
    finalize(g, "operation graph");
    return g;
  }

  // Heuristics (mode A, then FALLBACK) and the first engine configuration whose execution
  // plan finalizes. Returns the plan, or null with every failure described in *why.
  cudnnBackendDescriptor_t make_plan(cudnnHandle_t handle, cudnnBackendDescriptor_t graph, int64_t* workspace,
                                     std::string* why) {
    std::string log;
    auto note = [&](const std::string& s) { log += (log.empty() ? "" : "; ") + s; };
    const cudnnBackendHeurMode_t modes[] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
    for (cudnnBackendHeurMode_t mode : modes) {
      const std::string mname = mode == CUDNN_HEUR_MODE_A ? "heuristics mode A" : "heuristics mode FALLBACK";
      std::vector<cudnnBackendDescriptor_t> cfgs;
      try {
        cudnnBackendDescriptor_t heur = make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "engine heuristics");
        set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph, "heuristics graph");
        set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
        finalize(heur, "engine heuristics");
        int64_t count = 0;
        cudnnStatus_t st = api_->BackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                     CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr);
        if (st != CUDNN_STATUS_SUCCESS)
          throw Failure("querying the number of heuristic results failed: " + api_->status_str(st) +
                            Desc::detail_of(api_),
                        st);
        if (count <= 0) {
          note(mname + ": no engine configuration");
          continue;
        }
        for (int64_t i = 0; i < count; ++i)
          cfgs.push_back(make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config"));
        int64_t got = 0;
        st = api_->BackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                       count, &got, cfgs.data());
        if (st != CUDNN_STATUS_SUCCESS)
          throw Failure(
              "reading the heuristic results failed: " + api_->status_str(st) + Desc::detail_of(api_), st);
        cfgs.resize(static_cast<size_t>(got < count ? got : count));
      } catch (const Failure& f) {
        note(mname + ": " + f.what());
        continue;
      }
      for (size_t i = 0; i < cfgs.size(); ++i) {
        cudnnBackendDescriptor_t plan = make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "execution plan");
        cudnnStatus_t st =
            api_->BackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
        if (st == CUDNN_STATUS_SUCCESS)
          st = api_->BackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                         CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]);
        if (st == CUDNN_STATUS_SUCCESS) st = api_->BackendFinalize(plan);
        if (st != CUDNN_STATUS_SUCCESS) {
          if (i < 4)
            note(mname + " config " + std::to_string(i) + ": " + api_->status_str(st) +
                 Desc::detail_of(api_));
          continue;
        }
        int64_t ws = 0, n = 0;
        st = api_->BackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                       &n, &ws);
        if (st != CUDNN_STATUS_SUCCESS) {
          note(mname + " config " + std::to_string(i) +
               ": workspace size query failed: " + api_->status_str(st));
          continue;
        }
        *workspace = ws;
        return plan;
      }
      note(mname + ": none of " + std::to_string(cfgs.size()) + " engine configurations finalized");
    }
    *why = log;
    return nullptr;
  }

 private:
  const Api* api_;
  std::vector<Desc> keep_;
  std::vector<cudnnBackendDescriptor_t> ops_;
  int64_t next_virtual_uid_ = 1000;
};

// ---- the SDPA graphs --------------------------------------------------------------------------------

// Unique ids of the tensors that appear in the variant pack (virtual ones start at 1000).
enum Uid : int64_t {
  kQ = 1,
  kK = 2,
  kV = 3,
  kO = 4,
  kStats = 5,
  kDO = 6,
  kDQ = 7,
  kDK = 8,
  kDV = 9,
  kScale = 10,       // by value, float
  kOne = 11,         // by value, float 1.0 (backward)
  kMaskFill = 12,    // by value, float: what masked scores become
  kShiftKv = 13,     // by value, int32 Tk (bottom-right causal)
  kShiftQ = 14,      // by value, int32 Tq (bottom-right causal)
  kSoftmaxSum = 15,  // workspace, float [B, H, Tq, 1] (backward)
  kDQAccum = 16,     // workspace, float [B, H, Tq, D] (backward)
};

// One problem: element strides of every [B, H, T, D] operand in (b, h, t, d) order.
struct Problem {
  cudnnDataType_t io = CUDNN_DATA_BFLOAT16;  // Q, K, V, O, dO, dQ, dK, dV
  int64_t b = 0, h = 0, sq = 0, skv = 0, d = 0;
  Dims q{}, k{}, v{}, o{}, stats{};  // stats: [B, H, Tq, 1]
  Dims dout{}, dq{}, dk{}, dv{};     // backward only
  bool causal = false;
  bool bottom_right = false;  // causal with the diagonal shifted by Tk - Tq (Tq != Tk)
};

struct FwdVariant {
  float mask_fill = std::numeric_limits<float>::lowest();
};

struct BwdVariant {
  float mask_fill = std::numeric_limits<float>::lowest();
  bool softmax_sum_virtual = false;  // newer frontends: a non-virtual fp32 workspace tensor
  int dq_accum = 1;        // 0: matmul writes dQ; 1: fp32 accumulator; 2: the same, F16x16-reordered
  bool dp_mul_one = true;  // dP * 1.0 (the no-dropout stand-in for the dropout mask)
};

inline Dims scores_dims(const Problem& p) { return {p.b, p.h, p.sq, p.skv}; }
inline Dims scores_strides(const Problem& p) { return {p.h * p.sq * p.skv, p.sq * p.skv, p.skv, 1}; }
inline Dims rows_dims(const Problem& p) { return {p.b, p.h, p.sq, 1}; }
inline Dims rows_strides(const Problem& p) { return {p.h * p.sq, p.sq, 1, 1}; }
inline Dims swap23(const Dims& x) { return {x[0], x[1], x[3], x[2]}; }

// The causal mask of the scores s (fp32 [B, H, Tq, Tk]): row index (+ Tk - Tq when
// bottom-right) >= column index keeps the score, else it becomes mask_fill.
inline cudnnBackendDescriptor_t causal_mask(Graph& g, const Problem& p, cudnnBackendDescriptor_t s) {
  const Dims sd = scores_dims(p), ss = scores_strides(p);
  cudnnBackendDescriptor_t row = g.virt(CUDNN_DATA_INT32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, row, CUDNN_DATA_INT32, 2);
  if (p.bottom_right) {
    cudnnBackendDescriptor_t skv = g.scalar(kShiftKv, CUDNN_DATA_INT32);
    cudnnBackendDescriptor_t row_plus = g.virt(CUDNN_DATA_INT32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_ADD, row, skv, nullptr, row_plus, CUDNN_DATA_INT32);
    cudnnBackendDescriptor_t sq = g.scalar(kShiftQ, CUDNN_DATA_INT32);
    cudnnBackendDescriptor_t row_shift = g.virt(CUDNN_DATA_INT32, sd, ss);
    g.pointwise(CUDNN_POINTWISE_SUB, row_plus, sq, nullptr, row_shift, CUDNN_DATA_INT32);
    row = row_shift;
  }
  cudnnBackendDescriptor_t col = g.virt(CUDNN_DATA_INT32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, col, CUDNN_DATA_INT32, 3);
  cudnnBackendDescriptor_t keep = g.virt(CUDNN_DATA_BOOLEAN, sd, ss);
  g.pointwise(CUDNN_POINTWISE_CMP_GE, row, col, nullptr, keep, CUDNN_DATA_BOOLEAN);
  cudnnBackendDescriptor_t fill = g.scalar(kMaskFill, CUDNN_DATA_FLOAT);
  cudnnBackendDescriptor_t out = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, s, fill, keep, out);  // out = keep ? s : fill
  return out;
}

inline void build_forward(Graph& g, const Problem& p, const FwdVariant& /*variant*/) {
  const Dims sd = scores_dims(p), ss = scores_strides(p), rd = rows_dims(p), rs = rows_strides(p);
  cudnnBackendDescriptor_t Q = g.tensor4(kQ, p.io, {p.b, p.h, p.sq, p.d}, p.q, false);
  cudnnBackendDescriptor_t KT = g.tensor4(kK, p.io, {p.b, p.h, p.d, p.skv}, swap23(p.k), false);
  cudnnBackendDescriptor_t V = g.tensor4(kV, p.io, {p.b, p.h, p.skv, p.d}, p.v, false);
  cudnnBackendDescriptor_t O = g.tensor4(kO, p.io, {p.b, p.h, p.sq, p.d}, p.o, false);
  cudnnBackendDescriptor_t Stats = g.tensor4(kStats, CUDNN_DATA_FLOAT, rd, p.stats, false);
  cudnnBackendDescriptor_t scale = g.scalar(kScale, CUDNN_DATA_FLOAT);

  cudnnBackendDescriptor_t S = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.matmul(Q, KT, S);  // bmm1
  cudnnBackendDescriptor_t Ss = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, S, scale, nullptr, Ss);  // attn_scale
  if (p.causal) Ss = causal_mask(g, p, Ss);
  // softmax with stats (frontend SoftmaxNode, has_stats(true), has_M_Zinv(false))
  cudnnBackendDescriptor_t M = g.virt(CUDNN_DATA_FLOAT, rd, rs);
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, Ss, M);
  cudnnBackendDescriptor_t sub = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_SUB, Ss, M, nullptr, sub);
  cudnnBackendDescriptor_t E = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_EXP, sub, nullptr, nullptr, E);
  cudnnBackendDescriptor_t Z = g.virt(CUDNN_DATA_FLOAT, rd, rs);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, E, Z);
  cudnnBackendDescriptor_t logZ = g.virt(CUDNN_DATA_FLOAT, rd, rs);
  g.pointwise(CUDNN_POINTWISE_LOG, Z, nullptr, nullptr, logZ);
  g.pointwise(CUDNN_POINTWISE_ADD, M, logZ, nullptr, Stats);  // Stats = M + log(Z)
  cudnnBackendDescriptor_t P = g.virt(p.io, sd, ss);          // bmm2's A in the I/O type
  g.pointwise(CUDNN_POINTWISE_DIV, E, Z, nullptr, P);
  g.matmul(P, V, O);  // bmm2
}

inline void build_backward(Graph& g, const Problem& p, const BwdVariant& variant) {
  const Dims sd = scores_dims(p), ss = scores_strides(p), rd = rows_dims(p), rs = rows_strides(p);
  const Dims td = {p.b, p.h, p.skv, p.sq},
             ts = {p.h * p.sq * p.skv, p.sq * p.skv, 1, p.skv};  // transposed scores
  cudnnBackendDescriptor_t Q = g.tensor4(kQ, p.io, {p.b, p.h, p.sq, p.d}, p.q, false);
  cudnnBackendDescriptor_t KT = g.tensor4(kK, p.io, {p.b, p.h, p.d, p.skv}, swap23(p.k), false);
  cudnnBackendDescriptor_t VT = g.tensor4(kV, p.io, {p.b, p.h, p.d, p.skv}, swap23(p.v), false);
  cudnnBackendDescriptor_t O = g.tensor4(kO, p.io, {p.b, p.h, p.sq, p.d}, p.o, false);
  cudnnBackendDescriptor_t dO = g.tensor4(kDO, p.io, {p.b, p.h, p.sq, p.d}, p.dout, false);
  cudnnBackendDescriptor_t Stats = g.tensor4(kStats, CUDNN_DATA_FLOAT, rd, p.stats, false);
  cudnnBackendDescriptor_t dQ = g.tensor4(kDQ, p.io, {p.b, p.h, p.sq, p.d}, p.dq, false);
  cudnnBackendDescriptor_t dK = g.tensor4(kDK, p.io, {p.b, p.h, p.skv, p.d}, p.dk, false);
  cudnnBackendDescriptor_t dV = g.tensor4(kDV, p.io, {p.b, p.h, p.skv, p.d}, p.dv, false);
  cudnnBackendDescriptor_t scale = g.scalar(kScale, CUDNN_DATA_FLOAT);
  cudnnBackendDescriptor_t one = g.scalar(kOne, CUDNN_DATA_FLOAT);

  // softmax_sum = rowsum(dO * O) * 1
  const Dims od = {p.b, p.h, p.sq, p.d}, os = {p.h * p.sq * p.d, p.sq * p.d, p.d, 1};
  cudnnBackendDescriptor_t dOO = g.virt(CUDNN_DATA_FLOAT, od, os);
  g.pointwise(CUDNN_POINTWISE_MUL, dO, O, nullptr, dOO);
  cudnnBackendDescriptor_t rowsum = g.virt(CUDNN_DATA_FLOAT, rd, rs);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, dOO, rowsum);
  cudnnBackendDescriptor_t softmax_sum = variant.softmax_sum_virtual
                                             ? g.virt(CUDNN_DATA_FLOAT, rd, rs)
                                             : g.tensor4(kSoftmaxSum, CUDNN_DATA_FLOAT, rd, rs, false);
  g.pointwise(CUDNN_POINTWISE_MUL, rowsum, one, nullptr, softmax_sum);

  // P = exp(S * scale [masked] - Stats)
  cudnnBackendDescriptor_t S = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.matmul(Q, KT, S);
  cudnnBackendDescriptor_t Ss = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, S, scale, nullptr, Ss);
  if (p.causal) Ss = causal_mask(g, p, Ss);
  cudnnBackendDescriptor_t Sm = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_SUB, Ss, Stats, nullptr, Sm);
  cudnnBackendDescriptor_t E = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_EXP, Sm, nullptr, nullptr, E);

  // dV = P^T @ dO
  cudnnBackendDescriptor_t PT = g.virt(p.io, td, ts);
  g.reshape(E, PT);
  g.matmul(PT, dO, dV);

  // dS = (dO @ V^T [* 1] - softmax_sum) * P * scale
  cudnnBackendDescriptor_t dP = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.matmul(dO, VT, dP);
  if (variant.dp_mul_one) {
    cudnnBackendDescriptor_t dP1 = g.virt(CUDNN_DATA_FLOAT, sd, ss);
    g.pointwise(CUDNN_POINTWISE_MUL, dP, one, nullptr, dP1);
    dP = dP1;
  }
  cudnnBackendDescriptor_t dPs = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_SUB, dP, softmax_sum, nullptr, dPs);
  cudnnBackendDescriptor_t dSu = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, dPs, E, nullptr, dSu);
  cudnnBackendDescriptor_t dS = g.virt(CUDNN_DATA_FLOAT, sd, ss);
  g.pointwise(CUDNN_POINTWISE_MUL, dSu, scale, nullptr, dS);

  // dK = dS^T @ Q
  cudnnBackendDescriptor_t dST = g.virt(p.io, td, ts);
  g.reshape(dS, dST);
  g.matmul(dST, Q, dK);

  // dQ = dS @ K (K recovered from K^T by a reshape; virtual, so the intermediate type)
  cudnnBackendDescriptor_t Kr = g.virt(CUDNN_DATA_FLOAT, {p.b, p.h, p.skv, p.d}, p.k);
  g.reshape(KT, Kr);
  if (variant.dq_accum == 0) {
    g.matmul(dS, Kr, dQ);
  } else {
    cudnnBackendDescriptor_t acc =
        g.tensor4(kDQAccum, CUDNN_DATA_FLOAT, od, os, false,
                  variant.dq_accum == 2 ? CUDNN_TENSOR_REORDERING_F16x16 : CUDNN_TENSOR_REORDERING_NONE);
    g.matmul(dS, Kr, acc);
    g.pointwise(CUDNN_POINTWISE_IDENTITY, acc, nullptr, nullptr, dQ);
  }
}

}  // namespace barbell::gpu::cudnn_sdpa

// cuBLASLt emulated on the emulated GPU: the C API subset barbell calls (kernels/matmul.cu), with
// the signatures of the real cublasLt.h, validated as the cuBLASLt reference documents.
//
// Sources: the cuBLASLt API reference (docs.nvidia.com/cuda/cublas, "Using the cuBLASLt API":
// cublasLtCreate(), cublasLtMatmul(), cublasLtMatmulAlgoGetHeuristic(), the descriptor
// create/destroy/set functions, cublasLtMatmulDescAttributes_t, cublasLtMatrixLayoutAttribute_t,
// cublasLtMatmulPreferenceAttributes_t, cublasLtEpilogue_t, cublasLtReductionScheme_t) and the
// same documentation in cublasLt.h (cuBLAS 13.1, CUDA 13.0), cited below as [doc: section].
//
// The emulated algorithms. The heuristic chooses among a few algorithms with the properties that
// matter to a caller: VEC16 assumes 16-byte aligned matrices, leading dimensions and batch
// strides (and bias / aux), SCALAR only element alignment; each comes without split-K and, for
// long reductions into few output tiles, with split-K in each reduction scheme (the workspace
// and the rounding of the partials follow the scheme). A call whose pointers break the chosen
// algorithm's assumption faults on the device, as the GPU kernel would ("misaligned address").
#include <cublasLt.h>
#include <cublas_api.h>  // CUBLAS_VERSION

#include <cstring>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_set>
#include <vector>

#include "emu_api.hpp"
#include "gemm_emu.hpp"

// The opaque handle type cublasLt.h declares.
struct cublasLtContext {
  int unused = 0;
};

namespace barbell::emu::lt {
namespace {

using gemm::Compute;
using gemm::Scheme;

// ---- descriptor state, kept in the descriptors' own storage -----------------------------------

struct LayoutState {
  int32_t type;
  int32_t order;
  int32_t batch;
  uint64_t rows, cols;
  int64_t ld, stride;
};
static_assert(sizeof(LayoutState) <= sizeof(cublasLtMatrixLayoutOpaque_t), "layout state must fit");

struct DescState {
  int32_t compute, scale, pointer_mode;
  int32_t transa, transb, transc;
  uint32_t epilogue;
  int32_t bias_type, aux_type;
  const void* bias;
  int64_t bias_stride;
  void* aux;
  int64_t aux_ld, aux_stride;
};
static_assert(sizeof(DescState) <= sizeof(cublasLtMatmulDescOpaque_t), "matmul desc state must fit");

struct PrefState {
  uint32_t search_mode;
  uint32_t reduction_mask;
  uint64_t max_workspace;
  uint32_t align[4];  // A, B, C, D
};
static_assert(sizeof(PrefState) <= sizeof(cublasLtMatmulPreferenceOpaque_t), "preference state must fit");

enum class Kind : uint32_t { Vec16 = 1, Scalar = 2 };
constexpr uint64_t kAlgoMagic = 0x62626c74616c676full;  // marks an algo this emulator filled in

struct AlgoState {
  uint64_t magic;
  Kind kind;
  uint32_t splits;
  Scheme scheme;
  uint32_t pad;
};
static_assert(sizeof(AlgoState) <= sizeof(cublasLtMatmulAlgo_t), "algo state must fit");

template <typename S, typename O>
S get(const O* o) {
  S s;
  std::memcpy(&s, o->data, sizeof s);
  return s;
}
template <typename S, typename O>
void put(O* o, const S& s) {
  std::memcpy(o->data, &s, sizeof s);
}

// Live handles and descriptors: a destroyed or foreign pointer is refused instead of read.
class Live {
 public:
  void add(const void* p) {
    std::lock_guard<std::mutex> l(mu_);
    set_.insert(p);
  }
  bool remove(const void* p) {
    std::lock_guard<std::mutex> l(mu_);
    return set_.erase(p) == 1;
  }
  bool has(const void* p) {
    std::lock_guard<std::mutex> l(mu_);
    return p && set_.count(p) == 1;
  }

 private:
  std::mutex mu_;
  std::unordered_set<const void*> set_;
};
Live& live_handles() {
  static auto* l = new Live();
  return *l;
}
Live& live_layouts() {
  static auto* l = new Live();
  return *l;
}
Live& live_descs() {
  static auto* l = new Live();
  return *l;
}
Live& live_prefs() {
  static auto* l = new Live();
  return *l;
}

// ---- statuses -----------------------------------------------------------------------------------

cublasStatus_t fail(const char* call, cublasStatus_t st, const std::string& why) {
  const bool loud = st == CUBLAS_STATUS_INVALID_VALUE || st == CUBLAS_STATUS_NOT_INITIALIZED;
  gemm::set_last_error(std::string(call) + ": " + gemm::status_name(st) + ": " + why, loud);
  return st;
}
cublasStatus_t ok() {
  gemm::set_last_error("", false);
  return CUBLAS_STATUS_SUCCESS;
}

// Copies an attribute value in, after the check every *SetAttribute makes [doc: "CUBLAS_STATUS_
// INVALID_VALUE if buf is NULL or sizeInBytes doesn't match size of internal storage for
// selected attribute"].
template <typename T>
cublasStatus_t set_value(const char* call, const char* attr, T* dst, const void* buf, size_t size) {
  if (!buf) return fail(call, CUBLAS_STATUS_INVALID_VALUE, std::string(attr) + ": buf is NULL");
  if (size != sizeof(T))
    return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                std::string(attr) + ": sizeInBytes is " + std::to_string(size) + ", the attribute holds " +
                    std::to_string(sizeof(T)));
  std::memcpy(dst, buf, sizeof(T));
  return ok();
}

cublasStatus_t not_emulated(const char* call, int attr) {
  return fail(call, CUBLAS_STATUS_NOT_SUPPORTED,
              "attribute " + std::to_string(attr) +
                  " is not emulated (barbell's emulator implements the ones barbell sets)");
}

// ---- the problem a descriptor set describes ---------------------------------------------------

struct Problem {
  DescState desc;
  LayoutState A, B, C, D;
  Compute compute;
  int64_t m, n, k, batch;
  bool ta, tb, bias, gelu, aux;
};

bool known_epilogue(uint32_t e, bool* bias, bool* gelu, bool* aux) {
  switch (e) {
    case CUBLASLT_EPILOGUE_DEFAULT: *bias = false, *gelu = false, *aux = false; return true;
    case CUBLASLT_EPILOGUE_BIAS: *bias = true, *gelu = false, *aux = false; return true;
    case CUBLASLT_EPILOGUE_GELU: *bias = false, *gelu = true, *aux = false; return true;
    case CUBLASLT_EPILOGUE_GELU_BIAS: *bias = true, *gelu = true, *aux = false; return true;
    case CUBLASLT_EPILOGUE_GELU_AUX: *bias = false, *gelu = true, *aux = true; return true;
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: *bias = true, *gelu = true, *aux = true; return true;
    default: return false;
  }
}

size_t es(int32_t type) { return gemm::element_size(static_cast<cudaDataType_t>(type)); }

std::string layout_str(const char* name, const LayoutState& l) {
  std::ostringstream os;
  os << name << " [" << l.rows << " x " << l.cols << ", ld " << l.ld << ", " << gemm::type_name(l.type);
  if (l.batch != 1) os << ", batch " << l.batch << " stride " << l.stride;
  os << "]";
  return os.str();
}

// The checks cublasLtMatmul() and cublasLtMatmulAlgoGetHeuristic() share, on the descriptors only.
cublasStatus_t check_problem(const char* call, cublasLtHandle_t h, cublasLtMatmulDesc_t desc,
                             cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                             cublasLtMatrixLayout_t d, Problem* p) {
  // [doc: cublasLtMatmul(): "CUBLAS_STATUS_NOT_INITIALIZED if cuBLASLt handle has not been initialized"]
  if (!live_handles().has(h))
    return fail(call, CUBLAS_STATUS_NOT_INITIALIZED, "the handle is not a live cublasLtHandle_t");
  // [doc: cublasLtMatmul(): "CUBLAS_STATUS_INVALID_VALUE if the parameters are unexpectedly NULL"]
  if (!live_descs().has(desc))
    return fail(call, CUBLAS_STATUS_INVALID_VALUE, "computeDesc is not a live matmul descriptor");
  const cublasLtMatrixLayout_t ls[4] = {a, b, c, d};
  const char* names[4] = {"Adesc", "Bdesc", "Cdesc", "Ddesc"};
  for (int i = 0; i < 4; ++i)
    if (!live_layouts().has(ls[i]))
      return fail(call, CUBLAS_STATUS_INVALID_VALUE, std::string(names[i]) + " is not a live matrix layout");
  p->desc = get<DescState>(desc);
  p->A = get<LayoutState>(a);
  p->B = get<LayoutState>(b);
  p->C = get<LayoutState>(c);
  p->D = get<LayoutState>(d);
  const DescState& ds = p->desc;
  const LayoutState* L[4] = {&p->A, &p->B, &p->C, &p->D};
  const char* mats[4] = {"A", "B", "C", "D"};

  if (ds.pointer_mode != CUBLASLT_POINTER_MODE_HOST)
    return fail(call, CUBLAS_STATUS_NOT_SUPPORTED, "the emulator takes alpha and beta in host memory only");
  // [doc: CUBLASLT_MATMUL_DESC_TRANSC: "Currently only CUBLAS_OP_N is supported"]
  if (ds.transc != CUBLAS_OP_N) return fail(call, CUBLAS_STATUS_NOT_SUPPORTED, "TRANSC must be CUBLAS_OP_N");
  for (int32_t t : {ds.transa, ds.transb})
    if (t != CUBLAS_OP_N && t != CUBLAS_OP_T && t != CUBLAS_OP_C)
      return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                  "TRANSA/TRANSB " + std::to_string(t) + " is not CUBLAS_OP_N, CUBLAS_OP_T or CUBLAS_OP_C");
  p->ta = ds.transa != CUBLAS_OP_N;  // CUBLAS_OP_C is CUBLAS_OP_T for real types
  p->tb = ds.transb != CUBLAS_OP_N;

  for (int i = 0; i < 4; ++i) {
    const LayoutState& l = *L[i];
    if (!gemm::known_type(l.type))
      return fail(call, CUBLAS_STATUS_NOT_SUPPORTED,
                  std::string(mats[i]) + " has type " + gemm::type_name(l.type));
    if (l.order != CUBLASLT_ORDER_COL)
      return fail(call, CUBLAS_STATUS_NOT_SUPPORTED,
                  std::string(mats[i]) + ": the emulator has CUBLASLT_ORDER_COL only");
    // [doc: CUBLASLT_MATRIX_LAYOUT_ROWS/COLS: "Usually only values that can be expressed as int32_t are
    // supported"]
    if (l.rows > INT32_MAX || l.cols > INT32_MAX)
      return fail(call, CUBLAS_STATUS_NOT_SUPPORTED,
                  layout_str(mats[i], l) + ": rows and columns beyond int32");
    // [doc: CUBLASLT_MATRIX_LAYOUT_LD: "only non-negative values are supported, must be large enough so
    // that matrix memory locations are not overlapping (e.g. greater or equal to CUBLASLT_MATRIX_LAYOUT_ROWS
    // in case of CUBLASLT_ORDER_COL)"]
    if (l.ld < 1 || static_cast<uint64_t>(l.ld) < l.rows)
      return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                  layout_str(mats[i], l) + ": the leading dimension is below max(1, rows)");
    if (l.batch < 1)
      return fail(call, CUBLAS_STATUS_INVALID_VALUE, layout_str(mats[i], l) + ": BATCH_COUNT below 1");
  }
  // D = alpha op(A) op(B) + beta C with op(A) m x k, op(B) k x n, C and D m x n [doc: cublasLtMatmul()].
  p->m = static_cast<int64_t>(p->D.rows);
  p->n = static_cast<int64_t>(p->D.cols);
  const auto a_rows = static_cast<int64_t>(p->ta ? p->A.cols : p->A.rows);
  p->k = static_cast<int64_t>(p->ta ? p->A.rows : p->A.cols);
  const auto b_rows = static_cast<int64_t>(p->tb ? p->B.cols : p->B.rows);
  const auto b_cols = static_cast<int64_t>(p->tb ? p->B.rows : p->B.cols);
  if (a_rows != p->m || b_rows != p->k || b_cols != p->n || p->C.rows != p->D.rows ||
      p->C.cols != p->D.cols) {
    std::ostringstream os;
    os << "the shapes do not match: op(A) is " << a_rows << " x " << p->k << ", op(B) " << b_rows << " x "
       << b_cols << ", C " << p->C.rows << " x " << p->C.cols << ", D " << p->m << " x " << p->n;
    return fail(call, CUBLAS_STATUS_INVALID_VALUE, os.str());
  }
  p->batch = p->D.batch;
  if (p->A.batch != p->batch || p->B.batch != p->batch || p->C.batch != p->batch)
    return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                "BATCH_COUNT differs between the layouts (A " + std::to_string(p->A.batch) + ", B " +
                    std::to_string(p->B.batch) + ", C " + std::to_string(p->C.batch) + ", D " +
                    std::to_string(p->D.batch) + "); a broadcast operand has the same count and stride 0");

  // [doc: cublasLtMatmul(), "Datatypes Supported"]: A and B of one type, C and D of one type.
  std::string why;
  if (p->A.type != p->B.type || p->C.type != p->D.type ||
      !gemm::compute_for(ds.compute, ds.scale, p->A.type, p->D.type, &p->compute, &why)) {
    if (why.empty())
      why = std::string("A is ") + gemm::type_name(p->A.type) + ", B " + gemm::type_name(p->B.type) + ", C " +
            gemm::type_name(p->C.type) + ", D " + gemm::type_name(p->D.type) +
            ": A and B, and C and D, must match";
    return fail(call, CUBLAS_STATUS_NOT_SUPPORTED, why);
  }

  if (!known_epilogue(ds.epilogue, &p->bias, &p->gelu, &p->aux))
    return fail(call, CUBLAS_STATUS_NOT_SUPPORTED,
                "epilogue " + std::to_string(ds.epilogue) +
                    " is not emulated (DEFAULT, BIAS, GELU, GELU_BIAS, GELU_AUX, GELU_AUX_BIAS are)");
  // [doc: CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE / _EPILOGUE_AUX_DATA_TYPE: default -1, D's type]
  if (p->bias && ds.bias_type != -1 && ds.bias_type != p->D.type)
    return fail(call, CUBLAS_STATUS_NOT_SUPPORTED,
                std::string("the emulator takes a bias of D's type, not ") + gemm::type_name(ds.bias_type));
  if (p->aux) {
    if (ds.aux_type != -1 && ds.aux_type != p->D.type)
      return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                  std::string("EPILOGUE_AUX_DATA_TYPE ") + gemm::type_name(ds.aux_type) +
                      " is not supported for this matrix type (the GELU input is stored in D's type)");
    // [doc: CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: GELU input matrix leading dimension "Must be divisible
    // by 8 and be no less than the number of rows in the output matrix"]
    if (ds.aux_ld % 8 != 0 || ds.aux_ld < p->m)
      return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                  "EPILOGUE_AUX_LD is " + std::to_string(ds.aux_ld) +
                      ": it must be a multiple of 8 and at least D's " + std::to_string(p->m) + " rows");
    // [doc: CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE: GELU input batch stride "Must be divisible by 8"]
    if (ds.aux_stride % 8 != 0)
      return fail(
          call, CUBLAS_STATUS_INVALID_VALUE,
          "EPILOGUE_AUX_BATCH_STRIDE is " + std::to_string(ds.aux_stride) + ": it must be a multiple of 8");
  }
  return ok();
}

// ---- the emulated algorithms ------------------------------------------------------------------

struct Needs {  // bytes each pointer must be aligned to
  size_t a, b, c, d, bias, aux;
};

Needs needs(const Problem& p, Kind kind) {
  if (kind == Kind::Vec16) return {16, 16, 16, 16, 16, 16};
  const size_t ed = es(p.D.type);
  return {es(p.A.type), es(p.B.type), es(p.C.type), ed, ed, ed};
}

std::string algo_name(const AlgoState& al) {
  std::string s = al.kind == Kind::Vec16 ? "emulated VEC16" : "emulated SCALAR";
  if (al.splits > 1) s += ", " + std::to_string(al.splits) + "-way " + gemm::scheme_name(al.scheme);
  return s;
}

size_t workspace_for(const Problem& p, const AlgoState& al) {
  return gemm::split_workspace(static_cast<int>(al.splits), al.scheme, p.m, p.n, p.batch, p.compute,
                               static_cast<cudaDataType_t>(p.D.type));
}

// Why `al` cannot run p: what the algorithm assumes of the leading dimensions, batch strides
// and aux layout (known from the descriptors), and, with a preference (the heuristic), of the
// declared matrix alignments, the bias and aux pointers' values, the workspace and the
// reduction schemes. Empty if it can.
std::string misfit(const Problem& p, const AlgoState& al, const PrefState* pref) {
  const Needs nd = needs(p, al.kind);
  const LayoutState* L[4] = {&p.A, &p.B, &p.C, &p.D};
  const size_t need[4] = {nd.a, nd.b, nd.c, nd.d};
  const char* mats[4] = {"A", "B", "C", "D"};
  for (int i = 0; i < 4; ++i) {
    const LayoutState& l = *L[i];
    const auto bytes = static_cast<int64_t>(es(l.type));
    const auto v = static_cast<int64_t>(need[i]);
    if (l.cols > 1 && (l.ld * bytes) % v != 0)
      return std::string(mats[i]) + "'s leading dimension is not a multiple of " + std::to_string(v) +
             " bytes";
    if (l.batch > 1 && (l.stride * bytes) % v != 0)
      return std::string(mats[i]) + "'s batch stride is not a multiple of " + std::to_string(v) + " bytes";
    if (pref) {
      const uint32_t declared = std::max<uint32_t>(pref->align[i], 1);
      if (declared % need[i] != 0)
        return std::string("MIN_ALIGNMENT_") + mats[i] + "_BYTES is " + std::to_string(pref->align[i]) +
               ", below " + std::to_string(need[i]);
    }
  }
  const auto ed = static_cast<int64_t>(es(p.D.type));
  if (p.aux && ((p.desc.aux_ld * ed) % static_cast<int64_t>(nd.aux) != 0 ||
                (p.desc.aux_stride * ed) % static_cast<int64_t>(nd.aux) != 0))
    return "the aux leading dimension or batch stride is not a multiple of " + std::to_string(nd.aux) +
           " bytes";
  if (!pref) return "";
  // [doc: CUBLASLT_MATMUL_DESC_BIAS_POINTER, _EPILOGUE_AUX_POINTER: "Routines that don't dereference
  // this pointer, like cublasLtMatmulAlgoGetHeuristic() depend on its value to determine expected
  // pointer alignment"]
  if (p.bias && gemm::pointer_alignment(p.desc.bias) % nd.bias != 0)
    return "the bias pointer is not " + std::to_string(nd.bias) + "-byte aligned";
  if (p.aux && gemm::pointer_alignment(p.desc.aux) % nd.aux != 0)
    return "the aux pointer is not " + std::to_string(nd.aux) + "-byte aligned";
  if (al.splits > 1) {
    // [doc: CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK: "Filters heuristic result to only include algo
    // configs that use one of the required modes"]
    if ((pref->reduction_mask & static_cast<uint32_t>(al.scheme)) == 0)
      return "its reduction scheme is masked out";
    // [doc: CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: "Maximum allowed workspace size in bytes", default 0]
    if (workspace_for(p, al) > pref->max_workspace) return "it needs more workspace than MAX_WORKSPACE_BYTES";
  }
  return "";
}

// Every emulated algorithm for p in the heuristic's order of preference (the fastest first):
// split-K where the shape calls for it, else without; vectorised before scalar.
std::vector<AlgoState> algorithms(const Problem& p) {
  std::vector<AlgoState> out;
  const int splits = gemm::split_count(p.m, p.n, p.k, p.batch);
  if (splits > 1)
    for (Scheme s : {Scheme::Inplace, Scheme::OutputType, Scheme::ComputeType})
      for (Kind kind : {Kind::Vec16, Kind::Scalar})
        out.push_back({kAlgoMagic, kind, static_cast<uint32_t>(splits), s, 0});
  for (Kind kind : {Kind::Vec16, Kind::Scalar}) out.push_back({kAlgoMagic, kind, 1, Scheme::None, 0});
  return out;
}

PrefState default_pref() {
  // [doc: cublasLtMatmulPreferenceAttributes_t defaults: SEARCH_MODE BEST_FIT, MAX_WORKSPACE_BYTES 0,
  // REDUCTION_SCHEME_MASK all, MIN_ALIGNMENT_*_BYTES 256]
  return {CUBLASLT_SEARCH_BEST_FIT, CUBLASLT_REDUCTION_SCHEME_MASK, 0, {256, 256, 256, 256}};
}

// The fitting algorithms, best first, with why the best of the others did not fit.
std::vector<AlgoState> heuristic(const Problem& p, const PrefState& pref, std::string* why_not) {
  std::vector<AlgoState> fit;
  for (const AlgoState& al : algorithms(p)) {
    const std::string m = misfit(p, al, &pref);
    if (m.empty())
      fit.push_back(al);
    else if (why_not->empty())
      *why_not = algo_name(al) + ": " + m;
  }
  return fit;
}

}  // namespace
}  // namespace barbell::emu::lt

using namespace barbell::emu::lt;  // NOLINT: the C API below is the file's point
namespace gemm = barbell::emu::gemm;

// ---- handle ---------------------------------------------------------------------------------------

// [doc: cublasLtCreate(): CUBLAS_STATUS_INVALID_VALUE "if lightHandle == NULL"]
cublasStatus_t CUBLASWINAPI cublasLtCreate(cublasLtHandle_t* lightHandle) {
  if (!lightHandle) return fail("cublasLtCreate", CUBLAS_STATUS_INVALID_VALUE, "lightHandle is NULL");
  *lightHandle = new cublasLtContext();
  live_handles().add(*lightHandle);
  return ok();
}

// [doc: cublasLtDestroy(): NOT_INITIALIZED "if the cuBLASLt handle was not initialized",
// INVALID_VALUE "if lightHandle == NULL"]
cublasStatus_t CUBLASWINAPI cublasLtDestroy(cublasLtHandle_t lightHandle) {
  if (!lightHandle) return fail("cublasLtDestroy", CUBLAS_STATUS_INVALID_VALUE, "lightHandle is NULL");
  if (!live_handles().remove(lightHandle))
    return fail("cublasLtDestroy", CUBLAS_STATUS_NOT_INITIALIZED, "not a live handle (destroyed twice?)");
  delete lightHandle;
  return ok();
}

const char* CUBLASWINAPI cublasLtGetStatusName(cublasStatus_t status) { return gemm::status_name(status); }

// The version of the headers the emulation was written against (cuBLAS 13.1).
size_t CUBLASWINAPI cublasLtGetVersion(void) { return CUBLAS_VERSION; }
const char* CUBLASWINAPI cublasLtGetStatusString(cublasStatus_t status) {
  return gemm::status_string(status);
}

// ---- matrix layouts -----------------------------------------------------------------------------

// [doc: cublasLtMatrixLayoutCreate(): CUBLAS_STATUS_ALLOC_FAILED "if memory could not be allocated"]
cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout, cudaDataType type,
                                                       uint64_t rows, uint64_t cols, int64_t ld) {
  if (!matLayout) return fail("cublasLtMatrixLayoutCreate", CUBLAS_STATUS_INVALID_VALUE, "matLayout is NULL");
  auto* l = new cublasLtMatrixLayoutOpaque_t();
  // [doc: cublasLtMatrixLayoutAttribute_t defaults: ORDER_COL, BATCH_COUNT 1, STRIDED_BATCH_OFFSET 0]
  put(l, LayoutState{static_cast<int32_t>(type), CUBLASLT_ORDER_COL, 1, rows, cols, ld, 0});
  live_layouts().add(l);
  *matLayout = l;
  return ok();
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
  if (!matLayout) return ok();
  if (!live_layouts().remove(matLayout))
    return fail("cublasLtMatrixLayoutDestroy", CUBLAS_STATUS_INVALID_VALUE,
                "not a live layout (destroyed twice?)");
  delete matLayout;
  return ok();
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout,
                                                             cublasLtMatrixLayoutAttribute_t attr,
                                                             const void* buf, size_t sizeInBytes) {
  const char* call = "cublasLtMatrixLayoutSetAttribute";
  if (!live_layouts().has(matLayout)) return fail(call, CUBLAS_STATUS_INVALID_VALUE, "not a live layout");
  LayoutState s = get<LayoutState>(matLayout);
  cublasStatus_t st;
  switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: {  // uint32_t
      uint32_t v = 0;
      st = set_value(call, "CUBLASLT_MATRIX_LAYOUT_TYPE", &v, buf, sizeInBytes);
      s.type = static_cast<int32_t>(v);
      break;
    }
    case CUBLASLT_MATRIX_LAYOUT_ORDER:
      st = set_value(call, "CUBLASLT_MATRIX_LAYOUT_ORDER", &s.order, buf, sizeInBytes);
      break;
    case CUBLASLT_MATRIX_LAYOUT_ROWS:
      st = set_value(call, "CUBLASLT_MATRIX_LAYOUT_ROWS", &s.rows, buf, sizeInBytes);
      break;
    case CUBLASLT_MATRIX_LAYOUT_COLS:
      st = set_value(call, "CUBLASLT_MATRIX_LAYOUT_COLS", &s.cols, buf, sizeInBytes);
      break;
    case CUBLASLT_MATRIX_LAYOUT_LD:
      st = set_value(call, "CUBLASLT_MATRIX_LAYOUT_LD", &s.ld, buf, sizeInBytes);
      break;
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT:
      st = set_value(call, "CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT", &s.batch, buf, sizeInBytes);
      break;
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET:
      st = set_value(call, "CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET", &s.stride, buf, sizeInBytes);
      break;
    default: return not_emulated(call, attr);
  }
  if (st == CUBLAS_STATUS_SUCCESS) put(matLayout, s);
  return st;
}

// ---- matmul descriptor ----------------------------------------------------------------------------

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc,
                                                     cublasComputeType_t computeType,
                                                     cudaDataType_t scaleType) {
  if (!matmulDesc) return fail("cublasLtMatmulDescCreate", CUBLAS_STATUS_INVALID_VALUE, "matmulDesc is NULL");
  auto* d = new cublasLtMatmulDescOpaque_t();
  // [doc: cublasLtMatmulDescAttributes_t defaults: POINTER_MODE_HOST, TRANSA/B/C CUBLAS_OP_N,
  // EPILOGUE_DEFAULT, pointers NULL, strides and AUX_LD 0, BIAS/AUX_DATA_TYPE -1]
  DescState s{};
  s.compute = static_cast<int32_t>(computeType);
  s.scale = static_cast<int32_t>(scaleType);
  s.pointer_mode = CUBLASLT_POINTER_MODE_HOST;
  s.transa = s.transb = s.transc = CUBLAS_OP_N;
  s.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  s.bias_type = s.aux_type = -1;
  put(d, s);
  live_descs().add(d);
  *matmulDesc = d;
  return ok();
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
  if (!matmulDesc) return ok();
  if (!live_descs().remove(matmulDesc))
    return fail("cublasLtMatmulDescDestroy", CUBLAS_STATUS_INVALID_VALUE,
                "not a live descriptor (destroyed twice?)");
  delete matmulDesc;
  return ok();
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                                           cublasLtMatmulDescAttributes_t attr,
                                                           const void* buf, size_t sizeInBytes) {
  const char* call = "cublasLtMatmulDescSetAttribute";
  if (!live_descs().has(matmulDesc))
    return fail(call, CUBLAS_STATUS_INVALID_VALUE, "not a live matmul descriptor");
  DescState s = get<DescState>(matmulDesc);
  cublasStatus_t st;
  // The value types are those cublasLt.h gives each attribute.
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE:
      st = set_value(call, "COMPUTE_TYPE", &s.compute, buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE:
      st = set_value(call, "SCALE_TYPE", &s.scale, buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_DESC_POINTER_MODE:
      st = set_value(call, "POINTER_MODE", &s.pointer_mode, buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_DESC_TRANSA: st = set_value(call, "TRANSA", &s.transa, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_TRANSB: st = set_value(call, "TRANSB", &s.transb, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_TRANSC: st = set_value(call, "TRANSC", &s.transc, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
      st = set_value(call, "EPILOGUE", &s.epilogue, buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      st = set_value(call, "BIAS_POINTER", &s.bias, buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE:
      st = set_value(call, "BIAS_BATCH_STRIDE", &s.bias_stride, buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER:
      st = set_value(call, "EPILOGUE_AUX_POINTER", &s.aux, buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD:
      st = set_value(call, "EPILOGUE_AUX_LD", &s.aux_ld, buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE:
      st = set_value(call, "EPILOGUE_AUX_BATCH_STRIDE", &s.aux_stride, buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
      st = set_value(call, "BIAS_DATA_TYPE", &s.bias_type, buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE:
      st = set_value(call, "EPILOGUE_AUX_DATA_TYPE", &s.aux_type, buf, sizeInBytes);
      break;
    default: return not_emulated(call, attr);
  }
  if (st == CUBLAS_STATUS_SUCCESS) put(matmulDesc, s);
  return st;
}

// ---- preference -------------------------------------------------------------------------------------

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  if (!pref) return fail("cublasLtMatmulPreferenceCreate", CUBLAS_STATUS_INVALID_VALUE, "pref is NULL");
  auto* p = new cublasLtMatmulPreferenceOpaque_t();
  put(p, default_pref());
  live_prefs().add(p);
  *pref = p;
  return ok();
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  if (!pref) return ok();
  if (!live_prefs().remove(pref))
    return fail("cublasLtMatmulPreferenceDestroy", CUBLAS_STATUS_INVALID_VALUE,
                "not a live preference (destroyed twice?)");
  delete pref;
  return ok();
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                                 cublasLtMatmulPreferenceAttributes_t attr,
                                                                 const void* buf, size_t sizeInBytes) {
  const char* call = "cublasLtMatmulPreferenceSetAttribute";
  if (!live_prefs().has(pref)) return fail(call, CUBLAS_STATUS_INVALID_VALUE, "not a live preference");
  PrefState s = get<PrefState>(pref);
  cublasStatus_t st;
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE:
      st = set_value(call, "SEARCH_MODE", &s.search_mode, buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
      st = set_value(call, "MAX_WORKSPACE_BYTES", &s.max_workspace, buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK:
      st = set_value(call, "REDUCTION_SCHEME_MASK", &s.reduction_mask, buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
      st = set_value(call, "MIN_ALIGNMENT_A_BYTES", &s.align[0], buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
      st = set_value(call, "MIN_ALIGNMENT_B_BYTES", &s.align[1], buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
      st = set_value(call, "MIN_ALIGNMENT_C_BYTES", &s.align[2], buf, sizeInBytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
      st = set_value(call, "MIN_ALIGNMENT_D_BYTES", &s.align[3], buf, sizeInBytes);
      break;
    default: return not_emulated(call, attr);
  }
  if (st == CUBLAS_STATUS_SUCCESS) put(pref, s);
  return st;
}

// ---- heuristic ------------------------------------------------------------------------------------

cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoGetHeuristic(
    cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc, cublasLtMatrixLayout_t Adesc,
    cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
    cublasLtMatmulPreference_t preference, int requestedAlgoCount,
    cublasLtMatmulHeuristicResult_t heuristicResultsArray[], int* returnAlgoCount) {
  const char* call = "cublasLtMatmulAlgoGetHeuristic";
  // [doc: cublasLtMatmulAlgoGetHeuristic(): "CUBLAS_STATUS_INVALID_VALUE if requestedAlgoCount is less
  // or equal to zero"]
  if (requestedAlgoCount <= 0)
    return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                "requestedAlgoCount is " + std::to_string(requestedAlgoCount));
  if (!heuristicResultsArray || !returnAlgoCount)
    return fail(call, CUBLAS_STATUS_INVALID_VALUE, "heuristicResultsArray or returnAlgoCount is NULL");
  *returnAlgoCount = 0;
  Problem p;
  const cublasStatus_t st = check_problem(call, lightHandle, operationDesc, Adesc, Bdesc, Cdesc, Ddesc, &p);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  if (!live_prefs().has(preference))
    return fail(call, CUBLAS_STATUS_INVALID_VALUE, "preference is not a live preference");
  const PrefState pref = get<PrefState>(preference);
  if (pref.search_mode != CUBLASLT_SEARCH_BEST_FIT)
    return fail(call, CUBLAS_STATUS_NOT_SUPPORTED, "the emulator has SEARCH_MODE BEST_FIT only");
  std::string why;
  const std::vector<AlgoState> fit = heuristic(p, pref, &why);
  // [doc: "CUBLAS_STATUS_NOT_SUPPORTED if no heuristic function available for current configuration"]:
  // no algorithm meets the preference.
  if (fit.empty()) return fail(call, CUBLAS_STATUS_NOT_SUPPORTED, "no algorithm fits (" + why + ")");
  const int count = std::min<int>(requestedAlgoCount, static_cast<int>(fit.size()));
  for (int i = 0; i < count; ++i) {
    cublasLtMatmulHeuristicResult_t& r = heuristicResultsArray[i];
    std::memset(&r, 0, sizeof r);
    put(&r.algo, fit[static_cast<size_t>(i)]);
    r.workspaceSize = workspace_for(p, fit[static_cast<size_t>(i)]);
    r.state = CUBLAS_STATUS_SUCCESS;
    const double tiles = static_cast<double>((p.m + 127) / 128) * static_cast<double>((p.n + 127) / 128) *
                         static_cast<double>(p.batch) * fit[static_cast<size_t>(i)].splits;
    r.wavesCount = static_cast<float>(tiles / 132.0);
  }
  *returnAlgoCount = count;
  return ok();
}

// ---- matmul ---------------------------------------------------------------------------------------------

cublasStatus_t CUBLASWINAPI cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc,
                                           const void* alpha, const void* A, cublasLtMatrixLayout_t Adesc,
                                           const void* B, cublasLtMatrixLayout_t Bdesc, const void* beta,
                                           const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                                           cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t* algo,
                                           void* workspace, size_t workspaceSizeInBytes,
                                           cudaStream_t stream) {
  const char* call = "cublasLtMatmul";
  Problem p;
  cublasStatus_t st = check_problem(call, lightHandle, computeDesc, Adesc, Bdesc, Cdesc, Ddesc, &p);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  // [doc: cublasLtMatmul(): INVALID_VALUE "if the parameters are unexpectedly NULL, in conflict or in an
  // impossible configuration"]
  if (!alpha || !beta) return fail(call, CUBLAS_STATUS_INVALID_VALUE, "alpha or beta is NULL");
  // Host pointer mode: the scalars are read now, in the scale type [doc: CUBLASLT_MATMUL_DESC_SCALE_TYPE].
  double a = 0, b = 0;
  if (p.desc.scale == CUDA_R_64F) {
    std::memcpy(&a, alpha, 8);
    std::memcpy(&b, beta, 8);
  } else {
    float af, bf;
    std::memcpy(&af, alpha, 4);
    std::memcpy(&bf, beta, 4);
    a = af;
    b = bf;
  }
  if (!D) return fail(call, CUBLAS_STATUS_INVALID_VALUE, "D is NULL");
  if (a != 0 && p.k > 0 && (!A || !B)) return fail(call, CUBLAS_STATUS_INVALID_VALUE, "A or B is NULL");
  if (b != 0 && !C) return fail(call, CUBLAS_STATUS_INVALID_VALUE, "C is NULL with beta != 0");
  if (b != 0 && C == D && (p.C.ld != p.D.ld || p.C.stride != p.D.stride || p.C.type != p.D.type))
    return fail(
        call, CUBLAS_STATUS_INVALID_VALUE,
        "in place (C == D) with different layouts: " + layout_str("C", p.C) + ", " + layout_str("D", p.D));
  if (p.bias && !p.desc.bias)
    return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                "a BIAS epilogue without CUBLASLT_MATMUL_DESC_BIAS_POINTER");
  if (p.aux && !p.desc.aux)
    return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                "a GELU_AUX epilogue without CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER");

  // [doc: cublasLtMatmul() "algo": "When NULL, an implicit heuristics query with default search
  // preferences will be performed to determine actual algorithm to use"]
  AlgoState al;
  if (!algo) {
    std::string why;
    const std::vector<AlgoState> fit = heuristic(p, default_pref(), &why);
    if (fit.empty())
      return fail(call, CUBLAS_STATUS_NOT_SUPPORTED,
                  "algo is NULL and no algorithm fits the default preference (" + why + ")");
    al = fit.front();
  } else {
    al = get<AlgoState>(algo);
    if (al.magic != kAlgoMagic || (al.kind != Kind::Vec16 && al.kind != Kind::Scalar) || al.splits < 1)
      return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                  "algo was not filled in by cublasLtMatmulAlgoGetHeuristic");
    // An algorithm found for another problem may not do this one (cublasLtMatmulAlgoCheck() would say so).
    const std::string m = misfit(p, al, nullptr);
    if (!m.empty())
      return fail(call, CUBLAS_STATUS_NOT_SUPPORTED, algo_name(al) + " cannot run this problem: " + m);
  }
  // [doc: cublasLtMatmul(): INVALID_VALUE e.g. "when workspaceSizeInBytes is less than workspace
  // required by configured algo"; the workspace pointer "must be 256B aligned"]
  const size_t need = workspace_for(p, al);
  if (workspaceSizeInBytes < need)
    return fail(call, CUBLAS_STATUS_INVALID_VALUE,
                algo_name(al) + " needs " + std::to_string(need) +
                    " bytes of workspace, workspaceSizeInBytes is " + std::to_string(workspaceSizeInBytes));
  if (need > 0 && !workspace) return fail(call, CUBLAS_STATUS_INVALID_VALUE, "workspace is NULL");
  if (workspace && workspaceSizeInBytes > 0 && reinterpret_cast<uintptr_t>(workspace) % 256 != 0)
    return fail(call, CUBLAS_STATUS_INVALID_VALUE, "the workspace is not 256-byte aligned");

  gemm::Job job;
  job.name = call;
  job.m = p.m;
  job.n = p.n;
  job.k = p.k;
  job.batch = p.batch;
  auto matrix = [](const void* ptr, const LayoutState& l) {
    gemm::Matrix mat;
    mat.ptr = ptr;
    mat.type = static_cast<cudaDataType_t>(l.type);
    mat.rows = static_cast<int64_t>(l.rows);
    mat.cols = static_cast<int64_t>(l.cols);
    mat.ld = l.ld;
    mat.stride = l.stride;
    return mat;
  };
  job.a = matrix(A, p.A);
  job.b = matrix(B, p.B);
  job.c = matrix(C, p.C);
  job.d = matrix(D, p.D);
  job.trans_a = p.ta;
  job.trans_b = p.tb;
  job.compute = p.compute;
  job.alpha = a;
  job.beta = b;
  job.gelu = p.gelu;
  job.bias = p.bias ? p.desc.bias : nullptr;
  job.bias_stride = p.desc.bias_stride;
  job.aux = p.aux ? p.desc.aux : nullptr;
  job.aux_ld = p.desc.aux_ld;
  job.aux_stride = p.desc.aux_stride;
  const Needs nd = needs(p, al.kind);
  job.align_a = nd.a;
  job.align_b = nd.b;
  job.align_c = nd.c;
  job.align_d = nd.d;
  job.align_bias = nd.bias;
  job.align_aux = nd.aux;
  job.algo = algo_name(al);
  job.splits = static_cast<int>(al.splits);
  job.scheme = al.scheme;
  job.workspace = workspace;
  job.workspace_bytes = need;
  const std::string overlap = gemm::overlap_error(job);
  if (!overlap.empty()) return fail(call, CUBLAS_STATUS_INVALID_VALUE, overlap);
  if (job.m == 0 || job.n == 0) return ok();
  // [doc: cublasLtMatmul(): EXECUTION_FAILED "if cuda reported execution error from the device"]
  const cudaError_t e = barbell::emu::enqueue(stream, call, [job] { gemm::run(job); });
  if (e != cudaSuccess)
    return fail(call, CUBLAS_STATUS_EXECUTION_FAILED,
                "the stream refused the work (cudaError_t " + std::to_string(static_cast<int>(e)) + ")");
  return ok();
}

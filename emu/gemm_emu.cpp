// The emulated GEMM engine (emu/gemm_emu.hpp): operands read column by column from emulated
// device memory into double, products summed in double, one rounding to the output type.
#include "gemm_emu.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "blas_emu.hpp"
#include "emu_api.hpp"

namespace barbell::emu {
namespace {
std::atomic<bool> g_quiet{false};
thread_local std::string t_last_error;
}  // namespace

std::string blas_last_error() { return t_last_error; }
void set_blas_quiet(bool quiet) { g_quiet.store(quiet); }

namespace gemm {

void set_last_error(const std::string& msg, bool loud) {
  t_last_error = msg;
  if (loud && !msg.empty() && !g_quiet.load()) std::fprintf(stderr, "[emulated cuBLAS] %s\n", msg.c_str());
}

bool known_type(int type) {
  return type == CUDA_R_16BF || type == CUDA_R_16F || type == CUDA_R_32F || type == CUDA_R_64F;
}

size_t element_size(cudaDataType_t type) {
  switch (type) {
    case CUDA_R_16BF:
    case CUDA_R_16F: return 2;
    case CUDA_R_32F: return 4;
    case CUDA_R_64F: return 8;
    default: return 0;
  }
}

const char* type_name(int type) {
  switch (type) {
    case CUDA_R_16BF: return "CUDA_R_16BF";
    case CUDA_R_16F: return "CUDA_R_16F";
    case CUDA_R_32F: return "CUDA_R_32F";
    case CUDA_R_64F: return "CUDA_R_64F";
    case -1: return "-1 (default)";
    default: return "an unsupported cudaDataType";
  }
}

const char* compute_name(int compute_type) {
  switch (compute_type) {
    case CUBLAS_COMPUTE_16F: return "CUBLAS_COMPUTE_16F";
    case CUBLAS_COMPUTE_16F_PEDANTIC: return "CUBLAS_COMPUTE_16F_PEDANTIC";
    case CUBLAS_COMPUTE_32F: return "CUBLAS_COMPUTE_32F";
    case CUBLAS_COMPUTE_32F_PEDANTIC: return "CUBLAS_COMPUTE_32F_PEDANTIC";
    case CUBLAS_COMPUTE_32F_FAST_16F: return "CUBLAS_COMPUTE_32F_FAST_16F";
    case CUBLAS_COMPUTE_32F_FAST_16BF: return "CUBLAS_COMPUTE_32F_FAST_16BF";
    case CUBLAS_COMPUTE_32F_FAST_TF32: return "CUBLAS_COMPUTE_32F_FAST_TF32";
    case CUBLAS_COMPUTE_64F: return "CUBLAS_COMPUTE_64F";
    case CUBLAS_COMPUTE_64F_PEDANTIC: return "CUBLAS_COMPUTE_64F_PEDANTIC";
    case CUBLAS_COMPUTE_32I: return "CUBLAS_COMPUTE_32I";
    case CUBLAS_COMPUTE_32I_PEDANTIC: return "CUBLAS_COMPUTE_32I_PEDANTIC";
    default: return "an unknown cublasComputeType_t";
  }
}

// The real-valued rows of the datatype tables of cublasLtMatmul() and cublasGemmEx() for the
// types the emulator knows: compute 32F (scale 32F) takes A/B 16BF with C/D 16BF or 32F, A/B 16F
// with C/D 16F or 32F, and all 32F; 32F_FAST_TF32 (scale 32F) takes all 32F; 64F (scale 64F)
// takes all 64F.
bool compute_for(int compute_type, int scale_type, int ab_type, int cd_type, Compute* out, std::string* why) {
  std::ostringstream os;
  auto refuse = [&](const char* what) {
    os << what << " (compute " << compute_name(compute_type) << ", scale " << type_name(scale_type)
       << ", A/B " << type_name(ab_type) << ", C/D " << type_name(cd_type) << ")";
    *why = os.str();
    return false;
  };
  switch (compute_type) {
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC: {
      if (scale_type != CUDA_R_32F) return refuse("compute type 32F takes scale type CUDA_R_32F");
      const bool ok = (ab_type == CUDA_R_32F && cd_type == CUDA_R_32F) ||
                      ((ab_type == CUDA_R_16BF || ab_type == CUDA_R_16F) &&
                       (cd_type == ab_type || cd_type == CUDA_R_32F));
      if (!ok) return refuse("not a supported type combination for compute type 32F");
      *out = Compute::F32;
      return true;
    }
    case CUBLAS_COMPUTE_32F_FAST_TF32:
      if (scale_type != CUDA_R_32F) return refuse("compute type 32F_FAST_TF32 takes scale type CUDA_R_32F");
      if (ab_type != CUDA_R_32F || cd_type != CUDA_R_32F)
        return refuse("compute type 32F_FAST_TF32 takes A, B, C and D in CUDA_R_32F");
      *out = Compute::F32_TF32;
      return true;
    case CUBLAS_COMPUTE_64F:
    case CUBLAS_COMPUTE_64F_PEDANTIC:
      if (scale_type != CUDA_R_64F) return refuse("compute type 64F takes scale type CUDA_R_64F");
      if (ab_type != CUDA_R_64F || cd_type != CUDA_R_64F)
        return refuse("compute type 64F takes A, B, C and D in CUDA_R_64F");
      *out = Compute::F64;
      return true;
    default: return refuse("a compute type the emulator does not implement (it has 32F, 32F_FAST_TF32, 64F)");
  }
}

const char* scheme_name(Scheme s) {
  switch (s) {
    case Scheme::None: return "no split-K";
    case Scheme::Inplace: return "split-K, INPLACE reduction";
    case Scheme::ComputeType: return "split-K, COMPUTE_TYPE reduction";
    case Scheme::OutputType: return "split-K, OUTPUT_TYPE reduction";
  }
  return "?";
}

const char* status_name(cublasStatus_t st) {
  switch (st) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "unrecognized status";
}

// The strings the libraries give (cublasGetStatusString of cuBLAS 13.1, checked on this machine).
const char* status_string(cublasStatus_t st) {
  switch (st) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an unsupported value or parameter was passed to the function";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "the function requires an architectural feature absent from the device";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the function failed to launch on the GPU";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the requested functionality is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "the license check failed";
  }
  return "unrecognized status";
}

size_t pointer_alignment(const void* p) {
  const uint64_t v = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)) | 256u;
  return static_cast<size_t>(v & (~v + 1));
}

namespace {

constexpr int64_t kTile = 128;  // the output tile of the emulated algorithms
constexpr int64_t kSms = 132;   // an H100 SXM's SMs: more tiles than this fill the GPU without split-K

int64_t tiles(int64_t m, int64_t n, int64_t batch) {
  return ((m + kTile - 1) / kTile) * ((n + kTile - 1) / kTile) * batch;
}

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

}  // namespace

int split_count(int64_t m, int64_t n, int64_t k, int64_t batch) {
  if (k < 1024 || tiles(m, n, batch) >= kSms) return 1;
  return static_cast<int>(std::min<int64_t>(8, k / 512));
}

size_t split_workspace(int splits, Scheme scheme, int64_t m, int64_t n, int64_t batch, Compute compute,
                       cudaDataType_t d_type) {
  if (splits <= 1 || scheme == Scheme::None) return 0;
  const auto cells = static_cast<size_t>(splits) * static_cast<size_t>(m) * static_cast<size_t>(n) *
                     static_cast<size_t>(batch);
  switch (scheme) {
    case Scheme::Inplace:  // one arrival counter per output tile
      return round_up(static_cast<size_t>(tiles(m, n, batch)) * 4, 256);
    case Scheme::ComputeType: return round_up(cells * (compute == Compute::F64 ? 8 : 4), 256);
    case Scheme::OutputType: return round_up(cells * element_size(d_type), 256);
    case Scheme::None: break;
  }
  return 0;
}

namespace {

float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// fp32 -> TF32 (10 explicit mantissa bits), round to nearest even; what "down-converting inputs
// to TF32" does to each element of A and B.
float to_tf32(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u) return f;  // inf, nan
  u += 0x0fffu + ((u >> 13) & 1u);
  u &= ~0x1fffu;
  return bits_float(u);
}

double load(cudaDataType_t type, const char* p) {
  switch (type) {
    case CUDA_R_16BF: {
      __nv_bfloat16 v;
      std::memcpy(&v, p, 2);
      return static_cast<double>(__bfloat162float(v));
    }
    case CUDA_R_16F: {
      __half v;
      std::memcpy(&v, p, 2);
      return static_cast<double>(__half2float(v));
    }
    case CUDA_R_32F: {
      float v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case CUDA_R_64F: {
      double v;
      std::memcpy(&v, p, 8);
      return v;
    }
    default: return 0;
  }
}

// One rounding, to nearest even, from double (CUDA's host conversions for the 16-bit types
// round from double directly, without an intermediate float).
void store(cudaDataType_t type, char* p, double v) {
  switch (type) {
    case CUDA_R_16BF: {
      const __nv_bfloat16 h = __double2bfloat16(v);
      std::memcpy(p, &h, 2);
      break;
    }
    case CUDA_R_16F: {
      const __half h = __double2half(v);
      std::memcpy(p, &h, 2);
      break;
    }
    case CUDA_R_32F: {
      const auto f = static_cast<float>(v);
      std::memcpy(p, &f, 4);
      break;
    }
    case CUDA_R_64F: std::memcpy(p, &v, 8); break;
    default: break;
  }
}

double round_to(cudaDataType_t type, double v) {
  char buf[8];
  store(type, buf, v);
  return load(type, buf);
}

// The GELU the epilogues apply: the tanh approximation.
double gelu(double x) {
  static const double kSqrt2OverPi = std::sqrt(2.0 / 3.14159265358979323846);
  return 0.5 * x * (1.0 + std::tanh(kSqrt2OverPi * (x + 0.044715 * x * x * x)));
}

std::string hex(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

const char* col_ptr(const Matrix& mat, int64_t b, int64_t col) {
  const auto es = static_cast<int64_t>(element_size(mat.type));
  return static_cast<const char*>(mat.ptr) + (b * mat.stride + col * mat.ld) * es;
}

void check_aligned(const Job& job, const char* what, const void* p, size_t align, int64_t b, int64_t col) {
  if (reinterpret_cast<uintptr_t>(p) % align == 0) return;
  std::ostringstream os;
  os << job.name << ": misaligned address: " << what << " column " << col << " of batch entry " << b << " at "
     << hex(p) << " is " << pointer_alignment(p) << "-byte aligned, but the algorithm (" << job.algo
     << ") assumes " << align << " (declare the real alignment in the matmul preference)";
  throw Fault(os.str());
}

// Reads one stored column (rows elements) into out, declaring it first.
void read_column(const Job& job, const char* what, const Matrix& mat, int64_t b, int64_t col, size_t align,
                 bool tf32, double* out) {
  const char* p = col_ptr(mat, b, col);
  check_aligned(job, what, p, align, b, col);
  const size_t es = element_size(mat.type);
  device_read(p, static_cast<size_t>(mat.rows) * es);
  for (int64_t r = 0; r < mat.rows; ++r) {
    double v = load(mat.type, p + static_cast<size_t>(r) * es);
    if (tf32) v = static_cast<double>(to_tf32(static_cast<float>(v)));
    out[r] = v;
  }
}

// op(A) as m rows of k (row i contiguous) and op(B) as n columns of k (column j contiguous).
void load_op_a(const Job& job, int64_t b, bool tf32, std::vector<double>& out) {
  const Matrix& a = job.a;
  out.assign(static_cast<size_t>(job.m * job.k), 0.0);
  std::vector<double> col(static_cast<size_t>(a.rows));
  for (int64_t c = 0; c < a.cols; ++c) {
    read_column(job, "A", a, b, c, job.align_a, tf32, col.data());
    for (int64_t r = 0; r < a.rows; ++r) {
      // stored (r, c): op(A)(i, p) with (i, p) = (r, c) untransposed, (c, r) transposed
      const int64_t i = job.trans_a ? c : r, p = job.trans_a ? r : c;
      out[static_cast<size_t>(i * job.k + p)] = col[static_cast<size_t>(r)];
    }
  }
}

void load_op_b(const Job& job, int64_t b, bool tf32, std::vector<double>& out) {
  const Matrix& bm = job.b;
  out.assign(static_cast<size_t>(job.n * job.k), 0.0);
  std::vector<double> col(static_cast<size_t>(bm.rows));
  for (int64_t c = 0; c < bm.cols; ++c) {
    read_column(job, "B", bm, b, c, job.align_b, tf32, col.data());
    for (int64_t r = 0; r < bm.rows; ++r) {
      // stored (r, c): op(B)(p, j) with (p, j) = (r, c) untransposed, (c, r) transposed
      const int64_t p = job.trans_b ? c : r, j = job.trans_b ? r : c;
      out[static_cast<size_t>(j * job.k + p)] = col[static_cast<size_t>(r)];
    }
  }
}

// part[j * m + i] = sum over p in [p0, p1) of A(i, p) B(p, j), in p order. Four rows at a
// time for instruction-level parallelism; each sum keeps its own order.
void partial_products(const std::vector<double>& A, const std::vector<double>& Bt, int64_t m, int64_t n,
                      int64_t k, int64_t p0, int64_t p1, double* part) {
  for (int64_t j = 0; j < n; ++j) {
    const double* bj = Bt.data() + j * k;
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) {
      const double* a0 = A.data() + i * k;
      const double* a1 = a0 + k;
      const double* a2 = a1 + k;
      const double* a3 = a2 + k;
      double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int64_t p = p0; p < p1; ++p) {
        const double bv = bj[p];
        s0 += a0[p] * bv;
        s1 += a1[p] * bv;
        s2 += a2[p] * bv;
        s3 += a3[p] * bv;
      }
      part[j * m + i] = s0;
      part[j * m + i + 1] = s1;
      part[j * m + i + 2] = s2;
      part[j * m + i + 3] = s3;
    }
    for (; i < m; ++i) {
      const double* ai = A.data() + i * k;
      double s = 0;
      for (int64_t p = p0; p < p1; ++p) s += ai[p] * bj[p];
      part[j * m + i] = s;
    }
  }
}

}  // namespace

void run(const Job& job) {
  const int64_t m = job.m, n = job.n, k = job.k;
  const bool tf32 = job.compute == Compute::F32_TF32;
  const bool read_ab = job.alpha != 0 && k > 0;
  const bool read_c = job.beta != 0;
  const size_t es_d = element_size(job.d.type);
  const int splits = read_ab ? std::max(1, job.splits) : 1;
  const auto mn = static_cast<size_t>(m * n);

  // The partials' storage in split-K: compute type (fp32 or fp64), or D's type.
  auto storage_round = [&](double v) {
    switch (job.scheme) {
      case Scheme::ComputeType:
        return job.compute == Compute::F64 ? v : static_cast<double>(static_cast<float>(v));
      case Scheme::OutputType:
      case Scheme::Inplace: return round_to(job.d.type, v);
      case Scheme::None: break;
    }
    return v;
  };
  char* ws = static_cast<char*>(job.workspace);
  if (splits > 1 && job.workspace_bytes > 0 && job.workspace_is_device) {
    check_aligned(job, "the workspace", ws, 256, 0, 0);
    device_write(ws, job.workspace_bytes);
    if (job.scheme == Scheme::Inplace) std::memset(ws, 0, job.workspace_bytes);  // the tile counters
  }

  std::vector<double> A, Bt, part, acc(mn), cvals, bias;
  for (int64_t b = 0; b < job.batch; ++b) {
    if (read_ab) {
      // A broadcast operand (stride 0) is read once.
      if (b == 0 || job.a.stride != 0) load_op_a(job, b, tf32, A);
      if (b == 0 || job.b.stride != 0) load_op_b(job, b, tf32, Bt);
      part.assign(mn * static_cast<size_t>(splits), 0.0);
      const int64_t chunk = (k + splits - 1) / splits;
      for (int s = 0; s < splits; ++s) {
        const int64_t p0 = std::min<int64_t>(k, s * chunk), p1 = std::min<int64_t>(k, p0 + chunk);
        partial_products(A, Bt, m, n, k, p0, p1, part.data() + mn * static_cast<size_t>(s));
      }
      if (splits == 1) {
        std::copy(part.begin(), part.begin() + static_cast<std::ptrdiff_t>(mn), acc.begin());
      } else {
        // The partials go through the workspace in their storage type, then are summed in order.
        const size_t es_s = job.scheme == Scheme::ComputeType ? (job.compute == Compute::F64 ? 8 : 4) : es_d;
        const cudaDataType_t st = job.scheme == Scheme::ComputeType
                                      ? (job.compute == Compute::F64 ? CUDA_R_64F : CUDA_R_32F)
                                      : job.d.type;
        for (size_t i = 0; i < part.size(); ++i) part[i] = storage_round(part[i]);
        if (job.scheme != Scheme::Inplace && job.workspace_is_device && ws) {
          char* base = ws + static_cast<size_t>(b) * static_cast<size_t>(splits) * mn * es_s;
          for (size_t i = 0; i < part.size(); ++i) store(st, base + i * es_s, part[i]);
        }
        for (size_t i = 0; i < mn; ++i) {
          double v = part[i];
          for (int s = 1; s < splits; ++s) v = storage_round(v + part[mn * static_cast<size_t>(s) + i]);
          acc[i] = v;
        }
      }
    } else {
      std::fill(acc.begin(), acc.end(), 0.0);
    }

    if (read_c) {
      cvals.resize(mn);
      for (int64_t j = 0; j < n; ++j) read_column(job, "C", job.c, b, j, job.align_c, false, &cvals[j * m]);
    }
    if (job.bias && (b == 0 || job.bias_stride != 0)) {
      const char* pb = static_cast<const char*>(job.bias) + b * job.bias_stride * static_cast<int64_t>(es_d);
      if (reinterpret_cast<uintptr_t>(pb) % job.align_bias != 0) {
        std::ostringstream os;
        os << job.name << ": misaligned address: the bias of batch entry " << b << " at " << hex(pb) << " is "
           << pointer_alignment(pb) << "-byte aligned, but the algorithm (" << job.algo << ") assumes "
           << job.align_bias << " (chosen for the bias pointer the heuristic was given)";
        throw Fault(os.str());
      }
      device_read(pb, static_cast<size_t>(m) * es_d);
      bias.resize(static_cast<size_t>(m));
      for (int64_t i = 0; i < m; ++i) bias[static_cast<size_t>(i)] = load(job.d.type, pb + i * es_d);
    }

    for (int64_t j = 0; j < n; ++j) {
      char* pd = const_cast<char*>(col_ptr(job.d, b, j));
      check_aligned(job, "D", pd, job.align_d, b, j);
      device_write(pd, static_cast<size_t>(m) * es_d);
      char* pa = nullptr;
      if (job.aux) {
        pa = static_cast<char*>(job.aux) + (b * job.aux_stride + j * job.aux_ld) * static_cast<int64_t>(es_d);
        if (reinterpret_cast<uintptr_t>(pa) % job.align_aux != 0) {
          std::ostringstream os;
          os << job.name << ": misaligned address: the GELU aux output, column " << j << " of batch entry "
             << b << ", at " << hex(pa) << " is " << pointer_alignment(pa)
             << "-byte aligned, but the algorithm (" << job.algo << ") assumes " << job.align_aux;
          throw Fault(os.str());
        }
        device_write(pa, static_cast<size_t>(m) * es_d);
      }
      for (int64_t i = 0; i < m; ++i) {
        const size_t at = static_cast<size_t>(j * m + i);
        double t = job.alpha * acc[at];
        if (read_c) t += job.beta * cvals[at];
        if (job.bias) t += bias[static_cast<size_t>(i)];
        if (pa) store(job.d.type, pa + i * es_d, t);
        if (job.gelu) t = gelu(t);
        store(job.d.type, pd + i * es_d, t);
      }
    }
  }
}

namespace {

struct Range {
  uintptr_t lo, hi;  // [lo, hi)
  const char* what;
  int64_t batch, col;
};

void add_ranges(std::vector<Range>& out, const char* what, const void* base, size_t es, int64_t rows,
                int64_t cols, int64_t ld, int64_t stride, int64_t batch) {
  if (!base || rows <= 0 || cols <= 0) return;
  const int64_t nb = stride == 0 ? 1 : batch;  // a broadcast matrix is one set of ranges
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t c = 0; c < cols; ++c) {
      const auto lo = reinterpret_cast<uintptr_t>(base) +
                      static_cast<uintptr_t>((b * stride + c * ld) * static_cast<int64_t>(es));
      out.push_back({lo, lo + static_cast<uintptr_t>(rows) * es, what, b, c});
    }
}

void add_matrix(std::vector<Range>& out, const char* what, const Matrix& mat, int64_t batch) {
  add_ranges(out, what, mat.ptr, element_size(mat.type), mat.rows, mat.cols, mat.ld, mat.stride, batch);
}

std::string describe(const Range& r) {
  std::ostringstream os;
  os << r.what << " (batch entry " << r.batch << ", column " << r.col << ", bytes "
     << hex(reinterpret_cast<void*>(r.lo)) << ".." << hex(reinterpret_cast<void*>(r.hi)) << ")";
  return os.str();
}

bool by_lo(const Range& x, const Range& y) { return x.lo < y.lo; }

}  // namespace

std::string overlap_error(const Job& job) {
  std::vector<Range> writes, reads;
  if (job.batch > 1 && job.d.stride == 0 && job.m > 0 && job.n > 0)
    return job.name + ": D has batch stride 0 with " + std::to_string(job.batch) +
           " batch entries: they would all write the same matrix";
  if (job.aux && job.batch > 1 && job.aux_stride == 0 && job.m > 0 && job.n > 0)
    return job.name +
           ": the GELU aux output has batch stride 0 (CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE) with " +
           std::to_string(job.batch) + " batch entries: they would all write the same matrix";
  add_matrix(writes, "D", job.d, job.batch);
  add_ranges(writes, "the GELU aux output", job.aux, element_size(job.d.type), job.m, job.n, job.aux_ld,
             job.aux_stride, job.batch);
  std::sort(writes.begin(), writes.end(), by_lo);
  for (size_t i = 1; i < writes.size(); ++i)
    if (writes[i].lo < writes[i - 1].hi)
      return job.name + ": outputs overlap: " + describe(writes[i - 1]) + " and " + describe(writes[i]);

  if (job.alpha != 0 && job.k > 0) {
    add_matrix(reads, "A", job.a, job.batch);
    add_matrix(reads, "B", job.b, job.batch);
  }
  const bool in_place = job.c.ptr == job.d.ptr && job.c.ld == job.d.ld && job.c.stride == job.d.stride &&
                        job.c.type == job.d.type;
  if (job.beta != 0 && !in_place) add_matrix(reads, "C", job.c, job.batch);
  add_ranges(reads, "the bias", job.bias, element_size(job.d.type), job.m, 1, job.m, job.bias_stride,
             job.batch);
  std::sort(reads.begin(), reads.end(), by_lo);
  // The union of the inputs' ranges, disjoint and sorted; then one search per output range.
  std::vector<std::pair<uintptr_t, uintptr_t>> merged;
  for (const Range& x : reads) {
    if (!merged.empty() && x.lo <= merged.back().second)
      merged.back().second = std::max(merged.back().second, x.hi);
    else
      merged.emplace_back(x.lo, x.hi);
  }
  for (const Range& w : writes) {
    auto it = std::upper_bound(
        merged.begin(), merged.end(), w.lo,
        [](uintptr_t v, const std::pair<uintptr_t, uintptr_t>& iv) { return v < iv.second; });
    if (it == merged.end() || it->first >= w.hi) continue;
    for (const Range& x : reads)
      if (x.lo < w.hi && x.hi > w.lo)
        return job.name + ": an output overlaps an input (in-place is only C == D with the same layout): " +
               describe(w) + " and " + describe(x);
  }
  return "";
}

}  // namespace gemm
}  // namespace barbell::emu

// Fills blas_api.hpp's table: dlopen/dlsym of cuBLASLt and cuBLAS at the first GPU matmul,
// or, in the host emulation build, the addresses of the linked emulation's functions.
//
// Candidates. cuBLASLt: $BARBELL_CUBLASLT_LIBRARY alone when it is set; else
// "libcublasLt.so.13" (the loader's search: LD_LIBRARY_PATH, ld.so.cache, the system
// directories), then the same file in the toolkit's library directory this build was
// configured with. cuBLAS: $BARBELL_CUBLAS_LIBRARY alone when set; else the file beside the
// cuBLASLt that loaded (so the two match), "libcublas.so.13", the toolkit's directory.
// cuBLASLt's runtime major version must be the header's.
#include <dlfcn.h>

#include "barbell/core/error.hpp"
#include "blas_api.hpp"
#include "core/dynamic_library.hpp"

namespace barbell::gpu {
namespace {

struct Loaded {
  BlasApi api;
  std::string error;  // empty when the table is complete
};

#if defined(BARBELL_CUDA_EMULATE)

Loaded* load() {
  auto* l = new Loaded();
#define BB_TAKE_LINKED(f) l->api.f = &::f;
  BB_CUBLASLT_FUNCTIONS(BB_TAKE_LINKED)
  BB_CUBLAS_FUNCTIONS(BB_TAKE_LINKED)
#undef BB_TAKE_LINKED
  l->api.lt_path = l->api.blas_path = "the host emulation (linked)";
  return l;
}

#else

#if defined(BARBELL_CUDA_LIBRARY_DIR)
const char* const kToolkitDir = BARBELL_CUDA_LIBRARY_DIR;
#else
const char* const kToolkitDir = "";
#endif

std::string in_dir(const std::string& dir, const std::string& file) {
  return dir.empty() ? "" : dir + "/" + file;
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

template <typename F>
void take(void* lib, const char* symbol, F& fn, std::string* missing) {
  fn = reinterpret_cast<F>(dlsym(lib, symbol));
  if (!fn) *missing += (missing->empty() ? "" : ", ") + std::string(symbol);
}

Loaded* load() {
  auto* l = new Loaded();
  const std::string major = std::to_string(CUBLAS_VER_MAJOR);
  const std::string lt_so = "libcublasLt.so." + major, blas_so = "libcublas.so." + major;
  const std::string fix = fmt::format(
      "install CUDA {}'s cuBLAS (the CUDA toolkit's lib64, or NVIDIA's cuBLAS wheel for CUDA {}) and put its "
      "directory on LD_LIBRARY_PATH, or set BARBELL_CUBLASLT_LIBRARY and BARBELL_CUBLAS_LIBRARY to the full "
      "paths of {} and {}",
      major, major, lt_so, blas_so);

  // RTLD_LOCAL: nothing else in the process should bind to these symbols by accident.
  detail::OpenedLibrary lt = detail::open_first(
      detail::library_candidates("BARBELL_CUBLASLT_LIBRARY", {lt_so, in_dir(kToolkitDir, lt_so)}),
      RTLD_NOW | RTLD_LOCAL);
  if (!lt.handle) {
    l->error =
        fmt::format("gpu matmul: cuBLASLt ({}) could not be loaded (tried {}); {}", lt_so, lt.tried, fix);
    return l;
  }
  l->api.lt_path = detail::library_path(lt.handle);
  if (l->api.lt_path.empty()) l->api.lt_path = lt.name;
  std::string missing;
  decltype(&::cublasLtGetVersion) get_version = nullptr;
  take(lt.handle, "cublasLtGetVersion", get_version, &missing);
#define BB_TAKE_LT(f) take(lt.handle, #f, l->api.f, &missing);
  BB_CUBLASLT_FUNCTIONS(BB_TAKE_LT)
#undef BB_TAKE_LT
  if (!missing.empty()) {
    l->error = fmt::format("gpu matmul: {} lacks {}; {}", l->api.lt_path, missing, fix);
    return l;
  }
  l->api.lt_version = get_version();
  if (l->api.lt_version / 10000 != CUBLAS_VER_MAJOR) {
    l->error = fmt::format(
        "gpu matmul: {} is cuBLASLt {}.{}.{}, but this build of barbell needs cuBLAS {}; {}", l->api.lt_path,
        l->api.lt_version / 10000, l->api.lt_version / 100 % 100, l->api.lt_version % 100, major, fix);
    return l;
  }

  detail::OpenedLibrary bl = detail::open_first(
      detail::library_candidates("BARBELL_CUBLAS_LIBRARY", {in_dir(dir_of(l->api.lt_path), blas_so), blas_so,
                                                            in_dir(kToolkitDir, blas_so)}),
      RTLD_NOW | RTLD_LOCAL);
  if (!bl.handle) {
    l->error =
        fmt::format("gpu matmul: cuBLAS ({}) could not be loaded (tried {}); {}", blas_so, bl.tried, fix);
    return l;
  }
  l->api.blas_path = detail::library_path(bl.handle);
  if (l->api.blas_path.empty()) l->api.blas_path = bl.name;
#define BB_TAKE_BLAS(f) take(bl.handle, #f, l->api.f, &missing);
  BB_CUBLAS_FUNCTIONS(BB_TAKE_BLAS)
#undef BB_TAKE_BLAS
  if (!missing.empty()) l->error = fmt::format("gpu matmul: {} lacks {}; {}", l->api.blas_path, missing, fix);
  return l;
}

#endif

const Loaded& loaded() {
  // Thread-safe one-time initialisation; never destroyed (plans and handles outlive exit order).
  static const Loaded* l = load();
  return *l;
}

}  // namespace

const BlasApi& blas() {
  const Loaded& l = loaded();
  if (!l.error.empty()) throw CudaError(l.error);
  return l.api;
}

std::string blas_library_description() {
  const BlasApi& b = blas();
  if (b.lt_version == 0) return "cuBLASLt and cuBLAS: " + b.lt_path;
  return fmt::format("cuBLASLt {}.{}.{} ({}), cuBLAS ({})", b.lt_version / 10000, b.lt_version / 100 % 100,
                     b.lt_version % 100, b.lt_path, b.blas_path);
}

}  // namespace barbell::gpu

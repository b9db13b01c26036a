// Opening the optional vendor libraries at first use: candidates, dlopen with the reasons
// kept for the error message, and where libbarbell itself lives (for its backend modules).
#include "core/dynamic_library.hpp"

#include <dlfcn.h>
#include <link.h>

#include <cstdlib>

#include "barbell/core/error.hpp"

namespace barbell::detail {

std::vector<std::string> library_candidates(const char* env_var, const std::vector<std::string>& names) {
  std::vector<std::string> out;
  // A library the user named is the only one tried: another one loaded in its place would be
  // a silent surprise.
  if (const char* v = env_var ? std::getenv(env_var) : nullptr; v && *v) return {v};
  for (const std::string& n : names)
    if (!n.empty()) out.push_back(n);
  return out;
}

OpenedLibrary open_first(const std::vector<std::string>& candidates, int flags) {
  OpenedLibrary r;
  for (const std::string& name : candidates) {
    dlerror();
    if (void* h = dlopen(name.c_str(), flags)) {
      r.handle = h;
      r.name = name;
      return r;
    }
    const char* e = dlerror();
    r.tried += (r.tried.empty() ? "" : "; ") + name + ": " + (e ? e : "dlopen failed");
  }
  if (r.tried.empty()) r.tried = "no candidate library";
  return r;
}

std::string library_path(void* handle) {
  struct link_map* map = nullptr;
  if (!handle || dlinfo(handle, RTLD_DI_LINKMAP, &map) != 0 || !map || !map->l_name) return {};
  return map->l_name;
}

std::string own_directory() {
  Dl_info info{};
  // Any function of this library will do: its address says which loaded file holds it.
  if (dladdr(reinterpret_cast<void*>(&own_directory), &info) == 0 || !info.dli_fname) return {};
  std::string path = info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

std::string load_backend_library(BackendLibrary which) {
  switch (which) {
    case BackendLibrary::Cublas:
#if defined(BARBELL_WITH_CUDA)
      return gpu::blas_library_description();
#else
      throw DeviceError("cuBLAS: this build of barbell has no CUDA backend (configure with BARBELL_CUDA=ON)");
#endif
    case BackendLibrary::Nccl: return dist::detail::nccl_library_description();
    case BackendLibrary::Mpi: return dist::detail::mpi_library_description();
  }
  throw ValueError("load_backend_library: unknown backend library");
}

}  // namespace barbell::detail

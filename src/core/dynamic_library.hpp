// Opening the optional vendor libraries at first use (cuBLAS/cuBLASLt, NCCL, the MPI backend
// module): dlopen over a list of candidates, remembering why each one failed for the error.
#pragma once

#include <string>
#include <vector>

namespace barbell::detail {

struct OpenedLibrary {
  void* handle = nullptr;  // never closed: the functions taken from it stay in use until exit
  std::string name;        // the candidate that loaded
  std::string tried;       // "candidate: dlerror's reason" for each one that did not, "; "-separated
};

// Only $env_var (a full path) when it is set and not empty; else `names`, empty ones dropped.
std::vector<std::string> library_candidates(const char* env_var, const std::vector<std::string>& names);

// dlopen(candidate, flags) for each candidate in order; the first that loads wins.
OpenedLibrary open_first(const std::vector<std::string>& candidates, int flags);

// The file a handle was loaded from ("" when the loader does not say).
std::string library_path(void* handle);

// The directory of the file that holds libbarbell itself ("" when it cannot be found).
std::string own_directory();

// Diagnostics (tests/cpu_only): loads the backend's library now, as its first use would, and
// says what was loaded and from where. Throws the backend's error when it cannot be loaded
// (CudaError, NcclError, Error) or when this build has no such backend.
enum class BackendLibrary { Cublas, Nccl, Mpi };
std::string load_backend_library(BackendLibrary which);

}  // namespace barbell::detail

// Defined by the backends (kernels/blas_api.cu, src/dist/process_group_nccl.cpp,
// src/dist/mpi_backend.cpp); load_backend_library dispatches to them.
namespace barbell::gpu {
std::string blas_library_description();
}
namespace barbell::dist::detail {
std::string nccl_library_description();
std::string mpi_library_description();
}  // namespace barbell::dist::detail

// The MPI functions of dist/backends.hpp in libbarbell: they load the MPI backend module
// (libbarbell_mpi.so, process_group_mpi.cpp) at the first MPI use and call through its table.
//
// Why a module rather than a dlsym table like NCCL's: MPI's handles and constants
// (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ...) are macros whose values are implementation
// specific (Open MPI: addresses of its global objects; MPICH: integer constants), so code
// that uses them must be compiled against the MPI it runs with. The module is, and
// libbarbell never references an MPI symbol.
//
// Candidates: $BARBELL_MPI_BACKEND (a full path) alone when it is set; else libbarbell_mpi.so
// in the directory of libbarbell itself (the build tree, or the installed lib/), then the
// loader's search.
#include <dlfcn.h>

#include <atomic>
#include <string>

#include "barbell/config.hpp"
#include "barbell/core/error.hpp"
#include "core/dynamic_library.hpp"
#include "dist/backends.hpp"

namespace barbell::dist::detail {

#if defined(BARBELL_WITH_MPI)

namespace {

using barbell::detail::library_candidates;
using barbell::detail::library_path;
using barbell::detail::open_first;
using barbell::detail::OpenedLibrary;
using barbell::detail::own_directory;

#if defined(BARBELL_MPI_LIBRARIES)
const char* const kBuiltAgainst = BARBELL_MPI_LIBRARIES;
#else
const char* const kBuiltAgainst = "the MPI it was built with";
#endif

struct LoadedMpi {
  const MpiBackend* api = nullptr;
  std::string path;
  std::string error;  // empty when api is usable
};

LoadedMpi* load_mpi() {
  auto* l = new LoadedMpi();
  const std::string module = kMpiBackendModule;
  const std::string dir = own_directory();
  const std::string fix = fmt::format(
      "it needs the MPI library it was built against ({}): install it (Debian: apt install libopenmpi3) or "
      "put its directory on LD_LIBRARY_PATH; if {} itself is not beside libbarbell, set BARBELL_MPI_BACKEND "
      "to its full path",
      kBuiltAgainst, module);
  // RTLD_GLOBAL: MPI's own plugins (Open MPI's mca components, opened by MPI_Init) resolve
  // symbols of libmpi in the global scope, where they were when libbarbell linked MPI.
  OpenedLibrary lib = open_first(
      library_candidates("BARBELL_MPI_BACKEND", {dir.empty() ? std::string() : dir + "/" + module, module}),
      RTLD_NOW | RTLD_GLOBAL);
  if (!lib.handle) {
    l->error = fmt::format("the MPI backend could not be loaded (tried {}); {}", lib.tried, fix);
    return l;
  }
  l->path = library_path(lib.handle);
  if (l->path.empty()) l->path = lib.name;
  using Entry = const MpiBackend* (*)();
  auto entry = reinterpret_cast<Entry>(dlsym(lib.handle, kMpiBackendEntry));
  if (!entry) {
    l->error = fmt::format("{} is not barbell's MPI backend (it has no {})", l->path, kMpiBackendEntry);
    return l;
  }
  const MpiBackend* api = entry();
  if (!api || api->abi != kMpiBackendAbi || std::string(api->version) != BARBELL_VERSION) {
    l->error = fmt::format(
        "{} is from another build of barbell (abi {}, version {}; this libbarbell has abi {}, version {}): "
        "use "
        "the {} built and installed with this library",
        l->path, api ? api->abi : -1, api ? api->version : "?", kMpiBackendAbi, BARBELL_VERSION, module);
    return l;
  }
  l->api = api;
  return l;
}

std::atomic<const LoadedMpi*> g_loaded{nullptr};

const LoadedMpi& loaded() {
  // Thread-safe one-time initialisation; never unloaded (groups and MPI live until exit).
  static const LoadedMpi* l = [] {
    const LoadedMpi* p = load_mpi();
    g_loaded.store(p, std::memory_order_release);
    return p;
  }();
  return *l;
}

const MpiBackend& backend(const char* what) {
  const LoadedMpi& l = loaded();
  if (!l.api) throw Error(fmt::format("{}: {}", what, l.error));
  return *l.api;
}

// The backend when MPI can be running in this process (the module is loaded, or the program
// has MPI of its own in the global scope), without loading MPI only to ask; else nullptr.
const MpiBackend* backend_if_present() {
  const LoadedMpi* l = g_loaded.load(std::memory_order_acquire);
  if (!l && dlsym(RTLD_DEFAULT, "MPI_Initialized")) l = &loaded();
  return l ? l->api : nullptr;
}

}  // namespace

bool mpi_built() { return true; }
std::shared_ptr<void> mpi_keepalive() { return backend("init_mpi").keepalive(); }
MpiWorld mpi_world() { return backend("init_mpi").world(); }
ProcessGroupPtr make_mpi_group(double timeout_s) { return backend("init_mpi").make_group(timeout_s); }
void mpi_broadcast_bytes(void* data, size_t n, int root, double timeout_s) {
  backend("init_mpi").broadcast_bytes(data, n, root, timeout_s);
}
bool mpi_active() {
  const MpiBackend* b = backend_if_present();
  return b && b->active();
}
void mpi_abort(int code) {
  if (const MpiBackend* b = backend_if_present()) b->abort(code);
}

std::string mpi_library_description() {
  const MpiBackend& b = backend("mpi");
  return fmt::format("barbell's MPI backend ({}) with {}", loaded().path, b.mpi_library);
}

#else  // no MPI in this build

namespace {
[[noreturn]] void no_mpi(const char* what) {
  throw Error(
      fmt::format("{}: this build of barbell has no MPI backend (configure with -DBARBELL_MPI=ON)", what));
}
}  // namespace

bool mpi_built() { return false; }
std::shared_ptr<void> mpi_keepalive() { no_mpi("init_mpi"); }
MpiWorld mpi_world() { no_mpi("init_mpi"); }
ProcessGroupPtr make_mpi_group(double) { no_mpi("init_mpi"); }
void mpi_broadcast_bytes(void*, size_t, int, double) { no_mpi("init_mpi"); }
bool mpi_active() { return false; }
void mpi_abort(int) {}
std::string mpi_library_description() { no_mpi("mpi"); }

#endif

}  // namespace barbell::dist::detail

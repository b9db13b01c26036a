// The loader's view for tests/cpu_only: which vendor libraries dlopen can open, and what
// barbell's backends do at their first use when theirs cannot be opened.
//   cpu_only_probe reachable LIBRARY...    each opens (printed with the file it resolved to),
//                                          and every backend library this build has loads
//   cpu_only_probe unreachable LIBRARY...  none opens, and each backend's first use throws
//                                          barbell's error naming its library and the fix
// A LIBRARY is a soname (the loader's search) or a path. Exit 0 when all of it holds.
#include <dlfcn.h>
#include <link.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "barbell/barbell.hpp"
#include "core/dynamic_library.hpp"

namespace bb = barbell;

namespace {

int g_failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "  ok  " : "  FAIL", what.c_str());
  if (!ok) ++g_failures;
}

std::string opened_path(void* h) {
  struct link_map* map = nullptr;
  return dlinfo(h, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name ? map->l_name : "?";
}

struct Backend {
  const char* name;
  bool built;
  bb::detail::BackendLibrary lib;
  std::vector<std::string> must_mention;  // in the error when the library is unreachable
};

// Runs f, which must throw E (not only some barbell::Error) with every string of `mention`.
template <typename E>
void expect_error(const std::string& what, const std::function<void()>& f,
                  const std::vector<std::string>& mention) {
  try {
    f();
    check(false, what + ": did not throw");
  } catch (const E& e) {
    std::string msg = e.what(), missing;
    for (const std::string& m : mention)
      if (msg.find(m) == std::string::npos) missing += (missing.empty() ? "" : ", ") + m;
    check(missing.empty(),
          what + " throws: " + msg + (missing.empty() ? "" : " [does not mention " + missing + "]"));
  } catch (const std::exception& e) { check(false, what + ": threw the wrong type: " + e.what()); }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "reachable" && mode != "unreachable") {
    std::fprintf(stderr, "usage: cpu_only_probe reachable|unreachable LIBRARY...\n");
    return 2;
  }
  const bool reachable = mode == "reachable";
  for (int i = 2; i < argc; ++i) {
    dlerror();
    void* h = dlopen(argv[i], RTLD_NOW | RTLD_LOCAL);
    const char* err = h ? nullptr : dlerror();
    if (reachable)
      check(h != nullptr, fmt::format("dlopen {}: {}", argv[i],
                                      h     ? "opens " + opened_path(h)
                                      : err ? err
                                            : "?"));
    else
      check(h == nullptr, fmt::format("dlopen {}: {}", argv[i],
                                      h     ? "OPENS " + opened_path(h)
                                      : err ? err
                                            : "?"));
  }

  const std::vector<Backend> backends = {
      {"cuBLAS",
       BARBELL_HAVE_CUDA != 0,
       bb::detail::BackendLibrary::Cublas,
       {"libcublasLt.so.", "BARBELL_CUBLASLT_LIBRARY"}},
      {"NCCL",
       BARBELL_HAVE_NCCL != 0,
       bb::detail::BackendLibrary::Nccl,
       {"libnccl.so.", "BARBELL_NCCL_LIBRARY"}},
      {"MPI",
       BARBELL_HAVE_MPI != 0,
       bb::detail::BackendLibrary::Mpi,
       {"libbarbell_mpi.so", "libmpi", "BARBELL_MPI_BACKEND"}},
  };
  for (const Backend& b : backends) {
    if (!b.built) {
      std::printf("  --   %s: not in this build\n", b.name);
      continue;
    }
    auto load = [&] { return bb::detail::load_backend_library(b.lib); };
    if (reachable) {
      try {
        check(true, fmt::format("{} loads: {}", b.name, load()));
      } catch (const std::exception& e) {
        check(false, fmt::format("{} does not load: {}", b.name, e.what()));
      }
      continue;
    }
    // The first use, then a later one: the same error (the load is tried once).
    for (const char* when : {"first use", "second use"}) {
      const std::string what = fmt::format("{} ({})", b.name, when);
      switch (b.lib) {
        case bb::detail::BackendLibrary::Cublas:
          expect_error<bb::CudaError>(what, load, b.must_mention);
          break;
        case bb::detail::BackendLibrary::Nccl: expect_error<bb::NcclError>(what, load, b.must_mention); break;
        case bb::detail::BackendLibrary::Mpi: expect_error<bb::Error>(what, load, b.must_mention); break;
      }
    }
  }
  if (!reachable && BARBELL_HAVE_MPI) {
    // What a user's program sees: init_mpi's error; and abort_job, with no MPI to end the
    // job through, returns to its caller (who exits).
    bb::dist::InitOptions o;
    o.backend = bb::dist::Backend::MPI;
    expect_error<bb::Error>("dist::init_mpi(Backend::MPI)", [&] { bb::dist::init_mpi(o); },
                            {"init_mpi", "libbarbell_mpi.so"});
    std::fflush(stdout);
    bb::dist::abort_job("cpu_only_probe: abort_job with MPI unreachable (expected)", 3);
    check(true, "abort_job returns when MPI cannot be loaded");
  }
  // The library itself works: a CPU matmul against a hand-computed value.
  bb::Tensor a = bb::from_vector<float>({1, 2, 3, 4}, {2, 2});
  check(bb::matmul(a, a).sum().item() == 54.0, "CPU matmul [[1,2],[3,4]]^2 sums to 54");
  std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "PASSED", g_failures);
  return g_failures ? 1 : 0;
}

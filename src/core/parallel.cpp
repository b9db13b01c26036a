// CPU threading: OpenMP and OpenBLAS thread counts, set together so BLAS calls and
// the loops around them do not oversubscribe the cores.
#include "barbell/core/parallel.hpp"

#include <omp.h>
#include <unistd.h>

#include <cstdlib>

#include "barbell/core/error.hpp"

extern "C" void openblas_set_num_threads(int);

namespace barbell {

int num_threads() { return omp_get_max_threads(); }

void set_num_threads(int n) {
  BB_CHECK(n >= 1, ValueError, "set_num_threads: need at least 1 thread, got {}", n);
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

void prefer_passive_omp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || argv == nullptr) return;
  setenv("OMP_WAIT_POLICY", "passive", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then go on as we are
}

}  // namespace barbell

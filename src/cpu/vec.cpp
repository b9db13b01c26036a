// Run-time choice of the vectorised kernels' x86-64 level (vec.hpp): the library is
// built for baseline x86-64, and src/cpu/isa/ holds the same kernels built for AVX2 and
// AVX-512; cpuid (through the compiler's __builtin_cpu_supports) picks the best one.
#include "cpu/vec.hpp"

#include <cstdlib>
#include <cstring>

#include "barbell/core/error.hpp"

namespace barbell::cpu {

namespace {

bool cpu_has(const char* isa) {
  if (std::strcmp(isa, "sse2") == 0) return true;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::strcmp(isa, "avx2") == 0) return avx2;
  if (std::strcmp(isa, "avx512") == 0)
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
  return false;
}

const VecKernels& pick() {
  if (const char* want = std::getenv("BARBELL_CPU_ISA"); want != nullptr && *want != '\0') {
    const VecKernels* k = vec_for(want);
    BB_CHECK(k != nullptr, ValueError,
             "BARBELL_CPU_ISA={}: not a level this CPU runs (sse2, avx2, avx512, as far as the CPU has them)",
             want);
    return *k;
  }
  for (const char* isa : {"avx512", "avx2"})
    if (const VecKernels* k = vec_for(isa)) return *k;
  return vec_kernels_sse2();
}

}  // namespace

const VecKernels* vec_for(const char* isa) {
  if (!cpu_has(isa)) return nullptr;
  if (std::strcmp(isa, "avx512") == 0) return &vec_kernels_avx512();
  if (std::strcmp(isa, "avx2") == 0) return &vec_kernels_avx2();
  return &vec_kernels_sse2();
}

const VecKernels& vec() {
  static const VecKernels& k = pick();
  return k;
}

}  // namespace barbell::cpu

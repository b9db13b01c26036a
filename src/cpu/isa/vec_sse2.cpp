// The vectorised CPU kernels (src/cpu/vec_kernels.inl) compiled for x86-64 level "sse2";
// cmake/cpu_isa.cmake gives this file its -m flags, src/cpu/vec.cpp picks it by cpuid.
#define BB_ISA_TABLE vec_kernels_sse2
#define BB_ISA_NAME "sse2"
#include "cpu/vec_kernels.inl"

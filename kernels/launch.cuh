// Kernel launches, one spelling for nvcc and for the emulated device:
//   BB_LAUNCH(grid, block, smem, stream, kernel)(args...)     kernel<<<grid, block, smem, stream>>>(args...)
//   BB_LAUNCH_FN(grid, block, smem, stream, fn)(args...)       the same through a function pointer; the
//                                                              emulator then knows the kernel's
//                                                              cudaFuncSetAttribute settings
// The kernel expression comes last so that template arguments with commas need no
// parentheses. Every launch is followed by BB_CUDA_LAUNCH_CHECK() (common.cuh).
#pragma once

// BB_VECTOR_ACCESS(Type), inside an aligned struct that kernels load and store whole
// (the 16-byte vectors): a GPU moves it in one access, which must be aligned. The host
// compiler splits such copies into scalar ones, so on the emulated device the struct's
// copies go through the emulator, which checks and counts them as one access.
#ifdef BARBELL_CUDA_EMULATE
#define BB_VECTOR_ACCESS(Type) BB_EMU_VECTOR_ACCESS(Type)
#else
#define BB_VECTOR_ACCESS(Type)
#endif

#ifdef BARBELL_CUDA_EMULATE
#define BB_LAUNCH(grid, block, smem, stream, ...) BB_EMU_LAUNCH(grid, block, smem, stream, __VA_ARGS__)
#define BB_LAUNCH_FN(grid, block, smem, stream, fn) BB_EMU_LAUNCH_FN(grid, block, smem, stream, fn)
#else
#define BB_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define BB_LAUNCH_FN(grid, block, smem, stream, fn) fn<<<grid, block, smem, stream>>>
#endif

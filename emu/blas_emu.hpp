// What the emulated cuBLAS/cuBLASLt (emu/cublas.cpp, emu/cublaslt.cpp) offer beyond the libraries'
// own API: the reason the last call was refused, and whether refusals are printed.
#pragma once

#include <string>

namespace barbell::emu {

// Why the last emulated cuBLAS or cuBLASLt call on this thread returned something other than
// CUBLAS_STATUS_SUCCESS (the call, the status and the offending values); empty after a success.
std::string blas_last_error();

// Refusals with CUBLAS_STATUS_INVALID_VALUE or CUBLAS_STATUS_NOT_INITIALIZED (caller bugs) are
// printed to stderr with their reason unless quiet; NOT_SUPPORTED (a normal answer: barbell then
// falls back) never is. Default: not quiet.
void set_blas_quiet(bool quiet);

}  // namespace barbell::emu

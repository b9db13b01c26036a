// CPU threading: how many threads the CPU backend (OpenMP loops and OpenBLAS) uses.
#pragma once

namespace barbell {

int num_threads();
// Sets the thread count of both OpenMP and OpenBLAS; n < 1 throws ValueError.
void set_num_threads(int n);

}  // namespace barbell

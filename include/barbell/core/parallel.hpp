// CPU threading: how many threads the CPU backend (OpenMP loops and OpenBLAS) uses.
#pragma once

namespace barbell {

int num_threads();
// Sets the thread count of both OpenMP and OpenBLAS; n < 1 throws ValueError.
void set_num_threads(int n);

// OpenMP threads that spin while they wait cost small-op workloads dearly on machines
// with few or shared cores (a CPU training step of the demo GPT: 272 ms spinning,
// 149 ms passive, on a 2-vCPU VM). libgomp reads its wait policy once, when it loads,
// so a program can only change it by restarting: call this first thing in main().
// Unless OMP_WAIT_POLICY is already set, it sets it to "passive" and re-executes the
// program with the same arguments (Linux); it returns only when it did not re-execute.
void prefer_passive_omp_wait(char** argv);

}  // namespace barbell

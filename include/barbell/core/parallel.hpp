// CPU threading: how many threads the CPU backend uses (its own pool for loops; OpenBLAS is
// always called single-threaded, from the pool's threads, so the two never compete).
#pragma once

namespace barbell {

// The pool's size, this thread included. The default is BARBELL_NUM_THREADS, else
// OMP_NUM_THREADS, else one thread per physical core this process may run on (its CPU
// affinity, a cgroup CPU quota, SMT siblings counted once).
int num_threads();
// Sets the thread count; n < 1 throws ValueError. Not while another thread runs CPU ops.
void set_num_threads(int n);

}  // namespace barbell

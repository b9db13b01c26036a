// Starting ranks: under mpirun, from RANK / WORLD_SIZE / LOCAL_RANK with a rendezvous
// file, or one process with one thread per GPU; and abort_job for a program's error path.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "barbell/dist/process_group.hpp"

namespace barbell::dist {

struct InitOptions {
  // MPI: CPU tensors. NCCL: CUDA tensors (needs a build with BARBELL_NCCL).
  Backend backend = Backend::MPI;
  // NCCL: the GPU of this rank; -1 picks local_rank % device_count().
  int gpu = -1;
  // Collective timeout in seconds; 0 takes default_timeout_s().
  double timeout_s = 0;
  // init_env / init: the rendezvous file; empty takes $BARBELL_RENDEZVOUS.
  std::string rendezvous_file;
};

// Under mpirun / mpiexec (or any MPI launcher): rank and size from MPI_COMM_WORLD, the
// node-local rank from MPI_Comm_split_type(MPI_COMM_TYPE_SHARED). Initializes MPI if the
// program has not (MPI_THREAD_SERIALIZED) and finalizes it when the last MPI group is
// destroyed. Backend::MPI gives a group over a duplicate of MPI_COMM_WORLD; Backend::NCCL
// has rank 0 create the NCCL unique id, broadcasts it with MPI and builds the NCCL
// communicator on GPU local_rank % device_count() (or opts.gpu). Throws Error in a build
// without MPI (or without NCCL for Backend::NCCL).
ProcessGroupPtr init_mpi(const InitOptions& opts = {});

// For schedulers without MPI (torchrun-style launchers, Kubernetes, plain ssh): RANK,
// WORLD_SIZE and LOCAL_RANK from the environment, NCCL only. Rank 0 writes the NCCL unique
// id to the rendezvous file (a temp file renamed into place, so readers never see half of
// it); the other ranks poll for it until the timeout. The file must be on a file system
// every rank sees, and new for each job: it records $BARBELL_RUN_ID (or $SLURM_JOB_ID,
// with $SLURM_STEP_ID when set) and the world size, and readers ignore a file whose tag or
// size differs, or that is older than this process's start minus the timeout (a leftover
// of an earlier job). Rank 0 deletes it once the communicator is up, or when init fails.
ProcessGroupPtr init_env(const InitOptions& opts = {});

// One process driving several GPUs, one thread each: NCCL communicators for `gpus` (all
// visible GPUs when empty; a GPU listed twice is a ValueError), non-blocking and built in
// one NCCL group so the timeout applies; groups[i] is rank i on gpus[i]. Each group must
// be used only from its own thread; run_threads does that.
std::vector<ProcessGroupPtr> init_threads(std::vector<int> gpus = {}, const InitOptions& opts = {});
// Runs fn(group) on one thread per group, with the group's GPU current. If one thread
// throws, every group's communicator is aborted so the other threads fail instead of
// hanging, and the first error is rethrown here after all threads have ended.
void run_threads(const std::vector<ProcessGroupPtr>& groups, const std::function<void(ProcessGroup&)>& fn);

// The one entry point a training program needs: init_mpi when an MPI launcher started
// this process, init_env when RANK and WORLD_SIZE are set, otherwise a one-rank group on
// which every collective is a no-op (so the same program runs alone unchanged).
ProcessGroupPtr init(const InitOptions& opts = {});

// A one-rank group on `device`: every collective leaves its data as it is (or copies it
// for reduce_scatter / all_gather).
ProcessGroupPtr single_process_group(Device device = Device::cpu());

// True when an MPI launcher (Open MPI, MPICH/Hydra, PMIx, Slurm's PMI) started us.
bool launched_by_mpi();
// The node-local rank this process was started as (OMPI_COMM_WORLD_LOCAL_RANK,
// MPI_LOCALRANKID, SLURM_LOCALID or LOCAL_RANK), or 0.
int local_rank_from_env();

// For the program's own error path, never called by the library: prints
// "[rank R] <message>" to stderr and ends the job. Under MPI it calls MPI_Abort, which
// kills every rank and does not return. Otherwise it aborts this process's NCCL
// communicators, so the other ranks' collectives fail at once instead of waiting for the
// timeout, and returns: the program should then exit with a non-zero status.
void abort_job(const std::string& message, int code = 1);

}  // namespace barbell::dist

// The seam between the public dist API and its backends: MPI (process_group_mpi.cpp, a
// module of its own that mpi_backend.cpp loads), NCCL (process_group_nccl.cpp) and the
// one-rank group. A build without a backend has stubs that throw a clear Error.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "barbell/dist/process_group.hpp"

namespace barbell::dist::detail {

// ---- MPI ----
bool mpi_built();
struct MpiWorld {
  int rank = 0, size = 1, local_rank = 0, local_size = 1;
};
// Keeps MPI initialized while held (MPI is finalized when the last holder, MPI group or
// handle, goes). Initializes MPI if needed.
std::shared_ptr<void> mpi_keepalive();
// Describes MPI_COMM_WORLD (hold mpi_keepalive() around it).
MpiWorld mpi_world();
// A group over a duplicate of MPI_COMM_WORLD.
ProcessGroupPtr make_mpi_group(double timeout_s);
// Broadcast of raw bytes over MPI_COMM_WORLD (to share the NCCL unique id).
void mpi_broadcast_bytes(void* data, size_t n, int root, double timeout_s);
// MPI is initialized and not yet finalized.
bool mpi_active();
// MPI_Abort(MPI_COMM_WORLD, code) when MPI is active; returns otherwise.
void mpi_abort(int code);

// The MPI functions above live in libbarbell_mpi.so (process_group_mpi.cpp, linked against
// MPI), so that libbarbell itself needs no MPI: mpi_backend.cpp loads the module beside
// libbarbell at the first MPI use and calls through this table, which the module's one
// exported function hands over. The module and the library must come from the same build:
// the table's abi and version are checked.
struct MpiBackend {
  int abi;                  // kMpiBackendAbi of the module's build
  const char* version;      // BARBELL_VERSION of the module's build
  const char* mpi_library;  // MPI_Get_library_version's first line
  std::shared_ptr<void> (*keepalive)();
  MpiWorld (*world)();
  ProcessGroupPtr (*make_group)(double timeout_s);
  void (*broadcast_bytes)(void* data, size_t n, int root, double timeout_s);
  bool (*active)();
  void (*abort)(int code);
};
constexpr int kMpiBackendAbi = 1;
constexpr const char* kMpiBackendModule = "libbarbell_mpi.so";
constexpr const char* kMpiBackendEntry = "barbell_mpi_backend_v1";

// ---- NCCL ----
bool nccl_built();
std::string nccl_unique_id();  // the bytes of a fresh ncclUniqueId
size_t nccl_unique_id_size();
// `keepalive` is held by the group (init_mpi passes MPI's, so abort_job can still MPI_Abort).
ProcessGroupPtr make_nccl_group(const std::string& unique_id, int rank, int size, int gpu, double timeout_s,
                                std::shared_ptr<void> keepalive = nullptr);
std::vector<ProcessGroupPtr> make_nccl_groups(const std::vector<int>& gpus, double timeout_s);
// ncclCommAbort on every live communicator of this process; returns how many.
int nccl_abort_all();
// Aborts the communicator behind a NCCL group (no-op for other backends).
void nccl_abort(ProcessGroup& pg);
// Makes the group's GPU current on the calling thread (no-op for other backends).
void set_group_device(ProcessGroup& pg);

// ---- the one-rank group ----
ProcessGroupPtr make_local_group(Device device);

// Shared by the backends: the error for a collective that did not finish in time.
std::string timeout_message(const std::string& what, double timeout_s, int rank, int size);

}  // namespace barbell::dist::detail

// Which job this process belongs to (RANK/WORLD_SIZE/MASTER_*, mpirun, srun, or none) and the
// Communicator for it: Gloo through c10d with a TCPStore rendezvous, onebit's MPI, or NCCL.
#pragma once
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "onebit/communicator.hpp"

namespace onebit::train {

struct JobInfo {
  int rank = 0, size = 1, local_rank = 0;
  std::string master_addr;  // empty: not given (needed by gloo and nccl only)
  int master_port = 0;
  std::string source;       // "env" (RANK...), "mpirun", "srun"
};

// The job this process was started into, if any: RANK and WORLD_SIZE (torchrun and onebit's own
// launcher), OMPI_COMM_WORLD_* or PMI_* (mpirun), SLURM_PROCID/SLURM_NTASKS (srun).
std::optional<JobInfo> detect_job();

// Joins the job. backend: gloo | mpi | nccl. Rendezvous and every collective wait at most timeout.
// gloo and nccl need master_addr/master_port (from MASTER_ADDR/MASTER_PORT; under mpirun with all
// ranks on one machine they default to 127.0.0.1:29500).
std::shared_ptr<Communicator> join_job(const JobInfo& job, const std::string& backend, const std::string& device,
                                       std::chrono::milliseconds timeout);

// Throws onebit::Error when this build or machine cannot run `backend` on `device` with
// `local_workers` workers on this machine (no CUDA, no NCCL in libtorch, more NCCL workers than
// GPUs, no MPI), so a launch fails before starting any worker.
void check_engine_available(const std::string& backend, const std::string& device, int local_workers = 1);
// Throws onebit::Error when --precision bf16 cannot run on `device` (a GPU before compute capability 8.0).
void check_precision_available(const std::string& precision, const std::string& device);

}  // namespace onebit::train

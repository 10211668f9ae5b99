// Joining a data-parallel job (see distributed.hpp). Gloo's device binds to loopback when the master
// is local, to GLOO_SOCKET_IFNAME when set, else to the address this host's name resolves to.
#define USE_C10D_GLOO 1
#include "train/distributed.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/cuda.h>
#include <torch/version.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#ifndef ONEBIT_TORCH_NCCL
#define ONEBIT_TORCH_NCCL 0  // set by CMake when libtorch was built with CUDA and NCCL is found
#endif
#if ONEBIT_TORCH_NCCL
#define USE_C10D_NCCL 1
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "c10d_compat.hpp"
#include "onebit/error.hpp"
#ifdef ONEBIT_HAVE_CUDA
#include "onebit/cuda_kernels.hpp"
#endif
#include "onebit/mpi_comm.hpp"
#include "onebit/torch_c10d.hpp"
#include "onebit/torch_watchdog.hpp"

namespace onebit::train {
namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

int env_int(const char* name, const std::string& value) {
  try {
    size_t used = 0;
    int v = std::stoi(value, &used);
    if (used == value.size()) return v;
  } catch (const std::exception&) {
  }
  ONEBIT_CHECK(false, "onebit train: the environment variable " << name << "='" << value << "' is not an integer");
  return 0;
}

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

c10::intrusive_ptr<c10d::Store> rendezvous(const JobInfo& job, std::chrono::milliseconds timeout) {
  ONEBIT_CHECK(!job.master_addr.empty() && job.master_port > 0,
               "onebit train: rank " << job.rank << " of " << job.size << " (" << job.source
                                     << "): set MASTER_ADDR and MASTER_PORT to rank 0's address and a free port");
  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(job.master_port);
  o.isServer = job.rank == 0;
  o.numWorkers = static_cast<size_t>(job.size);
  o.waitWorkers = true;
  o.timeout = timeout;
  try {
    return c10::make_intrusive<c10d::TCPStore>(job.master_addr, o);
  } catch (const std::exception& e) {
    std::string cause = e.what();
    if (auto nl = cause.find('\n'); nl != std::string::npos) cause.resize(nl);
    ONEBIT_CHECK(false, "onebit train: rendezvous at " << job.master_addr << ":" << job.master_port << " failed on rank "
                                                       << job.rank << " of " << job.size << ": " << cause);
  }
  return {};
}

std::shared_ptr<Communicator> join_gloo(const JobInfo& job, std::chrono::milliseconds timeout) {
  auto store = rendezvous(job, timeout);
  auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
  if (auto ifname = env("GLOO_SOCKET_IFNAME"))
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(*ifname));
  else if (is_loopback(job.master_addr))
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  else
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  opts->threads = 1;  // one collective at a time: more threads only compete with the model
  c10d_compat::ProcessGroupPtr pg;
  try {
    pg = c10d_compat::group_of(store, job.rank, job.size,
                               c10::make_intrusive<c10d::ProcessGroupGloo>(store, job.rank, job.size, opts),
                               c10d_compat::Engine::kGloo);
  } catch (const std::exception& e) {
    std::string cause = e.what();
    if (auto nl = cause.find('\n'); nl != std::string::npos) cause.resize(nl);
    ONEBIT_CHECK(false, "onebit train: starting Gloo on rank " << job.rank << " of " << job.size << " failed: " << cause);
  }
  std::shared_ptr<Communicator> comm = make_c10d_communicator(pg);
  comm->set_timeout(timeout);
  return watch_ranks(std::move(comm), tcp_store_connector(job.master_addr, job.master_port, timeout));
}

std::shared_ptr<Communicator> join_nccl(const JobInfo& job, std::chrono::milliseconds timeout) {
#if ONEBIT_TORCH_NCCL
  ONEBIT_CHECK(torch::cuda::is_available(), "onebit train --backend nccl on rank " << job.rank << ": no CUDA device is visible");
  auto store = rendezvous(job, timeout);
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  c10d_compat::ProcessGroupPtr pg = c10d_compat::group_of(
      store, job.rank, job.size, c10::make_intrusive<c10d::ProcessGroupNCCL>(store, job.rank, job.size, opts),
      c10d_compat::Engine::kNccl);
  const int devices = static_cast<int>(torch::cuda::device_count());
  ONEBIT_CHECK(job.local_rank < devices, "onebit train --backend nccl on rank "
                                             << job.rank << ": it is local rank " << job.local_rank << " on a machine with "
                                             << devices << " GPU(s), and NCCL refuses two ranks on one GPU; "
                                             << "use --backend gloo to share GPUs (host staging)");
  std::shared_ptr<Communicator> comm =
      make_c10d_communicator(pg, c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(job.local_rank)));
  comm->set_timeout(timeout);
  return watch_ranks(std::move(comm), tcp_store_connector(job.master_addr, job.master_port, timeout));
#else
  (void)timeout;
  ONEBIT_CHECK(false, "onebit train --backend nccl on rank " << job.rank << ": not available with this libtorch ("
                      << TORCH_VERSION << ", built without CUDA or NCCL); use --backend gloo");
  return {};
#endif
}

}  // namespace

std::optional<JobInfo> detect_job() {
  JobInfo j;
  if (auto r = env("RANK"), s = env("WORLD_SIZE"); r && s) {
    j.rank = env_int("RANK", *r), j.size = env_int("WORLD_SIZE", *s), j.source = "env";
    if (auto l = env("LOCAL_RANK")) j.local_rank = env_int("LOCAL_RANK", *l);
  } else if (auto r = env("OMPI_COMM_WORLD_RANK"), s = env("OMPI_COMM_WORLD_SIZE"); r && s) {
    j.rank = env_int("OMPI_COMM_WORLD_RANK", *r), j.size = env_int("OMPI_COMM_WORLD_SIZE", *s), j.source = "mpirun";
    if (auto l = env("OMPI_COMM_WORLD_LOCAL_RANK")) j.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", *l);
    // All ranks on this machine: the rendezvous can default to loopback.
    if (auto ls = env("OMPI_COMM_WORLD_LOCAL_SIZE"); ls && env_int("OMPI_COMM_WORLD_LOCAL_SIZE", *ls) == j.size)
      j.master_addr = "127.0.0.1", j.master_port = 29500;
  } else if (auto r = env("PMI_RANK"), s = env("PMI_SIZE"); r && s) {
    j.rank = env_int("PMI_RANK", *r), j.size = env_int("PMI_SIZE", *s), j.source = "mpirun";
  } else if (auto r = env("SLURM_PROCID"), s = env("SLURM_NTASKS"); r && s) {
    j.rank = env_int("SLURM_PROCID", *r), j.size = env_int("SLURM_NTASKS", *s), j.source = "srun";
    if (auto l = env("SLURM_LOCALID")) j.local_rank = env_int("SLURM_LOCALID", *l);
  } else {
    return std::nullopt;
  }
  if (auto a = env("MASTER_ADDR")) j.master_addr = *a;
  if (auto p = env("MASTER_PORT")) j.master_port = env_int("MASTER_PORT", *p);
  ONEBIT_CHECK(j.size >= 1 && j.rank >= 0 && j.rank < j.size,
               "onebit train: rank " << j.rank << " is outside a world of " << j.size << " (" << j.source << ")");
  return j;
}

void check_precision_available(const std::string& precision, const std::string& device) {
  if (precision != "bf16" || device != "cuda") return;
#ifdef ONEBIT_HAVE_CUDA
  for (int d = 0; d < static_cast<int>(torch::cuda::device_count()); ++d) {
    const int cc = cuda::compute_capability(d);
    ONEBIT_CHECK(cc >= 80, "onebit train --precision bf16: GPU " << d << " (" << cuda::device_name(d)
                               << ", compute capability " << cc / 10 << "." << cc % 10
                               << ") has no bf16 arithmetic (8.0 or later: A100, H100); use --precision fp32");
  }
#endif
}

void check_engine_available(const std::string& backend, const std::string& device, int local_workers) {
  if (device == "cuda")
    ONEBIT_CHECK(torch::cuda::is_available(), "onebit train --device cuda: no CUDA device is visible to this libtorch");
  if (backend == "nccl" && device == "cuda") {
    const auto gpus = static_cast<int>(torch::cuda::device_count());
    ONEBIT_CHECK(local_workers <= gpus, "onebit train --backend nccl: " << local_workers << " workers on this machine, "
                                            << gpus << " GPU(s), and NCCL refuses two ranks on one GPU; use "
                                            << "--backend gloo to share GPUs (host staging)");
  }
#if !ONEBIT_TORCH_NCCL
  ONEBIT_CHECK(backend != "nccl", "onebit train --backend nccl: not available with this libtorch (" << TORCH_VERSION
                                      << ": built without CUDA, as Debian's is, or NCCL was not found); use --backend gloo");
#endif
  if (backend == "mpi")
    ONEBIT_CHECK(mpi_available(), "onebit train --backend mpi: this build has no MPI (configure with MPI installed)");
}

std::shared_ptr<Communicator> join_job(const JobInfo& job, const std::string& backend, const std::string& device,
                                       std::chrono::milliseconds timeout) {
  try {
    check_engine_available(backend, device);
  } catch (const Error& e) {
    ONEBIT_CHECK(false, e.what() << " [rank " << job.rank << " of " << job.size << "]");
  }
  if (backend == "gloo") return join_gloo(job, timeout);
  if (backend == "nccl") return join_nccl(job, timeout);
  if (backend == "mpi") {
    std::shared_ptr<Communicator> comm = make_mpi_communicator();
    ONEBIT_CHECK(comm->size() == job.size && comm->rank() == job.rank,
                 "onebit train --backend mpi: MPI says rank " << comm->rank() << " of " << comm->size()
                     << " but the environment (" << job.source << ") says rank " << job.rank << " of " << job.size);
    comm->set_timeout(timeout);
    return comm;
  }
  ONEBIT_CHECK(false, "onebit train: --backend must be gloo, mpi or nccl, not '" << backend << "'");
  return {};
}

}  // namespace onebit::train

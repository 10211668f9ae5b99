// NCCL backend: a StreamCommunicator over NCCL on device memory, one GPU per rank.
// Needs no NCCL or CUDA headers; the backend itself is built when CMake found NCCL (ONEBIT_HAVE_NCCL).
#pragma once
#include <array>
#include <chrono>
#include <memory>

#include "onebit/stream_communicator.hpp"

namespace onebit {

// ncclUniqueId's bytes: made by one rank, passed to all (by MPI, a shared file, any bootstrap).
using NcclUniqueId = std::array<char, 128>;

// True in builds with the NCCL backend.
bool nccl_available();

NcclUniqueId nccl_unique_id();

// Joins the world of `size` ranks named by `id` as `rank`, on CUDA device `device` (-1: the current
// one). stream: where collectives run (null: a non-blocking stream of its own). Initialization
// waits at most `timeout`, which then becomes the communicator's timeout.
std::unique_ptr<StreamCommunicator> make_nccl_communicator(
    const NcclUniqueId& id, int rank, int size, int device = -1, CUstream_st* stream = nullptr,
    std::chrono::milliseconds timeout = std::chrono::milliseconds(60000));

// The same, with rank 0's id broadcast over `bootstrap` (a host backend such as MPI) and rank and
// size taken from it.
std::unique_ptr<StreamCommunicator> make_nccl_communicator(Communicator& bootstrap, int device = -1,
                                                           CUstream_st* stream = nullptr);

// A world of one rank (tests and single-GPU benchmarks).
std::unique_ptr<StreamCommunicator> make_nccl_communicator_single(int device = -1,
                                                                  CUstream_st* stream = nullptr);

}  // namespace onebit

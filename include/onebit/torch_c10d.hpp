// Communicators for the torch integration: one over a c10d::ProcessGroup (Gloo, NCCL, any group a
// torch user already has), and a single-rank one for runs without torch.distributed.
#pragma once
#include <c10/core/Device.h>
#include <c10/util/intrusive_ptr.h>

#include <memory>

#include "onebit/communicator.hpp"
#ifdef ONEBIT_HAVE_CUDA
#include "onebit/stream_communicator.hpp"
#endif

namespace c10d {
class ProcessGroup;
}

namespace onebit {

// The Communicator over a c10d ProcessGroup. Buffers are host memory (device_memory() is false).
// staging: where the collectives run. CPU for Gloo; a CUDA device for NCCL, which then copies each
// buffer to that device and back (correct, not fast: for optimizers whose parameters are on the
// CPU; CUDA parameters use make_c10d_device_communicator below).
// Every wait ends by timeout() with an onebit::Error naming the operation, rank and cause; after
// such an error the group is out of step across ranks and this communicator refuses further calls.
std::unique_ptr<Communicator> make_c10d_communicator(c10::intrusive_ptr<c10d::ProcessGroup> group,
                                                     c10::Device staging = c10::Device(c10::kCPU));

// World size 1 without any engine: every collective is a copy (or nothing).
std::unique_ptr<Communicator> make_single_rank_communicator();

#ifdef ONEBIT_HAVE_CUDA
// The Communicator over an NCCL ProcessGroup on device buffers of CUDA device `device` (what the
// optimizers use for CUDA parameters): no host staging; collectives run on a stream of its own,
// ordered against torch's current stream of that device, which c10d's NCCL streams follow. Builds
// with CUDA only; needs no CUDA-enabled libtorch headers.
std::unique_ptr<StreamCommunicator> make_c10d_device_communicator(c10::intrusive_ptr<c10d::ProcessGroup> group,
                                                                  c10::Device device);
#endif

}  // namespace onebit

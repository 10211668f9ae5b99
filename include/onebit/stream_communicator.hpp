// StreamCommunicator: what device code (the CUDA compressed allreduce and optimizers) needs of any
// GPU backend (NCCL, c10d's ProcessGroupNCCL). Needs no CUDA headers.
#pragma once
#include "onebit/communicator.hpp"

struct CUstream_st;

namespace onebit {

// A Communicator whose collectives run on a CUDA stream and take device pointers.
class StreamCommunicator : public Communicator {
 public:
  bool device_memory() const override { return true; }
  // The stream collectives run on. Device code orders its own stream against it with events.
  virtual CUstream_st* stream() const = 0;
  // Off (the default): every collective returns when its result is in place, like the host
  // backends. On: collectives return once enqueued on stream(), and work enqueued on that stream
  // afterwards sees the result; synchronize() waits. The byte counts are the same either way, the
  // seconds only count enqueueing.
  virtual void set_stream_ordered(bool on) = 0;
  virtual bool stream_ordered() const = 0;
  // Waits for everything enqueued on stream(). Past timeout() the communicator is aborted (so no
  // rank hangs on a dead peer) and onebit::Error names the rank and the cause.
  virtual void synchronize() = 0;
};

}  // namespace onebit

// The NCCL entry points in a build with CUDA but without NCCL: nccl_available() says no, and asking
// for a communicator is a clear error instead of a link failure or a silent fallback.
#include "onebit/error.hpp"
#include "onebit/nccl_comm.hpp"

namespace onebit {

bool nccl_available() { return false; }

namespace {
[[noreturn]] void absent() {
  ONEBIT_CHECK(false, "nccl: this build of onebit has no NCCL backend (configure with -DONEBIT_WITH_NCCL=ON "
                      "and NCCL_ROOT pointing at an NCCL installation)");
}
}  // namespace

NcclUniqueId nccl_unique_id() { absent(); }
std::unique_ptr<StreamCommunicator> make_nccl_communicator(const NcclUniqueId&, int, int, int, CUstream_st*,
                                                           std::chrono::milliseconds) {
  absent();
}
std::unique_ptr<StreamCommunicator> make_nccl_communicator(Communicator&, int, CUstream_st*) { absent(); }
std::unique_ptr<StreamCommunicator> make_nccl_communicator_single(int, CUstream_st*) { absent(); }

}  // namespace onebit

// Communicator's public collectives: argument checks, byte counts and timing around each backend call.
#include "onebit/communicator.hpp"

#include <chrono>

#include "onebit/error.hpp"

namespace onebit {

template <class F>
void Communicator::timed(uint64_t sent, uint64_t received, F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stats_.bytes_sent += sent;
  stats_.bytes_received += received;
  ++stats_.calls;
}

void Communicator::allreduce_sum(std::span<float> data) {
  const uint64_t P = static_cast<uint64_t>(size());
  const uint64_t bytes = 2 * (P - 1) * data.size_bytes() / P;
  timed(bytes, bytes, [&] { do_allreduce_sum(data); });
}

void Communicator::alltoall(std::span<const std::byte> send, std::span<std::byte> recv) {
  const size_t P = static_cast<size_t>(size());
  ONEBIT_CHECK(send.size() % P == 0 && recv.size() == send.size(),
               backend() << " alltoall on rank " << rank() << ": send " << send.size()
                         << " bytes, recv " << recv.size() << " bytes, world " << P);
  const uint64_t bytes = (P - 1) * (send.size() / P);
  timed(bytes, bytes, [&] { do_alltoall(send, recv); });
}

void Communicator::allgather(std::span<const std::byte> send, std::span<std::byte> recv) {
  const size_t P = static_cast<size_t>(size());
  ONEBIT_CHECK(recv.size() == send.size() * P, backend() << " allgather on rank " << rank()
                                                         << ": send " << send.size() << " bytes, recv "
                                                         << recv.size() << " bytes, world " << P);
  const uint64_t bytes = (P - 1) * send.size();
  timed(bytes, bytes, [&] { do_allgather(send, recv); });
}

void Communicator::broadcast(std::span<std::byte> data, int root) {
  ONEBIT_CHECK(root >= 0 && root < size(), backend() << " broadcast: root " << root << " of " << size());
  const bool multi = size() > 1;
  timed(multi && rank() == root ? data.size() : 0, multi && rank() != root ? data.size() : 0,
        [&] { do_broadcast(data, root); });
}

void Communicator::barrier() {
  timed(0, 0, [&] { do_barrier(); });
}

}  // namespace onebit

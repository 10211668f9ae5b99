// The Communicator over NCCL (device memory, one GPU per rank). Communicators are created
// nonblocking (ncclConfig_t.blocking = 0), so no NCCL call can hold the host: every call is followed
// by polling bounded by the timeout, and a communicator that times out is aborted, which ends the
// job with an error naming the rank instead of a hang.
#include "onebit/nccl_comm.hpp"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <sstream>
#include <string>
#include <thread>

#include "cuda_check.hpp"
#include "onebit/error.hpp"

namespace onebit {
namespace {

std::string who() { return "nccl"; }

void check_nccl(ncclResult_t r, const char* call, const char* file, int line, const std::string& by) {
  // A nonblocking communicator answers "in progress"; the polling after each call settles it.
  if (r == ncclSuccess || r == ncclInProgress) return;
  std::ostringstream s;
  s << by << ": " << call << " failed: " << ncclGetErrorString(r);
  const char* last = ncclGetLastError(nullptr);
  if (last && *last) s << " (" << last << ")";
  detail::fail(file, line, s.str());
}

// who() is the free function above in free functions and the member (naming the rank) in the class.
#define NCCL_CHECK(call) check_nccl((call), #call, __FILE__, __LINE__, who())

class NcclCommunicator final : public StreamCommunicator {
 public:
  NcclCommunicator(const NcclUniqueId& id, int rank, int size, int device, cudaStream_t stream,
                   std::chrono::milliseconds timeout)
      : rank_(rank), size_(size) {
    ONEBIT_CHECK(size >= 1 && rank >= 0 && rank < size,
                 "nccl: rank " << rank << " of a world of " << size);
    set_timeout(timeout);
    try {
      if (device < 0) CUDA_CHECK(cudaGetDevice(&device));
      device_ = device;
      CUDA_CHECK(cudaSetDevice(device_));
      if (!stream) {
        CUDA_CHECK(cudaStreamCreateWithFlags(&own_stream_, cudaStreamNonBlocking));
        stream = own_stream_;
      }
      stream_ = stream;
      CUDA_CHECK(cudaMalloc(&scratch_, sizeof(float)));
      CUDA_CHECK(cudaMemset(scratch_, 0, sizeof(float)));
      ncclUniqueId nid;
      static_assert(sizeof nid.internal == std::tuple_size_v<NcclUniqueId>);
      std::memcpy(nid.internal, id.data(), sizeof nid.internal);
      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.blocking = 0;
      NCCL_CHECK(ncclCommInitRankConfig(&comm_, size, nid, rank, &config));
      settle("init");
    } catch (...) {
      release(false);
      throw;
    }
  }

  ~NcclCommunicator() override { release(true); }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  CUstream_st* stream() const override { return stream_; }
  void set_stream_ordered(bool on) override { ordered_ = on; }
  bool stream_ordered() const override { return ordered_; }
  void synchronize() override {
    enter("synchronize");
    wait("synchronize");
  }

 protected:
  void do_allreduce_sum(std::span<float> data) override {
    enter("allreduce");
    if (!data.empty())
      NCCL_CHECK(ncclAllReduce(data.data(), data.data(), data.size(), ncclFloat, ncclSum, comm_, stream_));
    finish("allreduce");
  }
  void do_alltoall(std::span<const std::byte> send, std::span<std::byte> recv) override {
    enter("alltoall");
    const size_t chunk = send.size() / static_cast<size_t>(size_);
    if (chunk > 0) {
      // Grouped point-to-point: NCCL runs the P sends and P receives as one operation.
      NCCL_CHECK(ncclGroupStart());
      for (int j = 0; j < size_; ++j) {
        const size_t off = static_cast<size_t>(j) * chunk;
        NCCL_CHECK(ncclSend(send.data() + off, chunk, ncclInt8, j, comm_, stream_));
        NCCL_CHECK(ncclRecv(recv.data() + off, chunk, ncclInt8, j, comm_, stream_));
      }
      NCCL_CHECK(ncclGroupEnd());
    }
    finish("alltoall");
  }
  void do_allgather(std::span<const std::byte> send, std::span<std::byte> recv) override {
    enter("allgather");
    if (!send.empty())
      NCCL_CHECK(ncclAllGather(send.data(), recv.data(), send.size(), ncclInt8, comm_, stream_));
    finish("allgather");
  }
  void do_broadcast(std::span<std::byte> data, int root) override {
    enter("broadcast");
    if (!data.empty())
      NCCL_CHECK(ncclBroadcast(data.data(), data.data(), data.size(), ncclInt8, root, comm_, stream_));
    finish("broadcast");
  }
  void do_barrier() override {
    // NCCL has no barrier: a one-element allreduce that every rank must join, always waited for.
    enter("barrier");
    NCCL_CHECK(ncclAllReduce(scratch_, scratch_, 1, ncclFloat, ncclSum, comm_, stream_));
    settle("barrier");
    wait("barrier");
  }

 private:
  std::string who() const { return "nccl rank " + std::to_string(rank_); }

  void enter(const char* op) {
    ONEBIT_CHECK(comm_, who() << " " << op << ": the communicator was aborted after an earlier failure");
    int current = -1;
    CUDA_CHECK(cudaGetDevice(&current));
    if (current != device_) CUDA_CHECK(cudaSetDevice(device_));
  }

  void finish(const char* op) {
    settle(op);
    if (!ordered_) wait(op);
  }

  [[noreturn]] void fail(const char* op, const std::string& why) {
    abort();
    ONEBIT_CHECK(false, who() << " " << op << ": " << why);
  }

  void abort() {
    if (comm_) (void)ncclCommAbort(comm_);
    comm_ = nullptr;
  }

  // Polls until the last call on the nonblocking communicator is enqueued (or failed).
  void settle(const char* op) {
    const auto deadline = std::chrono::steady_clock::now() + timeout();
    for (int spins = 0;; ++spins) {
      ncclResult_t state = ncclSuccess;
      NCCL_CHECK(ncclCommGetAsyncError(comm_, &state));
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) fail(op, std::string("asynchronous error: ") + ncclGetErrorString(state));
      if (std::chrono::steady_clock::now() > deadline)
        fail(op, "not started within " + std::to_string(timeout().count()) + " ms (a rank died or stalled)");
      if (spins > 100) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  // Polls until everything on the stream is done; NCCL's asynchronous errors and the timeout end it.
  void wait(const char* op) {
    const auto deadline = std::chrono::steady_clock::now() + timeout();
    for (int spins = 0;; ++spins) {
      const cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) fail(op, std::string("CUDA error ") + cudaGetErrorName(q));
      ncclResult_t state = ncclSuccess;
      NCCL_CHECK(ncclCommGetAsyncError(comm_, &state));
      if (state != ncclSuccess && state != ncclInProgress)
        fail(op, std::string("asynchronous error: ") + ncclGetErrorString(state));
      if (std::chrono::steady_clock::now() > deadline)
        fail(op, "no answer from the other ranks within " + std::to_string(timeout().count()) +
                     " ms (a rank died or stalled)");
      if (spins > 200) std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  // Never throws: a destructor must not, and an error here has nowhere to go.
  void release(bool polite) {
    if (comm_ && polite) {
      const auto deadline = std::chrono::steady_clock::now() + timeout();
      ncclResult_t state = ncclCommFinalize(comm_);
      while (state == ncclInProgress && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) break;
      }
      if (state == ncclSuccess && ncclCommDestroy(comm_) == ncclSuccess) comm_ = nullptr;
    }
    abort();
    if (scratch_) (void)cudaFree(scratch_);
    scratch_ = nullptr;
    if (own_stream_) (void)cudaStreamDestroy(own_stream_);
    own_stream_ = nullptr;
  }

  int rank_, size_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr, own_stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  float* scratch_ = nullptr;
  bool ordered_ = false;
};

}  // namespace

bool nccl_available() { return true; }

NcclUniqueId nccl_unique_id() {
  ncclUniqueId nid;
  NCCL_CHECK(ncclGetUniqueId(&nid));
  NcclUniqueId id;
  std::memcpy(id.data(), nid.internal, id.size());
  return id;
}

std::unique_ptr<StreamCommunicator> make_nccl_communicator(const NcclUniqueId& id, int rank, int size,
                                                           int device, CUstream_st* stream,
                                                           std::chrono::milliseconds timeout) {
  return std::make_unique<NcclCommunicator>(id, rank, size, device, stream, timeout);
}

std::unique_ptr<StreamCommunicator> make_nccl_communicator(Communicator& bootstrap, int device,
                                                           CUstream_st* stream) {
  ONEBIT_CHECK(!bootstrap.device_memory(),
               "nccl: the bootstrap communicator must take host memory, not " << bootstrap.backend());
  NcclUniqueId id{};
  if (bootstrap.rank() == 0) id = nccl_unique_id();
  bootstrap.broadcast(std::as_writable_bytes(std::span(id)), 0);
  return make_nccl_communicator(id, bootstrap.rank(), bootstrap.size(), device, stream, bootstrap.timeout());
}

std::unique_ptr<StreamCommunicator> make_nccl_communicator_single(int device, CUstream_st* stream) {
  return make_nccl_communicator(nccl_unique_id(), 0, 1, device, stream);
}

}  // namespace onebit

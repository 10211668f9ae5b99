// The compressed allreduce of docs/algorithm.md §2 on the GPU: comm/compressed_allreduce.cpp step for step, with
// scales kept on the device and the non-finite check decided there.
#include <algorithm>

#include "cuda_check.hpp"
#include "device_collectives.hpp"
#include "onebit/cuda_compressed_allreduce.hpp"

namespace onebit::cuda {

CudaCompressedAllreduce::CudaCompressedAllreduce(Communicator& comm, Stream stream, size_t n,
                                                 std::span<const size_t> layer_bounds, int* skip)
    : coll_(std::make_unique<DeviceCollectives>(comm, stream)),
      stream_(stream),
      rank_(comm.rank()),
      world_(comm.size()),
      n_(n) {
  const size_t P = static_cast<size_t>(world_), unit = 64 * P;
  n_pad_ = (n + unit - 1) / unit * unit;
  part_ = DevicePartition(kernels::Partition(n, layer_bounds, chunk_size()));
  server_part_ = DevicePartition(kernels::Partition(server_real()));
  for (auto& c : worker_c_) {
    c = DeviceArray<float>(n);
    c.zero();
  }
  server_c_ = DeviceArray<float>(server_real());
  server_c_.zero();
  worker_scale_ = DeviceArray<float>(2);
  worker_scale_.zero();
  server_scale_ = DeviceArray<float>(1);
  server_scale_.zero();
  for (auto* b : {&send_bits_, &recv_bits_, &result_bits_}) {
    *b = DeviceArray<uint8_t>(n_pad_ / 8);
    b->zero();
  }
  server_bits_ = DeviceArray<uint8_t>(chunk_size() / 8);
  server_bits_.zero();
  worker_scales_ = DeviceArray<float>(P);
  worker_scales_.zero();
  server_scales_ = DeviceArray<float>(P);
  server_scales_.zero();
  own_skip_ = DeviceArray<int>(1);
  own_skip_.zero();
  skip_ = skip ? skip : own_skip_.data();
  CUDA_CHECK(cudaMallocHost(&host_flag_, sizeof(int)));
  CUDA_CHECK(cudaDeviceSynchronize());  // the fills above ran on the legacy stream
}

CudaCompressedAllreduce::~CudaCompressedAllreduce() {
  (void)cudaStreamSynchronize(stream_);  // nothing in flight may outlive the buffers
  if (host_flag_) (void)cudaFreeHost(host_flag_);
}

size_t CudaCompressedAllreduce::server_real() const {
  const size_t begin = static_cast<size_t>(rank_) * chunk_size();
  return std::min(n_, begin + chunk_size()) - std::min(n_, begin);
}

void CudaCompressedAllreduce::compress(const float* x) {
  if (skip_ == own_skip_.data()) own_skip_.zero(stream_);
  cuda::compress(part_, x, worker_c_[worker_cur_].data(), worker_scale_.data() + worker_cur_,
                 worker_c_[1 - worker_cur_].data(), send_bits_.data(),
                 {nullptr, worker_scale_.data() + (1 - worker_cur_)}, stream_);
  finish_compress();
}

void CudaCompressedAllreduce::compress_momentum(const float* m, const float* g, float beta1,
                                                const float* k) {
  if (skip_ == own_skip_.data()) own_skip_.zero(stream_);
  cuda::compress_momentum(part_, m, g, beta1, k, worker_c_[worker_cur_].data(),
                          worker_scale_.data() + worker_cur_, worker_c_[1 - worker_cur_].data(),
                          send_bits_.data(), {nullptr, worker_scale_.data() + (1 - worker_cur_)},
                          stream_);
  finish_compress();
}

void CudaCompressedAllreduce::finish_compress() {
  // Every rank sees every worker scale; a non-finite one (a NaN or infinity anywhere in that
  // rank's input) makes the server stage set the skip flag on every rank alike.
  coll_->allgather(worker_scale_.data() + (1 - worker_cur_), worker_scales_.data(), sizeof(float));
}

void CudaCompressedAllreduce::exchange() {
  coll_->alltoall(send_bits_.data(), recv_bits_.data(), n_pad_ / 8);
  server_average(server_part_, recv_bits_.data(), chunk_size() / 8, worker_scales_.data(), world_,
                 server_c_.data(), server_scale_.data(), server_bits_.data(),
                 {nullptr, server_scale_.data()}, stream_, skip_);
  coll_->allgather(server_bits_.data(), result_bits_.data(), chunk_size() / 8);
  coll_->allgather(server_scale_.data(), server_scales_.data(), sizeof(float));
}

void CudaCompressedAllreduce::decode(float* out) {
  cuda::decode(part_, result_bits_.data(), server_scales_.data(), out, stream_, skip_);
}

void CudaCompressedAllreduce::commit(bool applied) {
  if (applied) worker_cur_ = 1 - worker_cur_;
}

bool CudaCompressedAllreduce::run(float* x) {
  compress(x);
  exchange();
  decode(x);
  CUDA_CHECK(cudaMemcpyAsync(host_flag_, skip_, sizeof(int), cudaMemcpyDeviceToHost, stream_));
  coll_->wait("cuda compressed allreduce");
  const bool applied = *host_flag_ == 0;
  commit(applied);
  return applied;
}

std::vector<float> CudaCompressedAllreduce::worker_error(bool uncommitted) const {
  coll_->wait("cuda compressed allreduce (worker error)");
  const int cur = uncommitted ? 1 - worker_cur_ : worker_cur_;
  const std::vector<float> c = worker_c_[cur].download();
  float s[2];
  worker_scale_.mem().download(s, sizeof s);
  std::vector<float> e(n_);
  kernels::materialize_error(part_.host(), c, {&s[cur], 1}, e);
  return e;
}

std::vector<float> CudaCompressedAllreduce::server_error() const {
  coll_->wait("cuda compressed allreduce (server error)");
  const std::vector<float> c = server_c_.download();
  float s = 0;
  server_scale_.mem().download(&s, sizeof s);
  std::vector<float> e(c.size());
  kernels::materialize_error(server_part_.host(), c, {&s, 1}, e);
  return e;
}

void CudaCompressedAllreduce::set_errors(std::span<const float> worker, std::span<const float> server) {
  ONEBIT_CHECK(worker.size() == n_ && server.size() == server_c_.size(),
               "cuda compressed allreduce on rank " << rank_ << ": error state of " << worker.size()
                   << " + " << server.size() << " elements, expected " << n_ << " + " << server_c_.size());
  coll_->wait("cuda compressed allreduce (set errors)");
  // With scale 0 the stored value is the error itself.
  worker_c_[worker_cur_].upload(worker);
  const float zero = 0.0f;
  worker_scale_.upload(std::span<const float>(&zero, 1), static_cast<size_t>(worker_cur_));
  server_c_.upload(server);
  server_scale_.upload(std::span<const float>(&zero, 1));
}

}  // namespace onebit::cuda

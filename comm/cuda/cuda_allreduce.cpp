// The compressed allreduce of docs/algorithm.md §2 on the GPU: comm/compressed_allreduce.cpp step for step, with
// scales kept on the device (one per worker and per chunk, or one per scale group, §12) and the
// non-finite check decided there.
#include <algorithm>

#include "cuda_check.hpp"
#include "device_collectives.hpp"
#include "launchers.hpp"
#include "onebit/cuda_compressed_allreduce.hpp"

namespace onebit::cuda {
namespace {
template <class T>
DeviceArray<T> zeros(size_t n) {
  DeviceArray<T> a(n);
  a.zero();
  return a;
}
}  // namespace

CudaCompressedAllreduce::CudaCompressedAllreduce(Communicator& comm, Stream stream, size_t n,
                                                 std::span<const size_t> layer_bounds, int* skip, size_t scale_group)
    : coll_(std::make_unique<DeviceCollectives>(comm, stream)),
      stream_(stream),
      rank_(comm.rank()),
      world_(comm.size()),
      n_(n),
      group_(scale_group) {
  ONEBIT_CHECK(scale_group % 64 == 0, "cuda compressed allreduce: scale_group must be 0 (one scale per worker and "
                                      "per chunk) or a positive multiple of 64, got " << scale_group);
  const size_t P = static_cast<size_t>(world_), unit = 64 * P;
  n_pad_ = (n + unit - 1) / unit * unit;
  const kernels::Partition host(n, layer_bounds, chunk_size(), group_);
  const size_t G = host.groups_per_chunk();
  part_ = DevicePartition(host, P * G);
  server_part_ = DevicePartition(kernels::Partition(server_real(), {}, 0, group_), G);
  // The layers as they fall in this rank's chunk (empty where they do not), numbered as in the buffer.
  std::vector<size_t> bounds;
  const size_t chunk0 = static_cast<size_t>(rank_) * chunk_size();
  for (size_t b : layer_bounds) bounds.push_back(std::min(server_real(), b > chunk0 ? b - chunk0 : 0));
  server_layers_ = DevicePartition(kernels::Partition(server_real(), bounds, 0, group_), G);
  for (int b = 0; b < 2; ++b) {
    worker_c_[b] = zeros<float>(n);
    worker_scale_[b] = zeros<float>(grouped() ? P * G : 1);
    result_bits_[b] = zeros<uint8_t>(n_pad_ / 8);
    server_scales_[b] = zeros<float>(P * G);
  }
  server_c_ = zeros<float>(server_real());
  server_scale_ = zeros<float>(G);
  send_bits_ = zeros<uint8_t>(n_pad_ / 8);
  recv_bits_ = zeros<uint8_t>(n_pad_ / 8);
  server_bits_ = zeros<uint8_t>(chunk_size() / 8);
  worker_scales_ = zeros<float>(P * G);
  sum_sq_ = zeros<double>(1);
  sums_sq_ = zeros<double>(P);
  own_skip_ = zeros<int>(1);
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

void CudaCompressedAllreduce::begin_compress() {
  if (skip_ == own_skip_.data()) own_skip_.zero(stream_);
}

void CudaCompressedAllreduce::compress(const float* x) {
  begin_compress();
  const int cur = worker_cur_;
  cuda::compress(part_, x, worker_c_[cur].data(), worker_scales(), worker_c_[1 - cur].data(), send_bits_.data(),
                 worker_out(), stream_, skip_);
  finish_compress();
}

void CudaCompressedAllreduce::compress_momentum(const kernels::Momentum& m, const float* g, float beta1,
                                                const float* k) {
  begin_compress();
  const int cur = worker_cur_;
  cuda::compress_momentum(part_, m, g, beta1, k, worker_c_[cur].data(), worker_scales(), worker_c_[1 - cur].data(),
                          send_bits_.data(), worker_out(), stream_, skip_);
  finish_compress();
}

// Every rank must learn whether every rank's input was finite. With one scale per worker, every rank
// sees every worker's scale, and a non-finite one makes the server stage set the skip flag. With
// scale groups a rank receives only the scales of the chunk it serves, so each rank's sum of squares
// over its whole input travels too (as the CPU's finiteness flag does), and every rank checks all of them.
void CudaCompressedAllreduce::finish_compress() {
  const float* mine = worker_scale_[1 - worker_cur_].data();
  if (grouped()) {
    coll_->alltoall(mine, worker_scales_.data(), worker_scales_.size() * sizeof(float));
    coll_->allgather(sum_sq_.data(), sums_sq_.data(), sizeof(double));
    flag_nonfinite(sums_sq_.data(), sums_sq_.size(), skip_, stream_);
  } else {
    coll_->allgather(mine, worker_scales_.data(), sizeof(float));
  }
}

void CudaCompressedAllreduce::exchange() {
  const int next = 1 - result_cur_;
  coll_->alltoall(send_bits_.data(), recv_bits_.data(), n_pad_ / 8);
  server_average(server_part_, recv_bits_.data(), chunk_size() / 8, {worker_scales_.data(), grouped()}, world_,
                 server_c_.data(), server_scales(), server_bits_.data(), {server_scale_.data(), grouped(), nullptr},
                 stream_, skip_);
  coll_->allgather(server_bits_.data(), result_bits_[next].data(), chunk_size() / 8);
  coll_->allgather(server_scale_.data(), server_scales_[next].data(), server_scale_.size() * sizeof(float));
}

void CudaCompressedAllreduce::decode(float* out) { cuda::decode(part_, bits(), scales(), out, stream_, skip_); }

void CudaCompressedAllreduce::commit(bool applied) {
  if (!applied) return;
  worker_cur_ = 1 - worker_cur_;
  result_cur_ = 1 - result_cur_;
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

void CudaCompressedAllreduce::zero_scales(const int* skip) {
  fill(worker_scale_[worker_cur_].data(), worker_scale_[worker_cur_].size(), 0.0f, stream_, skip);
  fill(server_scale_.data(), server_scale_.size(), 0.0f, stream_, skip);
}

std::vector<float> CudaCompressedAllreduce::worker_error(bool uncommitted) const {
  coll_->wait("cuda compressed allreduce (worker error)");
  const int cur = uncommitted ? 1 - worker_cur_ : worker_cur_;
  const std::vector<float> c = worker_c_[cur].download(), s = worker_scale_[cur].download();
  std::vector<float> e(n_);
  kernels::materialize_error(part_.host(), c, s, e);
  return e;
}

std::vector<float> CudaCompressedAllreduce::server_error() const {
  coll_->wait("cuda compressed allreduce (server error)");
  const std::vector<float> c = server_c_.download(), s = server_scale_.download();
  std::vector<float> e(c.size());
  kernels::materialize_error(server_part_.host(), c, s, e);
  return e;
}

void CudaCompressedAllreduce::set_errors(std::span<const float> worker, std::span<const float> server) {
  ONEBIT_CHECK(worker.size() == n_ && server.size() == server_c_.size(),
               "cuda compressed allreduce on rank " << rank_ << ": error state of " << worker.size()
                   << " + " << server.size() << " elements, expected " << n_ << " + " << server_c_.size());
  coll_->wait("cuda compressed allreduce (set errors)");
  // With scale 0 the stored value is the error itself.
  worker_c_[worker_cur_].upload(worker);
  server_c_.upload(server);
  worker_scale_[worker_cur_].upload(std::vector<float>(worker_scale_[worker_cur_].size(), 0.0f));
  server_scale_.upload(std::vector<float>(server_scale_.size(), 0.0f));
}

}  // namespace onebit::cuda

// The compressed allreduce of spec §2: worker compression, all-to-all, server average, all-gather.
#include "onebit/compressed_allreduce.hpp"

#include <algorithm>
#include <cmath>

#include "onebit/error.hpp"

namespace onebit {

CompressedAllreduce::CompressedAllreduce(Communicator& comm, ThreadPool& pool, size_t n,
                                         std::span<const size_t> layer_bounds)
    : comm_(comm), pool_(pool), n_(n) {
  const size_t P = static_cast<size_t>(comm.size()), unit = 64 * P;
  n_pad_ = (n + unit - 1) / unit * unit;
  part_ = kernels::Partition(n, layer_bounds, chunk_size());
  server_part_ = kernels::Partition(server_real());
  worker_c_[0].assign(n, 0.0f);
  worker_c_[1].assign(n, 0.0f);
  server_c_.assign(server_real(), 0.0f);
  send_bits_.assign(n_pad_ / 8, 0);
  recv_bits_.assign(n_pad_ / 8, 0);
  server_bits_.assign(chunk_size() / 8, 0);
  result_bits_.assign(n_pad_ / 8, 0);
  worker_scales_.assign(P, 0.0f);
  server_scales_.assign(P, 0.0f);
}

size_t CompressedAllreduce::server_real() const {
  const size_t begin = static_cast<size_t>(comm_.rank()) * chunk_size();
  return std::min(n_, begin + chunk_size()) - std::min(n_, begin);
}

bool CompressedAllreduce::compress(std::span<const float> x) {
  ONEBIT_CHECK(x.size() == n_, "compressed allreduce on rank " << comm_.rank() << ": buffer has "
                                                                << x.size() << " elements, built for " << n_);
  const int cur = worker_cur_;
  return finish_compress(kernels::compress(part_, pool_, x.data(), worker_c_[cur].data(),
                                           worker_scale_, worker_c_[1 - cur].data(),
                                           send_bits_.data()));
}

bool CompressedAllreduce::compress_momentum(std::span<const float> m, std::span<const float> g,
                                            float beta1, const float* k) {
  ONEBIT_CHECK(m.size() == n_ && g.size() == n_,
               "compressed allreduce on rank " << comm_.rank() << ": momentum " << m.size()
                                               << " and gradient " << g.size() << " elements, built for " << n_);
  const int cur = worker_cur_;
  return finish_compress(kernels::compress_momentum(part_, pool_, m.data(), g.data(), beta1, k,
                                                    worker_c_[cur].data(), worker_scale_,
                                                    worker_c_[1 - cur].data(), send_bits_.data()));
}

bool CompressedAllreduce::finish_compress(double sum_sq) {
  const float scale = kernels::scale_from_sum(sum_sq, n_);
  // A NaN or infinity anywhere makes that rank's scale non-finite; every rank sees every scale.
  comm_.allgather_values(std::span<const float>(&scale, 1), std::span<float>(worker_scales_));
  for (float s : worker_scales_)
    if (!std::isfinite(s)) return false;
  worker_cur_ = 1 - worker_cur_;
  worker_scale_ = scale;
  return true;
}

void CompressedAllreduce::exchange() {
  comm_.alltoall(std::as_bytes(std::span(send_bits_)), std::as_writable_bytes(std::span(recv_bits_)));
  const double sum_sq = kernels::server_average(server_part_, pool_, recv_bits_.data(),
                                                chunk_size() / 8, worker_scales_, server_c_.data(),
                                                server_scale_, server_bits_.data());
  server_scale_ = kernels::scale_from_sum(sum_sq, server_real());
  comm_.allgather(std::as_bytes(std::span(server_bits_)),
                  std::as_writable_bytes(std::span(result_bits_)));
  comm_.allgather_values(std::span<const float>(&server_scale_, 1), std::span<float>(server_scales_));
}

void CompressedAllreduce::decode(std::span<float> out) {
  ONEBIT_CHECK(out.size() == n_, "compressed allreduce decode: " << out.size() << " elements, built for " << n_);
  kernels::decode(part_, pool_, result_bits_.data(), server_scales_.data(), out.data());
}

bool CompressedAllreduce::run(std::span<float> x) {
  if (!compress(x)) return false;
  exchange();
  decode(x);
  return true;
}

std::vector<float> CompressedAllreduce::worker_error() const {
  std::vector<float> e(n_);
  kernels::materialize_error(worker_c_[worker_cur_], worker_scale_, e);
  return e;
}

std::vector<float> CompressedAllreduce::server_error() const {
  std::vector<float> e(server_c_.size());
  kernels::materialize_error(server_c_, server_scale_, e);
  return e;
}

void CompressedAllreduce::set_errors(std::span<const float> worker, std::span<const float> server) {
  ONEBIT_CHECK(worker.size() == n_ && server.size() == server_c_.size(),
               "compressed allreduce on rank " << comm_.rank() << ": error state of " << worker.size()
                   << " + " << server.size() << " elements, expected " << n_ << " + " << server_c_.size());
  // With scale 0 the stored value is the error itself.
  std::copy(worker.begin(), worker.end(), worker_c_[worker_cur_].begin());
  worker_scale_ = 0.0f;
  std::copy(server.begin(), server.end(), server_c_.begin());
  server_scale_ = 0.0f;
}

}  // namespace onebit

// The compressed allreduce of spec §2: worker compression, all-to-all, server average, all-gather.
// Each scale travels with its sign bits where it can (the server's always, a worker's in run()'s
// pipeline): a separate 4-byte collective costs a round of messages and a wait for every rank.
#include "onebit/compressed_allreduce.hpp"

#include <algorithm>
#include <cmath>

#include <cstring>

#include "onebit/error.hpp"
#include "overlap.hpp"

namespace onebit {
namespace {
// Stages of run()'s pipeline: each moves at least this many bytes of one chunk's sign bits (fewer,
// larger messages below that: a collective's latency would eat the overlap), and at most kMaxStages.
constexpr size_t kMinStageBytes = size_t{96} << 10;
constexpr int kMaxStages = 8;
}  // namespace

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
  // This rank's server result is sent as it lies: its sign bits, then its scale.
  server_bits_.assign(chunk_size() / 8 + sizeof(float), 0);
  gathered_.assign(P * server_bits_.size(), 0);
  worker_scales_.assign(P, 0.0f);
  for (int r = 0; r < 2; ++r) {
    result_bits_[r].assign(n_pad_ / 8, 0);
    server_scales_[r].assign(P, 0.0f);
  }
  plan_stages();
}

int CompressedAllreduce::pipeline_stages(size_t n, int P) {
  const size_t unit = 64 * static_cast<size_t>(P), chunk_bytes = (n + unit - 1) / unit * unit / static_cast<size_t>(P) / 8;
  return static_cast<int>(std::clamp<size_t>(chunk_bytes / kMinStageBytes, 1, kMaxStages));
}

void CompressedAllreduce::plan_stages() {
  const size_t words = chunk_size() / 64;  // 64-bit words of sign bits per chunk
  stages_ = pipeline_stages(n_, comm_.size());
  if (stages_ == 1) return;
  const size_t S = static_cast<size_t>(stages_);
  for (size_t s = 0; s <= S; ++s) stage_word_.push_back(s * words / S);
  auto stage_of = [&](size_t offset) {  // the stage that moves word `offset` of a chunk
    return static_cast<size_t>(std::upper_bound(stage_word_.begin(), stage_word_.end(), offset) - stage_word_.begin()) - 1;
  };
  // A block is compressed before the first stage that sends any of its words.
  compress_stage_.assign(S, {});
  for (size_t b = 0; b < part_.num_blocks(); ++b) {
    const auto pieces = part_.block(b);
    const size_t w0 = pieces.front().begin / 64, w1 = (pieces.back().end - 1) / 64;
    size_t first = S;
    for (size_t c = w0 / words; c <= w1 / words; ++c) first = std::min(first, stage_of(c == w0 / words ? w0 % words : 0));
    compress_stage_[first].push_back(static_cast<uint32_t>(b));
  }
  piece_sums_.assign(part_.pieces().size(), 0.0);
  // Stages differ by at most one word per chunk; the last one's pieces also carry the scale.
  stage_send_.resize(send_bits_.size() / S + (8 + sizeof(float)) * static_cast<size_t>(comm_.size()));
  stage_recv_.resize(stage_send_.size());
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

bool CompressedAllreduce::compress_momentum(const kernels::Momentum& m, std::span<const float> g, float beta1,
                                            const float* k) {
  ONEBIT_CHECK(g.size() == n_, "compressed allreduce on rank " << comm_.rank() << ": gradient of " << g.size()
                                                                << " elements, built for " << n_);
  const int cur = worker_cur_;
  return finish_compress(kernels::compress_momentum(part_, pool_, m, g.data(), beta1, k,
                                                    worker_c_[cur].data(), worker_scale_,
                                                    worker_c_[1 - cur].data(), send_bits_.data()));
}

bool CompressedAllreduce::finish_compress(double sum_sq) {
  const float scale = kernels::scale_from_sum(sum_sq, n_);
  comm_.allgather_values(std::span<const float>(&scale, 1), std::span<float>(worker_scales_));
  return accept_worker_scales(scale);
}

// A NaN or infinity anywhere makes that rank's scale non-finite, and every rank has every scale.
bool CompressedAllreduce::accept_worker_scales(float scale) {
  for (float s : worker_scales_)
    if (!std::isfinite(s)) return false;
  worker_cur_ = 1 - worker_cur_;
  worker_scale_ = scale;
  return true;
}

void CompressedAllreduce::exchange() {
  comm_.alltoall(std::as_bytes(std::span(send_bits_)), std::as_writable_bytes(std::span(recv_bits_)));
  serve_and_gather();
}

// The server stage over this rank's chunk, then the all-gather of every chunk's result, which
// becomes bits() (the one before stays readable as previous_bits()).
void CompressedAllreduce::serve_and_gather() {
  result_cur_ = 1 - result_cur_;
  const size_t P = static_cast<size_t>(comm_.size()), chunk_bytes = chunk_size() / 8, piece = server_bits_.size();
  const double sum_sq = kernels::server_average(server_part_, pool_, recv_bits_.data(), chunk_bytes, worker_scales_,
                                                server_c_.data(), server_scale_, server_bits_.data());
  server_scale_ = kernels::scale_from_sum(sum_sq, server_real());
  std::memcpy(server_bits_.data() + chunk_bytes, &server_scale_, sizeof(float));
  comm_.allgather(std::as_bytes(std::span(server_bits_)), std::as_writable_bytes(std::span(gathered_)));
  for (size_t j = 0; j < P; ++j) {
    if (chunk_bytes > 0)  // an empty buffer has no bits, and memcpy may not take its null pointer
      std::memcpy(result_bits_[result_cur_].data() + j * chunk_bytes, gathered_.data() + j * piece, chunk_bytes);
    std::memcpy(&server_scales_[result_cur_][j], gathered_.data() + j * piece + chunk_bytes, sizeof(float));
  }
}

void CompressedAllreduce::decode(std::span<float> out) {
  ONEBIT_CHECK(out.size() == n_, "compressed allreduce decode: " << out.size() << " elements, built for " << n_);
  kernels::decode(part_, pool_, bits(), chunk_scales(), out.data());
}

// Stage s of the all-to-all through staging buffers: every chunk's words of this stage, packed, each
// followed by this rank's worker scale when `scale` is given (the last stage), which fills
// worker_scales_ on arrival.
void CompressedAllreduce::alltoall_stage(int s, const float* scale) {
  const size_t P = static_cast<size_t>(comm_.size()), chunk_bytes = chunk_size() / 8;
  const size_t off = stage_word_[s] * 8, len = (stage_word_[s + 1] - stage_word_[s]) * 8;
  const size_t piece = len + (scale ? sizeof(float) : 0);
  for (size_t j = 0; j < P; ++j) {
    std::memcpy(stage_send_.data() + j * piece, send_bits_.data() + j * chunk_bytes + off, len);
    if (scale) std::memcpy(stage_send_.data() + j * piece + len, scale, sizeof(float));
  }
  comm_.alltoall(std::as_bytes(std::span(stage_send_.data(), P * piece)),
                 std::as_writable_bytes(std::span(stage_recv_.data(), P * piece)));
  for (size_t j = 0; j < P; ++j) {
    std::memcpy(recv_bits_.data() + j * chunk_bytes + off, stage_recv_.data() + j * piece, len);
    if (scale) std::memcpy(&worker_scales_[j], stage_recv_.data() + j * piece + len, sizeof(float));
  }
}

// run() with its compression pipelined: the same bits as compress + exchange + decode. A helper
// thread compresses the blocks of stage s+1 while this one sends stage s. The all-gather is one
// collective: a ring's every stage pays P-1 hops of latency, which cost more than the decode it
// would hide (4 ranks sharing 2 cores at 1 Gbit/s, 25M elements: 7 stages with the decode
// overlapped took 48-68 ms, one all-gather and then the decode about 30).
bool CompressedAllreduce::run_pipelined(std::span<float> x) {
  ONEBIT_CHECK(x.size() == n_, "compressed allreduce on rank " << comm_.rank() << ": buffer has "
                                                                << x.size() << " elements, built for " << n_);
  const int cur = worker_cur_;
  float scale = 0;
  {
    Overlap compressing([&](Overlap& o) {
      for (int s = 0; s < stages_; ++s) {
        kernels::compress_blocks(part_, pool_, compress_stage_[s], x.data(), worker_c_[cur].data(), worker_scale_,
                                 worker_c_[1 - cur].data(), send_bits_.data(), piece_sums_.data());
        o.helper_finished(s + 1);
      }
    });
    for (int s = 0; s < stages_; ++s) {
      compressing.wait_helper(s + 1);
      const bool last = s == stages_ - 1;
      if (last) scale = kernels::scale_from_sum(kernels::sum_pieces(piece_sums_), n_);
      alltoall_stage(s, last ? &scale : nullptr);
    }
    compressing.join();
  }
  // A non-finite input shows in its rank's scale; the bits sent are simply not used.
  if (!accept_worker_scales(scale)) return false;
  serve_and_gather();
  decode(x);
  return true;
}

bool CompressedAllreduce::run(std::span<float> x) {
  if (stages_ > 1) return run_pipelined(x);
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

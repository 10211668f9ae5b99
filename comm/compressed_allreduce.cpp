// The compressed allreduce of docs/algorithm.md §2: worker compression, all-to-all, server average, all-gather.
// Each scale travels with its sign bits where it can (the server's always, a worker's in run()'s
// pipeline and, with scale groups, always): a separate 4-byte collective costs a round of messages
// and a wait for every rank.
#include "onebit/compressed_allreduce.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "onebit/error.hpp"
#include "overlap.hpp"

namespace onebit {
namespace {
// Stages of run()'s pipeline: each moves at least this many bytes of one chunk's sign bits (fewer,
// larger messages below that: a collective's latency would eat the overlap), and at most kMaxStages.
constexpr size_t kMinStageBytes = size_t{96} << 10;
constexpr int kMaxStages = 8;
// A rank's finiteness as a value every rank can check: a NaN when its compressed input was not finite.
float finite_flag(double sum_sq) { return std::isfinite(sum_sq) ? 1.0f : std::numeric_limits<float>::quiet_NaN(); }
}  // namespace

CompressedAllreduce::CompressedAllreduce(Communicator& comm, ThreadPool& pool, size_t n,
                                         std::span<const size_t> layer_bounds, size_t scale_group)
    : comm_(comm), pool_(pool), n_(n), group_(scale_group) {
  ONEBIT_CHECK(scale_group % 64 == 0, "compressed allreduce: scale_group must be 0 (one scale per worker and "
                                      "per chunk) or a positive multiple of 64, got " << scale_group);
  const size_t P = static_cast<size_t>(comm.size()), unit = 64 * P;
  n_pad_ = (n + unit - 1) / unit * unit;
  part_ = kernels::Partition(n, layer_bounds, chunk_size(), group_);
  server_part_ = kernels::Partition(server_real(), {}, 0, group_);
  const size_t G = groups();
  worker_c_[0].assign(n, 0.0f);
  worker_c_[1].assign(n, 0.0f);
  worker_scale_.assign(grouped() ? P * G : 1, 0.0f);
  new_scale_ = worker_scale_;
  server_c_.assign(server_real(), 0.0f);
  server_scale_.assign(G, 0.0f);
  send_bits_.assign(n_pad_ / 8, 0);
  recv_bits_.assign(n_pad_ / 8, 0);
  // This rank's server result is sent as it lies: its sign bits, then its scales.
  server_bits_.assign(chunk_size() / 8 + G * sizeof(float), 0);
  gathered_.assign(P * server_bits_.size(), 0);
  worker_scales_.assign(G * P, 0.0f);
  flags_.assign(P, 1.0f);
  for (int r = 0; r < 2; ++r) {
    result_bits_[r].assign(n_pad_ / 8, 0);
    server_scales_[r].assign(P * G, 0.0f);
  }
  piece_sums_.assign(part_.pieces().size(), 0.0);
  server_piece_sums_.assign(server_part_.pieces().size(), 0.0);
  plan_stages();
}

int CompressedAllreduce::pipeline_stages(size_t n, int P) {
  const size_t unit = 64 * static_cast<size_t>(P), chunk_bytes = (n + unit - 1) / unit * unit / static_cast<size_t>(P) / 8;
  return static_cast<int>(std::clamp<size_t>(chunk_bytes / kMinStageBytes, 1, kMaxStages));
}

void CompressedAllreduce::plan_stages() {
  const size_t words = chunk_size() / 64;  // 64-bit words of sign bits per chunk
  stages_ = pipeline_stages(n_, comm_.size());
  const size_t S = static_cast<size_t>(stages_), P = static_cast<size_t>(comm_.size());
  for (size_t s = 0; s <= S; ++s) stage_word_.push_back(s * words / S);
  // Staging for the all-to-all of a stage, or of the whole chunk with its scales (grouped exchange()).
  // Stages differ by at most one word per chunk; the last one's pieces also carry the scales.
  if (stages_ > 1 || grouped()) {
    stage_send_.resize(send_bits_.size() / (grouped() ? 1 : S) + (8 + scale_tail()) * P);
    stage_recv_.resize(stage_send_.size());
  }
  if (stages_ == 1) return;
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
}

size_t CompressedAllreduce::server_real() const {
  const size_t begin = static_cast<size_t>(comm_.rank()) * chunk_size();
  return real_in(begin, begin + chunk_size(), n_);
}

bool CompressedAllreduce::compress(std::span<const float> x) {
  ONEBIT_CHECK(x.size() == n_, "compressed allreduce on rank " << comm_.rank() << ": buffer has "
                                                                << x.size() << " elements, built for " << n_);
  const int cur = worker_cur_;
  return finish_compress(kernels::compress(part_, pool_, x.data(), worker_c_[cur].data(), worker_scale_,
                                           worker_c_[1 - cur].data(), send_bits_.data(), piece_sums_.data()));
}

bool CompressedAllreduce::compress_momentum(const kernels::Momentum& m, std::span<const float> g, float beta1,
                                            const float* k) {
  ONEBIT_CHECK(g.size() == n_, "compressed allreduce on rank " << comm_.rank() << ": gradient of " << g.size()
                                                                << " elements, built for " << n_);
  const int cur = worker_cur_;
  return finish_compress(kernels::compress_momentum(part_, pool_, m, g.data(), beta1, k, worker_c_[cur].data(),
                                                    worker_scale_, worker_c_[1 - cur].data(), send_bits_.data(),
                                                    piece_sums_.data()));
}

// The worker scale of each group (docs/algorithm.md §12) from the pieces' sums of squares.
void CompressedAllreduce::group_scales_from(std::span<const double> piece_sums) {
  const size_t G = groups(), C = chunk_size();
  group_sums_.resize(new_scale_.size());
  kernels::sum_groups(part_, piece_sums, group_sums_);
  for (size_t q = 0; q < new_scale_.size(); ++q) {
    const size_t begin = q / G * C + q % G * group_;
    new_scale_[q] = kernels::scale_from_sum(group_sums_[q], real_in(begin, std::min(begin + group_, (q / G + 1) * C), n_));
  }
}

// Every rank learns whether every rank's input was finite before any state changes. Grouped, the
// scales themselves go out with the bits in exchange().
bool CompressedAllreduce::finish_compress(double sum_sq) {
  if (grouped()) {
    group_scales_from(piece_sums_);
    own_flag_ = finite_flag(sum_sq);
    comm_.allgather_values(std::span<const float>(&own_flag_, 1), std::span<float>(flags_));
  } else {
    new_scale_[0] = kernels::scale_from_sum(sum_sq, n_);
    comm_.allgather_values(std::span<const float>(new_scale_.data(), 1), std::span<float>(worker_scales_));
  }
  return accept_worker_scales();
}

// A NaN or infinity anywhere makes that rank's scale (grouped: its flag) non-finite, and every rank
// has every rank's.
bool CompressedAllreduce::accept_worker_scales() {
  for (float s : grouped() ? flags_ : worker_scales_)
    if (!std::isfinite(s)) return false;
  worker_cur_ = 1 - worker_cur_;
  std::swap(worker_scale_, new_scale_);
  return true;
}

void CompressedAllreduce::exchange() {
  if (grouped()) {
    alltoall_words(0, chunk_size() / 64, &worker_scale_);
  } else {
    comm_.alltoall(std::as_bytes(std::span(send_bits_)), std::as_writable_bytes(std::span(recv_bits_)));
  }
  serve_and_gather();
}

// The server stage over this rank's chunk, then the all-gather of every chunk's result, which
// becomes bits() (the one before stays readable as previous_bits()).
void CompressedAllreduce::serve_and_gather() {
  result_cur_ = 1 - result_cur_;
  const size_t P = static_cast<size_t>(comm_.size()), G = groups(), chunk_bytes = chunk_size() / 8;
  const size_t piece = server_bits_.size();
  const double sum_sq = kernels::server_average(server_part_, pool_, recv_bits_.data(), chunk_bytes, worker_scales_,
                                                comm_.size(), server_c_.data(), server_scale_, server_bits_.data(),
                                                server_piece_sums_.data());
  if (grouped()) {
    group_sums_.resize(G);
    kernels::sum_groups(server_part_, server_piece_sums_, group_sums_);
    for (size_t g = 0; g < G; ++g)
      server_scale_[g] = kernels::scale_from_sum(group_sums_[g], real_in(g * group_, (g + 1) * group_, server_real()));
  } else {
    server_scale_[0] = kernels::scale_from_sum(sum_sq, server_real());
  }
  std::memcpy(server_bits_.data() + chunk_bytes, server_scale_.data(), G * sizeof(float));
  comm_.allgather(std::as_bytes(std::span(server_bits_)), std::as_writable_bytes(std::span(gathered_)));
  for (size_t j = 0; j < P; ++j) {
    if (chunk_bytes > 0)  // an empty buffer has no bits, and memcpy may not take its null pointer
      std::memcpy(result_bits_[result_cur_].data() + j * chunk_bytes, gathered_.data() + j * piece, chunk_bytes);
    std::memcpy(server_scales_[result_cur_].data() + j * G, gathered_.data() + j * piece + chunk_bytes, G * sizeof(float));
  }
}

void CompressedAllreduce::decode(std::span<float> out) {
  ONEBIT_CHECK(out.size() == n_, "compressed allreduce decode: " << out.size() << " elements, built for " << n_);
  kernels::decode(part_, pool_, bits(), scales(), out.data());
}

// The all-to-all of words [w0, w1) of every chunk's sign bits through staging buffers, each chunk's
// followed by this rank's scales for it when `scales` is given (docs/algorithm.md §2: the one worker scale;
// grouped: the chunk's group scales and this rank's finiteness flag), which fill worker_scales_ and
// flags_ on arrival.
void CompressedAllreduce::alltoall_words(size_t w0, size_t w1, const std::vector<float>* scales) {
  const size_t P = static_cast<size_t>(comm_.size()), G = groups(), chunk_bytes = chunk_size() / 8;
  const size_t off = w0 * 8, len = (w1 - w0) * 8;
  const size_t piece = len + (scales ? scale_tail() : 0);
  for (size_t j = 0; j < P; ++j) {
    uint8_t* out = stage_send_.data() + j * piece;
    if (len > 0) std::memcpy(out, send_bits_.data() + j * chunk_bytes + off, len);  // an empty buffer's data() may be null
    if (!scales) continue;
    if (grouped()) {
      std::memcpy(out + len, scales->data() + j * G, G * sizeof(float));
      std::memcpy(out + len + G * sizeof(float), &own_flag_, sizeof(float));
    } else {
      std::memcpy(out + len, scales->data(), sizeof(float));
    }
  }
  comm_.alltoall(std::as_bytes(std::span(stage_send_.data(), P * piece)),
                 std::as_writable_bytes(std::span(stage_recv_.data(), P * piece)));
  for (size_t j = 0; j < P; ++j) {
    const uint8_t* in = stage_recv_.data() + j * piece;
    if (len > 0) std::memcpy(recv_bits_.data() + j * chunk_bytes + off, in, len);
    if (!scales) continue;
    if (grouped()) {
      for (size_t g = 0; g < G; ++g) std::memcpy(&worker_scales_[g * P + j], in + len + g * sizeof(float), sizeof(float));
      std::memcpy(&flags_[j], in + len + G * sizeof(float), sizeof(float));
    } else {
      std::memcpy(&worker_scales_[j], in + len, sizeof(float));
    }
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
      if (last && grouped()) {
        group_scales_from(piece_sums_);
        own_flag_ = finite_flag(kernels::sum_pieces(piece_sums_));
      } else if (last) {
        new_scale_[0] = kernels::scale_from_sum(kernels::sum_pieces(piece_sums_), n_);
      }
      alltoall_words(stage_word_[s], stage_word_[s + 1], last ? &new_scale_ : nullptr);
    }
    compressing.join();
  }
  // A non-finite input shows in its rank's scale or flag; the bits sent are simply not used.
  if (!accept_worker_scales()) return false;
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
  kernels::materialize_error(part_, worker_c_[worker_cur_], worker_scale_, e);
  return e;
}

std::vector<float> CompressedAllreduce::server_error() const {
  std::vector<float> e(server_c_.size());
  kernels::materialize_error(server_part_, server_c_, server_scale_, e);
  return e;
}

void CompressedAllreduce::set_errors(std::span<const float> worker, std::span<const float> server) {
  ONEBIT_CHECK(worker.size() == n_ && server.size() == server_c_.size(),
               "compressed allreduce on rank " << comm_.rank() << ": error state of " << worker.size()
                   << " + " << server.size() << " elements, expected " << n_ << " + " << server_c_.size());
  // With scale 0 the stored value is the error itself.
  std::copy(worker.begin(), worker.end(), worker_c_[worker_cur_].begin());
  std::fill(worker_scale_.begin(), worker_scale_.end(), 0.0f);
  std::copy(server.begin(), server.end(), server_c_.begin());
  std::fill(server_scale_.begin(), server_scale_.end(), 0.0f);
}

}  // namespace onebit

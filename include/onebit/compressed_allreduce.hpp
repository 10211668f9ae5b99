// CompressedAllreduce: the error-compensated 1-bit average of one fp32 buffer over all ranks (docs/algorithm.md §2).
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "onebit/aligned.hpp"
#include "onebit/communicator.hpp"
#include "onebit/kernels.hpp"
#include "onebit/thread_pool.hpp"

namespace onebit {

// Built for a fixed element count n; owns the worker and server error state. Usable whole
// (run) or in its two halves (compress, then exchange) by optimizers that fuse their own passes
// around it.
class CompressedAllreduce {
 public:
  // layer_bounds: optional FlatLayout::boundaries() of the buffer, needed only by the fused
  // optimizer kernels (compress_momentum's per-layer k, and the decode they do themselves).
  // scale_group: 0 for docs/algorithm.md §2's scales (one per worker, one per server chunk); otherwise a scale
  // per group of that many elements of each chunk, for worker and server alike (docs/algorithm.md
  // §12). A positive multiple of 64.
  CompressedAllreduce(Communicator& comm, ThreadPool& pool, size_t n,
                      std::span<const size_t> layer_bounds = {}, size_t scale_group = 0);

  // Stages of run()'s pipeline for n elements over P ranks (1: no pipeline), for planners.
  static int pipeline_stages(size_t n, int P);

  size_t size() const { return n_; }
  size_t padded_size() const { return n_pad_; }
  size_t chunk_size() const { return n_pad_ / static_cast<size_t>(comm_.size()); }
  size_t scale_group() const { return group_; }
  const kernels::Partition& partition() const { return part_; }

  // Averages x over all ranks in place. Returns false, changing nothing, when any rank's x holds
  // a NaN or an infinity (every rank returns false together).
  bool run(std::span<float> x);

  // First half: worker compression of x (or of the 1-bit LAMB scaled momentum) and the exchange
  // of worker scales. Returns false, with no state changed, if any rank's input was not finite.
  bool compress(std::span<const float> x);
  bool compress_momentum(const kernels::Momentum& m, std::span<const float> g, float beta1, const float* k);

  // Second half: all-to-all, server stage, all-gather. The result is bits() decoded with
  // scales() (one per scale group of partition()); the same on every rank. The result of the
  // exchange before stays readable as previous_bits() and previous_scales(): an optimizer keeps its
  // momentum in these.
  void exchange();
  const uint8_t* bits() const { return result_bits_[result_cur_].data(); }
  const float* scales() const { return server_scales_[result_cur_].data(); }
  const uint8_t* previous_bits() const { return result_bits_[1 - result_cur_].data(); }
  const float* previous_scales() const { return server_scales_[1 - result_cur_].data(); }
  void decode(std::span<float> out);

  // Error state as plain errors (docs/algorithm.md §1), for checkpoints and tests: worker error over n
  // elements, server error over this rank's chunk (its real elements only).
  std::vector<float> worker_error() const;
  std::vector<float> server_error() const;
  void set_errors(std::span<const float> worker, std::span<const float> server);

 private:
  bool grouped() const { return group_ > 0; }
  size_t groups() const { return part_.groups_per_chunk(); }  // scale groups per chunk
  bool finish_compress(double sum_sq);
  bool accept_worker_scales();
  void serve_and_gather();
  size_t server_real() const;  // real elements in this rank's chunk
  size_t real_in(size_t begin, size_t end, size_t n) const { return std::min(n, end) - std::min(n, begin); }
  // Bytes of this rank's scales that travel with chunk j's bits when they do: the one worker scale,
  // or, grouped, that chunk's group scales and then a flag that is NaN when the input was not finite.
  size_t scale_tail() const { return (grouped() ? groups() + 1 : 1) * sizeof(float); }
  void group_scales_from(std::span<const double> piece_sums);
  // run() on large buffers: compression overlapped with the all-to-all.
  void plan_stages();
  bool run_pipelined(std::span<float> x);
  void alltoall_words(size_t w0, size_t w1, const std::vector<float>* scales);

  Communicator& comm_;
  ThreadPool& pool_;
  size_t n_, n_pad_, group_;
  kernels::Partition part_, server_part_;
  // Worker state, double buffered so a step skipped for a non-finite value leaves it untouched.
  // worker_scale_ holds the scales of worker_c_[worker_cur_] (one, or one per group), new_scale_
  // those of the other buffer until every rank's compression has turned out finite.
  AlignedVector<float> worker_c_[2];
  int worker_cur_ = 0;
  std::vector<float> worker_scale_, new_scale_;
  AlignedVector<float> server_c_;
  std::vector<float> server_scale_;  // one per scale group of this rank's chunk
  std::vector<uint8_t> send_bits_, recv_bits_, server_bits_, gathered_;
  // Every rank's worker scales for this rank's chunk: [group][rank].
  std::vector<float> worker_scales_;
  std::vector<float> flags_;  // grouped: each rank's finiteness flag
  // The results of the last two exchanges; result_cur_ is the last.
  std::vector<uint8_t> result_bits_[2];
  std::vector<float> server_scales_[2];
  int result_cur_ = 0;
  // The pipeline of run(): stage s moves words [stage_word_[s], stage_word_[s+1]) of every chunk's
  // sign bits; compress_stage_[s] are the blocks compressed before its all-to-all.
  int stages_ = 1;
  std::vector<size_t> stage_word_;
  std::vector<std::vector<uint32_t>> compress_stage_;
  std::vector<double> piece_sums_, server_piece_sums_, group_sums_;
  float own_flag_ = 1.0f;
  std::vector<uint8_t> stage_send_, stage_recv_;
};

}  // namespace onebit

// Batches for masked-LM training: packed sequences in a seeded order per epoch, this rank's shard of
// every global batch, and BERT's masking (15% of the tokens; 80% [MASK], 10% random, 10% kept).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <span>
#include <vector>

#include "train/corpus.hpp"

namespace onebit::train {

inline constexpr double kMaskFraction = 0.15;
inline constexpr int64_t kIgnore = -100;  // label of a position the loss skips

// Masks one sequence in place: chooses max(1, round(15% of the non-special positions)) of them;
// each becomes [MASK] (80%), a random piece (10%) or stays (10%), and only they get labels.
// A pure function of (seed, stream): a resumed run draws the same masks.
void mask_sequence(std::span<int32_t> ids, std::span<int64_t> labels, int vocab, uint64_t seed, uint64_t stream);

struct Batch {
  torch::Tensor ids;     // [n, seq] int64, masked
  torch::Tensor labels;  // [n, seq] int64, kIgnore where not masked
};

class MlmData {
 public:
  MlmData(const PreparedCorpus& corpus, int seq, int vocab, uint64_t seed);

  int64_t train_sequences() const { return static_cast<int64_t>(train_.size() / seq_); }
  int64_t heldout_sequences() const { return static_cast<int64_t>(heldout_.size() / seq_); }

  // This rank's shard of global batch `step` (1-based): samples (step-1)*global + rank*local, ...,
  // + local-1 of the run's sample order (epoch after epoch, each in a seeded permutation).
  Batch train_batch(int64_t step, int global, int rank, int world);
  // Held-out sequences [first, first+count), with masks that depend only on the index (the same in
  // every run, whatever its seed, so runs compare on identical predictions).
  Batch heldout_batch(int64_t first, int64_t count) const;

  // Index of the training sequence that global sample `g` (0-based) reads.
  int64_t train_index(int64_t g);

 private:
  Batch make(const std::vector<int32_t>& src, const std::vector<int64_t>& index, uint64_t seed,
             const std::vector<uint64_t>& streams) const;

  std::vector<int32_t> train_, heldout_;
  int seq_, vocab_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<int64_t> perm_;
};

}  // namespace onebit::train

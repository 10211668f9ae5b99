// What the ranks of a job share: the corpus (rank 0 prepares it), the machine's cores, and
// identical weights (checked).
#pragma once
#include <cstdint>

#include "onebit/communicator.hpp"
#include "onebit/torch_optimizers.hpp"
#include "train/corpus.hpp"
#include "train/options.hpp"

namespace onebit::train {

// Rank 0 prepares the corpus (from the cache, or learning the tokenizer) and broadcasts it, so every
// rank trains on identical tokens even without a shared file system. A failure on rank 0 reaches
// every rank as an error instead of a hang.
PreparedCorpus share_corpus(const TrainOptions& o, Communicator& comm);

// A hash of the fp32 weights: equal on all ranks after every step (docs/algorithm.md §6).
uint64_t weights_fingerprint(TorchOptimizer& opt);

// Throws onebit::Error unless every rank holds the same weights fingerprint.
void check_ranks_identical(TorchOptimizer& opt, Communicator& comm, const char* when);

// CPU threads this rank should use: --threads, or the machine's cores shared by the local ranks.
int threads_per_rank(int requested, int world);

}  // namespace onebit::train

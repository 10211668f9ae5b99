// Pieces of one training rank, kept apart from the loop in trainer.cpp: sharing the corpus, building
// the optimizer with its momentum masks, the held-out evaluation, and the weights' fingerprint.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "onebit/communicator.hpp"
#include "onebit/torch_optimizers.hpp"
#include "train/corpus.hpp"
#include "train/data.hpp"
#include "train/model.hpp"
#include "train/options.hpp"

namespace onebit::train {

// Rank 0 prepares the corpus (from the cache, or learning the tokenizer) and broadcasts it, so every
// rank trains on identical tokens even without a shared file system. A failure on rank 0 reaches
// every rank as an error instead of a hang.
PreparedCorpus share_corpus(const TrainOptions& o, Communicator& comm);

// The optimizer over `params` (in the order of model->named_parameters()).
std::unique_ptr<TorchOptimizer> make_optimizer(const TrainOptions& o, const std::vector<at::Tensor>& params,
                                               std::shared_ptr<Communicator> comm, int threads);

// Spec §4: rows of the position table at or beyond --seq, token-type rows other than 0 and the key
// biases never get a gradient, and 1-bit compression cannot send an exact zero (with v = 0 such an
// element's update would be m/eps), so 1-bit LAMB masks their momentum. Returns the masked tensors.
int set_momentum_masks(TorchOptimizer& opt, const std::vector<std::string>& names, int seq);

// The same dead parameters for a compressing optimizer without a momentum mask (1-bit Adam; spec §4
// defines the mask for 1-bit LAMB): without one they drift by about lr*m/eps per step (a key bias
// reached 28 in 40 steps). The trainer keeps their values from the start and puts them back after
// every step, the same on every rank. Empty for the other optimizers.
class DeadParameters {
 public:
  DeadParameters(TorchOptimizer& opt, const std::vector<std::string>& names, int seq);
  void restore(TorchOptimizer& opt) const;
  size_t elements() const;

 private:
  std::vector<std::pair<int64_t, at::Tensor>> regions_;  // flat offset, values (on the buffers' device)
};

// Denormal floats make the CPU's matrix products an order of magnitude slower. Tiny BERT under
// 1-bit LAMB drifts some activations into that range after about 70 steps (0.7 s a step became 3 s
// and more, all of it in OpenBLAS's sgemm), so the model runs with denormals flushed to zero, as
// torch.set_flush_denormal(True) asks. The flag is per thread: this sets it on every thread of
// torch's OpenMP team (OpenBLAS's threads are the same team when both use the system's libgomp,
// as Debian's do), while a FlushDenormals sets it on the calling thread for its lifetime
// (forward_backward and evaluate hold one). The optimizers run on their own threads and keep IEEE
// denormals, so their pinned math is unchanged. Call it after torch::set_num_threads.
void flush_denormals_in_torch_threads();

class FlushDenormals {
 public:
  FlushDenormals();
  ~FlushDenormals();
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;
};

// Forward and backward of this rank's batch in micro-batches of `micro` sequences (0 or more than
// the batch: one pass), each loss weighted by its share of the batch's masked tokens, so the
// accumulated gradient is the whole batch's up to fp32 summation order. Returns the batch's loss.
double forward_backward(BertForMlm& model, const Batch& b, int micro, const torch::Device& device);

// Mean masked-LM loss over the first `samples` held-out sequences (sharded over the ranks).
double evaluate(BertForMlm& model, const MlmData& data, Communicator& comm, int samples, int batch,
                const torch::Device& device);

// A hash of the fp32 weights: equal on all ranks after every step (spec §6).
uint64_t weights_fingerprint(TorchOptimizer& opt);

// Throws onebit::Error unless every rank holds the same weights fingerprint.
void check_ranks_identical(TorchOptimizer& opt, Communicator& comm, const char* when);

// CPU threads this rank should use: --threads, or the machine's cores shared by the local ranks.
int threads_per_rank(int requested, int world);

}  // namespace onebit::train

// The model's passes on one rank: forward and backward of a batch in micro-batches, the held-out
// evaluation, and the denormal flush they run under.
#pragma once
#include <torch/torch.h>

#include <functional>

#include "onebit/communicator.hpp"
#include "train/data.hpp"
#include "train/model.hpp"

namespace onebit::train {

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

// --precision bf16: for its lifetime, the forward (and so the backward) on `device` runs under
// autocast to bf16, as torch.autocast does: matrix products in bf16, reductions and the loss in
// fp32. Weights, gradients, the optimizer and its exchange stay fp32. Off: nothing changes.
class Autocast {
 public:
  Autocast(const torch::Device& device, bool bf16);
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  torch::DeviceType type_;
  bool on_;
};

// Forward and backward of this rank's batch in micro-batches of `micro` sequences (0 or more than
// the batch: one pass), each loss weighted by its share of the batch's masked tokens, so the
// accumulated gradient is the whole batch's up to fp32 summation order. before_last_backward, if
// given, runs before the last micro-batch's backward (--overlap arms the exchange there). Returns
// the batch's loss.
double forward_backward(BertForMlm& model, const Batch& b, int micro, const torch::Device& device, bool bf16 = false,
                        const std::function<void()>& before_last_backward = nullptr);

// Mean masked-LM loss over the first `samples` held-out sequences (sharded over the ranks).
double evaluate(BertForMlm& model, const MlmData& data, Communicator& comm, int samples, int batch,
                const torch::Device& device, bool bf16 = false);

}  // namespace onebit::train

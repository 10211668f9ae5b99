// Forward, backward and evaluation of the model on one rank (see passes.hpp).
#include "train/passes.hpp"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <algorithm>

#include "onebit/error.hpp"

namespace onebit::train {

void flush_denormals_in_torch_threads() {
  // torch's intra-op threads are its OpenMP runtime's team (at::parallel_for is a header template,
  // so it would run serially in a file compiled without OpenMP): a region of the team's size runs
  // once on each thread, the caller included, which then goes back to IEEE until a FlushDenormals.
#pragma omp parallel
  at::globalContext().setFlushDenormal(true);
  at::globalContext().setFlushDenormal(false);
}

FlushDenormals::FlushDenormals() { at::globalContext().setFlushDenormal(true); }
FlushDenormals::~FlushDenormals() { at::globalContext().setFlushDenormal(false); }

Autocast::Autocast(const torch::Device& device, bool bf16) : type_(device.type()), on_(bf16) {
  if (!on_) return;
#if TORCH_VERSION_MAJOR >= 2
  at::autocast::set_autocast_dtype(type_, at::kBFloat16);
  at::autocast::set_autocast_enabled(type_, true);
#else
  if (device.is_cuda()) {
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
  } else {
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(true);
  }
#endif
}

Autocast::~Autocast() {
  if (!on_) return;
#if TORCH_VERSION_MAJOR >= 2
  at::autocast::set_autocast_enabled(type_, false);
#else
  if (type_ == torch::kCUDA)
    at::autocast::set_enabled(false);
  else
    at::autocast::set_cpu_enabled(false);
#endif
  at::autocast::clear_cache();
}

double forward_backward(BertForMlm& model, const Batch& b, int micro, const torch::Device& device, bool bf16,
                        const std::function<void()>& before_last_backward) {
  const FlushDenormals flush;
  const Autocast autocast(device, bf16);
  const int64_t n = b.ids.size(0);
  if (micro <= 0 || micro >= n) {
    at::Tensor loss = model->mlm_loss(b.ids.to(device), b.labels.to(device));
    if (before_last_backward) before_last_backward();
    loss.backward();
    return loss.item<double>();
  }
  const double masked = static_cast<double>(b.labels.ne(kIgnore).sum().item<int64_t>());
  double total = 0;
  for (int64_t i = 0; i < n; i += micro) {
    const at::Tensor ids = b.ids.slice(0, i, std::min<int64_t>(n, i + micro));
    const at::Tensor labels = b.labels.slice(0, i, std::min<int64_t>(n, i + micro));
    const double share = static_cast<double>(labels.ne(kIgnore).sum().item<int64_t>()) / masked;
    if (i + micro >= n && before_last_backward) before_last_backward();  // (a skipped last: step() exchanges)
    if (share == 0) continue;
    at::Tensor loss = model->mlm_loss(ids.to(device), labels.to(device)) * share;
    loss.backward();
    total += loss.item<double>();
  }
  return total;
}

double evaluate(BertForMlm& model, const MlmData& data, Communicator& comm, int samples, int batch,
                const torch::Device& device, bool bf16) {
  const FlushDenormals flush;
  const Autocast autocast(device, bf16);
  const int64_t n = std::min<int64_t>(samples, data.heldout_sequences());
  const int64_t p = comm.size(), r = comm.rank();
  const int64_t first = n * r / p, last = n * (r + 1) / p;
  model->eval();
  double sum = 0, count = 0;
  {
    torch::NoGradGuard no_grad;
    for (int64_t i = first; i < last; i += batch) {
      Batch b = data.heldout_batch(i, std::min<int64_t>(batch, last - i));
      const double m = static_cast<double>(b.labels.ne(kIgnore).sum().item<int64_t>());
      if (m == 0) continue;
      sum += model->mlm_loss(b.ids.to(device), b.labels.to(device)).item<double>() * m;
      count += m;
    }
  }
  model->train();
  float totals[2] = {static_cast<float>(sum), static_cast<float>(count)};
  comm.allreduce_sum(totals);
  ONEBIT_CHECK(totals[1] > 0, "onebit train: the held-out set has no masked tokens to evaluate");
  return totals[0] / totals[1];
}

}  // namespace onebit::train

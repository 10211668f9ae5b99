// Setup and evaluation pieces of a training rank (see trainer_parts.hpp).
#include "train/trainer_parts.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "onebit/error.hpp"
#include "train/random.hpp"
#include "train/trainer.hpp"

namespace onebit::train {
namespace {

template <class T>
void broadcast_vector(Communicator& comm, std::vector<T>& v, size_t n) {
  v.resize(n);
  if (n) comm.broadcast(std::as_writable_bytes(std::span<T>(v)), 0);
}

}  // namespace

PreparedCorpus share_corpus(const TrainOptions& o, Communicator& comm) {
  CorpusOptions co{o.data, o.vocab, o.heldout, o.cache_dir, comm.rank() == 0};
  if (comm.size() == 1) return prepare_corpus(co);
  PreparedCorpus c;
  std::string error;
  if (comm.rank() == 0) {
    try {
      c = prepare_corpus(co);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  // Learning a tokenizer on a big corpus takes minutes; the other ranks wait for it here.
  const auto saved = comm.timeout();
  comm.set_timeout(std::max<std::chrono::milliseconds>(saved, std::chrono::minutes(30)));
  std::vector<int64_t> sizes{static_cast<int64_t>(error.size()), static_cast<int64_t>(c.key.size()),
                             static_cast<int64_t>(c.tokenizer_model.size()), static_cast<int64_t>(c.train.size()),
                             static_cast<int64_t>(c.heldout.size()), c.train_documents, c.heldout_documents};
  comm.broadcast(std::as_writable_bytes(std::span<int64_t>(sizes)), 0);
  std::vector<char> text;
  if (comm.rank() == 0) text.assign(error.begin(), error.end());
  broadcast_vector(comm, text, static_cast<size_t>(sizes[0]));
  if (sizes[0] > 0) {
    comm.set_timeout(saved);
    if (comm.rank() == 0) throw Error(error);
    ONEBIT_CHECK(false, "onebit train on rank " << comm.rank() << ": rank 0 could not prepare the corpus: "
                                                << std::string(text.begin(), text.end()));
  }
  auto share_string = [&](std::string& s, int64_t n) {
    std::vector<char> buf(s.begin(), s.end());
    broadcast_vector(comm, buf, static_cast<size_t>(n));
    s.assign(buf.begin(), buf.end());
  };
  share_string(c.key, sizes[1]);
  share_string(c.tokenizer_model, sizes[2]);
  broadcast_vector(comm, c.train, static_cast<size_t>(sizes[3]));
  broadcast_vector(comm, c.heldout, static_cast<size_t>(sizes[4]));
  c.train_documents = sizes[5];
  c.heldout_documents = sizes[6];
  comm.set_timeout(saved);
  return c;
}

std::unique_ptr<TorchOptimizer> make_optimizer(const TrainOptions& o, const std::vector<at::Tensor>& params,
                                               std::shared_ptr<Communicator> comm, int threads) {
  const OptimizerKind& kind = optimizer_kind(o.optimizer);
  // The command line's settings, each where the optimizer has it; -1 (auto) and 0 (freeze step
  // auto) leave the optimizer's own default.
  OptionValues v{{"lr", o.lr}, {"beta2", o.beta2}, {"weight_decay", o.weight_decay}, {"threads", static_cast<double>(threads)},
                 {"warmup_exchange", o.warmup_exchange}};
  if (kind.has_option("freeze_step")) {
    v["freeze_step"] = static_cast<double>(o.freeze_step);
    const AutoFreezeOptions a = auto_freeze_options(o);
    v["auto_min_steps"] = static_cast<double>(a.min_steps);
    v["auto_max_steps"] = static_cast<double>(a.max_steps);
    v["auto_window"] = static_cast<double>(a.window);
    v["auto_tolerance"] = a.tolerance;
  }
  for (const auto& [key, value] : {std::pair{"refresh_interval", o.refresh_interval},
                                   {"track_scales", o.track_scales}, {"scale_group", o.scale_group}})
    if (value != -1 && kind.has_option(key)) v[key] = static_cast<double>(value);
  return std::make_unique<TorchOptimizer>(params, kind.parse(v), std::move(comm));
}

namespace {
// The first row of parameter `name` that never gets a gradient, or -1 when every row may.
int64_t first_dead_row(const std::string& name, int seq) {
  if (name == kPositionTable) return seq;
  if (name == kTokenTypeTable) return 1;
  if (name.ends_with(kKeyBiasSuffix)) return 0;
  return -1;
}
}  // namespace

int set_momentum_masks(TorchOptimizer& opt, const std::vector<std::string>& names, int seq) {
  if (!opt.kind().momentum_mask) return 0;
  int masked = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    const int64_t first_dead = first_dead_row(names[i], seq);
    const at::Tensor& p = opt.flat().tensors()[i];
    if (first_dead < 0 || first_dead >= p.size(0)) continue;
    at::Tensor mask = torch::ones(p.sizes(), torch::kFloat);
    mask.slice(0, first_dead).zero_();
    opt.set_momentum_mask(i, mask);
    ++masked;
  }
  return masked;
}

DeadParameters::DeadParameters(TorchOptimizer& opt, const std::vector<std::string>& names, int seq) {
  if (!opt.kind().compresses || opt.kind().momentum_mask) return;  // exact zeros stay zero
  const at::Tensor w = opt.flat().params();
  for (size_t i = 0; i < names.size(); ++i) {
    const int64_t first_dead = first_dead_row(names[i], seq);
    const at::Tensor& p = opt.flat().tensors()[i];
    if (first_dead < 0 || first_dead >= p.size(0)) continue;
    const int64_t row = p.numel() / p.size(0);
    const auto offset = static_cast<int64_t>(opt.flat().layout()[i].offset);
    const int64_t begin = offset + first_dead * row, end = offset + static_cast<int64_t>(opt.flat().layout()[i].size);
    regions_.emplace_back(begin, w.slice(0, begin, end).clone());
  }
}

void DeadParameters::restore(TorchOptimizer& opt) const {
  if (regions_.empty()) return;
  torch::NoGradGuard no_grad;
  const at::Tensor w = opt.flat().params();
  for (const auto& [offset, values] : regions_) w.slice(0, offset, offset + values.numel()).copy_(values);
  opt.flat().write_back();
}

size_t DeadParameters::elements() const {
  size_t n = 0;
  for (const auto& r : regions_) n += static_cast<size_t>(r.second.numel());
  return n;
}

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

double forward_backward(BertForMlm& model, const Batch& b, int micro, const torch::Device& device) {
  const FlushDenormals flush;
  const int64_t n = b.ids.size(0);
  if (micro <= 0 || micro >= n) {
    at::Tensor loss = model->mlm_loss(b.ids.to(device), b.labels.to(device));
    loss.backward();
    return loss.item<double>();
  }
  const double masked = static_cast<double>(b.labels.ne(kIgnore).sum().item<int64_t>());
  double total = 0;
  for (int64_t i = 0; i < n; i += micro) {
    const at::Tensor ids = b.ids.slice(0, i, std::min<int64_t>(n, i + micro));
    const at::Tensor labels = b.labels.slice(0, i, std::min<int64_t>(n, i + micro));
    const double share = static_cast<double>(labels.ne(kIgnore).sum().item<int64_t>()) / masked;
    if (share == 0) continue;
    at::Tensor loss = model->mlm_loss(ids.to(device), labels.to(device)) * share;
    loss.backward();
    total += loss.item<double>();
  }
  return total;
}

double evaluate(BertForMlm& model, const MlmData& data, Communicator& comm, int samples, int batch,
                const torch::Device& device) {
  const FlushDenormals flush;
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

uint64_t weights_fingerprint(TorchOptimizer& opt) {
  const at::Tensor w = opt.flat().params().to(at::kCPU).contiguous();  // no copy on the CPU
  return fnv1a(std::string_view(static_cast<const char*>(w.data_ptr()), w.nbytes()));
}

void check_ranks_identical(TorchOptimizer& opt, Communicator& comm, const char* when) {
  const uint64_t mine = weights_fingerprint(opt);
  std::vector<uint64_t> all(static_cast<size_t>(comm.size()));
  comm.allgather_values<uint64_t>(std::span<const uint64_t>(&mine, 1), all);
  for (size_t r = 0; r < all.size(); ++r)
    ONEBIT_CHECK(all[r] == all[0], "onebit train " << when << ": rank " << r << "'s weights differ from rank 0's "
                                                   << "(fingerprints " << std::hex << all[r] << " vs " << all[0] << ")");
}

int threads_per_rank(int requested, int world) {
  if (requested > 0) return requested;
  int local = world;
  for (const char* v : {"LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"})
    if (const char* s = std::getenv(v); s && std::atoi(s) > 0) {
      local = std::atoi(s);
      break;
    }
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / std::max(1, local));
}

}  // namespace onebit::train

// Sample order, sharding and masking for masked-LM training (see data.hpp).
#include "train/data.hpp"

#include <cmath>
#include <numeric>

#include "onebit/error.hpp"
#include "train/random.hpp"

namespace onebit::train {
namespace {
constexpr uint64_t kHeldoutMaskSeed = 0x6865'6c64'6f75'7431ull;  // fixed: see heldout_batch
}

void mask_sequence(std::span<int32_t> ids, std::span<int64_t> labels, int vocab, uint64_t seed, uint64_t stream) {
  CounterRng rng(mix(seed, stream, 0x6d61736bull));
  std::vector<int32_t> cand;
  cand.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    labels[i] = kIgnore;
    if (ids[i] >= SpecialIds::kFirstPiece) cand.push_back(static_cast<int32_t>(i));
  }
  if (cand.empty()) return;
  const size_t k = std::max<size_t>(1, static_cast<size_t>(std::lround(kMaskFraction * static_cast<double>(cand.size()))));
  for (size_t j = 0; j < k; ++j) {  // partial Fisher-Yates: the first k of a random permutation
    std::swap(cand[j], cand[j + rng.below(cand.size() - j)]);
    const int32_t p = cand[j];
    labels[p] = ids[p];
    const double u = rng.uniform();
    if (u < 0.8) {
      ids[p] = SpecialIds::kMask;
    } else if (u < 0.9) {
      ids[p] = static_cast<int32_t>(SpecialIds::kFirstPiece + rng.below(static_cast<uint64_t>(vocab - SpecialIds::kFirstPiece)));
    }
  }
}

MlmData::MlmData(const PreparedCorpus& corpus, int seq, int vocab, uint64_t seed)
    : train_(pack_sequences(corpus.train, seq)),
      heldout_(pack_sequences(corpus.heldout, seq)),
      seq_(seq),
      vocab_(vocab),
      seed_(seed) {
  ONEBIT_CHECK(train_sequences() > 0, "onebit train: the training documents hold fewer than one sequence of "
                                          << seq << " tokens");
  ONEBIT_CHECK(heldout_sequences() > 0, "onebit train: the held-out documents hold fewer than one sequence of "
                                            << seq << " tokens; raise --heldout or add text");
}

int64_t MlmData::train_index(int64_t g) {
  const int64_t n = train_sequences();
  const int64_t epoch = g / n;
  if (epoch != epoch_) {
    perm_.resize(static_cast<size_t>(n));
    std::iota(perm_.begin(), perm_.end(), 0);
    CounterRng rng(mix(seed_, static_cast<uint64_t>(epoch), 0x6f72646572ull));
    for (int64_t i = n - 1; i > 0; --i)
      std::swap(perm_[static_cast<size_t>(i)], perm_[rng.below(static_cast<uint64_t>(i + 1))]);
    epoch_ = epoch;
  }
  return perm_[static_cast<size_t>(g % n)];
}

Batch MlmData::train_batch(int64_t step, int global, int rank, int world) {
  ONEBIT_CHECK(global % world == 0, "onebit train: --batch " << global << " is not a multiple of the "
                                                             << world << " workers");
  const int local = global / world;
  std::vector<int64_t> index;
  std::vector<uint64_t> streams;
  for (int i = 0; i < local; ++i) {
    const int64_t g = (step - 1) * global + static_cast<int64_t>(rank) * local + i;
    index.push_back(train_index(g));
    streams.push_back(static_cast<uint64_t>(g));  // a fresh mask every time a sequence comes back
  }
  return make(train_, index, seed_, streams);
}

Batch MlmData::heldout_batch(int64_t first, int64_t count) const {
  std::vector<int64_t> index;
  std::vector<uint64_t> streams;
  for (int64_t i = first; i < first + count; ++i) {
    index.push_back(i);
    streams.push_back(static_cast<uint64_t>(i));
  }
  return make(heldout_, index, kHeldoutMaskSeed, streams);
}

Batch MlmData::make(const std::vector<int32_t>& src, const std::vector<int64_t>& index, uint64_t seed,
                    const std::vector<uint64_t>& streams) const {
  const int64_t n = static_cast<int64_t>(index.size());
  Batch b{torch::empty({n, seq_}, torch::kLong), torch::empty({n, seq_}, torch::kLong)};
  std::vector<int32_t> ids(static_cast<size_t>(seq_));
  for (int64_t i = 0; i < n; ++i) {
    std::copy_n(src.data() + index[static_cast<size_t>(i)] * seq_, seq_, ids.begin());
    int64_t* labels = b.labels.data_ptr<int64_t>() + i * seq_;
    mask_sequence(ids, {labels, static_cast<size_t>(seq_)}, vocab_, seed, streams[static_cast<size_t>(i)]);
    std::copy(ids.begin(), ids.end(), b.ids.data_ptr<int64_t>() + i * seq_);
  }
  return b;
}

}  // namespace onebit::train

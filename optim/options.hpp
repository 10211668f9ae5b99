// Option checks shared by the optimizers: bad settings are named before any communication starts.
#pragma once
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "onebit/checkpoint.hpp"
#include "onebit/communicator.hpp"
#include "onebit/flat_layout.hpp"
#include "onebit/kernels.hpp"
#include "onebit/optimizers.hpp"

namespace onebit {

void validate(const LambOptions& o, const std::string& who);
void validate(const OnebitLambOptions& o, const std::string& who);
void validate(const OnebitAdamOptions& o, const std::string& who);
// Validated, with every kWithAutoFreeze settled: on with the automatic freeze, off with a given
// step (the CPU and CUDA 1-bit LAMB alike).
OnebitLambOptions settled(OnebitLambOptions o, const std::string& who);

// Named hyperparameters that must agree across ranks (not lr, which schedules change, nor threads).
using Settings = std::vector<std::pair<const char*, double>>;
Settings settings_of(const LambOptions& o);
Settings settings_of(const OnebitLambOptions& o);
Settings settings_of(const OnebitAdamOptions& o);

// What every rank must agree on before the first step: the optimizer, the checkpoint format
// version, the layer count and shapes, and the settings. Fixed size, so one small all-gather
// carries it on any backend.
struct Fingerprint {
  static constexpr size_t kMaxSettings = 20;
  uint64_t kind = 0;     // FNV-1a of the optimizer's name
  uint64_t version = 0;  // checkpoint format version of this build
  uint64_t layers = 0, params = 0;
  uint64_t shapes = 0;   // FNV-1a of the layer sizes
  double settings[kMaxSettings] = {};
};
Fingerprint fingerprint(const FlatLayout& layout, const Settings& settings, const std::string& kind,
                        uint32_t version = kCheckpointVersion);
// Throws, on every rank alike, naming the first rank that differs from rank 0 and what differs.
void check_fingerprints(std::span<const Fingerprint> all, const Settings& settings, int rank,
                        const std::string& who);

// fingerprint + all-gather + check_fingerprints over a host-memory communicator.
// version: tests pass another to play a rank of another build.
void agree_across_ranks(Communicator& comm, const FlatLayout& layout, const Settings& settings,
                        const std::string& who, uint32_t version = kCheckpointVersion);

template <class O>
kernels::MomentParams moments(const O& o) {
  return {o.beta1, o.beta2, o.eps, o.weight_decay};
}

// Copies state tensor `key` into `into`, checking it is there with `expect` elements.
const std::vector<float>& find_tensor(const OptimizerState& s, const char* key, size_t expect,
                                      const std::string& who);
template <class V>
void take(const OptimizerState& s, const char* key, V& into, size_t expect, const std::string& who) {
  const auto& t = find_tensor(s, key, expect, who);
  into.assign(t.begin(), t.end());
}
template <class V>
std::vector<float> plain(const V& v) {
  return {v.begin(), v.end()};
}

}  // namespace onebit

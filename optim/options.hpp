// Option checks shared by the optimizers: bad settings are named before any communication starts.
#pragma once
#include <string>
#include <vector>

#include "onebit/communicator.hpp"
#include "onebit/flat_layout.hpp"
#include "onebit/kernels.hpp"
#include "onebit/optimizers.hpp"

namespace onebit {

void validate(const LambOptions& o, const std::string& who);
void validate(const OnebitLambOptions& o, const std::string& who);
void validate(const OnebitAdamOptions& o, const std::string& who);

// One small all-gather of a fingerprint of the layout and the options: a rank whose layer shapes
// or hyperparameters differ from rank 0's is reported on every rank before any step can deadlock.
// settings: the hyperparameters that must agree (not lr, which schedules change, nor threads).
void agree_across_ranks(Communicator& comm, const FlatLayout& layout,
                        const std::vector<double>& settings, const std::string& who);
std::vector<double> settings_of(const LambOptions& o);
std::vector<double> settings_of(const OnebitLambOptions& o);
std::vector<double> settings_of(const OnebitAdamOptions& o);

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

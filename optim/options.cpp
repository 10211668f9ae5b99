// Validation of optimizer options and the cross-rank agreement check.
#include "options.hpp"

#include <cmath>
#include <cstring>

#include "onebit/error.hpp"

namespace onebit {
namespace {

void check_common(float lr, float beta1, float beta2, float eps, float wd, int threads,
                  const std::string& who) {
  ONEBIT_CHECK(std::isfinite(lr) && lr >= 0, who << ": lr must be a finite number >= 0, got " << lr);
  ONEBIT_CHECK(beta1 >= 0 && beta1 < 1, who << ": beta1 must be in [0, 1), got " << beta1);
  ONEBIT_CHECK(beta2 >= 0 && beta2 < 1, who << ": beta2 must be in [0, 1), got " << beta2);
  ONEBIT_CHECK(std::isfinite(eps) && eps > 0, who << ": eps must be > 0, got " << eps);
  ONEBIT_CHECK(std::isfinite(wd) && wd >= 0, who << ": weight_decay must be >= 0, got " << wd);
  ONEBIT_CHECK(threads >= 1, who << ": threads must be >= 1, got " << threads);
}

}  // namespace

void validate(const LambOptions& o, const std::string& who) {
  check_common(o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.threads, who);
  ONEBIT_CHECK(o.min_coeff > 0 && o.min_coeff <= o.max_coeff && std::isfinite(o.max_coeff),
               who << ": need 0 < min_coeff <= max_coeff, got min_coeff " << o.min_coeff
                   << ", max_coeff " << o.max_coeff);
}

void validate(const OnebitLambOptions& o, const std::string& who) {
  validate(static_cast<const LambOptions&>(o), who);
  ONEBIT_CHECK(o.freeze_step >= 1, who << ": freeze_step must be >= 1 (the last warmup step), got "
                                       << o.freeze_step);
  ONEBIT_CHECK(o.coeff_beta >= 0 && o.coeff_beta < 1, who << ": coeff_beta must be in [0, 1), got " << o.coeff_beta);
  ONEBIT_CHECK(o.factor_min > 0 && o.factor_min <= o.factor_max && std::isfinite(o.factor_max),
               who << ": need 0 < factor_min <= factor_max, got " << o.factor_min << ", " << o.factor_max);
  ONEBIT_CHECK(o.factor_threshold >= 0 && o.factor_threshold < 1,
               who << ": factor_threshold must be in [0, 1), got " << o.factor_threshold);
}

void validate(const OnebitAdamOptions& o, const std::string& who) {
  check_common(o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.threads, who);
  ONEBIT_CHECK(o.freeze_step >= 1, who << ": freeze_step must be >= 1 (the last warmup step), got "
                                       << o.freeze_step);
}

std::vector<double> settings_of(const LambOptions& o) {
  return {o.beta1, o.beta2, o.eps, o.weight_decay, o.max_coeff, o.min_coeff};
}

std::vector<double> settings_of(const OnebitLambOptions& o) {
  auto s = settings_of(static_cast<const LambOptions&>(o));
  s.insert(s.end(), {static_cast<double>(o.freeze_step), o.coeff_beta, o.factor_max, o.factor_min,
                     o.factor_threshold});
  return s;
}

std::vector<double> settings_of(const OnebitAdamOptions& o) {
  return {o.beta1, o.beta2, o.eps, o.weight_decay, static_cast<double>(o.freeze_step)};
}

void agree_across_ranks(Communicator& comm, const FlatLayout& layout,
                        const std::vector<double>& settings, const std::string& who) {
  if (comm.size() == 1) return;
  // FNV-1a over the layer sizes and the settings.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const void* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<const unsigned char*>(p)[i]) * 1099511628211ull;
  };
  for (const auto& l : layout.layers()) mix(&l.size, sizeof l.size);
  mix(settings.data(), settings.size() * sizeof(double));
  std::vector<uint64_t> all(static_cast<size_t>(comm.size()));
  comm.allgather_values(std::span<const uint64_t>(&h, 1), std::span<uint64_t>(all));
  for (size_t r = 0; r < all.size(); ++r)
    ONEBIT_CHECK(all[r] == all[0], who << " on rank " << comm.rank() << ": rank " << r
                                       << " has different layer shapes or options than rank 0");
}

}  // namespace onebit

// Validation of optimizer options and the cross-rank agreement check.
#include "options.hpp"

#include <cmath>

#include "onebit/error.hpp"
#include "onebit/fnv1a.hpp"

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

void validate_freeze(int64_t freeze_step, const AutoFreezeOptions& a, const std::string& who) {
  ONEBIT_CHECK(freeze_step >= 1 || freeze_step == kAutoFreeze,
               who << ": freeze_step must be >= 1 (the last warmup step) or auto (" << kAutoFreeze << "), got "
                   << freeze_step);
  if (freeze_step != kAutoFreeze) return;
  ONEBIT_CHECK(a.min_steps >= 1 && a.max_steps >= a.min_steps,
               who << ": the automatic freeze needs 1 <= min_steps <= max_steps, got min_steps " << a.min_steps
                   << ", max_steps " << a.max_steps);
  ONEBIT_CHECK(a.window >= 1, who << ": the automatic freeze's window must be >= 1 step, got " << a.window);
  ONEBIT_CHECK(a.tolerance > 0 && a.tolerance < 1,
               who << ": the automatic freeze's tolerance must be in (0, 1), got " << a.tolerance);
}

void check_scale_group(int64_t g, const std::string& who) {
  ONEBIT_CHECK(g >= 0 && g % 64 == 0, who << ": scale_group must be 0 (the paper's scales) or a positive multiple of 64 "
                                              "elements, got " << g);
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
  validate_freeze(o.freeze_step, o.auto_freeze, who);
  ONEBIT_CHECK(o.coeff_beta >= 0 && o.coeff_beta < 1, who << ": coeff_beta must be in [0, 1), got " << o.coeff_beta);
  ONEBIT_CHECK(o.factor_min > 0 && o.factor_min <= o.factor_max && std::isfinite(o.factor_max),
               who << ": need 0 < factor_min <= factor_max, got " << o.factor_min << ", " << o.factor_max);
  ONEBIT_CHECK(o.factor_threshold >= 0 && o.factor_threshold < 1,
               who << ": factor_threshold must be in [0, 1), got " << o.factor_threshold);
  ONEBIT_CHECK(o.refresh_interval >= 0 || o.refresh_interval == kWithAutoFreeze,
               who << ": refresh_interval must be >= 0 (0: off) or kWithAutoFreeze (" << kWithAutoFreeze << "), got "
                   << o.refresh_interval);
  ONEBIT_CHECK(o.track_scales == 0 || o.track_scales == 1 || o.track_scales == kWithAutoFreeze,
               who << ": track_scales must be 0, 1 or kWithAutoFreeze (" << kWithAutoFreeze << "), got "
                   << o.track_scales);
  ONEBIT_CHECK(o.scale_group == kWithAutoFreeze || o.scale_group >= 0, who << ": scale_group must be >= 0 or kWithAutoFreeze ("
                                                                          << kWithAutoFreeze << "), got " << o.scale_group);
  check_scale_group(o.scale_group == kWithAutoFreeze ? 0 : o.scale_group, who);
}

void validate(const OnebitAdamOptions& o, const std::string& who) {
  check_common(o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.threads, who);
  validate_freeze(o.freeze_step, o.auto_freeze, who);
  check_scale_group(o.scale_group, who);
}

namespace {
void add_auto_freeze(Settings& s, const AutoFreezeOptions& a) {
  s.insert(s.end(), {{"auto_freeze.min_steps", static_cast<double>(a.min_steps)},
                     {"auto_freeze.max_steps", static_cast<double>(a.max_steps)},
                     {"auto_freeze.window", static_cast<double>(a.window)},
                     {"auto_freeze.tolerance", a.tolerance}});
}
}  // namespace

OnebitLambOptions settled(OnebitLambOptions o, const std::string& who) {
  validate(o, who);
  const bool automatic = o.freeze_step == kAutoFreeze;
  if (o.refresh_interval == kWithAutoFreeze) o.refresh_interval = automatic ? kAutoRefreshInterval : 0;
  if (o.track_scales == kWithAutoFreeze) o.track_scales = automatic ? 1 : 0;
  if (o.scale_group == kWithAutoFreeze) o.scale_group = automatic ? kAutoScaleGroup : 0;
  return o;
}

Settings settings_of(const LambOptions& o) {
  return {{"beta1", o.beta1}, {"beta2", o.beta2}, {"eps", o.eps}, {"weight_decay", o.weight_decay},
          {"max_coeff", o.max_coeff}, {"min_coeff", o.min_coeff},
          {"warmup_exchange", static_cast<double>(o.warmup_exchange)}};
}

Settings settings_of(const OnebitLambOptions& o) {
  Settings s = settings_of(static_cast<const LambOptions&>(o));
  s.insert(s.end(), {{"freeze_step", static_cast<double>(o.freeze_step)}, {"coeff_beta", o.coeff_beta},
                     {"factor_max", o.factor_max}, {"factor_min", o.factor_min},
                     {"factor_threshold", o.factor_threshold},
                     {"refresh_interval", static_cast<double>(o.refresh_interval)},
                     {"track_scales", static_cast<double>(o.track_scales)},
                     {"scale_group", static_cast<double>(o.scale_group)}});
  add_auto_freeze(s, o.auto_freeze);
  return s;
}

Settings settings_of(const OnebitAdamOptions& o) {
  Settings s{{"beta1", o.beta1}, {"beta2", o.beta2}, {"eps", o.eps}, {"weight_decay", o.weight_decay},
             {"freeze_step", static_cast<double>(o.freeze_step)},
             {"warmup_exchange", static_cast<double>(o.warmup_exchange)},
             {"scale_group", static_cast<double>(o.scale_group)}};
  add_auto_freeze(s, o.auto_freeze);
  return s;
}

Fingerprint fingerprint(const FlatLayout& layout, const Settings& settings, const std::string& kind,
                        uint32_t version) {
  ONEBIT_CHECK(settings.size() <= Fingerprint::kMaxSettings, kind << ": " << settings.size() << " settings to agree on, room for "
                                                                  << Fingerprint::kMaxSettings);
  Fingerprint f;
  f.kind = fnv1a(kind);
  f.version = version;
  f.layers = layout.num_layers();
  f.params = layout.total();
  f.shapes = kFnv1aOffset;
  for (const auto& l : layout.layers()) f.shapes = fnv1a(&l.size, sizeof l.size, f.shapes);
  for (size_t i = 0; i < settings.size(); ++i) f.settings[i] = settings[i].second;
  return f;
}

void check_fingerprints(std::span<const Fingerprint> all, const Settings& settings, int rank,
                        const std::string& who) {
  const Fingerprint& a = all[0];
  for (size_t r = 1; r < all.size(); ++r) {
    const Fingerprint& b = all[r];
    const std::string at = who + " on rank " + std::to_string(rank) + ": rank " + std::to_string(r);
    ONEBIT_CHECK(b.kind == a.kind, at << " builds a different optimizer than rank 0");
    ONEBIT_CHECK(b.version == a.version, at << " has checkpoint format version " << b.version << ", rank 0 has "
                                            << a.version << " (different onebit builds)");
    ONEBIT_CHECK(b.layers == a.layers && b.params == a.params,
                 at << " has " << b.layers << " layers of " << b.params << " parameters, rank 0 has " << a.layers
                    << " of " << a.params);
    ONEBIT_CHECK(b.shapes == a.shapes, at << " has different layer shapes than rank 0 (same count and total)");
    for (size_t i = 0; i < settings.size(); ++i)
      ONEBIT_CHECK(b.settings[i] == a.settings[i],
                   at << " has " << settings[i].first << " = " << b.settings[i] << ", rank 0 has " << a.settings[i]);
  }
}

void agree_across_ranks(Communicator& comm, const FlatLayout& layout, const Settings& settings,
                        const std::string& who, uint32_t version) {
  if (comm.size() == 1) return;
  const Fingerprint mine = fingerprint(layout, settings, who, version);
  std::vector<Fingerprint> all(static_cast<size_t>(comm.size()));
  comm.allgather(std::as_bytes(std::span(&mine, 1)), std::as_writable_bytes(std::span(all)));
  check_fingerprints(all, settings, comm.rank(), who);
}

}  // namespace onebit

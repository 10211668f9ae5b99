// The table of optimizers (onebit/optimizer_registry.hpp): each entry's options as fields that read
// a user's value into the options struct and write it back, with the doc line users see.
#include "onebit/optimizer_registry.hpp"

#include <charconv>
#include <cmath>
#include <functional>
#include <limits>
#include <sstream>

#include "onebit/error.hpp"
#include "options.hpp"

namespace onebit {
namespace {

template <class... F>
struct Overloaded : F... {
  using F::operator()...;
};
template <class... F>
Overloaded(F...) -> Overloaded<F...>;  // clang 14 does not deduce aggregates yet

// One option of options struct O: where it lives, how a value is read into it and written back.
template <class O>
struct Field {
  const char* key;
  const char* doc;
  std::function<void(O&, const OptionValue&, const std::string& who)> set;
  std::function<std::string(const O&)> show;
};

// The shortest text that reads back to v in its own type (0.999f prints 0.999).
template <class T>
std::string shortest(T v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return {buf, r.ptr};
}

double number_of(const OptionValue& v, const std::string& who) {
  const auto* d = std::get_if<double>(&v);
  ONEBIT_CHECK(d, who << " must be a number, got '" << std::get<std::string>(v) << "'");
  return *d;
}

template <class T>
T count_of(const OptionValue& v, const std::string& who) {
  const double d = number_of(v, who);
  ONEBIT_CHECK(std::isfinite(d) && d == std::floor(d) && d >= static_cast<double>(std::numeric_limits<T>::min()) &&
                   d < static_cast<double>(std::numeric_limits<T>::max()) + 1.0,  // 2^31, 2^63: exact
               who << " must be a whole number, got " << shortest(d));
  return static_cast<T>(d);
}

// A field whose value is reached by `at(o)`: a real number, a count, or a word.
template <class O, class At>
Field<O> real(const char* key, const char* doc, At at) {
  return {key, doc,
          [at](O& o, const OptionValue& v, const std::string& who) {
            at(o) = static_cast<std::remove_reference_t<decltype(at(o))>>(number_of(v, who));
          },
          [at](const O& o) { return shortest(at(o)); }};
}

template <class O, class At>
Field<O> count(const char* key, const char* doc, At at) {
  using T = std::remove_reference_t<decltype(at(std::declval<O&>()))>;
  return {key, doc, [at](O& o, const OptionValue& v, const std::string& who) { at(o) = count_of<T>(v, who); },
          [at](const O& o) { return std::to_string(at(o)); }};
}

// A count that also takes the word "auto" for `auto_value`.
template <class O, class At>
Field<O> count_or_auto(const char* key, const char* doc, At at, int64_t auto_value) {
  using T = std::remove_reference_t<decltype(at(std::declval<O&>()))>;
  return {key, doc,
          [at, auto_value](O& o, const OptionValue& v, const std::string& who) {
            const auto* word = std::get_if<std::string>(&v);
            ONEBIT_CHECK(!word || *word == "auto", who << " must be a whole number or auto, got '" << *word << "'");
            at(o) = word ? static_cast<T>(auto_value) : count_of<T>(v, who);
          },
          [at, auto_value](const O& o) {
            const T t = at(o);
            return t == static_cast<T>(auto_value) ? std::string("auto") : std::to_string(t);
          }};
}

template <class O, class At>
Field<O> precision(const char* key, const char* doc, At at) {
  return {key, doc,
          [at](O& o, const OptionValue& v, const std::string& who) {
            const auto* word = std::get_if<std::string>(&v);
            ONEBIT_CHECK(word, who << " must be fp32, bf16 or fp16, got " << shortest(std::get<double>(v)));
            at(o) = parse_wire_precision(*word);
          },
          [at](const O& o) { return std::string(to_string(at(o))); }};
}

#define ONEBIT_AT(member) [](auto& o) -> auto& { return o.member; }

template <class O>
void add_common(std::vector<Field<O>>& f) {
  f.push_back(real<O>("lr", "learning rate (LR schedulers change it between steps)", ONEBIT_AT(lr)));
  f.push_back(real<O>("beta1", "momentum decay, in [0, 1)", ONEBIT_AT(beta1)));
  f.push_back(real<O>("beta2", "second-moment decay, in [0, 1)", ONEBIT_AT(beta2)));
  f.push_back(real<O>("eps", "added to sqrt(v), > 0", ONEBIT_AT(eps)));
  f.push_back(real<O>("weight_decay", "decoupled weight decay, >= 0", ONEBIT_AT(weight_decay)));
  f.push_back(count<O>("threads", "CPU threads for the kernels on this rank", ONEBIT_AT(threads)));
  f.push_back(precision<O>("warmup_exchange", "the uncompressed gradient exchange: fp32, bf16 or fp16",
                           ONEBIT_AT(warmup_exchange)));
}

template <class O>
void add_freeze(std::vector<Field<O>>& f) {
  f.push_back(count_or_auto<O>("freeze_step", "the last warmup step, or auto: when the second moment has stabilised",
                               ONEBIT_AT(freeze_step), kAutoFreeze));
  f.push_back(count<O>("auto_min_steps", "freeze_step auto: the warmup's floor", ONEBIT_AT(auto_freeze.min_steps)));
  f.push_back(count<O>("auto_max_steps", "freeze_step auto: the warmup's ceiling", ONEBIT_AT(auto_freeze.max_steps)));
  f.push_back(count<O>("auto_window", "freeze_step auto: steps between two measurements", ONEBIT_AT(auto_freeze.window)));
  f.push_back(real<O>("auto_tolerance", "freeze_step auto: the relative change of v that counts as stable",
                      ONEBIT_AT(auto_freeze.tolerance)));
}

constexpr const char* kScaleGroupDoc =
    "elements per compression scale: 0 (one per worker and chunk, the paper's) or a multiple of 64"
    " (docs/algorithm.md §12)";

// LAMB's options, in LambOptions or a struct derived from it.
template <class O>
std::vector<Field<O>> lamb_fields() {
  std::vector<Field<O>> f;
  add_common(f);
  f.push_back(real<O>("max_coeff", "upper clip of the trust ratio ||w|| / ||u||", ONEBIT_AT(max_coeff)));
  f.push_back(real<O>("min_coeff", "lower clip of the trust ratio", ONEBIT_AT(min_coeff)));
  return f;
}

std::vector<Field<LambOptions>> make_fields(const LambOptions*) { return lamb_fields<LambOptions>(); }

std::vector<Field<OnebitLambOptions>> make_fields(const OnebitLambOptions*) {
  using O = OnebitLambOptions;
  std::vector<Field<O>> f = lamb_fields<O>();
  add_freeze(f);
  f.push_back(real<O>("coeff_beta", "decay of the frozen trust-ratio average", ONEBIT_AT(coeff_beta)));
  f.push_back(real<O>("factor_max", "upper clip of the variance-change factor", ONEBIT_AT(factor_max)));
  f.push_back(real<O>("factor_min", "lower clip of the variance-change factor", ONEBIT_AT(factor_min)));
  f.push_back(real<O>("factor_threshold", "the factor moves at most this fraction per step",
                      ONEBIT_AT(factor_threshold)));
  f.push_back(count_or_auto<O>("refresh_interval",
                               "steps after the freeze of the first uncompressed refresh, then doubling (0: none;"
                               " auto: 16 with freeze_step auto, else none)",
                               ONEBIT_AT(refresh_interval), kWithAutoFreeze));
  f.push_back(count_or_auto<O>("track_scales",
                               "1: k follows each layer's gradient RMS; 0: set once (auto: on with freeze_step auto)",
                               ONEBIT_AT(track_scales), kWithAutoFreeze));
  f.push_back(count_or_auto<O>("scale_group", kScaleGroupDoc, ONEBIT_AT(scale_group), kWithAutoFreeze));
  return f;
}

std::vector<Field<OnebitAdamOptions>> make_fields(const OnebitAdamOptions*) {
  using O = OnebitAdamOptions;
  std::vector<Field<O>> f;
  add_common(f);
  add_freeze(f);
  f.push_back(count<O>("scale_group", kScaleGroupDoc, ONEBIT_AT(scale_group)));
  return f;
}

#undef ONEBIT_AT

template <class O>
const std::vector<Field<O>>& fields() {
  static const std::vector<Field<O>> f = make_fields(static_cast<const O*>(nullptr));
  return f;
}

template <class O>
const Field<O>* find_field(std::string_view key) {
  for (const auto& f : fields<O>())
    if (key == f.key) return &f;
  return nullptr;
}

const OptimizerKind kKinds[] = {
    {"lamb", "LAMB: Adam's moments with a layer-wise trust ratio; every step exchanges the gradient", false, true,
     false, LambOptions{}},
    {"onebit-lamb", "1-bit LAMB: LAMB warmup, then a 1-bit compressed momentum exchange with frozen trust ratios", true,
     true, true, OnebitLambOptions{}},
    {"onebit-adam", "1-bit Adam: Adam warmup, then a 1-bit compressed momentum exchange over a frozen variance", true,
     false, false, OnebitAdamOptions{}},
};

}  // namespace

std::vector<OptionInfo> OptimizerKind::options() const {
  return std::visit(
      [](const auto& d) {
        std::vector<OptionInfo> out;
        for (const auto& f : fields<std::decay_t<decltype(d)>>()) out.push_back({f.key, f.doc, f.show(d)});
        return out;
      },
      defaults);
}

bool OptimizerKind::has_option(std::string_view key) const {
  return std::visit(
      [key](const auto& d) { return find_field<std::decay_t<decltype(d)>>(key) != nullptr; },
      defaults);
}

AnyOptions OptimizerKind::parse(const OptionValues& values) const {
  return std::visit(
      [&](const auto& d) -> AnyOptions {
        using O = std::decay_t<decltype(d)>;
        O o = d;
        for (const auto& [key, value] : values) {
          const Field<O>* field = find_field<O>(key);
          if (!field) {
            std::string known;
            for (const auto& f : fields<O>()) known += (known.empty() ? "" : ", ") + std::string(f.key);
            throw Error(std::string(name) + ": unknown option '" + key + "' (its options: " + known + ")");
          }
          field->set(o, value, std::string(name) + ": " + key);
        }
        validate(o, name);
        return o;
      },
      defaults);
}

std::span<const OptimizerKind> optimizer_kinds() { return kKinds; }

const OptimizerKind* find_optimizer_kind(std::string_view name) {
  for (const auto& k : kKinds)
    if (name == k.name) return &k;
  return nullptr;
}

const OptimizerKind& optimizer_kind(std::string_view name) {
  if (const OptimizerKind* k = find_optimizer_kind(name)) return *k;
  throw Error("onebit: no optimizer named '" + std::string(name) + "' (there are " + optimizer_names() + ")");
}

const OptimizerKind& optimizer_kind(const AnyOptions& o) { return kKinds[o.index()]; }

std::string optimizer_names() {
  std::string s;
  for (const auto& k : kKinds) s += (s.empty() ? "" : ", ") + std::string(k.name);
  return s;
}

std::unique_ptr<Optimizer> make_optimizer(const FlatLayout& layout, Communicator& comm, const AnyOptions& options) {
  return std::visit(
      Overloaded{
          [&](const LambOptions& o) -> std::unique_ptr<Optimizer> { return std::make_unique<Lamb>(layout, comm, o); },
          [&](const OnebitLambOptions& o) -> std::unique_ptr<Optimizer> {
            return std::make_unique<OnebitLamb>(layout, comm, o);
          },
          [&](const OnebitAdamOptions& o) -> std::unique_ptr<Optimizer> {
            return std::make_unique<OnebitAdam>(layout, comm, o);
          },
      },
      options);
}

float lr_of(const AnyOptions& options) {
  return std::visit([](const auto& o) { return o.lr; }, options);
}

}  // namespace onebit

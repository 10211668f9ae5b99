// Every optimizer onebit builds, in one table: its name, its options with their defaults and docs,
// its constructor, and what it can do. The command line, the Python module, the torch bridge, the
// trainer and the benchmarks read this table instead of listing the optimizers themselves. Adding an
// optimizer means its math, its kernels, its entry in optim/registry.cpp (and its CUDA twin's line
// in optim/cuda/cuda_registry.cpp), and its tests.
#pragma once
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "onebit/optimizers.hpp"

namespace onebit {

// The options of any registered optimizer; the alternative says which optimizer it is.
using AnyOptions = std::variant<LambOptions, OnebitLambOptions, OnebitAdamOptions>;

// An option as users write it: a number (integers too) or a word ("auto", "bf16").
using OptionValue = std::variant<double, std::string>;
using OptionValues = std::map<std::string, OptionValue, std::less<>>;

struct OptionInfo {
  std::string key;       // as the Python classes and OptionValues spell it
  std::string doc;       // one line
  std::string default_;  // the default, as it would be written back
};

struct OptimizerKind {
  const char* name;     // "onebit-lamb": the CLI's --optimizer, the Python class's kind, checkpoints
  const char* summary;  // one line, for `onebit optimizers` and --help
  // What it can do.
  bool compresses;     // a warmup, then a 1-bit compressed momentum exchange
  bool trust_ratio;    // LAMB's layer-wise trust ratio scales its steps (so it takes LAMB's lr)
  bool momentum_mask;  // Optimizer::set_momentum_mask (docs/algorithm.md §4's mask of entries without gradient)
  AnyOptions defaults;

  std::vector<OptionInfo> options() const;
  bool has_option(std::string_view key) const;
  // `values` over the defaults. An unknown key, a word where a number belongs, a fraction for a
  // count, or a value the optimizer refuses (validate) is an error naming the optimizer and key.
  AnyOptions parse(const OptionValues& values) const;
};

// The registered optimizers, in a stable order (lamb first).
std::span<const OptimizerKind> optimizer_kinds();
// The entry named `name`; an error listing the names otherwise.
const OptimizerKind& optimizer_kind(std::string_view name);
// The entry named `name`, or null.
const OptimizerKind* find_optimizer_kind(std::string_view name);
// The entry whose options `o` holds.
const OptimizerKind& optimizer_kind(const AnyOptions& o);
// "lamb, onebit-lamb, onebit-adam" (for messages and --help).
std::string optimizer_names();

// The CPU optimizer for `options` on `layout` over `comm`.
std::unique_ptr<Optimizer> make_optimizer(const FlatLayout& layout, Communicator& comm, const AnyOptions& options);

// The learning rate in `options` (every optimizer has one).
float lr_of(const AnyOptions& options);

}  // namespace onebit

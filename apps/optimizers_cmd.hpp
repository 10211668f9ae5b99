// `onebit optimizers`: the registry (onebit/optimizer_registry.hpp) as users read it, each
// optimizer with what it can do and its options, defaults and docs.
#pragma once
#include <CLI/CLI.hpp>

namespace onebit::bench {

struct OptimizersOptions {
  bool json = false;
};

CLI::App* add_optimizers_command(CLI::App& app, OptimizersOptions& o);
int run_optimizers(const OptimizersOptions& o);

}  // namespace onebit::bench

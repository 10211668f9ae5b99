// `onebit train` and `onebit compare` on the command line (compiled into the tool only when
// onebit_train, which needs libtorch, is built; apps/main.cpp adds them when ONEBIT_HAVE_TORCH is defined).
#pragma once
#include "train/options.hpp"

namespace CLI {
class App;
}

namespace onebit::train {

CLI::App* add_train_command(CLI::App& app, TrainOptions& o);
CLI::App* add_compare_command(CLI::App& app, CompareOptions& o);

// Run the parsed command; they throw onebit::Error on failure and return the exit code otherwise.
int run_train(const TrainOptions& o);
int run_compare(const CompareOptions& o);

}  // namespace onebit::train

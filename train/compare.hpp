// `onebit compare`: LAMB and 1-bit LAMB trained on identical data, seed and schedule, each a full
// `train` run; writes compare.json, loss_vs_samples.png and prints a table.
#pragma once
#include <nlohmann/json.hpp>

#include "train/options.hpp"

namespace onebit::train {

// Returns 0, or 1 when the runs finished but the picture could not be drawn (the message says why).
int compare(const CompareOptions& o);

// compare.json from the two runs' summaries (exposed for tests).
nlohmann::json compare_json(const nlohmann::json& lamb, const nlohmann::json& onebit, double lamb_wall,
                            double onebit_wall, const TrainOptions& settings);

}  // namespace onebit::train

// Checkpoints of a data-parallel run: the weights (once), every rank's complete optimizer state
// (its error buffers differ per rank) and meta.json (step, totals, settings). Written to
// OUT/checkpoints/step_NNNNNNNN/; OUT/checkpoints/latest names the newest complete one.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "onebit/communicator.hpp"
#include "onebit/torch_optimizers.hpp"

namespace onebit::train {

inline constexpr int kKeepCheckpoints = 2;  // older ones are deleted once a newer one is complete

// Collective: every rank writes its part, then rank 0 marks the checkpoint complete.
void save_checkpoint(const std::string& out_dir, int64_t step, TorchOptimizer& opt, const nlohmann::json& meta,
                     Communicator& comm);

// The checkpoint directory that `path` means: a run directory (its latest checkpoint) or a
// checkpoint directory itself.
std::string find_checkpoint(const std::string& path);

// Reads meta.json of a checkpoint directory.
nlohmann::json read_checkpoint_meta(const std::string& dir);

// Loads the weights and this rank's optimizer state into `opt`. A checkpoint of saved_world workers
// other than this run's is loaded (from rank 0's file) only with OnResize::kResetErrors. Returns
// the warning of onebit::load_state ("" when nothing was reset).
std::string load_checkpoint(const std::string& dir, TorchOptimizer& opt, int rank, int saved_world, OnResize on_resize);

}  // namespace onebit::train

// `onebit train`: masked-LM pre-training of a BERT encoder with LAMB, 1-bit LAMB or 1-bit Adam, on one
// process, on workers it starts itself, or as one rank of a job started by mpirun/srun/torchrun.
#pragma once
#include <optional>

#include <nlohmann/json.hpp>

#include "onebit/freeze_schedule.hpp"
#include "train/distributed.hpp"
#include "train/options.hpp"

namespace onebit::train {

// Every "0 / -1: default" field filled in from the preset and the steps (the settings a run records).
TrainOptions resolve_options(const TrainOptions& o);
// Throws onebit::Error naming the first bad setting.
void validate_options(const TrainOptions& o);
nlohmann::json options_json(const TrainOptions& o);
// The bounds of --freeze-step auto for this run: kAutoFreezeFloor to kAutoFreezeCeilingFraction of --steps.
AutoFreezeOptions auto_freeze_options(const TrainOptions& o);

// Learning rate at `step` (1-based): linear warmup to `peak` over `warmup` steps, then linear decay
// from `peak` at step warmup+1 to peak/(steps-warmup) at the last step (which still learns).
double lr_at(int64_t step, double peak, int64_t warmup, int64_t steps);

// The whole command: joins the job this process was started into, or trains in this process
// (--workers 1), or prepares the corpus once and launches --workers local processes.
void train(const TrainOptions& o);

// One rank of a job; job empty: a world of one in this process.
void train_rank(const TrainOptions& o, const std::optional<JobInfo>& job);

}  // namespace onebit::train

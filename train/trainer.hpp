// `onebit train`: masked-LM pre-training of a BERT encoder with LAMB, 1-bit LAMB or 1-bit Adam, on one
// process, on workers it starts itself, or as one rank of a job started by mpirun/srun/torchrun.
#pragma once
#include <optional>

#include "train/distributed.hpp"
#include "train/options.hpp"

namespace onebit::train {

// The whole command: joins the job this process was started into, or trains in this process
// (--workers 1), or prepares the corpus once and launches --workers local processes.
void train(const TrainOptions& o);

// One rank of a job; job empty: a world of one in this process.
void train_rank(const TrainOptions& o, const std::optional<JobInfo>& job);

}  // namespace onebit::train

// `onebit plan --from-run DIR`: the whole run of `onebit train`, replayed on another link. The run
// gives what the model cannot know (compute per step, the stage of every step); the alpha-beta
// model of plan_model.hpp gives each step's exchange on the link asked for.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "plan_model.hpp"

namespace onebit::plan {

// What a run directory says (summary.json and metrics.jsonl of `onebit train`).
struct RunProfile {
  std::string dir, optimizer, warmup_exchange;  // warmup_exchange: fp32 | bf16 | fp16
  double params = 0;                            // elements exchanged per step
  int workers = 0;
  int64_t batch = 0;
  std::vector<std::string> stages;  // per step: warmup | refresh | compression (LAMB: its exchange, fp32)
  std::vector<double> compute;      // per step: seconds without communication
  double measured_seconds = 0;      // the run's own training seconds (compute + communication)
  double measured_bytes = 0;        // the run's bytes sent per worker
};
// Errors name the directory and what is missing.
RunProfile load_run(const std::string& dir);

// The run replayed on `link` (bandwidth, latency, calibration, shared cores; the run's parameters
// and workers) as LAMB with an fp32 exchange and as 1-bit LAMB. A 1-bit run keeps its own stages
// and warmup precision; a LAMB run becomes 1-bit LAMB as `onebit train` runs it by default, a bf16
// warmup of `warmup_fraction` of the steps (< 0: the automatic freeze's ceiling, 40%), then
// compression steps (refresh steps, a handful, are not modelled). LAMB's compute per step is a LAMB run's own, or a 1-bit run's
// warmup steps' mean (the same forward, backward and update); 1-bit LAMB's is a 1-bit run's own,
// or a LAMB run's.
struct RunPrediction {
  RunProfile run;
  Input link;
  double warmup_fraction = 0;
  std::string warmup_exchange;  // 1-bit LAMB's
  double lamb_seconds = 0, onebit_seconds = 0;  // training seconds of the whole run
  double lamb_bytes = 0, onebit_bytes = 0;      // per worker, whole run
  double speedup = 0;                           // lamb_seconds / onebit_seconds
  double volume_ratio = 0;                      // lamb_bytes / onebit_bytes
  nlohmann::json to_json() const;
};
RunPrediction predict_run(const RunProfile& run, Input link, double warmup_fraction);

}  // namespace onebit::plan

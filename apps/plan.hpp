// `onebit plan`: is 1-bit LAMB worth it on this network? Predictions from the calibrated model.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

namespace onebit::plan {

struct PlanOptions {
  double params = 0;
  int workers = 0;
  std::string bandwidth, latency, calibration;
  std::string from_run;  // a run directory of `onebit train`: replay its whole run on the link
  double step_compute = 0;
  double freeze_fraction = -1;  // < 0: kDefaultFreezeFraction
  int shared_cores = 0;         // > 0: all workers share one machine of this many cores
  bool json = false;
};

CLI::App* add_plan_command(CLI::App& app, PlanOptions& o);
int run_plan(const PlanOptions& o);

}  // namespace onebit::plan

// `onebit plan`: prints, for LAMB (fp32 and fp16 allreduce) and 1-bit LAMB, the bytes and seconds of
// communication per step, the whole-run volume reduction and the end-to-end speedup.
#include "plan.hpp"

#include <iostream>

#include "bench_common.hpp"
#include "onebit/error.hpp"
#include "plan_model.hpp"
#include "plan_run.hpp"

namespace onebit::plan {

CLI::App* add_plan_command(CLI::App& app, PlanOptions& o) {
  CLI::App* c = app.add_subcommand("plan", "predict communication and speedup of 1-bit LAMB on a network");
  CLI::Option* params = c->add_option("--params", o.params, "model parameters (e.g. 335141888 for BERT-Large)")
                            ->check(bench::positive_number(), "NUMBER > 0");
  CLI::Option* workers = c->add_option("--workers", o.workers, "data-parallel workers")->check(CLI::Range(1, 1 << 20));
  CLI::Option* from_run =
      c->add_option("--from-run", o.from_run,
                    "instead of --params/--workers/--step-compute: a run directory of `onebit train` (or one of the "
                    "two `onebit compare` writes), whose parameters, workers, compute per step and stages are "
                    "replayed on --bandwidth as LAMB and as 1-bit LAMB (e.g. onebit plan --from-run out/train "
                    "--bandwidth 100mbit --calibration cal.json)")
          ->excludes(params)
          ->excludes(workers);
  c->add_option("--bandwidth", o.bandwidth, "each worker's link: 1gbit, 100mbit, 10GB/s, or bytes/s")->required();
  c->add_option("--latency", o.latency, "per-message latency, e.g. 50us (default: the calibration's)");
  c->add_option("--step-compute", o.step_compute, "seconds of compute per step without communication (default 0)")
      ->check(bench::non_negative_number(), "SECONDS >= 0")
      ->excludes(from_run);
  c->add_option("--freeze-fraction", o.freeze_fraction,
                "share of steps in warmup (default " + std::to_string(kDefaultFreezeFraction) +
                    "; with --from-run of a LAMB run, the automatic freeze's ceiling, 0.4 with its bf16 warmup)")
      ->check(bench::number_in(0, 1), "FRACTION");
  c->add_option("--calibration", o.calibration, "calibration file written by `onebit bench allreduce --calibration`");
  c->add_option("--shared-cores", o.shared_cores,
                "the workers all run on one machine with this many cores (as `onebit lan` does); default: one "
                "machine each")
      ->check(CLI::Range(1, 1 << 20));
  c->add_flag("--json", o.json, "print JSON instead of a table");
  c->footer(bench::example("onebit plan --params 335141888 --workers 256 --bandwidth 10gbit --step-compute 0.4"));
  return c;
}

namespace {
int run_from_run(const PlanOptions& o, const Input& link) {
  const RunProfile run = load_run(o.from_run);
  const RunPrediction p = predict_run(run, link, o.freeze_fraction);
  if (o.json) {
    std::cout << p.to_json().dump(2) << "\n";
    return 0;
  }
  using bench::fixed;
  using bench::human_bytes;
  std::cout << "onebit plan --from-run " << run.dir << ": " << run.optimizer << ", " << fixed(run.params / 1e6, 1)
            << "M parameters, " << run.workers << " workers, " << run.stages.size() << " steps (measured "
            << fixed(run.measured_seconds, 1) << " s of training)\n"
            << "on " << fixed(link.bandwidth * 8 / 1e9, 3) << " Gbit/s links; calibration: "
            << (link.cal.calibrated ? link.cal.source : "none; " + link.cal.source) << "\n\n";
  std::vector<std::vector<std::string>> rows = {{"whole run", "train seconds", "bytes/worker"}};
  rows.push_back({"LAMB, fp32 exchange", fixed(p.lamb_seconds, 1), human_bytes(p.lamb_bytes)});
  rows.push_back({"1-bit LAMB, " + p.warmup_exchange + " warmup " + fixed(100 * p.warmup_fraction, 0) + "%",
                  fixed(p.onebit_seconds, 1), human_bytes(p.onebit_bytes)});
  bench::print_table(std::cout, rows);
  std::cout << "\n  speedup " << fixed(p.speedup, 2) << "x, " << fixed(p.volume_ratio, 2) << "x fewer bytes\n";
  return 0;
}
}  // namespace

int run_plan(const PlanOptions& o) {
  ONEBIT_CHECK(!o.from_run.empty() || (o.params > 0 && o.workers >= 1),
               "onebit plan: give --params and --workers, or --from-run DIR");
  Input in;
  in.params = o.params;
  in.workers = o.workers;
  in.bandwidth = parse_bandwidth(o.bandwidth);
  if (!o.latency.empty()) in.latency = parse_duration(o.latency);
  in.step_compute = o.step_compute;
  if (o.freeze_fraction >= 0) in.freeze_fraction = o.freeze_fraction;
  in.shared_cores = o.shared_cores;
  if (!o.calibration.empty()) in.cal = load_calibration(o.calibration);
  if (!o.from_run.empty()) return run_from_run(o, in);
  const Plan p = make_plan(in);
  if (o.json) {
    std::cout << p.to_json().dump(2) << "\n";
    return 0;
  }
  using bench::fixed;
  using bench::human_bytes;
  std::cout << "onebit plan: " << fixed(in.params / 1e6, 1) << "M parameters, " << in.workers << " workers, "
            << fixed(in.bandwidth * 8 / 1e9, 3) << " Gbit/s links, "
            << fixed((in.latency >= 0 ? in.latency : in.cal.alpha) * 1e6, 1) << " us per message, "
            << fixed(in.step_compute, 3) << " s compute per step, warmup " << fixed(100 * in.freeze_fraction, 1)
            << "% of steps\n";
  std::cout << "calibration: " << (in.cal.calibrated ? in.cal.source : "none; " + in.cal.source) << "\n\n";
  std::vector<std::vector<std::string>> rows = {{"exchange", "bytes/step/rank", "comm s/step", "step s"}};
  for (const Exchange* e : {&p.lamb_fp32, &p.lamb_fp16, &p.onebit})
    rows.push_back({e->name, human_bytes(e->bytes), fixed(e->seconds, 4), fixed(in.step_compute + e->seconds, 4)});
  bench::print_table(std::cout, rows);
  std::cout << "\nwhole run (1-bit LAMB's warmup exchanges gradients in the baseline's precision):\n"
            << "  volume  " << fixed(p.volume_ratio_vs_fp16, 2) << "x less than LAMB with fp16 allreduce, "
            << fixed(p.volume_ratio_vs_fp32, 2) << "x less than with fp32\n"
            << "  speedup " << fixed(p.speedup_vs_fp16, 2) << "x over LAMB with fp16 allreduce, "
            << fixed(p.speedup_vs_fp32, 2) << "x over fp32\n";
  return 0;
}

}  // namespace onebit::plan

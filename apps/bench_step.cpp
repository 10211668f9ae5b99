// `onebit bench step`: one optimizer step on a BERT-shaped flat layout at world size 1, against
// memcpy of the parameters in the same run, with the bytes per parameter each step has to move.
#include <CLI/CLI.hpp>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>

#include "bench_common.hpp"
#include "onebit/error.hpp"
#include "onebit/flat_layout.hpp"
#include "onebit/kernels.hpp"
#include "onebit/local_comm.hpp"
#include "onebit/optimizer_registry.hpp"

namespace onebit::bench {
namespace {

struct Pass {
  const char* name;
  double bytes_per_param;  // read + written, fp32 = 4, a sign bit = 1/8
};

// Bytes one step moves per parameter at world size 1, pass by pass. These are the floor the step
// is measured against: at memcpy bandwidth a step would take (sum / 8) memcpys of the parameters.
//
//   LAMB, and the warmup stage of 1-bit LAMB and 1-bit Adam                              44
//     lamb_norms          reads g, m, v, w (writes nothing)                               16
//     lamb_update         reads g, m, v, w; writes m, v, w                                28
//   1-bit LAMB, compression stage                                                     48.875
//   (the momentum is the last exchange's sign bits and chunk scales: read, never written)
//     compress_momentum   reads g, momentum bits, prev error; writes next error, bits  12.25
//     server_average      reads+writes server error (the whole buffer at P = 1);
//                         reads worker bits, writes server bits                         8.25
//     onebit_lamb_norms   reads bits, previous bits, v, v_fresh, w; writes v_fresh     16.25
//     frozen_update       reads bits, v, w; writes w                                   12.125
//   1-bit Adam, compression stage                                                     32.625
//     compress_momentum   as above                                                     12.25
//     server_average      as above                                                      8.25
//     frozen_update       as above                                                     12.125
//
// The all-to-all and all-gather of the bits (1/8 byte each at P = 1) and per-layer scalars are
// left out: they are copies inside the communicator, not passes of the optimizer.
const std::vector<Pass> kLambPasses = {{"lamb_norms", 16}, {"lamb_update", 28}};
const std::vector<Pass> kOnebitLambPasses = {
    {"compress_momentum", 12.25}, {"server_average", 8.25}, {"onebit_lamb_norms", 16.25}, {"frozen_update", 12.125}};
const std::vector<Pass> kOnebitAdamPasses = {
    {"compress_momentum", 12.25}, {"server_average", 8.25}, {"frozen_update", 12.125}};

// The model above, per optimizer name; an optimizer without a line here is an error.
const std::vector<Pass>& passes_of(const OptimizerKind& kind, bool compression) {
  static const std::map<std::string, const std::vector<Pass>*, std::less<>> model = {
      {"onebit-lamb", &kOnebitLambPasses}, {"onebit-adam", &kOnebitAdamPasses}};
  if (!compression) return kLambPasses;
  const auto it = model.find(kind.name);
  ONEBIT_CHECK(it != model.end(), "bench step: no traffic model for " << kind.name << "'s compression step");
  return *it->second;
}

// Warmup stage: a freeze step that never comes. Compression stage: freeze after the first step.
std::unique_ptr<Optimizer> make_step_optimizer(const StepOptions& o, const OptimizerKind& kind, const FlatLayout& layout,
                                               Communicator& comm) {
  OptionValues v{{"threads", static_cast<double>(o.threads)}};
  if (kind.compresses)
    v["freeze_step"] = o.stage == "compression" ? 1.0 : 1e15;  // never, in practice
  return make_optimizer(layout, comm, kind.parse(v));
}

}  // namespace

CLI::App* add_step_command(CLI::App& bench, StepOptions& o) {
  CLI::App* c = bench.add_subcommand("step", "time one optimizer step against memcpy of the parameters");
  c->add_option("--optimizer", o.optimizer, "one of: " + optimizer_names())
      ->required()
      ->check(CLI::IsMember(optimizer_choices()));
  c->add_option("--params", o.params, "target parameter count of the BERT-shaped layout")
      ->check(positive_integer, "POSITIVE")
      ->capture_default_str();
  c->add_option("--stage", o.stage, "warmup (fp32 exchange) or compression (1-bit optimizers only)")
      ->check(CLI::IsMember({"warmup", "compression"}))
      ->capture_default_str();
  c->add_option("--threads", o.threads, "kernel threads")->check(CLI::Range(1, 1024))->capture_default_str();
  c->add_option("--repeats", o.repeats, "timed steps (median reported)")->check(CLI::Range(1, 100000))->capture_default_str();
  c->add_flag("--json", o.json, "print JSON instead of a table");
  c->add_option("--out", o.out, "also write the JSON to this file");
  c->footer(example("onebit bench step --optimizer onebit-lamb --params 10000000 --json"));
  return c;
}

int run_step(const StepOptions& o) {
  const FlatLayout layout = FlatLayout::bert_like(o.params);
  const size_t n = layout.total();
  const OptimizerKind& kind = optimizer_kind(o.optimizer);
  const bool compression = o.stage == "compression" && kind.compresses;
  const std::string stage = kind.compresses ? o.stage : "none";  // LAMB has no stages
  const std::vector<Pass>& passes = passes_of(kind, compression);
  double bytes_per_param = 0;
  for (const Pass& p : passes) bytes_per_param += p.bytes_per_param;

  std::vector<double> t;
  // A one-rank world needs no engine; run_local(1) gives the optimizers their Communicator.
  run_local(1, [&](Communicator& comm) {
    std::unique_ptr<Optimizer> opt = make_step_optimizer(o, kind, layout, comm);
    AlignedVector<float> w(n), g(n), dst(n, 0.0f);
    fill_random(w, 1, 0.05f);
    fill_random(g, 2, 1e-3f);
    auto step = [&] {
      if (!opt->step(w, g)) throw Error("bench step: " + opt->name() + " skipped a step (non-finite gradient)");
    };
    // The freeze step (freeze_step = 1) is the untimed warmup step that enters the compression
    // stage; time_medians' own untimed first call then absorbs the stage's one-off set-up.
    if (compression) step();
    if (compression && opt->in_warmup()) throw Error("bench step: " + opt->name() + " is still in warmup");
    auto copy = [&] { std::memcpy(dst.data(), w.data(), n * sizeof(float)); };
    t = time_medians(o.repeats, {step, copy});
  });

  const double nd = static_cast<double>(n);
  nlohmann::json pass_json = nlohmann::json::array();
  for (const Pass& p : passes) pass_json.push_back({{"pass", p.name}, {"bytes_per_param", p.bytes_per_param}});
  nlohmann::json j = {
      {"bench", "step"},
      {"optimizer", o.optimizer},
      {"stage", stage},
      {"params_requested", o.params},
      {"params", n},
      {"layers", layout.num_layers()},
      {"threads", o.threads},
      {"repeats", o.repeats},
      {"isa", kernels::isa_name(kernels::active_isa())},
      {"seconds", {{"step", t[0]}, {"memcpy", t[1]}}},
      {"bytes_per_param", {{"step", bytes_per_param}, {"memcpy", 8}}},
      {"passes", pass_json},
      {"gb_per_s", {{"step", bytes_per_param * nd / t[0] / 1e9}, {"memcpy", 8 * nd / t[1] / 1e9}}},
      {"time_ratio", t[0] / t[1]},
      // What time_ratio would be if the step moved its bytes at memcpy's bandwidth.
      {"floor_time_ratio", bytes_per_param / 8},
      {"machine", machine_json()},
  };
  emit(j, o.json, o.out, [&](std::ostream& os) {
    os << o.optimizer << " step, stage " << stage << ", " << n << " params in " << layout.num_layers()
       << " layers (bert_like), " << o.threads << " thread(s), isa " << j["isa"].get<std::string>()
       << ", median of " << o.repeats << "\n";
    print_table(os, {{"", "seconds", "bytes/param", "GB/s"},
                     {"step", fixed(t[0], 6), fixed(bytes_per_param, 3), fixed(bytes_per_param * nd / t[0] / 1e9, 2)},
                     {"memcpy params", fixed(t[1], 6), "8", fixed(8 * nd / t[1] / 1e9, 2)}});
    os << "time_ratio (step / memcpy): " << fixed(t[0] / t[1], 3) << "   (at memcpy bandwidth it would be "
       << fixed(bytes_per_param / 8, 3) << ")\n";
    os << "machine: " << j["machine"]["cpu"].get<std::string>() << ", " << j["machine"]["cores"].get<int>()
       << " cores\n";
  });
  return 0;
}

}  // namespace onebit::bench

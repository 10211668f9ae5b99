// `onebit compare` (see compare.hpp). The picture is drawn by the plot script compiled into this
// binary (train/plot_compare.py), run with a Python that has matplotlib.
#include "train/compare.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "lan/lan.hpp"
#include "onebit/error.hpp"
#include "proc/proc.hpp"
#include "train/corpus.hpp"
#include "train/distributed.hpp"
#include "train/metrics.hpp"
#include "train/plot_script.hpp"  // generated: kPlotScript
#include "train/trainer.hpp"

namespace fs = std::filesystem;

namespace onebit::train {

using proc::human_bytes;
namespace {

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  ONEBIT_CHECK(in.good(), "onebit compare: " << p << " is missing");
  return nlohmann::json::parse(in);
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

void print_table(const nlohmann::json& c) {
  const auto& a = c["lamb"];
  const auto& b = c["onebit_lamb"];
  const auto& r = c["ratios"];
  const auto& s = c["settings"];
  std::cout << "\nonebit compare: " << s["model"].get<std::string>() << " BERT, " << s["workers"] << " workers ("
            << s["backend"].get<std::string>() << "), " << s["steps"] << " steps x " << s["batch"]
            << " sequences; 1-bit LAMB compresses after step " << s["freeze_step"] << " (warmup exchange "
            << s["warmup_exchange"].get<std::string>() << ")\n";
  auto row = [](const std::string& name, const std::string& x, const std::string& y, const std::string& z) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "  %-24s %14s %14s   %s\n", name.c_str(), x.c_str(), y.c_str(), z.c_str());
    std::cout << buf;
  };
  row("", "LAMB", "1-bit LAMB", "ratio");
  row("final held-out loss", fmt("%.4f", a["heldout_loss"]), fmt("%.4f", b["heldout_loss"]),
      fmt("%.4f", r["heldout_loss"]) + " (1-bit / LAMB)");
  row("bytes sent per worker", human_bytes(a["bytes_sent"]), human_bytes(b["bytes_sent"]),
      fmt("%.2fx fewer", r["bytes_sent"]) +
          (s["warmup_exchange"] == "fp32" ? "" : fmt(" (%.2fx against a 16-bit LAMB)", r["bytes_sent_vs_lamb_16bit"])));
  row("wall seconds", fmt("%.1f", a["wall_seconds"]), fmt("%.1f", b["wall_seconds"]),
      fmt("%.2fx", r["wall_seconds"]) + " (LAMB / 1-bit)");
  row("training samples/s", fmt("%.1f", a["samples_per_second"]), fmt("%.1f", b["samples_per_second"]),
      fmt("%.2fx", r["samples_per_second"]) + " (1-bit / LAMB)");
  std::cout << "  loss within 1%: " << (c["checks"]["heldout_loss_within_1_percent"].get<bool>() ? "yes" : "NO")
            << ", bytes at least 4x fewer: " << (c["checks"]["bytes_at_least_4x_fewer"].get<bool>() ? "yes" : "NO")
            << "\n";
}

// One training run: started by `train` itself on this machine's loopback, or with --rate as one
// `onebit train` worker per namespace of a freshly built shaped network, torn down afterwards.
void run_training(const TrainOptions& o, const CompareOptions& in) {
  if (in.rate.empty()) return train(o);
  std::vector<std::string> command{proc::self_path(), "train"};
  const auto args = to_args(o);
  command.insert(command.end(), args.begin(), args.end());
  const int status = lan::run_in_network(o.workers, lan::make_shape(in.rate, in.delay), command,
                                         std::chrono::milliseconds(static_cast<int64_t>(in.run_timeout * 1000)),
                                         "compare --rate (" + o.optimizer + ")");
  ONEBIT_CHECK(status == 0, "onebit compare --rate: the " << o.optimizer << " run failed (exit status " << status
                                                          << (status == 124 ? ", --run-timeout" : "") << ")");
}

}  // namespace

nlohmann::json compare_json(const nlohmann::json& lamb, const nlohmann::json& onebit, double lamb_wall,
                            double onebit_wall, const TrainOptions& s) {
  auto entry = [](const nlohmann::json& sum, double wall, const std::string& dir) {
    return nlohmann::json{{"dir", dir},
                          {"heldout_loss", sum.at("final_heldout_loss")},
                          {"train_loss", sum.at("final_train_loss")},
                          {"bytes_sent", sum.at("bytes_sent")},
                          {"comm_seconds", sum.at("totals").at("comm_seconds")},
                          {"compute_seconds", sum.at("totals").at("compute_seconds")},
                          {"wall_seconds", wall},
                          {"samples_per_second", sum.at("samples_per_second")}};
  };
  const int64_t freeze = onebit.value("freeze_step", nlohmann::json(s.freeze_step)).get<int64_t>();
  nlohmann::json c;
  c["lamb"] = entry(lamb, lamb_wall, "lamb");
  c["onebit_lamb"] = entry(onebit, onebit_wall, "onebit-lamb");
  const double la = c["lamb"]["heldout_loss"], lb = c["onebit_lamb"]["heldout_loss"];
  const double ba = c["lamb"]["bytes_sent"], bb = c["onebit_lamb"]["bytes_sent"];
  // LAMB's exchange is its gradient allreduce at every step, so with a 16-bit exchange it would send
  // half its fp32 bytes (the few bytes of loss averages, halved too, make this ratio a slight
  // under-estimate).
  c["ratios"] = {{"heldout_loss", lb / la},
                 {"bytes_sent", bb > 0 ? ba / bb : 0.0},
                 {"bytes_sent_vs_lamb_16bit", bb > 0 ? ba / 2 / bb : 0.0},
                 {"wall_seconds", lamb_wall / onebit_wall},
                 {"samples_per_second", onebit.at("samples_per_second").get<double>() /
                                            lamb.at("samples_per_second").get<double>()}};
  // The bars of the convergence work: within 1% of LAMB's held-out loss (or better), 4x fewer bytes.
  c["checks"] = {{"heldout_loss_within_1_percent", lb / la - 1 <= 0.01},
                 {"bytes_at_least_4x_fewer", bb > 0 && ba / bb >= 4.0}};
  c["settings"] = {{"model", s.model}, {"workers", s.workers}, {"backend", s.backend}, {"device", s.device},
                   {"steps", s.steps}, {"batch", s.batch}, {"seq", s.seq}, {"lr", s.lr},
                   {"warmup_steps", s.warmup_steps}, {"freeze_step", freeze},
                   {"warmup_exchange", s.warmup_exchange},
                   {"freeze_rule", s.freeze_step == 0 ? "auto" : "given"},
                   {"freeze_samples", freeze * s.batch}, {"seed", s.seed},
                   {"parameters", lamb.at("parameters")}, {"eval_samples", lamb.at("heldout_sequences_evaluated")}};
  return c;
}

int compare(const CompareOptions& in) {
  ONEBIT_CHECK(!detect_job(), "onebit compare starts its own workers; run it outside mpirun/srun and without RANK set");
  TrainOptions base = resolve_options(in.base);
  base.resume.clear();
  if (!in.rate.empty()) {
    lan::make_shape(in.rate, in.delay);  // a bad --rate fails before any training
    lan::require_root("compare --rate");
    // Every namespace's worker shares this machine's cores, though each looks like a machine of its own.
    if (base.threads == 0)
      base.threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / base.workers);
  }
  validate_options(base);
  fs::create_directories(in.out);
  // The tokenizer is learned (or loaded) once, before either run is timed.
  prepare_corpus(CorpusOptions{base.data, base.vocab, base.heldout, base.cache_dir, true});

  nlohmann::json summaries[2];
  double walls[2];
  const char* names[2] = {"lamb", "onebit-lamb"};
  for (int i = 0; i < 2; ++i) {
    TrainOptions o = base;
    o.optimizer = names[i];
    if (i == 0) o.warmup_exchange = "fp32";  // the baseline: LAMB as it is run, with an fp32 allreduce
    o.out = (fs::path(in.out) / names[i]).string();
    std::cerr << "onebit compare: training with " << names[i] << " -> " << o.out << std::endl;
    const auto t0 = std::chrono::steady_clock::now();
    run_training(o, in);
    walls[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    summaries[i] = read_json(fs::path(o.out) / "summary.json");
  }
  nlohmann::json c = compare_json(summaries[0], summaries[1], walls[0], walls[1], base);
  c["settings"]["network"] = in.rate.empty() ? nlohmann::json("loopback, no shaping")
                                             : nlohmann::json{{"rate", in.rate}, {"delay", in.delay},
                                                              {"shaping", "onebit lan: one namespace per worker, "
                                                                          "tc tbf on each veth, both directions"}};
  std::ofstream(fs::path(in.out) / "compare.json") << c.dump(2) << "\n";
  print_table(c);

  const fs::path script = fs::path(in.out) / "plot_compare.py";
  std::ofstream(script) << kPlotScript;
  std::string python = in.python;
  if (python.empty()) python = ::access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
  std::string failure;
  try {
    proc::run_tool({python, script.string(), in.out}, python, std::chrono::seconds(120));
  } catch (const Error& e) {
    failure = e.what();
  }
  const fs::path png = fs::path(in.out) / "loss_vs_samples.png";
  if (!failure.empty() || !fs::exists(png)) {
    std::cerr << "onebit compare: the picture was not drawn: " << (failure.empty() ? "no file written" : failure)
              << " (needs matplotlib: apt-get install python3-matplotlib, or --python)\n";
    return 1;
  }
  std::cout << "  picture: " << png.string() << "\n  results: " << (fs::path(in.out) / "compare.json").string() << "\n";
  return 0;
}

}  // namespace onebit::train

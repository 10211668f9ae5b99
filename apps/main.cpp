// The `onebit` command line: parses the subcommands and turns every failure into one line,
// "onebit: <message>", and exit code 1.
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "lan_cmd.hpp"
#include "optimizers_cmd.hpp"
#include "plan.hpp"
#include "onebit/error.hpp"
#ifdef ONEBIT_HAVE_TORCH
#include "train_cmd.hpp"
#endif

int main(int argc, char** argv) {
  using namespace onebit::bench;
  CLI::App app{"onebit: 1-bit LAMB / 1-bit Adam with an error-compensated 1-bit compressed allreduce"};
  app.name("onebit");
  app.require_subcommand(1);
  app.footer(example("onebit bench allreduce --workers 4 --elements 25000000"));
  CLI::App* bench = app.add_subcommand("bench", "benchmarks, each against its floor in the same run");
  bench->require_subcommand(1);
  bench->footer(example("onebit bench compress --elements 16777216"));

  CompressOptions compress;
  AllreduceOptions allreduce;
  StepOptions step;
  CLI::App* compress_cmd = add_compress_command(*bench, compress);
  CLI::App* allreduce_cmd = add_allreduce_command(*bench, allreduce);
  CLI::App* step_cmd = add_step_command(*bench, step);
  OptimizersOptions optimizers;
  CLI::App* optimizers_cmd = add_optimizers_command(app, optimizers);
  onebit::plan::PlanOptions plan;
  CLI::App* plan_cmd = onebit::plan::add_plan_command(app, plan);
  onebit::lan::LanOptions lan;
  CLI::App* lan_cmd = onebit::lan::add_lan_command(app, lan);
  CLI::App* lan_exec_cmd = onebit::lan::add_lan_exec_command(app);
#ifdef ONEBIT_HAVE_TORCH
  onebit::train::TrainOptions train;
  onebit::train::CompareOptions compare;
  CLI::App* train_cmd = onebit::train::add_train_command(app, train);
  CLI::App* compare_cmd = onebit::train::add_compare_command(app, compare);
#endif

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "onebit: " << e.what() << " (see onebit --help)\n";
    return 1;
  }

  try {
    if (compress_cmd->parsed()) return run_compress(compress);
    if (allreduce_cmd->parsed()) return run_allreduce(allreduce, std::vector<std::string>(argv + 1, argv + argc));
    if (step_cmd->parsed()) return run_step(step);
    if (optimizers_cmd->parsed()) return run_optimizers(optimizers);
    if (plan_cmd->parsed()) return onebit::plan::run_plan(plan);
    if (lan_cmd->parsed()) return onebit::lan::run_lan(lan);
    if (lan_exec_cmd->parsed()) return onebit::lan::run_lan_exec(lan_exec_cmd->remaining());
#ifdef ONEBIT_HAVE_TORCH
    if (train_cmd->parsed()) return onebit::train::run_train(train);
    if (compare_cmd->parsed()) return onebit::train::run_compare(compare);
#endif
  } catch (const onebit::Error& e) {
    const std::string message = e.what();
    std::cerr << (message.rfind("onebit", 0) == 0 ? "" : "onebit: ") << message;
    if (e.file() && std::getenv("ONEBIT_DEBUG")) std::cerr << " (" << e.file() << ":" << e.line() << ")";
    std::cerr << "\n";
    return 1;
  } catch (const std::exception& e) {
    const std::string message = e.what();
    std::cerr << (message.rfind("onebit", 0) == 0 ? "" : "onebit: ") << message << "\n";
    return 1;
  }
  std::cerr << "onebit: no command given (see onebit --help)\n";
  return 1;
}

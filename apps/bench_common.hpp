// Shared pieces of the `onebit bench` commands: the timing harness, machine facts, random fills,
// JSON/text output, and the entry point of each command (one per bench_*.cpp).
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "onebit/aligned.hpp"
#include "proc/proc.hpp"  // human_bytes

namespace CLI {
class App;
}

namespace onebit::bench {

// --- timing ------------------------------------------------------------------------------------

double seconds_since(std::chrono::steady_clock::time_point t0);
double median(std::vector<double> v);

// Times each function `repeats` times and returns the median seconds of each. Every function runs
// once untimed first (page faults, thread start-up), and the repeats interleave the functions so
// that a neighbour's load on a shared machine hits all of them alike rather than one.
std::vector<double> time_medians(int repeats, const std::vector<std::function<void()>>& fns);

// --- inputs and machine ------------------------------------------------------------------------

// Uniform values in [-scale, scale) from a cheap counter-based generator: filling hundreds of
// millions of elements with <random> would take longer than the benchmark itself.
void fill_random(std::span<float> x, uint64_t seed, float scale = 1.0f);

// {"cpu": model name from /proc/cpuinfo, "cores": CPUs this process may run on (as nproc)}.
nlohmann::json machine_json();

// A CLI11 check: "" when s is a positive integer, else why not (for the --elements style options,
// whose built-in range check would print the type's maximum in its message).
std::string positive_integer(const std::string& s);

// CLI11 checks of a number that say what would be valid in a few digits ("must be a number > 0, not
// '-5'"; CLI11's own PositiveNumber prints a double's maximum with 300 of them).
std::function<std::string(const std::string&)> number_in(double lo, double hi);  // lo <= x <= hi
std::function<std::string(const std::string&)> positive_number();                // x > 0
std::function<std::string(const std::string&)> non_negative_number();            // x >= 0

// The registered optimizers' names (onebit/optimizer_registry.hpp), for --optimizer's check.
std::vector<std::string> optimizer_choices();

// The last line of every command's --help: one example of it.
std::string example(const std::string& command_line);

// --- output ------------------------------------------------------------------------------------

std::string fixed(double v, int decimals);
using proc::human_bytes;

// Rows of cells, the first row a header; columns padded to the widest cell.
void print_table(std::ostream& os, const std::vector<std::vector<std::string>>& rows);

// Writes the JSON to `out_file` when it is not empty (throws onebit::Error if it cannot), and to
// stdout when `as_json`; otherwise calls print_text.
void emit(const nlohmann::json& j, bool as_json, const std::string& out_file,
          const std::function<void(std::ostream&)>& print_text);

// --- the commands ------------------------------------------------------------------------------

struct CompressOptions {
  size_t elements = size_t{64} << 20;
  int threads = 1;
  int repeats = 7;
  std::string isa;  // empty: the best this CPU supports
  bool json = false;
  std::string out;
};

struct AllreduceOptions {
  int workers = 0;
  size_t elements = 0;
  std::string backend;  // empty: local, or gloo with --rate
  int threads = 1;
  int repeats = 7;
  bool json = false;
  std::string out;
  // With --rate: one rank per namespace of a shaped network (onebit lan), TCP over its links.
  std::string rate;            // empty: no shaped network
  std::string delay = "0ms";
  double timeout_s = 3600;     // whole run of the rank processes (under --rate, network set-up included)
  // Also measure at elements/10 and /100, fit the planner's constants, write them here.
  std::string calibration;
};

struct StepOptions {
  std::string optimizer;
  size_t params = 100000000;
  std::string stage = "compression";
  int threads = 1;
  int repeats = 7;
  bool json = false;
  std::string out;
};

// Each add_* declares the subcommand's options on `bench` (CLI11 fills `o` when parsing); each
// run_* returns the process exit code. args: the command line after the program name, which the
// MPI backend needs to start itself again under mpirun.
CLI::App* add_compress_command(CLI::App& bench, CompressOptions& o);
int run_compress(const CompressOptions& o);

CLI::App* add_allreduce_command(CLI::App& bench, AllreduceOptions& o);
int run_allreduce(const AllreduceOptions& o, const std::vector<std::string>& args);

CLI::App* add_step_command(CLI::App& bench, StepOptions& o);
int run_step(const StepOptions& o);

}  // namespace onebit::bench

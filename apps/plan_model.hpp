// The planner's model: per-step communication of LAMB (fp32 / fp16 ring allreduce) and 1-bit LAMB
// (compressed allreduce), from an alpha-beta network model calibrated by `onebit bench allreduce`.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace onebit::plan {

// The share of steps spent in warmup when the user gives none: the paper's BERT-Large setting
// that yields its 4.6x whole-run volume reduction (the paper's rule of thumb is 15-25%).
constexpr double kDefaultFreezeFraction = 0.165;

// Measured constants of one machine + network + engine. Uncalibrated defaults are documented.
struct Calibration {
  bool calibrated = false;
  std::string source = "defaults: 50 us per message, links at their nominal rate, compression compute ignored";
  double alpha = 50e-6;         // seconds per message step of a collective (fp32 ring)
  // ... of the compressed allreduce's collectives: small ones, whose fixed costs (the engine's
  // hand-offs between threads, TCP restarting after idle) weigh more; fit on its own.
  double compressed_alpha = 50e-6;
  double efficiency = 1.0;      // achieved bandwidth / nominal link rate
  // ... of the 16-bit exchange (HalfAllreduce: an all-to-all, then an all-gather), fit on its own:
  // engines run those collectives at other speeds than their allreduce, and its rounding and sum
  // are compute per element (for a rank with a core of its own, as compute_per_element). Older
  // calibrations, and the defaults, take the fp32 ring's constants and no compute.
  double half_alpha = 50e-6, half_efficiency = 1.0, half_compute_per_element = 0;
  // Seconds per element of compressed-allreduce compute (compress, server, decode) for a rank with
  // a core of its own (measured with more ranks than cores, it is divided by that sharing).
  double compute_per_element = 0;
  int workers = 0;              // ranks of the calibration run
  int cores = 0;                // cores its ranks shared (0: unknown, taken as one each)
  double nominal_bandwidth = 0; // bytes/s of the link during calibration (0: unknown)

  nlohmann::json to_json() const;
  static Calibration from_json(const nlohmann::json& j);
};
Calibration load_calibration(const std::string& path);
void save_calibration(const std::string& path, const Calibration& c);

// One measured point of `bench allreduce`: both allreduces of the same buffer.
struct Sample {
  double elements = 0;
  double fp32_seconds = 0;
  double compressed_seconds = 0;
  double half_seconds = 0;  // bf16 HalfAllreduce; 0: not measured (the half constants are the fp32 ones)
  // ... of which inside its collectives (the rank that spent the least there: the transfer alone);
  // the rest is its rounding and sum. 0: not measured, all of it counts as the transfer.
  double half_in_collectives = 0;
};
// Least-squares fit of alpha, bandwidth efficiency and compute per element to samples taken at
// one world size on a link of nominal_bandwidth bytes/s (0 if unknown: efficiency is then the
// achieved bandwidth relative to the nominal one later given to plan, i.e. taken as 1), by ranks
// that shared `cores` cores (0: each had its own).
Calibration fit(const std::vector<Sample>& samples, int workers, double nominal_bandwidth, int cores = 0);

// Bytes one rank sends per call (the same counts the communicators report).
double ring_allreduce_bytes(double elements, int workers, double bytes_per_element);
double compressed_allreduce_bytes(double elements, int workers);

struct Input {
  double params = 0;
  int workers = 0;
  double bandwidth = 0;     // bytes/s of each worker's link
  double latency = -1;      // seconds per message; < 0: from the calibration
  double step_compute = 0;  // seconds of forward+backward+update per step, without communication
  double freeze_fraction = kDefaultFreezeFraction;
  int shared_cores = 0;     // all workers on one machine with this many cores; 0: each its own machine
  Calibration cal;
};

struct Exchange {
  std::string name;
  double bytes = 0;    // sent per rank per step
  double seconds = 0;  // communication per step
};

struct Plan {
  Input in;
  Exchange lamb_fp32, lamb_fp16, onebit;  // onebit: a compression-stage step
  // Whole run, 1-bit LAMB's warmup exchanging gradients in the baseline's precision.
  double volume_ratio_vs_fp32 = 0, volume_ratio_vs_fp16 = 0;
  double speedup_vs_fp32 = 0, speedup_vs_fp16 = 0;
  nlohmann::json to_json() const;
};

// Seconds of one ring allreduce / one compressed allreduce under the model. The compressed one is
// the pipeline of CompressedAllreduce::run: compression overlapped with the all-to-all (half the
// bytes), then the server stage, the all-gather (the other half) and the decode; its compute is
// split between the passes by the bytes each moves.
double ring_allreduce_seconds(const Input& in, double elements, double bytes_per_element);
// The 16-bit exchange (bf16 or fp16): the same bytes as a 2-byte ring at the half constants, plus
// its rounding and sum.
double half_allreduce_seconds(const Input& in, double elements);
double compressed_allreduce_seconds(const Input& in, double elements);

Plan make_plan(const Input& in);

// "1gbit", "100mbit", "10GB/s", "125000000" (bytes/s) -> bytes/s; "50us", "1ms", "0.002" -> s.
double parse_bandwidth(const std::string& s);
double parse_duration(const std::string& s);

}  // namespace onebit::plan

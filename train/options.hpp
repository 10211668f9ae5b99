// Settings of `onebit train` and `onebit compare`, each default documented next to its field.
// The launcher turns TrainOptions back into arguments (to_args) for the worker processes it starts.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "onebit/freeze_schedule.hpp"

namespace onebit::train {

// --freeze-step auto (the default) ends the 1-bit optimizers' warmup when the second moment has
// stabilised (onebit::AutoFreezeOptions), at the latest at onebit::kAutoFreezeCeilingFraction's
// byte budget.
// ... and at the earliest after this many steps (or the ceiling, if that comes first).
inline constexpr int kAutoFreezeFloor = 10;
// The paper's fixed fraction (its BERT recipe froze after 1000 of ~7000 steps), for comparison.
inline constexpr double kPaperFreezeFraction = 0.16;
// Fraction of --steps spent in the linear learning-rate warmup when --warmup-steps is not given.
inline constexpr double kDefaultWarmupFraction = 0.1;

struct TrainOptions {
  // --- model and data ---
  std::string model = "tiny";        // tiny | mini | small | base | large (BERT shapes, see model.hpp)
  std::vector<std::string> data;     // text files or directories; empty: the python3.11-doc corpus
  int vocab = 0;                     // SentencePiece vocabulary; 0: the preset's (tiny 1024 ... base 30522)
  int seq = 0;                       // tokens per sequence; 0: the preset's (tiny 64, others 128)
  double heldout = 0.05;             // fraction of documents held out for evaluation, never trained on
  std::string cache_dir;             // tokenizer and token cache; empty: $XDG_CACHE_HOME/onebit or ~/.cache/onebit
  // --- optimization ---
  std::string optimizer = "onebit-lamb";  // a name in the registry (onebit/optimizer_registry.hpp)
  int batch = 128;                   // global batch in sequences, split evenly over the workers
  int micro_batch = 0;               // sequences per forward/backward on a worker (gradients accumulate); 0: all
  int steps = 120;                   // optimizer steps (with batch: about a minute of the tiny model on 2 cores)
  int freeze_step = 0;               // last warmup step of the 1-bit optimizers; 0: auto (see kAutoFreezeCeilingFraction)
  int refresh_interval = -1;         // 1-bit LAMB's uncompressed refreshes (0: off; -1: 16 with --freeze-step auto, else off)
  int track_scales = -1;             // 1-bit LAMB's k follows the layers' gradient RMS (1/0; -1: on with --freeze-step auto)
  int scale_group = -1;              // 1-bit optimizers: elements per compression scale (0: the paper's; -1: the optimizer's default)
  // The warmup's gradient exchange (LAMB's at every step): fp32 | bf16 | fp16; empty: bf16 for the
  // 1-bit optimizers (the convergence study: no loss change in LAMB, half the warmup's bytes), fp32
  // for lamb (the baseline as users run it).
  std::string warmup_exchange;
  int warmup_steps = -1;             // linear lr warmup; -1: kDefaultWarmupFraction of steps; then linear decay to 0
  double lr = 0;                     // peak learning rate; 0: the preset's (tiny 1e-2 ... large 1e-3; a tenth for onebit-adam)
  double clip = 1.0;                 // clip this rank's local gradient to this global norm; 0: off
                                     // (--overlap on: the averaged gradient, in the steps that overlap)
  double weight_decay = 0.01;        // decoupled weight decay (every parameter: the core has one group)
  double beta2 = 0.999;              // second-moment decay
  double dropout = -1;               // -1: the preset's (tiny 0, others 0.1)
  uint64_t seed = 1;                 // model init, data order, masks and dropout all derive from it
  // --- parallelism ---
  int workers = 1;                   // processes to start on this machine (ignored when joining a job)
  std::string backend = "gloo";      // gloo | mpi | nccl
  std::string device = "cpu";        // cpu | cuda
  std::string precision = "fp32";    // fp32 | bf16: the model's forward and backward under autocast to bf16
                                     // (fp32 weights, gradients, optimizer state and exchange)
  // Overlap with backward: the exchange of LAMB's and the warmup's steps in buckets of bucket_mb MB
  // (from the last layer back), each started once backward has produced it; "on" | "off".
  std::string overlap = "off";
  double bucket_mb = 4;
  int threads = 0;                   // intra-op threads per worker; 0: cores / workers (at least 1)
  double timeout = 60;               // seconds any collective or rendezvous may wait
  // --- output ---
  std::string out = "out/train";     // run directory
  int eval_every = 0;                // held-out loss every K steps; 0: about 20 times per run
  int eval_samples = 512;            // held-out sequences evaluated (a fixed subset, same for every run)
  int save_every = 0;                // checkpoint every K steps; 0: only at the end
  std::string resume;                // a run directory (its latest checkpoint) or a checkpoint directory
  bool reset_errors_on_resize = false;  // resume with another number of workers: error buffers restart at 0
  bool progress = true;              // progress bar when stdout is a terminal
  bool log_layers = false;           // layers.jsonl: per step and layer, the trust ratio (and 1-bit LAMB's factor)
  // --- testing ---
  // "RANK:STEP[,RANK:STEP...]" (hidden --inject-nonfinite): at each STEP, rank RANK's contribution to
  // the optimizer's exchange is made NaN by a communicator decorator (onebit/fault_injection.hpp),
  // so that every rank skips the step as it would for a NaN gradient. Empty: none.
  std::string inject_nonfinite;
};

struct CompareOptions {
  TrainOptions base;                 // shared by both runs; base.optimizer is ignored
  std::string out = "out/compare";   // compare.json, loss_vs_samples.png, and one run directory each
  std::string python;                // interpreter for the picture; empty: /usr/bin/python3, else python3
  // With rate: each run's workers, one per namespace of a shaped network (onebit lan, root).
  std::string rate;                  // each worker's link, both directions (1gbit, 100mbit); empty: loopback
  std::string delay = "0ms";         // with rate: one-way worker-to-worker latency (needs netem)
  double run_timeout = 7200;         // with rate: seconds before one run's workers are killed
};

// The arguments that make a worker parse back exactly `o` (every field spelled out).
std::vector<std::string> to_args(const TrainOptions& o);

// Every "0 / -1: default" field filled in from the preset and the steps (the settings a run records).
TrainOptions resolve_options(const TrainOptions& o);
// Throws onebit::Error naming the first bad setting.
void validate_options(const TrainOptions& o);
nlohmann::json options_json(const TrainOptions& o);
// The bounds of --freeze-step auto for this run: kAutoFreezeFloor up to the byte budget
// kAutoFreezeCeilingFraction of --steps in the warmup exchange's precision.
AutoFreezeOptions auto_freeze_options(const TrainOptions& o);

// Learning rate at `step` (1-based): linear warmup to `peak` over `warmup` steps, then linear decay
// from `peak` at step warmup+1 to peak/(steps-warmup) at the last step (which still learns).
double lr_at(int64_t step, double peak, int64_t warmup, int64_t steps);

}  // namespace onebit::train

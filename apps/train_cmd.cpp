// The options of `onebit train` and `onebit compare` (defaults live in train/options.hpp).
#include "train_cmd.hpp"

#include <CLI/CLI.hpp>
#include <charconv>
#include <string>

#include "bench_common.hpp"
#include "onebit/optimizer_registry.hpp"
#include "train/compare.hpp"
#include "train/corpus.hpp"
#include "train/trainer.hpp"

namespace onebit::train {
namespace {

// Where and how the workers run: processes, engine, device, precision, overlap, threads, timeout.
void add_parallelism(CLI::App* c, TrainOptions& o) {
  c->add_option("--workers", o.workers, "worker processes to start on this machine (ignored under mpirun/srun/RANK)")
      ->capture_default_str();
  c->add_option("--backend", o.backend, "gloo | mpi | nccl")->check(CLI::IsMember({"gloo", "mpi", "nccl"}))->capture_default_str();
  c->add_option("--device", o.device, "cpu | cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  c->add_option("--precision", o.precision,
                "fp32 | bf16: the model's forward and backward under autocast to bf16 (weights, gradients, "
                "optimizer and exchange stay fp32)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  c->add_option("--overlap", o.overlap,
                "on: the exchange of lamb's steps and of the warmup runs during backward, in buckets started as soon as "
                "their layers' gradients exist (the compression steps exchange after backward either way)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  c->add_option("--bucket-mb", o.bucket_mb, "--overlap on: MB of fp32 gradient per bucket")->capture_default_str();
  c->add_option("--threads", o.threads, "CPU threads per worker (0: cores / local workers)")->capture_default_str();
  c->add_option("--timeout", o.timeout, "seconds any rendezvous or collective may wait")->capture_default_str();
}

// Everything but --optimizer, --out and --resume, which differ between the two commands.
void add_shared(CLI::App* c, TrainOptions& o) {
  c->add_option("--model", o.model, "tiny | mini | small | base | large (BERT shapes; tiny: H128 L2, trains in minutes on 2 cores)")
      ->check(CLI::IsMember({"tiny", "mini", "small", "base", "large"}))
      ->capture_default_str();
  c->add_option("--data", o.data, "text files or directories (default: the python3.11-doc corpus in " +
                                       std::string(kDefaultCorpus) + ")");
  c->add_option("--vocab", o.vocab, "SentencePiece vocabulary size (0: the preset's, tiny 1024, base/large 30522)")
      ->capture_default_str();
  c->add_option("--seq", o.seq, "tokens per sequence (0: the preset's, tiny 64, others 128)")->capture_default_str();
  c->add_option("--heldout", o.heldout, "fraction of documents held out for evaluation")->capture_default_str();
  c->add_option("--cache-dir", o.cache_dir, "tokenizer and token cache (default: $XDG_CACHE_HOME/onebit or ~/.cache/onebit)");
  c->add_option("--batch", o.batch, "global batch in sequences (split evenly over the workers)")->capture_default_str();
  c->add_option("--micro-batch", o.micro_batch,
                "sequences per forward/backward on each worker; gradients accumulate over the local batch (0: all at once)")
      ->capture_default_str();
  c->add_option("--steps", o.steps, "optimizer steps")->capture_default_str();
  c->add_option_function<std::string>(
       "--freeze-step",
       [&o](const std::string& v) {
         if (v == "auto") {
           o.freeze_step = 0;
           return;
         }
         int step = 0;
         const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), step);
         if (ec != std::errc() || end != v.data() + v.size() || step < 1)
           throw CLI::ValidationError("--freeze-step", "must be a step >= 1 or auto, not '" + v + "'");
         o.freeze_step = step;
       },
       "last uncompressed warmup step of the 1-bit optimizers, or auto: when the second moment has stabilised "
       "(from 10 steps up to 20% of --steps' bytes: 20% of the steps with an fp32 warmup exchange, 40% with a 16-bit one)")
      ->default_str("auto");
  c->add_option("--refresh-interval", o.refresh_interval,
                "1-bit LAMB: an uncompressed refresh step (in the warmup exchange's precision) this many steps after the freeze, then after doubling "
                "intervals (0: off, the paper's algorithm; -1: 16 with --freeze-step auto, else off)")
      ->capture_default_str();
  c->add_option("--track-scales", o.track_scales,
                "1-bit LAMB: the per-layer momentum scale k follows the layers' gradient RMS (1: on, 0: off, the paper's; "
                "-1: on with --freeze-step auto)")
      ->check(CLI::Range(-1, 1))
      ->capture_default_str();
  c->add_option("--scale-group", o.scale_group,
                "1-bit optimizers: elements per compression scale, a multiple of 64 (0: the paper's one scale per worker and "
                "per server chunk; -1: 2048 for onebit-lamb with --freeze-step auto, else 0), each group costing 4 bytes more "
                "per exchange")
      ->capture_default_str();
  c->add_option("--warmup-exchange", o.warmup_exchange,
                "the warmup's gradient exchange (every step of lamb's): fp32, or bf16/fp16 at half the bytes, "
                "which lets --freeze-step auto warm up twice as many steps for the same bytes")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}))
      ->default_str("bf16; fp32 for lamb");
  c->add_option("--warmup-steps", o.warmup_steps, "linear learning-rate warmup, then linear decay (-1: 10% of --steps)")
      ->capture_default_str();
  c->add_option("--lr", o.lr, "peak learning rate (0: the preset's LAMB rate, tiny 1e-2; a tenth of it for onebit-adam)")->capture_default_str();
  c->add_option("--clip", o.clip,
                "clip each worker's local gradient to this global norm (0: off); with --overlap on, the averaged "
                "gradient of the steps that overlap, as under DDP")
      ->capture_default_str();
  c->add_option("--weight-decay", o.weight_decay, "decoupled weight decay")->capture_default_str();
  c->add_option("--beta2", o.beta2, "second-moment decay")->capture_default_str();
  c->add_option("--dropout", o.dropout, "dropout (-1: the preset's, tiny 0, others 0.1)")->capture_default_str();
  c->add_option("--seed", o.seed, "seed of the initial weights, the data order, the masks and dropout")->capture_default_str();
  add_parallelism(c, o);
  c->add_option("--eval-every", o.eval_every, "held-out loss every K steps (0: about 20 times per run)")->capture_default_str();
  c->add_option("--eval-samples", o.eval_samples, "held-out sequences per evaluation (the same ones every time)")
      ->capture_default_str();
  c->add_option("--save-every", o.save_every, "checkpoint every K steps (0: only at the end)")->capture_default_str();
  c->add_flag("--log-layers", o.log_layers,
              "write layers.jsonl: per step and layer, the trust ratio used (1-bit LAMB: c_freeze x factor, and the "
              "factor before its clamps)");
  c->add_flag_function("--no-progress", [&o](int64_t) { o.progress = false; }, "no progress bar even on a terminal");
}

}  // namespace

CLI::App* add_train_command(CLI::App& app, TrainOptions& o) {
  CLI::App* c = app.add_subcommand(
      "train", "data-parallel BERT masked-LM pre-training with LAMB, 1-bit LAMB or 1-bit Adam; writes --out");
  add_shared(c, o);
  c->add_option("--optimizer", o.optimizer, "one of: " + optimizer_names() + " (onebit optimizers lists their options)")
      ->check(CLI::IsMember(bench::optimizer_choices()))
      ->capture_default_str();
  c->add_option("--out", o.out, "run directory: metrics.jsonl, summary.json, checkpoints/, tokenizer.model")
      ->capture_default_str();
  c->add_option("--resume", o.resume, "continue exactly from a run directory's latest checkpoint (or a checkpoint directory)");
  c->add_flag("--reset-errors-on-resize", o.reset_errors_on_resize,
              "with --resume from a run of another --workers: continue with the compression error buffers reset "
              "(not bit for bit; without this flag such a resume is an error)");
  // Not in --help: a fault-injection hook for the tests (and for trying the skip by hand).
  c->add_option("--inject-nonfinite", o.inject_nonfinite,
                "RANK:STEP[,RANK:STEP...]: at each STEP, rank RANK's contribution to the optimizer's exchange is "
                "made NaN (every rank then skips the step, as for a NaN gradient)")
      ->group("");
  c->footer(bench::example("onebit train --model tiny --workers 2 --batch 32 --steps 100 --optimizer onebit-lamb --out run1"));
  return c;
}

CLI::App* add_compare_command(CLI::App& app, CompareOptions& o) {
  o.base.workers = 4;
  CLI::App* c = app.add_subcommand(
      "compare", "LAMB vs 1-bit LAMB on identical data, seed and schedule: compare.json, loss_vs_samples.png, a table");
  add_shared(c, o.base);
  c->add_option("--out", o.out, "directory for compare.json, the picture and both runs")->capture_default_str();
  c->add_option("--python", o.python, "Python with matplotlib for the picture (default: /usr/bin/python3)");
  c->add_option("--rate", o.rate,
                "run each worker in its own namespace of a shaped network (onebit lan; root): each link's rate, "
                "both directions (100mbit, 1gbit)");
  c->add_option("--delay", o.delay, "with --rate: one-way latency between two workers (500us, 1ms)")
      ->capture_default_str();
  c->add_option("--run-timeout", o.run_timeout, "with --rate: seconds before one run's workers are killed")
      ->check(bench::number_in(1, 1e7), "SECONDS")
      ->capture_default_str();
  c->footer(bench::example("onebit compare --model tiny --workers 4 --steps 120 --out compare-run"));
  return c;
}

int run_train(const TrainOptions& o) {
  train(o);
  return 0;
}

int run_compare(const CompareOptions& o) { return compare(o); }

}  // namespace onebit::train

// The training loop of one rank and the `train` entry point (see trainer.hpp). Every random choice is
// a function of (seed, step, rank), so a checkpoint holds all the state a resume needs.
#include "train/trainer.hpp"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "onebit/error.hpp"
#include "onebit/fault_injection.hpp"
#include "onebit/torch_c10d.hpp"
#include "proc/proc.hpp"
#include "train/checkpoint.hpp"
#include "train/metrics.hpp"
#include "train/random.hpp"
#include "train/optimizer_setup.hpp"
#include "train/passes.hpp"
#include "train/sharing.hpp"

namespace fs = std::filesystem;

namespace onebit::train {

using proc::human_bytes;
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Settings that change the trajectory: a resume must match them all.
constexpr const char* kMathSettings[] = {"model", "data", "vocab", "seq", "heldout", "optimizer", "batch", "steps",
                                         "freeze_step", "refresh_interval", "track_scales", "scale_group", "warmup_steps", "lr", "clip", "weight_decay", "beta2",
                                         "dropout", "seed", "backend", "device", "precision", "overlap", "bucket_mb"};

// Running totals of a run, carried across resumes in the checkpoint.
struct Totals {
  uint64_t bytes_sent = 0, bytes_received = 0;
  double comm_seconds = 0, compute_seconds = 0, train_seconds = 0;
  // The step's breakdown: forward and backward, the optimizer's own work, its exchange.
  double forward_backward_seconds = 0, optimizer_seconds = 0, exchange_seconds = 0;
  double exchange_hidden_seconds = 0;  // --overlap on: the exchange's time that backward hid
  int64_t skipped = 0;
  nlohmann::json to_json() const {
    return {{"bytes_sent", bytes_sent}, {"bytes_received", bytes_received}, {"comm_seconds", comm_seconds},
            {"compute_seconds", compute_seconds}, {"train_seconds", train_seconds},
            {"forward_backward_seconds", forward_backward_seconds}, {"optimizer_seconds", optimizer_seconds},
            {"exchange_seconds", exchange_seconds}, {"exchange_hidden_seconds", exchange_hidden_seconds},
            {"skipped_steps", skipped}};
  }
  static Totals from_json(const nlohmann::json& j) {
    Totals t;
    t.bytes_sent = j.at("bytes_sent"), t.bytes_received = j.at("bytes_received");
    t.comm_seconds = j.at("comm_seconds"), t.compute_seconds = j.at("compute_seconds");
    t.train_seconds = j.at("train_seconds"), t.skipped = j.at("skipped_steps");
    // Checkpoints from before the breakdown have none: it restarts at zero.
    t.forward_backward_seconds = j.value("forward_backward_seconds", 0.0);
    t.optimizer_seconds = j.value("optimizer_seconds", 0.0);
    t.exchange_seconds = j.value("exchange_seconds", 0.0);
    t.exchange_hidden_seconds = j.value("exchange_hidden_seconds", 0.0);
    return t;
  }
};

void check_resume_matches(const nlohmann::json& meta, const TrainOptions& o, int world, const std::string& key) {
  const auto saved = meta.at("options");
  const auto now = options_json(o);
  for (const char* k : kMathSettings)  // a setting the checkpoint lacks is newer than it: its default
    ONEBIT_CHECK(!saved.contains(k) || saved.at(k) == now.at(k), "onebit train --resume: the checkpoint was made with "
                                                                     << k << " = " << saved.at(k).dump()
                                                                     << ", this run has " << now.at(k).dump());
  ONEBIT_CHECK(meta.at("world_size") == world || o.reset_errors_on_resize,
               "onebit train --resume: the checkpoint was made by " << meta.at("world_size") << " workers, this run has "
                   << world << " (add --reset-errors-on-resize to continue with the error buffers reset, not bit for bit)");
  ONEBIT_CHECK(meta.at("corpus_key") == key, "onebit train --resume: the corpus changed since the checkpoint");
}

// One line of layers.jsonl: each layer's trust ratio in this step, and 1-bit LAMB's factor
// before and after its clamps (docs/algorithm.md §4 step 8) once it compresses.
nlohmann::json layer_record(int64_t step, const char* stage, const Optimizer& opt) {
  nlohmann::json r{{"step", step}, {"stage", stage}, {"trust", opt.layer_trust()}};
  const auto* l = dynamic_cast<const OnebitLamb*>(&opt);
  if (l && std::isfinite(l->freeze_schedule().last_movement()))
    r["v_movement"] = l->freeze_schedule().last_movement();  // --freeze-step auto's measure (warmup)
  if (l && !l->in_warmup()) {
    r["c_freeze"] = l->c_freeze();
    r["factor"] = l->last_factor();
    r["raw_factor"] = l->raw_factor();
  }
  return r;
}

// rank 0: the resumed run's history up to the checkpoint, in this run's directory.
void carry_metrics(const std::string& ckpt_dir, const std::string& out) {
  const fs::path from = fs::path(ckpt_dir).parent_path().parent_path() / "metrics.jsonl";
  const fs::path to = fs::path(out) / "metrics.jsonl";
  std::error_code ec;
  if (fs::exists(from) && !fs::equivalent(from.parent_path(), to.parent_path(), ec))
    fs::copy_file(from, to, fs::copy_options::overwrite_existing);
}

// The model, optimizer and data of one rank.
struct Rank {
  std::shared_ptr<Communicator> comm;
  int rank = 0, world = 1, threads = 1;
  PreparedCorpus corpus;
  BertConfig cfg;
  torch::Device device = torch::Device(torch::kCPU);
  bool bf16 = false;  // --precision bf16
  BertForMlm model{nullptr};
  std::vector<at::Tensor> params;
  std::vector<std::string> names;
  std::unique_ptr<TorchOptimizer> opt;
  int masked = 0;
  std::optional<DeadParameters> dead;
  std::optional<MlmData> data;
  int local_batch = 1;
  // With --inject-nonfinite (tests), the optimizer's communicator: comm behind a fault-injection
  // decorator. Null without.
  std::shared_ptr<FaultyCommunicator> faults;
};

// Builds `r` in place (the optimizer holds on to its parameters, the data to the corpus). The same
// order on every rank: the seed before the model gives them all the same initial weights.
void set_up(Rank& r, const TrainOptions& o, const std::optional<JobInfo>& job) {
  r.comm = job ? join_job(*job, o.backend, o.device, std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000)))
               : std::shared_ptr<Communicator>(make_single_rank_communicator());
  r.rank = r.comm->rank(), r.world = r.comm->size();
  ONEBIT_CHECK(o.batch % r.world == 0, "onebit train on rank " << r.rank << ": --batch " << o.batch
                                                               << " is not a multiple of the " << r.world << " workers");
  r.threads = threads_per_rank(o.threads, r.world);
  torch::set_num_threads(r.threads);
  flush_denormals_in_torch_threads();

  r.corpus = share_corpus(o, *r.comm);
  const Tokenizer tokenizer = Tokenizer::from_serialized(r.corpus.tokenizer_model);
  r.cfg = bert_preset(o.model);
  r.cfg.vocab = tokenizer.vocab_size(), r.cfg.seq = o.seq, r.cfg.dropout = o.dropout;
  r.device = o.device == "cuda" ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(
                                                                  job ? job->local_rank % std::max<int64_t>(1, torch::cuda::device_count()) : 0))
                                : torch::Device(torch::kCPU);
  torch::manual_seed(o.seed);  // the same initial weights on every rank
  r.model = BertForMlm(r.cfg);
  check_precision_available(o.precision, o.device);
  r.bf16 = o.precision == "bf16";
  r.model->to(r.device);
  for (auto& p : r.model->named_parameters()) r.names.push_back(p.key()), r.params.push_back(p.value());
  // Faults are planted in what this rank sends, by a decorator of the communicator the optimizer
  // talks through (onebit/fault_injection.hpp): the trainer's own collectives (loss, evaluation,
  // checkpoints, the identity checks) never carry one, and every skip is decided as for a real NaN.
  std::shared_ptr<Communicator> opt_comm = r.comm;
  if (!o.inject_nonfinite.empty())
    opt_comm = r.faults = std::make_shared<FaultyCommunicator>(
        r.comm, parse_fault_plan(o.inject_nonfinite, "onebit train: --inject-nonfinite"), &std::cerr);
  r.opt = make_optimizer(o, r.params, opt_comm, r.threads);
  if (o.overlap == "on") r.opt->enable_overlap(static_cast<size_t>(o.bucket_mb * (1 << 20)));
  r.masked = set_momentum_masks(*r.opt, r.names, o.seq);
  r.dead.emplace(*r.opt, r.names, o.seq);  // before any resume: the initial values
  check_ranks_identical(*r.opt, *r.comm, "at start");
  r.data.emplace(r.corpus, o.seq, r.cfg.vocab, o.seed);
  r.local_batch = o.batch / r.world;
}

// Where this process takes the run up, and what the steps carry from one to the next.
struct Session {
  int64_t start = 0;   // the step of the checkpoint resumed from; 0: a fresh run
  Totals totals;       // the whole run's, resumes included
  std::string ckpt;    // the checkpoint resumed from; empty: none
  uint64_t base_sent = 0, base_received = 0;  // the totals' bytes before this process
  double session_train_start = 0;             // the totals' train seconds before this process
  double loss_avg = std::nan(""), heldout = std::nan("");
};

// --resume: the checkpoint's weights, optimizer state, step and totals, after checking that it
// belongs to this run.
Session resume(const TrainOptions& o, Rank& r) {
  Session s;
  if (o.resume.empty()) return s;
  s.ckpt = find_checkpoint(o.resume);
  const auto meta = read_checkpoint_meta(s.ckpt);
  check_resume_matches(meta, o, r.world, r.corpus.key);
  const std::string warning = load_checkpoint(s.ckpt, *r.opt, r.rank, meta.at("world_size").get<int>(),
                                              o.reset_errors_on_resize ? OnResize::kResetErrors : OnResize::kError);
  if (r.rank == 0 && !warning.empty()) std::cerr << "onebit train --resume: warning: " << warning << std::endl;
  s.start = meta.at("step");
  s.totals = Totals::from_json(meta.at("totals"));
  check_ranks_identical(*r.opt, *r.comm, "after loading the checkpoint");
  return s;
}

// config.json: the settings, the model and the corpus of this run.
nlohmann::json run_info(const TrainOptions& o, const Rank& r) {
  return {{"options", options_json(o)},
          {"world_size", r.world},
          {"backend", r.comm->backend()},
          {"threads_per_rank", r.threads},
          {"parameters", r.opt->flat().layout().total()},
          {"masked_tensors", r.masked},
          {"pinned_dead_elements", r.dead->elements()},
          {"model", {{"hidden", r.cfg.hidden}, {"layers", r.cfg.layers}, {"heads", r.cfg.heads},
                     {"intermediate", r.cfg.intermediate}, {"vocab", r.cfg.vocab}}},
          {"corpus", {{"key", r.corpus.key}, {"train_documents", r.corpus.train_documents},
                      {"heldout_documents", r.corpus.heldout_documents},
                      {"train_sequences", r.data->train_sequences()},
                      {"heldout_sequences", r.data->heldout_sequences()}}}};
}

struct Logs {
  std::optional<MetricsLog> metrics, layers;  // rank 0 only
};

// rank 0: the run's directory with its tokenizer and settings, and its logs (a resumed run's
// history carried over, then continued after the checkpoint's step).
void open_logs(Logs& logs, const TrainOptions& o, const Rank& r, const Session& s, const nlohmann::json& info) {
  fs::create_directories(o.out);
  std::ofstream(fs::path(o.out) / "tokenizer.model", std::ios::binary) << r.corpus.tokenizer_model;
  std::ofstream(fs::path(o.out) / "config.json") << info.dump(2) << "\n";
  if (!s.ckpt.empty()) carry_metrics(s.ckpt, o.out);
  logs.metrics.emplace((fs::path(o.out) / "metrics.jsonl").string(), s.start);
  if (o.log_layers) {
    logs.layers.emplace((fs::path(o.out) / "layers.jsonl").string(), s.start);
    if (s.start == 0) logs.layers->write({{"step", 0}, {"layers", r.names}});
  }
}

// What one step did.
struct Step {
  int64_t step = 0;
  double lr = 0, grad_norm = 0, loss_avg = 0, wall = 0, comm_s = 0;
  double forward_backward_s = 0, optimizer_s = 0, exchange_s = 0;  // optimizer_s: without exchange_s
  OverlapReport overlap;  // --overlap on, a step that overlapped: its buckets and what backward hid
  const char* stage = "";
  bool applied = true;
  CommStats before, after;
};

// The step's time outside the exchange it waited for: its wall time less its communication, the
// part that backward hid (--overlap on) given back.
double compute_seconds(const Step& st) { return st.wall - st.comm_s + st.overlap.hidden_seconds(); }

// One optimizer step on this rank's part of the batch, and the loss averaged over the ranks.
Step train_step(const TrainOptions& o, Rank& r, int64_t step) {
  Step st;
  st.step = step;
  const auto t0 = Clock::now();
  st.before = r.comm->stats();
  st.lr = lr_at(step, o.lr, o.warmup_steps, o.steps);
  r.opt->param_groups().front().options().set_lr(st.lr);
  st.stage = r.opt->core().next_stage();
  Batch b = r.data->train_batch(step, o.batch, r.rank, r.world);
  if (o.dropout > 0) torch::manual_seed(mix(o.seed, static_cast<uint64_t>(step), static_cast<uint64_t>(r.rank)));
  if (r.faults) r.faults->begin_step(step);  // the decorator's clock for its plan
  const auto t_fb = Clock::now();
  // --overlap on: the exchange of a step that can overlap starts during the last backward, which
  // returns with the average over the ranks in the gradients.
  const double local_loss =
      forward_backward(r.model, b, o.micro_batch, r.device, r.bf16, [&] { r.opt->arm_overlap(); });
  st.overlap = r.opt->finish_overlap();
  st.forward_backward_s = since(t_fb) - st.overlap.waited_seconds;  // .item() waited for the device
  // Without overlap only the local gradient exists before the 1-bit optimizers' exchange, so every
  // optimizer clips this rank's own gradient (the same rule for all, for a fair comparison); a step
  // that overlapped holds the average by now and clips it, as under DDP.
  st.grad_norm = o.clip > 0 ? torch::nn::utils::clip_grad_norm_(r.params, o.clip)
                            : torch::nn::utils::clip_grad_norm_(r.params, INFINITY);
  const double comm_before_step = r.comm->stats().seconds;
  const auto t_opt = Clock::now();
  r.opt->step();
  if (r.device.is_cuda()) torch::cuda::synchronize(r.device.index());  // the step's kernels, timed
  st.optimizer_s = since(t_opt) - (r.comm->stats().seconds - comm_before_step);
  st.exchange_s = r.comm->stats().seconds - st.before.seconds;  // during backward and in the step
  r.dead->restore(*r.opt);
  st.applied = r.opt->last_step_applied();
  r.opt->zero_grad();
  float l = static_cast<float>(local_loss);
  r.comm->allreduce_sum(std::span<float>(&l, 1));
  st.loss_avg = l / static_cast<float>(r.world);
  st.after = r.comm->stats();
  st.wall = since(t0), st.comm_s = st.after.seconds - st.before.seconds;
  return st;
}

// rank 0: the step's line of metrics.jsonl (and layers.jsonl), the progress bar or, at an
// evaluation without one, a line on stderr.
void log_step(const TrainOptions& o, const Rank& r, Logs& logs, Progress& progress, const Step& st,
              const Session& s, bool eval_now, double sps) {
  const int64_t step = st.step;
  nlohmann::json rec{{"step", step}, {"samples", step * o.batch}, {"loss", s.loss_avg}, {"lr", st.lr},
                     {"stage", st.stage}, {"bytes_sent", st.after.bytes_sent - st.before.bytes_sent},
                     {"total_bytes_sent", s.totals.bytes_sent}, {"compute_seconds", compute_seconds(st)},
                     {"comm_seconds", st.comm_s}, {"grad_norm", st.grad_norm},
                     {"forward_backward_seconds", st.forward_backward_s}, {"optimizer_seconds", st.optimizer_s},
                     {"exchange_seconds", st.exchange_s}};
  if (!st.applied) rec["skipped"] = true;
  if (st.overlap.buckets > 0) {
    rec["buckets"] = st.overlap.buckets;
    rec["exchange_hidden_seconds"] = st.overlap.hidden_seconds();
    rec["exchange_hidden_fraction"] =
        st.overlap.exchange_seconds > 0 ? st.overlap.hidden_seconds() / st.overlap.exchange_seconds : 0.0;
  }
  if (eval_now) rec["heldout_loss"] = s.heldout;
  logs.metrics->write(rec);
  if (logs.layers) logs.layers->write(layer_record(step, st.stage, r.opt->core()));
  progress.update(step, s.loss_avg, s.heldout, st.lr, st.stage, sps);
  if (eval_now && !progress.active())
    std::cerr << "step " << step << "/" << o.steps << "  samples " << step * o.batch << "  loss " << s.loss_avg
              << "  held-out " << s.heldout << "  " << st.stage << "  sent "
              << human_bytes(static_cast<double>(s.totals.bytes_sent)) << "  " << static_cast<int>(sps)
              << " samples/s" << std::endl;
}

// Steps start+1 .. o.steps: train, count, evaluate every --eval-every, log, checkpoint.
void run_steps(const TrainOptions& o, Rank& r, Session& s, Logs& logs) {
  r.comm->reset_stats();  // count training traffic only: set-up (corpus, checks) is not the algorithm's
  s.base_sent = s.totals.bytes_sent, s.base_received = s.totals.bytes_received;
  Progress progress(r.rank == 0 && o.progress, o.steps, s.start);
  s.session_train_start = s.totals.train_seconds;
  const int eval_batch = std::max(r.local_batch, 32);
  if (s.start == 0) {
    // The untrained model's held-out loss: every curve starts from the same point.
    s.heldout = evaluate(r.model, *r.data, *r.comm, o.eval_samples, eval_batch, r.device, r.bf16);
    if (r.rank == 0)
      logs.metrics->write({{"step", 0}, {"samples", 0}, {"heldout_loss", s.heldout}, {"total_bytes_sent", 0}});
  }
  for (int64_t step = s.start + 1; step <= o.steps; ++step) {
    const Step st = train_step(o, r, step);
    s.loss_avg = st.loss_avg;
    s.totals.comm_seconds += st.comm_s, s.totals.compute_seconds += compute_seconds(st);
    s.totals.exchange_hidden_seconds += st.overlap.hidden_seconds();
    s.totals.train_seconds += st.wall;
    s.totals.forward_backward_seconds += st.forward_backward_s;
    s.totals.optimizer_seconds += st.optimizer_s, s.totals.exchange_seconds += st.exchange_s;
    s.totals.skipped += st.applied ? 0 : 1;

    const bool eval_now = step % o.eval_every == 0 || step == o.steps;
    if (eval_now) s.heldout = evaluate(r.model, *r.data, *r.comm, o.eval_samples, eval_batch, r.device, r.bf16);
    s.totals.bytes_sent = s.base_sent + r.comm->stats().bytes_sent;
    s.totals.bytes_received = s.base_received + r.comm->stats().bytes_received;
    const double sps =
        static_cast<double>((step - s.start) * o.batch) / (s.totals.train_seconds - s.session_train_start);
    if (r.rank == 0) log_step(o, r, logs, progress, st, s, eval_now, sps);
    if ((o.save_every > 0 && step % o.save_every == 0) || step == o.steps) {
      nlohmann::json meta{{"step", step}, {"samples", step * o.batch}, {"totals", s.totals.to_json()},
                          {"options", options_json(o)}, {"world_size", r.world}, {"corpus_key", r.corpus.key}};
      save_checkpoint(o.out, step, *r.opt, meta, *r.comm);
    }
  }
  progress.finish();
}

// rank 0: summary.json and the closing line on stdout.
void write_summary(const TrainOptions& o, const Rank& r, const Session& s, nlohmann::json summary,
                   Clock::time_point t_start) {
  const double session = s.totals.train_seconds - s.session_train_start;
  summary["steps"] = o.steps;
  summary["samples"] = static_cast<int64_t>(o.steps) * o.batch;
  summary["final_train_loss"] = s.loss_avg;
  summary["final_heldout_loss"] = s.heldout;
  const int64_t freeze = r.opt->core().freeze_step();  // -1: LAMB; 0: auto, still undecided
  summary["freeze_step"] = freeze < 0 ? nlohmann::json(nullptr) : nlohmann::json(freeze);
  summary["heldout_sequences_evaluated"] = std::min<int64_t>(o.eval_samples, r.data->heldout_sequences());
  summary["totals"] = s.totals.to_json();
  summary["bytes_sent"] = s.totals.bytes_sent;  // per rank, training only (whole run, resumes included)
  summary["samples_per_second"] = session > 0 ? static_cast<double>((o.steps - s.start) * o.batch) / session : 0.0;
  summary["wall_seconds"] = since(t_start);  // this process: set-up, training, evaluation, checkpoints
  summary["ranks_identical"] = true;
  summary["resumed_from_step"] = s.start;
  std::ofstream(fs::path(o.out) / "summary.json") << summary.dump(2) << "\n";
  std::cout << "onebit train: " << o.optimizer << ", " << o.steps << " steps x " << o.batch << " sequences on "
            << r.world << " worker(s): held-out loss " << s.heldout << ", sent "
            << human_bytes(static_cast<double>(s.totals.bytes_sent)) << " per worker, "
            << human_seconds(since(t_start)) << " -> " << o.out << std::endl;
}

}  // namespace

void train_rank(const TrainOptions& in, const std::optional<JobInfo>& job) {
  const auto t_start = Clock::now();
  const TrainOptions o = resolve_options(in);
  validate_options(o);
  Rank r;
  set_up(r, o, job);
  Session s = resume(o, r);
  Logs logs;
  const nlohmann::json info = run_info(o, r);
  if (r.rank == 0) open_logs(logs, o, r, s, info);
  run_steps(o, r, s, logs);
  if (s.start >= o.steps)
    s.heldout = evaluate(r.model, *r.data, *r.comm, o.eval_samples, std::max(r.local_batch, 32), r.device, r.bf16);
  check_ranks_identical(*r.opt, *r.comm, "at the end");
  if (r.rank == 0) write_summary(o, r, s, info, t_start);
  r.comm->barrier();  // rank 0 hosts the rendezvous store: leave together
}

void train(const TrainOptions& in) {
  if (auto job = detect_job()) return train_rank(in, job);
  const TrainOptions o = resolve_options(in);
  validate_options(o);
  check_engine_available(o.backend, o.device, o.workers);
  check_precision_available(o.precision, o.device);
  if (o.workers == 1 && o.backend != "mpi") return train_rank(in, std::nullopt);
  // Learn the tokenizer once here, so the workers start from the cache instead of all at once.
  prepare_corpus(CorpusOptions{o.data, o.vocab, o.heldout, o.cache_dir, true});
  fs::create_directories(o.out);
  proc::RankLaunch l;
  l.args = {"train"};
  const auto args = to_args(in);
  l.args.insert(l.args.end(), args.begin(), args.end());
  l.workers = o.workers;
  l.mpi = o.backend == "mpi";  // one mpirun starts and wires the ranks; they join through OMPI_COMM_WORLD_*
  l.pid_file = (fs::path(o.out) / "workers.pid").string();
  // No limit on the whole run: every collective of the workers has its own (--timeout), and a
  // worker that dies or a signal ends the launch at once.
  l.supervision.timeout = proc::kNoTimeLimit;
  l.supervision.grace = std::chrono::seconds(5);
  l.what = "train";
  const proc::Outcome out = proc::launch_ranks(l);
  ONEBIT_CHECK(!out.interrupted_by, "onebit train: " << proc::Interrupted(out.interrupted_by).what()
                                                     << "; stopped the workers");
  ONEBIT_CHECK(out.ok(), "onebit train: " << out.failure << "; stopped the other workers");
}

}  // namespace onebit::train

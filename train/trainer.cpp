// The training loop of one rank and the `train` entry point (see trainer.hpp). Every random choice is
// a function of (seed, step, rank), so a checkpoint holds all the state a resume needs.
#include "train/trainer.hpp"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "onebit/error.hpp"
#include "onebit/torch_c10d.hpp"
#include "proc/proc.hpp"
#include "train/checkpoint.hpp"
#include "train/metrics.hpp"
#include "train/random.hpp"
#include "train/trainer_parts.hpp"

namespace fs = std::filesystem;

namespace onebit::train {

using proc::human_bytes;
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Settings that change the trajectory: a resume must match them all.
constexpr const char* kMathSettings[] = {"model", "data", "vocab", "seq", "heldout", "optimizer", "batch", "steps",
                                         "freeze_step", "refresh_interval", "track_scales", "warmup_steps", "lr", "clip", "weight_decay", "beta2",
                                         "dropout", "seed", "backend", "device"};

// Running totals of a run, carried across resumes in the checkpoint.
struct Totals {
  uint64_t bytes_sent = 0, bytes_received = 0;
  double comm_seconds = 0, compute_seconds = 0, train_seconds = 0;
  int64_t skipped = 0;
  nlohmann::json to_json() const {
    return {{"bytes_sent", bytes_sent}, {"bytes_received", bytes_received}, {"comm_seconds", comm_seconds},
            {"compute_seconds", compute_seconds}, {"train_seconds", train_seconds}, {"skipped_steps", skipped}};
  }
  static Totals from_json(const nlohmann::json& j) {
    Totals t;
    t.bytes_sent = j.at("bytes_sent"), t.bytes_received = j.at("bytes_received");
    t.comm_seconds = j.at("comm_seconds"), t.compute_seconds = j.at("compute_seconds");
    t.train_seconds = j.at("train_seconds"), t.skipped = j.at("skipped_steps");
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

// ONEBIT_TRAIN_INJECT_NONFINITE="RANK:STEP[,RANK:STEP...]": this rank's gradient gets a NaN at
// those steps. A fault-injection hook for the tests (train/tests) and for trying the skip by hand.
std::set<int64_t> injected_nonfinite_steps(int rank) {
  std::set<int64_t> steps;
  const char* spec = std::getenv("ONEBIT_TRAIN_INJECT_NONFINITE");
  if (!spec) return steps;
  std::stringstream in(spec);
  for (std::string item; std::getline(in, item, ',');) {
    int r = -1;
    long long s = 0;
    char extra = 0;
    ONEBIT_CHECK(std::sscanf(item.c_str(), "%d:%lld%c", &r, &s, &extra) == 2,
                 "ONEBIT_TRAIN_INJECT_NONFINITE: '" << item << "' is not RANK:STEP");
    if (r == rank) steps.insert(s);
  }
  return steps;
}

// One line of layers.jsonl: each layer's trust ratio in this step, and 1-bit LAMB's factor
// before and after its clamps (spec §4 step 8) once it compresses.
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

}  // namespace

void train_rank(const TrainOptions& in, const std::optional<JobInfo>& job) {
  const auto t_start = Clock::now();
  const TrainOptions o = resolve_options(in);
  validate_options(o);
  std::shared_ptr<Communicator> comm =
      job ? join_job(*job, o.backend, o.device, std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000)))
          : std::shared_ptr<Communicator>(make_single_rank_communicator());
  const int rank = comm->rank(), world = comm->size();
  ONEBIT_CHECK(o.batch % world == 0, "onebit train on rank " << rank << ": --batch " << o.batch
                                                             << " is not a multiple of the " << world << " workers");
  const int threads = threads_per_rank(o.threads, world);
  torch::set_num_threads(threads);
  flush_denormals_in_torch_threads();

  const PreparedCorpus corpus = share_corpus(o, *comm);
  const Tokenizer tokenizer = Tokenizer::from_serialized(corpus.tokenizer_model);
  BertConfig cfg = bert_preset(o.model);
  cfg.vocab = tokenizer.vocab_size(), cfg.seq = o.seq, cfg.dropout = o.dropout;
  const torch::Device device = o.device == "cuda" ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(
                                                                                     job ? job->local_rank % std::max<int64_t>(1, torch::cuda::device_count()) : 0))
                                                  : torch::Device(torch::kCPU);
  torch::manual_seed(o.seed);  // the same initial weights on every rank
  BertForMlm model(cfg);
  model->to(device);
  std::vector<at::Tensor> params;
  std::vector<std::string> names;
  for (auto& p : model->named_parameters()) names.push_back(p.key()), params.push_back(p.value());
  auto opt = make_optimizer(o, params, comm, threads);
  const int masked = set_momentum_masks(*opt, names, o.seq);
  const DeadParameters dead(*opt, names, o.seq);  // before any resume: the initial values
  check_ranks_identical(*opt, *comm, "at start");
  MlmData data(corpus, o.seq, cfg.vocab, o.seed);
  const int local_batch = o.batch / world;
  const std::set<int64_t> nonfinite_at = injected_nonfinite_steps(rank);

  int64_t start = 0;
  Totals totals;
  std::string ckpt;
  if (!o.resume.empty()) {
    ckpt = find_checkpoint(o.resume);
    const auto meta = read_checkpoint_meta(ckpt);
    check_resume_matches(meta, o, world, corpus.key);
    const std::string warning = load_checkpoint(ckpt, *opt, rank, meta.at("world_size").get<int>(),
                                                o.reset_errors_on_resize ? OnResize::kResetErrors : OnResize::kError);
    if (rank == 0 && !warning.empty()) std::cerr << "onebit train --resume: warning: " << warning << std::endl;
    start = meta.at("step");
    totals = Totals::from_json(meta.at("totals"));
    check_ranks_identical(*opt, *comm, "after loading the checkpoint");
  }

  std::optional<MetricsLog> log, layer_log;
  const nlohmann::json run_info{{"options", options_json(o)},
                                {"world_size", world},
                                {"backend", comm->backend()},
                                {"threads_per_rank", threads},
                                {"parameters", opt->flat().layout().total()},
                                {"masked_tensors", masked},
                                {"pinned_dead_elements", dead.elements()},
                                {"model", {{"hidden", cfg.hidden}, {"layers", cfg.layers}, {"heads", cfg.heads},
                                           {"intermediate", cfg.intermediate}, {"vocab", cfg.vocab}}},
                                {"corpus", {{"key", corpus.key}, {"train_documents", corpus.train_documents},
                                            {"heldout_documents", corpus.heldout_documents},
                                            {"train_sequences", data.train_sequences()},
                                            {"heldout_sequences", data.heldout_sequences()}}}};
  if (rank == 0) {
    fs::create_directories(o.out);
    std::ofstream(fs::path(o.out) / "tokenizer.model", std::ios::binary) << corpus.tokenizer_model;
    std::ofstream(fs::path(o.out) / "config.json") << run_info.dump(2) << "\n";
    if (!ckpt.empty()) carry_metrics(ckpt, o.out);
    log.emplace((fs::path(o.out) / "metrics.jsonl").string(), start);
    if (o.log_layers) {
      layer_log.emplace((fs::path(o.out) / "layers.jsonl").string(), start);
      if (start == 0) layer_log->write({{"step", 0}, {"layers", names}});
    }
  }

  comm->reset_stats();  // count training traffic only: set-up (corpus, checks) is not the algorithm's
  const uint64_t base_sent = totals.bytes_sent, base_received = totals.bytes_received;
  Progress progress(rank == 0 && o.progress, o.steps, start);
  double loss_avg = std::nan(""), heldout = std::nan("");
  const double session_train_start = totals.train_seconds;
  if (start == 0) {
    // The untrained model's held-out loss: every curve starts from the same point.
    heldout = evaluate(model, data, *comm, o.eval_samples, std::max(local_batch, 32), device);
    if (rank == 0) log->write({{"step", 0}, {"samples", 0}, {"heldout_loss", heldout}, {"total_bytes_sent", 0}});
  }
  for (int64_t step = start + 1; step <= o.steps; ++step) {
    const auto t0 = Clock::now();
    const CommStats before = comm->stats();
    const double lr = lr_at(step, o.lr, o.warmup_steps, o.steps);
    opt->param_groups().front().options().set_lr(lr);
    const char* stage = opt->core().next_stage();
    Batch b = data.train_batch(step, o.batch, rank, world);
    if (o.dropout > 0) torch::manual_seed(mix(o.seed, static_cast<uint64_t>(step), static_cast<uint64_t>(rank)));
    const double local_loss = forward_backward(model, b, o.micro_batch, device);
    if (nonfinite_at.count(step)) {
      std::cerr << "onebit train: rank " << rank << " injects a NaN into its gradient at step " << step
                << " (ONEBIT_TRAIN_INJECT_NONFINITE)" << std::endl;
      params.front().mutable_grad().view({-1})[0].fill_(std::nanf(""));
    }
    // With the 1-bit optimizers only the local gradient exists before the exchange, so every
    // optimizer clips this rank's own gradient (the same rule for all, for a fair comparison).
    const double grad_norm = o.clip > 0 ? torch::nn::utils::clip_grad_norm_(params, o.clip)
                                        : torch::nn::utils::clip_grad_norm_(params, INFINITY);
    opt->step();
    dead.restore(*opt);
    const bool applied = opt->last_step_applied();
    opt->zero_grad();
    float l = static_cast<float>(local_loss);
    comm->allreduce_sum(std::span<float>(&l, 1));
    loss_avg = l / static_cast<float>(world);
    const CommStats after = comm->stats();
    const double wall = since(t0), comm_s = after.seconds - before.seconds;
    totals.comm_seconds += comm_s, totals.compute_seconds += wall - comm_s, totals.train_seconds += wall;
    totals.skipped += applied ? 0 : 1;

    const bool eval_now = step % o.eval_every == 0 || step == o.steps;
    if (eval_now) heldout = evaluate(model, data, *comm, o.eval_samples, std::max(local_batch, 32), device);
    totals.bytes_sent = base_sent + comm->stats().bytes_sent;
    totals.bytes_received = base_received + comm->stats().bytes_received;
    const double sps = static_cast<double>((step - start) * o.batch) / (totals.train_seconds - session_train_start);
    if (rank == 0) {
      nlohmann::json rec{{"step", step}, {"samples", step * o.batch}, {"loss", loss_avg}, {"lr", lr},
                         {"stage", stage}, {"bytes_sent", after.bytes_sent - before.bytes_sent},
                         {"total_bytes_sent", totals.bytes_sent}, {"compute_seconds", wall - comm_s},
                         {"comm_seconds", comm_s}, {"grad_norm", grad_norm}};
      if (!applied) rec["skipped"] = true;
      if (eval_now) rec["heldout_loss"] = heldout;
      log->write(rec);
      if (layer_log) layer_log->write(layer_record(step, stage, opt->core()));
      progress.update(step, loss_avg, heldout, lr, stage, sps);
      if (eval_now && !progress.active())
        std::cerr << "step " << step << "/" << o.steps << "  samples " << step * o.batch << "  loss " << loss_avg
                  << "  held-out " << heldout << "  " << stage << "  sent " << human_bytes(static_cast<double>(totals.bytes_sent))
                  << "  " << static_cast<int>(sps) << " samples/s" << std::endl;
    }
    if ((o.save_every > 0 && step % o.save_every == 0) || step == o.steps) {
      nlohmann::json meta{{"step", step}, {"samples", step * o.batch}, {"totals", totals.to_json()},
                          {"options", options_json(o)}, {"world_size", world}, {"corpus_key", corpus.key}};
      save_checkpoint(o.out, step, *opt, meta, *comm);
    }
  }
  progress.finish();
  if (start >= o.steps) heldout = evaluate(model, data, *comm, o.eval_samples, std::max(local_batch, 32), device);
  check_ranks_identical(*opt, *comm, "at the end");
  const double session = totals.train_seconds - session_train_start;
  if (rank == 0) {
    nlohmann::json summary = run_info;
    summary["steps"] = o.steps;
    summary["samples"] = static_cast<int64_t>(o.steps) * o.batch;
    summary["final_train_loss"] = loss_avg;
    summary["final_heldout_loss"] = heldout;
    const int64_t freeze = opt->core().freeze_step();  // -1: LAMB; 0: auto, still undecided
    summary["freeze_step"] = freeze < 0 ? nlohmann::json(nullptr) : nlohmann::json(freeze);
    summary["heldout_sequences_evaluated"] = std::min<int64_t>(o.eval_samples, data.heldout_sequences());
    summary["totals"] = totals.to_json();
    summary["bytes_sent"] = totals.bytes_sent;  // per rank, training only (whole run, resumes included)
    summary["samples_per_second"] = session > 0 ? static_cast<double>((o.steps - start) * o.batch) / session : 0.0;
    summary["wall_seconds"] = since(t_start);  // this process: set-up, training, evaluation, checkpoints
    summary["ranks_identical"] = true;
    summary["resumed_from_step"] = start;
    std::ofstream(fs::path(o.out) / "summary.json") << summary.dump(2) << "\n";
    std::cout << "onebit train: " << o.optimizer << ", " << o.steps << " steps x " << o.batch << " sequences on "
              << world << " worker(s): held-out loss " << heldout << ", sent " << human_bytes(static_cast<double>(totals.bytes_sent))
              << " per worker, " << human_seconds(since(t_start)) << " -> " << o.out << std::endl;
  }
  comm->barrier();  // rank 0 hosts the rendezvous store: leave together
}

void train(const TrainOptions& in) {
  if (auto job = detect_job()) return train_rank(in, job);
  const TrainOptions o = resolve_options(in);
  validate_options(o);
  check_engine_available(o.backend, o.device);
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

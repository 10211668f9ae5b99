// TrainOptions back to a command line, for the workers the launcher starts (see options.hpp).
#include "train/options.hpp"

#include <charconv>

namespace onebit::train {
namespace {
// Shortest text that parses back to the same double.
std::string exact(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}
}  // namespace

std::vector<std::string> to_args(const TrainOptions& o) {
  std::vector<std::string> a;
  auto add = [&](const char* flag, const std::string& v) {
    a.emplace_back(flag);
    a.push_back(v);
  };
  add("--model", o.model);
  for (const auto& d : o.data) add("--data", d);
  add("--vocab", std::to_string(o.vocab));
  add("--seq", std::to_string(o.seq));
  add("--heldout", exact(o.heldout));
  if (!o.cache_dir.empty()) add("--cache-dir", o.cache_dir);
  add("--optimizer", o.optimizer);
  add("--batch", std::to_string(o.batch));
  add("--micro-batch", std::to_string(o.micro_batch));
  add("--steps", std::to_string(o.steps));
  add("--freeze-step", o.freeze_step == 0 ? "auto" : std::to_string(o.freeze_step));
  add("--refresh-interval", std::to_string(o.refresh_interval));
  add("--track-scales", std::to_string(o.track_scales));
  add("--scale-group", std::to_string(o.scale_group));
  if (!o.warmup_exchange.empty()) add("--warmup-exchange", o.warmup_exchange);
  add("--warmup-steps", std::to_string(o.warmup_steps));
  add("--lr", exact(o.lr));
  add("--clip", exact(o.clip));
  add("--weight-decay", exact(o.weight_decay));
  add("--beta2", exact(o.beta2));
  add("--dropout", exact(o.dropout));
  add("--seed", std::to_string(o.seed));
  add("--workers", std::to_string(o.workers));
  add("--backend", o.backend);
  add("--device", o.device);
  add("--precision", o.precision);
  add("--overlap", o.overlap);
  add("--bucket-mb", exact(o.bucket_mb));
  add("--threads", std::to_string(o.threads));
  add("--timeout", exact(o.timeout));
  add("--out", o.out);
  add("--eval-every", std::to_string(o.eval_every));
  add("--eval-samples", std::to_string(o.eval_samples));
  add("--save-every", std::to_string(o.save_every));
  if (!o.resume.empty()) add("--resume", o.resume);
  if (o.reset_errors_on_resize) a.emplace_back("--reset-errors-on-resize");
  if (!o.progress) a.emplace_back("--no-progress");
  if (o.log_layers) a.emplace_back("--log-layers");
  if (!o.inject_nonfinite.empty()) add("--inject-nonfinite", o.inject_nonfinite);
  return a;
}

}  // namespace onebit::train

// --- defaults, checks and the recorded form (used by the trainer and compare) ---
#include <cmath>

#include "onebit/error.hpp"
#include "onebit/fault_injection.hpp"
#include "onebit/half_allreduce.hpp"
#include "onebit/optimizer_registry.hpp"
#include "train/model.hpp"

namespace onebit::train {

TrainOptions resolve_options(const TrainOptions& in) {
  TrainOptions o = in;
  const BertConfig c = bert_preset(o.model);
  if (o.vocab == 0) o.vocab = c.vocab;
  if (o.seq == 0) o.seq = c.seq;
  const OptimizerKind& kind = optimizer_kind(o.optimizer);
  // The presets' rates are LAMB's (a step of lr times each layer's weight norm); Adam steps lr per
  // element, and 1-bit Adam diverges at LAMB's tiny rate (1e-2), so one without the trust ratio
  // gets a tenth.
  if (o.lr == 0) o.lr = kind.trust_ratio ? c.lr : c.lr / 10;
  if (o.dropout < 0) o.dropout = c.dropout;
  if (o.warmup_exchange.empty()) o.warmup_exchange = kind.compresses ? "bf16" : "fp32";
  if (o.warmup_steps < 0) o.warmup_steps = static_cast<int>(std::lround(kDefaultWarmupFraction * o.steps));
  if (o.eval_every <= 0) o.eval_every = std::max(1, o.steps / 20);
  return o;
}

void validate_options(const TrainOptions& o) {
  auto one_of = [](const std::string& v, std::initializer_list<const char*> ok) {
    for (const char* s : ok)
      if (v == s) return true;
    return false;
  };
  ONEBIT_CHECK(find_optimizer_kind(o.optimizer),
               "onebit train: --optimizer must be one of " << optimizer_names() << ", not '" << o.optimizer << "'");
  ONEBIT_CHECK(one_of(o.backend, {"gloo", "mpi", "nccl"}), "onebit train: --backend must be gloo, mpi or nccl, not '" << o.backend << "'");
  ONEBIT_CHECK(one_of(o.device, {"cpu", "cuda"}), "onebit train: --device must be cpu or cuda, not '" << o.device << "'");
  ONEBIT_CHECK(!(o.backend == "nccl" && o.device != "cuda"), "onebit train: --backend nccl needs --device cuda");
  ONEBIT_CHECK(one_of(o.precision, {"fp32", "bf16"}),
               "onebit train: --precision must be fp32 or bf16, not '" << o.precision << "'");
  ONEBIT_CHECK(o.steps >= 1, "onebit train: --steps must be at least 1, not " << o.steps);
  ONEBIT_CHECK(o.batch >= 1, "onebit train: --batch must be at least 1, not " << o.batch);
  ONEBIT_CHECK(o.workers >= 1, "onebit train: --workers must be at least 1, not " << o.workers);
  ONEBIT_CHECK(o.batch % o.workers == 0, "onebit train: --batch " << o.batch << " is not a multiple of --workers " << o.workers);
  ONEBIT_CHECK(o.micro_batch >= 0, "onebit train: --micro-batch must be >= 0 (0: the whole local batch), not " << o.micro_batch);
  ONEBIT_CHECK(o.freeze_step >= 0, "onebit train: --freeze-step must be a step >= 1 or auto, not " << o.freeze_step);
  ONEBIT_CHECK(o.refresh_interval >= -1, "onebit train: --refresh-interval must be >= 0 (0: off) or -1 (on with "
                                          "--freeze-step auto), not " << o.refresh_interval);
  ONEBIT_CHECK(o.track_scales >= -1 && o.track_scales <= 1,
               "onebit train: --track-scales must be 1, 0 or -1 (on with --freeze-step auto), not " << o.track_scales);
  ONEBIT_CHECK(o.scale_group == -1 || (o.scale_group >= 0 && o.scale_group % 64 == 0),
               "onebit train: --scale-group must be 0 (the paper's scales), a positive multiple of 64, or -1 (2048 with "
               "--freeze-step auto), not " << o.scale_group);
  ONEBIT_CHECK(one_of(o.warmup_exchange, {"fp32", "bf16", "fp16"}),
               "onebit train: --warmup-exchange must be fp32, bf16 or fp16, not '" << o.warmup_exchange << "'");
  ONEBIT_CHECK(o.warmup_steps >= 0 && o.warmup_steps <= o.steps,
               "onebit train: --warmup-steps must be in [0, --steps], not " << o.warmup_steps);
  ONEBIT_CHECK(o.lr > 0 && std::isfinite(o.lr), "onebit train: --lr must be positive, not " << o.lr);
  ONEBIT_CHECK(o.clip >= 0, "onebit train: --clip must be >= 0 (0: off), not " << o.clip);
  ONEBIT_CHECK(one_of(o.overlap, {"on", "off"}), "onebit train: --overlap must be on or off, not '" << o.overlap << "'");
  ONEBIT_CHECK(o.bucket_mb > 0, "onebit train: --bucket-mb must be > 0, not " << o.bucket_mb);
  ONEBIT_CHECK(o.overlap == "off" || (o.backend != "mpi" && o.device == "cpu"),
               "onebit train --overlap on: the overlapped exchange runs on a thread of its own, over Gloo with the "
               "model on the CPU (not --backend " << o.backend << " --device " << o.device << ")");
  ONEBIT_CHECK(o.weight_decay >= 0, "onebit train: --weight-decay must be >= 0, not " << o.weight_decay);
  ONEBIT_CHECK(o.beta2 >= 0 && o.beta2 < 1, "onebit train: --beta2 must be in [0, 1), not " << o.beta2);
  ONEBIT_CHECK(o.dropout >= 0 && o.dropout < 1, "onebit train: --dropout must be in [0, 1), not " << o.dropout);
  ONEBIT_CHECK(o.heldout > 0 && o.heldout < 1, "onebit train: --heldout must be in (0, 1), not " << o.heldout);
  ONEBIT_CHECK(o.eval_samples >= 1, "onebit train: --eval-samples must be at least 1, not " << o.eval_samples);
  ONEBIT_CHECK(o.save_every >= 0, "onebit train: --save-every must be >= 0, not " << o.save_every);
  ONEBIT_CHECK(o.timeout > 0, "onebit train: --timeout must be positive, not " << o.timeout);
  ONEBIT_CHECK(o.threads >= 0, "onebit train: --threads must be >= 0 (0: automatic), not " << o.threads);
  ONEBIT_CHECK(!o.out.empty(), "onebit train: --out must name a directory");
  if (!o.inject_nonfinite.empty()) parse_fault_plan(o.inject_nonfinite, "onebit train: --inject-nonfinite");
}

nlohmann::json options_json(const TrainOptions& o) {
  return {{"model", o.model}, {"data", o.data}, {"vocab", o.vocab}, {"seq", o.seq}, {"heldout", o.heldout},
          {"optimizer", o.optimizer}, {"batch", o.batch}, {"micro_batch", o.micro_batch}, {"steps", o.steps}, {"freeze_step", o.freeze_step}, {"refresh_interval", o.refresh_interval}, {"track_scales", o.track_scales}, {"scale_group", o.scale_group},
          {"warmup_exchange", o.warmup_exchange}, {"warmup_steps", o.warmup_steps}, {"lr", o.lr}, {"clip", o.clip}, {"weight_decay", o.weight_decay},
          {"beta2", o.beta2}, {"dropout", o.dropout}, {"seed", o.seed}, {"workers", o.workers},
          {"backend", o.backend}, {"device", o.device}, {"precision", o.precision}, {"overlap", o.overlap}, {"bucket_mb", o.bucket_mb}, {"threads", o.threads}, {"timeout", o.timeout},
          {"out", o.out}, {"eval_every", o.eval_every}, {"eval_samples", o.eval_samples},
          {"save_every", o.save_every}, {"log_layers", o.log_layers}, {"resume", o.resume}, {"reset_errors_on_resize", o.reset_errors_on_resize}};
}

AutoFreezeOptions auto_freeze_options(const TrainOptions& o) {
  AutoFreezeOptions a;
  const int bytes = wire_bytes(parse_wire_precision(o.warmup_exchange));
  a.max_steps = std::max<int64_t>(1, std::lround(auto_freeze_ceiling_fraction(bytes) * o.steps));
  a.min_steps = std::min<int64_t>(kAutoFreezeFloor, a.max_steps);
  return a;
}

double lr_at(int64_t step, double peak, int64_t warmup, int64_t steps) {
  if (warmup > 0 && step <= warmup) return peak * static_cast<double>(step) / static_cast<double>(warmup);
  return peak * static_cast<double>(steps - step + 1) / static_cast<double>(steps - warmup);
}

}  // namespace onebit::train

// The trainer's data and settings without processes: masking statistics, the held-out split, the
// tokenizer round trip, sharding, the learning-rate schedule, the settings, the model's loss (the
// command line that carries the settings to the workers: apps/train_cmd_test.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "onebit/error.hpp"
#include "train/corpus.hpp"
#include "train/data.hpp"
#include "train/model.hpp"
#include "train/options.hpp"
#include "train/trainer.hpp"
#include "train/optimizer_setup.hpp"
#include "train/passes.hpp"
#include "test_corpus.hpp"

namespace onebit::train {
namespace {

CorpusOptions small_corpus(const std::string& name) {
  CorpusOptions o;
  o.data = {test::write_corpus(test::tmp_dir(name) + "/text")};
  o.vocab = 200;
  o.heldout = 0.2;
  o.cache_dir = test::tmp_dir(name + "-cache");
  o.verbose = false;
  return o;
}

TEST(Masking, FifteenPercentSplitEightyTenTen) {
  constexpr int kVocab = 1000, kSeq = 128, kSeqs = 4000;
  int64_t candidates = 0, chosen = 0, as_mask = 0, as_random = 0, kept = 0;
  for (int s = 0; s < kSeqs; ++s) {
    std::vector<int32_t> ids(kSeq), orig;
    CounterRng rng(static_cast<uint64_t>(s));
    for (auto& t : ids) t = SpecialIds::kFirstPiece + static_cast<int32_t>(rng.below(kVocab - SpecialIds::kFirstPiece));
    ids[0] = SpecialIds::kCls, ids[kSeq - 1] = SpecialIds::kSep, ids[40] = SpecialIds::kSep;
    orig = ids;
    std::vector<int64_t> labels(kSeq);
    mask_sequence(ids, labels, kVocab, 7, static_cast<uint64_t>(s));
    int here = 0;
    for (int i = 0; i < kSeq; ++i) {
      if (orig[i] < SpecialIds::kFirstPiece) {
        EXPECT_EQ(labels[i], kIgnore) << "a special token was masked";
        EXPECT_EQ(ids[i], orig[i]);
        continue;
      }
      ++candidates;
      if (labels[i] == kIgnore) {
        EXPECT_EQ(ids[i], orig[i]) << "an unlabelled position changed";
        continue;
      }
      ++here, ++chosen;
      EXPECT_EQ(labels[i], orig[i]);
      if (ids[i] == SpecialIds::kMask) ++as_mask;
      else if (ids[i] == orig[i]) ++kept;
      else {
        ++as_random;
        EXPECT_GE(ids[i], SpecialIds::kFirstPiece);
        EXPECT_LT(ids[i], kVocab);
      }
    }
    EXPECT_EQ(here, std::lround(0.15 * 125));  // exactly round(15%) of the 125 maskable positions
  }
  // round(15% of 125) = 19 per sequence: 15.2%.
  EXPECT_NEAR(static_cast<double>(chosen) / static_cast<double>(candidates), 0.15, 0.003);
  const double n = static_cast<double>(chosen);
  // ~75000 choices: three standard deviations of a proportion are below 0.5%.
  EXPECT_NEAR(as_mask / n, 0.8, 0.005);
  // A random replacement equal to the original counts as kept (probability 1/995): 10% each.
  EXPECT_NEAR(as_random / n, 0.1, 0.005);
  EXPECT_NEAR(kept / n, 0.1, 0.005);
}

TEST(Masking, IsAPureFunctionOfSeedAndStream) {
  std::vector<int32_t> a(64, 100), b(64, 100), c(64, 100);
  std::vector<int64_t> la(64), lb(64), lc(64);
  mask_sequence(a, la, 500, 3, 42);
  mask_sequence(b, lb, 500, 3, 42);
  mask_sequence(c, lc, 500, 3, 43);
  EXPECT_EQ(a, b);
  EXPECT_EQ(la, lb);
  EXPECT_NE(la, lc);
}

TEST(Corpus, HeldOutDocumentsNeverReachTraining) {
  const CorpusOptions o = small_corpus("split");
  const PreparedCorpus c = prepare_corpus(o);
  ASSERT_GT(c.train_documents, 0);
  ASSERT_GT(c.heldout_documents, 0);
  const Tokenizer tok = Tokenizer::from_serialized(c.tokenizer_model);
  // The streams are exactly the training documents and exactly the held-out ones.
  std::vector<int32_t> train, held;
  int64_t ntrain = 0, nheld = 0;
  for (const auto& d : read_documents(o.data)) {
    auto ids = tok.encode(d.text);
    auto& dst = is_heldout(d.name, o.heldout) ? held : train;
    (is_heldout(d.name, o.heldout) ? nheld : ntrain)++;
    dst.insert(dst.end(), ids.begin(), ids.end());
    dst.push_back(SpecialIds::kSep);
  }
  EXPECT_EQ(c.train, train);
  EXPECT_EQ(c.heldout, held);
  EXPECT_EQ(c.train_documents, ntrain);
  EXPECT_EQ(c.heldout_documents, nheld);
  // The second preparation comes from the cache, identical.
  const PreparedCorpus again = prepare_corpus(o);
  EXPECT_EQ(again.train, c.train);
  EXPECT_EQ(again.tokenizer_model, c.tokenizer_model);
}

TEST(Corpus, SplitFractionIsAboutRight) {
  int held = 0;
  for (int i = 0; i < 20000; ++i) held += is_heldout("0:dir/file" + std::to_string(i) + ".rst.txt", 0.05);
  EXPECT_NEAR(held / 20000.0, 0.05, 0.006);
}

TEST(Tokenizer, RoundTrip) {
  const PreparedCorpus c = prepare_corpus(small_corpus("roundtrip"));
  const Tokenizer tok = Tokenizer::from_serialized(c.tokenizer_model);
  EXPECT_GT(tok.vocab_size(), 50);
  for (const std::string s : {"the model learns a small language from text.", "every worker sends one bit per value.",
                              "python function returns list of strings."}) {
    const auto ids = tok.encode(s);
    ASSERT_FALSE(ids.empty());
    for (int32_t id : ids) EXPECT_GE(id, SpecialIds::kFirstPiece) << "no special ids from plain text";
    EXPECT_EQ(tok.decode(ids), s);
  }
  // Words the corpus never had still round-trip (byte pieces are off, so unknown letters become
  // [UNK]; these letters all occur in the corpus).
  EXPECT_EQ(tok.decode(tok.encode("stream and momentum.")), "stream and momentum.");
}

TEST(Data, PackedSequencesAndShardsPartitionTheGlobalBatch) {
  const PreparedCorpus c = prepare_corpus(small_corpus("shards"));
  const auto packed = pack_sequences(c.train, 16);
  ASSERT_EQ(packed.size() % 16, 0u);
  for (size_t i = 0; i < packed.size(); i += 16) {
    EXPECT_EQ(packed[i], SpecialIds::kCls);
    EXPECT_EQ(packed[i + 15], SpecialIds::kSep);
  }
  MlmData one(c, 16, 200, 5), four(c, 16, 200, 5);
  for (int64_t step : {1, 2, 7}) {
    Batch whole = one.train_batch(step, 8, 0, 1);
    std::vector<torch::Tensor> parts;
    for (int r = 0; r < 4; ++r) parts.push_back(four.train_batch(step, 8, r, 4).ids);
    EXPECT_TRUE(torch::equal(whole.ids, torch::cat(parts))) << "step " << step;
  }
  // Every sequence once per epoch.
  std::set<int64_t> seen;
  for (int64_t g = 0; g < one.train_sequences(); ++g) seen.insert(one.train_index(g));
  EXPECT_EQ(static_cast<int64_t>(seen.size()), one.train_sequences());
  EXPECT_THROW(one.train_batch(1, 10, 0, 4), Error);
}

TEST(Schedule, LinearWarmupThenLinearDecay) {
  EXPECT_DOUBLE_EQ(lr_at(1, 1.0, 10, 100), 0.1);
  EXPECT_DOUBLE_EQ(lr_at(10, 1.0, 10, 100), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(11, 1.0, 10, 100), 1.0);
  EXPECT_LT(lr_at(12, 1.0, 10, 100), 1.0);
  EXPECT_NEAR(lr_at(100, 1.0, 10, 100), 1.0 / 90, 1e-12);  // the last step still learns
  EXPECT_DOUBLE_EQ(lr_at(1, 2.0, 0, 10), 2.0);
  EXPECT_DOUBLE_EQ(lr_at(10, 2.0, 0, 10), 0.2);
}

TEST(Options, DefaultsAreResolved) {
  TrainOptions o;
  o.steps = 1000;
  const TrainOptions r = resolve_options(o);
  EXPECT_EQ(r.freeze_step, 0);  // auto, between kAutoFreezeFloor and 40% of the steps (bf16 warmup)
  const AutoFreezeOptions a = auto_freeze_options(r);
  EXPECT_EQ(a.min_steps, kAutoFreezeFloor);
  EXPECT_EQ(a.max_steps, std::lround(kAutoFreezeCeilingFraction * 2 * 1000));
  o.steps = 10;
  EXPECT_EQ(auto_freeze_options(resolve_options(o)).min_steps, 4);  // the ceiling comes first
  o.steps = 1000;
  EXPECT_EQ(r.warmup_exchange, "bf16");  // the 1-bit optimizers' default; lamb's is fp32
  o.optimizer = "lamb";
  EXPECT_EQ(resolve_options(o).warmup_exchange, "fp32");
  o.optimizer = "onebit-lamb";
  o.warmup_exchange = "fp32";  // the ceiling is a byte budget: an fp32 warmup gets half the steps
  EXPECT_EQ(auto_freeze_options(resolve_options(o)).max_steps * 2, a.max_steps);
  o.warmup_exchange.clear();
  EXPECT_EQ(r.warmup_steps, 100);
  EXPECT_EQ(r.seq, 64);
  EXPECT_EQ(r.vocab, 1024);
  EXPECT_EQ(r.eval_every, 50);
}

TEST(Options, BadSettingsAreNamed) {
  TrainOptions o = resolve_options(TrainOptions{});
  auto expect_error = [](TrainOptions bad, const std::string& what) {
    try {
      validate_options(bad);
      ADD_FAILURE() << "accepted a bad " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  auto b = o; b.batch = 10, b.workers = 4; expect_error(b, "--batch");
  b = o; b.optimizer = "sgd"; expect_error(b, "--optimizer");
  b = o; b.freeze_step = -1; expect_error(b, "--freeze-step");
  b = o; b.micro_batch = -1; expect_error(b, "--micro-batch");
  b = o; b.backend = "nccl"; expect_error(b, "--backend nccl");
  b = o; b.lr = -1; expect_error(b, "--lr");
  b = o; b.warmup_exchange = "fp8"; expect_error(b, "--warmup-exchange must be fp32, bf16 or fp16");
}

TEST(Model, LossStartsNearUniformAndCoversOnlyMaskedPositions) {
  BertConfig c = bert_preset("tiny");
  c.vocab = 300, c.seq = 16;
  torch::manual_seed(1);
  BertForMlm m(c);
  auto ids = torch::randint(SpecialIds::kFirstPiece, 300, {4, 16}, torch::kLong);
  auto labels = torch::full({4, 16}, kIgnore, torch::kLong);
  labels.index_put_({torch::indexing::Slice(), 3}, ids.index({torch::indexing::Slice(), 3}));
  const double loss = m->mlm_loss(ids, labels).item<double>();
  EXPECT_NEAR(loss, std::log(300.0), 0.5);
  EXPECT_EQ(m->encode(ids).sizes(), (std::vector<int64_t>{4, 16, 128}));
  // The head is tied: no separate decoder matrix among the parameters.
  int64_t vocab_sized = 0;
  for (const auto& p : m->named_parameters())
    if (p.value().dim() == 2 && p.value().size(0) == 300) ++vocab_sized;
  EXPECT_EQ(vocab_sized, 1);
  for (const char* preset : {"mini", "small", "base", "large"}) EXPECT_NO_THROW(bert_preset(preset));
  EXPECT_EQ(bert_preset("base").hidden, 768);
  EXPECT_EQ(bert_preset("large").layers, 24);
  EXPECT_THROW(bert_preset("huge"), Error);
}

// --micro-batch: the accumulated gradient is the whole batch's up to fp32 summation order, for a
// micro-batch that does not divide the batch, and the loss is the batch's.
TEST(Model, MicroBatchesAccumulateTheWholeBatchGradient) {
  BertConfig c = bert_preset("tiny");
  c.vocab = 300, c.seq = 16;
  torch::manual_seed(2);
  BertForMlm m(c);
  Batch b;
  b.ids = torch::randint(SpecialIds::kFirstPiece, 300, {7, 16}, torch::kLong);
  b.labels = torch::full({7, 16}, kIgnore, torch::kLong);
  // Different numbers of masked tokens per sequence, one sequence with none.
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t col = 1; col < 16; col += 1 + static_cast<int>(r))
      b.labels.index_put_({r, col}, b.ids.index({r, col}));
  auto grads = [&](int micro, double& loss) {
    for (auto& p : m->parameters()) p.mutable_grad() = at::Tensor();
    loss = forward_backward(m, b, micro, torch::kCPU);
    std::vector<at::Tensor> g;
    for (auto& p : m->parameters()) g.push_back(p.grad().clone());
    return g;
  };
  double whole_loss = 0, micro_loss = 0;
  const auto whole = grads(0, whole_loss);
  const auto micro = grads(3, micro_loss);
  EXPECT_NEAR(micro_loss, whole_loss, 1e-5 * whole_loss);
  ASSERT_EQ(whole.size(), micro.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < whole.size(); ++i) {
    diff += (whole[i] - micro[i]).pow(2).sum().item<double>();
    norm += whole[i].pow(2).sum().item<double>();
  }
  EXPECT_GT(norm, 0);
  EXPECT_LT(std::sqrt(diff / norm), 1e-5);
  double one_loss = 0;
  grads(7, one_loss);  // a micro-batch of the whole batch is one pass
  EXPECT_EQ(one_loss, whole_loss);
}

TEST(Model, OnebitLambMasksDeadPositionAndTokenTypeRows) {
  BertConfig c = bert_preset("tiny");
  c.vocab = 100;
  BertForMlm m(c);
  std::vector<at::Tensor> params;
  std::vector<std::string> names;
  for (auto& p : m->named_parameters()) names.push_back(p.key()), params.push_back(p.value());
  TrainOptions o = resolve_options(TrainOptions{});
  o.optimizer = "onebit-lamb";
  auto opt = make_optimizer(o, params, nullptr, 1);
  EXPECT_EQ(set_momentum_masks(*opt, names, 64), 2 + c.layers);  // position, token type, key biases
  BertForMlm other(c);
  std::vector<at::Tensor> other_params;
  for (auto& p : other->named_parameters()) other_params.push_back(p.value());
  o.optimizer = "lamb";
  auto lamb = make_optimizer(o, other_params, nullptr, 1);
  EXPECT_EQ(set_momentum_masks(*lamb, names, 64), 0);
}

TEST(Model, OnebitAdamKeepsDeadParametersWhereTheyStarted) {
  BertConfig c = bert_preset("tiny");
  c.vocab = 100, c.seq = 16;
  torch::manual_seed(3);
  BertForMlm m(c);
  std::vector<at::Tensor> params;
  std::vector<std::string> names;
  for (auto& p : m->named_parameters()) names.push_back(p.key()), params.push_back(p.value());
  TrainOptions o = resolve_options(TrainOptions{});
  o.optimizer = "onebit-adam", o.freeze_step = 1, o.lr = 1e-3;
  auto opt = make_optimizer(o, params, nullptr, 1);
  const DeadParameters dead(*opt, names, c.seq);
  // position rows 16..511, token-type row 1, one key bias per layer
  EXPECT_EQ(dead.elements(), static_cast<size_t>((512 - 16) * 128 + 128 + c.layers * 128));
  const at::Tensor before = opt->flat().params().clone();
  for (int step = 0; step < 4; ++step) {
    auto ids = torch::randint(SpecialIds::kFirstPiece, 100, {4, 16}, torch::kLong);
    m->mlm_loss(ids, ids).backward();
    opt->step();
    dead.restore(*opt);
    opt->zero_grad();
  }
  const at::Tensor after = opt->flat().params();
  size_t key_bias = 0;
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i].ends_with(kKeyBiasSuffix)) key_bias = i;
  const auto& kb = opt->flat().layout()[key_bias];
  EXPECT_TRUE(torch::equal(after.narrow(0, static_cast<int64_t>(kb.offset), static_cast<int64_t>(kb.size)),
                           before.narrow(0, static_cast<int64_t>(kb.offset), static_cast<int64_t>(kb.size))));
  EXPECT_FALSE(torch::equal(after, before)) << "nothing trained";
  // Without the pin the key bias moves (its momentum is never exactly zero after compression).
  BertForMlm free_model(c);
  std::vector<at::Tensor> free_params;
  for (auto& p : free_model->named_parameters()) free_params.push_back(p.value());
  auto free_opt = make_optimizer(o, free_params, nullptr, 1);
  const at::Tensor free_before = free_opt->flat().params().clone();
  for (int step = 0; step < 4; ++step) {
    auto ids = torch::randint(SpecialIds::kFirstPiece, 100, {4, 16}, torch::kLong);
    free_model->mlm_loss(ids, ids).backward();
    free_opt->step();
    free_opt->zero_grad();
  }
  EXPECT_FALSE(torch::equal(free_opt->flat().params().narrow(0, static_cast<int64_t>(kb.offset), static_cast<int64_t>(kb.size)),
                            free_before.narrow(0, static_cast<int64_t>(kb.offset), static_cast<int64_t>(kb.size))));
}

}  // namespace
}  // namespace onebit::train

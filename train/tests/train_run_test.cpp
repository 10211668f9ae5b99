// `onebit train` and `onebit compare` as real processes (the onebit tool): workers over Gloo stay
// identical, resumes continue bit for bit (another worker count only when asked), a NaN is skipped
// everywhere, a killed or stopped worker ends the others with its rank named, compare writes its
// results, and an unusable backend is a clear error.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/serialize.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "onebit/mpi_comm.hpp"
#include "proc/proc.hpp"
#include "test_corpus.hpp"
#include "train/distributed.hpp"

namespace fs = std::filesystem;

namespace onebit::train {
namespace {

using Clock = std::chrono::steady_clock;

struct Proc {
  pid_t pid = -1;
  std::string log;
};

// Starts onebit with `args`, stdout and stderr to `log`, with `env` ("NAME=value") added.
Proc start(const std::vector<std::string>& args, const std::string& log, const std::vector<std::string>& env = {}) {
  std::vector<std::string> argv{ONEBIT_CLI};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> c;
  for (auto& a : argv) c.push_back(a.data());
  c.push_back(nullptr);
  Proc p{::fork(), log};
  if (p.pid == 0) {
    FILE* f = std::freopen(log.c_str(), "w", stdout);
    if (f) ::dup2(::fileno(stdout), 2);
    for (const char* v : {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_RANK"}) ::unsetenv(v);
    for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
    ::execv(c[0], c.data());
    ::_exit(127);
  }
  return p;
}

// Exit status (or 128 + signal), or -1 if it ran past `seconds` (then it is killed).
int wait_for(Proc& p, double seconds) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  for (;;) {
    int st = 0;
    if (::waitpid(p.pid, &st, WNOHANG) == p.pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (Clock::now() > deadline) {
      ::kill(p.pid, SIGKILL);
      ::waitpid(p.pid, nullptr, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The step records of metrics.jsonl (step 0, the untrained model's held-out loss, left out).
std::vector<nlohmann::json> metrics(const std::string& dir, bool with_step0 = false) {
  std::vector<nlohmann::json> out;
  std::ifstream in(dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    if (with_step0 || j["step"].get<int>() > 0) out.push_back(std::move(j));
  }
  return out;
}

class TrainRun : public ::testing::Test {
 protected:
  // Each test its own corpus and cache: ctest may run them in parallel.
  void SetUp() override {
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    corpus_ = test::write_corpus(test::tmp_dir(name + "-corpus") + "/text");
    cache_ = test::tmp_dir(name + "-cache");
  }
  // The settings every run here shares: a tiny model on the synthetic corpus, `workers` workers.
  std::vector<std::string> tiny(const std::string& out, std::vector<std::string> more, int workers = 2) const {
    std::vector<std::string> a{"train", "--data", corpus_, "--cache-dir", cache_, "--vocab", "200", "--seq", "32",
                               "--heldout", "0.2", "--batch", "8", "--workers", std::to_string(workers), "--threads", "1",
                               "--eval-samples", "16", "--out", out, "--no-progress"};
    if (std::find(more.begin(), more.end(), "--timeout") == more.end()) a.insert(a.end(), {"--timeout", "30"});
    a.insert(a.end(), more.begin(), more.end());
    return a;
  }
  std::string corpus_, cache_;
};

TEST_F(TrainRun, TwoWorkersStayIdenticalAndCompressionSendsAboutOneBitPerValue) {
  const std::string out = test::tmp_dir("two-workers") + "/run";
  Proc p = start(tiny(out, {"--optimizer", "onebit-lamb", "--steps", "6", "--freeze-step", "3", "--eval-every", "3"}),
                 out + ".log");
  ASSERT_EQ(wait_for(p, 120), 0) << slurp(p.log);
  const auto summary = nlohmann::json::parse(slurp(out + "/summary.json"));
  // The run compares every rank's weight fingerprint at the end and fails if any differs.
  EXPECT_TRUE(summary["ranks_identical"].get<bool>());
  EXPECT_EQ(summary["world_size"], 2);
  const auto m = metrics(out);
  ASSERT_EQ(m.size(), 6u);
  uint64_t warm = 0, comp = 0;
  for (const auto& r : m) {
    const bool w = r["step"].get<int>() <= 3;
    EXPECT_EQ(r["stage"], w ? "warmup" : "compression");
    EXPECT_TRUE(std::isfinite(r["loss"].get<double>()));
    (w ? warm : comp) = std::max<uint64_t>(w ? warm : comp, r["bytes_sent"].get<uint64_t>());
    EXPECT_GE(r["comm_seconds"].get<double>(), 0.0);
    // The step's breakdown: its parts are real times and fit in the step (compute + comm).
    const double fb = r["forward_backward_seconds"], opt = r["optimizer_seconds"], ex = r["exchange_seconds"];
    EXPECT_GT(fb, 0.0);
    EXPECT_GT(opt, 0.0);
    EXPECT_GT(ex, 0.0) << "two workers exchange at every step";
    EXPECT_LE(fb + opt + ex, r["compute_seconds"].get<double>() + r["comm_seconds"].get<double>() + 1e-6);
    EXPECT_LE(ex, r["comm_seconds"].get<double>() + 1e-9);
  }
  EXPECT_TRUE(m[2].contains("heldout_loss") && m[5].contains("heldout_loss"));
  EXPECT_GT(summary["totals"]["forward_backward_seconds"].get<double>(), 0.0);
  const auto all = metrics(out, true);
  ASSERT_EQ(all.size(), 7u);
  EXPECT_EQ(all[0]["step"], 0);
  EXPECT_GT(all[0]["heldout_loss"].get<double>(), m[5]["heldout_loss"].get<double>()) << "training did not lower the loss";
  ASSERT_GT(comp, 0u);
  // The default warmup exchange is bf16: 16 bits a value against the compression's 1 (and its scales).
  EXPECT_EQ(summary["options"]["warmup_exchange"], "bf16");
  EXPECT_GT(static_cast<double>(warm) / static_cast<double>(comp), 12.5) << "warmup " << warm << " B/step, compression " << comp;
  EXPECT_TRUE(fs::exists(out + "/tokenizer.model"));
  EXPECT_TRUE(fs::exists(out + "/checkpoints/latest"));
}

at::Tensor read_tensor(const std::string& file, const std::string& key) {
  torch::serialize::InputArchive a;
  a.load_from(file);
  at::Tensor t;
  a.read(key, t, /*is_buffer=*/key != "params");
  return t;
}

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.nbytes()) == 0;
}

// Every tensor of every rank's optimizer state in two checkpoints, both error buffers included.
void expect_same_checkpoint(const std::string& a, const std::string& b, int workers) {
  EXPECT_TRUE(same_bits(read_tensor(a + "/model.pt", "params"), read_tensor(b + "/model.pt", "params"))) << a << " " << b;
  for (int rank = 0; rank < workers; ++rank) {
    const std::string f = "/optimizer_rank" + std::to_string(rank) + ".pt";
    torch::serialize::InputArchive probe;
    probe.load_from(a + f);
    c10::IValue names;
    ASSERT_TRUE(probe.try_read("onebit_tensor_names", names));
    std::stringstream list(names.toStringRef());
    int compared = 0;
    for (std::string name; std::getline(list, name, ',');) {
      EXPECT_TRUE(same_bits(read_tensor(a + f, "onebit_t_" + name), read_tensor(b + f, "onebit_t_" + name)))
          << name << " of rank " << rank << ": " << a << " vs " << b;
      ++compared;
    }
    EXPECT_GE(compared, 8) << names.toStringRef();
    EXPECT_NE(names.toStringRef().find("worker_error"), std::string::npos);
  }
}

// 4 workers, freeze_step 5: one run straight through 8 steps; one resumed from its step 4 (warmup),
// saving at step 6; one resumed from that step 6 (compression, error buffers live). All three end
// with the same bits everywhere.
TEST_F(TrainRun, ResumeContinuesBitForBitInBothStagesOn4Workers) {
  const std::string root = test::tmp_dir("resume");
  const auto common = std::vector<std::string>{"--optimizer", "onebit-lamb", "--steps", "8", "--freeze-step", "5",
                                               "--eval-every", "4"};
  auto with = [&](const std::string& out, std::vector<std::string> more) {
    more.insert(more.begin(), common.begin(), common.end());
    return tiny(root + "/" + out, more, 4);
  };
  Proc whole = start(with("whole", {"--save-every", "4"}), root + "/whole.log");
  ASSERT_EQ(wait_for(whole, 240), 0) << slurp(whole.log);
  Proc warm = start(with("from_warmup", {"--save-every", "6", "--resume", root + "/whole/checkpoints/step_00000004"}),
                    root + "/from_warmup.log");
  ASSERT_EQ(wait_for(warm, 240), 0) << slurp(warm.log);
  Proc comp = start(with("from_compression", {"--resume", root + "/from_warmup/checkpoints/step_00000006"}),
                    root + "/from_compression.log");
  ASSERT_EQ(wait_for(comp, 240), 0) << slurp(comp.log);

  const auto m = metrics(root + "/whole");
  ASSERT_EQ(m.size(), 8u);
  EXPECT_EQ(m[3]["stage"], "warmup");       // step 4: the first resume starts in warmup
  EXPECT_EQ(m[5]["stage"], "compression");  // step 6: the second in compression
  const std::string last = "/checkpoints/step_00000008";
  for (const char* run : {"from_warmup", "from_compression"}) {
    SCOPED_TRACE(run);
    expect_same_checkpoint(root + "/whole" + last, root + "/" + run + last, 4);
    const auto r = metrics(root + "/" + run);
    ASSERT_EQ(r.size(), 8u);  // the steps before the resume carried over from the checkpoint's run
    for (size_t i = 0; i < 8; ++i) {
      EXPECT_EQ(m[i]["loss"].get<double>(), r[i]["loss"].get<double>()) << "step " << i + 1;
      EXPECT_EQ(m[i]["bytes_sent"], r[i]["bytes_sent"]) << "step " << i + 1;
    }
    EXPECT_EQ(m[7]["heldout_loss"].get<double>(), r[7]["heldout_loss"].get<double>());
  }
  // A resume with different math is refused, naming the setting.
  auto bad = tiny(root + "/bad", {"--optimizer", "onebit-lamb", "--steps", "8", "--freeze-step", "3",
                                  "--resume", root + "/whole"}, 4);
  Proc refused = start(bad, root + "/bad.log");
  EXPECT_EQ(wait_for(refused, 60), 1);
  EXPECT_NE(slurp(refused.log).find("freeze_step"), std::string::npos) << slurp(refused.log);
  // A truncated state file is a clear error on its rank, not a crash.
  const std::string cut = root + "/cut";
  fs::copy(root + "/whole" + last, cut, fs::copy_options::recursive);
  fs::resize_file(cut + "/optimizer_rank1.pt", fs::file_size(cut + "/optimizer_rank1.pt") / 2);
  Proc truncated = start(with("truncated", {"--resume", cut}), root + "/truncated.log");
  EXPECT_EQ(wait_for(truncated, 60), 1);
  const std::string why = slurp(truncated.log);
  EXPECT_NE(why.find("onebit train --resume from " + cut + " on rank 1 failed"), std::string::npos) << why;
  EXPECT_NE(why.find("worker rank 1 (pid"), std::string::npos) << why;
  EXPECT_EQ(why.find("killed by signal"), std::string::npos) << why;
}

// A checkpoint of 2 workers resumed by 4: an error naming both counts and the flag; with the flag,
// a warning, and the 4 workers go on identically from the same step.
// --overlap on: the warmup's bf16 exchange runs during backward, bucket by bucket, and the run is
// bit for bit the run without overlap (4 workers; --clip 0, since an overlapped step clips the
// average). The compression steps exchange after backward either way. metrics.jsonl says how much
// of each overlapped exchange backward hid.
TEST_F(TrainRun, OverlapWithBackwardKeepsEveryBitAndSaysWhatItHid) {
  const std::string root = test::tmp_dir("overlap");
  auto with = [&](const std::string& out, const std::string& overlap) {
    return tiny(root + "/" + out, {"--optimizer", "onebit-lamb", "--steps", "8", "--freeze-step", "4", "--clip", "0",
                                   "--eval-every", "8", "--overlap", overlap, "--bucket-mb", "0.05"}, 4);
  };
  Proc off = start(with("off", "off"), root + "/off.log");
  ASSERT_EQ(wait_for(off, 240), 0) << slurp(off.log);
  Proc on = start(with("on", "on"), root + "/on.log");
  ASSERT_EQ(wait_for(on, 240), 0) << slurp(on.log);
  expect_same_checkpoint(root + "/off/checkpoints/step_00000008", root + "/on/checkpoints/step_00000008", 4);
  const auto m = metrics(root + "/on"), m_off = metrics(root + "/off");
  ASSERT_EQ(m.size(), 8u);
  for (size_t i = 0; i < 8; ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    EXPECT_EQ(m[i]["loss"].get<double>(), m_off[i]["loss"].get<double>());
    EXPECT_FALSE(m_off[i].contains("buckets"));
    if (i >= 4) {
      EXPECT_FALSE(m[i].contains("buckets")) << "a compression step does not overlap";
      continue;
    }
    EXPECT_GT(m[i]["buckets"].get<int>(), 4);
    const double hidden = m[i]["exchange_hidden_fraction"];
    EXPECT_GE(hidden, 0.0);
    EXPECT_LE(hidden, 1.0);
    EXPECT_GE(m[i]["exchange_hidden_seconds"].get<double>(), 0.0);
  }
  // Where it cannot work, it says why before any worker starts.
  Proc mpi = start(tiny(root + "/mpi", {"--backend", "mpi", "--overlap", "on"}), root + "/mpi.log");
  EXPECT_EQ(wait_for(mpi, 60), 1);
  EXPECT_NE(slurp(mpi.log).find("--overlap on: the overlapped exchange runs on a thread of its own"), std::string::npos)
      << slurp(mpi.log);
}

TEST_F(TrainRun, AnotherWorkerCountNeedsResetErrorsOnResize) {
  const std::string root = test::tmp_dir("resize");
  const std::vector<std::string> common{"--optimizer", "onebit-lamb", "--steps", "6", "--freeze-step", "2",
                                        "--eval-every", "3", "--save-every", "3"};
  Proc two = start(tiny(root + "/two", common), root + "/two.log");
  ASSERT_EQ(wait_for(two, 180), 0) << slurp(two.log);
  auto resume = common;
  resume.insert(resume.end(), {"--resume", root + "/two/checkpoints/step_00000003"});
  Proc refused = start(tiny(root + "/refused", resume, 4), root + "/refused.log");
  EXPECT_EQ(wait_for(refused, 60), 1);
  const std::string why = slurp(refused.log);
  EXPECT_NE(why.find("made by 2 workers, this run has 4"), std::string::npos) << why;
  EXPECT_NE(why.find("--reset-errors-on-resize"), std::string::npos) << why;
  resume.push_back("--reset-errors-on-resize");
  Proc four = start(tiny(root + "/four", resume, 4), root + "/four.log");
  ASSERT_EQ(wait_for(four, 180), 0) << slurp(four.log);
  EXPECT_NE(slurp(four.log).find("warning: onebit-lamb on rank 0: the state was saved by 2 ranks, this run has 4; "
                                 "worker_error and server_error restart from zero"),
            std::string::npos)
      << slurp(four.log);
  const auto summary = nlohmann::json::parse(slurp(root + "/four/summary.json"));
  EXPECT_TRUE(summary["ranks_identical"].get<bool>());
  EXPECT_EQ(summary["world_size"], 4);
  EXPECT_EQ(summary["resumed_from_step"], 3);
  const auto m = metrics(root + "/four");
  ASSERT_EQ(m.size(), 6u);
  for (const auto& r : m) EXPECT_TRUE(std::isfinite(r["loss"].get<double>()));
}

// A NaN put into one rank's contribution to the optimizer's exchange (--inject-nonfinite, a
// communicator decorator), once in warmup (step 2, rank 1: the bf16 all-to-all of its gradient) and
// once in compression (step 5, rank 0: the all-gather of its worker scale): both steps skipped by
// every rank, counted in metrics.jsonl and summary.json.
TEST_F(TrainRun, ANonFiniteGradientOnOneRankSkipsTheStepEverywhere) {
  const std::string out = test::tmp_dir("nan") + "/run";
  Proc p = start(tiny(out, {"--optimizer", "onebit-lamb", "--steps", "6", "--freeze-step", "3", "--eval-every", "3",
                            "--inject-nonfinite", "1:2,0:5"}),
                 out + ".log");
  ASSERT_EQ(wait_for(p, 120), 0) << slurp(p.log);
  const auto m = metrics(out);
  ASSERT_EQ(m.size(), 6u);
  for (const auto& r : m) {
    const int step = r["step"].get<int>();
    EXPECT_EQ(r.contains("skipped"), step == 2 || step == 5) << r.dump();
    EXPECT_TRUE(std::isfinite(r["loss"].get<double>()));
  }
  // One skip in warmup moves the stage change one step later: steps 1, 3, 4 are the 3 warmup steps.
  EXPECT_EQ(m[1]["stage"], "warmup");
  EXPECT_EQ(m[4]["stage"], "compression");
  const auto summary = nlohmann::json::parse(slurp(out + "/summary.json"));
  EXPECT_EQ(summary["totals"]["skipped_steps"], 2);
  EXPECT_TRUE(summary["ranks_identical"].get<bool>());
  const std::string ckpt = out + "/checkpoints/step_00000006/optimizer_rank1.pt";
  EXPECT_EQ(read_tensor(ckpt, "onebit_c_skipped").item<int64_t>(), 2);
  EXPECT_EQ(read_tensor(ckpt, "onebit_c_step").item<int64_t>(), 4);
  const std::string log = slurp(p.log);
  EXPECT_NE(log.find("rank 1 injects a NaN into its alltoall contribution at step 2"), std::string::npos) << log;
  EXPECT_NE(log.find("rank 0 injects a NaN into its allgather contribution at step 5"), std::string::npos) << log;
}

// A bad fault plan is refused before any worker starts, naming the item.
TEST_F(TrainRun, ABadFaultPlanIsNamed) {
  const std::string out = test::tmp_dir("bad-plan") + "/run";
  Proc p = start(tiny(out, {"--steps", "2", "--inject-nonfinite", "1:2,one:5"}), out + ".log");
  EXPECT_EQ(wait_for(p, 60), 1);
  const std::string log = slurp(p.log);
  EXPECT_NE(log.find("--inject-nonfinite: 'one:5' is not RANK:STEP"), std::string::npos) << log;
}

std::map<int, pid_t> worker_pids(const std::string& out) {
  std::ifstream pids(out + "/workers.pid");
  std::map<int, pid_t> by_rank;
  for (int r, pid; pids >> r >> pid;) by_rank[r] = pid;
  return by_rank;
}

bool gone(pid_t pid) { return ::kill(pid, 0) != 0; }

// kill -9 of one of 4 workers in the middle of training: the launcher names it, stops the rest and
// exits non-zero, all within 90 s.
TEST_F(TrainRun, AKilledWorkerEndsTheLaunchQuickly) {
  const std::string out = test::tmp_dir("killed") + "/run";
  Proc p = start(tiny(out, {"--optimizer", "onebit-lamb", "--freeze-step", "3", "--steps", "100000", "--eval-every",
                            "100000"}, 4),
                 out + ".log");
  // Wait for training to be under way, in the compression stage.
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  while (metrics(out).size() < 4 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_GE(metrics(out).size(), 4u) << slurp(p.log);
  const auto by_rank = worker_pids(out);
  ASSERT_EQ(by_rank.size(), 4u);
  const auto t0 = Clock::now();
  ASSERT_EQ(::kill(by_rank.at(2), SIGKILL), 0);
  const int rc = wait_for(p, 90);
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  std::cout << "launcher exited " << seconds << " s after kill -9 of worker rank 2 of 4" << std::endl;
  EXPECT_NE(rc, 0);
  EXPECT_NE(rc, -1) << "the launcher did not exit within 90 s";
  EXPECT_NE(slurp(p.log).find("worker rank 2"), std::string::npos) << slurp(p.log);
  for (const auto& [rank, pid] : by_rank) EXPECT_TRUE(gone(pid)) << "rank " << rank << " is still running";
}

// Workers started without the launcher (as torchrun or a cluster scheduler would): when one is
// killed with kill -9 mid-step, or stops (SIGSTOP), every other one ends by itself, non-zero,
// within its --timeout, with an error naming the lost rank.
class LostRank : public TrainRun, public ::testing::WithParamInterface<int> {};

TEST_P(LostRank, EveryOtherWorkerEndsNamingIt) {
  const int sig = GetParam(), lost = 2, workers = 4;
  const double timeout = 10;
  const std::string out = test::tmp_dir(std::string("lost-") + (sig == SIGKILL ? "kill" : "stop")) + "/run";
  const int port = proc::free_loopback_port();
  std::vector<Proc> ws;
  for (int r = 0; r < workers; ++r) {
    auto args = tiny(out, {"--optimizer", "onebit-lamb", "--freeze-step", "3", "--steps", "100000", "--eval-every",
                           "100000", "--timeout", std::to_string(timeout)}, workers);
    ws.push_back(start(args, out + ".rank" + std::to_string(r) + ".log",
                       {"RANK=" + std::to_string(r), "WORLD_SIZE=" + std::to_string(workers), "MASTER_ADDR=127.0.0.1",
                        "MASTER_PORT=" + std::to_string(port)}));
  }
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  while (metrics(out).size() < 4 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_GE(metrics(out).size(), 4u) << slurp(ws[0].log);
  const auto t0 = Clock::now();
  ASSERT_EQ(::kill(ws[lost].pid, sig), 0);
  for (int r = 0; r < workers; ++r) {
    if (r == lost) continue;
    const int rc = wait_for(ws[static_cast<size_t>(r)], 90);
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    std::cout << "rank " << r << " exited with " << rc << " " << seconds << " s after " << strsignal(sig)
              << " of rank " << lost << std::endl;
    const std::string log = slurp(ws[static_cast<size_t>(r)].log);
    EXPECT_NE(rc, -1) << "rank " << r << " did not end within 90 s";
    EXPECT_NE(rc, 0) << log;
    EXPECT_LT(seconds, timeout + 5) << "rank " << r;
    EXPECT_NE(log.find("lost: rank " + std::to_string(lost)), std::string::npos) << "rank " << r << ":\n" << log;
  }
  ::kill(ws[lost].pid, SIGKILL);
  ::waitpid(ws[lost].pid, nullptr, 0);
}

INSTANTIATE_TEST_SUITE_P(Signals, LostRank, ::testing::Values(SIGKILL, SIGSTOP),
                         [](const auto& info) { return info.param == SIGKILL ? "Killed" : "Stopped"; });

TEST_F(TrainRun, CompareWritesItsResultsAndPicture) {
  const std::string out = test::tmp_dir("compare");
  std::vector<std::string> a{"compare", "--data", corpus_, "--cache-dir", cache_, "--vocab", "200", "--seq", "32",
                             "--heldout", "0.2", "--batch", "8", "--workers", "2", "--threads", "1", "--steps", "6",
                             "--eval-every", "2", "--eval-samples", "16", "--out", out, "--no-progress"};
  Proc p = start(a, out + "/log");
  ASSERT_EQ(wait_for(p, 180), 0) << slurp(p.log);
  const auto c = nlohmann::json::parse(slurp(out + "/compare.json"));
  for (const char* run : {"lamb", "onebit_lamb"})
    for (const char* k : {"heldout_loss", "bytes_sent", "wall_seconds", "samples_per_second"})
      EXPECT_TRUE(c[run].contains(k)) << run << " " << k;
  EXPECT_GT(c["ratios"]["bytes_sent"].get<double>(), 1.0);
  EXPECT_EQ(c["settings"]["freeze_step"], 2);  // auto, at its ceiling: 40% of 6 steps (bf16 warmup), rounded
  EXPECT_EQ(c["settings"]["freeze_rule"], "auto");
  EXPECT_TRUE(c["checks"].contains("heldout_loss_within_1_percent") && c["checks"].contains("bytes_at_least_4x_fewer"));
  EXPECT_TRUE(fs::exists(out + "/loss_vs_samples.png"));
  EXPECT_NE(slurp(p.log).find("bytes sent per worker"), std::string::npos);
}

TEST_F(TrainRun, MpiBackendMatchesGlooBitForBit) {
  if (!mpi_available()) GTEST_SKIP() << "this build has no MPI (configure with libopenmpi-dev installed)";
  const std::string root = test::tmp_dir("mpi");
  const std::vector<std::string> common{"--optimizer", "onebit-lamb", "--steps", "4", "--freeze-step", "2", "--eval-every", "2"};
  auto gloo_args = tiny(root + "/gloo", common);
  auto mpi_args = tiny(root + "/mpi", common);
  mpi_args.insert(mpi_args.end(), {"--backend", "mpi"});  // the launcher runs the workers under mpirun
  Proc gloo = start(gloo_args, root + "/gloo.log");
  ASSERT_EQ(wait_for(gloo, 120), 0) << slurp(gloo.log);
  Proc mpi = start(mpi_args, root + "/mpi.log");
  ASSERT_EQ(wait_for(mpi, 120), 0) << slurp(mpi.log);
  EXPECT_EQ(nlohmann::json::parse(slurp(root + "/mpi/summary.json"))["backend"], "mpi");
  // Two ranks: every sum has two terms, so both engines give the same bits.
  const auto a = metrics(root + "/gloo"), b = metrics(root + "/mpi");
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(a[i]["bytes_sent"], b[i]["bytes_sent"]) << "step " << i + 1;
  }
  EXPECT_TRUE(same_bits(read_tensor(root + "/gloo/checkpoints/step_00000004/model.pt", "params"),
                        read_tensor(root + "/mpi/checkpoints/step_00000004/model.pt", "params")));
}

TEST_F(TrainRun, Bf16PrecisionTrainsTheSameModelInBf16AndResumesOnlyAsBf16) {
  const std::string root = test::tmp_dir("bf16");
  const std::vector<std::string> common{"--optimizer", "onebit-lamb", "--steps", "4", "--freeze-step", "2"};
  auto fp32_args = tiny(root + "/fp32", common);
  auto bf16_args = tiny(root + "/bf16", common);
  bf16_args.insert(bf16_args.end(), {"--precision", "bf16"});
  Proc fp32 = start(fp32_args, root + "/fp32.log");
  ASSERT_EQ(wait_for(fp32, 120), 0) << slurp(fp32.log);
  Proc bf16 = start(bf16_args, root + "/bf16.log");
  ASSERT_EQ(wait_for(bf16, 120), 0) << slurp(bf16.log);
  const auto a = metrics(root + "/fp32"), b = metrics(root + "/bf16");
  ASSERT_EQ(b.size(), 4u);
  bool differs = false;
  for (size_t i = 0; i < 4; ++i) {
    const double la = a[i]["loss"].get<double>(), lb = b[i]["loss"].get<double>();
    EXPECT_TRUE(std::isfinite(lb)) << "step " << i + 1;
    EXPECT_NEAR(lb, la, 0.05 * la) << "step " << i + 1;  // the same model, computed in bf16
    differs = differs || la != lb;
    EXPECT_EQ(a[i]["bytes_sent"], b[i]["bytes_sent"]) << "step " << i + 1;  // the exchange stays fp32
  }
  EXPECT_TRUE(differs) << "--precision bf16 changed no loss: autocast was not on";
  EXPECT_EQ(nlohmann::json::parse(slurp(root + "/bf16/config.json"))["options"]["precision"], "bf16");
  // The checkpoint names its precision: resuming it in fp32 is refused.
  auto resume = tiny(root + "/resumed", {"--optimizer", "onebit-lamb", "--steps", "4", "--freeze-step", "2",
                                         "--resume", root + "/bf16"});
  Proc r = start(resume, root + "/resumed.log");
  EXPECT_EQ(wait_for(r, 120), 1);
  EXPECT_NE(slurp(r.log).find("precision"), std::string::npos) << slurp(r.log);
}

TEST_F(TrainRun, UnusableBackendIsAClearError) {
  const std::string out = test::tmp_dir("nccl") + "/run";
  Proc p = start(tiny(out, {"--backend", "nccl", "--device", "cuda", "--steps", "1"}), out + ".log");
  EXPECT_EQ(wait_for(p, 60), 1);
  const std::string log = slurp(p.log);
  EXPECT_TRUE(log.find("CUDA") != std::string::npos || log.find("nccl") != std::string::npos) << log;
}

}  // namespace
}  // namespace onebit::train

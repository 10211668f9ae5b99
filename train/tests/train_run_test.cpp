// `onebit train` and `onebit compare` as real processes (the onebit tool): two workers over Gloo
// stay identical, a resume continues bit for bit, a killed worker ends the launch quickly, compare
// writes its results, and an unusable backend is a clear error.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/serialize.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "onebit/mpi_comm.hpp"
#include "test_corpus.hpp"

namespace fs = std::filesystem;

namespace onebit::train {
namespace {

using Clock = std::chrono::steady_clock;

struct Proc {
  pid_t pid = -1;
  std::string log;
};

// Starts onebit with `args`, stdout and stderr to `log`.
Proc start(const std::vector<std::string>& args, const std::string& log) {
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
  // The settings every run here shares: a tiny model on the synthetic corpus, 2 workers.
  std::vector<std::string> tiny(const std::string& out, std::vector<std::string> more) const {
    std::vector<std::string> a{"train", "--data", corpus_, "--cache-dir", cache_, "--vocab", "200", "--seq", "32",
                               "--heldout", "0.2", "--batch", "8", "--workers", "2", "--threads", "1",
                               "--eval-samples", "16", "--out", out, "--no-progress", "--timeout", "30"};
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
  }
  EXPECT_TRUE(m[2].contains("heldout_loss") && m[5].contains("heldout_loss"));
  const auto all = metrics(out, true);
  ASSERT_EQ(all.size(), 7u);
  EXPECT_EQ(all[0]["step"], 0);
  EXPECT_GT(all[0]["heldout_loss"].get<double>(), m[5]["heldout_loss"].get<double>()) << "training did not lower the loss";
  ASSERT_GT(comp, 0u);
  EXPECT_GT(static_cast<double>(warm) / static_cast<double>(comp), 25.0) << "warmup " << warm << " B/step, compression " << comp;
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

TEST_F(TrainRun, ResumeContinuesBitForBit) {
  const std::string root = test::tmp_dir("resume");
  const auto common = std::vector<std::string>{"--optimizer", "onebit-lamb", "--steps", "8", "--freeze-step", "2",
                                               "--save-every", "4", "--eval-every", "4"};
  Proc whole = start(tiny(root + "/whole", common), root + "/whole.log");
  ASSERT_EQ(wait_for(whole, 120), 0) << slurp(whole.log);
  // From step 4 of the same run (in compression, error buffers live) into a new directory.
  auto args = tiny(root + "/resumed", common);
  args.insert(args.end(), {"--resume", root + "/whole/checkpoints/step_00000004"});
  Proc resumed = start(args, root + "/resumed.log");
  ASSERT_EQ(wait_for(resumed, 120), 0) << slurp(resumed.log);

  const std::string a = root + "/whole/checkpoints/step_00000008", b = root + "/resumed/checkpoints/step_00000008";
  EXPECT_TRUE(same_bits(read_tensor(a + "/model.pt", "params"), read_tensor(b + "/model.pt", "params")));
  // Every tensor of every rank's optimizer state, both error buffers included.
  for (const char* rank : {"0", "1"}) {
    const std::string f = std::string("/optimizer_rank") + rank + ".pt";
    torch::serialize::InputArchive probe;
    probe.load_from(a + f);
    c10::IValue names;
    ASSERT_TRUE(probe.try_read("onebit_tensor_names", names));
    std::stringstream list(names.toStringRef());
    int compared = 0;
    for (std::string name; std::getline(list, name, ',');) {
      EXPECT_TRUE(same_bits(read_tensor(a + f, "onebit_t_" + name), read_tensor(b + f, "onebit_t_" + name)))
          << name << " of rank " << rank;
      ++compared;
    }
    EXPECT_GE(compared, 8) << names.toStringRef();
    EXPECT_NE(names.toStringRef().find("worker_error"), std::string::npos);
  }
  const auto ma = metrics(root + "/whole"), mb = metrics(root + "/resumed");
  ASSERT_EQ(ma.size(), 8u);
  ASSERT_EQ(mb.size(), 8u);  // steps 1-4 carried over from the checkpoint's run
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(ma[i]["loss"].get<double>(), mb[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(ma[i]["bytes_sent"], mb[i]["bytes_sent"]) << "step " << i + 1;
  }
  EXPECT_EQ(ma[7]["heldout_loss"].get<double>(), mb[7]["heldout_loss"].get<double>());
  // A resume with different math is refused, naming the setting.
  auto bad = tiny(root + "/bad", {"--optimizer", "onebit-lamb", "--steps", "8", "--freeze-step", "3",
                                  "--resume", root + "/whole"});
  Proc refused = start(bad, root + "/bad.log");
  EXPECT_EQ(wait_for(refused, 60), 1);
  EXPECT_NE(slurp(refused.log).find("freeze_step"), std::string::npos) << slurp(refused.log);
}

TEST_F(TrainRun, AKilledWorkerEndsTheLaunchQuickly) {
  const std::string out = test::tmp_dir("killed") + "/run";
  Proc p = start(tiny(out, {"--optimizer", "lamb", "--steps", "100000", "--eval-every", "100000"}), out + ".log");
  // Wait for training to be under way.
  const auto deadline = Clock::now() + std::chrono::seconds(90);
  while (metrics(out).size() < 2 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_GE(metrics(out).size(), 2u) << slurp(p.log);
  std::ifstream pids(out + "/workers.pid");
  std::map<int, pid_t> by_rank;
  for (int r, pid; pids >> r >> pid;) by_rank[r] = pid;
  ASSERT_EQ(by_rank.size(), 2u);
  const auto t0 = Clock::now();
  ASSERT_EQ(::kill(by_rank[1], SIGKILL), 0);
  const int rc = wait_for(p, 30);
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_NE(rc, 0);
  EXPECT_NE(rc, -1) << "the launcher did not exit within 30 s";
  EXPECT_LT(seconds, 10.0);
  EXPECT_NE(slurp(p.log).find("worker rank 1"), std::string::npos) << slurp(p.log);
  EXPECT_NE(::kill(by_rank[0], 0), 0) << "rank 0 is still running";
}

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
  EXPECT_EQ(c["settings"]["freeze_step"], 1);  // 16% of 6 steps, rounded
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

TEST_F(TrainRun, UnusableBackendIsAClearError) {
  const std::string out = test::tmp_dir("nccl") + "/run";
  Proc p = start(tiny(out, {"--backend", "nccl", "--device", "cuda", "--steps", "1"}), out + ".log");
  EXPECT_EQ(wait_for(p, 60), 1);
  const std::string log = slurp(p.log);
  EXPECT_TRUE(log.find("CUDA") != std::string::npos || log.find("nccl") != std::string::npos) << log;
}

}  // namespace
}  // namespace onebit::train

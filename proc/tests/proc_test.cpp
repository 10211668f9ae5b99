// The process library as its users need it: how a child ended, in words and as a shell's status;
// waits that end at their limit with the child killed; a group stopped as one when a child fails,
// runs out of time or onebit is interrupted; short tools' output; the ranks of a local job; the
// executable's own path and byte sizes.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "proc/proc.hpp"

namespace onebit::proc {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

Spec command(const std::vector<std::string>& argv, const std::string& label = "child") {
  Spec s;
  s.argv = argv;
  s.label = label;
  s.what = "proc test";
  return s;
}

Spec sh(const std::string& script, const std::string& label = "child") {
  return command({"/bin/sh", "-c", script}, label);
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(Child, ThatExitsWithThreeIsReportedAsExitedWithStatusThree) {
  Child c(sh("exit 3"));
  const auto st = c.wait_for(10s);
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(exit_text(*st), "exited with status 3");
  EXPECT_EQ(exit_code(*st), 3);
}

TEST(Child, KilledByASignalIsNamedWithTheSignal) {
  Child c(sh("kill -9 $$"));
  const auto st = c.wait_for(10s);
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(exit_text(*st), "killed by signal 9 (SIGKILL)");
  EXPECT_EQ(exit_code(*st), 128 + 9);
}

TEST(Child, WhoseWaitTimesOutIsKilledWithItsGroup) {
  const std::string pid_file = testing::TempDir() + "/proc_test_grandchild.pid";
  // The grandchild is in the child's process group: it goes too.
  Child c(sh("sleep 30 & echo $! > " + pid_file + "; wait"));
  const auto t0 = Clock::now();
  EXPECT_FALSE(c.wait_for(200ms).has_value());
  const int st = c.wait_or_kill(100ms);
  EXPECT_LT(since(t0), 5.0);
  EXPECT_EQ(exit_text(st), "killed by signal 9 (SIGKILL)");
  const pid_t grandchild = std::atoi(slurp(pid_file).c_str());
  ASSERT_GT(grandchild, 0);
  const auto deadline = Clock::now() + 5s;
  while (::kill(grandchild, 0) == 0 && Clock::now() < deadline) std::this_thread::sleep_for(10ms);
  EXPECT_NE(::kill(grandchild, 0), 0) << "the grandchild " << grandchild << " survived";
}

TEST(Child, ThatCannotBeRunEndsWithStatus127) {
  Child c(command({"/nonexistent/onebit-no-such-program"}));
  const auto st = c.wait_for(10s);
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(exit_text(*st), "exited with status 127");
}

TEST(Child, SeesTheVariablesItIsGivenAndNotThoseItIsToldToDrop) {
  ::setenv("ONEBIT_PROC_TEST_DROPPED", "1", 1);
  const std::string out = testing::TempDir() + "/proc_test_env.txt";
  Spec s = sh("echo \"$ONEBIT_PROC_TEST_GIVEN-${ONEBIT_PROC_TEST_DROPPED:-unset}\" > " + out);
  s.env = {"ONEBIT_PROC_TEST_GIVEN=yes"};
  s.unset = {"ONEBIT_PROC_TEST_DROPPED"};
  Child c(s);
  ASSERT_EQ(c.wait_or_kill(10s), 0);
  EXPECT_EQ(slurp(out), "yes-unset\n");
  ::unsetenv("ONEBIT_PROC_TEST_DROPPED");
}

TEST(Supervise, StopsTheOthersAtOnceWhenOneFailsAndNamesIt) {
  Supervision sv;
  sv.timeout = 60s;
  sv.grace = 20s;  // the others end by SIGTERM, long before this
  const auto t0 = Clock::now();
  const Outcome out = supervise({sh("exec sleep 30", "rank 0"), sh("exit 3", "rank 1")}, sv);
  EXPECT_LT(since(t0), 10.0);
  EXPECT_EQ(out.exit_code, 3);
  EXPECT_EQ(out.failed, 1);
  EXPECT_EQ(out.failure.rfind("rank 1 (pid ", 0), 0u) << out.failure;
  EXPECT_NE(out.failure.find(") exited with status 3"), std::string::npos) << out.failure;
  ASSERT_EQ(out.status.size(), 2u);
  EXPECT_EQ(exit_text(out.status[0]), "killed by signal 15 (SIGTERM)");
}

TEST(Supervise, NamesAFailureEvenWhenEveryChildEndsAtOnce) {
  Supervision sv;
  sv.timeout = 60s;
  // Slow enough to start that both are running before either ends, then they end together.
  const Outcome out = supervise({sh("sleep 0.3; exit 1", "rank 0"), sh("sleep 0.3; exit 1", "rank 1")}, sv);
  EXPECT_EQ(out.exit_code, 1);
  EXPECT_GE(out.failed, 0);
  EXPECT_NE(out.failure.find("exited with status 1"), std::string::npos) << out.failure;
}

TEST(Supervise, StopsEveryChildPastItsTimeLimitWithStatus124) {
  Supervision sv;
  sv.timeout = 300ms;
  const auto t0 = Clock::now();
  const Outcome out = supervise({sh("exec sleep 30"), sh("exec sleep 30")}, sv);
  EXPECT_LT(since(t0), 10.0);
  EXPECT_TRUE(out.timed_out);
  EXPECT_EQ(out.exit_code, 124);
}

TEST(Supervise, KillsAChildThatIgnoresSigtermAfterTheGracePeriod) {
  Supervision sv;
  sv.timeout = 200ms;
  sv.grace = 300ms;
  const auto t0 = Clock::now();
  const Outcome out = supervise({sh("trap '' TERM; sleep 30 & wait; sleep 30")}, sv);
  EXPECT_LT(since(t0), 10.0);
  ASSERT_EQ(out.status.size(), 1u);
  EXPECT_EQ(exit_text(out.status[0]), "killed by signal 9 (SIGKILL)");
}

TEST(Supervise, EndsWith128PlusTheSignalWhenInterrupted) {
  Supervision sv;
  sv.timeout = 60s;
  sv.on_started = [](const std::vector<pid_t>&) { ::kill(::getpid(), SIGTERM); };  // as a user's kill
  const Outcome out = supervise({sh("exec sleep 30")}, sv);
  EXPECT_EQ(out.interrupted_by, SIGTERM);
  EXPECT_EQ(out.exit_code, 128 + SIGTERM);
}

TEST(RunTool, ReturnsTheOutputAndNamesAFailureWithItsMessage) {
  EXPECT_EQ(run_tool({"/bin/sh", "-c", "echo hello"}, "test"), "hello\n");
  try {
    run_tool({"/bin/sh", "-c", "echo broken >&2; exit 2"}, "setting up");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "setting up: `/bin/sh -c echo broken >&2; exit 2` failed (exit 2): broken");
  }
  EXPECT_THROW(run_tool({"/bin/sleep", "30"}, "test", 200ms), Error);
}

TEST(LaunchRanks, GivesEachRankItsOwnRendezvousVariables) {
  const std::string dir = testing::TempDir() + "/proc_test_ranks";
  std::filesystem::create_directories(dir);
  ::setenv("ONEBIT_PROC_TEST_RANK_DIR", dir.c_str(), 1);  // this binary's main() then acts as a rank
  ::setenv("RANK", "7", 1);                                // a parent job's: not inherited
  RankLaunch l;
  l.workers = 3;
  l.pid_file = dir + "/pids";
  l.supervision.timeout = 60s;
  l.what = "proc test";
  const Outcome out = launch_ranks(l);
  ::unsetenv("ONEBIT_PROC_TEST_RANK_DIR");
  ::unsetenv("RANK");
  ASSERT_TRUE(out.ok()) << out.failure;
  std::string port;
  for (int r = 0; r < 3; ++r) {
    std::istringstream in(slurp(dir + "/rank" + std::to_string(r)));
    std::string rank, world, addr, p;
    in >> rank >> world >> addr >> p;
    EXPECT_EQ(rank, std::to_string(r));
    EXPECT_EQ(world, "3");
    EXPECT_EQ(addr, "127.0.0.1");
    if (r == 0) port = p;
    EXPECT_EQ(p, port);
  }
  std::istringstream pids(slurp(l.pid_file));
  int lines = 0;
  for (int rank, pid; pids >> rank >> pid; ++lines) EXPECT_EQ(rank, lines);
  EXPECT_EQ(lines, 3);
}

TEST(Texts, SelfPathIsThisExecutable) {
  const std::string self = self_path();
  EXPECT_EQ(std::filesystem::path(self).filename(), "onebit_proc_test");
  EXPECT_TRUE(std::filesystem::equivalent(self, "/proc/self/exe"));
}

TEST(Texts, HumanBytesCountInPowersOfAThousand) {
  EXPECT_EQ(human_bytes(0), "0 B");
  EXPECT_EQ(human_bytes(999), "999 B");
  EXPECT_EQ(human_bytes(1000), "1.00 KB");
  EXPECT_EQ(human_bytes(1.5e6), "1.50 MB");
  EXPECT_EQ(human_bytes(2.25e15), "2250.00 TB");
}

TEST(Texts, FindInPathFindsShAndNotANameThatIsNowhere) {
  EXPECT_FALSE(find_in_path("sh").empty());
  EXPECT_EQ(find_in_path("onebit-no-such-program"), "");
}

}  // namespace
}  // namespace onebit::proc

// Started by LaunchRanks as one of the ranks: writes what it sees and ends.
int main(int argc, char** argv) {
  if (const char* dir = std::getenv("ONEBIT_PROC_TEST_RANK_DIR")) {
    auto var = [](const char* name) -> std::string {
      const char* v = std::getenv(name);
      return v ? v : "-";
    };
    std::ofstream(std::string(dir) + "/rank" + var("RANK"))
        << var("RANK") << " " << var("WORLD_SIZE") << " " << var("MASTER_ADDR") << " " << var("MASTER_PORT") << "\n";
    return 0;
  }
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

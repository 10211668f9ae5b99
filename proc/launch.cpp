// The ranks of a job on this machine (see proc.hpp): this executable once per rank with the
// rendezvous variables torchrun would set, or under one mpirun that starts and wires them.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>

#include "proc/proc.hpp"

namespace onebit::proc {
namespace {

// A job's variables this process may have inherited: the ranks get their own instead.
const std::vector<std::string> kJobVariables = {"RANK",        "WORLD_SIZE",  "LOCAL_RANK",
                                                "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"};

Spec rank_spec(const RankLaunch& l, const std::vector<std::string>& argv, const std::vector<std::string>& env,
               const std::string& label) {
  Spec s;
  s.argv = argv;
  s.env = env;
  s.label = label;
  s.unset = kJobVariables;
  s.what = l.what;
  return s;
}

std::vector<Spec> mpirun_spec(const RankLaunch& l, const std::string& exe) {
  // execvp would find mpirun too, but only the child could say it is missing, after the fork.
  const std::string mpirun = find_in_path("mpirun");
  ONEBIT_CHECK(!mpirun.empty(), "onebit " << l.what << " --backend mpi --workers " << l.workers
                                          << ": mpirun is not on PATH (install openmpi-bin)");
  std::vector<std::string> argv{mpirun};
  if (::geteuid() == 0) argv.push_back("--allow-run-as-root");
  for (const char* a : {"--oversubscribe", "--bind-to", "none", "-np"}) argv.push_back(a);
  argv.push_back(std::to_string(l.workers));
  argv.push_back(exe);
  argv.insert(argv.end(), l.args.begin(), l.args.end());
  return {rank_spec(l, argv, {}, "mpirun")};
}

std::vector<Spec> loopback_specs(const RankLaunch& l, const std::string& exe) {
  const int port = free_loopback_port();
  std::vector<Spec> specs;
  for (int r = 0; r < l.workers; ++r) {
    std::vector<std::string> argv{exe};
    argv.insert(argv.end(), l.args.begin(), l.args.end());
    std::vector<std::string> env{"RANK=" + std::to_string(r), "LOCAL_RANK=" + std::to_string(r),
                                 "WORLD_SIZE=" + std::to_string(l.workers),
                                 "LOCAL_WORLD_SIZE=" + std::to_string(l.workers), "MASTER_ADDR=127.0.0.1",
                                 "MASTER_PORT=" + std::to_string(port)};
    specs.push_back(rank_spec(l, argv, env, "worker rank " + std::to_string(r)));
  }
  return specs;
}

}  // namespace

Outcome launch_ranks(const RankLaunch& l) {
  ONEBIT_CHECK(l.workers >= 1, "onebit " << l.what << ": --workers must be at least 1, not " << l.workers);
  const std::string exe = self_path();
  const std::vector<Spec> specs = l.mpi ? mpirun_spec(l, exe) : loopback_specs(l, exe);
  Supervision s = l.supervision;
  if (!l.pid_file.empty()) {
    s.on_started = [&](const std::vector<pid_t>& pids) {
      std::ofstream f(l.pid_file);
      for (size_t r = 0; r < pids.size(); ++r) f << r << " " << pids[r] << "\n";
      if (l.supervision.on_started) l.supervision.on_started(pids);
    };
  }
  return supervise(specs, s);
}

int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ONEBIT_CHECK(fd >= 0, "onebit: cannot open a socket to find a free port");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(fd);
  ONEBIT_CHECK(ok, "onebit: cannot find a free port on 127.0.0.1");
  return ntohs(a.sin_port);
}

}  // namespace onebit::proc

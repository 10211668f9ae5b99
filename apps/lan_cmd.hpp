// `onebit lan` (a command once per worker of a shaped network, lan/), `onebit lan-exec` (mpirun's
// remote shell inside it), and the MPI launch inside it that `onebit bench allreduce --rate` uses.
#pragma once
#include <chrono>
#include <string>
#include <vector>

#include "lan/lan.hpp"

namespace CLI {
class App;
}

namespace onebit::lan {

struct LanOptions {
  int workers = 2;
  std::string rate;
  std::string delay = "0ms";
  double timeout_s = 3600;
  int master_port = 29500;
  std::vector<std::string> command;
};

CLI::App* add_lan_command(CLI::App& app, LanOptions& o);
int run_lan(const LanOptions& o);

// `onebit lan-exec HOST COMMAND...`: the remote shell mpirun uses inside the network (as ssh would:
// the command words are joined with spaces and run by /bin/sh in HOST's namespace).
CLI::App* add_lan_exec_command(CLI::App& app);
int run_lan_exec(const std::vector<std::string>& args);

// Builds the network, runs `rank_argv` as one MPI rank per worker namespace over TCP (mpirun in
// worker 0's namespace, the others started through `onebit lan-exec`), waits at most `timeout`,
// tears the network down and returns mpirun's exit code. Needs root.
int run_mpi_in_network(int workers, const LinkShape& shape, const std::vector<std::string>& rank_argv,
                       std::chrono::milliseconds timeout, const std::string& what);

}  // namespace onebit::lan

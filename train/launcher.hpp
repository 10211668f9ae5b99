// `onebit train --workers N` on one machine: starts the workers (this executable again, with
// RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set, or under mpirun for --backend mpi) and supervises
// them: when one dies the others are stopped and the launch fails; nothing waits forever.
#pragma once
#include <string>
#include <vector>

namespace onebit::train {

struct LaunchOptions {
  std::vector<std::string> args;  // the worker command line after the executable ("train", ...)
  int workers = 2;
  std::string backend = "gloo";   // mpi: the workers run under mpirun; otherwise loopback rendezvous
  std::string pid_file;           // "rank pid" per line, for tools and tests; empty: none
  double grace_seconds = 5;       // after SIGTERM, this long before SIGKILL
};

// Runs the workers to the end. Throws onebit::Error naming the first worker that failed (its rank,
// exit status or signal) after stopping the rest, or when interrupted (SIGINT/SIGTERM).
void launch_workers(const LaunchOptions& o);

}  // namespace onebit::train

// One rank of 4 under mpirun is lost in the middle of the collectives: `kill` raises SIGKILL on
// itself, `stall` stops taking part. The others must end (never hang); mpi_fault_test.sh checks the
// job exits non-zero within 90 s and that the lost rank is named.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "onebit/error.hpp"
#include "onebit/mpi_comm.hpp"

int main(int argc, char** argv) {
  if (argc != 2 || (std::strcmp(argv[1], "kill") != 0 && std::strcmp(argv[1], "stall") != 0)) {
    std::cerr << "usage: onebit_mpi_fault_test kill|stall" << std::endl;
    return 2;
  }
  const bool kill = std::strcmp(argv[1], "kill") == 0;
  auto comm = onebit::make_mpi_communicator();
  comm->set_timeout(std::chrono::seconds(5));
  const int lost = comm->size() - 1;
  std::vector<float> x(100000, 1.0f);
  try {
    for (int step = 0; step < 1000; ++step) {
      if (step == 5 && comm->rank() == lost) {
        if (kill) ::raise(SIGKILL);
        std::this_thread::sleep_for(std::chrono::seconds(60));  // stalled: mpirun ends it
      }
      comm->allreduce_sum(x);
    }
  } catch (const onebit::Error& e) {
    // One write, so the ranks' lines do not interleave.
    const std::string line = "rank " + std::to_string(comm->rank()) + ": " + e.what() + "\n";
    [[maybe_unused]] auto n = ::write(2, line.data(), line.size());
    // mpirun ends the whole job when the first rank exits non-zero; the survivors' timeouts start
    // when each entered the collective, so on a crowded machine they fire up to a second or so
    // apart. Waiting here lets every survivor say what it saw before that.
    std::this_thread::sleep_for(std::chrono::seconds(3));
    return 1;
  }
  std::cerr << "rank " << comm->rank() << ": all collectives completed, the lost rank was not lost" << std::endl;
  return 0;
}

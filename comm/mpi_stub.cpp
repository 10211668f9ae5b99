// Builds without MPI: asking for the MPI backend is a clear error, never a silent fallback.
#include "onebit/error.hpp"
#include "onebit/mpi_comm.hpp"

namespace onebit {
bool mpi_available() { return false; }
std::unique_ptr<Communicator> make_mpi_communicator() {
  throw Error("mpi: this onebit was built without MPI (configure with ONEBIT_WITH_MPI=ON)");
}
}  // namespace onebit

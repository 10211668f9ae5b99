// MpiCommunicator: the Communicator over MPI (OpenMPI), host memory, for real processes under mpirun.
#pragma once
#include <memory>

#include "onebit/communicator.hpp"

namespace onebit {

// Initializes MPI on first use (and finalizes it at exit) unless the program already did.
// Uses MPI_COMM_WORLD.
std::unique_ptr<Communicator> make_mpi_communicator();

// True when this build has the MPI backend.
bool mpi_available();

}  // namespace onebit

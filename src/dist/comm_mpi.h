// The MPI communicator (comm_mpi.cpp, built when CMake finds MPI; comm_mpi_none.cpp otherwise).
#pragma once

#include <memory>

#include "flashgpt/dist/comm.h"

namespace flashgpt::dist {

bool mpi_available();
// Starts MPI (once) and returns the communicator over every rank of the job.
std::unique_ptr<Communicator> make_mpi_world();
// Ends MPI if it was started.
void finalize_mpi();

}  // namespace flashgpt::dist

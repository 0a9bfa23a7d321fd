// A build without MPI: world() reports the fix when a launcher asks for several ranks.
#include "dist/comm_mpi.h"

#include "flashgpt/core/error.h"

namespace flashgpt::dist {

bool mpi_available() { return false; }
std::unique_ptr<Communicator> make_mpi_world() { fail("this flashgpt was built without MPI"); }
void finalize_mpi() {}

}  // namespace flashgpt::dist

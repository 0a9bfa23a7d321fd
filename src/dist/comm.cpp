// The single-process communicator, launch detection and the job's world communicator.
#include "flashgpt/dist/comm.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>
#include <string_view>

#include "dist/comm_mpi.h"
#include "flashgpt/core/error.h"

namespace flashgpt::dist {

size_t dtype_bytes(DType t) {
  switch (t) {
    case DType::F32:
    case DType::I32:
      return 4;
    case DType::F64:
    case DType::I64:
    case DType::U64:
      return 8;
    case DType::BF16:
      return 2;
  }
  return 0;
}

namespace {

class SingleProcessComm final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single"; }
  void allreduce_sum(void*, size_t, DType) override {}
  void start_allreduce_sum(void*, size_t, DType) override {}
  void wait_all() override {}
  void reduce_scatter_sum(const void* send, void* recv, std::span<const int64_t> counts, DType t) override {
    if (send != recv) std::memmove(recv, send, static_cast<size_t>(counts[0]) * dtype_bytes(t));
  }
  void allgather(const void* send, void* recv, std::span<const int64_t> counts, DType t) override {
    if (send != recv) std::memmove(recv, send, static_cast<size_t>(counts[0]) * dtype_bytes(t));
  }
  void gather(const void* send, void* recv, std::span<const int64_t> counts, DType t, int) override {
    allgather(send, recv, counts, t);
  }
  void broadcast(void*, size_t, int) override {}
  std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<SingleProcessComm>(); }
  void arrive(const char*, int64_t) override {}
  [[noreturn]] void abort(int code) override { std::_Exit(code); }
};

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

std::unique_ptr<Communicator>& world_slot() {
  static std::unique_ptr<Communicator> w;
  return w;
}

}  // namespace

std::unique_ptr<Communicator> make_single_process_comm() { return std::make_unique<SingleProcessComm>(); }

LaunchInfo launch_info() {
  LaunchInfo li;
  li.mpi_built = mpi_available();
  // OpenMPI, then PMIx/PMI launchers (MPICH's hydra, Slurm).
  for (const auto& [size_var, rank_var] : {std::pair{"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"},
                                           std::pair{"PMIX_SIZE", "PMIX_RANK"}, std::pair{"PMI_SIZE", "PMI_RANK"}}) {
    if (std::getenv(size_var)) {
      li.under_launcher = true;
      li.world_size = env_int(size_var, 1);
      li.world_rank = env_int(rank_var, 0);
      break;
    }
  }
  return li;
}

Communicator& world() {
  auto& w = world_slot();
  if (w) return *w;
  const LaunchInfo li = launch_info();
  if (li.under_launcher && li.world_size > 1) {
    FLASHGPT_CHECK(li.mpi_built,
                   "started as rank {} of {} by an MPI launcher, but this flashgpt was built without MPI: install "
                   "libopenmpi-dev and rebuild (scripts/install-deps.sh does both)",
                   li.world_rank, li.world_size);
    w = make_mpi_world();
  } else {
    w = make_single_process_comm();
  }
  return *w;
}

bool distributed() {
  const auto& w = world_slot();
  return w && w->size() > 1;
}

void finalize() {
  world_slot().reset();
  finalize_mpi();
}

uint64_t fingerprint(const void* data, size_t bytes) {
  uint64_t h = 1469598103934665603ull;
  const auto* p = static_cast<const unsigned char*>(data);
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 1099511628211ull;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

void check_same_on_all_ranks(Communicator& comm, uint64_t value, const std::string& what) {
  const std::vector<uint64_t> all = comm.allgather_one(value);
  for (size_t r = 1; r < all.size(); ++r) {
    FLASHGPT_CHECK(all[r] == all[0], "{} differ across ranks: rank {} has {:016x}, rank 0 has {:016x}", what, r,
                   all[r], all[0]);
  }
}

HostRanks host_ranks(Communicator& comm) {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) std::snprintf(name, sizeof name, "?");
  const std::vector<uint64_t> hosts = comm.allgather_one(fingerprint(name, std::strlen(name)));
  HostRanks r;
  r.local_rank = 0;
  r.local_size = 0;
  for (size_t k = 0; k < hosts.size(); ++k) {
    if (hosts[k] != hosts[static_cast<size_t>(comm.rank())]) continue;
    if (static_cast<int>(k) < comm.rank()) ++r.local_rank;
    ++r.local_size;
  }
  return r;
}

}  // namespace flashgpt::dist

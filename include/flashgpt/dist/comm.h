// Communicators: how the processes of one training job talk. A job started with
// `mpirun -np N flashgpt …` has N ranks joined by MPI (OpenMPI); a plain start has one rank and
// the single-process communicator, whose collectives are copies. Training code is written once
// against this interface.
//
// Every collective is bounded in time: a rank that waits longer than timeout() for the others
// (one died or hangs) prints one line saying where it waited and ends the whole job. arrive()
// is the named checkpoint: rank 0 learns which ranks failed to reach it and names them.
//
// bytes_sent() counts what this rank sends under the bandwidth-optimal (ring) algorithms:
// allreduce 2(N−1)/N·n, reduce-scatter and all-gather (N−1)/N·n for n bytes in total, broadcast n
// at the root. It is the volume docs/distributed.md predicts, independent of the algorithm MPI
// actually picks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace flashgpt::dist {

// BF16: bfloat16 values held as uint16_t bits (core/half_precision.h); their sums add pairs in
// fp32 and round each to the nearest bf16 (ties to even), so an N-rank sum rounds up to N−1 times.
enum class DType { F32, F64, I32, I64, U64, BF16 };

size_t dtype_bytes(DType t);
template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::F32; }
template <>
constexpr DType dtype_of<double>() { return DType::F64; }
template <>
constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <>
constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <>
constexpr DType dtype_of<uint64_t>() { return DType::U64; }

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "single" or "mpi"

  // Element-wise sum over ranks, in place.
  virtual void allreduce_sum(void* data, size_t count, DType t) = 0;
  // The same, started now and finished by wait_all(): gradients reduce while the backward runs on.
  virtual void start_allreduce_sum(void* data, size_t count, DType t) = 0;
  virtual void wait_all() = 0;
  // send holds sum(counts) elements laid out rank by rank; recv gets this rank's counts[rank]
  // elements of the element-wise sum over ranks.
  virtual void reduce_scatter_sum(const void* send, void* recv, std::span<const int64_t> counts, DType t) = 0;
  // send holds counts[rank] elements; recv gets every rank's, laid out rank by rank.
  virtual void allgather(const void* send, void* recv, std::span<const int64_t> counts, DType t) = 0;
  // As allgather, but only root receives (recv may be null elsewhere).
  virtual void gather(const void* send, void* recv, std::span<const int64_t> counts, DType t, int root) = 0;
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  // Ranks with the same color form a new communicator, ordered by key.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // Every rank reaches `where` of `step`: rank 0 names any rank that does not arrive within the
  // timeout, or arrives at another step, and the job ends.
  virtual void arrive(const char* where, int64_t step) = 0;
  // Ends every rank of the job with this exit code (after this rank printed why).
  [[noreturn]] virtual void abort(int code) = 0;

  void set_timeout(double seconds) { timeout_s_ = seconds; }
  double timeout() const { return timeout_s_; }
  uint64_t bytes_sent() const { return bytes_sent_; }
  void reset_bytes_sent() { bytes_sent_ = 0; }

  // Typed helpers.
  template <typename T>
  void allreduce_sum(std::span<T> x) {
    allreduce_sum(x.data(), x.size(), dtype_of<std::remove_const_t<T>>());
  }
  template <typename T>
  T sum(T value) {
    allreduce_sum(&value, 1, dtype_of<T>());
    return value;
  }
  template <typename T>
  std::vector<T> allgather_one(T value) {
    std::vector<T> out(static_cast<size_t>(size()));
    std::vector<int64_t> counts(static_cast<size_t>(size()), 1);
    allgather(&value, out.data(), counts, dtype_of<T>());
    return out;
  }

 protected:
  void count_sent(double bytes) { bytes_sent_ += static_cast<uint64_t>(bytes); }
  double timeout_s_ = 300;

 private:
  uint64_t bytes_sent_ = 0;
};

// One process: collectives copy, arrive() returns at once.
std::unique_ptr<Communicator> make_single_process_comm();

// How this process was started.
struct LaunchInfo {
  bool under_launcher = false;  // mpirun / srun set the environment of a multi-process job
  int world_size = 1;           // from the launcher's environment (1 without one)
  int world_rank = 0;
  bool mpi_built = false;  // this flashgpt was built with MPI
};
LaunchInfo launch_info();

// The job's communicator over all ranks. The first call starts MPI when the launcher's
// environment says there are several ranks (it throws, naming the fix, when this build lacks
// MPI); every later call returns the same object. finalize() ends MPI at exit.
Communicator& world();
void finalize();
// True when world() started MPI with more than one rank.
bool distributed();

// A cheap fingerprint of a buffer (64-bit FNV-1a over 8-byte words), for weight-replica checks.
uint64_t fingerprint(const void* data, size_t bytes);

// Throws flashgpt::Error naming the first rank whose `value` (a hash of weights or config)
// differs from rank 0's; `what` says what was compared.
void check_same_on_all_ranks(Communicator& comm, uint64_t value, const std::string& what);

// This rank's place among the ranks on its machine (same host name), in rank order: what picks
// its GPU. Collective.
struct HostRanks {
  int local_rank = 0, local_size = 1;
};
HostRanks host_ranks(Communicator& comm);

}  // namespace flashgpt::dist

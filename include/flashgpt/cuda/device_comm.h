// Collectives over GPU memory, for data-parallel training on several GPUs: each rank of the job
// (dist::Communicator, usually MPI) drives one GPU, and the ranks sum their gradients where they
// lie. Two ways:
//
//   nccl — NVIDIA's collective library over NVLink, PCIe or the network, on the stream the work is
//          queued on. libnccl.so.2 is loaded when a job first asks for it (no link-time
//          dependency: a one-GPU build and run never need it). Every rank needs a GPU of its own.
//   host — through host memory: each rank copies the buffer out, the ranks' communicator sums it,
//          and each copies the sum back. Works wherever the communicator does, ranks sharing a GPU
//          included, at the cost of two copies over PCIe a reduction.
//   auto — nccl where it loads and every rank on a host has a GPU of its own, else host, with the
//          reason on the line create() leaves in why().
//
// create() also binds the calling rank to its GPU: the ranks on one host take the host's GPUs in
// rank order (local rank modulo the GPUs visible, so CUDA_VISIBLE_DEVICES chooses among them).
// Call it before anything else touches the GPU. Every rank must call every collective, in the
// same order, with the same sizes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "flashgpt/core/error.h"
#include "flashgpt/cuda/abi.h"
#include "flashgpt/dist/comm.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

enum class GpuComm { Auto, Nccl, Host };
inline std::string to_string(GpuComm c) { return c == GpuComm::Nccl ? "nccl" : c == GpuComm::Host ? "host" : "auto"; }
// "auto", "nccl" or "host"; anything else is an error naming `field`.
inline GpuComm parse_gpu_comm(const std::string& s, const std::string& field) {
  for (GpuComm c : {GpuComm::Auto, GpuComm::Nccl, GpuComm::Host}) {
    if (s == to_string(c)) return c;
  }
  fail("{}: unknown GPU communication '{}' (expected auto, nccl or host)", field, s);
}

// Whether NCCL can be loaded here (libnccl.so.2): its version, or why not (`flashgpt info`).
bool nccl_available(std::string* detail);

class DeviceComm {
 public:
  // Collective over every rank of `host` (which must outlive the result): picks this rank's GPU
  // and joins the ranks' GPU communicator of kind `kind`. Throws flashgpt::Error naming the
  // reason (no GPU, NCCL missing or failing, ranks sharing a GPU under nccl); every rank then
  // throws, not only the one that failed.
  static std::unique_ptr<DeviceComm> create(dist::Communicator& host, GpuComm kind);
  virtual ~DeviceComm() = default;
  // A communicator of the same backend over `group` (which must outlive the result), a part of
  // this one's ranks (the ranks sharing sequences under context parallelism, say), each rank
  // keeping the GPU it is bound to. Collective over `group`.
  std::unique_ptr<DeviceComm> subgroup(dist::Communicator& group) const;

  // "nccl" or "host".
  virtual std::string backend() const = 0;
  // A line for the log: the backend, its version, this rank's GPU and, under auto, why not nccl.
  const std::string& why() const { return why_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  int gpu() const { return gpu_; }  // the GPU index this rank uses

  // Element-wise sum over the ranks of `count` fp32 values in this rank's GPU memory, in place,
  // after the work already queued on the current stream (stream.h); later work on that stream
  // sees the sum.
  virtual void allreduce_sum(float* device_data, int64_t count) = 0;
  // The same sum started on a stream of the communicator's own, after the work already queued on
  // the current stream, so that work queued there later runs alongside it (the backward of the
  // next block while this block's gradients travel); finish_sums() makes the current stream wait
  // for every sum started. Where there is no such stream (host) the sum is done at once.
  virtual void start_allreduce_sum(float* device_data, int64_t count) { allreduce_sum(device_data, count); }
  virtual void finish_sums() {}
  // ZeRO-1's pair, in place on size()·shard values: reduce_scatter_sum leaves this rank's block
  // [rank·shard, (rank+1)·shard) holding the sum over the ranks of that block (the other blocks are
  // left undefined); allgather fills every block with its owner's, each rank's own block in place.
  virtual void reduce_scatter_sum(float* device_data, int64_t shard) = 0;
  virtual void allgather(float* device_data, int64_t shard) = 0;
  // The sums above over bfloat16 values (their bits, as uint16_t): half the bytes of fp32, each
  // addition rounded to bf16 (NCCL's ncclBfloat16; through host memory, dist::DType::BF16).
  virtual void allreduce_sum_bf16(uint16_t* device_data, int64_t count) = 0;
  virtual void start_allreduce_sum_bf16(uint16_t* device_data, int64_t count) { allreduce_sum_bf16(device_data, count); }
  virtual void reduce_scatter_sum_bf16(uint16_t* device_data, int64_t shard) = 0;
  // The job's communicator, for what travels through host memory anyway (scalars, checkpoints).
  dist::Communicator& host() const { return host_; }

  // What this rank sent, counted as the communicator does (a ring allreduce: 2(N−1)/N of the bytes).
  uint64_t bytes_sent() const { return bytes_sent_; }
  // The part of bytes_sent() that host() has not counted already, for a total over both: all of it
  // with NCCL, none where the sums go through host memory (they are host()'s own collectives).
  uint64_t bytes_sent_beyond_host() const { return through_host_ ? 0 : bytes_sent_; }

 protected:
  DeviceComm(dist::Communicator& host, int gpu) : host_(host), rank_(host.rank()), size_(host.size()), gpu_(gpu) {}
  // Bytes sent under the ring algorithms: `passes` (2 for an all-reduce, 1 for a reduce-scatter or
  // an all-gather) of (N−1)/N of the `bytes` in all.
  void count_sent(int64_t bytes, int passes) {
    if (size_ > 1) {
      const double share = static_cast<double>(size_ - 1) / size_;
      bytes_sent_ += static_cast<uint64_t>(passes * share * static_cast<double>(bytes));
    }
  }
  std::string why_;
  bool through_host_ = false;  // the sums are host()'s collectives (counted there too)

 private:
  dist::Communicator& host_;
  int rank_, size_, gpu_;
  uint64_t bytes_sent_ = 0;
};

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI

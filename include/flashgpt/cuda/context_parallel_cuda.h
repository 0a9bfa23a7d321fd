// Context parallelism on the GPU: the ranks of one group share each sequence, split as
// dist/context_parallel.h splits it (2N chunks of T/(2N), rank i holding chunks i and 2N−1−i, so
// under the causal mask every rank does the same attention work). GPTCuda keeps a rank's rows
// chunk-major, [2][B][chunk]: its early chunk of every sequence, then its late chunk, so that each
// chunk's queries are one batch of B sequences with one causal offset. Each layer's attention
// gathers the keys and values of the whole sequences from the group (gather), and its backward
// returns each rank the sum over the group of the gradients of its own rows (reduce_scatter).
//
// Layouts: local rows [2][B][chunk] of `width` values, `ld` apart; global [B, T, width] dense, in
// sequence order; "rank-major" [ranks][2][B][chunk][width], every rank's local rows in rank order.
#pragma once

#include <cstdint>

#include "flashgpt/cuda/abi.h"
#include "flashgpt/cuda/device_comm.h"
#include "flashgpt/cuda/ops_cuda.h"
#include "flashgpt/dist/context_parallel.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// The layouts' kernels (cp_assemble, cp_disassemble, cp_add_rows, cp_store_rows) are in ops_cuda.h.
class DeviceContextParallel {
 public:
  // group: the ranks sharing the sequences, one GPU each (outlives this); seq_len must be a
  // multiple of 2·group.size() (the error names --context-parallel).
  DeviceContextParallel(DeviceComm& group, int64_t seq_len);

  DeviceComm& group() const { return *group_; }
  int ranks() const { return group_->size(); }
  int index() const { return group_->rank(); }
  int64_t seq_len() const { return host_.seq_len(); }
  int64_t chunk() const { return host_.chunk(); }
  int64_t local_len() const { return host_.local_len(); }
  int64_t global_chunk(int j) const { return host_.global_chunk(j); }
  // The same split over the group's host communicator, for what lives on the host (token and
  // document ids), in dist::ContextParallel's layout [B][2][chunk].
  const dist::ContextParallel& host() const { return host_; }

  // The device scratch gather and reduce_scatter need: fp32 values for B sequences of `width`.
  int64_t stage_floats(int64_t B, int64_t width) const { return B * seq_len() * width; }
  // Every rank's local rows (this rank's from `local`) assembled into global [B, T, width].
  template <typename T>
  void gather(const T* local, int64_t ld, T* global, int64_t B, int64_t width, float* stage) const;
  // The sum over the group of global fp32 [B, T, width]: this rank's rows into `local` (as T).
  // `global` and `stage` may not overlap.
  template <typename T>
  void reduce_scatter(const float* global, T* local, int64_t ld, int64_t B, int64_t width, float* stage) const;

 private:
  DeviceComm* group_;
  dist::ContextParallel host_;
};

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI

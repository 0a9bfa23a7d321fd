// Where a stretch of GPU work spends its time, kernel by kernel, without a profiler: while a
// KernelTimes records (KernelTimesScope, on this thread), every kernel flashgpt launches
// (launch_kernel), every cuBLASLt GEMM and every cuDNN attention call is bracketed by a pair of CUDA
// events on its stream; read() waits for the GPU and adds up each name's launches and
// milliseconds. GEMMs are named by their shape ("cuBLASLt GEMM 16384×2304×768"). Work queued
// while a stream captures a graph is not timed. The events cost the host about a microsecond per
// launch and the GPU next to nothing, so the figures are the kernels' own durations; what a step
// spends beyond their sum is the GPU waiting (for the host, or between kernels).
// On the emulator the same spans are timed on the host clock (its kernels run as they are queued).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "flashgpt/cuda/abi.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

struct KernelTime {
  std::string name;
  int64_t launches = 0;
  double ms = 0;  // summed over the launches
};

class KernelTimes {
 public:
  KernelTimes();
  ~KernelTimes();
  KernelTimes(const KernelTimes&) = delete;
  KernelTimes& operator=(const KernelTimes&) = delete;
  // Waits for the GPU; the totals per name since the last read, longest first. Starts afresh.
  std::vector<KernelTime> read();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  friend class KernelTimesScope;
};

// Records into `times` for its lifetime on this thread (scopes nest: the innermost records).
class KernelTimesScope {
 public:
  explicit KernelTimesScope(KernelTimes& times);
  ~KernelTimesScope();
  KernelTimesScope(const KernelTimesScope&) = delete;
  KernelTimesScope& operator=(const KernelTimesScope&) = delete;

 private:
  KernelTimes::Impl* saved_;
};

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI

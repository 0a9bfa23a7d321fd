// Achieved occupancy without a profiler: while a CtaTrace records (on this thread), each launch of
// the flash attention kernels writes one CtaSpan per block (CTA): the SM it ran on, that SM's cycle
// counter when its first thread began, the latest cycle any of its warps ended, and the sum of its
// warps' end cycles. From those, achieved_occupancy works out what a profiler's "achieved
// occupancy" counts (the resident warps per SM averaged over the cycles the SM had any, as a share
// of the most it can hold), at warp granularity for the ends and block granularity for the starts.
// The spans start after the block became resident and end before it retired, so the figure never
// exceeds the true one, nor the theoretical occupancy. The cost: one clock read and store per block,
// two atomics per warp; nothing when no trace records.
//
// The cycle counters of different SMs are not synchronised, so spans are compared only within an
// SM. On the emulator blocks run one at a time on one "SM" and the cycles are the host's nanoseconds.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "flashgpt/cuda/abi.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// One block's record, filled on the device (the layout the kernels write; 32 bytes).
struct CtaSpan {
  unsigned long long start = 0;         // the SM's clock when the block's first thread began
  unsigned long long end = 0;           // the latest clock at which one of its warps ended
  unsigned long long warp_end_sum = 0;  // the sum over its warps of the clock each ended at
  unsigned sm = 0;                      // the SM it ran on
  unsigned warps = 0;                   // its warps
};
static_assert(sizeof(CtaSpan) == 32, "CtaSpan is the device's 32-byte record");

struct AchievedOccupancy {
  int64_t ctas = 0;       // blocks recorded (0: nothing measured)
  int sms = 0;            // SMs that ran at least one
  double warps = 0;       // resident warps per SM, averaged over the cycles each SM held a block
  double blocks = 0;      // the same for blocks
  double fraction = 0;    // warps ÷ the most warps an SM holds (a profiler's achieved occupancy), 0…1
};

// The occupancy the spans show on SMs of `max_warps_per_sm` warp slots. Spans that ended before
// they began (none should) count for nothing.
AchievedOccupancy achieved_occupancy(std::span<const CtaSpan> ctas, int max_warps_per_sm);

// One traced launch: the kernel's name (as launch_kernel gives it) and its blocks, in launch order
// of blockIdx (x fastest).
struct TracedLaunch {
  std::string kernel;
  std::vector<CtaSpan> ctas;
};

class CtaTrace {
 public:
  // Room for `capacity` blocks over all launches until the next read (32 bytes each); a launch
  // that does not fit is not traced, and counted in skipped(). Records on this thread until
  // destroyed (an inner trace records instead of an outer one while it lives). Launches queued
  // while a stream captures a graph are not traced.
  explicit CtaTrace(int64_t capacity);
  ~CtaTrace();
  CtaTrace(const CtaTrace&) = delete;
  CtaTrace& operator=(const CtaTrace&) = delete;

  // Waits for the GPU; the launches traced since the last read, in order. Starts afresh.
  std::vector<TracedLaunch> read();
  // Launches since the last read that did not fit.
  int64_t skipped() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  Impl* saved_ = nullptr;
};

// The most warps one SM of the current GPU holds (its thread slots ÷ 32).
int max_warps_per_sm();

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI

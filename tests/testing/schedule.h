// For tests of run-to-run determinism: a fresh draw of the order in which the GPU runs blocks,
// warps and lanes. On the emulator that is a reseed of its scheduler, so fp32 atomics from different
// blocks add up in a new order; on a GPU the hardware's own scheduling already varies between runs.
#pragma once

#include <cstdint>

#if defined(FLASHGPT_SIMT)
#include "cuda/simt/simt.h"
#endif

namespace flashgpt::testing {

// Whether redraw_schedule surely changes the order (true on the emulator). Tests assert that the
// non-deterministic path does vary only where it does, which shows their comparison can fail.
#if defined(FLASHGPT_SIMT)
inline constexpr bool kScheduleRedrawn = true;
#else
inline constexpr bool kScheduleRedrawn = false;
#endif

inline void redraw_schedule(uint64_t seed) {
#if defined(FLASHGPT_SIMT)
  simt::reseed(seed);
#else
  (void)seed;
#endif
}

}  // namespace flashgpt::testing

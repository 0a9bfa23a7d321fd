// How many threads a CPU loop is worth. Every `#pragma omp parallel` in the CPU kernels names its
// team with `num_threads(cpu::team_size(work))`, where `work` counts roughly one unit per element
// touched or multiply-add done.
//
// Forking a team and joining it costs well under a microsecond on an idle machine, but up to a
// scheduler time slice (milliseconds) when another process holds a core: the join waits for the
// slowest thread, and a descheduled one is very slow. A decoding step runs some fifty small loops
// (the norms, activations and residuals of one token), so on a loaded machine they, not the
// arithmetic, set the speed. Loops below kParallelGrain units run on the calling thread; larger
// ones get one thread per half grain, up to the thread count, so training's loops keep every
// thread. Measured on a 2-core machine (BENCHMARKS.md, "CPU loops too small to fork").
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace flashgpt::cpu {

// Splitting an element-wise loop over two threads starts to pay at about 16k elements on an idle
// machine; twice that leaves a margin for the loaded one.
inline constexpr int64_t kParallelGrain = int64_t{1} << 15;

inline int team_size(int64_t work) {
  if (work < kParallelGrain) return 1;
  const int64_t most = omp_get_max_threads();
  return static_cast<int>(std::clamp<int64_t>(work / (kParallelGrain / 2), 1, most));
}

}  // namespace flashgpt::cpu

// The hooks behind KernelTimes (flashgpt/cuda/kernel_times.h), called around each piece of GPU work
// flashgpt queues: kernel_timing_begin returns -1, at the cost of one thread-local read, unless
// this thread records; else it records a start event on `stream` and returns the span to end.
#pragma once

#include <string_view>

#include "flashgpt/cuda/abi.h"

#if defined(FLASHGPT_SIMT)
#include "cuda/simt/simt.h"
#else
#include <cuda_runtime.h>
#endif

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

bool kernel_timing_active();
int kernel_timing_begin(std::string_view name, cudaStream_t stream);
void kernel_timing_end(int span, cudaStream_t stream);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI

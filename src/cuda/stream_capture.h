// Whether work queued on a stream now would be recorded into a graph instead of run (stream.h's
// Graph): what the recorders of GPU work (KernelTimes, CtaTrace) ask before they add anything a
// replay could not honour. Defined with the streams (stream.cu).
#pragma once

#include "cuda/cuda_check.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// On the emulator: whether any stream is capturing.
bool stream_capturing(cudaStream_t stream);

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI

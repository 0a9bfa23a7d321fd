// The device half of CtaTrace (flashgpt/cuda/cta_trace.h): a traced kernel calls cta_trace_begin
// first and cta_trace_end last with the slots its launcher reserved (null when nothing records,
// which costs a predicated branch). The launcher asks cta_trace_slots for them; host sources see
// only that.
#pragma once

#include <cstdint>

#include "cuda/stream.h"
#include "flashgpt/cuda/cta_trace.h"

#if defined(FLASHGPT_SIMT)
#include <chrono>
#endif
#if defined(__CUDACC__) || defined(FLASHGPT_SIMT)
#include "cuda/platform.h"
#endif

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// Room for the `ctas` blocks of one launch of `kernel` in the CtaTrace this thread records into,
// or null (none records, it is full, or `stream` is capturing a graph).
CtaSpan* cta_trace_slots(const char* kernel, int64_t ctas, cudaStream_t stream);

#if defined(__CUDACC__) || defined(FLASHGPT_SIMT)  // the device half, for kernel sources

// This SM's cycle counter and index (the host's nanoseconds and 0 on the emulator).
__device__ __forceinline__ unsigned long long sm_clock() {
#if defined(FLASHGPT_SIMT)
  return static_cast<unsigned long long>(std::chrono::steady_clock::now().time_since_epoch().count());
#else
  return static_cast<unsigned long long>(clock64());
#endif
}
__device__ __forceinline__ unsigned sm_index() {
#if defined(FLASHGPT_SIMT)
  return 0;
#else
  unsigned id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  return id;
#endif
}

__device__ __forceinline__ CtaSpan* cta_slot(CtaSpan* trace) {
  return trace + (static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
}

// The block's start, by its first thread, before anything else it does.
__device__ __forceinline__ void cta_trace_begin(CtaSpan* trace) {
  if (trace != nullptr && threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
    CtaSpan* s = cta_slot(trace);
    s->start = sm_clock();
    s->sm = sm_index();
    s->warps = (blockDim.x * blockDim.y * blockDim.z + 31) / 32;
  }
}

// Each warp's end, by its first lane, after everything it does (the slot started zeroed).
__device__ __forceinline__ void cta_trace_end(CtaSpan* trace) {
  const unsigned thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  if (trace != nullptr && thread % 32 == 0) {
    CtaSpan* s = cta_slot(trace);
    const unsigned long long now = sm_clock();
    atomicMax(&s->end, now);
    atomicAdd(&s->warp_end_sum, now);
  }
}
#endif

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI

// What every CUDA source includes first: the CUDA runtime, bf16/half and WMMA headers when nvcc
// compiles it for a GPU, or their CPU emulation (simt/simt.h) when the host compiler compiles the
// same source for the emulated test build (FLASHGPT_SIMT). Kernels are launched through
// launch_kernel and declare dynamic shared memory with FLASHGPT_DYNAMIC_SHARED, the two spots
// where the GPU syntax has no host-compiler spelling.
#pragma once

#if defined(FLASHGPT_SIMT)
#include "cuda/simt/simt.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#endif

#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda/cuda_check.h"
#include "cuda/kernel_timing.h"
#include "cuda/stream.h"

// `name` points at this block's dynamic shared memory, as `type*`, 128-byte aligned.
#if defined(FLASHGPT_SIMT)
#define FLASHGPT_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::flashgpt::simt::dynamic_shared())
#else
#define FLASHGPT_DYNAMIC_SHARED(type, name)               \
  extern __shared__ __align__(128) unsigned char name##_raw_[]; \
  type* name = reinterpret_cast<type*>(name##_raw_)
#endif

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// Named barriers (PTX bar.sync / bar.arrive; id 1 … 15, 0 being __syncthreads; `threads` a multiple
// of 32 counting every thread of the round): named_barrier_sync waits until that many threads have
// arrived, itself included; named_barrier_arrive counts itself and goes on — a producer's writes
// before it are visible to the consumers once their sync returns.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
#if defined(FLASHGPT_SIMT)
  ::flashgpt::simt::sync_named(id, threads);
#else
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
#endif
}
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
#if defined(FLASHGPT_SIMT)
  ::flashgpt::simt::arrive_named(id, threads);
#else
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
#endif
}

// Lets `kernel` use `bytes` of dynamic shared memory (past the default 48 KiB), or throws naming
// `name` when the GPU cannot give that much.
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes, const char* name) {
  int device = 0, limit = 0;
  FLASHGPT_CUDA_CHECK(cudaGetDevice(&device));
  FLASHGPT_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  FLASHGPT_CUDA_REQUIRE(bytes <= static_cast<size_t>(limit), std::string(name) + ": needs " + std::to_string(bytes) +
                                                                 " bytes of shared memory, the GPU allows " +
                                                                 std::to_string(limit));
  FLASHGPT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// How many blocks of `kernel` (threads each, `shared` bytes of dynamic shared memory, which
// allow_shared has already allowed) one SM holds at once.
template <typename Kernel>
int max_blocks_per_sm(Kernel kernel, int threads, size_t shared) {
#if defined(FLASHGPT_SIMT)
  (void)kernel;
  return ::flashgpt::simt::max_blocks_per_sm(threads, shared);
#else
  int blocks = 0;
  FLASHGPT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, shared));
  return blocks;
#endif
}

// Queues kernel<<<grid, block, shared, stream>>>(args...) and checks the launch; `name` says which
// kernel in the error. A null stream means this thread's current stream (stream.h). Arguments
// convert to the kernel's parameter types as in a launch.
template <typename... Params, typename... Args>
void launch_kernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                   cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch_kernel: wrong number of kernel arguments");
  if (stream == nullptr) stream = current_stream();
  // -1 unless a KernelTimes records (asked first, so an untimed launch never measures the name).
  const int timed = kernel_timing_active() ? kernel_timing_begin(name, stream) : -1;
#if defined(FLASHGPT_SIMT)
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  ::flashgpt::simt::check_kernel_pointers(name, params);
  // The arguments are the launch's own copies, as on the GPU: a graph replaying it reads these.
  ::flashgpt::simt::launch_grid(name, grid, block, shared, stream, [kernel, params] {
    std::apply(kernel, params);  // by value: each thread gets its own copies
  });
#else
  kernel<<<grid, block, shared, stream>>>(std::forward<Args>(args)...);
#endif
  check(cudaGetLastError(), name, __FILE__, __LINE__);
  if (timed >= 0) kernel_timing_end(timed, stream);
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI

// Every CUDA runtime call and kernel launch goes through these: a failure becomes a
// flashgpt::Error saying what failed, where, and the runtime's reason. (CUDA sources include no
// fmt: nvcc cannot evaluate its compile-time format checks, so messages are built here.)
#pragma once

#if defined(FLASHGPT_SIMT)
#include "cuda/simt/simt.h"
#else
#include <cuda_runtime.h>
#endif

#include <string>

#include "flashgpt/cuda/abi.h"

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

// Throws flashgpt::Error(message) (cuda_errors.cpp).
[[noreturn]] void raise(const std::string& message);

inline void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) {
    raise(std::string("CUDA: ") + what + " failed at " + file + ":" + std::to_string(line) + ": " +
          cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")");
  }
}

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI

#define FLASHGPT_CUDA_CHECK(call) ::flashgpt::cuda::check((call), #call, __FILE__, __LINE__)
// After a launch: configuration errors now, execution errors at the next synchronising call.
#define FLASHGPT_CUDA_CHECK_LAUNCH(name) ::flashgpt::cuda::check(cudaGetLastError(), name " launch", __FILE__, __LINE__)
// A precondition in CUDA sources: throws flashgpt::Error(message) when cond is false.
#define FLASHGPT_CUDA_REQUIRE(cond, message) \
  do {                                       \
    if (!(cond)) ::flashgpt::cuda::raise(message); \
  } while (0)

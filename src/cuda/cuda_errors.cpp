#include "flashgpt/core/error.h"
#include "flashgpt/cuda/abi.h"

#include <string>

namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI {

[[noreturn]] void raise(const std::string& message) { throw Error(message); }

}  // namespace flashgpt::cuda::inline FLASHGPT_CUDA_ABI

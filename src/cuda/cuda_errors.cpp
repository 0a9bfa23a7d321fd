#include "flashgpt/core/error.h"

#include <string>

namespace flashgpt::cuda {

[[noreturn]] void raise(const std::string& message) { throw Error(message); }

}  // namespace flashgpt::cuda

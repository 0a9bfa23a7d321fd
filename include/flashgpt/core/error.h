// Errors: every failure in flashgpt is a flashgpt::Error carrying one clear line that says what
// went wrong and where (a file, a field, a flag). Only main() catches it.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace flashgpt {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace flashgpt

// FLASHGPT_CHECK(cond, "format {}", args...): throw flashgpt::Error when cond is false.
#define FLASHGPT_CHECK(cond, ...)        \
  do {                                   \
    if (!(cond)) ::flashgpt::fail(__VA_ARGS__); \
  } while (0)

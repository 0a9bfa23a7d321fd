// The message of the flashgpt::Error that f throws, or "no error".
#pragma once

#include <functional>
#include <string>

#include "flashgpt/core/error.h"

namespace flashgpt::testing {

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace flashgpt::testing

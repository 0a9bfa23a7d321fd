#pragma once

#include <cstdint>

namespace flashgpt::ops {

// out = a + b
template <typename T>
void add(T* out, const T* a, const T* b, int64_t n);
// y += x
template <typename T>
void add_inplace(T* y, const T* x, int64_t n);

}  // namespace flashgpt::ops

// bf16 and fp16 on the host for the GPU tests (the library's core/half_precision.h, by short names).
#pragma once

#include <cstdint>
#include <vector>

#include "flashgpt/core/half_precision.h"

namespace flashgpt::testing {

inline uint16_t to_bf16(float x) { return float_to_bf16_bits(x); }
inline float from_bf16(uint16_t h) { return bf16_bits_to_float(h); }
inline float round_bf16(float x) { return from_bf16(to_bf16(x)); }

inline std::vector<float> round_bf16(std::vector<float> v) {
  for (float& x : v) x = round_bf16(x);
  return v;
}

inline uint16_t to_f16(float x) { return float_to_fp16_bits(x); }
inline float from_f16(uint16_t h) { return fp16_bits_to_float(h); }

}  // namespace flashgpt::testing
